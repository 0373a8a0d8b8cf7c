//! The homomorphic lookup of `ecdh-oprf` ([`crate::ecdh_oprf`]): the receiver learns which of
//! its encodings `F_k(x)` are in the sender's encoded set without receiving the set: about
//! 3 MB (keys and queries) plus 78 KB per row of the index (under a byte per sender item) for
//! each 1,740 receiver items, against 16 bytes per sender item for the set.
//!
//! # Construction
//!
//! The unbalanced PSI of Chen, Laine and Rindal ("Fast Private Set Intersection from
//! Homomorphic Encryption", CCS 2017) and its labelled successor (Chen, Huang, Laine, Rindal,
//! CCS 2018; Microsoft's APSI), on the OPRF values the receiver already holds, with the BFV
//! scheme of the `fhe` crate:
//!
//! * **Items.** Each encoding `e` (16 bytes) is hashed, `h = BLAKE3-derive-key(e)`, into three
//!   bin indices `h_1, h_2, h_3` in `[0, BINS)` and [`FELTS`] field elements of
//!   [`FELT_BITS`] bits each (92 bits of `h`, apart from the bins' bits).
//! * **Sender (prepared once per encoded set, [`QueryIndex::build`]).** Every encoding goes to
//!   each of its (distinct) bins. A bin's items are cut into rows of at most
//!   [`BUNDLE_ITEMS`]; for each row, bin and element position `f`, the polynomial
//!   `P(z) = Π (z − felt_f(y))` over `F_t` (`t` = [`PLAINTEXT_MODULUS`]) has at most
//!   `BUNDLE_ITEMS + 1` coefficients. Plaintext `(row, k)` holds coefficient `k` of every
//!   bin's and position's polynomial in slot `bin · FELTS + f` (the slots are the evaluations of
//!   the negacyclic NTT over `F_t`, so plaintext products are slot-wise). The index file holds
//!   the constant plaintext of a row in coefficient form (4 bytes a coefficient, 32 KiB) and
//!   the other 128 already lifted to the two evaluation moduli and in NTT form (12 bytes a
//!   coefficient, 96 KiB each), so that a lookup transforms none of them: about 12 MiB a row,
//!   1.4 GB for 10⁷ items (118 rows).
//! * **Receiver.** Its encodings go into cuckoo tables of `BINS` bins (three hash functions,
//!   at most [`TABLE_ITEMS_MAX`] items a table, as many tables as needed). For each table it
//!   encrypts, under a fresh secret key, the powers `x^{j·4^i}` (`j` in 1..=3, up to 128: 11
//!   of them) of every slot's value, and sends them with a relinearisation key.
//! * **Sender, per table.** It computes every power `x^1 … x^128` (each a product of at most
//!   four sources, its base-4 digits: depth 2), switches them to two moduli, and for each row
//!   answers
//!   `Σ_k plaintext(row, k) · x^k = P(x)` slot-wise, switched to one modulus.
//! * **Receiver.** Decrypts each answer; an item is in the sender's set if, for one row, all
//!   [`FELTS`] slots of its bin are zero.
//!
//! BFV parameters: ring degree [`DEGREE`] = 8192, plaintext modulus `t` = 8,404,993 (prime,
//! `t ≡ 1 mod 2·8192`), ciphertext moduli of 38 + 3·54 = 200 bits (below the 218 bits the
//! Homomorphic Encryption Standard allows at degree 8192 for 128-bit security, error
//! σ ≈ 3.2). Fresh noise, two levels of products and the plaintext products leave about 26
//! bits of noise margin at the evaluation level (measured with `fhe`'s noise estimator while
//! the parameters were chosen; binary sources, depth 3, left about 3).
//!
//! # Threat model and what each party learns
//!
//! Semi-honest parties, as the rest of `ecdh-oprf`; in addition the RLWE assumption for the
//! receiver's ciphertexts and keys.
//! * **Sender:** the number of tables (about the receiver's set size over 1,700, which the
//!   `Hello` already told it) and nothing else: everything else it receives is encrypted under
//!   the receiver's key, which it never sees.
//! * **Receiver:** for each of its bins and each row, `P(x)` at its own value, so beyond the
//!   intersection it can learn relations among the sender's *encodings* (pseudo-random values
//!   under `k`): no more than the set transfer of [`crate::ecdh_oprf`] gives it whole, and
//!   nothing about the sender's items without `k`. The answers' noise is not flooded (as in
//!   APSI): it may carry further information about the same encodings, and only about them.
//! * **False matches:** an item of the receiver matches a row when each of its four elements
//!   is a root of that row's polynomial at its position; for a receiver item not in the set
//!   that happens with probability at most `rows_per_bin · (128 / 2^23)^4 ≈ rows · 2⁻⁵⁶` per
//!   item (about 2⁻⁴⁰ for 1,000 items against 10⁷), and when its 92 bits equal a sender item's
//!   (`3 · n_S · 2⁻⁹²` per item).

use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use fhe::bfv::{
    BfvParameters, BfvParametersBuilder, Ciphertext, Encoding, Multiplicator, Plaintext,
    RelinearizationKey, SecretKey,
};
use fhe_math::ntt::NttOperator;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use fhe_math::zq::Modulus;
use fhe_traits::{
    DeserializeParametrized, FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize,
};
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;

use crate::common::compute;
use crate::ecdh_oprf::own_frame;
use crate::{PHASE_MATCH, Progress, PsiError};

/// Ring degree `N` of the BFV parameters (slots per ciphertext).
pub const DEGREE: usize = 8192;
/// Plaintext modulus `t`: the smallest prime above `2^23` with `t ≡ 1 mod 2N`.
pub const PLAINTEXT_MODULUS: u64 = 8_404_993;
/// Bit sizes of the ciphertext moduli; the first is the one the answers keep.
const MODULI_BITS: [usize; 4] = [38, 54, 54, 54];
// Every field element is below the plaintext modulus.
const _: () = assert!(PLAINTEXT_MODULUS > 1 << FELT_BITS);
/// Field elements an item is split into (one slot each).
pub const FELTS: usize = 4;
/// Bits of each field element (below `t`).
pub const FELT_BITS: u32 = 23;
/// Bins of a table: one item each, `FELTS` slots each.
pub const BINS: usize = DEGREE / FELTS;
/// Hash functions of the cuckoo tables.
const HASHES: usize = 3;
/// Items of a bin per row: the degree of the row's polynomials.
pub const BUNDLE_ITEMS: usize = 128;
/// Coefficients (plaintexts) per row.
const ROW_PLAINTEXTS: usize = BUNDLE_ITEMS + 1;
/// Powers the receiver sends: `x^{j·4^i}` for `j` in 1..=3 up to `BUNDLE_ITEMS` (base-4
/// windows), so that every power up to `BUNDLE_ITEMS` is a product of at most four of them
/// (depth 2). Binary sources (`x^{2^i}`, 8 of them) would need depth 3 and leave about 3 bits
/// of noise margin at the evaluation level; these leave about 26 (measured).
const SOURCE_POWERS: [usize; 11] = [1, 2, 3, 4, 8, 12, 16, 32, 48, 64, 128];
/// Query ciphertexts per table.
const SOURCES: usize = SOURCE_POWERS.len();
/// Level (moduli dropped) at which the sender multiplies by its plaintexts.
const EVAL_LEVEL: usize = 2;
/// Level of the answers (one modulus, 38 bits).
const ANSWER_LEVEL: usize = 3;
/// Most items the receiver puts in one table (85% of the bins).
pub const TABLE_ITEMS_MAX: usize = BINS * 85 / 100;
/// Most tables (queries) of one run.
pub const TABLES_MAX: usize = 4096;

