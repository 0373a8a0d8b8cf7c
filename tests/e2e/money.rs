//! Money and counts under failure and retries (issue 8): the delivery milestone (a buyer
//! whose worker dies after it could compute its result still pays), a buyer's worker killed
//! at any moment of a job (every job ends, settled as its end says), submission request ids,
//! deposit replays and per-customer keys, and the maximum amount.

use std::time::Duration;

use tessera_proto::v1 as pb;

use crate::harness::{Cluster, USER, holds_only_voided, keys, walk_files};

/// Per-job price 1,000 + 10 per 1,000 provider rows (the harness's licence).
fn expected_charge(provider_rows: u64) -> i64 {
    1_000 + 10 * i64::try_from(provider_rows.div_ceil(1_000)).expect("rows")
}

/// Polls the job every few milliseconds until its delivery milestone shows; panics if it ends
/// first (bounded).
async fn until_delivered(c: &Cluster, job_id: &str) -> pb::Job {
    let mut client = c.client().await;
    for _ in 0..30_000 {
        let j = client
            .get_job(pb::JobRef {
                job_id: job_id.into(),
            })
            .await
            .expect("get job")
            .into_inner();
        if j.delivered_at_ms.is_some() {
            return j;
        }
        assert!(
            matches!(j.state_text(), "admitted" | "running"),
            "the job ended before its delivery milestone was seen: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {job_id} never reached its delivery point");
}

/// The job's transfers, the buyer's bill lines of the job, and whether the ledger balances.
pub(crate) async fn money_of(
    c: &Cluster,
    job_id: &str,
) -> (Vec<pb::Transfer>, Vec<pb::BillLine>, bool) {
    let mut client = c.client().await;
    let transfers: Vec<pb::Transfer> = client
        .list_transfers(pb::ListRequest {})
        .await
        .expect("transfers")
        .into_inner()
        .transfers
        .into_iter()
        .filter(|t| t.job_id == job_id)
        .collect();
    let bills = client
        .list_bills(pb::BillQuery {
            customer: USER.into(),
            period: String::new(),
        })
        .await
        .expect("bills")
        .into_inner()
        .bills;
    let mut lines = Vec::new();
    for b in bills {
        lines.extend(
            client
                .list_bill_lines(pb::BillRef { bill_id: b.bill_id })
                .await
                .expect("lines")
                .into_inner()
                .lines
                .into_iter()
                .filter(|l| l.job_id == job_id),
        );
    }
    let balanced = client
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances")
        .into_inner()
        .balanced;
    (transfers, lines, balanced)
}

/// Asserts the job was charged `charge` (holds posted, provider and operator paid, one bill
/// line saying it ended after delivery) and the ledger balances.
async fn assert_charged(c: &Cluster, job: &pb::Job, charge: i64) {
    assert_eq!(job.charge_micros, charge, "{job:?}");
    let (transfers, lines, balanced) = money_of(c, &job.job_id).await;
    assert!(balanced, "double entry must hold");
    let posted: i64 = transfers
        .iter()
        .filter(|t| t.kind == "post_pending")
        .map(|t| t.amount_micros)
        .sum();
    let paid_on: i64 = transfers
        .iter()
        .filter(|t| t.kind == "posted" && t.debit_account == format!("customer:{USER}:holds"))
        .map(|t| t.amount_micros)
        .sum();
    assert_eq!((posted, paid_on), (charge, charge), "{transfers:?}");
    assert!(
        transfers
            .iter()
            .any(|t| t.credit_account == "provider:prov:receivable"),
        "{transfers:?}"
    );
    assert_eq!(lines.len(), 1, "one bill line: {lines:?}");
    let amounts = lines[0].amounts.as_ref().expect("amounts");
    assert_eq!(amounts.original_micros, charge);
    assert!(
        lines[0].note.contains("failed after delivery"),
        "{}",
        lines[0].note
    );
}

/// Issue 8 item 1, the required test: the buyer's worker is frozen right after the delivery
/// milestone (so its result report cannot arrive), the operator is killed, the buyer's worker
/// resumes and writes its result, and is killed as soon as the result file exists. The
/// restarted operator finds the job delivered: the run is consumed and the job charged — once
/// the resume window (3 s here) has passed without the buyer's worker coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_killed_after_its_output_exists_still_pays() {
    let mut c = Cluster::start_with_operator(5_000, &["--resume-window-secs", "3"], &[]);
    c.fund(1_000_000_000, "fund").await;
    let rows = 300_000;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..rows)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 150_000..150_000 + rows))
        .await;
    let lic = c.licence("p", Some(2)).await;
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "intersection", "out.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(c.remaining(&lic).await, Some(1));
    until_delivered(&c, &j.job_id).await;
    c.buyer.proc.signal("STOP");
    let before = c
        .client()
        .await
        .get_job(pb::JobRef {
            job_id: j.job_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(
        matches!(before.state_text(), "admitted" | "running"),
        "the buyer reported before it could be stopped (enlarge the data): {before:?}"
    );
    c.operator.kill();
    c.buyer.proc.signal("CONT");
    let out = c.buyer.outputs.join("out.csv");
    for _ in 0..6_000 {
        if out.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(out.exists(), "the buyer never wrote its result");
    c.buyer.proc.kill();
    let matched = std::fs::read_to_string(&out)
        .expect("result")
        .lines()
        .count()
        - 1;
    assert_eq!(matched, 150_000, "the buyer holds every matched row");

    c.restart_operator();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed", "{j:?}");
    // Which way it ends depends on whether the provider's worker, which finishes right after
    // the delivery point without waiting for the buyer, had its success recorded before the
    // operator was killed: if not, the restarted operator waits the resume window for the
    // buyer ("did not resume"); if so, the job cannot resume and ends at the restart. Either
    // way it was delivered, so it is consumed and charged, once.
    assert!(
        j.error.contains("did not resume")
            || j.error.contains("operator restarted while the job ran"),
        "{j:?}"
    );
    assert!(j.delivered_at_ms.is_some(), "{j:?}");
    assert_eq!(c.remaining(&lic).await, Some(1), "the run is consumed");
    assert_charged(&c, &j, expected_charge(rows as u64)).await;
    c.assert_audit_verifies().await;
}

/// Issue 8 item 1 through the live operator: the buyer's worker dies after the delivery
/// milestone; the job fails (the worker lost, or the sender's link to it broken) and is
/// charged on the rows the sender reported. With resuming off (`--resume-window-secs 0`): a
/// resumed run is `a_bucketed_run_whose_worker_restarts_…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_lost_after_delivery_is_charged_by_the_live_operator() {
    let mut c = Cluster::start_with_operator(2_000, &["--resume-window-secs", "0"], &[]);
    c.fund(1_000_000_000, "fund").await;
    let rows = 200_000;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..rows)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 100_000..100_000 + rows))
        .await;
    let lic = c.licence("p", Some(2)).await;
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "intersection", "out.csv"))
        .await
        .expect("submit")
        .into_inner();
    until_delivered(&c, &j.job_id).await;
    c.buyer.proc.signal("STOP");
    c.buyer.proc.kill();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed", "{j:?}");
    // Whichever the operator hears of first: the buyer's worker lost on heartbeats, or the
    // sender's link to it broken while it waited for `Done` (shown to the buyer by its kind).
    assert!(
        j.error.contains("worker lost")
            || j.error == "the link between the parties broke (reported by the provider's side)",
        "{}",
        j.error
    );
    assert!(j.delivered_at_ms.is_some(), "{j:?}");
    assert_eq!(c.remaining(&lic).await, Some(1), "the run is consumed");
    assert_charged(&c, &j, expected_charge(rows as u64)).await;
}

