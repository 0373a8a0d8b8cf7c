//! ECDH-OPRF PSI for unbalanced sets (protocol `ecdh-oprf`): the larger party's set is encoded
//! once under a key of its own and reused, the smaller party pays for its own set only.
//!
//! # Construction
//!
//! The Diffie–Hellman OPRF `F_k(x) = BLAKE3(context ‖ compress(H(x)·k))[..16]` over
//! ristretto255 (`H` is the hash to the group of [`crate::ecdh`]; Jarecki–Liu, TCC 2009), in the
//! unbalanced setting of Kiss et al. (PETS 2017) and Kales et al. (USENIX Security 2019): the
//! **key holder** `K` is the party with the larger distinct set (the sender on a tie), the
//! **querier** `Q` the other; both decide it from the sizes in their `Hello` frames, so the
//! protocol's direction follows the data.
//!
//! * `K`'s encodings `F_k(y)` of its own set are an [`EncodedSet`]: computed once (hash to the
//!   group and one scalar multiplication per item), kept sorted and distinct, written to a file
//!   and read back for later runs (Tessera's provider workers keep one per licence and dataset
//!   content: [`EncodedSet::write`], [`EncodedSet::read`]).
//! * `Q` learns `F_k` of its items obliviously: it sends `H(x)·a` for a fresh `a`, `K` answers
//!   `H(x)·a·k`, `Q` multiplies by `a⁻¹`.
//!
//! **Sender holds the key** (the provider's set is the large one): `S → R` `Set` (the encoded
//! set's id and size, and the rows of its [`QueryIndex`] if it has one); `R → S` `Have`: that
//! `R` keeps that set from an earlier run (in the directory its caller names), wants it, or
//! will look its values up (below); `R → S` its blinded items; `S → R` its encodings if `R`
//! wants them (`R` writes them to that directory as they come: its memory stays bounded); `S`
//! records the delivery, then sends the answers `H(x)·a·k`; `R` unblinds, and either streams
//! the encodings from its file against its own values or, for a lookup, runs
//! [`crate::oprf_query`]'s homomorphic query of the sender's index with them; `R → S` `Done`.
//! `R` chooses ([`Lookup`]): a kept copy first, else by default whichever of the copy and the
//! lookup moves fewer bytes ([`crate::oprf_query::lookup_bytes_estimate`] against 16 bytes per
//! sender item): the lookup for a small set against a large one (about 12 MB for 1,000 items
//! against 10⁷, where the copy is 160 MB), the copy when the receiver's set is large enough
//! that its tables' answers outweigh it, or when it will run again against the same set.
//!
//! **Receiver holds the key** (the buyer's set is the large one): `S → R` its blinded items;
//! `R → S` the answers; `S` unblinds, sorts its `F_k(y)` (hiding its input order), records the
//! delivery and sends them; `R` compares them with `F_k` of its own items; `R → S` `Done`.
//!
//! So the smaller party computes `O(own set)` group operations; with the sender holding the
//! key, the receiver also receives the sender's encodings (16 bytes per distinct item) once
//! per encoded set, and nothing of them on later runs against the same set — or, with a
//! lookup, a few ciphertexts per table instead, and the sender evaluates them against its
//! index (`O(n_S)` cheap plaintext products per table, seconds at 10⁷).
//!
//! # Delivery point
//!
//! The sender's last message gives the receiver its output: the answers (sender holds the key;
//! the encodings alone match nothing, since the receiver cannot compute `F_k` without `k`; a
//! lookup comes after them), or its encodings (receiver holds the key). The sender asks its [`crate::DeliveryGate`] before it
//! and sends it only if the delivery is recorded.
//!
//! # Threat model and what each party learns
//!
//! Semi-honest parties, the Diffie–Hellman assumptions of [`crate::ecdh`] (one-more gap
//! Diffie–Hellman for the OPRF; `H` a random oracle). The receiver learns the intersection and
//! the sender's distinct set size; the sender learns the receiver's distinct set size. Encodings
//! are sorted and distinct, so their order and multiplicity tell nothing of the holder's file.
//! A key that is reused (a sender's encoded set kept across runs): a receiver that runs `m` jobs
//! learns `F_k` on the union of its `m` inputs — what the `m` runs allow it anyway —, and can
//! recognise the same encoded set across runs. Reusing one encoded set after its items changed
//! would let a receiver that kept both see which encodings came and went: a holder must make a
//! new set (a new key) when its data changes, and must never use one set for two receivers that
//! may not pool what they learn (Tessera: one per licence and dataset content). A false match
//! needs two 128-bit encodings to collide: probability below `n_R · n_S · 2⁻¹²⁸`. A lookup
//! tells the receiver no more than the copy would (what it learns of the sender's encodings,
//! and its own false-match bound, are in [`crate::oprf_query`]).

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::common::{
    check_input, compute, distinct_indices, exchange_hello, peer_set_size, to_array,
};
use crate::crypto::{FlatItems, POINT_BYTES, SecretKey, hash_and_blind, reblind};
use crate::oprf_query::{QueryIndex, lookup_bytes_estimate};
use crate::wire::{BATCH_HEADER_BYTES, Frame, new_batch};
use crate::{
    DeliveryGate, Mode, PHASE_BLIND, PHASE_EXCHANGE, PHASE_HASH, PHASE_MATCH, Progress, Protocol,
    PsiConfig, PsiError, ReceiverOutput, Role, SET_ITEMS_MAX, SenderOutput,
};

