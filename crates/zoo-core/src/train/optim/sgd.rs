//! SGD as `torch.optim.SGD` (momentum, Nesterov, weight decay; dampening 0): one pass over a
//! f32 CPU parameter and its momentum buffer in place, candle's ops elsewhere.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};

use super::super::inplace::update_in_place;
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
        let step = SgdInPlace {
            lr: step.lr,
            momentum,
            nesterov: self.nesterov,
            weight_decay,
        };
        if momentum == 0.0 {
            return var.as_tensor().inplace_op2(grad, &step);
        }
        let p = &var.as_tensor().detach();
        if state.first.is_none() {
            state.first = Some(p.zeros_like()?);
        }
        let buf = state.first.as_ref().expect("just set");
        buf.inplace_op3(
            grad,
            p,
            &MomentumInPlace {
                momentum,
                weight_decay,
            },
        )?;
        var.as_tensor().inplace_op3(grad, buf, &step)
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

/// `buf = momentum * buf + (grad + weight_decay * p)`, in place on `buf`: (buf; grad, p).
struct MomentumInPlace {
    momentum: f64,
    weight_decay: f64,
}

impl InplaceOp3 for MomentumInPlace {
    fn name(&self) -> &'static str {
        "zoo-sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (mu, wd) = (self.momentum as f32, self.weight_decay as f32);
        // (buf; grad, p)
        update_in_place(self.name(), (s1, l1), (s2, l2), (s3, l3), |b, g, p| {
            let d = if wd != 0.0 { g + wd * p } else { g };
            mu * b + d
        })
    }
}

/// `p -= lr * update` in place on `p`: (p; grad, buf), where the update is
/// `grad + weight_decay * p`, the momentum buffer, or (Nesterov) `d + momentum * buf`,
/// exactly as `torch.optim.SGD` orders the arithmetic.
struct SgdInPlace {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

/// The name of the SGD step kernels (with and without a momentum buffer).
const SGD_STEP: &str = "zoo-sgd-step";

impl InplaceOp3 for SgdInPlace {
    fn name(&self) -> &'static str {
        SGD_STEP
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (lr, mu, wd) = (
            self.lr as f32,
            self.momentum as f32,
            self.weight_decay as f32,
        );
        let (heavy_ball, nesterov) = (mu != 0.0 && !self.nesterov, mu != 0.0 && self.nesterov);
        // (p; grad, buf)
        update_in_place(SGD_STEP, (s1, l1), (s2, l2), (s3, l3), |p, g, b| {
            let update = if heavy_ball {
                b
            } else {
                let d = if wd != 0.0 { g + wd * p } else { g };
                if nesterov { d + mu * b } else { d }
            };
            p - lr * update
        })
    }
}

/// Without momentum: `p -= lr * (grad + weight_decay * p)`, in place on `p`: (p; grad).
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
