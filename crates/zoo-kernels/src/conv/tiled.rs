//! Convolution forward and gradients as register-tile products that skip multiply-adds on padding.
//!
//! The im2col + GEMM path multiplies every kernel tap at every output position, padding
//! included (a 5x5 kernel with padding 2 on a 7x7 map: 31% of the multiply-adds are with
//! zeros), and the gemm crate packs both operands again on every call. Here the output positions
//! of a group of images are sorted into classes, the rectangles of positions that reach the
//! input through the same kernel rows and columns; positions are packed 16 (the tile height) at
//! a time with only their class's taps, the weights are packed once per op, and the tile
//! kernels ([`crate::microkernel`]) multiply a panel by the weights one kernel row at a time,
//! accumulating in the output tile. The input gradient runs the same panels backwards: `W^T .
//! dy` per panel and kernel row, added back into the input through the panel's offsets. The
//! weight gradient sums, per tap, the products of the output gradient and the columns of the
//! positions that reach the input through that tap.

use rayon::prelude::*;

use super::geometry::{ConvGeometry, ConvShape};
use crate::activation::relu_f32;
use crate::microkernel::{MR, NR, TileKernels};
use crate::{new_filled, zeroed};

/// A rectangle of output positions that reach the input through kernel rows `ky` and columns
/// `kx` (half-open ranges), and only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Class {
    pub oy: (usize, usize),
    pub ox: (usize, usize),
    pub ky: (usize, usize),
    pub kx: (usize, usize),
}

impl Class {
    /// Multiply-adds per input and output channel: positions times the taps they reach.
    pub(crate) fn multiply_adds(&self) -> usize {
        (self.oy.1 - self.oy.0)
            * (self.ox.1 - self.ox.0)
            * (self.ky.1 - self.ky.0)
            * (self.kx.1 - self.kx.0)
    }
}

/// Runs of outputs along one axis that reach the input through the same kernel offsets: for
/// output `i`, offsets `padding - i * stride <= t < len + padding - i * stride`, within `k`.
fn runs(
    out: usize,
    len: usize,
    k: usize,
    g: ConvGeometry,
) -> Vec<((usize, usize), (usize, usize))> {
    let mut runs: Vec<((usize, usize), (usize, usize))> = Vec::new();
    for i in 0..out {
        let top = i * g.stride;
        let lo = g.padding.saturating_sub(top).min(k);
        let hi = (len + g.padding).saturating_sub(top).min(k).max(lo);
        match runs.last_mut() {
            Some((outs, taps)) if *taps == (lo, hi) => outs.1 = i + 1,
            _ => runs.push(((i, i + 1), (lo, hi))),
        }
    }
    runs
}

/// The classes of `s`, row runs times column runs (classes that reach no input are left out:
/// their outputs are the bias alone).
pub(crate) fn classes(s: &ConvShape) -> Vec<Class> {
    let rows = runs(s.oh, s.h, s.k, s.g);
    let cols = runs(s.ow, s.w, s.k, s.g);
    let mut out = Vec::new();
    for &(oy, ky) in &rows {
        for &(ox, kx) in &cols {
            if ky.0 < ky.1 && kx.0 < kx.1 {
                out.push(Class { oy, ox, ky, kx });
            }
        }
    }
    out
}

/// The weights `(o, c, ky, kx)` as the input gradient reads them: `(ky, kx, c, o)` (output
/// channels contiguous), plus `NR` rows of slack for the micro-kernel's whole-tile reads.
/// Filled 16 output channels at a time, so that both the reads (16 kernels) and the writes (16
/// contiguous values) stay in cache.
pub(crate) fn pack_weights_by_row(w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (o, c, kk) = (s.o, s.c, s.k * s.k);
    // SAFETY: the tasks write every row of the weights, and the slack is zeroed: all of it.
    // (A zero-filled allocation was a serial memset of it all, 1.5% of a ResNet-34 step with
    // pack_weights_by_tile's.)
    unsafe {
        new_filled((kk * c + NR) * o, |out| {
            let (rows_part, slack) = out.split_at_mut(kk * c * o);
            zeroed(slack);
            // In parallel over blocks of rows (the packs ran serially between parallel
            // sections: ~3% of a ResNet-34 step each).
            rows_part
                .par_chunks_mut(ROWS_PER_TASK * o)
                .enumerate()
                .for_each(|(block, rows)| {
                    let first = block * ROWS_PER_TASK;
                    for o0 in (0..o).step_by(16) {
                        let o1 = (o0 + 16).min(o);
                        for (i, row) in rows.chunks_mut(o).enumerate() {
                            let (t, ci) = ((first + i) / c, (first + i) % c);
                            for (oi, d) in (o0..o1).zip(&mut row[o0..o1]) {
                                d.write(w[(oi * c + ci) * kk + t]);
                            }
                        }
                    }
                });
        })
    }
}

