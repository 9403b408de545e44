//! torchvision's DenseNets (`torchvision.models.densenet121`, `densenet169`, `densenet201`:
//! Huang et al.'s DenseNet-BC, 2016), built as torchvision builds them for its ImageNet weights:
//! `features` holds a 7x7 stem (`conv0`, `norm0`, `relu0`, `pool0`), four dense blocks of
//! bottleneck layers (`norm1`, ReLU, 1x1 `conv1` to `bn_size * growth_rate` channels, `norm2`,
//! ReLU, 3x3 `conv2` to `growth_rate` channels, each layer reading the concatenation of the
//! block's input and every earlier layer's output), transitions between them (`norm`, ReLU, 1x1
//! `conv` halving the channels, 2x2 average pooling) and `norm5`; a ReLU, global average pooling
//! and `classifier` follow. Convolutions have no bias. Every tensor is named as torchvision's
//! state dict names it (`features.conv0.weight`, `features.denseblock1.denselayer1.norm1.weight`,
//! `features.transition1.conv.weight`, `features.norm5.running_var`, `classifier.bias`), so its
//! weight files map one to one.
//!
//! # Shapes (DenseNet-121)
//! `[b, 3, 224, 224] -> [b, 64, 56, 56] -> [b, 256, 56, 56] -> [b, 128, 28, 28]
//! -> [b, 512, 28, 28] -> [b, 256, 14, 14] -> [b, 1024, 14, 14] -> [b, 512, 7, 7]
//! -> [b, 1024, 7, 7] -> [b, 1024] -> [b, 1000]`

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::export_relu;
use zoo_nn::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, Dropout, Flatten, Layer,
    LayerKind, Linear, MaxPool2d, ReLU, SequentialT, expect_nchw,
};
use zoo_nn::{ForwardContext, InputSpec};

/// A torchvision DenseNet's configuration (`DenseNet(growth_rate, block_config,
/// num_init_features, bn_size, drop_rate, num_classes)`).
#[derive(Debug, Clone, PartialEq)]
pub struct TvDenseNetConfig {
    /// Channels each dense layer adds (32).
    pub growth_rate: usize,
    /// Dense layers per block (`block_config`).
    pub block_config: Vec<usize>,
    /// Channels of the stem (`num_init_features`, 64).
    pub num_init_features: usize,
    /// A dense layer's bottleneck width in growths (`bn_size`, 4: 128 channels).
    pub bn_size: usize,
    /// Dropout probability after each dense layer (`drop_rate`, 0).
    pub drop_rate: f32,
    /// Number of output classes (1000 for ImageNet).
    pub num_classes: usize,
    /// The input it is built for: any size of at least 29 px works (global average pooling
    /// before `classifier`); this one decides what summaries print.
    pub input: InputSpec,
}

impl TvDenseNetConfig {
    fn new(block_config: [usize; 4]) -> Self {
        Self {
            growth_rate: 32,
            block_config: block_config.to_vec(),
            num_init_features: 64,
            bn_size: 4,
            drop_rate: 0.0,
            num_classes: 1000,
            input: InputSpec::square(3, 224),
        }
    }

    /// `torchvision.models.densenet121`: blocks `(6, 12, 24, 16)`.
    pub fn densenet121() -> Self {
        Self::new([6, 12, 24, 16])
    }

    /// `torchvision.models.densenet169`: blocks `(6, 12, 32, 32)`.
    pub fn densenet169() -> Self {
        Self::new([6, 12, 32, 32])
    }

    /// `torchvision.models.densenet201`: blocks `(6, 12, 48, 32)`.
    pub fn densenet201() -> Self {
        Self::new([6, 12, 48, 32])
    }
}

zoo_nn::impl_input_config!(TvDenseNetConfig);

/// torchvision's `_DenseLayer`: `norm1`, ReLU, `conv1` (1x1), `norm2`, ReLU, `conv2` (3x3),
/// dropout; `growth_rate` new channels from all the block's channels so far.
pub struct TvDenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
    dropout: Dropout,
}

