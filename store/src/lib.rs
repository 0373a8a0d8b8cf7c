//! Persistence of the operator node on SQLite (a file in WAL mode under the node's data
//! directory, through `rusqlite`), with embedded migrations (`migrate`).
//!
//! Every write runs on one connection owned by the writer thread (`writer`), which carries out
//! the writes of concurrent callers in one transaction and one commit (group commit), each in
//! a savepoint of its own: every write transaction is serialised and sees a consistent state —
//! admission reads the licence's remaining count, reserves one and records the job in one
//! savepoint. Reads run on the caller's thread on a read-only connection from a small pool:
//! a read is a few SQLite calls of microseconds, with no thread hop per statement. Every
//! decision that changes state appends an entry to the hash-chained audit log in the same
//! transaction (see [`audit`]).

mod accounts;
pub mod audit;
mod audit_records;
mod bills;
mod jobs;
mod ledger;
mod limits;
pub mod lists;
mod migrate;
mod records;
mod tee;
mod terms;
mod trade;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use accounts::{PartyRecord, TokenRecord, UserRecord, WorkerCredentialRecord};
pub use bills::{BillLineRecord, BillRecord, LATE_WINDOW_MS_MAX, StatementRecord, bill_id};
pub use jobs::{
    AdmitContext, AdmitOutcome, CoLicence, CoLicenceContext, Decision, EmptyKeyCounts,
    FailureOrigin, FinishOutcome, JobFinish, JobRecord, NewJob, NewTask, Refusal, ResultFileRecord,
    TaskRecord, TaskUpdate, UsageEventRecord,
};
pub use ledger::{BalanceRecord, HoldRecord, TransferRecord};
pub use limits::{AccountStatus, FreezeContext, LimitScope};
pub use migrate::MigrateError;
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
    Db(#[from] rusqlite::Error),
    /// The database's files could not be created, opened or narrowed.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// A migration failed, or the database's schema is not one this build knows.
    #[error("migration: {0}")]
    Migrate(#[from] migrate::MigrateError),
    /// A store opened read-only cannot be read without writing beside it.
    #[error("cannot read {} read-only: {detail}; copy its directory somewhere writable", path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
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

/// How long a reader waits for SQLite's lock before failing with `SQLITE_BUSY` (during a
/// checkpoint or the recovery of the write-ahead log).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the writer waits for the database's write lock before its batch fails
/// ([`StoreError::NotCommitted`], answered as unavailable). Only another process holds that
/// lock (this process has one writer): a batch fails well before a client's own deadline
/// (10 s) instead of every caller hanging behind it.
const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps (keyed by their SQL text).
const STATEMENT_CACHE: usize = 256;

/// The write connection's page cache (KiB): an upper bound, filled as pages are used.
pub const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Idle read connections kept for the next reads (more are opened when more threads read at
/// once, and closed when given back beyond this).
const IDLE_READERS: usize = 8;

/// The operator's store.
#[derive(Debug, Clone)]
pub struct Store {
    /// The group commit: the writer thread and its queue (see `writer`).
    writer: writer::GroupCommit,
    /// Read-only connections for reads on the caller's thread.
    readers: Arc<Readers>,
    /// The directory of a throw-away store ([`Store::open_temporary`]), removed when the
    /// last clone is dropped (held, never read).
    _temporary: Option<Arc<tempfile::TempDir>>,
    /// The calendar zone of billing months (`tessera_core::civil`; default UTC+08:00).
    zone: tessera_core::civil::Zone,
    /// Which month's days divide a monthly price in an overdue make-up (default: the
    /// manual's rule, the previous month period's actual days).
    daily_price_basis: tessera_accounting::subscription::DailyPriceBasis,
}

/// A small pool of read-only connections to the database file.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    /// Open the file as immutable (`?immutable=1`): SQLite takes no lock and reads no
    /// write-ahead log. Only for [`Store::open_read_only`] on a file that cannot otherwise be
    /// read (a read-only directory) and has no log to miss.
    immutable: bool,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = if self.immutable {
            Connection::open_with_flags(
                immutable_uri(&self.path),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )?
        } else {
            Connection::open_with_flags(&self.path, flags)?
        };
        conn.busy_timeout(BUSY_TIMEOUT)?;
        keep_plans(&conn)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// Keeps up to [`STATEMENT_CACHE`] prepared statements on `conn` and turns on SQLite's query
/// planner stability guarantee, so that a cached statement is prepared once and then only
/// reset and rebound.
///
/// Without the guarantee SQLite marks a statement whose plan could depend on a bound value
/// (a `?` weighed against a partial index's `WHERE`, a `LIMIT ?`, ...) to be re-prepared
/// whenever its bindings are cleared, which the statement cache does on every return: such
/// statements were parsed and planned afresh on every use (about 6% of the operator's CPU
/// under `tessera bench admission`). With it, a query that should use a partial index says
/// the index's condition itself (`output_name <> ''` for `jobs_by_output`).
fn keep_plans(conn: &Connection) -> Result<(), StoreError> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Opens the write connection at `path` with the store's settings.
fn open_writer(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(WRITE_BUSY_TIMEOUT)?;
    keep_plans(&conn)?;
    // Before the journal mode, which is written into the file's header: a foreign database
    // is left exactly as it was.
    migrate::refuse_foreign(&conn)?;
    // `journal_mode` answers with the mode set; the others answer nothing.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "the database refused write-ahead logging (journal mode {mode})"
        )));
    }
    // `temp_store = MEMORY`: the savepoint journal of each operation in a batch (the first
    // image of every page the operation changes, so that it alone can be rolled back) stays
    // in memory. Otherwise SQLite spills it to a temporary file once past 64 KiB, as a job's
    // end (pages of jobs, tasks, usage, ledger, bills and audit) often was: an open, 64 KiB of
    // writes and a close per such operation (measured: the system CPU of `tessera bench
    // admission` fell by a sixth without them).
    // `cache_size`: the writer's page cache, [`WRITER_CACHE_KIB`] instead of SQLite's 2 MiB.
    // The writer alone changes the file, so its cache stays valid across its transactions;
    // at 2 MiB the pages of the job, usage, ledger and audit indexes a batch touches did not
    // fit (a store of 3,000 jobs is ~40 MB), and statements spilled dirty pages and read
    // them back mid-transaction.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{WRITER_CACHE_KIB};"
    ))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    ///
    /// The database and SQLite's `-wal` and `-shm` files are readable and writable by the
    /// owner only (mode 0600 on Unix): a new database file is created 0600 before SQLite opens
    /// it (SQLite gives the `-wal` and `-shm` files the database file's mode), and existing
    /// files are narrowed to 0600 after opening.
    ///
    /// # Errors
    /// [`StoreError::Io`] for the files; [`StoreError::Migrate`] for a schema this build
    /// cannot bring up to date; `Db`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        create_private_file(path)?;
        let store = Self::open_with(path, "FULL", None)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            make_private(Path::new(&name))?;
        }
        Ok(store)
    }

    /// Opens the database file at `path` for reading only, as an auditor does: nothing is
    /// created, migrated, narrowed or written, and an operator may be running on it. Every
    /// write answers [`StoreError::NotCommitted`].
    ///
    /// A file with no `-wal` file beside it (no connection has it open), or in a directory
    /// this process cannot write (a read-only copy or mount) with an empty `-wal`, is read as
    /// immutable: SQLite then creates no `-shm` file. One whose `-wal` holds changes is
    /// refused where SQLite cannot create its `-shm` file.
    ///
    /// # Errors
    /// [`StoreError::Io`] when there is no such file or it is not a regular file;
    /// [`StoreError::ReadOnly`] when it cannot be read without writing beside it;
    /// [`StoreError::Migrate`] when it is not a Tessera store or its schema is not this
    /// build's (made by an older build and not migrated yet, or by a newer one); `Db`.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            ))));
        }
        if meta.len() == 0 {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "{} is empty: no store",
                path.display()
            ))));
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        // No write-ahead log beside it: no connection has the file open (SQLite keeps the log
        // while one does), so it is read as immutable and nothing is created beside it.
        let mut readers = Readers {
            path: path.to_path_buf(),
            immutable: !wal.exists(),
            idle: Mutex::new(Vec::new()),
        };
        let probe = |conn: &Connection| -> Result<(), StoreError> {
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(())
        };
        let conn = match readers.open().and_then(|c| probe(&c).map(|()| c)) {
            Ok(c) => c,
            Err(StoreError::Db(e))
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
                ) =>
            {
                if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                    return Err(StoreError::ReadOnly {
                        path: path.to_path_buf(),
                        detail: format!(
                            "{} holds changes not yet folded into the database, and SQLite \
                             cannot read them without creating files beside it ({e})",
                            wal.display()
                        ),
                    });
                }
                readers.immutable = true;
                let c = readers.open()?;
                probe(&c)?;
                c
            }
            Err(e) => return Err(e),
        };
        migrate::check_current(&conn)?;
        readers.give_back(conn);
        Ok(Self {
            writer: writer::GroupCommit::read_only(),
            readers: Arc::new(readers),
            _temporary: None,
            zone: tessera_core::civil::Zone::default(),
            daily_price_basis: Default::default(),
        })
    }

    /// A throw-away store: the same schema and code on a database file in a fresh temporary
    /// directory, deleted when the last clone of the store is dropped; commits are not synced
    /// to disk. Used by the billing simulator and by tests.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub async fn open_temporary() -> Result<Self, StoreError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tessera.db");
        Self::open_with(&path, "OFF", Some(Arc::new(dir)))
    }

    fn open_with(
        path: &Path,
        synchronous: &str,
        temporary: Option<Arc<tempfile::TempDir>>,
    ) -> Result<Self, StoreError> {
        let mut conn = open_writer(path, synchronous)?;
        migrate::run(&mut conn)?;
        let readers = Arc::new(Readers {
            path: path.to_path_buf(),
            immutable: false,
            idle: Mutex::new(Vec::new()),
        });
        // A reader opened now proves the file readable before anyone relies on it.
        let first = readers.open()?;
        readers.give_back(first);
        Ok(Self {
            writer: writer::GroupCommit::start(conn)?,
            readers,
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
    /// commits each on its own, as before group commit (for measurements). Starts
    /// [`Store::write_stats`] afresh (a batch the writer already holds may still be larger).
    pub fn set_max_batch(&self, n: usize) {
        self.writer.set_max_batch(n);
    }

    /// Runs `read` on a read-only connection, on the caller's thread (no hop to another
    /// thread: a read is a few SQLite calls of microseconds; the connection sees the last
    /// committed state and never waits for the writer, WAL mode).
    ///
    /// # Errors
    /// `read`'s own; `Db` when no connection could be opened.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.readers.take()?;
        let result = read(&conn);
        // A connection left inside a transaction (never, reads open none) is not reused.
        if conn.is_autocommit() {
            self.readers.give_back(conn);
        }
        result
    }

    /// Carries out `work` in the group commit's next batch (see `writer`): on the writer
    /// thread, inside a savepoint of the batch's transaction, answered after the batch
    /// committed. `work` must not open a transaction of its own (it is inside one).
    ///
    /// # Errors
    /// `work`'s own (its writes rolled back alone); [`StoreError::NotCommitted`].
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
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

    /// Closes the store: the idle readers first, then the writer thread folds the write-ahead
    /// log into the database file with a `TRUNCATE` checkpoint (leaving it empty), answers the
    /// writes already queued and stops; writes after this fail with
    /// [`StoreError::NotCommitted`].
    pub async fn close(&self) {
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.writer.close().await;
    }
}

/// The URI opening `path` as immutable: `file:` and the path with the characters a URI gives
/// meaning to (`%`, `?`, `#`) percent-encoded.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    uri
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

    /// A dataset `id` of party `p`, for a write.
    fn dataset_record(id: &str) -> DatasetRecord {
        DatasetRecord {
            dataset_id: id.into(),
            owner_party: "p".into(),
            location: format!("{id}.csv"),
            description: String::new(),
            declared_rows: None,
        }
    }

    #[tokio::test]
    async fn a_write_lock_held_by_another_process_fails_the_batch_in_seconds_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        let store = Store::open(&db).await.expect("open");
        // Another process (here a second connection) takes the write lock and keeps it.
        let other = Connection::open(&db).expect("other connection");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let started = std::time::Instant::now();
        let e = store
            .create_dataset(&dataset_record("blocked"), 1)
            .await
            .expect_err("the lock is held");
        let waited = started.elapsed();
        assert!(
            matches!(&e, StoreError::NotCommitted { reason } if reason.contains("another process")),
            "{e}"
        );
        assert!(waited < Duration::from_secs(9), "waited {waited:?}");
        // Reads go on meanwhile (write-ahead logging), and once the lock is gone, writes too.
        assert!(store.dataset("blocked").await.is_err());
        other.execute_batch("ROLLBACK").expect("unlock");
        store
            .create_dataset(&dataset_record("after"), 2)
            .await
            .expect("write after the lock");
        assert!(store.dataset("after").await.is_ok());
        store.close().await;
    }

    #[tokio::test]
    async fn a_store_opened_read_only_reads_writes_nothing_and_refuses_what_is_not_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        let store = Store::open(&db).await.expect("open");
        store
            .create_dataset(&dataset_record("ds"), 1)
            .await
            .expect("write");
        // Read-only beside the running store: it sees the committed state.
        let ro = Store::open_read_only(&db).expect("read-only");
        assert!(ro.dataset("ds").await.is_ok());
        let e = ro
            .create_dataset(&dataset_record("more"), 2)
            .await
            .expect_err("read-only");
        assert!(
            matches!(&e, StoreError::NotCommitted { reason } if reason.contains("read-only")),
            "{e}"
        );
        ro.close().await;
        store.close().await;

        // Not there, not a file, not a Tessera store, not migrated by this build.
        assert!(matches!(
            Store::open_read_only(&dir.path().join("none.db")),
            Err(StoreError::Io(_))
        ));
        assert!(matches!(
            Store::open_read_only(dir.path()),
            Err(StoreError::Io(_))
        ));
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("foreign");
        assert!(matches!(
            Store::open_read_only(&foreign),
            Err(StoreError::Migrate(migrate::MigrateError::Foreign {
                tables: 1
            }))
        ));
        let conn = Connection::open(&db).expect("conn");
        conn.execute("DELETE FROM _sqlx_migrations WHERE version = 909", [])
            .expect("forget a migration");
        drop(conn);
        assert!(matches!(
            Store::open_read_only(&db),
            Err(StoreError::Migrate(migrate::MigrateError::Behind {
                missing: 909
            }))
        ));
        assert!(
            std::fs::read_dir(dir.path()).expect("list").all(|e| !e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .starts_with("none")),
            "nothing is created"
        );
    }

    #[tokio::test]
    async fn a_closed_store_is_verified_without_a_file_created_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        Store::open(&db).await.expect("open").close().await;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("tessera.db{suffix}")));
        }
        let ro = Store::open_read_only(&db).expect("read-only");
        assert!(ro.verify_audit().await.expect("verify").ok());
        ro.close().await;
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["tessera.db"]);
        std::fs::write(&db, b"").expect("empty");
        assert!(matches!(Store::open_read_only(&db), Err(StoreError::Io(_))));
    }

    #[tokio::test]
    async fn a_foreign_database_is_left_byte_for_byte_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("tessera.db");
        Connection::open(&db)
            .and_then(|c| c.execute_batch("CREATE TABLE jobs (x); INSERT INTO jobs VALUES (1);"))
            .expect("foreign");
        let before = std::fs::read(&db).expect("read");
        assert!(matches!(
            Store::open(&db).await,
            Err(StoreError::Migrate(migrate::MigrateError::Foreign {
                tables: 1
            }))
        ));
        assert_eq!(std::fs::read(&db).expect("read"), before);
    }
}
