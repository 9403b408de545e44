//! zoo-kernels: the operations candle 0.11.1 lacks or computes slowly on the CPU, as candle
//! custom ops with forward and backward, and the process settings they run best under.
//!
//! Each op has one dispatch function: the CPU kernel for f32 tensors on the CPU, and a
//! composition of candle's own ops (kept as the tested reference) everywhere else (CUDA, other
//! dtypes, and [`with_reference_ops`]).
//!
//! - [`conv`]: 2-d convolution (im2col + GEMM, Winograd, tiled), bias and ReLU fused;
//! - [`linear`], [`batch_norm`], [`pool`], [`activation`]: the other layers' kernels;
//! - [`microkernel`]: the register-tile products, AVX-512 / AVX2 + FMA / portable, chosen at
//!   run time (`ZOO_CPU_ISA` overrides);
//! - [`runtime`]: thread settings and the compute-thread entry for programs.
//!
//! Depends on candle-core, the gemm crates and rayon only: a program that runs one zoo model
//! compiles no data loader, image codec or plotting through it.

pub mod activation;
pub mod batch_norm;
pub mod conv;
mod disjoint;
mod dots;
mod gemm;
pub mod linear;
pub mod microkernel;
pub mod pool;
pub mod runtime;
pub mod testing;

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, DType, Device, Layout, Result, Tensor};

/// A new vector of `len` floats written by `fill`, without zero-filling it first (a kernel's
/// output: the fill was one more pass over memory per op).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn new_filled(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the capacity holds `len` elements, and the caller's `fill` wrote all of them.
    unsafe { out.set_len(len) };
    out
}

/// Writes zeros into `buf` and returns it as the initialised slice it now is.
pub(crate) fn zeroed(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in buf.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written; MaybeUninit<f32> has f32's layout.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), buf.len()) }
}

thread_local! {
    static REFERENCE_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every layer of this thread on candle's compositions (the path a GPU takes)
/// instead of zoo's CPU kernels: the device check's CPU self-test compares the two.
pub fn with_reference_ops<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REFERENCE_OPS.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REFERENCE_OPS.with(|r| r.replace(true)));
    f()
}

/// Whether `x` takes zoo's CPU kernels: f32 on the CPU, outside [`with_reference_ops`].
pub fn cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !REFERENCE_OPS.with(|r| r.get())
}

/// The f32 data of a contiguous CPU tensor, or an error naming the op.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous input, got {:?}", layout),
    }
}
