//! Project automation for zoo (`cargo xtask <command>`): documentation generated from the
//! registry, the local data folder, benchmarks.

mod device;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use zoo_cli::registry::registry;
use zoo_cli::summary_cmd::summarize;
use zoo_core::summary::group_thousands;

/// mimalloc keeps freed tensor buffers mapped: glibc's malloc returns each large buffer to the
/// OS and every training step page-faults it back in (1.3-1.6x slower steps for AlexNet and
/// VGG, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// zoo's project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate docs/models.md (every registry model: input, parameters, MACs, layer table).
    Docs,
    /// Fill the data root (default ./data) from ../shared/data: MNIST and Fashion-MNIST IDX
    /// files, CIFAR-10 image folders extracted from the tarball.
    Data {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run a training matrix (default: `reference` with CUDA, `cpu` without), skipping complete
    /// runs and resuming unfinished ones; writes runs/<matrix>/report.md.
    TrainAll {
        /// A preset name (cpu, cpu-notebook, smoke, reference) or a matrix file.
        #[arg(long)]
        matrix: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Run only this model's entries.
        #[arg(long)]
        only: Option<String>,
        /// Also copy the report table into docs/results.md.
        #[arg(long)]
        update_docs: bool,
    },
    /// Write the small committed data sample (samples/) from the full datasets in the data root.
    MakeSample {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Build the CUDA binary of the device check into .devbin/ for scripts/device-check.sh
    /// on a GPU machine (docs/gpu.md).
    DeviceCheck,
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// zoo-core's CPU ops against candle's composition: training-mode BatchNorm forward +
    /// backward (32x64x24x24), max pooling 3/2/1 forward + backward (32x64x48x48); and the
    /// convolutions of the `cpu` preset's ResNet-18, VGG-11 (3x3) and NiN (all), against
    /// PyTorch with `--torch`.
    Ops {
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// A Python with torch: also time PyTorch's convolutions on the same shapes
        /// (scripts/bench_conv_torch.py) and print them beside zoo's.
        #[arg(long)]
        torch: Option<String>,
        /// Only the convolutions whose case name (`NxCxHxW:OUT:K:S:P`) contains one of these
        /// (comma-separated); the BatchNorm and pooling rows are then left out.
        #[arg(long)]
        only: Option<String>,
    },
    /// Training-step (forward, cross-entropy, backward, SGD update) and inference images/s of
    /// every registry model at its `cpu` preset input size: warm-up excluded, median of steps.
    Models {
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Only these models (comma-separated).
        #[arg(long)]
        only: Option<String>,
        /// Also at the notebook's input size.
        #[arg(long)]
        reference: bool,
        /// A Python with torch: run scripts/bench_torch.py on each case right after zoo's
        /// (interleaved, so both see the same machine) and print zoo, PyTorch and the ratio
        /// side by side.
        #[arg(long)]
        torch: Option<String>,
        /// Rounds over all cases: the table gives each round's ratio and the medians (this
        /// VM's speed moves 10-30% over minutes, so one round can land in a slow phase on
        /// either side).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Time inference only (batch 1 serving: training at batch 1 is not defined for the
        /// networks with BatchNorm).
        #[arg(long)]
        infer_only: bool,
    },
    /// Loader images/s with and without augmentation, and the device transform (resize 32->224,
    /// normalise) images/s, on CIFAR-10 from the data root.
    Data {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 128)]
        batch_size: usize,
    },
}

fn shared_data() -> PathBuf {
    project_root().join("../shared/data")
}

