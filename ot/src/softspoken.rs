//! OT extension with less traffic than IKNP: many random 1-out-of-2 OTs with chosen choice bits
//! from 128 base OTs, after Roy, "SoftSpokenOT: Quieter OT Extension from Small-Field Silent
//! VOLE in the Minicrypt Model" (CRYPTO 2022, ePrint 2022/192), semi-honest version: small-field
//! VOLE over `GF(2^k)` from a punctured PRF with `2^k` leaves, `128 / k` of them side by side
//! (the repetition-code subspace VOLE), which gives exactly IKNP's correlation; then the
//! random-OT hash of [`crate::iknp`].
//!
//! Entry points: [`SoftSpokenSender`] (the extension **sender**, two keys per OT) and
//! [`SoftSpokenReceiver`] (the extension **receiver**, who chooses a bit per OT), made once by
//! [`SoftSpokenSender::setup`] / [`SoftSpokenReceiver::setup`], then extending as often as
//! needed, each call giving fresh OTs. `k` (the field width, [`FIELD_BITS`]) trades traffic for
//! computation: the receiver sends `128 / k` bits per OT (IKNP: 128) and expands `2^k · 128 / k`
//! bits of PRG per OT (IKNP: 256); the sender expands `(2^k − 1) · 128 / k`.
//!
//! # Protocol
//!
//! Setup, for each of the `B = 128 / k` blocks `j`: a punctured PRF ([`crate::pprf`], one GGM
//! tree of `2^k` leaves per block, `k` base OTs per tree, 128 in all): the extension *receiver*
//! (the PPRF sender) holds all leaves `s_{j,x}`, `x ∈ {0,1}^k`; the extension *sender* draws
//! `Δ ∈ {0,1}^128` and, cutting it into `B` pieces `Δ_j` of `k` bits, learns every leaf except
//! `s_{j,Δ_j}`. (The PPRF's final correction block is masked with a random block the receiver
//! draws and forgets, so the sender's punctured leaf is garbage, never used.) The sender keeps
//! its leaves reindexed by `d = x ⊕ Δ_j` (`d = 0` is the missing leaf), so the extension touches
//! no memory at a place that depends on `Δ`.
//!
//! Extension of a chunk of `m` OTs (a multiple of 128, the choice column `r` padded with zeros)
//! with `R_{j,x} = G(s_{j,x})` the next `m` bits of each leaf's stream:
//!
//! 1. Receiver, for each block `j`: `u_j = ⊕_x R_{j,x}` and, for each bit `b < k`,
//!    `T_{j,b} = ⊕_{x : x_b = 1} R_{j,x}`; it sends `c_j = u_j ⊕ r`.
//! 2. Sender, for each `j` and `b`: `Q_{j,b} = ⊕_{d ≠ 0 : d_b = 1} R_{j, d ⊕ Δ_j} ⊕ Δ_{j,b}·c_j`,
//!    which is `T_{j,b} ⊕ Δ_{j,b}·r` (the missing leaf `x = Δ_j` is the one term whose
//!    coefficient `(x ⊕ Δ_j)_b` is zero for every `b`).
//! 3. Column `j·k + b` of the two 128 × `m` bit matrices is `T_{j,b}` (receiver) and `Q_{j,b}`
//!    (sender); transposed, row `i` is `t_i` and `q_i = t_i ⊕ r_i·Δ`: IKNP's correlation, and
//!    from here on everything is as in [`crate::iknp`] (steps 3 and 4 there: the tweaked hash
//!    `H(τ_i, ·)` with the OT's stream position as tweak; `m0_i = H(τ_i, q_i)`,
//!    `m1_i = H(τ_i, q_i ⊕ Δ)`, the receiver's `H(τ_i, t_i) = m_{r_i, i}`).
//!
//! `G` is [`crate::iknp`]'s AES-128 counter-mode stream keyed with the leaf, stateful across
//! calls (no stream bit is used twice); bit order and row layout as in [`crate::iknp`].
//!
//! # Threat model
//!
//! Semi-honest, as the rest of the crate, assuming the base OTs and the PPRF are secure (GGM
//! with fixed-key AES), `G` a PRG and `H` tweakable correlation robust:
//!
//! * the **sender** learns nothing about `r`: each `c_j` contains `R_{j,Δ_j}`, the stream of
//!   the one leaf it does not know;
//! * the **receiver** learns `m_{r_i, i}` and nothing about `m_{1−r_i, i}`: the PPRF hides
//!   which leaf of each block the sender misses, so `Δ` is uniform to it, and
//!   `H(τ_i, t_i ⊕ Δ)` needs `Δ`;
//! * both learn the number of OTs per call.
//!
//! Not secure against a malicious party (SoftSpoken's consistency check is not implemented).
//! Leaves and `Δ` are zeroized on drop and never printed in `Debug`; the intermediate columns
//! are zeroized when dropped. The AES round keys `G` expands from a leaf are not (as IKNP's).
//!
//! # Bounds and failures
//!
//! `k` must be one of [`FIELD_BITS`], else [`OtError::InvalidArgument`]. At most
//! [`crate::iknp::IKNP_OT_MAX`] OTs per call; chunks of [`crate::iknp::CHUNK_OTS`] OTs as
//! IKNP, whose working memory is a few matrices of one chunk (about 5 MiB) plus one column
//! (8 KiB) of scratch per rayon task, besides the output (32 bytes per OT at the sender, 16 at
//! the receiver; the `_into` variants write into the caller's buffer). The sender refuses a
//! correction frame that does not carry exactly the expected number of blocks
//! ([`OtError::Protocol`]). A call that fails (or whose future is dropped) leaves the two sides
//! out of step: the instance then refuses further calls with [`OtError::InvalidArgument`].
//!
//! # Message flow
//!
//! Setup: the base OTs ([`crate::base`], 128, the extension receiver as base sender), then the
//! PPRF's two frames from the receiver ([`crate::pprf`]: `2 · 128` level blocks and `128 / k`
//! correction blocks). Per call of `n > 0` OTs, for each chunk of `c` OTs (`m = c` rounded up
//! to a multiple of 128): receiver → sender, frames of kind [`KIND_SOFTSPOKEN`] with
//! `(128 / k) · m / 128` blocks in all: `c_0` (its `m / 128` blocks), then `c_1`, … Nothing flows
//! the other way, and nothing at all for `n = 0`.

