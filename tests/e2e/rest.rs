//! The REST facade through HTTPS against the real operator: each operation's route with the
//! request the gRPC test sends (`authz.rs` runs the same table of cases through both APIs),
//! the envelope on every answer, server-sent events, bad input, and a Python client generated
//! from `/openapi.json` by a standard generator.

use serde_json::{Value, json};
use tessera_auth::Operation;
use tessera_gateway::ApiCode;

use crate::authz::{Fixture, Whose, requests};
use crate::harness::{BUYER, Cluster, PROVIDER, USER, keys};

/// An answer: HTTP status, content type and body.
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The `Allow` header (empty when none).
    pub allow: String,
    pub body: String,
}

impl Answer {
    /// The body as the T/AI 123.12 envelope, checked: its `status` is the HTTP status, and
    /// `code` is `OK` exactly on success.
    pub fn envelope(&self) -> Value {
        let v: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body));
        assert_eq!(v["status"], json!(self.status), "{v}");
        assert_eq!(v["code"] == "OK", self.status == 200, "{v}");
        assert!(v["errorMsg"].is_string(), "{v}");
        v
    }
}

/// `method url` with `token` and a JSON `body`.
pub(crate) fn send(
    c: &Cluster,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let agent = c.https();
    let url = format!("{}{path}", c.url);
    let with_token = |h: Option<&str>| h.map(|t| ("X-Auth-Token", t.to_owned()));
    let header = with_token(token);
    let result = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(&url)
            } else {
                agent.delete(&url)
            };
            if let Some((k, v)) = &header {
                r = r.header(*k, v);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "POST" {
                agent.post(&url)
            } else {
                agent.put(&url)
            };
            if let Some((k, v)) = &header {
                r = r.header(*k, v);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.send_empty(),
            }
        }
    };
    let mut r = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Answer {
        status: r.status().as_u16(),
        content_type,
        allow,
        body: r.body_mut().read_to_string().expect("body"),
    }
}

/// The route's path with its parameters filled, and the JSON body, for `op` on `whose`
/// resources: the same arguments as the gRPC test's `call`.
fn request(op: Operation, f: &Fixture, whose: Whose) -> Option<(String, Option<Value>)> {
    let own = whose == Whose::Own;
    let pick = |mine: &str, theirs: &str| if own { mine } else { theirs }.to_owned();
    let body = |m: &dyn erased::Json| Some(m.json());
    let (_, template) = tessera_gateway::rest::route_of(op)?;
    let path = template
        .replace("{licenceId}", &f.licence)
        .replace("{jobId}", &f.job)
        .replace("{billId}", &f.bill)
        .replace("{tokenId}", &f.spare_token_id)
        .replace(
            "{userId}",
            if op == Operation::DisableUser {
                "throwaway"
            } else {
                USER
            },
        )
        .replace("{groupId}", "team")
        .replace("{partyId}", &pick(BUYER, PROVIDER))
        .replace(
            "{datasetId}",
            &if op == Operation::GetSealingKey {
                pick("bs", "ps")
            } else {
                pick("b", "p")
            },
        );
    let json = match op {
        Operation::CreateDataset => body(&requests::create_dataset(whose)),
        Operation::CreateLicence => body(&requests::create_licence()),
        Operation::SubmitJob => body(&requests::submission(f, whose)),
        Operation::Deposit => body(&requests::deposit(whose)),
        Operation::SetCreditLimit => body(&requests::credit_limit()),
        Operation::Payout => body(&requests::payout()),
        Operation::SetLimit => body(&requests::limit()),
        Operation::SetWhitelist => body(&requests::whitelist()),
        Operation::SetFreeze => body(&requests::freeze()),
        Operation::Subscribe => body(&requests::subscription(f, whose, 1)),
        Operation::CreateUser => body(&requests::create_user()),
        Operation::CreateToken => body(&requests::create_token()),
        Operation::CreateParty => body(&requests::create_party()),
        Operation::IssueRegistrationToken => body(&requests::registration_token(whose)),
        _ => None,
    };
    if crate::harness::is_trade(op) {
        let (method, _) = tessera_gateway::rest::route_of(op)?;
        let v = crate::authz::trade_request(op, f);
        if method == "GET" {
            let q: Vec<String> = v
                .as_object()
                .expect("an object")
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().expect("a string")))
                .collect();
            return Some((format!("{path}?{}", q.join("&")), None));
        }
        return Some((path, Some(v)));
    }
    let query = match op {
        Operation::GetAccountStatus => format!("?customer={}&product=psi", pick("", USER)),
        Operation::Unsubscribe => format!("?customer={}", pick("", USER)),
        _ => String::new(),
    };
    Some((format!("{path}{query}"), json))
}

