//! Bucketed PSI: sets of any size in bounded memory.
//!
//! Both parties split their items into the same `B` buckets by a keyed hash and run one PSI
//! ([`crate::run_receiver`] and friends, any protocol) per bucket, so a party holds one bucket
//! at a time, never its whole set. The approach is SecretFlow's "bucket PSI"; the hash is
//! keyed per job so that nobody can aim items at one bucket in advance.
//!
//! # Flow
//!
//! 1. **Staging** (local, no link): each party feeds its rows to a [`Stager`], which keeps
//!    them in memory up to `bucket_rows` and beyond that streams every row (its item, its
//!    ordinal in the input, and the caller's `extra` bytes — kept columns, a payload) into
//!    [`PARTITIONS`] partition files on disk, by the keyed hash of the item.
//! 2. **Agreement**: each party sends a `Buckets` frame
//!    (`kind=0x09 | version u16 | buckets_wanted u32 | key check 16 bytes`): the number of
//!    buckets its own row count needs (`⌈rows / bucket_rows⌉`, at least 1, at most
//!    [`BUCKETS_MAX`]), and a BLAKE3 digest of the bucket key, so that parties holding different
//!    keys stop instead of computing a wrong answer. `B` is the larger wish. Bucket `b` is the
//!    partitions `p` with `⌊p·B / PARTITIONS⌋ = b`.
//! 3. **Buckets**: for `b` in `0..B`, both load bucket `b` and run one PSI on it. With one
//!    bucket that is the whole run, its delivery point as in an unbucketed run. With more, each
//!    bucket's run stops at its release: the sender sends its release key XORed with a mask
//!    `BLAKE3-keyed(master, context ‖ b)[..16]` under a fresh 32-byte master key of the run,
//!    and the receiver keeps the bucket's values (its own and the sender's, still encrypted) in
//!    a file of its own. After the last bucket the sender asks its delivery gate **once**, and
//!    only if the delivery is recorded sends the master key (`kind=0x0A | 32 bytes`); the
//!    receiver then unmasks every bucket's key and matches them one by one. So the receiver
//!    learns nothing of any bucket before the one delivery point, and a run that fails in any
//!    bucket is not delivered (not charged). The receiver writes the rows whose item matched
//!    (every duplicate, with its `extra` and, with a payload, the sender's payload) to a part
//!    file per bucket.
//! 4. **Result**: [`Parts::merged`] reads the part files back in ordinal order: the matched rows
//!    come out in input order, exactly as an unbucketed run would give them. With the
//!    intersection shared, the sender's matched rows come out the same way (below).
//!
//! # The intersection shared with the sender
//!
//! When both parties ask for it (a flag in the `Buckets` frame; a mismatch stops both), the
//! sender learns which of its own rows are common too: once the receiver has matched a bucket
//! (after the master key, or right after the release with one bucket), it sends the bucket's
//! common items as sorted tags `BLAKE3-keyed(bucket key, context ‖ item)[..16]`
//! (`Common` frames: `kind=0x0B | bucket u32 | last u8 | count u32 | count × 16`, at most
//! 65,536 tags each). The sender checks that the tags are strictly ascending and that each
//! names one of its own items of that bucket (anything else is a protocol error), and writes
//! its rows whose item is common to its own part files, merged in input order as the
//! receiver's are. The sender then learns the intersection (as the receiver does) and nothing
//! else: a tag names only an item it holds. The receiver is trusted to report it faithfully
//! (semi-honest); a receiver that leaves items out, or names an item of the sender's it did not
//! hold, changes only the sender's result, as choosing another input would, and a tag that is
//! refused tells it no more than putting the guessed item in its input. A run that shares the
//! intersection carries no payload (payloads go to the receiver only), and its receiver never
//! finishes alone after an interruption: the sender still waits for its tags, so both resume.
//!
//! # Resume
//!
//! A run with more than one bucket can be taken up where it stopped (a party's process
//! killed, the link broken) by running both sides again on the same directories:
//!
//! * A finished staging leaves a manifest ([`STAGED_MANIFEST`]); [`Staged::restore`] takes the
//!   partitions up again (checked against the bucket key and every file's size), and the
//!   sender keeps its partitions until its directory is removed.
//! * The sender writes the run's master key to its staging directory (synced) before the
//!   first masked release leaves, and reuses it when it finds it.
//! * The receiver records the bucket count and a check of the sender's master key
//!   (`BLAKE3-keyed(master, context)[..16]`, which the sender shows in its `Buckets` frame) in
//!   its parts directory, and writes each bucket's pending file whole (synced, renamed).
//! * The `Buckets` frame carries the resume offer (`prev_buckets u32 | done u32 | master
//!   check 16 bytes`); both parties compute the same first bucket: the receiver's count of
//!   consecutive pending buckets if its earlier attempt had the same `B` and was shown the
//!   master check the sender shows now, else 0 (the receiver then drops its pending files).
//!   Buckets before it are not run again; the delivery is still asked once per attempt that
//!   reaches the end (a record the caller keeps idempotent), and the receiver checks the
//!   master key against the agreed check before it unmasks anything.
//!
//! A resumed bucket's release key is new but masked with the same mask as in the attempt
//! that stopped, so a receiver that kept both masked keys learns their XOR: two independent
//! random keys, of which it learns neither.
//!
//! # What each party learns, beyond the per-bucket protocol's own outputs
//!
//! * The bucket count `B`, hence each party's row count to within `bucket_rows` (rows, not
//!   distinct items: the count is taken before duplicates are removed).
//! * In every bucket, the other party's distinct set size in that bucket (the per-bucket
//!   protocol's `Hello` announces it), instead of only the total. Both parties know the
//!   bucket key, so a party that guesses an item of the other can see whether the bucket it
//!   hashes to is one larger; with `n` items over `B` buckets this shifts the odds of a guess
//!   by about `1/√(n/B)` — a small, real leak, the price of bounded memory. Unbucketed runs
//!   (`B = 1`) leak nothing of this kind.
//! * In [`crate::Mode::SizeOnly`] the receiver would learn the intersection size per bucket;
//!   bucketed runs therefore refuse size-only mode.
//!
//! The bucket key is 32 bytes both parties derive from material they share for the job
//! ([`BucketKey::derive`]; Tessera's workers use the job's session id, random per job and
//! carried in both parties' signed tickets). The threat model is the per-bucket protocol's:
//! semi-honest parties.
//!
//! # Bounds
//!
//! An item is at most [`crate::ITEM_BYTES_MAX`] bytes, its `extra` at most [`EXTRA_BYTES_MAX`];
//! a bucket at most [`crate::SET_ITEMS_MAX`] items (a larger one fails with
//! [`PsiError::TooLarge`]: choose a smaller `bucket_rows`). Memory: about `bucket_rows` rows
//! while staging, one bucket (both its rows and the protocol's state) while running, plus one
//! [`SPILL_BUFFER_BYTES`] buffer per open partition or part file. Disk: the spilled rows
//! (each row's item, extra and 16 bytes); with more than one bucket the receiver also keeps
//! its partitions until the end and a pending file per bucket (16 bytes per distinct item of
//! either side, more with a payload) until the master key comes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use rand_core::CryptoRngCore;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::common::{Release, notify_peer, unexpected};
use crate::pending::{Pending, Received};
use crate::wire::PROTOCOL_VERSION;
use crate::{
    DeliveryGate, ITEM_BYTES_MAX, Mode, NoProgress, Progress, Protocol, PsiConfig, PsiError,
    ReceiverOutput, SET_ITEMS_MAX,
};

/// Partition files per party when staging spills to disk; also the most buckets.
pub const PARTITIONS: u32 = 1024;
/// The most buckets a run uses.
pub const BUCKETS_MAX: u32 = PARTITIONS;
/// Most bytes of one row's `extra`.
pub const EXTRA_BYTES_MAX: usize = 1 << 20;
/// Buffer of each open partition or part file.
pub const SPILL_BUFFER_BYTES: usize = 32 * 1024;
/// BLAKE3 context that derives the bucket key from the job's shared material.
pub const BUCKET_KEY_CONTEXT: &str = "tessera-psi bucket key v1";
/// BLAKE3 context of the key check sent in the `Buckets` frame.
const KEY_CHECK_CONTEXT: &str = "tessera-psi bucket key check v1";
/// Progress phase family of a bucketed run: reported as `"bucket b/B"` (`b` buckets of `B`
/// finished, from `"bucket 0/B"` at the start) with the own rows of the finished buckets of
/// all own rows as the count.
pub const PHASE_BUCKET: &str = "bucket";

const KIND_BUCKETS: u8 = 0x09;
const BUCKETS_FRAME_BYTES: usize = 1 + 2 + 4 + 16 + 4 + 4 + 16 + 1;

