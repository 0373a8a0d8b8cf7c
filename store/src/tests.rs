//! Store tests on a real SQLite file in a temporary directory.

use super::*;
use tessera_accounting::{JobPrice, TransferSpec, derive_id};
use tessera_policy::UsagePolicy;

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db/tessera.db"))
        .await
        .expect("open");
    (dir, store)
}

async fn seed_licence(store: &Store, counts: u64) {
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

fn new_job(i: usize) -> NewJob {
    NewJob {
        job_id: format!("job-{i}"),
        licence_id: "lic".into(),
        scene: "psi".into(),
        user: "u".into(),
        mode: tessera_core::PsiMode::Size,
        request: serde_json::json!({}),
        now_ms: 10,
    }
}

fn allow(_: &AdmitContext<'_>) -> Result<Decision, StoreError> {
    Ok(Decision {
        allowed: true,
        reasons: vec![],
        detail: serde_json::json!({}),
        tasks: vec![],
        holds: vec![],
        auto_frozen: None,
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
        if let AdmitOutcome::Admitted(_) = h.await.expect("join").expect("admit") {
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
        AdmitOutcome::Admitted(_)
    ));
    assert!(matches!(
        store.admit(&new_job(2), allow).await.expect("admit"),
        AdmitOutcome::Refused { .. }
    ));
    let fail = JobFinish::Failed {
        error: "worker lost".into(),
        buyer_fault: false,
    };
    let out = store.finish_job("job-1", &fail, 20).await.expect("finish");
    assert!(out.transitioned);
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
        AdmitOutcome::Admitted(_)
    ));
    let usage = vec![UsageEventRecord {
        event_id: derive_id(&["job-3", "prov", "rows_in", "1"]),
        job_id: "job-3".into(),
        party: "prov".into(),
        metric: "rows_in".into(),
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
    let deposit = TransferSpec {
        id: derive_id(&["dep", "u"]),
        debit: "external".into(),
        credit: "customer:u:cash".into(),
        amount_micros: 150,
        job_id: None,
        memo: "deposit".into(),
    };
    store.post_transfers(&[deposit], 35).await.expect("deposit");
    let ok = JobFinish::Succeeded {
        result_size: 7,
        result_location: "out.csv".into(),
        usage: usage.clone(),
        ledger: vec![LedgerOp::Post(charge.clone())],
        bill_line: None,
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
    store
        .record_usage(&usage, 42)
        .await
        .expect("duplicate usage is accepted once");
    assert_eq!(store.usage_events().await.expect("usage").len(), 1);
    let mut changed = usage[0].clone();
    changed.quantity = 999;
    assert!(matches!(
        store.record_usage(&[changed], 43).await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
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
    let mut different = charge;
    different.amount_micros = 101;
    assert!(matches!(
        store.post_transfers(&[different], 51).await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
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
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("raw");
    // An attacker with the file first drops the append-only triggers.
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&pool)
        .await
        .expect("drop trigger");
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&pool)
        .await
        .expect("drop trigger");
    sqlx::query("UPDATE audit_log SET detail_json = '{}' WHERE seq = 3")
        .execute(&pool)
        .await
        .expect("tamper");
    pool.close().await;
    let store = Store::open(&path).await.expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!(v.first_broken_seq, Some(3));
    assert!(v.detail.contains("altered"));

    // Deleting an entry is found too.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("raw");
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&pool)
        .await
        .expect("tamper");
    pool.close().await;
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
            })
        })
        .await
        .expect("admit");
    assert!(matches!(out, AdmitOutcome::Refused { .. }));
}
