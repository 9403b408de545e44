//! The `zoo` command: list and summarise the models, train, evaluate, predict, convert
//! weights, show a batch, check a GPU. [`cli`] is the command line; each command's work is one
//! `run` in [`commands`].

mod cli;
mod commands;

use anyhow::Result;

use cli::{Cli, Command};

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
        Command::List => commands::list::run(),
        Command::Summary { model, input, json } => {
            commands::summary::run(&model, input.as_deref(), json)
        }
        Command::Train(args) => commands::train::run(&args),
        Command::Eval {
            checkpoint,
            dataset,
            data_dir,
            split,
            device,
            flip,
        } => commands::eval::run(
            &checkpoint,
            dataset,
            data_dir.as_deref(),
            split.into(),
            &device,
            flip,
        ),
        Command::Predict {
            checkpoint,
            images,
            json,
            device,
        } => commands::predict::run(&checkpoint, &images, json, &device),
        Command::Convert(args) => commands::convert::run(&args),
        Command::Export { checkpoint, onnx } => {
            zoo_cli::onnx::export_onnx(&checkpoint, &onnx)?;
            println!("wrote {}", onnx.display());
            Ok(())
        }
        Command::DeviceCheck(args) => commands::device_check::run(&args),
        Command::ShowBatch {
            dataset,
            data_dir,
            seed,
            out,
        } => commands::show_batch::run(&dataset, data_dir.as_deref(), seed, &out),
    }
}
