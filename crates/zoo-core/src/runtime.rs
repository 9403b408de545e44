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
