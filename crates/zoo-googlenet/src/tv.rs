//! torchvision's GoogLeNet (`torchvision.models.googlenet`, Szegedy et al. 2014), built as
//! torchvision builds it for its ImageNet weights: `transform_input=True` (the input, normalised
//! with ImageNet's mean and deviation, is re-normalised to the `(x - 0.5) / 0.5` scaling the
//! original weights were trained on), no auxiliary classifiers (`aux_logits=False`: torchvision
//! drops them after loading its weights), every convolution a [`BasicConv2d`] (bias-free
//! convolution, BatchNorm with eps 0.001, ReLU), a 3x3 convolution in each Inception block's
//! third branch where the paper has a 5x5 one (torchvision's known deviation, which its weights
//! follow), max poolings with `ceil_mode=True`, dropout 0.2 before `fc`. Every tensor is named
//! as torchvision's state dict names it (`conv1.conv.weight`, `conv1.bn.running_mean`,
//! `inception3a.branch2.0.conv.weight`, `inception5b.branch4.1.bn.bias`, `fc.weight`), so its
//! weight files map one to one once their `aux1`/`aux2` tensors are left out.
//!
//! # Shapes
//! `[b, 3, 224, 224] -> [b, 64, 56, 56] (conv1, maxpool1) -> [b, 192, 28, 28] (conv2, conv3,
//! maxpool2) -> [b, 480, 14, 14] (inception3, maxpool3) -> [b, 832, 7, 7] (inception4,
//! maxpool4) -> [b, 1024, 7, 7] -> [b, 1024] -> [b, 1000]`

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::export_relu;
use zoo_nn::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, Dropout, Flatten, Layer, LayerKind, Linear,
    MaxPool2d, SequentialT, expect_nchw,
};
use zoo_nn::{ForwardContext, InputSpec};

use crate::{InceptionSpec, STAGE3, STAGE4, STAGE5};

/// torchvision's `BasicConv2d`: `conv` (no bias), `bn` (eps 0.001), ReLU.
pub struct BasicConv2d {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl BasicConv2d {
    /// `BasicConv2d(spec.in_channels, spec.out_channels, kernel_size, stride, padding)`; the
    /// spec's bias is ignored (there is none).
    pub fn new(spec: Conv2dSpec, vb: VarBuilder, context: &ForwardContext) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(spec.no_bias(), vb.pp("conv"))?,
            bn: BatchNorm2d::with_eps(spec.out_channels, 1e-3, vb.pp("bn"), context)?,
        })
    }
}

impl ModuleT for BasicConv2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward_bn_t(x, &self.bn, train, true)
    }
}

impl Layer for BasicConv2d {
    fn kind(&self) -> LayerKind {
        LayerKind::Block("BasicConv2d")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.conv.output_shape(input)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let y = self.conv.export(graph, input)?;
        export_relu(&self.bn, graph, &y)
    }

    fn num_params(&self) -> usize {
        self.conv.num_params() + self.bn.num_params()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        self.conv.macs(input)
    }
}

/// Builds a [`BasicConv2d`] of `spec` from the `VarBuilder` it is given (for
/// [`SequentialT::push_named`] and [`SequentialT::push_with`]).
fn basic_conv(
    spec: Conv2dSpec,
    context: &ForwardContext,
) -> impl FnOnce(VarBuilder) -> Result<BasicConv2d> + '_ {
    move |vb| BasicConv2d::new(spec, vb, context)
}

/// torchvision's `Inception`: `branch1` (1x1), `branch2` (1x1, 3x3), `branch3` (1x1, 3x3:
/// torchvision's deviation from the paper's 5x5), `branch4` (3x3 max pooling, stride 1, then
/// 1x1), concatenated on the channel axis; every convolution a [`BasicConv2d`].
pub struct TvInception {
    in_channels: usize,
    spec: InceptionSpec,
    branch1: BasicConv2d,
    branches: [SequentialT; 3],
}

