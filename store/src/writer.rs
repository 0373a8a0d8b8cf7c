//! Group commit: the write operations of many concurrent callers carried out in one SQLite
//! transaction and made durable by one commit — one fsync of the write-ahead log under
//! `synchronous = FULL` — as TigerBeetle batches its requests (issue "The control plane at
//! 2,000 admissions a second", item 1).
//!
//! One writer task takes the operations waiting in its queue (at most [`MAX_BATCH`] at a time,
//! in arrival order), opens one transaction on the store's single write connection and runs
//! each operation inside a savepoint of its own:
//! - an operation that fails is rolled back to its savepoint alone and answered with its own
//!   error; the others go on;
//! - no answer leaves before the commit that makes the batch durable; a commit that fails
//!   answers every operation of the batch with [`StoreError::NotCommitted`] (nothing of the
//!   batch was written);
//! - should SQLite have rolled back the whole transaction under an operation (a full disk, an
//!   I/O error), the savepoint is gone: the batch stops there and every operation in it is
//!   answered `NotCommitted`.
//!
//! While one batch commits, the next one gathers, so under load the fsync is shared by many
//! operations and an idle store answers a lone operation after one commit. The write
//! connection is taken per batch and given back after the commit, so the writes that do not
//! go through the queue (deposits, accounts, licences) take their turn between batches.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{Connection, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::StoreError;

/// Most operations carried out in one transaction.
pub const MAX_BATCH: usize = 256;

/// Operations waiting for the writer beyond which a caller waits to enqueue its own.
pub const QUEUE_MAX: usize = 4096;

/// How the writer has batched so far (counters since the store opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Transactions committed (or tried).
    pub batches: u64,
    /// Operations carried out in them.
    pub operations: u64,
    /// The most operations in one batch.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// The most operations the writer takes into one batch (1 ..= [`MAX_BATCH`]).
    max_batch: AtomicUsize,
    batches: AtomicU64,
    operations: AtomicU64,
    largest_batch: AtomicU64,
}

/// One queued operation, type-erased: run it inside its savepoint, then answer it once the
/// batch's fate is known.
trait Operation: Send {
    /// Runs the operation on the batch's connection; `true` when it succeeded (its savepoint
    /// is released), `false` when it failed (its savepoint is rolled back).
    fn run<'a>(&'a mut self, conn: &'a mut SqliteConnection) -> BoxFuture<'a, bool>;

    /// Answers the caller: `Ok` when the batch committed, otherwise why it did not.
    fn answer(self: Box<Self>, committed: Result<(), &str>);
}

struct Pending<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Operation for Pending<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
        + Send
        + 'static,
{
    fn run<'a>(&'a mut self, conn: &'a mut SqliteConnection) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(work) = self.work.take() else {
                return false;
            };
            let result = match AssertUnwindSafe(work(conn)).catch_unwind().await {
                Ok(r) => r,
                Err(_) => Err(StoreError::NotCommitted {
                    reason: "the write operation panicked; it was rolled back".into(),
                }),
            };
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        })
    }

    fn answer(self: Box<Self>, committed: Result<(), &str>) {
        let answer = match (self.result, committed) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(reason)) => Err(StoreError::NotCommitted {
                reason: reason.to_string(),
            }),
            (None, Ok(())) => Err(StoreError::NotCommitted {
                reason: "the operation was not run".into(),
            }),
        };
        // A caller that stopped waiting no longer needs the answer; the work stands.
        let _ = self.reply.send(answer);
    }
}

/// The queue in front of the writer task.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Box<dyn Operation>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for dyn Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Operation")
    }
}

impl GroupCommit {
    /// Starts the writer task on `pool` (the store's single write connection), taking at most
    /// [`MAX_BATCH`] operations per transaction. Needs a Tokio runtime. The task ends when the
    /// last clone of the queue is dropped.
    pub(crate) fn start(pool: SqlitePool) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let counters = Arc::new(Counters {
            max_batch: AtomicUsize::new(MAX_BATCH),
            ..Counters::default()
        });
        tokio::spawn(run(pool, rx, counters.clone()));
        Self { queue, counters }
    }

    /// Takes at most `n` operations (clamped to 1 ..= [`MAX_BATCH`]) into each later batch;
    /// 1 gives every operation a transaction and a commit of its own (the write path before
    /// group commit, for comparison in `tessera bench admission --max-batch 1`).
    pub(crate) fn set_max_batch(&self, n: usize) {
        self.counters
            .max_batch
            .store(n.clamp(1, MAX_BATCH), Ordering::Relaxed);
    }

    /// Carries out `work` in the next batch and answers once that batch committed.
    ///
    /// `work` runs inside a savepoint: its error rolls back its own writes only and is
    /// returned as is.
    ///
    /// # Errors
    /// `work`'s own; [`StoreError::NotCommitted`] when the batch did not commit or the writer
    /// has stopped.
    pub(crate) async fn submit<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Operation> = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        let stopped = || StoreError::NotCommitted {
            reason: "the store's writer has stopped".into(),
        };
        self.queue.send(op).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Operations waiting for the writer now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            operations: self.counters.operations.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
        }
    }
}

async fn run(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Box<dyn Operation>>,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let max_batch = counters.max_batch.load(Ordering::Relaxed);
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            break;
        }
        let n = batch.len() as u64;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.operations.fetch_add(n, Ordering::Relaxed);
        counters.largest_batch.fetch_max(n, Ordering::Relaxed);
        carry_out(&pool, &mut batch).await;
        batch.clear();
    }
}

/// Runs one batch and answers every operation in it.
async fn carry_out(pool: &SqlitePool, batch: &mut Vec<Box<dyn Operation>>) {
    let committed = match run_batch(pool, batch).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, operations = batch.len(), "a write batch did not commit");
            Err(e)
        }
    };
    for op in batch.drain(..) {
        op.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
}

async fn run_batch(pool: &SqlitePool, batch: &mut [Box<dyn Operation>]) -> Result<(), String> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| format!("could not begin the batch: {e}"))?;
    for op in batch.iter_mut() {
        let mut savepoint = Connection::begin(&mut *tx)
            .await
            .map_err(|e| format!("could not open a savepoint: {e}"))?;
        if op.run(&mut savepoint).await {
            savepoint
                .commit()
                .await
                .map_err(|e| format!("could not release a savepoint: {e}"))?;
        } else {
            // Fails when SQLite already rolled back the whole transaction: then nothing of
            // the batch stands and the batch stops here.
            savepoint
                .rollback()
                .await
                .map_err(|e| format!("the transaction was lost under an operation: {e}"))?;
        }
    }
    tx.commit()
        .await
        .map_err(|e| format!("the batch's commit failed: {e}"))
}
