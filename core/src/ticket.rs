//! Job tickets: the operator signs (ed25519) every task it hands to a worker, and the worker
//! refuses a task whose ticket is not signed by the operator's key, is addressed to another
//! worker, is expired, or was already used (replay).
//!
//! The signature covers the exact bytes of the ticket body (canonical JSON, field order fixed
//! by the struct) and the body carries a digest of the task specification, so a ticket cannot
//! be moved onto a different task.

use std::collections::{HashMap, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::checkpoint::{CheckpointError, NodeKey, SignedHead};
use crate::limits::TICKET_REPLAY_CACHE_MAX;

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The ticket bytes or signature could not be parsed.
    #[error("malformed ticket: {0}")]
    Malformed(String),
    /// The signature does not verify under the operator's key.
    #[error("ticket signature does not verify under the operator's key")]
    BadSignature,
    /// The ticket names another worker.
    #[error("ticket is for worker {expected}, not this worker ({actual})")]
    WrongWorker {
        /// Worker named in the ticket.
        expected: String,
        /// This worker.
        actual: String,
    },
    /// The ticket's task digest does not match the task it came with.
    #[error("ticket does not match the task it came with")]
    TaskMismatch,
    /// The ticket's validity has ended.
    #[error("ticket expired at {expires_at_ms} (now {now_ms})")]
    Expired {
        /// End of validity.
        expires_at_ms: i64,
        /// Time of the check.
        now_ms: i64,
    },
    /// The ticket was already presented once.
    #[error("ticket {0} was already used (replay)")]
    Replayed(String),
    /// The operator could not encode a ticket body (nothing is signed then).
    #[error("ticket body could not be encoded: {0}")]
    Unencodable(String),
    /// The audit head the ticket carries does not verify under the operator's key.
    #[error("the ticket's audit head: {0}")]
    AuditHead(#[from] CheckpointError),
}

/// What the operator vouches for when it dispatches a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    /// Unique per ticket; the replay-detection key.
    pub ticket_id: String,
    /// The job this task belongs to.
    pub job_id: String,
    /// The task (one party's part of the job).
    pub task_id: String,
    /// The worker that may run it.
    pub worker_id: String,
    /// Issue time, ms since epoch.
    pub issued_at_ms: i64,
    /// End of validity, ms since epoch.
    pub expires_at_ms: i64,
    /// Hex SHA-256 of the task specification bytes.
    pub task_digest: String,
    /// The latest signed head of the operator's audit chain when the ticket was issued (it
    /// covers the job's admission): a copy of the chain's state outside the operator's
    /// database. Absent in tickets from operators without checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head: Option<SignedHead>,
}

/// A ticket body with the operator's signature over its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTicket {
    /// Canonical JSON of [`TicketBody`].
    pub body: String,
    /// Hex ed25519 signature over `body`.
    pub signature_hex: String,
}

/// Hex SHA-256 of task specification bytes, as carried in [`TicketBody::task_digest`].
pub fn task_digest(spec: &[u8]) -> String {
    hex::encode(Sha256::digest(spec))
}

/// The operator's signing key. Never printed; zeroized on drop.
pub struct TicketSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl TicketSigner {
    /// A signer from a 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// A fresh random key from the given RNG.
    pub fn generate<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The 32-byte secret seed, for persisting the key; handle with care.
    pub fn dangerous_seed_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// Hex of the public verifying key, as given to workers.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs a ticket body.
    ///
    /// # Errors
    /// [`TicketError::Unencodable`] if the body cannot be encoded as JSON; an empty or
    /// partial body is never signed.
    pub fn sign(&self, body: &TicketBody) -> Result<SignedTicket, TicketError> {
        let body =
            serde_json::to_string(body).map_err(|e| TicketError::Unencodable(e.to_string()))?;
        let signature = self.key.sign(body.as_bytes());
        Ok(SignedTicket {
            body,
            signature_hex: hex::encode(signature.to_bytes()),
        })
    }

