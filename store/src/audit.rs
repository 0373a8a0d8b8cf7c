//! The audit chain: an append-only log in which every entry carries the SHA-256 of its
//! predecessor, so that any edit, deletion or reordering of stored entries is detected by
//! [`crate::Store::verify_audit`], which names the first broken entry.
//!
//! Entries are appended inside the transaction that makes the decision they record, so a
//! decision and its audit entry are committed together or not at all. Triggers make the table
//! append-only (no update, no delete, an insert must extend the chain).
//!
//! A chain rewritten with every hash recomputed, or cut short, still links; what catches it is
//! a *signed checkpoint* of an earlier head ([`tessera_core::checkpoint::SignedHead`], kept in
//! `audit_checkpoints` and, above all, outside the database: tickets, receipts, export files):
//! [`verify_all`] names a chain that ends before a signed head (truncated) or hashes
//! differently at it (rewritten). It also re-derives every ledger transfer and every account's
//! totals from the `ledger_transfer` entries and compares them with the ledger tables, and each
//! licence scene's counters, each job row, each bill and each bill line from the entries that
//! changed them ([`crate::audit_records`]), so a consistent edit of those tables is caught too.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_accounting::TransferSpec;
use tessera_core::checkpoint::{NodeKey, SignedHead};

use crate::audit_records::check_records;
pub use crate::audit_records::{RecordTable, RecordTables, RecordsChecked, RowKey, StoredRow};
use crate::{Store, StoreError, TransferRecord};

/// Hash of the (absent) entry before the first.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When it was appended.
    pub at_ms: i64,
    /// What kind of decision (`admit`, `refuse`, `dispatch`, `complete`, `ledger`, ...).
    pub kind: String,
    /// What it is about (job id, licence id, transfer id).
    pub subject: String,
    /// Details as JSON.
    pub detail_json: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// What `verify` found wrong, one value per finding; the text names what broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum AuditProblem {
    /// An entry does not link to its predecessor, does not hash to its contents, or is missing
    /// from the middle of the chain.
    #[error("entry {seq}: {detail}")]
    Broken {
        /// The first entry that does not verify.
        seq: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// A signed head names an entry the chain no longer has: its last entries were deleted.
    #[error(
        "the chain was truncated: {origin} holds a head signed for entry {signed_seq}, but the \
         chain ends at entry {chain_len}"
    )]
    Truncated {
        /// The entry the signed head names.
        signed_seq: u64,
        /// Entries the chain has now.
        chain_len: u64,
        /// Where the signed head came from.
        origin: String,
    },
    /// The chain's entry at a signed head hashes differently from what was signed: the chain
    /// up to that entry was rewritten (even if every hash was recomputed).
    #[error(
        "the chain was rewritten: entry {seq} hashes to {chain_hash}, but {origin} holds the \
         head signed for it, {signed_hash}"
    )]
    Rewritten {
        /// The entry.
        seq: u64,
        /// Its hash in the chain now.
        chain_hash: String,
        /// The hash the node signed.
        signed_hash: String,
        /// Where the signed head came from.
        origin: String,
    },
    /// A checkpoint is not signed by the node's key, or does not parse.
    #[error("the checkpoint of entry {seq} in {origin} is refused: {reason}")]
    BadCheckpoint {
        /// The entry it names.
        seq: u64,
        /// Where it came from.
        origin: String,
        /// Why (wrong key, malformed).
        reason: String,
    },
    /// The ledger tables differ from the transfers the chain recorded.
    #[error("the ledger tables differ from the transfers the chain recorded: {detail}")]
    Ledger {
        /// The entry that recorded the transfer concerned, when there is one.
        seq: Option<u64>,
        /// What differs.
        detail: String,
    },
    /// A field of a stored row differs from what the chain's entries give.
    #[error("{row}: {field} is {stored}, the chain gives {chain} (entry {seq})")]
    RecordField {
        /// The table.
        table: RecordTable,
        /// The row, named (e.g. `licence L1 scene psi`, `job J`, `bill line B`).
        row: String,
        /// The field (e.g. `remaining_counts`, `charge_micros`).
        field: String,
        /// The stored value, as an SQL literal.
        stored: String,
        /// The value the chain gives, as an SQL literal.
        chain: String,
        /// The entry that last set it.
        seq: u64,
    },
    /// A stored row that no audit entry records.
    #[error("{row} is in the {table} table, but no audit entry records it")]
    RecordNotInChain {
        /// The table.
        table: RecordTable,
        /// The row, named.
        row: String,
    },
    /// A row the chain records that is gone from its table.
    #[error("{row}, recorded by entry {seq}, is missing from the {table} table")]
    RecordMissing {
        /// The table.
        table: RecordTable,
        /// The row, named.
        row: String,
        /// The entry that recorded it.
        seq: u64,
    },
    /// The chain's entries about a row do not make sense together (it is not compared).
    #[error("{row} cannot be re-derived from the chain: {reason}")]
    RecordUnderivable {
        /// The table.
        table: RecordTable,
        /// The row, named.
        row: String,
        /// The entry that could not be applied.
        seq: u64,
        /// Why.
        reason: String,
    },
}

