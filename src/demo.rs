//! `tessera demo`: the main job, end to end on the embedded default store. Starts an operator
//! and two workers (provider, buyer) on loopback ports, generates data with a known overlap,
//! licenses the provider's dataset through the T/AI 123.12 trade flow (publish as controlled
//! data, demand, match, confirm, settle with a signed licence and a sealed delivery key,
//! deliver a PSI policy of 2 runs), runs a full and a size-only
//! PSI job and checks both against the truth, shows the third job refused for exhausted quota,
//! then prints usage, charges, balances and the audit verification.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tessera_core::{SystemClock, WorkerAttributes};
use tessera_proto::v1 as pb;

use crate::client::ledger;
use crate::client::output::TableStyle;
use crate::client::{fmt_micros, job_line, watch};
use crate::operator::{self, OperatorConfig};

/// `--rows`: 10..=10,000,000.
fn rows_in_range(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (10..=10_000_000).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is outside 10..=10000000"))
    }
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Rows per party (at least 10, at most 10,000,000).
    #[arg(long, default_value_t = 100_000, value_parser = rows_in_range)]
    rows: usize,
    /// Working directory: created if missing; reused (its contents deleted) only if a
    /// previous demo created it; any other non-empty directory is refused.
    #[arg(long, default_value = ".tessera/demo")]
    dir: PathBuf,
    /// Write a machine-readable summary here.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Data seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

/// Writes a two-column CSV file (RFC 4180, `\n` line ends).
fn write_csv(path: &Path, header: [&str; 2], rows: &[[String; 2]]) -> anyhow::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_path(path)
        .with_context(|| format!("creating {}", path.display()))?;
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

const BUYER: &str = "buyer-b";
const PROVIDER: &str = "provider-a";
const USER: &str = "alice";
const PROVIDER_USER: &str = "paul";

/// The demo's data: row counts of the two files written and the true intersection.
struct DemoData {
    provider_rows: usize,
    buyer_rows: usize,
    truth: HashSet<String>,
}

/// Step 1: writes the provider's and the buyer's CSV files under `dir` with a known overlap
/// (a quarter of `rows`), the buyer's keys upper-cased with stray spaces and some rows
/// repeated, and returns the true intersection.
fn generate_data(dir: &Path, rows: usize, seed: u64) -> anyhow::Result<DemoData> {
    let prov_dir = dir.join("provider/datasets");
    let buyer_dir = dir.join("buyer/datasets");
    std::fs::create_dir_all(&prov_dir)?;
    std::fs::create_dir_all(&buyer_dir)?;

    step(
        1,
        &format!("generating data: {rows} rows per party, known overlap"),
    );
    let overlap = rows / 4;
    let (prov_keys, buyer_keys) = crate::bench::generate_sets(rows, overlap, seed);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    // The buyer's ids come in upper case with stray spaces, and some rows repeat: the jobs
    // normalise keys (trim, lower case) and count distinct keys.
    let mut buyer_rows: Vec<[String; 2]> = buyer_keys
        .iter()
        .map(|k| {
            [
                format!(" {} ", k.to_uppercase()),
                rng.gen_range(1..1000).to_string(),
            ]
        })
        .collect();
    for i in 0..rows / 100 {
        let dup = buyer_rows[i * 7 % buyer_rows.len()].clone();
        buyer_rows.push(dup);
    }
    let prov_rows: Vec<[String; 2]> = prov_keys
        .iter()
        .map(|k| [k.clone(), rng.gen_range(0..5).to_string()])
        .collect();
    write_csv(
        &prov_dir.join("customers.csv"),
        ["id", "segment"],
        &prov_rows,
    )?;
    write_csv(
        &buyer_dir.join("crm.csv"),
        ["customer_id", "spend"],
        &buyer_rows,
    )?;
    let prov_set: HashSet<&str> = prov_keys.iter().map(String::as_str).collect();
    let truth: HashSet<String> = buyer_keys
        .iter()
        .filter(|k| prov_set.contains(k.as_str()))
        .cloned()
        .collect();
    println!(
        "provider: {} rows, buyer: {} rows (with duplicates), true intersection: {}",
        prov_rows.len(),
        buyer_rows.len(),
        truth.len()
    );
    Ok(DemoData {
        provider_rows: prov_rows.len(),
        buyer_rows: buyer_rows.len(),
        truth,
    })
}

