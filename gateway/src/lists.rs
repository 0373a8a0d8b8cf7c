//! Listing RPCs (jobs, datasets, licences, workers) and the operator's info: the page and the
//! filters parsed once, the scheduler's page mapped to the wire.

use tessera_auth::Viewer;
use tessera_core::{JobState, WorkerAttributes};
use tessera_proto::decode;
use tessera_proto::v1 as pb;
use tessera_scheduler::lists::{JobFilter, LicenceFilter, PageQuery, rows_of};
use tessera_scheduler::redact::redact;
use tessera_scheduler::{RecordService, Scheduler};
use tonic::Status;

use crate::convert::{dataset_to_pb, job_to_pb, licence_to_pb};
use crate::error::{invalid, status};

fn page(p: Option<pb::PageQuery>) -> PageQuery {
    let p = p.unwrap_or_default();
    PageQuery {
        size: p.page_size,
        token: p.page_token,
    }
}

/// The state filter: unspecified (0) is "any state"; an unknown number is refused.
fn state_filter(v: i32) -> Result<Option<JobState>, Status> {
    if v == pb::JobState::Unspecified as i32 {
        return Ok(None);
    }
    decode::<JobState>(v).map(Some).map_err(invalid)
}

/// A page of the jobs `viewer` may see, each shown as it may see it
/// (`tessera_scheduler::redact`, the same rule as `GetJob`): results, charges and the other
/// side's failure detail only to their party.
pub(crate) async fn jobs(
    s: &Scheduler,
    r: pb::JobQuery,
    viewer: &Viewer,
) -> Result<pb::JobList, Status> {
    let filter = JobFilter {
        user: r.user,
        state: state_filter(r.state)?,
        licence_id: r.licence_id,
        viewer: rows_of(viewer).map_err(|e| status(&e))?.to_owned(),
    };
    let l = s
        .list_jobs(&filter, &page(r.page))
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::JobList {
        jobs: l
            .items
            .iter()
            .map(|v| job_to_pb(&redact(v, viewer)))
            .collect(),
        next_page_token: l.next_token,
    })
}

pub(crate) async fn datasets(
    s: &RecordService,
    r: pb::DatasetQuery,
    viewer: &Viewer,
) -> Result<pb::DatasetList, Status> {
    let l = s
        .list_datasets(&r.owner_party, viewer, &page(r.page))
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::DatasetList {
        datasets: l.items.into_iter().map(dataset_to_pb).collect(),
        next_page_token: l.next_token,
    })
}

pub(crate) async fn licences(
    s: &RecordService,
    r: pb::LicenceQuery,
    viewer: &Viewer,
) -> Result<pb::LicenceList, Status> {
    let filter = LicenceFilter {
        licensor: r.licensor,
        licensee: r.licensee,
        dataset_id: r.dataset_id,
        viewer: rows_of(viewer).map_err(|e| status(&e))?.to_owned(),
    };
    let l = s
        .list_licences(&filter, &page(r.page))
        .await
        .map_err(|e| status(&e))?;
    let mut licences = Vec::with_capacity(l.items.len());
    for item in &l.items {
        licences.push(crate::records::with_withdrawal(s, licence_to_pb(item)?).await?);
    }
    Ok(pb::LicenceList {
        licences,
        next_page_token: l.next_token,
    })
}

fn attrs_to_pb(a: WorkerAttributes) -> pb::WorkerAttributes {
    pb::WorkerAttributes {
        party: a.party,
        region: a.region,
        compute_centre: a.compute_centre,
        hardware: a.hardware,
        ai_frameworks: a.ai_frameworks,
        software_env: a.software_env,
    }
}

pub(crate) async fn workers(
    s: &Scheduler,
    r: pb::WorkerQuery,
    viewer: &Viewer,
) -> Result<pb::WorkerList, Status> {
    let l = s
        .list_workers(&r.party, viewer, &page(r.page))
        .await
        .map_err(|e| status(&e))?;
    let attested = s.tee_current();
    Ok(pb::WorkerList {
        workers: l
            .items
            .into_iter()
            .map(|w| {
                let tee = attested.get(&w.record.worker_id);
                pb::WorkerInfo {
                    tee_kind: tee
                        .map(|a| a.appraisal.kind.as_str().to_string())
                        .unwrap_or_default(),
                    tee_status: tee
                        .and_then(|a| serde_json::to_value(a.appraisal.status).ok())
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    tee_expires_ms: tee
                        .map(|a| {
                            i64::try_from(a.exp)
                                .unwrap_or(i64::MAX / 1000)
                                .saturating_mul(1000)
                        })
                        .unwrap_or(0),
                    worker_id: w.record.worker_id,
                    attributes: Some(attrs_to_pb(w.record.attributes)),
                    peer_addr: w.record.peer_addr,
                    last_seen_ms: w.record.last_seen_ms,
                    live: w.live,
                    running_tasks: u64::try_from(w.running).unwrap_or(u64::MAX),
                }
            })
            .collect(),
        next_page_token: l.next_token,
    })
}

pub(crate) fn info(s: &Scheduler) -> pb::OperatorInfo {
    pb::OperatorInfo {
        time_zone: s.time_zone(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}
