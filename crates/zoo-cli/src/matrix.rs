//! Training matrices (`cargo xtask train-all`): runs a matrix (one folder per run, skipping complete runs
//! and resuming unfinished ones) and writes its report.

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use crate::registry::find;
use crate::run_config::RunConfig;
use crate::run_config::RunSpec;
use crate::run_folder::{RunState, run_state};
use crate::training::{Placement, run_training};
use anyhow::{Context, Result};
use serde::Deserialize;
use zoo_core::summary::group_thousands;
use zoo_core::table::{Align, Table};
use zoo_core::train::metrics::EpochMetrics;

/// A matrix file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub name: String,
    #[serde(default)]
    pub defaults: RunSpec,
    #[serde(rename = "run")]
    pub runs: Vec<RunSpec>,
}

/// Reads a matrix file and checks its name (a plain file name: the runs go under
/// `runs/<name>/`).
pub fn load_matrix(path: &Path) -> Result<Matrix> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let matrix: Matrix =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    check_plain_name(&matrix.name).with_context(|| format!("{}: field `name`", path.display()))?;
    Ok(matrix)
}

/// `name` as one plain path component ([`zoo_core::fs::is_plain_name`]), or an error saying so.
pub fn check_plain_name(name: &str) -> Result<()> {
    if !zoo_core::fs::is_plain_name(name) {
        anyhow::bail!(
            "`{name}` is not a plain name (one folder name: letters, digits, `-`, `_`; no `/`, \
             `\\` or leading `.`)"
        )
    }
    Ok(())
}

/// What a finished run reports.
pub struct RunResult {
    /// `<model>-<dataset>`, its folder's name.
    pub name: String,
    pub config: RunConfig,
    pub folder: PathBuf,
    pub train_images: usize,
    pub valid_images: usize,
    pub metrics: Vec<EpochMetrics>,
}

