//! Project automation for zoo (`cargo xtask <command>`): the training matrix, documentation
//! generated from the registry, the local data folder, benchmarks, the device check's build.
//!
//! `main.rs` dispatches; [`flags`] is the command line; one module per task: [`train_all`],
//! [`data`], [`docs`], [`bench`](mod@bench), [`device`], [`dist_check`]; [`machine`] says where a figure was measured.

mod bench;
mod data;
mod device;
mod dist_check;
mod docs;
mod flags;
mod machine;
mod train_all;

use std::path::PathBuf;

use anyhow::Result;

use flags::{Bench, Cli, Command};

/// mimalloc keeps freed tensor buffers mapped: glibc's malloc returns each large buffer to the
/// OS and every training step page-faults it back in (1.3-1.6x slower steps for AlexNet and
/// VGG, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { zoo_cli::runtime::run_main(run) }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::DeviceCheck => device::prepare(&project_root())?,
        Command::Docs => docs::run()?,
        Command::DistCheck(check) => {
            machine::print_machine();
            dist_check::run(&check)?
        }
        Command::TrainAll {
            matrix,
            data_dir,
            device,
            only,
            update_docs,
            nproc_per_node,
        } => match nproc_per_node {
            Some(n) => zoo_cli::launcher::relaunch(n, &device)?,
            None => train_all::run(matrix, data_dir, device, only, update_docs)?,
        },
        Command::MakeSample { data_dir } => {
            data::make_sample(&zoo_core::data::resolve::data_root(data_dir.as_deref()))?
        }
        Command::Data { data_dir } => data::prepare_data(
            &data::shared_data(),
            &zoo_core::data::resolve::data_root(data_dir.as_deref()),
        )?,
        Command::Bench { what } => run_bench(what)?,
    }
    Ok(())
}

/// `bench`: the machine described, then the benchmark `what` names.
fn run_bench(what: Bench) -> Result<()> {
    machine::print_machine();
    match what {
        Bench::Ops {
            steps,
            torch,
            only,
            cases,
        } => bench::ops::run(steps, torch.as_deref(), only.as_deref(), cases.as_deref())?,
        Bench::Models {
            batch_size,
            steps,
            only,
            reference,
            torch,
            repeat,
            infer_only,
            peer,
        } => {
            anyhow::ensure!(
                torch.is_some() || peer == bench::torch::Peer::Torch,
                "bench models --peer {}: give --torch PYTHON, the Python that runs the peer",
                peer.flag()
            );
            bench::models::run(
                batch_size,
                steps,
                only.as_deref(),
                reference,
                torch.as_deref().map(|python| (python, peer)),
                repeat,
                infer_only,
            )?
        }
        Bench::Data {
            data_dir,
            batch_size,
        } => bench::data::run(
            &zoo_core::data::resolve::data_root(data_dir.as_deref()),
            batch_size,
        )?,
    }
    Ok(())
}

/// The repository root, found from this crate's manifest directory.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}
