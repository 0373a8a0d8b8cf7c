//! The caller's token on the wire: the T/AI 123.12 request header `X-Auth-Token`, sent as gRPC
//! metadata on every call by [`TokenHeader`], the one interceptor clients (the CLI, workers,
//! tests) share. The header's value never shows in `Debug` output.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

/// The metadata key carrying the caller's token (`X-Auth-Token`; gRPC metadata keys are
/// lower case).
pub const TOKEN_METADATA: &str = "x-auth-token";

/// Adds a token (if any) to every call.
#[derive(Clone, Default)]
pub struct TokenHeader(Option<MetadataValue<Ascii>>);

/// A token text a header cannot carry (not visible ASCII).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token holds characters a header cannot carry")]
pub struct UnsendableToken;

impl TokenHeader {
    /// No token: the call is anonymous (the operator answers `UNAUTHENTICATED`).
    pub fn none() -> Self {
        TokenHeader(None)
    }

    /// Sends `token` (surrounding whitespace removed).
    ///
    /// # Errors
    /// [`UnsendableToken`] for text a header cannot carry.
    pub fn new(token: &str) -> Result<Self, UnsendableToken> {
        MetadataValue::try_from(token.trim())
            .map(|v| TokenHeader(Some(v)))
            .map_err(|_| UnsendableToken)
    }

    /// Whether a token is sent.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for TokenHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TokenHeader(<redacted>)"
        } else {
            "TokenHeader(none)"
        })
    }
}

impl Interceptor for TokenHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(TOKEN_METADATA, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_the_token_and_debug_hides_it() {
        let mut h = TokenHeader::new(" tsk_secret_value\n").expect("ascii");
        assert!(!format!("{h:?}").contains("secret"));
        let req = h.call(tonic::Request::new(())).expect("call");
        assert_eq!(
            req.metadata()
                .get(TOKEN_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("tsk_secret_value")
        );
        assert!(TokenHeader::new("tsk_a\nb").is_err());
        let req = TokenHeader::none()
            .call(tonic::Request::new(()))
            .expect("call");
        assert!(req.metadata().get(TOKEN_METADATA).is_none());
    }
}