/// The keyed hash that assigns items to partitions. Secret-free `Debug`; wiped on drop.
#[derive(Clone)]
pub struct BucketKey([u8; 32]);

impl std::fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BucketKey(<redacted>)")
    }
}

impl Drop for BucketKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl BucketKey {
    /// The key both parties derive from `material` they share for one job:
    /// BLAKE3 `derive_key`([`BUCKET_KEY_CONTEXT`], `material`).
    pub fn derive(material: &[u8]) -> Self {
        BucketKey(blake3::derive_key(BUCKET_KEY_CONTEXT, material))
    }

    /// A key from 32 random bytes (benchmarks, tests).
    pub fn random<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        BucketKey(k)
    }

    /// The partition (`0..PARTITIONS`) of `item`: the top 10 bits of its keyed BLAKE3 hash.
    pub fn partition_of(&self, item: &[u8]) -> u32 {
        let h = blake3::keyed_hash(&self.0, item);
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.as_bytes()[..8]);
        (u64::from_le_bytes(first) >> (64 - PARTITIONS.trailing_zeros())) as u32
    }

    fn check(&self) -> [u8; 16] {
        let mut h = blake3::Hasher::new_derive_key(KEY_CHECK_CONTEXT);
        h.update(&self.0);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }
}

/// Memory a party needs per row of a bucket, beyond the row's item and extra bytes: the
/// protocol's state (rr22: OKVS, VOLE and OPRF values) and the row's own bookkeeping: the
/// rr22 receiver's peak was about 350 bytes per row at 2^21 and 2^22 rows in one bucket
/// (`tessera bench psi --n 4194304 --bucket-rows 5000000`), this adds a margin.
pub const BUCKET_ROW_BYTES: u64 = 512;
/// Memory of a party not available to its buckets (runtime, TLS, link buffers, the open
/// partition files' buffers).
pub const BASE_MEMORY_BYTES: u64 = 320 << 20;

/// Rows per bucket that keep a party's memory under `memory_bytes`, with `extra_bytes` of
/// extra (kept columns, payload) per row, held about three times over (staging, the protocol,
/// the result). At least 1,024.
pub fn bucket_rows_for_memory(memory_bytes: u64, extra_bytes: u64) -> u64 {
    let per_row = BUCKET_ROW_BYTES.saturating_add(extra_bytes.saturating_mul(3));
    (memory_bytes.saturating_sub(BASE_MEMORY_BYTES) / per_row).max(1024)
}

/// The bucket of partition `p` when there are `buckets` buckets.
pub fn bucket_of_partition(p: u32, buckets: u32) -> u32 {
    (u64::from(p) * u64::from(buckets) / u64::from(PARTITIONS)) as u32
}

/// Buckets a party with `rows` rows wants at `bucket_rows` rows per bucket.
pub fn buckets_wanted(rows: u64, bucket_rows: u64) -> u32 {
    let per = bucket_rows.max(1);
    let want = rows.div_ceil(per).max(1);
    u32::try_from(want).unwrap_or(u32::MAX).min(BUCKETS_MAX)
}

/// One staged row: its ordinal among the rows fed to the [`Stager`] (from 0), its item and the
/// caller's extra bytes. `Debug` shows sizes only (items are dataset content).
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    /// Position among the rows fed in, from 0.
    pub ordinal: u64,
    /// The item (a normalised key).
    pub item: Vec<u8>,
    /// Caller's bytes carried with the row (kept columns, a payload).
    pub extra: Vec<u8>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Row({}, <{} item bytes>, <{} extra bytes>)",
            self.ordinal,
            self.item.len(),
            self.extra.len()
        )
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> PsiError {
    PsiError::Storage(format!("{what} {}: {e}", path.display()))
}

fn write_row(w: &mut impl Write, ordinal: u64, item: &[u8], extra: &[u8]) -> io::Result<()> {
    w.write_all(&ordinal.to_le_bytes())?;
    w.write_all(&(item.len() as u32).to_le_bytes())?;
    w.write_all(item)?;
    w.write_all(&(extra.len() as u32).to_le_bytes())?;
    w.write_all(extra)
}

/// Reads the next row of a spill or part file; `None` at its end. A truncated or over-long
/// record is [`PsiError::Storage`].
fn read_row(r: &mut impl Read, path: &Path, item_max: usize) -> Result<Option<Row>, PsiError> {
    let mut ord = [0u8; 8];
    match r.read_exact(&mut ord) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io_err("reading", path, e)),
    }
    let mut field = |max: usize| -> Result<Vec<u8>, PsiError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| io_err("reading", path, e))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(PsiError::Storage(format!(
                "{}: a record of {len} bytes (at most {max}): the file is damaged",
                path.display()
            )));
        }
        let mut v = vec![0u8; len];
        r.read_exact(&mut v)
            .map_err(|e| io_err("reading", path, e))?;
        Ok(v)
    };
    let item = field(item_max)?;
    let extra = field(EXTRA_BYTES_MAX)?;
    Ok(Some(Row {
        ordinal: u64::from_le_bytes(ord),
        item,
        extra,
    }))
}

/// Takes a party's rows, in memory up to `bucket_rows` and in partition files under `dir`
/// beyond (see the module docs). Feed rows with [`Stager::push`], then [`Stager::finish`].
#[derive(Debug)]
pub struct Stager {
    key: BucketKey,
    bucket_rows: u64,
    dir: PathBuf,
    memory: Vec<Row>,
    spill: Option<Vec<BufWriter<File>>>,
    partition_rows: Vec<u64>,
    partition_bytes: Vec<u64>,
    rows: u64,
}

/// Bytes [`write_row`] writes for a row.
fn row_bytes(item: &[u8], extra: &[u8]) -> u64 {
    16 + item.len() as u64 + extra.len() as u64
}

impl Stager {
    /// A stager that keeps at most `bucket_rows` rows in memory and spills into `dir` (created
    /// when first needed; it should be this run's own directory, removed by the caller after).
    pub fn new(key: BucketKey, bucket_rows: u64, dir: impl Into<PathBuf>) -> Self {
        Stager {
            key,
            bucket_rows: bucket_rows.max(1),
            dir: dir.into(),
            memory: Vec::new(),
            spill: None,
            partition_rows: vec![0; PARTITIONS as usize],
            partition_bytes: vec![0; PARTITIONS as usize],
            rows: 0,
        }
    }

