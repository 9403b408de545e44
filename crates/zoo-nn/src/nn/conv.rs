//! Convolution and linear layers with PyTorch's initialisation hints and named shape errors.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, Module, ModuleT, VarBuilder};

use super::folded::FoldedWeights;
use super::{BatchNorm2d, Layer, LayerKind, count, expect_nchw};
use crate::export::{Attribute, Graph, Value, pads, pair};
use crate::frozen::frozen_generation;
use crate::grad::{grad_enabled, tracked};
use crate::init::{pytorch_bias_hint, pytorch_weight_hint};
use zoo_kernels::conv::{ConvGeometry, PreparedWeights, conv2d_prepared};
use zoo_kernels::cpu_f32;

/// The arguments of `nn.Conv2d(in, out, kernel_size, stride, padding, bias)` (square kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Whether it has a bias (PyTorch's default; torchvision's convolutions before a BatchNorm
    /// have none).
    pub bias: bool,
}

impl Conv2dSpec {
    /// Stride 1, no padding.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            bias: true,
        }
    }

    /// `bias=False`.
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }
}

/// `nn.Conv2d`. Weights `weight` `(out, in, k, k)` and, unless the spec says `no_bias`, `bias`
/// `(out,)`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    name: String,
    spec: Conv2dSpec,
    inner: candle_nn::Conv2d,
    /// The bias zoo's kernel adds: the layer's, or zeros (not a parameter) without one.
    kernel_bias: Tensor,
    /// What the kernel derives from the weights, kept within a frozen-weights scope
    /// (`crate::frozen`).
    prepared: Arc<PreparedWeights>,
    /// The weights with the next BatchNorm folded in ([`Conv2d::forward_bn_t`]), kept the same
    /// way.
    folded: Arc<FoldedWeights>,
}

impl Conv2d {
    pub fn new(spec: Conv2dSpec, vb: VarBuilder) -> Result<Self> {
        if spec.kernel == 0 || spec.stride == 0 || spec.in_channels == 0 || spec.out_channels == 0 {
            candle_core::bail!("Conv2d `{}`: invalid configuration {spec:?}", vb.prefix())
        }
        let k = spec.kernel;
        let weight = vb.get_with_hints(
            (spec.out_channels, spec.in_channels, k, k),
            "weight",
            pytorch_weight_hint(),
        )?;
        let bias = match spec.bias {
            true => Some(vb.get_with_hints(
                spec.out_channels,
                "bias",
                pytorch_bias_hint(spec.in_channels * k * k),
            )?),
            false => None,
        };
        let kernel_bias = match &bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(spec.out_channels, weight.dtype(), weight.device())?,
        };
        let config = Conv2dConfig {
            padding: spec.padding,
            stride: spec.stride,
            dilation: 1,
            groups: 1,
            cudnn_fwd_algo: None,
        };
        Ok(Self {
            name: vb.prefix(),
            spec,
            inner: candle_nn::Conv2d::new(weight, bias, config),
            kernel_bias,
            prepared: Arc::default(),
            folded: Arc::default(),
        })
    }

    pub fn spec(&self) -> &Conv2dSpec {
        &self.spec
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    fn out_len(&self, len: usize, axis: &str, input: &[usize]) -> Result<usize> {
        let padded = len + 2 * self.spec.padding;
        if padded < self.spec.kernel {
            candle_core::bail!(
                "Conv2d `{}` ({}->{}, kernel {}): input {axis} {len} (padded {padded}) is smaller \
                 than the kernel; input shape {input:?} is too small for this network",
                self.name,
                self.spec.in_channels,
                self.spec.out_channels,
                self.spec.kernel
            )
        }
        Ok((padded - self.spec.kernel) / self.spec.stride + 1)
    }
}

impl Conv2d {
    /// The convolution, plus bias, plus ReLU when `relu`: zoo's fused GEMM kernel for f32 on
    /// the CPU, candle's (cuDNN) convolution elsewhere.
    fn forward_fused(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        if cpu_f32(x) {
            let (weight, bias) = (tracked(self.inner.weight()), tracked(&self.kernel_bias));
            // Only without weight gradients: a training step inside a frozen scope (against its
            // contract) still sees the weights it updates.
            let frozen = frozen_generation().filter(|_| !grad_enabled());
            let prepared = frozen.map(|generation| (&self.prepared, generation));
            return conv2d_prepared(x, &weight, &bias, self.geometry(), relu, prepared);
        }
        zoo_kernels::activation::relu_composed_if(self.inner.forward(x)?, relu)
    }

    fn geometry(&self) -> ConvGeometry {
        ConvGeometry {
            stride: self.spec.stride,
            padding: self.spec.padding,
        }
    }

