//! Layers candle lacks, and the [`Layer`] trait that lets zoo summarise any network without
//! running it.
//!
//! Every layer is a struct implementing candle's `ModuleT` (the train flag always passes
//! through) and [`Layer`], which derives output shapes, parameter counts and
//! multiply-accumulates analytically. Layers check their input shape first, so a bad input
//! is an error naming the layer and what it expected instead of a failure deep in candle.

mod activation;
mod conv;
mod folded;
mod kind;
mod norm;
mod pool;
mod sequential;

pub use activation::{Dropout, Flatten, ReLU, add_relu, relu};
pub use conv::{Conv2d, Conv2dSpec, Linear};
pub use kind::LayerKind;
pub use norm::BatchNorm2d;
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d};
pub use sequential::SequentialT;

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;

use crate::context::ForwardContext;
use crate::export::{Graph, Value};

/// A MAC count `factors[0] * factors[1] * ...` for `layer` on `input`, or an error saying it
/// exceeds u64 (a `zoo summary` of an absurd input must not wrap around silently).
pub fn mac_product(layer: &str, input: &[usize], factors: &[usize]) -> Result<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .ok_or_else(|| mac_overflow(layer, input))
}

/// The sum of MAC counts for `layer` on `input`, checked like [`mac_product`].
pub fn mac_sum(layer: &str, input: &[usize], parts: &[u64]) -> Result<u64> {
    parts
        .iter()
        .try_fold(0u64, |acc, &p| acc.checked_add(p))
        .ok_or_else(|| mac_overflow(layer, input))
}

fn mac_overflow(layer: &str, input: &[usize]) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{layer} on input {input:?}: more multiply-accumulates than a 64-bit count holds"
    ))
}

/// A network layer zoo can summarise: shapes, parameters and MACs without a forward pass.
pub trait Layer: ModuleT + Send + Sync {
    /// What the layer is: its kind prints as the PyTorch class name (`Conv2d`, `Sequential`,
    /// `DenseBlock`, ...).
    fn kind(&self) -> LayerKind;

    /// The output shape for an input shape (batch first); an error when the input does not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;

    /// Trainable parameters (BatchNorm running statistics excluded).
    fn num_params(&self) -> usize;

    /// Multiply-accumulates of the convolutions and linear layers for the whole input shape.
    fn macs(&self, input: &[usize]) -> Result<u64> {
        let _ = input;
        Ok(0)
    }

    /// `relu(self.forward_t(x, train))`, as one fused kernel where the layer has one
    /// (convolution, BatchNorm): [`SequentialT`] calls it for a layer followed by a [`ReLU`].
    fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        relu(&self.forward_t(x, train)?)
    }

    /// Whether this layer is a ReLU, which [`SequentialT`] fuses into the layer before it.
    fn is_relu(&self) -> bool {
        false
    }

    /// This layer as a convolution, which [`SequentialT`] folds a BatchNorm after it into.
    fn as_conv2d(&self) -> Option<&Conv2d> {
        None
    }

    /// This layer as a BatchNorm, which [`SequentialT`] folds into a convolution before it.
    fn as_batch_norm(&self) -> Option<&BatchNorm2d> {
        None
    }

    /// Appends the layer's evaluation-mode computation on `input` to `graph` in ONNX's
    /// operators and returns its output; an error naming the layer where ONNX cannot express
    /// it.
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let _ = (graph, input);
        candle_core::bail!("{}: no ONNX export for this layer", self.kind().name())
    }
}

/// `layer` then a ReLU, exported (what [`Layer::forward_relu_t`] computes).
pub fn export_relu(layer: &dyn Layer, graph: &mut Graph, x: &Value) -> Result<Value> {
    let y = layer.export(graph, x)?;
    Ok(graph.relu(&y))
}

/// Elements in a tensor's shape.
pub(crate) fn count(t: &Tensor) -> usize {
    t.elem_count()
}

/// Checks a 4-d (batch, channels, height, width) input with the expected channel count.
pub fn expect_nchw(layer: &str, input: &[usize], channels: usize) -> Result<(usize, usize, usize)> {
    match input {
        [b, c, h, w] if *c == channels => Ok((*b, *h, *w)),
        [_, c, _, _] => candle_core::bail!(
            "{layer}: expected {channels} input channels, got {c} (input shape {input:?})"
        ),
        _ => candle_core::bail!(
            "{layer}: expected a (batch, {channels}, height, width) input, got shape {input:?}"
        ),
    }
}

/// Appends `Conv2d(spec)` and `ReLU` to `seq`, the pair most of these networks repeat.
pub fn push_conv_relu(
    seq: &mut SequentialT,
    vb: &candle_nn::VarBuilder,
    spec: Conv2dSpec,
) -> Result<()> {
    seq.push_with(vb, |vb| Conv2d::new(spec, vb))?;
    seq.push(ReLU);
    Ok(())
}

/// The stem ResNet, DenseNet (with BatchNorm) and GoogLeNet (without) share:
/// `Conv2d(in, out, 7, stride 2, padding 3)`, `BatchNorm2d(out)`, `ReLU`, `MaxPool2d(3, 2, 1)`.
///
/// # Shapes
/// `[b, in, h, w] -> [b, out, h / 4, w / 4]` (rounded up)
pub fn conv7_stem(
    in_channels: usize,
    out_channels: usize,
    batch_norm: bool,
    vb: candle_nn::VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut stem = SequentialT::new();
    let spec = Conv2dSpec::new(in_channels, out_channels, 7)
        .stride(2)
        .padding(3);
    stem.push_with(&vb, |vb| Conv2d::new(spec, vb))?;
    if batch_norm {
        stem.push_with(&vb, |vb| BatchNorm2d::new(out_channels, vb, context))?;
    }
    stem.push(ReLU);
    stem.push(MaxPool2d::new(3, 2, 1));
    Ok(stem)
}

/// The widths and dropout of the classifier AlexNet and VGG share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutClassifier {
    /// Width of the two hidden linear layers.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
    /// Dropout probability after each hidden layer.
    pub dropout: f32,
}

impl DropoutClassifier {
    /// `hidden` wide, `classes` outputs, dropout `dropout`.
    pub const fn new(hidden: usize, classes: usize, dropout: f32) -> Self {
        Self {
            hidden,
            classes,
            dropout,
        }
    }
}

/// The classifier AlexNet and VGG share: `Linear(features, hidden)`, `ReLU`, `Dropout(p)`,
/// `Linear(hidden, hidden)`, `ReLU`, `Dropout(p)`, `Linear(hidden, classes)`, appended to `seq`;
/// the dropouts draw from `context`.
pub fn push_dropout_classifier(
    seq: &mut SequentialT,
    vb: &candle_nn::VarBuilder,
    context: &ForwardContext,
    features: usize,
    head: DropoutClassifier,
) -> Result<()> {
    let DropoutClassifier {
        hidden,
        classes,
        dropout,
    } = head;
    seq.push_with(vb, |vb| Linear::new(features, hidden, vb))?;
    seq.push(ReLU);
    seq.push(Dropout::new(dropout, context)?);
    seq.push_with(vb, |vb| Linear::new(hidden, hidden, vb))?;
    seq.push(ReLU);
    seq.push(Dropout::new(dropout, context)?);
    seq.push_with(vb, |vb| Linear::new(hidden, classes, vb))?;
    Ok(())
}
