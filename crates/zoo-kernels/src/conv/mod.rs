//! 2-d convolution on the CPU as matrix products, forward and both gradients.
//!
//! candle 0.11.1 computes the input gradient with `conv_transpose2d` (a loop of dot products on
//! the CPU, 4.7x slower than PyTorch) and copies a strided im2col of the whole batch. Here each
//! image is one GEMM (`y = W . col`), the weight gradient is `sum_n dy_n . col_n^T` and the
//! input gradient is `col2im(W^T . dy_n)`; images are spread over the rayon threads, each with
//! its own column buffer. The bias and an optional ReLU are applied while the GEMM result is
//! copied out, and undone in one pass in the backward. Two other paths take the forward and both
//! gradients where they are faster: 3x3 and 5x5 'same' convolutions with stride 1 on maps of
//! 4 (3x3) or 6 (5x5) and more go through Winograd's algorithm (`winograd`: 2.25x to
//! 6.25x fewer multiply-adds per output), and other convolutions that would multiply padding in a fifth or more
//! of their multiply-adds (small maps) through `tiled`, which skips those. The order:
//! Winograd, then tiled, then the GEMMs. With fewer images than threads (small-batch
//! inference) the forward splits each image instead of the batch: the Winograd steps by
//! channels, elements and output channels, the GEMM path's columns and copy-out by channel
//! around a GEMM split by the gemm crate.
//!
//! The folder: `geometry` (the one description of a convolution), `plan` (which path, and
//! the batch split), `im2col` (the GEMM path's columns), `tiled`, `winograd` and
//! `scratch` (per-thread buffers); this file holds the three custom ops and [`conv2d`].

mod geometry;
mod im2col;
mod plan;
mod prepared;
mod scratch;
mod tiled;
mod winograd;

pub use geometry::ConvGeometry;
use prepared::Derivation;
pub use prepared::PreparedWeights;

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::activation::{fused_relu_grad, relu_f32};
use crate::gemm::{channel_sums, sgemm, sgemm_new};
use crate::{contiguous_f32, new_filled, zeroed};
use geometry::ConvShape;
use im2col::{Taps, col2im, gather_dy, im2col, im2col_channel, tap_ranges};
use plan::{Pass, Plan, for_groups, plan, tiled_plan, winograd_plan};
use scratch::Scratch;

struct Conv2dOp {
    geometry: ConvGeometry,
    relu: bool,
    /// The forward's used-tap weights when it pruned taps, for the input gradient (on a 1x1
    /// map a 512x512 3x3 kernel's centre taps are gathered from all of its 9.4 MB).
    selected: SelectedWeights,
    /// Where the forward keeps its derived weights between calls, and the frozen-weights
    /// generation they are valid for; `None` derives them on every call.
    prepared: Option<(std::sync::Arc<PreparedWeights>, u64)>,
}

type SelectedWeights = std::sync::Mutex<Option<std::sync::Arc<Vec<f32>>>>;

