//! DenseNet (Huang et al., 2016), as defined in the reference notebook.
//!
//! A 7x7 stem with BatchNorm, four dense blocks (each convolution block's output is
//! concatenated to its input on the channel axis) separated by transition blocks that halve
//! channels and resolution, then BatchNorm, ReLU, global average pooling and one linear layer.
//! [`tv`] holds torchvision's DenseNet-121, -169 and -201 (bottleneck dense layers, bias-free
//! convolutions), named as torchvision's state dicts name them.
//!
//! # Shapes
//! `[b, 3, 224, 224] -> [b, 64, 56, 56] -> [b, 192, 56, 56] -> [b, 96, 28, 28] -> ...
//! -> [b, 248, 7, 7] -> [b, 248] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_densenet::{DenseNet, DenseNetConfig};
//!
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = DenseNet::new(&DenseNetConfig::densenet(), store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod tv;

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, Flatten, Layer, LayerKind,
    Linear, ReLU, SequentialT, conv7_stem, expect_nchw,
};
use zoo_nn::{ForwardContext, InputSpec};

/// The notebook's `conv_block`: `BatchNorm2d(in)`, `ReLU`, `Conv2d(in, out, 3, padding 1)`.
pub fn conv_block(
    input_channels: usize,
    num_channels: usize,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut block = SequentialT::new();
    block.push_with(&vb, |vb| BatchNorm2d::new(input_channels, vb, context))?;
    block.push(ReLU);
    block.push_with(&vb, |vb| {
        Conv2d::new(
            Conv2dSpec::new(input_channels, num_channels, 3).padding(1),
            vb,
        )
    })?;
    Ok(block)
}

/// The notebook's `transition_block`: `BatchNorm2d`, `ReLU`, 1x1 `Conv2d`, `AvgPool2d(2, 2)`.
pub fn transition_block(
    input_channels: usize,
    num_channels: usize,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut block = SequentialT::new();
    block.push_with(&vb, |vb| BatchNorm2d::new(input_channels, vb, context))?;
    block.push(ReLU);
    block.push_with(&vb, |vb| {
        Conv2d::new(Conv2dSpec::new(input_channels, num_channels, 1), vb)
    })?;
    block.push(AvgPool2d::new(2, 2, 0));
    Ok(block)
}

/// The notebook's `DenseBlock(num_convs, input_channels, num_channels)`: conv blocks under
/// `net.<i>`, each seeing the concatenation of the input and every earlier output.
pub struct DenseBlock {
    input_channels: usize,
    growth: usize,
    net: SequentialT,
}

impl DenseBlock {
    /// `num_convs` conv blocks of `num_channels` each on `input_channels` channels.
    pub fn new(
        num_convs: usize,
        input_channels: usize,
        num_channels: usize,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let vb = vb.pp("net");
        let mut net = SequentialT::new();
        for i in 0..num_convs {
            net.push_with(&vb, |vb| {
                conv_block(num_channels * i + input_channels, num_channels, vb, context)
            })?;
        }
        Ok(Self {
            input_channels,
            growth: num_channels,
            net,
        })
    }

    /// Channels of the output: input plus one growth per conv block.
    pub fn out_channels(&self) -> usize {
        self.input_channels + self.growth * self.net.len()
    }
}

impl ModuleT for DenseBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        let mut x = x.clone();
        for block in self.net.layers() {
            let y = block.forward_t(&x, train)?;
            // [b, c + growth, h, w]
            x = Tensor::cat(&[&x, &y], 1)?;
        }
        Ok(x)
    }
}

impl Layer for DenseBlock {
    fn kind(&self) -> LayerKind {
        LayerKind::DenseBlock
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (b, h, w) = expect_nchw("DenseBlock", input, self.input_channels)?;
        Ok(vec![b, self.out_channels(), h, w])
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let mut x = input.clone();
        for block in self.net.layers() {
            let y = block.export(graph, &x)?;
            x = graph.concat(&[x, y])?;
        }
        Ok(x)
    }

    fn num_params(&self) -> usize {
        self.net.num_params()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let (b, h, w) = expect_nchw("DenseBlock", input, self.input_channels)?;
        let mut total = 0;
        for (i, block) in self.net.layers().iter().enumerate() {
            let block_macs = block.macs(&[b, self.input_channels + i * self.growth, h, w])?;
            total = zoo_nn::nn::mac_sum("DenseBlock", input, &[total, block_macs])?;
        }
        Ok(total)
    }
}

/// DenseNet's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseNetConfig {
    /// Channels after the stem.
    pub stem_channels: usize,
    /// Channels each convolution block adds.
    pub growth_rate: usize,
    /// Conv blocks in each dense block.
    pub num_convs_in_dense_blocks: Vec<usize>,
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
}

