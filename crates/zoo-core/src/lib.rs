//! zoo-core: training, data and checkpoints for zoo's networks, on top of `zoo-nn`.
//!
//! - [`data`]: datasets (IDX, CIFAR-10 binary, image folders, the hub), transforms
//!   (Resize/Normalize) and the seeded loader;
//! - [`train`]: the trainer, optimisers, schedules, EMA, checkpoints, metrics;
//! - [`distributed`]: data-parallel steps over a [`distributed::Collective`];
//! - [`plot`], [`canvas`]: figures; [`fs`]: atomic writes for every file a run produces;
//!   [`error`]: why data or a checkpoint could not be read, typed.
//!
//! The layers, initialisation, the [`Model`] trait and summaries are `zoo-nn`'s, re-exported
//! here under the same paths (`zoo_core::nn`, `zoo_core::init`, ...).

pub mod canvas;
pub mod data;
pub mod distributed;
pub mod error;
pub mod fs;
pub mod plot;
pub mod testing;
pub mod train;

pub use zoo_nn::{
    ForwardContext, InputSpec, Model, context, export, frozen, grad, impl_input_config, impl_model,
    init, model, nn, rng, summary, table,
};

// Re-exported for the macros the model crates use.
pub use candle_core;
pub use candle_nn;
