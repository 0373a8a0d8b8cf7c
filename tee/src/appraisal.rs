//! The appraisal: verified evidence against an [`AppraisalPolicy`] and the freshness
//! binding. Every rule is checked and every failure is listed as a [`Reason`]; the evidence
//! is accepted only if there is none.

use serde::{Deserialize, Serialize};

use crate::TeeKind;
use crate::error::NonceError;
use crate::evidence::{Measurements, VerifiedEvidence};
use crate::nonce::{Nonce, NonceRegistry, WorkerPublicKey, binding_holds};
use crate::policy::AppraisalPolicy;
use crate::snp::policy_bits;

/// One reason an appraisal refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Simulated evidence under a policy without an `insecure_simulated_tee` section.
    InsecureSimulatedTee,
    /// The policy has no section for this kind.
    KindNotAllowed {
        /// The kind.
        kind: TeeKind,
    },
    /// A debug TEE and the policy does not allow debug.
    DebugEnclave,
    /// A measurement not in the policy's allow-list.
    MeasurementNotAllowed {
        /// The field (`mrenclave`, `mrtd`, `rtmr2`, `measurement`, ...).
        field: String,
        /// Its value (hex).
        value: String,
    },
    /// SGX ISV product id not in the allow-list.
    IsvProdIdNotAllowed {
        /// The value.
        value: u16,
    },
    /// SGX ISV SVN below the minimum.
    IsvSvnTooLow {
        /// The value.
        value: u16,
        /// The minimum.
        min: u16,
    },
    /// DCAP TCB status not in the allow-list.
    TcbStatusNotAllowed {
        /// The status.
        status: String,
    },
    /// An advisory on the deny-list applies.
    AdvisoryDenied {
        /// The advisory.
        id: String,
    },
    /// A platform flag the policy does not allow (`dynamic_platform`, `cached_keys`,
    /// `smt_enabled` for DCAP; `smt`, `migrate_ma` for the SNP guest policy).
    PlatformFlag {
        /// The flag.
        flag: String,
    },
    /// DCAP collateral older than `max_collateral_age_secs`.
    CollateralTooOld {
        /// Latest issue time of the collateral.
        issued_at: u64,
        /// The maximum age.
        max_age_secs: u64,
    },
    /// DCAP collateral expires before the appraisal time.
    CollateralExpired {
        /// Earliest expiry.
        expired_at: u64,
    },
    /// SEV-SNP report from a VMPL above the maximum.
    VmplTooHigh {
        /// The VMPL.
        vmpl: u32,
        /// The maximum.
        max: u32,
    },
    /// SEV-SNP reported TCB component below the minimum.
    ReportedTcbTooLow {
        /// The component.
        component: String,
        /// Its SVN.
        value: u8,
        /// The minimum.
        min: u8,
    },
    /// The policy requires a binding and none was checked.
    BindingNotChecked,
    /// The report data is not `H(tag ‖ nonce ‖ worker key)`.
    ReportDataMismatch,
    /// The nonce is not fresh.
    Nonce {
        /// Why.
        error: NonceError,
    },
    /// `dcap-qvl`'s strict policy, configured from this one, refused for a reason the rules
    /// above did not catch.
    DcapPolicy {
        /// `dcap-qvl`'s words.
        detail: String,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::InsecureSimulatedTee => f.write_str(
                "insecure-simulated-tee evidence, and the policy asks for real hardware",
            ),
            Reason::KindNotAllowed { kind } => {
                write!(f, "TEE kind {kind} not allowed by the policy")
            }
            Reason::DebugEnclave => f.write_str("debug TEE (its memory is readable by the host)"),
            Reason::MeasurementNotAllowed { field, value } => {
                write!(f, "{field} {value} not in the allow-list")
            }
            Reason::IsvProdIdNotAllowed { value } => {
                write!(f, "ISV product id {value} not allowed")
            }
            Reason::IsvSvnTooLow { value, min } => write!(f, "ISV SVN {value} below {min}"),
            Reason::TcbStatusNotAllowed { status } => write!(f, "TCB status {status} not allowed"),
            Reason::AdvisoryDenied { id } => write!(f, "advisory {id} is on the deny-list"),
            Reason::PlatformFlag { flag } => write!(f, "platform flag {flag} not allowed"),
            Reason::CollateralTooOld {
                issued_at,
                max_age_secs,
            } => write!(
                f,
                "collateral issued at {issued_at} is older than {max_age_secs} s"
            ),
            Reason::CollateralExpired { expired_at } => {
                write!(f, "collateral expired at {expired_at}")
            }
            Reason::VmplTooHigh { vmpl, max } => write!(f, "VMPL {vmpl} above {max}"),
            Reason::ReportedTcbTooLow {
                component,
                value,
                min,
            } => write!(f, "reported TCB {component} SVN {value} below {min}"),
            Reason::BindingNotChecked => {
                f.write_str("no nonce and worker key given: the binding was not checked")
            }
            Reason::ReportDataMismatch => {
                f.write_str("report data does not bind the nonce and the worker key")
            }
            Reason::Nonce { error } => write!(f, "{error}"),
            Reason::DcapPolicy { detail } => write!(f, "dcap-qvl strict policy: {detail}"),
        }
    }
}

