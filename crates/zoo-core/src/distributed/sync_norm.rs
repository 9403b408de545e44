//! Synchronised BatchNorm (PyTorch's `SyncBatchNorm`): while a rank's training forward runs
//! inside [`with_sync_batch_norm`], every BatchNorm layer takes its batch statistics, and its
//! backward the sums behind the input's gradient, over the global batch (zoo-kernels'
//! `batch_norm_train_over`), so that N ranks compute what one process computes on the whole
//! batch.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use zoo_kernels::batch_norm::SumOverRanks;

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

/// What the BatchNorm kernels sum over, on this thread: the active group's ranks, if any.
pub fn active_group() -> Option<SumOverRanks> {
    let c = ACTIVE.with(|a| a.borrow().clone())?;
    Some(Arc::new(move |values: &mut [f64]| {
        let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
        let sum = c.all_reduce_sum(&t)?.to_vec1::<f64>()?;
        values.copy_from_slice(&sum);
        Ok(())
    }))
}
