//! Tamper tests of the audit chain on a real SQLite file: the three attacks of issue 8 item 11
//! (delete the last entries; edit an entry and recompute every hash; edit the ledger tables
//! consistently), each done the way an attacker with the database file would (dropping the
//! append-only triggers first), and each named by `verify`.

use super::*;
use crate::audit::{AuditProblem, STORE_CHECKPOINTS, entry_hash};
use tessera_accounting::{TransferSpec, derive_id};
use tessera_core::checkpoint::{NodeKey, SignedHead};
use tessera_core::ticket::TicketSigner;

fn node() -> TicketSigner {
    TicketSigner::from_seed(&[7u8; 32])
}

fn node_key() -> NodeKey {
    NodeKey::from_hex(&node().public_key_hex()).expect("key")
}

async fn open() -> (tempfile::TempDir, std::path::PathBuf, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tessera.db");
    let store = Store::open(&path).await.expect("open");
    (dir, path, store)
}

fn spec(id: &str, debit: &str, credit: &str, amount_micros: i64) -> TransferSpec {
    TransferSpec {
        id: derive_id(&[id]),
        debit: debit.into(),
        credit: credit.into(),
        amount_micros,
        job_id: Some("job-1".into()),
        memo: id.into(),
    }
}

/// A deposit, a hold that is posted in part, a hold that is voided, and a plain charge.
async fn money(store: &Store) {
    let cash = "customer:a:cash";
    let holds = "customer:a:holds";
    store
        .post_transfers(&[spec("dep", "external", cash, 1_000)], 10)
        .await
        .expect("deposit");
    store
        .apply_ledger(
            &[
                LedgerOp::Hold(spec("h1", cash, holds, 300)),
                LedgerOp::Hold(spec("h2", cash, holds, 200)),
            ],
            11,
        )
        .await
        .expect("holds");
    store
        .apply_ledger(
            &[
                LedgerOp::PostPending {
                    id: derive_id(&["p1"]),
                    pending_id: derive_id(&["h1"]),
                    amount_micros: 120,
                },
                LedgerOp::VoidPending {
                    id: derive_id(&["v2"]),
                    pending_id: derive_id(&["h2"]),
                },
                LedgerOp::Post(spec("rev", holds, "operator:revenue", 120)),
            ],
            12,
        )
        .await
        .expect("settle");
}

/// Signs the chain's current head with `signer` and records it.
async fn seal(store: &Store, signer: &TicketSigner, at_ms: i64) -> SignedHead {
    let head = store.audit_head().await.expect("head").expect("entries");
    let c = signer.sign_head(head.seq, &head.hash, at_ms).expect("sign");
    store.record_checkpoint(&c).await.expect("record");
    c
}

/// A raw connection to the file, as an attacker has it, with the append-only triggers gone.
fn attacker(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("raw");
    for t in [
        "audit_log_no_update",
        "audit_log_no_delete",
        "audit_checkpoints_no_update",
        "audit_checkpoints_no_delete",
    ] {
        conn.execute(&format!("DROP TRIGGER {t}"), [])
            .expect("drop trigger");
    }
    conn
}

fn exec(conn: &rusqlite::Connection, sql: &str) {
    conn.execute(sql, []).expect(sql);
}

#[tokio::test]
async fn an_untampered_store_verifies_with_its_signed_checkpoints_and_ledger() {
    let (_dir, _path, store) = open().await;
    money(&store).await;
    let first = seal(&store, &node(), 20).await;
    store
        .audit(21, "note", "n", &serde_json::json!({}))
        .await
        .expect("note");
    seal(&store, &node(), 22).await;
    let v = store
        .verify_audit_with(Some(&node_key()), &[("receipt".into(), first)])
        .await
        .expect("verify");
    assert!(v.ok(), "{v:?}");
    // The receipt is the first stored checkpoint itself: two distinct signed heads.
    assert_eq!((v.entries, v.checkpoints, v.transfers), (7, 2, 6));
    assert!(v.signatures_checked);
    assert_eq!(v.unsealed_entries, 0);
    assert!(store.ledger_balanced().await.expect("balanced"));
}

