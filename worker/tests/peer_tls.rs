//! Peer links over mutual TLS with certificates of the operator's CA (issue "Who is calling",
//! item 4): each side checks that the other's certificate names the party and worker its
//! ticket names. Real certificates (`tessera-pki`), real TLS on loopback.

use std::time::Duration;

use bytes::Bytes;
use tessera_core::Link;
use tessera_pki::{CertificateAuthority, PeerIdentity, worker_key_and_csr};
use tessera_worker::link::{GrpcLink, PeerHub, PeerTls, serve_peer_tls};

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let hub = PeerHub::new(FRAME, IDLE);
    let served = hub.clone();
    tokio::spawn(async move {
        let _ = serve_peer_tls(served, listener, &tls).await;
    });
    (hub, addr)
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
