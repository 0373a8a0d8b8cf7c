//! OT extension: many random 1-out-of-2 OTs with chosen choice bits from [`BASE_COUNT`] = 128
//! base OTs in the other direction, after Ishai–Kilian–Nissim–Petrank, "Extending Oblivious
//! Transfers Efficiently" (CRYPTO 2003, §3 and Figure 1), in its random-OT form with the
//! correlation-robust hash of Guo–Katz–Wang–Yu, "Efficient and Secure Multiparty Computation
//! from Fixed-Key Block Ciphers" (S&P 2020, ePrint 2019/074, §7: TMMO).
//!
//! Entry points: [`IknpSender`] (the extension **sender**, who gets two keys per OT) and
//! [`IknpReceiver`] (the extension **receiver**, who chooses a bit per OT and gets that key).
//! Either is made once, from base OTs ([`base`]) run by [`IknpSender::setup`] /
//! [`IknpReceiver::setup`] or handed to [`IknpSender::new`] / [`IknpReceiver::new`], and then
//! extends as often as needed; every call gives fresh OTs, independent of earlier calls'.
//!
//! # Protocol
//!
//! Setup: the extension *receiver* is the base-OT *sender* and holds 128 key pairs
//! `(k0_j, k1_j)`; the extension *sender* is the base-OT *receiver* with random choice bits
//! `s = (s_0 … s_127)` and holds `k_{s_j, j}`.
//!
//! Extension of `n` OTs with choice vector `r ∈ {0,1}^n` (processed in chunks of at most
//! [`CHUNK_OTS`] OTs, each padded to `m`, a multiple of 128, with zero choice bits):
//!
//! 1. Receiver, for each `j < 128`: `t0_j = G(k0_j)`, `t1_j = G(k1_j)` (the next `m` bits of
//!    each key's stream), and sends `u_j = t0_j ⊕ t1_j ⊕ r`.
//! 2. Sender, for each `j`: `q_j = G(k_{s_j, j}) ⊕ s_j·u_j`, which is `t0_j ⊕ s_j·r`.
//! 3. Both transpose their 128 × `m` bit matrices: row `i` is `t_i` (receiver) and
//!    `q_i = t_i ⊕ r_i·s` (sender).
//! 4. Sender outputs `m0_i = H(τ_i, q_i)`, `m1_i = H(τ_i, q_i ⊕ s)`; receiver outputs
//!    `H(τ_i, t_i) = m_{r_i, i}`.
//!
//! `G(k)` is AES-128 keyed with `k` in counter mode, block `c` being `AES_k(c) ⊕ c` (`c` as a
//! 128-bit little-endian counter; cryprot-core's `AesHash` with key `k`, not its `AesRng`, whose
//! seeding and output go through `rand_core` 0.10 traits this crate does not depend on; the
//! explicit counter also fixes the byte order on every target). Each key's stream is
//! stateful: a call continues where the previous one stopped, so no stream bit is used twice.
//! `H(τ, x)` is the tweakable circular correlation-robust hash TMMO of cryprot-core
//! (`FIXED_KEY_HASH.tccr_hash_slice_mut`, fixed-key AES); the tweak `τ_i` is the OT's position
//! in the stream of all OTs this pair has extended (padding included), so no tweak repeats
//! across calls. Both sides advance the position identically from the agreed counts.
//!
//! Bit order: a column (and the vector `r`) holds bit `i` in bit `i mod 8` of byte `i / 8`; a
//! row is one [`Block`] whose bit `j` (bit `j mod 8` of byte `j / 8` of
//! [`Block::as_bytes`]) belongs to base OT `j`, as in [`IknpSender::new`]'s `s`. This is the
//! layout of `cryprot_core::transpose::transpose_bitmatrix`.
//!
//! # Threat model
//!
//! Semi-honest, as the rest of the crate ([`crate`]), assuming the base OTs are (semi-honest)
//! secure, `G` a PRG (AES a PRF) and `H` tweakable correlation robust (GKWY20: fixed-key AES as
//! an ideal permutation):
//!
//! * the **sender** learns nothing about `r`: each `u_j` is `t_{1−s_j}` (a PRG output under a
//!   key it does not know) XOR something it knows;
//! * the **receiver** learns `m_{r_i, i}` and nothing about `m_{1−r_i, i}`, which needs
//!   `H(τ_i, t_i ⊕ s)` with `s` unknown to it;
//! * both learn the number of OTs per call.
//!
//! Not secure against a malicious party: a malicious receiver can send `u_j` inconsistent across
//! columns and learn bits of `s` (the KOS consistency check, CRYPTO 2015, is not implemented).
//! The outputs are *random* OTs: the sender cannot choose its messages, only mask chosen ones
//! with the keys afterwards. Base-OT keys and `s` are zeroized on drop and never printed in
//! `Debug`; the intermediate matrices are zeroized when dropped. The AES round keys that
//! cryprot-core's `AesHash` expands from a base-OT key are not zeroized (that type does not
//! offer it).
//!
//! # Bounds and failures
//!
//! At most [`IKNP_OT_MAX`] OTs per call, refused with [`OtError::InvalidArgument`] before
//! anything is sent or allocated; the sender's output then takes 32 bytes per OT, the
//! receiver's 16, and the working memory besides is a few matrices of one chunk (about 5 MiB
//! at most, plus the frames the link queues). The matrix frames must carry exactly the expected
//! number of blocks ([`crate::wire::recv_blocks`]), else [`OtError::Protocol`]. A call that
//! fails (or whose
//! future is dropped) leaves the streams of the two sides out of step: the instance then
//! refuses further calls with [`OtError::InvalidArgument`]; set up a new one.
//!
//! # Message flow
//!
//! Per call of `n > 0` OTs, for each chunk of `c` OTs (`m = c` rounded up to a multiple of
//! 128): receiver → sender, frames of kind [`KIND_IKNP_MATRIX`] with `m` blocks in all: `u_0`
//! (its `m / 128` blocks), then `u_1`, …, `u_127`. Nothing flows the other
//! way, and nothing at all for `n = 0`. Setup adds the two messages of [`base`] (128 OTs, the
//! extension receiver as base sender).
//!
//! The PRG expansion, transpose and hashing of a chunk run on rayon's global pool
//! ([`crate::offload`]), not on the async executor's thread.

