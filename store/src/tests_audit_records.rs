//! Tamper tests of the records re-derived from the audit chain, on a real SQLite file: a
//! store that ran admissions, a dispatch, a delivery, a success with its charge and bill line,
//! a release, a refusal and a bill's close verifies; each consistent edit an attacker with the
//! file could make (a licence counter, a job's state, charge or delivery, a bill line's amounts,
//! a deleted or slipped-in line, a reopened bill) is named with its table, row and field.

use super::*;
use crate::audit::{AuditProblem, AuditVerification, RecordTable, RecordsChecked};
use tessera_accounting::{JobPrice, TransferSpec, derive_id};
use tessera_core::checkpoint::SignedHead;
use tessera_core::ticket::TicketSigner;
use tessera_policy::UsagePolicy;

/// 2026-11-10T00:00:00Z: the month the jobs run in.
const NOV_MS: i64 = 1_794_268_800_000;
/// 2026-12-10T00:00:00Z: November's bills are due to close.
const DEC_MS: i64 = 1_796_860_800_000;

async fn open() -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tessera.db");
    let store = Store::open(&path).await.expect("open");
    (dir, path, store)
}

fn spec(id: &str, debit: &str, credit: &str, amount_micros: i64, job: &str) -> TransferSpec {
    TransferSpec {
        id: derive_id(&[id]),
        debit: debit.into(),
        credit: credit.into(),
        amount_micros,
        job_id: Some(job.into()),
        memo: id.into(),
    }
}

fn new_job(id: &str, now_ms: i64) -> NewJob {
    NewJob {
        job_id: id.into(),
        licence_id: "lic".into(),
        scene: "psi".into(),
        user: "u".into(),
        mode: tessera_core::PsiMode::Intersection,
        protocol: tessera_core::PsiProtocol::Rr22,
        request: serde_json::json!({ "job": id }),
        request_id: Some(format!("req-{id}")),
        buyer_party: "buy".into(),
        provider_party: "prov".into(),
        output: format!("{id}.csv"),
        co_licences: vec![],
        now_ms,
    }
}

fn decision(allowed: bool, holds: Vec<TransferSpec>) -> Decision {
    Decision {
        allowed,
        reasons: if allowed {
            vec![]
        } else {
            vec![Refusal::QuotaExhausted {
                scene: "psi".into(),
            }]
        },
        detail: serde_json::json!({}),
        tasks: vec![],
        holds,
        auto_frozen: None,
        mpc_triples: None,
    }
}

fn bill_line(id: &str, job: Option<&str>, event_ms: i64, paid: i64) -> NewBillLine {
    NewBillLine {
        line_id: id.into(),
        customer: "u".into(),
        job_id: job.map(Into::into),
        kind: BillLineKind::Usage,
        product: "psi".into(),
        provider: "prov".into(),
        event_time_ms: event_ms,
        service_start_ms: event_ms,
        service_end_ms: event_ms,
        amounts: Amounts {
            original: paid,
            cash: paid,
            ..Amounts::default()
        },
        split: Split {
            provider_micros: paid - paid / 10,
            operator_micros: paid / 10,
        },
        note: String::new(),
    }
}

async fn seed(store: &Store) {
    store
        .create_dataset(
            &DatasetRecord {
                dataset_id: "ds".into(),
                owner_party: "prov".into(),
                location: "p.csv".into(),
                description: String::new(),
                declared_rows: Some(1_000),
            },
            NOV_MS,
        )
        .await
        .expect("dataset");
    let policy = UsagePolicy::from_json(
        r#"{"policyName":"p","relUsers":[{"userId":"u","userName":"U","isGroup":0}],
            "useScenes":[{"useSence":"psi","counts":5}]}"#,
    )
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
                    per_job_micros: 300,
                    per_1k_rows_micros: 0,
                    operator_share_bps: 1_000,
                },
                monthly_price_micros: 0,
            },
            NOV_MS + 1,
        )
        .await
        .expect("licence");
    store
        .post_transfers(
            &[TransferSpec {
                job_id: None,
                ..spec("dep", "external", "customer:u:cash", 10_000, "")
            }],
            NOV_MS + 2,
        )
        .await
        .expect("deposit");
}

