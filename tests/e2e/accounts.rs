//! Money through real processes: holds of the estimated maximum cost at admission drawn in the
//! manual's payment order (deduction voucher, recharge voucher, cash, credit), posting of the
//! actual charge at the end, bill lines with the §3.8 identities exported as CSV by the CLI,
//! refusals for insufficient funds and for frozen accounts (manual and automatic).

use std::process::Command;

use tessera_proto::v1 as pb;

use crate::harness::{BIN, Cluster, USER, keys};

/// Runs the CLI against the cluster's operator and returns stdout.
fn cli(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Parses CSV output into header-keyed rows (fields here never need quoting).
fn csv_rows(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| h.to_string())
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

async fn balance(c: &Cluster, account: &str) -> (i64, i64) {
    let b = c
        .admin()
        .await
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances")
        .into_inner();
    assert!(b.balanced, "double entry must hold");
    b.balances
        .iter()
        .find(|x| x.account == account)
        .map(|x| (x.balance_micros, x.held_micros))
        .unwrap_or((0, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_charges_bills_and_freezes_through_the_real_operator() {
    let c = Cluster::start(5_000);
    // 100 provider rows declared: the maximum cost is 1,000 + 100 × 10 / 1,000 = 1,001.
    c.dataset(&c.provider, "p", "k", &keys("x", 0..100)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 50..150)).await;
    let lic = c.licence("p", None).await;
    let mut client = c.client().await;

    // No funds at all: refused with the amounts, nothing held.
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    assert!(
        j.refusal_reasons
            .iter()
            .any(|r| r.contains("insufficient funds") && r.contains("1001 micros")),
        "{:?}",
        j.refusal_reasons
    );

    cli(
        &c,
        &[
            "deposit",
            "--user",
            USER,
            "--amount-micros",
            "500",
            "--key",
            "dv",
            "--into",
            "deduction_voucher",
        ],
    );
    c.fund(1_000, "cash").await;
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_ne!(j.state_text(), "refused", "{:?}", j.refusal_reasons);
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{}", j.error);
    assert_eq!(j.charge_micros, 1_001);
    // Drawn voucher first, then cash; the provider gets 80 %, the operator 20 % (rounded down).
    assert_eq!(
        balance(&c, &format!("customer:{USER}:deduction_voucher")).await,
        (0, 0)
    );
    assert_eq!(
        balance(&c, &format!("customer:{USER}:cash")).await,
        (499, 0)
    );
    assert_eq!(balance(&c, &format!("customer:{USER}:holds")).await, (0, 0));
    assert_eq!(balance(&c, "provider:prov:receivable").await, (801, 0));
    assert_eq!(balance(&c, "operator:revenue").await, (200, 0));

    // The bill line, exported as CSV through the CLI, satisfies the identities.
    let bills = csv_rows(&cli(&c, &["bills", "list", "--customer", USER, "--csv"]));
    assert_eq!(bills.len(), 1, "{bills:?}");
    assert_eq!(bills[0]["state"], "open");
    // A month that does not exist is an error, not an empty listing.
    let bad = Command::new(BIN)
        .args(["bills", "list", "--period", "2026-13", "--operator", &c.url])
        .args(["--ca-file", &c.ca_file])
        .env("TESSERA_TOKEN", &c.admin_token)
        .output()
        .expect("run tessera");
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("INVALID_ARGUMENT") && err.contains("2026-13"),
        "{err}"
    );
    let lines = csv_rows(&cli(&c, &["bills", "lines", &bills[0]["bill_id"], "--csv"]));
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["job_id"], j.job_id);
    assert_eq!(l["original_micros"], "1001");
    assert_eq!(l["deduction_voucher_micros"], "500");
    assert_eq!(l["cash_micros"], "501");
    assert_eq!(l["provider_micros"], "801");
    assert_eq!(l["operator_micros"], "200");
    let transfers = csv_rows(&cli(&c, &["ledger", "transfers", "--csv"]));
    let kinds: Vec<&str> = transfers
        .iter()
        .filter(|t| t["job_id"] == j.job_id)
        .map(|t| t["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "pending",
            "pending",
            "post_pending",
            "post_pending",
            "posted",
            "posted"
        ]
    );

    // 499 cash left is below the 1,001 maximum: refused; a credit line makes up the rest.
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    cli(&c, &["credit", "--user", USER, "--limit-micros", "1000"]);
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(j.state_text(), "succeeded", "{}", j.error);
    assert_eq!(balance(&c, &format!("customer:{USER}:cash")).await, (0, 0));
    assert_eq!(
        balance(&c, &format!("customer:{USER}:credit")).await,
        (-502, 0)
    );

    // A manual freeze refuses with its reason; clearing it admits again.
    c.fund(10_000, "cash-2").await;
    cli(
        &c,
        &[
            "account",
            "freeze",
            "--user",
            USER,
            "--reason",
            "KYC review",
        ],
    );
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    assert!(
        j.refusal_reasons.iter().any(|r| r.contains("KYC review")),
        "{:?}",
        j.refusal_reasons
    );
    cli(&c, &["account", "clear", "--user", USER]);
    // The platform's minimum freeze amount above the cash balance freezes automatically.
    cli(
        &c,
        &[
            "limits",
            "set",
            "--scope",
            "platform",
            "--min-freeze-micros",
            "20000",
        ],
    );
    let status = cli(&c, &["account", "status", "--user", USER]);
    assert!(status.contains("FROZEN"), "{status}");
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    assert!(
        j.refusal_reasons
            .iter()
            .any(|r| r.contains("minimum freeze amount")),
        "{:?}",
        j.refusal_reasons
    );
    // Recharging above the amount thaws it.
    c.fund(20_000, "cash-3").await;
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(
        j.state_text(),
        "succeeded",
        "{:?} {}",
        j.refusal_reasons,
        j.error
    );

    // Every hold was resolved and the chain records the freeze decisions.
    let mut admin = c.admin().await;
    let b = admin
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances")
        .into_inner();
    assert!(b.balanced);
    assert!(b.balances.iter().all(|x| x.held_micros == 0), "{b:?}");
    let v = admin
        .verify_audit(pb::ListRequest {})
        .await
        .expect("audit")
        .into_inner();
    assert!(v.ok, "{}", v.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_licence_sold_by_the_month_runs_jobs_only_inside_a_paid_term() {
    let c = Cluster::start(5_000);
    c.dataset(&c.provider, "p", "k", &keys("x", 0..100)).await;
    c.dataset(&c.buyer, "b", "k", &keys("x", 50..150)).await;
    let mut client = c.client().await;
    let lic = c
        .provider_client()
        .await
        .create_licence(pb::CreateLicenceRequest {
            licensor: crate::harness::PROVIDER.into(),
            licensee: USER.into(),
            dataset_id: "p".into(),
            policy_json: format!(
                r#"{{"policyName":"m","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                    "useScenes":[{{"useSence":"psi"}}]}}"#
            ),
            price_per_job_micros: 0,
            price_per_1k_rows_micros: 0,
            operator_share_bps: 1_000,
            monthly_price_micros: 300_000_000,
        })
        .await
        .expect("licence")
        .into_inner()
        .licence_id;
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    assert!(
        j.refusal_reasons.iter().any(|r| r.contains("no paid term")),
        "{:?}",
        j.refusal_reasons
    );
    c.fund(300_000_000, "month").await;
    let out = cli(
        &c,
        &[
            "licence",
            "subscribe",
            "--licence",
            &lic,
            "--user",
            USER,
            "--months",
            "1",
        ],
    );
    assert!(out.contains("charged 300"), "{out}");
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    let j = c.wait(&j.job_id).await;
    assert_eq!(
        j.state_text(),
        "succeeded",
        "{:?} {}",
        j.refusal_reasons,
        j.error
    );
    // Unsubscribing inside the first month: one month used, nothing refunded; jobs stop.
    let out = cli(
        &c,
        &["licence", "unsubscribe", "--licence", &lic, "--user", USER],
    );
    assert!(out.contains("closed"), "{out}");
    let j = client
        .submit_job(Cluster::job(&lic, "b", "size", ""))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(j.state_text(), "refused");
    let bills = csv_rows(&cli(&c, &["bills", "list", "--customer", USER, "--csv"]));
    let lines = csv_rows(&cli(&c, &["bills", "lines", &bills[0]["bill_id"], "--csv"]));
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str()).collect();
    assert_eq!(kinds, ["order", "usage", "refund"], "{lines:?}");
    assert_eq!(lines[0]["cash_micros"], "300000000");
    assert_eq!(lines[0]["provider_micros"], "270000000");
}
