//! Signed checkpoints of the audit chain's head: the node signs (ed25519, with its ticket key)
//! "the chain had `seq` entries and entry `seq` hashed to `head_hash`, at `at_ms`". Copies of
//! these leave the database (in job tickets, in the parties' receipts, in an auditor's export
//! file), so a chain that was later truncated or rewritten no longer matches a head the node
//! signed, and `tessera audit verify` names it.
//!
//! The signed message is a fixed binary encoding with its own domain tag
//! ([`HEAD_DOMAIN`]), so a head signature can never be mistaken for a ticket signature (a
//! ticket signs JSON, which starts with `{`).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain tag that starts every signed head message.
pub const HEAD_DOMAIN: &[u8] = b"tessera/audit-head/v1\0";

/// Why a signed head was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    /// A field does not parse (hash not 32 bytes of hex, signature not 64 bytes of hex, key
    /// not a valid ed25519 public key).
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// The signature does not verify under the node's key.
    #[error("checkpoint of entry {seq} is not signed by the node's key {key_hex}")]
    BadSignature {
        /// The entry the checkpoint names.
        seq: u64,
        /// The key it was checked against (hex).
        key_hex: String,
    },
}

/// A head of the audit chain with the node's signature: the receipt form carried by tickets,
/// API answers and export files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedHead {
    /// Number of entries in the chain at the checkpoint (= sequence number of its last entry,
    /// from 1).
    pub seq: u64,
    /// Hex SHA-256 of entry `seq` (64 hex digits).
    pub head_hash: String,
    /// When the node signed it, ms since epoch (UTC).
    pub at_ms: i64,
    /// Hex ed25519 signature (128 hex digits) over [`SignedHead::message`].
    pub signature_hex: String,
}

impl SignedHead {
    /// The exact bytes signed: [`HEAD_DOMAIN`] ‖ `seq` (u64 big-endian) ‖ the 32 hash bytes ‖
    /// `at_ms` (i64 big-endian).
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] if `head_hash` is not 32 bytes of hex.
    pub fn message(seq: u64, head_hash: &str, at_ms: i64) -> Result<Vec<u8>, CheckpointError> {
        let hash = hex::decode(head_hash)
            .ok()
            .filter(|h| h.len() == 32)
            .ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "head hash of entry {seq} is not 32 bytes of hex"
                ))
            })?;
        let mut m = Vec::with_capacity(HEAD_DOMAIN.len() + 8 + 32 + 8);
        m.extend_from_slice(HEAD_DOMAIN);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&hash);
        m.extend_from_slice(&at_ms.to_be_bytes());
        Ok(m)
    }
}

/// The node's public key, as a checker of signed heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    key: VerifyingKey,
}

impl NodeKey {
    /// Parses a 32-byte ed25519 public key given as 64 hex digits.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] for anything else.
    pub fn from_hex(key_hex: &str) -> Result<Self, CheckpointError> {
        let bytes: [u8; 32] = hex::decode(key_hex.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| CheckpointError::Malformed("node key must be 32 bytes of hex".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|e| CheckpointError::Malformed(format!("node key invalid: {e}")))?;
        Ok(Self { key })
    }

    /// The checker for an already parsed key.
    pub(crate) fn from_key(key: VerifyingKey) -> Self {
        Self { key }
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// Checks that `head` was signed by this key.
    ///
    /// # Errors
    /// [`CheckpointError::Malformed`] for a hash or signature that does not parse,
    /// [`CheckpointError::BadSignature`] for a signature by another key or over other fields.
    pub fn verify(&self, head: &SignedHead) -> Result<(), CheckpointError> {
        let message = SignedHead::message(head.seq, &head.head_hash, head.at_ms)?;
        let sig: [u8; 64] = hex::decode(&head.signature_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                CheckpointError::Malformed(format!(
                    "signature of the checkpoint of entry {} is not 64 bytes of hex",
                    head.seq
                ))
            })?;
        self.key
            .verify(&message, &Signature::from_bytes(&sig))
            .map_err(|_| CheckpointError::BadSignature {
                seq: head.seq,
                key_hex: self.to_hex(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::TicketSigner;
    use rand::SeedableRng;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_head_verifies_under_its_key_only_and_any_field_change_breaks_it() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let node = TicketSigner::generate(&mut rng);
        let other = TicketSigner::generate(&mut rng);
        let key = NodeKey::from_hex(&node.public_key_hex()).expect("key");
        let head = node.sign_head(7, HASH, 1_000).expect("sign");
        assert_eq!(key.verify(&head), Ok(()));

        let forged = other.sign_head(7, HASH, 1_000).expect("sign");
        assert_eq!(
            key.verify(&forged),
            Err(CheckpointError::BadSignature {
                seq: 7,
                key_hex: node.public_key_hex()
            })
        );
        for changed in [
            SignedHead {
                seq: 6,
                ..head.clone()
            },
            SignedHead {
                at_ms: 1_001,
                ..head.clone()
            },
            SignedHead {
                head_hash: HASH.replace("00112233", "00112234"),
                ..head.clone()
            },
        ] {
            assert!(matches!(
                key.verify(&changed),
                Err(CheckpointError::BadSignature { .. })
            ));
        }
        let garbled = SignedHead {
            signature_hex: "zz".into(),
            ..head.clone()
        };
        assert!(matches!(
            key.verify(&garbled),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(node.sign_head(1, "abcd", 0).is_err());
        assert!(NodeKey::from_hex("0011").is_err());
    }
}
