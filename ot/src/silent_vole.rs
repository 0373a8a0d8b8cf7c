//! Silent VOLE over GF(2^128): `n` VOLE correlations from `t` punctured GGM trees and one noisy
//! VOLE of `t` values, compressed by the expand-convolute code. [`send`] and [`receive`] run the
//! whole stack (base OT, IKNP, noisy VOLE, PPRF, code); [`send_with`] and [`receive_with`] are
//! the core *given* the random OTs.
//!
//! # Construction
//!
//! Dual LPN with regular noise (Boyle, Couteau, Gilboa, Ishai, Kohl, Scholl, "Efficient
//! Pseudorandom Correlation Generators: Silent OT Extension and More", CRYPTO 2019; the VOLE
//! form from Boyle, Couteau, Gilboa, Ishai, "Compressing Vector OLE", CCS 2018, as in libOTe's
//! `SilentVoleSender`), with the expand-convolute code of Raghuraman, Rindal, Tanguy,
//! "Expand-Convolute Codes for Pseudorandom Correlation Generators from LPN" (CRYPTO 2023) as
//! the compressing map `H: GF(2^128)^N → GF(2^128)^k` (`cryprot_codes::ExConvCode::dual_encode`).
//!
//! 1. The receiver samples a regular noise vector `e ∈ GF(2^128)^N`: the positions are cut into
//!    `t` intervals of `domain` positions, and interval `j` holds one nonzero `β_j` at a uniform
//!    point `p_j` ([`sample_noise`]).
//! 2. Noisy VOLE ([`crate::noisy_vole`]) on `a = β`: the sender gets `B'`, the receiver
//!    `C' = B' ⊕ β·Δ` (`t` values).
//! 3. PPRF ([`crate::pprf`]) with `t` trees of `domain` leaves, punctured at the `p_j`, with the
//!    noisy-VOLE shares as corrections: the sender gets `v ∈ GF(2^128)^N`, the receiver `w` with
//!    `w = v ⊕ e·Δ`.
//! 4. Both compress: `B = H·v`, `A = H·e`, `C = H·w`; `H` is GF(2)-linear and multiplication by
//!    `Δ` is GF(2)-linear, so `C = B ⊕ A·Δ`. The first `n` of the `k` values are output.
//!
//! # Parameters
//!
//! * Code: ExConv with expander weight 7 and accumulator width 24, accumulating twice, regular
//!   expander (CryProt's default, `MultType::ExConv7x24`), message size
//!   `k = max(n, CODE_MESSAGE_MIN)` and code size `N = t · domain` with
//!   `domain = ⌈2k / t⌉`, so `N ≥ 2k` (rate ≤ 1/2) and exceeds `2k` by less than `t`. Making `N`
//!   exactly `t · domain` keeps the noise exactly regular: no interval straddles the end of the
//!   code, no leaf is discarded. Codes for fewer than [`CODE_MESSAGE_MIN`] outputs are padded to
//!   it (our choice, not from the literature: the minimum-distance estimate below is for
//!   large codes; the padded code for `n = 1` has only 8,217 positions).
//! * Noise weight `t = NOISE_WEIGHT = 249`: the smallest `t` with `(1 − 2δ)^t ≤ 2^-128` for
//!   the relative minimum distance `δ = 0.15` that libOTe and CryProt assume for ExConv7x24
//!   (`get_reg_noise_weight` in `cryprot-ot/src/silent_ot.rs`, from libOTe's
//!   `getRegNoiseWeight`; an empirical estimate, RRT23 analyses the code's distance). That
//!   bound covers linear attacks on dual LPN. CryProt truncates 248.7 to 248 and rounds up to
//!   its AES batch (248 on x86-64, 252 on aarch64); we round up to 249 and fix it for every
//!   platform, since both parties must agree.
//! * For `n = 2^20`: `k = 2^20`, `domain = 8423` (depth 14), `N = 2,097,327`; 3486 PPRF OTs and
//!   128 noisy-VOLE OTs; 625,488 payload bytes on the wire (message flow below).
//!
//! `dual_encode` has an SSE4.1 fast path compiled only when the build enables
//! `target_feature = "sse4.1"` (for example `-C target-cpu=native`); without it, the portable
//! path is used. Its time is measured by `benches/rr22.rs` (`silent_vole`).
//!
//! # Threat model
//!
//! Semi-honest, assuming dual LPN with regular noise over the ExConv code (parameters above),
//! AES as a random permutation (GGM expansion, PRG), and the random OTs the caller supplies.
//! The sender learns nothing about `e` (points hidden by the OTs, `β` by the noisy VOLE), hence
//! nothing about `A`, `C`. The receiver learns `v` off the points and `v_{p_j} ⊕ β_j·Δ` at
//! them, nothing about `Δ`; `A = H·e` is pseudorandom under the LPN assumption. `Δ` must be
//! uniform and secret (the caller draws it; it is also the choice vector of the noisy-VOLE
//! OTs). Each OT is used once. No check against a malicious party: a malicious receiver can
//! pick a non-regular or structured noise vector, a malicious sender inconsistent trees.
//!
//! # Bounds
//!
//! `1 ..= VOLE_MAX` correlations (2^27): then `N ≈ 2^28`, and the sender holds one and the
//! receiver two `N`-block vectors of 4 GiB each. Arguments are checked before any traffic.
//!
//! # Message flow
//!
//! 1. Receiver → sender: [`crate::wire::KIND_NOISY_VOLE`], `128 · t` blocks (498 KiB).
//! 2. Sender → receiver: [`crate::wire::KIND_PPRF_LEVELS`], `2 · t · depth` blocks.
//! 3. Sender → receiver: [`crate::wire::KIND_PPRF_CORRECTIONS`], `t` blocks.

