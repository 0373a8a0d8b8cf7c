//! The party worker (`tessera worker`): registers with the operator and declares its
//! attributes, heartbeats, receives tasks over a gRPC stream, refuses any task whose ticket is
//! not signed by the operator's key (or is expired, misaddressed or replayed), runs the engine
//! role against a gRPC peer link, and reports progress and usage (CPU time, wall time, rows
//! in, bytes and frames sent and received, peak memory).
//!
//! Raw rows never leave this process except as the engine's own protocol messages.

pub mod exec;
pub mod fl;
pub mod grant;
pub mod join;
pub mod link;
pub mod mpc;
pub mod oprf;
pub mod preview;
pub mod tee;
pub mod usage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{ConstantBuilder, ExponentialBuilder, Retryable};
use futures::StreamExt;
use tessera_core::ticket::{SignedTicket, TicketVerifier};
use tessera_core::{Clock, TaskSpec, WorkerAttributes};
use tessera_proto::TokenHeader;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_client::OperatorClient;
use tokio::sync::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::exec::{DeliverySink, ExecEnv, TaskError, measured, run_task};
use crate::link::{PeerCredentials, PeerHub, PeerTls, serve_peer, serve_peer_tls};

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Operator URL, e.g. `https://127.0.0.1:7100`.
    pub operator_url: String,
    /// The operator's CA certificate (PEM, `DATA_DIR/ca.pem` on the operator): the operator's
    /// TLS certificate must chain to it before anything, the registration token first, is
    /// sent. Required for an `https` URL.
    pub operator_ca_pem: Option<String>,
    /// Reach the operator at an `http://` URL over plain TCP: an insecure option, for tests
    /// only (the registration token and the worker credential cross in clear).
    pub insecure_plaintext_operator: bool,
    /// Stable id; one is assigned when absent.
    pub worker_id: Option<String>,
    /// Declared attributes.
    pub attributes: WorkerAttributes,
    /// Address the peer-link server binds.
    pub peer_listen: String,
    /// Address other workers dial (defaults to the bound address).
    pub peer_advertise: Option<String>,
    /// Directory datasets are read from.
    pub dataset_dir: PathBuf,
    /// Directory results are written to.
    pub output_dir: PathBuf,
    /// The operator's public key (hex), which signs tickets and audit checkpoints. Required:
    /// a worker refuses to start without it, and refuses an operator presenting another.
    pub operator_key_hex: String,
    /// The party's registration token (`tsr_...`, issued to the party's owner), presented
    /// once at start; the operator then issues the worker its own credential. `Debug` never
    /// shows it.
    pub registration: TokenHeader,
    /// Largest peer frame.
    pub frame_bytes_max: usize,
    /// Peer link idle timeout.
    pub idle_timeout: Duration,
    /// How long to wait for a peer to connect.
    pub connect_timeout: Duration,
    /// Peer links over plain TCP, without certificates: an insecure option, for tests only.
    /// By default a worker sends the operator a certificate request at registration and its
    /// peer links use mutual TLS, each side checking that the other's certificate names the
    /// party and worker its ticket names.
    pub insecure_plaintext_peer: bool,
    /// How often the peer-link certificate is renewed while the worker runs (the operator
    /// issues it for 7 days; default: every 24 hours). A failed renewal is retried every
    /// minute.
    pub cert_renew_interval: Duration,
    /// The enclave this worker runs `tee` tasks in (`None`: none).
    pub tee: Option<TeeConfig>,
    /// Directory of tasks' scratch files (`None`: `OUTPUT_DIR/.tessera-work`).
    pub work_dir: Option<PathBuf>,
    /// Most rows of one PSI bucket: a larger input is bucketed
    /// ([`tessera_psi::bucket`]); default from a 2 GiB memory limit.
    pub bucket_rows: u64,
}

/// A worker's enclave. This build produces evidence of the `insecure-simulated-tee` mode only
/// (no security: development and tests); the operator verifies real SGX/TDX/SEV-SNP evidence,
/// which needs an enclave runtime this build does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeeConfig {
    /// The measurement the simulated evidence claims (what a licence's
    /// `tee:insecure-simulated-tee:measurement=…` and the operator's policy may pin).
    pub measurement: String,
}

impl WorkerConfig {
    /// A configuration with default limits.
    pub fn new(
        operator_url: String,
        attributes: WorkerAttributes,
        dataset_dir: PathBuf,
        output_dir: PathBuf,
    ) -> Self {
        Self {
            operator_url,
            operator_ca_pem: None,
            insecure_plaintext_operator: false,
            worker_id: None,
            attributes,
            peer_listen: "127.0.0.1:0".into(),
            peer_advertise: None,
            dataset_dir,
            output_dir,
            operator_key_hex: String::new(),
            registration: TokenHeader::none(),
            frame_bytes_max: tessera_core::limits::FRAME_BYTES_MAX,
            idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(30),
            insecure_plaintext_peer: false,
            cert_renew_interval: Duration::from_secs(24 * 3600),
            tee: None,
            work_dir: None,
            bucket_rows: tessera_psi::bucket::bucket_rows_for_memory(2048 << 20, 64),
        }
    }
}

struct Shared {
    worker_id: String,
    /// Sent again to re-register after the operator comes back.
    registration: pb::RegisterWorkerRequest,
    operator_key_hex: String,
    /// Calls carry the worker's credential.
    client: OperatorClient<InterceptedService<Channel, TokenHeader>>,
    verifier: Mutex<TicketVerifier>,
    /// What this worker declared: the licence check of each task is against it.
    attributes: WorkerAttributes,
    env: ExecEnv,
    clock: Arc<dyn Clock>,
    running: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// The enclave, attested again whenever the operator comes back (a restarted operator
    /// keeps no attestation).
    tee: Option<Arc<OperatorTee>>,
    /// Where the tasks' progress reports go, with the worker's budget of them.
    progress: Arc<ProgressOut>,
}