use std::sync::Arc;

use bytemuck::Pod;
use cryprot_core::aes_hash::FIXED_KEY_HASH;
use cryprot_core::transpose::transpose_bitmatrix;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::base;
use crate::offload;
use crate::wire::{KIND_IKNP_MATRIX, recv_blocks, send_blocks};
use crate::{Block, OtError};

/// The most OTs one [`IknpSender::send`] / [`IknpReceiver::receive`] call extends.
pub const IKNP_OT_MAX: usize = 1 << 24;
/// The number of base OTs (the computational security parameter).
pub const BASE_COUNT: usize = 128;
/// OTs per chunk of a call: one chunk's matrix is `16 · CHUNK_OTS` bytes (1 MiB).
pub const CHUNK_OTS: usize = 1 << 16;

/// OTs hashed per rayon task.
const HASH_BATCH: usize = 4096;

/// A vector of secret plain-old-data, zeroized when dropped.
pub(crate) struct Secret<T: Pod>(pub(crate) Vec<T>);

impl<T: Pod> Secret<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        Secret(vec![T::zeroed(); len])
    }
}

impl<T: Pod> Drop for Secret<T> {
    fn drop(&mut self) {
        bytemuck::cast_slice_mut::<T, u8>(&mut self.0).zeroize();
    }
}

impl<T: Pod> std::ops::Deref for Secret<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T: Pod> std::ops::DerefMut for Secret<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

/// The extension sender's secrets: `s` and the base-OT keys `k_{s_j, j}`.
struct SenderSecrets {
    s: Secret<Block>,
    keys: Secret<Block>,
}