impl TvDenseLayer {
    /// A dense layer on `in_channels` channels with `config`'s growth, bottleneck and dropout.
    pub fn new(
        in_channels: usize,
        config: &TvDenseNetConfig,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let width = config.bn_size * config.growth_rate;
        let conv1 = Conv2dSpec::new(in_channels, width, 1).no_bias();
        let conv2 = Conv2dSpec::new(width, config.growth_rate, 3)
            .padding(1)
            .no_bias();
        Ok(Self {
            norm1: BatchNorm2d::new(in_channels, vb.pp("norm1"), context)?,
            conv1: Conv2d::new(conv1, vb.pp("conv1"))?,
            norm2: BatchNorm2d::new(width, vb.pp("norm2"), context)?,
            conv2: Conv2d::new(conv2, vb.pp("conv2"))?,
            dropout: Dropout::new(config.drop_rate, context)?,
        })
    }
}

impl ModuleT for TvDenseLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm1.forward_relu_t(x, train)?;
        // [b, bn_size * growth_rate, h, w]; `norm2` folded into `conv1` in frozen evaluation.
        let y = self.conv1.forward_bn_t(&y, &self.norm2, train, true)?;
        // [b, growth_rate, h, w]
        let y = self.conv2.forward_t(&y, train)?;
        self.dropout.forward_t(&y, train)
    }
}

impl Layer for TvDenseLayer {
    fn kind(&self) -> LayerKind {
        LayerKind::Block("_DenseLayer")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let shape = self.conv1.output_shape(input)?;
        self.conv2.output_shape(&shape)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let y = export_relu(&self.norm1, graph, input)?;
        let y = self.conv1.export(graph, &y)?;
        let y = export_relu(&self.norm2, graph, &y)?;
        let y = self.conv2.export(graph, &y)?;
        self.dropout.export(graph, &y)
    }

    fn num_params(&self) -> usize {
        let norms = self.norm1.num_params() + self.norm2.num_params();
        norms + self.conv1.num_params() + self.conv2.num_params()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let bottleneck = self.conv1.output_shape(input)?;
        let parts = [self.conv1.macs(input)?, self.conv2.macs(&bottleneck)?];
        zoo_nn::nn::mac_sum("_DenseLayer", input, &parts)
    }
}

/// torchvision's `_DenseBlock`: dense layers `denselayer1`, `denselayer2`, ..., each reading
/// the concatenation of the block's input and every earlier layer's output; the block returns
/// the concatenation of all of them.
pub struct TvDenseBlock {
    in_channels: usize,
    growth_rate: usize,
    layers: Vec<TvDenseLayer>,
}

impl TvDenseBlock {
    /// `num_layers` dense layers on `in_channels` channels.
    pub fn new(
        num_layers: usize,
        in_channels: usize,
        config: &TvDenseNetConfig,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                let channels = in_channels + i * config.growth_rate;
                let vb = vb.pp(format!("denselayer{}", i + 1));
                TvDenseLayer::new(channels, config, vb, context)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            in_channels,
            growth_rate: config.growth_rate,
            layers,
        })
    }

    /// Channels of the output: the input's plus one growth per layer.
    pub fn out_channels(&self) -> usize {
        self.in_channels + self.growth_rate * self.layers.len()
    }
}

impl ModuleT for TvDenseBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        let mut features = x.clone();
        for layer in &self.layers {
            let new = layer.forward_t(&features, train)?;
            // [b, c + growth_rate, h, w]
            features = Tensor::cat(&[&features, &new], 1)?;
        }
        Ok(features)
    }
}

impl Layer for TvDenseBlock {
    fn kind(&self) -> LayerKind {
        LayerKind::Block("_DenseBlock")
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (b, h, w) = expect_nchw("_DenseBlock", input, self.in_channels)?;
        Ok(vec![b, self.out_channels(), h, w])
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let mut features = input.clone();
        for layer in &self.layers {
            let new = layer.export(graph, &features)?;
            features = graph.concat(&[features, new])?;
        }
        Ok(features)
    }

