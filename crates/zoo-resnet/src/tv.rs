//! torchvision's ResNets (`torchvision.models.resnet18` ... `resnet152`, He et al. 2015 with
//! the stride on the 3x3 convolution of the bottleneck, "ResNet v1.5"), built as torchvision
//! builds them for its ImageNet weights: convolutions without bias, BatchNorm after each, a
//! 7x7 stem, four stages of basic or bottleneck blocks, global average pooling and one linear
//! layer. Every tensor is named as torchvision's state dict names it (`conv1.weight`,
//! `layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `fc.bias`), so its weight files map
//! one to one.
//!
//! # Shapes (ResNet-50)
//! `[b, 3, 224, 224] -> [b, 64, 56, 56] -> [b, 256, 56, 56] -> [b, 512, 28, 28]
//! -> [b, 1024, 14, 14] -> [b, 2048, 7, 7] -> [b, 2048] -> [b, 1000]`

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, Flatten, Layer, LayerKind, Linear,
    MaxPool2d, ReLU, SequentialT, add_relu,
};
use zoo_nn::{ForwardContext, InputSpec};

/// Which block a torchvision ResNet stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TvBlockKind {
    /// Two 3x3 convolutions (ResNet-18, -34); expansion 1.
    Basic,
    /// 1x1, 3x3 (strided), 1x1 to four times the width (ResNet-50, -101, -152).
    Bottleneck,
}

impl TvBlockKind {
    /// Output channels per unit of a stage's width.
    pub const fn expansion(&self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// A torchvision ResNet's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TvResNetConfig {
    /// The block every stage stacks.
    pub block: TvBlockKind,
    /// Blocks per stage (`layers` of torchvision's `ResNet`).
    pub layers: [usize; 4],
    /// Number of output classes (1000 for ImageNet).
    pub num_classes: usize,
    /// The input it is built for: any size works (global average pooling before `fc`); this
    /// one decides what summaries print.
    pub input: InputSpec,
}

impl TvResNetConfig {
    fn new(block: TvBlockKind, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            num_classes: 1000,
            input: InputSpec::square(3, 224),
        }
    }

    /// `torchvision.models.resnet18`: basic blocks `[2, 2, 2, 2]`.
    pub fn resnet18() -> Self {
        Self::new(TvBlockKind::Basic, [2, 2, 2, 2])
    }

    /// `torchvision.models.resnet34`: basic blocks `[3, 4, 6, 3]`.
    pub fn resnet34() -> Self {
        Self::new(TvBlockKind::Basic, [3, 4, 6, 3])
    }

    /// `torchvision.models.resnet50`: bottlenecks `[3, 4, 6, 3]`.
    pub fn resnet50() -> Self {
        Self::new(TvBlockKind::Bottleneck, [3, 4, 6, 3])
    }

    /// `torchvision.models.resnet101`: bottlenecks `[3, 4, 23, 3]`.
    pub fn resnet101() -> Self {
        Self::new(TvBlockKind::Bottleneck, [3, 4, 23, 3])
    }

    /// `torchvision.models.resnet152`: bottlenecks `[3, 8, 36, 3]`.
    pub fn resnet152() -> Self {
        Self::new(TvBlockKind::Bottleneck, [3, 8, 36, 3])
    }
}

zoo_nn::impl_input_config!(TvResNetConfig);

/// A convolution (no bias) and its BatchNorm: `convN` + `bnN`, or `downsample.0` + `.1`.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        spec: Conv2dSpec,
        (vb_conv, vb_bn): (VarBuilder, VarBuilder),
        context: &ForwardContext,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(spec.no_bias(), vb_conv)?,
            bn: BatchNorm2d::new(spec.out_channels, vb_bn, context)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        self.conv.forward_bn_t(x, &self.bn, train, relu)
    }

    fn num_params(&self) -> usize {
        self.conv.num_params() + self.bn.num_params()
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let y = self.conv.export(graph, input)?;
        self.bn.export(graph, &y)
    }
}

