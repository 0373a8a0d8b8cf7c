//! The schema's migrations, embedded in the binary and applied in order when a store opens.
//!
//! Each file `migrations/NNNN_name.sql` is one migration: version `NNNN`, description `name`
//! (underscores read as spaces), applied in one transaction and recorded in the table
//! `_sqlx_migrations` with the SHA-384 of its text — the table, the description and the
//! checksum as sqlx's migrator (which applied them before) keeps them, so a database made by an
//! earlier build opens unchanged and goes on from its last migration.
//!
//! Refused, with nothing applied: a migration recorded as failed (`success` false), a recorded
//! checksum that differs from the embedded text (the migration was edited after it was
//! applied), and a recorded version this build does not know (a newer build migrated it).

use rusqlite::{Connection, params};
use sha2::{Digest, Sha384};

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A migration failed to apply (nothing of it stands).
    #[error(
        "migration {version} ({description}) failed: {}",
        sqlite_message(cause)
    )]
    Failed {
        /// Its version.
        version: i64,
        /// Its description.
        description: &'static str,
        /// SQLite's error (shown by its message alone, never the migration's SQL text).
        cause: rusqlite::Error,
    },
    /// The file is an SQLite database that no build of Tessera made: it holds tables and no
    /// record of Tessera's migrations. Nothing is added to it.
    #[error(
        "the file is an SQLite database but not a Tessera store ({tables} tables, no record \
         of Tessera's migrations); nothing was changed in it"
    )]
    Foreign {
        /// How many tables, views, indexes and triggers it holds.
        tables: i64,
    },
    /// The database records a migration as failed.
    #[error("migration {0} is recorded as partly applied; repair the database by hand")]
    Dirty(i64),
    /// A recorded migration's text differs from this build's.
    #[error("migration {0} was applied with a different text than this build embeds")]
    Changed(i64),
    /// The database records a migration this build does not have.
    #[error("migration {0} is unknown to this build (the database was migrated by a newer one)")]
    Unknown(i64),
    /// The database lacks a migration of this build (made by an older build and not opened
    /// by this one's operator since).
    #[error(
        "the store lacks migration {missing} of this build (an older build made it): start \
         this build's operator on it once to bring it up to date"
    )]
    Behind {
        /// The first migration not applied.
        missing: i64,
    },
    /// Reading or writing the migrations table failed.
    #[error("the migrations table: {0}")]
    Table(#[from] rusqlite::Error),
}

/// One embedded migration.
#[derive(Debug)]
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order (`tests::the_list_matches_the_directory` keeps it complete).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        description: "billing",
        sql: include_str!("../migrations/0002_billing.sql"),
    },
    Migration {
        version: 3,
        description: "licence terms",
        sql: include_str!("../migrations/0003_licence_terms.sql"),
    },
    Migration {
        version: 10,
        description: "delivery and request ids",
        sql: include_str!("../migrations/0010_delivery_and_request_ids.sql"),
    },
    Migration {
        version: 11,
        description: "audit append only",
        sql: include_str!("../migrations/0011_audit_append_only.sql"),
    },
    Migration {
        version: 804,
        description: "job results",
        sql: include_str!("../migrations/0804_job_results.sql"),
    },
    Migration {
        version: 900,
        description: "accounts",
        sql: include_str!("../migrations/0900_accounts.sql"),
    },
    Migration {
        version: 901,
        description: "worker credentials",
        sql: include_str!("../migrations/0901_worker_credentials.sql"),
    },
    Migration {
        version: 902,
        description: "accounts version",
        sql: include_str!("../migrations/0902_accounts_version.sql"),
    },
    Migration {
        version: 903,
        description: "psi protocol",
        sql: include_str!("../migrations/0903_psi_protocol.sql"),
    },
    Migration {
        version: 904,
        description: "trade",
        sql: include_str!("../migrations/0904_trade.sql"),
    },
    Migration {
        version: 905,
        description: "trade revocations",
        sql: include_str!("../migrations/0905_trade_revocations.sql"),
    },
    Migration {
        version: 906,
        description: "tee keys",
        sql: include_str!("../migrations/0906_tee_keys.sql"),
    },
    Migration {
        version: 907,
        description: "provider result",
        sql: include_str!("../migrations/0907_provider_result.sql"),
    },
    Migration {
        version: 908,
        description: "mpc triples",
        sql: include_str!("../migrations/0908_mpc_triples.sql"),
    },
    Migration {
        version: 909,
        description: "co licences",
        sql: include_str!("../migrations/0909_co_licences.sql"),
    },
];

/// Brings the schema of `conn`'s database up to date.
///
/// # Errors
/// [`MigrateError`].
pub(crate) fn run(conn: &mut Connection) -> Result<(), MigrateError> {
    refuse_foreign(conn)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        );",
    )?;
    let applied = applied(conn)?;
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        let failed = |cause| MigrateError::Failed {
            version: m.version,
            description: m.description,
            cause,
        };
        let tx = conn.transaction().map_err(failed)?;
        tx.execute_batch(m.sql).map_err(failed)?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, ?, TRUE, ?, ?)",
            params![m.version, m.description, Sha384::digest(m.sql.as_bytes()).as_slice(), nanos],
        )
        .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
}

/// Refuses a database that holds tables but no record of Tessera's migrations, reading only
/// (called before anything — even the journal mode — is set on the file).
///
/// # Errors
/// [`MigrateError::Foreign`]; `Table`.
pub(crate) fn refuse_foreign(conn: &Connection) -> Result<(), MigrateError> {
    if !has_record(conn)? {
        let tables = schema_objects(conn)?;
        if tables > 0 {
            return Err(MigrateError::Foreign { tables });
        }
    }
    Ok(())
}

