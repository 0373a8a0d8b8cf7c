//! What each caller may see of a job: the one place that decides it (issue 8 item 17).
//!
//! A job joins two parties, the buyer (receiver) and the provider (sender). The caller is the
//! authenticated user, as a [`Viewer`] (`tessera_auth`): the submitting user or the owner of
//! the buyer's party sees the buyer's side, the owner of the provider's party sees the
//! provider's side, any other caller — the operator included — neither side (the operator
//! reads details in the job record and the audit chain). Every job answer of the API goes
//! through [`redact`].
//!
//! | field | buyer | provider | other |
//! |---|---|---|---|
//! | state, ids, progress phases and time left, times | yes | yes | yes |
//! | progress counts (rows read, rows through buckets) | own; the other side's in thousandths of its total | own; the same | thousandths |
//! | result (size, location, file, charge) | yes | no (in `both` mode: the size) | no |
//! | the provider's own result file (`both` mode) | no | yes | no |
//! | buyer's / provider's empty-key count | own | own | no |
//! | failure on the caller's own side | detail | detail | — |
//! | failure on the other side | `the provider's side failed: <kind>` | `the buyer's side failed: <kind>` | `the <side>'s side failed: <kind>` |
//! | the other side lost its peer (kind `peer`) | `the link between the parties broke (reported by the provider's side)` | the same, by the buyer's side | the same |
//!
//! A failure's detail (column names, worker-local paths, worker ids) stays in the job record
//! for the operator, in the audit chain (`complete` entry) and in the failing worker's log;
//! the other party's worker, whose task the operator cancels, is told only what its side may
//! see ([`error_seen_by`]).

use tessera_auth::{JobSide, Viewer};
use tessera_core::{JobState, TaskErrorKind, TaskRole};

use crate::JobView;

/// Which side of a job `viewer` is on, if any.
pub fn side_of(view: &JobView, viewer: &Viewer) -> Option<TaskRole> {
    let job = &view.job;
    // An `fl` job's further providers are on the provider's side too.
    let side = viewer
        .side(&job.user, &job.buyer_party, &job.provider_party)
        .or_else(|| {
            job.co_licences
                .iter()
                .find_map(|c| viewer.side(&job.user, &job.buyer_party, &c.provider_party))
        })?;
    match side {
        JobSide::Buyer => Some(TaskRole::Receiver),
        JobSide::Provider => Some(TaskRole::Sender),
    }
}

/// The side's name as a party sees it.
fn side_name(role: TaskRole) -> &'static str {
    match role {
        TaskRole::Receiver => "buyer",
        TaskRole::Sender => "provider",
    }
}

/// `view` as `viewer` may see it (see the module table).
pub fn redact(view: &JobView, viewer: &Viewer) -> JobView {
    let side = side_of(view, viewer);
    let mut out = view.clone();
    let job = &mut out.job;
    if side != Some(TaskRole::Receiver) {
        // In `both` mode the provider learns the intersection too: its size is its own.
        if !(side == Some(TaskRole::Sender) && job.mode == tessera_core::PsiMode::Both) {
            job.result_size = None;
        }
        job.result_location.clear();
        job.result_file = None;
        job.charge_micros = 0;
        job.buyer_empty_keys = None;
    }
    if side != Some(TaskRole::Sender) {
        job.provider_empty_keys = None;
        job.provider_result_file = None;
    }
    job.error = error_seen_by(job, side);
    // An `fl` job's providers are each other's others: a provider sees another provider's
    // failure by its kind only, as the buyer does.
    if !job.co_licences.is_empty()
        && side == Some(TaskRole::Sender)
        && let Some(origin) = &job.failure
        && origin.role == TaskRole::Sender
        && viewer.side(&job.user, &job.buyer_party, &origin.party) != Some(JobSide::Provider)
    {
        job.error = format!("another provider's side failed: {}", origin.kind);
    }
    // A party's counts (its rows, its set sizes) are its own: others see how far it is, in
    // thousandths of its total, not the counts.
    for p in &mut out.progress {
        if side != Some(p.role) {
            let (done, total) = (p.done, p.total);
            p.total = if total == 0 { 0 } else { 1000 };
            p.done = if total == 0 {
                0
            } else {
                u64::try_from(u128::from(done.min(total)) * 1000 / u128::from(total))
                    .unwrap_or(1000)
            };
            p.began = (0, 0);
        }
    }
    out
}

