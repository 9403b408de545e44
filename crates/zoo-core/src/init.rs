//! Seeded parameter creation: the `ParamStore` behind every zoo model's `VarBuilder`.
//!
//! Layers ask for their weights with candle's `Init` hints describing PyTorch's defaults
//! (Kaiming-uniform with gain `sqrt(1/3)` for convolution and linear weights, `U(+-1/sqrt(fan_in))`
//! for their biases, constants for BatchNorm). The store samples every tensor from one seeded
//! [`ZooRng`], in the order the layers are built, so one seed gives identical weights on every
//! machine. With [`InitScheme::XavierUniform`] (the notebook's `init_weights`), every weight hinted
//! as Kaiming is drawn from Xavier-uniform instead; biases and BatchNorm keep PyTorch's defaults,
//! exactly as `nn.init.xavier_uniform_(m.weight)` leaves them.

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
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "xavier-uniform" | "xavier" => Ok(Self::XavierUniform),
            "pytorch-default" | "pytorch" | "default" => Ok(Self::PytorchDefault),
            other => Err(format!(
                "unknown init scheme `{other}` (expected xavier-uniform or pytorch-default)"
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
}

impl SeededBackend {
    fn sample(&self, shape: &Shape, hint: &Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let dims = shape.dims();
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("parameter generator poisoned".into()))?;
        let values = match *hint {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => rng.uniform_vec(n, lo, up),
            Init::Randn { mean, stdev } => rng.normal_vec(n, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity: nonlinearity,
            } => {
                let (fan_in, fan_out) = fans(dims);
                if self.scheme == InitScheme::XavierUniform {
                    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    rng.uniform_vec(n, -bound, bound)
                } else {
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
        let tensor = self.sample(&s, &h, dtype, dev)?;
        let var = Var::from_tensor(&tensor)?;
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
        let backend = SeededBackend {
            varmap: self.varmap.clone(),
            rng: Mutex::new(ZooRng::with_stream(self.seed, streams::INIT)),
            scheme: self.scheme,
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

    #[test]
    fn reusing_a_name_is_an_error() {
        let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
        let vb = store.var_builder();
        vb.get_with_hints(3, "w", Init::Const(0.)).unwrap();
        let err = vb.get_with_hints(3, "w", Init::Const(0.)).unwrap_err();
        assert!(err.to_string().contains("`w` is created twice"), "{err}");
    }
}
