//! Group operations of the protocol: hash to ristretto255, blinding with a secret scalar, and
//! re-blinding of the peer's compressed points; and the sender's release key, the AES-128
//! permutation that hides the doubly-blinded values until the sender releases them. Everything
//! here is synchronous and CPU-bound and is parallelised with rayon; callers run it off the
//! async runtime.

use std::fmt;

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

/// Domain-separation prefix hashed in front of every item: `H(x) = map(SHA-512(HASH_DOMAIN || x))`.
pub const HASH_DOMAIN: &[u8] = b"tessera-psi-v1\0";
/// Bytes of a compressed ristretto255 point on the wire.
pub const POINT_BYTES: usize = 32;
/// Bytes kept of a doubly-blinded value (a prefix of its canonical encoding); see the crate docs
/// for the collision bound.
pub const DOUBLE_BLINDED_BYTES: usize = 16;
/// Items per rayon task; each task compresses its points with one batched inversion.
const CHUNK_ITEMS: usize = 128;

/// A party's secret exponent `k`, with `k/2` precomputed: a point `P·(k/2)` is compressed with
/// [`RistrettoPoint::double_and_compress_batch`], which yields the encoding of `P·k` at the cost
/// of one field inversion per chunk instead of one square root per point.
///
/// Zeroized on drop; `Debug` prints `<redacted>`.
pub(crate) struct SecretKey {
    half: Scalar,
}

impl SecretKey {
    /// Draws a uniformly random non-zero scalar from `rng`.
    pub(crate) fn random<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut key = Scalar::random(rng);
        while key == Scalar::ZERO {
            key = Scalar::random(rng);
        }
        let half = key * Scalar::from(2u8).invert();
        key.zeroize();
        SecretKey { half }
    }
}

impl SecretKey {
    /// The key `k` as its canonical 32 bytes (to keep it in a file; wipe after use).
    pub(crate) fn to_bytes(&self) -> [u8; 32] {
        (self.half + self.half).to_bytes()
    }

    /// The key from [`SecretKey::to_bytes`]; `None` for a non-canonical or zero scalar.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let mut key: Scalar = Option::from(Scalar::from_canonical_bytes(*bytes))?;
        if key == Scalar::ZERO {
            return None;
        }
        let half = key * Scalar::from(2u8).invert();
        key.zeroize();
        Some(SecretKey { half })
    }

    /// The key `k⁻¹` (undoes a blinding with `k`).
    pub(crate) fn inverse(&self) -> Self {
        let mut key = self.half + self.half;
        let mut inv = key.invert();
        let half = inv * Scalar::from(2u8).invert();
        key.zeroize();
        inv.zeroize();
        SecretKey { half }
    }

    /// A copy of the key.
    pub(crate) fn clone_key(&self) -> Self {
        SecretKey { half: self.half }
    }

    /// `compress(G·k)`: a public commitment to the key (the base point's multiple).
    pub(crate) fn public_bytes(&self) -> [u8; 32] {
        let p = curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT * (self.half + self.half);
        p.compress().to_bytes()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.half.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Bytes of the sender's release key (an AES-128 key).
pub const RELEASE_KEY_BYTES: usize = 16;

/// The sender's release key `k`: each doubly-blinded value `v` goes on the wire as
/// `AES-128_k(v)` (one block; `v` is exactly [`DOUBLE_BLINDED_BYTES`] = 16 bytes), and `k` is
/// sent last, after the delivery point is recorded (crate docs, "Delivery point"). Before it, the
/// receiver holds only images of its values under a pseudo-random permutation it cannot
/// evaluate, so it can match none of them; after it, applying the permutation to its own side
/// (or its inverse to the sender's) gives exactly the comparisons of the unkeyed protocol.
///
/// Zeroized on drop (the AES key schedule too, by the `aes` crate's `zeroize` feature);
/// `Debug` prints `<redacted>`.
pub(crate) struct ReleaseKey {
    bytes: [u8; RELEASE_KEY_BYTES],
    cipher: Aes128,
}

impl ReleaseKey {
    /// Draws a uniformly random key from `rng`.
    pub(crate) fn random<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; RELEASE_KEY_BYTES];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The key received in a `Release` frame.
    pub(crate) fn from_bytes(bytes: [u8; RELEASE_KEY_BYTES]) -> Self {
        let cipher = Aes128::new(&bytes.into());
        ReleaseKey { bytes, cipher }
    }

    /// The key's bytes, for the `Release` frame.
    pub(crate) fn bytes(&self) -> &[u8; RELEASE_KEY_BYTES] {
        &self.bytes
    }

    /// Replaces each 16-byte value in `values` (a whole number of them) by its encryption.
    pub(crate) fn encrypt_in_place(&self, values: &mut [u8]) {
        values
            .par_chunks_mut(CHUNK_ITEMS * DOUBLE_BLINDED_BYTES)
            .for_each(|chunk| {
                for v in chunk.chunks_exact_mut(DOUBLE_BLINDED_BYTES) {
                    self.cipher.encrypt_block(v.into());
                }
            });
    }

    /// Encrypts (`encrypt`) or decrypts each value, read as the little-endian bytes of a `u128`.
    pub(crate) fn apply(&self, values: &mut [u128], encrypt: bool) {
        values.par_chunks_mut(CHUNK_ITEMS).for_each(|chunk| {
            for v in chunk {
                let mut block = v.to_le_bytes();
                if encrypt {
                    self.cipher.encrypt_block((&mut block).into());
                } else {
                    self.cipher.decrypt_block((&mut block).into());
                }
                *v = u128::from_le_bytes(block);
            }
        });
    }
}

