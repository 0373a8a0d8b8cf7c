//! The worker's own check of the licence a task names (`TaskSpec::licence`), before it reads
//! anything: the operator checked the same licence at admission and placement, and the
//! worker checks it again against what only it knows for sure — its own attributes and its
//! own clock — and against the rows and columns a preview asks for. A task that fails is
//! refused as a ticket error, with every reason.

use tessera_core::{TaskSpec, WorkerAttributes};
use tessera_policy::{PreviewWindow, UseScene, worker_fits};

/// How far this worker's clock may be from the operator's when the validity window is
/// checked, in ms.
pub const CLOCK_SKEW_MS: i64 = 60_000;

/// Checks `spec`'s licence grant against this worker (`me`) at `now_ms`: the grant is there,
/// it is for the task's scene, `now_ms` lies in its validity window (± [`CLOCK_SKEW_MS`]),
/// this worker's region, centre, hardware, framework and software fit the scene's lists, a
/// preview's rows and columns lie inside the scene's preview window, a join's shape and
/// payload columns inside the scene's `joins` and `payloadColumns`, and an `mpc` task's
/// triples source inside the scene's `protocols`.
///
/// # Errors
/// Every reason the task may not run here, joined by `; `.
pub fn check(spec: &TaskSpec, me: &WorkerAttributes, now_ms: i64) -> Result<(), String> {
    let Some(grant) = &spec.licence else {
        return Err("the task names no licence".into());
    };
    let scene: UseScene = serde_json::from_value(grant.use_scene.clone())
        .map_err(|e| format!("licence {}: unreadable scene: {e}", grant.licence_id))?;
    let mut reasons = Vec::new();
    if scene.use_sence != spec.scene {
        reasons.push(format!(
            "licence {} grants scene {}, the task runs {}",
            grant.licence_id, scene.use_sence, spec.scene
        ));
    }
    if let Some(start) = grant.not_before_ms
        && now_ms + CLOCK_SKEW_MS < start
    {
        reasons.push(format!(
            "licence {} is not valid yet by this worker's clock",
            grant.licence_id
        ));
    }
    if let Some(end) = grant.not_after_ms
        && now_ms - CLOCK_SKEW_MS >= end
    {
        reasons.push(format!(
            "licence {} has expired by this worker's clock",
            grant.licence_id
        ));
    }
    if let Err(misfits) = worker_fits(&scene, me) {
        reasons.push(format!(
            "this worker does not fit scene {}: {}",
            scene.use_sence,
            misfits.join(", ")
        ));
    }
    match (
        &spec.preview,
        spec.scene == tessera_core::job::scene::PREVIEW,
    ) {
        (Some(p), true) => match PreviewWindow::of(&scene) {
            Err(e) => reasons.push(format!("preview window unreadable: {e}")),
            Ok(w) => {
                if let Err(why) = w.admits(p.first_row, p.last_row, &p.columns) {
                    reasons.push(format!("preview outside the licence: {why}"));
                }
                if p.columns.is_empty() && w.columns.is_some() {
                    reasons
                        .push("preview of every column, but the licence allows only some".into());
                }
            }
        },
        (None, true) => reasons.push("a preview task without its rows and columns".into()),
        (Some(_), false) => reasons.push("a preview bound on a task that is not a preview".into()),
        (None, false) => {}
    }
    if let Some(j) = &spec.join
        && let Err(why) = scene.admits_join(j.kind, &j.payload_columns)
    {
        reasons.push(format!("join outside the licence: {why}"));
    }
    // Triples from the operator's dealer trust the operator further: only where the scene
    // lists them (the operator both admits the job and deals, so this worker checks too).
    if let Some(m) = &spec.mpc
        && !scene.protocols.allows(m.triples.as_str())
    {
        reasons.push(format!(
            "triples from {} outside the licence (its protocols: {})",
            m.triples,
            scene.protocols.0.join(", ")
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{LicenceGrant, PreviewSpec};

    fn me() -> WorkerAttributes {
        WorkerAttributes {
            party: "prov".into(),
            region: "r1".into(),
            compute_centre: "c1".into(),
            hardware: "x86".into(),
            ai_frameworks: vec![],
            software_env: String::new(),
        }
    }

    fn spec(scene: &str, use_scene: serde_json::Value) -> TaskSpec {
        let mut s: TaskSpec = serde_json::from_value(serde_json::json!({
            "job_id": "j", "task_id": "t", "scene": scene, "role": "sender",
            "mode": "intersection", "dataset_location": "d.csv", "key_columns": [],
            "key_case": "preserve", "dial_peer": true, "peer_addr": "", "session_id": "s",
            "output": "",
        }))
        .expect("spec");
        s.licence = Some(LicenceGrant {
            licence_id: "lic".into(),
            dataset_id: "d".into(),
            not_before_ms: Some(1_000_000),
            not_after_ms: Some(2_000_000),
            use_scene,
        });
        s
    }

    #[test]
    fn a_task_inside_its_licence_runs_and_every_misfit_is_named() {
        let ok = spec(
            "psi",
            serde_json::json!({"useSence": "psi", "visitArea": ["r1"]}),
        );
        assert_eq!(check(&ok, &me(), 1_500_000), Ok(()));
        // Outside the window (beyond the skew), another region, another scene.
        let bad = spec(
            "psi",
            serde_json::json!({"useSence": "mpc", "visitArea": ["r2"], "cpCenter": ["c9"]}),
        );
        let why = check(&bad, &me(), 2_000_000 + CLOCK_SKEW_MS).expect_err("refused");
        for part in ["grants scene mpc", "expired", "region r1", "c9"] {
            assert!(why.contains(part), "{part}: {why}");
        }
        let early = check(&ok, &me(), 1_000_000 - CLOCK_SKEW_MS - 1).expect_err("early");
        assert!(early.contains("not valid yet"), "{early}");
        // Inside the skew both ways.
        assert!(check(&ok, &me(), 1_000_000 - CLOCK_SKEW_MS).is_ok());
        assert!(check(&ok, &me(), 2_000_000 + CLOCK_SKEW_MS - 1).is_ok());
        let mut none = ok.clone();
        none.licence = None;
        assert!(check(&none, &me(), 1_500_000).is_err());
        let mut garbled = ok;
        if let Some(g) = garbled.licence.as_mut() {
            g.use_scene = serde_json::json!({"useSence": "psi", "surprise": 1});
        }
        assert!(check(&garbled, &me(), 1_500_000).is_err());
    }

    #[test]
    fn an_mpc_task_draws_only_the_triples_its_licence_lists() {
        let with = |protocols: serde_json::Value, triples: tessera_core::MpcTriples| {
            let mut s = spec(
                "mpc",
                serde_json::json!({"useSence": "mpc", "protocols": protocols}),
            );
            s.mpc = Some(tessera_core::MpcSpec {
                query: tessera_core::MpcQuery {
                    query: "SELECT count(*)".into(),
                    columns: vec![],
                },
                min_group_size: None,
                aggregates_only: false,
                fraction_bits: 16,
                model_to: Default::default(),
                triples,
            });
            check(&s, &me(), 1_500_000)
        };
        use tessera_core::MpcTriples::{Dealer, Ot};
        assert_eq!(with(serde_json::json!([]), Dealer), Ok(()));
        assert_eq!(with(serde_json::json!(["dealer"]), Dealer), Ok(()));
        assert_eq!(with(serde_json::json!(["ot"]), Ot), Ok(()));
        let e = with(serde_json::json!(["ot"]), Dealer).expect_err("dealer");
        assert!(e.contains("triples from dealer"), "{e}");
        assert!(with(serde_json::json!(["dealer"]), Ot).is_err());
    }

    #[test]
    fn a_join_task_delivers_only_the_payload_columns_its_licence_lists() {
        let scene = serde_json::json!({"useSence": "tee", "payloadColumns": ["income"],
            "joins": ["inner", "left"]});
        let with = |kind: tessera_core::JoinKind, columns: &[&str]| {
            let mut s = spec("tee", scene.clone());
            s.join = Some(tessera_core::JoinSpec {
                kind,
                payload_columns: columns.iter().map(|c| c.to_string()).collect(),
            });
            check(&s, &me(), 1_500_000)
        };
        assert_eq!(with(tessera_core::JoinKind::Inner, &["income"]), Ok(()));
        assert_eq!(with(tessera_core::JoinKind::Left, &[]), Ok(()));
        let e = with(tessera_core::JoinKind::Inner, &["income", "age"]).expect_err("age");
        assert!(e.contains("age") && e.contains("payloadColumns"), "{e}");
        let e = with(tessera_core::JoinKind::Difference, &[]).expect_err("shape");
        assert!(e.contains("join difference"), "{e}");
    }

    #[test]
    fn a_preview_task_must_lie_inside_the_preview_window() {
        let scene = serde_json::json!({"useSence": "preview",
            "viewRowsRange": {"rows": [1, 20], "columns": ["id", "city"]}});
        let with = |first, last, columns: &[&str]| {
            let mut s = spec("preview", scene.clone());
            s.preview = Some(PreviewSpec {
                first_row: first,
                last_row: last,
                columns: columns.iter().map(|c| c.to_string()).collect(),
            });
            check(&s, &me(), 1_500_000)
        };
        assert_eq!(with(1, 20, &["city"]), Ok(()));
        assert!(with(1, 21, &["city"]).is_err());
        assert!(with(1, 5, &["income"]).is_err());
        assert!(
            with(1, 5, &[]).is_err(),
            "every column, but only some allowed"
        );
        let mut s = spec("preview", scene.clone());
        s.preview = None;
        assert!(check(&s, &me(), 1_500_000).is_err());
        let mut s = spec("psi", serde_json::json!({"useSence": "psi"}));
        s.preview = Some(PreviewSpec {
            first_row: 1,
            last_row: 1,
            columns: vec![],
        });
        assert!(check(&s, &me(), 1_500_000).is_err());
    }
}