    fn num_params(&self) -> usize {
        self.layers.iter().map(Layer::num_params).sum()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let (b, h, w) = expect_nchw("_DenseBlock", input, self.in_channels)?;
        let mut total = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let macs = layer.macs(&[b, self.in_channels + i * self.growth_rate, h, w])?;
            total = zoo_nn::nn::mac_sum("_DenseBlock", input, &[total, macs])?;
        }
        Ok(total)
    }
}

/// torchvision's `_Transition`: `norm`, `relu`, `conv` (1x1, `in_channels` to `out_channels`),
/// `pool` (2x2 average pooling).
fn transition(
    (in_channels, out_channels): (usize, usize),
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut t = SequentialT::new();
    t.push_named(&vb, "norm", |vb| BatchNorm2d::new(in_channels, vb, context))?;
    t.push_named(&vb, "relu", |_| Ok(ReLU))?;
    let spec = Conv2dSpec::new(in_channels, out_channels, 1).no_bias();
    t.push_named(&vb, "conv", |vb| Conv2d::new(spec, vb))?;
    t.push_named(&vb, "pool", |_| Ok(AvgPool2d::new(2, 2, 0)))?;
    Ok(t)
}

/// A torchvision DenseNet: `features`, `relu` (torchvision's `F.relu` call), `avgpool`
/// (its `F.adaptive_avg_pool2d`), `flatten` (its `torch.flatten`), `classifier`.
pub struct TvDenseNet {
    config: TvDenseNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl TvDenseNet {
    /// Builds the network `config` describes, its weights from `vb` under torchvision's names.
    pub fn new(config: &TvDenseNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("DenseNet", &config.input, config.num_classes)?;
        let c = config;
        if c.block_config.is_empty() || c.growth_rate == 0 || c.bn_size == 0 {
            candle_core::bail!(
                "DenseNet: needs at least one dense block, a growth rate and a bottleneck, \
                 got {config:?}"
            )
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        let mut channels = 0;
        // [b, 1024, 7, 7] at 224 px (DenseNet-121)
        net.push_named(&vb, "features", |vb| {
            let (features, out) = features(c, vb, &context)?;
            channels = out;
            Ok(features)
        })?;
        net.push_named(&vb, "relu", |_| Ok(ReLU))?;
        net.push_named(&vb, "avgpool", |_| Ok(AdaptiveAvgPool2d::new(1, 1)))?;
        net.push_named(&vb, "flatten", |_| Ok(Flatten))?;
        net.push_named(&vb, "classifier", |vb| {
            Linear::new(channels, c.num_classes, vb)
        })?;
        check_fits("DenseNet", &net, &c.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &TvDenseNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(TvDenseNet);

/// `features`: `conv0`, `norm0`, `relu0`, `pool0`, then `denseblockN` and (between blocks)
/// `transitionN`, then `norm5`; and its output channels.
fn features(
    c: &TvDenseNetConfig,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<(SequentialT, usize)> {
    let mut f = SequentialT::new();
    let stem = Conv2dSpec::new(c.input.channels, c.num_init_features, 7)
        .stride(2)
        .padding(3)
        .no_bias();
    f.push_named(&vb, "conv0", |vb| Conv2d::new(stem, vb))?;
    f.push_named(&vb, "norm0", |vb| {
        BatchNorm2d::new(c.num_init_features, vb, context)
    })?;
    f.push_named(&vb, "relu0", |_| Ok(ReLU))?;
    f.push_named(&vb, "pool0", |_| Ok(MaxPool2d::new(3, 2, 1)))?;
    let mut channels = c.num_init_features;
    for (i, &num_layers) in c.block_config.iter().enumerate() {
        let name = format!("denseblock{}", i + 1);
        f.push_named(&vb, &name, |vb| {
            TvDenseBlock::new(num_layers, channels, c, vb, context)
        })?;
        channels += num_layers * c.growth_rate;
        if i + 1 < c.block_config.len() {
            // halves channels and resolution
            let name = format!("transition{}", i + 1);
            f.push_named(&vb, &name, |vb| {
                transition((channels, channels / 2), vb, context)
            })?;
            channels /= 2;
        }
    }
    f.push_named(&vb, "norm5", |vb| BatchNorm2d::new(channels, vb, context))?;
    Ok((f, channels))
}

/// `torchvision.models.densenet121(num_classes=num_classes)`.
pub fn densenet121(num_classes: usize, vb: VarBuilder) -> Result<TvDenseNet> {
    TvDenseNet::new(
        &TvDenseNetConfig::densenet121().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.densenet169(num_classes=num_classes)`.
pub fn densenet169(num_classes: usize, vb: VarBuilder) -> Result<TvDenseNet> {
    TvDenseNet::new(
        &TvDenseNetConfig::densenet169().with_num_classes(num_classes),
        vb,
    )
}

/// `torchvision.models.densenet201(num_classes=num_classes)`.
pub fn densenet201(num_classes: usize, vb: VarBuilder) -> Result<TvDenseNet> {
    TvDenseNet::new(
        &TvDenseNetConfig::densenet201().with_num_classes(num_classes),
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
    fn parameter_counts_and_shapes_equal_torchvisions() -> Result<()> {
        // torchvision 0.29, 1000 classes (`sum(p.numel() for p in m.parameters())`).
        // GMACs at 224 px: the weights' `meta["_ops"]`.
        for (config, params, gmacs, channels) in [
            (TvDenseNetConfig::densenet121(), 7_978_856, 2.834, 1024),
            (TvDenseNetConfig::densenet169(), 14_149_480, 3.36, 1664),
            (TvDenseNetConfig::densenet201(), 20_013_928, 4.291, 1920),
        ] {
            let net = TvDenseNet::new(&config, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
            assert_eq!(net.num_params(), params, "{config:?}");
            let macs = Summary::of("densenet", &net, &[1, 3, 224, 224])?.macs;
            assert!(
                (macs as f64 / 1e9 - gmacs).abs() < 5e-4,
                "{config:?}: {macs}"
            );
            assert_eq!(
                net.body().names(),
                ["features", "relu", "avgpool", "flatten", "classifier"].map(String::from)
            );
            let features = &net.body().layers()[0];
            assert_eq!(
                features.output_shape(&[2, 3, 224, 224])?,
                [2, channels, 7, 7]
            );
            assert_eq!(net.output_shape(&[2, 3, 224, 224])?, [2, 1000]);
            assert_eq!(
                features.output_shape(&[1, 3, 100, 100])?,
                [1, channels, 3, 3]
            );
            assert_eq!(net.output_shape(&[1, 3, 100, 100])?, [1, 1000]);
        }
        Ok(())
    }

    #[test]
    fn any_input_of_29_px_or_more_runs_and_trains() -> Result<()> {
        let store = test_store(0);
        let net = densenet121(4, store.var_builder())?;
        for size in [29, 64] {
            let y = net.forward_t(&test_input(&[2, 3, size, size], 1)?, false)?;
            assert_eq!(y.dims(), &[2, 4], "{size} px");
        }
        assert!(net.output_shape(&[1, 3, 28, 28]).is_err());
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 32, 32])
    }

    #[test]
    fn a_dense_block_passes_its_input_through_and_adds_growth() -> Result<()> {
        let config = TvDenseNetConfig::densenet121();
        let store = test_store(1);
        let block = TvDenseBlock::new(3, 5, &config, store.var_builder(), &Default::default())?;
        let x = test_input(&[2, 5, 6, 6], 0)?;
        for train in [true, false] {
            let y = block.forward_t(&x, train)?;
            assert_eq!(y.dims(), &[2, 5 + 3 * 32, 6, 6]);
            let head = (y.narrow(1, 0, 5)? - &x)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(head, 0.0);
        }
        // norm1 (2c) + conv1 (128c) + norm2 (256) + conv2 (128 * 32 * 9), c = 5, 37, 69.
        let per_layer = |c: usize| 2 * c + 128 * c + 256 + 128 * 32 * 9;
        assert_eq!(
            block.num_params(),
            per_layer(5) + per_layer(37) + per_layer(69)
        );
        Ok(())
    }
}
