//! VOLE-based PSI after Raghuraman–Rindal, "Blazing Fast PSI from Improved OKVS and Subfield
//! VOLE" (CCS 2022, eprint 2022/320, §3 and Figure 4), semi-honest variant; [`Protocol::Rr22`].
//!
//! # Construction
//!
//! Let `n_r` and `n_s` be the receiver's and the sender's distinct set sizes. Each party hashes
//! every distinct item `x` with BLAKE3 in derive-key mode ([`ITEM_DIGEST_CONTEXT`]) to 32 bytes,
//! split into an OKVS key `k(x)` and a value `h(x)` in GF(2^128).
//!
//! 1. Both: `Hello` ([`Protocol::Rr22`], role, mode, distinct set size). If either set is
//!    empty, steps 2–4 are skipped and the intersection is empty.
//! 2. Both: `m` VOLE correlations over GF(2^128) ([`tessera_ot::silent_vole`]), `m` = the
//!    length of a random band matrix OKVS ([`crate::okvs::RbOkvs`]) for `n_r` keys: the sender
//!    gets `Δ` and `B`, the receiver `A` and `C` with `C = B + A·Δ`.
//! 3. Receiver (concurrently with step 2): `P = Encode({k(y) ↦ h(y)})` under a fresh public
//!    OKVS seed (a new seed if the band system is singular, probability ≤ 2^-40). It sends the
//!    seed and `A' = A + P` (`m + 1` blocks, kind `0x06`).
//! 4. Sender: `K = B + A'·Δ` (so `K = C + P·Δ`). For each own item `x`:
//!    `F(x) = H(Decode(K, k(x)) + Δ·h(x))`, where `H` is the fixed-key AES correlation-robust
//!    hash of cryprot-core. For `y` in the receiver's set `Decode(P, k(y)) = h(y)`, so
//!    `F(y) = H(Decode(C, k(y)))`, which the receiver computes alone.
//! 5. Sender: shuffles the `F(x)`, encrypts each with the release key (AES-128 as a
//!    permutation, as ECDH does), sends them (`n_s` values of 16 bytes, kind `0x03`), has the
//!    delivery recorded ([`crate::DeliveryGate`]), sends `Release` with the key, and waits for
//!    the receiver's `Done`.
//! 6. Receiver: decrypts (or encrypts its own values, whichever set is smaller), and reports its
//!    items whose `F(y)` is among the sender's values.
//!
//! # PSI with payload
//!
//! [`crate::run_sender_with_payload`] / [`crate::run_receiver_with_payload`]: the sender also
//! has a payload (bytes, at most [`crate::PAYLOAD_BYTES_MAX`]) per item, which the receiver
//! gets for the common keys only. Let `u(x) = Decode(K, k(x)) + Δ·h(x)`, so `F(x) = H(u(x))`.
//! After its values (step 5) the sender sends the width `w = 4 + max payload length` (kind
//! `0x07`) and, in the same shuffled order as the values, each item's payload sealed as
//! `(u32 length ‖ payload ‖ zeros) XOR pad(x)` with `pad(x)` = BLAKE3-XOF under
//! [`PAYLOAD_PAD_CONTEXT`] of (release key ‖ `u(x)`), `w` bytes (kind `0x08`); then the delivery
//! point and `Release` as before. The receiver knows `u(y) = Decode(C, k(y))` for its own
//! items, so after the release it opens the payload at the position of each of its matched
//! values. For a sender item outside the intersection `u(x)` is pseudo-random to the receiver
//! (as `F(x)` is) and, with BLAKE3 modelled as a random oracle independent of `H`, so is its
//! pad: the receiver learns the payloads of the common keys, every payload's padded width `w`
//! (so the longest payload's length) and nothing else of the others. Before the release every
//! pad also depends on a key it does not have, so the payloads, like the values, tell it
//! nothing until the delivery is recorded. The sender learns nothing more than without a
//! payload. Bytes on the wire: the sender's `n_s · w` more.
//!
//! # Threat model and what each party learns
//!
//! * **Semi-honest** parties, as in the paper's Theorem 3.3 (two parties, no third party whose
//!   non-collusion is assumed). Not secure against a malicious party: a malicious receiver can
//!   encode more than `n_r` keys' worth of chosen values in `P` (the paper's malicious variant
//!   bounds this; not implemented), and a malicious sender can make the receiver's output wrong
//!   (send values for keys it does not hold, or drop some). Neither learns more than below from
//!   a semi-honest peer; malformed, truncated, oversize and unexpected frames are typed errors.
//! * **Both**: the protocol, version, mode and the other's distinct set size (duplicates are
//!   removed locally first).
//! * **Receiver**: which of its distinct keys are common ([`crate::Mode::Intersection`]; for
//!   that reason `rr22` refuses [`crate::Mode::SizeOnly`]). The sender's values arrive shuffled
//!   and, for items outside the intersection, are `H` of a value that involves the unknown `Δ`:
//!   pseudo-random under the VOLE's security (dual LPN for the expand-convolute code, see
//!   [`tessera_ot::silent_vole`]) with `H` modelled as a random oracle. Before `Release` they
//!   are encrypted under a key it does not have, so it learns nothing, not even a bound on the
//!   intersection's size, until the delivery is recorded.
//! * **Sender**: only `n_r`. `A'` is `P` masked by the VOLE's `A`, pseudo-random to the
//!   sender; the OKVS seed is public randomness chosen by the receiver.
//! * **Parameters**: computational security 128 bits (AES-128, GF(2^128), base OTs over
//!   ristretto255, LPN parameters of the silent VOLE); statistical security 40 bits (OKVS
//!   encoding failure ≤ 2^-40 per attempt, and then only a retry). False positives: values are
//!   128 bits, so a given pair of distinct items collides with probability 2^-128 and the whole
//!   run with at most `n_r · n_s / 2^128` (below 2^-75 at the 5·10^7-row bound).
//!
//! # Bounds and performance
//!
//! * Own set: at most [`crate::SET_ITEMS_MAX`] items of at most [`crate::ITEM_BYTES_MAX`] bytes;
//!   the peer's announced size is checked against the same bound before anything is allocated
//!   for it.
//! * Bytes on the wire: receiver `16·(m + 1)` (about `16 · 1.1 · n_r`) plus the VOLE's
//!   receiver messages; sender `16 · n_s` plus the VOLE's sender messages.
//! * Hashing, the OKVS encoding and decoding, `K` and the `F(x)` run on the rayon pool inside
//!   `spawn_blocking`; the receiver's encoding runs while the VOLE is being generated, and the
//!   sender hashes its items meanwhile.

