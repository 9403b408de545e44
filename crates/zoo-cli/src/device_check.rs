//! `zoo device-check`: every registry model's forward and backward on a device against zoo's CPU
//! kernels with the same weights and batch, training-step timings, and one timed epoch: the
//! prepared GPU check (`scripts/device-check.sh`, docs/gpu.md), with a CPU self-test.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use zoo_core::data::ImageDataset;
use zoo_core::data::loader::{Loader, LoaderConfig};
use zoo_core::data::transforms::InputTransform;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::rng::ZooRng;
use zoo_core::table::{Align, Table};
use zoo_core::train::checkpoint::{RunInfo, apply_weights};
use zoo_core::train::loss::cross_entropy;
use zoo_core::train::optim::{Optimizer, OptimizerConfig};
use zoo_core::train::schedule::Schedule;
use zoo_core::train::trainer::{Outcome, Quiet, Recipe, Trainer};
use zoo_core::{InputSpec, Model};
use zoo_kernels::with_reference_ops;

use crate::registry::ModelEntry;
use crate::torch_bench::parse_result;

/// Largest error allowed on the logits, relative to the reference logits (Euclidean norms).
pub const LOGIT_TOLERANCE: f64 = 1e-2;
/// Largest error allowed on each gradient tensor, relative to that tensor's reference norm (or
/// to [`GRAD_SCALE_FLOOR`] of the norm the tensor would have at the model's root-mean-square
/// gradient, whichever is larger).
pub const GRAD_TOLERANCE: f64 = 2e-2;
/// The floor under a gradient tensor's norm, as a share of the norm it would have at the model's
/// root-mean-square gradient (an absolute tolerance beside the relative one): a convolution's
/// bias before a training-mode BatchNorm has an exact gradient of zero, where every f32 path
/// gives only its rounding (candle's composed BatchNorm about 2e-4 of the model's RMS gradient
/// at batch 8, zoo's fused one a few 1e-7).
pub const GRAD_SCALE_FLOOR: f64 = 1e-2;
/// The noise floor's jitter: the CPU kernels' own change when every weight and input value is
/// multiplied by `1 + N(0, NOISE)` (about f32's rounding). Training-mode gradients of deep
/// BatchNorm networks move by several percent under it.
pub const NOISE: f64 = 1e-7;
/// A comparison passes within its tolerance or within `NOISE_FACTOR` times its floor (the
/// larger of the CPU kernels' own error against the f64 reference and their change under the
/// jitter), whichever is larger.
pub const NOISE_FACTOR: f64 = 3.0;
/// Jittered inputs per comparison; the floor takes the largest change among them.
pub const NOISE_SAMPLES: usize = 3;

/// The smallest input side of the comparison.
pub const COMPARE_SIZE: usize = 64;

/// What the checked side runs on.
#[derive(Debug, Clone)]
pub enum Target {
    /// A device (a GPU), against zoo's CPU kernels.
    Device(Device),
    /// The CPU self-test: candle's compositions on the CPU (the ops a GPU runs), against zoo's
    /// CPU kernels.
    CpuReference,
}

impl Target {
    fn device(&self) -> Device {
        match self {
            Self::Device(d) => d.clone(),
            Self::CpuReference => Device::Cpu,
        }
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        match self {
            Self::Device(_) => f(),
            Self::CpuReference => with_reference_ops(f),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Device(Device::Cpu) => "cpu".to_string(),
            Self::Device(d) => format!("{:?}", d.location()),
            Self::CpuReference => "cpu (candle's compositions, the self-test)".to_string(),
        }
    }
}

/// One timed epoch of a model on synthetic images.
#[derive(Clone)]
pub struct EpochCheck {
    pub model: &'static ModelEntry,
    /// Square input side the images are resized to on the device.
    pub input_size: usize,
    /// Synthetic 32-px RGB images in the epoch (CIFAR-10 has 50,000).
    pub images: usize,
    pub batch: usize,
}

/// What to check.
#[derive(Clone)]
pub struct CheckOptions {
    pub target: Target,
    pub models: Vec<&'static ModelEntry>,
    /// Batch of the forward/backward comparison.
    pub batch: usize,
    /// Training-step timings at each model's reference input: (batch, warm-up steps, timed steps).
    pub timing: Option<(usize, usize, usize)>,
    /// PyTorch's figures for the same cases (`RESULT model size train_img_s ...` lines of
    /// `scripts/bench_torch.py`), shown beside zoo's.
    pub torch_results: Option<PathBuf>,
    pub epoch: Option<EpochCheck>,
}

