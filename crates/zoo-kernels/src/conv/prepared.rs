//! Weights a convolution's forward derives from its kernel (the used taps' matrix on small
//! maps, the Winograd-transformed kernels, the tiled path's packing), kept between calls while
//! the caller vouches that the kernel does not change.

use std::sync::{Arc, Mutex};

use super::geometry::ConvShape;
use super::winograd::Variant;

/// What a forward derives from a kernel: each is a function of the kernel and of this alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Derivation {
    /// The used taps' `(O, C * taps)` matrix (the GEMM path on small maps).
    Taps(Vec<(usize, usize)>),
    /// The kernels transformed for one Winograd variant and packed for the tile kernels.
    Winograd(Variant),
    /// The kernels packed by tile of output channels (the tiled path).
    Tiled,
}

/// The most derivations one layer keeps in a generation: a layer sees one input size in
/// inference, and an evaluation's last, smaller batch may take a second path.
const KEPT_PER_GENERATION: usize = 3;

/// One layer's derived weights, valid for one generation of a frozen-weights scope
/// (`zoo_nn::frozen`): a later generation or another kernel shape derives them anew. Without
/// it every forward derives them again: on a 1x1 map a 512x512 3x3 kernel's centre taps are
/// read from all of its 9.4 MB (half of ResNet-18's batch-1 inference at 32 px), and the
/// Winograd path writes and reads transformed kernels 4 times the kernel's size per call.
#[derive(Debug, Default)]
pub struct PreparedWeights {
    slot: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    generation: u64,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    kernel: (usize, usize, usize),
    what: Derivation,
    weights: Arc<Vec<f32>>,
}

impl PreparedWeights {
    /// `what` derived from the kernel of `s` for `generation`: the kept one when it was derived
    /// in the same generation for the same kernel shape, else `derive()`, kept for the next
    /// call.
    pub(super) fn get(
        &self,
        generation: u64,
        s: &ConvShape,
        what: Derivation,
        derive: impl FnOnce() -> Vec<f32>,
    ) -> Arc<Vec<f32>> {
        let kernel = (s.o, s.c, s.k);
        let lock = || match self.slot.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        {
            let kept = lock();
            if kept.generation == generation
                && let Some(e) = kept
                    .entries
                    .iter()
                    .find(|e| e.kernel == kernel && e.what == what)
            {
                return e.weights.clone();
            }
        }
        // Derived without the lock held: the derivation runs on rayon's threads, which may
        // meanwhile take up another forward of this layer.
        let weights = Arc::new(derive());
        let mut kept = lock();
        if kept.generation != generation {
            *kept = Kept {
                generation,
                entries: Vec::new(),
            };
        }
        if kept.entries.len() == KEPT_PER_GENERATION {
            kept.entries.remove(0);
        }
        kept.entries.push(Entry {
            kernel,
            what,
            weights: weights.clone(),
        });
        weights
    }
}
