//! The steps that keep data-parallel ranks in agreement, as PyTorch's DDP takes them: weights
//! broadcast from rank 0, gradients all-reduced in flat buckets and weighted by each rank's
//! share of the global batch, small vectors of totals summed.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::Collective;

/// DDP's default bucket size (`bucket_cap_mb=25`): gradients travel in flat buckets of about
/// this many bytes, not tensor by tensor.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Consecutive runs of `sizes` (element counts) of at most `cap` f32 elements each; a tensor
/// larger than `cap` is a bucket of its own.
pub fn buckets(sizes: &[usize], cap_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let cap = (cap_bytes / 4).max(1);
    let mut out = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if filled > 0 && filled + n > cap {
            out.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Concatenates the flattened `tensors` (f32) into one vector.
fn flatten(tensors: &[Tensor]) -> Result<Tensor> {
    let flat = tensors
        .iter()
        .map(|t| t.flatten_all()?.to_dtype(DType::F32))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// Splits `flat` back into tensors shaped like `like`.
fn unflatten(flat: &Tensor, like: &[Tensor]) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let part = flat.narrow(0, offset, n)?.reshape(t.shape())?;
            offset += n;
            part.to_dtype(t.dtype())
        })
        .collect()
}

/// Sets every variable of `vars` to rank `root`'s value, in buckets of `cap_bytes`.
pub fn broadcast_vars(
    c: &dyn Collective,
    vars: &[(String, Var)],
    root: usize,
    cap_bytes: usize,
) -> Result<()> {
    let sizes: Vec<usize> = vars.iter().map(|(_, v)| v.elem_count()).collect();
    for range in buckets(&sizes, cap_bytes) {
        let tensors: Vec<Tensor> = vars[range.clone()]
            .iter()
            .map(|(_, v)| v.as_tensor().detach())
            .collect();
        let flat = c.broadcast(&flatten(&tensors)?, root)?;
        for ((_, var), value) in vars[range].iter().zip(unflatten(&flat, &tensors)?) {
            var.set(&value)?;
        }
    }
    Ok(())
}

/// Replaces each parameter's gradient in `grads` by the global batch's gradient: every rank's
/// gradient (of its own mean loss) times `weight` (its images over the global batch's), summed
/// over ranks in flat buckets. A parameter without a gradient here (a rank with no images)
/// counts as zeros. Every rank ends with the same gradients.
pub fn all_reduce_grads(
    c: &dyn Collective,
    grads: &mut GradStore,
    params: &[(String, Var)],
    weight: f64,
    cap_bytes: usize,
) -> Result<()> {
    let sizes: Vec<usize> = params.iter().map(|(_, v)| v.elem_count()).collect();
    for range in buckets(&sizes, cap_bytes) {
        let tensors = params[range.clone()]
            .iter()
            .map(|(_, v)| match grads.get(v) {
                Some(g) => Ok(g.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut flat = flatten(&tensors)?;
        if weight != 1.0 {
            flat = (flat * weight)?;
        }
        let sum = c.all_reduce_sum(&flat)?;
        for ((_, var), g) in params[range].iter().zip(unflatten(&sum, &tensors)?) {
            grads.insert(var, g);
        }
    }
    Ok(())
}

/// The sums over ranks of a few numbers (counts, loss totals): f32 on the wire, exact for
/// integers below 2^24.
pub fn all_reduce_values(
    c: &dyn Collective,
    values: &[f64],
    device: &candle_core::Device,
) -> Result<Vec<f64>> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    let t = Tensor::from_vec(v, values.len(), device)?;
    let sum = c
        .all_reduce_sum(&t)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(sum)
}
