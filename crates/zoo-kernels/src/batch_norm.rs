//! Training-mode batch normalisation as one CPU op with an analytic backward.
//!
//! candle 0.11.1 builds training-mode BatchNorm from about fifteen small tensor ops (transpose,
//! copies, means, broadcasts) and differentiates each: 28x slower than PyTorch for
//! 32x64x24x24. Here the forward is two passes per channel (statistics, then the affine map)
//! and the backward uses the closed form
//! `dx = w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`, `dw = sum(dy * xhat)`,
//! `db = sum(dy)`. Statistics accumulate in f64 and are computed once per forward; the
//! evaluation form (running statistics) and a following ReLU are the same kernel. Given a
//! [`SumOverRanks`], the statistics and the backward's two sums are taken over the global
//! batch of data-parallel ranks (synchronised BatchNorm).

use crate::activation::relu_f32;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::activation::fused_relu_grad;
use crate::{contiguous_f32, new_filled};

struct Dims {
    n: usize,
    c: usize,
    plane: usize,
}

fn dims(op: &str, layout: &Layout) -> Result<Dims> {
    match layout.dims() {
        [n, c, rest @ ..] if *n * rest.iter().product::<usize>() > 0 => Ok(Dims {
            n: *n,
            c: *c,
            plane: rest.iter().product(),
        }),
        d => candle_core::bail!(
            "{op}: expected a non-empty (batch, channels, ...) tensor, got {d:?}"
        ),
    }
}

/// Lanes of the f64 sums below: independent running sums the compiler keeps in vector
/// registers (one running sum is a chain of dependent additions, four cycles per element).
const LANES: usize = 8;

/// `sum(f(x))` over a slice in [`LANES`] f64 lanes.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f64>()
}

/// `(sum(dy), sum(dy * (x - mean)))` over two equal slices in [`LANES`] f64 lanes.
#[inline]
fn lane_grad_sums(x: &[f32], dy: &[f32], mean: f64) -> (f64, f64) {
    let (mut sum_dy, mut sum_dy_dev) = ([0f64; LANES], [0f64; LANES]);
    let (mut xs, mut gs) = (x.chunks_exact(LANES), dy.chunks_exact(LANES));
    for (xc, gc) in (&mut xs).zip(&mut gs) {
        for i in 0..LANES {
            let g = gc[i] as f64;
            sum_dy[i] += g;
            sum_dy_dev[i] += g * (xc[i] as f64 - mean);
        }
    }
    let (mut a, mut b) = (sum_dy.iter().sum::<f64>(), sum_dy_dev.iter().sum::<f64>());
    for (&xv, &g) in xs.remainder().iter().zip(gs.remainder()) {
        a += g as f64;
        b += g as f64 * (xv as f64 - mean);
    }
    (a, b)
}

