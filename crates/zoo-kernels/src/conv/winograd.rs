//! 'Same' convolutions with stride 1 by Winograd's algorithm: F(4x4, 3x3) and F(2x2, 3x3) for 3x3
//! kernels (padding 1), F(4x4, 5x5) for 5x5 kernels (padding 2); forward and both gradients.
//!
//! Each `m x m` block of outputs (a tile) is computed from the `(m + k - 1)`-square input patch
//! around it: the patch and the kernel are transformed (`B^T d B`, `G g G^T`), multiplied
//! element by element and summed over the input channels, and the result transformed back
//! (`A^T m A`). Summing over channels is, for each element, one matrix product `[tiles, c] .
//! [c, o]`. Multiply-adds per output and channel pair: 36 / 16 = 2.25 with F(4x4, 3x3) and 16 /
//! 4 = 4 with F(2x2, 3x3) instead of 9 (7.6 on 8x8 maps without the ones on padding); 64 / 16 =
//! 4 with F(4x4, 5x5) instead of 25 (17.2 on 7x7 maps without padding). F(4x4, 3x3) takes maps
//! of 8 and more; on 4x4 maps (one tile per image) F(2x2, 3x3) gives the products more rows.
//! The transforms run 8 channels at a time, one per vector lane, on tiles of pixels copied
//! channel-innermost.
//!
//! The products run on the tile kernels ([`super::microkernel`]): the transformed kernels are
//! packed into their panels once per op, and the transforms write their results where the
//! kernels read them (the forward's rows of channels per tile; the weight gradient's panels of
//! 16 channels). Through the gemm crate, which packed both operands again for every element
//! and chunk, the same convolutions ran 20-30% slower (`bench ops`, forward + backward: 4x4 maps
//! 512 -> 512 39.5 -> 28.5 ms, NiN's 5x5 19.7 -> 15.6, 8x8 64 -> 64 2.29 -> 1.85).
//!
//! The interpolation points: 0, 1, -1 and infinity for F(2, 3); 0, 1, -1, 2, -2 and infinity
//! for F(4, 3) (as in Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", and
//! oneDNN and cuDNN); those and 1/2, -1/2 for F(4, 5). The fractions sit in the kernel
//! transform, the data transforms are integer (`scripts/winograd_matrices.py` derives and checks
//! them). Summing 256 channels in f32, that script puts the largest error at 2.5e-6 (F(2, 3)),
//! 1.5e-5 (F(4, 3)) and 2.1e-5 (F(4, 5)) of the largest output; the tests below hold all three
//! to 1e-5 against a direct f64 convolution.
//!
//! - Input gradient: with stride 1, the forward convolution of the output gradient with the
//!   kernels flipped and transposed (`c` outputs from `o` inputs), the same padding.
//! - Weight gradient (the same algebra transposed): `dW = G^T [sum over tiles (A dy A^T) o
//!   (B^T d B)] G`, per element the product `[tiles, o]^T . [tiles, c]`.

use crate::activation::relu_f32;
use rayon::prelude::*;

use super::geometry::ConvShape;
use super::scratch::Scratch;
use crate::disjoint::{DisjointWrites, for_each_range};
use crate::microkernel::{MR, NR, TileKernels};
use crate::new_filled;

/// A 'same' convolution (a `k x k` kernel with stride 1 and padding `k / 2`) on the tiles of
/// one Winograd variant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tiling {
    pub shape: ConvShape,
    pub variant: Variant,
}

/// Which algorithm: outputs per tile side and kernel side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// F(2x2, 3x3).
    F2x3,
    /// F(4x4, 3x3).
    F4x3,
    /// F(4x4, 5x5).
    F4x5,
}

impl Variant {
    /// Outputs per tile side.
    fn m(self) -> usize {
        match self {
            Variant::F2x3 => 2,
            Variant::F4x3 | Variant::F4x5 => 4,
        }
    }
}

/// Tiles per chunk of images: the matrix products get enough rows while the transformed
/// inputs and products stay a few MB.
const CHUNK_TILES: usize = 256;

impl Tiling {
    fn tiles_y(&self) -> usize {
        self.shape.h.div_ceil(self.variant.m())
    }
    fn tiles_x(&self) -> usize {
        self.shape.w.div_ceil(self.variant.m())
    }
    /// Tiles per image.
    pub(crate) fn tiles(&self) -> usize {
        self.tiles_y() * self.tiles_x()
    }
    fn plane(&self) -> usize {
        self.shape.h * self.shape.w
    }
    /// Images per chunk.
    fn chunk(&self) -> usize {
        CHUNK_TILES.div_ceil(self.tiles()).max(1)
    }
    /// The input gradient's geometry: the output gradient's `o` channels in, `c` out.
    pub(crate) fn transposed(&self) -> Self {
        Self {
            shape: self.shape.transposed(),
            ..*self
        }
    }
}

/// Channels transformed together, one per vector lane.
const LANES: usize = 8;
/// One value for each of `LANES` channels.
type Lanes = [f32; LANES];

/// `[f(0), f(1), ..]`: a plain loop, which the compiler unrolls and vectorises (through
/// `std::array::from_fn` the closures were not always inlined).
#[inline(always)]
fn array<const N: usize>(f: impl Fn(usize) -> f32) -> [f32; N] {
    let mut out = [0f32; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = f(i);
    }
    out
}

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> Lanes {
    array(f)
}

