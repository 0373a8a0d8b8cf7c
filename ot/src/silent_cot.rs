//! Silent correlated OT (COT): `n` random OTs in correlated form, `k_i = q_i ⊕ c_i·Δ` with
//! binary choice bits `c_i`, from `t` punctured GGM trees compressed by the expand-convolute
//! code: the silent OT extension of Boyle, Couteau, Gilboa, Ishai, Kohl, Rindal, Scholl,
//! "Efficient Two-Round OT Extension and Silent Non-Interactive Secure Computation" (CCS 2019),
//! dual-LPN form, with the code of Raghuraman, Rindal, Tanguy, "Expand-Convolute Codes for
//! Pseudorandom Correlation Generators from LPN" (CRYPTO 2023). [`send_with`] and
//! [`receive_with`] are the core given the PPRF's OTs; [`send`] and [`receive`] run the whole
//! stack (base OT, IKNP, PPRF, code).
//!
//! # Construction
//!
//! It is [`crate::silent_vole`] with the noise values fixed to one (a subfield VOLE: the noise
//! and the output `c` are over GF(2), the keys over GF(2^128)), so no noisy VOLE is needed:
//!
//! 1. The receiver samples regular noise `e ∈ GF(2)^N`: `t` intervals of `domain` positions,
//!    one `1` at a uniform point `p_j` of interval `j` ([`sample_noise`]).
//! 2. PPRF ([`crate::pprf`]) with `t` trees punctured at the `p_j`; the sender adds `Δ` to
//!    each tree's correction (it sends `Σ_k leaf_{j,k} ⊕ Δ`), the receiver adds nothing: the
//!    sender gets `v ∈ GF(2^128)^N`, the receiver `w = v ⊕ e·Δ` (at `p_j` it recovers
//!    `v_{p_j} ⊕ Δ`, masked by a leaf it cannot compute).
//! 3. Both compress with the same binary matrix `H` (`cryprot_codes::ExConvCode::dual_encode`,
//!    over [`Block`]s for `v` and `w`, over bytes holding one bit for `e`): the sender's
//!    `q = H·v`, the receiver's `c = H·e ∈ GF(2)^n`, `k = H·w`. `H` is GF(2)-linear, so
//!    `k = q ⊕ c·Δ`. The first `n` of the `k` values are output.
//!
//! # Parameters
//!
//! Exactly those of [`crate::silent_vole`] ([`SilentVoleParams`]): ExConv7x24 (expander
//! weight 7, accumulator 24, twice), rate ≤ 1/2 (`N = t · ⌈2k / t⌉` for `k = max(n, 4096)`),
//! regular noise of weight `t = 249`, the smallest with `(1 − 2·0.15)^t ≤ 2^-128` for the
//! relative minimum distance 0.15 that libOTe and CryProt assume for this code
//! (`getRegNoiseWeight`; the binary LPN case is the one that estimate is made for). For
//! `n = 2^20`: 3486 PPRF OTs and `2 · 3486 + 249` blocks (115,536 bytes) on the wire.
//!
//! # Threat model
//!
//! Semi-honest, assuming dual LPN over GF(2) with regular noise for the ExConv code
//! (parameters above), AES as a random permutation (GGM expansion), and the random OTs the
//! caller supplies. The sender learns nothing about the points (hidden by the OTs), hence
//! nothing about `c`. The receiver learns `v` off the points and `v_{p_j} ⊕ Δ` at them, nothing
//! about `Δ`; `c = H·e` is pseudorandom under the LPN assumption. The outputs are *correlated*
//! OTs with one global `Δ`: random OTs follow by hashing `q_i`, `q_i ⊕ Δ` and `k_i` with a
//! tweakable correlation-robust hash (the caller's job, with tweaks that never repeat under
//! one `Δ`). `Δ` must be uniform and secret. Each OT is used once. No check against a
//! malicious party (a malicious receiver can pick non-regular noise, a malicious sender
//! inconsistent trees or different `Δ` per tree).
//!
//! # Bounds
//!
//! `1 ..= COT_MAX` correlations, checked before any traffic. The receiver holds `N` blocks and
//! `N` bytes while compressing, the sender `N` blocks.
//!
//! # Message flow
//!
//! Sender → receiver: [`crate::wire::KIND_PPRF_LEVELS`] (`2 · t · depth` blocks) and
//! [`crate::wire::KIND_PPRF_CORRECTIONS`] (`t` blocks); nothing the other way. [`send`] and
//! [`receive`] first run base OT (128, the COT sender as base-OT receiver) and the IKNP
//! extension of the PPRF's OTs ([`crate::wire::KIND_IKNP_MATRIX`], receiver → sender).

use std::fmt;

