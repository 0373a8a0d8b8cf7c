//! The key broker: holds dataset keys and releases one, wrapped with HPKE to the enclave's
//! own key, only to a worker whose fresh attestation result satisfies the licence's hardware
//! requirement (`envHard`) and whose job ticket is valid. Every decision, release or refusal,
//! comes with an [`AuditRecord`] for the audit chain.
//!
//! **Requirement syntax** (entries of a licence scene's `envHard`; other entries, such as
//! `x86`, are hardware classes the scheduler matches and are ignored here):
//!
//! ```text
//! tee:sgx | tee:tdx | tee:sev-snp | tee:insecure-simulated-tee
//! tee:<kind>:<field>=<hex>     field: mrenclave, mrsigner (sgx); mrtd, rtmr0..3 (tdx);
//!                              measurement (sev-snp, insecure-simulated-tee)
//! ```
//!
//! A kind named without a measurement accepts any the appraisal policy accepted; with one or
//! more, the attested value of each named field must be among them. A requirement that does
//! not name `tee:insecure-simulated-tee` asks for real hardware and refuses the simulated
//! mode. A requirement naming no TEE at all releases nothing.
//!
//! **Release** (HPKE, RFC 9180, base mode): DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
//! AES-256-GCM to the worker key bound in the attestation result, `info`
//! [`RELEASE_INFO`], associated data the dataset id and job id (length-prefixed).
//!
//! **At rest** keys are wrapped under a master key with AES-256-GCM (random nonce, the
//! dataset id as associated data); persistence is the caller's.

use std::collections::{BTreeMap, HashMap};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::VerifyingKey;
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use rand_chacha_09::ChaCha20Rng;
use rand_core_09::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::TeeKind;
use crate::appraisal::BindingKind;
use crate::ear::{EarClaims, EarStatus, verify_result};
use crate::error::{PolicyError, ResultError, SealError};
use crate::seal::DatasetKey;

/// HPKE `info` of a released key.
pub const RELEASE_INFO: &[u8] = b"tessera-tee/dataset-key/v1";
/// The HPKE suite, as written in a released key.
pub const RELEASE_SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";
/// Most dataset keys one broker holds.
pub const MAX_KEYS: usize = 100_000;
/// Most `tee:` entries in one requirement.
pub const MAX_REQUIREMENT_ENTRIES: usize = 256;

type Kem = X25519HkdfSha256;

/// The licence's TEE requirement, read from its `envHard` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardwareRequirement {
    /// Kind → (field, accepted values); an empty map: any measurement of that kind.
    pub kinds: BTreeMap<TeeKind, BTreeMap<String, Vec<String>>>,
}

impl HardwareRequirement {
    /// Reads the `tee:` entries of `envHard` (see the module docs).
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] for a `tee:` entry that does not parse.
    pub fn from_env_hard(entries: &[String]) -> Result<Self, PolicyError> {
        let bad = |e: &str, d: &str| PolicyError::Invalid {
            field: format!("envHard {e:?}"),
            detail: d.to_string(),
        };
        let mut req = HardwareRequirement::default();
        let tee: Vec<&String> = entries.iter().filter(|e| e.starts_with("tee:")).collect();
        if tee.len() > MAX_REQUIREMENT_ENTRIES {
            return Err(bad("tee:", "too many entries"));
        }
        for e in tee {
            let rest = &e["tee:".len()..];
            let (kind, m) = match rest.split_once(':') {
                Some((k, m)) => (k, Some(m)),
                None => (rest, None),
            };
            let kind = TeeKind::parse(kind).ok_or_else(|| bad(e, "unknown TEE kind"))?;
            let fields = req.kinds.entry(kind).or_default();
            if let Some(m) = m {
                let (field, value) = m
                    .split_once('=')
                    .ok_or_else(|| bad(e, "expected <field>=<value>"))?;
                let allowed: &[&str] = match kind {
                    TeeKind::Sgx => &["mrenclave", "mrsigner"],
                    TeeKind::Tdx => &["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"],
                    TeeKind::SevSnp | TeeKind::InsecureSimulated => &["measurement"],
                };
                if !allowed.contains(&field) {
                    return Err(bad(e, "no such measurement for this kind"));
                }
                if value.trim().is_empty() {
                    return Err(bad(e, "an empty measurement (name the value after '=')"));
                }
                fields
                    .entry(field.to_string())
                    .or_default()
                    .push(value.trim().to_lowercase());
            }
        }
        Ok(req)
    }

    /// Whether real hardware is required (the simulated mode is not named).
    pub fn requires_real_hardware(&self) -> bool {
        !self.kinds.contains_key(&TeeKind::InsecureSimulated)
    }

    /// Why an attestation result's appraisal does not meet this requirement (empty: it
    /// does): it must be `affirming`, bound to a fresh single-use nonce and a worker key, of
    /// a kind the requirement names, with the measurements it lists. The one exception is
    /// the development switch: a requirement that names `insecure-simulated-tee` accepts a
    /// simulated appraisal whose status is `warning` (simulated evidence is never better),
    /// and only that kind.
    pub fn refusals(&self, a: &crate::ear::EarAppraisal) -> Vec<RefusalReason> {
        let mut reasons = Vec::new();
        let simulated_named =
            a.kind == TeeKind::InsecureSimulated && !self.requires_real_hardware();
        let status_ok =
            a.status == EarStatus::Affirming || (simulated_named && a.status == EarStatus::Warning);
        if !status_ok {
            reasons.push(RefusalReason::NotAffirming { status: a.status });
        }
        if a.binding != BindingKind::FreshNonce {
            reasons.push(RefusalReason::BindingNotFresh);
        }
        if a.worker_public_key
            .as_deref()
            .and_then(crate::WorkerPublicKey::from_hex)
            .is_none()
        {
            reasons.push(RefusalReason::NoWorkerKey);
        }
        requirement_reasons(self, a, &mut reasons);
        reasons
    }
}

