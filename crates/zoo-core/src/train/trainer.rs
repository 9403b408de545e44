//! The training loop: the notebook's `train_model` (train an epoch, evaluate, record loss and
//! accuracy) made resumable, observable and reproducible.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    Checkpoint, CheckpointMeta, PartialEpoch, RunInfo, RunProgress, apply_weights, save_checkpoint,
};
use super::ema::Ema;
use super::loss::{correct_on_device, cross_entropy};
use super::metrics::{EpochMetrics, write_csv, write_curves};
use super::optim::{Optimizer, OptimizerConfig, clip_grad_norm};
use super::readback::read_to_host;
use super::running::{RunningTotals, StepTotals};
use super::schedule::Schedule;
use crate::data::loader::{Loader, mix_seed};
use crate::data::transforms::InputTransform;
use crate::distributed::sync::{BUCKET_BYTES, all_reduce_grads, all_reduce_values, broadcast_vars};
use crate::distributed::sync_norm::batch_norm_group;
use crate::distributed::{Collective, DataParallel};
use crate::init::{ParamStore, is_buffer};
use crate::model::Model;
use zoo_nn::context::with_batch_norm_group;

/// The optimisation recipe of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    /// Base learning rate (the notebook's per-model `learning_rate`).
    pub learning_rate: f64,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay and evaluate it
    /// beside the raw weights every epoch (timm's `--model-ema`).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Apply the weight decay to one-dimensional parameters (biases, BatchNorm) too; off, they
    /// are not decayed, as timm and torchvision's reference recipes do.
    #[serde(default)]
    pub decay_1d_params: bool,
}

impl Recipe {
    /// The notebook's recipe: plain SGD at a constant rate, plain cross-entropy.
    pub fn notebook(epochs: usize, learning_rate: f64) -> Self {
        Self {
            epochs,
            learning_rate,
            optimizer: OptimizerConfig::plain_sgd(),
            schedule: Schedule::Constant,
            label_smoothing: 0.0,
            clip_grad_norm: None,
            ema_decay: None,
            decay_1d_params: false,
        }
    }
}

/// Told about progress; the CLI draws a bar or prints lines.
pub trait TrainObserver {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize, _start_batch: usize) {
    }
    /// A step finished; `loss` is the mean training loss of the steps since the last read,
    /// when the trainer read it at this step.
    fn step(&mut self, _batch: usize, _loss: Option<f64>) {}
    fn evaluating(&mut self) {}
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
}

/// An observer that says nothing.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// Where a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All epochs done.
    Finished(Vec<EpochMetrics>),
    /// Stopped by `stop_after_steps` with a checkpoint written (as if killed).
    Interrupted { epoch: usize, batch: usize },
}

/// Accuracy, mean loss and confusion matrix (`[true][predicted]`) of a model on a loader.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub confusion: Vec<Vec<usize>>,
}

/// Evaluates `model` in evaluation mode (no graph kept: inputs carry no gradient). Loss, hits
/// and the confusion matrix add up on the device and are read once, at the end.
pub fn evaluate(
    model: &dyn Model,
    loader: &Loader,
    transform: &InputTransform,
    device: &Device,
) -> Result<Evaluation> {
    evaluate_on(model, loader, transform, device, None)
}

