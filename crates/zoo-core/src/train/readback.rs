//! Every device-to-host read of the training loop, in one place and counted: the step keeps its
//! loss and accuracy on the device and reads them every few steps, evaluation once per pass.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// How many reads the training loop and evaluation have made on this thread (a test's
/// counting hook: the step must not read the device every step).
pub fn host_reads() -> u64 {
    READS.with(Cell::get)
}

/// All values of `t` as f64, in one device-to-host copy.
pub fn read_to_host(t: &Tensor) -> Result<Vec<f64>> {
    READS.with(|r| r.set(r.get() + 1));
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(values.into_iter().map(f64::from).collect())
}