    /// Rows fed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn partition_path(&self, p: u32) -> PathBuf {
        self.dir.join(format!("partition-{p:04}.bin"))
    }

    /// Adds the next row (its ordinal is the number of rows fed before it).
    ///
    /// # Errors
    /// [`PsiError::TooLarge`] for an item over [`ITEM_BYTES_MAX`] or extra bytes over
    /// [`EXTRA_BYTES_MAX`]; [`PsiError::Storage`] if a partition file cannot be written.
    pub fn push(&mut self, item: Vec<u8>, extra: Vec<u8>) -> Result<(), PsiError> {
        if item.len() > ITEM_BYTES_MAX {
            return Err(PsiError::TooLarge {
                what: "item bytes",
                len: item.len() as u64,
                max: ITEM_BYTES_MAX as u64,
            });
        }
        if extra.len() > EXTRA_BYTES_MAX {
            return Err(PsiError::TooLarge {
                what: "extra bytes of a row",
                len: extra.len() as u64,
                max: EXTRA_BYTES_MAX as u64,
            });
        }
        let ordinal = self.rows;
        self.rows += 1;
        if self.spill.is_none() && self.memory.len() as u64 >= self.bucket_rows {
            self.start_spilling()?;
        }
        match &mut self.spill {
            None => self.memory.push(Row {
                ordinal,
                item,
                extra,
            }),
            Some(files) => {
                let p = self.key.partition_of(&item);
                let path_of = |p: u32| self.dir.join(format!("partition-{p:04}.bin"));
                let w = files
                    .get_mut(p as usize)
                    .ok_or_else(|| PsiError::Internal("partition out of range".into()))?;
                write_row(w, ordinal, &item, &extra)
                    .map_err(|e| io_err("writing", &path_of(p), e))?;
                if let Some(n) = self.partition_rows.get_mut(p as usize) {
                    *n += 1;
                }
                if let Some(n) = self.partition_bytes.get_mut(p as usize) {
                    *n += row_bytes(&item, &extra);
                }
            }
        }
        Ok(())
    }

    fn start_spilling(&mut self) -> Result<(), PsiError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("creating", &self.dir, e))?;
        let mut files = Vec::with_capacity(PARTITIONS as usize);
        for p in 0..PARTITIONS {
            let path = self.partition_path(p);
            let f = File::create(&path).map_err(|e| io_err("creating", &path, e))?;
            files.push(BufWriter::with_capacity(SPILL_BUFFER_BYTES, f));
        }
        for row in std::mem::take(&mut self.memory) {
            let p = self.key.partition_of(&row.item);
            let w = files
                .get_mut(p as usize)
                .ok_or_else(|| PsiError::Internal("partition out of range".into()))?;
            write_row(w, row.ordinal, &row.item, &row.extra)
                .map_err(|e| io_err("writing", &self.partition_path(p), e))?;
            if let Some(n) = self.partition_rows.get_mut(p as usize) {
                *n += 1;
            }
            if let Some(n) = self.partition_bytes.get_mut(p as usize) {
                *n += row_bytes(&row.item, &row.extra);
            }
        }
        self.spill = Some(files);
        Ok(())
    }

    /// Ends the feeding: flushes the partition files and, when rows were spilled, writes the
    /// staging's manifest ([`STAGED_MANIFEST`]: key check, bucket rows, row count, each
    /// partition's rows and bytes), so that a restarted run can take the partitions up again
    /// with [`Staged::restore`] instead of reading its input again.
    ///
    /// # Errors
    /// [`PsiError::Storage`] if a partition file or the manifest cannot be written.
    pub fn finish(mut self) -> Result<Staged, PsiError> {
        let spilled = match self.spill.take() {
            None => false,
            Some(files) => {
                for (p, w) in files.into_iter().enumerate() {
                    let path = self.partition_path(p as u32);
                    let f = w
                        .into_inner()
                        .map_err(|e| io_err("writing", &path, e.into_error()))?;
                    f.sync_all().map_err(|e| io_err("writing", &path, e))?;
                }
                let mut m = Vec::with_capacity(MANIFEST_BYTES);
                m.extend_from_slice(MANIFEST_MAGIC);
                m.extend_from_slice(&self.key.check());
                m.extend_from_slice(&self.bucket_rows.to_le_bytes());
                m.extend_from_slice(&self.rows.to_le_bytes());
                for (r, b) in self.partition_rows.iter().zip(&self.partition_bytes) {
                    m.extend_from_slice(&r.to_le_bytes());
                    m.extend_from_slice(&b.to_le_bytes());
                }
                write_durably(&self.dir.join(STAGED_MANIFEST), &m)?;
                true
            }
        };
        Ok(Staged {
            key: self.key.clone(),
            bucket_rows: self.bucket_rows,
            dir: self.dir.clone(),
            memory: std::mem::take(&mut self.memory),
            split: Vec::new(),
            spilled,
            partition_rows: std::mem::take(&mut self.partition_rows),
            rows: self.rows,
        })
    }
}

/// The file in a stager's directory that describes its finished staging.
pub const STAGED_MANIFEST: &str = "staged.bin";
const MANIFEST_MAGIC: &[u8; 5] = b"TSTG1";
const MANIFEST_BYTES: usize = 5 + 16 + 8 + 8 + 16 * PARTITIONS as usize;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one:
/// a temporary file, synced, renamed over `path`.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), PsiError> {
    let tmp = path.with_extension("tmp");
    let io = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    io.map_err(|e| io_err("writing", path, e))
}

/// Reads a small state file: `None` when it does not exist.
fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>, PsiError> {
    match File::open(path) {
        Ok(f) => {
            let mut v = Vec::new();
            f.take(max + 1)
                .read_to_end(&mut v)
                .map_err(|e| io_err("reading", path, e))?;
            Ok(Some(v))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("opening", path, e)),
    }
}

/// A party's staged rows, ready to be read bucket by bucket.
#[derive(Debug)]
pub struct Staged {
    key: BucketKey,
    bucket_rows: u64,
    dir: PathBuf,
    memory: Vec<Row>,
    /// In-memory rows split by bucket (filled at the first [`Staged::bucket`] call).
    split: Vec<Vec<Row>>,
    spilled: bool,
    partition_rows: Vec<u64>,
    rows: u64,
}

impl Staged {
    /// The staging a finished [`Stager`] left in `dir` (its [`STAGED_MANIFEST`]), when one is
    /// there for `key` and every partition file has the size the manifest records: a restarted
    /// run resumes from it instead of reading its input again. `None` when `dir` holds no
    /// finished staging (none at all, another key's, or rows kept in memory).
    ///
    /// # Errors
    /// [`PsiError::Storage`] for a manifest that cannot be read or is damaged, or a partition
    /// file that is missing or of another size (the caller should stage again).
    pub fn restore(key: BucketKey, dir: &Path) -> Result<Option<Staged>, PsiError> {
        let path = dir.join(STAGED_MANIFEST);
        let Some(m) = read_small(&path, MANIFEST_BYTES as u64)? else {
            return Ok(None);
        };
        if m.len() != MANIFEST_BYTES || !m.starts_with(MANIFEST_MAGIC) {
            return Err(PsiError::Storage(format!(
                "{}: not a staging manifest",
                path.display()
            )));
        }
        if m.get(5..21) != Some(&key.check()[..]) {
            return Ok(None);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (bucket_rows, rows) = (u64_at(21), u64_at(29));
        let mut partition_rows = Vec::with_capacity(PARTITIONS as usize);
        for p in 0..PARTITIONS as usize {
            let at = 37 + 16 * p;
            partition_rows.push(u64_at(at));
            let file = dir.join(format!("partition-{p:04}.bin"));
            let len = std::fs::metadata(&file)
                .map_err(|e| io_err("opening", &file, e))?
                .len();
            if len != u64_at(at + 8) {
                return Err(PsiError::Storage(format!(
                    "{}: {len} bytes where the staging wrote {}",
                    file.display(),
                    u64_at(at + 8)
                )));
            }
        }
        if partition_rows.iter().sum::<u64>() != rows || bucket_rows == 0 {
            return Err(PsiError::Storage(format!(
                "{}: damaged (row counts disagree)",
                path.display()
            )));
        }
        Ok(Some(Staged {
            key,
            bucket_rows,
            dir: dir.to_owned(),
            memory: Vec::new(),
            split: Vec::new(),
            spilled: true,
            partition_rows,
            rows,
        }))
    }

    /// Rows staged.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the rows went to partition files.
    pub fn spilled(&self) -> bool {
        self.spilled
    }

    /// The buckets this party's row count needs.
    pub fn buckets_wanted(&self) -> u32 {
        buckets_wanted(self.rows, self.bucket_rows)
    }

    /// Rows of bucket `b` of `buckets` (without reading them).
    pub fn bucket_rows(&self, b: u32, buckets: u32) -> u64 {
        if !self.spilled {
            return match self.split.get(b as usize) {
                Some(rows) => rows.len() as u64,
                None if buckets <= 1 => self.memory.len() as u64,
                None => self
                    .memory
                    .iter()
                    .filter(|r| bucket_of_partition(self.key.partition_of(&r.item), buckets) == b)
                    .count() as u64,
            };
        }
        (0..PARTITIONS)
            .filter(|&p| bucket_of_partition(p, buckets) == b)
            .map(|p| self.partition_rows.get(p as usize).copied().unwrap_or(0))
            .sum()
    }

    /// Bucket `b` of `buckets`: its rows in ordinal order. With `keep`, the bucket can be
    /// read again (a deferred bucket is read twice: for the protocol, then for its matches);
    /// without, its rows leave the stager (partition files removed).
    ///
    /// # Errors
    /// [`PsiError::Storage`] if a partition file cannot be read or is damaged.
    pub fn bucket(&mut self, b: u32, buckets: u32, keep: bool) -> Result<Vec<Row>, PsiError> {
        if !self.spilled {
            if buckets <= 1 {
                return Ok(if keep {
                    self.memory.clone()
                } else {
                    std::mem::take(&mut self.memory)
                });
            }
            if self.split.is_empty() {
                let mut split: Vec<Vec<Row>> = (0..buckets).map(|_| Vec::new()).collect();
                for row in std::mem::take(&mut self.memory) {
                    let at = bucket_of_partition(self.key.partition_of(&row.item), buckets);
                    if let Some(v) = split.get_mut(at as usize) {
                        v.push(row);
                    }
                }
                self.split = split;
            }
            let slot = self.split.get_mut(b as usize);
            return Ok(match (slot, keep) {
                (Some(rows), true) => rows.clone(),
                (Some(rows), false) => std::mem::take(rows),
                (None, _) => Vec::new(),
            });
        }
        let mut rows = Vec::new();
        for p in (0..PARTITIONS).filter(|&p| bucket_of_partition(p, buckets) == b) {
            let path = self.dir.join(format!("partition-{p:04}.bin"));
            let f = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
            let mut r = BufReader::with_capacity(SPILL_BUFFER_BYTES, f);
            while let Some(row) = read_row(&mut r, &path, ITEM_BYTES_MAX)? {
                rows.push(row);
            }
            if !keep {
                // Its space goes back now.
                let _ = std::fs::remove_file(&path);
            }
        }
        rows.sort_unstable_by_key(|r| r.ordinal);
        Ok(rows)
    }
}

/// The receiver's matched rows, one part file per bucket under a directory, each in ordinal
/// order; [`Parts::merged`] reads them back as one sequence in ordinal order.
#[derive(Debug)]
pub struct Parts {
    dir: PathBuf,
    buckets: u32,
}

/// One matched row as the receiver keeps it: its ordinal, its own extra bytes, and the
/// sender's payload (empty without one). `Debug` shows sizes only.
#[derive(Clone, PartialEq, Eq)]
pub struct Matched {
    /// The row's ordinal in the receiver's input.
    pub ordinal: u64,
    /// The receiver's extra bytes of the row.
    pub extra: Vec<u8>,
    /// The sender's payload of the row's item (empty without a payload).
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Matched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Matched({}, <{} extra bytes>, <{} payload bytes>)",
            self.ordinal,
            self.extra.len(),
            self.payload.len()
        )
    }
}

