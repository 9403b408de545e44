//! Pooling layers: `MaxPool2d` and `AvgPool2d` with padding, `AdaptiveAvgPool2d`.

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;

use super::{Layer, LayerKind};
use zoo_kernels::pool::{Pool2dParams, adaptive_avg_pool2d, avg_pool2d, max_pool2d};

fn pooled_shape(kind: &str, p: &Pool2dParams, input: &[usize]) -> Result<Vec<usize>> {
    let [b, c, h, w] = input else {
        candle_core::bail!(
            "{kind}: expected a (batch, channels, height, width) input, got {input:?}"
        )
    };
    let oh = p
        .out_len(*h)
        .map_err(|e| candle_core::Error::Msg(format!("{kind} (input {input:?}): {e}")))?;
    let ow = p
        .out_len(*w)
        .map_err(|e| candle_core::Error::Msg(format!("{kind} (input {input:?}): {e}")))?;
    Ok(vec![*b, *c, oh, ow])
}

/// `nn.MaxPool2d(kernel_size, stride, padding)`.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub params: Pool2dParams,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            params: Pool2dParams::new(kernel, stride, padding),
        }
    }
}

impl ModuleT for MaxPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        max_pool2d(x, self.params)
    }
}

impl Layer for MaxPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::MaxPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        pooled_shape("MaxPool2d", &self.params, input)
    }
    fn num_params(&self) -> usize {
        0
    }
}

/// `nn.AvgPool2d(kernel_size, stride, padding)` (padding counted in the divisor).
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    pub params: Pool2dParams,
}

impl AvgPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            params: Pool2dParams::new(kernel, stride, padding),
        }
    }
}

impl ModuleT for AvgPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        avg_pool2d(x, self.params)
    }
}

impl Layer for AvgPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::AvgPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        pooled_shape("AvgPool2d", &self.params, input)
    }
    fn num_params(&self) -> usize {
        0
    }
}

/// `nn.AdaptiveAvgPool2d((out_h, out_w))`.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveAvgPool2d {
    pub out_h: usize,
    pub out_w: usize,
}

impl AdaptiveAvgPool2d {
    pub fn new(out_h: usize, out_w: usize) -> Self {
        Self { out_h, out_w }
    }
}

impl ModuleT for AdaptiveAvgPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        adaptive_avg_pool2d(x, self.out_h, self.out_w)
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::AdaptiveAvgPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [b, c, h, w] if *h > 0 && *w > 0 => Ok(vec![*b, *c, self.out_h, self.out_w]),
            _ => candle_core::bail!(
                "AdaptiveAvgPool2d: expected a non-empty (batch, channels, height, width) input, \
                 got {input:?}"
            ),
        }
    }
    fn num_params(&self) -> usize {
        0
    }
}
