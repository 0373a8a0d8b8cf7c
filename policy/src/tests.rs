//! Data-driven tests of policy parsing and evaluation.

use super::*;

const POLICY: &str = r#"{
  "policyName": "p1",
  "relUsers": [{"userId": "alice", "userName": "Alice", "isGroup": 0},
               {"userId": "analysts", "userName": "Analysts", "isGroup": 1}],
  "startDate": "2026-01-01 00:00:00",
  "endDate": "2027-01-01 00:00:00",
  "useScenes": [
    {"useSence": "psi", "counts": 2, "visitArea": ["cn-north"], "cpCenter": "dc1",
     "envHard": ["x86"], "aiFrame": [], "envSoft": null}
  ]
}"#;

fn at(s: &str) -> i64 {
    Zone::default().parse_instant(s).expect("date")
}

fn check(
    user: &str,
    groups: &[&str],
    scene: &str,
    now: &str,
    remaining: Option<u64>,
    expect: &[&str],
) {
    let p = UsagePolicy::from_json(POLICY).expect("policy");
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    let v = evaluate(
        &p,
        &Request {
            user,
            groups: &groups,
            scene,
            protocol: None,
            now_ms: at(now),
            zone: &Zone::default(),
            preview: None,
            mpc_row_level: None,
            join: None,
        },
        remaining,
    );
    let refusals = v.refusals();
    assert_eq!(refusals.len(), expect.len(), "{refusals:?}");
    for (r, e) in refusals.iter().zip(expect) {
        assert!(r.contains(e), "{r:?} should contain {e:?}");
    }
    assert_eq!(v.allowed(), expect.is_empty());
}

#[test]
fn evaluation_by_constraint() {
    check("alice", &[], "psi", "2026-06-01 12:00:00", Some(2), &[]);
    check(
        "bob",
        &["analysts"],
        "psi",
        "2026-06-01 12:00:00",
        Some(1),
        &[],
    );
    check(
        "bob",
        &[],
        "psi",
        "2026-06-01 12:00:00",
        Some(1),
        &["not in relUsers"],
    );
    check(
        "alice",
        &[],
        "mpc",
        "2026-06-01 12:00:00",
        None,
        &["not in useScenes"],
    );
    check(
        "alice",
        &[],
        "psi",
        "2025-12-31 23:59:59",
        Some(1),
        &["not yet valid"],
    );
    check(
        "alice",
        &[],
        "psi",
        "2027-01-01 00:00:00",
        Some(1),
        &["expired"],
    );
    check(
        "alice",
        &[],
        "psi",
        "2026-06-01 12:00:00",
        Some(0),
        &["quota exhausted"],
    );
    check(
        "eve",
        &[],
        "fl",
        "2030-01-01 00:00:00",
        None,
        &["relUsers", "useScenes", "expired"],
    );
}

#[test]
fn worker_attributes_are_matched() {
    let p = UsagePolicy::from_json(POLICY).expect("policy");
    let scene = p.scene("psi").expect("scene");
    let mut w = WorkerAttributes {
        party: "prov".into(),
        region: "cn-north".into(),
        compute_centre: "dc1".into(),
        hardware: "x86".into(),
        ai_frameworks: vec![],
        software_env: "linux".into(),
    };
    assert_eq!(worker_fits(scene, &w), Ok(()));
    w.region = "eu".into();
    w.hardware = "arm".into();
    let misfits = worker_fits(scene, &w).unwrap_err();
    assert_eq!(misfits.len(), 2);
    assert!(misfits[0].contains("region eu"));
}

