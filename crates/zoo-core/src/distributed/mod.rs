//! Data-parallel training's collective interface (all-reduce a sum, broadcast, barrier), the
//! slice of each global batch a rank takes, and the in-process backend that runs ranks as
//! threads. The engines (MPI, NCCL) implement [`Collective`] in the `zoo-dist` crate.

pub mod local;
pub mod sync;
pub mod sync_norm;

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Result, Tensor};

/// What every rank of a data-parallel group can do together. Each call is collective: every
/// rank makes the same calls in the same order, with tensors of the same shape.
pub trait Collective: Send + Sync {
    /// This process's (or thread's) rank, `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The element-wise sum over all ranks of an f32 or f64 tensor, the same value on every
    /// rank.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s value of an f32 or f64 tensor, on every rank.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// The engine's name for messages and reports: `threads`, `mpi`, `nccl`.
    fn backend(&self) -> &'static str;
}

/// How a trainer runs data-parallel.
#[derive(Clone)]
pub struct DataParallel {
    pub collective: Arc<dyn Collective>,
    /// BatchNorm statistics over the global batch ([`sync_norm`], PyTorch's `SyncBatchNorm`):
    /// N ranks then train as one process on the whole batch does. Off, each rank normalises
    /// with its own slice's statistics (DDP's default) and rank 0's running statistics are
    /// taken by all before evaluation and checkpoints. On in a world of one, the synchronised
    /// layer's composed ops replace the one-process kernel: same math, another summation order.
    pub sync_batch_norm: bool,
}

impl DataParallel {
    /// Synchronised BatchNorm where there is more than one rank.
    pub fn new(collective: Arc<dyn Collective>) -> Self {
        let sync_batch_norm = collective.world_size() > 1;
        Self {
            collective,
            sync_batch_norm,
        }
    }
}

/// Rank `rank` of `world`: which slice of a global batch it trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole batch: one process.
    pub const WHOLE: Self = Self { rank: 0, world: 1 };

    /// An error unless `rank < world`.
    pub fn new(rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            candle_core::bail!("rank {rank} of a world of {world}: expected 0 <= rank < world")
        }
        Ok(Self { rank, world })
    }

    /// The shard of a collective's rank.
    pub fn of(collective: &dyn Collective) -> Self {
        Self {
            rank: collective.rank(),
            world: collective.world_size(),
        }
    }

    /// The positions of this rank's items among `n`: contiguous slices whose sizes differ by
    /// at most one (the later ranks take the extra items), empty when `n < world` leaves none.
    pub fn range(&self, n: usize) -> Range<usize> {
        (n * self.rank / self.world)..(n * (self.rank + 1) / self.world)
    }
}

/// An error naming `op` unless `t` is f32 or f64, what the collectives carry.
pub fn check_dtype(op: &str, t: &Tensor) -> Result<()> {
    use candle_core::DType;
    if !matches!(t.dtype(), DType::F32 | DType::F64) {
        candle_core::bail!("{op}: expected an f32 or f64 tensor, got {:?}", t.dtype())
    }
    Ok(())
}

/// `t` (f32 or f64) as a host vector of f64: the thread backend's working form.
pub fn host_f64(op: &str, t: &Tensor) -> Result<Vec<f64>> {
    check_dtype(op, t)?;
    t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()
}

#[cfg(test)]
mod tests;
