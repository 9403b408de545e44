//! A model rebuilt from a checkpoint (the registry entry it names, its weights, its metadata),
//! for `zoo eval` and `zoo predict`.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::{CheckpointMeta, apply_weights, load_checkpoint};

use crate::device::parse_device;
use crate::registry::find;

/// A model rebuilt from a checkpoint, with what it needs to evaluate and predict.
pub struct LoadedModel {
    pub meta: CheckpointMeta,
    pub store: ParamStore,
    pub model: Box<dyn zoo_core::Model>,
    pub device: Device,
}

/// Rebuilds the checkpoint's model from the registry and loads its weights.
pub fn load_model(checkpoint: &Path, device: &str) -> Result<LoadedModel> {
    let device = parse_device(device)?;
    let ckpt = load_checkpoint(checkpoint, &device)?;
    let entry = find(&ckpt.meta.run.model)?;
    let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &device);
    let model = entry.build(
        ckpt.meta.run.input,
        ckpt.meta.run.num_classes,
        store.var_builder(),
    )?;
    apply_weights(&store, &ckpt.model, &checkpoint.display().to_string())?;
    Ok(LoadedModel {
        meta: ckpt.meta,
        store,
        model,
        device,
    })
}
