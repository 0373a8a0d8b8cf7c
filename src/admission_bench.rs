//! `tessera bench admission` (issue "The control plane at 2,000 admissions a second"): a real
//! operator (TLS, authentication on, SQLite with its production durability) in this process
//! and two workers on loopback, tiny datasets, `jobs` size-only PSI jobs submitted by
//! `concurrency` clients (each its own connection, as the buyer), then as many submissions
//! against an exhausted licence. Prints admissions/s, completed jobs/s, submit latency p50/p99
//! and refusals/s, then checks exactly-once: the licence's remaining count, every job ended,
//! the ledger balanced, the audit chain verified.
//!
//! Where the workers run ([`Workers`]): by default each is its own `tessera worker` process,
//! as in a deployment, at a lower CPU priority (`nice`, default 10) so that on a box they
//! share with the operator the jobs' execution yields the CPU to the operator's admissions
//! (in a deployment they run on the parties' own machines); or both in this process, on the
//! operator's runtime, competing with it on equal terms.
//!
//! A benchmark, not a test: it prints figures and fails only when a check fails.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tessera_core::{SystemClock, WorkerAttributes};
use tessera_proto::v1 as pb;

use crate::client::conn::{Client, OperatorAddr, connect_with};
use crate::operator::{self, OperatorConfig};

const PROVIDER_USER: &str = "bench-provider";
const BUYER_USER: &str = "bench-buyer";
const PROVIDER: &str = "bench-prov";
const BUYER: &str = "bench-buy";

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub struct AdmissionFigures {
    /// Jobs submitted.
    pub jobs: usize,
    /// Concurrent clients (at most one per job).
    pub concurrency: usize,
    /// Where the workers ran: `processes` or `in-process`.
    pub workers: Workers,
    /// The workers' `nice` value (processes only; 0 in this process).
    pub worker_nice: u8,
    /// Jobs admitted per second over the submission phase.
    pub admissions_per_s: f64,
    /// Jobs ended per second, from the first submission to the last end.
    pub completed_per_s: f64,
    /// Median submit latency (ms).
    pub p50_ms: f64,
    /// 99th percentile submit latency (ms).
    pub p99_ms: f64,
    /// Refusals per second against an exhausted licence.
    pub refusals_per_s: f64,
    /// The most writes the group commit took into one transaction (`--max-batch`).
    pub max_batch: usize,
    /// Group-committed writes per commit over the whole run (admissions, deliveries, task
    /// reports, job ends).
    pub writes_per_commit: f64,
    /// The most writes one commit carried.
    pub largest_batch: u64,
    /// Jobs that ended succeeded.
    pub succeeded: usize,
    /// Why the others ended as they did: each distinct error (or state) with its count, the
    /// most frequent first, at most [`FAILURES_SHOWN`].
    pub failures: Vec<Failure>,
    /// The licence's remaining count after the run equals its counts minus the jobs.
    pub count_exact: bool,
    /// The ledger balances.
    pub ledger_balanced: bool,
    /// The audit chain verifies.
    pub audit_verified: bool,
}

/// One reason jobs of the run did not succeed, and how many it ended.
#[derive(Debug, serde::Serialize)]
pub struct Failure {
    /// The job's state and its error (`failed: …`), as the operator reports them.
    pub error: String,
    /// Jobs that ended with it.
    pub jobs: usize,
}

/// The most distinct failure reasons the figures list.
pub const FAILURES_SHOWN: usize = 5;

/// The file that marks a directory as this benchmark's own, which a later run may clear
/// ([`crate::datadir::prepare_marked`]).
pub const DIR_MARKER: &str = ".tessera-bench-admission";

/// Where the benchmark's two workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workers {
    /// Each its own `tessera worker` process (started with `nice -n N`, N = `--worker-nice`).
    Processes,
    /// Both in this process, on the operator's runtime.
    InProcess,
}