impl DenseNetConfig {
    /// The notebook's network: stem 64, growth 32, `[4, 4, 4, 4]`, 10 classes, 3x224x224.
    pub fn densenet() -> Self {
        Self {
            stem_channels: 64,
            growth_rate: 32,
            num_convs_in_dense_blocks: vec![4, 4, 4, 4],
            num_classes: 10,
            input: InputSpec::square(3, 224),
        }
    }
}

zoo_nn::impl_input_config!(DenseNetConfig);

/// DenseNet: `0` stem, dense and transition blocks alternating, then `BatchNorm2d`, `ReLU`,
/// `AdaptiveAvgPool2d`, `Flatten`, `Linear`.
pub struct DenseNet {
    config: DenseNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl DenseNet {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("DenseNet", &config.input, config.num_classes)?;
        let c = config;
        if c.num_convs_in_dense_blocks.is_empty() {
            candle_core::bail!("DenseNet: needs at least one dense block")
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        // b1: [b, 64, h/4, w/4]
        net.push_with(&vb, |vb| {
            conv7_stem(c.input.channels, c.stem_channels, true, vb, &context)
        })?;
        let mut channels = c.stem_channels;
        let last = c.num_convs_in_dense_blocks.len() - 1;
        for (i, &num_convs) in c.num_convs_in_dense_blocks.iter().enumerate() {
            net.push_with(&vb, |vb| {
                DenseBlock::new(num_convs, channels, c.growth_rate, vb, &context)
            })?;
            channels += num_convs * c.growth_rate;
            if i != last {
                // halves channels and resolution
                net.push_with(&vb, |vb| {
                    transition_block(channels, channels / 2, vb, &context)
                })?;
                channels /= 2;
            }
        }
        net.push_with(&vb, |vb| BatchNorm2d::new(channels, vb, &context))?;
        net.push(ReLU);
        net.push(AdaptiveAvgPool2d::new(1, 1));
        net.push(Flatten);
        net.push_with(&vb, |vb| Linear::new(channels, c.num_classes, vb))?;
        check_fits("DenseNet", &net, &c.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &DenseNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(DenseNet);

/// The notebook's DenseNet for `num_classes` classes on 3-channel images of any size (global
/// average pooling before the classifier; the config's 224 px only decides what
/// `zoo summary` prints).
pub fn densenet(num_classes: usize, vb: VarBuilder) -> Result<DenseNet> {
    DenseNet::new(
        &DenseNetConfig::densenet().with_num_classes(num_classes),
        vb,
    )
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/densenet_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/densenet_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::ModuleT;
    use zoo_nn::Model;
    use zoo_nn::testing::{
        check_backward_reaches_every_parameter, check_layer_shapes, test_input, test_store,
    };

    #[test]
    fn dense_and_transition_blocks_match_the_notebook() -> Result<()> {
        let x = test_input(&[4, 3, 8, 8], 0)?;
        for train in [true, false] {
            let blk = DenseBlock::new(
                2,
                3,
                10,
                test_store(0).var_builder(),
                &ForwardContext::default(),
            )?;
            let y = blk.forward_t(&x, train)?;
            assert_eq!(y.dims(), &[4, 23, 8, 8]);
            // The input passes through unchanged as the first channels.
            let head = (y.narrow(1, 0, 3)? - &x)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(head, 0.0);
            let trans = transition_block(
                23,
                10,
                test_store(0).var_builder(),
                &ForwardContext::default(),
            )?;
            assert_eq!(trans.forward_t(&y, train)?.dims(), &[4, 10, 4, 4]);
        }
        Ok(())
    }

    #[test]
    fn densenet_matches_the_notebook() -> Result<()> {
        let expected: &[(&str, &[usize])] = &[
            ("Sequential", &[128, 64, 56, 56]),
            ("DenseBlock", &[128, 192, 56, 56]),
            ("Sequential", &[128, 96, 28, 28]),
            ("DenseBlock", &[128, 224, 28, 28]),
            ("Sequential", &[128, 112, 14, 14]),
            ("DenseBlock", &[128, 240, 14, 14]),
            ("Sequential", &[128, 120, 7, 7]),
            ("DenseBlock", &[128, 248, 7, 7]),
            ("BatchNorm2d", &[128, 248, 7, 7]),
            ("ReLU", &[128, 248, 7, 7]),
            ("AdaptiveAvgPool2d", &[128, 248, 1, 1]),
            ("Flatten", &[128, 248]),
            ("Linear", &[128, 10]),
        ];
        let store = test_store(0);
        let net = DenseNet::new(&DenseNetConfig::densenet(), store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], expected, 2)?;
        assert_eq!(net.num_params(), 764_498);
        assert_eq!(store.num_trainable(), 764_498);
        Ok(())
    }

    #[test]
    fn small_input_trains() -> Result<()> {
        let store = test_store(3);
        let net = DenseNet::new(
            &DenseNetConfig::densenet().with_input_size(32),
            store.var_builder(),
        )?;
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 32, 32])
    }
}

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