#[test]
fn bad_documents_are_refused() {
    const U: &str = r#""relUsers":[{"userId":"alice","userName":"A","isGroup":0}]"#;
    for (doc, why) in [
        ("{".to_string(), "policy JSON"),
        (
            format!(r#"{{"policyName":"p",{U},"useScenes":[]}}"#),
            "must not be empty",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"startDate":"2026-13-01 00:00:00","useScenes":[{{"useSence":"psi"}}]}}"#
            ),
            "yyyy-mm-dd",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"startDate":"2026-02-01 00:00:00","endDate":"2026-01-01 00:00:00","useScenes":[{{"useSence":"psi"}}]}}"#
            ),
            "after",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi"}},{{"useSence":"psi"}}]}}"#
            ),
            "twice",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","counts":1,"remainingCounts":2}}]}}"#
            ),
            "exceeds",
        ),
        // A typo must not give an unlimited licence: unknown fields are refused by name.
        (
            format!(r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","count":2}}]}}"#),
            "unknown field `count`",
        ),
        (
            format!(r#"{{"policyName":"p",{U},"useScene":[{{"useSence":"psi"}}]}}"#),
            "unknown field `useScene`",
        ),
        (
            r#"{"policyName":"p","relUsers":[{"userId":"a","userName":"A","isGroup":0,"group":1}],"useScenes":[{"useSence":"psi"}]}"#.to_string(),
            "unknown field `group`",
        ),
        // Policies that could never admit a job.
        (
            format!(r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psl"}}]}}"#),
            "unknown scene \"psl\"",
        ),
        (
            format!(r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","counts":0}}]}}"#),
            "counts 0",
        ),
        (
            r#"{"policyName":"p","relUsers":[],"useScenes":[{"useSence":"psi"}]}"#.to_string(),
            "relUsers must not be empty",
        ),
        (
            r#"{"policyName":"p","relUsers":[{"userId":" ","userName":"A","isGroup":0}],"useScenes":[{"useSence":"psi"}]}"#.to_string(),
            "empty userId",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","remainingCounts":2}}]}}"#
            ),
            "remainingCounts needs counts",
        ),
        // Counts the store cannot keep (it holds signed 64-bit integers).
        (
            format!(
                r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","counts":18446744073709551615}}]}}"#
            ),
            "counts is above the maximum of 1000000000000",
        ),
        (
            format!(
                r#"{{"policyName":"p",{U},"useScenes":[{{"useSence":"psi","counts":5,"remainingCounts":9223372036854775808}}]}}"#
            ),
            "remainingCounts is above the maximum",
        ),
    ] {
        let err = UsagePolicy::from_json(&doc).unwrap_err().to_string();
        assert!(err.contains(why), "{err} should contain {why}");
    }
}

#[test]
fn a_window_already_over_is_refused_at_creation() {
    let p = UsagePolicy::from_json(POLICY).expect("policy");
    let zone = Zone::default();
    assert_eq!(p.check_can_admit(at("2026-06-01 00:00:00"), &zone), Ok(()));
    // Before the start is fine: the licence will admit later.
    assert_eq!(p.check_can_admit(at("2025-06-01 00:00:00"), &zone), Ok(()));
    let err = p
        .check_can_admit(at("2027-01-01 00:00:00"), &zone)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already over"), "{err}");
}

#[test]
fn the_window_is_read_in_the_operators_zone() {
    // startDate 2026-01-01 00:00:00 in UTC+08:00 is 2025-12-31 16:00 UTC.
    let p = UsagePolicy::from_json(POLICY).expect("policy");
    let utc = Zone::utc();
    let eval = |now: &str, zone: &Zone| {
        evaluate(
            &p,
            &Request {
                user: "alice",
                groups: &[],
                scene: "psi",
                protocol: None,
                now_ms: utc.parse_instant(now).expect("now"),
                zone,
                preview: None,
                mpc_row_level: None,
                join: None,
            },
            Some(1),
        )
        .allowed()
    };
    assert!(eval("2025-12-31 16:00:00", &Zone::default()));
    assert!(!eval("2025-12-31 15:59:59", &Zone::default()));
    assert!(!eval("2025-12-31 16:00:00", &utc));
    assert!(eval("2026-01-01 00:00:00", &utc));
    // The end is exclusive: 2027-01-01 00:00 Beijing is 2026-12-31 16:00 UTC.
    assert!(eval("2026-12-31 15:59:59", &Zone::default()));
    assert!(!eval("2026-12-31 16:00:00", &Zone::default()));
    for bad in [
        "2023-02-29 00:00:00",
        "2023-1-01 00:00:00",
        "",
        "1969-12-31 23:59:59",
    ] {
        let doc = POLICY.replace("2026-01-01 00:00:00", bad);
        assert!(UsagePolicy::from_json(&doc).is_err(), "{bad:?}");
    }
}

#[test]
fn a_scene_may_allow_only_some_protocols() {
    let p = UsagePolicy::from_json(
        r#"{"policyName":"p","relUsers":[{"userId":"alice","userName":"A","isGroup":0}],
            "useScenes":[{"useSence":"psi","protocols":["ecdh"]}]}"#,
    )
    .expect("policy");
    let eval = |protocol| {
        evaluate(
            &p,
            &Request {
                user: "alice",
                groups: &[],
                scene: "psi",
                protocol,
                now_ms: 0,
                zone: &Zone::default(),
                preview: None,
                mpc_row_level: None,
                join: None,
            },
            None,
        )
    };
    assert!(eval(Some("ecdh")).allowed());
    let v = eval(Some("rr22"));
    assert!(!v.allowed());
    assert_eq!(
        v.refusals(),
        vec!["protocol rr22 is not allowed for scene psi (allowed: ecdh)".to_string()]
    );
    // No list: any protocol.
    let any = UsagePolicy::from_json(
        r#"{"policyName":"p","relUsers":[{"userId":"alice","userName":"A","isGroup":0}],
            "useScenes":[{"useSence":"psi"}]}"#,
    )
    .expect("policy");
    assert!(
        evaluate(
            &any,
            &Request {
                user: "alice",
                groups: &[],
                scene: "psi",
                protocol: Some("rr22"),
                now_ms: 0,
                zone: &Zone::default(),
                preview: None,
                mpc_row_level: None,
                join: None,
            },
            None
        )
        .allowed()
    );
    // Unknown names are refused when the policy is set.
    for bad in [r#"["kkrt"]"#, r#""RR22""#] {
        let text = format!(
            r#"{{"policyName":"p","relUsers":[{{"userId":"a","userName":"A","isGroup":0}}],
                "useScenes":[{{"useSence":"psi","protocols":{bad}}}]}}"#
        );
        assert!(UsagePolicy::from_json(&text).is_err(), "{bad}");
    }
}

