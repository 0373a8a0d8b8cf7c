//! Jobs and their tasks: admission with count reservation in one transaction, completion with
//! count commit or release, usage events and ledger postings in one transaction.

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};
use serde::Serialize;
use tessera_accounting::{AccountKind, TransferOutcome, TransferSpec, settle};
use tessera_core::{CountState, JobState, MpcTriples, PsiMode, PsiProtocol, TaskRole, TaskState};

use tessera_accounting::bill::NewBillLine;

use crate::bills::add_line;
use crate::limits::{FreezeContext, load_context, set_auto_frozen};
use crate::records::{LicenceRecord, load_licence};
use crate::{Store, StoreError, audit, ledger};
use tessera_accounting::ledger::LedgerOp;

/// A job as submitted, before admission.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// New job id.
    pub job_id: String,
    /// Licence named by the buyer.
    pub licence_id: String,
    /// Scene requested.
    pub scene: String,
    /// Submitting user.
    pub user: String,
    /// Engine mode.
    pub mode: PsiMode,
    /// The PSI protocol it runs (resolved: the request's, or the mode's default).
    pub protocol: PsiProtocol,
    /// The request as received, for the record (and, with `request_id`, to tell a retry
    /// from a different request).
    pub request: serde_json::Value,
    /// The submitting user's idempotency key, if any: one job per (user, key).
    pub request_id: Option<String>,
    /// The buyer's party.
    pub buyer_party: String,
    /// The provider's party (the licensor; empty when the licence is unknown).
    pub provider_party: String,
    /// The result file name asked for (empty: none).
    pub output: String,
    /// Further licences the job runs under (an `fl` job: one per provider after the first),
    /// in the order named; each has its count reserved with the job's own.
    pub co_licences: Vec<String>,
    /// Submission time.
    pub now_ms: i64,
}

/// A further licence of a job (see [`NewJob::co_licences`]) as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CoLicence {
    /// The licence.
    pub licence_id: String,
    /// Its licensor, the provider it pays.
    pub provider_party: String,
}

/// What the admission transaction shows of one further licence.
#[derive(Debug, Clone)]
pub struct CoLicenceContext {
    /// The licence named.
    pub licence_id: String,
    /// It, if it exists (remaining counts as stored).
    pub licence: Option<LicenceRecord>,
    /// For a licence sold by the month: `Err(reason)` when no paid term covers now.
    pub term: Result<(), String>,
}

/// One party's task as placed by the scheduler.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Task id.
    pub task_id: String,
    /// Worker chosen.
    pub worker_id: String,
    /// Party it acts for.
    pub party: String,
    /// Engine role.
    pub role: TaskRole,
    /// The exact spec bytes sent to the worker (JSON).
    pub spec_json: String,
}

/// What the admission transaction shows the scheduler's decision.
#[derive(Debug, Clone)]
pub struct AdmitContext<'a> {
    /// The licence named, if it exists (remaining counts as stored).
    pub licence: Option<&'a LicenceRecord>,
    /// The buyer's funds in payment order (deduction voucher, recharge voucher, cash,
    /// credit): `(account, available micros)`, available being spendable above the limit;
    /// what [`tessera_accounting::settle::admission_holds`] draws from.
    pub funds: Vec<(AccountKind, i64)>,
    /// The buyer's freeze configuration and state.
    pub freeze: FreezeContext,
    /// The buyer's spendable cash (what the freeze rules compare).
    pub cash_micros: i64,
    /// For a licence sold by the month: `Err(reason)` when no paid term covers now.
    pub term: Result<(), String>,
    /// The job that already recorded the result name asked for, if one did (an unfinished or
    /// succeeded job of the same buyer party): a result never replaces another.
    pub output_taken_by: Option<String>,
    /// The further licences named ([`NewJob::co_licences`]), in order.
    pub co_licences: &'a [CoLicenceContext],
}

/// Why admission refused a job. Each renders to the human text recorded with the job (and
/// shown by `job get`); the kind tells the API which error code it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// The buyer's dataset does not exist.
    DatasetNotFound {
        /// The dataset named.
        dataset_id: String,
    },
    /// The buyer's dataset belongs to another party.
    DatasetNotOwned {
        /// The dataset named.
        dataset_id: String,
        /// Its owner.
        owner: String,
        /// The buyer's party.
        party: String,
    },
    /// The dataset the licence covers does not exist.
    LicensedDatasetNotFound {
        /// The licence's dataset.
        dataset_id: String,
    },
    /// The licence named does not exist.
    LicenceNotFound {
        /// The licence named.
        licence_id: String,
    },
    /// A constraint of the licence's usage policy (T/AI 123.12 tables A.48-A.50: `relUsers`,
    /// `useScenes`, `startDate`/`endDate`) is not met.
    PolicyDenied {
        /// Which constraint.
        constraint: tessera_policy::Constraint,
        /// The policy evaluator's explanation.
        reason: String,
    },
    /// The scene's remaining count (`remainingCounts`) is zero.
    QuotaExhausted {
        /// The scene.
        scene: String,
    },
    /// The buyer's funds (in payment order) do not cover the job's estimated maximum cost.
    InsufficientFunds {
        /// The estimated maximum cost, micros.
        needed_micros: i64,
        /// What the funding accounts hold above their limits, micros.
        available_micros: i64,
        /// Each funding account with its available micros, in payment order.
        funds: Vec<(String, i64)>,
    },
    /// The buyer's account is frozen (operations manual §3.6.5).
    AccountFrozen {
        /// The freeze notice.
        reason: String,
    },
    /// The licence is sold by the month and no paid term covers now (manual §1.4.5).
    NoPaidTerm {
        /// The explanation.
        reason: String,
    },
    /// The licence's price cannot be rated.
    Unpriced {
        /// The licence.
        licence_id: String,
        /// Why.
        error: String,
    },
    /// The result file name is already recorded by another job of the buyer's party.
    OutputTaken {
        /// The name asked for.
        output: String,
        /// The job that recorded it.
        job_id: String,
    },
    /// No live worker of a party fits the scene's environment lists.
    NoWorker {
        /// The placement explanation (each misfit).
        reason: String,
    },
    /// The licence came from a controlled delivery whose publication was revoked, or whose
    /// trade licence (table A.37) was superseded without its policies (T/AI 123.12 flow).
    Withdrawn {
        /// Why.
        reason: String,
    },
    /// A scoring names a model it cannot use: no such job of the buyer's under this licence,
    /// not a succeeded training kept shared, trained on other features.
    ModelUnusable {
        /// The job named as the model's.
        job_id: String,
        /// Why.
        reason: String,
    },
}

