//! Base OT: 1-out-of-2 random oblivious transfer from Diffie–Hellman over ristretto255, the
//! "Simplest OT" of Chou–Orlandi ("The Simplest Protocol for Oblivious Transfer", LATINCRYPT
//! 2015, §3, Figure 1), a few hundred at a time; it seeds the OT extension of [`crate::iknp`].
//!
//! Entry points: [`send`] (the OT **sender**, who gets two keys per OT) and [`receive`] (the OT
//! **receiver**, who gets the key of its choice). Both parties must agree on the number of OTs
//! from the outer protocol; it is never sent.
//!
//! # Protocol
//!
//! With `G` the ristretto255 generator and `H` the key hash below, for `n` OTs:
//!
//! 1. Sender: draws a secret non-zero scalar `a`, sends `A = a·G`.
//! 2. Receiver, for each OT `i` with choice bit `c_i`: draws a secret scalar `b_i`, sends
//!    `B_i = b_i·G + c_i·A`, and keeps `k_{c_i} = H(i, A, B_i, b_i·A)`.
//! 3. Sender, for each `i`: `k0_i = H(i, A, B_i, a·B_i)` and `k1_i = H(i, A, B_i, a·(B_i − A))`.
//!
//! For `c_i = 0`, `a·B_i = b_i·A`; for `c_i = 1`, `a·(B_i − A) = b_i·A`: the receiver's key is
//! the sender's key at its choice. The outputs are *random* OTs: the keys are uniformly random
//! 128-bit strings (in the random-oracle model), not messages chosen by the sender; a caller
//! that needs chosen messages masks them with the keys.
//!
//! `H(i, A, B, P)` is BLAKE3 in key-derivation mode with the context [`KEY_CONTEXT`], over
//! `i` (u64 little-endian) ‖ `A` ‖ `B` ‖ `P` (points as 32-byte compressed encodings, so every
//! field has a fixed width), truncated to 128 bits. Binding `i` keeps equal points in two OTs
//! from giving equal keys; binding `A` ties the keys to this run.
//!
//! # Threat model
//!
//! Semi-honest, as the rest of the crate ([`crate`]). Under the computational Diffie–Hellman
//! assumption in ristretto255 with `H` modelled as a random oracle:
//!
//! * the **sender** learns nothing about the choice bits: each `B_i` is a uniformly random group
//!   element whatever `c_i` is (perfectly hiding);
//! * the **receiver** learns `k_{c_i}` and nothing about `k_{1−c_i}`: the hashed point of the
//!   other key is `b_i·A ∓ a·A`, and `a·A = a²·G` is a Diffie–Hellman value it cannot compute;
//! * both learn `n`.
//!
//! Not secure against a malicious party: a malicious receiver can choose `B_i` to correlate keys
//! across OTs, and the paper's own proof for active security has known gaps; only use this as a
//! semi-honest building block. Secret scalars live in zeroize-on-drop wrappers and nothing secret
//! is printed in `Debug` (this module's items hold no state). Scalar multiplications on secrets
//! are constant time (curve25519-dalek); the receiver's `c_i·A` is a fixed-base multiplication
//! by the scalar 0 or 1 from a table of `A`, not a branch.
//!
//! # Peer data and bounds
//!
//! At most [`BASE_OT_MAX`] OTs per call, refused with [`OtError::InvalidArgument`] before
//! anything is sent or allocated. Points from the peer must be canonical encodings of a
//! non-identity point, else [`OtError::Protocol`]; the receiver's frames must carry exactly `n`
//! points ([`crate::wire::recv_items`]). For `n = 0` nothing is sent and both sides return an
//! empty vector.
//!
//! # Message flow
//!
//! 1. Sender → receiver: one frame of kind [`KIND_BASE_SENDER`] with one 32-byte item, `A`.
//! 2. Receiver → sender: frames of kind [`KIND_BASE_RECEIVER`] with `n` 32-byte items in all,
//!    `B_0 … B_{n−1}` in order.
//!
//! The group operations run on rayon's global pool ([`crate::offload`]), so the async executor is
//! not blocked while a few thousand scalar multiplications run.

