//! The `tee` scene's operator side (issue "TEE scene"): workers' attestation, placement on
//! attested workers, and the key broker.
//!
//! * **Attestation** ([`Scheduler::tee_challenge`], [`Scheduler::tee_attest`]): a worker that
//!   runs an enclave asks for a single-use nonce (live [`NONCE_TTL_SECS`], issued to that
//!   worker only), has its enclave produce evidence whose report data binds the nonce and the
//!   enclave's X25519 key (`tessera_tee::expected_report_data`), and sends it. The operator
//!   verifies it at its clock (`tessera_tee::verify_dcap_quote`, `verify_snp_report` with the
//!   VCEK as collateral, or `insecure_simulated_evidence`), appraises it against the
//!   operator's [`AppraisalPolicy`] (`--tee-policy`), signs the result (an EAR-shaped compact
//!   JWS, key derived from the operator's key) and keeps the newest accepted one per worker
//!   until it expires. Every appraisal, accepted or not, is a `tee_appraisal` entry of the
//!   audit chain (subject: the worker).
//! * **Placement**: a `tee` job's provider task goes only to a live worker of the licensor
//!   whose current result meets the licence's `envHard` TEE entries
//!   (`tessera_tee::HardwareRequirement::refusals`): affirming (or, only where the licence
//!   names `tee:insecure-simulated-tee`, the simulated mode's `warning`), fresh-nonce bound,
//!   of a kind and with measurements the licence names. A licence that names real hardware
//!   never places on a simulated enclave.
//! * **Keys** ([`Scheduler::tee_sealing_key`], [`Scheduler::tee_release_key`]): a dataset's
//!   key is made once for its owner (who seals the file with it; every later issue to the
//!   owner is a `tee_key_issue` entry; the gateway refuses it to the operator), stored wrapped under the
//!   master key (derived from the operator's key; never in the database in clear), and
//!   released — HPKE-wrapped to the enclave key of the worker's current result — only to the
//!   worker running that dataset's provider task of a live `tee` job, under the same
//!   requirement as placement, re-checked at the release. Every release and refusal is a
//!   `tee_key_release` / `tee_key_refuse` entry of the chain (subject: the dataset).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tessera_core::TaskRole;
use tessera_tee::{
    AppraisalPolicy, Binding, EarAppraisal, EarClaims, HardwareRequirement, KeyBroker, MasterKey,
    Nonce, NonceRegistry, ReleaseRequest, ReleasedKey, ResultSigner, TeeKind, TicketCheck,
    WorkerPublicKey, WrappedDatasetKey, appraise, insecure_simulated_evidence, verify_dcap_quote,
    verify_snp_report,
};

use crate::{Scheduler, SchedulerError};

/// How long an issued nonce may be redeemed, in seconds.
pub const NONCE_TTL_SECS: u64 = 120;
/// Most nonces outstanding at once.
pub const NONCES_MAX: usize = 4_096;
/// Largest evidence or collateral accepted over the worker protocol, in bytes.
pub const EVIDENCE_BYTES_MAX: usize = 256 * 1024;

/// A worker's current accepted attestation.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The signed result (compact JWS).
    pub token: String,
    /// Its appraisal.
    pub appraisal: EarAppraisal,
    /// When it expires (unix seconds).
    pub exp: u64,
}

struct Inner {
    nonces: NonceRegistry,
    /// Nonce → the worker it was issued to.
    issued: HashMap<[u8; 32], String>,
    broker: KeyBroker,
    attested: HashMap<String, Attested>,
}

/// The operator's TEE state: its appraisal policy, result-signing key, master key, nonces,
/// the key broker and the workers' current results.
pub struct TeeService {
    policy: Option<AppraisalPolicy>,
    signer: ResultSigner,
    master: MasterKey,
    inner: std::sync::Mutex<Inner>,
}