/// How the binding is checked.
#[derive(Debug)]
pub enum Binding<'a> {
    /// Not checked (refused with [`Reason::BindingNotChecked`] if the policy requires it).
    NotChecked,
    /// The report data checked against a nonce and key, but the nonce's freshness is not
    /// (offline tools). Attestation results made from it are not enough for a key release.
    ReportDataOnly {
        /// The nonce.
        nonce: Nonce,
        /// The worker's key.
        worker_key: WorkerPublicKey,
    },
    /// The report data checked, and the nonce redeemed (single use) in the registry.
    Fresh {
        /// The registry that issued the nonce.
        registry: &'a mut NonceRegistry,
        /// The nonce.
        nonce: Nonce,
        /// The worker's key.
        worker_key: WorkerPublicKey,
    },
}

/// What binding an appraisal established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindingKind {
    /// None.
    None,
    /// Report data only.
    ReportDataOnly,
    /// Report data and a fresh, single-use nonce.
    FreshNonce,
}

/// The outcome of an appraisal.
#[derive(Debug, Clone, Serialize)]
pub struct Appraisal {
    /// Accepted: no reasons.
    pub accepted: bool,
    /// The kind appraised.
    pub kind: TeeKind,
    /// Whether the evidence is from the insecure simulated mode (then no security at all).
    pub insecure_simulated_tee: bool,
    /// The policy.
    pub policy_id: String,
    /// The appraisal time (unix seconds).
    pub at: u64,
    /// Every reason it refuses (empty when accepted).
    pub reasons: Vec<Reason>,
    /// Accepted, but with caveats (an allowed TCB status other than `UpToDate`, allowed
    /// advisories, allowed platform flags): makes the result `warning`, not `affirming`.
    pub warnings: Vec<String>,
    /// The measurements.
    pub measurements: Measurements,
    /// The DCAP TCB verdict, if any.
    pub tcb: Option<crate::evidence::DcapTcb>,
    /// The binding established.
    pub binding: BindingKind,
    /// The nonce, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The worker key, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_key: Option<String>,
    /// The report data (hex).
    pub report_data: String,
}

/// Appraises verified evidence against `policy` at `at`, with the given binding. Checks
/// every rule and lists every failure. A `Fresh` binding's nonce is redeemed (spent) even
/// when the appraisal refuses for other reasons.
pub fn appraise(
    evidence: &VerifiedEvidence,
    policy: &AppraisalPolicy,
    binding: Binding<'_>,
    at: u64,
) -> Appraisal {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if evidence.debug && !policy.allow_debug {
        reasons.push(Reason::DebugEnclave);
    }
    match &evidence.measurements {
        Measurements::Sgx { .. } | Measurements::Tdx { .. } => {
            dcap_rules(evidence, policy, at, &mut reasons, &mut warnings);
        }
        Measurements::SevSnp { .. } => snp_rules(evidence, policy, &mut reasons, &mut warnings),
        Measurements::InsecureSimulated { measurement } => match &policy.insecure_simulated_tee {
            None => reasons.push(Reason::InsecureSimulatedTee),
            Some(s) => {
                allow(&mut reasons, "measurement", measurement, &s.measurement);
                warnings.push("insecure-simulated-tee: no security".into());
            }
        },
    }
    let (kind, nonce, worker_key) = check_binding(evidence, policy, binding, at, &mut reasons);
    Appraisal {
        accepted: reasons.is_empty(),
        kind: evidence.kind,
        insecure_simulated_tee: evidence.kind == TeeKind::InsecureSimulated,
        policy_id: policy.policy_id.clone(),
        at,
        reasons,
        warnings,
        measurements: evidence.measurements.clone(),
        tcb: evidence.tcb.clone(),
        binding: kind,
        nonce: nonce.map(|n| n.to_hex()),
        worker_key: worker_key.map(|k| k.to_hex()),
        report_data: hex::encode(evidence.report_data),
    }
}

