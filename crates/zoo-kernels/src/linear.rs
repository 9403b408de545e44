//! `nn.Linear` (+ ReLU) on the CPU: `y = x W^T + b` with the bias (and the ReLU) applied on the
//! way out, and a backward that computes the weight gradient in W's own layout.
//!
//! candle's `Linear` multiplies by `W.t()`, a transposed view, so the weight's gradient comes
//! back transposed and candle adds it into its zero-filled accumulator with a strided
//! element-wise add (16.8M elements for AlexNet's 4096x4096 layer; AlexNet's training step
//! spent 13-19% of its samples in candle's binary ops, docs/benchmarks.md).
//!
//! The three products run on the tile kernels with the small operand (the batch's inputs or
//! output gradients) packed and the weights read where they are: a GEMM library packs the
//! weights again on every call, and at batch 32 a 4096x4096 layer is bound by memory (its 64 MB
//! packed and read back took 11% of AlexNet's training step).

use crate::activation::relu_f32;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::activation::fused_relu_grad;
use crate::dots::{SHORT, dots};
use crate::gemm::channel_sums;
use crate::microkernel::{MR, NR, TileKernels, kernels};
use crate::{contiguous_f32, new_filled};

/// The rows of the row-major `[rows, k]` matrix `x` as the tile kernels' panels: per panel of
/// `MR` rows, `k` columns of `MR` values (zeros past the last row).
fn panels_of_rows(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.div_ceil(MR) * k * MR];
    for (p, panel) in out.chunks_mut((k * MR).max(1)).enumerate() {
        for r in 0..MR.min(rows - p * MR) {
            for (kk, &v) in x[(p * MR + r) * k..][..k].iter().enumerate() {
                panel[kk * MR + r] = v;
            }
        }
    }
    out
}

/// The columns of the row-major `[k, cols]` matrix `x` as the tile kernels' panels: per panel
/// of `MR` columns, `k` rows of `MR` values (zeros past the last column).
fn panels_of_columns(x: &[f32], k: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols.div_ceil(MR) * k * MR];
    for (p, panel) in out.chunks_mut((k * MR).max(1)).enumerate() {
        let width = MR.min(cols - p * MR);
        for kk in 0..k {
            panel[kk * MR..][..width].copy_from_slice(&x[kk * cols + p * MR..][..width]);
        }
    }
    out
}

/// Output columns per task of [`panel_product`].
const COLUMNS_PER_TASK: usize = 16 * NR;
/// Rows of the summed dimension per block in [`panel_product`]: at batch 128 the eight panels
/// of a 4096-wide input (2 MB) were read from the L3 cache again for every group of six
/// columns.
const KC: usize = 512;

/// `dst = a . b` for `a` the `[m, k]` matrix packed by [`panels_of_rows`] or
/// [`panels_of_columns`] and `b` the `[k, n]` matrix at `b[kk * b_rs + j * b_cs]`; `dst` comes
/// back column-major (`dst[j * m + row]`), in parallel over blocks of columns.
#[allow(clippy::too_many_arguments)]
fn panel_product(
    kernels: TileKernels,
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    n: usize,
) -> Vec<f32> {
    if k == 0 {
        // An empty sum (no inputs, or an empty batch for the weight gradient).
        return vec![0.0; m * n];
    }
    let panel = k * MR;
    assert!(
        a.len() >= m.div_ceil(MR) * panel,
        "panel_product: a too small"
    );
    assert!(
        n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "panel_product: b too small"
    );
    // SAFETY: each task writes its columns whole: every row of every column.
    unsafe {
        new_filled(m * n, |dst| {
            dst.par_chunks_mut((COLUMNS_PER_TASK * m).max(1))
                .enumerate()
                .for_each(|(task, block)| {
                    let mut padded = Vec::new();
                    let j_first = task * COLUMNS_PER_TASK;
                    let j_end = (j_first + COLUMNS_PER_TASK).min(n);
                    // The kernels read NR whole columns of b: past b's end for a partial last
                    // group, whose columns are copied into NR zero-padded ones.
                    let last = j_first + (j_end - j_first) / NR * NR;
                    if last < j_end {
                        padded.resize(k * NR, 0.0);
                        for kk in 0..k {
                            for jj in 0..j_end - last {
                                padded[kk * NR + jj] = b[kk * b_rs + (last + jj) * b_cs];
                            }
                        }
                    }
                    // Blocks of KC of the summed dimension, so that the panels' part of a stays
                    // in the L2 cache while every column group of the task is multiplied by it.
                    for k0 in (0..k).step_by(KC) {
                        let kc = KC.min(k - k0);
                        for j0 in (j_first..j_end).step_by(NR) {
                            let width = NR.min(j_end - j0);
                            let (b_tile, tile_rs, tile_cs) = if width == NR {
                                (&b[j0 * b_cs + k0 * b_rs..], b_rs, b_cs)
                            } else {
                                (&padded[k0 * NR..], NR, 1)
                            };
                            for (p, a_panel) in
                                a.chunks_exact(panel).take(m.div_ceil(MR)).enumerate()
                            {
                                let at = (j0 - j_first) * m + p * MR;
                                // SAFETY: a_panel holds k columns of MR, kc of them from k0;
                                // b_tile the kc x NR elements its strides describe (checked
                                // above, or the padded copy); block holds this task's columns
                                // of m rows, MR.min(m - p * MR) of which the tile writes (the
                                // first block) or adds to (the others) from `at`, width
                                // columns at stride m.
                                kernels.tile(
                                    MR.min(m - p * MR),
                                    width,
                                    kc,
                                    block.as_mut_ptr().add(at).cast::<f32>(),
                                    m,
                                    a_panel.as_ptr().add(k0 * MR),
                                    b_tile.as_ptr(),
                                    tile_rs,
                                    tile_cs,
                                    k0 > 0,
                                );
                            }
                        }
                    }
                });
        })
    }
}