use std::sync::Arc;

use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::iknp::{
    BASE_COUNT, CHUNK_OTS, Secret, advance, bit, check_call, chunk_lengths, hash_in_place,
    transpose,
};
use crate::noisy_vole::random_block;
use crate::pprf::{self, PprfConfig};
use crate::wire::{KIND_SOFTSPOKEN, recv_blocks, send_blocks};
use crate::{Block, OtError, base, offload};

/// The field widths `k` this implementation accepts (divisors of 128 up to 8).
pub const FIELD_BITS: [usize; 4] = [1, 2, 4, 8];

/// Checks `k` and returns the PPRF shape: `128 / k` trees of `2^k` leaves.
fn config(k: usize) -> Result<PprfConfig, OtError> {
    if !FIELD_BITS.contains(&k) {
        return Err(OtError::InvalidArgument(format!(
            "SoftSpoken field width {k} bits: one of {FIELD_BITS:?} expected"
        )));
    }
    PprfConfig::new(BASE_COUNT / k, 1 << k)
}

/// The `k` bits of `Δ` that block `j` covers, as a leaf index (bit `b` = bit `j·k + b`).
fn piece(delta: &Block, j: usize, k: usize) -> usize {
    (0..k).fold(0, |acc, b| acc | (usize::from(bit(delta, j * k + b)) << b))
}