impl TvInception {
    /// `Inception(in_channels, c1, c2.0, c2.1, c3.0, c3.1, c4)` (ch1x1, ch3x3red, ch3x3,
    /// ch5x5red, ch5x5, pool_proj).
    pub fn new(
        in_channels: usize,
        spec: InceptionSpec,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let conv = |spec| basic_conv(spec, context);
        let reduce_then_3x3 = |(reduced, out): (usize, usize), vb: VarBuilder| {
            let mut branch = SequentialT::new();
            branch.push_with(&vb, conv(Conv2dSpec::new(in_channels, reduced, 1)))?;
            branch.push_with(&vb, conv(Conv2dSpec::new(reduced, out, 3).padding(1)))?;
            Ok::<_, candle_core::Error>(branch)
        };
        let mut branch4 = SequentialT::new();
        branch4.push(MaxPool2d::new(3, 1, 1).ceil_mode());
        branch4.push_with(
            &vb.pp("branch4"),
            conv(Conv2dSpec::new(in_channels, spec.c4, 1)),
        )?;
        Ok(Self {
            in_channels,
            spec,
            branch1: conv(Conv2dSpec::new(in_channels, spec.c1, 1))(vb.pp("branch1"))?,
            branches: [
                reduce_then_3x3(spec.c2, vb.pp("branch2"))?,
                reduce_then_3x3(spec.c3, vb.pp("branch3"))?,
                branch4,
            ],
        })
    }
}

impl ModuleT for TvInception {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        let mut outputs = vec![self.branch1.forward_t(x, train)?];
        for branch in &self.branches {
            outputs.push(branch.forward_t(x, train)?);
        }
        // [b, c1 + c2 + c3 + c4, h, w]
        Tensor::cat(&outputs, 1)
    }
}

impl Layer for TvInception {
    fn kind(&self) -> LayerKind {
        LayerKind::Inception
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (b, h, w) = expect_nchw("Inception", input, self.in_channels)?;
        Ok(vec![b, self.spec.out_channels(), h, w])
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let mut outputs = vec![self.branch1.export(graph, input)?];
        for branch in &self.branches {
            outputs.push(branch.export(graph, input)?);
        }
        graph.concat(&outputs)
    }

    fn num_params(&self) -> usize {
        let branches: usize = self.branches.iter().map(Layer::num_params).sum();
        self.branch1.num_params() + branches
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let mut macs = vec![self.branch1.macs(input)?];
        for branch in &self.branches {
            macs.push(branch.macs(input)?);
        }
        zoo_nn::nn::mac_sum("Inception", input, &macs)
    }
}

/// ImageNet's per-channel mean and standard deviation, which `transform_input` undoes.
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// torchvision's `_transform_input`: channel `c` becomes `x * (std[c] / 0.5) + (mean[c] - 0.5)
/// / 0.5`, i.e. from ImageNet's normalisation to `(pixel - 0.5) / 0.5`.
struct TransformInput;

impl ModuleT for TransformInput {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        let per_channel = |values: [f64; 3]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::from_vec(values, (1, 3, 1, 1), x.device())?.to_dtype(x.dtype())
        };
        let scale = per_channel(IMAGENET_STD.map(|s| s / 0.5))?;
        let shift = per_channel(IMAGENET_MEAN.map(|m| (m - 0.5) / 0.5))?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }
}

impl Layer for TransformInput {
    fn kind(&self) -> LayerKind {
        LayerKind::Block("TransformInput")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        expect_nchw("GoogLeNet transform_input", input, 3)?;
        Ok(input.to_vec())
    }

    fn num_params(&self) -> usize {
        0
    }

    /// `x * (std / 0.5) + (mean - 0.5) / 0.5` per channel, as two broadcast nodes.
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let per_channel = |values: [f64; 3]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::from_vec(values, (1, 3, 1, 1), &candle_core::Device::Cpu)
        };
        let scale = graph.constant("scale", &per_channel(IMAGENET_STD.map(|s| s / 0.5))?)?;
        let shift = graph.constant(
            "shift",
            &per_channel(IMAGENET_MEAN.map(|m| (m - 0.5) / 0.5))?,
        )?;
        let shape = input.shape.clone();
        let y = graph.node(
            "Mul",
            "transform_input",
            vec![input.name.clone(), scale],
            vec![],
            shape,
        );
        let shape = y.shape.clone();
        Ok(graph.node("Add", "transform_input", vec![y.name, shift], vec![], shape))
    }
}