/// Bytes of one encoding `F_k(x)` (the width of [`crate::ecdh`]'s values, whose helpers it
/// shares).
pub const ENCODING_BYTES: usize = crate::crypto::DOUBLE_BLINDED_BYTES;
/// BLAKE3 context of `F_k(x)` from `compress(H(x)·k)`.
const ENCODING_CONTEXT: &str = "tessera-psi ecdh-oprf encoding v1";
/// BLAKE3 context of an encoded set's id.
const SET_ID_CONTEXT: &str = "tessera-psi ecdh-oprf set id v1";
/// Frame kind: the key holder's encoded set (`0x0C | id 16 bytes | count u64 | index rows
/// u32`, rows 0 when it offers no lookup).
const KIND_SET: u8 = 0x0C;
/// Frame kind: what the receiver does about that set (`0x0D | HAVE_*`).
const KIND_HAVE: u8 = 0x0D;
/// `Have`: send me the set.
const HAVE_NONE: u8 = 0;
/// `Have`: I keep the set.
const HAVE_KEPT: u8 = 1;
/// `Have`: I will look my values up in your index.
const HAVE_LOOKUP: u8 = 2;
/// Bytes of a `Set` frame.
const SET_FRAME_BYTES: usize = 1 + 16 + 8 + 4;
/// Magic of an encoded set's file.
const FILE_MAGIC: &[u8; 8] = b"TOPRFS01";
/// Items hashed and blinded per task while an encoded set is built.
const BUILD_CHUNK_ITEMS: usize = 1 << 14;
/// Encodings per frame the key holder sends (1 MiB of encodings).
const ENCODINGS_PER_FRAME: usize = 1 << 16;

type Encoding = [u8; ENCODING_BYTES];

/// How a receiver without a copy of the sender's encoded set learns which of its values the
/// set holds (with the sender holding the key; a kept copy is always used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lookup {
    /// Whichever moves fewer bytes in this run (the lookup only if the sender offers one).
    #[default]
    Auto,
    /// Receive the set and keep it for later runs.
    Copy,
    /// Look the values up in the sender's index ([`crate::oprf_query`]); an error if the
    /// sender offers none.
    Query,
}

fn encoding_of(point: &[u8]) -> Encoding {
    let mut h = blake3::Hasher::new_derive_key(ENCODING_CONTEXT);
    h.update(point);
    let mut out = [0u8; ENCODING_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..ENCODING_BYTES]);
    out
}

/// A key holder's set encoded under its OPRF key: the key and the sorted, distinct encodings
/// `F_k(y)`. `Debug` shows the size only.
pub struct EncodedSet {
    key: SecretKey,
    encodings: Vec<Encoding>,
    id: [u8; 16],
}

impl std::fmt::Debug for EncodedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedSet({} encodings)", self.encodings.len())
    }
}

/// Builds an [`EncodedSet`] from items fed in batches, in memory: 16 bytes per item.
pub struct EncodedSetBuilder {
    key: SecretKey,
    encodings: Vec<Encoding>,
}

impl std::fmt::Debug for EncodedSetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedSetBuilder({} encodings)", self.encodings.len())
    }
}

impl EncodedSetBuilder {
    /// Encodes `items` (any number; CPU-bound, parallel on the rayon pool: call it off the
    /// async runtime).
    ///
    /// # Errors
    /// [`PsiError::TooLarge`] past [`SET_ITEMS_MAX`] items or for an item over
    /// [`crate::ITEM_BYTES_MAX`].
    pub fn add(&mut self, items: &[Vec<u8>]) -> Result<(), PsiError> {
        check_input(items)?;
        if self.encodings.len() + items.len() > SET_ITEMS_MAX {
            return Err(PsiError::TooLarge {
                what: "encoded set size",
                len: (self.encodings.len() + items.len()) as u64,
                max: SET_ITEMS_MAX as u64,
            });
        }
        for chunk in items.chunks(BUILD_CHUNK_ITEMS) {
            let indices: Vec<usize> = (0..chunk.len()).collect();
            let flat = FlatItems::gather(chunk, &indices);
            let mut points = vec![0u8; chunk.len() * POINT_BYTES];
            hash_and_blind(&flat, &self.key, &mut points);
            let encoded: Vec<Encoding> = points.par_chunks(POINT_BYTES).map(encoding_of).collect();
            self.encodings.extend(encoded);
        }
        Ok(())
    }

