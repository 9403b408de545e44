//! `cargo xtask dist-check`: the same `zoo train` run alone, as N MPI ranks
//! (`--nproc-per-node N`), and alone on another number of threads (the float floor: the same
//! math summed in another order, which training amplifies); the runs' final weights and
//! metrics side by side, failing when the ranks land further from one process than allowed. The MPI-built `zoo` binary is given (`--zoo`); CI
//! runs it on the committed data sample, docs/distributed.md records runs on the full data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use zoo_core::table::{Align, Table};
use zoo_core::train::checkpoint::{Checkpoint, load_checkpoint};
use zoo_core::train::trainer::Trainer;

/// What `dist-check` runs and compares (its command line).
#[derive(clap::Args)]
pub struct DistCheck {
    /// A `zoo` binary built with `--features mpi`.
    #[arg(long)]
    pub zoo: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// Threads of the one-process run; each rank gets its share.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value = "target/dist-check")]
    pub out: PathBuf,
    /// Pass when ||a-b|| / ||a|| over all weights is at most this ...
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f64,
    /// ... or at most this many times as far as one process lands from itself on another
    /// number of threads (the float floor: another summation order).
    #[arg(long, default_value_t = 3.0)]
    pub floor_factor: f64,
    /// The tile kernels of every run (ZOO_CPU_ISA): one for all, so that only the ranks
    /// differ.
    #[arg(long, default_value = "avx2")]
    pub isa: String,
    /// `zoo train`'s arguments: the model and its flags (after `--`).
    #[arg(last = true, required = true)]
    pub train_args: Vec<String>,
}

/// (name, max |a - b|, max |a|, sum (a - b)^2, sum a^2) of one tensor.
type Row = (String, f64, f64, f64, f64);

/// Runs the three trainings and compares; an error when the ranks are further apart than
/// allowed.
pub fn run(check: &DistCheck) -> Result<()> {
    if check.out.exists() {
        std::fs::remove_dir_all(&check.out)
            .with_context(|| format!("clearing {}", check.out.display()))?;
    }
    let alone = check.out.join("one-process");
    let ranks = check.out.join(format!("{}-ranks", check.nproc));
    let floor_threads = if check.threads > 1 { 1 } else { 2 };
    let floor = check
        .out
        .join(format!("one-process-{floor_threads}-threads"));
    let t_alone = train(check, &alone, None, check.threads)?;
    let t_ranks = train(check, &ranks, Some(check.nproc), check.threads)?;
    let t_floor = train(check, &floor, None, floor_threads)?;
    let last = |dir: &Path| load_checkpoint(&Trainer::last_path(dir), &Device::Cpu);
    let (a, b, c) = (last(&alone)?, last(&ranks)?, last(&floor)?);
    let apart = differences(&a.model, &b.model)?;
    let noise = differences(&a.model, &c.model)?;
    print_weight_table(check, floor_threads, &apart, &noise);
    print_metrics_table(
        check,
        floor_threads,
        [(&a, t_alone), (&b, t_ranks), (&c, t_floor)],
    );
    judge_distance(check, floor_threads, &apart, &noise)
}

/// Prints the (up to) eight tensors furthest apart between one process and the ranks, beside
/// the float floor's difference of each.
fn print_weight_table(check: &DistCheck, floor_threads: usize, apart: &[Row], noise: &[Row]) {
    let ranks_column = format!("{} ranks: max |a-b|", check.nproc);
    let floor_column = format!("{floor_threads} thread(s): max |a-c|");
    let mut table = Table::new(&[
        ("tensor", Align::Left),
        ("max |a|", Align::Right),
        (&ranks_column, Align::Right),
        (&floor_column, Align::Right),
    ]);
    for (name, diff, scale, _, _) in apart.iter().take(8) {
        let floor_diff = noise.iter().find(|r| &r.0 == name).map_or(0.0, |r| r.1);
        table.row([
            name.clone(),
            format!("{scale:.3e}"),
            format!("{diff:.2e}"),
            format!("{floor_diff:.2e}"),
        ]);
    }
    println!(
        "\na: one process, b: {n} ranks, c: one process on {floor_threads} thread(s) (tile \
         kernels {isa}); the {k} tensors furthest apart of {all}:\n{}",
        table.text(),
        isa = check.isa,
        n = check.nproc,
        k = apart.len().min(8),
        all = apart.len(),
    );
}