/// Per-channel mean and biased variance (two passes, f64 accumulation).
fn channel_stats(x: &[f32], d: &Dims) -> Vec<(f64, f64)> {
    let count = (d.n * d.plane) as f64;
    (0..d.c)
        .into_par_iter()
        .map(|c| {
            let planes =
                || (0..d.n).map(move |n| &x[(n * d.c + c) * d.plane..(n * d.c + c + 1) * d.plane]);
            let mean = planes().map(|p| lane_sum(p, |v| v as f64)).sum::<f64>() / count;
            let var = planes()
                .map(|p| lane_sum(p, |v| (v as f64 - mean).powi(2)))
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect()
}

/// Per-channel `(sum(dy), sum(dy * xhat))`.
fn grad_sums(x: &[f32], dy: &[f32], stats: &[(f64, f64)], eps: f64, d: &Dims) -> Vec<(f64, f64)> {
    (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (mean, var) = stats[c];
            let inv_std = 1.0 / (var + eps).sqrt();
            let (mut sum_dy, mut sum_dy_dev) = (0f64, 0f64);
            for n in 0..d.n {
                let range = (n * d.c + c) * d.plane..(n * d.c + c + 1) * d.plane;
                let (a, b) = lane_grad_sums(&x[range.clone()], &dy[range], mean);
                sum_dy += a;
                sum_dy_dev += b;
            }
            (sum_dy, sum_dy_dev * inv_std)
        })
        .collect()
}

/// Per-channel `(mean, biased variance)`.
type Stats = Vec<(f64, f64)>;

/// Sums a vector element-wise over the ranks of a data-parallel group, in place: every rank
/// gets the same result. What synchronised BatchNorm needs of the group (zoo-core wraps its
/// collective in one).
pub type SumOverRanks = Arc<dyn Fn(&mut [f64]) -> Result<()> + Send + Sync>;

/// Per-channel mean and biased variance over the global batch of `group`'s ranks: two
/// passes, each a local f64 sum then a sum over ranks. Returns them and the global count.
fn group_stats(x: &[f32], d: &Dims, group: &SumOverRanks) -> Result<(Stats, f64)> {
    let channel =
        |c: usize| (0..d.n).map(move |n| (n * d.c + c) * d.plane..(n * d.c + c + 1) * d.plane);
    let mut sums: Vec<f64> = (0..d.c)
        .into_par_iter()
        .map(|c| channel(c).map(|r| lane_sum(&x[r], |v| v as f64)).sum())
        .collect();
    sums.push((d.n * d.plane) as f64);
    group(&mut sums)?;
    let count = sums[d.c];
    if count < 2.0 {
        candle_core::bail!(
            "synchronised BatchNorm: {count} value(s) per channel over all ranks; training needs \
             more than one"
        )
    }
    let means: Vec<f64> = sums[..d.c].iter().map(|s| s / count).collect();
    let mut squares: Vec<f64> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mean = means[c];
            channel(c)
                .map(|r| lane_sum(&x[r], |v| (v as f64 - mean).powi(2)))
                .sum()
        })
        .collect();
    group(&mut squares)?;
    let stats = means
        .into_iter()
        .zip(squares)
        .map(|(m, s)| (m, s / count))
        .collect();
    Ok((stats, count))
}

/// `y = (x - mean) / sqrt(var + eps) * w + b`, then ReLU when `relu`: (x, w, b) -> y.
/// With `fixed` statistics (evaluation: the running ones), else with the batch's, which the
/// forward computes once and leaves in `batch` for the running-statistics update and the
/// backward.
struct BatchNormOp {
    eps: f64,
    relu: bool,
    fixed: Option<Stats>,
    /// The batch's statistics and the number of values per channel they are over.
    batch: Arc<Mutex<(Stats, f64)>>,
    /// Statistics and backward sums over data-parallel ranks.
    group: Option<SumOverRanks>,
}

