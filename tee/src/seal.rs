//! Datasets sealed at rest: AES-256-GCM under a per-dataset 256-bit key, in 1 MiB chunks
//! (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár, CRYPTO 2015), so that
//! sealing and opening hold one chunk in memory whatever the file's size.
//!
//! ```text
//! header = "TSEAL" | version 0x01 | chunk_log2 (20) | salt (16 random) | nonce prefix (7 random)
//! file key = HKDF-SHA256(salt, dataset key, info = "tessera-tee/seal/v1")
//! chunk i = AES-256-GCM(file key, nonce = prefix || u32be(i) || last (0 or 1),
//!                       aad = header || "tessera-tee/dataset/v1" || u64be(len id) || id || u64be(version))
//! ```
//!
//! Every chunk but the last holds exactly `2^chunk_log2` plaintext bytes; the last (perhaps
//! empty) is flagged, so truncation, reordering, a swapped header and another dataset's or
//! version's file all fail to authenticate. The random salt gives each file its own key, so
//! nonces never repeat under one key. When streaming out, chunks are written as they
//! authenticate: a caller must discard the output if [`open_stream`] fails.

use std::io::{Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand_chacha_09::ChaCha20Rng;
use rand_core_09::{RngCore, SeedableRng};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::SealError;

/// First bytes of a sealed file.
pub const SEAL_MAGIC: &[u8; 5] = b"TSEAL";
/// Format version.
pub const SEAL_VERSION: u8 = 1;
/// log2 of the chunk size written (1 MiB).
pub const CHUNK_LOG2: u8 = 20;
const HEADER_BYTES: usize = 5 + 1 + 1 + 16 + 7;
const TAG_BYTES: usize = 16;

/// A dataset's 256-bit key. Zeroised on drop; `Debug` does not show it.
#[derive(Clone)]
pub struct DatasetKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatasetKey(..)")
    }
}

impl DatasetKey {
    /// From 32 bytes (from a CSPRNG, or unwrapped).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DatasetKey(Zeroizing::new(bytes))
    }

    /// The key bytes (for wrapping).
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn dataset_ad(dataset_id: &str, version: u64) -> Vec<u8> {
    let mut ad = b"tessera-tee/dataset/v1".to_vec();
    ad.extend_from_slice(&(dataset_id.len() as u64).to_be_bytes());
    ad.extend_from_slice(dataset_id.as_bytes());
    ad.extend_from_slice(&version.to_be_bytes());
    ad
}

struct Stream {
    cipher: Aes256Gcm,
    prefix: [u8; 7],
    aad: Vec<u8>,
}

impl Stream {
    fn new(key: &DatasetKey, header: &[u8; HEADER_BYTES], dataset_id: &str, version: u64) -> Self {
        let salt = &header[7..23];
        let mut prefix = [0u8; 7];
        prefix.copy_from_slice(&header[23..30]);
        let mut file_key = Zeroizing::new([0u8; 32]);
        // 32 bytes is a valid HKDF-SHA256 output length; expand cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(salt), key.expose_bytes().as_slice())
            .expand(b"tessera-tee/seal/v1", file_key.as_mut_slice());
        let mut aad = header.to_vec();
        aad.extend_from_slice(&dataset_ad(dataset_id, version));
        Stream {
            cipher: Aes256Gcm::new(file_key.as_slice().into()),
            prefix,
            aad,
        }
    }