/// Runs the benchmark in `dir` (created; emptied first if it exists).
///
/// Errors: the cluster cannot start (a worker process does not come up within 60 s), a call
/// fails, or a job does not end within 10 minutes.
pub async fn run(
    dir: &Path,
    jobs: usize,
    concurrency: usize,
    max_batch: usize,
    placement: Workers,
    worker_nice: u8,
) -> anyhow::Result<AdmissionFigures> {
    anyhow::ensure!(
        (1..=1_000_000).contains(&jobs),
        "--jobs must be 1 ..= 1,000,000"
    );
    anyhow::ensure!(
        (1..=1024).contains(&concurrency),
        "--concurrency must be 1 ..= 1024"
    );
    let _dir_lock = crate::datadir::prepare_marked(dir, DIR_MARKER, "bench admission", || Ok(()))?;
    let data_dir = dir.join("operator");
    let op = operator::start(&OperatorConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.clone(),
        // The benchmark reads the admin's token itself.
        announce_admin_token: false,
        ..OperatorConfig::default()
    })
    .await?;
    let store = op.scheduler.store().clone();
    store.set_max_batch(max_batch);
    let ca_pem = crate::client::conn::read_ca_file(&data_dir.join(operator::CA_CERT_FILE))?;
    let addr = OperatorAddr {
        url: op.url(),
        ca_pem: Some(ca_pem.clone()),
        insecure_plaintext: false,
    };
    let admin_token = std::fs::read_to_string(data_dir.join(operator::ADMIN_TOKEN_FILE))?;
    let mut admin = connect_with(&addr, Some(admin_token.trim())).await?;
    let mut tokens = Vec::new();
    for (user, roles, party) in [
        (PROVIDER_USER, "provider", PROVIDER),
        (BUYER_USER, "buyer", BUYER),
    ] {
        let t =
            crate::client::accounts::user_with_party(&mut admin, user, roles, party, "bench", 0)
                .await?;
        tokens.push(t);
    }
    let (provider_token, buyer_token) = (tokens[0].clone(), tokens[1].clone());
    let mut provider = connect_with(&addr, Some(&provider_token)).await?;
    let mut buyer = connect_with(&addr, Some(&buyer_token)).await?;
    let key = std::fs::read_to_string(data_dir.join(operator::PUBLIC_KEY_FILE))?;
    let mut workers = Vec::new();
    let mut processes = Vec::new();
    for (party, owner) in [(PROVIDER, &mut provider), (BUYER, &mut buyer)] {
        let datasets = dir.join(party).join("datasets");
        std::fs::create_dir_all(&datasets)?;
        std::fs::write(datasets.join("k.csv"), "k\nk1\nk2\nk3\n")?;
        let reg = owner
            .issue_registration_token(pb::RegistrationTokenRequest {
                party_id: party.into(),
                ttl_ms: 600_000,
            })
            .await?
            .into_inner();
        let outputs = dir.join(party).join("outputs");
        match placement {
            Workers::InProcess => {
                let mut cfg = tessera_worker::WorkerConfig::new(
                    addr.url.clone(),
                    WorkerAttributes {
                        party: party.into(),
                        ..WorkerAttributes::default()
                    },
                    datasets,
                    outputs,
                );
                cfg.operator_key_hex = key.trim().to_owned();
                cfg.operator_ca_pem = Some(ca_pem.clone());
                cfg.registration = tessera_proto::TokenHeader::new(&reg.secret_token)?;
                workers.push(tessera_worker::start(cfg, Arc::new(SystemClock)).await?);
            }
            Workers::Processes => processes.push(spawn_worker(
                &addr.url,
                &data_dir,
                dir,
                party,
                &reg.secret_token,
                worker_nice,
            )?),
        }
        owner
            .create_dataset(pb::CreateDatasetRequest {
                dataset_id: format!("ds-{party}"),
                owner_party: party.into(),
                location: "k.csv".into(),
                description: String::new(),
                declared_rows: Some(3),
            })
            .await?;
    }
    if placement == Workers::Processes {
        until_live(&mut admin, &mut processes, dir).await?;
    }
    let licence = |counts: usize| {
        let policy = json!({
            "policyName": "bench",
            "relUsers": [{"userId": BUYER_USER, "userName": "bench buyer", "isGroup": 0}],
            "useScenes": [{"useSence": "psi", "counts": counts}]
        });
        pb::CreateLicenceRequest {
            licensor: PROVIDER.into(),
            licensee: BUYER_USER.into(),
            dataset_id: format!("ds-{PROVIDER}"),
            policy_json: policy.to_string(),
            price_per_job_micros: 1_000,
            price_per_1k_rows_micros: 0,
            operator_share_bps: 1_000,
            monthly_price_micros: 0,
        }
    };
    let counts = jobs + 10;
    let main_licence = provider
        .create_licence(licence(counts))
        .await?
        .into_inner()
        .licence_id;
    let spent_licence = provider
        .create_licence(licence(1))
        .await?
        .into_inner()
        .licence_id;
    buyer
        .deposit(pb::DepositRequest {
            account: String::new(),
            amount_micros: i64::try_from(jobs + 100)?.saturating_mul(10_000),
            idempotency_key: "bench-funds".into(),
            into: String::new(),
        })
        .await?;

    // Admissions, timed from when every client has connected.
    let Submitted {
        latencies,
        ids: job_ids,
        admitted,
        refused,
        started: t0,
        elapsed_s: submit_s,
    } = submit_all(&addr, &buyer_token, &main_licence, jobs, concurrency).await?;
    anyhow::ensure!(
        admitted == jobs,
        "{} of {jobs} submissions were not admitted: {}",
        jobs - admitted,
        refused
            .iter()
            .map(|f| format!("{} × {}", f.jobs, f.error))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // Completions: every job ended. Followed through the scheduler's own job updates (no
    // polling: listing 2,000 jobs every few milliseconds took a tenth of the operator's CPU
    // from the jobs it measures), then counted once through the API.
    let waited = tokio::time::timeout(
        Duration::from_secs(600),
        until_ended(&op.scheduler, &job_ids),
    )
    .await;
    let complete_s = t0.elapsed().as_secs_f64();
    let (ended, succeeded, failures) = count_ended(&mut admin, &main_licence).await?;
    match waited {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("only {ended} of {jobs} jobs ended within 10 minutes"),
    }

    // Refusals against an exhausted licence (its one run taken first).
    let first = submit_all(&addr, &buyer_token, &spent_licence, 1, 1).await?;
    anyhow::ensure!(
        first.admitted == 1,
        "the one run of the second licence was not admitted: {}",
        first.refused.first().map_or("", |f| f.error.as_str())
    );
    let first_id = first.ids;
    let refusals = jobs.min(2_000);
    let spent = submit_all(&addr, &buyer_token, &spent_licence, refusals, concurrency).await?;
    let (wrongly_admitted, refuse_s) = (spent.admitted, spent.elapsed_s);
    anyhow::ensure!(
        wrongly_admitted == 0,
        "{wrongly_admitted} submissions were admitted past the licence's count"
    );

    // That job ends before the checks (and before the workers are stopped, which would fail
    // it after its delivery, charged).
    let first_ended = tokio::time::timeout(
        Duration::from_secs(60),
        until_ended(&op.scheduler, &first_id),
    )
    .await;
    anyhow::ensure!(
        matches!(first_ended, Ok(Ok(()))),
        "the one run of the second licence did not end within a minute"
    );
    let first_state = op.scheduler.job(&first_id[0]).await?.job.state;
    anyhow::ensure!(
        first_state == tessera_core::JobState::Succeeded,
        "the one run of the second licence ended {first_state}"
    );

    // Exactly once.
    let remaining = remaining(&mut admin, &main_licence).await?;
    let balances = admin.list_balances(pb::ListRequest {}).await?.into_inner();
    let audit = admin.verify_audit(pb::ListRequest {}).await?.into_inner();
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or(0.0)
    };
    let figures = AdmissionFigures {
        jobs,
        concurrency: concurrency.min(jobs),
        workers: placement,
        worker_nice: if placement == Workers::Processes {
            worker_nice
        } else {
            0
        },
        admissions_per_s: jobs as f64 / submit_s,
        completed_per_s: jobs as f64 / complete_s,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        refusals_per_s: refusals as f64 / refuse_s,
        max_batch,
        writes_per_commit: {
            let w = store.write_stats();
            w.operations as f64 / w.batches.max(1) as f64
        },
        largest_batch: store.write_stats().largest_batch,
        succeeded,
        failures,
        count_exact: remaining == Some((counts - jobs) as u64),
        ledger_balanced: balances.balanced,
        audit_verified: audit.ok,
    };
    // Worker processes are stopped and reaped (their CPU time counts in this process's
    // children's). The process ends right after: stopping the in-process workers and the
    // operator here would only race their last heartbeats against the store's closing.
    for p in &mut processes {
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
    // The chain's head signed, as a stopping operator signs it: `audit verify` on a kept
    // `--dir` then finds every entry under a checkpoint.
    if let Err(e) = op.scheduler.audit().seal().await {
        tracing::warn!(error = %e, "could not sign the audit head at the end of the run");
    }
    drop((workers, op));
    Ok(figures)
}

