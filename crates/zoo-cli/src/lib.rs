//! zoo-cli: the registry of every zoo model and the code behind the `zoo` command.

pub mod convert;
pub mod device;
pub mod device_check;
pub mod eval;
pub mod finetune;
pub mod launcher;
pub mod loaded_model;
pub mod matrix;
pub mod onnx;
pub mod predict;
pub mod progress;
pub mod recipe;
pub mod registry;
pub mod run_config;
pub mod run_folder;
pub mod run_lock;
pub mod runtime;
pub mod show_batch;
pub mod state_dict;
pub mod summary_cmd;
pub mod torch_bench;
pub mod training;

pub use registry::{ModelEntry, find, registry};
