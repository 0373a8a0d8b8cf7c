//! Runs one task: checks its ticket, reads the party's keys, opens the peer link, runs the
//! engine role, writes the receiver's result, and measures usage.
//!
//! The result (receiver, intersection mode, an output name given) is an RFC 4180 CSV file with
//! one column per buyer key column and per carried column (`carry_columns`, the buyer's OWN
//! columns), holding the ORIGINAL values of the buyer's rows (not the normalised keys). Every
//! buyer row whose key is in the intersection is written, in file order, so duplicates in the
//! buyer's set each appear (the job's `result_size` counts distinct keys). The file never
//! replaces an existing one: an existing name fails the task before the engine runs, and the
//! write itself publishes with no overwrite.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tessera_core::table::{
    KeySpec, TableError, WrittenFile, read_keys_keeping, stream_keys, try_write_result_csv,
};
use tessera_core::{Link, PsiMode, PsiProtocol, TaskErrorKind, TaskRole, TaskSpec};
use tessera_psi::bucket::{BucketKey, Staged, Stager};
use tessera_psi::{Mode, Protocol, PsiConfig, PsiError};

use crate::link::{GrpcLink, PeerHub};
use crate::usage;

/// A task failure, classified for the scheduler (whose fault it is decides the count).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The ticket was refused.
    #[error("{0}")]
    Ticket(String),
    /// This party's input is bad (missing file, unknown column, malformed row).
    #[error("{0}")]
    Input(String),
    /// The peer failed or misbehaved.
    #[error("{0}")]
    Peer(String),
    /// The link to the peer broke or could not be opened.
    #[error("{0}")]
    Link(String),
    /// The task was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl TaskError {
    /// The kind reported to the operator (its text form is what travels).
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    /// The kind as the operator's vocabulary.
    pub fn error_kind(&self) -> TaskErrorKind {
        match self {
            TaskError::Ticket(_) => TaskErrorKind::Ticket,
            TaskError::Input(_) => TaskErrorKind::Input,
            TaskError::Peer(_) => TaskErrorKind::Peer,
            TaskError::Link(_) => TaskErrorKind::Link,
            TaskError::Cancelled(_) => TaskErrorKind::Cancelled,
            TaskError::Internal(_) => TaskErrorKind::Internal,
        }
    }
}

/// What a finished task reports.
#[derive(Debug, Clone, Default)]
pub struct TaskOutcome {
    /// Rows read from the dataset.
    pub rows_in: u64,
    /// Result size (receiver).
    pub result_size: Option<u64>,
    /// Result file name (receiver, intersection mode).
    pub result_location: String,
    /// The result file written, with its size, rows and SHA-256 (receiver, intersection mode).
    pub result_file: Option<WrittenFile>,
    /// Rows of this party's dataset left out because their key is empty.
    pub empty_keys: u64,
    /// Link counters.
    pub link: tessera_core::LinkStats,
    /// Correlations an MPC task drew (Beaver triples, AND triples, matrix-triple elements).
    pub triples: u64,
    /// An `fl` aggregator's dropouts: sampled providers whose update was not in a round's
    /// sum, summed over the rounds.
    pub dropouts: u64,
    /// The same per round (round `r` at index `r − 1`).
    pub round_dropouts: Vec<u32>,
}

/// Where a worker keeps things and how it talks to peers.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// Directory datasets are read from.
    pub dataset_dir: PathBuf,
    /// Directory results are written to.
    pub output_dir: PathBuf,
    /// Directory of tasks' scratch files (bucketed PSI spills), each task in its own
    /// subdirectory removed when it ends.
    pub work_dir: PathBuf,
    /// Most rows of one PSI bucket ([`tessera_psi::bucket`]).
    pub bucket_rows: u64,
    /// Incoming peer sessions.
    pub hub: PeerHub,
    /// Largest frame on a peer link.
    pub frame_bytes_max: usize,
    /// How long a link may be silent.
    pub idle_timeout: Duration,
    /// How long to wait for the peer to connect.
    pub connect_timeout: Duration,
    /// TLS for the peer links (`None`: plain TCP, an insecure option for tests).
    pub tls: Option<std::sync::Arc<crate::link::PeerCredentials>>,
    /// The enclave `tee` tasks run in (`None`: this worker runs none).
    pub tee: Option<std::sync::Arc<dyn TeeHost>>,
    /// The operator's dealer, for `mpc` tasks with dealer triples (`None`: such a task fails
    /// as a ticket error).
    pub dealer: Option<std::sync::Arc<dyn DealerDial>>,
}

/// Opens a task's link to the operator's dealer (`Operator.Dealer`; the operator pairs it with
/// the other party's, see `tessera_scheduler::dealer`).
#[async_trait::async_trait]
pub trait DealerDial: Send + Sync + std::fmt::Debug {
    /// The link of task `task_id`, carrying frames of at most
    /// [`tessera_core::limits::FRAME_BYTES_MAX`] bytes.
    ///
    /// # Errors
    /// A ticket error when the operator says the task is not this worker's live dealer task;
    /// a link error when the operator cannot be reached or its dealer is busy.
    async fn dial(&self, task_id: &str) -> Result<tessera_proto::link::FrameLink, TaskError>;
}

