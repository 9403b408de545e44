//! The training step's loss and accuracy totals, kept on the device between reads.

use candle_core::{DType, Result, Tensor};

use super::loss::correct_on_device;
use super::readback::read_to_host;

/// What the steps since the last read added up to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTotals {
    /// Sum over images of the loss (each batch's mean times its size).
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    pub steps: usize,
    /// The batch index (in its epoch) of the first step counted.
    pub first_batch: usize,
}

/// Loss and hit totals as one `(2,)` f32 tensor on the device, added to every step and read
/// with [`RunningTotals::take`].
#[derive(Debug, Default)]
pub struct RunningTotals {
    sums: Option<Tensor>,
    seen: usize,
    steps: usize,
    first_batch: usize,
}

impl RunningTotals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one step: its mean `loss` (a scalar), `logits` `(b, k)` and u32 `labels` `(b,)`.
    pub fn add(
        &mut self,
        loss: &Tensor,
        logits: &Tensor,
        labels: &Tensor,
        batch_index: usize,
    ) -> Result<()> {
        let n = labels.elem_count();
        let loss_total = (loss.detach().to_dtype(DType::F32)? * n as f64)?;
        let hits = correct_on_device(&logits.detach(), labels)?;
        let pair = Tensor::stack(&[loss_total, hits], 0)?;
        self.sums = Some(match self.sums.take() {
            Some(sums) => (sums + pair)?,
            None => pair,
        });
        if self.steps == 0 {
            self.first_batch = batch_index;
        }
        self.seen += n;
        self.steps += 1;
        Ok(())
    }

    /// Adds a step in which this rank had no images (a data-parallel rank's empty slice of a
    /// short last batch): it counts as a step, with nothing to total.
    pub fn add_empty(&mut self, batch_index: usize) {
        if self.steps == 0 {
            self.first_batch = batch_index;
        }
        self.steps += 1;
    }

    /// Steps added since the last read.
    pub fn pending(&self) -> usize {
        self.steps
    }

    /// Reads the totals (one device-to-host copy) and starts again from zero; `None` when no
    /// step was added.
    pub fn take(&mut self) -> Result<Option<StepTotals>> {
        if self.steps == 0 {
            return Ok(None);
        }
        let values = match self.sums.take() {
            Some(sums) => read_to_host(&sums)?,
            None => vec![0.0, 0.0],
        };
        let totals = StepTotals {
            loss_sum: values[0],
            correct: values[1].round() as usize,
            seen: self.seen,
            steps: self.steps,
            first_batch: self.first_batch,
        };
        *self = Self::default();
        Ok(Some(totals))
    }
}