impl Refusal {
    /// The kind, in snake case (as the serialized `kind` tag): a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::DatasetNotFound { .. } => "dataset_not_found",
            Refusal::DatasetNotOwned { .. } => "dataset_not_owned",
            Refusal::LicensedDatasetNotFound { .. } => "licensed_dataset_not_found",
            Refusal::LicenceNotFound { .. } => "licence_not_found",
            Refusal::PolicyDenied { .. } => "policy_denied",
            Refusal::QuotaExhausted { .. } => "quota_exhausted",
            Refusal::InsufficientFunds { .. } => "insufficient_funds",
            Refusal::AccountFrozen { .. } => "account_frozen",
            Refusal::NoPaidTerm { .. } => "no_paid_term",
            Refusal::Unpriced { .. } => "unpriced",
            Refusal::OutputTaken { .. } => "output_taken",
            Refusal::NoWorker { .. } => "no_worker",
            Refusal::Withdrawn { .. } => "withdrawn",
            Refusal::ModelUnusable { .. } => "model_unusable",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::DatasetNotFound { dataset_id } => write!(f, "dataset {dataset_id} not found"),
            Refusal::DatasetNotOwned {
                dataset_id,
                owner,
                party,
            } => write!(
                f,
                "dataset {dataset_id} belongs to party {owner}, not {party}"
            ),
            Refusal::LicensedDatasetNotFound { dataset_id } => {
                write!(f, "licensed dataset {dataset_id} not found")
            }
            Refusal::LicenceNotFound { licence_id } => write!(f, "licence {licence_id} not found"),
            Refusal::PolicyDenied { reason, .. }
            | Refusal::AccountFrozen { reason }
            | Refusal::NoPaidTerm { reason }
            | Refusal::NoWorker { reason }
            | Refusal::Withdrawn { reason } => f.write_str(reason),
            Refusal::QuotaExhausted { scene } => {
                write!(f, "quota exhausted: no runs left for scene {scene}")
            }
            Refusal::ModelUnusable { job_id, reason } => {
                write!(f, "the model of job {job_id}: {reason}")
            }
            Refusal::InsufficientFunds {
                needed_micros,
                available_micros,
                funds,
            } => {
                let parts: Vec<String> = funds.iter().map(|(n, a)| format!("{n} {a}")).collect();
                write!(
                    f,
                    "insufficient funds: {available_micros} micros available ({}) is below the \
                     estimated maximum cost of {needed_micros} micros",
                    parts.join(", ")
                )
            }
            // The other job may be another user's: the reason names neither it nor its user
            // (the submitter sees this text); the job id stays in the typed refusal.
            Refusal::OutputTaken { output, .. } => write!(
                f,
                "result name {output:?} is already recorded by another job of this buyer \
                 party; a result never replaces another, choose a new name"
            ),
            Refusal::Unpriced { licence_id, error } => {
                write!(f, "licence {licence_id} cannot be rated: {error}")
            }
        }
    }
}

/// The scheduler's decision, taken inside the admission transaction.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Admit or refuse.
    pub allowed: bool,
    /// Every refusal reason (empty when admitted).
    pub reasons: Vec<Refusal>,
    /// Full detail for the audit chain.
    pub detail: serde_json::Value,
    /// Tasks to record when admitted.
    pub tasks: Vec<NewTask>,
    /// Holds (pending transfers) to place when admitted.
    pub holds: Vec<TransferSpec>,
    /// A new automatic freeze state to record (with its notice), if it changed.
    pub auto_frozen: Option<(bool, Option<String>)>,
    /// An `mpc` job's triples source as admission resolved it (`None`: not an mpc job).
    pub mpc_triples: Option<MpcTriples>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// Job id.
    pub job_id: String,
    /// Licence.
    pub licence_id: String,
    /// Scene.
    pub scene: String,
    /// User.
    pub user: String,
    /// Mode.
    pub mode: PsiMode,
    /// The PSI protocol it runs.
    pub protocol: PsiProtocol,
    /// An `mpc` job's triples source (`None`: not an mpc job, or admitted before the column).
    pub mpc_triples: Option<MpcTriples>,
    /// Where the job stands.
    pub state: JobState,
    /// The state of its licence count.
    pub count_state: CountState,
    /// Refusal reasons (or admission checks).
    pub reasons: Vec<String>,
    /// Failure description.
    pub error: String,
    /// Result size when succeeded.
    pub result_size: Option<u64>,
    /// Where the buyer's worker wrote the result.
    pub result_location: String,
    /// What the buyer was charged.
    pub charge_micros: i64,
    /// Submission time.
    pub created_at_ms: i64,
    /// Completion time.
    pub finished_at_ms: Option<i64>,
    /// When the engine's delivery point was reported (`None`: not reached).
    pub delivered_at_ms: Option<i64>,
    /// Provider rows the sender reported at delivery.
    pub delivered_rows: Option<u64>,
    /// The submission's idempotency key.
    pub request_id: Option<String>,
    /// The buyer's party (empty for jobs recorded before it was kept).
    pub buyer_party: String,
    /// The provider's party (empty when unknown).
    pub provider_party: String,
    /// The result file as written (receiver, intersection mode).
    pub result_file: Option<ResultFileRecord>,
    /// The provider's own result file (sender, `both` mode), named in its worker's output
    /// directory.
    pub provider_result_file: Option<ResultFileRecord>,
    /// Rows of the buyer's dataset left out because their key was empty.
    pub buyer_empty_keys: Option<u64>,
    /// Rows of the provider's dataset left out because their key was empty.
    pub provider_empty_keys: Option<u64>,
    /// Where a failure happened, when it was on a party's side.
    pub failure: Option<FailureOrigin>,
    /// The further licences it runs under (empty for a job under one licence).
    pub co_licences: Vec<CoLicence>,
}

/// A result file as a worker wrote it (the buyer's, or the provider's in `both` mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ResultFileRecord {
    /// File name in the output directory of the worker that wrote it.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Data rows (the header not counted).
    pub rows: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256_hex: String,
}

