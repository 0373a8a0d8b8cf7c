//! Checkpoints through the scheduler: every ticket of a dispatched job carries a head signed
//! with the node's key that covers the job's admission, a refusal's receipt head covers the
//! refusal (both signed without a write, and both verify against the chain), and sealing an
//! unchanged head writes nothing. Also the end of a job: one that cannot be recorded stays
//! live and is recorded by the monitor's retry.

mod common;

use std::sync::Arc;

use common::{SEED, node, node_on, request};
use tessera_core::ManualClock;
use tessera_core::checkpoint::NodeKey;
use tessera_core::ticket::{TicketBody, TicketSigner};
use tessera_scheduler::Delivery;
use tessera_store::Store;

#[tokio::test]
async fn tickets_and_receipts_carry_a_signed_head_covering_the_decision() {
    let (scheduler, mut inboxes, licence) = node().await;
    let audit = scheduler.audit();
    let store = scheduler.store().clone();
    let key = NodeKey::from_hex(&TicketSigner::from_seed(&SEED).public_key_hex()).expect("key");

    let before = store.audit_head().await.expect("head").expect("entries");
    let view = scheduler.submit(request(&licence)).await.expect("submit");
    // Admitted and dispatched: running once a worker reports.
    assert_eq!(view.job.state, tessera_core::JobState::Admitted);
    let entries = store.audit_entries().await.expect("entries");
    let admitted = entries
        .iter()
        .find(|e| e.kind == "admit" && e.subject == view.job.job_id)
        .expect("admission entry");

    let mut heads = Vec::new();
    for inbox in &mut inboxes {
        let Some(Delivery::Assign { ticket, .. }) = inbox.recv().await else {
            panic!("expected a task");
        };
        let body: TicketBody = serde_json::from_str(&ticket.body).expect("body");
        let head = body.audit_head.expect("the ticket carries the audit head");
        key.verify(&head).expect("signed by the node");
        heads.push(head);
    }
    assert_eq!(heads[0], heads[1], "both tickets carry the same head");
    let head = &heads[0];
    assert!(head.seq > before.seq);
    assert!(
        head.seq >= u64::try_from(admitted.seq).expect("seq"),
        "it covers the admission"
    );
    let at_head = &entries[usize::try_from(head.seq).expect("seq") - 1];
    assert_eq!(at_head.hash, head.head_hash);
    // Signed, not recorded (the background sealer records checkpoints).
    assert!(
        !store
            .checkpoints()
            .await
            .expect("checkpoints")
            .contains(head)
    );

    // The licence allowed one run: the second submission is refused; its receipt's head
    // covers the refusal.
    let refused = scheduler.submit(request(&licence)).await.expect("submit");
    assert_eq!(refused.job.state, tessera_core::JobState::Refused);
    let receipt = audit.sign_head().await.expect("receipt").expect("a head");
    let now = store.audit_head().await.expect("head").expect("entries");
    assert_eq!((receipt.seq, &receipt.head_hash), (now.seq, &now.hash));
    key.verify(&receipt).expect("signed by the node");

    // Both heads that left the node verify against the chain as outside checkpoints.
    let v = store
        .verify_audit_with(
            Some(&key),
            &[
                ("ticket".to_string(), head.clone()),
                ("receipt".to_string(), receipt.clone()),
            ],
        )
        .await
        .expect("verify");
    assert!(v.problems.is_empty(), "{v:?}");

    // Sealing records the head once; again with nothing new writes nothing.
    let sealed = audit.seal().await.expect("seal").expect("a head");
    assert_eq!((sealed.seq, &sealed.head_hash), (now.seq, &now.hash));
    let count = store.checkpoints().await.expect("checkpoints").len();
    assert_eq!(audit.seal().await.expect("seal"), Some(sealed));
    assert_eq!(store.checkpoints().await.expect("checkpoints").len(), count);

    let report = audit.verify().await.expect("verify");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.checkpoints, count as u64);
}

