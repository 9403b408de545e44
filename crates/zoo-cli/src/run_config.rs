//! A run's configuration: everything that decides it (written as `config.toml` beside its
//! outputs), resolved from a recipe and the field-by-field overrides that flags and matrix
//! entries make, and the checks a resolved run must pass.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use zoo_core::data::ImageDataset;
use zoo_core::data::augment::Augment;
use zoo_core::data::transforms::InputTransform;
use zoo_core::init::InitScheme;
use zoo_core::train::optim::OptimizerConfig;
use zoo_core::train::schedule::Schedule;
use zoo_core::train::trainer::Recipe;

use crate::recipe::{OptimizerKind, RecipeName, ScheduleKind};
use crate::registry::find;

/// Everything that decides a run. Written as `config.toml` beside its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub model: String,
    pub dataset: String,
    /// Square input side the images are resized to.
    pub input_size: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub init: InitScheme,
    /// Normalisation (one value per channel; the notebook uses 0.5 and 0.5).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default)]
    pub augment: Augment,
    /// Use only the first N training images of each class (None: all).
    #[serde(default)]
    pub train_per_class: Option<usize>,
    /// Use only the first N test images of each class (None: all).
    #[serde(default)]
    pub valid_per_class: Option<usize>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The recipe this run started from (flags and matrix fields override single values).
    #[serde(default)]
    pub recipe_name: RecipeName,
    pub recipe: Recipe,
}

