//! The one source of randomness for initialisation, training and sampling. candle's CPU generator cannot be
//! seeded, so every random tensor is drawn here and uploaded. The state (seed, stream position) is two integers,
//! which checkpoints store so a resumed run continues the exact same sequence.
use candle_core::{Device, Result, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    stream: u64,
    inner: ChaCha8Rng,
}

/// Serialisable position of an [`Rng`]. The word position is a u128, kept as a decimal string in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RngState {
    pub seed: u64,
    pub stream: u64,
    pub word_pos: String,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self::derive(seed, 0)
    }

    /// An independent stream for a named purpose (e.g. weight init of one network), so adding draws to one
    /// purpose never shifts another.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        inner.set_stream(stream);
        Self { seed, stream, inner }
    }

    pub fn state(&self) -> RngState {
        RngState { seed: self.seed, stream: self.stream, word_pos: self.inner.get_word_pos().to_string() }
    }

    pub fn from_state(state: &RngState) -> std::result::Result<Self, String> {
        let pos: u128 = state.word_pos.parse().map_err(|_| format!("bad rng position '{}'", state.word_pos))?;
        let mut rng = Self::derive(state.seed, state.stream);
        rng.inner.set_word_pos(pos);
        Ok(rng)
    }

    /// Uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.inner.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform integer in [0, n), without modulo bias.
    pub fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0);
        let zone = u32::MAX - (u32::MAX % n);
        loop {
            let x = self.inner.next_u32();
            if x < zone {
                return x % n;
            }
        }
    }

    /// `n` standard normal draws (Box–Muller in f64, both outputs used).
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = ((self.inner.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
            let u2 = (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            let r = (-2.0 * u1.ln()).sqrt();
            let th = std::f64::consts::TAU * u2;
            out.push((r * th.cos()) as f32);
            out.push((r * th.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(self.normal_vec(n), shape, device)
    }

    pub fn uniform_tensor(&mut self, shape: &[usize], lo: f32, hi: f32, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect();
        Tensor::from_vec(v, shape, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_continues_the_sequence() {
        let mut a = Rng::new(7);
        a.normal_vec(13);
        let s = a.state();
        let mut b = Rng::from_state(&s).unwrap();
        assert_eq!(a.normal_vec(9), b.normal_vec(9));
        assert_eq!(a.below(1000), b.below(1000));
    }

    #[test]
    fn normal_moments() {
        let v = Rng::new(1).normal_vec(200_000);
        let mean: f64 = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var: f64 = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn seeds_and_streams_differ() {
        assert_ne!(Rng::new(1).normal_vec(4), Rng::new(2).normal_vec(4));
        assert_ne!(Rng::derive(1, 1).normal_vec(4), Rng::derive(1, 2).normal_vec(4));
    }
}
