//! `zoo device-check`: the prepared GPU check (scripts/device-check.sh) or its CPU self-test,
//! its report written, and a failure when a comparison is outside its tolerance.

use anyhow::Result;
use zoo_cli::ModelEntry;
use zoo_cli::device_check::{CheckOptions, EpochCheck, Target, markdown, run_check};

use crate::cli::DeviceCheckArgs;

/// Runs the check the flags describe.
pub fn run(args: &DeviceCheckArgs) -> Result<()> {
    let target = if args.self_test {
        Target::CpuReference
    } else {
        Target::Device(zoo_cli::device::parse_device(&args.device)?)
    };
    let models = chosen_models(args)?;
    if args.print_cases {
        let cases: Vec<String> = models
            .iter()
            .map(|e| format!("{}:{}", e.name, e.reference_input.height))
            .collect();
        println!("{}", cases.join(","));
        return Ok(());
    }
    let epoch = epoch_check(args)?;
    let options = CheckOptions {
        target,
        models,
        batch: args.batch,
        timing: args.time_batch.map(|b| (b, args.warmup, args.steps)),
        torch_results: args.torch_results.clone(),
        epoch,
    };
    let report = run_check(&options)?;
    write_report(args, &markdown(&report, &args.header))?;
    let failed = report.failures();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} comparisons outside the tolerance: {}",
        failed.len(),
        report.parity.len(),
        failed
            .iter()
            .map(|p| p.model)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The models `--models` names (comma-separated), or every notebook model of the registry.
fn chosen_models(args: &DeviceCheckArgs) -> Result<Vec<&'static ModelEntry>> {
    Ok(match &args.models {
        Some(list) => list
            .split(',')
            .map(|name| zoo_cli::find(name.trim()).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?,
        None => zoo_cli::registry()
            .iter()
            .filter(|e| e.origin == zoo_cli::registry::Origin::Notebook)
            .collect(),
    })
}

/// The timed epoch the flags ask for (none with `--epoch-images 0`).
fn epoch_check(args: &DeviceCheckArgs) -> Result<Option<EpochCheck>> {
    Ok(match args.epoch_images {
        0 => None,
        images => Some(EpochCheck {
            model: zoo_cli::find(&args.epoch_model)?,
            input_size: args.epoch_size,
            images,
            batch: args.epoch_batch,
        }),
    })
}

/// The report `text` written to `--out` (and that said), or printed.
fn write_report(args: &DeviceCheckArgs, text: &str) -> Result<()> {
    match &args.out {
        Some(path) => {
            zoo_core::fs::write_atomic(path, text.as_bytes())?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
