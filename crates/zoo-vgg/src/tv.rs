//! torchvision's VGGs (`torchvision.models.vgg11`, `vgg11_bn`, `vgg16`, `vgg16_bn`: Simonyan &
//! Zisserman's configurations A and D), built as torchvision builds them for its ImageNet
//! weights: `features` laid out as its `make_layers` lays out a `cfgs` table (3x3 convolutions
//! with bias, each followed by a BatchNorm in the `_bn` variants and a ReLU; 2x2 max poolings),
//! `avgpool` (adaptive average pooling to 7x7, so any input of 32 px or more works: smaller maps
//! are upsampled), `classifier` (three linear layers, dropout after the hidden two). Every
//! tensor is named as torchvision's state dict names it (`features.0.weight`,
//! `features.1.running_mean` in a `_bn` variant, `classifier.6.bias`), so its weight files map
//! one to one.
//!
//! # Shapes (VGG-16)
//! `[b, 3, 224, 224] -> [b, 64, 112, 112] -> [b, 128, 56, 56] -> [b, 256, 28, 28]
//! -> [b, 512, 14, 14] -> [b, 512, 7, 7] -> [b, 25088] -> [b, 4096] -> [b, 1000]`

use candle_core::Result;
use candle_nn::VarBuilder;
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, DropoutClassifier, Flatten, MaxPool2d,
    ReLU, SequentialT, push_dropout_classifier,
};
use zoo_nn::{ForwardContext, InputSpec};

/// One entry of torchvision's `cfgs` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TvVggLayer {
    /// A 3x3 convolution (padding 1) to this many channels, then BatchNorm (in the `_bn`
    /// variants) and ReLU.
    Conv(usize),
    /// `"M"`: `MaxPool2d(kernel_size=2, stride=2)`.
    MaxPool,
}

const fn c(channels: usize) -> TvVggLayer {
    TvVggLayer::Conv(channels)
}

const M: TvVggLayer = TvVggLayer::MaxPool;

/// torchvision's `cfgs["A"]`: VGG-11.
pub const CFG_A: [TvVggLayer; 13] = [
    c(64),
    M,
    c(128),
    M,
    c(256),
    c(256),
    M,
    c(512),
    c(512),
    M,
    c(512),
    c(512),
    M,
];

/// torchvision's `cfgs["D"]`: VGG-16.
pub const CFG_D: [TvVggLayer; 18] = [
    c(64),
    c(64),
    M,
    c(128),
    c(128),
    M,
    c(256),
    c(256),
    c(256),
    M,
    c(512),
    c(512),
    c(512),
    M,
    c(512),
    c(512),
    c(512),
    M,
];

/// `avgpool`'s output side.
const POOLED: usize = 7;
/// Width of the classifier's two hidden layers.
const HIDDEN: usize = 4096;

/// A torchvision VGG's configuration (`VGG(make_layers(cfg, batch_norm), num_classes,
/// dropout=dropout)`).
#[derive(Debug, Clone, PartialEq)]
pub struct TvVggConfig {
    /// The `cfgs` table `features` is built from.
    pub layers: Vec<TvVggLayer>,
    /// Whether a BatchNorm follows every convolution (the `_bn` variants).
    pub batch_norm: bool,
    /// Number of output classes (1000 for ImageNet).
    pub num_classes: usize,
    /// The input it is built for: any size of at least 32 px works (adaptive pooling before
    /// the classifier); this one decides what summaries print.
    pub input: InputSpec,
    /// Dropout probability after each hidden linear layer (0.5).
    pub dropout: f32,
}

impl TvVggConfig {
    fn new(layers: &[TvVggLayer], batch_norm: bool) -> Self {
        Self {
            layers: layers.to_vec(),
            batch_norm,
            num_classes: 1000,
            input: InputSpec::square(3, 224),
            dropout: 0.5,
        }
    }

    /// `torchvision.models.vgg11`: [`CFG_A`] without BatchNorm.
    pub fn vgg11() -> Self {
        Self::new(&CFG_A, false)
    }

    /// `torchvision.models.vgg11_bn`: [`CFG_A`] with BatchNorm.
    pub fn vgg11_bn() -> Self {
        Self::new(&CFG_A, true)
    }

    /// `torchvision.models.vgg16`: [`CFG_D`] without BatchNorm.
    pub fn vgg16() -> Self {
        Self::new(&CFG_D, false)
    }

    /// `torchvision.models.vgg16_bn`: [`CFG_D`] with BatchNorm.
    pub fn vgg16_bn() -> Self {
        Self::new(&CFG_D, true)
    }

    /// The same network with dropout probability `p` (torchvision's `dropout` argument).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }
}

zoo_nn::impl_input_config!(TvVggConfig);