impl std::fmt::Debug for TeeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeService")
            .field("policy", &self.policy.as_ref().map(|p| &p.policy_id))
            .field(
                "result_key",
                &hex::encode(self.signer.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

fn derive(node_seed: &[u8; 32], label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tessera/tee/");
    h.update(label.as_bytes());
    h.update([0]);
    h.update(node_seed);
    h.finalize().into()
}

impl TeeService {
    /// The service of a node whose key seed is `node_seed` (the result-signing and master
    /// keys are derived from it, `SHA-256("tessera/tee/" ‖ label ‖ 0 ‖ seed)`), appraising
    /// under `policy` (`None`: every attestation is refused), with randomness from `rng_seed`.
    pub fn new(node_seed: &[u8; 32], policy: Option<AppraisalPolicy>, rng_seed: [u8; 32]) -> Self {
        let signer = ResultSigner::from_seed(derive(node_seed, "result-signer"));
        let broker = KeyBroker::new(signer.verifying_key(), rng_seed);
        TeeService {
            policy,
            master: MasterKey::from_bytes(derive(node_seed, "master")),
            signer,
            inner: std::sync::Mutex::new(Inner {
                nonces: NonceRegistry::new(NONCE_TTL_SECS, NONCES_MAX),
                issued: HashMap::new(),
                broker,
                attested: HashMap::new(),
            }),
        }
    }

    /// The key attestation results verify with (hex of the Ed25519 public key).
    pub fn result_key_hex(&self) -> String {
        hex::encode(self.signer.verifying_key().as_bytes())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The workers' current results at `now` (unix seconds), for placement.
    pub(crate) fn current(&self, now: u64) -> HashMap<String, Attested> {
        let mut inner = self.lock();
        inner.attested.retain(|_, a| a.exp > now);
        inner.attested.clone()
    }
}

/// What an attestation came to.
#[derive(Debug, Clone)]
pub struct AttestOutcome {
    /// Whether the appraisal accepted the evidence.
    pub accepted: bool,
    /// `affirming`, `warning` or `contraindicated`.
    pub status: String,
    /// Every failed rule (empty when accepted).
    pub reasons: Vec<String>,
    /// Warnings of an accepted appraisal.
    pub warnings: Vec<String>,
    /// The signed result (compact JWS).
    pub result: String,
    /// When the result expires (unix seconds).
    pub expires_at: u64,
}

/// For each attested worker, why its current result does not meet the licence's `envHard`
/// (empty: it does); or why no worker could. `attested` from [`TeeService::current`].
pub(crate) fn eligible(
    env_hard: &[String],
    attested: &HashMap<String, Attested>,
) -> Result<HashMap<String, Vec<String>>, String> {
    let requirement = HardwareRequirement::from_env_hard(env_hard)
        .map_err(|e| format!("the licence's envHard: {e}"))?;
    if requirement.kinds.is_empty() {
        return Err(
            "the licence's tee scene names no TEE in envHard (e.g. tee:sgx, or \
                    tee:insecure-simulated-tee for development)"
                .into(),
        );
    }
    Ok(attested
        .iter()
        .map(|(w, a)| {
            (
                w.clone(),
                requirement
                    .refusals(&a.appraisal)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            )
        })
        .collect())
}

impl Scheduler {
    /// Installs the TEE service (once, at start); without one, `tee` jobs are refused and
    /// attestations answered with an error.
    pub fn install_tee(&self, tee: TeeService) -> bool {
        self.tee.set(std::sync::Arc::new(tee)).is_ok()
    }

    pub(crate) fn tee(&self) -> Result<&std::sync::Arc<TeeService>, SchedulerError> {
        self.tee
            .get()
            .ok_or_else(|| SchedulerError::Invalid("this operator runs no TEE service".into()))
    }

    /// The current accepted attestations, for placement (empty without a TEE service).
    /// Every worker's current accepted attestation, by worker id (empty without a TEE
    /// service).
    pub fn tee_current(&self) -> HashMap<String, Attested> {
        let now = u64::try_from(self.now() / 1000).unwrap_or(0);
        self.tee.get().map(|t| t.current(now)).unwrap_or_default()
    }

    /// Loads the stored wrapped dataset keys into the broker; returns how many.
    ///
    /// # Errors
    /// `Store`; `Invalid` for a stored key the master key does not open (another operator
    /// key: the dataset keys are then lost, and the sealed files with them).
    pub async fn load_tee_keys(&self) -> Result<usize, SchedulerError> {
        let tee = self.tee()?;
        let rows = self.store.tee_keys().await?;
        let mut inner = tee.lock();
        for (dataset_id, json) in &rows {
            let wrapped: WrappedDatasetKey = serde_json::from_str(json).map_err(|e| {
                SchedulerError::Invalid(format!("stored key of dataset {dataset_id}: {e}"))
            })?;
            inner
                .broker
                .insert_wrapped(&tee.master, &wrapped)
                .map_err(|e| {
                    SchedulerError::Invalid(format!(
                        "stored key of dataset {dataset_id} does not open under this \
                         operator's key: {e}"
                    ))
                })?;
        }
        Ok(rows.len())
    }

    /// A fresh single-use nonce (64 hex digits) for `worker_id`'s next attestation.
    ///
    /// # Errors
    /// `Invalid` without a TEE service or when too many nonces are outstanding; `NotFound`
    /// for a worker that has not registered.
    pub async fn tee_challenge(&self, worker_id: &str) -> Result<String, SchedulerError> {
        let tee = self.tee()?;
        if !self.workers.lock().await.contains_key(worker_id) {
            return Err(SchedulerError::NotFound(format!("worker {worker_id}")));
        }
        let now = u64::try_from(self.now() / 1000).unwrap_or(0);
        let mut inner = tee.lock();
        let nonce = inner
            .nonces
            .issue(self.ids.bytes32(), now)
            .map_err(|e| SchedulerError::Invalid(format!("no nonce: {e}")))?;
        if inner.issued.len() >= NONCES_MAX {
            // Spent or expired nonces the registry forgot.
            inner.issued.clear();
        }
        inner.issued.insert(nonce.0, worker_id.to_string());
        Ok(nonce.to_hex())
    }

    /// Appraises `worker_id`'s evidence of `kind` bound to `nonce_hex` and its enclave key
    /// (see the module docs). The appraisal is audited whatever it comes to; an accepted one
    /// becomes the worker's current result.
    ///
    /// # Errors
    /// `Invalid` without a TEE service, for an unknown kind, oversized input, a nonce not
    /// issued to this worker or a malformed key; `Store` if the audit entry cannot be
    /// written (then nothing is kept).
    pub async fn tee_attest(
        &self,
        worker_id: &str,
        kind: &str,
        evidence: &[u8],
        collateral: &[u8],
        nonce_hex: &str,
        enclave_key_hex: &str,
    ) -> Result<AttestOutcome, SchedulerError> {
        let tee = self.tee()?.clone();
        let invalid = |m: String| SchedulerError::Invalid(m);
        let kind = TeeKind::parse(kind).ok_or_else(|| {
            invalid(format!(
                "unknown TEE kind {kind:?} (sgx, tdx, sev-snp, insecure-simulated-tee)"
            ))
        })?;
        if evidence.len() > EVIDENCE_BYTES_MAX || collateral.len() > EVIDENCE_BYTES_MAX {
            return Err(invalid(format!(
                "evidence and collateral may hold at most {EVIDENCE_BYTES_MAX} bytes each"
            )));
        }
        let nonce = Nonce::from_hex(nonce_hex)
            .ok_or_else(|| invalid("nonce: expected 64 hex digits".into()))?;
        let worker_key = WorkerPublicKey::from_hex(enclave_key_hex)
            .ok_or_else(|| invalid("enclave key: expected 64 hex digits".into()))?;
        let now_ms = self.now();
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let (outcome, detail) = {
            let mut inner = tee.lock();
            if inner.issued.get(&nonce.0).map(String::as_str) != Some(worker_id) {
                return Err(invalid("the nonce was not issued to this worker".into()));
            }
            inner.issued.remove(&nonce.0);
            let verified = match kind {
                TeeKind::Sgx | TeeKind::Tdx => verify_dcap_quote(evidence, collateral, now),
                TeeKind::SevSnp => verify_snp_report(evidence, collateral, None, now),
                TeeKind::InsecureSimulated => insecure_simulated_evidence(evidence, now),
            };
            let (accepted, status, reasons, warnings, result, exp, measurements) =
                match (verified, &tee.policy) {
                    (Err(e), _) => (
                        false,
                        "contraindicated".to_string(),
                        vec![format!("verification: {e}")],
                        vec![],
                        String::new(),
                        0,
                        None,
                    ),
                    (Ok(_), None) => (
                        false,
                        "contraindicated".to_string(),
                        vec!["this operator has no appraisal policy (serve --tee-policy)".into()],
                        vec![],
                        String::new(),
                        0,
                        None,
                    ),
                    (Ok(ev), Some(policy)) => {
                        let appraisal = appraise(
                            &ev,
                            policy,
                            Binding::Fresh {
                                registry: &mut inner.nonces,
                                nonce,
                                worker_key,
                            },
                            now,
                        );
                        let claims = EarClaims::of(&appraisal, policy.result_ttl_secs);
                        let token = tee.signer.sign(&claims).map_err(|e| {
                            SchedulerError::Invalid(format!("signing the result: {e}"))
                        })?;
                        let sub = claims.appraisal().cloned();
                        let status = sub
                            .as_ref()
                            .map(|a| format!("{:?}", a.status).to_lowercase())
                            .unwrap_or_default();
                        let measurements = serde_json::to_value(&appraisal.measurements).ok();
                        if let (true, Some(a)) = (appraisal.accepted, sub) {
                            inner.attested.insert(
                                worker_id.to_string(),
                                Attested {
                                    token: token.clone(),
                                    appraisal: a,
                                    exp: claims.exp,
                                },
                            );
                        }
                        (
                            appraisal.accepted,
                            status,
                            appraisal.reasons.iter().map(ToString::to_string).collect(),
                            appraisal.warnings.clone(),
                            token,
                            claims.exp,
                            measurements,
                        )
                    }
                };
            if !accepted {
                inner.attested.remove(worker_id);
            }
            let detail = serde_json::json!({
                "kind": kind.as_str(), "accepted": accepted, "status": status,
                "reasons": reasons, "warnings": warnings, "measurements": measurements,
                "policy_id": tee.policy.as_ref().map(|p| p.policy_id.clone()),
                "enclave_key": worker_key.to_hex(), "expires_at": exp,
            });
            (
                AttestOutcome {
                    accepted,
                    status,
                    reasons,
                    warnings,
                    result,
                    expires_at: exp,
                },
                detail,
            )
        };
        if let Err(e) = self
            .store
            .audit(now_ms, "tee_appraisal", worker_id, &detail)
            .await
        {
            tee.lock().attested.remove(worker_id);
            return Err(e.into());
        }
        Ok(outcome)
    }

    /// The key of `dataset_id` for its owner to seal the file with (64 hex digits), made and
    /// stored (wrapped) on the first call, the same key after. The gateway has checked that
    /// the caller owns the dataset's party.
    ///
    /// # Errors
    /// `Invalid` without a TEE service; `NotFound` for an unknown dataset; `Store`.
    pub async fn tee_sealing_key(
        &self,
        dataset_id: &str,
        by: &str,
    ) -> Result<(String, bool), SchedulerError> {
        let tee = self.tee()?.clone();
        let d = self.store.dataset(dataset_id).await?;
        if !crate::validate::is_sealed(&d.location) {
            return Err(SchedulerError::Invalid(format!(
                "dataset {dataset_id} is registered at {:?}, a clear file; a sealed dataset's \
                 location ends in .tseal (register the sealed file's name with `dataset \
                 create`)",
                d.location
            )));
        }
        let wrapped = {
            let mut inner = tee.lock();
            inner
                .broker
                .generate_key(dataset_id)
                .map_err(|e| SchedulerError::Invalid(format!("dataset key: {e}")))?;
            inner
                .broker
                .wrap_for_storage(&tee.master, dataset_id)
                .ok_or_else(|| SchedulerError::Invalid("wrapping the dataset key".into()))?
        };
        let json = serde_json::to_string(&wrapped).map_err(|source| SchedulerError::Encode {
            what: "wrapped key",
            source,
        })?;
        let (stored, created) = self
            .store
            .put_tee_key(
                dataset_id,
                &json,
                self.now(),
                &serde_json::json!({"by": by}),
            )
            .await?;
        if !created {
            // Every later issue of the key is in the chain too.
            self.store
                .audit(
                    self.now(),
                    "tee_key_issue",
                    dataset_id,
                    &serde_json::json!({"by": by}),
                )
                .await?;
        }
        let mut inner = tee.lock();
        if !created {
            // The stored key is the dataset's key (a previous run made it).
            let stored: WrappedDatasetKey = serde_json::from_str(&stored).map_err(|e| {
                SchedulerError::Invalid(format!("stored key of dataset {dataset_id}: {e}"))
            })?;
            inner
                .broker
                .insert_wrapped(&tee.master, &stored)
                .map_err(|e| SchedulerError::Invalid(format!("stored key: {e}")))?;
        }
        let key = inner
            .broker
            .key(dataset_id)
            .map(|k| hex::encode(k.expose_bytes()))
            .ok_or_else(|| SchedulerError::Invalid("dataset key missing".into()))?;
        Ok((key, created))
    }

    /// Releases the key of the dataset of `task_id`'s `tee` job to `worker_id`'s enclave (see
    /// the module docs); every decision is audited.
    ///
    /// # Errors
    /// `NotFound` for a task that is not live on this worker; `Forbidden` with the broker's
    /// reasons when it refuses (the worker is the provider's own); `Store`.
    pub async fn tee_release_key(
        &self,
        worker_id: &str,
        task_id: &str,
    ) -> Result<ReleasedKey, SchedulerError> {
        let tee = self.tee()?.clone();
        let job_id = {
            let jobs = self.jobs.lock().await;
            jobs.iter()
                .find(|(_, j)| {
                    j.tasks.get(task_id).is_some_and(|t| {
                        t.worker_id == worker_id && t.role == TaskRole::Sender && t.report.is_none()
                    })
                })
                .filter(|(_, j)| j.scene == tessera_core::job::scene::TEE)
                .map(|(id, _)| id.clone())
        };
        let Some(job_id) = job_id else {
            return Err(SchedulerError::NotFound(format!(
                "no live tee task {task_id} of this worker"
            )));
        };
        let job = self.store.job(&job_id).await?;
        let licence = self.store.licence(&job.licence_id).await?;
        let env_hard = licence
            .policy
            .scene(tessera_core::job::scene::TEE)
            .map(|s| s.env_hard.0.clone())
            .unwrap_or_default();
        let requirement = HardwareRequirement::from_env_hard(&env_hard).unwrap_or_default();
        let now_ms = self.now();
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let (outcome, record) = {
            let mut inner = tee.lock();
            let token = inner
                .attested
                .get(worker_id)
                .map(|a| a.token.clone())
                .unwrap_or_default();
            let ticket = TicketCheck {
                job_id: job_id.clone(),
                worker_id: worker_id.to_string(),
                valid: true,
            };
            inner.broker.release(
                &ReleaseRequest {
                    dataset_id: &licence.dataset_id,
                    attestation_result: &token,
                    requirement: &requirement,
                    ticket: &ticket,
                },
                now,
            )
        };
        let kind = if outcome.is_ok() {
            "tee_key_release"
        } else {
            "tee_key_refuse"
        };
        let detail = serde_json::to_value(&record).map_err(|source| SchedulerError::Encode {
            what: "key release record",
            source,
        })?;
        self.store
            .audit(now_ms, kind, &licence.dataset_id, &detail)
            .await?;
        outcome.map_err(|reasons| {
            SchedulerError::Forbidden(format!(
                "the key broker refused: {}",
                reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })
    }
}
