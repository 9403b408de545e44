//! 2-d max and average pooling with padding (forward and backward), and adaptive average pooling.
//!
//! candle 0.11.1's `max_pool2d_with_stride` has no padding and cannot backpropagate when the
//! kernel differs from the stride, which ResNet, GoogLeNet, DenseNet, AlexNet and NiN all need.
//! The CPU kernels follow PyTorch: padding acts as -inf for max pooling (it is never selected),
//! the gradient of a window goes to its first maximum in row-major order, NaN propagates, and
//! average pooling divides by `kernel * kernel` including padding (`count_include_pad=True`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::{contiguous_f32, cpu_f32};

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
    if *h == 0 || *w == 0 {
        candle_core::bail!("pooling expects a non-empty image, got {dims:?}")
    }
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
        // The window's part of the row as one slice: no per-element skip/take bookkeeping.
        let start = iy * g.w + x_lo;
        for (j, &v) in plane[start..iy * g.w + x_hi.max(x_lo)].iter().enumerate() {
            // Greater, or NaN (which wins at once).
            if v > best || v.is_nan() {
                if v.is_nan() {
                    return start + j;
                }
                best = v;
                best_idx = start + j;
            }
        }
    }
    best_idx
}

/// Planes max-pooled together, one per vector lane.
const POOL_LANES: usize = 8;

/// Max pooling of up to [`POOL_LANES`] planes (`planes`, laid one after another) into `dst`,
/// with each window's [`window_argmax`] in `ids` (each `(planes, oh, ow)`). The planes are
/// copied pixel by pixel into `pixels` (one lane per plane), and every window is scanned in
/// row-major order for all of them at once, without branches, so that the scan vectorises.
/// Plane by plane, with one branch per window element, this took 3-9% of a training step
/// (GoogLeNet, DenseNet, NiN), most of it on planes of 1x1 to 4x4 pixels.
fn max_pool_planes(
    planes: &[f32],
    g: &Geometry,
    p: &Pool2dParams,
    dst: &mut [f32],
    ids: &mut [u32],
    pixels: &mut Vec<[f32; POOL_LANES]>,
) {
    let (plane, out_plane) = (g.h * g.w, g.oh * g.ow);
    let lanes = planes.len() / plane;
    pixels.clear();
    pixels.extend((0..plane).map(|i| {
        std::array::from_fn(|l| {
            if l < lanes {
                planes[l * plane + i]
            } else {
                f32::NEG_INFINITY
            }
        })
    }));
    // Padding is at most half the kernel: every window overlaps the input.
    let window = |o: usize, len: usize| {
        let start = (o * p.stride) as isize - p.padding as isize;
        (start.max(0) as usize)..((start + p.kernel as isize) as usize).min(len)
    };
    for oy in 0..g.oh {
        let rows = window(oy, g.h);
        for ox in 0..g.ow {
            let cols = window(ox, g.w);
            let first = rows.start * g.w + cols.start;
            let (mut best, mut arg) = (pixels[first], [first as u32; POOL_LANES]);
            for iy in rows.clone() {
                for ix in cols.clone() {
                    let i = iy * g.w + ix;
                    let v = &pixels[i];
                    for l in 0..POOL_LANES {
                        // Greater, or NaN over a number (in row-major order the first maximum
                        // stays); as a mask: no branch.
                        #[allow(clippy::eq_op)] // x != x: x is NaN
                        let take = (v[l] > best[l]) | ((v[l] != v[l]) & (best[l] == best[l]));
                        let mask = 0u32.wrapping_sub(u32::from(take));
                        best[l] =
                            f32::from_bits((v[l].to_bits() & mask) | (best[l].to_bits() & !mask));
                        arg[l] = (i as u32 & mask) | (arg[l] & !mask);
                    }
                }
            }
            for l in 0..lanes {
                dst[l * out_plane + oy * g.ow + ox] = best[l];
                ids[l * out_plane + oy * g.ow + ox] = arg[l];
            }
        }
    }
}

/// The window maxima's positions (index within the input plane, per output element), written
/// by max pooling's forward for its backward.
type SavedArgmax = Arc<Mutex<Vec<u32>>>;

