//! The matrix product and the per-channel sums that the convolution and linear kernels share.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::contiguous_f32;
use crate::dots::short_side_product;

/// `c = a . b` (or `c += a . b`) for row-major slices, `a` and `b` optionally stored
/// transposed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert!(c.len() >= m * n, "sgemm: output buffer too small");
    // SAFETY: c holds m * n elements (checked above).
    unsafe { sgemm_raw(m, n, k, a, a_t, b, b_t, c.as_mut_ptr(), accumulate, threads) }
}

/// `a . b` as a new `m x n` vector, written by the GEMM without zero-filling it first (for the
/// large weight gradients, the fill was a full extra pass over memory).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_new(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    threads: usize,
) -> Vec<f32> {
    let mut c = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the capacity holds m * n elements; without `accumulate` the GEMM writes every
    // one of them and reads none, so all are initialised when the length is set.
    unsafe {
        sgemm_raw(m, n, k, a, a_t, b, b_t, c.as_mut_ptr(), false, threads);
        c.set_len(m * n);
    }
    c
}

/// The GEMM call both share. Safety: `c` is valid for `m * n` writes (and reads when
/// `accumulate`).
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: *mut f32,
    accumulate: bool,
    threads: usize,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "sgemm: input buffer too small"
    );
    let (dims, a_side, b_side) = ((m, n, k), (a, a_t), (b, b_t));
    // SAFETY: the sizes are checked above; the caller vouches for `c`.
    if unsafe { short_side_product(dims, a_side, b_side, c, accumulate, threads > 1) } {
        return;
    }
    // a is m x k: row-major (rs = k, cs = 1), or stored transposed as k x m (rs = 1, cs = m).
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above keeps every index the strides describe inside `a` and `b`; the
    // caller vouches for `c`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `(N, C, ...) -> (C,)`: the sum over everything but the channel (a bias gradient), not
/// recorded.
pub(crate) fn channel_sums(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ChannelSumOp)
}

/// `(N, C, ...) -> (C,)`: the sum over everything but the channel (a bias gradient).
struct ChannelSumOp;

impl CustomOp1 for ChannelSumOp {
    fn name(&self) -> &'static str {
        "zoo-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (n, c) = match l.dims() {
            [n, c, ..] => (*n, *c),
            d => candle_core::bail!("{}: expected (N, C, ...), got {d:?}", self.name()),
        };
        let plane = x.len().checked_div(n * c).unwrap_or(0);
        let sums = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .map(|i| {
                        x[(i * c + ch) * plane..][..plane]
                            .iter()
                            .map(|&v| v as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}