/// Where a job's failure happened: the task's role and party, and a stable kind (`input`,
/// `peer`, `ticket`, `internal`, `cancelled`, `worker_lost`, `undeliverable`). The detail is
/// in [`JobRecord::error`], which only that party and the operator may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureOrigin {
    /// The failing task's role (sender = provider, receiver = buyer).
    pub role: TaskRole,
    /// The failing task's party.
    pub party: String,
    /// The stable kind.
    pub kind: String,
}

/// Rows each party left out because their key was empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmptyKeyCounts {
    /// The buyer's (receiver's).
    pub buyer: Option<u64>,
    /// The provider's (sender's).
    pub provider: Option<u64>,
}

impl JobRecord {
    /// Whether the job can no longer change.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    /// Task id.
    pub task_id: String,
    /// Job.
    pub job_id: String,
    /// Worker.
    pub worker_id: String,
    /// Party.
    pub party: String,
    /// Role.
    pub role: TaskRole,
    /// Where the task stands.
    pub state: TaskState,
    /// Spec JSON.
    pub spec_json: String,
}

/// A worker's final report on a task, as stored.
#[derive(Debug, Clone)]
pub struct TaskUpdate {
    /// `Succeeded` or `Failed`.
    pub state: TaskState,
    /// Failure class (empty when it succeeded).
    pub error_kind: String,
    /// Failure text.
    pub error: String,
    /// Measured usage.
    pub usage: Option<serde_json::Value>,
    /// Result size (receiver).
    pub result_size: Option<u64>,
}

/// What admission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// Admitted, one count reserved, tasks recorded.
    Admitted {
        /// The recorded job.
        job: JobRecord,
        /// Its tasks as recorded (dispatched), in task id order, as [`Store::tasks`] lists them.
        tasks: Vec<TaskRecord>,
        /// Its holds as recorded (all open), in the order written, as [`Store::job_holds`]
        /// lists them.
        holds: Vec<crate::HoldRecord>,
    },
    /// Refused, nothing reserved; the record holds the reasons as text.
    Refused {
        /// The recorded job.
        job: JobRecord,
        /// Why, typed.
        refusals: Vec<Refusal>,
    },
    /// The user already submitted this request id with the same request: nothing was
    /// written, here is that job as it stands.
    Replayed(JobRecord),
}

/// A metered quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEventRecord {
    /// Deterministic idempotency id of (job, party, metric, attempt).
    pub event_id: String,
    /// Job.
    pub job_id: String,
    /// Party that used it.
    pub party: String,
    /// Metric name (`cpu_ms`, `wall_ms`, `rows_in`, `bytes_sent`, ...).
    pub metric: String,
    /// The protocol the job ran when this was measured (`rr22`, `ecdh`; empty for usage that
    /// no engine run measured, e.g. the billing simulator's).
    pub protocol: String,
    /// Attempt number.
    pub attempt: i64,
    /// Quantity.
    pub quantity: i64,
    /// When it happened.
    pub event_time_ms: i64,
}

/// How a job ends.
#[derive(Debug, Clone)]
pub enum JobFinish {
    /// Both sides finished; commit the count, record usage and post the charge.
    Succeeded {
        /// Intersection size (or other result size).
        result_size: u64,
        /// Where the result was written.
        result_location: String,
        /// The result file as written, if one was.
        result_file: Option<ResultFileRecord>,
        /// The provider's own result file (`both` mode), if one was written.
        provider_result_file: Option<ResultFileRecord>,
        /// Rows each party left out because their key was empty.
        empty_keys: EmptyKeyCounts,
        /// Usage events.
        usage: Vec<UsageEventRecord>,
        /// Ledger operations: posting the job's holds and moving the charge on.
        ledger: Vec<LedgerOp>,
        /// The bill lines of the charge (one per licence).
        bill_lines: Vec<NewBillLine>,
        /// Total charged.
        charge_micros: i64,
    },
    /// It failed; `buyer_fault` keeps the count consumed, otherwise it is released.
    Failed {
        /// Why.
        error: String,
        /// Whether the failure is the buyer's (bad input of their own).
        buyer_fault: bool,
        /// Where it happened, when on a party's side (drives what each party is shown).
        origin: Option<FailureOrigin>,
    },
    /// The buyer cancelled it; the count is consumed.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// It failed or was cancelled after its delivery milestone: the count is consumed and
    /// the job charged (decided by `tessera_accounting::settle::delivered_job`).
    EndedAfterDelivery {
        /// `Failed` or `Cancelled`.
        state: JobState,
        /// Why.
        error: String,
        /// Where it happened, when on a party's side (drives what each party is shown).
        origin: Option<FailureOrigin>,
        /// Usage events known.
        usage: Vec<UsageEventRecord>,
        /// Ledger operations: posting the job's holds and moving the charge on.
        ledger: Vec<LedgerOp>,
        /// The bill lines of the charge (one per licence).
        bill_lines: Vec<NewBillLine>,
        /// Total charged.
        charge_micros: i64,
    },
}

/// What completion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishOutcome {
    /// False if the job had already ended (the call changed nothing).
    pub transitioned: bool,
    /// The job as it now stands.
    pub job: JobRecord,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Reads a text column into its vocabulary; text that names no variant is corrupt data.
fn parse_col<T>(r: &Row<'_>, i: usize) -> Result<T, StoreError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s: String = r.get(i)?;
    s.parse().map_err(corrupt)
}

/// The top-level fields in which two requests differ, comma-separated (the user's own
/// requests: nothing of anyone else's is shown).
fn differing_fields(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return "the whole request".into();
    };
    let mut keys: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .map(String::as_str)
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.join(", ")
}

/// Reads a non-negative integer column; a negative stored value is corrupt data.
fn stored_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative count {v}")))
}

const JOB_COLUMNS: &str = "job_id, licence_id, scene, user_id, mode, state, count_state, reasons_json, error, \
     result_size, result_location, charge_micros, created_at_ms, finished_at_ms, \
     buyer_party, provider_party, result_bytes, result_rows, result_sha256, \
     buyer_empty_keys, provider_empty_keys, error_role, error_party, error_kind, delivered_at_ms, \
     delivered_rows, request_id, protocol, provider_result_location, provider_result_bytes, \
     provider_result_rows, provider_result_sha256, mpc_triples, co_licences";

