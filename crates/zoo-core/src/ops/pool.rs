//! 2-d max and average pooling with padding (forward and backward), and adaptive average pooling.
//!
//! candle 0.11.1's `max_pool2d_with_stride` has no padding and cannot backpropagate when the
//! kernel differs from the stride, which ResNet, GoogLeNet, DenseNet, AlexNet and NiN all need.
//! The CPU kernels follow PyTorch: padding acts as -inf for max pooling (it is never selected),
//! the gradient of a window goes to its first maximum in row-major order, NaN propagates, and
//! average pooling divides by `kernel * kernel` including padding (`count_include_pad=True`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Square pooling window: kernel, stride and zero/-inf padding, as `nn.MaxPool2d(k, s, p)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2dParams {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
        }
    }

    /// Output length along one axis, or an error when the window does not fit.
    pub fn out_len(&self, len: usize) -> Result<usize> {
        if self.kernel == 0 || self.stride == 0 {
            candle_core::bail!("pooling needs kernel and stride >= 1, got {self:?}")
        }
        if 2 * self.padding > self.kernel {
            candle_core::bail!(
                "pooling padding {} must be at most half the kernel {}",
                self.padding,
                self.kernel
            )
        }
        let padded = len + 2 * self.padding;
        if padded < self.kernel {
            candle_core::bail!(
                "input size {len} (padded {padded}) is smaller than the pooling kernel {}",
                self.kernel
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PoolKind {
    Max,
    Avg,
}

struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

fn geometry(dims: &[usize], p: &Pool2dParams) -> Result<Geometry> {
    let [b, c, h, w] = dims else {
        candle_core::bail!(
            "pooling expects a (batch, channels, height, width) tensor, got {dims:?}"
        )
    };
    Ok(Geometry {
        planes: b * c,
        h: *h,
        w: *w,
        oh: p.out_len(*h)?,
        ow: p.out_len(*w)?,
    })
}

/// Index (within one plane) of the element a max window selects: the first maximum, NaN wins.
#[inline]
fn window_argmax(plane: &[f32], g: &Geometry, p: &Pool2dParams, oy: usize, ox: usize) -> usize {
    let y0 = (oy * p.stride) as isize - p.padding as isize;
    let x0 = (ox * p.stride) as isize - p.padding as isize;
    let y_lo = y0.max(0) as usize;
    let y_hi = ((y0 + p.kernel as isize) as usize).min(g.h);
    let x_lo = x0.max(0) as usize;
    let x_hi = ((x0 + p.kernel as isize) as usize).min(g.w);
    let mut best = f32::NEG_INFINITY;
    let mut best_idx = y_lo * g.w + x_lo;
    for iy in y_lo..y_hi {
        let row = &plane[iy * g.w..(iy + 1) * g.w];
        for (ix, &v) in row.iter().enumerate().take(x_hi).skip(x_lo) {
            if v > best || v.is_nan() {
                best = v;
                best_idx = iy * g.w + ix;
                if v.is_nan() {
                    return best_idx;
                }
            }
        }
    }
    best_idx
}

struct Pool2dOp {
    kind: PoolKind,
    params: Pool2dParams,
}

impl CustomOp1 for Pool2dOp {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "zoo-max-pool2d",
            PoolKind::Avg => "zoo-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(self.name(), storage, layout)?;
        let g = geometry(layout.dims(), &self.params)?;
        let p = self.params;
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let mut out = vec![0f32; g.planes * out_plane];
        let norm = 1.0 / (p.kernel * p.kernel) as f32;
        out.par_chunks_mut(out_plane.max(1))
            .zip(input.par_chunks(in_plane.max(1)))
            .for_each(|(dst, plane)| {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        dst[oy * g.ow + ox] = match self.kind {
                            PoolKind::Max => plane[window_argmax(plane, &g, &p, oy, ox)],
                            PoolKind::Avg => {
                                let (y0, x0) = window_origin(&p, oy, ox);
                                let mut sum = 0f32;
                                for iy in clip(y0, p.kernel, g.h) {
                                    for ix in clip(x0, p.kernel, g.w) {
                                        sum += plane[iy * g.w + ix];
                                    }
                                }
                                sum * norm
                            }
                        };
                    }
                }
            });
        let (b, c) = (layout.dims()[0], layout.dims()[1]);
        Ok((CpuStorage::F32(out), Shape::from((b, c, g.oh, g.ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_res = grad_res.contiguous()?;
        let grad = arg.apply_op2_no_bwd(
            &grad_res,
            &Pool2dBackwardOp {
                kind: self.kind,
                params: self.params,
            },
        )?;
        Ok(Some(grad))
    }
}

#[inline]
fn window_origin(p: &Pool2dParams, oy: usize, ox: usize) -> (isize, isize) {
    (
        (oy * p.stride) as isize - p.padding as isize,
        (ox * p.stride) as isize - p.padding as isize,
    )
}

/// The in-bounds indices of a window starting at `start` (possibly negative) of `len` elements.
#[inline]
fn clip(start: isize, len: usize, size: usize) -> std::ops::Range<usize> {
    let lo = start.max(0) as usize;
    let hi = ((start + len as isize).max(0) as usize).min(size);
    lo..hi.max(lo)
}

/// Gradient of a pooling op with respect to its input: (input, grad_output) -> grad_input.
struct Pool2dBackwardOp {
    kind: PoolKind,
    params: Pool2dParams,
}

impl CustomOp2 for Pool2dBackwardOp {
    fn name(&self) -> &'static str {
        "zoo-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(self.name(), s1, l1)?;
        let grad_out = contiguous_f32(self.name(), s2, l2)?;
        let g = geometry(l1.dims(), &self.params)?;
        let p = self.params;
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        let mut grad_in = vec![0f32; g.planes * in_plane];
        let norm = 1.0 / (p.kernel * p.kernel) as f32;
        grad_in
            .par_chunks_mut(in_plane.max(1))
            .zip(input.par_chunks(in_plane.max(1)))
            .zip(grad_out.par_chunks(out_plane.max(1)))
            .for_each(|((dst, plane), gout)| {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let gv = gout[oy * g.ow + ox];
                        match self.kind {
                            PoolKind::Max => dst[window_argmax(plane, &g, &p, oy, ox)] += gv,
                            PoolKind::Avg => {
                                let (y0, x0) = window_origin(&p, oy, ox);
                                for iy in clip(y0, p.kernel, g.h) {
                                    for ix in clip(x0, p.kernel, g.w) {
                                        dst[iy * g.w + ix] += gv * norm;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(grad_in), l1.shape().clone()))
    }
}

fn use_cpu_kernel(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// Max pooling with padding; trainable for any kernel, stride and padding.
///
/// # Shapes
/// `(b, c, h, w) -> (b, c, (h + 2p - k) / s + 1, (w + 2p - k) / s + 1)`
pub fn max_pool2d(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(Pool2dOp {
            kind: PoolKind::Max,
            params,
        })
    } else {
        pool2d_composed(x, params, PoolKind::Max)
    }
}

/// Average pooling with zero padding counted in the divisor (PyTorch's default).
pub fn avg_pool2d(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    if use_cpu_kernel(x) {
        x.contiguous()?.apply_op1(Pool2dOp {
            kind: PoolKind::Avg,
            params,
        })
    } else {
        pool2d_composed(x, params, PoolKind::Avg)
    }
}

/// Max pooling composed from candle ops (`maximum` over strided views of a -inf padded input).
/// The reference for the CPU kernel and the path on other devices; ties split the gradient.
pub fn max_pool2d_composed(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    pool2d_composed(x, params, PoolKind::Max)
}

/// Average pooling composed from candle ops (sum of strided views of a zero-padded input).
pub fn avg_pool2d_composed(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    pool2d_composed(x, params, PoolKind::Avg)
}

fn pad_value(x: &Tensor, dim: usize, before: usize, after: usize, value: f64) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut dims = x.dims().to_vec();
    if before > 0 {
        dims[dim] = before;
        parts.push(Tensor::full(value, dims.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    parts.push(x.clone());
    if after > 0 {
        dims[dim] = after;
        parts.push(Tensor::full(value, dims.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    Tensor::cat(&parts, dim)
}

/// Rows `start, start + stride, ...` (`count` of them) along `dim` of a tensor long enough
/// to hold `start + count * stride` elements there.
fn strided(x: &Tensor, dim: usize, start: usize, count: usize, stride: usize) -> Result<Tensor> {
    let x = x.narrow(dim, start, count * stride)?;
    if stride == 1 {
        return Ok(x);
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = count;
    dims.insert(dim + 1, stride);
    x.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

fn pool2d_composed(x: &Tensor, p: Pool2dParams, kind: PoolKind) -> Result<Tensor> {
    let g = geometry(x.dims(), &p)?;
    let fill = match kind {
        PoolKind::Max => f64::NEG_INFINITY,
        PoolKind::Avg => 0.0,
    };
    // Pad by `padding` on both sides plus enough on the far side for the strided reshape.
    let extra_h = (g.oh * p.stride + p.kernel).saturating_sub(g.h + 2 * p.padding);
    let extra_w = (g.ow * p.stride + p.kernel).saturating_sub(g.w + 2 * p.padding);
    let xp = pad_value(x, 2, p.padding, p.padding + extra_h, fill)?;
    let xp = pad_value(&xp, 3, p.padding, p.padding + extra_w, fill)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..p.kernel {
        let rows = strided(&xp, 2, ky, g.oh, p.stride)?;
        for kx in 0..p.kernel {
            let view = strided(&rows, 3, kx, g.ow, p.stride)?;
            acc = Some(match (acc, kind) {
                (None, _) => view,
                (Some(a), PoolKind::Max) => a.maximum(&view)?,
                (Some(a), PoolKind::Avg) => (a + view)?,
            });
        }
    }
    let acc = acc.expect("kernel >= 1 checked in geometry");
    match kind {
        PoolKind::Max => Ok(acc),
        PoolKind::Avg => acc / (p.kernel * p.kernel) as f64,
    }
}

/// Adaptive average pooling to `(out_h, out_w)` with PyTorch's bins
/// (`start = floor(i * h / out)`, `end = ceil((i + 1) * h / out)`); 1x1 is a plain mean.
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let [_, _, h, w] = x.dims() else {
        candle_core::bail!(
            "adaptive pooling expects a (batch, channels, height, width) tensor, got {:?}",
            x.dims()
        )
    };
    let (h, w) = (*h, *w);
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        candle_core::bail!("adaptive pooling from {h}x{w} to {out_h}x{out_w} is empty")
    }
    if out_h == 1 && out_w == 1 {
        return x.mean_keepdim(3)?.mean_keepdim(2);
    }
    if h % out_h == 0 && w % out_w == 0 && h / out_h == w / out_w {
        let k = h / out_h;
        return avg_pool2d(x, Pool2dParams::new(k, k, 0));
    }
    let bin = |i: usize, n: usize, out: usize| (i * n / out, ((i + 1) * n).div_ceil(out));
    let mut rows = Vec::with_capacity(out_h);
    for i in 0..out_h {
        let (y0, y1) = bin(i, h, out_h);
        let band = x.narrow(2, y0, y1 - y0)?.mean_keepdim(2)?;
        let mut cols = Vec::with_capacity(out_w);
        for j in 0..out_w {
            let (x0, x1) = bin(j, w, out_w);
            cols.push(band.narrow(3, x0, x1 - x0)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cols, 3)?);
    }
    Tensor::cat(&rows, 2)
}
