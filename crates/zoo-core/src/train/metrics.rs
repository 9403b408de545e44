//! Per-epoch metrics, `metrics.csv`, time to accuracy, and a run's curves as a PNG.

use std::path::Path;

use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::plot::{Legend, Panel, Series, colours, write_panels};

/// One epoch of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based, as the notebook prints.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub valid_loss: f64,
    pub valid_acc: f64,
    /// Validation loss and accuracy of the EMA of the weights (runs with an EMA).
    #[serde(default)]
    pub valid_loss_ema: Option<f64>,
    #[serde(default)]
    pub valid_acc_ema: Option<f64>,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    /// Seconds in training steps (forward, backward, update).
    pub seconds: f64,
    /// Wall-clock seconds of the whole epoch: data, steps, evaluation, checkpoints.
    #[serde(default)]
    pub wall_seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Validation accuracy with horizontal-flip test-time augmentation, of the weights and of
    /// their EMA (runs whose recipe asks for it).
    #[serde(default)]
    pub valid_acc_flip: Option<f64>,
    #[serde(default)]
    pub valid_acc_ema_flip: Option<f64>,
}

impl EpochMetrics {
    /// The better flip-augmented validation accuracy of the raw weights and their EMA (`None`
    /// in a run without test-time flips).
    pub fn best_flip_acc(&self) -> Option<f64> {
        match (self.valid_acc_flip, self.valid_acc_ema_flip) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// The better validation accuracy of the raw weights and their EMA.
    pub fn best_valid_acc(&self) -> f64 {
        self.valid_acc_ema
            .map_or(self.valid_acc, |e| e.max(self.valid_acc))
    }
}

/// When a run reached an accuracy: the epoch and the wall-clock seconds since its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reached {
    pub epoch: usize,
    pub seconds: f64,
    pub accuracy: f64,
}

/// The first epoch whose validation accuracy (raw or EMA) reached `target`, with the run's
/// wall-clock time up to the end of that epoch; `None` if no epoch did.
pub fn time_to_accuracy(rows: &[EpochMetrics], target: f64) -> Option<Reached> {
    let mut elapsed = 0.0;
    rows.iter().find_map(|r| {
        elapsed += r.wall_seconds;
        (r.best_valid_acc() >= target).then_some(Reached {
            epoch: r.epoch,
            seconds: elapsed,
            accuracy: r.best_valid_acc(),
        })
    })
}

/// The best validation accuracy (raw or EMA) of a run and when it was first reached.
pub fn time_to_best(rows: &[EpochMetrics]) -> Option<Reached> {
    let best = rows
        .iter()
        .map(EpochMetrics::best_valid_acc)
        .fold(f64::NAN, f64::max);
    time_to_accuracy(rows, best)
}

/// Wall-clock seconds since the run's start at the end of each epoch.
pub fn elapsed_seconds(rows: &[EpochMetrics]) -> Vec<f64> {
    rows.iter()
        .scan(0.0, |t, r| {
            *t += r.wall_seconds;
            Some(*t)
        })
        .collect()
}

/// Writes `metrics.csv` atomically: a header of [`EpochMetrics`]' field names and one row per
/// epoch (an EMA column is empty in a run without one).
pub fn write_csv(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let failed = |e: csv::Error| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    let mut writer = csv::Writer::from_writer(Vec::new());
    for r in rows {
        writer.serialize(r).map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    crate::fs::write_atomic(path, &bytes)
}

/// Reads a `metrics.csv` written by [`write_csv`] (or by scripts/train_torch.py, which writes
/// the same columns), naming the file and the row of a bad value.
pub fn read_csv(path: &Path) -> Result<Vec<EpochMetrics>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<EpochMetrics>, _>>()
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

/// A run's curves: accuracy and loss against epochs (training, validation and, with an EMA
/// of the weights, validation of the EMA), each series in the same colour in both panels.
pub fn write_curves(path: &Path, title: &str, rows: &[EpochMetrics]) -> Result<()> {
    type Column<'a> = &'a dyn Fn(&EpochMetrics) -> Option<f64>;
    let series = |label: &str, colour, f: Column| Series {
        label: label.to_string(),
        points: rows
            .iter()
            .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
            .collect(),
        colour,
    };
    let panel = |title: &str, y: &str, legend, range, pick: [Column; 3]| {
        let mut all = vec![
            series("training", colours::TRAINING, pick[0]),
            series("validation", colours::VALIDATION, pick[1]),
            series("validation (EMA)", colours::VALIDATION_EMA, pick[2]),
        ];
        all.retain(|s| !s.points.is_empty());
        Panel {
            title: title.to_string(),
            x_label: "epoch".into(),
            y_label: y.to_string(),
            x_range: Some((0.5, rows.len().max(1) as f64 + 0.5)),
            x_integers: true,
            y_range: range,
            legend,
            series: all,
        }
    };
    write_panels(
        path,
        (560, 400),
        Some(title),
        &[
            panel(
                "Accuracy vs. epochs",
                "accuracy",
                Legend::LowerRight,
                Some((0.0, 1.0)),
                [&|r| Some(r.train_acc), &|r| Some(r.valid_acc), &|r| {
                    r.valid_acc_ema
                }],
            ),
            panel(
                "Loss vs. epochs",
                "loss",
                Legend::UpperRight,
                None,
                [&|r| Some(r.train_loss), &|r| Some(r.valid_loss), &|r| {
                    r.valid_loss_ema
                }],
            ),
        ],
    )
}
