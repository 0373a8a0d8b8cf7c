//! Sealing for delivery: the delivery key sealed to the buyer with HPKE (RFC 9180), and the
//! data package encrypted under the delivery key with AES-256-GCM.
//!
//! - **Delivery key**: 32 random bytes per licence, held by the node. At settlement it is
//!   sealed to the buyer's registered X25519 public key with HPKE in base mode, suite
//!   DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM (RFC 9180 §7), `info` =
//!   [`HPKE_INFO`], and the licence id as associated data, so that a sealed key opens only for
//!   that buyer and only as that licence's key. This is the settlement's `private_key`
//!   (table A.36: "the encrypted delivery private key").
//! - **Data package** (`/deliver`, table A.43 `data_file`): [`PACKAGE_MAGIC`], a 12-byte random
//!   nonce, then AES-256-GCM of the file under the delivery key, with associated data the
//!   licence id and the buyer's watermark token, so that a package cannot be passed off under
//!   another licence or buyer.
//!
//! Randomness comes from the caller as a 32-byte seed (expanded with ChaCha20), never read
//! inside.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_chacha_09::ChaCha20Rng;
use rand_core_09::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::TradeError;

/// HPKE `info` of a sealed delivery key.
pub const HPKE_INFO: &[u8] = b"tessera/T-AI-123.12/delivery-key/v1";
/// The suite, as written in a sealed key.
pub const HPKE_SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-128-GCM";
/// First bytes of a data package.
pub const PACKAGE_MAGIC: &[u8; 8] = b"TSDPKG01";
/// Largest data package this module encrypts or opens, in bytes (64 MiB).
pub const MAX_PACKAGE_BYTES: usize = 64 << 20;

type Kem = X25519HkdfSha256;

/// A buyer's X25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct BuyerPublicKey(<Kem as hpke::Kem>::PublicKey);

impl std::fmt::Debug for BuyerPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BuyerPublicKey({})", B64.encode(self.0.to_bytes()))
    }
}

impl BuyerPublicKey {
    /// Parses 32 bytes of base64.
    ///
    /// # Errors
    /// [`TradeError::InvalidField`] naming `public_key`.
    pub fn parse(text: &str) -> Result<Self, TradeError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| TradeError::invalid("public_key", "not base64"))?;
        if bytes.len() != 32 {
            return Err(TradeError::invalid(
                "public_key",
                "an X25519 public key is 32 bytes",
            ));
        }
        let key = <Kem as hpke::Kem>::PublicKey::from_bytes(&bytes)
            .map(BuyerPublicKey)
            .map_err(|_| TradeError::invalid("public_key", "not an X25519 public key"))?;
        // A low-order point (all zeros, for one) gives no shared secret: refuse it here rather
        // than at settlement.
        seal_delivery_key(&key, &DeliveryKey::from_bytes([0; 32]), "check", [7; 32]).map_err(
            |_| TradeError::invalid("public_key", "a low-order X25519 point, not a usable key"),
        )?;
        Ok(key)
    }

    /// Base64 text.
    pub fn to_text(&self) -> String {
        B64.encode(self.0.to_bytes())
    }
}

/// A buyer's X25519 private key (for the buyer's side: opening a sealed key).
pub struct BuyerPrivateKey(<Kem as hpke::Kem>::PrivateKey);

impl std::fmt::Debug for BuyerPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuyerPrivateKey(..)")
    }
}

impl BuyerPrivateKey {
    /// A key pair derived from 32 bytes of seed (RFC 9180 `DeriveKeyPair`).
    pub fn derive(seed: &[u8; 32]) -> (BuyerPrivateKey, BuyerPublicKey) {
        let (sk, pk) = Kem::derive_keypair(seed);
        (BuyerPrivateKey(sk), BuyerPublicKey(pk))
    }

