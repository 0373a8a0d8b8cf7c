//! A `tee` task (issue "TEE scene"): the buyer's statistics query (the language of the `mpc`
//! scene), or a join (a PSI with the provider's payload columns), computed in the clear inside
//! the attested enclave on the provider's worker.
//!
//! The steps below are the query's; a join differs in what crosses: the buyer seals only its
//! normalised keys (its key and carried columns' original values stay on its worker); the
//! enclave opens the dataset keeping only the join's payload columns (each one listed in the
//! licence's `payloadColumns`, checked at admission and again by this worker against the
//! signed licence, `crate::grant`), and answers the indices of the buyer's keys it has and,
//! for an inner or left join, the payload values of the provider's FIRST row with each such
//! key (a key the provider repeats delivers one row's values). The buyer writes its own
//! columns for its rows — inner: the matched rows, with the payload; left: every row, a
//! `matched` column (`true` / `false`) and the payload (empty where false); difference: the
//! unmatched rows — in its file order (its duplicate keys each appear); the job's result
//! size is the number of distinct common keys.
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
//! * In a **join**, the buyer learns which of its keys the provider has (in every shape) and,
//!   for those keys, the values of the payload columns the licence lists — of the provider's
//!   first row with the key; no other provider column and nothing of the provider's other
//!   rows (their number reaches the buyer only through the job's row charge, as in PSI).
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
use tessera_core::{JoinKind, Link, TaskRole, TaskSpec};
use tessera_mpc::FixedPoint;
use tessera_mpc::query::job::plan_of;
use tessera_mpc::query::{ColumnKind, OutputPolicy, QueryError, Side, evaluate_clear};
use tessera_tee::{EnclaveKeyPair, WorkerPublicKey, open_stream, seal_to};
use zeroize::Zeroizing;

use crate::exec::{
    DeliverySink, ExecEnv, TaskError, TaskOutcome, dataset_path, fresh_result_path, open_link,
};
use crate::join::{JoinTable, join_table};
use crate::link::GrpcLink;
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

/// Runs a `tee` task to completion (see the module docs): its query, or its join.
pub(crate) async fn run(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let Some(tee) = &spec.tee else {
        return Err(TaskError::Ticket("a tee task without its enclave".into()));
    };
    let enclave_key = WorkerPublicKey::from_hex(&tee.enclave_public_key)
        .ok_or_else(|| TaskError::Ticket("the task's enclave key is not 64 hex digits".into()))?;
    let task = TeeTask {
        env,
        spec,
        tee,
        enclave_key,
        progress,
    };
    match (&spec.mpc, &spec.join) {
        (Some(mpc), None) => run_query(&task, mpc, delivery).await,
        (None, Some(join)) => run_join(&task, join, delivery).await,
        (Some(_), Some(_)) => Err(TaskError::Ticket(
            "a tee task names both a query and a join".into(),
        )),
        (None, None) => Err(TaskError::Ticket(
            "a tee task without its query or join".into(),
        )),
    }
}

/// What both computations of a `tee` task share.
struct TeeTask<'a> {
    env: &'a ExecEnv,
    spec: &'a TaskSpec,
    tee: &'a tessera_core::TeeSpec,
    enclave_key: WorkerPublicKey,
    progress: Arc<dyn tessera_psi::Progress>,
}

