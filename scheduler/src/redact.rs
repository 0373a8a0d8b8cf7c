//! What each caller may see of a job: the one place that decides it (issue 8 item 17).
//!
//! A job joins two parties, the buyer (receiver) and the provider (sender). The caller is named
//! in the request (`x-tessera-user` metadata; no authentication yet, see ARCHITECTURE.md): the
//! submitting user or the buyer's party sees the buyer's side, the provider's party sees the
//! provider's side, any other caller (or none) neither side. Every job answer of the API goes
//! through [`redact`].
//!
//! | field | buyer | provider | other |
//! |---|---|---|---|
//! | state, ids, progress phases, times | yes | yes | yes |
//! | result (size, location, file, charge) | yes | no | no |
//! | buyer's / provider's empty-key count | own | own | no |
//! | failure on the caller's own side | detail | detail | — |
//! | failure on the other side | `the provider's side failed: <kind>` | `the buyer's side failed: <kind>` | `the <side>'s side failed: <kind>` |
//! | the other side lost its peer (kind `peer`) | `the link between the parties broke (reported by the provider's side)` | the same, by the buyer's side | the same |
//!
//! A failure's detail (column names, worker-local paths, worker ids) stays in the job record
//! for the operator, in the audit chain (`complete` entry) and in the failing worker's log.

use tessera_core::{JobState, TaskErrorKind, TaskRole};

use crate::JobView;

/// Which side of a job `caller` is on, if any.
pub fn side_of(view: &JobView, caller: Option<&str>) -> Option<TaskRole> {
    let job = &view.job;
    let caller = caller.filter(|c| !c.is_empty())?;
    if caller == job.user || (!job.buyer_party.is_empty() && caller == job.buyer_party) {
        Some(TaskRole::Receiver)
    } else if !job.provider_party.is_empty() && caller == job.provider_party {
        Some(TaskRole::Sender)
    } else {
        None
    }
}

/// The side's name as a party sees it.
fn side_name(role: TaskRole) -> &'static str {
    match role {
        TaskRole::Receiver => "buyer",
        TaskRole::Sender => "provider",
    }
}

/// `view` as `caller` may see it (see the module table).
pub fn redact(view: &JobView, caller: Option<&str>) -> JobView {
    let side = side_of(view, caller);
    let mut out = view.clone();
    let job = &mut out.job;
    if side != Some(TaskRole::Receiver) {
        job.result_size = None;
        job.result_location.clear();
        job.result_file = None;
        job.charge_micros = 0;
        job.buyer_empty_keys = None;
    }
    if side != Some(TaskRole::Sender) {
        job.provider_empty_keys = None;
    }
    if job.state == JobState::Failed {
        if let Some(origin) = &job.failure {
            if side != Some(origin.role) {
                job.error = if origin.kind == TaskErrorKind::Peer.as_str() {
                    // The reporting side lost its peer: the fault may be on either side (a
                    // killed worker shows first as the other side's broken link).
                    format!(
                        "the link between the parties broke (reported by the {}'s side)",
                        side_name(origin.role)
                    )
                } else {
                    format!(
                        "the {}'s side failed: {}",
                        side_name(origin.role),
                        origin.kind
                    )
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{CountState, PsiMode};
    use tessera_store::{FailureOrigin, JobRecord, ResultFileRecord};

    fn failed_on(role: TaskRole) -> JobView {
        JobView {
            job: JobRecord {
                job_id: "job-1".into(),
                licence_id: "lic".into(),
                scene: "psi".into(),
                user: "u1".into(),
                mode: PsiMode::Intersection,
                state: JobState::Failed,
                count_state: CountState::Released,
                reasons: vec![],
                error: "sender task on w-9 failed (input): /data/prov/p.csv: key column \"secret_col\" not found".into(),
                result_size: Some(3),
                result_location: "r.csv".into(),
                charge_micros: 5,
                created_at_ms: 1,
                finished_at_ms: Some(2),
                delivered_at_ms: None,
                delivered_rows: None,
                request_id: None,
                buyer_party: "buy".into(),
                provider_party: "prov".into(),
                result_file: Some(ResultFileRecord {
                    name: "r.csv".into(),
                    bytes: 10,
                    rows: 3,
                    sha256_hex: "00".repeat(32),
                }),
                buyer_empty_keys: Some(1),
                provider_empty_keys: Some(2),
                failure: Some(FailureOrigin {
                    role,
                    party: match role {
                        TaskRole::Sender => "prov".into(),
                        TaskRole::Receiver => "buy".into(),
                    },
                    kind: "input".into(),
                }),
            },
            progress: vec![],
            refusals: vec![],
        }
    }

    /// `(caller, failing side, error shown, result visible, (buyer, provider) empty keys)`.
    type Case = (
        Option<&'static str>,
        TaskRole,
        &'static str,
        bool,
        (Option<u64>, Option<u64>),
    );

    fn check(cases: &[Case]) {
        let detail = failed_on(TaskRole::Sender).job.error;
        for (caller, role, error, result, keys) in cases {
            let v = redact(&failed_on(*role), *caller);
            let want = if *error == "DETAIL" {
                detail.as_str()
            } else {
                error
            };
            assert_eq!(v.job.error, want, "{caller:?} {role}");
            assert_eq!(v.job.result_file.is_some(), *result, "{caller:?}");
            assert_eq!(v.job.result_size.is_some(), *result, "{caller:?}");
            assert_eq!(
                (v.job.buyer_empty_keys, v.job.provider_empty_keys),
                *keys,
                "{caller:?}"
            );
        }
    }

    #[test]
    fn each_caller_sees_only_its_own_side() {
        use TaskRole::*;
        let mine = "the provider's side failed: input";
        check(&[
            (Some("u1"), Sender, mine, true, (Some(1), None)),
            (Some("buy"), Sender, mine, true, (Some(1), None)),
            (Some("prov"), Sender, "DETAIL", false, (None, Some(2))),
            (
                Some("prov"),
                Receiver,
                "the buyer's side failed: input",
                false,
                (None, Some(2)),
            ),
            (Some("u1"), Receiver, "DETAIL", true, (Some(1), None)),
            (None, Sender, mine, false, (None, None)),
            (Some("mallory"), Sender, mine, false, (None, None)),
            (
                Some(""),
                Receiver,
                "the buyer's side failed: input",
                false,
                (None, None),
            ),
        ]);
    }

    #[test]
    fn a_lost_peer_is_not_blamed_on_the_side_that_reported_it() {
        let mut v = failed_on(TaskRole::Sender);
        if let Some(o) = v.job.failure.as_mut() {
            o.kind = "peer".into();
        }
        let seen = redact(&v, Some("u1"));
        assert_eq!(
            seen.job.error,
            "the link between the parties broke (reported by the provider's side)"
        );
    }
}
