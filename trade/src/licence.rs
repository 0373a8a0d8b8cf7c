//! The licence of T/AI 123.12 table A.37, signed with ed25519 by the licensor's key.
//!
//! A [`Licence`] carries the standard's fields (`licensesID`, `licensor`, `licensee`,
//! `registrationID`, `dataID`, `resource_url`, `digital_watermarking`, `digital_signature`,
//! `usage_restrictions`, `license_term`) and one extension, `licensor_public_key` (the
//! licensor's ed25519 key, base64), so that a licence file is self-describing.
//!
//! - `digital_watermarking` is the buyer-specific watermark token: the licensor's ed25519
//!   signature (base64) over [`WATERMARK_TAG`] and the length-prefixed licence id, licensee and
//!   dataset id. It marks everything delivered under the licence (the delivery package's
//!   associated data) and can be checked by anyone holding the licensor's public key.
//! - `digital_signature` is the licensor's ed25519 signature (base64) over [`LICENCE_TAG`]
//!   followed by every other field, each as a 4-byte little-endian length and its UTF-8
//!   bytes, in the order of table A.37 (`license_term` as `startDate` then `endDate`), the
//!   public key last. Changing any byte of any field makes [`Licence::verify`] fail.
//!
//! The standard says both "can be verified with the keys the licensor provided at delivery";
//! Tessera's node holds one ed25519 key per licensor party and signs on its behalf (the
//! standard leaves open who holds it; the choice is recorded in ARCHITECTURE.md).
//!
//! The term's dates are civil date-times `yyyy-mm-dd HH:MM:SS` in the operator's zone, as the
//! policy's `startDate` / `endDate` (table A.48). The standard's example spells the first
//! `startData`; it is accepted on input and written as `startDate`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use tessera_core::civil::parse_millis;

use crate::error::TradeError;

/// Domain tag of the licence signature.
pub const LICENCE_TAG: &[u8] = b"tessera/T-AI-123.12/licence/v1\0";
/// Domain tag of the watermark token.
pub const WATERMARK_TAG: &[u8] = b"tessera/T-AI-123.12/watermark/v1\0";

/// A licence's term (table A.37 `license_term`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenceTerm {
    /// First instant of use, `yyyy-mm-dd HH:MM:SS`.
    #[serde(rename = "startDate", alias = "startData")]
    pub start_date: String,
    /// Last instant of use, `yyyy-mm-dd HH:MM:SS`.
    #[serde(rename = "endDate")]
    pub end_date: String,
}

impl LicenceTerm {
    /// Both dates parse and the start is before the end.
    ///
    /// # Errors
    /// [`TradeError::InvalidField`] naming `license_term`.
    pub fn check(&self) -> Result<(i64, i64), TradeError> {
        let bad = |what: &str| TradeError::invalid("license_term", what.to_string());
        let s = parse_millis(&self.start_date)
            .map_err(|_| bad("startDate is not yyyy-mm-dd HH:MM:SS"))?;
        let e =
            parse_millis(&self.end_date).map_err(|_| bad("endDate is not yyyy-mm-dd HH:MM:SS"))?;
        if s >= e {
            return Err(bad("startDate is not before endDate"));
        }
        Ok((s, e))
    }
}

/// The licence record of table A.37.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// The licence's unique number.
    #[serde(rename = "licensesID")]
    pub licenses_id: String,
    /// The licensor (provider party).
    pub licensor: String,
    /// The licensee (buyer user).
    pub licensee: String,
    /// Registration number.
    #[serde(rename = "registrationID")]
    pub registration_id: String,
    /// The licensed dataset.
    #[serde(rename = "dataID")]
    pub data_id: String,
    /// Where the resource is obtained.
    pub resource_url: String,
    /// The buyer-specific watermark token (base64 ed25519 signature).
    pub digital_watermarking: String,
    /// The licensor's signature over every other field (base64 ed25519 signature).
    pub digital_signature: String,
    /// What the licensee may not do.
    pub usage_restrictions: String,
    /// Validity.
    pub license_term: LicenceTerm,
    /// Tessera's extension: the licensor's ed25519 public key, base64.
    pub licensor_public_key: String,
}