/// The one-axis transforms of F(m, r): `M = m` outputs per tile side from `A = m + r - 1`
/// inputs, `R = r` kernel taps.
trait Transform<const A: usize, const R: usize, const M: usize> {
    /// `B^T d`, of `d(0..A)`.
    fn input(d: impl Fn(usize) -> Lanes) -> [Lanes; A];
    /// `A^T m`, of `m(0..A)`.
    fn output(m: impl Fn(usize) -> Lanes) -> [Lanes; M];
    /// `A y`, of `y(0..M)` (the output transform transposed, for the output gradient).
    fn output_grad(y: impl Fn(usize) -> Lanes) -> [Lanes; A];
    /// `G g`, of `g(0..R)`.
    fn kernel(g: impl Fn(usize) -> Lanes) -> [Lanes; A];
    /// `G^T p`, of `p(0..A)` (the kernel transform transposed, for the weight gradient).
    fn kernel_grad(p: impl Fn(usize) -> Lanes) -> [Lanes; R];
}

/// F(2, 3).
struct F23;

impl Transform<4, 3, 2> for F23 {
    #[inline(always)]
    fn input(d: impl Fn(usize) -> Lanes) -> [Lanes; 4] {
        let d = [d(0), d(1), d(2), d(3)];
        [
            lanes(|l| d[0][l] - d[2][l]),
            lanes(|l| d[1][l] + d[2][l]),
            lanes(|l| d[2][l] - d[1][l]),
            lanes(|l| d[1][l] - d[3][l]),
        ]
    }
    #[inline(always)]
    fn output(m: impl Fn(usize) -> Lanes) -> [Lanes; 2] {
        let m = [m(0), m(1), m(2), m(3)];
        [
            lanes(|l| m[0][l] + m[1][l] + m[2][l]),
            lanes(|l| m[1][l] - m[2][l] - m[3][l]),
        ]
    }
    #[inline(always)]
    fn output_grad(y: impl Fn(usize) -> Lanes) -> [Lanes; 4] {
        let y = [y(0), y(1)];
        [
            y[0],
            lanes(|l| y[0][l] + y[1][l]),
            lanes(|l| y[0][l] - y[1][l]),
            lanes(|l| -y[1][l]),
        ]
    }
    #[inline(always)]
    fn kernel(g: impl Fn(usize) -> Lanes) -> [Lanes; 4] {
        let g = [g(0), g(1), g(2)];
        [
            g[0],
            lanes(|l| 0.5 * (g[0][l] + g[1][l] + g[2][l])),
            lanes(|l| 0.5 * (g[0][l] - g[1][l] + g[2][l])),
            g[2],
        ]
    }
    #[inline(always)]
    fn kernel_grad(p: impl Fn(usize) -> Lanes) -> [Lanes; 3] {
        let p = [p(0), p(1), p(2), p(3)];
        [
            lanes(|l| p[0][l] + 0.5 * (p[1][l] + p[2][l])),
            lanes(|l| 0.5 * (p[1][l] - p[2][l])),
            lanes(|l| 0.5 * (p[1][l] + p[2][l]) + p[3][l]),
        ]
    }
}

/// F(4, 3).
struct F43;

impl Transform<6, 3, 4> for F43 {
    #[inline(always)]
    fn input(d: impl Fn(usize) -> Lanes) -> [Lanes; 6] {
        let d = [d(0), d(1), d(2), d(3), d(4), d(5)];
        [
            lanes(|l| 4.0 * d[0][l] - 5.0 * d[2][l] + d[4][l]),
            lanes(|l| 4.0 * (d[1][l] + d[2][l]) - d[3][l] - d[4][l]),
            lanes(|l| 4.0 * (d[2][l] - d[1][l]) + d[3][l] - d[4][l]),
            lanes(|l| 2.0 * (d[3][l] - d[1][l]) - d[2][l] + d[4][l]),
            lanes(|l| 2.0 * (d[1][l] - d[3][l]) - d[2][l] + d[4][l]),
            lanes(|l| 4.0 * d[1][l] - 5.0 * d[3][l] + d[5][l]),
        ]
    }
    #[inline(always)]
    fn output(m: impl Fn(usize) -> Lanes) -> [Lanes; 4] {
        let m = [m(0), m(1), m(2), m(3), m(4), m(5)];
        let s12 = lanes(|l| m[1][l] + m[2][l]);
        let d12 = lanes(|l| m[1][l] - m[2][l]);
        let s34 = lanes(|l| m[3][l] + m[4][l]);
        let d34 = lanes(|l| m[3][l] - m[4][l]);
        [
            lanes(|l| m[0][l] + s12[l] + s34[l]),
            lanes(|l| d12[l] + 2.0 * d34[l]),
            lanes(|l| s12[l] + 4.0 * s34[l]),
            lanes(|l| d12[l] + 8.0 * d34[l] + m[5][l]),
        ]
    }
    #[inline(always)]
    fn output_grad(y: impl Fn(usize) -> Lanes) -> [Lanes; 6] {
        let y = [y(0), y(1), y(2), y(3)];
        let even = lanes(|l| y[0][l] + y[2][l]);
        let odd = lanes(|l| y[1][l] + y[3][l]);
        let even4 = lanes(|l| y[0][l] + 4.0 * y[2][l]);
        let odd4 = lanes(|l| 2.0 * y[1][l] + 8.0 * y[3][l]);
        [
            y[0],
            lanes(|l| even[l] + odd[l]),
            lanes(|l| even[l] - odd[l]),
            lanes(|l| even4[l] + odd4[l]),
            lanes(|l| even4[l] - odd4[l]),
            y[3],
        ]
    }
    #[inline(always)]
    fn kernel(g: impl Fn(usize) -> Lanes) -> [Lanes; 6] {
        let g = [g(0), g(1), g(2)];
        let even = lanes(|l| g[0][l] + g[2][l]);
        let even_w = lanes(|l| g[0][l] / 24.0 + g[2][l] / 6.0);
        [
            lanes(|l| g[0][l] / 4.0),
            lanes(|l| (even[l] + g[1][l]) / 6.0),
            lanes(|l| (even[l] - g[1][l]) / 6.0),
            lanes(|l| even_w[l] + g[1][l] / 12.0),
            lanes(|l| even_w[l] - g[1][l] / 12.0),
            g[2],
        ]
    }
    #[inline(always)]
    fn kernel_grad(p: impl Fn(usize) -> Lanes) -> [Lanes; 3] {
        let p = [p(0), p(1), p(2), p(3), p(4), p(5)];
        let (s12, d12) = (lanes(|l| p[1][l] + p[2][l]), lanes(|l| p[1][l] - p[2][l]));
        let (s34, d34) = (lanes(|l| p[3][l] + p[4][l]), lanes(|l| p[3][l] - p[4][l]));
        [
            lanes(|l| p[0][l] / 4.0 + s12[l] / 6.0 + s34[l] / 24.0),
            lanes(|l| d12[l] / 6.0 + d34[l] / 12.0),
            lanes(|l| (s12[l] + s34[l]) / 6.0 + p[5][l]),
        ]
    }
}

