//! Job RPCs: submit, get, watch, cancel. The wire's loose types become a strict
//! [`JobRequest`] here, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_auth::{Caller, Viewer};
use tessera_core::{EmptyKeys, JoinKind, KeyCase, MpcTriples, PsiMode, PsiProtocol, UnicodeForm};
use tessera_proto::decode;
use tessera_proto::v1 as pb;
use tessera_scheduler::redact::redact;
use tessera_scheduler::{AccountService, AuditService, JobRequest, JobView, Scheduler};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use crate::BoxStream;
use crate::convert::job_to_pb;
use crate::error::{invalid, status};

/// The scene a request that names none runs (the only one built).
const DEFAULT_SCENE: &str = tessera_core::job::scene::PSI;

/// Parses a submission: enums strictly (an unset or unknown mode, key case, Unicode form or
/// empty-key rule is `INVALID_ARGUMENT`). A request's `user_groups` claim is refused: groups
/// are the operator's records, never the caller's word.
fn job_request(mut r: pb::SubmitJobRequest) -> Result<JobRequest, Status> {
    if !r.user_groups.trim().is_empty() {
        return Err(invalid(
            "user_groups cannot be claimed in a request: the licence's relUsers groups are \
             matched against the groups the operator recorded the caller in",
        ));
    }
    let scene = if r.scene.is_empty() && (r.join != 0 || !r.payload_columns.is_empty()) {
        // A join names no scene: it is a PSI with payload.
        tessera_core::job::scene::PSI_PAYLOAD.to_string()
    } else if r.scene.is_empty() {
        DEFAULT_SCENE.to_string()
    } else {
        std::mem::take(&mut r.scene)
    };
    if scene == tessera_core::job::scene::PREVIEW {
        return preview_request(r, scene);
    }
    if scene == tessera_core::job::scene::FL {
        return fl_request(r, scene);
    }
    if r.fl.is_some() {
        return Err(invalid(format!(
            "fl: a {scene} job trains no federated model (scene fl does)"
        )));
    }
    if r.preview_first_row != 0 || r.preview_last_row != 0 {
        return Err(invalid(
            "preview_first_row/preview_last_row: only a preview job shows rows",
        ));
    }
    // Unspecified: no join.
    let join = match r.join {
        0 => None,
        j => Some(decode::<JoinKind>(j).map_err(invalid)?),
    };
    let query_asked = !r.mpc_query.is_empty() || !r.mpc_columns.is_empty();
    // A query only when one is asked for: an mpc or tee job without one is refused by the
    // request's validation, which says what the scene computes.
    let mpc = if query_asked
        && (scene == tessera_core::job::scene::MPC || scene == tessera_core::job::scene::TEE)
    {
        Some(tessera_core::MpcQuery {
            query: std::mem::take(&mut r.mpc_query),
            columns: std::mem::take(&mut r.mpc_columns)
                .into_iter()
                .map(|c| tessera_core::MpcColumn {
                    column: c.column,
                    abs_max: c.abs_max,
                    levels: c.levels,
                })
                .collect(),
        })
    } else if query_asked {
        return Err(invalid(
            "mpc_query/mpc_columns: only an mpc or a tee job computes a query (and a tee job \
             computes a query or a join, not both)",
        ));
    } else {
        None
    };
    // An mpc or tee job aligns on the keys, in intersection mode only: unspecified is that
    // mode (any other is refused by the request's validation).
    let aligns = scene == tessera_core::job::scene::MPC || scene == tessera_core::job::scene::TEE;
    Ok(JobRequest {
        user: r.user,
        user_groups: Vec::new(),
        licence_id: r.licence_id,
        scene,
        buyer_party: r.buyer_party,
        buyer_dataset_id: r.buyer_dataset_id,
        buyer_columns: r.buyer_columns,
        provider_columns: r.provider_columns,
        mode: if r.mode == 0 && aligns {
            PsiMode::Intersection
        } else {
            decode::<PsiMode>(r.mode).map_err(invalid)?
        },
        // Unspecified: the mode's default protocol.
        protocol: match r.protocol {
            0 => None,
            p => Some(decode::<PsiProtocol>(p).map_err(invalid)?),
        },
        key_case: decode::<KeyCase>(r.key_case).map_err(invalid)?,
        unicode_form: decode::<UnicodeForm>(r.unicode_form).map_err(invalid)?,
        empty_keys: decode::<EmptyKeys>(r.empty_keys).map_err(invalid)?,
        carry_columns: r.carry_columns,
        output: r.output,
        request_id: (!r.request_id.is_empty()).then_some(r.request_id),
        preview_rows: None,
        mpc,
        join,
        payload_columns: r.payload_columns,
        // Unspecified: resolved at admission against the licence's scene.
        mpc_triples: match r.mpc_triples {
            0 => None,
            t => Some(decode::<MpcTriples>(t).map_err(invalid)?),
        },
        fl: None,
    })
}