/// The extension sender: holds 128 base OTs in which it was the base-OT *receiver* with random
/// choice bits `s`. Its `Debug` shows only how many OTs it has extended.
pub struct IknpSender {
    secrets: Arc<SenderSecrets>,
    /// OTs extended so far, padding included: the stream position (÷ 128) and the next tweak.
    position: u64,
    /// A call failed or was dropped half-way; the two sides are out of step.
    broken: bool,
}

impl std::fmt::Debug for IknpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IknpSender")
            .field("position", &self.position)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl IknpSender {
    /// From base-OT receiver output: `s` = the 128 choice bits (bit `i` = choice of base OT
    /// `i`: bit `i mod 8` of byte `i / 8` of [`Block::as_bytes`], which is
    /// `(u128::from(s) >> i) & 1` on little-endian targets) and `keys` = the 128 received keys,
    /// `keys[i]` being base OT `i`'s key at choice `s_i`. Base OTs seed one extension only: two
    /// instances made from the same base OTs would give the same OTs.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `keys.len() != BASE_COUNT`.
    pub fn new(s: Block, keys: Vec<Block>) -> Result<Self, OtError> {
        let keys = Secret(keys);
        if keys.len() != BASE_COUNT {
            return Err(OtError::InvalidArgument(format!(
                "IKNP needs {BASE_COUNT} base OTs, got {}",
                keys.len()
            )));
        }
        Ok(IknpSender {
            secrets: Arc::new(SenderSecrets {
                s: Secret(vec![s]),
                keys,
            }),
            position: 0,
            broken: false,
        })
    }

    /// Runs the 128 base OTs itself, as base receiver with random `s` drawn from `rng`, over
    /// `link`; the peer runs [`IknpReceiver::setup`].
    ///
    /// # Errors
    /// As [`base::receive`].
    pub async fn setup<R: CryptoRngCore + Send>(
        link: &dyn Link,
        rng: &mut R,
    ) -> Result<Self, OtError> {
        let mut s = Secret::<Block>::zeroed(1);
        rng.fill_bytes(bytemuck::cast_slice_mut(&mut s.0));
        let mut choices: Vec<bool> = (0..BASE_COUNT).map(|j| bit(&s[0], j) == 1).collect();
        let keys = base::receive(link, rng, &choices).await;
        choices.zeroize();
        Self::new(s[0], keys?)
    }

    /// Extends: returns `count` random OT pairs `[m0, m1]`; the peer calls
    /// [`IknpReceiver::receive`] with `count` choice bits. May be called again for more (fresh,
    /// independent OTs each call).
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `count > IKNP_OT_MAX` (nothing received) or an earlier
    /// call failed; [`OtError::Protocol`] if the matrix frames are malformed or of the wrong
    /// length; [`OtError::PeerAborted`] on an abort frame; a link error.
    pub async fn send(
        &mut self,
        link: &dyn Link,
        count: usize,
    ) -> Result<Vec<[Block; 2]>, OtError> {
        check_call(count, self.broken)?;
        let mut out = Vec::with_capacity(count);
        self.broken = true;
        for len in chunk_lengths(count) {
            let padded = len.next_multiple_of(BASE_COUNT);
            let u = recv_blocks(link, KIND_IKNP_MATRIX, padded).await?;
            let secrets = Arc::clone(&self.secrets);
            let position = self.position;
            let pairs = offload(move || sender_chunk(&secrets, position, &u, len)).await;
            out.extend_from_slice(&pairs);
            self.position = advance(position, padded)?;
        }
        self.broken = false;
        Ok(out)
    }
}

/// The extension receiver: holds 128 base OTs in which it was the base-OT *sender*. Its
/// `Debug` shows only how many OTs it has extended.
pub struct IknpReceiver {
    keys: Arc<Secret<[Block; 2]>>,
    /// As [`IknpSender`]'s.
    position: u64,
    broken: bool,
}