/// job-1 succeeds past its delivery point (charged 300, a bill line), job-2 fails on the
/// provider's side (count released), job-3 is refused; a manual line is added, and
/// November's bill closes in December.
async fn flow(store: &Store) {
    seed(store).await;
    let (cash, holds) = ("customer:u:cash", "customer:u:holds");
    let hold = spec("hold-1", cash, holds, 500, "job-1");
    let admitted = store
        .admit(&new_job("job-1", NOV_MS + 10), {
            let hold = hold.clone();
            move |_| Ok::<_, StoreError>(decision(true, vec![hold]))
        })
        .await
        .expect("admit");
    assert!(matches!(admitted, AdmitOutcome::Admitted { .. }));
    assert!(
        store
            .mark_delivered("job-1", 1_000, NOV_MS + 12)
            .await
            .expect("deliver")
    );
    let ok = JobFinish::Succeeded {
        result_size: 7,
        result_location: "job-1.csv".into(),
        result_file: Some(ResultFileRecord {
            name: "job-1.csv".into(),
            bytes: 321,
            rows: 7,
            sha256_hex: "ab".repeat(32),
        }),
        provider_result_file: Some(ResultFileRecord {
            name: "psi-job-1.csv".into(),
            bytes: 123,
            rows: 8,
            sha256_hex: "cd".repeat(32),
        }),
        empty_keys: EmptyKeyCounts {
            buyer: Some(2),
            provider: Some(0),
        },
        usage: vec![],
        ledger: vec![
            LedgerOp::PostPending {
                id: derive_id(&["post-1"]),
                pending_id: hold.id.clone(),
                amount_micros: 300,
            },
            LedgerOp::Post(spec(
                "charge-1",
                holds,
                "provider:prov:receivable",
                300,
                "job-1",
            )),
        ],
        bill_lines: vec![bill_line("line-1", Some("job-1"), NOV_MS + 13, 300)],
        charge_micros: 300,
    };
    assert!(
        store
            .finish_job("job-1", &ok, NOV_MS + 13)
            .await
            .expect("finish")
            .transitioned
    );

    store
        .admit(&new_job("job-2", NOV_MS + 20), |_| {
            Ok::<_, StoreError>(decision(true, vec![]))
        })
        .await
        .expect("admit");
    let failed = JobFinish::Failed {
        error: "worker lost: w-7".into(),
        buyer_fault: false,
        origin: Some(FailureOrigin {
            role: tessera_core::TaskRole::Sender,
            party: "prov".into(),
            kind: "worker_lost".into(),
        }),
    };
    store
        .finish_job("job-2", &failed, NOV_MS + 21)
        .await
        .expect("finish");
    store
        .admit(&new_job("job-3", NOV_MS + 30), |_| {
            Ok::<_, StoreError>(decision(false, vec![]))
        })
        .await
        .expect("refuse");
    store
        .add_bill_line(&bill_line("line-2", None, NOV_MS + 40, 50), NOV_MS + 40)
        .await
        .expect("line");
    assert_eq!(
        store.close_due_bills(DEC_MS).await.expect("close"),
        vec!["2026-11:u".to_string()]
    );
}

/// The sequence number of the entry of `kind` about `subject`.
async fn seq_of(store: &Store, kind: &str, subject: &str) -> i64 {
    store
        .audit_entries()
        .await
        .expect("entries")
        .iter()
        .find(|e| e.kind == kind && e.subject == subject)
        .unwrap_or_else(|| panic!("no {kind} entry about {subject}"))
        .seq
}

/// Runs the flow on a new store, applies `sql` with a raw connection (the triggers that
/// guard bills dropped first, as an attacker with the file would), and verifies.
async fn tampered(sql: &[&str]) -> (Store, AuditVerification, tempfile::TempDir) {
    let (dir, path, store) = open().await;
    flow(&store).await;
    store.close().await;
    let raw = rusqlite::Connection::open(&path).expect("raw");
    for t in [
        "bill_lines_no_update",
        "bill_lines_no_delete",
        "bills_closed_never_change",
    ] {
        raw.execute(&format!("DROP TRIGGER {t}"), [])
            .expect("drop trigger");
    }
    for s in sql {
        raw.execute(s, []).expect(s);
    }
    drop(raw);
    let store = Store::open(&path).await.expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    (store, v, dir)
}

