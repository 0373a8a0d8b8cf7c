//! Resuming a job whose run broke off.
//!
//! A bucketed PSI run ([`tessera_psi::bucket`]: every intersection-mode `psi` job) can be taken
//! up where it stopped: both parties' workers keep the run's state in their work directories
//! and agree the first bucket to run again. When such a job's run breaks off — a task reports
//! that its link to the peer broke (task error kind `link`), or a worker with one of its tasks
//! registers again (it restarted: its task is gone) or is seen lost — the job does not fail: it
//! is **interrupted** (an audit entry `job_interrupted`; the stopped party's progress shows
//! `waiting to resume`) and waits, at most [`crate::SchedulerConfig::resume_window_ms`], until
//!
//! * every task of the job has stopped (reported the broken link, or its worker restarted; a
//!   task on a worker only seen lost may still be running and is waited for), and
//! * every task's worker is connected again,
//!
//! then the operator sends both tasks again — the same signed specs (the dialling side's peer
//! address updated to where the peer worker now listens), new tickets — and records
//! `job_resumed`. Nothing about the job's money changes: it is the same job, its count was
//! taken once at admission and its delivery point is recorded once (the store's record is
//! idempotent), so a resumed job is neither counted nor charged twice. A job is resumed at most
//! [`crate::SchedulerConfig::resumes_max`] times; the next break, or a window that runs out,
//! fails it as before (undelivered: not charged, its run given back).
//!
//! Jobs of other scenes (preview, payload joins, MPC, TEE) and size-only PSI fail at once, as
//! before: they keep no state to resume from.

use tessera_core::TaskSpec;
use tessera_core::ticket::{TicketBody, task_digest};
use tessera_store::{FailureOrigin, JobFinish, JobRecord};

use crate::{Delivery, LiveJob, PhaseProgress, Scheduler};

/// The progress phase a stopped party shows while its job waits to resume.
pub const PHASE_WAITING: &str = "waiting to resume";

/// What a break says of the tasks it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskMark {
    /// Their attempt ended (a broken link reported, or their worker came back without them).
    Stopped,
    /// They may or may not run on (their worker registered again): its next task stream says.
    Unconfirmed,
    /// Nothing known (their worker went silent).
    Unknown,
}

/// Why and since when a job waits to resume.
#[derive(Debug, Clone)]
pub(crate) struct Interruption {
    /// When the run broke off (UTC ms).
    since_ms: i64,
    /// When the job fails if it has not resumed (UTC ms).
    deadline_ms: i64,
    /// What broke, for the job's error if it never resumes.
    why: String,
    /// The side that broke first (none: the operator restarted).
    origin: Option<FailureOrigin>,
}

/// Whether an interrupted job can be sent again now (its workers aside): every task has
/// stopped, or the receiver has stopped after its sender ended well (the receiver had the
/// master key and finishes alone). A receiver that ended well while its sender stopped cannot
/// be helped by running the sender again: such a job waits out its window.
fn ready_to_resume(job: &LiveJob) -> bool {
    let stopped = |role| {
        job.tasks
            .values()
            .filter(|t| t.role == role)
            .all(|t| t.stopped)
    };
    let ended_well = |role| {
        job.tasks
            .values()
            .filter(|t| t.role == role)
            .all(|t| t.report.as_ref().is_some_and(|r| r.ok))
    };
    stopped(tessera_core::TaskRole::Receiver)
        && (stopped(tessera_core::TaskRole::Sender) || ended_well(tessera_core::TaskRole::Sender))
}

/// Whether `job`'s run can resume: an intersection- or both-mode `psi` job on a bucketed
/// protocol (not `ecdh-oprf`), or a `psi_payload` join (bucketed on the workers).
pub(crate) fn resumable(job: &JobRecord) -> bool {
    use tessera_core::job::scene;
    match job.scene.as_str() {
        scene::PSI => {
            job.mode.reveals_keys() && job.protocol != tessera_core::PsiProtocol::EcdhOprf
        }
        scene::PSI_PAYLOAD => true,
        _ => false,
    }
}

impl Scheduler {
    /// Whether a break in `job`'s run makes it wait rather than fail.
    pub(crate) fn may_resume(&self, job: &LiveJob) -> bool {
        job.resumable && self.config.resume_window_ms > 0 && job.resumes < self.config.resumes_max
    }

