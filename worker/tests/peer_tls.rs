//! Peer links over mutual TLS with certificates of the operator's CA (issue "Who is calling",
//! item 4): each side checks that the other's certificate names the party and worker its
//! ticket names. Real certificates (`tessera-pki`), real TLS on loopback.

use std::time::Duration;

use bytes::Bytes;
use tessera_core::Link;
use tessera_pki::{CertificateAuthority, PeerIdentity, worker_key_and_csr};
use tessera_worker::link::{GrpcLink, PeerCredentials, PeerHub, PeerTls, serve_peer_tls};

const FRAME: usize = 1 << 16;
const IDLE: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(3);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn id(party: &str, worker: &str) -> PeerIdentity {
    PeerIdentity::new(party, worker).expect("identity")
}

/// A worker's TLS material as its registration gives it: a certificate of `ca` for `who`.
fn tls(ca: &CertificateAuthority, who: &PeerIdentity) -> PeerTls {
    let (key_pem, csr) = worker_key_and_csr().expect("csr");
    let cert_pem = ca.sign_worker(&csr, who, now() - 60, 3600).expect("sign");
    PeerTls {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem,
        key_pem,
    }
}

async fn listening(tls: PeerTls) -> (PeerHub, String) {
    let (hub, addr, _) = listening_with(tls).await;
    (hub, addr)
}

/// A hub served over TLS, with the credentials it serves (to renew them).
async fn listening_with(tls: PeerTls) -> (PeerHub, String, std::sync::Arc<PeerCredentials>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let hub = PeerHub::new(FRAME, IDLE);
    let served = hub.clone();
    let credentials = std::sync::Arc::new(PeerCredentials::new(tls).expect("credentials"));
    let creds = credentials.clone();
    tokio::spawn(async move {
        let _ = serve_peer_tls(served, listener, creds).await;
    });
    (hub, addr, credentials)
}

