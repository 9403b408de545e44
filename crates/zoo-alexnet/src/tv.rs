//! torchvision's AlexNet (`torchvision.models.alexnet`: the single-tower network of Krizhevsky's
//! "One weird trick" paper, 2014, with 64-192-384-256-256 channels), built as torchvision builds
//! it for its ImageNet weights: `features` (five convolutions with ReLU, three 3x3 max poolings
//! of stride 2), `avgpool` (adaptive average pooling to 6x6, so any input its poolings accept
//! works: smaller maps are upsampled), `classifier` (dropout before each of the two hidden linear
//! layers). Every tensor is named as torchvision's state dict names it (`features.0.weight`,
//! `classifier.1.weight`, `classifier.6.bias`), so its weight files map one to one.
//!
//! # Shapes
//! `[b, 3, 224, 224] -> [b, 64, 55, 55] -> [b, 64, 27, 27] -> [b, 192, 13, 13]
//! -> [b, 256, 6, 6] -> [b, 256, 6, 6] (avgpool) -> [b, 9216] -> [b, 4096] -> [b, 1000]`

use candle_core::Result;
use candle_nn::VarBuilder;
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, Conv2dSpec, Dropout, Flatten, Linear, MaxPool2d, ReLU, SequentialT,
    push_conv_relu,
};
use zoo_nn::{ForwardContext, InputSpec};

/// Channels of `features`' last convolution.
const FEATURES: usize = 256;
/// `avgpool`'s output side: the classifier sees `256 * 6 * 6` features.
const POOLED: usize = 6;
/// Width of the classifier's two hidden layers.
const HIDDEN: usize = 4096;

/// torchvision's AlexNet configuration (`AlexNet(num_classes, dropout)`).
#[derive(Debug, Clone, PartialEq)]
pub struct TvAlexNetConfig {
    /// Number of output classes (1000 for ImageNet).
    pub num_classes: usize,
    /// The input it is built for: any size of at least 63 px works (adaptive pooling before the
    /// classifier); this one decides what summaries print.
    pub input: InputSpec,
    /// Dropout probability before each hidden linear layer (0.5).
    pub dropout: f32,
}

impl TvAlexNetConfig {
    /// `torchvision.models.alexnet`: 1000 classes, 3x224x224, dropout 0.5.
    pub fn alexnet() -> Self {
        Self {
            num_classes: 1000,
            input: InputSpec::square(3, 224),
            dropout: 0.5,
        }
    }

    /// The same network with dropout probability `p` (torchvision's `dropout` argument).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }
}

zoo_nn::impl_input_config!(TvAlexNetConfig);