/// The file the demo leaves in a working directory it created, so that a later run may
/// clear that directory (and only such a directory).
pub const MARKER: &str = ".tessera-demo";

/// The demo's working directory, locked for the run ([`crate::datadir::prepare_marked`]).
pub type DemoDirLock = crate::datadir::MarkedDir;

/// Makes `dir` an empty working directory marked as the demo's ([`MARKER`]), and locks it
/// for the run: [`crate::datadir::prepare_marked`], and a directory left by a demo of an
/// earlier build, which did not lock it, is refused while that demo's operator runs.
///
/// Errors: another demo holds `dir`; `dir` is not empty and not the demo's, is not a
/// directory, or cannot be written.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<DemoDirLock> {
    crate::datadir::prepare_marked(dir, MARKER, "demo", || {
        // A demo of an earlier build did not lock the directory: its operator's lock tells.
        let operator_dir = dir.join("operator");
        if operator_dir.is_dir() {
            match crate::datadir::lock(&operator_dir) {
                Ok(l) => drop(l),
                Err(crate::datadir::DataDirError::InUse { pid, .. }) => anyhow::bail!(
                    "another demo is running on {} ({}); wait for it or name another --dir",
                    dir.display(),
                    pid.map_or("pid unknown".into(), |p| format!("pid {p}"))
                ),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rows = args.rows.max(10);
    let _dir_lock = prepare_dir(&args.dir)?;
    let data = generate_data(&args.dir, rows, args.seed)?;
    let (prov_rows, buyer_rows, truth) = (data.provider_rows, data.buyer_rows, data.truth);

    step(
        2,
        "starting the operator; accounts, parties and worker registrations; two workers",
    );
    let op = operator::start(&OperatorConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: args.dir.join("operator"),
        // The demo prints where the admin's token is.
        announce_admin_token: false,
        ..OperatorConfig::default()
    })
    .await?;
    let url = op.url();
    let data_dir = args.dir.join("operator");
    println!(
        "operator {url} (store {}, admin token in {})",
        data_dir.join("tessera.db").display(),
        data_dir.join(operator::ADMIN_TOKEN_FILE).display()
    );
    let admin_token = zeroize::Zeroizing::new(
        std::fs::read_to_string(data_dir.join(operator::ADMIN_TOKEN_FILE))
            .context("reading the admin token the operator wrote")?,
    );
    // Every link to the operator is TLS, checked against the CA it keeps in its data directory.
    let ca_pem = crate::client::conn::read_ca_file(&data_dir.join(operator::CA_CERT_FILE))?;
    let addr = crate::client::conn::OperatorAddr {
        url: url.clone(),
        ca_pem: Some(ca_pem.clone()),
        insecure_plaintext: false,
    };
    let mut admin = crate::client::conn::connect_with(&addr, Some(admin_token.trim())).await?;
    // The operator records the users, their roles and parties; each user gets its own token.
    let mut tokens = Vec::new();
    for (user, roles, party) in [
        (PROVIDER_USER, "provider", PROVIDER),
        (USER, "buyer", BUYER),
    ] {
        let t = crate::client::accounts::user_with_party(
            &mut admin, user, roles, party, "demo", 3_600_000,
        )
        .await?;
        println!("user {user} ({roles}) owns party {party}; API token issued");
        tokens.push(t);
    }
    let mut provider = crate::client::conn::connect_with(&addr, Some(&tokens[0])).await?;
    let mut c = crate::client::conn::connect_with(&addr, Some(&tokens[1])).await?;
    let key = std::fs::read_to_string(data_dir.join(operator::PUBLIC_KEY_FILE))
        .context("reading the operator's public key")?;
    let mut workers = Vec::new();
    for (party, dir) in [(PROVIDER, "provider"), (BUYER, "buyer")] {
        // The party's owner asks for a registration token; its worker presents it once and
        // gets its own credential.
        let owner = if party == PROVIDER {
            &mut provider
        } else {
            &mut c
        };
        let reg = owner
            .issue_registration_token(pb::RegistrationTokenRequest {
                party_id: party.into(),
                ttl_ms: 600_000,
            })
            .await?
            .into_inner();
        let attrs = WorkerAttributes {
            party: party.into(),
            region: "cn-north".into(),
            compute_centre: "dc-beijing-1".into(),
            hardware: "x86_64".into(),
            ai_frameworks: vec!["none".into()],
            software_env: "linux".into(),
        };
        let mut cfg = tessera_worker::WorkerConfig::new(
            url.clone(),
            attrs,
            args.dir.join(dir).join("datasets"),
            args.dir.join(dir).join("outputs"),
        );
        cfg.operator_key_hex = key.trim().to_owned();
        cfg.operator_ca_pem = Some(ca_pem.clone());
        cfg.registration = tessera_proto::TokenHeader::new(&reg.secret_token)?;
        let w = tessera_worker::start(cfg, Arc::new(SystemClock)).await?;
        println!(
            "worker {} for {party} registered with its party's registration token, peer link {}",
            w.worker_id, w.peer_addr
        );
        workers.push(w);
    }

    step(
        3,
        "registering datasets; the T/AI 123.12 trade flow: publish, demand, match, confirm, \
         settle, deliver a PSI policy of 2 runs",
    );
    provider
        .create_dataset(pb::CreateDatasetRequest {
            dataset_id: "ds-provider-customers".into(),
            owner_party: PROVIDER.into(),
            location: "customers.csv".into(),
            description: "provider customer ids".into(),
            declared_rows: Some(prov_rows as u64),
        })
        .await?;
    c.create_dataset(pb::CreateDatasetRequest {
        dataset_id: "ds-buyer-crm".into(),
        owner_party: BUYER.into(),
        location: "crm.csv".into(),
        description: "buyer CRM".into(),
        declared_rows: Some(buyer_rows as u64),
    })
    .await?;
    // Enough for the licence's price and both runs' holds at the policy's rates (5.00 per
    // job + 0.02 per 1,000 provider rows, `trade_flow`) whatever `--rows`: 100.00 and two
    // holds on top.
    let hold_micros = 5_000_000 + (prov_rows as u64).div_ceil(1000) as i64 * 20_000;
    let deposit_micros = 100_000_000 + 2 * hold_micros;
    c.deposit(pb::DepositRequest {
        account: String::new(),
        amount_micros: deposit_micros,
        idempotency_key: "demo-topup-1".into(),
        into: String::new(),
    })
    .await?;
    println!("{USER} deposited {}", fmt_micros(deposit_micros));
    let lic = trade_flow(&addr, &tokens[0], &tokens[1]).await?;

    let submit = |mode: pb::PsiMode, output: &str| pb::SubmitJobRequest {
        user: String::new(),
        licence_id: lic.clone(),
        scene: "psi".into(),
        buyer_party: BUYER.into(),
        buyer_dataset_id: "ds-buyer-crm".into(),
        buyer_columns: vec!["customer_id".into()],
        provider_columns: vec!["id".into()],
        mode: mode.into(),
        key_case: pb::KeyCase::Lower.into(),
        unicode_form: pb::UnicodeForm::Nfc.into(),
        empty_keys: pb::EmptyKeys::Skip.into(),
        // The result carries the buyer's own spend next to its original ids.
        carry_columns: if output.is_empty() {
            Vec::new()
        } else {
            vec!["spend".into()]
        },
        output: output.into(),
        user_groups: String::new(),
        request_id: String::new(),
        // The mode's default: rr22 for the intersection, ecdh for the size-only job.
        protocol: pb::PsiProtocol::Unspecified.into(),
        preview_first_row: 0,
        preview_last_row: 0,
        mpc_query: String::new(),
        mpc_columns: Vec::new(),
        join: pb::JoinKind::Unspecified.into(),
        payload_columns: Vec::new(),
        mpc_triples: pb::MpcTriples::Unspecified.into(),
        fl: None,
    };
    let mut jobs = Vec::new();
    let mut refusals = Vec::new();
    let mut all_ok = true;
    for (n, mode, output) in [
        (4, pb::PsiMode::Intersection, "psi_result.csv"),
        (5, pb::PsiMode::Size, ""),
    ] {
        let mode_text = tessera_core::PsiMode::try_from(mode)?.as_str();
        step(n, &format!("PSI job, mode {mode_text}"));
        let j = c.submit_job(submit(mode, output)).await?.into_inner();
        println!("submitted {}", job_line(&j));
        let j = if j.state() == pb::JobState::Refused {
            j
        } else {
            watch(&mut c, &j.job_id).await?
        };
        println!("finished {}", job_line(&j));
        let mut ok =
            j.state() == pb::JobState::Succeeded && j.result_size == Some(truth.len() as u64);
        if mode == pb::PsiMode::Intersection && ok {
            let path = args.dir.join("buyer/outputs").join(output);
            // The result holds the buyer's original ids (upper case, spaces kept) and its
            // spend, one CSV column each; normalised the same way, they are the intersection.
            let mut reader = csv::Reader::from_path(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut got: HashSet<String> = HashSet::new();
            for record in reader.records() {
                let record = record.with_context(|| format!("reading {}", path.display()))?;
                ok &= record.len() == 2;
                got.insert(record.get(0).unwrap_or_default().trim().to_lowercase());
            }
            ok &= reader.headers()?.iter().eq(["customer_id", "spend"]);
            ok &= got == truth;
            println!(
                "result file {}: {} ids, equal to the true intersection: {ok}",
                path.display(),
                got.len()
            );
        } else {
            println!(
                "result size {}, expected {}: {}",
                j.result_size
                    .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
                truth.len(),
                if ok { "correct" } else { "WRONG" }
            );
        }
        all_ok &= ok;
        jobs.push(json!({
            "job_id": j.job_id, "scene": j.scene, "mode": j.mode_text(), "status": j.state_text(),
            "result_size": j.result_size, "expected_size": truth.len(), "charge_micros": j.charge_micros,
            "correct": ok,
        }));
    }

    step(6, "a third PSI job: the licence has no runs left");
    let j = c
        .submit_job(submit(pb::PsiMode::Size, ""))
        .await?
        .into_inner();
    println!("{}", job_line(&j));
    let refused_ok = j.state() == pb::JobState::Refused
        && j.refusal_reasons
            .iter()
            .any(|r| r.contains("quota exhausted"));
    all_ok &= refused_ok;
    for r in &j.refusal_reasons {
        refusals.push(json!({"job_id": j.job_id, "reason": r}));
    }
    jobs.push(json!({
        "job_id": j.job_id, "scene": j.scene, "mode": j.mode_text(), "status": j.state_text(),
        "result_size": j.result_size, "expected_size": null, "charge_micros": j.charge_micros,
        "correct": refused_ok,
    }));
    let l = c
        .get_licence(pb::LicenceRef {
            licence_id: lic.clone(),
        })
        .await?
        .into_inner();
    println!("licence policy now: {}", l.policy_json);

    step(7, "usage, charges, balances (as the operator sees them)");
    let usage = admin.list_usage(pb::ListRequest {}).await?.into_inner();
    let transfers = admin.list_transfers(pb::ListRequest {}).await?.into_inner();
    let balances = admin.list_balances(pb::ListRequest {}).await?.into_inner();
    let style = TableStyle::for_stdout();
    for listing in [
        ledger::usage(&usage.events),
        ledger::transfers(
            &transfers.transfers,
            false,
            &tessera_core::civil::Zone::default(),
        ),
        ledger::balances(&balances.balances, false),
    ] {
        println!("{}", listing.table(style));
    }
    println!("  double entry balanced: {}", balances.balanced);
    all_ok &= balances.balanced;

    step(8, "audit chain");
    let audit = admin.verify_audit(pb::ListRequest {}).await?.into_inner();
    println!(
        "  {} ({} entries)",
        if audit.ok { "verified" } else { "BROKEN" },
        audit.entries
    );
    all_ok &= audit.ok;

    if let Some(path) = &args.summary_json {
        let summary = json!({
            "jobs": jobs,
            "refusals": refusals,
            "usage_events": usage.events.len(),
            "ledger": {
                "balanced": balances.balanced,
                "balances": balances.balances.iter().map(|b| (b.account.clone(), json!(b.balance_micros))).collect::<serde_json::Map<_, _>>(),
                "transfers": transfers.transfers.len(),
            },
            "audit": {"verified": audit.ok, "entries": audit.entries},
            "ok": all_ok,
        });
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
        println!("\nsummary written to {}", path.display());
    }
    for w in &workers {
        w.abort();
    }
    op.stop().await;
    if !all_ok {
        anyhow::bail!("the demo's checks failed (see above)");
    }
    println!("\nall checks passed");
    Ok(())
}

/// The T/AI 123.12 trade flow that produces the demo's licence: the provider publishes its
/// dataset as controlled data (10.00), the buyer registers and publishes a demand with its
/// X25519 key, finds the data by matching, confirms and settles (paying 10.00, receiving the
/// licence signed by the provider's key and the delivery key sealed to its own key), the
/// licence is verified with the provider's public key, and the provider delivers the usage
/// policy (2 PSI runs in the workers' region and centre; 5.00 per job + 0.02 per 1,000
/// provider rows, operator share 10%). Returns the id of the licence jobs run under.
async fn trade_flow(
    addr: &crate::client::conn::OperatorAddr,
    provider_token: &str,
    buyer_token: &str,
) -> anyhow::Result<String> {
    use crate::client::trade::call_json;
    use tessera_auth::Operation as O;
    let mut p = crate::client::conn::connect_trade_with(addr, Some(provider_token)).await?;
    let mut b = crate::client::conn::connect_trade_with(addr, Some(buyer_token)).await?;
    let controlled = tessera_trade::CONTROLLED_REGISTRATION_ID;
    call_json(
        &mut p,
        O::PublishDatasets,
        &json!({
            "owner": tessera_trade::CONTROLLED_OWNER, "dataID": "ds-provider-customers",
            "registrationID": controlled, "protocol": "tessera-usage-v1",
            "description": "provider customer ids, usable through PSI only",
            "key_words": ["customers", "ids"], "free": false, "price": 10.0,
        }),
    )
    .await?;
    println!(
        "provider published ds-provider-customers as controlled data at 10.00 (/publishDatasets)"
    );
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
    let (buyer_private, buyer_public) = tessera_trade::seal::BuyerPrivateKey::derive(&seed);
    let demand = call_json(
        &mut b,
        O::RegisterDemand,
        &json!({
            "demander": USER, "data_category": ["retail"], "key_words": ["customers"],
            "data_type": "dataset", "description": "customer overlap for a campaign",
            "public_key": buyer_public.to_text(),
        }),
    )
    .await?;
    let demand_id = demand["demandID"].as_str().unwrap_or_default().to_owned();
    call_json(
        &mut b,
        O::PublishDemand,
        &json!({"demander": USER, "demandID": demand_id}),
    )
    .await?;
    let matches = call_json(&mut b, O::QueryMatches, &json!({"demandID": demand_id})).await?;
    let found = matches["matches"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["dataID"] == "ds-provider-customers"));
    if !found {
        anyhow::bail!("matching did not find the published dataset: {matches}");
    }
    println!(
        "{USER} registered and published demand {demand_id}; matching found ds-provider-customers"
    );
    let confirmed = call_json(
        &mut b,
        O::ConfirmDemand,
        &json!({"demander": USER, "demandID": demand_id, "registrationID": controlled,
                "dataID": "ds-provider-customers"}),
    )
    .await?;
    let confirm_id = confirmed["confirmID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let settled = call_json(&mut b, O::Settlement, &json!({"confirmID": confirm_id})).await?;
    let licence: tessera_trade::licence::Licence =
        serde_json::from_value(settled["licenses"].clone()).context("the settlement's licence")?;
    let listing = call_json(
        &mut b,
        O::QueryPublishedData,
        &json!({"registrationID": controlled, "dataID": "ds-provider-customers"}),
    )
    .await?;
    let key = tessera_trade::licence::parse_verifying_key(
        listing["licensor_public_key"].as_str().unwrap_or_default(),
    )?;
    licence.verify(&key)?;
    let sealed: tessera_trade::seal::SealedKey =
        serde_json::from_value(settled["private_key"].clone()).context("the sealed key")?;
    tessera_trade::seal::open_delivery_key(&sealed, &buyer_private, &licence.licenses_id)?;
    println!(
        "settled {confirm_id}: paid {} (ledger transfers {}), licence {} verified with the provider's public key, delivery key opened with the buyer's key",
        fmt_micros(
            settled["payment_proof"]["amount_micros"]
                .as_i64()
                .unwrap_or_default()
        ),
        settled["payment_proof"]["ledger_transfers"]
            .as_array()
            .map_or(0, Vec::len),
        licence.licenses_id
    );
    let policy = call_json(
        &mut p,
        O::DeliverDatasets,
        &json!({
            "licenses": settled["licenses"], "dataID": "ds-provider-customers",
            "policyName": "psi-two-runs",
            "relUsers": [{"userId": USER, "userName": "Alice (buyer analyst)", "isGroup": 0}],
            "useScenes": [{
                "useSence": "psi", "counts": 2,
                "visitArea": ["cn-north"], "cpCenter": ["dc-beijing-1"], "envHard": ["x86_64"],
                "aiFrame": [], "envSoft": ["linux"]
            }],
            "price_per_job": 5.0, "price_per_1k_rows": 0.02, "operator_share_bps": 1000,
        }),
    )
    .await?;
    let lic = policy["licenceID"].as_str().unwrap_or_default().to_owned();
    println!(
        "provider delivered policy {} (/deliverDatasets): licence {lic}, 5.00 per job + 0.02 per 1,000 provider rows, operator share 10%",
        policy["policyId"].as_str().unwrap_or_default()
    );
    Ok(lic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_clears_only_directories_it_created() {
        let root = tempfile::tempdir().expect("tempdir");
        // Someone's directory with a file in it: refused, the file kept.
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::fs::write(theirs.join("thesis.tex"), "precious").expect("write");
        let e = prepare_dir(&theirs).expect_err("not the demo's");
        assert!(
            format!("{e:#}").contains("not created by `tessera demo`"),
            "{e:#}"
        );
        assert_eq!(
            std::fs::read_to_string(theirs.join("thesis.tex")).expect("kept"),
            "precious"
        );
        // A new directory is created and marked; an empty one is used.
        let fresh = root.path().join("fresh");
        drop(prepare_dir(&fresh).expect("new"));
        assert!(fresh.join(MARKER).is_file());
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        drop(prepare_dir(&empty).expect("empty"));
        // The demo's own directory is cleared on the next run.
        std::fs::write(fresh.join("old.csv"), "x").expect("write");
        drop(prepare_dir(&fresh).expect("the demo's"));
        assert!(!fresh.join("old.csv").exists());
        assert!(fresh.join(MARKER).is_file());
        // Not while another demo holds it, from its very start (before its marker is
        // written), nor while an earlier build's demo operator runs on it.
        let running = prepare_dir(&fresh).expect("a running demo");
        std::fs::write(fresh.join("live.csv"), "x").expect("write");
        let e = prepare_dir(&fresh).expect_err("in use");
        assert!(
            format!("{e:#}").contains("another demo is running"),
            "{e:#}"
        );
        assert!(fresh.join("live.csv").exists());
        drop(running);
        let operator = crate::datadir::lock(&fresh.join("operator")).expect("an operator");
        let e = prepare_dir(&fresh).expect_err("its operator runs");
        assert!(
            format!("{e:#}").contains("another demo is running"),
            "{e:#}"
        );
        drop(operator);
        drop(prepare_dir(&fresh).expect("once it stopped"));
        assert!(!fresh.join("live.csv").exists());
        // A file where the directory should be is refused.
        let file = root.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(prepare_dir(&file).is_err());
    }
}