/// What a licence states, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceBody {
    /// The licence's unique number.
    pub licenses_id: String,
    /// Licensor party.
    pub licensor: String,
    /// Licensee user.
    pub licensee: String,
    /// Registration number.
    pub registration_id: String,
    /// Dataset id.
    pub data_id: String,
    /// Resource URL.
    pub resource_url: String,
    /// Usage restrictions.
    pub usage_restrictions: String,
    /// Term.
    pub license_term: LicenceTerm,
}

fn put(out: &mut Vec<u8>, field: &str) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field.as_bytes());
}

fn watermark_message(licenses_id: &str, licensee: &str, data_id: &str) -> Vec<u8> {
    let mut m = WATERMARK_TAG.to_vec();
    for f in [licenses_id, licensee, data_id] {
        put(&mut m, f);
    }
    m
}

/// The licensor's ed25519 public key from its base64 text.
///
/// # Errors
/// [`TradeError::InvalidField`] naming `licensor_public_key`.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, TradeError> {
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TradeError::invalid("licensor_public_key", "not 32 bytes of base64"))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| TradeError::invalid("licensor_public_key", "not an ed25519 public key"))
}

/// Base64 text of an ed25519 public key.
pub fn verifying_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

fn parse_signature(text: &str, field: &'static str) -> Result<Signature, TradeError> {
    let bytes: [u8; 64] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TradeError::invalid(field, "not 64 bytes of base64"))?;
    Ok(Signature::from_bytes(&bytes))
}

impl Licence {
    /// Signs a licence body with the licensor's key: the watermark token first, then the
    /// signature over every field.
    ///
    /// # Errors
    /// An invalid term.
    pub fn issue(body: LicenceBody, key: &SigningKey) -> Result<Licence, TradeError> {
        body.license_term.check()?;
        let watermark = key.sign(&watermark_message(
            &body.licenses_id,
            &body.licensee,
            &body.data_id,
        ));
        let mut licence = Licence {
            licenses_id: body.licenses_id,
            licensor: body.licensor,
            licensee: body.licensee,
            registration_id: body.registration_id,
            data_id: body.data_id,
            resource_url: body.resource_url,
            digital_watermarking: B64.encode(watermark.to_bytes()),
            digital_signature: String::new(),
            usage_restrictions: body.usage_restrictions,
            license_term: body.license_term,
            licensor_public_key: verifying_key_text(&key.verifying_key()),
        };
        licence.digital_signature = B64.encode(key.sign(&licence.signed_message()).to_bytes());
        Ok(licence)
    }

