//! The audit chain through the real operator and CLI: receipts carry heads signed with the
//! node's key, `tessera audit export` writes them for an auditor, and `tessera audit verify
//! --checkpoints` names a chain whose last entries were deleted behind the operator's back;
//! `tessera audit verify` re-derives licence counters, jobs and bill lines from the chain and
//! names each consistent edit of them (table, row, field).

use std::path::Path;
use std::process::{Command, Output};

use tessera_core::checkpoint::{NodeKey, SignedHead};
use tessera_core::ticket::TicketSigner;
use tessera_proto::v1 as pb;

use crate::harness::{BIN, Cluster, keys};

fn tessera(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tessera")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The node's public key, from the key file in its data directory.
fn node_key(data: &Path) -> NodeKey {
    let seed = hex::decode(
        std::fs::read_to_string(data.join("operator.key"))
            .expect("key file")
            .trim(),
    )
    .expect("hex");
    let seed: [u8; 32] = seed.try_into().expect("32 bytes");
    NodeKey::from_hex(&TicketSigner::from_seed(&seed).public_key_hex()).expect("key")
}

fn head(h: Option<pb::SignedHead>) -> SignedHead {
    let h = h.expect("the receipt carries a signed head");
    SignedHead {
        seq: h.seq,
        head_hash: h.head_hash,
        at_ms: h.at_ms,
        signature_hex: h.signature_hex,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_carry_signed_heads_and_verify_names_a_truncated_chain() {
    let mut c = Cluster::start(5_000);
    let data = c.dir.path().join("operator");
    let key = node_key(&data);

    // The depositor's receipt: a head covering the deposit, signed by the node.
    let deposit = c
        .client()
        .await
        .deposit(pb::DepositRequest {
            account: crate::harness::USER.into(),
            amount_micros: 1_000_000_000,
            idempotency_key: "fund".into(),
            into: String::new(),
        })
        .await
        .expect("deposit")
        .into_inner();
    let deposited = head(deposit.audit_head);
    key.verify(&deposited).expect("the deposit's head verifies");

    c.dataset(&c.provider, "p", "k", &keys("x", 0..50)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 25..75)).await;
    let lic = c.licence("p", None).await;
    let submitted = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let admitted = head(submitted.audit_head.clone());
    key.verify(&admitted)
        .expect("the admission's head verifies");
    assert!(admitted.seq > deposited.seq, "it covers the admission");
    let done = c.wait(&submitted.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{}", done.error);
    let ended = head(done.audit_head);
    key.verify(&ended).expect("the end's head verifies");
    assert!(ended.seq > admitted.seq, "it covers the job's end");

    // The auditor exports the checkpoints while the node runs; the chain verifies with them.
    let file = c.dir.path().join("checkpoints.json");
    let data_dir = data.to_str().expect("utf8");
    let file_arg = file.to_str().expect("utf8");
    let out = tessera(&["audit", "export", "--data-dir", data_dir, "--out", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("file")).expect("json");
    let exported_seq = exported["head"]["seq"].as_u64().expect("head");
    assert!(exported_seq >= ended.seq);
    // A second export never replaces the first (it may be the only proof of a truncation).
    let before = std::fs::read(&file).expect("file");
    let again = tessera(&["audit", "export", "--data-dir", data_dir, "--out", file_arg]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("never replaces a file"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read(&file).expect("file"), before);
    c.operator.kill();
    let out = tessera(&[
        "audit",
        "verify",
        "--data-dir",
        data_dir,
        "--checkpoints",
        file_arg,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("audit chain OK"), "{}", text(&out));

    // Checkpoints claimed for another key are refused, naming both keys.
    let other = TicketSigner::from_seed(&[1u8; 32]).public_key_hex();
    let out = tessera(&[
        "audit",
        "verify",
        "--data-dir",
        data_dir,
        "--checkpoints",
        file_arg,
        "--node-key",
        &other,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("not of the node's key {other}")),
        "{}",
        text(&out)
    );

    // An attacker with the database file deletes the last two entries and every checkpoint
    // the store kept, so the store alone holds no trace of them.
    let db = data.join("tessera.db");
    let pool = rusqlite::Connection::open(&db).expect("raw");
    for sql in [
        "DROP TRIGGER audit_log_no_delete",
        "DROP TRIGGER audit_checkpoints_no_delete",
        "DELETE FROM audit_checkpoints",
    ] {
        pool.execute_batch(sql).expect(sql);
    }
    let cut = i64::try_from(exported_seq).expect("seq") - 2;
    pool.execute("DELETE FROM audit_log WHERE seq > ?", [cut])
        .expect("truncate");
    drop(pool);

    let out = tessera(&[
        "audit",
        "verify",
        "--data-dir",
        data_dir,
        "--checkpoints",
        file_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "the chain was truncated: {file_arg} holds a head signed for entry {exported_seq}, \
             but the chain ends at entry {cut}"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("BROKEN at entry {}", cut + 1)),
        "{said}"
    );
    // The head signed at export is also in the file's list: one finding, printed once.
    assert_eq!(said.matches("the chain was truncated").count(), 1, "{said}");
}

/// Drops the append-only triggers, as an attacker with the file would.
fn attacker(db: &Path) -> rusqlite::Connection {
    let pool = rusqlite::Connection::open(db).expect("raw");
    for t in ["audit_log_no_update", "audit_log_no_delete"] {
        pool.execute_batch(&format!("DROP TRIGGER {t}"))
            .expect("drop trigger");
    }
    pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_rewritten_chain_and_a_consistent_ledger_edit() {
    let mut c = Cluster::start(5_000);
    let data = c.dir.path().join("operator");
    c.fund(1_000_000, "fund").await;
    c.fund(2_000_000, "fund-2").await;
    let file = c.dir.path().join("checkpoints.json");
    let (data_dir, file_arg) = (data.to_str().expect("utf8"), file.to_str().expect("utf8"));
    let out = tessera(&["audit", "export", "--data-dir", data_dir, "--out", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    c.operator.kill();
    let db = data.join("tessera.db");

    // A consistent edit of the ledger tables: the first deposit becomes 9,000,000 and both
    // accounts' totals follow, so double entry still holds.
    let pool = attacker(&db);
    let (id, amount): (String, i64) = pool
        .query_row(
            "SELECT transfer_id, amount_micros FROM ledger_transfers ORDER BY rowid LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("first transfer");
    assert_eq!(amount, 1_000_000);
    for sql in [
        "UPDATE ledger_transfers SET amount_micros = 9000000 WHERE transfer_id = ?",
        "UPDATE ledger_accounts SET credits_micros = credits_micros + 8000000 WHERE name = 'customer:u1:cash' AND ? != ''",
        "UPDATE ledger_accounts SET debits_micros = debits_micros + 8000000 WHERE name = 'external' AND ? != ''",
    ] {
        pool.execute(sql, [&id]).expect(sql);
    }
    let out = tessera(&["audit", "verify", "--data-dir", data_dir]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("transfer {id} differs from entry"))
            && text(&out).contains("amount 9000000 in the table, 1000000 in the chain"),
        "{}",
        text(&out)
    );

    // Now the attacker edits the chain's record of it too and recomputes every hash: the
    // chain links again and agrees with the ledger, but no longer with the signed head.
    let rows: Vec<(i64, i64, String, String, String)> = pool
        .prepare("SELECT seq, at_ms, kind, subject, detail_json FROM audit_log ORDER BY seq")
        .expect("entries")
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("entries")
        .collect::<Result<_, _>>()
        .expect("entries");
    let mut prev = tessera_store::audit::GENESIS_HASH.to_string();
    for (seq, at_ms, kind, subject, detail) in rows {
        let detail = if subject == id {
            detail.replace("\"amount_micros\":1000000", "\"amount_micros\":9000000")
        } else {
            detail
        };
        let hash = tessera_store::audit::entry_hash(&prev, seq, at_ms, &kind, &subject, &detail);
        pool.execute(
            "UPDATE audit_log SET detail_json = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            rusqlite::params![detail, prev, hash, seq],
        )
        .expect("rewrite");
        prev = hash;
    }
    drop(pool);
    let out = tessera(&[
        "audit",
        "verify",
        "--data-dir",
        data_dir,
        "--checkpoints",
        file_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(!said.contains("ledger tables differ"), "{said}");
    assert!(said.contains("the chain was rewritten: entry"), "{said}");
    assert!(
        said.contains(&format!("but {file_arg} holds the head signed for it")),
        "{said}"
    );

    // An operator started on the rewritten store says so at once (its own stored checkpoints
    // no longer match the chain), before it appends anything.
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().expect("stdout")),
        &mut banner,
    )
    .expect("banner");
    assert!(banner.starts_with("operator listening on "), "{banner}");
    let _ = serve.kill();
    let out = serve.wait_with_output().expect("serve output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("does NOT verify"), "{log}");
}

/// One value of the store, read raw.
fn scalar<T: rusqlite::types::FromSql>(pool: &rusqlite::Connection, sql: &str, arg: &str) -> T {
    pool.query_row(sql, [arg], |r| r.get(0)).expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_re_derives_counters_jobs_and_bill_lines_and_names_each_edit() {
    let mut c = Cluster::start(5_000);
    let data = c.dir.path().join("operator");
    let data_dir = data.to_str().expect("utf8").to_string();

    // A demo-like flow: a deposit, datasets, a licence, two jobs that succeed (each charged
    // with a bill line), one refused.
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..50)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 25..75)).await;
    let lic = c.licence("p", Some(5)).await;
    let mut jobs = Vec::new();
    for (mode, output) in [("size", ""), ("intersection", "both.csv")] {
        let j = c
            .client()
            .await
            .submit_job(Cluster::job(&lic, "b", mode, output))
            .await
            .expect("submit")
            .into_inner();
        let done = c.wait(&j.job_id).await;
        assert_eq!(done.state_text(), "succeeded", "{}", done.error);
        jobs.push(j.job_id);
    }
    let refused = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "nope", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused");
    c.operator.kill();

    let out = tessera(&["audit", "verify", "--data-dir", &data_dir]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("audit chain OK: ")
            && said.contains("1 licence scene counters, 3 jobs, ")
            // admin, pu, u1; prov, buy; five tokens; two worker credentials.
            && said.contains(" bills, 2 bill lines and 12 account rows verified"),
        "{said}"
    );

    // An attacker with the file edits, each consistently within its table: the licence's
    // counter (as if the second job had not counted), the first job's state and charge, the
    // first job's bill line (one micro less, its identities kept), and deletes the second
    // job's bill line.
    let pool = attacker(&data.join("tessera.db"));
    for t in ["bill_lines_no_update", "bill_lines_no_delete"] {
        pool.execute_batch(&format!("DROP TRIGGER {t}"))
            .expect("drop trigger");
    }
    let (first, second) = (jobs[0].as_str(), jobs[1].as_str());
    let line_sql = "SELECT line_id FROM bill_lines WHERE job_id = ?";
    let line1: String = scalar(&pool, line_sql, first);
    let line2: String = scalar(&pool, line_sql, second);
    let charged: i64 = scalar(
        &pool,
        "SELECT charge_micros FROM jobs WHERE job_id = ?",
        first,
    );
    let (original, cash, provider): (i64, i64, i64) = pool
        .query_row(
            "SELECT original_micros, cash_micros, provider_micros FROM bill_lines WHERE line_id = ?",
            [&line1],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("line");
    assert!(charged > 0 && cash > 0 && provider > 0);
    let remaining: i64 = scalar(
        &pool,
        "SELECT remaining FROM licence_scenes WHERE licence_id = ?",
        &lic,
    );
    assert_eq!(remaining, 3);
    for (sql, arg) in [
        (
            "UPDATE licence_scenes SET remaining = remaining + 1, used = used - 1 WHERE licence_id = ?",
            lic.as_str(),
        ),
        (
            "UPDATE jobs SET state = 'failed', charge_micros = 0 WHERE job_id = ?",
            first,
        ),
        (
            "UPDATE bill_lines SET original_micros = original_micros - 1, cash_micros = cash_micros - 1, \
             provider_micros = provider_micros - 1 WHERE line_id = ?",
            line1.as_str(),
        ),
        ("DELETE FROM bill_lines WHERE line_id = ?", line2.as_str()),
    ] {
        pool.execute(sql, [arg]).expect(sql);
    }
    let (ended, lined) = (
        "SELECT seq FROM audit_log WHERE kind = 'complete' AND subject = ?",
        "SELECT seq FROM audit_log WHERE kind = 'bill_line' AND subject = ?",
    );
    let ended_first: i64 = scalar(&pool, ended, first);
    let ended_second: i64 = scalar(&pool, ended, second);
    let l1: i64 = scalar(&pool, lined, &line1);
    let l2: i64 = scalar(&pool, lined, &line2);
    drop(pool);

    let out = tessera(&["audit", "verify", "--data-dir", &data_dir]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let expected = [
        format!(
            "licence {lic} scene psi: remaining_counts is 4, the chain gives 3 (entry {ended_second})"
        ),
        format!(
            "licence {lic} scene psi: used_counts is 1, the chain gives 2 (entry {ended_second})"
        ),
        format!(
            "job {first}: state is 'failed', the chain gives 'succeeded' (entry {ended_first})"
        ),
        format!("job {first}: charge_micros is 0, the chain gives {charged} (entry {ended_first})"),
        format!(
            "bill line {line1}: original_micros is {}, the chain gives {original} (entry {l1})",
            original - 1
        ),
        format!(
            "bill line {line1}: cash_micros is {}, the chain gives {cash} (entry {l1})",
            cash - 1
        ),
        format!(
            "bill line {line1}: provider_micros is {}, the chain gives {provider} (entry {l1})",
            provider - 1
        ),
        format!("bill line {line2}, recorded by entry {l2}, is missing from the bill_lines table"),
    ];
    let findings: Vec<&str> = said.lines().filter_map(|l| l.strip_prefix("- ")).collect();
    assert_eq!(findings, expected, "{said}");
    assert!(
        said.starts_with("audit chain intact (")
            && said.contains("but the stored tables differ from it: 8 problem(s)"),
        "{said}"
    );
    assert!(!said.contains("BROKEN"), "{said}");
}
