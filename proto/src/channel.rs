//! How a client (the CLI, a worker, a test) reaches the operator: one rule for every caller.
//! `https://` URLs are the norm and trust exactly the operator's CA certificate (the PEM the
//! operator writes to `DATA_DIR/ca.pem`); the server's name is checked against the URL's host
//! (a DNS name or an IP address). `http://` (plain TCP: tokens cross in clear) is refused
//! unless the caller set an option whose name says it is insecure.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Longest a connection to the operator may take, TCP and TLS handshake together.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

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
         with the operator's CA (--ca-file), or --insecure-plaintext (a worker: \
         --insecure-plaintext-operator) for tests only"
    )]
    Plaintext {
        /// The URL as given.
        url: String,
    },
    /// The CA PEM holds no certificate.
    #[error("the operator's CA file holds no PEM certificate")]
    BadCa,
    /// The TLS settings could not be made for this URL.
    #[error("TLS settings for operator URL {url:?}: {detail}")]
    Tls {
        /// The URL as given.
        url: String,
        /// What failed.
        detail: String,
    },
}

/// Why a connection to the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing completed within [`CONNECT_DEADLINE`] (e.g. a listener that never answers the
    /// TLS handshake).
    #[error(
        "the operator at {url} did not complete a connection within {} s (is something else \
         listening there?)",
        CONNECT_DEADLINE.as_secs()
    )]
    Timeout {
        /// The URL.
        url: String,
    },
    /// The server's TLS certificate does not chain to the CA this client trusts.
    #[error(
        "the operator at {url} presented a certificate that does not chain to the CA file given \
         ({detail}): use the CA of that operator, its DATA_DIR/ca.pem"
    )]
    Untrusted {
        /// The URL.
        url: String,
        /// What TLS said.
        detail: String,
    },
    /// The server does not speak TLS.
    #[error(
        "the operator at {url} does not answer in TLS ({detail}): an operator started with \
         --insecure-plaintext is reached at http:// with --insecure-plaintext (tests only)"
    )]
    NotTls {
        /// The URL.
        url: String,
        /// What TLS said.
        detail: String,
    },
    /// The operator cannot be reached (refused, unreachable, or it broke the connection).
    #[error("cannot reach the operator at {url}{hint}")]
    Unreachable {
        /// The URL.
        url: String,
        /// A hint (for a plain URL: the operator may be serving TLS).
        hint: &'static str,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl ConnectError {
    /// Whether trying again may help (the operator may come up); a certificate that is not
    /// trusted, or a server that does not speak TLS, will not change by waiting.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ConnectError::Timeout { .. } | ConnectError::Unreachable { .. }
        )
    }
}

/// What a failed TLS handshake said, if `e` is one (rustls reports it as an I/O error of kind
/// `InvalidData`), rather than a failure to reach the other side at all. Shared by every
/// tonic client of the project (the operator's, and the workers' peer links).
pub fn handshake_failure(e: &tonic::transport::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return Some(io.to_string());
        }
        source = err.source();
    }
    None
}

/// Connects `endpoint` (made by [`operator_endpoint`] for `url`) within [`CONNECT_DEADLINE`],
/// telling apart an untrusted certificate, a server without TLS, silence and unreachability.
///
/// Errors: [`ConnectError`].
pub async fn connect(endpoint: Endpoint, url: &str) -> Result<Channel, ConnectError> {
    let e = match tokio::time::timeout(CONNECT_DEADLINE, endpoint.connect()).await {
        Ok(Ok(channel)) => return Ok(channel),
        Ok(Err(e)) => e,
        Err(_) => {
            return Err(ConnectError::Timeout {
                url: url.to_owned(),
            });
        }
    };
    if let Some(detail) = handshake_failure(&e) {
        let url = url.to_owned();
        return Err(
            if detail.contains("InvalidContentType") || detail.contains("corrupt message") {
                ConnectError::NotTls { url, detail }
            } else {
                ConnectError::Untrusted { url, detail }
            },
        );
    }
    let hint = if url.starts_with("http:") {
        " (if the operator serves TLS, use https:// with its CA file)"
    } else {
        ""
    };
    Err(ConnectError::Unreachable {
        url: url.to_owned(),
        hint,
        source: e,
    })
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
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(bad());
    };
    // The operator serves at the root: a path would be silently dropped.
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad());
    }
    // An IPv6 literal is written in brackets in a URL, not in the name TLS checks.
    let server_name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
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
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(ca))
                        .domain_name(server_name),
                )
                .map_err(|e| ChannelError::Tls {
                    url: url.to_owned(),
                    detail: e.to_string(),
                })
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

    /// A real CA certificate (any will do for building an endpoint).
    fn ca() -> String {
        tessera_pki::CertificateAuthority::generate("test", 1_700_000_000)
            .expect("ca")
            .cert_pem()
            .to_owned()
    }

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
        // An IPv6 literal (its brackets are not part of the name TLS checks), a bare root.
        assert!(operator_endpoint("https://[::1]:7100", Some(&ca()), false).is_ok());
        assert!(operator_endpoint("https://127.0.0.1:7100/", Some(&ca()), false).is_ok());
        for bad in [
            "",
            "127.0.0.1:7100",
            "https://",
            "ftp://h:1",
            "https://exa mple",
            "https://127.0.0.1:7100/api",
            "https://127.0.0.1:7100/?x=1",
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
