//! `zoo eval`: a checkpoint's accuracy, per-class accuracy and confusion matrix on a split.

use std::path::Path;

use anyhow::Result;
use zoo_cli::eval::{eval_checkpoint, eval_report};
use zoo_cli::run_config::RunConfig;
use zoo_core::data::Split;
use zoo_core::data::resolve::data_root;

/// Evaluates `checkpoint` on `dataset` (default: the one its run configuration names).
pub fn run(
    checkpoint: &Path,
    dataset: Option<String>,
    data_dir: Option<&Path>,
    split: Split,
    device: &str,
    flip: bool,
) -> Result<()> {
    let dataset = match dataset {
        Some(d) => d,
        None => {
            // The checkpoint's own run configuration names its dataset; a damaged checkpoint is
            // reported as such.
            let ckpt = zoo_core::train::checkpoint::load_checkpoint(
                checkpoint,
                &candle_core::Device::Cpu,
            )?;
            let config: Option<RunConfig> = toml::from_str(&ckpt.meta.run.config).ok();
            config.map(|c| c.dataset.to_string()).ok_or_else(|| {
                anyhow::anyhow!(
                    "--dataset is needed: {} does not say which dataset it was trained on \
                     (a converted checkpoint)",
                    checkpoint.display()
                )
            })?
        }
    };
    let (loaded, eval) = eval_checkpoint(
        checkpoint,
        &data_root(data_dir),
        &dataset,
        split,
        device,
        flip,
    )?;
    println!("{} on {dataset} ({})", loaded.meta.run.model, split.name());
    print!("{}", eval_report(&loaded.meta.run.classes, &eval));
    Ok(())
}