/// Rows of packed or unpacked weights per parallel task.
const ROWS_PER_TASK: usize = 64;

/// The weights as the forward reads them: per tile of `NR` output channels, `(ky, kx, c)` rows
/// of `NR` values (zeros past the last channel).
pub(crate) fn pack_weights_by_tile(w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (o, c, kk) = (s.o, s.c, s.k * s.k);
    let rows = kk * c;
    // SAFETY: each task zeroes its tile (in cache, right before filling it), so all of it is
    // written.
    unsafe {
        new_filled(o.div_ceil(NR) * rows * NR, |out| {
            out.par_chunks_mut(rows * NR)
                .enumerate()
                .for_each(|(ti, tile)| {
                    let tile = zeroed(tile);
                    for (j, oi) in (ti * NR..(ti * NR + NR).min(o)).enumerate() {
                        for ci in 0..c {
                            let src = &w[(oi * c + ci) * kk..][..kk];
                            for (t, &v) in src.iter().enumerate() {
                                tile[(t * c + ci) * NR + j] = v;
                            }
                        }
                    }
                });
        })
    }
}

/// One panel: up to `MR` positions of one class, as `(image within the group, oy, ox)`, with the
/// input offset each reads at tap (0, 0) of channel 0 (may be negative: padding).
struct Panel {
    class: usize,
    len: usize,
    origin: [isize; MR],
    image: [usize; MR],
    out_pos: [usize; MR],
}

/// The panels of `count` images: class by class, image by image, row-major in a class.
fn panels(s: &ConvShape, classes: &[Class], first: usize, count: usize) -> Vec<Panel> {
    let mut out = Vec::new();
    for (ci, cl) in classes.iter().enumerate() {
        let mut cur: Option<Panel> = None;
        for j in first..first + count {
            for oy in cl.oy.0..cl.oy.1 {
                for ox in cl.ox.0..cl.ox.1 {
                    let p = cur.get_or_insert(Panel {
                        class: ci,
                        len: 0,
                        origin: [0; MR],
                        image: [0; MR],
                        out_pos: [0; MR],
                    });
                    let iy = (oy * s.g.stride) as isize - s.g.padding as isize;
                    let ix = (ox * s.g.stride) as isize - s.g.padding as isize;
                    p.origin[p.len] = (j * s.in_len()) as isize + iy * s.w as isize + ix;
                    p.image[p.len] = j;
                    p.out_pos[p.len] = oy * s.ow + ox;
                    p.len += 1;
                    if p.len == MR {
                        out.extend(cur.take());
                    }
                }
            }
        }
        out.extend(cur.take());
    }
    out
}

/// Packs a panel's columns: `dst[r * MR + i]` for row `r = (ky, kx, c)` of its class, zero in
/// the lanes past its length.
fn pack_panel(x: &[f32], s: &ConvShape, cl: &Class, p: &Panel, dst: &mut [f32]) {
    let plane = s.h * s.w;
    let mut r = 0;
    for ky in cl.ky.0..cl.ky.1 {
        for kx in cl.kx.0..cl.kx.1 {
            let tap = (ky * s.w + kx) as isize;
            for c in 0..s.c {
                let base = tap + (c * plane) as isize;
                let lanes = &mut dst[r * MR..][..MR];
                for (i, v) in lanes.iter_mut().enumerate().take(p.len) {
                    // In the input by the class: every position of it reads the input here.
                    *v = x[(p.origin[i] + base) as usize];
                }
                lanes[p.len..].fill(0.0);
                r += 1;
            }
        }
    }
}

/// The `(o, c, ky, kx)` weight gradient from [`weight_grad_group`]'s `(ky, kx, c)` rows of
/// output channels padded to a multiple of `MR`.
pub(crate) fn unpack_weight_grad(rows: &[f32], s: &ConvShape) -> Vec<f32> {
    let (kk, o16) = (s.k * s.k, s.o.div_ceil(MR) * MR);
    let mut dw = vec![0f32; s.o * s.c * kk];
    // In parallel over blocks of 16 output channels, each reading 16 consecutive values of
    // every row.
    dw.par_chunks_mut(16 * s.c * kk)
        .enumerate()
        .for_each(|(block, kernels)| {
            let o0 = block * 16;
            for (row, src) in rows.chunks(o16).enumerate() {
                let (tap, c) = (row / s.c, row % s.c);
                for (i, kernel) in kernels.chunks_mut(s.c * kk).enumerate() {
                    kernel[c * kk + tap] = src[o0 + i];
                }
            }
        });
    dw
}