/// Shortest time between two progress reports of one task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Most progress reports one worker sends per second, all its tasks together (and as a
/// burst): under a backlog a worker runs hundreds of small tasks at once, each long enough to
/// report, and their reports cost the operator a call each for states nobody watches. A
/// single job's 10 a second fit; a report over the budget waits, replaced by later ones.
const PROGRESS_REPORTS_PER_S: u32 = 20;

/// Where one worker's progress reports go: a sender (the operator's `ReportProgress`, each
/// call spawned) and the budget all its tasks share ([`PROGRESS_REPORTS_PER_S`]).
struct ProgressOut {
    worker_id: String,
    budget: governor::DefaultDirectRateLimiter,
    send: Box<dyn Fn(pb::ProgressReport) + Send + Sync>,
}

impl ProgressOut {
    fn new(worker_id: String, send: Box<dyn Fn(pb::ProgressReport) + Send + Sync>) -> Self {
        let per_s =
            std::num::NonZeroU32::new(PROGRESS_REPORTS_PER_S).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            worker_id,
            budget: governor::RateLimiter::direct(governor::Quota::per_second(per_s)),
            send,
        }
    }

    /// Reports to the operator over `client`; a lost report is superseded by the next or by
    /// the task's result.
    fn to_operator(
        worker_id: String,
        client: OperatorClient<InterceptedService<Channel, TokenHeader>>,
    ) -> Self {
        Self::new(
            worker_id,
            Box::new(move |req| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    let _ = client.report_progress(req).await;
                });
            }),
        )
    }
}

/// A task's progress to the operator: at most one report per [`PROGRESS_INTERVAL`], the first
/// once the task has run that long, and only within the worker's budget
/// ([`PROGRESS_REPORTS_PER_S`]). A report inside an interval or over the budget waits and is
/// sent later as the latest state, unless the task has ended by then (its result says more):
/// a task shorter than the interval sends no report at all (tiny jobs by the thousand would
/// otherwise cost the operator a call each for a state nobody sees).
struct ProgressSink {
    out: Arc<ProgressOut>,
    task_id: String,
    throttle: Arc<std::sync::Mutex<Throttle>>,
}

struct Throttle {
    /// When the last report went, or, before the first, when the task started.
    last_sent: tokio::time::Instant,
    /// The latest report held back, sent at the end of the interval.
    pending: Option<pb::ProgressReport>,
    flush_scheduled: bool,
    ended: bool,
}

impl ProgressSink {
    fn new(out: Arc<ProgressOut>, task_id: String) -> Self {
        Self {
            out,
            task_id,
            throttle: Arc::new(std::sync::Mutex::new(Throttle {
                last_sent: tokio::time::Instant::now(),
                pending: None,
                flush_scheduled: false,
                ended: false,
            })),
        }
    }

    /// The task ended: nothing held back is sent any more.
    fn end(&self) {
        if let Ok(mut t) = self.throttle.lock() {
            t.ended = true;
            t.pending = None;
        }
    }
}

impl tessera_psi::Progress for ProgressSink {
    fn report(&self, phase: &str, done: u64, total: u64) {
        let req = pb::ProgressReport {
            worker_id: self.out.worker_id.clone(),
            task_id: self.task_id.clone(),
            phase: phase.to_string(),
            done,
            total,
        };
        let now = tokio::time::Instant::now();
        let Ok(mut t) = self.throttle.lock() else {
            return;
        };
        if t.ended {
            return;
        }
        let due = t.last_sent + PROGRESS_INTERVAL;
        if now >= due && self.out.budget.check().is_ok() {
            t.last_sent = now;
            t.pending = None;
            drop(t);
            (self.out.send)(req);
            return;
        }
        // Held back: sent at the interval's end, or, over the budget, once the budget allows
        // (re-checked every interval), as the latest state then.
        t.pending = Some(req);
        if t.flush_scheduled {
            return;
        }
        t.flush_scheduled = true;
        let at = if now < due {
            due
        } else {
            now + PROGRESS_INTERVAL
        };
        let (throttle, out) = (self.throttle.clone(), self.out.clone());
        tokio::spawn(async move {
            let mut at = at;
            loop {
                tokio::time::sleep_until(at).await;
                let held = {
                    let Ok(mut t) = throttle.lock() else {
                        return;
                    };
                    if t.ended || t.pending.is_none() {
                        t.flush_scheduled = false;
                        t.pending = None;
                        return;
                    }
                    if out.budget.check().is_err() {
                        at = tokio::time::Instant::now() + PROGRESS_INTERVAL;
                        continue;
                    }
                    t.flush_scheduled = false;
                    t.last_sent = tokio::time::Instant::now();
                    t.pending.take()
                };
                if let Some(req) = held {
                    (out.send)(req);
                }
                return;
            }
        });
    }
}

/// Reports a task's delivery point to the operator, retried like a result.
struct OperatorDelivery {
    shared: Arc<Shared>,
    task_id: String,
}

#[async_trait::async_trait]
impl DeliverySink for OperatorDelivery {
    async fn delivered(&self, rows_in: u64) -> bool {
        let req = pb::DeliveryReport {
            worker_id: self.shared.worker_id.clone(),
            task_id: self.task_id.clone(),
            rows_in,
        };
        let task_id = self.task_id.as_str();
        let sent = (|| {
            let mut c = self.shared.client.clone();
            let req = req.clone();
            async move { c.report_delivered(req).await }
        })
        .retry(delivery_backoff())
        .sleep(tokio::time::sleep)
        // NotFound: the operator no longer runs this task (it restarted, or the job ended).
        .when(|s: &tonic::Status| s.code() != tonic::Code::NotFound)
        .notify(|s, _| {
            tracing::warn!(task = %task_id, error = %s, "reporting delivery failed, retrying");
        })
        .await;
        match sent {
            Ok(_) => true,
            Err(s) => {
                // Not recorded: the sender stops before its last frame, so the buyer does not
                // get the complete output unrecorded.
                tracing::warn!(task = %task_id, error = %s, "reporting delivery failed; stopping before the last frame");
                false
            }
        }
    }
}

/// The worker's enclave and the operator calls behind it: attestation and key release.
struct OperatorTee {
    enclave: tessera_tee::EnclaveKeyPair,
    measurement: String,
    worker_id: String,
    client: OperatorClient<InterceptedService<Channel, TokenHeader>>,
}

