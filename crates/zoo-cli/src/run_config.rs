//! A run's configuration: everything that decides it (written as `config.toml` beside its
//! outputs), resolved from a recipe and the field-by-field overrides that flags and matrix
//! entries make, and the checks a resolved run must pass.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use zoo_core::data::augment::Augment;
use zoo_core::data::transforms::InputTransform;
use zoo_core::data::{Dataset, ImageDataset};
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
    pub dataset: Dataset,
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
    /// A fine-tune: the zoo checkpoint whose weights the run starts from (all but a new head
    /// for other classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// A fine-tune that trains the new head alone (`--freeze backbone`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_backbone: bool,
    /// The evaluation transform resizes the shorter side to this, then centre-crops
    /// `input_size` (a pretrained checkpoint's, such as ImageNet's 256 -> 224); image folders
    /// are prepared so at load, whatever their images' sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<usize>,
}

impl RunConfig {
    /// The notebook's run of `model`: its dataset, its learning rate, 10 epochs, batch 128,
    /// Xavier init, plain SGD, normalisation 0.5 / 0.5, at `input_size` (default: the notebook's).
    pub fn notebook(model: &str, input_size: Option<usize>) -> Result<Self> {
        let entry = find(model)?;
        let (dataset, lr) = entry
            .notebook
            .as_ref()
            .map(|n| (n.dataset.clone(), n.learning_rate))
            .unwrap_or((Dataset::Cifar10, 0.05));
        let c = entry.reference_input.channels;
        Ok(Self {
            model: model.to_string(),
            dataset,
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
            pretrained: None,
            freeze_backbone: false,
            resize_shorter: None,
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
            resize_shorter: self.resize_shorter,
        }
    }
}

impl RunConfig {
    /// `model` trained with `recipe`: the notebook's run, with the improved recipe's fields
    /// (`recipes/improved.toml`) applied for `improved`.
    pub fn from_recipe(model: &str, recipe: RecipeName) -> Result<Self> {
        let mut c = Self::notebook(model, None)?;
        let spec = match recipe {
            RecipeName::Notebook => return Ok(c),
            RecipeName::Improved => improved_recipe(model)?,
            RecipeName::Finetune => finetune_recipe()?,
        };
        spec.apply(&mut c)
            .with_context(|| format!("the {} recipe of {model}", recipe.name()))?;
        c.recipe_name = recipe;
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
        if r.eval_flip {
            check_flip_allowed(&self.dataset, "--eval-flip / eval_flip")?;
        }
        self.validate_fine_tune()?;
        self.eval_transform()
            .validate(entry.reference_input.channels)?;
        Ok(())
    }
}

impl RunConfig {
    /// Takes the pretrained checkpoint's evaluation transform (mean, std, input size and any
    /// shorter-side resize, scaled when `--input-size` asks for another size).
    fn carry_pretrained_transform(&mut self, path: &Path, asked_size: Option<usize>) -> Result<()> {
        let ckpt = crate::finetune::read_pretrained(path, &self.model)?;
        let t = ckpt.meta.run.eval_transform;
        self.mean = t.mean;
        self.std = t.std;
        self.input_size = asked_size.unwrap_or(t.height);
        self.resize_shorter = t
            .resize_shorter
            .map(|s| (s * self.input_size).div_ceil(t.height));
        Ok(())
    }