/// torchvision's AlexNet: `features`, `avgpool`, `flatten` (torchvision's `torch.flatten`
/// call), `classifier`.
pub struct TvAlexNet {
    config: TvAlexNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl TvAlexNet {
    /// Builds the network `config` describes, its weights from `vb` under torchvision's names.
    pub fn new(config: &TvAlexNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("AlexNet", &config.input, config.num_classes)?;
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        // [b, 256, 6, 6] at 224 px
        net.push_named(&vb, "features", |vb| features(config.input.channels, vb))?;
        net.push_named(&vb, "avgpool", |_| {
            Ok(AdaptiveAvgPool2d::new(POOLED, POOLED))
        })?;
        net.push_named(&vb, "flatten", |_| Ok(Flatten))?;
        net.push_named(&vb, "classifier", |vb| classifier(config, vb, &context))?;
        check_fits("AlexNet", &net, &config.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &TvAlexNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(TvAlexNet);

/// `features`: convolutions `0`, `3`, `6`, `8`, `10`, each followed by its ReLU; max poolings
/// `2`, `5`, `12`.
fn features(in_channels: usize, vb: VarBuilder) -> Result<SequentialT> {
    let mut f = SequentialT::new();
    let stem = Conv2dSpec::new(in_channels, 64, 11).stride(4).padding(2);
    push_conv_relu(&mut f, &vb, stem)?;
    f.push(MaxPool2d::new(3, 2, 0));
    push_conv_relu(&mut f, &vb, Conv2dSpec::new(64, 192, 5).padding(2))?;
    f.push(MaxPool2d::new(3, 2, 0));
    for (cin, cout) in [(192, 384), (384, 256), (256, FEATURES)] {
        push_conv_relu(&mut f, &vb, Conv2dSpec::new(cin, cout, 3).padding(1))?;
    }
    f.push(MaxPool2d::new(3, 2, 0));
    Ok(f)
}

/// `classifier`: `Dropout`, `Linear` `1`, `ReLU`, `Dropout`, `Linear` `4`, `ReLU`, `Linear` `6`.
fn classifier(
    config: &TvAlexNetConfig,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut head = SequentialT::new();
    head.push(Dropout::new(config.dropout, context)?);
    head.push_with(&vb, |vb| {
        Linear::new(FEATURES * POOLED * POOLED, HIDDEN, vb)
    })?;
    head.push(ReLU);
    head.push(Dropout::new(config.dropout, context)?);
    head.push_with(&vb, |vb| Linear::new(HIDDEN, HIDDEN, vb))?;
    head.push(ReLU);
    head.push_with(&vb, |vb| Linear::new(HIDDEN, config.num_classes, vb))?;
    Ok(head)
}

/// `torchvision.models.alexnet(num_classes=num_classes)`.
pub fn alexnet(num_classes: usize, vb: VarBuilder) -> Result<TvAlexNet> {
    TvAlexNet::new(
        &TvAlexNetConfig::alexnet().with_num_classes(num_classes),
        vb,
    )
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
    fn parameter_count_and_shapes_equal_torchvisions() -> Result<()> {
        // torchvision 0.29, 1000 classes (`sum(p.numel() for p in m.parameters())`).
        let net = alexnet(1000, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        assert_eq!(net.num_params(), 61_100_840);
        // torchvision's `AlexNet_Weights.IMAGENET1K_V1.meta["_ops"]`: 0.714 GMACs at 224 px.
        let macs = Summary::of("alexnet", &net, &[1, 3, 224, 224])?.macs;
        assert!((macs as f64 / 1e9 - 0.714).abs() < 5e-4, "{macs}");
        assert_eq!(
            net.body().names(),
            ["features", "avgpool", "flatten", "classifier"].map(String::from)
        );
        let shapes = net.body().layers().iter().try_fold(
            vec![vec![2, 3, 224, 224]],
            |mut shapes, layer| {
                let next = layer.output_shape(shapes.last().expect("the input"))?;
                shapes.push(next);
                Ok::<_, candle_core::Error>(shapes)
            },
        )?;
        assert_eq!(
            shapes[1..],
            [
                vec![2, 256, 6, 6],
                vec![2, 256, 6, 6],
                vec![2, 9216],
                vec![2, 1000]
            ]
        );
        // 100 px: a 2x2 map, upsampled to 6x6 before the classifier.
        assert_eq!(
            net.body().layers()[0].output_shape(&[1, 3, 100, 100])?,
            [1, 256, 2, 2]
        );
        assert_eq!(net.output_shape(&[1, 3, 100, 100])?, [1, 1000]);
        Ok(())
    }

    #[test]
    fn any_input_size_its_poolings_accept_runs_and_trains() -> Result<()> {
        let store = test_store(0);
        let net = alexnet(7, store.var_builder())?;
        for size in [63, 100, 224] {
            let y = net.forward_t(&test_input(&[2, 3, size, size], 1)?, false)?;
            assert_eq!(y.dims(), &[2, 7], "{size} px");
        }
        let err = net.output_shape(&[1, 3, 62, 62]).unwrap_err();
        assert!(err.to_string().contains("MaxPool2d"), "{err}");
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 64, 64])
    }
}
