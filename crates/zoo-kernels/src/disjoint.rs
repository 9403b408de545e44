//! A slice that parallel tasks write at disjoint places which no safe split can express (every
//! channel group's values interleaved with the others', panels' outputs scattered over a map):
//! the small-batch paths split one image's work over the threads this way.

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

/// `f(range)` over `0..n` split into one contiguous range per thread, in parallel, when `wide`;
/// else `f(0..n)` once, on this thread.
pub(crate) fn for_each_range(wide: bool, n: usize, f: impl Fn(Range<usize>) + Sync + Send) {
    if !wide {
        return f(0..n);
    }
    let threads = rayon::current_num_threads().max(1);
    let per = n.div_ceil(threads).max(1);
    (0..n.div_ceil(per))
        .into_par_iter()
        .for_each(|i| f(i * per..n.min((i + 1) * per)));
}

/// Writes into a borrowed slice from several tasks at once. Each write is bounds-checked; the
/// caller promises that no two tasks write the same element and that nothing reads the slice
/// while they write.
pub(crate) struct DisjointWrites<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the wrapper hands out writes to disjoint elements only (the callers' contract), so
// sharing it between threads is sharing `&mut` access to separate parts of one slice.
unsafe impl<T: Send> Send for DisjointWrites<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for DisjointWrites<'_, T> {}

impl<'a, T> DisjointWrites<'a, T> {
    pub(crate) fn new(slice: &'a mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// `len` elements from `at`, for writing.
    ///
    /// # Safety
    /// No other task may access these elements while the returned slice lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, at: usize, len: usize) -> &mut [T] {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "disjoint write of {len} at {at} past the end ({})",
            self.len
        );
        // SAFETY: in bounds (checked above); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_parts_from_parallel_tasks_land_where_written() {
        let mut v = vec![0u32; 64];
        let w = DisjointWrites::new(&mut v);
        (0..8).into_par_iter().for_each(|task| {
            for i in (task..64).step_by(8) {
                // SAFETY: task t alone writes the indices equal to t modulo 8.
                unsafe { w.part(i, 1)[0] = i as u32 * 10 };
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 * 10));
    }

    #[test]
    fn the_ranges_cover_every_index_once() {
        for (wide, n) in [(false, 7), (true, 0), (true, 1), (true, 7), (true, 64)] {
            let seen = std::sync::Mutex::new(vec![0; n]);
            for_each_range(wide, n, |r| {
                for i in r {
                    seen.lock().unwrap()[i] += 1;
                }
            });
            assert_eq!(seen.into_inner().unwrap(), vec![1; n], "wide {wide}, n {n}");
        }
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn a_write_past_the_end_is_refused() {
        let mut v = vec![0f32; 4];
        let w = DisjointWrites::new(&mut v);
        // SAFETY: one task.
        unsafe { w.part(2, 3)[0] = 1.0 };
    }
}