    /// The fine-tuning fields agree: `--freeze` and `--backbone-lr-factor` need
    /// `--pretrained`, and the factor is a rate.
    fn validate_fine_tune(&self) -> Result<()> {
        let factor = self.recipe.backbone_lr_factor;
        if self.pretrained.is_none() {
            ensure!(
                !self.freeze_backbone,
                "--freeze backbone: freezes a pretrained backbone; give --pretrained CHECKPOINT"
            );
            ensure!(
                factor.is_none(),
                "--backbone-lr-factor / backbone_lr_factor: a fine-tune's setting; give \
                 --pretrained CHECKPOINT (or --backbone-lr-factor 1)"
            );
        }
        if let Some(f) = factor {
            ensure!(
                finite_in(f, 0.0, f64::MAX),
                "--backbone-lr-factor / backbone_lr_factor: {f} (expected a finite number >= 0)"
            );
        }
        Ok(())
    }
}

/// Test-time flips (`flag`) are for natural images: refused for a dataset of digits, which a
/// mirror image changes (a 2 is no longer a 2).
pub fn check_flip_allowed(dataset: &Dataset, flag: &str) -> Result<()> {
    ensure!(
        !dataset.is_digits(),
        "{flag}: {dataset} holds digits, which a mirror image changes (a 2 is no longer a 2); \
         test-time flips are for natural images"
    );
    Ok(())
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
/// recipe. The one list of a run's settings: the flags (clap), matrix entries and the recipe
/// files (serde) are all this struct, and [`RunSpec::apply`] is the one place a field changes
/// a run.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Registry name (the positional argument of `zoo train`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The recipe to start from (`--recipe` of `zoo train`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<RecipeName>,
    /// Dataset (default: the notebook's for this model).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Dataset>,
    /// Square input side (default: the recipe's).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Base learning rate (default: the recipe's).
    #[arg(long = "lr", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// SGD momentum.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// SGD with Nesterov momentum (`--nesterov false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Weight decay (on weights only, not on biases or BatchNorm).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleKind>,
    /// Linear warm-up epochs before the cosine decay.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Random crop (padding 4) and, except on digits, horizontal flip (`--augment false` off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
    /// Validate the last epoch with horizontal-flip test-time augmentation too (both views'
    /// logits summed), reported beside the plain accuracy (not for digits).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_flip: Option<bool>,
    /// The random crop's padding in pixels (0: no crop), after `--augment`.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_padding: Option<usize>,
    /// xavier-uniform (the notebook), pytorch-default, kaiming-normal-fan-out (torchvision's
    /// VGG and ResNet) or kaiming-normal-fan-in (torchvision's DenseNet).
    #[arg(long, value_parser = init_schemes())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<InitScheme>,
    /// Keep an EMA of the weights with this decay and validate it too (0: none).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema_decay: Option<f64>,
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Use the first N training images of each class.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_per_class: Option<usize>,
    /// Validate on the first N test images of each class.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_per_class: Option<usize>,
    /// Fine-tune: start from this zoo checkpoint's weights (`zoo convert` makes one of
    /// torchvision's files); the classifier is replaced when the dataset's classes differ, and
    /// the checkpoint's evaluation transform carries over.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// With --pretrained: `backbone` trains the new head alone (the backbone's weights fixed,
    /// its BatchNorm in evaluation mode); `none` trains everything.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze: Option<Freeze>,
    /// With --pretrained: the backbone's learning rate as a factor of the head's.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backbone_lr_factor: Option<f64>,
}

/// What a fine-tune keeps fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Freeze {
    /// Nothing: every weight trains.
    None,
    /// Everything but the new head.
    Backbone,
}

/// The fine-tuning recipe as data (one for every network).
const FINETUNE_RECIPE: &str = include_str!("../recipes/finetune.toml");

/// The `finetune` recipe: `recipes/finetune.toml`.
pub fn finetune_recipe() -> Result<RunSpec> {
    toml::from_str(FINETUNE_RECIPE).context("parsing recipes/finetune.toml")
}

/// Every network's improved recipe as data: `[defaults]` and one table per registry name, each
/// a [`RunSpec`].
const IMPROVED_RECIPES: &str = include_str!("../recipes/improved.toml");

/// `model`'s improved recipe: its table of `recipes/improved.toml` over `[defaults]`.
pub fn improved_recipe(model: &str) -> Result<RunSpec> {
    let tables: std::collections::BTreeMap<String, RunSpec> =
        toml::from_str(IMPROVED_RECIPES).context("parsing recipes/improved.toml")?;
    let defaults = tables.get("defaults").cloned().unwrap_or_default();
    let spec = tables
        .get(model)
        .with_context(|| format!("recipes/improved.toml has no recipe for `{model}`"))?;
    Ok(spec.or(&defaults))
}