impl TeeTask<'_> {
    fn key_spec(&self) -> KeySpec {
        KeySpec {
            columns: self.spec.key_columns.clone(),
            case: self.spec.key_case,
            unicode: self.spec.unicode_form,
            empty: self.spec.empty_keys,
        }
    }

    /// The associated data of one direction's sealed message: the job and session.
    fn aad(&self, dir: &str) -> String {
        format!(
            "tessera-tee-job/v1/{}/{}/{dir}",
            self.spec.job_id, self.spec.session_id
        )
    }

    /// The buyer's rows: its normalised keys and the original values of `keep`.
    async fn read_own(
        &self,
        keep: Vec<String>,
    ) -> Result<tessera_core::table::KeyedInput, TaskError> {
        let path = dataset_path(&self.env.dataset_dir, &self.spec.dataset_location)?;
        let key_spec = self.key_spec();
        self.progress.report("read", 0, 0);
        let input = tokio::task::spawn_blocking(move || read_keys_keeping(&path, &key_spec, &keep))
            .await
            .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
            .map_err(|e| TaskError::Input(e.to_string()))?;
        self.progress.report("read", input.rows, input.rows);
        Ok(input)
    }

    /// The buyer's exchange: seals its `keys` and the values of `columns` (`kept`, one row per
    /// key, same column order; empty with no columns) with a one-time public key to the
    /// enclave, sends them, and opens the enclave's answer.
    async fn buyer_exchange(
        &self,
        columns: &[String],
        keys: &[Vec<u8>],
        kept: &[Vec<String>],
    ) -> Result<(GrpcLink, Answer), TaskError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(seed.as_mut_slice());
        let mine = EnclaveKeyPair::derive(&seed);
        let plain = Zeroizing::new(encode_rows(&mine.public(), columns, keys, kept));
        let mut seal_seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seal_seed);
        let (enc, ct) = seal_to(
            &self.enclave_key,
            self.aad("in").as_bytes(),
            &plain,
            seal_seed,
        )
        .map_err(|e| TaskError::Ticket(format!("the task's enclave key: {e}")))?;
        drop(plain);
        let link = open_link(self.env, self.spec).await?;
        self.progress.report("send", 0, ct.len() as u64);
        send_sealed(&link, MAGIC_IN, &enc, &ct).await?;
        self.progress
            .report("send", ct.len() as u64, ct.len() as u64);
        self.progress.report("compute", 0, 1);
        let (enc, ct) = recv_sealed(&link, MAGIC_OUT).await?;
        let opened = mine
            .open_sealed(&enc, &ct, self.aad("out").as_bytes())
            .map_err(|_| TaskError::Peer("the enclave's result does not open".into()))?;
        let answer: Answer = serde_json::from_slice(&opened)
            .map_err(|e| TaskError::Peer(format!("the enclave's result: {e}")))?;
        self.progress.report("compute", 1, 1);
        if let Answer::BuyerInput { error } = answer {
            // Acknowledged, so the enclave ends on our answer, not a broken link.
            send(&link, Bytes::from_static(DONE)).await?;
            return Err(TaskError::Input(format!(
                "the enclave refused our rows: {error}"
            )));
        }
        Ok((link, answer))
    }

    /// The enclave's side up to the buyer's rows: checks that this worker runs the enclave
    /// the task names, gets the dataset key from the operator's key broker, opens the sealed
    /// dataset in memory keeping `keep`, and opens the buyer's sealed rows.
    async fn enclave_inputs(
        &self,
        keep: Vec<String>,
        check: impl FnOnce(&tessera_core::table::KeyedInput) -> Result<(), TaskError>,
    ) -> Result<(GrpcLink, tessera_core::table::KeyedInput, BuyerRows), TaskError> {
        let host = self.env.tee.clone().ok_or_else(|| {
            TaskError::Ticket("this worker runs no enclave (start it with --tee)".into())
        })?;
        if host.enclave().public() != self.enclave_key {
            return Err(TaskError::Ticket(
                "the task names another enclave key than this worker's (it restarted since \
                 the attestation the job was placed on)"
                    .into(),
            ));
        }
        let path = dataset_path(&self.env.dataset_dir, &self.spec.dataset_location)?;
        self.progress.report("key", 0, 1);
        let released = host.release_key(&self.spec.task_id).await?;
        let key = host
            .enclave()
            .open_released(&released)
            .map_err(|e| TaskError::Internal(format!("the released key: {e}")))?;
        self.progress.report("key", 1, 1);
        self.progress.report("read", 0, 0);
        let dataset_id = self.tee.dataset_id.clone();
        let label = path.clone();
        let key_spec = self.key_spec();
        let input = tokio::task::spawn_blocking(move || {
            let clear = open_dataset(&path, &key, &dataset_id)?;
            read_keys_keeping_csv_bytes(&label, &clear, &key_spec, &keep)
                .map_err(|e| TaskError::Input(e.to_string()))
        })
        .await
        .map_err(|e| TaskError::Internal(format!("reader task: {e}")))??;
        self.progress.report("read", input.rows, input.rows);
        // Our own data is checked before the buyer is linked: a fault in it is ours, reported
        // as such, never seen by the buyer as a broken link.
        check(&input)?;
        let link = open_link(self.env, self.spec).await?;
        let (enc, ct) = recv_sealed(&link, MAGIC_IN).await?;
        let opened = host
            .enclave()
            .open_sealed(&enc, &ct, self.aad("in").as_bytes())
            .map_err(|_| TaskError::Peer("the buyer's rows do not open".into()))?;
        let buyer = decode_rows(&opened).map_err(TaskError::Peer)?;
        drop(opened);
        Ok((link, input, buyer))
    }

    /// The enclave's last steps: records the delivery (for a result), seals the answer to the
    /// buyer's one-time key, sends it and waits for the buyer's acknowledgement.
    async fn enclave_answer(
        &self,
        link: &GrpcLink,
        buyer: &BuyerRows,
        answer: &Answer,
        rows_in: u64,
        delivery: &dyn DeliverySink,
    ) -> Result<(), TaskError> {
        let body = Zeroizing::new(
            serde_json::to_vec(answer)
                .map_err(|e| TaskError::Internal(format!("encoding the result: {e}")))?,
        );
        if body.len() as u64 > SEALED_BYTES_MAX {
            return Err(TaskError::Internal(format!(
                "the result is larger than {SEALED_BYTES_MAX} bytes"
            )));
        }
        // The delivery point: recorded before the result leaves the enclave.
        if !matches!(answer, Answer::BuyerInput { .. }) && !delivery.delivered(rows_in).await {
            return Err(TaskError::Internal(
                "the operator did not record the delivery; the result was not sent".into(),
            ));
        }
        let mut seal_seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seal_seed);
        let (enc, ct) = seal_to(&buyer.public, self.aad("out").as_bytes(), &body, seal_seed)
            .map_err(|e| TaskError::Peer(format!("the buyer's one-time key: {e}")))?;
        send_sealed(link, MAGIC_OUT, &enc, &ct).await?;
        let acknowledged = recv(link).await.is_ok_and(|f| f.as_ref() == DONE);
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
        Ok(())
    }
}

