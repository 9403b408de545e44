//! One training run from a resolved configuration: data, model, trainer, run folder, and
//! the progress display; plus `zoo eval` and `zoo predict` on a checkpoint.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use zoo_core::InputSpec;
use zoo_core::data::augment::Augment;
use zoo_core::data::loader::{Loader, LoaderConfig};
use zoo_core::data::resolve::load_split;
use zoo_core::data::transforms::EvalTransform;
use zoo_core::data::{ImageDataset, Split};
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::{CheckpointMeta, apply_weights, load_checkpoint};
use zoo_core::train::metrics::EpochMetrics;
use zoo_core::train::trainer::{Evaluation, Outcome, Recipe, TrainObserver, Trainer, evaluate};

use crate::recipe::RecipeName;
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

    pub fn eval_transform(&self) -> EvalTransform {
        EvalTransform {
            height: self.input_size,
            width: self.input_size,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

/// `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "auto" => Ok(Device::cuda_if_available(0)?),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda (build with `--features cuda`)"),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).with_context(|| format!("--device {other}")),
            _ => bail!("--device `{other}`: expected auto, cpu, cuda or cuda:N"),
        },
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

/// Progress: a bar on a terminal, otherwise one line per epoch.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self {
            bar: None,
            label: label.to_string(),
        }
    }
}

impl TrainObserver for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, start_batch: usize) {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(batches as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} batches {msg} ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{} epoch {}/{epochs}", self.label, epoch + 1));
            bar.set_position(start_batch as u64);
            self.bar = Some(bar);
        }
    }
    fn step(&mut self, _batch: usize, loss: Option<f64>) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if let Some(loss) = loss {
                bar.set_message(format!("loss {loss:.4}"));
            }
        }
    }
    fn evaluating(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_message("evaluating");
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "{} epoch {:>3}  train loss {:.4} acc {:.4}  valid loss {:.4} acc {:.4}  lr {:.4}  {:.0}s  {:.1} img/s",
            self.label,
            m.epoch,
            m.train_loss,
            m.train_acc,
            m.valid_loss,
            m.valid_acc,
            m.lr,
            m.seconds,
            m.images_per_sec
        );
    }
}

/// The state of a run folder.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    New,
    /// Epochs done, batches done in the next.
    Unfinished {
        epoch: usize,
        batch: usize,
    },
    Complete,
}

/// Reads `run_dir/last.safetensors`, if any, and says how far it got.
pub fn run_state(run_dir: &Path, config: &RunConfig) -> Result<RunState> {
    let last = Trainer::last_path(run_dir);
    if !last.is_file() {
        return Ok(RunState::New);
    }
    let ckpt = load_checkpoint(&last, &Device::Cpu)?;
    if ckpt.meta.epoch >= config.recipe.epochs {
        Ok(RunState::Complete)
    } else {
        Ok(RunState::Unfinished {
            epoch: ckpt.meta.epoch,
            batch: ckpt.meta.batch,
        })
    }
}

/// Trains `config` into `run_dir` (resuming from its last checkpoint when `resume`).
pub fn run_training(
    config: &RunConfig,
    data_root: &Path,
    run_dir: &Path,
    resume: bool,
    stop_after_steps: Option<u64>,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome> {
    let entry = find(&config.model)?;
    config.validate()?;
    let device = parse_device(&config.device)?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let _lock = crate::run_folder::RunLock::acquire(run_dir)?;
    let config_toml = config.to_toml()?;
    let config_path = run_dir.join("config.toml");
    let last = Trainer::last_path(run_dir);
    let resume_from = if resume && last.is_file() {
        let ckpt = load_checkpoint(&last, &device)
            .with_context(|| format!("reading {}", last.display()))?;
        if ckpt.meta.config != config_toml {
            bail!(
                "{} was written by another configuration; move the run folder away or resume with the \
                 same settings (its config.toml)",
                last.display()
            )
        }
        if ckpt.meta.epoch >= config.recipe.epochs {
            // Finished: make its outputs whole (a kill between the last writes) and stop.
            let repaired = crate::run_folder::repair(run_dir)?;
            crate::run_folder::report_repair(&run_dir.display().to_string(), &repaired);
            return Ok(Outcome::Finished(ckpt.meta.metrics));
        }
        Some(ckpt)
    } else {
        None
    };
    let (train, test) = load_data(data_root, config)?;
    if train.channels != entry.reference_input.channels {
        bail!(
            "{} has {}-channel images; {} takes {} channels",
            config.dataset,
            train.channels,
            config.model,
            entry.reference_input.channels
        )
    }
    let input = InputSpec::square(train.channels, config.input_size);
    let store = ParamStore::new(config.seed, config.init, DType::F32, &device);
    let model = entry
        .build(input, train.classes.len(), store.var_builder())
        .with_context(|| format!("building {} for {input}", config.model))?;
    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        augment: config.augment,
        ..LoaderConfig::notebook(config.seed)
    };
    let classes = train.classes.clone();
    let train_loader = Loader::new(Arc::new(train), loader_config)?;
    let valid_loader = Loader::new(
        Arc::new(test),
        LoaderConfig {
            shuffle: false,
            augment: Augment::default(),
            ..loader_config
        },
    )?;
    zoo_core::train::checkpoint::write_atomic(&config_path, config_toml.as_bytes())?;
    let mut trainer = Trainer {
        model: model.as_ref(),
        store: &store,
        recipe: config.recipe.clone(),
        transform: config.eval_transform(),
        device,
        meta: CheckpointMeta::new(
            &config.model,
            input,
            classes,
            config.eval_transform(),
            config_toml,
            config.seed,
        ),
        checkpoint_every: Some(50),
        stop_after_steps,
        read_every: None,
    };
    Ok(trainer.fit(&train_loader, &valid_loader, run_dir, resume_from, observer)?)
}