/// An `fl` submission: the training with its defaults filled in (`FlTraining`'s comments);
/// the PSI-shaped fields must be unset (enums left unspecified take a value no fl task
/// reads; the others are refused by the request's validation).
fn fl_request(r: pb::SubmitJobRequest, scene: String) -> Result<JobRequest, Status> {
    let Some(t) = r.fl else {
        return Err(invalid(
            "fl: an fl job needs its training (licences, features, label)",
        ));
    };
    let unset_enums = [
        (r.mode != 0, "mode"),
        (r.key_case != 0, "key_case"),
        (r.unicode_form != 0, "unicode_form"),
        (r.empty_keys != 0, "empty_keys"),
        (r.join != 0, "join"),
        (r.mpc_triples != 0, "mpc_triples"),
        (
            !r.mpc_query.is_empty() || !r.mpc_columns.is_empty(),
            "mpc_query",
        ),
    ];
    if let Some((_, name)) = unset_enums.iter().find(|(set, _)| *set) {
        return Err(invalid(format!(
            "{name}: an fl job reads each provider's licensed table and no keys; drop {name}"
        )));
    }
    let model = match t.model.as_str() {
        "" | "logistic" => tessera_core::FlModel::Logistic,
        "mlp" => tessera_core::FlModel::Mlp {
            hidden: t.hidden.unwrap_or(16),
        },
        other => {
            return Err(invalid(format!(
                "fl.model {other:?}: expected logistic or mlp"
            )));
        }
    };
    if t.hidden.is_some() && model == tessera_core::FlModel::Logistic {
        return Err(invalid("fl.hidden: only an mlp has hidden units"));
    }
    let providers = t.licences.len() as u32;
    let fl = tessera_scheduler::FlRequest {
        licences: t.licences,
        model,
        features: t.features,
        label: t.label,
        rounds: t.rounds.unwrap_or(10),
        epochs: t.epochs.unwrap_or(1),
        batch_size: t.batch_size.unwrap_or(32),
        learning_rate: t.learning_rate.unwrap_or(0.1),
        sample_fraction: t.sample_fraction.unwrap_or(1.0),
        threshold: t.threshold.unwrap_or((providers / 2 + 1).max(2)),
        neighbours: t.neighbours,
        standardise: t.standardise,
        dp: t.dp.map(|d| tessera_core::FlDp {
            noise_multiplier: d.noise_multiplier,
            clip_norm: d.clip_norm,
            delta: d.delta,
        }),
    };
    Ok(JobRequest {
        user: r.user,
        user_groups: Vec::new(),
        licence_id: if r.licence_id.is_empty() {
            fl.licences.first().cloned().unwrap_or_default()
        } else {
            r.licence_id
        },
        scene,
        buyer_party: r.buyer_party,
        buyer_dataset_id: r.buyer_dataset_id,
        buyer_columns: r.buyer_columns,
        provider_columns: r.provider_columns,
        mode: PsiMode::Intersection,
        protocol: match r.protocol {
            0 => None,
            p => Some(decode::<PsiProtocol>(p).map_err(invalid)?),
        },
        key_case: KeyCase::Preserve,
        unicode_form: UnicodeForm::None,
        empty_keys: EmptyKeys::Skip,
        carry_columns: r.carry_columns,
        output: r.output,
        request_id: (!r.request_id.is_empty()).then_some(r.request_id),
        preview_rows: (r.preview_first_row != 0 || r.preview_last_row != 0)
            .then_some((r.preview_first_row, r.preview_last_row)),
        mpc: None,
        join: None,
        payload_columns: r.payload_columns,
        mpc_triples: None,
        fl: Some(fl),
    })
}

