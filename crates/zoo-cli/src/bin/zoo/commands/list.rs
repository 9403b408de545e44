//! `zoo list`: every registry model with its reference input and parameter count.

use anyhow::Result;
use zoo_cli::summary_cmd::list_table;

/// Prints the registry's table.
pub fn run() -> Result<()> {
    print!("{}", list_table());
    Ok(())
}