/// F(4, 5): interpolation at 0, 1, -1, 2, -2, 1/2, -1/2 and infinity (`B^T` rows scaled to
/// integers).
struct F45;

impl Transform<8, 5, 4> for F45 {
    #[inline(always)]
    fn input(d: impl Fn(usize) -> Lanes) -> [Lanes; 8] {
        let d: [Lanes; 8] = [d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7)];
        [
            lanes(|l| 4.0 * d[0][l] - 21.0 * d[2][l] + 21.0 * d[4][l] - 4.0 * d[6][l]),
            lanes(|l| {
                -4.0 * (d[1][l] + d[2][l]) + 17.0 * (d[3][l] + d[4][l]) - 4.0 * (d[5][l] + d[6][l])
            }),
            lanes(|l| {
                4.0 * (d[1][l] - d[2][l]) - 17.0 * (d[3][l] - d[4][l]) + 4.0 * (d[5][l] - d[6][l])
            }),
            lanes(|l| {
                2.0 * d[1][l] + d[2][l] - 10.0 * d[3][l] - 5.0 * d[4][l]
                    + 8.0 * d[5][l]
                    + 4.0 * d[6][l]
            }),
            lanes(|l| {
                -2.0 * d[1][l] + d[2][l] + 10.0 * d[3][l] - 5.0 * d[4][l] - 8.0 * d[5][l]
                    + 4.0 * d[6][l]
            }),
            lanes(|l| {
                64.0 * d[1][l] + 128.0 * d[2][l] - 80.0 * d[3][l] - 160.0 * d[4][l]
                    + 16.0 * d[5][l]
                    + 32.0 * d[6][l]
            }),
            lanes(|l| {
                -64.0 * d[1][l] + 128.0 * d[2][l] + 80.0 * d[3][l]
                    - 160.0 * d[4][l]
                    - 16.0 * d[5][l]
                    + 32.0 * d[6][l]
            }),
            lanes(|l| -4.0 * d[1][l] + 21.0 * d[3][l] - 21.0 * d[5][l] + 4.0 * d[7][l]),
        ]
    }
    #[inline(always)]
    fn output(m: impl Fn(usize) -> Lanes) -> [Lanes; 4] {
        let m: [Lanes; 8] = [m(0), m(1), m(2), m(3), m(4), m(5), m(6), m(7)];
        let s12 = lanes(|l| m[1][l] + m[2][l]);
        let d12 = lanes(|l| m[1][l] - m[2][l]);
        let s34 = lanes(|l| m[3][l] + m[4][l]);
        let d34 = lanes(|l| m[3][l] - m[4][l]);
        let s56 = lanes(|l| m[5][l] + m[6][l]);
        let d56 = lanes(|l| m[5][l] - m[6][l]);
        [
            lanes(|l| m[0][l] + s12[l] + s34[l] + s56[l]),
            lanes(|l| d12[l] + 2.0 * d34[l] + 0.5 * d56[l]),
            lanes(|l| s12[l] + 4.0 * s34[l] + 0.25 * s56[l]),
            lanes(|l| d12[l] + 8.0 * d34[l] + 0.125 * d56[l] + m[7][l]),
        ]
    }
    #[inline(always)]
    fn output_grad(y: impl Fn(usize) -> Lanes) -> [Lanes; 8] {
        let y = [y(0), y(1), y(2), y(3)];
        let at = |a: f32| {
            let (a2, a3) = (a * a, a * a * a);
            lanes(|l| y[0][l] + a * y[1][l] + a2 * y[2][l] + a3 * y[3][l])
        };
        [
            y[0],
            at(1.0),
            at(-1.0),
            at(2.0),
            at(-2.0),
            at(0.5),
            at(-0.5),
            y[3],
        ]
    }
    #[inline(always)]
    fn kernel(g: impl Fn(usize) -> Lanes) -> [Lanes; 8] {
        let g = [g(0), g(1), g(2), g(3), g(4)];
        // Row x: the kernel polynomial at point a, over the row's scale.
        let at = |a: f32, scale: f32| {
            lanes(|l| {
                (g[0][l] + a * (g[1][l] + a * (g[2][l] + a * (g[3][l] + a * g[4][l])))) / scale
            })
        };
        // At -+1/2: (16 g0 -+ 8 g1 + 4 g2 -+ 2 g3 + g4) / 720.
        let half = |sign: f32| {
            lanes(|l| {
                (16.0 * g[0][l]
                    + sign * 8.0 * g[1][l]
                    + 4.0 * g[2][l]
                    + sign * 2.0 * g[3][l]
                    + g[4][l])
                    / 720.0
            })
        };
        [
            lanes(|l| g[0][l] / 4.0),
            at(1.0, 18.0),
            at(-1.0, 18.0),
            at(2.0, 360.0),
            at(-2.0, 360.0),
            half(1.0),
            half(-1.0),
            lanes(|l| g[4][l] / 4.0),
        ]
    }
    #[inline(always)]
    fn kernel_grad(p: impl Fn(usize) -> Lanes) -> [Lanes; 5] {
        let p: [Lanes; 8] = [p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7)];
        // Tap k: sum over rows x of G[x][k] p[x].
        let (s1, d1) = (lanes(|l| p[1][l] + p[2][l]), lanes(|l| p[1][l] - p[2][l]));
        let (s2, d2) = (lanes(|l| p[3][l] + p[4][l]), lanes(|l| p[3][l] - p[4][l]));
        let (s3, d3) = (lanes(|l| p[5][l] + p[6][l]), lanes(|l| p[5][l] - p[6][l]));
        [
            lanes(|l| p[0][l] / 4.0 + s1[l] / 18.0 + s2[l] / 360.0 + s3[l] / 45.0),
            lanes(|l| d1[l] / 18.0 + d2[l] / 180.0 + d3[l] / 90.0),
            lanes(|l| s1[l] / 18.0 + s2[l] / 90.0 + s3[l] / 180.0),
            lanes(|l| d1[l] / 18.0 + d2[l] / 45.0 + d3[l] / 360.0),
            lanes(|l| s1[l] / 18.0 + s2[l] * (2.0 / 45.0) + s3[l] / 720.0 + p[7][l] / 4.0),
        ]
    }
}

