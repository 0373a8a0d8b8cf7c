//! Noisy VOLE: a few VOLE correlations over GF(2^128) from 128 random OTs, by Gilboa's
//! bit-by-bit multiplication (N. Gilboa, "Two Party RSA Key Generation", CRYPTO 1999).
//!
//! # Construction
//!
//! The VOLE sender holds `Δ ∈ GF(2^128)`, the VOLE receiver holds `a ∈ GF(2^128)^count`.
//! Writing `Δ = Σ_i δ_i·x^i` (bit `i` of `u128::from(Δ)` is the coefficient of `x^i`, the
//! convention of [`Block::gf_mul`]; a unit test checks it), `a_j·Δ = Σ_i δ_i·(a_j·x^i)`. For
//! each bit `i` the two parties hold one random OT, the **VOLE receiver as OT sender** (keys
//! `k0_i, k1_i`) and the **VOLE sender as OT receiver with choice bit `δ_i`** (key `k_{δ_i}`).
//! With `G(k)` a PRG expanding a key to `count` blocks:
//!
//! * the receiver sends `u_{i,j} = G(k0_i)_j ⊕ G(k1_i)_j ⊕ a_j·x^i` for every `i`, `j` and
//!   outputs `C_j = Σ_i G(k0_i)_j`;
//! * the sender outputs `B_j = Σ_i (G(k_{δ_i})_j ⊕ δ_i·u_{i,j}) = Σ_i G(k0_i)_j ⊕ a_j·Δ`,
//!
//! so `C_j = B_j ⊕ a_j·Δ`, the crate's VOLE correlation. `G(k)_j = AES-128_k(j) ⊕ j` (AES in
//! counter mode keyed with the OT key, via `cryprot_core`'s `AesHash`; `AesRng` cannot be
//! seeded from here without the `rand` 0.10 traits, and the counter-mode stream is the same
//! PRG). The sender's selection of `u_{i,j}` is branch-free in `δ_i`.
//!
//! # Threat model
//!
//! Semi-honest. The VOLE sender sees only the `u_{i,j}`; each is masked by
//! `G(k_{1-δ_i})_j`, the output of a key it does not know, so under OT security and PRG
//! security it learns nothing about `a`. The VOLE receiver receives nothing and so learns
//! nothing about `Δ`. Each OT must be fresh and used for one noisy VOLE only. A malicious
//! receiver can send an inconsistent `u` (a different `a` per bit) and so make `B` depend on
//! `Δ` in ways it controls; nothing here detects it.
//!
//! # Bounds
//!
//! Exactly [`OT_COUNT`] (128) OTs; `1 ..= COUNT_MAX` correlations per call (the receiver's
//! message is `128 · count` blocks, 8 MiB at [`COUNT_MAX`]). Out-of-range arguments are
//! [`OtError::InvalidArgument`] before anything is allocated or sent.
//!
//! # Message flow
//!
//! 1. VOLE receiver → VOLE sender: [`wire::KIND_NOISY_VOLE`] frames carrying the `128 · count`
//!    blocks `u`, bit-major (`u[i·count + j] = u_{i,j}`).

use rand_core::RngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::wire::{self, KIND_NOISY_VOLE};
use crate::{Block, OtError};

/// OTs one noisy VOLE consumes: one per bit of `Δ`.
pub const OT_COUNT: usize = Block::BITS;

/// Most correlations one noisy VOLE produces; its message is `128 · COUNT_MAX` blocks (8 MiB).
pub const COUNT_MAX: usize = 1 << 12;

/// VOLE sender: holds `delta`; `ot_keys` are the 128 OT-receiver outputs whose choice bits are
/// the bits of `delta` (bit `i` = `(u128::from(delta) >> i) & 1`). Returns `B` (`count`
/// blocks) with `C[j] = B[j] ⊕ a[j]·delta` for the receiver's `a` and `C`.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `ot_keys.len() != 128` or `count` is not in
/// `1..=COUNT_MAX`; [`OtError::Protocol`] or [`OtError::PeerAborted`] on a bad or abort frame;
/// a link error.
pub async fn send(
    link: &dyn Link,
    delta: Block,
    ot_keys: &[Block],
    count: usize,
) -> Result<Vec<Block>, OtError> {
    check_count(count)?;
    check_ot_count(ot_keys.len())?;
    let u = wire::recv_blocks(link, KIND_NOISY_VOLE, OT_COUNT * count).await?;
    let delta_bits = u128::from(delta);
    let b = ot_keys
        .par_iter()
        .zip(u.par_chunks_exact(count))
        .enumerate()
        .map(|(i, (key, row))| {
            // All ones when bit i of Δ is set, without a branch on it.
            let mask = Block::from(0u128.wrapping_sub((delta_bits >> i) & 1));
            let mut acc = prg(*key, count);
            for (x, y) in acc.iter_mut().zip(row) {
                *x ^= *y & mask;
            }
            acc
        })
        .reduce(|| vec![Block::ZERO; count], xor_vectors);
    Ok(b)
}

