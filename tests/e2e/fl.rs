//! `fl` jobs end to end (issue "Federated learning with secure aggregation that survives
//! dropouts"): three providers' workers and the buyer's aggregator, real processes over
//! mutual-TLS peer links, a model whose test accuracy matches centralised training on the
//! union of the providers' rows; every licence counted once and charged on its own bill line;
//! the policy's `aiFrame` checked against what the workers declare.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_fl::data::{DataSpec, Dataset, Standardisation, read_dataset};
use tessera_fl::model::{LocalTraining, Model, ModelKind};
use tessera_proto::v1 as pb;

use crate::harness::{BUYER, Cluster, PROVIDER, Party, USER, connect_as};

const FEATURES: [&str; 4] = ["x0", "x1", "x2", "x3"];

/// `n` rows `id,x0..x3,y` with features on different scales and `P(y = 1) = σ(w·z + 0.3)` for
/// the unscaled `z`.
fn rows(n: usize, rng: &mut ChaCha20Rng) -> Vec<String> {
    let w = [1.4, -1.1, 0.8, -0.5];
    (0..n)
        .map(|i| {
            let z: Vec<f64> = (0..4).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let s: f64 = z.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + 0.3;
            let y = u8::from(rng.gen_bool(1.0 / (1.0 + (-s).exp())));
            let x: Vec<String> = z
                .iter()
                .enumerate()
                .map(|(j, v)| format!("{}", v * 10f64.powi(j as i32) + 5.0 * j as f64))
                .collect();
            format!("r{i},{},{y}", x.join(","))
        })
        .collect()
}

const HEADER: &str = "id,x0,x1,x2,x3,y";

fn spec() -> DataSpec {
    DataSpec {
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        label: "y".into(),
        rows_max: 1_000_000,
        standardisation: Standardisation::None,
    }
}

/// Writes `rows` as `id.csv` in `party`'s dataset directory and registers it (declared rows
/// given) with the owner's token.
async fn dataset(c: &Cluster, party: &Party, token: &str, id: &str, rows: &[String]) {
    let file = format!("{id}.csv");
    std::fs::write(
        party.datasets.join(&file),
        format!("{HEADER}\n{}\n", rows.join("\n")),
    )
    .expect("write dataset");
    connect_as(c, token)
        .await
        .create_dataset(pb::CreateDatasetRequest {
            dataset_id: id.into(),
            owner_party: party.name.clone(),
            location: file,
            description: String::new(),
            declared_rows: Some(rows.len() as u64),
        })
        .await
        .expect("create dataset");
}

/// A licence of `dataset` by `licensor` to USER with one `fl` scene of `counts` runs and the
/// given `aiFrame` list.
async fn licence(
    c: &Cluster,
    token: &str,
    licensor: &str,
    dataset: &str,
    counts: u64,
    ai_frame: &str,
) -> String {
    let policy = format!(
        r#"{{"policyName":"fl","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"fl","counts":{counts},"aiFrame":[{ai_frame}]}}]}}"#
    );
    connect_as(c, token)
        .await
        .create_licence(pb::CreateLicenceRequest {
            licensor: licensor.into(),
            licensee: USER.into(),
            dataset_id: dataset.into(),
            policy_json: policy,
            price_per_job_micros: 1_000,
            price_per_1k_rows_micros: 10,
            operator_share_bps: 2_000,
            monthly_price_micros: 0,
        })
        .await
        .expect("create licence")
        .into_inner()
        .licence_id
}

fn fl_job(licences: &[&str], output: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        licence_id: licences[0].into(),
        scene: "fl".into(),
        buyer_party: BUYER.into(),
        output: output.into(),
        fl: Some(pb::FlTraining {
            licences: licences.iter().map(|l| l.to_string()).collect(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            label: "y".into(),
            rounds: Some(12),
            epochs: Some(1),
            batch_size: Some(32),
            learning_rate: Some(0.1),
            standardise: true,
            ..pb::FlTraining::default()
        }),
        ..pb::SubmitJobRequest::default()
    }
}

/// [`fl_job`] with its training changed by `change`.
fn fl_job_with(
    licences: &[&str],
    output: &str,
    change: impl FnOnce(&mut pb::FlTraining),
) -> pb::SubmitJobRequest {
    let mut j = fl_job(licences, output);
    if let Some(t) = j.fl.as_mut() {
        change(t);
    }
    j
}

/// The model file as `name → value`.
fn read_model(path: &std::path::Path) -> std::collections::HashMap<String, f64> {
    let (header, rows) = crate::harness::read_csv(path);
    assert_eq!(header, ["parameter", "value"]);
    rows.into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("a number")))
        .collect()
}

