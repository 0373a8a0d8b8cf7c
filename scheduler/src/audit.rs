//! The audit chain on behalf of the node and the API: signed checkpoints of the chain's head
//! ("sealing"), and verification of the chain, its checkpoints, the ledger tables and the
//! records re-derived from it (licence counters, jobs, bills, bill lines).
//!
//! Signed heads (each one ed25519 signature with the node's ticket key):
//! - recorded as checkpoints (a row in `audit_checkpoints`; sealing a head already sealed
//!   writes nothing): at start, on demand (`tessera audit export`), and by
//!   [`AuditService::run_sealer`] at most [`SEAL_INTERVAL_MS`] after any other entry, so no
//!   entry stays unsealed longer than that while the node runs;
//! - signed without a write, for what leaves the node at once: the head after a job's
//!   admission in both its tickets, and the head in every receipt — a job's answer (its
//!   refusal, its end), a deposit's, a subscription's, a payout's —
//!   ([`AuditService::sign_head`]). A head that left the node is checked against the
//!   chain by `tessera audit verify --checkpoints FILE` whether or not it was recorded.

use std::sync::Arc;

use tessera_core::Clock;
use tessera_core::checkpoint::{NodeKey, SignedHead};
use tessera_core::ticket::TicketSigner;
use tessera_store::Store;
use tessera_store::audit::AuditProblem;

use crate::SchedulerError;

/// Longest time an entry stays without a signed checkpoint while the node runs.
pub const SEAL_INTERVAL_MS: u64 = 1_000;

/// How long a head signed by [`AuditService::sign_head`] is handed to later calls whose head it
/// covers, instead of signing another (ms).
pub const HEAD_REUSE_MS: i64 = 250;

/// Most entries a data item's operation log returns.
pub const DATA_ITEM_LOG_MAX: u32 = 100_000;

/// The entries whose details a data item's owner sees in its log: its own records and trade
/// steps, and its dataset key's making, releases and refusals (the job, the provider's own
/// worker and what its enclave attested). Everything else (a job's admission with the buyer's funds, its end, a settlement's
/// payment) shows as [`REDACTED_DETAIL`].
pub const OWNER_VISIBLE_KINDS: &[&str] = &[
    "dataset_create",
    "licence_create",
    "trade_licensor_key",
    "trade_register",
    "trade_publish",
    "trade_upload",
    "trade_revoke_publication",
    "trade_confirm",
    "trade_deliver",
    "trade_deliver_policy",
    "trade_licence_update",
    "tee_key_create",
    "tee_key_issue",
    "tee_key_release",
    "tee_key_refuse",
];

/// The detail shown in place of a redacted entry's.
pub const REDACTED_DETAIL: &str =
    r#"{"redacted":"the buyer's side; the operator's audit export holds it"}"#;

/// The outcome of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// The first entry that does not verify, if any (`None` when the chain is intact, even if
    /// a table differs from it).
    pub first_broken_seq: Option<u64>,
    /// What is wrong (every finding), or a summary when nothing is.
    pub detail: String,
    /// Signed checkpoints checked (their signatures under the node's key).
    pub checkpoints: u64,
    /// Every finding.
    pub problems: Vec<AuditProblem>,
}

impl AuditReport {
    /// Whether the chain, its checkpoints, the ledger tables and the re-derived records
    /// verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The audit chain: sealing and verification.
#[derive(Debug, Clone)]
pub struct AuditService {
    store: Store,
    signer: Arc<TicketSigner>,
    clock: Arc<dyn Clock>,
    /// Serialises sealing, so one head is signed once by this node.
    seal_lock: Arc<tokio::sync::Mutex<()>>,
    /// The head [`AuditService::sign_head`] signed last; the lock also makes concurrent
    /// calls share one signature.
    last_signed: Arc<tokio::sync::Mutex<Option<SignedHead>>>,
}

impl AuditService {
    /// The audit service of a node's store, sealing with the node's key (the scheduler makes
    /// one; `tessera audit export` makes one on a data directory).
    pub fn new(store: Store, signer: Arc<TicketSigner>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            signer,
            clock,
            seal_lock: Arc::new(tokio::sync::Mutex::new(())),
            last_signed: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The node's public key (hex), under which every checkpoint verifies.
    pub fn node_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }

