//! Audit RPCs over the scheduler's audit service, and the signed heads that receipts carry.

use tessera_core::checkpoint::SignedHead;
use tessera_proto::v1 as pb;
use tessera_scheduler::AuditService;
use tonic::Status;

use crate::error::status;

pub(crate) async fn verify(s: &AuditService) -> Result<pb::AuditVerification, Status> {
    let v = s.verify().await.map_err(|e| status(&e))?;
    Ok(pb::AuditVerification {
        ok: v.ok(),
        entries: v.entries,
        first_broken_seq: v.first_broken_seq,
        detail: v.detail,
        checkpoints: v.checkpoints,
        problems: v.problems.iter().map(ToString::to_string).collect(),
    })
}

fn head_to_pb(h: SignedHead) -> pb::SignedHead {
    pb::SignedHead {
        seq: h.seq,
        head_hash: h.head_hash,
        at_ms: h.at_ms,
        signature_hex: h.signature_hex,
    }
}

/// A signed head covering everything recorded so far (signed now, not recorded), for the
/// receipt of a change the caller just made.
pub(crate) async fn receipt_head(s: &AuditService) -> Result<Option<pb::SignedHead>, Status> {
    Ok(s.sign_head().await.map_err(|e| status(&e))?.map(head_to_pb))
}

/// A data item's operation log with a head signed now and the node's key.
pub(crate) async fn data_item_log(
    s: &AuditService,
    r: pb::DatasetRef,
    full: bool,
) -> Result<pb::OperationLog, Status> {
    let (entries, truncated, head) = s
        .data_item_log(&r.dataset_id, full)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::OperationLog {
        dataset_id: r.dataset_id,
        entries: entries
            .into_iter()
            .map(|e| pb::AuditLogEntry {
                seq: u64::try_from(e.seq).unwrap_or_default(),
                at_ms: e.at_ms,
                kind: e.kind,
                subject: e.subject,
                detail_json: e.detail_json,
                prev_hash: e.prev_hash,
                hash: e.hash,
            })
            .collect(),
        audit_head: head.map(head_to_pb),
        node_key_hex: s.node_key_hex(),
        truncated,
    })
}
