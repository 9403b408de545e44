//! `zoo convert`: PyTorch state dicts (zip or legacy `.pth`/`.pt`, or `.safetensors`, with or
//! without DataParallel's `module.` prefix) to zoo checkpoints, and back.
//!
//! Key rules (docs/interop.md): for the notebook's networks, PyTorch key = `model.` + zoo name;
//! for torchvision's, PyTorch key = zoo name, with DenseNet's legacy keys
//! (`denselayer1.norm.1.weight`) renamed as torchvision's loader does and GoogLeNet's aux heads
//! (`aux1.*`, `aux2.*`, untrained in the published file and unused at inference) left out.
//! `num_batches_tracked` buffers have no zoo counterpart: dropped on import, written as 0 on
//! export (so `load_state_dict(strict=True)` accepts the file).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use zoo_core::data::transforms::InputTransform;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::train::checkpoint::{
    CheckpointMeta, RunInfo, apply_weights, load_checkpoint, save_checkpoint,
};

use crate::registry::{ModelEntry, Origin, find};
use crate::run_config::MAX_INPUT_SIZE;
pub use crate::state_dict::read_state_dict;
use zoo_core::data::Dataset;

/// The zoo name of a PyTorch state-dict key of a network from `origin`; `None` for keys zoo
/// does not keep.
pub fn zoo_name(origin: Origin, key: &str) -> Result<Option<String>> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    if key.ends_with("num_batches_tracked") {
        return Ok(None);
    }
    match origin {
        Origin::Notebook => match key.strip_prefix("model.") {
            Some(name) => Ok(Some(name.to_string())),
            None => bail!(
                "key `{key}` does not start with `model.` (the notebook's `self.model = \
                 nn.Sequential(...)`)"
            ),
        },
        Origin::Torchvision if key.starts_with("aux1.") || key.starts_with("aux2.") => Ok(None),
        Origin::Torchvision => Ok(Some(modern_densenet_key(key))),
    }
}

/// torchvision's rename of DenseNet's pre-0.3 keys (`_load_state_dict`'s pattern):
/// `...denselayerN.norm.1.weight` -> `...denselayerN.norm1.weight` (also `conv.2`, `relu.1`);
/// other keys unchanged.
pub fn modern_densenet_key(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    let legacy = n >= 4
        && parts[n - 4]
            .strip_prefix("denselayer")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[n - 3], "norm" | "relu" | "conv")
        && matches!(parts[n - 2], "1" | "2")
        && matches!(
            parts[n - 1],
            "weight" | "bias" | "running_mean" | "running_var"
        );
    if !legacy {
        return key.to_string();
    }
    let merged = format!("{}{}", parts[n - 3], parts[n - 2]);
    [&parts[..n - 3], &[merged.as_str(), parts[n - 1]]]
        .concat()
        .join(".")
}

/// The PyTorch key of a zoo name of a network from `origin`.
pub fn pytorch_key(origin: Origin, name: &str) -> String {
    match origin {
        Origin::Notebook => format!("model.{name}"),
        Origin::Torchvision => name.to_string(),
    }
}