struct Pool2dOp {
    kind: PoolKind,
    params: Pool2dParams,
    /// Max pooling: where the forward leaves its argmax.
    argmax: Option<SavedArgmax>,
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
        match self.kind {
            PoolKind::Max => {
                let mut argmax = vec![0u32; g.planes * out_plane];
                out.par_chunks_mut((POOL_LANES * out_plane).max(1))
                    .zip(argmax.par_chunks_mut((POOL_LANES * out_plane).max(1)))
                    .zip(input.par_chunks((POOL_LANES * in_plane).max(1)))
                    .for_each_init(Vec::new, |pixels, ((dst, ids), planes)| {
                        max_pool_planes(planes, &g, &p, dst, ids, pixels)
                    });
                if let Some(slot) = &self.argmax
                    && let Ok(mut saved) = slot.lock()
                {
                    *saved = argmax;
                }
            }
            PoolKind::Avg => {
                out.par_chunks_mut(out_plane.max(1))
                    .zip(input.par_chunks(in_plane.max(1)))
                    .for_each(|(dst, plane)| {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let (y0, x0) = window_origin(&p, oy, ox);
                                let mut sum = 0f32;
                                for iy in clip(y0, p.kernel, g.h) {
                                    for ix in clip(x0, p.kernel, g.w) {
                                        sum += plane[iy * g.w + ix];
                                    }
                                }
                                dst[oy * g.ow + ox] = sum * norm;
                            }
                        }
                    });
            }
        }
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
                argmax: self.argmax.clone(),
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
    /// The forward's argmax, when it saved one (else it is recomputed from the input).
    argmax: Option<SavedArgmax>,
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
        // Max pooling with the forward's argmax: a scatter of the gradient, nothing recomputed.
        if let (PoolKind::Max, Some(slot)) = (&self.kind, &self.argmax)
            && let Ok(ids) = slot.lock()
            && ids.len() == grad_out.len()
        {
            grad_in
                .par_chunks_mut(in_plane.max(1))
                .zip(ids.par_chunks(out_plane.max(1)))
                .zip(grad_out.par_chunks(out_plane.max(1)))
                .for_each(|((dst, ids), gout)| {
                    for (&i, &gv) in ids.iter().zip(gout) {
                        dst[i as usize] += gv;
                    }
                });
            return Ok((CpuStorage::F32(grad_in), l1.shape().clone()));
        }
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

/// Max pooling with padding; trainable for any kernel, stride and padding.
///
/// # Shapes
/// `(b, c, h, w) -> (b, c, (h + 2p - k) / s + 1, (w + 2p - k) / s + 1)`
pub fn max_pool2d(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    if cpu_f32(x) {
        x.contiguous()?.apply_op1(Pool2dOp {
            kind: PoolKind::Max,
            params,
            argmax: Some(Arc::new(Mutex::new(Vec::new()))),
        })
    } else {
        pool2d_composed(x, params, PoolKind::Max)
    }
}