impl std::fmt::Debug for OperatorTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorTee")
            .field("enclave", &self.enclave)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

impl OperatorTee {
    /// One attestation: a nonce from the operator, simulated evidence binding it and the
    /// enclave key, the operator's appraisal. Returns when the result expires (unix seconds).
    async fn attest(&self) -> anyhow::Result<u64> {
        let mut c = self.client.clone();
        let nonce = c
            .tee_challenge(pb::TeeChallengeRequest {
                worker_id: self.worker_id.clone(),
            })
            .await
            .context("asking the operator for an attestation nonce")?
            .into_inner()
            .nonce_hex;
        let n = tessera_tee::Nonce::from_hex(&nonce)
            .context("the operator's nonce is not 64 hex digits")?;
        let report_data = tessera_tee::expected_report_data(&n, &self.enclave.public());
        let evidence = serde_json::json!({
            "insecure_simulated_tee": true,
            "measurement": self.measurement,
            "report_data": hex::encode(report_data),
        });
        let answer = c
            .tee_attest(pb::TeeAttestRequest {
                worker_id: self.worker_id.clone(),
                kind: tessera_tee::TeeKind::InsecureSimulated.as_str().to_string(),
                evidence: serde_json::to_vec(&evidence)?.into(),
                collateral: Default::default(),
                nonce_hex: nonce,
                enclave_key_hex: self.enclave.public().to_hex(),
            })
            .await
            .context("sending the attestation")?
            .into_inner();
        if !answer.accepted {
            anyhow::bail!(
                "the operator refused this worker's attestation: {}",
                answer.reasons.join("; ")
            );
        }
        tracing::warn!(
            status = %answer.status,
            expires_at = answer.expires_at,
            "enclave attested in the insecure-simulated-tee mode: no security, development only"
        );
        Ok(answer.expires_at)
    }
}

/// Attests again halfway to each result's expiry (a failure: again in a minute).
async fn reattest(host: Arc<OperatorTee>, mut expires_at: u64) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let wait = expires_at.saturating_sub(now) / 2;
        tokio::time::sleep(Duration::from_secs(wait.clamp(5, 3_600))).await;
        match host.attest().await {
            Ok(exp) => expires_at = exp,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "attestation failed; retrying in a minute"
                );
                expires_at = now + 120;
            }
        }
    }
}

#[async_trait::async_trait]
impl exec::TeeHost for OperatorTee {
    fn enclave(&self) -> &tessera_tee::EnclaveKeyPair {
        &self.enclave
    }

    async fn release_key(
        &self,
        task_id: &str,
    ) -> Result<tessera_tee::ReleasedKey, exec::TaskError> {
        let answer = self
            .client
            .clone()
            .release_dataset_key(pb::KeyReleaseRequest {
                worker_id: self.worker_id.clone(),
                task_id: task_id.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied => exec::TaskError::Ticket(s.message().to_string()),
                _ => exec::TaskError::Internal(format!(
                    "asking for the dataset key: {}",
                    s.message()
                )),
            })?
            .into_inner();
        serde_json::from_str(&answer.released_json)
            .map_err(|e| exec::TaskError::Internal(format!("the released key: {e}")))
    }
}