    /// The encoded set: encodings sorted, duplicates removed.
    pub fn finish(self) -> EncodedSet {
        let mut encodings = self.encodings;
        encodings.par_sort_unstable();
        encodings.dedup();
        let id = set_id(&self.key, &encodings);
        EncodedSet {
            key: self.key,
            encodings,
            id,
        }
    }
}

/// The id of an encoded set: BLAKE3 of its key's public commitment and its encodings.
fn set_id(key: &SecretKey, encodings: &[Encoding]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key(SET_ID_CONTEXT);
    h.update(&key.public_bytes());
    h.update(&(encodings.len() as u64).to_le_bytes());
    for e in encodings {
        h.update(e);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

impl EncodedSet {
    /// A builder under a fresh key drawn from `rng`.
    pub fn builder<R: CryptoRngCore + ?Sized>(rng: &mut R) -> EncodedSetBuilder {
        EncodedSetBuilder {
            key: SecretKey::random(rng),
            encodings: Vec::new(),
        }
    }

    /// Distinct items encoded.
    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.encodings.is_empty()
    }

    /// The set's id (what a receiver keeping it is asked about).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Builds this set's [`QueryIndex`] into `path` (see [`QueryIndex::build`]: CPU-bound,
    /// call it off the async runtime; `progress(rows done, rows)`, an error from it stops the
    /// build).
    ///
    /// # Errors
    /// As [`QueryIndex::build`].
    pub fn build_query_index(
        &self,
        path: &Path,
        progress: &dyn Fn(u64, u64) -> Result<(), PsiError>,
    ) -> Result<QueryIndex, PsiError> {
        QueryIndex::build(&self.encodings, self.id, path, progress)
    }

    /// Writes the set, **its secret key included**, to `path` (created mode 0600 on Unix;
    /// written to a temporary file, synced and renamed): `TOPRFS01 | key 32 | count u64 |
    /// encodings | BLAKE3 of all before`.
    ///
    /// # Errors
    /// [`PsiError::Storage`].
    pub fn write(&self, path: &Path) -> Result<(), PsiError> {
        let mut key = self.key.to_bytes();
        let out = write_set_file(path, Some(&key), &self.encodings);
        key.zeroize();
        out
    }

    /// Reads a set [`EncodedSet::write`] wrote. `None` if `path` does not exist.
    ///
    /// # Errors
    /// [`PsiError::Storage`] for a file that cannot be read or is damaged (wrong magic, size or
    /// digest, an invalid key, unsorted encodings).
    pub fn read(path: &Path) -> Result<Option<EncodedSet>, PsiError> {
        let Some((key, encodings)) = read_set_file(path, true)? else {
            return Ok(None);
        };
        let damaged = || PsiError::Storage(format!("{}: damaged encoded set", path.display()));
        let mut key_bytes = key.ok_or_else(damaged)?;
        let key = SecretKey::from_bytes(&key_bytes).ok_or_else(damaged);
        key_bytes.zeroize();
        let key = key?;
        let id = set_id(&key, &encodings);
        Ok(Some(EncodedSet { key, encodings, id }))
    }
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> PsiError {
    PsiError::Storage(format!("{what} {}: {e}", path.display()))
}

/// Writes a set file (the key holder's, with its key; or a receiver's copy, without).
/// Creates (or truncates) the file at `path`, mode 0600: the set files and their parts.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

fn write_set_file(
    path: &Path,
    key: Option<&[u8; 32]>,
    encodings: &[Encoding],
) -> Result<(), PsiError> {
    let tmp = path.with_extension("tmp");
    let io = (|| -> std::io::Result<()> {
        let f = create_private(&tmp)?;
        let mut w = BufWriter::new(f);
        let mut h = blake3::Hasher::new();
        let mut put = |w: &mut BufWriter<std::fs::File>, b: &[u8]| -> std::io::Result<()> {
            h.update(b);
            w.write_all(b)
        };
        put(&mut w, FILE_MAGIC)?;
        put(&mut w, &[u8::from(key.is_some())])?;
        if let Some(k) = key {
            put(&mut w, k)?;
        }
        put(&mut w, &(encodings.len() as u64).to_le_bytes())?;
        for e in encodings {
            put(&mut w, e)?;
        }
        let digest = h.finalize();
        w.write_all(digest.as_bytes())?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    io.map_err(|e| storage("writing", path, e))
}

type SetFile = (Option<[u8; 32]>, Vec<Encoding>);

/// What a scan of a set file found: its key (if it holds one) and its count.
type Scanned = (Option<[u8; 32]>, u64);

/// Encodings read at once while a set file is scanned (1 MiB).
const SCAN_CHUNK_ENCODINGS: usize = 1 << 16;

/// Reads a set file whole into memory (see [`scan_set_file`]).
fn read_set_file(path: &Path, with_key: bool) -> Result<Option<SetFile>, PsiError> {
    let mut encodings = Vec::new();
    let scanned = scan_set_file(path, with_key, |chunk| {
        encodings.extend(chunk.chunks_exact(ENCODING_BYTES).map(to_array));
        Ok(())
    })?;
    Ok(scanned.map(|(key, _)| (key, encodings)))
}

/// Reads a set file chunk by chunk, handing each chunk of encodings to `each`, and checks it
/// whole: magic, kind (with or without a key), size, strictly ascending encodings, digest.
/// Returns the key and the count; `None` if `path` does not exist. A damaged file is an error
/// after `each` may have seen part of it.
fn scan_set_file(
    path: &Path,
    with_key: bool,
    mut each: impl FnMut(&[u8]) -> Result<(), PsiError>,
) -> Result<Option<Scanned>, PsiError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(storage("opening", path, e)),
    };
    let len = f.metadata().map_err(|e| storage("reading", path, e))?.len();
    let damaged = || PsiError::Storage(format!("{}: damaged encoded set", path.display()));
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = blake3::Hasher::new();
    let header = 8 + 1 + if with_key { 32 } else { 0 } + 8;
    if len < header + 32 {
        return Err(damaged());
    }
    let mut head = vec![0u8; header as usize];
    r.read_exact(&mut head)
        .map_err(|e| storage("reading", path, e))?;
    h.update(&head);
    if &head[..8] != FILE_MAGIC || head[8] != u8::from(with_key) {
        return Err(damaged());
    }
    let key = with_key.then(|| {
        let mut k = [0u8; 32];
        k.copy_from_slice(&head[9..41]);
        k
    });
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[head.len() - 8..]);
    head.zeroize();
    let count = u64::from_le_bytes(n);
    if count > SET_ITEMS_MAX as u64 || len != header + count * ENCODING_BYTES as u64 + 32 {
        return Err(damaged());
    }
    let mut left = count as usize;
    let mut last: Option<Encoding> = None;
    let mut buf = vec![0u8; SCAN_CHUNK_ENCODINGS.min(left.max(1)) * ENCODING_BYTES];
    while left > 0 {
        let take = left.min(SCAN_CHUNK_ENCODINGS);
        let chunk = &mut buf[..take * ENCODING_BYTES];
        r.read_exact(chunk)
            .map_err(|e| storage("reading", path, e))?;
        h.update(chunk);
        for c in chunk.chunks_exact(ENCODING_BYTES) {
            let cur = to_array(c);
            if last.is_some_and(|l| l >= cur) {
                return Err(damaged());
            }
            last = Some(cur);
        }
        each(chunk)?;
        left -= take;
    }
    let mut digest = [0u8; 32];
    r.read_exact(&mut digest)
        .map_err(|e| storage("reading", path, e))?;
    if digest != *h.finalize().as_bytes() {
        return Err(damaged());
    }
    Ok(Some((key, count)))
}

/// Which side holds the key, from the two distinct set sizes: the larger one (the sender on
/// a tie). Only with the sender holding it is there a copy or a lookup ([`Lookup`]).
pub fn sender_holds_key(sender: usize, receiver: usize) -> bool {
    sender >= receiver
}

/// The receiver's side of `ecdh-oprf`: learns which of its distinct `items` the sender holds.
/// With the sender holding the key, the sender's encodings go to `dir` (a file named by the
/// set's id, kept: a later run against the same set receives none of them), unless `lookup`
/// (see [`Lookup`]) has the values looked up in the sender's index instead.
///
/// # Errors
/// As [`crate::run_receiver`]; [`PsiError::Storage`] for the encodings' file;
/// [`PsiError::InvalidConfig`] for [`Lookup::Query`] against a sender that offers no index.
pub async fn run_receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    dir: &Path,
    cfg: &PsiConfig,
    lookup: Lookup,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let result = receiver(link, items, dir, cfg, lookup, rng, progress).await;
    if let Err(e) = &result {
        crate::common::notify_peer(link, e).await;
    }
    result
}

