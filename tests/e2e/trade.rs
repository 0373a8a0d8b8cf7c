//! The T/AI 123.12 trade flow against the real operator and workers (issue "Licences and
//! usage control"): register → publish → demand → match → confirm → settle → deliver through
//! the standard's REST routes, the licence checked with the public key alone (and refused
//! after one changed byte, by the CLI too), the sealed key and the package opened with the
//! buyer's key only, a controlled dataset's policy delivered and a PSI job run, counted and
//! billed under it, then the publication revoked: a running job cancelled, new ones refused
//! with the reason. And every route's bad input: a missing required field (400 naming it) and
//! an unknown id (404).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tessera_auth::Operation;
use tessera_proto::v1 as pb;
use tessera_trade::licence::{Licence, parse_verifying_key};
use tessera_trade::proof::DeliveryProof;
use tessera_trade::seal::{SealedKey, open_delivery_key, open_package};

use crate::authz::{buyer_keys, controlled_publication, demand, registration};
use crate::harness::{BIN, BUYER, Cluster, PROVIDER, USER, cash, keys};
use crate::rest::send;

/// `POST`/`GET` a T/AI route as `token`; (HTTP status, envelope).
fn tai(c: &Cluster, op: Operation, token: &str, body: &Value) -> (u16, Value) {
    let (method, path) = tessera_gateway::rest::route_of(op).expect("a route");
    let a = if method == "GET" {
        let q: Vec<String> = body
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().expect("string")))
            .collect();
        send(
            c,
            "GET",
            &format!("{path}?{}", q.join("&")),
            Some(token),
            None,
        )
    } else {
        send(c, "POST", path, Some(token), Some(body))
    };
    (a.status, a.envelope())
}