    /// Parses 32 bytes of base64.
    ///
    /// # Errors
    /// [`TradeError::InvalidField`] naming `private_key`.
    pub fn parse(text: &str) -> Result<Self, TradeError> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| TradeError::invalid("private_key", "not base64"))?,
        );
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&bytes)
            .map(BuyerPrivateKey)
            .map_err(|_| TradeError::invalid("private_key", "not an X25519 private key"))
    }

    /// Base64 text (secret: for the buyer's own files only).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0.to_bytes()))
    }
}

/// A 32-byte delivery key.
#[derive(Clone)]
pub struct DeliveryKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DeliveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveryKey(..)")
    }
}

impl DeliveryKey {
    /// A fresh key from the caller's randomness.
    pub fn generate(seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        DeliveryKey(k)
    }

    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeliveryKey(Zeroizing::new(bytes))
    }

    /// The bytes (secret).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A delivery key sealed to a buyer (the settlement's `private_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKey {
    /// [`HPKE_SUITE`].
    pub suite: String,
    /// The HPKE encapsulated key, base64 (32 bytes).
    pub enc: String,
    /// The sealed delivery key, base64 (32 bytes + 16-byte tag).
    pub ciphertext: String,
}

/// Seals a delivery key to a buyer for one licence.
///
/// # Errors
/// [`TradeError::SealFailed`] (not expected with a valid public key).
pub fn seal_delivery_key(
    buyer: &BuyerPublicKey,
    key: &DeliveryKey,
    licenses_id: &str,
    seed: [u8; 32],
) -> Result<SealedKey, TradeError> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let (enc, ct) = hpke::single_shot_seal::<AesGcm128, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &buyer.0,
        HPKE_INFO,
        key.as_bytes(),
        licenses_id.as_bytes(),
        &mut rng,
    )
    .map_err(|e| TradeError::SealFailed(e.to_string()))?;
    Ok(SealedKey {
        suite: HPKE_SUITE.to_string(),
        enc: B64.encode(enc.to_bytes()),
        ciphertext: B64.encode(ct),
    })
}

/// Opens a sealed delivery key (the buyer's side).
///
/// # Errors
/// [`TradeError::OpenFailed`] for another key, licence, suite or altered bytes.
pub fn open_delivery_key(
    sealed: &SealedKey,
    private: &BuyerPrivateKey,
    licenses_id: &str,
) -> Result<DeliveryKey, TradeError> {
    let fail = || TradeError::OpenFailed("delivery key");
    if sealed.suite != HPKE_SUITE {
        return Err(fail());
    }
    let enc_bytes = B64.decode(&sealed.enc).map_err(|_| fail())?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc_bytes).map_err(|_| fail())?;
    let ct = B64.decode(&sealed.ciphertext).map_err(|_| fail())?;
    let pt = Zeroizing::new(
        hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
            &OpModeR::Base,
            &private.0,
            &enc,
            HPKE_INFO,
            &ct,
            licenses_id.as_bytes(),
        )
        .map_err(|_| fail())?,
    );
    let bytes: [u8; 32] = pt.as_slice().try_into().map_err(|_| fail())?;
    Ok(DeliveryKey::from_bytes(bytes))
}

fn package_aad(licenses_id: &str, watermark: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(licenses_id.len() + watermark.len() + 8);
    for f in [licenses_id, watermark] {
        aad.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_le_bytes());
        aad.extend_from_slice(f.as_bytes());
    }
    aad
}

