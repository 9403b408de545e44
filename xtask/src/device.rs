//! `cargo xtask device-check`: builds the CUDA binary of the device check (features cuda, cudnn and
//! nccl, against the registry-made build root of scripts/cuda-setup.sh) into `.devbin/`, for
//! scripts/device-check.sh on a GPU machine.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Runs `script` in bash at `root`, failing with `what` when it fails.
fn bash(root: &Path, what: &str, script: &str) -> Result<()> {
    let status = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(root)
        .status()
        .with_context(|| format!("starting bash for {what}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Builds `.devbin/zoo.xz` (stripped, xz-compressed) and `.devbin/COMMIT`.
pub fn prepare(root: &Path) -> Result<()> {
    bash(
        root,
        "scripts/cuda-setup.sh",
        "bash scripts/cuda-setup.sh target/cuda13",
    )?;
    // Its own target folder: the CPU build in target/release stays as it is.
    bash(
        root,
        "the CUDA build",
        ". target/cuda13/env.sh && cargo build --release --locked -p zoo-cli --bin zoo \
         --features cuda,cudnn,nccl --target-dir target/cuda",
    )?;
    let devbin = root.join(".devbin");
    std::fs::create_dir_all(&devbin).with_context(|| format!("creating {}", devbin.display()))?;
    bash(
        root,
        "packing .devbin/zoo.xz",
        "strip -o .devbin/zoo target/cuda/release/zoo && xz -T2 -f .devbin/zoo && \
         (git rev-parse --short HEAD 2>/dev/null || echo unknown) > .devbin/COMMIT && \
         { grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo /.devbin/ >> .git/info/exclude; }",
    )?;
    println!(
        "wrote .devbin/zoo.xz; on the GPU machine (device tool, carry [\".devbin\"]): \
         bash scripts/device-check.sh   (results in $OUT/gpu.md, then into docs/gpu.md)"
    );
    Ok(())
}