/// VOLE receiver: holds `a` (`count = a.len()` values); `ots` are the 128 OT-sender pairs
/// matching the sender's keys. Returns `C` with `C[j] = B[j] ⊕ a[j]·delta`.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `ots.len() != 128` or `a.len()` is not in `1..=COUNT_MAX`;
/// a link error.
pub async fn receive(
    link: &dyn Link,
    a: &[Block],
    ots: &[[Block; 2]],
) -> Result<Vec<Block>, OtError> {
    let count = a.len();
    check_count(count)?;
    check_ot_count(ots.len())?;
    let mut u = vec![Block::ZERO; OT_COUNT * count];
    let c = u
        .par_chunks_exact_mut(count)
        .zip(ots.par_iter())
        .enumerate()
        .map(|(i, (row, [k0, k1]))| {
            let x_i = Block::from(1u128 << i);
            let g0 = prg(*k0, count);
            let mut g1 = prg(*k1, count);
            for (((u, x0), x1), aj) in row.iter_mut().zip(&g0).zip(&g1).zip(a) {
                *u = *x0 ^ *x1 ^ aj.gf_mul(&x_i);
            }
            wipe(&mut g1);
            g0
        })
        .reduce(|| vec![Block::ZERO; count], xor_vectors);
    wire::send_blocks(link, KIND_NOISY_VOLE, &u).await?;
    Ok(c)
}

/// `G(seed)`: `len` blocks `AES-128_seed(j) ⊕ j` (AES in counter mode keyed with `seed`).
fn prg(seed: Block, len: usize) -> Vec<Block> {
    let mut out = vec![Block::ZERO; len];
    crate::aes_ctr(&seed, 0, &mut out);
    out
}

/// XORs `b` into `a` (same length) and wipes `b`.
fn xor_vectors(mut a: Vec<Block>, mut b: Vec<Block>) -> Vec<Block> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x ^= *y;
    }
    wipe(&mut b);
    a
}

fn check_count(count: usize) -> Result<(), OtError> {
    if count == 0 || count > COUNT_MAX {
        return Err(OtError::InvalidArgument(format!(
            "noisy VOLE of {count} correlations; 1..={COUNT_MAX} allowed"
        )));
    }
    Ok(())
}

fn check_ot_count(ots: usize) -> Result<(), OtError> {
    if ots != OT_COUNT {
        return Err(OtError::InvalidArgument(format!(
            "noisy VOLE needs {OT_COUNT} OTs, got {ots}"
        )));
    }
    Ok(())
}

/// Overwrites secret blocks with zeros (volatile writes, not optimised away). Shared by the
/// PPRF and silent VOLE layers.
pub(crate) fn wipe(blocks: &mut [Block]) {
    bytemuck::cast_slice_mut::<Block, u8>(blocks).zeroize();
}

/// A uniformly random block from `rng`. Shared by the PPRF and silent VOLE layers.
pub(crate) fn random_block<R: RngCore + ?Sized>(rng: &mut R) -> Block {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    let block = Block::new(bytes);
    bytes.zeroize();
    block
}