    /// `bn(self(x))`, then a ReLU when `relu`. In a frozen-weights scope (`crate::frozen`: f32
    /// on the CPU, no weight gradients) with `bn` on its running statistics, one convolution
    /// whose weights and bias have the BatchNorm folded in, folded once per scope as the
    /// runtimes fold it at load (one pass over the output and one tensor fewer); elsewhere the
    /// two layers one after the other.
    pub fn forward_bn_t(
        &self,
        x: &Tensor,
        bn: &BatchNorm2d,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        let frozen = frozen_generation()
            .filter(|_| !grad_enabled() && cpu_f32(x) && bn.uses_running_statistics(train));
        let Some(generation) = frozen else {
            return bn.forward_fused(&self.forward_t(x, train)?, train, relu);
        };
        self.output_shape(x.dims())?;
        let (weight, bias) = self.folded.get(generation, || {
            bn.folded_into(self.inner.weight(), &self.kernel_bias)
        })?;
        let prepared = Some((self.folded.prepared(), generation));
        conv2d_prepared(x, &weight, &bias, self.geometry(), relu, prepared)
    }
}

impl ModuleT for Conv2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward_fused(x, false)
    }
}

impl Layer for Conv2d {
    fn kind(&self) -> LayerKind {
        LayerKind::Conv2d
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let what = format!("Conv2d `{}`", self.name);
        let (b, h, w) = expect_nchw(&what, input, self.spec.in_channels)?;
        let oh = self.out_len(h, "height", input)?;
        let ow = self.out_len(w, "width", input)?;
        Ok(vec![b, self.spec.out_channels, oh, ow])
    }

    fn num_params(&self) -> usize {
        count(self.inner.weight()) + self.inner.bias().map_or(0, count)
    }

    fn forward_relu_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward_fused(x, true)
    }

    fn as_conv2d(&self) -> Option<&Conv2d> {
        Some(self)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let weight = graph.weight(&format!("{}.weight", self.name), self.inner.weight())?;
        let mut inputs = vec![input.name.clone(), weight];
        if let Some(bias) = self.inner.bias() {
            inputs.push(graph.weight(&format!("{}.bias", self.name), bias)?);
        }
        let s = &self.spec;
        let attributes = vec![
            ("kernel_shape", pair(s.kernel)),
            ("strides", pair(s.stride)),
            ("pads", pads(s.padding)),
        ];
        Ok(graph.node("Conv", &self.name, inputs, attributes, shape))
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let mut factors = self.output_shape(input)?;
        factors.extend([self.spec.in_channels, self.spec.kernel, self.spec.kernel]);
        super::mac_product("Conv2d", input, &factors)
    }
}

/// `nn.Linear(in, out)`. Weights `weight` `(out, in)` and `bias` `(out,)`.
#[derive(Debug, Clone)]
pub struct Linear {
    name: String,
    in_features: usize,
    out_features: usize,
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            candle_core::bail!(
                "Linear `{}`: invalid size {in_features} -> {out_features}",
                vb.prefix()
            )
        }
        let weight =
            vb.get_with_hints((out_features, in_features), "weight", pytorch_weight_hint())?;
        let bias = vb.get_with_hints(out_features, "bias", pytorch_bias_hint(in_features))?;
        Ok(Self {
            name: vb.prefix(),
            in_features,
            out_features,
            inner: candle_nn::Linear::new(weight, Some(bias)),
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
}

impl Linear {
    /// `x W^T + b`, then ReLU when `relu`: zoo's GEMM kernel for f32 on the CPU (the weight's
    /// gradient computed in its own layout), candle's layer elsewhere.
    fn forward_fused(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        if let (true, Some(bias)) = (cpu_f32(x), self.inner.bias()) {
            let (weight, bias) = (tracked(self.inner.weight()), tracked(bias));
            return zoo_kernels::linear::linear(x, &weight, &bias, relu);
        }
        zoo_kernels::activation::relu_composed_if(self.inner.forward(x)?, relu)
    }
}

impl ModuleT for Linear {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward_fused(x, false)
    }
}