/// `dst ⊕= src`, element by element.
fn xor_into(dst: &mut [Block], src: &[Block]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// The sender's secrets: `Δ` and its leaves, `leaves[j·2^k + d]` = `s_{j, d ⊕ Δ_j}` (zero at
/// `d = 0`).
struct SenderSecrets {
    delta: Secret<Block>,
    leaves: Secret<Block>,
}

/// The extension sender. Its `Debug` shows only `k` and how many OTs it has extended.
pub struct SoftSpokenSender {
    k: usize,
    secrets: Arc<SenderSecrets>,
    /// OTs extended so far, padding included: the stream position (÷ 128) and the next tweak.
    position: u64,
    /// A call failed or was dropped half-way; the two sides are out of step.
    broken: bool,
}

impl std::fmt::Debug for SoftSpokenSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftSpokenSender")
            .field("k", &self.k)
            .field("position", &self.position)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl SoftSpokenSender {
    /// Runs the base OTs (as base receiver) and the PPRF (as its receiver) over `link`, with
    /// `Δ` drawn from `rng`; the peer runs [`SoftSpokenReceiver::setup`] with the same `k`.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `k` is not one of [`FIELD_BITS`] (nothing sent); as
    /// [`base::receive`] and [`pprf::receive`].
    pub async fn setup<R: CryptoRngCore + Send>(
        link: &dyn Link,
        rng: &mut R,
        k: usize,
    ) -> Result<Self, OtError> {
        let cfg = config(k)?;
        let mut delta = Secret::<Block>::zeroed(1);
        rng.fill_bytes(bytemuck::cast_slice_mut(&mut delta.0));
        let d = delta.first().copied().unwrap_or_default();
        let mut points: Vec<usize> = (0..cfg.trees()).map(|j| piece(&d, j, k)).collect();
        let got = punctured_leaves(link, rng, &cfg, &points).await;
        let leaves = got.map(|l| reindex(&l, &points, 1 << k));
        points.zeroize();
        Ok(SoftSpokenSender {
            k,
            secrets: Arc::new(SenderSecrets {
                delta,
                leaves: leaves?,
            }),
            position: 0,
            broken: false,
        })
    }

    /// Extends: returns `count` random OT pairs `[m0, m1]`; the peer calls
    /// [`SoftSpokenReceiver::receive`] with `count` choice bits.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `count > IKNP_OT_MAX` (nothing received) or an earlier
    /// call failed; [`OtError::Protocol`] if the correction frames are malformed or of the
    /// wrong length; [`OtError::PeerAborted`] on an abort frame; a link error.
    ///
    /// [`IKNP_OT_MAX`]: crate::iknp::IKNP_OT_MAX
    pub async fn send(
        &mut self,
        link: &dyn Link,
        count: usize,
    ) -> Result<Vec<[Block; 2]>, OtError> {
        check_call(count, self.broken)?;
        self.send_into(link, vec![[Block::ZERO; 2]; count]).await
    }

    /// As [`SoftSpokenSender::send`] with `count = out.len()`, writing the pairs into `out` (a
    /// caller's buffer, reused across calls to spare the allocation) and handing it back.
    ///
    /// # Errors
    /// As [`SoftSpokenSender::send`].
    pub async fn send_into(
        &mut self,
        link: &dyn Link,
        mut out: Vec<[Block; 2]>,
    ) -> Result<Vec<[Block; 2]>, OtError> {
        let count = out.len();
        check_call(count, self.broken)?;
        self.broken = true;
        let mut start = 0;
        for len in chunk_lengths(count) {
            let padded = len.next_multiple_of(BASE_COUNT);
            let c = recv_blocks(link, KIND_SOFTSPOKEN, padded / self.k).await?;
            let secrets = Arc::clone(&self.secrets);
            let (position, k) = (self.position, self.k);
            out = offload(move || {
                if let Some(dst) = out.get_mut(start..start + len) {
                    sender_chunk(&secrets, k, position, &c, dst);
                }
                out
            })
            .await;
            start += len;
            self.position = advance(position, padded)?;
        }
        self.broken = false;
        Ok(out)
    }
}

/// The extension receiver. Its `Debug` shows only `k` and how many OTs it has extended.
pub struct SoftSpokenReceiver {
    k: usize,
    /// All leaves, `leaves[j·2^k + x]` = `s_{j,x}`.
    leaves: Arc<Secret<Block>>,
    /// As [`SoftSpokenSender`]'s.
    position: u64,
    broken: bool,
}

impl std::fmt::Debug for SoftSpokenReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftSpokenReceiver")
            .field("k", &self.k)
            .field("position", &self.position)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl SoftSpokenReceiver {
    /// Runs the base OTs (as base sender) and the PPRF (as its sender) over `link`; the peer
    /// runs [`SoftSpokenSender::setup`] with the same `k`.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `k` is not one of [`FIELD_BITS`] (nothing sent); as
    /// [`base::send`] and [`pprf::send`].
    pub async fn setup<R: CryptoRngCore + Send>(
        link: &dyn Link,
        rng: &mut R,
        k: usize,
    ) -> Result<Self, OtError> {
        let cfg = config(k)?;
        let mut ots = base::send(link, rng, cfg.ot_count()).await?;
        // Masks the PPRF's sum of leaves, so the sender's punctured leaf stays hidden.
        let mut masks: Vec<Block> = (0..cfg.trees()).map(|_| random_block(rng)).collect();
        let leaves = pprf::send(link, &cfg, &ots, &masks, rng).await;
        crate::wipe_blocks(&mut masks);
        for pair in &mut ots {
            crate::wipe_blocks(pair);
        }
        Ok(SoftSpokenReceiver {
            k,
            leaves: Arc::new(Secret(leaves?)),
            position: 0,
            broken: false,
        })
    }

    /// Extends with chosen choice bits: returns `m_{choices[i], i}` for each `i`. Must be paired
    /// with a [`SoftSpokenSender::send`] of `count = choices.len()` on the other side.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `choices.len() > IKNP_OT_MAX` (nothing sent) or an
    /// earlier call failed; a link error.
    ///
    /// [`IKNP_OT_MAX`]: crate::iknp::IKNP_OT_MAX
    pub async fn receive(
        &mut self,
        link: &dyn Link,
        choices: &[bool],
    ) -> Result<Vec<Block>, OtError> {
        let mut packed = vec![0u8; choices.len().div_ceil(8)];
        for (byte, bits) in packed.iter_mut().zip(choices.chunks(8)) {
            *byte = bits
                .iter()
                .enumerate()
                .fold(0, |acc, (k, &c)| acc | (u8::from(c) << k));
        }
        let got = self.receive_packed(link, &packed, choices.len()).await;
        packed.zeroize();
        got
    }

    /// As [`SoftSpokenReceiver::receive`] with the `count` choice bits packed: choice `i` is bit
    /// `i mod 8` of `packed[i / 8]` (the little-endian bytes of words whose bits are the
    /// choices, in order). Bits of `packed` past `count` are ignored.
    ///
    /// # Errors
    /// As [`SoftSpokenReceiver::receive`]; [`OtError::InvalidArgument`] also if `packed` holds
    /// fewer than `count` bits.
    pub async fn receive_packed(
        &mut self,
        link: &dyn Link,
        packed: &[u8],
        count: usize,
    ) -> Result<Vec<Block>, OtError> {
        check_call(count, self.broken)?;
        self.receive_packed_into(link, packed, vec![Block::ZERO; count])
            .await
    }

    /// As [`SoftSpokenReceiver::receive_packed`] with `count = out.len()`, writing the keys
    /// into `out` (a caller's buffer, reused across calls) and handing it back.
    ///
    /// # Errors
    /// As [`SoftSpokenReceiver::receive_packed`].
    pub async fn receive_packed_into(
        &mut self,
        link: &dyn Link,
        packed: &[u8],
        mut out: Vec<Block>,
    ) -> Result<Vec<Block>, OtError> {
        let count = out.len();
        check_call(count, self.broken)?;
        if packed.len() < count.div_ceil(8) {
            return Err(OtError::InvalidArgument(format!(
                "{} bytes of choice bits for {count} OTs",
                packed.len()
            )));
        }
        self.broken = true;
        for (index, len) in chunk_lengths(count).enumerate() {
            let start = index * CHUNK_OTS;
            let padded = len.next_multiple_of(BASE_COUNT);
            let r = column(packed, start, len, padded);
            let leaves = Arc::clone(&self.leaves);
            let (position, k) = (self.position, self.k);
            let (c, back) = offload(move || {
                let c = match out.get_mut(start..start + len) {
                    Some(dst) => receiver_chunk(&leaves, k, position, &r, dst),
                    None => Vec::new(),
                };
                (c, out)
            })
            .await;
            out = back;
            send_blocks(link, KIND_SOFTSPOKEN, &c).await?;
            self.position = advance(position, padded)?;
        }
        self.broken = false;
        Ok(out)
    }
}

/// Choices `start .. start + len` of `packed` (`start` a multiple of 8) as a column of `padded`
/// bits, zero past `len`.
fn column(packed: &[u8], start: usize, len: usize, padded: usize) -> Secret<Block> {
    let mut r = Secret::<Block>::zeroed(padded / BASE_COUNT);
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut r.0);
    let src = packed.get(start / 8..).unwrap_or_default();
    let whole = len.div_ceil(8);
    for (dst, s) in bytes.iter_mut().zip(src).take(whole) {
        *dst = *s;
    }
    if !len.is_multiple_of(8)
        && let Some(last) = bytes.get_mut(whole - 1)
    {
        *last &= (1u8 << (len % 8)) - 1;
    }
    r
}

