//! Store tests on a real SQLite file in a temporary directory.

use super::*;
use tessera_accounting::{JobPrice, TransferOutcome, TransferSpec, derive_id};
use tessera_policy::UsagePolicy;

pub(crate) async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db/tessera.db"))
        .await
        .expect("open");
    (dir, store)
}

/// Deposits `amount_micros` into user `u`'s cash at `now_ms` (one deposit per store).
pub(crate) async fn deposit(store: &Store, amount_micros: i64, now_ms: i64) {
    let deposit = TransferSpec {
        id: derive_id(&["dep", "u"]),
        debit: "external".into(),
        credit: "customer:u:cash".into(),
        amount_micros,
        job_id: None,
        memo: "deposit".into(),
    };
    store
        .post_transfers(&[deposit], now_ms)
        .await
        .expect("deposit");
}

/// A plain connection to the store's database file, as an attacker with the file would open
/// one (foreign keys enforced, as on the store's own connections, and a busy timeout).
pub(crate) fn raw_connection(path: &Path) -> rusqlite::Connection {
    let raw = rusqlite::Connection::open(path).expect("raw");
    raw.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    raw.execute_batch("PRAGMA foreign_keys = ON")
        .expect("foreign keys");
    raw
}

pub(crate) async fn seed_licence(store: &Store, counts: u64) {
    store
        .create_dataset(
            &DatasetRecord {
                dataset_id: "ds".into(),
                owner_party: "prov".into(),
                location: "p.csv".into(),
                description: String::new(),
                declared_rows: None,
            },
            1,
        )
        .await
        .expect("dataset");
    let policy = UsagePolicy::from_json(&format!(
        r#"{{"policyName":"p","relUsers":[{{"userId":"u","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"psi","counts":{counts}}}]}}"#
    ))
    .expect("policy");
    store
        .create_licence(
            &LicenceRecord {
                licence_id: "lic".into(),
                licensor: "prov".into(),
                licensee: "u".into(),
                dataset_id: "ds".into(),
                policy,
                price: JobPrice {
                    per_job_micros: 100,
                    per_1k_rows_micros: 0,
                    operator_share_bps: 0,
                },
                monthly_price_micros: 0,
            },
            2,
        )
        .await
        .expect("licence");
}

pub(crate) fn new_job(i: usize) -> NewJob {
    NewJob {
        job_id: format!("job-{i}"),
        licence_id: "lic".into(),
        scene: "psi".into(),
        user: "u".into(),
        mode: tessera_core::PsiMode::Size,
        protocol: tessera_core::PsiProtocol::Ecdh,
        request: serde_json::json!({}),
        request_id: None,
        buyer_party: "buy".into(),
        provider_party: "prov".into(),
        output: String::new(),
        co_licences: vec![],
        now_ms: 10,
    }
}

pub(crate) fn allow(_: &AdmitContext<'_>) -> Result<Decision, StoreError> {
    Ok(Decision {
        allowed: true,
        reasons: vec![],
        detail: serde_json::json!({}),
        tasks: vec![],
        holds: vec![],
        auto_frozen: None,
        mpc_triples: None,
    })
}

