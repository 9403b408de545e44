//! The peer's side of `bench models`: scripts/bench_torch.py (PyTorch eager) or
//! scripts/bench_runtime.py (ONNX Runtime, OpenVINO) run for one case, its result line parsed.

use anyhow::{Context, Result};

use crate::project_root;

/// One measured case, zoo's or PyTorch's.
pub type BenchRow = zoo_cli::torch_bench::BenchResult;

/// What zoo is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// PyTorch eager.
    Torch,
    /// ONNX Runtime (CPU execution provider).
    Ort,
    /// OpenVINO (CPU plugin, LATENCY hint).
    Openvino,
}

impl Peer {
    /// Its name in tables.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Torch => "PyTorch",
            Self::Ort => "ONNX Runtime",
            Self::Openvino => "OpenVINO",
        }
    }

    /// Its `--peer` value (bench_runtime.py takes the same).
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Torch => "torch",
            Self::Ort => "ort",
            Self::Openvino => "openvino",
        }
    }

    /// The script and its peer flag.
    fn script(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::Torch => ("scripts/bench_torch.py", None),
            other => ("scripts/bench_runtime.py", Some(other.flag())),
        }
    }
}

/// The peer's side of one case, printed as a `RESULT torch ...` line (the peer's figures).
pub fn torch_bench(
    (python, peer): (&str, Peer),
    batch: usize,
    steps: usize,
    model: &str,
    size: usize,
    infer_only: bool,
) -> Result<BenchRow> {
    let (script, flag) = peer.script();
    let out = std::process::Command::new(python)
        .arg(project_root().join(script))
        .args(flag.map(|f| ["--peer", f]).into_iter().flatten())
        .args((infer_only && peer == Peer::Torch).then_some("--infer-only"))
        .args([
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--cases",
            &format!("{model}:{size}"),
        ])
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{script} failed: {}",
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