    fn nonce(&self, counter: u32, last: bool) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..7].copy_from_slice(&self.prefix);
        n[7..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = u8::from(last);
        n
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals `input` into `output` in 1 MiB chunks; randomness (salt and nonce prefix) from
/// `seed`. Returns the plaintext bytes sealed.
///
/// # Errors
/// [`SealError::Io`], [`SealError::TooLarge`] past 2^32 chunks.
pub fn seal_stream(
    key: &DatasetKey,
    dataset_id: &str,
    version: u64,
    input: &mut impl Read,
    output: &mut impl Write,
    seed: [u8; 32],
) -> Result<u64, SealError> {
    seal_stream_chunked(key, dataset_id, version, input, output, seed, CHUNK_LOG2)
}

/// [`seal_stream`] with another chunk size, `2^chunk_log2` bytes (10 ..= 20); for tests of
/// the chunking on small inputs.
///
/// # Errors
/// As [`seal_stream`]; [`SealError::Format`] for a chunk size out of range.
pub fn seal_stream_chunked(
    key: &DatasetKey,
    dataset_id: &str,
    version: u64,
    input: &mut impl Read,
    output: &mut impl Write,
    seed: [u8; 32],
    chunk_log2: u8,
) -> Result<u64, SealError> {
    if !(10..=20).contains(&chunk_log2) {
        return Err(SealError::Format("chunk size out of range"));
    }
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut header = [0u8; HEADER_BYTES];
    header[..5].copy_from_slice(SEAL_MAGIC);
    header[5] = SEAL_VERSION;
    header[6] = chunk_log2;
    rng.fill_bytes(&mut header[7..30]);
    output.write_all(&header)?;
    let stream = Stream::new(key, &header, dataset_id, version);
    let chunk = 1usize << chunk_log2;
    // One chunk plus one byte of look-ahead, to know which chunk is the last.
    let mut buf = Zeroizing::new(vec![0u8; chunk + 1]);
    let mut have = read_full(input, &mut buf[..])?;
    let mut counter: u32 = 0;
    let mut total: u64 = 0;
    loop {
        let last = have <= chunk;
        let len = have.min(chunk);
        let ct = stream
            .cipher
            .encrypt(
                Nonce::from_slice(&stream.nonce(counter, last)),
                Payload {
                    msg: &buf[..len],
                    aad: &stream.aad,
                },
            )
            .map_err(|_| SealError::Authentication)?;
        output.write_all(&ct)?;
        total += len as u64;
        if last {
            break;
        }
        // Carry the look-ahead byte to the front and refill.
        buf[0] = buf[chunk];
        have = 1 + read_full(input, &mut buf[1..])?;
        counter = counter.checked_add(1).ok_or(SealError::TooLarge)?;
    }
    output.flush()?;
    Ok(total)
}

/// Opens a sealed stream into `output`; returns the plaintext bytes. On an error the output
/// written so far must be discarded.
///
/// # Errors
/// [`SealError::Format`], [`SealError::Authentication`] (wrong key, dataset or version,
/// tampering, truncation), [`SealError::Io`].
pub fn open_stream(
    key: &DatasetKey,
    dataset_id: &str,
    version: u64,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<u64, SealError> {
    let mut header = [0u8; HEADER_BYTES];
    if read_full(input, &mut header)? != HEADER_BYTES || &header[..5] != SEAL_MAGIC {
        return Err(SealError::Format("no sealed-dataset header"));
    }
    if header[5] != SEAL_VERSION {
        return Err(SealError::Format("unknown version"));
    }
    let chunk_log2 = header[6];
    if !(10..=20).contains(&chunk_log2) {
        return Err(SealError::Format("chunk size out of range"));
    }
    let stream = Stream::new(key, &header, dataset_id, version);
    let sealed_chunk = (1usize << chunk_log2) + TAG_BYTES;
    let mut buf = vec![0u8; sealed_chunk + 1];
    let mut have = read_full(input, &mut buf[..])?;
    let mut counter: u32 = 0;
    let mut total: u64 = 0;
    loop {
        let last = have <= sealed_chunk;
        let len = have.min(sealed_chunk);
        let pt = Zeroizing::new(
            stream
                .cipher
                .decrypt(
                    Nonce::from_slice(&stream.nonce(counter, last)),
                    Payload {
                        msg: &buf[..len],
                        aad: &stream.aad,
                    },
                )
                .map_err(|_| SealError::Authentication)?,
        );
        output.write_all(&pt)?;
        total += pt.len() as u64;
        if last {
            break;
        }
        buf[0] = buf[sealed_chunk];
        have = 1 + read_full(input, &mut buf[1..])?;
        counter = counter.checked_add(1).ok_or(SealError::TooLarge)?;
    }
    output.flush()?;
    Ok(total)
}

/// Seals bytes in memory (see [`seal_stream`]).
///
/// # Errors
/// As [`seal_stream`].
pub fn seal(
    key: &DatasetKey,
    dataset_id: &str,
    version: u64,
    plaintext: &[u8],
    seed: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(plaintext.len() + HEADER_BYTES + TAG_BYTES);
    seal_stream(
        key,
        dataset_id,
        version,
        &mut &plaintext[..],
        &mut out,
        seed,
    )?;
    Ok(out)
}

/// Opens bytes in memory (see [`open_stream`]).
///
/// # Errors
/// As [`open_stream`].
pub fn open(
    key: &DatasetKey,
    dataset_id: &str,
    version: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(sealed.len());
    open_stream(key, dataset_id, version, &mut &sealed[..], &mut out)?;
    Ok(out)
}
