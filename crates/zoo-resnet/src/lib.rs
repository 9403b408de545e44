//! ResNet (He et al., 2015), as defined in the reference notebook.
//!
//! A 7x7 stem with BatchNorm, four stages of `Residual` blocks (two 3x3 convolutions with
//! BatchNorm, plus a strided 1x1 convolution on the shortcut where the shape changes), global
//! average pooling and one linear layer. The notebook's ResNet-18 is
//! [`ResNetConfig::resnet18`]; [`ResNetConfig::resnet34`] is the same code with the paper's
//! `[3, 4, 6, 3]` blocks per stage. [`tv`] holds torchvision's ResNets (18 to 152, basic and
//! bottleneck blocks), named as torchvision's state dicts name them.
//!
//! # Shapes (ResNet-18)
//! `[b, 3, 224, 224] -> [b, 64, 56, 56] -> [b, 128, 28, 28] -> [b, 256, 14, 14]
//! -> [b, 512, 7, 7] -> [b, 512, 1, 1] -> [b, 512] -> [b, 10]`
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::ModuleT;
//! use zoo_nn::init::{InitScheme, ParamStore};
//! use zoo_resnet::{ResNet, ResNetConfig};
//!
//! let store = ParamStore::new(0, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
//! let net = ResNet::new(&ResNetConfig::resnet18(), store.var_builder())?;
//! let logits = net.forward_t(&Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod tv;

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use zoo_nn::export::{Graph, Value};
use zoo_nn::model::{check_config, check_fits};
use zoo_nn::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Conv2dSpec, Flatten, Layer, LayerKind, Linear,
    SequentialT, add_relu, conv7_stem,
};
use zoo_nn::{ForwardContext, InputSpec};

/// The notebook's `Residual(input_channels, num_channels, use_1x1conv, strides)`.
/// Weights `conv1`, `conv2`, `conv3` (shortcut, optional), `bn1`, `bn2`.
pub struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Option<Conv2d>,
    bn1: BatchNorm2d,
    bn2: BatchNorm2d,
}

impl Residual {
    /// The notebook's block; an error when the shortcut cannot be added (channels or stride
    /// change without `use_1x1conv`).
    pub fn new(
        input_channels: usize,
        num_channels: usize,
        use_1x1conv: bool,
        strides: usize,
        vb: VarBuilder,
        context: &ForwardContext,
    ) -> Result<Self> {
        let conv1 = Conv2d::new(
            Conv2dSpec::new(input_channels, num_channels, 3)
                .padding(1)
                .stride(strides),
            vb.pp("conv1"),
        )?;
        let conv2 = Conv2d::new(
            Conv2dSpec::new(num_channels, num_channels, 3).padding(1),
            vb.pp("conv2"),
        )?;
        let conv3 = if use_1x1conv {
            let spec = Conv2dSpec::new(input_channels, num_channels, 1).stride(strides);
            Some(Conv2d::new(spec, vb.pp("conv3"))?)
        } else {
            None
        };
        if conv3.is_none() && (input_channels != num_channels || strides != 1) {
            candle_core::bail!(
                "Residual `{}`: {input_channels}->{num_channels} channels with stride {strides} \
                 needs use_1x1conv, or the shortcut cannot be added",
                vb.prefix()
            )
        }
        Ok(Self {
            conv1,
            conv2,
            conv3,
            bn1: BatchNorm2d::new(num_channels, vb.pp("bn1"), context)?,
            bn2: BatchNorm2d::new(num_channels, vb.pp("bn2"), context)?,
        })
    }
}

impl ModuleT for Residual {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // BatchNorm + ReLU and the residual add + ReLU run as fused kernels; in frozen
        // evaluation each BatchNorm is folded into its convolution.
        let y = self.conv1.forward_bn_t(x, &self.bn1, train, true)?;
        let y = self.conv2.forward_bn_t(&y, &self.bn2, train, false)?;
        let shortcut = match &self.conv3 {
            Some(conv3) => conv3.forward_t(x, train)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}

impl Layer for Residual {
    fn kind(&self) -> LayerKind {
        LayerKind::Residual
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let mid = self.conv1.output_shape(input)?;
        self.conv2.output_shape(&mid)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let y = self.conv1.export(graph, input)?;
        let y = self.bn1.export(graph, &y)?;
        let y = graph.relu(&y);
        let y = self.conv2.export(graph, &y)?;
        let y = self.bn2.export(graph, &y)?;
        let shortcut = match &self.conv3 {
            Some(conv3) => conv3.export(graph, input)?,
            None => input.clone(),
        };
        let sum = graph.add(&y, &shortcut)?;
        Ok(graph.relu(&sum))
    }