/// The most rows (images) the forward takes as dot products ([`dot_products`]) rather than on
/// the tile kernels, whose 16-row panels would be mostly padding.
const DOT_ROWS: usize = SHORT;
/// Output units per task of [`dot_products`].
const UNITS_PER_TASK: usize = 64;
/// `y^T = W . x^T` for a few rows of `x` (`[rows, k]`, at most [`DOT_ROWS`]): per output unit,
/// the dot products of its weight row with every row of `x`, in parallel over blocks of units.
/// Small-batch inference is bound by reading the weights (AlexNet's and VGG's 4096 x 4096 are
/// 64 MB): each weight row is read once, contiguously, for all rows of `x`. Column-major out,
/// as [`panel_product`]'s.
fn dot_products(x: &[f32], rows: usize, k: usize, w: &[f32], units: usize) -> Vec<f32> {
    let mut yt = vec![0f32; units * rows];
    if k == 0 || rows == 0 {
        return yt;
    }
    let x_rows: Vec<&[f32]> = x.chunks_exact(k).take(rows).collect();
    yt.par_chunks_mut(UNITS_PER_TASK * rows)
        .zip(w.par_chunks(UNITS_PER_TASK * k))
        .for_each(|(out, w_block)| {
            for (dst, w_row) in out.chunks_mut(rows).zip(w_block.chunks_exact(k)) {
                dst.copy_from_slice(&dots(w_row, &x_rows)[..rows]);
            }
        });
    yt
}

/// (x `[b, in]`, w `[out, in]`, bias `[out]`) -> `[b, out]`.
struct LinearOp {
    relu: bool,
}

/// `t` (`cols` columns of `rows` values, column-major) as a row-major `[rows, cols]` matrix,
/// each value passed through `f(value, column)`.
fn transposed(
    t: &[f32],
    cols: usize,
    rows: usize,
    f: impl Fn(f32, usize) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f(t[c * rows + r], c);
            }
        });
    out
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
        // y^T [out, b] = W [out, in] . x^T [in, b], column-major: W read in place.
        let yt = if b <= DOT_ROWS {
            dot_products(x, b, i, w, o)
        } else {
            panel_product(kernels(), &panels_of_rows(x, b, i), b, i, w, 1, i, o)
        };
        let relu = self.relu;
        let y = transposed(&yt, o, b, |v, oi| {
            let v = v + bias[oi];
            if relu { relu_f32(v) } else { v }
        });
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
        let (fits, m) = match self {
            Self::Input => (o == r, b),
            Self::Weight => (b == r, o),
        };
        if !fits {
            candle_core::bail!(
                "{}: {:?} does not fit {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            )
        }
        let out = match self {
            // dx^T [in, b] = W^T [in, out] . dy^T [out, b], column-major.
            Self::Input => transposed(
                &panel_product(kernels(), &panels_of_rows(dy, b, o), b, o, other, i, 1, i),
                i,
                b,
                |v, _| v,
            ),
            // dW^T [in, out] = x^T [in, b] . dy [b, out], column-major: dW [out, in].
            Self::Weight => panel_product(
                kernels(),
                &panels_of_columns(other, b, i),
                i,
                b,
                dy,
                o,
                1,
                o,
            ),
        };
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
        // Up to DOT_ROWS rows: the dot products (a tail past the lanes, several tasks of
        // units, a partial last task); more: the tile kernels.
        for (b, i, o) in [
            (1usize, 3usize, 2usize),
            (1, 300, 200),
            (2, 37, 70),
            (3, 64, 5),
            (4, 130, 129),
            (5, 17, 9),
            (32, 64, 130),
            (37, 200, 97),
        ] {
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
        // An empty batch: empty outputs and input gradient, a zero weight gradient.
        let x = Var::from_tensor(&Tensor::zeros(
            (0, 5),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )?)?;
        let w = Var::from_tensor(&test_input(&[3, 5], 2)?)?;
        let y = linear(x.as_tensor(), w.as_tensor(), &test_input(&[3], 3)?, true)?;
        assert_eq!(y.dims(), &[0, 3]);
        let grads = y.sum_all()?.backward()?;
        let dw = grads.get(w.as_tensor()).expect("weight gradient");
        assert_eq!(dw.dims(), &[3, 5]);
        assert_eq!(dw.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
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
