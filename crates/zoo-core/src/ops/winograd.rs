//! 3x3 stride-1 convolutions with padding 1 by Winograd's F(2x2, 3x3): forward and both gradients.
//!
//! Each 2x2 block of outputs (a tile) is computed from the 4x4 input patch around it: the patch
//! and the kernel are transformed into 4x4 (`B^T d B`, `G g G^T`), multiplied element by element
//! and summed over the input channels, and the 4x4 result transformed back (`A^T m A`). Summing
//! over channels is, for each of the 16 elements, one matrix product `[o, c] . [c, tiles]`: 16
//! products of 16 multiply-adds per tile and channel pair instead of 36 for the four outputs
//! (2.25x fewer), on maps where tiles are not mostly padding.
//!
//! - Input gradient: with stride 1, the forward convolution of the output gradient with the
//!   kernels flipped and transposed (`c` outputs from `o` inputs), padding `3 - 1 - 1 = 1`.
//! - Weight gradient (the same algebra transposed): `dW = G^T [sum over tiles (A dy A^T) o
//!   (B^T d B)] G`, per element the product `[o, tiles] . [tiles, c]`.

use rayon::prelude::*;

use super::conv::Scratch;
use super::gemm::sgemm;

/// `n` images of `c x h x w` (and their `o x h x w` outputs) through a 3x3 kernel with stride 1
/// and padding 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
}

/// Elements of a transformed tile.
const XI: usize = 16;

/// Tiles per chunk of images: the transformed inputs and products of a chunk stay in the L2
/// cache, and the matrix products still have enough columns.
const CHUNK_TILES: usize = 256;

impl Geometry {
    fn tiles_y(&self) -> usize {
        self.h.div_ceil(2)
    }
    fn tiles_x(&self) -> usize {
        self.w.div_ceil(2)
    }
    /// Tiles per image.
    fn tiles(&self) -> usize {
        self.tiles_y() * self.tiles_x()
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
    /// Images per chunk.
    fn chunk(&self) -> usize {
        CHUNK_TILES.div_ceil(self.tiles()).max(1)
    }
    /// The input gradient's geometry: the output gradient's `o` channels in, `c` out.
    pub(crate) fn transposed(&self) -> Self {
        Self {
            c: self.o,
            h: self.h,
            w: self.w,
            o: self.c,
        }
    }
}

/// `dst[i] = f(i)` for every element (a loop the compiler vectorises).
#[inline(always)]
fn fill_with(dst: &mut [f32], f: impl Fn(usize) -> f32) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = f(i);
    }
}