/// When a test kills the buyer's worker during a job.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Its task dispatched, the provider's worker frozen so that it has not dialled yet.
    BeforePeer,
    /// Blinded points crossing the link.
    MidTransfer,
    /// The delivery milestone recorded.
    AtDelivery,
    /// Its result file written (its result report about to leave, or gone).
    AfterOutput,
}

/// Polls the job every few milliseconds (bounded) until some party reports `phase` or the job
/// is delivered or ended: the moment is then past.
async fn until_phase(c: &Cluster, job_id: &str, phase: &str) {
    let mut client = c.client().await;
    for _ in 0..30_000 {
        let j = client
            .get_job(pb::JobRef {
                job_id: job_id.into(),
            })
            .await
            .expect("get job")
            .into_inner();
        let past = j.delivered_at_ms.is_some() || !matches!(j.state_text(), "admitted" | "running");
        if past || j.progress.iter().any(|p| p.phase == phase && p.done > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {job_id} never reached phase {phase}");
}

/// Runs one intersection job (output `out-{run}.csv`) and kills the buyer's worker at
/// `moment`, starting another at once (under the same id when `same_id`). The job must end
/// (bounded wait) and be settled as its end says: past its delivery point (or succeeded) the
/// run consumed and the job charged, else the run given back and every hold voided; the
/// ledger balanced either way.
async fn kill_buyer_during_a_job(
    c: &mut Cluster,
    lic: &str,
    run: usize,
    moment: Moment,
    same_id: bool,
) -> pb::Job {
    let before = c.remaining(lic).await.expect("a counted licence");
    let out = format!("out-{run}.csv");
    if let Moment::BeforePeer = moment {
        c.provider.proc.signal("STOP");
    }
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(lic, "b", "intersection", &out))
        .await
        .expect("submit")
        .into_inner();
    assert!(matches!(j.state_text(), "admitted" | "running"), "{j:?}");
    match moment {
        Moment::BeforePeer => {}
        Moment::MidTransfer => until_phase(c, &j.job_id, "exchange").await,
        Moment::AtDelivery => {
            until_delivered(c, &j.job_id).await;
        }
        Moment::AfterOutput => {
            let path = c.buyer.outputs.join(&out);
            for _ in 0..60_000 {
                if path.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(path.exists(), "run {run}: the buyer never wrote its result");
        }
    }
    c.replace_buyer(same_id);
    if let Moment::BeforePeer = moment {
        c.provider.proc.signal("CONT");
    }
    let j = c.wait(&j.job_id).await;
    let context = format!("run {run} ({moment:?}, same id {same_id}): {j:?}");
    let (transfers, lines, balanced) = money_of(c, &j.job_id).await;
    assert!(balanced, "{context}");
    let after = c.remaining(lic).await.expect("a counted licence");
    if j.state_text() == "succeeded" || j.delivered_at_ms.is_some() {
        assert_eq!(after, before - 1, "the run is consumed: {context}");
        assert!(j.charge_micros > 0, "{context}");
        let posted: i64 = transfers
            .iter()
            .filter(|t| t.kind == "post_pending")
            .map(|t| t.amount_micros)
            .sum();
        assert_eq!(posted, j.charge_micros, "{context}: {transfers:?}");
        assert_eq!(lines.len(), 1, "one bill line: {context}");
    } else {
        assert_eq!(after, before, "the run is given back: {context}");
        assert_eq!(j.charge_micros, 0, "{context}");
        assert!(
            holds_only_voided(&transfers, Some(&j.job_id)),
            "{context}: {transfers:?}"
        );
        assert!(lines.is_empty(), "{context}");
    }
    j
}

/// Issue 8, the job seen stuck `running` after the buyer's worker was killed: the buyer's
/// worker is killed at each moment of a job, and replaced at once by a new worker or by a
/// restart under the same id. Every job ends, settled as its end says; afterwards no task is
/// counted running on any worker, and the killed workers that did not come back are shown
/// lost. With resuming off (`--resume-window-secs 0`), so that every break ends its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_killed_at_any_moment_leaves_no_job_running() {
    let mut c = Cluster::start_with_operator(2_000, &["--resume-window-secs", "0"], &[]);
    c.fund(1_000_000_000, "fund").await;
    let rows = 60_000;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..rows)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", rows / 2..rows / 2 + rows))
        .await;
    let lic = c.licence("p", Some(100)).await;
    let mut gone = Vec::new();
    let mut run = 0;
    for same_id in [false, true] {
        for moment in [
            Moment::BeforePeer,
            Moment::MidTransfer,
            Moment::AtDelivery,
            Moment::AfterOutput,
        ] {
            run += 1;
            if !same_id {
                gone.push(c.buyer.worker_id.clone());
            }
            kill_buyer_during_a_job(&mut c, &lic, run, moment, same_id).await;
        }
    }
    let workers = c
        .admin()
        .await
        .list_workers(pb::WorkerQuery {
            page: None,
            party: String::new(),
        })
        .await
        .expect("workers")
        .into_inner()
        .workers;
    for w in &workers {
        assert_eq!(
            w.running_tasks, 0,
            "nothing runs after the jobs ended: {w:?}"
        );
        let expect_live = !gone.contains(&w.worker_id);
        assert_eq!(w.live, expect_live, "{w:?}");
    }
    assert_eq!(workers.len(), 2 + gone.len(), "{workers:?}");
    let (ok, out, err) = cli(&c, &["worker", "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches(" lost ").count(), gone.len(), "{out}");
}

/// Issue 8 item 7: the same request id returns the same job (one count, one set of holds);
/// the same id with other parameters is refused; another user's id is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_with_its_request_id_is_one_job() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..100)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 50..150)).await;
    let lic = c.licence("p", Some(5)).await;
    let req = pb::SubmitJobRequest {
        request_id: "retry-1".into(),
        ..Cluster::job(&lic, "b", "size", "")
    };
    let mut client = c.client().await;
    let first = client
        .submit_job(req.clone())
        .await
        .expect("submit")
        .into_inner();
    let second = client
        .submit_job(req.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.job_id, second.job_id);
    assert_eq!(second.request_id, "retry-1");
    assert_eq!(c.remaining(&lic).await, Some(4), "one count");
    let j = c.wait(&first.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    // A retry after the end still returns the same, finished job.
    let third = client
        .submit_job(req.clone())
        .await
        .expect("late retry")
        .into_inner();
    assert_eq!(
        (third.job_id.as_str(), third.state_text()),
        (j.job_id.as_str(), "succeeded")
    );
    let (transfers, lines, balanced) = money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert_eq!(
        transfers.iter().filter(|t| t.kind == "pending").count(),
        1,
        "one hold: {transfers:?}"
    );
    assert_eq!(lines.len(), 1);
    let all_jobs_holds = client
        .list_transfers(pb::ListRequest {})
        .await
        .expect("transfers")
        .into_inner()
        .transfers
        .into_iter()
        .filter(|t| t.kind == "pending")
        .count();
    assert_eq!(all_jobs_holds, 1, "no second job was held");
    // The same id with other parameters: refused, naming the id.
    let err = client
        .submit_job(pb::SubmitJobRequest {
            key_case: pb::KeyCase::Lower.into(),
            ..req
        })
        .await
        .expect_err("different parameters");
    // EXISTS_WITH_DIFFERENT_FIELDS, like a ledger idempotency mismatch.
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("retry-1"), "{}", err.message());
    assert_eq!(c.remaining(&lic).await, Some(4));
}

/// Runs the CLI against the cluster's operator: (success, stdout, stderr).
fn cli(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = c.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 8 items 10 and 2: a deposit replay says it was already recorded and changes nothing;
/// keys are per customer; a key reused with another amount is refused naming key and
/// customer; a deposit near i64::MAX is refused naming the limit and leaves the ledger
/// readable for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_replay_per_customer_and_stay_below_the_maximum() {
    let c = Cluster::start(5_000);
    let deposit = |user: &str, amount: &str, key: &str| {
        cli(
            &c,
            &[
                "deposit",
                "--user",
                user,
                "--amount-micros",
                amount,
                "--key",
                key,
            ],
        )
    };
    let (ok, out, _) = deposit("alice", "5000000", "k1");
    assert!(ok && out.starts_with("deposited 5.00"), "{out}");
    let (ok, out, _) = deposit("alice", "5000000", "k1");
    assert!(ok && out.starts_with("already recorded"), "{out}");
    // Another customer's use of the same key is its own deposit.
    let (ok, out, _) = deposit("bob", "7000000", "k1");
    assert!(ok && out.starts_with("deposited 7.00"), "{out}");
    let (ok, _, err) = deposit("alice", "6000000", "k1");
    assert!(!ok, "a reused key with another amount is refused");
    assert!(
        err.contains("idempotency key") && err.contains("k1") && err.contains("customer alice"),
        "names the key and the customer: {err}"
    );
    // The attack: a deposit near i64::MAX.
    let (ok, _, err) = deposit("mallory", &(i64::MAX - 1).to_string(), "big");
    assert!(
        !ok && err.contains("1000000000000000"),
        "names the limit: {err}"
    );
    // Deposits at the limit by several customers leave the ledger readable and balanced.
    for who in ["m1", "m2", "m3"] {
        let (ok, out, err) = deposit(who, "1000000000000000", "max");
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = deposit("carol", "1000000", "k1");
    assert!(ok && out.starts_with("deposited"), "{out}{err}");
    let b = c
        .admin()
        .await
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances readable")
        .into_inner();
    assert!(b.balanced);
    let bal = |a: &str| {
        b.balances
            .iter()
            .find(|x| x.account == a)
            .map(|x| x.balance_micros)
    };
    assert_eq!(bal("customer:alice:cash"), Some(5_000_000));
    assert_eq!(bal("customer:bob:cash"), Some(7_000_000));
    assert_eq!(bal("customer:mallory:cash"), None);
    assert_eq!(bal("customer:m3:cash"), Some(1_000_000_000_000_000));
    let (ok, out, err) = cli(&c, &["ledger", "balances"]);
    assert!(ok && out.contains("customer:m1:cash"), "{out}{err}");
}

/// Issue "control plane", must show: 64 concurrent submissions against `counts: 10`, the
/// operator killed (SIGKILL) while they are in flight and started again, every client
/// retrying its request id until it has an answer. Exactly once: one job per request id (a
/// submission committed but never answered is found again, not admitted twice), the
/// licence's count never exceeded and balanced against the jobs that consumed it, every hold
/// resolved once, the ledger balanced and the audit chain verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_submissions_against_ten_runs_survive_an_operator_sigkill() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CLIENTS: usize = 64;
    const COUNTS: u64 = 10;
    let mut c = Cluster::start(2_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..20)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 10..30)).await;
    let lic = c.licence("p", Some(COUNTS)).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (url, ca, token) = (c.url.clone(), c.ca_pem.clone(), c.buyer_token.clone());
        let req = pb::SubmitJobRequest {
            request_id: format!("kill-{i}"),
            ..Cluster::job(&lic, "b", "size", "")
        };
        let answered = answered.clone();
        clients.push(tokio::spawn(async move {
            // Spread over about 200 ms, so that the kill below (after the third answer) finds
            // submissions still to come however fast the operator answers.
            tokio::time::sleep(Duration::from_millis(3 * i as u64)).await;
            let mut tries = 0;
            loop {
                tries += 1;
                assert!(tries < 600, "request kill-{i} never answered");
                let header = tessera_proto::TokenHeader::new(&token).expect("token");
                let attempt = async {
                    let channel = tessera_proto::operator_endpoint(&url, Some(&ca), false)
                        .expect("url")
                        .connect()
                        .await
                        .map_err(|e| e.to_string())?;
                    pb::operator_client::OperatorClient::with_interceptor(channel, header)
                        .submit_job(req.clone())
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| s.to_string())
                };
                match attempt.await {
                    Ok(job) => {
                        answered.fetch_add(1, Ordering::SeqCst);
                        return job;
                    }
                    // The operator is down or restarting: the same request id again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    // Kill it while submissions are in flight: after the first answers, before the last.
    for _ in 0..2_000 {
        if answered.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before_kill = answered.load(Ordering::SeqCst);
    c.restart_operator();
    assert!(
        before_kill < CLIENTS,
        "every submission was answered before the kill ({before_kill})"
    );
    let mut jobs = Vec::new();
    for h in clients {
        jobs.push(h.await.expect("client"));
    }

    // One job per request id, and no other job on the licence.
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "a request id got two jobs");
    let mut ended = Vec::new();
    for j in &jobs {
        ended.push(c.wait_as(&j.job_id, None).await);
    }
    let listed = c
        .admin()
        .await
        .list_jobs(pb::JobQuery {
            page: None,
            user: String::new(),
            state: 0,
            licence_id: lic.clone(),
        })
        .await
        .expect("jobs")
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), CLIENTS, "jobs on the licence");

    // The count: never exceeded; what is not remaining was consumed by a job that ran to
    // its end or past its delivery point.
    let consumed = ended
        .iter()
        .filter(|j| j.state_text() == "succeeded" || j.delivered_at_ms.is_some())
        .count() as u64;
    assert!(consumed <= COUNTS, "{consumed} runs consumed");
    assert_eq!(
        c.remaining(&lic).await,
        Some(COUNTS - consumed),
        "remaining = counts - consumed"
    );
    assert!(
        ended.iter().any(|j| j.state_text() == "refused"),
        "64 submissions against 10 runs: some were refused"
    );

    // Every hold resolved once: the holds account holds nothing, and no hold is resolved
    // twice (the store's unique index) — each job's holds are posted or voided.
    let transfers = c
        .admin()
        .await
        .list_transfers(pb::ListRequest {})
        .await
        .expect("transfers")
        .into_inner()
        .transfers;
    let resolved: Vec<&str> = transfers
        .iter()
        .filter(|t| matches!(t.kind.as_str(), "post_pending" | "void_pending"))
        .map(|t| t.pending_id.as_str())
        .collect();
    for hold in transfers.iter().filter(|t| t.kind == "pending") {
        assert_eq!(
            resolved.iter().filter(|p| **p == hold.transfer_id).count(),
            1,
            "hold {} resolved once",
            hold.transfer_id
        );
    }
    c.assert_audit_verifies().await;
}

/// A PSI run in buckets (issue 15, `--bucket-rows 100`: 100 buckets) whose provider's worker
/// is killed between buckets is not delivered: every bucket's release key left masked, the one
/// delivery point comes after the last bucket, so the job fails undelivered, its run is given
/// back, no hold is posted and the buyer's worker has published nothing.
/// Polls the job until one party shows a bucket phase past the first with buckets left
/// (bounded); returns that phase's bucket number. Panics if it is delivered first.
async fn until_mid_run(c: &Cluster, job_id: &str) -> (String, u64) {
    let mut client = c.client().await;
    for _ in 0..30_000 {
        let now = client
            .get_job(pb::JobRef {
                job_id: job_id.into(),
            })
            .await
            .expect("get job")
            .into_inner();
        assert!(
            now.delivered_at_ms.is_none(),
            "delivered before its last bucket: {now:?}"
        );
        if let Some((p, b)) = now
            .progress
            .iter()
            .filter(|p| p.done < p.total)
            .find_map(|p| bucket_of(&p.phase).filter(|&b| b >= 10).map(|b| (p, b)))
        {
            return (p.phase.clone(), b);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the run never went through its buckets");
}

/// `b` of a `bucket b/B` phase.
fn bucket_of(phase: &str) -> Option<u64> {
    phase
        .strip_prefix("bucket ")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_run_killed_between_buckets_is_not_charged() {
    // A worker that never comes back: the job waits the resume window, then fails.
    let mut c = Cluster::start_with_operator(
        3_000,
        &["--resume-window-secs", "2"],
        &["--bucket-rows", "100"],
    );
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("k", 0..10_000))
        .await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 5_000..15_000))
        .await;
    let lic = c.licence("p", Some(3)).await;
    let before = c.remaining(&lic).await.expect("a counted licence");
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "intersection", "bucketed.csv"))
        .await
        .expect("submit")
        .into_inner();
    // Past a few buckets, not yet delivered.
    let (seen, _) = until_mid_run(&c, &j.job_id).await;
    c.provider.proc.kill();
    let j = c.wait(&j.job_id).await;
    let context = format!("killed at {seen}: {j:?}");
    assert_eq!(j.state_text(), "failed", "{context}");
    // The provider's worker is named as what broke (its loss shows first as the buyer's broken
    // link); the buyer learns only that the provider's side was lost.
    assert_eq!(
        j.error, "the provider's side failed: worker_lost",
        "{context}"
    );
    assert!(j.delivered_at_ms.is_none(), "{context}");
    assert_eq!(j.charge_micros, 0, "{context}");
    assert_eq!(c.remaining(&lic).await, Some(before), "{context}");
    let (transfers, lines, balanced) = money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert!(
        holds_only_voided(&transfers, Some(&j.job_id)),
        "{transfers:?}"
    );
    assert!(lines.is_empty(), "{context}");
    assert!(!c.buyer.outputs.join("bucketed.csv").exists());
    c.assert_audit_verifies().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_run_whose_worker_restarts_resumes_where_it_stopped_and_is_charged_once() {
    let mut c = Cluster::start_with_operator(3_000, &[], &["--bucket-rows", "100"]);
    c.fund(1_000_000_000, "fund").await;
    // Duplicates on both sides, and the buyer's rows out of order, so that the merged result's
    // order is checked too.
    let mut provider_rows = keys("k", 0..10_000);
    provider_rows.extend(keys("k", 0..50));
    let mut buyer_rows = keys("k", 5_000..15_000);
    buyer_rows.reverse();
    buyer_rows.extend(keys("k", 9_990..10_010));
    c.dataset(&c.provider, "p", "k", &provider_rows).await;
    c.dataset(&c.buyer, "b", "k", &buyer_rows).await;
    let lic = c.licence("p", Some(3)).await;
    let before = c.remaining(&lic).await.expect("a counted licence");
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "intersection", "resumed.csv"))
        .await
        .expect("submit")
        .into_inner();
    let (seen, killed_at) = until_mid_run(&c, &j.job_id).await;
    // A crash of the provider's worker, then the same worker (id, directories) again.
    c.restart_provider();
    // Every bucket phase shown from now on, to see where the run took up again.
    let (j, after) = wait_collecting_buckets(&c, &j.job_id).await;
    let context = format!("restarted at {seen}: {j:?}");
    assert_eq!(j.state_text(), "succeeded", "{context}");
    // It went on from about where it stopped (the receiver may be a bucket behind the sender),
    // not from the first bucket.
    assert!(
        !after.is_empty(),
        "{context}: no bucket phase after the restart"
    );
    assert!(
        after.iter().all(|&b| b + 2 >= killed_at),
        "{context}: the phases after the restart start over: {after:?}"
    );
    // Exact: the buyer's rows whose key the provider holds, in the buyer's order.
    let provider_keys: std::collections::HashSet<&String> = provider_rows.iter().collect();
    let want: Vec<Vec<String>> = buyer_rows
        .iter()
        .filter(|k| provider_keys.contains(k))
        .map(|k| vec![k.clone()])
        .collect();
    let (header, rows) = crate::harness::read_csv(&c.buyer.outputs.join("resumed.csv"));
    assert_eq!(header, vec!["k".to_string()]);
    assert_eq!(rows, want, "{context}");
    assert_eq!(j.result_size, Some(5_000), "{context}");
    // Counted and charged once.
    assert_eq!(c.remaining(&lic).await, before.checked_sub(1), "{context}");
    // 1,000 + 10 per 1,000 of the 10,050 provider rows (rated pro rata, rounded up): once.
    assert_eq!(j.charge_micros, 1_101, "{context}");
    let (transfers, lines, balanced) = money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert_eq!(lines.len(), 1, "one bill line: {lines:?} {transfers:?}");
    // Both work directories are gone once the job ended.
    for party in [&c.provider, &c.buyer] {
        let work = party.outputs.join(".tessera-work");
        let left: Vec<_> = walk_files(&work);
        assert!(left.is_empty(), "{}: {left:?}", party.name);
    }
    c.assert_audit_verifies().await;
}