use std::sync::Arc;

use cryprot_core::aes_hash::FIXED_KEY_HASH;
use rand::seq::SliceRandom;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use tessera_ot::{Block, OtError, silent_vole};

use crate::common::{
    Encrypted, Release, check_input, compute, derived_rng, distinct_indices, exchange_hello,
    peer_set_size, record_release_and_finish, release_and_match, to_value,
};
use crate::crypto::{FlatItems, ReleaseKey};
use crate::okvs::{OkvsError, RbOkvs};
use crate::pending::{Pending, PendingState, Received};
use crate::wire::{KIND_OKVS, KIND_PAYLOAD, KIND_PAYLOAD_WIDTH, KIND_VALUES, abort_reason};
use crate::{
    DEFAULT_BATCH_ITEMS, Mode, PAYLOAD_BYTES_MAX, PAYLOAD_TOTAL_BYTES_MAX, PHASE_EXCHANGE,
    PHASE_HASH, PHASE_MATCH, PHASE_OKVS, PHASE_VOLE, Progress, Protocol, PsiConfig, PsiError,
    ReceiverOutput, Role, SenderOutput,
};

/// BLAKE3 derive-key context of the item digest (key and value halves).
pub const ITEM_DIGEST_CONTEXT: &str = "tessera-psi rr22 v1 item digest";
/// Bytes of one OPRF value on the wire.
pub const VALUE_BYTES: usize = 16;
/// BLAKE3 derive-key context of a payload's pad (PSI with payload).
pub const PAYLOAD_PAD_CONTEXT: &str = "tessera-psi rr22 v1 payload pad";
/// Bytes of the length prefix of a sealed payload.
const PAYLOAD_LEN_BYTES: usize = 4;
/// Encoding attempts (each with a fresh seed) before the receiver gives up; each fails with
/// probability at most 2^-40.
const ENCODE_ATTEMPTS: usize = 4;

