//! zoo-nn: what a zoo network needs and nothing else.
//!
//! - [`nn`]: the layers candle 0.11.1 lacks (a `ModuleT` sequential container, padded and
//!   adaptive pooling with backward, seeded dropout, fused BatchNorm) behind one [`nn::Layer`]
//!   trait that derives shapes, parameters and MACs (their CPU kernels, as candle custom ops,
//!   are the `zoo-kernels` crate);
//! - [`init`]: seeded Xavier-uniform / PyTorch-default / Kaiming initialisation
//!   ([`init::ParamStore`]);
//! - [`rng`]: the portable seeded generator; [`context`]: a network's dropout generator and
//!   BatchNorm synchronisation group ([`ForwardContext`]), held by its layers;
//! - [`export`]: the evaluation-mode graph in ONNX's operators ([`nn::Layer::export`]);
//! - [`grad`]: [`grad::no_grad`], inference without recording the graph;
//! - [`model`] and [`summary`]: the [`Model`] trait and layer-by-layer summaries ([`table`]
//!   prints them).
//!
//! Training, data and checkpoints are `zoo-core`'s; a model crate depends on this crate only.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_nn::nn::{Conv2d, Conv2dSpec, Layer, MaxPool2d, ReLU, SequentialT};
//!
//! let store = ParamStore::new(42, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let vb = store.var_builder();
//! let mut net = SequentialT::new();
//! net.push_with(&vb, |vb| Conv2d::new(Conv2dSpec::new(3, 8, 3).padding(1), vb))?;
//! net.push(ReLU);
//! net.push(MaxPool2d::new(3, 2, 1));
//! assert_eq!(net.output_shape(&[2, 3, 32, 32])?, vec![2, 8, 16, 16]);
//! let y = net.forward_t(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(y.dims(), &[2, 8, 16, 16]);
//! assert_eq!(store.num_trainable(), 8 * 3 * 9 + 8);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod context;
pub mod export;
#[cfg(feature = "fixtures")]
pub mod fixture;
pub mod frozen;
pub mod grad;
pub mod init;
pub mod model;
pub mod nn;
pub mod rng;
pub mod scratch;
pub mod summary;
pub mod table;
pub mod testing;

pub use context::ForwardContext;
pub use model::{InputSpec, Model};

// Re-exported for the macros the model crates use.
pub use candle_core;
pub use candle_nn;