use cryprot_core::random_oracle::RandomOracle;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroizing;

use crate::wire::{KIND_BASE_RECEIVER, KIND_BASE_SENDER, recv_items, send_items};
use crate::{Block, OtError, offload};

/// The most base OTs one call runs (both sides): bounds the receiver's message
/// (`32 · BASE_OT_MAX` = 128 KiB) and the work per call.
pub const BASE_OT_MAX: usize = 4096;

/// BLAKE3 key-derivation context of the key hash `H` (see the module docs).
pub const KEY_CONTEXT: &str = "tessera-ot 2025 base OT (Chou-Orlandi, ristretto255) key v1";

/// Bytes of a compressed ristretto255 point on the wire.
const POINT_BYTES: usize = 32;

/// Sender: runs `count` random OTs and returns, for each OT `i`, the two keys `[k0, k1]`.
///
/// The peer must call [`receive`] with `count` choice bits.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `count > BASE_OT_MAX` (nothing sent); [`OtError::Protocol`]
/// if the receiver's frames are malformed or carry a non-canonical or identity point;
/// [`OtError::PeerAborted`] on an abort frame; a link error.
pub async fn send<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    count: usize,
) -> Result<Vec<[Block; 2]>, OtError> {
    check_count(count)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let a = Zeroizing::new(nonzero_scalar(rng));
    let big_a = RistrettoPoint::mul_base(&a).compress();
    send_items(link, KIND_BASE_SENDER, POINT_BYTES, big_a.as_bytes()).await?;
    let points = recv_items(link, KIND_BASE_RECEIVER, POINT_BYTES, count).await?;
    offload(move || sender_keys(&a, &big_a, &points)).await
}

/// Receiver: runs `choices.len()` random OTs and returns `k_{choices[i]}` for each OT `i`.
///
/// The peer must call [`send`] with `count = choices.len()`.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `choices.len() > BASE_OT_MAX` (nothing sent);
/// [`OtError::Protocol`] if the sender's frame is malformed or its point non-canonical or the
/// identity; [`OtError::PeerAborted`] on an abort frame; a link error.
pub async fn receive<R: CryptoRngCore + Send>(
    link: &dyn Link,
    rng: &mut R,
    choices: &[bool],
) -> Result<Vec<Block>, OtError> {
    check_count(choices.len())?;
    if choices.is_empty() {
        return Ok(Vec::new());
    }
    let scalars: Zeroizing<Vec<Scalar>> =
        Zeroizing::new(choices.iter().map(|_| Scalar::random(rng)).collect());
    let bits: Zeroizing<Vec<u8>> = Zeroizing::new(choices.iter().map(|&c| u8::from(c)).collect());
    let sender_point = recv_items(link, KIND_BASE_SENDER, POINT_BYTES, 1).await?;
    let (big_a, a_point) = decode_point(&sender_point, "the sender's point")?;
    let (points, keys) = offload(move || receiver_points(&big_a, &a_point, &scalars, &bits)).await;
    send_items(link, KIND_BASE_RECEIVER, POINT_BYTES, &points).await?;
    Ok(keys)
}

fn check_count(count: usize) -> Result<(), OtError> {
    if count > BASE_OT_MAX {
        return Err(OtError::InvalidArgument(format!(
            "{count} base OTs requested, at most {BASE_OT_MAX} per call"
        )));
    }
    Ok(())
}

/// A uniformly random non-zero scalar (zero has probability 2^-252; redrawn all the same, so
/// `A` is never the identity the receiver would refuse).
fn nonzero_scalar<R: CryptoRngCore>(rng: &mut R) -> Scalar {
    loop {
        let s = Scalar::random(rng);
        if s != Scalar::ZERO {
            return s;
        }
    }
}

