//! An `mpc` task (issue "Secret-sharing MPC"): the buyer's statistics query over both
//! parties' columns of the rows they have in common, computed by `tessera-mpc` and opened to
//! the buyer only — or a logistic-regression model trained on them (a `TRAIN` statement,
//! `tessera_mpc::query::train`), opened to the party the licence's `modelTo` names or, under
//! `modelTo: "shared"`, kept as each party's share in its worker's output directory
//! ([`model_shares_name`]) — or the probabilities of such a shared model for the aligned rows
//! (a `SCORE` statement, `tessera_mpc::lr::predict_shared`), opened to the buyer only.
//!
//! 1. **Read**: each worker reads its key columns and the columns of its own that the query
//!    declares (`buyer.NAME` on the buyer's worker, `provider.NAME` on the provider's).
//! 2. **Align**: a PSI on the keys (the job's protocol, intersection mode; the buyer is the
//!    receiver). The buyer then sends the provider one tag per common key, `SHA-256(session ‖
//!    0 ‖ key)[..16]`, sorted; both take the rows in that order (a key's first row on each
//!    side). The provider refuses a tag it does not hold or a repeated one.
//! 3. **Compute**: the triples the signed spec names — dealer-free (OT extension between the
//!    two workers), or dealt by the operator over each worker's own link to it (opened now,
//!    after the alignment; `tessera_scheduler::dealer`) —, the plan
//!    checked on both sides against the signed query, its declared columns and the licence's
//!    output controls (`minGroupSize`, `aggregatesOnly`), then `tessera_mpc::query::evaluate`;
//!    for a training, each party scales its own features by their declared bounds and
//!    `tessera_mpc::lr::train` runs on the aligned rows (none when they are fewer than
//!    `minGroupSize`: both parties know the count, nothing is shared).
//!    Numeric values past their declared bound are clipped to it by their owner; a value that
//!    is not a number, or a category code outside `0 .. levels`, is the owner's input error.
//! 4. **Deliver**: the provider records the delivery before its shares of the result leave
//!    (the release gate of [`tessera_mpc::Session`]): that is the moment the buyer can open
//!    it. The buyer writes the result as CSV (never replacing a file) and acknowledges it; the
//!    provider ends on that answer.
//!
//! # What each party learns (semi-honest, two parties; the operator as dealer, if named)
//!
//! * The **buyer** learns the query's outputs per group: for each group whether it has at
//!   least `max(minGroupSize, 1)` selected rows, and the aggregates of the groups that do
//!   (see `tessera_mpc::query` for what an aggregate reveals). From the alignment it learns
//!   which of its keys the provider holds, as in a PSI job.
//! * The **provider** learns which of its keys the buyer holds (the tags of the intersection,
//!   as the PSI's output is shared for the alignment), the public query and schema, and
//!   nothing of the buyer's values, selection or groups.
//! * For a training, the model's **recipient** (the buyer, or the provider under `modelTo:
//!   "provider"`) learns the weights and the bias (a function of every aligned row of both
//!   parties: what a model reveals, membership and attribute inference included, is outside
//!   this threat model); the other party learns nothing of them. The provider's model file is
//!   `model-<job id>.csv` in its output directory, and the buyer then writes no file. A model
//!   kept **shared** is learnt by nobody: each worker holds an additive share, a function of
//!   its own view only (its file alone says nothing of the weights it did not compute itself;
//!   after SecureML's local truncations the shares cluster near zero rather than spreading
//!   over the ring; both files together are the model, so a party that obtains the other's
//!   file has it). A shared training on no aligned rows keeps no shares, and a scoring that
//!   names it fails on the workers as an input error.
//! * A **scoring** opens to the buyer one probability per aligned row, nothing to the
//!   provider. Each is the model applied to that row: the logit is linear, so enough scored
//!   rows tell the buyer the weights of its own features and, per row, what the provider's
//!   features add; the licence's `counts` bound the scorings. The provider learns which of its
//!   keys the buyer scored (the alignment), not the scores.
//! * With dealer triples, the **operator** knows every triple; it sees none of the values the
//!   parties open to each other (their peer link is direct), so it learns only the number and
//!   shapes of the triples — unless it colludes with a party, which then learns the other's
//!   inputs (`tessera_mpc`'s threat model). A licence that must not trust the operator that
//!   far allows only `ot`.
//! * Neither can deviate undetected in the MPC itself: the model is semi-honest; a malicious
//!   party could bias the result (no MACs on shares).
//!
//! The result file (buyer): one row per group, `group` (the category code; `0` without `GROUP
//! BY`), `reported` (`true` or `false`: suppressed or empty), then one column per select item
//! (its text; a histogram's counts joined by `;`). A row-level query writes one row per selected
//! aligned row: `row` (its position in the alignment) and the values. A model file has one
//! row per feature in the statement's order and one for the bias: `term` (`provider.NAME`,
//! `buyer.NAME`, `(bias)`), `reported` (`false`: too few aligned rows, no weights), `weight`
//! (in the feature's own units: `P(label = 1) = σ(Σ weight · value + bias)`). A scoring's file
//! has one row per aligned row: the buyer's key columns as in its file, then `probability`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tessera_core::table::{KeySpec, TableError, read_keys_keeping, write_result_csv};
use tessera_core::{Link, ModelRecipient, MpcSpec, MpcTriples, TaskRole, TaskSpec};
use tessera_mpc::lr::{LrError, LrLayout, LrOwnData, Model, ModelOutput};
use tessera_mpc::query::job::{JobPlan, job_plan_of, schema_of, side_and_name};
use tessera_mpc::query::{
    Aggregate, ColumnData, ColumnKind, OutputPolicy, QueryError, QueryResult, SCORE_CHUNK_ROWS,
    ScorePlan, Side, Table, TrainPlan,
};
use tessera_mpc::{
    DealerClient, FixedPoint, MpcError, OtTriples, Party, Session, Shares, TripleSource,
};
use tessera_psi::Mode;

