//! Quantisation of real-valued vectors into the aggregation ring, with clipping (the scheme of
//! Flower's SecAgg+ `quantize`, so both aggregate the same integers).
//!
//! `q(x) = round((clip(x, −c, c) + c) · r / (2c))` with clipping range `c > 0` and quantisation
//! range `r` (levels; `q ∈ 0 ..= r`). Rounding is either to nearest (ties away from zero,
//! deterministic) or stochastic (up with probability equal to the fractional part, so
//! `E[q(x)] = (x + c)·r/(2c)`, unbiased; the RNG is the caller's). The sum of `m` quantised
//! vectors is exact in the ring while `m · r` is below the modulus ([`Quantiser::check_headroom`]),
//! and its mean is `sum / m · 2c / r − c` ([`Quantiser::dequantise_mean`]).

use rand_core::{CryptoRng, RngCore};

use crate::{FlError, Modulus};

/// How a scaled value is rounded to an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// To the nearest integer (ties away from zero).
    Nearest,
    /// Up with probability equal to the fractional part (unbiased).
    Stochastic,
}

/// Clipping range, quantisation range and rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiser {
    /// `c`: inputs are clipped to `[−c, c]`; finite and positive.
    pub clip: f64,
    /// `r`: quantised values lie in `0 ..= r`; at least 1.
    pub levels: u64,
    /// The rounding rule.
    pub rounding: Rounding,
}

impl Quantiser {
    fn check(&self) -> Result<(), FlError> {
        if !(self.clip.is_finite() && self.clip > 0.0) || self.levels == 0 {
            return Err(FlError::Config(format!(
                "quantiser: clip {} must be finite and positive, levels {} at least 1",
                self.clip, self.levels
            )));
        }
        Ok(())
    }

    /// Refuses a setting where the sum of `clients` quantised values could wrap the modulus.
    pub fn check_headroom(&self, clients: u32, modulus: Modulus) -> Result<(), FlError> {
        self.check()?;
        let top = u128::from(self.levels) * u128::from(clients);
        if top > u128::from(modulus.max_value()) {
            return Err(FlError::Config(format!(
                "{clients} clients × {} levels exceeds the modulus: the sum would wrap",
                self.levels
            )));
        }
        Ok(())
    }

    /// Quantises `values`. Errors: [`FlError::Config`] for a bad quantiser,
    /// [`FlError::InvalidInput`] for a NaN.
    pub fn quantise<R: RngCore + CryptoRng>(
        &self,
        values: &[f32],
        rng: &mut R,
    ) -> Result<Vec<u64>, FlError> {
        self.check()?;
        let c = self.clip;
        let scale = self.levels as f64 / (2.0 * c);
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x.is_nan() {
                    return Err(FlError::InvalidInput(format!("element {i} is NaN")));
                }
                let y = (f64::from(x).clamp(-c, c) + c) * scale;
                let q = match self.rounding {
                    Rounding::Nearest => y.round(),
                    Rounding::Stochastic => {
                        let f = y.floor();
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        if u < y - f { f + 1.0 } else { f }
                    }
                };
                Ok((q as u64).min(self.levels))
            })
            .collect()
    }

    /// The mean of `count` vectors from their quantised sum.
    pub fn dequantise_mean(&self, sum: &[u64], count: usize) -> Vec<f64> {
        let step = 2.0 * self.clip / self.levels as f64;
        let m = count.max(1) as f64;
        sum.iter()
            .map(|&s| s as f64 / m * step - self.clip)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flower_grid_values_quantise_exactly_and_clip() {
        // x = k / 2^18 − 8 with c = 8, r = 2^22 maps to k exactly (the benchmark's data).
        let q = Quantiser {
            clip: 8.0,
            levels: 1 << 22,
            rounding: Rounding::Stochastic,
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let ks = [0u64, 1, 12345, (1 << 22) - 1];
        let xs: Vec<f32> = ks
            .iter()
            .map(|&k| k as f32 / (1u32 << 18) as f32 - 8.0)
            .collect();
        assert_eq!(q.quantise(&xs, &mut rng).unwrap(), ks);
        assert_eq!(
            q.quantise(&[100.0, -100.0], &mut rng).unwrap(),
            vec![1 << 22, 0]
        );
        assert!(q.quantise(&[f32::NAN], &mut rng).is_err());
        assert!(q.check_headroom((1 << 10) - 1, Modulus::Pow32).is_ok());
        assert!(q.check_headroom(1 << 10, Modulus::Pow32).is_err());
        let mean = q.dequantise_mean(&[2 * (1 << 21)], 2);
        assert!((mean[0] - 0.0).abs() < 1e-9);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let q = Quantiser {
            clip: 1.0,
            levels: 2,
            rounding: Rounding::Stochastic,
        };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        // x = −0.75 → y = 0.25: rounds up a quarter of the time.
        let out = q.quantise(&vec![-0.75f32; 40_000], &mut rng).unwrap();
        let ups = out.iter().filter(|&&v| v == 1).count() as f64 / 40_000.0;
        assert!((ups - 0.25).abs() < 0.02, "{ups}");
    }
}