/// A job's error as `side` may see it (`None`: neither party): a failure on another side is
/// its kind only (see the module table). Also the reason a party's worker is told when the
/// operator cancels its task because the job ended.
pub fn error_seen_by(job: &tessera_store::JobRecord, side: Option<TaskRole>) -> String {
    if job.state == JobState::Failed
        && let Some(origin) = &job.failure
        && side != Some(origin.role)
    {
        return if origin.kind == TaskErrorKind::Peer.as_str()
            || origin.kind == TaskErrorKind::Link.as_str()
        {
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
    job.error.clone()
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
                protocol: tessera_core::PsiProtocol::Rr22,
                mpc_triples: None,
                co_licences: vec![],
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
                provider_result_file: None,
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

    /// `u1` submitted the job; `buy` and `prov` stand for the owners of those parties; `None`
    /// is the operator; `""` a caller that is no user.
    fn viewer(caller: Option<&str>) -> Viewer {
        let own = |user: &str, party: Option<&str>| Viewer::Own {
            user: user.into(),
            groups: Default::default(),
            parties: party.into_iter().map(String::from).collect(),
        };
        match caller {
            None => Viewer::All,
            Some("") => Viewer::Nobody,
            Some(p @ ("buy" | "prov")) => own(&format!("owner-of-{p}"), Some(p)),
            Some(u) => own(u, None),
        }
    }

    fn check(cases: &[Case]) {
        let detail = failed_on(TaskRole::Sender).job.error;
        for (caller, role, error, result, keys) in cases {
            let v = redact(&failed_on(*role), &viewer(*caller));
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
    fn in_both_mode_each_party_sees_its_own_result_file_and_the_size() {
        let mut v = failed_on(TaskRole::Sender);
        v.job.mode = PsiMode::Both;
        v.job.provider_result_file = Some(ResultFileRecord {
            name: "psi-job-1.csv".into(),
            bytes: 9,
            rows: 3,
            sha256_hex: "11".repeat(32),
        });
        let buyer = redact(&v, &viewer(Some("u1")));
        assert_eq!(
            buyer.job.result_file.as_ref().map(|f| f.name.as_str()),
            Some("r.csv")
        );
        assert_eq!(buyer.job.provider_result_file, None);
        let provider = redact(&v, &viewer(Some("prov")));
        assert_eq!(provider.job.result_file, None);
        assert_eq!(provider.job.result_location, "");
        assert_eq!(provider.job.charge_micros, 0);
        assert_eq!(provider.job.result_size, Some(3));
        assert_eq!(
            provider
                .job
                .provider_result_file
                .as_ref()
                .map(|f| f.name.as_str()),
            Some("psi-job-1.csv")
        );
        for other in [None, Some("mallory")] {
            let seen = redact(&v, &viewer(other));
            assert_eq!(
                (seen.job.result_size, seen.job.provider_result_file),
                (None, None)
            );
        }
    }

    #[test]
    fn a_lost_peer_is_not_blamed_on_the_side_that_reported_it() {
        let mut v = failed_on(TaskRole::Sender);
        if let Some(o) = v.job.failure.as_mut() {
            o.kind = "peer".into();
        }
        let seen = redact(&v, &viewer(Some("u1")));
        assert_eq!(
            seen.job.error,
            "the link between the parties broke (reported by the provider's side)"
        );
    }

    #[test]
    fn a_cancelled_worker_is_told_only_what_its_side_may_see() {
        let v = failed_on(TaskRole::Sender);
        assert_eq!(
            error_seen_by(&v.job, Some(TaskRole::Receiver)),
            "the provider's side failed: input"
        );
        assert!(error_seen_by(&v.job, Some(TaskRole::Sender)).contains("secret_col"));
    }

    #[test]
    fn a_partys_counts_reach_the_other_side_only_as_thousandths() {
        let mut v = failed_on(TaskRole::Sender);
        let p = |role, phase: &str, done, total| crate::PhaseProgress {
            party: match role {
                TaskRole::Sender => "prov".into(),
                TaskRole::Receiver => "buy".into(),
            },
            role,
            phase: phase.into(),
            done,
            total,
            eta_ms: Some(7),
            began: (1, 2),
        };
        v.progress = vec![
            p(TaskRole::Sender, "bucket 3/9", 198_003, 594_009),
            p(TaskRole::Receiver, "read", 150_000, 0),
        ];
        let counts = |caller| {
            redact(&v, &viewer(caller))
                .progress
                .iter()
                .map(|p| (p.done, p.total, p.eta_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counts(Some("u1")),
            [(333, 1000, Some(7)), (150_000, 0, Some(7))],
            "the buyer sees its own count, the provider's as thousandths"
        );
        assert_eq!(
            counts(Some("prov")),
            [(198_003, 594_009, Some(7)), (0, 0, Some(7))]
        );
        assert_eq!(counts(None), [(333, 1000, Some(7)), (0, 0, Some(7))]);
    }
}