use crate::exec::{
    DeliverySink, ExecEnv, TaskError, TaskOutcome, dataset_path, fresh_result_path, open_link,
};

/// The alignment's tag frames start with this.
const ALIGN_MAGIC: &[u8; 4] = b"TMA1";
/// The buyer's acknowledgement of the result, the job's last frame.
const DONE: &[u8; 8] = b"TMA1done";
/// Bytes of one alignment tag.
const TAG_BYTES: usize = 16;

/// The provider is party 0, the buyer party 1.
fn party_of(role: TaskRole) -> Party {
    match role {
        TaskRole::Sender => Party::P0,
        TaskRole::Receiver => Party::P1,
    }
}

/// Runs an `mpc` task to completion (see the module docs).
pub(crate) async fn run(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let Some(mpc) = &spec.mpc else {
        return Err(TaskError::Ticket("an mpc task without its query".into()));
    };
    let fx = FixedPoint::new(mpc.fraction_bits)
        .map_err(|e| TaskError::Ticket(format!("the task's fixed-point format: {e}")))?;
    let policy = OutputPolicy {
        min_group_size: mpc.min_group_size,
        aggregates_only: mpc.aggregates_only,
    };
    // The signed statement must plan before anything is read or sent.
    let first_plan = job_plan_of(&mpc.query, 1, &policy, fx)
        .map_err(|e| TaskError::Ticket(format!("the task's query: {e}")))?;
    let trains = matches!(first_plan, JobPlan::Train(_));
    // Who writes the result: the buyer, or the provider for a model the policy gives it;
    // nobody for a model kept shared (each party keeps its share).
    let model_to_provider = trains && mpc.model_to == ModelRecipient::Provider;
    let model_shared = trains && mpc.model_to == ModelRecipient::Shared;
    let me = match spec.role {
        TaskRole::Sender => Side::Provider,
        TaskRole::Receiver => Side::Buyer,
    };
    // A scoring's model: this party's shares, kept by the training job's task on this worker,
    // checked against the statement before anything is read or sent.
    let stored_model = match &first_plan {
        JobPlan::Score(plan) => Some(load_model_shares(&env.output_dir, plan, me, fx).await?),
        _ => None,
    };
    let own = declared_columns(mpc, me)?;
    let writes = match spec.role {
        TaskRole::Receiver => !model_to_provider && !model_shared,
        TaskRole::Sender => model_to_provider,
    };
    let out_path = if writes {
        Some(fresh_result_path(&env.output_dir, &spec.output)?)
    } else {
        None
    };
    let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
    let key_spec = KeySpec {
        columns: spec.key_columns.clone(),
        case: spec.key_case,
        unicode: spec.unicode_form,
        empty: spec.empty_keys,
    };
    let mut keep: Vec<String> = own.iter().map(|(n, _)| n.clone()).collect();
    // The buyer's scores are written beside its own key values.
    if stored_model.is_some() && spec.role == TaskRole::Receiver {
        keep.extend(spec.key_columns.iter().cloned());
    }
    progress.report("read", 0, 0);
    let input = tokio::task::spawn_blocking(move || read_keys_keeping(&path, &key_spec, &keep))
        .await
        .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
        .map_err(|e| TaskError::Input(e.to_string()))?;
    progress.report("read", input.rows, input.rows);
    // Every value of our declared columns must fit its declaration: checked on every row
    // read, as our own input error, before the link opens (found after the alignment, it
    // raced the peer's report of the broken link to decide whose failure the job was).
    let all: Vec<usize> = (0..input.kept.len()).collect();
    let every_row = own_table(&own, &input.kept, &all)?;

    let link = open_link(env, spec).await?;
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let rows = align(spec, &link, &input.keys, &mut rng, progress.as_ref()).await?;
    progress.report("align", rows.len() as u64, rows.len() as u64);
    let table = select_rows(&every_row, &rows)?;
    let mut outcome = TaskOutcome {
        rows_in: input.rows,
        empty_keys: input.empty_keys,
        ..TaskOutcome::default()
    };

    // No common keys: a query's every group is empty and none is reported, which both
    // parties know from the alignment alone; nothing is computed (the result's shape comes
    // from a plan of one row, as a plan of none does not exist). A training on no rows runs
    // on (it keeps or reports no model).
    if rows.is_empty()
        && let Ok(JobPlan::Query(one)) = job_plan_of(&mpc.query, 1, &policy, fx)
    {
        let result = QueryResult::of_no_rows(&one);
        acknowledge(spec.role, &link).await?;
        if let Some(out) = out_path {
            let written = write_result(out, mpc, result).await?;
            outcome.result_size = Some(written.rows);
            outcome.result_file = Some(written);
            outcome.result_location = spec.output.clone();
        }
        outcome.link = link.stats();
        return Ok(outcome);
    }
    let party = party_of(spec.role);
    progress.report("triples", 0, 1);
    // Dealer-free: the base OTs with the peer; with the dealer: this task's own link to the
    // operator's dealer, kept to count its bytes.
    let mut dealer_link = None;
    let source = match mpc.triples {
        MpcTriples::Ot => TripleSource::Ot(Box::new(
            OtTriples::setup(party, &link, &mut rng)
                .await
                .map_err(|e| peer_error(&e))?,
        )),
        MpcTriples::Dealer => {
            let dial = env.dealer.as_ref().ok_or_else(|| {
                TaskError::Ticket("this worker has no link to the operator's dealer".into())
            })?;
            let d = Arc::new(dial.dial(&spec.task_id).await?);
            dealer_link = Some(d.clone());
            TripleSource::Dealer(DealerClient::new(party, Box::new(d)))
        }
    };
    progress.report("triples", 1, 1);
    let plan = job_plan_of(&mpc.query, rows.len(), &policy, fx).map_err(|e| match e {
        // Past the ring's range with this many rows: the buyer's declared bounds.
        QueryError::Range(_) => TaskError::Input(format!("the query on {} rows: {e}", rows.len())),
        e => TaskError::Ticket(format!("the task's query: {e}")),
    })?;
    let mut session = Session::new(
        party,
        &link,
        fx,
        source,
        rand_chacha::ChaCha20Rng::from_rng(&mut rng)
            .map_err(|e| TaskError::Internal(format!("rng: {e}")))?,
    );
    if spec.role == TaskRole::Sender {
        let rows_in = input.rows;
        let recorded = Arc::new(AtomicBool::new(false));
        session.set_release_gate(Box::new(move || {
            let recorded = recorded.clone();
            Box::pin(async move {
                if !recorded.load(Ordering::SeqCst) && delivery.delivered(rows_in).await {
                    recorded.store(true, Ordering::SeqCst);
                }
                recorded.load(Ordering::SeqCst)
            })
        }));
    }
    progress.report("compute", 0, 1);
    let result = match &plan {
        JobPlan::Query(plan) => Computed::Query(
            tessera_mpc::query::evaluate(&mut session, Party::P1, plan, &table)
                .await
                .map_err(|e| query_error(e, spec.role))?,
        ),
        JobPlan::Train(plan) => {
            let to = if model_shared {
                ModelOutput::Shared
            } else if model_to_provider {
                ModelOutput::RevealTo(Party::P0)
            } else {
                ModelOutput::RevealTo(Party::P1)
            };
            match train_model(&mut session, plan, me, &table, to).await? {
                Trained::Shared(shares) => {
                    // Nothing is opened: the model exists once both parties keep their
                    // shares, and the provider's is the job's delivery.
                    store_model_shares(&env.output_dir, &spec.job_id, plan, me, fx, shares).await?;
                    if spec.role == TaskRole::Sender && !delivery.delivered(input.rows).await {
                        return Err(TaskError::Internal(
                            "the operator did not record the delivery".into(),
                        ));
                    }
                    Computed::Model(None)
                }
                Trained::Revealed(model) => Computed::Model(Some(model)),
                Trained::None => Computed::Model(None),
            }
        }
        JobPlan::Score(plan) => {
            let model = stored_model
                .as_ref()
                .ok_or_else(|| TaskError::Internal("a scoring without its model".into()))?;
            Computed::Scores(score_rows(&mut session, plan, me, &table, model).await?)
        }
    };
    progress.report("compute", 1, 1);
    outcome.triples = session.triples_used();
    drop(session);
    acknowledge(spec.role, &link).await?;
    if let Some(out) = out_path {
        let written = match (result, &plan) {
            (Computed::Query(Some(result)), _) => Some(write_result(out, mpc, result).await?),
            (Computed::Model(model), JobPlan::Train(plan)) => {
                let (header, rows) = model_table(plan, model.as_ref())?;
                Some(write_table(out, header, rows).await?)
            }
            (Computed::Scores(Some(p)), JobPlan::Score(_)) => {
                let (header, rows) = scores_table(spec, own.len(), &input.kept, &rows, &p)?;
                Some(write_table(out, header, rows).await?)
            }
            _ => None,
        };
        if let Some(written) = written {
            // The result's size is its rows (groups, or the model's terms), not the aligned
            // rows: with groups or a model suppressed, the aligned count would tell the
            // buyer what minGroupSize withholds.
            outcome.result_size = Some(written.rows);
            outcome.result_file = Some(written);
            outcome.result_location = spec.output.clone();
        }
    }
    outcome.link = link.stats();
    if let Some(d) = dealer_link {
        // Usage counts the bytes of both of the task's links: the peer's and the dealer's.
        let d = d.stats();
        outcome.link.bytes_sent += d.bytes_sent;
        outcome.link.bytes_received += d.bytes_received;
        outcome.link.frames_sent += d.frames_sent;
        outcome.link.frames_received += d.frames_received;
    }
    Ok(outcome)
}