/// Where a dataset is: the data root if it holds it (by its files' presence: nothing decoded; a
/// damaged dataset there is an error when its run reads it, not a reason to train on another),
/// else the committed sample (loudly).
fn data_for(
    dataset: &zoo_core::data::Dataset,
    root: &Path,
    sample_root: &Path,
    notices: &mut Vec<String>,
) -> PathBuf {
    if zoo_core::data::resolve::locate(root, dataset).is_ok() {
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

/// Runs every entry of `matrix` under `runs/<name>/` and writes `report.md`, alone or as one
/// rank of `placement`'s data-parallel group (rank 0 alone writes and reports; the others
/// return `None`).
pub fn train_all(
    matrix_path: &Path,
    runs_root: &Path,
    data_root: &Path,
    sample_root: &Path,
    device: &str,
    only: Option<&str>,
    placement: &Placement,
) -> Result<Option<PathBuf>> {
    let matrix = load_matrix(matrix_path)?;
    let configs = resolve_runs(&matrix, matrix_path, device, only)?;
    let writer = placement.is_writer();
    let out = runs_root.join(&matrix.name);
    if writer {
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    }
    let mut results = Vec::new();
    let mut notices = Vec::new();
    let mut class_counts = ClassCounts::new();
    let total = matrix.runs.len();
    for (i, config) in configs {
        let name = format!("{}-{}", config.model, config.dataset);
        let folder = out.join(&name);
        let root = data_for(&config.dataset, data_root, sample_root, &mut notices);
        let step = format!("[{}/{total}] {name}", i + 1);
        run_or_skip(&config, &root, &folder, &step, placement)?;
        if !writer {
            continue;
        }
        results.push(finished_result(
            name,
            config,
            folder,
            &root,
            &mut class_counts,
        )?);
    }
    if !writer {
        // The figures and the report are rank 0's: another rank's, of no runs, could land
        // after it and replace them.
        return Ok(None);
    }
    write_matrix_figures(&out, &matrix.name, &results)?;
    let report = out.join("report.md");
    let text = report_markdown(&matrix.name, &results, &notices)?;
    zoo_core::fs::write_atomic(&report, text.as_bytes())?;
    Ok(Some(report))
}

/// Image counts per class (training, validation) of each dataset a matrix has read.
type ClassCounts =
    std::collections::HashMap<(PathBuf, zoo_core::data::Dataset), (Vec<usize>, Vec<usize>)>;

/// What a finished run reports: its metrics (from `last.safetensors`) and image counts (each
/// dataset decoded once per matrix, not once per run).
fn finished_result(
    name: String,
    config: RunConfig,
    folder: PathBuf,
    root: &Path,
    class_counts: &mut ClassCounts,
) -> Result<RunResult> {
    let ckpt = zoo_core::train::checkpoint::load_checkpoint(
        &zoo_core::train::trainer::Trainer::last_path(&folder),
        &candle_core::Device::Cpu,
    )?;
    let key = (root.to_path_buf(), config.dataset.clone());
    if !class_counts.contains_key(&key) {
        let (train, valid) = zoo_core::data::resolve::load_dataset(root, &config.dataset)?;
        class_counts.insert(key.clone(), (train.class_counts(), valid.class_counts()));
    }
    let (train_counts, valid_counts) = &class_counts[&key];
    let images = |counts: &[usize], per_class: Option<usize>| -> usize {
        counts
            .iter()
            .map(|&c| per_class.map_or(c, |n| c.min(n)))
            .sum()
    };
    Ok(RunResult {
        train_images: images(train_counts, config.train_per_class),
        valid_images: images(valid_counts, config.valid_per_class),
        name,
        config,
        folder,
        metrics: ckpt.meta.progress.metrics,
    })
}

/// Every run of `matrix` resolved (all checked before any starts), with its index; only
/// `only`'s runs when given, and an error naming `only` and the matrix's models when none is.
fn resolve_runs(
    matrix: &Matrix,
    path: &Path,
    device: &str,
    only: Option<&str>,
) -> Result<Vec<(usize, RunConfig)>> {
    let mut configs = Vec::new();
    for (i, spec) in matrix.runs.iter().enumerate() {
        let config = spec
            .or(&matrix.defaults)
            .resolve(device)
            .with_context(|| format!("{}: run {}", path.display(), i + 1))?;
        configs.push((i, config));
    }
    let Some(only) = only else {
        return Ok(configs);
    };
    let models: Vec<String> = configs.iter().map(|(_, c)| c.model.clone()).collect();
    configs.retain(|(_, c)| c.model == only);
    if configs.is_empty() {
        anyhow::bail!(
            "--only {only}: no run of matrix `{}` ({}) trains it; its models: {}",
            matrix.name,
            path.display(),
            models.join(", ")
        )
    }
    Ok(configs)
}

/// Trains the run in `folder` unless it is complete (then its outputs are repaired where
/// needed); `step` is the `[i/n] name` the progress lines start with.
fn run_or_skip(
    config: &RunConfig,
    root: &Path,
    folder: &Path,
    step: &str,
    placement: &Placement,
) -> Result<()> {
    let writer = placement.is_writer();
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match run_state(folder, config)? {
        RunState::Complete if !writer => return Ok(()),
        RunState::Complete => {
            let repaired =
                crate::run_folder::repair(folder).with_context(|| format!("run {name}"))?;
            eprintln!("{step}: complete, skipped");
            crate::run_folder::report_repair(&name, &repaired);
            return Ok(());
        }
        RunState::Unfinished { epoch, batch } if writer => {
            eprintln!("{step}: resuming at epoch {} batch {batch}", epoch + 1);
        }
        _ if writer => eprintln!(
            "{step}: {} epochs at {} px",
            config.recipe.epochs, config.input_size
        ),
        _ => {}
    }
    run_training(
        config,
        root,
        folder,
        true,
        placement,
        &mut Progress::new(&name).quiet_unless(writer),
    )
    .with_context(|| format!("run {name}"))?;
    Ok(())
}

/// `seconds` as minutes and seconds (`4 min 05 s`, `38 s`).
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// The matrix's two figures: every run's validation accuracy (the better of the raw weights
/// and their EMA) against wall-clock minutes and against epochs, one colour per run in both.
pub fn write_matrix_figures(out: &Path, matrix: &str, results: &[RunResult]) -> Result<()> {
    use zoo_core::plot::{Legend, Panel, write_panels};
    let minutes = longest_minutes(results);
    let epochs = results.iter().map(|r| r.metrics.len()).max().unwrap_or(1) as f64;
    for (file, title, x_label, by_time) in [
        (
            "accuracy_vs_time.png",
            "Validation accuracy against training time",
            "wall-clock minutes (training and evaluation)",
            true,
        ),
        (
            "accuracy_vs_epoch.png",
            "Validation accuracy against epochs",
            "epoch",
            false,
        ),
    ] {
        write_panels(
            &out.join(file),
            (900, 560),
            Some(&format!("matrix `{matrix}`")),
            &[Panel {
                title: title.into(),
                x_label: x_label.into(),
                y_label: "validation accuracy (raw or EMA, the better)".into(),
                x_integers: !by_time,
                x_range: Some(if by_time {
                    (0.0, minutes * 1.04 + 1e-3)
                } else {
                    (0.5, epochs + 0.5)
                }),
                y_range: Some((0.0, 1.0)),
                legend: Legend::LowerRight,
                series: accuracy_series(results, by_time),
            }],
        )?;
    }
    Ok(())
}

/// One curve per run, in the palette's colours: the better validation accuracy against
/// wall-clock minutes (`by_time`) or against epochs.
fn accuracy_series(results: &[RunResult], by_time: bool) -> Vec<zoo_core::plot::Series> {
    use zoo_core::plot::{Series, colours::PALETTE};
    results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let elapsed = zoo_core::train::metrics::elapsed_seconds(&r.metrics);
            Series {
                label: r.name.clone(),
                points: r
                    .metrics
                    .iter()
                    .zip(&elapsed)
                    .map(|(m, t)| {
                        let x = if by_time { t / 60.0 } else { m.epoch as f64 };
                        (x, m.best_valid_acc())
                    })
                    .collect(),
                colour: PALETTE[i % PALETTE.len()],
            }
        })
        .collect()
}

