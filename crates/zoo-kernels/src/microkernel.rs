//! Register-tile matrix products (16 x 6) on packed panels, the inner loop of the convolutions,
//! with the instruction set chosen at run time.
//!
//! The tiled and Winograd convolutions pack their operands themselves (once per op, or straight
//! from their transforms) and call these tiles directly, where a GEMM library would pack both
//! operands again on every call. On x86-64 the tiles are the gemm crate's micro-kernels: AVX-512
//! (one 16-lane vector per column, six accumulators) where it runs at full rate, AVX2 + FMA
//! (two 8-lane vectors per column) elsewhere; a portable loop the compiler vectorises on other
//! CPUs. `ZOO_CPU_ISA=avx512|avx2|portable` overrides the choice ([`Isa::from_env`]).

use std::time::Instant;

use gemm_common::microkernel::MicroKernelFn;

/// Tile height (rows of the packed panel) and width (columns of `b`).
pub(crate) const MR: usize = 16;
pub(crate) const NR: usize = 6;

/// An instruction set of the tile kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs it.
    pub fn supported(&self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `ZOO_CPU_ISA`, if set: an error naming the variable for a value that is not an ISA or
    /// that this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>, String> {
        let Ok(value) = std::env::var("ZOO_CPU_ISA") else {
            return Ok(None);
        };
        let isa = Self::ALL
            .into_iter()
            .find(|i| i.name() == value.trim())
            .ok_or_else(|| {
                format!("ZOO_CPU_ISA=`{value}`: expected avx512, avx2 or portable (or unset)")
            })?;
        if !isa.supported() {
            return Err(format!(
                "ZOO_CPU_ISA={}: this CPU does not have it (it has: {})",
                isa.name(),
                Self::ALL
                    .iter()
                    .filter(|i| i.supported())
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Some(isa))
    }

    /// The kernels of this ISA. Panics if the CPU lacks it (check [`Isa::supported`]).
    pub(crate) fn kernels(self) -> TileKernels {
        assert!(self.supported(), "the CPU does not run {}", self.name());
        let table: Option<(&'static [[MicroKernelFn<f32>; NR]], usize)> = match self {
            Self::Portable => None,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => Some((&gemm_f32::microkernel::fma::f32::UKR[..], 8)),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => Some((&gemm_f32::microkernel::avx512f::f32::UKR[..1], 16)),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        };
        TileKernels { table }
    }
}

/// The tile kernels this CPU runs.
#[derive(Clone, Copy)]
pub(crate) struct TileKernels {
    /// The gemm crate's kernels, `[rows / lanes - 1][columns - 1]`, and the lanes of one
    /// vector; `None`: the portable loop.
    table: Option<(&'static [[MicroKernelFn<f32>; NR]], usize)>,
}

/// The instruction set the tile kernels use in this process: `ZOO_CPU_ISA` if set (and valid),
/// else AVX-512 where it runs at full rate, else AVX2 + FMA, else the portable loop.
pub fn active_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| match Isa::from_env() {
        Ok(Some(isa)) => isa,
        Ok(None) => detect(),
        Err(message) => {
            // The CLI refuses a bad value before any kernel runs; a library user sees this.
            eprintln!("zoo: {message}; choosing by CPU detection");
            detect()
        }
    })
}

/// The kernels for this process, chosen once ([`active_isa`]).
pub(crate) fn kernels() -> TileKernels {
    static KERNELS: std::sync::OnceLock<TileKernels> = std::sync::OnceLock::new();
    *KERNELS.get_or_init(|| active_isa().kernels())
}

/// AVX-512 on Intel CPUs that have it (Skylake-SP and later run 512-bit FMAs at full rate);
/// on other CPUs with AVX-512 (AMD Zen 4 splits each 512-bit operation in two) the faster of
/// AVX-512 and AVX2 on a short measured product; else AVX2 + FMA; else portable.
fn detect() -> Isa {
    if !Isa::Avx2.supported() {
        return Isa::Portable;
    }
    if !Isa::Avx512.supported() {
        return Isa::Avx2;
    }
    if cpu_vendor() == "GenuineIntel" {
        return Isa::Avx512;
    }
    let (t512, t2) = (time_tiles(Isa::Avx512), time_tiles(Isa::Avx2));
    if t512 < t2 { Isa::Avx512 } else { Isa::Avx2 }
}

/// The CPUID vendor string (`GenuineIntel`, `AuthenticAMD`), empty off x86-64.
fn cpu_vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU (a safe function on newer Rust).
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::new()
}

/// Seconds for a fixed batch of full tiles with `isa`'s kernels (best of three rounds).
fn time_tiles(isa: Isa) -> f64 {
    let k = 256;
    let kernels = isa.kernels();
    let a = vec![0.5f32; k * MR];
    let b = vec![0.25f32; k * NR];
    let mut dst = vec![0f32; MR * NR];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..200 {
            // SAFETY: the buffers hold the full tiles the strides describe.
            unsafe {
                kernels.tile(
                    MR,
                    NR,
                    k,
                    dst.as_mut_ptr(),
                    MR,
                    a.as_ptr(),
                    b.as_ptr(),
                    NR,
                    1,
                    true,
                )
            };
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    best
}

impl TileKernels {
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
        let Some((table, lanes)) = self.table else {
            // SAFETY: the caller's guarantees.
            return unsafe { portable_tile(m, n, k, dst, dst_cs, a, b, b_rs, b_cs, accumulate) };
        };
        let f = table[m.div_ceil(lanes) - 1][n - 1];
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

    /// Every kernel this CPU runs against a plain triple loop, on every tile size, strided `b`, with and
    /// without accumulation.
    #[test]
    fn tiles_match_the_plain_product() {
        let k = 13;
        let a: Vec<f32> = (0..k * MR).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (b_rs, b_cs) = (1, k + 2);
        let b: Vec<f32> = (0..NR * b_cs).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        for isa in Isa::ALL.into_iter().filter(Isa::supported) {
            let kernels = isa.kernels();
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
                                assert_eq!(
                                    dst[j * dst_cs + i],
                                    want,
                                    "{} m {m} n {n} ({i}, {j})",
                                    isa.name()
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod isa_tests {
    use super::*;

    #[test]
    fn the_environment_names_an_isa_or_is_refused() {
        // SAFETY: this test alone reads or writes ZOO_CPU_ISA in the test binary.
        unsafe { std::env::set_var("ZOO_CPU_ISA", "sse9") };
        let err = Isa::from_env().unwrap_err();
        assert!(err.contains("ZOO_CPU_ISA=`sse9`"), "{err}");
        unsafe { std::env::set_var("ZOO_CPU_ISA", "portable") };
        assert_eq!(Isa::from_env(), Ok(Some(Isa::Portable)));
        for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
            unsafe { std::env::set_var("ZOO_CPU_ISA", isa.name()) };
            assert!(Isa::from_env().unwrap_err().contains("does not have it"));
        }
        unsafe { std::env::remove_var("ZOO_CPU_ISA") };
        assert_eq!(Isa::from_env(), Ok(None));
        assert!(detect().supported());
    }
}