/// The class names a registry model's weights come with by default: ImageNet's 1000 for
/// torchvision's networks, the notebook's dataset's for the notebook's.
fn default_classes(entry: &ModelEntry) -> Vec<String> {
    if entry.origin == Origin::Torchvision {
        return zoo_core::data::imagenet_classes();
    }
    match entry.notebook.as_ref().map(|n| &n.dataset) {
        Some(Dataset::Mnist) => zoo_core::data::digit_classes(),
        _ => zoo_core::data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

/// What the converted checkpoint says about the images its weights take. Unset fields come
/// from the file's metadata (a `.safetensors` file's `input_size`, `mean`, `std` and `classes`,
/// comma-separated), then from the weights (the input size that AlexNet's and VGG's first
/// Linear implies), then from the notebook (its input size, mean and std 0.5, its classes),
/// with a notice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    pub input_size: Option<usize>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub classes: Option<Vec<String>>,
}

/// Comma-separated numbers (`0.49,0.48,0.45`) of `what`.
pub fn parse_floats(text: &str, what: &str) -> Result<Vec<f32>> {
    text.split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{what} `{text}`: expected comma-separated numbers"))
}

/// Comma-separated class names.
pub fn parse_classes(text: &str) -> Vec<String> {
    text.split(',').map(|c| c.trim().to_string()).collect()
}

/// The string metadata of a `.safetensors` file (none for other formats).
fn file_metadata(path: &Path) -> Result<HashMap<String, String>> {
    if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Ok(HashMap::new());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// The index of the network's first Linear layer and the number of inputs it takes for a
/// `channels` x `side` x `side` image (`None`: no Linear, or an input too small).
fn first_linear_inputs(
    net: &dyn zoo_core::Model,
    channels: usize,
    side: usize,
) -> Option<(usize, usize)> {
    let mut shape = vec![1, channels, side, side];
    for (i, layer) in net.body().layers().iter().enumerate() {
        if layer.kind() == zoo_core::nn::LayerKind::Linear {
            return Some((i, shape[1..].iter().product()));
        }
        shape = layer.output_shape(&shape).ok()?;
    }
    None
}

/// A registry network built at its smallest input, where the first Linear is smallest (VGG-11's
/// is 411 MB at 224 px): the layers before it take any size.
struct FirstLinearProbe {
    net: Box<dyn zoo_core::Model>,
    channels: usize,
}

impl FirstLinearProbe {
    /// `entry`'s network built at its smallest input with zero weights.
    fn new(entry: &ModelEntry) -> Result<Self> {
        let channels = entry.reference_input.channels;
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        let net = entry.build(
            zoo_core::InputSpec::square(channels, entry.min_input),
            10,
            vb,
        )?;
        Ok(Self { net, channels })
    }

    /// The first Linear's index and inputs at input side `side` (see [`first_linear_inputs`]).
    fn at(&self, side: usize) -> Option<(usize, usize)> {
        first_linear_inputs(self.net.as_ref(), self.channels, side)
    }
}

/// The input side of the checkpoint: the one asked for (checked against the weights where they
/// imply one), else the one the weights imply, else the notebook's.
fn input_side(
    model: &str,
    asked: Option<usize>,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<usize> {
    let entry = find(model)?;
    let r = entry.reference_input;
    let probe = FirstLinearProbe::new(entry)?;
    // Implied when the first Linear's inputs change with the input size (no global pooling).
    let implied = probe.at(r.height).map(|x| x.1) != probe.at(2 * r.height).map(|x| x.1);
    if let Some(s) = asked {
        ensure!(
            (entry.min_input..=MAX_INPUT_SIZE).contains(&s),
            "--input-size {s}: expected {} to {MAX_INPUT_SIZE} for {model}",
            entry.min_input
        );
    }
    if !implied {
        return Ok(asked.unwrap_or_else(|| {
            eprintln!(
                "NOTICE: {}: the weights do not imply an input size and none was given \
                 (--input-size): the checkpoint says {} px, the notebook's",
                source.display(),
                r.height
            );
            r.height
        }));
    }
    side_implied_by_weights(model, entry, &probe, asked, tensors, source)
}

/// For a network whose first Linear fixes the input size: the side asked for when the weights
/// fit it, else the notebook's when they fit it, else the smallest they fit (with a notice).
fn side_implied_by_weights(
    model: &str,
    entry: &ModelEntry,
    probe: &FirstLinearProbe,
    asked: Option<usize>,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<usize> {
    let r = entry.reference_input;
    let (layer, _) = probe.at(r.height).context("a first Linear layer")?;
    let key = format!("{layer}.weight");
    let target = tensors
        .get(&key)
        .and_then(|t| t.dims().get(1).copied())
        .with_context(|| format!("{}: no tensor `{key}` (the first Linear)", source.display()))?;
    let fits: Vec<usize> = (entry.min_input..=MAX_INPUT_SIZE)
        .filter(|&s| probe.at(s).map(|x| x.1) == Some(target))
        .collect();
    let range = match (fits.first(), fits.last()) {
        (Some(a), Some(b)) => format!("{a} to {b} px"),
        _ => bail!(
            "{}: `{key}` takes {target} inputs, which {model} has at no input size from {} to \
             {MAX_INPUT_SIZE} px",
            source.display(),
            entry.min_input
        ),
    };
    match asked {
        Some(s) if fits.contains(&s) => Ok(s),
        Some(s) => bail!(
            "--input-size {s} contradicts the weights of {}: `{key}` takes {target} inputs, which \
             {model} has at {range} (at {s} px it would take {})",
            source.display(),
            probe.at(s).map_or(0, |x| x.1)
        ),
        None if fits.contains(&r.height) => Ok(r.height),
        None => {
            eprintln!(
                "NOTICE: {}: the weights fit inputs of {range}: the checkpoint says {} px \
                 (give --input-size to choose)",
                source.display(),
                fits[0]
            );
            Ok(fits[0])
        }
    }
}

/// PyTorch state dict -> zoo checkpoint for registry model `model`, with the notebook's input
/// (or what the weights imply) and normalisation.
pub fn import(model: &str, input: &Path, output: &Path) -> Result<()> {
    import_with(model, input, output, &ImportOptions::default())
}

/// PyTorch state dict -> zoo checkpoint, the evaluation transform and classes from `options`.
pub fn import_with(
    model: &str,
    input: &Path,
    output: &Path,
    options: &ImportOptions,
) -> Result<()> {
    let entry = find(model)?;
    let channels = entry.reference_input.channels;
    let tensors = zoo_tensors(entry.origin, input)?;
    let meta = file_metadata(input)?;
    let asked_size = asked_input_size(options, &meta, input)?;
    let (side, transform) = match entry.origin {
        Origin::Notebook => {
            let side = input_side(model, asked_size, &tensors, input)?;
            let half = vec![0.5; channels];
            let transform = import_transform(options, &meta, input, side, (&half, &half))?;
            (side, transform)
        }
        Origin::Torchvision => torchvision_transform(entry, options, &meta, input, asked_size)?,
    };
    let classes = match (&options.classes, meta.get("classes").map(String::as_str)) {
        (Some(c), _) => c.clone(),
        (None, Some(text)) => parse_classes(text),
        (None, None) => default_classes(entry),
    };
    let spec = zoo_core::InputSpec::square(channels, side);
    let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    entry
        .build(spec, classes.len(), store.var_builder())
        .with_context(|| format!("building {model} for {spec} with {} classes", classes.len()))?;
    apply_weights(&store, &tensors, &input.display().to_string()).with_context(|| {
        format!(
            "{model} at {side} px with {} classes (--input-size, --classes)",
            classes.len()
        )
    })?;
    let meta = CheckpointMeta::new(RunInfo::new(
        model,
        spec,
        classes,
        transform,
        String::new(),
        0,
    ));
    save_checkpoint(output, &store, None, None, &meta)?;
    Ok(())
}

/// torchvision's evaluation transform for its networks: `Resize(side * 256 / 224)` and
/// `CenterCrop(side)` (224 unless asked), ImageNet's mean and std unless given.
fn torchvision_transform(
    entry: &ModelEntry,
    options: &ImportOptions,
    meta: &HashMap<String, String>,
    input: &Path,
    asked: Option<usize>,
) -> Result<(usize, InputTransform)> {
    let side = asked.unwrap_or(entry.reference_input.height);
    ensure!(
        (entry.min_input..=MAX_INPUT_SIZE).contains(&side),
        "--input-size {side}: expected {} to {MAX_INPUT_SIZE} for {}",
        entry.min_input,
        entry.name
    );
    use zoo_core::data::transforms::{IMAGENET_MEAN, IMAGENET_STD};
    let mut transform =
        import_transform(options, meta, input, side, (&IMAGENET_MEAN, &IMAGENET_STD))?;
    transform.resize_shorter = Some((side * 256).div_ceil(224));
    transform
        .validate(3)
        .with_context(|| format!("converting {}", input.display()))?;
    Ok((side, transform))
}

/// The state dict of `input` under zoo names, as f32 (the keys zoo does not keep dropped); an
/// error naming every key that does not follow `origin`'s rule.
fn zoo_tensors(origin: Origin, input: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut bad_keys = Vec::new();
    for (key, tensor) in read_state_dict(input)? {
        match zoo_name(origin, &key) {
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
    Ok(tensors)
}

/// The input size given (`--input-size`), else the file's `input_size` metadata, else none.
fn asked_input_size(
    options: &ImportOptions,
    meta: &HashMap<String, String>,
    input: &Path,
) -> Result<Option<usize>> {
    Ok(match (options.input_size, meta.get("input_size")) {
        (Some(s), _) => Some(s),
        (None, Some(text)) => Some(text.trim().parse::<usize>().with_context(|| {
            format!(
                "{}: metadata input_size `{text}` is not a size",
                input.display()
            )
        })?),
        (None, None) => None,
    })
}

/// The evaluation transform at `side` px: mean and std given, else from the file's metadata,
/// else the `(mean, std)` defaults; checked against the defaults' channel count.
fn import_transform(
    options: &ImportOptions,
    meta: &HashMap<String, String>,
    input: &Path,
    side: usize,
    (default_mean, default_std): (&[f32], &[f32]),
) -> Result<InputTransform> {
    let channels = default_mean.len();
    let floats = |given: &Option<Vec<f32>>, key: &str, default: &[f32]| -> Result<Vec<f32>> {
        match (given, meta.get(key).map(String::as_str)) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(text)) => {
                parse_floats(text, &format!("{} metadata {key}", input.display()))
            }
            (None, None) => Ok(default.to_vec()),
        }
    };
    let transform = InputTransform {
        height: side,
        width: side,
        mean: floats(&options.mean, "mean", default_mean)?,
        std: floats(&options.std, "std", default_std)?,
        resize_shorter: None,
    };
    transform
        .validate(channels)
        .with_context(|| format!("converting {}", input.display()))?;
    Ok(transform)
}

/// zoo checkpoint -> PyTorch safetensors with its origin's keys (`model.` + name for the
/// notebook's networks, the name for torchvision's), including
/// `num_batches_tracked` for every BatchNorm, so `load_state_dict(strict=True)` accepts it.
pub fn export(input: &Path, output: &Path) -> Result<()> {
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "{}: --to-pytorch writes safetensors (load it with safetensors.torch.load_file)",
            output.display()
        )
    }
    let ckpt = load_checkpoint(input, &Device::Cpu)?;
    let origin = find(&ckpt.meta.run.model)?.origin;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, tensor) in &ckpt.model {
        out.push((pytorch_key(origin, name), tensor.clone()));
        if let Some(bn) = name.strip_suffix("running_mean") {
            out.push((
                pytorch_key(origin, &format!("{bn}num_batches_tracked")),
                Tensor::new(0i64, &Device::Cpu)?,
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(out.iter().map(|(k, v)| (k.as_str(), v)), None)
        .with_context(|| format!("serialising {}", output.display()))?;
    zoo_core::fs::write_atomic(output, &bytes)?;
    Ok(())
}