fn preview_policy(scene: &str) -> Result<UsagePolicy, crate::PolicyError> {
    UsagePolicy::from_json(&format!(
        r#"{{"policyName":"p","relUsers":[{{"userId":"alice","userName":"A","isGroup":0}}],
            "useScenes":[{scene}]}}"#
    ))
}

#[test]
fn preview_windows_intersect_rows_and_pages_and_bad_shapes_are_refused() {
    let window = |scene: &str| {
        let p = preview_policy(scene).expect("policy");
        PreviewWindow::of(&p.use_scenes[0]).expect("window")
    };
    // Neither: the first ten rows, every column.
    let w = window(r#"{"useSence":"preview"}"#);
    assert_eq!((w.first_row, w.last_row, w.columns), (1, 10, None));
    // Rows with columns; the short form.
    let w =
        window(r#"{"useSence":"preview","viewRowsRange":{"rows":[5,50],"columns":["id","age"]}}"#);
    assert_eq!((w.first_row, w.last_row), (5, 50));
    assert_eq!(w.columns, Some(vec!["id".to_string(), "age".to_string()]));
    let w = window(r#"{"useSence":"preview","viewRowsRange":[3,4]}"#);
    assert_eq!((w.first_row, w.last_row, w.columns), (3, 4, None));
    // Columns only: the default rows.
    let w = window(r#"{"useSence":"preview","viewRowsRange":{"columns":["id"]}}"#);
    assert_eq!((w.first_row, w.last_row), (1, 10));
    // Pages: page 2 of 20 rows is rows 21-40; with a page size; intersected with rows.
    let w = window(r#"{"useSence":"preview","viewPageRange":[2,2]}"#);
    assert_eq!((w.first_row, w.last_row), (21, 40));
    let w = window(r#"{"useSence":"preview","viewPageRange":{"pages":[1,3],"pageSize":5}}"#);
    assert_eq!((w.first_row, w.last_row), (1, 15));
    let w = window(
        r#"{"useSence":"preview","viewRowsRange":{"rows":[10,100]},"viewPageRange":{"pages":[1,3],"pageSize":5}}"#,
    );
    assert_eq!((w.first_row, w.last_row), (10, 15));
    // Refused: not overlapping, empty or reversed ranges, row 0, too wide, bad shapes.
    for bad in [
        r#"{"useSence":"preview","viewRowsRange":[100,200],"viewPageRange":[1,1]}"#,
        r#"{"useSence":"preview","viewRowsRange":[0,5]}"#,
        r#"{"useSence":"preview","viewRowsRange":[5,4]}"#,
        r#"{"useSence":"preview","viewRowsRange":[1,20000]}"#,
        r#"{"useSence":"preview","viewRowsRange":{"rows":[1,2],"cols":["a"]}}"#,
        r#"{"useSence":"preview","viewRowsRange":{"rows":[1,2],"columns":[]}}"#,
        r#"{"useSence":"preview","viewRowsRange":{"rows":[1,2],"columns":[""]}}"#,
        r#"{"useSence":"preview","viewRowsRange":"1-10"}"#,
        r#"{"useSence":"preview","viewRowsRange":[1,2,3]}"#,
        r#"{"useSence":"preview","viewRowsRange":[-1,2]}"#,
        r#"{"useSence":"preview","viewPageRange":{"pages":[1,2],"pageSize":0}}"#,
        r#"{"useSence":"preview","viewPageRange":{"pageSize":5}}"#,
        r#"{"useSence":"preview","viewPageRange":[0,1]}"#,
        r#"{"useSence":"preview","viewPageRange":[1,1000]}"#,
        r#"{"useSence":"preview","viewRowsRange":{"rows":[1,5],"columns":["id","id"]}}"#,
        r#"{"useSence":"preview","viewRowsRange":[18446744073709551615,18446744073709551615]}"#,
        r#"{"useSence":"preview","viewPageRange":{"pages":[18446744073709551615,18446744073709551615],"pageSize":10000}}"#,
        r#"{"useSence":"preview","viewRowsRange":{"rows":"1-5"}}"#,
        // A window on another scene would be ignored by its runs: refused.
        r#"{"useSence":"psi","viewRowsRange":[1,10]}"#,
        r#"{"useSence":"mpc","viewPageRange":[1,1]}"#,
    ] {
        assert!(preview_policy(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_preview_outside_the_window_is_refused_with_what_falls_outside() {
    let p = preview_policy(
        r#"{"useSence":"preview","counts":2,"viewRowsRange":{"rows":[1,20],"columns":["id","city"]}}"#,
    )
    .expect("policy");
    let ask = |rows: Option<(u64, u64)>, columns: &[String]| {
        evaluate(
            &p,
            &Request {
                user: "alice",
                groups: &[],
                scene: "preview",
                protocol: None,
                now_ms: 0,
                zone: &Zone::default(),
                preview: Some(PreviewAsk { rows, columns }),
                mpc_row_level: None,
                join: None,
            },
            Some(2),
        )
    };
    assert!(ask(None, &[]).allowed());
    assert!(ask(Some((5, 20)), &["city".to_string()]).allowed());
    let v = ask(Some((15, 25)), &["id".to_string(), "income".to_string()]);
    assert!(!v.allowed());
    let failed: Vec<&Check> = v.checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].constraint, Constraint::Preview);
    assert!(
        failed[0].reason.contains("rows 15-25"),
        "{}",
        failed[0].reason
    );
    assert!(failed[0].reason.contains("income"), "{}", failed[0].reason);
    // A reversed ask is outside too.
    assert!(!ask(Some((9, 3)), &[]).allowed());
}

#[test]
fn mpc_output_controls_belong_to_the_mpc_scene_and_aggregates_only_refuses_row_level_queries() {
    let p = preview_policy(
        r#"{"useSence":"mpc","counts":3,"minGroupSize":5,"aggregatesOnly":true,"protocols":["ot"]}"#,
    )
    .expect("policy");
    assert_eq!(p.use_scenes[0].min_group_size, Some(5));
    assert_eq!(p.use_scenes[0].model_to, None);
    let to = preview_policy(r#"{"useSence":"mpc","modelTo":"provider"}"#).expect("modelTo");
    assert_eq!(
        to.use_scenes[0].model_to,
        Some(tessera_core::ModelRecipient::Provider)
    );
    let shared = preview_policy(r#"{"useSence":"mpc","modelTo":"shared"}"#).expect("shared");
    assert_eq!(
        shared.use_scenes[0].model_to,
        Some(tessera_core::ModelRecipient::Shared)
    );
    for bad in [
        r#"{"useSence":"mpc","modelTo":"Shared"}"#,
        r#"{"useSence":"mpc","modelTo":"shared","aggregatesOnly":true}"#,
        r#"{"useSence":"mpc","modelTo":"shared","minGroupSize":2}"#,
        r#"{"useSence":"psi","modelTo":"buyer"}"#,
        r#"{"useSence":"mpc","modelTo":"operator"}"#,
        r#"{"useSence":"mpc","modelTo":"Provider"}"#,
        r#"{"useSence":"psi","minGroupSize":5}"#,
        r#"{"useSence":"psi","aggregatesOnly":true}"#,
        r#"{"useSence":"mpc","minGroupSize":0}"#,
        r#"{"useSence":"mpc","minGroupSize":1000001}"#,
        r#"{"useSence":"mpc","protocols":["rr22"]}"#,
        r#"{"useSence":"psi","protocols":["ot"]}"#,
    ] {
        assert!(preview_policy(bad).is_err(), "{bad} was accepted");
    }
    let ask = |row_level: bool, protocol: &str| {
        evaluate(
            &p,
            &Request {
                user: "alice",
                groups: &[],
                scene: "mpc",
                protocol: Some(protocol),
                now_ms: 0,
                zone: &Zone::default(),
                preview: None,
                mpc_row_level: Some(row_level),
                join: None,
            },
            Some(3),
        )
    };
    assert!(ask(false, "ot").allowed());
    let v = ask(true, "ot");
    let failed: Vec<&Check> = v.checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].constraint, Constraint::Output);
    assert!(
        failed[0].reason.contains("aggregatesOnly"),
        "{}",
        failed[0].reason
    );
    let v = ask(false, "dealer");
    assert!(!v.allowed());
    assert!(
        v.checks
            .iter()
            .any(|c| !c.ok && c.constraint == Constraint::Protocol)
    );
}

#[test]
fn joins_deliver_only_the_payload_columns_the_scene_names() {
    use tessera_core::JoinKind;
    let p = preview_policy(
        r#"{"useSence":"tee","envHard":["tee:sgx"],"payloadColumns":["income"],"joins":["inner","difference"]}"#,
    )
    .expect("policy");
    for bad in [
        r#"{"useSence":"psi","payloadColumns":["income"]}"#,
        r#"{"useSence":"mpc","joins":["inner"]}"#,
        r#"{"useSence":"tee","joins":["outer"]}"#,
        r#"{"useSence":"tee","payloadColumns":["a","a"]}"#,
        r#"{"useSence":"tee","payloadColumns":[""]}"#,
        r#"{"useSence":"tee","payloadColumns":[" a"]}"#,
        r#"{"useSence":"tee","joins":["inner","inner"]}"#,
        r#"{"useSence":"psi_payload","payloadColumns":["a"],"joins":["difference"]}"#,
    ] {
        assert!(preview_policy(bad).is_err(), "{bad} was accepted");
    }
    let ask = |kind: JoinKind, columns: &[String]| {
        evaluate(
            &p,
            &Request {
                user: "alice",
                groups: &[],
                scene: "tee",
                protocol: None,
                now_ms: 0,
                zone: &Zone::default(),
                preview: None,
                mpc_row_level: None,
                join: Some((kind, columns)),
            },
            None,
        )
    };
    let income = ["income".to_string()];
    assert!(ask(JoinKind::Inner, &income).allowed());
    assert!(ask(JoinKind::Inner, &[]).allowed());
    assert!(ask(JoinKind::Difference, &[]).allowed());
    // A column outside payloadColumns, a shape outside joins, a difference with columns.
    for (kind, cols, why) in [
        (
            JoinKind::Inner,
            vec!["income".to_string(), "age".to_string()],
            "age",
        ),
        (JoinKind::Left, vec![], "join left"),
        (JoinKind::Difference, income.to_vec(), "difference"),
    ] {
        let v = ask(kind, &cols);
        let failed: Vec<&Check> = v.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].constraint, Constraint::Payload);
        assert!(failed[0].reason.contains(why), "{}", failed[0].reason);
    }
    // No payloadColumns: a join delivers no provider column.
    let bare = preview_policy(r#"{"useSence":"psi_payload"}"#).expect("policy");
    let e = bare.use_scenes[0]
        .admits_join(JoinKind::Inner, &income)
        .expect_err("no column allowed");
    assert!(e.contains("none"), "{e}");
    assert!(bare.use_scenes[0].admits_join(JoinKind::Left, &[]).is_ok());
}