/// The longest run's wall-clock minutes (0 without any).
fn longest_minutes(results: &[RunResult]) -> f64 {
    results
        .iter()
        .filter_map(|r| {
            zoo_core::train::metrics::elapsed_seconds(&r.metrics)
                .last()
                .copied()
        })
        .fold(0.0, f64::max)
        / 60.0
}

/// The results table (also copied into docs/results.md).
fn report_markdown(matrix: &str, results: &[RunResult], notices: &[String]) -> Result<String> {
    let mut md = format!("# Training matrix `{matrix}`\n\n");
    for n in notices {
        md += &format!("> **{n}**\n\n");
    }
    let total: f64 = results
        .iter()
        .flat_map(|r| r.metrics.iter().map(|m| m.wall_seconds))
        .sum();
    md += &format!(
        "{} runs, {} of training and evaluation in all. Validation accuracy is on the test images \
         the column counts; \"EMA\" is the exponential moving average of the weights, validated \
         beside them; \"flip-TTA\" averages each test image's logits with its mirror image's \
         (raw or EMA weights, whichever is better; recipes that ask for it); times are \
         wall-clock (training, evaluation and checkpoints).\n\n",
        results.len(),
        format_duration(total)
    );
    let mut table = Table::new(&[
        ("model", Align::Left),
        ("dataset", Align::Left),
        ("recipe", Align::Left),
        ("input", Align::Left),
        ("train images", Align::Right),
        ("valid images", Align::Right),
        ("parameters", Align::Right),
        ("epochs", Align::Right),
        ("best valid acc", Align::Right),
        ("best EMA acc", Align::Right),
        ("best flip-TTA acc", Align::Right),
        ("final valid acc", Align::Right),
        ("time to 50%", Align::Right),
        ("time to best", Align::Right),
        ("total time", Align::Right),
        ("train images/s", Align::Right),
        ("notebook (10 epochs, 224 px, GPU)", Align::Right),
    ]);
    for r in results {
        table.row(result_row(r)?);
    }
    md += &table.markdown();
    md += "\n![validation accuracy against time](accuracy_vs_time.png)\n\n\
           ![validation accuracy against epochs](accuracy_vs_epoch.png)\n";
    md += "\n## Curves of each run\n";
    for r in results {
        let name = &r.name;
        md += &format!("\n### {name}\n\n![{name}]({name}/curves.png)\n");
    }
    Ok(md)
}

/// One run's line of the results table: its setup, parameters, accuracies, times and the
/// notebook's accuracy.
fn result_row(r: &RunResult) -> Result<[String; 17]> {
    use zoo_core::train::metrics::{time_to_accuracy, time_to_best};
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
    let best_of = |column: fn(&EpochMetrics) -> Option<f64>| {
        r.metrics.iter().filter_map(column).reduce(f64::max)
    };
    let best_ema = best_of(|m| m.valid_acc_ema);
    let best_flip = best_of(EpochMetrics::best_flip_acc);
    let last = r.metrics.last();
    let total: f64 = r.metrics.iter().map(|m| m.wall_seconds).sum();
    let reached = |x: Option<zoo_core::train::metrics::Reached>| {
        x.map_or("not reached".into(), |x| {
            format!("{} (epoch {})", format_duration(x.seconds), x.epoch)
        })
    };
    Ok([
        format!("`{}`", r.config.model),
        r.config.dataset.to_string(),
        r.config.recipe_name.name().to_string(),
        format!("{} px", r.config.input_size),
        group_thousands(r.train_images as u64),
        group_thousands(r.valid_images as u64),
        group_thousands(params as u64),
        r.metrics.len().to_string(),
        format!("{best:.4}"),
        best_ema.map_or("-".into(), |a| format!("{a:.4}")),
        best_flip.map_or("-".into(), |a| format!("{a:.4}")),
        format!("{:.4}", last.map_or(0.0, |m| m.valid_acc)),
        reached(time_to_accuracy(&r.metrics, 0.5)),
        reached(time_to_best(&r.metrics)),
        format_duration(total),
        format!("{:.0}", last.map_or(0.0, |m| m.images_per_sec)),
        entry
            .notebook
            .as_ref()
            .map_or("-".into(), |n| format!("{:.4}", n.valid_acc)),
    ])
}