async fn remaining(c: &Cluster, token: &str, licence: &str) -> Option<u64> {
    let l = connect_as(c, token)
        .await
        .get_licence(pb::LicenceRef {
            licence_id: licence.into(),
        })
        .await
        .expect("licence")
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&l.policy_json).expect("policy json");
    v["useScenes"][0]["remainingCounts"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_train_a_model_as_good_as_centralised_and_each_licence_is_counted_once() {
    let c = Cluster::start_with(5_000, &["--frameworks", "tessera-fl"]);
    c.fund(100_000_000, "fund").await;
    let (p2, t2) = c.add_provider("prov2", "pu2").await;
    let (p3, t3) = c.add_provider("prov3", "pu3").await;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let sizes = [700, 900, 1100];
    let parts: Vec<Vec<String>> = sizes.iter().map(|&n| rows(n, &mut rng)).collect();
    let test_rows = rows(3000, &mut rng);
    let providers: [(&Party, &str, &str); 3] = [
        (&c.provider, c.provider_token.as_str(), PROVIDER),
        (&p2, t2.as_str(), "prov2"),
        (&p3, t3.as_str(), "prov3"),
    ];
    let mut lics = Vec::new();
    for (k, ((party, token, name), part)) in providers.iter().zip(&parts).enumerate() {
        let id = format!("fl{k}");
        dataset(&c, party, token, &id, part).await;
        lics.push(licence(&c, token, name, &id, 2, r#""tessera-fl""#).await);
    }
    let l: Vec<&str> = lics.iter().map(String::as_str).collect();
    let mut client = c.client().await;
    let j = client
        .submit_job(fl_job(&l, "model.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        j.co_licences,
        vec![lics[1].clone(), lics[2].clone()],
        "{j:?}"
    );
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    assert!(j.delivered_at_ms.is_some(), "{j:?}");

    // The model, applied as the file documents, against centralised training on the union
    // with the same standardisation and the same SGD budget.
    let m = read_model(&c.buyer.outputs.join("model.csv"));
    let mean: Vec<f64> = FEATURES.iter().map(|f| m[&format!("mean:{f}")]).collect();
    let scale: Vec<f64> = FEATURES.iter().map(|f| m[&format!("scale:{f}")]).collect();
    let s = Standardisation::Given {
        mean: mean.clone(),
        scale: scale.clone(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let read = |name: &str, rows: &[String]| -> Dataset {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).expect("write");
        let mut d = read_dataset(&path, &spec()).expect("read");
        d.standardise(&s).expect("standardise");
        d
    };
    let union: Vec<String> = parts.concat();
    let union = read("union.csv", &union);
    let test = read("test.csv", &test_rows);
    // The global moments the secure round gave are the union's.
    for (j, col) in union.x().columns().into_iter().enumerate() {
        assert!(
            col.mean().expect("mean").abs() < 1e-6,
            "feature {j} centred"
        );
    }
    let mut fed =
        Model::new(ModelKind::Logistic, 4, &mut ChaCha20Rng::seed_from_u64(1)).expect("model");
    let mut flat: Vec<f64> = FEATURES.iter().map(|f| m[&format!("weight:{f}")]).collect();
    flat.push(m["bias"]);
    fed.set_flat(&flat).expect("weights");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut central = Model::new(ModelKind::Logistic, 4, &mut rng).expect("model");
    central
        .train(
            &union,
            &LocalTraining {
                epochs: 12,
                batch_size: 32,
                learning_rate: 0.1,
            },
            &mut rng,
        )
        .expect("train");
    let (fa, ca) = (
        fed.accuracy(&test).expect("accuracy"),
        central.accuracy(&test).expect("accuracy"),
    );
    println!("test accuracy: federated {fa:.4}, centralised {ca:.4}");
    assert!(fa > 0.7, "the model learnt: {fa}");
    assert!(
        (fa - ca).abs() <= 0.01,
        "federated {fa:.4} vs centralised {ca:.4}"
    );

    // Each licence counted once; each provider paid on its own bill line, on its own rows.
    for ((_, token, _), lic) in providers.iter().zip(&lics) {
        assert_eq!(remaining(&c, token, lic).await, Some(1), "{lic}");
    }
    let want: i64 = sizes
        .iter()
        .map(|&n: &usize| 1_000 + (10 * n as i64 + 500) / 1_000)
        .sum();
    assert_eq!(j.charge_micros, want, "{j:?}");
    let (_, mine, balanced) = crate::money::money_of(&c, &j.job_id).await;
    assert!(balanced);
    // Metered per party: each provider's rows, CPU and bytes; the aggregator's dropouts (none).
    let usage = crate::mpc::usage(&c).await;
    for ((_, _, name), n) in providers.iter().zip(sizes) {
        use crate::mpc::metric;
        assert_eq!(
            metric(&usage, &j.job_id, name, "rows_in"),
            n as u64,
            "{name}"
        );
        assert!(metric(&usage, &j.job_id, name, "bytes_sent") > 0, "{name}");
    }
    assert!(
        usage.iter().any(|e| e.job_id == j.job_id
            && e.party == BUYER
            && e.metric == "dropouts"
            && e.quantity == 0),
        "the aggregator's dropouts are metered"
    );
    assert!(crate::mpc::metric(&usage, &j.job_id, BUYER, "bytes_received") > 0);
    let mut payees: Vec<&str> = mine.iter().map(|l| l.provider.as_str()).collect();
    payees.sort_unstable();
    assert_eq!(payees, [PROVIDER, "prov2", "prov3"], "{mine:?}");
    // Every provider sees the job; only the buyer sees its result.
    for (_, token, name) in &providers {
        let seen = connect_as(&c, token)
            .await
            .get_job(pb::JobRef {
                job_id: j.job_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name} cannot see the job: {e}"))
            .into_inner();
        assert_eq!(seen.result_size, None, "{name}: {seen:?}");
    }
    // Each provider finds the job in its list and in its dataset's operation log.
    for (k, (_, token, name)) in providers.iter().enumerate() {
        let mut pc = connect_as(&c, token).await;
        let listed = pc
            .list_jobs(pb::JobQuery::default())
            .await
            .expect("list")
            .into_inner()
            .jobs;
        assert!(listed.iter().any(|x| x.job_id == j.job_id), "{name}");
        let log = pc
            .data_item_log(pb::DatasetRef {
                dataset_id: format!("fl{k}"),
            })
            .await
            .expect("log")
            .into_inner();
        assert!(
            log.entries.iter().any(|e| e.subject == j.job_id),
            "{name}: the job is in its dataset's log"
        );
    }
    // No provider's worker wrote anything.
    for (party, _, _) in &providers {
        let written: Vec<_> = std::fs::read_dir(&party.outputs)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().is_file())
                    .collect()
            })
            .unwrap_or_default();
        assert!(written.is_empty(), "{}: {written:?}", party.name);
    }

    // A licence whose aiFrame no worker declares: refused, nothing counted.
    let other = licence(&c, &t2, "prov2", "fl1", 2, r#""pytorch""#).await;
    let refused = client
        .submit_job(fl_job(&[&lics[0], &other], "model2.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("prov2") && r.contains("fits")),
        "{refused:?}"
    );
    assert_eq!(remaining(&c, &c.provider_token, &lics[0]).await, Some(1));
    assert_eq!(remaining(&c, &t2, &other).await, Some(2));
    // Bad requests are refused before admission.
    for (bad, why) in [
        (fl_job(&[&lics[0]], "one.csv"), "2 to 64"),
        (fl_job(&[&lics[0], &lics[0]], "twice.csv"), "named twice"),
        (
            fl_job_with(&l, "x.csv", |t| t.label = "x0".into()),
            "also a feature",
        ),
        (
            pb::SubmitJobRequest {
                buyer_dataset_id: "nope".into(),
                ..fl_job(&l, "x.csv")
            },
            "buyer_dataset_id",
        ),
        (
            fl_job_with(&l, "x.csv", |t| t.sample_fraction = Some(0.3)),
            "below the threshold",
        ),
        (
            fl_job_with(&l, "x.csv", |t| {
                t.model = "mlp".into();
                t.hidden = Some(0);
            }),
            "hidden units",
        ),
        (fl_job_with(&l, "x.csv", |t| t.rounds = Some(0)), "rounds 0"),
    ] {
        let e = client.submit_job(bad).await.expect_err(why);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {e:?}");
    }
    // A provider whose file is bad (a label cell of 2) fails the job as that provider's input
    // error, before anything was used: nothing counted, nothing charged, no model.
    let mut bad_rows = rows(50, &mut ChaCha20Rng::seed_from_u64(3));
    bad_rows[7] = "r7,1,2,3,4,2".into();
    dataset(&c, &p3, &t3, "flbad", &bad_rows).await;
    let bad_lic = licence(&c, &t3, "prov3", "flbad", 2, r#""tessera-fl""#).await;
    let before: Vec<Option<u64>> = vec![
        remaining(&c, &c.provider_token, &lics[0]).await,
        remaining(&c, &t2, &lics[1]).await,
    ];
    let j = client
        .submit_job(fl_job(&[&lics[0], &lics[1], &bad_lic], "bad.csv"))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "failed", "{j:?}");
    assert_eq!(j.error, "the provider's side failed: input", "{j:?}");
    assert_eq!(j.charge_micros, 0, "{j:?}");
    // The failing provider's owner sees the cause; another provider its kind only.
    let get = |token: String, id: String| {
        let c = &c;
        async move {
            connect_as(c, &token)
                .await
                .get_job(pb::JobRef { job_id: id })
                .await
                .expect("get")
                .into_inner()
                .error
        }
    };
    let own = get(t3.clone(), j.job_id.clone()).await;
    assert!(own.contains("is not 0 or 1"), "{own}");
    let other = get(c.provider_token.clone(), j.job_id.clone()).await;
    assert_eq!(other, "another provider's side failed: input");
    assert_eq!(
        vec![
            remaining(&c, &c.provider_token, &lics[0]).await,
            remaining(&c, &t2, &lics[1]).await,
        ],
        before
    );
    assert_eq!(remaining(&c, &t3, &bad_lic).await, Some(2));
    assert!(!c.buyer.outputs.join("bad.csv").exists());
    c.assert_audit_verifies().await;
}

/// A provider's worker killed mid-run (SIGKILL) drops out: the other two finish the training,
/// the model is written, every licence is counted once (the dropped provider's too, as its
/// earlier rounds are in the model), and the dropped provider — which never sent its final
/// report — is charged on the rows of its delivery report, on its own bill line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_run_drops_out_and_the_others_finish() {
    let c = Cluster::start_with(2_000, &["--frameworks", "tessera-fl"]);
    c.fund(100_000_000, "fund").await;
    let (p2, t2) = c.add_provider("prov2", "pu2").await;
    let (mut p3, t3) = c.add_provider("prov3", "pu3").await;
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let sizes = [4_000, 4_000, 4_000];
    let parts: Vec<Vec<String>> = sizes.iter().map(|&n| rows(n, &mut rng)).collect();
    let tokens = [c.provider_token.clone(), t2.clone(), t3.clone()];
    let names = [PROVIDER, "prov2", "prov3"];
    let mut lics = Vec::new();
    for k in 0..3 {
        let party = match k {
            0 => &c.provider,
            1 => &p2,
            _ => &p3,
        };
        let id = format!("fd{k}");
        dataset(&c, party, &tokens[k], &id, &parts[k]).await;
        lics.push(licence(&c, &tokens[k], names[k], &id, 2, r#""tessera-fl""#).await);
    }
    let l: Vec<&str> = lics.iter().map(String::as_str).collect();
    let job = fl_job_with(&l, "dropped.csv", |t| {
        t.rounds = Some(400);
        t.epochs = Some(2);
    });
    let mut client = c.client().await;
    let j = client.submit_job(job).await.expect("submit").into_inner();
    // Killed once the training is under way (a round past the 20th shows in the progress).
    let mut seen = 0;
    for _ in 0..20_000 {
        let now = client
            .get_job(pb::JobRef {
                job_id: j.job_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        seen = now
            .progress
            .iter()
            .filter(|p| p.phase == "round")
            .map(|p| p.done)
            .max()
            .unwrap_or(0);
        assert!(
            matches!(now.state_text(), "admitted" | "running"),
            "the job ended before the kill: {now:?}"
        );
        if seen >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(seen >= 20, "the training never got under way");
    p3.proc.kill();
    // The buyer sees the dropout in the job's progress while it runs.
    let mut dropouts_seen = 0;
    for _ in 0..20_000 {
        let now = client
            .get_job(pb::JobRef {
                job_id: j.job_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        if let Some(p) = now.progress.iter().find(|p| p.phase == "dropouts") {
            dropouts_seen = dropouts_seen.max(p.done);
        }
        if !matches!(now.state_text(), "admitted" | "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let j = c.wait(&j.job_id).await;
    let context = format!("killed after round {seen}: {j:?}");
    assert_eq!(j.state_text(), "succeeded", "{context}");
    let m = read_model(&c.buyer.outputs.join("dropped.csv"));
    assert!(
        m.contains_key("bias") && m.contains_key("weight:x0"),
        "{context}"
    );
    for (token, lic) in tokens.iter().zip(&lics) {
        assert_eq!(remaining(&c, token, lic).await, Some(1), "{lic}: {context}");
    }
    // Each on its 4,000 rows: prov3's from its delivery report (it never sent a final one).
    assert_eq!(j.charge_micros, 3 * (1_000 + 40), "{context}");
    assert!(
        dropouts_seen >= 1,
        "{context}: no dropout shown while it ran"
    );
    let (_, lines, balanced) = crate::money::money_of(&c, &j.job_id).await;
    assert!(balanced);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let usage = crate::mpc::usage(&c).await;
    assert!(
        crate::mpc::metric(&usage, &j.job_id, crate::harness::BUYER, "dropouts") >= 1,
        "{context}: the dropout is metered"
    );
    c.assert_audit_verifies().await;
}
