//! The group commit (`writer`) on a real SQLite file: a batch in which one operation fails
//! commits the others and answers that one with its own error; a batch whose commit fails
//! answers every operation `NotCommitted` and leaves nothing of it.

use std::time::Duration;

use tessera_accounting::{LedgerError, TransferSpec, derive_id};

use super::*;
use crate::tests::{allow, deposit, new_job, open, seed_licence};

/// Takes SQLite's write lock on the store's file from a connection of its own (as another
/// process could): the writer's next batch waits for it at its `BEGIN IMMEDIATE` (within the
/// busy timeout) until the returned connection is dropped, which gives the lock back.
fn hold_write_lock(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.path().join("db/tessera.db")).expect("open the file");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    conn
}

/// Waits until `n` operations wait in the writer's queue.
async fn until_queued(store: &Store, n: usize) {
    for _ in 0..2_000 {
        if store.writer.queued() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!(
        "{n} operations never queued (now {})",
        store.writer.queued()
    );
}

fn hold(job: &str, amount_micros: i64) -> TransferSpec {
    TransferSpec {
        id: derive_id(&["hold", job]),
        debit: "customer:u:cash".into(),
        credit: "customer:u:holds".into(),
        amount_micros,
        job_id: Some(job.into()),
        memo: "hold".into(),
    }
}

/// Admits job `i` with a hold of `amount` (the admission fails in the store when the
/// buyer's cash does not cover it).
async fn admit_with_hold(store: Store, i: usize, amount: i64) -> Result<AdmitOutcome, StoreError> {
    let job = new_job(i);
    let h = hold(&job.job_id, amount);
    store
        .admit(&job, move |c| {
            let mut d = allow(c)?;
            d.holds = vec![h];
            Ok(d)
        })
        .await
}

#[tokio::test]
async fn a_batch_commits_its_operations_but_the_one_that_failed() {
    let (dir, store) = open().await;
    seed_licence(&store, 10).await;
    deposit(&store, 1_000, 5).await;
    let before = store.write_stats();

    // Hold the database's write lock: the writer takes job 0 and waits for the lock, while
    // the next eight queue up behind it and form one batch.
    let held = hold_write_lock(&dir);
    let first = tokio::spawn(admit_with_hold(store.clone(), 0, 100));
    until_queued(&store, 0).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut rest = Vec::new();
    for i in 1..=8 {
        // Job 5 asks for more than the 1,000 the buyer has: insufficient funds.
        let amount = if i == 5 { 5_000 } else { 100 };
        rest.push(tokio::spawn(admit_with_hold(store.clone(), i, amount)));
        until_queued(&store, i).await;
    }
    drop(held);

    assert!(matches!(
        first.await.expect("join"),
        Ok(AdmitOutcome::Admitted { .. })
    ));
    for (i, r) in (1..=8).zip(rest) {
        let r = r.await.expect("join");
        if i == 5 {
            assert!(
                matches!(
                    r,
                    Err(StoreError::Ledger(LedgerError::InsufficientFunds { .. }))
                ),
                "{r:?}"
            );
        } else {
            assert!(
                matches!(r, Ok(AdmitOutcome::Admitted { .. })),
                "job {i}: {r:?}"
            );
        }
    }
    let after = store.write_stats();
    assert_eq!(after.operations - before.operations, 9);
    assert_eq!(after.batches - before.batches, 2, "{after:?}");
    assert!(after.largest_batch >= 8, "{after:?}");

    // The failed admission left nothing: no job, no hold, no count; the others all stand.
    assert!(matches!(
        store.job("job-5").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.job_holds("job-5").await.expect("holds").is_empty());
    for i in [0, 1, 2, 3, 4, 6, 7, 8] {
        assert_eq!(
            store.job(&format!("job-{i}")).await.expect("job").state,
            tessera_core::JobState::Admitted
        );
        assert_eq!(
            store
                .job_holds(&format!("job-{i}"))
                .await
                .expect("holds")
                .len(),
            1
        );
    }
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("count"),
        Some(2)
    );
    assert_eq!(store.balance("customer:u:cash").await.expect("cash"), 1_000);
    assert_eq!(
        store.balance("customer:u:holds").await.expect("holds"),
        0,
        "holds are pending, not posted"
    );
    let v = store.verify_audit().await.expect("verify");
    assert!(
        v.first_broken_seq.is_none() && v.problems.is_empty(),
        "{v:?}"
    );
    assert!(store.ledger_balanced().await.expect("ledger"));
}

#[tokio::test]
async fn a_batch_whose_commit_fails_answers_every_operation_not_committed() {
    let (dir, store) = open().await;
    seed_licence(&store, 10).await;
    // Hold the database's write lock: the writer takes job 0 and waits for the lock.
    let held = hold_write_lock(&dir);
    let admit = |i| {
        let store = store.clone();
        tokio::spawn(async move { store.admit(&new_job(i), allow).await })
    };
    let first = admit(0);
    until_queued(&store, 0).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = admit(1);
    until_queued(&store, 1).await;
    // An operation that leaves a foreign key broken until the commit, where SQLite refuses
    // it: the whole batch fails at its commit.
    let broken = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(|conn| {
                    conn.execute_batch("PRAGMA defer_foreign_keys = ON")?;
                    conn.execute(
                        "INSERT INTO tasks (task_id, job_id, worker_id, party, role, state, \
                         spec_json, updated_at_ms) VALUES ('t', 'no-such-job', 'w', 'p', \
                         'sender', 'dispatched', '{}', 1)",
                        [],
                    )?;
                    Ok(())
                })
                .await
        })
    };
    until_queued(&store, 2).await;
    let b = admit(2);
    until_queued(&store, 3).await;
    drop(held);

    // Alone in the batch before, it committed.
    let r = first.await.expect("join");
    assert!(matches!(r, Ok(AdmitOutcome::Admitted { .. })), "{r:?}");
    for r in [a.await.expect("join"), b.await.expect("join")] {
        assert!(matches!(r, Err(StoreError::NotCommitted { .. })), "{r:?}");
    }
    let r = broken.await.expect("join");
    assert!(matches!(r, Err(StoreError::NotCommitted { .. })), "{r:?}");
    for job in ["job-1", "job-2"] {
        assert!(matches!(
            store.job(job).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("count"),
        Some(9)
    );
    let v = store.verify_audit().await.expect("verify");
    assert!(v.problems.is_empty(), "{v:?}");
    // The writer goes on: the next operation commits.
    assert!(matches!(
        store.admit(&new_job(3), allow).await,
        Ok(AdmitOutcome::Admitted { .. })
    ));
    assert_eq!(
        store.remaining_count("lic", "psi").await.expect("count"),
        Some(8)
    );
}

/// How often the cached statement `sql` on `conn` was re-prepared so far.
fn reprepared(conn: &Connection, sql: &str) -> Result<i32, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .get_status(rusqlite::StatementStatus::RePrepare))
}