/// Encrypts a data file for one licence and buyer.
///
/// # Errors
/// [`TradeError::InvalidField`] naming `data_file` above [`MAX_PACKAGE_BYTES`].
pub fn seal_package(
    key: &DeliveryKey,
    licenses_id: &str,
    watermark: &str,
    plaintext: &[u8],
    seed: [u8; 32],
) -> Result<Vec<u8>, TradeError> {
    if plaintext.len() > MAX_PACKAGE_BYTES {
        return Err(TradeError::invalid(
            "data_file",
            format!("larger than {MAX_PACKAGE_BYTES} bytes"),
        ));
    }
    let mut nonce = [0u8; 12];
    ChaCha20Rng::from_seed(seed).fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    let aad = package_aad(licenses_id, watermark);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|e| TradeError::SealFailed(e.to_string()))?;
    let mut out = Vec::with_capacity(PACKAGE_MAGIC.len() + nonce.len() + ct.len());
    out.extend_from_slice(PACKAGE_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a data package (the buyer's side).
///
/// # Errors
/// [`TradeError::OpenFailed`] for another key, licence or watermark, or altered bytes.
pub fn open_package(
    key: &DeliveryKey,
    licenses_id: &str,
    watermark: &str,
    package: &[u8],
) -> Result<Vec<u8>, TradeError> {
    let fail = || TradeError::OpenFailed("data package");
    if package.len() > MAX_PACKAGE_BYTES + 64 || package.len() < PACKAGE_MAGIC.len() + 12 + 16 {
        return Err(fail());
    }
    let (magic, rest) = package.split_at(PACKAGE_MAGIC.len());
    if magic != PACKAGE_MAGIC {
        return Err(fail());
    }
    let (nonce, ct) = rest.split_at(12);
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    let aad = package_aad(licenses_id, watermark);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| fail())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_for_its_buyer_and_licence() {
        let (sk, pk) = BuyerPrivateKey::derive(&[1; 32]);
        let (other_sk, _) = BuyerPrivateKey::derive(&[2; 32]);
        let key = DeliveryKey::generate([3; 32]);
        let sealed = seal_delivery_key(&pk, &key, "lic-1", [4; 32]).unwrap();
        let opened = open_delivery_key(&sealed, &sk, "lic-1").unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
        assert!(open_delivery_key(&sealed, &other_sk, "lic-1").is_err());
        assert!(open_delivery_key(&sealed, &sk, "lic-2").is_err());
        let mut bad = sealed.clone();
        let mut ct = B64.decode(&bad.ciphertext).unwrap();
        ct[0] ^= 1;
        bad.ciphertext = B64.encode(ct);
        assert!(open_delivery_key(&bad, &sk, "lic-1").is_err());
        // The key text round-trips and the public key parses back.
        assert_eq!(BuyerPublicKey::parse(&pk.to_text()).unwrap(), pk);
        let sk2 = BuyerPrivateKey::parse(&sk.to_text()).unwrap();
        assert!(open_delivery_key(&sealed, &sk2, "lic-1").is_ok());
        assert!(!format!("{key:?}{sk:?}").contains(&B64.encode(key.as_bytes())));
    }

    #[test]
    fn a_package_opens_only_under_its_licence_and_watermark() {
        let key = DeliveryKey::generate([5; 32]);
        let data = b"id,age\n1,30\n".to_vec();
        let pkg = seal_package(&key, "lic-1", "mark-bob", &data, [6; 32]).unwrap();
        assert_eq!(open_package(&key, "lic-1", "mark-bob", &pkg).unwrap(), data);
        assert!(open_package(&key, "lic-1", "mark-carol", &pkg).is_err());
        assert!(open_package(&key, "lic-2", "mark-bob", &pkg).is_err());
        assert!(open_package(&DeliveryKey::generate([7; 32]), "lic-1", "mark-bob", &pkg).is_err());
        for i in 0..pkg.len() {
            let mut p = pkg.clone();
            p[i] ^= 0x80;
            assert!(
                open_package(&key, "lic-1", "mark-bob", &p).is_err(),
                "byte {i}"
            );
        }
        assert!(open_package(&key, "lic-1", "mark-bob", &pkg[..10]).is_err());
        // An empty file is a valid package too.
        let empty = seal_package(&key, "lic-1", "m", b"", [8; 32]).unwrap();
        assert!(open_package(&key, "lic-1", "m", &empty).unwrap().is_empty());
    }

    #[test]
    fn malformed_public_keys_are_refused_by_field() {
        for bad in [
            "",
            "!!",
            "AAAA",
            &B64.encode([0u8; 31]),
            &B64.encode([0u8; 32]),
        ] {
            assert!(matches!(
                BuyerPublicKey::parse(bad),
                Err(TradeError::InvalidField {
                    field: "public_key",
                    ..
                })
            ));
        }
    }
}