/// The transformed kernels `G g G^T` of the op with geometry `s` (`s.shape.o` outputs from `s.shape.c`
/// inputs) packed as the tile kernels read them: per panel of `MR` outputs, per element, `s.shape.c`
/// columns of `MR` values (zeros past the last output). `w` holds `(s.shape.o, s.shape.c, k, k)` kernels;
/// with `flipped`, `(s.shape.c, s.shape.o, k, k)` ones, which the input gradient (`s` the forward's
/// geometry transposed) uses flipped and transposed: `g'[ky][kx] = w[ci][oi][k - 1 - ky][k - 1 -
/// kx]`.
pub(crate) fn transform_weights(s: &Tiling, w: &[f32], flipped: bool) -> Vec<f32> {
    match s.variant {
        Variant::F2x3 => weights_by::<4, 3, 2, F23>(w, s.shape.o, s.shape.c, flipped),
        Variant::F4x3 => weights_by::<6, 3, 4, F43>(w, s.shape.o, s.shape.c, flipped),
        Variant::F4x5 => weights_by::<8, 5, 4, F45>(w, s.shape.o, s.shape.c, flipped),
    }
}

fn weights_by<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    w: &[f32],
    rows: usize,
    cols: usize,
    flipped: bool,
) -> Vec<f32> {
    let xi = A * A;
    let panel = xi * cols * MR;
    // SAFETY: each task writes its whole panel: every element, column and lane group.
    unsafe {
        new_filled(rows.div_ceil(MR) * panel, |u| {
            u.par_chunks_mut(panel).enumerate().for_each(|(p, dst)| {
                // LANES outputs at a time, one per lane.
                for half in 0..MR / LANES {
                    let r0 = p * MR + half * LANES;
                    let width = LANES.min(rows.saturating_sub(r0));
                    for ci in 0..cols {
                        let g = |ky: usize, kx: usize| {
                            let tap = if flipped {
                                (R - 1 - ky) * R + (R - 1 - kx)
                            } else {
                                ky * R + kx
                            };
                            lanes(|l| {
                                if l >= width {
                                    0.0
                                } else if flipped {
                                    w[(ci * rows + r0 + l) * R * R + tap]
                                } else {
                                    w[((r0 + l) * cols + ci) * R * R + tap]
                                }
                            })
                        };
                        two_axes::<R, A, KernelOf<T, M>>(g, |ri, q, val| {
                            let at = ((ri * A + q) * cols + ci) * MR + half * LANES;
                            for (d, &v) in dst[at..at + LANES].iter_mut().zip(val) {
                                d.write(v);
                            }
                        });
                    }
                }
            });
        })
    }
}

