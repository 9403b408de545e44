//! Training matrices (`cargo xtask train-all`): runs a matrix (one folder per run, skipping complete runs
//! and resuming unfinished ones) and writes its report.

use std::path::{Path, PathBuf};

use crate::registry::find;
use crate::train_cmd::{Progress, RunConfig, RunState, run_state, run_training};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use zoo_core::data::augment::Augment;
use zoo_core::summary::group_thousands;
use zoo_core::train::metrics::EpochMetrics;
use zoo_core::train::optim::OptimizerConfig;
use zoo_core::train::schedule::Schedule;

/// A matrix file.
#[derive(Debug, Deserialize)]
pub struct Matrix {
    pub name: String,
    #[serde(default)]
    pub defaults: RunSpec,
    #[serde(rename = "run")]
    pub runs: Vec<RunSpec>,
}

/// One entry; unset fields come from `[defaults]`, then from the notebook.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub model: Option<String>,
    pub dataset: Option<String>,
    pub input_size: Option<usize>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    /// `notebook` (plain SGD, constant rate) or `modern` (Nesterov momentum 0.9, weight decay
    /// 5e-4, cosine schedule with one warm-up epoch, label smoothing 0.1, crop + flip).
    pub recipe: Option<String>,
    pub train_per_class: Option<usize>,
    pub valid_per_class: Option<usize>,
    pub seed: Option<u64>,
}

impl RunSpec {
    fn or(&self, d: &RunSpec) -> RunSpec {
        RunSpec {
            model: self.model.clone().or(d.model.clone()),
            dataset: self.dataset.clone().or(d.dataset.clone()),
            input_size: self.input_size.or(d.input_size),
            epochs: self.epochs.or(d.epochs),
            batch_size: self.batch_size.or(d.batch_size),
            learning_rate: self.learning_rate.or(d.learning_rate),
            recipe: self.recipe.clone().or(d.recipe.clone()),
            train_per_class: self.train_per_class.or(d.train_per_class),
            valid_per_class: self.valid_per_class.or(d.valid_per_class),
            seed: self.seed.or(d.seed),
        }
    }

    fn resolve(&self, device: &str) -> Result<RunConfig> {
        let model = self.model.as_deref().context("a run without `model`")?;
        let mut c = RunConfig::notebook(model, self.input_size)?;
        if let Some(d) = &self.dataset {
            c.dataset = d.clone();
        }
        c.device = device.to_string();
        c.seed = self.seed.unwrap_or(0);
        c.train_per_class = self.train_per_class;
        c.valid_per_class = self.valid_per_class;
        if let Some(b) = self.batch_size {
            c.batch_size = b;
        }
        if let Some(e) = self.epochs {
            c.recipe.epochs = e;
        }
        if let Some(lr) = self.learning_rate {
            c.recipe.learning_rate = lr;
        }
        match self.recipe.as_deref().unwrap_or("notebook") {
            "notebook" => {}
            "modern" => {
                c.recipe.optimizer = OptimizerConfig::Sgd {
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 5e-4,
                };
                c.recipe.schedule = Schedule::Cosine {
                    warmup_epochs: 1.0,
                    min_factor: 0.0,
                };
                c.recipe.label_smoothing = 0.1;
                c.augment = Augment {
                    crop_padding: Some(4),
                    hflip: true,
                };
            }
            other => bail!("recipe `{other}`: expected notebook or modern"),
        }
        Ok(c)
    }
}

pub fn load_matrix(path: &Path) -> Result<Matrix> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// What a finished run reports.
struct RunResult {
    config: RunConfig,
    folder: PathBuf,
    metrics: Vec<EpochMetrics>,
}

/// Where a dataset is: the data root if it holds it, else the committed sample (loudly).
fn data_for(dataset: &str, root: &Path, sample_root: &Path, notices: &mut Vec<String>) -> PathBuf {
    if zoo_core::data::resolve::load_dataset(root, dataset).is_ok() {
        return root.to_path_buf();
    }
    let notice = format!(
        "NOTICE: {dataset} was not found under {}; using the small committed sample in {} instead. \
         Accuracies from it are not comparable with the notebook. Run `cargo xtask data` (or put \
         the dataset under the data root) for the real one.",
        root.display(),
        sample_root.display()
    );
    eprintln!("\n{notice}\n");
    notices.push(notice);
    sample_root.to_path_buf()
}