async fn dial(
    addr: &str,
    session: &str,
    me: &PeerTls,
    peer: &PeerIdentity,
) -> Result<GrpcLink, String> {
    GrpcLink::dial_tls(addr, session, FRAME, IDLE, CONNECT, me, peer)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_the_worker_the_ticket_names_joins_the_link() {
    let ca = CertificateAuthority::generate("test CA", now() - 3600).expect("ca");
    let buyer = id("buy", "w-b");
    let provider = id("prov", "w-p");
    let (hub, addr) = listening(tls(&ca, &buyer)).await;
    let provider_tls = tls(&ca, &provider);

    // The rightful pair: both certificates check out, frames cross.
    let (d, a) = tokio::join!(
        dial(&addr, "s1", &provider_tls, &buyer),
        hub.accept_from("s1", CONNECT, Some(&provider)),
    );
    let (d, a) = (d.expect("dial"), a.expect("accept"));
    d.send(Bytes::from_static(b"blinded")).await.expect("send");
    assert_eq!(
        a.recv().await.expect("recv"),
        Bytes::from_static(b"blinded")
    );

    // Same worker id, another party's certificate: refused, and the waiting task keeps
    // waiting for the rightful peer, who then joins.
    let impostor = tls(&ca, &id("mal", "w-p"));
    let waiting = {
        let hub = hub.clone();
        let provider = provider.clone();
        tokio::spawn(async move { hub.accept_from("s2", CONNECT, Some(&provider)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = dial(&addr, "s2", &impostor, &buyer).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("names another worker")),
        "{:?}",
        refused.map(|_| ())
    );
    let rightful = dial(&addr, "s2", &provider_tls, &buyer)
        .await
        .expect("dial");
    let accepted = waiting.await.expect("join").expect("accept");
    rightful.send(Bytes::from_static(b"x")).await.expect("send");
    assert_eq!(
        accepted.recv().await.expect("recv"),
        Bytes::from_static(b"x")
    );

    // A dialer that arrives first with another party's certificate is not handed over.
    let early = dial(&addr, "s3", &impostor, &buyer)
        .await
        .expect("arrives first");
    drop(early);
    let e = hub
        .accept_from("s3", CONNECT, Some(&provider))
        .await
        .expect_err("impostor taken");
    assert!(e.to_string().contains("ticket names"), "{e}");
}

#[tokio::test]
async fn a_listener_other_than_the_ticket_names_or_another_ca_fails_the_handshake() {
    let ca = CertificateAuthority::generate("test CA", now() - 3600).expect("ca");
    let buyer = id("buy", "w-b");
    let provider = id("prov", "w-p");
    let (_hub, addr) = listening(tls(&ca, &buyer)).await;
    let provider_tls = tls(&ca, &provider);
    // The dialer's ticket names another worker than the one listening there: the handshake
    // fails at once (no retries until the connect timeout), and says so.
    let t0 = std::time::Instant::now();
    let e = dial(&addr, "s", &provider_tls, &id("buy", "w-other"))
        .await
        .expect_err("wrong listener accepted");
    assert!(e.contains("TLS handshake"), "{e}");
    assert!(t0.elapsed() < CONNECT, "retried for {:?}", t0.elapsed());
    // A certificate for the right names, but from a CA the operator never ran.
    let rogue = CertificateAuthority::generate("rogue CA", now() - 3600).expect("ca");
    let forged = PeerTls {
        ca_pem: ca.cert_pem().to_owned(),
        ..tls(&rogue, &provider)
    };
    assert!(dial(&addr, "s", &forged, &buyer).await.is_err());
    // No certificate at all: a plain dial to a TLS hub fails.
    assert!(
        GrpcLink::dial(&addr, "s", FRAME, IDLE, CONNECT)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_tls_dialer_facing_a_plaintext_listener_says_so_at_once() {
    let ca = CertificateAuthority::generate("test CA", now() - 3600).expect("ca");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let hub = PeerHub::new(FRAME, IDLE);
    tokio::spawn(tessera_worker::link::serve_peer(hub, listener));
    let t0 = std::time::Instant::now();
    let e = dial(&addr, "s", &tls(&ca, &id("prov", "w-p")), &id("buy", "w-b"))
        .await
        .expect_err("plaintext peer accepted");
    assert!(e.contains("--insecure-plaintext-peer"), "{e}");
    assert!(t0.elapsed() < CONNECT, "retried for {:?}", t0.elapsed());
}

/// A renewal applies to the next handshake: a link dialled after it meets the new
/// certificate (a dialer checking for the old one's expiry would see the new dates), links
/// keep working, and material of another CA is refused without replacing anything.
#[tokio::test]
async fn a_renewed_certificate_serves_the_next_links() {
    let ca = CertificateAuthority::generate("test CA", now() - 3600).expect("ca");
    let buyer = id("buy", "w-b");
    let provider = id("prov", "w-p");
    let (hub, addr, credentials) = listening_with(tls(&ca, &buyer)).await;
    let provider_tls = tls(&ca, &provider);
    let before = credentials.current().cert_pem.clone();

    let renewed = tls(&ca, &buyer);
    credentials.install(renewed.clone()).expect("install");
    assert_ne!(credentials.current().cert_pem, before);
    assert_eq!(credentials.current().cert_pem, renewed.cert_pem);
    // The served certificate is the new one: a raw TLS client sees it.
    assert_eq!(
        served_leaf(&addr, &ca, &provider_tls).await,
        pem_der(&renewed.cert_pem)
    );
    // And a link still forms, both ways checked.
    let (d, a) = tokio::join!(
        dial(&addr, "s-renewed", &provider_tls, &buyer),
        hub.accept_from("s-renewed", CONNECT, Some(&provider)),
    );
    let (d, a) = (d.expect("dial"), a.expect("accept"));
    d.send(Bytes::from_static(b"after renewal"))
        .await
        .expect("send");
    assert_eq!(
        a.recv().await.expect("recv"),
        Bytes::from_static(b"after renewal")
    );

    // Another CA's certificate is refused; the current one stays.
    let rogue = CertificateAuthority::generate("rogue", now() - 3600).expect("ca");
    assert!(credentials.install(tls(&rogue, &buyer)).is_err());
    assert_eq!(credentials.current().cert_pem, renewed.cert_pem);
}

fn pem_der(pem: &str) -> Vec<u8> {
    ::pem::parse(pem).expect("pem").into_contents()
}

/// The leaf certificate the server at `addr` presents to a client of `ca` with `me`'s
/// certificate.
async fn served_leaf(addr: &str, ca: &CertificateAuthority, me: &PeerTls) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("ca der"))
        .expect("root");
    let certs = vec![CertificateDer::from_pem_slice(me.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes()).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(id("buy", "w-b").dns_name()).expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

/// A TCP proxy in front of `target` that counts the connections it forwards; aborting the
/// returned tasks breaks every connection forwarded so far.
async fn counting_proxy(
    target: String,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let forwarding = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, f) = (count.clone(), forwarding.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let target = target.clone();
            let task = tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            f.lock().expect("lock").push(task);
        }
    });
    (addr, count, forwarding)
}

/// A provider's worker dialling a buyer's through a proxy that counts TCP connections, for
/// the kept-connection tests.
struct Kept {
    hub: PeerHub,
    addr: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    forwarding: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    me: PeerCredentials,
    buyer: PeerIdentity,
    provider: PeerIdentity,
    ca: CertificateAuthority,
}

impl Kept {
    async fn new() -> Self {
        let ca = CertificateAuthority::generate("test CA", now() - 3600).expect("ca");
        let buyer = id("buy", "w-b");
        let provider = id("prov", "w-p");
        let (hub, target) = listening(tls(&ca, &buyer)).await;
        let (addr, connections, forwarding) = counting_proxy(target).await;
        let me = PeerCredentials::new(tls(&ca, &provider)).expect("credentials");
        Self {
            hub,
            addr,
            connections,
            forwarding,
            me,
            buyer,
            provider,
            ca,
        }
    }

    /// A link of `session` dialled over a kept connection and accepted, the session's name
    /// sent through it; (dialled end, accepted end).
    async fn link(&self, session: &str) -> (GrpcLink, GrpcLink) {
        let (d, a) = tokio::join!(
            GrpcLink::dial_tls_kept(
                &self.addr,
                session,
                FRAME,
                IDLE,
                CONNECT,
                &self.me,
                &self.buyer
            ),
            self.hub.accept_from(session, CONNECT, Some(&self.provider)),
        );
        let (d, a) = (
            d.unwrap_or_else(|e| panic!("dial {session}: {e}")),
            a.unwrap_or_else(|e| panic!("accept {session}: {e}")),
        );
        d.send(Bytes::from(session.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("send {session}: {e}"));
        assert_eq!(
            a.recv()
                .await
                .unwrap_or_else(|e| panic!("recv {session}: {e}")),
            Bytes::from(session.to_owned())
        );
        (d, a)
    }

    /// TCP connections made through the proxy so far.
    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_kept_connection_serves_later_links_until_it_breaks_or_the_certificate_is_renewed() {
    let k = Kept::new().await;
    let link = |session: &'static str| {
        let k = &k;
        async move {
            let (d, a) = k.link(session).await;
            a.send(Bytes::from_static(b"back"))
                .await
                .expect("send back");
            assert_eq!(
                d.recv().await.expect("recv back"),
                Bytes::from_static(b"back")
            );
        }
    };
    let forwarded = || k.connections();
    let (addr, me, buyer, provider, ca) = (&k.addr, &k.me, &k.buyer, &k.provider, &k.ca);

    // Three links, one connection (one handshake); the identity is still checked per stream.
    link("k1").await;
    link("k2").await;
    link("k3").await;
    assert_eq!(forwarded(), 1);
    assert_eq!(me.kept_connections(), 1);

    // The connection breaks (the peer restarted, a middlebox dropped it): the next link is
    // dialled afresh, once, and works.
    for task in k.forwarding.lock().expect("lock").drain(..) {
        task.abort();
    }
    link("k4").await;
    assert_eq!(forwarded(), 2);
    link("k5").await;
    assert_eq!(forwarded(), 2);

    // A renewed certificate: no later link reuses a connection made with the old one.
    me.install(tls(ca, provider)).expect("renew");
    assert_eq!(me.kept_connections(), 0);
    link("k6").await;
    assert_eq!(forwarded(), 3);

    // A refusal by the peer's hub is not retried on a new connection: the same session twice.
    let _first = GrpcLink::dial_tls_kept(addr, "dup", FRAME, IDLE, CONNECT, me, buyer)
        .await
        .expect("first");
    let again = GrpcLink::dial_tls_kept(addr, "dup", FRAME, IDLE, CONNECT, me, buyer).await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already connected")),
        "{:?}",
        again.map(|_| ())
    );
    assert_eq!(forwarded(), 3);
}

/// h2 ends a connection (GOAWAY, "too_many_internal_resets") once one side has reset 1,024
/// streams on it, and a link ended by dropping its stream counts: a kept connection carrying
/// thousands of small jobs' links broke, failing every link open on it (seen with 20,000 jobs
/// in `bench admission`). A kept connection now carries at most `KEPT_CONNECTION_SESSIONS_MAX`
/// links, then a new one is dialled: a link open through 2,100 others still works (it broke
/// on the old code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_outlives_two_thousand_later_links_to_the_same_peer() {
    let k = Kept::new().await;
    let (first_d, first_a) = k.link("first").await;
    let later: usize = 2100;
    for chunk in (0..later).collect::<Vec<_>>().chunks(50) {
        // Each ends by being dropped, as a task's link does.
        futures::future::join_all(chunk.iter().map(|i| {
            let k = &k;
            async move { k.link(&format!("s{i}")).await }
        }))
        .await;
    }
    first_a
        .send(Bytes::from_static(b"still there"))
        .await
        .expect("the first link, after the others");
    assert_eq!(
        first_d
            .recv()
            .await
            .expect("the first link, after the others"),
        Bytes::from_static(b"still there")
    );
    let made = k.connections();
    let most = tessera_worker::link::KEPT_CONNECTION_SESSIONS_MAX;
    // At least the connections the bound asks for (links dialled at the same moment when no
    // connection is kept each make one, as before).
    assert!(
        made >= (later + 1).div_ceil(most),
        "{made} connections for {} links, at most {most} a connection",
        later + 1
    );
}
