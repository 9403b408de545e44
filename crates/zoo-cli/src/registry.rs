//! The registry: every zoo model by name, with its reference input and how to build it.
//! The CLI, the cross-crate tests, xtask and the docs all iterate [`registry`].

use candle_core::Result;
use candle_nn::VarBuilder;
use zoo_alexnet::tv::{TvAlexNet, TvAlexNetConfig};
use zoo_alexnet::{AlexNet, AlexNetConfig};
use zoo_core::data::Dataset;
use zoo_core::{InputSpec, Model};
use zoo_densenet::tv::{TvDenseNet, TvDenseNetConfig};
use zoo_densenet::{DenseNet, DenseNetConfig};
use zoo_googlenet::tv::{TvGoogLeNet, TvGoogLeNetConfig};
use zoo_googlenet::{GoogLeNet, GoogLeNetConfig};
use zoo_nin::{Nin, NinConfig};
use zoo_resnet::tv::{TvResNet, TvResNetConfig};
use zoo_resnet::{ResNet, ResNetConfig};
use zoo_vgg::tv::{TvVgg, TvVggConfig};
use zoo_vgg::{Vgg, VggConfig};

/// What the notebook did with a model: its dataset, learning rate and 10-epoch result.
#[derive(Debug, Clone, PartialEq)]
pub struct NotebookRun {
    pub dataset: Dataset,
    pub learning_rate: f64,
    /// Validation accuracy after 10 epochs, as printed.
    pub valid_acc: f64,
}

/// Where a network's definition comes from, which decides the keys of its PyTorch weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The lecture notebook's `nn.Sequential` networks: PyTorch key = `model.` + zoo name.
    Notebook,
    /// `torchvision.models`, as built for its ImageNet weights: PyTorch key = zoo name.
    Torchvision,
}

type BuildFn = fn(InputSpec, usize, VarBuilder) -> Result<Box<dyn Model>>;

/// One registered model.
pub struct ModelEntry {
    /// Registry name (`resnet18`).
    pub name: &'static str,
    pub description: &'static str,
    /// The crate that defines it.
    pub crate_name: &'static str,
    /// Whose definition it is.
    pub origin: Origin,
    /// The input its origin uses (channels, height, width): the notebook's, or ImageNet's 224.
    pub reference_input: InputSpec,
    /// The number of classes its origin uses: 10 for the notebook's, 1000 for torchvision's.
    pub reference_classes: usize,
    /// Trainable parameters at the reference input and classes, as the notebook's definitions
    /// and torchvision give them (`None` where neither has such a network).
    pub reference_params: Option<usize>,
    /// The smallest square input side the network's geometry accepts.
    pub min_input: usize,
    /// The notebook's training run (`None` for networks it does not train).
    pub notebook: Option<NotebookRun>,
    build: BuildFn,
}

impl ModelEntry {
    /// Builds the model for `input` and `num_classes`.
    pub fn build(
        &self,
        input: InputSpec,
        num_classes: usize,
        vb: VarBuilder,
    ) -> Result<Box<dyn Model>> {
        (self.build)(input, num_classes, vb)
    }

    /// Builds the model exactly as its origin does (reference input and classes).
    pub fn build_reference(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        self.build(self.reference_input, self.reference_classes, vb)
    }

    /// The square input side used for fast CPU training on this model's dataset: the native
    /// image size (32 for CIFAR-10, 28 for MNIST) or the smallest the network accepts.
    pub fn cpu_input_size(&self) -> usize {
        let native = match self.notebook.as_ref().map(|n| &n.dataset) {
            Some(Dataset::Mnist) => 28,
            _ => 32,
        };
        native.max(self.min_input)
    }
}

fn boxed<M: Model + 'static>(m: Result<M>) -> Result<Box<dyn Model>> {
    Ok(Box::new(m?))
}