/// Each distinct item's (OKVS key, value) pair.
fn digests(items: &FlatItems) -> (Vec<Block>, Vec<Block>) {
    let hasher = blake3::Hasher::new_derive_key(ITEM_DIGEST_CONTEXT);
    (0..items.len())
        .into_par_iter()
        .map(|i| {
            let d = hasher.clone().update(items.get(i)).finalize();
            let bytes = d.as_bytes();
            let mut key = [0u8; 16];
            let mut value = [0u8; 16];
            key.copy_from_slice(&bytes[..16]);
            value.copy_from_slice(&bytes[16..]);
            (Block::new(key), Block::new(value))
        })
        .unzip()
}

/// The item hashing of both roles, for benchmarks (`benches/rr22.rs`): each item's OKVS key and
/// value ([`ITEM_DIGEST_CONTEXT`]), in order. Not part of the protocol API.
#[doc(hidden)]
pub fn bench_item_digests(items: &[Vec<u8>]) -> (Vec<Block>, Vec<Block>) {
    let indices: Vec<usize> = (0..items.len()).collect();
    digests(&FlatItems::gather(items, &indices))
}

/// The OKVS for the receiver's `n_r` keys under `seed`.
fn okvs(n_r: usize, seed: Block) -> Result<RbOkvs, PsiError> {
    RbOkvs::new(n_r, seed).map_err(|e| PsiError::InvalidConfig(format!("OKVS: {e}")))
}

fn vole_error(e: OtError) -> PsiError {
    match e {
        OtError::Link(l) => PsiError::Link(l),
        OtError::Protocol(p) => PsiError::Protocol(format!("VOLE: {p}")),
        OtError::PeerAborted(code) => PsiError::PeerAborted {
            reason: abort_reason(code),
        },
        OtError::InvalidArgument(a) => PsiError::InvalidConfig(format!("VOLE: {a}")),
    }
}

fn okvs_error(e: OkvsError) -> PsiError {
    PsiError::Internal(format!("OKVS: {e}"))
}

fn to_u128(b: Block) -> u128 {
    u128::from_le_bytes(*b.as_bytes())
}