/// Most tables a receiver of `items` distinct items may send: twice what filling every table
/// takes, and one (a sender answers no more for a receiver's announced size).
pub fn tables_bound(items: usize) -> usize {
    (2 * items.div_ceil(TABLE_ITEMS_MAX) + 1).min(TABLES_MAX)
}
/// Evictions tried before an item moves on to the next table.
const KICKS_MAX: usize = 512;
/// Rows evaluated at once (memory: about 20 MiB each).
const ROWS_AT_ONCE: usize = 4;
/// Bytes of an evaluation-level NTT value modulo each of the two moduli (38 and 54 bits).
const NTT_BYTES: [usize; 2] = [5, 7];
/// Bytes of a row in the index file: the constant plaintext in coefficient form (4 bytes a
/// coefficient), then each of the others as its NTT modulo both evaluation moduli (12 bytes a
/// coefficient), so that a lookup does no NTT of the sender's plaintexts.
const ROW_BYTES: usize = DEGREE * 4 + BUNDLE_ITEMS * DEGREE * (NTT_BYTES[0] + NTT_BYTES[1]);
/// Most rows an index may have (a bin holding `SET_ITEMS_MAX · 3` items at worst).
const ROWS_MAX: u32 = ((crate::SET_ITEMS_MAX * HASHES) / BUNDLE_ITEMS + 1) as u32;
/// Magic of an index file.
const FILE_MAGIC: &[u8; 8] = b"TOPRFQ02";
/// BLAKE3 context of an item's bins and elements.
const ITEM_CONTEXT: &str = "tessera-psi ecdh-oprf query item v1";

/// Estimated bytes of the relinearisation key (checked against the real size by a test).
pub const RELIN_KEY_BYTES_EST: u64 = 819_300;
/// Estimated bytes of one query ciphertext (seeded, four moduli).
pub const QUERY_CT_BYTES_EST: u64 = 204_850;
/// Estimated bytes of one answer ciphertext (one modulus of 38 bits).
pub const ANSWER_CT_BYTES_EST: u64 = 77_860;

/// Frame kind: the receiver's key and table count (`0x0E | tables u32 | key`).
pub(crate) const KIND_QUERY_KEY: u8 = 0x0E;
/// Frame kind: one query ciphertext (`0x0F | ciphertext`), tables in order, sources in order.
pub(crate) const KIND_QUERY: u8 = 0x0F;
/// Frame kind: one answer ciphertext (`0x10 | ciphertext`), tables in order, rows in order.
pub(crate) const KIND_ANSWER: u8 = 0x10;

type Enc16 = [u8; 16];

struct Params {
    bfv: Arc<BfvParameters>,
    t: Modulus,
    ntt_t: NttOperator,
    /// The NTTs modulo the two moduli of the evaluation level (those of `fhe`'s context).
    ntt_eval: [NttOperator; 2],
}

/// The one parameter set (an `Arc` shared by every key and ciphertext: `fhe` compares them by
/// pointer).
fn params() -> Result<&'static Params, PsiError> {
    static PARAMS: OnceLock<Result<Params, String>> = OnceLock::new();
    PARAMS
        .get_or_init(|| {
            let bfv = BfvParametersBuilder::new()
                .set_degree(DEGREE)
                .set_plaintext_modulus(PLAINTEXT_MODULUS)
                .set_moduli_sizes(&MODULI_BITS)
                .build_arc()
                .map_err(|e| e.to_string())?;
            let t = Modulus::new(PLAINTEXT_MODULUS).map_err(|e| e.to_string())?;
            let ntt_t = NttOperator::new(&t, DEGREE).ok_or("no NTT modulo t")?;
            let q = bfv.moduli();
            if q.len() != MODULI_BITS.len()
                || q.len() - EVAL_LEVEL != 2
                || q[0] >= 1 << (8 * NTT_BYTES[0])
                || q[1] >= 1 << (8 * NTT_BYTES[1])
            {
                return Err(format!("unexpected moduli {q:?}"));
            }
            let op = |qi: u64| {
                Modulus::new(qi)
                    .ok()
                    .and_then(|m| NttOperator::new(&m, DEGREE))
                    .ok_or_else(|| format!("no NTT modulo {qi}"))
            };
            let ntt_eval = [op(q[0])?, op(q[1])?];
            Ok(Params {
                bfv,
                t,
                ntt_t,
                ntt_eval,
            })
        })
        .as_ref()
        .map_err(|e| PsiError::Internal(format!("BFV parameters: {e}")))
}

/// Where an encoding goes: its bins and its elements.
#[derive(Clone, Copy)]
struct Placed {
    bins: [u16; HASHES],
    felts: [u32; FELTS],
}

fn place(e: &Enc16) -> Placed {
    let mut h = blake3::Hasher::new_derive_key(ITEM_CONTEXT);
    h.update(e);
    let d = *h.finalize().as_bytes();
    let mut bins = [0u16; HASHES];
    for (i, b) in bins.iter_mut().enumerate() {
        *b = u16::from_le_bytes([d[2 * i], d[2 * i + 1]]) % BINS as u16;
    }
    let mut bits = u128::from_le_bytes(d[16..32].try_into().unwrap_or_default());
    let mut felts = [0u32; FELTS];
    for f in felts.iter_mut() {
        *f = (bits & ((1 << FELT_BITS) - 1)) as u32;
        bits >>= FELT_BITS;
    }
    Placed { bins, felts }
}