impl Parts {
    fn path(&self, b: u32) -> PathBuf {
        self.dir.join(format!("part-{b:04}.bin"))
    }

    /// Bucket count.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The matched rows of every bucket, merged in ordinal order (a k-way merge holding one
    /// row per bucket).
    ///
    /// # Errors
    /// [`PsiError::Storage`] if a part file cannot be opened.
    pub fn merged(&self) -> Result<Merged, PsiError> {
        let mut readers = Vec::with_capacity(self.buckets as usize);
        let mut pending = Vec::with_capacity(self.buckets as usize);
        let mut heads = std::collections::BinaryHeap::new();
        for b in 0..self.buckets {
            let path = self.path(b);
            let f = File::open(&path).map_err(|e| io_err("opening", &path, e))?;
            let mut r = BufReader::with_capacity(SPILL_BUFFER_BYTES, f);
            let head = read_row(&mut r, &path, EXTRA_BYTES_MAX)?;
            if let Some(row) = &head {
                heads.push(std::cmp::Reverse((row.ordinal, b as usize)));
            }
            pending.push(head);
            readers.push((r, path));
        }
        Ok(Merged {
            readers,
            pending,
            heads,
        })
    }

    /// Removes the part files and their directory.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type PartReader = (BufReader<File>, PathBuf);

/// Iterator over [`Parts::merged`]: matched rows in ordinal order, or the first read error.
pub struct Merged {
    readers: Vec<PartReader>,
    /// Each part's next row.
    pending: Vec<Option<Row>>,
    /// (ordinal, part) of every pending row, smallest first.
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>>,
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Merged({} parts)", self.readers.len())
    }
}

impl Iterator for Merged {
    type Item = Result<Matched, PsiError>;

    fn next(&mut self) -> Option<Self::Item> {
        let std::cmp::Reverse((_, b)) = self.heads.pop()?;
        let (Some(slot), Some((r, path))) = (self.pending.get_mut(b), self.readers.get_mut(b))
        else {
            return Some(Err(PsiError::Internal("part index out of range".into())));
        };
        let Some(row) = slot.take() else {
            return Some(Err(PsiError::Internal("part without a pending row".into())));
        };
        match read_row(r, path, EXTRA_BYTES_MAX) {
            Ok(Some(next)) => {
                self.heads.push(std::cmp::Reverse((next.ordinal, b)));
                *slot = Some(next);
            }
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        // A part row carries the receiver's extra as its item and the payload as its extra.
        Some(Ok(Matched {
            ordinal: row.ordinal,
            extra: row.item,
            payload: row.extra,
        }))
    }
}

/// What the receiver of a bucketed run learns.
#[derive(Debug)]
pub struct BucketedReceiverOutput {
    /// Buckets run.
    pub buckets: u32,
    /// Distinct common items (summed over buckets; an item lies in one bucket).
    pub intersection_size: u64,
    /// The sender's distinct set size (summed over buckets).
    pub sender_set_size: u64,
    /// Own rows whose item is common (every duplicate counted).
    pub matched_rows: u64,
    /// The bucket this run started at: 0, or where it took up an interrupted run.
    pub resumed_from: u32,
    /// The matched rows, per bucket on disk.
    pub parts: Parts,
}

/// What the sender of a bucketed run learns.
#[derive(Debug)]
pub struct BucketedSenderOutput {
    /// Buckets run.
    pub buckets: u32,
    /// The receiver's distinct set size (summed over buckets).
    pub receiver_set_size: u64,
    /// The bucket this run started at: 0, or where it took up an interrupted run.
    pub resumed_from: u32,
    /// The intersection, when the run shares it with the sender.
    pub shared: Option<SharedIntersection>,
}

/// The sender's part of an intersection shared with it: which of its rows are common.
#[derive(Debug)]
pub struct SharedIntersection {
    /// Distinct common items.
    pub intersection_size: u64,
    /// Own rows whose item is common (every duplicate counted).
    pub matched_rows: u64,
    /// The matched rows (each with its `extra`, no payload), per bucket on disk.
    pub parts: Parts,
}

/// What a party brings to the agreement besides its wish: for resuming a run that stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResumeOffer {
    /// Receiver: the bucket count of its earlier attempt (0: none). Sender: 0.
    prev_buckets: u32,
    /// Receiver: how many buckets, from the first, it holds pending from its earlier attempt.
    /// Sender: 0.
    done: u32,
    /// Sender: the check of its master key. Receiver: the check its earlier attempt was told
    /// (zeros: none).
    master_check: [u8; 16],
}

/// The agreed shape of a run: its bucket count and the first bucket to run (0, or where a
/// resumed run takes up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Agreed {
    buckets: u32,
    start: u32,
    /// The sender's master check (what the receiver records).
    master_check: [u8; 16],
}

/// Sends our `Buckets` frame, checks the peer's, and returns the agreed run: `B` is the larger
/// wish; a run resumes from the receiver's `done` when the receiver's earlier attempt had the
/// same `B` and was told the master check the sender holds now (the sender kept its master
/// key, so every pending bucket's mask is still the one the receiver needs), else from 0.
async fn agree(
    link: &dyn Link,
    key: &BucketKey,
    wanted: u32,
    sender: bool,
    offer: ResumeOffer,
    share: bool,
) -> Result<Agreed, PsiError> {
    let mut b = BytesMut::with_capacity(BUCKETS_FRAME_BYTES);
    b.put_u8(KIND_BUCKETS);
    b.put_u16_le(PROTOCOL_VERSION);
    b.put_u32_le(wanted);
    b.put_slice(&key.check());
    b.put_u32_le(offer.prev_buckets);
    b.put_u32_le(offer.done);
    b.put_slice(&offer.master_check);
    b.put_u8(u8::from(share));
    let ours = b.freeze();
    let (_, theirs) = tokio::try_join!(
        async { link.send(ours).await.map_err(PsiError::from) },
        async { link.recv().await.map_err(PsiError::from) }
    )?;
    let (peer_wanted, peer, peer_share) = parse_buckets(theirs, key)?;
    if peer_share != share {
        return Err(PsiError::InvalidConfig(
            "the parties disagree on whether the sender learns the intersection".into(),
        ));
    }
    let buckets = wanted.max(peer_wanted);
    let (r, s) = if sender { (peer, offer) } else { (offer, peer) };
    let start = if buckets > 1
        && r.prev_buckets == buckets
        && r.master_check == s.master_check
        && r.master_check != [0; 16]
    {
        r.done.min(buckets)
    } else {
        0
    };
    Ok(Agreed {
        buckets,
        start,
        master_check: s.master_check,
    })
}