impl AuditProblem {
    /// The entry the problem is about, when it is about one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Broken { seq, .. } | Self::Rewritten { seq, .. } => Some(*seq),
            Self::BadCheckpoint { seq, .. } => Some(*seq),
            Self::Truncated { chain_len, .. } => Some(chain_len.saturating_add(1)),
            Self::Ledger { seq, .. } => *seq,
            Self::RecordField { seq, .. }
            | Self::RecordMissing { seq, .. }
            | Self::RecordUnderivable { seq, .. } => Some(*seq),
            Self::RecordNotInChain { .. } => None,
        }
    }

    /// Whether the chain itself is broken (a link, a hash, a signed head, a checkpoint), as
    /// against a stored table that differs from an intact chain.
    pub fn is_chain(&self) -> bool {
        matches!(
            self,
            Self::Broken { .. }
                | Self::Truncated { .. }
                | Self::Rewritten { .. }
                | Self::BadCheckpoint { .. }
        )
    }
}

/// At most this many problems are listed (the rest are counted).
pub const AUDIT_PROBLEMS_MAX: usize = 32;

/// Where a checkpoint given to `verify` comes from, as named in its findings: the store's
/// table, or the label of an outside copy (an export file, a receipt).
pub const STORE_CHECKPOINTS: &str = "the store's checkpoint table";

/// The result of checking the chain, its signed checkpoints and the ledger tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not verify, if any (for a truncated chain: the first missing
    /// entry). `None` when the chain is intact, even if a table differs from it.
    pub first_broken_seq: Option<i64>,
    /// What is wrong (every finding, `; `-separated), or a summary when nothing is.
    pub detail: String,
    /// Distinct signed checkpoints checked (the store's and the outside ones; a head in
    /// both counted once).
    pub checkpoints: u64,
    /// Whether the checkpoints' signatures were checked (a node key was given).
    pub signatures_checked: bool,
    /// Ledger transfers re-derived from the chain and compared with the ledger tables.
    pub transfers: u64,
    /// Licence scene counters, jobs, bills, bill lines and the account tables re-derived and
    /// compared.
    pub records: RecordsChecked,
    /// Entries after the latest signed head (not yet covered by any checkpoint).
    pub unsealed_entries: u64,
    /// Every finding (each once), at most [`AUDIT_PROBLEMS_MAX`].
    pub problems: Vec<AuditProblem>,
    /// Findings beyond [`AUDIT_PROBLEMS_MAX`], counted only.
    pub more_problems: u64,
}

impl AuditVerification {
    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether the chain itself verified (links, hashes, signed heads), whatever the tables.
    pub fn chain_ok(&self) -> bool {
        !self.problems.iter().any(AuditProblem::is_chain)
    }

    /// One line saying how it went: what verified, where the chain broke, or that an intact
    /// chain disagrees with the stored tables.
    pub fn summary(&self) -> String {
        let n = self.problems.len() as u64 + self.more_problems;
        match self.first_broken_seq {
            _ if self.ok() => format!("audit chain OK: {}", self.detail),
            Some(seq) => format!("audit chain BROKEN at entry {seq}: {n} problem(s)"),
            None if !self.chain_ok() => format!("audit chain BROKEN: {n} problem(s)"),
            None => format!(
                "audit chain intact ({} entries), but the stored tables differ from it: {n} \
                 problem(s)",
                self.entries
            ),
        }
    }
}

/// A head of the chain: its number of entries and the last entry's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// Sequence number of the last entry (from 1).
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
}

