//! Dealer-free cross products for Beaver triples by **oblivious linear evaluation over RLWE**:
//! each party encrypts its vector `a_P` under its own secret key (BFV-style, SIMD encoding),
//! the peer multiplies the ciphertexts slot-wise by its own vector `b_Q`, adds a random mask
//! `r_Q`, re-randomises and floods the noise, and sends them back; the owner decrypts
//! `a_P · b_Q + r_Q`. With the peer keeping `−r_Q`, the two parties hold additive shares over
//! `Z_2^64` of `a_0 · b_1 + a_1 · b_0`, the cross terms of a Beaver triple `c = a · b`.
//!
//! This is the "homomorphic encryption" way of making triples of SecureML (Mohassel–Zhang,
//! S&P 2017, §4.2, "LHE-based generation"), with the packing and ring of Gazelle (Juvekar et
//! al., USENIX Security 2018) and the circuit-privacy steps (re-randomisation by an encryption
//! of zero under the owner's public key, then noise flooding) of CrypTFlow2 / Cheetah (Rathee
//! et al., CCS 2020; Huang et al., USENIX Security 2022). The ring arithmetic (RNS, NTT, the
//! `t / q` scaling of decryption) is the `fhe-math` crate's; the scheme is here.
//!
//! # Parameters
//!
//! * Ring `R_q = Z_q[X]/(X^N + 1)`, `N = 8192` ([`DEGREE`]), `q` the product of three 62-bit
//!   NTT primes (about 186 bits, under the 218 bits the Homomorphic Encryption Standard
//!   (Albrecht et al., 2018, Table 1) allows `N = 8192` for 128-bit security with a ternary
//!   secret). The secret `s` is ternary, errors are centred binomial with variance 10
//!   (|e| ≤ 20).
//! * Plaintexts modulo three 57-bit primes `t_j ≡ 1 (mod 2N)` ([`PLAIN_PRIMES`]): an element's
//!   `a_P · b_Q + r_Q` (below `2^128 + 2^169`) is computed modulo each `t_j` and recovered
//!   exactly by the CRT (`t_1 t_2 t_3 > 2^170`), then reduced mod `2^64`. Each ciphertext
//!   carries `N` slots (SIMD, the negacyclic NTT modulo `t_j`).
//! * The mask `r_Q` is uniform in `[0, 2^169)` ([`MASK_BITS`]): `a_P · b_Q + r_Q` is within
//!   statistical distance `2^−41` of a value independent of `a_P · b_Q`.
//! * The flooding noise is uniform in `[−2^127, 2^127)` ([`FLOOD_BITS`]) on every
//!   coefficient; the noise it hides (`(e − ε) · b_Q`, the fresh noise times the peer's centred
//!   plaintext) is below `N · 21 · 2^56 < 2^73.4`, so each answer ciphertext is within
//!   statistical distance `N · 2^73.4 / 2^128 < 2^−41` of one that depends only on the
//!   decrypted values. Decryption is exact while the noise stays below `q / (2 t_j) > 2^127.9`
//!   (checked when the parameters are built, [`params`]).
//!
//! # Threat model
//!
//! Semi-honest, two parties. Each party sees the other's ciphertexts (IND-CPA under the
//! decision-RLWE assumption with the parameters above) and public key, and the answers to its
//! own ciphertexts, which decrypt to `a_P · b_Q + r_Q` (masked as above) and, by the
//! re-randomisation and flooding, reveal nothing else of `b_Q` (statistically, per ciphertext
//! `2^−41`). A malicious peer can make the triples wrong (as with Gilboa's multiplication); it
//! cannot make this party panic: every coefficient it sends is checked against its modulus.
//!
//! # Cost
//!
//! Per `N = 8192` elements and each of the three `t_j`: one query (a 32-byte seed and one
//! polynomial, 196,640 bytes) and one answer (two polynomials, 393,216 bytes) each way, so
//! about 72 bytes per element each way per direction (216 bytes per element sent by each
//! party). Work is a few NTTs per ciphertext.

use std::sync::{Arc, OnceLock};

use fhe_math::ntt::NttOperator;
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::scaler::Scaler;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Context, Poly, Representation};
use fhe_math::zq::Modulus;
use fhe_math::zq::primes::generate_prime;
use num_bigint::BigUint;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use tessera_ot::offload;
use zeroize::{Zeroize, Zeroizing};

use crate::MpcError;
use crate::wire::{KIND_RLWE_ANSWER, KIND_RLWE_KEY, KIND_RLWE_QUERY, exchange_items};

/// The ring degree `N` (slots per ciphertext).
pub const DEGREE: usize = 8192;
/// Bits of each ciphertext prime `q_i`.
pub const Q_BITS: usize = 62;
/// How many ciphertext primes.
pub const Q_PRIMES: usize = 3;
/// Bits of each plaintext prime `t_j`.
pub const PLAIN_BITS: usize = 57;
/// How many plaintext primes (CRT).
pub const PLAIN_PRIMES: usize = 3;
/// The mask `r` is uniform below `2^MASK_BITS`.
pub const MASK_BITS: u32 = 169;
/// The flooding noise is uniform in `[−2^FLOOD_BITS, 2^FLOOD_BITS)`.
pub const FLOOD_BITS: u32 = 127;
/// Ciphertexts per plaintext prime in one chunk of [`RlweOle::cross_shares`] (a chunk is
/// `CHUNK_CTS · N` elements; its messages are about 4.7 MB of queries and 9.4 MB of answers
/// each way).
pub const CHUNK_CTS: usize = 8;

/// Bits of each ciphertext prime of the inner-product scheme ([`RlweOle::dot_shares`]).
pub const DOT_Q_BITS: usize = 54;
/// How many ciphertext primes the inner-product scheme has (about 216 bits).
pub const DOT_Q_PRIMES: usize = 4;
/// Queries summed into one inner-product answer (`DOT_SUM_CTS · N` elements).
pub const DOT_SUM_CTS: usize = 128;

/// Variance of the centred binomial errors (bound `2 · VARIANCE`).
const VARIANCE: usize = 10;
/// The version of these parameters, the first byte of a public-key frame.
const PARAMS_VERSION: u8 = 1;
const SEED_BYTES: usize = 32;
const POLY_BYTES: usize = Q_PRIMES * DEGREE * 8;
/// A query: the seed of its `c1` and its `c0`.
pub const QUERY_BYTES: usize = SEED_BYTES + POLY_BYTES;
/// An answer: `c0` and `c1`.
pub const ANSWER_BYTES: usize = 2 * POLY_BYTES;
const DOT_POLY_BYTES: usize = DOT_Q_PRIMES * DEGREE * 8;
/// An inner-product query: the seed of its `c1` and its `c0`.
pub const DOT_QUERY_BYTES: usize = SEED_BYTES + DOT_POLY_BYTES;
/// An inner-product answer: the constant coefficient of `c0` (one word per prime) and `c1`
/// in coefficient form.
pub const DOT_ANSWER_BYTES: usize = DOT_Q_PRIMES * 8 + DOT_POLY_BYTES;
const KEY_BYTES: usize = 1 + 2 * SEED_BYTES + POLY_BYTES + DOT_POLY_BYTES;

