//! What the trainer's tests share: a small learnable dataset and network (and zoo-nn's checks,
//! re-exported).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
pub use zoo_nn::testing::{
    ScratchDir, assert_close, check_backward_reaches_every_parameter, check_layer_shapes,
    fill_by_formula, formula, formula_input, max_abs_diff, max_relative_error, signed_uniform,
    test_input, test_store, weighted_sum_grads,
};

use crate::ForwardContext;
use crate::data::{ImageDataset, digit_classes};
use crate::model::{InputSpec, Model};
use crate::nn::{
    BatchNorm2d, Conv2d, Conv2dSpec, Dropout, Flatten, Linear, MaxPool2d, ReLU, SequentialT,
};

/// An empty folder `zoo-<label>-<pid>-<n>` in the system's temporary folder, removed when the
/// returned guard drops.
pub fn scratch_dir(label: &str) -> ScratchDir {
    ScratchDir::new(label)
}

/// 1x8x8 images whose brightness pattern depends on the label: learnable.
pub fn toy_dataset(n: usize, seed: u64) -> Arc<ImageDataset> {
    let mut rng = zoo_nn::rng::ZooRng::new(seed);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let label = (i % 10) as u8;
        for p in 0..64 {
            let signal = if p % 10 == label as usize {
                180.0
            } else {
                40.0
            };
            images.push((signal + 60.0 * rng.uniform_f64()) as u8);
        }
        labels.push(label);
    }
    Arc::new(
        ImageDataset::new("toy", [1, 8, 8], digit_classes(), images, labels)
            .expect("a valid dataset"),
    )
}

/// Conv 3x3 to `channels`, optional BatchNorm, ReLU, 2x2 max pool, optional Dropout (0.3),
/// Linear to 10 classes, on 1x8x8 images: the trainer's and data-parallel tests' network.
pub struct SmallNet {
    net: SequentialT,
    context: ForwardContext,
}

impl SmallNet {
    pub fn new(vb: VarBuilder, channels: usize, batch_norm: bool, dropout: bool) -> Result<Self> {
        let context = ForwardContext::default();
        let mut net = SequentialT::new();
        net.push_with(&vb, |vb| {
            Conv2d::new(Conv2dSpec::new(1, channels, 3).padding(1), vb)
        })?;
        if batch_norm {
            net.push_with(&vb, |vb| BatchNorm2d::new(channels, vb, &context))?;
        }
        net.push(ReLU);
        net.push(MaxPool2d::new(2, 2, 0));
        net.push(Flatten);
        if dropout {
            net.push(Dropout::new(0.3, &context)?);
        }
        net.push_with(&vb, |vb| Linear::new(channels * 4 * 4, 10, vb))?;
        Ok(Self { net, context })
    }

    /// Eight channels with every stateful piece: BatchNorm (running statistics) and Dropout.
    pub fn tiny(vb: VarBuilder) -> Result<Self> {
        Self::new(vb, 8, true, true)
    }
}

impl ModuleT for SmallNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.net.forward_t(x, train)
    }
}

impl Model for SmallNet {
    fn body(&self) -> &SequentialT {
        &self.net
    }
    fn input(&self) -> InputSpec {
        InputSpec::square(1, 8)
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn context(&self) -> &ForwardContext {
        &self.context
    }
}
