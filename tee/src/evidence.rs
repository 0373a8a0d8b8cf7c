//! What verified evidence says: [`VerifiedEvidence`], the common shape the three verifiers
//! (DCAP, SEV-SNP, simulated) produce and the appraisal reads.

use serde::{Deserialize, Serialize};

use crate::TeeKind;

/// The measured identity of the workload, per kind. Digests are lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Measurements {
    /// SGX enclave identity.
    #[serde(rename = "sgx")]
    Sgx {
        /// MRENCLAVE (32 bytes).
        mrenclave: String,
        /// MRSIGNER (32 bytes).
        mrsigner: String,
        /// ISV product id.
        isv_prod_id: u16,
        /// ISV security version number.
        isv_svn: u16,
    },
    /// TDX trust domain identity.
    #[serde(rename = "tdx")]
    Tdx {
        /// MRTD (48 bytes).
        mrtd: String,
        /// RTMR0..3 (48 bytes each).
        rtmr: [String; 4],
        /// MRCONFIGID (48 bytes).
        mrconfigid: String,
    },
    /// SEV-SNP guest identity.
    #[serde(rename = "sev-snp")]
    SevSnp {
        /// Launch measurement (48 bytes).
        measurement: String,
        /// Guest policy bits.
        policy: u64,
        /// The VMPL that requested the report.
        vmpl: u32,
        /// Guest SVN.
        guest_svn: u32,
        /// The reported TCB (the one the VCEK was derived for).
        reported_tcb: SnpTcb,
        /// HOST_DATA (32 bytes).
        host_data: String,
    },
    /// The simulated development mode: whatever the claim set says.
    #[serde(rename = "insecure-simulated-tee")]
    InsecureSimulated {
        /// The claimed measurement.
        measurement: String,
    },
}

impl Measurements {
    /// The kind these measurements belong to.
    pub fn kind(&self) -> TeeKind {
        match self {
            Measurements::Sgx { .. } => TeeKind::Sgx,
            Measurements::Tdx { .. } => TeeKind::Tdx,
            Measurements::SevSnp { .. } => TeeKind::SevSnp,
            Measurements::InsecureSimulated { .. } => TeeKind::InsecureSimulated,
        }
    }

    /// The named measurement fields (`mrenclave`, `mrsigner`, `mrtd`, `rtmr0`..`rtmr3`,
    /// `measurement`) with their hex values; what a licence's hardware requirement can name.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        match self {
            Measurements::Sgx {
                mrenclave,
                mrsigner,
                ..
            } => vec![("mrenclave", mrenclave), ("mrsigner", mrsigner)],
            Measurements::Tdx { mrtd, rtmr, .. } => vec![
                ("mrtd", mrtd),
                ("rtmr0", &rtmr[0]),
                ("rtmr1", &rtmr[1]),
                ("rtmr2", &rtmr[2]),
                ("rtmr3", &rtmr[3]),
            ],
            Measurements::SevSnp { measurement, .. }
            | Measurements::InsecureSimulated { measurement } => {
                vec![("measurement", measurement)]
            }
        }
    }
}

/// An SEV-SNP TCB version (security version numbers of its components).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

/// The TCB verdict of DCAP collateral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcapTcb {
    /// Converged TCB status (`UpToDate`, `SWHardeningNeeded`, ...), as Intel spells it.
    pub status: String,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
    /// The PCK certificate's dynamic-platform flag (`None`: absent).
    pub dynamic_platform: Option<bool>,
    /// The PCK certificate's cached-keys flag.
    pub cached_keys: Option<bool>,
    /// The PCK certificate's SMT flag.
    pub smt_enabled: Option<bool>,
    /// Latest issue time of any piece of collateral (unix seconds).
    pub collateral_latest_issue: u64,
    /// Earliest expiry of any piece of collateral (unix seconds).
    pub collateral_earliest_expiry: u64,
}

/// Evidence whose signatures, chain and collateral have been verified at time
/// [`verified_at`](Self::verified_at): what the appraisal reads.
///
/// Made only by this crate's verifiers ([`crate::verify_dcap_quote`],
/// [`crate::verify_snp_report`], [`crate::insecure_simulated_evidence`]) or, for tests of the
/// appraisal rules, [`VerifiedEvidence::dangerous_unverified`]. The fields are public to read;
/// a caller that changes them only fools itself (the DCAP claims kept inside for the
/// `dcap-qvl` policy cross-check are not changeable).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VerifiedEvidence {
    /// The kind.
    pub kind: TeeKind,
    /// The measured identity.
    pub measurements: Measurements,
    /// The 64 bytes of report data the workload chose (the binding to nonce and key).
    #[serde(with = "hex64")]
    pub report_data: [u8; 64],
    /// The debug attribute (SGX `ATTRIBUTES.DEBUG`, TDX `TD_ATTRIBUTES.DEBUG`, SNP policy
    /// `DEBUG`): a debuggable TEE's memory is readable by the host.
    pub debug: bool,
    /// DCAP only: the TCB verdict and platform flags.
    pub tcb: Option<DcapTcb>,
    /// The time verification was done at (unix seconds).
    pub verified_at: u64,
    #[serde(skip)]
    pub(crate) dcap_claims: Option<Box<dcap_qvl::QuoteClaims>>,
}

impl VerifiedEvidence {
    /// Evidence taken as verified WITHOUT verifying anything: only for testing appraisal
    /// rules and for callers that verified by other means.
    pub fn dangerous_unverified(
        measurements: Measurements,
        report_data: [u8; 64],
        debug: bool,
        verified_at: u64,
    ) -> Self {
        VerifiedEvidence {
            kind: measurements.kind(),
            measurements,
            report_data,
            debug,
            tcb: None,
            verified_at,
            dcap_claims: None,
        }
    }

    pub(crate) fn new(
        measurements: Measurements,
        report_data: [u8; 64],
        debug: bool,
        verified_at: u64,
    ) -> Self {
        Self::dangerous_unverified(measurements, report_data, debug, verified_at)
    }
}

pub(crate) mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    #[allow(dead_code)]
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 64 bytes"))
    }
}
