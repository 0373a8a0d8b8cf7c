//! The operator's small certificate authority: the trust root for TLS between the operator and
//! its workers and between workers on their peer links ("Who is calling", item 4).
//!
//! The operator generates one [`CertificateAuthority`] (ECDSA P-256, `cA` with path length 0,
//! key usages `keyCertSign` and `cRLSign`, valid ten years) and keeps its key. It issues its own
//! TLS server certificate with [`CertificateAuthority::issue_server`]. A worker makes a key
//! pair and a certificate signing request with [`worker_key_and_csr`], the operator signs it
//! with [`CertificateAuthority::sign_worker`] for the worker's authenticated
//! [`PeerIdentity`], and peers read that identity back from a presented certificate with
//! [`peer_identity_of`].
//!
//! # Threat model
//!
//! The operator is the only trust root: whoever holds the CA key can mint any identity, so the
//! key never leaves the operator and is never printed (`Debug` omits it). A worker's
//! certificate names exactly its party and worker id — the CA ignores every name the CSR asks
//! for — so a worker cannot claim another party's or worker's identity. Worker certificates
//! are short-lived (at most [`MAX_WORKER_VALIDITY_SECS`]), so a lost worker key stops working
//! soon without revocation lists.
//!
//! # Names in a worker certificate
//!
//! A worker certificate carries exactly two subject alternative names (RFC 5280 §4.2.1.6):
//!
//! * a URI, `tessera://party/<party>/worker/<worker_id>` ([`PeerIdentity::uri`]), readable by
//!   auditors; each id is percent-encoded, leaving only ASCII letters, digits, `-`, `_` and
//!   `.` as they are (so `@` becomes `%40`);
//! * a DNS name, so that ordinary TLS name checks work ([`PeerIdentity::dns_name`]):
//!   `<h>.peer.tessera.invalid`, where `<h>` is the lowercase hex of the first 16 bytes of
//!
//!   ```text
//!   SHA-256( "tessera-peer-dns-v1" || u64be(len(party)) || party
//!                                  || u64be(len(worker_id)) || worker_id )
//!   ```
//!
//!   with lengths in bytes of the UTF-8 strings. The length prefixes make the encoded input
//!   injective, so two different `(party, worker_id)` pairs collide only if truncated SHA-256
//!   does (2^64 work by the birthday bound). The label is 32 characters of `[0-9a-f]`, a valid
//!   DNS label whatever the ids contain; `.invalid` (RFC 6761) never resolves.
//!
//! [`peer_identity_of`] accepts a certificate only if both names are present, exactly once,
//! and agree.
//!
//! # Sources
//!
//! * RFC 5280 (X.509 profile: subject alternative names §4.2.1.6, basic constraints §4.2.1.9,
//!   key usage §4.2.1.3, extended key usage §4.2.1.12, serial numbers §4.1.2.2);
//! * RFC 2986 (PKCS #10 certification requests, the CSR);
//! * RFC 3986 (URI syntax, percent-encoding); RFC 6761 (the `.invalid` top-level domain).
//!
//! Certificates are built with `rcgen` (ring backend) and read with `x509-parser`.

use std::fmt;
use std::net::IpAddr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

#[cfg(test)]
mod tests;

/// How long a CA made by [`CertificateAuthority::generate`] is valid: 3653 days (ten years,
/// counting up to three leap days).
pub const CA_VALIDITY_SECS: u64 = 3653 * 24 * 3600;

/// The longest validity [`CertificateAuthority::sign_worker`] grants: 31 days. Worker
/// certificates are meant to be short-lived and renewed.
pub const MAX_WORKER_VALIDITY_SECS: u64 = 31 * 24 * 3600;

/// The longest a party or worker id may be, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The DNS suffix of every peer name.
pub const PEER_DNS_SUFFIX: &str = ".peer.tessera.invalid";

const URI_PREFIX: &str = "tessera://party/";
const URI_WORKER: &str = "/worker/";
const DNS_DOMAIN_TAG: &[u8] = b"tessera-peer-dns-v1";

/// Percent-encode everything but ASCII letters, digits, `-`, `_` and `.`.
const ID_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Earliest and latest instants a certificate may name (RFC 5280 times, 4-digit years).
const EARLIEST: i64 = -631_152_000; // 1950-01-01T00:00:00Z
const LATEST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

