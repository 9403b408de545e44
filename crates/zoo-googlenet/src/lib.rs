//! GoogLeNet (Szegedy et al., 2014), as defined in the reference notebook.
//!
//! Five stages: a 7x7 stem, a 1x1 + 3x3 stage, then nine Inception blocks (four parallel
//! paths concatenated on the channel axis) in three stages, global average pooling and one
//! linear layer. The notebook trains it on CIFAR-10 resized to 96 px.
//! [`tv`] holds torchvision's GoogLeNet (BatchNorm after every convolution, ceil-mode pooling,
//! input re-normalisation), named as torchvision's state dicts name it.
//!
//! # Shapes
//! `[b, 3, 96, 96] -> [b, 64, 24, 24] -> [b, 192, 12, 12] -> [b, 480, 6, 6] -> [b, 832, 3, 3]
//! -> [b, 1024] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_googlenet::{GoogLeNet, GoogLeNetConfig};
//!
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = GoogLeNet::new(&GoogLeNetConfig::googlenet(), store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), &[1, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod tv;

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::export_relu;
use zoo_nn::nn::{
    AdaptiveAvgPool2d, Conv2d, Conv2dSpec, Flatten, Layer, LayerKind, Linear, MaxPool2d,
    SequentialT, conv7_stem, expect_nchw, push_conv_relu,
};
use zoo_nn::{ForwardContext, InputSpec};

/// Output channels of an Inception block's four paths: `c1`, `(c2_reduce, c2)`,
/// `(c3_reduce, c3)`, `c4` (the notebook's `Inception(in, c1, c2, c3, c4)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InceptionSpec {
    /// Path 1: the 1x1 convolution's output channels.
    pub c1: usize,
    /// Path 2: 1x1 reduction, then 3x3 output channels.
    pub c2: (usize, usize),
    /// Path 3: 1x1 reduction, then 5x5 output channels.
    pub c3: (usize, usize),
    /// Path 4: the 1x1 convolution after 3x3 max pooling.
    pub c4: usize,
}

impl InceptionSpec {
    /// The notebook's `Inception(in_channels, c1, c2, c3, c4)` widths.
    pub const fn new(c1: usize, c2: (usize, usize), c3: (usize, usize), c4: usize) -> Self {
        Self { c1, c2, c3, c4 }
    }

    /// Channels of the concatenated output.
    pub const fn out_channels(&self) -> usize {
        self.c1 + self.c2.1 + self.c3.1 + self.c4
    }
}

/// Stage 3 (`b3`): two Inception blocks, from the paper's table 1.
pub const STAGE3: [InceptionSpec; 2] = [
    InceptionSpec::new(64, (96, 128), (16, 32), 32),
    InceptionSpec::new(128, (128, 192), (32, 96), 64),
];
/// Stage 4 (`b4`): five Inception blocks.
pub const STAGE4: [InceptionSpec; 5] = [
    InceptionSpec::new(192, (96, 208), (16, 48), 64),
    InceptionSpec::new(160, (112, 224), (24, 64), 64),
    InceptionSpec::new(128, (128, 256), (24, 64), 64),
    InceptionSpec::new(112, (144, 288), (32, 64), 64),
    InceptionSpec::new(256, (160, 320), (32, 128), 128),
];
/// Stage 5 (`b5`): two Inception blocks.
pub const STAGE5: [InceptionSpec; 2] = [
    InceptionSpec::new(256, (160, 320), (32, 128), 128),
    InceptionSpec::new(384, (192, 384), (48, 128), 128),
];

/// The Inception block: four paths whose outputs are concatenated on the channel axis.
/// Weights `p1_1`, `p2_1`, `p2_2`, `p3_1`, `p3_2`, `p4_2` as in the notebook.
pub struct Inception {
    in_channels: usize,
    spec: InceptionSpec,
    p1_1: Conv2d,
    p2_1: Conv2d,
    p2_2: Conv2d,
    p3_1: Conv2d,
    p3_2: Conv2d,
    p4_1: MaxPool2d,
    p4_2: Conv2d,
}

