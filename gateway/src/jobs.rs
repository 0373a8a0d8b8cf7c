//! Job RPCs: submit, get, watch, cancel. The wire's loose types become a strict
//! [`JobRequest`] here, once.

use tessera_core::{KeyCase, PsiMode};
use tessera_proto::decode;
use tessera_proto::v1 as pb;
use tessera_scheduler::{AuditService, JobRequest, JobView, Scheduler};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use crate::BoxStream;
use crate::convert::job_to_pb;
use crate::error::{invalid, status};

/// The scene a request that names none runs (the only one built).
const DEFAULT_SCENE: &str = tessera_core::job::scene::PSI;

/// Parses a submission: groups from their comma-separated list, enums strictly (an unset or
/// unknown mode or key case is `INVALID_ARGUMENT`).
fn job_request(r: pb::SubmitJobRequest) -> Result<JobRequest, Status> {
    let user_groups = r
        .user_groups
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    Ok(JobRequest {
        user: r.user,
        user_groups,
        licence_id: r.licence_id,
        scene: if r.scene.is_empty() {
            DEFAULT_SCENE.into()
        } else {
            r.scene
        },
        buyer_party: r.buyer_party,
        buyer_dataset_id: r.buyer_dataset_id,
        buyer_columns: r.buyer_columns,
        provider_columns: r.provider_columns,
        mode: decode::<PsiMode>(r.mode).map_err(invalid)?,
        key_case: decode::<KeyCase>(r.key_case).map_err(invalid)?,
        output: r.output,
    })
}

/// A job's answer with the signed head of the audit chain (the receipt): for an ended job a
/// head covering its end (sealed now if no checkpoint covers it yet: the end is readable as
/// soon as it is committed), otherwise the latest checkpoint (the dispatch's covers the
/// admission).
async fn receipt(audit: &AuditService, v: &JobView) -> Result<pb::Job, Status> {
    let mut j = job_to_pb(v);
    j.audit_head = if v.job.is_terminal() {
        crate::audit::seal(audit).await?
    } else {
        crate::audit::latest(audit).await?
    };
    Ok(j)
}

pub(crate) async fn submit(s: &Scheduler, r: pb::SubmitJobRequest) -> Result<pb::Job, Status> {
    let view = s.submit(job_request(r)?).await.map_err(|e| status(&e))?;
    receipt(&s.audit(), &view).await
}

pub(crate) async fn get(s: &Scheduler, r: pb::JobRef) -> Result<pb::Job, Status> {
    let v = s.job(&r.job_id).await.map_err(|e| status(&e))?;
    receipt(&s.audit(), &v).await
}

pub(crate) async fn watch(s: &Scheduler, r: pb::JobRef) -> Result<BoxStream<pb::Job>, Status> {
    let rx = s.watch(&r.job_id).await.map_err(|e| status(&e))?;
    let audit = s.audit();
    // Ends after the first terminal state, which carries the signed head (the receipt).
    let stream = futures::StreamExt::scan(WatchStream::new(rx), false, |done, v| {
        let out = if *done {
            None
        } else {
            *done = v.job.is_terminal();
            Some((*done, v))
        };
        futures::future::ready(out)
    });
    let stream = futures::StreamExt::then(stream, move |(last, v)| {
        let audit = audit.clone();
        async move {
            if last {
                receipt(&audit, &v).await
            } else {
                Ok(job_to_pb(&v))
            }
        }
    });
    Ok(Box::pin(stream))
}

pub(crate) async fn cancel(s: &Scheduler, r: pb::JobRef, user: &str) -> Result<pb::Job, Status> {
    let v = s.cancel(&r.job_id, user).await.map_err(|e| status(&e))?;
    receipt(&s.audit(), &v).await
}
