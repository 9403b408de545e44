//! ReLU and the residual `relu(a + b)` as CPU ops whose backward is one pass.
//!
//! candle 0.11.1 differentiates `relu` as `grad * (x >= 0).to_dtype()` with a fresh zeros
//! tensor to compare against: five full-size tensors per ReLU in every backward. Here the
//! backward masks the incoming gradient with the saved output (`y > 0`, PyTorch's
//! `threshold_backward`: the gradient at exactly 0 is 0), in one pass over the data.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use crate::{contiguous_f32, cpu_f32, new_filled};

/// Elements per parallel task of the element-wise kernels: below this, one thread.
const CHUNK: usize = 1 << 15;

/// `out[i] = f(a[i], b[i])` over equal-length slices, in parallel for large inputs.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "zip_map: lengths differ");
    type Chunk<'a> = (&'a mut [MaybeUninit<f32>], (&'a [f32], &'a [f32]));
    let kernel = |(o, (a, b)): Chunk| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            o.write(f(a, b));
        }
    };
    // SAFETY: the chunks of `out`, `a` and `b` line up one to one (equal lengths), so every
    // element of `out` is written.
    unsafe {
        new_filled(a.len(), |out| {
            if a.len() <= CHUNK {
                kernel((out, (a, b)));
            } else {
                out.par_chunks_mut(CHUNK)
                    .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                    .for_each(kernel);
            }
        })
    }
}

/// `out[i] = f(a[i])`, in parallel for large inputs.
fn map(a: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let kernel = |(o, a): (&mut [MaybeUninit<f32>], &[f32])| {
        for (o, &a) in o.iter_mut().zip(a) {
            o.write(f(a));
        }
    };
    // SAFETY: `out` and `a` have one length and their chunks line up: every element is written.
    unsafe {
        new_filled(a.len(), |out| {
            if a.len() <= CHUNK {
                kernel((out, a));
            } else {
                out.par_chunks_mut(CHUNK)
                    .zip(a.par_chunks(CHUNK))
                    .for_each(kernel);
            }
        })
    }
}

/// `f` applied element-wise to two contiguous f32 CPU inputs of one shape: the forward of a
/// binary element-wise op, or an error naming `op`.
fn binary_kernel(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() {
        candle_core::bail!(
            "{op}: the two inputs differ in shape: {:?} and {:?}",
            l1.dims(),
            l2.dims()
        )
    }
    let (a, b) = (contiguous_f32(op, s1, l1)?, contiguous_f32(op, s2, l2)?);
    Ok((CpuStorage::F32(zip_map(a, b, f)), l1.shape().clone()))
}

/// `max(v, 0)` as PyTorch computes it: NaN stays NaN (`f32::max` would return 0, hiding a
/// broken input or weight behind a plausible output).
#[inline(always)]
pub(crate) fn relu_f32(v: f32) -> f32 {
    if v < 0.0 { 0.0 } else { v }
}

struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "zoo-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        Ok((CpuStorage::F32(map(x, relu_f32)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        relu_backward(grad, y).map(Some)
    }
}

/// `relu(a + b)`: the end of a residual block.
struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "zoo-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_kernel(self.name(), (s1, l1), (s2, l2), |a, b| relu_f32(a + b))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = relu_backward(grad, y)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// (dy, y) -> dy where y > 0, else 0.
struct ReluMaskOp;

impl CustomOp2 for ReluMaskOp {
    fn name(&self) -> &'static str {
        "zoo-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // (dy, y)
        binary_kernel(self.name(), (s1, l1), (s2, l2), |g, y| {
            if y > 0.0 { g } else { 0.0 }
        })
    }
}

/// The gradient of a ReLU with output `y` for the incoming gradient `grad` (not recorded).
fn relu_backward(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
    if cpu_f32(grad) {
        grad.contiguous()?
            .apply_op2_no_bwd(&y.contiguous()?, &ReluMaskOp)
    } else {
        grad.detach() * y.detach().gt(0.0)?.to_dtype(grad.dtype())?
    }
}

