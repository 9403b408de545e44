//! The lines `scripts/bench_torch.py` prints, read by `cargo xtask bench models` and the device
//! check: `RESULT <model> <input> <train img/s or -> <infer img/s> <peak RSS MiB>`.

use anyhow::{Context, Result, ensure};

/// One benchmark case's figures (PyTorch's, from its line, or zoo's beside them).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub model: String,
    pub size: usize,
    /// `None`: not timed (`--infer-only`, or a case that cannot train: its `SKIP` line says why).
    pub train: Option<f64>,
    pub infer: f64,
    pub peak_mib: f64,
}

/// One `RESULT` line, or an error quoting it.
pub fn parse_result(line: &str) -> Result<BenchResult> {
    let f: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        f.len() == 6 && f[0] == "RESULT",
        "bench_torch.py: unexpected line {line:?}"
    );
    let number = |i: usize, what: &str| -> Result<f64> {
        f[i].parse()
            .with_context(|| format!("bench_torch.py: {what} in {line:?}"))
    };
    Ok(BenchResult {
        model: f[1].to_string(),
        size: f[2]
            .parse()
            .with_context(|| format!("bench_torch.py: input size in {line:?}"))?,
        train: match f[3] {
            "-" => None,
            _ => Some(number(3, "train img/s")?),
        },
        infer: number(4, "infer img/s")?,
        peak_mib: number(5, "peak MiB")?,
    })
}