#[tokio::test]
async fn concurrent_admissions_never_exceed_the_count() {
    let (_dir, store) = open().await;
    seed_licence(&store, 5).await;
    let mut handles = Vec::new();
    for i in 0..32 {
        let s = store.clone();
        handles.push(tokio::spawn(
            async move { s.admit(&new_job(i), allow).await },
        ));
    }
    let mut admitted = 0;
    for h in handles {
        if let AdmitOutcome::Admitted { .. } = h.await.expect("join").expect("admit") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert_eq!(
        store
            .remaining_count("lic", "psi")
            .await
            .expect("remaining"),
        Some(0)
    );
    assert!(store.verify_audit().await.expect("verify").ok());
}

#[tokio::test]
async fn failure_not_the_buyers_releases_and_finish_is_exactly_once() {
    let (_dir, store) = open().await;
    seed_licence(&store, 1).await;
    assert!(matches!(
        store.admit(&new_job(1), allow).await.expect("admit"),
        AdmitOutcome::Admitted { .. }
    ));
    assert!(matches!(
        store.admit(&new_job(2), allow).await.expect("admit"),
        AdmitOutcome::Refused { .. }
    ));
    let fail = JobFinish::Failed {
        error: "worker lost: w-7".into(),
        buyer_fault: false,
        origin: Some(crate::FailureOrigin {
            role: tessera_core::TaskRole::Sender,
            party: "prov".into(),
            kind: "worker_lost".into(),
        }),
    };
    let out = store.finish_job("job-1", &fail, 20).await.expect("finish");
    assert!(out.transitioned);
    assert_eq!(
        out.job.failure,
        Some(crate::FailureOrigin {
            role: tessera_core::TaskRole::Sender,
            party: "prov".into(),
            kind: "worker_lost".into(),
        })
    );
    assert_eq!(out.job.error, "worker lost: w-7");
    // The detail and where it happened are in the audit chain.
    let entries = store.audit_entries().await.expect("audit");
    let complete = entries
        .iter()
        .find(|e| e.kind == "complete" && e.subject == "job-1")
        .expect("complete entry");
    let detail: serde_json::Value = serde_json::from_str(&complete.detail_json).expect("json");
    assert_eq!(detail["error"], "worker lost: w-7");
    assert_eq!(detail["failure"]["kind"], "worker_lost");
    assert_eq!(detail["failure"]["party"], "prov");
    assert_eq!(
        (
            out.job.buyer_party.as_str(),
            out.job.provider_party.as_str()
        ),
        ("buy", "prov")
    );
    assert_eq!(out.job.count_state, tessera_core::CountState::Released);
    let again = store.finish_job("job-1", &fail, 21).await.expect("finish");
    assert!(!again.transitioned);
    assert_eq!(
        store
            .remaining_count("lic", "psi")
            .await
            .expect("remaining"),
        Some(1)
    );

    // Success commits, records usage once and charges once.
    assert!(matches!(
        store.admit(&new_job(3), allow).await.expect("admit"),
        AdmitOutcome::Admitted { .. }
    ));
    let usage = vec![UsageEventRecord {
        event_id: derive_id(&["job-3", "prov", "rows_in", "1"]),
        job_id: "job-3".into(),
        party: "prov".into(),
        metric: "rows_in".into(),
        protocol: "ecdh".into(),
        attempt: 1,
        quantity: 1000,
        event_time_ms: 30,
    }];
    let charge = TransferSpec {
        id: derive_id(&["charge", "job-3"]),
        debit: "customer:u:cash".into(),
        credit: "provider:prov:receivable".into(),
        amount_micros: 100,
        job_id: Some("job-3".into()),
        memo: "psi".into(),
    };
    deposit(&store, 150, 35).await;
    let ok = JobFinish::Succeeded {
        result_size: 7,
        result_location: "out.csv".into(),
        result_file: Some(crate::ResultFileRecord {
            name: "out.csv".into(),
            bytes: 321,
            rows: 9,
            sha256_hex: "ab".repeat(32),
        }),
        provider_result_file: Some(crate::ResultFileRecord {
            name: "psi-job-3.csv".into(),
            bytes: 99,
            rows: 4,
            sha256_hex: "cd".repeat(32),
        }),
        empty_keys: crate::EmptyKeyCounts {
            buyer: Some(2),
            provider: Some(0),
        },
        usage: usage.clone(),
        ledger: vec![LedgerOp::Post(charge.clone())],
        bill_lines: vec![],
        charge_micros: 100,
    };
    assert!(
        store
            .finish_job("job-3", &ok, 40)
            .await
            .expect("finish")
            .transitioned
    );
    assert!(
        !store
            .finish_job("job-3", &ok, 41)
            .await
            .expect("finish")
            .transitioned
    );
    let j3 = store.job("job-3").await.expect("job");
    assert_eq!(
        j3.provider_result_file
            .as_ref()
            .map(|f| (f.name.as_str(), f.bytes, f.rows)),
        Some(("psi-job-3.csv", 99, 4))
    );
    assert_eq!(
        j3.result_file,
        Some(crate::ResultFileRecord {
            name: "out.csv".into(),
            bytes: 321,
            rows: 9,
            sha256_hex: "ab".repeat(32),
        })
    );
    assert_eq!(
        (j3.buyer_empty_keys, j3.provider_empty_keys, j3.failure),
        (Some(2), Some(0), None)
    );
    store
        .record_usage(&usage, 42)
        .await
        .expect("duplicate usage is accepted once");
    assert_eq!(store.usage_events().await.expect("usage").len(), 1);
    // Any field different is "exists with different fields", the event time included.
    for change in [
        (|e: &mut UsageEventRecord| e.quantity = 999) as fn(&mut UsageEventRecord),
        |e| e.event_time_ms = 31,
        |e| e.party = "other".into(),
        |e| e.metric = "cpu_ms".into(),
        |e| e.attempt = 2,
        |e| e.job_id = "job-9".into(),
    ] {
        let mut changed = usage[0].clone();
        change(&mut changed);
        assert!(matches!(
            store.record_usage(&[changed.clone()], 43).await,
            Err(StoreError::IdempotencyMismatch { .. })
        ));
        assert!(matches!(
            store.record_usage_once(&[changed], 43).await,
            Err(StoreError::IdempotencyMismatch { .. })
        ));
    }
    assert_eq!(
        store.record_usage_once(&usage, 44).await.expect("replay"),
        TransferOutcome::Exists
    );
    // In one call (one multi-row insert): a new event twice is one event; a new id twice
    // with different fields is refused, and nothing of the call stays.
    let fresh = |id: &str, quantity| UsageEventRecord {
        event_id: id.into(),
        quantity,
        ..usage[0].clone()
    };
    store
        .record_usage(&[fresh("u-a", 5), fresh("u-a", 5), fresh("u-b", 6)], 45)
        .await
        .expect("twice in one call");
    assert_eq!(store.usage_events().await.expect("usage").len(), 3);
    assert!(matches!(
        store
            .record_usage(&[fresh("u-c", 5), fresh("u-c", 7)], 46)
            .await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    assert_eq!(store.usage_events().await.expect("usage").len(), 3);
    assert_eq!(store.balance("customer:u:cash").await.expect("bal"), 50);
    assert_eq!(
        store
            .balance("provider:prov:receivable")
            .await
            .expect("bal"),
        100
    );
    assert_eq!(
        store
            .post_transfers(std::slice::from_ref(&charge), 50)
            .await
            .expect("retry"),
        vec![TransferOutcome::Exists]
    );
    // Any field different is a different transfer (the memo included).
    for change in [
        (|t: &mut TransferSpec| t.amount_micros = 101) as fn(&mut TransferSpec),
        |t| t.memo = "other".into(),
        |t| t.job_id = None,
        |t| t.credit = "operator:revenue".into(),
    ] {
        let mut different = charge.clone();
        change(&mut different);
        assert!(matches!(
            store.post_transfers(&[different], 51).await,
            Err(StoreError::IdempotencyMismatch { .. })
        ));
    }
    assert!(store.ledger_balanced().await.expect("balanced"));
    assert_eq!(
        store
            .remaining_count("lic", "psi")
            .await
            .expect("remaining"),
        Some(0)
    );
}

#[tokio::test]
async fn a_result_name_recorded_by_a_live_or_succeeded_job_is_seen_at_admission() {
    let (_d, store) = open().await;
    seed_licence(&store, 10).await;
    let named = |i: usize, party: &str, output: &str| NewJob {
        buyer_party: party.into(),
        output: output.into(),
        ..new_job(i)
    };
    let taken = |store: &Store, job: NewJob| {
        let store = store.clone();
        async move {
            let (seen, saw) = std::sync::mpsc::channel();
            store
                .admit(&job, move |c| {
                    seen.send(c.output_taken_by.clone()).expect("send");
                    allow(c)
                })
                .await
                .expect("admit");
            saw.recv().expect("decided")
        }
    };
    assert_eq!(taken(&store, named(1, "buy", "r.csv")).await, None);
    // The same name for the same buyer party is seen, naming the job that recorded it.
    assert_eq!(
        taken(&store, named(2, "buy", "r.csv")).await,
        Some("job-1".into())
    );
    // Another party's name, or another name, is free.
    assert_eq!(taken(&store, named(3, "other", "r.csv")).await, None);
    assert_eq!(taken(&store, named(4, "buy", "s.csv")).await, None);
    // A failed job wrote nothing: its name is free again once every holder failed.
    for id in ["job-1", "job-2"] {
        let fail = JobFinish::Failed {
            error: "x".into(),
            buyer_fault: false,
            origin: None,
        };
        store.finish_job(id, &fail, 20).await.expect("finish");
    }
    assert_eq!(taken(&store, named(5, "buy", "r.csv")).await, None);
}

#[tokio::test]
async fn balance_limits_refuse_and_write_nothing() {
    let (_dir, store) = open().await;
    store
        .set_account_limit("customer:a:cash", Some(0))
        .await
        .expect("limit");
    let t = |id: &str, amount| TransferSpec {
        id: derive_id(&[id]),
        debit: "customer:a:cash".into(),
        credit: "operator:revenue".into(),
        amount_micros: amount,
        job_id: None,
        memo: String::new(),
    };
    let deposit = TransferSpec {
        id: derive_id(&["dep"]),
        debit: "external".into(),
        credit: "customer:a:cash".into(),
        amount_micros: 50,
        job_id: None,
        memo: "deposit".into(),
    };
    store.post_transfers(&[deposit], 1).await.expect("deposit");
    // Linked: the second fails, so the first is not written either.
    assert!(
        store
            .post_transfers(&[t("a", 30), t("b", 30)], 2)
            .await
            .is_err()
    );
    assert_eq!(store.balance("customer:a:cash").await.expect("bal"), 50);
    assert_eq!(store.transfers().await.expect("transfers").len(), 1);
    assert!(store.post_transfers(&[t("c", 0)], 3).await.is_err());
    store
        .post_transfers(&[t("d", 50)], 4)
        .await
        .expect("exact balance");
    assert_eq!(store.balance("customer:a:cash").await.expect("bal"), 0);
    assert!(store.ledger_balanced().await.expect("balanced"));
}

#[tokio::test]
async fn audit_chain_names_the_first_tampered_entry() {
    let (dir, store) = open().await;
    seed_licence(&store, 3).await;
    for i in 0..3 {
        store.admit(&new_job(i), allow).await.expect("admit");
    }
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.entries, 5);
    store.close().await;

    // Tamper with entry 3 behind the store's back.
    let path = dir.path().join("db/tessera.db");
    let raw = raw_connection(&path);
    // An attacker with the file first drops the append-only triggers.
    raw.execute("DROP TRIGGER audit_log_no_update", [])
        .expect("drop trigger");
    raw.execute("DROP TRIGGER audit_log_no_delete", [])
        .expect("drop trigger");
    raw.execute("UPDATE audit_log SET detail_json = '{}' WHERE seq = 3", [])
        .expect("tamper");
    raw.close().expect("close raw");
    let store = Store::open(&path).await.expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!(v.first_broken_seq, Some(3));
    assert!(v.detail.contains("altered"));

    // Deleting an entry is found too.
    let raw = raw_connection(&path);
    raw.execute("DELETE FROM audit_log WHERE seq = 2", [])
        .expect("tamper");
    raw.close().expect("close raw");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!(v.first_broken_seq, Some(2));
}

#[tokio::test]
async fn unknown_records_are_not_found() {
    let (_dir, store) = open().await;
    assert!(matches!(
        store.dataset("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.licence("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.job("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    let out = store
        .admit(&new_job(1), |c| {
            Ok::<_, StoreError>(Decision {
                allowed: c.licence.is_some(),
                reasons: vec![Refusal::LicenceNotFound {
                    licence_id: "lic".into(),
                }],
                detail: serde_json::json!({}),
                tasks: vec![],
                holds: vec![],
                auto_frozen: None,
                mpc_triples: None,
            })
        })
        .await
        .expect("admit");
    assert!(matches!(out, AdmitOutcome::Refused { .. }));
}

/// Issue 8 item 7: one job per (user, request id); a retry changes nothing.
#[tokio::test]
async fn a_request_id_admits_once_per_user() {
    let (_dir, store) = open().await;
    seed_licence(&store, 5).await;
    let with_id = |i: usize, user: &str, request: serde_json::Value| NewJob {
        user: user.into(),
        request,
        request_id: Some("r-1".into()),
        ..new_job(i)
    };
    let first = match store
        .admit(&with_id(1, "u", serde_json::json!({"k": 1})), allow)
        .await
        .expect("admit")
    {
        AdmitOutcome::Admitted { job: j, .. } => j,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.request_id.as_deref(), Some("r-1"));
    let again = store
        .admit(&with_id(2, "u", serde_json::json!({"k": 1})), allow)
        .await
        .expect("replay");
    assert_eq!(again, AdmitOutcome::Replayed(first.clone()));
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("rem"),
        Some(4),
        "one count for the two submissions"
    );
    assert!(matches!(
        store.job("job-2").await,
        Err(StoreError::NotFound { .. })
    ));
    // The same id with other parameters is refused, naming the id and what differs.
    let err = store
        .admit(
            &with_id(3, "u", serde_json::json!({"k": 2, "protocol": "ecdh"})),
            allow,
        )
        .await
        .expect_err("mismatch");
    assert!(
        matches!(&err, StoreError::IdempotencyMismatch { id, .. }
            if id.contains("r-1") && id.contains("(differing: k, protocol)")),
        "{err}"
    );
    // Another user's id is its own.
    assert!(matches!(
        store
            .admit(&with_id(4, "v", serde_json::json!({"k": 1})), allow)
            .await
            .expect("other user"),
        AdmitOutcome::Admitted { .. }
    ));
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("rem"),
        Some(3)
    );
}

/// A refusal only for want of a live worker is not kept under the request id (the workers may
/// be coming back after a restart): a retry is decided afresh, and then kept. A refusal for
/// another reason is the request id's answer for good.
#[tokio::test]
async fn a_refusal_for_want_of_a_worker_leaves_the_request_id_free() {
    let (_dir, store) = open().await;
    seed_licence(&store, 5).await;
    let with_id = |i: usize, request_id: &str| NewJob {
        request_id: Some(request_id.into()),
        ..new_job(i)
    };
    let refuse = |reason: Refusal| {
        move |c: &AdmitContext<'_>| {
            Ok::<_, StoreError>(Decision {
                allowed: false,
                reasons: vec![reason.clone()],
                ..allow(c)?
            })
        }
    };
    let refused = |out: AdmitOutcome| match out {
        AdmitOutcome::Refused { job, .. } => job,
        other => panic!("expected a refusal: {other:?}"),
    };
    let no_worker = Refusal::NoWorker {
        reason: "no live worker of party p".into(),
    };
    let job = refused(
        store
            .admit(&with_id(1, "r-1"), refuse(no_worker.clone()))
            .await
            .expect("refused"),
    );
    assert_eq!(job.request_id, None, "not kept under the request id");
    let out = store.admit(&with_id(2, "r-1"), allow).await.expect("retry");
    let AdmitOutcome::Admitted { job: admitted, .. } = out else {
        panic!("decided afresh: {out:?}")
    };
    assert_eq!(admitted.request_id.as_deref(), Some("r-1"));
    assert_eq!(
        store
            .admit(&with_id(3, "r-1"), allow)
            .await
            .expect("replay"),
        AdmitOutcome::Replayed(admitted)
    );
    // Another refusal is kept.
    let job = refused(
        store
            .admit(
                &with_id(4, "r-2"),
                refuse(Refusal::QuotaExhausted {
                    scene: "psi".into(),
                }),
            )
            .await
            .expect("refused"),
    );
    assert_eq!(job.request_id.as_deref(), Some("r-2"));
    assert_eq!(
        store
            .admit(&with_id(5, "r-2"), allow)
            .await
            .expect("replay"),
        AdmitOutcome::Replayed(job)
    );
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("rem"),
        Some(4)
    );
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{}", v.detail);
}

/// Issue 8 item 1: past the delivery milestone a job cannot be released.
#[tokio::test]
async fn a_delivered_job_cannot_end_released() {
    let (_dir, store) = open().await;
    seed_licence(&store, 2).await;
    assert!(matches!(
        store.admit(&new_job(1), allow).await.expect("admit"),
        AdmitOutcome::Admitted { .. }
    ));
    assert!(store.mark_delivered("job-1", 40, 15).await.expect("mark"));
    assert!(
        !store.mark_delivered("job-1", 41, 16).await.expect("again"),
        "once"
    );
    let j = store.job("job-1").await.expect("job");
    assert_eq!((j.delivered_at_ms, j.delivered_rows), (Some(15), Some(40)));
    for plain in [
        JobFinish::Failed {
            error: "worker lost".into(),
            buyer_fault: false,
            origin: None,
        },
        JobFinish::Cancelled {
            reason: "by u".into(),
        },
    ] {
        assert!(matches!(
            store.finish_job("job-1", &plain, 20).await,
            Err(StoreError::Delivered { .. })
        ));
    }
    let ended = JobFinish::EndedAfterDelivery {
        state: tessera_core::JobState::Failed,
        error: "worker lost".into(),
        origin: None,
        usage: vec![],
        ledger: vec![],
        bill_lines: vec![],
        charge_micros: 0,
    };
    let out = store.finish_job("job-1", &ended, 21).await.expect("end");
    assert_eq!(out.job.state, tessera_core::JobState::Failed);
    assert_eq!(out.job.count_state, tessera_core::CountState::Committed);
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("rem"),
        Some(1)
    );
    // An ended job is not marked delivered afterwards.
    assert!(matches!(
        store.admit(&new_job(2), allow).await.expect("admit"),
        AdmitOutcome::Admitted { .. }
    ));
    store
        .finish_job(
            "job-2",
            &JobFinish::Failed {
                error: "peer".into(),
                buyer_fault: false,
                origin: None,
            },
            30,
        )
        .await
        .expect("fail");
    assert!(!store.mark_delivered("job-2", 1, 31).await.expect("late"));
    assert!(store.verify_audit().await.expect("verify").ok());
}

/// Issue 8 item 2: a deposit near i64::MAX is refused; accounts at the maximum by several
/// customers leave the ledger readable and balanced.
#[tokio::test]
async fn huge_amounts_are_refused_and_the_ledger_stays_readable() {
    use tessera_accounting::ledger::{MAX_ACCOUNT_TOTAL_MICROS, MAX_AMOUNT_MICROS};
    let (_dir, store) = open().await;
    let deposit = |c: &str, key: &str, amount| {
        tessera_accounting::settle::deposit(
            c,
            tessera_accounting::settle::DepositInto::Cash,
            amount,
            key,
        )
    };
    let err = store
        .post_transfers(&[deposit("mallory", "k", i64::MAX - 1)], 1)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            StoreError::Ledger(LedgerError::AmountAboveMaximum {
                max_micros: MAX_AMOUNT_MICROS,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1000000000000000"), "{err}");
    for c in 0..20 {
        store
            .post_transfers(&[deposit(&format!("c{c}"), "k", MAX_AMOUNT_MICROS)], 2)
            .await
            .expect("at the limit");
    }
    // A full account takes no more.
    let err = store
        .post_transfers(&[deposit("c0", "k2", 1)], 3)
        .await
        .expect_err("full");
    assert!(
        matches!(
            err,
            StoreError::Ledger(LedgerError::BalanceAboveMaximum { .. })
        ),
        "{err}"
    );
    // The external account's debits reach the running-total maximum (10^18) after 1,000
    // full deposits: the batch that would pass it is refused whole, never overflowed.
    let batch: Vec<TransferSpec> = (0..=MAX_ACCOUNT_TOTAL_MICROS / MAX_AMOUNT_MICROS - 20)
        .map(|i| deposit(&format!("d{i}"), "k", MAX_AMOUNT_MICROS))
        .collect();
    let err = store
        .post_transfers(&batch, 3)
        .await
        .expect_err("past the running total");
    assert!(
        matches!(&err, StoreError::Ledger(LedgerError::AccountTotalAboveMaximum { account, .. }) if account == "external"),
        "{err}"
    );
    store
        .post_transfers(&batch[..batch.len() - 1], 3)
        .await
        .expect("up to the running total");
    assert_eq!(
        store.balance("external").await.expect("readable"),
        -MAX_ACCOUNT_TOTAL_MICROS
    );
    assert!(store.ledger_balanced().await.expect("readable"));
    store
        .post_transfers(&batch[batch.len() - 1..], 3)
        .await
        .expect_err("still refused");
    let balances = store.balances().await.expect("readable");
    assert_eq!(balances.len(), 1 + 20 + 1_000 - 20);
    assert!(store.ledger_balanced().await.expect("readable"));
    // Vouchers come from another account and still work.
    store
        .post_transfers(
            &[tessera_accounting::settle::deposit(
                "alice",
                tessera_accounting::settle::DepositInto::RechargeVoucher,
                5,
                "k",
            )],
            4,
        )
        .await
        .expect("voucher");
    assert!(store.ledger_balanced().await.expect("readable"));
}

/// A second licence of the same shape (`lic2`, of provider `prov2`, `counts` runs).
async fn seed_second_licence(store: &Store, id: &str, counts: u64) {
    let policy = UsagePolicy::from_json(&format!(
        r#"{{"policyName":"p","relUsers":[{{"userId":"u","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"psi","counts":{counts}}}]}}"#
    ))
    .expect("policy");
    store
        .create_licence(
            &LicenceRecord {
                licence_id: id.into(),
                licensor: "prov2".into(),
                licensee: "u".into(),
                dataset_id: "ds".into(),
                policy,
                price: JobPrice {
                    per_job_micros: 100,
                    per_1k_rows_micros: 0,
                    operator_share_bps: 0,
                },
                monthly_price_micros: 0,
            },
            3,
        )
        .await
        .expect("licence");
}

/// A job under several licences (an `fl` job) reserves one count on each or on none, ends
/// them together (committed or released), shows its further licences and their providers, and
/// the audit chain re-derives every licence's counters.
#[tokio::test]
async fn a_job_under_several_licences_counts_each_once_or_none() {
    let (_dir, store) = open().await;
    seed_licence(&store, 5).await;
    seed_second_licence(&store, "lic2", 2).await;
    seed_second_licence(&store, "lic3", 1).await;
    let multi = |i: usize, co: &[&str]| NewJob {
        co_licences: co.iter().map(|c| c.to_string()).collect(),
        ..new_job(i)
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let AdmitOutcome::Admitted { job: j, .. } = store
        .admit(&multi(1, &["lic2", "lic3"]), move |ctx| {
            s2.lock().expect("lock").extend(
                ctx.co_licences
                    .iter()
                    .map(|c| (c.licence_id.clone(), c.licence.is_some())),
            );
            allow(ctx)
        })
        .await
        .expect("admit")
    else {
        panic!("not admitted")
    };
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![("lic2".to_string(), true), ("lic3".to_string(), true)]
    );
    assert_eq!(
        j.co_licences,
        vec![
            CoLicence {
                licence_id: "lic2".into(),
                provider_party: "prov2".into()
            },
            CoLicence {
                licence_id: "lic3".into(),
                provider_party: "prov2".into()
            }
        ]
    );
    let remaining = |id: &'static str| {
        let store = store.clone();
        async move { store.remaining_count(id, "psi").await.expect("remaining") }
    };
    assert_eq!(
        (
            remaining("lic").await,
            remaining("lic2").await,
            remaining("lic3").await
        ),
        (Some(4), Some(1), Some(0))
    );
    // lic3 is spent: a second job naming it is refused and reserves nothing anywhere.
    let out = store
        .admit(&multi(2, &["lic2", "lic3"]), allow)
        .await
        .expect("admit");
    let AdmitOutcome::Refused { refusals, job } = out else {
        panic!("admitted past lic3's count")
    };
    assert!(
        matches!(&refusals[..], [Refusal::QuotaExhausted { scene }] if scene.contains("lic3")),
        "{refusals:?}"
    );
    assert_eq!(job.count_state, tessera_core::CountState::None);
    assert_eq!(
        (
            remaining("lic").await,
            remaining("lic2").await,
            remaining("lic3").await
        ),
        (Some(4), Some(1), Some(0))
    );
    // A failure not the buyer's gives every count back; a success would commit them all.
    let fail = JobFinish::Failed {
        error: "aggregator lost".into(),
        buyer_fault: false,
        origin: None,
    };
    assert!(
        store
            .finish_job("job-1", &fail, 20)
            .await
            .expect("finish")
            .transitioned
    );
    assert_eq!(
        (
            remaining("lic").await,
            remaining("lic2").await,
            remaining("lic3").await
        ),
        (Some(5), Some(2), Some(1))
    );
    let AdmitOutcome::Admitted { .. } = store
        .admit(&multi(3, &["lic3"]), allow)
        .await
        .expect("admit")
    else {
        panic!("not admitted")
    };
    let cancel = JobFinish::Cancelled {
        reason: "by the buyer".into(),
    };
    assert!(
        store
            .finish_job("job-3", &cancel, 30)
            .await
            .expect("finish")
            .transitioned
    );
    assert_eq!(
        (remaining("lic").await, remaining("lic3").await),
        (Some(4), Some(0)),
        "a cancellation consumes every count"
    );
    // An unknown further licence reaches the decision as absent.
    let s3 = seen.clone();
    s3.lock().expect("lock").clear();
    let _ = store
        .admit(&multi(4, &["nope"]), move |ctx| {
            s3.lock().expect("lock").extend(
                ctx.co_licences
                    .iter()
                    .map(|c| (c.licence_id.clone(), c.licence.is_some())),
            );
            Ok::<_, StoreError>(Decision {
                allowed: false,
                reasons: vec![Refusal::LicenceNotFound {
                    licence_id: "nope".into(),
                }],
                ..allow(ctx)?
            })
        })
        .await
        .expect("admit");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![("nope".to_string(), false)]
    );
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{v:?}");
}
