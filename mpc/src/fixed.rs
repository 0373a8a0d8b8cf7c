//! Fixed-point encoding of reals as elements of `Z_2^64`: `x ↦ round(x · 2^f)` in two's
//! complement, with `f` fractional bits ([`FixedPoint::frac_bits`]).

use crate::MpcError;

/// The most fractional bits a format may have (products of two encodings need `2f` bits plus
/// the integer parts below 2^63).
pub const FRAC_BITS_MAX: u32 = 30;

/// A fixed-point format: `f` fractional bits. A real `x` is encoded as `round(x · 2^f)`
/// modulo 2^64 (two's complement); [`FixedPoint::encode`] accepts `|x| ≤ 2^(62 − f)`. A
/// *product* of two encodings is `2f`-bit scaled before truncation and must stay well below
/// 2^63: the truncation's failure probability per element is at most `2^(ℓ − 64)` for products
/// below `2^ℓ` in magnitude (see [`crate::session::Session::truncate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl FixedPoint {
    /// A format with `frac_bits` fractional bits (`1 ..= FRAC_BITS_MAX`).
    ///
    /// # Errors
    /// [`MpcError::Bounds`] outside that range.
    pub fn new(frac_bits: u32) -> Result<Self, MpcError> {
        if !(1..=FRAC_BITS_MAX).contains(&frac_bits) {
            return Err(MpcError::Bounds(format!(
                "{frac_bits} fractional bits, 1 ..= {FRAC_BITS_MAX} allowed"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// The number of fractional bits `f`.
    pub fn frac_bits(self) -> u32 {
        self.frac_bits
    }

    /// `2^f` as a float.
    pub fn scale(self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// The largest magnitude [`FixedPoint::encode`] accepts: `2^(62 − f)`.
    pub fn max_abs(self) -> f64 {
        (1u64 << (62 - self.frac_bits)) as f64
    }

    /// One unit in the last place, `2^−f`.
    pub fn ulp(self) -> f64 {
        1.0 / self.scale()
    }

    /// Encodes `x` as `round(x · 2^f)` in two's complement.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] if `x` is not finite or `|x| > 2^(62 − f)`.
    pub fn encode(self, x: f64) -> Result<u64, MpcError> {
        if !x.is_finite() || x.abs() > self.max_abs() {
            return Err(MpcError::Bounds(format!(
                "value {x} outside the fixed-point range ±{}",
                self.max_abs()
            )));
        }
        Ok(((x * self.scale()).round() as i64) as u64)
    }

    /// Encodes every element ([`FixedPoint::encode`]).
    ///
    /// # Errors
    /// As [`FixedPoint::encode`], for the first element out of range.
    pub fn encode_all(self, xs: &[f64]) -> Result<Vec<u64>, MpcError> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }

    /// Decodes a ring element as a signed fixed-point real.
    pub fn decode(self, v: u64) -> f64 {
        (v as i64) as f64 / self.scale()
    }

    /// Decodes every element.
    pub fn decode_all(self, vs: &[u64]) -> Vec<f64> {
        vs.iter().map(|&v| self.decode(v)).collect()
    }
}

impl Default for FixedPoint {
    /// 16 fractional bits.
    fn default() -> Self {
        FixedPoint { frac_bits: 16 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let fx = FixedPoint::new(16).expect("fx");
        for x in [
            0.0,
            1.0,
            -1.0,
            0.5,
            -3.25,
            1e6,
            -1e6,
            fx.max_abs(),
            -fx.max_abs(),
        ] {
            let back = fx.decode(fx.encode(x).expect("encode"));
            assert!((back - x).abs() <= fx.ulp() / 2.0, "{x} -> {back}");
        }
        assert_eq!(fx.encode(-1.0).expect("neg"), (-65536i64) as u64);
        for bad in [f64::NAN, f64::INFINITY, fx.max_abs() * 2.0] {
            assert!(matches!(fx.encode(bad), Err(MpcError::Bounds(_))));
        }
        assert!(FixedPoint::new(0).is_err());
        assert!(FixedPoint::new(FRAC_BITS_MAX + 1).is_err());
    }
}
