//! Project automation for zoo (`cargo xtask <command>`): documentation generated from the
//! registry, the local data folder, benchmarks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zoo_cli::registry::registry;
use zoo_cli::summary_cmd::summarize;
use zoo_core::summary::group_thousands;

/// zoo's project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate docs/models.md (every registry model: input, parameters, MACs, layer table).
    Docs,
    /// Fill the data root (default ./data) from ../shared/data: MNIST and Fashion-MNIST IDX
    /// files, CIFAR-10 image folders extracted from the tarball.
    Data {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Loader images/s with and without augmentation, and the device transform (resize 32->224,
    /// normalise) images/s, on CIFAR-10 from the data root.
    Data {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
    },
}

fn shared_data() -> PathBuf {
    project_root().join("../shared/data")
}

fn prepare_data(root: &Path) -> Result<()> {
    let shared = shared_data();
    anyhow::ensure!(
        shared.is_dir(),
        "{} not found: nothing to copy from",
        shared.display()
    );
    for name in ["mnist", "fashion-mnist"] {
        let dst = root.join(name);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for entry in std::fs::read_dir(shared.join(name))
            .with_context(|| format!("listing {}", shared.join(name).display()))?
        {
            let path = entry?.path();
            let target = dst.join(path.file_name().context("file name")?);
            if !target.exists() {
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        println!("{name}: {}", dst.display());
    }
    let cifar = root.join("cifar10");
    if cifar.join("train").is_dir() && cifar.join("test").is_dir() {
        println!("cifar10: {} (already extracted)", cifar.display());
    } else {
        std::fs::create_dir_all(&cifar)?;
        let tarball = shared.join("cifar10-jpg.tar.gz");
        println!("cifar10: extracting {} ...", tarball.display());
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&cifar)
            .status()
            .context("running tar")?;
        anyhow::ensure!(status.success(), "tar failed on {}", tarball.display());
        println!("cifar10: {}", cifar.display());
    }
    Ok(())
}

fn bench_data(root: &Path, batch_size: usize) -> Result<()> {
    use zoo_core::data::augment::Augment;
    use zoo_core::data::loader::{Loader, LoaderConfig};
    use zoo_core::data::transforms::EvalTransform;
    let train = zoo_core::data::resolve::load_split(root, "cifar10", zoo_core::data::Split::Train)
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
        (
            "loader, random crop (pad 4) + flip",
            Augment {
                crop_padding: Some(4),
                hflip: true,
            },
        ),
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
    let loader = Loader::new(
        train.clone(),
        LoaderConfig {
            batch_size,
            ..LoaderConfig::notebook(0)
        },
    )?;
    let device = candle_core::Device::Cpu;
    for size in [32, 96, 224] {
        let transform = EvalTransform::notebook(3, size);
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

/// The repository root, found from this crate's manifest directory.
fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn models_doc() -> Result<String> {
    let mut doc = String::from(
        "# Models\n\nGenerated by `cargo xtask docs` from the registry \
         (`crates/zoo-cli/src/registry.rs`). Parameters and MACs are for the notebook's input \
         with 10 classes; MACs count convolutions and linear layers, per image.\n\n\
         | model | crate | input | parameters | GMAC/image | min input | notebook lr | notebook valid acc |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut tables = String::new();
    for entry in registry() {
        let summary = summarize(entry.name, None).with_context(|| entry.name.to_string())?;
        let (lr, acc) = entry.notebook.map_or(("-".into(), "-".into()), |n| {
            (n.learning_rate.to_string(), format!("{:.4}", n.valid_acc))
        });
        doc += &format!(
            "| `{}` | `{}` | {} | {} | {:.2} | {} px | {} | {} |\n",
            entry.name,
            entry.crate_name,
            entry.reference_input,
            group_thousands(summary.params as u64),
            summary.macs as f64 / 1e9,
            entry.min_input,
            lr,
            acc
        );
        tables += &format!(
            "\n## `{}`\n\n{}\n```text\n{}```\n",
            entry.name,
            entry.description,
            summary.table()
        );
    }
    Ok(doc + &tables)
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Docs => {
            let path = project_root().join("docs/models.md");
            std::fs::write(&path, models_doc()?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Command::Data { data_dir } => {
            prepare_data(&zoo_core::data::resolve::data_root(data_dir.as_deref()))?
        }
        Command::Bench {
            what: Bench::Data {
                data_dir,
                batch_size,
            },
        } => bench_data(
            &zoo_core::data::resolve::data_root(data_dir.as_deref()),
            batch_size,
        )?,
    }
    Ok(())
}