impl Drop for ReleaseKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseKey(<redacted>)")
    }
}

/// Hashes one item to the group (domain-separated SHA-512, then the RFC 9496 one-way map).
pub(crate) fn hash_to_group(item: &[u8]) -> RistrettoPoint {
    RistrettoPoint::from_hash(Sha512::new().chain_update(HASH_DOMAIN).chain_update(item))
}

/// Items copied into one buffer, so that they can be moved to a worker thread cheaply.
#[derive(Default)]
pub(crate) struct FlatItems {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl fmt::Debug for FlatItems {
    /// Shows counts only: items are dataset keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatItems")
            .field("items", &self.ends.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl FlatItems {
    /// Copies `items[i]` for every `i` in `indices`, in that order.
    pub(crate) fn gather(items: &[Vec<u8>], indices: &[usize]) -> Self {
        let total = indices
            .iter()
            .map(|&i| items.get(i).map_or(0, Vec::len))
            .sum();
        let mut data = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(indices.len());
        for &i in indices {
            if let Some(item) = items.get(i) {
                data.extend_from_slice(item);
            }
            ends.push(data.len());
        }
        FlatItems { data, ends }
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.data.get(start..end).unwrap_or(&[])
    }
}

/// Writes `compress(H(item)·k)` for each item into `out` (`POINT_BYTES` each, in order).
/// `out.len()` must be `items.len() * POINT_BYTES`; extra output space is left untouched.
pub(crate) fn hash_and_blind(items: &FlatItems, key: &SecretKey, out: &mut [u8]) {
    out.par_chunks_mut(CHUNK_ITEMS * POINT_BYTES)
        .enumerate()
        .for_each(|(chunk, out)| {
            let start = chunk * CHUNK_ITEMS;
            let n = out.len() / POINT_BYTES;
            let points: Vec<RistrettoPoint> = (start..start + n)
                .map(|i| hash_to_group(items.get(i)) * key.half)
                .collect();
            write_doubled(&points, out, POINT_BYTES);
        });
}

/// A compressed point from the peer that is not a valid, non-identity group element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPoint {
    /// Index of the offending point in its batch.
    pub(crate) index: usize,
}

/// Decompresses each `POINT_BYTES` encoding in `input`, multiplies it by `k`, and writes the
/// first `width` bytes of the result's encoding to `out` (in order). `out.len()` must be
/// `input.len() / POINT_BYTES * width`.
pub(crate) fn reblind(
    input: &[u8],
    key: &SecretKey,
    out: &mut [u8],
    width: usize,
) -> Result<(), BadPoint> {
    out.par_chunks_mut(CHUNK_ITEMS * width)
        .zip(input.par_chunks(CHUNK_ITEMS * POINT_BYTES))
        .enumerate()
        .try_for_each(|(chunk, (out, input))| {
            let points = input
                .chunks_exact(POINT_BYTES)
                .enumerate()
                .map(|(j, enc)| {
                    decode_point(enc).map(|p| p * key.half).ok_or(BadPoint {
                        index: chunk * CHUNK_ITEMS + j,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            write_doubled(&points, out, width);
            Ok(())
        })
}

/// Decodes a canonical, non-identity compressed point.
fn decode_point(enc: &[u8]) -> Option<RistrettoPoint> {
    let p = CompressedRistretto::from_slice(enc).ok()?.decompress()?;
    (p != RistrettoPoint::identity()).then_some(p)
}

/// Writes the first `width` bytes of `compress(2·P)` for each point, consecutively.
fn write_doubled(points: &[RistrettoPoint], out: &mut [u8], width: usize) {
    let encoded = RistrettoPoint::double_and_compress_batch(points);
    for (dst, enc) in out.chunks_exact_mut(width).zip(&encoded) {
        dst.copy_from_slice(&enc.as_bytes()[..width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        out
    }

    /// RFC 9496, appendix A.3 (one-way map): the first two vectors. The same vectors appear in
    /// draft-irtf-cfrg-ristretto255-decaf448-04 A.3 and in curve25519-dalek's own test suite.
    #[test]
    fn one_way_map_known_answers() {
        let vectors = [
            (
                "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1\
                 4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
                "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46",
            ),
            (
                "f116b34b8f17ceb56e8732a60d913dd10cce47a6d53bee9204be8b44f6678b27\
                 0102a56902e2488c46120e9276cfe54638286b9e4b3cdb470b542d46c2068d38",
                "f26e5b6f7d362d2d2a94c5d0e7602cb4773c95a2e5c31a64f133189fa76ed61b",
            ),
        ];
        for (input, output) in vectors {
            let input: String = input.split_whitespace().collect();
            let p = RistrettoPoint::from_uniform_bytes(&unhex::<64>(&input));
            assert_eq!(p.compress().to_bytes(), unhex::<32>(output));
        }
    }

    #[test]
    fn hash_is_domain_separated() {
        let plain = RistrettoPoint::hash_from_bytes::<Sha512>(b"alice");
        let mut prefixed = HASH_DOMAIN.to_vec();
        prefixed.extend_from_slice(b"alice");
        assert_ne!(hash_to_group(b"alice"), plain);
        assert_eq!(
            hash_to_group(b"alice"),
            RistrettoPoint::hash_from_bytes::<Sha512>(&prefixed)
        );
    }

    #[test]
    fn blinding_commutes_and_matches_plain_scalar_mult() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let a = SecretKey::random(&mut rng);
        let b = SecretKey::random(&mut rng);
        let words: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let idx: Vec<usize> = (0..words.len()).collect();
        let flat = FlatItems::gather(&words, &idx);
        let mut ha = vec![0u8; words.len() * POINT_BYTES];
        hash_and_blind(&flat, &a, &mut ha);
        let two = Scalar::from(2u8);
        for (i, w) in words.iter().enumerate() {
            let want = hash_to_group(w) * (a.half * two);
            assert_eq!(&ha[i * 32..i * 32 + 32], want.compress().as_bytes());
        }
        let mut hb = vec![0u8; words.len() * POINT_BYTES];
        hash_and_blind(&flat, &b, &mut hb);
        let mut hab = vec![0u8; words.len() * DOUBLE_BLINDED_BYTES];
        let mut hba = vec![0u8; words.len() * DOUBLE_BLINDED_BYTES];
        reblind(&ha, &b, &mut hab, DOUBLE_BLINDED_BYTES).expect("valid");
        reblind(&hb, &a, &mut hba, DOUBLE_BLINDED_BYTES).expect("valid");
        assert_eq!(hab, hba);
    }

    #[test]
    fn bad_points_are_rejected() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let k = SecretKey::random(&mut rng);
        let good = RistrettoPoint::random(&mut rng).compress().to_bytes();
        let identity = RistrettoPoint::identity().compress().to_bytes();
        let mut input = Vec::new();
        for _ in 0..200 {
            input.extend_from_slice(&good);
        }
        let mut out = vec![0u8; 200 * 16];
        assert!(reblind(&input, &k, &mut out, 16).is_ok());
        input[150 * 32..151 * 32].copy_from_slice(&identity);
        assert_eq!(
            reblind(&input, &k, &mut out, 16),
            Err(BadPoint { index: 150 })
        );
        input[150 * 32..151 * 32].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            reblind(&input, &k, &mut out, 16),
            Err(BadPoint { index: 150 })
        );
    }

    /// FIPS-197 appendix C.1 (AES-128): the release key is plain AES-128 on one block.
    #[test]
    fn release_key_is_aes_128() {
        let key = ReleaseKey::from_bytes(unhex::<16>("000102030405060708090a0b0c0d0e0f"));
        let mut block = unhex::<16>("00112233445566778899aabbccddeeff");
        key.encrypt_in_place(&mut block);
        assert_eq!(block, unhex::<16>("69c4e0d86a7b0430d8cdb78070b4c55a"));
        let mut values: Vec<u128> = (0..1000u128).map(|i| i * 0x1234_5678_9abc).collect();
        let orig = values.clone();
        key.apply(&mut values, true);
        assert_ne!(values, orig);
        let mut bytes: Vec<u8> = orig.iter().flat_map(|v| v.to_le_bytes()).collect();
        key.encrypt_in_place(&mut bytes);
        let via_bytes: Vec<u128> = bytes
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16")))
            .collect();
        assert_eq!(values, via_bytes, "both forms are the same permutation");
        key.apply(&mut values, false);
        assert_eq!(values, orig);
        assert_eq!(format!("{key:?}"), "ReleaseKey(<redacted>)");
    }

    #[test]
    fn secret_key_debug_is_redacted() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let k = SecretKey::random(&mut rng);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
    }
}
