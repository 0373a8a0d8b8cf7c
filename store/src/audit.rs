//! The audit chain: an append-only log in which every entry carries the SHA-256 of its
//! predecessor, so that any edit, deletion or reordering of stored entries is detected by
//! [`crate::Store::verify_audit`], which names the first broken entry.
//!
//! Entries are appended inside the transaction that makes the decision they record, so a
//! decision and its audit entry are committed together or not at all.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection};

use crate::{Store, StoreError};

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

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not verify, if any.
    pub first_broken_seq: Option<i64>,
    /// What is wrong with it.
    pub detail: String,
}

impl AuditVerification {
    /// Whether the whole chain verified.
    pub fn ok(&self) -> bool {
        self.first_broken_seq.is_none()
    }
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

/// Appends an entry inside the caller's transaction.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    at_ms: i64,
    kind: &str,
    subject: &str,
    detail: &serde_json::Value,
) -> Result<i64, StoreError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (prev_seq, prev_hash) = match last {
        Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
        None => (0, GENESIS_HASH.to_string()),
    };
    let seq = prev_seq + 1;
    let detail = detail.to_string();
    let hash = entry_hash(&prev_hash, seq, at_ms, kind, subject, &detail);
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, kind, subject, detail_json, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at_ms)
    .bind(kind)
    .bind(subject)
    .bind(&detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(seq)
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
        let mut tx = self.write.begin().await?;
        let seq = append(&mut tx, at_ms, kind, subject, detail).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// All entries in order (for export and inspection).
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, subject, detail_json, prev_hash, hash FROM audit_log ORDER BY seq",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    seq: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    subject: r.try_get(3)?,
                    detail_json: r.try_get(4)?,
                    prev_hash: r.try_get(5)?,
                    hash: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Recomputes the chain and reports the first entry that does not verify.
    pub async fn verify_audit(&self) -> Result<AuditVerification, StoreError> {
        let entries = self.audit_entries().await?;
        Ok(verify_entries(&entries))
    }
}

/// Checks a sequence of entries as read from the store.
pub fn verify_entries(entries: &[AuditEntry]) -> AuditVerification {
    let mut prev_hash = GENESIS_HASH.to_string();
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        let broken = |detail: String| AuditVerification {
            entries: entries.len() as u64,
            first_broken_seq: Some(expected_seq),
            detail,
        };
        if e.seq != expected_seq {
            return broken(format!(
                "expected entry {expected_seq}, found {} (entry missing or reordered)",
                e.seq
            ));
        }
        if e.prev_hash != prev_hash {
            return broken(format!("entry {} does not link to its predecessor", e.seq));
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
            return broken(format!(
                "entry {} was altered: its hash does not match its contents",
                e.seq
            ));
        }
        prev_hash = h;
    }
    AuditVerification {
        entries: entries.len() as u64,
        first_broken_seq: None,
        detail: format!("{} entries verified", entries.len()),
    }
}