fn check_binding(
    evidence: &VerifiedEvidence,
    policy: &AppraisalPolicy,
    binding: Binding<'_>,
    at: u64,
    reasons: &mut Vec<Reason>,
) -> (BindingKind, Option<Nonce>, Option<WorkerPublicKey>) {
    match binding {
        Binding::NotChecked => {
            if policy.require_binding {
                reasons.push(Reason::BindingNotChecked);
            }
            (BindingKind::None, None, None)
        }
        Binding::ReportDataOnly { nonce, worker_key } => {
            if !binding_holds(&evidence.report_data, &nonce, &worker_key) {
                reasons.push(Reason::ReportDataMismatch);
            }
            (BindingKind::ReportDataOnly, Some(nonce), Some(worker_key))
        }
        Binding::Fresh {
            registry,
            nonce,
            worker_key,
        } => {
            if let Err(error) = registry.redeem(&nonce, at) {
                reasons.push(Reason::Nonce { error });
            }
            if !binding_holds(&evidence.report_data, &nonce, &worker_key) {
                reasons.push(Reason::ReportDataMismatch);
            }
            (BindingKind::FreshNonce, Some(nonce), Some(worker_key))
        }
    }
}

fn allow(reasons: &mut Vec<Reason>, field: &str, value: &str, list: &[String]) {
    if !list.is_empty() && !list.iter().any(|v| v == value) {
        reasons.push(Reason::MeasurementNotAllowed {
            field: field.to_string(),
            value: value.to_string(),
        });
    }
}

