//! Seeded parameter creation: the `ParamStore` behind every zoo model's `VarBuilder`.
//!
//! Layers ask for their weights with candle's `Init` hints describing PyTorch's defaults
//! (Kaiming-uniform with gain `sqrt(1/3)` for convolution and linear weights, `U(+-1/sqrt(fan_in))`
//! for their biases, constants for BatchNorm). The store samples every tensor from one seeded
//! [`ZooRng`], in the order the layers are built, so one seed gives identical weights on every
//! machine. With [`InitScheme::XavierUniform`] (the notebook's `init_weights`), every weight hinted
//! as Kaiming is drawn from Xavier-uniform instead; biases and BatchNorm keep PyTorch's defaults,
//! exactly as `nn.init.xavier_uniform_(m.weight)` leaves them. The Kaiming-normal schemes are
//! the ones torchvision's definitions apply after construction (see each variant).

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder, VarMap, var_builder::SimpleBackend};
use serde::{Deserialize, Serialize};

use crate::rng::{ZooRng, streams};

/// How convolution and linear weights are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// `nn.init.xavier_uniform_` on every Conv2d / Linear weight (the notebook's recipe).
    #[default]
    XavierUniform,
    /// PyTorch's default: Kaiming-uniform with `a = sqrt(5)`, i.e. `U(+-1/sqrt(fan_in))`.
    PytorchDefault,
    /// torchvision's VGG and ResNet: convolution weights
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e. `N(0, 2 / fan_out)`; linear
    /// weights `N(0, 0.01^2)`; convolution and linear biases 0.
    KaimingNormalFanOut,
    /// He et al. (2015) for every layer: convolution and linear weights
    /// `kaiming_normal_(mode="fan_in", nonlinearity="relu")`, i.e. `N(0, 2 / fan_in)`; biases 0.
    /// torchvision's DenseNet does this for its convolutions. It keeps the signal's scale
    /// through narrow Linear layers, where `N(0, 0.01)` shrinks it (VGG-11-small's first Linear
    /// has 128 inputs at 32 px: a gain of 0.11).
    KaimingNormalFanIn,
}

impl InitScheme {
    /// The name used in flags, recipes and `config.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::XavierUniform => "xavier-uniform",
            Self::PytorchDefault => "pytorch-default",
            Self::KaimingNormalFanOut => "kaiming-normal-fan-out",
            Self::KaimingNormalFanIn => "kaiming-normal-fan-in",
        }
    }

    /// Every scheme, for flag help and errors.
    pub const ALL: [InitScheme; 4] = [
        Self::XavierUniform,
        Self::PytorchDefault,
        Self::KaimingNormalFanOut,
        Self::KaimingNormalFanIn,
    ];
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "xavier-uniform" | "xavier" => Ok(Self::XavierUniform),
            "pytorch-default" | "pytorch" | "default" => Ok(Self::PytorchDefault),
            "kaiming-normal-fan-out" => Ok(Self::KaimingNormalFanOut),
            "kaiming-normal-fan-in" => Ok(Self::KaimingNormalFanIn),
            other => Err(format!(
                "unknown init scheme `{other}` (expected one of {})",
                Self::ALL.map(|s| s.name()).join(", ")
            )),
        }
    }
}

/// The hint a layer gives for a convolution or linear weight: PyTorch's default init.
pub fn pytorch_weight_hint() -> Init {
    Init::Kaiming {
        dist: NormalOrUniform::Uniform,
        fan: FanInOut::FanIn,
        non_linearity: NonLinearity::ExplicitGain((1.0f64 / 3.0).sqrt()),
    }
}

/// The hint for a convolution or linear bias: `U(+-1/sqrt(fan_in))` as PyTorch does.
pub fn pytorch_bias_hint(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `(fan_in, fan_out)` of a weight shaped `(out, in, k...)`, as PyTorch computes them.
pub fn fans(dims: &[usize]) -> (usize, usize) {
    match dims {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, rest @ ..] => {
            let receptive: usize = rest.iter().product();
            (inp * receptive, out * receptive)
        }
    }
}

/// True for tensors that are state, not trainable parameters (BatchNorm running statistics).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

struct SeededBackend {
    varmap: VarMap,
    rng: Mutex<ZooRng>,
    scheme: InitScheme,
    /// Zeros instead of draws, for weights loaded right after.
    zeroed: bool,
}