/// What went wrong. Messages name the input at fault; attacker-supplied text is quoted and
/// truncated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Text that should be PEM is not, or holds the wrong kind of block.
    #[error("{what} is not valid PEM: {reason}")]
    BadPem {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Bytes that should be a DER structure are not.
    #[error("{what} is not valid DER: {reason}")]
    BadDer {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The CA's private key cannot be read or is not ECDSA P-256.
    #[error("CA key: {0}")]
    BadCaKey(String),
    /// The CA certificate is not a usable CA certificate for the given key.
    #[error("CA certificate: {0}")]
    BadCaCertificate(String),
    /// The CSR's self-signature does not verify (tampered or forged request).
    #[error("the CSR's signature does not verify: {0}")]
    CsrSignatureInvalid(String),
    /// The CSR's public key is of a kind this CA does not certify.
    #[error("the CSR's key is {0}; only ECDSA P-256 and Ed25519 keys are accepted")]
    UnsupportedKey(String),
    /// A server name is neither an IP address nor a valid DNS name.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The offending name (truncated).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// No server names were given.
    #[error("a server certificate needs at least one name")]
    NoServerNames,
    /// A party or worker id is not acceptable.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidIdentity {
        /// `"party"` or `"worker id"`.
        field: &'static str,
        /// The offending value (truncated).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The requested validity window cannot be issued.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// A presented certificate's names do not form a peer identity.
    #[error("certificate names: {0}")]
    BadPeerNames(String),
    /// Key generation or signing failed inside the crypto library.
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

fn gen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generation(e.to_string())
}

/// Quote at most 80 characters of untrusted text in an error.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A worker's identity as the CA certifies it: its party and its worker id.
///
/// Valid ids hold 1 to [`MAX_ID_LEN`] ASCII letters, digits, `-`, `_`, `.` or `@`, and are
/// not `.` or `..` (which would be dot-segments in the URI).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerIdentity {
    /// The party (organisation) the worker belongs to.
    pub party: String,
    /// The worker's id within its party.
    pub worker_id: String,
}

impl PeerIdentity {
    /// A validated identity.
    pub fn new(party: impl Into<String>, worker_id: impl Into<String>) -> Result<Self, PkiError> {
        let id = PeerIdentity {
            party: party.into(),
            worker_id: worker_id.into(),
        };
        id.validate()?;
        Ok(id)
    }

    /// Check both ids against the allowed alphabet and length.
    pub fn validate(&self) -> Result<(), PkiError> {
        validate_id("party", &self.party)?;
        validate_id("worker id", &self.worker_id)
    }

    /// The DNS name certified for this identity: `<32 hex>.peer.tessera.invalid`, derived as
    /// described in the crate documentation. Defined (and a valid DNS name) for any strings.
    pub fn dns_name(&self) -> String {
        let mut h = Sha256::new();
        h.update(DNS_DOMAIN_TAG);
        for part in [&self.party, &self.worker_id] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        format!("{}{PEER_DNS_SUFFIX}", hex::encode(&digest[..16]))
    }

    /// The URI certified for this identity:
    /// `tessera://party/<percent-encoded party>/worker/<percent-encoded worker_id>`.
    pub fn uri(&self) -> String {
        format!(
            "{URI_PREFIX}{}{URI_WORKER}{}",
            utf8_percent_encode(&self.party, ID_ENCODE),
            utf8_percent_encode(&self.worker_id, ID_ENCODE)
        )
    }

    /// Parse a URI made by [`PeerIdentity::uri`]. Only the canonical form is accepted (the
    /// identity's `uri()` must give back exactly the input), so one identity has one URI.
    pub fn from_uri(uri: &str) -> Result<Self, PkiError> {
        let bad = |why: &str| PkiError::BadPeerNames(format!("URI {:?} {why}", shown(uri)));
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad("does not start with tessera://party/"))?;
        let (party, worker) = rest
            .split_once(URI_WORKER)
            .ok_or_else(|| bad("has no /worker/ segment"))?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad("is not percent-encoded UTF-8"))
        };
        let id = PeerIdentity {
            party: decode(party)?,
            worker_id: decode(worker)?,
        };
        id.validate()?;
        if id.uri() != uri {
            return Err(bad("is not in canonical form"));
        }
        Ok(id)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

