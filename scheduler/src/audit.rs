//! The audit chain on behalf of the API: verification of the hash chain.

use tessera_store::Store;

use crate::SchedulerError;

/// The outcome of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not verify, if any.
    pub first_broken_seq: Option<u64>,
    /// What is wrong with it (empty when the chain verifies).
    pub detail: String,
}

impl AuditReport {
    /// Whether the whole chain verified.
    pub fn ok(&self) -> bool {
        self.first_broken_seq.is_none()
    }
}

/// The audit chain.
#[derive(Debug, Clone)]
pub struct AuditService {
    store: Store,
}

impl AuditService {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Re-computes the chain and names the first broken entry.
    ///
    /// # Errors
    /// The store's; a negative sequence number is corrupt data.
    pub async fn verify(&self) -> Result<AuditReport, SchedulerError> {
        let v = self.store.verify_audit().await?;
        let first_broken_seq = v
            .first_broken_seq
            .map(|s| {
                u64::try_from(s).map_err(|_| {
                    SchedulerError::Store(tessera_store::StoreError::Corrupt(format!(
                        "audit sequence number {s}"
                    )))
                })
            })
            .transpose()?;
        Ok(AuditReport {
            entries: v.entries,
            first_broken_seq,
            detail: v.detail,
        })
    }
}