/// The hash of an entry's contents chained to `prev_hash`.
pub fn entry_hash(
    prev_hash: &str,
    seq: i64,
    at_ms: i64,
    kind: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash,
        &seq.to_string(),
        &at_ms.to_string(),
        kind,
        subject,
        detail,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The head this process last appended (sequence number, hash): a guess at the chain's head
/// that spares each append a read of it. Only a guess, never trusted: the schema's
/// `audit_log_extends_the_chain` trigger refuses an entry that does not extend the real head
/// (the guess is stale after a rolled-back transaction, or belongs to another store of the
/// same process), and [`append`] then reads the head and appends once more.
static HEAD_GUESS: std::sync::Mutex<Option<(i64, String)>> = std::sync::Mutex::new(None);

/// What the trigger says of an entry that does not extend the chain.
const NOT_EXTENDING: &str = "an audit entry must extend the chain";

fn head_guess() -> Option<(i64, String)> {
    HEAD_GUESS.lock().map(|g| g.clone()).unwrap_or(None)
}

fn set_head_guess(head: Option<(i64, String)>) {
    if let Ok(mut g) = HEAD_GUESS.lock() {
        *g = head;
    }
}

/// Appends an entry inside the caller's transaction; returns its sequence number.
///
/// One statement when the head guessed from this process's last append is the chain's head,
/// otherwise a read of the head and a second try.
pub(crate) fn append(
    conn: &Connection,
    at_ms: i64,
    kind: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<i64, StoreError> {
    let detail = detail.to_string();
    if let Some((prev_seq, prev_hash)) = head_guess() {
        match insert_entry(conn, prev_seq, &prev_hash, at_ms, kind, subject, &detail) {
            Ok(seq) => return Ok(seq),
            // The trigger's `RAISE(ABORT, ..)`: SQLite's message is the text raised.
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains(NOT_EXTENDING) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let last = conn
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    let (prev_seq, prev_hash) = last.unwrap_or_else(|| (0, GENESIS_HASH.to_string()));
    Ok(insert_entry(
        conn, prev_seq, &prev_hash, at_ms, kind, subject, &detail,
    )?)
}

/// Inserts the entry after `(prev_seq, prev_hash)` and, once stored, makes it the guess.
fn insert_entry(
    conn: &Connection,
    prev_seq: i64,
    prev_hash: &str,
    at_ms: i64,
    kind: &str,
    subject: &str,
    detail: &str,
) -> Result<i64, rusqlite::Error> {
    let seq = prev_seq + 1;
    let hash = entry_hash(prev_hash, seq, at_ms, kind, subject, detail);
    conn.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, kind, subject, detail_json, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![seq, at_ms, kind, subject, detail, prev_hash, &hash])?;
    set_head_guess(Some((seq, hash)));
    Ok(seq)
}

/// Records a signed head inside the caller's transaction; a head already recorded for the
/// same entry is kept (both sign the same hash). The schema refuses a head the chain does not
/// have.
pub(crate) fn record_checkpoint_in(conn: &Connection, head: &SignedHead) -> Result<(), StoreError> {
    let seq = i64::try_from(head.seq).map_err(|_| StoreError::Invalid {
        field: "checkpoint seq",
        reason: format!("{} is out of range", head.seq),
    })?;
    conn.prepare_cached(
        "INSERT INTO audit_checkpoints (seq, head_hash, at_ms, signature_hex) VALUES (?, ?, ?, ?) \
         ON CONFLICT(seq) DO NOTHING",
    )?
    .execute(params![
        seq,
        &head.head_hash,
        head.at_ms,
        &head.signature_hex
    ])?;
    Ok(())
}

fn checkpoint_from_row(r: &rusqlite::Row<'_>) -> Result<SignedHead, StoreError> {
    let seq: i64 = r.get(0)?;
    Ok(SignedHead {
        seq: u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt(format!("checkpoint sequence number {seq}")))?,
        head_hash: r.get(1)?,
        at_ms: r.get(2)?,
        signature_hex: r.get(3)?,
    })
}

/// An entry from a row of `seq, at_ms, kind, subject, detail_json, prev_hash, hash`.
fn entry_of(r: &rusqlite::Row<'_>) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        kind: r.get(2)?,
        subject: r.get(3)?,
        detail_json: r.get(4)?,
        prev_hash: r.get(5)?,
        hash: r.get(6)?,
    })
}

