//! The delivery proof of `/deliver` (T/AI 123.12 table A.43 `delivery_proof`: "proves that
//! the data was delivered"), signed with the licensor's ed25519 key.
//!
//! The signature covers [`DELIVERY_PROOF_TAG`] followed by every other field, each as a 4-byte
//! little-endian length and its UTF-8 bytes, in declaration order (`bytes` in decimal), the
//! public key last, so anyone holding the licensor's public key can check a proof without
//! re-encoding JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::TradeError;
use crate::licence::{parse_verifying_key, verifying_key_text};

/// Domain tag of a delivery proof's signature.
pub const DELIVERY_PROOF_TAG: &[u8] = b"tessera/T-AI-123.12/delivery-proof/v1\0";

/// A signed delivery proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryProof {
    /// The delivery's id.
    pub delivery_id: String,
    /// The licence it was delivered under.
    #[serde(rename = "licensesID")]
    pub licenses_id: String,
    /// The confirmation.
    #[serde(rename = "confirmID")]
    pub confirm_id: String,
    /// The dataset.
    #[serde(rename = "dataID")]
    pub data_id: String,
    /// Who received it.
    pub licensee: String,
    /// SHA-256 (hex) of the data file.
    pub sha256_data: String,
    /// SHA-256 (hex) of the encrypted package handed out.
    pub sha256_package: String,
    /// Package size, bytes.
    pub bytes: u64,
    /// When, RFC 3339 in the operator's zone.
    pub delivered_at: String,
    /// The licensor's ed25519 public key, base64.
    pub licensor_public_key: String,
    /// The licensor's signature, base64.
    pub signature: String,
}

fn put(out: &mut Vec<u8>, field: &str) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field.as_bytes());
}

impl DeliveryProof {
    /// The bytes the signature covers.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = DELIVERY_PROOF_TAG.to_vec();
        let bytes = self.bytes.to_string();
        for f in [
            &self.delivery_id,
            &self.licenses_id,
            &self.confirm_id,
            &self.data_id,
            &self.licensee,
            &self.sha256_data,
            &self.sha256_package,
            &bytes,
            &self.delivered_at,
            &self.licensor_public_key,
        ] {
            put(&mut m, f);
        }
        m
    }

    /// Signs the proof (sets `licensor_public_key` and `signature`).
    pub fn sign(mut self, key: &SigningKey) -> Self {
        self.licensor_public_key = verifying_key_text(&key.verifying_key());
        self.signature = B64.encode(key.sign(&self.signed_message()).to_bytes());
        self
    }

    /// Verifies the proof under `key` (which it must name).
    ///
    /// # Errors
    /// [`TradeError::BadSignature`] or a malformed field.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), TradeError> {
        if parse_verifying_key(&self.licensor_public_key)? != *key {
            return Err(TradeError::BadSignature);
        }
        let bytes: [u8; 64] = B64
            .decode(self.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| TradeError::invalid("signature", "not 64 bytes of base64"))?;
        key.verify(&self.signed_message(), &Signature::from_bytes(&bytes))
            .map_err(|_| TradeError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_and_any_changed_field_fails() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let p = DeliveryProof {
            delivery_id: "dlv-1".into(),
            licenses_id: "lics-1".into(),
            confirm_id: "conf-1".into(),
            data_id: "d".into(),
            licensee: "u1".into(),
            sha256_data: "aa".into(),
            sha256_package: "bb".into(),
            bytes: 42,
            delivered_at: "2026-12-01T08:00:00+08:00".into(),
            licensor_public_key: String::new(),
            signature: String::new(),
        }
        .sign(&key);
        p.verify(&key.verifying_key()).unwrap();
        let mut q = p.clone();
        q.bytes = 43;
        assert_eq!(
            q.verify(&key.verifying_key()),
            Err(TradeError::BadSignature)
        );
        let mut q = p.clone();
        q.licensee = "u2".into();
        assert_eq!(
            q.verify(&key.verifying_key()),
            Err(TradeError::BadSignature)
        );
        assert!(
            p.verify(&SigningKey::from_bytes(&[4; 32]).verifying_key())
                .is_err()
        );
    }
}
