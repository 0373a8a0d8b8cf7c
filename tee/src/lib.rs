//! The `tee` scene's trust machinery: verifying TEE evidence (Intel SGX and TDX DCAP quotes,
//! AMD SEV-SNP reports), appraising it against a policy, signing the outcome as an expiring
//! attestation result, and a key broker that releases dataset keys only to attested workers.
//!
//! # Pipeline
//!
//! 1. **Verify** ([`verify_dcap_quote`], [`verify_snp_report`],
//!    [`insecure_simulated_evidence`]): signatures, certificate chains to the vendor roots,
//!    collateral, at a time the caller passes (nothing here reads the clock). Stops at the
//!    first failure with a typed [`VerifyError`].
//! 2. **Appraise** ([`appraise`]): measurements, debug, TCB status and advisories, platform
//!    flags, SNP guest policy, VMPL and reported TCB against an [`AppraisalPolicy`], and the
//!    binding of the report data to a single-use nonce and the worker's key
//!    ([`NonceRegistry`], [`expected_report_data`]). Lists *every* failed rule as a
//!    [`Reason`].
//! 3. **Sign** ([`EarClaims::of`], [`ResultSigner::sign`]): an EAR-shaped claim set, Ed25519
//!    compact JWS, expiring after the policy's `result_ttl_secs`; [`verify_result`] checks
//!    signature and expiry.
//! 4. **Release** ([`KeyBroker::release`]): the dataset key, HPKE-wrapped to the worker key in
//!    the result, if the result verifies, is `affirming`, fresh-nonce bound, satisfies the
//!    licence's [`HardwareRequirement`] (from `envHard`) and the job ticket is valid; every
//!    decision yields an [`AuditRecord`]. Datasets are sealed at rest with [`seal`] /
//!    [`seal_stream`] (AES-256-GCM, chunked).
//!
//! # Threat model
//!
//! **Trusted**: Intel's SGX root CA (built into `dcap-qvl`) and the collateral it signs (TCB
//! info, QE identity, CRLs) — fetching fresh collateral is the caller's job, and stale
//! collateral is refused by its own dates; AMD's ARK certificates for Milan, Genoa and Turin
//! (built into `sev`; a chain file can never add a root); the TEE hardware and firmware at
//! the TCB levels the policy accepts; the operator process running the broker (it holds the
//! dataset keys and the result-signing key) and the appraisal policy it is given.
//!
//! **What an accepted appraisal proves**: that a genuine, non-debug TEE at an accepted TCB
//! level, running code with the approved measurement, produced report data binding a nonce
//! this verifier issued (single use, short-lived) and a public key whose private half that
//! code holds. A malicious host operator cannot forge such a quote without breaking the TEE
//! (or Intel's/AMD's keys); it can withhold, delay or replay evidence, which the nonce and
//! the result's expiry turn into refusals, and it can deny service.
//!
//! **What it does not prove**: that the measured code is correct or does not leak the data
//! it is given (the provider approves the measurement; that is a review, not a proof);
//! resistance to side channels (cache, power, speculative execution), physical attacks or
//! TEE vulnerabilities not yet reflected in the TCB status and advisories — these are out of
//! scope; that the platform is in a given place or run by a given party (the PCK/VCEK name a
//! chip, not an owner).
//!
//! **The simulated mode** (`insecure-simulated-tee`) has no security whatever: its evidence
//! is unsigned JSON. It exists for development; every appraisal and result says so, a policy
//! accepts it only with an explicit `insecure_simulated_tee` section, and the broker refuses
//! it whenever the licence does not name it (any licence asking for real hardware).
//!
//! **The broker releases** a dataset's key only to the enclave key bound in a fresh,
//! affirming result, wrapped so only that key opens it, and only for a valid job ticket; the
//! key never leaves in clear, and never for a refused appraisal, an expired result, another
//! kind or a measurement the licence does not name.

#![forbid(unsafe_code)]

mod appraisal;
mod broker;
mod dcap;
mod ear;
mod error;
mod evidence;
mod kind;
mod nonce;
mod policy;
mod seal;
mod simulated;
mod snp;
mod time;

pub use appraisal::{Appraisal, Binding, BindingKind, Reason, appraise};
pub use broker::{
    AuditRecord, DATA_INFO, EnclaveKeyPair, HardwareRequirement, KeyBroker, MAX_KEYS, MasterKey,
    RELEASE_INFO, RELEASE_SUITE, RefusalReason, ReleaseRequest, ReleasedKey, TicketCheck,
    WrappedDatasetKey, seal_to,
};
pub use dcap::{MAX_COLLATERAL_BYTES, MAX_QUOTE_BYTES, verify_dcap_quote};
pub use ear::{
    EAT_PROFILE, EarAppraisal, EarClaims, EarStatus, ResultSigner, SUBMOD, VerifierId,
    verify_result,
};
pub use error::{NonceError, PolicyError, ResultError, SealError, VerifyError};
pub use evidence::{DcapTcb, Measurements, SnpTcb, VerifiedEvidence};
pub use kind::TeeKind;
pub use nonce::{
    BINDING_TAG, Nonce, NonceRegistry, WorkerPublicKey, binding_holds, expected_report_data,
};
pub use policy::{AppraisalPolicy, SgxPolicy, SimulatedPolicy, SnpPolicy, TdxPolicy};
pub use seal::{
    CHUNK_LOG2, DatasetKey, SEAL_MAGIC, SEAL_VERSION, open, open_stream, seal, seal_stream,
    seal_stream_chunked,
};
pub use simulated::insecure_simulated_evidence;
pub use snp::{MAX_CERT_BYTES, SNP_REPORT_BYTES, verify_snp_report};
pub use time::{parse_rfc3339, parse_time};