/// Copies channels `c0..c0 + LANES` (fewer at the end: zeros in the other lanes) of one image's
/// `(channels, h, w)` planes into `dst`, pixels of `LANES` channels in rows of `cols`, with the
/// image at `(top, left)`; the rest of `dst` is left as it is (zeros: padding).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gather_lanes(
    image: &[f32],
    channels: usize,
    c0: usize,
    s: &Tiling,
    cols: usize,
    top: usize,
    left: usize,
    dst: &mut [Lanes],
) {
    let plane = s.plane();
    for l in 0..LANES {
        let ci = c0 + l;
        if ci >= channels {
            for y in 0..s.shape.h {
                for px in &mut dst[(top + y) * cols + left..][..s.shape.w] {
                    px[l] = 0.0;
                }
            }
            continue;
        }
        let src = &image[ci * plane..][..plane];
        for (y, row) in src.chunks_exact(s.shape.w).enumerate() {
            for (px, &v) in dst[(top + y) * cols + left..][..s.shape.w]
                .iter_mut()
                .zip(row)
            {
                px[l] = v;
            }
        }
    }
}

/// Stores `LANES` values (fewer at the end) at `dst`. Lane by lane with a bound check each: the
/// compiler turned a plain copy of `dst.len()` values into a call to `memcpy` for every store,
/// full ones included (16% of a 4x4-map convolution's profile; `bench ops` could not tell the
/// two apart).
#[inline(always)]
fn store_lanes(dst: &mut [f32], v: &Lanes) {
    if let Ok(full) = <&mut Lanes>::try_from(&mut *dst) {
        *full = *v;
    } else {
        let n = dst.len();
        for (l, &x) in v.iter().enumerate() {
            if l < n {
                dst[l] = x;
            }
        }
    }
}

/// Loads `LANES` values (fewer at the end: zeros in the other lanes) from `src`, as
/// [`store_lanes`] stores them.
#[inline(always)]
fn load_lanes(src: &[f32]) -> Lanes {
    if let Ok(full) = <&Lanes>::try_from(src) {
        return *full;
    }
    lanes(|l| if l < src.len() { src[l] } else { 0.0 })
}

/// A one-axis transform `F` (`A x P`) of `d(0..P)` for [`transform_tiles`]: a trait rather than
/// a closure, so that it takes its inputs through an inlined accessor (arrays of eight
/// 8-lane values passed instead were copied with `memcpy`: F(4x4, 5x5) forward 5.3 -> 7.6 ms).
trait OneAxis<const P: usize, const A: usize> {
    fn apply(d: impl Fn(usize) -> Lanes) -> [Lanes; A];
}

/// `B^T` of F(m, r).
struct InputOf<T, const R: usize, const M: usize>(std::marker::PhantomData<T>);
/// `A` of F(m, r) (the output transform transposed).
struct OutputGradOf<T, const R: usize>(std::marker::PhantomData<T>);

impl<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>> OneAxis<A, A>
    for InputOf<T, R, M>
{
    #[inline(always)]
    fn apply(d: impl Fn(usize) -> Lanes) -> [Lanes; A] {
        T::input(d)
    }
}

impl<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>> OneAxis<M, A>
    for OutputGradOf<T, R>
{
    #[inline(always)]
    fn apply(y: impl Fn(usize) -> Lanes) -> [Lanes; A] {
        T::output_grad(y)
    }
}

/// `A^T` of F(m, r).
struct OutputOf<T, const R: usize>(std::marker::PhantomData<T>);
/// `G` of F(m, r).
struct KernelOf<T, const M: usize>(std::marker::PhantomData<T>);
/// `G^T` of F(m, r) (the kernel transform transposed).
struct KernelGradOf<T, const M: usize>(std::marker::PhantomData<T>);

impl<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>> OneAxis<A, M>
    for OutputOf<T, R>
{
    #[inline(always)]
    fn apply(m: impl Fn(usize) -> Lanes) -> [Lanes; M] {
        T::output(m)
    }
}

impl<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>> OneAxis<R, A>
    for KernelOf<T, M>
{
    #[inline(always)]
    fn apply(g: impl Fn(usize) -> Lanes) -> [Lanes; A] {
        T::kernel(g)
    }
}

impl<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>> OneAxis<A, R>
    for KernelGradOf<T, M>
{
    #[inline(always)]
    fn apply(p: impl Fn(usize) -> Lanes) -> [Lanes; R] {
        T::kernel_grad(p)
    }
}

/// The 2-d transform `F x F^T` of the `P x P` block `x(row, col)` by the one-axis transform `X`
/// (`F`, `Q x P`): down the columns, then along the rows, `out(row, col, value)` for each of
/// the `Q x Q` results: the outputs, the kernels and the weight gradient's finish.
/// [`transform_tiles`] spells the same two passes out: through this helper F(4x4, 5x5)'s
/// forward + backward ran 5% slower (`bench ops`, 14.2 -> 15.1 ms, best of four).
// Rows of the column-transformed block are read across its columns: index loops read best.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn two_axes<const P: usize, const Q: usize, X: OneAxis<P, Q>>(
    x: impl Fn(usize, usize) -> Lanes,
    mut out: impl FnMut(usize, usize, &Lanes),
) {
    let mut by_column = [[[0f32; LANES]; Q]; P];
    for (q, col) in by_column.iter_mut().enumerate() {
        *col = X::apply(|r| x(r, q));
    }
    for r in 0..Q {
        for (q, val) in X::apply(|q| by_column[q][r]).iter().enumerate() {
            out(r, q, val);
        }
    }
}