/// The worker's way to the operator's dealer (`Operator.Dealer`, with its credential).
struct OperatorDealer {
    worker_id: String,
    client: OperatorClient<InterceptedService<Channel, TokenHeader>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for OperatorDealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorDealer")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl exec::DealerDial for OperatorDealer {
    async fn dial(&self, task_id: &str) -> Result<tessera_proto::link::FrameLink, exec::TaskError> {
        use tessera_proto::link::{
            DEALER_TASK_METADATA, DEALER_WORKER_METADATA, FRAME_OVERHEAD_BYTES, FrameLink,
        };
        let frame_max = tessera_core::limits::FRAME_BYTES_MAX;
        let (tx, rx) = tokio::sync::mpsc::channel(tessera_core::limits::LINK_QUEUE_FRAMES);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for (key, value) in [
            (DEALER_WORKER_METADATA, self.worker_id.as_str()),
            (DEALER_TASK_METADATA, task_id),
        ] {
            let v = value.parse().map_err(|_| {
                exec::TaskError::Ticket(format!("{key} {value:?} is not valid metadata"))
            })?;
            req.metadata_mut().insert(key, v);
        }
        let mut client = self
            .client
            .clone()
            .max_decoding_message_size(frame_max + FRAME_OVERHEAD_BYTES)
            .max_encoding_message_size(frame_max + FRAME_OVERHEAD_BYTES);
        let answer = tokio::time::timeout(self.connect_timeout, client.dealer(req))
            .await
            .map_err(|_| {
                exec::TaskError::Link(format!(
                    "the operator's dealer did not answer within {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|s| match s.code() {
                tonic::Code::NotFound | tonic::Code::PermissionDenied => {
                    exec::TaskError::Ticket(format!("the operator's dealer: {}", s.message()))
                }
                _ => exec::TaskError::Link(format!(
                    "the operator's dealer: {}: {}",
                    s.code(),
                    s.message()
                )),
            })?;
        Ok(FrameLink::new(
            tx,
            futures::StreamExt::boxed(answer.into_inner()),
            frame_max,
            self.idle_timeout,
        ))
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// The id the operator knows it by.
    pub worker_id: String,
    /// The bound peer-link address.
    pub peer_addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Stops the worker.
    pub fn abort(&self) {
        self.task.abort();
    }
    /// Waits for the worker to end (it runs until aborted or the operator is unreachable).
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("worker task")?
    }
}

/// Checks the worker's directories before it registers: the dataset directory must exist
/// (a typo would otherwise only show when a job fails), and the output directory is created
/// if missing but must not be something other than a directory.
///
/// Errors: a message naming the directory and what is wrong with it.
pub fn check_directories(config: &WorkerConfig) -> anyhow::Result<()> {
    let d = &config.dataset_dir;
    match std::fs::metadata(d) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("the dataset directory {} is not a directory", d.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "the dataset directory {} does not exist (--datasets); create it and put the \
             party's dataset files in it",
            d.display()
        ),
        Err(e) => anyhow::bail!("the dataset directory {}: {e}", d.display()),
    }
    let o = &config.output_dir;
    if o.exists() && !o.is_dir() {
        anyhow::bail!("the output directory {} is not a directory", o.display());
    }
    std::fs::create_dir_all(o)
        .with_context(|| format!("creating the output directory {}", o.display()))?;
    let w = work_dir_of(config);
    if w.exists() && !w.is_dir() {
        anyhow::bail!(
            "the work directory {} is not a directory (--work-dir)",
            w.display()
        );
    }
    exec::private_dir(&w)
        .with_context(|| format!("creating the work directory {} (--work-dir)", w.display()))?;
    Ok(())
}

/// The base of the worker's scratch directories (`--work-dir`, or `OUTPUTS/.tessera-work`).
fn work_dir_of(config: &WorkerConfig) -> PathBuf {
    config
        .work_dir
        .clone()
        .unwrap_or_else(|| config.output_dir.join(".tessera-work"))
}

/// This worker's own scratch directory under the work directory. A task's files from an
/// earlier run of this worker (killed before it could remove them) stay for
/// [`exec::RESUME_STATE_KEEP_SECS`] after their last use, so that a resumed job takes them up;
/// older ones go now. Workers of other ids sharing the directory are left alone.
fn own_work_dir(config: &WorkerConfig, worker_id: &str) -> anyhow::Result<PathBuf> {
    let dir = work_dir_of(config).join(exec::safe_name(worker_id));
    exec::sweep_work_dir(&dir, exec::RESUME_STATE_KEEP_SECS);
    exec::private_dir(&dir)
        .with_context(|| format!("creating the work directory {}", dir.display()))?;
    Ok(dir)
}

/// Refuses a configuration without the operator's public key (64 hex digits) or a
/// registration token.
///
/// # Errors
/// Names the missing or malformed setting.
pub fn check_credentials(config: &WorkerConfig) -> anyhow::Result<()> {
    let key = config.operator_key_hex.trim();
    if key.is_empty() {
        anyhow::bail!(
            "the operator's public key is required (--operator-key HEX or --operator-key-file \
             PATH; the operator writes it to DATA_DIR/operator.pub): a worker never trusts a key \
             an operator presents"
        );
    }
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("the operator's public key must be 64 hex digits");
    }
    tessera_proto::operator_endpoint(
        &config.operator_url,
        config.operator_ca_pem.as_deref(),
        config.insecure_plaintext_operator,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !config.registration.is_set() {
        anyhow::bail!(
            "a registration token is required (--registration-token-file PATH or \
             TESSERA_REGISTRATION_TOKEN): the party's owner issues one with `tessera party \
             registration-token`"
        );
    }
    Ok(())
}

/// Starts a worker: checks its directories ([`check_directories`]), binds the peer server,
/// registers, and serves tasks in the background.
pub async fn start(config: WorkerConfig, clock: Arc<dyn Clock>) -> anyhow::Result<WorkerHandle> {
    check_directories(&config)?;
    check_credentials(&config)?;
    let listener = tokio::net::TcpListener::bind(&config.peer_listen)
        .await
        .with_context(|| format!("binding peer address {}", config.peer_listen))?;
    let peer_addr = listener.local_addr()?;
    let hub = PeerHub::new(config.frame_bytes_max, config.idle_timeout);
    // The peer-link key never leaves this process; the operator signs a certificate for it.
    let peer_key = if config.insecure_plaintext_peer {
        None
    } else {
        Some(tessera_pki::worker_key_and_csr().context("making the peer-link key")?)
    };

    let channel = connect_operator(&config).await?;
    let advertise = config
        .peer_advertise
        .clone()
        .unwrap_or_else(|| peer_addr.to_string());
    let registration = pb::RegisterWorkerRequest {
        worker_id: config.worker_id.clone().unwrap_or_default(),
        attributes: Some(to_pb_attrs(&config.attributes)),
        peer_addr: advertise,
        csr_pem: peer_key
            .as_ref()
            .map(|(_, csr)| csr.clone())
            .unwrap_or_default(),
    };
    let reg = register_first(&channel, &config, &registration).await?;
    let tls = match peer_key {
        None => {
            tracing::warn!(
                "peer links are plain TCP (--insecure-plaintext-peer): use this for tests only"
            );
            tokio::spawn(serve_peer(hub.clone(), listener));
            None
        }
        Some((key_pem, _)) => {
            if let Some(ca) = &config.operator_ca_pem
                && !reg.ca_pem.is_empty()
                && reg.ca_pem.trim() != ca.trim()
            {
                anyhow::bail!(
                    "the operator signs peer-link certificates with a CA other than the one \
                         this worker trusts (--ca-file): refusing to join"
                );
            }
            if reg.certificate_pem.is_empty() || reg.ca_pem.is_empty() {
                anyhow::bail!(
                    "the operator issued no peer-link certificate (it runs no certificate \
                     authority); start the worker with --insecure-plaintext-peer only for tests"
                );
            }
            let tls = Arc::new(
                PeerCredentials::new(PeerTls {
                    ca_pem: reg.ca_pem.clone(),
                    cert_pem: reg.certificate_pem.clone(),
                    key_pem,
                })
                .context("the peer-link certificate the operator issued")?,
            );
            let (hub, served) = (hub.clone(), tls.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_peer_tls(hub, listener, served).await {
                    tracing::error!(error = %e, "the peer-link server stopped");
                }
            });
            Some(tls)
        }
    };
    let key = config.operator_key_hex.trim().to_ascii_lowercase();
    let credential = TokenHeader::new(&reg.worker_token)
        .ok()
        .filter(|_| !reg.worker_token.is_empty())
        .context("the operator issued no worker credential")?;
    let client = OperatorClient::with_interceptor(channel, credential);
    let verifier = TicketVerifier::new(&key, reg.worker_id.clone())?;
    let tee_host: Option<Arc<OperatorTee>> = config.tee.as_ref().map(|t| {
        let mut ikm = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, ikm.as_mut_slice());
        Arc::new(OperatorTee {
            enclave: tessera_tee::EnclaveKeyPair::derive(&ikm),
            measurement: t.measurement.clone(),
            worker_id: reg.worker_id.clone(),
            client: client.clone(),
        })
    });
    if let Some(host) = &tee_host {
        // Attested before `start` returns, so the worker is placeable for tee jobs at once.
        let expires_at = host.attest().await?;
        tokio::spawn(reattest(host.clone(), expires_at));
    }
    let work_dir = own_work_dir(&config, &reg.worker_id)?;
    let dealer_client = client.clone();
    let progress_client = client.clone();
    let shared = Arc::new(Shared {
        worker_id: reg.worker_id.clone(),
        registration: pb::RegisterWorkerRequest {
            worker_id: reg.worker_id.clone(),
            ..registration
        },
        operator_key_hex: key.clone(),
        client,
        verifier: Mutex::new(verifier),
        attributes: config.attributes.clone(),
        env: ExecEnv {
            dataset_dir: config.dataset_dir.clone(),
            output_dir: config.output_dir.clone(),
            work_dir,
            bucket_rows: config.bucket_rows.max(1),
            hub,
            frame_bytes_max: config.frame_bytes_max,
            idle_timeout: config.idle_timeout,
            connect_timeout: config.connect_timeout,
            tls,
            tee: tee_host.clone().map(|h| h as Arc<dyn exec::TeeHost>),
            dealer: Some(Arc::new(OperatorDealer {
                worker_id: reg.worker_id.clone(),
                client: dealer_client,
                idle_timeout: config.idle_timeout,
                connect_timeout: config.connect_timeout,
            })),
        },
        clock,
        running: Mutex::new(HashMap::new()),
        tee: tee_host,
        progress: Arc::new(ProgressOut::to_operator(
            reg.worker_id.clone(),
            progress_client,
        )),
    });
    // Open the task stream before returning, so the worker is placeable once `start` is done.
    let tasks = shared
        .client
        .clone()
        .pull_tasks(pb::PullTasksRequest {
            worker_id: shared.worker_id.clone(),
            running_task_ids: Vec::new(),
        })
        .await
        .context("opening the task stream")?
        .into_inner();
    tracing::info!(worker = %reg.worker_id, peer = %peer_addr, party = %config.attributes.party, "worker registered");
    let interval = Duration::from_millis(reg.heartbeat_interval_ms.clamp(100, 60_000));
    if let Some(credentials) = shared.env.tls.clone() {
        tokio::spawn(renew_certificates(
            shared.clone(),
            credentials,
            config.cert_renew_interval,
        ));
    }
    let task = tokio::spawn(serve(shared, tasks, interval));
    Ok(WorkerHandle {
        worker_id: reg.worker_id,
        peer_addr,
        task,
    })
}