fn job_from_row(r: &Row<'_>) -> Result<JobRecord, StoreError> {
    let reasons: String = r.get(7)?;
    let result_size: Option<i64> = r.get(9)?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        licence_id: r.get(1)?,
        scene: r.get(2)?,
        user: r.get(3)?,
        mode: parse_col(r, 4)?,
        state: parse_col(r, 5)?,
        count_state: parse_col(r, 6)?,
        reasons: serde_json::from_str(&reasons).map_err(corrupt)?,
        error: r.get(8)?,
        result_size: result_size.map(stored_u64).transpose()?,
        result_location: r.get(10)?,
        charge_micros: r.get(11)?,
        created_at_ms: r.get(12)?,
        finished_at_ms: r.get(13)?,
        buyer_party: r.get(14)?,
        provider_party: r.get(15)?,
        result_file: result_file_from_row(r)?,
        provider_result_file: provider_result_file_from_row(r)?,
        buyer_empty_keys: opt_u64(r, 19)?,
        provider_empty_keys: opt_u64(r, 20)?,
        failure: failure_from_row(r)?,
        delivered_at_ms: r.get(24)?,
        delivered_rows: r.get::<_, Option<i64>>(25)?.map(stored_u64).transpose()?,
        request_id: r.get(26)?,
        protocol: parse_col(r, 27)?,
        mpc_triples: match r.get::<_, String>(32)?.as_str() {
            "" => None,
            t => Some(t.parse().map_err(corrupt)?),
        },
        co_licences: match r.get::<_, String>(33)?.as_str() {
            "" => Vec::new(),
            t => serde_json::from_str(t).map_err(corrupt)?,
        },
    })
}

fn opt_u64(r: &Row<'_>, i: usize) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = r.get(i)?;
    v.map(stored_u64).transpose()
}

fn result_file_from_row(r: &Row<'_>) -> Result<Option<ResultFileRecord>, StoreError> {
    let (Some(bytes), Some(rows)) = (opt_u64(r, 16)?, opt_u64(r, 17)?) else {
        return Ok(None);
    };
    Ok(Some(ResultFileRecord {
        name: r.get(10)?,
        bytes,
        rows,
        sha256_hex: r.get(18)?,
    }))
}

fn provider_result_file_from_row(r: &Row<'_>) -> Result<Option<ResultFileRecord>, StoreError> {
    let (Some(bytes), Some(rows)) = (opt_u64(r, 29)?, opt_u64(r, 30)?) else {
        return Ok(None);
    };
    Ok(Some(ResultFileRecord {
        name: r.get(28)?,
        bytes,
        rows,
        sha256_hex: r.get(31)?,
    }))
}

fn failure_from_row(r: &Row<'_>) -> Result<Option<FailureOrigin>, StoreError> {
    let role: String = r.get(21)?;
    if role.is_empty() {
        return Ok(None);
    }
    Ok(Some(FailureOrigin {
        role: role.parse().map_err(corrupt)?,
        party: r.get(22)?,
        kind: r.get(23)?,
    }))
}

/// A stored count as SQLite's integer (saturating: counts never reach `i64::MAX`).
fn count_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn load_job(conn: &Connection, job_id: &str) -> Result<JobRecord, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?"))?;
    let mut rows = stmt.query(params![job_id])?;
    let r = rows.next()?.ok_or_else(|| StoreError::NotFound {
        kind: "job",
        id: job_id.into(),
    })?;
    job_from_row(r)
}

impl Store {
    /// Admits or refuses a job in one transaction: loads the licence and its remaining count,
    /// asks `decide`, and if allowed reserves one count and records the job and its tasks;
    /// otherwise records the refusal. Either way the decision is appended to the audit chain.
    /// If `decide` fails, nothing is written and its error is returned.
    ///
    /// The transaction is a savepoint in the group commit's next batch (`writer`): `decide`
    /// runs on the writer thread, with the other admissions of the batch before it already
    /// applied, and the answer comes once the batch is durable.
    pub async fn admit<F, E>(&self, job: &NewJob, decide: F) -> Result<AdmitOutcome, E>
    where
        F: FnOnce(&AdmitContext<'_>) -> Result<Decision, E> + Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let job = job.clone();
        let (outcome, failure) = self
            .write(move |conn| {
                let mut failure = None;
                let outcome = admit_in(conn, &job, |ctx| match decide(ctx) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                })?;
                Ok((outcome, failure))
            })
            .await?;
        match (outcome, failure) {
            (Some(o), _) => Ok(o),
            (None, Some(e)) => Err(e),
            (None, None) => {
                Err(StoreError::Corrupt("admission aborted without a cause".into()).into())
            }
        }
    }
}

/// The live or succeeded job that already writes a buyer's output name (`?1` the buyer's
/// party, `?2` the name). It states `jobs_by_output`'s condition (`output_name <> ''`) itself:
/// the store's connections plan without looking at bound values, so the index is used only
/// when the query implies its condition on its own.
pub(crate) const OUTPUT_TAKEN: &str = "SELECT job_id FROM jobs \
     WHERE buyer_party = ?1 AND output_name = ?2 AND output_name <> '' \
     AND state IN ('admitted', 'running', 'succeeded') ORDER BY created_at_ms LIMIT 1";