/// One plaintext prime and what encoding, decoding and scaling by it need.
struct Plain {
    t: Modulus,
    ntt: NttOperator,
    /// `−t^{-1} mod q_i`, per ciphertext prime.
    delta: Vec<u64>,
    /// `q mod t`.
    q_mod_t: u64,
    /// `round(t · x / q)` from `R_q` to `R_t`.
    scaler: Scaler,
    /// `2^64 mod t`, `2^128 mod t`.
    pow64: u64,
    pow128: u64,
}

/// The fixed parameters, built once ([`params`]).
pub struct Params {
    ctx: Arc<Context>,
    qs: Vec<Modulus>,
    plains: Vec<Plain>,
    /// `2^FLOOD_BITS mod q_i`.
    flood_offset: Vec<u64>,
    /// Garner's constants: `t1^{-1} mod t2`, `t1^{-1} mod t3`, `t2^{-1} mod t3`, and
    /// `t1`, `t1 · t2 mod 2^64`.
    garner: [u64; 5],
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rlwe::Params")
            .field("degree", &DEGREE)
            .field("q", &self.ctx.moduli())
            .field("t", &self.plains.iter().map(|p| *p.t).collect::<Vec<_>>())
            .finish()
    }
}

/// The parameters of the inner-product scheme: plaintexts modulo `2^64` in coefficient
/// encoding (no SIMD), `q` the product of [`DOT_Q_PRIMES`] primes of [`DOT_Q_BITS`] bits.
pub struct DotParams {
    ctx: Arc<Context>,
    qs: Vec<Modulus>,
    /// `−2^{-64} mod q_i`.
    delta: Vec<u64>,
    /// `q mod 2^64`.
    q_low: u64,
    q: BigUint,
    /// CRT basis: `(q / q_i) · ((q / q_i)^{-1} mod q_i)`.
    crt: Vec<BigUint>,
    flood_offset: Vec<u64>,
}

impl std::fmt::Debug for DotParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rlwe::DotParams")
            .field("q", &self.ctx.moduli())
            .finish_non_exhaustive()
    }
}

/// The inner-product parameters (deterministic, as [`params`]).
///
/// # Errors
/// As [`params`].
pub fn dot_params() -> Result<Arc<DotParams>, MpcError> {
    static P: OnceLock<Result<Arc<DotParams>, String>> = OnceLock::new();
    P.get_or_init(|| build_dot_params().map(Arc::new))
        .clone()
        .map_err(MpcError::Bounds)
}