/// HPKE info of data sealed to an enclave's key by [`seal_to`] (the buyer's rows of a `tee`
/// job, and the result the enclave seals back to the buyer's one-time key).
pub const DATA_INFO: &[u8] = b"tessera-tee/data/v1";

/// Seals `plaintext` to an X25519 public key with HPKE (RFC 9180, base mode, suite
/// [`RELEASE_SUITE`], info [`DATA_INFO`]) and `aad` bound: returns (encapsulated key,
/// ciphertext). Randomness from `seed` (32 bytes of the caller's CSPRNG, used once).
///
/// # Errors
/// [`SealError::Hpke`] for a key that is not a valid X25519 point or a failed encryption.
pub fn seal_to(
    recipient: &crate::WorkerPublicKey,
    aad: &[u8],
    plaintext: &[u8],
    seed: [u8; 32],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let rng = &mut ChaCha20Rng::from_seed(seed);
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|e| SealError::Hpke(e.to_string()))?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        DATA_INFO,
        plaintext,
        aad,
        rng,
    )
    .map_err(|e| SealError::Hpke(e.to_string()))?;
    Ok((enc.to_bytes().to_vec(), ct))
}

/// What the caller (the scheduler) knows of the job ticket presented with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketCheck {
    /// The job.
    pub job_id: String,
    /// The worker presenting the ticket.
    pub worker_id: String,
    /// Whether the ticket verified (signature, expiry, replay, and that it names this
    /// dataset for this worker).
    pub valid: bool,
}

/// A request for a dataset key.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseRequest<'a> {
    /// The dataset.
    pub dataset_id: &'a str,
    /// The worker's attestation result (compact JWS).
    pub attestation_result: &'a str,
    /// The licence's requirement.
    pub requirement: &'a HardwareRequirement,
    /// The ticket.
    pub ticket: &'a TicketCheck,
}

/// A key released to an enclave: HPKE-wrapped to its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedKey {
    /// [`RELEASE_SUITE`].
    pub suite: String,
    /// The dataset.
    pub dataset_id: String,
    /// The job.
    pub job_id: String,
    /// HPKE encapsulated key (hex).
    pub enc: String,
    /// HPKE ciphertext of the 32-byte key (hex).
    pub ciphertext: String,
}

