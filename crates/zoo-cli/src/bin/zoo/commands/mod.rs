//! One module per `zoo` command, each with one `run`.

pub mod convert;
pub mod device_check;
pub mod eval;
pub mod list;
pub mod predict;
pub mod show_batch;
pub mod summary;
pub mod train;
