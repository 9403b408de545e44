//! Checks every model crate's tests share (shapes against the notebook in both modes, gradients
//! reaching every parameter), test inputs and stores with fixed seeds, and comparisons.

use candle_core::{DType, Device, Result, Tensor};
pub use zoo_kernels::testing::{assert_close, max_abs_diff, weighted_sum_grads};

use crate::init::{InitScheme, ParamStore};
use crate::model::Model;
use crate::rng::ZooRng;

/// A store with a fixed seed for tests.
pub fn test_store(seed: u64) -> ParamStore {
    ParamStore::new(seed, InitScheme::XavierUniform, DType::F32, &Device::Cpu)
}

/// Deterministic test input in [-1, 1).
pub fn test_input(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n = shape.iter().product();
    let values = ZooRng::new(seed).uniform_vec(n, -1.0, 1.0);
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Checks the top-level output shapes of `model`:
/// - derived analytically for `[batch_printed, ..]` against `expected` (the notebook's table);
/// - computed by a real forward pass with batch `batch_run`, in training and in evaluation mode.
///
/// `expected` holds `(kind, shape)` per top-level layer, with the notebook's batch size.
pub fn check_layer_shapes(
    model: &dyn Model,
    input_chw: [usize; 3],
    expected: &[(&str, &[usize])],
    batch_run: usize,
) -> Result<()> {
    let layers = model.body().layers();
    if layers.len() != expected.len() {
        candle_core::bail!(
            "{} top-level layers, the notebook prints {}",
            layers.len(),
            expected.len()
        )
    }
    let batch_printed = expected[0].1[0];
    let mut shape = vec![batch_printed, input_chw[0], input_chw[1], input_chw[2]];
    for (i, (layer, (kind, want))) in layers.iter().zip(expected).enumerate() {
        shape = layer.output_shape(&shape)?;
        if layer.kind() != *kind || shape.as_slice() != *want {
            candle_core::bail!(
                "layer {i}: {} {:?}, the notebook prints {kind} {want:?}",
                layer.kind(),
                shape
            )
        }
    }
    for train in [true, false] {
        model.context().seed_dropout(0);
        let mut x = test_input(&[batch_run, input_chw[0], input_chw[1], input_chw[2]], 1)?;
        for (i, (layer, (_, want))) in layers.iter().zip(expected).enumerate() {
            x = layer.forward_t(&x, train)?;
            let mut want = want.to_vec();
            want[0] = batch_run;
            if x.dims() != want.as_slice() {
                candle_core::bail!(
                    "layer {i} (train={train}): forward gives {:?}, expected {want:?}",
                    x.dims()
                )
            }
        }
    }
    Ok(())
}

/// Runs one training-mode forward and backward pass and checks that every trainable tensor of
/// `store` receives a non-zero gradient, and that the parameter count of the store equals the
/// model's.
pub fn check_backward_reaches_every_parameter(
    store: &ParamStore,
    model: &dyn Model,
    input: &[usize],
) -> Result<()> {
    model.context().seed_dropout(3);
    let x = test_input(input, 2)?;
    let logits = model.forward_t(&x, true)?;
    let n = logits.dim(0)?;
    let labels: Vec<u32> = (0..n as u32)
        .map(|i| i % model.num_classes() as u32)
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let grads = loss.backward()?;
    // Every parameter is in the graph, and every weight gets a non-zero gradient. (A bias
    // whose convolution feeds a training-mode BatchNorm has an exactly zero gradient: the
    // normalisation removes it. At 1x1 resolution the closed form makes it exactly 0.)
    let mut missing = Vec::new();
    for (name, var) in store.trainable() {
        match grads.get(var.as_tensor()) {
            Some(g) if name.ends_with("bias") || g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0 => {}
            _ => missing.push(name),
        }
    }
    if !missing.is_empty() {
        candle_core::bail!("no gradient reaches {missing:?}")
    }
    if store.num_trainable() != model.num_params() {
        candle_core::bail!(
            "store holds {} trainable values, the layers count {}",
            store.num_trainable(),
            model.num_params()
        )
    }
    Ok(())
}

/// FNV-1a (64-bit) of `text`.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

/// `2u - 1` with `u = splitmix64(i + fnv1a(key) * golden) >> 11 / 2^53`, as `scripts/parity.py`.
pub fn signed_uniform(n: usize, key: &str) -> impl Iterator<Item = f64> {
    let offset = fnv1a(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64).map(move |i| {
        let mut z = i.wrapping_add(offset);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0
    })
}

/// The formula of `scripts/parity.py` for the tensor `name` of shape `dims`: the weights of
/// the parity tests against PyTorch, reproducible in NumPy bit for bit.
pub fn formula(name: &str, dims: &[usize]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let s = signed_uniform(n, name);
    let values: Vec<f64> = if name.ends_with("running_mean") {
        s.map(|v| 0.1 * v).collect()
    } else if name.ends_with("running_var") {
        s.map(|v| 1.0 + 0.5 * v.abs()).collect()
    } else if name.ends_with("weight") && dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        let scale = (3.0 / fan_in as f64).sqrt();
        s.map(|v| v * scale).collect()
    } else if name.ends_with("weight") {
        s.map(|v| 1.0 + 0.1 * v).collect()
    } else {
        s.map(|v| 0.1 * v).collect()
    };
    values.into_iter().map(|v| v as f32).collect()
}

/// Every tensor of `store` (parameters and BatchNorm statistics) set by [`formula`].
pub fn fill_by_formula(store: &ParamStore) {
    for (name, var) in store.named_tensors() {
        let dims = var.as_tensor().dims().to_vec();
        let values = Tensor::from_vec(formula(&name, &dims), dims, &Device::Cpu);
        var.set(&values.expect("formula gives the tensor's size"))
            .expect("same shape and dtype");
    }
}

/// The parity tests' input: two `c` x `size` x `size` images of `signed_uniform(.., "input")`.
pub fn formula_input(c: usize, size: usize) -> Tensor {
    let v: Vec<f32> = signed_uniform(2 * c * size * size, "input")
        .map(|v| v as f32)
        .collect();
    Tensor::from_vec(v, (2, c, size, size), &Device::Cpu).expect("the size it was given")
}

/// `max |got - want| / max |want|`: how far a result lies from a reference, relative to the
/// reference's scale (the parity tests' measure).
pub fn max_relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "a result and its reference differ in length"
    );
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale
}
