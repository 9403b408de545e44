//! A run folder as a whole: one process at a time (a lock file naming its owner), and a
//! finished run whose last outputs are missing (a kill between writes, a deleted file) made
//! whole again from its last checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
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

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// A held run-folder lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// Whether process `pid` exists on this machine (Linux: `/proc/<pid>`; elsewhere every pid
/// counts as alive, so that no lock is ever taken from a running process).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

impl RunLock {
    /// Takes `run_dir/run.lock`, or fails naming the process that holds it. A lock whose
    /// process no longer exists is stale: it is removed (with a notice) and taken.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id())
                        .and_then(|_| file.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .map_or(0.0, |d| d.as_secs_f64());
                    match text.trim().parse::<u32>() {
                        Ok(pid) if process_alive(pid) => bail!(
                            "{} is in use by process {pid} (its {LOCK_FILE}): two runs in one \
                             folder would overwrite each other's checkpoints; wait for it or stop it",
                            run_dir.display()
                        ),
                        Err(_) if age < 10.0 => bail!(
                            "{} is being taken by another process ({} has no owner written yet)",
                            run_dir.display(),
                            path.display()
                        ),
                        _ => {
                            eprintln!(
                                "removing the stale lock {} (process {} no longer exists)",
                                path.display(),
                                text.trim()
                            );
                            match std::fs::remove_file(&path) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => {
                                    return Err(e)
                                        .with_context(|| format!("removing {}", path.display()));
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not take the lock {}", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

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