/// The 2-d transform `F d F^T` (`F` = `X`, `A x P`) of every `P x P` patch, one
/// per tile (patches `M` apart), of images `first..first + count` of `planes` (`(n, channels,
/// h, w)`), into `out` as `A * A` `[count * tiles, channels]` matrices, for the channels of
/// `lane_groups` (groups of `LANES`: concurrent calls take disjoint groups). `LANES` channels at a
/// time: their planes are copied into a zero-padded buffer of pixels of `LANES` channels, the
/// image `offset` pixels from its top and left, and each patch is transformed with one vector
/// per pixel. Used for the inputs (`B^T d B`, `P = A`, offset the padding) and the output
/// gradients (`A dy A^T`, `P = M`, offset 0).
// Rows of the column-transformed patch are read across its columns: index loops read best.
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
#[inline(always)]
fn transform_tiles<const P: usize, const A: usize, const M: usize, X: OneAxis<P, A>>(
    planes: &[f32],
    channels: usize,
    s: &Tiling,
    (first, count): (usize, usize),
    lane_groups: std::ops::Range<usize>,
    offset: usize,
    index: impl Fn(usize, usize, usize) -> usize,
    out: &DisjointWrites<f32>,
) {
    let (txn, tyn, plane) = (s.tiles_x(), s.tiles_y(), s.plane());
    // Zeros around the image: the offset on the top and left, to the last patch's end on the
    // bottom and right.
    let (rows, cols) = (M * tyn + P - M, M * txn + P - M);
    let mut padded = vec![[0f32; LANES]; rows * cols];
    for j in 0..count {
        let image = &planes[(first + j) * channels * plane..][..channels * plane];
        for c0 in lane_groups.clone().map(|g| g * LANES) {
            gather_lanes(image, channels, c0, s, cols, offset, offset, &mut padded);
            let width = LANES.min(channels - c0);
            for ty in 0..tyn {
                for tx in 0..txn {
                    let tile = j * s.tiles() + ty * txn + tx;
                    // Down the columns, then along the rows (as two_axes).
                    let mut t = [[[0f32; LANES]; A]; P];
                    for (q, col) in t.iter_mut().enumerate() {
                        *col = X::apply(|r| padded[(M * ty + r) * cols + M * tx + q]);
                    }
                    for r in 0..A {
                        for (q, val) in X::apply(|q| t[q][r]).iter().enumerate() {
                            // SAFETY: the callers give concurrent calls disjoint channel
                            // groups, and index places each (element, tile, channel) apart.
                            let dst = unsafe { out.part(index(r * A + q, tile, c0), width) };
                            store_lanes(dst, val);
                        }
                    }
                }
            }
        }
    }
}

/// `B^T d B` of every tile of images `first..first + count` of `x` (`(n, c, h, w)`) into `v`:
/// element `e` of tile `t`, channels `c0..c0 + LANES` at `index(e, t, c0)`.
fn transform_input<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    x: &[f32],
    s: &Tiling,
    images: (usize, usize),
    lane_groups: std::ops::Range<usize>,
    index: impl Fn(usize, usize, usize) -> usize,
    v: &DisjointWrites<f32>,
) {
    transform_tiles::<A, A, M, InputOf<T, R, M>>(
        x,
        s.shape.c,
        s,
        images,
        lane_groups,
        (R - 1) / 2,
        index,
        v,
    );
}

/// The forward of images `first..first + count`: `y` (their `(count, o, h, w)` part) = the
/// convolution + `bias`, ReLU'd when asked, with `u` from [`transform_weights`]. `wide`: the
/// images are fewer than the threads (small-batch inference), so each step is split over the
/// threads instead: the input transform by channels, the products by element, the output
/// transform by output channels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_group(
    kernels: TileKernels,
    s: &Tiling,
    x: &[f32],
    u: &[f32],
    bias: &[f32],
    relu: bool,
    (first, count): (usize, usize),
    wide: bool,
    y: &mut [std::mem::MaybeUninit<f32>],
) {
    let args = (kernels, s, x, u, bias, relu, first, count, wide, y);
    match s.variant {
        Variant::F2x3 => forward_by::<4, 3, 2, F23>(args),
        Variant::F4x3 => forward_by::<6, 3, 4, F43>(args),
        Variant::F4x5 => forward_by::<8, 5, 4, F45>(args),
    }
}

type ForwardArgs<'a> = (
    TileKernels,
    &'a Tiling,
    &'a [f32],
    &'a [f32],
    &'a [f32],
    bool,
    usize,
    usize,
    bool,
    &'a mut [std::mem::MaybeUninit<f32>],
);

