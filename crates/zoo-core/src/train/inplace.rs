//! The loops behind the training side's in-place CPU updates: `dst[i] = f(dst[i], a[i], b[i])`
//! over contiguous f32 storages (the EMA, SGD without momentum), and an optimiser's whole step
//! over a parameter, its state and its gradient in one pass (SGD with momentum, AdamW).

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};

/// Elements per parallel chunk of the loops.
const CHUNK: usize = 1 << 15;

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

/// An in-place op that lends its tensor's elements (and a second, read-only tensor's) to a
/// closure: candle holds the tensor's storage locked for writing while the closure runs, so that
/// nested borrows hold several distinct tensors at once.
struct Lend<F> {
    op: &'static str,
    f: RefCell<Option<F>>,
}

impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for Lend<F> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let f = self.f.borrow_mut().take();
        match f {
            Some(f) => f(slice_of_mut(self.op, s, l)?),
            None => candle_core::bail!("{}: lent twice", self.op),
        }
    }
}

impl<F: FnOnce(&mut [f32], &[f32]) -> Result<()>> InplaceOp2 for Lend<F> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let f = self.f.borrow_mut().take();
        match f {
            Some(f) => f(slice_of_mut(self.op, s, l)?, slice_of(self.op, s2, l2)?),
            None => candle_core::bail!("{}: lent twice", self.op),
        }
    }
}

/// `f` on the elements of the contiguous f32 CPU tensor `t`, mutable.
fn with_slice_mut(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<()> {
    t.inplace_op1(&Lend {
        op,
        f: RefCell::new(Some(f)),
    })
}

/// `f` on the elements of `param` (mutable) and `grad`, contiguous f32 CPU tensors of one size.
fn with_param_and_grad(
    op: &'static str,
    param: &Tensor,
    grad: &Tensor,
    f: impl FnOnce(&mut [f32], &[f32]) -> Result<()>,
) -> Result<()> {
    let lend = Lend {
        op,
        f: RefCell::new(Some(move |p: &mut [f32], g: &[f32]| {
            if p.len() != g.len() {
                candle_core::bail!(
                    "{op}: a parameter of {} elements, its gradient {}",
                    p.len(),
                    g.len()
                )
            }
            f(p, g)
        })),
    };
    param.inplace_op2(grad, &lend)
}

/// An error naming `op` unless the tensors' storages are distinct: the nested borrows of
/// [`step_in_place`] lock each storage in turn, and a storage locked twice would never be
/// released (candle's own aliasing check covers the operands of one op only).
fn distinct_storages(op: &str, tensors: &[&Tensor]) -> Result<()> {
    let address = |t: &Tensor| {
        let (storage, _) = t.storage_and_layout();
        &*storage as *const candle_core::Storage as usize
    };
    let addresses: Vec<usize> = tensors.iter().map(|t| address(t)).collect();
    for (i, a) in addresses.iter().enumerate() {
        if addresses[..i].contains(a) {
            candle_core::bail!(
                "{op}: the parameter, its optimiser state and its gradient share a storage \
                 (expected separate tensors)"
            )
        }
    }
    Ok(())
}

/// One pass of an optimiser's update over a parameter, its state slots and its gradient, all
/// contiguous f32 CPU tensors of one size and distinct: `f(&mut p, &mut slot_1, &mut slot_2, g)`
/// per element, in parallel chunks (one read of each and one write of each mutable one, where
/// an update in separate ops per tensor reads the operands again).
pub(crate) fn step_in_place(
    op: &'static str,
    param: &Tensor,
    (first, second): (&Tensor, &Tensor),
    grad: &Tensor,
    f: impl Fn(&mut f32, &mut f32, &mut f32, f32) + Sync,
) -> Result<()> {
    use rayon::prelude::*;
    distinct_storages(op, &[param, first, second, grad])?;
    with_slice_mut(op, second, |v| {
        with_slice_mut(op, first, |m| {
            with_param_and_grad(op, param, grad, |p, g| {
                if m.len() != p.len() || v.len() != p.len() {
                    candle_core::bail!(
                        "{op}: a parameter of {} elements, its state {} and {}",
                        p.len(),
                        m.len(),
                        v.len()
                    )
                }
                p.par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|((p, m), (v, g))| {
                        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                            f(p, m, v, g);
                        }
                    });
                Ok(())
            })
        })
    })
}

/// [`step_in_place`] with one state slot: `f(&mut p, &mut slot, g)` per element.
pub(crate) fn step_in_place_one_slot(
    op: &'static str,
    param: &Tensor,
    slot: &Tensor,
    grad: &Tensor,
    f: impl Fn(&mut f32, &mut f32, f32) + Sync,
) -> Result<()> {
    use rayon::prelude::*;
    distinct_storages(op, &[param, slot, grad])?;
    with_slice_mut(op, slot, |s| {
        with_param_and_grad(op, param, grad, |p, g| {
            if s.len() != p.len() {
                candle_core::bail!(
                    "{op}: a parameter of {} elements, its state {}",
                    p.len(),
                    s.len()
                )
            }
            p.par_chunks_mut(CHUNK)
                .zip(s.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(p, (s, g))| {
                    for ((p, s), &g) in p.iter_mut().zip(s).zip(g) {
                        f(p, s, g);
                    }
                });
            Ok(())
        })
    })
}
