//! The job lifecycle on the operator node: admission (policy check, count reservation and job
//! record in one store transaction), placement on live workers whose attributes fit the
//! policy, dispatch with signed tickets, progress, completion (count commit or release, usage
//! events, charge), cancellation and worker-loss handling.
//!
//! The scheduler knows nothing about gRPC: workers are reached through bounded channels of
//! [`Delivery`] that the gateway turns into a task stream.

pub mod access;
pub mod accounts;
pub mod audit;
pub mod billing;
pub mod dealer;
pub mod lists;
pub mod metrics;
pub mod records;
pub mod redact;
mod registry;
pub mod resume;
mod submit;
pub mod tee;
pub mod trade;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Weak};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use tessera_core::ticket::{SignedTicket, TicketError, TicketSigner};
use tessera_core::{Clock, TaskRole};
use tessera_store::Store;
use tokio::sync::{Mutex, mpsc, watch};

pub use accounts::AccountService;
pub use audit::AuditService;
pub use billing::BillingService;
pub use records::RecordService;
pub use registry::{
    LiveWorker, Registration, WORKER_CERT_VALIDITY_SECS, WORKER_FORGET_MS, WorkerView,
};
pub use submit::{
    FL_FEATURES_MAX, FL_PROVIDERS_MAX, FL_ROUNDS_MAX, FL_ROWS_MAX_DEFAULT, FlRequest, JobRequest,
    SUPPORTED_SCENES, TaskReport, TaskUsage, resolve_triples,
};
pub use tee::{AttestOutcome, TeeService};
/// The records the services hand out, re-exported so the gateway needs no store dependency.
pub use tessera_store::{
    AccountStatus, Amounts, BalanceRecord, BillLineRecord, BillRecord, DatasetRecord,
    FailureOrigin, JobRecord, LicenceRecord, LimitScope, PartyRecord, Refusal, ResultFileRecord,
    RuleRefusal, Split, StatementRecord, StoreError, SubscriptionView, TokenRecord, TransferRecord,
    UsageEventRecord, UserRecord,
};

/// Why a scheduler call failed (refusals are not errors: they are recorded job states).
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Unknown worker, job or task.
    #[error("{0} not found")]
    NotFound(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The id is held by something live (a worker id by a connected worker).
    #[error("{0}")]
    InUse(String),
    /// Something the operator produced could not be encoded; nothing was signed or sent.
    #[error("could not encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// A ticket could not be signed.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The work did not run to its end: the scheduler is shutting down, or the task running
    /// it panicked.
    #[error("interrupted: {0}")]
    Interrupted(String),
    /// A bounded service is full (the dealer's sessions): nothing was taken; trying again
    /// later is safe.
    #[error("busy: {0}")]
    Busy(String),
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A worker silent for this long is lost.
    pub heartbeat_timeout_ms: i64,
    /// Interval workers are asked to heartbeat at.
    pub heartbeat_interval_ms: u64,
    /// Ticket lifetime.
    pub ticket_ttl_ms: i64,
    /// Tasks buffered per worker channel.
    pub delivery_queue_max: usize,
    /// How long a dispatch waits for room in a worker's full task queue before the job fails
    /// as undeliverable, in ms (default 10 s): a worker that takes tasks more slowly than
    /// they are admitted slows the submissions down instead of failing them.
    pub delivery_wait_ms: u64,
    /// The operator's share of a data purchase settled through the trade flow, in basis
    /// points (default 0).
    pub trade_operator_share_bps: u32,
    /// How long a resumable job whose run broke off (a party's worker restarted, the link
    /// between the parties broke) waits for both parties' workers to be back before it fails,
    /// in ms (default 15 minutes; 0: such a job fails at once). See [`resume`].
    pub resume_window_ms: i64,
    /// How many times one job may be resumed (default 3); the next break fails it.
    pub resumes_max: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 10_000,
            heartbeat_interval_ms: 2_000,
            ticket_ttl_ms: tessera_core::limits::TICKET_TTL_MS,
            delivery_queue_max: 256,
            delivery_wait_ms: 10_000,
            trade_operator_share_bps: 0,
            resume_window_ms: 15 * 60 * 1000,
            resumes_max: 3,
        }
    }
}