/// A torchvision VGG: `features`, `avgpool`, `flatten` (torchvision's `torch.flatten` call),
/// `classifier`.
pub struct TvVgg {
    config: TvVggConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl TvVgg {
    /// Builds the network `config` describes, its weights from `vb` under torchvision's names.
    pub fn new(config: &TvVggConfig, vb: VarBuilder) -> Result<Self> {
        check_config("VGG", &config.input, config.num_classes)?;
        if config.layers.contains(&TvVggLayer::Conv(0)) {
            candle_core::bail!("VGG: a convolution needs at least one channel, got {config:?}")
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        let mut channels = config.input.channels;
        // [b, 512, 7, 7] at 224 px
        net.push_named(&vb, "features", |vb| {
            let (features, out) = features(config, vb, &context)?;
            channels = out;
            Ok(features)
        })?;
        net.push_named(&vb, "avgpool", |_| {
            Ok(AdaptiveAvgPool2d::new(POOLED, POOLED))
        })?;
        net.push_named(&vb, "flatten", |_| Ok(Flatten))?;
        net.push_named(&vb, "classifier", |vb| {
            let mut head = SequentialT::new();
            let widths = DropoutClassifier::new(HIDDEN, config.num_classes, config.dropout);
            let features = channels * POOLED * POOLED;
            push_dropout_classifier(&mut head, &vb, &context, features, widths)?;
            Ok(head)
        })?;
        check_fits("VGG", &net, &config.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &TvVggConfig {
        &self.config
    }
}

zoo_nn::impl_model!(TvVgg);

/// `features` as torchvision's `make_layers(cfg, batch_norm)` numbers it (a convolution,
/// its BatchNorm and ReLU take three indices, a max pooling one), and its output channels.
fn features(
    config: &TvVggConfig,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<(SequentialT, usize)> {
    let mut features = SequentialT::new();
    let mut channels = config.input.channels;
    for layer in &config.layers {
        match *layer {
            TvVggLayer::MaxPool => {
                features.push(MaxPool2d::new(2, 2, 0));
            }
            TvVggLayer::Conv(out) => {
                let spec = Conv2dSpec::new(channels, out, 3).padding(1);
                features.push_with(&vb, |vb| Conv2d::new(spec, vb))?;
                if config.batch_norm {
                    features.push_with(&vb, |vb| BatchNorm2d::new(out, vb, context))?;
                }
                features.push(ReLU);
                channels = out;
            }
        }
    }
    Ok((features, channels))
}

/// `torchvision.models.vgg11(num_classes=num_classes)`.
pub fn vgg11(num_classes: usize, vb: VarBuilder) -> Result<TvVgg> {
    TvVgg::new(&TvVggConfig::vgg11().with_num_classes(num_classes), vb)
}

/// `torchvision.models.vgg11_bn(num_classes=num_classes)`.
pub fn vgg11_bn(num_classes: usize, vb: VarBuilder) -> Result<TvVgg> {
    TvVgg::new(&TvVggConfig::vgg11_bn().with_num_classes(num_classes), vb)
}

/// `torchvision.models.vgg16(num_classes=num_classes)`.
pub fn vgg16(num_classes: usize, vb: VarBuilder) -> Result<TvVgg> {
    TvVgg::new(&TvVggConfig::vgg16().with_num_classes(num_classes), vb)
}

/// `torchvision.models.vgg16_bn(num_classes=num_classes)`.
pub fn vgg16_bn(num_classes: usize, vb: VarBuilder) -> Result<TvVgg> {
    TvVgg::new(&TvVggConfig::vgg16_bn().with_num_classes(num_classes), vb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::ModuleT;
    use zoo_nn::Model;
    use zoo_nn::summary::Summary;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, test_input, test_store};

    #[test]
    fn parameter_counts_and_shapes_equal_torchvisions() -> Result<()> {
        // torchvision 0.29, 1000 classes (`sum(p.numel() for p in m.parameters())`).
        // GMACs at 224 px: the weights' `meta["_ops"]`.
        for (config, params, gmacs) in [
            (TvVggConfig::vgg11(), 132_863_336, 7.609),
            (TvVggConfig::vgg11_bn(), 132_868_840, 7.609),
            (TvVggConfig::vgg16(), 138_357_544, 15.47),
            (TvVggConfig::vgg16_bn(), 138_365_992, 15.47),
        ] {
            let net = TvVgg::new(&config, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
            assert_eq!(net.num_params(), params, "{config:?}");
            let macs = Summary::of("vgg", &net, &[1, 3, 224, 224])?.macs;
            assert!(
                (macs as f64 / 1e9 - gmacs).abs() < 5e-4,
                "{config:?}: {macs}"
            );
            assert_eq!(
                net.body().names(),
                ["features", "avgpool", "flatten", "classifier"].map(String::from)
            );
            let features = &net.body().layers()[0];
            assert_eq!(features.output_shape(&[2, 3, 224, 224])?, [2, 512, 7, 7]);
            assert_eq!(net.output_shape(&[2, 3, 224, 224])?, [2, 1000]);
            // 96 px: a 3x3 map, upsampled to 7x7 before the classifier.
            assert_eq!(features.output_shape(&[1, 3, 96, 96])?, [1, 512, 3, 3]);
            assert_eq!(net.output_shape(&[1, 3, 96, 96])?, [1, 1000]);
        }
        Ok(())
    }

    #[test]
    fn any_input_of_32_px_or_more_runs_and_trains() -> Result<()> {
        let store = test_store(0);
        let net = vgg11_bn(5, store.var_builder())?;
        for size in [32, 45] {
            let y = net.forward_t(&test_input(&[2, 3, size, size], 1)?, false)?;
            assert_eq!(y.dims(), &[2, 5], "{size} px");
        }
        assert!(net.output_shape(&[1, 3, 31, 31]).is_err());
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 32, 32])
    }
}