impl BatchNormOp {
    fn stats(&self) -> Stats {
        match &self.fixed {
            Some(stats) => stats.clone(),
            None => self.batch.lock().map(|s| s.0.clone()).unwrap_or_default(),
        }
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "zoo-batch-norm"
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
        let b = contiguous_f32(self.name(), s3, l3)?;
        let d = dims(self.name(), l1)?;
        if w.len() != d.c || b.len() != d.c {
            candle_core::bail!(
                "{}: expected weight and bias of {} values, got {:?} and {:?}",
                self.name(),
                d.c,
                l2.dims(),
                l3.dims()
            )
        }
        let stats = match &self.fixed {
            Some(stats) => stats.clone(),
            None => {
                let (stats, count) = match &self.group {
                    Some(group) => group_stats(x, &d, group)?,
                    None => (channel_stats(x, &d), (d.n * d.plane) as f64),
                };
                if let Ok(mut batch) = self.batch.lock() {
                    *batch = (stats.clone(), count);
                }
                stats
            }
        };
        if stats.len() != d.c {
            candle_core::bail!(
                "{}: {} channel statistics for {} channels",
                self.name(),
                stats.len(),
                d.c
            )
        }
        let coeffs: Vec<(f32, f32)> = stats
            .iter()
            .enumerate()
            .map(|(c, &(mean, var))| {
                let scale = w[c] as f64 / (var + self.eps).sqrt();
                (scale as f32, (b[c] as f64 - mean * scale) as f32)
            })
            .collect();
        let relu = self.relu;
        // SAFETY: the planes of y and x line up one to one: every element of y is written.
        let y = unsafe {
            new_filled(x.len(), |y| {
                y.par_chunks_mut(d.plane)
                    .zip(x.par_chunks(d.plane))
                    .enumerate()
                    .for_each(|(p, (dst, src))| {
                        let (scale, shift) = coeffs[p % d.c];
                        if relu {
                            for (o, &v) in dst.iter_mut().zip(src) {
                                o.write(relu_f32(v * scale + shift));
                            }
                        } else {
                            for (o, &v) in dst.iter_mut().zip(src) {
                                o.write(v * scale + shift);
                            }
                        }
                    })
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let stats = self.stats();
        // One pass for both parameter gradients: [sum(dy * xhat), sum(dy)].
        let sums = x.apply_op2_no_bwd(
            &dy,
            &BatchNormParamGradOp {
                eps: self.eps,
                stats: stats.clone(),
            },
        )?;
        let dx = if x.track_op() {
            // Over ranks, dx takes the global batch's sums; the parameters' gradients stay
            // this rank's (data-parallel training sums them with the others).
            let (input_sums, count) = match (&self.group, self.fixed.is_none()) {
                (Some(group), true) => {
                    let mut global = sums.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                    group(&mut global)?;
                    let global: Vec<f32> = global.iter().map(|&v| v as f32).collect();
                    let count = self.batch.lock().map(|s| s.1).unwrap_or(0.0);
                    (
                        Tensor::from_vec(global, sums.shape(), sums.device())?,
                        Some(count),
                    )
                }
                _ => (sums.clone(), None),
            };
            let w_and_sums = Tensor::cat(&[&w.detach().unsqueeze(0)?, &input_sums], 0)?;
            Some(x.apply_op3_no_bwd(
                &w_and_sums,
                &dy,
                &BatchNormInputGradOp {
                    eps: self.eps,
                    stats,
                    batch_stats: self.fixed.is_none(),
                    count,
                },
            )?)
        } else {
            None
        };
        Ok((dx, Some(sums.get(0)?), Some(sums.get(1)?)))
    }
}

/// (x, [w; sum(dy * xhat); sum(dy)], dy) -> dx: with batch statistics
/// `w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))`, with fixed ones `w / sigma * dy`.
struct BatchNormInputGradOp {
    eps: f64,
    stats: Stats,
    batch_stats: bool,
    /// Values per channel the sums are over, when not this tensor's (the global batch).
    count: Option<f64>,
}

impl CustomOp3 for BatchNormInputGradOp {
    fn name(&self) -> &'static str {
        "zoo-batch-norm-input-grad"
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
        let w_and_sums = contiguous_f32(self.name(), s2, l2)?;
        let dy = contiguous_f32(self.name(), s3, l3)?;
        let d = dims(self.name(), l1)?;
        if w_and_sums.len() != 3 * d.c || self.stats.len() != d.c {
            candle_core::bail!(
                "{}: per-channel inputs do not fit {} channels",
                self.name(),
                d.c
            )
        }
        let (w, rest) = w_and_sums.split_at(d.c);
        let (sum_dy_xhat, sum_dy) = rest.split_at(d.c);
        let count = self.count.unwrap_or((d.n * d.plane) as f64);
        if dy.len() != x.len() {
            candle_core::bail!(
                "{}: gradient {:?} does not fit input {:?}",
                self.name(),
                l3.dims(),
                l1.dims()
            )
        }
        // dx = k * (dy - a - xhat * m2), xhat = (x - mean) * inv_std, with the per-channel
        // factors folded in f64 and the element-wise part in f32:
        // dx = k * dy + slope * (x - mean) + offset.
        let coeffs: Vec<(f32, f32, f32, f32)> = (0..d.c)
            .map(|c| {
                let (mean, var) = self.stats[c];
                let inv_std = 1.0 / (var + self.eps).sqrt();
                let (a, m2) = if self.batch_stats {
                    (sum_dy[c] as f64 / count, sum_dy_xhat[c] as f64 / count)
                } else {
                    (0.0, 0.0)
                };
                let k = w[c] as f64 * inv_std;
                let slope = -k * m2 * inv_std;
                (k as f32, slope as f32, mean as f32, (-k * a) as f32)
            })
            .collect();
        // SAFETY: dx, x and dy have one length (checked above) and their planes line up: every
        // element of dx is written.
        let dx = unsafe {
            new_filled(x.len(), |dx| {
                dx.par_chunks_mut(d.plane)
                    .zip(x.par_chunks(d.plane).zip(dy.par_chunks(d.plane)))
                    .enumerate()
                    .for_each(|(p, (dst, (xs, gs)))| {
                        let (k, slope, mean, offset) = coeffs[p % d.c];
                        for ((o, &xv), &g) in dst.iter_mut().zip(xs).zip(gs) {
                            o.write(k * g + slope * (xv - mean) + offset);
                        }
                    })
            })
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// (x, dy) -> (2, C): `[sum(dy * xhat), sum(dy)]`, the gradients of weight and bias.
struct BatchNormParamGradOp {
    eps: f64,
    stats: Stats,
}

impl CustomOp2 for BatchNormParamGradOp {
    fn name(&self) -> &'static str {
        "zoo-batch-norm-param-grad"
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
        let d = dims(self.name(), l1)?;
        if self.stats.len() != d.c {
            candle_core::bail!("{}: statistics do not fit {} channels", self.name(), d.c)
        }
        let sums = grad_sums(x, dy, &self.stats, self.eps, &d);
        let out: Vec<f32> = sums
            .iter()
            .map(|s| s.1 as f32)
            .chain(sums.iter().map(|s| s.0 as f32))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from((2, d.c))))
    }
}

/// Training-mode batch normalisation of a `(N, C, ...)` f32 CPU tensor with batch statistics,
/// then ReLU when `relu`; differentiable in `x`, `weight` and `bias`. Returns the output and
/// the batch's per-channel `(mean, biased variance)` as a `(2, C)` tensor (for the running
/// statistics, which are the caller's business).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor)> {
    let (y, stats, _) = batch_norm_train_over(x, weight, bias, eps, relu, None)?;
    Ok((y, stats))
}

/// [`batch_norm_train`] over the global batch of `group`'s data-parallel ranks (none: this
/// tensor's batch): statistics, and the backward's sums for the input's gradient, are summed
/// over ranks. Returns the output, the `(2, C)` statistics and the values per channel they are
/// over.
pub fn batch_norm_train_over(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
    group: Option<SumOverRanks>,
) -> Result<(Tensor, Tensor, f64)> {
    let batch = Arc::new(Mutex::new((Vec::new(), 0.0)));
    let op = BatchNormOp {
        eps,
        relu,
        fixed: None,
        batch: batch.clone(),
        group,
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let (stats, count) = batch
        .lock()
        .map_err(|_| candle_core::Error::Msg("batch_norm_train: statistics lock poisoned".into()))?
        .clone();
    let c = stats.len();
    let flat: Vec<f32> = stats
        .iter()
        .map(|s| s.0 as f32)
        .chain(stats.iter().map(|s| s.1 as f32))
        .collect();
    Ok((y, Tensor::from_vec(flat, (2, c), x.device())?, count))
}

/// Evaluation-mode batch normalisation with the given (running) statistics, then ReLU when
/// `relu`; differentiable in `x`, `weight` and `bias` (for fine-tuning with frozen statistics).
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let mean = mean.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let var = var.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if mean.len() != var.len() {
        candle_core::bail!(
            "batch_norm_eval: {} means for {} variances",
            mean.len(),
            var.len()
        )
    }
    let op = BatchNormOp {
        eps,
        relu,
        fixed: Some(mean.into_iter().zip(var).collect()),
        group: None,
        batch: Arc::new(Mutex::new((Vec::new(), 0.0))),
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_input, weighted_sum_grads};
    use candle_core::{DType, Device, Var};
    use candle_nn::{BatchNormConfig, ModuleT, VarBuilder, VarMap};

    /// candle's BatchNorm (its own composition of tensor ops) with the given weight, bias and
    /// running statistics.
    fn candle_batch_norm(
        w: &Tensor,
        b: &Tensor,
        mean: &Tensor,
        var: &Tensor,
    ) -> candle_nn::BatchNorm {
        let c = w.dim(0).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = candle_nn::batch_norm(c, BatchNormConfig::default(), vb).unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, value) in [
            ("weight", w),
            ("bias", b),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            data.get(name).unwrap().set(value).unwrap();
        }
        bn
    }