/// Renews the peer-link certificate every `every` for as long as the worker runs: a new key
/// (it never leaves this process) and its CSR, signed by the operator (`RenewCertificate`,
/// with the worker credential), installed for every new link. A failure is logged and retried
/// after a minute (or `every`, if shorter); the current certificate stays until then.
async fn renew_certificates(
    shared: Arc<Shared>,
    credentials: Arc<PeerCredentials>,
    every: Duration,
) {
    let retry = every.min(Duration::from_secs(60));
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        wait = match renew_once(&shared, &credentials).await {
            Ok(not_after_ms) => {
                tracing::info!(not_after_ms, "peer-link certificate renewed");
                every
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not renew the peer-link certificate; retrying"
                );
                retry
            }
        };
    }
}

async fn renew_once(shared: &Shared, credentials: &PeerCredentials) -> anyhow::Result<i64> {
    let (key_pem, csr_pem) =
        tessera_pki::worker_key_and_csr().context("making a new peer-link key")?;
    let issued = shared
        .client
        .clone()
        .renew_certificate(pb::CertificateRequest {
            worker_id: shared.worker_id.clone(),
            csr_pem,
        })
        .await
        .context("asking the operator for a new certificate")?
        .into_inner();
    credentials.install(PeerTls {
        ca_pem: issued.ca_pem,
        cert_pem: issued.certificate_pem,
        key_pem,
    })?;
    Ok(issued.not_after_ms)
}

/// How long a worker restarted under its id waits for the operator to see the previous
/// process of that id lost (the id is refused while a live worker holds it).
const ID_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Registers with the party's registration token and checks the operator's key. A worker id
/// still held by a live worker (the process this one replaces, not yet seen lost) is retried
/// every second for up to [`ID_RELEASE_WAIT`].
async fn register_first(
    channel: &Channel,
    config: &WorkerConfig,
    registration: &pb::RegisterWorkerRequest,
) -> anyhow::Result<pb::RegisterWorkerResponse> {
    let mut client = OperatorClient::with_interceptor(channel.clone(), config.registration.clone());
    let deadline = tokio::time::Instant::now() + ID_RELEASE_WAIT;
    let reg = loop {
        match client.register_worker(registration.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(s)
                if s.code() == tonic::Code::AlreadyExists
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(reason = %s.message(), "worker id still held; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                anyhow::bail!(
                    "the operator refused the registration token (missing, expired, revoked or \
                     malformed): ask the party's owner for a new one (tessera party \
                     registration-token)"
                )
            }
            Err(s) => return Err(anyhow::Error::new(s).context("registering with the operator")),
        }
    };
    if !reg
        .operator_key_hex
        .eq_ignore_ascii_case(config.operator_key_hex.trim())
    {
        // The configured key is never echoed: a private key given by mistake stays secret.
        anyhow::bail!(
            "the operator at {} presented the public key {}, which is not the one configured \
             (--operator-key / --operator-key-file): this worker stops before taking any task. \
             Its registration token was presented and a worker registration recorded before \
             the key could be checked; until the links use TLS, start workers only against an \
             operator you reach on a trusted network",
            config.operator_url,
            reg.operator_key_hex
        );
    }
    Ok(reg)
}

