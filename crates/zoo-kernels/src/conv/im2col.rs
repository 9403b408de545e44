//! The im2col + GEMM path's column matrix: which kernel taps are used, where each reads the
//! input, and the copies between images and columns (`im2col`, its adjoint `col2im`).

use std::borrow::Cow;

use rayon::prelude::*;

use super::geometry::ConvShape;

/// The kernel taps `(ky, kx)` that see at least one input pixel (not only padding) at some
/// output position, row-major. On small feature maps the others multiply zeros only: a 3x3
/// convolution of a 1x1 map with padding 1 needs its centre tap alone.
#[derive(Debug, Clone)]
pub(super) struct Taps(pub Vec<(usize, usize)>);

impl Taps {
    pub(super) fn new(s: &ConvShape) -> Self {
        let g = s.g;
        // Tap offset `t` sees the input at some output position along an axis of length `len`.
        let sees_input = |t: usize, out: usize, len: usize| {
            (0..out).any(|o| {
                let i = (o * g.stride + t) as isize - g.padding as isize;
                i >= 0 && i < len as isize
            })
        };
        Self(
            (0..s.k)
                .filter(|&ky| sees_input(ky, s.oh, s.h))
                .flat_map(|ky| {
                    (0..s.k)
                        .filter(|&kx| sees_input(kx, s.ow, s.w))
                        .map(move |kx| (ky, kx))
                })
                .collect(),
        )
    }
    /// Rows of the column matrix: C * (taps used).
    pub(super) fn rows(&self, s: &ConvShape) -> usize {
        s.c * self.0.len()
    }
    /// Whether every tap is used (the weights are the GEMM's matrix as they are).
    pub(super) fn all(&self, s: &ConvShape) -> bool {
        self.0.len() == s.k * s.k
    }
    /// The `(O, C * taps)` weight matrix of the used taps.
    pub(super) fn selected_weights<'a>(&self, s: &ConvShape, w: &'a [f32]) -> Cow<'a, [f32]> {
        if self.all(s) {
            return Cow::Borrowed(w);
        }
        let (kk, t) = (s.k * s.k, self.0.len());
        // In parallel over output channels: on a 1x1 map a 512x512 3x3 kernel's centre taps
        // are read from all of its 9.4 MB (3% of ResNet-18's training step, serial).
        let mut out = vec![0f32; s.o * self.rows(s)];
        out.par_chunks_mut((s.c * t).max(1))
            .zip(w.par_chunks((s.c * kk).max(1)))
            .for_each(|(dst, src)| {
                for (d, kernel) in dst.chunks_mut(t).zip(src.chunks(kk)) {
                    for (v, &(ky, kx)) in d.iter_mut().zip(&self.0) {
                        *v = kernel[ky * s.k + kx];
                    }
                }
            });
        Cow::Owned(out)
    }
    /// The full `(O, C, k, k)` gradient from the used taps' `(O, C * taps)` one (zeros
    /// elsewhere: those taps only ever multiplied padding).
    pub(super) fn full_weight_grad(&self, s: &ConvShape, selected: Vec<f32>) -> Vec<f32> {
        if self.all(s) {
            return selected;
        }
        let (kk, t) = (s.k * s.k, self.0.len());
        let mut out = vec![0f32; s.o * s.c * kk];
        out.par_chunks_mut((s.c * kk).max(1))
            .zip(selected.par_chunks((s.c * t).max(1)))
            .for_each(|(dst, src)| {
                for (kernel, values) in dst.chunks_mut(kk).zip(src.chunks(t)) {
                    for (&v, &(ky, kx)) in values.iter().zip(&self.0) {
                        kernel[ky * s.k + kx] = v;
                    }
                }
            });
        out
    }
}

