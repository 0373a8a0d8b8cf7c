//! Comparison and what is built on it: the sign bit (MSB), `x < y`, ReLU, the piecewise-linear
//! sigmoid, reciprocal and division.
//!
//! **MSB** of `x = x0 + x1 (mod 2^64)`: `msb(x) = msb(x0) ⊕ msb(x1) ⊕ carry`, where `carry` is
//! the carry into bit 63 of the sum of the low 63 bits of `x0` (party 0's) and of `x1` (party
//! 1's). The carry is computed on XOR shares of bits, bit-sliced (64 elements per word), by a
//! carry-lookahead tree (generate `g = a ∧ b`, propagate `p = a ⊕ b`, combine
//! `(G, P)_hi ∘ (G, P)_lo = (G_hi ⊕ P_hi ∧ G_lo, P_hi ∧ P_lo)`; the parallel-prefix adder of
//! Kogge–Stone, reduced to its root as only the last carry is needed): one AND layer for the
//! leaves and 6 for the tree (`⌈log2 63⌉`), about 187 AND gates per element, each AND gate with
//! an AND triple (one boolean opening each way per layer). The resulting XOR-shared bit is
//! turned into an arithmetic share by one Beaver multiplication (`m = m0 + m1 − 2·m0·m1`).
//! Exact (no probability of error) for every `x`: it is the MSB of the ring element, i.e. the
//! sign of `x` as a two's-complement value. In all, 8 rounds.

use crate::session::Session;
use crate::wire::KIND_OPEN_BITS;
use crate::{MpcError, Party, Shares, same_len};
use rand_core::CryptoRngCore;

/// Breakpoints of the sigmoid's piecewise-linear approximation: `−8, −7.5, …, 8`.
pub const SIGMOID_BREAKPOINTS: usize = 33;
/// Distance between breakpoints.
const SIGMOID_STEP: f64 = 0.5;
/// The sigmoid's approximation error bound in reals, before fixed-point effects: the linear
/// interpolation error `h² / 8 · max|σ''|` (`h = 0.5`, `max|σ''| = 0.0962`): 0.0031; and
/// outside `[−8, 8]` the constants 0 and 1, off by at most `σ(−8) = 3.4·10^−4`.
pub const SIGMOID_ERROR_BOUND: f64 = 0.0031;

/// Reciprocal domain: `2^RECIP_LOG2_MIN ≤ x < 2^(RECIP_LOG2_MAX + 1)`.
pub const RECIP_LOG2_MIN: i32 = -8;
/// See [`RECIP_LOG2_MIN`].
pub const RECIP_LOG2_MAX: i32 = 15;
/// Newton–Raphson iterations of the reciprocal: the relative error of the start is at most
/// 1/2, and squares each iteration, so below `2^−32` after 5 in exact arithmetic.
pub const RECIP_ITERATIONS: usize = 5;

