//! PSI results end to end (issue 8 items 4, 12-15, 17): what the buyer's worker writes, what
//! the job records, and what each party is shown, through real operator and worker processes.

use sha2::{Digest, Sha256};
use tessera_proto::v1 as pb;

use crate::harness::{BUYER, Cluster, PROVIDER, USER, read_csv, walk_files};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A two-column-key job over the datasets `p` and `b`, folded and NFC-normalised, carrying the
/// buyer's `name` and `spend`.
fn two_column_job(lic: &str, buyer_dataset: &str, output: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        buyer_columns: strings(&["mail", "tel"]),
        provider_columns: strings(&["email", "phone"]),
        key_case: pb::KeyCase::Fold.into(),
        unicode_form: pb::UnicodeForm::Nfc.into(),
        carry_columns: strings(&["name", "spend"]),
        ..Cluster::job(lic, buyer_dataset, "intersection", output)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_is_the_buyers_own_rows_as_csv_and_is_never_replaced() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(
        &c.provider,
        "p",
        "email,phone,secret",
        &strings(&[
            "alice@x.com,0123,s1",
            "bob@x.com,0456,s2",
            ",0789,s3",
            "carol@x.com,,s4",
            "e\u{301}mile@x.com,0222,s5",
            "strasse@x.com,0333,s6",
        ]),
    )
    .await;
    c.dataset(
        &c.buyer,
        "b",
        "mail,tel,name,spend",
        &strings(&[
            " ALICE@X.COM ,0123,Alice,10",
            "Bob@X.com,0456,Bob,20",
            "Bob@X.com,0456,\"Bobby, Jr.\",21",
            ",0789,Nobody,0",
            "carol@x.com,,Carol,5",
            "\u{c9}MILE@x.com,0222,\u{c9}mile,3",
            "STRAßE@X.COM,0333,Straße,4",
            "erin@x.com,0111,Erin,7",
        ]),
    )
    .await;
    let lic = c.licence("p", None).await;
    let mut client = c.client().await;
    let j = client
        .submit_job(two_column_job(&lic, "b", "r.csv"))
        .await
        .expect("submit")
        .into_inner();
    let job_id = j.job_id.clone();
    let j = c.wait(&job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    // Four distinct common keys: alice, bob, émile (NFC + fold), strasse (fold).
    assert_eq!(j.result_size, Some(4));

    // One column per key and carried column, the buyer's ORIGINAL values, every matching
    // row (both Bob rows), in file order; empty keys never match each other.
    let path = c.buyer.outputs.join("r.csv");
    let (header, rows) = read_csv(&path);
    assert_eq!(header, ["mail", "tel", "name", "spend"]);
    assert_eq!(
        rows,
        vec![
            strings(&[" ALICE@X.COM ", "0123", "Alice", "10"]),
            strings(&["Bob@X.com", "0456", "Bob", "20"]),
            strings(&["Bob@X.com", "0456", "Bobby, Jr.", "21"]),
            strings(&["\u{c9}MILE@x.com", "0222", "\u{c9}mile", "3"]),
            strings(&["STRAßE@X.COM", "0333", "Straße", "4"]),
        ]
    );
    let bytes = std::fs::read(&path).expect("read");
    assert!(!bytes.contains(&0x1f), "no unit separator in a result");
    assert!(
        !String::from_utf8_lossy(&bytes).contains("s1"),
        "never the provider's columns"
    );
    // The job records the file's size, rows and SHA-256.
    let f = j.result_file.clone().expect("result file recorded");
    assert_eq!(f.name, "r.csv");
    assert_eq!(f.bytes, bytes.len() as u64);
    assert_eq!(f.rows, 5);
    assert_eq!(f.sha256_hex, hex::encode(Sha256::digest(&bytes)));
    // Each party sees only its own count of rows left out for an empty key.
    assert_eq!((j.buyer_empty_keys, j.provider_empty_keys), (Some(2), None));
    let pj = c.wait_as(&job_id, Some(PROVIDER)).await;
    assert_eq!(
        (pj.buyer_empty_keys, pj.provider_empty_keys),
        (None, Some(2))
    );
    assert_eq!(pj.result_file, None, "the result is the buyer's");
    assert_eq!(pj.result_size, None);
    // `job get` shows the recorded file.
    let out = std::process::Command::new(crate::harness::BIN)
        .args([
            "job",
            "get",
            "--operator",
            &c.url,
            "--ca-file",
            &c.ca_file,
            &job_id,
        ])
        .env("TESSERA_TOKEN", &c.buyer_token)
        .output()
        .expect("job get");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains(&format!("result_sha256={}", f.sha256_hex))
            && line.contains("result_rows=5")
            && line.contains("buyer_empty_keys=2"),
        "{line}"
    );

    // The same name again is refused at admission: the paid result stays as it is.
    let again = client
        .submit_job(two_column_job(&lic, "b", "r.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(again.state_text(), "refused", "{again:?}");
    assert_eq!(
        again
            .refusals
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>(),
        ["ALREADY_EXISTS"],
        "{again:?}"
    );
    // The reason says the name is taken, but not by which job: that job may be another
    // user's of the same buyer party (issue 8 item 17).
    assert!(
        again
            .refusal_reasons
            .iter()
            .any(|r| r.contains("already recorded by another job")),
        "{again:?}"
    );
    assert!(
        !again.refusal_reasons.iter().any(|r| r.contains(&job_id)),
        "{again:?}"
    );
    // A file already there (not recorded by any job) fails the job before the engine runs.
    std::fs::write(c.buyer.outputs.join("mine.csv"), b"my own file\n").expect("write");
    let j2 = client
        .submit_job(two_column_job(&lic, "b", "mine.csv"))
        .await
        .expect("submit")
        .into_inner();
    let j2 = c.wait(&j2.job_id).await;
    assert_eq!(j2.state_text(), "failed", "{j2:?}");
    assert!(j2.error.contains("already exists"), "{}", j2.error);
    assert_eq!(
        std::fs::read(c.buyer.outputs.join("mine.csv")).expect("read"),
        b"my own file\n"
    );
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    let first = c.wait(&job_id).await;
    assert_eq!(
        first.result_file,
        Some(f),
        "the first job's record is unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_side_failure_is_shown_to_the_buyer_only_by_its_kind() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    c.dataset(&c.provider, "p", "k,secret_col", &strings(&["a,1", ",2"]))
        .await;
    c.dataset(&c.buyer, "b", "k", &strings(&["a", "b"])).await;
    let lic = c.licence("p", None).await;
    let mut client = c.client().await;
    let provider_worker = c
        .provider
        .proc
        .first_line
        .split_whitespace()
        .nth(1)
        .expect("id");

    for (case, req) in [
        // An unknown provider column: the provider's error lists its columns.
        ("missing column", {
            let mut r = Cluster::job(&lic, "b", "size", "");
            r.provider_columns = strings(&["no_such_col"]);
            r
        }),
        // The job asks to fail on empty keys: the provider has one.
        ("empty key", {
            let mut r = Cluster::job(&lic, "b", "size", "");
            r.empty_keys = pb::EmptyKeys::Fail.into();
            r
        }),
    ] {
        let j = client.submit_job(req).await.expect("submit").into_inner();
        let buyer = c.wait(&j.job_id).await;
        assert_eq!(buyer.state_text(), "failed", "{case}: {buyer:?}");
        assert_eq!(buyer.error, "the provider's side failed: input", "{case}");
        assert_eq!(buyer.error_kind, "input", "{case}");
        let anonymous = c.wait_as(&j.job_id, None).await;
        assert_eq!(
            anonymous.error, "the provider's side failed: input",
            "{case}"
        );
        // The provider sees its own detail: the column, the file, its worker.
        let provider = c.wait_as(&j.job_id, Some(PROVIDER)).await;
        assert!(
            provider.error.contains(provider_worker),
            "{case}: {}",
            provider.error
        );
        match case {
            "missing column" => assert!(
                provider.error.contains("no_such_col") && provider.error.contains("secret_col"),
                "{}",
                provider.error
            ),
            _ => assert!(
                provider.error.contains("p.csv: line 3: empty key"),
                "{}",
                provider.error
            ),
        }
        // The buyer's party sees what its user sees.
        let party = c.wait_as(&j.job_id, Some(BUYER)).await;
        assert_eq!(party.error, buyer.error, "{case}");
        // Listings follow the same rule as GetJob: as the buyer, and as the operator.
        for caller in [Some(USER), None] {
            let mut lister = match caller {
                Some(_) => c.client().await,
                None => c.admin().await,
            };
            let listed = lister
                .list_jobs(pb::JobQuery::default())
                .await
                .expect("list")
                .into_inner();
            let row = listed
                .jobs
                .iter()
                .find(|l| l.job_id == j.job_id)
                .expect("listed");
            assert_eq!(
                row.error, "the provider's side failed: input",
                "{case}, listed as {caller:?}"
            );
        }
    }

    // A refusal for want of a fitting worker names no worker and no attribute.
    let policy = format!(
        r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
            "useScenes":[{{"useSence":"psi","visitArea":["r9"]}}]}}"#
    );
    let far = c.licence_with_policy("p", policy).await;
    let j = client
        .submit_job(Cluster::job(&far, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    let text = j.refusal_reasons.join("; ");
    assert!(!text.contains(provider_worker), "{text}");
    assert!(!text.contains("r1"), "{text}");
    assert!(
        text.contains(
            "no live worker of party prov fits the policy's environment lists (1 live worker(s) \
             checked)"
        ),
        "{text}"
    );
    // Read back later, the refusal is the same text.
    let back = c.wait(&j.job_id).await;
    assert_eq!(back.refusal_reasons, j.refusal_reasons);
}

/// Both protocols between two real worker processes over their mutual-TLS gRPC link, on the
/// same data: the same rows, recorded with the protocol that ran; a scene that allows only
/// ECDH refuses rr22 with the reason, and a size job runs ECDH when none is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rr22_and_ecdh_agree_through_real_workers_and_a_scene_may_allow_only_one() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    let provider: Vec<String> = (0..3_000).map(|i| format!("k{i}")).collect();
    let buyer: Vec<String> = (2_000..2_500)
        .chain(10_000..10_100)
        .map(|i| format!("k{i}"))
        .chain(["k2001".to_string(), String::new()])
        .collect();
    c.dataset(&c.provider, "p", "k", &provider).await;
    c.dataset(&c.buyer, "b", "k", &buyer).await;
    let lic = c.licence("p", None).await;
    let mut client = c.client().await;
    let mut results = Vec::new();
    for (protocol, name) in [
        (pb::PsiProtocol::Unspecified, "default.csv"),
        (pb::PsiProtocol::Ecdh, "ecdh.csv"),
        (pb::PsiProtocol::Rr22, "rr22.csv"),
        (pb::PsiProtocol::EcdhOprf, "oprf-1.csv"),
        (pb::PsiProtocol::EcdhOprf, "oprf-2.csv"),
    ] {
        let j = client
            .submit_job(pb::SubmitJobRequest {
                protocol: protocol.into(),
                ..Cluster::job(&lic, "b", "intersection", name)
            })
            .await
            .expect("submit")
            .into_inner();
        let j = c.wait(&j.job_id).await;
        assert_eq!(j.state_text(), "succeeded", "{j:?}");
        assert_eq!(j.result_size, Some(500), "{j:?}");
        let want = match protocol {
            pb::PsiProtocol::Ecdh => "ecdh",
            pb::PsiProtocol::EcdhOprf => "ecdh-oprf",
            _ => "rr22",
        };
        assert_eq!(j.protocol_text(), want, "{j:?}");
        results.push(read_csv(&c.buyer.outputs.join(name)).1);
    }
    assert_eq!(results[0].len(), 501, "k2001 twice");
    assert!(results.iter().all(|r| *r == results[0]));
    // ecdh-oprf: the provider's worker encoded its set once for the licence (the second job
    // read it back), the buyer's worker kept the encodings it received once.
    let files_of = |outputs: &std::path::Path, ext: &str| -> Vec<std::path::PathBuf> {
        walk_files(&outputs.join(".tessera-work"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let sets = files_of(&c.provider.outputs, "set");
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(
        sets[0]
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(&lic)),
        "{sets:?}"
    );
    assert_eq!(files_of(&c.buyer.outputs, "enc").len(), 1);
    // The provider's data changes (k10000 added): its next job encodes it afresh under a new
    // key (the old set goes), and the buyer receives the new encodings.
    let mut changed = provider.clone();
    changed.push("k10000".into());
    let text: String = std::iter::once("k".to_string())
        .chain(changed)
        .map(|r| r + "\n")
        .collect();
    std::fs::write(c.provider.datasets.join("p.csv"), text).expect("rewrite");
    let j = client
        .submit_job(pb::SubmitJobRequest {
            protocol: pb::PsiProtocol::EcdhOprf.into(),
            ..Cluster::job(&lic, "b", "intersection", "oprf-3.csv")
        })
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(
        (j.state_text(), j.result_size),
        ("succeeded", Some(501)),
        "{j:?}"
    );
    let new_sets = files_of(&c.provider.outputs, "set");
    assert_eq!(new_sets.len(), 1, "{new_sets:?}");
    assert_ne!(new_sets, sets, "a new set for the new content");
    assert_eq!(files_of(&c.buyer.outputs, "enc").len(), 2);
    let text: String = std::iter::once("k".to_string())
        .chain(provider.iter().cloned())
        .map(|r| r + "\n")
        .collect();
    std::fs::write(c.provider.datasets.join("p.csv"), text).expect("restore");
    // A size job cannot run ecdh-oprf.
    let e = client
        .submit_job(pb::SubmitJobRequest {
            protocol: pb::PsiProtocol::EcdhOprf.into(),
            ..Cluster::job(&lic, "b", "size", "")
        })
        .await
        .expect_err("ecdh-oprf in size mode");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // A size job names no protocol: ECDH, the only one that hides which keys matched.
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!((j.state_text(), j.protocol_text()), ("succeeded", "ecdh"));
    assert_eq!(j.result_size, Some(500));
    // rr22 in size mode is a bad request, not a refusal.
    let e = client
        .submit_job(pb::SubmitJobRequest {
            protocol: pb::PsiProtocol::Rr22.into(),
            ..Cluster::job(&lic, "b", "size", "")
        })
        .await
        .expect_err("rr22 cannot run in size mode");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // A scene that allows only ECDH: rr22 is refused with the policy's reason, ECDH runs.
    let ecdh_only = c
        .licence_with_scene("p", r#"{"useSence":"psi","protocols":["ecdh"]}"#)
        .await;
    let refused = client
        .submit_job(Cluster::job(&ecdh_only, "b", "intersection", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("protocol rr22 is not allowed for scene psi")
                && r.contains("name one of ecdh as the job's protocol")),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .refusals
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>(),
        ["POLICY_DENIED"]
    );
    let j = client
        .submit_job(pb::SubmitJobRequest {
            protocol: pb::PsiProtocol::Ecdh.into(),
            ..Cluster::job(&ecdh_only, "b", "intersection", "")
        })
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!((j.state_text(), j.protocol_text()), ("succeeded", "ecdh"));
    // A scene whose protocols cannot run the mode at all: the refusal says so (no hint to name
    // a protocol that would be refused too).
    let oprf_only = c
        .licence_with_scene("p", r#"{"useSence":"psi","protocols":["ecdh-oprf"]}"#)
        .await;
    let refused = client
        .submit_job(Cluster::job(&oprf_only, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("no protocol the scene allows runs size mode")),
        "{refused:?}"
    );
    c.assert_audit_verifies().await;
}

/// PSI with payload (scene `psi_payload`, rr22) through real workers: the licence lists one of
/// the provider's three non-key columns in `payloadColumns`; a job asking for another is
/// refused at admission with nothing counted; the buyer's file holds that one column's values
/// for its matched rows and nothing of the other two; inner, left and difference against the
/// plaintext join, with duplicate keys on both sides; the CLI's `job submit --payload --join`.
/// Bucketed: 64 rows a bucket, so every join runs in 5 buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psi_with_payload_delivers_only_the_payload_columns_the_licence_lists() {
    let c = Cluster::start_with(5_000, &["--bucket-rows", "64"]);
    c.fund(100_000_000, "fund").await;
    // Provider: keys k0..k299, k7 twice (its first row's values are delivered); each value
    // tagged with its column, so that a leak would show.
    let mut prov: Vec<String> = (0..300)
        .map(|i| format!("k{i},INCOME{i},AGE{i},SECRET{i}"))
        .collect();
    prov.insert(8, "k7,INCOME7b,AGE7b,SECRET7b".into());
    c.dataset(&c.provider, "pp", "k,income,age,secret", &prov)
        .await;
    // Buyer: k250..k449, k260 twice, a city each.
    let mut buyer_keys: Vec<u64> = (250..450).collect();
    buyer_keys.insert(3, 260);
    buyer_keys.push(7);
    let rows: Vec<String> = buyer_keys.iter().map(|i| format!("k{i},city{i}")).collect();
    c.dataset(&c.buyer, "bp", "k,city", &rows).await;
    let lic = c
        .licence_with_policy(
            "pp",
            format!(
                r#"{{"policyName":"p","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                    "useScenes":[{{"useSence":"psi_payload","counts":5,
                        "payloadColumns":["income"]}}]}}"#
            ),
        )
        .await;
    let job = |kind: pb::JoinKind, payload: &[&str], output: &str| pb::SubmitJobRequest {
        scene: "psi_payload".into(),
        carry_columns: vec!["city".into()],
        join: kind.into(),
        payload_columns: strings(payload),
        ..Cluster::job(&lic, "bp", "intersection", output)
    };
    let mut client = c.client().await;
    let refused = client
        .submit_job(job(pb::JoinKind::Inner, &["income", "secret"], "no.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("secret") && r.contains("payloadColumns")),
        "{refused:?}"
    );
    assert_eq!(c.remaining(&lic).await, Some(5));
    // ECDH cannot carry a payload.
    let mut ecdh = job(pb::JoinKind::Inner, &["income"], "ecdh.csv");
    ecdh.protocol = pb::PsiProtocol::Ecdh.into();
    let e = client.submit_job(ecdh).await.expect_err("ecdh");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let has = |i: u64| i < 300;
    let income = |i: u64| format!("INCOME{i}");
    let j = client
        .submit_job(job(pb::JoinKind::Inner, &["income"], "inner.csv"))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{j:?}");
    assert_eq!(j.protocol_text(), "rr22");
    // k250..k299 and k7: 51 distinct common keys.
    assert_eq!(j.result_size, Some(51), "{j:?}");
    let (header, got) = read_csv(&c.buyer.outputs.join("inner.csv"));
    assert_eq!(header, ["k", "city", "income"]);
    let want: Vec<Vec<String>> = buyer_keys
        .iter()
        .filter(|&&i| has(i))
        .map(|&i| vec![format!("k{i}"), format!("city{i}"), income(i)])
        .collect();
    assert_eq!(got, want);
    let text = std::fs::read_to_string(c.buyer.outputs.join("inner.csv")).expect("file");
    assert!(
        !text.contains("AGE") && !text.contains("SECRET") && !text.contains("INCOME7b"),
        "{text}"
    );
    // A join without payload columns: the matched rows only.
    let j = client
        .submit_job(job(pb::JoinKind::Inner, &[], "keys.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(c.wait(&j.job_id).await.state_text(), "succeeded");
    let (header, got) = read_csv(&c.buyer.outputs.join("keys.csv"));
    assert_eq!(header, ["k", "city"]);
    let want: Vec<Vec<String>> = buyer_keys
        .iter()
        .filter(|&&i| has(i))
        .map(|&i| vec![format!("k{i}"), format!("city{i}")])
        .collect();
    assert_eq!(got, want);
    let j = client
        .submit_job(job(pb::JoinKind::Difference, &[], "diff.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(c.wait(&j.job_id).await.state_text(), "succeeded");
    let (header, got) = read_csv(&c.buyer.outputs.join("diff.csv"));
    assert_eq!(header, ["k", "city"]);
    let want: Vec<Vec<String>> = buyer_keys
        .iter()
        .filter(|&&i| !has(i))
        .map(|&i| vec![format!("k{i}"), format!("city{i}")])
        .collect();
    assert_eq!(got, want);

    // Left, through the CLI.
    let out = c.cli(&[
        "job",
        "submit",
        "--licence",
        &lic,
        "--buyer-party",
        BUYER,
        "--buyer-dataset",
        "bp",
        "--buyer-columns",
        "k",
        "--provider-columns",
        "k",
        "--payload",
        "income",
        "--join",
        "left",
        "--carry-columns",
        "city",
        "--output",
        "left.csv",
        "--watch",
    ]);
    assert!(out.status.success(), "{out:?}");
    let (header, got) = read_csv(&c.buyer.outputs.join("left.csv"));
    assert_eq!(header, ["k", "city", "matched", "income"]);
    let want: Vec<Vec<String>> = buyer_keys
        .iter()
        .map(|&i| {
            vec![
                format!("k{i}"),
                format!("city{i}"),
                has(i).to_string(),
                if has(i) { income(i) } else { String::new() },
            ]
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(c.remaining(&lic).await, Some(1));
    c.assert_audit_verifies().await;
}

/// A PSI larger than the workers' bucket (`--bucket-rows 300`, issue 15 item 3) through real
/// workers: both stream their datasets into partition files by the job's keyed hash, agree on
/// the bucket count (the provider's 4,000 rows want 14) and intersect bucket by bucket; the
/// buyer's file is the plaintext answer in file order (duplicates, a carried column, an empty
/// key skipped), the watch stream shows the "bucket b/B" phases with rows, and the work
/// directories are left empty. Both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psi_larger_than_a_bucket_runs_bucket_by_bucket_and_gives_the_same_rows() {
    use tokio_stream::StreamExt;
    let c = Cluster::start_with(5_000, &["--bucket-rows", "300"]);
    c.fund(1_000_000_000, "fund").await;
    let provider: Vec<String> = (0..4_000).map(|i| format!("k{}", i * 3)).collect();
    let mut buyer: Vec<String> = (0..1_500)
        .map(|i| format!("k{},v{i}", (i % 900) * 2))
        .collect();
    buyer.push(",empty".into());
    c.dataset(&c.provider, "p", "k", &provider).await;
    c.dataset(&c.buyer, "b", "k,v", &buyer).await;
    let lic = c.licence("p", None).await;
    let held: std::collections::HashSet<&str> = provider.iter().map(String::as_str).collect();
    let want: Vec<Vec<String>> = buyer
        .iter()
        .filter_map(|r| r.split_once(','))
        .filter(|(k, _)| held.contains(k))
        .map(|(k, v)| vec![k.to_string(), v.to_string()])
        .collect();
    let distinct = want
        .iter()
        .map(|r| r[0].clone())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    assert!(want.len() as u64 > distinct, "the buyer's duplicates match");
    let mut client = c.client().await;
    for (protocol, name) in [
        (pb::PsiProtocol::Rr22, "bucketed-rr22.csv"),
        (pb::PsiProtocol::Ecdh, "bucketed-ecdh.csv"),
    ] {
        let j = client
            .submit_job(pb::SubmitJobRequest {
                protocol: protocol.into(),
                carry_columns: strings(&["v"]),
                ..Cluster::job(&lic, "b", "intersection", name)
            })
            .await
            .expect("submit")
            .into_inner();
        let mut stream = client
            .watch_job(pb::JobRef {
                job_id: j.job_id.clone(),
            })
            .await
            .expect("watch")
            .into_inner();
        let mut bucket_phases = std::collections::BTreeSet::new();
        while let Some(v) = stream.next().await {
            for p in &v.expect("update").progress {
                if p.phase.starts_with("bucket ") {
                    assert!(p.phase.ends_with("/14"), "{p:?}");
                    assert!(p.done <= p.total, "{p:?}");
                    bucket_phases.insert(p.phase.clone());
                }
            }
        }
        assert!(!bucket_phases.is_empty(), "bucket progress was shown");
        let j = c.wait(&j.job_id).await;
        assert_eq!(j.state_text(), "succeeded", "{j:?}");
        assert_eq!(j.result_size, Some(distinct), "{j:?}");
        let (header, rows) = read_csv(&c.buyer.outputs.join(name));
        assert_eq!(header, strings(&["k", "v"]));
        assert_eq!(rows, want, "{protocol:?}");
    }
    // Both mode: the buyer gets the same file, the provider its own rows whose key is common
    // (its every row, in its file's order), each shown only its own file.
    let buyer_keys: std::collections::HashSet<&str> = buyer
        .iter()
        .filter_map(|r| r.split_once(','))
        .map(|(k, _)| k)
        .collect();
    let provider_want: Vec<Vec<String>> = provider
        .iter()
        .filter(|k| buyer_keys.contains(k.as_str()))
        .map(|k| vec![k.clone()])
        .collect();
    let j = client
        .submit_job(pb::SubmitJobRequest {
            carry_columns: strings(&["v"]),
            ..Cluster::job(&lic, "b", "both", "bucketed-both.csv")
        })
        .await
        .expect("submit")
        .into_inner();
    let seen_by_buyer = c.wait(&j.job_id).await;
    assert_eq!(seen_by_buyer.state_text(), "succeeded", "{seen_by_buyer:?}");
    assert_eq!(seen_by_buyer.mode_text(), "both");
    assert_eq!(seen_by_buyer.provider_result_file, None);
    let (header, rows) = read_csv(&c.buyer.outputs.join("bucketed-both.csv"));
    assert_eq!((header, rows), (strings(&["k", "v"]), want.clone()));
    let seen_by_provider = c.wait_as(&j.job_id, Some(PROVIDER)).await;
    assert_eq!(seen_by_provider.result_size, Some(distinct));
    assert_eq!(seen_by_provider.result_file, None);
    let file = seen_by_provider
        .provider_result_file
        .expect("the provider sees its own result");
    assert_eq!(file.name, format!("psi-{}.csv", j.job_id));
    assert_eq!(file.rows, provider_want.len() as u64);
    let (header, rows) = read_csv(&c.provider.outputs.join(&file.name));
    assert_eq!(header, strings(&["k"]));
    assert_eq!(rows, provider_want);
    // Each worker's own scratch directory (0700) is left empty.
    for party in [&c.buyer, &c.provider] {
        let work = party.outputs.join(".tessera-work");
        let own: Vec<_> = std::fs::read_dir(&work)
            .expect("the work directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        assert!(!own.is_empty());
        for dir in own {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
            }
            let left: Vec<_> = std::fs::read_dir(&dir)
                .expect("own dir")
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "scratch left behind: {left:?}");
        }
    }
    c.assert_audit_verifies().await;
}

/// Cancelling an `ecdh-oprf` job while the provider's worker prepares the licence's encoded
/// set (its first job) stops the preparation: no set is kept, however long the rest of it
/// would have taken at the rate it ran; the run is used (as every cancellation's) and nothing
/// is charged; the licence's next job prepares the set afresh and its query index, and the
/// buyer's 70 keys are looked up in that index (a lookup moves fewer bytes than the 4 MB
/// set would): its result is exact and it keeps no copy of the set. An index damaged between
/// two jobs is found before the next job's delivery point and built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_ecdh_oprf_job_stops_its_preparation_and_the_next_job_prepares_afresh() {
    let c = Cluster::start(5_000);
    c.fund(1_000_000_000, "fund").await;
    // Four batches of the preparation (65,536 rows each), the last one short.
    let n: u64 = 250_000;
    let provider: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let buyer: Vec<String> = (0..60u64)
        .map(|i| format!("k{}", i * 2_003))
        .chain((0..10).map(|i| format!("x{i}")))
        .collect();
    c.dataset(&c.provider, "p", "k", &provider).await;
    c.dataset(&c.buyer, "b", "k", &buyer).await;
    let lic = c.licence("p", Some(5)).await;
    let before = crate::harness::cash(&c).await;
    let mut client = c.client().await;
    let oprf_job = |name: &str| pb::SubmitJobRequest {
        protocol: pb::PsiProtocol::EcdhOprf.into(),
        ..Cluster::job(&lic, "b", "intersection", name)
    };
    let sets = |ext: &str| -> Vec<std::path::PathBuf> {
        walk_files(&c.provider.outputs.join(".tessera-work"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let first = client
        .submit_job(oprf_job("first.csv"))
        .await
        .expect("submit")
        .into_inner();
    // The provider's own view shows its rows prepared: wait for the phase, then for its first
    // batch, and take the rate between the two.
    let mut provider_client = c.provider_client().await;
    let prepared = |j: &pb::Job| {
        j.progress
            .iter()
            .find(|p| p.party == PROVIDER && p.phase == "prepare")
            .map(|p| p.done)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut started = None;
    let rate = loop {
        let j = provider_client
            .get_job(pb::JobRef {
                job_id: first.job_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert!(
            !matches!(j.state_text(), "succeeded" | "failed" | "cancelled"),
            "ended before its preparation was seen: {j:?}"
        );
        match (prepared(&j), started) {
            (Some(_), None) => started = Some(std::time::Instant::now()),
            (Some(done), Some(t0)) if done > 0 => {
                break done as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no preparation seen: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let cancelled = client
        .cancel_job(pb::JobRef {
            job_id: first.job_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.state_text(), "cancelled", "{cancelled:?}");
    // Past the time the rest would have taken at that rate (and some): still no set.
    let rest = (n as f64 / rate).clamp(0.5, 60.0);
    tokio::time::sleep(std::time::Duration::from_secs_f64(rest * 1.5 + 1.0)).await;
    assert_eq!(sets("set"), Vec::<std::path::PathBuf>::new());
    assert_eq!(sets("counts"), Vec::<std::path::PathBuf>::new());
    assert_eq!(sets("query"), Vec::<std::path::PathBuf>::new());
    assert_eq!(c.remaining(&lic).await, Some(4));
    assert_eq!(crate::harness::cash(&c).await, before);

    // The next job prepares the set afresh and keeps it; its result is exact.
    let mut want: Vec<String> = (0..60u64).map(|i| format!("k{}", i * 2_003)).collect();
    want.sort();
    // A job of the licence that succeeds with the exact intersection.
    let exact_job = async |name: &str| -> pb::Job {
        let job = client
            .clone()
            .submit_job(oprf_job(name))
            .await
            .expect("submit")
            .into_inner();
        let job = c.wait(&job.job_id).await;
        assert_eq!(
            (job.state_text(), job.result_size),
            ("succeeded", Some(60)),
            "{job:?}"
        );
        let (_, rows) = read_csv(&c.buyer.outputs.join(name));
        let mut got: Vec<String> = rows.into_iter().map(|r| r[0].clone()).collect();
        got.sort();
        assert_eq!(got, want);
        job
    };
    // The buyer's kept copies of the set.
    let copies = || -> Vec<std::path::PathBuf> {
        walk_files(&c.buyer.outputs.join(".tessera-work"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "enc"))
            .collect()
    };
    let second = exact_job("second.csv").await;
    assert_eq!(sets("set").len(), 1);
    assert_eq!(sets("query").len(), 1, "the set's query index beside it");
    assert_eq!(
        copies(),
        Vec::<std::path::PathBuf>::new(),
        "looked up, not copied"
    );
    assert_eq!(c.remaining(&lic).await, Some(3));
    assert_eq!(
        crate::harness::cash(&c).await,
        before - second.charge_micros
    );
    // Damage in the middle of the index, between two jobs: the next job finds it before its
    // delivery point, builds the index again and looks the keys up, exact.
    let query = sets("query").remove(0);
    let mut bytes = std::fs::read(&query).expect("read the index");
    let at = bytes.len() / 2;
    let sound = bytes[at..at + 64].to_vec();
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5A;
    }
    std::fs::write(&query, &bytes).expect("damage the index");
    drop(bytes);
    let third = exact_job("third.csv").await;
    let rebuilt = std::fs::read(&query).expect("the index again");
    assert_eq!(&rebuilt[at..at + 64], &sound[..], "built again");
    assert_eq!(
        copies(),
        Vec::<std::path::PathBuf>::new(),
        "looked up again"
    );
    assert_eq!(c.remaining(&lic).await, Some(2));
    assert_eq!(
        crate::harness::cash(&c).await,
        before - second.charge_micros - third.charge_micros
    );
    c.assert_audit_verifies().await;
}
