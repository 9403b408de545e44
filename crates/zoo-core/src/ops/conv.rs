//! 2-d convolution on the CPU as matrix products, forward and both gradients.
//!
//! candle 0.11.1 computes the input gradient with `conv_transpose2d` (a loop of dot products on
//! the CPU, 4.7x slower than PyTorch) and copies a strided im2col of the whole batch. Here each
//! image is one GEMM (`y = W . col`), the weight gradient is `sum_n dy_n . col_n^T` and the
//! input gradient is `col2im(W^T . dy_n)`; images are spread over the rayon threads, each with
//! its own column buffer, and a 1x1 stride-1 convolution uses the image itself as its columns.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Square-kernel convolution geometry (no dilation, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    oh: usize,
    ow: usize,
}

impl Sizes {
    fn new(op: &str, x: &[usize], w: &[usize], g: ConvGeometry) -> Result<Self> {
        let ([n, c, h, wd], [o, ci, kh, kw]) = (x, w) else {
            candle_core::bail!("{op}: expected 4-d input and weight, got {x:?} and {w:?}")
        };
        if c != ci || kh != kw || *kh == 0 || g.stride == 0 {
            candle_core::bail!("{op}: input {x:?} does not fit weight {w:?} ({g:?})")
        }
        let (ph, pw) = (h + 2 * g.padding, wd + 2 * g.padding);
        if ph < *kh || pw < *kw {
            candle_core::bail!("{op}: input {x:?} is smaller than the kernel {kh}x{kw}")
        }
        Ok(Self {
            n: *n,
            c: *c,
            h: *h,
            w: *wd,
            o: *o,
            k: *kh,
            oh: (ph - kh) / g.stride + 1,
            ow: (pw - kw) / g.stride + 1,
        })
    }
    /// Rows of the column matrix: C * k * k.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Output positions per image.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }
    fn pointwise(&self, g: ConvGeometry) -> bool {
        self.k == 1 && g.stride == 1 && g.padding == 0
    }
}

/// `c = a . b` (or `c += a . b`) for row-major slices with the given row strides and
/// transposition flags, single-threaded (callers parallelise over images).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "sgemm: buffer too small"
    );
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
    // SAFETY: the asserts above keep every index the strides describe inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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
            gemm::Parallelism::None,
        );
    }
}