fn forward_by<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    (kernels, s, x, u, bias, relu, first, count, wide, y): ForwardArgs,
) {
    let xi = A * A;
    let (o, plane) = (s.shape.o, s.plane());
    let per_chunk = s.chunk().min(count);
    // Per element, the tiles' transformed inputs as rows of c, in planes of whole NR-tile
    // groups (the tile kernels read all NR columns).
    let v_plane = (per_chunk * s.tiles()).div_ceil(NR) * NR * s.shape.c;
    let mut v = Scratch::take(xi * v_plane);
    let mut m = Scratch::take(xi * o * per_chunk * s.tiles());
    let panel = xi * s.shape.c * MR;
    for c0 in (0..count).step_by(per_chunk) {
        let cc = per_chunk.min(count - c0);
        let tn = cc * s.tiles();
        let at = |e: usize, tile: usize, ci: usize| e * v_plane + tile * s.shape.c + ci;
        let v_out = DisjointWrites::new(&mut v);
        for_each_range(wide, s.shape.c.div_ceil(LANES), |groups| {
            transform_input::<A, R, M, T>(x, s, (first + c0, cc), groups, at, &v_out)
        });
        // Per element, [o, tiles] = U [o, c] . V^T [c, tiles], into m as [tiles, o].
        let products = |(e, m_e): (usize, &mut [f32])| {
            for (p, u_panel) in u.chunks_exact(panel).enumerate() {
                let (o0, rows) = (p * MR, MR.min(o - p * MR));
                for t0 in (0..tn).step_by(NR) {
                    // SAFETY: u_panel holds s.shape.c columns of MR for element e; v's plane e
                    // holds whole NR groups of tiles of s.shape.c channels; m_e holds tn x o.
                    unsafe {
                        kernels.tile(
                            rows,
                            NR.min(tn - t0),
                            s.shape.c,
                            m_e.as_mut_ptr().add(t0 * o + o0),
                            o,
                            u_panel.as_ptr().add(e * s.shape.c * MR),
                            v.as_ptr().add(at(e, t0, 0)),
                            1,
                            s.shape.c,
                            false,
                        )
                    };
                }
            }
        };
        let m_chunk = &mut m[..xi * tn * o];
        if wide {
            m_chunk
                .par_chunks_mut(tn * o)
                .enumerate()
                .for_each(products);
        } else {
            m_chunk.chunks_mut(tn * o).enumerate().for_each(products);
        }
        // Back from the products to the outputs, LANES output channels at a time.
        let new_buffer = || vec![[0f32; LANES]; M * s.tiles_y() * M * s.tiles_x()];
        let m = &m[..];
        for j in 0..cc {
            let image = &mut y[(c0 + j) * o * plane..][..o * plane];
            let outputs = |out: &mut Vec<Lanes>, (g, dst): (usize, &mut [_])| {
                output_lanes::<A, R, M, T>(s, m, tn, j, g * LANES, bias, relu, out, dst)
            };
            if wide {
                image
                    .par_chunks_mut(LANES * plane)
                    .enumerate()
                    .for_each_init(new_buffer, outputs);
            } else {
                let mut out = new_buffer();
                for part in image.chunks_mut(LANES * plane).enumerate() {
                    outputs(&mut out, part);
                }
            }
        }
    }
}

/// `A^T m A` + bias (ReLU'd when asked) of image `j`'s tiles for output channels `o0..o0 +
/// LANES` (fewer at the end), from the products `m` (per element `[tn, o]`), into `dst` (those
/// channels' planes), through `out` (one image's outputs pixel by pixel, whole tiles).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_lanes<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    s: &Tiling,
    m: &[f32],
    tn: usize,
    j: usize,
    o0: usize,
    bias: &[f32],
    relu: bool,
    out: &mut [Lanes],
    dst: &mut [std::mem::MaybeUninit<f32>],
) {
    let (o, plane, txn, tyn) = (s.shape.o, s.plane(), s.tiles_x(), s.tiles_y());
    let ow = M * txn;
    let width = LANES.min(o - o0);
    let b = lanes(|l| bias.get(o0 + l).copied().unwrap_or(0.0));
    for ty in 0..tyn {
        for tx in 0..txn {
            let tile = j * s.tiles() + ty * txn + tx;
            let e = |e: usize| {
                let at = (e * tn + tile) * o + o0;
                load_lanes(&m[at..at + width])
            };
            two_axes::<A, M, OutputOf<T, R>>(
                |r, q| e(r * A + q),
                |a, bx, val| {
                    out[(M * ty + a) * ow + M * tx + bx] = lanes(|l| {
                        let v = val[l] + b[l];
                        if relu { relu_f32(v) } else { v }
                    });
                },
            );
        }
    }
    for l in 0..width {
        let plane_dst = &mut dst[l * plane..][..plane];
        for (oy, line) in plane_dst.chunks_exact_mut(s.shape.w).enumerate() {
            for (d, px) in line.iter_mut().zip(&out[oy * ow..]) {
                d.write(px[l]);
            }
        }
    }
}

/// The weight gradient's share of images `first..first + count`, as `(m + k - 1)^2` `[o, c]`
/// matrices (still to go through [`finish_weight_grad`]), from the input `x` and output
/// gradient `dy`.
pub(crate) fn weight_grad_group(
    kernels: TileKernels,
    s: &Tiling,
    x: &[f32],
    dy: &[f32],
    first: usize,
    count: usize,
) -> Vec<f32> {
    match s.variant {
        Variant::F2x3 => weight_grad_by::<4, 3, 2, F23>(kernels, s, x, dy, first, count),
        Variant::F4x3 => weight_grad_by::<6, 3, 4, F43>(kernels, s, x, dy, first, count),
        Variant::F4x5 => weight_grad_by::<8, 5, 4, F45>(kernels, s, x, dy, first, count),
    }
}

