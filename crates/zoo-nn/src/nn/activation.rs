//! Parameter-free layers: ReLU, Flatten and a seeded Dropout.

use candle_core::{DType, Result, Tensor};
use candle_nn::ModuleT;

use super::{Layer, LayerKind};
use crate::context::ForwardContext;
use crate::export::{Attribute, Graph, Value};

/// `nn.ReLU()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReLU;

/// `F.relu`, as a function (zoo's one-pass-backward kernel on the CPU).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    zoo_kernels::activation::relu(x)
}

/// `relu(a + b)` for tensors of one shape (the end of a residual block), as one kernel on the
/// CPU.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zoo_kernels::activation::add_relu(a, b)
}

impl ModuleT for ReLU {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        relu(x)
    }
}

impl Layer for ReLU {
    fn kind(&self) -> LayerKind {
        LayerKind::ReLU
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        Ok(graph.node(
            "Relu",
            "",
            vec![input.name.clone()],
            vec![],
            input.shape.clone(),
        ))
    }

    fn num_params(&self) -> usize {
        0
    }
    fn is_relu(&self) -> bool {
        true
    }
}

/// `nn.Flatten()`: keeps the batch dimension, flattens the rest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flatten;

impl ModuleT for Flatten {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        x.flatten_from(1)
    }
}

impl Layer for Flatten {
    fn kind(&self) -> LayerKind {
        LayerKind::Flatten
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [] => candle_core::bail!("Flatten: expected a batched input, got a scalar"),
            [b, rest @ ..] => Ok(vec![*b, rest.iter().product()]),
        }
    }
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let attributes = vec![("axis", Attribute::Int(1))];
        Ok(graph.node("Flatten", "", vec![input.name.clone()], attributes, shape))
    }

    fn num_params(&self) -> usize {
        0
    }
}

/// `nn.Dropout(p)`: in training, zeroes each element with probability `p` and scales the
/// rest by `1 / (1 - p)`; in evaluation, the identity. On the CPU the mask comes from the
/// seeded generator of the network's [`ForwardContext`], never from candle's unseedable CPU
/// generator; on a GPU it is drawn there, from the device's generator (which the trainer
/// seeds), so that no mask crosses from the host each step.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    context: ForwardContext,
}

impl Dropout {
    /// Dropout with probability `p`, drawing its masks from `context`'s generator.
    pub fn new(p: f32, context: &ForwardContext) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("Dropout: probability must be in [0, 1), got {p}")
        }
        Ok(Self {
            p,
            context: context.clone(),
        })
    }

    pub fn p(&self) -> f32 {
        self.p
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep_scale = 1.0 / (1.0 - self.p);
        if !x.device().is_cpu() {
            let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?.ge(self.p)?;
            return x * (keep.to_dtype(x.dtype())? * f64::from(keep_scale))?;
        }
        let n = x.elem_count();
        let mask: Vec<f32> = self.context.with_dropout_rng(|rng| {
            (0..n)
                .map(|_| {
                    if rng.uniform_f32() < self.p {
                        0.0
                    } else {
                        keep_scale
                    }
                })
                .collect()
        });
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        let mask = if x.dtype() == DType::F32 {
            mask
        } else {
            mask.to_dtype(x.dtype())?
        };
        x * mask
    }
}

impl Layer for Dropout {
    fn kind(&self) -> LayerKind {
        LayerKind::Dropout
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    /// Evaluation mode: the identity.
    fn export(&self, _: &mut Graph, input: &Value) -> Result<Value> {
        Ok(input.clone())
    }

    fn num_params(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_seeded_scaled_and_off_in_evaluation() -> Result<()> {
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu)?;
        let context = ForwardContext::new(3);
        let drop = Dropout::new(0.5, &context)?;
        assert_eq!(
            drop.forward_t(&x, false)?.to_vec2::<f32>()?,
            x.to_vec2::<f32>()?
        );
        context.seed_dropout(11);
        let a = drop.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        context.seed_dropout(11);
        let b = drop.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        let c = drop.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b, "same seed, same mask");
        assert_ne!(b, c, "the stream moves on");
        assert!(
            a.iter().all(|&v| v == 0.0 || v == 2.0),
            "kept values scale by 1/(1-p)"
        );
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.5).abs() < 0.03, "dropped fraction {dropped}");
        // A second layer of the same network shares the stream; another network's does not.
        let other = Dropout::new(0.5, &ForwardContext::new(3))?;
        context.seed_dropout(11);
        let shared = Dropout::new(0.5, &context)?;
        assert_eq!(
            shared
                .forward_t(&x, true)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            a
        );
        context.seed_dropout(11);
        assert_ne!(
            other.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?,
            a
        );
        assert!(Dropout::new(1.0, &context).is_err());
        Ok(())
    }
}