/// [`evaluate`] on one rank of a data-parallel group: each rank evaluates its shard of
/// `loader`'s batches and the totals are summed over ranks, so every rank gets the whole set's
/// figures. With `None` (or a world of one), [`evaluate`].
pub fn evaluate_on(
    model: &dyn Model,
    loader: &Loader,
    transform: &InputTransform,
    device: &Device,
    collective: Option<&dyn Collective>,
) -> Result<Evaluation> {
    let k = model.num_classes();
    let classes = Tensor::arange(0u32, k as u32, device)?.unsqueeze(0)?;
    let mut sums: Option<(Tensor, Tensor)> = None;
    let mut seen = 0usize;
    for batch in loader.epoch(0, 0) {
        if batch.is_empty() {
            continue; // a rank's empty slice of a short last batch
        }
        let x = transform.apply(&batch.images_tensor(device)?, device)?;
        let y = batch.labels_tensor(device)?;
        let logits = model.forward_t(&x, false)?.detach();
        let n = batch.len();
        let loss = (cross_entropy(&logits, &y, 0.0)?.to_dtype(DType::F32)? * n as f64)?;
        let hits = correct_on_device(&logits, &y)?;
        // Confusion `[true][predicted]` as one-hot(labels)^T one-hot(predictions): labels
        // outside the model's classes have an all-zero row and are left out.
        let truth = y
            .unsqueeze(1)?
            .broadcast_eq(&classes)?
            .to_dtype(DType::F32)?;
        let predicted = logits.argmax_keepdim(D::Minus1)?.broadcast_eq(&classes)?;
        let confusion = truth.t()?.matmul(&predicted.to_dtype(DType::F32)?)?;
        let step = (Tensor::stack(&[loss, hits], 0)?, confusion);
        sums = Some(match sums.take() {
            Some((a, c)) => ((a + step.0)?, (c + step.1)?),
            None => step,
        });
        seen += n;
    }
    let mut values = match &sums {
        Some((a, c)) => read_to_host(&Tensor::cat(&[a, &c.flatten_all()?], 0)?)?,
        None => vec![0.0; 2 + k * k],
    };
    if let Some(c) = collective.filter(|c| c.world_size() > 1) {
        values.push(seen as f64);
        values = all_reduce_values(c, &values, device)?;
        seen = values.pop().unwrap_or(0.0).round() as usize;
    }
    let confusion = values[2..]
        .chunks(k)
        .map(|row| row.iter().map(|&v| v.round() as usize).collect())
        .collect();
    Ok(Evaluation {
        loss: values[0] / seen.max(1) as f64,
        accuracy: values[1] / seen.max(1) as f64,
        confusion,
    })
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
    /// Stop (with a checkpoint) after this many optimiser steps in this call: a test's "kill".
    pub stop_after_steps: Option<u64>,
    /// Read the step's loss and accuracy from the device every this many steps (and at every
    /// checkpoint and epoch end); `None`: [`default_read_every`].
    pub read_every: Option<usize>,
    /// Data-parallel training: this rank's group, PyTorch DDP's semantics (weights from rank 0,
    /// gradients all-reduced and weighted by each rank's images, rank 0 alone writes). The
    /// loaders must be sharded for the same rank ([`Loader::sharded`]). `None` or a world of
    /// one: one process, bit for bit.
    pub data_parallel: Option<DataParallel>,
}