use rand_core::CryptoRngCore;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::noisy_vole::{random_block, wipe};
use crate::pprf;
pub use crate::silent_vole::SilentVoleParams;
use crate::silent_vole::uniform_below;
use crate::{Block, OtError};

/// Most correlations of one silent COT.
pub const COT_MAX: usize = crate::silent_vole::VOLE_MAX;

/// The COT sender's output: `Δ` and `q`, with `k_i = q_i ⊕ c_i·Δ` on the receiver's side.
/// Prints redacted; wiped on drop.
pub struct CotSenderOutput {
    /// The global key `Δ`.
    pub delta: Block,
    /// `q`, `n` blocks.
    pub q: Vec<Block>,
}

impl fmt::Debug for CotSenderOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotSenderOutput")
            .field("delta", &"<redacted>")
            .field("q", &format_args!("<{} blocks redacted>", self.q.len()))
            .finish()
    }
}

impl Drop for CotSenderOutput {
    fn drop(&mut self) {
        self.delta = Block::ZERO;
        wipe(&mut self.q);
    }
}

/// The COT receiver's output: choice bits `c` (one byte each, 0 or 1) and keys `k`, with
/// `k_i = q_i ⊕ c_i·Δ`. Prints redacted; wiped on drop.
pub struct CotReceiverOutput {
    /// `c`, `n` bytes, each 0 or 1.
    pub choices: Vec<u8>,
    /// `k`, `n` blocks.
    pub k: Vec<Block>,
}

impl fmt::Debug for CotReceiverOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotReceiverOutput")
            .field(
                "choices",
                &format_args!("<{} bits redacted>", self.choices.len()),
            )
            .field("k", &format_args!("<{} blocks redacted>", self.k.len()))
            .finish()
    }
}

impl Drop for CotReceiverOutput {
    fn drop(&mut self) {
        self.choices.zeroize();
        wipe(&mut self.k);
    }
}

/// The receiver's regular noise: one point per PPRF tree. Drawn before the OTs exist, since
/// the PPRF OTs' choice bits encode the points. Prints redacted; wiped on drop.
pub struct CotNoise {
    params: SilentVoleParams,
    points: Vec<usize>,
    choice_bits: Vec<bool>,
}

impl CotNoise {
    /// The choice bits of the [`pprf::PprfConfig::ot_count`] PPRF OTs the receiver must obtain
    /// (as OT receiver) for this noise, in the order [`receive_with`] consumes them.
    pub fn choice_bits(&self) -> &[bool] {
        &self.choice_bits
    }
}

impl fmt::Debug for CotNoise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CotNoise")
            .field("n", &self.params.n())
            .field("points", &"<redacted>")
            .finish()
    }
}

impl Drop for CotNoise {
    fn drop(&mut self) {
        self.points.zeroize();
        self.choice_bits.zeroize();
    }
}

/// Draws the receiver's regular noise for `params`: a uniform point in each tree.
pub fn sample_noise<R: CryptoRngCore + ?Sized>(params: &SilentVoleParams, rng: &mut R) -> CotNoise {
    let cfg = params.pprf();
    let points: Vec<usize> = (0..cfg.trees())
        .map(|_| uniform_below(rng, cfg.domain()))
        .collect();
    let choice_bits = cfg.choice_bits_unchecked(&points);
    CotNoise {
        params: *params,
        points,
        choice_bits,
    }
}

/// Silent COT sender: `delta` is the caller's uniform secret `Δ` (it may serve many calls:
/// every output shares it); `pprf_ots` are [`pprf::PprfConfig::ot_count`] OT-sender pairs
/// (this party is OT sender). `rng` draws the GGM roots. Sends, never receives.
///
/// # Errors
/// [`OtError::InvalidArgument`] if the OT count does not match `params` (before any traffic);
/// a link error.
pub async fn send_with<R: CryptoRngCore + Send>(
    link: &dyn Link,
    params: &SilentVoleParams,
    delta: Block,
    pprf_ots: &[[Block; 2]],
    rng: &mut R,
) -> Result<CotSenderOutput, OtError> {
    check_ot_count(params, pprf_ots.len())?;
    let corrections = vec![delta; params.noise_weight()];
    let mut v = pprf::send(link, params.pprf(), pprf_ots, &corrections, rng).await?;
    let params = *params;
    let q = crate::offload(move || {
        params.compress(&mut v);
        v
    })
    .await;
    Ok(CotSenderOutput { delta, q })
}