fn parse_buckets(frame: Bytes, key: &BucketKey) -> Result<(u32, ResumeOffer, bool), PsiError> {
    if frame.first() != Some(&KIND_BUCKETS) {
        // An abort, or another frame: the shared parser says which.
        let parsed = crate::wire::Frame::parse(frame)?;
        return Err(match parsed {
            crate::wire::Frame::Abort(reason) => PsiError::PeerAborted { reason },
            other => unexpected(other, "buckets"),
        });
    }
    if let Some(&[v0, v1]) = frame.get(1..3) {
        let version = u16::from_le_bytes([v0, v1]);
        if version != PROTOCOL_VERSION {
            return Err(PsiError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
    }
    let f: [u8; BUCKETS_FRAME_BYTES] = frame.as_ref().try_into().map_err(|_| {
        PsiError::Protocol(format!(
            "buckets frame of {} bytes (expected {BUCKETS_FRAME_BYTES})",
            frame.len()
        ))
    })?;
    let u32_at = |at: usize| {
        let mut n = [0u8; 4];
        n.copy_from_slice(&f[at..at + 4]);
        u32::from_le_bytes(n)
    };
    let wanted = u32_at(3);
    if wanted == 0 || wanted > BUCKETS_MAX {
        return Err(PsiError::Protocol(format!(
            "buckets frame: {wanted} buckets (1..={BUCKETS_MAX})"
        )));
    }
    if f[7..23] != key.check() {
        return Err(PsiError::InvalidConfig(
            "the parties hold different bucket keys".into(),
        ));
    }
    let mut master_check = [0u8; 16];
    master_check.copy_from_slice(&f[31..47]);
    let offer = ResumeOffer {
        prev_buckets: u32_at(23),
        done: u32_at(27),
        master_check,
    };
    if offer.prev_buckets > BUCKETS_MAX || offer.done > offer.prev_buckets {
        return Err(PsiError::Protocol(format!(
            "buckets frame: {} of {} buckets done",
            offer.done, offer.prev_buckets
        )));
    }
    let share = match f[47] {
        0 => false,
        1 => true,
        other => {
            return Err(PsiError::Protocol(format!(
                "buckets frame: share flag {other} (0 or 1)"
            )));
        }
    };
    Ok((wanted, offer, share))
}

/// Reports `"bucket b/B"` with the rows done after each bucket (and `"bucket 0/B"` at the
/// start), and the inner protocol's phases only when there is a single bucket.
struct BucketProgress<'a> {
    outer: &'a dyn Progress,
    buckets: u32,
    rows_total: u64,
}

impl BucketProgress<'_> {
    fn inner(&self) -> &dyn Progress {
        if self.buckets <= 1 {
            self.outer
        } else {
            &NoProgress
        }
    }

    fn done(&self, b: u32, rows_done: u64) {
        if self.buckets > 1 {
            let phase = format!("{PHASE_BUCKET} {b}/{}", self.buckets);
            self.outer.report(&phase, rows_done, self.rows_total);
        }
    }
}

fn oprf_not_bucketed() -> PsiError {
    PsiError::InvalidConfig(
        "ecdh-oprf is not bucketed (the larger side streams its encoded set)".into(),
    )
}

fn check_mode(cfg: &PsiConfig) -> Result<(), PsiError> {
    if cfg.protocol == Protocol::EcdhOprf {
        return Err(oprf_not_bucketed());
    }
    if cfg.mode == Mode::SizeOnly {
        return Err(PsiError::InvalidConfig(
            "bucketed PSI does not run in size-only mode (it would reveal the size per bucket)"
                .into(),
        ));
    }
    Ok(())
}

fn bucket_too_large(n: usize) -> Result<(), PsiError> {
    if n > SET_ITEMS_MAX {
        return Err(PsiError::TooLarge {
            what: "bucket size (choose fewer rows per bucket)",
            len: n as u64,
            max: SET_ITEMS_MAX as u64,
        });
    }
    Ok(())
}

/// Frame kind of the key that unmasks every bucket's release key (`0x0A | 32 bytes`).
const KIND_MASTER: u8 = 0x0A;
/// BLAKE3 keyed-hash context of a bucket's release mask.
const RELEASE_MASK_CONTEXT: &[u8] = b"tessera-psi bucket release mask v1";

/// The mask of bucket `b`'s release key under the run's master key.
fn release_mask(master: &[u8; 32], b: u32) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(master);
    h.update(RELEASE_MASK_CONTEXT);
    h.update(&b.to_le_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// One bucket of the receiver's side, either protocol.
async fn receive_bucket<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    payload: bool,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    defer: bool,
) -> Result<Received, PsiError> {
    match (cfg.protocol, payload) {
        (Protocol::Rr22, _) => {
            crate::rr22::receiver(link, items, cfg, rng, progress, payload, defer).await
        }
        (Protocol::Ecdh, false) => {
            crate::ecdh::receiver(link, items, cfg, rng, progress, defer).await
        }
        (Protocol::Ecdh, true) => Err(PsiError::InvalidConfig("PSI with payload runs rr22".into())),
        (Protocol::EcdhOprf, _) => Err(oprf_not_bucketed()),
    }
}

/// Writes bucket `b`'s part file: every row whose item is common, with the payload of its
/// item. Returns the rows written and, with `tags`, the sorted tags of the common items (what
/// the sender is told when it learns the intersection).
fn write_part(
    path: &Path,
    rows: &[Row],
    out: ReceiverOutput,
    tags: Option<&BucketKey>,
) -> Result<(u64, Vec<[u8; TAG_BYTES]>), PsiError> {
    let firsts = out.intersection.unwrap_or_default();
    let payloads = out.payloads.unwrap_or_default();
    let mut by_item = std::collections::HashMap::with_capacity(firsts.len());
    for (k, &i) in firsts.iter().enumerate() {
        if let Some(row) = rows.get(i) {
            by_item.insert(row.item.as_slice(), payloads.get(k).map(Vec::as_slice));
        }
    }
    let mut common: Vec<[u8; TAG_BYTES]> = match tags {
        Some(key) => by_item.keys().map(|item| key.common_tag(item)).collect(),
        None => Vec::new(),
    };
    common.sort_unstable();
    let f = File::create(path).map_err(|e| io_err("creating", path, e))?;
    let mut w = BufWriter::with_capacity(SPILL_BUFFER_BYTES, f);
    let mut matched = 0u64;
    for row in rows {
        if let Some(p) = by_item.get(row.item.as_slice()) {
            write_row(&mut w, row.ordinal, &row.extra, p.unwrap_or_default())
                .map_err(|e| io_err("writing", path, e))?;
            matched += 1;
        }
    }
    w.flush().map_err(|e| io_err("writing", path, e))?;
    Ok((matched, common))
}

/// Bytes of a common item's tag.
const TAG_BYTES: usize = 16;
/// Frame kind of the receiver's common tags for the sender:
/// `0x0B | bucket u32 | last u8 | count u32 | count × 16-byte tag`.
const KIND_COMMON: u8 = 0x0B;
const COMMON_HEADER_BYTES: usize = 1 + 4 + 1 + 4;
/// Most tags in one `Common` frame (1 MiB of tags).
const COMMON_TAGS_PER_FRAME: usize = 1 << 16;
/// BLAKE3 context of a common item's tag.
const COMMON_TAG_CONTEXT: &[u8] = b"tessera-psi bucket common tag v1";

impl BucketKey {
    /// The tag by which the receiver names a common item to the sender:
    /// `BLAKE3-keyed(bucket key, context ‖ item)[..16]`.
    fn common_tag(&self, item: &[u8]) -> [u8; TAG_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(COMMON_TAG_CONTEXT);
        h.update(item);
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(&h.finalize().as_bytes()[..TAG_BYTES]);
        out
    }
}

/// The receiver's side of sharing bucket `b`'s intersection: its common items' tags, sorted,
/// in frames of at most [`COMMON_TAGS_PER_FRAME`], the last one flagged (an empty bucket sends
/// one empty frame).
async fn send_common(link: &dyn Link, b: u32, tags: &[[u8; TAG_BYTES]]) -> Result<(), PsiError> {
    let mut chunks = tags.chunks(COMMON_TAGS_PER_FRAME).peekable();
    if chunks.peek().is_none() {
        return link
            .send(common_frame(b, true, &[]))
            .await
            .map_err(Into::into);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        link.send(common_frame(b, last, chunk)).await?;
    }
    Ok(())
}

fn common_frame(b: u32, last: bool, tags: &[[u8; TAG_BYTES]]) -> Bytes {
    let mut f = BytesMut::with_capacity(COMMON_HEADER_BYTES + tags.len() * TAG_BYTES);
    f.put_u8(KIND_COMMON);
    f.put_u32_le(b);
    f.put_u8(u8::from(last));
    f.put_u32_le(tags.len() as u32);
    for t in tags {
        f.put_slice(t);
    }
    f.freeze()
}

