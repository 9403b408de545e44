//! `zoo summary` and `zoo list`: model tables without running the networks.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use zoo_core::InputSpec;
use zoo_core::summary::{Summary, group_thousands};
use zoo_core::table::{Align, Table};

use crate::registry::{find, registry};

/// Parses `N,C,H,W`.
pub fn parse_input(text: &str) -> Result<[usize; 4]> {
    let dims: Vec<usize> = text
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("--input `{text}`: expected four integers N,C,H,W"))?;
    match dims[..] {
        [n, c, h, w] if n > 0 && c > 0 && h > 0 && w > 0 => Ok([n, c, h, w]),
        _ => bail!("--input `{text}`: expected four positive integers N,C,H,W"),
    }
}

/// The summary of registry model `name` for `input` (default: the notebook's, batch 128).
/// Weights are zeros: only shapes matter, so nothing random is drawn.
pub fn summarize(name: &str, input: Option<[usize; 4]>) -> Result<Summary> {
    let entry = find(name)?;
    let r = entry.reference_input;
    let [n, c, h, w] = input.unwrap_or([128, r.channels, r.height, r.width]);
    let max = zoo_core::data::transforms::MAX_IMAGE_SIDE;
    if h > max || w > max || n > 1 << 20 {
        bail!(
            "--input {n},{c},{h},{w}: summaries go up to {max} x {max} pixels and a batch of \
             2^20 (a network built for a larger input would not fit in memory)"
        )
    }
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = entry
        .build(InputSpec::new(c, h, w), entry.reference_classes, vb)
        .with_context(|| format!("building {name} for input {n}x{c}x{h}x{w}"))?;
    Summary::of(name, model.as_ref(), &[n, c, h, w]).with_context(|| format!("summarising {name}"))
}

/// The registry as a table.
pub fn list_table() -> String {
    let mut table = Table::new(&[
        ("model", Align::Left),
        ("crate", Align::Left),
        ("input", Align::Left),
        ("params", Align::Right),
        ("min px", Align::Right),
        ("description", Align::Left),
    ]);
    for e in registry() {
        let params = e
            .reference_params
            .map(|p| group_thousands(p as u64))
            .unwrap_or_else(|| "-".into());
        table.row([
            e.name.to_string(),
            e.crate_name.to_string(),
            e.reference_input.to_string(),
            params,
            e.min_input.to_string(),
            e.description.to_string(),
        ]);
    }
    table.text()
}