/// torchvision's `BasicBlock` or `Bottleneck`: `conv1`/`bn1` ... and, where the shape changes,
/// `downsample` (a strided 1x1 convolution and its BatchNorm) on the shortcut.
pub struct TvBlock {
    kind: TvBlockKind,
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl TvBlock {
    /// A block from `inplanes` channels at stage width `planes`, its first convolution
    /// strided by `stride` (the 3x3 one in a bottleneck).
    pub fn new(
        kind: TvBlockKind,
        (inplanes, planes): (usize, usize),
        stride: usize,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let out = planes * kind.expansion();
        let specs = match kind {
            TvBlockKind::Basic => vec![
                Conv2dSpec::new(inplanes, planes, 3)
                    .stride(stride)
                    .padding(1),
                Conv2dSpec::new(planes, planes, 3).padding(1),
            ],
            TvBlockKind::Bottleneck => vec![
                Conv2dSpec::new(inplanes, planes, 1),
                Conv2dSpec::new(planes, planes, 3).stride(stride).padding(1),
                Conv2dSpec::new(planes, out, 1),
            ],
        };
        let mut convs = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let vbs = (
                vb.pp(format!("conv{}", i + 1)),
                vb.pp(format!("bn{}", i + 1)),
            );
            convs.push(ConvBn::new(spec, vbs, context)?);
        }
        let downsample = (stride != 1 || inplanes != out)
            .then(|| {
                let d = vb.pp("downsample");
                let spec = Conv2dSpec::new(inplanes, out, 1).stride(stride);
                ConvBn::new(spec, (d.pp(0), d.pp(1)), context)
            })
            .transpose()?;
        Ok(Self {
            kind,
            convs,
            downsample,
        })
    }
}

impl ModuleT for TvBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut y = x.clone();
        for (i, cb) in self.convs.iter().enumerate() {
            // conv, BatchNorm, ReLU (fused); the last one's ReLU comes after the shortcut.
            y = cb.forward(&y, train, i < last)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train, false)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}