/// What [`Scheduler::recover`] did with the jobs an earlier run of the operator left
/// unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Ended as failed (not resumable, or resuming is off).
    pub failed: usize,
    /// Taken up as interrupted: they run on or resume once their workers are back.
    pub taken_up: usize,
}

/// Something sent to a worker.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Run this task.
    Assign {
        /// Exact spec bytes (JSON of `TaskSpec`).
        spec_json: String,
        /// The operator's ticket for it.
        ticket: SignedTicket,
    },
    /// Stop this task.
    Cancel {
        /// Task id.
        task_id: String,
        /// Why.
        reason: String,
    },
}

/// One party's progress in one phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseProgress {
    /// Party.
    pub party: String,
    /// The reporting task's role.
    pub role: TaskRole,
    /// Phase name.
    pub phase: String,
    /// Units done.
    pub done: u64,
    /// Units in the phase.
    pub total: u64,
    /// Estimated time left in the phase, in ms: the rate since the first report of the phase
    /// applied to what is left; `None` until two reports with different counts (or without
    /// a total).
    pub eta_ms: Option<u64>,
    /// When the phase's first report came (ms since epoch) and its count then.
    #[serde(skip)]
    pub(crate) began: (i64, u64),
}

/// A phase's family: its name up to the first space, so that "bucket 2/9" continues
/// "bucket 1/9" (one count across the run) instead of starting a new phase.
pub fn phase_family(phase: &str) -> &str {
    phase.split(' ').next().unwrap_or(phase)
}

/// A job with its live progress, as `watch` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    /// The stored job.
    pub job: JobRecord,
    /// Latest progress per party.
    pub progress: Vec<PhaseProgress>,
    /// Why admission refused it, typed (only on the answer to a submission; a job read back
    /// from the store carries its reasons as text in `job.reasons`).
    pub refusals: Vec<Refusal>,
}

#[derive(Debug)]
struct LiveTask {
    worker_id: String,
    party: String,
    role: TaskRole,
    report: Option<TaskReport>,
    /// Its attempt ended without a result and it runs again when the job resumes: it reported
    /// a broken link, or its worker came back without it ([`resume`]).
    stopped: bool,
    /// Not known whether it still runs: its worker registered again, or the operator
    /// restarted; settled when the worker's task stream opens and names what it runs.
    unconfirmed: bool,
    /// The rows it reported with its delivery milestone (a sender's), kept in memory: what an
    /// `fl` provider that ends without a report is rated on.
    delivered_rows: Option<u64>,
}

#[derive(Debug)]
struct LiveJob {
    user: String,
    scene: String,
    protocol: tessera_core::PsiProtocol,
    created_at_ms: i64,
    holds: Vec<tessera_store::HoldRecord>,
    buyer_party: String,
    provider_party: String,
    price: tessera_accounting::JobPrice,
    /// An `fl` job's further licences, each settled as a part of its own (see
    /// `tessera_accounting::settle::FinishedJob::part`); empty for other jobs.
    co_parts: Vec<CoPart>,
    tasks: HashMap<String, LiveTask>,
    progress: Vec<PhaseProgress>,
    view: watch::Sender<JobView>,
    /// Whether a broken-off run can be taken up where it stopped (bucketed PSI: see
    /// [`resume`]).
    resumable: bool,
    /// Set while the job waits to resume.
    interrupted: Option<resume::Interruption>,
    /// Resumes so far.
    resumes: u32,
}