/// The end of a run: the buyer acknowledges the result and the provider ends only on that
/// answer, so that it never closes the link before its last frame is through.
async fn acknowledge(role: TaskRole, link: &dyn Link) -> Result<(), TaskError> {
    match role {
        TaskRole::Receiver => send(link, Bytes::from_static(DONE)).await,
        TaskRole::Sender => {
            if recv(link).await?.as_ref() != DONE {
                return Err(TaskError::Peer(
                    "the peer did not acknowledge the result".into(),
                ));
            }
            Ok(())
        }
    }
}

/// What the computation gave this party.
enum Computed {
    /// A query's result (at the buyer; `None` at the provider).
    Query(Option<QueryResult>),
    /// A trained model's weights in the original units and its bias (at its recipient;
    /// `None` at the other party, when the aligned rows were fewer than `minGroupSize`, or
    /// for a model kept shared).
    Model(Option<(Vec<f64>, f64)>),
    /// A scoring's probabilities, one per aligned row (at the buyer; `None` at the provider).
    Scores(Option<Vec<f64>>),
}

/// What a training left at this party.
enum Trained {
    /// The weights in the original units and the bias (at the model's recipient).
    Revealed((Vec<f64>, f64)),
    /// This party's shares of the model (`modelTo: "shared"`).
    Shared(Shares),
    /// Nothing: the model went to the other party, or too few rows to train.
    None,
}