/// Silent COT receiver, for `noise` drawn by [`sample_noise`] with the same `params`;
/// `pprf_ot_keys` are the OT-receiver outputs for [`CotNoise::choice_bits`]. Receives, never
/// sends.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `noise` was drawn for other parameters or the OT count does
/// not match (before any traffic); [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad
/// or abort frame; a link error.
pub async fn receive_with(
    link: &dyn Link,
    params: &SilentVoleParams,
    noise: CotNoise,
    pprf_ot_keys: &[Block],
) -> Result<CotReceiverOutput, OtError> {
    if noise.params.pprf() != params.pprf() || noise.params.n() != params.n() {
        return Err(OtError::InvalidArgument(
            "the receiver's noise was drawn for other parameters".into(),
        ));
    }
    check_ot_count(params, pprf_ot_keys.len())?;
    let zeros = vec![Block::ZERO; params.noise_weight()];
    let mut w = pprf::receive(link, params.pprf(), &noise.points, pprf_ot_keys, &zeros).await?;
    let domain = params.pprf().domain();
    let mut e = vec![0u8; params.pprf().size()];
    for (j, p) in noise.points.iter().enumerate() {
        e[j * domain + p] = 1;
    }
    drop(noise);
    let params = *params;
    let (e, w) = crate::offload(move || {
        rayon::join(|| params.compress_bits(&mut e), || params.compress(&mut w));
        (e, w)
    })
    .await;
    Ok(CotReceiverOutput { choices: e, k: w })
}

fn check_ot_count(params: &SilentVoleParams, ots: usize) -> Result<(), OtError> {
    if ots != params.pprf().ot_count() {
        return Err(OtError::InvalidArgument(format!(
            "silent COT needs {} PPRF OTs, got {ots}",
            params.pprf().ot_count()
        )));
    }
    Ok(())
}

/// The COT sender's side of `n` correlations, the whole stack: 128 base OTs (as base-OT
/// receiver, for IKNP), the PPRF's OTs by IKNP extension (as OT sender), a fresh uniform `Δ`,
/// then [`send_with`].
///
/// # Errors
/// [`OtError::InvalidArgument`] if `n` is 0 or above [`COT_MAX`] (before any traffic);
/// [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad or abort frame; a link error.
pub async fn send<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    n: usize,
) -> Result<CotSenderOutput, OtError> {
    let params = SilentVoleParams::new(n)?;
    let mut iknp = crate::iknp::IknpSender::setup(link, rng).await?;
    let mut pprf_ots = iknp.send(link, params.pprf().ot_count()).await?;
    let delta = random_block(rng);
    let out = send_with(link, &params, delta, &pprf_ots, rng).await;
    for pair in &mut pprf_ots {
        wipe(pair);
    }
    out
}