/// Every connection of the store plans with SQLite's query planner stability guarantee: a
/// cached statement whose plan SQLite would otherwise tie to its bound values (the open-holds
/// query, weighed against the partial index on `pending_id`; the withdrawal check) is prepared
/// once and then only rebound, on the writer's connection and on a reader's. Without the
/// guarantee each use after the first re-prepared it (the statement cache clears the bindings
/// on every return), which cost about 6% of the operator's CPU.
#[tokio::test]
async fn cached_statements_are_prepared_once_however_often_they_are_rebound() {
    let (_dir, store) = open().await;
    seed_licence(&store, 10).await;
    deposit(&store, 1_000, 5).await;
    for i in 0..3 {
        admit_with_hold(store.clone(), i, 5).await.expect("admit");
    }
    let uses = |conn: &Connection| -> Result<(i32, i32), StoreError> {
        for i in 0..5 {
            crate::ledger::open_holds(conn, &format!("job-{i}"))?;
            crate::trade::withdrawn(conn, &format!("lic-{i}"))?;
        }
        Ok((
            reprepared(conn, crate::ledger::OPEN_HOLDS)?,
            reprepared(conn, crate::trade::WITHDRAWN)?,
        ))
    };
    assert_eq!(store.write(uses).await.expect("writer"), (0, 0));
    assert_eq!(store.read(uses).expect("reader"), (0, 0));
}

/// With plans independent of bound values, the query for a buyer's output name still finds
/// it through the partial index `jobs_by_output` (it states the index's condition itself)
/// rather than by scanning the jobs.
#[tokio::test]
async fn the_output_name_query_uses_its_partial_index() {
    let (_dir, store) = open().await;
    let plan = store
        .read(|conn| {
            let sql = format!("EXPLAIN QUERY PLAN {}", crate::jobs::OUTPUT_TAKEN);
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params!["b", "out"], |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
        })
        .expect("plan");
    assert!(plan.contains("jobs_by_output"), "{plan}");
}

/// The writer keeps SQLite's temporary storage in memory: the savepoint journal of a large
/// operation (a job's end touches about twenty pages) is never spilled to a temporary file.
#[tokio::test]
async fn the_writer_keeps_savepoint_journals_in_memory() {
    let (_dir, store) = open().await;
    assert_eq!(
        writer_pragma(&store, "temp_store").await,
        2,
        "temp_store = MEMORY"
    );
}

/// The writer's page cache is `WRITER_CACHE_KIB`, not SQLite's 2 MiB default.
#[tokio::test]
async fn the_writer_has_a_page_cache_of_its_stated_size() {
    let (_dir, store) = open().await;
    assert_eq!(
        writer_pragma(&store, "cache_size").await,
        -i64::from(crate::WRITER_CACHE_KIB)
    );
}

/// The value of `PRAGMA name` on the writer's connection.
async fn writer_pragma(store: &Store, name: &'static str) -> i64 {
    store
        .write(move |conn| {
            Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))?)
        })
        .await
        .expect("pragma")
}