/// This party's features of `rows` aligned rows, row-major, each divided by its declared
/// bound (so that the model sees values in `[−1, 1]`).
fn scaled_features(
    own: &[(String, f64)],
    table: &Table,
    rows: usize,
) -> Result<Vec<f64>, TaskError> {
    let mut columns = Vec::with_capacity(own.len());
    for (name, abs_max) in own {
        let Some(ColumnData::Numeric(v)) = table.columns.get(name) else {
            return Err(TaskError::Internal(format!("feature {name} was not read")));
        };
        columns.push((v, *abs_max));
    }
    let mut features = Vec::with_capacity(rows * own.len());
    for r in 0..rows {
        for (v, abs_max) in &columns {
            features.push(v.get(r).copied().unwrap_or(0.0) / abs_max);
        }
    }
    Ok(features)
}

/// Trains the plan's model on this party's aligned `table` and opens it as `output` says (to
/// party 1 the buyer, to party 0 the provider, or to nobody: each keeps its shares). Each
/// party scales its own features by their declared bounds (so the model trains on
/// `[−1, 1]`) and the recipient scales the weights back. Nothing is shared when the aligned
/// rows are fewer than the policy allows (both parties know the count).
async fn train_model(
    session: &mut Session<'_, rand_chacha::ChaCha20Rng>,
    plan: &TrainPlan,
    me: Side,
    table: &Table,
    output: ModelOutput,
) -> Result<Trained, TaskError> {
    if !plan.enough_rows() {
        return Ok(Trained::None);
    }
    let features = scaled_features(plan.features_of(me), table, plan.rows)?;
    let labels = if plan.label.0 == me {
        let Some(ColumnData::Categorical(v)) = table.columns.get(&plan.label.1) else {
            return Err(TaskError::Internal(format!(
                "label {} was not read",
                plan.label.1
            )));
        };
        Some(v.iter().map(|c| f64::from(*c)).collect::<Vec<f64>>())
    } else {
        None
    };
    let layout = LrLayout {
        rows: plan.rows,
        features_p0: plan.provider_features.len(),
        features_p1: plan.buyer_features.len(),
        label_owner: match plan.label.0 {
            Side::Provider => Party::P0,
            Side::Buyer => Party::P1,
        },
    };
    let own_data = LrOwnData {
        features: &features,
        labels: labels.as_deref(),
    };
    let model = tessera_mpc::lr::train(session, &layout, &plan.config, output, &own_data)
        .await
        .map_err(lr_error)?;
    match model {
        Model::Revealed { weights, bias } => {
            let bounds = plan
                .provider_features
                .iter()
                .chain(&plan.buyer_features)
                .map(|(_, b)| *b);
            let weights = weights.iter().zip(bounds).map(|(w, b)| w / b).collect();
            Ok(Trained::Revealed((weights, bias)))
        }
        Model::Shared(shares) => Ok(Trained::Shared(shares)),
        Model::Withheld => Ok(Trained::None),
    }
}

fn lr_error(e: LrError) -> TaskError {
    match e {
        LrError::Data(_) => TaskError::Input(e.to_string()),
        LrError::Config(_) => TaskError::Ticket(e.to_string()),
        LrError::PlanMismatch => TaskError::Peer(e.to_string()),
        LrError::Mpc(m) => peer_error(&m),
    }
}

/// The model's probability `σ̃(x · w + b)` for every aligned row, on this party's features
/// of `table` (scaled by their bounds, as in training) and its `model` shares, opened to the
/// buyer only: `Some` at the buyer, `None` at the provider. No rows, nothing computed.
async fn score_rows(
    session: &mut Session<'_, rand_chacha::ChaCha20Rng>,
    plan: &ScorePlan,
    me: Side,
    table: &Table,
    model: &Shares,
) -> Result<Option<Vec<f64>>, TaskError> {
    if plan.rows == 0 {
        return Ok((me == Side::Buyer).then(Vec::new));
    }
    let own = plan.features_of(me).len();
    let features = scaled_features(plan.features_of(me), table, plan.rows)?;
    let fx = session.fixed_point();
    let mut out = (me == Side::Buyer).then(|| Vec::with_capacity(plan.rows));
    // In chunks (the same on both sides: the rows are public), each opened as it is done.
    for start in (0..plan.rows).step_by(SCORE_CHUNK_ROWS) {
        let rows = SCORE_CHUNK_ROWS.min(plan.rows - start);
        let layout = LrLayout {
            rows,
            features_p0: plan.provider_features.len(),
            features_p1: plan.buyer_features.len(),
            label_owner: Party::P1,
        };
        let chunk = &features[start * own..(start + rows) * own];
        let p = tessera_mpc::lr::predict_shared(session, &layout, model, chunk)
            .await
            .map_err(lr_error)?;
        let opened = session
            .reveal_to(Party::P1, &p)
            .await
            .map_err(|e| peer_error(&e))?;
        if let (Some(out), Some(v)) = (out.as_mut(), opened) {
            out.extend(v.into_iter().map(|x| fx.decode(x).clamp(0.0, 1.0)));
        }
    }
    Ok(out)
}

/// The buyer's scores: one row per aligned row, its key columns' values as in its file, then
/// `probability`.
fn scores_table(
    spec: &TaskSpec,
    own_columns: usize,
    kept: &[Vec<String>],
    rows: &[usize],
    probabilities: &[f64],
) -> Result<(Vec<String>, Vec<Vec<String>>), TaskError> {
    let mut header = spec.key_columns.clone();
    header.push("probability".into());
    let mut out = Vec::with_capacity(rows.len());
    for (&r, p) in rows.iter().zip(probabilities) {
        let keys = kept
            .get(r)
            .and_then(|v| v.get(own_columns..))
            .ok_or_else(|| TaskError::Internal(format!("aligned row {r} was not kept")))?;
        let mut row = keys.to_vec();
        row.push(p.to_string());
        out.push(row);
    }
    Ok((header, out))
}

/// The file in which a worker keeps its share of a model trained under `modelTo: "shared"`:
/// `model-shares-<job id>.json` in its output directory.
pub(crate) fn model_shares_name(job_id: &str) -> String {
    format!("model-shares-{job_id}.json")
}

