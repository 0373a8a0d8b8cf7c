//! Submission, dispatch, reports from workers, completion and cancellation.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_accounting::derive_id;
use tessera_accounting::settle::{self, FinishedJob, SettleError};
use tessera_core::ticket::{TicketBody, task_digest};
use tessera_core::{
    EmptyKeys, JobState, KeyCase, PsiMode, PsiProtocol, TaskErrorKind, TaskRole, TaskSpec,
    TaskState, UnicodeForm,
};
use tessera_policy::{Constraint, Request, evaluate, worker_fits};
use tessera_store::{
    AdmitContext, AdmitOutcome, Decision, EmptyKeyCounts, FailureOrigin, JobFinish, LicenceRecord,
    NewJob, NewTask, Refusal, ResultFileRecord, TaskUpdate, UsageEventRecord,
};
use tokio::sync::mpsc;

use crate::{Delivery, JobView, LiveJob, PhaseProgress, Scheduler, SchedulerError};

mod fl;
pub use fl::{FL_FEATURES_MAX, FL_PROVIDERS_MAX, FL_ROUNDS_MAX, FL_ROWS_MAX_DEFAULT, FlRequest};

/// Scenes this build can run.
pub const SUPPORTED_SCENES: &[&str] = tessera_core::job::scene::SUPPORTED;

/// How long before an end that could not be recorded is tried again.
pub(crate) const UNENDED_RETRY_MS: i64 = 5_000;

/// A buyer's job request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Submitting user.
    pub user: String,
    /// Groups the user belongs to.
    pub user_groups: Vec<String>,
    /// Licence to run under.
    pub licence_id: String,
    /// Scene, e.g. `psi`.
    pub scene: String,
    /// The buyer's party.
    pub buyer_party: String,
    /// The buyer's own dataset.
    pub buyer_dataset_id: String,
    /// Key columns in the buyer's dataset.
    pub buyer_columns: Vec<String>,
    /// Key columns in the provider's dataset.
    pub provider_columns: Vec<String>,
    /// What the buyer learns.
    pub mode: PsiMode,
    /// The PSI protocol asked for; `None`: [`PsiProtocol::default_for`] the mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PsiProtocol>,
    /// Key case normalisation on both sides.
    pub key_case: KeyCase,
    /// Output file name on the buyer's worker.
    pub output: String,
    /// The client's idempotency key: the same user and key return the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Unicode normalisation form of keys on both sides.
    #[serde(default)]
    pub unicode_form: UnicodeForm,
    /// What rows with an empty key do, on both sides.
    #[serde(default)]
    pub empty_keys: EmptyKeys,
    /// Further columns of the buyer's own dataset written next to its key columns in the
    /// result (intersection mode with an output only).
    #[serde(default)]
    pub carry_columns: Vec<String>,
    /// A `preview` job's rows of the provider's dataset (1-based, inclusive); `None`: the
    /// whole window the licence allows. The columns are `provider_columns` (empty: those the
    /// window allows, or all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_rows: Option<(u64, u64)>,
    /// An `mpc` job's computation: a statistics query over the declared columns of both
    /// parties' rows, aligned by a PSI on the key columns first (`buyer_columns` /
    /// `provider_columns`, in intersection mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpc: Option<tessera_core::MpcQuery>,
    /// A join's shape (a `tee` job that computes no query: a PSI with the provider's payload
    /// columns inside the enclave); `None`: no join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<tessera_core::JoinKind>,
    /// The provider's columns a join writes for the buyer's matched rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_columns: Vec<String>,
    /// An `mpc` job's triples; `None`: dealer-free (`ot`) if the licence's scene allows it,
    /// else the dealer ([`resolve_triples`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpc_triples: Option<tessera_core::MpcTriples>,
    /// An `fl` job's training: the providers' licences, model, columns and settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fl: Option<FlRequest>,
}

/// Fractional bits of the fixed-point encoding an `mpc` job runs with.
pub const MPC_FRACTION_BITS: u32 = 16;

/// The triples an `mpc` job runs with: the one it asked for, else dealer-free (`ot`) when the
/// scene allows it (no third party trusted), else the operator's dealer when the scene allows
/// that; a scene that allows neither refuses the job (through its `protocols` check).
pub fn resolve_triples(
    asked: Option<tessera_core::MpcTriples>,
    scene: Option<&tessera_policy::UseScene>,
) -> tessera_core::MpcTriples {
    use tessera_core::MpcTriples;
    asked.unwrap_or_else(|| match scene {
        Some(s)
            if !s.protocols.allows(MpcTriples::Ot.as_str())
                && s.protocols.allows(MpcTriples::Dealer.as_str()) =>
        {
            MpcTriples::Dealer
        }
        _ => MpcTriples::Ot,
    })
}

/// Usage measured by a worker for one task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// CPU time.
    pub cpu_ms: u64,
    /// Wall time.
    pub wall_ms: u64,
    /// Rows read.
    pub rows_in: u64,
    /// Bytes sent to the peer.
    pub bytes_sent: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Frames sent (protocol messages).
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Peak resident memory of the worker process.
    pub peak_rss_kb: u64,
    /// Correlations an MPC task drew (Beaver triples, AND triples, matrix-triple elements).
    #[serde(default)]
    pub triples: u64,
    /// An `fl` job's aggregator: sampled providers whose update was not in a round's sum,
    /// summed over the rounds.
    #[serde(default)]
    pub dropouts: u64,
    /// The same per round (round `r` at index `r − 1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_dropouts: Vec<u32>,
}

/// A worker's final report on a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Whether it succeeded.
    pub ok: bool,
    /// Why it failed (`None` when it succeeded).
    pub error_kind: Option<TaskErrorKind>,
    /// Failure text.
    pub error: String,
    /// Usage.
    pub usage: TaskUsage,
    /// Result size (receiver).
    pub result_size: Option<u64>,
    /// Result location (receiver).
    pub result_location: String,
    /// The result file written, with its size, rows and SHA-256 (receiver).
    #[serde(default)]
    pub result_file: Option<ResultFileRecord>,
    /// Rows of the party's dataset left out because their key was empty.
    #[serde(default)]
    pub empty_keys: u64,
}

const COLUMNS_MAX: usize = 16;

use crate::validate::{field as check_field, file_name};

