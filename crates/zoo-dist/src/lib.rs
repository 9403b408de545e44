//! Data-parallel training on the engines users already run: MPI (`mpi` feature) for CPU
//! processes and clusters, NCCL (`nccl` feature) for GPUs, chosen from how the process was
//! launched (`mpirun`, `torchrun`, or zoo's own `--nproc-per-node`). Every backend implements
//! [`zoo_core::distributed::Collective`], which the trainer takes.

pub mod connect;
pub mod launch_env;
#[cfg(feature = "mpi")]
pub mod mpi_backend;
#[cfg(feature = "nccl")]
pub mod nccl_backend;
pub mod rendezvous;

pub use connect::connect;
pub use launch_env::{Launch, TorchrunEnv};