/// Prints every epoch's metrics and the wall time of the three runs (one process, the ranks,
/// the float floor), given as (last checkpoint, seconds) in that order.
fn print_metrics_table(
    check: &DistCheck,
    floor_threads: usize,
    [(a, t_alone), (b, t_ranks), (c, t_floor)]: [(&Checkpoint, f64); 3],
) {
    let per_rank = (check.threads / check.nproc).max(1);
    let mut metrics = Table::new(&[
        ("run", Align::Left),
        ("epoch", Align::Right),
        ("train loss", Align::Right),
        ("train acc", Align::Right),
        ("valid loss", Align::Right),
        ("valid acc", Align::Right),
        ("wall", Align::Right),
    ]);
    let runs: [(String, &Checkpoint, f64); 3] = [
        (
            format!("a: 1 process x {} threads", check.threads),
            a,
            t_alone,
        ),
        (
            format!("b: {} ranks x {per_rank} thread(s)", check.nproc),
            b,
            t_ranks,
        ),
        (
            format!("c: 1 process x {floor_threads} thread(s)"),
            c,
            t_floor,
        ),
    ];
    for (label, ckpt, seconds) in runs {
        for m in &ckpt.meta.progress.metrics {
            metrics.row([
                label.clone(),
                m.epoch.to_string(),
                format!("{:.6}", m.train_loss),
                format!("{:.4}", m.train_acc),
                format!("{:.6}", m.valid_loss),
                format!("{:.4}", m.valid_acc),
                format!("{seconds:.1} s"),
            ]);
        }
    }
    println!("{}", metrics.text());
}

/// Prints the ranks' and the float floor's relative distances from one process, and fails when
/// the ranks' is above the allowed.
fn judge_distance(
    check: &DistCheck,
    floor_threads: usize,
    apart: &[Row],
    noise: &[Row],
) -> Result<()> {
    let (ranks_distance, floor_distance) = (distance(apart), distance(noise));
    let allowed = check.tolerance.max(check.floor_factor * floor_distance);
    println!(
        "||a-b|| / ||a|| = {ranks_distance:.2e} ({} ranks against one process); ||a-c|| / ||a|| \
         = {floor_distance:.2e} (one process, {floor_threads} thread(s)); allowed: the \
         larger of {:.0e} and {} x the latter = {allowed:.2e}",
        check.nproc, check.tolerance, check.floor_factor
    );
    if ranks_distance.is_nan() || ranks_distance > allowed {
        bail!(
            "{} ranks ended {ranks_distance:.2e} from one process (relative distance over all \
             weights), above the {allowed:.2e} allowed",
            check.nproc
        )
    }
    Ok(())
}

/// Over all tensors: `||a - b|| / ||a||`.
fn distance(rows: &[Row]) -> f64 {
    let (d, n) = rows.iter().fold((0.0, 0.0), |(d, n), r| (d + r.3, n + r.4));
    (d / f64::max(n, 1e-30)).sqrt()
}

/// Per tensor of `a`, furthest apart first.
fn differences(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, reference) in a {
        let other = b
            .get(name)
            .with_context(|| format!("no tensor `{name}` to compare"))?;
        let x = reference.flatten_all()?.to_vec1::<f32>()?;
        let y = other.flatten_all()?.to_vec1::<f32>()?;
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        let diff = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64;
        let squared = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
            .sum();
        let norm = x.iter().map(|p| (*p as f64).powi(2)).sum();
        rows.push((name.clone(), diff, scale, squared, norm));
    }
    rows.sort_by(|p, q| q.1.total_cmp(&p.1));
    Ok(rows)
}

/// One `zoo train` into `dir` on `threads` threads (split among `nproc` ranks through zoo's
/// launcher). Returns the seconds taken.
fn train(check: &DistCheck, dir: &Path, nproc: Option<usize>, threads: usize) -> Result<f64> {
    let mut cmd = Command::new(&check.zoo);
    cmd.arg("train")
        .args(&check.train_args)
        .arg("--device")
        .arg("cpu")
        .arg("--run-dir")
        .arg(dir)
        .env("RAYON_NUM_THREADS", threads.to_string())
        // Where the choice is measured at first use, two processes may take different tile
        // kernels: each run is told which.
        .env("ZOO_CPU_ISA", &check.isa);
    if let Some(n) = nproc {
        cmd.arg("--nproc-per-node").arg(n.to_string());
    }
    eprintln!("== {cmd:?}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", check.zoo.display()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})")
    }
    Ok(started.elapsed().as_secs_f64())
}