/// The admission transaction's work on `conn`; `None` from `decide` writes nothing.
fn admit_in<F>(
    conn: &Connection,
    job: &NewJob,
    decide: F,
) -> Result<Option<AdmitOutcome>, StoreError>
where
    F: FnOnce(&AdmitContext<'_>) -> Option<Decision>,
{
    {
        if let Some(request_id) = &job.request_id {
            let prior: Option<(String, String)> = conn
                .prepare_cached(
                    "SELECT job_id, request_json FROM jobs WHERE user_id = ? AND request_id = ?",
                )?
                .query_row(params![&job.user, request_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((prior_id, prior_request)) = prior {
                let prior_request: serde_json::Value =
                    serde_json::from_str(&prior_request).map_err(corrupt)?;
                if prior_request != job.request {
                    return Err(StoreError::IdempotencyMismatch {
                        kind: "job request",
                        id: format!(
                            "{request_id:?} of user {} (differing: {})",
                            job.user,
                            differing_fields(&prior_request, &job.request)
                        ),
                    });
                }
                return Ok(Some(AdmitOutcome::Replayed(load_job(conn, &prior_id)?)));
            }
        }
        let licence = match load_licence(conn, &job.licence_id) {
            Ok(l) => Some(l),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let funds = ledger::customer_funds(conn, &job.user)?;
        let (cash_micros, _) =
            ledger::spendable(conn, &AccountKind::CustomerCash(job.user.clone()).name())?;
        let freeze = load_context(conn, &job.user)?;
        let term = match &licence {
            Some(l) => crate::terms::term_check(conn, l, &job.user, job.now_ms)?,
            None => Ok(()),
        };
        let mut co_licences = Vec::with_capacity(job.co_licences.len());
        for id in &job.co_licences {
            let licence = match load_licence(conn, id) {
                Ok(l) => Some(l),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let term = match &licence {
                Some(l) => crate::terms::term_check(conn, l, &job.user, job.now_ms)?,
                None => Ok(()),
            };
            co_licences.push(CoLicenceContext {
                licence_id: id.clone(),
                licence,
                term,
            });
        }
        let output_taken_by = if job.output.is_empty() {
            None
        } else {
            conn.prepare_cached(OUTPUT_TAKEN)?
                .query_row(params![&job.buyer_party, &job.output], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
        };
        let Some(decision) = decide(&AdmitContext {
            licence: licence.as_ref(),
            funds,
            freeze,
            cash_micros,
            term,
            output_taken_by,
            co_licences: &co_licences,
        }) else {
            return Ok(None);
        };
        if let Some((frozen, notice)) = &decision.auto_frozen {
            set_auto_frozen(conn, &job.user, *frozen, notice.as_deref(), job.now_ms)?;
        }
        let mut allowed = decision.allowed;
        let mut reasons = decision.reasons.clone();
        for id in std::iter::once(&job.licence_id).chain(&job.co_licences) {
            if let Some(reason) = crate::trade::withdrawn(conn, id)? {
                allowed = false;
                reasons.push(Refusal::Withdrawn { reason });
            }
        }
        if allowed {
            // Reserve one count, even if the decision was taken on a stale value.
            if !reserve_count(conn, &job.licence_id, &job.scene)? {
                allowed = false;
                reasons = vec![Refusal::QuotaExhausted {
                    scene: job.scene.clone(),
                }];
            }
        }
        if allowed {
            // Each further licence: one count too, or none of them (the ones reserved are
            // given back).
            let mut reserved = Vec::new();
            for id in &job.co_licences {
                if reserve_count(conn, id, &job.scene)? {
                    reserved.push(id);
                } else {
                    allowed = false;
                    reasons = vec![Refusal::QuotaExhausted {
                        scene: format!("{} of licence {id}", job.scene),
                    }];
                    break;
                }
            }
            if !allowed {
                for id in std::iter::once(&job.licence_id).chain(reserved) {
                    settle_count(conn, id, &job.scene, false)?;
                }
            }
        }
        let (state, count_state) = if allowed {
            (JobState::Admitted, CountState::Reserved)
        } else {
            (JobState::Refused, CountState::None)
        };
        // A refusal only because no worker could take the job now (none live yet while the
        // workers come back after a restart, say) is not kept under the request id: a retry
        // with the same id is decided afresh. Any other answer is the request id's for good.
        let transient = !allowed
            && !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| matches!(r, Refusal::NoWorker { .. }));
        let request_id = if transient {
            None
        } else {
            job.request_id.clone()
        };
        let reason_texts: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        let reasons_json = serde_json::to_string(&reason_texts).map_err(corrupt)?;
        let output_name = if allowed { job.output.as_str() } else { "" };
        let co_records: Vec<CoLicence> = co_licences
            .iter()
            .map(|c| CoLicence {
                licence_id: c.licence_id.clone(),
                provider_party: c
                    .licence
                    .as_ref()
                    .map(|l| l.licensor.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let co_licences_text = if co_records.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&co_records).map_err(corrupt)?
        };
        let inserted = conn
            .prepare_cached(
                "INSERT INTO jobs (job_id, licence_id, scene, user_id, mode, state, count_state, request_json, \
                 reasons_json, created_at_ms, updated_at_ms, finished_at_ms, buyer_party, provider_party, output_name, \
                 request_id, protocol, mpc_triples, co_licences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT(job_id) DO NOTHING",
            )?
            .execute(params![
                &job.job_id,
                &job.licence_id,
                &job.scene,
                &job.user,
                job.mode.as_str(),
                state.as_str(),
                count_state.as_str(),
                job.request.to_string(),
                &reasons_json,
                job.now_ms,
                job.now_ms,
                if allowed { None } else { Some(job.now_ms) },
                &job.buyer_party,
                &job.provider_party,
                output_name,
                &request_id,
                job.protocol.as_str(),
                decision.mpc_triples.map_or("", MpcTriples::as_str),
                &co_licences_text,
            ])?;
        if inserted == 0 {
            return Err(StoreError::Conflict {
                kind: "job",
                id: job.job_id.clone(),
            });
        }
        if allowed {
            for h in &decision.holds {
                ledger::apply(conn, &LedgerOp::Hold(h.clone()), job.now_ms)?;
            }
            for t in &decision.tasks {
                conn.prepare_cached(
                    "INSERT INTO tasks (task_id, job_id, worker_id, party, role, state, spec_json, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?, 'dispatched', ?, ?)",
                )?
                .execute(params![
                    &t.task_id,
                    &job.job_id,
                    &t.worker_id,
                    &t.party,
                    t.role.as_str(),
                    &t.spec_json,
                    job.now_ms,
                ])?;
            }
        }
        audit::append(
            conn,
            job.now_ms,
            if allowed { "admit" } else { "refuse" },
            &job.job_id,
            &serde_json::json!({
                "licence_id": job.licence_id, "scene": job.scene, "user": job.user,
                "request_id": request_id, "reasons": reason_texts, "detail": decision.detail,
                // The job row's other fields as written, so `audit verify` re-derives it.
                "mode": job.mode.as_str(), "protocol": job.protocol.as_str(),
                "mpc_triples": decision.mpc_triples.map_or("", MpcTriples::as_str),
                "buyer_party": job.buyer_party,
                "provider_party": job.provider_party, "output_name": output_name,
                "co_licences": co_licences_text,
                "holds": decision.holds.iter().map(|h| serde_json::json!({
                    "transfer_id": h.id, "account": h.debit, "amount_micros": h.amount_micros,
                })).collect::<Vec<_>>(),
                "tasks": decision.tasks.iter().map(|t| serde_json::json!({
                    "task_id": t.task_id, "worker_id": t.worker_id, "party": t.party, "role": t.role,
                })).collect::<Vec<_>>(),
            }),
        )?;
        let record = load_job(conn, &job.job_id)?;
        Ok(Some(if allowed {
            // What was just written, without reading it back.
            let mut tasks: Vec<TaskRecord> = decision
                .tasks
                .iter()
                .map(|t| TaskRecord {
                    task_id: t.task_id.clone(),
                    job_id: job.job_id.clone(),
                    worker_id: t.worker_id.clone(),
                    party: t.party.clone(),
                    role: t.role,
                    state: TaskState::Dispatched,
                    spec_json: t.spec_json.clone(),
                })
                .collect();
            tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            let holds = decision
                .holds
                .iter()
                .filter(|h| h.job_id.as_deref() == Some(job.job_id.as_str()))
                .map(|h| crate::HoldRecord {
                    transfer_id: h.id.clone(),
                    debit: h.debit.clone(),
                    credit: h.credit.clone(),
                    amount_micros: h.amount_micros,
                })
                .collect();
            AdmitOutcome::Admitted {
                job: record,
                tasks,
                holds,
            }
        } else {
            AdmitOutcome::Refused {
                job: record,
                refusals: reasons,
            }
        }))
    }
}

impl Store {
    /// Records a job's delivery milestone durably, once, with its audit entry: the engine's
    /// delivery point was reported with the provider's `rows`. The job is `running` from then
    /// on (a worker is at work; dispatch itself writes nothing). Returns `true` when recorded
    /// now, `false` when the job had already been marked delivered or has ended (nothing
    /// changes then). Group-committed (`writer`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown job; [`StoreError::Invalid`] for rows beyond
    /// `i64`; [`StoreError::NotCommitted`]; the database's.
    pub async fn mark_delivered(
        &self,
        job_id: &str,
        rows: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let job_id = job_id.to_string();
        self.write(move |conn| deliver_in(conn, &job_id, rows, now_ms))
            .await
    }

    /// Records one task's report (its state, failure, usage and result size) and, for a
    /// sender that finished, the job's delivery milestone (a finished sender has passed its
    /// delivery point even if its milestone report was lost), in one write of the group
    /// commit.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown task or job; [`StoreError::NotCommitted`]; the
    /// database's.
    pub async fn record_task_report(
        &self,
        job_id: &str,
        task_id: &str,
        update: TaskUpdate,
        delivered_rows: Option<u64>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (job_id, task_id) = (job_id.to_string(), task_id.to_string());
        self.write(move |conn| {
            update_task_in(conn, &task_id, &update, now_ms)?;
            if let Some(rows) = delivered_rows {
                deliver_in(conn, &job_id, rows, now_ms)?;
            }
            Ok(())
        })
        .await
    }

    /// Ends a job exactly once: sets its final state, commits or releases its count, records
    /// usage and posts the charge, all in one transaction with their audit entries. A second
    /// call for an ended job changes nothing and returns `transitioned: false`.
    pub async fn finish_job(
        &self,
        job_id: &str,
        finish: &JobFinish,
        now_ms: i64,
    ) -> Result<FinishOutcome, StoreError> {
        let (job_id, finish, zone) = (job_id.to_string(), finish.clone(), self.zone.clone());
        self.write(move |conn| finish_in(conn, &job_id, &finish, now_ms, &zone))
            .await
    }
}

/// Ends a job on `conn` (see [`Store::finish_job`]).
fn finish_in(
    conn: &Connection,
    job_id: &str,
    finish: &JobFinish,
    now_ms: i64,
    zone: &tessera_core::civil::Zone,
) -> Result<FinishOutcome, StoreError> {
    {
        let job = load_job(conn, job_id)?;
        if job.is_terminal() {
            return Ok(FinishOutcome {
                transitioned: false,
                job,
            });
        }
        let (state, consume, error) = match finish {
            JobFinish::Succeeded { .. } => (JobState::Succeeded, true, String::new()),
            JobFinish::Failed { .. } | JobFinish::Cancelled { .. }
                if job.delivered_at_ms.is_some() =>
            {
                // Past its delivery point a job may only end charged; the caller re-decides.
                return Err(StoreError::Delivered {
                    job_id: job_id.to_string(),
                });
            }
            JobFinish::Failed {
                error, buyer_fault, ..
            } => (JobState::Failed, *buyer_fault, error.clone()),
            JobFinish::Cancelled { reason } => (JobState::Cancelled, true, reason.clone()),
            JobFinish::EndedAfterDelivery { state, error, .. } => {
                if !matches!(state, JobState::Failed | JobState::Cancelled) {
                    return Err(StoreError::Invalid {
                        field: "state",
                        reason: format!(
                            "a job ends after delivery failed or cancelled, not {state}"
                        ),
                    });
                }
                (*state, true, error.clone())
            }
        };
        let count_state = if consume {
            CountState::Committed
        } else {
            CountState::Released
        };
        for id in
            std::iter::once(&job.licence_id).chain(job.co_licences.iter().map(|c| &c.licence_id))
        {
            settle_count(conn, id, &job.scene, consume)?;
        }
        let (result_file, provider_file, empty_keys, origin) = match finish {
            JobFinish::Succeeded {
                result_file,
                provider_result_file,
                empty_keys,
                ..
            } => (
                result_file.as_ref(),
                provider_result_file.as_ref(),
                *empty_keys,
                None,
            ),
            JobFinish::Failed { origin, .. } => {
                (None, None, EmptyKeyCounts::default(), origin.as_ref())
            }
            JobFinish::Cancelled { .. } => (None, None, EmptyKeyCounts::default(), None),
            JobFinish::EndedAfterDelivery { origin, .. } => {
                (None, None, EmptyKeyCounts::default(), origin.as_ref())
            }
        };
        let (result_size, result_location, charge) = match finish {
            JobFinish::Succeeded {
                result_size,
                result_location,
                usage,
                ledger: ops,
                bill_lines,
                charge_micros,
                ..
            } => {
                insert_usages(conn, usage, now_ms)?;
                for op in ops {
                    ledger::apply(conn, op, now_ms)?;
                }
                for line in bill_lines {
                    add_line(conn, line, now_ms, zone)?;
                }
                (
                    Some(i64::try_from(*result_size).unwrap_or(i64::MAX)),
                    result_location.clone(),
                    *charge_micros,
                )
            }
            JobFinish::EndedAfterDelivery {
                usage,
                ledger: ops,
                bill_lines,
                charge_micros,
                ..
            } => {
                insert_usages(conn, usage, now_ms)?;
                for op in ops {
                    ledger::apply(conn, op, now_ms)?;
                }
                for line in bill_lines {
                    add_line(conn, line, now_ms, zone)?;
                }
                (None, String::new(), *charge_micros)
            }
            _ => (None, String::new(), 0),
        };
        // No hold outlives its job: whatever the outcome did not post is released.
        let open = ledger::open_holds(conn, job_id)?;
        for op in settle::release_holds(&open) {
            ledger::apply(conn, &op, now_ms)?;
        }
        conn.prepare_cached(
            "UPDATE jobs SET state = ?, count_state = ?, error = ?, result_size = ?, result_location = ?, \
             charge_micros = ?, updated_at_ms = ?, finished_at_ms = ?, result_bytes = ?, result_rows = ?, \
             result_sha256 = ?, buyer_empty_keys = ?, provider_empty_keys = ?, error_role = ?, \
             error_party = ?, error_kind = ?, provider_result_location = ?, provider_result_bytes = ?, \
             provider_result_rows = ?, provider_result_sha256 = ? WHERE job_id = ?",
        )?
        .execute(params![
            state.as_str(),
            count_state.as_str(),
            &error,
            result_size,
            &result_location,
            charge,
            now_ms,
            now_ms,
            result_file.map(|f| count_i64(f.bytes)),
            result_file.map(|f| count_i64(f.rows)),
            result_file.map_or("", |f| f.sha256_hex.as_str()),
            empty_keys.buyer.map(count_i64),
            empty_keys.provider.map(count_i64),
            origin.map_or("", |o| o.role.as_str()),
            origin.map_or("", |o| o.party.as_str()),
            origin.map_or("", |o| o.kind.as_str()),
            provider_file.map_or("", |f| f.name.as_str()),
            provider_file.map(|f| count_i64(f.bytes)),
            provider_file.map(|f| count_i64(f.rows)),
            provider_file.map_or("", |f| f.sha256_hex.as_str()),
            job_id,
        ])?;
        audit::append(
            conn,
            now_ms,
            "complete",
            job_id,
            &serde_json::json!({
                "state": state.as_str(), "count": count_state.as_str(), "error": error,
                "result_size": result_size, "result_location": result_location,
                "charge_micros": charge, "delivered_at_ms": job.delivered_at_ms,
                "result_file": result_file, "provider_result_file": provider_file,
                "failure": origin,
                "empty_keys": {"buyer": empty_keys.buyer, "provider": empty_keys.provider},
            }),
        )?;
        let job = load_job(conn, job_id)?;
        Ok(FinishOutcome {
            transitioned: true,
            job,
        })
    }
}

/// Reserves one count of `scene` on `licence_id` (the WHERE clause makes exhaustion
/// impossible to miss); whether it could.
fn reserve_count(conn: &Connection, licence_id: &str, scene: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE licence_scenes SET remaining = CASE WHEN remaining IS NULL THEN NULL ELSE remaining - 1 END, \
             reserved = reserved + 1 \
             WHERE licence_id = ? AND scene = ? AND (remaining IS NULL OR remaining > 0)",
        )?
        .execute(params![licence_id, scene])?;
    Ok(n == 1)
}

/// Ends one reserved count of `scene` on `licence_id`: used (`consume`) or given back.
fn settle_count(
    conn: &Connection,
    licence_id: &str,
    scene: &str,
    consume: bool,
) -> Result<(), StoreError> {
    let update = if consume {
        "UPDATE licence_scenes SET reserved = reserved - 1, used = used + 1 WHERE licence_id = ? AND scene = ?"
    } else {
        "UPDATE licence_scenes SET reserved = reserved - 1, \
         remaining = CASE WHEN remaining IS NULL THEN NULL ELSE remaining + 1 END WHERE licence_id = ? AND scene = ?"
    };
    conn.prepare_cached(update)?
        .execute(params![licence_id, scene])?;
    Ok(())
}

/// Records a job's delivery milestone on `conn` (see [`Store::mark_delivered`]).
fn deliver_in(conn: &Connection, job_id: &str, rows: u64, now_ms: i64) -> Result<bool, StoreError> {
    let rows_i64 = i64::try_from(rows).map_err(|_| StoreError::Invalid {
        field: "rows_in",
        reason: format!("{rows} is out of range"),
    })?;
    load_job(conn, job_id)?;
    let n = conn
        .prepare_cached(
            "UPDATE jobs SET delivered_at_ms = ?, delivered_rows = ?, updated_at_ms = ?, \
             state = 'running' WHERE job_id = ? AND delivered_at_ms IS NULL \
             AND state IN ('admitted', 'running')",
        )?
        .execute(params![now_ms, rows_i64, now_ms, job_id])?;
    let recorded = n == 1;
    if recorded {
        audit::append(
            conn,
            now_ms,
            "deliver",
            job_id,
            &serde_json::json!({ "delivered_rows": rows, "state": "running" }),
        )?;
    }
    Ok(recorded)
}

/// Records one task's report on `conn`.
fn update_task_in(
    conn: &Connection,
    task_id: &str,
    u: &TaskUpdate,
    now_ms: i64,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?, error_kind = ?, error = ?, usage_json = ?, result_size = ?, \
             updated_at_ms = ? WHERE task_id = ?",
        )?
        .execute(params![
            u.state.as_str(),
            &u.error_kind,
            &u.error,
            u.usage.as_ref().map(ToString::to_string),
            u.result_size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            now_ms,
            task_id,
        ])?;
    if n == 0 {
        return Err(StoreError::NotFound {
            kind: "task",
            id: task_id.into(),
        });
    }
    Ok(())
}

impl Store {
    /// Records usage events on their own (e.g. a late report). An event whose id exists with
    /// every field equal (job, party, metric, attempt, quantity and event time) changes
    /// nothing; the same id with any field different is
    /// [`StoreError::IdempotencyMismatch`].
    pub async fn record_usage(
        &self,
        events: &[UsageEventRecord],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let events = events.to_vec();
        self.write(move |conn| {
            insert_usages(conn, &events, now_ms)?;
            Ok(())
        })
        .await
    }

    /// Records a group of usage events once, all or nothing: `Created` when none existed,
    /// `Exists` when every one exists with every field equal (a replay: nothing changes).
    ///
    /// # Errors
    /// [`StoreError::IdempotencyMismatch`] when any id exists with any field different (or
    /// only some of the group exist); nothing is written then.
    pub async fn record_usage_once(
        &self,
        events: &[UsageEventRecord],
        now_ms: i64,
    ) -> Result<TransferOutcome, StoreError> {
        let events = events.to_vec();
        self.write(move |conn| {
            let created = insert_usages(conn, &events, now_ms)?
                .iter()
                .filter(|o| **o == TransferOutcome::Created)
                .count();
            match created {
                0 => Ok(TransferOutcome::Exists),
                n if n == events.len() => Ok(TransferOutcome::Created),
                _ => Err(StoreError::IdempotencyMismatch {
                    kind: "usage event",
                    id: events
                        .iter()
                        .map(|e| e.event_id.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                }),
            }
        })
        .await
    }

    /// Reads a job.
    pub async fn job(&self, job_id: &str) -> Result<JobRecord, StoreError> {
        self.read(|conn| load_job(conn, job_id))
    }

    /// Jobs that are admitted or running (for recovery after a restart).
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('admitted', 'running') ORDER BY created_at_ms"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(job_from_row(r)?);
            }
            Ok(out)
        })
    }

    /// A job's tasks.
    pub async fn tasks(&self, job_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT task_id, job_id, worker_id, party, role, state, spec_json FROM tasks WHERE job_id = ? ORDER BY task_id",
            )?;
            let mut rows = stmt.query(params![job_id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(TaskRecord {
                    task_id: r.get(0)?,
                    job_id: r.get(1)?,
                    worker_id: r.get(2)?,
                    party: r.get(3)?,
                    role: parse_col(r, 4)?,
                    state: parse_col(r, 5)?,
                    spec_json: r.get(6)?,
                });
            }
            Ok(out)
        })
    }

    /// All usage events in arrival order.
    pub async fn usage_events(&self) -> Result<Vec<UsageEventRecord>, StoreError> {
        self.usage_events_of("").await
    }

    /// The usage events user `viewer` may see — those measured by the workers of the parties
    /// it owns — in arrival order; `""`: every event.
    ///
    /// # Errors
    /// `Db`; `Corrupt` for a row that does not read.
    pub async fn usage_events_of(&self, viewer: &str) -> Result<Vec<UsageEventRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT event_id, job_id, party, metric, attempt, quantity, event_time_ms, protocol \
                 FROM usage_events WHERE ?1 = '' \
                 OR party IN (SELECT party_id FROM parties WHERE owner_user_id = ?1) ORDER BY rowid",
            )?;
            let mut rows = stmt.query(params![viewer])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(UsageEventRecord {
                    event_id: r.get(0)?,
                    job_id: r.get(1)?,
                    party: r.get(2)?,
                    metric: r.get(3)?,
                    attempt: r.get(4)?,
                    quantity: r.get(5)?,
                    event_time_ms: r.get(6)?,
                    protocol: r.get(7)?,
                });
            }
            Ok(out)
        })
    }

    /// The remaining count of a licence scene (`None`: unlimited).
    pub async fn remaining_count(
        &self,
        licence_id: &str,
        scene: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            let v: Option<i64> = conn
                .prepare_cached(
                    "SELECT remaining FROM licence_scenes WHERE licence_id = ? AND scene = ?",
                )?
                .query_row(params![licence_id, scene], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "licence scene",
                    id: format!("{licence_id}/{scene}"),
                })?;
            v.map(stored_u64).transpose()
        })
    }
}