impl std::fmt::Debug for IknpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IknpReceiver")
            .field("position", &self.position)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl IknpReceiver {
    /// From base-OT sender output: `base[j]` = the key pair `[k0_j, k1_j]` of base OT `j`. Base
    /// OTs seed one extension only (as [`IknpSender::new`]).
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `base.len() != BASE_COUNT`.
    pub fn new(base: Vec<[Block; 2]>) -> Result<Self, OtError> {
        let keys = Secret(base);
        if keys.len() != BASE_COUNT {
            return Err(OtError::InvalidArgument(format!(
                "IKNP needs {BASE_COUNT} base OTs, got {}",
                keys.len()
            )));
        }
        Ok(IknpReceiver {
            keys: Arc::new(keys),
            position: 0,
            broken: false,
        })
    }

    /// Runs the 128 base OTs itself, as base sender, over `link`; the peer runs
    /// [`IknpSender::setup`].
    ///
    /// # Errors
    /// As [`base::send`].
    pub async fn setup<R: CryptoRngCore + Send>(
        link: &dyn Link,
        rng: &mut R,
    ) -> Result<Self, OtError> {
        Self::new(base::send(link, rng, BASE_COUNT).await?)
    }

    /// Extends with chosen choice bits: returns `m_{choices[i], i}` for each `i`. Must be paired
    /// with an [`IknpSender::send`] of `count = choices.len()` on the other side.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `choices.len() > IKNP_OT_MAX` (nothing sent) or an
    /// earlier call failed; a link error.
    pub async fn receive(
        &mut self,
        link: &dyn Link,
        choices: &[bool],
    ) -> Result<Vec<Block>, OtError> {
        check_call(choices.len(), self.broken)?;
        let mut out = Vec::with_capacity(choices.len());
        self.broken = true;
        for chunk in choices.chunks(CHUNK_OTS) {
            let len = chunk.len();
            let padded = len.next_multiple_of(BASE_COUNT);
            let r = pack_bits(chunk, padded);
            let keys = Arc::clone(&self.keys);
            let position = self.position;
            let (u, keys_out) = offload(move || receiver_chunk(&keys, position, &r, len)).await;
            send_blocks(link, KIND_IKNP_MATRIX, &u).await?;
            out.extend_from_slice(&keys_out);
            self.position = advance(position, padded)?;
        }
        self.broken = false;
        Ok(out)
    }
}

pub(crate) fn check_call(count: usize, broken: bool) -> Result<(), OtError> {
    if broken {
        return Err(OtError::InvalidArgument(
            "an earlier OT-extension call failed; the two sides are out of step, set up a new \
             extension"
                .into(),
        ));
    }
    if count > IKNP_OT_MAX {
        return Err(OtError::InvalidArgument(format!(
            "{count} OTs requested, at most {IKNP_OT_MAX} per call"
        )));
    }
    Ok(())
}

/// The lengths of the chunks a call of `count` OTs is processed in.
pub(crate) fn chunk_lengths(count: usize) -> impl Iterator<Item = usize> {
    (0..count)
        .step_by(CHUNK_OTS)
        .map(move |start| CHUNK_OTS.min(count - start))
}

/// The stream position after `padded` more OTs.
pub(crate) fn advance(position: u64, padded: usize) -> Result<u64, OtError> {
    u64::try_from(padded)
        .ok()
        .and_then(|p| position.checked_add(p))
        .ok_or_else(|| OtError::InvalidArgument("the extension's OT counter is exhausted".into()))
}

/// Bit `j` of a row (or of `s`): bit `j mod 8` of byte `j / 8`.
pub(crate) fn bit(row: &Block, j: usize) -> u8 {
    (row.as_bytes()[j / 8] >> (j % 8)) & 1
}

/// The choice bits of one chunk as a column of `padded` bits (zero padding).
pub(crate) fn pack_bits(choices: &[bool], padded: usize) -> Secret<Block> {
    let mut r = Secret::<Block>::zeroed(padded / BASE_COUNT);
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut r.0);
    for (byte, bits) in bytes.iter_mut().zip(choices.chunks(8)) {
        *byte = bits
            .iter()
            .enumerate()
            .fold(0, |acc, (k, &c)| acc | (u8::from(c) << k));
    }
    r
}

