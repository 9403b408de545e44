//! Network in Network (Lin, Chen & Yan, 2013), as defined in the reference notebook.
//!
//! Four NiN blocks (a convolution followed by two 1x1 convolutions, each with ReLU), max
//! pooling between them, dropout, and global average pooling instead of linear layers: the
//! last block has one channel per class. The notebook builds it for 3-channel CIFAR-10 and
//! 1-channel MNIST (`nin_net(init=1)`); both are [`NinConfig`]s.
//!
//! # Shapes
//! `[b, 3, 224, 224] -> [b, 96, 54, 54] -> [b, 96, 26, 26] -> ... -> [b, 10, 5, 5] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_nin::{Nin, NinConfig};
//!
//! let config = NinConfig::nin_mnist().with_input_size(67);
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = Nin::new(&config, store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 1, 67, 67), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

use candle_core::Result;
use candle_nn::VarBuilder;
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, Conv2dSpec, Dropout, Flatten, MaxPool2d, SequentialT, push_conv_relu,
};
use zoo_nn::{ForwardContext, InputSpec};

/// NiN's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NinConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
    /// Dropout probability in the classifier.
    pub dropout: f32,
}

impl NinConfig {
    /// The notebook's CIFAR-10 network: `nin_net()`, 3x224x224, 10 classes.
    pub fn nin() -> Self {
        Self {
            num_classes: 10,
            input: InputSpec::square(3, 224),
            dropout: 0.5,
        }
    }

    /// The notebook's MNIST network: `nin_net(init=1)`, 1x224x224, 10 classes.
    pub fn nin_mnist() -> Self {
        Self {
            input: InputSpec::square(1, 224),
            ..Self::nin()
        }
    }
}

zoo_nn::impl_input_config!(NinConfig);

/// `nin_block`: `Conv2d(in, out, k, s, p)`, `ReLU`, then twice `Conv2d(out, out, 1)`, `ReLU`.
pub fn nin_block(spec: Conv2dSpec, vb: VarBuilder) -> Result<SequentialT> {
    let mut block = SequentialT::new();
    let out = spec.out_channels;
    push_conv_relu(&mut block, &vb, spec)?;
    push_conv_relu(&mut block, &vb, Conv2dSpec::new(out, out, 1))?;
    push_conv_relu(&mut block, &vb, Conv2dSpec::new(out, out, 1))?;
    Ok(block)
}

/// NiN: `0` block, `1` pool, `2` block, `3` pool, `4` block, `5` pool, `6` dropout,
/// `7` block, `8` global average pool, `9` flatten.
pub struct Nin {
    config: NinConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl Nin {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &NinConfig, vb: VarBuilder) -> Result<Self> {
        check_config("NiN", &config.input, config.num_classes)?;
        let c = config;
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        net.push_with(&vb, |vb| {
            nin_block(Conv2dSpec::new(c.input.channels, 96, 11).stride(4), vb)
        })?;
        net.push(MaxPool2d::new(3, 2, 0));
        net.push_with(&vb, |vb| {
            nin_block(Conv2dSpec::new(96, 256, 5).padding(2), vb)
        })?;
        net.push(MaxPool2d::new(3, 2, 0));
        net.push_with(&vb, |vb| {
            nin_block(Conv2dSpec::new(256, 384, 3).padding(1), vb)
        })?;
        net.push(MaxPool2d::new(3, 2, 0));
        net.push(Dropout::new(c.dropout, &context)?);
        net.push_with(&vb, |vb| {
            nin_block(Conv2dSpec::new(384, c.num_classes, 3).padding(1), vb)
        })?;
        net.push(AdaptiveAvgPool2d::new(1, 1));
        net.push(Flatten);
        check_fits("NiN", &net, &c.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &NinConfig {
        &self.config
    }
}

zoo_nn::impl_model!(Nin);

/// The notebook's NiN for `num_classes` classes on 3-channel images. Its head is a
/// convolution and a global average pooling: any input its pools fit works (the config's
/// 224 px only decides what `zoo summary` prints).
pub fn nin(num_classes: usize, vb: VarBuilder) -> Result<Nin> {
    Nin::new(&NinConfig::nin().with_num_classes(num_classes), vb)
}

/// The notebook's NiN for 1-channel images (MNIST), `num_classes` classes, any size its pools fit.
pub fn nin_mnist(num_classes: usize, vb: VarBuilder) -> Result<Nin> {
    Nin::new(&NinConfig::nin_mnist().with_num_classes(num_classes), vb)
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/nin_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/nin_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;

    use zoo_nn::Model;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, check_layer_shapes, test_store};

    const NOTEBOOK_SHAPES: &[(&str, &[usize])] = &[
        ("Sequential", &[128, 96, 54, 54]),
        ("MaxPool2d", &[128, 96, 26, 26]),
        ("Sequential", &[128, 256, 26, 26]),
        ("MaxPool2d", &[128, 256, 12, 12]),
        ("Sequential", &[128, 384, 12, 12]),
        ("MaxPool2d", &[128, 384, 5, 5]),
        ("Dropout", &[128, 384, 5, 5]),
        ("Sequential", &[128, 10, 5, 5]),
        ("AdaptiveAvgPool2d", &[128, 10, 1, 1]),
        ("Flatten", &[128, 10]),
    ];

    #[test]
    fn cifar_and_mnist_variants_match_the_notebook() -> Result<()> {
        let store = test_store(0);
        let net = Nin::new(&NinConfig::nin(), store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], NOTEBOOK_SHAPES, 2)?;
        // Block 1: 3*96*121+96 + 2*(96*96+96); block 2: 96*256*25+256 + 2*(256*256+256);
        // block 3: 256*384*9+384 + 2*(384*384+384); block 4: 384*10*9+10 + 2*(10*10+10).
        assert_eq!(net.num_params(), 2_015_398);
        let mnist = Nin::new(&NinConfig::nin_mnist(), test_store(0).var_builder())?;
        check_layer_shapes(&mnist, [1, 224, 224], NOTEBOOK_SHAPES, 1)?;
        // Only the first convolution changes: 2 * 96 * 121 weights fewer.
        assert_eq!(mnist.num_params(), 2_015_398 - 2 * 96 * 121);
        assert_eq!(mnist.num_params(), 1_992_166);
        Ok(())
    }

    #[test]
    fn small_input_trains_and_too_small_is_an_error() -> Result<()> {
        let store = test_store(1);
        let net = Nin::new(
            &NinConfig::nin_mnist().with_input_size(67),
            store.var_builder(),
        )?;
        check_backward_reaches_every_parameter(&store, &net, &[2, 1, 67, 67])?;
        let err = Nin::new(
            &NinConfig::nin_mnist().with_input_size(28),
            test_store(0).var_builder(),
        )
        .err()
        .expect("28 px is too small");
        assert!(
            err.to_string().contains("NiN: input 1x28x28 is too small"),
            "{err}"
        );
        Ok(())
    }
}

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
