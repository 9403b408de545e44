//! The `--device` flag: `auto`, `cpu`, `cuda`, `cuda:N`.

use anyhow::{Context, Result, bail};
use candle_core::Device;

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