impl Inception {
    /// An Inception block on `in_channels` channels with `spec`'s widths.
    pub fn new(in_channels: usize, spec: InceptionSpec, vb: VarBuilder) -> Result<Self> {
        let s = spec;
        Ok(Self {
            in_channels,
            spec,
            p1_1: Conv2d::new(Conv2dSpec::new(in_channels, s.c1, 1), vb.pp("p1_1"))?,
            p2_1: Conv2d::new(Conv2dSpec::new(in_channels, s.c2.0, 1), vb.pp("p2_1"))?,
            p2_2: Conv2d::new(Conv2dSpec::new(s.c2.0, s.c2.1, 3).padding(1), vb.pp("p2_2"))?,
            p3_1: Conv2d::new(Conv2dSpec::new(in_channels, s.c3.0, 1), vb.pp("p3_1"))?,
            p3_2: Conv2d::new(Conv2dSpec::new(s.c3.0, s.c3.1, 5).padding(2), vb.pp("p3_2"))?,
            p4_1: MaxPool2d::new(3, 1, 1),
            p4_2: Conv2d::new(Conv2dSpec::new(in_channels, s.c4, 1), vb.pp("p4_2"))?,
        })
    }

    fn convs(&self) -> [&Conv2d; 6] {
        [
            &self.p1_1, &self.p2_1, &self.p2_2, &self.p3_1, &self.p3_2, &self.p4_2,
        ]
    }
}

impl ModuleT for Inception {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        // Each convolution runs with its ReLU fused.
        let p1 = self.p1_1.forward_relu_t(x, train)?;
        let p2 = self.p2_1.forward_relu_t(x, train)?;
        let p2 = self.p2_2.forward_relu_t(&p2, train)?;
        let p3 = self.p3_1.forward_relu_t(x, train)?;
        let p3 = self.p3_2.forward_relu_t(&p3, train)?;
        let p4 = self.p4_1.forward_t(x, train)?;
        let p4 = self.p4_2.forward_relu_t(&p4, train)?;
        // [b, c1 + c2 + c3 + c4, h, w]
        Tensor::cat(&[p1, p2, p3, p4], 1)
    }
}

impl Layer for Inception {
    fn kind(&self) -> LayerKind {
        LayerKind::Inception
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (b, h, w) = expect_nchw("Inception", input, self.in_channels)?;
        Ok(vec![b, self.spec.out_channels(), h, w])
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let p1 = export_relu(&self.p1_1, graph, input)?;
        let p2 = export_relu(&self.p2_1, graph, input)?;
        let p2 = export_relu(&self.p2_2, graph, &p2)?;
        let p3 = export_relu(&self.p3_1, graph, input)?;
        let p3 = export_relu(&self.p3_2, graph, &p3)?;
        let p4 = self.p4_1.export(graph, input)?;
        let p4 = export_relu(&self.p4_2, graph, &p4)?;
        graph.concat(&[p1, p2, p3, p4])
    }

    fn num_params(&self) -> usize {
        self.convs().iter().map(|c| c.num_params()).sum()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let [b, _, h, w] = self.output_shape(input)?[..] else {
            unreachable!("Inception output is 4-d")
        };
        let s = &self.spec;
        zoo_nn::nn::mac_sum(
            "Inception",
            input,
            &[
                self.p1_1.macs(input)?,
                self.p2_1.macs(input)?,
                self.p2_2.macs(&[b, s.c2.0, h, w])?,
                self.p3_1.macs(input)?,
                self.p3_2.macs(&[b, s.c3.0, h, w])?,
                self.p4_2.macs(input)?,
            ],
        )
    }
}

/// GoogLeNet's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogLeNetConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
}

impl GoogLeNetConfig {
    /// The notebook's network: 10 classes, 3x96x96.
    pub fn googlenet() -> Self {
        Self {
            num_classes: 10,
            input: InputSpec::square(3, 96),
        }
    }
}

zoo_nn::impl_input_config!(GoogLeNetConfig);

fn inception_stage(
    in_channels: usize,
    specs: &[InceptionSpec],
    vb: &VarBuilder,
    stage: &mut SequentialT,
) -> Result<usize> {
    let mut channels = in_channels;
    for spec in specs {
        stage.push_with(vb, |vb| Inception::new(channels, *spec, vb))?;
        channels = spec.out_channels();
    }
    Ok(channels)
}