/// The enclave a worker runs `tee` tasks in, and the operator's key broker behind it.
#[async_trait::async_trait]
pub trait TeeHost: Send + Sync + std::fmt::Debug {
    /// The enclave's key pair: the public half is the key its attestation binds.
    fn enclave(&self) -> &tessera_tee::EnclaveKeyPair;
    /// Asks the operator's key broker for the dataset key of the job of `task_id`, wrapped to
    /// the enclave's key.
    async fn release_key(&self, task_id: &str) -> Result<tessera_tee::ReleasedKey, TaskError>;
}

/// Where a task reports its engine's delivery point: the moment the receiver is able to
/// compute the output on its own. From then on the operator charges the job whatever happens
/// (`tessera_accounting::settle::delivered_job`).
#[async_trait::async_trait]
pub trait DeliverySink: Send + Sync {
    /// The delivery point is reached; this party's task read `rows_in` rows. Returns whether
    /// the operator recorded it (after retries); `false` stops the task before its last frame.
    async fn delivered(&self, rows_in: u64) -> bool;
}

/// The PSI sender's [`tessera_psi::DeliveryGate`] over a [`DeliverySink`].
pub(crate) struct SinkGate<'a> {
    pub(crate) sink: &'a dyn DeliverySink,
    pub(crate) rows_in: u64,
}

#[async_trait::async_trait]
impl tessera_psi::DeliveryGate for SinkGate<'_> {
    async fn record(&self) -> bool {
        self.sink.delivered(self.rows_in).await
    }
}

/// Resolves `name` inside `dir`, refusing anything but a plain file name.
fn inside(dir: &Path, name: &str) -> Result<PathBuf, TaskError> {
    let p = Path::new(name);
    let plain = p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
    if !plain || name.starts_with('.') {
        return Err(TaskError::Input(format!(
            "{name:?} is not a plain file name"
        )));
    }
    Ok(dir.join(p))
}

/// The dataset file `name` in the dataset directory `dir`: a plain name, and, if it is a
/// symbolic link, one that resolves inside `dir` (a link to `/etc/passwd` placed in the
/// directory is refused, not read). A missing file is left to the reader's clear error.
pub fn dataset_path(dir: &Path, name: &str) -> Result<PathBuf, TaskError> {
    let path = inside(dir, name)?;
    let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        let within = match (std::fs::canonicalize(dir), std::fs::canonicalize(&path)) {
            (Ok(d), Ok(target)) => target.starts_with(&d),
            // A dangling link: the reader reports the missing file.
            (_, Err(_)) => true,
            (Err(_), Ok(_)) => false,
        };
        if !within {
            return Err(TaskError::Input(format!(
                "{}: a symbolic link to a file outside the dataset directory; datasets are \
                 read only from inside it",
                path.display()
            )));
        }
    }
    Ok(path)
}

/// The result file `name` in the output directory `dir`, checked before any work is done so
/// a job does not run to the end only to fail on its output: `dir` must be an existing
/// directory and `name` must not be an existing directory. Errors name the user's path (never
/// a temporary file) and the cause.
pub fn result_path(dir: &Path, name: &str) -> Result<PathBuf, TaskError> {
    let path = inside(dir, name)?;
    match tessera_core::table::output_path_problem(&path) {
        Some(cause) => Err(TaskError::Internal(format!(
            "cannot write the result {}: {cause}",
            path.display()
        ))),
        None => Ok(path),
    }
}

/// [`result_path`], refused up front if the name is taken: a result never replaces a file
/// (the write checks again, atomically).
pub(crate) fn fresh_result_path(dir: &Path, name: &str) -> Result<PathBuf, TaskError> {
    let path = result_path(dir, name)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(TaskError::Input(format!(
            "result file {name:?} already exists in the output directory; a result never \
             replaces a file"
        )));
    }
    Ok(path)
}