fn texts(v: &AuditVerification) -> Vec<String> {
    v.problems.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn a_store_after_a_full_flow_re_derives_from_its_chain() {
    let (_dir, _path, store) = open().await;
    flow(&store).await;
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{:?}", texts(&v));
    assert_eq!(
        v.records,
        RecordsChecked {
            licence_scenes: 1,
            jobs: 3,
            bills: 1,
            bill_lines: 2,
            accounts: 0,
            partly_checked: 0,
        }
    );
    assert!(
        v.detail.contains(
            "1 licence scene counters, 3 jobs, 1 bills, 2 bill lines and 0 account rows verified"
        ),
        "{}",
        v.detail
    );
    assert!(
        v.summary().starts_with("audit chain OK: "),
        "{}",
        v.summary()
    );
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("n"),
        Some(4)
    );
}

#[tokio::test]
async fn an_edited_licence_counter_is_named() {
    // As if job-1 had never consumed its count.
    let (store, v, _dir) = tampered(&[
        "UPDATE licence_scenes SET remaining = remaining + 1, used = used - 1 WHERE licence_id = 'lic'",
    ])
    .await;
    let last = seq_of(&store, "complete", "job-2").await;
    assert_eq!(
        texts(&v),
        vec![
            format!(
                "licence lic scene psi: remaining_counts is 5, the chain gives 4 (entry {last})"
            ),
            format!("licence lic scene psi: used_counts is 0, the chain gives 1 (entry {last})"),
        ]
    );
    assert_eq!(v.first_broken_seq, None, "the chain itself is intact");
    assert!(v.chain_ok());
    assert_eq!(
        v.summary(),
        format!(
            "audit chain intact ({} entries), but the stored tables differ from it: 2 problem(s)",
            v.entries
        )
    );
}

#[tokio::test]
async fn an_edited_job_state_charge_and_delivery_are_named() {
    let (store, v, _dir) = tampered(&[
        "UPDATE jobs SET state = 'failed', charge_micros = 0, delivered_at_ms = NULL WHERE job_id = 'job-1'",
    ])
    .await;
    let delivered = seq_of(&store, "deliver", "job-1").await;
    let ended = seq_of(&store, "complete", "job-1").await;
    assert_eq!(
        texts(&v),
        vec![
            format!("job job-1: state is 'failed', the chain gives 'succeeded' (entry {ended})"),
            format!(
                "job job-1: delivered_at_ms is NULL, the chain gives {} (entry {delivered})",
                NOV_MS + 12
            ),
            format!("job job-1: charge_micros is 0, the chain gives 300 (entry {ended})"),
        ]
    );
    assert_eq!(
        v.problems[0],
        AuditProblem::RecordField {
            table: RecordTable::Jobs,
            row: "job job-1".into(),
            field: "state".into(),
            stored: "'failed'".into(),
            chain: "'succeeded'".into(),
            seq: u64::try_from(ended).expect("seq"),
        }
    );

    // A result rewritten (another digest) and a refusal turned into an admission.
    let (store, v, _dir) = tampered(&[
        "UPDATE jobs SET result_sha256 = 'cd' WHERE job_id = 'job-1'",
        "UPDATE jobs SET provider_result_rows = 80 WHERE job_id = 'job-1'",
        "UPDATE jobs SET state = 'admitted', count_state = 'reserved', finished_at_ms = NULL WHERE job_id = 'job-3'",
    ])
    .await;
    let (ended, refused) = (
        seq_of(&store, "complete", "job-1").await,
        seq_of(&store, "refuse", "job-3").await,
    );
    assert_eq!(
        texts(&v),
        vec![
            format!(
                "job job-1: result_sha256 is 'cd', the chain gives '{}' (entry {ended})",
                "ab".repeat(32)
            ),
            format!("job job-1: provider_result_rows is 80, the chain gives 8 (entry {ended})"),
            format!("job job-3: state is 'admitted', the chain gives 'refused' (entry {refused})"),
            format!(
                "job job-3: count_state is 'reserved', the chain gives 'none' (entry {refused})"
            ),
            format!(
                "job job-3: finished_at_ms is NULL, the chain gives {} (entry {refused})",
                NOV_MS + 30
            ),
        ]
    );
}

