//! Audit RPCs over the scheduler's audit service.

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
    })
}
