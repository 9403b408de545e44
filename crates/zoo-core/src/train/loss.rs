//! Cross-entropy with optional label smoothing (`nn.CrossEntropyLoss(label_smoothing=e)`), and
//! the count of correct predictions.

use candle_core::{D, DType, Result, Tensor};

/// Mean cross-entropy of `logits` `(b, k)` against u32 `labels` `(b,)`; with smoothing `e`, the
/// target is `(1 - e)` on the label plus `e / k` on every class.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_probs, labels)?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = log_probs.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - label_smoothing))? + (uniform * label_smoothing)?
}

/// Predictions equal to the labels, as an f32 scalar left on the logits' device (exact up to
/// 2^24 images).
pub fn correct_on_device(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F32)?
        .sum_all()
}