/// Why a release is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RefusalReason {
    /// The attestation result does not verify (signature, format).
    ResultInvalid {
        /// Why.
        detail: String,
    },
    /// The attestation result has expired (or is not yet valid).
    ResultExpired,
    /// The appraisal refused (`contraindicated`) or only warned.
    NotAffirming {
        /// Its status.
        status: EarStatus,
    },
    /// The report was not bound to a fresh, single-use nonce.
    BindingNotFresh,
    /// The result names no worker key to wrap to.
    NoWorkerKey,
    /// The licence names no TEE requirement.
    NoTeeRequirement,
    /// The simulated mode, and the licence asks for real hardware.
    InsecureSimulatedTee,
    /// A TEE kind the licence does not name.
    KindNotRequired {
        /// The kind.
        kind: TeeKind,
    },
    /// An attested measurement the licence does not list.
    MeasurementNotRequired {
        /// The field.
        field: String,
        /// The attested value.
        value: String,
    },
    /// The job ticket is not valid.
    TicketInvalid,
    /// No key for this dataset.
    UnknownDataset,
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::ResultInvalid { detail } => {
                write!(f, "attestation result invalid: {detail}")
            }
            RefusalReason::ResultExpired => f.write_str("attestation result expired"),
            RefusalReason::NotAffirming { status } => {
                write!(f, "attestation result is {status:?}, not affirming")
            }
            RefusalReason::BindingNotFresh => f.write_str("no fresh nonce binding"),
            RefusalReason::NoWorkerKey => f.write_str("no worker key in the result"),
            RefusalReason::NoTeeRequirement => f.write_str("the licence names no TEE"),
            RefusalReason::InsecureSimulatedTee => {
                f.write_str("insecure-simulated-tee, and the licence asks for real hardware")
            }
            RefusalReason::KindNotRequired { kind } => {
                write!(f, "TEE kind {kind} not named by the licence")
            }
            RefusalReason::MeasurementNotRequired { field, value } => {
                write!(f, "{field} {value} not named by the licence")
            }
            RefusalReason::TicketInvalid => f.write_str("job ticket invalid"),
            RefusalReason::UnknownDataset => f.write_str("no key for this dataset"),
        }
    }
}

/// What the broker decided, for the audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// `tee.key.release` or `tee.key.refuse`.
    pub action: String,
    /// When (unix seconds).
    pub at: u64,
    /// The dataset.
    pub dataset_id: String,
    /// The job.
    pub job_id: String,
    /// The worker.
    pub worker_id: String,
    /// The attested kind, if the result verified.
    pub tee_kind: Option<TeeKind>,
    /// The attested measurements (JSON), if the result verified.
    pub measurements: Option<serde_json::Value>,
    /// The key wrapped to (hex), if any.
    pub worker_public_key: Option<String>,
    /// The policy of the appraisal, if the result verified.
    pub policy_id: Option<String>,
    /// Why refused (empty on release).
    pub reasons: Vec<String>,
}

/// A key that wraps dataset keys at rest. Zeroised on drop; `Debug` does not show it.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }
}

/// A dataset key wrapped under a master key, for storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDatasetKey {
    /// The dataset (associated data of the wrapping).
    pub dataset_id: String,
    /// AES-GCM nonce (hex).
    pub nonce: String,
    /// AES-256-GCM of the key (hex).
    pub ciphertext: String,
}