/// The sender's side of the setup: the base OTs with the PPRF's choice bits for `points`, then
/// the PPRF; every leaf, the punctured ones garbage.
async fn punctured_leaves<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    cfg: &PprfConfig,
    points: &[usize],
) -> Result<Secret<Block>, OtError> {
    let mut choices = cfg.choice_bits(points)?;
    let keys = base::receive(link, rng, &choices).await;
    choices.zeroize();
    let keys = Secret(keys?);
    let zero = vec![Block::ZERO; cfg.trees()];
    Ok(Secret(
        pprf::receive(link, cfg, points, &keys, &zero).await?,
    ))
}

/// The sender's leaves by `d = x ⊕ Δ_j`: `out[j·n + d] = leaves[j·n + (d ⊕ points[j])]`, zero
/// at `d = 0`. Selects with masks over every leaf, so no memory access depends on `Δ`.
fn reindex(leaves: &[Block], points: &[usize], n: usize) -> Secret<Block> {
    let mut out = Secret::<Block>::zeroed(leaves.len());
    for ((tree, p), dst) in leaves.chunks(n).zip(points).zip(out.chunks_mut(n)) {
        for (d, slot) in dst.iter_mut().enumerate().skip(1) {
            let want = d ^ p;
            *slot = tree.iter().enumerate().fold(Block::ZERO, |acc, (x, leaf)| {
                acc ^ (*leaf & Block::splat(0u8.wrapping_sub(u8::from(x == want))))
            });
        }
    }
    out
}