/// The 128 × `padded` column matrix (`columns[j]` = blocks `j·padded/128 ..`) as `padded` rows.
pub(crate) fn transpose(columns: &[Block], padded: usize) -> Secret<Block> {
    let mut rows = Secret::<Block>::zeroed(padded);
    transpose_bitmatrix(
        bytemuck::cast_slice(columns),
        bytemuck::cast_slice_mut(&mut rows.0),
        BASE_COUNT,
    );
    rows
}

/// The tweak of the OT at stream position `position`.
fn tweak(position: u64) -> Block {
    Block::new(u128::from(position).to_le_bytes())
}

/// Hashes `blocks` in place in parallel; block `k` gets the tweak `first + k / per_ot`.
pub(crate) fn hash_in_place(blocks: &mut [Block], first: u64, per_ot: usize) {
    blocks
        .par_chunks_mut(HASH_BATCH * per_ot)
        .enumerate()
        .for_each(|(batch, chunk)| {
            let start = first + (batch * HASH_BATCH) as u64;
            FIXED_KEY_HASH.tccr_hash_slice_mut(chunk, |k| tweak(start + (k / per_ot) as u64));
        });
}

/// Step 1 and the receiver's side of steps 3 and 4 for one chunk of `len` OTs whose choice
/// column is `r`: returns the matrix `u` to send and the receiver's `len` keys.
fn receiver_chunk(
    keys: &[[Block; 2]],
    position: u64,
    r: &[Block],
    len: usize,
) -> (Vec<Block>, Vec<Block>) {
    let per_column = r.len();
    let stream_block = u128::from(position / BASE_COUNT as u64);
    let mut t0 = Secret::<Block>::zeroed(BASE_COUNT * per_column);
    let mut u = vec![Block::ZERO; BASE_COUNT * per_column];
    t0.par_chunks_mut(per_column)
        .zip(u.par_chunks_mut(per_column))
        .zip(keys.par_iter())
        .for_each(|((t0_j, u_j), [k0, k1])| {
            crate::aes_ctr(k0, stream_block, t0_j);
            crate::aes_ctr(k1, stream_block, u_j);
            for ((u, t), r) in u_j.iter_mut().zip(t0_j.iter()).zip(r) {
                *u ^= *t ^ *r;
            }
        });
    let mut rows = transpose(&t0, BASE_COUNT * per_column);
    let rows = rows.get_mut(..len).unwrap_or_default();
    hash_in_place(rows, position, 1);
    (u, rows.to_vec())
}

