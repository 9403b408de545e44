//! The checkpointer: what a run writes into its folder and in which order (`best`, then
//! `metrics.csv` and `curves.png`, then `last`, so that a kill between two writes leaves a
//! state whose resume writes them again), the EMA swap for a best checkpoint of the averaged
//! weights, and the data-parallel rule that rank 0 alone writes. Every file is written
//! atomically (a temporary name, then a rename).

use std::path::{Path, PathBuf};

use candle_core::Result;

use super::checkpoint::{CheckpointMeta, RunInfo, RunProgress, save_checkpoint};
use super::ema::Ema;
use super::metrics::{EpochMetrics, write_csv, write_curves};
use super::optim::Optimizer;
use crate::init::ParamStore;

/// A run folder's writer.
pub(crate) struct Checkpointer<'a> {
    run_dir: &'a Path,
    /// `last.safetensors` of this run.
    last: PathBuf,
    store: &'a ParamStore,
    run: &'a RunInfo,
    /// Whether this process writes (rank 0 of a data-parallel group, or alone).
    writer: bool,
}

/// `run_dir/last.safetensors`: the run's latest state, to resume from.
pub fn last_path(run_dir: &Path) -> PathBuf {
    run_dir.join("last.safetensors")
}

/// `run_dir/best.safetensors`: the weights of the best validation accuracy so far.
pub fn best_path(run_dir: &Path) -> PathBuf {
    run_dir.join("best.safetensors")
}

/// Where the last good checkpoint is, or that there is none yet.
pub(crate) fn last_good(last: &Path) -> String {
    if last.is_file() {
        format!("the last good checkpoint is {}", last.display())
    } else {
        "no checkpoint was written yet".to_string()
    }
}

impl<'a> Checkpointer<'a> {
    pub fn new(run_dir: &'a Path, store: &'a ParamStore, run: &'a RunInfo, writer: bool) -> Self {
        Self {
            run_dir,
            last: last_path(run_dir),
            store,
            run,
            writer,
        }
    }

    /// `last.safetensors` of this run.
    pub fn last(&self) -> &Path {
        &self.last
    }

    /// The checkpoint metadata of this run at `progress`.
    fn meta(&self, progress: &RunProgress) -> CheckpointMeta {
        CheckpointMeta {
            run: self.run.clone(),
            progress: progress.clone(),
            ema_weights: false,
        }
    }

    /// Writes `last.safetensors`: weights, optimiser and EMA state, the run at `progress`.
    pub fn save_last(
        &self,
        optimizer: &Optimizer,
        ema: Option<&Ema>,
        progress: &RunProgress,
    ) -> Result<()> {
        if !self.writer {
            return Ok(());
        }
        let meta = self.meta(progress);
        save_checkpoint(&self.last, self.store, Some(optimizer), ema, &meta)
    }

    /// An epoch's files, `row` its metrics row (already in `progress`): `best.safetensors` when
    /// the epoch beats `best_so_far` (the EMA's weights when they scored higher), then
    /// `metrics.csv`, `curves.png` and `last.safetensors`.
    pub fn end_epoch(
        &self,
        optimizer: &Optimizer,
        ema: Option<&Ema>,
        progress: &RunProgress,
        best_so_far: f64,
    ) -> Result<()> {
        if !self.writer {
            return Ok(());
        }
        let Some(row) = progress.metrics.last() else {
            candle_core::bail!("end_epoch: no epoch in the run's metrics")
        };
        if row.best_valid_acc() > best_so_far {
            self.save_best(ema, row, progress)?;
        }
        write_csv(&self.run_dir.join("metrics.csv"), &progress.metrics)?;
        write_curves(
            &self.run_dir.join("curves.png"),
            &self.run.model,
            &progress.metrics,
        )?;
        self.save_last(optimizer, ema, progress)
    }

    /// `best.safetensors`: the raw weights, or the EMA's when they scored higher in `row`.
    fn save_best(
        &self,
        ema: Option<&Ema>,
        row: &EpochMetrics,
        progress: &RunProgress,
    ) -> Result<()> {
        let best = best_path(self.run_dir);
        let mut meta = self.meta(progress);
        match ema {
            Some(e) if row.valid_acc_ema.is_some_and(|a| a > row.valid_acc) => {
                meta.ema_weights = true;
                e.with_shadow(|| save_checkpoint(&best, self.store, None, None, &meta))
            }
            _ => save_checkpoint(&best, self.store, None, None, &meta),
        }
    }
}