/// A test-only OT dealer, shared with the PPRF and silent VOLE tests: random OTs whose
/// receiver learns `k_c` for its choice bit `c`. The real base OT and IKNP are wired in by the
/// orchestration layer.
#[cfg(test)]
pub(crate) fn deal_ots<R: RngCore>(rng: &mut R, choices: &[bool]) -> (Vec<[Block; 2]>, Vec<Block>) {
    let pairs: Vec<[Block; 2]> = choices
        .iter()
        .map(|_| [random_block(rng), random_block(rng)])
        .collect();
    let chosen = pairs
        .iter()
        .zip(choices)
        .map(|(p, &c)| p[usize::from(c)])
        .collect();
    (pairs, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use tessera_core::MemLink;

    use crate::wire::KIND_ABORT;

    async fn run(count: usize, seed: u64) -> (Block, Vec<Block>, Vec<Block>, Vec<Block>) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let delta = random_block(&mut rng);
        let a: Vec<Block> = (0..count).map(|_| random_block(&mut rng)).collect();
        let (pairs, keys) = deal_ots(&mut rng, &crate::block_bits(delta).collect::<Vec<_>>());
        let (ls, lr) = MemLink::pair();
        let (b, c) = tokio::join!(send(&ls, delta, &keys, count), receive(&lr, &a, &pairs));
        (delta, a, b.expect("sender"), c.expect("receiver"))
    }

    #[tokio::test]
    async fn correlation_holds() {
        for (count, seed) in [(1, 1), (5, 2), (300, 3)] {
            let (delta, a, b, c) = run(count, seed).await;
            assert_eq!(b.len(), count);
            assert_eq!(c.len(), count);
            for j in 0..count {
                assert_eq!(c[j], b[j] ^ a[j].gf_mul(&delta), "count {count}, j {j}");
            }
            assert!(b.iter().all(|x| *x != Block::ZERO));
        }
    }

    #[tokio::test]
    async fn outputs_differ_between_runs() {
        let (_, _, b1, c1) = run(5, 10).await;
        let (_, _, b2, c2) = run(5, 11).await;
        assert_ne!(b1, b2);
        assert_ne!(c1, c2);
    }

    #[test]
    fn bit_i_of_a_block_is_the_coefficient_of_x_to_the_i() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..20 {
            let a = random_block(&mut rng);
            let delta = random_block(&mut rng);
            let sum = crate::block_bits(delta)
                .enumerate()
                .filter(|(_, bit)| *bit)
                .fold(Block::ZERO, |acc, (i, _)| {
                    acc ^ a.gf_mul(&Block::from(1u128 << i))
                });
            assert_eq!(sum, a.gf_mul(&delta));
        }
        // x^1 · x^127 = x^128 = x^7 + x^2 + x + 1.
        let x = Block::from(2u128);
        assert_eq!(x.gf_mul(&Block::from(1u128 << 127)), Block::from(0x87u128));
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_before_sending() {
        let (ls, lr) = MemLink::pair();
        let keys = vec![Block::ZERO; OT_COUNT];
        let pairs = vec![[Block::ZERO; 2]; OT_COUNT];
        for count in [0, COUNT_MAX + 1] {
            assert!(matches!(
                send(&ls, Block::ONES, &keys, count).await,
                Err(OtError::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            send(&ls, Block::ONES, &keys[..127], 1).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &[], &pairs).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &vec![Block::ONE; COUNT_MAX + 1], &pairs).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &[Block::ONE], &pairs[..1]).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!(ls.stats().frames_sent + lr.stats().frames_sent, 0);
    }

    /// The sender's result after the peer sent `frames` and then dropped its end.
    async fn send_after(frames: Vec<Vec<u8>>, count: usize) -> Result<Vec<Block>, OtError> {
        let (ls, lr) = MemLink::pair();
        for f in frames {
            lr.send(Bytes::from(f)).await.expect("queue");
        }
        drop(lr);
        send(&ls, Block::ONES, &[Block::ONE; OT_COUNT], count).await
    }

    fn frame(kind: u8, items: u32, payload_bytes: usize) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&items.to_le_bytes());
        f.resize(f.len() + payload_bytes, 0xA5);
        f
    }

    #[tokio::test]
    async fn hostile_frames_are_typed_errors() {
        // Too many items for count 1 (the peer used count 2).
        let r = send_after(vec![frame(KIND_NOISY_VOLE, 256, 256 * 16)], 1).await;
        assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");
        // Too few: the peer stops after half and goes away.
        let r = send_after(vec![frame(KIND_NOISY_VOLE, 64, 64 * 16)], 1).await;
        assert!(matches!(r, Err(OtError::Link(_))), "{r:?}");
        // Garbage: wrong kind, short header, length not matching the count.
        let r = send_after(vec![frame(crate::wire::KIND_PPRF_LEVELS, 128, 128 * 16)], 1).await;
        assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");
        let r = send_after(vec![vec![KIND_NOISY_VOLE, 1]], 1).await;
        assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");
        let r = send_after(vec![frame(KIND_NOISY_VOLE, 128, 100)], 1).await;
        assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");
        // Abort, also after a first valid frame.
        let r = send_after(vec![vec![KIND_ABORT]], 1).await;
        assert!(matches!(r, Err(OtError::PeerAborted(_))), "{r:?}");
        let r = send_after(
            vec![frame(KIND_NOISY_VOLE, 100, 100 * 16), vec![KIND_ABORT]],
            1,
        )
        .await;
        assert!(matches!(r, Err(OtError::PeerAborted(_))), "{r:?}");
    }

    #[tokio::test]
    async fn receiver_reports_a_vanished_peer() {
        let (ls, lr) = MemLink::pair();
        drop(ls);
        let r = receive(&lr, &[Block::ONE], &[[Block::ZERO; 2]; OT_COUNT]).await;
        assert!(matches!(r, Err(OtError::Link(_))), "{r:?}");
    }
}
