//! A `tee` task (issue "TEE scene"): the buyer's statistics query (the language of the `mpc`
//! scene) computed in the clear inside the attested enclave on the provider's worker.
//!
//! 1. **Buyer** (receiver): reads its key columns and the columns of its own the query
//!    declares, makes a one-time X25519 key pair, and sends its rows (normalised keys and
//!    values) with the one-time public key, HPKE-sealed (RFC 9180,
//!    `tessera_tee::seal_to`) to the enclave key its signed task names — the key the
//!    operator's appraisal of the enclave bound (`TaskSpec.tee`).
//! 2. **Enclave** (the provider's worker, sender): asks the operator's key broker for its
//!    dataset's key (released HPKE-wrapped to the enclave key, only while the enclave's
//!    attestation meets the licence's `envHard` and only for this live task); opens the
//!    sealed dataset file in memory (`tessera_tee::open_stream`; the clear rows are never
//!    written to disk); opens the buyer's rows; joins both on the keys (each key's first row
//!    on each side, the buyer's row order); checks the query's plan against the licence's
//!    output controls (`minGroupSize`, `aggregatesOnly`) and computes it
//!    (`tessera_mpc::query::evaluate_clear`, suppressing small groups before anything leaves);
//!    records the delivery; seals the result to the buyer's one-time key and sends it.
//! 3. **Buyer**: opens the result, writes it as CSV (the columns of an `mpc` job's result,
//!    never replacing a file) and acknowledges; the enclave ends on that answer.
//!
//! Frames on the peer link: `TTE1in..` then `TTE1out.` each a header (magic, the HPKE
//! encapsulated key, the ciphertext's length) followed by the ciphertext in chunks of at most
//! [`CHUNK_BYTES`]; then the buyer's `TTE1done`. The sealed input is at most
//! [`SEALED_BYTES_MAX`]; anything else from the peer is a typed peer error.
//!
//! # What each party learns
//!
//! * The **buyer** learns the query's outputs per group (whether each group has at least
//!   `max(minGroupSize, 1)` selected rows, and the aggregates of those that do); nothing of
//!   the provider's rows otherwise (the job's result size is the result's rows, not the
//!   aligned count, which would tell the suppressed groups' total). As with any aggregate
//!   interface, differences of queries (a `sum` over all rows minus one over all but one row)
//!   can isolate a row; `minGroupSize` does not stop that — the scene's `counts` bound how
//!   many queries a licence allows.
//! * The **provider's host** (the worker process outside the enclave, its operator) learns
//!   the public query and schema and the sizes of the sealed messages; the buyer's rows and
//!   the result are sealed to keys only the enclave and the buyer hold. What the enclave
//!   itself computes on is protected only as well as the TEE protects it (threat model of
//!   `tessera_tee`); in the `insecure-simulated-tee` mode there is no enclave and the
//!   provider's worker process sees the buyer's rows in clear — development only, and refused
//!   by any licence that names real hardware.
//! * The **operator** holds the dataset keys (its key broker) but never the sealed files; it
//!   sees no row of either party.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tessera_core::table::{KeySpec, read_keys_keeping, read_keys_keeping_csv_bytes};
use tessera_core::{Link, TaskRole, TaskSpec};
use tessera_mpc::FixedPoint;
use tessera_mpc::query::job::plan_of;
use tessera_mpc::query::{ColumnKind, OutputPolicy, QueryError, Side, evaluate_clear};
use tessera_tee::{EnclaveKeyPair, WorkerPublicKey, open_stream, seal_to};
use zeroize::Zeroizing;

use crate::exec::{
    DeliverySink, ExecEnv, TaskError, TaskOutcome, dataset_path, fresh_result_path, open_link,
};
use crate::mpc::{declared_columns, own_table, recv, result_table, send, write_table};

