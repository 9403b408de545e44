//! `nn.Linear` (+ ReLU) on the CPU: `y = x W^T + b` as one GEMM with the bias (and the ReLU)
//! applied in place, and a backward that computes the weight gradient in W's own layout.
//!
//! candle's `Linear` multiplies by `W.t()`, a transposed view, so the weight's gradient comes
//! back transposed and candle adds it into its zero-filled accumulator with a strided
//! element-wise add (16.8M elements for AlexNet's 4096x4096 layer; AlexNet's training step
//! spent 13-19% of its samples in candle's binary ops, docs/benchmarks.md).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::activation::fused_relu_grad;
use super::contiguous_f32;
use super::gemm::{channel_sums, sgemm_new};

/// (x `[b, in]`, w `[out, in]`, bias `[out]`) -> `[b, out]`.
struct LinearOp {
    relu: bool,
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "zoo-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let w = contiguous_f32(self.name(), s2, l2)?;
        let bias = contiguous_f32(self.name(), s3, l3)?;
        let (&[b, i], &[o, wi]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!(
                "{}: expected 2-d input and weight, got {:?} and {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            )
        };
        if i != wi || bias.len() != o {
            candle_core::bail!(
                "{}: input {:?}, weight {:?} and bias {:?} do not fit",
                self.name(),
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        // [b, out] = [b, in] . [out, in]^T
        let mut y = sgemm_new(b, o, i, x, false, w, true, threads());
        for row in y.chunks_mut(o.max(1)) {
            for (v, &bv) in row.iter_mut().zip(bias) {
                *v += bv;
                if self.relu {
                    *v = v.max(0.0);
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((b, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = fused_relu_grad(grad, y, self.relu)?;
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &LinearGradOp::Input)?)
        } else {
            None
        };
        let dw = dy.apply_op2_no_bwd(x, &LinearGradOp::Weight)?;
        let db = channel_sums(&dy)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// The two GEMMs of the backward: (dy `[b, out]`, w `[out, in]`) -> dx = dy . w `[b, in]`, or
/// (dy `[b, out]`, x `[b, in]`) -> dw = dy^T . x `[out, in]`, in the weight's layout.
enum LinearGradOp {
    Input,
    Weight,
}

impl CustomOp2 for LinearGradOp {
    fn name(&self) -> &'static str {
        match self {
            Self::Input => "zoo-linear-input-grad",
            Self::Weight => "zoo-linear-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = contiguous_f32(self.name(), s1, l1)?;
        let other = contiguous_f32(self.name(), s2, l2)?;
        let (&[b, o], &[r, i]) = (l1.dims(), l2.dims()) else {
            candle_core::bail!("{}: expected 2-d tensors", self.name())
        };
        // The dimension the product sums over must agree: out for dx, batch for dw.
        let (fits, m, k, dy_t) = match self {
            Self::Input => (o == r, b, o, false),
            Self::Weight => (b == r, o, b, true),
        };
        if !fits {
            candle_core::bail!(
                "{}: {:?} does not fit {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            )
        }
        let out = sgemm_new(m, i, k, dy, dy_t, other, false, threads());
        Ok((CpuStorage::F32(out), Shape::from((m, i))))
    }
}

/// `x W^T + bias`, then ReLU when `relu`, for an f32 CPU `[b, in]` input, `[out, in]` weight and
/// `[out]` bias; differentiable in all three.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LinearOp { relu },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs_diff, test_input};
    use candle_core::Var;

    #[test]
    fn linear_matches_candle_forward_and_gradients() -> Result<()> {
        for (b, i, o) in [(1usize, 3usize, 2usize), (5, 17, 9), (32, 64, 130)] {
            let x = Var::from_tensor(&test_input(&[b, i], 1)?)?;
            let w = Var::from_tensor(&test_input(&[o, i], 2)?)?;
            let bias = Var::from_tensor(&test_input(&[o], 3)?)?;
            let upstream = test_input(&[b, o], 4)?;
            for relu in [false, true] {
                let y = linear(x.as_tensor(), w.as_tensor(), bias.as_tensor(), relu)?;
                let reference =
                    candle_nn::Linear::new(w.as_tensor().clone(), Some(bias.as_tensor().clone()));
                let y_ref = candle_nn::Module::forward(&reference, x.as_tensor())?;
                let y_ref = if relu { y_ref.relu()? } else { y_ref };
                let what = format!("{b}x{i} -> {o}, relu {relu}");
                let scale = 1.0 + y_ref.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(max_abs_diff(&y, &y_ref)? <= 1e-5 * scale, "{what}: forward");
                let grads = (&y * &upstream)?.sum_all()?.backward()?;
                let grads_ref = (&y_ref * &upstream)?.sum_all()?.backward()?;
                for (name, var) in [("dx", &x), ("dw", &w), ("db", &bias)] {
                    let got = grads.get(var.as_tensor()).expect("gradient");
                    let want = grads_ref.get(var.as_tensor()).expect("reference gradient");
                    let scale = 1.0 + want.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        max_abs_diff(got, want)? <= 1e-5 * scale,
                        "{what}: {name} differs by {}",
                        max_abs_diff(got, want)?
                    );
                }
            }
        }
        let err = linear(
            &test_input(&[2, 3], 1)?,
            &test_input(&[4, 5], 2)?,
            &test_input(&[4], 3)?,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        Ok(())
    }
}
