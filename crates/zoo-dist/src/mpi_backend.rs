//! The MPI backend (feature `mpi`): Open MPI (or any MPI) through the `mpi` crate, for CPU
//! processes on one machine or many. Started by `mpirun -np N zoo train ...`.

use candle_core::{Result, Tensor};
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use zoo_core::distributed::{Collective, host_f32};

/// MPI's world communicator; MPI is finalised when it is dropped.
pub struct MpiCollective {
    // Dropped before the universe (fields drop in order), which finalises MPI.
    world: mpi::topology::SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

// SAFETY: MPI is initialised at the default thread level, and zoo makes every MPI call from
// the one thread that trains (the trainer's step, and the backward pass it runs); the handle
// is shared only to be kept by the graph's synchronised-BatchNorm ops on that thread.
unsafe impl Send for MpiCollective {}
unsafe impl Sync for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI (once per process) and joins its world.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            candle_core::Error::msg("MPI was initialised already in this process")
        })?;
        let world = universe.world();
        Ok(Self {
            world,
            _universe: universe,
        })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let data = host_f32("all-reduce (MPI)", t)?;
        let mut sum = vec![0f32; data.len()];
        self.world
            .all_reduce_into(&data[..], &mut sum[..], SystemOperation::sum());
        Tensor::from_vec(sum, t.shape(), t.device())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size() {
            candle_core::bail!(
                "broadcast (MPI): root {root} in a world of {}",
                self.world_size()
            )
        }
        let mut data = if self.rank() == root {
            host_f32("broadcast (MPI)", t)?
        } else {
            vec![0f32; t.elem_count()]
        };
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(&mut data[..]);
        Tensor::from_vec(data, t.shape(), t.device())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}