/// A model rebuilt from a checkpoint, with what it needs to evaluate and predict.
pub struct LoadedModel {
    pub meta: CheckpointMeta,
    pub store: ParamStore,
    pub model: Box<dyn zoo_core::Model>,
    pub device: Device,
}

/// Rebuilds the checkpoint's model from the registry and loads its weights.
pub fn load_model(checkpoint: &Path, device: &str) -> Result<LoadedModel> {
    let device = parse_device(device)?;
    let ckpt = load_checkpoint(checkpoint, &device)?;
    let entry = find(&ckpt.meta.model)?;
    let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &device);
    let model = entry.build(ckpt.meta.input, ckpt.meta.num_classes, store.var_builder())?;
    apply_weights(&store, &ckpt.model, &checkpoint.display().to_string())?;
    Ok(LoadedModel {
        meta: ckpt.meta,
        store,
        model,
        device,
    })
}

/// Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset split.
pub fn eval_checkpoint(
    checkpoint: &Path,
    data_root: &Path,
    dataset: &str,
    split: Split,
    device: &str,
) -> Result<(LoadedModel, Evaluation)> {
    let loaded = load_model(checkpoint, device)?;
    let data = load_split(data_root, dataset, split)?;
    zoo_core::data::resolve::same_classes(
        &loaded.meta.classes,
        &data.classes,
        &format!("the checkpoint {}", checkpoint.display()),
        &format!("{dataset} ({})", split.name()),
    )?;
    let loader = Loader::new(
        Arc::new(data),
        LoaderConfig {
            shuffle: false,
            batch_size: 128,
            ..LoaderConfig::notebook(0)
        },
    )?;
    let eval = evaluate(
        loaded.model.as_ref(),
        &loader,
        &loaded.meta.eval_transform,
        &loaded.device,
    )?;
    Ok((loaded, eval))
}

/// The evaluation as text: accuracy, per-class accuracy, confusion matrix.
pub fn eval_report(classes: &[String], eval: &Evaluation) -> String {
    let mut out = format!(
        "accuracy {:.4}  loss {:.4}\n\nper-class accuracy:\n",
        eval.accuracy, eval.loss
    );
    for (i, row) in eval.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        out += &format!(
            "  {:<14} {:.4}  ({} images)\n",
            classes.get(i).map_or("?", |s| s.as_str()),
            row[i] as f64 / total.max(1) as f64,
            total
        );
    }
    out += "\nconfusion matrix (rows: true class, columns: predicted):\n";
    out += &format!("{:>14}", "");
    for i in 0..eval.confusion.len() {
        out += &format!("{i:>6}");
    }
    out.push('\n');
    for (i, row) in eval.confusion.iter().enumerate() {
        out += &format!(
            "{:>14}",
            format!(
                "{i} {}",
                classes
                    .get(i)
                    .map_or("", |s| s.as_str())
                    .chars()
                    .take(10)
                    .collect::<String>()
            )
        );
        for v in row {
            out += &format!("{v:>6}");
        }
        out.push('\n');
    }
    out
}

/// One image's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    /// (class, probability), best first.
    pub top5: Vec<(String, f32)>,
    pub logits: Vec<f32>,
}

/// Top-5 classes of each image, using the checkpoint's evaluation transform.
pub fn predict(checkpoint: &Path, images: &[PathBuf], device: &str) -> Result<Vec<Prediction>> {
    let loaded = load_model(checkpoint, device)?;
    let input = loaded.meta.input;
    let mut out = Vec::new();
    for path in images {
        let (h, w, chw) = zoo_core::data::folder::decode_image(path, input.channels)?;
        let x = candle_core::Tensor::from_vec(chw, (1, input.channels, h, w), &loaded.device)?;
        let x = loaded.meta.eval_transform.apply(&x, &loaded.device)?;
        let logits = loaded.model.forward_t(&x, false)?.squeeze(0)?;
        let probs = candle_nn::ops::softmax(&logits, 0)?.to_vec1::<f32>()?;
        let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.push(Prediction {
            image: path.clone(),
            top5: ranked
                .iter()
                .take(5)
                .map(|&(i, p)| {
                    (
                        loaded
                            .meta
                            .classes
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| i.to_string()),
                        p,
                    )
                })
                .collect(),
            logits: logits.to_vec1()?,
        });
    }
    Ok(out)
}
