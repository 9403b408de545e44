//! `bench data`: loader images/s with and without augmentation, and the device transform's.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

/// Loader images/s on CIFAR-10 under `root`, without and with augmentation, then the device
/// transform's.
pub fn run(root: &Path, batch_size: usize) -> Result<()> {
    use zoo_core::data::augment::Augment;
    use zoo_core::data::loader::{Loader, LoaderConfig};
    let train = zoo_core::data::resolve::load_split(
        root,
        &zoo_core::data::Dataset::Cifar10,
        zoo_core::data::Split::Train,
    )
    .with_context(|| {
        format!(
            "loading CIFAR-10 from {} (run `cargo xtask data` first)",
            root.display()
        )
    })?;
    let train = Arc::new(train);
    println!(
        "CIFAR-10 train: {} images from {}; batch {batch_size}; RAYON_NUM_THREADS={}",
        train.len(),
        train.source,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    println!("{:<40} {:>12}", "case", "images/s");
    for (name, augment) in [
        ("loader, no augmentation", Augment::default()),
        ("loader, random crop (pad 4) + flip", Augment::CROP_FLIP),
    ] {
        let loader = Loader::new(
            train.clone(),
            LoaderConfig {
                batch_size,
                augment,
                ..LoaderConfig::notebook(0)
            },
        )?;
        let start = Instant::now();
        let images: usize = loader.epoch(0, 0).map(|b| b.len()).sum();
        let rate = images as f64 / start.elapsed().as_secs_f64();
        println!("{name:<40} {rate:>12.0}");
    }
    bench_transforms(train, batch_size)
}

/// The device transform (u8 -> f32, resize, normalise) after the loader, at three sizes.
fn bench_transforms(train: Arc<zoo_core::data::ImageDataset>, batch_size: usize) -> Result<()> {
    use zoo_core::data::loader::{Loader, LoaderConfig};
    use zoo_core::data::transforms::InputTransform;
    let loader = Loader::new(
        train,
        LoaderConfig {
            batch_size,
            ..LoaderConfig::notebook(0)
        },
    )?;
    let device = candle_core::Device::Cpu;
    for size in [32, 96, 224] {
        let transform = InputTransform::notebook(3, size);
        let start = Instant::now();
        let mut images = 0;
        for batch in loader.epoch(0, 0).take(40) {
            let x = transform.apply(&batch.images_tensor(&device)?, &device)?;
            images += x.dim(0)?;
        }
        let rate = images as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<40} {rate:>12.0}",
            format!("loader + to f32, resize {size}, normalise")
        );
    }
    Ok(())
}
