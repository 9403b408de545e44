//! 2-d convolution on the CPU as matrix products, forward and both gradients.
//!
//! candle 0.11.1 computes the input gradient with `conv_transpose2d` (a loop of dot products on
//! the CPU, 4.7x slower than PyTorch) and copies a strided im2col of the whole batch. Here each
//! image is one GEMM (`y = W . col`), the weight gradient is `sum_n dy_n . col_n^T` and the
//! input gradient is `col2im(W^T . dy_n)`; images are spread over the rayon threads, each with
//! its own column buffer. The bias and an optional ReLU are applied while the GEMM result is
//! copied out, and undone in one pass in the backward. Two other paths take the forward and both
//! gradients where they are faster: 3x3 and 5x5 'same' convolutions with stride 1 on maps of
//! 4 (3x3) or 6 (5x5) and more go through Winograd's algorithm ([`super::winograd`]: 2.25x to
//! 6.25x fewer multiply-adds per output), and other convolutions that would multiply padding in a fifth or more
//! of their multiply-adds (small maps) through [`super::tiled`], which skips those. The order:
//! Winograd, then tiled, then the GEMMs.

use super::activation::relu_f32;
use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::fused_relu_grad;
use super::gemm::{channel_sums, sgemm, sgemm_new};
use super::{contiguous_f32, microkernel, new_filled, tiled, winograd, zeroed};

/// Square-kernel convolution geometry (no dilation, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
}

#[derive(Debug, Clone)]
struct Sizes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    oh: usize,
    ow: usize,
    /// The kernel taps `(ky, kx)` that see at least one input pixel (not only padding) at some
    /// output position, row-major. On small feature maps the others multiply zeros only: a
    /// 3x3 convolution of a 1x1 map with padding 1 needs its centre tap alone.
    taps: Vec<(usize, usize)>,
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
        let (oh, ow) = ((ph - kh) / g.stride + 1, (pw - kw) / g.stride + 1);
        // Tap offset `t` sees the input at some output position along an axis of length `len`.
        let sees_input = |t: usize, out: usize, len: usize| {
            (0..out).any(|o| {
                let i = (o * g.stride + t) as isize - g.padding as isize;
                i >= 0 && i < len as isize
            })
        };
        let taps = (0..*kh)
            .filter(|&ky| sees_input(ky, oh, *h))
            .flat_map(|ky| {
                (0..*kw)
                    .filter(|&kx| sees_input(kx, ow, *wd))
                    .map(move |kx| (ky, kx))
            })
            .collect();
        Ok(Self {
            n: *n,
            c: *c,
            h: *h,
            w: *wd,
            o: *o,
            k: *kh,
            oh,
            ow,
            taps,
        })
    }
    /// Rows of the column matrix: C * (taps used).
    fn rows(&self) -> usize {
        self.c * self.taps.len()
    }
    /// Whether every tap is used (the weights are the GEMM's matrix as they are).
    fn all_taps(&self) -> bool {
        self.taps.len() == self.k * self.k
    }
    /// The `(O, C * taps)` weight matrix of the used taps.
    fn selected_weights<'a>(&self, w: &'a [f32]) -> Cow<'a, [f32]> {
        if self.all_taps() {
            return Cow::Borrowed(w);
        }
        let (kk, t) = (self.k * self.k, self.taps.len());
        // In parallel over output channels: on a 1x1 map a 512x512 3x3 kernel's centre taps
        // are read from all of its 9.4 MB (3% of ResNet-18's training step, serial).
        let mut out = vec![0f32; self.o * self.rows()];
        out.par_chunks_mut((self.c * t).max(1))
            .zip(w.par_chunks((self.c * kk).max(1)))
            .for_each(|(dst, src)| {
                for (d, kernel) in dst.chunks_mut(t).zip(src.chunks(kk)) {
                    for (v, &(ky, kx)) in d.iter_mut().zip(&self.taps) {
                        *v = kernel[ky * self.k + kx];
                    }
                }
            });
        Cow::Owned(out)
    }
    /// The full `(O, C, k, k)` gradient from the used taps' `(O, C * taps)` one (zeros
    /// elsewhere: those taps only ever multiplied padding).
    fn full_weight_grad(&self, selected: Vec<f32>) -> Vec<f32> {
        if self.all_taps() {
            return selected;
        }
        let (kk, t) = (self.k * self.k, self.taps.len());
        let mut out = vec![0f32; self.o * self.c * kk];
        out.par_chunks_mut((self.c * kk).max(1))
            .zip(selected.par_chunks((self.c * t).max(1)))
            .for_each(|(dst, src)| {
                for (kernel, values) in dst.chunks_mut(kk).zip(src.chunks(t)) {
                    for (&v, &(ky, kx)) in values.iter().zip(&self.taps) {
                        kernel[ky * self.k + kx] = v;
                    }
                }
            });
        out
    }
    /// Output positions per image.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }
}

