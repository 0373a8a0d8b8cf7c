//! The trade flow's typed errors.
//!
//! A request error names the field (with the exact T/AI 123.12 name) so that the REST facade
//! can answer `400` with a precise message; a licence error says which check failed and
//! nothing about keys.

/// What went wrong in a trade request or with a licence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TradeError {
    /// A required field (T/AI 123.12 name) is absent or empty.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field is present but not acceptable.
    #[error("field `{field}`: {reason}")]
    InvalidField {
        /// The T/AI 123.12 field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A body or document is not the expected JSON shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A licence's `digital_signature` does not verify under the licensor's key.
    #[error("the licence's digital_signature does not verify under the licensor's public key")]
    BadSignature,
    /// A licence's `digital_watermarking` does not verify under the licensor's key.
    #[error("the licence's digital_watermarking does not verify under the licensor's public key")]
    BadWatermark,
    /// A sealed key or data package does not open (wrong key, altered bytes or context).
    #[error("the sealed {0} does not open with this key")]
    OpenFailed(&'static str),
    /// Sealing failed (HPKE reported an error; not expected with valid keys).
    #[error("sealing failed: {0}")]
    SealFailed(String),
}

impl TradeError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        TradeError::InvalidField {
            field,
            reason: reason.into(),
        }
    }
}