impl JobRequest {
    /// Shape checks that need no store.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        check_field("user", &self.user, true)?;
        if self.user.contains(':') {
            return Err(SchedulerError::Invalid(
                "user must not contain ':' (the account-name separator)".into(),
            ));
        }
        check_field("licence_id", &self.licence_id, true)?;
        check_field("buyer_party", &self.buyer_party, true)?;
        if !SUPPORTED_SCENES.contains(&self.scene.as_str()) {
            return Err(SchedulerError::Invalid(format!(
                "scene {:?} is not supported (supported: {SUPPORTED_SCENES:?})",
                self.scene
            )));
        }
        for g in &self.user_groups {
            check_field("user_groups", g, true)?;
        }
        if let Some(id) = &self.request_id {
            check_field("request_id", id, true)?;
        }
        if self.is_fl() {
            return self.validate_fl();
        }
        if self.fl.is_some() {
            return Err(SchedulerError::Invalid(format!(
                "fl: a {} job trains no federated model",
                self.scene
            )));
        }
        if self.is_preview() {
            return self.validate_preview();
        }
        if self.preview_rows.is_some() {
            return Err(SchedulerError::Invalid(
                "preview_rows: only a preview job shows rows".into(),
            ));
        }
        if self.join.is_some()
            || !self.payload_columns.is_empty()
            || self.scene == tessera_core::job::scene::PSI_PAYLOAD
        {
            self.validate_join()?;
        }
        if self.mpc_triples.is_some() && !self.is_mpc() {
            return Err(SchedulerError::Invalid(
                "mpc_triples: only an mpc job draws triples".into(),
            ));
        }
        match (&self.mpc, self.is_query()) {
            (Some(q), true) => self.validate_mpc(q)?,
            (None, true) => {
                return Err(SchedulerError::Invalid(if self.is_tee() {
                    "query: a tee job computes a statistics query (mpc_query and the columns it \
                     reads) or a join (join, payload_columns)"
                        .to_string()
                } else {
                    "query: an mpc job needs its query and the columns it reads".to_string()
                }));
            }
            (Some(_), false) => {
                return Err(SchedulerError::Invalid(
                    "query: only an mpc or a tee job computes a query, and a tee job computes \
                     a query or a join, not both"
                        .into(),
                ));
            }
            (None, false) => {}
        }
        check_field("buyer_dataset_id", &self.buyer_dataset_id, true)?;
        file_name("output", &self.output, false)?;
        if self.mode == PsiMode::Size && !self.output.is_empty() {
            return Err(SchedulerError::Invalid(
                "output: size mode writes no result file (the buyer learns only the size); \
                 drop the output name or use intersection mode"
                    .into(),
            ));
        }
        if !self.protocol().supports(self.mode) {
            let why = match self.protocol() {
                PsiProtocol::EcdhOprf => "it runs in intersection mode only",
                _ => "its receiver learns which keys are common",
            };
            return Err(SchedulerError::Invalid(format!(
                "protocol: {} cannot run in {} mode ({why}); use ecdh or leave the protocol unset",
                self.protocol(),
                self.mode
            )));
        }
        for (name, cols) in [
            ("buyer_columns", &self.buyer_columns),
            ("provider_columns", &self.provider_columns),
        ] {
            if cols.is_empty() || cols.len() > COLUMNS_MAX {
                return Err(SchedulerError::Invalid(format!(
                    "{name} must name 1 to {COLUMNS_MAX} columns"
                )));
            }
            for c in cols {
                check_field(name, c, true)?;
            }
        }
        if self.buyer_columns.len() != self.provider_columns.len() {
            return Err(SchedulerError::Invalid(
                "buyer_columns and provider_columns must have the same length".into(),
            ));
        }
        self.validate_carry()
    }

    /// Whether this is an `mpc` job.
    pub fn is_mpc(&self) -> bool {
        self.scene == tessera_core::job::scene::MPC
    }

    /// Whether this is a `tee` job.
    pub fn is_tee(&self) -> bool {
        self.scene == tessera_core::job::scene::TEE
    }

    /// Whether the job computes a statistics query (`mpc` jobs, and `tee` jobs that run no
    /// join).
    pub fn is_query(&self) -> bool {
        self.is_mpc() || (self.is_tee() && self.join.is_none())
    }

    /// A join runs in a `tee` job only (the `psi_payload` scene has no engine yet): it needs
    /// its shape, an output, intersection mode and no PSI protocol (it joins inside the
    /// enclave); its payload columns are named once each, at most
    /// [`tessera_policy::PAYLOAD_COLUMNS_MAX`], none for a difference, and none may share a
    /// name with the buyer's key or carried columns (or `matched`, the flag of a left join):
    /// the result's header names every column once.
    fn validate_join(&self) -> Result<(), SchedulerError> {
        let bad = |m: String| Err(SchedulerError::Invalid(m));
        let payload_scene = self.scene == tessera_core::job::scene::PSI_PAYLOAD;
        if !self.is_tee() && !payload_scene {
            return bad(format!(
                "join: a {} job runs no join (joins with the provider's payload columns run in \
                 psi_payload and tee jobs)",
                self.scene
            ));
        }
        let Some(kind) = self.join else {
            return bad("payload_columns: name the join (inner, left or difference)".into());
        };
        if self.mpc.is_some() {
            return bad(
                "join: a tee job computes a query or a join, not both (drop mpc_query or join)"
                    .into(),
            );
        }
        if self.mode != PsiMode::Intersection {
            return bad("mode: a join runs in intersection mode".into());
        }
        match (payload_scene, self.protocol) {
            (false, Some(_)) => {
                return bad(
                    "protocol: a tee job joins the rows inside the enclave; name no PSI protocol"
                        .into(),
                );
            }
            (true, Some(p)) if p != PsiProtocol::Rr22 => {
                return bad(format!(
                    "protocol: a psi_payload job runs rr22 (PSI with payload), not {p}"
                ));
            }
            _ => {}
        }
        if self.output.is_empty() {
            return bad(
                "output: a join writes its result to a file in the buyer worker's output \
                 directory; name it (--output)"
                    .into(),
            );
        }
        file_name("output", &self.output, true)?;
        if kind == tessera_core::JoinKind::Difference && !self.payload_columns.is_empty() {
            return bad(
                "payload_columns: a difference keeps the buyer's rows the provider does not \
                 have; no provider column can be written with them"
                    .into(),
            );
        }
        if self.payload_columns.len() > tessera_policy::PAYLOAD_COLUMNS_MAX {
            return bad(format!(
                "payload_columns must name at most {} columns",
                tessera_policy::PAYLOAD_COLUMNS_MAX
            ));
        }
        if kind == tessera_core::JoinKind::Left
            && let Some(c) = self
                .buyer_columns
                .iter()
                .chain(&self.carry_columns)
                .find(|c| c.as_str() == tessera_core::JOIN_MATCHED_COLUMN)
        {
            return bad(format!(
                "a left join adds a {:?} column to the result, and the buyer's column {c:?} has \
                 that name (the result's header names each column once; carry or key it under \
                 another name, or use an inner join)",
                tessera_core::JOIN_MATCHED_COLUMN
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for c in &self.payload_columns {
            if c.trim().is_empty() {
                return bad(
                    "payload_columns: an empty column name (a stray comma in --payload?)".into(),
                );
            }
            if c.trim() != c {
                return bad(format!(
                    "payload_columns: {c:?} has surrounding spaces; name the column exactly"
                ));
            }
            check_field("payload_columns", c, true)?;
            if seen.contains(&c.as_str()) {
                return bad(format!("payload column {c:?} is named twice"));
            }
            if self.buyer_columns.contains(c) || self.carry_columns.contains(c) {
                return bad(format!(
                    "payload column {c:?} has the name of one of the buyer's key or carried \
                     columns (the result's header names each column once)"
                ));
            }
            if kind == tessera_core::JoinKind::Left && c == tessera_core::JOIN_MATCHED_COLUMN {
                return bad(format!(
                    "payload column {c:?} has the name of the matched flag a left join adds"
                ));
            }
            seen.push(c);
        }
        Ok(())
    }

    /// An `mpc` (or `tee`) job aligns the two datasets on their keys (by a PSI in
    /// intersection mode; inside the enclave for `tee`) and writes its result to `output`; it
    /// carries no columns into the result (only the query's outputs leave), and its query
    /// must parse and check against its declared columns.
    fn validate_mpc(&self, q: &tessera_core::MpcQuery) -> Result<(), SchedulerError> {
        if self.mode != PsiMode::Intersection {
            return Err(SchedulerError::Invalid(format!(
                "mode: a{} {} job aligns the two datasets on their keys (intersection mode)",
                if self.is_mpc() { "n" } else { "" },
                self.scene
            )));
        }
        file_name("output", &self.output, true)?;
        if !self.carry_columns.is_empty() {
            return Err(SchedulerError::Invalid(format!(
                "carry_columns: a query writes only its outputs (carried columns go with a {} \
                 join)",
                tessera_core::job::scene::TEE
            )));
        }
        if self.is_tee() && self.protocol.is_some() {
            return Err(SchedulerError::Invalid(
                "protocol: a tee job aligns the rows inside the enclave; name no PSI protocol"
                    .into(),
            ));
        }
        let fx = tessera_mpc::FixedPoint::new(MPC_FRACTION_BITS)
            .map_err(|e| SchedulerError::Invalid(format!("query: {e}")))?;
        plan_for(self, q, &Default::default(), fx)
            .map_err(|e| SchedulerError::Invalid(format!("query: {e}")))?;
        Ok(())
    }

    /// Whether this is a `preview` job.
    pub fn is_preview(&self) -> bool {
        self.scene == tessera_core::job::scene::PREVIEW
    }

    /// A preview names no dataset, key or carried column and no protocol of its own (the
    /// buyer receives rows of the licensed dataset); it needs an output name, and its rows,
    /// if given, are `[first, last]` from 1.
    fn validate_preview(&self) -> Result<(), SchedulerError> {
        for (name, empty) in [
            ("buyer_dataset_id", self.buyer_dataset_id.is_empty()),
            ("buyer_columns", self.buyer_columns.is_empty()),
            ("carry_columns", self.carry_columns.is_empty()),
            ("protocol", self.protocol.is_none()),
        ] {
            if !empty {
                return Err(SchedulerError::Invalid(format!(
                    "{name}: a preview job shows rows of the licensed dataset and takes no {name}"
                )));
            }
        }
        if self.mode != PsiMode::Intersection {
            return Err(SchedulerError::Invalid(
                "mode: a preview job has no PSI mode".into(),
            ));
        }
        file_name("output", &self.output, true)?;
        if self.provider_columns.len() > tessera_policy::PREVIEW_COLUMNS_MAX {
            return Err(SchedulerError::Invalid(format!(
                "provider_columns: a preview shows at most {} columns",
                tessera_policy::PREVIEW_COLUMNS_MAX
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.provider_columns {
            check_field("provider_columns", c, true)?;
            if !seen.insert(c) {
                return Err(SchedulerError::Invalid(format!(
                    "provider_columns: {c:?} is named twice"
                )));
            }
        }
        if let Some((first, last)) = self.preview_rows
            && (first == 0 || last < first)
        {
            return Err(SchedulerError::Invalid(format!(
                "preview_rows: {first}-{last} is not a range of rows numbered from 1"
            )));
        }
        Ok(())
    }
}

impl JobRequest {
    /// The protocol the job runs: the one asked for, or the mode's default.
    pub fn protocol(&self) -> PsiProtocol {
        self.protocol
            .unwrap_or_else(|| PsiProtocol::default_for(self.mode))
    }

    /// Carried columns: only with a result to write, at most [`COLUMNS_MAX`], each named once
    /// and none a key column (the result's header names every column once).
    fn validate_carry(&self) -> Result<(), SchedulerError> {
        if self.carry_columns.is_empty() {
            return Ok(());
        }
        if self.output.is_empty() || !self.mode.reveals_keys() {
            return Err(SchedulerError::Invalid(
                "carry_columns need an output in intersection or both mode".into(),
            ));
        }
        if self.carry_columns.len() > COLUMNS_MAX {
            return Err(SchedulerError::Invalid(format!(
                "carry_columns must name at most {COLUMNS_MAX} columns"
            )));
        }
        let mut seen: Vec<&String> = self.buyer_columns.iter().collect();
        for c in &self.carry_columns {
            check_field("carry_columns", c, true)?;
            if seen.contains(&c) {
                return Err(SchedulerError::Invalid(format!(
                    "carry column {c:?} is named twice or is a key column"
                )));
            }
            seen.push(c);
        }
        Ok(())
    }
}

struct Placed {
    worker_id: String,
    peer_addr: String,
}

/// The file a `both`-mode job's provider worker writes its result to, in its own output
/// directory: `psi-<job id>.csv` (a job id is a plain name).
pub fn provider_output_name(job_id: &str) -> String {
    format!("psi-{job_id}.csv")
}

/// The file the provider's worker writes an `mpc` job's model to when the licence's scene
/// gives the model to the provider (`modelTo: "provider"`).
pub fn provider_model_name(job_id: &str) -> String {
    format!("model-{job_id}.csv")
}

/// Whether the job is an `mpc` job that trains a model (a `TRAIN` statement).
fn trains_model(req: &JobRequest) -> bool {
    let (Some(q), Ok(fx)) = (
        req.mpc.as_ref(),
        tessera_mpc::FixedPoint::new(MPC_FRACTION_BITS),
    ) else {
        return false;
    };
    matches!(
        plan_for(req, q, &Default::default(), fx),
        Ok(tessera_mpc::query::job::JobPlan::Train(_))
    )
}

/// The least busy live worker of `party` that fits the scene's environment lists, from a
/// snapshot of the workers ([`Scheduler::workers`]); else the refusal and, for the audit
/// entry, which workers did not fit and why.
/// For an `mpc` job: whether its query opens row-level values (checked by the policy against
/// the scene's `aggregatesOnly`). The request was validated, so its query plans.
fn mpc_row_level(req: &JobRequest) -> Option<bool> {
    let q = req.mpc.as_ref()?;
    let fx = tessera_mpc::FixedPoint::new(MPC_FRACTION_BITS).ok()?;
    plan_for(req, q, &Default::default(), fx)
        .ok()
        .map(|p| p.row_level())
}

/// The job's statement planned on one row: an `mpc` job's query or training, a `tee` job's
/// query only (an enclave trains no model).
fn plan_for(
    req: &JobRequest,
    q: &tessera_core::MpcQuery,
    policy: &tessera_mpc::query::OutputPolicy,
    fx: tessera_mpc::FixedPoint,
) -> Result<tessera_mpc::query::job::JobPlan, tessera_mpc::query::QueryError> {
    if req.is_mpc() {
        tessera_mpc::query::job::job_plan_of(q, 1, policy, fx)
    } else {
        tessera_mpc::query::job::plan_of(q, 1, policy, fx)
            .map(tessera_mpc::query::job::JobPlan::Query)
    }
}

/// What a task's licence allows, signed with it ([`tessera_core::LicenceGrant`]): the licence,
/// its dataset, its validity window in the operator's zone and the scene's settings.
fn licence_grant(
    l: &LicenceRecord,
    scene: &tessera_policy::UseScene,
    zone: &tessera_core::civil::Zone,
) -> Result<tessera_core::LicenceGrant, SchedulerError> {
    let (not_before_ms, not_after_ms) = l.policy.window_ms(zone).unwrap_or((None, None));
    Ok(tessera_core::LicenceGrant {
        licence_id: l.licence_id.clone(),
        dataset_id: l.dataset_id.clone(),
        not_before_ms,
        not_after_ms,
        use_scene: serde_json::to_value(scene).map_err(|source| SchedulerError::Encode {
            what: "licence scene",
            source,
        })?,
    })
}

fn place(
    workers: &[crate::WorkerView],
    party: &str,
    scene: &tessera_policy::UseScene,
) -> Result<Placed, (Refusal, Vec<String>)> {
    let mut misfits = Vec::new();
    let best = workers
        .iter()
        .filter(|w| w.attributes.party == party && w.live)
        .filter(|w| match worker_fits(scene, &w.attributes) {
            Ok(()) => true,
            Err(m) => {
                misfits.push(format!("{}: {}", w.worker_id, m.join("; ")));
                false
            }
        })
        .min_by_key(|w| (w.running, &w.worker_id));
    match best {
        Some(w) => Ok(Placed {
            worker_id: w.worker_id.clone(),
            peer_addr: w.peer_addr.clone(),
        }),
        None if misfits.is_empty() => Err((
            Refusal::NoWorker {
                reason: format!("no live worker of party {party}"),
            },
            misfits,
        )),
        None => {
            // Worker ids and attributes are the party's own business: they go to the
            // operator's log and the refusal's audit entry (`placement`); the refusal
            // names only how many workers did not fit.
            tracing::info!(party, misfits = %misfits.join(" | "), "no worker fits");
            let reason = format!(
                "no live worker of party {party} fits the policy's environment lists \
                 ({} live worker(s) checked)",
                misfits.len()
            );
            Err((Refusal::NoWorker { reason }, misfits))
        }
    }
}

/// Which party's seat [`place_seat`] fills.
#[derive(Debug, Clone, Copy)]
enum Whose {
    Provider,
    Buyer,
}

/// The worker `worker_id` of `party` (one that keeps a share of a scoring's model) if it is
/// live and fits the scene's lists; the refusal names the buyer's own worker, never the
/// provider's.
fn place_seat(
    workers: &[crate::WorkerView],
    worker_id: &str,
    party: &str,
    scene: &tessera_policy::UseScene,
    whose: Whose,
) -> Result<Placed, (Refusal, Vec<String>)> {
    let refuse = |why: &str, misfits: Vec<String>| {
        let which = match whose {
            // The buyer may know its own worker's id; the provider's stays the provider's.
            Whose::Buyer => format!("the buyer's worker {worker_id}"),
            Whose::Provider => format!("the provider's worker (party {party})"),
        };
        (
            Refusal::NoWorker {
                reason: format!(
                    "{which}, which keeps its share of the model, {why}; a scoring runs on the \
                     workers that trained the model (a worker keeps its id across restarts \
                     with --worker-id)"
                ),
            },
            misfits,
        )
    };
    let Some(w) = workers
        .iter()
        .find(|w| w.worker_id == worker_id && w.attributes.party == party && w.live)
    else {
        return Err(refuse("is not connected", vec![]));
    };
    if let Err(m) = worker_fits(scene, &w.attributes) {
        return Err(refuse(
            "does not fit the policy's environment lists",
            vec![format!("{}: {}", w.worker_id, m.join("; "))],
        ));
    }
    Ok(Placed {
        worker_id: w.worker_id.clone(),
        peer_addr: w.peer_addr.clone(),
    })
}

/// A scoring's plan on one row (`SCORE … MODEL job`), for an `mpc` job whose statement is one.
fn scoring_plan(req: &JobRequest) -> Option<tessera_mpc::query::ScorePlan> {
    if !req.is_mpc() {
        return None;
    }
    let q = req.mpc.as_ref()?;
    let fx = tessera_mpc::FixedPoint::new(MPC_FRACTION_BITS).ok()?;
    match plan_for(req, q, &Default::default(), fx) {
        Ok(tessera_mpc::query::job::JobPlan::Score(p)) => Some(p),
        _ => None,
    }
}

/// Everything an admission decides on besides the store's view (`AdmitContext`), owned so
/// that the decision can run on the store's writer inside the group commit's batch.
struct Admission {
    req: JobRequest,
    job_id: String,
    session_id: String,
    task_ids: [String; 2],
    now: i64,
    zone: tessera_core::civil::Zone,
    /// Refusal reasons found by the reads before the transaction.
    pre_reasons: Vec<Refusal>,
    buyer_ds: Option<tessera_store::DatasetRecord>,
    provider_ds: Option<tessera_store::DatasetRecord>,
    /// The workers as they stood just before the admission was queued.
    workers: Vec<crate::WorkerView>,
    /// For a `tee` job on an operator with a TEE service: the workers' current results.
    tee: Option<HashMap<String, crate::tee::Attested>>,
    /// For an `fl` job: each provider licence's dataset and ids, in order.
    fl_providers: Vec<fl::FlProvider>,
    /// For a scoring (`SCORE … MODEL job`): the workers that keep the model's shares
    /// (the provider's, the buyer's), or why the model cannot be used.
    model_seats: Option<Result<[String; 2], Refusal>>,
}

impl Admission {
    /// The provider's worker: any that fits the scene's lists, and for a `tee` job only one
    /// whose current attestation meets the licence's `envHard` ([`crate::tee`]); with the
    /// enclave a `tee` task runs in.
    fn place_provider(
        &self,
        party: &str,
        scene: &tessera_policy::UseScene,
        dataset_id: &str,
    ) -> Result<(Placed, Option<tessera_core::TeeSpec>), (Refusal, Vec<String>)> {
        if !self.req.is_tee() {
            return place(&self.workers, party, scene).map(|p| (p, None));
        }
        let refuse = |reason: String| Refusal::NoWorker { reason };
        let Some(attested) = &self.tee else {
            return Err((
                refuse("this operator runs no TEE service (serve --tee-policy FILE)".into()),
                vec![],
            ));
        };
        if !self
            .workers
            .iter()
            .any(|w| w.attributes.party == party && w.live)
        {
            return Err((refuse(format!("no live worker of party {party}")), vec![]));
        }
        let refusals = crate::tee::eligible(&scene.env_hard.0, attested)
            .map_err(|reason| (refuse(reason), vec![]))?;
        let mut misfits = Vec::new();
        let fit: Vec<crate::WorkerView> = self
            .workers
            .iter()
            .filter(|w| w.attributes.party == party && w.live)
            .filter(|w| match refusals.get(&w.worker_id) {
                Some(r) if r.is_empty() => true,
                Some(r) => {
                    misfits.push(format!("{}: {}", w.worker_id, r.join("; ")));
                    false
                }
                None => {
                    misfits.push(format!("{}: no current attestation", w.worker_id));
                    false
                }
            })
            .cloned()
            .collect();
        if fit.is_empty() {
            tracing::info!(party, misfits = %misfits.join(" | "), "no attested worker fits");
            return Err((
                refuse(format!(
                    "no live worker of party {party} runs an attested enclave that meets the \
                     licence's envHard {:?} ({} live worker(s) checked)",
                    scene.env_hard.0,
                    misfits.len()
                )),
                misfits,
            ));
        }
        let placed = place(&fit, party, scene)?;
        let a = attested.get(&placed.worker_id).ok_or_else(|| {
            (
                refuse("the placed worker's attestation vanished".into()),
                vec![],
            )
        })?;
        let spec = tessera_core::TeeSpec {
            enclave_public_key: a.appraisal.worker_public_key.clone().unwrap_or_default(),
            kind: a.appraisal.kind.as_str().to_string(),
            attestation_result: a.token.clone(),
            dataset_id: dataset_id.to_string(),
        };
        Ok((placed, Some(spec)))
    }

    /// The decision on this admission against the store's view in the transaction: freeze
    /// rules (manual §3.6.5), the licence's usage policy, a paid term, the result name, the
    /// holds of the estimated maximum cost in the manual's payment order, and placement.
    fn decide(&self, ctx: &AdmitContext<'_>) -> Result<Decision, SchedulerError> {
        if self.req.is_fl() {
            return self.decide_fl(ctx);
        }
        let req = &self.req;
        let job_id = &self.job_id;
        let mut reasons = self.pre_reasons.clone();
        let mut detail = serde_json::json!({});
        // Freeze rules (manual §3.6.5) on the balances of this transaction.
        let freeze = ctx.freeze.decide(&req.user, &req.scene, ctx.cash_micros);
        let auto_frozen = (freeze.auto_frozen != ctx.freeze.auto_frozen)
            .then(|| (freeze.auto_frozen, freeze.notice.clone()));
        if let Err(reason) = freeze.admit_job() {
            reasons.push(Refusal::AccountFrozen { reason });
        }
        let Some(l) = ctx.licence else {
            reasons.push(Refusal::LicenceNotFound {
                licence_id: req.licence_id.clone(),
            });
            return Ok(Decision {
                allowed: false,
                reasons,
                detail,
                tasks: vec![],
                holds: vec![],
                auto_frozen,
                mpc_triples: None,
            });
        };
        let scene = l.policy.scene(&req.scene);
        let remaining = scene.and_then(|s| s.remaining_counts);
        let triples = req
            .is_mpc()
            .then(|| resolve_triples(req.mpc_triples, scene));
        let verdict = evaluate(
            &l.policy,
            &Request {
                user: &req.user,
                groups: &req.user_groups,
                scene: &req.scene,
                protocol: if let Some(t) = triples {
                    Some(t.as_str())
                } else {
                    (!req.is_preview() && !req.is_tee()).then(|| req.protocol().as_str())
                },
                now_ms: self.now,
                zone: &self.zone,
                preview: req.is_preview().then_some(tessera_policy::PreviewAsk {
                    rows: req.preview_rows,
                    columns: &req.provider_columns,
                }),
                mpc_row_level: mpc_row_level(req),
                join: req.join.map(|k| (k, req.payload_columns.as_slice())),
            },
            remaining,
        );
        reasons.extend(
            verdict
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| match c.constraint {
                    Constraint::Count => Refusal::QuotaExhausted {
                        scene: req.scene.clone(),
                    },
                    // The buyer named no protocol: say that this one was the default, and
                    // which allowed protocols could run this mode (perhaps none). An mpc job's
                    // check is of its triples source, which `resolve_triples` took from the
                    // scene when it named none: the policy's reason stands.
                    Constraint::Protocol if req.protocol.is_none() && !req.is_mpc() => {
                        let usable: Vec<&str> = PsiProtocol::ALL
                            .iter()
                            .filter(|p| p.supports(req.mode))
                            .filter(|p| scene.is_none_or(|s| s.protocols.allows(p.as_str())))
                            .map(|p| p.as_str())
                            .collect();
                        let hint = if usable.is_empty() {
                            format!("no protocol the scene allows runs {} mode", req.mode)
                        } else {
                            format!("name one of {} as the job's protocol", usable.join(", "))
                        };
                        Refusal::PolicyDenied {
                            constraint: Constraint::Protocol,
                            reason: format!(
                                "{} (the default for {} mode; {hint})",
                                c.reason, req.mode
                            ),
                        }
                    }
                    constraint => Refusal::PolicyDenied {
                        constraint,
                        reason: c.reason.clone(),
                    },
                }),
        );
        // A query the scene's output controls refuse (a row-level output under minGroupSize,
        // say): refused here with the reason, as both workers would refuse it at start. The
        // verdict has already named aggregatesOnly against a row-level query.
        if let (Some(q), Some(s)) = (&req.mpc, scene)
            && !reasons.iter().any(|r| {
                matches!(
                    r,
                    Refusal::PolicyDenied {
                        constraint: Constraint::Output,
                        ..
                    }
                )
            })
        {
            let policy = tessera_mpc::query::OutputPolicy {
                min_group_size: s.min_group_size,
                aggregates_only: s.aggregates_only,
            };
            if let Ok(fx) = tessera_mpc::FixedPoint::new(MPC_FRACTION_BITS)
                && let Err(e) = plan_for(req, q, &policy, fx)
            {
                reasons.push(Refusal::PolicyDenied {
                    constraint: Constraint::Output,
                    reason: format!(
                        "the query under scene {}'s output controls: {e}",
                        s.use_sence
                    ),
                });
            }
        }
        if let Err(reason) = &ctx.term {
            reasons.push(Refusal::NoPaidTerm {
                reason: reason.clone(),
            });
        }
        if let Some(Err(r)) = &self.model_seats {
            reasons.push(r.clone());
        }
        if let Some(job_id) = &ctx.output_taken_by {
            reasons.push(Refusal::OutputTaken {
                output: req.output.clone(),
                job_id: job_id.clone(),
            });
        }
        // What a preview shows: the rows asked for (or the whole window) and the columns asked
        // for (or those the window allows, or all), inside the window (the verdict checked).
        let preview = match (req.is_preview(), scene) {
            (true, Some(scene)) => tessera_policy::PreviewWindow::of(scene).ok().map(|w| {
                let (first_row, last_row) = req.preview_rows.unwrap_or((w.first_row, w.last_row));
                tessera_core::PreviewSpec {
                    first_row,
                    last_row,
                    columns: if req.provider_columns.is_empty() {
                        w.columns.unwrap_or_default()
                    } else {
                        req.provider_columns.clone()
                    },
                }
            }),
            _ => None,
        };
        // Hold the estimated maximum cost, drawn in the manual's payment order. A preview
        // reads at most its rows.
        let declared_rows = self.provider_ds.as_ref().and_then(|d| d.declared_rows);
        let declared_rows = match &preview {
            Some(p) => Some(declared_rows.map_or(p.rows_max(), |d| d.min(p.rows_max()))),
            None => declared_rows,
        };
        let unpriced = |error: String| Refusal::Unpriced {
            licence_id: l.licence_id.clone(),
            error,
        };
        let holds = match settle::estimate_max_cost(&l.price, declared_rows) {
            Ok(max) => {
                match settle::admission_holds(job_id, &req.user, &req.scene, max, &ctx.funds) {
                    Ok(holds) => holds,
                    Err(SettleError::InsufficientFunds {
                        needed_micros,
                        available_micros,
                        ..
                    }) => {
                        reasons.push(Refusal::InsufficientFunds {
                            needed_micros,
                            available_micros,
                            funds: ctx.funds.iter().map(|(a, m)| (a.name(), *m)).collect(),
                        });
                        Vec::new()
                    }
                    Err(why) => {
                        reasons.push(unpriced(why.to_string()));
                        Vec::new()
                    }
                }
            }
            Err(why) => {
                reasons.push(unpriced(why.to_string()));
                Vec::new()
            }
        };
        let funds: Vec<(String, i64)> = ctx.funds.iter().map(|(a, m)| (a.name(), *m)).collect();
        detail = serde_json::json!({
            "checks": verdict.checks, "funds": funds, "cash_micros": ctx.cash_micros,
            "declared_rows": declared_rows,
        });
        if let (Some(t), Some(d)) = (triples, detail.as_object_mut()) {
            d.insert("triples".into(), serde_json::json!(t.as_str()));
        }
        let mut tasks = Vec::new();
        let buyer_location = match (&preview, &self.buyer_ds) {
            (Some(_), _) => Some(String::new()),
            (None, Some(bds)) => Some(bds.location.clone()),
            (None, None) => None,
        };
        if req.is_preview() && preview.is_none() {
            // The window is unreadable: the verdict has already refused the job.
        } else if let (Some(scene), Some(buyer_location), Some(pds)) =
            (scene, buyer_location, &self.provider_ds)
        {
            let placed = match &self.model_seats {
                // A scoring runs on the workers that keep the model's shares.
                Some(Ok([provider, buyer])) => (
                    place_seat(&self.workers, provider, &l.licensor, scene, Whose::Provider)
                        .map(|p| (p, None)),
                    place_seat(&self.workers, buyer, &req.buyer_party, scene, Whose::Buyer),
                ),
                _ => (
                    self.place_provider(&l.licensor, scene, &l.dataset_id),
                    place(&self.workers, &req.buyer_party, scene),
                ),
            };
            match placed {
                (Ok((p, tee)), Ok(b)) => {
                    let grant = licence_grant(l, scene, &self.zone)?;
                    let sender = TaskSpec {
                        job_id: job_id.clone(),
                        task_id: self.task_ids[0].clone(),
                        scene: req.scene.clone(),
                        role: TaskRole::Sender,
                        mode: req.mode,
                        protocol: req.protocol(),
                        dataset_location: pds.location.clone(),
                        key_columns: req.provider_columns.clone(),
                        key_case: req.key_case,
                        unicode_form: req.unicode_form,
                        empty_keys: req.empty_keys,
                        carry_columns: Vec::new(),
                        dial_peer: true,
                        peer_addr: b.peer_addr.clone(),
                        session_id: self.session_id.clone(),
                        peer_party: req.buyer_party.clone(),
                        peer_worker_id: b.worker_id.clone(),
                        // In `both` mode the provider's worker writes its own result, named
                        // by the job (its output directory is its own).
                        output: if req.mode == PsiMode::Both {
                            provider_output_name(job_id)
                        } else if trains_model(req)
                            && scene.model_to == Some(tessera_core::ModelRecipient::Provider)
                        {
                            // A model the policy gives the provider: its worker writes it.
                            provider_model_name(job_id)
                        } else {
                            String::new()
                        },
                        preview: preview.clone(),
                        licence: Some(grant),
                        mpc: req.mpc.clone().map(|query| tessera_core::MpcSpec {
                            query,
                            min_group_size: scene.min_group_size,
                            aggregates_only: scene.aggregates_only,
                            fraction_bits: MPC_FRACTION_BITS,
                            model_to: scene.model_to.unwrap_or_default(),
                            triples: triples.unwrap_or(tessera_core::MpcTriples::Ot),
                        }),
                        tee,
                        fl: None,
                        join: req.join.map(|kind| tessera_core::JoinSpec {
                            kind,
                            payload_columns: req.payload_columns.clone(),
                        }),
                    };
                    let receiver = TaskSpec {
                        task_id: self.task_ids[1].clone(),
                        role: TaskRole::Receiver,
                        dataset_location: buyer_location,
                        key_columns: req.buyer_columns.clone(),
                        dial_peer: false,
                        peer_addr: String::new(),
                        output: req.output.clone(),
                        carry_columns: req.carry_columns.clone(),
                        peer_party: l.licensor.clone(),
                        peer_worker_id: p.worker_id.clone(),
                        ..sender.clone()
                    };
                    for (spec, placed, party) in
                        [(sender, &p, &l.licensor), (receiver, &b, &req.buyer_party)]
                    {
                        let spec_json = serde_json::to_string(&spec).map_err(|source| {
                            SchedulerError::Encode {
                                what: "task spec",
                                source,
                            }
                        })?;
                        tasks.push(NewTask {
                            task_id: spec.task_id.clone(),
                            worker_id: placed.worker_id.clone(),
                            party: party.clone(),
                            role: spec.role,
                            spec_json,
                        });
                    }
                }
                (p, b) => {
                    let mut placement = Vec::new();
                    for (refusal, misfits) in [p.err(), b.err()].into_iter().flatten() {
                        reasons.push(refusal);
                        placement.extend(misfits);
                    }
                    if let Some(d) = detail.as_object_mut() {
                        d.insert("placement".into(), serde_json::json!(placement));
                    }
                }
            }
        }
        Ok(Decision {
            allowed: reasons.is_empty(),
            reasons,
            detail,
            tasks,
            holds,
            auto_frozen,
            mpc_triples: triples,
        })
    }
}

impl Scheduler {
    /// Admits or refuses a job, and dispatches it when admitted. A refusal is not an error:
    /// it is returned as a job in state `refused` with its reasons. With a `request_id` the
    /// user already used for the same request, the job of that first submission is returned
    /// as it stands (nothing admitted, counted or held again); for a different request,
    /// `IdempotencyMismatch`. Runs detached ([`Scheduler::detached`]): a caller that goes
    /// away cannot leave an admitted job undispatched.
    pub async fn submit(&self, req: JobRequest) -> Result<JobView, SchedulerError> {
        self.detached(move |s| async move { s.admit_and_dispatch(req).await })
            .await
    }

    async fn admit_and_dispatch(&self, req: JobRequest) -> Result<JobView, SchedulerError> {
        req.validate()?;
        let now = self.now();
        let job_id = self.random_id("job-");
        // Reads outside the admission transaction; their outcome only adds refusal reasons.
        let mut pre_reasons = Vec::new();
        let buyer_ds = match self.store.dataset(&req.buyer_dataset_id).await {
            // A preview or an fl job reads no dataset of the buyer's.
            _ if req.is_preview() || req.is_fl() => None,
            Ok(d) if d.owner_party != req.buyer_party => {
                pre_reasons.push(Refusal::DatasetNotOwned {
                    dataset_id: d.dataset_id,
                    owner: d.owner_party,
                    party: req.buyer_party.clone(),
                });
                None
            }
            Ok(d) if crate::validate::is_sealed(&d.location) => {
                return Err(SchedulerError::Invalid(format!(
                    "buyer_dataset_id: dataset {} is sealed ({:?}); a sealed file opens only in \
                     a tee job's enclave, on the provider's side: name a clear dataset of the \
                     buyer's",
                    d.dataset_id, d.location
                )));
            }
            Ok(d) => Some(d),
            Err(tessera_store::StoreError::NotFound { .. }) => {
                pre_reasons.push(Refusal::DatasetNotFound {
                    dataset_id: req.buyer_dataset_id.clone(),
                });
                None
            }
            Err(e) => return Err(e.into()),
        };
        let licence_pre = match self.store.licence(&req.licence_id).await {
            Ok(l) => Some(l),
            Err(tessera_store::StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut fl_providers = Vec::new();
        if let Some(fl) = &req.fl {
            for id in &fl.licences {
                let dataset = match self.store.licence(id).await {
                    Ok(l) => self.licensed_dataset(&l, &mut pre_reasons).await?,
                    // Refused in the transaction, which reads the licence again.
                    Err(tessera_store::StoreError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                };
                fl_providers.push(fl::FlProvider {
                    dataset,
                    task_id: self.random_id("t-"),
                    session_id: self.random_id("s-"),
                });
            }
        }
        let provider_ds = match &licence_pre {
            // An fl job's datasets were read above, one per licence.
            Some(_) if req.is_fl() => None,
            Some(l) => self.licensed_dataset(l, &mut pre_reasons).await?,
            None => None,
        };
        let model_seats = match scoring_plan(&req) {
            Some(plan) => Some(self.scoring_model(&req, &plan).await?),
            None => None,
        };
        let request_json = serde_json::to_value(&req).map_err(|source| SchedulerError::Encode {
            what: "job request",
            source,
        })?;
        let new_job = NewJob {
            job_id: job_id.clone(),
            licence_id: req.licence_id.clone(),
            scene: req.scene.clone(),
            user: req.user.clone(),
            mode: req.mode,
            protocol: req.protocol(),
            request: request_json,
            request_id: req.request_id.clone(),
            buyer_party: req.buyer_party.clone(),
            provider_party: licence_pre
                .as_ref()
                .map(|l| l.licensor.clone())
                .unwrap_or_default(),
            // Only a result that gets written holds its name.
            output: if req.is_fl() || req.mode.reveals_keys() {
                req.output.clone()
            } else {
                String::new()
            },
            co_licences: req
                .fl
                .as_ref()
                .map(|f| f.licences.iter().skip(1).cloned().collect())
                .unwrap_or_default(),
            now_ms: now,
        };
        // The workers as they stand now: no lock is held while the admission waits for its
        // batch. A worker lost in between fails the dispatch (not the buyer's fault: the
        // count is released); concurrent admissions see the same running counts, so the
        // least busy worker is chosen on counts a batch old.
        let admission = Admission {
            session_id: self.random_id("s-"),
            task_ids: [self.random_id("t-"), self.random_id("t-")],
            job_id,
            now,
            zone: self.store.zone().clone(),
            pre_reasons,
            buyer_ds,
            provider_ds,
            workers: self.placement_workers().await,
            tee: (req.is_tee() && self.tee.get().is_some()).then(|| self.tee_current()),
            fl_providers,
            model_seats,
            req: req.clone(),
        };
        let outcome = self
            .store
            .admit(&new_job, move |ctx| admission.decide(ctx))
            .await;
        let (job, tasks, holds) = match outcome? {
            AdmitOutcome::Refused { job, refusals } => {
                tracing::info!(job = %job.job_id, reasons = ?job.reasons, "job refused");
                for r in &refusals {
                    self.metrics.refused(&job.scene, r.kind());
                }
                // The answer is the buyer's receipt; the gateway signs a head covering it.
                return Ok(JobView {
                    job,
                    progress: Vec::new(),
                    refusals,
                });
            }
            AdmitOutcome::Admitted { job, tasks, holds } => {
                self.metrics.admitted(&job.scene);
                (job, tasks, holds)
            }
            AdmitOutcome::Replayed(job) => {
                tracing::info!(job = %job.job_id, "submission replayed by its request id");
                return self.job(&job.job_id).await;
            }
        };
        let Some(licence) = licence_pre else {
            return Err(SchedulerError::NotFound(format!(
                "licence {}",
                req.licence_id
            )));
        };
        self.dispatch(job, tasks, holds, &req, licence).await
    }

    /// The dataset licence `l` covers, or `None` with `LicensedDatasetNotFound` added to
    /// `reasons` when it is gone.
    ///
    /// # Errors
    /// The store's.
    async fn licensed_dataset(
        &self,
        l: &LicenceRecord,
        reasons: &mut Vec<Refusal>,
    ) -> Result<Option<tessera_store::DatasetRecord>, SchedulerError> {
        match self.store.dataset(&l.dataset_id).await {
            Ok(d) => Ok(Some(d)),
            Err(tessera_store::StoreError::NotFound { .. }) => {
                reasons.push(Refusal::LicensedDatasetNotFound {
                    dataset_id: l.dataset_id.clone(),
                });
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The model a scoring names, checked: a job of the buyer's party under the scoring's
    /// licence, succeeded, that trained a model kept shared (`modelTo: "shared"` when it ran)
    /// on the scoring's features with their bounds. `Ok(Ok(seats))`: the workers that keep
    /// its shares (the provider's, the buyer's); `Ok(Err(refusal))` otherwise. A job of
    /// another party or licence is answered as no job at all.
    ///
    /// # Errors
    /// The store's.
    async fn scoring_model(
        &self,
        req: &JobRequest,
        plan: &tessera_mpc::query::ScorePlan,
    ) -> Result<Result<[String; 2], Refusal>, SchedulerError> {
        let job_id = &plan.scoring.model_job;
        let refuse = |reason: String| {
            Ok(Err(Refusal::ModelUnusable {
                job_id: job_id.clone(),
                reason,
            }))
        };
        let job = match self.store.job(job_id).await {
            Ok(j) if j.buyer_party == req.buyer_party && j.licence_id == req.licence_id => j,
            Ok(_) | Err(tessera_store::StoreError::NotFound { .. }) => {
                return refuse(format!(
                    "no job of party {} under licence {} has this id",
                    req.buyer_party, req.licence_id
                ));
            }
            Err(e) => return Err(e.into()),
        };
        match job.state {
            JobState::Succeeded => {}
            JobState::Admitted | JobState::Running => {
                return refuse("it is still running; score with it once it has succeeded".into());
            }
            s => {
                return refuse(format!(
                    "it is {}; only a succeeded training gives a model",
                    s.as_str()
                ));
            }
        }
        let tasks = self.store.tasks(job_id).await?;
        let spec_of = |role: TaskRole| {
            tasks
                .iter()
                .find(|t| t.role == role)
                .and_then(|t| Some((t, serde_json::from_str::<TaskSpec>(&t.spec_json).ok()?)))
        };
        let (Some((sender, spec)), Some((receiver, _))) =
            (spec_of(TaskRole::Sender), spec_of(TaskRole::Receiver))
        else {
            return refuse("it is not an mpc job".into());
        };
        let trained = spec.mpc.as_ref().and_then(|m| {
            let fx = tessera_mpc::FixedPoint::new(m.fraction_bits).ok()?;
            match tessera_mpc::query::job::job_plan_of(&m.query, 1, &Default::default(), fx) {
                Ok(tessera_mpc::query::job::JobPlan::Train(t)) => Some((t, m.model_to)),
                _ => None,
            }
        });
        let Some((training, model_to)) = trained else {
            return refuse("it trained no model (not a TRAIN statement)".into());
        };
        if model_to != tessera_core::ModelRecipient::Shared {
            return refuse(
                "its model was opened to a party, not kept shared (the licence's mpc scene \
                 said modelTo \"buyer\" or \"provider\" when it ran)"
                    .into(),
            );
        }
        if !plan.fits(&training) {
            return refuse(format!(
                "it was trained on {}; name the same features with the same declared bounds, \
                 each party's in the same order",
                training
                    .training
                    .features
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Ok([sender.worker_id.clone(), receiver.worker_id.clone()]))
    }

    /// Sends an admitted job's `tasks` to their workers with their tickets; `holds` are its
    /// open holds (both as the admission recorded them).
    async fn dispatch(
        &self,
        job: tessera_store::JobRecord,
        tasks: Vec<tessera_store::TaskRecord>,
        holds: Vec<tessera_store::HoldRecord>,
        req: &JobRequest,
        licence: LicenceRecord,
    ) -> Result<JobView, SchedulerError> {
        let job_id = job.job_id.clone();
        let mut live = LiveJob::new(
            &job,
            &tasks,
            holds,
            req.buyer_party.clone(),
            licence.licensor.clone(),
            licence.price,
            false,
        );
        live.co_parts = self.co_parts(&job).await?;
        self.index_tasks(&job_id, &live, true);
        self.jobs.lock().await.insert(job_id.clone(), live);
        self.note_dispatched(tasks.iter().map(|t| t.worker_id.as_str()))
            .await;
        let now = self.now();
        let mut failure = None;
        // The head after the admission, signed once for both tickets (not recorded: the
        // background sealer records a checkpoint within a second). Without it (the store
        // could not be read) the tickets go without a head.
        let audit_head = match self.audit.sign_head().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "could not sign the audit head");
                None
            }
        };
        for t in &tasks {
            let body = TicketBody {
                ticket_id: self.random_id("k-"),
                job_id: job_id.clone(),
                task_id: t.task_id.clone(),
                worker_id: t.worker_id.clone(),
                issued_at_ms: now,
                expires_at_ms: now.saturating_add(self.config.ticket_ttl_ms),
                task_digest: task_digest(t.spec_json.as_bytes()),
                audit_head: audit_head.clone(),
            };
            let ticket = match self.signer.sign(&body) {
                Ok(t) => t,
                Err(e) => {
                    failure = Some((
                        format!("could not sign the ticket of task {}: {e}", t.task_id),
                        None,
                    ));
                    break;
                }
            };
            let delivery = Delivery::Assign {
                spec_json: t.spec_json.clone(),
                ticket,
            };
            let stream = self
                .workers
                .lock()
                .await
                .get(&t.worker_id)
                .and_then(|w| w.deliveries.clone());
            match self.deliver(&job_id, stream, delivery).await {
                Ok(true) => {}
                // Ended while this dispatch waited for room: its end was recorded by
                // whoever ended it.
                Ok(false) => break,
                Err(why) => {
                    failure = Some((
                        format!("could not deliver task to worker {}: {why}", t.worker_id),
                        Some(FailureOrigin {
                            role: t.role,
                            party: t.party.clone(),
                            kind: "undeliverable".into(),
                        }),
                    ));
                    break;
                }
            }
        }
        // Dispatch writes nothing: the admission's entry names each task's worker, and the
        // job is `running` once a worker reports progress (in the live view) or its
        // delivery point is recorded (in the store). The live view already holds the job as
        // admitted, and every change since updated it.
        if let Some((error, origin)) = failure {
            self.finish(
                &job_id,
                JobFinish::Failed {
                    error,
                    buyer_fault: false,
                    origin,
                },
            )
            .await?;
        }
        self.job(&job_id).await
    }

    /// Puts `delivery` (a task of `job_id`) on a worker's task `stream`; when its queue is
    /// full, waits up to [`SchedulerConfig::delivery_wait_ms`] for room (no lock held), and
    /// then sends only if the job is still live (it may have been cancelled, or failed with a
    /// lost worker, meanwhile). `Ok(false)`: the job ended, nothing was sent; `Err` says why
    /// the task could not be delivered.
    async fn deliver(
        &self,
        job_id: &str,
        stream: Option<mpsc::Sender<Delivery>>,
        delivery: Delivery,
    ) -> Result<bool, String> {
        use tokio::sync::mpsc::error::TrySendError;
        let closed = || "it is not connected".to_string();
        let Some(stream) = stream else {
            return Err(closed());
        };
        match stream.try_send(delivery) {
            Ok(()) => Ok(true),
            Err(TrySendError::Closed(_)) => Err(closed()),
            Err(TrySendError::Full(delivery)) => {
                let wait = Duration::from_millis(self.config.delivery_wait_ms);
                match tokio::time::timeout(wait, stream.reserve()).await {
                    Ok(Ok(permit)) => {
                        if !self.jobs.lock().await.contains_key(job_id) {
                            return Ok(false);
                        }
                        permit.send(delivery);
                        Ok(true)
                    }
                    Ok(Err(_)) => Err(closed()),
                    Err(_) => Err(format!(
                        "its task queue ({} tasks) stayed full for {} ms: it takes tasks more \
                         slowly than they are admitted",
                        self.config.delivery_queue_max, self.config.delivery_wait_ms
                    )),
                }
            }
        }
    }

    /// The further licences of `job` (an `fl` job's) with their providers and prices.
    async fn co_parts(
        &self,
        job: &tessera_store::JobRecord,
    ) -> Result<Vec<crate::CoPart>, SchedulerError> {
        let mut parts = Vec::with_capacity(job.co_licences.len());
        for c in &job.co_licences {
            let l = self.store.licence(&c.licence_id).await?;
            parts.push(crate::CoPart {
                licence_id: l.licence_id,
                provider: l.licensor,
                price: l.price,
            });
        }
        Ok(parts)
    }

    async fn refresh_view(&self, job_id: &str) -> Result<(), SchedulerError> {
        let job = self.store.job(job_id).await?;
        if let Some(j) = self.jobs.lock().await.get(job_id) {
            j.view.send_replace(JobView {
                job,
                progress: j.progress.clone(),
                refusals: Vec::new(),
            });
        }
        Ok(())
    }

    /// Adds (`live` true: the job is live) or removes (false: it no longer is) the index
    /// entries of `job`'s tasks (see `Scheduler::task_jobs`).
    pub(crate) fn index_tasks(&self, job_id: &str, job: &LiveJob, live: bool) {
        let mut index = self
            .task_jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task_id in job.tasks.keys() {
            if live {
                index.insert(task_id.clone(), job_id.to_owned());
            } else {
                index.remove(task_id);
            }
        }
    }

    /// Tasks in the live-task index: those of the live jobs (none left behind by an ended
    /// job).
    pub fn indexed_tasks(&self) -> usize {
        self.task_jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// The live job whose task `task_id` runs on `worker_id`: through the task index, or by a
    /// scan of the live jobs when the index does not name it.
    fn task_owner<'a>(
        &self,
        jobs: &'a mut HashMap<String, LiveJob>,
        worker_id: &str,
        task_id: &str,
    ) -> Result<(String, &'a mut LiveJob), SchedulerError> {
        let owns = |j: &LiveJob| {
            j.tasks
                .get(task_id)
                .is_some_and(|t| t.worker_id == worker_id)
        };
        let hint = self
            .task_jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task_id)
            .cloned()
            .filter(|id| jobs.get(id).is_some_and(owns));
        let found = match hint {
            Some(id) => jobs.get_mut(&id).map(|j| (id, j)),
            None => jobs
                .iter_mut()
                .find(|(_, j)| owns(j))
                .map(|(id, j)| (id.clone(), j)),
        };
        found.ok_or_else(|| {
            SchedulerError::NotFound(format!("running task {task_id} of worker {worker_id}"))
        })
    }

    /// Records a worker's progress on a task.
    pub async fn report_progress(
        &self,
        worker_id: &str,
        task_id: &str,
        phase: &str,
        done: u64,
        total: u64,
    ) -> Result<(), SchedulerError> {
        let mut jobs = self.jobs.lock().await;
        let (_, job) = self.task_owner(&mut jobs, worker_id, task_id)?;
        let (party, role) = job
            .tasks
            .get(task_id)
            .map(|t| (t.party.clone(), t.role))
            .ok_or_else(|| SchedulerError::NotFound(format!("task {task_id}")))?;
        let now = self.clock.now_ms();
        let mut p = PhaseProgress {
            party: party.clone(),
            role,
            phase: phase.chars().take(64).collect(),
            done,
            total,
            eta_ms: None,
            began: (now, done),
        };
        let same_family =
            |x: &PhaseProgress| crate::phase_family(&x.phase) == crate::phase_family(&p.phase);
        match job.progress.iter_mut().find(|x| x.party == party) {
            // Reports travel separately and may arrive out of order: a smaller count in the
            // same phase is a late one, and counts shown never go backwards.
            Some(x) if same_family(x) && p.done < x.done => return Ok(()),
            Some(x) => {
                if same_family(x) {
                    p.began = x.began;
                }
                p.eta_ms = eta_ms(&p, now);
                *x = p;
            }
            None => job.progress.push(p),
        }
        let progress = job.progress.clone();
        job.view.send_modify(|v| {
            v.progress = progress;
            if v.job.state == JobState::Admitted {
                v.job.state = JobState::Running;
            }
        });
        Ok(())
    }

    /// Records a worker's final report on a task; ends the job when it can. Runs detached
    /// ([`Scheduler::detached`]): a worker killed while it reports cannot stop the job's end
    /// halfway.
    pub async fn report_result(
        &self,
        worker_id: &str,
        task_id: &str,
        report: TaskReport,
    ) -> Result<(), SchedulerError> {
        let (worker_id, task_id) = (worker_id.to_string(), task_id.to_string());
        self.detached(move |s| async move { s.take_report(&worker_id, &task_id, report).await })
            .await
    }

    pub(crate) async fn take_report(
        &self,
        worker_id: &str,
        task_id: &str,
        report: TaskReport,
    ) -> Result<(), SchedulerError> {
        let now = self.now();
        let sender_ok;
        let (job_id, finish) = {
            let mut jobs = self.jobs.lock().await;
            let (job_id, job) = self.task_owner(&mut jobs, worker_id, task_id)?;
            let Some(task) = job.tasks.get_mut(task_id) else {
                return Err(SchedulerError::NotFound(format!("task {task_id}")));
            };
            if task.report.is_some() {
                return Ok(()); // a retried report changes nothing
            }
            let role = task.role;
            if !report.ok && report.error_kind == Some(TaskErrorKind::Link) && self.may_resume(job)
            {
                // The run broke off: the job waits for both parties to be back.
                let why = format!(
                    "the {role} task on {worker_id} lost its peer: {}",
                    report.error
                );
                let job_id = job_id.to_string();
                drop(jobs);
                self.interrupt(
                    &job_id,
                    &[task_id.to_string()],
                    crate::resume::TaskMark::Stopped,
                    &why,
                )
                .await;
                self.try_resume(&job_id).await;
                return Ok(());
            }
            let Some(task) = job.tasks.get_mut(task_id) else {
                return Err(SchedulerError::NotFound(format!("task {task_id}")));
            };
            task.report = Some(report.clone());
            let (task_role, task_party) = (task.role, task.party.clone());
            sender_ok = task_role == TaskRole::Sender && report.ok;
            self.metrics.engine_usage(
                &job.scene,
                report.usage.bytes_sent,
                report.usage.bytes_received,
                report.usage.frames_sent,
            );
            // An `fl` job outlives a provider that drops out: its aggregator decides the end,
            // once every task has reported (so that each party's usage is metered).
            let fl_waits = job.is_fl()
                && !(job
                    .tasks
                    .values()
                    .any(|t| t.role == TaskRole::Receiver && t.report.is_some())
                    && job.tasks.values().all(|t| t.report.is_some()));
            // A provider that drops out (its link, its worker, its training): the run goes on.
            // One whose own input (or ticket) is at fault fails the job, as the provider's
            // failure, before anything of it was used: the buyer must not get a model silently
            // trained without it, nor pay for it.
            let fl_provider_out = job.is_fl()
                && !report.ok
                && task_role == TaskRole::Sender
                && !matches!(
                    report.error_kind,
                    Some(TaskErrorKind::Input | TaskErrorKind::Ticket)
                );
            let aggregator_failed = job
                .tasks
                .values()
                .find(|t| t.role == TaskRole::Receiver)
                .and_then(|t| t.report.as_ref())
                .filter(|r| !r.ok)
                .cloned();
            let finish = if fl_provider_out && fl_waits {
                tracing::info!(job = %job_id, task = %task_id, "an fl provider dropped out; the run goes on");
                None
            } else if fl_provider_out {
                // Every task has reported: the aggregator's report decides.
                match aggregator_failed {
                    Some(r) => Some(JobFinish::Failed {
                        error: format!("the aggregator failed: {}", r.error),
                        buyer_fault: false,
                        origin: None,
                    }),
                    None => match self.success(&job_id, job) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            if let Some(t) = job.tasks.get_mut(task_id) {
                                t.report = None;
                            }
                            return Err(e);
                        }
                    },
                }
            } else if !report.ok {
                let buyer_fault = report.error_kind == Some(TaskErrorKind::Input)
                    && task_party == job.buyer_party
                    && task_role == TaskRole::Receiver;
                let kind = report.error_kind.map_or("internal", TaskErrorKind::as_str);
                let spent = job.resumable
                    && report.error_kind == Some(TaskErrorKind::Link)
                    && self.config.resume_window_ms > 0
                    && job.resumes >= self.config.resumes_max;
                let spent = if spent {
                    format!(
                        " (the job was resumed {} times, the most allowed)",
                        job.resumes
                    )
                } else {
                    String::new()
                };
                Some(JobFinish::Failed {
                    error: format!(
                        "{} task on {worker_id} failed ({kind}): {}{spent}",
                        task_role, report.error
                    ),
                    buyer_fault,
                    origin: Some(FailureOrigin {
                        role: task_role,
                        party: task_party.clone(),
                        kind: kind.to_owned(),
                    }),
                })
            } else if job.is_fl() && fl_waits {
                // The aggregator succeeded before some provider reported, or a provider
                // finished before the aggregator: wait for the rest.
                None
            } else if job.tasks.values().all(|t| {
                t.report
                    .as_ref()
                    .is_some_and(|r| r.ok || (job.is_fl() && t.role == TaskRole::Sender))
            }) {
                match self.success(&job_id, job) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        // Not decided: forget this report so that the worker's retry decides
                        // again (a retried report is otherwise a no-op).
                        if let Some(t) = job.tasks.get_mut(task_id) {
                            t.report = None;
                        }
                        return Err(e);
                    }
                }
            } else {
                None
            };
            (job_id, finish)
        };
        if let Err(e) = self
            .record_report(&job_id, task_id, &report, sender_ok, now)
            .await
        {
            // Not recorded: forget the report, so that the worker's retry decides again
            // rather than finding it taken and the job waiting for an end nobody decides.
            let mut jobs = self.jobs.lock().await;
            if let Some(t) = jobs.get_mut(&job_id).and_then(|j| j.tasks.get_mut(task_id)) {
                t.report = None;
            }
            return Err(e);
        }
        match finish {
            Some(f) => self.finish(&job_id, f).await,
            None => {
                // A worker reported: the job is at work (the store moved it to `running`
                // if the report was the sender's end).
                if let Some(j) = self.jobs.lock().await.get(&job_id) {
                    j.view.send_modify(|v| {
                        if v.job.state == JobState::Admitted {
                            v.job.state = JobState::Running;
                        }
                    });
                }
                Ok(())
            }
        }
    }

    /// Writes a task's report to the store; a sender that finished has passed its delivery
    /// point, even if its milestone report was lost.
    async fn record_report(
        &self,
        job_id: &str,
        task_id: &str,
        report: &TaskReport,
        sender_ok: bool,
        now: i64,
    ) -> Result<(), SchedulerError> {
        let usage =
            serde_json::to_value(&report.usage).map_err(|source| SchedulerError::Encode {
                what: "task usage",
                source,
            })?;
        self.store
            .record_task_report(
                job_id,
                task_id,
                TaskUpdate {
                    state: if report.ok {
                        TaskState::Succeeded
                    } else {
                        TaskState::Failed
                    },
                    error_kind: report.error_kind.map_or("", TaskErrorKind::as_str).into(),
                    error: report.error.clone(),
                    usage: Some(usage),
                    result_size: report.result_size,
                },
                sender_ok.then_some(report.usage.rows_in),
                now,
            )
            .await?;
        Ok(())
    }

    /// Records a task's delivery milestone (for ECDH-PSI, reported by the sender once the
    /// receiver holds everything it needs): durably, once, in the store and the audit chain.
    /// From then on the job cannot end without consuming its count and being charged.
    ///
    /// # Errors
    /// `NotFound` for a task this worker does not run; `Invalid` when the task is not the
    /// engine's sender; the store's. Runs detached ([`Scheduler::detached`]).
    pub async fn report_delivered(
        &self,
        worker_id: &str,
        task_id: &str,
        rows_in: u64,
    ) -> Result<(), SchedulerError> {
        let (worker_id, task_id) = (worker_id.to_string(), task_id.to_string());
        self.detached(move |s| async move { s.take_delivery(&worker_id, &task_id, rows_in).await })
            .await
    }

    async fn take_delivery(
        &self,
        worker_id: &str,
        task_id: &str,
        rows_in: u64,
    ) -> Result<(), SchedulerError> {
        let job_id = {
            let mut jobs = self.jobs.lock().await;
            let (job_id, job) = self.task_owner(&mut jobs, worker_id, task_id)?;
            match job.tasks.get_mut(task_id) {
                Some(t) if t.role == TaskRole::Sender => t.delivered_rows = Some(rows_in),
                _ => {
                    return Err(SchedulerError::Invalid(format!(
                        "task {task_id} is not the sender: only the sender reports delivery"
                    )));
                }
            }
            job_id.to_string()
        };
        if self
            .store
            .mark_delivered(&job_id, rows_in, self.now())
            .await?
        {
            tracing::info!(job = %job_id, rows_in, "job delivered");
            self.refresh_view(&job_id).await?;
        }
        Ok(())
    }

    /// One usage event per party and metric from the reports that arrived, and the
    /// provider rows the sender reported (if it did).
    fn usage_events(
        job_id: &str,
        job: &LiveJob,
        now: i64,
    ) -> Result<(Vec<UsageEventRecord>, HashMap<String, u64>), SchedulerError> {
        let mut usage = Vec::new();
        // The provider rows each provider's sender reported: a finished sender's; in an `fl`
        // job also one that dropped out (its rows took part until then).
        let mut provider_rows = HashMap::new();
        for t in job.tasks.values() {
            // An fl provider that ended without its rows (its worker lost) is rated on the
            // rows of its delivery report, if it sent one.
            if job.is_fl()
                && t.role == TaskRole::Sender
                && let Some(rows) = t.delivered_rows
                && t.report.as_ref().is_none_or(|r| r.usage.rows_in == 0)
            {
                provider_rows.insert(t.party.clone(), rows);
            }
            let Some(r) = &t.report else { continue };
            if t.role == TaskRole::Sender && (r.ok || job.is_fl()) && r.usage.rows_in > 0 {
                provider_rows.insert(t.party.clone(), r.usage.rows_in);
            }
            let u = &r.usage;
            for (metric, q) in [
                ("cpu_ms", u.cpu_ms),
                ("wall_ms", u.wall_ms),
                ("rows_in", u.rows_in),
                ("bytes_sent", u.bytes_sent),
                ("bytes_received", u.bytes_received),
                ("rounds", u.frames_sent),
                ("peak_rss_kb", u.peak_rss_kb),
                ("triples", u.triples),
                ("dropouts", u.dropouts),
            ]
            .into_iter()
            .map(|(m, q)| (std::borrow::Cow::Borrowed(m), q))
            .chain(
                // An fl aggregator's dropouts of each round that had any.
                u.round_dropouts
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| **d > 0)
                    .map(|(r, d)| {
                        (
                            std::borrow::Cow::Owned(format!("dropouts_round_{}", r + 1)),
                            u64::from(*d),
                        )
                    }),
            ) {
                let metric = metric.as_ref();
                // Only MPC tasks draw triples: no zero event for the others. Dropouts are an
                // `fl` aggregator's, zero included.
                if metric == "triples" && q == 0 {
                    continue;
                }
                if metric == "dropouts" && !(job.is_fl() && t.role == TaskRole::Receiver) {
                    continue;
                }
                let quantity = i64::try_from(q).map_err(|_| {
                    SchedulerError::Invalid(format!("usage {metric} = {q} is out of range"))
                })?;
                usage.push(UsageEventRecord {
                    event_id: derive_id(&[job_id, &t.party, t.role.as_str(), metric, "1"]),
                    job_id: job_id.to_string(),
                    party: t.party.clone(),
                    metric: metric.into(),
                    // An fl job runs no PSI protocol.
                    protocol: if job.is_fl() {
                        String::new()
                    } else {
                        job.protocol.as_str().into()
                    },
                    attempt: 1,
                    quantity,
                    event_time_ms: now,
                });
            }
        }
        Ok((usage, provider_rows))
    }

    fn success(&self, job_id: &str, job: &LiveJob) -> Result<JobFinish, SchedulerError> {
        let now = self.now();
        let (usage, provider_rows) = Self::usage_events(job_id, job, now)?;
        let mut result = (0, String::new());
        let mut result_file = None;
        let mut provider_result_file = None;
        let mut empty_keys = EmptyKeyCounts::default();
        for t in job.tasks.values() {
            let Some(r) = &t.report else { continue };
            match t.role {
                TaskRole::Sender => {
                    empty_keys.provider = Some(r.empty_keys);
                    provider_result_file.clone_from(&r.result_file);
                }
                TaskRole::Receiver => {
                    empty_keys.buyer = Some(r.empty_keys);
                    result_file.clone_from(&r.result_file);
                    if let Some(size) = r.result_size {
                        result = (size, r.result_location.clone());
                    }
                }
            }
        }
        let rows_of = |party: &str| provider_rows.get(party).copied().unwrap_or(0);
        let mut parts = vec![Part {
            part: None,
            provider: &job.provider_party,
            price: &job.price,
            rows: rows_of(&job.provider_party),
        }];
        parts.extend(job.co_parts.iter().map(|c| Part {
            part: Some(&c.licence_id),
            provider: &c.provider,
            price: &c.price,
            rows: rows_of(&c.provider),
        }));
        let settled = settle_parts(
            &Settling {
                job_id,
                customer: &job.user,
                scene: &job.scene,
                admitted_at: job.created_at_ms,
                now,
                holds: &job.holds,
                ended: None,
            },
            &parts,
        )?;
        Ok(JobFinish::Succeeded {
            result_size: result.0,
            result_location: result.1,
            result_file,
            provider_result_file,
            empty_keys,
            usage,
            ledger: settled.ops,
            bill_lines: settled.lines,
            charge_micros: settled.charge_micros,
        })
    }

    /// Ends a job: posts the charge of a success, commits or releases the count, tells
    /// workers still running its tasks to stop, and publishes the final view. Idempotent.
    pub(crate) async fn finish(
        &self,
        job_id: &str,
        finish: JobFinish,
    ) -> Result<(), SchedulerError> {
        let live = self.jobs.lock().await.remove(job_id);
        if let Some(l) = &live {
            self.index_tasks(job_id, l, false);
        }
        let now = self.now();
        let attempt = finish.clone();
        let ended = match self.store.finish_job(job_id, &finish, now).await {
            // Past its delivery point the job ends consumed and charged.
            Err(tessera_store::StoreError::Delivered { .. }) => {
                match self
                    .after_delivery(job_id, finish, live.as_ref(), now)
                    .await
                {
                    Ok(charged) => self
                        .store
                        .finish_job(job_id, &charged, now)
                        .await
                        .map_err(SchedulerError::from),
                    Err(e) => Err(e),
                }
            }
            other => other.map_err(SchedulerError::from),
        };
        let outcome = match ended {
            Ok(outcome) => outcome,
            Err(e) => {
                // Nothing was recorded: keep the job live, so that a later event (a report,
                // a worker loss, a cancel, a restart's recovery) can still end it, and its
                // workers' running counts stay true.
                tracing::error!(job = %job_id, error = %e, "ending the job failed; it stays live and is retried");
                if let Some(live) = live {
                    self.index_tasks(job_id, &live, true);
                    self.jobs.lock().await.insert(job_id.to_string(), live);
                }
                self.unended.lock().await.insert(
                    job_id.to_string(),
                    (attempt, now.saturating_add(UNENDED_RETRY_MS)),
                );
                return Err(e);
            }
        };
        let seconds = outcome
            .job
            .finished_at_ms
            .unwrap_or(now)
            .saturating_sub(outcome.job.created_at_ms) as f64
            / 1000.0;
        self.metrics
            .ended(&outcome.job.scene, outcome.job.state.as_str(), seconds);
        // The final answer is the parties' receipt: the gateway signs a head covering the
        // job's end for it; the background sealer records a checkpoint within a second.
        if let Some(live) = live {
            let workers = self.workers.lock().await;
            for (task_id, t) in live.tasks.iter().filter(|(_, t)| t.report.is_none()) {
                if let Some(d) = workers
                    .get(&t.worker_id)
                    .and_then(|w| w.deliveries.as_ref())
                {
                    // The other party's worker learns only what its side may see.
                    let cancel = Delivery::Cancel {
                        task_id: task_id.clone(),
                        reason: crate::redact::error_seen_by(&outcome.job, Some(t.role)),
                    };
                    if let Err(mpsc::error::TrySendError::Full(cancel)) = d.try_send(cancel) {
                        // Behind the worker's queued tasks, waiting as a dispatch would (not
                        // here: the end is recorded and answered already).
                        let (d, wait) = (
                            d.clone(),
                            Duration::from_millis(self.config.delivery_wait_ms),
                        );
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(wait, d.send(cancel)).await;
                        });
                    }
                }
            }
            drop(workers);
            tracing::info!(job = %job_id, state = %outcome.job.state, "job finished");
            live.view.send_replace(JobView {
                job: outcome.job,
                progress: live.progress,
                refusals: Vec::new(),
            });
        }
        Ok(())
    }

    /// Tries again to record the ends that failed (see [`Scheduler::finish`]), each at most
    /// once per [`UNENDED_RETRY_MS`]; a failure is logged and retried later. Called by the
    /// monitor.
    pub(crate) async fn retry_unended(&self) {
        let now = self.now();
        let due: Vec<(String, JobFinish)> = {
            let mut unended = self.unended.lock().await;
            let ids: Vec<String> = unended
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| unended.remove(&id).map(|(f, _)| (id, f)))
                .collect()
        };
        for (job_id, finish) in due {
            // On failure `finish` logs and re-queues it.
            if self.finish(&job_id, finish).await.is_ok() {
                tracing::info!(job = %job_id, "a job's end was recorded on retry");
            }
        }
    }

    /// The end of a job that failed or was cancelled after its delivery point: rated by
    /// [`settle::delivered_job`] on the provider rows known ([`settle::delivered_rows`]: the
    /// sender's final report if it arrived, else the rows of its delivery report), capped at
    /// the job's holds. Works from the store alone when the job is not live (after an
    /// operator restart).
    async fn after_delivery(
        &self,
        job_id: &str,
        finish: JobFinish,
        live: Option<&LiveJob>,
        now: i64,
    ) -> Result<JobFinish, SchedulerError> {
        let (state, error, origin) = match finish {
            JobFinish::Failed { error, origin, .. } => (JobState::Failed, error, origin),
            JobFinish::Cancelled { reason } => (JobState::Cancelled, reason, None),
            other => return Ok(other),
        };
        let job = self.store.job(job_id).await?;
        let licence = self.store.licence(&job.licence_id).await?;
        let co_parts = self.co_parts(&job).await?;
        let holds = self.store.job_holds(job_id).await?;
        let (usage, final_rows) = match live {
            Some(l) => Self::usage_events(job_id, l, now)?,
            None => (Vec::new(), HashMap::new()),
        };
        // One provider: its final report's rows, else those of its delivery report. An `fl`
        // job's providers: each one's report, if it sent one (the delivery's rows are the
        // first provider's to deliver, not necessarily this licence's).
        let rows = if co_parts.is_empty() {
            settle::delivered_rows(
                final_rows.get(&licence.licensor).copied(),
                job.delivered_rows.unwrap_or(0),
            )
        } else {
            final_rows.get(&licence.licensor).copied().unwrap_or(0)
        };
        let mut parts = vec![Part {
            part: None,
            provider: &licence.licensor,
            price: &licence.price,
            rows,
        }];
        parts.extend(co_parts.iter().map(|c| Part {
            part: Some(&c.licence_id),
            provider: &c.provider,
            price: &c.price,
            rows: final_rows.get(&c.provider).copied().unwrap_or(0),
        }));
        let settled = settle_parts(
            &Settling {
                job_id,
                customer: &job.user,
                scene: &job.scene,
                admitted_at: job.created_at_ms,
                now,
                holds: &holds,
                ended: Some(state.as_str()),
            },
            &parts,
        )?;
        tracing::warn!(job = %job_id, %state, charge = settled.charge_micros, "job ended after delivery: charged");
        Ok(JobFinish::EndedAfterDelivery {
            state,
            error,
            origin,
            usage,
            ledger: settled.ops,
            bill_lines: settled.lines,
            charge_micros: settled.charge_micros,
        })
    }

    /// Cancels a job on behalf of `by` (a caller's description, recorded in the job's end),
    /// whom the gateway has authorised (`AccountService::check_job`: its buyer or the
    /// operator). Cancelling an ended job changes nothing. Runs detached
    /// ([`Scheduler::detached`]).
    ///
    /// # Errors
    /// `NotFound` for an unknown job; the store's.
    pub async fn cancel(&self, job_id: &str, by: &str) -> Result<JobView, SchedulerError> {
        let (job_id, by) = (job_id.to_string(), by.to_string());
        self.detached(move |s| async move { s.cancel_now(&job_id, &by).await })
            .await
    }

    /// Ends a job its provider withdrew (the publication it runs under was revoked): not the
    /// buyer's doing, so it fails with its count released and its holds voided — or, past its
    /// delivery point, ends consumed and charged like any end after delivery. Idempotent.
    ///
    /// # Errors
    /// `NotFound`; a store failure.
    pub async fn withdraw(&self, job_id: &str, reason: &str) -> Result<JobView, SchedulerError> {
        let (job_id, reason) = (job_id.to_string(), reason.to_string());
        self.detached(move |s| async move {
            let view = s.job(&job_id).await?;
            if !view.job.is_terminal() {
                s.finish(
                    &job_id,
                    JobFinish::Failed {
                        error: reason,
                        buyer_fault: false,
                        origin: None,
                    },
                )
                .await?;
            }
            s.job(&job_id).await
        })
        .await
    }

    async fn cancel_now(&self, job_id: &str, by: &str) -> Result<JobView, SchedulerError> {
        let view = self.job(job_id).await?;
        if !view.job.is_terminal() {
            self.finish(
                job_id,
                JobFinish::Cancelled {
                    reason: format!("cancelled by {by}"),
                },
            )
            .await?;
        }
        self.job(job_id).await
    }
}

/// Time left in `p`'s phase at `now`, from the rate since the phase began.
/// One licence's share of a job's settlement.
struct Part<'a> {
    /// `None` for the job's own licence, the licence for a further one.
    part: Option<&'a str>,
    provider: &'a str,
    price: &'a tessera_accounting::JobPrice,
    /// The provider rows it is rated on.
    rows: u64,
}