/// Holds dataset keys and decides releases.
pub struct KeyBroker {
    result_key: VerifyingKey,
    keys: HashMap<String, DatasetKey>,
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for KeyBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBroker")
            .field("datasets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

const WRAP_AD: &[u8] = b"tessera-tee/wrapped-dataset-key/v1";

impl KeyBroker {
    /// A broker that trusts attestation results signed by `result_key`; randomness (new
    /// keys, HPKE, wrapping nonces) from `seed` (the caller's CSPRNG).
    pub fn new(result_key: VerifyingKey, seed: [u8; 32]) -> Self {
        KeyBroker {
            result_key,
            keys: HashMap::new(),
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// Makes a new random key for `dataset_id` (replacing none: an existing key is kept and
    /// returned) and returns it for sealing.
    ///
    /// # Errors
    /// [`SealError::TooLarge`] past [`MAX_KEYS`].
    pub fn generate_key(&mut self, dataset_id: &str) -> Result<&DatasetKey, SealError> {
        if !self.keys.contains_key(dataset_id) {
            if self.keys.len() >= MAX_KEYS {
                return Err(SealError::TooLarge);
            }
            let mut k = Zeroizing::new([0u8; 32]);
            self.rng.fill_bytes(k.as_mut_slice());
            self.keys
                .insert(dataset_id.to_string(), DatasetKey::from_bytes(*k));
        }
        self.keys.get(dataset_id).ok_or(SealError::TooLarge)
    }

    /// The key of a dataset, for the owner's sealing.
    pub fn key(&self, dataset_id: &str) -> Option<&DatasetKey> {
        self.keys.get(dataset_id)
    }

    /// Wraps a dataset's key under `master` for storage.
    pub fn wrap_for_storage(
        &mut self,
        master: &MasterKey,
        dataset_id: &str,
    ) -> Option<WrappedDatasetKey> {
        let key = self.keys.get(dataset_id)?;
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        let ct = Aes256Gcm::new(master.0.as_slice().into())
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.expose_bytes(),
                    aad: &wrap_aad(dataset_id),
                },
            )
            .ok()?;
        Some(WrappedDatasetKey {
            dataset_id: dataset_id.to_string(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ct),
        })
    }

    /// Unwraps a stored key under `master` and holds it.
    ///
    /// # Errors
    /// [`SealError::Authentication`] for another master key, dataset or altered bytes.
    pub fn insert_wrapped(
        &mut self,
        master: &MasterKey,
        wrapped: &WrappedDatasetKey,
    ) -> Result<(), SealError> {
        let nonce: [u8; 12] = hex::decode(&wrapped.nonce)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(SealError::Format("wrapped key nonce"))?;
        let ct = hex::decode(&wrapped.ciphertext).map_err(|_| SealError::Format("wrapped key"))?;
        let pt = Zeroizing::new(
            Aes256Gcm::new(master.0.as_slice().into())
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &wrap_aad(&wrapped.dataset_id),
                    },
                )
                .map_err(|_| SealError::Authentication)?,
        );
        let bytes: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Format("wrapped key length"))?;
        if !self.keys.contains_key(&wrapped.dataset_id) && self.keys.len() >= MAX_KEYS {
            return Err(SealError::TooLarge);
        }
        self.keys
            .insert(wrapped.dataset_id.clone(), DatasetKey::from_bytes(bytes));
        Ok(())
    }

    /// Decides a release at `at`: every check runs, every failure is listed. The key leaves
    /// only when there is none.
    pub fn release(
        &mut self,
        req: &ReleaseRequest<'_>,
        at: u64,
    ) -> (Result<ReleasedKey, Vec<RefusalReason>>, AuditRecord) {
        let mut reasons = Vec::new();
        let claims = match verify_result(req.attestation_result, &self.result_key, at) {
            Ok(c) => Some(c),
            Err(ResultError::Expired { .. }) => {
                reasons.push(RefusalReason::ResultExpired);
                None
            }
            Err(e) => {
                reasons.push(RefusalReason::ResultInvalid {
                    detail: e.to_string(),
                });
                None
            }
        };
        let sub = claims.as_ref().and_then(EarClaims::appraisal);
        if claims.is_some() && sub.is_none() {
            reasons.push(RefusalReason::ResultInvalid {
                detail: "no tessera-tee appraisal".into(),
            });
        }
        let mut worker_key = None;
        if let Some(a) = sub {
            reasons.extend(req.requirement.refusals(a));
            worker_key = a
                .worker_public_key
                .as_deref()
                .and_then(crate::WorkerPublicKey::from_hex);
        }
        if !req.ticket.valid {
            reasons.push(RefusalReason::TicketInvalid);
        }
        let key = self.keys.get(req.dataset_id).cloned();
        if key.is_none() {
            reasons.push(RefusalReason::UnknownDataset);
        }
        let mut audit = AuditRecord {
            action: "tee.key.refuse".into(),
            at,
            dataset_id: req.dataset_id.to_string(),
            job_id: req.ticket.job_id.clone(),
            worker_id: req.ticket.worker_id.clone(),
            tee_kind: sub.map(|a| a.kind),
            measurements: sub.and_then(|a| serde_json::to_value(&a.measurements).ok()),
            worker_public_key: worker_key.map(|k| k.to_hex()),
            policy_id: sub.map(|a| a.policy_id.clone()),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        };
        let (Some(key), Some(wk), true) = (key, worker_key, reasons.is_empty()) else {
            return (Err(reasons), audit);
        };
        match self.wrap_to(&key, &wk, req.dataset_id, &req.ticket.job_id) {
            Ok(released) => {
                audit.action = "tee.key.release".into();
                (Ok(released), audit)
            }
            Err(e) => {
                let r = RefusalReason::ResultInvalid {
                    detail: format!("worker key unusable: {e}"),
                };
                audit.reasons = vec![r.to_string()];
                (Err(vec![r]), audit)
            }
        }
    }

    fn wrap_to(
        &mut self,
        key: &DatasetKey,
        worker: &crate::WorkerPublicKey,
        dataset_id: &str,
        job_id: &str,
    ) -> Result<ReleasedKey, SealError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&worker.0)
            .map_err(|e| SealError::Hpke(e.to_string()))?;
        let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &pk,
            RELEASE_INFO,
            key.expose_bytes(),
            &release_aad(dataset_id, job_id),
            &mut self.rng,
        )
        .map_err(|e| SealError::Hpke(e.to_string()))?;
        Ok(ReleasedKey {
            suite: RELEASE_SUITE.to_string(),
            dataset_id: dataset_id.to_string(),
            job_id: job_id.to_string(),
            enc: hex::encode(enc.to_bytes()),
            ciphertext: hex::encode(ct),
        })
    }
}