/// GoogLeNet: `0`..`4` the stages `b1`..`b5`, `5` the linear classifier.
pub struct GoogLeNet {
    config: GoogLeNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl GoogLeNet {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &GoogLeNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("GoogLeNet", &config.input, config.num_classes)?;
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        // b1: [b, 64, h/4, w/4]
        net.push_with(&vb, |vb| {
            conv7_stem(config.input.channels, 64, false, vb, &context)
        })?;
        // b2: [b, 192, h/8, w/8]
        net.push_with(&vb, |vb| {
            let mut b2 = SequentialT::new();
            push_conv_relu(&mut b2, &vb, Conv2dSpec::new(64, 64, 1))?;
            push_conv_relu(&mut b2, &vb, Conv2dSpec::new(64, 192, 3).padding(1))?;
            b2.push(MaxPool2d::new(3, 2, 1));
            Ok(b2)
        })?;
        let mut channels = 192;
        // b3: [b, 480, h/16, w/16]; b4: [b, 832, h/32, w/32]
        for specs in [&STAGE3[..], &STAGE4[..]] {
            net.push_with(&vb, |vb| {
                let mut stage = SequentialT::new();
                channels = inception_stage(channels, specs, &vb, &mut stage)?;
                stage.push(MaxPool2d::new(3, 2, 1));
                Ok(stage)
            })?;
        }
        // b5: [b, 1024]
        net.push_with(&vb, |vb| {
            let mut b5 = SequentialT::new();
            channels = inception_stage(channels, &STAGE5, &vb, &mut b5)?;
            b5.push(AdaptiveAvgPool2d::new(1, 1));
            b5.push(Flatten);
            Ok(b5)
        })?;
        net.push_with(&vb, |vb| Linear::new(channels, config.num_classes, vb))?;
        check_fits("GoogLeNet", &net, &config.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &GoogLeNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(GoogLeNet);

/// The notebook's GoogLeNet for `num_classes` classes on 3-channel images of any size its
/// pools fit (global average pooling before the classifier; the config's 96 px only decides
/// what `zoo summary` prints).
pub fn googlenet(num_classes: usize, vb: VarBuilder) -> Result<GoogLeNet> {
    GoogLeNet::new(
        &GoogLeNetConfig::googlenet().with_num_classes(num_classes),
        vb,
    )
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/googlenet_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/googlenet_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::ModuleT;
    use zoo_nn::Model;
    use zoo_nn::nn::Layer;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, check_layer_shapes, test_store};

    #[test]
    fn notebook_shapes_and_parameter_count() -> Result<()> {
        let expected: &[(&str, &[usize])] = &[
            ("Sequential", &[128, 64, 24, 24]),
            ("Sequential", &[128, 192, 12, 12]),
            ("Sequential", &[128, 480, 6, 6]),
            ("Sequential", &[128, 832, 3, 3]),
            ("Sequential", &[128, 1024]),
            ("Linear", &[128, 10]),
        ];
        let store = test_store(0);
        let net = GoogLeNet::new(&GoogLeNetConfig::googlenet(), store.var_builder())?;
        check_layer_shapes(&net, [3, 96, 96], expected, 2)?;
        assert_eq!(net.num_params(), 5_983_802);
        assert_eq!(store.num_trainable(), 5_983_802);
        Ok(())
    }

    #[test]
    fn inception_concatenates_its_paths() -> Result<()> {
        let store = test_store(0);
        let block = Inception::new(192, STAGE3[0], store.var_builder())?;
        let x = zoo_nn::testing::test_input(&[2, 192, 5, 7], 0)?;
        assert_eq!(block.forward_t(&x, true)?.dims(), &[2, 256, 5, 7]);
        // 192*64+64 + 192*96+96 + 96*128*9+128 + 192*16+16 + 16*32*25+32 + 192*32+32
        assert_eq!(block.num_params(), 163_696);
        let err = block
            .forward_t(&zoo_nn::testing::test_input(&[2, 3, 5, 7], 0)?, true)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Inception: expected 192 input channels, got 3"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn small_input_trains() -> Result<()> {
        let store = test_store(2);
        let net = GoogLeNet::new(
            &GoogLeNetConfig::googlenet().with_input_size(32),
            store.var_builder(),
        )?;
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 32, 32])
    }
}

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
