//! Tests of the Winograd convolutions: every variant against direct sums in f64, on each tile
//! kernel the CPU has.

use super::*;
use crate::conv::geometry::ConvGeometry;

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
fn f23_forward_and_gradients_match_the_direct_convolution() {
    matches_the_direct_convolution(Variant::F2x3, 3);
}

#[test]
fn f43_forward_and_gradients_match_the_direct_convolution() {
    matches_the_direct_convolution(Variant::F4x3, 3);
}

#[test]
fn f45_forward_and_gradients_match_the_direct_convolution() {
    matches_the_direct_convolution(Variant::F4x5, 5);
}

#[allow(clippy::needless_range_loop)] // the direct sums read best as index loops
fn matches_the_direct_convolution(variant: Variant, k: usize) {
    // Odd sizes (partial tiles on the right and bottom), and enough images for three chunks
    // of 9 (30 tiles each, CHUNK_TILES 256), the last one partial; 19 input channels and
    // 21 outputs (a second, partial panel of MR and a partial group of lanes); both tile
    // kernels.
    let (n, c, h, w, o) = (20, 19, 9, 11, 21);
    let g = ConvGeometry {
        stride: 1,
        padding: k / 2,
    };
    let shape = ConvShape::new("winograd", &[n, c, h, w], &[o, c, k, k], g).unwrap();
    let s = Tiling { shape, variant };
    let (kk, pad) = (k * k, (k / 2) as isize);
    let x = values(n * c * h * w, 1);
    let wt = values(o * c * kk, 2);
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
    let mut dw = vec![0f64; o * c * kk];
    for j in 0..n {
        for oi in 0..o {
            for oy in 0..h {
                for ox in 0..w {
                    let at = ((j * o + oi) * h + oy) * w + ox;
                    let mut sum = bias[oi] as f64;
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    oy as isize + ky as isize - pad,
                                    ox as isize + kx as isize - pad,
                                );
                                let at_w = (oi * c + ci) * kk + ky * k + kx;
                                sum += wt[at_w] as f64 * input(j, ci, iy, ix);
                                dw[at_w] += dy[at] as f64 * input(j, ci, iy, ix);
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    dx[((j * c + ci) * h + iy as usize) * w + ix as usize] +=
                                        dy[at] as f64 * wt[at_w] as f64;
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
    use crate::microkernel::Isa;
    for kernels in Isa::ALL
        .into_iter()
        .filter(Isa::supported)
        .map(Isa::kernels)
    {
        matches_with(kernels, &s, k, groups, &x, &wt, &bias, &dy, (&y, &dx, &dw));
    }
}

/// The forward and both gradients of the group split `groups`, against the direct sums.
#[allow(clippy::too_many_arguments)]
fn matches_with(
    kernels: TileKernels,
    s: &Tiling,
    k: usize,
    groups: [(usize, usize); 2],
    x: &[f32],
    wt: &[f32],
    bias: &[f32],
    dy: &[f32],
    (y, dx, dw): (&[f64], &[f64], &[f64]),
) {
    let (n, c, h, w, o) = (
        dy.len() / (s.shape.o * s.shape.h * s.shape.w),
        s.shape.c,
        s.shape.h,
        s.shape.w,
        s.shape.o,
    );
    let xi = (s.variant.m() + k - 1) * (s.variant.m() + k - 1);
    let u = transform_weights(s, wt, false);
    // Each group on one thread, and each group's steps split over the threads (small batches).
    for wide in [false, true] {
        let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); n * o * h * w];
        for (first, count) in groups {
            let per_image = o * h * w;
            let part = &mut got[first * per_image..][..count * per_image];
            forward_group(kernels, s, x, &u, bias, true, (first, count), wide, part);
        }
        // SAFETY: forward_group wrote every element (the groups cover all images).
        let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
        assert_close(&format!("forward, wide {wide}"), &got, y);
    }

    let t = s.transposed();
    let u = transform_weights(&t, wt, true);
    let zeros = vec![0f32; c];
    let mut got = vec![std::mem::MaybeUninit::new(f32::NAN); n * c * h * w];
    for (first, count) in groups {
        let per_image = c * h * w;
        let part = &mut got[first * per_image..][..count * per_image];
        forward_group(
            kernels,
            &t,
            dy,
            &u,
            &zeros,
            false,
            (first, count),
            false,
            part,
        );
    }
    // SAFETY: forward_group wrote every element (the groups cover all images).
    let got: Vec<f32> = got.iter().map(|v| unsafe { v.assume_init() }).collect();
    assert_close("input gradient", &got, dx);

    let mut sum = vec![0f32; xi * o * c];
    for (first, count) in groups {
        for (a, b) in sum
            .iter_mut()
            .zip(weight_grad_group(kernels, s, x, dy, first, count))
        {
            *a += b;
        }
    }
    assert_close("weight gradient", &finish_weight_grad(s, &sum), dw);
}