impl Store {
    /// Appends an audit entry in its own transaction.
    pub async fn audit(
        &self,
        at_ms: i64,
        kind: &str,
        subject: &str,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let kind = kind.to_string();
        let subject = subject.to_string();
        let detail = detail.clone();
        self.write(move |conn| append(conn, at_ms, &kind, &subject, &detail))
            .await
    }

    /// All entries in order (for export and inspection).
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(audit_entries_on)
    }

    /// The operation log of one data item (trusted data space manual §4.3): every entry about
    /// the dataset itself (its record, trade registrations, publications, confirmations,
    /// settlements, deliveries, policies), about the licences granted on it, and about the
    /// jobs run under those licences (admissions and refusals with their reasons, deliveries,
    /// ends), in chain order; at most `limit` entries, from the first.
    ///
    /// # Errors
    /// `Db`.
    pub async fn data_item_log(
        &self,
        data_id: &str,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, kind, subject, detail_json, prev_hash, hash FROM audit_log \
             WHERE subject = ?1 \
             OR subject IN (SELECT licence_id FROM licences WHERE dataset_id = ?1) \
             OR subject IN (SELECT j.job_id FROM jobs j JOIN licences l ON l.licence_id = j.licence_id \
                            WHERE l.dataset_id = ?1) \
             OR subject IN (SELECT j.job_id FROM jobs j, \
                            json_each(CASE WHEN j.co_licences = '' THEN '[]' ELSE j.co_licences END) c \
                            JOIN licences l ON l.licence_id = json_extract(c.value, '$.licence_id') \
                            WHERE l.dataset_id = ?1) \
             ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![data_id, i64::from(limit)])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(entry_of(r)?);
            }
            Ok(out)
        })
    }

    /// The chain's head (its last entry), `None` for an empty chain.
    ///
    /// # Errors
    /// The database's; a negative sequence number is `Corrupt`.
    pub async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        let r = self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
                .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                .optional()?)
        })?;
        r.map(|(seq, hash)| {
            Ok(ChainHead {
                seq: u64::try_from(seq)
                    .map_err(|_| StoreError::Corrupt(format!("audit sequence number {seq}")))?,
                hash,
            })
        })
        .transpose()
    }

    /// Records a signed head of the chain (see [`record_checkpoint_in`]).
    ///
    /// # Errors
    /// The database's, including the schema's refusal of a head the chain does not have.
    pub async fn record_checkpoint(&self, head: &SignedHead) -> Result<(), StoreError> {
        let head = head.clone();
        self.write(move |conn| record_checkpoint_in(conn, &head))
            .await
    }

    /// Every recorded checkpoint, by entry.
    ///
    /// # Errors
    /// The database's; a negative sequence number is `Corrupt`.
    pub async fn checkpoints(&self) -> Result<Vec<SignedHead>, StoreError> {
        self.read(checkpoints_on)
    }

    /// The checkpoint of the latest entry, if any.
    ///
    /// # Errors
    /// The database's.
    pub async fn latest_checkpoint(&self) -> Result<Option<SignedHead>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, head_hash, at_ms, signature_hex FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            )?;
            let mut rows = stmt.query([])?;
            let latest = rows.next()?.map(checkpoint_from_row).transpose()?;
            Ok(latest)
        })
    }

    /// Recomputes the chain, checks it against the stored checkpoints (without their
    /// signatures: see [`Store::verify_audit_with`]), the ledger tables against the
    /// transfers the chain recorded, and the licence scene counters, jobs, bills and bill
    /// lines against the entries that changed them.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        self.verify_audit_with(None, &[]).await
    }

    /// As [`Store::verify_audit`], and also checks every stored checkpoint's signature under
    /// `key` (when given) and the chain against `external` checkpoints (each with the label
    /// its findings name, e.g. the export file's path).
    ///
    /// # Errors
    /// The database's (a finding is not an error: it is in the result); `Io` when the
    /// blocking thread it runs on could not run it (the runtime is shutting down).
    pub async fn verify_audit_with(
        &self,
        key: Option<&NodeKey>,
        external: &[(String, SignedHead)],
    ) -> Result<AuditVerification, StoreError> {
        // The whole chain and every records table are read and re-derived: work that grows
        // with the store's history, done on a blocking thread rather than the caller's task.
        let store = self.clone();
        let key = key.cloned();
        let external = external.to_vec();
        let verifying = tokio::task::spawn_blocking(move || {
            let (entries, mut checkpoints, ledger, records) = store.read(|conn| {
                // One read transaction: every table as of one snapshot, so that a write
                // landing between two reads on a live operator (a checkpoint, a job's end)
                // cannot look like a mismatch.
                let tx = conn.unchecked_transaction()?;
                let entries = audit_entries_on(&tx)?;
                let checkpoints: Vec<(String, SignedHead)> = checkpoints_on(&tx)?
                    .into_iter()
                    .map(|c| (STORE_CHECKPOINTS.to_string(), c))
                    .collect();
                let ledger = LedgerTables {
                    transfers: crate::ledger::transfers_on(&tx)?,
                    accounts: ledger_account_rows_on(&tx)?,
                };
                let records = Store::record_tables_on(&tx)?;
                tx.commit()?;
                Ok((entries, checkpoints, ledger, records))
            })?;
            checkpoints.extend(external);
            Ok(verify_all(
                &entries,
                &checkpoints,
                key.as_ref(),
                &ledger,
                &records,
            ))
        });
        match verifying.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Io(std::io::Error::other(format!(
                "the audit verification's thread did not run: {e}"
            )))),
        }
    }
}