/// A statistics query in the enclave.
async fn run_query(
    t: &TeeTask<'_>,
    mpc: &tessera_core::MpcSpec,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let fx = FixedPoint::new(mpc.fraction_bits)
        .map_err(|e| TaskError::Ticket(format!("the task's fixed-point format: {e}")))?;
    let policy = OutputPolicy {
        min_group_size: mpc.min_group_size,
        aggregates_only: mpc.aggregates_only,
    };
    plan_of(&mpc.query, 1, &policy, fx)
        .map_err(|e| TaskError::Ticket(format!("the task's query: {e}")))?;
    match t.spec.role {
        TaskRole::Receiver => {
            let out_path = fresh_result_path(&t.env.output_dir, &t.spec.output)?;
            let own = declared_columns(mpc, Side::Buyer)?;
            let keep: Vec<String> = own.iter().map(|(n, _)| n.clone()).collect();
            let input = t.read_own(keep.clone()).await?;
            // Our own values must fit their declared columns: checked here, as our input
            // error, before anything is sent (the enclave checks again what it receives).
            let all: Vec<usize> = (0..input.keys.len()).collect();
            own_table(&own, &input.kept, &all)?;
            let (link, answer) = t.buyer_exchange(&keep, &input.keys, &input.kept).await?;
            let Answer::Result { header, rows } = answer else {
                return Err(TaskError::Peer(
                    "the enclave answered a query with another kind of result".into(),
                ));
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
                result_location: t.spec.output.clone(),
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
        TaskRole::Sender => {
            let own = declared_columns(mpc, Side::Provider)?;
            let buyer_own = declared_columns(mpc, Side::Buyer)?;
            let keep: Vec<String> = own.iter().map(|(n, _)| n.clone()).collect();
            // Every provider value of the declared columns must fit its declaration.
            let (link, input, buyer) = t
                .enclave_inputs(keep, |input| {
                    let all: Vec<usize> = (0..input.keys.len()).collect();
                    own_table(&own, &input.kept, &all).map(|_| ())
                })
                .await?;
            t.progress.report("compute", 0, 1);
            let answer = compute(mpc, &policy, fx, &own, &buyer_own, &input, &buyer)?;
            t.progress.report("compute", 1, 1);
            t.enclave_answer(&link, &buyer, &answer, input.rows, delivery)
                .await?;
            Ok(TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
    }
}

/// A join in the enclave: a PSI with the provider's payload columns (see the module docs).
async fn run_join(
    t: &TeeTask<'_>,
    join: &tessera_core::JoinSpec,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    if join.kind == JoinKind::Difference && !join.payload_columns.is_empty() {
        return Err(TaskError::Ticket(
            "a difference join with payload columns".into(),
        ));
    }
    match t.spec.role {
        TaskRole::Receiver => {
            let out_path = fresh_result_path(&t.env.output_dir, &t.spec.output)?;
            // Our key columns' and carried columns' original values stay here: only the
            // normalised keys go to the enclave.
            let own: Vec<String> = t
                .spec
                .key_columns
                .iter()
                .chain(&t.spec.carry_columns)
                .cloned()
                .collect();
            let input = t.read_own(own.clone()).await?;
            let (link, answer) = t.buyer_exchange(&[], &input.keys, &[]).await?;
            let Answer::Join { matched, payload } = answer else {
                return Err(TaskError::Peer(
                    "the enclave answered a join with another kind of result".into(),
                ));
            };
            let JoinTable {
                header,
                rows,
                common,
            } = join_table(join, &own, &input, &matched, payload)?;
            let written = write_table(out_path, header, rows).await?;
            send(&link, Bytes::from_static(DONE)).await?;
            Ok(TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                result_size: Some(common),
                result_file: Some(written),
                result_location: t.spec.output.clone(),
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
        TaskRole::Sender => {
            let (link, input, buyer) = t
                .enclave_inputs(join.payload_columns.clone(), |_| Ok(()))
                .await?;
            if !buyer.columns.is_empty() {
                return Err(TaskError::Peer(
                    "the buyer sent columns with its keys (a join takes its keys only)".into(),
                ));
            }
            t.progress.report("compute", 0, 1);
            let answer = join_in_enclave(join, &input, &buyer);
            t.progress.report("compute", 1, 1);
            t.enclave_answer(&link, &buyer, &answer, input.rows, delivery)
                .await?;
            Ok(TaskOutcome {
                rows_in: input.rows,
                empty_keys: input.empty_keys,
                link: link.stats(),
                ..TaskOutcome::default()
            })
        }
    }
}

/// The join inside the enclave: which of the buyer's keys the provider has (indices into the
/// buyer's keys, ascending), and for an inner or left join the payload columns of the
/// provider's first row with each such key.
fn join_in_enclave(
    join: &tessera_core::JoinSpec,
    input: &tessera_core::table::KeyedInput,
    buyer: &BuyerRows,
) -> Answer {
    let mut first: std::collections::HashMap<&[u8], usize> =
        std::collections::HashMap::with_capacity(input.keys.len());
    for (i, k) in input.keys.iter().enumerate() {
        first.entry(k.as_slice()).or_insert(i);
    }
    let mut matched = Vec::new();
    let mut payload = Vec::new();
    for (i, k) in buyer.keys.iter().enumerate() {
        if let Some(&p) = first.get(k.as_slice()) {
            matched.push(i as u64);
            if join.kind != JoinKind::Difference {
                payload.push(input.kept.get(p).cloned().unwrap_or_default());
            }
        }
    }
    Answer::Join { matched, payload }
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
    /// A join's result: the indices of the buyer's keys the provider has (ascending) and,
    /// for an inner or left join, the payload columns for each (same order).
    Join {
        matched: Vec<u64>,
        payload: Vec<Vec<String>>,
    },
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
        let result = tessera_mpc::query::QueryResult::of_no_rows(&one);
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
    use rand::{Rng, SeedableRng};
    use tessera_core::MemLink;
    use tessera_core::table::KeyedInput;

    fn keyed(keys: &[Vec<u8>], kept: Vec<Vec<String>>) -> KeyedInput {
        KeyedInput {
            keys: keys.to_vec(),
            rows: keys.len() as u64,
            empty_keys: 0,
            kept,
        }
    }

    /// Every join shape, through the enclave's answer and the buyer's table, against a
    /// plaintext join written here: random keys with duplicates on both sides, empty sides,
    /// one side much larger than the other.
    #[test]
    fn joins_match_the_plaintext_reference_on_random_inputs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (nb, np) in [
            (0, 0),
            (0, 20),
            (20, 0),
            (50, 50),
            (5, 400),
            (400, 5),
            (300, 300),
        ] {
            let span = (nb + np) / 2 + 1;
            let bkeys: Vec<Vec<u8>> = (0..nb)
                .map(|_| format!("k{}", rng.gen_range(0..span)).into_bytes())
                .collect();
            let pkeys: Vec<Vec<u8>> = (0..np)
                .map(|_| format!("k{}", rng.gen_range(0..span)).into_bytes())
                .collect();
            let bkept: Vec<Vec<String>> = (0..nb)
                .map(|i| {
                    vec![
                        String::from_utf8(bkeys[i].clone()).unwrap(),
                        format!("b{i}"),
                    ]
                })
                .collect();
            let pkept: Vec<Vec<String>> = (0..np).map(|i| vec![format!("p{i}")]).collect();
            let buyer_in = keyed(&bkeys, bkept.clone());
            let provider_in = keyed(&pkeys, pkept.clone());
            let buyer_rows = BuyerRows {
                public: WorkerPublicKey([1; 32]),
                columns: vec![],
                keys: bkeys.clone(),
                kept: vec![],
            };
            // The plaintext reference: the provider's first row per key.
            let first = |k: &[u8]| pkeys.iter().position(|p| p.as_slice() == k);
            for kind in JoinKind::ALL.iter().copied() {
                let join = tessera_core::JoinSpec {
                    kind,
                    payload_columns: if kind == JoinKind::Difference {
                        vec![]
                    } else {
                        vec!["v".into()]
                    },
                };
                let Answer::Join { matched, payload } =
                    join_in_enclave(&join, &provider_in, &buyer_rows)
                else {
                    panic!("not a join answer");
                };
                let own = vec!["id".to_string(), "carry".to_string()];
                let JoinTable {
                    header,
                    rows,
                    common,
                } = join_table(&join, &own, &buyer_in, &matched, payload).expect("table");
                let mut want = Vec::new();
                for (i, k) in bkeys.iter().enumerate() {
                    let hit = first(k);
                    match (kind, hit) {
                        (JoinKind::Inner, Some(p)) => {
                            want.push([bkept[i].clone(), pkept[p].clone()].concat())
                        }
                        (JoinKind::Left, Some(p)) => want.push(
                            [bkept[i].clone(), vec!["true".into()], pkept[p].clone()].concat(),
                        ),
                        (JoinKind::Left, None) => want
                            .push([bkept[i].clone(), vec!["false".into(), String::new()]].concat()),
                        (JoinKind::Difference, None) => want.push(bkept[i].clone()),
                        _ => {}
                    }
                }
                assert_eq!(rows, want, "{kind} {nb}x{np}");
                let distinct: std::collections::HashSet<&Vec<u8>> =
                    bkeys.iter().filter(|k| first(k).is_some()).collect();
                assert_eq!(common, distinct.len() as u64);
                assert_eq!(header.len(), want.first().map_or(header.len(), Vec::len));
                assert_eq!(
                    header.last().map(String::as_str),
                    Some(match kind {
                        JoinKind::Difference => "carry",
                        _ => "v",
                    })
                );
            }
        }
    }

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