/// Runs every entry of `matrix` under `runs/<name>/` and writes `report.md`.
pub fn train_all(
    matrix_path: &Path,
    runs_root: &Path,
    data_root: &Path,
    sample_root: &Path,
    device: &str,
    only: Option<&str>,
) -> Result<PathBuf> {
    let matrix = load_matrix(matrix_path)?;
    let out = runs_root.join(&matrix.name);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut results = Vec::new();
    let mut notices = Vec::new();
    let total = matrix.runs.len();
    for (i, spec) in matrix.runs.iter().enumerate() {
        let config = spec.or(&matrix.defaults).resolve(device)?;
        if only.is_some_and(|m| m != config.model) {
            continue;
        }
        let name = format!("{}-{}", config.model, config.dataset);
        let folder = out.join(&name);
        let root = data_for(&config.dataset, data_root, sample_root, &mut notices);
        match run_state(&folder, &config)? {
            RunState::Complete => eprintln!("[{}/{total}] {name}: complete, skipped", i + 1),
            state => {
                if let RunState::Unfinished { epoch, batch } = state {
                    eprintln!(
                        "[{}/{total}] {name}: resuming at epoch {} batch {batch}",
                        i + 1,
                        epoch + 1
                    );
                } else {
                    eprintln!(
                        "[{}/{total}] {name}: {} epochs at {} px",
                        i + 1,
                        config.recipe.epochs,
                        config.input_size
                    );
                }
                run_training(
                    &config,
                    &root,
                    &folder,
                    true,
                    None,
                    &mut Progress::new(&name),
                )
                .with_context(|| format!("run {name}"))?;
            }
        }
        let ckpt = zoo_core::train::checkpoint::load_checkpoint(
            &folder.join("last.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        results.push(RunResult {
            config,
            folder,
            metrics: ckpt.meta.metrics,
        });
    }
    let report = out.join("report.md");
    let text = report_markdown(&matrix.name, &results, &notices)?;
    zoo_core::train::checkpoint::write_atomic(&report, text.as_bytes())?;
    Ok(report)
}

/// The results table (also copied into docs/results.md).
fn report_markdown(matrix: &str, results: &[RunResult], notices: &[String]) -> Result<String> {
    let mut md = format!("# Training matrix `{matrix}`\n\n");
    for n in notices {
        md += &format!("> **{n}**\n\n");
    }
    md += "| model | dataset | input | train images/class | parameters | epochs | best valid acc | final valid acc | train time | images/s | notebook (10 epochs, full data) |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        let entry = find(&r.config.model)?;
        let params = crate::summary_cmd::summarize(
            &r.config.model,
            Some([
                1,
                entry.reference_input.channels,
                r.config.input_size,
                r.config.input_size,
            ]),
        )?
        .params;
        let best = r.metrics.iter().map(|m| m.valid_acc).fold(0.0, f64::max);
        let last = r.metrics.last();
        let seconds: f64 = r.metrics.iter().map(|m| m.seconds).sum();
        let images_per_sec = last.map_or(0.0, |m| m.images_per_sec);
        md += &format!(
            "| `{}` | {} | {} px | {} | {} | {} | {:.4} | {:.4} | {:.0} s | {:.1} | {} |\n",
            r.config.model,
            r.config.dataset,
            r.config.input_size,
            r.config
                .train_per_class
                .map_or("all".into(), |n| n.to_string()),
            group_thousands(params as u64),
            r.metrics.len(),
            best,
            last.map_or(0.0, |m| m.valid_acc),
            seconds,
            images_per_sec,
            entry
                .notebook
                .map_or("-".into(), |n| format!("{:.4}", n.valid_acc)),
        );
    }
    md += "\n## Curves\n";
    for r in results {
        let name = r
            .folder
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        md += &format!("\n### {name}\n\n![{name}]({name}/curves.png)\n");
    }
    Ok(md)
}
