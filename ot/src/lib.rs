//! Oblivious transfer (OT) and vector oblivious linear evaluation (VOLE) correlations between
//! two parties, written against [`tessera_core::Link`]: the building blocks of the `rr22` PSI
//! protocol (and later of MPC's Beaver triples).
//!
//! Layers, bottom up:
//!
//! * [`base`]: 1-out-of-2 random OT from Diffie–Hellman over ristretto255 (Chou–Orlandi,
//!   "The Simplest Protocol for Oblivious Transfer", LATINCRYPT 2015), a few hundred at a time.
//! * [`iknp`]: OT extension (Ishai–Kilian–Nissim–Petrank, CRYPTO 2003): many random OTs with
//!   chosen choice bits from 128 base OTs in the other direction.
//! * [`softspoken`]: OT extension with `128 / k` bits of traffic per OT instead of IKNP's 128
//!   (Roy, "SoftSpokenOT", CRYPTO 2022, semi-honest): IKNP's correlation from small-field VOLE
//!   over the punctured PRF below, then IKNP's hash. `tessera-mpc`'s dealer-free triples use it.
//! * [`noisy_vole`]: a few VOLE correlations over GF(2^128) from 128 OTs (Gilboa's
//!   multiplication, CRYPTO 1999).
//! * [`pprf`]: the regular punctured PRF (GGM trees) of Boyle et al., "Efficient Pseudorandom
//!   Correlation Generators: Silent OT Extension and More" (CRYPTO 2019).
//! * [`silent_vole`]: millions of VOLE correlations over GF(2^128) from a sparse (regular) noise
//!   vector compressed by the expand-convolute code of Raghuraman–Rindal–Tanguy, "Expand-Convolute
//!   Codes for Pseudorandom Correlation Generators from LPN" (CRYPTO 2023), dual-LPN form.
//! * [`silent_cot`]: millions of correlated OTs (`k_i = q_i ⊕ c_i·Δ`, binary choice bits) the
//!   same way with noise values fixed to one: the silent OT extension of Boyle et al.
//!   (CCS 2019) over the same code. A building block: `tessera-mpc`'s dealer-free triples use
//!   [`softspoken`] (silent-COT triples measured 5× slower than IKNP ones, the code's GF(2)
//!   encoding dominating).
//!
//! The VOLE correlation, as everywhere in this crate: the **VOLE sender** holds `Δ ∈ GF(2^128)`
//! and `B ∈ GF(2^128)^n`; the **VOLE receiver** holds `A, C ∈ GF(2^128)^n`; and
//! `C[i] = B[i] + A[i]·Δ` for every `i` (addition is XOR; multiplication is in GF(2^128) modulo
//! `x^128 + x^7 + x^2 + x + 1`, [`Block::gf_mul`]).
//!
//! Field arithmetic, the 128-bit block type, the AES-based PRG and hash, the bit transpose and
//! the expand-convolute code come from the CryProt crates (`cryprot-core`, `cryprot-codes`,
//! pinned exactly); their OT protocols speak only over their own QUIC transport, so the
//! protocols here are ours, over our `Link` (ARCHITECTURE.md records the decision).
//!
//! # Threat model
//!
//! Semi-honest: both parties follow the protocol; each may try to learn more from what it sees.
//! Each layer's module documents what each party learns. No layer is secure against a malicious
//! party (a malicious VOLE receiver, for example, can choose a non-regular noise vector).
//! Every frame from the peer is parsed with explicit bounds: a malformed, truncated, oversize or
//! unexpected frame is an [`OtError::Protocol`], never a panic.

pub mod base;
pub mod iknp;
pub mod noisy_vole;
pub mod pprf;
pub mod silent_cot;
pub mod silent_vole;
pub mod softspoken;
#[cfg(test)]
mod test_support;
pub mod wire;

pub use cryprot_core::Block;
/// The correlation-robust hashes of cryprot-core (`FIXED_KEY_HASH`: TMMO, fixed-key AES), for
/// callers that turn correlated OTs into random OTs.
pub use cryprot_core::aes_hash;

/// Overwrites `blocks` with zeros in a way the compiler keeps (key material).
pub fn wipe_blocks(blocks: &mut [Block]) {
    noisy_vole::wipe(blocks);
}
pub use tessera_core::LinkError;

/// Why an OT or VOLE sub-protocol failed.
#[derive(Debug, thiserror::Error)]
pub enum OtError {
    /// The link failed (peer gone, oversize frame, timeout, transport).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The peer sent something this protocol does not allow (wrong kind, wrong length, a value
    /// out of range). The text names what was expected; it carries no secret.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer sent an abort frame ([`wire::KIND_ABORT`]) with this reason code (the code's
    /// meaning belongs to the protocol that runs this one; 0 when the frame carried none).
    #[error("the peer aborted the protocol (reason code {0})")]
    PeerAborted(u8),
    /// A caller's argument is out of range (too many OTs, a zero length, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Runs CPU-bound `work` on rayon's global pool and resolves to its result, so that an async
/// protocol does not block its executor's thread (used by this crate and by `tessera-mpc`). A panic in `work` is resumed in the task
/// that awaits it, as if `work` had run inline. If the future is dropped, `work` still runs to
/// its end and its result is dropped.
pub async fn offload<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // The receiver may be gone (the protocol was dropped): then the result is dropped.
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    match rx.await {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The closure always sends (a panic is caught and sent): the sender cannot be dropped
        // unsent unless rayon itself fails to run it.
        Err(_) => std::panic::resume_unwind(Box::new("offloaded work was never run")),
    }
}

/// The crate's PRG: fills `out` with blocks `start, start + 1, …` of `key`'s stream,
/// `AES-128_key(c) ⊕ c` with the counter `c` as a little-endian block (fixed-key-style
/// correlation-robust hash of cryprot-core's `AesHash`, keyed with `key`). IKNP's column
/// expansion and the noisy VOLE's `G` use it.
pub(crate) fn aes_ctr(key: &Block, start: u128, out: &mut [Block]) {
    let aes = cryprot_core::aes_hash::AesHash::new(&(*key).into());
    for (c, block) in (start..).zip(out.iter_mut()) {
        *block = Block::new(c.to_le_bytes());
    }
    aes.cr_hash_slice_mut(out);
}

/// The 128 bits of a block, bit `i` = bit `i % 8` of byte `i / 8` (the order of
/// [`crate::iknp::IknpSender::new`]'s `s` and of the noisy VOLE's `Δ`).
pub(crate) fn block_bits(b: Block) -> impl Iterator<Item = bool> {
    let bytes = *b.as_bytes();
    (0..128).map(move |i| (bytes[i / 8] >> (i % 8)) & 1 == 1)
}
