//! Worker-facing RPCs: registration, heartbeats, the task stream, progress and results.

use tessera_auth::Caller;
use tessera_core::{TaskErrorKind, WorkerAttributes};
use tessera_proto::v1 as pb;
use tessera_scheduler::{Delivery, ResultFileRecord, Scheduler, TaskReport, TaskUsage};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::BoxStream;
use crate::error::{invalid, status};

/// Longest error kind, error text and result location a worker may report (characters).
const ERROR_KIND_CHARS_MAX: usize = 32;
const ERROR_CHARS_MAX: usize = 4096;
const LOCATION_CHARS_MAX: usize = 256;

/// The attributes a registration declares.
///
/// # Errors
/// `INVALID_ARGUMENT` when they are missing.
pub(crate) fn attributes(r: &pb::RegisterWorkerRequest) -> Result<WorkerAttributes, Status> {
    let a = r
        .attributes
        .clone()
        .ok_or_else(|| invalid("attributes are required"))?;
    Ok(WorkerAttributes {
        party: a.party,
        region: a.region,
        compute_centre: a.compute_centre,
        hardware: a.hardware,
        ai_frameworks: a.ai_frameworks,
        software_env: a.software_env,
    })
}

/// A registration by `caller` declaring `attrs` (parsed once by [`attributes`]), authorised
/// by `AccountService::check_registration`.
pub(crate) async fn register(
    s: &Scheduler,
    caller: &Caller,
    attrs: WorkerAttributes,
    r: pb::RegisterWorkerRequest,
) -> Result<pb::RegisterWorkerResponse, Status> {
    let reg = s
        .register_worker(
            caller,
            Some(r.worker_id),
            attrs,
            r.peer_addr,
            Some(r.csr_pem),
        )
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::RegisterWorkerResponse {
        worker_id: reg.worker_id,
        operator_key_hex: s.operator_key_hex(),
        heartbeat_interval_ms: s.config().heartbeat_interval_ms,
        worker_token: reg
            .credential
            .map(|t| t.reveal().to_string())
            .unwrap_or_default(),
        ca_pem: if reg.certificate_pem.is_some() {
            s.ca_pem().unwrap_or_default()
        } else {
            String::new()
        },
        certificate_pem: reg.certificate_pem.unwrap_or_default(),
    })
}

pub(crate) async fn renew_certificate(
    s: &Scheduler,
    r: pb::CertificateRequest,
) -> Result<pb::IssuedCertificate, Status> {
    let (certificate_pem, not_after_ms) = s
        .renew_certificate(&r.worker_id, &r.csr_pem)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::IssuedCertificate {
        certificate_pem,
        ca_pem: s.ca_pem().unwrap_or_default(),
        not_after_ms,
    })
}

pub(crate) async fn heartbeat(s: &Scheduler, r: pb::HeartbeatRequest) -> Result<(), Status> {
    s.heartbeat(&r.worker_id).await.map_err(|e| status(&e))
}

pub(crate) async fn pull_tasks(
    s: &Scheduler,
    r: pb::PullTasksRequest,
) -> Result<BoxStream<pb::TaskEnvelope>, Status> {
    let rx = s
        .connect(&r.worker_id, &r.running_task_ids)
        .await
        .map_err(|e| status(&e))?;
    let stream = ReceiverStream::new(rx).map(|d| {
        Ok(pb::TaskEnvelope {
            kind: Some(match d {
                Delivery::Assign { spec_json, ticket } => {
                    pb::task_envelope::Kind::Assign(pb::TaskAssignment {
                        spec_json: spec_json.into_bytes().into(),
                        ticket_body: ticket.body,
                        ticket_signature_hex: ticket.signature_hex,
                    })
                }
                Delivery::Cancel { task_id, reason } => {
                    pb::task_envelope::Kind::Cancel(pb::TaskCancel { task_id, reason })
                }
            }),
        })
    });
    Ok(Box::pin(stream))
}

