//! Checks every model crate's tests share (shapes against the notebook in both modes, gradients
//! reaching every parameter), test inputs and stores with fixed seeds, and comparisons.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var};
pub use zoo_kernels::testing::{assert_close, max_abs_diff, weighted_sum_grads};

use crate::init::{InitScheme, ParamStore};
use crate::model::Model;
use crate::rng::ZooRng;
pub use crate::scratch::ScratchDir;

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

/// Checks that the tensors of `store` (parameters and BatchNorm statistics) are exactly those
/// of a reference state dict, `expected` (name, shape), with the same shapes: the test that a
/// network follows a PyTorch definition's names (leave out its `num_batches_tracked` buffers,
/// which zoo has none of). The error lists what only one side has and the shapes that differ.
pub fn check_state_dict(store: &ParamStore, expected: &[(String, Vec<usize>)]) -> Result<()> {
    let ours: BTreeMap<String, Vec<usize>> = store
        .named_tensors()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().dims().to_vec()))
        .collect();
    let theirs: BTreeMap<String, Vec<usize>> = expected.iter().cloned().collect();
    let only_ours: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let shapes: Vec<String> = ours
        .iter()
        .filter_map(|(k, s)| {
            let t = theirs.get(k)?;
            (t != s).then(|| format!("{k}: {s:?}, reference {t:?}"))
        })
        .collect();
    if !only_ours.is_empty() || !only_theirs.is_empty() || !shapes.is_empty() {
        candle_core::bail!(
            "state dicts differ: only zoo has {only_ours:?}; only the reference has \
             {only_theirs:?}; shapes differ: {shapes:?}"
        )
    }
    Ok(())
}

/// The names and shapes of the tensors of `store` (parameters and BatchNorm statistics) as a
/// count and the FNV-1a digest of their sorted `name:d0,d1,..` lines (each ending in `\n`):
/// what `scripts/tv_parity.py` records of a state dict too large to list in a fixture.
pub fn state_dict_digest(store: &ParamStore) -> (usize, u64) {
    let lines: BTreeMap<String, String> = store
        .named_tensors()
        .into_iter()
        .map(|(name, var)| {
            let dims: Vec<String> = var
                .as_tensor()
                .dims()
                .iter()
                .map(usize::to_string)
                .collect();
            let line = format!("{name}:{}\n", dims.join(","));
            (name, line)
        })
        .collect();
    let count = lines.len();
    let text: String = lines.into_values().collect();
    (count, fnv1a(&text))
}

/// The largest difference between the sums of the BatchNorm running statistics of `store` and
/// a reference's (`expected`: name, sum), each relative to `max(|reference|, 1)`: the check
/// that a training-mode forward updated every running statistic as PyTorch does. An error when
/// a name of `expected` is not in `store`, or a running statistic of `store` not in `expected`.
pub fn running_sums_error(store: &ParamStore, expected: &[(String, f64)]) -> Result<f64> {
    let ours: BTreeMap<String, Var> = store
        .named_tensors()
        .into_iter()
        .filter(|(name, _)| crate::init::is_buffer(name))
        .collect();
    if ours.len() != expected.len() {
        candle_core::bail!(
            "zoo holds {} running statistics, the reference {}",
            ours.len(),
            expected.len()
        )
    }
    let mut worst = 0f64;
    for (name, want) in expected {
        let Some(var) = ours.get(name) else {
            candle_core::bail!("the reference's running statistic `{name}` is not zoo's")
        };
        let got = var
            .as_tensor()
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        worst = worst.max((got - want).abs() / want.abs().max(1.0));
    }
    Ok(worst)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ForwardContext;
    use crate::nn::{BatchNorm2d, Linear};

    /// `fnv1a("bn.bias:3\nbn.running_mean:3\nbn.running_var:3\nbn.weight:3\nfc.bias:2\n\
    /// fc.weight:2,3\n")` by `scripts/parity.py`'s `fnv1a`.
    const DIGEST: u64 = 0x269b_360e_cc1a_d33c;

    #[test]
    fn state_dicts_and_running_sums_compare_by_name() -> Result<()> {
        let store = test_store(0);
        let vb = store.var_builder();
        BatchNorm2d::new(3, vb.pp("bn"), &ForwardContext::default())?;
        Linear::new(3, 2, vb.pp("fc"))?;
        let mut expected: Vec<(String, Vec<usize>)> = [
            ("bn.weight", vec![3]),
            ("bn.bias", vec![3]),
            ("bn.running_mean", vec![3]),
            ("bn.running_var", vec![3]),
            ("fc.weight", vec![2, 3]),
            ("fc.bias", vec![2]),
        ]
        .map(|(k, s)| (k.to_string(), s))
        .into();
        check_state_dict(&store, &expected)?;
        assert_eq!(state_dict_digest(&store), (6, DIGEST));
        expected[4].1 = vec![3, 2];
        let err = check_state_dict(&store, &expected).unwrap_err().to_string();
        assert!(err.contains("fc.weight: [2, 3], reference [3, 2]"), "{err}");
        expected[4] = ("fc.kernel".into(), vec![2, 3]);
        let err = check_state_dict(&store, &expected).unwrap_err().to_string();
        assert!(err.contains(r#"only zoo has ["fc.weight"]"#), "{err}");
        assert!(
            err.contains(r#"only the reference has ["fc.kernel"]"#),
            "{err}"
        );

        // A fresh BatchNorm: running mean 0, running variance 1.
        let sums = |mean: f64, var: f64| {
            [("bn.running_mean", mean), ("bn.running_var", var)].map(|(k, v)| (k.to_string(), v))
        };
        assert_eq!(running_sums_error(&store, &sums(0.0, 3.0))?, 0.0);
        let e = running_sums_error(&store, &sums(0.5, 3.3))?;
        assert!((e - 0.5).abs() < 1e-12, "{e}");
        assert!(running_sums_error(&store, &sums(0.0, 3.0)[..1]).is_err());
        Ok(())
    }
}
