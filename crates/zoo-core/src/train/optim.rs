//! Optimisers with PyTorch's update rules and their state as named tensors (for checkpoints).
//!
//! candle's `SGD` has no momentum, Nesterov or weight decay; these follow `torch.optim.SGD` and
//! `torch.optim.AdamW` step for step.

use std::collections::{HashMap, HashSet};

use candle_core::{
    CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var, backprop::GradStore,
};
use serde::{Deserialize, Serialize};

use super::inplace::update_in_place;

/// Which optimiser, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)` (dampening 0).
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// `torch.optim.AdamW(params, lr, betas, eps, weight_decay)`.
    AdamW {
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
    },
}

const fn default_beta1() -> f64 {
    0.9
}
const fn default_beta2() -> f64 {
    0.999
}
const fn default_eps() -> f64 {
    1e-8
}
const fn default_adamw_decay() -> f64 {
    0.01
}

impl OptimizerConfig {
    /// The weight decay, whichever optimiser.
    pub fn weight_decay(&self) -> f64 {
        match *self {
            Self::Sgd { weight_decay, .. } | Self::AdamW { weight_decay, .. } => weight_decay,
        }
    }

    /// The same optimiser with another weight decay.
    pub const fn with_weight_decay(self, decay: f64) -> Self {
        match self {
            Self::Sgd {
                momentum, nesterov, ..
            } => Self::Sgd {
                momentum,
                nesterov,
                weight_decay: decay,
            },
            Self::AdamW {
                beta1, beta2, eps, ..
            } => Self::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay: decay,
            },
        }
    }

    /// AdamW with `torch.optim.AdamW`'s defaults (betas 0.9 and 0.999, eps 1e-8, weight decay
    /// 0.01).
    pub const fn adamw() -> Self {
        Self::AdamW {
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_adamw_decay(),
        }
    }

    /// Plain SGD, the notebook's optimiser.
    pub fn plain_sgd() -> Self {
        Self::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// An optimiser over named parameters.
pub struct Optimizer {
    config: OptimizerConfig,
    params: Vec<(String, Var)>,
    /// SGD momentum buffers / AdamW first moments, by parameter name.
    first: HashMap<String, Tensor>,
    /// AdamW second moments.
    second: HashMap<String, Tensor>,
    /// Parameters stepped without weight decay (biases and BatchNorm's, as timm and the
    /// torchvision reference recipes leave them).
    no_decay: HashSet<String>,
    /// Steps taken.
    pub steps: u64,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, params: Vec<(String, Var)>) -> Result<Self> {
        if let OptimizerConfig::Sgd {
            momentum, nesterov, ..
        } = config
            && nesterov
            && momentum <= 0.0
        {
            candle_core::bail!("SGD: Nesterov momentum requires a momentum > 0")
        }
        Ok(Self {
            config,
            params,
            first: HashMap::new(),
            second: HashMap::new(),
            no_decay: HashSet::new(),
            steps: 0,
        })
    }

    /// Leaves every one-dimensional parameter (biases, BatchNorm's weight and bias) out of the
    /// weight decay: timm's `filter_bias_and_bn`, the usual practice.
    pub fn without_decay_on_1d(mut self) -> Self {
        self.no_decay = self
            .params
            .iter()
            .filter(|(_, v)| v.as_tensor().rank() <= 1)
            .map(|(n, _)| n.clone())
            .collect();
        self
    }

    /// Whether `name` is decayed.
    pub fn decays(&self, name: &str) -> bool {
        self.config.weight_decay() != 0.0 && !self.no_decay.contains(name)
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// One update with learning rate `lr` from the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: the update and the optimiser state must not record a graph, or every
            // step's state would keep the previous step's alive (memory grows without bound).
            let grad = &grad.detach();
            let p = &var.as_tensor().detach();
            let config = if self.no_decay.contains(name) {
                self.config.with_weight_decay(0.0)
            } else {
                self.config
            };
            match config {
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } if in_place(var.as_tensor(), grad) => {
                    // One pass over the parameter (and its momentum buffer), no allocation.
                    let step = SgdInPlace {
                        lr,
                        momentum,
                        nesterov,
                        weight_decay,
                    };
                    if momentum != 0.0 {
                        if !self.first.contains_key(name) {
                            self.first.insert(name.clone(), p.zeros_like()?);
                        }
                        let buf = &self.first[name];
                        buf.inplace_op3(
                            grad,
                            p,
                            &MomentumInPlace {
                                momentum,
                                weight_decay,
                            },
                        )?;
                        var.as_tensor().inplace_op3(grad, buf, &step)?;
                    } else {
                        var.as_tensor().inplace_op2(grad, &step)?;
                    }
                }
                OptimizerConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } => {
                    let mut d = if weight_decay != 0.0 {
                        (grad + (p * weight_decay)?)?
                    } else {
                        grad.clone()
                    };
                    if momentum != 0.0 {
                        let buf = match self.first.get(name) {
                            Some(buf) => ((buf * momentum)? + &d)?,
                            None => d.clone(),
                        };
                        d = if nesterov {
                            (&d + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.first.insert(name.clone(), buf);
                    }
                    var.set(&(p - (d * lr)?)?)?;
                }
                OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } if in_place(var.as_tensor(), grad) => {
                    // Three passes over the parameter's size, no allocation after the first step.
                    if !self.first.contains_key(name) {
                        self.first.insert(name.clone(), p.zeros_like()?);
                        self.second.insert(name.clone(), p.zeros_like()?);
                    }
                    let (m, v) = (&self.first[name], &self.second[name]);
                    m.inplace_op2(
                        grad,
                        &MomentInPlace {
                            beta: beta1,
                            squared: false,
                        },
                    )?;
                    v.inplace_op2(
                        grad,
                        &MomentInPlace {
                            beta: beta2,
                            squared: true,
                        },
                    )?;
                    var.as_tensor().inplace_op3(
                        m,
                        v,
                        &AdamWInPlace {
                            lr,
                            eps,
                            weight_decay,
                            bias1: 1.0 - beta1.powi(t),
                            bias2: 1.0 - beta2.powi(t),
                        },
                    )?;
                }
                OptimizerConfig::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let m = match self.first.get(name) {
                        Some(m) => ((m * beta1)? + (grad * (1.0 - beta1))?)?,
                        None => (grad * (1.0 - beta1))?,
                    };
                    let v = match self.second.get(name) {
                        Some(v) => ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?,
                        None => (grad.sqr()? * (1.0 - beta2))?,
                    };
                    let m_hat = (&m / (1.0 - beta1.powi(t)))?;
                    let v_hat = (&v / (1.0 - beta2.powi(t)))?;
                    let decayed = (p * (1.0 - lr * weight_decay))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.first.insert(name.clone(), m);
                    self.second.insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`first.<param>`, `second.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .first
            .iter()
            .map(|(k, v)| (format!("first.{k}"), v.clone()))
            .chain(
                self.second
                    .iter()
                    .map(|(k, v)| (format!("second.{k}"), v.clone())),
            )
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores the state written by [`Self::state_tensors`].
    pub fn load_state(&mut self, steps: u64, tensors: HashMap<String, Tensor>) -> Result<()> {
        self.steps = steps;
        self.first.clear();
        self.second.clear();
        let shapes: HashMap<&str, &Var> =
            self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for (key, tensor) in tensors {
            let (slot, name) = key.split_once('.').ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "optimiser state `{key}`: expected first.<param> or second.<param>"
                ))
            })?;
            let var = shapes.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "optimiser state `{key}` names no parameter of this model"
                ))
            })?;
            if var.as_tensor().dims() != tensor.dims() {
                candle_core::bail!(
                    "optimiser state `{key}`: expected shape {:?}, found {:?}",
                    var.as_tensor().dims(),
                    tensor.dims()
                )
            }
            if var.as_tensor().dtype() != tensor.dtype() {
                candle_core::bail!(
                    "optimiser state `{key}`: expected {:?} like its parameter, found {:?}",
                    var.as_tensor().dtype(),
                    tensor.dtype()
                )
            }
            let tensor = tensor.to_device(var.as_tensor().device())?;
            match slot {
                "first" => self.first.insert(name.to_string(), tensor),
                "second" => self.second.insert(name.to_string(), tensor),
                _ => candle_core::bail!("optimiser state `{key}`: unknown slot `{slot}`"),
            };
        }
        // After a step, every parameter has its state: a checkpoint without it would resume
        // as a different run.
        let slots: &[(&str, &HashMap<String, Tensor>)] = match self.config {
            OptimizerConfig::Sgd { momentum, .. } if momentum != 0.0 => &[("first", &self.first)],
            OptimizerConfig::Sgd { .. } => &[],
            OptimizerConfig::AdamW { .. } => &[("first", &self.first), ("second", &self.second)],
        };
        if steps > 0 {
            for (slot, state) in slots {
                if let Some((name, _)) = self.params.iter().find(|(n, _)| !state.contains_key(n)) {
                    candle_core::bail!(
                        "optimiser state `{slot}.{name}` is missing after {steps} steps: the \
                         checkpoint was saved without the optimiser's state, so it cannot resume \
                         this run exactly"
                    )
                }
            }
        }
        Ok(())
    }
}

/// Whether the fused in-place SGD kernels apply: contiguous f32 CPU parameter and gradient of
/// one shape.
fn in_place(p: &Tensor, grad: &Tensor) -> bool {
    matches!(p.device(), candle_core::Device::Cpu)
        && p.dtype() == candle_core::DType::F32
        && grad.dtype() == candle_core::DType::F32
        && p.dims() == grad.dims()
        && p.is_contiguous()
        && grad.is_contiguous()
}

/// `buf = momentum * buf + (grad + weight_decay * p)`, in place on `buf`: (buf; grad, p).
struct MomentumInPlace {
    momentum: f64,
    weight_decay: f64,
}

impl InplaceOp3 for MomentumInPlace {
    fn name(&self) -> &'static str {
        "zoo-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (mu, wd) = (self.momentum as f32, self.weight_decay as f32);
        // (buf; grad, p)
        update_in_place(self.name(), (s1, l1), (s2, l2), (s3, l3), |b, g, p| {
            let d = if wd != 0.0 { g + wd * p } else { g };
            mu * b + d
        })
    }
}

/// `p -= lr * update` in place on `p`: (p; grad, buf), where the update is
/// `grad + weight_decay * p`, the momentum buffer, or (Nesterov) `d + momentum * buf`,
/// exactly as `torch.optim.SGD` orders the arithmetic.
struct SgdInPlace {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

/// The name of the SGD step kernels (with and without a momentum buffer).
const SGD_STEP: &str = "zoo-sgd-step";

impl InplaceOp3 for SgdInPlace {
    fn name(&self) -> &'static str {
        SGD_STEP
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (lr, mu, wd) = (
            self.lr as f32,
            self.momentum as f32,
            self.weight_decay as f32,
        );
        let (heavy_ball, nesterov) = (mu != 0.0 && !self.nesterov, mu != 0.0 && self.nesterov);
        // (p; grad, buf)
        update_in_place(SGD_STEP, (s1, l1), (s2, l2), (s3, l3), |p, g, b| {
            let update = if heavy_ball {
                b
            } else {
                let d = if wd != 0.0 { g + wd * p } else { g };
                if nesterov { d + mu * b } else { d }
            };
            p - lr * update
        })
    }
}

/// Without momentum: `p -= lr * (grad + weight_decay * p)`, in place on `p`: (p; grad).
impl InplaceOp2 for SgdInPlace {
    fn name(&self) -> &'static str {
        SGD_STEP
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (lr, wd) = (self.lr as f32, self.weight_decay as f32);
        // (p; grad), the gradient read as both sources
        update_in_place(SGD_STEP, (s1, l1), (s2, l2), (s2, l2), |p, g, _| {
            let d = if wd != 0.0 { g + wd * p } else { g };
            p - lr * d
        })
    }
}

/// An AdamW moment, in place: `m = beta * m + (1 - beta) * g` (or `g^2`): (m; grad).
struct MomentInPlace {
    beta: f64,
    squared: bool,
}

impl InplaceOp2 for MomentInPlace {
    fn name(&self) -> &'static str {
        "zoo-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (beta, rest) = (self.beta as f32, (1.0 - self.beta) as f32);
        let squared = self.squared;
        update_in_place(self.name(), (s1, l1), (s2, l2), (s2, l2), |m, g, _| {
            let g = if squared { g * g } else { g };
            beta * m + rest * g
        })
    }
}

/// The AdamW step in place on `p`: (p; m, v), as `torch.optim.AdamW` (non-fused) orders it:
/// `p *= 1 - lr * wd`, then `p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)`.
struct AdamWInPlace {
    lr: f64,
    eps: f64,
    weight_decay: f64,
    bias1: f64,
    bias2: f64,
}

impl InplaceOp3 for AdamWInPlace {
    fn name(&self) -> &'static str {
        "zoo-adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let step = (self.lr / self.bias1) as f32;
        let root2 = self.bias2.sqrt() as f32;
        let eps = self.eps as f32;
        update_in_place(self.name(), (s1, l1), (s2, l2), (s3, l3), |p, m, v| {
            p * decay - step * m / (v.sqrt() / root2 + eps)
        })
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`), on their device: nothing is read to the host. Returns
/// the norm before clipping, as an f32 scalar there.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<Tensor> {
    let squares = params
        .iter()
        .filter_map(|(_, var)| grads.get(var.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if squares.is_empty() {
        candle_core::bail!("clip_grad_norm: no parameter has a gradient")
    }
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    // min(1, max_norm / (norm + 1e-6)): exactly 1 when the norm is within bounds.
    let scale = ((norm.clone() + 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let scaled = g.broadcast_mul(&scale.to_dtype(g.dtype())?)?;
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}
