//! `bench models`: training-step and inference images/s of every registry model, zoo and
//! (with `--torch`) PyTorch case by case, and the table of medians and ratios.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};

use zoo_cli::registry::{ModelEntry, Origin, registry};
use zoo_core::Model;
use zoo_core::table::{Align, Table};
use zoo_core::train::optim::Optimizer;

use super::median;
use super::torch::{BenchRow, Peer, torch_bench};
use crate::machine::peak_rss_mib;

/// What every zoo case of one run shares: the batch size, the timed steps and whether the
/// training step is left out.
#[derive(Clone, Copy)]
struct CaseSettings {
    batch: usize,
    steps: usize,
    infer_only: bool,
}

pub fn run(
    batch: usize,
    steps: usize,
    only: Option<&str>,
    reference: bool,
    torch: Option<(&str, Peer)>,
    repeat: usize,
    infer_only: bool,
) -> Result<()> {
    anyhow::ensure!(steps > 0, "bench models: --steps must be at least 1");
    let peer = torch.map_or(Peer::Torch, |t| t.1);
    anyhow::ensure!(
        peer == Peer::Torch || infer_only,
        "bench models --peer {}: the runtimes serve inference; add --infer-only",
        peer.flag()
    );
    let device = Device::Cpu;
    println!(
        "batch {batch}, median of {steps} steps after 1 warm-up; RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let settings = CaseSettings {
        batch,
        steps,
        infer_only,
    };
    let mut rows = Vec::new();
    let mut torch_rows: Vec<BenchRow> = Vec::new();
    let rounds = repeat.max(1);
    let entries = selected_entries(only);
    let cases = (0..rounds).flat_map(|round| entries.iter().map(move |e| (round, *e)));
    for (round, entry) in cases {
        if rounds > 1 && std::ptr::eq(entry, entries[0]) {
            println!("-- round {} of {rounds}", round + 1);
        }
        for size in case_sizes(entry, reference) {
            let row = bench_zoo_case(entry, size, settings, &device)?;
            print_result_line(&row);
            // PyTorch right after zoo on the same case, so that both see the same machine
            // (its speed drifts over minutes on this shared host).
            if let Some(python) = torch {
                torch_rows.push(torch_bench(
                    python, batch, steps, entry.name, size, infer_only,
                )?);
            }
            rows.push(row);
        }
    }
    println!("\n{}", summary_table(&rows, &torch_rows, peer).markdown());
    Ok(())
}

/// The registry entries named in `--only` (comma-separated), or the notebook's networks.
fn selected_entries(only: Option<&str>) -> Vec<&'static ModelEntry> {
    registry()
        .iter()
        .filter(|e| match only {
            Some(o) => o.split(',').any(|m| m == e.name),
            None => e.origin == Origin::Notebook,
        })
        .collect()
}

/// The input sides one entry is measured at: its CPU size, and with `--reference` also the
/// notebook's; torchvision's networks at ImageNet's 224 alone.
fn case_sizes(entry: &ModelEntry, reference: bool) -> Vec<usize> {
    if entry.origin == Origin::Torchvision {
        return vec![entry.reference_input.height];
    }
    let mut sizes = vec![entry.cpu_input_size()];
    if reference {
        sizes.push(entry.reference_input.height);
    }
    sizes
}

/// Zoo's side of one case: the model built at `size`, its training steps (unless
/// `--infer-only`) and inference passes timed, as images/s and peak memory.
fn bench_zoo_case(
    entry: &ModelEntry,
    size: usize,
    settings: CaseSettings,
    device: &Device,
) -> Result<BenchRow> {
    let CaseSettings {
        batch,
        steps,
        infer_only,
    } = settings;
    let input = zoo_core::InputSpec::square(entry.reference_input.channels, size);
    let store = zoo_core::init::ParamStore::new(
        0,
        zoo_core::init::InitScheme::XavierUniform,
        candle_core::DType::F32,
        device,
    );
    let model = entry.build(input, entry.reference_classes, store.var_builder())?;
    let x = zoo_core::testing::test_input(&input.batched(batch), 1)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let y = Tensor::new(labels.as_slice(), device)?;
    // The optimiser zoo's trainer runs (plain SGD here, like the PyTorch side).
    let mut sgd = Optimizer::new(
        zoo_core::train::optim::OptimizerConfig::plain_sgd(),
        store.trainable(),
    )?;
    let train = if infer_only {
        Vec::new()
    } else {
        time_training_steps(model.as_ref(), &x, &y, &mut sgd, steps, entry.name, size)
    };
    let infer = time_inference(model.as_ref(), &x, steps)?;
    Ok(BenchRow {
        model: entry.name.to_string(),
        size,
        train: (!train.is_empty()).then(|| batch as f64 / median(train)),
        infer: batch as f64 / median(infer),
        peak_mib: peak_rss_mib(),
    })
}

