//! `zoo show-batch`: the notebook's 6x10 grid of training images, titled by class, as a PNG.

use std::path::Path;

use anyhow::Result;

/// Writes the grid of `dataset` (shuffled by `seed`) to `out`.
pub fn run(dataset: &str, data_dir: Option<&Path>, seed: u64, out: &Path) -> Result<()> {
    let root = zoo_core::data::resolve::data_root(data_dir);
    zoo_cli::show_batch::show_batch(&root, dataset, seed, out)?;
    println!("wrote {}", out.display());
    Ok(())
}
