//! Which optimiser a run uses, with its hyper-parameters, as recipes and checkpoints write it.

use serde::{Deserialize, Serialize};

use super::{AdamW, Sgd, UpdateRule};

/// Which optimiser, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)` (dampening 0).
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// `torch.optim.AdamW(params, lr, betas, eps, weight_decay)`.
    AdamW {
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
    },
}

const fn default_beta1() -> f64 {
    0.9
}
const fn default_beta2() -> f64 {
    0.999
}
const fn default_eps() -> f64 {
    1e-8
}
const fn default_adamw_decay() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// The weight decay, whichever optimiser.
    pub fn weight_decay(&self) -> f64 {
        match *self {
            Self::Sgd { weight_decay, .. } | Self::AdamW { weight_decay, .. } => weight_decay,
        }
    }

    /// The same optimiser with another weight decay.
    pub const fn with_weight_decay(self, decay: f64) -> Self {
        match self {
            Self::Sgd {
                momentum, nesterov, ..
            } => Self::Sgd {
                momentum,
                nesterov,
                weight_decay: decay,
            },
            Self::AdamW {
                beta1, beta2, eps, ..
            } => Self::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay: decay,
            },
        }
    }

    /// AdamW with `torch.optim.AdamW`'s defaults (betas 0.9 and 0.999, eps 1e-8, weight decay
    /// 0.01).
    pub const fn adamw() -> Self {
        Self::AdamW {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_adamw_decay(),
        }
    }

    /// Plain SGD, the notebook's optimiser.
    pub fn plain_sgd() -> Self {
        Self::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// The update rule this configuration describes.
    pub fn rule(&self) -> Box<dyn UpdateRule> {
        match *self {
            Self::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => Box::new(Sgd {
                momentum,
                nesterov,
                weight_decay,
            }),
            Self::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Box::new(AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            }),
        }
    }
}