pub(crate) async fn report_progress(s: &Scheduler, r: pb::ProgressReport) -> Result<(), Status> {
    s.report_progress(&r.worker_id, &r.task_id, &r.phase, r.done, r.total)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn report_delivered(s: &Scheduler, r: pb::DeliveryReport) -> Result<(), Status> {
    s.report_delivered(&r.worker_id, &r.task_id, r.rows_in)
        .await
        .map_err(|e| status(&e))
}

/// A reported result file: a bounded name and a SHA-256 of 64 hex digits.
fn result_file(f: pb::ResultFile) -> Result<ResultFileRecord, Status> {
    let hex_ok = f.sha256_hex.len() == 64 && f.sha256_hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_ok {
        return Err(invalid("result_file.sha256_hex must be 64 hex digits"));
    }
    if f.name.is_empty() || f.name.chars().count() > LOCATION_CHARS_MAX {
        return Err(invalid(
            "result_file.name must be a non-empty bounded file name",
        ));
    }
    Ok(ResultFileRecord {
        name: f.name,
        bytes: f.bytes,
        rows: f.rows,
        sha256_hex: f.sha256_hex.to_ascii_lowercase(),
    })
}

pub(crate) async fn report_result(s: &Scheduler, r: pb::TaskResult) -> Result<(), Status> {
    // A report without usage would bill the job on zero rows: refuse it.
    let u = r.usage.ok_or_else(|| invalid("usage is required"))?;
    let error_kind = if r.ok {
        None
    } else {
        let kind: String = r.error_kind.chars().take(ERROR_KIND_CHARS_MAX).collect();
        Some(kind.parse::<TaskErrorKind>().map_err(invalid)?)
    };
    let report = TaskReport {
        ok: r.ok,
        error_kind,
        error: r.error.chars().take(ERROR_CHARS_MAX).collect(),
        usage: TaskUsage {
            cpu_ms: u.cpu_ms,
            wall_ms: u.wall_ms,
            rows_in: u.rows_in,
            bytes_sent: u.bytes_sent,
            bytes_received: u.bytes_received,
            frames_sent: u.frames_sent,
            frames_received: u.frames_received,
            peak_rss_kb: u.peak_rss_kb,
            triples: u.triples,
            dropouts: u.dropouts,
            // Bounded as an fl job's rounds are.
            round_dropouts: u
                .round_dropouts
                .into_iter()
                .take(tessera_scheduler::FL_ROUNDS_MAX as usize)
                .collect(),
        },
        result_size: r.result_size,
        result_location: r.result_location.chars().take(LOCATION_CHARS_MAX).collect(),
        result_file: r.result_file.map(result_file).transpose()?,
        empty_keys: r.empty_keys,
    };
    s.report_result(&r.worker_id, &r.task_id, report)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn tee_challenge(
    s: &Scheduler,
    r: pb::TeeChallengeRequest,
) -> Result<pb::TeeChallengeResponse, Status> {
    let nonce_hex = s
        .tee_challenge(&r.worker_id)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::TeeChallengeResponse { nonce_hex })
}

pub(crate) async fn tee_attest(
    s: &Scheduler,
    r: pb::TeeAttestRequest,
) -> Result<pb::TeeAttestResponse, Status> {
    let o = s
        .tee_attest(
            &r.worker_id,
            &r.kind,
            &r.evidence,
            &r.collateral,
            &r.nonce_hex,
            &r.enclave_key_hex,
        )
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::TeeAttestResponse {
        accepted: o.accepted,
        status: o.status,
        reasons: o.reasons,
        warnings: o.warnings,
        result: o.result,
        expires_at: o.expires_at,
    })
}

pub(crate) async fn release_dataset_key(
    s: &Scheduler,
    r: pb::KeyReleaseRequest,
) -> Result<pb::ReleasedDatasetKey, Status> {
    let released = s
        .tee_release_key(&r.worker_id, &r.task_id)
        .await
        .map_err(|e| status(&e))?;
    let released_json = serde_json::to_string(&released)
        .map_err(|e| Status::internal(format!("encoding the released key: {e}")))?;
    Ok(pb::ReleasedDatasetKey { released_json })
}

/// The worker and task a `Dealer` call names in its metadata.
pub(crate) fn dealer_metadata<T>(req: &tonic::Request<T>) -> Result<(String, String), Status> {
    let get = |key: &str| {
        req.metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .ok_or_else(|| {
                Status::invalid_argument(format!("a dealer link names its {key} in the metadata"))
            })
    };
    Ok((
        get(tessera_proto::link::DEALER_WORKER_METADATA)?,
        get(tessera_proto::link::DEALER_TASK_METADATA)?,
    ))
}

/// A worker's link to the operator's dealer for its `mpc` task (`tessera_scheduler::dealer`):
/// the task must be the worker's, live and signed for dealer triples; the link joins the
/// job's other link in the dealer hub, which deals once both are there.
pub(crate) async fn dealer(
    s: &Scheduler,
    worker_id: &str,
    task_id: &str,
    inbound: tonic::Streaming<pb::Frame>,
) -> Result<BoxStream<pb::Frame>, Status> {
    let (seat, seed) = s
        .dealer_seat(worker_id, task_id)
        .await
        .map_err(|e| status(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(tessera_core::limits::LINK_QUEUE_FRAMES);
    let link = tessera_proto::link::FrameLink::new(
        tx,
        futures::StreamExt::boxed(inbound),
        tessera_core::limits::FRAME_BYTES_MAX,
        tessera_scheduler::dealer::DEALER_IDLE,
    );
    s.dealer()
        .join(seat, Box::new(link), seed)
        .map_err(|e| status(&e))?;
    Ok(Box::pin(ReceiverStream::new(rx).map(Ok)))
}