/// Usage events inserted per statement (9 parameters each, far below SQLite's limit).
const USAGE_ROWS_PER_INSERT: usize = 64;

/// Records usage events, each once, in one multi-row statement per
/// [`USAGE_ROWS_PER_INSERT`] (a job's end carries 14): `Created` for each new event, `Exists`
/// for one recorded before with every field equal (an earlier one of the same call
/// included).
///
/// # Errors
/// [`StoreError::IdempotencyMismatch`] for an id recorded with any field different.
fn insert_usages(
    conn: &Connection,
    events: &[UsageEventRecord],
    now_ms: i64,
) -> Result<Vec<TransferOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(events.len());
    for chunk in events.chunks(USAGE_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO usage_events (event_id, job_id, party, metric, attempt, quantity, \
             event_time_ms, arrival_time_ms, protocol) VALUES {} \
             ON CONFLICT(event_id) DO NOTHING RETURNING event_id",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 9);
        for e in chunk {
            values.extend([
                &e.event_id as &dyn ToSql,
                &e.job_id,
                &e.party,
                &e.metric,
                &e.attempt,
                &e.quantity,
                &e.event_time_ms,
                &now_ms,
                &e.protocol,
            ]);
        }
        let inserted = {
            // At most `USAGE_ROWS_PER_INSERT` texts (one per row count): kept in the cache.
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(values.as_slice())?;
            let mut inserted = std::collections::HashSet::new();
            while let Some(r) = rows.next()? {
                inserted.insert(r.get::<_, String>(0)?);
            }
            inserted
        };
        let mut seen = std::collections::HashSet::new();
        for e in chunk {
            // The first of an id inserted now is new; any other is checked against it.
            if inserted.contains(&e.event_id) && seen.insert(e.event_id.as_str()) {
                outcomes.push(TransferOutcome::Created);
            } else {
                outcomes.push(existing_usage(conn, e)?);
            }
        }
    }
    Ok(outcomes)
}

/// `Exists` when `e` was recorded with every field equal, else the mismatch.
fn existing_usage(conn: &Connection, e: &UsageEventRecord) -> Result<TransferOutcome, StoreError> {
    let (job_id, party, metric, attempt, quantity, event_time_ms, protocol): (
        String,
        String,
        String,
        i64,
        i64,
        i64,
        String,
    ) = conn
        .prepare_cached(
            "SELECT job_id, party, metric, attempt, quantity, event_time_ms, protocol FROM usage_events \
             WHERE event_id = ?",
        )?
        .query_row(params![&e.event_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?;
    let same = job_id == e.job_id
        && party == e.party
        && metric == e.metric
        && attempt == e.attempt
        && quantity == e.quantity
        && event_time_ms == e.event_time_ms
        && protocol == e.protocol;
    if !same {
        return Err(StoreError::IdempotencyMismatch {
            kind: "usage event",
            id: e.event_id.clone(),
        });
    }
    Ok(TransferOutcome::Exists)
}