/// Packed columns kept per chunk of panels (a chunk's panels are multiplied by each weight
/// tile in turn while they stay in the L2 cache).
const CHUNK_BYTES: usize = 1 << 20;

/// The forward `y = conv(x, w) + bias` (ReLU'd when asked) of images `first..first + count`
/// into `y` (those images' part of the output), with weights packed by tile (`wt`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_group(
    kernels: TileKernels,
    s: &ConvShape,
    classes: &[Class],
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    relu: bool,
    first: usize,
    count: usize,
    y: &mut [std::mem::MaybeUninit<f32>],
) {
    let pos = s.positions();
    // Positions no class covers read only padding: their output is the bias.
    if classes
        .iter()
        .map(|cl| (cl.oy.1 - cl.oy.0) * (cl.ox.1 - cl.ox.0))
        .sum::<usize>()
        < pos
    {
        for j in 0..count {
            for (o, &b) in bias.iter().enumerate() {
                let v = if relu { relu_f32(b) } else { b };
                for d in &mut y[(j * s.o + o) * pos..][..pos] {
                    d.write(v);
                }
            }
        }
    }
    let panels = panels(s, classes, first, count);
    let rows = s.k * s.k * s.c;
    // A panel's slot holds its class's rows; the chunk is as many panels as the budget holds
    // at the largest class.
    let class_rows = |cl: &Class| (cl.ky.1 - cl.ky.0) * (cl.kx.1 - cl.kx.0) * s.c;
    let slot = classes.iter().map(class_rows).max().unwrap_or(0).max(1) * MR;
    let chunk = (CHUNK_BYTES / (slot * 4)).clamp(1, 64);
    let mut packed = vec![0f32; chunk.min(panels.len()) * slot];
    let mut tiles = vec![0f32; chunk.min(panels.len()) * s.o.div_ceil(NR) * NR * MR];
    let tile_len = s.o.div_ceil(NR) * NR * MR;
    for ch in panels.chunks(chunk) {
        for (pi, p) in ch.iter().enumerate() {
            pack_panel(x, s, &classes[p.class], p, &mut packed[pi * slot..][..slot]);
        }
        for (ti, w_tile) in wt.chunks(rows * NR).enumerate() {
            let n = NR.min(s.o - ti * NR);
            for (pi, p) in ch.iter().enumerate() {
                let cl = &classes[p.class];
                let seg = (cl.kx.1 - cl.kx.0) * s.c;
                for (t, ky) in (cl.ky.0..cl.ky.1).enumerate() {
                    let k_first = (ky * s.k + cl.kx.0) * s.c;
                    // SAFETY: the panel's slot holds its class's rows (seg per kernel row) of
                    // MR values; the weight tile holds rows * NR values and reads rows
                    // k_first..k_first + seg; the tile buffer holds tile_len per panel.
                    unsafe {
                        kernels.tile(
                            p.len,
                            n,
                            seg,
                            tiles.as_mut_ptr().add(pi * tile_len + ti * NR * MR),
                            MR,
                            packed.as_ptr().add(pi * slot + t * seg * MR),
                            w_tile.as_ptr().add(k_first * NR),
                            NR,
                            1,
                            t > 0,
                        )
                    }
                }
            }
        }
        for (pi, p) in ch.iter().enumerate() {
            let tile = &tiles[pi * tile_len..][..tile_len];
            for (o, &b) in bias.iter().enumerate() {
                let lanes = &tile[o * MR..][..p.len];
                let at = |i: usize| ((p.image[i] - first) * s.o + o) * pos + p.out_pos[i];
                for (i, &v) in lanes.iter().enumerate() {
                    let v = v + b;
                    y[at(i)].write(if relu { relu_f32(v) } else { v });
                }
            }
        }
    }
}

