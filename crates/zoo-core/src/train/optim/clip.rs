//! Gradient clipping by global norm (`torch.nn.utils.clip_grad_norm_`), on the device.

use candle_core::{DType, Result, Tensor, Var, backprop::GradStore};

/// Scales all gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`), on their device: nothing is read to the host. Returns
/// the norm before clipping, as an f32 scalar there.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<Tensor> {
    let squares = params
        .iter()
        .filter_map(|(_, var)| grads.get(var.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if squares.is_empty() {
        candle_core::bail!("clip_grad_norm: no parameter has a gradient")
    }
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    // min(1, max_norm / (norm + 1e-6)): exactly 1 when the norm is within bounds.
    let scale = ((norm.clone() + 1e-6)?.recip()? * max_norm)?.clamp(0f32, 1f32)?;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let scaled = g.broadcast_mul(&scale.to_dtype(g.dtype())?)?;
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}