fn prepare_data(root: &Path) -> Result<()> {
    let shared = shared_data();
    anyhow::ensure!(
        shared.is_dir(),
        "{} not found: nothing to copy from",
        shared.display()
    );
    for name in ["mnist", "fashion-mnist"] {
        let dst = root.join(name);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for entry in std::fs::read_dir(shared.join(name))
            .with_context(|| format!("listing {}", shared.join(name).display()))?
        {
            let path = entry?.path();
            let target = dst.join(path.file_name().context("file name")?);
            if !target.exists() {
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        println!("{name}: {}", dst.display());
    }
    let cifar = root.join("cifar10");
    if cifar.join("train").is_dir() && cifar.join("test").is_dir() {
        println!("cifar10: {} (already extracted)", cifar.display());
    } else {
        std::fs::create_dir_all(&cifar)?;
        let tarball = shared.join("cifar10-jpg.tar.gz");
        println!("cifar10: extracting {} ...", tarball.display());
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&cifar)
            .status()
            .context("running tar")?;
        anyhow::ensure!(status.success(), "tar failed on {}", tarball.display());
        println!("cifar10: {}", cifar.display());
    }
    Ok(())
}

/// docs/results.md: the latest report of `preset` with the date, machine and command, in that
/// matrix's marked section (appended when the page has none); the rest of the page is kept.
fn update_results_doc(report: &Path, preset: &str) -> Result<()> {
    let table =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = cpu_model();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(project_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // Curves travel with the doc (runs/ is not committed): docs/results/<matrix>/<run>.png.
    let report_dir = report.parent().context("report folder")?;
    let curves_dir = project_root().join("docs/results").join(preset);
    std::fs::create_dir_all(&curves_dir)?;
    let mut body = table.replacen("# Training matrix", "## Training matrix", 1);
    for figure in ["accuracy_vs_time.png", "accuracy_vs_epoch.png"] {
        let from = report_dir.join(figure);
        if from.is_file() {
            std::fs::copy(&from, curves_dir.join(figure))
                .with_context(|| format!("copying {}", from.display()))?;
            body = body.replace(
                &format!("]({figure})"),
                &format!("](results/{preset}/{figure})"),
            );
        }
    }
    for entry in std::fs::read_dir(report_dir)? {
        let run = entry?.path();
        let curves = run.join("curves.png");
        if let (true, Some(name)) = (
            curves.is_file(),
            run.file_name().map(|n| n.to_string_lossy().into_owned()),
        ) {
            std::fs::copy(&curves, curves_dir.join(format!("{name}.png")))?;
            body = body.replace(
                &format!("]({name}/curves.png)"),
                &format!("](results/{preset}/{name}.png)"),
            );
        }
    }
    // The generated part sits between markers, so that the rest of the page (other matrices,
    // the hand-written reading of the results) survives an update.
    let stamp = format!(
        "Latest `cargo xtask train-all --matrix {preset}` on {date}, {cpu}, {cores} cores, CPU, \
         zoo at commit {commit}. Regenerate with `cargo xtask train-all --matrix {preset} --update-docs`."
    );
    let body = match body.split_once('\n') {
        Some((heading, rest)) => format!("{heading}\n\n{stamp}\n{rest}"),
        None => format!("{body}\n\n{stamp}\n"),
    };
    let begin = format!("<!-- matrix {preset}: generated by xtask train-all --update-docs -->");
    let end = format!("<!-- end of matrix {preset} -->");
    let section = format!("{begin}\n{}\n{end}", body.trim_end());
    let path = project_root().join("docs/results.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Results\n".into());
    let doc = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &existing[..a], &existing[b + end.len()..])
        }
        _ => format!("{}\n\n{section}\n", existing.trim_end()),
    };
    zoo_core::train::checkpoint::write_atomic(&path, doc.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("updated {}", path.display());
    Ok(())
}

