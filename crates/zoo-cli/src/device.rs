//! The `--device` flag: `auto`, `cpu`, `cuda`, `cuda:N`.

use anyhow::{Context, Result, bail};
use candle_core::Device;

/// The device of a data-parallel rank: `cuda` and `auto` (on a CUDA machine) mean the GPU of
/// the rank's place on its machine, `cuda:<local_rank>`, as torchrun's `LOCAL_RANK` does;
/// otherwise [`parse_device`].
pub fn parse_device_for_rank(spec: &str, local_rank: usize) -> Result<Device> {
    match spec {
        "cuda" if local_rank > 0 => Device::new_cuda(local_rank).with_context(|| {
            format!("--device cuda for local rank {local_rank} (cuda:{local_rank})")
        }),
        "auto" if local_rank > 0 && candle_core::utils::cuda_is_available() => {
            Device::new_cuda(local_rank).with_context(|| format!("cuda:{local_rank}"))
        }
        other => parse_device(other),
    }
}

/// `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "auto" => Ok(Device::cuda_if_available(0)?),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda (build with `--features cuda`)"),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).with_context(|| format!("--device {other}")),
            _ => bail!("--device `{other}`: expected auto, cpu, cuda or cuda:N"),
        },
    }
}
