//! Attestation results: the appraisal, signed and expiring, in the shape of an IETF RATS EAR
//! (draft-fv-rats-ear: `eat_profile`, `iat`, `exp`, `ear.verifier-id`, one submodule with
//! `ear.status`) plus `tessera.*` claims.
//!
//! **Encoding.** A compact JWS (RFC 7515) with `alg` `EdDSA` (RFC 8037, Ed25519):
//! `base64url(header) "." base64url(claims JSON) "." base64url(signature)`, the signature
//! over the first two parts as ASCII, header exactly `{"alg":"EdDSA","typ":"JWT"}`. Any JWT
//! library can read it; [`verify_result`] checks it here.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::TeeKind;
use crate::appraisal::{Appraisal, BindingKind};
use crate::error::ResultError;
use crate::evidence::Measurements;

/// The EAR profile named in every result.
pub const EAT_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// The one submodule name.
pub const SUBMOD: &str = "tessera-tee";
/// Largest token read, in bytes.
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;
const HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// EAR trustworthiness tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarStatus {
    /// Accepted without caveats.
    Affirming,
    /// Accepted with caveats (see `tessera.warnings`).
    Warning,
    /// Refused (see `tessera.reasons`).
    Contraindicated,
}

/// Who made the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierId {
    /// Developer.
    pub developer: String,
    /// Build.
    pub build: String,
}

/// The appraisal of one TEE, as a submodule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarAppraisal {
    /// The tier.
    #[serde(rename = "ear.status")]
    pub status: EarStatus,
    /// The TEE kind.
    #[serde(rename = "tessera.tee-kind")]
    pub kind: TeeKind,
    /// `true` for the simulated development mode (no security).
    #[serde(rename = "tessera.insecure-simulated-tee")]
    pub insecure_simulated_tee: bool,
    /// The measurements.
    #[serde(rename = "tessera.measurements")]
    pub measurements: Measurements,
    /// The DCAP TCB status, if any.
    #[serde(
        rename = "tessera.tcb-status",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tcb_status: Option<String>,
    /// The worker's X25519 key (hex) the report binds.
    #[serde(
        rename = "tessera.worker-public-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub worker_public_key: Option<String>,
    /// The nonce (hex).
    #[serde(
        rename = "tessera.nonce",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub nonce: Option<String>,
    /// The binding established.
    #[serde(rename = "tessera.binding")]
    pub binding: BindingKind,
    /// The policy.
    #[serde(rename = "tessera.policy-id")]
    pub policy_id: String,
    /// Why refused (text of each reason).
    #[serde(rename = "tessera.reasons", default)]
    pub reasons: Vec<String>,
    /// Caveats of an acceptance.
    #[serde(rename = "tessera.warnings", default)]
    pub warnings: Vec<String>,
}

/// The claims of an attestation result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarClaims {
    /// [`EAT_PROFILE`].
    pub eat_profile: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds); invalid from then on.
    pub exp: u64,
    /// Who made it.
    #[serde(rename = "ear.verifier-id")]
    pub verifier_id: VerifierId,
    /// One submodule, [`SUBMOD`].
    pub submods: BTreeMap<String, EarAppraisal>,
}

impl EarClaims {
    /// Builds the claims of an appraisal, valid from its time for `ttl_secs`.
    pub fn of(appraisal: &Appraisal, ttl_secs: u64) -> EarClaims {
        let status = if !appraisal.accepted {
            EarStatus::Contraindicated
        } else if appraisal.warnings.is_empty() {
            EarStatus::Affirming
        } else {
            EarStatus::Warning
        };
        let sub = EarAppraisal {
            status,
            kind: appraisal.kind,
            insecure_simulated_tee: appraisal.insecure_simulated_tee,
            measurements: appraisal.measurements.clone(),
            tcb_status: appraisal.tcb.as_ref().map(|t| t.status.clone()),
            worker_public_key: appraisal.worker_key.clone(),
            nonce: appraisal.nonce.clone(),
            binding: appraisal.binding,
            policy_id: appraisal.policy_id.clone(),
            reasons: appraisal.reasons.iter().map(|r| r.to_string()).collect(),
            warnings: appraisal.warnings.clone(),
        };
        EarClaims {
            eat_profile: EAT_PROFILE.to_string(),
            iat: appraisal.at,
            exp: appraisal.at.saturating_add(ttl_secs),
            verifier_id: VerifierId {
                developer: "tessera".into(),
                build: concat!("tessera-tee ", env!("CARGO_PKG_VERSION")).into(),
            },
            submods: BTreeMap::from([(SUBMOD.to_string(), sub)]),
        }
    }

    /// The one appraisal.
    pub fn appraisal(&self) -> Option<&EarAppraisal> {
        self.submods.get(SUBMOD)
    }
}

/// The key that signs attestation results (Ed25519). `Debug` shows only the public key.
pub struct ResultSigner(SigningKey);

impl std::fmt::Debug for ResultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ResultSigner(public {})",
            hex::encode(self.0.verifying_key().as_bytes())
        )
    }
}

impl ResultSigner {
    /// From a 32-byte secret seed (the caller's CSPRNG or key store).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        ResultSigner(SigningKey::from_bytes(&seed))
    }

    /// The public key results verify under.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs claims into a compact JWS.
    ///
    /// # Errors
    /// [`ResultError::Encode`] if the claims cannot be encoded.
    pub fn sign(&self, claims: &EarClaims) -> Result<String, ResultError> {
        let payload = serde_json::to_vec(claims).map_err(|e| ResultError::Encode(e.to_string()))?;
        let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let sig = self.0.sign(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", B64.encode(sig.to_bytes())))
    }
}

/// Verifies a result's signature under `key` and that `iat <= at < exp`; returns its claims.
///
/// # Errors
/// [`ResultError`].
pub fn verify_result(token: &str, key: &VerifyingKey, at: u64) -> Result<EarClaims, ResultError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ResultError::Malformed("too large".into()));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ResultError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let header = B64
        .decode(h)
        .map_err(|_| ResultError::Malformed("header not base64url".into()))?;
    if header != HEADER.as_bytes() {
        return Err(ResultError::Malformed("unexpected header".into()));
    }
    let sig_bytes: [u8; 64] = B64
        .decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ResultError::Malformed("signature not 64 bytes of base64url".into()))?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    key.verify_strict(signing_input.as_bytes(), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| ResultError::BadSignature)?;
    let payload = B64
        .decode(p)
        .map_err(|_| ResultError::Malformed("claims not base64url".into()))?;
    let claims: EarClaims =
        serde_json::from_slice(&payload).map_err(|e| ResultError::Malformed(e.to_string()))?;
    if at < claims.iat || at >= claims.exp {
        return Err(ResultError::Expired {
            iat: claims.iat,
            exp: claims.exp,
            at,
        });
    }
    Ok(claims)
}
