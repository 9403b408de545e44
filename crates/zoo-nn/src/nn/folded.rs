//! The weights and bias of a convolution with the BatchNorm after it folded in, kept for one
//! frozen-weights scope (`crate::frozen`), as a runtime folds them when it loads a model.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};
use zoo_kernels::conv::PreparedWeights;

/// One convolution's folded weights and bias for one frozen-weights generation, and what the
/// kernel derives from them (kept apart from the plain convolution's, whose weights differ).
#[derive(Debug, Default)]
pub(crate) struct FoldedWeights {
    slot: Mutex<Option<(u64, Tensor, Tensor)>>,
    prepared: Arc<PreparedWeights>,
}

impl FoldedWeights {
    /// The folded `(weight, bias)` of `generation`: the kept ones when they were folded in the
    /// same generation, else `fold()`, kept for the next call.
    pub(crate) fn get(
        &self,
        generation: u64,
        fold: impl FnOnce() -> Result<(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let lock = || match self.slot.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((kept, weight, bias)) = lock().as_ref()
            && *kept == generation
        {
            return Ok((weight.clone(), bias.clone()));
        }
        // Folded without the lock held, as `PreparedWeights` derives.
        let (weight, bias) = fold()?;
        *lock() = Some((generation, weight.clone(), bias.clone()));
        Ok((weight, bias))
    }

    /// Where the kernel keeps what it derives from the folded weights.
    pub(crate) fn prepared(&self) -> &Arc<PreparedWeights> {
        &self.prepared
    }
}
