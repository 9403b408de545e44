//! Checkpoints: safetensors files holding the model's tensors, the optimiser state and, in the
//! header metadata, everything else a run needs to resume exactly (epoch, batch, step, metrics,
//! generator state) or to predict (classes, evaluation transform). Written to a temporary file
//! and renamed, so a checkpoint on disk is always whole.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::ema::Ema;
use super::metrics::EpochMetrics;
use super::optim::Optimizer;
use crate::data::transforms::InputTransform;
use crate::init::ParamStore;
use crate::model::InputSpec;
use crate::rng::RngState;

/// Prefix of the optimiser's tensors inside a checkpoint.
pub const OPTIMIZER_PREFIX: &str = "__optimizer__.";
/// Prefix of the EMA of the weights inside a checkpoint.
pub const EMA_PREFIX: &str = "__ema__.";
const FORMAT: &str = "zoo-checkpoint-v1";

/// Sums over the batches already done in an unfinished epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    pub seconds: f64,
    /// Wall-clock seconds of the epoch so far.
    #[serde(default)]
    pub wall_seconds: f64,
}

/// What a run is: its model, input, classes, input transform, configuration and seed. Set when
/// the run starts; training never changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Registry name of the model.
    pub model: String,
    pub input: InputSpec,
    pub num_classes: usize,
    pub classes: Vec<String>,
    /// How images become the network's input.
    pub eval_transform: InputTransform,
    /// The resolved run configuration, as TOML (empty for converted checkpoints).
    #[serde(default)]
    pub config: String,
    pub seed: u64,
}

impl RunInfo {
    pub fn new(
        model: &str,
        input: InputSpec,
        classes: Vec<String>,
        eval_transform: InputTransform,
        config: String,
        seed: u64,
    ) -> Self {
        Self {
            model: model.to_string(),
            input,
            num_classes: classes.len(),
            classes,
            eval_transform,
            config,
            seed,
        }
    }
}

/// How far a run got: the trainer's position, sums and history, saved with every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed in the unfinished epoch `epoch` (0 at an epoch boundary).
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    #[serde(default)]
    pub partial: PartialEpoch,
    #[serde(default)]
    pub metrics: Vec<EpochMetrics>,
    /// The dropout generator of the training thread.
    pub rng: Option<RngState>,
}

/// The header metadata of a zoo checkpoint: the run, its progress, and which weights the file
/// holds, stored as one flat JSON object (the fields of all three).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    #[serde(flatten)]
    pub run: RunInfo,
    #[serde(flatten)]
    pub progress: RunProgress,
    /// The model tensors are the EMA of the weights (a `best.safetensors` whose EMA
    /// validated better than the raw weights), not the trained weights themselves.
    #[serde(default)]
    pub ema_weights: bool,
}

impl CheckpointMeta {
    /// The metadata of a run that has not started.
    pub fn new(run: RunInfo) -> Self {
        Self {
            run,
            progress: RunProgress::default(),
            ema_weights: false,
        }
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    /// The EMA of the weights, by model tensor name (empty without one).
    pub ema: HashMap<String, Tensor>,
}

/// Saves the store's tensors (parameters and BatchNorm statistics), the optimiser state, the
/// EMA of the weights and `meta`.
pub fn save_checkpoint(
    path: &Path,
    store: &ParamStore,
    optimizer: Option<&Optimizer>,
    ema: Option<&Ema>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = store
        .named_tensors()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect();
    if let Some(opt) = optimizer {
        tensors.extend(
            opt.state_tensors()
                .into_iter()
                .map(|(k, v)| (format!("{OPTIMIZER_PREFIX}{k}"), v)),
        );
    }
    if let Some(ema) = ema {
        tensors.extend(
            ema.state_tensors()
                .into_iter()
                .map(|(k, v)| (format!("{EMA_PREFIX}{k}"), v)),
        );
    }
    write_checkpoint(path, tensors, meta)
}

/// Saves `tensors` (model tensors by name) with `meta` as a checkpoint without optimiser state.
pub fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    write_checkpoint(path, tensors, meta)
}

fn write_checkpoint(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    meta: &CheckpointMeta,
) -> Result<()> {
    let json = serde_json::to_string(meta)
        .map_err(|e| candle_core::Error::Msg(format!("checkpoint metadata: {e}")))?;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("zoo".to_string(), json),
    ]);
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: cannot serialise: {e}", path.display()))
            })?;
    crate::fs::write_atomic(path, &bytes)
}