/// Steps 2 to 4 on the sender's side for one chunk of `len` OTs: the pairs `[m0, m1]`.
fn sender_chunk(
    secrets: &SenderSecrets,
    position: u64,
    u: &[Block],
    len: usize,
) -> Vec<[Block; 2]> {
    let per_column = u.len() / BASE_COUNT;
    let stream_block = u128::from(position / BASE_COUNT as u64);
    let s = secrets.s.first().copied().unwrap_or_default();
    let mut q = Secret::<Block>::zeroed(BASE_COUNT * per_column);
    q.par_chunks_mut(per_column)
        .zip(u.par_chunks(per_column))
        .zip(secrets.keys.par_iter())
        .enumerate()
        .for_each(|(j, ((q_j, u_j), k))| {
            crate::aes_ctr(k, stream_block, q_j);
            // s_j·u_j without a branch on s_j.
            let mask = Block::splat(0u8.wrapping_sub(bit(&s, j)));
            for (q, u) in q_j.iter_mut().zip(u_j) {
                *q ^= *u & mask;
            }
        });
    let rows = transpose(&q, BASE_COUNT * per_column);
    let mut pairs: Vec<[Block; 2]> = rows.iter().take(len).map(|q| [*q, *q ^ s]).collect();
    hash_in_place(bytemuck::cast_slice_mut(&mut pairs), position, 2);
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{check, random_choices, rng};
    use crate::wire::KIND_ABORT;
    use bytes::Bytes;
    use rand_core::RngCore;
    use std::collections::HashSet;
    use tessera_core::MemLink;

    async fn setup_pair(seed: u64) -> (MemLink, MemLink, IknpSender, IknpReceiver) {
        let (a, b) = MemLink::pair();
        let (mut ra, mut rb) = (rng(seed), rng(seed + 1));
        let (sender, receiver) = tokio::join!(
            IknpSender::setup(&a, &mut ra),
            IknpReceiver::setup(&b, &mut rb)
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
        sender: &mut IknpSender,
        receiver: &mut IknpReceiver,
        choices: &[bool],
    ) -> (Vec<[Block; 2]>, Vec<Block>) {
        let (pairs, keys) =
            tokio::join!(sender.send(a, choices.len()), receiver.receive(b, choices));
        (pairs.expect("send"), keys.expect("receive"))
    }

    #[tokio::test]
    async fn extended_ots_match_the_choices() {
        let (a, b, mut sender, mut receiver) = setup_pair(1).await;
        let mut r = rng(2);
        let mut seen = HashSet::new();
        for count in [1, 127, 128, 129, 10_000] {
            let choices = random_choices(count, &mut r);
            let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
            check(&pairs, &keys, &choices);
            for p in &pairs {
                assert!(seen.insert(u128::from(p[0])), "an OT repeats across calls");
                assert!(seen.insert(u128::from(p[1])), "an OT repeats across calls");
            }
        }
    }

    #[tokio::test]
    async fn successive_calls_give_fresh_ots() {
        let (a, b, mut sender, mut receiver) = setup_pair(3).await;
        let choices = random_choices(300, &mut rng(4));
        let (p1, k1) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        let (p2, k2) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&p1, &k1, &choices);
        check(&p2, &k2, &choices);
        for (x, y) in p1.iter().zip(&p2) {
            assert_ne!(x[0], y[0]);
            assert_ne!(x[1], y[1]);
        }
        assert!(k1.iter().zip(&k2).all(|(x, y)| x != y));
    }

    #[tokio::test]
    async fn several_chunks_in_one_call() {
        let (a, b, mut sender, mut receiver) = setup_pair(5).await;
        let count = 2 * CHUNK_OTS + 300;
        let choices = random_choices(count, &mut rng(6));
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&pairs, &keys, &choices);
        // 128 × padded bits of matrix, i.e. `padded` blocks, per chunk; 256 base points before.
        let matrix_bytes = (2 * CHUNK_OTS + 384) * 16;
        assert!(b.stats().bytes_sent as usize >= matrix_bytes);
        assert!(b.stats().bytes_sent as usize <= matrix_bytes + 128 * 32 + 1000);
    }

    #[tokio::test]
    async fn from_given_base_ots() {
        // `new` with the outputs of `base` run by hand, as a caller with its own base OTs does.
        let (a, b) = MemLink::pair();
        let mut s_bytes = [0u8; 16];
        rng(7).fill_bytes(&mut s_bytes);
        let s = Block::new(s_bytes);
        let choices: Vec<bool> = (0..BASE_COUNT).map(|j| bit(&s, j) == 1).collect();
        assert!(
            choices
                .iter()
                .enumerate()
                .all(|(j, &c)| ((u128::from(s) >> j) & 1 == 1) == c)
        );
        let (mut rb, mut ra) = (rng(8), rng(9));
        let (base_pairs, base_keys) = tokio::join!(
            base::send(&b, &mut rb, BASE_COUNT),
            base::receive(&a, &mut ra, &choices)
        );
        let mut sender = IknpSender::new(s, base_keys.expect("base receive")).expect("sender");
        let mut receiver = IknpReceiver::new(base_pairs.expect("base send")).expect("receiver");
        let choices = random_choices(1000, &mut rng(10));
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&pairs, &keys, &choices);
    }

    #[tokio::test]
    async fn zero_ots_send_nothing_and_bounds_are_checked() {
        let (a, b, mut sender, mut receiver) = setup_pair(11).await;
        let before = (a.stats(), b.stats());
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &[]).await;
        assert!(pairs.is_empty() && keys.is_empty());
        assert!(matches!(
            sender.send(&a, IKNP_OT_MAX + 1).await,
            Err(OtError::InvalidArgument(_))
        ));
        let too_many = vec![false; IKNP_OT_MAX + 1];
        assert!(matches!(
            receiver.receive(&b, &too_many).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!((a.stats(), b.stats()), before);
        // Still in step afterwards.
        let choices = random_choices(200, &mut rng(12));
        let (pairs, keys) = extend(&a, &b, &mut sender, &mut receiver, &choices).await;
        check(&pairs, &keys, &choices);
    }

    #[test]
    fn wrong_base_counts_are_refused() {
        for n in [0, 1, 127, 129] {
            assert!(matches!(
                IknpSender::new(Block::ZERO, vec![Block::ZERO; n]),
                Err(OtError::InvalidArgument(_))
            ));
            assert!(matches!(
                IknpReceiver::new(vec![[Block::ZERO; 2]; n]),
                Err(OtError::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let key = Block::from(0x1234_5678_9abc_def0_u128);
        let sender = IknpSender::new(key, vec![key; BASE_COUNT]).expect("sender");
        let receiver = IknpReceiver::new(vec![[key; 2]; BASE_COUNT]).expect("receiver");
        let text = format!("{sender:?} {receiver:?}");
        assert_eq!(
            text,
            "IknpSender { position: 0, broken: false, .. } \
             IknpReceiver { position: 0, broken: false, .. }"
        );
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (a, _b) = MemLink::pair();
        let mut r = rng(1);
        assert_send(&IknpSender::setup(&a, &mut r));
        assert_send(&IknpReceiver::setup(&a, &mut r));
        let mut sender = IknpSender::new(Block::ZERO, vec![Block::ZERO; BASE_COUNT]).expect("s");
        assert_send(&sender.send(&a, 1));
        let mut receiver = IknpReceiver::new(vec![[Block::ZERO; 2]; BASE_COUNT]).expect("r");
        assert_send(&receiver.receive(&a, &[true]));
    }

    #[test]
    fn transpose_matches_the_bit_layout() {
        // 128 columns of 256 bits; row i bit j must be column j bit i.
        let mut r = rng(13);
        let mut columns = vec![Block::ZERO; 2 * BASE_COUNT];
        r.fill_bytes(bytemuck::cast_slice_mut(&mut columns));
        let rows = transpose(&columns, 256);
        let col_bytes: &[u8] = bytemuck::cast_slice(&columns);
        for (i, row) in rows.iter().enumerate() {
            for j in 0..BASE_COUNT {
                let column_bit = (col_bytes[j * 32 + i / 8] >> (i % 8)) & 1;
                assert_eq!(bit(row, j), column_bit, "row {i} bit {j}");
            }
        }
    }

    #[test]
    fn pack_bits_matches_the_bit_layout() {
        let choices = random_choices(200, &mut rng(14));
        let r = pack_bits(&choices, 256);
        assert_eq!(r.len(), 2);
        let bytes: &[u8] = bytemuck::cast_slice(&r.0);
        for i in 0..256 {
            let expected = choices.get(i).copied().unwrap_or(false);
            assert_eq!((bytes[i / 8] >> (i % 8)) & 1 == 1, expected, "bit {i}");
        }
    }

    #[test]
    fn the_stream_continues_across_calls() {
        let key = Block::from(42_u128);
        let mut whole = vec![Block::ZERO; 10];
        crate::aes_ctr(&key, 0, &mut whole);
        let mut tail = vec![Block::ZERO; 4];
        crate::aes_ctr(&key, 6, &mut tail);
        assert_eq!(&whole[6..], &tail[..]);
        let distinct: HashSet<u128> = whole.iter().map(u128::from).collect();
        assert_eq!(distinct.len(), 10);
    }

    /// A sender set up with arbitrary keys, receiving `frames` for 200 OTs; the peer then leaves.
    async fn sender_after(frames: Vec<Bytes>) -> (Result<Vec<[Block; 2]>, OtError>, IknpSender) {
        let (a, b) = MemLink::pair();
        for f in frames {
            b.send(f).await.expect("send");
        }
        drop(b);
        let mut sender =
            IknpSender::new(Block::from(5_u128), vec![Block::from(9_u128); BASE_COUNT]).expect("s");
        let got = sender.send(&a, 200).await;
        (got, sender)
    }

    fn matrix_frame(kind: u8, blocks: u32, bytes: usize) -> Bytes {
        let mut f = vec![kind];
        f.extend_from_slice(&blocks.to_le_bytes());
        f.resize(f.len() + bytes, 0xa5);
        Bytes::from(f)
    }

    #[tokio::test]
    async fn hostile_matrix_frames_are_typed_errors() {
        // 200 OTs pad to 256: 256 blocks expected.
        let cases = [
            matrix_frame(KIND_IKNP_MATRIX, 257, 257 * 16),
            matrix_frame(KIND_IKNP_MATRIX, 256, 256 * 16 - 1),
            matrix_frame(KIND_IKNP_MATRIX, 200, 256 * 16),
            matrix_frame(KIND_IKNP_MATRIX, 0, 0),
            matrix_frame(KIND_IKNP_MATRIX, u32::MAX, 16),
            matrix_frame(crate::wire::KIND_BASE_RECEIVER, 256, 256 * 16),
            Bytes::from_static(b"garbage"),
            Bytes::from_static(&[KIND_IKNP_MATRIX, 1]),
            Bytes::new(),
        ];
        for f in cases {
            let (got, mut sender) = sender_after(vec![f.clone()]).await;
            assert!(
                matches!(got, Err(OtError::Protocol(_))),
                "{:?}: {got:?}",
                &f[..f.len().min(8)]
            );
            // Out of step now: refused, nothing received.
            let (a, _b) = MemLink::pair();
            assert!(matches!(
                sender.send(&a, 1).await,
                Err(OtError::InvalidArgument(_))
            ));
        }
        let (got, _) = sender_after(vec![Bytes::from_static(&[KIND_ABORT])]).await;
        assert!(matches!(got, Err(OtError::PeerAborted(_))), "{got:?}");
        // Too few blocks, then the receiver leaves.
        let (got, _) = sender_after(vec![matrix_frame(KIND_IKNP_MATRIX, 100, 100 * 16)]).await;
        assert!(matches!(got, Err(OtError::Link(_))), "{got:?}");
        // A well-formed matrix of the right size from a receiver with other keys is not an
        // error the sender can see: it outputs keys the receiver does not hold.
        let (got, _) = sender_after(vec![matrix_frame(KIND_IKNP_MATRIX, 256, 256 * 16)]).await;
        assert_eq!(got.expect("well-formed").len(), 200);
    }

    #[tokio::test]
    async fn random_garbage_never_panics() {
        let mut r = rng(15);
        for len in [1usize, 5, 21, 4101, 4096 + 5] {
            for _ in 0..10 {
                let mut bytes = vec![0u8; len];
                r.fill_bytes(&mut bytes);
                if r.next_u32() & 1 == 1 {
                    bytes[0] = KIND_IKNP_MATRIX;
                }
                let (got, _) = sender_after(vec![Bytes::from(bytes)]).await;
                assert!(got.is_err());
            }
        }
    }

    #[tokio::test]
    async fn receiver_reports_a_gone_sender() {
        let (a, b) = MemLink::pair();
        drop(a);
        let mut receiver = IknpReceiver::new(vec![[Block::ZERO; 2]; BASE_COUNT]).expect("r");
        let got = receiver.receive(&b, &[true; 10]).await;
        assert!(matches!(got, Err(OtError::Link(_))), "{got:?}");
        assert!(matches!(
            receiver.receive(&b, &[true]).await,
            Err(OtError::InvalidArgument(_))
        ));
    }
}
