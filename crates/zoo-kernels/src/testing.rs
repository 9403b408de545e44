//! Test inputs and comparisons for tests of kernels against candle's compositions (these and
//! zoo-core's `testing`, which re-exports the comparisons).

use candle_core::{Device, Result, Tensor, backprop::GradStore};

/// Deterministic test input in [-1, 1) (SplitMix64, 24 bits per value).
pub fn test_input(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// The largest absolute element-wise difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Asserts that `got` equals `want` within a relative error `tol` (of `want`'s largest
/// magnitude); the message names `what` and the error.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes");
    let values = |t: &Tensor| -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("an f32 tensor")
    };
    let (got, want) = (values(got), values(want));
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale;
    assert!(err <= tol, "{what}: relative error {err}");
}

/// The gradients of `sum(y * upstream)`: each element of `y` receives its own upstream
/// gradient (a stronger check than `sum(y)`, whose upstream is all ones).
pub fn weighted_sum_grads(y: &Tensor, upstream: &Tensor) -> Result<GradStore> {
    (y * upstream)?.sum_all()?.backward()
}

#[cfg(test)]
#[test]
fn inputs_are_deterministic_in_range_and_differ_by_seed() {
    let a = test_input(&[1000], 1).unwrap().to_vec1::<f32>().unwrap();
    let b = test_input(&[1000], 1).unwrap().to_vec1::<f32>().unwrap();
    let c = test_input(&[1000], 2).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    let mean = a.iter().sum::<f32>() / 1000.0;
    assert!(mean.abs() < 0.1, "mean {mean}");
}
