//! The `zoo` command: list the models, summarise them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use zoo_cli::recipe::{OptimizerKind, RecipeName, RunSpec, ScheduleKind};
use zoo_cli::summary_cmd::{list_table, parse_input, summarize};
use zoo_cli::train_cmd::{
    Progress, RunConfig, eval_checkpoint, eval_report, predict, run_training,
};
use zoo_core::data::Split;
use zoo_core::data::resolve::data_root;
use zoo_core::init::InitScheme;
use zoo_core::train::trainer::Outcome;

/// mimalloc keeps freed tensor buffers mapped: glibc's malloc returns each large buffer to the
/// OS and every training step page-faults it back in (1.3-1.6x slower steps for AlexNet and
/// VGG, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Train one model (the notebook's recipe unless told otherwise).
    Train(Box<TrainArgs>),
    /// Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset split.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Dataset (default: the one the checkpoint was trained on).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// train or test.
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Top-5 classes of images with a checkpoint (which carries its input transform).
    Predict {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Image files (PNG or JPEG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Print JSON: per image the top-5 and the raw logits.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Convert a PyTorch state dict of a registry model (.pt or .safetensors, with or without
    /// DataParallel's `module.` prefix) to a zoo checkpoint, or back with --to-pytorch.
    Convert {
        /// Registry name of the model the weights belong to.
        #[arg(long)]
        model: String,
        input: PathBuf,
        output: PathBuf,
        /// zoo checkpoint -> PyTorch safetensors (keys `model.<name>`).
        #[arg(long)]
        to_pytorch: bool,
        /// The input side the weights were trained at (default: the file's metadata, what
        /// AlexNet's or VGG's first Linear implies, else the notebook's).
        #[arg(long)]
        input_size: Option<usize>,
        /// Normalisation mean per channel, comma-separated (default 0.5).
        #[arg(long)]
        mean: Option<String>,
        /// Normalisation std per channel, comma-separated (default 0.5).
        #[arg(long)]
        std: Option<String>,
        /// Class names, comma-separated (default: the notebook's dataset's).
        #[arg(long)]
        classes: Option<String>,
    },
    /// Every model's forward and backward on a GPU against zoo's CPU kernels, step timings
    /// and one timed epoch: the prepared device check (docs/gpu.md).
    DeviceCheck(Box<DeviceCheckArgs>),
    /// Write the notebook's 6x10 grid of training images, titled by class, as a PNG.
    ShowBatch {
        /// cifar10, mnist, fashion-mnist, or the name of an image folder under the data root.
        #[arg(long)]
        dataset: String,
        /// Data root (default: $ZOO_DATA, else ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Seed of the shuffle that picks the images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output PNG.
        #[arg(long, default_value = "grid.png")]
        out: PathBuf,
    },
}

/// `zoo device-check`: the prepared GPU check (scripts/device-check.sh), or its CPU self-test.
#[derive(clap::Args)]
struct DeviceCheckArgs {
    /// The device to check against zoo's CPU kernels (cuda, cuda:N).
    #[arg(long, default_value = "cuda", conflicts_with = "self_test")]
    device: String,
    /// Check candle's compositions on the CPU (the ops a GPU runs) instead of a device: the
    /// check's own test, for machines without a GPU.
    #[arg(long)]
    self_test: bool,
    /// Models to check, comma-separated (default: every registry model).
    #[arg(long)]
    models: Option<String>,
    /// Batch of the forward/backward comparison.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Time training steps at each model's reference input with this batch.
    #[arg(long)]
    time_batch: Option<usize>,
    /// Steps before timing (the first use of each GPU kernel compiles it).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps per model.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// PyTorch's `RESULT` lines for the same cases (scripts/bench_torch.py), shown beside.
    #[arg(long)]
    torch_results: Option<PathBuf>,
    /// Time one epoch of this many synthetic images (0: none).
    #[arg(long, default_value_t = 0)]
    epoch_images: usize,
    /// The model of the timed epoch.
    #[arg(long, default_value = "resnet18")]
    epoch_model: String,
    /// The input side of the timed epoch.
    #[arg(long, default_value_t = 224)]
    epoch_size: usize,
    /// The batch of the timed epoch.
    #[arg(long, default_value_t = 128)]
    epoch_batch: usize,
    /// Print the timing cases as `model:size,...` (scripts/bench_torch.py's `--cases`) and stop.
    #[arg(long)]
    print_cases: bool,
    /// Write the report (markdown) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The report's first lines (where, when, which commit).
    #[arg(long, default_value = "## Device check")]
    header: String,
}

/// Every value is optional: unset ones come from the recipe.
#[derive(clap::Args)]
struct TrainArgs {
    /// Registry name (see `zoo list`).
    model: String,
    /// The recipe to start from: the notebook's, or the network's improved one (its values:
    /// docs/recipes.md); the flags below override single values.
    #[arg(long, value_enum, default_value = "notebook")]
    recipe: RecipeName,
    /// Dataset (default: the notebook's for this model).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Square input side (default: the recipe's).
    #[arg(long)]
    input_size: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate (default: the recipe's).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD momentum.
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD with Nesterov momentum (`--nesterov false` turns it off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    nesterov: Option<bool>,
    /// Weight decay (on weights only, not on biases or BatchNorm).
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Linear warm-up epochs before the cosine decay.
    #[arg(long)]
    warmup_epochs: Option<f64>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    #[arg(long)]
    clip_grad_norm: Option<f64>,
    /// Random crop (padding 4) and, except on digits, horizontal flip (`--augment false` off).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    augment: Option<bool>,
    /// Keep an EMA of the weights with this decay and validate it too (0: none).
    #[arg(long)]
    ema_decay: Option<f64>,
    /// xavier-uniform (the notebook), pytorch-default, kaiming-normal-fan-out (torchvision's
    /// VGG and ResNet) or kaiming-normal-fan-in (torchvision's DenseNet).
    #[arg(long)]
    init: Option<InitScheme>,
    #[arg(long)]
    seed: Option<u64>,
    /// Use the first N training images of each class.
    #[arg(long)]
    train_per_class: Option<usize>,
    /// Validate on the first N test images of each class.
    #[arg(long)]
    valid_per_class: Option<usize>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Run folder (default: runs/single/<model>-<dataset>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue the run in the run folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
}

fn run_config(a: &TrainArgs) -> Result<RunConfig> {
    RunSpec {
        model: Some(a.model.clone()),
        recipe: Some(a.recipe),
        dataset: a.dataset.clone(),
        input_size: a.input_size,
        epochs: a.epochs,
        batch_size: a.batch_size,
        learning_rate: a.lr,
        optimizer: a.optimizer,
        momentum: a.momentum,
        nesterov: a.nesterov,
        weight_decay: a.weight_decay,
        schedule: a.schedule,
        warmup_epochs: a.warmup_epochs,
        label_smoothing: a.label_smoothing,
        clip_grad_norm: a.clip_grad_norm,
        augment: a.augment,
        init: a.init,
        ema_decay: a.ema_decay,
        seed: a.seed,
        train_per_class: a.train_per_class,
        valid_per_class: a.valid_per_class,
    }
    .resolve(&a.device)
}

fn device_check(args: &DeviceCheckArgs) -> Result<()> {
    use zoo_cli::device_check::{CheckOptions, EpochCheck, Target, markdown, run_check};
    let target = if args.self_test {
        Target::CpuReference
    } else {
        Target::Device(zoo_cli::train_cmd::parse_device(&args.device)?)
    };
    let models = match &args.models {
        Some(list) => list
            .split(',')
            .map(|name| zoo_cli::find(name.trim()).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?,
        None => zoo_cli::registry().iter().collect(),
    };
    if args.print_cases {
        let cases: Vec<String> = models
            .iter()
            .map(|e| format!("{}:{}", e.name, e.reference_input.height))
            .collect();
        println!("{}", cases.join(","));
        return Ok(());
    }
    let epoch = match args.epoch_images {
        0 => None,
        images => Some(EpochCheck {
            model: zoo_cli::find(&args.epoch_model)?,
            input_size: args.epoch_size,
            images,
            batch: args.epoch_batch,
        }),
    };
    let options = CheckOptions {
        target,
        models,
        batch: args.batch,
        timing: args.time_batch.map(|b| (b, args.warmup, args.steps)),
        torch_results: args.torch_results.clone(),
        epoch,
    };
    let report = run_check(&options)?;
    let text = markdown(&report, &args.header);
    match &args.out {
        Some(path) => {
            zoo_core::train::checkpoint::write_atomic(path, text.as_bytes())?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    let failed = report.failures();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} comparisons outside the tolerance: {}",
        failed.len(),
        report.parity.len(),
        failed
            .iter()
            .map(|p| p.model)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { zoo_cli::runtime::configure_process() };
    let cli = Cli::parse();
    zoo_cli::runtime::check_environment()?;
    zoo_core::runtime::on_compute_thread(|| run(cli))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
        Command::Train(args) => {
            let config = run_config(&args)?;
            let run_dir = args.run_dir.clone().unwrap_or_else(|| {
                PathBuf::from(format!("runs/single/{}-{}", config.model, config.dataset))
            });
            let root = data_root(args.data_dir.as_deref());
            let label = format!("{}-{}", config.model, config.dataset);
            match run_training(
                &config,
                &root,
                &run_dir,
                args.resume,
                None,
                &mut Progress::new(&label),
            )? {
                Outcome::Finished(metrics) => {
                    let best = metrics.iter().map(|m| m.valid_acc).fold(0.0, f64::max);
                    println!(
                        "done: best valid accuracy {best:.4}; outputs in {}",
                        run_dir.display()
                    );
                }
                Outcome::Interrupted { epoch, batch } => {
                    println!("stopped at epoch {epoch} batch {batch}")
                }
            }
        }
        Command::Eval {
            checkpoint,
            dataset,
            data_dir,
            split,
            device,
        } => {
            let split = match split.as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                other => anyhow::bail!("--split `{other}`: expected train or test"),
            };
            let dataset = match dataset {
                Some(d) => d,
                None => {
                    // The checkpoint's own run configuration names its dataset; a damaged
                    // checkpoint is reported as such.
                    let ckpt = zoo_core::train::checkpoint::load_checkpoint(
                        &checkpoint,
                        &candle_core::Device::Cpu,
                    )?;
                    let config: Option<RunConfig> = toml::from_str(&ckpt.meta.config).ok();
                    config.map(|c| c.dataset).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--dataset is needed: {} does not say which dataset it was trained on \
                             (a converted checkpoint)",
                            checkpoint.display()
                        )
                    })?
                }
            };
            let (loaded, eval) = eval_checkpoint(
                &checkpoint,
                &data_root(data_dir.as_deref()),
                &dataset,
                split,
                &device,
            )?;
            println!("{} on {dataset} ({})", loaded.meta.model, split.name());
            print!("{}", eval_report(&loaded.meta.classes, &eval));
        }
        Command::Predict {
            checkpoint,
            images,
            json,
            device,
        } => {
            let predictions = predict(&checkpoint, &images, &device)?;
            if json {
                println!("{}", serde_json::to_string(&predictions)?);
            } else {
                for p in &predictions {
                    println!("{}", p.image.display());
                    for (class, prob) in &p.top5 {
                        println!("  {prob:>7.4}  {class}");
                    }
                }
            }
        }
        Command::Convert {
            model,
            input,
            output,
            to_pytorch,
            input_size,
            mean,
            std,
            classes,
        } => {
            use zoo_cli::convert::{ImportOptions, parse_classes, parse_floats};
            if to_pytorch {
                anyhow::ensure!(
                    input_size.is_none() && mean.is_none() && std.is_none() && classes.is_none(),
                    "--input-size, --mean, --std and --classes describe an import; --to-pytorch \
                     exports the checkpoint's weights as they are"
                );
                zoo_cli::convert::export(&input, &output)?;
            } else {
                let options = ImportOptions {
                    input_size,
                    mean: mean
                        .as_deref()
                        .map(|m| parse_floats(m, "--mean"))
                        .transpose()?,
                    std: std
                        .as_deref()
                        .map(|s| parse_floats(s, "--std"))
                        .transpose()?,
                    classes: classes.as_deref().map(parse_classes),
                };
                zoo_cli::convert::import_with(&model, &input, &output, &options)?;
            }
            println!("wrote {}", output.display());
        }
        Command::DeviceCheck(args) => device_check(&args)?,
        Command::ShowBatch {
            dataset,
            data_dir,
            seed,
            out,
        } => {
            let root = zoo_core::data::resolve::data_root(data_dir.as_deref());
            zoo_cli::show_batch::show_batch(&root, &dataset, seed, &out)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
