//! The gRPC implementation of [`Link`]: one `Peer.Exchange` bidirectional stream per task pair.
//!
//! The side that dials sends the session id (a random secret that only the two workers'
//! tickets carry) in the `x-tessera-session` metadata; the listening worker's [`PeerHub`]
//! hands the stream to the task waiting for that session, whichever of the two arrives first.
//! Frames over the bound are refused by tonic's decoder and again by the link.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use tessera_core::{Link, LinkError, LinkStats};
use tessera_pki::PeerIdentity;
use tessera_proto::link::{FRAME_OVERHEAD_BYTES, FrameLink, Inbound, status_to_link};
use tessera_proto::v1::Frame;
use tessera_proto::v1::peer_client::PeerClient;
use tessera_proto::v1::peer_server::Peer;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Metadata key carrying the session id.
pub const SESSION_HEADER: &str = "x-tessera-session";
/// Sessions dialled in by peers that may wait in the hub for their task at once (the tasks
/// of this worker waiting for their peers are not counted: there is one per task the
/// operator assigned, however many).
pub const PENDING_SESSIONS_MAX: usize = 256;

/// A peer link over a gRPC stream (a [`FrameLink`] on the `Peer.Exchange` stream).
pub struct GrpcLink(FrameLink);

impl std::fmt::Debug for GrpcLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GrpcLink").field(&self.0).finish()
    }
}

impl GrpcLink {
    fn new(
        tx: mpsc::Sender<Frame>,
        rx: Inbound,
        frame_bytes_max: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self(FrameLink::new(tx, rx, frame_bytes_max, idle_timeout))
    }

    /// Dials `addr` over plain TCP (an insecure option, for benches and tests) and opens the
    /// session's stream, retrying until `connect_timeout`.
    pub async fn dial(
        addr: &str,
        session_id: &str,
        frame_bytes_max: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, LinkError> {
        Self::dial_with(
            addr,
            session_id,
            frame_bytes_max,
            idle_timeout,
            connect_timeout,
            None,
        )
        .await
    }

    /// Dials `addr` over TLS and opens the session's stream: the peer must present a
    /// certificate of the operator's CA naming `expected` (its party and worker id, from the
    /// ticket), and this side presents its own.
    pub async fn dial_tls(
        addr: &str,
        session_id: &str,
        frame_bytes_max: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        tls: &PeerTls,
        expected: &PeerIdentity,
    ) -> Result<Self, LinkError> {
        Self::dial_with(
            addr,
            session_id,
            frame_bytes_max,
            idle_timeout,
            connect_timeout,
            Some((tls, expected)),
        )
        .await
    }

    /// Dials `addr` over TLS as [`GrpcLink::dial_tls`] does, on a connection kept by
    /// `credentials` for later links to the same peer (`addr` and `expected`): one TLS
    /// handshake serves many tasks' sessions, each its own `Peer.Exchange` stream on the
    /// HTTP/2 connection (see [`PeerCredentials`] for how long a connection is kept). A kept
    /// connection that fails before the peer answered (the peer restarted, the connection
    /// broke) is dropped and the link dialled afresh, once; a refusal from the peer's hub is
    /// returned as is.
    ///
    /// # Errors
    /// As [`GrpcLink::dial_tls`].
    #[allow(clippy::too_many_arguments)]
    pub async fn dial_tls_kept(
        addr: &str,
        session_id: &str,
        frame_bytes_max: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        credentials: &PeerCredentials,
        expected: &PeerIdentity,
    ) -> Result<Self, LinkError> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let key = (addr.to_string(), expected.dns_name());
        if let Some(channel) = credentials.kept_channel(&key) {
            match Self::open_session(
                channel,
                addr,
                session_id,
                frame_bytes_max,
                idle_timeout,
                connect_timeout,
                deadline,
            )
            .await
            {
                Ok(link) => return Ok(link),
                Err(OpenError::Refused(e)) => return Err(e),
                Err(OpenError::Broken(e)) => {
                    tracing::debug!(error = %e, %addr, "a kept peer connection failed; dialling afresh");
                    credentials.forget_channel(&key);
                }
            }
        }
        let tls = credentials.current();
        let channel = Self::connect(addr, deadline, Some((&tls, expected))).await?;
        let link = Self::open_session(
            channel.clone(),
            addr,
            session_id,
            frame_bytes_max,
            idle_timeout,
            connect_timeout,
            deadline,
        )
        .await
        .map_err(OpenError::into_link)?;
        credentials.keep_channel(key, channel, &tls);
        Ok(link)
    }