/// The sender's side of `ecdh-oprf` with its prepared `encoded` set and, if it has one, that
/// set's `index` (offered to the receiver for a lookup); `items` gives its items (called, off
/// the runtime, only when the receiver's set is the larger one and the sender must query its
/// own). `gate` is asked once, before the answers to the receiver's items.
///
/// # Errors
/// As [`crate::run_sender_reporting_delivery`]; [`PsiError::InvalidConfig`] when `items`
/// gives a set of another size than `encoded`, or `index` is another set's.
#[allow(clippy::too_many_arguments)]
pub async fn run_sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    encoded: &EncodedSet,
    index: Option<&QueryIndex>,
    items: Box<dyn FnOnce() -> Result<Vec<Vec<u8>>, PsiError> + Send>,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    let result = sender(link, encoded, index, items, cfg, rng, progress, gate).await;
    if let Err(e) = &result {
        crate::common::notify_peer(link, e).await;
    }
    result
}

/// Items per frame: the protocol and mode checked, then the batch as [`crate::ecdh`]'s (a
/// points frame must fit the link).
fn batch_for(cfg: &PsiConfig, link: &dyn Link) -> Result<usize, PsiError> {
    if cfg.protocol != Protocol::EcdhOprf || cfg.mode != Mode::Intersection {
        return Err(PsiError::InvalidConfig(
            "ecdh-oprf runs protocol ecdh-oprf in intersection mode".into(),
        ));
    }
    crate::ecdh::effective_batch(cfg, link)
}

