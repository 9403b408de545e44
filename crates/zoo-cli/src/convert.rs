//! `zoo convert`: the notebook's PyTorch state dicts (`.pt` zip pickles or `.safetensors`, with
//! or without DataParallel's `module.` prefix) to zoo checkpoints, and back.
//!
//! Key rule: PyTorch key = `[module.]model.` + zoo name. `num_batches_tracked` buffers have no
//! zoo counterpart: dropped on import, written as 0 on export (so `load_state_dict(strict=True)`
//! accepts the file).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use zoo_core::data::transforms::EvalTransform;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::{
    CheckpointMeta, apply_weights, load_checkpoint, save_checkpoint,
};

use crate::registry::{NotebookDataset, find};

/// The zoo name of a PyTorch state-dict key; `None` for keys zoo does not keep.
pub fn zoo_name(key: &str) -> Result<Option<String>> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    if key.ends_with("num_batches_tracked") {
        return Ok(None);
    }
    match key.strip_prefix("model.") {
        Some(name) => Ok(Some(name.to_string())),
        None => bail!(
            "key `{key}` does not start with `model.` (the notebook's `self.model = nn.Sequential(...)`)"
        ),
    }
}

/// The PyTorch key of a zoo name.
pub fn pytorch_key(name: &str) -> String {
    format!("model.{name}")
}

/// Reads a state dict from `.pt` / `.pth` (PyTorch zip pickle) or `.safetensors`.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "safetensors" => Ok(candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect()),
        "pt" | "pth" | "bin" => candle_core::pickle::read_all(path)
            .with_context(|| format!("reading {} as a PyTorch state dict", path.display())),
        _ => bail!(
            "{}: expected a .pt, .pth or .safetensors file",
            path.display()
        ),
    }
}

/// The checkpoint metadata of an imported notebook model: reference input, the notebook's
/// dataset classes and normalisation (mean 0.5, std 0.5).
pub fn imported_meta(model: &str) -> Result<CheckpointMeta> {
    let entry = find(model)?;
    let input = entry.reference_input;
    let classes = match entry.notebook.map(|n| n.dataset) {
        Some(NotebookDataset::Mnist) => zoo_core::data::digit_classes(),
        _ => zoo_core::data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    Ok(CheckpointMeta::new(
        model,
        input,
        classes,
        EvalTransform::notebook(input.channels, input.height),
        String::new(),
        0,
    ))
}

/// PyTorch state dict -> zoo checkpoint for registry model `model`.
pub fn import(model: &str, input: &Path, output: &Path) -> Result<()> {
    let entry = find(model)?;
    let mut tensors = HashMap::new();
    let mut bad_keys = Vec::new();
    for (key, tensor) in read_state_dict(input)? {
        match zoo_name(&key) {
            Ok(Some(name)) => {
                tensors.insert(name, tensor.to_dtype(DType::F32)?);
            }
            Ok(None) => {}
            Err(e) => bad_keys.push(e.to_string()),
        }
    }
    if !bad_keys.is_empty() {
        bail!("{}: {}", input.display(), bad_keys.join("; "))
    }
    let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    entry.build_reference(store.var_builder())?;
    apply_weights(&store, &tensors, &input.display().to_string())?;
    save_checkpoint(output, &store, None, None, &imported_meta(model)?)?;
    Ok(())
}

/// zoo checkpoint -> PyTorch safetensors with the notebook's keys (`model.` + name), including
/// `num_batches_tracked` for every BatchNorm, so `load_state_dict(strict=True)` accepts it.
pub fn export(input: &Path, output: &Path) -> Result<()> {
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "{}: --to-pytorch writes safetensors (load it with safetensors.torch.load_file)",
            output.display()
        )
    }
    let ckpt = load_checkpoint(input, &Device::Cpu)?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, tensor) in &ckpt.model {
        out.push((pytorch_key(name), tensor.clone()));
        if let Some(bn) = name.strip_suffix("running_mean") {
            out.push((
                pytorch_key(&format!("{bn}num_batches_tracked")),
                Tensor::new(0i64, &Device::Cpu)?,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(out.iter().map(|(k, v)| (k.as_str(), v)), None)
        .with_context(|| format!("serialising {}", output.display()))?;
    zoo_core::train::checkpoint::write_atomic(output, &bytes)?;
    Ok(())
}