impl Placed {
    /// Its distinct bins.
    fn distinct_bins(&self) -> impl Iterator<Item = usize> + '_ {
        let b = self.bins;
        (0..HASHES)
            .filter(move |&i| !b[..i].contains(&b[i]))
            .map(move |i| b[i] as usize)
    }
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> PsiError {
    PsiError::Storage(format!("{what} {}: {e}", path.display()))
}

/// The sender's prepared lookup of one encoded set: a file of `rows()` rows of plaintexts
/// (see the module docs), read row by row for each table a receiver sends, through the handle
/// opened with it (a file removed or replaced in the meantime does not affect a run).
#[derive(Debug, Clone)]
pub struct QueryIndex {
    path: PathBuf,
    file: Arc<std::fs::File>,
    set_id: [u8; 16],
    rows: u32,
}

impl QueryIndex {
    /// Builds the index of `encodings` (an encoded set's sorted, distinct encodings, whose id
    /// is `set_id`) into `path` (mode 0600; written to `path` + `.tmp`, synced, renamed).
    /// CPU-bound and parallel on the rayon pool: call it off the async runtime. Memory: 16
    /// bytes per encoding per bin (three bins) plus `ROWS_AT_ONCE` rows. `progress(done, total)`
    /// is called per batch of rows; an error it returns stops the build (the temporary file is
    /// removed) and is returned.
    ///
    /// # Errors
    /// [`PsiError::Storage`] for the file; [`PsiError::Internal`] for the BFV parameters;
    /// `progress`'s.
    pub fn build(
        encodings: &[Enc16],
        set_id: [u8; 16],
        path: &Path,
        progress: &dyn Fn(u64, u64) -> Result<(), PsiError>,
    ) -> Result<QueryIndex, PsiError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let out = Self::build_into(encodings, set_id, path, &tmp, progress);
        if out.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        out
    }

    fn build_into(
        encodings: &[Enc16],
        set_id: [u8; 16],
        path: &Path,
        tmp: &Path,
        progress: &dyn Fn(u64, u64) -> Result<(), PsiError>,
    ) -> Result<QueryIndex, PsiError> {
        let p = params()?;
        // Items by bin: counting sort of (bin, felts).
        let placed: Vec<Placed> = encodings.par_iter().map(place).collect();
        let mut starts = vec![0usize; BINS + 1];
        for pl in &placed {
            for b in pl.distinct_bins() {
                starts[b + 1] += 1;
            }
        }
        for b in 0..BINS {
            starts[b + 1] += starts[b];
        }
        let mut fill = starts.clone();
        let mut by_bin = vec![[0u32; FELTS]; starts[BINS]];
        for pl in &placed {
            for b in pl.distinct_bins() {
                by_bin[fill[b]] = pl.felts;
                fill[b] += 1;
            }
        }
        drop(placed);
        let load_max = (0..BINS)
            .map(|b| starts[b + 1] - starts[b])
            .max()
            .unwrap_or(0);
        let rows = load_max.div_ceil(BUNDLE_ITEMS);
        let io = |e| storage("writing", tmp, e);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut h = blake3::Hasher::new();
        let mut head = Vec::with_capacity(28);
        head.extend_from_slice(FILE_MAGIC);
        head.extend_from_slice(&set_id);
        head.extend_from_slice(&(rows as u32).to_le_bytes());
        h.update(&head);
        w.write_all(&head).map_err(io)?;
        let row_ids: Vec<usize> = (0..rows).collect();
        for batch in row_ids.chunks(ROWS_AT_ONCE * 2) {
            let bodies: Vec<Vec<u8>> = batch
                .par_iter()
                .map(|&r| row_body(p, r, &starts, &by_bin))
                .collect();
            for body in bodies {
                h.update(&body);
                w.write_all(&body).map_err(io)?;
            }
            progress((batch[batch.len() - 1] + 1) as u64, rows as u64)?;
        }
        w.write_all(h.finalize().as_bytes()).map_err(io)?;
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(tmp, path).map_err(|e| storage("renaming", tmp, e))?;
        let file = std::fs::File::open(path).map_err(|e| storage("opening", path, e))?;
        Ok(QueryIndex {
            path: path.to_path_buf(),
            file: Arc::new(file),
            set_id,
            rows: rows as u32,
        })
    }

    /// Opens the index at `path` for the set `set_id`: `None` if there is none, or if it was
    /// made for another set (it is then removed). Checks the header and the size; the contents
    /// are checked against the digest each time they are read.
    ///
    /// # Errors
    /// [`PsiError::Storage`].
    pub fn open(path: &Path, set_id: [u8; 16]) -> Result<Option<QueryIndex>, PsiError> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(storage("opening", path, e)),
        };
        let len = f.metadata().map_err(|e| storage("reading", path, e))?.len();
        let mut head = [0u8; 28];
        let damaged = || PsiError::Storage(format!("{}: damaged query index", path.display()));
        if len < 28 + 32 {
            return Err(damaged());
        }
        f.read_exact(&mut head)
            .map_err(|e| storage("reading", path, e))?;
        if &head[..8] != FILE_MAGIC {
            return Err(damaged());
        }
        if head[8..24] != set_id {
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        let rows = u32::from_le_bytes(head[24..28].try_into().unwrap_or_default());
        if rows > ROWS_MAX || len != 28 + rows as u64 * ROW_BYTES as u64 + 32 {
            return Err(damaged());
        }
        Ok(Some(QueryIndex {
            path: path.to_path_buf(),
            file: Arc::new(f),
            set_id,
            rows,
        }))
    }

    /// Reads the whole index and checks it against its digest (about a second per GB): what
    /// a sender does before offering an index it did not build or has not checked since the
    /// file last changed, so that damage is found before a run's delivery point rather than
    /// after it (a run checks the digest again as it reads the last rows).
    ///
    /// # Errors
    /// [`PsiError::Storage`] for an unreadable or damaged file.
    pub fn verify(&self) -> Result<(), PsiError> {
        let mut reader = IndexReader::open(self)?;
        while reader.remaining > 0 {
            let n = (reader.remaining as usize).min(ROWS_AT_ONCE);
            reader.next_rows(n)?;
        }
        Ok(())
    }

    /// Rows per table answer (answers the sender sends per table).
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// The encoded set this index was made from.
    pub fn set_id(&self) -> [u8; 16] {
        self.set_id
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The coefficients of `Π (z − r)` over `F_t`, lowest first (`[1]` for no roots).
fn poly_from_roots(t: &Modulus, roots: impl Iterator<Item = u64>, out: &mut Vec<u64>) {
    out.clear();
    out.push(1);
    for r in roots {
        let neg = t.neg(r);
        out.push(0);
        for k in (1..out.len()).rev() {
            out[k] = t.add(out[k - 1], t.mul(out[k], neg));
        }
        out[0] = t.mul(out[0], neg);
    }
}

/// Row `r` of the index: `ROW_PLAINTEXTS` planes of `DEGREE` coefficients (u32 LE).
fn row_body(p: &Params, r: usize, starts: &[usize], by_bin: &[[u32; FELTS]]) -> Vec<u8> {
    let mut planes = vec![vec![0u64; DEGREE]; ROW_PLAINTEXTS];
    let mut coeffs = Vec::with_capacity(ROW_PLAINTEXTS);
    for b in 0..BINS {
        let items = &by_bin[starts[b]..starts[b + 1]];
        let lo = (r * BUNDLE_ITEMS).min(items.len());
        let hi = ((r + 1) * BUNDLE_ITEMS).min(items.len());
        for f in 0..FELTS {
            poly_from_roots(
                &p.t,
                items[lo..hi].iter().map(|it| u64::from(it[f])),
                &mut coeffs,
            );
            let slot = b * FELTS + f;
            for (k, c) in coeffs.iter().enumerate() {
                planes[k][slot] = *c;
            }
        }
    }
    let mut body = Vec::with_capacity(ROW_BYTES);
    let moduli = p.bfv.moduli();
    let half = PLAINTEXT_MODULUS / 2;
    for (k, plane) in planes.iter_mut().enumerate() {
        p.ntt_t.backward(plane);
        if k == 0 {
            for c in plane.iter() {
                body.extend_from_slice(&(*c as u32).to_le_bytes());
            }
            continue;
        }
        for (i, op) in p.ntt_eval.iter().enumerate() {
            // The centred lift of each coefficient into Z_q, then its NTT.
            let shift = moduli[i] - PLAINTEXT_MODULUS;
            let mut v: Vec<u64> = plane
                .iter()
                .map(|&c| c + if c > half { shift } else { 0 })
                .collect();
            op.forward(&mut v);
            for x in v {
                body.extend_from_slice(&x.to_le_bytes()[..NTT_BYTES[i]]);
            }
        }
    }
    body
}

/// A fresh `fhe` RNG seeded from the caller's.
fn fhe_rng<R: CryptoRngCore + ?Sized>(rng: &mut R) -> rand_chacha_09::ChaCha20Rng {
    use rand_core_09::SeedableRng;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    rand_chacha_09::ChaCha20Rng::from_seed(seed)
}

/// The receiver's tables: each `BINS` slots holding an index into its encodings or nothing.
type Table = Vec<Option<u32>>;

/// Cuckoo-hashes `placed` into as many tables as needed (at most [`TABLE_ITEMS_MAX`] items a
/// table; an item that finds no bin after [`KICKS_MAX`] evictions moves on to the next).
fn build_tables<R: CryptoRngCore + ?Sized>(
    placed: &[Placed],
    rng: &mut R,
) -> Result<Vec<Table>, PsiError> {
    let mut pending: Vec<u32> = (0..placed.len() as u32).collect();
    let mut tables = Vec::new();
    let bound = tables_bound(placed.len());
    while !pending.is_empty() {
        if tables.len() == bound {
            return Err(PsiError::TooLarge {
                what: "query tables",
                len: tables.len() as u64 + 1,
                max: bound as u64,
            });
        }
        let mut table: Table = vec![None; BINS];
        let mut held = 0usize;
        let mut left = Vec::new();
        for &item in &pending {
            if held == TABLE_ITEMS_MAX {
                left.push(item);
                continue;
            }
            let mut cur = item;
            let mut placed_ok = false;
            for _ in 0..KICKS_MAX {
                let bins = placed[cur as usize].bins;
                if let Some(&b) = bins.iter().find(|&&b| table[b as usize].is_none()) {
                    table[b as usize] = Some(cur);
                    placed_ok = true;
                    break;
                }
                let b = bins[(rng.next_u32() as usize) % HASHES] as usize;
                if let Some(out) = table[b].replace(cur) {
                    cur = out;
                }
            }
            if placed_ok {
                held += 1;
            } else {
                left.push(cur);
            }
        }
        tables.push(table);
        pending = left;
    }
    Ok(tables)
}

/// Plaintext of slot values (an `F_t` value per slot) at `level`, in `fhe`'s polynomial
/// encoding of their inverse NTT.
fn slots_plaintext(p: &Params, mut slots: Vec<u64>, level: usize) -> Result<Plaintext, PsiError> {
    p.ntt_t.backward(&mut slots);
    Plaintext::try_encode(&slots, Encoding::poly_at_level(level), &p.bfv)
        .map_err(|e| PsiError::Internal(format!("encoding a plaintext: {e}")))
}

fn peer_ct(bytes: &[u8], level: usize, what: &str) -> Result<Ciphertext, PsiError> {
    let p = params()?;
    let ct = Ciphertext::from_bytes(bytes, &p.bfv)
        .map_err(|_| PsiError::Protocol(format!("{what} that does not parse")))?;
    let at = p.bfv.level_of_context(ct[0].ctx()).ok();
    if ct.len() != 2 || at != Some(level) {
        return Err(PsiError::Protocol(format!(
            "{what} of {} polynomials at level {at:?} (2 at {level})",
            ct.len()
        )));
    }
    Ok(ct)
}

/// Whether a lookup can ever move fewer bytes than the copy of a set of `sender_items`
/// encodings (16 bytes each): false below about 190,000 items, where the key and one table's
/// queries alone outweigh the copy. A sender need not build an index for such a set.
pub fn lookup_may_pay(sender_items: usize) -> bool {
    (sender_items as u64).saturating_mul(16) > lookup_bytes_estimate(1, 0)
}

/// Estimated bytes (both ways) of looking `receiver_items` encodings up in an index of
/// `rows` rows: the key, then per table its queries and the answers.
pub fn lookup_bytes_estimate(receiver_items: usize, rows: u32) -> u64 {
    let tables = receiver_items.div_ceil(TABLE_ITEMS_MAX).max(1) as u64;
    RELIN_KEY_BYTES_EST
        + tables * (SOURCES as u64 * QUERY_CT_BYTES_EST + u64::from(rows) * ANSWER_CT_BYTES_EST)
}

/// The receiver's side: looks its `encodings` up in the sender's index of `rows` rows over
/// `link`; returns the indices of those found, ascending.
///
/// # Errors
/// [`PsiError::Protocol`] for an answer that does not parse or is not at the answers' level;
/// link errors; [`PsiError::TooLarge`] past [`tables_bound`] tables.
pub(crate) async fn lookup<R: CryptoRngCore + Send>(
    link: &dyn Link,
    encodings: Vec<Enc16>,
    rows: u32,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<Vec<usize>, PsiError> {
    let p = params()?;
    let placed: Vec<Placed> = encodings.iter().map(place).collect();
    let tables = build_tables(&placed, rng)?;
    let frng = fhe_rng(rng);
    let (sk, key_frame, mut frng) = compute(move || {
        let mut frng = frng;
        let sk = SecretKey::random(&p.bfv, &mut frng);
        let rk = RelinearizationKey::new(&sk, &mut frng)
            .map_err(|e| PsiError::Internal(format!("relinearisation key: {e}")))?;
        Ok::<_, PsiError>((sk, rk.to_bytes(), frng))
    })
    .await??;
    let sk = Arc::new(sk);
    let mut frame = BytesMut::with_capacity(5 + key_frame.len());
    frame.put_u8(KIND_QUERY_KEY);
    frame.put_u32_le(tables.len() as u32);
    frame.put_slice(&key_frame);
    link.send(frame.freeze()).await?;
    let placed = Arc::new(placed);
    let total = tables.len() as u64 * u64::from(rows);
    let mut done = 0u64;
    let mut found = vec![false; encodings.len()];
    for table in tables {
        let table = Arc::new(table);
        let queries = compute({
            let (sk, table, placed) = (Arc::clone(&sk), Arc::clone(&table), Arc::clone(&placed));
            let mut r = fork(&mut frng);
            move || query_frames(p, &sk, &table, &placed, &mut r)
        })
        .await??;
        for q in queries {
            link.send(q).await?;
        }
        for _ in 0..rows {
            let frame = own_frame(link.recv().await?, KIND_ANSWER, "an answer")?;
            let hits = compute({
                let (sk, table) = (Arc::clone(&sk), Arc::clone(&table));
                move || answer_hits(p, &sk, &frame[1..], &table)
            })
            .await??;
            for i in hits {
                found[i] = true;
            }
            done += 1;
            progress.report(PHASE_MATCH, done, total);
        }
    }
    Ok(found
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .map(|(i, _)| i)
        .collect())
}

/// A new ChaCha RNG seeded from another (one per table, so each table's work runs off the
/// runtime).
fn fork(r: &mut rand_chacha_09::ChaCha20Rng) -> rand_chacha_09::ChaCha20Rng {
    use rand_core_09::{RngCore, SeedableRng};
    let mut seed = [0u8; 32];
    r.fill_bytes(&mut seed);
    rand_chacha_09::ChaCha20Rng::from_seed(seed)
}

/// One table's query frames: the encrypted powers [`SOURCE_POWERS`] of each slot's value.
fn query_frames(
    p: &Params,
    sk: &SecretKey,
    table: &Table,
    placed: &[Placed],
    rng: &mut rand_chacha_09::ChaCha20Rng,
) -> Result<Vec<Bytes>, PsiError> {
    let mut base = vec![0u64; DEGREE];
    for (b, slot) in table.iter().enumerate() {
        if let Some(i) = slot {
            for (f, v) in placed[*i as usize].felts.iter().enumerate() {
                base[b * FELTS + f] = u64::from(*v);
            }
        }
    }
    let mut out = Vec::with_capacity(SOURCES);
    for e in SOURCE_POWERS {
        let power: Vec<u64> = base.iter().map(|&v| p.t.pow(v, e as u64)).collect();
        let pt = slots_plaintext(p, power, 0)?;
        let ct: Ciphertext = sk
            .try_encrypt(&pt, rng)
            .map_err(|e| PsiError::Internal(format!("encrypting a query: {e}")))?;
        let bytes = ct.to_bytes();
        let mut frame = BytesMut::with_capacity(1 + bytes.len());
        frame.put_u8(KIND_QUERY);
        frame.put_slice(&bytes);
        out.push(frame.freeze());
    }
    Ok(out)
}

/// Indices of the table's items whose slots are all zero in this answer.
fn answer_hits(
    p: &Params,
    sk: &SecretKey,
    bytes: &[u8],
    table: &Table,
) -> Result<Vec<usize>, PsiError> {
    let ct = peer_ct(bytes, ANSWER_LEVEL, "an answer")?;
    let pt = sk
        .try_decrypt(&ct)
        .map_err(|e| PsiError::Protocol(format!("an answer that does not decrypt: {e}")))?;
    let mut slots = Vec::<u64>::try_decode(&pt, Encoding::poly_at_level(ANSWER_LEVEL))
        .map_err(|e| PsiError::Protocol(format!("an answer that does not decode: {e}")))?;
    p.ntt_t.forward(&mut slots);
    Ok(table
        .iter()
        .enumerate()
        .filter_map(|(b, slot)| {
            let i = (*slot)? as usize;
            slots[b * FELTS..(b + 1) * FELTS]
                .iter()
                .all(|&v| v == 0)
                .then_some(i)
        })
        .collect())
}

/// The sender's side: answers the receiver's tables from `index` (whose rows the receiver was
/// told). `receiver_items` bounds the tables the receiver may send.
///
/// # Errors
/// [`PsiError::Protocol`] for a key or query that does not parse, or a table count out of
/// bounds; [`PsiError::Storage`] for the index file (a damaged one is found before the
/// answers of the last rows of a table exist); link errors.
pub(crate) async fn answer(
    link: &dyn Link,
    index: &QueryIndex,
    receiver_items: usize,
    progress: &dyn Progress,
) -> Result<(), PsiError> {
    let p = params()?;
    let frame = own_frame(link.recv().await?, KIND_QUERY_KEY, "the query key")?;
    if frame.len() < 5 {
        return Err(PsiError::Protocol(format!(
            "a query key frame of {} bytes",
            frame.len()
        )));
    }
    let tables = u32::from_le_bytes(frame[1..5].try_into().unwrap_or_default()) as usize;
    if tables > tables_bound(receiver_items) || tables > receiver_items {
        return Err(PsiError::Protocol(format!(
            "{tables} query tables for {receiver_items} items"
        )));
    }
    let rk = RelinearizationKey::from_bytes(&frame[5..], &p.bfv)
        .map_err(|_| PsiError::Protocol("a relinearisation key that does not parse".into()))?;
    let mul = Arc::new(
        Multiplicator::default(&rk)
            .map_err(|e| PsiError::Internal(format!("multiplicator: {e}")))?,
    );
    let total = tables as u64 * u64::from(index.rows);
    let mut done = 0u64;
    for _ in 0..tables {
        let mut sources = Vec::with_capacity(SOURCES);
        for _ in 0..SOURCES {
            let frame = own_frame(link.recv().await?, KIND_QUERY, "a query")?;
            sources.push(peer_ct(&frame[1..], 0, "a query")?);
        }
        let mul = Arc::clone(&mul);
        let powers = Arc::new(compute(move || powers(&mul, sources)).await??);
        // Rows are read (and hashed) while the rows read before are evaluated; the digest is
        // checked as the last rows are read, before any of their answers exist.
        let mut reader = IndexReader::open(index)?;
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        while !bodies.is_empty() || reader.remaining > 0 {
            let (answers, next, r) = compute({
                let powers = Arc::clone(&powers);
                move || {
                    let mut r = reader;
                    let (answers, next) = rayon::join(
                        || {
                            bodies
                                .par_iter()
                                .map(|body| answer_row(p, &powers, body))
                                .collect::<Result<Vec<Bytes>, PsiError>>()
                        },
                        || r.next_rows(ROWS_AT_ONCE),
                    );
                    Ok::<_, PsiError>((answers?, next?, r))
                }
            })
            .await??;
            reader = r;
            bodies = next;
            let n = answers.len() as u64;
            for a in answers {
                link.send(a).await?;
            }
            done += n;
            progress.report(PHASE_MATCH, done, total);
        }
    }
    Ok(())
}

/// The base-4 digits of `k` as powers, `k = Σ d·4^i` → `[d·4^i]` (non-zero digits only):
/// each is a source.
fn digits(k: usize) -> Vec<usize> {
    let (mut out, mut k, mut p) = (Vec::new(), k, 1);
    while k > 0 {
        if k % 4 != 0 {
            out.push((k % 4) * p);
        }
        k /= 4;
        p *= 4;
    }
    out
}

/// Every power `x^1 … x^BUNDLE_ITEMS` from the sources, at the evaluation level: `x^k` is the
/// product of the powers of the lower and the upper half of `k`'s base-4 digits, so its depth
/// is `⌈log2 digits(k)⌉ ≤ 2`. Each depth's products run in parallel.
fn powers(mul: &Multiplicator, sources: Vec<Ciphertext>) -> Result<Vec<Ciphertext>, PsiError> {
    let mut pw: Vec<Option<Ciphertext>> = vec![None; BUNDLE_ITEMS + 1];
    for (e, s) in SOURCE_POWERS.into_iter().zip(sources) {
        pw[e] = Some(s);
    }
    let depth = |k: usize| digits(k).len().next_power_of_two().trailing_zeros();
    for d in 1..=2u32 {
        let ks: Vec<usize> = (1..=BUNDLE_ITEMS)
            .filter(|&k| pw[k].is_none() && depth(k) == d)
            .collect();
        let made = ks
            .par_iter()
            .map(|&k| {
                let parts = digits(k);
                let lo: usize = parts[..parts.len() / 2].iter().sum();
                let (a, b) = (pw[lo].as_ref(), pw[k - lo].as_ref());
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(PsiError::Internal(format!("power {k} before its factors")));
                };
                mul.multiply(a, b)
                    .map_err(|e| PsiError::Protocol(format!("a query that does not multiply: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (k, c) in ks.into_iter().zip(made) {
            pw[k] = Some(c);
        }
    }
    pw.into_par_iter()
        .skip(1)
        .map(|c| {
            let mut c = c.ok_or_else(|| PsiError::Internal("a missing power".into()))?;
            c.switch_to_level(EVAL_LEVEL)
                .map_err(|e| PsiError::Internal(format!("switching a power: {e}")))?;
            Ok(c)
        })
        .collect()
}

/// One row's answer: `Σ_k plaintext(row, k) · x^k`, switched to the answers' level.
fn answer_row(p: &Params, powers: &[Ciphertext], body: &[u8]) -> Result<Bytes, PsiError> {
    let ctx = p
        .bfv
        .context_at_level(EVAL_LEVEL)
        .map_err(|e| PsiError::Internal(e.to_string()))?;
    let moduli = &p.bfv.moduli()[..MODULI_BITS.len() - EVAL_LEVEL];
    let constant_bytes = DEGREE * 4;
    let plane_bytes = DEGREE * (NTT_BYTES[0] + NTT_BYTES[1]);
    let mut polys = Vec::with_capacity(BUNDLE_ITEMS);
    for k in 0..BUNDLE_ITEMS {
        let plane = &body[constant_bytes + k * plane_bytes..constant_bytes + (k + 1) * plane_bytes];
        let mut v = vec![0u64; moduli.len() * DEGREE];
        let (lo, hi) = plane.split_at(DEGREE * NTT_BYTES[0]);
        let mut in_range = true;
        for ((row, (bytes, width)), &q) in v
            .chunks_exact_mut(DEGREE)
            .zip([(lo, NTT_BYTES[0]), (hi, NTT_BYTES[1])])
            .zip(moduli)
        {
            for (dst, x) in row.iter_mut().zip(bytes.chunks_exact(width)) {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(x);
                *dst = u64::from_le_bytes(b);
                in_range &= *dst < q;
            }
        }
        // The digest is checked only at the file's end: a damaged value must not reach the
        // products before.
        if !in_range {
            return Err(PsiError::Storage("a damaged query index".into()));
        }
        let poly = Poly::try_convert_from(v, ctx, true, Representation::Ntt)
            .map_err(|e| PsiError::Internal(format!("a row's plaintext: {e}")))?;
        polys.push(poly);
    }
    let dot = |j: usize| {
        fhe_math::rq::dot_product(powers.iter().map(|c| &c[j]), polys.iter())
            .map_err(|e| PsiError::Internal(format!("a row's product: {e}")))
    };
    let mut ct = Ciphertext::new(vec![dot(0)?, dot(1)?], &p.bfv)
        .map_err(|e| PsiError::Internal(format!("a row's answer: {e}")))?;
    let constant: Vec<u64> = body[..constant_bytes]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let c0 = Plaintext::try_encode(&constant, Encoding::poly_at_level(EVAL_LEVEL), &p.bfv)
        .map_err(|e| PsiError::Internal(format!("a row's constant: {e}")))?;
    ct += &c0;
    ct.switch_to_level(ANSWER_LEVEL)
        .map_err(|e| PsiError::Internal(format!("switching an answer: {e}")))?;
    let bytes = ct.to_bytes();
    let mut frame = BytesMut::with_capacity(1 + bytes.len());
    frame.put_u8(KIND_ANSWER);
    frame.put_slice(&bytes);
    Ok(frame.freeze())
}

/// Reads an index's rows in order, hashing them for the digest check at the end.
struct IndexReader {
    file: Arc<std::fs::File>,
    offset: u64,
    path: PathBuf,
    h: blake3::Hasher,
    remaining: u32,
}

impl IndexReader {
    fn open(index: &QueryIndex) -> Result<IndexReader, PsiError> {
        let mut head = [0u8; 28];
        index
            .file
            .read_exact_at(&mut head, 0)
            .map_err(|e| storage("reading", &index.path, e))?;
        let mut h = blake3::Hasher::new();
        h.update(&head);
        if &head[..8] != FILE_MAGIC || head[8..24] != index.set_id {
            return Err(PsiError::Storage(format!(
                "{}: damaged query index",
                index.path.display()
            )));
        }
        Ok(IndexReader {
            file: Arc::clone(&index.file),
            offset: 28,
            path: index.path.clone(),
            h,
            remaining: index.rows,
        })
    }

    /// The next `n` rows at most (none at the end); the digest is checked with the last.
    fn next_rows(&mut self, n: usize) -> Result<Vec<Vec<u8>>, PsiError> {
        let mut out = Vec::new();
        while out.len() < n && self.remaining > 0 {
            let mut body = vec![0u8; ROW_BYTES];
            self.file
                .read_exact_at(&mut body, self.offset)
                .map_err(|e| storage("reading", &self.path, e))?;
            self.offset += ROW_BYTES as u64;
            self.h.update(&body);
            self.remaining -= 1;
            out.push(body);
        }
        if self.remaining == 0 && !out.is_empty() {
            self.check_digest()?;
        }
        Ok(out)
    }

    fn check_digest(&mut self) -> Result<(), PsiError> {
        let mut digest = [0u8; 32];
        self.file
            .read_exact_at(&mut digest, self.offset)
            .map_err(|e| storage("reading", &self.path, e))?;
        if digest != *self.h.finalize().as_bytes() {
            return Err(PsiError::Storage(format!(
                "{}: damaged query index",
                self.path.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_modulus_is_the_smallest_prime_above_2_23_that_batches() {
        let is_prime = |n: u64| {
            (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
        };
        let first = (0..)
            .map(|i| (1u64 << 23) / 16384 * 16384 + 1 + i * 16384)
            .find(|&c| c > 1 << 23 && is_prime(c));
        assert_eq!(first, Some(PLAINTEXT_MODULUS));
    }

    #[test]
    fn every_power_is_a_product_of_at_most_four_sources() {
        for k in 1..=BUNDLE_ITEMS {
            let d = digits(k);
            assert_eq!(d.iter().sum::<usize>(), k);
            assert!((1..=4).contains(&d.len()), "{k}: {d:?}");
            assert!(d.iter().all(|x| SOURCE_POWERS.contains(x)), "{k}: {d:?}");
            let lo: usize = d[..d.len() / 2].iter().sum();
            // Both halves are sources or products of two (depth at most 2).
            assert!(digits(lo).len() <= 2 && digits(k - lo).len() <= 2);
        }
    }

    #[test]
    fn polynomials_from_roots_vanish_exactly_at_their_roots() {
        let t = Modulus::new(PLAINTEXT_MODULUS).expect("modulus");
        let roots = [5u64, 17, 8_000_000, 5];
        let mut c = Vec::new();
        poly_from_roots(&t, roots.iter().copied(), &mut c);
        assert_eq!(c.len(), roots.len() + 1);
        let eval = |x: u64| c.iter().rev().fold(0, |acc, &k| t.add(t.mul(acc, x), k));
        for r in roots {
            assert_eq!(eval(r), 0);
        }
        for x in [0u64, 1, 6, 8_000_001] {
            assert_ne!(eval(x), 0);
        }
        poly_from_roots(&t, std::iter::empty(), &mut c);
        assert_eq!(c, vec![1]);
    }

    #[test]
    fn cuckoo_tables_hold_every_item_once_within_their_bins() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let placed: Vec<Placed> = (0..5000u32)
            .map(|i| {
                let mut e = [0u8; 16];
                e[..4].copy_from_slice(&i.to_le_bytes());
                place(&e)
            })
            .collect();
        let tables = build_tables(&placed, &mut rng).expect("tables");
        assert_eq!(
            tables.len(),
            3,
            "5,000 items fill three tables of at most 1,740"
        );
        let mut seen = vec![0u32; placed.len()];
        for t in &tables {
            assert!(t.iter().flatten().count() <= TABLE_ITEMS_MAX);
            for (b, slot) in t.iter().enumerate() {
                if let Some(i) = slot {
                    seen[*i as usize] += 1;
                    assert!(placed[*i as usize].bins.contains(&(b as u16)));
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    use crate::NoProgress;
    use rand::{Rng, SeedableRng};
    use tessera_core::MemLink;

    fn random_encodings(rng: &mut rand_chacha::ChaCha20Rng, n: usize) -> Vec<Enc16> {
        (0..n).map(|_| rng.r#gen()).collect()
    }

    fn built(n: usize, seed: u64) -> (tempfile::TempDir, Vec<Enc16>, QueryIndex) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut theirs = random_encodings(&mut rng, n);
        theirs.sort_unstable();
        theirs.dedup();
        let dir = tempfile::tempdir().expect("tempdir");
        let index = QueryIndex::build(&theirs, [1; 16], &dir.path().join("ix"), &|_, _| Ok(()))
            .expect("index");
        (dir, theirs, index)
    }

    #[test]
    fn verify_finds_damage_anywhere_in_the_rows_and_a_small_set_is_not_worth_an_index() {
        let (_dir, _, index) = built(3_000, 6);
        index.verify().expect("a sound index");
        let len = std::fs::metadata(index.path()).expect("meta").len();
        for at in [40, len / 2, len - 40] {
            let mut bytes = std::fs::read(index.path()).expect("read");
            bytes[at as usize] ^= 0x10;
            let damaged = index.path().with_extension("damaged");
            std::fs::write(&damaged, &bytes).expect("write");
            let copy = QueryIndex::open(&damaged, index.set_id())
                .expect("the header and size are sound")
                .expect("same set");
            assert!(
                matches!(copy.verify(), Err(PsiError::Storage(_))),
                "a flipped bit at {at} of {len}"
            );
        }
        // A run reads through the handle opened with the index: removing the file does not
        // affect it.
        std::fs::remove_file(index.path()).expect("remove");
        index.verify().expect("read through its handle");
        assert!(!lookup_may_pay(100_000));
        assert!(lookup_may_pay(250_000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookup_and_answer_agree_with_the_reference() {
        let (_dir, theirs, index) = built(30_000, 3);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let mut ours: Vec<Enc16> = theirs.iter().step_by(97).copied().collect();
        ours.extend(random_encodings(&mut rng, 200));
        let (a, b) = MemLink::pair();
        let (found, answered) = tokio::join!(
            lookup(&a, ours.clone(), index.rows(), &mut rng, &NoProgress),
            answer(&b, &index, ours.len(), &NoProgress)
        );
        answered.expect("sender");
        let want: Vec<usize> = ours
            .iter()
            .enumerate()
            .filter(|(_, e)| theirs.binary_search(e).is_ok())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(want.len(), theirs.len().div_ceil(97));
        assert_eq!(found.expect("receiver"), want);
    }

    #[test]
    fn the_byte_estimates_are_the_real_sizes() {
        let p = params().expect("params");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut frng = fhe_rng(&mut rng);
        let sk = SecretKey::random(&p.bfv, &mut frng);
        let rk = RelinearizationKey::new(&sk, &mut frng).expect("rk");
        let near = |real: usize, est: u64| (real as f64 / est as f64 - 1.0).abs() < 0.01;
        assert!(near(rk.to_bytes().len(), RELIN_KEY_BYTES_EST));
        let pt = slots_plaintext(p, vec![3; DEGREE], 0).expect("pt");
        let mut ct: Ciphertext = sk.try_encrypt(&pt, &mut frng).expect("ct");
        assert!(near(ct.to_bytes().len(), QUERY_CT_BYTES_EST));
        ct.switch_to_level(ANSWER_LEVEL).expect("switch");
        assert!(
            near(ct.to_bytes().len(), ANSWER_CT_BYTES_EST),
            "{}",
            ct.to_bytes().len()
        );
    }

    /// A real query key frame and one table's real queries.
    fn real_queries() -> (Bytes, Vec<Bytes>, SecretKey) {
        let p = params().expect("params");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let mut frng = fhe_rng(&mut rng);
        let sk = SecretKey::random(&p.bfv, &mut frng);
        let rk = RelinearizationKey::new(&sk, &mut frng).expect("rk");
        let mut key = vec![KIND_QUERY_KEY];
        key.extend_from_slice(&1u32.to_le_bytes());
        key.extend_from_slice(&rk.to_bytes());
        let placed = vec![place(&[9; 16])];
        let mut table: Table = vec![None; BINS];
        table[placed[0].bins[0] as usize] = Some(0);
        let queries = query_frames(p, &sk, &table, &placed, &mut frng).expect("queries");
        (Bytes::from(key), queries, sk)
    }

    /// `answer` against a receiver that sends `frames`.
    async fn answer_against(frames: Vec<Bytes>) -> PsiError {
        let (_dir, _, index) = built(500, 7);
        let (a, b) = MemLink::pair();
        // The frames are queued before the link closes.
        let send = async move {
            for f in frames {
                if a.send(f).await.is_err() {
                    break;
                }
            }
        };
        let ((), out) = tokio::join!(send, answer(&b, &index, 10, &NoProgress));
        out.expect_err("a hostile receiver")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_query_frames_are_typed_errors() {
        let (key, queries, _) = real_queries();
        let protocol = |e: &PsiError| matches!(e, PsiError::Protocol(_));
        // More tables than the receiver has items; a short key frame; a key that is noise.
        let mut many = key.to_vec();
        many[1..5].copy_from_slice(&11u32.to_le_bytes());
        let e = answer_against(vec![Bytes::from(many)]).await;
        assert!(protocol(&e) && e.to_string().contains("tables"), "{e}");
        let e = answer_against(vec![Bytes::from_static(&[KIND_QUERY_KEY, 1])]).await;
        assert!(protocol(&e), "{e}");
        let mut noise = key[..5].to_vec();
        noise.extend(std::iter::repeat_n(0xA5, 5000));
        let e = answer_against(vec![Bytes::from(noise)]).await;
        assert!(protocol(&e) && e.to_string().contains("key"), "{e}");
        // A query that is noise, cut short, or at another level; a frame of another kind.
        let mut bad = vec![key.clone()];
        bad.push(Bytes::from(vec![KIND_QUERY, 1, 2, 3]));
        let e = answer_against(bad).await;
        assert!(protocol(&e) && e.to_string().contains("query"), "{e}");
        let mut cut = vec![key.clone()];
        cut.push(queries[0].slice(..queries[0].len() / 2));
        let e = answer_against(cut).await;
        assert!(protocol(&e), "{e}");
        let p = params().expect("params");
        let mut low = Ciphertext::from_bytes(&queries[0][1..], &p.bfv).expect("ct");
        low.switch_to_level(1).expect("switch");
        let mut frame = vec![KIND_QUERY];
        frame.extend_from_slice(&low.to_bytes());
        let e = answer_against(vec![key.clone(), Bytes::from(frame)]).await;
        assert!(protocol(&e) && e.to_string().contains("level"), "{e}");
        let e = answer_against(vec![key.clone(), Bytes::from_static(&[0x04])]).await;
        assert!(protocol(&e), "{e}");
    }

    /// `lookup` (one item, one row) against a sender that answers with `answer`.
    async fn lookup_against(reply: Bytes) -> PsiError {
        let (a, b) = MemLink::pair();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let hostile = async move {
            for _ in 0..=SOURCES {
                if b.recv().await.is_err() {
                    return;
                }
            }
            let _ = b.send(reply).await;
        };
        let (out, ()) = tokio::join!(lookup(&a, vec![[1; 16]], 1, &mut rng, &NoProgress), hostile);
        out.expect_err("a hostile sender")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_answers_are_typed_errors() {
        let protocol = |e: &PsiError| matches!(e, PsiError::Protocol(_));
        let e = lookup_against(Bytes::from_static(&[KIND_ANSWER, 9, 9, 9])).await;
        assert!(protocol(&e) && e.to_string().contains("answer"), "{e}");
        // A well-formed ciphertext at the queries' level, not the answers'.
        let (_, queries, _) = real_queries();
        let mut at_zero = vec![KIND_ANSWER];
        at_zero.extend_from_slice(&queries[0][1..]);
        let e = lookup_against(Bytes::from(at_zero)).await;
        assert!(protocol(&e) && e.to_string().contains("level"), "{e}");
        let e = lookup_against(Bytes::from_static(&[0x04])).await;
        assert!(protocol(&e), "{e}");
    }
}