    /// Signs a head of the audit chain (see [`crate::checkpoint`]): entry `seq` hashed to
    /// `head_hash` (64 hex digits) at `at_ms`.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] if `head_hash` is not 32 bytes of hex.
    pub fn sign_head(
        &self,
        seq: u64,
        head_hash: &str,
        at_ms: i64,
    ) -> Result<SignedHead, CheckpointError> {
        let message = SignedHead::message(seq, head_hash, at_ms)?;
        Ok(SignedHead {
            seq,
            head_hash: head_hash.to_ascii_lowercase(),
            at_ms,
            signature_hex: hex::encode(self.key.sign(&message).to_bytes()),
        })
    }
}

/// A worker's ticket checker: verifies signatures and remembers used tickets until they expire.
#[derive(Debug)]
pub struct TicketVerifier {
    key: VerifyingKey,
    worker_id: String,
    seen: HashMap<String, i64>,
    order: VecDeque<(String, i64)>,
    /// The audit head verified last, exactly as signed: the operator hands one signed head
    /// to the tickets of many admissions, and a ticket carrying an equal head (every field,
    /// signature included) needs no second verification.
    verified_head: Option<SignedHead>,
}

impl TicketVerifier {
    /// A verifier for `worker_id` trusting the operator key given as hex.
    pub fn new(operator_key_hex: &str, worker_id: impl Into<String>) -> Result<Self, TicketError> {
        let bytes = hex::decode(operator_key_hex)
            .map_err(|e| TicketError::Malformed(format!("operator key is not hex: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TicketError::Malformed("operator key must be 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| TicketError::Malformed(format!("operator key invalid: {e}")))?;
        Ok(Self {
            key,
            worker_id: worker_id.into(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            verified_head: None,
        })
    }

    /// Checks a ticket presented with a task specification at time `now_ms`; on success the
    /// ticket is marked used and its body returned.
    pub fn check(
        &mut self,
        ticket: &SignedTicket,
        task_spec: &[u8],
        now_ms: i64,
    ) -> Result<TicketBody, TicketError> {
        let sig_bytes = hex::decode(&ticket.signature_hex)
            .map_err(|e| TicketError::Malformed(format!("signature is not hex: {e}")))?;
        let sig_bytes: [u8; 64] = sig_bytes
            .try_into()
            .map_err(|_| TicketError::Malformed("signature must be 64 bytes".into()))?;
        let signature = Signature::from_bytes(&sig_bytes);
        self.key
            .verify(ticket.body.as_bytes(), &signature)
            .map_err(|_| TicketError::BadSignature)?;
        let body: TicketBody = serde_json::from_str(&ticket.body)
            .map_err(|e| TicketError::Malformed(format!("ticket body: {e}")))?;
        if let Some(head) = &body.audit_head
            && self.verified_head.as_ref() != Some(head)
        {
            NodeKey::from_key(self.key).verify(head)?;
            self.verified_head = Some(head.clone());
        }
        if body.worker_id != self.worker_id {
            return Err(TicketError::WrongWorker {
                expected: body.worker_id,
                actual: self.worker_id.clone(),
            });
        }
        if body.task_digest != task_digest(task_spec) {
            return Err(TicketError::TaskMismatch);
        }
        if now_ms >= body.expires_at_ms {
            return Err(TicketError::Expired {
                expires_at_ms: body.expires_at_ms,
                now_ms,
            });
        }
        self.evict(now_ms);
        if self.seen.contains_key(&body.ticket_id) {
            return Err(TicketError::Replayed(body.ticket_id));
        }
        if self.order.len() >= TICKET_REPLAY_CACHE_MAX {
            // Full of unexpired tickets: drop the oldest. A replay of it would still need a
            // valid, unexpired ticket, and the cache bound is far above the operator's rate.
            if let Some((id, _)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
        self.seen.insert(body.ticket_id.clone(), body.expires_at_ms);
        self.order
            .push_back((body.ticket_id.clone(), body.expires_at_ms));
        Ok(body)
    }

    fn evict(&mut self, now_ms: i64) {
        // Tickets are mostly issued in expiry order; expired ones at the front are dropped.
        while let Some((id, exp)) = self.order.front() {
            if *exp > now_ms {
                break;
            }
            self.seen.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn body(worker: &str, spec: &[u8], id: &str) -> TicketBody {
        TicketBody {
            ticket_id: id.into(),
            job_id: "job-1".into(),
            task_id: "task-1".into(),
            worker_id: worker.into(),
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            task_digest: task_digest(spec),
            audit_head: None,
        }
    }

    #[test]
    fn valid_ticket_passes_once_then_replay_is_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let signer = TicketSigner::generate(&mut rng);
        let mut v = TicketVerifier::new(&signer.public_key_hex(), "w1").expect("key");
        let t = signer.sign(&body("w1", b"spec", "t1")).expect("sign");
        assert!(v.check(&t, b"spec", 2_000).is_ok());
        assert_eq!(
            v.check(&t, b"spec", 2_001),
            Err(TicketError::Replayed("t1".into()))
        );
    }

    #[test]
    fn forged_expired_misaddressed_and_moved_tickets_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let signer = TicketSigner::generate(&mut rng);
        let forger = TicketSigner::generate(&mut rng);
        let mut v = TicketVerifier::new(&signer.public_key_hex(), "w1").expect("key");

        let forged = forger.sign(&body("w1", b"spec", "f")).expect("sign");
        assert_eq!(
            v.check(&forged, b"spec", 2_000),
            Err(TicketError::BadSignature)
        );

        let mut tampered = signer.sign(&body("w1", b"spec", "t")).expect("sign");
        tampered.body = tampered.body.replace("job-1", "job-2");
        assert_eq!(
            v.check(&tampered, b"spec", 2_000),
            Err(TicketError::BadSignature)
        );

        let t = signer.sign(&body("w2", b"spec", "a")).expect("sign");
        assert!(matches!(
            v.check(&t, b"spec", 2_000),
            Err(TicketError::WrongWorker { .. })
        ));
        let t = signer.sign(&body("w1", b"spec", "b")).expect("sign");
        assert_eq!(
            v.check(&t, b"other spec", 2_000),
            Err(TicketError::TaskMismatch)
        );
        assert!(matches!(
            v.check(&t, b"spec", 61_000),
            Err(TicketError::Expired { .. })
        ));
        // A head inside a genuine ticket is checked on its own: one signed by another key is
        // refused.
        let mut with_head = body("w1", b"spec", "h");
        let hash = "ab".repeat(32);
        with_head.audit_head = Some(forger.sign_head(3, &hash, 1_000).expect("head"));
        let t = signer.sign(&with_head).expect("sign");
        assert!(matches!(
            v.check(&t, b"spec", 2_000),
            Err(TicketError::AuditHead(CheckpointError::BadSignature {
                seq: 3,
                ..
            }))
        ));
        // A genuine head is verified once and then known; a head equal to it but for a
        // forged signature is still refused.
        let genuine = signer.sign_head(3, &hash, 1_000).expect("head");
        for id in ["g1", "g2"] {
            let mut b = body("w1", b"spec", id);
            b.audit_head = Some(genuine.clone());
            let t = signer.sign(&b).expect("sign");
            assert!(v.check(&t, b"spec", 2_000).is_ok(), "{id}");
        }
        let mut forged_head = genuine.clone();
        forged_head.signature_hex = forger
            .sign_head(3, &hash, 1_000)
            .expect("head")
            .signature_hex;
        let mut b = body("w1", b"spec", "g3");
        b.audit_head = Some(forged_head);
        let t = signer.sign(&b).expect("sign");
        assert!(matches!(
            v.check(&t, b"spec", 2_000),
            Err(TicketError::AuditHead(CheckpointError::BadSignature {
                seq: 3,
                ..
            }))
        ));
        with_head.ticket_id = "h2".into();
        with_head.audit_head = Some(signer.sign_head(3, &hash, 1_000).expect("head"));
        let t = signer.sign(&with_head).expect("sign");
        assert_eq!(
            v.check(&t, b"spec", 2_000)
                .map(|b| b.audit_head.map(|h| h.seq)),
            Ok(Some(3))
        );
        let garbage = SignedTicket {
            body: "{".into(),
            signature_hex: "zz".into(),
        };
        assert!(matches!(
            v.check(&garbage, b"spec", 2_000),
            Err(TicketError::Malformed(_))
        ));
    }
}