/// The gradient arriving at a kernel with a fused ReLU (`relu`) or without one, as the
/// contiguous tensor the kernel's backward reads: masked by the kernel's output `y` when fused.
pub(crate) fn fused_relu_grad(grad: &Tensor, y: &Tensor, relu: bool) -> Result<Tensor> {
    if relu {
        relu_backward(grad, y)
    } else {
        grad.contiguous()
    }
}

/// `max(x, 0)`; on the CPU with a one-pass backward, elsewhere [`relu_composed`].
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(x) {
        x.contiguous()?.apply_op1(ReluOp)
    } else {
        relu_composed(x)
    }
}

/// `max(x, 0)` from candle's ops, with PyTorch's gradient: it passes where `x > 0` only.
/// candle's own `relu` passes it where `x >= 0`, which differs wherever an input is exactly 0
/// (a ReLU after a ReLU, a BatchNorm of zeros): the device check found it on DenseNet. NaN
/// stays NaN, as in zoo's CPU kernels.
pub fn relu_composed(x: &Tensor) -> Result<Tensor> {
    let keep = x.gt(0.0)?.maximum(&x.ne(x)?)?;
    keep.where_cond(x, &x.zeros_like()?)
}

/// `y`, through [`relu_composed`] when `relu`: the fused ReLU of a layer off zoo's kernels.
pub fn relu_composed_if(y: Tensor, relu: bool) -> Result<Tensor> {
    if relu { relu_composed(&y) } else { Ok(y) }
}

/// `relu(a + b)` for two tensors of one shape (a residual connection and its activation).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!(
            "add_relu: the two inputs differ in shape: {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    if cpu_f32(a) && cpu_f32(b) {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
    } else {
        relu_composed(&(a + b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, test_input};
    use candle_core::DType;
    use candle_core::Var;

    #[test]
    fn relu_and_add_relu_match_candle_forward_and_gradients() -> Result<()> {
        // Small (one thread) and large (parallel chunks with a partial last chunk).
        for shape in [vec![2usize, 3, 5, 7], vec![3, 37, 19, 31]] {
            let a = Var::from_tensor(&test_input(&shape, 1)?)?;
            let b = Var::from_tensor(&test_input(&shape, 2)?)?;
            let upstream = test_input(&shape, 3)?;

            let y = relu(a.as_tensor())?;
            assert_eq!(max_abs_diff(&y, &a.as_tensor().relu()?)?, 0.0);
            let grads = (&y * &upstream)?.sum_all()?.backward()?;
            let want = (&upstream * a.as_tensor().gt(0.0)?.to_dtype(DType::F32)?)?;
            assert_eq!(max_abs_diff(grads.get(a.as_tensor()).unwrap(), &want)?, 0.0);

            let y = add_relu(a.as_tensor(), b.as_tensor())?;
            let sum = (a.as_tensor() + b.as_tensor())?;
            assert_eq!(max_abs_diff(&y, &sum.relu()?)?, 0.0);
            let grads = (&y * &upstream)?.sum_all()?.backward()?;
            let want = (&upstream * sum.gt(0.0)?.to_dtype(DType::F32)?)?;
            assert_eq!(max_abs_diff(grads.get(a.as_tensor()).unwrap(), &want)?, 0.0);
            assert_eq!(max_abs_diff(grads.get(b.as_tensor()).unwrap(), &want)?, 0.0);
        }
        // At exactly 0 the gradient is 0, as in PyTorch (candle's `relu` passes it there), and
        // NaN propagates, on the composition (the GPU's path) as in the kernel.
        let x = Var::new(&[-1f32, 0.0, 2.0, f32::NAN], &candle_core::Device::Cpu)?;
        for y in [relu(x.as_tensor())?, relu_composed(x.as_tensor())?] {
            let v = y.to_vec1::<f32>()?;
            assert_eq!(&v[..3], &[0.0, 0.0, 2.0]);
            assert!(v[3].is_nan());
            let g = y.sum_all()?.backward()?;
            let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>()?;
            assert_eq!(&g[..3], &[0.0, 0.0, 1.0]);
        }
        let a = test_input(&[2, 3], 1)?;
        let err = add_relu(&a, &test_input(&[3, 2], 1)?).unwrap_err();
        assert!(err.to_string().contains("differ in shape"), "{err}");
        Ok(())
    }
}