/// One model's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Parity {
    pub model: &'static str,
    pub input: usize,
    pub train_mode: bool,
    pub logit_error: f64,
    /// The logits' noise floor ([`NOISE`]).
    pub logit_noise: f64,
    /// The gradient tensor nearest to failing (largest error over its allowance).
    pub worst_grad: String,
    pub grad_error: f64,
    pub grad_noise: f64,
}

/// Whether `error` is within `tolerance` or within [`NOISE_FACTOR`] times `noise`.
fn within(error: f64, noise: f64, tolerance: f64) -> bool {
    error <= tolerance.max(NOISE_FACTOR * noise)
}

impl Parity {
    pub fn passed(&self) -> bool {
        within(self.logit_error, self.logit_noise, LOGIT_TOLERANCE)
            && within(self.grad_error, self.grad_noise, GRAD_TOLERANCE)
    }
}

/// One training-step timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub model: &'static str,
    pub input: usize,
    pub batch: usize,
    pub images_per_sec: f64,
    pub torch_images_per_sec: Option<f64>,
}

/// Everything the check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub target: String,
    pub parity: Vec<Parity>,
    pub timings: Vec<Timing>,
    /// (model, input, images, seconds).
    pub epoch: Option<(&'static str, usize, usize, f64)>,
    /// The data-parallel engine on this device in a world of one (NCCL on a GPU, with the
    /// `nccl` feature): what it did, or why it was not checked.
    pub collective: String,
}

impl CheckReport {
    /// The comparisons outside their bounds.
    pub fn failures(&self) -> Vec<&Parity> {
        self.parity.iter().filter(|p| !p.passed()).collect()
    }
}

/// Runs the check, printing each result as it comes.
pub fn run_check(options: &CheckOptions) -> Result<CheckReport> {
    if options.batch < 2 {
        bail!(
            "--batch {}: the comparison needs at least 2 images (BatchNorm)",
            options.batch
        )
    }
    let parity = compare_models(options)?;
    let torch = match &options.torch_results {
        Some(path) => read_torch_results(path)?,
        None => HashMap::new(),
    };
    let timings = match options.timing {
        Some(timing) => time_models(options, timing, &torch)?,
        None => Vec::new(),
    };
    let epoch = match &options.epoch {
        Some(e) => {
            let seconds = timed_epoch(e, &options.target).context("the timed epoch")?;
            eprintln!(
                "epoch  {} at {} px, {} images: {seconds:.1} s",
                e.model.name, e.input_size, e.images
            );
            Some((e.model.name, e.input_size, e.images, seconds))
        }
        None => None,
    };
    let collective = check_collective(&options.target).context("the collective check")?;
    eprintln!("collective {collective}");
    Ok(CheckReport {
        target: options.target.name(),
        parity,
        timings,
        epoch,
        collective,
    })
}

/// Every model's comparisons, each printed as a `parity` line as it comes.
fn compare_models(options: &CheckOptions) -> Result<Vec<Parity>> {
    let mut parity = Vec::new();
    for entry in &options.models {
        for result in compare_model(entry, &options.target, options.batch)
            .with_context(|| format!("comparing {}", entry.name))?
        {
            eprintln!(
                "parity {:<12} {:>3} px {:<5}  logits {:.2e} (floor {:.1e})  gradients {:.2e} \
                 (floor {:.1e}, {})  {}",
                result.model,
                result.input,
                if result.train_mode { "train" } else { "eval" },
                result.logit_error,
                result.logit_noise,
                result.grad_error,
                result.grad_noise,
                result.worst_grad,
                if result.passed() { "ok" } else { "FAILED" }
            );
            parity.push(result);
        }
    }
    Ok(parity)
}

/// Every model's training-step timing at its reference input (`(batch, warm-up steps, timed
/// steps)`), beside PyTorch's from `torch`, each printed as a `step` line as it comes.
fn time_models(
    options: &CheckOptions,
    (batch, warmup, steps): (usize, usize, usize),
    torch: &HashMap<(String, usize), f64>,
) -> Result<Vec<Timing>> {
    let mut timings = Vec::new();
    for entry in &options.models {
        let input = entry.reference_input;
        let images_per_sec = time_steps(entry, &options.target, input, batch, warmup, steps)
            .with_context(|| format!("timing {}", entry.name))?;
        let t = Timing {
            model: entry.name,
            input: input.height,
            batch,
            images_per_sec,
            torch_images_per_sec: torch.get(&(entry.name.to_string(), input.height)).copied(),
        };
        eprintln!(
            "step   {:<12} {:>3} px batch {batch}: {images_per_sec:.1} img/s",
            t.model, t.input
        );
        timings.push(t);
    }
    Ok(timings)
}

