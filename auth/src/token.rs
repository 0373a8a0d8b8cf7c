//! API tokens and worker registration tokens: 256-bit random secrets, shown once, stored as a
//! SHA-256 hash (issue "Who is calling", item 1).
//!
//! Text form: `tsk_<id>_<secret>` for API tokens, `tsr_<id>_<secret>` for registration
//! tokens and `tsw_<id>_<secret>` for worker credentials, where `<id>` is 16 lowercase hex
//! digits (a public, random 64-bit id by which the store finds the token) and `<secret>` 64
//! lowercase hex digits (the 256-bit secret). Only `SHA-256(secret)` is stored; a presented
//! token is checked by recomputing it and comparing in constant time. The secret never
//! appears in `Debug` output.

use std::fmt;

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Bytes of a token's public id.
pub const TOKEN_ID_BYTES: usize = 8;
/// Bytes of a token's secret (256 bits).
pub const TOKEN_SECRET_BYTES: usize = 32;

/// What a token is for; each kind has its own text prefix, so one can never be used as the
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// An API token: authenticates a user on every call (`tsk_`).
    Api,
    /// A worker registration token, issued to a party's owner (`tsr_`).
    Registration,
    /// A worker's credential, issued to one worker id of one party at its registration
    /// (`tsw_`); revoked when that id registers again with a registration token.
    Worker,
}

impl TokenKind {
    /// The text prefix, with its trailing underscore.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Api => "tsk_",
            TokenKind::Registration => "tsr_",
            TokenKind::Worker => "tsw_",
        }
    }

    /// The kind a presented text claims by its prefix (`None`: no known prefix).
    pub fn of_text(text: &str) -> Option<TokenKind> {
        let t = text.trim_start();
        [TokenKind::Api, TokenKind::Registration, TokenKind::Worker]
            .into_iter()
            .find(|k| t.starts_with(k.prefix()))
    }

    /// The lowercase name stored and shown (`api`, `registration`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Registration => "registration",
            TokenKind::Worker => "worker",
        }
    }
}

/// A token as presented or as issued: its kind, public id and secret. `Debug` shows the id
/// only; the secret is wiped on drop.
pub struct Token {
    kind: TokenKind,
    id: String,
    secret: Zeroizing<[u8; TOKEN_SECRET_BYTES]>,
}

/// A token text that is not a well-formed token of the expected kind. Deliberately without
/// detail: it goes back to an unauthenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct MalformedToken;

impl Token {
    /// A fresh token of `kind` from `rng` (the operator passes the OS RNG).
    pub fn generate<R: CryptoRngCore + ?Sized>(kind: TokenKind, rng: &mut R) -> Self {
        let mut id = [0u8; TOKEN_ID_BYTES];
        rng.fill_bytes(&mut id);
        let mut secret = Zeroizing::new([0u8; TOKEN_SECRET_BYTES]);
        rng.fill_bytes(secret.as_mut());
        Token {
            kind,
            id: hex::encode(id),
            secret,
        }
    }

    /// Parses a presented token of `kind` (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`MalformedToken`] for anything else: another kind's prefix, wrong lengths, upper-case
    /// or non-hex digits.
    pub fn parse(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        let rest = text
            .trim()
            .strip_prefix(kind.prefix())
            .ok_or(MalformedToken)?;
        let (id, secret_hex) = rest.split_once('_').ok_or(MalformedToken)?;
        let lower_hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !lower_hex(id, 2 * TOKEN_ID_BYTES) || !lower_hex(secret_hex, 2 * TOKEN_SECRET_BYTES) {
            return Err(MalformedToken);
        }
        let mut secret = Zeroizing::new([0u8; TOKEN_SECRET_BYTES]);
        hex::decode_to_slice(secret_hex, secret.as_mut()).map_err(|_| MalformedToken)?;
        Ok(Token {
            kind,
            id: id.to_owned(),
            secret,
        })
    }

    /// The token's kind.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The public id by which the store finds the token.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `SHA-256(secret)`, the only form of the secret that is stored.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_ref()).into()
    }

    /// Whether this token's secret hashes to `stored` (constant time).
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.secret_hash().ct_eq(stored))
    }

    /// The full text, to show once to whoever the token is issued to. Never log it.
    pub fn reveal(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}{}_{}",
            self.kind.prefix(),
            self.id,
            hex::encode(self.secret.as_ref())
        ))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_token_round_trips_through_its_text_and_matches_only_its_hash() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t = Token::generate(TokenKind::Api, &mut rng);
        let text = t.reveal();
        assert!(text.starts_with("tsk_"));
        assert_eq!(text.len(), 4 + 16 + 1 + 64);
        let back = Token::parse(TokenKind::Api, &format!(" {}\n", text.as_str())).expect("parse");
        assert_eq!(back.id(), t.id());
        assert!(back.matches(&t.secret_hash()));
        let other = Token::generate(TokenKind::Api, &mut rng);
        assert!(!back.matches(&other.secret_hash()));
        assert!(!back.matches(&[0u8; 31]));
        let dbg = format!("{t:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains(&text[21..]),
            "{dbg}"
        );
    }

    #[test]
    fn malformed_and_other_kind_tokens_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let reg = Token::generate(TokenKind::Registration, &mut rng).reveal();
        assert!(Token::parse(TokenKind::Registration, &reg).is_ok());
        assert_eq!(
            Token::parse(TokenKind::Api, &reg).err(),
            Some(MalformedToken)
        );
        let api = Token::generate(TokenKind::Api, &mut rng).reveal();
        for bad in [
            String::new(),
            "tsk_".into(),
            api.to_uppercase(),
            api[..api.len() - 1].to_string(),
            format!("{}0", api.as_str()),
            api.replacen('_', "-", 2),
            format!("tsk_{}", "g".repeat(81)),
            "tsk_0123456789abcdef_".into(),
        ] {
            assert!(Token::parse(TokenKind::Api, &bad).is_err(), "{bad}");
        }
    }
}