/// A party's share of a model kept shared, as stored: what it was trained on (each side's
/// features with their bounds, the fixed-point format, whose share it is) and the share of
/// `[w | b]` (the model's weights for features scaled by their bounds, provider features
/// first, then the bias), as ring elements. `Debug` shows no share.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredShares {
    format: String,
    job_id: String,
    party: String,
    fraction_bits: u32,
    provider_features: Vec<(String, f64)>,
    buyer_features: Vec<(String, f64)>,
    shares: Vec<u64>,
}

impl std::fmt::Debug for StoredShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredShares")
            .field("job_id", &self.job_id)
            .field("party", &self.party)
            .field("shares", &format_args!("<{} shares>", self.shares.len()))
            .finish()
    }
}

/// The format tag of [`StoredShares`].
const SHARES_FORMAT: &str = "tessera-lr-shares/1";
/// The largest share file read.
const SHARES_FILE_BYTES_MAX: u64 = 1 << 20;

/// Writes this party's share of a model trained by `job_id`, never replacing a file.
async fn store_model_shares(
    dir: &std::path::Path,
    job_id: &str,
    plan: &TrainPlan,
    me: Side,
    fx: FixedPoint,
    shares: Shares,
) -> Result<(), TaskError> {
    let stored = StoredShares {
        format: SHARES_FORMAT.into(),
        job_id: job_id.to_string(),
        party: me.to_string(),
        fraction_bits: fx.frac_bits(),
        provider_features: plan.provider_features.clone(),
        buyer_features: plan.buyer_features.clone(),
        shares: shares.words().to_vec(),
    };
    let bytes = serde_json::to_vec(&stored)
        .map_err(|e| TaskError::Internal(format!("encoding the model's shares: {e}")))?;
    let path = dir.join(model_shares_name(job_id));
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        // A share is this party's secret: readable by its owner only.
        let mut f = tessera_core::fs::create_private(&path)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })
    .await
    .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
    .map_err(|e| TaskError::Internal(format!("writing the model's shares: {e}")))
}

/// This party's share of the model a scoring names, read from `dir` and checked: this
/// party's, of that job, in this format, trained on the scoring's features with the same
/// bounds (in order, each side's).
///
/// # Errors
/// [`TaskError::Input`]: no such file on this worker (the scoring must run on the worker
/// that trained it), or one that does not fit the scoring.
async fn load_model_shares(
    dir: &std::path::Path,
    plan: &ScorePlan,
    me: Side,
    fx: FixedPoint,
) -> Result<Shares, TaskError> {
    let job = plan.scoring.model_job.clone();
    let path = dir.join(model_shares_name(&job));
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut v = Vec::new();
        std::fs::File::open(&path)?
            .take(SHARES_FILE_BYTES_MAX + 1)
            .read_to_end(&mut v)?;
        Ok(v)
    })
    .await
    .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
    .map_err(|e| {
        TaskError::Input(format!(
            "the model of job {job}: this worker keeps no share of it ({e}); a scoring runs on \
             the workers that trained the model"
        ))
    })?;
    let unfit = |why: &str| TaskError::Input(format!("the model of job {job}: {why}"));
    if bytes.len() as u64 > SHARES_FILE_BYTES_MAX {
        return Err(unfit("its share file is too large"));
    }
    let stored: StoredShares =
        serde_json::from_slice(&bytes).map_err(|_| unfit("its share file is unreadable"))?;
    if stored.format != SHARES_FORMAT
        || stored.job_id != job
        || stored.party != me.to_string()
        || stored.fraction_bits != fx.frac_bits()
    {
        return Err(unfit("its share file is of another job, party or format"));
    }
    if stored.provider_features != plan.provider_features
        || stored.buyer_features != plan.buyer_features
    {
        return Err(unfit(
            "it was trained on other features or bounds than the statement names",
        ));
    }
    if stored.shares.len() != plan.provider_features.len() + plan.buyer_features.len() + 1 {
        return Err(unfit("its share file holds a model of another size"));
    }
    Ok(Shares::from_words(stored.shares))
}

/// The recipient's model file: one row per feature in the statement's order, then the bias:
/// `term` (`provider.NAME`, `buyer.NAME`, `(bias)`), `reported` (`false` when the aligned rows
/// were fewer than `minGroupSize`: nothing was trained), `weight` (in the feature's own
/// units; `P(label = 1) = σ(Σ weight · value + bias)`).
fn model_table(
    plan: &TrainPlan,
    model: Option<&(Vec<f64>, f64)>,
) -> Result<(Vec<String>, Vec<Vec<String>>), TaskError> {
    let header = vec!["term".to_string(), "reported".into(), "weight".into()];
    let mut rows = Vec::with_capacity(plan.training.features.len() + 1);
    let reported = model.is_some().to_string();
    for c in &plan.training.features {
        let weight = match model {
            Some((w, _)) => {
                let i = plan
                    .weight_index(c)
                    .ok_or_else(|| TaskError::Internal(format!("no weight for {c}")))?;
                w.get(i)
                    .ok_or_else(|| TaskError::Internal(format!("no weight for {c}")))?
                    .to_string()
            }
            None => String::new(),
        };
        rows.push(vec![c.to_string(), reported.clone(), weight]);
    }
    let bias = model.map_or(String::new(), |(_, b)| b.to_string());
    rows.push(vec!["(bias)".into(), reported, bias]);
    Ok((header, rows))
}

/// The columns of `side` the query declares, with their kinds, in declaration order.
pub(crate) fn declared_columns(
    mpc: &MpcSpec,
    side: Side,
) -> Result<Vec<(String, ColumnKind)>, TaskError> {
    let schema = schema_of(&mpc.query, 0)
        .map_err(|e| TaskError::Ticket(format!("the task's query: {e}")))?;
    Ok(mpc
        .query
        .columns
        .iter()
        .filter_map(|c| side_and_name(&c.column).ok())
        .filter(|(s, _)| *s == side)
        .filter_map(|(side, name)| {
            schema
                .column(side, name)
                .map(|d| (name.to_string(), d.kind))
        })
        .collect())
}

