//! The names a run's settings take: which recipe a run starts from (each network's improved
//! recipe is data, `recipes/improved.toml`, as timm keeps a default configuration per model),
//! and the optimiser and schedule names that flags, matrix entries and recipes use.

use serde::{Deserialize, Serialize};

/// The recipes every registry model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeName {
    /// The notebook's: Xavier-uniform init, plain SGD at its learning rate, constant rate,
    /// batch 128, 10 epochs at the notebook's input size.
    #[default]
    Notebook,
    /// The network's improved recipe (its table in `recipes/improved.toml`).
    Improved,
    /// Fine-tuning pretrained weights (`recipes/finetune.toml`, one for every network): a
    /// lower rate for the backbone than for the new head, a short warm-up, cosine decay.
    Finetune,
}

impl RecipeName {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Notebook => "notebook",
            Self::Improved => "improved",
            Self::Finetune => "finetune",
        }
    }
}

/// The optimiser a flag or matrix entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

/// The schedule a flag or matrix entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
    Onecycle,
}