use std::fmt;

use cryprot_codes::{ExConvCode, ExConvCodeConfig};
use rand_core::CryptoRngCore;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::noisy_vole::{self, random_block, wipe};
use crate::pprf::{self, PprfConfig};
use crate::{Block, OtError};

/// Most correlations of one silent VOLE.
pub const VOLE_MAX: usize = 1 << 27;

/// Smallest code message size: fewer outputs are computed at this size and truncated.
pub const CODE_MESSAGE_MIN: usize = 1 << 12;

/// Noise weight `t` (= PPRF trees): `⌈128 / −log2(1 − 2·0.15)⌉`; see the module docs.
pub const NOISE_WEIGHT: usize = 249;

/// The parameters of a silent VOLE of `n` correlations; both parties must use the same.
#[derive(Debug, Clone, Copy)]
pub struct SilentVoleParams {
    n: usize,
    pprf: PprfConfig,
    code: ExConvCode,
}

impl SilentVoleParams {
    /// Parameters for `n` correlations (see the module docs for the choice).
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `n` is 0 or above [`VOLE_MAX`].
    pub fn new(n: usize) -> Result<Self, OtError> {
        if n == 0 || n > VOLE_MAX {
            return Err(OtError::InvalidArgument(format!(
                "silent VOLE of {n} correlations; 1..={VOLE_MAX} allowed"
            )));
        }
        let message = n.max(CODE_MESSAGE_MIN);
        let pprf = PprfConfig::new(NOISE_WEIGHT, (2 * message).div_ceil(NOISE_WEIGHT))?;
        let code = ExConvCode::new_with_conf(
            message,
            ExConvCodeConfig {
                code_size: pprf.size(),
                ..ExConvCodeConfig::default()
            },
        );
        Ok(Self { n, pprf, code })
    }

    /// The PPRF's shape: its OTs are [`PprfConfig::ot_count`] random OTs from the VOLE sender
    /// (OT sender) to the VOLE receiver.
    pub fn pprf(&self) -> &PprfConfig {
        &self.pprf
    }

