//! The `zoo` command line: commands, flags and the names they take (clap, with value enums
//! for every closed set of names).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use zoo_cli::recipe::RecipeName;
use zoo_cli::run_config::RunSpec;
use zoo_core::data::Split;

/// zoo: the classic CNNs (AlexNet, VGG, NiN, GoogLeNet, ResNet, DenseNet) on candle.
#[derive(Parser)]
#[command(name = "zoo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also the accuracy of horizontal-flip test-time augmentation (each image's logits
        /// summed with its mirror image's; not for digits).
        #[arg(long)]
        flip: bool,
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
    /// Convert a PyTorch state dict of a registry model (.pth/.pt in the zip or legacy format, or
    /// .safetensors; with or without DataParallel's `module.` prefix) to a zoo checkpoint, or
    /// back with --to-pytorch. torchvision's files convert as they are for the `tv-` models.
    Convert(Box<ConvertArgs>),
    /// Export a checkpoint's network to ONNX (opset 17, dynamic batch, input `images`, output
    /// `logits`, the preprocessing in its metadata) for ONNX Runtime, OpenVINO, tract, ...
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The `.onnx` file to write.
        #[arg(long)]
        onnx: PathBuf,
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

/// The `--split` of `zoo eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

/// `zoo device-check`: the prepared GPU check (scripts/device-check.sh), or its CPU self-test.
#[derive(clap::Args)]
pub struct DeviceCheckArgs {
    /// The device to check against zoo's CPU kernels (cuda, cuda:N).
    #[arg(long, default_value = "cuda", conflicts_with = "self_test")]
    pub device: String,
    /// Check candle's compositions on the CPU (the ops a GPU runs) instead of a device: the
    /// check's own test, for machines without a GPU.
    #[arg(long)]
    pub self_test: bool,
    /// Models to check, comma-separated (default: every registry model).
    #[arg(long)]
    pub models: Option<String>,
    /// Batch of the forward/backward comparison.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Time training steps at each model's reference input with this batch.
    #[arg(long, allow_hyphen_values = true)]
    pub time_batch: Option<usize>,
    /// Steps before timing (the first use of each GPU kernel compiles it).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps per model.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// PyTorch's `RESULT` lines for the same cases (scripts/bench_torch.py), shown beside.
    #[arg(long)]
    pub torch_results: Option<PathBuf>,
    /// Time one epoch of this many synthetic images (0: none).
    #[arg(long, default_value_t = 0)]
    pub epoch_images: usize,
    /// The model of the timed epoch.
    #[arg(long, default_value = "resnet18")]
    pub epoch_model: String,
    /// The input side of the timed epoch.
    #[arg(long, default_value_t = 224)]
    pub epoch_size: usize,
    /// The batch of the timed epoch.
    #[arg(long, default_value_t = 128)]
    pub epoch_batch: usize,
    /// Print the timing cases as `model:size,...` (scripts/bench_torch.py's `--cases`) and stop.
    #[arg(long)]
    pub print_cases: bool,
    /// Write the report (markdown) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report's first lines (where, when, which commit).
    #[arg(long, default_value = "## Device check")]
    pub header: String,
}

/// Every value is optional: unset ones come from the recipe.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Registry name (see `zoo list`).
    pub model: String,
    /// The recipe to start from: the notebook's, the network's improved one (its values:
    /// docs/recipes.md), or `finetune` (with --pretrained); the flags below override single
    /// values.
    #[arg(long, value_enum, default_value = "notebook")]
    pub recipe: RecipeName,
    /// The run's settings: the same fields a matrix entry or a recipe file sets.
    #[command(flatten)]
    pub spec: RunSpec,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Run folder (default: runs/single/MODEL-DATASET).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in the run folder from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Train data-parallel as N ranks on this machine: under mpirun on the CPU (the `mpi`
    /// feature), one GPU each with NCCL (the `nccl` feature). The batch size stays the global
    /// one; each rank takes its slice (docs/distributed.md).
    #[arg(long, allow_hyphen_values = true)]
    pub nproc_per_node: Option<usize>,
    /// Data-parallel: BatchNorm statistics over the global batch (PyTorch's SyncBatchNorm; N
    /// ranks then train as one process does). Default: on for two or more CPU ranks, off on
    /// GPUs.
    #[arg(long)]
    pub sync_bn: Option<bool>,
}

/// `zoo convert`'s flags.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Registry name of the model the weights belong to.
    #[arg(long)]
    pub model: String,
    pub input: PathBuf,
    pub output: PathBuf,
    /// zoo checkpoint -> PyTorch safetensors (keys `model.<name>`).
    #[arg(long)]
    pub to_pytorch: bool,
    /// The input side the weights were trained at (default: the file's metadata, what
    /// AlexNet's or VGG's first Linear implies, else the notebook's).
    #[arg(long, allow_hyphen_values = true)]
    pub input_size: Option<usize>,
    /// Normalisation mean per channel, comma-separated (default 0.5).
    #[arg(long)]
    pub mean: Option<String>,
    /// Normalisation std per channel, comma-separated (default 0.5).
    #[arg(long)]
    pub std: Option<String>,
    /// Class names, comma-separated (default: the notebook's dataset's).
    #[arg(long)]
    pub classes: Option<String>,
}