/// torchvision's GoogLeNet configuration (`GoogLeNet(num_classes, aux_logits=False,
/// transform_input, dropout=dropout)`; auxiliary classifiers are not built).
#[derive(Debug, Clone, PartialEq)]
pub struct TvGoogLeNetConfig {
    /// Number of output classes (1000 for ImageNet).
    pub num_classes: usize,
    /// The input it is built for: any size of at least 15 px works, as in torchvision (global
    /// average pooling before `fc`, ceil-mode poolings); this one decides what summaries print.
    pub input: InputSpec,
    /// Re-normalise the input as torchvision's `_transform_input` does (true for its weights;
    /// needs 3 channels).
    pub transform_input: bool,
    /// Dropout probability before `fc` (0.2).
    pub dropout: f32,
}

impl TvGoogLeNetConfig {
    /// `torchvision.models.googlenet` as built for its weights: 1000 classes, 3x224x224,
    /// `transform_input=True`, dropout 0.2.
    pub fn googlenet() -> Self {
        Self {
            num_classes: 1000,
            input: InputSpec::square(3, 224),
            transform_input: true,
            dropout: 0.2,
        }
    }

    /// The same network with dropout probability `p` (torchvision's `dropout` argument).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    /// The same network with or without torchvision's input re-normalisation.
    pub fn with_transform_input(mut self, transform_input: bool) -> Self {
        self.transform_input = transform_input;
        self
    }
}

zoo_nn::impl_input_config!(TvGoogLeNetConfig);

