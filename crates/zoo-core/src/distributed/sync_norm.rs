//! Synchronised BatchNorm (PyTorch's `SyncBatchNorm`): a rank's network whose
//! [`zoo_nn::ForwardContext`] holds [`batch_norm_group`]'s sum takes every training-mode
//! BatchNorm's batch statistics, and its backward the sums behind the input's gradient, over
//! the global batch (zoo-kernels' `batch_norm_train_over`), so that N ranks compute what one
//! process computes on the whole batch.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use zoo_kernels::batch_norm::SumOverRanks;

use super::Collective;

/// The sum over `c`'s ranks that BatchNorm's statistics are taken over.
pub fn batch_norm_group(c: &Arc<dyn Collective>) -> SumOverRanks {
    let c = c.clone();
    Arc::new(move |values: &mut [f64]| {
        let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
        let sum = c.all_reduce_sum(&t)?.to_vec1::<f64>()?;
        values.copy_from_slice(&sum);
        Ok(())
    })
}