    fn num_params(&self) -> usize {
        self.conv1.num_params()
            + self.conv2.num_params()
            + self.conv3.as_ref().map_or(0, |c| c.num_params())
            + self.bn1.num_params()
            + self.bn2.num_params()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let mid = self.conv1.output_shape(input)?;
        let shortcut = match &self.conv3 {
            Some(c) => c.macs(input)?,
            None => 0,
        };
        zoo_nn::nn::mac_sum(
            "Residual",
            input,
            &[self.conv1.macs(input)?, self.conv2.macs(&mid)?, shortcut],
        )
    }
}

/// ResNet's configuration: residual blocks and channels per stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Residual blocks in each stage (`b2`..`b5`).
    pub blocks: Vec<usize>,
    /// Output channels of each stage; the stem has `channels[0]`.
    pub channels: Vec<usize>,
    /// Number of output classes.
    pub num_classes: usize,
    /// The input the network is built for (channels, height, width).
    pub input: InputSpec,
}

impl ResNetConfig {
    /// The notebook's ResNet-18: `[2, 2, 2, 2]` blocks of `[64, 128, 256, 512]` channels,
    /// 10 classes, 3x224x224.
    pub fn resnet18() -> Self {
        Self {
            blocks: vec![2, 2, 2, 2],
            channels: vec![64, 128, 256, 512],
            num_classes: 10,
            input: InputSpec::square(3, 224),
        }
    }

    /// ResNet-34's depth (`[3, 4, 6, 3]`) with the notebook's blocks.
    pub fn resnet34() -> Self {
        Self {
            blocks: vec![3, 4, 6, 3],
            ..Self::resnet18()
        }
    }
}

zoo_nn::impl_input_config!(ResNetConfig);

/// The notebook's `resnet_block`: a stage of residual blocks; all but the first stage start
/// with a strided block that changes the channel count.
fn resnet_stage(
    input_channels: usize,
    num_channels: usize,
    num_residuals: usize,
    first_block: bool,
    vb: VarBuilder,
    context: &ForwardContext,
) -> Result<SequentialT> {
    let mut stage = SequentialT::new();
    for i in 0..num_residuals {
        if i == 0 && !first_block {
            stage.push_with(&vb, |vb| {
                Residual::new(input_channels, num_channels, true, 2, vb, context)
            })?;
        } else {
            stage.push_with(&vb, |vb| {
                Residual::new(num_channels, num_channels, false, 1, vb, context)
            })?;
        }
    }
    Ok(stage)
}

/// ResNet: `0` stem (`b1`), `1`..`4` stages, then `AdaptiveAvgPool2d`, `Flatten`, `Linear`.
pub struct ResNet {
    config: ResNetConfig,
    net: SequentialT,
    context: ForwardContext,
}

impl ResNet {
    /// Builds the network `config` describes, its weights from `vb` under the notebook's names.
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        check_config("ResNet", &config.input, config.num_classes)?;
        let c = config;
        if c.blocks.is_empty() || c.blocks.len() != c.channels.len() || c.blocks.contains(&0) {
            candle_core::bail!(
                "ResNet: need one non-zero block count per stage, got blocks {:?} for channels {:?}",
                c.blocks,
                c.channels
            )
        }
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        // b1: [b, 64, h/4, w/4]
        net.push_with(&vb, |vb| {
            conv7_stem(c.input.channels, c.channels[0], true, vb, &context)
        })?;
        let mut channels = c.channels[0];
        for (stage, (&blocks, &out)) in c.blocks.iter().zip(&c.channels).enumerate() {
            // [b, out, h / 2^(stage + 2), ...]
            net.push_with(&vb, |vb| {
                resnet_stage(channels, out, blocks, stage == 0, vb, &context)
            })?;
            channels = out;
        }
        net.push(AdaptiveAvgPool2d::new(1, 1));
        net.push(Flatten);
        net.push_with(&vb, |vb| Linear::new(channels, c.num_classes, vb))?;
        check_fits("ResNet", &net, &c.input)?;
        Ok(Self {
            config: config.clone(),
            net,
            context,
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }
}

zoo_nn::impl_model!(ResNet);

/// The notebook's ResNet-18 for `num_classes` classes on 3-channel images of any size
/// (global average pooling before the classifier; the config's 224 px only decides what
/// `zoo summary` prints).
pub fn resnet18(num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    ResNet::new(&ResNetConfig::resnet18().with_num_classes(num_classes), vb)
}

/// ResNet-34 (`[3, 4, 6, 3]` blocks, the notebook's block) for `num_classes` classes on
/// 3-channel images of any size.
pub fn resnet34(num_classes: usize, vb: VarBuilder) -> Result<ResNet> {
    ResNet::new(&ResNetConfig::resnet34().with_num_classes(num_classes), vb)
}

/// A whole program with this crate: build, forward, one SGD step, save
/// (`examples/resnet_train_step.rs`, run by `cargo test` as this doc test).
#[doc = "```"]
#[doc = include_str!("../examples/resnet_train_step.rs")]
#[doc = "```"]
pub mod example {}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::ModuleT;
    use zoo_nn::Model;
    use zoo_nn::nn::Layer;
    use zoo_nn::testing::{
        check_backward_reaches_every_parameter, check_layer_shapes, test_input, test_store,
    };