async fn recv(link: &dyn Link) -> Result<Bytes, PsiError> {
    Ok(link.recv().await?)
}

/// Parses a frame of one of this module's own kinds, or reports what came instead.
pub(crate) fn own_frame(frame: Bytes, kind: u8, expected: &str) -> Result<Bytes, PsiError> {
    if frame.first() == Some(&kind) {
        return Ok(frame);
    }
    Err(match Frame::parse(frame)? {
        Frame::Abort(reason) => PsiError::PeerAborted { reason },
        other => crate::common::unexpected(other, expected),
    })
}

async fn recv_points(
    link: &dyn Link,
    batch_max: usize,
    remaining: usize,
) -> Result<(usize, Bytes), PsiError> {
    match crate::common::recv_frame(link).await? {
        Frame::Points { count: 0, .. } => {
            Err(PsiError::Protocol("an empty batch of points".into()))
        }
        Frame::Points { count, payload } => {
            crate::ecdh::check_count(count, batch_max, remaining, "points")?;
            Ok((count, payload))
        }
        other => Err(crate::common::unexpected(other, "points")),
    }
}

/// Sends `H(x)·key` for the items at `order`, in frames of `batch`.
async fn send_blinded(
    link: &dyn Link,
    items: &[Vec<u8>],
    order: &[usize],
    batch: usize,
    key: &Arc<SecretKey>,
    progress: &dyn Progress,
) -> Result<(), PsiError> {
    let total = order.len() as u64;
    let mut done = 0u64;
    for chunk in order.chunks(batch.max(1)) {
        let flat = FlatItems::gather(items, chunk);
        let key = Arc::clone(key);
        let frame = compute(move || {
            let mut frame = new_batch(true, flat.len(), POINT_BYTES);
            if let Some(out) = frame.get_mut(BATCH_HEADER_BYTES..) {
                hash_and_blind(&flat, &key, out);
            }
            frame.freeze()
        })
        .await?;
        link.send(frame).await?;
        done += chunk.len() as u64;
        progress.report(PHASE_HASH, done, total);
    }
    Ok(())
}

/// Answers `total` blinded points with `key`, each batch multiplied: sent back at once with
/// `send_now`, else returned in order (to be sent after the delivery point).
async fn answer_points(
    link: &dyn Link,
    key: &Arc<SecretKey>,
    total: usize,
    batch_max: usize,
    send_now: bool,
    progress: &dyn Progress,
) -> Result<Vec<Bytes>, PsiError> {
    let mut answers = Vec::new();
    let mut received = 0usize;
    while received < total {
        let (count, payload) = recv_points(link, batch_max, total - received).await?;
        let key = Arc::clone(key);
        let frame = compute(move || {
            let mut frame = new_batch(true, count, POINT_BYTES);
            let out = frame.get_mut(BATCH_HEADER_BYTES..).unwrap_or_default();
            reblind(&payload, &key, out, POINT_BYTES).map_err(|e| {
                PsiError::Protocol(format!(
                    "point {} of a batch is not a valid group element",
                    e.index
                ))
            })?;
            Ok::<_, PsiError>(frame.freeze())
        })
        .await??;
        received += count;
        progress.report(PHASE_BLIND, received as u64, total as u64);
        if send_now {
            link.send(frame).await?;
        } else {
            answers.push(frame);
        }
    }
    Ok(answers)
}