/// The `--init` names, parsed into [`InitScheme`].
fn init_schemes() -> impl clap::builder::TypedValueParser<Value = InitScheme> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(InitScheme::ALL.map(|s| s.name()))
        .try_map(|name| name.parse::<InitScheme>())
}

/// The largest input side accepted.
pub use zoo_core::data::transforms::MAX_IMAGE_SIDE as MAX_INPUT_SIZE;

impl RunSpec {
    /// This spec's fields, with `defaults`' where this one has none (field by field, through
    /// serde: no list of fields to keep in step).
    pub fn or(&self, defaults: &RunSpec) -> RunSpec {
        let table = |spec: &RunSpec| match serde_json::to_value(spec) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let mut merged = table(defaults);
        merged.extend(table(self));
        serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_else(|_| self.clone())
    }

    /// The recipe's run configuration with this spec's fields applied, checked.
    pub fn resolve(&self, device: &str) -> Result<RunConfig> {
        let model = self.model.as_deref().context("a run without a model")?;
        let recipe = self.recipe.unwrap_or_default();
        let mut c = RunConfig::from_recipe(model, recipe)?;
        c.device = device.to_string();
        self.apply(&mut c)?;
        if let Some(path) = c.pretrained.clone() {
            c.carry_pretrained_transform(&path, self.input_size)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Sets every field this spec has in `c` (the model and recipe fields excepted: they choose
    /// the run `c` starts from).
    pub fn apply(&self, c: &mut RunConfig) -> Result<()> {
        if let Some(d) = &self.dataset {
            c.dataset = d.clone();
        }
        c.input_size = self.input_size.unwrap_or(c.input_size);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.seed = self.seed.unwrap_or(c.seed);
        c.init = self.init.unwrap_or(c.init);
        if let Some(v) = self.augment {
            c.augment = match v {
                true => Augment::for_dataset(&c.dataset),
                false => Augment::default(),
            };
        }
        if let Some(p) = self.crop_padding {
            c.augment.crop_padding = (p > 0).then_some(p);
        }
        c.train_per_class = self.train_per_class.or(c.train_per_class);
        c.valid_per_class = self.valid_per_class.or(c.valid_per_class);
        c.pretrained = self.pretrained.clone().or(c.pretrained.take());
        if let Some(f) = self.freeze {
            c.freeze_backbone = f == Freeze::Backbone;
        }
        let r = &mut c.recipe;
        if let Some(f) = self.backbone_lr_factor {
            r.backbone_lr_factor = (f != 1.0).then_some(f);
        }
        r.epochs = self.epochs.unwrap_or(r.epochs);
        r.learning_rate = self.learning_rate.unwrap_or(r.learning_rate);
        r.label_smoothing = self.label_smoothing.unwrap_or(r.label_smoothing);
        r.clip_grad_norm = self.clip_grad_norm.or(r.clip_grad_norm);
        r.eval_flip = self.eval_flip.unwrap_or(r.eval_flip);
        if let Some(v) = self.ema_decay {
            r.ema_decay = (v != 0.0).then_some(v);
        }
        r.optimizer = self.optimizer_over(r.optimizer)?;
        r.schedule = self.schedule_over(r.schedule, r.epochs)?;
        Ok(())
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
    let fit = config
        .resize_shorter
        .map(|shorter| zoo_core::data::folder::Fit {
            shorter,
            crop: config.input_size,
        });
    let (train, test) = zoo_core::data::resolve::load_dataset_fitted(root, &config.dataset, fit)
        .with_context(|| format!("loading {}", config.dataset))?;
    Ok((
        cut(train, config.train_per_class),
        cut(test, config.valid_per_class),
    ))
}
