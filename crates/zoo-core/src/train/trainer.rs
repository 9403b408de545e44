//! The training loop: the notebook's `train_model` (train an epoch, evaluate, record loss and
//! accuracy) made resumable, observable and reproducible: a short epoch loop over the train
//! step (`step.rs`), the evaluator (`evaluator.rs`), the checkpointer (`checkpointer.rs`) and
//! the data-parallel strategy (`ranks.rs`), reporting to a [`TrainObserver`].

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::checkpoint::{Checkpoint, PartialEpoch, RunInfo, RunProgress, apply_weights};
use super::checkpointer::{Checkpointer, best_path, last_good, last_path};
use super::ema::Ema;
use super::evaluator::Evaluator;
pub use super::evaluator::{Evaluation, evaluate, evaluate_on};
pub use super::finetune::FineTune;
use super::metrics::EpochMetrics;
use super::optim::Optimizer;
use super::ranks::Ranks;
use super::readback::read_to_host;
pub use super::recipe::Recipe;
use super::running::{RunningTotals, StepTotals};
use super::step::TrainStep;
use crate::data::loader::{Batch, Loader};
use crate::data::transforms::InputTransform;
use crate::distributed::DataParallel;
use crate::init::ParamStore;
use crate::model::Model;

/// What an observer tells the trainer after a step or an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop here with a checkpoint written (as a kill would, but cleanly): `fit` returns
    /// [`Outcome::Interrupted`], and a resume continues exactly.
    Stop,
}

/// Told about progress (the CLI draws a bar or prints lines); may stop the run.
pub trait TrainObserver {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize, _start_batch: usize) {
    }
    /// A step finished; `loss` is the mean training loss of the steps since the last read,
    /// when the trainer read it at this step.
    fn step(&mut self, _batch: usize, _loss: Option<f64>) -> Control {
        Control::Continue
    }
    fn evaluating(&mut self) {}
    fn epoch_end(&mut self, _metrics: &EpochMetrics) -> Control {
        Control::Continue
    }
}

/// An observer that says nothing.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// Stops a run after `steps` optimiser steps of this call (at that step, or, when it ends an
/// epoch, after the epoch's evaluation and checkpoint), passing everything on to `inner`: a
/// time-boxed run, or a test's kill.
pub struct StopAfterSteps<'a> {
    steps: u64,
    taken: u64,
    inner: &'a mut dyn TrainObserver,
}

impl<'a> StopAfterSteps<'a> {
    pub fn new(steps: u64, inner: &'a mut dyn TrainObserver) -> Self {
        Self {
            steps,
            taken: 0,
            inner,
        }
    }
}

impl TrainObserver for StopAfterSteps<'_> {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, start_batch: usize) {
        self.inner.epoch_start(epoch, epochs, batches, start_batch)
    }
    fn step(&mut self, batch: usize, loss: Option<f64>) -> Control {
        self.taken += 1;
        let inner = self.inner.step(batch, loss);
        if self.taken == self.steps {
            Control::Stop
        } else {
            inner
        }
    }
    fn evaluating(&mut self) {
        self.inner.evaluating()
    }
    fn epoch_end(&mut self, metrics: &EpochMetrics) -> Control {
        let inner = self.inner.epoch_end(metrics);
        if self.taken >= self.steps {
            Control::Stop
        } else {
            inner
        }
    }
}

/// Where a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All epochs done.
    Finished(Vec<EpochMetrics>),
    /// Stopped by its observer ([`Control::Stop`]) with a checkpoint written (as if killed).
    Interrupted { epoch: usize, batch: usize },
}

