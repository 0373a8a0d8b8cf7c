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
    #[error("migration {version} ({description}) failed: {source}")]
    Failed {
        /// Its version.
        version: i64,
        /// Its description.
        description: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
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
    for m in MIGRATIONS {
        if applied.iter().any(|(v, _, _)| *v == m.version) {
            continue;
        }
        let started = std::time::Instant::now();
        let failed = |source| MigrateError::Failed {
            version: m.version,
            description: m.description,
            source,
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
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
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
}
