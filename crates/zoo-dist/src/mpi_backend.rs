//! The MPI backend (feature `mpi`): Open MPI (or any MPI) through the `mpi` crate, for CPU
//! processes on one machine or many. Started by `mpirun -np N zoo train ...`.

use candle_core::{DType, Result, Tensor};
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use zoo_core::distributed::{Collective, check_dtype};

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

impl MpiCollective {
    /// The element-wise sum over ranks of `data`.
    fn sum<T: Equivalence + Default + Clone>(&self, data: &[T]) -> Vec<T> {
        let mut sum = vec![T::default(); data.len()];
        self.world
            .all_reduce_into(data, &mut sum[..], SystemOperation::sum());
        sum
    }

    /// Rank `root`'s values of `flat` (a 1-D tensor of `T`).
    fn bcast<T: Equivalence + Default + Clone + candle_core::WithDType>(
        &self,
        flat: &Tensor,
        root: usize,
    ) -> Result<Vec<T>> {
        let mut data = if self.rank() == root {
            flat.to_vec1::<T>()?
        } else {
            vec![T::default(); flat.elem_count()]
        };
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(&mut data[..]);
        Ok(data)
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
        check_dtype("all-reduce (MPI)", t)?;
        let flat = t.flatten_all()?;
        let sum = match t.dtype() {
            DType::F64 => Tensor::new(self.sum(&flat.to_vec1::<f64>()?), t.device())?,
            _ => Tensor::new(self.sum(&flat.to_vec1::<f32>()?), t.device())?,
        };
        sum.reshape(t.shape())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world_size() {
            candle_core::bail!(
                "broadcast (MPI): root {root} in a world of {}",
                self.world_size()
            )
        }
        check_dtype("broadcast (MPI)", t)?;
        let flat = t.flatten_all()?;
        let value = match t.dtype() {
            DType::F64 => Tensor::new(self.bcast::<f64>(&flat, root)?, t.device())?,
            _ => Tensor::new(self.bcast::<f32>(&flat, root)?, t.device())?,
        };
        value.reshape(t.shape())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }
}