fn peer_error(e: &MpcError) -> TaskError {
    match e {
        MpcError::NotReleased => TaskError::Internal(e.to_string()),
        // The peer's or the dealer's link broke: nobody's fault that this side can tell.
        MpcError::Link(_) => TaskError::Link(e.to_string()),
        _ => TaskError::Peer(e.to_string()),
    }
}

fn query_error(e: QueryError, role: TaskRole) -> TaskError {
    match e {
        QueryError::Data(_) => TaskError::Input(e.to_string()),
        QueryError::Mpc(m) => peer_error(&m),
        QueryError::PlanMismatch => TaskError::Peer(e.to_string()),
        e if role == TaskRole::Receiver => TaskError::Input(e.to_string()),
        e => TaskError::Internal(e.to_string()),
    }
}

/// The tag of a key for the alignment: `SHA-256(session ‖ 0 ‖ key)[..16]`.
fn tag(session: &str, key: &[u8]) -> [u8; TAG_BYTES] {
    let mut h = Sha256::new();
    h.update(session.as_bytes());
    h.update([0u8]);
    h.update(key);
    let d = h.finalize();
    let mut t = [0u8; TAG_BYTES];
    t.copy_from_slice(&d[..TAG_BYTES]);
    t
}

/// The PSI on the keys and the exchange of the common keys' tags: this party's row indices
/// (into `keys`) of the common keys, in the order both parties use.
async fn align(
    spec: &TaskSpec,
    link: &dyn Link,
    keys: &[Vec<u8>],
    rng: &mut rand_chacha::ChaCha20Rng,
    progress: &dyn tessera_psi::Progress,
) -> Result<Vec<usize>, TaskError> {
    let cfg = crate::exec::psi_config(spec, Mode::Intersection);
    let per_frame = (link.frame_bytes_max().saturating_sub(16) / TAG_BYTES).max(1);
    match spec.role {
        TaskRole::Receiver => {
            let out = tessera_psi::run_receiver(link, keys, &cfg, rng, progress)
                .await
                .map_err(crate::exec::psi_task_error)?;
            let first_of_each = out.intersection.unwrap_or_default();
            let mut tagged: Vec<([u8; TAG_BYTES], usize)> = first_of_each
                .iter()
                .filter_map(|&i| keys.get(i).map(|k| (tag(&spec.session_id, k), i)))
                .collect();
            tagged.sort_unstable();
            tagged.dedup_by(|a, b| a.0 == b.0);
            let tags: Vec<[u8; TAG_BYTES]> = tagged.iter().map(|(t, _)| *t).collect();
            send_tags(link, &tags, per_frame).await?;
            Ok(tagged.into_iter().map(|(_, i)| i).collect())
        }
        TaskRole::Sender => {
            tessera_psi::run_sender(link, keys, &cfg, rng, progress)
                .await
                .map_err(crate::exec::psi_task_error)?;
            let mut first: HashMap<[u8; TAG_BYTES], usize> = HashMap::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                first.entry(tag(&spec.session_id, k)).or_insert(i);
            }
            receive_tags(link, &first, per_frame).await
        }
    }
}

/// The buyer's side of the tag exchange: a header with the count, then the (sorted) tags,
/// at most `per_frame` a frame.
async fn send_tags(
    link: &dyn Link,
    tags: &[[u8; TAG_BYTES]],
    per_frame: usize,
) -> Result<(), TaskError> {
    let mut head = BytesMut::with_capacity(12);
    head.put_slice(ALIGN_MAGIC);
    head.put_u64(tags.len() as u64);
    send(link, head.freeze()).await?;
    for chunk in tags.chunks(per_frame) {
        let mut f = BytesMut::with_capacity(chunk.len() * TAG_BYTES);
        for t in chunk {
            f.put_slice(t);
        }
        send(link, f.freeze()).await?;
    }
    Ok(())
}

/// The provider's side of the tag exchange: the header and the buyer's sorted tags of the
/// common keys, each mapped to this party's first row with that key (`first`). A malformed
/// header or frame, more tags than this party has keys, a tag it does not hold, or tags out
/// of order (repeats included) are the peer's fault.
async fn receive_tags(
    link: &dyn Link,
    first: &HashMap<[u8; TAG_BYTES], usize>,
    per_frame: usize,
) -> Result<Vec<usize>, TaskError> {
    let head = recv(link).await?;
    let count = match head.as_ref() {
        [m0, m1, m2, m3, n @ ..] if [*m0, *m1, *m2, *m3] == *ALIGN_MAGIC && n.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(n);
            u64::from_be_bytes(b)
        }
        _ => {
            return Err(TaskError::Peer(
                "the peer's alignment header is malformed".into(),
            ));
        }
    };
    if count > first.len() as u64 {
        return Err(TaskError::Peer(format!(
            "the peer aligns {count} rows; this party has {} keys",
            first.len()
        )));
    }
    let count = count as usize;
    let mut rows = Vec::with_capacity(count);
    let mut last: Option<[u8; TAG_BYTES]> = None;
    while rows.len() < count {
        let frame = recv(link).await?;
        let want = (count - rows.len()).min(per_frame);
        if frame.len() % TAG_BYTES != 0 || frame.len() / TAG_BYTES > want || frame.is_empty() {
            return Err(TaskError::Peer(
                "the peer's alignment frame is malformed".into(),
            ));
        }
        for t in frame.chunks_exact(TAG_BYTES) {
            let mut tag = [0u8; TAG_BYTES];
            tag.copy_from_slice(t);
            if last.is_some_and(|l| l >= tag) {
                return Err(TaskError::Peer(
                    "the peer's alignment tags are not strictly increasing".into(),
                ));
            }
            last = Some(tag);
            let Some(&i) = first.get(&tag) else {
                return Err(TaskError::Peer(
                    "the peer aligns a key this party does not hold".into(),
                ));
            };
            rows.push(i);
        }
    }
    Ok(rows)
}

