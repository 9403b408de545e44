//! `zoo train`: one model trained into its run folder, with a progress display.

use std::path::PathBuf;

use anyhow::Result;
use zoo_cli::device::parse_device_for_rank;
use zoo_cli::progress::Progress;
use zoo_cli::run_config::{RunConfig, RunSpec};
use zoo_cli::training::{Placement, run_training};
use zoo_core::data::resolve::data_root;
use zoo_core::train::trainer::Outcome;

use crate::cli::TrainArgs;

/// Resolves the flags against the recipe, trains (alone, or as this launch's rank), and says
/// where the outputs are.
pub fn run(args: &TrainArgs) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        return zoo_cli::launcher::relaunch(n, &args.device);
    }
    let launch = zoo_dist::Launch::from_env()?;
    let config = run_config(args)?;
    let device = parse_device_for_rank(&config.device, launch.local_rank())?;
    let collective = zoo_dist::connect(&launch, &device)?;
    let placement = Placement::joined(collective, args.sync_bn, launch.local_rank(), device);
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!("runs/single/{}-{}", config.model, config.dataset))
    });
    let root = data_root(args.data_dir.as_deref());
    let label = format!("{}-{}", config.model, config.dataset);
    match run_training(
        &config,
        &root,
        &run_dir,
        args.resume,
        &placement,
        &mut Progress::new(&label).quiet_unless(placement.is_writer()),
    )? {
        _ if !placement.is_writer() => {}
        Outcome::Finished(metrics) => {
            let best = metrics.iter().map(|m| m.valid_acc).fold(0.0, f64::max);
            println!(
                "done: best valid accuracy {best:.4}; outputs in {}",
                run_dir.display()
            );
        }
        Outcome::Interrupted { epoch, batch } => {
            println!("stopped at epoch {epoch} batch {batch}")
        }
    }
    Ok(())
}

/// The run configuration the flags give: the recipe's, with each set flag overriding its field.
fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    RunSpec {
        model: Some(a.model.clone()),
        recipe: Some(a.recipe),
        ..a.spec.clone()
    }
    .resolve(&a.device)
}