/// Magic of the buyer's sealed rows.
const MAGIC_IN: &[u8; 8] = b"TTE1in..";
/// Magic of the enclave's sealed result.
const MAGIC_OUT: &[u8; 8] = b"TTE1out.";
/// The buyer's acknowledgement, the job's last frame.
const DONE: &[u8; 8] = b"TTE1done";
/// Ciphertext bytes per frame.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest sealed message (the buyer's rows, or the result), in bytes.
pub const SEALED_BYTES_MAX: u64 = 512 << 20;
/// Largest sealed dataset file the enclave opens, in bytes (it is held in memory).
pub const DATASET_BYTES_MAX: u64 = 1 << 30;
/// The version of a dataset's sealed file (`tessera dataset seal` seals version 1).
pub const SEALED_VERSION: u64 = 1;
/// Most columns of the buyer's rows.
const COLUMNS_MAX: usize = 64;

/// Runs a `tee` task to completion (see the module docs).
pub(crate) async fn run(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let (Some(mpc), Some(tee)) = (&spec.mpc, &spec.tee) else {
        return Err(TaskError::Ticket(
            "a tee task without its query or enclave".into(),
        ));
    };
    let fx = FixedPoint::new(mpc.fraction_bits)
        .map_err(|e| TaskError::Ticket(format!("the task's fixed-point format: {e}")))?;
    let policy = OutputPolicy {
        min_group_size: mpc.min_group_size,
        aggregates_only: mpc.aggregates_only,
    };
    plan_of(&mpc.query, 1, &policy, fx)
        .map_err(|e| TaskError::Ticket(format!("the task's query: {e}")))?;
    let enclave_key = WorkerPublicKey::from_hex(&tee.enclave_public_key)
        .ok_or_else(|| TaskError::Ticket("the task's enclave key is not 64 hex digits".into()))?;
    let key_spec = KeySpec {
        columns: spec.key_columns.clone(),
        case: spec.key_case,
        unicode: spec.unicode_form,
        empty: spec.empty_keys,
    };
    let aad = |dir: &str| {
        format!(
            "tessera-tee-job/v1/{}/{}/{dir}",
            spec.job_id, spec.session_id
        )
    };
    match spec.role {
        TaskRole::Receiver => {
            let out_path = fresh_result_path(&env.output_dir, &spec.output)?;
            let own = declared_columns(mpc, Side::Buyer)?;
            let keep: Vec<String> = own.iter().map(|(n, _)| n.clone()).collect();
            let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
            progress.report("read", 0, 0);
            let input =
                tokio::task::spawn_blocking(move || read_keys_keeping(&path, &key_spec, &keep))
                    .await
                    .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
                    .map_err(|e| TaskError::Input(e.to_string()))?;
            progress.report("read", input.rows, input.rows);
            // Our own values must fit their declared columns: checked here, as our input
            // error, before anything is sent (the enclave checks again what it receives).
            let all: Vec<usize> = (0..input.keys.len()).collect();
            own_table(&own, &input.kept, &all)?;
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut_slice());
            let mine = EnclaveKeyPair::derive(&seed);
            let plain = Zeroizing::new(encode_rows(
                &mine.public(),
                &own.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                &input.keys,
                &input.kept,
            ));
            let mut seal_seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seal_seed);
            let (enc, ct) = seal_to(&enclave_key, aad("in").as_bytes(), &plain, seal_seed)
                .map_err(|e| TaskError::Ticket(format!("the task's enclave key: {e}")))?;
            drop(plain);
            let link = open_link(env, spec).await?;
            progress.report("send", 0, ct.len() as u64);
            send_sealed(&link, MAGIC_IN, &enc, &ct).await?;
            progress.report("send", ct.len() as u64, ct.len() as u64);
            progress.report("compute", 0, 1);
            let (enc, ct) = recv_sealed(&link, MAGIC_OUT).await?;
            let opened = mine
                .open_sealed(&enc, &ct, aad("out").as_bytes())
                .map_err(|_| TaskError::Peer("the enclave's result does not open".into()))?;
            let answer: Answer = serde_json::from_slice(&opened)
                .map_err(|e| TaskError::Peer(format!("the enclave's result: {e}")))?;
            progress.report("compute", 1, 1);
            let (header, rows) = match answer {
                Answer::Result { header, rows } => (header, rows),
                Answer::BuyerInput { error } => {
                    // Acknowledged, so the enclave ends on our answer, not a broken link.
                    send(&link, Bytes::from_static(DONE)).await?;
                    return Err(TaskError::Input(format!(
                        "the enclave refused our rows: {error}"
                    )));
                }
            };
            if rows.iter().any(|r| r.len() != header.len()) {
                return Err(TaskError::Peer("the enclave's result is ragged".into()));
            }
            // The result's size is its rows (groups), not the aligned rows: with groups
            // suppressed, the aligned count would tell the suppressed groups' total size.
            let result_rows = rows.len() as u64;
            let written = write_table(out_path, header, rows).await?;
            send(&link, Bytes::from_static(DONE)).await?;
            Ok(TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                result_size: Some(result_rows),
                result_file: Some(written),
                result_location: spec.output.clone(),
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
        TaskRole::Sender => {
            let host = env.tee.clone().ok_or_else(|| {
                TaskError::Ticket("this worker runs no enclave (start it with --tee)".into())
            })?;
            if host.enclave().public() != enclave_key {
                return Err(TaskError::Ticket(
                    "the task names another enclave key than this worker's (it restarted since \
                     the attestation the job was placed on)"
                        .into(),
                ));
            }
            let own = declared_columns(mpc, Side::Provider)?;
            let buyer_own = declared_columns(mpc, Side::Buyer)?;
            let keep: Vec<String> = own.iter().map(|(n, _)| n.clone()).collect();
            let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
            progress.report("key", 0, 1);
            let released = host.release_key(&spec.task_id).await?;
            let key = host
                .enclave()
                .open_released(&released)
                .map_err(|e| TaskError::Internal(format!("the released key: {e}")))?;
            progress.report("key", 1, 1);
            progress.report("read", 0, 0);
            let dataset_id = tee.dataset_id.clone();
            let label = path.clone();
            let input = tokio::task::spawn_blocking(move || {
                let clear = open_dataset(&path, &key, &dataset_id)?;
                read_keys_keeping_csv_bytes(&label, &clear, &key_spec, &keep)
                    .map_err(|e| TaskError::Input(e.to_string()))
            })
            .await
            .map_err(|e| TaskError::Internal(format!("reader task: {e}")))??;
            progress.report("read", input.rows, input.rows);
            let link = open_link(env, spec).await?;
            let (enc, ct) = recv_sealed(&link, MAGIC_IN).await?;
            let opened = host
                .enclave()
                .open_sealed(&enc, &ct, aad("in").as_bytes())
                .map_err(|_| TaskError::Peer("the buyer's rows do not open".into()))?;
            let buyer = decode_rows(&opened).map_err(TaskError::Peer)?;
            drop(opened);
            progress.report("compute", 0, 1);
            let answer = compute(mpc, &policy, fx, &own, &buyer_own, &input, &buyer)?;
            progress.report("compute", 1, 1);
            // The delivery point: recorded before the result leaves the enclave.
            if matches!(answer, Answer::Result { .. }) && !delivery.delivered(input.rows).await {
                return Err(TaskError::Internal(
                    "the operator did not record the delivery; the result was not sent".into(),
                ));
            }
            let body = Zeroizing::new(
                serde_json::to_vec(&answer)
                    .map_err(|e| TaskError::Internal(format!("encoding the result: {e}")))?,
            );
            let mut seal_seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seal_seed);
            let (enc, ct) = seal_to(&buyer.public, aad("out").as_bytes(), &body, seal_seed)
                .map_err(|e| TaskError::Peer(format!("the buyer's one-time key: {e}")))?;
            send_sealed(&link, MAGIC_OUT, &enc, &ct).await?;
            let acknowledged = recv(&link).await.is_ok_and(|f| f.as_ref() == DONE);
            if matches!(answer, Answer::BuyerInput { .. }) {
                // What was wrong went to the buyer only (sealed): it is the buyer's data.
                return Err(TaskError::Peer(
                    "the buyer's rows do not fit the query's declared columns (the buyer was \
                     told which)"
                        .into(),
                ));
            }
            if !acknowledged {
                return Err(TaskError::Peer(
                    "the peer did not acknowledge the result".into(),
                ));
            }
            Ok(TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
    }
}

/// What the enclave sends the buyer (sealed).
#[derive(Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
enum Answer {
    /// The result table.
    Result {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// The buyer's rows do not fit the declared schema (column and aligned row named, never
    /// a value).
    BuyerInput { error: String },
}

/// The computation inside the enclave: join, tables, plan, clear evaluation.
fn compute(
    mpc: &tessera_core::MpcSpec,
    policy: &OutputPolicy,
    fx: FixedPoint,
    own: &[(String, ColumnKind)],
    buyer_own: &[(String, ColumnKind)],
    input: &tessera_core::table::KeyedInput,
    buyer: &BuyerRows,
) -> Result<Answer, TaskError> {
    let names: Vec<&String> = buyer_own.iter().map(|(n, _)| n).collect();
    if buyer.columns.iter().collect::<Vec<_>>() != names {
        return Err(TaskError::Peer(
            "the buyer sent other columns than the query declares".into(),
        ));
    }
    let mut first: std::collections::HashMap<&[u8], usize> =
        std::collections::HashMap::with_capacity(input.keys.len());
    for (i, k) in input.keys.iter().enumerate() {
        first.entry(k.as_slice()).or_insert(i);
    }
    let mut seen = std::collections::HashSet::new();
    let (mut brows, mut prows) = (Vec::new(), Vec::new());
    for (i, k) in buyer.keys.iter().enumerate() {
        if let (Some(&p), true) = (first.get(k.as_slice()), seen.insert(k.as_slice())) {
            brows.push(i);
            prows.push(p);
        }
    }
    let btable = match own_table(buyer_own, &buyer.kept, &brows) {
        Ok(t) => t,
        Err(e) => {
            return Ok(Answer::BuyerInput {
                error: e.to_string(),
            });
        }
    };
    let ptable = own_table(own, &input.kept, &prows)?;
    if brows.is_empty() {
        // No common keys: every group is empty, so none is reported (a row-level query has no
        // rows); a plan of no rows does not exist, so the shape comes from a plan of one.
        let one = plan_of(&mpc.query, 1, policy, fx)
            .map_err(|e| TaskError::Ticket(format!("the task's query: {e}")))?;
        let result = if one.row_level {
            tessera_mpc::query::QueryResult::Rows(vec![Vec::new(); one.query.items.len()])
        } else {
            tessera_mpc::query::QueryResult::Groups(
                (0..one.groups)
                    .map(|g| tessera_mpc::query::GroupResult {
                        group: g as u32,
                        values: None,
                    })
                    .collect(),
            )
        };
        let (header, rows) = result_table(mpc, result)?;
        return Ok(Answer::Result { header, rows });
    }
    let plan = plan_of(&mpc.query, brows.len(), policy, fx).map_err(|e| match e {
        QueryError::Range(_) => TaskError::Input(format!("the query on {} rows: {e}", brows.len())),
        e => TaskError::Ticket(format!("the task's query: {e}")),
    })?;
    let result = evaluate_clear(&plan, &btable, &ptable)
        .map_err(|e| TaskError::Internal(format!("the clear evaluation: {e}")))?;
    let (header, rows) = result_table(mpc, result)?;
    Ok(Answer::Result { header, rows })
}

/// Opens the sealed dataset file into memory (bounded by [`DATASET_BYTES_MAX`]).
fn open_dataset(
    path: &std::path::Path,
    key: &tessera_tee::DatasetKey,
    dataset_id: &str,
) -> Result<Zeroizing<Vec<u8>>, TaskError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| TaskError::Input(format!("the sealed dataset {shown}: {e}")))?;
    if meta.len() > DATASET_BYTES_MAX {
        return Err(TaskError::Input(format!(
            "the sealed dataset {shown} is larger than {DATASET_BYTES_MAX} bytes"
        )));
    }
    let mut file = std::fs::File::open(path)
        .map_err(|e| TaskError::Input(format!("the sealed dataset {shown}: {e}")))?;
    let mut clear = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    open_stream(key, dataset_id, SEALED_VERSION, &mut file, &mut *clear).map_err(|e| {
        TaskError::Input(format!(
            "the dataset file {shown} does not open with the dataset's key (not sealed with \
             `tessera dataset seal` for this dataset, or altered): {e}"
        ))
    })?;
    Ok(clear)
}