mod erased {
    /// A message that can be written as JSON (the REST body of a wire message).
    pub trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("json")
        }
    }
}

/// Calls `op`'s route as `token` on `whose` resources: `Ok`, or the failure as the gRPC
/// status of its envelope code (`None`: no route).
pub(crate) fn call(
    c: &Cluster,
    f: &Fixture,
    token: Option<&str>,
    op: Operation,
    whose: Whose,
) -> Option<Result<(), tonic::Status>> {
    let (method, _) = tessera_gateway::rest::route_of(op)?;
    let (path, body) = request(op, f, whose)?;
    let a = send(c, method.as_str(), &path, token, body.as_ref());
    if a.status == 200 && a.content_type.starts_with("text/event-stream") {
        assert!(a.body.contains("event: job"), "{}", a.body);
        return Some(Ok(()));
    }
    let v = a.envelope();
    if a.status == 200 {
        return Some(Ok(()));
    }
    let code = v["code"].as_str().expect("code");
    let api = ApiCode::ALL
        .iter()
        .find(|c| c.envelope_code() == code)
        .unwrap_or_else(|| panic!("unknown envelope code {code}"));
    assert_eq!(api.http_status(), a.status, "{v}");
    Some(Err(tonic::Status::new(
        api.grpc(),
        v["errorMsg"].as_str().unwrap_or_default(),
    )))
}