pub(crate) async fn send(link: &dyn Link, frame: Bytes) -> Result<(), TaskError> {
    link.send(frame)
        .await
        .map_err(|e| TaskError::Peer(e.to_string()))
}

pub(crate) async fn recv(link: &dyn Link) -> Result<Bytes, TaskError> {
    link.recv()
        .await
        .map_err(|e| TaskError::Peer(e.to_string()))
}

/// This party's columns at the aligned `rows`: numbers (clipped to their bound) or category
/// codes. A value that is neither is this party's input error, named by column and aligned
/// row, never by value.
pub(crate) fn own_table(
    own: &[(String, ColumnKind)],
    kept: &[Vec<String>],
    rows: &[usize],
) -> Result<Table, TaskError> {
    let mut table = Table::default();
    for (c, (name, kind)) in own.iter().enumerate() {
        let cell = |r: usize| kept.get(r).and_then(|row| row.get(c)).map(|v| v.trim());
        let data = match kind {
            ColumnKind::Numeric { abs_max } => {
                let mut v = Vec::with_capacity(rows.len());
                for &r in rows {
                    let x = cell(r)
                        .and_then(|s| s.parse::<f64>().ok())
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| {
                            TaskError::Input(format!(
                                "column {name}: the value of {} is not a finite number",
                                data_row(r)
                            ))
                        })?;
                    v.push(x.clamp(-abs_max, *abs_max));
                }
                ColumnData::Numeric(v)
            }
            ColumnKind::Categorical { levels } => {
                let mut v = Vec::with_capacity(rows.len());
                for &r in rows {
                    let code = cell(r)
                        .and_then(|s| s.parse::<u32>().ok())
                        .filter(|c| c < levels)
                        .ok_or_else(|| {
                            TaskError::Input(format!(
                                "column {name}: the value of {} is not a category code 0 to {} \
                                 (a whole number)",
                                data_row(r),
                                levels.saturating_sub(1)
                            ))
                        })?;
                    v.push(code);
                }
                ColumnData::Categorical(v)
            }
        };
        table.columns.insert(name.clone(), data);
    }
    Ok(table)
}

/// The `rows` of `table` (the alignment's indices into its columns), in that order.
///
/// # Errors
/// [`TaskError::Internal`] for an index past a column (the alignment indexes the rows read).
fn select_rows(table: &Table, rows: &[usize]) -> Result<Table, TaskError> {
    fn pick<T: Copy>(v: &[T], rows: &[usize]) -> Result<Vec<T>, TaskError> {
        rows.iter()
            .map(|&r| {
                v.get(r).copied().ok_or_else(|| {
                    TaskError::Internal(format!(
                        "aligned row {r} is past the {} rows read",
                        v.len()
                    ))
                })
            })
            .collect()
    }
    let mut out = Table::default();
    for (name, data) in &table.columns {
        let data = match data {
            ColumnData::Numeric(v) => ColumnData::Numeric(pick(v, rows)?),
            ColumnData::Categorical(v) => ColumnData::Categorical(pick(v, rows)?),
        };
        out.columns.insert(name.clone(), data);
    }
    Ok(out)
}

/// A row read, for an error message: `data row N` counted from 1 after the header (rows
/// with an empty key that were skipped are not counted).
fn data_row(r: usize) -> String {
    format!(
        "data row {} (rows skipped for an empty key not counted)",
        r + 1
    )
}

/// Writes the buyer's result (see the module docs for the columns).
async fn write_result(
    path: PathBuf,
    mpc: &MpcSpec,
    result: QueryResult,
) -> Result<tessera_core::table::WrittenFile, TaskError> {
    let (header, rows) = result_table(mpc, result)?;
    write_table(path, header, rows).await
}

/// Writes a result table as CSV, never replacing a file.
pub(crate) async fn write_table(
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
) -> Result<tessera_core::table::WrittenFile, TaskError> {
    tokio::task::spawn_blocking(move || write_result_csv(&path, &header, rows))
        .await
        .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
        .map_err(|e| match e {
            TableError::OutputExists { .. } => TaskError::Input(e.to_string()),
            e => TaskError::Internal(format!("writing the result: {e}")),
        })
}

/// The buyer's result as a table: header and rows (see the module docs for the columns).
pub(crate) fn result_table(
    mpc: &MpcSpec,
    result: QueryResult,
) -> Result<(Vec<String>, Vec<Vec<String>>), TaskError> {
    let items: Vec<String> = tessera_mpc::query::parse(&mpc.query.query)
        .map(|q| q.items.iter().map(ToString::to_string).collect())
        .map_err(|e| TaskError::Internal(format!("the query: {e}")))?;
    let (header, rows): (Vec<String>, Vec<Vec<String>>) = match result {
        QueryResult::Groups(groups) => {
            let mut header = vec!["group".to_string(), "reported".to_string()];
            header.extend(items);
            let rows = groups
                .into_iter()
                .map(|g| {
                    let mut row = vec![g.group.to_string()];
                    match g.values {
                        None => {
                            row.push("false".into());
                            row.extend(std::iter::repeat_n(String::new(), header.len() - 2));
                        }
                        Some(values) => {
                            row.push("true".into());
                            row.extend(values.into_iter().map(|a| {
                                match a {
                                    Aggregate::Count(n) => n.to_string(),
                                    Aggregate::Real(x) => x.to_string(),
                                    Aggregate::Histogram(h) => h
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(";"),
                                }
                            }));
                        }
                    }
                    row
                })
                .collect();
            (header, rows)
        }
        QueryResult::Rows(columns) => {
            let mut header = vec!["row".to_string()];
            header.extend(items);
            let n = columns.first().map_or(0, Vec::len);
            let rows = (0..n)
                .filter(|&i| {
                    columns
                        .iter()
                        .all(|c| c.get(i).is_some_and(Option::is_some))
                })
                .map(|i| {
                    let mut row = vec![i.to_string()];
                    row.extend(
                        columns
                            .iter()
                            .map(|c| c.get(i).copied().flatten().unwrap_or_default().to_string()),
                    );
                    row
                })
                .collect();
            (header, rows)
        }
    };
    Ok((header, rows))
}