/// One account's totals in micro-units, as stored in `ledger_accounts` or re-derived from the
/// chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountTotals {
    /// Account name.
    pub account: String,
    /// Posted debits.
    pub debits: i64,
    /// Posted credits.
    pub credits: i64,
    /// Debits reserved by open holds.
    pub debits_pending: i64,
    /// Credits reserved by open holds.
    pub credits_pending: i64,
}

/// The ledger tables as stored, for [`verify_all`].
#[derive(Debug, Clone, Default)]
pub struct LedgerTables {
    /// `ledger_transfers`, in the order written.
    pub transfers: Vec<TransferRecord>,
    /// `ledger_accounts`.
    pub accounts: Vec<AccountTotals>,
}

/// Checks a sequence of entries as read from the store: links and hashes only (no
/// checkpoints, no ledger).
pub fn verify_entries(entries: &[AuditEntry]) -> Option<AuditProblem> {
    let mut found = Findings::default();
    check_links(entries, &mut found);
    found.list.into_iter().next()
}

/// Findings, each once, bounded at [`AUDIT_PROBLEMS_MAX`] (the rest counted).
#[derive(Default)]
pub(crate) struct Findings {
    list: Vec<AuditProblem>,
    more: u64,
}

impl Findings {
    /// Adds a finding, unless the same one is listed already (two copies of one signed head,
    /// e.g. an export file's head and its list, name the same truncation once).
    pub(crate) fn push(&mut self, p: AuditProblem) {
        if self.list.contains(&p) {
            return;
        }
        if self.list.len() < AUDIT_PROBLEMS_MAX {
            self.list.push(p);
        } else {
            self.more = self.more.saturating_add(1);
        }
    }
}

/// Checks the chain's links and hashes, the chain against signed heads (their signatures
/// under `key` when given; each labelled with where it came from), the ledger tables
/// against the transfers the chain recorded, and the records tables (licence scene
/// counters, jobs, bills, bill lines) against their re-derivation from the chain.
pub fn verify_all(
    entries: &[AuditEntry],
    checkpoints: &[(String, SignedHead)],
    key: Option<&NodeKey>,
    ledger: &LedgerTables,
    records: &RecordTables,
) -> AuditVerification {
    let mut found = Findings::default();
    check_links(entries, &mut found);
    check_checkpoints(entries, checkpoints, key, &mut found);
    let transfers = check_ledger(entries, ledger, &mut found);
    let checked = check_records(entries, records, &mut found);
    let chain_len = entries.len() as u64;
    let latest = checkpoints
        .iter()
        .map(|(_, c)| c.seq)
        .filter(|s| *s <= chain_len)
        .max()
        .unwrap_or(0);
    let first_broken_seq = found
        .list
        .iter()
        .filter(|p| p.is_chain())
        .filter_map(AuditProblem::seq)
        .min()
        .and_then(|s| i64::try_from(s).ok());
    let detail = if found.list.is_empty() {
        let mut d = format!(
            "{chain_len} entries, {} signed checkpoints{}, {transfers} ledger transfers, {} \
             licence scene counters, {} jobs, {} bills, {} bill lines and {} account rows \
             verified",
            checkpoints.len(),
            if key.is_some() {
                " (signatures checked)"
            } else {
                ""
            },
            checked.licence_scenes,
            checked.jobs,
            checked.bills,
            checked.bill_lines,
            checked.accounts,
        );
        if checked.partly_checked > 0 {
            d.push_str(&format!(
                "; {} rows were checked only in the fields their (older) entries record",
                checked.partly_checked
            ));
        }
        d
    } else {
        let mut d: Vec<String> = found.list.iter().map(ToString::to_string).collect();
        if found.more > 0 {
            d.push(format!("and {} more", found.more));
        }
        d.join("; ")
    };
    AuditVerification {
        entries: chain_len,
        first_broken_seq,
        detail,
        // The same signed head in the store and in an auditor's file is one checkpoint.
        checkpoints: checkpoints
            .iter()
            .map(|(_, h)| h)
            .collect::<std::collections::HashSet<_>>()
            .len() as u64,
        signatures_checked: key.is_some(),
        transfers,
        records: checked,
        unsealed_entries: chain_len.saturating_sub(latest),
        problems: found.list,
        more_problems: found.more,
    }
}