/// Step 1 and the receiver's side of step 3 and of the hash for one chunk of `out.len()` OTs
/// whose choice column is `r`: the corrections `c_0, c_1, …` to send; the keys go to `out`.
fn receiver_chunk(
    leaves: &[Block],
    k: usize,
    position: u64,
    r: &[Block],
    out: &mut [Block],
) -> Vec<Block> {
    let per_column = r.len();
    let stream_block = u128::from(position / BASE_COUNT as u64);
    let mut t = Secret::<Block>::zeroed(BASE_COUNT * per_column);
    let mut c = vec![Block::ZERO; BASE_COUNT / k * per_column];
    t.par_chunks_mut(k * per_column)
        .zip(c.par_chunks_mut(per_column))
        .zip(leaves.par_chunks(1 << k))
        .for_each(|((t_j, c_j), leaves_j)| {
            let mut stream = Secret::<Block>::zeroed(per_column);
            for (x, leaf) in leaves_j.iter().enumerate() {
                crate::aes_ctr(leaf, stream_block, &mut stream);
                xor_into(c_j, &stream);
                for (b, column) in t_j.chunks_mut(per_column).enumerate() {
                    if (x >> b) & 1 == 1 {
                        xor_into(column, &stream);
                    }
                }
            }
            xor_into(c_j, r);
        });
    let rows = transpose(&t, BASE_COUNT * per_column);
    for (o, row) in out.iter_mut().zip(rows.iter()) {
        *o = *row;
    }
    hash_in_place(out, position, 1);
    c
}