fn build_dot_params() -> Result<DotParams, String> {
    let err = |e: fhe_math::Error| e.to_string();
    let mut upper = 1u64 << DOT_Q_BITS;
    let mut q = Vec::with_capacity(DOT_Q_PRIMES);
    for _ in 0..DOT_Q_PRIMES {
        let p = generate_prime(DOT_Q_BITS, 2 * DEGREE as u64, upper).ok_or("no prime")?;
        q.push(p);
        upper = p;
    }
    let ctx = Context::new_arc(&q, DEGREE).map_err(err)?;
    let qs: Vec<Modulus> = q
        .iter()
        .map(|&p| Modulus::new(p).map_err(err))
        .collect::<Result<_, _>>()?;
    let delta = qs
        .iter()
        .map(|qi| {
            qi.inv(qi.neg(qi.reduce_u128(1u128 << 64)))
                .ok_or("2 not invertible")
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let q_big = ctx.modulus().clone();
    let q_low = u64::try_from(&q_big % (BigUint::from(1u8) << 64u32)).map_err(|e| e.to_string())?;
    let mut crt = Vec::with_capacity(DOT_Q_PRIMES);
    for qi in &qs {
        let rest = &q_big / **qi;
        let r = u64::try_from(&rest % **qi).map_err(|e| e.to_string())?;
        let inv = qi.inv(r).ok_or("primes not coprime")?;
        crt.push(rest * inv);
    }
    let flood_offset = qs
        .iter()
        .map(|qi| qi.reduce_u128(1u128 << FLOOD_BITS))
        .collect();
    // Noise of one answer's constant coefficient: DOT_SUM_CTS products of N·21·2^63 each,
    // the re-randomisation (N·420), the mask's rounding, the flooding.
    let n = BigUint::from(DEGREE as u64);
    let noise = BigUint::from(DOT_SUM_CTS as u64) * &n * 21u32 * (BigUint::from(1u8) << 63u32)
        + &n * 420u32
        + 1u32
        + (BigUint::from(1u8) << FLOOD_BITS);
    if (noise << 65u32) >= q_big {
        return Err("the inner-product noise bound does not hold".into());
    }
    Ok(DotParams {
        ctx,
        qs,
        delta,
        q_low,
        q: q_big,
        crt,
        flood_offset,
    })
}

impl DotParams {
    /// `Δ·m` (`floor(q·m / 2^64)`) in NTT form for the coefficients `coeffs` (at most `N`).
    fn scaled(&self, coeffs: &[u64]) -> Result<Poly, MpcError> {
        let mut flat = Vec::with_capacity(DOT_Q_PRIMES * DEGREE);
        for (qi, d) in self.qs.iter().zip(&self.delta) {
            flat.extend(
                coeffs
                    .iter()
                    .map(|&x| qi.mul(qi.reduce(self.q_low.wrapping_mul(x)), *d)),
            );
            flat.extend(std::iter::repeat_n(0, DEGREE - coeffs.len()));
        }
        let mut p = Poly::try_convert_from(flat, &self.ctx, false, Representation::PowerBasis)
            .map_err(math)?;
        p.change_representation(Representation::Ntt);
        Ok(p)
    }

    /// `Σ_i y_i X^{−i}` (so that the constant coefficient of `A · B` is `Σ a_i y_i`), centred,
    /// lifted to `R_q`, NTT form.
    fn reversed(&self, y: &[u64]) -> Result<Poly, MpcError> {
        let mut c = vec![0i64; DEGREE];
        for (i, &v) in y.iter().enumerate() {
            let v = v as i64;
            if i == 0 {
                c[0] = v;
            } else {
                c[DEGREE - i] = v.wrapping_neg();
            }
        }
        let mut p = Poly::try_convert_from(&c[..], &self.ctx, false, Representation::PowerBasis)
            .map_err(math)?;
        c.zeroize();
        p.change_representation(Representation::Ntt);
        Ok(p)
    }

    fn parse_poly(&self, bytes: &[u8], repr: Representation) -> Result<Poly, MpcError> {
        let words = parse_words(bytes, &self.qs)?;
        Poly::try_convert_from(words, &self.ctx, false, repr).map_err(math)
    }

    /// `round(2^64 · x / q) mod 2^64` of the `x ∈ [0, q)` with residues `limbs`.
    fn decode(&self, limbs: &[u64]) -> u64 {
        let mut x = BigUint::from(0u8);
        for (l, b) in limbs.iter().zip(&self.crt) {
            x += b * *l;
        }
        x %= &self.q;
        let half = &self.q >> 1u32;
        let m: BigUint = ((x << 64u32) + half) / &self.q;
        let low = m % (BigUint::from(1u8) << 64u32);
        u64::try_from(&low).unwrap_or(0)
    }
}

/// Parses `Q × N` little-endian words, refusing a length other than that or a word past its
/// modulus.
fn parse_words(bytes: &[u8], qs: &[Modulus]) -> Result<Vec<u64>, MpcError> {
    let want = qs.len() * DEGREE * 8;
    if bytes.len() != want {
        return Err(MpcError::Malformed(format!(
            "an RLWE polynomial of {} bytes, expected {want}",
            bytes.len()
        )));
    }
    let mut words = Vec::with_capacity(qs.len() * DEGREE);
    for (row, qi) in bytes.chunks_exact(DEGREE * 8).zip(qs) {
        let q = **qi;
        for c in row.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let v = u64::from_le_bytes(w);
            if v >= q {
                return Err(MpcError::Malformed(
                    "an RLWE coefficient past its modulus".into(),
                ));
            }
            words.push(v);
        }
    }
    Ok(words)
}

/// The parameters (primes generated deterministically, the same for every party), or why they
/// could not be built (never expected: a test builds them).
///
/// # Errors
/// [`MpcError::Bounds`] if a prime or context could not be made, or the noise bound does not
/// hold (a programming error in the constants).
pub fn params() -> Result<Arc<Params>, MpcError> {
    static P: OnceLock<Result<Arc<Params>, String>> = OnceLock::new();
    P.get_or_init(|| build_params().map(Arc::new))
        .clone()
        .map_err(MpcError::Bounds)
}

fn build_params() -> Result<Params, String> {
    let err = |e: fhe_math::Error| e.to_string();
    let two_n = 2 * DEGREE as u64;
    let mut upper = 1u64 << Q_BITS;
    let mut q = Vec::with_capacity(Q_PRIMES);
    for _ in 0..Q_PRIMES {
        let p = generate_prime(Q_BITS, two_n, upper).ok_or("no ciphertext prime")?;
        q.push(p);
        upper = p;
    }
    let ctx = Context::new_arc(&q, DEGREE).map_err(err)?;
    let qs: Vec<Modulus> = q
        .iter()
        .map(|&p| Modulus::new(p).map_err(err))
        .collect::<Result<_, _>>()?;
    let mut upper = 1u64 << PLAIN_BITS;
    let mut plains = Vec::with_capacity(PLAIN_PRIMES);
    let q_big = ctx.modulus().clone();
    for _ in 0..PLAIN_PRIMES {
        let tv = generate_prime(PLAIN_BITS, two_n, upper).ok_or("no plaintext prime")?;
        upper = tv;
        let t = Modulus::new(tv).map_err(err)?;
        let ntt = NttOperator::new(&t, DEGREE).ok_or("no NTT for the plaintext prime")?;
        let t_ctx = Context::new_arc(&[tv], DEGREE).map_err(err)?;
        let scaler = Scaler::new(&ctx, &t_ctx, ScalingFactor::new(&BigUint::from(tv), &q_big))
            .map_err(err)?;
        let delta = qs
            .iter()
            .map(|qi| {
                qi.inv(qi.neg(qi.reduce(tv)))
                    .ok_or("t not invertible mod q")
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let q_mod_t = u64::try_from(&q_big % tv).map_err(|e| e.to_string())?;
        let pow64 = t.reduce_u128(1u128 << 64);
        let pow128 = t.mul(pow64, pow64);
        plains.push(Plain {
            t,
            ntt,
            delta,
            q_mod_t,
            scaler,
            pow64,
            pow128,
        });
    }
    let flood_offset = qs
        .iter()
        .map(|qi| qi.reduce_u128(1u128 << FLOOD_BITS))
        .collect();
    let [t1, t2, t3] = [0, 1, 2].map(|j| *plains[j].t);
    let inv = |a: u64, m: &Modulus| m.inv(m.reduce(a)).ok_or("plaintext primes not coprime");
    let garner = [
        inv(t1, &plains[1].t)?,
        inv(t1, &plains[2].t)?,
        inv(t2, &plains[2].t)?,
        t1,
        t1.wrapping_mul(t2),
    ];
    // The bounds of the module docs, on the primes actually built.
    let t_max = BigUint::from(t1.max(t2).max(t3));
    let big_t = BigUint::from(t1) * BigUint::from(t2) * BigUint::from(t3);
    let mask_max = (BigUint::from(1u8) << MASK_BITS) + (BigUint::from(1u8) << 128u32);
    if big_t <= mask_max {
        return Err("the plaintext primes do not cover a masked product".into());
    }
    // Noise: (e − ε)·b ≤ N·21·t/2; re-randomisation u·e_pk + e1·s ≤ N·20·20 + N·20; the
    // mask's rounding < 1; flooding ≤ 2^FLOOD_BITS.
    let n = BigUint::from(DEGREE as u64);
    let noise =
        &n * 21u32 * &t_max / 2u32 + &n * 420u32 + 1u32 + (BigUint::from(1u8) << FLOOD_BITS);
    if noise * 2u32 * &t_max >= q_big {
        return Err("the noise bound does not hold for these primes".into());
    }
    Ok(Params {
        ctx,
        qs,
        plains,
        flood_offset,
        garner,
    })
}

impl Params {
    /// `x mod 2^64` of the `x < t1·t2·t3` with residues `r` (Garner's mixed radix).
    fn crt_mod_2_64(&self, r: [u64; 3]) -> u64 {
        let [i12, i13, i23, t1, t12] = self.garner;
        let (p2, p3) = (&self.plains[1].t, &self.plains[2].t);
        let d1 = r[0];
        let d2 = p2.mul(p2.sub(r[1], p2.reduce(d1)), i12);
        let d3 = p3.mul(
            p3.sub(p3.mul(p3.sub(r[2], p3.reduce(d1)), i13), p3.reduce(d2)),
            i23,
        );
        d1.wrapping_add(t1.wrapping_mul(d2))
            .wrapping_add(t12.wrapping_mul(d3))
    }

    /// `Δ·m` in NTT form for the slot values `slots` (each `< t`, at most `N`).
    fn scaled_plaintext(&self, plain: &Plain, slots: &[u64]) -> Result<Poly, MpcError> {
        let mut m = vec![0u64; DEGREE];
        m[..slots.len()].copy_from_slice(slots);
        plain.ntt.backward(&mut m);
        plain.t.scalar_mul_vec(&mut m, plain.q_mod_t);
        let mut flat = Vec::with_capacity(Q_PRIMES * DEGREE);
        for (qi, d) in self.qs.iter().zip(&plain.delta) {
            flat.extend(m.iter().map(|&x| qi.mul(qi.reduce(x), *d)));
        }
        m.zeroize();
        let mut p = Poly::try_convert_from(flat, &self.ctx, false, Representation::PowerBasis)
            .map_err(math)?;
        p.change_representation(Representation::Ntt);
        Ok(p)
    }

    /// The slot values `slots` (each `< t`) as a plaintext polynomial with centred
    /// coefficients, lifted to `R_q`, NTT form.
    fn lifted_plaintext(&self, plain: &Plain, slots: &[u64]) -> Result<Poly, MpcError> {
        let mut m = vec![0u64; DEGREE];
        m[..slots.len()].copy_from_slice(slots);
        plain.ntt.backward(&mut m);
        let t = *plain.t;
        let mut centred: Vec<i64> = m
            .iter()
            .map(|&x| {
                if x > t / 2 {
                    x as i64 - t as i64
                } else {
                    x as i64
                }
            })
            .collect();
        m.zeroize();
        let mut p =
            Poly::try_convert_from(&centred[..], &self.ctx, false, Representation::PowerBasis)
                .map_err(math)?;
        centred.zeroize();
        p.change_representation(Representation::Ntt);
        Ok(p)
    }

    /// The flooding noise (uniform in `[−2^127, 2^127)` per coefficient), NTT form.
    fn flood<R: rand_core_09::RngCore>(&self, rng: &mut R) -> Result<Poly, MpcError> {
        let mut raw = vec![0u128; DEGREE];
        for v in raw.iter_mut() {
            *v = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        }
        let mut flat = Vec::with_capacity(Q_PRIMES * DEGREE);
        for (qi, off) in self.qs.iter().zip(&self.flood_offset) {
            flat.extend(raw.iter().map(|&v| qi.sub(qi.reduce_u128(v), *off)));
        }
        raw.zeroize();
        let mut p = Poly::try_convert_from(flat, &self.ctx, false, Representation::PowerBasis)
            .map_err(math)?;
        p.change_representation(Representation::Ntt);
        Ok(p)
    }

    /// Parses one polynomial (NTT form, `Q_PRIMES × N` little-endian words), refusing a word
    /// past its modulus.
    fn parse_poly(&self, bytes: &[u8]) -> Result<Poly, MpcError> {
        let words = parse_words(bytes, &self.qs)?;
        Poly::try_convert_from(words, &self.ctx, false, Representation::Ntt).map_err(math)
    }
}

/// The parts made in parallel, in order, as one message (the first error if any failed).
fn concat(parts: Vec<Result<Vec<u8>, MpcError>>, capacity: usize) -> Result<Vec<u8>, MpcError> {
    let mut bytes = Vec::with_capacity(capacity);
    for p in parts {
        bytes.extend_from_slice(&p?);
    }
    Ok(bytes)
}

fn put_poly(out: &mut Vec<u8>, p: &Poly) {
    for w in p.coefficients().iter() {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

fn math(e: fhe_math::Error) -> MpcError {
    MpcError::Bounds(format!("RLWE arithmetic: {e}"))
}

/// A fresh `rand` 0.9 RNG (what `fhe-math` samples with) seeded from the caller's.
fn fork<R: CryptoRngCore + ?Sized>(rng: &mut R) -> rand_chacha_09::ChaCha20Rng {
    use rand_core_09::SeedableRng;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let r = rand_chacha_09::ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    r
}

/// A fresh ternary secret and a public key `(p0 = −p1·s + e, p1 = from the seed)` in `ctx`:
/// (secret in NTT form, seed, `p0` in NTT form).
fn keygen<R: rand_core_09::RngCore + rand_core_09::CryptoRng>(
    ctx: &Arc<Context>,
    r: &mut R,
) -> Result<(Zeroizing<Poly>, [u8; SEED_BYTES], Poly), MpcError> {
    let mut coeffs: Vec<i64> = (0..DEGREE)
        .map(|_| {
            // Uniform over {−1, 0, 1} by rejection.
            loop {
                let v = r.next_u32() >> 30;
                if v < 3 {
                    break i64::from(v) - 1;
                }
            }
        })
        .collect();
    let mut s = Poly::try_convert_from(&coeffs[..], ctx, false, Representation::PowerBasis)
        .map_err(math)?;
    coeffs.zeroize();
    s.change_representation(Representation::Ntt);
    let mut seed = [0u8; SEED_BYTES];
    r.fill_bytes(&mut seed);
    let p1 = Poly::random_from_seed(ctx, Representation::Ntt, seed);
    let mut p0 = Poly::small(ctx, Representation::Ntt, VARIANCE, r).map_err(math)?;
    p0 -= &(&p1 * &s);
    Ok((Zeroizing::new(s), seed, p0))
}

/// One party's RLWE state: its secret keys and the peer's public keys, for the elementwise
/// scheme ([`RlweOle::cross_shares`]) and the inner-product one ([`RlweOle::dot_shares`]).
/// `Debug` shows nothing secret.
pub struct RlweOle {
    par: Arc<Params>,
    /// The ternary secret, NTT form.
    s: Zeroizing<Poly>,
    /// The peer's public key `(p0, p1)`, NTT form.
    peer_pk: [Poly; 2],
    dot: Arc<DotParams>,
    dot_s: Zeroizing<Poly>,
    dot_peer_pk: [Poly; 2],
}

impl std::fmt::Debug for RlweOle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RlweOle").finish_non_exhaustive()
    }
}

impl RlweOle {
    /// Draws this party's secret keys, sends its public keys and receives the peer's (one
    /// message each way, [`KIND_RLWE_KEY`], 458,817 bytes); the peer calls it too.
    ///
    /// # Errors
    /// A link error; [`MpcError::Malformed`] for a key frame of another parameter version or
    /// with a coefficient past its modulus.
    pub async fn setup<R: CryptoRngCore + Send>(
        peer: &dyn Link,
        rng: &mut R,
    ) -> Result<Self, MpcError> {
        let par = params()?;
        let dot = dot_params()?;
        let mut r = fork(rng);
        let (p, d) = (par.clone(), dot.clone());
        let (s, dot_s, key) = offload(move || -> Result<_, MpcError> {
            let (s, seed, p0) = keygen(&p.ctx, &mut r)?;
            let (ds, dseed, dp0) = keygen(&d.ctx, &mut r)?;
            let mut key = Vec::with_capacity(KEY_BYTES);
            key.push(PARAMS_VERSION);
            key.extend_from_slice(&seed);
            put_poly(&mut key, &p0);
            key.extend_from_slice(&dseed);
            put_poly(&mut key, &dp0);
            Ok((s, ds, key))
        })
        .await?;
        let got = exchange_items(peer, KIND_RLWE_KEY, KEY_BYTES, &key, 1).await?;
        if got.first() != Some(&PARAMS_VERSION) {
            return Err(MpcError::Malformed(
                "the peer's RLWE key is for other parameters".into(),
            ));
        }
        let seed_at = |at: usize| {
            let mut seed = [0u8; SEED_BYTES];
            seed.copy_from_slice(&got[at..at + SEED_BYTES]);
            seed
        };
        let mut at = 1;
        let seed = seed_at(at);
        at += SEED_BYTES;
        let p0 = par.parse_poly(&got[at..at + POLY_BYTES])?;
        at += POLY_BYTES;
        let dseed = seed_at(at);
        at += SEED_BYTES;
        let dp0 = dot.parse_poly(&got[at..at + DOT_POLY_BYTES], Representation::Ntt)?;
        let p1 = Poly::random_from_seed(&par.ctx, Representation::Ntt, seed);
        let dp1 = Poly::random_from_seed(&dot.ctx, Representation::Ntt, dseed);
        Ok(RlweOle {
            par,
            s,
            peer_pk: [p0, p1],
            dot,
            dot_s,
            dot_peer_pk: [dp0, dp1],
        })
    }

    /// Additive shares over `Z_2^64` of the inner product `Σ_i x_0[i]·y_1[i] + x_1[i]·y_0[i]`
    /// (the cross terms of `⟨x, y⟩` for `x = x_0 + x_1`, `y = y_0 + y_1`; the caller adds its
    /// own `⟨x_P, y_P⟩`): this party passes its own `x_P`, `y_P` (same length, the peer the
    /// same length) and gets its share.
    ///
    /// Coefficient encoding modulo `2^64` (Huang et al., "Cheetah", §3): each block of `N`
    /// elements of `x_P` is one query (`A = Σ x_i X^i`, encrypted); the peer multiplies it by
    /// `B = Σ y_i X^{−i}`, whose product has `Σ x_i y_i` as its constant coefficient, sums up
    /// to [`DOT_SUM_CTS`] products, re-randomises with its public key and sends back only the
    /// constant coefficient of `c0` (masked by a uniform `r mod 2^64`, noise flooded) and `c1`
    /// (the LWE sample of that one coefficient). Messages: one query per `N` elements each way
    /// ([`DOT_QUERY_BYTES`]), one answer per [`DOT_SUM_CTS`] queries ([`DOT_ANSWER_BYTES`]).
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`] if `x` and `y` differ in length; a link error;
    /// [`MpcError::Malformed`] for a malformed query or answer.
    pub async fn dot_shares<R: CryptoRngCore + Send>(
        &self,
        peer: &dyn Link,
        rng: &mut R,
        x: &[u64],
        y: &[u64],
    ) -> Result<u64, MpcError> {
        crate::same_len(x.len(), y.len())?;
        crate::check_len(x.len())?;
        let cts = x.len().div_ceil(DEGREE);
        if cts == 0 {
            return Ok(0);
        }
        let groups = cts.div_ceil(DOT_SUM_CTS);
        let d = self.dot.clone();
        let s = Zeroizing::new((*self.dot_s).clone());
        let rngs: Vec<_> = (0..cts).map(|_| fork(rng)).collect();
        let x_own = Zeroizing::new(x.to_vec());
        let queries = offload(move || -> Result<Vec<u8>, MpcError> {
            let parts: Vec<Result<Vec<u8>, MpcError>> = rngs
                .into_par_iter()
                .enumerate()
                .map(|(ct, mut r)| {
                    let end = ((ct + 1) * DEGREE).min(x_own.len());
                    let dm = Zeroizing::new(d.scaled(&x_own[ct * DEGREE..end])?);
                    seeded_encryption(&d.ctx, &s, &dm, &mut r, DOT_QUERY_BYTES)
                })
                .collect();
            concat(parts, cts * DOT_QUERY_BYTES)
        })
        .await?;
        let got = exchange_items(peer, KIND_RLWE_QUERY, DOT_QUERY_BYTES, &queries, cts).await?;
        drop(queries);

        let masks: Vec<u64> = (0..groups).map(|_| rng.next_u64()).collect();
        let rngs: Vec<_> = (0..groups).map(|_| fork(rng)).collect();
        let d = self.dot.clone();
        let pk = self.dot_peer_pk.clone();
        let y_own = Zeroizing::new(y.to_vec());
        let m = masks.clone();
        let answers = offload(move || -> Result<Vec<u8>, MpcError> {
            let parts: Vec<Result<Vec<u8>, MpcError>> = rngs
                .into_par_iter()
                .enumerate()
                .map(|(g, mut r)| {
                    let first = g * DOT_SUM_CTS;
                    let last = ((g + 1) * DOT_SUM_CTS).min(cts);
                    let products: Vec<Result<[Poly; 2], MpcError>> = (first..last)
                        .into_par_iter()
                        .map(|ct| {
                            let q = &got[ct * DOT_QUERY_BYTES..(ct + 1) * DOT_QUERY_BYTES];
                            let mut seed = [0u8; SEED_BYTES];
                            seed.copy_from_slice(&q[..SEED_BYTES]);
                            let c0 = d.parse_poly(&q[SEED_BYTES..], Representation::Ntt)?;
                            let c1 = Poly::random_from_seed(&d.ctx, Representation::Ntt, seed);
                            let end = ((ct + 1) * DEGREE).min(y_own.len());
                            let b = Zeroizing::new(d.reversed(&y_own[ct * DEGREE..end])?);
                            Ok([&c0 * &*b, &c1 * &*b])
                        })
                        .collect();
                    let mut acc: Option<[Poly; 2]> = None;
                    for p in products {
                        let [p0, p1] = p?;
                        acc = Some(match acc {
                            None => [p0, p1],
                            Some([mut a0, mut a1]) => {
                                a0 += &p0;
                                a1 += &p1;
                                [a0, a1]
                            }
                        });
                    }
                    let [a0, a1] = acc.ok_or_else(|| MpcError::Malformed("no queries".into()))?;
                    dot_answer(&d, &pk, a0, a1, m[g], &mut r)
                })
                .collect();
            concat(parts, groups * DOT_ANSWER_BYTES)
        })
        .await?;
        let got =
            exchange_items(peer, KIND_RLWE_ANSWER, DOT_ANSWER_BYTES, &answers, groups).await?;

        let d = self.dot.clone();
        let s = Zeroizing::new((*self.dot_s).clone());
        let opened = offload(move || -> Result<u64, MpcError> {
            let mut sum = 0u64;
            for a in got.chunks_exact(DOT_ANSWER_BYTES) {
                sum = sum.wrapping_add(dot_decrypt(&d, &s, a)?);
            }
            Ok(sum)
        })
        .await?;
        Ok(masks.iter().fold(opened, |acc, r| acc.wrapping_sub(*r)))
    }

    /// Additive shares over `Z_2^64` of `a_0[i]·b_1[i] + a_1[i]·b_0[i]` for every `i`: this
    /// party passes its own `a_P`, `b_P` (same length; the peer the same length) and gets its
    /// share. Chunks of [`CHUNK_CTS`]`· N` elements, each one message of queries and one of
    /// answers each way.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`] if `a` and `b` differ in length; a link error;
    /// [`MpcError::Malformed`] for a malformed query or answer.
    pub async fn cross_shares<R: CryptoRngCore + Send>(
        &self,
        peer: &dyn Link,
        rng: &mut R,
        a: &[u64],
        b: &[u64],
    ) -> Result<Vec<u64>, MpcError> {
        crate::same_len(a.len(), b.len())?;
        let mut out = Vec::with_capacity(a.len());
        let chunk = CHUNK_CTS * DEGREE;
        for (ca, cb) in a.chunks(chunk).zip(b.chunks(chunk)) {
            let z = self.chunk(peer, rng, ca, cb).await?;
            out.extend_from_slice(&z);
        }
        Ok(out)
    }

    async fn chunk<R: CryptoRngCore + Send>(
        &self,
        peer: &dyn Link,
        rng: &mut R,
        a: &[u64],
        b: &[u64],
    ) -> Result<Vec<u64>, MpcError> {
        let n = a.len();
        let cts = n.div_ceil(DEGREE);
        let jobs = PLAIN_PRIMES * cts;
        // Queries: a mod t_j, ciphertext by ciphertext.
        let rngs: Vec<_> = (0..jobs).map(|_| fork(rng)).collect();
        let par = self.par.clone();
        let s = Zeroizing::new((*self.s).clone());
        let a_own = Zeroizing::new(a.to_vec());
        let queries = offload(move || -> Result<Vec<u8>, MpcError> {
            let parts: Vec<Result<Vec<u8>, MpcError>> = rngs
                .into_par_iter()
                .enumerate()
                .map(|(job, mut r)| {
                    let (j, ct) = (job / cts, job % cts);
                    let plain = &par.plains[j];
                    let end = ((ct + 1) * DEGREE).min(a_own.len());
                    let mut slots: Vec<u64> = a_own[ct * DEGREE..end]
                        .iter()
                        .map(|&x| plain.t.reduce(x))
                        .collect();
                    let dm = par.scaled_plaintext(plain, &slots)?;
                    slots.zeroize();
                    seeded_encryption(&par.ctx, &s, &dm, &mut r, QUERY_BYTES)
                })
                .collect();
            concat(parts, jobs * QUERY_BYTES)
        })
        .await?;
        let got = exchange_items(peer, KIND_RLWE_QUERY, QUERY_BYTES, &queries, jobs).await?;
        drop(queries);

        // Answers: the peer's ciphertexts times b mod t_j, plus the mask r mod t_j.
        let mut masks = vec![[0u64; 3]; n];
        for m in masks.iter_mut() {
            let mut w = [0u64; 3];
            for x in w.iter_mut() {
                *x = rng.next_u64();
            }
            w[2] &= (1u64 << (MASK_BITS - 128)) - 1;
            *m = w;
        }
        let rngs: Vec<_> = (0..jobs).map(|_| fork(rng)).collect();
        let par = self.par.clone();
        let pk = self.peer_pk.clone();
        let b_own = Zeroizing::new(b.to_vec());
        let (answers, masks) = offload(move || -> Result<(Vec<u8>, Vec<[u64; 3]>), MpcError> {
            let parts: Vec<Result<Vec<u8>, MpcError>> = rngs
                .into_par_iter()
                .enumerate()
                .map(|(job, mut r)| {
                    let (j, ct) = (job / cts, job % cts);
                    let plain = &par.plains[j];
                    let range = ct * DEGREE..((ct + 1) * DEGREE).min(b_own.len());
                    let mut bs: Vec<u64> = b_own[range.clone()]
                        .iter()
                        .map(|&x| plain.t.reduce(x))
                        .collect();
                    let mut rs: Vec<u64> = masks[range]
                        .iter()
                        .map(|w| {
                            let t = &plain.t;
                            t.add(
                                t.add(t.reduce(w[0]), t.mul(t.reduce(w[1]), plain.pow64)),
                                t.mul(t.reduce(w[2]), plain.pow128),
                            )
                        })
                        .collect();
                    let q = got
                        .get(job * QUERY_BYTES..(job + 1) * QUERY_BYTES)
                        .ok_or_else(|| MpcError::Malformed("short RLWE queries".into()))?;
                    let out = answer(&par, plain, &pk, q, &bs, &rs, &mut r);
                    bs.zeroize();
                    rs.zeroize();
                    out
                })
                .collect();
            let bytes = concat(parts, jobs * ANSWER_BYTES)?;
            Ok((bytes, masks))
        })
        .await?;
        let got = exchange_items(peer, KIND_RLWE_ANSWER, ANSWER_BYTES, &answers, jobs).await?;
        drop(answers);

        // Decrypt the answers to our queries; CRT; subtract our own masks.
        let par = self.par.clone();
        let s = Zeroizing::new((*self.s).clone());
        offload(move || -> Result<Vec<u64>, MpcError> {
            let residues: Vec<Result<Vec<u64>, MpcError>> = (0..jobs)
                .into_par_iter()
                .map(|job| {
                    let plain = &par.plains[job / cts];
                    let bytes = got
                        .get(job * ANSWER_BYTES..(job + 1) * ANSWER_BYTES)
                        .ok_or_else(|| MpcError::Malformed("short RLWE answers".into()))?;
                    decrypt(&par, plain, &s, bytes)
                })
                .collect();
            let residues = residues.into_iter().collect::<Result<Vec<_>, _>>()?;
            let mut z = Vec::with_capacity(n);
            for (i, mask) in masks.iter().enumerate() {
                let (ct, slot) = (i / DEGREE, i % DEGREE);
                let r = [0, 1, 2].map(|j| residues[j * cts + ct][slot]);
                let u = par.crt_mod_2_64(r);
                z.push(u.wrapping_sub(mask[0]));
            }
            let mut masks = masks;
            masks.zeroize();
            Ok(z)
        })
        .await
    }
}

/// A query: `(c0, seed of c1)` with `c0 = −c1·s + e + Δm`, serialised as the seed then `c0`
/// (`bytes` in all).
fn seeded_encryption<R: rand_core_09::RngCore + rand_core_09::CryptoRng>(
    ctx: &Arc<Context>,
    s: &Poly,
    dm: &Poly,
    rng: &mut R,
    bytes: usize,
) -> Result<Vec<u8>, MpcError> {
    let mut seed = [0u8; SEED_BYTES];
    rng.fill_bytes(&mut seed);
    let c1 = Poly::random_from_seed(ctx, Representation::Ntt, seed);
    let mut c0 = Poly::small(ctx, Representation::Ntt, VARIANCE, rng).map_err(math)?;
    c0 -= &(&c1 * s);
    c0 += dm;
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&seed);
    put_poly(&mut out, &c0);
    Ok(out)
}

/// The inner-product answer of summed products `(a0, a1)` (NTT form): re-randomised by
/// `(p0·u, p1·u + e1)`, then the constant coefficient of `c0` plus `Δr` and the flooding noise,
/// and `c1` in coefficient form.
fn dot_answer<R: rand_core_09::RngCore + rand_core_09::CryptoRng>(
    d: &DotParams,
    pk: &[Poly; 2],
    mut a0: Poly,
    mut a1: Poly,
    r: u64,
    rng: &mut R,
) -> Result<Vec<u8>, MpcError> {
    let u = Zeroizing::new(Poly::small(&d.ctx, Representation::Ntt, VARIANCE, rng).map_err(math)?);
    let e1 = Zeroizing::new(Poly::small(&d.ctx, Representation::Ntt, VARIANCE, rng).map_err(math)?);
    a0 += &(&pk[0] * &*u);
    a1 += &(&pk[1] * &*u);
    a1 += &*e1;
    a0.change_representation(Representation::PowerBasis);
    a1.change_representation(Representation::PowerBasis);
    let flood = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let coeffs = a0.coefficients();
    let mut out = Vec::with_capacity(DOT_ANSWER_BYTES);
    for (i, (qi, d_i)) in d.qs.iter().zip(&d.delta).enumerate() {
        let c = coeffs[[i, 0]];
        let dr = qi.mul(qi.reduce(d.q_low.wrapping_mul(r)), *d_i);
        let f = qi.sub(qi.reduce_u128(flood), d.flood_offset[i]);
        out.extend_from_slice(&qi.add(qi.add(c, dr), f).to_le_bytes());
    }
    put_poly(&mut out, &a1);
    a0.zeroize();
    Ok(out)
}

/// Decrypts one inner-product answer: `round(2^64 · (c0_0 + (c1 · s)_0) / q) mod 2^64`.
fn dot_decrypt(d: &DotParams, s: &Poly, bytes: &[u8]) -> Result<u64, MpcError> {
    let (head, c1) = bytes.split_at(DOT_Q_PRIMES * 8);
    let mut c1 = d.parse_poly(c1, Representation::PowerBasis)?;
    c1.change_representation(Representation::Ntt);
    let mut cs = Zeroizing::new(&c1 * s);
    cs.change_representation(Representation::PowerBasis);
    let coeffs = cs.coefficients();
    let mut limbs = [0u64; DOT_Q_PRIMES];
    for (i, (l, qi)) in limbs.iter_mut().zip(&d.qs).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&head[i * 8..i * 8 + 8]);
        let c0 = u64::from_le_bytes(w);
        if c0 >= **qi {
            return Err(MpcError::Malformed(
                "an RLWE coefficient past its modulus".into(),
            ));
        }
        *l = qi.add(c0, coeffs[[i, 0]]);
    }
    Ok(d.decode(&limbs))
}

