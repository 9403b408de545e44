//! VGG (Simonyan & Zisserman, 2014), as defined in the reference notebook.
//!
//! A stack of VGG blocks (`num_convs` 3x3 convolutions with ReLU, then a 2x2 max pooling),
//! described by a `conv_arch` table, followed by three linear layers with dropout. The
//! notebook's VGG-11 and its "small" variant (every channel count divided by 4) are two
//! configurations of one implementation: [`VggConfig::vgg11`] and [`VggConfig::vgg11_small`]
//! (`vgg11().width_divisor(4)`). The first linear layer's width is derived from the
//! configured input size (`512 * 7 * 7` at 224 px).
//! [`tv`] holds torchvision's VGG-11 and VGG-16, with and without BatchNorm (adaptive pooling
//! to 7x7), named as torchvision's state dicts name them.
//!
//! # Shapes (VGG-11)
//! `[b, 3, 224, 224] -> [b, 64, 112, 112] -> ... -> [b, 512, 7, 7] -> [b, 25088] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_vgg::{Vgg, VggConfig};
//!
//! let config = VggConfig::vgg11_small().with_input_size(32);
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = Vgg::new(&config, store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod tv;

use candle_core::Result;
use candle_nn::VarBuilder;
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    Conv2dSpec, DropoutClassifier, Flatten, MaxPool2d, SequentialT, push_conv_relu,
    push_dropout_classifier,
};
use zoo_nn::{ForwardContext, InputSpec};

/// The notebook's `conv_arch`: `(num_convs, out_channels)` per block (VGG-11).
pub const VGG11_ARCH: [(usize, usize); 5] = [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)];

/// VGG's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VggConfig {
    /// `(num_convs, out_channels)` per block.
    pub arch: Vec<(usize, usize)>,
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
    /// Dropout probability in the classifier.
    pub dropout: f32,
    /// Width of the two hidden linear layers.
    pub hidden: usize,
}

impl VggConfig {
    /// The notebook's VGG-11: 10 classes, 3x224x224.
    pub fn vgg11() -> Self {
        Self {
            arch: VGG11_ARCH.to_vec(),
            num_classes: 10,
            input: InputSpec::square(3, 224),
            dropout: 0.5,
            hidden: 4096,
        }
    }

    /// The notebook's small VGG-11 (`small_conv_arch`, every width divided by 4): 10 classes,
    /// 3x224x224.
    pub fn vgg11_small() -> Self {
        Self::vgg11().width_divisor(4)
    }

    /// Divides every block's channel count (`pair[1] // ratio` in the notebook).
    pub fn width_divisor(mut self, ratio: usize) -> Self {
        for block in &mut self.arch {
            block.1 /= ratio.max(1);
        }
        self
    }
}

zoo_nn::impl_input_config!(VggConfig);

/// One VGG block: `num_convs` x (3x3 conv, ReLU), then `MaxPool2d(2, 2)`.
pub fn vgg_block(
    num_convs: usize,
    in_channels: usize,
    out_channels: usize,
    vb: VarBuilder,
) -> Result<SequentialT> {
    let mut block = SequentialT::new();
    let mut channels = in_channels;
    for _ in 0..num_convs {
        push_conv_relu(
            &mut block,
            &vb,
            Conv2dSpec::new(channels, out_channels, 3).padding(1),
        )?;
        channels = out_channels;
    }
    block.push(MaxPool2d::new(2, 2, 0));
    Ok(block)
}