/// `B^T d` along one axis.
#[inline(always)]
fn input_1d(d: [f32; 4]) -> [f32; 4] {
    [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
}

/// `G g` along one axis.
#[inline(always)]
fn kernel_1d(g: [f32; 3]) -> [f32; 4] {
    [
        g[0],
        0.5 * (g[0] + g[1] + g[2]),
        0.5 * (g[0] - g[1] + g[2]),
        g[2],
    ]
}

/// `G^T p` along one axis (the kernel transform transposed, for the weight gradient).
#[inline(always)]
fn kernel_grad_1d(p: [f32; 4]) -> [f32; 3] {
    [
        p[0] + 0.5 * (p[1] + p[2]),
        0.5 * (p[1] - p[2]),
        0.5 * (p[1] + p[2]) + p[3],
    ]
}

/// The transformed kernels `G g G^T` as 16 `[o, c]` matrices, from `(o, c, 3, 3)` weights; with
/// `flipped`, of the flipped, transposed kernels for the input gradient (`[c, o]` matrices of
/// `g'[ky][kx] = w[o][c][2 - ky][2 - kx]`).
pub(crate) fn transform_weights(w: &[f32], o: usize, c: usize, flipped: bool) -> Vec<f32> {
    let (rows, cols) = if flipped { (c, o) } else { (o, c) };
    // Per output channel, its 16 x c transformed kernels; laid out as 16 [rows, cols] matrices
    // below (in parallel per element).
    let mut by_channel = vec![0f32; o * XI * c];
    by_channel
        .par_chunks_mut(XI * c)
        .enumerate()
        .for_each(|(oi, dst)| {
            for ci in 0..c {
                let src = &w[(oi * c + ci) * 9..][..9];
                let g = |ky: usize, kx: usize| {
                    if flipped {
                        src[(2 - ky) * 3 + (2 - kx)]
                    } else {
                        src[ky * 3 + kx]
                    }
                };
                // Columns first (G g: 4 x 3), then rows ((G g) G^T: 4 x 4).
                let mut t = [[0f32; 3]; 4];
                for kx in 0..3 {
                    let col = kernel_1d([g(0, kx), g(1, kx), g(2, kx)]);
                    for (t_row, &v) in t.iter_mut().zip(&col) {
                        t_row[kx] = v;
                    }
                }
                for (r, t_row) in t.iter().enumerate() {
                    for (q, &v) in kernel_1d(*t_row).iter().enumerate() {
                        dst[(r * 4 + q) * c + ci] = v;
                    }
                }
            }
        });
    let mut u = vec![0f32; XI * o * c];
    u.par_chunks_mut(rows * cols)
        .enumerate()
        .for_each(|(xi, plane)| {
            for oi in 0..o {
                let src = &by_channel[(oi * XI + xi) * c..][..c];
                if flipped {
                    for (ci, &v) in src.iter().enumerate() {
                        plane[ci * o + oi] = v;
                    }
                } else {
                    plane[oi * c..][..c].copy_from_slice(src);
                }
            }
        });
    u
}

/// `B^T d B` of every tile of images `first..first + count` of `x` (`(n, c, h, w)`) into `v`,
/// as 16 `[c, count * tiles]` matrices. Row band by row band: the 4 input rows of a row of
/// tiles (zero-padded) are combined column-wise first, then each tile's 4 columns.
fn transform_input(x: &[f32], s: &Geometry, first: usize, count: usize, v: &mut [f32]) {
    let (tn, txn, plane) = (count * s.tiles(), s.tiles_x(), s.plane());
    // Padding 1 on the left, 1 or 2 on the right (odd widths).
    let wide = 2 * txn + 2;
    let mut rows = vec![0f32; 4 * wide];
    let mut band = vec![0f32; 4 * wide];
    for j in 0..count {
        for ci in 0..s.c {
            let src = &x[((first + j) * s.c + ci) * plane..][..plane];
            for ty in 0..s.tiles_y() {
                for (r, row) in rows.chunks_exact_mut(wide).enumerate() {
                    let iy = (2 * ty + r) as isize - 1;
                    if iy >= 0 && (iy as usize) < s.h {
                        row[1..1 + s.w].copy_from_slice(&src[iy as usize * s.w..][..s.w]);
                    } else {
                        row.fill(0.0);
                    }
                }
                let (r0, rest) = rows.split_at(wide);
                let (r1, rest) = rest.split_at(wide);
                let (r2, r3) = rest.split_at(wide);
                let (b0, rest) = band.split_at_mut(wide);
                let (b1, rest) = rest.split_at_mut(wide);
                let (b2, b3) = rest.split_at_mut(wide);
                for i in 0..wide {
                    let d = input_1d([r0[i], r1[i], r2[i], r3[i]]);
                    (b0[i], b1[i], b2[i], b3[i]) = (d[0], d[1], d[2], d[3]);
                }
                let tile0 = j * s.tiles() + ty * txn;
                for (r, b) in band.chunks_exact(wide).enumerate() {
                    // Element (r, q) of tile tx from columns 2 tx..2 tx + 4 of band row r.
                    let (even, odd) = (&b[0..], &b[1..]);
                    let at = |q: usize| ((r * 4 + q) * s.c + ci) * tn + tile0;
                    fill_with(&mut v[at(0)..][..txn], |tx| even[2 * tx] - even[2 * tx + 2]);
                    fill_with(&mut v[at(1)..][..txn], |tx| odd[2 * tx] + even[2 * tx + 2]);
                    fill_with(&mut v[at(2)..][..txn], |tx| even[2 * tx + 2] - odd[2 * tx]);
                    fill_with(&mut v[at(3)..][..txn], |tx| odd[2 * tx] - odd[2 * tx + 2]);
                }
            }
        }
    }
}

/// The forward of images `first..first + count`: `y` (their `(count, o, h, w)` part) = the
/// convolution + `bias`, ReLU'd when asked, with `u` from [`transform_weights`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_group(
    s: &Geometry,
    x: &[f32],
    u: &[f32],
    bias: &[f32],
    relu: bool,
    first: usize,
    count: usize,
    y: &mut [std::mem::MaybeUninit<f32>],
) {
    let (txn, plane) = (s.tiles_x(), s.plane());
    let per_chunk = s.chunk().min(count);
    let mut v = Scratch::take(XI * s.c * per_chunk * s.tiles());
    let mut m = Scratch::take(XI * s.o * per_chunk * s.tiles());
    // A row of tiles after A^T down the columns: per output row (2) and column (4), per tile;
    // then one output row.
    let mut cols = vec![0f32; 2 * 4 * txn];
    let mut line = vec![0f32; 2 * txn];
    for c0 in (0..count).step_by(per_chunk) {
        let cc = per_chunk.min(count - c0);
        let tn = cc * s.tiles();
        transform_input(x, s, first + c0, cc, &mut v);
        for xi in 0..XI {
            sgemm(
                s.o,
                tn,
                s.c,
                &u[xi * s.o * s.c..][..s.o * s.c],
                false,
                &v[xi * s.c * tn..][..s.c * tn],
                false,
                &mut m[xi * s.o * tn..][..s.o * tn],
                false,
                1,
            );
        }
        for j in 0..cc {
            for (oi, &b) in bias.iter().enumerate() {
                let dst = &mut y[((c0 + j) * s.o + oi) * plane..][..plane];
                for ty in 0..s.tiles_y() {
                    let tile0 = j * s.tiles() + ty * txn;
                    let e = |xi: usize| &m[(xi * s.o + oi) * tn + tile0..][..txn];
                    for q in 0..4 {
                        let (m0, m1, m2, m3) = (e(q), e(4 + q), e(8 + q), e(12 + q));
                        // A^T down the columns.
                        let (top, bottom) = cols.split_at_mut(4 * txn);
                        fill_with(&mut top[q * txn..][..txn], |tx| m0[tx] + m1[tx] + m2[tx]);
                        fill_with(&mut bottom[q * txn..][..txn], |tx| m1[tx] - m2[tx] - m3[tx]);
                    }
                    for (a, t) in cols.chunks_exact(4 * txn).enumerate() {
                        let oy = 2 * ty + a;
                        if oy >= s.h {
                            continue;
                        }
                        // Then along the row: outputs 2 tx and 2 tx + 1.
                        let (t0, t1, t2, t3) = (
                            &t[..txn],
                            &t[txn..][..txn],
                            &t[2 * txn..][..txn],
                            &t[3 * txn..][..txn],
                        );
                        for (tx, pair) in line.chunks_exact_mut(2).enumerate() {
                            pair[0] = t0[tx] + t1[tx] + t2[tx] + b;
                            pair[1] = t1[tx] - t2[tx] - t3[tx] + b;
                        }
                        let out = &mut dst[oy * s.w..][..s.w];
                        if relu {
                            for (d, &val) in out.iter_mut().zip(&line) {
                                d.write(val.max(0.0));
                            }
                        } else {
                            for (d, &val) in out.iter_mut().zip(&line) {
                                d.write(val);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The weight gradient's share of images `first..first + count`, as 16 `[o, c]` matrices
/// (still to go through [`finish_weight_grad`]), from the input `x` and output gradient `dy`.
pub(crate) fn weight_grad_group(
    s: &Geometry,
    x: &[f32],
    dy: &[f32],
    first: usize,
    count: usize,
) -> Vec<f32> {
    let (txn, plane) = (s.tiles_x(), s.plane());
    let per_chunk = s.chunk().min(count);
    let mut v = Scratch::take(XI * s.c * per_chunk * s.tiles());
    let mut d = Scratch::take(XI * s.o * per_chunk * s.tiles());
    let mut p = vec![0f32; XI * s.o * s.c];
    // Two output-gradient rows, zero-padded to 2 * txn.
    let mut rows = vec![0f32; 2 * 2 * txn];
    let mut vertical = vec![0f32; 2 * txn];
    for (nth, c0) in (0..count).step_by(per_chunk).enumerate() {
        let cc = per_chunk.min(count - c0);
        let tn = cc * s.tiles();
        transform_input(x, s, first + c0, cc, &mut v);
        // A dy A^T of every output-gradient tile (zeros past odd edges).
        for j in 0..cc {
            for oi in 0..s.o {
                let src = &dy[((first + c0 + j) * s.o + oi) * plane..][..plane];
                for ty in 0..s.tiles_y() {
                    for (a, row) in rows.chunks_exact_mut(2 * txn).enumerate() {
                        let oy = 2 * ty + a;
                        if oy < s.h {
                            row[..s.w].copy_from_slice(&src[oy * s.w..][..s.w]);
                        } else {
                            row.fill(0.0);
                        }
                    }
                    let (top, bottom) = rows.split_at(2 * txn);
                    let tile0 = j * s.tiles() + ty * txn;
                    for r in 0..4 {
                        // A down the columns (row r of it), then along the rows.
                        fill_with(&mut vertical, |col| {
                            let (t, b) = (top[col], bottom[col]);
                            [t, t + b, t - b, -b][r]
                        });
                        let at = |q: usize| ((r * 4 + q) * s.o + oi) * tn + tile0;
                        let (l, rt) = (&vertical[0..], &vertical[1..]);
                        fill_with(&mut d[at(0)..][..txn], |tx| l[2 * tx]);
                        fill_with(&mut d[at(1)..][..txn], |tx| l[2 * tx] + rt[2 * tx]);
                        fill_with(&mut d[at(2)..][..txn], |tx| l[2 * tx] - rt[2 * tx]);
                        fill_with(&mut d[at(3)..][..txn], |tx| -rt[2 * tx]);
                    }
                }
            }
        }
        for xi in 0..XI {
            sgemm(
                s.o,
                s.c,
                tn,
                &d[xi * s.o * tn..][..s.o * tn],
                false,
                &v[xi * s.c * tn..][..s.c * tn],
                true,
                &mut p[xi * s.o * s.c..][..s.o * s.c],
                nth > 0,
                1,
            );
        }
    }
    p
}

/// The `(o, c, 3, 3)` weight gradient `G^T P G` from the 16 summed `[o, c]` matrices `p`.
pub(crate) fn finish_weight_grad(p: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_mut(9).enumerate().for_each(|(oc, dst)| {
        let e = |xi: usize| p[xi * o * c + oc];
        let mut t = [[0f32; 4]; 3];
        for q in 0..4 {
            let col = kernel_grad_1d([e(q), e(4 + q), e(8 + q), e(12 + q)]);
            for (t_row, &val) in t.iter_mut().zip(&col) {
                t_row[q] = val;
            }
        }
        for (ky, t_row) in t.iter().enumerate() {
            for (kx, &val) in kernel_grad_1d(*t_row).iter().enumerate() {
                dst[ky * 3 + kx] = val;
            }
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs() / scale;
            assert!(
                err <= 1e-5,
                "{what}[{i}]: {g} against {w} (relative error {err:e})"
            );
        }
    }

    #[test]
    #[allow(clippy::needless_range_loop)] // the direct sums read best as index loops
    fn forward_and_gradients_match_the_direct_convolution() {
        // Odd sizes (partial tiles on the right and bottom), and enough images for three chunks
        // of 9 (30 tiles each, CHUNK_TILES 256), the last one partial.
        let (n, c, h, w, o) = (20, 5, 9, 11, 7);
        let s = Geometry { c, h, w, o };
        assert_eq!(s.chunk(), 9);
        let x = values(n * c * h * w, 1);
        let wt = values(o * c * 9, 2);
        let bias = values(o, 3);
        let dy = values(n * o * h * w, 4);
        // Direct sums in f64: y[j][oi][p] and the gradients of sum(y * dy).
        let input = |j: usize, ci: usize, iy: isize, ix: isize| {
            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                0.0
            } else {
                x[((j * c + ci) * h + iy as usize) * w + ix as usize] as f64
            }
        };
        let mut y = vec![0f64; n * o * h * w];
        let mut dx = vec![0f64; n * c * h * w];
        let mut dw = vec![0f64; o * c * 9];
        for j in 0..n {
            for oi in 0..o {
                for oy in 0..h {
                    for ox in 0..w {
                        let at = ((j * o + oi) * h + oy) * w + ox;
                        let mut sum = bias[oi] as f64;
                        for ci in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (
                                        oy as isize + ky as isize - 1,
                                        ox as isize + kx as isize - 1,
                                    );
                                    let k = (oi * c + ci) * 9 + ky * 3 + kx;
                                    sum += wt[k] as f64 * input(j, ci, iy, ix);
                                    dw[k] += dy[at] as f64 * input(j, ci, iy, ix);
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        dx[((j * c + ci) * h + iy as usize) * w + ix as usize] +=
                                            dy[at] as f64 * wt[k] as f64;
                                    }
                                }
                            }
                        }
                        y[at] = sum.max(0.0);
                    }
                }
            }
        }
        // Two groups of images, as two threads would run them.
        let groups = [(0, 13), (13, 7)];
        let u = transform_weights(&wt, o, c, false);
        let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); n * o * h * w];
        for (first, count) in groups {
            let per_image = o * h * w;
            let part = &mut got[first * per_image..][..count * per_image];
            forward_group(&s, &x, &u, &bias, true, first, count, part);
        }
        // SAFETY: forward_group wrote every element (the groups cover all images).
        let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_close("forward", &got, &y);

        let t = s.transposed();
        let u = transform_weights(&wt, o, c, true);
        let zeros = vec![0f32; c];
        let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); n * c * h * w];
        for (first, count) in groups {
            let per_image = c * h * w;
            let part = &mut got[first * per_image..][..count * per_image];
            forward_group(&t, &dy, &u, &zeros, false, first, count, part);
        }
        // SAFETY: forward_group wrote every element (the groups cover all images).
        let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_close("input gradient", &got, &dx);

        let mut sum = vec![0f32; XI * o * c];
        for (first, count) in groups {
            for (a, b) in sum
                .iter_mut()
                .zip(weight_grad_group(&s, &x, &dy, first, count))
            {
                *a += b;
            }
        }
        assert_close("weight gradient", &finish_weight_grad(&sum, o, c), &dw);
    }
}
