//! `SequentialT`: an `nn.Sequential` for layers that need the train flag (BatchNorm, Dropout).

use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};

use super::{Layer, LayerKind};
use crate::export::{Graph, Value};

/// Layers applied in order. Like PyTorch's `nn.Sequential`, every child takes the next index
/// as its name, parameterless or not, so weights are named `3.weight`, `1.0.conv1.weight`, ...;
/// or, pushed with [`SequentialT::push_named`], the attribute name a PyTorch module gives it
/// (`conv1`, `layer1`: torchvision's networks).
#[derive(Default)]
pub struct SequentialT {
    layers: Vec<Box<dyn Layer>>,
    names: Vec<String>,
}

impl SequentialT {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer named by its index (build it with `vb.pp(seq.len())` when it has
    /// weights).
    pub fn push(&mut self, layer: impl Layer + 'static) -> &mut Self {
        self.names.push(self.layers.len().to_string());
        self.layers.push(Box::new(layer));
        self
    }

    /// Builds a layer under `vb.pp(name)` and appends it as `name`.
    pub fn push_named<L, F>(&mut self, vb: &VarBuilder, name: &str, build: F) -> Result<&mut Self>
    where
        L: Layer + 'static,
        F: FnOnce(VarBuilder) -> Result<L>,
    {
        let layer = build(vb.pp(name))?;
        self.layers.push(Box::new(layer));
        self.names.push(name.to_string());
        Ok(self)
    }

    /// Builds the next layer under `vb.pp(<its index>)` and appends it.
    pub fn push_with<L, F>(&mut self, vb: &VarBuilder, build: F) -> Result<&mut Self>
    where
        L: Layer + 'static,
        F: FnOnce(VarBuilder) -> Result<L>,
    {
        let layer = build(vb.pp(self.layers.len()))?;
        Ok(self.push(layer))
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The children, in order.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The children's names, in order: their index, or the name they were pushed with.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl std::fmt::Debug for SequentialT {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.layers.iter().map(|l| l.kind().name()).collect();
        f.debug_struct("SequentialT")
            .field("layers", &kinds)
            .finish()
    }
}

impl ModuleT for SequentialT {
    /// Applies the children in order; a child followed by a `ReLU` runs as one fused
    /// [`Layer::forward_relu_t`] (same result, one pass less each way), and a convolution
    /// followed by a BatchNorm (and a ReLU) as [`super::Conv2d::forward_bn_t`].
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        let mut i = 0;
        let relu_at = |j: usize| self.layers.get(j).is_some_and(|l| l.is_relu());
        while i < self.layers.len() {
            let layer = &self.layers[i];
            let next_bn = self.layers.get(i + 1).and_then(|l| l.as_batch_norm());
            if let (Some(conv), Some(bn)) = (layer.as_conv2d(), next_bn) {
                let relu = relu_at(i + 2);
                x = conv.forward_bn_t(&x, bn, train, relu)?;
                i += 2 + usize::from(relu);
                continue;
            }
            let fuse = !layer.is_relu() && relu_at(i + 1);
            if fuse {
                x = layer.forward_relu_t(&x, train)?;
                i += 2;
            } else {
                x = layer.forward_t(&x, train)?;
                i += 1;
            }
        }
        Ok(x)
    }
}

impl Layer for SequentialT {
    fn kind(&self) -> LayerKind {
        LayerKind::Sequential
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let mut shape = input.to_vec();
        for layer in &self.layers {
            shape = layer.output_shape(&shape)?;
        }
        Ok(shape)
    }

    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let mut value = input.clone();
        for layer in &self.layers {
            value = layer.export(graph, &value)?;
        }
        Ok(value)
    }

    fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.num_params()).sum()
    }

    fn macs(&self, input: &[usize]) -> Result<u64> {
        let mut shape = input.to_vec();
        let mut total = 0;
        for layer in &self.layers {
            total = super::mac_sum("Sequential", input, &[total, layer.macs(&shape)?])?;
            shape = layer.output_shape(&shape)?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BatchNorm2d, Conv2d, Conv2dSpec, Flatten, Linear, ReLU};
    use crate::testing::{assert_close, test_input, test_store, weighted_sum_grads};

    /// The children applied one at a time, each ReLU on its own: what the fused path must equal.
    fn unfused(seq: &SequentialT, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in seq.layers() {
            x = layer.forward_t(&x, train)?;
        }
        Ok(x)
    }

    #[test]
    fn fused_relu_pairs_equal_the_layers_applied_one_by_one() -> Result<()> {
        // Conv+ReLU, Conv+BN+ReLU, Linear+ReLU, and a ReLU after a ReLU.
        for train in [true, false] {
            let store = test_store(3);
            let vb = store.var_builder();
            let mut seq = SequentialT::new();
            seq.push_with(&vb, |vb| {
                Conv2d::new(Conv2dSpec::new(3, 4, 3).padding(1), vb)
            })?;
            seq.push(ReLU);
            seq.push_with(&vb, |vb| Conv2d::new(Conv2dSpec::new(4, 5, 3), vb))?;
            seq.push_with(&vb, |vb| {
                BatchNorm2d::new(5, vb, &crate::ForwardContext::default())
            })?;
            seq.push(ReLU);
            seq.push(ReLU);
            seq.push(Flatten);
            seq.push_with(&vb, |vb| Linear::new(5 * 4 * 4, 7, vb))?;
            seq.push(ReLU);
            let x = test_input(&[3, 3, 6, 6], 1)?;
            let upstream = test_input(&[3, 7], 2)?;

            let fused = seq.forward_t(&x, train)?;
            let grads = weighted_sum_grads(&fused, &upstream)?;
            let reference = unfused(&seq, &x, train)?;
            let grads_ref = weighted_sum_grads(&reference, &upstream)?;
            assert_close(&format!("train {train}: output"), &fused, &reference, 1e-5);
            for (name, var) in store.trainable() {
                let (got, want) = (grads.get(var.as_tensor()), grads_ref.get(var.as_tensor()));
                match (got, want) {
                    (Some(got), Some(want)) => {
                        assert_close(&format!("train {train}: d{name}"), got, want, 1e-5)
                    }
                    _ => panic!("train {train}: `{name}` has a gradient on one path only"),
                }
            }
        }
        Ok(())
    }
}