#[tokio::test]
async fn edited_deleted_and_slipped_in_bill_lines_and_a_reopened_bill_are_named() {
    // line-1's amounts lowered consistently (the table's CHECKs still hold).
    let (store, v, _dir) = tampered(&[
        "UPDATE bill_lines SET original_micros = 100, cash_micros = 100, provider_micros = 90, \
         operator_micros = 10 WHERE line_id = 'line-1'",
    ])
    .await;
    let l1 = seq_of(&store, "bill_line", "line-1").await;
    assert_eq!(
        texts(&v),
        [
            ("original_micros", 100, 300),
            ("cash_micros", 100, 300),
            ("provider_micros", 90, 270),
            ("operator_micros", 10, 30),
        ]
        .iter()
        .map(|(f, t, c)| format!("bill line line-1: {f} is {t}, the chain gives {c} (entry {l1})"))
        .collect::<Vec<_>>()
    );

    // line-2 deleted, the closed bill reopened and a line slipped into it.
    let (store, v, _dir) = tampered(&[
        "DELETE FROM bill_lines WHERE line_id = 'line-2'",
        "UPDATE bills SET state = 'open', closed_at_ms = NULL WHERE bill_id = '2026-11:u'",
        "INSERT INTO bill_lines (line_id, bill_id, customer, kind, product, event_time_ms, \
         arrival_time_ms, service_start_ms, service_end_ms, original_micros, cash_micros, \
         provider_micros) VALUES ('gift', '2026-11:u', 'u', 'refund', 'psi', 1, 1, 1, 1, -7, -7, -7)",
    ])
    .await;
    let (l2, closed) = (
        seq_of(&store, "bill_line", "line-2").await,
        seq_of(&store, "bill_close", "2026-11:u").await,
    );
    assert_eq!(
        texts(&v),
        vec![
            format!("bill 2026-11:u: state is 'open', the chain gives 'closed' (entry {closed})"),
            format!(
                "bill 2026-11:u: closed_at_ms is NULL, the chain gives {DEC_MS} (entry {closed})"
            ),
            "bill line gift is in the bill_lines table, but no audit entry records it".to_string(),
            format!(
                "bill line line-2, recorded by entry {l2}, is missing from the bill_lines table"
            ),
        ]
    );
    assert!(
        v.summary().starts_with("audit chain intact ("),
        "{}",
        v.summary()
    );
}

#[tokio::test]
async fn rows_of_older_entries_are_checked_in_the_fields_they_record() {
    let (_dir, _path, store) = open().await;
    seed(&store).await;
    // A refusal recorded the way the store wrote it before the job's mode, parties and
    // result name were in the entry (no row written by the current code).
    store
        .audit(
            NOV_MS + 5,
            "refuse",
            "job-old",
            &serde_json::json!({
                "licence_id": "lic", "scene": "psi", "user": "u", "request_id": null,
                "reasons": ["quota exhausted"], "detail": {}, "holds": [], "tasks": [],
            }),
        )
        .await
        .expect("entry");
    store
        .write(|conn| {
            conn.execute(
                "INSERT INTO jobs (job_id, licence_id, scene, user_id, mode, state, count_state, request_json, \
                 reasons_json, created_at_ms, updated_at_ms, finished_at_ms, buyer_party, provider_party) \
                 VALUES ('job-old', 'lic', 'psi', 'u', 'size', 'refused', 'none', '{}', '[\"quota exhausted\"]', \
                 ?1, ?1, ?1, 'buy', 'prov')",
                [NOV_MS + 5],
            )?;
            Ok(())
        })
        .await
        .expect("old row");
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{:?}", texts(&v));
    assert_eq!((v.records.jobs, v.records.partly_checked), (1, 1));
    assert!(
        v.detail
            .contains("1 rows were checked only in the fields their (older) entries record"),
        "{}",
        v.detail
    );
    // What the older entry does record is still checked.
    store
        .write(|conn| {
            conn.execute(
                "UPDATE jobs SET state = 'succeeded' WHERE job_id = 'job-old'",
                [],
            )?;
            Ok(())
        })
        .await
        .expect("edit");
    let v = store.verify_audit().await.expect("verify");
    let refused = seq_of(&store, "refuse", "job-old").await;
    assert_eq!(
        texts(&v),
        vec![format!(
            "job job-old: state is 'succeeded', the chain gives 'refused' (entry {refused})"
        )]
    );
}

