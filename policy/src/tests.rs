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
    parse_datetime(s).expect("date")
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
            now_ms: at(now),
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
    for (doc, why) in [
        ("{", "policy JSON"),
        (
            r#"{"policyName":"p","relUsers":[],"useScenes":[]}"#,
            "must not be empty",
        ),
        (
            r#"{"policyName":"p","relUsers":[],"startDate":"2026-13-01 00:00:00","useScenes":[{"useSence":"psi"}]}"#,
            "yyyy-mm-dd",
        ),
        (
            r#"{"policyName":"p","relUsers":[],"startDate":"2026-02-01 00:00:00","endDate":"2026-01-01 00:00:00","useScenes":[{"useSence":"psi"}]}"#,
            "after",
        ),
        (
            r#"{"policyName":"p","relUsers":[],"useScenes":[{"useSence":"psi"},{"useSence":"psi"}]}"#,
            "twice",
        ),
        (
            r#"{"policyName":"p","relUsers":[],"useScenes":[{"useSence":"psi","counts":1,"remainingCounts":2}]}"#,
            "exceeds",
        ),
    ] {
        let err = UsagePolicy::from_json(doc).unwrap_err().to_string();
        assert!(err.contains(why), "{err} should contain {why}");
    }
}

#[test]
fn dates_round_trip() {
    for s in [
        "1970-01-01 00:00:00",
        "2024-02-29 23:59:59",
        "2026-11-23 08:35:00",
        "1969-12-31 23:59:59",
    ] {
        assert_eq!(format_datetime(at(s)), s);
    }
    assert_eq!(at("1970-01-02"), 86_400_000);
    assert!(parse_datetime("2023-02-29 00:00:00").is_err());
    assert!(parse_datetime("2023-1-01 00:00:00").is_err());
    assert!(parse_datetime("").is_err());
}