/// Whether `conn`'s database has the table recording Tessera's migrations.
fn has_record(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
        [],
        |r| r.get(0),
    )
}

/// The tables, views, indexes and triggers of `conn`'s database, SQLite's own left out.
fn schema_objects(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    )
}

/// The migrations recorded in `conn`'s database, each checked against this build's.
///
/// # Errors
/// [`MigrateError::Dirty`], [`MigrateError::Unknown`], [`MigrateError::Changed`]; `Table`.
fn applied(conn: &Connection) -> Result<Vec<i64>, MigrateError> {
    let applied: Vec<(i64, bool, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (version, success, checksum) in &applied {
        if !success {
            return Err(MigrateError::Dirty(*version));
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == *version) else {
            return Err(MigrateError::Unknown(*version));
        };
        if checksum.as_slice() != Sha384::digest(m.sql.as_bytes()).as_slice() {
            return Err(MigrateError::Changed(*version));
        }
    }
    Ok(applied.into_iter().map(|(v, _, _)| v).collect())
}

/// Checks, without changing anything, that `conn`'s database is a Tessera store with
/// exactly this build's migrations applied (for a store opened read-only).
///
/// # Errors
/// [`MigrateError::Foreign`] (no record of migrations), [`MigrateError::Behind`], and those
/// of [`applied`].
pub(crate) fn check_current(conn: &Connection) -> Result<(), MigrateError> {
    if !has_record(conn)? {
        return Err(MigrateError::Foreign {
            tables: schema_objects(conn)?,
        });
    }
    let applied = applied(conn)?;
    if let Some(m) = MIGRATIONS.iter().find(|m| !applied.contains(&m.version)) {
        return Err(MigrateError::Behind { missing: m.version });
    }
    Ok(())
}

/// SQLite's message of `e` alone: a statement's error without the statement's text (which
/// for a migration is the whole file).
pub(crate) fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

/// The latest migration applied to `conn`'s database (`None` before any).
///
/// # Errors
/// SQLite's.
#[cfg(test)]
pub(crate) fn latest(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    // `MAX` of no rows is one row holding NULL.
    conn.query_row("SELECT MAX(version) FROM _sqlx_migrations", [], |r| {
        r.get(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_matches_the_directory() {
        // The crate's directory as cargo runs the test (a test binary reused from another
        // checkout sharing the target directory carries that checkout's compile-time path).
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .map(|d| format!("{d}/migrations"))
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/migrations").to_string());
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "{files:?}");
        for (file, m) in files.iter().zip(MIGRATIONS) {
            let (version, description) = file
                .trim_end_matches(".sql")
                .split_once('_')
                .expect("NNNN_name.sql");
            assert_eq!(
                version.parse::<i64>().expect("version"),
                m.version,
                "{file}"
            );
            assert_eq!(description.replace('_', " "), m.description, "{file}");
            let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("read");
            assert_eq!(text, m.sql, "{file}");
        }
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn a_database_is_migrated_once_and_refuses_edited_dirty_or_unknown_migrations() {
        let mut conn = Connection::open_in_memory().expect("open");
        run(&mut conn).expect("first run");
        let last = MIGRATIONS.last().expect("migrations").version;
        assert_eq!(latest(&conn).expect("latest"), Some(last));
        // A second run applies nothing and succeeds.
        run(&mut conn).expect("second run");
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, MIGRATIONS.len() as i64);

        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = ?",
            [MIGRATIONS[0].version],
        )
        .expect("edit");
        assert!(
            matches!(run(&mut conn), Err(MigrateError::Changed(v)) if v == MIGRATIONS[0].version)
        );
        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = ?, success = FALSE WHERE version = ?",
            params![
                Sha384::digest(MIGRATIONS[0].sql.as_bytes()).as_slice(),
                MIGRATIONS[0].version
            ],
        )
        .expect("dirty");
        assert!(matches!(run(&mut conn), Err(MigrateError::Dirty(_))));
        conn.execute(
            "UPDATE _sqlx_migrations SET success = TRUE WHERE version = ?",
            [MIGRATIONS[0].version],
        )
        .expect("clean");
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999, 'future', TRUE, X'00', 0)",
            [],
        )
        .expect("future");
        assert!(matches!(run(&mut conn), Err(MigrateError::Unknown(99999))));
    }

    #[test]
    fn a_foreign_database_is_refused_untouched_and_a_failed_migration_is_one_line() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE jobs (x); CREATE INDEX jobs_x ON jobs (x);")
            .expect("foreign schema");
        let e = run(&mut conn).expect_err("a foreign database");
        assert!(matches!(e, MigrateError::Foreign { tables: 2 }), "{e:?}");
        assert!(e.to_string().contains("not a Tessera store"), "{e}");
        let recorded: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = '_sqlx_migrations'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(recorded, 0, "nothing is added to a foreign database");

        // A record of migrations beside a table in the way: the first migration fails, and
        // its error is SQLite's message, not the migration's text.
        conn.execute_batch(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);",
        )
        .expect("record");
        let e = run(&mut conn).expect_err("jobs is in the way");
        let text = e.to_string();
        assert!(
            matches!(e, MigrateError::Failed { version: 1, .. }),
            "{text}"
        );
        assert!(text.contains("table jobs already exists"), "{text}");
        assert!(!text.contains('\n') && !text.contains("CREATE"), "{text}");
        assert!(std::error::Error::source(&e).is_none(), "{e:?}");
    }
}
