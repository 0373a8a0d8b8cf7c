//! How a client (the CLI, a worker, a test) reaches the operator: one rule for every caller.
//! `https://` URLs are the norm and trust exactly the operator's CA certificate (the PEM the
//! operator writes to `DATA_DIR/ca.pem`); the server's name is checked against the URL's host
//! (a DNS name or an IP address). `http://` (plain TCP: tokens cross in clear) is refused
//! unless the caller set an option whose name says it is insecure.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Why no endpoint could be made for an operator URL.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The URL does not parse or has no host.
    #[error("operator URL {url:?} is not a URL such as https://127.0.0.1:7100")]
    BadUrl {
        /// The URL as given.
        url: String,
    },
    /// The scheme is neither `https` nor `http`.
    #[error("operator URL {url:?}: the scheme must be https (or http with an insecure option)")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// An `https` URL without the operator's CA certificate.
    #[error(
        "operator URL {url:?} needs the operator's CA certificate to check it: --ca-file \
         DATA_DIR/ca.pem (or TESSERA_CA_FILE)"
    )]
    NoCa {
        /// The URL as given.
        url: String,
    },
    /// An `http` URL without the insecure option.
    #[error(
        "operator URL {url:?} is plain TCP, where tokens would cross in clear: use https:// \
         with the operator's CA (--ca-file), or the insecure plaintext option for tests"
    )]
    Plaintext {
        /// The URL as given.
        url: String,
    },
    /// The CA PEM holds no certificate.
    #[error("the operator's CA file holds no PEM certificate")]
    BadCa,
}

/// An endpoint for the operator at `url`: TLS trusting only `ca_pem` for `https`, plain TCP
/// for `http` only when `insecure_plaintext`. Connect timeout 5 s, `TCP_NODELAY`.
///
/// Errors: [`ChannelError`] (each message names the URL and what to do).
pub fn operator_endpoint(
    url: &str,
    ca_pem: Option<&str>,
    insecure_plaintext: bool,
) -> Result<Endpoint, ChannelError> {
    let bad = || ChannelError::BadUrl {
        url: url.to_owned(),
    };
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad())?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|_| bad())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    match uri.scheme_str() {
        Some("https") => {
            let ca = ca_pem.ok_or_else(|| ChannelError::NoCa {
                url: url.to_owned(),
            })?;
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ChannelError::BadCa);
            }
            endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .map_err(|_| ChannelError::BadCa)
        }
        Some("http") if insecure_plaintext => Ok(endpoint),
        Some("http") => Err(ChannelError::Plaintext {
            url: url.to_owned(),
        }),
        _ => Err(ChannelError::Scheme {
            url: url.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_needs_the_insecure_option_and_https_needs_the_ca() {
        assert!(matches!(
            operator_endpoint("http://127.0.0.1:7100", None, false),
            Err(ChannelError::Plaintext { .. })
        ));
        assert!(operator_endpoint("http://127.0.0.1:7100", None, true).is_ok());
        assert!(matches!(
            operator_endpoint("https://127.0.0.1:7100", None, true),
            Err(ChannelError::NoCa { .. })
        ));
        assert!(matches!(
            operator_endpoint("https://127.0.0.1:7100", Some("not a pem"), false),
            Err(ChannelError::BadCa)
        ));
        for bad in [
            "",
            "127.0.0.1:7100",
            "https://",
            "ftp://h:1",
            "https://exa mple",
        ] {
            assert!(
                matches!(
                    operator_endpoint(bad, Some("x"), true),
                    Err(ChannelError::BadUrl { .. } | ChannelError::Scheme { .. })
                ),
                "{bad}"
            );
        }
    }
}
