//! [`frozen_weights`]: a scope in which the caller vouches that no weight changes, so a layer
//! may keep what it derives from its weights (a convolution's used-tap matrix on small maps)
//! from one call to the next instead of deriving it on every call. Each scope has its own
//! generation: what was kept in one is never used in another, so weights changed between two
//! scopes (an optimiser step, an EMA swap, a loaded checkpoint) are always seen. Layers keep
//! nothing while weight gradients are on (outside `crate::grad::no_grad`), so a training step
//! is never affected. The scope is per thread: open it on the thread that runs the forward
//! (inside `on_compute_thread`, not around it). Inference (`zoo predict`, evaluation passes,
//! benchmarks) runs in one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static GENERATION: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The next scope's generation (never 0, never reused in a process).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs `f` in a frozen-weights scope with a generation of its own (a scope opened inside
/// another keeps the outer one's), and closes it afterwards, even when `f` panics. Changing a
/// weight inside the scope is a caller's error: layers may go on using what they derived from
/// the old value until the scope ends.
pub fn frozen_weights<T>(f: impl FnOnce() -> T) -> T {
    if frozen_generation().is_some() {
        return f();
    }
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            GENERATION.with(|g| g.set(None));
        }
    }
    let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
    GENERATION.with(|g| g.set(Some(generation)));
    let _close = Close;
    f()
}

/// The generation of this thread's frozen-weights scope, `None` outside one.
pub fn frozen_generation() -> Option<u64> {
    GENERATION.with(|g| g.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_has_its_own_generation_and_nested_scopes_share_it() {
        assert_eq!(frozen_generation(), None);
        let first = frozen_weights(|| {
            let outer = frozen_generation().unwrap();
            assert_eq!(frozen_weights(frozen_generation), Some(outer));
            outer
        });
        assert_eq!(frozen_generation(), None);
        let second = frozen_weights(|| frozen_generation().unwrap());
        assert_ne!(first, second);
        let unwound = std::panic::catch_unwind(|| frozen_weights(|| panic!("inside")));
        assert!(unwound.is_err());
        assert_eq!(frozen_generation(), None);
    }
}
