//! Live workers: registration, heartbeats, and the loss of a worker (silence past the
//! heartbeat timeout, or its task stream closing), which fails its running jobs and releases
//! their counts. A lost worker is shown as lost, and forgotten once silent for
//! [`WORKER_FORGET_MS`]; the tasks running on a worker are counted from the live jobs, never
//! kept on the side.

use std::collections::HashMap;

use serde::Serialize;
use tessera_auth::Caller;
use tessera_core::WorkerAttributes;
use tessera_store::{FailureOrigin, JobFinish, WorkerRecord};
use tokio::sync::mpsc;

use crate::{Delivery, Scheduler, SchedulerError};

/// A worker that is not live and has been silent this long (24 h) is forgotten: dropped from
/// the operator's memory and from `worker list` (its registration stays in the store and the
/// audit chain). Registering again under its id brings it back.
pub const WORKER_FORGET_MS: i64 = 24 * 3_600_000;

/// A registered worker as the scheduler holds it.
#[derive(Debug)]
pub struct LiveWorker {
    /// Declared attributes.
    pub attributes: WorkerAttributes,
    /// Peer-link address.
    pub peer_addr: String,
    /// Last sign of life.
    pub last_seen_ms: i64,
    /// Its task stream, while connected.
    pub(crate) deliveries: Option<mpsc::Sender<Delivery>>,
}

/// A snapshot of a worker for placement and display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// Worker id.
    pub worker_id: String,
    /// Attributes.
    pub attributes: WorkerAttributes,
    /// Peer-link address.
    pub peer_addr: String,
    /// Whether it is connected and heard from recently (else it is lost).
    pub live: bool,
    /// Tasks of live jobs placed on it that have not reported.
    pub running: usize,
}

/// How long admissions place on one count of running tasks per worker (ms, on the
/// scheduler's clock): see [`Scheduler::placement_workers`].
pub(crate) const RUNNING_SNAPSHOT_MS: i64 = 25;

/// Running tasks per worker as counted at `taken_at_ms`, plus those dispatched since.
#[derive(Debug)]
pub(crate) struct RunningSnapshot {
    pub(crate) taken_at_ms: i64,
    pub(crate) counts: HashMap<String, usize>,
}

impl LiveWorker {
    pub(crate) fn is_live(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.deliveries.as_ref().is_some_and(|d| !d.is_closed())
            && now_ms.saturating_sub(self.last_seen_ms) < timeout_ms
    }

    /// Not live and silent for [`WORKER_FORGET_MS`].
    fn forgotten(&self, now_ms: i64, timeout_ms: i64) -> bool {
        !self.is_live(now_ms, timeout_ms)
            && now_ms.saturating_sub(self.last_seen_ms) >= WORKER_FORGET_MS
    }
}

/// What a registration hands the worker.
#[derive(Debug)]
pub struct Registration {
    /// The worker's id (drawn when the request named none).
    pub worker_id: String,
    /// A new credential (`tsw_`), when the worker registered with a registration token; the
    /// worker presents it on every later call. `None` when it registered again with its own
    /// credential. Its text is shown to the worker once and never logged.
    pub credential: Option<tessera_auth::Token>,
    /// The peer-link certificate (PEM) signed from the worker's CSR, naming exactly its party
    /// and id; valid for [`WORKER_CERT_VALIDITY_SECS`]. `None` when no CSR came.
    pub certificate_pem: Option<String>,
}

/// How long a worker's peer-link certificate is valid: 7 days. A worker uses the certificate
/// of its start (renewal while it runs is not built yet).
pub const WORKER_CERT_VALIDITY_SECS: u64 = 7 * 24 * 3600;

impl Scheduler {
    /// Registers (or re-registers) a worker for `caller`, whom the gateway has authorised
    /// (`AccountService::check_registration`). With a registration token (a
    /// [`Caller::Registrant`]) the worker gets a new credential and any earlier credential of
    /// its id is revoked; the id must not belong to another party nor be held by a live
    /// worker (a process cannot take over a running worker's id; a worker restarted under
    /// its id waits until the old one is seen lost). With its own credential (a
    /// [`Caller::Worker`]), a worker registers itself again, e.g. after the operator restarted.
    /// A worker that registers again has restarted (or lost its task stream): the jobs of its
    /// unreported tasks fail, except resumable ones, whose tasks the worker's next task stream
    /// confirms or finds gone ([`crate::resume`]).
    /// Runs detached ([`Scheduler::detached`]).
    ///
    /// # Errors
    /// `Invalid` for an empty party, a worker id that is not 1 to 64 ASCII letters, digits,
    /// `-`, `_`, `.` or `@`, or a bad peer address; `Forbidden` for another party's
    /// worker id; `InUse` for an id held by a live worker.
    pub async fn register_worker(
        &self,
        caller: &Caller,
        worker_id: Option<String>,
        attributes: WorkerAttributes,
        peer_addr: String,
        csr_pem: Option<String>,
    ) -> Result<Registration, SchedulerError> {
        let caller = caller.clone();
        self.detached(move |s| async move {
            s.register_now(&caller, worker_id, attributes, peer_addr, csr_pem)
                .await
        })
        .await
    }