impl RunConfig {
    /// The notebook's run of `model`: its dataset, its learning rate, 10 epochs, batch 128,
    /// Xavier init, plain SGD, normalisation 0.5 / 0.5, at `input_size` (default: the notebook's).
    pub fn notebook(model: &str, input_size: Option<usize>) -> Result<Self> {
        let entry = find(model)?;
        let (dataset, lr) = entry
            .notebook
            .map(|n| (n.dataset.name(), n.learning_rate))
            .unwrap_or(("cifar10", 0.05));
        let c = entry.reference_input.channels;
        Ok(Self {
            model: model.to_string(),
            dataset: dataset.to_string(),
            input_size: input_size.unwrap_or(entry.reference_input.height),
            batch_size: 128,
            seed: 0,
            init: InitScheme::XavierUniform,
            mean: vec![0.5; c],
            std: vec![0.5; c],
            augment: Augment::default(),
            train_per_class: None,
            valid_per_class: None,
            device: "auto".into(),
            recipe_name: RecipeName::Notebook,
            recipe: Recipe::notebook(10, lr),
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the run configuration")
    }

    pub fn eval_transform(&self) -> InputTransform {
        InputTransform {
            height: self.input_size,
            width: self.input_size,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

impl RunConfig {
    /// `model` trained with `recipe`.
    pub fn from_recipe(model: &str, recipe: RecipeName) -> Result<Self> {
        let mut c = Self::notebook(model, None)?;
        if recipe == RecipeName::Notebook {
            return Ok(c);
        }
        let r = find(model)?.improved;
        c.recipe_name = recipe;
        c.input_size = r.input_size;
        c.batch_size = r.batch_size;
        c.init = r.init;
        c.augment = r.augment;
        c.recipe.epochs = r.epochs;
        c.recipe.learning_rate = r.learning_rate;
        c.recipe.optimizer = r.optimizer;
        c.recipe.schedule = Schedule::Cosine {
            warmup_epochs: r.warmup_epochs,
            min_factor: 0.0,
        };
        c.recipe.label_smoothing = r.label_smoothing;
        c.recipe.clip_grad_norm = r.clip_grad_norm;
        c.recipe.ema_decay = r.ema_decay;
        c.recipe.decay_1d_params = false;
        Ok(c)
    }

    /// Every number a run takes is checked here, with the flag (and matrix field) named:
    /// the values torch.optim rejects, flags that the chosen optimiser or schedule would ignore,
    /// and sizes that cannot be allocated.
    pub fn validate(&self) -> Result<()> {
        let entry = find(&self.model)?;
        let r = &self.recipe;
        ensure!(
            r.epochs >= 1,
            "--epochs / epochs: {} (expected at least 1)",
            r.epochs
        );
        ensure!(
            self.batch_size >= 1,
            "--batch-size / batch_size: {} (expected at least 1)",
            self.batch_size
        );
        ensure!(
            r.learning_rate.is_finite() && r.learning_rate > 0.0,
            "--lr / learning_rate: {} (expected a finite number above 0)",
            r.learning_rate
        );
        ensure!(
            (entry.min_input..=MAX_INPUT_SIZE).contains(&self.input_size),
            "--input-size / input_size: {} (expected {} to {MAX_INPUT_SIZE} for {})",
            self.input_size,
            entry.min_input,
            self.model
        );
        validate_recipe_numbers(r)?;
        self.eval_transform()
            .validate(entry.reference_input.channels)?;
        Ok(())
    }
}

/// Whether `v` is a finite number from `lo` to `hi`.
fn finite_in(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && v >= lo && v <= hi
}

/// The recipe's optimiser, regularisation and schedule numbers checked (part of
/// [`RunConfig::validate`]), with the flag and matrix field named.
fn validate_recipe_numbers(r: &Recipe) -> Result<()> {
    if let OptimizerConfig::Sgd {
        momentum, nesterov, ..
    } = r.optimizer
    {
        ensure!(
            finite_in(momentum, 0.0, 1.0) && momentum < 1.0,
            "--momentum / momentum: {momentum} (expected 0 <= momentum < 1)"
        );
        ensure!(
            !nesterov || momentum > 0.0,
            "--nesterov / nesterov: Nesterov momentum needs --momentum above 0"
        );
    }
    let wd = r.optimizer.weight_decay();
    ensure!(
        finite_in(wd, 0.0, f64::MAX),
        "--weight-decay / weight_decay: {wd} (expected a finite number >= 0)"
    );
    ensure!(
        finite_in(r.label_smoothing, 0.0, 1.0),
        "--label-smoothing / label_smoothing: {} (expected 0 to 1)",
        r.label_smoothing
    );
    if let Some(c) = r.clip_grad_norm {
        ensure!(
            c.is_finite() && c > 0.0,
            "--clip-grad-norm / clip_grad_norm: {c} (expected a finite number above 0)"
        );
    }
    if let Some(d) = r.ema_decay {
        ensure!(
            finite_in(d, 0.0, 1.0) && d < 1.0,
            "--ema-decay / ema_decay: {d} (expected 0 < decay < 1, or 0 for none)"
        );
    }
    if let Schedule::Cosine { warmup_epochs, .. } = r.schedule {
        ensure!(
            finite_in(warmup_epochs, 0.0, r.epochs as f64),
            "--warmup-epochs / warmup_epochs: {warmup_epochs} (expected 0 to the {} epochs)",
            r.epochs
        );
    }
    Ok(())
}

/// A run as a matrix entry or the `zoo train` flags give it: a model, a recipe, and the fields
/// that override the recipe's. Unset fields come from `[defaults]` (in a matrix), then from the
/// recipe.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub model: Option<String>,
    pub recipe: Option<RecipeName>,
    pub dataset: Option<String>,
    pub input_size: Option<usize>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub optimizer: Option<OptimizerKind>,
    pub momentum: Option<f64>,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f64>,
    pub schedule: Option<ScheduleKind>,
    pub warmup_epochs: Option<f64>,
    pub label_smoothing: Option<f64>,
    pub clip_grad_norm: Option<f64>,
    pub augment: Option<bool>,
    pub init: Option<InitScheme>,
    /// 0 turns the EMA off.
    pub ema_decay: Option<f64>,
    pub seed: Option<u64>,
    pub train_per_class: Option<usize>,
    pub valid_per_class: Option<usize>,
}

/// The largest input side accepted.
pub use zoo_core::data::transforms::MAX_IMAGE_SIDE as MAX_INPUT_SIZE;

impl RunSpec {
    /// This spec's fields, with `defaults`' where this one has none.
    pub fn or(&self, d: &RunSpec) -> RunSpec {
        macro_rules! pick {
            ($($f:ident),*) => { RunSpec { $($f: self.$f.clone().or(d.$f.clone())),* } };
        }
        pick!(
            model,
            recipe,
            dataset,
            input_size,
            epochs,
            batch_size,
            learning_rate,
            optimizer,
            momentum,
            nesterov,
            weight_decay,
            schedule,
            warmup_epochs,
            label_smoothing,
            clip_grad_norm,
            augment,
            init,
            ema_decay,
            seed,
            train_per_class,
            valid_per_class
        )
    }

    /// The recipe's run configuration with this spec's fields applied, checked.
    pub fn resolve(&self, device: &str) -> Result<RunConfig> {
        let model = self.model.as_deref().context("a run without a model")?;
        let recipe = self.recipe.unwrap_or_default();
        let mut c = RunConfig::from_recipe(model, recipe)?;
        c.device = device.to_string();
        if let Some(d) = &self.dataset {
            c.dataset = d.clone();
        }
        if let Some(v) = self.input_size {
            c.input_size = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.init {
            c.init = v;
        }
        if let Some(v) = self.augment {
            c.augment = if v {
                Augment::for_dataset(&c.dataset)
            } else {
                Augment::default()
            };
        }
        c.train_per_class = self.train_per_class.or(c.train_per_class);
        c.valid_per_class = self.valid_per_class.or(c.valid_per_class);
        let r = &mut c.recipe;
        if let Some(v) = self.epochs {
            r.epochs = v;
        }
        if let Some(v) = self.learning_rate {
            r.learning_rate = v;
        }
        if let Some(v) = self.label_smoothing {
            r.label_smoothing = v;
        }
        if let Some(v) = self.clip_grad_norm {
            r.clip_grad_norm = Some(v);
        }
        if let Some(v) = self.ema_decay {
            r.ema_decay = (v != 0.0).then_some(v);
        }
        r.optimizer = self.optimizer_over(r.optimizer)?;
        r.schedule = self.schedule_over(r.schedule, r.epochs)?;
        c.recipe_name = recipe;
        c.validate()?;
        Ok(c)
    }

    fn optimizer_over(&self, base: OptimizerConfig) -> Result<OptimizerConfig> {
        let base = match (self.optimizer, base) {
            (None, b) => b,
            (Some(OptimizerKind::Sgd), b @ OptimizerConfig::Sgd { .. }) => b,
            (Some(OptimizerKind::Adamw), b @ OptimizerConfig::AdamW { .. }) => b,
            (Some(OptimizerKind::Sgd), _) => OptimizerConfig::plain_sgd(),
            (Some(OptimizerKind::Adamw), _) => OptimizerConfig::adamw(),
        };
        let base = match self.weight_decay {
            Some(wd) => base.with_weight_decay(wd),
            None => base,
        };
        Ok(match base {
            OptimizerConfig::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => OptimizerConfig::Sgd {
                momentum: self.momentum.unwrap_or(momentum),
                nesterov: self.nesterov.unwrap_or(nesterov),
                weight_decay,
            },
            adamw @ OptimizerConfig::AdamW { .. } => {
                ensure!(
                    self.momentum.is_none(),
                    "--momentum / momentum: AdamW has no momentum (its betas are 0.9 and 0.999); \
                     use --optimizer sgd"
                );
                ensure!(
                    self.nesterov.is_none(),
                    "--nesterov / nesterov: AdamW has no Nesterov momentum; use --optimizer sgd"
                );
                adamw
            }
        })
    }

    fn schedule_over(&self, base: Schedule, epochs: usize) -> Result<Schedule> {
        let schedule = match self.schedule {
            None => base,
            Some(ScheduleKind::Constant) => Schedule::Constant,
            Some(ScheduleKind::Step) => Schedule::Step {
                every_epochs: (epochs / 3).max(1),
                gamma: 0.1,
            },
            Some(ScheduleKind::Cosine) => Schedule::Cosine {
                warmup_epochs: 0.0,
                min_factor: 0.0,
            },
            Some(ScheduleKind::Onecycle) => Schedule::one_cycle(),
        };
        Ok(match (schedule, self.warmup_epochs) {
            (s, None) => s,
            (Schedule::Cosine { min_factor, .. }, Some(w)) => Schedule::Cosine {
                warmup_epochs: w,
                min_factor,
            },
            (other, Some(_)) => bail!(
                "--warmup-epochs / warmup_epochs: only the cosine schedule warms up, and this run's \
                 schedule is {}",
                schedule_name(&other)
            ),
        })
    }
}

fn schedule_name(s: &Schedule) -> &'static str {
    match s {
        Schedule::Constant => "constant",
        Schedule::Step { .. } => "step",
        Schedule::Cosine { .. } => "cosine",
        Schedule::OneCycle { .. } => "onecycle",
    }
}

/// Both splits of a dataset, cut to the configured sizes.
pub fn load_data(root: &Path, config: &RunConfig) -> Result<(ImageDataset, ImageDataset)> {
    let cut = |ds: ImageDataset, n: Option<usize>| match n {
        Some(n) => ds.per_class_prefix(n),
        None => ds,
    };
    // Any local format, else (with the `hub` feature) the Hugging Face hub.
    let (train, test) = zoo_core::data::resolve::load_dataset(root, &config.dataset)
        .with_context(|| format!("loading {}", config.dataset))?;
    Ok((
        cut(train, config.train_per_class),
        cut(test, config.valid_per_class),
    ))
}