/// The output positions `lo..hi` along one axis at which kernel offset `t` reads inside the
/// input (`0 <= o * stride + t - padding < len`); the others read padding.
fn valid_outputs(t: usize, out: usize, len: usize, g: ConvGeometry) -> (usize, usize) {
    let lo = g.padding.saturating_sub(t).div_ceil(g.stride).min(out);
    let hi = if len + g.padding > t {
        ((len - 1 + g.padding - t) / g.stride + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// Per used tap: its valid output rows and columns, and the first input row and column they
/// read.
struct TapRange {
    oy: (usize, usize),
    ox: (usize, usize),
    iy0: usize,
    ix0: usize,
    /// For a "same" convolution (stride 1, output size = input size): input index minus output
    /// index within a plane, `(ky - padding) * w + (kx - padding)`.
    shift: isize,
    /// On small outputs (at most `GATHER_POSITIONS`), per output position the input index
    /// within a plane that the tap reads there, `PADDING` where it reads padding; empty
    /// otherwise. A row of a few values is then one gather, where the copies and fills of the
    /// general path each cost a call: on 1x1 to 4x4 maps (GoogLeNet's 1x1 convolutions)
    /// im2col was 9% of a training step.
    sources: Vec<u32>,
}

/// The largest output (positions per image) whose columns are gathered through
/// [`TapRange::sources`].
const GATHER_POSITIONS: usize = 64;
/// The largest output gathered through [`TapRange::sources`] when the stride is more than 1:
/// the general path's strided copy runs per output row (15 values per row and tap for NiN's and
/// AlexNet's 11x11 stem, 16 for ResNet's 7x7).
const GATHER_STRIDED_POSITIONS: usize = 4096;
/// A position at which a tap reads padding, in [`TapRange::sources`].
const PADDING: u32 = u32::MAX;

fn tap_ranges(s: &Sizes, g: ConvGeometry) -> Vec<TapRange> {
    s.taps
        .iter()
        .map(|&(ky, kx)| {
            let oy = valid_outputs(ky, s.oh, s.h, g);
            let ox = valid_outputs(kx, s.ow, s.w, g);
            let mut sources = Vec::new();
            if s.positions() <= GATHER_POSITIONS
                || (g.stride > 1 && s.positions() <= GATHER_STRIDED_POSITIONS)
            {
                sources = vec![PADDING; s.positions()];
                for out_y in oy.0..oy.1 {
                    for out_x in ox.0..ox.1 {
                        let (iy, ix) = (
                            out_y * g.stride + ky - g.padding,
                            out_x * g.stride + kx - g.padding,
                        );
                        sources[out_y * s.ow + out_x] = (iy * s.w + ix) as u32;
                    }
                }
            }
            TapRange {
                sources,
                oy,
                ox,
                // Only read when the range is non-empty, where these are >= 0.
                iy0: (oy.0 * g.stride + ky).saturating_sub(g.padding),
                ix0: (ox.0 * g.stride + kx).saturating_sub(g.padding),
                shift: (ky as isize - g.padding as isize) * s.w as isize + kx as isize
                    - g.padding as isize,
            }
        })
        .collect()
}

/// A stride-1 convolution whose output has the input's size (3x3 with padding 1, 1x1, ...).
fn same_size(s: &Sizes, g: ConvGeometry) -> bool {
    g.stride == 1 && s.oh == s.h && s.ow == s.w
}

/// The part of the output range `a..b` whose shifted input index `q + shift` lies in
/// `0..plane` (the rest can only be padding columns).
fn shifted_range(a: usize, b: usize, shift: isize, plane: usize) -> (usize, usize) {
    let lo = a.max((-shift).max(0) as usize);
    let hi = b.min((plane as isize - shift).max(0) as usize);
    (lo.min(b), hi.max(lo.min(b)))
}

/// Zeros the columns of the valid rows at which tap `r` reads padding.
fn zero_padding_columns(row: &mut [f32], s: &Sizes, r: &TapRange) {
    let (ox_lo, ox_hi) = r.ox;
    if ox_lo == 0 && ox_hi == s.ow {
        return;
    }
    // Column by column, strided: one or two stores per row for the usual 3x3 (a per-row loop
    // became a `memset` call per row).
    let rows = &mut row[r.oy.0 * s.ow..r.oy.1 * s.ow];
    for col in (0..ox_lo).chain(ox_hi..s.ow) {
        for v in rows.iter_mut().skip(col).step_by(s.ow) {
            *v = 0.0;
        }
    }
}

/// Writes image `x`'s columns into `col` (C*taps rows of row stride `ld`) from column
/// `offset`: per row, zeros where the tap reads padding and a copy (a strided gather for
/// stride > 1) of the input where it does not.
fn im2col(
    x: &[f32],
    s: &Sizes,
    g: ConvGeometry,
    ranges: &[TapRange],
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    let (plane, taps) = (s.h * s.w, ranges.len());
    for c in 0..s.c {
        let src = &x[c * plane..][..plane];
        for (t, r) in ranges.iter().enumerate() {
            let row = &mut col[(c * taps + t) * ld + offset..][..s.positions()];
            if !r.sources.is_empty() {
                for (o, &i) in row.iter_mut().zip(&r.sources) {
                    *o = if i == PADDING { 0.0 } else { src[i as usize] };
                }
                continue;
            }
            let (oy_lo, oy_hi) = r.oy;
            let (ox_lo, ox_hi) = r.ox;
            let width = ox_hi - ox_lo;
            row[..oy_lo * s.ow].fill(0.0);
            row[oy_hi * s.ow..].fill(0.0);
            if same_size(s, g) {
                // Every valid output position q reads input q + shift: one block copy of the
                // valid rows, then zeros at the columns that read padding (on small maps this
                // replaces a copy call per row).
                let (a, b) = (oy_lo * s.ow, oy_hi * s.ow);
                let (lo, hi) = shifted_range(a, b, r.shift, plane);
                row[a..lo].fill(0.0);
                row[hi..b].fill(0.0);
                row[lo..hi].copy_from_slice(&src[lo.wrapping_add_signed(r.shift)..][..hi - lo]);
                zero_padding_columns(row, s, r);
                continue;
            }
            for (j, oy) in (oy_lo..oy_hi).enumerate() {
                let out = &mut row[oy * s.ow..(oy + 1) * s.ow];
                out[..ox_lo].fill(0.0);
                out[ox_hi..].fill(0.0);
                let line = &src[(r.iy0 + j * g.stride) * s.w..][..s.w];
                if g.stride == 1 {
                    out[ox_lo..ox_hi].copy_from_slice(&line[r.ix0..r.ix0 + width]);
                } else {
                    let taken = line[r.ix0..].iter().step_by(g.stride);
                    for (o, &v) in out[ox_lo..ox_hi].iter_mut().zip(taken) {
                        *o = v;
                    }
                }
            }
        }
    }
}

/// Adds columns (row stride `ld`, from column `offset`) back into image `x` (adjoint of
/// im2col).
fn col2im(
    col: &mut [f32],
    s: &Sizes,
    g: ConvGeometry,
    ranges: &[TapRange],
    x: &mut [f32],
    ld: usize,
    offset: usize,
) {
    let (plane, taps) = (s.h * s.w, ranges.len());
    for c in 0..s.c {
        let dst = &mut x[c * plane..][..plane];
        for (t, r) in ranges.iter().enumerate() {
            let row = &mut col[(c * taps + t) * ld + offset..][..s.positions()];
            if !r.sources.is_empty() {
                for (&v, &i) in row.iter().zip(&r.sources) {
                    if i != PADDING {
                        dst[i as usize] += v;
                    }
                }
                continue;
            }
            if same_size(s, g) {
                // The adjoint of im2col's block copy: drop the values at padding columns, then
                // one shifted add over the valid rows.
                zero_padding_columns(row, s, r);
                let (lo, hi) = shifted_range(r.oy.0 * s.ow, r.oy.1 * s.ow, r.shift, plane);
                let target = &mut dst[lo.wrapping_add_signed(r.shift)..][..hi - lo];
                for (d, &v) in target.iter_mut().zip(&row[lo..hi]) {
                    *d += v;
                }
                continue;
            }
            let (ox_lo, ox_hi) = r.ox;
            for (j, oy) in (r.oy.0..r.oy.1).enumerate() {
                let src = &row[oy * s.ow + ox_lo..oy * s.ow + ox_hi];
                let line = &mut dst[(r.iy0 + j * g.stride) * s.w..][..s.w];
                if g.stride == 1 {
                    for (d, &v) in line[r.ix0..r.ix0 + src.len()].iter_mut().zip(src) {
                        *d += v;
                    }
                } else {
                    let targets = line[r.ix0..].iter_mut().step_by(g.stride);
                    for (d, &v) in targets.zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// A per-thread working buffer (columns, gathered gradients) taken from, and on drop given back
/// to, the thread's pool: convolutions run every step with the same sizes, so after the first
/// step no buffer is allocated or zeroed. Its contents on taking are unspecified: every user
/// writes each element it reads.
pub(super) struct Scratch(Vec<f32>);

thread_local! {
    static SCRATCH_POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers a thread keeps for reuse.
const SCRATCH_KEPT: usize = 4;
/// Largest buffer kept (16 MiB of f32): the column matrices of large images (VGG at 224 px:
/// 115 MB) are allocated per call, where the allocation is small next to the work, rather than
/// held between ops.
const SCRATCH_MAX_KEPT_LEN: usize = 1 << 22;

impl Scratch {
    pub(super) fn take(len: usize) -> Self {
        let reused = SCRATCH_POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().ok()?;
                let best = pool
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.capacity() >= len)
                    .min_by_key(|(_, v)| v.capacity())
                    .map(|(i, _)| i)
                    .or_else(|| (!pool.is_empty()).then_some(0))?;
                Some(pool.swap_remove(best))
            })
            .ok()
            .flatten();
        let mut v = reused.unwrap_or_default();
        v.truncate(len);
        v.resize(len, 0.0);
        Self(v)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let _ = SCRATCH_POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.len() < SCRATCH_KEPT
                && v.capacity() <= SCRATCH_MAX_KEPT_LEN
            {
                pool.push(v);
            }
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

/// How images are grouped: enough images per GEMM that it has at least `MIN_COLUMNS` columns
/// (late layers have a handful of positions per image: one GEMM per image would re-read the
/// weights for every image), and the groups spread over the threads when there are enough.
struct Plan {
    group: usize,
    groups: usize,
    /// Threads inside each GEMM (when the groups alone cannot use them).
    gemm_threads: usize,
}

const MIN_COLUMNS: usize = 256;

fn plan(s: &Sizes) -> Plan {
    let threads = rayon::current_num_threads().max(1);
    // At most n / threads images per group, so that every thread gets a group: one GEMM
    // per thread beats one GEMM split by the gemm crate across threads (a 3x3 convolution of
    // 32x256x2x2 ran 3.6x slower as a single two-thread GEMM).
    let group = MIN_COLUMNS
        .div_ceil(s.positions())
        .min(s.n.div_ceil(threads))
        .clamp(1, s.n);
    let groups = s.n.div_ceil(group);
    Plan {
        group,
        groups,
        gemm_threads: if groups >= threads { 1 } else { threads },
    }
}

/// Runs `f((columns, gathered), group index, that group's part of out)` for every group, in
/// parallel when the plan says so; `per_image` is the length of one image's part of `out`.
/// Each task gets two scratch buffers: the group's columns (`rows x group * positions`) and
/// its output channels (`o x group * positions`: the GEMM result, or the gathered gradient).
fn for_groups<T: Send>(
    p: &Plan,
    s: &Sizes,
    out: &mut [T],
    per_image: usize,
    f: impl Fn(&mut (Scratch, Scratch), usize, &mut [T]) + Sync + Send,
) {
    let columns = p.group * s.positions();
    let init = || {
        (
            Scratch::take(s.rows() * columns),
            Scratch::take(s.o * columns),
        )
    };
    let chunk = p.group * per_image;
    if p.gemm_threads == 1 {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(init, |state, (gi, dst)| f(state, gi, dst));
    } else {
        let mut state = init();
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(gi, dst)| f(&mut state, gi, dst));
    }
}

/// The tiled path's plan when the forward and both gradients take it (when the Winograd path
/// does not): a kernel larger than 1x1 (a 1x1's im2col is a plain copy) that reaches padding
/// in at least `MIN_TILED_PADDING` of its multiply-adds, with every tap used (where only some
/// are, as on 1x1 maps, the GEMM path already drops the others) and not too many weights
/// (`MAX_TILED_WEIGHTS`), with as many images as threads. Measured with `bench ops`: NiN's 5x5 on 7x7 (31% padding) forward
/// 11.3 -> 7.9 ms, forward + backward 35.6 -> 28.7; 3x3s on 2x2 (56%) forward 1.20 -> 0.85;
/// on 32x32 maps (4%) the GEMM path was faster (26 against 32 ms forward). The weight
/// gradient alone, one thread, 16 images: 11.0 against 14.2 ms for the 5x5, 0.65 against 1.17
/// for the 3x3 on 2x2.
fn tiled_plan(s: &Sizes, g: ConvGeometry) -> Option<TiledPlan> {
    // The tiled path splits the batch over the threads; with fewer images than threads (batch-1
    // inference) the GEMM path, which splits each product, keeps them all busy.
    let threads = rayon::current_num_threads().max(1);
    if s.k == 1 || !s.all_taps() || s.o * s.c * s.k * s.k > MAX_TILED_WEIGHTS || s.n < threads {
        return None;
    }
    let shape = tiled::Shape {
        c: s.c,
        h: s.h,
        w: s.w,
        o: s.o,
        k: s.k,
        oh: s.oh,
        ow: s.ow,
        g,
    };
    let classes = shape.classes();
    let reached: usize = classes.iter().map(tiled::Class::multiply_adds).sum();
    if (reached as f64) > (1.0 - MIN_TILED_PADDING) * (s.positions() * s.k * s.k) as f64 {
        return None;
    }
    Some(TiledPlan {
        kernels: microkernel::kernels(),
        shape,
        classes,
        split: BatchSplit::per_thread(s.n),
    })
}

/// A batch of `n` images split into groups of `group` (one per thread) for the Winograd and
/// tiled paths.
#[derive(Debug, Clone, Copy)]
struct BatchSplit {
    group: usize,
    n: usize,
}

impl BatchSplit {
    fn per_thread(n: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        Self {
            group: n.div_ceil(threads),
            n,
        }
    }
    /// The first image and the image count of group `gi`.
    fn images(&self, gi: usize) -> (usize, usize) {
        let first = gi * self.group;
        (first, self.group.min(self.n - first))
    }
    fn groups(&self) -> usize {
        self.n.div_ceil(self.group)
    }
    /// A new output of `per_image` values per image, each group's part written by
    /// `f(first, count, part)` in parallel.
    ///
    /// # Safety
    /// `f` must write every element of the part it is given.
    unsafe fn fill(
        &self,
        per_image: usize,
        f: impl Fn(usize, usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
    ) -> Vec<f32> {
        // SAFETY: the groups' parts cover the output, and the caller's f writes all of each.
        unsafe {
            new_filled(self.n * per_image, |out| {
                out.par_chunks_mut(self.group * per_image)
                    .enumerate()
                    .for_each(|(gi, part)| {
                        let (first, count) = self.images(gi);
                        f(first, count, part)
                    })
            })
        }
    }
    /// `f(first, count)` of every group, in parallel.
    fn map<T: Send>(&self, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
        (0..self.groups())
            .into_par_iter()
            .map(|gi| {
                let (first, count) = self.images(gi);
                f(first, count)
            })
            .collect()
    }
}

/// A convolution on the Winograd path ([`winograd_plan`]).
struct WinogradPlan {
    kernels: microkernel::TileKernels,
    geometry: winograd::Geometry,
    split: BatchSplit,
}

/// The smallest map side the Winograd path takes: on 2x2 and 3x3 maps its tiles are mostly
/// padding (the tiled path skips it).
const MIN_WINOGRAD_MAP: usize = 4;
/// The smallest map side that takes F(4x4, 3x3) (36 products per 16 outputs) rather than F(2x2,
/// 3x3) (16 per 4): on 4x4 maps each image is one tile, and the products' 16-row matrices
/// re-read the transformed kernels for every 16 tiles (`bench ops`, forward + backward, F(4x4)
/// against F(2x2): 8x8 maps 64 -> 64 2.33 against 3.36 ms, 128 -> 256 15.1 against 17.9,
/// 16x16 64 -> 128 14.6 against 18.7; 4x4 maps 512 -> 512 82.7 against 40.5).
const MIN_F43_MAP: usize = 8;
/// The smallest map side that takes F(4x4, 5x5).
const MIN_F45_MAP: usize = 6;
/// The fewest channels in and out it takes: its transforms cost per channel and tile, its
/// products per channel pair, and network inputs (3 channels) stay on the im2col path.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The Winograd path: a 3x3 kernel with stride 1 and padding 1 on maps and channel counts as
/// the constants above say, at least as many images as threads. Measured by alternating builds
/// (`bench ops`, best of four, forward + backward): 8x8 maps 64 -> 64 4.39 -> 2.76 ms, 256 -> 256
/// 49.1 -> 41.4; 4x4 maps 128 -> 128 4.73 -> 2.69, 512 -> 512 58.4 -> 55.6; 16x16 64 -> 128
/// 26.6 -> 24.0.
fn winograd_plan(s: &Sizes, g: ConvGeometry) -> Option<WinogradPlan> {
    let threads = rayon::current_num_threads().max(1);
    if !matches!(s.k, 3 | 5)
        || g.stride != 1
        || g.padding != s.k / 2
        || s.h.min(s.w)
            < if s.k == 3 {
                MIN_WINOGRAD_MAP
            } else {
                MIN_F45_MAP
            }
        || s.c.min(s.o) < WINOGRAD_MIN_CHANNELS
        || s.n < threads
    {
        return None;
    }
    Some(WinogradPlan {
        kernels: microkernel::kernels(),
        geometry: winograd::Geometry {
            c: s.c,
            h: s.h,
            w: s.w,
            o: s.o,
            variant: if s.k == 5 {
                winograd::Variant::F4x5
            } else if s.h.min(s.w) >= MIN_F43_MAP {
                winograd::Variant::F4x3
            } else {
                winograd::Variant::F2x3
            },
        },
        split: BatchSplit::per_thread(s.n),
    })
}

/// Share of a convolution's im2col multiply-adds that must be with padding for the tiled
/// path.
const MIN_TILED_PADDING: f64 = 0.2;
/// The most weights the tiled path takes: they are read again for every chunk of panels,
/// and VGG-11's 512-channel 3x3s (2.4M weights, on 4x4 and 2x2 maps) ran slower tiled (`bench
/// models --only vgg11` inference 431 -> 388 img/s, best of three). AlexNet's 384 -> 384 on 3x3
/// maps (1.3M) is faster tiled: 5.7 ms forward on the im2col path.
const MAX_TILED_WEIGHTS: usize = 3 << 19;

/// A convolution on the tiled path: its micro-kernels, geometry and classes.
struct TiledPlan {
    kernels: microkernel::TileKernels,
    shape: tiled::Shape,
    classes: Vec<tiled::Class>,
    split: BatchSplit,
}

struct Conv2dOp {
    geometry: ConvGeometry,
    relu: bool,
    /// The forward's used-tap weights when it pruned taps, for the input gradient (on a 1x1
    /// map a 512x512 3x3 kernel's centre taps are gathered from all of its 9.4 MB).
    selected: SelectedWeights,
}

type SelectedWeights = std::sync::Mutex<Option<std::sync::Arc<Vec<f32>>>>;

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "zoo-conv2d"
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
        let g = self.geometry;
        let s = Sizes::new(self.name(), l1.dims(), l2.dims(), g)?;
        if bias.len() != s.o {
            candle_core::bail!(
                "{}: expected a bias of {} values, got shape {:?}",
                self.name(),
                s.o,
                l3.dims()
            )
        }
        if let Some(p) = winograd_plan(&s, g) {
            let u = winograd::transform_weights(&p.geometry, w, false);
            let (per_image, relu) = (s.o * s.positions(), self.relu);
            // SAFETY: forward_group writes every element of its images' part of y.
            let y = unsafe {
                p.split.fill(per_image, |first, count, dst| {
                    let k = p.kernels;
                    winograd::forward_group(k, &p.geometry, x, &u, bias, relu, first, count, dst)
                })
            };
            return Ok((CpuStorage::F32(y), Shape::from((s.n, s.o, s.oh, s.ow))));
        }
        if let Some(t) = tiled_plan(&s, g) {
            let wt = tiled::pack_weights_by_tile(w, &t.shape);
            let (per_image, relu) = (s.o * s.positions(), self.relu);
            let (shape, classes) = (&t.shape, &t.classes);
            // SAFETY: forward_group writes every element of its images' part of y.
            let y = unsafe {
                t.split.fill(per_image, |first, count, dst| {
                    tiled::forward_group(
                        t.kernels, shape, classes, x, &wt, bias, relu, first, count, dst,
                    )
                })
            };
            return Ok((CpuStorage::F32(y), Shape::from((s.n, s.o, s.oh, s.ow))));
        }
        let selected =
            (!s.all_taps()).then(|| std::sync::Arc::new(s.selected_weights(w).into_owned()));
        if let (Some(selected), Ok(mut slot)) = (&selected, self.selected.lock()) {
            *slot = Some(selected.clone());
        }
        let w = selected.as_deref().map_or(w, Vec::as_slice);
        let p = plan(&s);
        let ranges = tap_ranges(&s, g);
        let (in_len, pos, rows) = (s.c * s.h * s.w, s.positions(), s.rows());
        let relu = self.relu;
        // SAFETY: for_groups hands out every group's part of y, and the copy-out below writes
        // all of it (each of its `count` images, channels and positions).
        let y = unsafe {
            new_filled(s.n * s.o * pos, |y| {
                for_groups(&p, &s, y, s.o * pos, |(col, out), gi, dst| {
                    let first = gi * p.group;
                    let count = p.group.min(s.n - first);
                    let ld = count * pos;
                    for j in 0..count {
                        im2col(
                            &x[(first + j) * in_len..][..in_len],
                            &s,
                            g,
                            &ranges,
                            col,
                            ld,
                            j * pos,
                        );
                    }
                    // [o, count*pos] = [o, rows] . [rows, count*pos]
                    sgemm(
                        s.o,
                        ld,
                        rows,
                        w,
                        false,
                        col,
                        false,
                        out,
                        false,
                        p.gemm_threads,
                    );
                    for j in 0..count {
                        for (o, &b) in bias.iter().enumerate() {
                            let src = &out[o * ld + j * pos..][..pos];
                            let dst = &mut dst[(j * s.o + o) * pos..][..pos];
                            if relu {
                                for (d, &v) in dst.iter_mut().zip(src) {
                                    d.write(relu_f32(v + b));
                                }
                            } else {
                                for (d, &v) in dst.iter_mut().zip(src) {
                                    d.write(v + b);
                                }
                            }
                        }
                    }
                });
            })
        };
        Ok((CpuStorage::F32(y), Shape::from((s.n, s.o, s.oh, s.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = fused_relu_grad(grad, y, self.relu)?;
        // The network's input (the first convolution's) needs no gradient: skip its col2im.
        let dx = if x.track_op() {
            Some(w.apply_op2_no_bwd(
                &dy,
                &Conv2dInputGradOp {
                    selected: self.selected.lock().ok().and_then(|s| s.clone()),
                    geometry: self.geometry,
                    input: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            &dy,
            &Conv2dWeightGradOp {
                geometry: self.geometry,
                kernel: w.dim(2)?,
                out: w.dim(0)?,
            },
        )?;
        let db = channel_sums(&dy)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// Gathers the output gradients of a group of images into `[o, count*pos]`.
fn gather_dy(dy: &[f32], s: &Sizes, first: usize, count: usize, out: &mut [f32]) {
    let pos = s.positions();
    let ld = count * pos;
    for j in 0..count {
        for o in 0..s.o {
            out[o * ld + j * pos..][..pos]
                .copy_from_slice(&dy[((first + j) * s.o + o) * pos..][..pos]);
        }
    }
}

/// (w, dy) -> dx.
struct Conv2dInputGradOp {
    /// The forward's used-tap weights, when it computed them.
    selected: Option<std::sync::Arc<Vec<f32>>>,
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
        if let Some(p) = winograd_plan(&s, g) {
            // Stride 1: the forward convolution of dy with the flipped, transposed kernels.
            let geometry = p.geometry.transposed();
            let u = winograd::transform_weights(&geometry, w, true);
            let in_len = s.c * s.h * s.w;
            let zeros = vec![0f32; s.c];
            // SAFETY: forward_group writes every element of its images' part of dx.
            let dx = unsafe {
                p.split.fill(in_len, |first, count, dst| {
                    let k = p.kernels;
                    winograd::forward_group(k, &geometry, dy, &u, &zeros, false, first, count, dst)
                })
            };
            return Ok((CpuStorage::F32(dx), Shape::from(self.input.as_slice())));
        }
        if let Some(t) = tiled_plan(&s, g) {
            let wr = tiled::pack_weights_by_row(w, &t.shape);
            let in_len = s.c * s.h * s.w;
            let mut dx = vec![0f32; s.n * in_len];
            dx.par_chunks_mut(t.split.group * in_len)
                .enumerate()
                .for_each(|(gi, dst)| {
                    let (first, count) = t.split.images(gi);
                    let (shape, classes) = (&t.shape, &t.classes);
                    tiled::input_grad_group(t.kernels, shape, classes, dy, &wr, first, count, dst)
                });
            return Ok((CpuStorage::F32(dx), Shape::from(self.input.as_slice())));
        }
        let w = match &self.selected {
            Some(selected) if !s.all_taps() && selected.len() == s.o * s.rows() => {
                Cow::Borrowed(selected.as_slice())
            }
            _ => s.selected_weights(w),
        };
        let w = &*w;
        let p = plan(&s);
        let ranges = tap_ranges(&s, g);
        let (in_len, pos, rows) = (s.c * s.h * s.w, s.positions(), s.rows());
        // Each image's gradient is zeroed by its own task right before col2im adds into it
        // (in cache), not by one zero-filled allocation of the whole batch up front.
        // SAFETY: for_groups hands out every group's part of dx, and each of its `count`
        // images is zeroed whole below.
        let dx = unsafe {
            new_filled(s.n * in_len, |dx| {
                for_groups(&p, &s, dx, in_len, |(col, dy_group), gi, dst| {
                    let first = gi * p.group;
                    let count = p.group.min(s.n - first);
                    let ld = count * pos;
                    gather_dy(dy, &s, first, count, dy_group);
                    // [rows, count*pos] = [o, rows]^T . [o, count*pos]
                    sgemm(
                        rows,
                        ld,
                        s.o,
                        w,
                        true,
                        dy_group,
                        false,
                        col,
                        false,
                        p.gemm_threads,
                    );
                    for j in 0..count {
                        let image = zeroed(&mut dst[j * in_len..][..in_len]);
                        col2im(col, &s, g, &ranges, image, ld, j * pos);
                    }
                });
            })
        };
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
        if let Some(p) = winograd_plan(&s, g) {
            let partials = p.split.map(|first, count| {
                winograd::weight_grad_group(p.kernels, &p.geometry, x, dy, first, count)
            });
            let sum = add_partials(partials);
            let dw = winograd::finish_weight_grad(&p.geometry, &sum);
            return Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))));
        }
        if let Some(t) = tiled_plan(&s, g) {
            let partials = t.split.map(|first, count| {
                tiled::weight_grad_group(t.kernels, &t.shape, &t.classes, x, dy, first, count)
            });
            let sum = add_partials(partials);
            let dw = tiled::unpack_weight_grad(&sum, &t.shape);
            return Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))));
        }
        let p = plan(&s);
        let dw = s.full_weight_grad(weight_grad_reduce(x, dy, &s, g, &p));
        Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))))
    }
}

/// `sum over groups of dy_group . col_group^T`: each thread's first GEMM writes its partial sum
/// (no zero-filled accumulator), later ones add into it, and the partials are added at the end.
fn weight_grad_reduce(x: &[f32], dy: &[f32], s: &Sizes, g: ConvGeometry, p: &Plan) -> Vec<f32> {
    let ranges = tap_ranges(s, g);
    let (in_len, pos, rows) = (s.c * s.h * s.w, s.positions(), s.rows());
    let one_group = |state: &mut (Scratch, Scratch, Option<Vec<f32>>), gi: usize| {
        let (col, dy_group, acc) = state;
        let first = gi * p.group;
        let count = p.group.min(s.n - first);
        let ld = count * pos;
        for j in 0..count {
            im2col(
                &x[(first + j) * in_len..][..in_len],
                s,
                g,
                &ranges,
                col,
                ld,
                j * pos,
            );
        }
        gather_dy(dy, s, first, count, dy_group);
        let (a, b) = (&dy_group[..s.o * ld], &col[..rows * ld]);
        match acc {
            Some(acc) => sgemm(s.o, rows, ld, a, false, b, true, acc, true, p.gemm_threads),
            None => *acc = Some(sgemm_new(s.o, rows, ld, a, false, b, true, p.gemm_threads)),
        }
    };
    let init = || {
        (
            Scratch::take(rows * p.group * pos),
            Scratch::take(s.o * p.group * pos),
            None,
        )
    };
    let partials: Vec<Vec<f32>> = if p.gemm_threads == 1 {
        // One contiguous run of groups per thread, summed in order: the same sums in the same
        // order on every run (rayon's `fold` splits by work stealing, which made two runs of
        // one seed differ in the last bits, and training then drifted apart).
        let threads = rayon::current_num_threads().clamp(1, p.groups.max(1));
        let per_run = p.groups.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .filter_map(|t| {
                let mut state = init();
                for gi in (t * per_run)..((t + 1) * per_run).min(p.groups) {
                    one_group(&mut state, gi);
                }
                state.2
            })
            .collect()
    } else {
        let mut state = init();
        (0..p.groups).for_each(|gi| one_group(&mut state, gi));
        state.2.into_iter().collect()
    };
    let sum = add_partials(partials);
    if sum.is_empty() {
        return vec![0f32; s.o * rows];
    }
    sum
}

/// The element-wise sum of the threads' partial gradients (empty when there are none).
fn add_partials(partials: Vec<Vec<f32>>) -> Vec<f32> {
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_default();
    for partial in partials {
        sum.par_iter_mut()
            .zip(partial.par_iter())
            .for_each(|(a, &b)| *a += b);
    }
    sum
}

/// `conv2d(x, weight) + bias`, then `relu` when asked, of an f32 CPU `(N, C, H, W)` input
/// with `(O, C, k, k)` weights and `(O,)` bias, differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    relu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2dOp {
            geometry,
            relu,
            selected: SelectedWeights::default(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_input, weighted_sum_grads};
    use candle_core::Var;

    #[test]
    fn only_taps_that_see_the_input_are_used() {
        let taps = |x: [usize; 4], k: usize, stride: usize, padding: usize| {
            Sizes::new("t", &x, &[1, x[1], k, k], ConvGeometry { stride, padding })
                .unwrap()
                .taps
        };
        assert_eq!(taps([1, 1, 1, 1], 3, 1, 1), vec![(1, 1)]);
        assert_eq!(
            taps([1, 1, 2, 2], 3, 2, 1),
            vec![(1, 1), (1, 2), (2, 1), (2, 2)]
        );
        assert_eq!(taps([1, 1, 2, 2], 3, 1, 1).len(), 9);
        assert_eq!(taps([1, 1, 8, 8], 3, 1, 1).len(), 9);
        assert_eq!(taps([1, 1, 1, 1], 5, 1, 2), vec![(2, 2)]);
        assert_eq!(taps([1, 1, 1, 3], 3, 1, 1), vec![(1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn small_maps_take_the_tiled_path() {
        let tiled = |x: [usize; 4], o: usize, k: usize, padding: usize| {
            let g = ConvGeometry { stride: 1, padding };
            tiled_plan(&Sizes::new("t", &x, &[o, x[1], k, k], g).unwrap(), g).is_some()
        };
        // NiN's 5x5 on 7x7 (31% of the im2col work on padding) and the test case above.
        assert!(tiled([64, 96, 7, 7], 256, 5, 2));
        assert!(tiled([64, 2, 3, 3], 3, 3, 1));
        // 32x32 maps (4%), a 1x1 kernel, a 1x1 map (taps pruned), too many weights, one image.
        assert!(!tiled([64, 64, 32, 32], 128, 3, 1));
        assert!(!tiled([64, 96, 7, 7], 96, 1, 0));
        assert!(!tiled([64, 512, 1, 1], 512, 3, 1));
        assert!(!tiled([64, 512, 2, 2], 512, 3, 1));
        assert!(!tiled([1, 96, 7, 7], 256, 5, 2));
    }

    #[test]
    fn winograd_takes_same_3x3s_on_maps_of_4_and_5x5s_on_maps_of_6() {
        let winograd = |x: [usize; 4], o: usize, k: usize, stride: usize, padding: usize| {
            let g = ConvGeometry { stride, padding };
            winograd_plan(&Sizes::new("w", &x, &[o, x[1], k, k], g).unwrap(), g).is_some()
        };
        // ResNet's 8x8 and 4x4, VGG-11's 8x8, DenseNet's 3x3 to 32 channels, the conv test's
        // odd 9x11 map.
        assert!(winograd([64, 64, 8, 8], 64, 3, 1, 1));
        assert!(winograd([64, 128, 4, 4], 128, 3, 1, 1));
        assert!(winograd([64, 256, 8, 8], 256, 3, 1, 1));
        assert!(winograd([64, 128, 8, 8], 32, 3, 1, 1));
        assert!(winograd([64, 16, 9, 11], 16, 3, 1, 1));
        // NiN's and AlexNet's 5x5 on 7x7 (padding 2), the conv test's 5x5 case.
        assert!(winograd([64, 96, 7, 7], 256, 5, 1, 2));
        assert!(winograd([64, 16, 7, 7], 16, 5, 1, 2));
        // A network's 3-channel input, 2x2 and 3x3 maps (the tiled path), stride 2, padding 0.
        assert!(!winograd([64, 3, 32, 32], 64, 3, 1, 1));
        assert!(!winograd([64, 256, 2, 2], 256, 3, 1, 1));
        assert!(!winograd([64, 256, 3, 3], 384, 3, 1, 1));
        assert!(!winograd([64, 64, 8, 8], 64, 3, 2, 1));
        assert!(!winograd([64, 64, 8, 8], 64, 3, 1, 0));
        // GoogLeNet's 5x5 on 4x4, a 5x5 with padding 1, 7x7 and 1x1 kernels.
        assert!(!winograd([64, 16, 4, 4], 32, 5, 1, 2));
        assert!(!winograd([64, 64, 8, 8], 64, 5, 1, 1));
        assert!(!winograd([64, 64, 8, 8], 64, 7, 1, 3));
        assert!(!winograd([64, 64, 8, 8], 64, 1, 1, 0));
        // One image: fewer than the threads.
        assert!(!winograd([1, 64, 8, 8], 64, 3, 1, 1));
    }

    #[test]
    fn an_untracked_input_gets_no_gradient_and_the_weight_still_does() {
        let x = test_input(&[2, 3, 6, 6], 1).unwrap();
        let w = Var::from_tensor(&test_input(&[4, 3, 3, 3], 2).unwrap()).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = conv2d(
            &x,
            w.as_tensor(),
            &b,
            ConvGeometry {
                stride: 1,
                padding: 1,
            },
            false,
        )
        .unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let y_ref = x.conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
        let grads_ref = y_ref.sum_all().unwrap().backward().unwrap();
        assert_close(
            "dw",
            grads.get(w.as_tensor()).unwrap(),
            grads_ref.get(w.as_tensor()).unwrap(),
            1e-4,
        );
    }

    #[test]
    fn the_weight_gradient_is_the_same_on_every_run() {
        // Many groups of images reduced across threads (the im2col path: 3 input channels);
        // the sums must not depend on which thread took which group.
        let x = Var::from_tensor(&test_input(&[96, 3, 12, 12], 4).unwrap()).unwrap();
        let w = Var::from_tensor(&test_input(&[8, 3, 3, 3], 5).unwrap()).unwrap();
        let b = Var::from_tensor(&test_input(&[8], 6).unwrap()).unwrap();
        let upstream = test_input(&[96, 8, 12, 12], 7).unwrap();
        let geometry = ConvGeometry {
            stride: 1,
            padding: 1,
        };
        let weight_grad = || {
            let y = conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), geometry, false).unwrap();
            let grads = weighted_sum_grads(&y, &upstream).unwrap();
            grads
                .get(w.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let first = weight_grad();
        assert!(
            weight_grad() == first,
            "two runs gave different weight gradients"
        );
        // Again with one worker of the pool asleep, so that the others take every group.
        let mut alone = Vec::new();
        rayon::scope(|scope| {
            scope.spawn(|_| std::thread::sleep(std::time::Duration::from_millis(300)));
            alone = weight_grad();
        });
        assert!(
            alone == first,
            "the weight gradient depends on which thread took which group"
        );
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
            // Several groups of images per GEMM, with a partial last group.
            ([10, 3, 8, 8], 4, 3, 1, 1),
            ([9, 2, 16, 16], 3, 3, 2, 1),
            ([300, 4, 1, 1], 3, 1, 1, 0),
            // Taps that only ever see padding are skipped: a 1x1 map (centre tap only), a
            // stride-2 3x3 on 2x2 (4 of 9 taps), a 5x5 on 1x1, a 3x3 on 1x3.
            ([3, 8, 1, 1], 5, 3, 1, 1),
            ([3, 4, 2, 2], 6, 3, 2, 1),
            ([2, 3, 1, 1], 4, 5, 1, 2),
            ([2, 3, 1, 3], 4, 3, 1, 1),
            // The tiled path (a fifth or more of the multiply-adds on padding): 2x2 and 3x3
            // maps, NiN's 5x5 on 7x7, stride 2, padding 2 (border outputs read only padding),
            // a partial last panel, more images than threads.
            ([2, 3, 2, 2], 4, 3, 1, 1),
            ([3, 5, 3, 3], 7, 3, 1, 1),
            ([2, 4, 7, 7], 5, 5, 1, 2),
            ([2, 3, 7, 7], 4, 3, 2, 1),
            ([2, 2, 5, 6], 3, 3, 1, 2),
            ([11, 3, 4, 4], 5, 3, 1, 1),
            ([2, 3, 2, 2], 3, 3, 1, 2),
            ([2, 3, 2, 2], 3, 3, 1, 3),
            // More images than any machine has threads: the tiled path (see the test below).
            ([64, 2, 3, 3], 3, 3, 1, 1),
            // The Winograd paths (odd sizes: partial tiles on both edges; several chunks of
            // images per thread): F(4x4, 3x3), F(2x2, 3x3) on 4x4 maps, F(4x4, 5x5).
            ([64, 16, 9, 11], 16, 3, 1, 1),
            ([64, 16, 4, 5], 17, 3, 1, 1),
            ([64, 16, 7, 7], 16, 5, 1, 2),
        ] {
            let c = x_shape[1];
            let x = Var::from_tensor(&test_input(&x_shape, 1).unwrap()).unwrap();
            let w = Var::from_tensor(&test_input(&[o, c, k, k], 2).unwrap()).unwrap();
            let b = Var::from_tensor(&test_input(&[o], 4).unwrap()).unwrap();
            let g = ConvGeometry { stride, padding };
            // Without and with the fused ReLU, against candle's conv2d + bias (+ relu).
            for relu in [false, true] {
                let y = conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), g, relu).unwrap();
                let y_ref = x
                    .as_tensor()
                    .conv2d(w.as_tensor(), padding, stride, 1, 1)
                    .unwrap()
                    .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
                    .unwrap();
                let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
                let what = format!("{x_shape:?} o{o} k{k} s{stride} p{padding} relu {relu}");
                assert_eq!(y.dims(), y_ref.dims(), "{what}");
                assert_close(&format!("{what} forward"), &y, &y_ref, 1e-4);
                let upstream = test_input(y.dims(), 3).unwrap();
                let grads = weighted_sum_grads(&y, &upstream).unwrap();
                let grads_ref = weighted_sum_grads(&y_ref, &upstream).unwrap();
                for (name, var) in [("dx", &x), ("dw", &w), ("db", &b)] {
                    assert_close(
                        &format!("{what} {name}"),
                        grads.get(var.as_tensor()).unwrap(),
                        grads_ref.get(var.as_tensor()).unwrap(),
                        1e-4,
                    );
                }
            }
        }
    }
}