/// Decodes a peer's point: exactly 32 bytes, a canonical encoding, not the identity.
fn decode_point(
    bytes: &[u8],
    what: &str,
) -> Result<(CompressedRistretto, RistrettoPoint), OtError> {
    let compressed = CompressedRistretto::from_slice(bytes)
        .map_err(|_| OtError::Protocol(format!("{what} is not {POINT_BYTES} bytes")))?;
    let point = compressed.decompress().ok_or_else(|| {
        OtError::Protocol(format!("{what} is not a canonical ristretto255 encoding"))
    })?;
    if point == RistrettoPoint::identity() {
        return Err(OtError::Protocol(format!("{what} is the identity")));
    }
    Ok((compressed, point))
}

/// The key hash `H(i, A, B, P)` (module docs).
fn key_hash(
    index: usize,
    big_a: &CompressedRistretto,
    big_b: &CompressedRistretto,
    shared: &RistrettoPoint,
) -> Block {
    let shared = Zeroizing::new(shared.compress().to_bytes());
    let mut h = RandomOracle::new_derive_key(KEY_CONTEXT);
    h.update(&(index as u64).to_le_bytes());
    h.update(big_a.as_bytes());
    h.update(big_b.as_bytes());
    h.update(shared.as_slice());
    let digest = h.finalize();
    let mut key = [0u8; Block::BYTES];
    key.copy_from_slice(&digest.as_bytes()[..Block::BYTES]);
    Block::new(key)
}

/// The sender's keys from the receiver's points (step 3), in parallel.
fn sender_keys(
    a: &Scalar,
    big_a: &CompressedRistretto,
    points: &[u8],
) -> Result<Vec<[Block; 2]>, OtError> {
    // a·(B − A) = a·B − a·A: one variable-base multiplication per OT.
    let a_times_a = Zeroizing::new(RistrettoPoint::mul_base(a) * a);
    points
        .par_chunks_exact(POINT_BYTES)
        .enumerate()
        .map(|(i, bytes)| {
            let (big_b, b_point) = decode_point(bytes, "a receiver's point")?;
            let p0 = Zeroizing::new(b_point * a);
            let p1 = Zeroizing::new(*p0 - *a_times_a);
            Ok([
                key_hash(i, big_a, &big_b, &p0),
                key_hash(i, big_a, &big_b, &p1),
            ])
        })
        .collect()
}