/// VGG: blocks `0..n`, then `Flatten`, `Linear`, `ReLU`, `Dropout`, `Linear`, `ReLU`,
/// `Dropout`, `Linear`. Weights `0.0.weight` (first conv), `6.weight` (first linear, VGG-11).
pub struct Vgg {
    config: VggConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl Vgg {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &VggConfig, vb: VarBuilder) -> Result<Self> {
        check_config("VGG", &config.input, config.num_classes)?;
        let c = config;
        if c.arch.is_empty() || c.arch.iter().any(|&(n, ch)| n == 0 || ch == 0) {
            candle_core::bail!(
                "VGG: every block needs at least one convolution and one channel, got {:?}",
                c.arch
            )
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        let mut channels = c.input.channels;
        for &(num_convs, out_channels) in &c.arch {
            net.push_with(&vb, |vb| vgg_block(num_convs, channels, out_channels, vb))?;
            channels = out_channels;
        }
        net.push(Flatten);
        // [b, 512, 7, 7] -> [b, 25088] at 224 px
        let features = check_fits("VGG", &net, &c.input)?[1];
        let head = DropoutClassifier::new(c.hidden, c.num_classes, c.dropout);
        push_dropout_classifier(&mut net, &vb, &context, features, head)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &VggConfig {
        &self.config
    }
}

zoo_nn::impl_model!(Vgg);

/// The notebook's VGG-11 for `num_classes` classes: 3x224x224 input (its first linear layer
/// is sized for it; [`VggConfig::with_input_size`] builds another).
pub fn vgg11(num_classes: usize, vb: VarBuilder) -> Result<Vgg> {
    Vgg::new(&VggConfig::vgg11().with_num_classes(num_classes), vb)
}

/// The notebook's small VGG-11 (every width divided by 4) for `num_classes` classes:
/// 3x224x224 input ([`VggConfig::with_input_size`] builds another).
pub fn vgg11_small(num_classes: usize, vb: VarBuilder) -> Result<Vgg> {
    Vgg::new(&VggConfig::vgg11_small().with_num_classes(num_classes), vb)
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/vgg_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/vgg_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;

    use zoo_nn::Model;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, check_layer_shapes, test_store};

    const TAIL: [(&str, &[usize]); 7] = [
        ("Linear", &[128, 4096]),
        ("ReLU", &[128, 4096]),
        ("Dropout", &[128, 4096]),
        ("Linear", &[128, 4096]),
        ("ReLU", &[128, 4096]),
        ("Dropout", &[128, 4096]),
        ("Linear", &[128, 10]),
    ];

    fn with_tail(
        head: &[(&'static str, &'static [usize])],
    ) -> Vec<(&'static str, &'static [usize])> {
        head.iter().copied().chain(TAIL).collect()
    }

    #[test]
    fn vgg11_matches_the_notebook() -> Result<()> {
        let expected = with_tail(&[
            ("Sequential", &[128, 64, 112, 112]),
            ("Sequential", &[128, 128, 56, 56]),
            ("Sequential", &[128, 256, 28, 28]),
            ("Sequential", &[128, 512, 14, 14]),
            ("Sequential", &[128, 512, 7, 7]),
            ("Flatten", &[128, 25088]),
        ]);
        let store = test_store(0);
        let net = Vgg::new(&VggConfig::vgg11(), store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], &expected, 1)?;
        // Conv: 1,792 + 73,856 + 295,168 + 590,080 + 1,180,160 + 2,359,808 * 3 = 9,220,480;
        // Linear: 25088*4096+4096 + 4096*4096+4096 + 40,970 = 119,586,826.
        assert_eq!(net.num_params(), 128_807_306);
        assert_eq!(store.num_trainable(), 128_807_306);
        Ok(())
    }

    #[test]
    fn vgg11_small_matches_the_notebook_and_trains() -> Result<()> {
        let expected = with_tail(&[
            ("Sequential", &[128, 16, 112, 112]),
            ("Sequential", &[128, 32, 56, 56]),
            ("Sequential", &[128, 64, 28, 28]),
            ("Sequential", &[128, 128, 14, 14]),
            ("Sequential", &[128, 128, 7, 7]),
            ("Flatten", &[128, 6272]),
        ]);
        let config = VggConfig::vgg11_small();
        assert_eq!(
            config.arch,
            vec![(1, 16), (1, 32), (2, 64), (2, 128), (2, 128)]
        );
        let store = test_store(0);
        let net = Vgg::new(&config, store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], &expected, 2)?;
        assert_eq!(net.num_params(), 43_093_610);

        let small_store = test_store(0);
        let small = Vgg::new(
            &config.clone().with_input_size(32),
            small_store.var_builder(),
        )?;
        check_backward_reaches_every_parameter(&small_store, &small, &[2, 3, 32, 32])?;
        let err = Vgg::new(&config.with_input_size(16), test_store(0).var_builder())
            .err()
            .expect("16 px is too small for five 2x2 poolings");
        assert!(
            err.to_string().contains("VGG: input 3x16x16 is too small"),
            "{err}"
        );
        Ok(())
    }
}

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
