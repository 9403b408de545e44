//! Register-tile matrix products (16 x 6) on packed panels, the inner loop of the convolutions.
//!
//! The tiled and Winograd convolutions pack their operands themselves (once per op, or straight
//! from their transforms) and call these tiles directly, where a GEMM library would pack both
//! operands again on every call. On x86-64 with AVX2 and FMA the tiles are the gemm crate's
//! micro-kernels; elsewhere a portable loop the compiler vectorises.

use gemm_common::microkernel::MicroKernelFn;

/// Tile height (rows of the packed panel, two 8-lane vectors) and width (columns of `b`).
pub(crate) const MR: usize = 16;
pub(crate) const NR: usize = 6;

/// The tile kernels this CPU runs.
#[derive(Clone, Copy)]
pub(crate) struct TileKernels {
    /// The gemm crate's AVX2 + FMA kernels, `[rows / 8 - 1][columns - 1]`; `None`: the
    /// portable loop.
    table: Option<&'static [[MicroKernelFn<f32>; NR]; 2]>,
}

/// The kernels for this CPU, detected once.
pub(crate) fn kernels() -> TileKernels {
    static KERNELS: std::sync::OnceLock<TileKernels> = std::sync::OnceLock::new();
    *KERNELS.get_or_init(TileKernels::detect)
}

impl TileKernels {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    table: Some(&gemm_f32::microkernel::fma::f32::UKR),
                };
            }
        }
        Self::portable()
    }

    /// The portable loop, whatever the CPU has.
    pub(crate) fn portable() -> Self {
        Self { table: None }
    }

    /// `dst (m x n) = a . b` or `dst += a . b`, for `a` an `m x k` packed panel (column `k` at
    /// `a + k * MR`, `m <= MR`) and `b` a `k x n` matrix at `b + k * b_rs + j * b_cs`
    /// (`n <= NR`); `dst` is column-major with column stride `dst_cs`.
    ///
    /// # Safety
    /// `a` must be valid for `k * MR` reads, `b` for reads of all `k x NR` elements its strides
    /// describe (the kernel reads whole tiles), `dst` for `m x n` reads and writes.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) unsafe fn tile(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_cs: usize,
        a: *const f32,
        b: *const f32,
        b_rs: usize,
        b_cs: usize,
        accumulate: bool,
    ) {
        debug_assert!(m <= MR && n <= NR && m > 0 && n > 0);
        let Some(table) = self.table else {
            // SAFETY: the caller's guarantees.
            return unsafe { portable_tile(m, n, k, dst, dst_cs, a, b, b_rs, b_cs, accumulate) };
        };
        let f = table[m.div_ceil(8) - 1][n - 1];
        // SAFETY: the caller's guarantees; the table holds kernels for this CPU (detect).
        unsafe {
            f(
                m,
                n,
                k,
                dst,
                a,
                b,
                dst_cs as isize,
                1,
                MR as isize,
                b_rs as isize,
                b_cs as isize,
                if accumulate { 1.0 } else { 0.0 },
                1.0,
                u8::from(accumulate),
                false,
                false,
                false,
                a,
            )
        }
    }
}

/// [`TileKernels::tile`] as a plain loop: `MR` accumulators per column, which the compiler
/// keeps in vector registers.
///
/// # Safety
/// As [`TileKernels::tile`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable_tile(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: usize,
    a: *const f32,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; MR]; NR];
    for p in 0..k {
        // SAFETY: a holds k columns of MR values; b the k x n elements its strides describe.
        let column = unsafe { &*a.add(p * MR).cast::<[f32; MR]>() };
        for (j, sum) in acc.iter_mut().enumerate().take(n) {
            let bv = unsafe { *b.add(p * b_rs + j * b_cs) };
            for (s, &av) in sum.iter_mut().zip(column) {
                *s += av * bv;
            }
        }
    }
    for (j, sum) in acc.iter().enumerate().take(n) {
        for (i, &v) in sum.iter().enumerate().take(m) {
            // SAFETY: dst holds the m x n tile at column stride dst_cs.
            unsafe {
                let d = dst.add(i + j * dst_cs);
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kernels against a plain triple loop, on every tile size, strided `b`, with and
    /// without accumulation.
    #[test]
    fn tiles_match_the_plain_product() {
        let k = 13;
        let a: Vec<f32> = (0..k * MR).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (b_rs, b_cs) = (1, k + 2);
        let b: Vec<f32> = (0..NR * b_cs).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        for kernels in [kernels(), TileKernels::portable()] {
            for m in 1..=MR {
                for n in 1..=NR {
                    for accumulate in [false, true] {
                        let dst_cs = MR + 1;
                        let mut dst = vec![0.5f32; NR * dst_cs];
                        // SAFETY: the buffers hold the whole tiles the strides describe.
                        unsafe {
                            kernels.tile(
                                m,
                                n,
                                k,
                                dst.as_mut_ptr(),
                                dst_cs,
                                a.as_ptr(),
                                b.as_ptr(),
                                b_rs,
                                b_cs,
                                accumulate,
                            )
                        };
                        for j in 0..NR {
                            for i in 0..dst_cs {
                                let want = if i < m && j < n {
                                    let dot: f32 = (0..k)
                                        .map(|p| a[p * MR + i] * b[p * b_rs + j * b_cs])
                                        .sum();
                                    dot + if accumulate { 0.5 } else { 0.0 }
                                } else {
                                    0.5
                                };
                                assert_eq!(dst[j * dst_cs + i], want, "m {m} n {n} ({i}, {j})");
                            }
                        }
                    }
                }
            }
        }
    }
}