    /// Correlations produced.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Nonzero noise positions `t` (one per PPRF tree).
    pub fn noise_weight(&self) -> usize {
        self.pprf.trees()
    }

    /// Code length `N = t · domain`.
    pub fn code_size(&self) -> usize {
        self.code.code_size()
    }

    /// Code message size `k = max(n, CODE_MESSAGE_MIN)`.
    pub fn code_message_size(&self) -> usize {
        self.code.message_size()
    }

    /// `H·x`, in place; the first `n` entries are kept.
    pub(crate) fn compress(&self, x: &mut Vec<Block>) {
        debug_assert_eq!(x.len(), self.code.code_size());
        self.code.dual_encode(x);
        wipe(&mut x[self.n..]);
        x.truncate(self.n);
    }

    /// `H·x` over GF(2) (each byte one bit, 0 or 1), in place; the first `n` entries are kept.
    /// The same code as [`Self::compress`]: `H` is a binary matrix, so it maps bit vectors to
    /// bit vectors.
    pub(crate) fn compress_bits(&self, x: &mut Vec<u8>) {
        debug_assert_eq!(x.len(), self.code.code_size());
        self.code.dual_encode(x);
        x[self.n..].zeroize();
        x.truncate(self.n);
    }
}

/// The VOLE sender's output: `Δ` and `B`, with `C = B ⊕ A·Δ`. Prints redacted.
pub struct VoleSenderOutput {
    /// The global key `Δ`.
    pub delta: Block,
    /// `B`, `n` blocks.
    pub b: Vec<Block>,
}

impl fmt::Debug for VoleSenderOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoleSenderOutput")
            .field("delta", &"<redacted>")
            .field("b", &format_args!("<{} blocks redacted>", self.b.len()))
            .finish()
    }
}

/// The VOLE receiver's output: `A` and `C`, with `C = B ⊕ A·Δ`. Prints redacted.
pub struct VoleReceiverOutput {
    /// `A`, `n` blocks.
    pub a: Vec<Block>,
    /// `C`, `n` blocks.
    pub c: Vec<Block>,
}

impl fmt::Debug for VoleReceiverOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VoleReceiverOutput")
            .field("a", &format_args!("<{} blocks redacted>", self.a.len()))
            .field("c", &format_args!("<{} blocks redacted>", self.c.len()))
            .finish()
    }
}

/// The receiver's regular noise: one point per PPRF tree and its nonzero value `β_j`. Drawn
/// before the OTs exist, since the PPRF OTs' choice bits encode the points. Prints redacted;
/// wiped on drop.
pub struct ReceiverNoise {
    pprf: PprfConfig,
    points: Vec<usize>,
    betas: Vec<Block>,
    choice_bits: Vec<bool>,
}

impl ReceiverNoise {
    /// The choice bits of the [`PprfConfig::ot_count`] PPRF OTs the receiver must obtain (as OT
    /// receiver) for this noise, in the order [`receive_with`] consumes them.
    pub fn choice_bits(&self) -> &[bool] {
        &self.choice_bits
    }
}

impl fmt::Debug for ReceiverNoise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverNoise")
            .field("pprf", &self.pprf)
            .field("points", &"<redacted>")
            .field("betas", &"<redacted>")
            .finish()
    }
}

impl Drop for ReceiverNoise {
    fn drop(&mut self) {
        self.points.zeroize();
        self.choice_bits.zeroize();
        wipe(&mut self.betas);
    }
}

/// Draws the receiver's regular noise for `params`: in each tree a uniform point and a uniform
/// nonzero `β`.
pub fn sample_noise<R: CryptoRngCore + ?Sized>(
    params: &SilentVoleParams,
    rng: &mut R,
) -> ReceiverNoise {
    let pprf = params.pprf;
    let points: Vec<usize> = (0..pprf.trees())
        .map(|_| uniform_below(rng, pprf.domain()))
        .collect();
    let betas = (0..pprf.trees())
        .map(|_| {
            loop {
                let beta = random_block(rng);
                if beta != Block::ZERO {
                    break beta;
                }
            }
        })
        .collect();
    let choice_bits = pprf.choice_bits_unchecked(&points);
    ReceiverNoise {
        pprf,
        points,
        betas,
        choice_bits,
    }
}