/// Average pooling with zero padding counted in the divisor (PyTorch's default).
pub fn avg_pool2d(x: &Tensor, params: Pool2dParams) -> Result<Tensor> {
    if cpu_f32(x) {
        x.contiguous()?.apply_op1(Pool2dOp {
            kind: PoolKind::Avg,
            params,
            argmax: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_input;
    use candle_core::{DType, Device};

    // Expected values from PyTorch, produced by `scripts/pool_reference.py`:
    // x[i] = ((i * 37) % 23) / 7 - 1.5, upstream gradient g[j] = 0.1 * (j + 1).
    // torch 2.15.0+cu132
    // MAX_3_2_1: input [2, 2, 7, 6] -> [2, 2, 4, 3]
    const MAX_3_2_1_OUT: &[f32] = &[
        0.642857, 1.35714, 1.21429, 1.64286, 1.5, 1.07143, 1.64286, 1.35714, 1.07143, 1.5, 1.35714,
        1.64286, 1.21429, 1.21429, 0.642857, 1.35714, 1.21429, 1.64286, 1.21429, 1.07143, 1.64286,
        1.21429, 0.785714, 1.5, 1.07143, 1.64286, 1.64286, 1.07143, 1.5, 1.5, 0.928571, 1.64286,
        1.5, 0.642857, 1.35714, 1.35714, 1.64286, 1.64286, 1.07143, 1.64286, 1.64286, 1.21429,
        1.64286, 1.5, 1.07143, 1.64286, 1.21429, 1.07143,
    ];
    const MAX_3_2_1_GRAD: &[f32] = &[
        0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0,
        1.1, 0.0, 0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.9, 0.0, 0.0, 0.0, 0.0,
        1.0, 0.0, 0.0, 0.0, 0.0, 1.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.4, 0.0, 0.0, 1.5, 0.0,
        1.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.9, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0,
        4.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.3, 0.0, 2.4, 0.0, 0.0, 0.0, 0.0, 5.3, 0.0, 0.0,
        5.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.2, 0.0, 0.0,
        3.1, 0.0, 3.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.4, 0.0, 7.1, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 15.6, 0.0, 0.0, 3.9, 0.0, 0.0, 0.0, 0.0, 4.2, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.4, 0.0, 0.0, 0.0, 0.0, 8.9, 0.0, 0.0, 9.3, 0.0, 0.0,
        0.0, 0.0, 4.7, 0.0, 0.0, 0.0,
    ];
    // MAX_3_1_1: input [1, 2, 4, 5] -> [1, 2, 4, 5]
    const MAX_3_1_1_OUT: &[f32] = &[
        0.642857, 0.642857, 1.35714, 1.35714, 1.35714, 0.785714, 0.785714, 1.5, 1.5, 1.5, 0.928571,
        0.928571, 1.64286, 1.64286, 1.64286, 0.928571, 0.928571, 1.64286, 1.64286, 1.64286,
        1.21429, 1.21429, 1.21429, 0.642857, 0.642857, 1.35714, 1.35714, 1.35714, 0.785714,
        0.785714, 1.5, 1.5, 1.5, 0.928571, 0.928571, 1.5, 1.5, 1.5, 0.928571, 0.928571,
    ];
    const MAX_3_1_1_GRAD: &[f32] = &[
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0, 1.2, 0.0, 0.0, 1.3, 0.0, 2.7, 0.0, 0.0, 5.6, 0.0,
        9.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.6, 0.0, 0.0, 4.9, 0.0, 8.1, 0.0, 0.0, 5.9, 0.0,
        20.7, 0.0, 0.0, 14.8,
    ];
    // MAX_3_2_0: input [1, 1, 7, 7] -> [1, 1, 3, 3]
    const MAX_3_2_0_OUT: &[f32] = &[
        1.35714, 1.64286, 1.64286, 1.07143, 1.64286, 1.64286, 1.5, 1.35714, 1.64286,
    ];
    const MAX_3_2_0_GRAD: &[f32] = &[
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        1.6, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0,
        0.7, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    // AVG_3_2_1: input [2, 2, 7, 6] -> [2, 2, 4, 3]
    const AVG_3_2_1_OUT: &[f32] = &[
        -0.111111,
        0.190476,
        -0.0634921,
        0.333333,
        0.214286,
        -0.166667,
        0.269841,
        0.119048,
        -0.261905,
        0.269841,
        0.031746,
        0.142857,
        -0.015873,
        -0.031746,
        -0.285714,
        0.111111,
        -0.119048,
        0.230159,
        0.0476191,
        -0.214286,
        0.134921,
        0.0,
        -0.190476,
        0.285714,
        0.0793651,
        0.111111,
        0.222222,
        -0.111111,
        -0.0873016,
        0.261905,
        -0.174603,
        0.18254,
        0.166667,
        -0.269841,
        -0.047619,
        0.0634921,
        0.174603,
        0.253968,
        1.65568e-09,
        0.031746,
        0.309524,
        -0.0714286,
        0.333333,
        0.214286,
        -0.166667,
        0.190476,
        0.0952381,
        -0.15873,
    ];
    const AVG_3_2_1_GRAD: &[f32] = &[
        0.0111111, 0.0333333, 0.0222222, 0.0555556, 0.0333333, 0.0333333, 0.0555556, 0.133333,
        0.0777778, 0.177778, 0.1, 0.1, 0.0444444, 0.1, 0.0555556, 0.122222, 0.0666667, 0.0666667,
        0.122222, 0.266667, 0.144444, 0.311111, 0.166667, 0.166667, 0.0777778, 0.166667, 0.0888889,
        0.188889, 0.1, 0.1, 0.188889, 0.4, 0.211111, 0.444444, 0.233333, 0.233333, 0.111111,
        0.233333, 0.122222, 0.255556, 0.133333, 0.133333, 0.144444, 0.3, 0.155556, 0.322222,
        0.166667, 0.166667, 0.322222, 0.666667, 0.344444, 0.711111, 0.366667, 0.366667, 0.177778,
        0.366667, 0.188889, 0.388889, 0.2, 0.2, 0.388889, 0.8, 0.411111, 0.844444, 0.433333,
        0.433333, 0.211111, 0.433333, 0.222222, 0.455556, 0.233333, 0.233333, 0.455556, 0.933333,
        0.477778, 0.977778, 0.5, 0.5, 0.244444, 0.5, 0.255556, 0.522222, 0.266667, 0.266667,
        0.277778, 0.566667, 0.288889, 0.588889, 0.3, 0.3, 0.588889, 1.2, 0.611111, 1.24444,
        0.633333, 0.633333, 0.311111, 0.633333, 0.322222, 0.655556, 0.333333, 0.333333, 0.655555,
        1.33333, 0.677778, 1.37778, 0.7, 0.7, 0.344444, 0.7, 0.355556, 0.722222, 0.366667,
        0.366667, 0.722222, 1.46667, 0.744444, 1.51111, 0.766667, 0.766667, 0.377778, 0.766667,
        0.388889, 0.788889, 0.4, 0.4, 0.411111, 0.833333, 0.422222, 0.855556, 0.433333, 0.433333,
        0.855556, 1.73333, 0.877778, 1.77778, 0.9, 0.9, 0.444444, 0.9, 0.455556, 0.922222,
        0.466667, 0.466667, 0.922222, 1.86667, 0.944444, 1.91111, 0.966667, 0.966667, 0.477778,
        0.966667, 0.488889, 0.988889, 0.5, 0.5, 0.988889, 2.0, 1.01111, 2.04444, 1.03333, 1.03333,
        0.511111, 1.03333, 0.522222, 1.05556, 0.533333, 0.533333,
    ];
    // AVG_2_2_0: input [1, 2, 5, 4] -> [1, 2, 2, 2]
    const AVG_2_2_0_OUT: &[f32] = &[
        -0.607143, 0.107143, 0.607143, -0.321429, -0.0357143, -0.142857, -0.464286, 0.25,
    ];
    const AVG_2_2_0_GRAD: &[f32] = &[
        0.025, 0.025, 0.05, 0.05, 0.025, 0.025, 0.05, 0.05, 0.075, 0.075, 0.1, 0.1, 0.075, 0.075,
        0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.125, 0.125, 0.15, 0.15, 0.125, 0.125, 0.15, 0.15, 0.175,
        0.175, 0.2, 0.2, 0.175, 0.175, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0,
    ];
    // ADAPTIVE_3X2: input [1, 2, 7, 5] -> [1, 2, 3, 2]
    const ADAPTIVE_3X2_OUT: &[f32] = &[
        -0.452381, 0.261905, -0.166667, 0.18254, 0.119048, -0.261905, 0.18254, 0.166667, -0.261905,
        0.452381, 0.0238095, 0.373016,
    ];
    const ADAPTIVE_3X2_GRAD: &[f32] = &[
        0.0111111, 0.0111111, 0.0333333, 0.0222222, 0.0222222, 0.0111111, 0.0111111, 0.0333333,
        0.0222222, 0.0222222, 0.0444444, 0.0444444, 0.111111, 0.0666667, 0.0666667, 0.0333333,
        0.0333333, 0.0777778, 0.0444444, 0.0444444, 0.0888889, 0.0888889, 0.2, 0.111111, 0.111111,
        0.0555556, 0.0555556, 0.122222, 0.0666667, 0.0666667, 0.0555556, 0.0555556, 0.122222,
        0.0666667, 0.0666667, 0.0777778, 0.0777778, 0.166667, 0.0888889, 0.0888889, 0.0777778,
        0.0777778, 0.166667, 0.0888889, 0.0888889, 0.177778, 0.177778, 0.377778, 0.2, 0.2, 0.1,
        0.1, 0.211111, 0.111111, 0.111111, 0.222222, 0.222222, 0.466667, 0.244444, 0.244444,
        0.122222, 0.122222, 0.255556, 0.133333, 0.133333, 0.122222, 0.122222, 0.255556, 0.133333,
        0.133333,
    ];

    fn formula_input(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Forward and input gradient of `f` for the formula input and upstream gradient.
    fn forward_and_grad(
        shape: &[usize],
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = candle_core::Var::from_tensor(&formula_input(shape)).unwrap();
        let y = f(x.as_tensor()).unwrap();
        let n = y.elem_count();
        let g: Vec<f32> = (0..n).map(|j| 0.1 * (j + 1) as f32).collect();
        let g = Tensor::from_vec(g, y.shape(), &Device::Cpu).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads
            .get(x.as_tensor())
            .expect("gradient reaches the input");
        (
            y.flatten_all().unwrap().to_vec1().unwrap(),
            dx.flatten_all().unwrap().to_vec1().unwrap(),
        )
    }

    fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{name}[{i}]: got {g}, PyTorch {w}"
            );
        }
    }

    #[test]
    fn max_pool_matches_pytorch() {
        for (shape, p, out, grad) in [
            (
                &[2, 2, 7, 6][..],
                Pool2dParams::new(3, 2, 1),
                MAX_3_2_1_OUT,
                MAX_3_2_1_GRAD,
            ),
            (
                &[1, 2, 4, 5][..],
                Pool2dParams::new(3, 1, 1),
                MAX_3_1_1_OUT,
                MAX_3_1_1_GRAD,
            ),
            (
                &[1, 1, 7, 7][..],
                Pool2dParams::new(3, 2, 0),
                MAX_3_2_0_OUT,
                MAX_3_2_0_GRAD,
            ),
        ] {
            let (y, dx) = forward_and_grad(shape, |x| max_pool2d(x, p));
            assert_close("max forward", &y, out, 1e-5);
            assert_close("max grad", &dx, grad, 1e-5);
            // The composition gives the same forward, and the same gradient when there are no ties.
            let (y2, _) = forward_and_grad(shape, |x| max_pool2d_composed(x, p));
            assert_close("composed max forward", &y2, out, 1e-5);
        }
    }

    #[test]
    fn avg_and_adaptive_pool_match_pytorch() {
        for (shape, p, out, grad) in [
            (
                &[2, 2, 7, 6][..],
                Pool2dParams::new(3, 2, 1),
                AVG_3_2_1_OUT,
                AVG_3_2_1_GRAD,
            ),
            (
                &[1, 2, 5, 4][..],
                Pool2dParams::new(2, 2, 0),
                AVG_2_2_0_OUT,
                AVG_2_2_0_GRAD,
            ),
        ] {
            let (y, dx) = forward_and_grad(shape, |x| avg_pool2d(x, p));
            assert_close("avg forward", &y, out, 1e-5);
            assert_close("avg grad", &dx, grad, 1e-5);
            let (y2, dx2) = forward_and_grad(shape, |x| avg_pool2d_composed(x, p));
            assert_close("composed avg forward", &y2, out, 1e-5);
            assert_close("composed avg grad", &dx2, grad, 1e-5);
        }
        let (y, dx) = forward_and_grad(&[1, 2, 7, 5], |x| adaptive_avg_pool2d(x, 3, 2));
        assert_close("adaptive forward", &y, ADAPTIVE_3X2_OUT, 1e-5);
        assert_close("adaptive grad", &dx, ADAPTIVE_3X2_GRAD, 1e-5);
    }

    /// The lane-parallel scan against the window-by-window one, plane by plane: values from a
    /// handful of levels (many ties), signed zeros and NaNs; a full group of planes and a
    /// partial one; every geometry the models use and odd ones.
    #[test]
    fn lane_parallel_max_pool_picks_each_windows_first_maximum() {
        let levels = [0.0, -0.0, 1.0, 2.0, -3.0, f32::NAN, 2.0, 1.0];
        for (h, w) in [(16, 16), (7, 9), (5, 3), (2, 2), (1, 4)] {
            let planes = POOL_LANES + 3;
            let input: Vec<f32> = (0..planes * h * w)
                .map(|i| levels[(i * 7 + i / 3 + (i * i) % 5) % levels.len()])
                .collect();
            for (k, stride, padding) in [(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0), (5, 3, 2)] {
                let p = Pool2dParams::new(k, stride, padding);
                let (Ok(oh), Ok(ow)) = (p.out_len(h), p.out_len(w)) else {
                    continue;
                };
                let g = Geometry {
                    planes,
                    h,
                    w,
                    oh,
                    ow,
                };
                let (mut dst, mut ids) =
                    (vec![0f32; planes * oh * ow], vec![0u32; planes * oh * ow]);
                let mut pixels = Vec::new();
                for ((group, dst), ids) in input
                    .chunks(POOL_LANES * h * w)
                    .zip(dst.chunks_mut(POOL_LANES * oh * ow))
                    .zip(ids.chunks_mut(POOL_LANES * oh * ow))
                {
                    max_pool_planes(group, &g, &p, dst, ids, &mut pixels);
                }
                for (n, plane) in input.chunks(h * w).enumerate() {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let want = window_argmax(plane, &g, &p, oy, ox);
                            let at = (n * oh + oy) * ow + ox;
                            let case =
                                format!("{h}x{w} k{k} s{stride} p{padding} plane {n} ({oy}, {ox})");
                            assert_eq!(ids[at] as usize, want, "{case}");
                            assert_eq!(dst[at].to_bits(), plane[want].to_bits(), "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn max_pool_ties_send_the_gradient_to_the_first_maximum() {
        // PyTorch: F.max_pool2d(torch.ones(1, 1, 4, 4, requires_grad=True), 2, 2).sum().backward()
        // gives grad 1 at (0,0), (0,2), (2,0), (2,2) and 0 elsewhere.
        let x = candle_core::Var::ones((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let y = max_pool2d(x.as_tensor(), Pool2dParams::new(2, 2, 0)).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut want = vec![0f32; 16];
        for i in [0, 2, 8, 10] {
            want[i] = 1.0;
        }
        assert_eq!(g, want);
    }

    #[test]
    fn kernels_match_the_composition_on_random_inputs() {
        // Random inputs have no ties, so the gradients must agree too.
        for (shape, p) in [
            (&[1, 1, 1, 1][..], Pool2dParams::new(1, 1, 0)),
            (&[1, 3, 9, 9][..], Pool2dParams::new(3, 2, 1)),
            (&[2, 4, 13, 10][..], Pool2dParams::new(3, 3, 1)),
            (&[3, 2, 8, 11][..], Pool2dParams::new(2, 2, 0)),
            (&[2, 5, 6, 6][..], Pool2dParams::new(5, 1, 2)),
            (&[1, 2, 12, 12][..], Pool2dParams::new(4, 3, 2)),
        ] {
            let x = candle_core::Var::from_tensor(&test_input(shape, 9).unwrap()).unwrap();
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let run = |composed: bool| {
                    let y = if composed {
                        pool2d_composed(x.as_tensor(), p, kind).unwrap()
                    } else if kind == PoolKind::Max {
                        max_pool2d(x.as_tensor(), p).unwrap()
                    } else {
                        avg_pool2d(x.as_tensor(), p).unwrap()
                    };
                    let w = test_input(y.dims(), 10).unwrap();
                    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx: Vec<f32> = grads
                        .get(x.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dx)
                };
                let (y_kernel, dx_kernel) = run(false);
                let (y_ref, dx_ref) = run(true);
                assert_close(
                    &format!("{kind:?} {shape:?} {p:?} forward"),
                    &y_kernel,
                    &y_ref,
                    1e-4,
                );
                assert_close(
                    &format!("{kind:?} {shape:?} {p:?} grad"),
                    &dx_kernel,
                    &dx_ref,
                    1e-4,
                );
            }
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = test_input(&[1, 1, 2, 2], 0).unwrap();
        let err = max_pool2d(&x, Pool2dParams::new(3, 2, 0)).unwrap_err();
        assert!(
            err.to_string()
                .contains("smaller than the pooling kernel 3"),
            "{err}"
        );
        let err = max_pool2d(&x, Pool2dParams::new(2, 2, 2)).unwrap_err();
        assert!(err.to_string().contains("at most half the kernel"), "{err}");
        let err =
            avg_pool2d(&test_input(&[2, 2], 0).unwrap(), Pool2dParams::new(1, 1, 0)).unwrap_err();
        assert!(
            err.to_string().contains("(batch, channels, height, width)"),
            "{err}"
        );
        // An empty image that the padding alone would cover.
        let empty = Tensor::zeros((1, 1, 0, 2), DType::F32, &Device::Cpu).unwrap();
        let err = max_pool2d(&empty, Pool2dParams::new(2, 1, 1)).unwrap_err();
        assert!(err.to_string().contains("non-empty image"), "{err}");
    }
}