fn weight_grad_by<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    kernels: TileKernels,
    s: &Tiling,
    x: &[f32],
    dy: &[f32],
    first: usize,
    count: usize,
) -> Vec<f32> {
    let xi = A * A;
    let per_chunk = s.chunk().min(count);
    let c_panels = s.shape.c.div_ceil(MR);
    // The transformed inputs packed as the tile kernels' panels: per element and panel of MR
    // channels, the tiles' MR values.
    let mut v = Scratch::take(xi * c_panels * MR * per_chunk * s.tiles());
    // The transformed output gradients as rows of o per tile, and NR values of slack for the
    // kernels' whole-tile reads.
    let mut d = Scratch::take(xi * s.shape.o * per_chunk * s.tiles() + NR);
    // Written by the first chunk's products, added into by the others.
    let mut p: Vec<f32> = Vec::with_capacity(xi * s.shape.o * s.shape.c);
    for (nth, c0) in (0..count).step_by(per_chunk).enumerate() {
        let cc = per_chunk.min(count - c0);
        let tn = cc * s.tiles();
        let packed = |e: usize, tile: usize, ci: usize| {
            ((e * c_panels + ci / MR) * tn + tile) * MR + ci % MR
        };
        let images = (first + c0, cc);
        let c_groups = 0..s.shape.c.div_ceil(LANES);
        transform_input::<A, R, M, T>(x, s, images, c_groups, packed, &DisjointWrites::new(&mut v));
        // A dy A^T of every output-gradient tile.
        let rows = |e: usize, tile: usize, oi: usize| (e * tn + tile) * s.shape.o + oi;
        transform_tiles::<M, A, M, OutputGradOf<T, R>>(
            dy,
            s.shape.o,
            s,
            images,
            0..s.shape.o.div_ceil(LANES),
            0,
            rows,
            &DisjointWrites::new(&mut d),
        );
        // Per element, [c, o] (+)= V^T [c, tiles] . D [tiles, o], into p as [o, c].
        for e in 0..xi {
            for cp in 0..c_panels {
                let (ci0, channels) = (cp * MR, MR.min(s.shape.c - cp * MR));
                for o0 in (0..s.shape.o).step_by(NR) {
                    // SAFETY: v holds the panel's tn columns of MR; d holds tn rows of o from
                    // rows(e, 0, 0), and NR values of slack past the last; p's capacity holds
                    // xi [o, c] planes; the first chunk writes each element whole (no
                    // accumulation) before the length covers it, later chunks add.
                    unsafe {
                        kernels.tile(
                            channels,
                            NR.min(s.shape.o - o0),
                            tn,
                            p.as_mut_ptr().add((e * s.shape.o + o0) * s.shape.c + ci0),
                            s.shape.c,
                            v.as_ptr().add(packed(e, 0, ci0)),
                            d.as_ptr().add(rows(e, 0, o0)),
                            s.shape.o,
                            1,
                            nth > 0,
                        )
                    };
                }
            }
        }
        if nth == 0 {
            // SAFETY: the first chunk's products wrote all xi * o * c elements.
            unsafe { p.set_len(xi * s.shape.o * s.shape.c) };
        }
    }
    p
}

/// The `(o, c, k, k)` weight gradient `G^T P G` from the summed `[o, c]` matrices `p`.
pub(crate) fn finish_weight_grad(s: &Tiling, p: &[f32]) -> Vec<f32> {
    match s.variant {
        Variant::F2x3 => finish_weight_grad_by::<4, 3, 2, F23>(p, s.shape.o, s.shape.c),
        Variant::F4x3 => finish_weight_grad_by::<6, 3, 4, F43>(p, s.shape.o, s.shape.c),
        Variant::F4x5 => finish_weight_grad_by::<8, 5, 4, F45>(p, s.shape.o, s.shape.c),
    }
}

fn finish_weight_grad_by<const A: usize, const R: usize, const M: usize, T: Transform<A, R, M>>(
    p: &[f32],
    o: usize,
    c: usize,
) -> Vec<f32> {
    // SAFETY: each task writes its kernel's R * R values.
    unsafe {
        new_filled(o * c * R * R, |dw| {
            // LANES kernels (consecutive (o, c) pairs) at a time, one per lane.
            dw.par_chunks_mut(LANES * R * R)
                .enumerate()
                .for_each(|(chunk, dst)| {
                    let (oc0, width) = (chunk * LANES, dst.len() / (R * R));
                    let e = |ri: usize, q: usize| {
                        let at = (ri * A + q) * o * c + oc0;
                        load_lanes(&p[at..at + width])
                    };
                    two_axes::<A, R, KernelGradOf<T, M>>(e, |ky, kx, val| {
                        for (l, &v) in val.iter().take(width).enumerate() {
                            dst[l * R * R + ky * R + kx].write(v);
                        }
                    });
                });
        })
    }
}

#[cfg(test)]
mod tests;