    #[test]
    fn fused_batch_norm_matches_candles_composition() {
        // The last case's input sits far from zero (mean 40): the input gradient's f32 part
        // works on x - mean.
        for (shape, offset) in [
            ([4usize, 3, 5, 7], 0.5),
            ([1, 6, 3, 3], 0.5),
            ([8, 2, 1, 1], 0.5),
            ([2, 16, 9, 4], 0.5),
            ([3, 4, 6, 5], 40.0),
        ] {
            let c = shape[1];
            let x = Var::from_tensor(
                &(test_input(&shape, 3).unwrap() * 3.0)
                    .unwrap()
                    .affine(1.0, offset)
                    .unwrap(),
            )
            .unwrap();
            let w =
                Var::from_tensor(&test_input(&[c], 4).unwrap().affine(0.5, 1.0).unwrap()).unwrap();
            let b = Var::from_tensor(&test_input(&[c], 5).unwrap()).unwrap();
            let running_mean = test_input(&[c], 7).unwrap();
            let running_var = test_input(&[c], 8)
                .unwrap()
                .abs()
                .unwrap()
                .affine(1.0, 0.5)
                .unwrap();
            let upstream = test_input(&shape, 6).unwrap();
            for (train, relu) in [(true, false), (true, true), (false, false), (false, true)] {
                // A fresh layer each time: candle's training forward moves its running statistics.
                let bn =
                    candle_batch_norm(w.as_tensor(), b.as_tensor(), &running_mean, &running_var);
                let (w_ref, b_ref) = bn.weight_and_bias().unwrap();
                let what = format!("{shape:?} train {train} relu {relu}");
                let y = if train {
                    let (y, stats) =
                        batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, relu)
                            .unwrap();
                    let flat = x
                        .as_tensor()
                        .transpose(0, 1)
                        .unwrap()
                        .flatten_from(1)
                        .unwrap();
                    let mean = flat.mean(1).unwrap();
                    let var = flat
                        .broadcast_sub(&mean.unsqueeze(1).unwrap())
                        .unwrap()
                        .sqr()
                        .unwrap()
                        .mean(1)
                        .unwrap();
                    assert_close("mean", &stats.get(0).unwrap(), &mean, 1e-4);
                    assert_close("var", &stats.get(1).unwrap(), &var, 1e-4);
                    y
                } else {
                    batch_norm_eval(
                        x.as_tensor(),
                        w.as_tensor(),
                        b.as_tensor(),
                        &running_mean,
                        &running_var,
                        1e-5,
                        relu,
                    )
                    .unwrap()
                };
                let grads = weighted_sum_grads(&y, &upstream).unwrap();

                let y_ref = bn.forward_t(x.as_tensor(), train).unwrap();
                let y_ref = if relu { y_ref.relu().unwrap() } else { y_ref };
                let grads_ref = weighted_sum_grads(&y_ref, &upstream).unwrap();

                assert_close(&format!("{what} forward"), &y, &y_ref, 1e-4);
                for (name, got, want) in [
                    ("dx", x.as_tensor(), x.as_tensor()),
                    ("dw", w.as_tensor(), w_ref),
                    ("db", b.as_tensor(), b_ref),
                ] {
                    assert_close(
                        &format!("{what} {name}"),
                        grads.get(got).unwrap(),
                        grads_ref.get(want).unwrap(),
                        1e-4,
                    );
                }
            }
        }
    }
}