    /// The bytes `digital_signature` covers (see the module docs).
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = LICENCE_TAG.to_vec();
        for f in [
            &self.licenses_id,
            &self.licensor,
            &self.licensee,
            &self.registration_id,
            &self.data_id,
            &self.resource_url,
            &self.digital_watermarking,
            &self.usage_restrictions,
            &self.license_term.start_date,
            &self.license_term.end_date,
            &self.licensor_public_key,
        ] {
            put(&mut m, f);
        }
        m
    }

    /// Verifies the signature and the watermark under `key`, and that the licence names that
    /// key.
    ///
    /// # Errors
    /// [`TradeError::BadSignature`], [`TradeError::BadWatermark`], or a malformed field.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), TradeError> {
        if parse_verifying_key(&self.licensor_public_key)? != *key {
            return Err(TradeError::BadSignature);
        }
        let sig = parse_signature(&self.digital_signature, "digital_signature")?;
        key.verify(&self.signed_message(), &sig)
            .map_err(|_| TradeError::BadSignature)?;
        let mark = parse_signature(&self.digital_watermarking, "digital_watermarking")?;
        key.verify(
            &watermark_message(&self.licenses_id, &self.licensee, &self.data_id),
            &mark,
        )
        .map_err(|_| TradeError::BadWatermark)?;
        self.license_term.check()?;
        Ok(())
    }

    /// Verifies under the key the licence names itself (`licensor_public_key`). This proves
    /// only that the holder of that key signed it; compare the key with one obtained
    /// elsewhere (the operator's `/queryPublishedData`, the licensor) before trusting it.
    ///
    /// # Errors
    /// As [`Licence::verify`].
    pub fn verify_self_signed(&self) -> Result<VerifyingKey, TradeError> {
        let key = parse_verifying_key(&self.licensor_public_key)?;
        self.verify(&key)?;
        Ok(key)
    }

    /// Parses a licence document (JSON, unknown fields refused).
    ///
    /// # Errors
    /// [`TradeError::Malformed`].
    pub fn from_json(bytes: &[u8]) -> Result<Licence, TradeError> {
        serde_json::from_slice(bytes).map_err(|e| TradeError::Malformed {
            what: "licence",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> LicenceBody {
        LicenceBody {
            licenses_id: "lic-1".into(),
            licensor: "acme".into(),
            licensee: "bob".into(),
            registration_id: "reg-1".into(),
            data_id: "customers".into(),
            resource_url: "tessera://acme/customers".into(),
            usage_restrictions: "no redistribution".into(),
            license_term: LicenceTerm {
                start_date: "2026-12-01 00:00:00".into(),
                end_date: "2027-12-01 00:00:00".into(),
            },
        }
    }

    #[test]
    fn a_licence_verifies_with_the_public_key_alone_and_fails_after_any_byte_changes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let licence = Licence::issue(body(), &key).unwrap();
        let json = serde_json::to_vec(&licence).unwrap();
        let back = Licence::from_json(&json).unwrap();
        back.verify(&key.verifying_key()).unwrap();
        assert_eq!(back.verify_self_signed().unwrap(), key.verifying_key());
        // Every single-byte change of the document is refused: it no longer parses, or a
        // field changed and a check fails.
        let mut accepted = 0;
        for i in 0..json.len() {
            let mut j = json.clone();
            j[i] = j[i].wrapping_add(1);
            if let Ok(l) = Licence::from_json(&j)
                && l.verify(&key.verifying_key()).is_ok()
            {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 0, "a changed byte was accepted");
    }

    #[test]
    fn another_key_or_a_swapped_watermark_is_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let licence = Licence::issue(body(), &key).unwrap();
        assert_eq!(
            licence.verify(&other.verifying_key()),
            Err(TradeError::BadSignature)
        );
        // A licence re-signed by an impostor under its own key does not verify under the
        // licensor's.
        let forged = Licence::issue(body(), &other).unwrap();
        assert!(forged.verify(&key.verifying_key()).is_err());
        // Another buyer's watermark on this licence breaks the signature.
        let mut b = body();
        b.licensee = "carol".into();
        let carol = Licence::issue(b, &key).unwrap();
        let mut swapped = licence.clone();
        swapped.digital_watermarking = carol.digital_watermarking.clone();
        assert_eq!(
            swapped.verify(&key.verifying_key()),
            Err(TradeError::BadSignature)
        );
        assert_ne!(licence.digital_watermarking, carol.digital_watermarking);
    }

    #[test]
    fn the_standards_start_data_spelling_is_read_and_a_bad_term_refused() {
        let t: LicenceTerm = serde_json::from_str(
            r#"{"startData":"2026-01-01 00:00:00","endDate":"2026-02-01 00:00:00"}"#,
        )
        .unwrap();
        assert_eq!(t.start_date, "2026-01-01 00:00:00");
        let mut b = body();
        b.license_term.end_date = b.license_term.start_date.clone();
        assert!(matches!(
            Licence::issue(b, &SigningKey::from_bytes(&[1; 32])),
            Err(TradeError::InvalidField {
                field: "license_term",
                ..
            })
        ));
    }
}
