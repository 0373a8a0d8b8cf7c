//! Intel SGX and TDX DCAP quotes, verified with `dcap-qvl` against Intel's production root
//! (built into `dcap-qvl`) and the given collateral, at a time the caller passes.
//!
//! `dcap-qvl` checks the quote's ECDSA signature, the PCK certificate chain to Intel's root,
//! the CRLs, the signatures and validity of the TCB info and QE identity, the QE report, the
//! TCB level matching and refuses debug enclaves. This module adds typed refusals for
//! collateral outside its validity window (checked before `dcap-qvl` for a precise reason)
//! and turns the result into [`VerifiedEvidence`]. The appraisal (status allow-list,
//! advisories, measurements, binding) is [`crate::appraise`]'s.

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{PckCertFlag, QuoteClaims, QuoteCollateralV3, QuotePolicy};

use crate::error::VerifyError;
use crate::evidence::{DcapTcb, Measurements, VerifiedEvidence};

/// Largest quote read, in bytes.
pub const MAX_QUOTE_BYTES: usize = 64 * 1024;
/// Largest collateral file read, in bytes.
pub const MAX_COLLATERAL_BYTES: usize = 1024 * 1024;

/// Verifies an SGX or TDX DCAP quote with its collateral (the JSON form `dcap-qvl` reads and
/// writes: PCK CRL and issuer chain, root CA CRL, TCB info and QE identity with signatures
/// and issuer chains) at `at` (unix seconds).
///
/// # Errors
/// [`VerifyError`]: the first reason the quote cannot be trusted.
pub fn verify_dcap_quote(
    quote: &[u8],
    collateral_json: &[u8],
    at: u64,
) -> Result<VerifiedEvidence, VerifyError> {
    VerifyError::check_len("quote", quote.len(), MAX_QUOTE_BYTES)?;
    VerifyError::check_len("collateral", collateral_json.len(), MAX_COLLATERAL_BYTES)?;
    let collateral: QuoteCollateralV3 = serde_json::from_slice(collateral_json)
        .map_err(|e| VerifyError::malformed("collateral", e))?;
    check_window("TCB info", &collateral.tcb_info, at)?;
    check_window("QE identity", &collateral.qe_identity, at)?;
    let parsed = Quote::parse(quote).map_err(|e| VerifyError::malformed("quote", e))?;
    let claims = QuoteVerifier::new_prod()
        .verify_with_policy(quote, collateral, at, &QuotePolicy::claims_only(at))
        .map_err(|e| VerifyError::QuoteRejected {
            detail: format!("{e:#}"),
        })?;
    // The verified claims carry the report body; it must be the one parsed (same bytes).
    if claims.report != parsed.report {
        return Err(VerifyError::QuoteRejected {
            detail: "verified report differs from the parsed one".into(),
        });
    }
    Ok(evidence_of(claims, at))
}

fn evidence_of(claims: QuoteClaims, at: u64) -> VerifiedEvidence {
    let (measurements, report_data, debug) = match &claims.report {
        Report::SgxEnclave(r) => (
            Measurements::Sgx {
                mrenclave: hex::encode(r.mr_enclave),
                mrsigner: hex::encode(r.mr_signer),
                isv_prod_id: r.isv_prod_id,
                isv_svn: r.isv_svn,
            },
            r.report_data,
            // ATTRIBUTES.FLAGS bit 1: DEBUG.
            r.attributes[0] & 0x02 != 0,
        ),
        other => {
            // TD10, TD15 and TD15Ex all have the TD 1.0 body first.
            let td = other.as_td10().copied().unwrap_or_else(empty_td10);
            (
                Measurements::Tdx {
                    mrtd: hex::encode(td.mr_td),
                    rtmr: [
                        hex::encode(td.rt_mr0),
                        hex::encode(td.rt_mr1),
                        hex::encode(td.rt_mr2),
                        hex::encode(td.rt_mr3),
                    ],
                    mrconfigid: hex::encode(td.mr_config_id),
                },
                td.report_data,
                // TD_ATTRIBUTES bit 0 (TUD.DEBUG).
                td.td_attributes[0] & 0x01 != 0,
            )
        }
    };
    let flag = |f: PckCertFlag| match f {
        PckCertFlag::True => Some(true),
        PckCertFlag::False => Some(false),
        PckCertFlag::Undefined => None,
    };
    let tcb = DcapTcb {
        status: claims.tcb.status.to_string(),
        advisory_ids: claims.tcb.advisory_ids.clone(),
        dynamic_platform: flag(claims.platform.pck.dynamic_platform),
        cached_keys: flag(claims.platform.pck.cached_keys),
        smt_enabled: flag(claims.platform.pck.smt_enabled),
        collateral_latest_issue: claims.latest_issue_date,
        collateral_earliest_expiry: claims.earliest_expiration_date,
    };
    let mut ev = VerifiedEvidence::new(measurements, report_data, debug, at);
    ev.tcb = Some(tcb);
    ev.dcap_claims = Some(Box::new(claims));
    ev
}

