//! Persistence of the operator node through sqlx on SQLite (a file in WAL mode under the
//! node's data directory), with embedded migrations.
//!
//! Writes go through a single-connection pool, so every write transaction is serialised and
//! sees a consistent state: admission reads the licence's remaining count, reserves one and
//! records the job in one transaction. Reads use a separate pool. Every decision that changes
//! state appends an entry to the hash-chained audit log in the same transaction (see
//! [`audit`]).

mod accounts;
pub mod audit;
mod audit_records;
mod bills;
mod jobs;
mod ledger;
mod limits;
pub mod lists;
mod records;
mod tee;
mod terms;
mod trade;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use accounts::{PartyRecord, TokenRecord, UserRecord, WorkerCredentialRecord};
pub use bills::{BillLineRecord, BillRecord, LATE_WINDOW_MS_MAX, StatementRecord, bill_id};
pub use jobs::{
    AdmitContext, AdmitOutcome, CoLicence, CoLicenceContext, Decision, EmptyKeyCounts,
    FailureOrigin, FinishOutcome, JobFinish, JobRecord, NewJob, NewTask, Refusal, ResultFileRecord,
    TaskRecord, TaskUpdate, UsageEventRecord,
};
pub use ledger::{BalanceRecord, HoldRecord, TransferRecord};
pub use limits::{AccountStatus, FreezeContext, LimitScope};
pub use records::{DatasetRecord, LicenceRecord, WorkerRecord};
pub use terms::SubscriptionView;
pub use tessera_accounting::bill::{Amounts, BillLineKind, NewBillLine, Split};
pub use tessera_accounting::ledger::LedgerOp;
pub use tessera_accounting::{LedgerError, TransferOutcome};
pub use trade::{
    ConfirmationRow, DemandRow, NewSettlement, PublicationRow, RegistrationRow, RevocationKind,
    SettlementRow, TradeLicenceRow, TradePolicyRow,
};
pub use writer::{MAX_BATCH, WriteStats};

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
    /// A ledger rule was broken: insufficient funds (a balance limit), a bad amount, an
    /// unknown account name, a hold resolved twice (see [`LedgerError`]).
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// A bill rule was broken: a line breaking the §3.8 identities, a bad period.
    #[error("bill: {0}")]
    Bill(#[from] tessera_accounting::bill::BillError),
    /// A request value is out of its allowed range (nothing was written).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A plain failure or cancellation was asked for a job past its delivery milestone; such a
    /// job ends only consumed and charged (`JobFinish::EndedAfterDelivery`).
    #[error("job {job_id} reached its delivery point: it can only end charged")]
    Delivered {
        /// The job.
        job_id: String,
    },
    /// A provider statement's period still accepts late charges, so it cannot be paid out.
    #[error("period {period} is still open for late charges until {until}")]
    PeriodOpen {
        /// `YYYY-MM`.
        period: String,
        /// When it stops accepting them (UTC milliseconds).
        until_ms: i64,
        /// The same instant as an RFC 3339 date in the store's zone.
        until: String,
    },
    /// A business rule refused the operation (funds, freeze, limits, state); nothing was
    /// written. The [`RuleRefusal`] says which rule.
    #[error("{0}")]
    Refused(#[from] RuleRefusal),
    /// A time lies outside the calendar's range (years 1970..=9999).
    #[error("time: {0}")]
    Time(#[from] tessera_core::civil::TimeError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A write of the group commit (`writer`) was not made durable: its batch's transaction
    /// did not commit, or the writer stopped. Nothing of it was written; trying again is safe.
    #[error("not committed: {reason}")]
    NotCommitted {
        /// Why.
        reason: String,
    },
}

/// Which business rule refused an operation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RuleRefusal {
    /// The customer's funds do not cover the amount due (insufficient funds).
    #[error(transparent)]
    Funds(#[from] tessera_accounting::settle::SettleError),
    /// The account is frozen by the operator (manual freeze, operations manual §3.6.5).
    #[error("account {customer} frozen manually: {reason}")]
    AccountFrozen {
        /// Customer.
        customer: String,
        /// The operator's reason.
        reason: String,
    },
    /// A purchase or freeze limit refuses it (minimum purchase amount, §3.6.5).
    #[error(transparent)]
    Limit(#[from] tessera_accounting::freeze::LimitError),
    /// A subscription rule refuses it (months out of range, closed, before its start).
    #[error(transparent)]
    Subscription(#[from] tessera_accounting::subscription::SubscriptionError),
    /// The licence is not sold by the month.
    #[error("licence {0} has no monthly price: its jobs are metered only")]
    NotMonthly(String),
    /// The licence belongs to another customer.
    #[error("licence {licence} is licensed to {licensee}, not {customer}")]
    NotLicensee {
        /// Licence.
        licence: String,
        /// Its licensee.
        licensee: String,
        /// Who asked.
        customer: String,
    },
    /// The subscription is already closed.
    #[error("subscription {0} is already closed")]
    SubscriptionClosed(String),
}

/// The operator's store.
#[derive(Debug, Clone)]
pub struct Store {
    write: SqlitePool,
    /// The group commit in front of `write` for the writes on a job's path.
    writer: writer::GroupCommit,
    read: SqlitePool,
    /// The directory of a throw-away store ([`Store::open_temporary`]), removed when the
    /// last clone is dropped (held, never read).
    _temporary: Option<Arc<tempfile::TempDir>>,
    /// The calendar zone of billing months (`tessera_core::civil`; default UTC+08:00).
    zone: tessera_core::civil::Zone,
    /// Which month's days divide a monthly price in an overdue make-up (default: the
    /// manual's rule, the previous month period's actual days).
    daily_price_basis: tessera_accounting::subscription::DailyPriceBasis,
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    ///
    /// The database and SQLite's `-wal` and `-shm` files are readable and writable by the
    /// owner only (mode 0600 on Unix): a new database file is created 0600 before SQLite opens
    /// it (SQLite gives the `-wal` and `-shm` files the database file's mode), and existing
    /// files are narrowed to 0600 after opening.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |e| StoreError::Db(sqlx::Error::Io(e));
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
        }
        create_private_file(path).map_err(io)?;
        let store = Self::open_with(path, SqliteSynchronous::Full, None).await?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            make_private(Path::new(&name)).map_err(io)?;
        }
        Ok(store)
    }

    /// A throw-away store: the same schema and code on a database file in a fresh temporary
    /// directory, deleted when the last clone of the store is dropped; commits are not synced
    /// to disk. Used by the billing simulator and by tests.
    pub async fn open_temporary() -> Result<Self, StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let path = dir.path().join("tessera.db");
        Self::open_with(&path, SqliteSynchronous::Off, Some(Arc::new(dir))).await
    }

    async fn open_with(
        path: &Path,
        synchronous: SqliteSynchronous,
        temporary: Option<Arc<tempfile::TempDir>>,
    ) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
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
        Ok(Self {
            writer: writer::GroupCommit::start(write.clone()),
            write,
            read,
            _temporary: temporary,
            zone: tessera_core::civil::Zone::default(),
            daily_price_basis: Default::default(),
        })
    }

    /// The same store reckoning billing months (which bill a line lands on, when a month and
    /// its late window end) in `zone` instead of the default UTC+08:00. Instants stay UTC.
    pub fn with_zone(mut self, zone: tessera_core::civil::Zone) -> Self {
        self.zone = zone;
        self
    }

    /// How the group commit has batched the writes so far.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Takes at most `n` writes (1 ..= [`MAX_BATCH`]) into one transaction from now on; 1
    /// commits each on its own, as before group commit (for measurements).
    pub fn set_max_batch(&self, n: usize) {
        self.writer.set_max_batch(n);
    }

    /// Carries out `work` in the group commit's next batch (see `writer`): inside a savepoint
    /// of the batch's transaction, answered after the batch committed.
    ///
    /// # Errors
    /// `work`'s own (its writes rolled back alone); [`StoreError::NotCommitted`].
    pub(crate) async fn batched<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut sqlx::SqliteConnection,
            ) -> futures::future::BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        self.writer.submit(work).await
    }

    /// The calendar zone of billing months.
    pub fn zone(&self) -> &tessera_core::civil::Zone {
        &self.zone
    }

    /// The same store dividing monthly prices in overdue make-ups of licence terms by
    /// `basis` (default [`DailyPriceBasis::PreviousTermMonth`], the manual's note under
    /// §1.4.5.1.2).
    ///
    /// [`DailyPriceBasis::PreviousTermMonth`]: tessera_accounting::subscription::DailyPriceBasis::PreviousTermMonth
    pub fn with_daily_price_basis(
        mut self,
        basis: tessera_accounting::subscription::DailyPriceBasis,
    ) -> Self {
        self.daily_price_basis = basis;
        self
    }

    /// The daily-price basis of overdue make-ups.
    pub fn daily_price_basis(&self) -> tessera_accounting::subscription::DailyPriceBasis {
        self.daily_price_basis
    }

    /// Closes both pools: the readers first, then a `TRUNCATE` checkpoint folds the
    /// write-ahead log into the database file (leaving it empty), then the writer.
    pub async fn close(&self) {
        self.read.close().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.write)
            .await
        {
            tracing::warn!(error = %e, "could not fold the write-ahead log back at close");
        }
        self.write.close().await;
    }
}

/// Creates an empty file at `path` with mode 0600 unless something exists there already.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Narrows an existing file to mode 0600 (a missing file is fine: SQLite creates `-wal` and
/// `-shm` lazily, with the database file's mode).
fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_audit;
#[cfg(test)]
mod tests_audit_records;
#[cfg(test)]
mod tests_billing;
#[cfg(test)]
mod tests_trade;
#[cfg(test)]
mod tests_writer;

#[cfg(all(test, unix))]
mod file_mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn database_wal_and_shm_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        let store = Store::open(&db).await.expect("open");
        // A write makes SQLite create the -wal and -shm files.
        store
            .create_dataset(
                &DatasetRecord {
                    dataset_id: "ds".into(),
                    owner_party: "p".into(),
                    location: "p.csv".into(),
                    description: String::new(),
                    declared_rows: None,
                },
                1,
            )
            .await
            .expect("write");
        for name in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
            let p = dir.path().join(name);
            assert!(p.exists(), "{name} missing");
            assert_eq!(mode(&p), 0o600, "{name}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn an_existing_readable_database_is_narrowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        Store::open(&db).await.expect("create").close().await;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = Store::open(&db).await.expect("reopen");
        assert_eq!(mode(&db), 0o600);
        store.close().await;
    }
}