fn check_links(entries: &[AuditEntry], found: &mut Findings) {
    let mut prev_hash = GENESIS_HASH.to_string();
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        let broken = |detail: String| AuditProblem::Broken {
            seq: expected_seq,
            detail,
        };
        if u64::try_from(e.seq).ok() != Some(expected_seq) {
            found.push(broken(format!(
                "expected entry {expected_seq}, found {} (entry missing or reordered)",
                e.seq
            )));
            return;
        }
        if e.prev_hash != prev_hash {
            found.push(broken(format!(
                "entry {} does not link to its predecessor",
                e.seq
            )));
            return;
        }
        let h = entry_hash(
            &e.prev_hash,
            e.seq,
            e.at_ms,
            &e.kind,
            &e.subject,
            &e.detail_json,
        );
        if h != e.hash {
            found.push(broken(format!(
                "entry {} was altered: its hash does not match its contents",
                e.seq
            )));
            return;
        }
        prev_hash = h;
    }
}

fn check_checkpoints(
    entries: &[AuditEntry],
    checkpoints: &[(String, SignedHead)],
    key: Option<&NodeKey>,
    found: &mut Findings,
) {
    let chain_len = entries.len() as u64;
    // One truncation finding per source of signed heads: its latest head past the end proves
    // it (every earlier one past the end says the same).
    let mut truncated: Vec<(String, u64)> = Vec::new();
    for (origin, c) in checkpoints {
        if let Some(key) = key
            && let Err(e) = key.verify(c)
        {
            found.push(AuditProblem::BadCheckpoint {
                seq: c.seq,
                origin: origin.clone(),
                reason: e.to_string(),
            });
            continue;
        }
        let entry = usize::try_from(c.seq)
            .ok()
            .and_then(|s| s.checked_sub(1))
            .and_then(|i| entries.get(i));
        match entry {
            _ if c.seq == 0 => found.push(AuditProblem::BadCheckpoint {
                seq: 0,
                origin: origin.clone(),
                reason: "a checkpoint names an entry from 1".into(),
            }),
            None => match truncated.iter_mut().find(|(o, _)| o == origin) {
                Some((_, seq)) => *seq = (*seq).max(c.seq),
                None => truncated.push((origin.clone(), c.seq)),
            },
            Some(e) if !e.hash.eq_ignore_ascii_case(&c.head_hash) => {
                found.push(AuditProblem::Rewritten {
                    seq: c.seq,
                    chain_hash: e.hash.clone(),
                    signed_hash: c.head_hash.clone(),
                    origin: origin.clone(),
                });
            }
            Some(_) => {}
        }
    }
    for (origin, signed_seq) in truncated {
        found.push(AuditProblem::Truncated {
            signed_seq,
            chain_len,
            origin,
        });
    }
}

/// The detail of a `ledger_transfer` entry (written by the store's ledger).
#[derive(Debug, Deserialize)]
struct ChainTransfer {
    kind: String,
    pending_id: Option<String>,
    transfer: TransferSpec,
}

/// Kind of the audit entries that record ledger transfers.
pub(crate) const LEDGER_TRANSFER: &str = "ledger_transfer";

