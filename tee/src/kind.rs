//! The kinds of trusted execution environment, with their one text form.

use serde::{Deserialize, Serialize};

/// A kind of TEE evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TeeKind {
    /// Intel SGX enclave, DCAP quote.
    #[serde(rename = "sgx")]
    Sgx,
    /// Intel TDX trust domain, DCAP quote.
    #[serde(rename = "tdx")]
    Tdx,
    /// AMD SEV-SNP guest, attestation report signed by the chip's VCEK.
    #[serde(rename = "sev-snp")]
    SevSnp,
    /// Development only, NO SECURITY: an unsigned JSON claim set anyone can write.
    #[serde(rename = "insecure-simulated-tee")]
    InsecureSimulated,
}

impl TeeKind {
    /// Every kind.
    pub const ALL: [TeeKind; 4] = [
        TeeKind::Sgx,
        TeeKind::Tdx,
        TeeKind::SevSnp,
        TeeKind::InsecureSimulated,
    ];

    /// The text form (`sgx`, `tdx`, `sev-snp`, `insecure-simulated-tee`).
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sgx => "sgx",
            TeeKind::Tdx => "tdx",
            TeeKind::SevSnp => "sev-snp",
            TeeKind::InsecureSimulated => "insecure-simulated-tee",
        }
    }

    /// Whether evidence of this kind comes from real hardware (everything but the simulated
    /// development mode).
    pub fn is_real_hardware(self) -> bool {
        !matches!(self, TeeKind::InsecureSimulated)
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Option<TeeKind> {
        TeeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
