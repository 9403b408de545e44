//! Optimisers with PyTorch's update rules and their state as named tensors (for checkpoints):
//! one struct per rule ([`Sgd`], [`AdamW`]) behind [`UpdateRule`], driven over named
//! parameters by [`Optimizer`], which also serves as `candle_nn::Optimizer`.
//!
//! candle's `SGD` has no momentum, Nesterov or weight decay; these follow `torch.optim.SGD` and
//! `torch.optim.AdamW` step for step.

mod adamw;
mod clip;
mod config;
mod sgd;

use std::collections::{HashMap, HashSet};

use candle_core::{Result, Tensor, Var, backprop::GradStore};

pub use adamw::AdamW;
pub use clip::clip_grad_norm;
pub use config::OptimizerConfig;
pub use sgd::Sgd;

/// One parameter's optimiser state: SGD's momentum buffer or AdamW's first moment, and AdamW's
/// second moment.
#[derive(Debug, Clone, Default)]
pub struct ParamState {
    pub first: Option<Tensor>,
    pub second: Option<Tensor>,
}

/// What one update of one parameter is given besides its gradient.
#[derive(Debug, Clone, Copy)]
pub struct UpdateStep {
    /// The learning rate of this step.
    pub lr: f64,
    /// The step's number, from 1 (AdamW's bias corrections).
    pub t: i32,
}

/// An optimiser's rule: how it updates one parameter and what state it keeps. [`Optimizer`]
/// picks the path (in place on contiguous f32 CPU tensors, candle's ops elsewhere) and the
/// weight decay (0 for a parameter left out of it).
pub trait UpdateRule: Send + Sync {
    /// Updates an f32 CPU `var` in place from `grad` (detached, contiguous), keeping `state`.
    fn update_in_place(
        &self,
        var: &Var,
        grad: &Tensor,
        step: UpdateStep,
        weight_decay: f64,
        state: &mut ParamState,
    ) -> Result<()>;

    /// The same update with candle's ops (another device or dtype).
    fn update_composed(
        &self,
        var: &Var,
        grad: &Tensor,
        step: UpdateStep,
        weight_decay: f64,
        state: &mut ParamState,
    ) -> Result<()>;

    /// The state slots every parameter holds after a step (`first`, `second`): a checkpoint
    /// without them cannot resume the run exactly.
    fn slots(&self) -> &'static [&'static str];

    /// The weight decay it applies to decayed parameters.
    fn weight_decay(&self) -> f64;
}

/// An optimiser over named parameters: an [`UpdateRule`], each parameter's state, the
/// parameters left out of weight decay, and the steps taken.
pub struct Optimizer {
    config: OptimizerConfig,
    rule: Box<dyn UpdateRule>,
    params: Vec<(String, Var)>,
    state: HashMap<String, ParamState>,
    /// Parameters stepped without weight decay (biases and BatchNorm's, as timm and the
    /// torchvision reference recipes leave them).
    no_decay: HashSet<String>,
    /// Learning-rate factors of single parameters (a fine-tune's backbone); 1 for the others.
    lr_factor: HashMap<String, f64>,
    /// Steps taken.
    pub steps: u64,
    /// The learning rate `candle_nn::Optimizer::step` uses.
    learning_rate: f64,
}

impl Optimizer {
    /// `config`'s optimiser over `params` (named, for its state in checkpoints).
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
            rule: config.rule(),
            params,
            state: HashMap::new(),
            no_decay: HashSet::new(),
            lr_factor: HashMap::new(),
            steps: 0,
            learning_rate: 0.0,
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

    /// Steps the parameters `chosen` names at `factor` times the learning rate (PyTorch's
    /// parameter groups with their own `lr`).
    pub fn with_lr_factor(mut self, factor: f64, chosen: impl Fn(&str) -> bool) -> Self {
        for (name, _) in &self.params {
            if chosen(name) {
                self.lr_factor.insert(name.clone(), factor);
            }
        }
        self
    }

    /// Whether `name` is decayed.
    pub fn decays(&self, name: &str) -> bool {
        self.rule.weight_decay() != 0.0 && !self.no_decay.contains(name)
    }