/// Longest a worker tries to reach the operator at start, all attempts together.
const OPERATOR_DIAL_WINDOW: Duration = Duration::from_secs(20);

/// Attempts to reach the operator at start: one every 200 ms, 50 in all (about 10 s plus the
/// attempts' own connect timeouts).
fn operator_dial_backoff() -> ConstantBuilder {
    ConstantBuilder::new()
        .with_delay(Duration::from_millis(200))
        .with_max_times(49)
}

/// A channel to the operator over TLS checked against the configured CA (or plain TCP under
/// the insecure option), retried as [`operator_dial_backoff`] says.
async fn connect_operator(config: &WorkerConfig) -> anyhow::Result<Channel> {
    let url = &config.operator_url;
    let endpoint = tessera_proto::operator_endpoint(
        url,
        config.operator_ca_pem.as_deref(),
        config.insecure_plaintext_operator,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // An untrusted certificate or a server without TLS is final: no token is ever sent.
    let tries = (|| tessera_proto::connect(endpoint.clone(), url))
        .retry(operator_dial_backoff())
        .when(tessera_proto::ConnectError::retryable)
        .notify(|e, _| tracing::warn!(error = %e, "operator not reachable yet; retrying"))
        .sleep(tokio::time::sleep);
    match tokio::time::timeout(OPERATOR_DIAL_WINDOW, tries).await {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => anyhow::bail!(
            "the operator at {url} did not complete a connection within {} s",
            OPERATOR_DIAL_WINDOW.as_secs()
        ),
    }
}

fn to_pb_attrs(a: &WorkerAttributes) -> pb::WorkerAttributes {
    pb::WorkerAttributes {
        party: a.party.clone(),
        region: a.region.clone(),
        compute_centre: a.compute_centre.clone(),
        hardware: a.hardware.clone(),
        ai_frameworks: a.ai_frameworks.clone(),
        software_env: a.software_env.clone(),
    }
}

async fn serve(
    shared: Arc<Shared>,
    mut stream: tonic::Streaming<pb::TaskEnvelope>,
    heartbeat: Duration,
) -> anyhow::Result<()> {
    let hb = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tick.tick().await;
                let mut c = shared.client.clone();
                if let Err(e) = c
                    .heartbeat(pb::HeartbeatRequest {
                        worker_id: shared.worker_id.clone(),
                    })
                    .await
                {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        })
    };
    let result = loop {
        let lost = match stream.next().await {
            None => "the operator closed the task stream".to_string(),
            Some(Err(e)) => format!("task stream failed: {e}"),
            Some(Ok(env)) => {
                match env.kind {
                    Some(pb::task_envelope::Kind::Assign(a)) => accept(shared.clone(), a).await,
                    Some(pb::task_envelope::Kind::Cancel(c)) => {
                        if let Some(h) = shared.running.lock().await.remove(&c.task_id) {
                            tracing::info!(task = %c.task_id, reason = %c.reason, "task cancelled by the operator");
                            h.abort();
                        }
                    }
                    None => tracing::warn!("empty task envelope ignored"),
                }
                continue;
            }
        };
        tracing::warn!(error = %lost, "lost the operator; reconnecting");
        match reconnect(&shared).await {
            Ok(s) => {
                stream = s;
                if let Some(host) = &shared.tee {
                    // At once, not at the next scheduled attestation: until then a restarted
                    // operator would place no tee job here.
                    match host.attest().await {
                        Ok(_) => tracing::info!("enclave attested again after the reconnection"),
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "attestation after the reconnection failed; the scheduled one \
                             retries"
                        ),
                    }
                }
            }
            Err(e) => break Err(e.context(lost)),
        }
    };
    hb.abort();
    result
}

/// Longest a worker keeps trying to get back to a lost operator before it exits.
const RECONNECT_WINDOW: Duration = Duration::from_secs(300);

/// Why one attempt to get back to the operator failed.
#[derive(Debug, thiserror::Error)]
enum ReconnectError {
    /// The operator did not answer (or refused): worth another attempt.
    #[error("{0}")]
    Unreachable(tonic::Status),
    /// The operator answers with another ticket key: never worth another attempt.
    #[error("the operator now presents ticket key {now}, not {expected}")]
    KeyChanged {
        /// The key it presents now.
        now: String,
        /// The key it presented at first registration.
        expected: String,
    },
    /// The operator no longer accepts this worker's credential (its id was registered again
    /// by another process, or the operator's accounts were reset): never worth another attempt.
    #[error(
        "the operator no longer accepts this worker's credential (its id was registered again \
         elsewhere, or its party's owner was disabled): {0}"
    )]
    Revoked(tonic::Status),
}

/// A failed call of the reconnection: a refused credential is final, anything else is
/// worth another attempt.
fn reconnect_error(s: tonic::Status) -> ReconnectError {
    if s.code() == tonic::Code::Unauthenticated {
        ReconnectError::Revoked(s)
    } else {
        ReconnectError::Unreachable(s)
    }
}

/// Waits between attempts to get back to the operator: 250 ms, doubling, at most 2 s, with
/// jitter and no limit on the count (the [`RECONNECT_WINDOW`] deadline ends the attempts). A
/// restarted operator places no job until its workers are back, so they come back within
/// about 2 s of it; an attempt against an operator still down is one refused connection.
fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// One attempt: register again under the same id, check the key, reopen the task stream.
async fn reconnect_once(
    shared: &Shared,
) -> Result<tonic::Streaming<pb::TaskEnvelope>, ReconnectError> {
    let mut c = shared.client.clone();
    let reg = c
        .register_worker(shared.registration.clone())
        .await
        .map_err(reconnect_error)?
        .into_inner();
    if reg.operator_key_hex != shared.operator_key_hex {
        return Err(ReconnectError::KeyChanged {
            now: reg.operator_key_hex,
            expected: shared.operator_key_hex.clone(),
        });
    }
    // The tasks still running, so that the operator knows they live on.
    let running_task_ids = shared.running.lock().await.keys().cloned().collect();
    Ok(c.pull_tasks(pb::PullTasksRequest {
        worker_id: shared.worker_id.clone(),
        running_task_ids,
    })
    .await
    .map_err(reconnect_error)?
    .into_inner())
}