/// Uniform in `0..bound` (`bound ≥ 1`), by rejection: no modulo bias.
pub(crate) fn uniform_below<R: CryptoRngCore + ?Sized>(rng: &mut R, bound: usize) -> usize {
    let bound = bound as u64;
    // The largest multiple of `bound` that fits, minus one: accept x ≤ limit.
    let limit = u64::MAX - (u64::MAX % bound + 1) % bound;
    loop {
        let x = rng.next_u64();
        if x <= limit {
            return (x % bound) as usize;
        }
    }
}

/// Silent VOLE sender. `delta` is the caller's uniform secret `Δ`, the choice vector of the
/// noisy-VOLE OTs; `pprf_ots` are [`PprfConfig::ot_count`] OT-sender pairs (this party is OT
/// sender); `noisy_ot_keys` the 128 OT-receiver keys with choice bits the bits of `delta`
/// (bit `i` = `(u128::from(delta) >> i) & 1`). `rng` draws the GGM roots.
///
/// # Errors
/// [`OtError::InvalidArgument`] on OT counts that do not match `params` (before any traffic);
/// [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad or abort frame; a link error.
pub async fn send_with<R: CryptoRngCore + Send>(
    link: &dyn Link,
    params: &SilentVoleParams,
    delta: Block,
    pprf_ots: &[[Block; 2]],
    noisy_ot_keys: &[Block],
    rng: &mut R,
) -> Result<VoleSenderOutput, OtError> {
    check_ot_counts(params, pprf_ots.len(), noisy_ot_keys.len())?;
    let t = params.noise_weight();
    let mut b_noisy = noisy_vole::send(link, delta, noisy_ot_keys, t).await?;
    let sent = pprf::send(link, &params.pprf, pprf_ots, &b_noisy, rng).await;
    wipe(&mut b_noisy);
    let mut v = sent?;
    let params = *params;
    let v = crate::offload(move || {
        params.compress(&mut v);
        v
    })
    .await;
    Ok(VoleSenderOutput { delta, b: v })
}

/// Silent VOLE receiver, for `noise` drawn by [`sample_noise`] with the same `params`.
/// `pprf_ot_keys` are the OT-receiver outputs for [`ReceiverNoise::choice_bits`]; `noisy_ots`
/// the 128 OT-sender pairs of the noisy VOLE (this party is OT sender).
///
/// # Errors
/// [`OtError::InvalidArgument`] if `noise` was drawn for other parameters or the OT counts do
/// not match (before any traffic); [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad
/// or abort frame; a link error.
pub async fn receive_with(
    link: &dyn Link,
    params: &SilentVoleParams,
    noise: ReceiverNoise,
    pprf_ot_keys: &[Block],
    noisy_ots: &[[Block; 2]],
) -> Result<VoleReceiverOutput, OtError> {
    if noise.pprf != params.pprf {
        return Err(OtError::InvalidArgument(
            "the receiver's noise was drawn for other parameters".into(),
        ));
    }
    check_ot_counts(params, pprf_ot_keys.len(), noisy_ots.len())?;
    let mut c_noisy = noisy_vole::receive(link, &noise.betas, noisy_ots).await?;
    let received = pprf::receive(link, &params.pprf, &noise.points, pprf_ot_keys, &c_noisy).await;
    wipe(&mut c_noisy);
    let mut w = received?;
    let domain = params.pprf.domain();
    let mut e = vec![Block::ZERO; params.pprf.size()];
    for (j, (p, beta)) in noise.points.iter().zip(&noise.betas).enumerate() {
        e[j * domain + p] = *beta;
    }
    let params = *params;
    let (e, w) = crate::offload(move || {
        rayon::join(|| params.compress(&mut e), || params.compress(&mut w));
        (e, w)
    })
    .await;
    Ok(VoleReceiverOutput { a: e, c: w })
}

