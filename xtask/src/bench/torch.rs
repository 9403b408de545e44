//! PyTorch's side of `bench models`: scripts/bench_torch.py run for one case, its result line
//! parsed.

use anyhow::{Context, Result};

use crate::project_root;

/// One measured case, zoo's or PyTorch's.
pub type BenchRow = zoo_cli::torch_bench::BenchResult;

/// PyTorch's side of one case (scripts/bench_torch.py), printed as a `RESULT torch ...` line.
pub fn torch_bench(
    python: &str,
    batch: usize,
    steps: usize,
    model: &str,
    size: usize,
    infer_only: bool,
) -> Result<BenchRow> {
    let out = std::process::Command::new(python)
        .arg(project_root().join("scripts/bench_torch.py"))
        .args(infer_only.then_some("--infer-only"))
        .args([
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--cases",
            &format!("{model}:{size}"),
        ])
        .output()
        .with_context(|| format!("running {python} scripts/bench_torch.py"))?;
    anyhow::ensure!(
        out.status.success(),
        "bench_torch.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for skip in stdout.lines().filter(|l| l.starts_with("SKIP")) {
        println!("SKIP torch{}", &skip["SKIP".len()..]);
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .with_context(|| format!("bench_torch.py printed no RESULT line for {model}:{size}"))?;
    println!("RESULT torch{}", &line["RESULT".len()..]);
    zoo_cli::torch_bench::parse_result(line)
}
