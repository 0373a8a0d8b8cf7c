//! `tee` jobs end to end (issue "TEE scene"): the provider's worker runs a simulated enclave
//! (`--insecure-simulated-tee`), attests to the operator (`--tee-policy`), and is the only
//! place the provider's sealed dataset is opened: the key broker releases its key to the
//! enclave for the job, the buyer's rows arrive sealed to the enclave's key, the result goes
//! back sealed to the buyer. The same job under a licence that asks for SGX is refused, and
//! no key leaves for it.

use std::collections::BTreeMap;
use std::process::Command;

use tessera_proto::v1 as pb;

use crate::harness::{BIN, Cluster, PROVIDER, USER, cash, read_csv};

const POLICY: &str = r#"{"policy_id": "dev-tee", "result_ttl_secs": 600,
    "insecure_simulated_tee": {"measurement": ["dev-build-1"]}}"#;

fn tee_job(lic: &str, query: &str, output: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        scene: "tee".into(),
        buyer_columns: vec!["id".into()],
        provider_columns: vec!["id".into()],
        mpc_query: query.into(),
        mpc_columns: vec![
            pb::MpcColumn {
                column: "buyer.region".into(),
                abs_max: 0,
                levels: 3,
            },
            pb::MpcColumn {
                column: "provider.income".into(),
                abs_max: 100_000,
                levels: 0,
            },
        ],
        ..Cluster::job(lic, "bt", "intersection", output)
    }
}