#[tokio::test]
async fn one_signed_head_given_twice_is_one_finding() {
    let (_dir, path, store) = open().await;
    seed(&store).await;
    let signer = TicketSigner::from_seed(&[7u8; 32]);
    let head = store.audit_head().await.expect("head").expect("entries");
    let signed: SignedHead = signer.sign_head(head.seq, &head.hash, 9).expect("sign");
    store.close().await;
    let raw = rusqlite::Connection::open(&path).expect("raw");
    for sql in [
        "DROP TRIGGER audit_log_no_delete",
        "DELETE FROM audit_log WHERE seq > 1",
    ] {
        raw.execute(sql, []).expect(sql);
    }
    drop(raw);
    let store = Store::open(&path).await.expect("reopen");
    // An export file holds the head signed at export and, again, in its list.
    let file = "export.json".to_string();
    let v = store
        .verify_audit_with(None, &[(file.clone(), signed.clone()), (file, signed)])
        .await
        .expect("verify");
    let truncated: Vec<&AuditProblem> = v
        .problems
        .iter()
        .filter(|p| matches!(p, AuditProblem::Truncated { .. }))
        .collect();
    assert_eq!(truncated.len(), 1, "{:?}", texts(&v));
    assert_eq!(v.first_broken_seq, Some(2));
    assert!(
        v.summary().starts_with("audit chain BROKEN at entry 2: "),
        "{}",
        v.summary()
    );
}

/// Users, memberships, parties, tokens and worker credentials re-derive from their entries;
/// a row changed behind the store's back is named with both values.
#[tokio::test]
async fn the_account_tables_re_derive_and_an_edit_is_named() {
    use tessera_auth::{Role, Roles, Token, TokenKind};
    let (dir, path, store) = open().await;
    store
        .create_user("ann", Roles::of(&[Role::Buyer]), 10, "test")
        .await
        .expect("user");
    store
        .create_user("bob", Roles::of(&[Role::Provider]), 11, "test")
        .await
        .expect("user");
    store
        .add_group_member("team", "ann", 12, "test")
        .await
        .expect("group");
    store
        .add_group_member("gone", "bob", 12, "test")
        .await
        .expect("group");
    store
        .remove_group_member("gone", "bob", 13, "test")
        .await
        .expect("ungroup");
    store
        .create_party("pa", "ann", 14, "test")
        .await
        .expect("party");
    let t = Token::generate(TokenKind::Api, &mut rand_core::OsRng);
    let rec = crate::TokenRecord {
        token_id: t.id().to_owned(),
        kind: TokenKind::Api,
        user_id: Some("ann".into()),
        party_id: None,
        secret_sha256: t.secret_hash().to_vec(),
        label: "it's".into(),
        created_at_ms: 15,
        expires_at_ms: 1_000,
        revoked_at_ms: None,
    };
    store.create_token(&rec, "test").await.expect("token");
    store
        .revoke_token(t.id(), 16, "test")
        .await
        .expect("revoke");
    store.revoke_token(t.id(), 17, "test").await.expect("again");
    store
        .disable_user("bob", 18, "test")
        .await
        .expect("disable");
    let w = Token::generate(TokenKind::Worker, &mut rand_core::OsRng);
    let cred = crate::WorkerCredentialRecord {
        token_id: w.id().to_owned(),
        worker_id: "w-1".into(),
        party: "pa".into(),
        secret_sha256: w.secret_hash().to_vec(),
        issued_at_ms: 19,
        revoked_at_ms: None,
    };
    store
        .upsert_worker(
            &crate::WorkerRecord {
                worker_id: "w-1".into(),
                attributes: tessera_core::WorkerAttributes {
                    party: "pa".into(),
                    ..Default::default()
                },
                peer_addr: "127.0.0.1:1".into(),
                last_seen_ms: 19,
            },
            19,
            Some(&cred),
            "test",
        )
        .await
        .expect("worker");
    let v = store.verify_audit().await.expect("verify");
    assert!(v.ok(), "{:?}", texts(&v));
    // ann, bob; ann in team; pa; the token; the worker credential.
    assert_eq!(v.records.accounts, 6, "{:?}", v.records);

    // Behind the store's back: a role granted, a revocation undone, a membership added.
    store.close().await;
    let raw = rusqlite::Connection::open(&path).expect("raw");
    for sql in [
        "UPDATE users SET roles = 'buyer,operator' WHERE user_id = 'ann'",
        "UPDATE tokens SET revoked_at_ms = NULL",
        "INSERT INTO group_members (group_id, user_id, added_at_ms) VALUES ('admins', 'bob', 20)",
    ] {
        raw.execute(sql, []).expect(sql);
    }
    drop(raw);
    let store = Store::open(&path).await.expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    let found = texts(&v).join("\n");
    assert!(!v.ok());
    for needle in [
        "user ann",
        "'buyer,operator'",
        "revoked_at_ms",
        "group admins member bob",
    ] {
        assert!(found.contains(needle), "{needle}: {found}");
    }
    drop(dir);
}
