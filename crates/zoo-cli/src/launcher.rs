//! `--nproc-per-node N`, the convenience launcher: the same command again as N ranks, under
//! `mpirun` on the CPU (Open MPI: the `mpi` feature) or as N children with torchrun's
//! environment on GPUs (NCCL: the `nccl` feature), one GPU each.

use std::ffi::OsString;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The flag this launcher takes out of the command line it repeats.
const FLAG: &str = "--nproc-per-node";

/// Runs this process's command line again as `nproc` ranks on `device` (`cpu`, `auto`,
/// `cuda`...), waits for all, and fails if any rank failed. The CPU threads are split among
/// the ranks.
pub fn relaunch(nproc: usize, device: &str) -> Result<()> {
    if nproc == 0 {
        bail!("{FLAG} 0: expected at least one process")
    }
    if zoo_dist::Launch::from_env()?.is_distributed() {
        bail!("{FLAG} given to a process that is already one rank of a launch (mpirun or torchrun)")
    }
    let exe = std::env::current_exe().context("finding this program to start its ranks")?;
    let args = without_flag(std::env::args_os().skip(1).collect())?;
    let threads = (rayon::current_num_threads() / nproc).max(1);
    let gpus =
        device.starts_with("cuda") || (device == "auto" && candle_core::utils::cuda_is_available());
    if gpus {
        torchrun_style(nproc, &exe, &args, threads)
    } else {
        mpirun(nproc, &exe, &args, threads)
    }
}

/// `args` without `--nproc-per-node N` / `--nproc-per-node=N`.
pub fn without_flag(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(a) = iter.next() {
        if a == FLAG {
            iter.next()
                .with_context(|| format!("{FLAG} needs a value"))?;
        } else if !a.to_string_lossy().starts_with(&format!("{FLAG}=")) {
            out.push(a);
        }
    }
    Ok(out)
}

/// The CPU: `mpirun -np N` of the same command (Open MPI binds nothing, so each rank's
/// threads can spread).
fn mpirun(nproc: usize, exe: &std::path::Path, args: &[OsString], threads: usize) -> Result<()> {
    if !cfg!(feature = "mpi") {
        bail!(
            "{FLAG} {nproc} on the CPU runs the ranks under mpirun, and this zoo was built without \
             the `mpi` feature: build it with `--features mpi` (Open MPI: scripts/mpi-setup.sh)"
        )
    }
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", &nproc.to_string(), "--bind-to", "none"])
        .arg(exe)
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string());
    if running_as_root() {
        // Open MPI refuses root unless told; whoever runs zoo as root has chosen to.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    eprintln!("{FLAG} {nproc}: mpirun -np {nproc}, {threads} thread(s) per rank");
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!("starting mpirun: {e} (install Open MPI with scripts/mpi-setup.sh)")
    })?;
    if !status.success() {
        bail!("mpirun -np {nproc} failed ({status})")
    }
    Ok(())
}

/// GPUs: N children with torchrun's environment on this machine; rank 0 serves NCCL's id at
/// 127.0.0.1 on a free port. A rank that fails stops the others.
fn torchrun_style(
    nproc: usize,
    exe: &std::path::Path,
    args: &[OsString],
    threads: usize,
) -> Result<()> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks to meet at")?
        .port();
    eprintln!("{FLAG} {nproc}: {nproc} ranks, one GPU each, meeting at 127.0.0.1:{port}");
    let mut children: Vec<(usize, Child)> = Vec::new();
    for rank in 0..nproc {
        let child = Command::new(exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("RAYON_NUM_THREADS", threads.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank}"));
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
    }
    loop {
        let mut running = 0;
        for i in 0..children.len() {
            let (rank, child) = &mut children[i];
            match child
                .try_wait()
                .with_context(|| format!("waiting for rank {rank}"))?
            {
                None => running += 1,
                Some(status) if status.success() => {}
                Some(status) => {
                    let rank = *rank;
                    stop_all(&mut children);
                    bail!("rank {rank} of {nproc} failed ({status}); the others were stopped")
                }
            }
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, child) in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// True when this process runs as root (Linux: `/proc/self/status`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().next() == Some("0"))
    })
}