/// NCCL in a world of one on the checked GPU: an all-reduce and a broadcast of an odd number
/// of values must return them unchanged, and a barrier must pass.
#[cfg(feature = "nccl")]
fn check_collective(target: &Target) -> Result<String> {
    use zoo_core::distributed::Collective;
    let device = match target {
        Target::Device(d) if d.is_cuda() => d.clone(),
        _ => return Ok("NCCL: not checked (not a GPU)".to_string()),
    };
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let env = zoo_dist::TorchrunEnv {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    };
    let nccl = zoo_dist::nccl_backend::NcclCollective::from_torchrun(&env, &device)?;
    let values = zoo_core::testing::test_input(&[1_000_003], 7)?.to_device(&device)?;
    let sum = nccl.all_reduce_sum(&values)?;
    let root = nccl.broadcast(&values, 0)?;
    nccl.barrier()?;
    let differs = |t: &Tensor| -> Result<f64> {
        Ok(t.sub(&values)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    let (d_sum, d_root) = (differs(&sum)?, differs(&root)?);
    if d_sum != 0.0 || d_root != 0.0 {
        bail!(
            "NCCL in a world of one changed the values: all-reduce by {d_sum}, broadcast by {d_root}"
        )
    }
    Ok("NCCL, world of one: all-reduce and broadcast of 1,000,003 values unchanged, barrier passed".to_string())
}

#[cfg(not(feature = "nccl"))]
fn check_collective(_target: &Target) -> Result<String> {
    Ok("NCCL: not checked (built without the `nccl` feature)".to_string())
}

/// The model built on `device` in `dtype` from `seed`, and its store.
fn build(
    entry: &ModelEntry,
    input: InputSpec,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<(ParamStore, Box<dyn Model>)> {
    let store = ParamStore::new(seed, InitScheme::PytorchDefault, dtype, device);
    let model = entry.build(input, 10, store.var_builder())?;
    Ok((store, model))
}

/// Labels 0, 1, ..., 9, 0, 1, ... for a batch of `n`.
fn cycling_labels(n: usize, device: &Device) -> Result<Tensor> {
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    Ok(Tensor::new(labels.as_slice(), device)?)
}

/// One forward and backward pass, brought to the CPU in f64: the logits and every trainable
/// parameter's gradient, in the store's order.
struct Pass {
    logits: Tensor,
    grads: Vec<(String, Tensor)>,
}

/// Logits and every parameter's gradient of the cross-entropy on `(x, y)`.
fn forward_backward(
    model: &dyn Model,
    store: &ParamStore,
    x: &Tensor,
    y: &Tensor,
    train: bool,
) -> Result<Pass> {
    let host =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?) };
    let logits = model.forward_t(x, train)?;
    let grads = cross_entropy(&logits, y, 0.0)?.backward()?;
    let mut out = Vec::new();
    for (name, var) in store.trainable() {
        let g = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for `{name}`"))?;
        out.push((name, host(g)?));
    }
    Ok(Pass {
        logits: host(&logits)?,
        grads: out,
    })
}

/// ||a - b|| over ||b||, the latter no smaller than `floor` (Euclidean norms, f64 tensors).
fn relative_error(a: &Tensor, b: &Tensor, floor: f64) -> Result<f64> {
    let diff = norm(&(a - b)?)?;
    Ok(if diff == 0.0 {
        0.0
    } else {
        let e = diff / norm(b)?.max(floor).max(1e-300);
        if e.is_finite() { e } else { f64::MAX }
    })
}

/// The floor of one comparison: the CPU kernels' own error against the f64 reference, or the
/// largest change of their jittered runs, whichever is larger.
fn noise_floor(cpu: &Tensor, reference: &Tensor, jittered: &[&Tensor], floor: f64) -> Result<f64> {
    let mut noise = relative_error(cpu, reference, floor)?;
    for j in jittered {
        noise = noise.max(relative_error(j, cpu, floor)?);
    }
    Ok(noise)
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

fn largest(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .max_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

/// The same model three times with the same weights: zoo's f32 CPU kernels, the checked
/// target's, and the f64 reference.
struct ModelCopies {
    /// The CPU model's weights, which the other copies take.
    weights: HashMap<String, Tensor>,
    cpu_store: ParamStore,
    cpu_model: Box<dyn Model>,
    dev_store: ParamStore,
    dev_model: Box<dyn Model>,
    f64_store: ParamStore,
    f64_model: Box<dyn Model>,
}

impl ModelCopies {
    /// `entry` at `input` on the CPU (seed 7), then on `device` and in f64 with its weights.
    fn build(entry: &ModelEntry, input: InputSpec, device: &Device) -> Result<Self> {
        let (cpu_store, cpu_model) = build(entry, input, &Device::Cpu, DType::F32, 7)?;
        let weights: HashMap<String, Tensor> = cpu_store
            .named_tensors()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let (dev_store, dev_model) = build(entry, input, device, DType::F32, 7)?;
        apply_weights(&dev_store, &weights, "the CPU model")?;
        let (f64_store, f64_model) = build(entry, input, &Device::Cpu, DType::F64, 7)?;
        apply_weights(&f64_store, &weights, "the CPU model")?;
        Ok(Self {
            weights,
            cpu_store,
            cpu_model,
            dev_store,
            dev_model,
            f64_store,
            f64_model,
        })
    }
}

/// The compared batch: images and labels on the CPU, the images in f64, and both on the
/// checked device.
struct CheckBatch {
    x: Tensor,
    y: Tensor,
    x_f64: Tensor,
    x_dev: Tensor,
    y_dev: Tensor,
}

/// The gradient tensor nearest to failing: (name, error, floor, share of its allowance).
type WorstGradient = (String, f64, f64, f64);

/// A jittered CPU copy of the model: its store, the model, and its jittered input.
type JitteredCopy = (ParamStore, Box<dyn Model>, Tensor);

/// The model on the target against an f64 reference (candle's compositions on the CPU in f64),
/// with zoo's f32 CPU kernels against the same reference as the yardstick: evaluation mode
/// always, training mode too where it is deterministic (no dropout, whose masks come from each
/// device's generator).
fn compare_model(entry: &ModelEntry, target: &Target, batch: usize) -> Result<Vec<Parity>> {
    // 64 px at least: at 32 px the last maps of ResNet are 1x1, and BatchNorm over a few
    // values per channel makes training mode too ill-conditioned to compare two f32 paths.
    let size = entry.min_input.max(COMPARE_SIZE);
    let input = InputSpec::square(entry.reference_input.channels, size);
    let device = target.device();
    let copies = ModelCopies::build(entry, input, &device)?;
    // Seed 1: with seed 11 one ReLU input of ResNet-34's last stage (training mode, batch 2) lay
    // within f32 rounding of zero, so whether a path rounded it to the other side moved every
    // gradient before it by 1-2% (a true difference of the input, not of the kernels).
    let mut rng = ZooRng::new(1);
    let values: Vec<f32> = (0..batch * input.channels * size * size)
        .map(|_| rng.normal() as f32)
        .collect();
    let x = Tensor::from_vec(values, input.batched(batch).as_slice(), &Device::Cpu)?;
    let y = cycling_labels(batch, &Device::Cpu)?;
    let stochastic = dropout_is_stochastic(entry, input, &x)?;
    let data = CheckBatch {
        x_dev: x.to_device(&device)?,
        y_dev: y.to_device(&device)?,
        x_f64: x.to_dtype(DType::F64)?,
        x,
        y,
    };
    let moved_copies = jittered_copies(entry, input, &copies.weights, &data.x, &mut rng)?;
    let mut results = Vec::new();
    for train in [false, true] {
        if train && stochastic {
            continue;
        }
        let (logit_error, logit_noise, worst) =
            compare_mode(&copies, &moved_copies, &data, target, train)?;
        results.push(Parity {
            model: entry.name,
            input: size,
            train_mode: train,
            logit_error,
            logit_noise,
            worst_grad: worst.0,
            grad_error: worst.1,
            grad_noise: worst.2,
        });
    }
    Ok(results)
}

/// Whether training mode depends on dropout's masks, which differ per device: two different
/// dropout seeds give different outputs (on a copy of its own: its BatchNorm statistics move).
fn dropout_is_stochastic(entry: &ModelEntry, input: InputSpec, x: &Tensor) -> Result<bool> {
    let (_, probe) = build(entry, input, &Device::Cpu, DType::F32, 7)?;
    probe.context().seed_dropout(1);
    let a = probe.forward_t(x, true)?;
    probe.context().seed_dropout(2);
    let b = probe.forward_t(x, true)?;
    Ok(largest(&(a - b)?)? != 0.0)
}

/// The jittered copies: every weight and input value times (1 + N(0, NOISE)), the size of
/// f32 rounding at every layer.
fn jittered_copies(
    entry: &ModelEntry,
    input: InputSpec,
    weights: &HashMap<String, Tensor>,
    x: &Tensor,
    rng: &mut ZooRng,
) -> Result<Vec<JitteredCopy>> {
    let mut moved_copies = Vec::new();
    for _ in 0..NOISE_SAMPLES {
        let mut jitter = |t: &Tensor| -> Result<Tensor> {
            let n: Vec<f32> = (0..t.elem_count())
                .map(|_| (1.0 + rng.normal() * NOISE) as f32)
                .collect();
            Ok((t * Tensor::from_vec(n, t.shape(), &Device::Cpu)?)?)
        };
        let moved_weights = weights
            .iter()
            .map(|(n, t)| Ok((n.clone(), jitter(t)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let (store, model) = build(entry, input, &Device::Cpu, DType::F32, 7)?;
        apply_weights(&store, &moved_weights, "the moved copy")?;
        moved_copies.push((store, model, jitter(x)?));
    }
    Ok(moved_copies)
}

/// One mode's comparison: the target's logit error and the logits' floor, and the gradient
/// tensor nearest to failing as (name, error, floor, share of its allowance).
fn compare_mode(
    copies: &ModelCopies,
    moved_copies: &[JitteredCopy],
    data: &CheckBatch,
    target: &Target,
    train: bool,
) -> Result<(f64, f64, WorstGradient)> {
    let ModelCopies {
        cpu_store,
        cpu_model,
        dev_store,
        dev_model,
        f64_store,
        f64_model,
        ..
    } = copies;
    let (x, y) = (&data.x, &data.y);
    let reference = forward_backward(f64_model.as_ref(), f64_store, &data.x_f64, y, train)?;
    let cpu = forward_backward(cpu_model.as_ref(), cpu_store, x, y, train)?;
    let moved = moved_copies
        .iter()
        .map(|(store, model, xm)| forward_backward(model.as_ref(), store, xm, y, train))
        .collect::<Result<Vec<_>>>()?;
    let dev = target.run(|| {
        forward_backward(
            dev_model.as_ref(),
            dev_store,
            &data.x_dev,
            &data.y_dev,
            train,
        )
    })?;
    let worst = worst_gradient(&reference, &cpu, &moved, &dev)?;
    let jittered: Vec<&Tensor> = moved.iter().map(|m| &m.logits).collect();
    let logit_noise = noise_floor(&cpu.logits, &reference.logits, &jittered, 0.0)?;
    let logit_error = relative_error(&dev.logits, &reference.logits, 0.0)?;
    Ok((logit_error, logit_noise, worst))
}

/// The gradient tensor nearest to failing (largest error over its allowance) as (name, error,
/// floor, share of its allowance).
fn worst_gradient(
    reference: &Pass,
    cpu: &Pass,
    moved: &[Pass],
    dev: &Pass,
) -> Result<WorstGradient> {
    // The floor under each tensor's norm: GRAD_SCALE_FLOOR of the norm it would have at the
    // model's root-mean-square gradient.
    let (mut square_sum, mut count) = (0f64, 0usize);
    for (_, g) in &reference.grads {
        square_sum += norm(g)?.powi(2);
        count += g.elem_count();
    }
    let rms = (square_sum / count.max(1) as f64).sqrt();
    let mut worst = (String::new(), 0f64, 0f64, -1f64);
    for (i, (name, g)) in reference.grads.iter().enumerate() {
        let floor = GRAD_SCALE_FLOOR * rms * (g.elem_count() as f64).sqrt();
        let error = relative_error(&dev.grads[i].1, g, floor)?;
        let jittered: Vec<&Tensor> = moved.iter().map(|m| &m.grads[i].1).collect();
        let noise = noise_floor(&cpu.grads[i].1, g, &jittered, floor)?;
        let share = error / GRAD_TOLERANCE.max(NOISE_FACTOR * noise);
        if share > worst.3 {
            worst = (name.clone(), error, noise, share);
        }
    }
    Ok(worst)
}

/// Training images per second: forward, backward and an SGD step, timed after a warm-up (the
/// first use of each GPU kernel compiles it), the device synchronised at both ends.
fn time_steps(
    entry: &ModelEntry,
    target: &Target,
    input: InputSpec,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<f64> {
    let device = target.device();
    target.run(|| {
        let (store, model) = build(entry, input, &device, DType::F32, 3)?;
        let mut optimizer = Optimizer::new(OptimizerConfig::plain_sgd(), store.trainable())?;
        let x = Tensor::randn(0f32, 1f32, input.batched(batch).as_slice(), &device)?;
        let y = cycling_labels(batch, &device)?;
        let mut step = || -> Result<()> {
            let loss = cross_entropy(&model.forward_t(&x, true)?, &y, 0.0)?;
            optimizer.step(&loss.backward()?, 0.01)?;
            Ok(())
        };
        for _ in 0..warmup {
            step()?;
        }
        device.synchronize()?;
        let started = Instant::now();
        for _ in 0..steps.max(1) {
            step()?;
        }
        device.synchronize()?;
        Ok((batch * steps.max(1)) as f64 / started.elapsed().as_secs_f64())
    })
}

/// One epoch of the trainer (augmentation, EMA, checkpoints and evaluation included) on
/// synthetic 32-px images resized to the model's input on the device; returns its seconds.
fn timed_epoch(check: &EpochCheck, target: &Target) -> Result<f64> {
    let device = target.device();
    let train = epoch_loader(
        synthetic_dataset(check.images, 1)?,
        zoo_core::data::augment::Augment::for_dataset(&zoo_core::data::Dataset::Cifar10),
        check.batch,
    )?;
    let valid = epoch_loader(
        synthetic_dataset((check.images / 10).max(10), 2)?,
        Default::default(),
        check.batch,
    )?;
    let run_dir = std::env::temp_dir().join(format!("zoo-device-check-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let started = Instant::now();
    let outcome = target.run(|| fit_one_epoch(check, &device, &train, &valid, &run_dir));
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&run_dir);
    match outcome? {
        Outcome::Finished(_) => Ok(seconds),
        other => bail!("the timed epoch ended early: {other:?}"),
    }
}

/// `n` random 32-px RGB images labelled 0, 1, ..., 9, 0, ... in ten classes, from `seed`.
fn synthetic_dataset(n: usize, seed: u64) -> Result<Arc<ImageDataset>> {
    let mut rng = ZooRng::new(seed);
    let images = (0..n * 3 * 32 * 32).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    let classes = (0..10).map(|i| format!("class{i}")).collect();
    Ok(Arc::new(ImageDataset::new(
        "synthetic",
        [3, 32, 32],
        classes,
        images,
        labels,
    )?))
}

/// The notebook's loader over `data` with `augment`, in batches of `batch_size`.
fn epoch_loader(
    data: Arc<ImageDataset>,
    augment: zoo_core::data::augment::Augment,
    batch_size: usize,
) -> Result<Loader> {
    Ok(Loader::new(
        data,
        LoaderConfig {
            augment,
            batch_size,
            ..LoaderConfig::notebook(0)
        },
    )?)
}

/// The timed epoch's recipe: Nesterov SGD, cosine schedule, label smoothing and EMA.
fn epoch_recipe() -> Recipe {
    Recipe {
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
        schedule: Schedule::Cosine {
            warmup_epochs: 0.0,
            min_factor: 0.0,
        },
        label_smoothing: 0.1,
        ema_decay: Some(0.998),
        ..Recipe::notebook(1, 0.1)
    }
}

/// One epoch of the trainer on `device` into `run_dir` (no checkpoints on the way), quietly.
fn fit_one_epoch(
    check: &EpochCheck,
    device: &Device,
    train: &Loader,
    valid: &Loader,
    run_dir: &Path,
) -> Result<Outcome> {
    let input = InputSpec::square(3, check.input_size);
    let store = ParamStore::new(0, InitScheme::KaimingNormalFanOut, DType::F32, device);
    let model = check.model.build(input, 10, store.var_builder())?;
    let transform = InputTransform::notebook(3, check.input_size);
    let mut trainer = Trainer {
        model: model.as_ref(),
        store: &store,
        recipe: epoch_recipe(),
        transform: transform.clone(),
        device: device.clone(),
        run: RunInfo::new(
            check.model.name,
            input,
            (0..10).map(|i| format!("class{i}")).collect(),
            transform,
            String::new(),
            0,
        ),
        checkpoint_every: None,
        read_every: None,
        data_parallel: None,
        finetune: None,
    };
    Ok(trainer.fit(train, valid, run_dir, None, &mut Quiet)?)
}

/// PyTorch's training img/s by (model, size), from `scripts/bench_torch.py`'s output (cases
/// it could not train are left out).
fn read_torch_results(path: &Path) -> Result<HashMap<(String, usize), f64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("RESULT ")) {
        let r = parse_result(line).with_context(|| format!("reading {}", path.display()))?;
        if let Some(train) = r.train {
            out.insert((r.model, r.size), train);
        }
    }
    Ok(out)
}

/// The report as markdown (docs/gpu.md's body).
pub fn markdown(report: &CheckReport, header: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}\n");
    let _ = writeln!(
        md,
        "Checked side: {}. The reference is the same model in f64 (candle's compositions on the \
         CPU). Errors are Euclidean norms of the difference relative to the reference's (per \
         gradient tensor; a tensor's norm is floored at {GRAD_SCALE_FLOOR:.0e} of the norm it \
         would have at the model's root-mean-square gradient). The floor is zoo's f32 CPU \
         kernels' own error against the reference, or their change when every weight and input \
         value is multiplied by 1 + N(0, {NOISE:.0e}) (f32's rounding; the largest of \
         {NOISE_SAMPLES} draws), whichever is larger. A comparison passes within \
         {LOGIT_TOLERANCE:.0e} (logits) or {GRAD_TOLERANCE:.0e} (gradients), or within \
         {NOISE_FACTOR} times its floor.\n",
        report.target
    );
    md += &parity_markdown(&report.parity);
    if !report.timings.is_empty() {
        md += "\nTraining step (forward, backward, SGD), reference input:\n\n";
        md += &timings_markdown(&report.timings);
    }
    let _ = writeln!(md, "\nData-parallel engine: {}.", report.collective);
    if let Some((model, size, images, seconds)) = report.epoch {
        let _ = writeln!(
            md,
            "\nOne epoch of `{model}` at {size} px on {images} synthetic 32-px images (the \
             trainer with augmentation, EMA, evaluation and checkpoints): {seconds:.1} s, {:.0} \
             images/s.",
            images as f64 / seconds
        );
    }
    md
}

/// The comparisons as a markdown table.
fn parity_markdown(results: &[Parity]) -> String {
    let mut parity = Table::new(&[
        ("model", Align::Left),
        ("input", Align::Right),
        ("mode", Align::Left),
        ("logits", Align::Right),
        ("floor", Align::Right),
        ("worst gradient", Align::Right),
        ("floor", Align::Right),
        ("tensor", Align::Left),
        ("result", Align::Left),
    ]);
    for p in results {
        parity.row([
            format!("`{}`", p.model),
            format!("{} px", p.input),
            if p.train_mode { "train" } else { "eval" }.to_string(),
            format!("{:.1e}", p.logit_error),
            format!("{:.1e}", p.logit_noise),
            format!("{:.1e}", p.grad_error),
            format!("{:.1e}", p.grad_noise),
            format!("`{}`", p.worst_grad),
            if p.passed() { "ok" } else { "**failed**" }.to_string(),
        ]);
    }
    parity.markdown()
}

/// The training-step timings, beside PyTorch's where known, as a markdown table.
fn timings_markdown(timings: &[Timing]) -> String {
    let mut table = Table::new(&[
        ("model", Align::Left),
        ("input", Align::Right),
        ("batch", Align::Right),
        ("zoo img/s", Align::Right),
        ("PyTorch img/s", Align::Right),
        ("zoo / PyTorch", Align::Right),
    ]);
    for t in timings {
        let (torch, ratio) = match t.torch_images_per_sec {
            Some(p) => (format!("{p:.1}"), format!("{:.2}", t.images_per_sec / p)),
            None => ("-".to_string(), "-".to_string()),
        };
        table.row([
            format!("`{}`", t.model),
            format!("{} px", t.input),
            t.batch.to_string(),
            format!("{:.1}", t.images_per_sec),
            torch,
            ratio,
        ]);
    }
    table.markdown()
}