/// The name of a run's scratch directory in the temporary directory, before the process id.
pub const SCRATCH_PREFIX: &str = "tessera-bench-admission-";

/// Removes the scratch directories of earlier runs that were killed outright (SIGKILL leaves
/// them, with the run's operator key and store): those named [`SCRATCH_PREFIX`] + a process id
/// that no longer runs, holding this benchmark's marker. Says on stderr what it removed.
pub fn remove_stale_scratch(temp: &Path) {
    // Whether a process runs is read from /proc: elsewhere nothing is removed.
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        let running = Path::new("/proc").join(pid.to_string()).exists();
        if running || !path.join(DIR_MARKER).is_file() {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            eprintln!("removed {}, left by a run that was killed", path.display());
        }
    }
}

/// Waits until every job of `ids` has ended, following each through the scheduler's job
/// updates.
async fn until_ended(
    scheduler: &tessera_scheduler::Scheduler,
    ids: &[String],
) -> anyhow::Result<()> {
    for id in ids {
        let mut rx = scheduler.watch(id).await?;
        if rx.wait_for(|v| v.job.is_terminal()).await.is_err() {
            // The job left the scheduler's table between the two reads: its stored state is
            // its end, or soon will be.
            while !scheduler.job(id).await?.job.is_terminal() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// Starts `tessera worker` for `party` as a process of its own (`nice -n nice` when `nice` is
/// above 0), its log in `dir/party/worker.log`; the registration token goes in its
/// environment, not its command line. The child is killed if dropped.
fn spawn_worker(
    url: &str,
    data_dir: &Path,
    dir: &Path,
    party: &str,
    registration_token: &str,
    nice: u8,
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe().context("finding this program")?;
    let log_path = dir.join(party).join("worker.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = if nice > 0 {
        let mut c = tokio::process::Command::new("nice");
        c.arg("-n").arg(nice.to_string()).arg(&exe);
        c
    } else {
        tokio::process::Command::new(&exe)
    };
    cmd.arg("worker")
        .args(["--operator", url, "--party", party])
        .arg("--datasets")
        .arg(dir.join(party).join("datasets"))
        .arg("--outputs")
        .arg(dir.join(party).join("outputs"))
        .arg("--operator-key-file")
        .arg(data_dir.join(operator::PUBLIC_KEY_FILE))
        .arg("--ca-file")
        .arg(data_dir.join(operator::CA_CERT_FILE))
        .env("TESSERA_REGISTRATION_TOKEN", registration_token)
        .env_remove("TESSERA_REGISTRATION_TOKEN_FILE")
        .env_remove("TESSERA_CONFIG")
        // The pipe's far end is this process's: when it ends, however it ends (SIGKILL
        // included), the worker sees its standard input close and stops.
        .arg("--stop-on-stdin-eof")
        .stdin(std::process::Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        // As the benchmark's own default: warnings only (an INFO line per task costs the
        // workers CPU the figures should not include).
        cmd.env("RUST_LOG", "warn");
    }
    cmd.spawn().with_context(|| {
        if nice > 0 {
            format!(
                "starting the {party} worker under `nice` (not found? --worker-nice 0 runs \
                 it without)"
            )
        } else {
            format!("starting the {party} worker")
        }
    })
}

/// Waits until both worker processes are live at the operator (at most 60 s); a process that
/// exits first is an error naming its log.
async fn until_live(
    admin: &mut Client,
    processes: &mut [tokio::process::Child],
    dir: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (p, party) in processes.iter_mut().zip([PROVIDER, BUYER]) {
            if let Some(status) = p.try_wait()? {
                anyhow::bail!(
                    "the {party} worker exited ({status}) before it was live: see {} (run with \
                     --dir to keep it)",
                    dir.join(party).join("worker.log").display()
                );
            }
        }
        let listed = admin
            .list_workers(pb::WorkerQuery::default())
            .await?
            .into_inner();
        let live = [PROVIDER, BUYER].iter().all(|party| {
            listed.workers.iter().any(|w| {
                w.live
                    && w.attributes
                        .as_ref()
                        .is_some_and(|a| a.party.as_str() == *party)
            })
        });
        if live {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker processes were not live within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits `n` size-only jobs under `licence` with `concurrency` clients, each on its own
/// connection, all connected before the first submission; returns each submit's latency (ms),
/// the job ids, how many were admitted, when the first submission went out and the seconds
/// from then to the last answer.
/// What one round of submissions gave.
struct Submitted {
    /// Each submission's latency, ms.
    latencies: Vec<f64>,
    /// The job ids answered, in the order the clients received them.
    ids: Vec<String>,
    /// How many were admitted.
    admitted: usize,
    /// Why the others were refused (most frequent first, at most [`FAILURES_SHOWN`]).
    refused: Vec<Failure>,
    /// When the first submission went (every client connected).
    started: Instant,
    /// Seconds from then to the last answer.
    elapsed_s: f64,
}

/// The reasons with their counts, the most frequent first, at most [`FAILURES_SHOWN`].
fn most_frequent(reasons: std::collections::BTreeMap<String, usize>) -> Vec<Failure> {
    let mut failures: Vec<Failure> = reasons
        .into_iter()
        .map(|(error, jobs)| Failure { error, jobs })
        .collect();
    failures.sort_by_key(|f| std::cmp::Reverse(f.jobs));
    failures.truncate(FAILURES_SHOWN);
    failures
}

async fn submit_all(
    addr: &OperatorAddr,
    token: &str,
    licence: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Submitted> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..concurrency.min(n) {
        clients.push(connect_with(addr, Some(token)).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut client in clients {
        let (next, licence) = (next.clone(), licence.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(f64, String, bool, String)> = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t = Instant::now();
                let job = client.submit_job(request(&licence)).await?.into_inner();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let admitted = job.state() != pb::JobState::Refused;
                let why = if admitted {
                    String::new()
                } else {
                    job.refusal_reasons.join("; ")
                };
                out.push((ms, job.job_id, admitted, why));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let (mut latencies, mut ids, mut admitted) = (Vec::new(), Vec::new(), 0);
    let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        for (ms, id, ok, why) in t.await?? {
            latencies.push(ms);
            ids.push(id);
            admitted += usize::from(ok);
            if !ok {
                *refused.entry(why).or_default() += 1;
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    Ok(Submitted {
        latencies,
        ids,
        admitted,
        refused: most_frequent(refused),
        started,
        elapsed_s,
    })
}

fn request(licence: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        licence_id: licence.into(),
        scene: "psi".into(),
        buyer_party: BUYER.into(),
        buyer_dataset_id: format!("ds-{BUYER}"),
        buyer_columns: vec!["k".into()],
        provider_columns: vec!["k".into()],
        mode: pb::PsiMode::Size.into(),
        key_case: pb::KeyCase::Preserve.into(),
        unicode_form: pb::UnicodeForm::None.into(),
        empty_keys: pb::EmptyKeys::Skip.into(),
        ..pb::SubmitJobRequest::default()
    }
}

/// Jobs of `licence` that ended, of them the succeeded, and why the others ended
/// ([`Failure`]s, the most frequent first).
async fn count_ended(
    admin: &mut Client,
    licence: &str,
) -> anyhow::Result<(usize, usize, Vec<Failure>)> {
    let (mut ended, mut ok, mut token) = (0, 0, String::new());
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    loop {
        let page = admin
            .list_jobs(pb::JobQuery {
                page: Some(pb::PageQuery {
                    page_size: 1000,
                    page_token: token,
                }),
                licence_id: licence.into(),
                ..pb::JobQuery::default()
            })
            .await?
            .into_inner();
        for j in &page.jobs {
            let state = j.state();
            match state {
                pb::JobState::Succeeded => {
                    ended += 1;
                    ok += 1;
                }
                pb::JobState::Failed | pb::JobState::Cancelled | pb::JobState::Refused => {
                    ended += 1;
                    let why = if j.error.is_empty() {
                        j.refusal_reasons.join("; ")
                    } else {
                        j.error.clone()
                    };
                    let name = state.as_str_name().trim_start_matches("JOB_STATE_");
                    *reasons
                        .entry(format!("{}: {why}", name.to_lowercase()))
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        if page.next_page_token.is_empty() {
            return Ok((ended, ok, most_frequent(reasons)));
        }
        token = page.next_page_token;
    }
}

async fn remaining(admin: &mut Client, licence: &str) -> anyhow::Result<Option<u64>> {
    let l = admin
        .get_licence(pb::LicenceRef {
            licence_id: licence.into(),
        })
        .await?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&l.policy_json)?;
    Ok(v["useScenes"][0]["remainingCounts"].as_u64())
}