#[cfg(test)]
mod tests {
    use tessera_core::MemLink;

    use super::*;

    fn tags_of(keys: &[&str]) -> Vec<[u8; TAG_BYTES]> {
        keys.iter().map(|k| tag("s", k.as_bytes())).collect()
    }

    fn provider_rows(keys: &[&str]) -> HashMap<[u8; TAG_BYTES], usize> {
        let mut first = HashMap::new();
        for (i, t) in tags_of(keys).into_iter().enumerate() {
            first.entry(t).or_insert(i);
        }
        first
    }

    #[tokio::test]
    async fn the_tags_align_the_providers_first_rows_in_the_buyers_order() {
        let (a, b) = MemLink::pair();
        let provider = provider_rows(&["k0", "k1", "k2", "k1", "k3", "k4"]);
        let mut tags = tags_of(&["k1", "k3", "k4", "k0"]);
        tags.sort_unstable();
        let expect: Vec<usize> = tags
            .iter()
            .map(|t| provider.get(t).copied().expect("held"))
            .collect();
        // Two tags a frame: the count spans three frames.
        let (sent, got) = tokio::join!(send_tags(&a, &tags, 2), receive_tags(&b, &provider, 2));
        sent.expect("send");
        assert_eq!(got.expect("receive"), expect);
        // Nothing in common: a header of 0 and no frame.
        let (sent, got) = tokio::join!(send_tags(&a, &[], 2), receive_tags(&b, &provider, 2));
        sent.expect("send");
        assert!(got.expect("empty").is_empty());
    }

    #[tokio::test]
    async fn a_hostile_buyers_tags_are_a_peer_error_never_a_panic() {
        let provider = provider_rows(&["k0", "k1", "k2"]);
        let mut held = tags_of(&["k0", "k1", "k2"]);
        held.sort_unstable();
        let head = |n: u64| {
            let mut h = ALIGN_MAGIC.to_vec();
            h.extend_from_slice(&n.to_be_bytes());
            Bytes::from(h)
        };
        let cases: Vec<(&str, Vec<Bytes>)> = vec![
            ("header is malformed", vec![Bytes::from_static(b"TMA1")]),
            (
                "header is malformed",
                vec![Bytes::from_static(b"XXXX\0\0\0\0\0\0\0\x01")],
            ),
            ("this party has 3 keys", vec![head(4)]),
            (
                "frame is malformed",
                vec![head(2), Bytes::from(vec![0u8; 17])],
            ),
            (
                "frame is malformed",
                vec![head(1), Bytes::from(held.concat())],
            ),
            ("frame is malformed", vec![head(1), Bytes::new()]),
            (
                "does not hold",
                vec![head(1), Bytes::from(tags_of(&["stranger"]).concat())],
            ),
            (
                "not strictly increasing",
                vec![head(2), Bytes::from([held[1], held[0]].concat())],
            ),
            (
                "not strictly increasing",
                vec![head(2), Bytes::from([held[0], held[0]].concat())],
            ),
        ];
        for (says, frames) in cases {
            let (a, b) = MemLink::pair();
            for f in frames {
                a.send(f).await.expect("send");
            }
            drop(a);
            let e = receive_tags(&b, &provider, 8).await.expect_err(says);
            assert!(matches!(e, TaskError::Peer(_)), "{says}: {e:?}");
            assert!(e.to_string().contains(says), "{says}: {e}");
        }
        // The buyer going away mid-way is a peer error too.
        let (a, b) = MemLink::pair();
        a.send(head(2)).await.expect("send");
        drop(a);
        assert!(matches!(
            receive_tags(&b, &provider, 8).await,
            Err(TaskError::Peer(_))
        ));
    }

    #[test]
    fn own_columns_are_clipped_and_bad_cells_are_named_by_column_and_data_row_not_value() {
        let own = vec![
            ("x".to_string(), ColumnKind::Numeric { abs_max: 10.0 }),
            ("g".to_string(), ColumnKind::Categorical { levels: 3 }),
        ];
        let kept: Vec<Vec<String>> = [["1.5", "0"], ["-99", "2"], ["42", "1"]]
            .iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect();
        let t = own_table(&own, &kept, &[2, 0, 1]).expect("table");
        assert_eq!(t.columns["x"], ColumnData::Numeric(vec![10.0, 1.5, -10.0]));
        assert_eq!(t.columns["g"], ColumnData::Categorical(vec![1, 0, 2]));
        for (row, says) in [
            (
                ["secret-text", "0"],
                "column x: the value of data row 1 (rows skipped for an empty key not counted) \
                 is not a finite number",
            ),
            (["inf", "0"], "not a finite number"),
            (
                ["1", "3"],
                "column g: the value of data row 1 (rows skipped for an empty key not counted) \
                 is not a category code 0 to 2",
            ),
            (["1", "-1"], "not a category code"),
        ] {
            let kept = vec![row.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
            let e = own_table(&own, &kept, &[0]).expect_err(says);
            assert!(matches!(e, TaskError::Input(_)), "{e:?}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(!e.to_string().contains("secret-text"), "{e}");
        }
    }
}