impl Layer for TvBlock {
    fn kind(&self) -> LayerKind {
        match self.kind {
            TvBlockKind::Basic => LayerKind::Block("BasicBlock"),
            TvBlockKind::Bottleneck => LayerKind::Block("Bottleneck"),
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let mut shape = input.to_vec();
        for cb in &self.convs {
            shape = cb.conv.output_shape(&shape)?;
        }
        Ok(shape)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let last = self.convs.len() - 1;
        let mut y = input.clone();
        for (i, cb) in self.convs.iter().enumerate() {
            y = cb.export(graph, &y)?;
            if i < last {
                y = graph.relu(&y);
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.export(graph, input)?,
            None => input.clone(),
        };
        let sum = graph.add(&y, &shortcut)?;
        Ok(graph.relu(&sum))
    }

    fn num_params(&self) -> usize {
        let shortcut = self.downsample.as_ref().map_or(0, ConvBn::num_params);
        self.convs.iter().map(ConvBn::num_params).sum::<usize>() + shortcut
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let mut shape = input.to_vec();
        let mut total = 0;
        for cb in &self.convs {
            total = zoo_nn::nn::mac_sum("TvBlock", input, &[total, cb.conv.macs(&shape)?])?;
            shape = cb.conv.output_shape(&shape)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.conv.macs(input)?,
            None => 0,
        };
        zoo_nn::nn::mac_sum("TvBlock", input, &[total, shortcut])
    }
}

/// A torchvision ResNet: `conv1`, `bn1`, `relu`, `maxpool`, `layer1`..`layer4`, `avgpool`,
/// `flatten` (torchvision's `torch.flatten` call), `fc`.
pub struct TvResNet {
    config: TvResNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl TvResNet {
    /// Builds the network `config` describes, its weights from `vb` under torchvision's names.
    pub fn new(config: &TvResNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("ResNet", &config.input, config.num_classes)?;
        let c = config;
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        let stem = Conv2dSpec::new(c.input.channels, 64, 7)
            .stride(2)
            .padding(3);
        net.push_named(&vb, "conv1", |vb| Conv2d::new(stem.no_bias(), vb))?;
        net.push_named(&vb, "bn1", |vb| BatchNorm2d::new(64, vb, &context))?;
        net.push_named(&vb, "relu", |_| Ok(ReLU))?;
        net.push_named(&vb, "maxpool", |_| Ok(MaxPool2d::new(3, 2, 1)))?;
        let mut inplanes = 64;
        for (i, &blocks) in c.layers.iter().enumerate() {
            let planes = 64 << i;
            let stride = if i == 0 { 1 } else { 2 };
            let stage = |vb: VarBuilder| {
                tv_stage(c.block, (inplanes, planes), blocks, stride, vb, &context)
            };
            net.push_named(&vb, &format!("layer{}", i + 1), stage)?;
            inplanes = planes * c.block.expansion();
        }
        net.push_named(&vb, "avgpool", |_| Ok(AdaptiveAvgPool2d::new(1, 1)))?;
        net.push_named(&vb, "flatten", |_| Ok(Flatten))?;
        net.push_named(&vb, "fc", |vb| Linear::new(inplanes, c.num_classes, vb))?;
        check_fits("ResNet", &net, &c.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &TvResNetConfig {
        &self.config
    }
}

/// A stage (`layerN`): `blocks` blocks, the first from `inplanes` channels with `stride`.
fn tv_stage(
    kind: TvBlockKind,
    (inplanes, planes): (usize, usize),
    blocks: usize,
    stride: usize,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    if blocks == 0 {
        candle_core::bail!("ResNet `{}`: a stage needs at least one block", vb.prefix())
    }
    let mut stage = SequentialT::new();
    stage.push_with(&vb, |vb| {
        TvBlock::new(kind, (inplanes, planes), stride, vb, context)
    })?;
    let out = planes * kind.expansion();
    for _ in 1..blocks {
        stage.push_with(&vb, |vb| TvBlock::new(kind, (out, planes), 1, vb, context))?;
    }
    Ok(stage)
}

zoo_nn::impl_model!(TvResNet);

/// `torchvision.models.resnet18(num_classes=num_classes)`.
pub fn resnet18(num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    TvResNet::new(
        &TvResNetConfig::resnet18().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.resnet34(num_classes=num_classes)`.
pub fn resnet34(num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    TvResNet::new(
        &TvResNetConfig::resnet34().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.resnet50(num_classes=num_classes)`.
pub fn resnet50(num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    TvResNet::new(
        &TvResNetConfig::resnet50().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.resnet101(num_classes=num_classes)`.
pub fn resnet101(num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    TvResNet::new(
        &TvResNetConfig::resnet101().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.resnet152(num_classes=num_classes)`.
pub fn resnet152(num_classes: usize, vb: VarBuilder) -> Result<TvResNet> {
    TvResNet::new(
        &TvResNetConfig::resnet152().with_num_classes(num_classes),
        vb,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use zoo_nn::Model;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, test_input, test_store};

    #[test]
    fn parameter_counts_equal_torchvisions() -> Result<()> {
        // torchvision 0.2x, 1000 classes (`sum(p.numel() for p in m.parameters())`).
        for (config, params) in [
            (TvResNetConfig::resnet18(), 11_689_512),
            (TvResNetConfig::resnet34(), 21_797_672),
            (TvResNetConfig::resnet50(), 25_557_032),
            (TvResNetConfig::resnet101(), 44_549_160),
            (TvResNetConfig::resnet152(), 60_192_808),
        ] {
            let net = TvResNet::new(&config, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
            assert_eq!(net.num_params(), params, "{config:?}");
            assert_eq!(net.output_shape(&[1, 3, 224, 224])?, vec![1, 1000]);
        }
        Ok(())
    }

    #[test]
    fn names_follow_torchvisions_state_dict() -> Result<()> {
        let store = test_store(0);
        let net = resnet50(10, store.var_builder())?;
        let names: Vec<String> = store.named_tensors().into_iter().map(|(n, _)| n).collect();
        for key in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.conv3.weight",
            "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.bias",
            "layer2.0.conv2.weight",
            "layer4.2.bn3.running_mean",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(names.iter().any(|n| n == key), "{key} missing");
        }
        assert!(
            !names
                .iter()
                .any(|n| n == "conv1.bias" || n == "layer1.1.downsample.0.weight")
        );
        assert_eq!(
            net.body().names()[..5],
            ["conv1", "bn1", "relu", "maxpool", "layer1"].map(String::from)
        );
        // The strided 3x3 of a bottleneck (v1.5): layer2's first block halves the map there.
        let y = net.body().layers()[..6]
            .iter()
            .try_fold(vec![1, 3, 64, 64], |s, l| l.output_shape(&s))?;
        assert_eq!(y, vec![1, 512, 8, 8]);
        Ok(())
    }

    #[test]
    fn basic_and_bottleneck_train_and_any_input_size_works() -> Result<()> {
        let store = test_store(3);
        let net = resnet18(7, store.var_builder())?;
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 40, 40])?;
        let store = test_store(4);
        let net = resnet50(5, store.var_builder())?;
        for size in [32, 57] {
            let y = net.forward_t(&test_input(&[2, 3, size, size], 1)?, false)?;
            assert_eq!(y.dims(), &[2, 5]);
        }
        Ok(())
    }
}
