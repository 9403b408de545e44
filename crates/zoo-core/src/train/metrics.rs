//! Per-epoch metrics, `metrics.csv`, and the notebook's two curves as a PNG.

use std::path::Path;

use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::canvas::{BLACK, BLUE, Canvas, GREY, RED, WHITE};

/// One epoch of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based, as the notebook prints.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub valid_loss: f64,
    pub valid_acc: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    pub seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
}

pub const CSV_HEADER: &str =
    "epoch,train_loss,train_acc,valid_loss,valid_acc,lr,seconds,images_per_sec";

impl EpochMetrics {
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.2},{:.1}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.valid_loss,
            self.valid_acc,
            self.lr,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Writes `metrics.csv` (header and one row per epoch) atomically.
pub fn write_csv(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = format!("{CSV_HEADER}\n");
    for r in rows {
        text += &r.csv_row();
        text.push('\n');
    }
    crate::train::checkpoint::write_atomic(path, text.as_bytes())
}

fn plot(
    canvas: &mut Canvas,
    x0: usize,
    title: &str,
    ylabel: &str,
    series: [(&str, Vec<f64>, [u8; 3]); 2],
) {
    let (w, h) = (460usize, 300usize);
    let (left, top) = (x0 + 60, 40usize);
    canvas.text(left as isize, 12, title, BLACK, 2);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    if all.is_empty() {
        return;
    }
    let (mut lo, mut hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let px = |i: usize| (left + i * w / (n - 1)) as isize;
    let py = |v: f64| (top + h) as isize - ((v - lo) / (hi - lo) * h as f64) as isize;
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = py(v);
        canvas.line((left as isize, y), ((left + w) as isize, y), GREY, 1);
        canvas.text(x0 as isize + 4, y - 3, &format!("{v:.3}"), BLACK, 1);
    }
    canvas.line(
        (left as isize, top as isize),
        (left as isize, (top + h) as isize),
        BLACK,
        1,
    );
    canvas.line(
        (left as isize, (top + h) as isize),
        ((left + w) as isize, (top + h) as isize),
        BLACK,
        1,
    );
    for i in 0..n {
        canvas.text(
            px(i) - 3,
            (top + h + 6) as isize,
            &(i + 1).to_string(),
            BLACK,
            1,
        );
    }
    canvas.text(
        (left + w / 2 - 15) as isize,
        (top + h + 20) as isize,
        "epoch",
        BLACK,
        1,
    );
    canvas.text(x0 as isize + 4, (top - 14) as isize, ylabel, BLACK, 1);
    for (k, (name, values, colour)) in series.iter().enumerate() {
        for (i, pair) in values.windows(2).enumerate() {
            canvas.line((px(i), py(pair[0])), (px(i + 1), py(pair[1])), *colour, 2);
        }
        for (i, &v) in values.iter().enumerate() {
            let (x, y) = (px(i), py(v));
            canvas.line((x - 3, y - 3), (x + 3, y + 3), *colour, 1);
            canvas.line((x - 3, y + 3), (x + 3, y - 3), *colour, 1);
        }
        let ly = (top + 8 + 12 * k) as isize;
        canvas.fill_rect((left + w - 110) as isize, ly, 14, 3, *colour);
        canvas.text((left + w - 90) as isize, ly - 2, name, BLACK, 1);
    }
}

/// The notebook's two plots side by side: accuracy vs epoch (training red, validation blue)
/// and loss vs epoch (training blue, validation red), as in its `plot_accuracies` / `plot_losses`.
pub fn write_curves(path: &Path, title: &str, rows: &[EpochMetrics]) -> Result<()> {
    let mut canvas = Canvas::new(1080, 420, WHITE);
    let col = |f: fn(&EpochMetrics) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    plot(
        &mut canvas,
        0,
        "Accuracy vs. epochs",
        "accuracy",
        [
            ("Training", col(|r| r.train_acc), RED),
            ("Validation", col(|r| r.valid_acc), BLUE),
        ],
    );
    plot(
        &mut canvas,
        540,
        "Loss vs. epochs",
        "loss",
        [
            ("Training", col(|r| r.train_loss), BLUE),
            ("Validation", col(|r| r.valid_loss), RED),
        ],
    );
    canvas.text(10, 400, title, BLACK, 1);
    canvas.save_png(path)
}
