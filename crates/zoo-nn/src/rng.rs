//! Seeded, portable random numbers: the one generator behind initialisation, dropout and shuffling.
//!
//! candle's CPU generator cannot be seeded (`Device::Cpu.set_seed` fails), so zoo draws every
//! random number it needs from [`ZooRng`], a ChaCha8 stream whose output is the same on every
//! machine and whose state can be saved into a checkpoint and restored.
//!
//! Every use takes its own explicitly seeded [`ZooRng`]: initialisation (the store's seed),
//! shuffling and augmentation (the loader's), dropout (a network's
//! [`crate::ForwardContext`]).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// A seeded ChaCha8 generator with portable float sampling.
#[derive(Debug, Clone)]
pub struct ZooRng {
    inner: ChaCha8Rng,
}

/// The complete state of a [`ZooRng`]: enough to continue the stream exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Position in the stream, in 32-bit words (a u128 stored as two halves for TOML/JSON).
    pub word_pos_hi: u64,
    pub word_pos_lo: u64,
}

impl ZooRng {
    /// A generator determined entirely by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A generator for one purpose (`stream`) under a run seed: independent streams such as
    /// "init", "dropout" and "shuffle" never share numbers.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        Self { inner }
    }

    pub fn state(&self) -> RngState {
        let pos = self.inner.get_word_pos();
        RngState {
            seed: self.inner.get_seed(),
            stream: self.inner.get_stream(),
            word_pos_hi: (pos >> 64) as u64,
            word_pos_lo: pos as u64,
        }
    }

    pub fn from_state(state: &RngState) -> Self {
        let mut inner = ChaCha8Rng::from_seed(state.seed);
        inner.set_stream(state.stream);
        inner.set_word_pos(((state.word_pos_hi as u128) << 64) | state.word_pos_lo as u128);
        Self { inner }
    }

    pub fn next_u32(&mut self) -> u32 {
        self.inner.next_u32()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// Uniform in [0, 1), 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.inner.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform_f64()
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform_f64(); // in (0, 1]
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in [0, n), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "ZooRng::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.inner.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// `n` values uniform in [lo, hi) as f32.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform_range(lo, hi) as f32).collect()
    }

    /// `n` values from N(mean, std^2) as f32.
    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (mean + std * self.normal()) as f32)
            .collect()
    }
}

/// Stream numbers: one per purpose, so each draws from its own sequence.
pub mod streams {
    pub const INIT: u64 = 1;
    pub const DROPOUT: u64 = 2;
    pub const SHUFFLE: u64 = 3;
    pub const AUGMENT: u64 = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_state_round_trips() {
        let mut a = ZooRng::new(7);
        let mut b = ZooRng::new(7);
        let xa: Vec<u32> = (0..10).map(|_| a.next_u32()).collect();
        let xb: Vec<u32> = (0..10).map(|_| b.next_u32()).collect();
        assert_eq!(xa, xb);
        let state = a.state();
        let next_a: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let mut c = ZooRng::from_state(&state);
        let next_c: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(next_a, next_c);
        assert_ne!(ZooRng::new(8).next_u32(), ZooRng::new(7).next_u32());
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = ZooRng::new(1);
        let n = 100_000;
        let u: Vec<f64> = (0..n).map(|_| r.uniform_f64()).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let z: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let m = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(
            m.abs() < 0.02 && (v - 1.0).abs() < 0.03,
            "normal mean {m} var {v}"
        );
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..100).collect();
        ZooRng::new(3).shuffle(&mut a);
        let mut b: Vec<usize> = (0..100).collect();
        ZooRng::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
