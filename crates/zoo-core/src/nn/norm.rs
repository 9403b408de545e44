//! `nn.BatchNorm2d`: batch statistics and running-statistics updates in training (over the
//! global batch when data-parallel ranks synchronise them), running statistics in evaluation.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{BatchNormConfig, ModuleT, VarBuilder};

use super::{Layer, expect_nchw};
use crate::distributed::Collective;
use crate::distributed::sync_norm::{active, all_reduce_sum_differentiable};
use zoo_kernels::batch_norm::{batch_norm_eval, batch_norm_train};
use zoo_kernels::cpu_f32;

/// `nn.BatchNorm2d(num_features)` with PyTorch's defaults (eps 1e-5, momentum 0.1, affine).
/// Tensors: `weight`, `bias` (trainable), `running_mean`, `running_var` (state).
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
}

impl BatchNorm2d {
    pub fn new(num_features: usize, vb: VarBuilder) -> Result<Self> {
        let config = BatchNormConfig {
            eps: 1e-5,
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
    fn forward_fused(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        if train && let Some(c) = active() {
            return self.forward_synchronised(x, relu, &c);
        }
        if train && x.dim(0)? * x.dim(2)? * x.dim(3)? < 2 {
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
                &self.weight,
                &self.bias,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                self.eps,
                relu,
            );
        }
        let (y, stats) = batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let count = (x.elem_count() / self.num_features) as f64;
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

    /// Training over the global batch of a data-parallel group: the mean, then the variance
    /// about it (two passes, as the one-process kernel), each summed over ranks by a
    /// differentiable all-reduce. Composed of candle's ops, so the gradient follows.
    fn forward_synchronised(
        &self,
        x: &Tensor,
        relu: bool,
        c: &Arc<dyn Collective>,
    ) -> Result<Tensor> {
        let (n, channels, h, w) = x.dims4()?;
        let x = x.to_dtype(DType::F32)?;
        let device = x.device();
        let local = Tensor::new(&[(n * h * w) as f32], device)?;
        let sum = x.sum((0, 2, 3))?;
        let totals = all_reduce_sum_differentiable(c, &Tensor::cat(&[&sum, &local], 0)?)?;
        let count = totals.get(channels)?.to_scalar::<f32>()? as f64;
        if count < 2.0 {
            candle_core::bail!(
                "BatchNorm2d `{}`: training needs more than one value per channel over all \
                 ranks, got {count}",
                self.name
            )
        }
        let per_channel = |t: &Tensor| t.reshape((1, channels, 1, 1));
        let mean = (totals.narrow(0, 0, channels)? / count)?;
        let centred = x.broadcast_sub(&per_channel(&mean)?)?;
        let squares = centred.sqr()?.sum((0, 2, 3))?;
        let var = (all_reduce_sum_differentiable(c, &squares)? / count)?;
        let scale = ((&var + self.eps)?.sqrt()?.recip()? * &self.weight)?;
        let y = centred
            .broadcast_mul(&per_channel(&scale)?)?
            .broadcast_add(&per_channel(&self.bias)?)?;
        self.update_running(&mean.detach(), &var.detach(), count)?;
        if relu { y.relu() } else { Ok(y) }
    }
}

impl Layer for BatchNorm2d {
    fn kind(&self) -> &'static str {
        "BatchNorm2d"
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
}
