//! Secrets and the key schedule: self-mask seeds, X25519 key pairs, the pairwise mask seeds and
//! share-encryption keys derived from X25519 + HKDF-SHA256, and AES-128-GCM for the shares.
//!
//! Every secret type zeroizes on drop and prints as `<redacted>` in `Debug`.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{ClientId, FlError};

const PAIRWISE_INFO: &[u8] = b"tessera-fl/secagg+/v1/pairwise-mask";
const SHARE_KEY_INFO: &[u8] = b"tessera-fl/secagg+/v1/share-encryption";
const SEED_COMMIT_DOMAIN: &[u8] = b"tessera-fl/secagg+/v1/self-mask-commitment";

/// A 128-bit PRG seed (an AES-128 key for [`crate::prg`]): a client's self-mask seed `b_u` or a
/// pairwise mask seed `s_{u,v}`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Seed([u8; 16]);

impl Seed {
    /// A fresh uniformly random seed.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Seed {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        Seed(b)
    }
    /// A seed from its bytes.
    pub fn from_bytes(b: [u8; 16]) -> Seed {
        Seed(b)
    }
    /// The seed's bytes (secret).
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// An X25519 key pair: a client's encryption pair `(c_pk, c_sk)` or masking pair `(s_pk, s_sk)`.
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public.as_bytes())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyPair {
    /// A fresh key pair.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> KeyPair {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        let kp = KeyPair::from_secret_bytes(b);
        b.zeroize();
        kp
    }
    /// The pair whose secret is these 32 bytes (clamped by X25519 when used).
    pub fn from_secret_bytes(b: [u8; 32]) -> KeyPair {
        let secret = StaticSecret::from(b);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }
    /// The public key's bytes.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }
    /// The secret's 32 bytes (secret; what is Shamir-shared for the masking pair).
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
    /// X25519 with a peer's public key; a non-contributory result (a low-order peer key) is an
    /// error, so a peer cannot force a known shared secret.
    fn agree(
        &self,
        peer: &[u8; 32],
        from: ClientId,
    ) -> Result<x25519_dalek::SharedSecret, FlError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        if !shared.was_contributory() {
            return Err(FlError::MalformedMessage {
                from: crate::Peer::Client(from),
                reason: "low-order X25519 public key".into(),
            });
        }
        Ok(shared)
    }
}

/// Whether a peer's X25519 public key is usable: not one of the low-order points, on which any
/// key agreement gives the all-zero secret. Checked by X25519 with a fixed secret (clamping
/// makes every scalar a multiple of the cofactor, so a low-order point always gives zero).
pub(crate) fn is_contributory(public: &[u8; 32]) -> bool {
    StaticSecret::from([0x42u8; 32])
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

fn hkdf16(session: &[u8; 32], ikm: &[u8], info: &[u8], u: ClientId, v: ClientId) -> [u8; 16] {
    let (lo, hi) = if u.0 <= v.0 { (u.0, v.0) } else { (v.0, u.0) };
    let hk = Hkdf::<Sha256>::new(Some(session), ikm);
    let mut info_full = Vec::with_capacity(info.len() + 8);
    info_full.extend_from_slice(info);
    info_full.extend_from_slice(&lo.to_be_bytes());
    info_full.extend_from_slice(&hi.to_be_bytes());
    let mut out = [0u8; 16];
    // 16 bytes is far below HKDF-SHA256's 255·32-byte limit: expand cannot fail here.
    if hk.expand(&info_full, &mut out).is_err() {
        out = [0u8; 16];
    }
    out
}

/// The pairwise mask seed `s_{u,v}` = HKDF-SHA256(salt = session id, ikm = X25519(s_sk_u,
/// s_pk_v), info = label ‖ min(u,v) ‖ max(u,v)), 16 bytes; symmetric in `u` and `v`
/// (Bell et al. CCS 2020, Alg. 2, "masked input collection").
pub(crate) fn pairwise_seed(
    session: &[u8; 32],
    own: &KeyPair,
    own_id: ClientId,
    peer_public: &[u8; 32],
    peer_id: ClientId,
) -> Result<Seed, FlError> {
    let dh = own.agree(peer_public, peer_id)?;
    Ok(Seed(hkdf16(
        session,
        dh.as_bytes(),
        PAIRWISE_INFO,
        own_id,
        peer_id,
    )))
}

/// The commitment to a self-mask seed that a client advertises with its keys:
/// SHA-256(label ‖ session ‖ id ‖ b_u). The aggregator checks a reconstructed seed against it.
pub(crate) fn seed_commitment(session: &[u8; 32], id: ClientId, seed: &Seed) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEED_COMMIT_DOMAIN);
    h.update(session);
    h.update(id.0.to_be_bytes());
    h.update(seed.expose());
    h.finalize().into()
}

/// The AES-128-GCM key for shares between `u` and `v` (HKDF of X25519(c_sk_u, c_pk_v)), with the
/// direction in the nonce so the two directions never reuse a nonce under the shared key.
pub(crate) struct ShareCipher {
    aead: Aes128Gcm,
    session: [u8; 32],
}

impl std::fmt::Debug for ShareCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareCipher(<redacted>)")
    }
}

impl ShareCipher {
    pub(crate) fn new(
        session: &[u8; 32],
        own: &KeyPair,
        own_id: ClientId,
        peer_public: &[u8; 32],
        peer_id: ClientId,
    ) -> Result<ShareCipher, FlError> {
        let dh = own.agree(peer_public, peer_id)?;
        let mut k = hkdf16(session, dh.as_bytes(), SHARE_KEY_INFO, own_id, peer_id);
        let aead = Aes128Gcm::new_from_slice(&k)
            .map_err(|_| FlError::Config("AES-GCM key length".into()))?;
        k.zeroize();
        Ok(ShareCipher {
            aead,
            session: *session,
        })
    }

    fn nonce(from: ClientId, to: ClientId) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&from.0.to_be_bytes());
        n[4..8].copy_from_slice(&to.0.to_be_bytes());
        n
    }

    /// Encrypts the share plaintext from `from` to `to` (associated data: the session id).
    pub(crate) fn seal(
        &self,
        from: ClientId,
        to: ClientId,
        plain: &[u8],
    ) -> Result<Vec<u8>, FlError> {
        let nonce = Self::nonce(from, to);
        self.aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &self.session,
                },
            )
            .map_err(|_| FlError::ShareDecryption { from, to })
    }

    /// Decrypts a share from `from` to `to`; any tampering is [`FlError::ShareDecryption`].
    pub(crate) fn open(&self, from: ClientId, to: ClientId, ct: &[u8]) -> Result<Vec<u8>, FlError> {
        let nonce = Self::nonce(from, to);
        self.aead
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ct,
                    aad: &self.session,
                },
            )
            .map_err(|_| FlError::ShareDecryption { from, to })
    }
}