impl LiveJob {
    /// The live state of `job` with its `tasks`, none of them reported yet; `unconfirmed`
    /// when it is not known whether they still run (taken up after an operator restart).
    #[allow(clippy::too_many_arguments)]
    fn new(
        job: &tessera_store::JobRecord,
        tasks: &[tessera_store::TaskRecord],
        holds: Vec<tessera_store::HoldRecord>,
        buyer_party: String,
        provider_party: String,
        price: tessera_accounting::JobPrice,
        unconfirmed: bool,
    ) -> Self {
        let (view, _) = watch::channel(JobView {
            job: job.clone(),
            progress: Vec::new(),
            refusals: Vec::new(),
        });
        LiveJob {
            user: job.user.clone(),
            scene: job.scene.clone(),
            protocol: job.protocol,
            created_at_ms: job.created_at_ms,
            holds,
            buyer_party,
            provider_party,
            price,
            co_parts: Vec::new(),
            tasks: tasks
                .iter()
                .map(|t| {
                    (
                        t.task_id.clone(),
                        LiveTask {
                            worker_id: t.worker_id.clone(),
                            party: t.party.clone(),
                            role: t.role,
                            report: None,
                            stopped: false,
                            unconfirmed,
                            delivered_rows: None,
                        },
                    )
                })
                .collect(),
            progress: Vec::new(),
            view,
            resumable: resume::resumable(job),
            interrupted: None,
            resumes: 0,
        }
    }
}

/// A further licence of a job (an `fl` job's), as its settlement needs it.
#[derive(Debug, Clone)]
struct CoPart {
    licence_id: String,
    provider: String,
    price: tessera_accounting::JobPrice,
}

impl LiveJob {
    /// Whether this is an `fl` job (providers may drop out; the aggregator decides the end).
    fn is_fl(&self) -> bool {
        self.scene == tessera_core::job::scene::FL
    }
}

/// Fresh ids (job, task, session, ticket and licence ids), shared by the scheduler and the
/// record service.
pub(crate) struct Ids {
    rng: std::sync::Mutex<ChaCha20Rng>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ids")
    }
}