/// Everything a training run needs.
pub struct Trainer<'a> {
    pub model: &'a dyn Model,
    pub store: &'a ParamStore,
    pub recipe: Recipe,
    pub transform: InputTransform,
    pub device: Device,
    /// What the run is, written into every checkpoint beside the trainer's progress.
    pub run: RunInfo,
    /// Write `last.safetensors` every this many steps inside an epoch too.
    pub checkpoint_every: Option<usize>,
    /// Read the step's loss and accuracy from the device every this many steps (and at every
    /// checkpoint and epoch end); `None`: [`default_read_every`].
    pub read_every: Option<usize>,
    /// Data-parallel training: this rank's group, PyTorch DDP's semantics (weights from rank 0,
    /// gradients all-reduced and weighted by each rank's images, rank 0 alone writes). The
    /// loaders must be sharded for the same rank ([`Loader::sharded`]). `None` or a world of
    /// one: one process, bit for bit.
    pub data_parallel: Option<DataParallel>,
    /// A fine-tune of pretrained weights: the new head, and whether the backbone is frozen
    /// (`None`: every parameter trains at the recipe's rate).
    pub finetune: Option<FineTune>,
}

/// What `fit` carries from step to step: the optimiser, the EMA, the run's progress and the
/// step totals not yet read from the device.
struct RunState {
    optimizer: Optimizer,
    ema: Option<Ema>,
    progress: RunProgress,
    totals: RunningTotals,
}

/// When an epoch (or the part of it this call runs) started, and the wall time it had before.
#[derive(Clone, Copy)]
struct EpochClock {
    started: Instant,
    before: f64,
}

impl EpochClock {
    fn wall_seconds(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }
}

