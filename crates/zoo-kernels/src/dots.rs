//! Matrix products with a short side (at most 4 rows or columns) as dot products of the long
//! side's contiguous rows with the short side's vectors. Batch-1 inference is made of them: a
//! convolution on a 1x1 or 2x2 map is its weight matrix times one to four columns, a Linear
//! layer on one image a vector times the weights. The GEMM's packing and 16x6 register tiles
//! would read the weights twice and leave most of each tile empty.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use crate::disjoint::{DisjointWrites, for_each_range};
use crate::microkernel::{Isa, active_isa};

/// The longest short side this path takes.
pub(crate) const SHORT: usize = 4;
/// Lanes of the accumulators (one AVX-512 vector, two AVX2 ones).
const LANES: usize = 16;

/// `c = a . b` (or `c += a . b`), `a` `m x k` and `b` `k x n` row-major or stored transposed,
/// through dot products when `n <= SHORT` and `a`'s rows are contiguous, or `m <= SHORT` and
/// `b`'s columns are; returns false, having written nothing, otherwise.
///
/// # Safety
/// `c` is valid for `m * n` writes (and reads when `accumulate`), and `a` and `b` hold
/// `m * k` and `k * n` elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn short_side_product(
    (m, n, k): (usize, usize, usize),
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    c: *mut f32,
    accumulate: bool,
    wide: bool,
) -> bool {
    let rows_of_a = n <= SHORT && !a_t && m > SHORT;
    let columns_of_b = m <= SHORT && b_t && n > SHORT;
    if k < LANES || m == 0 || n == 0 || !(rows_of_a || columns_of_b) {
        return false;
    }
    // SAFETY: the caller vouches for m * n elements at c; MaybeUninit allows unwritten ones.
    let c = unsafe { std::slice::from_raw_parts_mut(c.cast::<MaybeUninit<f32>>(), m * n) };
    let out = DisjointWrites::new(c);
    if rows_of_a {
        let short: Vec<Cow<[f32]>> = (0..n).map(|j| column(b, b_t, k, n, j)).collect();
        let short = as_slices(&short);
        for_each_range(wide, m, |rows| {
            for i in rows {
                let d = dots(&a[i * k..][..k], &short);
                // SAFETY: row i of c belongs to this task alone.
                let row = unsafe { out.part(i * n, n) };
                for (slot, &value) in row.iter_mut().zip(&d) {
                    // SAFETY: with `accumulate` the caller's c is initialised.
                    unsafe { put(slot, value, accumulate) };
                }
            }
        });
    } else {
        let short: Vec<Cow<[f32]>> = (0..m).map(|i| row(a, a_t, m, k, i)).collect();
        let short = as_slices(&short);
        for_each_range(wide, n, |columns| {
            for j in columns {
                let d = dots(&b[j * k..][..k], &short);
                for (i, &value) in d[..m].iter().enumerate() {
                    // SAFETY: column j of c belongs to this task alone; with `accumulate` the
                    // caller's c is initialised.
                    unsafe { put(&mut out.part(i * n + j, 1)[0], value, accumulate) };
                }
            }
        });
    }
    true
}

/// Writes `value` into `slot`, added to what it holds when `accumulate`.
///
/// # Safety
/// With `accumulate`, `slot` is initialised.
unsafe fn put(slot: &mut MaybeUninit<f32>, value: f32, accumulate: bool) {
    // SAFETY: the caller's promise.
    let old = if accumulate {
        unsafe { slot.assume_init() }
    } else {
        0.0
    };
    slot.write(old + value);
}

/// Column `j` of the `k x n` matrix `b` (stored transposed: row `j` of `n x k`).
fn column(b: &[f32], b_t: bool, k: usize, n: usize, j: usize) -> Cow<'_, [f32]> {
    match b_t {
        true => Cow::Borrowed(&b[j * k..][..k]),
        false => Cow::Owned((0..k).map(|p| b[p * n + j]).collect()),
    }
}

/// Row `i` of the `m x k` matrix `a` (stored transposed: column `i` of `k x m`).
fn row(a: &[f32], a_t: bool, m: usize, k: usize, i: usize) -> Cow<'_, [f32]> {
    match a_t {
        false => Cow::Borrowed(&a[i * k..][..k]),
        true => Cow::Owned((0..k).map(|p| a[p * m + i]).collect()),
    }
}

