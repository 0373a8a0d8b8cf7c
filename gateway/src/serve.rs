//! Serving the operator's router ([`crate::http::router`]: gRPC and the HTTP routes) on a TCP
//! listener: over TLS (rustls; ALPN `h2` and `http/1.1`, so gRPC clients, browsers and plain
//! HTTP/1.1 clients such as Python's all negotiate) or, only under an option whose name says it
//! is insecure, over plain TCP. Every accepted socket gets `TCP_NODELAY` (small unary calls
//! otherwise wait for the peer's delayed ACK). HTTP/1.1 and HTTP/2 share the port (hyper-util's
//! automatic connection builder).
//!
//! Bounded: at most [`CONNECTIONS_MAX`] connections at once (further ones wait in the kernel's
//! backlog), and a TLS handshake must finish within [`HANDSHAKE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// Most connections served at once.
pub const CONNECTIONS_MAX: usize = 4096;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocols offered in ALPN, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The certificate chain PEM holds no certificate or cannot be parsed.
    #[error("the server certificate PEM holds no readable certificate")]
    Certificate,
    /// The private key PEM holds no key or cannot be parsed.
    #[error("the server key PEM holds no readable private key")]
    Key,
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the server certificate and key are refused: {0}")]
    Refused(#[from] rustls::Error),
}

/// A server TLS configuration: the certificate chain and its key, no client authentication
/// (callers authenticate with their `X-Auth-Token`).
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(<certificate and key>)")
    }
}

impl ServerTls {
    /// A configuration serving `cert_chain_pem` (leaf first) with `key_pem` (PKCS #8, SEC1 or
    /// PKCS #1 PEM), TLS 1.2 and 1.3 with the `ring` provider.
    ///
    /// Errors: [`TlsConfigError`].
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, TlsConfigError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsConfigError::Certificate)?;
        if certs.is_empty() {
            return Err(TlsConfigError::Certificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsConfigError::Key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self(Arc::new(config)))
    }
}

/// Serves `router` on `listener` until the task is dropped or aborted: over TLS with `tls`,
/// or over plain TCP when it is `None` (insecure: tokens cross in clear; for tests).
///
/// Never returns an error for one connection (a failed handshake, a reset, a malformed
/// request are logged at debug level and end that connection only); a failing `accept` (file
/// descriptors exhausted) is logged and retried after a pause.
pub async fn serve(listener: TcpListener, router: axum::Router, tls: Option<ServerTls>) {
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.0));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %remote, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = TowerToHyperService::new(router);
            let builder = auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await
                }
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
        });
    }
}