/// The sender's side of sharing bucket `b`'s intersection: takes the receiver's tags (strictly
/// ascending, each naming one of the sender's own items of the bucket, no more than it holds)
/// and writes every row of `rows` whose item is common to the part file at `path`, with its
/// `extra`. Returns (distinct common items, rows written).
async fn recv_common(
    link: &dyn Link,
    key: &BucketKey,
    b: u32,
    rows: Vec<Row>,
    path: PathBuf,
) -> Result<(u64, u64), PsiError> {
    let key = key.clone();
    let (rows, row_tags, held) = blocking(move || {
        let row_tags: Vec<[u8; TAG_BYTES]> = rows.iter().map(|r| key.common_tag(&r.item)).collect();
        let held: std::collections::HashSet<[u8; TAG_BYTES]> = row_tags.iter().copied().collect();
        Ok((rows, row_tags, held))
    })
    .await?;
    let mut told = std::collections::HashSet::new();
    let mut last_tag: Option<[u8; TAG_BYTES]> = None;
    let mut common = 0u64;
    loop {
        let frame = link.recv().await?;
        if frame.first() != Some(&KIND_COMMON) {
            let parsed = crate::wire::Frame::parse(frame)?;
            return Err(match parsed {
                crate::wire::Frame::Abort(reason) => PsiError::PeerAborted { reason },
                other => unexpected(other, "the common items"),
            });
        }
        let bad = |what: String| PsiError::Protocol(format!("common items of bucket {b}: {what}"));
        let header = frame
            .get(..COMMON_HEADER_BYTES)
            .ok_or_else(|| bad(format!("a frame of {} bytes", frame.len())))?;
        let u32_at = |at: usize| {
            let mut n = [0u8; 4];
            n.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(n)
        };
        let (bucket, last, count) = (u32_at(1), header[5], u32_at(6) as usize);
        if bucket != b {
            return Err(bad(format!("a frame for bucket {bucket}")));
        }
        if last > 1 || count > COMMON_TAGS_PER_FRAME {
            return Err(bad(format!("flag {last}, {count} tags")));
        }
        let body = frame.get(COMMON_HEADER_BYTES..).unwrap_or_default();
        if body.len() != count * TAG_BYTES {
            return Err(bad(format!("{} bytes for {count} tags", body.len())));
        }
        for t in body.chunks_exact(TAG_BYTES) {
            let mut tag = [0u8; TAG_BYTES];
            tag.copy_from_slice(t);
            if last_tag.is_some_and(|prev| prev >= tag) {
                return Err(bad("tags not strictly ascending".into()));
            }
            last_tag = Some(tag);
            if !held.contains(&tag) {
                return Err(bad("a tag of an item the sender does not hold".into()));
            }
            told.insert(tag);
            common += 1;
        }
        if last == 1 {
            break;
        }
    }
    let written = blocking(move || {
        let f = File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        let mut w = BufWriter::with_capacity(SPILL_BUFFER_BYTES, f);
        let mut written = 0u64;
        for (row, tag) in rows.iter().zip(&row_tags) {
            if told.contains(tag) {
                write_row(&mut w, row.ordinal, &row.extra, &[])
                    .map_err(|e| io_err("writing", &path, e))?;
                written += 1;
            }
        }
        w.flush().map_err(|e| io_err("writing", &path, e))?;
        Ok(written)
    })
    .await?;
    Ok((common, written))
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PsiError> + Send + 'static,
) -> Result<T, PsiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PsiError::Internal(format!("file task: {e}")))?
}

/// The receiver's side of a bucketed run on `staged` (see the module docs): every bucket's
/// matched rows go to part files under `parts_dir` (created; this run's own directory). With
/// `payload`, each bucket runs PSI with payload (rr22).
///
/// With more than one bucket, each bucket stops at its release, whose key arrives masked: its
/// values are kept in a file under `parts_dir` and matched only once the sender has recorded
/// the run's one delivery and sent the key of the masks, after the last bucket. A run that
/// fails before then leaves the receiver with nothing it can open.
///
/// # Errors
/// As [`crate::run_receiver`]; [`PsiError::InvalidConfig`] in size-only mode, for a payload
/// with ECDH, or when the parties' bucket keys differ; [`PsiError::Storage`] for a spill, part
/// or pending file that cannot be read or written; [`PsiError::TooLarge`] for a bucket over
/// [`SET_ITEMS_MAX`].
#[allow(clippy::too_many_arguments)]
pub async fn run_receiver_bucketed<R: CryptoRngCore + Send>(
    link: &dyn Link,
    mut staged: Staged,
    parts_dir: &Path,
    payload: bool,
    share_with_sender: bool,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<BucketedReceiverOutput, PsiError> {
    let result = async {
        check_mode(cfg)?;
        std::fs::create_dir_all(parts_dir).map_err(|e| io_err("creating", parts_dir, e))?;
        let pending_path = |b: u32| parts_dir.join(format!("pending-{b:04}.bin"));
        let run_path = parts_dir.join(RUN_STATE);
        let offer = match read_small(&run_path, RUN_STATE_BYTES as u64)? {
            Some(state) => {
                let (prev_buckets, master_check) = parse_run_state(&state, &run_path)?;
                // Only whole, undamaged pending files count as done.
                let done = (0..prev_buckets)
                    .take_while(|&b| crate::pending::verify(&pending_path(b)).is_ok())
                    .count() as u32;
                ResumeOffer {
                    prev_buckets,
                    done,
                    master_check,
                }
            }
            None => ResumeOffer::default(),
        };
        let agreed = agree(
            link,
            &staged.key,
            staged.buckets_wanted(),
            false,
            offer,
            share_with_sender,
        )
        .await?;
        let share = share_with_sender.then(|| staged.key.clone());
        let Agreed { buckets, start, .. } = agreed;
        if start == 0 {
            // Nothing of an earlier attempt is used: its pending buckets go.
            for b in 0..offer.prev_buckets {
                let _ = std::fs::remove_file(pending_path(b));
            }
        }
        let parts = Parts {
            dir: parts_dir.to_owned(),
            buckets,
        };
        let report = BucketProgress {
            outer: progress,
            buckets,
            rows_total: staged.rows(),
        };
        let defer = buckets > 1;
        if defer {
            let mut state = Vec::with_capacity(RUN_STATE_BYTES);
            state.extend_from_slice(RUN_STATE_MAGIC);
            state.extend_from_slice(&buckets.to_le_bytes());
            state.extend_from_slice(&agreed.master_check);
            let path = run_path.clone();
            blocking(move || write_durably(&path, &state)).await?;
        }
        let (mut common, mut sender_size, mut matched_rows) = (0u64, 0u64, 0);
        let mut rows_done: u64 = (0..start).map(|b| staged.bucket_rows(b, buckets)).sum();
        report.done(start, rows_done);
        for b in start..buckets {
            let rows = staged.bucket(b, buckets, defer)?;
            bucket_too_large(rows.len())?;
            let items: Vec<Vec<u8>> = rows.iter().map(|r| r.item.clone()).collect();
            let received =
                receive_bucket(link, &items, payload, cfg, rng, report.inner(), defer).await?;
            drop(items);
            rows_done += rows.len() as u64;
            match received {
                Received::Done(out) => {
                    common += out.intersection_size;
                    sender_size += out.sender_set_size;
                    let (path, tag_key) = (parts.path(b), share.clone());
                    let (written, tags) =
                        blocking(move || write_part(&path, &rows, out, tag_key.as_ref())).await?;
                    matched_rows += written;
                    if share.is_some() {
                        send_common(link, b, &tags).await?;
                    }
                }
                Received::Pending(pending) => {
                    // Written whole or not at all: a restarted run counts it as done.
                    let path = pending_path(b);
                    blocking(move || {
                        let tmp = path.with_extension("tmp");
                        pending.write(&tmp)?;
                        File::open(&tmp)
                            .and_then(|f| f.sync_all())
                            .and_then(|()| std::fs::rename(&tmp, &path))
                            .map_err(|e| io_err("writing", &path, e))
                    })
                    .await?;
                }
            }
            report.done(b + 1, rows_done);
        }
        if defer {
            let master = recv_master(link, parts_dir, &agreed.master_check).await?;
            let share = share.map(|k| (link, k));
            return final_pass(&mut staged, parts, &master, start, share).await;
        }
        Ok(BucketedReceiverOutput {
            buckets,
            intersection_size: common,
            sender_set_size: sender_size,
            matched_rows,
            resumed_from: start,
            parts,
        })
    }
    .await;
    if let Err(e) = &result {
        notify_peer(link, e).await;
    }
    result
}

/// The receiver's record of a run with more than one bucket, in its parts directory: the
/// bucket count and the sender's master check (`TRUN1 | buckets u32 | check 16 bytes`).
const RUN_STATE: &str = "run.bin";
const RUN_STATE_MAGIC: &[u8; 5] = b"TRUN1";
const RUN_STATE_BYTES: usize = 5 + 4 + 16;

fn parse_run_state(state: &[u8], path: &Path) -> Result<(u32, [u8; 16]), PsiError> {
    let damaged = || PsiError::Storage(format!("{}: damaged run state", path.display()));
    if state.len() != RUN_STATE_BYTES || !state.starts_with(RUN_STATE_MAGIC) {
        return Err(damaged());
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&state[5..9]);
    let buckets = u32::from_le_bytes(n);
    if buckets == 0 || buckets > BUCKETS_MAX {
        return Err(damaged());
    }
    let mut check = [0u8; 16];
    check.copy_from_slice(&state[9..25]);
    Ok((buckets, check))
}

/// BLAKE3 keyed-hash context of the master key's check.
const MASTER_CHECK_CONTEXT: &[u8] = b"tessera-psi bucket master check v1";

/// A check of the run's master key that the sender may show before the key itself: the
/// receiver records it, and a resumed run goes on only if the sender still holds that key.
fn master_check(master: &[u8; 32]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::keyed_hash(master, MASTER_CHECK_CONTEXT).as_bytes()[..16]);
    out
}

