//! `nn.BatchNorm2d`: batch statistics and running-statistics updates in training, running
//! statistics in evaluation.

use candle_core::{Result, Tensor};
use candle_nn::{BatchNormConfig, ModuleT, VarBuilder};

use super::{Layer, expect_nchw};

/// `nn.BatchNorm2d(num_features)` with PyTorch's defaults (eps 1e-5, momentum 0.1, affine).
/// Tensors: `weight`, `bias` (trainable), `running_mean`, `running_var` (state).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    name: String,
    num_features: usize,
    inner: candle_nn::BatchNorm,
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
        let inner = candle_nn::batch_norm(num_features, config, vb)?;
        Ok(Self {
            name,
            num_features,
            inner,
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
        self.output_shape(x.dims())?;
        if train && x.dim(0)? * x.dim(2)? * x.dim(3)? < 2 {
            candle_core::bail!(
                "BatchNorm2d `{}`: training needs more than one value per channel, got input {:?}",
                self.name,
                x.dims()
            )
        }
        self.inner.forward_t(x, train)
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
}