/// Receives `total` answered points and unblinds them with `inverse`: `F_k` of each, in order.
async fn unblind_answers(
    link: &dyn Link,
    inverse: &Arc<SecretKey>,
    total: usize,
    batch_max: usize,
) -> Result<Vec<Encoding>, PsiError> {
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let (count, payload) = recv_points(link, batch_max, total - out.len()).await?;
        let inverse = Arc::clone(inverse);
        let encoded = compute(move || {
            let mut points = vec![0u8; count * POINT_BYTES];
            reblind(&payload, &inverse, &mut points, POINT_BYTES).map_err(|e| {
                PsiError::Protocol(format!(
                    "answered point {} of a batch is not a valid group element",
                    e.index
                ))
            })?;
            Ok::<_, PsiError>(
                points
                    .par_chunks(POINT_BYTES)
                    .map(encoding_of)
                    .collect::<Vec<Encoding>>(),
            )
        })
        .await??;
        out.extend(encoded);
    }
    Ok(out)
}

/// Sends encodings in `Values` frames.
async fn send_encodings(
    link: &dyn Link,
    encodings: &[Encoding],
    progress: &dyn Progress,
) -> Result<(), PsiError> {
    let total = encodings.len() as u64;
    let mut sent = 0u64;
    for chunk in encodings.chunks(ENCODINGS_PER_FRAME) {
        let mut frame = new_batch(false, chunk.len(), ENCODING_BYTES);
        if let Some(out) = frame.get_mut(BATCH_HEADER_BYTES..) {
            for (dst, e) in out.chunks_exact_mut(ENCODING_BYTES).zip(chunk) {
                dst.copy_from_slice(e);
            }
        }
        link.send(frame.freeze()).await?;
        sent += chunk.len() as u64;
        progress.report(PHASE_EXCHANGE, sent, total);
    }
    Ok(())
}

/// Receives `total` encodings, strictly ascending (sorted and distinct, as a holder sends
/// them), and hands each frame's encodings to `sink`.
async fn recv_encodings(
    link: &dyn Link,
    total: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), PsiError>,
    progress: &dyn Progress,
) -> Result<(), PsiError> {
    let mut got = 0usize;
    let mut last: Option<Encoding> = None;
    while got < total {
        let (count, payload) = match crate::common::recv_frame(link).await? {
            Frame::Values { count, payload } => (count, payload),
            other => return Err(crate::common::unexpected(other, "encodings")),
        };
        if count == 0 || count > ENCODINGS_PER_FRAME || count > total - got {
            return Err(PsiError::Protocol(format!(
                "a batch of {count} encodings ({} still expected)",
                total - got
            )));
        }
        for e in payload.chunks_exact(ENCODING_BYTES) {
            let cur = to_array(e);
            if last.is_some_and(|l| l >= cur) {
                return Err(PsiError::Protocol(
                    "encodings not strictly ascending".into(),
                ));
            }
            last = Some(cur);
        }
        sink(&payload)?;
        got += count;
        progress.report(PHASE_EXCHANGE, got as u64, total as u64);
    }
    Ok(())
}

