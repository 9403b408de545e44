//! [`ForwardContext`]: what a network's training forward draws on besides its weights and
//! input, held by the layers that use it, so that nothing outside `forward_t`'s receiver
//! changes its result.
//!
//! A network makes one context when it is built and hands it to its Dropout and BatchNorm
//! layers; [`crate::Model::context`] gives it back, so that a trainer can seed the dropout
//! generator, save and restore its state, and synchronise BatchNorm over data-parallel ranks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use candle_core::Result;
use zoo_kernels::batch_norm::SumOverRanks;

use crate::rng::{RngState, ZooRng, streams};

/// A shared handle (cloning it shares the state): the dropout generator and the group that
/// training-mode BatchNorm sums its statistics over.
#[derive(Clone)]
pub struct ForwardContext {
    inner: Arc<Inner>,
}

struct Inner {
    dropout: Mutex<ZooRng>,
    batch_norm_group: RwLock<Option<SumOverRanks>>,
    batch_norm_frozen: AtomicBool,
}

impl Default for ForwardContext {
    fn default() -> Self {
        Self::new(0)
    }
}

impl std::fmt::Debug for ForwardContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardContext")
            .field("dropout", &self.dropout_state())
            .field(
                "synchronised_batch_norm",
                &self.batch_norm_group().is_some(),
            )
            .field("frozen_batch_norm", &self.batch_norm_frozen())
            .finish()
    }
}

impl ForwardContext {
    /// Dropout masks drawn from the stream `seed` decides (as `torch.manual_seed(seed)`);
    /// BatchNorm over the local batch.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                dropout: Mutex::new(ZooRng::with_stream(seed, streams::DROPOUT)),
                batch_norm_group: RwLock::new(None),
                batch_norm_frozen: AtomicBool::new(false),
            }),
        }
    }

    /// Restarts the dropout stream from `seed`.
    pub fn seed_dropout(&self, seed: u64) {
        *self.generator() = ZooRng::with_stream(seed, streams::DROPOUT);
    }

    /// The dropout generator's state, for a checkpoint.
    pub fn dropout_state(&self) -> RngState {
        self.generator().state()
    }

    /// Continues the dropout stream from a checkpoint's state.
    pub fn set_dropout_state(&self, state: &RngState) {
        *self.generator() = ZooRng::from_state(state);
    }

    /// Runs `f` with the dropout generator.
    pub fn with_dropout_rng<T>(&self, f: impl FnOnce(&mut ZooRng) -> T) -> T {
        f(&mut self.generator())
    }

    /// Training-mode BatchNorm takes its statistics (and its backward the input gradient's
    /// sums) over `group`: synchronised BatchNorm over data-parallel ranks. `None` is the
    /// local batch.
    pub fn set_batch_norm_group(&self, group: Option<SumOverRanks>) {
        *self
            .inner
            .batch_norm_group
            .write()
            .unwrap_or_else(|e| e.into_inner()) = group;
    }

    /// The group training-mode BatchNorm sums over, if any.
    pub fn batch_norm_group(&self) -> Option<SumOverRanks> {
        self.inner
            .batch_norm_group
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Freezes (or thaws) every BatchNorm layer of the network: frozen, a training-mode
    /// forward normalises with the running statistics and leaves them unchanged, as
    /// evaluation does (a fine-tune that trains only a new head; Dropout is unaffected).
    pub fn set_batch_norm_frozen(&self, frozen: bool) {
        self.inner
            .batch_norm_frozen
            .store(frozen, Ordering::Relaxed);
    }

    /// Whether BatchNorm is frozen ([`Self::set_batch_norm_frozen`]).
    pub fn batch_norm_frozen(&self) -> bool {
        self.inner.batch_norm_frozen.load(Ordering::Relaxed)
    }

    /// Whether `other` is this context (the same shared state).
    pub fn same_as(&self, other: &ForwardContext) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn generator(&self) -> MutexGuard<'_, ZooRng> {
        // A panic while drawing cannot leave the generator half-updated in a way that matters.
        self.inner.dropout.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs `f` with `context`'s BatchNorm synchronised over `group`, and puts back the group it
/// had before afterwards, whatever `f` returns.
pub fn with_batch_norm_group<T>(
    context: &ForwardContext,
    group: SumOverRanks,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let previous = context.batch_norm_group();
    context.set_batch_norm_group(Some(group));
    let out = f();
    context.set_batch_norm_group(previous);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_generator_and_state_round_trips() {
        let a = ForwardContext::new(5);
        let b = a.clone();
        assert!(a.same_as(&b));
        let state = a.dropout_state();
        let first = a.with_dropout_rng(|r| r.next_u32());
        // b drew nothing, but shares a's stream: it continues after a's draw.
        let second = b.with_dropout_rng(|r| r.next_u32());
        assert_ne!(first, second);
        b.set_dropout_state(&state);
        assert_eq!(a.with_dropout_rng(|r| r.next_u32()), first);
        a.seed_dropout(5);
        assert_eq!(b.with_dropout_rng(|r| r.next_u32()), first);
        assert!(!a.same_as(&ForwardContext::new(5)));
    }

    #[test]
    fn a_scoped_group_is_set_inside_and_the_previous_one_put_back() -> Result<()> {
        let context = ForwardContext::default();
        let outer: SumOverRanks = Arc::new(|_| Ok(()));
        let inner: SumOverRanks = Arc::new(|v| {
            v.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        });
        context.set_batch_norm_group(Some(outer.clone()));
        let seen =
            with_batch_norm_group(&context, inner.clone(), || Ok(context.batch_norm_group()))?;
        assert!(seen.is_some_and(|g| Arc::ptr_eq(&g, &inner)));
        assert!(
            context
                .batch_norm_group()
                .is_some_and(|g| Arc::ptr_eq(&g, &outer))
        );
        // Also when `f` fails.
        let failed: Result<()> = with_batch_norm_group(&context, inner, || candle_core::bail!("x"));
        assert!(failed.is_err());
        assert!(
            context
                .batch_norm_group()
                .is_some_and(|g| Arc::ptr_eq(&g, &outer))
        );
        Ok(())
    }
}