fn sigma(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl<R: CryptoRngCore + Send> Session<'_, R> {
    /// Bitwise AND of XOR-shared words (64 AND gates per word): one AND-triple batch and one
    /// boolean opening each way.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`]; link, frame and triple-source errors.
    pub async fn and_words(&mut self, x: &[u64], y: &[u64]) -> Result<Vec<u64>, MpcError> {
        same_len(x.len(), y.len())?;
        let w = x.len();
        let t = self.bit_triples(w).await?;
        let mut de: Vec<u64> = x.iter().zip(&t.a).map(|(x, a)| x ^ a).collect();
        de.extend(y.iter().zip(&t.b).map(|(y, b)| y ^ b));
        let theirs = self.open_words(KIND_OPEN_BITS, &de).await?;
        for (m, o) in de.iter_mut().zip(&theirs) {
            *m ^= o;
        }
        let (d, e) = de.split_at(w);
        let p0 = self.party() == Party::P0;
        Ok((0..w)
            .map(|i| {
                let z = t.c[i] ^ (d[i] & t.b[i]) ^ (e[i] & t.a[i]);
                if p0 { z ^ (d[i] & e[i]) } else { z }
            })
            .collect())
    }

    /// The most significant bit of each element, i.e. `1` where `x < 0` as a two's-complement
    /// value and `0` elsewhere, as arithmetic shares of ring integers 0 / 1 (see the module
    /// docs: 7 AND layers and one multiplication layer; exact).
    ///
    /// # Errors
    /// As [`Session::and_words`] and [`Session::mul_ring`].
    pub async fn msb(&mut self, x: &Shares) -> Result<Shares, MpcError> {
        let n = x.len();
        let words = n.div_ceil(64);
        // Bit planes of the own share: plane j holds bit j of every element.
        let mut planes = vec![vec![0u64; words]; 64];
        for (e, v) in x.words().iter().enumerate() {
            for (j, plane) in planes.iter_mut().enumerate() {
                plane[e / 64] |= ((v >> j) & 1) << (e % 64);
            }
        }
        let top = planes.pop().unwrap_or_default();
        let zero = vec![0u64; words * 63];
        let own: Vec<u64> = planes.concat();
        // Leaves: g = a ∧ b with a party 0's bits and b party 1's; p = a ⊕ b (the own bits).
        let g = match self.party() {
            Party::P0 => self.and_words(&own, &zero).await?,
            Party::P1 => self.and_words(&zero, &own).await?,
        };
        let mut nodes: Vec<(Vec<u64>, Vec<u64>)> = g
            .chunks(words.max(1))
            .zip(own.chunks(words.max(1)))
            .map(|(g, p)| (g.to_vec(), p.to_vec()))
            .take(63)
            .collect();
        if words == 0 {
            nodes.clear();
        }
        while nodes.len() > 1 {
            let pairs = nodes.len() / 2;
            let mut xs = Vec::with_capacity(2 * pairs * words);
            let mut ys = Vec::with_capacity(2 * pairs * words);
            for p in 0..pairs {
                let (lo, hi) = (&nodes[2 * p], &nodes[2 * p + 1]);
                xs.extend_from_slice(&hi.1);
                ys.extend_from_slice(&lo.0);
            }
            for p in 0..pairs {
                let (lo, hi) = (&nodes[2 * p], &nodes[2 * p + 1]);
                xs.extend_from_slice(&hi.1);
                ys.extend_from_slice(&lo.1);
            }
            let z = self.and_words(&xs, &ys).await?;
            let (pg, pp) = z.split_at(pairs * words);
            let mut next = Vec::with_capacity(nodes.len().div_ceil(2));
            for p in 0..pairs {
                let hi = &nodes[2 * p + 1];
                let g: Vec<u64> =
                    hi.0.iter()
                        .zip(&pg[p * words..(p + 1) * words])
                        .map(|(a, b)| a ^ b)
                        .collect();
                next.push((g, pp[p * words..(p + 1) * words].to_vec()));
            }
            if nodes.len() % 2 == 1
                && let Some(last) = nodes.pop()
            {
                next.push(last);
            }
            nodes = next;
        }
        let carry = nodes.pop().map(|n| n.0).unwrap_or_else(|| vec![0; words]);
        // XOR share of the MSB bit per element, then to arithmetic: m0 + m1 − 2·m0·m1.
        let bits: Vec<u64> = (0..n)
            .map(|e| ((top[e / 64] ^ carry[e / 64]) >> (e % 64)) & 1)
            .collect();
        let zeros = Shares::from_words(vec![0; n]);
        let own_bits = Shares::from_words(bits);
        let prod = match self.party() {
            Party::P0 => self.mul_ring(&own_bits, &zeros).await?,
            Party::P1 => self.mul_ring(&zeros, &own_bits).await?,
        };
        Ok(Shares::from_words(
            own_bits
                .words()
                .iter()
                .zip(prod.words())
                .map(|(m, p)| m.wrapping_sub(p.wrapping_mul(2)))
                .collect(),
        ))
    }

    /// `[x < y]` elementwise (ring integers 0 / 1): the MSB of `x − y`; exact when
    /// `|x − y| < 2^63` as ring integers (always, for fixed-point values in range).
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`]; as [`Session::msb`].
    pub async fn less_than(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        let d = self.sub(x, y)?;
        self.msb(&d).await
    }

    /// `max(x, 0)` elementwise: `x − msb(x) · x` (integer × fixed-point, no truncation);
    /// exact. 9 rounds.
    ///
    /// # Errors
    /// As [`Session::msb`].
    pub async fn relu(&mut self, x: &Shares) -> Result<Shares, MpcError> {
        let m = self.msb(x).await?;
        let mx = self.mul_ring(&m, x).await?;
        self.sub(x, &mx)
    }

    /// `s_j = [x ≥ t_j]` for each public threshold (ring integers 0 / 1), threshold-major:
    /// element `e` of threshold `j` at `j · n + e`. One MSB call on `|t| · n` elements.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] for a threshold out of range or too many elements; as
    /// [`Session::msb`].
    pub async fn at_least(&mut self, x: &Shares, thresholds: &[f64]) -> Result<Shares, MpcError> {
        let n = x.len();
        crate::check_len(n.saturating_mul(thresholds.len()))?;
        let mut all = Vec::with_capacity(n * thresholds.len());
        for &t in thresholds {
            let shifted = self.add_public(x, -t)?;
            all.extend_from_slice(shifted.words());
        }
        let m = self.msb(&Shares::from_words(all)).await?;
        Ok(self.add_public_ring(&self.mul_public_ring(&m, u64::MAX), 1))
    }

    /// The logistic sigmoid `1 / (1 + e^−x)` elementwise, by linear interpolation between the
    /// breakpoints `−8, −7.5, …, 8` and the constants 0 below `−8` and 1 from `8` on: `f(x) =
    /// Σ_j [x ≥ t_j] · (Δα_j x + Δβ_j)`, where `Δα_j`, `Δβ_j` are the differences of the
    /// encoded slopes and intercepts of consecutive pieces (so they telescope exactly). One
    /// MSB call on 33 n elements, one multiplication layer on 33 n. Error:
    /// `|f(x) − σ(x)| ≤ SIGMOID_ERROR_BOUND + (33 + |x| / 2 + 1) · 2^−f`, the last term from
    /// the 33 local truncations and the encoding of slopes and intercepts.
    ///
    /// # Errors
    /// As [`Session::at_least`] and [`Session::mul_ring`].
    pub async fn sigmoid(&mut self, x: &Shares) -> Result<Shares, MpcError> {
        let n = x.len();
        let fx = self.fixed_point();
        let t: Vec<f64> = (0..SIGMOID_BREAKPOINTS)
            .map(|j| -8.0 + SIGMOID_STEP * j as f64)
            .collect();
        // Piece j covers [t_j, t_{j+1}); the last piece (from 8 on) is the constant 1.
        let mut alpha = Vec::with_capacity(SIGMOID_BREAKPOINTS);
        let mut beta = Vec::with_capacity(SIGMOID_BREAKPOINTS);
        for j in 0..SIGMOID_BREAKPOINTS {
            let (a, b) = match t.get(j + 1) {
                Some(&t1) => {
                    let a = (sigma(t1) - sigma(t[j])) / SIGMOID_STEP;
                    (a, sigma(t[j]) - a * t[j])
                }
                None => (0.0, 1.0),
            };
            alpha.push(fx.encode(a)?);
            beta.push(fx.encode(b)?);
        }
        let s = self.at_least(x, &t).await?;
        let mut y = Vec::with_capacity(n * SIGMOID_BREAKPOINTS);
        let (mut pa, mut pb) = (0u64, 0u64);
        for j in 0..SIGMOID_BREAKPOINTS {
            let da = alpha[j].wrapping_sub(pa);
            let db = beta[j].wrapping_sub(pb);
            (pa, pb) = (alpha[j], beta[j]);
            let yj = self.add_public_ring(&self.truncate(&self.mul_public_ring(x, da)), db);
            y.extend_from_slice(yj.words());
        }
        let prod = self.mul_ring(&s, &Shares::from_words(y)).await?;
        let mut out = vec![0u64; n];
        for chunk in prod.words().chunks(n.max(1)) {
            for (o, v) in out.iter_mut().zip(chunk) {
                *o = o.wrapping_add(*v);
            }
        }
        Ok(Shares::from_words(out))
    }

    /// `1 / x` elementwise for `x` in `[2^−8, 2^16)` (outside it the result is meaningless; the
    /// caller must ensure the domain): a start `y0 = 0.75 · 2^−j` for `x ∈ [2^j, 2^(j+1))`
    /// from one MSB call against the powers of two (so `|1 − x·y0| ≤ 1/2`), then
    /// [`RECIP_ITERATIONS`] Newton–Raphson steps `y ← y · (2 − x·y)` (two multiplication
    /// layers each). Error: relative `2^−32` from the iteration plus fixed-point effects of a
    /// few ulps: `|y − 1/x| ≤ 2^−12 / x + 8 · 2^−f` holds in the tests for `f = 16..=20`.
    ///
    /// # Errors
    /// As [`Session::at_least`] and [`Session::mul`].
    pub async fn reciprocal(&mut self, x: &Shares) -> Result<Shares, MpcError> {
        let fx = self.fixed_point();
        let powers: Vec<i32> = (RECIP_LOG2_MIN..=RECIP_LOG2_MAX).collect();
        let t: Vec<f64> = powers.iter().map(|&j| 2f64.powi(j)).collect();
        let s = self.at_least(x, &t).await?;
        let n = x.len();
        // y0 = c_{lo−1} + Σ_j s_j · (c_j − c_{j−1}), c_j = 0.75 · 2^−j (encoded; exact).
        let c = |j: i32| fx.encode(0.75 * 2f64.powi(-j));
        let mut y0 = vec![0u64; n];
        let base = c(RECIP_LOG2_MIN - 1)?;
        if self.party() == Party::P0 {
            y0.iter_mut().for_each(|v| *v = base);
        }
        for (idx, &j) in powers.iter().enumerate() {
            let delta = c(j)?.wrapping_sub(c(j - 1)?);
            for (v, sj) in y0.iter_mut().zip(&s.words()[idx * n..(idx + 1) * n]) {
                *v = v.wrapping_add(sj.wrapping_mul(delta));
            }
        }
        let mut y = Shares::from_words(y0);
        for _ in 0..RECIP_ITERATIONS {
            let xy = self.mul(x, &y).await?;
            let two_minus = self.add_public(&self.mul_public_ring(&xy, u64::MAX), 2.0)?;
            y = self.mul(&y, &two_minus).await?;
        }
        Ok(y)
    }

    /// `x / y` elementwise for `y` in the domain of [`Session::reciprocal`]: `x · (1 / y)`.
    /// Error: `|x| ·` the reciprocal's error `+ 1` ulp.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`]; as [`Session::reciprocal`].
    pub async fn divide(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        same_len(x.len(), y.len())?;
        let r = self.reciprocal(y).await?;
        self.mul(x, &r).await
    }
}
