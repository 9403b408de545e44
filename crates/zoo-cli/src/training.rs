//! One training run from a resolved configuration: data, model, loaders, trainer, in its run
//! folder (locked, resumable).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use zoo_core::data::ImageDataset;
use zoo_core::data::augment::Augment;
use zoo_core::data::loader::{Loader, LoaderConfig};
use zoo_core::distributed::{Collective, DataParallel, Shard};
use zoo_core::init::ParamStore;
use zoo_core::train::checkpoint::{Checkpoint, RunInfo, load_checkpoint};
use zoo_core::train::trainer::{FineTune, Outcome, TrainObserver, Trainer};
use zoo_core::{InputSpec, Model};

use crate::device::parse_device_for_rank;
use crate::finetune::{fine_tune, load_pretrained, read_pretrained};
use crate::registry::{ModelEntry, find};
use crate::run_config::{RunConfig, load_data};
use crate::run_folder::RunLock;

/// Where this process trains: alone, or as one rank of a data-parallel group.
#[derive(Clone)]
pub struct Placement {
    pub data_parallel: Option<DataParallel>,
    /// The rank on this machine: `cuda`/`auto` mean `cuda:<local_rank>`.
    pub local_rank: usize,
    /// The device the collective was joined on (NCCL's communicator is bound to it); `None`:
    /// the configuration's.
    pub device: Option<Device>,
}

impl Placement {
    /// One process.
    pub const ALONE: Self = Self {
        data_parallel: None,
        local_rank: 0,
        device: None,
    };

    /// A rank of `collective`'s group on `device` (alone with `None`). BatchNorm statistics
    /// are synchronised over the global batch when `sync_bn` says so, by default on CPU ranks
    /// of a world of two or more (GPU ranks normalise per rank, DDP's default).
    pub fn joined(
        collective: Option<Arc<dyn Collective>>,
        sync_bn: Option<bool>,
        local_rank: usize,
        device: Device,
    ) -> Self {
        let world = collective.as_ref().map_or(1, |c| c.world_size());
        let sync_batch_norm = sync_bn.unwrap_or(device.is_cpu() && world > 1);
        Self {
            data_parallel: collective.map(|collective| DataParallel {
                collective,
                sync_batch_norm,
            }),
            local_rank,
            device: Some(device),
        }
    }

    /// The group, if any.
    pub fn collective(&self) -> Option<&dyn Collective> {
        self.data_parallel.as_ref().map(|d| &*d.collective)
    }

    /// Rank 0 (or alone): the one that writes the run folder and reports.
    pub fn is_writer(&self) -> bool {
        self.collective().is_none_or(|c| c.rank() == 0)
    }
}

/// Trains `config` into `run_dir` (resuming from its last checkpoint when `resume`), alone or
/// as one rank of `placement`'s group (rank 0 alone holds the folder's lock and writes).
pub fn run_training(
    config: &RunConfig,
    data_root: &Path,
    run_dir: &Path,
    resume: bool,
    placement: &Placement,
    observer: &mut dyn TrainObserver,
) -> Result<Outcome> {
    let entry = find(&config.model)?;
    config.validate()?;
    let device = match &placement.device {
        Some(d) => d.clone(),
        None => parse_device_for_rank(&config.device, placement.local_rank)?,
    };
    let writer = placement.is_writer();
    let _lock = take_run_folder(run_dir, placement)?;
    let config_toml = config.to_toml()?;
    let config_path = run_dir.join("config.toml");
    let resume_from = if resume {
        match checkpoint_to_resume(config, run_dir, &config_toml, &device, writer)? {
            ControlFlow::Break(finished) => return Ok(finished),
            ControlFlow::Continue(ckpt) => ckpt,
        }
    } else {
        None
    };
    let (train, test) = load_data(data_root, config)?;
    let input = InputSpec::square(train.channels, config.input_size);
    let store = ParamStore::new(config.seed, config.init, DType::F32, &device);
    let model = build_model(entry, config, &train, input, &store)?;
    let classes = train.classes.clone();
    let finetune = match &config.pretrained {
        Some(path) => Some(start_fine_tune(
            entry,
            config,
            (input, &classes),
            &store,
            (path, resume_from.is_none()),
        )?),
        None => None,
    };
    let (train_loader, valid_loader) = sharded_loaders(config, train, test, placement)?;
    if writer {
        zoo_core::fs::write_atomic(&config_path, config_toml.as_bytes())?;
    }
    let mut trainer = Trainer {
        model: model.as_ref(),
        store: &store,
        recipe: config.recipe.clone(),
        transform: config.eval_transform(),
        device,
        run: RunInfo::new(
            &config.model,
            input,
            classes,
            config.eval_transform(),
            config_toml,
            config.seed,
        ),
        checkpoint_every: Some(50),
        read_every: None,
        data_parallel: placement.data_parallel.clone(),
        finetune,
    };
    Ok(trainer.fit(&train_loader, &valid_loader, run_dir, resume_from, observer)?)
}

