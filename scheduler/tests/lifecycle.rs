//! A job's life when its callers go away and its workers die (issue 8, the job seen stuck
//! `running`): every job reaches an end, with its count and holds settled as the end says,
//! whatever moment its report's caller stops waiting; lost workers are shown lost and then
//! forgotten; the tasks counted running on a worker are those of its live jobs.

mod common;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::{node, node_on, request};
use tessera_core::{CountState, JobState, ManualClock, TaskErrorKind};
use tessera_scheduler::lists::PageQuery;
use tessera_scheduler::{Delivery, JobRecord, Scheduler, TaskReport, TaskUsage, WORKER_FORGET_MS};
use tessera_store::Store;
use tokio::sync::mpsc;

/// Submits a job and takes its two tasks from the workers' inboxes: `(job id, [(worker,
/// task id); sender, receiver])`.
async fn dispatched(
    scheduler: &Scheduler,
    licence: &str,
    inboxes: &mut [mpsc::Receiver<Delivery>],
) -> (String, Vec<(&'static str, String)>) {
    let view = scheduler.submit(request(licence)).await.expect("submit");
    assert_eq!(view.job.state, JobState::Admitted, "{view:?}");
    let mut tasks = Vec::new();
    for (inbox, worker) in inboxes.iter_mut().zip(["w-prov", "w-buy"]) {
        let Some(Delivery::Assign { spec_json, .. }) = inbox.recv().await else {
            panic!("expected a task");
        };
        let spec: tessera_core::TaskSpec = serde_json::from_str(&spec_json).expect("spec");
        tasks.push((worker, spec.task_id));
    }
    (view.job.job_id, tasks)
}

fn report(ok: bool, result_size: Option<u64>) -> TaskReport {
    TaskReport {
        ok,
        error_kind: (!ok).then_some(TaskErrorKind::Peer),
        error: if ok {
            String::new()
        } else {
            "peer gone".into()
        },
        usage: TaskUsage {
            rows_in: 100,
            ..TaskUsage::default()
        },
        result_size,
        result_location: String::new(),
        result_file: None,
        empty_keys: 0,
    }
}

/// Polls `fut` up to `polls` times and drops it if it has not finished, as a gRPC server
/// drops a handler whose client's connection broke. Returns whether it finished.
async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> bool {
    let mut fut = pin!(fut);
    let mut n = 0;
    std::future::poll_fn(|cx| {
        n += 1;
        match fut.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(true),
            Poll::Pending if n >= polls => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Waits (bounded: 10 s) until the job is no longer admitted or running.
async fn until_ended(scheduler: &Scheduler, job_id: &str) -> JobRecord {
    for _ in 0..1_000 {
        let job = scheduler.job(job_id).await.expect("job").job;
        if job.is_terminal() {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {job_id} is still not ended after 10 s");
}

/// What every end must leave: no open hold, a balanced ledger, the count consumed (and the
/// job charged its price) exactly when it is, and no task counted running anywhere.
async fn assert_settled(scheduler: &Scheduler, licence: &str, job: &JobRecord) {
    let store = scheduler.store();
    assert!(
        store
            .job_holds(&job.job_id)
            .await
            .expect("holds")
            .is_empty(),
        "every hold resolved: {job:?}"
    );
    assert!(store.ledger_balanced().await.expect("ledger"));
    let remaining = store.remaining_count(licence, "psi").await.expect("count");
    match job.count_state {
        CountState::Committed => {
            assert_eq!(remaining, Some(0), "{job:?}");
            assert_eq!(job.charge_micros, 1_000, "{job:?}");
        }
        CountState::Released => {
            assert_eq!(remaining, Some(1), "{job:?}");
            assert_eq!(job.charge_micros, 0, "{job:?}");
        }
        other => panic!("count left {other}: {job:?}"),
    }
    for w in scheduler.workers().await {
        assert_eq!(w.running, 0, "no task of an ended job runs on {w:?}");
    }
}

/// The root cause of the job seen stuck `running` (issue 8): the server drops a report's
/// handler at its next await when the worker's connection breaks (the buyer's worker killed
/// while it reports its result). Dropped there, the report had been taken in but the job's
/// end was never decided, or its live record was removed and its store write rolled back;
/// no other event would end it. Here the caller goes away after each number of polls in
/// turn, for a success (sender then receiver) and for a receiver's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_whose_caller_goes_away_still_ends_the_job() {
    for ok in [true, false] {
        for polls in 1..=8 {
            let (scheduler, mut inboxes, licence) = node().await;
            let (job_id, tasks) = dispatched(&scheduler, &licence, &mut inboxes).await;
            assert_eq!(scheduler.indexed_tasks(), 2, "the live job's two tasks");
            let (sender, receiver) = (&tasks[0], &tasks[1]);
            if ok {
                scheduler
                    .report_result(sender.0, &sender.1, report(true, None))
                    .await
                    .expect("sender report");
            }
            poll_then_drop(
                scheduler.report_result(receiver.0, &receiver.1, report(ok, Some(7))),
                polls,
            )
            .await;
            let job = until_ended(&scheduler, &job_id).await;
            let want = if ok {
                (JobState::Succeeded, CountState::Committed)
            } else {
                (JobState::Failed, CountState::Released)
            };
            assert_eq!(
                (job.state, job.count_state),
                want,
                "dropped after {polls} poll(s): {job:?}"
            );
            assert_settled(&scheduler, &licence, &job).await;
            assert_eq!(
                scheduler.indexed_tasks(),
                0,
                "an ended job leaves no index entry"
            );
        }
    }
}

/// A worker whose task stream closes is lost: its job fails and releases its count, the
/// worker is shown lost with nothing running, and the other worker's task of that job no
/// longer counts. Silent for [`WORKER_FORGET_MS`], lost workers are forgotten (and left out
/// of the listing); registering again brings one back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_workers_show_lost_then_are_forgotten_and_running_follows_the_jobs() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Store::open_temporary().await.expect("store");
    let (scheduler, mut inboxes, licence) = node_on(store, clock.clone()).await;
    let (job_id, _tasks) = dispatched(&scheduler, &licence, &mut inboxes).await;
    let running = |s: &Arc<Scheduler>| {
        let s = s.clone();
        async move {
            let page = s
                .list_workers("", &tessera_auth::Viewer::All, &PageQuery::default())
                .await
                .expect("list");
            page.items
                .into_iter()
                .map(|w| (w.record.worker_id, w.live, w.running))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        running(&scheduler).await,
        [("w-prov".into(), true, 1), ("w-buy".into(), true, 1)]
    );

    // The buyer's worker dies: its task stream closes.
    let buyer_inbox = inboxes.pop().expect("buyer inbox");
    drop(buyer_inbox);
    let lost = scheduler.check_workers().await.expect("check");
    assert_eq!(lost, ["w-buy"]);
    let job = until_ended(&scheduler, &job_id).await;
    assert_eq!(
        (job.state, job.count_state),
        (JobState::Failed, CountState::Released),
        "{job:?}"
    );
    assert_settled(&scheduler, &licence, &job).await;
    assert_eq!(
        running(&scheduler).await,
        [("w-prov".into(), true, 0), ("w-buy".into(), false, 0)]
    );

    // Both silent past the forget bound: forgotten, and left out of the listing.
    clock.advance_ms(WORKER_FORGET_MS);
    scheduler.check_workers().await.expect("check");
    assert!(scheduler.workers().await.is_empty());
    assert!(running(&scheduler).await.is_empty());

    // Registering again brings a worker back, live once its task stream is open.
    scheduler
        .register_worker(
            &tessera_auth::Caller::Registrant {
                party: "buy".into(),
            },
            Some("w-buy".into()),
            tessera_core::WorkerAttributes {
                party: "buy".into(),
                region: "r1".into(),
                compute_centre: "c1".into(),
                ..Default::default()
            },
            "127.0.0.1:9002".into(),
            None,
        )
        .await
        .expect("register again");
    let _inbox = scheduler.connect("w-buy", &[]).await.expect("connect");
    assert_eq!(running(&scheduler).await, [("w-buy".into(), true, 0)]);
}

/// A worker that comes back naming tasks it still runs is told to stop those whose job this
/// operator no longer runs (ended while it was away), and only those.
#[tokio::test]
async fn a_reconnecting_worker_is_told_to_stop_the_tasks_of_jobs_no_longer_running() {
    let (scheduler, mut inboxes, licence) = node().await;
    let (job_id, tasks) = dispatched(&scheduler, &licence, &mut inboxes).await;
    let buyer_task = tasks[1].1.clone();
    let mut inbox = scheduler
        .connect(
            "w-buy",
            &[buyer_task.clone(), "task-of-an-ended-job".into()],
        )
        .await
        .expect("reconnect");
    match inbox.try_recv() {
        Ok(Delivery::Cancel { task_id, reason }) => {
            assert_eq!(task_id, "task-of-an-ended-job");
            assert!(reason.contains("no longer running"), "{reason}");
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(
        inbox.try_recv().is_err(),
        "the live job's task {buyer_task} runs on"
    );
    // Once the job has ended, its task is one of those.
    scheduler.cancel(&job_id, "buyer").await.expect("cancel");
    until_ended(&scheduler, &job_id).await;
    let mut inbox = scheduler
        .connect("w-buy", std::slice::from_ref(&buyer_task))
        .await
        .expect("reconnect again");
    match inbox.try_recv() {
        Ok(Delivery::Cancel { task_id, .. }) => assert_eq!(task_id, buyer_task),
        other => panic!("expected a cancel, got {other:?}"),
    }
}

/// Both workers' task queues hold one task and the first job's are in them: the second
/// job's dispatch waits for room instead of failing the job, and goes out once the workers
/// take their first tasks.
#[tokio::test]
async fn a_full_task_queue_slows_the_dispatch_down_instead_of_failing_the_job() {
    let (scheduler, mut inboxes, licence) = small_queue_node(1, None).await;
    let first = scheduler.submit(request(&licence)).await.expect("first");
    assert_eq!(first.job.state, JobState::Admitted);
    let second = spawn_submit(&scheduler, &licence);
    // The workers take the first job's tasks; the second job's follow.
    let job_of = |d: Delivery| match d {
        Delivery::Assign { ticket, .. } => {
            let body: serde_json::Value = serde_json::from_str(&ticket.body).expect("ticket body");
            body["job_id"].as_str().expect("job id").to_owned()
        }
        other => panic!("expected an assignment, got {other:?}"),
    };
    let mut jobs_seen = Vec::new();
    for inbox in &mut inboxes {
        jobs_seen.push(job_of(inbox.recv().await.expect("a delivery")));
    }
    let second = second.await.expect("join").expect("second");
    assert_eq!(
        second.job.state,
        JobState::Admitted,
        "{:?}",
        second.job.error
    );
    for inbox in &mut inboxes {
        jobs_seen.push(job_of(inbox.try_recv().expect("the second job's task")));
    }
    for id in [&first.job.job_id, &second.job.job_id] {
        assert_eq!(
            jobs_seen.iter().filter(|j| *j == id).count(),
            2,
            "{jobs_seen:?}"
        );
    }
}

/// A worker that takes no task for `delivery_wait_ms` fails the job as undeliverable, with
/// the reason, and the count goes back.
#[tokio::test]
async fn a_task_queue_full_past_the_wait_fails_the_job_as_undeliverable() {
    let (scheduler, _inboxes, licence) = small_queue_node(1, Some(50)).await;
    scheduler.submit(request(&licence)).await.expect("first");
    let second = scheduler.submit(request(&licence)).await.expect("second");
    assert_eq!(second.job.state, JobState::Failed);
    assert!(
        second.job.error.contains("stayed full for 50 ms"),
        "{}",
        second.job.error
    );
    assert_eq!(second.job.count_state, CountState::Released);
}

/// A job cancelled while its dispatch waits for room in a full task queue: once there is
/// room, none of its tasks is sent, and the submission answers the job as cancelled.
#[tokio::test]
async fn a_job_cancelled_while_its_dispatch_waits_sends_no_task() {
    let (scheduler, mut inboxes, licence) = small_queue_node(1, None).await;
    let first = scheduler.submit(request(&licence)).await.expect("first");
    let second = spawn_submit(&scheduler, &licence);
    // The second job is admitted, live (its updates can be followed: `watch` of a job not
    // live answers a channel whose sender is gone), and its dispatch waits.
    let second_id = loop {
        let open = scheduler.store().unfinished_jobs().await.expect("jobs");
        if let Some(j) = open.iter().find(|j| j.job_id != first.job.job_id) {
            let live = scheduler.watch(&j.job_id).await.expect("watch");
            if live.has_changed().is_ok() {
                break j.job_id.clone();
            }
        }
        tokio::task::yield_now().await;
    };
    scheduler.cancel(&second_id, "u1").await.expect("cancel");
    for inbox in &mut inboxes {
        inbox.recv().await.expect("the first job's task");
    }
    let second = second.await.expect("join").expect("second");
    assert_eq!(second.job.job_id, second_id);
    assert_eq!(second.job.state, JobState::Cancelled);
    for inbox in &mut inboxes {
        while let Ok(d) = inbox.try_recv() {
            if let Delivery::Assign { ticket, .. } = d {
                assert!(!ticket.body.contains(&second_id), "{}", ticket.body);
            }
        }
    }
}

/// A job cancelled while its worker's task queue is full: the stop message follows the
/// worker's queued tasks instead of being dropped.
#[tokio::test]
async fn a_cancellation_reaches_a_worker_whose_task_queue_is_full() {
    let (scheduler, mut inboxes, licence) = small_queue_node(1, None).await;
    let job = scheduler.submit(request(&licence)).await.expect("submit");
    // Both queues hold the job's tasks; the cancellation's stop messages wait behind them.
    scheduler
        .cancel(&job.job.job_id, "u1")
        .await
        .expect("cancel");
    for inbox in &mut inboxes {
        let task_id = match inbox.recv().await.expect("the task") {
            Delivery::Assign { spec_json, .. } => {
                let spec: serde_json::Value = serde_json::from_str(&spec_json).expect("spec");
                spec["task_id"].as_str().expect("task id").to_owned()
            }
            other => panic!("expected the assignment first, got {other:?}"),
        };
        // A guard against hanging on the old behaviour (the message dropped), not a timing.
        let next = tokio::time::timeout(Duration::from_secs(30), inbox.recv())
            .await
            .expect("the stop message was dropped")
            .expect("a delivery");
        match next {
            Delivery::Cancel { task_id: t, .. } => assert_eq!(t, task_id),
            other => panic!("expected the stop message, got {other:?}"),
        }
    }
}

/// A node whose workers' task queues hold `queue_max` tasks (dispatch waiting `wait_ms` for
/// room, or the default), with a licence of two PSI runs to `u1`.
async fn small_queue_node(
    queue_max: usize,
    wait_ms: Option<u64>,
) -> (Arc<Scheduler>, Vec<mpsc::Receiver<Delivery>>, String) {
    let store = Store::open_temporary().await.expect("store");
    let mut config = tessera_scheduler::SchedulerConfig {
        delivery_queue_max: queue_max,
        ..Default::default()
    };
    if let Some(ms) = wait_ms {
        config.delivery_wait_ms = ms;
    }
    let (scheduler, inboxes, _) =
        common::node_with(store, Arc::new(ManualClock::new(1_000_000)), config).await;
    let licence = common::licence(
        &scheduler,
        r#"{"policyName":"t","relUsers":[{"userId":"u1","userName":"U","isGroup":0}],
        "useScenes":[{"useSence":"psi","counts":2,"visitArea":["r1"],"cpCenter":["c1"]}]}"#,
    )
    .await;
    (scheduler, inboxes, licence)
}

/// A submission under `licence` on a task of its own (it may wait for room in a queue).
fn spawn_submit(
    scheduler: &Arc<Scheduler>,
    licence: &str,
) -> tokio::task::JoinHandle<Result<tessera_scheduler::JobView, tessera_scheduler::SchedulerError>>
{
    let (scheduler, licence) = (scheduler.clone(), licence.to_owned());
    tokio::spawn(async move { scheduler.submit(request(&licence)).await })
}