/// Calls for a signed head share one signature while it covers what each caller wrote before
/// asking and is younger than `HEAD_REUSE_MS`; a head written since, or an older signature,
/// gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_a_signed_head_that_covers_each_of_them() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Store::open_temporary().await.expect("store");
    let (scheduler, _inboxes, licence) = node_on(store.clone(), clock.clone()).await;
    let audit = scheduler.audit();
    let key = NodeKey::from_hex(&TicketSigner::from_seed(&SEED).public_key_hex()).expect("key");

    let before = store.audit_head().await.expect("head").expect("entries");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let audit = audit.clone();
        calls.spawn(async move { audit.sign_head().await });
    }
    let mut heads = Vec::new();
    while let Some(h) = calls.join_next().await {
        heads.push(h.expect("join").expect("sign").expect("a head"));
    }
    assert!(
        heads.iter().all(|h| h == &heads[0]),
        "one signature for all"
    );
    assert_eq!(
        (heads[0].seq, &heads[0].head_hash),
        (before.seq, &before.hash)
    );
    key.verify(&heads[0]).expect("signed by the node");

    // An admission since: the next head covers it, however young the last signature is.
    let view = scheduler.submit(request(&licence)).await.expect("submit");
    assert_eq!(view.job.state, tessera_core::JobState::Admitted);
    let now = store.audit_head().await.expect("head").expect("entries");
    let after = audit.sign_head().await.expect("sign").expect("a head");
    assert!(now.seq > before.seq);
    assert!(after.seq >= now.seq, "{} covers {}", after.seq, now.seq);
    key.verify(&after).expect("signed by the node");

    // Nothing written since: the same signed head (signed at the same time) within the
    // reuse window, a fresh signature after it.
    clock.advance_ms(tessera_scheduler::audit::HEAD_REUSE_MS - 1);
    let again = audit.sign_head().await.expect("sign").expect("a head");
    assert_eq!(again, after);
    clock.advance_ms(1);
    let fresh = audit.sign_head().await.expect("sign").expect("a head");
    assert_eq!(fresh.seq, after.seq);
    assert_eq!(
        fresh.at_ms,
        after.at_ms + tessera_scheduler::audit::HEAD_REUSE_MS
    );
    key.verify(&fresh).expect("signed by the node");
}

/// A job whose end cannot be recorded (here: a trigger refuses it, as a full disk or a locked
/// database would) is not lost: it stays live, and the monitor records its end on a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_that_cannot_be_recorded_is_retried_by_the_monitor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tessera.db");
    let store = Store::open(&db).await.expect("store");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (scheduler, mut inboxes, licence) = node_on(store, clock.clone()).await;
    let view = scheduler.submit(request(&licence)).await.expect("submit");
    let job_id = view.job.job_id.clone();
    let mut tasks = Vec::new();
    for (inbox, worker) in inboxes.iter_mut().zip(["w-prov", "w-buy"]) {
        let Some(Delivery::Assign { spec_json, .. }) = inbox.recv().await else {
            panic!("expected a task");
        };
        let spec: tessera_core::TaskSpec = serde_json::from_str(&spec_json).expect("spec");
        tasks.push((worker, spec.task_id));
    }

    let attacker = rusqlite::Connection::open(&db).expect("second connection");
    attacker
        .busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    attacker
        .execute_batch(
            "CREATE TRIGGER refuse_end BEFORE UPDATE OF state ON jobs WHEN NEW.state = 'succeeded' \
             BEGIN SELECT RAISE(ABORT, 'injected: the end cannot be written'); END",
        )
        .expect("trigger");

    let report = |size: Option<u64>| tessera_scheduler::TaskReport {
        ok: true,
        error_kind: None,
        error: String::new(),
        usage: tessera_scheduler::TaskUsage {
            rows_in: 100,
            ..Default::default()
        },
        result_size: size,
        result_location: String::new(),
        result_file: None,
        empty_keys: 0,
    };
    let (sender, receiver) = (&tasks[0], &tasks[1]);
    scheduler
        .report_result(sender.0, &sender.1, report(None))
        .await
        .expect("sender report");
    let failed = scheduler
        .report_result(receiver.0, &receiver.1, report(Some(7)))
        .await;
    assert!(failed.is_err(), "the end could not be written: {failed:?}");
    assert_eq!(
        scheduler.job(&job_id).await.expect("job").job.state,
        tessera_core::JobState::Running,
        "not ended, but not lost either"
    );

    attacker
        .execute_batch("DROP TRIGGER refuse_end")
        .expect("drop trigger");
    drop(attacker);
    tokio::spawn(scheduler.clone().run_monitor(20));
    // Not before the retry pause has passed on the scheduler's clock.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        scheduler.job(&job_id).await.expect("job").job.state,
        tessera_core::JobState::Running
    );
    clock.advance_ms(6_000);
    let mut state = tessera_core::JobState::Running;
    for _ in 0..100 {
        state = scheduler.job(&job_id).await.expect("job").job.state;
        if state != tessera_core::JobState::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state, tessera_core::JobState::Succeeded);
    let job = scheduler.job(&job_id).await.expect("job").job;
    assert_eq!(job.result_size, Some(7));
    assert_eq!(job.charge_micros, 1_000);
    assert!(scheduler.store().ledger_balanced().await.expect("ledger"));
}
