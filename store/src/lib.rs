//! Persistence of the operator node through sqlx on SQLite (a file in WAL mode under the
//! node's data directory), with embedded migrations.
//!
//! Writes go through a single-connection pool, so every write transaction is serialised and
//! sees a consistent state: admission reads the licence's remaining count, reserves one and
//! records the job in one transaction. Reads use a separate pool. Every decision that changes
//! state appends an entry to the hash-chained audit log in the same transaction (see
//! [`audit`]).

pub mod audit;
mod bills;
mod jobs;
mod ledger;
mod limits;
mod records;
mod terms;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use bills::{
    BillLineRecord, BillRecord, LATE_WINDOW_MS_MAX, LineAmounts, NewBillLine, StatementRecord,
    bill_id,
};
pub use jobs::{
    AdmitContext, AdmitOutcome, Decision, FinishOutcome, JobFinish, JobRecord, NewJob, NewTask,
    Refusal, TaskRecord, TaskUpdate, UsageEventRecord, funding_accounts,
};
pub use ledger::{
    BalanceRecord, HoldRecord, LedgerOp, TransferOutcome, TransferRecord, default_limit,
};
pub use limits::{AccountStatus, FreezeContext, LimitScope};
pub use records::{DatasetRecord, LicenceRecord, WorkerRecord};
pub use terms::SubscriptionView;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A referenced record does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind of record.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A record with this id exists already.
    #[error("{kind} {id} already exists")]
    Conflict {
        /// Kind of record.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The same idempotency id arrived with a different payload.
    #[error("{kind} {id} exists with different fields")]
    IdempotencyMismatch {
        /// Kind of record.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// A ledger rule was broken (balance limit, bad amount).
    #[error("ledger: {0}")]
    Ledger(String),
    /// A business rule refused the operation (funds, limits, state); nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// The operator's store.
#[derive(Debug, Clone)]
pub struct Store {
    write: SqlitePool,
    read: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { write, read })
    }

    /// Closes both pools, flushing the WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_billing;