    async fn dial_with(
        addr: &str,
        session_id: &str,
        frame_bytes_max: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        tls: Option<(&PeerTls, &PeerIdentity)>,
    ) -> Result<Self, LinkError> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let channel = Self::connect(addr, deadline, tls).await?;
        Self::open_session(
            channel,
            addr,
            session_id,
            frame_bytes_max,
            idle_timeout,
            connect_timeout,
            deadline,
        )
        .await
        .map_err(OpenError::into_link)
    }

    /// Connects to `addr` (with TLS: presenting this side's certificate and requiring one
    /// naming `expected`), retrying every 200 ms until `deadline` while the peer does not
    /// listen yet (a failed TLS handshake is not retried).
    async fn connect(
        addr: &str,
        deadline: tokio::time::Instant,
        tls: Option<(&PeerTls, &PeerIdentity)>,
    ) -> Result<tonic::transport::Channel, LinkError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{addr}");
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| LinkError::Transport(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some((tls, expected)) = tls {
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tls.ca())
                        .identity(tls.identity())
                        .domain_name(expected.dns_name()),
                )
                .map_err(|e| LinkError::Transport(format!("peer TLS settings: {e}")))?;
        }
        // One attempt every 200 ms until `connect_timeout` has passed.
        (|| endpoint.connect())
            .retry(
                ConstantBuilder::new()
                    .with_delay(Duration::from_millis(200))
                    .without_max_times(),
            )
            .sleep(tokio::time::sleep)
            // A peer not listening yet is worth another attempt; a failed TLS handshake is not.
            .when(|e| !handshake_failed(e) && tokio::time::Instant::now() < deadline)
            .await
            .map_err(|e| {
                if handshake_failed(&e) {
                    LinkError::Transport(format!(
                        "TLS handshake with peer {addr} failed (is it running \
                         --insecure-plaintext-peer, or does its certificate name another worker \
                         than the ticket?): {}",
                        chain(&e)
                    ))
                } else {
                    LinkError::PeerGone(format!("cannot reach peer {addr}: {}", chain(&e)))
                }
            })
    }

    /// Opens the session's `Peer.Exchange` stream on `channel`.
    async fn open_session(
        channel: tonic::transport::Channel,
        addr: &str,
        session_id: &str,
        frame_bytes_max: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Self, OpenError> {
        let limit = frame_bytes_max + FRAME_OVERHEAD_BYTES;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let value: tonic::metadata::MetadataValue<_> = session_id.parse().map_err(|_| {
            OpenError::Refused(LinkError::Transport(
                "session id is not valid metadata".into(),
            ))
        })?;
        // A hub full of sessions nobody claimed yet (its worker is behind on its tasks) says
        // so with `resource_exhausted`: this side waits and asks again until the connect
        // window closes, as it would for a peer not listening yet.
        let mut pause = Duration::from_millis(20);
        loop {
            let (tx, rx) = mpsc::channel(tessera_core::limits::LINK_QUEUE_FRAMES);
            let mut req = Request::new(ReceiverStream::new(rx));
            req.metadata_mut().insert(SESSION_HEADER, value.clone());
            // The peer answers at once (its hub takes the stream whether or not its task
            // waits yet); a peer that accepted the connection but never answers is gone.
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_secs(1));
            let answer = tokio::time::timeout(left, client.exchange(req))
                .await
                .map_err(|_| {
                    OpenError::Broken(LinkError::PeerGone(format!(
                        "peer {addr} did not answer within {} ms",
                        connect_timeout.as_millis()
                    )))
                })?;
            match answer {
                Ok(resp) => {
                    return Ok(Self::new(
                        tx,
                        resp.into_inner().boxed(),
                        frame_bytes_max,
                        idle_timeout,
                    ));
                }
                Err(s)
                    if s.code() == tonic::Code::ResourceExhausted
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(s) => {
                    return Err(match status_to_link(&s) {
                        e @ LinkError::PeerGone(_) => OpenError::Broken(e),
                        e => OpenError::Refused(e),
                    });
                }
            }
        }
    }
}