/// Reads a zoo checkpoint.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = crate::error::read_bytes(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        candle_core::Error::Msg(format!("{}: not a safetensors file: {e}", path.display()))
    })?;
    let meta = meta_from_header(header.metadata().as_ref(), path)?;
    let all = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let bad = |e: String| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    let mut model = HashMap::new();
    let mut optimizer = HashMap::new();
    let mut ema = HashMap::new();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    for name in names {
        check_tensor(name, &all[name.as_str()]).map_err(|e| bad(e.to_string()))?;
    }
    for (name, tensor) in all {
        if let Some(rest) = name.strip_prefix(OPTIMIZER_PREFIX) {
            optimizer.insert(rest.to_string(), tensor);
        } else if let Some(rest) = name.strip_prefix(EMA_PREFIX) {
            ema.insert(rest.to_string(), tensor);
        } else {
            model.insert(name, tensor);
        }
    }
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
        ema,
    })
}

/// The zoo metadata of a checkpoint's safetensors header, checked: an error naming `path` when
/// it is missing, unreadable or inconsistent (class names against classes, the transform).
pub(crate) fn meta_from_header(
    metadata: Option<&HashMap<String, String>>,
    path: &Path,
) -> Result<CheckpointMeta> {
    let bad = |e: String| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    let meta = metadata.and_then(|m| m.get("zoo")).ok_or_else(|| {
        bad(
            "a safetensors file without zoo metadata (convert PyTorch weights with `zoo convert`)"
                .into(),
        )
    })?;
    let meta: CheckpointMeta =
        serde_json::from_str(meta).map_err(|e| bad(format!("bad zoo metadata: {e}")))?;
    if meta.run.input.channels == 0 || meta.run.num_classes != meta.run.classes.len() {
        return Err(bad(format!(
            "metadata says {} input channels and {} classes, with {} class names",
            meta.run.input.channels,
            meta.run.num_classes,
            meta.run.classes.len()
        )));
    }
    meta.run
        .eval_transform
        .validate(meta.run.input.channels)
        .map_err(|e| bad(e.to_string()))?;
    Ok(meta)
}

/// A stored tensor must be floating point and finite: integer weights, NaN and infinities are
/// errors naming the tensor.
pub(crate) fn check_tensor(name: &str, t: &Tensor) -> Result<()> {
    use candle_core::DType;
    if !matches!(
        t.dtype(),
        DType::F32 | DType::F16 | DType::BF16 | DType::F64
    ) {
        candle_core::bail!(
            "tensor `{name}` is {:?}; zoo stores floating-point tensors (f32, f16, bf16, f64)",
            t.dtype()
        )
    }
    // x - x is 0 for every finite x and NaN for NaN and the infinities.
    let probe = t
        .sub(t)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if probe != 0.0 {
        candle_core::bail!(
            "tensor `{name}` {:?} holds NaN or infinite values",
            t.dims()
        )
    }
    Ok(())
}

/// Copies `tensors` into the store's variables. Missing tensors, unexpected tensors and shape
/// mismatches are one error that lists them all, naming each tensor and both shapes.
pub fn apply_weights(
    store: &ParamStore,
    tensors: &HashMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    let shapes = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.dims().to_vec()))
        .collect();
    check_fit(store, &shapes, source)?;
    for (name, var) in &store.named_tensors() {
        let t = tensors[name]
            .to_device(var.as_tensor().device())?
            .to_dtype(var.as_tensor().dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Whether tensors of these names and shapes fit the store's variables: missing tensors,
/// unexpected tensors and shape mismatches are one error that lists them all, naming each
/// tensor and both shapes.
pub(crate) fn check_fit(
    store: &ParamStore,
    shapes: &HashMap<String, Vec<usize>>,
    source: &str,
) -> Result<()> {
    let named = store.named_tensors();
    let mut problems = Vec::new();
    for (name, var) in &named {
        let want = var.as_tensor().dims();
        match shapes.get(name) {
            None => problems.push(format!("missing tensor `{name}` (expected shape {want:?})")),
            Some(found) if found.as_slice() != want => problems.push(format!(
                "tensor `{name}`: expected shape {want:?}, found {found:?}"
            )),
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = shapes
        .keys()
        .filter(|k| !named.iter().any(|(n, _)| n == *k))
        .collect();
    unexpected.sort();
    problems.extend(
        unexpected
            .iter()
            .map(|k| format!("unexpected tensor `{k}` {:?}", shapes[*k])),
    );
    if !problems.is_empty() {
        candle_core::bail!(
            "{source} does not fit this model:\n  {}",
            problems.join("\n  ")
        )
    }
    Ok(())
}
