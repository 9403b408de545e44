//! The trainer's data-parallel strategy (PyTorch DDP's semantics): which group a run trains
//! in, the checks its loaders must pass, rank 0's weights at the start, the training forward
//! with synchronised BatchNorm, each rank's loss weighted by its share of the global batch,
//! gradients and totals summed over ranks, BatchNorm buffers taken from rank 0 before
//! evaluation and checkpoints, and per-rank dropout streams. A run alone is the one-process
//! trainer, bit for bit.

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

use super::ema::Ema;
use crate::data::loader::{Batch, Loader, mix_seed};
use crate::distributed::sync::{BUCKET_BYTES, all_reduce_grads, all_reduce_values, broadcast_vars};
use crate::distributed::sync_norm::batch_norm_group;
use crate::distributed::{Collective, DataParallel, Shard};
use crate::init::{ParamStore, is_buffer};
use crate::model::Model;
use zoo_nn::context::with_batch_norm_group;

/// A run's place in its data-parallel group, if any.
pub(crate) struct Ranks {
    /// The group, when it has two ranks or more.
    group: Option<Arc<dyn Collective>>,
    /// The group BatchNorm synchronises over: whenever asked, a world of one included (the
    /// same math as the one-process kernel, summed in another order).
    sync_batch_norm: Option<Arc<dyn Collective>>,
}

impl Ranks {
    pub fn new(data_parallel: Option<&DataParallel>) -> Self {
        Self {
            group: data_parallel
                .filter(|d| d.collective.world_size() > 1)
                .map(|d| d.collective.clone()),
            sync_batch_norm: data_parallel
                .filter(|d| d.sync_batch_norm)
                .map(|d| d.collective.clone()),
        }
    }

    /// The group of two ranks or more, if any.
    pub fn dist(&self) -> Option<&dyn Collective> {
        self.group.as_deref()
    }

    /// This process's rank (0 alone).
    pub fn rank(&self) -> usize {
        self.dist().map_or(0, |c| c.rank())
    }

    /// Whether this process writes the run's files: rank 0, or a process alone.
    pub fn writer(&self) -> bool {
        self.rank() == 0
    }

    /// Checks that the loaders are sharded for this rank and that synchronised BatchNorm can
    /// run (CPU ranks, and at least one image per rank in the last batch).
    pub fn check(
        &self,
        store: &ParamStore,
        device: &Device,
        train: &Loader,
        valid: &Loader,
    ) -> Result<()> {
        if let Some(c) = &self.sync_batch_norm {
            check_sync_batch_norm(store, device, train, c.world_size())?;
        }
        let Some(c) = self.dist() else { return Ok(()) };
        for (what, loader) in [("training", train), ("validation", valid)] {
            if loader.shard() != Shard::of(c) {
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
        Ok(())
    }

    /// DDP's start: every rank takes rank 0's weights and buffers. (A resumed run's ranks all
    /// read the same checkpoint and skip this.)
    pub fn start(&self, store: &ParamStore) -> Result<()> {
        match self.dist() {
            Some(c) => broadcast_vars(c, &store.named_tensors(), 0, BUCKET_BYTES),
            None => Ok(()),
        }
    }

    /// Each rank's dropout masks are its own: a rank other than 0 reseeds the network's
    /// generator from the run's seed, its rank and the step it starts at (rank 0 keeps the
    /// one-process stream). Off the CPU the masks come from the device's generator, seeded the
    /// same way.
    pub fn seed_dropout(
        &self,
        model: &dyn Model,
        device: &Device,
        seed: u64,
        step: u64,
    ) -> Result<()> {
        let rank = self.rank() as u64;
        if rank > 0 {
            model
                .context()
                .seed_dropout(mix_seed(seed, step, 0xD0_0000 + rank));
        }
        if !device.is_cpu() {
            device.set_seed(mix_seed(seed, step, 0x0D20 + rank))?;
        }
        Ok(())
    }

    /// The training forward: BatchNorm over the group's global batch when synchronised.
    pub fn forward(&self, model: &dyn Model, x: &Tensor) -> Result<Tensor> {
        let forward = || model.forward_t(x, true);
        match &self.sync_batch_norm {
            Some(c) => with_batch_norm_group(model.context(), batch_norm_group(c), forward),
            None => forward(),
        }
    }

    /// The gradients of `loss`: a rank's loss weighted by its share of the global batch, so
    /// that the sum over ranks is the global batch's mean (an uneven last batch included).
    pub fn backward(&self, loss: &Tensor, batch: &Batch) -> Result<GradStore> {
        match self.dist() {
            Some(_) => {
                let share = batch.len() as f64 / batch.global_len.max(1) as f64;
                (loss * share)?.backward()
            }
            None => loss.backward(),
        }
    }

    /// Sums `grads` over the group, in flat buckets.
    pub fn reduce_grads(&self, grads: &mut GradStore, params: &[(String, Var)]) -> Result<()> {
        match self.dist() {
            Some(c) => all_reduce_grads(c, grads, params, 1.0, BUCKET_BYTES),
            None => Ok(()),
        }
    }

    /// Sums per-rank totals over the group (read on the host).
    pub fn reduce_values(&self, values: &[f64]) -> Result<Vec<f64>> {
        match self.dist() {
            Some(c) => all_reduce_values(c, values, &Device::Cpu),
            None => Ok(Vec::from(values)),
        }
    }

    /// Ranks' BatchNorm running statistics (and their EMA shadows) differ, each from its own
    /// images: rank 0's are taken by all, as DDP's buffer broadcast does, before evaluation and
    /// checkpoints.
    pub fn sync_buffers(&self, store: &ParamStore, ema: Option<&mut Ema>) -> Result<()> {
        let Some(c) = self.dist() else { return Ok(()) };
        let buffers: Vec<_> = store
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
}

/// Synchronised BatchNorm runs on CPU ranks, and every rank must join each layer's
/// all-reduce: a rank with no images in the last batch could not.
fn check_sync_batch_norm(
    store: &ParamStore,
    device: &Device,
    train: &Loader,
    world: usize,
) -> Result<()> {
    if !store.named_tensors().iter().any(|(n, _)| is_buffer(n)) {
        return Ok(()); // no BatchNorm
    }
    if !device.is_cpu() {
        candle_core::bail!(
            "synchronised BatchNorm runs on CPU ranks; on {:?} train with it off (zoo train \
             --sync-bn false: each rank normalises with its own slice, DDP's default)",
            device
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