/// What every part of a settlement shares.
struct Settling<'a> {
    job_id: &'a str,
    customer: &'a str,
    scene: &'a str,
    admitted_at: i64,
    now: i64,
    /// Every hold of the job; each part draws its own (`settle::is_hold_of`).
    holds: &'a [tessera_store::HoldRecord],
    /// `Some("failed" | "cancelled")` for an end after the delivery point.
    ended: Option<&'a str>,
}

/// A job's settlement: one per licence, summed.
struct Settled {
    ops: Vec<tessera_accounting::ledger::LedgerOp>,
    lines: Vec<tessera_accounting::bill::NewBillLine>,
    charge_micros: i64,
}

/// Settles each of `parts` on its own holds (the one part of a one-licence job on all of
/// them) and sums the charges.
fn settle_parts(s: &Settling<'_>, parts: &[Part<'_>]) -> Result<Settled, SchedulerError> {
    let mut out = Settled {
        ops: Vec::new(),
        lines: Vec::new(),
        charge_micros: 0,
    };
    for p in parts {
        let holds: Vec<tessera_store::HoldRecord> = if parts.len() == 1 {
            s.holds.to_vec()
        } else {
            s.holds
                .iter()
                .filter(|h| settle::is_hold_of(h, s.job_id, p.part))
                .cloned()
                .collect()
        };
        let job = FinishedJob {
            job_id: s.job_id,
            part: p.part,
            customer: s.customer,
            provider: p.provider,
            scene: s.scene,
            price: p.price,
            rows: p.rows,
            holds: &holds,
            admitted_at: s.admitted_at,
            now: s.now,
        };
        let settled = match s.ended {
            None => settle::job_settlement(&job),
            Some(ended) => settle::delivered_job(&job, ended),
        }
        .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        out.ops.extend(settled.ops);
        out.lines.push(settled.line);
        out.charge_micros = out
            .charge_micros
            .checked_add(settled.charge.total_micros)
            .ok_or_else(|| SchedulerError::Invalid("the job's charge overflows".into()))?;
    }
    Ok(out)
}