    #[test]
    fn residual_blocks_match_the_notebook() -> Result<()> {
        let x = test_input(&[4, 3, 6, 6], 0)?;
        for train in [true, false] {
            let blk = Residual::new(
                3,
                3,
                false,
                1,
                test_store(0).var_builder(),
                &ForwardContext::default(),
            )?;
            assert_eq!(blk.forward_t(&x, train)?.dims(), &[4, 3, 6, 6]);
            let blk = Residual::new(
                3,
                6,
                true,
                2,
                test_store(0).var_builder(),
                &ForwardContext::default(),
            )?;
            assert_eq!(blk.forward_t(&x, train)?.dims(), &[4, 6, 3, 3]);
            assert_eq!(blk.output_shape(&[4, 3, 6, 6])?, vec![4, 6, 3, 3]);
        }
        let err = Residual::new(
            3,
            6,
            false,
            1,
            test_store(0).var_builder(),
            &ForwardContext::default(),
        )
        .err()
        .expect("needs 1x1");
        assert!(err.to_string().contains("needs use_1x1conv"), "{err}");
        Ok(())
    }

    /// The notebook's ResNet parameter count by its definition, independent of the code:
    /// conv(i, o, k) = i*o*k*k + o, bn(c) = 2c.
    fn count_resnet(blocks: &[usize]) -> usize {
        let conv = |i: usize, o: usize, k: usize| i * o * k * k + o;
        let bn = |c: usize| 2 * c;
        let residual = |i: usize, o: usize, shortcut: bool| {
            conv(i, o, 3) + conv(o, o, 3) + if shortcut { conv(i, o, 1) } else { 0 } + 2 * bn(o)
        };
        let mut total = conv(3, 64, 7) + bn(64);
        let mut channels = 64;
        for (stage, (&n, out)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
            for i in 0..n {
                total += if i == 0 && stage > 0 {
                    residual(channels, out, true)
                } else {
                    residual(out, out, false)
                };
            }
            channels = out;
        }
        total + conv(512, 10, 1)
    }

    #[test]
    fn resnet18_matches_the_notebook() -> Result<()> {
        let expected: &[(&str, &[usize])] = &[
            ("Sequential", &[128, 64, 56, 56]),
            ("Sequential", &[128, 64, 56, 56]),
            ("Sequential", &[128, 128, 28, 28]),
            ("Sequential", &[128, 256, 14, 14]),
            ("Sequential", &[128, 512, 7, 7]),
            ("AdaptiveAvgPool2d", &[128, 512, 1, 1]),
            ("Flatten", &[128, 512]),
            ("Linear", &[128, 10]),
        ];
        let store = test_store(0);
        let net = ResNet::new(&ResNetConfig::resnet18(), store.var_builder())?;
        check_layer_shapes(&net, [3, 224, 224], expected, 2)?;
        assert_eq!(count_resnet(&[2, 2, 2, 2]), 11_184_650);
        assert_eq!(net.num_params(), 11_184_650);
        assert_eq!(store.num_trainable(), 11_184_650);
        Ok(())
    }

    #[test]
    fn resnet34_is_the_same_code_deeper_and_trains_at_32px() -> Result<()> {
        let store = test_store(0);
        let net = ResNet::new(
            &ResNetConfig::resnet34().with_input_size(32),
            store.var_builder(),
        )?;
        assert_eq!(net.num_params(), count_resnet(&[3, 4, 6, 3]));
        assert_eq!(
            net.body().layers()[3].output_shape(&[1, 128, 4, 4])?,
            vec![1, 256, 2, 2]
        );
        check_backward_reaches_every_parameter(&store, &net, &[2, 3, 32, 32])?;
        Ok(())
    }

    #[test]
    fn batch_norm_changes_behaviour_between_modes() -> Result<()> {
        let store = test_store(4);
        let net = ResNet::new(
            &ResNetConfig::resnet18().with_input_size(32),
            store.var_builder(),
        )?;
        let x = test_input(&[4, 3, 32, 32], 5)?;
        let running_before: Vec<f32> = store
            .named_tensors()
            .iter()
            .find(|(n, _)| n == "0.1.running_mean")
            .map(|(_, v)| v.as_tensor().to_vec1())
            .expect("stem batch norm")?;
        let eval_a = net.forward_t(&x, false)?;
        let eval_b = net.forward_t(&x, false)?;
        assert_eq!(
            eval_a.to_vec2::<f32>()?,
            eval_b.to_vec2::<f32>()?,
            "eval is deterministic"
        );
        let train = net.forward_t(&x, true)?;
        let diff = (train - &eval_a)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff > 1e-3,
            "training mode must use batch statistics (diff {diff})"
        );
        let running_after: Vec<f32> = store
            .named_tensors()
            .iter()
            .find(|(n, _)| n == "0.1.running_mean")
            .map(|(_, v)| v.as_tensor().to_vec1())
            .expect("stem batch norm")?;
        assert_ne!(
            running_before, running_after,
            "training updates running statistics"
        );
        let eval_c = net.forward_t(&x, false)?;
        let moved = (eval_c - eval_a)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            moved > 0.0,
            "evaluation uses the updated running statistics"
        );
        Ok(())
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// This crate's README example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;