/// The buyer's rows as the enclave receives them.
struct BuyerRows {
    public: WorkerPublicKey,
    columns: Vec<String>,
    keys: Vec<Vec<u8>>,
    kept: Vec<Vec<String>>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// `public (32) ‖ u32 columns ‖ names ‖ u64 rows ‖ per row: key, values`; every string and
/// key as `u32 length ‖ bytes`.
fn encode_rows(
    public: &WorkerPublicKey,
    columns: &[String],
    keys: &[Vec<u8>],
    kept: &[Vec<String>],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&public.0);
    out.extend_from_slice(&(columns.len() as u32).to_be_bytes());
    for c in columns {
        put_bytes(&mut out, c.as_bytes());
    }
    out.extend_from_slice(&(keys.len() as u64).to_be_bytes());
    for (i, k) in keys.iter().enumerate() {
        put_bytes(&mut out, k);
        for c in 0..columns.len() {
            let v = kept
                .get(i)
                .and_then(|r| r.get(c))
                .map_or("", String::as_str);
            put_bytes(&mut out, v.as_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the buyer's rows are truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a value is not UTF-8".to_string())
    }
}

/// Parses [`encode_rows`]'s bytes, every length checked against what is left.
fn decode_rows(b: &[u8]) -> Result<BuyerRows, String> {
    let mut r = Reader(b);
    let mut public = [0u8; 32];
    public.copy_from_slice(r.take(32)?);
    let ncols = r.u32()? as usize;
    if ncols > COLUMNS_MAX {
        return Err(format!("more than {COLUMNS_MAX} columns"));
    }
    let columns = (0..ncols)
        .map(|_| r.text())
        .collect::<Result<Vec<_>, _>>()?;
    let nrows = r.u64()?;
    // Every row takes at least 4 bytes per field: a count past that is a lie.
    let per_row = 4 * (1 + ncols as u64);
    if nrows > r.0.len() as u64 / per_row || nrows > tessera_core::limits::DATASET_ROWS_MAX as u64 {
        return Err("the row count does not match the bytes".into());
    }
    let mut keys = Vec::with_capacity(nrows as usize);
    let mut kept = Vec::with_capacity(nrows as usize);
    for _ in 0..nrows {
        keys.push(r.bytes()?.to_vec());
        kept.push(
            (0..ncols)
                .map(|_| r.text())
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    if !r.0.is_empty() {
        return Err("trailing bytes after the rows".into());
    }
    Ok(BuyerRows {
        public: WorkerPublicKey(public),
        columns,
        keys,
        kept,
    })
}

/// Sends a sealed message: the header frame, then the ciphertext in chunks.
async fn send_sealed(
    link: &dyn Link,
    magic: &[u8; 8],
    enc: &[u8],
    ct: &[u8],
) -> Result<(), TaskError> {
    let mut head = BytesMut::with_capacity(8 + 2 + enc.len() + 8);
    head.put_slice(magic);
    head.put_u16(enc.len() as u16);
    head.put_slice(enc);
    head.put_u64(ct.len() as u64);
    send(link, head.freeze()).await?;
    for chunk in ct.chunks(CHUNK_BYTES) {
        send(link, Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(())
}

/// Receives a sealed message sent by [`send_sealed`] with `magic`: (encapsulated key,
/// ciphertext), bounded by [`SEALED_BYTES_MAX`].
async fn recv_sealed(link: &dyn Link, magic: &[u8; 8]) -> Result<(Vec<u8>, Vec<u8>), TaskError> {
    let bad = |m: &str| TaskError::Peer(format!("a malformed sealed message: {m}"));
    let head = recv(link).await?;
    if head.len() < 10 || &head[..8] != magic {
        return Err(bad("not the expected header"));
    }
    let enc_len = usize::from(u16::from_be_bytes([head[8], head[9]]));
    if enc_len > 256 || head.len() != 10 + enc_len + 8 {
        return Err(bad("header length"));
    }
    let enc = head[10..10 + enc_len].to_vec();
    let mut n = [0u8; 8];
    n.copy_from_slice(&head[10 + enc_len..]);
    let total = u64::from_be_bytes(n);
    if total > SEALED_BYTES_MAX {
        return Err(bad("larger than the bound"));
    }
    let mut ct = Vec::with_capacity(total as usize);
    while (ct.len() as u64) < total {
        let chunk = recv(link).await?;
        if chunk.is_empty()
            || chunk.len() > CHUNK_BYTES
            || ct.len() as u64 + chunk.len() as u64 > total
        {
            return Err(bad("a chunk past the announced length"));
        }
        ct.extend_from_slice(&chunk);
    }
    Ok((enc, ct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::MemLink;

    #[test]
    fn rows_round_trip_and_hostile_bytes_are_errors() {
        let pk = WorkerPublicKey([7; 32]);
        let cols = vec!["age".to_string(), "region".to_string()];
        let keys = vec![b"a".to_vec(), b"".to_vec(), "ü".as_bytes().to_vec()];
        let kept = vec![
            vec!["30".into(), "1".into()],
            vec!["".into(), "2".into()],
            vec!["41.5".into(), "0".into()],
        ];
        let b = encode_rows(&pk, &cols, &keys, &kept);
        let r = decode_rows(&b).expect("decode");
        assert_eq!(
            (r.public, r.columns, r.keys, r.kept),
            (pk, cols.clone(), keys, kept)
        );
        // Every truncation, and trailing bytes, is an error, never a panic.
        for n in 0..b.len() {
            assert!(decode_rows(&b[..n]).is_err(), "prefix {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_rows(&long).is_err());
        // A row count far past the bytes.
        let mut lie = encode_rows(&pk, &cols, &[], &[]);
        let at = lie.len() - 8;
        lie[at..].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode_rows(&lie).is_err());
        // Too many columns.
        let mut wide = pk.0.to_vec();
        wide.extend_from_slice(&(1_000_000u32).to_be_bytes());
        assert!(decode_rows(&wide).is_err());
    }

    #[tokio::test]
    async fn sealed_messages_cross_in_chunks_and_bad_frames_are_peer_errors() {
        let (a, b) = MemLink::pair();
        let ct: Vec<u8> = (0..(2 * CHUNK_BYTES + 17)).map(|i| i as u8).collect();
        let (sent, got) = tokio::join!(
            send_sealed(&a, MAGIC_IN, &[1, 2, 3], &ct),
            recv_sealed(&b, MAGIC_IN)
        );
        sent.expect("send");
        assert_eq!(got.expect("recv"), (vec![1, 2, 3], ct));
        // Wrong magic, short header, a length past the bound, a chunk past the length.
        let mut over = BytesMut::new();
        over.put_slice(MAGIC_IN);
        over.put_u16(0);
        over.put_u64(SEALED_BYTES_MAX + 1);
        let mut short = BytesMut::new();
        short.put_slice(MAGIC_IN);
        short.put_u16(0);
        short.put_u64(2);
        for frames in [
            vec![Bytes::from_static(
                b"TTE1out.\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            )],
            vec![Bytes::from_static(b"TTE1")],
            vec![over.freeze()],
            vec![short.freeze(), Bytes::from_static(b"abc")],
        ] {
            let (a, b) = MemLink::pair();
            for f in frames {
                a.send(f).await.expect("send");
            }
            drop(a);
            assert!(matches!(
                recv_sealed(&b, MAGIC_IN).await,
                Err(TaskError::Peer(_))
            ));
        }
    }
}
