//! What every zoo network shares: the [`Model`] trait and the input it is configured for.

use candle_core::Result;
use candle_nn::ModuleT;
use serde::{Deserialize, Serialize};

use crate::context::ForwardContext;
use crate::nn::{Layer, SequentialT};

/// Image input a network is built for: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputSpec {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// A square image.
    pub const fn square(channels: usize, size: usize) -> Self {
        Self::new(channels, size, size)
    }

    /// `[batch, channels, height, width]`.
    pub fn batched(&self, batch: usize) -> [usize; 4] {
        [batch, self.channels, self.height, self.width]
    }
}

impl std::fmt::Display for InputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// A complete image classifier. Its top level is a [`SequentialT`] in the notebook's sense:
/// the entries the notebook's `for layer in net` loop prints, named `0`, `1`, ...
pub trait Model: ModuleT + Send + Sync {
    /// The top-level layers.
    fn body(&self) -> &SequentialT;

    /// The input the network was configured for.
    fn input(&self) -> InputSpec;

    /// Number of output classes.
    fn num_classes(&self) -> usize;

    /// What the training forward draws on besides the weights: the dropout generator and
    /// BatchNorm's synchronisation group, shared by every layer of the network.
    fn context(&self) -> &ForwardContext;

    /// Trainable parameters.
    fn num_params(&self) -> usize {
        self.body().num_params()
    }

    /// Output shape for an input shape, derived without running the network.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.body().output_shape(input)
    }
}

/// Checks a configuration's common fields, naming the network.
pub fn check_config(network: &str, input: &InputSpec, num_classes: usize) -> Result<()> {
    if input.channels == 0 || input.height == 0 || input.width == 0 {
        candle_core::bail!("{network}: input {input} has an empty dimension")
    }
    if num_classes == 0 {
        candle_core::bail!("{network}: num_classes must be at least 1")
    }
    Ok(())
}

/// Checks that `net` accepts `input`, naming the network and the first layer that does not.
pub fn check_fits(network: &str, net: &SequentialT, input: &InputSpec) -> Result<Vec<usize>> {
    net.output_shape(&input.batched(1))
        .map_err(|e| candle_core::Error::Msg(format!("{network}: input {input} is too small: {e}")))
}

/// Implements `ModuleT` (through the top-level `net`) and [`Model`] for a network struct with
/// fields `config` (holding `input` and `num_classes`), `net: SequentialT` and
/// `context: ForwardContext`.
#[macro_export]
macro_rules! impl_model {
    ($model:ty) => {
        impl $crate::candle_nn::ModuleT for $model {
            fn forward_t(
                &self,
                xs: &$crate::candle_core::Tensor,
                train: bool,
            ) -> $crate::candle_core::Result<$crate::candle_core::Tensor> {
                $crate::candle_nn::ModuleT::forward_t(&self.net, xs, train)
            }
        }

        impl $crate::Model for $model {
            fn body(&self) -> &$crate::nn::SequentialT {
                &self.net
            }
            fn input(&self) -> $crate::InputSpec {
                self.config.input
            }
            fn num_classes(&self) -> usize {
                self.config.num_classes
            }
            fn context(&self) -> &$crate::ForwardContext {
                &self.context
            }
        }
    };
}

/// The builder methods every network configuration shares (`with_num_classes`, `with_input`,
/// `with_input_size`), for a struct with fields `input: InputSpec` and `num_classes`.
#[macro_export]
macro_rules! impl_input_config {
    ($config:ty) => {
        impl $config {
            /// The same network for `num_classes` classes.
            pub fn with_num_classes(mut self, num_classes: usize) -> Self {
                self.num_classes = num_classes;
                self
            }

            /// The same network for another input (channels, height, width).
            pub fn with_input(mut self, input: $crate::InputSpec) -> Self {
                self.input = input;
                self
            }

            /// A square input with the same channel count.
            pub fn with_input_size(mut self, size: usize) -> Self {
                self.input.height = size;
                self.input.width = size;
                self
            }
        }
    };
}