/// Seals the provider's clear CSV `text` as dataset `id` (`id.tseal` in the provider
/// worker's directory) with `tessera dataset seal`, and checks that the sealed file shows no
/// clear text. The clear rows exist only outside the workers' directories.
async fn seal_provider_dataset(c: &Cluster, id: &str, text: &str, rows: u64) {
    let clear = c.dir.path().join(format!("{id}-clear.csv"));
    std::fs::write(&clear, text).expect("clear file");
    c.provider_client()
        .await
        .create_dataset(pb::CreateDatasetRequest {
            dataset_id: id.into(),
            owner_party: PROVIDER.into(),
            location: format!("{id}.tseal"),
            description: "sealed".into(),
            declared_rows: Some(rows),
        })
        .await
        .expect("create dataset");
    let sealed = c.provider.datasets.join(format!("{id}.tseal"));
    let out = Command::new(BIN)
        .args(["dataset", "seal", "--dataset", id, "--input"])
        .arg(&clear)
        .arg("--output")
        .arg(&sealed)
        .args(["--operator", &c.url, "--ca-file", &c.ca_file])
        .env("TESSERA_TOKEN", &c.provider_token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tessera");
    assert!(
        out.status.success(),
        "dataset seal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_disk = std::fs::read(&sealed).expect("sealed file");
    assert!(on_disk.starts_with(b"TSEAL"));
    let header = text.lines().next().unwrap_or_default();
    for name in header.split(',').filter(|n| n.len() > 2) {
        assert!(
            !on_disk.windows(name.len()).any(|w| w == name.as_bytes()),
            "the sealed file shows no clear text ({name})"
        );
    }
}

fn licence_policy(env_hard: &str) -> String {
    format!(
        r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"tee","counts":5,"minGroupSize":4,"aggregatesOnly":true,
                "envHard":["{env_hard}"],"visitArea":["r1"],"cpCenter":["c1"]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_runs_in_the_attested_enclave_on_the_sealed_dataset_and_sgx_is_refused() {
    let c = Cluster::start_tee(POLICY, "dev-build-1");
    c.fund(100_000_000, "fund").await;
    let income = |i: u64| (i * 53 % 997) as f64 + 0.25;
    let mut text = String::from("id,income\n");
    for i in (1..=50u64).rev() {
        text.push_str(&format!("{i},{}\n", income(i)));
    }
    seal_provider_dataset(&c, "pt", &text, 50).await;

    // The buyer: ids 11..=60 (40 in common, 11..=50), a region each; region 2 has 3 rows.
    let region = |i: u64| {
        if i.is_multiple_of(13) {
            2
        } else {
            (i % 2) as u32
        }
    };
    let buyer_rows: Vec<String> = (11..=60u64).map(|i| format!("{i},{}", region(i))).collect();
    c.dataset(&c.buyer, "bt", "id,region", &buyer_rows).await;

    let lic = c
        .licence_with_policy("pt", licence_policy("tee:insecure-simulated-tee"))
        .await;
    let before = cash(&c).await;
    let mut client = c.client().await;
    let query = "SELECT count(*), sum(provider.income), max(provider.income) \
                 GROUP BY buyer.region";
    let job = client
        .submit_job(tee_job(&lic, query, "tee.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(job.state_text(), "admitted", "{job:?}");
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    // The result size is the result's rows (three groups), not the 40 aligned rows.
    assert_eq!(done.result_size, Some(3), "{done:?}");

    let mut want: BTreeMap<u32, (u64, f64, f64)> = BTreeMap::new();
    for i in 11..=50u64 {
        let e = want.entry(region(i)).or_insert((0, 0.0, f64::MIN));
        e.0 += 1;
        e.1 += income(i);
        e.2 = e.2.max(income(i));
    }
    assert!(
        want[&2].0 < 4 && want[&0].0 >= 4 && want[&1].0 >= 4,
        "{want:?}"
    );
    let (_, rows) = read_csv(&c.buyer.outputs.join("tee.csv"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        let g: u32 = row[0].parse().expect("group");
        let (n, sum, max) = want[&g];
        if n < 4 {
            assert_eq!(row[1..], ["false", "", "", ""], "group {g} suppressed");
            continue;
        }
        assert_eq!(row[1], "true");
        assert_eq!(row[2].parse::<u64>().expect("count"), n);
        assert!(
            (row[3].parse::<f64>().expect("sum") - sum).abs() < 1e-6,
            "{row:?}"
        );
        assert!(
            (row[4].parse::<f64>().expect("max") - max).abs() < 1e-9,
            "{row:?}"
        );
    }
    assert_eq!(c.remaining(&lic).await, Some(4));
    // The operator's view of the workers shows the provider's attestation, the buyer's none.
    let workers = c
        .admin()
        .await
        .list_workers(pb::WorkerQuery::default())
        .await
        .expect("workers")
        .into_inner()
        .workers;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for w in &workers {
        let party = w.attributes.as_ref().map(|a| a.party.as_str());
        if party == Some(PROVIDER) {
            assert_eq!(
                (w.tee_kind.as_str(), w.tee_status.as_str()),
                ("insecure-simulated-tee", "warning"),
                "{w:?}"
            );
            assert!(w.tee_expires_ms > now_ms, "{w:?}");
        } else {
            assert!(w.tee_kind.is_empty() && w.tee_expires_ms == 0, "{w:?}");
        }
    }
    assert!(done.charge_micros > 0);
    assert_eq!(cash(&c).await, before - done.charge_micros);

    // The dataset's log in the chain: the key's making, its release for this job (the
    // worker's appraisals are entries about the worker).
    let log = c
        .provider_client()
        .await
        .data_item_log(pb::DatasetRef {
            dataset_id: "pt".into(),
        })
        .await
        .expect("log")
        .into_inner();
    let kinds: Vec<&str> = log.entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"tee_key_create"), "{kinds:?}");
    let releases: Vec<_> = log
        .entries
        .iter()
        .filter(|e| e.kind == "tee_key_release")
        .collect();
    assert_eq!(releases.len(), 1, "{kinds:?}");
    assert!(releases[0].detail_json.contains(&job.job_id));

    // No key in common: the job succeeds and reports no group (nothing to suppress or show).
    c.dataset(
        &c.buyer,
        "bx",
        "id,region",
        &["1000,0".into(), "1001,1".into()],
    )
    .await;
    let mut none = tee_job(&lic, query, "none.csv");
    none.buyer_dataset_id = "bx".into();
    let j = client.submit_job(none).await.expect("submit").into_inner();
    let none_id = j.job_id.clone();
    let d = c.wait(&j.job_id).await;
    assert_eq!(d.state_text(), "succeeded", "{d:?}");
    let text = std::fs::read_to_string(c.buyer.outputs.join("none.csv")).expect("result");
    assert!(
        text.lines()
            .skip(1)
            .all(|l| l.split(',').nth(1) == Some("false")),
        "{text}"
    );
    // The buyer's own bad value (a category code past its levels): the buyer's input error,
    // named to the buyer by column, never sent to the provider's side.
    c.dataset(&c.buyer, "by", "id,region", &["11,7".into(), "12,0".into()])
        .await;
    let mut bad_rows = tee_job(&lic, query, "bad-rows.csv");
    bad_rows.buyer_dataset_id = "by".into();
    let j = client
        .submit_job(bad_rows)
        .await
        .expect("submit")
        .into_inner();
    let bad_rows_id = j.job_id.clone();
    let d = c.wait(&j.job_id).await;
    assert_eq!(d.state_text(), "failed", "{d:?}");
    assert_eq!(d.error_kind, "input", "{d:?}");
    assert!(d.error.contains("region"), "{d:?}");

    // Under a licence that asks for SGX: refused at admission (no enclave meets it), nothing
    // counted, no key released.
    let sgx = c.licence_with_policy("pt", licence_policy("tee:sgx")).await;
    let refused = client
        .submit_job(tee_job(&sgx, query, "sgx.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("attested enclave") && r.contains("tee:sgx")),
        "{refused:?}"
    );
    assert_eq!(c.remaining(&sgx).await, Some(5));
    // A row-level query under a licence that suppresses groups below 4 rows: refused at
    // admission with the reason (a row is a group of one), nothing counted.
    let k_only = c
        .licence_with_policy(
            "pt",
            format!(
                r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                    "useScenes":[{{"useSence":"tee","counts":5,"minGroupSize":4,
                        "envHard":["tee:insecure-simulated-tee"]}}]}}"#
            ),
        )
        .await;
    let row_level = client
        .submit_job(tee_job(&k_only, "SELECT provider.income", "rows.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(row_level.state_text(), "refused", "{row_level:?}");
    assert!(
        row_level
            .refusal_reasons
            .iter()
            .any(|r| r.contains("output controls")),
        "{row_level:?}"
    );
    assert_eq!(c.remaining(&k_only).await, Some(5));
    // A provider value that does not fit its declaration (text in a numeric column): the
    // provider's input error, whatever the timing, never a broken link; the run not counted.
    seal_provider_dataset(&c, "pbad", "id,income\n11,abc\n12,5\n", 2).await;
    let bad_lic = c
        .licence_with_policy("pbad", licence_policy("tee:insecure-simulated-tee"))
        .await;
    let j = client
        .submit_job(tee_job(&bad_lic, query, "pbad.csv"))
        .await
        .expect("submit")
        .into_inner();
    let d = c.wait(&j.job_id).await;
    assert_eq!(d.state_text(), "failed", "{d:?}");
    assert_eq!(d.error, "the provider's side failed: input", "{d:?}");
    assert_eq!(c.remaining(&bad_lic).await, Some(5));
    // A tee job with neither a query nor a join: told what a tee job computes.
    let mut neither = tee_job(&lic, "", "neither.csv");
    neither.mpc_columns.clear();
    let e = client.submit_job(neither).await.expect_err("neither");
    assert!(
        e.code() == tonic::Code::InvalidArgument
            && e.message().contains("a statistics query")
            && e.message().contains("a join"),
        "{e:?}"
    );
    // A tee job naming a PSI protocol: refused before admission.
    let mut bad = tee_job(&lic, query, "bad.csv");
    bad.protocol = pb::PsiProtocol::Ecdh.into();
    let e = client.submit_job(bad).await.expect_err("protocol");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let log = c
        .provider_client()
        .await
        .data_item_log(pb::DatasetRef {
            dataset_id: "pt".into(),
        })
        .await
        .expect("log")
        .into_inner();
    // One release for each job whose provider task ran to its enclave: the two that
    // succeeded; the buyer's bad-rows job fails on the buyer's side, its provider task
    // cancelled before or after it asked (timing); none for a job refused at admission.
    let released: Vec<&str> = log
        .entries
        .iter()
        .filter(|e| e.kind == "tee_key_release")
        .map(|e| e.detail_json.as_str())
        .collect();
    let of = |id: &str| released.iter().filter(|d| d.contains(id)).count();
    assert_eq!(of(&job.job_id), 1, "{released:?}");
    assert_eq!(of(&none_id), 1, "{released:?}");
    assert!(of(&bad_rows_id) <= 1, "{released:?}");
    assert_eq!(
        released.len(),
        2 + of(&bad_rows_id),
        "no release for a refused job: {released:?}"
    );
    c.assert_audit_verifies().await;
}

/// A join in the enclave (a PSI with the provider's payload columns): the licence lists one
/// of the provider's three columns in `payloadColumns`; the buyer receives that column for
/// its matched rows and nothing of the other two; asking for another column is refused at
/// admission with nothing counted; inner, left and difference against the plaintext join;
/// the CLI's `job tee --join` end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_in_the_enclave_delivers_only_the_payload_columns_the_licence_lists() {
    let c = Cluster::start_tee(POLICY, "dev-build-1");
    c.fund(100_000_000, "fund").await;
    // The provider: ids 1..=40, id 7 twice (its first row's values are the ones delivered);
    // every value tagged with its column so that a leak would show in the result.
    let mut text = String::from("id,income,age,secret\n");
    for i in 1..=40u64 {
        text.push_str(&format!("{i},INCOME{i},AGE{i},SECRET{i}\n"));
        if i == 7 {
            text.push_str("7,INCOME7b,AGE7b,SECRET7b\n");
        }
    }
    seal_provider_dataset(&c, "pj", &text, 41).await;
    // The buyer: ids 31..=50, id 35 twice, a city each.
    let mut buyer_ids: Vec<u64> = (31..=50).collect();
    buyer_ids.insert(5, 35);
    buyer_ids.push(7);
    let buyer_rows: Vec<String> = buyer_ids.iter().map(|i| format!("{i},city{i}")).collect();
    c.dataset(&c.buyer, "bj", "id,city", &buyer_rows).await;
    let policy = format!(
        r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"tee","counts":5,"payloadColumns":["income"],
                "envHard":["tee:insecure-simulated-tee"],"visitArea":["r1"],"cpCenter":["c1"]}}]}}"#
    );
    // Licences whose scenes could never run on their dataset are refused when made: a tee
    // scene on a clear dataset or naming no enclave, another scene on a sealed one.
    c.dataset(&c.provider, "clear", "id,income", &["1,2".into()])
        .await;
    for (dataset, scene, why) in [
        (
            "clear",
            r#"{"useSence":"tee","envHard":["tee:insecure-simulated-tee"]}"#,
            "not sealed",
        ),
        (
            "pj",
            r#"{"useSence":"tee","envHard":["x86"]}"#,
            "names no enclave",
        ),
        (
            "pj",
            r#"{"useSence":"tee","envHard":["tee:nitro"]}"#,
            "unknown TEE kind",
        ),
        ("pj", r#"{"useSence":"psi"}"#, "is sealed"),
        (
            "pj",
            r#"{"useSence":"tee","envHard":["tee:insecure-simulated-tee:measurement="]}"#,
            "empty measurement",
        ),
    ] {
        let e = c
            .provider_client()
            .await
            .create_licence(pb::CreateLicenceRequest {
                licensor: PROVIDER.into(),
                licensee: USER.into(),
                dataset_id: dataset.into(),
                policy_json: format!(
                    r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],"useScenes":[{scene}]}}"#
                ),
                price_per_job_micros: 1_000,
                price_per_1k_rows_micros: 10,
                operator_share_bps: 2_000,
                monthly_price_micros: 0,
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(why), "{why}: {e:?}");
    }
    // `dataset seal` refuses, before any key is issued: a dataset registered at a clear file,
    // an output not named .tseal, input that is not a CSV file of one width.
    let good = c.dir.path().join("good.csv");
    std::fs::write(&good, "id,v\n1,2\n").expect("file");
    let ragged = c.dir.path().join("ragged.csv");
    std::fs::write(&ragged, "id,v\n1,2,3\n").expect("file");
    for (dataset, input, output, why) in [
        ("clear", &good, "x.tseal", "a clear file"),
        ("pj", &good, "x.csv", "NAME.tseal"),
        (
            "pj",
            &ragged,
            "y.tseal",
            "not a CSV file a tee job can read",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["dataset", "seal", "--dataset", dataset, "--input"])
            .arg(input)
            .arg("--output")
            .arg(c.dir.path().join(output))
            .args(["--operator", &c.url, "--ca-file", &c.ca_file])
            .env("TESSERA_TOKEN", &c.provider_token)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tessera");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
        assert!(!c.dir.path().join(output).exists());
    }
    let lic = c.licence_with_policy("pj", policy).await;
    let join_job = |kind: pb::JoinKind, payload: &[&str], output: &str| pb::SubmitJobRequest {
        scene: "tee".into(),
        buyer_columns: vec!["id".into()],
        provider_columns: vec!["id".into()],
        carry_columns: vec!["city".into()],
        join: kind.into(),
        payload_columns: payload.iter().map(|s| s.to_string()).collect(),
        ..Cluster::job(&lic, "bj", "intersection", output)
    };
    let mut client = c.client().await;

    // A column the licence does not list: refused at admission, nothing counted.
    let refused = client
        .submit_job(join_job(pb::JoinKind::Inner, &["income", "age"], "no.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("age") && r.contains("payloadColumns")),
        "{refused:?}"
    );
    assert_eq!(c.remaining(&lic).await, Some(5));

    // Submission checks: a left join whose buyer column is named like its matched flag; an
    // empty payload column name; the buyer's own dataset sealed.
    c.dataset(&c.buyer, "bmm", "id,matched", &["1,x".into()])
        .await;
    let mut flag = join_job(pb::JoinKind::Left, &["income"], "flag.csv");
    flag.buyer_dataset_id = "bmm".into();
    flag.carry_columns = vec!["matched".into()];
    let e = client.submit_job(flag).await.expect_err("matched");
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("matched"),
        "{e:?}"
    );
    let e = client
        .submit_job(join_job(pb::JoinKind::Inner, &["income", ""], "e.csv"))
        .await
        .expect_err("empty name");
    assert!(e.message().contains("empty column name"), "{e:?}");
    c.client()
        .await
        .create_dataset(pb::CreateDatasetRequest {
            dataset_id: "bsealed".into(),
            owner_party: crate::harness::BUYER.into(),
            location: "bsealed.tseal".into(),
            description: String::new(),
            declared_rows: None,
        })
        .await
        .expect("buyer's sealed dataset");
    let mut sealed = join_job(pb::JoinKind::Inner, &["income"], "s.csv");
    sealed.buyer_dataset_id = "bsealed".into();
    let e = client.submit_job(sealed).await.expect_err("sealed");
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("sealed"),
        "{e:?}"
    );
    assert_eq!(c.remaining(&lic).await, Some(5));

    let provider_has = |i: u64| (1..=40).contains(&i);
    let want_income = |i: u64| {
        if i == 7 {
            "INCOME7".to_string()
        } else {
            format!("INCOME{i}")
        }
    };
    // Inner.
    let job = client
        .submit_job(join_job(pb::JoinKind::Inner, &["income"], "inner.csv"))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    // 31..=40 and 7: eleven distinct common keys (35 twice in the buyer's rows).
    assert_eq!(done.result_size, Some(11), "{done:?}");
    let (header, rows) = read_csv(&c.buyer.outputs.join("inner.csv"));
    assert_eq!(header, ["id", "city", "income"]);
    let want: Vec<Vec<String>> = buyer_ids
        .iter()
        .filter(|&&i| provider_has(i))
        .map(|&i| vec![i.to_string(), format!("city{i}"), want_income(i)])
        .collect();
    assert_eq!(rows, want);
    let bytes = std::fs::read_to_string(c.buyer.outputs.join("inner.csv")).expect("file");
    assert!(
        !bytes.contains("AGE") && !bytes.contains("SECRET") && !bytes.contains("INCOME7b"),
        "{bytes}"
    );

    // Difference.
    let job = client
        .submit_job(join_job(pb::JoinKind::Difference, &[], "diff.csv"))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    let (header, rows) = read_csv(&c.buyer.outputs.join("diff.csv"));
    assert_eq!(header, ["id", "city"]);
    let want: Vec<Vec<String>> = buyer_ids
        .iter()
        .filter(|&&i| !provider_has(i))
        .map(|&i| vec![i.to_string(), format!("city{i}")])
        .collect();
    assert_eq!(rows, want);

    // Left, through the CLI.
    let out = Command::new(BIN)
        .args([
            "job",
            "tee",
            "--licence",
            &lic,
            "--buyer-party",
            crate::harness::BUYER,
            "--buyer-dataset",
            "bj",
            "--buyer-columns",
            "id",
            "--provider-columns",
            "id",
            "--join",
            "left",
            "--payload",
            "income",
            "--carry-columns",
            "city",
            "--output",
            "left.csv",
            "--watch",
        ])
        .args(["--operator", &c.url, "--ca-file", &c.ca_file])
        .env("TESSERA_TOKEN", &c.buyer_token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tessera");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "job tee: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[tee]") && !stdout.contains("rr22"),
        "{stdout}"
    );
    let (header, rows) = read_csv(&c.buyer.outputs.join("left.csv"));
    assert_eq!(header, ["id", "city", "matched", "income"]);
    let want: Vec<Vec<String>> = buyer_ids
        .iter()
        .map(|&i| {
            let hit = provider_has(i);
            vec![
                i.to_string(),
                format!("city{i}"),
                hit.to_string(),
                if hit { want_income(i) } else { String::new() },
            ]
        })
        .collect();
    assert_eq!(rows, want);
    assert_eq!(c.remaining(&lic).await, Some(2));
    c.assert_audit_verifies().await;
}
