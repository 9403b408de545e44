//! SGD as `torch.optim.SGD` (momentum, Nesterov, weight decay; dampening 0): one pass over a
//! f32 CPU parameter, its momentum buffer and its gradient in place, candle's ops elsewhere.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};

use super::super::inplace::{step_in_place_one_slot, update_in_place};
use super::{ParamState, UpdateRule, UpdateStep};

/// `torch.optim.SGD(params, lr, momentum, weight_decay, nesterov)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl UpdateRule for Sgd {
    /// One pass over the parameter (and its momentum buffer), no allocation.
    fn update_in_place(
        &self,
        var: &Var,
        grad: &Tensor,
        step: UpdateStep,
        weight_decay: f64,
        state: &mut ParamState,
    ) -> Result<()> {
        let momentum = self.momentum;
        if momentum == 0.0 {
            let plain = SgdInPlace {
                lr: step.lr,
                weight_decay,
            };
            return var.as_tensor().inplace_op2(grad, &plain);
        }
        let p = &var.as_tensor().detach();
        if state.first.is_none() {
            state.first = Some(p.zeros_like()?);
        }
        let buf = state.first.as_ref().expect("just set");
        let (lr, mu, wd) = (step.lr as f32, momentum as f32, weight_decay as f32);
        let nesterov = self.nesterov;
        // As `torch.optim.SGD` orders the arithmetic: `d = grad + wd * p`,
        // `buf = momentum * buf + d`, `p -= lr * (nesterov ? d + momentum * buf : buf)`.
        step_in_place_one_slot(SGD_STEP, p, buf, grad, |p, b, g| {
            let d = if wd != 0.0 { g + wd * *p } else { g };
            *b = mu * *b + d;
            *p -= lr * if nesterov { d + mu * *b } else { *b };
        })
    }

    /// The same update with candle's ops (another device or dtype).
    fn update_composed(
        &self,
        var: &Var,
        grad: &Tensor,
        step: UpdateStep,
        weight_decay: f64,
        state: &mut ParamState,
    ) -> Result<()> {
        let lr = step.lr;
        let p = &var.as_tensor().detach();
        let mut d = if weight_decay != 0.0 {
            (grad + (p * weight_decay)?)?
        } else {
            grad.clone()
        };
        if self.momentum != 0.0 {
            let buf = match &state.first {
                Some(buf) => ((buf * self.momentum)? + &d)?,
                None => d.clone(),
            };
            d = if self.nesterov {
                (&d + (&buf * self.momentum)?)?
            } else {
                buf.clone()
            };
            state.first = Some(buf);
        }
        var.set(&(p - (d * lr)?)?)
    }

    fn slots(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &["first"]
        } else {
            &[]
        }
    }

    fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
}

/// Without momentum: `p -= lr * (grad + weight_decay * p)` in place on `p`: (p; grad).
struct SgdInPlace {
    lr: f64,
    weight_decay: f64,
}

/// The name of the SGD step kernels (with and without a momentum buffer).
const SGD_STEP: &str = "zoo-sgd-step";

impl InplaceOp2 for SgdInPlace {
    fn name(&self) -> &'static str {
        SGD_STEP
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (lr, wd) = (self.lr as f32, self.weight_decay as f32);
        // (p; grad), the gradient read as both sources
        update_in_place(SGD_STEP, (s1, l1), (s2, l2), (s2, l2), |p, g, _| {
            let d = if wd != 0.0 { g + wd * p } else { g };
            p - lr * d
        })
    }
}
