//! `tessera tee verify`: verifies TEE evidence (SGX/TDX DCAP quote with collateral, SEV-SNP
//! report with VCEK and chain, or the insecure simulated mode) at a given time and appraises
//! it against a policy file, printing the verdict with every reason (text or JSON). Offline:
//! nothing is fetched and the clock is not read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;
use tessera_tee::{
    AppraisalPolicy, Binding, Nonce, VerifyError, WorkerPublicKey, appraise,
    insecure_simulated_evidence, verify_dcap_quote, verify_snp_report,
};

use crate::exit::AppraisalRefused;

/// Largest evidence or collateral file read, in bytes.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;

#[derive(Debug, clap::Subcommand)]
pub enum TeeCommand {
    /// Verify TEE evidence at a given time and appraise it against a policy file; prints
    /// accepted or refused with every reason (exit status 0 accepted, 3 refused)
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The evidence: an SGX or TDX DCAP quote (with --collateral), an SEV-SNP report, raw
    /// or hex (with --vcek), or an insecure-simulated-tee JSON claim set (neither)
    #[arg(long, value_name = "FILE", required = true)]
    evidence: PathBuf,
    /// DCAP collateral (JSON: PCK CRL, root CA CRL, TCB info, QE identity and their chains)
    #[arg(long, value_name = "FILE", conflicts_with = "vcek")]
    collateral: Option<PathBuf>,
    /// SEV-SNP: the chip's VCEK certificate (DER)
    #[arg(long, value_name = "FILE")]
    vcek: Option<PathBuf>,
    /// SEV-SNP: AMD's ASK and ARK certificates (PEM, ASK first); its ARK must be a
    /// built-in AMD root [default: the built-in chains]
    #[arg(long, value_name = "FILE", requires = "vcek")]
    chain: Option<PathBuf>,
    /// The appraisal time: unix seconds or RFC 3339 (2025-06-19T12:00:00Z); collateral and
    /// certificates must be valid then
    #[arg(long, required = true, value_parser = parse_at)]
    at: u64,
    /// The appraisal policy (JSON; see the tessera-tee crate docs)
    #[arg(long, value_name = "FILE", required = true)]
    policy: PathBuf,
    /// The nonce (64 hex digits) the report data should bind, with --worker-key; checked
    /// against the report data only (an offline check cannot know whether it was used)
    #[arg(long, requires = "worker_key")]
    nonce: Option<String>,
    /// The worker's X25519 public key (64 hex digits) the report data should bind
    #[arg(long, requires = "nonce")]
    worker_key: Option<String>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

fn parse_at(s: &str) -> Result<u64, String> {
    tessera_tee::parse_time(s)
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        anyhow::bail!(
            "{what} {}: {} bytes, more than the {MAX_FILE_BYTES} read",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

pub fn run(cmd: TeeCommand) -> anyhow::Result<()> {
    match cmd {
        TeeCommand::Verify(a) => verify(a),
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let policy_bytes = read(&a.policy, "policy")?;
    let policy = AppraisalPolicy::from_json(&policy_bytes)
        .with_context(|| format!("policy {}", a.policy.display()))?;
    let evidence = read(&a.evidence, "evidence")?;
    let binding = match (&a.nonce, &a.worker_key) {
        (Some(n), Some(k)) => Binding::ReportDataOnly {
            nonce: Nonce::from_hex(n).context("--nonce: expected 64 hex digits")?,
            worker_key: WorkerPublicKey::from_hex(k)
                .context("--worker-key: expected 64 hex digits")?,
        },
        _ => Binding::NotChecked,
    };
    let verified: Result<_, VerifyError> = if let Some(c) = &a.collateral {
        let collateral = read(c, "collateral")?;
        verify_dcap_quote(&evidence, &collateral, a.at)
    } else if let Some(v) = &a.vcek {
        let vcek = read(v, "VCEK")?;
        let chain = a.chain.as_deref().map(|p| read(p, "chain")).transpose()?;
        verify_snp_report(&evidence, &vcek, chain.as_deref(), a.at)
    } else {
        insecure_simulated_evidence(&evidence, a.at)
    };
    let ev = match verified {
        Ok(ev) => ev,
        Err(e) => {
            if a.json {
                let out = json!({"accepted": false, "stage": "verification", "at": a.at,
                    "policy_id": policy.policy_id, "reasons": [e.to_string()]});
                println!("{out}");
            } else {
                println!("refused (verification)\n  reason: {e}");
            }
            return Err(AppraisalRefused.into());
        }
    };
    let appraisal = appraise(&ev, &policy, binding, a.at);
    if a.json {
        println!("{}", serde_json::to_string(&appraisal)?);
    } else {
        print_text(&appraisal);
    }
    if appraisal.accepted {
        Ok(())
    } else {
        Err(AppraisalRefused.into())
    }
}

fn print_text(a: &tessera_tee::Appraisal) {
    let verdict = if a.accepted { "accepted" } else { "refused" };
    println!(
        "{verdict} ({}, policy {}, at {})",
        a.kind, a.policy_id, a.at
    );
    if a.insecure_simulated_tee {
        println!("  WARNING: insecure-simulated-tee evidence: no security");
    }
    for (field, value) in a.measurements.named() {
        println!("  {field}: {value}");
    }
    if let Some(t) = &a.tcb {
        println!("  tcb status: {}", t.status);
        if !t.advisory_ids.is_empty() {
            println!("  advisories: {}", t.advisory_ids.join(", "));
        }
    }
    println!("  report data: {}", a.report_data);
    for r in &a.reasons {
        println!("  reason: {r}");
    }
    for w in &a.warnings {
        println!("  warning: {w}");
    }
}
