//! `zoo summary`: a model's layer-by-layer output shapes, parameters and multiply-accumulates.

use anyhow::Result;
use zoo_cli::summary_cmd::{parse_input, summarize};

/// Prints `model`'s summary at `input` (N,C,H,W; default the notebook's), as a table or JSON.
pub fn run(model: &str, input: Option<&str>, json: bool) -> Result<()> {
    let input = input.map(parse_input).transpose()?;
    let summary = summarize(model, input)?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}
