//! The collective for how this process was launched: none alone, MPI under an MPI launcher,
//! NCCL under torchrun on GPUs; a clear error where the build or the device cannot serve the
//! launch.

use std::sync::Arc;

use candle_core::{Device, Result};
use zoo_core::distributed::Collective;

use crate::launch_env::{Launch, TorchrunEnv};

/// Joins the group of `launch` on `device`; `None` when this process trains alone.
pub fn connect(launch: &Launch, device: &Device) -> Result<Option<Arc<dyn Collective>>> {
    match launch {
        Launch::Single => Ok(None),
        Launch::Mpi { world_size, .. } => mpi(*world_size),
        Launch::Torchrun(env) => torchrun(env, device),
    }
}

#[cfg(feature = "mpi")]
fn mpi(_world_size: usize) -> Result<Option<Arc<dyn Collective>>> {
    Ok(Some(Arc::new(crate::mpi_backend::MpiCollective::init()?)))
}

#[cfg(not(feature = "mpi"))]
fn mpi(world_size: usize) -> Result<Option<Arc<dyn Collective>>> {
    candle_core::bail!(
        "this process was started by an MPI launcher (a world of {world_size}), but zoo was \
         built without the `mpi` feature: build it with `cargo build --release -p zoo-cli \
         --features mpi` (Open MPI: scripts/mpi-setup.sh)"
    )
}

fn torchrun(env: &TorchrunEnv, device: &Device) -> Result<Option<Arc<dyn Collective>>> {
    if !device.is_cuda() {
        candle_core::bail!(
            "started by torchrun (RANK={}, WORLD_SIZE={}) on the CPU: zoo's engine across CPU \
             processes is MPI; launch with `mpirun -np {} zoo train ...` or `zoo train \
             --nproc-per-node {} ...`, which does, or train on GPUs (--device cuda)",
            env.rank,
            env.world_size,
            env.world_size,
            env.world_size
        )
    }
    nccl(env, device)
}

#[cfg(feature = "nccl")]
fn nccl(env: &TorchrunEnv, device: &Device) -> Result<Option<Arc<dyn Collective>>> {
    Ok(Some(Arc::new(
        crate::nccl_backend::NcclCollective::from_torchrun(env, device)?,
    )))
}

#[cfg(not(feature = "nccl"))]
fn nccl(env: &TorchrunEnv, _device: &Device) -> Result<Option<Arc<dyn Collective>>> {
    candle_core::bail!(
        "started by torchrun (RANK={}, WORLD_SIZE={}) on a GPU, but zoo was built without the \
         `nccl` feature: build it with `--features nccl`",
        env.rank,
        env.world_size
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_needs_no_engine_and_torchrun_on_the_cpu_says_what_to_do() {
        assert!(connect(&Launch::Single, &Device::Cpu).unwrap().is_none());
        let env = TorchrunEnv {
            rank: 1,
            world_size: 2,
            local_rank: 1,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        };
        let e = match connect(&Launch::Torchrun(env), &Device::Cpu) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("torchrun on the CPU connected"),
        };
        assert!(e.contains("mpirun -np 2 zoo train"), "{e}");
    }
}