/// The answer's `data` of a call that must succeed.
fn ok(c: &Cluster, op: Operation, token: &str, body: &Value) -> Value {
    let (status, v) = tai(c, op, token, body);
    assert_eq!(status, 200, "{op:?}: {v}");
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trade_flow_from_registration_to_delivery_and_jobs_under_the_delivered_policy() {
    use Operation as O;
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..50)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 25..75)).await;
    c.fund(10_000_000, "fund").await;
    let (pu, u1) = (c.provider_token.clone(), c.buyer_token.clone());

    // Provider: register, publish at 2.5, upload the file to deliver.
    let reg = ok(&c, O::RegisterData, &pu, &registration("p"))["registrationID"]
        .as_str()
        .expect("registrationID")
        .to_owned();
    let published = ok(
        &c,
        O::PublishData,
        &pu,
        &json!({"owner": PROVIDER, "registrationID": reg, "free": false, "price": 2.5}),
    );
    assert_eq!(published["publish_status"], "YES");
    let file = b"id,age\n1,30\n2,41\n".to_vec();
    ok(
        &c,
        O::UploadData,
        &pu,
        &json!({"registrationID": reg, "data_file": B64.encode(&file)}),
    );
    let listing = ok(
        &c,
        O::QueryPublishedData,
        &u1,
        &json!({"registrationID": reg}),
    );
    assert_eq!(
        (
            listing["owner"].as_str(),
            listing["publish_status"].as_str()
        ),
        (Some(PROVIDER), Some("YES"))
    );
    assert_eq!(listing["price"], json!(2.5));
    let licensor_key = listing["licensor_public_key"]
        .as_str()
        .expect("key")
        .to_owned();

    // Buyer: a demand with its X25519 key, matched, confirmed, settled.
    let d = ok(&c, O::RegisterDemand, &u1, &demand())["demandID"]
        .as_str()
        .expect("demandID")
        .to_owned();
    ok(
        &c,
        O::PublishDemand,
        &u1,
        &json!({"demander": USER, "demandID": d}),
    );
    let matches = ok(&c, O::QueryMatches, &u1, &json!({"demandID": d}));
    assert!(
        matches["matches"]
            .as_array()
            .expect("matches")
            .iter()
            .any(|m| m["registrationID"] == json!(reg)),
        "{matches}"
    );
    let confirmed = ok(
        &c,
        O::ConfirmDemand,
        &u1,
        &json!({"demander": USER, "demandID": d, "registrationID": reg}),
    );
    assert_eq!(confirmed["price"], json!(2.5));
    let confirm = confirmed["confirmID"]
        .as_str()
        .expect("confirmID")
        .to_owned();
    let before = ok(
        &c,
        O::QueryDemandForSettlement,
        &pu,
        &json!({"confirmID": confirm}),
    );
    assert_eq!(before["settlement_status"], "UNSETTLED");
    // A second confirmation of the same demand is refused.
    let (status, v) = tai(
        &c,
        O::ConfirmDemand,
        &u1,
        &json!({"demander": USER, "demandID": d, "registrationID": reg}),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("ALREADY_EXISTS")),
        "{v}"
    );

    let cash_before = cash(&c).await;
    let settled = ok(&c, O::Settlement, &u1, &json!({"confirmID": confirm}));
    assert_eq!(settled["settlement_status"], "SETTLED");
    assert_eq!(cash(&c).await, cash_before - 2_500_000);
    assert_eq!(settled["payment_proof"]["amount_micros"], json!(2_500_000));
    assert!(
        !settled["payment_proof"]["ledger_transfers"]
            .as_array()
            .expect("transfers")
            .is_empty()
    );
    // A retry answers the first settlement and pays nothing more.
    let again = ok(&c, O::Settlement, &u1, &json!({"confirmID": confirm}));
    assert_eq!(again, settled);
    assert_eq!(cash(&c).await, cash_before - 2_500_000);
    // The provider sees the amount it was paid, not how the buyer paid.
    let seen = ok(&c, O::QuerySettlement, &pu, &json!({"confirmID": confirm}));
    assert_eq!(seen["licenses"], settled["licenses"]);
    assert_eq!(seen["payment_proof"]["amount_micros"], json!(2_500_000));
    assert!(seen["payment_proof"].get("paid_from").is_none(), "{seen}");
    assert_eq!(
        ok(&c, O::QuerySettlement, &u1, &json!({"confirmID": confirm})),
        settled
    );
    // A term may be extended, never cut: the buyer paid for it.
    let (status, v) = tai(
        &c,
        O::UpdateLicenses,
        &pu,
        &json!({"owner": PROVIDER, "dataID": "p", "licensesID": settled["licenses"]["licensesID"],
                "license_term": {"startDate": "2020-01-01 00:00:00", "endDate": "2021-01-01 00:00:00"}}),
    );
    assert_eq!(status, 400, "{v}");
    // The sold file cannot be replaced.
    let (status, v) = tai(
        &c,
        O::UploadData,
        &pu,
        &json!({"registrationID": reg, "data_file": B64.encode(b"other")}),
    );
    assert_eq!(status, 400, "{v}");

    // The licence verifies with the licensor's public key alone, and not after any change.
    let licence: Licence = serde_json::from_value(settled["licenses"].clone()).expect("licence");
    let key = parse_verifying_key(&licensor_key).expect("key");
    licence.verify(&key).expect("verifies");
    assert_eq!(licence.licensee, USER);
    let dir = c.dir.path().join("trade");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let good = dir.join("licence.json");
    std::fs::write(&good, serde_json::to_vec(&licence).expect("json")).expect("write");
    let verify = |file: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["licence", "verify"])
            .arg(file)
            .args(["--public-key", &licensor_key])
            .output()
            .expect("run")
    };
    let out = verify(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("valid: licence"));
    let mut bytes = serde_json::to_vec(&licence).expect("json");
    let needle = br#""licensee":"u1""#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the licensee in the document");
    bytes[at + needle.len() - 2] = b'2'; // licensee u1 -> u2
    let bad = dir.join("changed.json");
    std::fs::write(&bad, &bytes).expect("write");
    let out = verify(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("digital_signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Delivery: the package opens with the key sealed to the buyer, and only so.
    let delivered = ok(&c, O::Deliver, &u1, &json!({"licenses": licence}));
    let proof: DeliveryProof =
        serde_json::from_value(delivered["delivery_proof"].clone()).expect("proof");
    proof.verify(&key).expect("the proof verifies");
    let sealed: SealedKey = serde_json::from_value(settled["private_key"].clone()).expect("key");
    let (private, _) = buyer_keys();
    let delivery_key =
        open_delivery_key(&sealed, &private, &licence.licenses_id).expect("opens for u1");
    let package = B64
        .decode(delivered["data_file"].as_str().expect("file"))
        .expect("base64");
    assert_ne!(package, file, "the file is encrypted in transit");
    let opened = open_package(
        &delivery_key,
        &licence.licenses_id,
        &licence.digital_watermarking,
        &package,
    )
    .expect("opens");
    assert_eq!(opened, file);
    assert_eq!(
        ok(
            &c,
            O::QueryDeliverResult,
            &pu,
            &json!({"confirmID": confirm})
        )["delivery_proof"],
        delivered["delivery_proof"]
    );
    // The provider cannot take the buyer's delivery.
    let (status, _) = tai(&c, O::Deliver, &pu, &json!({"licenses": licence}));
    assert_eq!(status, 403);

    // Reissue with a new term: the old licence is refused from now on, the new one works.
    let reissued = ok(
        &c,
        O::UpdateLicenses,
        &pu,
        &json!({"owner": PROVIDER, "dataID": "p", "licensesID": licence.licenses_id,
                "license_term": {"startDate": licence.license_term.start_date,
                                 "endDate": "2099-01-01 00:00:00"}}),
    );
    let new_licence: Licence =
        serde_json::from_value(reissued["licenses"].clone()).expect("licence");
    assert_ne!(new_licence.licenses_id, licence.licenses_id);
    new_licence.verify(&key).expect("verifies");
    let (status, v) = tai(&c, O::Deliver, &u1, &json!({"licenses": licence}));
    assert_eq!(status, 400, "{v}");
    assert!(
        v["errorMsg"].as_str().expect("msg").contains("superseded"),
        "{v}"
    );
    ok(&c, O::Deliver, &u1, &json!({"licenses": new_licence}));

    // A controlled dataset: published, settled (free), its policy delivered; jobs run under
    // the licence the delivery made, counted and billed.
    ok(&c, O::PublishDatasets, &pu, &controlled_publication_of("p"));
    let s2 = buy_controlled(&c, &u1, "p");
    // Controlled data is not handed out as a file.
    let (status, v) = tai(&c, O::Deliver, &u1, &json!({"licenses": s2["licenses"]}));
    assert_eq!(status, 400, "{v}");
    let policy = ok(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": s2["licenses"], "dataID": "p", "policyName": "buyer-psi",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "psi", "counts": 2, "visitArea": ["r1"], "cpCenter": ["c1"]}],
            "price_per_job": 0.001,
        }),
    );
    assert_eq!(policy["status"], "ACTIVE");
    let lic = policy["licenceID"].as_str().expect("licenceID").to_owned();
    let mut client = c.client().await;
    let job = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let done = c.wait(&job).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    let remaining = client
        .get_licence(pb::LicenceRef {
            licence_id: lic.clone(),
        })
        .await
        .expect("licence")
        .into_inner()
        .policy_json;
    assert!(remaining.contains(r#""remainingCounts":1"#), "{remaining}");

    // A policy that names another user, starts in six months and allows another region
    // refuses with all three reasons.
    let term_start = s2["licenses"]["license_term"]["startDate"]
        .as_str()
        .expect("term start")
        .to_owned();
    let (year, month): (i32, u32) = (
        term_start[0..4].parse().expect("year"),
        term_start[5..7].parse().expect("month"),
    );
    let (year, month) = if month + 6 > 12 {
        (year + 1, month + 6 - 12)
    } else {
        (year, month + 6)
    };
    let later = format!("{year:04}-{month:02}-01 00:00:00");
    let narrow = ok(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": s2["licenses"], "dataID": "p", "policyName": "narrow",
            "relUsers": [{"userId": "someone-else", "userName": "S", "isGroup": 0}],
            "startDate": later,
            "useScenes": [{"useSence": "psi", "visitArea": ["nowhere"]}],
        }),
    )["licenceID"]
        .as_str()
        .expect("id")
        .to_owned();
    let refused = client
        .submit_job(Cluster::job(&narrow, "b", "size", ""))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(refused.state_text(), "refused");
    let codes: Vec<&str> = refused.refusals.iter().map(|r| r.code.as_str()).collect();
    assert!(
        codes.contains(&"POLICY_DENIED") && codes.contains(&"NO_WORKER"),
        "{refused:?}"
    );
    for part in ["relUsers", "not yet valid"] {
        assert!(
            refused.refusal_reasons.iter().any(|r| r.contains(part)),
            "{part}: {refused:?}"
        );
    }

    // Revoking the publication cancels the running job under it within a bounded time and
    // refuses new ones, with the reason.
    c.dataset(&c.provider, "big", "k", &keys("k", 0..60_000))
        .await;
    c.dataset(&c.buyer, "bigb", "k", &keys("k", 30_000..90_000))
        .await;
    ok(
        &c,
        O::PublishDatasets,
        &pu,
        &controlled_publication_of("big"),
    );
    let s3 = buy_controlled(&c, &u1, "big");
    let big = ok(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": s3["licenses"], "dataID": "big", "policyName": "big",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "psi", "visitArea": ["r1"], "cpCenter": ["c1"]}],
        }),
    )["licenceID"]
        .as_str()
        .expect("id")
        .to_owned();
    let slow = || {
        let mut j = Cluster::job(&big, "bigb", "size", "");
        j.protocol = pb::PsiProtocol::Ecdh.into();
        j
    };

    // Revoking one policy (Tessera's /revokeLicenses with `policyId`) ends the job running
    // under it at once, as the provider's doing, and refuses its next job; another policy of
    // the same licence is untouched.
    let big2 = ok(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": s3["licenses"], "dataID": "big", "policyName": "big2",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "psi", "counts": 3, "visitArea": ["r1"], "cpCenter": ["c1"]}],
        }),
    );
    let big2_licence = big2["licenceID"].as_str().expect("id").to_owned();
    let mut under_policy = slow();
    under_policy.licence_id = big2_licence.clone();
    let doomed = client
        .submit_job(under_policy.clone())
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let revoked_at = Instant::now();
    let revoked = ok(
        &c,
        O::RevokeLicenses,
        &pu,
        &json!({"owner": PROVIDER, "policyId": big2["policyId"], "reason": "contract ended"}),
    );
    assert_eq!(revoked["kind"], "policy", "{revoked}");
    assert_eq!(revoked["licences"], json!([big2_licence]), "{revoked}");
    assert_eq!(revoked["ended_jobs"], json!([doomed]), "{revoked}");
    let ended = c.wait(&doomed).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(30),
        "the job took {:?} to end after the policy was revoked",
        revoked_at.elapsed()
    );
    assert_eq!(ended.state_text(), "failed", "{ended:?}");
    assert!(ended.error.contains("contract ended"), "{ended:?}");
    // Its run was given back: the count is where it started.
    let counts = client
        .get_licence(pb::LicenceRef {
            licence_id: big2_licence.clone(),
        })
        .await
        .expect("licence")
        .into_inner()
        .policy_json;
    assert!(counts.contains(r#""remainingCounts":3"#), "{counts}");
    // The licence says it was withdrawn, and why.
    let shown = client
        .get_licence(pb::LicenceRef {
            licence_id: big2_licence.clone(),
        })
        .await
        .expect("licence")
        .into_inner();
    assert!(
        shown.withdrawn.contains("contract ended"),
        "{:?}",
        shown.withdrawn
    );
    let refused = client
        .submit_job(under_policy)
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("revoked") && r.contains("contract ended")),
        "{refused:?}"
    );
    // Revoking again changes nothing and answers the same licences.
    let again = ok(
        &c,
        O::RevokeLicenses,
        &pu,
        &json!({"owner": PROVIDER, "policyId": big2["policyId"]}),
    );
    assert_eq!(again["licences"], json!([big2_licence]), "{again}");
    // The buyer may not revoke the provider's policy.
    let (status, v) = tai(
        &c,
        O::RevokeLicenses,
        &u1,
        &json!({"owner": PROVIDER, "policyId": big2["policyId"]}),
    );
    assert_eq!(status, 403, "{v}");

    let running = client
        .submit_job(slow())
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let revoked_at = Instant::now();
    let revoke = ok(
        &c,
        O::RevokePublishedData,
        &pu,
        &json!({"registrationID": tessera_trade::CONTROLLED_REGISTRATION_ID, "dataID": "big"}),
    );
    assert_eq!(revoke["publish_status"], "NO");
    let ended = c.wait(&running).await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(30),
        "the job took {:?} to end after the revocation",
        revoked_at.elapsed()
    );
    // 60,000 keys under ECDH take seconds: the revocation reaches the job while it runs, and
    // ends it as the provider's doing (failed, its run given back), not the buyer's.
    assert!(
        revoke["ended_jobs"]
            .as_array()
            .expect("list")
            .iter()
            .any(|j| j == &json!(running)),
        "{revoke}"
    );
    assert_eq!(ended.state_text(), "failed", "{ended:?}");
    assert!(ended.error.contains("withdrawn"), "{ended:?}");
    // No settlement, delivery or policy under the revoked publication any more.
    let (status, v) = tai(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": s3["licenses"], "dataID": "big", "policyName": "again",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "psi"}],
        }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["errorMsg"].as_str().expect("msg").contains("revoked"),
        "{v}"
    );
    let refused = client
        .submit_job(Cluster::job(&big, "bigb", "size", ""))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(refused.state_text(), "refused");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("revoked")),
        "{refused:?}"
    );
    // Revoking a licence (`licensesID`) withdraws every policy delivered under it: the
    // policy of `p` admits no more jobs, and the licence is refused for delivery, for new
    // policies and for reissue.
    let revoked = ok(
        &c,
        O::RevokeLicenses,
        &pu,
        &json!({"owner": PROVIDER, "licensesID": s2["licenses"]["licensesID"]}),
    );
    assert_eq!(revoked["kind"], "licence", "{revoked}");
    assert!(
        revoked["licences"]
            .as_array()
            .expect("list")
            .contains(&json!(lic)),
        "{revoked}"
    );
    let refused = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    assert!(
        refused
            .refusal_reasons
            .iter()
            .any(|r| r.contains("revoked")),
        "{refused:?}"
    );
    for (op, body) in [
        (
            O::DeliverDatasets,
            json!({
                "licenses": s2["licenses"], "dataID": "p", "policyName": "after",
                "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
                "useScenes": [{"useSence": "psi"}],
            }),
        ),
        (
            O::UpdateLicenses,
            json!({"owner": PROVIDER, "dataID": "p", "licensesID": s2["licenses"]["licensesID"]}),
        ),
    ] {
        let (status, v) = tai(&c, op, &pu, &body);
        assert!(status == 400 || status == 404, "{op:?}: {v}");
    }

    // The dataset's operation log holds each step, every entry's hash recomputes, and the
    // head signed with it verifies under the node's key; the buyer may not read it.
    let log = c
        .provider_client()
        .await
        .data_item_log(pb::DatasetRef {
            dataset_id: "p".into(),
        })
        .await
        .expect("log")
        .into_inner();
    let kinds: std::collections::BTreeSet<&str> =
        log.entries.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "dataset_create",
        "trade_register",
        "trade_publish",
        "trade_upload",
        "trade_confirm",
        "trade_settle",
        "trade_deliver",
        "trade_licence_update",
        "trade_deliver_policy",
        "trade_revoke",
        "licence_create",
        "admit",
        "refuse",
        "complete",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    // The owner sees its own steps in full, the buyer's side (funds at admission, how it
    // paid) redacted.
    for e in &log.entries {
        assert!(
            !e.detail_json.contains("cash"),
            "{}: {}",
            e.kind,
            e.detail_json
        );
        if e.detail_json.contains("redacted") {
            continue;
        }
        let seq = i64::try_from(e.seq).expect("seq");
        assert_eq!(
            tessera_store::audit::entry_hash(
                &e.prev_hash,
                seq,
                e.at_ms,
                &e.kind,
                &e.subject,
                &e.detail_json
            ),
            e.hash
        );
    }
    let head = log.audit_head.expect("a signed head");
    assert!(head.seq >= log.entries.last().expect("entries").seq);
    tessera_core::checkpoint::NodeKey::from_hex(&log.node_key_hex)
        .expect("key")
        .verify(&tessera_core::checkpoint::SignedHead {
            seq: head.seq,
            head_hash: head.head_hash.clone(),
            at_ms: head.at_ms,
            signature_hex: head.signature_hex.clone(),
        })
        .expect("the head verifies");
    let hidden = client
        .data_item_log(pb::DatasetRef {
            dataset_id: "p".into(),
        })
        .await
        .expect_err("not the buyer's");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    // Exported as CSV through the CLI, with the checkpoint row last.
    let csv_file = dir.join("log.csv");
    let out = std::process::Command::new(BIN)
        .args(["dataset", "log", "p", "--csv", "--out"])
        .arg(&csv_file)
        .args([
            "--operator",
            &c.url,
            "--ca-file",
            &c.ca_file,
            "--token",
            &pu,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv_file).expect("csv");
    assert!(text.starts_with("seq,at_ms,kind,subject,detail_json,prev_hash,hash"));
    let last = text.lines().last().expect("rows");
    assert!(last.contains(",checkpoint,"), "{last}");
    c.assert_audit_verifies().await;
    let _ = BUYER;
}