impl Ids {
    /// A fresh id: `prefix`, 12 hex digits of the clock's milliseconds since the epoch, then
    /// 16 random hex digits (64 bits). Ids made later sort after earlier ones (to the
    /// millisecond), so the store's indexes keyed by them grow at their end: a batch of
    /// admissions dirties a few index pages instead of one page per job and index (issue
    /// "The control plane at 2,000 admissions a second"). No id is a secret: every record
    /// named by id is checked against the caller.
    pub(crate) fn next(&self, prefix: &str) -> String {
        use rand::RngCore;
        let mut b = [0u8; 8];
        match self.rng.lock() {
            Ok(mut r) => r.fill_bytes(&mut b),
            Err(poisoned) => poisoned.into_inner().fill_bytes(&mut b),
        }
        let ms = u64::try_from(self.clock.now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
        format!("{prefix}{ms:012x}{}", hex::encode(b))
    }

    /// Fills `out` from the injected RNG (a dealer's seed).
    pub(crate) fn fill(&self, out: &mut [u8]) {
        use rand::RngCore;
        match self.rng.lock() {
            Ok(mut r) => r.fill_bytes(out),
            Err(poisoned) => poisoned.into_inner().fill_bytes(out),
        }
    }

    /// 32 fresh random bytes (key material and seeds for the trade flow).
    pub(crate) fn bytes32(&self) -> [u8; 32] {
        use rand::RngCore;
        let mut b = [0u8; 32];
        match self.rng.lock() {
            Ok(mut r) => r.fill_bytes(&mut b),
            Err(poisoned) => poisoned.into_inner().fill_bytes(&mut b),
        }
        b
    }

    /// A fresh token of `kind` (its secret from the same RNG, seeded from the OS).
    pub(crate) fn token(&self, kind: tessera_auth::TokenKind) -> tessera_auth::Token {
        match self.rng.lock() {
            Ok(mut r) => tessera_auth::Token::generate(kind, &mut *r),
            Err(poisoned) => tessera_auth::Token::generate(kind, &mut *poisoned.into_inner()),
        }
    }
}

/// The scheduler.
pub struct Scheduler {
    /// This scheduler, for work that must outlive its caller ([`Scheduler::detached`]).
    this: Weak<Scheduler>,
    store: Store,
    clock: Arc<dyn Clock>,
    signer: Arc<TicketSigner>,
    audit: AuditService,
    config: SchedulerConfig,
    ids: Arc<Ids>,
    workers: Mutex<HashMap<String, LiveWorker>>,
    jobs: Mutex<HashMap<String, LiveJob>>,
    /// Task id → job id of the live jobs' tasks, so that a worker's report finds its job
    /// without a scan of every live job. Only a hint: a report whose task it does not name
    /// (or names wrongly) is looked for by a scan ([`Scheduler::index_tasks`]).
    task_jobs: std::sync::Mutex<HashMap<String, String>>,
    /// The running tasks per worker that admissions place by
    /// ([`Scheduler::placement_workers`]): counted at most [`registry::RUNNING_SNAPSHOT_MS`]
    /// ago, plus the tasks dispatched since.
    running_snapshot: Mutex<Option<registry::RunningSnapshot>>,
    /// Ends that could not be recorded, retried by the monitor: job id → (the end, when to try
    /// again, in UTC milliseconds).
    unended: Mutex<HashMap<String, (tessera_store::JobFinish, i64)>>,
    /// What `/metrics` shows.
    metrics: Arc<metrics::Metrics>,
    /// The certificate authority that signs workers' peer-link certificates (installed by
    /// the operator at start; none: workers get no certificate).
    ca: std::sync::OnceLock<Arc<tessera_pki::CertificateAuthority>>,
    /// The `tee` scene's appraisal, results and key broker (installed by the operator at
    /// start; none: `tee` jobs are refused).
    tee: std::sync::OnceLock<Arc<tee::TeeService>>,
    /// The dealer of `mpc` jobs with dealer triples ([`dealer`]).
    dealer: dealer::DealerHub,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("signer", &self.signer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler over `store`, signing tickets with `signer`, with ids drawn from an RNG
    /// seeded by `rng_seed`.
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        signer: TicketSigner,
        config: SchedulerConfig,
        rng_seed: [u8; 32],
    ) -> Arc<Self> {
        let signer = Arc::new(signer);
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            audit: AuditService::new(store.clone(), signer.clone(), clock.clone()),
            store,
            clock: clock.clone(),
            signer,
            config,
            ids: Arc::new(Ids {
                rng: std::sync::Mutex::new(ChaCha20Rng::from_seed(rng_seed)),
                clock: clock.clone(),
            }),
            workers: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            task_jobs: std::sync::Mutex::new(HashMap::new()),
            running_snapshot: Mutex::new(None),
            unended: Mutex::new(HashMap::new()),
            metrics: Arc::new(metrics::Metrics::new()),
            ca: std::sync::OnceLock::new(),
            tee: std::sync::OnceLock::new(),
            dealer: dealer::DealerHub::default(),
        })
    }

    /// Installs the certificate authority that signs workers' peer-link certificates at
    /// registration; `false` if one was installed already (it is kept).
    pub fn install_ca(&self, ca: Arc<tessera_pki::CertificateAuthority>) -> bool {
        self.ca.set(ca).is_ok()
    }

    /// The CA certificate (PEM) peers' certificates chain to, if a CA is installed.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca.get().map(|c| c.cert_pem().to_owned())
    }

    /// The metrics in the Prometheus text format, with live workers per party, jobs per state
    /// and ledger transfers per kind read now.
    ///
    /// # Errors
    /// A store failure.
    pub async fn render_metrics(&self) -> Result<String, SchedulerError> {
        let mut live: std::collections::BTreeMap<String, i64> = Default::default();
        for w in self.workers().await {
            *live.entry(w.attributes.party).or_default() += i64::from(w.live);
        }
        let live: Vec<(String, i64)> = live.into_iter().collect();
        let jobs = self.store.count_jobs_by_state().await?;
        let transfers = self.store.count_transfers_by_kind().await?;
        Ok(self.metrics.render(&live, &jobs, &transfers))
    }

    /// The store, for the node's lifecycle (closing it at shutdown). Requests go through the
    /// services ([`Scheduler::records`], [`Scheduler::billing`], [`Scheduler::audit`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The datasets-and-licences service over this scheduler's store, clock and ids.
    pub fn records(&self) -> RecordService {
        RecordService::new(self.store.clone(), self.clock.clone(), self.ids.clone())
    }

    /// The accounts service (users, groups, parties, tokens, authentication) over this
    /// scheduler's store, clock and RNG.
    pub fn accounts(&self) -> AccountService {
        AccountService::new(
            self.store.clone(),
            self.clock.clone(),
            self.ids.clone(),
            self.metrics.clone(),
        )
    }

    /// The trade service (T/AI 123.12 appendix A.1–A.3) over this scheduler's store, clock,
    /// ids and account service; it cancels jobs through this scheduler when a publication is
    /// revoked.
    pub fn trade(&self) -> trade::TradeService {
        trade::TradeService::new(
            self.store.clone(),
            self.clock.clone(),
            self.ids.clone(),
            self.accounts(),
            self.this.clone(),
        )
    }

    /// The billing service over this scheduler's store and clock.
    pub fn billing(&self) -> BillingService {
        BillingService::new(self.store.clone(), self.clock.clone())
    }

    /// The audit service over this scheduler's store, signing checkpoints with its key.
    pub fn audit(&self) -> AuditService {
        self.audit.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The operator's public ticket key (hex).
    pub fn operator_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn random_id(&self, prefix: &str) -> String {
        self.ids.next(prefix)
    }

    /// Runs `work` on a task of its own and waits for its answer. The callers are gRPC
    /// handlers, and the server drops a handler at its next await when the client's
    /// connection breaks (a worker killed while it reports, a client that gives up): a job's
    /// end stopped there — its report taken in but not acted on, or its live record removed
    /// and its store transaction rolled back — left the job `running` with nothing left to
    /// end it. Detached, a change of a job's life once begun is carried to its end whether or
    /// not anyone still waits for the answer.
    ///
    /// # Errors
    /// `work`'s; [`SchedulerError::Interrupted`] when the scheduler is shutting down or the
    /// task panicked.
    async fn detached<T, F, Fut>(&self, work: F) -> Result<T, SchedulerError>
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<T, SchedulerError>> + Send + 'static,
        T: Send + 'static,
    {
        let this = self
            .this
            .upgrade()
            .ok_or_else(|| SchedulerError::Interrupted("the scheduler is shutting down".into()))?;
        tokio::spawn(work(this))
            .await
            .map_err(|e| SchedulerError::Interrupted(e.to_string()))?
    }

    /// Ends every job left admitted or running by a previous run of the operator, except the
    /// resumable ones, which are taken up as interrupted ([`resume`]: their tasks may run on,
    /// or resume). Before its delivery point the count is released and the holds voided;
    /// after it the count is consumed and the job charged.
    ///
    /// Returns how many jobs were failed and how many taken up.
    pub async fn recover(&self) -> Result<Recovered, SchedulerError> {
        let unfinished = self.store.unfinished_jobs().await?;
        let mut recovered = Recovered::default();
        for j in &unfinished {
            if self.reattach(j).await? {
                recovered.taken_up += 1;
                continue;
            }
            recovered.failed += 1;
            self.finish(
                &j.job_id,
                tessera_store::JobFinish::Failed {
                    error: "operator restarted while the job ran".into(),
                    buyer_fault: false,
                    origin: None,
                },
            )
            .await?;
        }
        Ok(recovered)
    }

    /// A job with its live progress.
    pub async fn job(&self, job_id: &str) -> Result<JobView, SchedulerError> {
        if let Some(j) = self.jobs.lock().await.get(job_id) {
            return Ok(j.view.borrow().clone());
        }
        let job = self.store.job(job_id).await.map_err(|e| match e {
            StoreError::NotFound { .. } => SchedulerError::NotFound(format!("job {job_id}")),
            e => e.into(),
        })?;
        Ok(JobView {
            job,
            progress: Vec::new(),
            refusals: Vec::new(),
        })
    }

    /// Follows a job: the receiver sees every change until the job ends.
    pub async fn watch(&self, job_id: &str) -> Result<watch::Receiver<JobView>, SchedulerError> {
        if let Some(j) = self.jobs.lock().await.get(job_id) {
            return Ok(j.view.subscribe());
        }
        let view = self.job(job_id).await?;
        let (_tx, rx) = watch::channel(view);
        Ok(rx)
    }

    /// Connects a worker's delivery channel; the gateway streams the receiver to the worker.
    /// Opens `worker_id`'s task stream; `running` names the tasks the worker runs now (after
    /// an operator restart or a broken stream: those of its tasks it does not name are gone,
    /// see [`resume`]).
    pub async fn connect(
        &self,
        worker_id: &str,
        running: &[String],
    ) -> Result<mpsc::Receiver<Delivery>, SchedulerError> {
        let (tx, rx) = mpsc::channel(self.config.delivery_queue_max);
        // A task the worker still runs whose job this operator no longer runs (it ended while
        // the worker was away, say failed by a restarted operator that could not resume it)
        // is stopped at once rather than computed to the end for a report nobody takes.
        for task_id in self.orphaned_tasks(worker_id, running).await {
            tracing::info!(worker = %worker_id, task = %task_id, "stopping a task whose job is no longer running");
            let cancel = Delivery::Cancel {
                task_id,
                reason: "its job is no longer running on the operator (it ended while this \
                         worker was away)"
                    .into(),
            };
            if tx.try_send(cancel).is_err() {
                break;
            }
        }
        let mut workers = self.workers.lock().await;
        let w = workers
            .get_mut(worker_id)
            .ok_or_else(|| SchedulerError::NotFound(format!("worker {worker_id}")))?;
        w.deliveries = Some(tx);
        w.last_seen_ms = self.now();
        drop(workers);
        self.settle_unconfirmed(worker_id, running).await;
        // Jobs waiting for this worker may go on (the deliveries wait in the channel until
        // the worker's stream takes them).
        if let Some(this) = self.this.upgrade() {
            tokio::spawn(async move { this.check_interrupted().await });
        }
        Ok(rx)
    }
}

impl Scheduler {
    /// Those of `running` (the tasks `worker_id` says it runs) that are no task of this
    /// worker in a live job; at most the delivery queue's length of them.
    async fn orphaned_tasks(&self, worker_id: &str, running: &[String]) -> Vec<String> {
        if running.is_empty() {
            return Vec::new();
        }
        let jobs = self.jobs.lock().await;
        let live: HashSet<&str> = jobs
            .values()
            .flat_map(|j| j.tasks.iter())
            .filter(|(_, t)| t.worker_id == worker_id)
            .map(|(id, _)| id.as_str())
            .collect();
        running
            .iter()
            .filter(|id| !live.contains(id.as_str()))
            .take(self.config.delivery_queue_max)
            .cloned()
            .collect()
    }

    /// The scheduler's clock reading.
    pub fn now_ms(&self) -> i64 {
        self.now()
    }

    /// A fresh random id with `prefix`.
    pub fn new_id(&self, prefix: &str) -> String {
        self.random_id(prefix)
    }
}
