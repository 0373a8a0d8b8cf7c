//! Freshness and binding: single-use, short-lived nonces, and the rule that ties a report to
//! a nonce and to the worker's public key.
//!
//! **Binding rule.** The workload puts into the first 32 bytes of its report data
//!
//! ```text
//! SHA-256( "tessera-tee/binding/v1" || nonce (32 bytes) || worker public key (32 bytes, X25519) )
//! ```
//!
//! and zeros into the last 32. The key is the one the key broker wraps dataset keys to, so a
//! key released on the strength of a report can be opened only inside the attested TEE
//! (which generated the key pair and never lets the private half out).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::NonceError;

/// Domain tag of the binding hash.
pub const BINDING_TAG: &[u8] = b"tessera-tee/binding/v1";

/// A 32-byte nonce issued by a [`NonceRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Nonce> {
        let v = hex::decode(s.trim()).ok()?;
        Some(Nonce(v.try_into().ok()?))
    }
}

/// A worker's (enclave's) X25519 public key, the one keys are released to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerPublicKey(pub [u8; 32]);

impl WorkerPublicKey {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<WorkerPublicKey> {
        let v = hex::decode(s.trim()).ok()?;
        Some(WorkerPublicKey(v.try_into().ok()?))
    }
}

/// The report data a workload must present for `nonce` and `key` (see the module docs).
pub fn expected_report_data(nonce: &Nonce, key: &WorkerPublicKey) -> [u8; 64] {
    let mut h = Sha256::new();
    h.update(BINDING_TAG);
    h.update(nonce.0);
    h.update(key.0);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&h.finalize());
    out
}

/// Whether `report_data` binds `nonce` and `key` (constant time).
pub fn binding_holds(report_data: &[u8; 64], nonce: &Nonce, key: &WorkerPublicKey) -> bool {
    expected_report_data(nonce, key).ct_eq(report_data).into()
}

/// Issues nonces and redeems each at most once, within its lifetime. Bounded: at most
/// `capacity` nonces are remembered (issued and not yet expired, or spent and not yet
/// expired); past that, issuing fails until some expire. Time is always an argument.
#[derive(Debug)]
pub struct NonceRegistry {
    ttl_secs: u64,
    capacity: usize,
    /// Nonce → (expires at, spent).
    entries: HashMap<[u8; 32], (u64, bool)>,
}

impl NonceRegistry {
    /// A registry whose nonces live `ttl_secs` and that remembers at most `capacity`.
    pub fn new(ttl_secs: u64, capacity: usize) -> Self {
        NonceRegistry {
            ttl_secs,
            capacity,
            entries: HashMap::new(),
        }
    }

    /// Issues `random` (32 bytes from the caller's CSPRNG) as a nonce at `at`.
    ///
    /// # Errors
    /// [`NonceError::Full`] when `capacity` live nonces are remembered; [`NonceError::Reused`]
    /// if these bytes were issued before (a broken RNG).
    pub fn issue(&mut self, random: [u8; 32], at: u64) -> Result<Nonce, NonceError> {
        self.prune(at);
        if self.entries.len() >= self.capacity {
            return Err(NonceError::Full);
        }
        if self.entries.contains_key(&random) {
            return Err(NonceError::Reused);
        }
        self.entries
            .insert(random, (at.saturating_add(self.ttl_secs), false));
        Ok(Nonce(random))
    }

    /// Redeems `nonce` at `at`: succeeds once, within its lifetime.
    ///
    /// # Errors
    /// [`NonceError::Reused`], [`NonceError::Expired`] or [`NonceError::Unknown`].
    pub fn redeem(&mut self, nonce: &Nonce, at: u64) -> Result<(), NonceError> {
        let Some((expires, spent)) = self.entries.get_mut(&nonce.0) else {
            return Err(NonceError::Unknown);
        };
        if *spent {
            return Err(NonceError::Reused);
        }
        if at > *expires {
            return Err(NonceError::Expired);
        }
        *spent = true;
        Ok(())
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn prune(&mut self, at: u64) {
        self.entries.retain(|_, (expires, _)| *expires >= at);
    }
}