/// The sender's master key file in its staging directory (32 bytes, written before the first
/// masked release leaves).
const MASTER_KEY_FILE: &str = "master.key";
/// The sender's per-bucket record of the receiver's set sizes (`u64` per bucket).
const SIZES_FILE: &str = "sizes.bin";

/// The receiver's deferred buckets matched once the master key is known: every pending
/// bucket unmasked and matched, its part file written; then the run's state goes.
async fn final_pass(
    staged: &mut Staged,
    parts: Parts,
    master: &[u8; 32],
    resumed_from: u32,
    share: Option<(&dyn Link, BucketKey)>,
) -> Result<BucketedReceiverOutput, PsiError> {
    let buckets = parts.buckets;
    let pending_path = |b: u32| parts.dir.join(format!("pending-{b:04}.bin"));
    let (mut common, mut sender_size, mut matched_rows) = (0u64, 0u64, 0);
    for b in 0..buckets {
        let path = pending_path(b);
        let mask = release_mask(master, b);
        let out = blocking(move || Pending::read(&path)?.finish(&mask)).await?;
        common += out.intersection_size;
        sender_size += out.sender_set_size;
        let rows = staged.bucket(b, buckets, true)?;
        let (path, tag_key) = (parts.path(b), share.as_ref().map(|(_, k)| k.clone()));
        let (written, tags) =
            blocking(move || write_part(&path, &rows, out, tag_key.as_ref())).await?;
        matched_rows += written;
        if let Some((link, _)) = &share {
            send_common(*link, b, &tags).await?;
        }
    }
    // Every part is written: what an interrupted run would have resumed from goes.
    for b in 0..buckets {
        let _ = std::fs::remove_file(pending_path(b));
    }
    let _ = std::fs::remove_file(parts.dir.join(RECEIVED_MASTER_FILE));
    let _ = std::fs::remove_file(parts.dir.join(RUN_STATE));
    Ok(BucketedReceiverOutput {
        buckets,
        intersection_size: common,
        sender_set_size: sender_size,
        matched_rows,
        resumed_from,
        parts,
    })
}

/// The receiver's copy of the master key in its parts directory, written (synced) before it
/// answers `Done`: a receiver stopped after that finishes alone ([`finish_receiver_alone`]).
const RECEIVED_MASTER_FILE: &str = "received-master.key";

/// Finishes the receiver's side of an interrupted run without the sender, when the run had
/// reached its end for the sender: the receiver's parts directory holds the run's state,
/// every bucket's pending file, whole, and the master key it received before it stopped.
/// Returns `None` when it does not (the run must resume with the sender), and always for a run
/// that shares the intersection with the sender (`share_with_sender`: the sender still waits
/// for it).
///
/// # Errors
/// [`PsiError::Storage`] for state that cannot be read; as the final matching of
/// [`run_receiver_bucketed`].
pub async fn finish_receiver_alone(
    staged: &mut Staged,
    parts_dir: &Path,
    share_with_sender: bool,
) -> Result<Option<BucketedReceiverOutput>, PsiError> {
    if share_with_sender {
        return Ok(None);
    }
    let run_path = parts_dir.join(RUN_STATE);
    let Some(state) = read_small(&run_path, RUN_STATE_BYTES as u64)? else {
        return Ok(None);
    };
    let (buckets, check) = parse_run_state(&state, &run_path)?;
    let Some(key) = read_small(&parts_dir.join(RECEIVED_MASTER_FILE), 32)? else {
        return Ok(None);
    };
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
        return Ok(None);
    };
    let master = zeroize::Zeroizing::new(key);
    if master_check(&master) != check || staged.buckets_wanted() > buckets {
        return Ok(None);
    }
    for b in 0..buckets {
        let path = parts_dir.join(format!("pending-{b:04}.bin"));
        if crate::pending::verify(&path).is_err() {
            return Ok(None);
        }
    }
    let parts = Parts {
        dir: parts_dir.to_owned(),
        buckets,
    };
    final_pass(staged, parts, &master, buckets, None)
        .await
        .map(Some)
}

/// Takes the sender's master key (after its last bucket), checks it against the run's agreed
/// check, keeps a copy in `parts_dir` and answers `Done`.
async fn recv_master(
    link: &dyn Link,
    parts_dir: &Path,
    agreed_check: &[u8; 16],
) -> Result<zeroize::Zeroizing<[u8; 32]>, PsiError> {
    let frame = link.recv().await?;
    if frame.first() != Some(&KIND_MASTER) {
        let parsed = crate::wire::Frame::parse(frame)?;
        return Err(match parsed {
            crate::wire::Frame::Abort(reason) => PsiError::PeerAborted { reason },
            other => unexpected(other, "the key of the release masks"),
        });
    }
    let key: [u8; 32] = frame
        .get(1..)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| {
            PsiError::Protocol(format!(
                "master key frame of {} bytes (expected 33)",
                frame.len()
            ))
        })?;
    let key = zeroize::Zeroizing::new(key);
    if &master_check(&key) != agreed_check {
        return Err(PsiError::Protocol(
            "the key of the release masks is not the one the run agreed".into(),
        ));
    }
    let (path, copy) = (parts_dir.join(RECEIVED_MASTER_FILE), *key);
    blocking(move || write_durably(&path, &copy)).await?;
    link.send(crate::wire::done_frame()).await?;
    Ok(key)
}