/// The answer to one query: `(c0·b + Δr + p0·u + flood, c1·b + p1·u + e1)`.
fn answer<R: rand_core_09::RngCore + rand_core_09::CryptoRng>(
    par: &Params,
    plain: &Plain,
    pk: &[Poly; 2],
    query: &[u8],
    b: &[u64],
    r: &[u64],
    rng: &mut R,
) -> Result<Vec<u8>, MpcError> {
    let mut seed = [0u8; SEED_BYTES];
    seed.copy_from_slice(&query[..SEED_BYTES]);
    let c0 = par.parse_poly(&query[SEED_BYTES..])?;
    let c1 = Poly::random_from_seed(&par.ctx, Representation::Ntt, seed);
    let bp = Zeroizing::new(par.lifted_plaintext(plain, b)?);
    let dr = Zeroizing::new(par.scaled_plaintext(plain, r)?);
    let u =
        Zeroizing::new(Poly::small(&par.ctx, Representation::Ntt, VARIANCE, rng).map_err(math)?);
    let e1 =
        Zeroizing::new(Poly::small(&par.ctx, Representation::Ntt, VARIANCE, rng).map_err(math)?);
    let flood = Zeroizing::new(par.flood(rng)?);
    let mut out0 = &c0 * &*bp;
    out0 += &*dr;
    out0 += &(&pk[0] * &*u);
    out0 += &*flood;
    let mut out1 = &c1 * &*bp;
    out1 += &(&pk[1] * &*u);
    out1 += &*e1;
    let mut out = Vec::with_capacity(ANSWER_BYTES);
    put_poly(&mut out, &out0);
    put_poly(&mut out, &out1);
    Ok(out)
}

