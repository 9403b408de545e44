//! [`Recipe`]: how a run optimises (epochs, learning rate, optimiser, schedule, label
//! smoothing, clipping, EMA, test-time flips), as `config.toml` records it.

use serde::{Deserialize, Serialize};

use super::optim::OptimizerConfig;
use super::schedule::Schedule;

/// The optimisation recipe of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    /// Base learning rate (the notebook's per-model `learning_rate`).
    pub learning_rate: f64,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay and evaluate it
    /// beside the raw weights every epoch (timm's `--model-ema`).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Apply the weight decay to one-dimensional parameters (biases, BatchNorm) too; off, they
    /// are not decayed, as timm and torchvision's reference recipes do.
    #[serde(default)]
    pub decay_1d_params: bool,
    /// A fine-tune's learning rate for the pretrained backbone, as a factor of the head's
    /// (`None`: one rate for all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_lr_factor: Option<f64>,
    /// Validate the last epoch with horizontal-flip test-time augmentation too (both views'
    /// logits summed), reported beside the plain accuracy; never for digits.
    #[serde(default)]
    pub eval_flip: bool,
}

impl Recipe {
    /// The notebook's recipe: plain SGD at a constant rate, plain cross-entropy.
    pub fn notebook(epochs: usize, learning_rate: f64) -> Self {
        Self {
            epochs,
            learning_rate,
            optimizer: OptimizerConfig::plain_sgd(),
            schedule: Schedule::Constant,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            ema_decay: None,
            decay_1d_params: false,
            backbone_lr_factor: None,
            eval_flip: false,
        }
    }
}