/// Steps 2 and 3 and the hash on the sender's side for one chunk of `out.len()` OTs: the
/// pairs `[m0, m1]`, into `out`.
fn sender_chunk(
    secrets: &SenderSecrets,
    k: usize,
    position: u64,
    c: &[Block],
    out: &mut [[Block; 2]],
) {
    let per_column = c.len() * k / BASE_COUNT;
    let stream_block = u128::from(position / BASE_COUNT as u64);
    let delta = secrets.delta.first().copied().unwrap_or_default();
    let mut q = Secret::<Block>::zeroed(BASE_COUNT * per_column);
    q.par_chunks_mut(k * per_column)
        .zip(c.par_chunks(per_column))
        .zip(secrets.leaves.par_chunks(1 << k))
        .enumerate()
        .for_each(|(j, ((q_j, c_j), leaves_j))| {
            let mut stream = Secret::<Block>::zeroed(per_column);
            for (d, leaf) in leaves_j.iter().enumerate().skip(1) {
                crate::aes_ctr(leaf, stream_block, &mut stream);
                for (b, column) in q_j.chunks_mut(per_column).enumerate() {
                    if (d >> b) & 1 == 1 {
                        xor_into(column, &stream);
                    }
                }
            }
            // Δ_{j,b}·c_j without a branch on Δ.
            for (b, column) in q_j.chunks_mut(per_column).enumerate() {
                let mask = Block::splat(0u8.wrapping_sub(bit(&delta, j * k + b)));
                for (q, c) in column.iter_mut().zip(c_j) {
                    *q ^= *c & mask;
                }
            }
        });
    let rows = transpose(&q, BASE_COUNT * per_column);
    for (o, q) in out.iter_mut().zip(rows.iter()) {
        *o = [*q, *q ^ delta];
    }
    hash_in_place(bytemuck::cast_slice_mut(out), position, 2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iknp::{IKNP_OT_MAX, pack_bits};
    use crate::test_support::{check, random_choices, rng};
    use crate::wire::KIND_ABORT;
    use bytes::Bytes;
    use rand_core::RngCore;
    use std::collections::HashSet;
    use tessera_core::MemLink;

    async fn setup_pair(
        seed: u64,
        k: usize,
    ) -> (MemLink, MemLink, SoftSpokenSender, SoftSpokenReceiver) {
        let (a, b) = MemLink::pair();
        let (mut ra, mut rb) = (rng(seed), rng(seed + 1));
        let (sender, receiver) = tokio::join!(
            SoftSpokenSender::setup(&a, &mut ra, k),
            SoftSpokenReceiver::setup(&b, &mut rb, k)
        );
        (
            a,
            b,
            sender.expect("sender setup"),
            receiver.expect("receiver setup"),
        )
    }

    async fn extend(
        a: &MemLink,
        b: &MemLink,
        sender: &mut SoftSpokenSender,
        receiver: &mut SoftSpokenReceiver,
        choices: &[bool],
    ) -> (Vec<[Block; 2]>, Vec<Block>) {
        let (pairs, keys) =
            tokio::join!(sender.send(a, choices.len()), receiver.receive(b, choices));
        (pairs.expect("send"), keys.expect("receive"))
    }

    #[tokio::test]
    async fn extended_ots_match_the_choices_for_every_width() {
        for (seed, k) in (1..).step_by(2).zip(FIELD_BITS) {
            let (a, b, mut sender, mut receiver) = setup_pair(seed, k).await;
            let mut r = rng(seed + 100);
            let mut seen = HashSet::new();
            for count in [1, 127, 128, 129, 5_000] {
                let choices = random_choices(count, &mut r);
                let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
                check(&pairs, &keys, &choices);
                for p in &pairs {
                    assert!(seen.insert(u128::from(p[0])), "k={k}: an OT repeats");
                    assert!(seen.insert(u128::from(p[1])), "k={k}: an OT repeats");
                }
            }
        }
    }

    #[tokio::test]
    async fn the_correlation_is_iknps() {
        // Before hashing, the sender's rows are the receiver's rows ⊕ r_i·Δ.
        for (seed, k) in (40..).step_by(2).zip(FIELD_BITS) {
            let (_a, _b, sender, receiver) = setup_pair(seed, k).await;
            let choices = random_choices(256, &mut rng(seed + 1));
            let r = pack_bits(&choices, 256);
            let per_column = r.len();
            let mut t = vec![Block::ZERO; BASE_COUNT * per_column];
            let mut c = vec![Block::ZERO; BASE_COUNT / k * per_column];
            for (j, leaves) in receiver.leaves.chunks(1 << k).enumerate() {
                for (x, leaf) in leaves.iter().enumerate() {
                    let mut stream = vec![Block::ZERO; per_column];
                    crate::aes_ctr(leaf, 0, &mut stream);
                    xor_into(&mut c[j * per_column..(j + 1) * per_column], &stream);
                    for b in 0..k {
                        if (x >> b) & 1 == 1 {
                            let col = (j * k + b) * per_column;
                            xor_into(&mut t[col..col + per_column], &stream);
                        }
                    }
                }
            }
            // The sender's missing leaf is the receiver's leaf at Δ_j.
            let delta = sender.secrets.delta[0];
            for j in 0..BASE_COUNT / k {
                let p = piece(&delta, j, k);
                for d in 1..1 << k {
                    assert_eq!(
                        sender.secrets.leaves[j * (1 << k) + d],
                        receiver.leaves[j * (1 << k) + (d ^ p)]
                    );
                }
                xor_into(&mut c[j * per_column..(j + 1) * per_column], &r);
            }
            let rows_t = transpose(&t, 256);
            let mut pairs = vec![[Block::ZERO; 2]; 256];
            sender_chunk(&sender.secrets, k, 0, &c, &mut pairs);
            let mut keys = vec![Block::ZERO; 256];
            receiver_chunk(&receiver.leaves, k, 0, &r, &mut keys);
            let mut hashed = rows_t.to_vec();
            hash_in_place(&mut hashed, 0, 1);
            assert_eq!(hashed, keys);
            for (i, (pair, key)) in pairs.iter().zip(&keys).enumerate() {
                assert_eq!(pair[usize::from(choices[i])], *key, "k={k} row {i}");
            }
        }
    }

    #[tokio::test]
    async fn several_chunks_and_the_traffic() {
        let k = 4;
        let (a, b, mut sender, mut receiver) = setup_pair(5, k).await;
        let before = b.stats().bytes_sent as usize;
        let count = 2 * CHUNK_OTS + 300;
        let choices = random_choices(count, &mut rng(6));
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&pairs, &keys, &choices);
        // 128/k bits per padded OT.
        let bytes = (2 * CHUNK_OTS + 384) * (BASE_COUNT / k) / 8;
        let sent = b.stats().bytes_sent as usize - before;
        assert!(sent >= bytes && sent <= bytes + 100, "{sent} vs {bytes}");
    }

    #[tokio::test]
    async fn successive_calls_give_fresh_ots_and_zero_sends_nothing() {
        let (a, b, mut sender, mut receiver) = setup_pair(7, 2).await;
        let before = (a.stats(), b.stats());
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &[]).await;
        assert!(pairs.is_empty() && keys.is_empty());
        assert_eq!((a.stats(), b.stats()), before);
        let choices = random_choices(300, &mut rng(8));
        let (p1, k1) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        let (p2, k2) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&p1, &k1, &choices);
        check(&p2, &k2, &choices);
        assert!(
            p1.iter()
                .zip(&p2)
                .all(|(x, y)| x[0] != y[0] && x[1] != y[1])
        );
        // Packed choices, with garbage past the count: the same OTs as unpacked ones.
        let choices = random_choices(203, &mut rng(9));
        let mut packed = vec![0xffu8; 26];
        for (i, &c) in choices.iter().enumerate() {
            packed[i / 8] &= !(u8::from(!c) << (i % 8));
        }
        let (pairs, keys) = tokio::join!(
            sender.send(&a, 203),
            receiver.receive_packed(&b, &packed, 203)
        );
        check(&pairs.expect("send"), &keys.expect("receive"), &choices);
        assert!(matches!(
            receiver.receive_packed(&b, &packed[..25], 203).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            sender.send(&a, IKNP_OT_MAX + 1).await,
            Err(OtError::InvalidArgument(_))
        ));
        let too_many = vec![false; IKNP_OT_MAX + 1];
        assert!(matches!(
            receiver.receive(&b, &too_many).await,
            Err(OtError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn bad_widths_are_refused_before_anything_is_sent() {
        let (a, b) = MemLink::pair();
        for k in [0, 3, 5, 16, 128] {
            assert!(matches!(
                SoftSpokenSender::setup(&a, &mut rng(1), k).await,
                Err(OtError::InvalidArgument(_))
            ));
            assert!(matches!(
                SoftSpokenReceiver::setup(&b, &mut rng(1), k).await,
                Err(OtError::InvalidArgument(_))
            ));
        }
        assert_eq!(a.stats().bytes_sent + b.stats().bytes_sent, 0);
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let (_a, _b, sender, receiver) = setup_pair(9, 4).await;
        assert_eq!(
            format!("{sender:?} {receiver:?}"),
            "SoftSpokenSender { k: 4, position: 0, broken: false, .. } \
             SoftSpokenReceiver { k: 4, position: 0, broken: false, .. }"
        );
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (a, _b) = MemLink::pair();
        let mut r = rng(1);
        assert_send(&SoftSpokenSender::setup(&a, &mut r, 4));
        assert_send(&SoftSpokenReceiver::setup(&a, &mut r, 4));
    }

    /// A sender (k = 4, set up against a real receiver that then leaves) receiving `frames`
    /// for 200 OTs.
    async fn sender_after(frames: Vec<Bytes>) -> Result<Vec<[Block; 2]>, OtError> {
        let (a, b, mut sender, receiver) = setup_pair(11, 4).await;
        drop(receiver);
        for f in frames {
            b.send(f).await.expect("send");
        }
        drop(b);
        let got = sender.send(&a, 200).await;
        // Out of step after a failure: refused.
        if got.is_err() {
            assert!(matches!(
                sender.send(&a, 1).await,
                Err(OtError::InvalidArgument(_))
            ));
        }
        got
    }

    fn frame(kind: u8, blocks: u32, bytes: usize) -> Bytes {
        let mut f = vec![kind];
        f.extend_from_slice(&blocks.to_le_bytes());
        f.resize(f.len() + bytes, 0xa5);
        Bytes::from(f)
    }

    #[tokio::test]
    async fn hostile_frames_are_typed_errors() {
        // 200 OTs pad to 256: 32 corrections of 2 blocks, 64 blocks expected.
        for f in [
            frame(KIND_SOFTSPOKEN, 65, 65 * 16),
            frame(KIND_SOFTSPOKEN, 64, 64 * 16 - 1),
            frame(KIND_SOFTSPOKEN, 0, 0),
            frame(KIND_SOFTSPOKEN, u32::MAX, 16),
            frame(crate::wire::KIND_IKNP_MATRIX, 64, 64 * 16),
            Bytes::from_static(b"garbage"),
            Bytes::new(),
        ] {
            let got = sender_after(vec![f.clone()]).await;
            assert!(matches!(got, Err(OtError::Protocol(_))), "{got:?}");
        }
        let got = sender_after(vec![Bytes::from_static(&[KIND_ABORT, 3])]).await;
        assert!(matches!(got, Err(OtError::PeerAborted(3))), "{got:?}");
        let got = sender_after(vec![frame(KIND_SOFTSPOKEN, 10, 10 * 16)]).await;
        assert!(matches!(got, Err(OtError::Link(_))), "{got:?}");
        // Well-formed but from nobody: keys the receiver does not hold, not an error.
        let got = sender_after(vec![frame(KIND_SOFTSPOKEN, 64, 64 * 16)]).await;
        assert_eq!(got.expect("well-formed").len(), 200);
        let mut r = rng(12);
        for len in [1usize, 6, 1029] {
            let mut bytes = vec![0u8; len];
            r.fill_bytes(&mut bytes);
            bytes[0] = KIND_SOFTSPOKEN;
            assert!(sender_after(vec![Bytes::from(bytes)]).await.is_err());
        }
    }

    #[tokio::test]
    async fn receiver_reports_a_gone_sender() {
        let (a, b, sender, mut receiver) = setup_pair(13, 8).await;
        drop((a, sender));
        let got = receiver.receive(&b, &[true; 10]).await;
        assert!(matches!(got, Err(OtError::Link(_))), "{got:?}");
        assert!(matches!(
            receiver.receive(&b, &[true]).await,
            Err(OtError::InvalidArgument(_))
        ));
    }
}