/// A `preview` submission: the PSI fields must be unset (an unset enum is its default here,
/// a set one is refused by the request's validation), the rows both 0 (the licence's window)
/// or a range.
fn preview_request(r: pb::SubmitJobRequest, scene: String) -> Result<JobRequest, Status> {
    let set = |name: &str, n: i32| {
        if n == 0 {
            Ok(())
        } else {
            Err(invalid(format!(
                "{name}: a preview job shows rows of the licensed dataset and takes no {name}"
            )))
        }
    };
    set("mode", r.mode)?;
    set("key_case", r.key_case)?;
    set("unicode_form", r.unicode_form)?;
    set("empty_keys", r.empty_keys)?;
    set("protocol", r.protocol)?;
    set("join", r.join)?;
    set("mpc_triples", r.mpc_triples)?;
    if !r.payload_columns.is_empty() {
        return Err(invalid(
            "payload_columns: a preview job shows rows of the licensed dataset and takes no \
             payload_columns (name its columns in provider_columns)",
        ));
    }
    if !r.mpc_query.is_empty() || !r.mpc_columns.is_empty() {
        return Err(invalid(
            "mpc_query/mpc_columns: only an mpc or a tee job computes a query",
        ));
    }
    let preview_rows = match (r.preview_first_row, r.preview_last_row) {
        (0, 0) => None,
        (first, last) => Some((first, last)),
    };
    Ok(JobRequest {
        user: r.user,
        user_groups: Vec::new(),
        licence_id: r.licence_id,
        scene,
        buyer_party: r.buyer_party,
        buyer_dataset_id: r.buyer_dataset_id,
        buyer_columns: r.buyer_columns,
        provider_columns: r.provider_columns,
        mode: PsiMode::Intersection,
        protocol: None,
        key_case: KeyCase::Preserve,
        unicode_form: UnicodeForm::None,
        empty_keys: EmptyKeys::Skip,
        carry_columns: r.carry_columns,
        output: r.output,
        request_id: (!r.request_id.is_empty()).then_some(r.request_id),
        preview_rows,
        mpc: None,
        join: None,
        payload_columns: Vec::new(),
        mpc_triples: None,
        fl: None,
    })
}

/// A job's answer as `caller` may see it (`tessera_scheduler::redact`), with the signed head of
/// the audit chain (the receipt): for an ended job a head covering its end (sealed now if no
/// checkpoint covers it yet: the end is readable as soon as it is committed), otherwise the
/// latest checkpoint (the dispatch's covers the admission).
async fn receipt(audit: &AuditService, v: &JobView, viewer: &Viewer) -> Result<pb::Job, Status> {
    let mut j = job_to_pb(&redact(v, viewer));
    // The chain's head signed now (no write): it covers the job's admission and, once the
    // job ended, its end.
    j.audit_head = crate::audit::receipt_head(audit).await?;
    Ok(j)
}

/// A submission by `caller`, authorised by [`AccountService::check_submission`] (which also
/// sets the request's recorded groups).
pub(crate) async fn submit(
    s: &Scheduler,
    accounts: &AccountService,
    caller: &Caller,
    r: pb::SubmitJobRequest,
) -> Result<pb::Job, Status> {
    let mut req = job_request(r)?;
    accounts
        .check_submission(caller, &mut req)
        .await
        .map_err(|e| status(&e))?;
    let viewer = accounts.viewer(caller).await.map_err(|e| status(&e))?;
    let view = s.submit(req).await.map_err(|e| status(&e))?;
    receipt(&s.audit(), &view, &viewer).await
}

pub(crate) async fn get(s: &Scheduler, r: pb::JobRef, viewer: &Viewer) -> Result<pb::Job, Status> {
    let v = s.job(&r.job_id).await.map_err(|e| status(&e))?;
    receipt(&s.audit(), &v, viewer).await
}

pub(crate) async fn watch(
    s: &Scheduler,
    r: pb::JobRef,
    viewer: Viewer,
) -> Result<BoxStream<pb::Job>, Status> {
    let rx = s.watch(&r.job_id).await.map_err(|e| status(&e))?;
    let audit = s.audit();
    // Ends after the first terminal state, which carries the signed head (the receipt). If the
    // job's updates stop before one (the node is shutting down, finishing the job failed), the
    // stream ends with UNAVAILABLE instead of simply ending, so no client takes the last,
    // non-terminal state for the end.
    let ended = Arc::new(AtomicBool::new(false));
    let seen = ended.clone();
    let updates = futures::StreamExt::scan(WatchStream::new(rx), false, move |done, v| {
        let out = if *done {
            None
        } else {
            *done = v.job.is_terminal();
            if *done {
                seen.store(true, Ordering::Relaxed);
            }
            Some((*done, v))
        };
        futures::future::ready(out)
    });
    let updates = futures::StreamExt::then(updates, move |(last, v)| {
        let audit = audit.clone();
        let viewer = viewer.clone();
        async move {
            if last {
                receipt(&audit, &v, &viewer).await
            } else {
                Ok(job_to_pb(&redact(&v, &viewer)))
            }
        }
    });
    let job_id = r.job_id;
    let tail = futures::stream::once(async move {
        (!ended.load(Ordering::Relaxed)).then(|| {
            Err(Status::unavailable(format!(
                "updates of job {job_id} stopped before it ended; watch it again"
            )))
        })
    });
    let tail = futures::StreamExt::filter_map(tail, futures::future::ready);
    Ok(Box::pin(futures::StreamExt::chain(updates, tail)))
}

pub(crate) async fn cancel(
    s: &Scheduler,
    r: pb::JobRef,
    caller: &Caller,
    viewer: &Viewer,
) -> Result<pb::Job, Status> {
    let v = s
        .cancel(&r.job_id, &caller.describe())
        .await
        .map_err(|e| status(&e))?;
    receipt(&s.audit(), &v, viewer).await
}
