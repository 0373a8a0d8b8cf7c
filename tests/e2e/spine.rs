//! The spine end to end: PSI between two worker processes over real gRPC, equal to the
//! plaintext intersection; exact quota under concurrency; a killed worker; bad input.

use std::collections::HashSet;
use std::time::Duration;

use tessera_proto::v1 as pb;

use crate::harness::{Cluster, holds_only_voided, keys};

/// Runs one PSI case through the whole system and checks it against the plaintext answer.
async fn check(c: &Cluster, case: &str, provider: Vec<String>, buyer: Vec<String>) {
    let truth: HashSet<&String> = provider
        .iter()
        .collect::<HashSet<_>>()
        .intersection(&buyer.iter().collect())
        .copied()
        .collect();
    let pds = format!("p-{case}");
    let bds = format!("b-{case}");
    c.dataset(&c.provider, &pds, "k", &provider).await;
    c.dataset(&c.buyer, &bds, "k", &buyer).await;
    let lic = c.licence(&pds, None).await;
    let mut client = c.client().await;
    for mode in ["intersection", "size"] {
        // Size mode writes no file (and refuses a name it would ignore).
        let out = if mode == "intersection" {
            format!("{case}-{mode}.csv")
        } else {
            String::new()
        };
        let j = client
            .submit_job(Cluster::job(&lic, &bds, mode, &out))
            .await
            .expect("submit")
            .into_inner();
        // Admitted and dispatched; running from its first worker report.
        assert_eq!(j.state_text(), "admitted", "{case}/{mode}: {j:?}");
        let j = c.wait(&j.job_id).await;
        assert_eq!(j.state_text(), "succeeded", "{case}/{mode}: {j:?}");
        assert_eq!(j.result_size, Some(truth.len() as u64), "{case}/{mode}");
        if mode == "intersection" {
            let text = std::fs::read_to_string(c.buyer.outputs.join(&out)).expect("result file");
            let got: HashSet<String> = text.lines().skip(1).map(String::from).collect();
            let want: HashSet<String> = truth.iter().map(|s| s.to_string()).collect();
            assert_eq!(got, want, "{case}: result file");
        } else {
            assert!(
                !c.buyer.outputs.join(format!("{case}-{mode}.csv")).exists(),
                "size mode writes no rows"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psi_between_worker_processes_equals_the_plaintext_intersection() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let provider: Vec<String> = (0..3000)
        .map(|_| format!("{:x}", rng.r#gen::<u32>() % 6000))
        .collect();
    let buyer: Vec<String> = (0..2000)
        .map(|_| format!("{:x}", rng.r#gen::<u32>() % 6000))
        .collect();
    check(&c, "random", provider, buyer).await;
    check(&c, "empty", vec![], vec![]).await;
    check(&c, "buyer-empty", keys("a", 0..100), vec![]).await;
    check(&c, "disjoint", keys("a", 0..500), keys("b", 0..500)).await;
    check(&c, "identical", keys("a", 0..700), keys("a", 0..700)).await;
    let mut dups = keys("a", 0..300);
    dups.extend(keys("a", 100..200));
    check(&c, "duplicates", dups.clone(), dups).await;
    check(
        &c,
        "one-vs-100k",
        keys("a", 0..100_000),
        vec!["a00054321".into()],
    )
    .await;
    check(
        &c,
        "100k-vs-one",
        vec!["a00000007".into()],
        keys("a", 0..100_000),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_admit_exactly_the_count() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..200)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 100..300)).await;
    let lic = c.licence("p", Some(5)).await;
    let mut handles = Vec::new();
    for _ in 0..32 {
        let mut client = c.client().await;
        let req = Cluster::job(&lic, "b", "size", "");
        handles.push(tokio::spawn(async move {
            client.submit_job(req).await.expect("submit").into_inner()
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for h in handles {
        let j = h.await.expect("join");
        if j.state_text() == "refused" {
            assert!(
                j.refusal_reasons
                    .iter()
                    .any(|r| r.contains("quota exhausted")),
                "{j:?}"
            );
            // The typed reason tells quota exhaustion apart from money and policy refusals.
            assert!(
                j.refusals
                    .iter()
                    .any(|r| r.code == "QUOTA_EXHAUSTED" && r.message.contains("quota exhausted")),
                "{j:?}"
            );
            refused += 1;
        } else {
            admitted.push(j.job_id);
        }
    }
    assert_eq!(admitted.len(), 5);
    assert_eq!(refused, 27);
    for id in &admitted {
        let j = c.wait(id).await;
        assert_eq!(j.state_text(), "succeeded", "{j:?}");
        assert_eq!(j.result_size, Some(100));
    }
    assert_eq!(c.remaining(&lic).await, Some(0));
    c.assert_audit_verifies().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_the_job_and_releases_its_count() {
    let mut c = Cluster::start(2_000);
    c.fund(1_000_000_000, "fund").await;
    // Large enough that the job is still running when the provider's worker dies.
    c.dataset(&c.provider, "p", "k", &keys("x", 0..400_000))
        .await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 200_000..600_000))
        .await;
    let lic = c.licence("p", Some(2)).await;
    let mut client = c.client().await;
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(c.remaining(&lic).await, Some(1));
    // Wait until both sides report progress, then kill the provider's worker.
    let mut running = false;
    for _ in 0..600 {
        let v = client
            .get_job(pb::JobRef {
                job_id: j.job_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        if v.progress.len() == 2 && v.progress.iter().all(|p| p.phase != "read") {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(running, "job never started");
    c.provider.proc.kill();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed", "{j:?}");
    // The buyer sees the provider's loss only by its kind (or its own side's peer error).
    let provider_worker = c
        .provider
        .proc
        .first_line
        .split_whitespace()
        .nth(1)
        .expect("id");
    assert!(
        j.error == "the provider's side failed: worker_lost" || j.error.contains("(link)"),
        "{}",
        j.error
    );
    assert_eq!(j.delivered_at_ms, None, "failed before its delivery point");
    assert!(!j.error.contains(provider_worker), "{}", j.error);
    assert_eq!(c.remaining(&lic).await, Some(2), "count released");
    assert_eq!(j.charge_micros, 0);
    let t = client
        .list_transfers(pb::ListRequest {})
        .await
        .expect("transfers")
        .into_inner();
    assert!(
        holds_only_voided(&t.transfers, Some(&j.job_id)),
        "no charge for a failed job: {:?}",
        t.transfers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_no_partial_state() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..50)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 0..50)).await;
    c.dataset(
        &c.buyer,
        "b-badrow",
        "k",
        &["x00000001".into(), "x00000002,extra".into()],
    )
    .await;
    c.dataset(&c.buyer, "b-nofile", "k", &[]).await;
    std::fs::remove_file(c.buyer.datasets.join("b-nofile.csv")).expect("rm");
    let lic = c.licence("p", Some(10)).await;
    let mut client = c.client().await;

    // A dataset that does not exist: refused at admission, nothing reserved.
    let j = client
        .submit_job(Cluster::job(&lic, "nope", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    assert!(
        j.refusal_reasons
            .iter()
            .any(|r| r.contains("dataset nope not found")),
        "{j:?}"
    );
    assert_eq!(
        j.refusals
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>(),
        ["NOT_FOUND"],
        "{j:?}"
    );
    assert_eq!(c.remaining(&lic).await, Some(10));

    // An unknown key column: the job fails naming the column and the available ones.
    let mut req = Cluster::job(&lic, "b", "intersection", "unknown-col.csv");
    req.buyer_columns = vec!["email".into()];
    let j = client.submit_job(req).await.expect("submit").into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed");
    assert!(
        j.error.contains("email") && j.error.contains('k'),
        "{}",
        j.error
    );
    assert!(!c.buyer.outputs.join("unknown-col.csv").exists());

    // A malformed CSV row: the job fails naming the line.
    let j = client
        .submit_job(Cluster::job(&lic, "b-badrow", "intersection", "bad.csv"))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed");
    assert!(j.error.contains("line 3"), "{}", j.error);
    assert!(!c.buyer.outputs.join("bad.csv").exists());

    // A registered dataset whose file is gone.
    let j = client
        .submit_job(Cluster::job(&lic, "b-nofile", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed");
    assert!(j.error.contains("not found"), "{}", j.error);

    // The buyer's own bad input consumes the runs it used; nothing was charged.
    assert_eq!(c.remaining(&lic).await, Some(7));
    let t = client
        .list_transfers(pb::ListRequest {})
        .await
        .expect("transfers")
        .into_inner();
    assert!(
        holds_only_voided(&t.transfers, None),
        "only the deposit and released holds: {:?}",
        t.transfers
    );

    // Malformed requests are rejected before anything is recorded.
    let mut req = Cluster::job(&lic, "b", "bogus-mode", "");
    let err = client
        .submit_job(req.clone())
        .await
        .expect_err("must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    req.mode = pb::PsiMode::Unspecified.into();
    assert_eq!(
        client
            .submit_job(req.clone())
            .await
            .expect_err("an unset mode must be refused, not defaulted")
            .code(),
        tonic::Code::InvalidArgument
    );
    req.mode = pb::PsiMode::Size.into();
    req.output = "../escape.csv".into();
    assert_eq!(
        client
            .submit_job(req)
            .await
            .expect_err("must be refused")
            .code(),
        tonic::Code::InvalidArgument
    );
    let err = c
        .provider_client()
        .await
        .create_licence(pb::CreateLicenceRequest {
            licensor: "prov".into(),
            licensee: "u1".into(),
            dataset_id: "p".into(),
            policy_json: "{not json".into(),
            ..Default::default()
        })
        .await
        .expect_err("must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(c.remaining(&lic).await, Some(7));
}

#[test]
fn the_demo_passes_and_writes_its_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.json");
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["demo", "--rows", "3000", "--dir"])
        .arg(dir.path().join("demo"))
        .arg("--summary-json")
        .arg(&summary)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    let jobs = s["jobs"].as_array().expect("jobs");
    let status: Vec<&str> = jobs.iter().filter_map(|j| j["status"].as_str()).collect();
    assert_eq!(status, ["succeeded", "succeeded", "refused"]);
    for j in &jobs[..2] {
        assert_eq!(j["result_size"], j["expected_size"]);
        assert_eq!(j["scene"], "psi");
    }
    assert!(
        s["refusals"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("quota exhausted")
    );
    assert_eq!(s["ledger"]["balanced"], true);
    assert_eq!(s["audit"]["verified"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_after_an_operator_restart_and_counts_survive() {
    let mut c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k", &keys("x", 0..100)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 50..150)).await;
    let lic = c.licence("p", Some(3)).await;
    let j = c
        .client()
        .await
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(c.wait(&j.job_id).await.state_text(), "succeeded");

    c.restart_operator();
    assert_eq!(
        c.remaining(&lic).await,
        Some(2),
        "the count survives the restart"
    );
    // The workers come back by themselves; until they do, submissions are refused (no count used).
    let mut done = None;
    for _ in 0..300 {
        let j = c
            .client()
            .await
            .submit_job(Cluster::job(&lic, "b", "size", ""))
            .await
            .expect("submit")
            .into_inner();
        if j.state_text() != "refused" {
            done = Some(c.wait(&j.job_id).await);
            break;
        }
        assert!(
            j.refusal_reasons
                .iter()
                .any(|r| r.contains("no live worker")),
            "{j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j = done.expect("workers never reconnected");
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    assert_eq!(j.result_size, Some(50));
    assert_eq!(c.remaining(&lic).await, Some(1));
    c.assert_audit_verifies().await;
}