/// Issue 15 ("resume"), for joins: a bucketed left join carrying the provider's `income`
/// (its licence allows only that column) whose provider's worker is killed mid-run and
/// started again takes up where it stopped; the buyer's file is still every buyer row in
/// order with its matched flag and, for matched rows only, the income of the key's first
/// provider row — no other provider column — and the job is counted and charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_payload_join_whose_provider_restarts_resumes_exactly_and_is_charged_once() {
    let mut c = Cluster::start_with_operator(3_000, &[], &["--bucket-rows", "100"]);
    c.fund(1_000_000_000, "fund").await;
    let mut prov: Vec<String> = (0..10_000)
        .map(|i| format!("k{i},INCOME{i},SECRET{i}"))
        .collect();
    // A duplicate key: its first row's value is the one delivered.
    prov.insert(20, "k7,INCOME7b,SECRET7b".into());
    c.dataset(&c.provider, "pj", "k,income,secret", &prov).await;
    let mut buyer_keys: Vec<u64> = (5_000..15_000).rev().collect();
    buyer_keys.push(7);
    let rows: Vec<String> = buyer_keys.iter().map(|i| format!("k{i},city{i}")).collect();
    c.dataset(&c.buyer, "bj", "k,city", &rows).await;
    let lic = c
        .licence_with_policy(
            "pj",
            format!(
                r#"{{"policyName":"p","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                    "useScenes":[{{"useSence":"psi_payload","counts":3,
                        "payloadColumns":["income"]}}]}}"#
            ),
        )
        .await;
    let before = c.remaining(&lic).await.expect("a counted licence");
    let j = c
        .client()
        .await
        .submit_job(pb::SubmitJobRequest {
            scene: "psi_payload".into(),
            carry_columns: vec!["city".into()],
            join: pb::JoinKind::Left.into(),
            payload_columns: vec!["income".into()],
            ..Cluster::job(&lic, "bj", "intersection", "left-resumed.csv")
        })
        .await
        .expect("submit")
        .into_inner();
    let (seen, killed_at) = until_mid_run(&c, &j.job_id).await;
    c.restart_provider();
    let (j, after) = wait_collecting_buckets(&c, &j.job_id).await;
    let context = format!("restarted at {seen}: {j:?}, then {after:?}");
    assert_eq!(j.state_text(), "succeeded", "{context}");
    assert!(
        !after.is_empty() && after.iter().all(|&b| b + 2 >= killed_at),
        "{context}: the run started over"
    );
    let (header, got) = crate::harness::read_csv(&c.buyer.outputs.join("left-resumed.csv"));
    assert_eq!(header, ["k", "city", "matched", "income"]);
    let want: Vec<Vec<String>> = buyer_keys
        .iter()
        .map(|&i| {
            let has = i < 10_000;
            vec![
                format!("k{i}"),
                format!("city{i}"),
                has.to_string(),
                if has {
                    format!("INCOME{i}")
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{context}");
    assert!(
        got == want,
        "{context}: the resumed join differs from the plaintext one"
    );
    let text = std::fs::read_to_string(c.buyer.outputs.join("left-resumed.csv")).expect("file");
    assert!(
        !text.contains("SECRET") && !text.contains("INCOME7b"),
        "{context}"
    );
    assert_eq!(c.remaining(&lic).await, before.checked_sub(1), "{context}");
    // 1,000 + 10 per 1,000 of the 10,001 provider rows, pro rata to the micro (100.01 →
    // 100): once.
    assert_eq!(j.charge_micros, 1_100, "{context}");
    assert_eq!(j.result_size, Some(5_001), "{context}");
    let (_, lines, balanced) = money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert_eq!(lines.len(), 1, "{context}: {lines:?}");
    c.assert_audit_verifies().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_restarted_at_the_delivery_point_gets_its_result_and_pays_once() {
    let mut c = Cluster::start_with(3_000, &["--bucket-rows", "100"]);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("k", 0..10_000))
        .await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 5_000..15_000))
        .await;
    let lic = c.licence("p", Some(3)).await;
    let before = c.remaining(&lic).await.expect("a counted licence");
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "intersection", "at-delivery.csv"))
        .await
        .expect("submit")
        .into_inner();
    // Killed as soon as the delivery is recorded: before or after it received the last key
    // (then it finishes alone), then restarted under its id.
    until_delivered(&c, &j.job_id).await;
    c.replace_buyer(true);
    let (j, _) = wait_collecting_buckets(&c, &j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    let want: Vec<Vec<String>> = keys("k", 5_000..10_000)
        .into_iter()
        .map(|k| vec![k])
        .collect();
    let (_, rows) = crate::harness::read_csv(&c.buyer.outputs.join("at-delivery.csv"));
    assert_eq!(rows, want, "{j:?}");
    assert_eq!(c.remaining(&lic).await, before.checked_sub(1), "{j:?}");
    assert_eq!(j.charge_micros, expected_charge(10_000), "{j:?}");
    let (_, lines, balanced) = money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert_eq!(lines.len(), 1, "{lines:?}");
    c.assert_audit_verifies().await;
}