impl Conv2dOp {
    /// `what` derived from the kernel of `s`: kept in and taken from the frozen-weights scope's
    /// [`PreparedWeights`] when the op has one, else `derive()`.
    fn derived(
        &self,
        s: &ConvShape,
        what: Derivation,
        derive: impl FnOnce() -> Vec<f32>,
    ) -> std::sync::Arc<Vec<f32>> {
        match &self.prepared {
            Some((kept, generation)) => kept.get(*generation, s, what, derive),
            None => std::sync::Arc::new(derive()),
        }
    }
}

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
        let s = ConvShape::new(self.name(), l1.dims(), l2.dims(), self.geometry)?;
        let taps = Taps::new(&s);
        if bias.len() != s.o {
            candle_core::bail!(
                "{}: expected a bias of {} values, got shape {:?}",
                self.name(),
                s.o,
                l3.dims()
            )
        }
        let pass = match self.prepared {
            Some(_) => Pass::KeptForward,
            None => Pass::Forward,
        };
        if let Some(p) = winograd_plan(&s, pass) {
            let what = Derivation::Winograd(p.tiling.variant);
            let u = self.derived(&s, what, || {
                winograd::transform_weights(&p.tiling, w, false)
            });
            let (per_image, relu) = (s.o * s.positions(), self.relu);
            // SAFETY: forward_group writes every element of its images' part of y.
            let y = unsafe {
                p.split.fill(per_image, |first, count, dst| {
                    let k = p.kernels;
                    let images = (first, count);
                    let wide = p.split.wide;
                    winograd::forward_group(k, &p.tiling, x, &u, bias, relu, images, wide, dst)
                })
            };
            return Ok((CpuStorage::F32(y), Shape::from((s.n, s.o, s.oh, s.ow))));
        }
        if let Some(t) = tiled_plan(&s, &taps) {
            let wt = self.derived(&s, Derivation::Tiled, || {
                tiled::pack_weights_by_tile(w, &t.shape)
            });
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
        let selected = (!taps.all(&s)).then(|| {
            let what = Derivation::Taps(taps.0.clone());
            self.derived(&s, what, || taps.selected_weights(&s, w).into_owned())
        });
        if let (Some(selected), Ok(mut slot)) = (&selected, self.selected.lock()) {
            *slot = Some(selected.clone());
        }
        let w = selected.as_deref().map_or(w, Vec::as_slice);
        let p = plan(&s);
        let ranges = tap_ranges(&s, &taps);
        let (in_len, pos, rows) = (s.in_len(), s.positions(), taps.rows(&s));
        let relu = self.relu;
        // SAFETY: for_groups hands out every group's part of y, and the copy-out below writes
        // all of it (each of its `count` images, channels and positions).
        let y = unsafe {
            new_filled(s.n * s.o * pos, |y| {
                for_groups(&p, &s, rows, y, s.o * pos, |(col, out), gi, dst| {
                    let first = gi * p.group;
                    let count = p.group.min(s.n - first);
                    let ld = count * pos;
                    // With fewer groups than threads (small batches) the columns and the
                    // copy-out are split over the threads as the product is.
                    let wide = p.gemm_threads > 1;
                    let image = |j: usize| &x[(first + j) * in_len..][..in_len];
                    // A 1x1 convolution with stride 1 and no padding of one image: the
                    // columns are the image itself.
                    let pointwise = s.k == 1 && s.g.stride == 1 && s.g.padding == 0;
                    let columns: &[f32] = if pointwise && count == 1 {
                        image(0)
                    } else {
                        let taps = ranges.len();
                        let channel = |(c, rows_c): (usize, &mut [f32])| {
                            for j in 0..count {
                                let src = &image(j)[c * s.h * s.w..][..s.h * s.w];
                                im2col_channel(src, &s, &ranges, rows_c, ld, j * pos);
                            }
                        };
                        let col = &mut col[..rows * ld];
                        if wide {
                            col.par_chunks_mut(taps * ld).enumerate().for_each(channel);
                        } else {
                            col.chunks_mut(taps * ld).enumerate().for_each(channel);
                        }
                        col
                    };
                    // [o, count*pos] = [o, rows] . [rows, count*pos]
                    sgemm(
                        s.o,
                        ld,
                        rows,
                        w,
                        false,
                        columns,
                        false,
                        out,
                        false,
                        p.gemm_threads,
                    );
                    let out = &out[..];
                    for j in 0..count {
                        let copy_out = |(o, dst): (usize, &mut [std::mem::MaybeUninit<f32>])| {
                            let (src, b) = (&out[o * ld + j * pos..][..pos], bias[o]);
                            if relu {
                                for (d, &v) in dst.iter_mut().zip(src) {
                                    d.write(relu_f32(v + b));
                                }
                            } else {
                                for (d, &v) in dst.iter_mut().zip(src) {
                                    d.write(v + b);
                                }
                            }
                        };
                        let planes = &mut dst[j * s.o * pos..][..s.o * pos];
                        if wide {
                            planes.par_chunks_mut(pos).enumerate().for_each(copy_out);
                        } else {
                            planes.chunks_mut(pos).enumerate().for_each(copy_out);
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
        let s = ConvShape::new(self.name(), &self.input, l1.dims(), self.geometry)?;
        let taps = Taps::new(&s);
        if let Some(p) = winograd_plan(&s, Pass::Gradient) {
            // Stride 1: the forward convolution of dy with the flipped, transposed kernels.
            let tiling = p.tiling.transposed();
            let u = winograd::transform_weights(&tiling, w, true);
            let in_len = s.in_len();
            let zeros = vec![0f32; s.c];
            // SAFETY: forward_group writes every element of its images' part of dx.
            let dx = unsafe {
                p.split.fill(in_len, |first, count, dst| {
                    let k = p.kernels;
                    let images = (first, count);
                    winograd::forward_group(k, &tiling, dy, &u, &zeros, false, images, false, dst)
                })
            };
            return Ok((CpuStorage::F32(dx), Shape::from(self.input.as_slice())));
        }
        if let Some(t) = tiled_plan(&s, &taps) {
            let wr = tiled::pack_weights_by_row(w, &t.shape);
            let in_len = s.in_len();
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
            Some(selected) if !taps.all(&s) && selected.len() == s.o * taps.rows(&s) => {
                Cow::Borrowed(selected.as_slice())
            }
            _ => taps.selected_weights(&s, w),
        };
        let w = &*w;
        let p = plan(&s);
        let ranges = tap_ranges(&s, &taps);
        let (in_len, pos, rows) = (s.in_len(), s.positions(), taps.rows(&s));
        // Each image's gradient is zeroed by its own task right before col2im adds into it
        // (in cache), not by one zero-filled allocation of the whole batch up front.
        // SAFETY: for_groups hands out every group's part of dx, and each of its `count`
        // images is zeroed whole below.
        let dx = unsafe {
            new_filled(s.n * in_len, |dx| {
                for_groups(&p, &s, rows, dx, in_len, |(col, dy_group), gi, dst| {
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
                        col2im(col, &s, &ranges, image, ld, j * pos);
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
        let c = l1.dims().get(1).copied().unwrap_or(0);
        let s = ConvShape::new(
            self.name(),
            l1.dims(),
            &[self.out, c, self.kernel, self.kernel],
            self.geometry,
        )?;
        let taps = Taps::new(&s);
        if let Some(p) = winograd_plan(&s, Pass::Gradient) {
            let partials = p.split.map(|first, count| {
                winograd::weight_grad_group(p.kernels, &p.tiling, x, dy, first, count)
            });
            let sum = add_partials(partials);
            let dw = winograd::finish_weight_grad(&p.tiling, &sum);
            return Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))));
        }
        if let Some(t) = tiled_plan(&s, &taps) {
            let partials = t.split.map(|first, count| {
                tiled::weight_grad_group(t.kernels, &t.shape, &t.classes, x, dy, first, count)
            });
            let sum = add_partials(partials);
            let dw = tiled::unpack_weight_grad(&sum, &t.shape);
            return Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))));
        }
        let p = plan(&s);
        let dw = taps.full_weight_grad(&s, weight_grad_reduce(x, dy, &s, &taps, &p));
        Ok((CpuStorage::F32(dw), Shape::from((s.o, s.c, s.k, s.k))))
    }
}

/// `sum over groups of dy_group . col_group^T`: each thread's first GEMM writes its partial sum
/// (no zero-filled accumulator), later ones add into it, and the partials are added at the end.
fn weight_grad_reduce(x: &[f32], dy: &[f32], s: &ConvShape, taps: &Taps, p: &Plan) -> Vec<f32> {
    let ranges = tap_ranges(s, taps);
    let (in_len, pos, rows) = (s.in_len(), s.positions(), taps.rows(s));
    let one_group = |state: &mut (Scratch, Scratch, Option<Vec<f32>>), gi: usize| {
        let (col, dy_group, acc) = state;
        let first = gi * p.group;
        let count = p.group.min(s.n - first);
        let ld = count * pos;
        for j in 0..count {
            im2col(
                &x[(first + j) * in_len..][..in_len],
                s,
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
    conv2d_prepared(x, weight, bias, geometry, relu, None)
}

/// [`conv2d`], keeping the weights the forward derives from `weight` in `prepared` for the
/// frozen-weights generation given with it, and reusing them on later calls of that generation.
/// The caller vouches that `weight` does not change within a generation (`zoo_nn::frozen`).
pub fn conv2d_prepared(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    relu: bool,
    prepared: Option<(&std::sync::Arc<PreparedWeights>, u64)>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2dOp {
            geometry,
            relu,
            selected: SelectedWeights::default(),
            prepared: prepared.map(|(kept, generation)| (kept.clone(), generation)),
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
            let s = ConvShape::new("t", &x, &[1, x[1], k, k], ConvGeometry { stride, padding });
            Taps::new(&s.unwrap()).0
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
            let s = ConvShape::new("t", &x, &[o, x[1], k, k], g).unwrap();
            on_threads(2, || tiled_plan(&s, &Taps::new(&s)).is_some())
        };
        // NiN's 5x5 on 7x7 (31% of the im2col work on padding) and the test case above.
        assert!(tiled([64, 96, 7, 7], 256, 5, 2));
        assert!(tiled([64, 2, 3, 3], 3, 3, 1));
        // 32x32 maps (4%), a 1x1 kernel, a 1x1 map (taps pruned), too many weights, one image.
        assert!(!tiled([64, 64, 32, 32], 128, 3, 1));
        assert!(!tiled([64, 96, 7, 7], 96, 1, 0));
        assert!(!tiled([64, 512, 1, 1], 512, 3, 1));
        assert!(!tiled([64, 512, 2, 2], 512, 3, 1));
        // Fewer than 8 images a thread: the GEMMs, which read the weights in place.
        assert!(!tiled([15, 96, 7, 7], 256, 5, 2));
        assert!(tiled([16, 96, 7, 7], 256, 5, 2));
        assert!(!tiled([1, 96, 7, 7], 256, 5, 2));
    }

    #[test]
    fn winograd_takes_same_3x3s_on_maps_of_4_and_5x5s_on_maps_of_6() {
        let winograd = |x: [usize; 4], o: usize, k: usize, stride: usize, padding: usize| {
            let g = ConvGeometry { stride, padding };
            let s = ConvShape::new("w", &x, &[o, x[1], k, k], g).unwrap();
            on_threads(2, || winograd_plan(&s, Pass::Gradient).is_some())
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
        // Fewer than 8 tiles a thread's group: NiN's 5x5 on 7x7 (4 tiles an image) at 2
        // images, 4 at 4.
        assert!(!winograd([2, 96, 7, 7], 256, 5, 1, 2));
        assert!(winograd([4, 96, 7, 7], 256, 5, 1, 2));
    }

    #[test]
    fn kept_weights_are_reused_within_a_generation_and_derived_anew_in_the_next() -> Result<()> {
        // (input, output channels, kernel, padding) on each path that derives weights: the used
        // taps (a 3x3 on a 1x1 map), Winograd F(4x4, 3x3) at batch 1 (split inside the image),
        // F(2x2, 3x3) and F(4x4, 5x5) on two images, and the tiled path (16 images of 3x3
        // maps).
        let cases = [
            ([2usize, 6, 1, 1], 5, 3, 1, "taps"),
            ([1, 16, 24, 24], 16, 3, 1, "winograd"),
            ([2, 16, 6, 7], 17, 3, 1, "winograd"),
            ([2, 16, 12, 12], 16, 5, 2, "winograd"),
            ([16, 8, 3, 3], 12, 3, 1, "tiled"),
        ];
        for (seed, (x_shape, o, k, padding, path)) in (0u64..).zip(cases) {
            let g = ConvGeometry { stride: 1, padding };
            let w_shape = [o, x_shape[1], k, k];
            let s = ConvShape::new("t", &x_shape, &w_shape, g)?;
            let taken = on_threads(2, || match path {
                "taps" => !Taps::new(&s).all(&s),
                "winograd" => winograd_plan(&s, Pass::KeptForward).is_some(),
                _ => tiled_plan(&s, &Taps::new(&s)).is_some(),
            });
            assert!(taken, "{x_shape:?} -> {o}: expected the {path} path");
            let x = test_input(&x_shape, 10 * seed)?;
            let (w1, w2) = (
                test_input(&w_shape, 10 * seed + 1)?,
                test_input(&w_shape, 10 * seed + 2)?,
            );
            let b = test_input(&[o], 10 * seed + 3)?;
            let kept = std::sync::Arc::new(PreparedWeights::default());
            let run = |w: &Tensor, generation: Option<u64>| {
                let prepared = generation.map(|g| (&kept, g));
                on_threads(2, || conv2d_prepared(&x, w, &b, g, true, prepared))
            };
            let what = format!("{path} {x_shape:?} -> {o}");
            let (plain1, plain2) = (run(&w1, None)?, run(&w2, None)?);
            assert_close(
                &format!("{what}: kept, first call"),
                &run(&w1, Some(7))?,
                &plain1,
                1e-6,
            );
            // The kernel changed against the scope's contract: the kept weights come back.
            assert_close(
                &format!("{what}: kept, second call"),
                &run(&w2, Some(7))?,
                &plain1,
                1e-6,
            );
            assert_close(
                &format!("{what}: next generation"),
                &run(&w2, Some(8))?,
                &plain2,
                1e-6,
            );
        }
        Ok(())
    }

    /// `f` on a pool of `threads` threads (the small-batch paths depend on the thread count).
    fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    /// `conv2d` without and with the fused ReLU, forward and the three gradients, on a pool of
    /// `threads`, against candle's conv2d + bias (+ relu) within 1e-4.
    fn matches_candle_on_threads(
        threads: usize,
        x_shape: [usize; 4],
        o: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) {
        let c = x_shape[1];
        let x = Var::from_tensor(&test_input(&x_shape, 1).unwrap()).unwrap();
        let w = Var::from_tensor(&test_input(&[o, c, k, k], 2).unwrap()).unwrap();
        let b = Var::from_tensor(&test_input(&[o], 4).unwrap()).unwrap();
        let g = ConvGeometry { stride, padding };
        for relu in [false, true] {
            let what = format!("{x_shape:?} o{o} k{k} s{stride} p{padding} relu {relu}");
            let y = on_threads(threads, || {
                conv2d(x.as_tensor(), w.as_tensor(), b.as_tensor(), g, relu).unwrap()
            });
            let y_ref = x
                .as_tensor()
                .conv2d(w.as_tensor(), padding, stride, 1, 1)
                .unwrap()
                .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
            assert_eq!(y.dims(), y_ref.dims(), "{what}");
            assert_close(&format!("{what} forward"), &y, &y_ref, 1e-4);
            let upstream = test_input(y.dims(), 3).unwrap();
            let grads = on_threads(threads, || weighted_sum_grads(&y, &upstream).unwrap());
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

    #[test]
    fn fewer_images_than_threads_split_the_winograd_forward_over_its_tiles() {
        let shape = |x: [usize; 4], o: usize, k: usize, padding: usize| {
            let g = ConvGeometry { stride: 1, padding };
            ConvShape::new("t", &x, &[o, x[1], k, k], g).unwrap()
        };
        on_threads(4, || {
            for n in [1, 3] {
                // 56x56 maps (196 tiles an image): the forward splits each image, the
                // gradients go to the GEMMs.
                let s = shape([n, 64, 56, 56], 64, 3, 1);
                let p = winograd_plan(&s, Pass::Forward).unwrap();
                assert!(p.split.wide && p.split.group == n, "{n} images");
                assert!(winograd_plan(&s, Pass::Gradient).is_none(), "{n} images");
                // Small maps: the GEMMs, not the tiled path.
                let s = shape([n, 96, 7, 7], 256, 3, 1);
                assert!(tiled_plan(&s, &Taps::new(&s)).is_none(), "{n} images");
            }
            // Too few tiles for the transformed weights to pay: 14x14 maps (16 tiles), 8x8
            // (4), three 8x8 images.
            for x in [[1, 256, 14, 14], [1, 64, 8, 8], [3, 64, 8, 8]] {
                let s = shape(x, x[1], 3, 1);
                assert!(winograd_plan(&s, Pass::Forward).is_none(), "{x:?}");
                // Unless they are kept between calls (a frozen-weights scope).
                let p = winograd_plan(&s, Pass::KeptForward).unwrap();
                assert!(p.split.wide && p.split.group == x[0], "{x:?}");
            }
            // One 4x4 map is 4 tiles of F(2x2, 3x3): kept, it takes the Winograd path too.
            let s = shape([1, 64, 4, 4], 64, 3, 1);
            let p = winograd_plan(&s, Pass::KeptForward).unwrap();
            assert_eq!(p.tiling.variant, winograd::Variant::F2x3);
            // As many images as threads: one group per thread, in both passes.
            let s = shape([4, 64, 16, 16], 64, 3, 1);
            let p = winograd_plan(&s, Pass::Forward).unwrap();
            assert!(!p.split.wide && p.split.group == 1);
            assert!(winograd_plan(&s, Pass::Gradient).is_some());
        });
    }

    #[test]
    fn small_batches_split_over_the_threads_match_candle() {
        // Fewer images than the pool's 4 threads, on every path: Winograd F(4x4, 3x3),
        // F(2x2, 3x3) and F(4x4, 5x5) split inside the images (odd maps, channels not a
        // multiple of 8 or 16), the GEMMs (small maps, a 1x1 read in place, a strided 7x7, an
        // 11x11 stride 4, a 3-channel input), each forward against candle's; the gradients
        // (on the GEMM path) too.
        for (x_shape, o, k, stride, padding) in [
            ([1usize, 20, 23, 25], 19, 3, 1, 1),
            ([3, 16, 6, 7], 17, 3, 1, 1),
            ([1, 24, 23, 21], 33, 5, 1, 2),
            ([2, 5, 7, 7], 9, 5, 1, 2),
            ([1, 7, 3, 3], 13, 3, 1, 1),
            ([1, 24, 6, 6], 40, 1, 1, 0),
            ([2, 24, 6, 6], 40, 1, 1, 0),
            ([1, 3, 23, 21], 8, 7, 2, 3),
            ([1, 3, 35, 35], 6, 11, 4, 1),
            ([1, 3, 12, 12], 16, 3, 1, 1),
        ] {
            matches_candle_on_threads(4, x_shape, o, k, stride, padding);
        }
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
            // The tiled path (a fifth or more of the multiply-adds on padding, 8 images or more
            // a thread): 2x2 and 3x3 maps, NiN's 5x5 on 7x7, stride 2, padding 2 (border
            // outputs read only padding), a partial last panel and group.
            ([16, 3, 2, 2], 4, 3, 1, 1),
            ([16, 5, 3, 3], 7, 3, 1, 1),
            ([16, 4, 7, 7], 5, 5, 1, 2),
            ([16, 3, 7, 7], 4, 3, 2, 1),
            ([16, 2, 5, 6], 3, 3, 1, 2),
            ([17, 3, 4, 4], 5, 3, 1, 1),
            ([16, 3, 2, 2], 3, 3, 1, 2),
            ([16, 3, 2, 2], 3, 3, 1, 3),
            // More images than any machine has threads: the tiled path (see the test below).
            ([64, 2, 3, 3], 3, 3, 1, 1),
            // The Winograd paths (odd sizes: partial tiles on both edges; several chunks of
            // images per thread): F(4x4, 3x3), F(2x2, 3x3) on 4x4 maps, F(4x4, 5x5).
            ([64, 16, 9, 11], 16, 3, 1, 1),
            ([64, 16, 4, 5], 17, 3, 1, 1),
            ([64, 16, 7, 7], 16, 5, 1, 2),
        ] {
            // On 2 threads: the paths taken depend on the images per thread.
            matches_candle_on_threads(2, x_shape, o, k, stride, padding);
        }
    }
}
