//! `nn.BatchNorm2d`: batch statistics and running-statistics updates in training (over the
//! global batch when data-parallel ranks synchronise them), running statistics in evaluation.

use candle_core::{Result, Tensor, Var};
use candle_nn::{BatchNormConfig, ModuleT, VarBuilder};

use super::{Layer, LayerKind, expect_nchw};
use crate::context::ForwardContext;
use crate::export::{Attribute, Graph, Value};
use crate::grad::tracked;
use zoo_kernels::batch_norm::{batch_norm_eval, batch_norm_train_over};
use zoo_kernels::cpu_f32;

/// `nn.BatchNorm2d(num_features)` with PyTorch's defaults (eps 1e-5, momentum 0.1, affine).
/// Tensors: `weight`, `bias` (trainable), `running_mean`, `running_var` (state). In training
/// its statistics are the batch's, or the global batch's when the network's
/// [`ForwardContext`] holds a group (synchronised BatchNorm).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    name: String,
    num_features: usize,
    /// candle's layer: evaluation everywhere, training off the CPU.
    inner: candle_nn::BatchNorm,
    /// The same tensors, for the fused CPU training path.
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    momentum: f64,
    eps: f64,
    context: ForwardContext,
}

impl BatchNorm2d {
    /// PyTorch's defaults; `context` is the network's (it may synchronise the statistics).
    pub fn new(num_features: usize, vb: VarBuilder, context: &ForwardContext) -> Result<Self> {
        Self::with_eps(num_features, 1e-5, vb, context)
    }

    /// `nn.BatchNorm2d(num_features, eps=eps)` (torchvision's GoogLeNet uses 1e-3).
    pub fn with_eps(
        num_features: usize,
        eps: f64,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let config = BatchNormConfig {
            eps,
            remove_mean: true,
            affine: true,
            momentum: 0.1,
        };
        let name = vb.prefix();
        let inner = candle_nn::batch_norm(num_features, config, vb.clone())?;
        let (weight, bias) = inner
            .weight_and_bias()
            .map(|(w, b)| (w.clone(), b.clone()))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("BatchNorm2d `{name}`: expected affine parameters"))
            })?;
        // The running statistics are variables of the store: these handles share them.
        let running_mean = Var::from_tensor(inner.running_mean())?;
        let running_var = Var::from_tensor(inner.running_var())?;
        Ok(Self {
            name,
            num_features,
            inner,
            weight,
            bias,
            running_mean,
            running_var,
            momentum: config.momentum,
            eps: config.eps,
            context: context.clone(),
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.inner.running_mean()
    }

    pub fn running_var(&self) -> &Tensor {
        self.inner.running_var()
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, train, false)
    }
}

impl BatchNorm2d {
    /// BatchNorm, then ReLU when `relu`: zoo's fused kernels for f32 on the CPU (batch
    /// statistics in training, running ones in evaluation), candle's layer elsewhere.
    pub(crate) fn forward_fused(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        // Frozen (a fine-tune's backbone): running statistics in both modes.
        let train = !self.uses_running_statistics(train);
        // Data-parallel ranks synchronising BatchNorm: statistics over the global batch, whose
        // count the kernel checks.
        let group = if train {
            self.context.batch_norm_group()
        } else {
            None
        };
        if group.is_some() && !cpu_f32(x) {
            candle_core::bail!(
                "BatchNorm2d `{}`: synchronised BatchNorm runs on f32 CPU tensors, got {:?} on \
                 {:?}",
                self.name,
                x.dtype(),
                x.device()
            )
        }
        if train && group.is_none() && x.dim(0)? * x.dim(2)? * x.dim(3)? < 2 {
            candle_core::bail!(
                "BatchNorm2d `{}`: training needs more than one value per channel, got input {:?}",
                self.name,
                x.dims()
            )
        }
        if !cpu_f32(x) {
            return zoo_kernels::activation::relu_composed_if(
                self.inner.forward_t(x, train)?,
                relu,
            );
        }
        if !train {
            return batch_norm_eval(
                x,
                &tracked(&self.weight),
                &tracked(&self.bias),
                &tracked(self.running_mean.as_tensor()),
                &tracked(self.running_var.as_tensor()),
                self.eps,
                relu,
            );
        }
        let (y, stats, count) =
            batch_norm_train_over(x, &self.weight, &self.bias, self.eps, relu, group)?;
        self.update_running(&stats.get(0)?, &stats.get(1)?, count)?;
        Ok(y)
    }