/// Waits for `job_id` to end, collecting every bucket number shown after the call.
async fn wait_collecting_buckets(c: &Cluster, job_id: &str) -> (pb::Job, Vec<u64>) {
    let mut after = Vec::new();
    let mut client = None;
    for _ in 0..60_000 {
        // The operator may be starting again: a failed call connects again.
        if client.is_none() {
            client = tokio::time::timeout(Duration::from_secs(5), c.client())
                .await
                .ok();
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        let Ok(now) = connected
            .get_job(pb::JobRef {
                job_id: job_id.into(),
            })
            .await
        else {
            client = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let now = now.into_inner();
        after.extend(now.progress.iter().filter_map(|p| bucket_of(&p.phase)));
        if !matches!(now.state_text(), "admitted" | "running") {
            return (now, after);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("job {job_id} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_run_survives_an_operator_restart_with_and_without_a_worker_restart() {
    let mut c = Cluster::start_with(3_000, &["--bucket-rows", "100"]);
    c.fund(1_000_000_000, "fund").await;
    let provider_rows = keys("k", 0..10_000);
    let buyer_rows = keys("k", 5_000..15_000);
    c.dataset(&c.provider, "p", "k", &provider_rows).await;
    c.dataset(&c.buyer, "b", "k", &buyer_rows).await;
    let lic = c.licence("p", Some(5)).await;
    let want: Vec<Vec<String>> = keys("k", 5_000..10_000)
        .into_iter()
        .map(|k| vec![k])
        .collect();
    for (round, worker_too) in [(1, false), (2, true)] {
        let before = c.remaining(&lic).await.expect("a counted licence");
        let out = format!("restart-{round}.csv");
        let j = c
            .client()
            .await
            .submit_job(Cluster::job(&lic, "b", "intersection", &out))
            .await
            .expect("submit")
            .into_inner();
        let (seen, killed_at) = until_mid_run(&c, &j.job_id).await;
        // The operator dies (and, in round 2, the provider's worker with it) and comes back.
        c.restart_operator();
        if worker_too {
            c.restart_provider();
        }
        let (j, after) = wait_collecting_buckets(&c, &j.job_id).await;
        let context = format!("round {round}, restarted at {seen}: {j:?}, then {after:?}");
        assert_eq!(j.state_text(), "succeeded", "{context}");
        assert!(
            after.iter().all(|&b| b + 2 >= killed_at),
            "{context}: the run started over"
        );
        let (_, rows) = crate::harness::read_csv(&c.buyer.outputs.join(&out));
        assert_eq!(rows, want, "{context}");
        assert_eq!(c.remaining(&lic).await, before.checked_sub(1), "{context}");
        assert_eq!(j.charge_micros, expected_charge(10_000), "{context}");
        let (_, lines, balanced) = money_of(&c, &j.job_id).await;
        assert!(balanced);
        assert_eq!(lines.len(), 1, "{context}: {lines:?}");
    }
    c.assert_audit_verifies().await;
}