/// The run folder created and locked by the writer (its lock, held until dropped); the other
/// ranks wait until rank 0 holds it.
fn take_run_folder(run_dir: &Path, placement: &Placement) -> Result<Option<RunLock>> {
    let lock = if placement.is_writer() {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        Some(RunLock::acquire(run_dir)?)
    } else {
        None
    };
    if let Some(c) = placement.collective() {
        // The others read the folder once rank 0 holds it.
        c.barrier()
            .context("waiting for rank 0 to take the run folder")?;
    }
    Ok(lock)
}

/// The last checkpoint to resume from (none when the folder has none), or `Break` with the
/// outcome when that checkpoint already finished the run (the writer first makes its outputs
/// whole); an error when another configuration wrote it.
fn checkpoint_to_resume(
    config: &RunConfig,
    run_dir: &Path,
    config_toml: &str,
    device: &Device,
    writer: bool,
) -> Result<ControlFlow<Outcome, Option<Checkpoint>>> {
    let last = Trainer::last_path(run_dir);
    if !last.is_file() {
        return Ok(ControlFlow::Continue(None));
    }
    let ckpt =
        load_checkpoint(&last, device).with_context(|| format!("reading {}", last.display()))?;
    if ckpt.meta.run.config != config_toml {
        bail!(
            "{} was written by another configuration; move the run folder away or resume with the \
             same settings (its config.toml)",
            last.display()
        )
    }
    if ckpt.meta.progress.epoch >= config.recipe.epochs {
        // Finished: make its outputs whole (a kill between the last writes) and stop.
        if writer {
            let repaired = crate::run_folder::repair(run_dir)?;
            crate::run_folder::report_repair(&run_dir.display().to_string(), &repaired);
        }
        return Ok(ControlFlow::Break(Outcome::Finished(
            ckpt.meta.progress.metrics,
        )));
    }
    Ok(ControlFlow::Continue(Some(ckpt)))
}

/// A fine-tune's split of `entry`'s parameters; on a fresh start (not a resume, which takes
/// its weights from the run's own checkpoint) the pretrained weights copied into `store`.
fn start_fine_tune(
    entry: &ModelEntry,
    config: &RunConfig,
    (input, classes): (InputSpec, &[String]),
    store: &ParamStore,
    (path, fresh): (&Path, bool),
) -> Result<FineTune> {
    let finetune = fine_tune(entry, input, config.freeze_backbone)?;
    if fresh {
        let ckpt = read_pretrained(path, &config.model)?;
        load_pretrained(store, &ckpt, &finetune.head, classes, path)?;
    }
    Ok(finetune)
}

/// `entry`'s network for `input` and `train`'s classes, its parameters in `store`; an error
/// when the data's channels are not the model's.
fn build_model(
    entry: &ModelEntry,
    config: &RunConfig,
    train: &ImageDataset,
    input: InputSpec,
    store: &ParamStore,
) -> Result<Box<dyn Model>> {
    if train.channels != entry.reference_input.channels {
        bail!(
            "{} has {}-channel images; {} takes {} channels",
            config.dataset,
            train.channels,
            config.model,
            entry.reference_input.channels
        )
    }
    entry
        .build(input, train.classes.len(), store.var_builder())
        .with_context(|| format!("building {} for {input}", config.model))
}

/// The training loader (shuffled, augmented as configured) and the validation loader (in
/// order, not augmented), each reading this rank's shard.
fn sharded_loaders(
    config: &RunConfig,
    train: ImageDataset,
    test: ImageDataset,
    placement: &Placement,
) -> Result<(Loader, Loader)> {
    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        augment: config.augment,
        ..LoaderConfig::notebook(config.seed)
    };
    let shard = placement.collective().map_or(Shard::WHOLE, Shard::of);
    let train_loader = Loader::new(Arc::new(train), loader_config)?.sharded(shard);
    let valid_loader = Loader::new(
        Arc::new(test),
        LoaderConfig {
            shuffle: false,
            augment: Augment::default(),
            ..loader_config
        },
    )?
    .sharded(shard);
    Ok((train_loader, valid_loader))
}