/// The input gradient of images `first..first + count` added into `dx` (those images' part,
/// zeros on entry), from the output gradient `dy` (the whole batch's) and weights packed by row (`wr`):
/// per kernel row (its weights stay in the L2 cache), every panel whose class reaches it gets
/// `W^T . dy` for that row's taps, added back into the input through the panel's offsets.
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grad_group(
    kernels: TileKernels,
    s: &ConvShape,
    classes: &[Class],
    dy: &[f32],
    wr: &[f32],
    first: usize,
    count: usize,
    dx: &mut [f32],
) {
    let (pos, plane, in_len) = (s.positions(), s.h * s.w, s.in_len());
    let panels = panels(s, classes, first, count);
    let panel_len = s.o * MR;
    let mut dy_panels = vec![0f32; panels.len() * panel_len];
    for (p, dst) in panels.iter().zip(dy_panels.chunks_mut(panel_len)) {
        for o in 0..s.o {
            let lanes = &mut dst[o * MR..][..MR];
            for (i, v) in lanes.iter_mut().enumerate().take(p.len) {
                *v = dy[(p.image[i] * s.o + o) * pos + p.out_pos[i]];
            }
        }
    }
    let mut cols = vec![0f32; s.k * s.c * MR];
    for ky in 0..s.k {
        for (p, dy_panel) in panels.iter().zip(dy_panels.chunks(panel_len)) {
            let cl = &classes[p.class];
            if !(cl.ky.0..cl.ky.1).contains(&ky) {
                continue;
            }
            let seg = (cl.kx.1 - cl.kx.0) * s.c;
            let k_first = (ky * s.k + cl.kx.0) * s.c;
            for r0 in (0..seg).step_by(NR) {
                let n = NR.min(seg - r0);
                // cols[r][i] = sum_o dy[o][i] * w[o][k_first + r]. SAFETY: the dy panel holds
                // o * MR values; wr has NR slack rows for the whole-tile reads of rows
                // k_first + r0..+NR over all o; cols holds seg * MR values.
                unsafe {
                    kernels.tile(
                        p.len,
                        n,
                        s.o,
                        cols.as_mut_ptr().add(r0 * MR),
                        MR,
                        dy_panel.as_ptr(),
                        wr.as_ptr().add((k_first + r0) * s.o),
                        1,
                        s.o,
                        false,
                    )
                }
            }
            let mut r = 0;
            for kx in cl.kx.0..cl.kx.1 {
                let tap = (ky * s.w + kx) as isize;
                for c in 0..s.c {
                    let base = tap + (c * plane) as isize - (first * in_len) as isize;
                    for (i, &v) in cols[r * MR..][..p.len].iter().enumerate() {
                        // In the input by the class, and in this group's images.
                        dx[(p.origin[i] + base) as usize] += v;
                    }
                    r += 1;
                }
            }
        }
    }
}

