//! Which algorithm a convolution takes (Winograd, tiled, or im2col + GEMM), with the thresholds
//! that decide it (their measurements: docs/benchmarks.md, "The convolution's thresholds"),
//! and how each splits the batch over the threads.

use rayon::prelude::*;

use super::geometry::ConvShape;
use super::im2col::Taps;
use super::scratch::Scratch;
use super::{tiled, winograd};
use crate::microkernel::TileKernels;
use crate::new_filled;

/// How images are grouped: enough images per GEMM that it has at least `MIN_COLUMNS` columns
/// (late layers have a handful of positions per image: one GEMM per image would re-read the
/// weights for every image), and the groups spread over the threads when there are enough.
pub(super) struct Plan {
    pub group: usize,
    pub groups: usize,
    /// Threads inside each GEMM (when the groups alone cannot use them).
    pub gemm_threads: usize,
}

const MIN_COLUMNS: usize = 256;

pub(super) fn plan(s: &ConvShape) -> Plan {
    let threads = rayon::current_num_threads().max(1);
    // At most n / threads images per group, so that every thread gets a group: one GEMM
    // per thread beats one GEMM split by the gemm crate across threads (docs/benchmarks.md,
    // "The convolution's thresholds").
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
pub(super) fn for_groups<T: Send>(
    p: &Plan,
    s: &ConvShape,
    rows: usize,
    out: &mut [T],
    per_image: usize,
    f: impl Fn(&mut (Scratch, Scratch), usize, &mut [T]) + Sync + Send,
) {
    let columns = p.group * s.positions();
    let init = || (Scratch::take(rows * columns), Scratch::take(s.o * columns));
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
/// (`MAX_TILED_WEIGHTS`), with `MIN_TILED_IMAGES_PER_THREAD` images per thread. The
/// measurements behind each limit: docs/benchmarks.md, "The convolution's thresholds".
pub(super) fn tiled_plan(s: &ConvShape, taps: &Taps) -> Option<TiledPlan> {
    let threads = rayon::current_num_threads().max(1);
    if s.k == 1
        || !taps.all(s)
        || s.o * s.c * s.k * s.k > MAX_TILED_WEIGHTS
        || s.n < threads * MIN_TILED_IMAGES_PER_THREAD
    {
        return None;
    }
    let classes = tiled::classes(s);
    let reached: usize = classes.iter().map(tiled::Class::multiply_adds).sum();
    if (reached as f64) > (1.0 - MIN_TILED_PADDING) * (s.positions() * s.k * s.k) as f64 {
        return None;
    }
    Some(TiledPlan {
        kernels: crate::microkernel::kernels(),
        shape: *s,
        classes,
        split: BatchSplit::per_thread(s.n),
    })
}

/// Which computation a path is planned for: the forward takes the Winograd path with fewer
/// images than threads too (split inside each image), the gradients do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Forward,
    /// A forward that keeps its transformed kernels between calls (a frozen-weights scope), so
    /// that a call pays only for its tiles.
    KeptForward,
    Gradient,
}

/// A batch of `n` images split into groups of `group` (one per thread) for the Winograd and
/// tiled paths; `wide`: fewer images than threads, one group whose work each step splits over
/// the threads (the Winograd forward of small batches).
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchSplit {
    pub group: usize,
    n: usize,
    pub wide: bool,
}

impl BatchSplit {
    /// One group of images per thread.
    fn per_thread(n: usize) -> Self {
        Self {
            group: n.div_ceil(rayon::current_num_threads().max(1)),
            n,
            wide: false,
        }
    }
    /// As [`BatchSplit::per_thread`], but the forward of fewer images than threads is one wide
    /// group.
    fn new(n: usize, pass: Pass) -> Self {
        if pass != Pass::Gradient && n < rayon::current_num_threads().max(1) {
            return Self {
                group: n,
                n,
                wide: true,
            };
        }
        Self::per_thread(n)
    }
    /// The first image and the image count of group `gi`.
    pub(super) fn images(&self, gi: usize) -> (usize, usize) {
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
    pub(super) unsafe fn fill(
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
    pub(super) fn map<T: Send>(&self, f: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
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
pub(super) struct WinogradPlan {
    pub kernels: TileKernels,
    pub tiling: winograd::Tiling,
    pub split: BatchSplit,
}

/// The smallest map side the Winograd path takes: on 2x2 and 3x3 maps its tiles are mostly
/// padding (the tiled path skips it).
const MIN_WINOGRAD_MAP: usize = 4;
/// The smallest map side that takes F(4x4, 3x3) (36 products per 16 outputs) rather than F(2x2,
/// 3x3) (16 per 4): on 4x4 maps each image is one tile, and the products' 16-row matrices
/// re-read the transformed kernels for every 16 tiles.
const MIN_F43_MAP: usize = 8;
/// The smallest map side that takes F(4x4, 5x5).
const MIN_F45_MAP: usize = 6;
/// The fewest tiles per thread's group of images the Winograd path takes: each group reads all
/// the transformed weights. With 2 threads (AMD EPYC Zen 3, `bench ops --cases`), NiN's 5x5 on 7x7
/// maps (4 tiles an image) ran in 1.6x the GEMMs' time at 2 images (one a thread), level at 4,
/// and in 0.75x at 8.
const MIN_GROUP_TILES: usize = 8;
/// The fewest tiles (over all images) the Winograd forward takes with fewer images than threads:
/// the transformed weights (4x the kernel's size for F(4x4, 3x3)) are written and read once per
/// call, which pays only over enough tiles. At batch 1 on 2 threads (AMD EPYC Zen 3, `bench ops
/// --cases`), 49 tiles (28x28 maps) ran in 0.6 of the GEMMs' time, 16 tiles (14x14) in 1.2.
const MIN_WIDE_TILES: usize = 32;
/// The same with the transformed kernels kept between calls (a frozen-weights scope: `zoo
/// predict`, evaluation): a call then pays only for its tiles' transforms and products, and even
/// one 8x8 or 4x4 map (4 tiles) is faster than its columns and GEMM. Whole networks at batch 1
/// on 2 threads (Intel Xeon, Sapphire Rapids; `bench models --infer-only --batch-size 1`, medians
/// of 6 rounds), 4 against 32 and 8 here: DenseNet at 32 px 1,004 against 850 and 825 images/s,
/// NiN at 67 px 577 against 482 and 479, the others level or up to 5% faster.
const MIN_KEPT_WIDE_TILES: usize = 4;
/// The fewest channels in and out it takes: its transforms cost per channel and tile, its
/// products per channel pair, and network inputs (3 channels) stay on the im2col path.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The Winograd path: a 3x3 kernel with stride 1 and padding 1 on maps and channel counts as
/// the constants above say (docs/benchmarks.md, "The convolution's thresholds"); with fewer
/// images than threads, the forward only ([`Pass`]).
pub(super) fn winograd_plan(s: &ConvShape, pass: Pass) -> Option<WinogradPlan> {
    let g = s.g;
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
        || (s.n < threads && pass == Pass::Gradient)
    {
        return None;
    }
    let tiling = winograd::Tiling {
        shape: *s,
        variant: if s.k == 5 {
            winograd::Variant::F4x5
        } else if s.h.min(s.w) >= MIN_F43_MAP {
            winograd::Variant::F4x3
        } else {
            winograd::Variant::F2x3
        },
    };
    let split = BatchSplit::new(s.n, pass);
    let least = match (split.wide, pass) {
        (true, Pass::KeptForward) => MIN_KEPT_WIDE_TILES,
        (true, _) => MIN_WIDE_TILES,
        (false, _) => MIN_GROUP_TILES,
    };
    if split.group * tiling.tiles() < least {
        return None;
    }
    Some(WinogradPlan {
        kernels: crate::microkernel::kernels(),
        tiling,
        split,
    })
}

/// The fewest images per thread the tiled path takes. Its panels group the positions of one
/// class (the same taps reach the input) over a thread's images, 16 to a panel; on small maps a
/// class is a position or a row, so with few images a thread its panels are mostly empty lanes
/// that the tile kernels compute all the same. With 2 threads
/// (AMD EPYC Zen 3, `bench ops --cases`), AlexNet's 3x3s on 3x3 maps (256 -> 384) took 2.0-3.0 ms on
/// the tiled path from 2 to 16 images, where the GEMMs took 0.34 ms at 2, 1.04 at 8, 2.19 at 16
/// and 3.12 at 32.
const MIN_TILED_IMAGES_PER_THREAD: usize = 8;
/// Share of a convolution's im2col multiply-adds that must be with padding for the tiled
/// path.
const MIN_TILED_PADDING: f64 = 0.2;
/// The most weights the tiled path takes: they are read again for every chunk of panels, so
/// VGG-11's 512-channel 3x3s (2.4M weights) stay on the GEMM path and AlexNet's 384 -> 384
/// (1.3M) takes the tiled one.
const MAX_TILED_WEIGHTS: usize = 3 << 19;

/// A convolution on the tiled path: its micro-kernels, geometry and classes.
pub(super) struct TiledPlan {
    pub kernels: TileKernels,
    pub shape: ConvShape,
    pub classes: Vec<tiled::Class>,
    pub split: BatchSplit,
}