/// Seconds of each of `steps` training steps after one warm-up, or none (after a `SKIP` line)
/// when the case cannot train.
fn time_training_steps(
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    sgd: &mut Optimizer,
    steps: usize,
    name: &str,
    size: usize,
) -> Vec<f64> {
    let mut train_step = || -> candle_core::Result<f64> {
        let start = Instant::now();
        let logits = model.forward_t(x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, y)?;
        sgd.step(&loss.backward()?, 0.01)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let mut train = Vec::new();
    for i in 0..=steps {
        match train_step() {
            Ok(t) if i > 0 => train.push(t),
            Ok(_) => {}
            Err(e) => {
                // A case that cannot train (BatchNorm over one value per channel
                // at batch 1) is skipped, as PyTorch refuses it too.
                println!("SKIP zoo {name} {size} train: {e}");
                train.clear();
                break;
            }
        }
    }
    train
}

/// Seconds of each of `steps` inference passes after one warm-up, in one frozen-weights scope
/// (what the layers derive from the weights is derived in the warm-up, as a runtime's session
/// does when it loads the model).
fn time_inference(model: &dyn Model, x: &Tensor, steps: usize) -> Result<Vec<f64>> {
    zoo_core::frozen::frozen_weights(|| {
        let mut infer = Vec::new();
        for i in 0..=steps {
            let start = Instant::now();
            zoo_core::grad::no_grad(|| model.forward_t(x, false))?.to_vec2::<f32>()?;
            if i > 0 {
                infer.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(infer)
    })
}

/// Prints zoo's `RESULT zoo ...` line of one case.
fn print_result_line(row: &BenchRow) {
    println!(
        "RESULT zoo {} {} {} {:.1} {:.0}",
        row.model,
        row.size,
        row.train.map_or("-".to_string(), |t| format!("{t:.1}")),
        row.infer,
        row.peak_mib
    );
}

/// (train img/s if timed, infer img/s, peak MiB) of one case's rounds.
type Measured = (Option<f64>, f64, f64);

/// The cases (model, input side) of `rows`, each once, in the order first measured.
fn case_keys(rows: &[BenchRow]) -> Vec<(String, usize)> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.model.clone(), r.size)) {
            keys.push((r.model.clone(), r.size));
        }
    }
    keys
}

/// The measurements of one case's rounds in `list`.
fn measured_of(list: &[BenchRow], key: &(String, usize)) -> Vec<Measured> {
    list.iter()
        .filter(|r| r.model == key.0 && r.size == key.1)
        .map(|r| (r.train, r.infer, r.peak_mib))
        .collect()
}

/// A figure to one decimal, or `-` when absent.
fn one_decimal(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}"))
}

/// The median of `v`, or `None` when it is empty.
fn median_if_any(v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| median(v))
}

/// Ratios of the rounds that measured both sides; with several, "each; median".
fn ratio_cell(zoo: &[Measured], torch: &[Measured], pick: fn(&Measured) -> Option<f64>) -> String {
    let each: Vec<f64> = zoo
        .iter()
        .zip(torch)
        .filter_map(|(z, t)| Some(pick(z)? / pick(t)?))
        .collect();
    match each.len() {
        0 => "-".to_string(),
        1 => format!("{:.2}", each[0]),
        _ => {
            let listed: Vec<String> = each.iter().map(|r| format!("{r:.2}")).collect();
            format!("{}; **{:.2}**", listed.join(", "), median(each))
        }
    }
}

/// One line per case, medians over the rounds; the ratio column lists each round's.
fn summary_table(rows: &[BenchRow], torch_rows: &[BenchRow], peer: Peer) -> Table {
    let name = peer.label();
    let (train, infer, peak) = (
        format!("{name} train img/s"),
        format!("{name} infer img/s"),
        format!("{name} peak MiB"),
    );
    let mut table = Table::new(&[
        ("model", Align::Left),
        ("input", Align::Right),
        ("zoo train img/s", Align::Right),
        (&train, Align::Right),
        ("train ratio", Align::Right),
        ("zoo infer img/s", Align::Right),
        (&infer, Align::Right),
        ("infer ratio", Align::Right),
        ("zoo peak MiB", Align::Right),
        (&peak, Align::Right),
    ]);
    for key in &case_keys(rows) {
        let (zoo, torch) = (measured_of(rows, key), measured_of(torch_rows, key));
        table.row([
            format!("`{}`", key.0),
            key.1.to_string(),
            one_decimal(median_if_any(zoo.iter().filter_map(|r| r.0).collect())),
            one_decimal(median_if_any(torch.iter().filter_map(|r| r.0).collect())),
            ratio_cell(&zoo, &torch, |r| r.0),
            one_decimal(median_if_any(zoo.iter().map(|r| r.1).collect())),
            one_decimal(median_if_any(torch.iter().map(|r| r.1).collect())),
            ratio_cell(&zoo, &torch, |r| Some(r.1)),
            format!("{:.0}", zoo.iter().map(|r| r.2).fold(0.0, f64::max)),
            format!("{:.0}", torch.iter().map(|r| r.2).fold(0.0, f64::max)),
        ]);
    }
    table
}