/// Registers again under the same id and reopens the task stream, with backoff (0.5 s, then
/// [`reconnect_backoff`]), for up to [`RECONNECT_WINDOW`]. Refuses an operator that presents
/// a different ticket key.
async fn reconnect(shared: &Shared) -> anyhow::Result<tonic::Streaming<pb::TaskEnvelope>> {
    let deadline = tokio::time::Instant::now() + RECONNECT_WINDOW;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = (|| reconnect_once(shared))
        .retry(reconnect_backoff())
        .sleep(tokio::time::sleep)
        .when(|e| {
            matches!(e, ReconnectError::Unreachable(_)) && tokio::time::Instant::now() < deadline
        })
        .notify(|e, _| tracing::debug!(error = %e, "reconnect attempt failed"))
        .await;
    match result {
        Ok(s) => {
            tracing::info!(worker = %shared.worker_id, "reconnected to the operator");
            Ok(s)
        }
        Err(ReconnectError::Unreachable(status)) => Err(anyhow::anyhow!(
            "operator unreachable for {RECONNECT_WINDOW:?}: {status}"
        )),
        Err(e) => Err(e.into()),
    }
}

async fn accept(shared: Arc<Shared>, a: pb::TaskAssignment) {
    let ticket = SignedTicket {
        body: a.ticket_body,
        signature_hex: a.ticket_signature_hex,
    };
    let now = shared.clock.now_ms();
    let checked = shared
        .verifier
        .lock()
        .await
        .check(&ticket, &a.spec_json, now);
    let body = match checked {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "task refused: bad ticket");
            // Report against the task id the (untrusted) spec names, if any.
            if let Ok(spec) = serde_json::from_slice::<TaskSpec>(&a.spec_json) {
                report(
                    &shared,
                    &spec.task_id,
                    Err(TaskError::Ticket(e.to_string())),
                    0,
                    0,
                )
                .await;
            }
            return;
        }
    };
    let spec: TaskSpec = match serde_json::from_slice::<TaskSpec>(&a.spec_json) {
        Ok(s) if s.task_id == body.task_id && s.job_id == body.job_id => s,
        _ => {
            report(
                &shared,
                &body.task_id,
                Err(TaskError::Ticket(
                    "task spec does not match its ticket".into(),
                )),
                0,
                0,
            )
            .await;
            return;
        }
    };
    // The licence the task names, checked against this worker and its clock.
    if let Err(why) = crate::grant::check(&spec, &shared.attributes, shared.clock.now_ms()) {
        tracing::warn!(job = %spec.job_id, task = %spec.task_id, reason = %why, "task refused: outside its licence");
        report(
            &shared,
            &spec.task_id,
            Err(TaskError::Ticket(format!("outside its licence: {why}"))),
            0,
            0,
        )
        .await;
        return;
    }
    let task_id = spec.task_id.clone();
    tracing::info!(
        job = %spec.job_id,
        task = %task_id,
        role = %spec.role,
        audit_seq = body.audit_head.as_ref().map(|h| h.seq),
        audit_hash = body.audit_head.as_ref().map(|h| h.head_hash.as_str()),
        "task accepted (the ticket's signed audit head is logged as this party's copy)"
    );
    let runner = {
        let shared = shared.clone();
        let task_id = task_id.clone();
        async move {
            let progress = Arc::new(ProgressSink::new(shared.progress.clone(), task_id.clone()));
            let sink: Arc<dyn tessera_psi::Progress> = progress.clone();
            let delivery = OperatorDelivery {
                shared: shared.clone(),
                task_id: task_id.clone(),
            };
            let (out, wall_ms, cpu_ms) =
                measured(run_task(&shared.env, &spec, sink, &delivery)).await;
            progress.end();
            shared.running.lock().await.remove(&task_id);
            report(&shared, &task_id, out, wall_ms, cpu_ms).await;
        }
    };
    let handle = tokio::spawn(runner);
    shared
        .running
        .lock()
        .await
        .insert(task_id, handle.abort_handle());
}

async fn report(
    shared: &Shared,
    task_id: &str,
    out: Result<exec::TaskOutcome, TaskError>,
    wall_ms: u64,
    cpu_ms: u64,
) {
    let (ok, kind, error, o) = match out {
        Ok(o) => (true, String::new(), String::new(), o),
        Err(e) => {
            tracing::warn!(task = %task_id, kind = e.kind(), error = %e, "task failed");
            (
                false,
                e.kind().to_string(),
                e.to_string(),
                exec::TaskOutcome::default(),
            )
        }
    };
    let req = pb::TaskResult {
        worker_id: shared.worker_id.clone(),
        task_id: task_id.to_string(),
        ok,
        error_kind: kind,
        error,
        usage: Some(pb::Usage {
            cpu_ms,
            wall_ms,
            rows_in: o.rows_in,
            bytes_sent: o.link.bytes_sent,
            bytes_received: o.link.bytes_received,
            frames_sent: o.link.frames_sent,
            frames_received: o.link.frames_received,
            peak_rss_kb: usage::peak_rss_kb(),
            triples: o.triples,
            dropouts: o.dropouts,
            round_dropouts: o.round_dropouts.clone(),
        }),
        result_size: o.result_size,
        result_file: o.result_file.map(|f| pb::ResultFile {
            name: o.result_location.clone(),
            bytes: f.bytes,
            rows: f.rows,
            sha256_hex: hex::encode(f.sha256),
        }),
        result_location: o.result_location,
        empty_keys: o.empty_keys,
    };
    // Reports are idempotent on the operator: retry a few times on transport errors.
    let sent = (|| {
        let mut c = shared.client.clone();
        let req = req.clone();
        async move { c.report_result(req).await }
    })
    .retry(report_backoff())
    .sleep(tokio::time::sleep)
    .when(|s: &tonic::Status| s.code() != tonic::Code::NotFound)
    .notify(|s, _| {
        tracing::warn!(task = %task_id, error = %s, "reporting the result failed, retrying");
    })
    .await;
    match sent {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {
            tracing::info!(task = %task_id, "operator no longer tracks this task: {}", s.message());
        }
        Err(s) => {
            tracing::warn!(task = %task_id, error = %s, "reporting the result failed; giving up");
        }
    }
}