#[tokio::test]
async fn the_audit_tables_are_append_only() {
    let (_dir, path, store) = open().await;
    money(&store).await;
    let c = seal(&store, &node(), 20).await;
    store.close().await;
    let conn = rusqlite::Connection::open(&path).expect("raw");
    for sql in [
        "UPDATE audit_log SET detail_json = '{}' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 6",
        "UPDATE audit_checkpoints SET at_ms = 0",
        "DELETE FROM audit_checkpoints",
    ] {
        let e = conn.execute(sql, []).expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    // An insert must extend the chain: a wrong number or a wrong link is refused.
    let e = conn
        .execute(
            "INSERT INTO audit_log (seq, at_ms, kind, subject, detail_json, prev_hash, hash) \
             VALUES (9, 0, 'x', 'x', '{}', ?, 'h')",
            [&c.head_hash],
        )
        .expect_err("gap");
    assert!(e.to_string().contains("extend the chain"), "{e}");
    let e = conn
        .execute(
            "INSERT INTO audit_log (seq, at_ms, kind, subject, detail_json, prev_hash, hash) \
             VALUES (7, 0, 'x', 'x', '{}', 'not the head', 'h')",
            [],
        )
        .expect_err("link");
    assert!(e.to_string().contains("extend the chain"), "{e}");
    // A checkpoint of a head the chain does not have is refused.
    let e = conn
        .execute(
            "INSERT INTO audit_checkpoints (seq, head_hash, at_ms, signature_hex) VALUES (3, 'ab', 0, '')",
            [],
        )
        .expect_err("foreign head");
    assert!(e.to_string().contains("must name an entry"), "{e}");
    drop(conn);
}

#[tokio::test]
async fn deleting_the_last_entries_is_named_as_truncation() {
    let (_dir, path, store) = open().await;
    money(&store).await;
    for i in 0..3 {
        store
            .audit(30 + i, "note", "n", &serde_json::json!({ "i": i }))
            .await
            .expect("note");
    }
    let head = seal(&store, &node(), 40).await;
    assert_eq!(head.seq, 9);
    // The auditor keeps a copy of the signed head outside the database.
    let outside = vec![("export.json".to_string(), head)];
    store.close().await;

    let raw = attacker(&path);
    exec(&raw, "DELETE FROM audit_log WHERE seq > 7");
    let store = Store::open(&path).await.expect("reopen");
    let v = store
        .verify_audit_with(Some(&node_key()), &outside)
        .await
        .expect("verify");
    assert!(!v.ok());
    assert_eq!(v.first_broken_seq, Some(8));
    assert_eq!(
        v.problems,
        vec![
            AuditProblem::Truncated {
                signed_seq: 9,
                chain_len: 7,
                origin: STORE_CHECKPOINTS.into()
            },
            AuditProblem::Truncated {
                signed_seq: 9,
                chain_len: 7,
                origin: "export.json".into()
            },
        ]
    );
    assert!(v.detail.contains("truncated"), "{}", v.detail);

    // The attacker also deletes the stored checkpoint: the store alone can no longer tell,
    // the outside copy still does.
    exec(&raw, "DELETE FROM audit_checkpoints");
    drop(raw);
    assert!(store.verify_audit().await.expect("verify").ok());
    let v = store
        .verify_audit_with(Some(&node_key()), &outside)
        .await
        .expect("verify");
    assert_eq!(
        v.problems,
        vec![AuditProblem::Truncated {
            signed_seq: 9,
            chain_len: 7,
            origin: "export.json".into()
        }]
    );
}

/// Replaces entry `seq`'s detail and recomputes the hashes of it and every later entry.
async fn rewrite(conn: &rusqlite::Connection, store: &Store, seq: i64, detail: &str) {
    let entries = store.audit_entries().await.expect("entries");
    let mut prev = audit::GENESIS_HASH.to_string();
    for e in entries {
        let d = if e.seq == seq {
            detail.to_string()
        } else {
            e.detail_json.clone()
        };
        let h = entry_hash(&prev, e.seq, e.at_ms, &e.kind, &e.subject, &d);
        conn.execute(
            "UPDATE audit_log SET detail_json = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            rusqlite::params![&d, &prev, &h, e.seq],
        )
        .expect("rewrite");
        prev = h;
    }
}

#[tokio::test]
async fn an_edited_entry_with_every_hash_recomputed_is_named_as_rewritten() {
    let (_dir, path, store) = open().await;
    store
        .audit(
            1,
            "note",
            "job-9",
            &serde_json::json!({"reasons": ["quota"]}),
        )
        .await
        .expect("entry");
    money(&store).await;
    let head = seal(&store, &node(), 20).await;
    let outside = vec![("receipt of job-1".to_string(), head.clone())];

    let raw = attacker(&path);
    rewrite(&raw, &store, 1, r#"{"reasons":[]}"#).await;
    // The chain links again: without checkpoints the rewrite would pass.
    assert_eq!(
        audit::verify_entries(&store.audit_entries().await.expect("entries")),
        None,
        "the rewrite recomputed every hash"
    );
    let v = store
        .verify_audit_with(Some(&node_key()), &outside)
        .await
        .expect("verify");
    assert_eq!(v.first_broken_seq, Some(7));
    assert_eq!(v.problems.len(), 2, "{v:?}");
    for (p, origin) in v
        .problems
        .iter()
        .zip([STORE_CHECKPOINTS, "receipt of job-1"])
    {
        match p {
            AuditProblem::Rewritten {
                seq: 7,
                signed_hash,
                origin: o,
                ..
            } => {
                assert_eq!(signed_hash, &head.head_hash);
                assert_eq!(o, origin);
            }
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    // Re-signing the rewritten head with another key does not help: the signature is
    // refused under the node's key.
    exec(&raw, "DELETE FROM audit_checkpoints");
    let forger = TicketSigner::from_seed(&[9u8; 32]);
    let forged = seal(&store, &forger, 21).await;
    drop(raw);
    let v = store
        .verify_audit_with(Some(&node_key()), &[])
        .await
        .expect("verify");
    assert_eq!(
        v.problems,
        vec![AuditProblem::BadCheckpoint {
            seq: forged.seq,
            origin: STORE_CHECKPOINTS.into(),
            reason: format!(
                "checkpoint of entry 7 is not signed by the node's key {}",
                node().public_key_hex()
            ),
        }]
    );
}

#[tokio::test]
async fn consistent_edits_of_the_ledger_tables_are_named() {
    let (_dir, path, store) = open().await;
    money(&store).await;
    store.close().await;
    let raw = attacker(&path);
    // Raise the deposit from 1,000 to 5,000 and both accounts' totals with it: double entry
    // still holds, so `ledger_balanced` cannot see it.
    let dep = derive_id(&["dep"]);
    exec(
        &raw,
        &format!("UPDATE ledger_transfers SET amount_micros = 5000 WHERE transfer_id = '{dep}'"),
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET credits_micros = credits_micros + 4000 WHERE name = 'customer:a:cash'",
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET debits_micros = debits_micros + 4000 WHERE name = 'external'",
    );
    let store = Store::open(&path).await.expect("reopen");
    assert!(store.ledger_balanced().await.expect("balanced"));
    let v = store.verify_audit().await.expect("verify");
    assert!(!v.ok());
    assert_eq!(v.first_broken_seq, None, "the chain itself is intact");
    let texts: Vec<String> = v.problems.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(
        texts[0].contains(&format!(
            "transfer {dep} differs from entry 1: amount 5000 in the table, 1000 in the chain"
        )),
        "{texts:?}"
    );
    assert!(
        texts[1]
            .contains("account customer:a:cash: credits is 5000, the chain's transfers give 1000"),
        "{texts:?}"
    );
    assert!(texts[2].contains("account external"), "{texts:?}");

    // A transfer slipped into the tables (with consistent totals) is named too.
    exec(
        &raw,
        &format!("UPDATE ledger_transfers SET amount_micros = 1000 WHERE transfer_id = '{dep}'"),
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET credits_micros = credits_micros - 4000 WHERE name = 'customer:a:cash'",
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET debits_micros = debits_micros - 4000 WHERE name = 'external'",
    );
    assert!(store.verify_audit().await.expect("verify").ok());
    exec(
        &raw,
        "INSERT INTO ledger_transfers (transfer_id, debit_account, credit_account, amount_micros, \
         job_id, memo, created_at_ms, kind) VALUES ('gift', 'external', 'customer:a:cash', 7, NULL, '', 13, 'posted')",
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET credits_micros = credits_micros + 7 WHERE name = 'customer:a:cash'",
    );
    exec(
        &raw,
        "UPDATE ledger_accounts SET debits_micros = debits_micros + 7 WHERE name = 'external'",
    );
    drop(raw);
    assert!(store.ledger_balanced().await.expect("balanced"));
    let v = store.verify_audit().await.expect("verify");
    assert!(
        v.detail
            .contains("transfer gift is in the ledger table but no audit entry records it"),
        "{}",
        v.detail
    );
}

#[tokio::test]
async fn several_signed_heads_past_the_end_are_one_truncation_finding() {
    let (_dir, path, store) = open().await;
    money(&store).await;
    for i in 0..2 {
        store
            .audit(30 + i, "note", "n", &serde_json::json!({ "i": i }))
            .await
            .expect("note");
    }
    assert_eq!(seal(&store, &node(), 40).await.seq, 8);
    store
        .audit(41, "note", "n", &serde_json::json!({ "i": 2 }))
        .await
        .expect("note");
    assert_eq!(seal(&store, &node(), 42).await.seq, 9);
    store.close().await;

    let raw = attacker(&path);
    exec(&raw, "DELETE FROM audit_log WHERE seq > 7");
    drop(raw);
    let store = Store::open(&path).await.expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!(
        v.problems,
        vec![AuditProblem::Truncated {
            signed_seq: 9,
            chain_len: 7,
            origin: STORE_CHECKPOINTS.into()
        }],
        "the latest head past the end, once"
    );
}

/// The head an append guesses from the process's last append is only a guess: a transaction
/// that appended and rolled back, and another store of the same process appending in between,
/// both leave it wrong, and every later entry still extends the real chain.
#[tokio::test]
async fn appends_extend_the_real_head_after_a_rollback_and_another_stores_appends() {
    let (_d1, _p1, a) = open().await;
    let (_d2, _p2, b) = open().await;
    money(&a).await;
    // An entry appended and rolled back: the guess now names an entry `a` does not have.
    {
        let rolled_back = a
            .write(|conn| {
                let seq = audit::append(conn, 20, "test", "rolled-back", &serde_json::json!({}))
                    .expect("append");
                assert!(seq > 1);
                // An error from the write rolls back its savepoint: the entry is gone.
                Err::<(), _>(StoreError::Corrupt("roll back".into()))
            })
            .await;
        assert!(
            matches!(&rolled_back, Err(StoreError::Corrupt(r)) if r == "roll back"),
            "{rolled_back:?}"
        );
    }
    money(&b).await;
    store_deposit(&a, "after-rollback").await;
    store_deposit(&b, "after-a").await;
    store_deposit(&a, "after-b").await;
    for s in [&a, &b] {
        let v = s.verify_audit().await.expect("verify");
        assert!(v.ok(), "{v:?}");
    }
    let kinds = a.audit_entries().await.expect("entries");
    assert!(kinds.iter().all(|e| e.subject != "rolled-back"));
}

async fn store_deposit(store: &Store, memo: &str) {
    store
        .post_transfers(&[spec(memo, "external", "customer:a:cash", 5)], 30)
        .await
        .expect("deposit");
}
