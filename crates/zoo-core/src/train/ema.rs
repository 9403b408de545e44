//! An exponential moving average of a model's weights (timm's `--model-ema`): every tensor of
//! the store (parameters and BatchNorm running statistics) is shadowed and, after each optimiser
//! step, moved towards the live value; evaluation can run with the shadow swapped in.
//!
//! The decay at update `t` (1-based) is `min(decay, (1 + t) / (10 + t))`, TensorFlow's
//! `ExponentialMovingAverage(num_updates)` warm-up, so that a short run is not dominated by the
//! random initial weights (with 0.999 and no warm-up, the first 1,000 steps would be).

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Result, Tensor, Var};

use super::inplace::update_in_place;
use crate::distributed::Collective;
use crate::init::{ParamStore, is_buffer};

/// The shadow weights.
pub struct Ema {
    decay: f64,
    /// (name, live variable, shadow), in the store's sorted order.
    shadows: Vec<(String, Var, Tensor)>,
}

impl Ema {
    /// Shadows every tensor of `store`, starting from its current values.
    pub fn new(store: &ParamStore, decay: f64) -> Result<Self> {
        if !(decay.is_finite() && (0.0..1.0).contains(&decay)) {
            candle_core::bail!("EMA decay {decay}: expected a number in [0, 1)")
        }
        let shadows = store
            .named_tensors()
            .into_iter()
            .map(|(name, var)| {
                let shadow = var.as_tensor().detach().copy()?;
                Ok((name, var, shadow))
            })
            .collect::<Result<_>>()?;
        Ok(Self { decay, shadows })
    }

    /// The decay used by update number `t` (1-based).
    pub fn decay_at(&self, t: u64) -> f64 {
        self.decay.min((1.0 + t as f64) / (10.0 + t as f64))
    }

    /// `shadow = d * shadow + (1 - d) * live` for every tensor, `t` being this update's number.
    pub fn update(&mut self, t: u64) -> Result<()> {
        let d = self.decay_at(t);
        for (_, var, shadow) in &mut self.shadows {
            let live = var.as_tensor().detach();
            if fits_in_place(shadow, &live) {
                shadow.inplace_op2(&live, &EmaInPlace { decay: d as f32 })?;
            } else {
                *shadow = ((&*shadow * d)? + (live * (1.0 - d))?)?;
            }
        }
        Ok(())
    }

    /// Sets the shadows of BatchNorm buffers to rank `root`'s: data-parallel ranks' buffers,
    /// and so their shadows, differ (the parameters' shadows are equal on every rank).
    pub fn broadcast_buffers(&mut self, c: &dyn Collective, root: usize) -> Result<()> {
        for (name, _, shadow) in &mut self.shadows {
            if is_buffer(name) {
                *shadow = c.broadcast(shadow, root)?;
            }
        }
        Ok(())
    }

    /// The shadow tensors by name (saved in checkpoints to resume exactly).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.shadows
            .iter()
            .map(|(name, _, shadow)| (name.clone(), shadow.clone()))
            .collect()
    }

    /// Restores the shadows written by [`Self::state_tensors`]; every tensor must be present
    /// with its shape and dtype.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        for (name, var, shadow) in &mut self.shadows {
            let t = tensors.get(name.as_str()).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{source}: the EMA of `{name}` is missing (the run uses an EMA of the weights)"
                ))
            })?;
            let live = var.as_tensor();
            if t.dims() != live.dims() || t.dtype() != live.dtype() {
                candle_core::bail!(
                    "{source}: the EMA of `{name}` is {:?} {:?}, expected {:?} {:?}",
                    t.dtype(),
                    t.dims(),
                    live.dtype(),
                    live.dims()
                )
            }
            *shadow = t.to_device(live.device())?.copy()?;
        }
        Ok(())
    }

    /// Runs `f` with the shadow weights in the model, then puts the live weights back (also
    /// when `f` fails).
    pub fn with_shadow<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let live: Vec<Tensor> = self
            .shadows
            .iter()
            .map(|(_, var, _)| var.as_tensor().detach().copy())
            .collect::<Result<_>>()?;
        for (_, var, shadow) in &self.shadows {
            var.set(shadow)?;
        }
        let out = f();
        for ((_, var, _), saved) in self.shadows.iter().zip(&live) {
            var.set(saved)?;
        }
        out
    }
}

/// Whether the in-place CPU kernel applies: contiguous f32 CPU tensors of one shape.
fn fits_in_place(shadow: &Tensor, live: &Tensor) -> bool {
    matches!(shadow.device(), Device::Cpu)
        && shadow.dtype() == DType::F32
        && live.dtype() == DType::F32
        && shadow.dims() == live.dims()
        && shadow.is_contiguous()
        && live.is_contiguous()
}

/// `shadow = d * shadow + (1 - d) * live`, in place on the shadow: (shadow; live).
struct EmaInPlace {
    decay: f32,
}

impl InplaceOp2 for EmaInPlace {
    fn name(&self) -> &'static str {
        "zoo-ema"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let d = self.decay;
        // (shadow; live), the live tensor read as both sources.
        update_in_place(self.name(), (s1, l1), (s2, l2), (s2, l2), |s, x, _| {
            d * s + (1.0 - d) * x
        })
    }
}
