//! Training recipes as data: which recipe a run starts from, each network's improved recipe
//! (kept in the registry, as timm keeps a default configuration per model), and the optimiser
//! and schedule names that flags and matrix entries use.

use serde::{Deserialize, Serialize};
use zoo_core::data::augment::Augment;
use zoo_core::init::InitScheme;
use zoo_core::train::optim::OptimizerConfig;

/// The recipes every registry model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeName {
    /// The notebook's: Xavier-uniform init, plain SGD at its learning rate, constant rate,
    /// batch 128, 10 epochs at the notebook's input size.
    #[default]
    Notebook,
    /// The network's improved recipe (its `ImprovedRecipe` in the registry).
    Improved,
}

impl RecipeName {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Notebook => "notebook",
            Self::Improved => "improved",
        }
    }
}

/// A network's improved recipe: SGD with Nesterov momentum or AdamW, a cosine schedule after a
/// linear warm-up, weight decay on the weights only, label smoothing, crop (+ flip)
/// augmentation and an EMA of the weights, at the input size and epochs of the CPU matrix.
/// docs/recipes.md says how each value was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImprovedRecipe {
    /// Square input side (the best accuracy per minute on a CPU that was measured).
    pub input_size: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub init: InitScheme,
    pub learning_rate: f64,
    pub warmup_epochs: f64,
    /// With its weight decay (applied to weights, not to biases or BatchNorm).
    pub optimizer: OptimizerConfig,
    pub label_smoothing: f64,
    pub augment: Augment,
    pub ema_decay: Option<f64>,
    pub clip_grad_norm: Option<f64>,
}

/// The optimiser a flag or matrix entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

/// The schedule a flag or matrix entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
    Onecycle,
}