    /// Running statistics as PyTorch updates them: momentum, unbiased variance (`var` is the
    /// biased one of `count` values per channel).
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let m = self.momentum;
        let var = (var * (count / (count - 1.0)))?;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (var * m)?)?)?;
        Ok(())
    }
}

impl BatchNorm2d {
    /// Whether a forward with this train flag normalises by the running statistics
    /// (evaluation, or a frozen BatchNorm), so that it can be folded into the layer before it.
    pub(crate) fn uses_running_statistics(&self, train: bool) -> bool {
        !train || self.context.batch_norm_frozen()
    }

    /// The weights and bias of one convolution computing this BatchNorm (running statistics)
    /// of the convolution with `weight` `(O, C, k, k)` and `bias` `(O,)`: `weight * scale` per
    /// output channel and `(bias - running_mean) * scale + self.bias`, where `scale = self.weight
    /// / sqrt(running_var + eps)`. Detached: nothing trains them.
    pub(crate) fn folded_into(&self, weight: &Tensor, bias: &Tensor) -> Result<(Tensor, Tensor)> {
        let o = weight.dim(0)?;
        if o != self.num_features || bias.dims() != [o] {
            candle_core::bail!(
                "BatchNorm2d `{}`: {} features cannot fold into a convolution with weight {:?} \
                 and bias {:?}",
                self.name,
                self.num_features,
                weight.dims(),
                bias.dims()
            )
        }
        let (mean, var) = (self.running_mean.as_tensor(), self.running_var.as_tensor());
        let scale = self.weight.div(&var.affine(1.0, self.eps)?.sqrt()?)?;
        let shift = self.bias.sub(&mean.mul(&scale)?)?;
        let weight = weight.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
        let bias = bias.mul(&scale)?.add(&shift)?;
        Ok((weight.detach(), bias.detach()))
    }
}

impl Layer for BatchNorm2d {
    fn kind(&self) -> LayerKind {
        LayerKind::BatchNorm2d
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let name = &self.name;
        let inputs = vec![
            input.name.clone(),
            graph.weight(&format!("{name}.weight"), &self.weight)?,
            graph.weight(&format!("{name}.bias"), &self.bias)?,
            graph.weight(
                &format!("{name}.running_mean"),
                self.running_mean.as_tensor(),
            )?,
            graph.weight(&format!("{name}.running_var"), self.running_var.as_tensor())?,
        ];
        let attributes = vec![("epsilon", Attribute::Float(self.eps as f32))];
        Ok(graph.node("BatchNormalization", name, inputs, attributes, shape))
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        expect_nchw(
            &format!("BatchNorm2d `{}`", self.name),
            input,
            self.num_features,
        )?;
        Ok(input.to_vec())
    }

    fn num_params(&self) -> usize {
        2 * self.num_features
    }

    fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, train, true)
    }

    fn as_batch_norm(&self) -> Option<&BatchNorm2d> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{InitScheme, ParamStore};
    use candle_core::{DType, Device};

    fn sum_of(store: &ParamStore, suffix: &str) -> f32 {
        let (_, var) = store
            .named_tensors()
            .into_iter()
            .find(|(n, _)| n.ends_with(suffix))
            .unwrap();
        var.as_tensor()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn frozen_batch_norm_trains_as_it_evaluates_and_keeps_its_statistics() -> Result<()> {
        let store = ParamStore::new(1, InitScheme::PytorchDefault, DType::F32, &Device::Cpu);
        let context = ForwardContext::default();
        let bn = BatchNorm2d::new(3, store.var_builder().pp("bn"), &context)?;
        let x = crate::testing::test_input(&[4, 3, 5, 5], 7)?.affine(2.0, 1.0)?;
        let eval = bn.forward_t(&x, false)?;
        context.set_batch_norm_frozen(true);
        let frozen = bn.forward_t(&x, true)?;
        assert_eq!(crate::testing::max_abs_diff(&frozen, &eval)?, 0.0);
        assert_eq!(sum_of(&store, "running_mean"), 0.0, "statistics unchanged");
        context.set_batch_norm_frozen(false);
        let train = bn.forward_t(&x, true)?;
        assert!(crate::testing::max_abs_diff(&train, &eval)? > 0.1);
        assert!(
            sum_of(&store, "running_mean") > 0.1,
            "thawed, it updates them"
        );
        Ok(())
    }
}