/// The sender's side of a bucketed run on `staged`; with `payload`, each row's `extra` is its
/// payload (rr22). With one bucket, `gate` is asked before its release, as in an unbucketed
/// run; with more, every bucket's release key leaves masked and `gate` is asked once, after
/// the last bucket, before the key of the masks is sent: the run's one delivery point.
///
/// # Errors
/// As [`run_receiver_bucketed`], and [`PsiError::DeliveryNotRecorded`].
#[allow(clippy::too_many_arguments)]
pub async fn run_sender_bucketed<R: CryptoRngCore + Send>(
    link: &dyn Link,
    mut staged: Staged,
    payload: bool,
    sender_parts: Option<&Path>,
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<BucketedSenderOutput, PsiError> {
    let result = async {
        check_mode(cfg)?;
        if payload && cfg.protocol != Protocol::Rr22 {
            return Err(PsiError::InvalidConfig("PSI with payload runs rr22".into()));
        }
        let master_path = staged.dir.join(MASTER_KEY_FILE);
        let sizes_path = staged.dir.join(SIZES_FILE);
        let mut master = zeroize::Zeroizing::new([0u8; 32]);
        let kept = match read_small(&master_path, 32)? {
            Some(k) if k.len() == 32 => {
                master.copy_from_slice(&k);
                true
            }
            _ => {
                rng.fill_bytes(master.as_mut());
                false
            }
        };
        let offer = ResumeOffer {
            master_check: master_check(&master),
            ..ResumeOffer::default()
        };
        if payload && sender_parts.is_some() {
            return Err(PsiError::InvalidConfig(
                "PSI with payload gives the intersection to the receiver only".into(),
            ));
        }
        let share = sender_parts.is_some();
        let agreed = agree(
            link,
            &staged.key,
            staged.buckets_wanted(),
            true,
            offer,
            share,
        )
        .await?;
        let Agreed { buckets, start, .. } = agreed;
        let report = BucketProgress {
            outer: progress,
            buckets,
            rows_total: staged.rows(),
        };
        let defer = buckets > 1;
        if defer && !kept {
            // Before any masked release leaves: a restarted sender must mask with this key.
            std::fs::create_dir_all(&staged.dir).map_err(|e| io_err("creating", &staged.dir, e))?;
            let (path, key) = (master_path.clone(), *master);
            blocking(move || write_durably(&path, &key)).await?;
        }
        let mut sizes = vec![0u64; buckets as usize];
        if start > 0
            && let Some(bytes) = read_small(&sizes_path, 8 * u64::from(BUCKETS_MAX))?
        {
            for (slot, chunk) in sizes.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut n = [0u8; 8];
                n.copy_from_slice(chunk);
                *slot = u64::from_le_bytes(n);
            }
        }
        let mut rows_done: u64 = (0..start).map(|b| staged.bucket_rows(b, buckets)).sum();
        report.done(start, rows_done);
        for b in start..buckets {
            // Kept on disk until the run ends: a resumed run may need the bucket again, and
            // a shared intersection needs it at the end.
            let rows = staged.bucket(b, buckets, defer || share)?;
            bucket_too_large(rows.len())?;
            let release = if defer {
                Release::Masked(release_mask(&master, b))
            } else {
                Release::Gated(gate)
            };
            let (items, extras): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                rows.into_iter().map(|r| (r.item, r.extra)).unzip();
            let payloads = payload.then_some(extras.as_slice());
            let out = match cfg.protocol {
                Protocol::Rr22 => {
                    crate::rr22::sender(link, &items, payloads, cfg, rng, report.inner(), release)
                        .await?
                }
                Protocol::Ecdh => {
                    crate::ecdh::sender(link, &items, cfg, rng, report.inner(), release).await?
                }
                Protocol::EcdhOprf => return Err(oprf_not_bucketed()),
            };
            if let Some(slot) = sizes.get_mut(b as usize) {
                *slot = out.receiver_set_size as u64;
            }
            if defer {
                let bytes: Vec<u8> = sizes.iter().flat_map(|n| n.to_le_bytes()).collect();
                let path = sizes_path.clone();
                blocking(move || write_durably(&path, &bytes)).await?;
            }
            rows_done += items.len() as u64;
            report.done(b + 1, rows_done);
        }
        if defer {
            if !gate.record().await {
                return Err(PsiError::DeliveryNotRecorded);
            }
            let mut frame = Vec::with_capacity(33);
            frame.push(KIND_MASTER);
            frame.extend_from_slice(master.as_ref());
            link.send(Bytes::from(frame)).await?;
            match crate::common::recv_frame(link).await? {
                crate::wire::Frame::Done => {}
                other => return Err(unexpected(other, "done")),
            }
        }
        let mut shared = None;
        if let Some(dir) = sender_parts {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
            let parts = Parts {
                dir: dir.to_owned(),
                buckets,
            };
            let (mut common, mut matched_rows) = (0u64, 0u64);
            for b in 0..buckets {
                let rows = staged.bucket(b, buckets, true)?;
                let (c, m) = recv_common(link, &staged.key, b, rows, parts.path(b)).await?;
                common += c;
                matched_rows += m;
            }
            shared = Some(SharedIntersection {
                intersection_size: common,
                matched_rows,
                parts,
            });
        }
        Ok(BucketedSenderOutput {
            buckets,
            receiver_set_size: sizes.iter().sum(),
            resumed_from: start,
            shared,
        })
    }
    .await;
    if let Err(e) = &result {
        notify_peer(link, e).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_and_buckets_cover_them_in_order() {
        let key = BucketKey::derive(b"job");
        let mut counts = vec![0u32; PARTITIONS as usize];
        for i in 0..100_000u32 {
            counts[key.partition_of(&i.to_le_bytes()) as usize] += 1;
        }
        // 97.7 expected per partition; none empty, none far above.
        assert!(counts.iter().all(|&c| c > 40 && c < 180), "{counts:?}");
        for buckets in [1, 2, 3, 48, 1000, BUCKETS_MAX] {
            let mut last = 0;
            for p in 0..PARTITIONS {
                let b = bucket_of_partition(p, buckets);
                assert!(b >= last && b < buckets);
                last = b;
            }
            assert_eq!(last, buckets - 1);
        }
        assert_eq!(buckets_wanted(0, 10), 1);
        assert_eq!(buckets_wanted(10, 10), 1);
        assert_eq!(buckets_wanted(11, 10), 2);
        assert_eq!(buckets_wanted(u64::MAX, 1), BUCKETS_MAX);
        assert_eq!(buckets_wanted(5, 0), 5);
        assert_eq!(format!("{key:?}"), "BucketKey(<redacted>)");
    }

    #[test]
    fn staging_in_memory_and_on_disk_gives_the_same_buckets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = BucketKey::derive(b"job");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..5_000u32)
            .map(|i| ((i % 3_000).to_le_bytes().to_vec(), i.to_be_bytes().to_vec()))
            .collect();
        let stage = |limit: u64, sub: &str| {
            let mut s = Stager::new(key.clone(), limit, dir.path().join(sub));
            for (item, extra) in &rows {
                s.push(item.clone(), extra.clone()).expect("push");
            }
            s.finish().expect("finish")
        };
        let mut memory = stage(10_000, "m");
        let mut disk = stage(100, "d");
        assert!(!memory.spilled() && disk.spilled());
        assert_eq!(disk.buckets_wanted(), 50);
        for buckets in [7u32] {
            let mut seen = 0;
            for b in 0..buckets {
                assert_eq!(memory.bucket_rows(b, buckets), disk.bucket_rows(b, buckets));
                // Read once kept, then taken: the same rows both times.
                let m = memory.bucket(b, buckets, true).expect("memory");
                let d = disk.bucket(b, buckets, true).expect("disk");
                assert_eq!(m, d);
                assert_eq!(memory.bucket(b, buckets, false).expect("memory"), m);
                assert_eq!(disk.bucket(b, buckets, false).expect("disk"), d);
                assert!(m.windows(2).all(|w| w[0].ordinal < w[1].ordinal));
                for r in &m {
                    assert_eq!(bucket_of_partition(key.partition_of(&r.item), buckets), b);
                    assert_eq!(r.extra, (r.ordinal as u32).to_be_bytes());
                }
                seen += m.len();
            }
            assert_eq!(seen, rows.len());
        }
    }

    /// The sender's side of a shared intersection against a receiver sending `frames`.
    fn sender_told(frames: Vec<Bytes>) -> Result<(u64, u64), PsiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let key = BucketKey::derive(b"job");
            let rows: Vec<Row> = (0..10u64)
                .map(|i| Row {
                    ordinal: i,
                    item: vec![b'a' + (i % 5) as u8],
                    extra: i.to_le_bytes().to_vec(),
                })
                .collect();
            let (a, b) = tessera_core::MemLink::pair();
            for f in frames {
                a.send(f).await.expect("send");
            }
            recv_common(&b, &key, 2, rows, dir.path().join("part")).await
        })
    }

    #[test]
    fn the_sender_checks_every_common_tag_it_is_told() {
        let key = BucketKey::derive(b"job");
        let mut tags: Vec<[u8; TAG_BYTES]> =
            [b"a", b"c"].iter().map(|i| key.common_tag(*i)).collect();
        tags.sort_unstable();
        // Items a and c, held twice each: 2 common, 4 rows.
        assert_eq!(
            sender_told(vec![common_frame(2, true, &tags)]).ok(),
            Some((2, 4))
        );
        // Split over two frames, and an empty bucket.
        let split = vec![
            common_frame(2, false, &tags[..1]),
            common_frame(2, true, &tags[1..]),
        ];
        assert_eq!(sender_told(split).ok(), Some((2, 4)));
        assert_eq!(
            sender_told(vec![common_frame(2, true, &[])]).ok(),
            Some((0, 0))
        );
        let protocol = |frames: Vec<Bytes>, what: &str| {
            let e = sender_told(frames).expect_err(what);
            assert!(matches!(e, PsiError::Protocol(_)), "{what}: {e}");
        };
        let unknown = key.common_tag(b"zz");
        protocol(
            vec![common_frame(2, true, &[unknown])],
            "an item it does not hold",
        );
        let reversed = [tags[1], tags[0]];
        protocol(vec![common_frame(2, true, &reversed)], "unsorted");
        protocol(vec![common_frame(2, true, &[tags[0], tags[0]])], "repeated");
        protocol(vec![common_frame(3, true, &tags)], "another bucket");
        let mut short = common_frame(2, true, &tags).to_vec();
        short.pop();
        protocol(vec![Bytes::from(short)], "short");
        let mut flag = common_frame(2, true, &tags).to_vec();
        flag[5] = 9;
        protocol(vec![Bytes::from(flag)], "flag");
        let mut count = common_frame(2, true, &tags).to_vec();
        count[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        protocol(vec![Bytes::from(count)], "count");
        protocol(vec![Bytes::from_static(&[KIND_COMMON, 1])], "header");
        let e = sender_told(vec![Bytes::from_static(&[0x7F, 1])]).expect_err("abort");
        assert!(matches!(e, PsiError::PeerAborted { .. }), "{e}");
    }

    #[test]
    fn a_damaged_spill_file_is_a_storage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.bin");
        let mut bytes = Vec::new();
        write_row(&mut bytes, 7, b"abc", b"").expect("write");
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).expect("write");
        let mut r = BufReader::new(File::open(&path).expect("open"));
        assert!(matches!(
            read_row(&mut r, &path, ITEM_BYTES_MAX),
            Err(PsiError::Storage(_))
        ));
        let mut huge = 1u64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).expect("write");
        let mut r = BufReader::new(File::open(&path).expect("open"));
        let e = read_row(&mut r, &path, ITEM_BYTES_MAX).expect_err("huge");
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
