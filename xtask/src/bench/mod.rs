//! `cargo xtask bench`: benchmarks that print figures (models against PyTorch, kernels against
//! candle's compositions and PyTorch's convolutions, the data pipeline), and what they share.

pub mod data;
pub mod models;
pub mod ops;
pub mod torch;

use std::time::Instant;

use anyhow::Result;

/// The median (the mean of the two middle values for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Milliseconds of `f`, the median of `steps` runs after one warm-up.
pub fn median_ms(steps: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    anyhow::ensure!(steps > 0, "--steps must be at least 1");
    f()?;
    let mut t = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}