static REGISTRY: [ModelEntry; 23] = [
    ModelEntry {
        name: "alexnet",
        description: "AlexNet: 5 conv + 3 linear layers with dropout",
        crate_name: "zoo-alexnet",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(46_787_978),
        min_input: 65,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.7768,
        }),
        // Two epochs are too few to profit from crop + flip (docs/recipes.md: 0.650 without,
        // 0.596 with).
        build: |input, classes, vb| {
            boxed(AlexNet::new(
                &AlexNetConfig::alexnet()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "vgg11",
        description: "VGG-11: the notebook's conv_arch, 3 linear layers",
        crate_name: "zoo-vgg",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(128_807_306),
        min_input: 32,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.5388,
        }),
        build: |input, classes, vb| {
            boxed(Vgg::new(
                &VggConfig::vgg11()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "vgg11-small",
        description: "VGG-11 with every channel count divided by 4",
        crate_name: "zoo-vgg",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(43_093_610),
        min_input: 32,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.4949,
        }),
        // Four epochs: 0.650 without crop + flip, 0.598 with (docs/recipes.md).
        build: |input, classes, vb| {
            let config = VggConfig::vgg11_small()
                .with_input(input)
                .with_num_classes(classes);
            boxed(Vgg::new(&config, vb))
        },
    },
    ModelEntry {
        name: "nin",
        description: "Network in Network, 3-channel input (CIFAR-10)",
        crate_name: "zoo-nin",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(2_015_398),
        min_input: 67,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.5,
        }),
        // Four epochs: 0.643 without crop + flip, 0.58-0.60 with (docs/recipes.md).
        build: |input, classes, vb| {
            boxed(Nin::new(
                &NinConfig::nin().with_input(input).with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "nin-mnist",
        description: "Network in Network, 1-channel input (MNIST)",
        crate_name: "zoo-nin",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(1, 224),
        reference_classes: 10,
        reference_params: Some(1_992_166),
        min_input: 67,
        notebook: Some(NotebookRun {
            dataset: Dataset::Mnist,
            learning_rate: 0.1,
            valid_acc: 0.9866,
        }),
        build: |input, classes, vb| {
            boxed(Nin::new(
                &NinConfig::nin_mnist()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "googlenet",
        description: "GoogLeNet: 9 Inception blocks, trained at 96 px",
        crate_name: "zoo-googlenet",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 96),
        reference_classes: 10,
        reference_params: Some(5_983_802),
        min_input: 1,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.6863,
        }),
        build: |input, classes, vb| {
            boxed(GoogLeNet::new(
                &GoogLeNetConfig::googlenet()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "resnet18",
        description: "ResNet-18 with the notebook's Residual block",
        crate_name: "zoo-resnet",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(11_184_650),
        min_input: 1,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.05,
            valid_acc: 0.8163,
        }),
        build: |input, classes, vb| {
            boxed(ResNet::new(
                &ResNetConfig::resnet18()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "resnet34",
        description: "ResNet-34 depth ([3, 4, 6, 3]) with the notebook's Residual block",
        crate_name: "zoo-resnet",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: None,
        min_input: 1,
        notebook: None,
        build: |input, classes, vb| {
            boxed(ResNet::new(
                &ResNetConfig::resnet34()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    ModelEntry {
        name: "densenet",
        description: "DenseNet: 4 dense blocks of 4 conv blocks, growth 32",
        crate_name: "zoo-densenet",
        origin: Origin::Notebook,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 10,
        reference_params: Some(764_498),
        min_input: 29,
        notebook: Some(NotebookRun {
            dataset: Dataset::Cifar10,
            learning_rate: 0.1,
            valid_acc: 0.7458,
        }),
        build: |input, classes, vb| {
            boxed(DenseNet::new(
                &DenseNetConfig::densenet()
                    .with_input(input)
                    .with_num_classes(classes),
                vb,
            ))
        },
    },
    torchvision(
        "tv-alexnet",
        "torchvision's AlexNet: 64-192-384-256-256 channels, adaptive 6x6 pooling",
        "zoo-alexnet",
        61_100_840,
        63,
        |input, classes, vb| {
            let config = TvAlexNetConfig::alexnet()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvAlexNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-vgg11",
        "torchvision's VGG-11 (configuration A), adaptive 7x7 pooling",
        "zoo-vgg",
        132_863_336,
        32,
        |input, classes, vb| {
            let config = TvVggConfig::vgg11()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvVgg::new(&config, vb))
        },
    ),
    torchvision(
        "tv-vgg11-bn",
        "torchvision's VGG-11 with BatchNorm",
        "zoo-vgg",
        132_868_840,
        32,
        |input, classes, vb| {
            let config = TvVggConfig::vgg11_bn()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvVgg::new(&config, vb))
        },
    ),
    torchvision(
        "tv-vgg16",
        "torchvision's VGG-16 (configuration D)",
        "zoo-vgg",
        138_357_544,
        32,
        |input, classes, vb| {
            let config = TvVggConfig::vgg16()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvVgg::new(&config, vb))
        },
    ),
    torchvision(
        "tv-vgg16-bn",
        "torchvision's VGG-16 with BatchNorm",
        "zoo-vgg",
        138_365_992,
        32,
        |input, classes, vb| {
            let config = TvVggConfig::vgg16_bn()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvVgg::new(&config, vb))
        },
    ),
    torchvision(
        "tv-googlenet",
        "torchvision's GoogLeNet: BatchNorm (eps 1e-3), transform_input, no aux heads",
        "zoo-googlenet",
        6_624_904,
        15,
        |input, classes, vb| {
            let config = TvGoogLeNetConfig::googlenet()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvGoogLeNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-resnet18",
        "torchvision's ResNet-18: basic blocks [2, 2, 2, 2], bias-free convolutions",
        "zoo-resnet",
        11_689_512,
        1,
        |input, classes, vb| {
            let config = TvResNetConfig::resnet18()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvResNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-resnet34",
        "torchvision's ResNet-34: basic blocks [3, 4, 6, 3]",
        "zoo-resnet",
        21_797_672,
        1,
        |input, classes, vb| {
            let config = TvResNetConfig::resnet34()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvResNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-resnet50",
        "torchvision's ResNet-50: bottlenecks [3, 4, 6, 3] (v1.5)",
        "zoo-resnet",
        25_557_032,
        1,
        |input, classes, vb| {
            let config = TvResNetConfig::resnet50()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvResNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-resnet101",
        "torchvision's ResNet-101: bottlenecks [3, 4, 23, 3]",
        "zoo-resnet",
        44_549_160,
        1,
        |input, classes, vb| {
            let config = TvResNetConfig::resnet101()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvResNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-resnet152",
        "torchvision's ResNet-152: bottlenecks [3, 8, 36, 3]",
        "zoo-resnet",
        60_192_808,
        1,
        |input, classes, vb| {
            let config = TvResNetConfig::resnet152()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvResNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-densenet121",
        "torchvision's DenseNet-121: blocks (6, 12, 24, 16), growth 32",
        "zoo-densenet",
        7_978_856,
        29,
        |input, classes, vb| {
            let config = TvDenseNetConfig::densenet121()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvDenseNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-densenet169",
        "torchvision's DenseNet-169: blocks (6, 12, 32, 32)",
        "zoo-densenet",
        14_149_480,
        29,
        |input, classes, vb| {
            let config = TvDenseNetConfig::densenet169()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvDenseNet::new(&config, vb))
        },
    ),
    torchvision(
        "tv-densenet201",
        "torchvision's DenseNet-201: blocks (6, 12, 48, 32)",
        "zoo-densenet",
        20_013_928,
        29,
        |input, classes, vb| {
            let config = TvDenseNetConfig::densenet201()
                .with_input(input)
                .with_num_classes(classes);
            boxed(TvDenseNet::new(&config, vb))
        },
    ),
];

/// A torchvision network's entry: ImageNet's input and 1000 classes, no notebook run.
const fn torchvision(
    name: &'static str,
    description: &'static str,
    crate_name: &'static str,
    params: usize,
    min_input: usize,
    build: BuildFn,
) -> ModelEntry {
    ModelEntry {
        name,
        description,
        crate_name,
        origin: Origin::Torchvision,
        reference_input: InputSpec::square(3, 224),
        reference_classes: 1000,
        reference_params: Some(params),
        min_input,
        notebook: None,
        build,
    }
}

/// Every registered model: the notebook's in its order, then torchvision's.
pub fn registry() -> &'static [ModelEntry] {
    &REGISTRY
}

/// The entry named `name`, or an error listing the names.
pub fn find(name: &str) -> Result<&'static ModelEntry> {
    REGISTRY.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
        candle_core::Error::Msg(format!(
            "unknown model `{name}`; known models: {}",
            names.join(", ")
        ))
    })
}