impl Trainer<'_> {
    /// `run_dir/last.safetensors`.
    pub fn last_path(run_dir: &Path) -> PathBuf {
        last_path(run_dir)
    }

    /// `run_dir/best.safetensors`.
    pub fn best_path(run_dir: &Path) -> PathBuf {
        best_path(run_dir)
    }

    /// Trains from scratch, or from `resume`, writing checkpoints, `metrics.csv` and
    /// `curves.png` into `run_dir`: an epoch loop over the `TrainStep`, the `Evaluator` and
    /// the `Checkpointer`, data-parallel as `Ranks` says.
    pub fn fit(
        &mut self,
        train: &Loader,
        valid: &Loader,
        run_dir: &Path,
        resume: Option<Checkpoint>,
        observer: &mut dyn TrainObserver,
    ) -> Result<Outcome> {
        let ranks = Ranks::new(self.data_parallel.as_ref());
        ranks.check(self.store, &self.device, train, valid)?;
        if resume.is_none() {
            ranks.start(self.store)?;
        }
        let params = match &self.finetune {
            Some(f) => f.prepare(self.model, self.store.trainable()),
            None => self.store.trainable(),
        };
        let mut state = self.start_state(&params, train.num_batches(), resume)?;
        ranks.seed_dropout(self.model, &self.device, self.run.seed, state.progress.step)?;
        let files = Checkpointer::new(run_dir, self.store, &self.run, ranks.writer());
        while state.progress.epoch < self.recipe.epochs {
            let clock = EpochClock {
                started: Instant::now(),
                before: state.progress.partial.wall_seconds,
            };
            let step = TrainStep {
                model: self.model,
                params: &params,
                recipe: &self.recipe,
                ranks: &ranks,
            };
            let lr = match self.train_epoch(train, &step, &files, &mut state, clock, observer)? {
                ControlFlow::Continue(lr) => lr,
                ControlFlow::Break(outcome) => return Ok(outcome),
            };
            let control =
                self.end_epoch(valid, &ranks, &files, &mut state, (lr, clock), observer)?;
            if control == Control::Stop && state.progress.epoch < self.recipe.epochs {
                return Ok(Outcome::Interrupted {
                    epoch: state.progress.epoch,
                    batch: 0,
                });
            }
        }
        Ok(Outcome::Finished(state.progress.metrics))
    }

    /// The optimiser, EMA and progress a run starts from: fresh (the dropout generator seeded
    /// with the run's seed), or `resume`'s.
    fn start_state(
        &self,
        params: &[(String, Var)],
        steps_per_epoch: usize,
        resume: Option<Checkpoint>,
    ) -> Result<RunState> {
        let mut optimizer = Optimizer::new(self.recipe.optimizer, Vec::from(params))?;
        if !self.recipe.decay_1d_params {
            optimizer = optimizer.without_decay_on_1d();
        }
        if let (Some(f), Some(factor)) = (&self.finetune, self.recipe.backbone_lr_factor) {
            optimizer = optimizer.with_lr_factor(factor, |name| !f.head.contains(name));
        }
        let mut ema = self
            .recipe
            .ema_decay
            .map(|d| Ema::new(self.store, d))
            .transpose()?;
        let progress = match resume {
            Some(ckpt) => self.resume_from(ckpt, steps_per_epoch, &mut optimizer, ema.as_mut())?,
            None => {
                self.model.context().seed_dropout(self.run.seed);
                RunProgress::default()
            }
        };
        Ok(RunState {
            optimizer,
            ema,
            progress,
            totals: RunningTotals::new(),
        })
    }

    /// Loads `ckpt` into the weights, optimiser, EMA and dropout generator; its progress.
    fn resume_from(
        &self,
        ckpt: Checkpoint,
        steps_per_epoch: usize,
        optimizer: &mut Optimizer,
        ema: Option<&mut Ema>,
    ) -> Result<RunProgress> {
        let source = "the checkpoint being resumed";
        apply_weights(self.store, &ckpt.model, source)?;
        optimizer.load_state(ckpt.meta.progress.step, ckpt.optimizer)?;
        if let Some(ema) = ema {
            ema.load_state(&ckpt.ema, source)?;
        }
        if let Some(state) = &ckpt.meta.progress.rng {
            self.model.context().set_dropout_state(state);
        }
        if ckpt.meta.progress.batch >= steps_per_epoch.max(1) {
            candle_core::bail!(
                "{source} stands at batch {} of epoch {}, but an epoch has {steps_per_epoch} \
                 batches here: it was written for other data",
                ckpt.meta.progress.batch,
                ckpt.meta.progress.epoch + 1
            )
        }
        Ok(ckpt.meta.progress)
    }

    /// The training steps of the current epoch from its current batch; the last step's
    /// learning rate, or the outcome when the run stops inside the epoch.
    fn train_epoch(
        &self,
        train: &Loader,
        step: &TrainStep,
        files: &Checkpointer,
        state: &mut RunState,
        clock: EpochClock,
        observer: &mut dyn TrainObserver,
    ) -> Result<ControlFlow<Outcome, f64>> {
        let epoch = state.progress.epoch;
        let steps_per_epoch = train.num_batches();
        let total_steps = steps_per_epoch * self.recipe.epochs;
        observer.epoch_start(
            epoch,
            self.recipe.epochs,
            steps_per_epoch,
            state.progress.batch,
        );
        let mut lr = self.recipe.learning_rate;
        for batch in train.epoch(epoch, state.progress.batch) {
            let started = Instant::now();
            lr = self.recipe.schedule.lr(
                self.recipe.learning_rate,
                state.progress.step as usize,
                total_steps,
                steps_per_epoch,
            );
            let (x, y) = self.device_batch(&batch)?;
            let next = state.progress.step + 1;
            let output = step.run(
                &batch,
                (&x, &y),
                lr,
                &mut state.optimizer,
                state.ema.as_mut(),
                next,
            )?;
            state.progress.step = next;
            state.progress.batch = batch.index + 1;
            match &output {
                Some((loss, logits)) => state.totals.add(loss, logits, &y, batch.index)?,
                None => state.totals.add_empty(batch.index),
            }
            state.progress.partial.seconds += started.elapsed().as_secs_f64();
            if let Some(outcome) = self.after_step(
                batch.index,
                steps_per_epoch,
                step.ranks,
                files,
                state,
                clock,
                observer,
            )? {
                return Ok(ControlFlow::Break(outcome));
            }
        }
        Ok(ControlFlow::Continue(lr))
    }

    /// A batch on the device: its images transformed (resize, normalise), its labels.
    fn device_batch(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let images = batch.images_tensor(&self.device)?;
        let x = self.transform.apply(&images, &self.device)?;
        Ok((x, batch.labels_tensor(&self.device)?))
    }

    /// After a step: read the totals when due, tell the observer, write `last` when a periodic
    /// checkpoint or a stop falls inside the epoch; the outcome when the run stops here.
    #[allow(clippy::too_many_arguments)]
    fn after_step(
        &self,
        batch: usize,
        steps_per_epoch: usize,
        ranks: &Ranks,
        files: &Checkpointer,
        state: &mut RunState,
        clock: EpochClock,
        observer: &mut dyn TrainObserver,
    ) -> Result<Option<Outcome>> {
        let progress = &state.progress;
        let periodic = self
            .checkpoint_every
            .is_some_and(|n| progress.step.is_multiple_of(n as u64));
        let read_every = self
            .read_every
            .unwrap_or(default_read_every(&self.device))
            .max(1);
        let end_of_epoch = progress.batch >= steps_per_epoch;
        let due = state.totals.pending() >= read_every || periodic || end_of_epoch;
        let mean_loss = if due {
            self.timed_read(state, ranks, files)?
        } else {
            None
        };
        let stop = observer.step(batch, mean_loss) == Control::Stop;
        if stop && !due {
            // The checkpoint holds every step's totals.
            self.timed_read(state, ranks, files)?;
        }
        if (stop || periodic) && !end_of_epoch {
            ranks.sync_buffers(self.store, state.ema.as_mut())?;
            self.check_finite(files.last(), state.progress.epoch, state.progress.batch)?;
            state.progress.rng = Some(self.model.context().dropout_state());
            state.progress.partial.wall_seconds = clock.wall_seconds();
            files.save_last(&state.optimizer, state.ema.as_ref(), &state.progress)?;
        }
        Ok((stop && !end_of_epoch).then_some(Outcome::Interrupted {
            epoch: state.progress.epoch,
            batch: state.progress.batch,
        }))
    }

    /// The end of an epoch: buffers from rank 0, evaluation of the weights (and their EMA),
    /// the metrics row, the epoch's files. `(lr, clock)`: the epoch's last learning rate and
    /// its clock.
    fn end_epoch(
        &self,
        valid: &Loader,
        ranks: &Ranks,
        files: &Checkpointer,
        state: &mut RunState,
        (lr, clock): (f64, EpochClock),
        observer: &mut dyn TrainObserver,
    ) -> Result<Control> {
        let epoch = state.progress.epoch;
        let last = files.last();
        ranks.sync_buffers(self.store, state.ema.as_mut())?;
        self.check_finite(last, epoch, state.progress.batch)?;
        observer.evaluating();
        let evaluator = Evaluator {
            model: self.model,
            loader: valid,
            transform: &self.transform,
            device: &self.device,
            dist: ranks.dist(),
            // Only after the last epoch, where the schedule ends: a second pass every epoch
            // would cost the hour's budget minutes.
            flip: self.recipe.eval_flip && epoch + 1 == self.recipe.epochs,
        };
        let (eval, eval_ema) = evaluator.epoch(state.ema.as_ref(), epoch, last)?;
        let p = state.progress.partial;
        let row = EpochMetrics {
            epoch: epoch + 1,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_acc: p.correct as f64 / p.seen.max(1) as f64,
            valid_loss: eval.loss,
            valid_acc: eval.accuracy,
            valid_loss_ema: eval_ema.as_ref().map(|e| e.loss),
            valid_acc_ema: eval_ema.as_ref().map(|e| e.accuracy),
            valid_acc_flip: eval.flip_accuracy,
            valid_acc_ema_flip: eval_ema.as_ref().and_then(|e| e.flip_accuracy),
            lr,
            seconds: p.seconds,
            wall_seconds: clock.wall_seconds(),
            images_per_sec: p.seen as f64 / p.seconds.max(1e-9),
        };
        let progress = &mut state.progress;
        let best_so_far = progress
            .metrics
            .iter()
            .map(EpochMetrics::best_valid_acc)
            .fold(f64::MIN, f64::max);
        progress.metrics.push(row);
        progress.epoch += 1;
        progress.batch = 0;
        progress.partial = PartialEpoch::default();
        progress.rng = Some(self.model.context().dropout_state());
        files.end_epoch(
            &state.optimizer,
            state.ema.as_ref(),
            &state.progress,
            best_so_far,
        )?;
        Ok(observer.epoch_end(&row))
    }

    /// [`Self::read_totals`], its time counted in the epoch's training seconds.
    fn timed_read(
        &self,
        state: &mut RunState,
        ranks: &Ranks,
        files: &Checkpointer,
    ) -> Result<Option<f64>> {
        let started = Instant::now();
        let mean = self.read_totals(state, ranks, files.last())?;
        state.progress.partial.seconds += started.elapsed().as_secs_f64();
        Ok(mean)
    }

    /// Reads the step totals into `state.progress.partial` (summed over ranks); an error if
    /// the loss was not finite. Returns the mean loss of the steps read.
    fn read_totals(&self, state: &mut RunState, ranks: &Ranks, last: &Path) -> Result<Option<f64>> {
        let Some(t) = state.totals.take()? else {
            return Ok(None);
        };
        let StepTotals {
            loss_sum,
            correct,
            seen,
            steps,
            first_batch,
        } = t;
        let sums = ranks.reduce_values(&[loss_sum, correct as f64, seen as f64])?;
        let (loss_sum, correct, seen) = match ranks.dist() {
            Some(_) => (sums[0], sums[1].round() as usize, sums[2].round() as usize),
            None => (loss_sum, correct, seen),
        };
        if !loss_sum.is_finite() {
            let batches = match steps {
                1 => format!("batch {}", first_batch + 1),
                _ => format!("batches {} to {}", first_batch + 1, first_batch + steps),
            };
            candle_core::bail!(
                "training loss is {loss_sum} at epoch {} {batches}: training stopped; {} (try a \
                 lower learning rate or gradient clipping)",
                state.progress.epoch + 1,
                last_good(last)
            )
        }
        let partial = &mut state.progress.partial;
        partial.loss_sum += loss_sum;
        partial.correct += correct;
        partial.seen += seen;
        Ok(Some(loss_sum / seen.max(1) as f64))
    }

    /// An error naming the first parameter with a NaN or infinite value, if any.
    fn check_finite(&self, last: &Path, epoch: usize, batch: usize) -> Result<()> {
        let tensors = self.store.named_tensors();
        if tensors.is_empty() {
            return Ok(());
        }
        // One read for all tensors: the sum of |x| of each, NaN or infinite if any value is.
        let sums = tensors
            .iter()
            .map(|(_, var)| var.as_tensor().abs()?.to_dtype(DType::F32)?.sum_all())
            .collect::<Result<Vec<_>>>()?;
        let sums = read_to_host(&Tensor::stack(&sums, 0)?)?;
        if let Some(((name, _), _)) = tensors.iter().zip(&sums).find(|(_, s)| !s.is_finite()) {
            candle_core::bail!(
                "tensor `{name}` holds NaN or infinite values after epoch {} batch {batch}: \
                 training stopped; {} (try a lower learning rate or gradient clipping)",
                epoch + 1,
                last_good(last)
            )
        }
        Ok(())
    }
}

/// How often the step's totals are read when the trainer is not told: every step on the CPU,
/// where a read is a copy in memory, every 50 steps on a GPU, where it waits for the device.
pub fn default_read_every(device: &Device) -> usize {
    if device.is_cpu() { 1 } else { 50 }
}
