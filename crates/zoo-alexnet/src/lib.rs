//! AlexNet (Krizhevsky, Sutskever & Hinton, 2012), as defined in the reference notebook.
//!
//! Five convolutions and three linear layers with dropout, for CIFAR-10 resized to 224 px.
//! The first linear layer's width is derived from the configured input size (6400 at
//! 224 px), so the network can be built for any input large enough for its three poolings.
//! [`tv`] holds torchvision's AlexNet (64-192-384-256-256 channels, adaptive pooling to 6x6),
//! named as torchvision's state dicts name it.
//!
//! # Shapes
//! `[b, 3, 224, 224] -> [b, 96, 54, 54] -> [b, 96, 26, 26] -> [b, 256, 12, 12] -> [b, 256, 5, 5]
//! -> [b, 6400] -> [b, 4096] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_alexnet::{AlexNet, AlexNetConfig};
//! use zoo_nn::init::{InitScheme, ParamStore};
//!
//! let config = AlexNetConfig::alexnet().with_input_size(67);
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = AlexNet::new(&config, store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 3, 67, 67), DType::F32, &Device::Cpu)?, false)?;
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

/// AlexNet's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AlexNetConfig {
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
    /// Dropout probability in the classifier.
    pub dropout: f32,
    /// Width of the two hidden linear layers.
    pub hidden: usize,
}

impl AlexNetConfig {
    /// The notebook's network: 10 classes, 3x224x224 input, dropout 0.5, 4096 hidden units.
    pub fn alexnet() -> Self {
        Self {
            num_classes: 10,
            input: InputSpec::square(3, 224),
            dropout: 0.5,
            hidden: 4096,
        }
    }
}

zoo_nn::impl_input_config!(AlexNetConfig);

/// AlexNet: one flat `Sequential` of 21 layers, weights named `0.weight` ... `20.bias`.
pub struct AlexNet {
    config: AlexNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl AlexNet {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &AlexNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("AlexNet", &config.input, config.num_classes)?;
        let c = &config;
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        push_conv_relu(
            &mut net,
            &vb,
            Conv2dSpec::new(c.input.channels, 96, 11)
                .stride(4)
                .padding(1),
        )?;
        net.push(MaxPool2d::new(3, 2, 0));
        push_conv_relu(&mut net, &vb, Conv2dSpec::new(96, 256, 5).padding(2))?;
        net.push(MaxPool2d::new(3, 2, 0));
        push_conv_relu(&mut net, &vb, Conv2dSpec::new(256, 384, 3).padding(1))?;
        push_conv_relu(&mut net, &vb, Conv2dSpec::new(384, 384, 3).padding(1))?;
        push_conv_relu(&mut net, &vb, Conv2dSpec::new(384, 256, 3).padding(1))?;
        net.push(MaxPool2d::new(3, 2, 0));
        net.push(Flatten);
        // [b, 256, 5, 5] -> [b, 6400] at 224 px
        let features = check_fits("AlexNet", &net, &c.input)?[1];
        let head = DropoutClassifier::new(c.hidden, c.num_classes, c.dropout);
        push_dropout_classifier(&mut net, &vb, &context, features, head)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &AlexNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(AlexNet);

/// The notebook's AlexNet for `num_classes` classes: 3x224x224 input (its first linear layer
/// is sized for it; [`AlexNetConfig::with_input_size`] builds another).
pub fn alexnet(num_classes: usize, vb: VarBuilder) -> Result<AlexNet> {
    AlexNet::new(&AlexNetConfig::alexnet().with_num_classes(num_classes), vb)
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/alexnet_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/alexnet_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::ModuleT;
    use zoo_nn::Model;
    use zoo_nn::testing::{check_backward_reaches_every_parameter, check_layer_shapes, test_store};

    /// The notebook's `for layer in alex` table for a 128x3x224x224 input.
    const NOTEBOOK_SHAPES: &[(&str, &[usize])] = &[
        ("Conv2d", &[128, 96, 54, 54]),
        ("ReLU", &[128, 96, 54, 54]),
        ("MaxPool2d", &[128, 96, 26, 26]),
        ("Conv2d", &[128, 256, 26, 26]),
        ("ReLU", &[128, 256, 26, 26]),
        ("MaxPool2d", &[128, 256, 12, 12]),
        ("Conv2d", &[128, 384, 12, 12]),
        ("ReLU", &[128, 384, 12, 12]),
        ("Conv2d", &[128, 384, 12, 12]),
        ("ReLU", &[128, 384, 12, 12]),
        ("Conv2d", &[128, 256, 12, 12]),
        ("ReLU", &[128, 256, 12, 12]),
        ("MaxPool2d", &[128, 256, 5, 5]),
        ("Flatten", &[128, 6400]),
        ("Linear", &[128, 4096]),
        ("ReLU", &[128, 4096]),
        ("Dropout", &[128, 4096]),
        ("Linear", &[128, 4096]),
        ("ReLU", &[128, 4096]),
        ("Dropout", &[128, 4096]),
        ("Linear", &[128, 10]),
    ];

    #[test]
    fn notebook_shapes_and_parameter_count() -> Result<()> {
        let store = test_store(0);
        let net = AlexNet::new(&AlexNetConfig::alexnet(), store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], NOTEBOOK_SHAPES, 2)?;
        // Conv: 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992;
        // Linear: 6400*4096+4096 + 4096*4096+4096 + 4096*10+10.
        assert_eq!(net.num_params(), 46_787_978);
        assert_eq!(store.num_trainable(), 46_787_978);
        Ok(())
    }

    #[test]
    fn linear_width_follows_input_size_and_small_inputs_are_named_errors() -> Result<()> {
        // 67 px: conv1 15, pool 7, pool 3, pool 1 -> 256 features.
        let store = test_store(0);
        let config = AlexNetConfig::alexnet().with_input_size(67);
        let net = AlexNet::new(&config, store.var_builder())?;
        assert_eq!(net.output_shape(&[4, 3, 67, 67])?, vec![4, 10]);
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 67, 67])?;
        let err = AlexNet::new(
            &AlexNetConfig::alexnet().with_input_size(32),
            test_store(0).var_builder(),
        )
        .err()
        .expect("32 px is too small for AlexNet");
        assert!(
            err.to_string()
                .contains("AlexNet: input 3x32x32 is too small"),
            "{err}"
        );
        // An image of another size than configured is an error naming the first linear layer.
        let err = net
            .forward_t(&zoo_nn::testing::test_input(&[1, 3, 99, 99], 0)?, false)
            .unwrap_err();
        assert!(err.to_string().contains("Linear `14`"), "{err}");
        Ok(())
    }
}

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