impl Trainer<'_> {
    pub fn last_path(run_dir: &Path) -> PathBuf {
        run_dir.join("last.safetensors")
    }

    pub fn best_path(run_dir: &Path) -> PathBuf {
        run_dir.join("best.safetensors")
    }

    /// Trains from scratch, or from `resume`, writing checkpoints, `metrics.csv` and
    /// `curves.png` into `run_dir`.
    pub fn fit(
        &mut self,
        train: &Loader,
        valid: &Loader,
        run_dir: &Path,
        resume: Option<Checkpoint>,
        observer: &mut dyn TrainObserver,
    ) -> Result<Outcome> {
        // Synchronised BatchNorm runs when asked, a world of one included (the same math as
        // the one-process kernel, summed in another order); everything else needs two ranks.
        let sync_bn = self
            .data_parallel
            .as_ref()
            .filter(|d| d.sync_batch_norm)
            .map(|d| d.collective.clone());
        let data_parallel = self
            .data_parallel
            .clone()
            .filter(|d| d.collective.world_size() > 1);
        let dist: Option<&dyn Collective> = data_parallel.as_ref().map(|d| &*d.collective);
        let writer = dist.is_none_or(|c| c.rank() == 0);
        if let Some(c) = &sync_bn {
            self.check_sync_batch_norm(train, c.world_size())?;
        }
        if let Some(c) = dist {
            for (what, loader) in [("training", train), ("validation", valid)] {
                if loader.shard() != crate::distributed::Shard::of(c) {
                    candle_core::bail!(
                        "the {what} loader is sharded as rank {} of {}, the trainer is rank {} of \
                         {}: shard it with Loader::sharded",
                        loader.shard().rank,
                        loader.shard().world,
                        c.rank(),
                        c.world_size()
                    )
                }
            }
            if resume.is_none() {
                // DDP's start: every rank takes rank 0's weights and buffers. (A resumed run's
                // ranks all read the same checkpoint.)
                broadcast_vars(c, &self.store.named_tensors(), 0, BUCKET_BYTES)?;
            }
        }
        let params = self.store.trainable();
        let mut optimizer = Optimizer::new(self.recipe.optimizer, params.clone())?;
        if !self.recipe.decay_1d_params {
            optimizer = optimizer.without_decay_on_1d();
        }
        let mut ema = self
            .recipe
            .ema_decay
            .map(|d| Ema::new(self.store, d))
            .transpose()?;
        let mut progress = RunProgress::default();
        let steps_per_epoch = train.num_batches();
        if let Some(ckpt) = resume {
            let source = "the checkpoint being resumed";
            apply_weights(self.store, &ckpt.model, source)?;
            optimizer.load_state(ckpt.meta.progress.step, ckpt.optimizer)?;
            if let Some(ema) = &mut ema {
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
            progress = ckpt.meta.progress;
        } else {
            self.model.context().seed_dropout(self.run.seed);
        }
        let rank = dist.map_or(0, |c| c.rank());
        if rank > 0 {
            // Each rank's dropout masks are its own, seeded by the run's seed, the rank and
            // the step it starts at (rank 0 keeps the one-process stream).
            self.model.context().seed_dropout(mix_seed(
                self.run.seed,
                progress.step,
                0xD0_0000 + rank as u64,
            ));
        }
        let total_steps = steps_per_epoch * self.recipe.epochs;
        let mut steps_this_call = 0u64;
        let read_every = self
            .read_every
            .unwrap_or(default_read_every(&self.device))
            .max(1);
        let mut totals = RunningTotals::new();
        if !self.device.is_cpu() {
            // Dropout masks come from the device's generator there (`nn::Dropout`): seeded by
            // the run's seed and, on resume, by the step it resumes at.
            self.device
                .set_seed(mix_seed(self.run.seed, progress.step, 0x0D20 + rank as u64))?;
        }
        let last = Self::last_path(run_dir);
        while progress.epoch < self.recipe.epochs {
            let epoch = progress.epoch;
            let wall_clock = Instant::now();
            let wall_before = progress.partial.wall_seconds;
            observer.epoch_start(epoch, self.recipe.epochs, steps_per_epoch, progress.batch);
            let mut lr = self.recipe.learning_rate;
            for batch in train.epoch(epoch, progress.batch) {
                let started = Instant::now();
                lr = self.recipe.schedule.lr(
                    self.recipe.learning_rate,
                    progress.step as usize,
                    total_steps,
                    steps_per_epoch,
                );
                let x = self
                    .transform
                    .apply(&batch.images_tensor(&self.device)?, &self.device)?;
                let y = batch.labels_tensor(&self.device)?;
                let (step, mut grads) = if batch.is_empty() {
                    // A rank's empty slice of a short last batch: it adds zeros.
                    (None, candle_core::backprop::GradStore::default())
                } else {
                    let forward = || self.model.forward_t(&x, true);
                    let logits = match &sync_bn {
                        Some(c) => with_batch_norm_group(
                            self.model.context(),
                            batch_norm_group(c),
                            forward,
                        )?,
                        None => forward()?,
                    };
                    let loss = cross_entropy(&logits, &y, self.recipe.label_smoothing)?;
                    let grads = match dist {
                        // Each rank's loss weighted by its share of the global batch, so that
                        // the sum over ranks is the global batch's mean (an uneven last batch
                        // included; the synchronised BatchNorm's gradients sum over ranks too).
                        Some(_) => {
                            let share = batch.len() as f64 / batch.global_len.max(1) as f64;
                            (&loss * share)?.backward()?
                        }
                        None => loss.backward()?,
                    };
                    (Some((loss, logits)), grads)
                };
                if let Some(c) = dist {
                    all_reduce_grads(c, &mut grads, &params, 1.0, BUCKET_BYTES)?;
                }
                if let Some(max_norm) = self.recipe.clip_grad_norm {
                    clip_grad_norm(&mut grads, &params, max_norm)?;
                }
                optimizer.step(&grads, lr)?;
                progress.step += 1;
                if let Some(ema) = &mut ema {
                    ema.update(progress.step)?;
                }
                progress.batch = batch.index + 1;
                match &step {
                    Some((loss, logits)) => totals.add(loss, logits, &y, batch.index)?,
                    None => totals.add_empty(batch.index),
                }
                progress.partial.seconds += started.elapsed().as_secs_f64();
                steps_this_call += 1;
                let stop = self.stop_after_steps == Some(steps_this_call);
                let periodic = self
                    .checkpoint_every
                    .is_some_and(|n| progress.step.is_multiple_of(n as u64));
                let read = totals.pending() >= read_every
                    || stop
                    || periodic
                    || progress.batch >= steps_per_epoch;
                let mean_loss = if read {
                    let read_started = Instant::now();
                    let mean = self.read_totals(&mut totals, &mut progress, epoch, &last, dist)?;
                    progress.partial.seconds += read_started.elapsed().as_secs_f64();
                    mean
                } else {
                    None
                };
                observer.step(batch.index, mean_loss);
                if (stop || periodic) && progress.batch < steps_per_epoch {
                    self.sync_buffers(dist, ema.as_mut())?;
                    self.check_finite(&last, epoch, progress.batch)?;
                    progress.rng = Some(self.model.context().dropout_state());
                    progress.partial.wall_seconds =
                        wall_before + wall_clock.elapsed().as_secs_f64();
                    if writer {
                        self.save_last(&last, &optimizer, ema.as_ref(), &progress)?;
                    }
                }
                if stop && progress.batch < steps_per_epoch {
                    return Ok(Outcome::Interrupted {
                        epoch,
                        batch: progress.batch,
                    });
                }
            }
            self.sync_buffers(dist, ema.as_mut())?;
            self.check_finite(&last, epoch, progress.batch)?;
            observer.evaluating();
            let evaluate = || evaluate_on(self.model, valid, &self.transform, &self.device, dist);
            let eval = evaluate()?;
            let eval_ema = ema.as_ref().map(|e| e.with_shadow(evaluate)).transpose()?;
            for (what, e) in std::iter::once(("the weights", &eval))
                .chain(eval_ema.as_ref().map(|e| ("the EMA of the weights", e)))
            {
                if !e.loss.is_finite() {
                    candle_core::bail!(
                        "validation loss of {what} is {} after epoch {}: training stopped; {}",
                        e.loss,
                        epoch + 1,
                        last_good(&last)
                    )
                }
            }
            let p = progress.partial;
            let row = EpochMetrics {
                epoch: epoch + 1,
                train_loss: p.loss_sum / p.seen.max(1) as f64,
                train_acc: p.correct as f64 / p.seen.max(1) as f64,
                valid_loss: eval.loss,
                valid_acc: eval.accuracy,
                valid_loss_ema: eval_ema.as_ref().map(|e| e.loss),
                valid_acc_ema: eval_ema.as_ref().map(|e| e.accuracy),
                lr,
                seconds: p.seconds,
                wall_seconds: wall_before + wall_clock.elapsed().as_secs_f64(),
                images_per_sec: p.seen as f64 / p.seconds.max(1e-9),
            };
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
            // best.safetensors first: a kill between the two writes leaves `last` at the
            // previous epoch, whose resume writes both again. Rank 0 alone writes.
            if writer && row.best_valid_acc() > best_so_far {
                let best = Self::best_path(run_dir);
                match &ema {
                    Some(e) if row.valid_acc_ema.is_some_and(|a| a > row.valid_acc) => {
                        let mut meta = self.meta(&progress);
                        meta.ema_weights = true;
                        e.with_shadow(|| save_checkpoint(&best, self.store, None, None, &meta))?
                    }
                    _ => save_checkpoint(&best, self.store, None, None, &self.meta(&progress))?,
                }
            }
            if writer {
                write_csv(&run_dir.join("metrics.csv"), &progress.metrics)?;
                write_curves(
                    &run_dir.join("curves.png"),
                    &self.run.model,
                    &progress.metrics,
                )?;
                self.save_last(&last, &optimizer, ema.as_ref(), &progress)?;
            }
            observer.epoch_end(&row);
            if self.stop_after_steps.is_some_and(|s| steps_this_call >= s)
                && progress.epoch < self.recipe.epochs
            {
                return Ok(Outcome::Interrupted {
                    epoch: progress.epoch,
                    batch: 0,
                });
            }
        }
        Ok(Outcome::Finished(progress.metrics))
    }

    /// Synchronised BatchNorm runs on CPU ranks, and every rank must join each layer's
    /// all-reduce: a rank with no images in the last batch could not.
    fn check_sync_batch_norm(&self, train: &Loader, world: usize) -> Result<()> {
        if !self.store.named_tensors().iter().any(|(n, _)| is_buffer(n)) {
            return Ok(()); // no BatchNorm
        }
        if !self.device.is_cpu() {
            candle_core::bail!(
                "synchronised BatchNorm runs on CPU ranks; on {:?} train with it off (zoo train \
                 --sync-bn false: each rank normalises with its own slice, DDP's default)",
                self.device
            )
        }
        let (n, b) = (train.num_samples(), train.config().batch_size);
        let last = if n % b == 0 { b } else { n % b };
        if last < world {
            candle_core::bail!(
                "the last batch has {last} images, fewer than the {world} ranks: with \
                 synchronised BatchNorm every rank needs at least one (choose another batch \
                 size or number of ranks, or --sync-bn false)"
            )
        }
        Ok(())
    }

    /// Data-parallel ranks' BatchNorm running statistics (and their EMA shadows) differ, each
    /// from its own images: rank 0's are taken by all, as DDP's buffer broadcast does, before
    /// evaluation and checkpoints.
    fn sync_buffers(&self, dist: Option<&dyn Collective>, ema: Option<&mut Ema>) -> Result<()> {
        let Some(c) = dist else { return Ok(()) };
        let buffers: Vec<_> = self
            .store
            .named_tensors()
            .into_iter()
            .filter(|(name, _)| is_buffer(name))
            .collect();
        broadcast_vars(c, &buffers, 0, BUCKET_BYTES)?;
        if let Some(ema) = ema {
            ema.broadcast_buffers(c, 0)?;
        }
        Ok(())
    }

    /// Writes `last.safetensors`: weights, optimiser and EMA state, the run at `progress`.
    fn save_last(
        &self,
        last: &Path,
        optimizer: &Optimizer,
        ema: Option<&Ema>,
        progress: &RunProgress,
    ) -> Result<()> {
        save_checkpoint(last, self.store, Some(optimizer), ema, &self.meta(progress))
    }

    /// The checkpoint metadata of this run at `progress`.
    fn meta(&self, progress: &RunProgress) -> CheckpointMeta {
        CheckpointMeta {
            run: self.run.clone(),
            progress: progress.clone(),
            ema_weights: false,
        }
    }

    /// Reads the step totals into `progress.partial`; an error if the loss was not finite.
    /// Returns the mean loss of the steps read.
    fn read_totals(
        &self,
        totals: &mut RunningTotals,
        progress: &mut RunProgress,
        epoch: usize,
        last: &Path,
        dist: Option<&dyn Collective>,
    ) -> Result<Option<f64>> {
        let Some(t) = totals.take()? else {
            return Ok(None);
        };
        let StepTotals {
            mut loss_sum,
            mut correct,
            mut seen,
            steps,
            first_batch,
        } = t;
        if let Some(c) = dist {
            let sums = all_reduce_values(
                c,
                &[loss_sum, correct as f64, seen as f64],
                &candle_core::Device::Cpu,
            )?;
            loss_sum = sums[0];
            (correct, seen) = (sums[1].round() as usize, sums[2].round() as usize);
        }
        if !loss_sum.is_finite() {
            let batches = match steps {
                1 => format!("batch {}", first_batch + 1),
                _ => format!("batches {} to {}", first_batch + 1, first_batch + steps),
            };
            candle_core::bail!(
                "training loss is {loss_sum} at epoch {} {batches}: training stopped; {} (try a \
                 lower learning rate or gradient clipping)",
                epoch + 1,
                last_good(last)
            )
        }
        progress.partial.loss_sum += loss_sum;
        progress.partial.correct += correct;
        progress.partial.seen += seen;
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

/// Where the last good checkpoint is, or that there is none yet.
fn last_good(last: &Path) -> String {
    if last.is_file() {
        format!("the last good checkpoint is {}", last.display())
    } else {
        "no checkpoint was written yet".to_string()
    }
}
