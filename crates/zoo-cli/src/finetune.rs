//! Fine-tuning from a pretrained checkpoint (`zoo train MODEL --pretrained CK`): the network's
//! head found by what depends on the number of classes, every other weight taken from the
//! checkpoint, the head too when the classes are the checkpoint's; and the evaluation
//! transform the checkpoint carries.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use zoo_core::InputSpec;
use zoo_core::init::ParamStore;
use zoo_core::train::checkpoint::{Checkpoint, load_checkpoint};
use zoo_core::train::trainer::FineTune;

use crate::registry::ModelEntry;

/// A VarBuilder backend that hands out zeros and records each tensor's shape by name.
#[derive(Default, Clone)]
struct ShapeRecorder {
    shapes: Arc<Mutex<HashMap<String, Vec<usize>>>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        shapes.insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape probe: `{name}` asked for without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Every tensor's shape of `entry` built for `input` and `classes` classes.
fn shapes_of(
    entry: &ModelEntry,
    input: InputSpec,
    classes: usize,
) -> Result<HashMap<String, Vec<usize>>> {
    let recorder = ShapeRecorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    entry.build(input, classes, vb)?;
    let shapes = recorder.shapes.lock().unwrap_or_else(|e| e.into_inner());
    Ok(shapes.clone())
}

/// The head of `entry` at `input`: the tensors whose shapes change with the number of
/// classes (the last Linear of most networks, NiN's last convolution).
pub fn head_names(entry: &ModelEntry, input: InputSpec) -> Result<HashSet<String>> {
    let a = shapes_of(entry, input, 2)?;
    let b = shapes_of(entry, input, 3)?;
    let head: HashSet<String> = a
        .iter()
        .filter(|(name, shape)| b.get(*name) != Some(*shape))
        .map(|(name, _)| name.clone())
        .collect();
    if head.is_empty() {
        bail!("{}: no tensor depends on the number of classes", entry.name)
    }
    Ok(head)
}

/// The checkpoint `path` as the start of a fine-tune of `model`: an error naming both models
/// when it holds another network.
pub fn read_pretrained(path: &Path, model: &str) -> Result<Checkpoint> {
    let ckpt = load_checkpoint(path, &Device::Cpu)
        .with_context(|| format!("--pretrained {}", path.display()))?;
    if ckpt.meta.run.model != model {
        bail!(
            "--pretrained {}: holds {}, and this run trains {model} (convert torchvision's \
             weights for {model} with `zoo convert --model {model}`)",
            path.display(),
            ckpt.meta.run.model
        )
    }
    Ok(ckpt)
}

/// Copies the pretrained weights into `store`: every tensor, the head's too when the run's
/// `classes` are the checkpoint's, else the head keeps its seeded initialisation. Missing or
/// misshapen tensors are one error naming each.
pub fn load_pretrained(
    store: &ParamStore,
    ckpt: &Checkpoint,
    head: &HashSet<String>,
    classes: &[String],
    source: &Path,
) -> Result<()> {
    let keep_head = ckpt.meta.run.classes == classes;
    let mut problems = Vec::new();
    for (name, var) in store.named_tensors() {
        if head.contains(&name) && !keep_head {
            continue;
        }
        match ckpt.model.get(&name) {
            None => problems.push(format!("missing tensor `{name}`")),
            Some(t) if t.dims() != var.as_tensor().dims() => problems.push(format!(
                "tensor `{name}`: the run needs shape {:?}, the checkpoint has {:?}",
                var.as_tensor().dims(),
                t.dims()
            )),
            Some(t) => var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?,
        }
    }
    if !problems.is_empty() {
        bail!("--pretrained {}: {}", source.display(), problems.join("; "))
    }
    Ok(())
}

/// The fine-tune of `entry` at `input` that `freeze_backbone` asks for.
pub fn fine_tune(entry: &ModelEntry, input: InputSpec, freeze_backbone: bool) -> Result<FineTune> {
    Ok(FineTune {
        head: head_names(entry, input)?,
        freeze_backbone,
    })
}