pub(crate) async fn receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    want_payload: bool,
    defer: bool,
) -> Result<Received, PsiError> {
    check_config(cfg)?;
    check_input(items)?;
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(
        link,
        Protocol::Rr22,
        Role::Receiver,
        cfg.mode,
        own_size,
        DEFAULT_BATCH_ITEMS,
    )
    .await?;
    let peer_size = peer_set_size(&peer)?;
    let flat = FlatItems::gather(items, &distinct);
    progress.report(PHASE_HASH, 0, own_size as u64);
    let (keys, values) = compute(move || digests(&flat)).await?;
    progress.report(PHASE_HASH, own_size as u64, own_size as u64);
    let keys = Arc::new(keys);

    let (pre, ours, theirs): (Vec<Block>, Vec<u128>, Vec<u128>) = if own_size == 0 || peer_size == 0
    {
        (Vec::new(), Vec::new(), recv_values(link, 0).await?)
    } else {
        // The encoding (under fresh seeds until one works) runs while the VOLE is generated.
        let mut seeds = [[0u8; 16]; ENCODE_ATTEMPTS];
        for s in &mut seeds {
            rng.fill_bytes(s);
        }
        let m = okvs(own_size, Block::new(seeds[0]))?.size();
        let enc_keys = Arc::clone(&keys);
        let encode = compute(move || {
            let mut last = None;
            for seed in seeds.map(Block::new) {
                let table = okvs(own_size, seed)?;
                match table.encode(&enc_keys, &values) {
                    Ok(p) => return Ok((table, seed, p)),
                    Err(e @ OkvsError::EncodingFailed) => last = Some(e),
                    Err(e) => return Err(okvs_error(e)),
                }
            }
            Err(last.map_or_else(
                || PsiError::Internal("OKVS: no encoding attempt".into()),
                okvs_error,
            ))
        });
        progress.report(PHASE_VOLE, 0, m as u64);
        let vole = async { silent_vole::receive(link, rng, m).await.map_err(vole_error) };
        let (encoded, vole) = tokio::try_join!(async { encode.await? }, vole)?;
        progress.report(PHASE_VOLE, m as u64, m as u64);
        let (table, seed, p) = encoded;
        let silent_vole::VoleReceiverOutput { a, c } = vole;
        let masked = compute(move || {
            let mut out = Vec::with_capacity(m + 1);
            out.push(seed);
            out.extend(p.iter().zip(&a).map(|(p, a)| *p ^ *a));
            out
        })
        .await?;
        tessera_ot::wire::send_blocks(link, KIND_OKVS, &masked)
            .await
            .map_err(vole_error)?;
        progress.report(PHASE_OKVS, m as u64, m as u64);
        // Our own values are computed while the sender's arrive; with a payload, the unhashed
        // values too (each matched one derives its payload's pad).
        let own_values = compute(move || {
            let mut decoded = table.decode(&c, &keys).map_err(okvs_error)?;
            let pre = if want_payload {
                decoded.clone()
            } else {
                Vec::new()
            };
            FIXED_KEY_HASH.cr_hash_slice_mut(&mut decoded);
            Ok::<_, PsiError>((pre, decoded.into_iter().map(to_u128).collect()))
        });
        let ((pre, ours), theirs) =
            tokio::try_join!(async { own_values.await? }, recv_values(link, peer_size))?;
        progress.report(PHASE_EXCHANGE, peer_size as u64, peer_size as u64);
        (pre, ours, theirs)
    };
    if want_payload {
        let (width, sealed) = recv_payload(link, theirs.len()).await?;
        let m = PayloadMatch {
            pre,
            ours,
            theirs,
            width,
            sealed,
            distinct,
            peer_size,
        };
        if defer {
            return Pending::at_release(link, peer_size, PendingState::Payload(m)).await;
        }
        return release_and_match_payload(link, m, progress)
            .await
            .map(Received::Done);
    }
    if defer {
        return Pending::at_release(
            link,
            peer_size,
            PendingState::Plain {
                ours,
                theirs,
                encrypted: Encrypted::Theirs,
                distinct,
                mode: Mode::Intersection,
            },
        )
        .await;
    }
    release_and_match(
        link,
        ours,
        theirs,
        Encrypted::Theirs,
        distinct,
        Mode::Intersection,
        peer_size,
        progress,
    )
    .await
    .map(Received::Done)
}