/// Column matrix (C*k*k rows, OH*OW columns) of one image.
fn im2col(x: &[f32], s: &Sizes, g: ConvGeometry, col: &mut [f32]) {
    let p = s.positions();
    for c in 0..s.c {
        for ky in 0..s.k {
            for kx in 0..s.k {
                let row = &mut col[((c * s.k + ky) * s.k + kx) * p..][..p];
                for oy in 0..s.oh {
                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                    let out = &mut row[oy * s.ow..(oy + 1) * s.ow];
                    if iy < 0 || iy >= s.h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * s.h + iy as usize) * s.w..][..s.w];
                    for (ox, o) in out.iter_mut().enumerate() {
                        let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                        *o = if ix >= 0 && ix < s.w as isize {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Adds a column matrix back into an image (the adjoint of `im2col`).
fn col2im(col: &[f32], s: &Sizes, g: ConvGeometry, x: &mut [f32]) {
    let p = s.positions();
    for c in 0..s.c {
        for ky in 0..s.k {
            for kx in 0..s.k {
                let row = &col[((c * s.k + ky) * s.k + kx) * p..][..p];
                for oy in 0..s.oh {
                    let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    let dst = &mut x[(c * s.h + iy as usize) * s.w..][..s.w];
                    for (ox, &v) in row[oy * s.ow..(oy + 1) * s.ow].iter().enumerate() {
                        let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                        if ix >= 0 && ix < s.w as isize {
                            dst[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

struct Conv2dOp {
    geometry: ConvGeometry,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "zoo-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let w = contiguous_f32(self.name(), s2, l2)?;
        let g = self.geometry;
        let s = Sizes::new(self.name(), l1.dims(), l2.dims(), g)?;
        let (in_len, out_len) = (s.c * s.h * s.w, s.o * s.positions());
        let mut y = vec![0f32; s.n * out_len];
        y.par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .for_each_init(
                || {
                    vec![
                        0f32;
                        if s.pointwise(g) {
                            0
                        } else {
                            s.rows() * s.positions()
                        }
                    ]
                },
                |col, (y_n, x_n)| {
                    let cols: &[f32] = if s.pointwise(g) {
                        x_n
                    } else {
                        im2col(x_n, &s, g, col);
                        col
                    };
                    // [o, p] = [o, rows] . [rows, p]
                    sgemm(
                        s.o,
                        s.positions(),
                        s.rows(),
                        w,
                        false,
                        cols,
                        false,
                        y_n,
                        false,
                    );
                },
            );
        Ok((CpuStorage::F32(y), Shape::from((s.n, s.o, s.oh, s.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad.contiguous()?;
        let dx = w.apply_op2_no_bwd(
            &dy,
            &Conv2dInputGradOp {
                geometry: self.geometry,
                input: x.dims().to_vec(),
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &dy,
            &Conv2dWeightGradOp {
                geometry: self.geometry,
                kernel: w.dim(2)?,
                out: w.dim(0)?,
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (w, dy) -> dx.
struct Conv2dInputGradOp {
    geometry: ConvGeometry,
    input: Vec<usize>,
}

impl CustomOp2 for Conv2dInputGradOp {
    fn name(&self) -> &'static str {
        "zoo-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = contiguous_f32(self.name(), s1, l1)?;
        let dy = contiguous_f32(self.name(), s2, l2)?;
        let g = self.geometry;
        let s = Sizes::new(self.name(), &self.input, l1.dims(), g)?;
        let (in_len, out_len) = (s.c * s.h * s.w, s.o * s.positions());
        let mut dx = vec![0f32; s.n * in_len];
        dx.par_chunks_mut(in_len)
            .zip(dy.par_chunks(out_len))
            .for_each_init(
                || {
                    vec![
                        0f32;
                        if s.pointwise(g) {
                            0
                        } else {
                            s.rows() * s.positions()
                        }
                    ]
                },
                |col, (dx_n, dy_n)| {
                    if s.pointwise(g) {
                        // [c, p] = [o, c]^T . [o, p]
                        sgemm(
                            s.rows(),
                            s.positions(),
                            s.o,
                            w,
                            true,
                            dy_n,
                            false,
                            dx_n,
                            false,
                        );
                    } else {
                        sgemm(
                            s.rows(),
                            s.positions(),
                            s.o,
                            w,
                            true,
                            dy_n,
                            false,
                            col,
                            false,
                        );
                        col2im(col, &s, g, dx_n);
                    }
                },
            );
        Ok((CpuStorage::F32(dx), Shape::from(self.input.as_slice())))
    }
}

/// (x, dy) -> dw.
struct Conv2dWeightGradOp {
    geometry: ConvGeometry,
    kernel: usize,
    out: usize,
}

impl CustomOp2 for Conv2dWeightGradOp {
    fn name(&self) -> &'static str {
        "zoo-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let dy = contiguous_f32(self.name(), s2, l2)?;
        let g = self.geometry;
        let c = l1.dims().get(1).copied().unwrap_or(0);
        let s = Sizes::new(
            self.name(),
            l1.dims(),
            &[self.out, c, self.kernel, self.kernel],
            g,
        )?;
        let (in_len, out_len, w_len) = (s.c * s.h * s.w, s.o * s.positions(), s.o * s.rows());
        let dw = x
            .par_chunks(in_len)
            .zip(dy.par_chunks(out_len))
            .fold(
                || {
                    (
                        vec![0f32; w_len],
                        vec![
                            0f32;
                            if s.pointwise(g) {
                                0
                            } else {
                                s.rows() * s.positions()
                            }
                        ],
                    )
                },
                |(mut acc, mut col), (x_n, dy_n)| {
                    let cols: &[f32] = if s.pointwise(g) {
                        x_n
                    } else {
                        im2col(x_n, &s, g, &mut col);
                        &col
                    };
                    // [o, rows] += [o, p] . [rows, p]^T
                    sgemm(
                        s.o,
                        s.rows(),
                        s.positions(),
                        dy_n,
                        false,
                        cols,
                        true,
                        &mut acc,
                        true,
                    );
                    (acc, col)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(
                || vec![0f32; w_len],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))))
    }
}

/// Convolution of a contiguous-or-not f32 CPU `(N, C, H, W)` input with `(O, C, k, k)` weights,
/// differentiable in both. No bias (add it after).
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: ConvGeometry) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dOp { geometry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_input;
    use candle_core::Var;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
            / scale;
        assert!(err <= 1e-4, "{what}: relative error {err}");
    }

    #[test]
    fn conv_matches_candle_forward_and_gradients() {
        // (input, out channels, kernel, stride, padding): batch 1, odd sizes, the notebook's
        // 11x11 stride 4, 7x7 stride 2 padding 3, 1x1 pointwise and strided.
        for (x_shape, o, k, stride, padding) in [
            ([1usize, 3, 9, 7], 4, 3, 1, 1),
            ([2, 3, 23, 23], 5, 11, 4, 1),
            ([3, 2, 13, 11], 6, 7, 2, 3),
            ([2, 8, 5, 5], 3, 1, 1, 0),
            ([2, 8, 6, 6], 4, 1, 2, 0),
            ([1, 4, 4, 4], 2, 5, 1, 2),
            ([2, 3, 8, 8], 4, 3, 3, 0),
        ] {
            let c = x_shape[1];
            let x = Var::from_tensor(&test_input(&x_shape, 1).unwrap()).unwrap();
            let w = Var::from_tensor(&test_input(&[o, c, k, k], 2).unwrap()).unwrap();
            let g = ConvGeometry { stride, padding };
            let y = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
            let y_ref = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap();
            let what = format!("{x_shape:?} o{o} k{k} s{stride} p{padding}");
            assert_eq!(y.dims(), y_ref.dims(), "{what}");
            assert_close(&format!("{what} forward"), &values(&y), &values(&y_ref));
            let upstream = test_input(y.dims(), 3).unwrap();
            let grads = (&y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads_ref = (&y_ref * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert_close(
                &format!("{what} dx"),
                &values(grads.get(x.as_tensor()).unwrap()),
                &values(grads_ref.get(x.as_tensor()).unwrap()),
            );
            assert_close(
                &format!("{what} dw"),
                &values(grads.get(w.as_tensor()).unwrap()),
                &values(grads_ref.get(w.as_tensor()).unwrap()),
            );
        }
    }
}