/// Attempts to send a task's result: 20 in all, 0.2 s apart growing by 0.2 s (about 40 s in
/// all), for an operator that is briefly unreachable or cannot write: a job whose last report
/// never arrives waits for it.
fn report_backoff() -> impl backon::Backoff {
    (1..REPORT_ATTEMPTS).map(|k| Duration::from_millis(200 * k))
}

/// Pauses between attempts to record a delivery: 0.2 s growing to 2 s, about 20 s in all,
/// well inside the peer link's idle timeout, for an operator that is briefly unreachable.
fn delivery_backoff() -> impl backon::Backoff {
    (1..=DELIVERY_ATTEMPTS).map(|k| Duration::from_millis((200 * k).min(2_000)))
}

/// How many times a delivery is reported before the sender gives up and stops.
const DELIVERY_ATTEMPTS: u64 = 15;

/// How many times a task's result is sent before the worker gives up on it.
const REPORT_ATTEMPTS: u64 = 20;

#[cfg(test)]
mod dir_tests {
    use super::*;

    fn config(root: &std::path::Path) -> WorkerConfig {
        WorkerConfig::new(
            "http://127.0.0.1:1".into(),
            WorkerAttributes::default(),
            root.join("datasets"),
            root.join("outputs"),
        )
    }

    #[test]
    fn a_missing_dataset_directory_is_refused_up_front() {
        let root = tempfile::tempdir().expect("tempdir");
        let c = config(root.path());
        let e = check_directories(&c).expect_err("missing datasets");
        let text = format!("{e:#}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(
            text.contains(&c.dataset_dir.display().to_string()),
            "{text}"
        );
        std::fs::write(&c.dataset_dir, "not a dir").expect("write");
        let e = check_directories(&c).expect_err("a file");
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
        std::fs::remove_file(&c.dataset_dir).expect("rm");
        std::fs::create_dir(&c.dataset_dir).expect("mkdir");
        check_directories(&c).expect("fine");
        assert!(c.output_dir.is_dir(), "the output directory is created");
        let mut c = c;
        let file = root.path().join("a-file");
        std::fs::write(&file, "x").expect("write");
        c.work_dir = Some(file);
        let e = check_directories(&c).expect_err("work dir is a file");
        assert!(format!("{e:#}").contains("--work-dir"), "{e:#}");
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;
    use tessera_psi::Progress;

    /// A worker's progress out that records what it would send.
    fn recording() -> (
        Arc<ProgressOut>,
        Arc<std::sync::Mutex<Vec<pb::ProgressReport>>>,
    ) {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = sent.clone();
        let out = ProgressOut::new(
            "w1".into(),
            Box::new(move |r| into.lock().expect("lock").push(r)),
        );
        (Arc::new(out), sent)
    }

    fn count(sent: &std::sync::Mutex<Vec<pb::ProgressReport>>) -> usize {
        sent.lock().expect("lock").len()
    }

    /// Many tasks at once (a backlog of tiny jobs): their reports together stay within the
    /// worker's budget; those over it wait and go later as each task's latest state, unless
    /// the task has ended by then; a task shorter than the interval sends nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_s_progress_reports_stay_within_its_budget_and_the_held_ones_follow() {
        let (out, sent) = recording();
        let short = ProgressSink::new(out.clone(), "t-short".into());
        short.report("psi", 1, 3);
        short.end();
        let sinks: Vec<ProgressSink> = (0..100)
            .map(|i| ProgressSink::new(out.clone(), format!("t{i}")))
            .collect();
        tokio::time::sleep(PROGRESS_INTERVAL + Duration::from_millis(20)).await;
        let t0 = std::time::Instant::now();
        for s in &sinks {
            s.report("psi", 1, 3);
        }
        // The burst, and one more for every 50 ms the loop took (the budget refills).
        let burst = PROGRESS_REPORTS_PER_S as usize;
        let refill = t0.elapsed().as_millis() as usize / 50 + 1;
        let first = count(&sent);
        assert!(
            (burst..=burst + refill).contains(&first),
            "{first} sent at once"
        );
        // Every task reports again; the second half ends right after.
        for (i, s) in sinks.iter().enumerate() {
            s.report("psi", 2, 3);
            if i >= 50 {
                s.end();
            }
        }
        // What the budget refilled meanwhile may have gone at once, ended task or not.
        let refilled = t0.elapsed().as_millis() as usize / 50 + 1;
        // Each of the 50 live tasks sends its latest state, as the budget allows.
        let latest_of_live = |reports: &[pb::ProgressReport]| {
            reports
                .iter()
                .filter(|r| r.done == 2)
                .filter_map(|r| r.task_id[1..].parse::<usize>().ok())
                .collect::<Vec<_>>()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let live_sent = || {
            let reports = sent.lock().expect("lock").clone();
            latest_of_live(&reports)
                .into_iter()
                .filter(|i| *i < 50)
                .count()
        };
        while live_sent() < 50 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} after 10 s",
                sent.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing more: no ended task's held report, each live task's latest state once, and
        // it is the task's last report.
        tokio::time::sleep(PROGRESS_INTERVAL * 3).await;
        let reports = sent.lock().expect("lock").clone();
        assert!(reports.iter().all(|r| r.task_id != "t-short"));
        let (mut later, ended): (Vec<usize>, Vec<usize>) =
            latest_of_live(&reports).into_iter().partition(|i| *i < 50);
        assert!(ended.len() <= refilled, "ended tasks reported: {ended:?}");
        for i in 0..50 {
            let last = reports.iter().rfind(|r| r.task_id == format!("t{i}"));
            assert_eq!(last.map(|r| r.done), Some(2), "task {i}: {reports:?}");
        }
        later.sort_unstable();
        assert_eq!(later, (0..50).collect::<Vec<_>>());
    }
}