pub(crate) async fn sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    payloads: Option<&[Vec<u8>]>,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    release_policy: Release<'_>,
) -> Result<SenderOutput, PsiError> {
    check_config(cfg)?;
    check_input(items)?;
    if let Some(p) = payloads {
        check_payloads(items, p)?;
    }
    let release = Arc::new(ReleaseKey::random(rng));
    let mut shuffle = derived_rng(rng);
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(
        link,
        Protocol::Rr22,
        Role::Sender,
        cfg.mode,
        own_size,
        DEFAULT_BATCH_ITEMS,
    )
    .await?;
    let peer_size = peer_set_size(&peer)?;

    // The payload of each distinct item (its first occurrence's), and the padded width.
    let payload: Option<(Vec<Vec<u8>>, usize)> = payloads.map(|p| {
        let own: Vec<Vec<u8>> = distinct.iter().map(|&i| p[i].clone()).collect();
        let width = PAYLOAD_LEN_BYTES + own.iter().map(Vec::len).max().unwrap_or(0);
        (own, width)
    });
    let (values, sealed): (Vec<u128>, Vec<u8>) = if own_size == 0 || peer_size == 0 {
        (Vec::new(), Vec::new())
    } else {
        let m = okvs(peer_size, Block::ZERO)?.size();
        let flat = FlatItems::gather(items, &distinct);
        let hashing = async {
            progress.report(PHASE_HASH, 0, own_size as u64);
            let d = compute(move || digests(&flat)).await?;
            progress.report(PHASE_HASH, own_size as u64, own_size as u64);
            Ok::<_, PsiError>(d)
        };
        progress.report(PHASE_VOLE, 0, m as u64);
        let vole = async { silent_vole::send(link, rng, m).await.map_err(vole_error) };
        let ((keys, item_values), vole) = tokio::try_join!(hashing, vole)?;
        progress.report(PHASE_VOLE, m as u64, m as u64);
        let masked = tessera_ot::wire::recv_blocks(link, KIND_OKVS, m + 1)
            .await
            .map_err(vole_error)?;
        let release = Arc::clone(&release);
        let payload = payload.clone();
        let out = compute(move || {
            let silent_vole::VoleSenderOutput { delta, b } = vole;
            let (seed, a_masked) = masked
                .split_first()
                .ok_or_else(|| PsiError::Protocol("empty OKVS message".into()))?;
            let table = okvs(peer_size, *seed)?;
            let k: Vec<Block> = b
                .par_iter()
                .zip(a_masked.par_iter())
                .map(|(b, a)| *b ^ a.gf_mul(&delta))
                .collect();
            let mut out = table.decode(&k, &keys).map_err(okvs_error)?;
            out.par_iter_mut()
                .zip(item_values.par_iter())
                .for_each(|(o, v)| *o ^= v.gf_mul(&delta));
            // With a payload, each item's payload is sealed under a pad derived from its
            // unhashed value and the release key, in the same shuffled order as the values.
            let pre = if payload.is_some() {
                out.clone()
            } else {
                Vec::new()
            };
            FIXED_KEY_HASH.cr_hash_slice_mut(&mut out);
            let mut order: Vec<usize> = (0..out.len()).collect();
            order.shuffle(&mut shuffle);
            let mut values: Vec<u128> = order.iter().map(|&i| to_u128(out[i])).collect();
            let sealed = match &payload {
                Some((own, width)) => seal_payloads(&release, &pre, own, &order, *width),
                None => Vec::new(),
            };
            release.apply(&mut values, true);
            Ok::<_, PsiError>((values, sealed))
        })
        .await??;
        progress.report(PHASE_OKVS, own_size as u64, own_size as u64);
        out
    };
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tessera_ot::wire::send_items(link, KIND_VALUES, VALUE_BYTES, &bytes)
        .await
        .map_err(vole_error)?;
    if let Some((_, width)) = &payload {
        let w = u32::try_from(*width)
            .map_err(|_| PsiError::Internal("payload width past u32".into()))?;
        tessera_ot::wire::send_items(link, KIND_PAYLOAD_WIDTH, 4, &w.to_le_bytes())
            .await
            .map_err(vole_error)?;
        tessera_ot::wire::send_items(link, KIND_PAYLOAD, *width, &sealed)
            .await
            .map_err(vole_error)?;
    }
    progress.report(PHASE_EXCHANGE, values.len() as u64, values.len() as u64);
    record_release_and_finish(link, release_policy, release, peer_size).await
}