/// Per used tap: its valid output rows and columns, and the first input row and column they
/// read.
pub(super) struct TapRange {
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

/// Each used tap's ranges.
pub(super) fn tap_ranges(s: &ConvShape, taps: &Taps) -> Vec<TapRange> {
    let g = s.g;
    taps.0
        .iter()
        .map(|&(ky, kx)| {
            let oy = s.valid_outputs(ky, s.oh, s.h);
            let ox = s.valid_outputs(kx, s.ow, s.w);
            let mut sources = Vec::new();
            if s.positions() <= GATHER_POSITIONS
                || (s.g.stride > 1 && s.positions() <= GATHER_STRIDED_POSITIONS)
            {
                sources = vec![PADDING; s.positions()];
                for out_y in oy.0..oy.1 {
                    for out_x in ox.0..ox.1 {
                        let (iy, ix) = (
                            out_y * s.g.stride + ky - g.padding,
                            out_x * s.g.stride + kx - g.padding,
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
                iy0: (oy.0 * s.g.stride + ky).saturating_sub(g.padding),
                ix0: (ox.0 * s.g.stride + kx).saturating_sub(g.padding),
                shift: (ky as isize - g.padding as isize) * s.w as isize + kx as isize
                    - g.padding as isize,
            }
        })
        .collect()
}

/// The part of the output range `a..b` whose shifted input index `q + shift` lies in
/// `0..plane` (the rest can only be padding columns).
fn shifted_range(a: usize, b: usize, shift: isize, plane: usize) -> (usize, usize) {
    let lo = a.max((-shift).max(0) as usize);
    let hi = b.min((plane as isize - shift).max(0) as usize);
    (lo.min(b), hi.max(lo.min(b)))
}

/// Zeros the columns of the valid rows at which tap `r` reads padding.
fn zero_padding_columns(row: &mut [f32], s: &ConvShape, r: &TapRange) {
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
pub(super) fn im2col(
    x: &[f32],
    s: &ConvShape,
    ranges: &[TapRange],
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    let (plane, taps) = (s.h * s.w, ranges.len());
    for c in 0..s.c {
        let rows = &mut col[c * taps * ld..];
        im2col_channel(&x[c * plane..][..plane], s, ranges, rows, ld, offset);
    }
}

/// [`im2col`] of one input channel's plane `src` into its `taps` rows of `col` (row stride
/// `ld`, from column `offset`): the unit the small-batch forward splits over the threads.
pub(super) fn im2col_channel(
    src: &[f32],
    s: &ConvShape,
    ranges: &[TapRange],
    col: &mut [f32],
    ld: usize,
    offset: usize,
) {
    let plane = s.h * s.w;
    for (t, r) in ranges.iter().enumerate() {
        let row = &mut col[t * ld + offset..][..s.positions()];
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
        if s.same_size() {
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
            let line = &src[(r.iy0 + j * s.g.stride) * s.w..][..s.w];
            if s.g.stride == 1 {
                out[ox_lo..ox_hi].copy_from_slice(&line[r.ix0..r.ix0 + width]);
            } else {
                let taken = line[r.ix0..].iter().step_by(s.g.stride);
                for (o, &v) in out[ox_lo..ox_hi].iter_mut().zip(taken) {
                    *o = v;
                }
            }
        }
    }
}

/// Adds columns (row stride `ld`, from column `offset`) back into image `x` (adjoint of
/// im2col).
pub(super) fn col2im(
    col: &mut [f32],
    s: &ConvShape,
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
            if s.same_size() {
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
                let line = &mut dst[(r.iy0 + j * s.g.stride) * s.w..][..s.w];
                if s.g.stride == 1 {
                    for (d, &v) in line[r.ix0..r.ix0 + src.len()].iter_mut().zip(src) {
                        *d += v;
                    }
                } else {
                    let targets = line[r.ix0..].iter_mut().step_by(s.g.stride);
                    for (d, &v) in targets.zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Gathers the output gradients of a group of images into `[o, count*pos]`.
pub(super) fn gather_dy(dy: &[f32], s: &ConvShape, first: usize, count: usize, out: &mut [f32]) {
    let pos = s.positions();
    let ld = count * pos;
    for j in 0..count {
        for o in 0..s.o {
            out[o * ld + j * pos..][..pos]
                .copy_from_slice(&dy[((first + j) * s.o + o) * pos..][..pos]);
        }
    }
}