async fn receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    dir: &Path,
    cfg: &PsiConfig,
    lookup: Lookup,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let batch = batch_for(cfg, link)?;
    check_input(items)?;
    let distinct = distinct_indices(items).await;
    let own = distinct.len();
    let peer = exchange_hello(
        link,
        Protocol::EcdhOprf,
        Role::Receiver,
        cfg.mode,
        own,
        batch,
    )
    .await?;
    let peer_size = peer_set_size(&peer)?;
    let peer_batch = (peer.batch_items_max as usize).max(batch);
    let blind = Arc::new(SecretKey::random(rng));
    let common: Vec<usize> = if sender_holds_key(peer_size, own) {
        // The sender's set and id; do we keep it?
        let frame = own_frame(recv(link).await?, KIND_SET, "the encoded set")?;
        let (id, count, rows) = parse_set(&frame)?;
        if count != peer_size as u64 {
            return Err(PsiError::Protocol(format!(
                "an encoded set of {count} for a set of {peer_size}"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| storage("creating", dir, e))?;
        let path = dir.join(format!("{}.enc", hex(&id)));
        let kept = compute({
            let path = path.clone();
            move || kept_set(&path, count)
        })
        .await??;
        let copy_bytes = count.saturating_mul(ENCODING_BYTES as u64);
        let have = match lookup {
            _ if kept => HAVE_KEPT,
            Lookup::Query if rows == 0 => {
                return Err(PsiError::InvalidConfig(
                    "a lookup was asked for, and the sender offers no index".into(),
                ));
            }
            Lookup::Query => HAVE_LOOKUP,
            Lookup::Auto if rows > 0 && lookup_bytes_estimate(own, rows) < copy_bytes => {
                HAVE_LOOKUP
            }
            Lookup::Auto | Lookup::Copy => HAVE_NONE,
        };
        link.send(Bytes::from(vec![KIND_HAVE, have])).await?;
        let send = send_blinded(link, items, &distinct, batch, &blind, progress);
        let take = async {
            if have == HAVE_NONE {
                let tmp = path.with_extension("part");
                let f = create_private(&tmp).map_err(|e| storage("creating", &tmp, e))?;
                let mut w = BufWriter::new(f);
                recv_encodings(
                    link,
                    peer_size,
                    |bytes| w.write_all(bytes).map_err(|e| storage("writing", &tmp, e)),
                    progress,
                )
                .await?;
                let f = w
                    .into_inner()
                    .map_err(|e| storage("writing", &tmp, e.into_error()))?;
                drop(f);
                compute({
                    let (tmp, path) = (tmp.clone(), path.clone());
                    move || seal_received(&tmp, &path, count)
                })
                .await??;
            }
            Ok::<_, PsiError>(())
        };
        tokio::try_join!(send, take)?;
        let inverse = Arc::new(blind.inverse());
        let ours = unblind_answers(link, &inverse, own, peer_batch).await?;
        progress.report(PHASE_MATCH, 0, own as u64);
        let common = if have == HAVE_LOOKUP {
            crate::oprf_query::lookup(link, ours, rows, rng, progress).await?
        } else {
            compute(move || match_against_file(&path, &ours)).await??
        };
        common.into_iter().map(|k| distinct[k]).collect()
    } else {
        // We hold the key: answer the sender's points, encode our own set meanwhile.
        let key = Arc::new(SecretKey::random(rng));
        let encode = {
            let flat = FlatItems::gather(items, &distinct);
            let key = Arc::clone(&key);
            compute(move || {
                let mut points = vec![0u8; flat.len() * POINT_BYTES];
                hash_and_blind(&flat, &key, &mut points);
                points
                    .par_chunks(POINT_BYTES)
                    .map(encoding_of)
                    .collect::<Vec<Encoding>>()
            })
        };
        let (ours, _) = tokio::try_join!(
            encode,
            answer_points(link, &key, peer_size, peer_batch, true, progress)
        )?;
        let mut theirs: HashSet<Encoding> = HashSet::with_capacity(peer_size);
        recv_encodings(
            link,
            peer_size,
            |bytes| {
                theirs.extend(bytes.chunks_exact(ENCODING_BYTES).map(to_array));
                Ok(())
            },
            progress,
        )
        .await?;
        ours.iter()
            .enumerate()
            .filter(|(_, e)| theirs.contains(*e))
            .map(|(k, _)| distinct[k])
            .collect()
    };
    let mut common = common;
    common.sort_unstable();
    link.send(crate::wire::done_frame()).await?;
    progress.report(PHASE_MATCH, own as u64, own as u64);
    Ok(ReceiverOutput {
        intersection_size: common.len() as u64,
        sender_set_size: peer_size as u64,
        intersection: Some(common),
        payloads: None,
    })
}

fn parse_set(frame: &[u8]) -> Result<([u8; 16], u64, u32), PsiError> {
    let f: [u8; SET_FRAME_BYTES] = frame.try_into().map_err(|_| {
        PsiError::Protocol(format!(
            "a set frame of {} bytes ({SET_FRAME_BYTES})",
            frame.len()
        ))
    })?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&f[1..17]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&f[17..25]);
    let mut rows = [0u8; 4];
    rows.copy_from_slice(&f[25..29]);
    Ok((id, u64::from_le_bytes(n), u32::from_le_bytes(rows)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether the receiver's copy at `path` holds `count` encodings, whole.
fn kept_set(path: &Path, count: u64) -> Result<bool, PsiError> {
    match scan_set_file(path, false, |_| Ok(())) {
        Ok(Some((_, n))) => Ok(n == count),
        Ok(None) => Ok(false),
        Err(_) => {
            // A damaged copy is received again.
            let _ = std::fs::remove_file(path);
            Ok(false)
        }
    }
}

/// Turns the raw encodings received into `tmp` into the receiver's copy at `path` (read and
/// written in chunks: memory stays bounded).
fn seal_received(tmp: &Path, path: &Path, count: u64) -> Result<(), PsiError> {
    let f = std::fs::File::open(tmp).map_err(|e| storage("opening", tmp, e))?;
    let len = f.metadata().map_err(|e| storage("reading", tmp, e))?.len();
    if len != count * ENCODING_BYTES as u64 {
        return Err(PsiError::Storage(format!("{}: incomplete", tmp.display())));
    }
    let mut r = BufReader::with_capacity(1 << 20, f);
    let out_tmp = path.with_extension("tmp");
    let io = (|| -> std::io::Result<()> {
        let out = create_private(&out_tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut h = blake3::Hasher::new();
        let mut head = Vec::with_capacity(17);
        head.extend_from_slice(FILE_MAGIC);
        head.push(0);
        head.extend_from_slice(&count.to_le_bytes());
        h.update(&head);
        w.write_all(&head)?;
        let mut buf = vec![0u8; SCAN_CHUNK_ENCODINGS * ENCODING_BYTES];
        let mut left = len as usize;
        while left > 0 {
            let take = left.min(buf.len());
            r.read_exact(&mut buf[..take])?;
            h.update(&buf[..take]);
            w.write_all(&buf[..take])?;
            left -= take;
        }
        w.write_all(h.finalize().as_bytes())?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&out_tmp, path)
    })();
    io.map_err(|e| storage("writing", path, e))?;
    let _ = std::fs::remove_file(tmp);
    Ok(())
}

/// Indices into `ours` of the encodings the file at `path` holds.
fn match_against_file(path: &Path, ours: &[Encoding]) -> Result<Vec<usize>, PsiError> {
    let Some((_, theirs)) = read_set_file(path, false)? else {
        return Err(PsiError::Storage(format!("{}: missing", path.display())));
    };
    let by_value: HashMap<&Encoding, usize> =
        ours.iter().enumerate().map(|(i, e)| (e, i)).collect();
    let mut common: Vec<usize> = theirs
        .iter()
        .filter_map(|e| by_value.get(e).copied())
        .collect();
    common.sort_unstable();
    Ok(common)
}

#[allow(clippy::too_many_arguments)]
async fn sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    encoded: &EncodedSet,
    index: Option<&QueryIndex>,
    items: Box<dyn FnOnce() -> Result<Vec<Vec<u8>>, PsiError> + Send>,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    let batch = batch_for(cfg, link)?;
    let own = encoded.len();
    let peer = exchange_hello(link, Protocol::EcdhOprf, Role::Sender, cfg.mode, own, batch).await?;
    let peer_size = peer_set_size(&peer)?;
    let peer_batch = (peer.batch_items_max as usize).max(batch);
    if let Some(ix) = index
        && ix.set_id() != encoded.id
    {
        return Err(PsiError::InvalidConfig(
            "the query index is another encoded set's".into(),
        ));
    }
    if sender_holds_key(own, peer_size) {
        let rows = index.map_or(0, QueryIndex::rows);
        let mut set = BytesMut::with_capacity(SET_FRAME_BYTES);
        set.put_u8(KIND_SET);
        set.put_slice(&encoded.id);
        set.put_u64_le(own as u64);
        set.put_u32_le(rows);
        link.send(set.freeze()).await?;
        let have = own_frame(recv(link).await?, KIND_HAVE, "whether the set is kept")?;
        let have = match have.get(1..) {
            Some(&[h]) if h == HAVE_NONE || h == HAVE_KEPT => h,
            Some(&[HAVE_LOOKUP]) if rows > 0 => HAVE_LOOKUP,
            _ => return Err(PsiError::Protocol("a malformed have frame".into())),
        };
        let key = Arc::new(encoded.key.clone_key());
        let answer = answer_points(link, &key, peer_size, peer_batch, false, progress);
        let send = async {
            if have == HAVE_NONE {
                send_encodings(link, &encoded.encodings, progress).await?;
            }
            Ok::<_, PsiError>(())
        };
        let (answers, ()) = tokio::try_join!(answer, send)?;
        if !gate.record().await {
            return Err(PsiError::DeliveryNotRecorded);
        }
        for frame in answers {
            link.send(frame).await?;
        }
        if let (HAVE_LOOKUP, Some(ix)) = (have, index) {
            crate::oprf_query::answer(link, ix, peer_size, progress).await?;
        }
    } else {
        // The receiver holds the key: query it for our own items.
        let items = compute(items).await??;
        check_input(&items)?;
        let distinct = distinct_indices(&items).await;
        if distinct.len() != own {
            return Err(PsiError::InvalidConfig(format!(
                "the sender's items ({} distinct) are not its encoded set ({own})",
                distinct.len()
            )));
        }
        let blind = Arc::new(SecretKey::random(rng));
        let inverse = Arc::new(blind.inverse());
        // Sent and answered concurrently: the link's buffers are bounded.
        let ((), mut mine) = tokio::try_join!(
            send_blinded(link, &items, &distinct, batch, &blind, progress),
            unblind_answers(link, &inverse, own, peer_batch)
        )?;
        mine.par_sort_unstable();
        if !gate.record().await {
            return Err(PsiError::DeliveryNotRecorded);
        }
        send_encodings(link, &mine, progress).await?;
    }
    match crate::common::recv_frame(link).await? {
        Frame::Done => {}
        other => return Err(crate::common::unexpected(other, "done")),
    }
    Ok(SenderOutput {
        receiver_set_size: peer_size as u64,
    })
}