impl Layer for Linear {
    fn kind(&self) -> LayerKind {
        LayerKind::Linear
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let weight = graph.weight(&format!("{}.weight", self.name), self.inner.weight())?;
        let mut inputs = vec![input.name.clone(), weight];
        if let Some(bias) = self.inner.bias() {
            inputs.push(graph.weight(&format!("{}.bias", self.name), bias)?);
        }
        let attributes = vec![("transB", Attribute::Int(1))];
        Ok(graph.node("Gemm", &self.name, inputs, attributes, shape))
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [b, f] if *f == self.in_features => Ok(vec![*b, self.out_features]),
            _ => candle_core::bail!(
                "Linear `{}`: expected input (batch, {}), got {input:?}; the layers before it \
                 produce a different size, usually because the configured input size differs \
                 from the image size",
                self.name,
                self.in_features
            ),
        }
    }

    fn num_params(&self) -> usize {
        count(self.inner.weight()) + self.inner.bias().map_or(0, count)
    }

    fn forward_relu_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward_fused(x, true)
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        self.output_shape(input)?;
        super::mac_product(
            "Linear",
            input,
            &[input[0], self.in_features, self.out_features],
        )
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{ModuleT, VarBuilder, VarMap};

    use super::{Conv2d, Conv2dSpec};
    use crate::ForwardContext;
    use crate::frozen::frozen_weights;
    use crate::grad::no_grad;
    use crate::nn::{BatchNorm2d, Layer};
    use crate::testing::{assert_close, test_input};

    /// A 3x3 convolution with padding 1 on a 1x1 map: only the centre tap sees the input, so the
    /// kernel derives the used taps' matrix (the weights the frozen scope keeps).
    fn centre_tap_conv() -> (Conv2d, VarMap) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut spec = Conv2dSpec::new(6, 5, 3);
        spec.padding = 1;
        (Conv2d::new(spec, vb.pp("c")).unwrap(), varmap)
    }

    fn set_weight(varmap: &VarMap, seed: u64) {
        let data = varmap.data().lock().unwrap();
        let weight = test_input(&[5, 6, 3, 3], seed).unwrap();
        data["c.weight"].set(&weight).unwrap();
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_frozen_scope_reuses_the_derived_weights_and_the_next_scope_sees_new_ones() {
        let (conv, varmap) = centre_tap_conv();
        let x = test_input(&[2, 6, 1, 1], 7).unwrap();
        let tracked = || values(&conv.forward_t(&x, false).unwrap());
        let forward = || no_grad(tracked);
        set_weight(&varmap, 1);
        let first = forward();
        let (inside, kept, with_grad) = frozen_weights(|| {
            let inside = forward();
            // Changing a weight inside the scope breaks its contract; that the old output comes
            // back shows the derived weights were kept, not derived again.
            set_weight(&varmap, 2);
            // With weight gradients on (a training step) nothing kept is used.
            (inside, forward(), tracked())
        });
        assert_eq!(inside, first);
        assert_eq!(kept, first);
        let second = forward();
        assert_ne!(second, first, "new weights change the output");
        assert_eq!(
            with_grad, second,
            "a forward with weight gradients sees the new weights"
        );
        assert_eq!(frozen_weights(forward), second, "a new scope derives anew");
    }

    /// A 3x3 convolution (with a bias or without) and a BatchNorm whose weights and running
    /// statistics are away from their initial 1 and 0.
    fn conv_and_batch_norm(bias: bool) -> (Conv2d, BatchNorm2d) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut spec = Conv2dSpec::new(3, 4, 3).padding(1);
        spec.bias = bias;
        let conv = Conv2d::new(spec, vb.pp("c")).unwrap();
        let bn = BatchNorm2d::new(4, vb.pp("bn"), &ForwardContext::default()).unwrap();
        let data = varmap.data().lock().unwrap();
        for (seed, name) in
            (20..).zip(["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"])
        {
            let mut v = test_input(&[4], seed).unwrap();
            if name == "bn.running_var" {
                v = v.abs().unwrap().affine(1.0, 0.5).unwrap();
            }
            data[name].set(&v).unwrap();
        }
        (conv, bn)
    }

    #[test]
    fn a_batch_norm_folded_in_a_frozen_scope_equals_the_two_layers() {
        for bias in [true, false] {
            let (conv, bn) = conv_and_batch_norm(bias);
            let x = test_input(&[2, 3, 5, 5], 3).unwrap();
            for relu in [false, true] {
                let what = format!("bias {bias}, relu {relu}");
                let two_layers = |train: bool| {
                    let y = conv.forward_t(&x, train).unwrap();
                    match relu {
                        true => bn.forward_relu_t(&y, train).unwrap(),
                        false => bn.forward_t(&y, train).unwrap(),
                    }
                };
                let fused = |train: bool| {
                    no_grad(|| frozen_weights(|| conv.forward_bn_t(&x, &bn, train, relu).unwrap()))
                };
                let want = two_layers(false);
                assert_close(&format!("{what}: folded"), &fused(false), &want, 1e-5);
                // Outside a frozen scope the two layers run as they are.
                let outside = conv.forward_bn_t(&x, &bn, false, relu).unwrap();
                assert_close(&format!("{what}: outside"), &outside, &want, 0.0);
                // Training normalises by the batch (and moves the running statistics, which the
                // next scope's folding must see): never folded.
                let train = fused(true);
                assert_close(&format!("{what}: train"), &train, &two_layers(true), 1e-6);
                let moved = two_layers(false);
                assert!(crate::testing::max_abs_diff(&moved, &want).unwrap() > 1e-3);
                assert_close(&format!("{what}: next scope"), &fused(false), &moved, 1e-5);
            }
        }
    }
}
