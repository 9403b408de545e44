//! A run folder as a whole: one process at a time (a lock file naming its owner), and a
//! finished run whose last outputs are missing (a kill between writes, a deleted file) made
//! whole again from its last checkpoint.

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use zoo_core::train::checkpoint::{load_checkpoint, save_tensors};
use zoo_core::train::metrics::{EpochMetrics, write_csv, write_curves};
use zoo_core::train::trainer::Trainer;

use crate::run_config::RunConfig;

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
    if ckpt.meta.progress.epoch >= config.recipe.epochs {
        Ok(RunState::Complete)
    } else {
        Ok(RunState::Unfinished {
            epoch: ckpt.meta.progress.epoch,
            batch: ckpt.meta.progress.batch,
        })
    }
}

pub use crate::run_lock::{LOCK_FILE, RunLock};

/// What [`repair`] rewrote, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Repaired {
    pub files: Vec<&'static str>,
    pub warnings: Vec<String>,
}

/// The epoch (1-based) whose validation accuracy (raw or EMA) was the best, and whether the EMA
/// made it.
fn best_epoch(metrics: &[EpochMetrics]) -> Option<(usize, bool)> {
    let mut best: Option<(f64, usize, bool)> = None;
    for m in metrics {
        let ema = m.valid_acc_ema.is_some_and(|a| a > m.valid_acc);
        let acc = m.best_valid_acc();
        if best.is_none_or(|(b, _, _)| acc > b) {
            best = Some((acc, m.epoch, ema));
        }
    }
    best.map(|(_, epoch, ema)| (epoch, ema))
}

/// Prints what [`repair`] did for `label`.
pub fn report_repair(label: &str, repaired: &Repaired) {
    if !repaired.files.is_empty() {
        eprintln!("{label}: rewrote {}", repaired.files.join(", "));
    }
    for w in &repaired.warnings {
        eprintln!("{label}: WARNING: {w}");
    }
}

/// Rewrites the outputs of a finished or interrupted run that are missing — `metrics.csv` and
/// `curves.png` from the last checkpoint's metrics, `best.safetensors` when the last epoch was
/// the best (its weights, or their EMA, are in `last.safetensors`) — and says which. A
/// `best.safetensors` of an earlier epoch cannot be rebuilt: a warning names the epoch. (The
/// trainer writes `best`, `metrics.csv` and `curves.png` before `last`, so a kill never leaves
/// them behind a finished `last`; only a deleted file does.)
pub fn repair(run_dir: &Path) -> Result<Repaired> {
    let last = Trainer::last_path(run_dir);
    let ckpt = load_checkpoint(&last, &Device::Cpu)?;
    let metrics = &ckpt.meta.progress.metrics;
    let mut repaired = Repaired::default();
    if metrics.is_empty() {
        return Ok(repaired);
    }
    let csv = run_dir.join("metrics.csv");
    if !csv.is_file() {
        write_csv(&csv, metrics)?;
        repaired.files.push("metrics.csv");
    }
    let curves = run_dir.join("curves.png");
    if !curves.is_file() {
        write_curves(&curves, &ckpt.meta.run.model, metrics)?;
        repaired.files.push("curves.png");
    }
    let best = Trainer::best_path(run_dir);
    if !best.is_file()
        && let Some((epoch, ema)) = best_epoch(metrics)
    {
        if epoch != ckpt.meta.progress.epoch || ckpt.meta.progress.batch != 0 {
            repaired.warnings.push(format!(
                "{} is missing and cannot be rebuilt: the best epoch was {epoch}, and {} holds \
                 epoch {}",
                best.display(),
                last.display(),
                ckpt.meta.progress.epoch
            ));
        } else {
            let tensors = if ema { &ckpt.ema } else { &ckpt.model };
            let mut meta = ckpt.meta.clone();
            meta.ema_weights = ema;
            save_tensors(&best, tensors, &meta)?;
            repaired.files.push("best.safetensors");
        }
    }
    Ok(repaired)
}
