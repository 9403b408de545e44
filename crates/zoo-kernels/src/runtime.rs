//! Process-wide CPU settings for programs that train or run zoo networks on the CPU.
//!
//! Two defaults of candle 0.11.1 cost CPU training time (measured with `cargo xtask bench
//! models`, docs/benchmarks.md): without `RAYON_NUM_THREADS` every matrix product re-reads
//! the CPU count from `/proc`, and the worker of candle's element-wise thread pool spins for
//! about 25,000 `pause` instructions after each element-wise op, taking a core from the
//! convolution threads that run next. [`configure_cpu_threads`] sets both, unless the user
//! already has.

/// Spin iterations for candle's element-wise pool worker before it parks.
pub const BARRIER_POOL_SPIN_LIMIT: u32 = 1000;

/// Sets `RAYON_NUM_THREADS` (to the available parallelism) and
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` (to [`BARRIER_POOL_SPIN_LIMIT`]) where they are unset.
/// Returns the thread count in effect.
///
/// # Safety
/// It writes environment variables: call it first thing in `main`, before any other thread
/// exists (`std::env::set_var`'s contract).
pub unsafe fn configure_cpu_threads() -> usize {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let threads = match threads {
        Some(n) => n,
        None => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            // SAFETY: the caller guarantees no other thread exists yet.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
            n
        }
    };
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: as above.
        unsafe {
            std::env::set_var(
                "CANDLE_BARRIER_POOL_SPIN_LIMIT",
                BARRIER_POOL_SPIN_LIMIT.to_string(),
            )
        };
    }
    threads
}

/// Runs `f` on a thread of rayon's global pool (directly when already on one).
///
/// zoo's kernels split every op over rayon's threads. Called from a thread outside the pool
/// (a program's main thread), each op is injected into the pool while the caller sleeps until
/// it is done: three threads taking turns on the cores and a sleep and a wake-up per op (8-10%
/// of a DenseNet step was the scheduler). Run on a pool thread, the caller takes part in its
/// own ops and only the other workers are woken.
pub fn on_compute_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // The body of a scope runs on a pool thread.
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_runs_on_a_pool_thread_and_returns_its_value() {
        let outside = std::thread::spawn(|| {
            assert!(rayon::current_thread_index().is_none());
            super::on_compute_thread(|| (rayon::current_thread_index(), 42))
        })
        .join()
        .unwrap();
        assert!(outside.0.is_some(), "ran outside the pool");
        assert_eq!(outside.1, 42);
        // Already on a pool thread: runs in place.
        let nested = super::on_compute_thread(|| {
            let here = rayon::current_thread_index();
            super::on_compute_thread(|| rayon::current_thread_index() == here)
        });
        assert!(nested);
    }
}
