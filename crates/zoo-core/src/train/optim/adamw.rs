//! AdamW as `torch.optim.AdamW` (non-fused): one pass over a f32 CPU parameter, its two
//! moments and its gradient in place, candle's ops elsewhere.

use candle_core::{Result, Tensor, Var};

use super::super::inplace::step_in_place;
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
    /// One pass over the parameter, its moments and its gradient; no allocation after the
    /// first step.
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
        let (beta1, beta2) = (self.beta1 as f32, self.beta2 as f32);
        let (rest1, rest2) = ((1.0 - self.beta1) as f32, (1.0 - self.beta2) as f32);
        // As `torch.optim.AdamW` (non-fused) orders it: `p *= 1 - lr * wd`, then
        // `p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)`.
        let decay = (1.0 - step.lr * weight_decay) as f32;
        let rate = (step.lr / (1.0 - self.beta1.powi(step.t))) as f32;
        let root2 = (1.0 - self.beta2.powi(step.t)).sqrt() as f32;
        let eps = self.eps as f32;
        step_in_place("zoo-adamw-step", p, (m, v), grad, |p, m, v, g| {
            *m = beta1 * *m + rest1 * g;
            *v = beta2 * *v + rest2 * (g * g);
            *p = *p * decay - rate * *m / (v.sqrt() / root2 + eps);
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