/// Re-derives the transfers and account totals from the chain's `ledger_transfer` entries and
/// compares them with the ledger tables; returns the number of transfers the chain recorded.
fn check_ledger(entries: &[AuditEntry], ledger: &LedgerTables, found: &mut Findings) -> u64 {
    let mut chain: HashMap<&str, (u64, i64, ChainTransfer)> = HashMap::new();
    let mut order = Vec::new();
    for e in entries.iter().filter(|e| e.kind == LEDGER_TRANSFER) {
        let seq = u64::try_from(e.seq).unwrap_or(0);
        match serde_json::from_str::<ChainTransfer>(&e.detail_json) {
            Ok(t) if t.transfer.id == e.subject => {
                if chain.contains_key(e.subject.as_str()) {
                    found.push(AuditProblem::Ledger {
                        seq: Some(seq),
                        detail: format!("transfer {} is recorded twice", e.subject),
                    });
                    continue;
                }
                order.push(e.subject.as_str());
                chain.insert(e.subject.as_str(), (seq, e.at_ms, t));
            }
            Ok(t) => found.push(AuditProblem::Ledger {
                seq: Some(seq),
                detail: format!(
                    "entry {seq} is about transfer {} but records {}",
                    e.subject, t.transfer.id
                ),
            }),
            Err(err) => found.push(AuditProblem::Ledger {
                seq: Some(seq),
                detail: format!("entry {seq} does not hold a readable transfer: {err}"),
            }),
        }
    }
    let mut in_table = std::collections::HashSet::new();
    for t in &ledger.transfers {
        in_table.insert(t.spec.id.as_str());
        let Some((seq, at_ms, c)) = chain.get(t.spec.id.as_str()) else {
            found.push(AuditProblem::Ledger {
                seq: None,
                detail: format!(
                    "transfer {} is in the ledger table but no audit entry records it",
                    t.spec.id
                ),
            });
            continue;
        };
        let diffs = transfer_diffs(t, *at_ms, c);
        if !diffs.is_empty() {
            found.push(AuditProblem::Ledger {
                seq: Some(*seq),
                detail: format!(
                    "transfer {} differs from entry {seq}: {}",
                    t.spec.id,
                    diffs.join(", ")
                ),
            });
        }
    }
    for id in &order {
        if !in_table.contains(id)
            && let Some((seq, _, _)) = chain.get(id)
        {
            found.push(AuditProblem::Ledger {
                seq: Some(*seq),
                detail: format!(
                    "transfer {id} recorded by entry {seq} is missing from the ledger table"
                ),
            });
        }
    }
    check_accounts(&order, &chain, &ledger.accounts, found);
    order.len() as u64
}

fn transfer_diffs(t: &TransferRecord, at_ms: i64, c: &ChainTransfer) -> Vec<String> {
    let mut d = Vec::new();
    let mut field = |name: &str, table: String, chain: String| {
        if table != chain {
            d.push(format!("{name} {table} in the table, {chain} in the chain"));
        }
    };
    field(
        "debit account",
        t.spec.debit.clone(),
        c.transfer.debit.clone(),
    );
    field(
        "credit account",
        t.spec.credit.clone(),
        c.transfer.credit.clone(),
    );
    field(
        "amount",
        t.spec.amount_micros.to_string(),
        c.transfer.amount_micros.to_string(),
    );
    field(
        "job",
        format!("{:?}", t.spec.job_id),
        format!("{:?}", c.transfer.job_id),
    );
    field(
        "memo",
        format!("{:?}", t.spec.memo),
        format!("{:?}", c.transfer.memo),
    );
    field("kind", t.kind.clone(), c.kind.clone());
    field(
        "hold",
        format!("{:?}", t.pending_id),
        format!("{:?}", c.pending_id),
    );
    field("time", t.created_at_ms.to_string(), at_ms.to_string());
    d
}