/// Decrypts one answer to the slot values mod `t`.
fn decrypt(par: &Params, plain: &Plain, s: &Poly, bytes: &[u8]) -> Result<Vec<u64>, MpcError> {
    let (b0, b1) = bytes.split_at(POLY_BYTES);
    let mut phase = Zeroizing::new(par.parse_poly(b0)?);
    let c1 = par.parse_poly(b1)?;
    *phase += &(&c1 * s);
    phase.change_representation(Representation::PowerBasis);
    let m = phase.scale(&plain.scaler).map_err(math)?;
    let mut v: Vec<u64> = m.coefficients().iter().take(DEGREE).copied().collect();
    plain.t.reduce_vec(&mut v);
    plain.ntt.forward(&mut v);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tessera_core::MemLink;

    #[test]
    fn parameters_build_and_hold_their_bounds() {
        let p = params().expect("params");
        assert_eq!(p.ctx.moduli().len(), Q_PRIMES);
        for pl in &p.plains {
            assert_eq!(*pl.t % (2 * DEGREE as u64), 1);
            assert!(*pl.t < 1 << PLAIN_BITS);
        }
    }

    #[test]
    fn crt_recovers_values_mod_2_64() {
        let p = params().expect("params");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let t: Vec<u64> = p.plains.iter().map(|x| *x.t).collect();
        let big_t = BigUint::from(t[0]) * BigUint::from(t[1]) * BigUint::from(t[2]);
        for k in 0..2000 {
            let x: BigUint = match k {
                0 => BigUint::from(0u8),
                1 => &big_t - 1u8,
                _ => {
                    let words: Vec<u32> = (0..6).map(|_| rng.r#gen()).collect();
                    BigUint::from_slice(&words) % &big_t
                }
            };
            let r = [0, 1, 2].map(|j| u64::try_from(&x % t[j]).expect("residue"));
            let want = u64::try_from(&x % (BigUint::from(1u8) << 64u32)).expect("low word");
            assert_eq!(p.crt_mod_2_64(r), want);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_shares_match_the_clear_products() {
        let (l0, l1) = MemLink::pair();
        let mut r0 = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut r1 = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        // Two ciphertexts and a partial one, edge values included.
        let n = 2 * DEGREE + 5;
        let mut data = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let mut vec = |n: usize| -> Vec<u64> { (0..n).map(|_| data.r#gen()).collect() };
        let (mut a0, b0, a1, mut b1) = (vec(n), vec(n), vec(n), vec(n));
        a0[0] = u64::MAX;
        b1[0] = u64::MAX;
        a0[1] = 0;
        b1[2] = 1;
        let (o0, o1) = tokio::join!(
            async {
                let o = RlweOle::setup(&l0, &mut r0).await?;
                o.cross_shares(&l0, &mut r0, &a0, &b0).await
            },
            async {
                let o = RlweOle::setup(&l1, &mut r1).await?;
                o.cross_shares(&l1, &mut r1, &a1, &b1).await
            }
        );
        let (z0, z1) = (o0.expect("p0"), o1.expect("p1"));
        for i in 0..n {
            let want = a0[i]
                .wrapping_mul(b1[i])
                .wrapping_add(a1[i].wrapping_mul(b0[i]));
            assert_eq!(z0[i].wrapping_add(z1[i]), want, "element {i}");
        }
        // Empty vectors: nothing sent, nothing owed.
        let (e0, e1) = tokio::join!(
            async {
                let o = RlweOle::setup(&l0, &mut r0).await?;
                o.cross_shares(&l0, &mut r0, &[], &[]).await
            },
            async {
                let o = RlweOle::setup(&l1, &mut r1).await?;
                o.cross_shares(&l1, &mut r1, &[], &[]).await
            }
        );
        assert!(e0.expect("p0").is_empty() && e1.expect("p1").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dot_shares_match_the_clear_inner_product() {
        let (l0, l1) = MemLink::pair();
        let mut r0 = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut r1 = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let mut data = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let (o0, o1) = tokio::join!(RlweOle::setup(&l0, &mut r0), RlweOle::setup(&l1, &mut r1));
        let (o0, o1) = (o0.expect("p0"), o1.expect("p1"));
        // One element; a partial block; several blocks; extreme values; empty.
        for n in [1usize, 100, 3 * DEGREE + 17, 0] {
            let mut vec = |n: usize| -> Vec<u64> { (0..n).map(|_| data.r#gen()).collect() };
            let (mut x0, y0, x1, mut y1) = (vec(n), vec(n), vec(n), vec(n));
            if n > 2 {
                x0[0] = u64::MAX;
                y1[0] = u64::MAX;
                x0[1] = 1 << 63;
                y1[1] = 1 << 63;
            }
            let (z0, z1) = tokio::join!(
                o0.dot_shares(&l0, &mut r0, &x0, &y0),
                o1.dot_shares(&l1, &mut r1, &x1, &y1)
            );
            let want = (0..n).fold(0u64, |s, i| {
                s.wrapping_add(x0[i].wrapping_mul(y1[i]))
                    .wrapping_add(x1[i].wrapping_mul(y0[i]))
            });
            assert_eq!(
                z0.expect("p0").wrapping_add(z1.expect("p1")),
                want,
                "n = {n}"
            );
        }
        // More queries than one answer sums: two answers.
        let n = DOT_SUM_CTS * DEGREE + 3;
        let mut vec = |n: usize| -> Vec<u64> { (0..n).map(|_| data.r#gen()).collect() };
        let (x0, y0, x1, y1) = (vec(n), vec(n), vec(n), vec(n));
        let (z0, z1) = tokio::join!(
            o0.dot_shares(&l0, &mut r0, &x0, &y0),
            o1.dot_shares(&l1, &mut r1, &x1, &y1)
        );
        let want = (0..n).fold(0u64, |s, i| {
            s.wrapping_add(x0[i].wrapping_mul(y1[i]))
                .wrapping_add(x1[i].wrapping_mul(y0[i]))
        });
        assert_eq!(z0.expect("p0").wrapping_add(z1.expect("p1")), want);
    }

    #[test]
    fn inner_product_parameters_hold_their_bounds() {
        let d = dot_params().expect("dot params");
        assert_eq!(d.ctx.moduli().len(), DOT_Q_PRIMES);
        // decode(Δ·m) = m at the edges of Z_2^64.
        for m in [0u64, 1, u64::MAX, 1 << 63] {
            let p = d.scaled(&[m]).expect("scaled");
            let mut p = p;
            p.change_representation(Representation::PowerBasis);
            let c = p.coefficients();
            let limbs: Vec<u64> = (0..DOT_Q_PRIMES).map(|i| c[[i, 0]]).collect();
            assert_eq!(d.decode(&limbs), m);
        }
    }

    #[tokio::test]
    async fn hostile_keys_and_queries_are_typed_errors() {
        use bytes::Bytes;
        let par = params().expect("params");
        // A key frame of another version, and one with a coefficient past its modulus.
        for (version, word) in [(9u8, 0u64), (PARAMS_VERSION, u64::MAX)] {
            let (a, b) = MemLink::pair();
            let mut frame = vec![KIND_RLWE_KEY, 1, 0, 0, 0, version];
            frame.extend_from_slice(&[0u8; SEED_BYTES]);
            frame.extend_from_slice(&word.to_le_bytes());
            frame.resize(5 + KEY_BYTES, 0);
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
            let (_, got) = tokio::join!(a.send(Bytes::from(frame)), RlweOle::setup(&b, &mut rng));
            assert!(matches!(got, Err(MpcError::Malformed(_))), "{got:?}");
        }
        // A query polynomial of the wrong length or with an out-of-range word.
        assert!(matches!(
            par.parse_poly(&[0u8; 8]),
            Err(MpcError::Malformed(_))
        ));
        let mut bad = vec![0u8; POLY_BYTES];
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(par.parse_poly(&bad), Err(MpcError::Malformed(_))));
        let mut rng =
            <rand_chacha_09::ChaCha20Rng as rand_core_09::SeedableRng>::from_seed([3u8; 32]);
        let pk = [
            par.parse_poly(&vec![0u8; POLY_BYTES]).expect("zero poly"),
            par.parse_poly(&vec![0u8; POLY_BYTES]).expect("zero poly"),
        ];
        let mut q = vec![0u8; QUERY_BYTES];
        q[SEED_BYTES + 8..SEED_BYTES + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let got = answer(&par, &par.plains[0], &pk, &q, &[1], &[1], &mut rng);
        assert!(matches!(got, Err(MpcError::Malformed(_))));
    }
}