/// torchvision's GoogLeNet: `transform_input` (when configured), `conv1`, `maxpool1`, `conv2`,
/// `conv3`, `maxpool2`, `inception3a`, `inception3b`, `maxpool3`, `inception4a` ...
/// `inception4e`, `maxpool4`, `inception5a`, `inception5b`, `avgpool`, `flatten`
/// (torchvision's `torch.flatten` call), `dropout`, `fc`.
pub struct TvGoogLeNet {
    config: TvGoogLeNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl TvGoogLeNet {
    /// Builds the network `config` describes, its weights from `vb` under torchvision's names.
    pub fn new(config: &TvGoogLeNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("GoogLeNet", &config.input, config.num_classes)?;
        if config.transform_input && config.input.channels != 3 {
            candle_core::bail!(
                "GoogLeNet: transform_input needs 3 input channels, got input {}",
                config.input
            )
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        if config.transform_input {
            net.push_named(&vb, "transform_input", |_| Ok(TransformInput))?;
        }
        let conv = |spec| basic_conv(spec, &context);
        let stem = Conv2dSpec::new(config.input.channels, 64, 7)
            .stride(2)
            .padding(3);
        net.push_named(&vb, "conv1", conv(stem))?;
        net.push_named(&vb, "maxpool1", |_| Ok(MaxPool2d::new(3, 2, 0).ceil_mode()))?;
        net.push_named(&vb, "conv2", conv(Conv2dSpec::new(64, 64, 1)))?;
        net.push_named(&vb, "conv3", conv(Conv2dSpec::new(64, 192, 3).padding(1)))?;
        net.push_named(&vb, "maxpool2", |_| Ok(MaxPool2d::new(3, 2, 0).ceil_mode()))?;
        // [b, 192, 28, 28] at 224 px
        let channels = inception_stages(&mut net, &vb, &context)?;
        net.push_named(&vb, "avgpool", |_| Ok(AdaptiveAvgPool2d::new(1, 1)))?;
        net.push_named(&vb, "flatten", |_| Ok(Flatten))?;
        net.push_named(&vb, "dropout", |_| Dropout::new(config.dropout, &context))?;
        net.push_named(&vb, "fc", |vb| {
            Linear::new(channels, config.num_classes, vb)
        })?;
        check_fits("GoogLeNet", &net, &config.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &TvGoogLeNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(TvGoogLeNet);

/// `inception3a` ... `inception5b` with `maxpool3` (3x3, stride 2) after stage 3 and `maxpool4`
/// (2x2, stride 2) after stage 4, both in ceil mode; the output channels (1024).
fn inception_stages(
    net: &mut SequentialT,
    vb: &VarBuilder,
    context: &ForwardContext,
) -> Result<usize> {
    let mut channels = 192;
    let stages: [(&[InceptionSpec], usize, Option<MaxPool2d>); 3] = [
        (&STAGE3, 3, Some(MaxPool2d::new(3, 2, 0).ceil_mode())),
        (&STAGE4, 4, Some(MaxPool2d::new(2, 2, 0).ceil_mode())),
        (&STAGE5, 5, None),
    ];
    for (specs, stage, pool) in stages {
        for (spec, letter) in specs.iter().zip('a'..) {
            let name = format!("inception{stage}{letter}");
            net.push_named(vb, &name, |vb| {
                TvInception::new(channels, *spec, vb, context)
            })?;
            channels = spec.out_channels();
        }
        if let Some(pool) = pool {
            net.push_named(vb, &format!("maxpool{stage}"), |_| Ok(pool))?;
        }
    }
    Ok(channels)
}

/// `torchvision.models.googlenet(num_classes=num_classes, aux_logits=False,
/// transform_input=True)`: the network its ImageNet weights are for.
pub fn googlenet(num_classes: usize, vb: VarBuilder) -> Result<TvGoogLeNet> {
    TvGoogLeNet::new(
        &TvGoogLeNetConfig::googlenet().with_num_classes(num_classes),
        vb,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use zoo_nn::Model;
    use zoo_nn::summary::Summary;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, test_input, test_store};

    #[test]
    fn parameter_count_and_shapes_equal_torchvisions() -> Result<()> {
        // torchvision 0.29, 1000 classes, aux_logits=False
        // (`sum(p.numel() for p in m.parameters())`).
        let net = googlenet(1000, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        assert_eq!(net.num_params(), 6_624_904);
        // torchvision's `GoogLeNet_Weights.IMAGENET1K_V1.meta["_ops"]`: 1.498 GMACs at 224 px.
        let macs = Summary::of("googlenet", &net, &[1, 3, 224, 224])?.macs;
        assert!((macs as f64 / 1e9 - 1.498).abs() < 5e-4, "{macs}");
        let names = net.body().names();
        assert_eq!(
            names[..3],
            ["transform_input", "conv1", "maxpool1"].map(String::from)
        );
        assert_eq!(
            names[names.len() - 4..],
            ["avgpool", "flatten", "dropout", "fc"].map(String::from)
        );
        // After maxpool1 ... maxpool4; at 224 px and at 100 px, where ceil mode rounds
        // 50 -> 25 (floor: 24) and 12 -> 6 (floor: 5) up.
        for (size, sides) in [(224, [56, 28, 14, 7]), (100, [25, 12, 6, 3])] {
            let mut shape = vec![2, 3, size, size];
            let mut seen = Vec::new();
            for (name, layer) in names.iter().zip(net.body().layers()) {
                shape = layer.output_shape(&shape)?;
                if name.starts_with("maxpool") {
                    seen.push(shape[2]);
                }
            }
            assert_eq!(seen, sides, "{size} px");
            assert_eq!(shape, [2, 1000]);
        }
        Ok(())
    }

    #[test]
    fn any_input_of_15_px_or_more_runs_and_trains() -> Result<()> {
        let store = test_store(0);
        let net = googlenet(6, store.var_builder())?;
        // 15 px: ceil mode gives maxpool3 and maxpool4 one window each on 2x2 and 1x1 maps.
        for size in [15, 57] {
            let y = net.forward_t(&test_input(&[2, 3, size, size], 1)?, false)?;
            assert_eq!(y.dims(), &[2, 6], "{size} px");
        }
        assert!(net.output_shape(&[1, 3, 14, 14]).is_err());
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 40, 40])
    }

    #[test]
    fn transform_input_renormalises_each_channel() -> Result<()> {
        // A pixel of 0.5 everywhere, normalised with ImageNet's statistics, becomes 0.
        let pixel: Vec<f32> = (0..3)
            .flat_map(|c| [((0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) as f32; 4])
            .collect();
        let x = Tensor::from_vec(pixel, (1, 3, 2, 2), &Device::Cpu)?;
        let y = TransformInput.forward_t(&x, false)?;
        let worst = y.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(worst < 1e-6, "{worst}");
        let err = TvGoogLeNet::new(
            &TvGoogLeNetConfig::googlenet().with_input(InputSpec::square(1, 224)),
            VarBuilder::zeros(DType::F32, &Device::Cpu),
        );
        assert!(err.is_err());
        Ok(())
    }
}