/// The COT receiver's side of `n` correlations, the whole stack: 128 base OTs (as base-OT
/// sender), the noise ([`sample_noise`]), the PPRF's OTs by IKNP extension with the noise's
/// choice bits (as OT receiver), then [`receive_with`].
///
/// # Errors
/// As [`send`].
pub async fn receive<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    n: usize,
) -> Result<CotReceiverOutput, OtError> {
    let params = SilentVoleParams::new(n)?;
    let mut iknp = crate::iknp::IknpReceiver::setup(link, rng).await?;
    let noise = sample_noise(&params, rng);
    let mut keys = iknp.receive(link, noise.choice_bits()).await?;
    let out = receive_with(link, &params, noise, &keys).await;
    wipe(&mut keys);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use tessera_core::MemLink;

    use crate::noisy_vole::deal_ots;
    use crate::wire::{KIND_PPRF_CORRECTIONS, KIND_PPRF_LEVELS};

    /// Both sides of a silent COT of `n`, the PPRF's OTs from the test dealer.
    async fn run(n: usize, seed: u64) -> (CotSenderOutput, CotReceiverOutput) {
        let params = SilentVoleParams::new(n).expect("params");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let delta = random_block(&mut rng);
        let noise = sample_noise(&params, &mut rng);
        let (pairs, keys) = deal_ots(&mut rng, noise.choice_bits());
        let (ls, lr) = MemLink::pair();
        let mut sender_rng = rng.clone();
        let (s, r) = tokio::join!(
            send_with(&ls, &params, delta, &pairs, &mut sender_rng),
            receive_with(&lr, &params, noise, &keys)
        );
        (s.expect("sender"), r.expect("receiver"))
    }

    /// The definition: `k_i = q_i ⊕ c_i·Δ`, bits that are bits, and choice bits that are not
    /// all one value (they are about half ones for large `n`).
    fn check(s: &CotSenderOutput, r: &CotReceiverOutput, n: usize) {
        assert_eq!((s.q.len(), r.k.len(), r.choices.len()), (n, n, n));
        for i in 0..n {
            let c = r.choices[i];
            assert!(c <= 1, "n {n}, i {i}: choice byte {c}");
            let expect = if c == 1 { s.q[i] ^ s.delta } else { s.q[i] };
            assert_eq!(r.k[i], expect, "n {n}, i {i}");
        }
        if n >= 1000 {
            let ones = r.choices.iter().filter(|&&c| c == 1).count();
            assert!(ones * 10 > n * 4 && ones * 10 < n * 6, "{ones} ones of {n}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn correlation_holds_on_tiny_random_and_large_sizes() {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let mut sizes = vec![1, 2, 63, 64, 65, 4095, 4096, 4097];
        sizes.extend((0..3).map(|_| 1 + (rng.next_u32() as usize % 300_000)));
        sizes.push((1 << 20) + 3);
        for (i, n) in sizes.into_iter().enumerate() {
            let (s, r) = run(n, 100 + i as u64).await;
            check(&s, &r, n);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_whole_stack_over_a_link_gives_the_correlation() {
        for (n, seed) in [(1, 7u64), (65, 8), (70_000, 9)] {
            let (ls, lr) = MemLink::pair();
            let mut s_rng = ChaCha20Rng::seed_from_u64(seed);
            let mut r_rng = ChaCha20Rng::seed_from_u64(seed ^ 0xffff);
            let (s, r) = tokio::join!(send(&ls, &mut s_rng, n), receive(&lr, &mut r_rng, n));
            check(&s.expect("sender"), &r.expect("receiver"), n);
        }
    }

    #[tokio::test]
    async fn runs_are_independent() {
        let (s1, r1) = run(1000, 1).await;
        let (s2, r2) = run(1000, 2).await;
        assert_ne!(s1.delta, s2.delta);
        assert!(s1.q.iter().zip(&s2.q).all(|(x, y)| x != y));
        assert_ne!(r1.choices, r2.choices);
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_before_any_traffic() {
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
        )
        .await;
        assert!(matches!(r, Err(OtError::InvalidArgument(_))), "{r:?}");
        let r = receive_with(
            &lr,
            &params,
            sample_noise(&params, &mut rng),
            &vec![Block::ZERO; ots + 1],
        )
        .await;
        assert!(matches!(r, Err(OtError::InvalidArgument(_))), "{r:?}");
        let s = send_with(
            &ls,
            &params,
            Block::ONES,
            &vec![[Block::ZERO; 2]; ots - 1],
            &mut rng,
        )
        .await;
        assert!(matches!(s, Err(OtError::InvalidArgument(_))), "{s:?}");
        for n in [0, COT_MAX + 1] {
            assert!(matches!(
                send(&ls, &mut rng, n).await,
                Err(OtError::InvalidArgument(_))
            ));
            assert!(matches!(
                receive(&lr, &mut rng, n).await,
                Err(OtError::InvalidArgument(_))
            ));
        }
        assert_eq!(ls.stats().frames_sent + lr.stats().frames_sent, 0);
    }

    /// A hostile sender: truncated, oversized and wrong-kind frames give typed errors.
    #[tokio::test]
    async fn a_hostile_sender_gets_a_typed_error() {
        let params = SilentVoleParams::new(100).expect("params");
        let levels = 2 * params.pprf().ot_count();
        let frame = |kind: u8, count: u32, blocks: usize| {
            let mut f = vec![kind];
            f.extend_from_slice(&count.to_le_bytes());
            f.extend(std::iter::repeat_n(0u8, 16 * blocks));
            Bytes::from(f)
        };
        let cases = [
            vec![frame(KIND_PPRF_LEVELS, levels as u32, levels - 1)],
            vec![frame(KIND_PPRF_LEVELS, levels as u32 + 1, levels + 1)],
            vec![frame(KIND_PPRF_CORRECTIONS, levels as u32, levels)],
            vec![
                frame(KIND_PPRF_LEVELS, levels as u32, levels),
                frame(KIND_PPRF_CORRECTIONS, 250, 250),
            ],
            vec![Bytes::from_static(&[KIND_PPRF_LEVELS, 1])],
            vec![Bytes::new()],
        ];
        for frames in cases {
            let (ls, lr) = MemLink::pair();
            for f in frames {
                ls.send(f).await.expect("send");
            }
            let mut rng = ChaCha20Rng::seed_from_u64(5);
            let noise = sample_noise(&params, &mut rng);
            let keys = vec![Block::ZERO; params.pprf().ot_count()];
            let r = receive_with(&lr, &params, noise, &keys).await;
            assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");
        }
    }

    #[tokio::test]
    async fn outputs_print_redacted() {
        let (s, r) = run(3, 77).await;
        let printed = format!("{s:?} {r:?}");
        assert!(printed.contains("redacted"));
        for secret in [s.delta, s.q[0], r.k[0]] {
            assert!(!printed.contains(&format!("{secret:?}")));
        }
        let noise = sample_noise(
            &SilentVoleParams::new(10).expect("params"),
            &mut ChaCha20Rng::seed_from_u64(1),
        );
        assert!(format!("{noise:?}").contains("redacted"));
    }
}
