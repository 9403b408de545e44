//! What a run shows while it trains: a bar on a terminal, otherwise one line per epoch.

use std::io::IsTerminal;

use zoo_core::train::metrics::EpochMetrics;
use zoo_core::train::trainer::{Control, TrainObserver};

/// Progress: a bar on a terminal, otherwise one line per epoch.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    /// Shows nothing (a data-parallel rank other than 0).
    silent: bool,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self {
            bar: None,
            label: label.to_string(),
            silent: false,
        }
    }

    /// This display where `show`, nothing otherwise (rank 0 alone shows progress).
    pub fn quiet_unless(self, show: bool) -> Self {
        Self {
            silent: !show,
            ..self
        }
    }
}

impl TrainObserver for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, start_batch: usize) {
        if self.silent {
            return;
        }
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
    fn step(&mut self, _batch: usize, loss: Option<f64>) -> Control {
        if self.silent {
            return Control::Continue;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if let Some(loss) = loss {
                bar.set_message(format!("loss {loss:.4}"));
            }
        }
        Control::Continue
    }
    fn evaluating(&mut self) {
        if self.silent {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message("evaluating");
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) -> Control {
        if self.silent {
            return Control::Continue;
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let extra = [
            ("EMA", m.valid_acc_ema),
            ("flip", m.valid_acc_flip),
            ("EMA flip", m.valid_acc_ema_flip),
        ]
        .iter()
        .filter_map(|(what, a)| a.map(|a| format!(" {what} {a:.4}")))
        .collect::<String>();
        eprintln!(
            "{} epoch {:>3}  train loss {:.4} acc {:.4}  valid loss {:.4} acc {:.4}{extra}  lr {:.4}  {:.0}s  {:.1} img/s",
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
        Control::Continue
    }
}
