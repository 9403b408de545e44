//! [`no_grad`]: a scope in which the layers hand their weights to the kernels detached, as
//! `torch.no_grad()` does: nothing records the graph for a backward pass, so each activation is
//! freed as soon as the next layer has read it (inference memory is one or two activations,
//! not all of them). Gradients with respect to the input still flow when the input is a
//! variable; only the weights stop being tracked. The scope is per thread.

use std::cell::Cell;

use candle_core::Tensor;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with weight gradients off on this thread, and puts back the previous setting
/// afterwards, even when `f` panics.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

/// Whether this thread records weight gradients (outside [`no_grad`]).
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// `weight` as a layer passes it on: itself, or detached inside [`no_grad`].
pub fn tracked(weight: &Tensor) -> Tensor {
    if grad_enabled() {
        weight.clone()
    } else {
        weight.detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn no_grad_detaches_weights_and_restores_the_setting() -> candle_core::Result<()> {
        let w = Var::new(&[2.0f32, 3.0], &Device::Cpu)?;
        let x = Var::new(&[1.0f32, 1.0], &Device::Cpu)?;
        let y = no_grad(|| tracked(w.as_tensor()) * x.as_tensor())?;
        assert!(grad_enabled());
        let grads = y.sum_all()?.backward()?;
        assert!(
            grads.get(w.as_tensor()).is_none(),
            "no gradient for the weight"
        );
        let dx = grads.get(x.as_tensor()).expect("the input still has one");
        assert_eq!(dx.to_vec1::<f32>()?, [2.0, 3.0]);
        let outside = (tracked(w.as_tensor()) * x.as_tensor())?
            .sum_all()?
            .backward()?;
        assert!(outside.get(w.as_tensor()).is_some());
        let nested = std::panic::catch_unwind(|| no_grad(|| panic!("inside")));
        assert!(nested.is_err() && grad_enabled(), "restored after a panic");
        Ok(())
    }
}