    /// Marks `job_id` interrupted by `why`, with `tasks` marked as `mark` says. The first break
    /// of an interruption starts its window and is audited.
    pub(crate) async fn interrupt(
        &self,
        job_id: &str,
        tasks: &[String],
        mark: TaskMark,
        why: &str,
    ) {
        let stopped = mark == TaskMark::Stopped;
        let now = self.now();
        let first = {
            let mut jobs = self.jobs.lock().await;
            let Some(job) = jobs.get_mut(job_id) else {
                return;
            };
            let mut origin = None;
            for id in tasks {
                if let Some(t) = job.tasks.get_mut(id) {
                    t.stopped |= stopped;
                    t.unconfirmed |= mark == TaskMark::Unconfirmed;
                    origin.get_or_insert_with(|| FailureOrigin {
                        role: t.role,
                        party: t.party.clone(),
                        kind: if stopped {
                            tessera_core::TaskErrorKind::Link.as_str().into()
                        } else {
                            "worker_lost".into()
                        },
                    });
                    {
                        let waiting = PhaseProgress {
                            party: t.party.clone(),
                            role: t.role,
                            phase: PHASE_WAITING.into(),
                            done: 0,
                            total: 0,
                            eta_ms: None,
                            began: (now, 0),
                        };
                        match job.progress.iter_mut().find(|p| p.party == t.party) {
                            Some(p) => *p = waiting,
                            None => job.progress.push(waiting),
                        }
                    }
                }
            }
            let progress = job.progress.clone();
            job.view.send_modify(|v| v.progress = progress);
            match (&mut job.interrupted, origin) {
                // A worker that is gone says more than its peer's broken link, which is how
                // its loss shows first: the job's error names it if it never comes back.
                (Some(i), Some(origin)) if mark != TaskMark::Stopped => {
                    i.why = why.to_owned();
                    i.origin = Some(origin);
                    None
                }
                (None, Some(origin)) => {
                    let deadline_ms = now.saturating_add(self.config.resume_window_ms);
                    job.interrupted = Some(Interruption {
                        since_ms: now,
                        deadline_ms,
                        why: why.to_owned(),
                        origin: Some(origin),
                    });
                    Some(deadline_ms)
                }
                _ => None,
            }
        };
        if let Some(deadline_ms) = first {
            tracing::warn!(job = %job_id, reason = %why, "job interrupted; waiting to resume");
            let details = serde_json::json!({
                "reason": why,
                "resume_by_ms": deadline_ms,
            });
            if let Err(e) = self
                .store
                .audit(now, "job_interrupted", job_id, &details)
                .await
            {
                tracing::error!(job = %job_id, error = %e, "could not audit an interruption");
            }
        }
    }