/// A PSI job through REST only: submitted as JSON, followed as server-sent events to its
/// end, its bill line read back; bad input answered in the envelope, never a panic or an
/// HTML page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psi_job_through_rest_with_events_and_its_bill() {
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..40)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 30..50)).await;
    c.fund(10_000_000, "fund").await;
    let lic = c.licence("p", None).await;
    let buyer = Some(c.buyer_token.as_str());

    let submit = json!({
        "licenceId": lic, "scene": "psi", "buyerParty": BUYER, "buyerDatasetId": "b",
        "buyerColumns": ["k"], "providerColumns": ["k"], "mode": "size",
        "keyCase": "preserve", "unicodeForm": "UNICODE_FORM_NONE", "emptyKeys": "skip",
    });
    let a = send(&c, "POST", "/api/v1/jobs", buyer, Some(&submit));
    let v = a.envelope();
    assert_eq!(a.status, 200, "{v}");
    let job_id = v["data"]["jobId"].as_str().expect("job id").to_owned();
    assert_eq!(v["data"]["mode"], "PSI_MODE_SIZE");

    // Followed to its end as server-sent events.
    let events = send(
        &c,
        "GET",
        &format!("/api/v1/jobs/{job_id}/events"),
        buyer,
        None,
    );
    assert_eq!(events.status, 200);
    assert!(events.content_type.starts_with("text/event-stream"));
    let last: Value = events
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .next_back()
        .map(|d| serde_json::from_str(d.trim()).expect("event JSON"))
        .expect("an event");
    assert_eq!(last["state"], "JOB_STATE_SUCCEEDED", "{}", events.body);
    assert_eq!(last["resultSize"], 10);
    let charge = last["chargeMicros"].as_i64().expect("charge");
    assert!(charge > 0);

    // Its bill line, as the buyer sees it.
    let bills = send(
        &c,
        "GET",
        &format!("/api/v1/bills?customer={USER}"),
        buyer,
        None,
    )
    .envelope();
    let bill_id = bills["data"]["bills"][0]["billId"]
        .as_str()
        .expect("a bill")
        .to_owned();
    let lines = send(
        &c,
        "GET",
        &format!("/api/v1/bills/{bill_id}/lines"),
        buyer,
        None,
    )
    .envelope();
    let line = lines["data"]["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["jobId"] == job_id.as_str())
        .expect("the job's line")
        .clone();
    assert_eq!(line["amounts"]["originalMicros"], charge, "{line}");

    // Listings filter by state; a bad state is named.
    let done = send(&c, "GET", "/api/v1/jobs?state=succeeded", buyer, None).envelope();
    assert_eq!(done["data"]["jobs"].as_array().expect("jobs").len(), 1);
    let bad = send(&c, "GET", "/api/v1/jobs?state=finished", buyer, None);
    assert_eq!(bad.status, 400);
    assert!(
        bad.envelope()["errorMsg"]
            .as_str()
            .expect("msg")
            .contains("JOB_STATE_")
    );
    let bad = send(&c, "GET", "/api/v1/jobs?pageSize=-1", buyer, None);
    assert_eq!(
        (bad.status, bad.envelope()["code"].clone()),
        (400, json!("INVALID_ARGUMENT"))
    );

    // Bad bodies: not JSON, not an object (an array would map onto fields by position), the
    // wrong shape, an unknown enum name, a path disagreeing with the body; an unknown route;
    // a body over the limit.
    for (body, needle) in [
        ("{", "not the JSON"),
        (r#"["u1", 5, "k"]"#, "must be a JSON object"),
        (r#"{"buyerColumns": "k"}"#, "not the JSON"),
        (r#"{"mode": "everything"}"#, "PSI_MODE_SIZE"),
    ] {
        let r = c
            .https()
            .post(format!("{}/api/v1/jobs", c.url))
            .header("X-Auth-Token", &c.buyer_token)
            .header("Content-Type", "application/json")
            .send(body)
            .expect("post");
        let status = r.status().as_u16();
        let text = r.into_body().read_to_string().expect("body");
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(needle), "{text}");
    }
    let a = send(
        &c,
        "POST",
        &format!("/api/v1/parties/{BUYER}/registration-tokens"),
        buyer,
        Some(&json!({"partyId": PROVIDER})),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    let a = send(&c, "GET", "/api/v1/no-such-thing", buyer, None);
    assert_eq!(
        (a.status, a.envelope()["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    // A known route with another method: 405 in the envelope, with the methods it takes.
    let a = send(&c, "DELETE", "/api/v1/jobs", buyer, None);
    assert_eq!(a.status, 405, "{}", a.body);
    assert_eq!(a.envelope()["code"], "METHOD_NOT_ALLOWED");
    assert!(
        a.allow.contains("GET") && a.allow.contains("POST"),
        "{}",
        a.allow
    );
    let huge = json!({ "description": "x".repeat(2 << 20) });
    let a = send(&c, "POST", "/api/v1/datasets", buyer, Some(&huge));
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.envelope()["code"], "PAYLOAD_TOO_LARGE");
    // A misspelt field is refused, never ignored (a deposit must not land elsewhere).
    let a = send(
        &c,
        "POST",
        "/api/v1/deposits",
        buyer,
        Some(&json!({"amountMicros": 1, "idempotencyKey": "typo", "customer": USER})),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.envelope()["errorMsg"]
            .as_str()
            .expect("msg")
            .contains("customer")
    );
    // A path parameter that is not UTF-8: the envelope, not a plain-text rejection.
    let a = send(&c, "GET", "/api/v1/jobs/%ff%fe", buyer, None);
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.envelope()["code"], "INVALID_ARGUMENT");
    // Outside /api/v1, a REST caller gets the envelope too; a gRPC caller its own answer.
    for path in ["/", "/api/v2/jobs", "/api/v1/"] {
        let a = send(&c, "GET", path, buyer, None);
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert_eq!(a.envelope()["code"], "NOT_FOUND");
    }

    // A job of someone else's is as unknown to the events route as to the others.
    let a = send(
        &c,
        "GET",
        &format!("/api/v1/jobs/{job_id}/events"),
        Some(&c.provider_token),
        None,
    );
    assert_eq!(a.status, 200, "the provider's owner sees the job it served");
    let a = send(
        &c,
        "GET",
        &format!("/api/v1/jobs/{job_id}/events"),
        None,
        None,
    );
    assert_eq!(a.status, 401);
    a.envelope();

    // The OpenAPI document is served and names every route.
    let doc: Value = serde_json::from_str(&send(&c, "GET", "/openapi.json", None, None).body)
        .expect("openapi JSON");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for &op in Operation::ALL {
        if let Some((m, p)) = tessera_gateway::rest::route_of(op) {
            let item = &doc["paths"][p][m.as_str().to_ascii_lowercase()];
            assert!(item.is_object(), "{m} {p} missing from /openapi.json");
        }
    }
}

/// A Python client generated from `/openapi.json` by openapi-python-client (pinned in
/// `clients/python/requirements.txt`, installed into a virtual environment under the target
/// directory on first use) submits a PSI job and reads its bill
/// (`clients/python/psi_and_bill.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_submits_a_psi_job_and_reads_its_bill() {
    let python = python_with_generator();
    let c = Cluster::start(10_000);
    c.dataset(&c.provider, "p", "k", &keys("k", 0..40)).await;
    c.dataset(&c.buyer, "b", "k", &keys("k", 30..50)).await;
    c.fund(10_000_000, "fund").await;
    let lic = c.licence("p", None).await;
    let out_dir = c.dir.path().join("pyclient");
    let script = &format!(
        "{}{}",
        crate::harness::manifest_dir(),
        "/clients/python/psi_and_bill.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .args([
            "--operator",
            &c.url,
            "--ca-file",
            &c.ca_file,
            "--licence",
            &lic,
        ])
        .args([
            "--buyer-party",
            BUYER,
            "--buyer-dataset",
            "b",
            "--columns",
            "k",
        ])
        .arg("--client-dir")
        .arg(&out_dir)
        .env("TESSERA_TOKEN", &c.buyer_token)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: Value = serde_json::from_str(stdout.lines().last().expect("a summary line"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(summary["state"], "JOB_STATE_SUCCEEDED", "{summary}");
    assert_eq!(summary["result_size"], 10, "{summary}");
    // What the Python client read is what the operator holds.
    let job = c.wait(summary["job_id"].as_str().expect("job id")).await;
    assert_eq!(json!(job.charge_micros), summary["charge_micros"]);
    assert_eq!(
        summary["bill_line_original_micros"],
        summary["charge_micros"]
    );
}

/// A Python with openapi-python-client: a virtual environment under the target directory,
/// made and filled from `clients/python/requirements.txt` on first use.
fn python_with_generator() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-openapi-client");
    let python = venv.join("bin").join("python");
    let generator = venv.join("bin").join("openapi-python-client");
    if generator.exists() {
        return python;
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv (Python 3.9+ is needed for the generated client's test)");
    assert!(made.success(), "python3 -m venv failed");
    let requirements = &format!(
        "{}{}",
        crate::harness::manifest_dir(),
        "/clients/python/requirements.txt"
    );
    let installed = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r", requirements])
        .status()
        .expect("pip");
    assert!(installed.success(), "pip install -r {requirements} failed");
    python
}