impl SeededBackend {
    fn sample(
        &self,
        name: &str,
        shape: &Shape,
        hint: &Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let n = shape.elem_count();
        let dims = shape.dims();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter generator poisoned".into()))?;
        let kaiming_normal = matches!(
            self.scheme,
            InitScheme::KaimingNormalFanOut | InitScheme::KaimingNormalFanIn
        );
        let values = match *hint {
            Init::Const(v) => vec![v as f32; n],
            // A convolution's or linear layer's bias (BatchNorm's come as constants).
            Init::Uniform { .. } if kaiming_normal && name.ends_with("bias") => vec![0f32; n],
            Init::Uniform { lo, up } => rng.uniform_vec(n, lo, up),
            Init::Randn { mean, stdev } => rng.normal_vec(n, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity: nonlinearity,
            } => {
                let (fan_in, fan_out) = fans(dims);
                let relu_gain = 2f64.sqrt();
                let linear = dims.len() == 2;
                match self.scheme {
                    InitScheme::XavierUniform => {
                        let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                        rng.uniform_vec(n, -bound, bound)
                    }
                    InitScheme::KaimingNormalFanOut if linear => rng.normal_vec(n, 0.0, 0.01),
                    InitScheme::KaimingNormalFanOut => {
                        rng.normal_vec(n, 0.0, relu_gain / (fan_out as f64).sqrt())
                    }
                    InitScheme::KaimingNormalFanIn => {
                        rng.normal_vec(n, 0.0, relu_gain / (fan_in as f64).sqrt())
                    }
                    InitScheme::PytorchDefault => {
                        let fan = match fan {
                            FanInOut::FanIn => fan_in,
                            FanInOut::FanOut => fan_out,
                        } as f64;
                        let std = nonlinearity.gain() / fan.sqrt();
                        match dist {
                            NormalOrUniform::Uniform => {
                                let bound = 3f64.sqrt() * std;
                                rng.uniform_vec(n, -bound, bound)
                            }
                            NormalOrUniform::Normal => rng.normal_vec(n, 0.0, std),
                        }
                    }
                }
            }
        };
        Tensor::from_vec(values, shape.clone(), dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter map poisoned".into()))?;
        if data.contains_key(name) {
            candle_core::bail!(
                "parameter `{name}` is created twice: two layers share one name, which would \
                 silently tie their weights"
            );
        }
        let var = match self.zeroed {
            true => Var::zeros(s, dtype, dev)?,
            false => Var::from_tensor(&self.sample(name, &s, &h, dtype, dev)?)?,
        };
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` must be created with a shape in a ParamStore")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// The variables of one model, created from one seed.
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    device: Device,
    dtype: DType,
    seed: u64,
    scheme: InitScheme,
}

impl ParamStore {
    pub fn new(seed: u64, scheme: InitScheme, dtype: DType, device: &Device) -> Self {
        Self {
            varmap: VarMap::new(),
            device: device.clone(),
            dtype,
            seed,
            scheme,
        }
    }

    /// A `VarBuilder` whose every new tensor is drawn from this store's seeded generator.
    /// Call it once per model: the generator restarts from the seed on each call.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.builder(false)
    }

    /// A `VarBuilder` whose every new tensor is zeros, for weights loaded right after (a
    /// checkpoint's, streamed in by `zoo_core`): nothing is drawn, and a model's weights are in
    /// memory once.
    pub fn zeroed_var_builder(&self) -> VarBuilder<'static> {
        self.builder(true)
    }

    fn builder(&self, zeroed: bool) -> VarBuilder<'static> {
        let backend = SeededBackend {
            varmap: self.varmap.clone(),
            rng: Mutex::new(ZooRng::with_stream(self.seed, streams::INIT)),
            scheme: self.scheme,
            zeroed,
        };
        VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone())
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn scheme(&self) -> InitScheme {
        self.scheme
    }

    /// All tensors by name, sorted (parameters and buffers).
    pub fn named_tensors(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("parameter map poisoned");
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// The trainable parameters (everything but BatchNorm running statistics), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.named_tensors()
            .into_iter()
            .filter(|(name, _)| !is_buffer(name))
            .collect()
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(store: &ParamStore, name: &str) -> Vec<f32> {
        let named = store.named_tensors();
        let (_, var) = named
            .iter()
            .find(|(n, _)| n == name)
            .expect("tensor exists");
        var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn build(seed: u64, scheme: InitScheme) -> ParamStore {
        let store = ParamStore::new(seed, scheme, DType::F32, &Device::Cpu);
        let vb = store.var_builder();
        vb.pp("conv")
            .get_with_hints((64, 32, 3, 3), "weight", pytorch_weight_hint())
            .unwrap();
        vb.pp("conv")
            .get_with_hints(64, "bias", pytorch_bias_hint(32 * 9))
            .unwrap();
        store
    }

    #[test]
    fn same_seed_gives_identical_weights() {
        let a = build(42, InitScheme::XavierUniform);
        let b = build(42, InitScheme::XavierUniform);
        let c = build(43, InitScheme::XavierUniform);
        assert_eq!(values(&a, "conv.weight"), values(&b, "conv.weight"));
        assert_eq!(values(&a, "conv.bias"), values(&b, "conv.bias"));
        assert_ne!(values(&a, "conv.weight"), values(&c, "conv.weight"));
    }

    #[test]
    fn xavier_and_pytorch_default_bounds_and_variance() {
        // fan_in = 32*9 = 288, fan_out = 64*9 = 576.
        // xavier: bound = sqrt(6 / 864) = 0.0833; var = bound^2 / 3.
        // pytorch default: bound = 1/sqrt(288) = 0.0589.
        for (scheme, bound) in [
            (InitScheme::XavierUniform, (6.0f64 / 864.0).sqrt()),
            (InitScheme::PytorchDefault, 1.0 / 288f64.sqrt()),
        ] {
            let store = build(1, scheme);
            let w = values(&store, "conv.weight");
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            assert!(
                max <= bound && max > 0.98 * bound,
                "{scheme:?}: max {max} bound {bound}"
            );
            let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64;
            let expected = bound * bound / 3.0;
            assert!(
                (var / expected - 1.0).abs() < 0.05,
                "{scheme:?}: var {var} vs {expected}"
            );
            let b = values(&store, "conv.bias");
            let bias_bound = 1.0 / 288f64.sqrt();
            assert!(b.iter().all(|x| (x.abs() as f64) <= bias_bound));
        }
    }

    /// Mean and variance of `values`.
    fn moments(values: &[f32]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    }

    #[test]
    fn kaiming_normal_schemes_match_their_formulas() {
        // A convolution (fan_in 32*9 = 288, fan_out 64*9 = 576; 18,432 values) and a linear
        // layer (fan_in 400; 40,000 values), each with its bias, and a BatchNorm pair.
        let build = |scheme| {
            let store = ParamStore::new(7, scheme, DType::F32, &Device::Cpu);
            let vb = store.var_builder();
            vb.pp("conv")
                .get_with_hints((64, 32, 3, 3), "weight", pytorch_weight_hint())
                .unwrap();
            vb.pp("conv")
                .get_with_hints(64, "bias", pytorch_bias_hint(288))
                .unwrap();
            vb.pp("fc")
                .get_with_hints((100, 400), "weight", pytorch_weight_hint())
                .unwrap();
            vb.pp("fc")
                .get_with_hints(100, "bias", pytorch_bias_hint(400))
                .unwrap();
            vb.pp("bn")
                .get_with_hints(64, "weight", Init::Const(1.0))
                .unwrap();
            store
        };
        // (scheme, conv std, linear std)
        for (scheme, conv_std, linear_std) in [
            (
                InitScheme::KaimingNormalFanOut,
                (2.0f64 / 576.0).sqrt(),
                0.01,
            ),
            (
                InitScheme::KaimingNormalFanIn,
                (2.0f64 / 288.0).sqrt(),
                (2.0f64 / 400.0).sqrt(),
            ),
        ] {
            let store = build(scheme);
            let (mean, var) = moments(&values(&store, "conv.weight"));
            // Standard error of the mean: std / sqrt(18432) = 0.0074 std.
            assert!(mean.abs() < 0.03 * conv_std, "{scheme:?}: conv mean {mean}");
            assert!(
                (var.sqrt() / conv_std - 1.0).abs() < 0.02,
                "{scheme:?}: conv std {} vs {conv_std}",
                var.sqrt()
            );
            let fc = values(&store, "fc.weight");
            let (mean, var) = moments(&fc);
            let std = linear_std;
            assert!(mean.abs() < 0.03 * std, "{scheme:?}: linear mean {mean}");
            assert!((var.sqrt() / std - 1.0).abs() < 0.02, "{scheme:?}: {var}");
            // Normal, not uniform: about 0.27% of the values (108) lie beyond 3 std.
            let tails = fc.iter().filter(|x| x.abs() as f64 > 3.0 * std).count();
            assert!((40..=230).contains(&tails), "{scheme:?}: {tails} tails");
            assert!(values(&store, "conv.bias").iter().all(|&b| b == 0.0));
            assert!(values(&store, "fc.bias").iter().all(|&b| b == 0.0));
            assert!(values(&store, "bn.weight").iter().all(|&b| b == 1.0));
        }
    }

    #[test]
    fn scheme_names_round_trip() {
        for scheme in InitScheme::ALL {
            assert_eq!(scheme.name().parse::<InitScheme>(), Ok(scheme));
        }
        let err = "kaiming".parse::<InitScheme>().unwrap_err();
        assert!(err.contains("kaiming-normal-fan-out"), "{err}");
    }

    #[test]
    fn reusing_a_name_is_an_error() {
        let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
        let vb = store.var_builder();
        vb.get_with_hints(3, "w", Init::Const(0.)).unwrap();
        let err = vb.get_with_hints(3, "w", Init::Const(0.)).unwrap_err();
        assert!(err.to_string().contains("`w` is created twice"), "{err}");
    }
}