    /// The configuration it was made from.
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
            // Biases and BatchNorm's parameters are left out of the decay by default.
            let weight_decay = match self.no_decay.contains(name) {
                true => 0.0,
                false => self.rule.weight_decay(),
            };
            let state = self.state.entry(name.clone()).or_default();
            let lr = lr * self.lr_factor.get(name).copied().unwrap_or(1.0);
            let step = UpdateStep { lr, t };
            if in_place(var.as_tensor(), grad) {
                self.rule
                    .update_in_place(var, grad, step, weight_decay, state)?;
            } else {
                self.rule
                    .update_composed(var, grad, step, weight_decay, state)?;
            }
        }
        Ok(())
    }

    /// The state as named tensors (`first.<param>`, `second.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        for (name, s) in &self.state {
            for (slot, t) in [("first", &s.first), ("second", &s.second)] {
                if let Some(t) = t {
                    out.push((format!("{slot}.{name}"), t.clone()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores the state written by [`Self::state_tensors`].
    pub fn load_state(&mut self, steps: u64, tensors: HashMap<String, Tensor>) -> Result<()> {
        self.steps = steps;
        self.state.clear();
        let vars: HashMap<&str, &Var> = self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        for (key, tensor) in tensors {
            let (slot, name, tensor) = checked_state(&vars, &key, tensor)?;
            let state = self.state.entry(name).or_default();
            match slot {
                "first" => state.first = Some(tensor),
                _ => state.second = Some(tensor),
            }
        }
        // After a step, every parameter has its state: a checkpoint without it would resume
        // as a different run.
        if steps > 0 {
            for slot in self.rule.slots() {
                let has = |name: &String| {
                    self.state.get(name).is_some_and(|s| match *slot {
                        "first" => s.first.is_some(),
                        _ => s.second.is_some(),
                    })
                };
                if let Some((name, _)) = self.params.iter().find(|(n, _)| !has(n)) {
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

/// A checkpoint's optimiser-state tensor `key` checked against the parameters: its slot, its
/// parameter's name and the tensor on the parameter's device.
fn checked_state(
    vars: &HashMap<&str, &Var>,
    key: &str,
    tensor: Tensor,
) -> Result<(&'static str, String, Tensor)> {
    let (slot, name) = key.split_once('.').ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "optimiser state `{key}`: expected first.<param> or second.<param>"
        ))
    })?;
    let slot = match slot {
        "first" => "first",
        "second" => "second",
        _ => candle_core::bail!("optimiser state `{key}`: unknown slot `{slot}`"),
    };
    let var = vars.get(name).ok_or_else(|| {
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
    Ok((
        slot,
        name.to_string(),
        tensor.to_device(var.as_tensor().device())?,
    ))
}

/// What `candle_nn::Optimizer::new` takes: the rule and the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub optimizer: OptimizerConfig,
    pub learning_rate: f64,
}

/// zoo's optimisers in candle's training loops: `backward_step`, `set_learning_rate`. The
/// parameters are named by their position (`0`, `1`, ...) for the state.
impl candle_nn::Optimizer for Optimizer {
    type Config = OptimizerSettings;

    fn new(vars: Vec<Var>, config: OptimizerSettings) -> Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect();
        let mut optimizer = Optimizer::new(config.optimizer, named)?;
        optimizer.learning_rate = config.learning_rate;
        Ok(optimizer)
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        Optimizer::step(self, grads, self.learning_rate)
    }

    fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.learning_rate = lr;
    }
}

/// Whether the fused in-place SGD kernels apply: contiguous f32 CPU parameter and gradient of
/// one shape.
pub(crate) fn in_place(p: &Tensor, grad: &Tensor) -> bool {
    matches!(p.device(), candle_core::Device::Cpu)
        && p.dtype() == candle_core::DType::F32
        && grad.dtype() == candle_core::DType::F32
        && p.dims() == grad.dims()
        && p.is_contiguous()
        && grad.is_contiguous()
}
