//! Group commit: the write operations of many concurrent callers carried out in one SQLite
//! transaction and made durable by one commit — one fsync of the write-ahead log under
//! `synchronous = FULL` — as TigerBeetle batches its requests (issue "The control plane at
//! 2,000 admissions a second", item 1).
//!
//! One writer thread owns the store's only write connection. It takes the operations waiting
//! in its queue (at most [`MAX_BATCH`] at a time, in arrival order), opens one transaction
//! (`BEGIN IMMEDIATE`) and runs each operation inside a savepoint of its own:
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
//! operations and an idle store answers a lone operation after one commit. Every write of the
//! store goes through this queue. An operation is a plain closure over the connection, run on
//! the writer thread: its statements cost SQLite's own microseconds, with no thread hop per
//! statement (a caller waits for one answer per operation).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rusqlite::Connection;
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
    fn run(&mut self, conn: &Connection) -> bool;

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
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| work(conn))) {
            Ok(r) => r,
            Err(_) => Err(StoreError::NotCommitted {
                reason: "the write operation panicked; it was rolled back".into(),
            }),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
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

/// What the writer thread is asked.
enum Command {
    /// An operation for the next batch.
    Write(Box<dyn Operation>),
    /// Fold the write-ahead log into the database file, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// The queue in front of the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    /// A store opened read-only: no writer thread, every write refused.
    read_only: bool,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Write(_) => "Write",
            Command::Close(_) => "Close",
        })
    }
}

impl GroupCommit {
    /// Starts the writer thread on `conn` (the store's only write connection), taking at most
    /// [`MAX_BATCH`] operations per transaction. The thread ends when the last clone of the
    /// queue is dropped, or at [`GroupCommit::close`].
    ///
    /// # Errors
    /// [`StoreError::Io`] when the thread cannot be started.
    pub(crate) fn start(conn: Connection) -> Result<Self, StoreError> {
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let counters = Arc::new(Counters {
            max_batch: AtomicUsize::new(MAX_BATCH),
            ..Counters::default()
        });
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name("tessera-store-writer".into())
            .spawn(move || run(conn, rx, &thread_counters))?;
        Ok(Self {
            queue,
            counters,
            read_only: false,
        })
    }

    /// No writer at all: every write answers [`StoreError::NotCommitted`] (a store opened
    /// read-only).
    pub(crate) fn read_only() -> Self {
        let (queue, _) = mpsc::channel(1);
        Self {
            queue,
            counters: Arc::new(Counters::default()),
            read_only: true,
        }
    }

    /// Takes at most `n` operations (clamped to 1 ..= [`MAX_BATCH`]) into each later batch;
    /// 1 gives every operation a transaction and a commit of its own (the write path before
    /// group commit, for comparison in `tessera bench admission --max-batch 1`).
    pub(crate) fn set_max_batch(&self, n: usize) {
        self.counters
            .max_batch
            .store(n.clamp(1, MAX_BATCH), Ordering::Relaxed);
        // The statistics describe the writes under this setting only.
        self.counters.batches.store(0, Ordering::Relaxed);
        self.counters.operations.store(0, Ordering::Relaxed);
        self.counters.largest_batch.store(0, Ordering::Relaxed);
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
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.read_only {
            return Err(StoreError::NotCommitted {
                reason: "the store was opened read-only".into(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Operation> = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        let stopped = || StoreError::NotCommitted {
            reason: "the store's writer has stopped".into(),
        };
        self.queue
            .send(Command::Write(op))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Asks the writer to checkpoint the write-ahead log (`TRUNCATE`) after the writes queued
    /// before, and to stop; returns when it has (at once when it had stopped already).
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Command::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
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

/// The writer thread's loop: a batch of what is queued, run and answered, until the queue
/// closes or a `Close` arrives.
fn run(conn: Connection, mut rx: mpsc::Receiver<Command>, counters: &Counters) {
    let mut batch: Vec<Box<dyn Operation>> = Vec::with_capacity(MAX_BATCH);
    let mut close = None;
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let max_batch = counters.max_batch.load(Ordering::Relaxed);
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write(op) => batch.push(op),
                Command::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if batch.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.operations.fetch_add(n, Ordering::Relaxed);
            counters.largest_batch.fetch_max(n, Ordering::Relaxed);
            carry_out(&conn, &mut batch);
        }
    }
    if let Some(done) = close {
        // Later commands find the queue closed: their callers hear that the writer stopped.
        rx.close();
        while let Ok(command) = rx.try_recv() {
            if let Command::Close(other) = command {
                let _ = other.send(());
            }
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "could not fold the write-ahead log back at close");
        }
        drop(conn);
        let _ = done.send(());
    }
}

/// Runs one batch and answers every operation in it.
fn carry_out(conn: &Connection, batch: &mut Vec<Box<dyn Operation>>) {
    let committed = match run_batch(conn, batch) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, operations = batch.len(), "a write batch did not commit");
            if !conn.is_autocommit()
                && let Err(e) = conn.execute_batch("ROLLBACK")
            {
                tracing::error!(error = %e, "could not roll the failed batch back");
            }
            Err(e)
        }
    };
    for op in batch.drain(..) {
        op.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Operation>]) -> Result<(), String> {
    exec(conn, "BEGIN IMMEDIATE").map_err(|e| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            "another process holds the database's write lock (something outside the operator \
             is writing to its database file); nothing was written, try again"
                .to_string()
        } else {
            format!("could not begin the batch: {e}")
        }
    })?;
    for op in batch.iter_mut() {
        exec(conn, "SAVEPOINT operation")
            .map_err(|e| format!("could not open a savepoint: {e}"))?;
        if op.run(conn) {
            exec(conn, "RELEASE operation")
                .map_err(|e| format!("could not release a savepoint: {e}"))?;
        } else {
            // Fails when SQLite already rolled back the whole transaction: then nothing of
            // the batch stands and the batch stops here.
            if conn.is_autocommit() {
                return Err("the transaction was lost under an operation".into());
            }
            exec(conn, "ROLLBACK TO operation")
                .and_then(|()| exec(conn, "RELEASE operation"))
                .map_err(|e| format!("the transaction was lost under an operation: {e}"))?;
        }
    }
    exec(conn, "COMMIT").map_err(|e| format!("the batch's commit failed: {e}"))
}
