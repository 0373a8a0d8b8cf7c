//! `tessera billing`: the real binary simulates every accounting scenario file with output
//! identical to its `*.expected.txt`, refuses malformed and oversized scenarios with a clear
//! message and a non-zero exit, and runs a small ingestion and rating bench.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(args: &[&str]) -> Output {
    Command::new(TESSERA)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tessera")
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(&crate::harness::manifest_dir()).join("simulator/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn billing_simulate_matches_every_expected_report() {
    let files = scenario_files();
    assert!(files.len() >= 14, "scenario files missing: {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        let expected = std::fs::read_to_string(f.with_extension("expected.txt"))
            .unwrap_or_else(|e| panic!("expected file for {}: {e}", f.display()));
        let out = tessera(&["billing", "simulate", f.to_str().expect("utf-8 path")]);
        let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
        if !out.status.success() {
            failures.push(format!(
                "{}: exit {:?}\n{}",
                f.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        } else if stdout != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{stdout}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn assert_refused(path: &Path, needles: &[&str]) {
    let out = tessera(&["billing", "simulate", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted {}", path.display());
    assert_eq!(out.status.code(), Some(1), "no clean error exit: {stderr}");
    assert!(out.stdout.is_empty(), "printed a report for a bad file");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "error does not name the file: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "error does not say {needle:?}: {stderr}"
        );
    }
}

#[test]
fn billing_simulate_refuses_malformed_scenarios() {
    let dir = tempfile::tempdir().expect("tempdir");

    let garbage = dir.path().join("garbage.toml");
    std::fs::write(&garbage, "name = \n[[[ this is not toml \u{0}\u{7f}").expect("write");
    assert_refused(&garbage, &["does not parse", ", line 1, column "]);

    let unknown = dir.path().join("unknown_customer.toml");
    std::fs::write(
        &unknown,
        "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"ghost\"\namount = 1\n",
    )
    .expect("write");
    // Names the event (0-based index and kind) and the field holding the reference.
    assert_refused(
        &unknown,
        &["event 0 (recharge), field customer: unknown customer ghost"],
    );

    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, [0xff_u8, 0xfe, 0x00, 0x80]).expect("write");
    assert_refused(&binary, &["not valid UTF-8"]);

    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat((1 << 20) + 1)).expect("write");
    assert_refused(&big, &["1 MiB"]);

    let missing = dir.path().join("missing.toml");
    assert_refused(&missing, &["cannot open"]);
}

#[test]
fn billing_simulate_takes_several_files_and_runs_them_all() {
    let files = scenario_files();
    let paths: Vec<&str> = files
        .iter()
        .map(|f| f.to_str().expect("utf-8 path"))
        .collect();
    let mut args = vec!["billing", "simulate"];
    args.extend(&paths);
    let out = tessera(&args);
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = String::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            expected.push('\n');
        }
        expected.push_str(&format!("== {}\n", f.display()));
        expected.push_str(
            &std::fs::read_to_string(f.with_extension("expected.txt")).expect("expected file"),
        );
    }
    assert_eq!(stdout, expected);

    // One bad file among good ones: the others still run, the status says it failed.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let out = tessera(&[
        "billing",
        "simulate",
        paths[0],
        missing.to_str().expect("utf-8 path"),
        paths[1],
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
    assert!(stderr.contains("1 of 3 scenario files failed"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("== ").count(),
        3,
        "every file is headed"
    );
}

#[test]
fn billing_bench_prints_a_json_line_that_is_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tessera(&[
        "billing",
        "bench",
        "--events",
        "2000",
        "--batch",
        "100",
        "--json",
        "--dir",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json line");
    assert_eq!(v["ok"], serde_json::Value::Bool(true), "{v}");
    assert_eq!(v["events"], 2000, "{v}");
    assert_eq!(v["batch"], 100, "{v}");
    assert_eq!(v["stored_after_retry"], 2000, "{v}");
    for k in [
        "ingest_events_per_s_batched",
        "ingest_retry_events_per_s",
        "ingest_events_per_s_single",
        "rated_per_s",
    ] {
        assert!(v[k].as_f64().is_some_and(|r| r > 0.0), "{k}: {v}");
    }
    // The bench's scratch databases are removed afterwards.
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read dir").count(),
        0,
        "bench left files behind"
    );
}