/// The vectors as plain slices, made once per product (not per dot product).
fn as_slices<'a>(vectors: &'a [Cow<'a, [f32]>]) -> Vec<&'a [f32]> {
    vectors.iter().map(|v| &v[..]).collect()
}

/// The dot products of `long` with each of the (one to [`SHORT`]) `short` vectors of its
/// length, with the instruction set the tile kernels use (`active_isa`).
pub(crate) fn dots(long: &[f32], short: &[&[f32]]) -> [f32; SHORT] {
    assert!(
        (1..=SHORT).contains(&short.len()) && short.iter().all(|s| s.len() == long.len()),
        "dots: 1 to {SHORT} vectors of the long one's length"
    );
    let mut v: [&[f32]; SHORT] = [&[]; SHORT];
    for (slot, s) in v.iter_mut().zip(short) {
        *slot = s;
    }
    let mut out = [0f32; SHORT];
    let isa = active_isa();
    macro_rules! run {
        ($n:literal) => {{
            let short: [&[f32]; $n] = v[..$n].try_into().expect("n vectors");
            let d = match isa {
                // SAFETY: active_isa only names instruction sets this CPU runs.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { dots_avx512::<$n>(long, short) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { dots_avx2::<$n>(long, short) },
                _ => dots_body::<$n, false>(long, short),
            };
            out[..$n].copy_from_slice(&d);
        }};
    }
    match short.len() {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        _ => run!(4),
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_avx512<const N: usize>(long: &[f32], short: [&[f32]; N]) -> [f32; N] {
    dots_body::<N, true>(long, short)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<const N: usize>(long: &[f32], short: [&[f32]; N]) -> [f32; N] {
    dots_body::<N, true>(long, short)
}

/// N dot products at once, `LANES` partial sums each (fused multiply-adds when `FMA`), so the
/// compiler keeps them in vector registers; the partial sums are added in a fixed order.
#[inline(always)]
fn dots_body<const N: usize, const FMA: bool>(long: &[f32], short: [&[f32]; N]) -> [f32; N] {
    let mut acc = [[0f32; LANES]; N];
    let whole = long.len() / LANES * LANES;
    for (c, x) in long[..whole].chunks_exact(LANES).enumerate() {
        for (a, s) in acc.iter_mut().zip(&short) {
            let y = &s[c * LANES..][..LANES];
            for l in 0..LANES {
                a[l] = if FMA {
                    x[l].mul_add(y[l], a[l])
                } else {
                    x[l] * y[l] + a[l]
                };
            }
        }
    }
    let mut out = [0f32; N];
    for ((o, a), s) in out.iter_mut().zip(&acc).zip(&short) {
        let tail: f32 = long[whole..]
            .iter()
            .zip(&s[whole..])
            .map(|(x, y)| x * y)
            .sum();
        *o = a.iter().sum::<f32>() + tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::short_side_product;
    use crate::microkernel::active_isa;

    /// `a . b` in f64 from the row-major (or transposed) slices.
    #[allow(clippy::too_many_arguments)]
    fn naive(m: usize, n: usize, k: usize, a: &[f32], a_t: bool, b: &[f32], b_t: bool) -> Vec<f32> {
        let at = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] } as f64;
        let bt = |p: usize, j: usize| if b_t { b[j * k + p] } else { b[p * n + j] } as f64;
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() as f32;
            }
        }
        c
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    #[test]
    fn short_sides_equal_the_plain_product_in_every_layout() {
        eprintln!("tile ISA: {}", active_isa().name());
        // Short n against long m, short m against long n; k a multiple of the lanes or not.
        let shapes = [
            (37, 1, 300),
            (64, 3, 16),
            (9, 4, 531),
            (1, 50, 300),
            (4, 33, 77),
            (2, 17, 16),
        ];
        for (m, n, k) in shapes {
            for (a_t, b_t, accumulate) in (0..8).map(|f| (f & 1 == 1, f & 2 == 2, f & 4 == 4)) {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let start = values(m * n, 3);
                let mut c = start.clone();
                // SAFETY: c holds m * n values, a and b m * k and k * n.
                let taken = unsafe {
                    short_side_product(
                        (m, n, k),
                        (&a, a_t),
                        (&b, b_t),
                        c.as_mut_ptr(),
                        accumulate,
                        true,
                    )
                };
                // The long side's vectors must be contiguous: a's rows, or b's stored columns.
                assert_eq!(
                    taken,
                    if n <= 4 { !a_t } else { b_t },
                    "{m}x{n}x{k} a_t {a_t} b_t {b_t}"
                );
                if !taken {
                    continue;
                }
                let mut want = naive(m, n, k, &a, a_t, &b, b_t);
                if accumulate {
                    want.iter_mut().zip(&start).for_each(|(w, s)| *w += s);
                }
                let err = c
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err < 1e-4,
                    "{m}x{n}x{k} a_t {a_t} b_t {b_t} acc {accumulate}: {err}"
                );
            }
        }
    }
}
