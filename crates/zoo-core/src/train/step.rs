//! The train step: forward, loss, backward, gradients summed over ranks, clipping, the
//! optimiser's update and the EMA's, for one batch.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use super::ema::Ema;
use super::loss::cross_entropy;
use super::optim::{Optimizer, clip_grad_norm};
use super::ranks::Ranks;
use super::recipe::Recipe;
use crate::data::loader::Batch;
use crate::model::Model;

/// What one training step runs with.
pub(crate) struct TrainStep<'a> {
    pub model: &'a dyn Model,
    pub params: &'a [(String, Var)],
    pub recipe: &'a Recipe,
    pub ranks: &'a Ranks,
}

/// The step's loss and logits, left on the device (the running totals read them later); `None`
/// for a rank's empty slice of a short last batch, which adds zero gradients.
pub(crate) type StepOutput = Option<(Tensor, Tensor)>;

impl TrainStep<'_> {
    /// One optimiser step on `batch` (`x` its transformed images, `y` its labels) at rate `lr`;
    /// `step` is the optimiser step it becomes (for the EMA's warm-up).
    pub fn run(
        &self,
        batch: &Batch,
        (x, y): (&Tensor, &Tensor),
        lr: f64,
        optimizer: &mut Optimizer,
        ema: Option<&mut Ema>,
        step: u64,
    ) -> Result<StepOutput> {
        let (output, mut grads) = if batch.is_empty() {
            (None, GradStore::default())
        } else {
            let logits = self.ranks.forward(self.model, x)?;
            let loss = cross_entropy(&logits, y, self.recipe.label_smoothing)?;
            let grads = self.ranks.backward(&loss, batch)?;
            (Some((loss, logits)), grads)
        };
        self.ranks.reduce_grads(&mut grads, self.params)?;
        if let Some(max_norm) = self.recipe.clip_grad_norm {
            clip_grad_norm(&mut grads, self.params, max_norm)?;
        }
        optimizer.step(&grads, lr)?;
        if let Some(ema) = ema {
            ema.update(step)?;
        }
        Ok(output)
    }
}
