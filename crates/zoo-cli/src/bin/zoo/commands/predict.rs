//! `zoo predict`: the top-5 classes of image files, as text or JSON (with the logits).

use std::path::{Path, PathBuf};

use anyhow::Result;
use zoo_cli::predict::predict;

/// Prints each image's top-5 through `checkpoint`.
pub fn run(checkpoint: &Path, images: &[PathBuf], json: bool, device: &str) -> Result<()> {
    let predictions = predict(checkpoint, images, device)?;
    if json {
        println!("{}", serde_json::to_string(&predictions)?);
    } else {
        for p in &predictions {
            println!("{}", p.image.display());
            for (class, prob) in &p.top5 {
                println!("  {prob:>7.4}  {class}");
            }
        }
    }
    Ok(())
}