/// The controlled publication of dataset `data_id`.
/// As the buyer (`token`): a demand, published, confirmed against the controlled dataset
/// `data_id` and settled; the settlement's answer.
fn buy_controlled(c: &Cluster, token: &str, data_id: &str) -> Value {
    use Operation as O;
    let d = ok(c, O::RegisterDemand, token, &demand())["demandID"]
        .as_str()
        .expect("id")
        .to_owned();
    ok(
        c,
        O::PublishDemand,
        token,
        &json!({"demander": USER, "demandID": d}),
    );
    let confirm = ok(
        c,
        O::ConfirmDemand,
        token,
        &json!({"demander": USER, "demandID": d,
                "registrationID": tessera_trade::CONTROLLED_REGISTRATION_ID, "dataID": data_id}),
    )["confirmID"]
        .as_str()
        .expect("id")
        .to_owned();
    ok(c, O::Settlement, token, &json!({"confirmID": confirm}))
}

/// A `preview` submission under `licence`: rows `rows` (None: the licence's window) of
/// `columns` (empty: those allowed), written to `output`.
fn preview_job(
    licence: &str,
    rows: Option<(u64, u64)>,
    columns: &[&str],
    output: &str,
) -> pb::SubmitJobRequest {
    let (first, last) = rows.unwrap_or((0, 0));
    pb::SubmitJobRequest {
        user: USER.into(),
        licence_id: licence.into(),
        scene: "preview".into(),
        buyer_party: BUYER.into(),
        provider_columns: columns.iter().map(|c| c.to_string()).collect(),
        output: output.into(),
        preview_first_row: first,
        preview_last_row: last,
        mpc_query: String::new(),
        mpc_columns: Vec::new(),
        ..pb::SubmitJobRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_shows_at_most_the_rows_and_columns_the_policy_allows_and_is_counted() {
    use Operation as O;
    let c = Cluster::start(10_000);
    let rows: Vec<String> = (1..=100)
        .map(|i| format!("{i},name{i},city{},{}", i % 7, i * 1000))
        .collect();
    c.dataset(&c.provider, "pv", "id,name,city,income", &rows)
        .await;
    c.fund(10_000_000, "fund").await;
    let (pu, u1) = (c.provider_token.clone(), c.buyer_token.clone());
    ok(
        &c,
        O::PublishDatasets,
        &pu,
        &controlled_publication_of("pv"),
    );
    let settled = buy_controlled(&c, &u1, "pv");
    // Rows 1-50 of id and city, pages 1-2 of 20 rows: the window is rows 1-40 of id, city.
    let policy = ok(
        &c,
        O::DeliverDatasets,
        &pu,
        &json!({
            "licenses": settled["licenses"], "dataID": "pv", "policyName": "look",
            "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
            "useScenes": [{"useSence": "preview", "counts": 2,
                "viewRowsRange": {"rows": [1, 50], "columns": ["id", "city"]},
                "viewPageRange": {"pages": [1, 2], "pageSize": 20},
                "visitArea": ["r1"], "cpCenter": ["c1"]}],
            "price_per_job": 0.25,
        }),
    );
    let lic = policy["licenceID"].as_str().expect("id").to_owned();
    let mut client = c.client().await;
    let before = cash(&c).await;

    // Rows 5-12 of city: exactly those rows cross, into the buyer's output directory.
    let job = client
        .submit_job(preview_job(&lic, Some((5, 12)), &["city"], "look.csv"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(job.state_text(), "admitted", "{job:?}");
    let done = c.wait(&job.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    assert_eq!(done.result_size, Some(8), "{done:?}");
    let written = std::fs::read_to_string(c.buyer.outputs.join("look.csv")).expect("result");
    let expected: String = std::iter::once("city".to_string())
        .chain((5..=12).map(|i| format!("city{}", i % 7)))
        .map(|l| l + "\n")
        .collect();
    assert_eq!(written.replace("\r\n", "\n"), expected);
    assert!(cash(&c).await < before, "the preview was charged");

    // Outside the window (rows past 40, a column not allowed): refused with both reasons,
    // nothing counted.
    let refused = client
        .submit_job(preview_job(
            &lic,
            Some((30, 60)),
            &["id", "income"],
            "no.csv",
        ))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(refused.state_text(), "refused", "{refused:?}");
    let reasons = refused.refusal_reasons.join(" | ");
    assert!(
        reasons.contains("rows 30-60") && reasons.contains("income"),
        "{reasons}"
    );
    assert!(
        refused.refusals.iter().all(|r| r.code == "POLICY_DENIED"),
        "{refused:?}"
    );

    // Neither rows nor columns: the whole window, the allowed columns only.
    let whole = client
        .submit_job(preview_job(&lic, None, &[], "whole.csv"))
        .await
        .expect("submit")
        .into_inner();
    let done = c.wait(&whole.job_id).await;
    assert_eq!(done.state_text(), "succeeded", "{done:?}");
    assert_eq!(done.result_size, Some(40), "{done:?}");
    let written = std::fs::read_to_string(c.buyer.outputs.join("whole.csv")).expect("result");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 41);
    assert_eq!(lines[0], "id,city");
    assert_eq!(lines[40], format!("40,city{}", 40 % 7));
    assert!(
        !written.contains("name") && !written.contains("000"),
        "{written}"
    );

    // Two runs allowed, two used: the third is refused, counted exactly.
    let exhausted = client
        .submit_job(preview_job(&lic, Some((1, 1)), &[], "third.csv"))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(exhausted.state_text(), "refused", "{exhausted:?}");
    assert!(
        exhausted
            .refusals
            .iter()
            .any(|r| r.code == "QUOTA_EXHAUSTED"),
        "{exhausted:?}"
    );

    // A preview names no dataset, key column or PSI mode of the buyer's.
    let mut bad = preview_job(&lic, None, &[], "bad.csv");
    bad.buyer_dataset_id = "b".into();
    let e = client.submit_job(bad).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("buyer_dataset_id"), "{e:?}");
    let mut bad = preview_job(&lic, None, &[], "bad.csv");
    bad.mode = pb::PsiMode::Size.into();
    let e = client.submit_job(bad).await.expect_err("refused");
    assert!(e.message().contains("mode"), "{e:?}");
    let e = client
        .submit_job(preview_job(&lic, Some((0, 3)), &[], "bad.csv"))
        .await
        .expect_err("refused");
    assert!(e.message().contains("preview_rows"), "{e:?}");
}

fn controlled_publication_of(data_id: &str) -> Value {
    let mut v = controlled_publication();
    v["dataID"] = json!(data_id);
    v
}

/// One route's bad-input case: the operation, its caller's token, a good body, the required
/// fields, and a body naming an unknown id (none: the route names no id).
type Case<'a> = (Operation, &'a str, Value, Vec<&'a str>, Option<Value>);

/// Every trade route: a body without each required field answers 400 with INVALID_ARGUMENT
/// naming the field; a body naming an unknown id answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_route_names_a_missing_field_and_answers_an_unknown_id_with_404() {
    use Operation as O;
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..5)).await;
    let (pu, u1) = (c.provider_token.clone(), c.buyer_token.clone());
    let licence = json!({
        "licensesID": "lics-unknown", "licensor": PROVIDER, "licensee": USER,
        "registrationID": "reg-unknown", "dataID": "p", "resource_url": "x",
        "digital_watermarking": "AA==", "digital_signature": "AA==",
        "usage_restrictions": "none",
        "license_term": {"startDate": "2026-01-01 00:00:00", "endDate": "2027-01-01 00:00:00"},
        "licensor_public_key": "AA==",
    });
    // (operation, caller, a good body, the required fields, a body naming an unknown id).
    let cases: Vec<Case<'_>> = vec![
        (
            O::RegisterData,
            &pu,
            registration("p"),
            vec![
                "owner",
                "key_words",
                "dataID",
                "description",
                "data_type",
                "data_format",
                "data_size",
                "data_category",
                "collection_time",
                "country",
                "resource_url",
                "ownership_confirm",
                "public_key",
            ],
            Some({
                let mut v = registration("p");
                v["dataID"] = json!("no-such-dataset");
                v
            }),
        ),
        (
            O::PublishData,
            &pu,
            json!({"owner": PROVIDER, "registrationID": "reg-x", "free": true}),
            vec!["owner", "registrationID", "free"],
            Some(json!({"owner": PROVIDER, "registrationID": "reg-unknown", "free": true})),
        ),
        (
            O::PublishDatasets,
            &pu,
            controlled_publication_of("p"),
            vec![
                "owner",
                "dataID",
                "registrationID",
                "protocol",
                "key_words",
                "free",
            ],
            Some(controlled_publication_of("no-such-dataset")),
        ),
        (
            O::QueryPublishedData,
            &u1,
            json!({"registrationID": "reg-unknown"}),
            vec!["registrationID"],
            Some(json!({"registrationID": "reg-unknown"})),
        ),
        (
            O::RevokePublishedData,
            &pu,
            json!({"registrationID": "reg-unknown"}),
            vec!["registrationID"],
            Some(json!({"registrationID": "reg-unknown"})),
        ),
        (
            O::UploadData,
            &pu,
            json!({"registrationID": "reg-unknown", "data_file": ""}),
            vec!["registrationID", "data_file"],
            Some(json!({"registrationID": "reg-unknown", "data_file": ""})),
        ),
        (
            O::RegisterDemand,
            &u1,
            demand(),
            vec!["data_category", "key_words", "data_type"],
            None,
        ),
        (
            O::PublishDemand,
            &u1,
            json!({"demander": USER, "demandID": "dem-unknown"}),
            vec!["demander", "demandID"],
            Some(json!({"demander": USER, "demandID": "dem-unknown"})),
        ),
        (
            O::QueryPublishedDemand,
            &u1,
            json!({"demandID": "dem-unknown"}),
            vec!["demandID"],
            Some(json!({"demandID": "dem-unknown"})),
        ),
        (
            O::RevokeDemand,
            &u1,
            json!({"demander": USER, "demandID": "dem-unknown"}),
            vec!["demander", "demandID"],
            Some(json!({"demander": USER, "demandID": "dem-unknown"})),
        ),
        (
            O::QueryMatches,
            &u1,
            json!({"demandID": "dem-unknown"}),
            vec!["demandID"],
            Some(json!({"demandID": "dem-unknown"})),
        ),
        (
            O::ConfirmDemand,
            &u1,
            json!({"demander": USER, "demandID": "dem-unknown", "registrationID": "reg-unknown"}),
            vec!["demandID", "registrationID"],
            Some(
                json!({"demander": USER, "demandID": "dem-unknown", "registrationID": "reg-unknown"}),
            ),
        ),
        (
            O::QueryDemandForSettlement,
            &u1,
            json!({"confirmID": "conf-unknown"}),
            vec!["confirmID"],
            Some(json!({"confirmID": "conf-unknown"})),
        ),
        (
            O::Settlement,
            &u1,
            json!({"confirmID": "conf-unknown"}),
            vec!["confirmID"],
            Some(json!({"confirmID": "conf-unknown"})),
        ),
        (
            O::QuerySettlement,
            &u1,
            json!({"confirmID": "conf-unknown"}),
            vec!["confirmID"],
            Some(json!({"confirmID": "conf-unknown"})),
        ),
        (
            O::Deliver,
            &u1,
            json!({"licenses": licence}),
            vec!["licenses"],
            Some(json!({"licenses": licence})),
        ),
        (
            O::QueryDeliverResult,
            &u1,
            json!({"confirmID": "conf-unknown"}),
            vec!["confirmID"],
            Some(json!({"confirmID": "conf-unknown"})),
        ),
        (
            O::DeliverDatasets,
            &pu,
            json!({"licenses": licence, "dataID": "p", "policyName": "x",
                   "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
                   "useScenes": [{"useSence": "psi"}]}),
            vec!["licenses", "dataID", "policyName", "relUsers", "useScenes"],
            Some(
                json!({"licenses": licence, "dataID": "p", "policyName": "x",
                   "relUsers": [{"userId": USER, "userName": "U", "isGroup": 0}],
                   "useScenes": [{"useSence": "psi"}]}),
            ),
        ),
        (
            O::UpdateLicenses,
            &pu,
            json!({"owner": PROVIDER, "dataID": "p"}),
            vec!["owner", "dataID"],
            Some(json!({"owner": PROVIDER, "dataID": "p"})),
        ),
        (
            O::RevokeLicenses,
            &pu,
            json!({"owner": PROVIDER, "licensesID": "lics-unknown"}),
            vec!["owner", "licensesID"],
            Some(json!({"owner": PROVIDER, "policyId": "pol-unknown"})),
        ),
    ];
    let covered: std::collections::BTreeSet<String> =
        cases.iter().map(|(op, ..)| format!("{op:?}")).collect();
    for &op in Operation::ALL {
        if crate::harness::is_trade(op) {
            assert!(covered.contains(&format!("{op:?}")), "{op:?} has no case");
        }
    }
    for (op, token, good, required, unknown) in &cases {
        for field in required {
            let mut body = good.clone();
            body.as_object_mut().expect("object").remove(*field);
            let (status, v) = tai(&c, *op, token, &body);
            assert_eq!(
                (status, v["code"].as_str()),
                (400, Some("INVALID_ARGUMENT")),
                "{op:?} without {field}: {v}"
            );
            assert!(
                v["errorMsg"].as_str().expect("msg").contains(field),
                "{op:?} without {field}: {v}"
            );
        }
        // An unknown field is refused by name too.
        if tessera_gateway::rest::route_of(*op).expect("route").0 == "POST" {
            let mut body = good.clone();
            body["surprise"] = json!(1);
            let (status, v) = tai(&c, *op, token, &body);
            assert_eq!(status, 400, "{op:?} with an unknown field: {v}");
        }
        if let Some(body) = unknown {
            let (status, v) = tai(&c, *op, token, body);
            assert_eq!(
                (status, v["code"].as_str()),
                (404, Some("NOT_FOUND")),
                "{op:?} naming an unknown id: {v}"
            );
        }
    }
}