    async fn register_now(
        &self,
        caller: &Caller,
        worker_id: Option<String>,
        attributes: WorkerAttributes,
        peer_addr: String,
        csr_pem: Option<String>,
    ) -> Result<Registration, SchedulerError> {
        if attributes.party.trim().is_empty() {
            return Err(SchedulerError::Invalid(
                "worker party must not be empty".into(),
            ));
        }
        if peer_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(SchedulerError::Invalid(format!(
                "peer address {peer_addr:?} is not host:port"
            )));
        }
        let worker_id = match worker_id.filter(|w| !w.trim().is_empty()) {
            Some(w) => crate::accounts::account_id("worker", &w)?,
            None => self.random_id("w-"),
        };
        let now = self.now();
        let certificate_pem = match csr_pem.filter(|c| !c.trim().is_empty()) {
            None => None,
            Some(csr) => {
                let ca = self.ca.get().ok_or_else(|| {
                    SchedulerError::Invalid(
                        "this operator runs no certificate authority: register without a CSR"
                            .into(),
                    )
                })?;
                let identity = tessera_pki::PeerIdentity::new(&attributes.party, &worker_id)
                    .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
                let cert = ca
                    .sign_worker(&csr, &identity, now / 1000, WORKER_CERT_VALIDITY_SECS)
                    .map_err(|e| SchedulerError::Invalid(format!("certificate request: {e}")))?;
                self.metrics.certificate_issued(false);
                Some(cert)
            }
        };
        let (credential, record) = match caller {
            Caller::Registrant { .. } => {
                if let Some(p) = self.store.worker_party(&worker_id).await?
                    && p != attributes.party
                {
                    return Err(SchedulerError::Forbidden(format!(
                        "worker id {worker_id} is registered to another party"
                    )));
                }
                let live = self
                    .workers
                    .lock()
                    .await
                    .get(&worker_id)
                    .is_some_and(|w| w.is_live(now, self.config.heartbeat_timeout_ms));
                if live {
                    return Err(SchedulerError::InUse(format!(
                        "worker id {worker_id} is held by a live worker; stop it, or wait until \
                         the operator sees it lost"
                    )));
                }
                let (token, record) = self
                    .accounts()
                    .worker_credential(&worker_id, &attributes.party);
                (Some(token), Some(record))
            }
            _ => (None, None),
        };
        self.store
            .upsert_worker(
                &WorkerRecord {
                    worker_id: worker_id.clone(),
                    attributes: attributes.clone(),
                    peer_addr: peer_addr.clone(),
                    last_seen_ms: now,
                },
                now,
                record.as_ref(),
                &caller.describe(),
            )
            .await?;
        let mut workers = self.workers.lock().await;
        let previous = workers.insert(
            worker_id.clone(),
            LiveWorker {
                attributes,
                peer_addr,
                last_seen_ms: now,
                deliveries: None,
            },
        );
        drop(workers);
        if previous.is_some() {
            // A worker that registers again has restarted: whatever it ran is gone.
            self.fail_jobs_on_worker(&worker_id, "worker registered again", true)
                .await?;
        }
        Ok(Registration {
            worker_id,
            credential,
            certificate_pem,
        })
    }

    /// A new peer-link certificate for the registered worker `worker_id`, signed from `csr_pem`
    /// for its recorded party and id, valid [`WORKER_CERT_VALIDITY_SECS`] from now: how a
    /// running worker replaces its certificate before it expires (a new registration would
    /// end its running tasks). Returns the certificate PEM and its expiry (UTC ms).
    ///
    /// # Errors
    /// `NotFound` for an unknown worker; `Invalid` when this operator runs no CA or the CSR
    /// is refused (`tessera_pki::CertificateAuthority::sign_worker`).
    pub async fn renew_certificate(
        &self,
        worker_id: &str,
        csr_pem: &str,
    ) -> Result<(String, i64), SchedulerError> {
        let party = self
            .store
            .worker_party(worker_id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("worker {worker_id}")))?;
        let ca = self.ca.get().ok_or_else(|| {
            SchedulerError::Invalid("this operator runs no certificate authority".into())
        })?;
        let identity = tessera_pki::PeerIdentity::new(&party, worker_id)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        let now = self.now();
        let cert = ca
            .sign_worker(csr_pem, &identity, now / 1000, WORKER_CERT_VALIDITY_SECS)
            .map_err(|e| SchedulerError::Invalid(format!("certificate request: {e}")))?;
        let validity_ms = i64::try_from(WORKER_CERT_VALIDITY_SECS * 1000).unwrap_or(i64::MAX);
        self.metrics.certificate_issued(true);
        tracing::info!(worker = %worker_id, party = %party, "peer-link certificate renewed");
        Ok((cert, now.saturating_add(validity_ms)))
    }

    /// Records a heartbeat.
    pub async fn heartbeat(&self, worker_id: &str) -> Result<(), SchedulerError> {
        let now = self.now();
        {
            let mut workers = self.workers.lock().await;
            let w = workers
                .get_mut(worker_id)
                .ok_or_else(|| SchedulerError::NotFound(format!("worker {worker_id}")))?;
            w.last_seen_ms = now;
        }
        self.store.touch_worker(worker_id, now).await?;
        Ok(())
    }

    /// The tasks of live jobs that have not reported, per worker: what runs on each worker,
    /// derived from the jobs themselves (a count kept on the side drifted when a job ended
    /// without passing by it).
    pub(crate) async fn running_tasks(&self) -> HashMap<String, usize> {
        // Counted under borrowed ids (no copy per task), copied once per worker.
        let jobs = self.jobs.lock().await;
        let mut running: HashMap<&str, usize> = HashMap::new();
        for job in jobs.values() {
            for t in job.tasks.values().filter(|t| t.report.is_none()) {
                *running.entry(t.worker_id.as_str()).or_default() += 1;
            }
        }
        running
            .into_iter()
            .map(|(id, n)| (id.to_owned(), n))
            .collect()
    }

    /// Snapshot of the workers the operator knows (lost ones included until forgotten).
    pub async fn workers(&self) -> Vec<WorkerView> {
        let running = self.running_tasks().await;
        self.workers_with(&running).await
    }

    /// The workers as an admission places on them: as [`Scheduler::workers`], but with
    /// running counts taken at most [`RUNNING_SNAPSHOT_MS`] ago plus the tasks dispatched
    /// since ([`Scheduler::note_dispatched`]), so that admissions do not each walk every live
    /// job's tasks under the jobs lock. The counts only order workers of equal fit (the least
    /// busy first); tasks that ended within the window still count.
    pub(crate) async fn placement_workers(&self) -> Vec<WorkerView> {
        let running = {
            // Held while counting afresh: the admissions arriving meanwhile wait for that one
            // count instead of each walking the jobs too.
            let mut snapshot = self.running_snapshot.lock().await;
            let now = self.now();
            match snapshot.as_ref() {
                Some(s)
                    if (0..RUNNING_SNAPSHOT_MS).contains(&now.saturating_sub(s.taken_at_ms)) =>
                {
                    s.counts.clone()
                }
                _ => {
                    let counts = self.running_tasks().await;
                    *snapshot = Some(RunningSnapshot {
                        taken_at_ms: now,
                        counts: counts.clone(),
                    });
                    counts
                }
            }
        };
        self.workers_with(&running).await
    }

    /// Counts `worker_ids` (a dispatched job's tasks, one entry per task) in the placement
    /// snapshot, until it is next taken afresh.
    pub(crate) async fn note_dispatched<'a>(&self, worker_ids: impl IntoIterator<Item = &'a str>) {
        if let Some(s) = self.running_snapshot.lock().await.as_mut() {
            for id in worker_ids {
                *s.counts.entry(id.to_owned()).or_default() += 1;
            }
        }
    }

    async fn workers_with(&self, running: &HashMap<String, usize>) -> Vec<WorkerView> {
        let now = self.now();
        let timeout = self.config.heartbeat_timeout_ms;
        let mut v: Vec<WorkerView> = self
            .workers
            .lock()
            .await
            .iter()
            .map(|(id, w)| WorkerView {
                worker_id: id.clone(),
                attributes: w.attributes.clone(),
                peer_addr: w.peer_addr.clone(),
                live: w.is_live(now, timeout),
                running: running.get(id).copied().unwrap_or(0),
            })
            .collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    /// Finds workers that went silent or whose task stream closed, and fails their jobs;
    /// forgets workers silent for [`WORKER_FORGET_MS`]. Run periodically (see
    /// [`Scheduler::run_monitor`]); returns the workers found lost.
    ///
    /// # Errors
    /// The first store error met; every lost worker's jobs are still tried (an end that
    /// cannot be recorded is retried by the monitor).
    pub async fn check_workers(&self) -> Result<Vec<String>, SchedulerError> {
        let now = self.now();
        let timeout = self.config.heartbeat_timeout_ms;
        let lost: Vec<String> = {
            let mut workers = self.workers.lock().await;
            let lost: Vec<String> = workers
                .iter()
                .filter(|(_, w)| w.deliveries.is_some() && !w.is_live(now, timeout))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &lost {
                if let Some(w) = workers.get_mut(id) {
                    w.deliveries = None;
                }
            }
            workers.retain(|id, w| {
                let forget = w.forgotten(now, timeout);
                if forget {
                    tracing::info!(worker = %id, "lost worker forgotten");
                }
                !forget
            });
            lost
        };
        let mut first_error = None;
        for id in &lost {
            tracing::warn!(worker = %id, "worker lost");
            let audited = self
                .store
                .audit(
                    now,
                    "worker_lost",
                    id,
                    &serde_json::json!({"timeout_ms": timeout}),
                )
                .await
                .map_err(SchedulerError::from);
            // Its jobs fail even if the entry could not be written: this worker is no longer
            // looked at as lost again, so this is the one chance to end them.
            let failed = self.fail_jobs_on_worker(id, "worker lost", false).await;
            for e in [audited.err(), failed.err()].into_iter().flatten() {
                tracing::error!(worker = %id, error = %e, "handling a lost worker failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(lost),
        }
    }

    /// Checks workers every `interval_ms` until the scheduler is dropped.
    pub async fn run_monitor(self: std::sync::Arc<Self>, interval_ms: u64) {
        let weak = std::sync::Arc::downgrade(&self);
        drop(self);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms.max(10)));
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            if let Err(e) = s.check_workers().await {
                tracing::error!(error = %e, "worker check failed");
            }
            s.retry_unended().await;
            s.check_interrupted().await;
        }
    }

    /// Ends the jobs with a task on `worker_id` that has not reported: they fail, except
    /// resumable ones, which wait for the worker (see [`crate::resume`]): when it `registered`
    /// again, its next task stream says which of its tasks still run; when it was only seen
    /// lost, they may still run.
    pub(crate) async fn fail_jobs_on_worker(
        &self,
        worker_id: &str,
        why: &str,
        registered: bool,
    ) -> Result<(), SchedulerError> {
        let waiting: Vec<(String, Vec<String>)> = self
            .jobs
            .lock()
            .await
            .iter()
            .filter(|(_, j)| self.may_resume(j))
            .filter_map(|(id, j)| {
                let tasks: Vec<String> = j
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.worker_id == worker_id && t.report.is_none() && !t.stopped)
                    .map(|(tid, _)| tid.clone())
                    .collect();
                (!tasks.is_empty()).then(|| (id.clone(), tasks))
            })
            .collect();
        for (job_id, tasks) in &waiting {
            let mark = if registered {
                crate::resume::TaskMark::Unconfirmed
            } else {
                crate::resume::TaskMark::Unknown
            };
            self.interrupt(job_id, tasks, mark, &format!("{why}: {worker_id}"))
                .await;
            self.try_resume(job_id).await;
        }
        // An `fl` job's provider on this worker dropped out: its task ends failed and the run
        // goes on without it (the aggregator decides the job's end).
        let dropped: Vec<String> = self
            .jobs
            .lock()
            .await
            .values()
            .filter(|j| j.is_fl())
            .flat_map(|j| {
                j.tasks
                    .iter()
                    .filter(|(_, t)| {
                        t.worker_id == worker_id
                            && t.report.is_none()
                            && t.role == tessera_core::TaskRole::Sender
                    })
                    .map(|(id, _)| id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for task_id in &dropped {
            let report = crate::TaskReport {
                ok: false,
                error_kind: Some(tessera_core::TaskErrorKind::Internal),
                error: format!("{why}: {worker_id}"),
                usage: crate::TaskUsage::default(),
                result_size: None,
                result_location: String::new(),
                result_file: None,
                empty_keys: 0,
            };
            if let Err(e) = self.take_report(worker_id, task_id, report).await {
                tracing::warn!(task = %task_id, error = %e, "recording a dropped fl provider failed");
            }
        }
        let affected: Vec<(String, Option<FailureOrigin>)> = self
            .jobs
            .lock()
            .await
            .iter()
            .filter(|(id, _)| !waiting.iter().any(|(w, _)| w == *id))
            .filter_map(|(id, j)| {
                let t = j
                    .tasks
                    .values()
                    .find(|t| t.worker_id == worker_id && t.report.is_none())?;
                let origin = FailureOrigin {
                    role: t.role,
                    party: t.party.clone(),
                    kind: "worker_lost".into(),
                };
                Some((id.clone(), Some(origin)))
            })
            .collect();
        // Every job is tried; one whose end cannot be recorded is retried by the monitor.
        let mut first_error = None;
        for (job_id, origin) in affected {
            let ended = self
                .finish(
                    &job_id,
                    JobFinish::Failed {
                        error: format!("{why}: {worker_id}"),
                        buyer_fault: false,
                        origin,
                    },
                )
                .await;
            if let Err(e) = ended {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