/// Why a session's stream did not open.
enum OpenError {
    /// The peer's hub answered with a refusal (another try on a new connection would get the
    /// same).
    Refused(LinkError),
    /// No answer: the connection broke, or the peer is gone.
    Broken(LinkError),
}

impl OpenError {
    fn into_link(self) -> LinkError {
        match self {
            Self::Refused(e) | Self::Broken(e) => e,
        }
    }
}

#[async_trait]
impl Link for GrpcLink {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        self.0.send(frame).await
    }

    async fn recv(&self) -> Result<Bytes, LinkError> {
        self.0.recv().await
    }

    fn frame_bytes_max(&self) -> usize {
        self.0.frame_bytes_max()
    }

    fn stats(&self) -> LinkStats {
        self.0.stats()
    }
}

/// Whether a connection attempt failed in the TLS handshake, not for want of a listener.
fn handshake_failed(e: &tonic::transport::Error) -> bool {
    tessera_proto::channel::handshake_failure(e).is_some()
}

/// An error with its causes, `: `-joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// A worker's TLS material for its peer links: the operator's CA certificate, the worker's
/// own certificate (issued at registration, naming its party and id) and its private key.
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct PeerTls {
    /// The operator's CA certificate (PEM).
    pub ca_pem: String,
    /// This worker's certificate (PEM).
    pub cert_pem: String,
    /// This worker's private key (PEM).
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    fn ca(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(&self.ca_pem)
    }

    fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert_pem, self.key_pem.as_bytes())
    }
}

/// A peer as its certificate names it (`None` on a plain link).
type Presented = Option<PeerIdentity>;

enum Slot {
    /// A task waits for the peer its ticket names (`None`: any, on a plain link).
    Waiting(oneshot::Sender<GrpcLink>, Option<PeerIdentity>),
    Arrived(GrpcLink, tokio::time::Instant, Presented),
}

/// Matches incoming peer streams with the tasks waiting for them; also the `Peer` service.
/// With TLS, a stream is handed only to the task whose ticket names the worker the dialer's
/// certificate names.
#[derive(Clone)]
pub struct PeerHub {
    slots: Arc<std::sync::Mutex<HashMap<String, Slot>>>,
    frame_bytes_max: usize,
    idle_timeout: Duration,
    /// Streams without a client certificate of the operator's CA are refused.
    require_identity: bool,
}

impl std::fmt::Debug for PeerHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHub")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

impl PeerHub {
    /// A hub whose links carry frames up to `frame_bytes_max` and time out after
    /// `idle_timeout` without a frame.
    pub fn new(frame_bytes_max: usize, idle_timeout: Duration) -> Self {
        Self {
            slots: Arc::default(),
            frame_bytes_max,
            idle_timeout,
            require_identity: false,
        }
    }

    /// The same hub, refusing any stream whose dialer presented no certificate naming a
    /// worker (served with [`serve_peer_tls`]).
    pub fn requiring_identity(mut self) -> Self {
        self.require_identity = true;
        self
    }