fn requirement_reasons(
    req: &HardwareRequirement,
    a: &crate::ear::EarAppraisal,
    reasons: &mut Vec<RefusalReason>,
) {
    if req.kinds.is_empty() {
        reasons.push(RefusalReason::NoTeeRequirement);
        return;
    }
    if a.kind == TeeKind::InsecureSimulated && req.requires_real_hardware() {
        reasons.push(RefusalReason::InsecureSimulatedTee);
        return;
    }
    let Some(fields) = req.kinds.get(&a.kind) else {
        reasons.push(RefusalReason::KindNotRequired { kind: a.kind });
        return;
    };
    for (field, value) in a.measurements.named() {
        if let Some(list) = fields.get(field)
            && !list.iter().any(|v| v == value)
        {
            reasons.push(RefusalReason::MeasurementNotRequired {
                field: field.to_string(),
                value: value.to_string(),
            });
        }
    }
}

fn wrap_aad(dataset_id: &str) -> Vec<u8> {
    let mut v = WRAP_AD.to_vec();
    v.extend_from_slice(dataset_id.as_bytes());
    v
}

fn release_aad(dataset_id: &str, job_id: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for f in [dataset_id, job_id] {
        v.extend_from_slice(&(f.len() as u64).to_be_bytes());
        v.extend_from_slice(f.as_bytes());
    }
    v
}

/// The enclave's X25519 key pair for releases, derived from 32 secret bytes (RFC 9180
/// `DeriveKeyPair`). `Debug` shows only the public key.
pub struct EnclaveKeyPair {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: crate::WorkerPublicKey,
}

impl std::fmt::Debug for EnclaveKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnclaveKeyPair(public {})", self.public.to_hex())
    }
}

impl EnclaveKeyPair {
    /// Derives the pair from `ikm` (at least 32 secret bytes).
    pub fn derive(ikm: &[u8; 32]) -> Self {
        use hpke::Kem as _;
        let (secret, public) = Kem::derive_keypair(ikm);
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&public.to_bytes());
        EnclaveKeyPair {
            secret,
            public: crate::WorkerPublicKey(pk),
        }
    }

    /// The public key the report binds.
    pub fn public(&self) -> crate::WorkerPublicKey {
        self.public
    }

    /// Opens what [`seal_to`] sealed to this key with the same `aad`.
    ///
    /// # Errors
    /// [`SealError::Authentication`] for another key or aad, or altered bytes.
    pub fn open_sealed(
        &self,
        enc: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| SealError::Authentication)?;
        Ok(Zeroizing::new(
            hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
                &OpModeR::Base,
                &self.secret,
                &enc,
                DATA_INFO,
                ciphertext,
                aad,
            )
            .map_err(|_| SealError::Authentication)?,
        ))
    }

    /// Opens a released key (the enclave's side).
    ///
    /// # Errors
    /// [`SealError::Authentication`] for another key, dataset, job, suite or altered bytes.
    pub fn open_released(&self, r: &ReleasedKey) -> Result<DatasetKey, SealError> {
        if r.suite != RELEASE_SUITE {
            return Err(SealError::Authentication);
        }
        let enc_bytes = hex::decode(&r.enc).map_err(|_| SealError::Authentication)?;
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc_bytes)
            .map_err(|_| SealError::Authentication)?;
        let ct = hex::decode(&r.ciphertext).map_err(|_| SealError::Authentication)?;
        let pt = Zeroizing::new(
            hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
                &OpModeR::Base,
                &self.secret,
                &enc,
                RELEASE_INFO,
                &ct,
                &release_aad(&r.dataset_id, &r.job_id),
            )
            .map_err(|_| SealError::Authentication)?,
        );
        let bytes: [u8; 32] = pt
            .as_slice()
            .try_into()
            .map_err(|_| SealError::Authentication)?;
        Ok(DatasetKey::from_bytes(bytes))
    }
}
