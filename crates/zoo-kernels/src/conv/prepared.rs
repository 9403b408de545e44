//! Weights a convolution's forward derives from its kernel (the used taps' matrix on small
//! maps), kept between calls while the caller vouches that the kernel does not change.

use std::sync::{Arc, Mutex};

use super::geometry::ConvShape;
use super::im2col::Taps;

/// One layer's derived weights, valid for one generation of a frozen-weights scope
/// (`zoo_nn::frozen`): a later generation, another tap set or another kernel shape derives
/// them anew. Without it every forward gathers them again: on a 1x1 map a 512x512 3x3
/// kernel's centre taps are read from all of its 9.4 MB (half of ResNet-18's batch-1 inference
/// at 32 px).
#[derive(Debug, Default)]
pub struct PreparedWeights {
    slot: Mutex<Option<Prepared>>,
}

#[derive(Debug)]
struct Prepared {
    generation: u64,
    taps: Vec<(usize, usize)>,
    kernel: (usize, usize, usize),
    selected: Arc<Vec<f32>>,
}

impl PreparedWeights {
    /// The used taps' `(O, C * taps)` matrix of `w` for `generation`: the kept one when it was
    /// derived in the same generation for the same taps and kernel shape, else `derive()`,
    /// kept for the next call.
    pub(super) fn selected(
        &self,
        generation: u64,
        s: &ConvShape,
        taps: &Taps,
        derive: impl FnOnce() -> Vec<f32>,
    ) -> Arc<Vec<f32>> {
        let kernel = (s.o, s.c, s.k);
        let lock = || match self.slot.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(p) = lock().as_ref()
            && p.generation == generation
            && p.kernel == kernel
            && p.taps == taps.0
        {
            return p.selected.clone();
        }
        // Derived without the lock held: the derivation runs on rayon's threads, which may
        // meanwhile take up another forward of this layer.
        let selected = Arc::new(derive());
        *lock() = Some(Prepared {
            generation,
            taps: taps.0.clone(),
            kernel,
            selected: selected.clone(),
        });
        selected
    }
}
