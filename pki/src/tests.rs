//! Real crypto, no mocks. Chain checks use `x509-parser`'s `verify_signature` (ring) against
//! the CA certificate's public key.

use std::collections::HashSet;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::*;

const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const DAY: u64 = 24 * 3600;

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("Tessera test CA", NOW).expect("CA")
}

fn der_of(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

fn parsed(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    assert!(rest.is_empty());
    cert
}

/// Verifies `leaf`'s signature with the CA certificate's public key.
fn assert_signed_by_ca(ca: &CertificateAuthority, leaf: &X509Certificate<'_>) {
    let ca_der = der_of(ca.cert_pem());
    let ca_cert = parsed(&ca_der);
    leaf.verify_signature(Some(ca_cert.public_key()))
        .expect("signed by the CA");
    assert_eq!(leaf.issuer(), ca_cert.subject());
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN ext")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(s) => format!("DNS:{s}"),
            GeneralName::URI(s) => format!("URI:{s}"),
            GeneralName::IPAddress(b) => format!("IP:{b:?}"),
            other => format!("other:{other}"),
        })
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), for garbage inputs.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn csr_pem_with(key: &KeyPair, names: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names;
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn alice() -> PeerIdentity {
    PeerIdentity::new("acme@eu.bank", "worker-1.a_b").expect("identity")
}

#[test]
fn ca_round_trips_through_pem_and_hides_its_key() {
    let ca = ca();
    let (cert_pem, key_pem) = ca.to_pem();
    assert!(key_pem.contains("PRIVATE KEY"));
    let back = CertificateAuthority::from_pem(&cert_pem, &key_pem).expect("from_pem");
    let (cert2, key2) = back.to_pem();
    assert_eq!(cert2, cert_pem);
    assert_eq!(*key2, *key_pem);
    assert_eq!(back.cert_pem(), ca.cert_pem());

    let debug = format!("{back:?}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
    let key_body: String = key_pem.lines().nth(1).expect("a base64 line").into();
    assert!(!debug.contains(&key_body[..20]), "{debug}");

    // The loaded CA signs, and its issues chain to the original certificate.
    let (server, _) = back
        .issue_server(&["operator.local".into()], NOW, DAY)
        .expect("issue");
    let der = der_of(&server);
    assert_signed_by_ca(&ca, &parsed(&der));

    // The CA certificate itself: self-signed, cA with pathLen 0, certSign + cRLSign.
    let ca_der = der_of(ca.cert_pem());
    let c = parsed(&ca_der);
    c.verify_signature(None).expect("self-signed");
    let bc = c
        .basic_constraints()
        .expect("bc")
        .expect("bc present")
        .value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = c.key_usage().expect("ku").expect("ku present").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
}

#[test]
fn ca_from_pem_refuses_mismatched_or_garbage_inputs() {
    let (cert_a, key_a) = ca().to_pem();
    let (cert_b, key_b) = ca().to_pem();
    assert!(matches!(
        CertificateAuthority::from_pem(&cert_a, &key_b),
        Err(PkiError::BadCaCertificate(_))
    ));
    // A leaf certificate is not a CA.
    let (leaf, leaf_key) = ca()
        .issue_server(&["x.local".into()], NOW, DAY)
        .expect("issue");
    assert!(matches!(
        CertificateAuthority::from_pem(&leaf, &leaf_key),
        Err(PkiError::BadCaCertificate(_))
    ));
    // Key and certificate swapped, empty, garbage, or a non-P-256 key.
    let ed = KeyPair::generate_for(&PKCS_ED25519).expect("ed25519");
    let garbage = String::from_utf8_lossy(&noise(7, 300)).into_owned();
    for (c, k) in [
        (key_a.as_str(), cert_a.as_str()),
        ("", ""),
        (cert_b.as_str(), ""),
        ("", key_b.as_str()),
        (garbage.as_str(), garbage.as_str()),
        (cert_a.as_str(), ed.serialize_pem().as_str()),
        (&cert_a[..cert_a.len() / 2], key_a.as_str()),
    ] {
        assert!(CertificateAuthority::from_pem(c, k).is_err());
    }
    // Two blocks where one is expected.
    let doubled = format!("{cert_a}{cert_b}");
    assert!(matches!(
        CertificateAuthority::from_pem(&doubled, &key_a),
        Err(PkiError::BadPem { .. })
    ));
    assert!(CertificateAuthority::from_pem(&cert_a, &key_a).is_ok());
}

#[test]
fn server_certificate_verifies_against_the_ca_and_names_dns_and_ip() {
    let ca = ca();
    let names: Vec<String> = ["operator.tessera.example", "10.0.0.7", "::1"]
        .map(String::from)
        .into();
    let (cert_pem, key_pem) = ca.issue_server(&names, NOW, 30 * DAY).expect("issue");
    let der = der_of(&cert_pem);
    let cert = parsed(&der);
    assert_signed_by_ca(&ca, &cert);
    assert_eq!(
        sans(&cert),
        [
            "DNS:operator.tessera.example".to_string(),
            "IP:[10, 0, 0, 7]".into(),
            format!("IP:{:?}", std::net::Ipv6Addr::LOCALHOST.octets()),
        ]
    );
    let eku = cert.extended_key_usage().expect("eku").expect("eku").value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    assert!(!cert.is_ca());
    // The returned key is the certified key.
    let key = KeyPair::from_pem(&key_pem).expect("key");
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn server_names_are_checked() {
    let ca = ca();
    assert!(matches!(
        ca.issue_server(&[], NOW, DAY),
        Err(PkiError::NoServerNames)
    ));
    for bad in [
        "",
        ".",
        "bad name",
        "*.wild.card",
        "-lead.example",
        "a..b",
        "10.0.0",
        "ünï.example",
        "a/b",
    ] {
        assert!(
            matches!(
                ca.issue_server(&[bad.to_string()], NOW, DAY),
                Err(PkiError::InvalidServerName { .. })
            ),
            "{bad:?}"
        );
    }
    let long_label = format!("{}.example", "a".repeat(64));
    assert!(ca.issue_server(&[long_label], NOW, DAY).is_err());
    assert!(ca.issue_server(&["localhost".into()], NOW, DAY).is_ok());
}

#[test]
fn worker_certificate_names_exactly_the_identity_whatever_the_csr_asked() {
    let ca = ca();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let other = PeerIdentity::new("mallory", "w9").expect("id");
    let csr = csr_pem_with(
        &key,
        vec![
            SanType::DnsName("operator.tessera.example".try_into().expect("ia5")),
            SanType::DnsName(other.dns_name().try_into().expect("ia5")),
            SanType::URI(other.uri().try_into().expect("ia5")),
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
        ],
    );
    let id = alice();
    let cert_pem = ca.sign_worker(&csr, &id, NOW, DAY).expect("sign");
    let der = der_of(&cert_pem);
    let cert = parsed(&der);
    assert_signed_by_ca(&ca, &cert);
    assert_eq!(
        sans(&cert),
        [
            format!("DNS:{}", id.dns_name()),
            format!("URI:{}", id.uri())
        ]
    );
    assert_eq!(
        id.uri(),
        "tessera://party/acme%40eu.bank/worker/worker-1.a_b"
    );
    let eku = cert.extended_key_usage().expect("eku").expect("eku").value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(peer_identity_of(&der).expect("identity"), id);
}

#[test]
fn worker_key_and_csr_round_trip_and_ed25519_is_accepted() {
    let ca = ca();
    let (key_pem, csr_pem) = worker_key_and_csr().expect("csr");
    let id = alice();
    let cert_pem = ca.sign_worker(&csr_pem, &id, NOW, DAY).expect("sign");
    let der = der_of(&cert_pem);
    let key = KeyPair::from_pem(&key_pem).expect("key");
    assert_eq!(
        parsed(&der).public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(peer_identity_of(&der).expect("identity"), id);

    let ed = KeyPair::generate_for(&PKCS_ED25519).expect("ed25519");
    let cert_pem = ca
        .sign_worker(&csr_pem_with(&ed, vec![]), &id, NOW, DAY)
        .expect("ed25519 CSR");
    let der = der_of(&cert_pem);
    assert_signed_by_ca(&ca, &parsed(&der));
    assert_eq!(peer_identity_of(&der).expect("identity"), id);
}

#[test]
fn csr_with_an_unsupported_key_is_refused() {
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("p384");
    let err = ca()
        .sign_worker(&csr_pem_with(&p384, vec![]), &alice(), NOW, DAY)
        .expect_err("P-384 refused");
    assert!(matches!(err, PkiError::UnsupportedKey(_)), "{err}");
    assert!(err.to_string().contains("ECDSA P-256 and Ed25519"), "{err}");
}

#[test]
fn tampered_csr_is_refused() {
    let ca = ca();
    let (_, csr_pem) = worker_key_and_csr().expect("csr");
    let der = der_of(&csr_pem);
    let at = der
        .windows(b"tessera worker".len())
        .position(|w| w == b"tessera worker")
        .expect("subject in CSR");
    // Change the requested subject: still well-formed DER, but the signature no longer covers it.
    let mut tampered = der.clone();
    tampered[at] = b'T';
    let tampered_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    let err = ca
        .sign_worker(&tampered_pem, &alice(), NOW, DAY)
        .expect_err("tampered CSR refused");
    assert!(matches!(err, PkiError::CsrSignatureInvalid(_)), "{err}");

    // Flip the last byte (inside the signature) too.
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    assert!(ca.sign_worker(&tampered_pem, &alice(), NOW, DAY).is_err());

    // Every single-bit flip anywhere is refused, and none panics.
    for i in 0..der.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = der.clone();
            t[i] ^= bit;
            assert!(csr_public_key(&t).is_err(), "flip {bit:#x} at byte {i}");
        }
    }
    assert!(csr_public_key(&der).is_ok());
}

#[test]
fn garbage_csrs_give_errors() {
    let ca = ca();
    let id = alice();
    let (cert_pem, _) = ca
        .issue_server(&["x.local".into()], NOW, DAY)
        .expect("issue");
    let (_, csr_pem) = worker_key_and_csr().expect("csr");
    let garbage = String::from_utf8_lossy(&noise(3, 500)).into_owned();
    let random_der_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", noise(5, 200)));
    for input in [
        "",
        "not pem",
        garbage.as_str(),
        cert_pem.as_str(),
        random_der_pem.as_str(),
        &csr_pem[..csr_pem.len() / 2],
    ] {
        assert!(ca.sign_worker(input, &id, NOW, DAY).is_err(), "{input:?}");
    }
    let der = der_of(&csr_pem);
    for len in 0..der.len() {
        assert!(csr_public_key(&der[..len]).is_err());
    }
}

#[test]
fn invalid_identities_are_refused() {
    let ca = ca();
    let (_, csr) = worker_key_and_csr().expect("csr");
    let long = "a".repeat(65);
    for (party, worker) in [
        ("", "w"),
        ("p", ""),
        ("..", "w"),
        ("p", "."),
        ("a/b", "w"),
        ("p", "w w"),
        ("p", "é"),
        ("p", "%41"),
        (long.as_str(), "w"),
    ] {
        assert!(PeerIdentity::new(party, worker).is_err());
        let raw = PeerIdentity {
            party: party.into(),
            worker_id: worker.into(),
        };
        assert!(matches!(
            ca.sign_worker(&csr, &raw, NOW, DAY),
            Err(PkiError::InvalidIdentity { .. })
        ));
    }
    assert!(PeerIdentity::new("a".repeat(64), "@.-_").is_ok());
}

#[test]
fn dns_names_never_collide_and_are_valid() {
    let tricky = [
        (("a", "b-c"), ("a-b", "c")),
        (("a.b", "c"), ("a", "b.c")),
        (("ab", "c"), ("a", "bc")),
        (("a", "b"), ("b", "a")),
        (("a@b", "c"), ("a", "b@c")),
        (("a_b", "c"), ("a", "b_c")),
        (("A", "b"), ("a", "b")),
    ];
    for ((p1, w1), (p2, w2)) in tricky {
        let a = PeerIdentity::new(p1, w1).expect("id");
        let b = PeerIdentity::new(p2, w2).expect("id");
        assert_ne!(a.dns_name(), b.dns_name(), "{a} vs {b}");
        assert_ne!(a.uri(), b.uri(), "{a} vs {b}");
    }

    // Every pair of short ids over an alphabet with the separators: all names distinct.
    let alphabet = ["a", "b", "-", ".", "_", "@"];
    let mut ids = vec![String::new()];
    for _ in 0..3 {
        let longer: Vec<String> = ids
            .iter()
            .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
            .collect();
        ids.extend(longer);
    }
    ids.sort();
    ids.dedup();
    let ids: Vec<&String> = ids.iter().filter(|s| s.len() <= 2).collect();
    let mut seen = HashSet::new();
    let mut count = 0;
    for p in &ids {
        for w in &ids {
            let id = PeerIdentity {
                party: (*p).clone(),
                worker_id: (*w).clone(),
            };
            let dns = id.dns_name();
            assert!(seen.insert(dns.clone()), "collision at {id:?}");
            count += 1;
            // A valid DNS name: lowercase hex label of 32 characters, then the fixed suffix.
            let label = dns.strip_suffix(PEER_DNS_SUFFIX).expect("suffix");
            assert_eq!(label.len(), 32);
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(server_san(&dns).is_ok());
        }
    }
    assert_eq!(seen.len(), count);

    // The documented derivation, pinned.
    let id = PeerIdentity::new("p", "w").expect("id");
    let mut h = Sha256::new();
    h.update(b"tessera-peer-dns-v1");
    h.update(1u64.to_be_bytes());
    h.update(b"p");
    h.update(1u64.to_be_bytes());
    h.update(b"w");
    let expected = format!("{}.peer.tessera.invalid", hex::encode(&h.finalize()[..16]));
    assert_eq!(id.dns_name(), expected);
}

#[test]
fn uris_round_trip_and_only_the_canonical_form_parses() {
    for (p, w) in [
        ("acme@eu.bank", "worker-1.a_b"),
        ("...", "a..b"),
        ("@", "@@"),
        ("x", "worker"),
        ("worker", "party"),
    ] {
        let id = PeerIdentity::new(p, w).expect("id");
        assert_eq!(PeerIdentity::from_uri(&id.uri()).expect("parse"), id);
    }
    for bad in [
        "",
        "tessera://party/",
        "tessera://party/a/worker/",
        "tessera://party//worker/b",
        "tessera://party/%61/worker/b",
        "tessera://party/a@b/worker/c",
        "tessera://party/a/worker/b/worker/c",
        "tessera://party/a/worker/b/",
        "tessera://party/a/worker/%ff",
        "tessera://party/a%2Fb/worker/c",
        "TESSERA://party/a/worker/b",
        "tessera://party/a/worker/b?x",
    ] {
        assert!(PeerIdentity::from_uri(bad).is_err(), "{bad:?}");
    }
}

/// A certificate with hand-chosen SANs, signed by a throwaway key (the chain is not what
/// `peer_identity_of` checks).
fn cert_with(names: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = names;
    params.self_signed(&key).expect("cert").der().to_vec()
}

fn dns(s: String) -> SanType {
    SanType::DnsName(s.try_into().expect("ia5"))
}

fn uri(s: String) -> SanType {
    SanType::URI(s.try_into().expect("ia5"))
}

#[test]
fn peer_identity_of_refuses_disagreeing_missing_or_extra_names_and_garbage() {
    let a = alice();
    let b = PeerIdentity::new("acme@eu.bank", "worker-2").expect("id");

    // The happy path with rcgen directly, in either order.
    let ok = cert_with(vec![uri(a.uri()), dns(a.dns_name())]);
    assert_eq!(peer_identity_of(&ok).expect("identity"), a);

    let cases: Vec<(&str, Vec<SanType>)> = vec![
        (
            "URI and DNS disagree",
            vec![dns(b.dns_name()), uri(a.uri())],
        ),
        ("no URI", vec![dns(a.dns_name())]),
        ("no DNS", vec![uri(a.uri())]),
        ("no SANs", vec![]),
        (
            "two URIs",
            vec![dns(a.dns_name()), uri(a.uri()), uri(b.uri())],
        ),
        (
            "two DNS",
            vec![dns(a.dns_name()), dns(a.dns_name()), uri(a.uri())],
        ),
        (
            "extra IP",
            vec![
                dns(a.dns_name()),
                uri(a.uri()),
                SanType::IpAddress("10.0.0.1".parse().expect("ip")),
            ],
        ),
        (
            "foreign URI",
            vec![dns(a.dns_name()), uri("https://example.com/".into())],
        ),
        (
            "uppercase DNS",
            vec![dns(a.dns_name().to_uppercase()), uri(a.uri())],
        ),
    ];
    for (what, names) in cases {
        let der = cert_with(names);
        let err = peer_identity_of(&der).expect_err(what);
        assert!(matches!(err, PkiError::BadPeerNames(_)), "{what}: {err}");
    }

    // Garbage DER, truncations, trailing bytes, the CA's own certificate.
    assert!(peer_identity_of(&[]).is_err());
    for seed in 1..50 {
        assert!(peer_identity_of(&noise(seed, 64 + seed as usize * 13)).is_err());
    }
    for len in 0..ok.len() {
        assert!(peer_identity_of(&ok[..len]).is_err());
    }
    let mut trailing = ok.clone();
    trailing.push(0);
    assert!(matches!(
        peer_identity_of(&trailing),
        Err(PkiError::BadDer { .. })
    ));
    assert!(peer_identity_of(&der_of(ca().cert_pem())).is_err());
}

#[test]
fn validity_windows_are_what_was_asked() {
    let ca = ca();
    let ca_der = der_of(ca.cert_pem());
    let c = parsed(&ca_der);
    assert_eq!(c.validity().not_before.timestamp(), NOW);
    assert_eq!(
        c.validity().not_after.timestamp(),
        NOW + CA_VALIDITY_SECS as i64
    );

    let (server, _) = ca
        .issue_server(&["x.local".into()], NOW + 5, 90 * DAY)
        .expect("issue");
    let der = der_of(&server);
    let v = parsed(&der).validity().clone();
    assert_eq!(v.not_before.timestamp(), NOW + 5);
    assert_eq!(v.not_after.timestamp(), NOW + 5 + 90 * DAY as i64);

    let (_, csr) = worker_key_and_csr().expect("csr");
    let worker = ca
        .sign_worker(&csr, &alice(), NOW + 77, 3600)
        .expect("sign");
    let der = der_of(&worker);
    let v = parsed(&der).validity().clone();
    assert_eq!(v.not_before.timestamp(), NOW + 77);
    assert_eq!(v.not_after.timestamp(), NOW + 77 + 3600);
    assert!(
        ca.sign_worker(&csr, &alice(), NOW, MAX_WORKER_VALIDITY_SECS)
            .is_ok()
    );

    // Refused windows: too long for a worker, beyond the CA, empty, absurd clocks.
    let refused = |r: Result<String, PkiError>| matches!(r, Err(PkiError::InvalidValidity(_)));
    assert!(refused(ca.sign_worker(
        &csr,
        &alice(),
        NOW,
        MAX_WORKER_VALIDITY_SECS + 1
    )));
    assert!(refused(ca.sign_worker(&csr, &alice(), NOW, 0)));
    assert!(refused(
        ca.issue_server(&["x.local".into()], NOW, CA_VALIDITY_SECS + 1)
            .map(|(c, _)| c)
    ));
    for (now, secs) in [
        (i64::MIN, 1),
        (i64::MAX, 1),
        (NOW, u64::MAX),
        (-10_000_000_000, 1),
    ] {
        assert!(refused(
            ca.issue_server(&["x.local".into()], now, secs)
                .map(|(c, _)| c)
        ));
    }
    for now in [i64::MIN, i64::MAX, -10_000_000_000, LATEST] {
        assert!(matches!(
            CertificateAuthority::generate("CA", now),
            Err(PkiError::InvalidValidity(_))
        ));
    }
    // Serial numbers are random: two issues to the same key differ.
    let a = der_of(&ca.sign_worker(&csr, &alice(), NOW, 60).expect("sign"));
    let b = der_of(&ca.sign_worker(&csr, &alice(), NOW, 60).expect("sign"));
    assert_ne!(parsed(&a).raw_serial(), parsed(&b).raw_serial());
}

#[test]
fn errors_say_what_was_wrong() {
    let e = PeerIdentity::new("p", "a b").expect_err("space");
    assert!(e.to_string().contains("worker id"), "{e}");
    let e = ca().sign_worker("", &alice(), NOW, DAY).expect_err("empty");
    assert!(e.to_string().contains("CSR"), "{e}");
    let e = CertificateAuthority::from_pem("", "").expect_err("empty");
    assert!(e.to_string().contains("CA key"), "{e}");
}