    /// Sends the tasks of the interrupted job `job_id` again if every one has stopped and
    /// every one's worker is connected; otherwise leaves it waiting.
    pub(crate) async fn try_resume(&self, job_id: &str) {
        let ready = {
            let jobs = self.jobs.lock().await;
            jobs.get(job_id)
                .is_some_and(|j| j.interrupted.is_some() && ready_to_resume(j))
        };
        if !ready {
            return;
        }
        let records = match self.store.tasks(job_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "could not read the tasks to resume");
                return;
            }
        };
        let audit_head = self.audit.sign_head().await.ok().flatten();
        let now = self.now();
        // The workers as they are now: where each listens and its task stream.
        let workers: std::collections::HashMap<
            String,
            (String, tokio::sync::mpsc::Sender<Delivery>),
        > = {
            let timeout = self.config.heartbeat_timeout_ms;
            self.workers
                .lock()
                .await
                .iter()
                .filter(|(_, w)| w.is_live(now, timeout))
                .filter_map(|(id, w)| {
                    w.deliveries
                        .clone()
                        .map(|d| (id.clone(), (w.peer_addr.clone(), d)))
                })
                .collect()
        };
        // Only the stopped tasks run again (a sender that ended well is not needed: its
        // receiver had the master key and finishes alone).
        let stopped: Vec<String> = {
            let jobs = self.jobs.lock().await;
            jobs.get(job_id)
                .map(|j| {
                    j.tasks
                        .iter()
                        .filter(|(_, t)| t.stopped)
                        .map(|(id, _)| id.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for t in records.iter().filter(|t| stopped.contains(&t.task_id)) {
            let Some((_, to)) = workers.get(&t.worker_id) else {
                return; // not back yet
            };
            let mut spec: TaskSpec = match serde_json::from_str(&t.spec_json) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "a stored task spec does not parse");
                    return;
                }
            };
            if spec.dial_peer {
                match workers.get(&spec.peer_worker_id) {
                    Some((addr, _)) => spec.peer_addr = addr.clone(),
                    None => return,
                }
            }
            let Ok(spec_json) = serde_json::to_string(&spec) else {
                return;
            };
            let body = TicketBody {
                ticket_id: self.random_id("k-"),
                job_id: job_id.to_owned(),
                task_id: t.task_id.clone(),
                worker_id: t.worker_id.clone(),
                issued_at_ms: now,
                expires_at_ms: now.saturating_add(self.config.ticket_ttl_ms),
                task_digest: task_digest(spec_json.as_bytes()),
                audit_head: audit_head.clone(),
            };
            let ticket = match self.signer.sign(&body) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "could not sign a resumed ticket");
                    return;
                }
            };
            deliveries.push((
                to.clone(),
                t.worker_id.clone(),
                Delivery::Assign { spec_json, ticket },
            ));
        }
        // Claimed under the jobs lock, so that two triggers do not both send.
        let resumes = {
            let mut jobs = self.jobs.lock().await;
            let Some(job) = jobs.get_mut(job_id) else {
                return;
            };
            if job.interrupted.is_none() || !ready_to_resume(job) {
                return;
            }
            for (to, worker, delivery) in deliveries.drain(..) {
                if to.try_send(delivery).is_err() {
                    // Its stream closed in between: the task stays stopped, and the next
                    // trigger (the worker's return, the monitor) tries again.
                    tracing::warn!(job = %job_id, worker = %worker, "could not send a resumed task");
                    return;
                }
            }
            job.interrupted = None;
            job.resumes += 1;
            for t in job.tasks.values_mut().filter(|t| t.stopped) {
                t.stopped = false;
            }
            job.progress.clear();
            job.view.send_modify(|v| v.progress.clear());
            job.resumes
        };
        tracing::info!(job = %job_id, resume = resumes, "job resumed");
        let details = serde_json::json!({
            "resume": resumes,
            "workers": records.iter().map(|t| t.worker_id.as_str()).collect::<Vec<_>>(),
        });
        if let Err(e) = self.store.audit(now, "job_resumed", job_id, &details).await {
            tracing::error!(job = %job_id, error = %e, "could not audit a resume");
        }
    }

    /// Settles the unconfirmed tasks on `worker_id`, whose task stream just opened naming the
    /// tasks it runs: those it names run on, the others are stopped. A job all of whose tasks
    /// run on is no longer interrupted.
    pub(crate) async fn settle_unconfirmed(&self, worker_id: &str, running: &[String]) {
        let mut jobs = self.jobs.lock().await;
        for (job_id, job) in jobs.iter_mut() {
            let mut touched = false;
            for (task_id, t) in job.tasks.iter_mut() {
                if t.worker_id == worker_id && t.unconfirmed {
                    t.unconfirmed = false;
                    t.stopped = !running.contains(task_id);
                    touched = true;
                }
            }
            let all_on = job.tasks.values().all(|t| !t.stopped && !t.unconfirmed);
            if touched && all_on && job.interrupted.take().is_some() {
                tracing::info!(job = %job_id, worker = %worker_id, "its tasks run on: no longer interrupted");
            }
        }
    }

    /// Takes up `job`, left unfinished by an earlier run of the operator, as interrupted: its
    /// tasks may still run on their workers (which say so when they reconnect) or be gone
    /// (then it resumes). Returns `false` for a job that cannot be taken up (not resumable,
    /// resuming off, or a task already reported: it then fails as before).
    ///
    /// # Errors
    /// The store's.
    pub(crate) async fn reattach(&self, job: &JobRecord) -> Result<bool, crate::SchedulerError> {
        if !resumable(job) || self.config.resume_window_ms <= 0 {
            return Ok(false);
        }
        let tasks = self.store.tasks(&job.job_id).await?;
        if tasks
            .iter()
            .any(|t| t.state != tessera_core::TaskState::Dispatched)
        {
            return Ok(false);
        }
        if tasks.is_empty() {
            return Ok(false);
        }
        let holds = self.store.job_holds(&job.job_id).await?;
        let licence = self.store.licence(&job.licence_id).await?;
        let now = self.now();
        let why = "the operator restarted while the job ran".to_owned();
        let mut live = LiveJob::new(
            job,
            &tasks,
            holds,
            job.buyer_party.clone(),
            job.provider_party.clone(),
            licence.price,
            true,
        );
        live.interrupted = Some(Interruption {
            since_ms: now,
            deadline_ms: now.saturating_add(self.config.resume_window_ms),
            why: why.clone(),
            origin: None,
        });
        self.index_tasks(&job.job_id, &live, true);
        self.jobs.lock().await.insert(job.job_id.clone(), live);
        let details = serde_json::json!({
            "reason": why,
            "resume_by_ms": now.saturating_add(self.config.resume_window_ms),
        });
        self.store
            .audit(now, "job_interrupted", &job.job_id, &details)
            .await?;
        tracing::warn!(job = %job.job_id, "job taken up after the operator's restart; waiting for its workers");
        Ok(true)
    }

    /// Fails the interrupted jobs whose window ran out and tries to resume the others. Called
    /// by the monitor and when a worker connects.
    pub(crate) async fn check_interrupted(&self) {
        let now = self.now();
        let (expired, waiting): (Vec<_>, Vec<_>) = {
            let jobs = self.jobs.lock().await;
            jobs.iter()
                .filter_map(|(id, j)| j.interrupted.clone().map(|i| (id.clone(), i)))
                .partition(|(_, i)| i.deadline_ms <= now)
        };
        for (job_id, i) in expired {
            let waited_s = (now.saturating_sub(i.since_ms)) / 1000;
            let end = JobFinish::Failed {
                error: format!(
                    "the run broke off and did not resume within {waited_s} s: {}",
                    i.why
                ),
                buyer_fault: false,
                origin: i.origin,
            };
            if let Err(e) = self.finish(&job_id, end).await {
                tracing::error!(job = %job_id, error = %e, "could not end an interrupted job");
            }
        }
        for (job_id, _) in waiting {
            self.try_resume(&job_id).await;
        }
    }
}