/// Runs a checked task to completion. The sender reports the delivery point to `delivery`
/// before it returns.
pub async fn run_task(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    match spec.scene.as_str() {
        tessera_core::job::scene::PSI => {}
        tessera_core::job::scene::PREVIEW => return run_preview(env, spec, delivery).await,
        tessera_core::job::scene::MPC => {
            return crate::mpc::run(env, spec, progress, delivery).await;
        }
        tessera_core::job::scene::TEE => {
            return crate::tee::run(env, spec, progress, delivery).await;
        }
        tessera_core::job::scene::FL => {
            return crate::fl::run(env, spec, progress, delivery).await;
        }
        tessera_core::job::scene::PSI_PAYLOAD => {
            return crate::join::run_psi_payload(env, spec, progress, delivery).await;
        }
        other => {
            return Err(TaskError::Internal(format!(
                "scene {other} is not supported by this worker"
            )));
        }
    }
    let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
    let key_spec = KeySpec {
        columns: spec.key_columns.clone(),
        case: spec.key_case,
        unicode: spec.unicode_form,
        empty: spec.empty_keys,
    };
    // Where the result goes, refused up front if the name is taken: a result never replaces
    // a file (the write checks again, atomically).
    let out_path = match (spec.role, spec.mode, spec.output.is_empty()) {
        (TaskRole::Receiver, PsiMode::Intersection | PsiMode::Both, false)
        | (TaskRole::Sender, PsiMode::Both, false) => {
            Some(fresh_result_path(&env.output_dir, &spec.output)?)
        }
        _ => None,
    };
    let header: Vec<String> = match out_path {
        Some(_) => spec
            .key_columns
            .iter()
            .chain(&spec.carry_columns)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    if spec.protocol == PsiProtocol::EcdhOprf {
        return crate::oprf::run(
            env, spec, path, key_spec, out_path, header, progress, delivery,
        )
        .await;
    }
    if spec.mode.reveals_keys() {
        return run_psi_bucketed(
            env, spec, path, key_spec, out_path, header, progress, delivery,
        )
        .await;
    }
    // Size mode: one ECDH run on the whole set in memory (bucketing would reveal the size
    // per bucket).
    progress.report("read", 0, 0);
    let input = tokio::task::spawn_blocking(move || read_keys_keeping(&path, &key_spec, &[]))
        .await
        .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
        .map_err(|e| TaskError::Input(e.to_string()))?;
    progress.report("read", input.rows, input.rows);

    let link = open_link(env, spec).await?;
    run_psi_size(spec, link, input, progress, delivery).await
}

/// Opens the task's peer link: dials or waits for the peer worker its ticket names.
pub(crate) async fn open_link(env: &ExecEnv, spec: &TaskSpec) -> Result<GrpcLink, TaskError> {
    // With TLS, the peer must be the worker the ticket names: its certificate says so.
    let expected = match &env.tls {
        Some(_) => Some(
            tessera_pki::PeerIdentity::new(&spec.peer_party, &spec.peer_worker_id).map_err(
                |e| TaskError::Ticket(format!("the ticket names no valid peer worker: {e}")),
            )?,
        ),
        None => None,
    };
    match (spec.dial_peer, &env.tls, &expected) {
        (true, Some(credentials), Some(peer)) => {
            GrpcLink::dial_tls_kept(
                &spec.peer_addr,
                &spec.session_id,
                env.frame_bytes_max,
                env.idle_timeout,
                env.connect_timeout,
                credentials,
                peer,
            )
            .await
        }
        (true, _, _) => {
            GrpcLink::dial(
                &spec.peer_addr,
                &spec.session_id,
                env.frame_bytes_max,
                env.idle_timeout,
                env.connect_timeout,
            )
            .await
        }
        (false, _, peer) => {
            env.hub
                .accept_from(&spec.session_id, env.connect_timeout, peer.as_ref())
                .await
        }
    }
    .map_err(|e| TaskError::Link(e.to_string()))
}

/// A `preview` task (see [`crate::preview`]): the sender reads the signed rows and columns
/// and sends them after recording the delivery; the receiver checks and writes them.
async fn run_preview(
    env: &ExecEnv,
    spec: &TaskSpec,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let Some(preview) = &spec.preview else {
        return Err(TaskError::Ticket(
            "a preview task without its rows and columns".into(),
        ));
    };
    let mut outcome = TaskOutcome::default();
    match spec.role {
        TaskRole::Sender => {
            let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
            let table = crate::preview::read(path, preview).await?;
            let link = open_link(env, spec).await?;
            outcome.rows_in = crate::preview::send(&link, &table, delivery).await?;
            outcome.link = link.stats();
        }
        TaskRole::Receiver => {
            let out = fresh_result_path(&env.output_dir, &spec.output)?;
            let link = open_link(env, spec).await?;
            let (rows, written) = crate::preview::receive(&link, preview, out).await?;
            outcome.result_size = Some(rows);
            outcome.result_file = Some(written);
            outcome.result_location = spec.output.clone();
            outcome.link = link.stats();
        }
    }
    Ok(outcome)
}

/// A size-mode PSI task's engine part, on an open link.
async fn run_psi_size(
    spec: &TaskSpec,
    link: GrpcLink,
    input: tessera_core::table::KeyedInput,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    // Both tasks of a job carry the same protocol in their signed specs.
    let cfg = psi_config(spec, Mode::SizeOnly);
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let mut outcome = TaskOutcome {
        rows_in: input.rows,
        empty_keys: input.empty_keys,
        ..TaskOutcome::default()
    };
    match spec.role {
        TaskRole::Sender => {
            // ECDH-PSI's delivery point, record before release: the sender's last frame
            // leaves only once the operator has recorded the delivery.
            let gate = SinkGate {
                sink: delivery,
                rows_in: input.rows,
            };
            tessera_psi::run_sender_reporting_delivery(
                &link,
                &input.keys,
                &cfg,
                &mut rng,
                progress.as_ref(),
                &gate,
            )
            .await
            .map_err(psi_task_error)?;
        }
        TaskRole::Receiver => {
            let out =
                tessera_psi::run_receiver(&link, &input.keys, &cfg, &mut rng, progress.as_ref())
                    .await
                    .map_err(psi_task_error)?;
            outcome.result_size = Some(out.intersection_size);
        }
    }
    outcome.link = link.stats();
    Ok(outcome)
}

/// Creates `dir` (and its parents) readable by this user only (0700 on Unix): scratch files
/// hold the keys in clear.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// The PSI engine's configuration of a task: the protocol its signed spec names, in `mode`.
pub(crate) fn psi_config(spec: &TaskSpec, mode: Mode) -> PsiConfig {
    PsiConfig {
        protocol: match spec.protocol {
            PsiProtocol::Rr22 => Protocol::Rr22,
            PsiProtocol::Ecdh => Protocol::Ecdh,
            PsiProtocol::EcdhOprf => Protocol::EcdhOprf,
        },
        mode,
        ..PsiConfig::default()
    }
}

/// A PSI engine error as the task reports it: an exceeded bound is this party's input, a
/// local file this party's own failure, anything else the peer's.
pub(crate) fn psi_task_error(e: PsiError) -> TaskError {
    match e {
        PsiError::TooLarge { .. } => TaskError::Input(e.to_string()),
        PsiError::Storage(_) => TaskError::Internal(e.to_string()),
        PsiError::Link(
            tessera_core::LinkError::PeerGone(_)
            | tessera_core::LinkError::Timeout { .. }
            | tessera_core::LinkError::Transport(_),
        ) => TaskError::Link(e.to_string()),
        e => TaskError::Peer(e.to_string()),
    }
}

/// A file name made of `text`: ASCII letters, digits and `-` kept, anything else `_`.
pub(crate) fn safe_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How long a task's work directory outlives the task when the task stopped on a broken link,
/// so that a resumed run of the same job can take it up: one hour (the operator's resume
/// window is shorter). Older ones go when the worker starts and whenever a task starts.
pub const RESUME_STATE_KEEP_SECS: u64 = 3600;

/// The file in a task's work directory naming the input its state was made from.
const FINGERPRINT_FILE: &str = "input.fingerprint";

/// A task's own scratch directory under the worker's work directory (0700). It is the same
/// directory for every attempt of the same task (named by the job's session and the role), so
/// a resumed run finds what the stopped one left; it is emptied when it was made from another
/// input (the fingerprint: a digest of the dataset file's content, the task's key
/// settings and the worker's bucket size), and removed when the task ends, however it ends,
/// unless it stopped on a broken link ([`Scratch::keep_for_resume`]). A cancelled task's
/// staging, which runs on a blocking thread the cancellation cannot stop, sees `stopped` and
/// removes what it wrote after.
struct Scratch {
    dir: PathBuf,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    keep: bool,
}

impl Scratch {
    fn open(env: &ExecEnv, spec: &TaskSpec, fingerprint: &str) -> Result<Self, TaskError> {
        sweep_work_dir(&env.work_dir, RESUME_STATE_KEEP_SECS);
        let dir = env.work_dir.join(safe_name(&format!(
            "{}-{}",
            spec.session_id,
            spec.role.as_str()
        )));
        let fp_path = dir.join(FINGERPRINT_FILE);
        let same = std::fs::read_to_string(&fp_path).is_ok_and(|f| f == fingerprint);
        if !same {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let made = private_dir(&dir).and_then(|()| {
            // Written on every attempt: the directory's time is its last use.
            let tmp = dir.join("input.fingerprint.tmp");
            std::fs::write(&tmp, fingerprint)?;
            std::fs::rename(&tmp, &fp_path)
        });
        made.map_err(|e| {
            TaskError::Internal(format!(
                "cannot make the task's work directory {}: {e}",
                dir.display()
            ))
        })?;
        if same {
            tracing::info!(job = %spec.job_id, task = %spec.task_id, "taking up the work directory of an interrupted attempt");
        }
        match OPEN_SCRATCH.lock() {
            Ok(mut v) => v.push(dir.clone()),
            Err(p) => p.into_inner().push(dir.clone()),
        }
        Ok(Scratch {
            dir,
            stopped: Arc::default(),
            keep: false,
        })
    }

    /// Leaves the directory in place when the task ends: the run may resume.
    fn keep_for_resume(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        let mut open = OPEN_SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = open.iter().position(|d| d == &self.dir) {
            open.swap_remove(i);
        }
    }
}

/// The work directories of the tasks this process runs now: never swept, however long they
/// have been quiet.
static OPEN_SCRATCH: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes the task directories under `work_dir` not used for `keep_secs` (left by tasks that
/// stopped on a broken link and were never resumed), except those of running tasks. Errors are
/// ignored: the sweep is tidying.
pub(crate) fn sweep_work_dir(work_dir: &Path, keep_secs: u64) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    let open = OPEN_SCRATCH
        .lock()
        .map(|v| v.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    let now = std::time::SystemTime::now();
    for e in entries.filter_map(Result::ok) {
        // Task directories only: the encoded sets of `ecdh-oprf` have their own, longer keep.
        if open.contains(&e.path()) || e.path() == crate::oprf::cache_dir(work_dir) {
            continue;
        }
        if unused_for(&e, now, keep_secs) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// What a bucketed task's state was made from: a digest of the dataset file's content, the
/// task's key settings and the worker's bucket size. Another input
/// (the provider replaced its file, the worker restarted with another memory limit) starts the
/// task's state afresh.
pub(crate) fn input_fingerprint(bucket_rows: u64, spec: &TaskSpec, path: &Path) -> String {
    // The file's content, not its size and time: an edit that keeps both (a restore from a
    // backup, `cp -p`) must not pass for the same input. About a second per GB.
    let mut content = blake3::Hasher::new();
    let read = std::fs::File::open(path).and_then(|mut f| std::io::copy(&mut f, &mut content));
    let content = match read {
        Ok(len) => format!("{len}:{}", content.finalize().to_hex()),
        Err(e) => format!("unreadable: {}", e.kind()),
    };
    let described = serde_json::json!({
        "dataset": spec.dataset_location,
        "content": content,
        "role": spec.role.as_str(),
        "protocol": spec.protocol,
        "key_columns": spec.key_columns,
        "key_case": spec.key_case,
        "unicode_form": spec.unicode_form,
        "empty_keys": spec.empty_keys,
        "carry_columns": spec.carry_columns,
        "bucket_rows": bucket_rows,
    });
    blake3::hash(described.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// The file in a task's work directory with the counts of its finished staging.
const COUNTS_FILE: &str = "counts.txt";

/// Rows between two "read" progress reports while a dataset streams in.
const READ_REPORT_ROWS: u64 = 1 << 16;

/// An intersection-mode PSI task through [`tessera_psi::bucket`]: the dataset streams in
/// (never whole in memory) and, past the worker's `bucket_rows`, is split by the job's keyed
/// hash into buckets spilled to the task's work directory; the parties agree on the bucket
/// count and intersect bucket by bucket, and the receiver writes the matched rows in file
/// order (the same file an unbucketed run writes). The bucket key is derived from the job's
/// session id, which both parties' signed tickets carry.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_psi_bucketed(
    env: &ExecEnv,
    spec: &TaskSpec,
    path: PathBuf,
    key_spec: KeySpec,
    out_path: Option<PathBuf>,
    header: Vec<String>,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let fingerprint = {
        let (env_rows, spec2, path2) = (env.bucket_rows, spec.clone(), path.clone());
        tokio::task::spawn_blocking(move || input_fingerprint(env_rows, &spec2, &path2))
            .await
            .map_err(|e| TaskError::Internal(format!("fingerprint task: {e}")))?
    };
    let mut scratch = Scratch::open(env, spec, &fingerprint)?;
    let out = run_psi_bucketed_in(
        env, spec, &scratch, path, key_spec, out_path, header, progress, delivery,
    )
    .await;
    if let Err(TaskError::Link(_)) = &out {
        // The peer went away mid-run: what is done stays for a resumed attempt.
        scratch.keep_for_resume();
    }
    out
}

/// Reads a finished staging's counts (rows, empty keys) back, if both it and the staging are
/// there for `key`.
fn restore_staging(
    scratch: &Scratch,
    key: &BucketKey,
) -> Option<(tessera_core::table::StreamedCounts, Staged)> {
    let text = std::fs::read_to_string(scratch.dir.join(COUNTS_FILE)).ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(rows)), Some(Ok(empty_keys)), None) = (it.next(), it.next(), it.next()) else {
        return None;
    };
    match Staged::restore(key.clone(), &scratch.dir.join("spill")) {
        Ok(Some(staged)) if staged.rows() == rows => Some((
            tessera_core::table::StreamedCounts { rows, empty_keys },
            staged,
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the interrupted attempt's staging is damaged: staging again");
            let _ = std::fs::remove_dir_all(scratch.dir.join("spill"));
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_psi_bucketed_in(
    env: &ExecEnv,
    spec: &TaskSpec,
    scratch: &Scratch,
    path: PathBuf,
    key_spec: KeySpec,
    out_path: Option<PathBuf>,
    header: Vec<String>,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let key = BucketKey::derive(spec.session_id.as_bytes());
    let (counts, staged) = match restore_staging(scratch, &key) {
        Some((counts, staged)) => {
            tracing::info!(job = %spec.job_id, rows = counts.rows, "staging taken up from the interrupted attempt");
            progress.report("read", counts.rows, counts.rows);
            (counts, staged)
        }
        None => {
            stage_input(
                scratch,
                key,
                env.bucket_rows,
                path,
                key_spec,
                &header,
                &progress,
                StageFor::of(spec),
            )
            .await?
        }
    };
    run_staged(
        env, spec, scratch, counts, staged, out_path, header, progress, delivery,
    )
    .await
}

/// What a staging keeps besides the bucketed rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageFor {
    /// A plain PSI.
    Keys,
    /// The provider's side of a join: each row's extra is its payload, at most
    /// [`tessera_psi::PAYLOAD_BYTES_MAX`].
    Payload,
    /// The buyer's side of a left or difference join: every row's kept values also go, in
    /// file order, to [`ALL_ROWS_FILE`] (the result lists unmatched rows too).
    AllRows,
}

impl StageFor {
    fn of(spec: &TaskSpec) -> Self {
        match (&spec.join, spec.role) {
            (Some(_), TaskRole::Sender) => StageFor::Payload,
            (Some(j), TaskRole::Receiver) if j.kind != tessera_core::JoinKind::Inner => {
                StageFor::AllRows
            }
            _ => StageFor::Keys,
        }
    }
}

/// The buyer's every row of a left or difference join, in file order: per row a `u32` (LE)
/// length and its kept values ([`crate::join::encode_values`]).
pub(crate) const ALL_ROWS_FILE: &str = "rows.bin";

/// Streams the dataset into a [`Stager`] under the task's work directory.
#[allow(clippy::too_many_arguments)]
async fn stage_input(
    scratch: &Scratch,
    key: BucketKey,
    bucket_rows: u64,
    path: PathBuf,
    key_spec: KeySpec,
    header: &[String],
    progress: &Arc<dyn tessera_psi::Progress>,
    stage_for: StageFor,
) -> Result<(tessera_core::table::StreamedCounts, Staged), TaskError> {
    let mut stager = Stager::new(key, bucket_rows, scratch.dir.join("spill"));
    let all_rows_path = scratch.dir.join(ALL_ROWS_FILE);
    let mut all_rows = match stage_for {
        StageFor::AllRows => Some(std::io::BufWriter::new(
            std::fs::File::create(&all_rows_path).map_err(|e| {
                TaskError::Internal(format!("creating {}: {e}", all_rows_path.display()))
            })?,
        )),
        _ => None,
    };
    let mut input_error: Option<TaskError> = None;
    progress.report("read", 0, 0);
    let keep = header.to_vec();
    let reporter = progress.clone();
    let (stopped, scratch_dir) = (scratch.stopped.clone(), scratch.dir.clone());
    let (counts, staged) = tokio::task::spawn_blocking(move || {
        let mut spill_error = None;
        let counts = stream_keys(&path, &key_spec, &keep, |key, kept| {
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TableError::Io("the task was stopped".into()));
            }
            let extra = if kept.is_empty() {
                Vec::new()
            } else {
                crate::join::encode_values(&kept)
            };
            if stage_for == StageFor::Payload && extra.len() > tessera_psi::PAYLOAD_BYTES_MAX {
                input_error = Some(TaskError::Input(format!(
                    "row {} of the dataset: its payload columns hold {} bytes, more than the \
                     {} a join delivers per row",
                    stager.rows() + 1,
                    extra.len(),
                    tessera_psi::PAYLOAD_BYTES_MAX
                )));
                return Err(TableError::Io("a payload too large".into()));
            }
            if let Some(w) = all_rows.as_mut() {
                use std::io::Write;
                let written = w
                    .write_all(&(extra.len() as u32).to_le_bytes())
                    .and_then(|()| w.write_all(&extra));
                if let Err(e) = written {
                    input_error = Some(TaskError::Internal(format!("writing the rows: {e}")));
                    return Err(TableError::Io("writing the rows".into()));
                }
            }
            if let Err(e) = stager.push(key, extra) {
                spill_error = Some(e);
                return Err(TableError::Io("spilling the input".into()));
            }
            if stager.rows().is_multiple_of(READ_REPORT_ROWS) {
                reporter.report("read", stager.rows(), 0);
            }
            Ok(())
        });
        if stopped.load(std::sync::atomic::Ordering::SeqCst) {
            drop(stager);
            let _ = std::fs::remove_dir_all(&scratch_dir);
            return Err(TaskError::Cancelled(
                "the task was stopped while reading".into(),
            ));
        }
        if let Some(e) = input_error {
            return Err(e);
        }
        if let Some(w) = all_rows {
            use std::io::Write;
            let flushed = w
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|mut f| f.flush());
            if let Err(e) = flushed {
                return Err(TaskError::Internal(format!("writing the rows: {e}")));
            }
        }
        match (spill_error, counts) {
            (Some(e), _) => Err(TaskError::Internal(format!("staging the input: {e}"))),
            (None, Err(e)) => Err(TaskError::Input(e.to_string())),
            (None, Ok(counts)) => stager
                .finish()
                .map(|staged| (counts, staged))
                .map_err(|e| TaskError::Internal(format!("staging the input: {e}"))),
        }
    })
    .await
    .map_err(|e| TaskError::Internal(format!("reader task: {e}")))??;
    let counts_text = format!("{} {}", counts.rows, counts.empty_keys);
    std::fs::write(scratch.dir.join(COUNTS_FILE), counts_text)
        .map_err(|e| TaskError::Internal(format!("writing the staging's counts: {e}")))?;
    progress.report("read", counts.rows, counts.rows);
    Ok((counts, staged))
}

/// The bucketed run on a staged input, and the receiver's result file.
#[allow(clippy::too_many_arguments)]
async fn run_staged(
    env: &ExecEnv,
    spec: &TaskSpec,
    scratch: &Scratch,
    counts: tessera_core::table::StreamedCounts,
    staged: Staged,
    out_path: Option<PathBuf>,
    header: Vec<String>,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let mut staged = staged;
    let parts_dir = scratch.dir.join("parts");
    // `both` mode: the receiver shares the intersection, the sender writes its own result.
    let share = spec.mode == PsiMode::Both;
    // A join (`psi_payload`): each sender row's extra is its payload.
    let payload = spec.join.is_some();
    if spec.role == TaskRole::Receiver {
        // An attempt stopped after it had the master key: the sender has ended, and this side
        // finishes alone.
        let alone = tessera_psi::bucket::finish_receiver_alone(&mut staged, &parts_dir, share)
            .await
            .map_err(psi_task_error)?;
        if let Some(out) = alone {
            tracing::info!(job = %spec.job_id, "finishing the interrupted run alone: the sender had sent its last key");
            let outcome = TaskOutcome {
                rows_in: counts.rows,
                empty_keys: counts.empty_keys,
                ..TaskOutcome::default()
            };
            return write_receiver_result(spec, scratch, outcome, out, out_path, header).await;
        }
    }
    let link = open_link(env, spec).await?;
    let cfg = psi_config(spec, Mode::Intersection);
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let mut outcome = TaskOutcome {
        rows_in: counts.rows,
        empty_keys: counts.empty_keys,
        ..TaskOutcome::default()
    };
    match spec.role {
        TaskRole::Sender => {
            let gate = SinkGate {
                sink: delivery,
                rows_in: counts.rows,
            };
            let sender_parts = share.then_some(parts_dir.as_path());
            let out = tessera_psi::bucket::run_sender_bucketed(
                &link,
                staged,
                payload,
                sender_parts,
                &cfg,
                &mut rng,
                progress.as_ref(),
                &gate,
            )
            .await
            .map_err(psi_task_error)?;
            outcome.link = link.stats();
            match out.shared {
                Some(shared) => {
                    let size = shared.intersection_size;
                    write_bucketed_result(spec, outcome, size, shared.parts, out_path, header).await
                }
                None => Ok(outcome),
            }
        }
        TaskRole::Receiver => {
            let out = tessera_psi::bucket::run_receiver_bucketed(
                &link,
                staged,
                &parts_dir,
                payload,
                share,
                &cfg,
                &mut rng,
                progress.as_ref(),
            )
            .await
            .map_err(psi_task_error)?;
            outcome.link = link.stats();
            write_receiver_result(spec, scratch, outcome, out, out_path, header).await
        }
    }
}

/// The receiver's result of a bucketed run: a join's table, or the matched rows.
async fn write_receiver_result(
    spec: &TaskSpec,
    scratch: &Scratch,
    outcome: TaskOutcome,
    out: tessera_psi::bucket::BucketedReceiverOutput,
    out_path: Option<PathBuf>,
    header: Vec<String>,
) -> Result<TaskOutcome, TaskError> {
    match (&spec.join, out_path) {
        (Some(join), Some(path)) => {
            let all_rows = scratch.dir.join(ALL_ROWS_FILE);
            crate::join::write_bucketed_join(spec, join, outcome, out, path, header, all_rows).await
        }
        (_, out_path) => {
            let size = out.intersection_size;
            write_bucketed_result(spec, outcome, size, out.parts, out_path, header).await
        }
    }
}

/// A party's result file from a bucketed run's merged parts (the receiver's, or the sender's
/// in `both` mode).
async fn write_bucketed_result(
    spec: &TaskSpec,
    mut outcome: TaskOutcome,
    intersection_size: u64,
    parts: tessera_psi::bucket::Parts,
    out_path: Option<PathBuf>,
    header: Vec<String>,
) -> Result<TaskOutcome, TaskError> {
    outcome.result_size = Some(intersection_size);
    if let Some(path) = out_path {
        let width = header.len();
        let written = tokio::task::spawn_blocking(move || {
            let merged = parts
                .merged()
                .map_err(|e| TableError::Io(format!("reading the matched rows: {e}")))?;
            let rows = merged.map(|m| {
                let m = m.map_err(|e| TableError::Io(format!("reading the matched rows: {e}")))?;
                crate::join::decode_values(&m.extra, width)
                    .map_err(|_| TableError::Io("a matched row's kept values are damaged".into()))
            });
            try_write_result_csv(&path, &header, rows)
        })
        .await
        .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
        .map_err(result_write_error)?;
        outcome.result_file = Some(written);
        outcome.result_location = spec.output.clone();
    }
    Ok(outcome)
}

/// A result file that could not be written, as the task reports it: a name already taken is
/// this party's input, anything else its own failure.
pub(crate) fn result_write_error(e: TableError) -> TaskError {
    match e {
        TableError::OutputExists { .. } => TaskError::Input(e.to_string()),
        e => TaskError::Internal(format!("writing the result: {e}")),
    }
}

/// Whether the directory entry `e` was last changed `keep_secs` or more before `now`.
pub(crate) fn unused_for(
    e: &std::fs::DirEntry,
    now: std::time::SystemTime,
    keep_secs: u64,
) -> bool {
    e.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age.as_secs() >= keep_secs)
}

/// Measures a future's wall and process CPU time.
pub async fn measured<F: std::future::Future>(f: F) -> (F::Output, u64, u64) {
    let cpu0 = usage::process_cpu_ms();
    let t0 = Instant::now();
    let out = f.await;
    let wall_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    (out, wall_ms, usage::process_cpu_ms().saturating_sub(cpu0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_spares_running_tasks_and_recent_directories() {
        let root = tempfile::tempdir().expect("tempdir");
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7_200);
        let dir = |name: &str, old: bool| {
            let d = root.path().join(name);
            std::fs::create_dir_all(d.join("parts")).expect("mkdir");
            if old {
                std::fs::File::open(&d)
                    .and_then(|f| f.set_modified(two_hours_ago))
                    .expect("age it");
            }
            d
        };
        let (stale, running, recent) = (
            dir("stale", true),
            dir("running", true),
            dir("recent", false),
        );
        OPEN_SCRATCH.lock().expect("lock").push(running.clone());
        sweep_work_dir(root.path(), RESUME_STATE_KEEP_SECS);
        OPEN_SCRATCH.lock().expect("lock").retain(|d| d != &running);
        assert!(!stale.exists(), "a directory quiet for two hours goes");
        assert!(
            running.exists(),
            "a running task's directory stays, however quiet"
        );
        assert!(recent.exists());
    }

    #[test]
    fn result_path_names_the_users_path_and_the_cause() {
        let root = tempfile::tempdir().expect("tempdir");
        let outputs = root.path().join("outputs");
        let e = result_path(&outputs, "x.csv").expect_err("missing dir");
        let text = e.to_string();
        assert!(
            text.contains(&outputs.join("x.csv").display().to_string()),
            "{text}"
        );
        assert!(text.contains("does not exist"), "{text}");
        std::fs::write(&outputs, "a file").expect("write");
        let e = result_path(&outputs, "x.csv").expect_err("file, not dir");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        std::fs::remove_file(&outputs).expect("rm");
        std::fs::create_dir_all(outputs.join("taken.csv")).expect("mkdir");
        let e = result_path(&outputs, "taken.csv").expect_err("dir in the way");
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert_eq!(
            result_path(&outputs, "ok.csv").expect("fine"),
            outputs.join("ok.csv")
        );
        assert!(result_path(&outputs, "../x.csv").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_dataset_link_may_not_leave_the_dataset_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let ds = root.path().join("datasets");
        std::fs::create_dir_all(&ds).expect("mkdir");
        std::fs::write(root.path().join("outside.csv"), "k\n1\n").expect("write");
        std::fs::write(ds.join("real.csv"), "k\n1\n").expect("write");
        std::os::unix::fs::symlink(root.path().join("outside.csv"), ds.join("out.csv"))
            .expect("link");
        std::os::unix::fs::symlink(ds.join("real.csv"), ds.join("alias.csv")).expect("link");
        let e = dataset_path(&ds, "out.csv").expect_err("outside");
        assert!(
            e.to_string().contains("outside the dataset directory"),
            "{e}"
        );
        assert_eq!(
            dataset_path(&ds, "alias.csv").expect("inside"),
            ds.join("alias.csv")
        );
        assert_eq!(
            dataset_path(&ds, "real.csv").expect("plain"),
            ds.join("real.csv")
        );
        assert!(
            dataset_path(&ds, "missing.csv").is_ok(),
            "left to the reader"
        );
    }
}
