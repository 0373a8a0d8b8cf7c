//! The appraisal policy: what a verifier operator accepts, read from JSON (the CLI's
//! `--policy FILE`). Unknown fields are refused, so a misspelt rule fails loudly.
//!
//! A kind is accepted only if the policy has its section (`sgx`, `tdx`, `sev_snp`,
//! `insecure_simulated_tee`); each real-hardware section must pin at least one measurement.
//! In the allow-lists an empty list means "any value" (for optional fields such as RTMRs) —
//! and for the simulated section's `measurement`, any claimed measurement (development only:
//! a licence can still pin one, `tee:insecure-simulated-tee:measurement=M`).
//!
//! ```json
//! {
//!   "policy_id": "prod-2025-06",
//!   "tcb_status_allow": ["UpToDate"],
//!   "advisory_deny": ["INTEL-SA-00615"],
//!   "sgx": {"mrenclave": ["<64 hex>"], "mrsigner": [], "isv_prod_id": [1], "min_isv_svn": 2},
//!   "tdx": {"mrtd": ["<96 hex>"], "rtmr0": [], "rtmr1": [], "rtmr2": [], "rtmr3": []},
//!   "sev_snp": {"measurement": ["<96 hex>"], "max_vmpl": 0, "allow_smt": true,
//!               "min_reported_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}
//! }
//! ```

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::evidence::SnpTcb;

/// Largest policy file read, in bytes.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Most entries in one allow- or deny-list.
pub const MAX_LIST_ENTRIES: usize = 1024;

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".to_string()]
}
fn yes() -> bool {
    true
}
fn default_ttl() -> u64 {
    300
}

/// An appraisal policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppraisalPolicy {
    /// Names this policy in every attestation result made under it.
    pub policy_id: String,
    /// DCAP TCB statuses accepted (Intel's names). Default: only `UpToDate`.
    #[serde(default = "up_to_date")]
    pub tcb_status_allow: Vec<String>,
    /// Intel advisories (`INTEL-SA-…`) that refuse a quote (case-insensitive).
    #[serde(default)]
    pub advisory_deny: Vec<String>,
    /// Accept debug TEEs (whose memory the host can read). Default false; no production
    /// policy should set it.
    #[serde(default)]
    pub allow_debug: bool,
    /// DCAP: accept a PCK certificate flagged as a dynamic platform. Default false (as
    /// `dcap-qvl`'s strict policy).
    #[serde(default)]
    pub allow_dynamic_platform: bool,
    /// DCAP: accept cached keys. Default false.
    #[serde(default)]
    pub allow_cached_keys: bool,
    /// DCAP: accept a platform with SMT enabled. Default false.
    #[serde(default)]
    pub allow_smt: bool,
    /// DCAP: refuse collateral whose newest piece was issued more than this long before the
    /// appraisal time (seconds). Absent: the collateral's own validity window decides
    /// (checked by the verifier).
    #[serde(default)]
    pub max_collateral_age_secs: Option<u64>,
    /// Require the report data to bind a nonce and the worker key. Default true.
    #[serde(default = "yes")]
    pub require_binding: bool,
    /// Lifetime of the attestation results made under this policy, seconds (default 300,
    /// at most one day).
    #[serde(default = "default_ttl")]
    pub result_ttl_secs: u64,
    /// SGX rules; absent: SGX refused.
    #[serde(default)]
    pub sgx: Option<SgxPolicy>,
    /// TDX rules; absent: TDX refused.
    #[serde(default)]
    pub tdx: Option<TdxPolicy>,
    /// SEV-SNP rules; absent: SEV-SNP refused.
    #[serde(default)]
    pub sev_snp: Option<SnpPolicy>,
    /// The simulated development mode's rules; absent (as it must be in production): the
    /// simulated mode refused.
    #[serde(default)]
    pub insecure_simulated_tee: Option<SimulatedPolicy>,
}

/// SGX enclave rules. At least one of `mrenclave` and `mrsigner` must be non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgxPolicy {
    /// Accepted MRENCLAVE values (hex); empty: any.
    #[serde(default)]
    pub mrenclave: Vec<String>,
    /// Accepted MRSIGNER values (hex); empty: any.
    #[serde(default)]
    pub mrsigner: Vec<String>,
    /// Accepted ISV product ids; empty: any.
    #[serde(default)]
    pub isv_prod_id: Vec<u16>,
    /// Lowest accepted ISV SVN.
    #[serde(default)]
    pub min_isv_svn: u16,
}

/// TDX trust domain rules. `mrtd` must be non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Accepted MRTD values (hex).
    #[serde(default)]
    pub mrtd: Vec<String>,
    /// Accepted RTMR0 values; empty: any.
    #[serde(default)]
    pub rtmr0: Vec<String>,
    /// Accepted RTMR1 values; empty: any.
    #[serde(default)]
    pub rtmr1: Vec<String>,
    /// Accepted RTMR2 values; empty: any.
    #[serde(default)]
    pub rtmr2: Vec<String>,
    /// Accepted RTMR3 values; empty: any.
    #[serde(default)]
    pub rtmr3: Vec<String>,
}

