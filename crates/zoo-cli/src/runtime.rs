//! Process set-up shared by the `zoo` binary and xtask: thread settings and the allocator.
//!
//! Both binaries use mimalloc as the global allocator. Its default returns freed memory to
//! the OS after 10 ms, so training steps page-faulted their tensors back in (18,238 page faults
//! against 665 for `cargo xtask bench models --only resnet18,alexnet --steps 8`, measured with
//! `perf stat -e page-faults`); freed memory is kept for reuse instead.

/// `mi_option_purge_delay` in `mi_option_t` (`mimalloc.h`): 15 in both mimalloc v3 (what the
/// `mimalloc` crate builds by default) and v2.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variables zoo reads, checked before any work: `ZOO_CPU_ISA` must name an
/// instruction set this CPU has.
pub fn check_environment() -> anyhow::Result<()> {
    zoo_kernels::microkernel::Isa::from_env().map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Sets the thread environment ([`zoo_kernels::runtime::configure_cpu_threads`]), builds rayon's
/// pool with main-thread-sized stacks (the binaries run their work on it:
/// [`zoo_kernels::runtime::on_compute_thread`]) and tells mimalloc to keep freed memory. Returns
/// the thread count.
///
/// # Safety
/// Call it first thing in `main`, before any other thread exists (it sets environment
/// variables).
pub unsafe fn configure_process() -> usize {
    // SAFETY: mi_option_set only stores the option's value.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // SAFETY: the caller guarantees that no other thread exists yet.
    let threads = unsafe { zoo_kernels::runtime::configure_cpu_threads() };
    // 8 MiB like a main thread (rayon's default is the 2 MiB of spawned threads); an error
    // means the pool exists already, which only costs the larger stacks.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(MAIN_STACK_BYTES)
        .build_global();
    threads
}

/// The body of a zoo binary's `main`: the process settings first ([`configure_process`]), then
/// the command line `C`, the environment check, and `run` on one of rayon's threads. (The
/// global allocator, a `static`, stays in each binary.)
///
/// # Safety
/// As [`configure_process`]: call it first thing in `main`, before any other thread exists.
pub unsafe fn run_main<C: clap::Parser + Send>(
    run: impl FnOnce(C) -> anyhow::Result<()> + Send,
) -> anyhow::Result<()> {
    // SAFETY: the caller guarantees that no other thread exists yet.
    unsafe { configure_process() };
    let cli = C::parse();
    check_environment()?;
    zoo_kernels::runtime::on_compute_thread(|| run(cli))
}

/// Stack size of rayon's threads, which run the binaries' whole work.
const MAIN_STACK_BYTES: usize = 8 << 20;