/// Applies one transfer recorded by the chain to the derived totals.
fn derive_one(
    totals: &mut BTreeMap<String, AccountTotals>,
    chain: &HashMap<&str, (u64, i64, ChainTransfer)>,
    c: &ChainTransfer,
) -> Result<(), String> {
    let a = c.transfer.amount_micros;
    let held = match (c.kind.as_str(), &c.pending_id) {
        ("posted" | "pending", _) => 0,
        ("post_pending" | "void_pending", Some(p)) => match chain.get(p.as_str()) {
            Some((_, _, h)) if h.kind == "pending" => h.transfer.amount_micros,
            _ => {
                return Err(format!(
                    "it resolves hold {p}, which the chain does not record"
                ));
            }
        },
        (kind, _) => return Err(format!("unknown kind {kind:?}")),
    };
    let (posted, pending) = match c.kind.as_str() {
        "posted" => (a, 0),
        "pending" => (0, a),
        "post_pending" => (a, held.checked_neg().ok_or("overflow")?),
        _ => (0, held.checked_neg().ok_or("overflow")?),
    };
    let overflow = || "the sums overflow".to_string();
    let debit = totals
        .entry(c.transfer.debit.clone())
        .or_insert_with(|| AccountTotals {
            account: c.transfer.debit.clone(),
            ..AccountTotals::default()
        });
    debit.debits = debit.debits.checked_add(posted).ok_or_else(overflow)?;
    debit.debits_pending = debit
        .debits_pending
        .checked_add(pending)
        .ok_or_else(overflow)?;
    let credit = totals
        .entry(c.transfer.credit.clone())
        .or_insert_with(|| AccountTotals {
            account: c.transfer.credit.clone(),
            ..AccountTotals::default()
        });
    credit.credits = credit.credits.checked_add(posted).ok_or_else(overflow)?;
    credit.credits_pending = credit
        .credits_pending
        .checked_add(pending)
        .ok_or_else(overflow)?;
    Ok(())
}

fn check_accounts(
    order: &[&str],
    chain: &HashMap<&str, (u64, i64, ChainTransfer)>,
    accounts: &[AccountTotals],
    found: &mut Findings,
) {
    let mut derived: BTreeMap<String, AccountTotals> = BTreeMap::new();
    for id in order {
        let Some((seq, _, c)) = chain.get(id) else {
            continue;
        };
        if let Err(why) = derive_one(&mut derived, chain, c) {
            found.push(AuditProblem::Ledger {
                seq: Some(*seq),
                detail: format!("transfer {id} (entry {seq}) cannot be re-derived: {why}"),
            });
            return;
        }
    }
    let show = |t: &AccountTotals| {
        format!(
            "debits {}, credits {}, pending debits {}, pending credits {}",
            t.debits, t.credits, t.debits_pending, t.credits_pending
        )
    };
    for stored in accounts {
        let want = derived
            .remove(&stored.account)
            .unwrap_or_else(|| AccountTotals {
                account: stored.account.clone(),
                ..AccountTotals::default()
            });
        if &want != stored {
            // Name each total that differs, with both values.
            let diffs: Vec<String> = [
                ("debits", stored.debits, want.debits),
                ("credits", stored.credits, want.credits),
                ("pending debits", stored.debits_pending, want.debits_pending),
                (
                    "pending credits",
                    stored.credits_pending,
                    want.credits_pending,
                ),
            ]
            .into_iter()
            .filter(|(_, got, want)| got != want)
            .map(|(field, got, want)| {
                format!("{field} is {got}, the chain's transfers give {want}")
            })
            .collect();
            found.push(AuditProblem::Ledger {
                seq: None,
                detail: format!("account {}: {}", stored.account, diffs.join("; ")),
            });
        }
    }
    for (name, want) in derived {
        found.push(AuditProblem::Ledger {
            seq: None,
            detail: format!(
                "account {name} is missing from the table; the chain's transfers give {}",
                show(&want)
            ),
        });
    }
}

/// All entries in order, on `conn`.
fn audit_entries_on(conn: &Connection) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, kind, subject, detail_json, prev_hash, hash FROM audit_log ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(entry_of(r)?);
    }
    Ok(out)
}

/// All checkpoints in order, on `conn`.
fn checkpoints_on(conn: &Connection) -> Result<Vec<SignedHead>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, head_hash, at_ms, signature_hex FROM audit_checkpoints ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(checkpoint_from_row(r)?);
    }
    Ok(out)
}

/// `ledger_accounts`, on `conn`.
fn ledger_account_rows_on(conn: &Connection) -> Result<Vec<AccountTotals>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, debits_micros, credits_micros, debits_pending_micros, credits_pending_micros \
         FROM ledger_accounts ORDER BY name",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(AccountTotals {
            account: r.get(0)?,
            debits: r.get(1)?,
            credits: r.get(2)?,
            debits_pending: r.get(3)?,
            credits_pending: r.get(4)?,
        });
    }
    Ok(out)
}
