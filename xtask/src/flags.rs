//! `cargo xtask`'s command line: the tasks and their flags (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// zoo's project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Regenerate docs/models.md (every registry model: input, parameters, MACs, layer table).
    Docs,
    /// Fill the data root (default ./data) from ../shared/data: MNIST and Fashion-MNIST IDX
    /// files, CIFAR-10 image folders extracted from the tarball.
    Data {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run a training matrix (default: `reference` with CUDA, `cpu` without), skipping complete
    /// runs and resuming unfinished ones; writes runs/MATRIX/report.md.
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
        /// Run the matrix data-parallel as N ranks on this machine: under mpirun on the CPU,
        /// one GPU each on GPUs (build xtask with `--features mpi` or `nccl`: `cargo run -p
        /// xtask --release --features mpi -- train-all --nproc-per-node N`).
        #[arg(long)]
        nproc_per_node: Option<usize>,
    },
    /// Write the small committed data sample (samples/) from the full datasets in the data root.
    MakeSample {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Build the CUDA binary of the device check into .devbin/ for scripts/device-check.sh
    /// on a GPU machine (docs/gpu.md).
    DeviceCheck,
    /// The same `zoo train` alone and as N MPI ranks, final weights compared (docs/distributed.md).
    DistCheck(crate::dist_check::DistCheck),
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
pub enum Bench {
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
        /// Time these convolutions instead of the built-in ones (comma-separated
        /// `NxCxHxW:OUT:K:S:P`, e.g. `1x64x56x56:64:3:1:1` for batch-1 inference at 224 px); the
        /// BatchNorm and pooling rows are then left out.
        #[arg(long)]
        cases: Option<String>,
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
        /// What the Python of `--torch` runs beside zoo: PyTorch eager (scripts/bench_torch.py),
        /// or the deployment runtimes ONNX Runtime and OpenVINO (scripts/bench_runtime.py: the
        /// same definitions exported to ONNX by PyTorch, 2 threads, one synchronous request;
        /// inference only).
        #[arg(long, value_enum, default_value = "torch")]
        peer: crate::bench::torch::Peer,
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