/// `rr22` runs in intersection mode only.
fn check_config(cfg: &PsiConfig) -> Result<(), PsiError> {
    if cfg.protocol.supports(cfg.mode) {
        Ok(())
    } else {
        Err(PsiError::InvalidConfig(format!(
            "{} cannot run in {} mode: its receiver learns which keys are common (use ecdh)",
            Protocol::Rr22,
            cfg.mode
        )))
    }
}

/// Receives the sender's `count` encrypted values.
async fn recv_values(link: &dyn Link, count: usize) -> Result<Vec<u128>, PsiError> {
    let bytes = tessera_ot::wire::recv_items(link, KIND_VALUES, VALUE_BYTES, count)
        .await
        .map_err(vole_error)?;
    Ok(bytes.chunks_exact(VALUE_BYTES).map(to_value).collect())
}

/// Refuses payloads that do not pair with the items or exceed [`PAYLOAD_BYTES_MAX`].
fn check_payloads(items: &[Vec<u8>], payloads: &[Vec<u8>]) -> Result<(), PsiError> {
    if payloads.len() != items.len() {
        return Err(PsiError::InvalidConfig(format!(
            "{} payloads for {} items",
            payloads.len(),
            items.len()
        )));
    }
    if let Some(p) = payloads.iter().find(|p| p.len() > PAYLOAD_BYTES_MAX) {
        return Err(PsiError::TooLarge {
            what: "payload bytes",
            len: p.len() as u64,
            max: PAYLOAD_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// The pad of one item's payload: BLAKE3's XOF under [`PAYLOAD_PAD_CONTEXT`] over the release
/// key and the item's unhashed OPRF value `u` (`F(x) = H(u)`), `width` bytes.
fn pad(release: &[u8], u: &Block, width: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new_derive_key(PAYLOAD_PAD_CONTEXT);
    h.update(release);
    h.update(u.as_bytes());
    let mut out = vec![0u8; width];
    h.finalize_xof().fill(&mut out);
    out
}

/// The sender's sealed payloads, `width` bytes each, in the shuffled `order` of its values:
/// `(u32 length ‖ payload ‖ zeros) XOR pad(release, u)`.
fn seal_payloads(
    release: &ReleaseKey,
    pre: &[Block],
    own: &[Vec<u8>],
    order: &[usize],
    width: usize,
) -> Vec<u8> {
    let key = release.bytes();
    let mut sealed = vec![0u8; order.len() * width];
    sealed
        .par_chunks_mut(width)
        .zip(order.par_iter())
        .for_each(|(out, &i)| {
            let p = &own[i];
            out[..PAYLOAD_LEN_BYTES].copy_from_slice(&(p.len() as u32).to_le_bytes());
            out[PAYLOAD_LEN_BYTES..PAYLOAD_LEN_BYTES + p.len()].copy_from_slice(p);
            for (o, k) in out.iter_mut().zip(pad(key, &pre[i], width)) {
                *o ^= k;
            }
        });
    sealed
}

/// Receives the sender's payload width and its `peer_size` sealed payloads, each bound checked
/// before anything is allocated for them.
async fn recv_payload(link: &dyn Link, peer_size: usize) -> Result<(usize, Vec<u8>), PsiError> {
    let w = tessera_ot::wire::recv_items(link, KIND_PAYLOAD_WIDTH, 4, 1)
        .await
        .map_err(vole_error)?;
    let width = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
    if !(PAYLOAD_LEN_BYTES..=PAYLOAD_LEN_BYTES + PAYLOAD_BYTES_MAX).contains(&width) {
        return Err(PsiError::Protocol(format!(
            "payload width {width} outside {PAYLOAD_LEN_BYTES}..={}",
            PAYLOAD_LEN_BYTES + PAYLOAD_BYTES_MAX
        )));
    }
    let total = (peer_size as u64).saturating_mul(width as u64);
    if total > PAYLOAD_TOTAL_BYTES_MAX {
        return Err(PsiError::TooLarge {
            what: "payload total bytes",
            len: total,
            max: PAYLOAD_TOTAL_BYTES_MAX,
        });
    }
    let sealed = tessera_ot::wire::recv_items(link, KIND_PAYLOAD, width, peer_size)
        .await
        .map_err(vole_error)?;
    Ok((width, sealed))
}

/// What the receiver of a PSI with payload matches once the key is released.
pub(crate) struct PayloadMatch {
    /// Our unhashed values, per distinct item.
    pub(crate) pre: Vec<Block>,
    /// Our values `F(y)`, per distinct item.
    pub(crate) ours: Vec<u128>,
    /// The sender's values, encrypted under the release key, shuffled.
    pub(crate) theirs: Vec<u128>,
    /// The sealed payloads' width.
    pub(crate) width: usize,
    /// The sender's sealed payloads, in the order of `theirs`.
    pub(crate) sealed: Vec<u8>,
    /// Input index of each distinct item.
    pub(crate) distinct: Vec<usize>,
    pub(crate) peer_size: usize,
}

/// The receiver's end of a PSI with payload: takes `Release`, answers `Done`, and opens the
/// matched values' payloads ([`open_payloads`]).
async fn release_and_match_payload(
    link: &dyn Link,
    m: PayloadMatch,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let release = ReleaseKey::from_bytes(crate::common::recv_release(link).await?);
    let own_size = m.distinct.len() as u64;
    progress.report(PHASE_MATCH, 0, own_size);
    let out = compute(move || open_payloads(m, &release)).await??;
    progress.report(PHASE_MATCH, own_size, own_size);
    Ok(out)
}

/// Decrypts the sender's values under the released key, finds the sender's position of each
/// of our matched values and opens the payload there.
///
/// # Errors
/// A protocol error for a sealed payload whose length is past its width.
pub(crate) fn open_payloads(
    m: PayloadMatch,
    release: &ReleaseKey,
) -> Result<ReceiverOutput, PsiError> {
    let PayloadMatch {
        pre,
        ours,
        mut theirs,
        width,
        sealed,
        distinct,
        peer_size,
    } = m;
    release.apply(&mut theirs, false);
    let mut sorted: Vec<(u128, u32)> = theirs
        .into_iter()
        .enumerate()
        .map(|(j, v)| (v, j as u32))
        .collect();
    sorted.par_sort_unstable();
    let key = release.bytes();
    let found: Vec<(usize, Result<Vec<u8>, PsiError>)> = ours
        .par_iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let at = sorted.binary_search_by(|(w, _)| w.cmp(v)).ok()?;
            let j = sorted.get(at)?.1 as usize;
            let cell = sealed.get(j * width..(j + 1) * width)?;
            let opened: Vec<u8> = cell
                .iter()
                .zip(pad(key, pre.get(i)?, width))
                .map(|(c, k)| c ^ k)
                .collect();
            let len = opened.get(..PAYLOAD_LEN_BYTES).map_or(usize::MAX, |l| {
                u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize
            });
            let body = opened
                .get(PAYLOAD_LEN_BYTES..PAYLOAD_LEN_BYTES.saturating_add(len))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    PsiError::Protocol("a sealed payload's length is past its width".into())
                });
            Some((*distinct.get(i)?, body))
        })
        .collect();
    let mut intersection = Vec::with_capacity(found.len());
    let mut payloads = Vec::with_capacity(found.len());
    for (i, body) in found {
        intersection.push(i);
        payloads.push(body?);
    }
    Ok(ReceiverOutput {
        intersection_size: intersection.len() as u64,
        sender_set_size: peer_size as u64,
        intersection: Some(intersection),
        payloads: Some(payloads),
    })
}