/// samples/: 400 training images per class of CIFAR-10 (as binary batches) and 200 of MNIST
/// (IDX .gz), 100 test images per class of each, from the full datasets.
fn make_sample(root: &Path) -> Result<()> {
    use std::io::Write;
    use zoo_core::data::Split;
    use zoo_core::data::resolve::load_split;
    let out = project_root().join("samples");
    let cifar_dir = out.join("cifar10/cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar_dir)?;
    let train = load_split(root, "cifar10", Split::Train)?.per_class_prefix(200);
    let test = load_split(root, "cifar10", Split::Test)?.per_class_prefix(50);
    let encode = |ds: &zoo_core::data::ImageDataset, range: std::ops::Range<usize>| {
        let images: Vec<u8> = range.clone().flat_map(|i| ds.image(i).to_vec()).collect();
        zoo_core::data::cifar::encode_cifar_batch(&images, &ds.labels()[range])
    };
    let per_file = train.len() / 5;
    for b in 0..5 {
        std::fs::write(
            cifar_dir.join(format!("data_batch_{}.bin", b + 1)),
            encode(&train, b * per_file..(b + 1) * per_file),
        )?;
    }
    std::fs::write(
        cifar_dir.join("test_batch.bin"),
        encode(&test, 0..test.len()),
    )?;
    let mnist_dir = out.join("mnist");
    std::fs::create_dir_all(&mnist_dir)?;
    for (split, n, prefix) in [(Split::Train, 200, "train"), (Split::Test, 50, "t10k")] {
        let ds = load_split(root, "mnist", split)?.per_class_prefix(n);
        let images: Vec<u8> = (0..ds.len()).flat_map(|i| ds.image(i).to_vec()).collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-idx3-ubyte.gz"),
                zoo_core::data::idx::encode_idx(&[ds.len(), 28, 28], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte.gz"),
                zoo_core::data::idx::encode_idx(&[ds.len()], ds.labels()),
            ),
        ] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&bytes)?;
            std::fs::write(mnist_dir.join(name), enc.finish()?)?;
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// The median (the mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    proc_field("/proc/self/status", "VmHWM")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One measured case, zoo's or PyTorch's.
type BenchRow = zoo_cli::torch_bench::BenchResult;

/// PyTorch's side of one case (scripts/bench_torch.py), printed as a `RESULT torch ...` line.
fn torch_bench(
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

fn bench_models(
    batch: usize,
    steps: usize,
    only: Option<&str>,
    reference: bool,
    torch: Option<&str>,
    repeat: usize,
    infer_only: bool,
) -> Result<()> {
    anyhow::ensure!(steps > 0, "bench models: --steps must be at least 1");
    let device = candle_core::Device::Cpu;
    println!(
        "batch {batch}, median of {steps} steps after 1 warm-up; RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let mut rows = Vec::new();
    let mut torch_rows: Vec<BenchRow> = Vec::new();
    let rounds = repeat.max(1);
    let entries: Vec<_> = registry()
        .iter()
        .filter(|e| only.is_none_or(|o| o.split(',').any(|m| m == e.name)))
        .collect();
    let cases = (0..rounds).flat_map(|round| entries.iter().map(move |e| (round, *e)));
    for (round, entry) in cases {
        if rounds > 1 && std::ptr::eq(entry, entries[0]) {
            println!("-- round {} of {rounds}", round + 1);
        }
        let mut sizes = vec![entry.cpu_input_size()];
        if reference {
            sizes.push(entry.reference_input.height);
        }
        for size in sizes {
            let input = zoo_core::InputSpec::square(entry.reference_input.channels, size);
            let store = zoo_core::init::ParamStore::new(
                0,
                zoo_core::init::InitScheme::XavierUniform,
                candle_core::DType::F32,
                &device,
            );
            let model = entry.build(input, 10, store.var_builder())?;
            let x = zoo_core::testing::test_input(&input.batched(batch), 1)?;
            let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
            let y = candle_core::Tensor::new(labels.as_slice(), &device)?;
            // The optimiser zoo's trainer runs (plain SGD here, like the PyTorch side).
            let mut sgd = zoo_core::train::optim::Optimizer::new(
                zoo_core::train::optim::OptimizerConfig::plain_sgd(),
                store.trainable(),
            )?;
            let mut train_step = || -> candle_core::Result<f64> {
                let start = Instant::now();
                let logits = model.forward_t(&x, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                sgd.step(&loss.backward()?, 0.01)?;
                Ok(start.elapsed().as_secs_f64())
            };
            let mut train = Vec::new();
            if !infer_only {
                for i in 0..=steps {
                    match train_step() {
                        Ok(t) if i > 0 => train.push(t),
                        Ok(_) => {}
                        Err(e) => {
                            // A case that cannot train (BatchNorm over one value per channel
                            // at batch 1) is skipped, as PyTorch refuses it too.
                            println!("SKIP zoo {} {size} train: {e}", entry.name);
                            train.clear();
                            break;
                        }
                    }
                }
            }
            let mut infer = Vec::new();
            for i in 0..=steps {
                let start = Instant::now();
                model.forward_t(&x, false)?.to_vec2::<f32>()?;
                if i > 0 {
                    infer.push(start.elapsed().as_secs_f64());
                }
            }
            let row = BenchRow {
                model: entry.name.to_string(),
                size,
                train: (!train.is_empty()).then(|| batch as f64 / median(train)),
                infer: batch as f64 / median(infer),
                peak_mib: peak_rss_mib(),
            };
            println!(
                "RESULT zoo {} {} {} {:.1} {:.0}",
                row.model,
                row.size,
                row.train.map_or("-".to_string(), |t| format!("{t:.1}")),
                row.infer,
                row.peak_mib
            );
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
    // One line per case, medians over the rounds; the ratio column lists each round's.
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in &rows {
        if !keys.contains(&(r.model.clone(), r.size)) {
            keys.push((r.model.clone(), r.size));
        }
    }
    // (train img/s if timed, infer img/s, peak MiB) of one case's rounds.
    type Measured = (Option<f64>, f64, f64);
    let of = |list: &[BenchRow], key: &(String, usize)| -> Vec<Measured> {
        list.iter()
            .filter(|r| r.model == key.0 && r.size == key.1)
            .map(|r| (r.train, r.infer, r.peak_mib))
            .collect()
    };
    println!(
        "\n| model | input | zoo train img/s | PyTorch train img/s | train ratio | zoo infer img/s | PyTorch infer img/s | infer ratio | zoo peak MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let med = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
    for key in &keys {
        let (zoo, torch) = (of(&rows, key), of(&torch_rows, key));
        // Ratios of the rounds that measured both sides; with several, "each; median".
        let ratio = |pick: fn(&Measured) -> Option<f64>| {
            let each: Vec<f64> = zoo
                .iter()
                .zip(&torch)
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
        };
        println!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            key.0,
            key.1,
            fmt(med(zoo.iter().filter_map(|r| r.0).collect())),
            fmt(med(torch.iter().filter_map(|r| r.0).collect())),
            ratio(|r| r.0),
            fmt(med(zoo.iter().map(|r| r.1).collect())),
            fmt(med(torch.iter().map(|r| r.1).collect())),
            ratio(|r| Some(r.1)),
            zoo.iter().map(|r| r.2).fold(0.0, f64::max)
        );
    }
    Ok(())
}

/// Milliseconds of `f`, the median of `steps` runs after one warm-up.
fn median_ms(steps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    anyhow::ensure!(steps > 0, "--steps must be at least 1");
    f()?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

fn bench_ops(steps: usize, torch: Option<&str>, only: Option<&str>) -> Result<()> {
    if only.is_some() {
        return bench_conv(steps, torch, only);
    }
    use candle_core::{DType, Device, Var};
    use candle_nn::ModuleT;
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(steps, f);
    let x = Var::from_tensor(&zoo_core::testing::test_input(&[32, 64, 24, 24], 1)?)?;
    let store = zoo_core::init::ParamStore::new(
        0,
        zoo_core::init::InitScheme::XavierUniform,
        DType::F32,
        &Device::Cpu,
    );
    let fused = zoo_core::nn::BatchNorm2d::new(64, store.var_builder())?;
    let varmap = candle_nn::VarMap::new();
    let reference = candle_nn::batch_norm(
        64,
        candle_nn::BatchNormConfig::default(),
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let bn_zoo = time(&mut || {
        fused
            .forward_t(x.as_tensor(), true)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let bn_candle = time(&mut || {
        reference
            .forward_t(x.as_tensor(), true)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let p = zoo_core::ops::pool::Pool2dParams::new(3, 2, 1);
    let xp = Var::from_tensor(&zoo_core::testing::test_input(&[32, 64, 48, 48], 2)?)?;
    let pool_zoo = time(&mut || {
        zoo_core::ops::pool::max_pool2d(xp.as_tensor(), p)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    let pool_ref = time(&mut || {
        zoo_core::ops::pool::max_pool2d_composed(xp.as_tensor(), p)?
            .sum_all()?
            .backward()?;
        Ok(())
    })?;
    println!(
        "| op (forward + backward) | zoo kernel ms | candle composition ms | speed-up |\n|---|---:|---:|---:|"
    );
    println!(
        "| BatchNorm2d train, 32x64x24x24 | {bn_zoo:.2} | {bn_candle:.2} | {:.1}x |",
        bn_candle / bn_zoo
    );
    println!(
        "| MaxPool2d(3, 2, 1), 32x64x48x48 | {pool_zoo:.2} | {pool_ref:.2} | {:.1}x |",
        pool_ref / pool_zoo
    );
    bench_conv(steps, torch, None)
}

/// A convolution case of `bench ops`: input shape, output channels, kernel, stride, padding.
type ConvCase = ([usize; 4], usize, usize, usize, usize);

/// The convolutions `bench ops` times at the `cpu` preset's sizes, batch 32: the 3x3s of
/// ResNet-18 (8x8 down to 1x1 maps), those of VGG-11 (16x16 down to 2x2), and every
/// convolution of NiN (11x11 stride 4, 5x5, 3x3 and the 1x1s).
const CONV_CASES: [ConvCase; 17] = [
    ([32, 64, 8, 8], 64, 3, 1, 1),
    ([32, 128, 4, 4], 128, 3, 1, 1),
    ([32, 256, 2, 2], 256, 3, 1, 1),
    ([32, 512, 1, 1], 512, 3, 1, 1),
    ([32, 64, 16, 16], 128, 3, 1, 1),
    ([32, 128, 8, 8], 256, 3, 1, 1),
    ([32, 256, 8, 8], 256, 3, 1, 1),
    ([32, 256, 4, 4], 512, 3, 1, 1),
    ([32, 512, 4, 4], 512, 3, 1, 1),
    ([32, 512, 2, 2], 512, 3, 1, 1),
    ([32, 3, 67, 67], 96, 11, 4, 0),
    ([32, 96, 15, 15], 96, 1, 1, 0),
    ([32, 96, 7, 7], 256, 5, 1, 2),
    ([32, 256, 7, 7], 256, 1, 1, 0),
    ([32, 256, 3, 3], 384, 3, 1, 1),
    ([32, 384, 3, 3], 384, 1, 1, 0),
    ([32, 64, 32, 32], 128, 3, 1, 1),
];

/// A case as `bench_conv_torch.py` takes it: `NxCxHxW:OUT:K:S:P`.
fn conv_case_name((x, out, k, stride, padding): &ConvCase) -> String {
    format!(
        "{}x{}x{}x{}:{out}:{k}:{stride}:{padding}",
        x[0], x[1], x[2], x[3]
    )
}

/// The convolutions of [`CONV_CASES`] (those `only` names), with bias: zoo's kernel, forward and
/// forward + backward, beside PyTorch's (oneDNN) when a Python with torch is given.
fn bench_conv(steps: usize, torch: Option<&str>, only: Option<&str>) -> Result<()> {
    use candle_core::{DType, Device, Var};
    let time = |f: &mut dyn FnMut() -> Result<()>| median_ms(steps, f);
    let mut zoo_rows = Vec::new();
    let chosen: Vec<(usize, &ConvCase)> = CONV_CASES
        .iter()
        .enumerate()
        .filter(|(_, case)| {
            only.is_none_or(|o| o.split(',').any(|part| conv_case_name(case).contains(part)))
        })
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "bench ops: no convolution case matches --only"
    );
    for &(i, case) in &chosen {
        let (shape, out, k, stride, padding) = *case;
        let c = shape[1];
        let x = Var::from_tensor(&zoo_core::testing::test_input(&shape, i as u64)?)?;
        let w = Var::from_tensor(&zoo_core::testing::test_input(&[out, c, k, k], 7)?)?;
        let b = Var::from_tensor(&candle_core::Tensor::zeros(out, DType::F32, &Device::Cpu)?)?;
        let geometry = zoo_core::ops::conv::ConvGeometry { stride, padding };
        let run = || {
            zoo_core::ops::conv::conv2d(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                geometry,
                false,
            )
        };
        let forward = time(&mut || {
            run()?;
            Ok(())
        })?;
        let both = time(&mut || {
            run()?.sum_all()?.backward()?;
            Ok(())
        })?;
        zoo_rows.push((conv_case_name(case), forward, both));
    }
    let torch_rows: Vec<(String, f64, f64)> = match torch {
        None => Vec::new(),
        Some(python) => {
            let cases: Vec<String> = chosen
                .iter()
                .map(|(_, case)| conv_case_name(case))
                .collect();
            let out = std::process::Command::new(python)
                .arg(project_root().join("scripts/bench_conv_torch.py"))
                .args(["--steps", &steps.to_string(), "--cases", &cases.join(",")])
                .output()
                .with_context(|| format!("running {python} scripts/bench_conv_torch.py"))?;
            anyhow::ensure!(
                out.status.success(),
                "bench_conv_torch.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut rows = Vec::new();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() != 5 || f[0] != "RESULT" {
                    continue;
                }
                let parse = |v: &str| {
                    v.parse::<f64>()
                        .with_context(|| format!("bench_conv_torch.py: bad number in {line:?}"))
                };
                rows.push((f[2].to_string(), parse(f[3])?, parse(f[4])?));
            }
            rows
        }
    };
    println!(
        "\n| convolution (input:out:kernel:stride:padding) | zoo forward ms | PyTorch forward ms | zoo fwd+bwd ms | PyTorch fwd+bwd ms | fwd+bwd speed ratio |\n|---|---:|---:|---:|---:|---:|"
    );
    for (case, forward, both) in &zoo_rows {
        let t = torch_rows.iter().find(|t| &t.0 == case);
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "| {case} | {forward:.2} | {} | {both:.2} | {} | {} |",
            fmt(t.map(|t| t.1)),
            fmt(t.map(|t| t.2)),
            fmt(t.map(|t| t.2 / both))
        );
    }
    Ok(())
}

fn bench_data(root: &Path, batch_size: usize) -> Result<()> {
    use zoo_core::data::augment::Augment;
    use zoo_core::data::loader::{Loader, LoaderConfig};
    use zoo_core::data::transforms::EvalTransform;
    let train = zoo_core::data::resolve::load_split(root, "cifar10", zoo_core::data::Split::Train)
        .with_context(|| {
            format!(
                "loading CIFAR-10 from {} (run `cargo xtask data` first)",
                root.display()
            )
        })?;
    let train = Arc::new(train);
    println!(
        "CIFAR-10 train: {} images from {}; batch {batch_size}; RAYON_NUM_THREADS={}",
        train.len(),
        train.source,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    println!("{:<40} {:>12}", "case", "images/s");
    for (name, augment) in [
        ("loader, no augmentation", Augment::default()),
        (
            "loader, random crop (pad 4) + flip",
            Augment {
                crop_padding: Some(4),
                hflip: true,
            },
        ),
    ] {
        let loader = Loader::new(
            train.clone(),
            LoaderConfig {
                batch_size,
                augment,
                ..LoaderConfig::notebook(0)
            },
        )?;
        let start = Instant::now();
        let images: usize = loader.epoch(0, 0).map(|b| b.len()).sum();
        let rate = images as f64 / start.elapsed().as_secs_f64();
        println!("{name:<40} {rate:>12.0}");
    }
    let loader = Loader::new(
        train.clone(),
        LoaderConfig {
            batch_size,
            ..LoaderConfig::notebook(0)
        },
    )?;
    let device = candle_core::Device::Cpu;
    for size in [32, 96, 224] {
        let transform = EvalTransform::notebook(3, size);
        let start = Instant::now();
        let mut images = 0;
        for batch in loader.epoch(0, 0).take(40) {
            let x = transform.apply(&batch.images_tensor(&device)?, &device)?;
            images += x.dim(0)?;
        }
        let rate = images as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<40} {rate:>12.0}",
            format!("loader + to f32, resize {size}, normalise")
        );
    }
    Ok(())
}

/// The value after the colon of the first line of `file` that starts with `key` (the
/// `key: value` lines of /proc/cpuinfo and /proc/self/status), trimmed.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The CPU's model name from /proc/cpuinfo.
fn cpu_model() -> String {
    proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into())
}

/// Where a benchmark runs: the CPU, its threads and the tile kernels' instruction set.
fn print_machine() {
    println!(
        "machine: {}, {} threads (RAYON_NUM_THREADS), tile kernels {} (ZOO_CPU_ISA overrides)",
        cpu_model(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into()),
        zoo_core::ops::microkernel::active_isa().name()
    );
}

/// The repository root, found from this crate's manifest directory.
fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn models_doc() -> Result<String> {
    let mut doc = String::from(
        "# Models\n\nGenerated by `cargo xtask docs` from the registry \
         (`crates/zoo-cli/src/registry.rs`). Parameters and MACs are for the notebook's input \
         with 10 classes; MACs count convolutions and linear layers, per image.\n\n\
         | model | crate | input | parameters | GMAC/image | min input | notebook lr | notebook valid acc |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut tables = String::new();
    for entry in registry() {
        let summary = summarize(entry.name, None).with_context(|| entry.name.to_string())?;
        let (lr, acc) = entry.notebook.map_or(("-".into(), "-".into()), |n| {
            (n.learning_rate.to_string(), format!("{:.4}", n.valid_acc))
        });
        doc += &format!(
            "| `{}` | `{}` | {} | {} | {:.2} | {} px | {} | {} |\n",
            entry.name,
            entry.crate_name,
            entry.reference_input,
            group_thousands(summary.params as u64),
            summary.macs as f64 / 1e9,
            entry.min_input,
            lr,
            acc
        );
        tables += &format!(
            "\n## `{}`\n\n{}\n```text\n{}```\n",
            entry.name,
            entry.description,
            summary.table()
        );
    }
    Ok(doc + &tables)
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { zoo_cli::runtime::configure_process() };
    let cli = Cli::parse();
    zoo_cli::runtime::check_environment()?;
    zoo_core::runtime::on_compute_thread(|| run(cli))
}

fn run(cli: Cli) -> Result<()> {
    if matches!(cli.command, Command::Bench { .. }) {
        print_machine();
    }
    match cli.command {
        Command::DeviceCheck => device::prepare(&project_root())?,
        Command::Docs => {
            let path = project_root().join("docs/models.md");
            std::fs::write(&path, models_doc()?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Command::TrainAll {
            matrix,
            data_dir,
            device,
            only,
            update_docs,
        } => {
            let preset = matrix.unwrap_or_else(|| {
                if candle_core::utils::cuda_is_available() && device != "cpu" {
                    "reference".into()
                } else {
                    "cpu".into()
                }
            });
            let path = if Path::new(&preset).is_file() {
                PathBuf::from(&preset)
            } else {
                project_root()
                    .join("xtask/matrices")
                    .join(format!("{preset}.toml"))
            };
            let data = zoo_core::data::resolve::data_root(data_dir.as_deref());
            // A fresh clone beside ../shared/data: fill the data root first (idempotent).
            if shared_data().is_dir() {
                prepare_data(&data)?;
            }
            let report = zoo_cli::matrix::train_all(
                &path,
                &project_root().join("runs"),
                &data,
                &project_root().join("samples"),
                &device,
                only.as_deref(),
            )?;
            println!("report: {}", report.display());
            if update_docs {
                update_results_doc(&report, &preset)?;
            }
        }
        Command::MakeSample { data_dir } => {
            make_sample(&zoo_core::data::resolve::data_root(data_dir.as_deref()))?
        }
        Command::Data { data_dir } => {
            prepare_data(&zoo_core::data::resolve::data_root(data_dir.as_deref()))?
        }
        Command::Bench {
            what: Bench::Ops { steps, torch, only },
        } => bench_ops(steps, torch.as_deref(), only.as_deref())?,
        Command::Bench {
            what:
                Bench::Models {
                    batch_size,
                    steps,
                    only,
                    reference,
                    torch,
                    repeat,
                    infer_only,
                },
        } => bench_models(
            batch_size,
            steps,
            only.as_deref(),
            reference,
            torch.as_deref(),
            repeat,
            infer_only,
        )?,
        Command::Bench {
            what: Bench::Data {
                data_dir,
                batch_size,
            },
        } => bench_data(
            &zoo_core::data::resolve::data_root(data_dir.as_deref()),
            batch_size,
        )?,
    }
    Ok(())
}
