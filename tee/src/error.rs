//! The crate's typed errors: one enum per stage (verifying evidence, reading a policy, the
//! nonce registry, attestation results, sealing). Appraisal failures are not errors but
//! [`crate::Reason`]s, all of them listed.

use thiserror::Error;

/// Why evidence could not be verified (signature, certificate chain, collateral, format).
/// Verification stops at the first failure; the appraisal that follows lists every reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// An input is larger than this crate reads.
    #[error("{what} is {len} bytes, more than the {max} bytes read")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An input could not be parsed.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which input.
        what: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// A piece of collateral (or a certificate) is past its `nextUpdate` / `notAfter` at the
    /// appraisal time.
    #[error("{what} expired at {expired_at} (unix seconds), before the appraisal time {at}")]
    CollateralExpired {
        /// Which piece.
        what: String,
        /// Its `nextUpdate` / `notAfter`.
        expired_at: u64,
        /// The appraisal time.
        at: u64,
    },
    /// A piece of collateral (or a certificate) is not yet valid at the appraisal time.
    #[error("{what} is valid only from {valid_from} (unix seconds), after the appraisal time {at}")]
    CollateralNotYetValid {
        /// Which piece.
        what: String,
        /// Its `issueDate` / `notBefore`.
        valid_from: u64,
        /// The appraisal time.
        at: u64,
    },
    /// `dcap-qvl` refused the quote: signature, PCK chain, CRLs, collateral signatures, QE
    /// identity, TCB level matching or a debug enclave.
    #[error("DCAP quote verification failed: {detail}")]
    QuoteRejected {
        /// `dcap-qvl`'s error chain.
        detail: String,
    },
    /// The SEV-SNP chain's root is none of the AMD roots this crate trusts.
    #[error("the ARK of the given chain is not a trusted AMD root")]
    UnknownRoot,
    /// The ARK → ASK → VCEK chain does not verify.
    #[error("SEV-SNP certificate chain does not verify: {detail}")]
    ChainInvalid {
        /// The verifier's words.
        detail: String,
    },
    /// The SEV-SNP report's signature does not verify under the VCEK.
    #[error("SEV-SNP report signature does not verify: {detail}")]
    SignatureInvalid {
        /// The verifier's words.
        detail: String,
    },
    /// The VCEK certifies another chip or TCB than the report claims.
    #[error("the VCEK does not match the report: {detail}")]
    VcekMismatch {
        /// Which field.
        detail: String,
    },
}

impl VerifyError {
    pub(crate) fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        VerifyError::Malformed {
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), Self> {
        if len > max {
            Err(VerifyError::TooLarge { what, len, max })
        } else {
            Ok(())
        }
    }
}

/// A policy or requirement that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// Not JSON of the expected shape (unknown fields are refused).
    #[error("policy: {0}")]
    Json(String),
    /// A field holds a bad value.
    #[error("policy field `{field}`: {detail}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        detail: String,
    },
}

/// The nonce registry's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonceError {
    /// The registry holds as many live nonces as it may.
    #[error("the nonce registry is full")]
    Full,
    /// Never issued here (or forgotten long after it expired).
    #[error("nonce unknown: never issued by this registry")]
    Unknown,
    /// Issued, but its lifetime is over.
    #[error("nonce expired")]
    Expired,
    /// Already redeemed once.
    #[error("nonce already used")]
    Reused,
}

/// An attestation result that cannot be made or trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResultError {
    /// Not a compact JWS of the expected shape, or too large.
    #[error("attestation result malformed: {0}")]
    Malformed(String),
    /// The signature does not verify under the given key.
    #[error("attestation result signature does not verify")]
    BadSignature,
    /// Past its `exp` (or before its `iat`) at the given time.
    #[error("attestation result not valid at {at}: iat {iat}, exp {exp}")]
    Expired {
        /// Issued at.
        iat: u64,
        /// Expires at.
        exp: u64,
        /// The time of the check.
        at: u64,
    },
    /// Its claims could not be encoded.
    #[error("attestation result claims: {0}")]
    Encode(String),
}

/// Sealing and opening datasets, wrapping keys.
#[derive(Debug, Error)]
pub enum SealError {
    /// Not a sealed file of this format (magic, version, header).
    #[error("not a sealed dataset: {0}")]
    Format(&'static str),
    /// A chunk does not authenticate: wrong key, wrong dataset or version, tampered,
    /// reordered or truncated.
    #[error("sealed data does not authenticate (wrong key or dataset, or tampered)")]
    Authentication,
    /// More chunks than the format counts.
    #[error("sealed data too large")]
    TooLarge,
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// HPKE failed (a bad public key).
    #[error("HPKE: {0}")]
    Hpke(String),
}