/// The receiver's points `B_i` (concatenated encodings) and keys `k_{c_i}` (step 2).
fn receiver_points(
    big_a: &CompressedRistretto,
    a_point: &RistrettoPoint,
    scalars: &[Scalar],
    bits: &[u8],
) -> (Vec<u8>, Vec<Block>) {
    let table = RistrettoBasepointTable::create(a_point);
    let (points, keys): (Vec<[u8; POINT_BYTES]>, Vec<Block>) = scalars
        .par_iter()
        .zip(bits.par_iter())
        .enumerate()
        .map(|(i, (b, &c))| {
            // c·A from the table of A: constant time in c, no branch on the choice.
            let c_times_a = Zeroizing::new(&Scalar::from(c) * &table);
            let big_b = (RistrettoPoint::mul_base(b) + *c_times_a).compress();
            let shared = Zeroizing::new(b * &table);
            (big_b.to_bytes(), key_hash(i, big_a, &big_b, &shared))
        })
        .unzip();
    (points.concat(), keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{HEADER_BYTES, KIND_ABORT};
    use bytes::Bytes;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use tessera_core::MemLink;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn random_choices(count: usize, seed: u64) -> Vec<bool> {
        let mut r = rng(seed);
        (0..count).map(|_| r.next_u32() & 1 == 1).collect()
    }

    async fn run(count: usize, seed: u64) -> (Vec<[Block; 2]>, Vec<Block>, Vec<bool>) {
        let (a, b) = MemLink::pair();
        let choices = random_choices(count, seed);
        let (mut ra, mut rb) = (rng(seed + 1), rng(seed + 2));
        let (sent, received) =
            tokio::join!(send(&a, &mut ra, count), receive(&b, &mut rb, &choices));
        (sent.expect("send"), received.expect("receive"), choices)
    }

    #[tokio::test]
    async fn receiver_gets_the_key_of_its_choice_only() {
        for (count, seed) in [(1, 10), (128, 20), (300, 30)] {
            let (sent, received, choices) = run(count, seed).await;
            assert_eq!(sent.len(), count);
            assert_eq!(received.len(), count);
            for ((pair, key), &c) in sent.iter().zip(&received).zip(&choices) {
                assert_eq!(*key, pair[usize::from(c)], "count {count}");
                assert_ne!(*key, pair[usize::from(!c)], "count {count}");
            }
            assert!(count < 128 || (choices.contains(&true) && choices.contains(&false)));
            let mut all: Vec<u128> = sent.iter().flatten().map(u128::from).collect();
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 2 * count, "keys are distinct");
        }
    }

    #[tokio::test]
    async fn zero_ots_send_nothing() {
        let (a, b) = MemLink::pair();
        let (mut ra, mut rb) = (rng(1), rng(2));
        let (sent, received) = tokio::join!(send(&a, &mut ra, 0), receive(&b, &mut rb, &[]));
        assert!(sent.expect("send").is_empty());
        assert!(received.expect("receive").is_empty());
        assert_eq!(a.stats().frames_sent + b.stats().frames_sent, 0);
    }

    #[tokio::test]
    async fn too_many_ots_are_refused_before_sending() {
        let (a, b) = MemLink::pair();
        assert!(matches!(
            send(&a, &mut rng(1), BASE_OT_MAX + 1).await,
            Err(OtError::InvalidArgument(_))
        ));
        let choices = vec![false; BASE_OT_MAX + 1];
        assert!(matches!(
            receive(&b, &mut rng(2), &choices).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!(a.stats().frames_sent + b.stats().frames_sent, 0);
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (a, _b) = MemLink::pair();
        let mut r = rng(1);
        let f = send(&a, &mut r, 1);
        assert_send(&f);
        drop(f);
        let f = receive(&a, &mut r, &[true]);
        assert_send(&f);
    }

    fn frame(kind: u8, items: &[&[u8]]) -> Bytes {
        let mut f = vec![kind];
        f.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for item in items {
            f.extend_from_slice(item);
        }
        Bytes::from(f)
    }

    /// Non-canonical encodings: a negative field element, `p` itself, all ones.
    fn non_canonical() -> Vec<[u8; 32]> {
        let mut negative = [0u8; 32];
        negative[0] = 1;
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        vec![negative, p, [0xff; 32]]
    }

    /// The receiver's result when the "sender" sends `frames` instead of `A`.
    async fn receiver_after(frames: Vec<Bytes>) -> Result<Vec<Block>, OtError> {
        let (a, b) = MemLink::pair();
        for f in frames {
            a.send(f).await.expect("send");
        }
        drop(a);
        receive(&b, &mut rng(3), &[true, false]).await
    }

    #[tokio::test]
    async fn receiver_refuses_a_bad_sender_point() {
        let generator = RISTRETTO_BASEPOINT_POINT.compress().to_bytes();
        let identity = [0u8; 32];
        let mut cases = vec![
            frame(KIND_BASE_SENDER, &[&generator[..31]]),
            frame(KIND_BASE_SENDER, &[&[&generator[..], &[0u8][..]].concat()]),
            frame(KIND_BASE_SENDER, &[&identity]),
            frame(KIND_BASE_SENDER, &[&generator, &generator]),
            frame(KIND_BASE_RECEIVER, &[&generator]),
            Bytes::from_static(&[KIND_BASE_SENDER, 1, 0]),
            Bytes::from_static(&[0x13, 0x37, 0, 0, 0, 9]),
            Bytes::new(),
        ];
        for bad in non_canonical() {
            cases.push(frame(KIND_BASE_SENDER, &[&bad]));
        }
        for f in cases {
            let got = receiver_after(vec![f.clone()]).await;
            assert!(matches!(got, Err(OtError::Protocol(_))), "{f:?}: {got:?}");
        }
        assert!(matches!(
            receiver_after(vec![Bytes::from_static(&[KIND_ABORT])]).await,
            Err(OtError::PeerAborted(_))
        ));
        // The sender goes away before sending anything.
        assert!(matches!(
            receiver_after(vec![]).await,
            Err(OtError::Link(_))
        ));
    }

    /// The sender's result for 3 OTs when the "receiver" answers `A` with `frames`, then leaves.
    async fn sender_after(frames: Vec<Bytes>) -> Result<Vec<[Block; 2]>, OtError> {
        let (a, b) = MemLink::pair();
        let peer = async move {
            let first = b.recv().await.expect("A");
            assert_eq!(first.len(), HEADER_BYTES + POINT_BYTES);
            for f in frames {
                b.send(f).await.expect("send");
            }
        };
        let mut r = rng(4);
        let (got, ()) = tokio::join!(send(&a, &mut r, 3), peer);
        got
    }

    #[tokio::test]
    async fn sender_refuses_bad_receiver_points() {
        let g = RISTRETTO_BASEPOINT_POINT.compress().to_bytes();
        let identity = [0u8; 32];
        let mut cases = vec![
            // More points than agreed, in one frame.
            frame(KIND_BASE_RECEIVER, &[&g, &g, &g, &g]),
            // An identity among them.
            frame(KIND_BASE_RECEIVER, &[&g, &identity, &g]),
            // A short item.
            frame(KIND_BASE_RECEIVER, &[&g, &g, &g[..31]]),
            // The wrong kind, garbage, empty.
            frame(KIND_BASE_SENDER, &[&g, &g, &g]),
            Bytes::from_static(b"\x41garbage"),
            Bytes::from_static(&[0xff; 40]),
            Bytes::new(),
        ];
        for bad in non_canonical() {
            cases.push(frame(KIND_BASE_RECEIVER, &[&g, &g, &bad]));
        }
        for f in cases {
            let got = sender_after(vec![f.clone()]).await;
            assert!(matches!(got, Err(OtError::Protocol(_))), "{f:?}: {got:?}");
        }
        // More points than agreed, over two frames.
        let got = sender_after(vec![
            frame(KIND_BASE_RECEIVER, &[&g, &g]),
            frame(KIND_BASE_RECEIVER, &[&g, &g]),
        ])
        .await;
        assert!(matches!(got, Err(OtError::Protocol(_))), "{got:?}");
        // Fewer points than agreed, then the receiver leaves.
        let got = sender_after(vec![frame(KIND_BASE_RECEIVER, &[&g, &g])]).await;
        assert!(matches!(got, Err(OtError::Link(_))), "{got:?}");
        assert!(matches!(
            sender_after(vec![Bytes::from_static(&[KIND_ABORT, 0])]).await,
            Err(OtError::PeerAborted(_))
        ));
    }

    #[tokio::test]
    async fn random_garbage_never_panics() {
        let mut r = rng(99);
        for len in [1usize, 5, 6, 37, 69, 200] {
            for _ in 0..20 {
                let mut bytes = vec![0u8; len];
                r.fill_bytes(&mut bytes);
                // Half of the cases with a plausible header.
                if r.next_u32() & 1 == 1 {
                    bytes[0] = KIND_BASE_SENDER;
                }
                let got = receiver_after(vec![Bytes::from(bytes.clone())]).await;
                assert!(got.is_err());
                bytes[0] = KIND_BASE_RECEIVER;
                let got = sender_after(vec![Bytes::from(bytes)]).await;
                assert!(got.is_err());
            }
        }
    }
}