/// Base OTs of one silent VOLE, the VOLE sender as base-OT receiver: the first
/// [`crate::iknp::BASE_COUNT`] with random choice bits `s` (IKNP's), the next 128 with the bits
/// of `Δ` (the noisy VOLE's).
const BASE_OTS: usize = crate::iknp::BASE_COUNT + crate::noisy_vole::OT_COUNT;

/// The VOLE sender's side of `n` correlations, the whole stack: 256 base OTs (as base-OT
/// receiver: 128 for IKNP with random choices `s`, 128 with the bits of a fresh uniform `Δ`
/// for the noisy VOLE), the PPRF's OTs by IKNP extension (as OT sender), then
/// [`send_with`]. Returns `Δ` and `B` with `C = B ⊕ A·Δ` on the receiver's side.
///
/// Message flow, after [`send_with`]'s: base OT ([`crate::wire::KIND_BASE_SENDER`] from the
/// receiver, [`crate::wire::KIND_BASE_RECEIVER`] to it), the IKNP matrix
/// ([`crate::wire::KIND_IKNP_MATRIX`], from the receiver), then [`send_with`]'s messages.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `n` is 0 or above [`VOLE_MAX`] (before any traffic);
/// [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad or abort frame; a link error.
pub async fn send<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    n: usize,
) -> Result<VoleSenderOutput, OtError> {
    let params = SilentVoleParams::new(n)?;
    let s = random_block(rng);
    let delta = random_block(rng);
    let choices: Vec<bool> = crate::block_bits(s)
        .chain(crate::block_bits(delta))
        .collect();
    let mut keys = crate::base::receive(link, rng, &choices).await?;
    let noisy_keys = keys.split_off(crate::iknp::BASE_COUNT);
    let mut iknp = crate::iknp::IknpSender::new(s, keys)?;
    let mut pprf_ots = iknp.send(link, params.pprf().ot_count()).await?;
    let out = send_with(link, &params, delta, &pprf_ots, &noisy_keys, rng).await;
    for pair in &mut pprf_ots {
        wipe(pair);
    }
    out
}

/// The VOLE receiver's side of `n` correlations, the whole stack: 256 base OTs (as base-OT
/// sender), the regular noise ([`sample_noise`]), the PPRF's OTs by IKNP extension with the
/// noise's choice bits (as OT receiver), then [`receive_with`]. Returns `A` and `C`.
///
/// # Errors
/// As [`send`].
pub async fn receive<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    n: usize,
) -> Result<VoleReceiverOutput, OtError> {
    let params = SilentVoleParams::new(n)?;
    let mut base = crate::base::send(link, rng, BASE_OTS).await?;
    let noisy_ots = base.split_off(crate::iknp::BASE_COUNT);
    let noise = sample_noise(&params, rng);
    let mut iknp = crate::iknp::IknpReceiver::new(base)?;
    let mut pprf_keys = iknp.receive(link, noise.choice_bits()).await?;
    let out = receive_with(link, &params, noise, &pprf_keys, &noisy_ots).await;
    wipe(&mut pprf_keys);
    out
}