    /// The tonic service for this hub.
    pub fn service(&self) -> tessera_proto::v1::peer_server::PeerServer<PeerHub> {
        let limit = self.frame_bytes_max + FRAME_OVERHEAD_BYTES;
        tessera_proto::v1::peer_server::PeerServer::new(self.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits up to `timeout` for the peer of `session_id` to dial in (any peer: plain links).
    pub async fn accept(&self, session_id: &str, timeout: Duration) -> Result<GrpcLink, LinkError> {
        self.accept_from(session_id, timeout, None).await
    }

    /// Waits up to `timeout` for the peer of `session_id` to dial in; with `expected`, only a
    /// dialer whose certificate names that party and worker is taken (another is refused).
    pub async fn accept_from(
        &self,
        session_id: &str,
        timeout: Duration,
        expected: Option<&PeerIdentity>,
    ) -> Result<GrpcLink, LinkError> {
        let rx = {
            let mut slots = self.lock();
            match slots.remove(session_id) {
                Some(Slot::Arrived(link, _, presented)) => {
                    return match expected {
                        Some(e) if presented.as_ref() != Some(e) => {
                            Err(LinkError::Transport(mismatch(e, presented.as_ref())))
                        }
                        _ => Ok(link),
                    };
                }
                _ => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(session_id.to_string(), Slot::Waiting(tx, expected.cloned()));
                    rx
                }
            }
        };
        let result = tokio::time::timeout(timeout, rx).await;
        self.lock().remove(session_id);
        match result {
            Ok(Ok(link)) => Ok(link),
            _ => Err(LinkError::PeerGone(format!(
                "peer did not connect within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    fn offer(
        &self,
        session_id: String,
        link: GrpcLink,
        presented: Presented,
    ) -> Result<(), Status> {
        let mut slots = self.lock();
        let now = tokio::time::Instant::now();
        // Arrivals nobody claimed within a minute are dropped.
        slots.retain(|_, s| match s {
            Slot::Arrived(_, at, _) => now.duration_since(*at) < Duration::from_secs(60),
            Slot::Waiting(tx, _) => !tx.is_closed(),
        });
        match slots.remove(&session_id) {
            Some(Slot::Waiting(tx, Some(expected))) if presented.as_ref() != Some(&expected) => {
                // Put the waiting task back: the rightful peer may still come.
                slots.insert(session_id, Slot::Waiting(tx, Some(expected)));
                Err(Status::permission_denied(
                    "this session's ticket names another worker than your certificate",
                ))
            }
            Some(Slot::Waiting(tx, _)) => tx
                .send(link)
                .map_err(|_| Status::unavailable("the task for this session has ended")),
            Some(Slot::Arrived(..)) => Err(Status::already_exists("session already connected")),
            // Only arrivals count: a waiting slot is one of this worker's own tasks (as many
            // as the operator assigned it), an arrival is what a peer pushed unasked.
            None if slots
                .values()
                .filter(|s| matches!(s, Slot::Arrived(..)))
                .count()
                >= PENDING_SESSIONS_MAX =>
            {
                Err(Status::resource_exhausted("too many pending peer sessions"))
            }
            None => {
                slots.insert(session_id, Slot::Arrived(link, now, presented));
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Peer for PeerHub {
    type ExchangeStream = futures::stream::BoxStream<'static, Result<Frame, Status>>;

    async fn exchange(
        &self,
        request: Request<Streaming<Frame>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let session = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .ok_or_else(|| Status::invalid_argument("missing session id"))?
            .to_string();
        // TLS has checked the chain to the operator's CA; the certificate's names say which
        // worker dials.
        let presented = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| tessera_pki::peer_identity_of(c)))
            .and_then(Result::ok);
        if self.require_identity && presented.is_none() {
            return Err(Status::unauthenticated(
                "a peer link needs a worker certificate from the operator",
            ));
        }
        let inbound = request.into_inner().boxed();
        let (tx, rx) = mpsc::channel(tessera_core::limits::LINK_QUEUE_FRAMES);
        let link = GrpcLink::new(tx, inbound, self.frame_bytes_max, self.idle_timeout);
        self.offer(session, link, presented)?;
        Ok(Response::new(ReceiverStream::new(rx).map(Ok).boxed()))
    }
}

/// Longest a dialer may take to finish its TLS handshake with the peer server.
const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why peer-link TLS material is refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerTlsError {
    /// A PEM holds nothing usable, or rustls refuses it.
    #[error("peer-link TLS: {0}")]
    Bad(String),
    /// A renewed certificate chains to another CA than the one the worker started with.
    #[error("peer-link TLS: the renewed certificate comes with another CA")]
    OtherCa,
}

/// Longest a dialled peer connection is kept for later links (from its handshake): bounds
/// how long a peer certificate checked once keeps serving new sessions.
pub const KEPT_CONNECTION_AGE_MAX: Duration = Duration::from_secs(60);

/// Most peer connections kept at once (the oldest is dropped for a new one).
pub const KEPT_CONNECTIONS_MAX: usize = 64;

/// Most links one kept connection carries; the next is dialled on a new connection. h2 ends a
/// connection (GOAWAY `ENHANCE_YOUR_CALM`, "too_many_internal_resets") once one side has
/// reset 1,024 streams on it (its guard against RUSTSEC-2024-0003), and a link ended by
/// dropping its stream is such a reset: without this bound a connection carrying thousands of
/// small jobs' links broke, failing every link open on it.
pub const KEPT_CONNECTION_SESSIONS_MAX: usize = 512;

/// A dialled connection kept for later links to the same peer.
struct KeptChannel {
    channel: tonic::transport::Channel,
    /// When its handshake was made.
    made: tokio::time::Instant,
    /// The certificate this side presented in it.
    presented: Arc<PeerTls>,
    /// Links opened on it so far (at most [`KEPT_CONNECTION_SESSIONS_MAX`]).
    sessions: usize,
}

/// The worker's current peer-link certificate and key, replaced in place when renewed
/// ([`PeerCredentials::install`]): new links (dialled or accepted) use the new certificate at
/// once; links already open keep theirs. The CA is fixed for the worker's lifetime.
///
/// It also keeps the connections this worker dialled ([`GrpcLink::dial_tls_kept`]), keyed by
/// the peer's address and the identity its certificate was checked for, each at most
/// [`KEPT_CONNECTION_AGE_MAX`] from its handshake, for at most [`KEPT_CONNECTION_SESSIONS_MAX`]
/// links, and never past a renewal of this worker's own certificate; at most
/// [`KEPT_CONNECTIONS_MAX`].
pub struct PeerCredentials {
    current: std::sync::RwLock<Arc<PeerTls>>,
    served: Arc<ServedCertificate>,
    ca_pem: String,
    kept: std::sync::Mutex<HashMap<(String, String), KeptChannel>>,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCredentials").finish_non_exhaustive()
    }
}

/// The certificate the peer server presents: read at every handshake.
#[derive(Debug)]
struct ServedCertificate(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for ServedCertificate {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.read().ok().map(|k| Arc::clone(&k))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of `tls` as rustls signs with them.
fn certified_key(tls: &PeerTls) -> Result<Arc<rustls::sign::CertifiedKey>, PeerTlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PeerTlsError::Bad(format!("certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PeerTlsError::Bad("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| PeerTlsError::Bad(format!("key PEM: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| PeerTlsError::Bad(format!("key: {e}")))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, signing)))
}

impl PeerCredentials {
    /// The credentials of a worker's registration.
    ///
    /// Errors: the certificate or key PEM is unusable.
    pub fn new(tls: PeerTls) -> Result<Self, PeerTlsError> {
        let served = Arc::new(ServedCertificate(std::sync::RwLock::new(certified_key(
            &tls,
        )?)));
        Ok(Self {
            ca_pem: tls.ca_pem.clone(),
            current: std::sync::RwLock::new(Arc::new(tls)),
            served,
            kept: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), KeptChannel>> {
        match self.kept.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The kept connection to the peer `key` (address, identity's DNS name), if one is young
    /// enough and was made with this worker's current certificate.
    fn kept_channel(&self, key: &(String, String)) -> Option<tonic::transport::Channel> {
        let current = self.current();
        let mut kept = self.kept();
        match kept.get_mut(key) {
            Some(k)
                if k.made.elapsed() < KEPT_CONNECTION_AGE_MAX
                    && k.sessions < KEPT_CONNECTION_SESSIONS_MAX
                    && Arc::ptr_eq(&k.presented, &current) =>
            {
                k.sessions += 1;
                Some(k.channel.clone())
            }
            Some(_) => {
                kept.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `channel` (just made, presenting `presented`) for later links to `key`.
    fn keep_channel(
        &self,
        key: (String, String),
        channel: tonic::transport::Channel,
        presented: &Arc<PeerTls>,
    ) {
        let mut kept = self.kept();
        kept.retain(|_, k| k.made.elapsed() < KEPT_CONNECTION_AGE_MAX);
        if kept.len() >= KEPT_CONNECTIONS_MAX
            && !kept.contains_key(&key)
            && let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, k)| k.made)
                .map(|(key, _)| key.clone())
        {
            kept.remove(&oldest);
        }
        kept.insert(
            key,
            KeptChannel {
                channel,
                made: tokio::time::Instant::now(),
                presented: Arc::clone(presented),
                sessions: 1,
            },
        );
    }

    /// Drops the kept connection to `key`.
    fn forget_channel(&self, key: &(String, String)) {
        self.kept().remove(key);
    }

    /// Peer connections kept now.
    pub fn kept_connections(&self) -> usize {
        self.kept().len()
    }

    /// The certificate and key new links use.
    pub fn current(&self) -> Arc<PeerTls> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the certificate and key (a renewal) for every new link, dialled or accepted.
    ///
    /// Errors: the material is unusable, or names another CA (nothing is replaced then).
    pub fn install(&self, tls: PeerTls) -> Result<(), PeerTlsError> {
        if tls.ca_pem.trim() != self.ca_pem.trim() {
            return Err(PeerTlsError::OtherCa);
        }
        let key = certified_key(&tls)?;
        match self.served.0.write() {
            Ok(mut k) => *k = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(tls),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(tls),
        }
        // Later links present the new certificate: none reuses a connection made with the old.
        self.kept().clear();
        Ok(())
    }

    /// The peer server's TLS configuration: the current certificate (read at each
    /// handshake), client certificates required and checked against the CA, ALPN `h2`.
    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PeerTlsError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| PeerTlsError::Bad(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PeerTlsError::Bad(format!("CA: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| PeerTlsError::Bad(format!("client verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PeerTlsError::Bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.served.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serves a hub over TLS on a bound listener until the future is dropped: this worker presents
/// its current certificate (a renewal applies to the next handshake), and every dialer must
/// present one of the operator's CA (mutual TLS). A failed or slow handshake ends that
/// connection only.
///
/// # Errors
/// The TLS settings are refused (a bad certificate or key) or the server fails.
pub async fn serve_peer_tls(
    hub: PeerHub,
    listener: tokio::net::TcpListener,
    credentials: Arc<PeerCredentials>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config()?);
    let (tx, rx) = mpsc::channel::<Result<_, std::io::Error>>(64);
    let accepting = tokio::spawn(async move {
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %remote, "peer TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%remote, "peer TLS handshake timed out"),
                }
            });
        }
    });
    let served = tonic::transport::Server::builder()
        .add_service(hub.requiring_identity().service())
        .serve_with_incoming(ReceiverStream::new(rx))
        .await;
    accepting.abort();
    served.map_err(anyhow::Error::from)
}

/// The refusal of a peer whose certificate names another worker than the ticket.
fn mismatch(expected: &PeerIdentity, presented: Option<&PeerIdentity>) -> String {
    match presented {
        Some(p) => format!("the peer's certificate names {p}, but the ticket names {expected}"),
        None => format!("the peer presented no certificate; the ticket names {expected}"),
    }
}

/// Serves a hub on a bound listener over plain TCP (an insecure option, for benches and
/// tests) until the future is dropped. Accepted connections get `TCP_NODELAY`, as the
/// dialling side's and the TLS server's do: without it a small frame answering a small frame
/// waits for the peer's delayed ACK (about 40 ms a round on Linux).
pub async fn serve_peer(
    hub: PeerHub,
    listener: tokio::net::TcpListener,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            if let Ok(stream) = &accepted {
                let _ = stream.set_nodelay(true);
            }
            accepted
        },
    );
    tonic::transport::Server::builder()
        .add_service(hub.service())
        .serve_with_incoming(incoming)
        .await
}

/// A connected pair of gRPC links over loopback TCP (for benches and tests).
pub async fn loopback_pair(
    frame_bytes_max: usize,
    idle_timeout: Duration,
) -> Result<(GrpcLink, GrpcLink, tokio::task::JoinHandle<()>), LinkError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LinkError::Transport(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| LinkError::Transport(e.to_string()))?;
    let hub = PeerHub::new(frame_bytes_max, idle_timeout);
    let server = tokio::spawn({
        let hub = hub.clone();
        async move {
            let _ = serve_peer(hub, listener).await;
        }
    });
    let addr = addr.to_string();
    let (dialer, acceptor) = tokio::join!(
        GrpcLink::dial(
            &addr,
            "loopback",
            frame_bytes_max,
            idle_timeout,
            Duration::from_secs(10)
        ),
        hub.accept("loopback", Duration::from_secs(10)),
    );
    Ok((dialer?, acceptor?, server))
}

/// Credentials for the two ends of a loopback link: a fresh CA valid from a minute ago, and
/// for each end a key and a certificate of one hour (the listener is worker `w-listen` of party
/// `receiver`, the dialer `w-dial` of party `sender`).
#[derive(Debug)]
pub struct LoopbackTls {
    /// The listening end's credentials and identity.
    pub listener: (PeerTls, PeerIdentity),
    /// The dialling end's credentials and identity.
    pub dialer: (PeerTls, PeerIdentity),
}

/// Makes [`LoopbackTls`] (benchmarks whose two ends run in one process or in two).
///
/// # Errors
/// [`LinkError::Transport`] if a key or certificate cannot be made.
pub fn loopback_tls() -> Result<LoopbackTls, LinkError> {
    let err = |e: &dyn std::fmt::Display| LinkError::Transport(e.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let ca = tessera_pki::CertificateAuthority::generate("loopback CA", now - 60)
        .map_err(|e| err(&e))?;
    let side = |party: &str, worker: &str| -> Result<(PeerTls, PeerIdentity), LinkError> {
        let id = PeerIdentity::new(party, worker).map_err(|e| err(&e))?;
        let (key_pem, csr) = tessera_pki::worker_key_and_csr().map_err(|e| err(&e))?;
        let cert_pem = ca
            .sign_worker(&csr, &id, now - 60, 3600)
            .map_err(|e| err(&e))?;
        let tls = PeerTls {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem,
            key_pem,
        };
        Ok((tls, id))
    };
    Ok(LoopbackTls {
        listener: side("receiver", "w-listen")?,
        dialer: side("sender", "w-dial")?,
    })
}

/// A connected pair over mutual TLS on loopback, as two workers' links are (a CA made here,
/// a certificate per side naming its worker, each side checking the other's), for benches
/// that measure what a real deployment pays for TLS.
///
/// # Errors
/// Any link error, or certificates that cannot be made.
pub async fn loopback_pair_tls(
    frame_bytes_max: usize,
    idle_timeout: Duration,
) -> Result<(GrpcLink, GrpcLink, tokio::task::JoinHandle<()>), LinkError> {
    let err = |e: &dyn std::fmt::Display| LinkError::Transport(e.to_string());
    let LoopbackTls {
        listener: (listener_tls, listener_id),
        dialer: (dialer_tls, dialer_id),
    } = loopback_tls()?;
    let credentials = Arc::new(PeerCredentials::new(listener_tls).map_err(|e| err(&e))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(&e))?;
    let addr = listener.local_addr().map_err(|e| err(&e))?.to_string();
    let hub = PeerHub::new(frame_bytes_max, idle_timeout);
    let server = tokio::spawn({
        let hub = hub.clone();
        async move {
            let _ = serve_peer_tls(hub, listener, credentials).await;
        }
    });
    let (dialer, acceptor) = tokio::join!(
        GrpcLink::dial_tls(
            &addr,
            "loopback",
            frame_bytes_max,
            idle_timeout,
            Duration::from_secs(10),
            &dialer_tls,
            &listener_id,
        ),
        hub.accept_from("loopback", Duration::from_secs(10), Some(&dialer_id)),
    );
    Ok((dialer?, acceptor?, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(accept_limit: usize, dial_limit: usize) -> (GrpcLink, GrpcLink) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let hub = PeerHub::new(accept_limit, Duration::from_secs(10));
        tokio::spawn(serve_peer(hub.clone(), listener));
        let (d, a) = tokio::join!(
            GrpcLink::dial(
                &addr,
                "sess",
                dial_limit,
                Duration::from_secs(10),
                Duration::from_secs(10)
            ),
            hub.accept("sess", Duration::from_secs(10)),
        );
        (d.expect("dial"), a.expect("accept"))
    }

    #[tokio::test]
    async fn frames_cross_in_both_directions_and_are_counted() {
        let (d, a) = pair(1024, 1024).await;
        d.send(Bytes::from_static(b"hello")).await.expect("send");
        assert_eq!(a.recv().await.expect("recv"), Bytes::from_static(b"hello"));
        a.send(Bytes::from(vec![7u8; 1024])).await.expect("send");
        assert_eq!(d.recv().await.expect("recv").len(), 1024);
        assert_eq!(d.stats().bytes_sent, 5);
        assert_eq!(d.stats().bytes_received, 1024);
        assert_eq!(a.stats().frames_received, 1);
    }

    #[tokio::test]
    async fn an_oversized_frame_from_the_peer_is_refused() {
        let (d, a) = pair(1024, 1 << 20).await;
        assert!(matches!(
            a.send(Bytes::from(vec![0u8; 2048])).await,
            Err(LinkError::FrameTooLarge {
                len: 2048,
                max: 1024
            })
        ));
        // The dialer's own bound is larger, so it sends; the acceptor must refuse it.
        d.send(Bytes::from(vec![0u8; 4096]))
            .await
            .expect("local send");
        let err = a.recv().await.expect_err("oversized frame accepted");
        assert!(
            matches!(
                err,
                LinkError::FrameTooLarge { .. } | LinkError::Transport(_)
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_goes_away_is_reported() {
        let (d, a) = pair(1024, 1024).await;
        drop(d);
        let err = a.recv().await.expect_err("peer gone");
        assert!(matches!(err, LinkError::PeerGone(_)), "{err:?}");
    }

    /// The hub's bound is on sessions peers dialled in that no task claimed yet, not on this
    /// worker's own tasks waiting for their peers: with more tasks waiting than the bound, a
    /// peer dialling in for a task not yet waiting is still taken. Past the bound of unclaimed
    /// arrivals a dialler waits for room within its connect window, and is refused when the
    /// window closes first.
    #[tokio::test]
    async fn the_hub_bounds_unclaimed_arrivals_not_its_own_waiting_tasks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let hub = PeerHub::new(1024, Duration::from_secs(10));
        tokio::spawn(serve_peer(hub.clone(), listener));
        let mut waiting = Vec::new();
        for i in 0..=PENDING_SESSIONS_MAX {
            let hub = hub.clone();
            waiting.push(tokio::spawn(async move {
                hub.accept(&format!("task-{i}"), Duration::from_secs(30))
                    .await
            }));
        }
        while hub.lock().len() <= PENDING_SESSIONS_MAX {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dial = |session: String, window: Duration| {
            let addr = addr.clone();
            async move { GrpcLink::dial(&addr, &session, 1024, Duration::from_secs(10), window).await }
        };
        let window = Duration::from_secs(10);
        // Arrivals for tasks not yet waiting: up to the bound, all taken.
        let mut arrived = Vec::new();
        for i in 0..PENDING_SESSIONS_MAX {
            let link = dial(format!("early-{i}"), window).await.expect("taken");
            link.send(Bytes::from_static(b"x")).await.expect("send");
            arrived.push(link);
        }
        // Past the bound: a dialler whose window closes while the hub stays full is refused.
        let refused = dial("over".into(), Duration::from_millis(300))
            .await
            .expect_err("refused");
        assert!(
            refused
                .to_string()
                .contains("too many pending peer sessions"),
            "{refused}"
        );
        // One that may wait longer is taken once a task claims an arrival.
        let later = tokio::spawn(dial("later".into(), window));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!later.is_finished(), "it waits while the hub is full");
        let a = hub
            .accept("early-0", Duration::from_secs(10))
            .await
            .expect("claimed");
        assert_eq!(a.recv().await.expect("frame"), Bytes::from_static(b"x"));
        let l = later
            .await
            .expect("join")
            .expect("taken once there was room");
        l.send(Bytes::from_static(b"z")).await.expect("send");
        let a = hub
            .accept("later", Duration::from_secs(10))
            .await
            .expect("claimed");
        assert_eq!(a.recv().await.expect("frame"), Bytes::from_static(b"z"));
        // The waiting tasks still get their peers.
        let d = dial("task-0".into(), window).await.expect("dial");
        d.send(Bytes::from_static(b"y")).await.expect("send");
        let a = waiting.remove(0).await.expect("join").expect("accepted");
        assert_eq!(a.recv().await.expect("frame"), Bytes::from_static(b"y"));
    }

    #[tokio::test]
    async fn nobody_dialling_in_times_out_clearly() {
        let hub = PeerHub::new(1024, Duration::from_secs(1));
        let err = hub
            .accept("nobody", Duration::from_millis(50))
            .await
            .expect_err("timeout");
        assert!(err.to_string().contains("did not connect"), "{err}");
    }
}
