//! AdamW as `torch.optim.AdamW` (non-fused): three passes over a f32 CPU parameter in place,
//! candle's ops elsewhere.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};

use super::super::inplace::update_in_place;
use super::{ParamState, UpdateRule, UpdateStep};

/// `torch.optim.AdamW(params, lr, betas, eps, weight_decay)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl UpdateRule for AdamW {
    /// Three passes over the parameter's size, no allocation after the first step.
    fn update_in_place(
        &self,
        var: &Var,
        grad: &Tensor,
        step: UpdateStep,
        weight_decay: f64,
        state: &mut ParamState,
    ) -> Result<()> {
        let p = var.as_tensor();
        if state.first.is_none() || state.second.is_none() {
            state.first = Some(p.zeros_like()?);
            state.second = Some(p.zeros_like()?);
        }
        let (Some(m), Some(v)) = (&state.first, &state.second) else {
            candle_core::bail!("AdamW: moments missing after their creation")
        };
        let moment = |beta, squared| MomentInPlace { beta, squared };
        m.inplace_op2(grad, &moment(self.beta1, false))?;
        v.inplace_op2(grad, &moment(self.beta2, true))?;
        p.inplace_op3(
            m,
            v,
            &AdamWInPlace {
                lr: step.lr,
                eps: self.eps,
                weight_decay,
                bias1: 1.0 - self.beta1.powi(step.t),
                bias2: 1.0 - self.beta2.powi(step.t),
            },
        )
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
        let (beta1, beta2, lr) = (self.beta1, self.beta2, step.lr);
        let p = &var.as_tensor().detach();
        let m = match &state.first {
            Some(m) => ((m * beta1)? + (grad * (1.0 - beta1))?)?,
            None => (grad * (1.0 - beta1))?,
        };
        let v = match &state.second {
            Some(v) => ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?,
            None => (grad.sqr()? * (1.0 - beta2))?,
        };
        let m_hat = (&m / (1.0 - beta1.powi(step.t)))?;
        let v_hat = (&v / (1.0 - beta2.powi(step.t)))?;
        let decayed = (p * (1.0 - lr * weight_decay))?;
        let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
        var.set(&(decayed - (update * lr)?)?)?;
        state.first = Some(m);
        state.second = Some(v);
        Ok(())
    }

    fn slots(&self) -> &'static [&'static str] {
        &["first", "second"]
    }

    fn weight_decay(&self) -> f64 {
        self.weight_decay
    }
}

/// An AdamW moment, in place: `m = beta * m + (1 - beta) * g` (or `g^2`): (m; grad).
struct MomentInPlace {
    beta: f64,
    squared: bool,
}

impl InplaceOp2 for MomentInPlace {
    fn name(&self) -> &'static str {
        "zoo-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (beta, rest) = (self.beta as f32, (1.0 - self.beta) as f32);
        let squared = self.squared;
        update_in_place(self.name(), (s1, l1), (s2, l2), (s2, l2), |m, g, _| {
            let g = if squared { g * g } else { g };
            beta * m + rest * g
        })
    }
}

/// The AdamW step in place on `p`: (p; m, v), as `torch.optim.AdamW` (non-fused) orders it:
/// `p *= 1 - lr * wd`, then `p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)`.
struct AdamWInPlace {
    lr: f64,
    eps: f64,
    weight_decay: f64,
    bias1: f64,
    bias2: f64,
}

impl InplaceOp3 for AdamWInPlace {
    fn name(&self) -> &'static str {
        "zoo-adamw-step"
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
        let decay = (1.0 - self.lr * self.weight_decay) as f32;
        let step = (self.lr / self.bias1) as f32;
        let root2 = self.bias2.sqrt() as f32;
        let eps = self.eps as f32;
        update_in_place(self.name(), (s1, l1), (s2, l2), (s3, l3), |p, m, v| {
            p * decay - step * m / (v.sqrt() / root2 + eps)
        })
    }
}
