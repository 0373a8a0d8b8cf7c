//! The masks' PRG: AES-128 in counter mode (`aes`, hardware AES where the CPU has it), expanded
//! straight into wrapping additions on `u32` / `u64` words, split across the rayon pool by
//! ranges of the vector.
//!
//! Stream for a 16-byte seed `s`: block `j` (j = 0, 1, …) is `AES-128_s(j as u128, big-endian)`;
//! its 16 bytes are read as little-endian words (four `u32` or two `u64`), so word `i` of the
//! stream is a pure function of `(s, i)` and any range can be expanded on its own. Each seed is
//! used for exactly one stream (the seeds are derived per pair and per session, see `keys`).

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use rayon::prelude::*;

use crate::keys::Seed;

/// Words of the vector per rayon task (256 KiB of `u32`, 512 KiB of `u64`: fits L2).
const CHUNK_WORDS: usize = 1 << 16;
/// AES blocks encrypted per call (the backend pipelines them).
const BATCH_BLOCKS: usize = 64;

/// A ring element of `Z_{2^32}` or `Z_{2^64}`.
pub trait Word: Copy + Send + Sync + Default + Eq + std::fmt::Debug + 'static {
    /// Bytes per word.
    const BYTES: usize;
    /// Little-endian decoding of exactly `BYTES` bytes.
    fn from_le(b: &[u8]) -> Self;
    /// Little-endian encoding appended to `out`.
    fn put_le(self, out: &mut Vec<u8>);
    /// `self + o` modulo `2^(8·BYTES)`.
    fn add(self, o: Self) -> Self;
    /// `self - o` modulo `2^(8·BYTES)`.
    fn sub(self, o: Self) -> Self;
    /// From a `u64` (truncating for `u32`: callers check the range first).
    fn from_u64(v: u64) -> Self;
    /// As a `u64`.
    fn to_u64(self) -> u64;
    /// `words[j] ±= word j of block` for the (up to `16 / BYTES`) words of one AES block,
    /// written with fixed offsets so that it vectorises.
    fn apply_block(words: &mut [Self], block: &[u8; 16], sign: Sign);
}

impl Word for u32 {
    const BYTES: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        u32::from_le_bytes(a)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    fn from_u64(v: u64) -> Self {
        v as u32
    }
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
    fn apply_block(words: &mut [Self], b: &[u8; 16], sign: Sign) {
        for (j, a) in words.iter_mut().enumerate().take(4) {
            let o = 4 * j;
            let w = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            *a = match sign {
                Sign::Add => a.wrapping_add(w),
                Sign::Sub => a.wrapping_sub(w),
            };
        }
    }
}

impl Word for u64 {
    const BYTES: usize = 8;
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    fn from_u64(v: u64) -> Self {
        v
    }
    fn to_u64(self) -> u64 {
        self
    }
    fn apply_block(words: &mut [Self], b: &[u8; 16], sign: Sign) {
        for (j, a) in words.iter_mut().enumerate().take(2) {
            let o = 8 * j;
            let w = u64::from_le_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ]);
            *a = match sign {
                Sign::Add => a.wrapping_add(w),
                Sign::Sub => a.wrapping_sub(w),
            };
        }
    }
}

/// Whether a mask is added to or subtracted from the vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// `acc += PRG(seed)`.
    Add,
    /// `acc -= PRG(seed)`.
    Sub,
}

impl Sign {
    /// The opposite sign.
    pub fn opposite(self) -> Sign {
        match self {
            Sign::Add => Sign::Sub,
            Sign::Sub => Sign::Add,
        }
    }
}

/// One mask to apply: the AES key schedule of its seed and its sign.
pub(crate) struct Mask {
    cipher: Aes128,
    sign: Sign,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mask")
            .field("sign", &self.sign)
            .finish_non_exhaustive()
    }
}

impl Mask {
    pub(crate) fn new(seed: &Seed, sign: Sign) -> Mask {
        Mask {
            cipher: Aes128::new(GenericArray::from_slice(seed.expose())),
            sign,
        }
    }
}

/// Applies every mask to `acc` (`acc ±= PRG(seed)` elementwise, modulo the word size), in
/// parallel over ranges of `acc`. Cost: `masks.len() · acc.len() · W::BYTES / 16` AES blocks.
pub(crate) fn apply_masks<W: Word>(acc: &mut [W], masks: &[Mask]) {
    if masks.is_empty() {
        return;
    }
    acc.par_chunks_mut(CHUNK_WORDS)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for m in masks {
                expand_range(m, chunk, ci.saturating_mul(CHUNK_WORDS));
            }
        });
}

/// `chunk ±= PRG words [start, start + chunk.len())`; `start` is a multiple of the words per
/// block (CHUNK_WORDS is), so the chunk begins on a block boundary.
fn expand_range<W: Word>(m: &Mask, chunk: &mut [W], start: usize) {
    let words_per_block = 16 / W::BYTES;
    let mut counter = (start / words_per_block) as u128;
    let mut blocks = [GenericArray::default(); BATCH_BLOCKS];
    let words_per_batch = BATCH_BLOCKS * words_per_block;
    for out in chunk.chunks_mut(words_per_batch) {
        let nblocks = out.len().div_ceil(words_per_block);
        let blocks = &mut blocks[..nblocks];
        for b in blocks.iter_mut() {
            *b = GenericArray::from(counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        m.cipher.encrypt_blocks(blocks);
        for (words, b) in out.chunks_mut(words_per_block).zip(blocks.iter()) {
            let block: [u8; 16] = (*b).into();
            W::apply_block(words, &block, m.sign);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> Seed {
        Seed::from_bytes([b; 16])
    }

    #[test]
    fn add_then_sub_is_identity_and_ranges_agree() {
        // A vector longer than one chunk with a ragged tail: the parallel split must give the
        // same stream as one sequential expansion.
        let n = CHUNK_WORDS * 2 + 7;
        let mut a = vec![0u32; n];
        apply_masks(&mut a, &[Mask::new(&seed(1), Sign::Add)]);
        let mut seq = vec![0u32; n];
        expand_range(&Mask::new(&seed(1), Sign::Add), &mut seq, 0);
        assert_eq!(a, seq);
        assert!(a.iter().filter(|&&w| w == 0).count() < 3);
        apply_masks(&mut a, &[Mask::new(&seed(1), Sign::Sub)]);
        assert!(a.iter().all(|&w| w == 0));
    }

    #[test]
    fn first_block_is_aes_of_counter_zero() {
        // Known answer: FIPS-197 Appendix C.1 has key 00..0f on plaintext 00112233..; here we
        // check the construction against a direct AES call on counter 0 and 1.
        let s = seed(9);
        let c = Aes128::new(GenericArray::from_slice(s.expose()));
        let mut b0 = GenericArray::from(0u128.to_be_bytes());
        let mut b1 = GenericArray::from(1u128.to_be_bytes());
        c.encrypt_block(&mut b0);
        c.encrypt_block(&mut b1);
        let mut w = vec![0u64; 4];
        apply_masks(&mut w, &[Mask::new(&s, Sign::Add)]);
        assert_eq!(w[0], <u64 as Word>::from_le(&b0[..8]));
        assert_eq!(w[1], <u64 as Word>::from_le(&b0[8..]));
        assert_eq!(w[2], <u64 as Word>::from_le(&b1[..8]));
        assert_eq!(w[3], <u64 as Word>::from_le(&b1[8..]));
    }
}