fn validate_id(field: &'static str, value: &str) -> Result<(), PkiError> {
    let err = |reason| PkiError::InvalidIdentity {
        field,
        value: shown(value),
        reason,
    };
    if value.is_empty() {
        return Err(err("is empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(err("is longer than 64 bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(err(
            "may hold only ASCII letters, digits, '-', '_', '.' and '@'",
        ));
    }
    if value == "." || value == ".." {
        return Err(err("may not be '.' or '..'"));
    }
    Ok(())
}

/// The operator's certificate authority: its ECDSA P-256 key pair and self-signed certificate.
///
/// `Debug` shows the certificate's end of validity, never the key.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// The CA certificate's notAfter, Unix seconds.
    not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generate a new CA: a fresh ECDSA P-256 key and a self-signed certificate with subject
    /// `CN=<common_name>`, `cA` true with path length 0, key usages `keyCertSign` and
    /// `cRLSign`, valid from `now` (Unix seconds) for [`CA_VALIDITY_SECS`].
    pub fn generate(common_name: &str, now: i64) -> Result<Self, PkiError> {
        if common_name.is_empty() || common_name.chars().count() > 64 {
            return Err(PkiError::BadCaCertificate(
                "the common name must hold 1 to 64 characters".into(),
            ));
        }
        let (not_before, not_after) = window(now, CA_VALIDITY_SECS)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            not_after: not_after.unix_timestamp(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM) and its private key (PKCS #8 PEM). Store the key secretly.
    pub fn to_pem(&self) -> (String, Zeroizing<String>) {
        (
            self.cert_pem.clone(),
            Zeroizing::new(self.issuer.key().serialize_pem()),
        )
    }

    /// Load a CA written by [`CertificateAuthority::to_pem`]. Checks that the key is ECDSA
    /// P-256, that the certificate is a CA certificate, and that it certifies this key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::BadCaKey(format!("cannot read the private key: {e}")))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadCaKey("the key is not ECDSA P-256".into()));
        }
        let der = pem_block(cert_pem, "CERTIFICATE", "CA certificate")?;
        let cert = parse_cert(&der, "CA certificate")?;
        if !cert.is_ca() {
            return Err(PkiError::BadCaCertificate(
                "basicConstraints does not say cA".into(),
            ));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::BadCaCertificate(
                "it does not certify the given key".into(),
            ));
        }
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| PkiError::BadCaCertificate(e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: cert_pem.to_owned(),
            not_after,
        })
    }

    /// The CA certificate, PEM: what operator and workers trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a TLS server certificate, with a key generated here (ECDSA P-256), for `names`:
    /// each name that parses as an IP address becomes an IP address SAN, any other must be a
    /// DNS name (letters, digits, hyphens; no wildcards) and becomes a DNS SAN. Extended key
    /// usage `serverAuth`. Valid from `now` for `validity_secs`, not beyond the CA.
    ///
    /// Returns the certificate PEM and the private key (PKCS #8 PEM).
    pub fn issue_server(
        &self,
        names: &[String],
        now: i64,
        validity_secs: u64,
    ) -> Result<(String, Zeroizing<String>), PkiError> {
        if names.is_empty() {
            return Err(PkiError::NoServerNames);
        }
        let sans = names
            .iter()
            .map(|n| server_san(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = self.leaf_params(now, validity_secs)?;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if names[0].len() <= 64 {
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }

    /// Sign a worker's CSR (PEM, RFC 2986) for `identity`.
    ///
    /// The CSR proves possession of its key (its signature must verify) and supplies the public
    /// key, which must be ECDSA P-256 or Ed25519. **Everything else in it is ignored**: the
    /// certificate's names are exactly the identity's DNS name ([`PeerIdentity::dns_name`])
    /// and URI ([`PeerIdentity::uri`]). Extended key usages `serverAuth` and `clientAuth` (a
    /// worker is both on its peer links). Valid from `now` for `validity_secs`, at most
    /// [`MAX_WORKER_VALIDITY_SECS`]. Returns the certificate PEM.
    pub fn sign_worker(
        &self,
        csr_pem: &str,
        identity: &PeerIdentity,
        now: i64,
        validity_secs: u64,
    ) -> Result<String, PkiError> {
        identity.validate()?;
        if validity_secs > MAX_WORKER_VALIDITY_SECS {
            return Err(PkiError::InvalidValidity(format!(
                "a worker certificate may be valid at most {MAX_WORKER_VALIDITY_SECS} seconds, \
                 {validity_secs} were asked"
            )));
        }
        let der = pem_block(csr_pem, "CERTIFICATE REQUEST", "CSR")?;
        let key = csr_public_key(&der)?;
        let mut params = self.leaf_params(now, validity_secs)?;
        let dns = identity.dns_name();
        params
            .distinguished_name
            .push(DnType::CommonName, dns.as_str());
        params.subject_alt_names = vec![
            SanType::DnsName(dns.try_into().map_err(gen_err)?),
            SanType::URI(identity.uri().try_into().map_err(gen_err)?),
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(cert.pem())
    }

    /// Parameters shared by every leaf: empty subject, random serial, `digitalSignature`, not a
    /// CA, authority key identifier, the validity window (within the CA's).
    fn leaf_params(&self, now: i64, validity_secs: u64) -> Result<CertificateParams, PkiError> {
        let (not_before, not_after) = window(now, validity_secs)?;
        if not_after.unix_timestamp() > self.not_after {
            return Err(PkiError::InvalidValidity(
                "the certificate would outlive the CA".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        Ok(params)
    }
}

/// Generate what a worker needs to ask for a certificate: a fresh ECDSA P-256 key pair
/// (PKCS #8 PEM, keep it secret) and a CSR (PEM) signed with it. The CSR names no subject
/// alternative names: the CA decides the names.
pub fn worker_key_and_csr() -> Result<(Zeroizing<String>, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "tessera worker");
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    let csr_pem = csr.pem().map_err(gen_err)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr_pem))
}

/// The identity a presented certificate (DER) names: parsed from its URI SAN, after checking
/// that the certificate has exactly one URI SAN, exactly one DNS SAN, no other SANs, and that
/// the DNS SAN equals the identity's [`PeerIdentity::dns_name`].
///
/// This does **not** check the certificate's signature, chain, validity period or key usages:
/// the TLS handshake (verifying against the CA certificate) must do that first. Call this only
/// on a certificate TLS has already accepted.
pub fn peer_identity_of(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let cert = parse_cert(cert_der, "peer certificate")?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadPeerNames(format!("unreadable subjectAltName: {e}")))?
        .ok_or_else(|| PkiError::BadPeerNames("no subjectAltName extension".into()))?;
    let mut dns = None;
    let mut uri = None;
    for name in &san.value.general_names {
        let (slot, value) = match name {
            GeneralName::DNSName(s) => (&mut dns, *s),
            GeneralName::URI(s) => (&mut uri, *s),
            other => {
                return Err(PkiError::BadPeerNames(format!(
                    "unexpected subject alternative name {}",
                    shown(&other.to_string())
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(PkiError::BadPeerNames(
                "more than one DNS or URI subject alternative name".into(),
            ));
        }
    }
    let uri =
        uri.ok_or_else(|| PkiError::BadPeerNames("no URI subject alternative name".into()))?;
    let dns =
        dns.ok_or_else(|| PkiError::BadPeerNames("no DNS subject alternative name".into()))?;
    let identity = PeerIdentity::from_uri(uri)?;
    let expected = identity.dns_name();
    if dns != expected {
        return Err(PkiError::BadPeerNames(format!(
            "DNS name {:?} does not match URI {:?} (expected {expected:?})",
            shown(dns),
            shown(uri)
        )));
    }
    Ok(identity)
}

/// A CSR's public key, after its signature verified.
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Parse a CSR (DER), verify its self-signature, and return its key if ECDSA P-256 or Ed25519.
fn csr_public_key(der: &[u8]) -> Result<CsrKey, PkiError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| PkiError::BadDer {
        what: "CSR",
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::BadDer {
            what: "CSR",
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    // x509-parser does not check the tags outside the signed part; a CSR must be exact DER.
    if !is_csr_outline(der) {
        return Err(PkiError::BadDer {
            what: "CSR",
            reason: "not a SEQUENCE of request info, algorithm identifier and BIT STRING".into(),
        });
    }
    csr.verify_signature()
        .map_err(|e| PkiError::CsrSignatureInvalid(e.to_string()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let raw = spki.subject_public_key.data.to_vec();
    let alg_oid = &spki.algorithm.algorithm;
    let alg: &'static SignatureAlgorithm = if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => {
                if raw.len() != 65 || raw[0] != 0x04 {
                    return Err(PkiError::UnsupportedKey(
                        "a P-256 key not in uncompressed form".into(),
                    ));
                }
                &PKCS_ECDSA_P256_SHA256
            }
            Some(c) => return Err(PkiError::UnsupportedKey(format!("ECDSA on curve {c}"))),
            None => {
                return Err(PkiError::UnsupportedKey(
                    "ECDSA without a named curve".into(),
                ));
            }
        }
    } else if *alg_oid == OID_SIG_ED25519 {
        if raw.len() != 32 {
            return Err(PkiError::UnsupportedKey(
                "an Ed25519 key of the wrong length".into(),
            ));
        }
        &PKCS_ED25519
    } else {
        return Err(PkiError::UnsupportedKey(format!("of algorithm {alg_oid}")));
    };
    Ok(CsrKey { raw, alg })
}

/// Whether `der` is a universal SEQUENCE { SEQUENCE, SEQUENCE { OID, .. }, BIT STRING } with
/// nothing after it: the outline of a PKCS #10 `CertificationRequest` (RFC 2986 §4.2).
fn is_csr_outline(der: &[u8]) -> bool {
    use x509_parser::der_parser::ber::BerObjectContent as C;
    let Ok((rest, obj)) = x509_parser::der_parser::parse_der(der) else {
        return false;
    };
    let C::Sequence(parts) = &obj.content else {
        return false;
    };
    rest.is_empty()
        && matches!(parts.as_slice(), [info, alg, sig]
            if matches!(info.content, C::Sequence(_))
                && matches!(&alg.content, C::Sequence(a)
                    if matches!(a.first().map(|o| &o.content), Some(C::OID(_))))
                // A signature is whole bytes: no unused bits (a flipped count is not ignored).
                && matches!(sig.content, C::BitString(0, ..)))
}

/// The DER contents of the one PEM block in `text`, which must carry `label`.
fn pem_block(text: &str, label: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| PkiError::BadPem {
            what,
            reason: e.to_string(),
        })?;
    if pem.label != label {
        return Err(PkiError::BadPem {
            what,
            reason: format!("expected a {label} block, found {:?}", shown(&pem.label)),
        });
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(PkiError::BadPem {
            what,
            reason: "more than one PEM block or trailing text".into(),
        });
    }
    Ok(pem.contents)
}

/// Parse a whole DER certificate (no trailing bytes).
fn parse_cert<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadDer {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::BadDer {
            what,
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(cert)
}

/// `[now, now + validity_secs]` as certificate times, both within years 1950..=9999.
fn window(now: i64, validity_secs: u64) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if validity_secs == 0 {
        return Err(PkiError::InvalidValidity(
            "the validity must be positive".into(),
        ));
    }
    let end = i64::try_from(validity_secs)
        .ok()
        .and_then(|v| now.checked_add(v));
    let end = match end {
        Some(end) if (EARLIEST..=LATEST).contains(&now) && end <= LATEST => end,
        _ => {
            return Err(PkiError::InvalidValidity(format!(
                "from {now} for {validity_secs} seconds is outside 1950-01-01..9999-12-31"
            )));
        }
    };
    let at = |t| {
        OffsetDateTime::from_unix_timestamp(t).map_err(|e| PkiError::InvalidValidity(e.to_string()))
    };
    Ok((at(now)?, at(end)?))
}

/// A random positive 16-byte serial number (RFC 5280 §4.1.2.2: unique per CA, ≤ 20 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never zero, never negative, always 16 bytes
    SerialNumber::from_slice(&bytes)
}

/// A server name as a SAN: an IP address literal, else a validated DNS name.
fn server_san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let err = |reason| PkiError::InvalidServerName {
        name: shown(name),
        reason,
    };
    let host = name.strip_suffix('.').unwrap_or(name);
    if host.is_empty() || host.len() > 253 {
        return Err(err("a DNS name must hold 1 to 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(err("every DNS label must hold 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(err(
                "a DNS name may hold only ASCII letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a DNS label may not start or end with '-'"));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err(
            "the last DNS label may not be all digits (a malformed IP address?)",
        ));
    }
    host.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(gen_err)
}