/// SEV-SNP guest rules. `measurement` must be non-empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accepted launch measurements (hex).
    #[serde(default)]
    pub measurement: Vec<String>,
    /// Highest VMPL the report may come from (0 is the most privileged). Default 0.
    #[serde(default)]
    pub max_vmpl: u32,
    /// Accept a guest policy that allows host SMT. Default false.
    #[serde(default)]
    pub allow_smt: bool,
    /// Accept a guest policy that allows a migration agent. Default false.
    #[serde(default)]
    pub allow_migrate_ma: bool,
    /// Lowest reported TCB, per component.
    #[serde(default)]
    pub min_reported_tcb: Option<SnpTcb>,
}

/// The simulated mode's rules (development only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedPolicy {
    /// Accepted claimed measurements; empty: any.
    #[serde(default)]
    pub measurement: Vec<String>,
}

impl AppraisalPolicy {
    /// Reads a policy from JSON and checks it ([`AppraisalPolicy::check`]).
    ///
    /// # Errors
    /// [`PolicyError`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::Json(format!(
                "{} bytes, more than {MAX_POLICY_BYTES}",
                bytes.len()
            )));
        }
        let mut p: AppraisalPolicy =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Json(e.to_string()))?;
        p.normalise();
        p.check()?;
        Ok(p)
    }

    /// Lowercases every hex digest, so comparisons are exact.
    pub fn normalise(&mut self) {
        let low = |v: &mut Vec<String>| v.iter_mut().for_each(|s| *s = s.trim().to_lowercase());
        if let Some(s) = &mut self.sgx {
            low(&mut s.mrenclave);
            low(&mut s.mrsigner);
        }
        if let Some(t) = &mut self.tdx {
            for l in [
                &mut t.mrtd,
                &mut t.rtmr0,
                &mut t.rtmr1,
                &mut t.rtmr2,
                &mut t.rtmr3,
            ] {
                low(l);
            }
        }
        if let Some(s) = &mut self.sev_snp {
            low(&mut s.measurement);
        }
    }

    /// Checks the policy is usable: digests are hex of the right length, each kind's
    /// section pins a measurement, statuses are Intel's names, lists and TTL are bounded.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] naming the field.
    pub fn check(&self) -> Result<(), PolicyError> {
        let bad = |field: &str, detail: &str| PolicyError::Invalid {
            field: field.to_string(),
            detail: detail.to_string(),
        };
        if self.policy_id.trim().is_empty() {
            return Err(bad("policy_id", "empty"));
        }
        if self.result_ttl_secs == 0 || self.result_ttl_secs > 86_400 {
            return Err(bad("result_ttl_secs", "must be 1 ..= 86400"));
        }
        for s in &self.tcb_status_allow {
            if crate::dcap::parse_status(s).is_none() {
                return Err(bad("tcb_status_allow", &format!("unknown TCB status {s}")));
            }
        }
        check_list("advisory_deny", &self.advisory_deny, None)?;
        if let Some(s) = &self.sgx {
            check_list("sgx.mrenclave", &s.mrenclave, Some(32))?;
            check_list("sgx.mrsigner", &s.mrsigner, Some(32))?;
            if s.mrenclave.is_empty() && s.mrsigner.is_empty() {
                return Err(bad("sgx", "names no mrenclave and no mrsigner"));
            }
        }
        if let Some(t) = &self.tdx {
            for (f, l) in [
                ("tdx.mrtd", &t.mrtd),
                ("tdx.rtmr0", &t.rtmr0),
                ("tdx.rtmr1", &t.rtmr1),
                ("tdx.rtmr2", &t.rtmr2),
                ("tdx.rtmr3", &t.rtmr3),
            ] {
                check_list(f, l, Some(48))?;
            }
            if t.mrtd.is_empty() {
                return Err(bad("tdx.mrtd", "empty: a TDX section must pin MRTD"));
            }
        }
        if let Some(s) = &self.sev_snp {
            check_list("sev_snp.measurement", &s.measurement, Some(48))?;
            if s.measurement.is_empty() {
                return Err(bad("sev_snp.measurement", "empty: must pin a measurement"));
            }
        }
        if let Some(s) = &self.insecure_simulated_tee {
            check_list("insecure_simulated_tee.measurement", &s.measurement, None)?;
        }
        Ok(())
    }
}

fn check_list(field: &str, list: &[String], hex_len: Option<usize>) -> Result<(), PolicyError> {
    if list.len() > MAX_LIST_ENTRIES {
        return Err(PolicyError::Invalid {
            field: field.to_string(),
            detail: format!("more than {MAX_LIST_ENTRIES} entries"),
        });
    }
    if let Some(n) = hex_len {
        for v in list {
            match hex::decode(v) {
                Ok(b) if b.len() == n => {}
                _ => {
                    return Err(PolicyError::Invalid {
                        field: field.to_string(),
                        detail: format!("{v:?} is not {n} bytes of hex"),
                    });
                }
            }
        }
    }
    Ok(())
}