fn dcap_rules(
    ev: &VerifiedEvidence,
    policy: &AppraisalPolicy,
    at: u64,
    reasons: &mut Vec<Reason>,
    warnings: &mut Vec<String>,
) {
    let before = reasons.len();
    match &ev.measurements {
        Measurements::Sgx {
            mrenclave,
            mrsigner,
            isv_prod_id,
            isv_svn,
        } => match &policy.sgx {
            None => reasons.push(Reason::KindNotAllowed { kind: TeeKind::Sgx }),
            Some(p) => {
                allow(reasons, "mrenclave", mrenclave, &p.mrenclave);
                allow(reasons, "mrsigner", mrsigner, &p.mrsigner);
                if !p.isv_prod_id.is_empty() && !p.isv_prod_id.contains(isv_prod_id) {
                    reasons.push(Reason::IsvProdIdNotAllowed {
                        value: *isv_prod_id,
                    });
                }
                if *isv_svn < p.min_isv_svn {
                    reasons.push(Reason::IsvSvnTooLow {
                        value: *isv_svn,
                        min: p.min_isv_svn,
                    });
                }
            }
        },
        Measurements::Tdx { mrtd, rtmr, .. } => match &policy.tdx {
            None => reasons.push(Reason::KindNotAllowed { kind: TeeKind::Tdx }),
            Some(p) => {
                allow(reasons, "mrtd", mrtd, &p.mrtd);
                for (i, list) in [&p.rtmr0, &p.rtmr1, &p.rtmr2, &p.rtmr3]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(v) = rtmr.get(i) {
                        allow(reasons, &format!("rtmr{i}"), v, list);
                    }
                }
            }
        },
        _ => {}
    }
    let Some(tcb) = &ev.tcb else {
        reasons.push(Reason::DcapPolicy {
            detail: "no TCB verdict: evidence not verified by the DCAP verifier".into(),
        });
        return;
    };
    if !policy.tcb_status_allow.iter().any(|s| s == &tcb.status) {
        reasons.push(Reason::TcbStatusNotAllowed {
            status: tcb.status.clone(),
        });
    } else if tcb.status != "UpToDate" {
        warnings.push(format!("TCB status {}", tcb.status));
    }
    for id in &tcb.advisory_ids {
        if policy
            .advisory_deny
            .iter()
            .any(|d| d.eq_ignore_ascii_case(id))
        {
            reasons.push(Reason::AdvisoryDenied { id: id.clone() });
        } else {
            warnings.push(format!("advisory {id}"));
        }
    }
    for (flag, set, allowed) in [
        (
            "dynamic_platform",
            tcb.dynamic_platform,
            policy.allow_dynamic_platform,
        ),
        ("cached_keys", tcb.cached_keys, policy.allow_cached_keys),
        ("smt_enabled", tcb.smt_enabled, policy.allow_smt),
    ] {
        if set == Some(true) {
            if allowed {
                warnings.push(format!("platform flag {flag}"));
            } else {
                reasons.push(Reason::PlatformFlag { flag: flag.into() });
            }
        }
    }
    if tcb.collateral_earliest_expiry < at {
        reasons.push(Reason::CollateralExpired {
            expired_at: tcb.collateral_earliest_expiry,
        });
    }
    if let Some(max) = policy.max_collateral_age_secs
        && tcb.collateral_latest_issue.saturating_add(max) < at
    {
        reasons.push(Reason::CollateralTooOld {
            issued_at: tcb.collateral_latest_issue,
            max_age_secs: max,
        });
    }
    // Defence in depth: dcap-qvl's own strict policy, configured from ours, must agree when
    // our rules found nothing.
    if reasons.len() == before
        && let Some(claims) = &ev.dcap_claims
        && let Err(detail) = crate::dcap::dcap_policy_check(claims, policy, at)
    {
        reasons.push(Reason::DcapPolicy { detail });
    }
}

fn snp_rules(
    ev: &VerifiedEvidence,
    policy: &AppraisalPolicy,
    reasons: &mut Vec<Reason>,
    warnings: &mut Vec<String>,
) {
    let Measurements::SevSnp {
        measurement,
        policy: guest_policy,
        vmpl,
        reported_tcb,
        ..
    } = &ev.measurements
    else {
        return;
    };
    let Some(p) = &policy.sev_snp else {
        reasons.push(Reason::KindNotAllowed {
            kind: TeeKind::SevSnp,
        });
        return;
    };
    allow(reasons, "measurement", measurement, &p.measurement);
    if guest_policy & policy_bits::DEBUG != 0 && !ev.debug && !policy.allow_debug {
        // `debug` is read from the same bits; a caller that cleared it is caught here.
        reasons.push(Reason::DebugEnclave);
    }
    for (flag, bit, allowed) in [
        ("smt", policy_bits::SMT, p.allow_smt),
        ("migrate_ma", policy_bits::MIGRATE_MA, p.allow_migrate_ma),
    ] {
        if guest_policy & bit != 0 {
            if allowed {
                warnings.push(format!("guest policy allows {flag}"));
            } else {
                reasons.push(Reason::PlatformFlag { flag: flag.into() });
            }
        }
    }
    if *vmpl > p.max_vmpl {
        reasons.push(Reason::VmplTooHigh {
            vmpl: *vmpl,
            max: p.max_vmpl,
        });
    }
    if let Some(min) = &p.min_reported_tcb {
        for (component, value, m) in [
            ("bootloader", reported_tcb.bootloader, min.bootloader),
            ("tee", reported_tcb.tee, min.tee),
            ("snp", reported_tcb.snp, min.snp),
            ("microcode", reported_tcb.microcode, min.microcode),
        ] {
            if value < m {
                reasons.push(Reason::ReportedTcbTooLow {
                    component: component.into(),
                    value,
                    min: m,
                });
            }
        }
    }
}