fn empty_td10() -> dcap_qvl::quote::TDReport10 {
    dcap_qvl::quote::TDReport10 {
        tee_tcb_svn: [0; 16],
        mr_seam: [0; 48],
        mr_signer_seam: [0; 48],
        seam_attributes: [0; 8],
        td_attributes: [0xff; 8],
        xfam: [0; 8],
        mr_td: [0; 48],
        mr_config_id: [0; 48],
        mr_owner: [0; 48],
        mr_owner_config: [0; 48],
        rt_mr0: [0; 48],
        rt_mr1: [0; 48],
        rt_mr2: [0; 48],
        rt_mr3: [0; 48],
        report_data: [0; 64],
    }
}

/// Refuses a TCB info or QE identity whose `issueDate`..`nextUpdate` window does not hold
/// `at`, with a typed reason (`dcap-qvl` refuses them too, in words).
fn check_window(what: &'static str, json: &str, at: u64) -> Result<(), VerifyError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| VerifyError::malformed("collateral", e))?;
    let date = |key: &str| -> Result<u64, VerifyError> {
        let s = v
            .get(key)
            .and_then(|d| d.as_str())
            .ok_or_else(|| VerifyError::malformed("collateral", format!("{what} has no {key}")))?;
        crate::time::parse_rfc3339(s)
            .map_err(|e| VerifyError::malformed("collateral", format!("{what} {key}: {e}")))
    };
    let (issue, next) = (date("issueDate")?, date("nextUpdate")?);
    if at > next {
        return Err(VerifyError::CollateralExpired {
            what: what.to_string(),
            expired_at: next,
            at,
        });
    }
    if at < issue {
        return Err(VerifyError::CollateralNotYetValid {
            what: what.to_string(),
            valid_from: issue,
            at,
        });
    }
    Ok(())
}

/// `dcap-qvl`'s own strict policy, configured from ours: the cross-check the appraisal runs.
pub(crate) fn dcap_policy_check(
    claims: &QuoteClaims,
    policy: &crate::AppraisalPolicy,
    at: u64,
) -> Result<(), String> {
    use dcap_qvl::Policy as _;
    let mut p = QuotePolicy::strict(at)
        .allow_dynamic_platform(policy.allow_dynamic_platform)
        .allow_cached_keys(policy.allow_cached_keys)
        .allow_smt(policy.allow_smt)
        .reject_advisories(&policy.advisory_deny);
    for s in &policy.tcb_status_allow {
        if let Some(st) = parse_status(s) {
            p = p.allow_status(st);
        }
    }
    p.validate(claims).map_err(|e| format!("{e:#}"))
}

/// Intel's TCB status names, as `dcap-qvl` spells them.
pub(crate) fn parse_status(s: &str) -> Option<dcap_qvl::TcbStatus> {
    use dcap_qvl::TcbStatus as S;
    [
        S::UpToDate,
        S::SWHardeningNeeded,
        S::ConfigurationNeeded,
        S::ConfigurationAndSWHardeningNeeded,
        S::OutOfDate,
        S::OutOfDateConfigurationNeeded,
        S::TDRelaunchAdvised,
        S::TDRelaunchAdvisedConfigurationNeeded,
        S::Revoked,
    ]
    .into_iter()
    .find(|st| st.to_string() == s)
}
