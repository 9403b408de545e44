//! Learning-rate schedules, evaluated per optimiser step.

use serde::{Deserialize, Serialize};

/// How the learning rate moves from its base value over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// The base rate throughout (the notebook).
    Constant,
    /// Multiply by `gamma` every `every_epochs` epochs (`StepLR`).
    Step { every_epochs: usize, gamma: f64 },
    /// Linear warm-up over `warmup_epochs`, then cosine decay to `min_factor * base`.
    Cosine {
        #[serde(default)]
        warmup_epochs: f64,
        #[serde(default)]
        min_factor: f64,
    },
    /// `OneCycleLR` (cosine annealing): from `base / div_factor` up to `base` over
    /// `pct_start` of the run, then down to `base / (div_factor * final_div_factor)`.
    OneCycle {
        #[serde(default = "default_pct_start")]
        pct_start: f64,
        #[serde(default = "default_div")]
        div_factor: f64,
        #[serde(default = "default_final_div")]
        final_div_factor: f64,
    },
}

fn default_pct_start() -> f64 {
    0.3
}
fn default_div() -> f64 {
    25.0
}
fn default_final_div() -> f64 {
    1e4
}

impl Schedule {
    /// `OneCycleLR` with PyTorch's defaults (`pct_start` 0.3, `div_factor` 25,
    /// `final_div_factor` 1e4).
    pub fn one_cycle() -> Self {
        Self::OneCycle {
            pct_start: default_pct_start(),
            div_factor: default_div(),
            final_div_factor: default_final_div(),
        }
    }
}

fn cosine(from: f64, to: f64, t: f64) -> f64 {
    to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos())
}

impl Schedule {
    /// The rate at optimiser step `step` (0-based) of `total_steps`, with `steps_per_epoch`.
    pub fn lr(&self, base: f64, step: usize, total_steps: usize, steps_per_epoch: usize) -> f64 {
        let total = total_steps.max(1) as f64;
        let s = step as f64;
        match *self {
            Schedule::Constant => base,
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                base * gamma.powi((epoch / every_epochs.max(1)) as i32)
            }
            Schedule::Cosine {
                warmup_epochs,
                min_factor,
            } => {
                let warmup = warmup_epochs * steps_per_epoch as f64;
                if s < warmup {
                    base * (s + 1.0) / warmup
                } else {
                    cosine(
                        base,
                        base * min_factor,
                        (s - warmup) / (total - warmup).max(1.0),
                    )
                }
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let initial = base / div_factor;
                let min = initial / final_div_factor;
                let up = (pct_start * total - 1.0).max(1.0);
                if s <= up {
                    cosine(initial, base, s / up)
                } else {
                    cosine(base, min, (s - up) / (total - 1.0 - up).max(1.0))
                }
            }
        }
    }
}
