//! The one loop behind the training side's in-place CPU updates (SGD, AdamW, the EMA):
//! `dst[i] = f(dst[i], a[i], b[i])` over contiguous f32 storages, in parallel chunks.

use candle_core::{CpuStorage, Layout, Result};

/// The f32 slice of a contiguous CPU storage, or an error naming the kernel.
fn slice_of<'a>(what: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn slice_of_mut<'a>(what: &str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    match (l.contiguous_offsets(), s) {
        (Some((a, b)), CpuStorage::F32(v)) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// `dst[i] = f(dst[i], a[i], b[i])` over three contiguous f32 CPU tensors of one size, in
/// parallel chunks; an error naming `op` when a tensor is not contiguous f32 or sizes differ.
pub(crate) fn update_in_place(
    op: &str,
    (dst, dst_l): (&mut CpuStorage, &Layout),
    (a, a_l): (&CpuStorage, &Layout),
    (b, b_l): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Result<()> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let (a, b) = (slice_of(op, a, a_l)?, slice_of(op, b, b_l)?);
    let dst = slice_of_mut(op, dst, dst_l)?;
    if dst.len() != a.len() || dst.len() != b.len() {
        candle_core::bail!(
            "{op}: tensors of {}, {} and {} elements",
            dst.len(),
            a.len(),
            b.len()
        )
    }
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| {
            for ((d, &a), &b) in d.iter_mut().zip(a).zip(b) {
                *d = f(*d, a, b);
            }
        });
    Ok(())
}
