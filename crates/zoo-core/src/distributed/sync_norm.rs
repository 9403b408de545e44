//! Synchronised BatchNorm (PyTorch's `SyncBatchNorm`): while a rank's training forward runs
//! inside [`with_sync_batch_norm`], every BatchNorm layer takes its batch statistics over the
//! global batch, through an all-reduce whose gradient is itself an all-reduce, so that N ranks
//! compute what one process computes on the whole batch.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::Collective;

thread_local! {
    static ACTIVE: RefCell<Option<Arc<dyn Collective>>> = const { RefCell::new(None) };
}

/// Runs `f` with BatchNorm layers synchronised over `c` on this thread.
pub fn with_sync_batch_norm<T>(
    c: &Arc<dyn Collective>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let previous = ACTIVE.with(|a| a.replace(Some(c.clone())));
    let out = f();
    ACTIVE.with(|a| *a.borrow_mut() = previous);
    out
}

/// The group BatchNorm layers synchronise over on this thread, if any.
pub fn active() -> Option<Arc<dyn Collective>> {
    ACTIVE.with(|a| a.borrow().clone())
}

/// The sum over ranks of `t` (f32, on the CPU), differentiable: the gradient each rank gets is
/// the sum over ranks of the gradients of the result.
pub fn all_reduce_sum_differentiable(c: &Arc<dyn Collective>, t: &Tensor) -> Result<Tensor> {
    t.contiguous()?.apply_op1(AllReduceSum(c.clone()))
}

struct AllReduceSum(Arc<dyn Collective>);

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "sync-batch-norm-all-reduce"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous tensor", self.name())
        };
        let local = Tensor::from_slice(
            &s.as_slice::<f32>()?[a..b],
            l.shape(),
            &candle_core::Device::Cpu,
        )?;
        let sum = self
            .0
            .all_reduce_sum(&local)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((CpuStorage::F32(sum), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.all_reduce_sum(&grad_res.contiguous()?)?))
    }
}