/// The weight gradient's share of images `first..first + count`, as `(ky, kx, c)` rows of
/// `o.div_ceil(MR) * MR` values (output channels contiguous; rows of taps no position reaches
/// are zero). The output gradient is transposed once into tiles of 16 channels, positions
/// class by class; per tap, the columns of the positions that reach the input through it are
/// gathered (`(c, position)`, class by class). The classes that reach a tap within one run of
/// output rows are consecutive, so each 16 x 6 tile of the gradient is one micro-kernel call
/// per row run, over all of the run's positions.
pub(crate) fn weight_grad_group(
    kernels: TileKernels,
    s: &ConvShape,
    classes: &[Class],
    x: &[f32],
    dy: &[f32],
    first: usize,
    count: usize,
) -> Vec<f32> {
    let (pos, plane, o16) = (s.positions(), s.h * s.w, s.o.div_ceil(MR) * MR);
    let class_len = |cl: &Class| count * (cl.oy.1 - cl.oy.0) * (cl.ox.1 - cl.ox.0);
    // Where each class's positions start (class-major, image by image, row-major).
    let mut starts = Vec::with_capacity(classes.len());
    let mut total = 0;
    for cl in classes {
        starts.push(total);
        total += class_len(cl);
    }
    let mut dy_t = vec![0f32; o16 * total];
    for (ci, cl) in classes.iter().enumerate() {
        let mut at = starts[ci];
        for j in first..first + count {
            for oy in cl.oy.0..cl.oy.1 {
                for ox in cl.ox.0..cl.ox.1 {
                    let p = oy * s.ow + ox;
                    for o in 0..s.o {
                        dy_t[((o / MR) * total + at) * MR + o % MR] = dy[(j * s.o + o) * pos + p];
                    }
                    at += 1;
                }
            }
        }
    }
    let mut dw = vec![0f32; s.k * s.k * s.c * o16];
    // NR rows of slack: the micro-kernel reads whole tiles of 6 channels.
    let mut cols: Vec<f32> = Vec::new();
    for ky in 0..s.k {
        for kx in 0..s.k {
            let reaches =
                |cl: &Class| (cl.ky.0..cl.ky.1).contains(&ky) && (cl.kx.0..cl.kx.1).contains(&kx);
            // Runs of consecutive reaching classes (one per run of output rows): (first
            // position in dy_t, first position in cols, length).
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            let mut reached = 0;
            for (ci, cl) in classes.iter().enumerate() {
                if !reaches(cl) {
                    continue;
                }
                let len = class_len(cl);
                match runs.last_mut() {
                    Some(run) if run.0 + run.2 == starts[ci] => run.2 += len,
                    _ => runs.push((starts[ci], reached, len)),
                }
                reached += len;
            }
            if reached == 0 {
                continue;
            }
            cols.clear();
            cols.resize((s.c + NR) * reached, 0.0);
            for c in 0..s.c {
                let row = &mut cols[c * reached..][..reached];
                let mut i = 0;
                for cl in classes.iter().filter(|cl| reaches(cl)) {
                    for j in first..first + count {
                        let src = &x[(j * s.c + c) * plane..][..plane];
                        for oy in cl.oy.0..cl.oy.1 {
                            let iy = oy * s.g.stride + ky - s.g.padding;
                            let line = &src[iy * s.w..][..s.w];
                            let ix0 = cl.ox.0 * s.g.stride + kx - s.g.padding;
                            let width = cl.ox.1 - cl.ox.0;
                            let taken = line[ix0..].iter().step_by(s.g.stride);
                            for (d, &v) in row[i..i + width].iter_mut().zip(taken) {
                                *d = v;
                            }
                            i += width;
                        }
                    }
                }
            }
            let tap = ky * s.k + kx;
            for ot in 0..o16 / MR {
                for c0 in (0..s.c).step_by(NR) {
                    let n = NR.min(s.c - c0);
                    for (nth, &(dy_at, col_at, len)) in runs.iter().enumerate() {
                        // SAFETY: dw holds rows tap * c + c0..+n of o16 values, this tile's at
                        // columns ot * MR..+MR; dy_t holds positions dy_at..+len of MR values
                        // in tile ot; cols holds rows c0..c0 + NR (NR rows of slack) of
                        // `reached` values, this run's at col_at..+len.
                        unsafe {
                            kernels.tile(
                                MR,
                                n,
                                len,
                                dw.as_mut_ptr().add((tap * s.c + c0) * o16 + ot * MR),
                                o16,
                                dy_t.as_ptr().add((ot * total + dy_at) * MR),
                                cols.as_ptr().add(c0 * reached + col_at),
                                1,
                                reached,
                                nth > 0,
                            )
                        }
                    }
                }
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_the_rectangles_that_reach_the_same_taps() {
        let shape = |h: usize, k: usize, stride: usize, padding: usize| {
            let out = (h + 2 * padding - k) / stride + 1;
            ConvShape {
                n: 1,
                c: 1,
                h,
                w: h,
                o: 1,
                k,
                oh: out,
                ow: out,
                g: ConvGeometry { stride, padding },
            }
        };
        // 3x3 with padding 1 on 2x2: four corners, each reaching 2x2 taps.
        let classes = super::classes(&shape(2, 3, 1, 1));
        assert_eq!(classes.len(), 4);
        assert_eq!(
            classes[0],
            Class {
                oy: (0, 1),
                ox: (0, 1),
                ky: (1, 3),
                kx: (1, 3)
            }
        );
        // NiN's 5x5 with padding 2 on 7x7: 5 row runs x 5 column runs, the centre 3x3 reaching
        // every tap; 29 of 35 taps per axis on average.
        let classes = super::classes(&shape(7, 5, 1, 2));
        assert_eq!(classes.len(), 25);
        assert!(classes.contains(&Class {
            oy: (2, 5),
            ox: (2, 5),
            ky: (0, 5),
            kx: (0, 5)
        }));
        let reached: usize = classes.iter().map(Class::multiply_adds).sum();
        assert_eq!(reached, 29 * 29);
        // Padding 3 with a 3x3 on 2x2 (6x6 outputs): the border outputs read only padding and
        // are left out.
        let classes = super::classes(&shape(2, 3, 1, 3));
        assert!(classes.iter().all(|c| c.oy.0 >= 1 && c.oy.1 <= 5));
        assert_eq!(classes.iter().map(|c| c.oy.0).min(), Some(1));
    }
}