    /// The chain's current head signed now, not recorded, for what leaves the node at once:
    /// a job's tickets and every receipt (a job's answer, a deposit's, a subscription's, a
    /// payout's). Nothing is written, so it stays out of the group commit's way; the
    /// background sealer records a checkpoint within [`SEAL_INTERVAL_MS`]. `None` for an
    /// empty chain.
    ///
    /// # Errors
    /// The store's; a stored hash that is not 32 bytes of hex is `Corrupt`.
    ///
    /// Concurrent calls share signatures: a call whose head (read when it is made, so covering
    /// whatever its caller wrote before) is already covered by the head signed last, less
    /// than [`HEAD_REUSE_MS`] ago, gets that one. Otherwise it signs the head as it stands
    /// once the calls before it are done, which covers the calls waiting behind it too. Under
    /// load one signature serves many admissions and receipts; an idle node signs afresh.
    pub async fn sign_head(&self) -> Result<Option<SignedHead>, SchedulerError> {
        let Some(head) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let mut last = self.last_signed.lock().await;
        let now = self.clock.now_ms();
        if let Some(s) = last.as_ref()
            && s.seq >= head.seq
            && (s.at_ms..s.at_ms.saturating_add(HEAD_REUSE_MS)).contains(&now)
        {
            return Ok(Some(s.clone()));
        }
        // Read again: entries written while this call waited are covered too.
        let head = self.store.audit_head().await?.unwrap_or(head);
        let signed = self
            .signer
            .sign_head(head.seq, &head.hash, now)
            .map_err(|e| tessera_store::StoreError::Corrupt(e.to_string()))?;
        *last = Some(signed.clone());
        Ok(Some(signed))
    }

    /// Signs and records a checkpoint of the chain's current head, unless the latest
    /// checkpoint already covers it; returns the latest signed head (`None` for an empty
    /// chain).
    ///
    /// # Errors
    /// The store's.
    pub async fn seal(&self) -> Result<Option<SignedHead>, SchedulerError> {
        let _one_at_a_time = self.seal_lock.lock().await;
        let latest = self.store.latest_checkpoint().await?;
        let head = self.store.audit_head().await?;
        match (head, latest) {
            (None, _) => Ok(None),
            (Some(h), Some(l)) if l.seq >= h.seq => Ok(Some(l)),
            (Some(_), _) => {
                let Some(signed) = self.sign_head().await? else {
                    return Ok(None);
                };
                self.store.record_checkpoint(&signed).await?;
                Ok(Some(signed))
            }
        }
    }

    /// Seals, logging (not returning) a failure: for callers whose own work is done and
    /// must not fail because of it; the next seal covers the entries.
    pub(crate) async fn seal_or_log(&self) {
        if let Err(e) = self.seal().await {
            tracing::warn!(error = %e, "sealing the audit chain's head failed");
        }
    }

    /// The latest recorded signed head (no signing, no write).
    ///
    /// # Errors
    /// The store's.
    pub async fn latest(&self) -> Result<Option<SignedHead>, SchedulerError> {
        Ok(self.store.latest_checkpoint().await?)
    }

    /// Every recorded checkpoint, by entry.
    ///
    /// # Errors
    /// The store's.
    pub async fn checkpoints(&self) -> Result<Vec<SignedHead>, SchedulerError> {
        Ok(self.store.checkpoints().await?)
    }

    /// Seals every [`SEAL_INTERVAL_MS`] (a no-op when the head has not moved); failures are
    /// logged and retried on the next tick.
    pub async fn run_sealer(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(SEAL_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.seal_or_log().await;
        }
    }

    /// A data item's operation log (at most [`DATA_ITEM_LOG_MAX`] entries; `true` when there
    /// were more) with a head signed now that covers it. Unless `full` (the operator), the
    /// details of entries that describe a buyer's side — admissions and refusals (its funds),
    /// job ends, settlements (how it paid) and anything not in [`OWNER_VISIBLE_KINDS`] — are
    /// replaced by [`REDACTED_DETAIL`]; their sequence numbers and hashes stay, so the chain's
    /// links can still be followed (only the operator's export recomputes their hashes).
    ///
    /// # Errors
    /// A store failure, or a head that cannot be signed.
    pub async fn data_item_log(
        &self,
        data_id: &str,
        full: bool,
    ) -> Result<
        (
            Vec<tessera_store::audit::AuditEntry>,
            bool,
            Option<SignedHead>,
        ),
        SchedulerError,
    > {
        let mut entries = self
            .store
            .data_item_log(data_id, DATA_ITEM_LOG_MAX + 1)
            .await?;
        let max = usize::try_from(DATA_ITEM_LOG_MAX).unwrap_or(usize::MAX);
        let truncated = entries.len() > max;
        entries.truncate(max);
        if !full {
            for e in &mut entries {
                if !OWNER_VISIBLE_KINDS.contains(&e.kind.as_str()) {
                    e.detail_json = REDACTED_DETAIL.to_owned();
                }
            }
        }
        let head = self.sign_head().await?;
        Ok((entries, truncated, head))
    }

    /// Re-computes the chain, checks it against the stored checkpoints (signatures under the
    /// node's own key), the ledger tables against the transfers the chain recorded and the
    /// licence counters, jobs, bills and bill lines against the entries that changed them,
    /// and names every finding once.
    ///
    /// # Errors
    /// The store's; a negative sequence number is corrupt data.
    pub async fn verify(&self) -> Result<AuditReport, SchedulerError> {
        let key = NodeKey::from_hex(&self.signer.public_key_hex())
            .map_err(|e| tessera_store::StoreError::Corrupt(e.to_string()))?;
        let v = self.store.verify_audit_with(Some(&key), &[]).await?;
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
            checkpoints: v.checkpoints,
            problems: v.problems,
        })
    }
}