fn eta_ms(p: &PhaseProgress, now: i64) -> Option<u64> {
    let (t0, d0) = p.began;
    let elapsed = u64::try_from(now.saturating_sub(t0)).ok()?;
    let gained = p.done.checked_sub(d0).filter(|&g| g > 0)?;
    if p.total == 0 {
        return None;
    }
    let left = p.total.saturating_sub(p.done);
    Some(
        u64::try_from(u128::from(elapsed) * u128::from(left) / u128::from(gained))
            .unwrap_or(u64::MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_follows_the_rate_since_the_phase_began() {
        let at = |done, total, began| PhaseProgress {
            party: "p".into(),
            role: TaskRole::Sender,
            phase: "bucket 2/4".into(),
            done,
            total,
            eta_ms: None,
            began,
        };
        // 250 rows in 1 s since the phase began at 0 rows: 750 rows left take 3 s.
        assert_eq!(eta_ms(&at(250, 1_000, (1_000, 0)), 2_000), Some(3_000));
        // Began at 100 rows: 150 rows in 1 s, 750 left take 5 s.
        assert_eq!(eta_ms(&at(250, 1_000, (1_000, 100)), 2_000), Some(5_000));
        assert_eq!(eta_ms(&at(1_000, 1_000, (0, 0)), 9_000), Some(0));
        assert_eq!(
            eta_ms(&at(250, 1_000, (0, 250)), 9_000),
            None,
            "no change yet"
        );
        assert_eq!(eta_ms(&at(250, 0, (0, 0)), 9_000), None, "no total");
        assert_eq!(
            eta_ms(&at(250, 1_000, (5_000, 0)), 1_000),
            None,
            "clock went back"
        );
        assert_eq!(crate::phase_family("bucket 2/4"), "bucket");
        assert_eq!(crate::phase_family("vole"), "vole");
    }

    fn request(mode: PsiMode, output: &str, carry: &[&str]) -> JobRequest {
        JobRequest {
            user: "u1".into(),
            user_groups: vec![],
            licence_id: "lic".into(),
            scene: "psi".into(),
            buyer_party: "buy".into(),
            buyer_dataset_id: "b".into(),
            buyer_columns: vec!["mail".into(), "tel".into()],
            provider_columns: vec!["email".into(), "phone".into()],
            mode,
            protocol: None,
            key_case: KeyCase::Fold,
            output: output.into(),
            unicode_form: UnicodeForm::Nfc,
            empty_keys: EmptyKeys::Skip,
            carry_columns: carry.iter().map(|c| c.to_string()).collect(),
            request_id: None,
            preview_rows: None,
            mpc: None,
            join: None,
            payload_columns: Vec::new(),
            mpc_triples: None,
            fl: None,
        }
    }

    /// `(mode, output, carried columns, accepted)` per row.
    fn check(cases: &[(PsiMode, &str, &[&str], bool)]) {
        for (mode, output, carry, ok) in cases {
            let got = request(*mode, output, carry).validate();
            assert_eq!(got.is_ok(), *ok, "{mode} {output:?} {carry:?}: {got:?}");
        }
    }

    #[test]
    fn carried_columns_need_a_written_result_and_distinct_names() {
        use PsiMode::*;
        let many: Vec<String> = (0..=COLUMNS_MAX).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        check(&[
            (Intersection, "r.csv", &[], true),
            (Intersection, "r.csv", &["name", "spend"], true),
            (Intersection, "", &["name"], false),
            (Size, "r.csv", &["name"], false),
            (Intersection, "r.csv", &["name", "name"], false),
            (Intersection, "r.csv", &["tel"], false),
            (Intersection, "r.csv", &[""], false),
            (Intersection, "r.csv", &many, false),
        ]);
    }

    #[test]
    fn the_protocol_defaults_by_mode_and_rr22_refuses_size_mode() {
        let mut r = request(PsiMode::Intersection, "", &[]);
        assert_eq!(r.protocol(), PsiProtocol::Rr22);
        r.mode = PsiMode::Size;
        assert_eq!(r.protocol(), PsiProtocol::Ecdh);
        assert!(r.validate().is_ok());
        r.protocol = Some(PsiProtocol::Rr22);
        let e = r.validate().expect_err("rr22 in size mode");
        assert!(
            e.to_string().contains("rr22 cannot run in size mode"),
            "{e}"
        );
        r.mode = PsiMode::Intersection;
        assert!(r.validate().is_ok());
        r.protocol = Some(PsiProtocol::Ecdh);
        assert!(r.validate().is_ok());
        r.protocol = Some(PsiProtocol::EcdhOprf);
        assert!(r.validate().is_ok());
        r.mode = PsiMode::Both;
        let e = r.validate().expect_err("ecdh-oprf in both mode");
        assert!(e.to_string().contains("intersection mode only"), "{e}");
    }

    #[test]
    fn size_mode_refuses_an_output_name_it_would_ignore() {
        use PsiMode::*;
        check(&[
            (Size, "", &[], true),
            (Size, "sz.csv", &[], false),
            (Intersection, "sz.csv", &[], true),
        ]);
    }
}
