//! The `zoo` command: list the models, summarise them.

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
    }
    Ok(())
}