fn check_ot_counts(
    params: &SilentVoleParams,
    pprf_ots: usize,
    noisy_ots: usize,
) -> Result<(), OtError> {
    if pprf_ots != params.pprf.ot_count() {
        return Err(OtError::InvalidArgument(format!(
            "silent VOLE needs {} PPRF OTs, got {pprf_ots}",
            params.pprf.ot_count()
        )));
    }
    if noisy_ots != noisy_vole::OT_COUNT {
        return Err(OtError::InvalidArgument(format!(
            "silent VOLE needs {} noisy-VOLE OTs, got {noisy_ots}",
            noisy_vole::OT_COUNT
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use tessera_core::MemLink;

    use crate::noisy_vole::deal_ots;

    /// Both sides of a silent VOLE of `n`, random OTs from the test dealer.
    async fn run(n: usize, seed: u64) -> (VoleSenderOutput, VoleReceiverOutput) {
        let params = SilentVoleParams::new(n).expect("params");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let delta = random_block(&mut rng);
        let noise = sample_noise(&params, &mut rng);
        let (pprf_pairs, pprf_keys) = deal_ots(&mut rng, noise.choice_bits());
        let (noisy_pairs, noisy_keys) =
            deal_ots(&mut rng, &crate::block_bits(delta).collect::<Vec<_>>());
        let mut sender_rng = ChaCha20Rng::seed_from_u64(seed.wrapping_add(1 << 32));
        let (ls, lr) = MemLink::pair();
        let (s, r) = tokio::join!(
            send_with(
                &ls,
                &params,
                delta,
                &pprf_pairs,
                &noisy_keys,
                &mut sender_rng
            ),
            receive_with(&lr, &params, noise, &pprf_keys, &noisy_pairs)
        );
        (s.expect("sender"), r.expect("receiver"))
    }

    fn check_correlation(s: &VoleSenderOutput, r: &VoleReceiverOutput, n: usize) {
        assert_eq!(s.b.len(), n);
        assert_eq!(r.a.len(), n);
        assert_eq!(r.c.len(), n);
        for i in 0..n {
            assert_eq!(r.c[i], s.b[i] ^ r.a[i].gf_mul(&s.delta), "n {n}, i {i}");
        }
        let nonzero = r.a.iter().filter(|x| **x != Block::ZERO).count();
        assert!(
            nonzero * 10 > n * 4,
            "A is sparse: {nonzero} of {n} nonzero"
        );
    }

    #[tokio::test]
    async fn correlation_holds() {
        for n in [1, 1000, 100_000] {
            let (s, r) = run(n, n as u64).await;
            check_correlation(&s, &r, n);
        }
    }

    #[tokio::test]
    async fn runs_are_independent() {
        let (s1, r1) = run(1000, 1).await;
        let (s2, r2) = run(1000, 2).await;
        assert_ne!(s1.delta, s2.delta);
        assert!(s1.b.iter().zip(&s2.b).all(|(x, y)| x != y));
        assert!(r1.a.iter().zip(&r2.a).all(|(x, y)| x != y));
        assert!(r1.c.iter().zip(&r2.c).all(|(x, y)| x != y));
    }

    #[test]
    fn noise_weight_gives_128_bits_against_linear_tests() {
        let bits = |t: usize| -(t as f64) * (1.0f64 - 2.0 * 0.15).log2();
        assert!(bits(NOISE_WEIGHT) >= 128.0);
        assert!(bits(NOISE_WEIGHT - 1) < 128.0);
    }

    #[test]
    fn params_shape_and_bounds() {
        for n in [0, VOLE_MAX + 1] {
            assert!(matches!(
                SilentVoleParams::new(n),
                Err(OtError::InvalidArgument(_))
            ));
        }
        for n in [1, 1000, CODE_MESSAGE_MIN, 100_000, 1 << 20, VOLE_MAX] {
            let p = SilentVoleParams::new(n).expect("params");
            let k = n.max(CODE_MESSAGE_MIN);
            assert_eq!(p.n(), n);
            assert_eq!(p.noise_weight(), NOISE_WEIGHT);
            assert_eq!(p.code_message_size(), k);
            assert_eq!(p.code_size(), p.pprf().size());
            assert!(p.code_size() >= 2 * k && p.code_size() < 2 * k + NOISE_WEIGHT);
        }
        let p = SilentVoleParams::new(1 << 20).expect("params");
        assert_eq!((p.pprf().domain(), p.pprf().depth()), (8423, 14));
        assert_eq!(p.pprf().ot_count(), 3486);
    }

    #[test]
    fn noise_is_regular_and_nonzero() {
        let params = SilentVoleParams::new(5000).expect("params");
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let noise = sample_noise(&params, &mut rng);
        assert_eq!(noise.points.len(), NOISE_WEIGHT);
        assert!(noise.points.iter().all(|&p| p < params.pprf().domain()));
        assert!(noise.betas.iter().all(|b| *b != Block::ZERO));
        assert_eq!(
            noise.choice_bits(),
            params.pprf().choice_bits(&noise.points).expect("bits")
        );
        let printed = format!("{noise:?}");
        assert!(printed.contains("redacted"));
        assert!(!printed.contains(&format!("{:?}", noise.betas[0])));
    }

    #[test]
    fn uniform_below_covers_its_range() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[uniform_below(&mut rng, 7)] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(uniform_below(&mut rng, 1), 0);
    }

    #[tokio::test]
    async fn mismatched_arguments_are_refused_before_any_traffic() {
        let params = SilentVoleParams::new(100).expect("params");
        let other = SilentVoleParams::new(100_000).expect("params");
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (ls, lr) = MemLink::pair();
        let ots = params.pprf().ot_count();
        let r = receive_with(
            &lr,
            &params,
            sample_noise(&other, &mut rng),
            &vec![Block::ZERO; ots],
            &[[Block::ZERO; 2]; 128],
        )
        .await;
        assert!(matches!(r, Err(OtError::InvalidArgument(_))), "{r:?}");
        let r = receive_with(
            &lr,
            &params,
            sample_noise(&params, &mut rng),
            &vec![Block::ZERO; ots - 1],
            &[[Block::ZERO; 2]; 128],
        )
        .await;
        assert!(matches!(r, Err(OtError::InvalidArgument(_))), "{r:?}");
        let s = send_with(
            &ls,
            &params,
            Block::ONES,
            &vec![[Block::ZERO; 2]; ots],
            &[Block::ZERO; 127],
            &mut rng,
        )
        .await;
        assert!(matches!(s, Err(OtError::InvalidArgument(_))), "{s:?}");
        let s = send_with(
            &ls,
            &params,
            Block::ONES,
            &vec![[Block::ZERO; 2]; ots + 1],
            &[Block::ZERO; 128],
            &mut rng,
        )
        .await;
        assert!(matches!(s, Err(OtError::InvalidArgument(_))), "{s:?}");
        assert_eq!(ls.stats().frames_sent + lr.stats().frames_sent, 0);
    }

    #[tokio::test]
    async fn outputs_print_redacted() {
        let (s, r) = run(1, 77).await;
        let printed = format!("{s:?} {r:?}");
        assert!(printed.contains("redacted"));
        for secret in [s.delta, s.b[0], r.a[0], r.c[0]] {
            assert!(!printed.contains(&format!("{secret:?}")));
        }
    }

    /// The whole stack over a real link: base OT, IKNP, noisy VOLE, PPRF, code — no dealer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_whole_stack_over_a_link_gives_the_correlation() {
        for (n, seed) in [(1, 7u64), (5_000, 8), (70_000, 9)] {
            let (ls, lr) = MemLink::pair();
            let mut s_rng = ChaCha20Rng::seed_from_u64(seed);
            let mut r_rng = ChaCha20Rng::seed_from_u64(seed ^ 0xffff);
            let (s, r) = tokio::join!(send(&ls, &mut s_rng, n), receive(&lr, &mut r_rng, n));
            let (s, r) = (s.expect("sender"), r.expect("receiver"));
            check_correlation(&s, &r, n);
            // The bits that picked the noisy VOLE's OTs are the Δ the correlation holds for.
            assert_ne!(s.delta, Block::ZERO);
        }
    }

    #[tokio::test]
    async fn the_whole_stack_refuses_bad_sizes_before_any_traffic() {
        let (ls, lr) = MemLink::pair();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        assert!(matches!(
            send(&ls, &mut rng, 0).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &mut rng, VOLE_MAX + 1).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!(lr.stats().frames_received, 0);
        assert_eq!(ls.stats().frames_received, 0);
    }
}
