//! A model rebuilt from a checkpoint (the registry entry it names, its weights, its metadata),
//! for `zoo eval` and `zoo predict`.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::CheckpointMeta;
use zoo_core::train::checkpoint_stream::{read_index, stream_weights};

use crate::device::parse_device;
use crate::registry::find;

/// A model rebuilt from a checkpoint, with what it needs to evaluate and predict.
pub struct LoadedModel {
    pub meta: CheckpointMeta,
    pub store: ParamStore,
    pub model: Box<dyn zoo_core::Model>,
    pub device: Device,
}

/// Rebuilds the checkpoint's model from the registry (its variables zeros, nothing drawn) and
/// streams its weights in from the file: the weights are in memory once.
pub fn load_model(checkpoint: &Path, device: &str) -> Result<LoadedModel> {
    let device = parse_device(device)?;
    let index = read_index(checkpoint)?;
    let entry = find(&index.meta.run.model)?;
    let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &device);
    let model = entry.build(
        index.meta.run.input,
        index.meta.run.num_classes,
        store.zeroed_var_builder(),
    )?;
    stream_weights(&store, &index)?;
    Ok(LoadedModel {
        meta: index.meta,
        store,
        model,
        device,
    })
}
