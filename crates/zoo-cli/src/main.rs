//! The `zoo` command: list the models, summarise them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use zoo_cli::summary_cmd::{list_table, parse_input, summarize};
use zoo_cli::train_cmd::{
    Progress, RunConfig, eval_checkpoint, eval_report, predict, run_training,
};
use zoo_core::data::Split;
use zoo_core::data::augment::Augment;
use zoo_core::data::resolve::data_root;
use zoo_core::train::optim::OptimizerConfig;
use zoo_core::train::schedule::Schedule;
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
    Train(TrainArgs),
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
    },
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

#[derive(clap::Args)]
struct TrainArgs {
    /// Registry name (see `zoo list`).
    model: String,
    /// Dataset (default: the notebook's for this model).
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Square input side (default: the notebook's).
    #[arg(long)]
    input_size: Option<usize>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate (default: the notebook's for this model).
    #[arg(long)]
    lr: Option<f64>,
    /// sgd or adamw.
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// constant, step, cosine or onecycle.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Warm-up epochs (cosine).
    #[arg(long, default_value_t = 0.0)]
    warmup_epochs: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    #[arg(long)]
    clip_grad_norm: Option<f64>,
    /// Random crop (padding 4) and horizontal flip on training images.
    #[arg(long)]
    augment: bool,
    /// xavier-uniform (the notebook) or pytorch-default.
    #[arg(long, default_value = "xavier-uniform")]
    init: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the first N training images of each class.
    #[arg(long)]
    train_per_class: Option<usize>,
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
    let mut c = RunConfig::notebook(&a.model, a.input_size)?;
    if let Some(d) = &a.dataset {
        c.dataset = d.clone();
    }
    c.batch_size = a.batch_size;
    c.seed = a.seed;
    c.init = a.init.parse().map_err(anyhow::Error::msg)?;
    c.device = a.device.clone();
    c.train_per_class = a.train_per_class;
    if a.augment {
        c.augment = Augment {
            crop_padding: Some(4),
            hflip: true,
        };
    }
    c.recipe.epochs = a.epochs;
    if let Some(lr) = a.lr {
        c.recipe.learning_rate = lr;
    }
    c.recipe.label_smoothing = a.label_smoothing;
    c.recipe.clip_grad_norm = a.clip_grad_norm;
    c.recipe.optimizer = match a.optimizer.as_str() {
        "sgd" => OptimizerConfig::Sgd {
            momentum: a.momentum,
            nesterov: a.nesterov,
            weight_decay: a.weight_decay,
        },
        "adamw" => OptimizerConfig::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
        },
        other => anyhow::bail!("--optimizer `{other}`: expected sgd or adamw"),
    };
    c.recipe.schedule = match a.schedule.as_str() {
        "constant" => Schedule::Constant,
        "step" => Schedule::Step {
            every_epochs: (a.epochs / 3).max(1),
            gamma: 0.1,
        },
        "cosine" => Schedule::Cosine {
            warmup_epochs: a.warmup_epochs,
            min_factor: 0.0,
        },
        "onecycle" => Schedule::OneCycle {
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        },
        other => anyhow::bail!("--schedule `{other}`: expected constant, step, cosine or onecycle"),
    };
    Ok(c)
}

fn main() -> Result<()> {
    // SAFETY: first thing in main, before any thread is spawned.
    unsafe { zoo_cli::runtime::configure_process() };
    let cli = Cli::parse();
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
            let config: Option<RunConfig> = zoo_core::train::checkpoint::load_checkpoint(
                &checkpoint,
                &candle_core::Device::Cpu,
            )
            .ok()
            .and_then(|c| toml::from_str(&c.meta.config).ok());
            let dataset = dataset
                .or(config.map(|c| c.dataset))
                .ok_or_else(|| anyhow::anyhow!("--dataset is needed: the checkpoint does not say which dataset it was trained on"))?;
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
        } => {
            if to_pytorch {
                zoo_cli::convert::export(&input, &output)?;
            } else {
                zoo_cli::convert::import(&model, &input, &output)?;
            }
            println!("wrote {}", output.display());
        }
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
