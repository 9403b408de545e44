//! The `zoo` command: list the models, summarise them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use zoo_cli::summary_cmd::{list_table, parse_input, summarize};

/// zoo: the classic CNNs (AlexNet, VGG, NiN, GoogLeNet, ResNet, DenseNet) on candle.
#[derive(Parser)]
#[command(name = "zoo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every registered model with its reference input and parameter count.
    List,
    /// Print a model's layer-by-layer output shapes, parameters and multiply-accumulates.
    Summary {
        /// Registry name (see `zoo list`).
        model: String,
        /// Input shape N,C,H,W (default: the notebook's, batch 128).
        #[arg(long)]
        input: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the notebook's 6x10 grid of training images, titled by class, as a PNG.
    ShowBatch {
        /// cifar10, mnist, fashion-mnist, or the name of an image folder under the data root.
        #[arg(long)]
        dataset: String,
        /// Data root (default: $ZOO_DATA, else ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seed of the shuffle that picks the images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::List => print!("{}", list_table()),
        Command::Summary { model, input, json } => {
            let input = input.as_deref().map(parse_input).transpose()?;
            let summary = summarize(&model, input)?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.table());
            }
        }
        Command::ShowBatch {
            dataset,
            data_dir,
            seed,
            out,
        } => {
            let root = zoo_core::data::resolve::data_root(data_dir.as_deref());
            zoo_cli::show_batch::show_batch(&root, &dataset, seed, &out)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
