//! End-to-end tests of the VOLE-based PSI (`Protocol::Rr22`) over `MemLink`: both roles run
//! concurrently and the result is compared with a plaintext `HashSet` reference; hostile peers
//! (which run the real VOLE and then misbehave) must yield typed errors, never panics or hangs.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::{Link, LinkError, MemLink};
use tessera_ot::{Block, silent_vole};
use tessera_psi::okvs::RbOkvs;
mod common;

use common::{bounded, keys, reference, run_both};
use tessera_psi::{
    AbortReason, DeliveryGate, Mode, NoProgress, PROTOCOL_VERSION, Protocol, PsiConfig, PsiError,
    ReceiverOutput, SenderOutput, run_receiver, run_sender, run_sender_reporting_delivery,
};

const RR22: PsiConfig = PsiConfig {
    protocol: Protocol::Rr22,
    mode: Mode::Intersection,
    batch_items_max: tessera_psi::DEFAULT_BATCH_ITEMS,
};

async fn check(r_items: &[Vec<u8>], s_items: &[Vec<u8>], seed: u64) {
    let (want, r_size, s_size) = reference(r_items, s_items);
    let (r, s) = run_both(r_items, s_items, &RR22, &RR22, seed).await;
    let r = r.expect("receiver");
    let s = s.expect("sender");
    assert_eq!(r.intersection.as_deref(), Some(want.as_slice()));
    assert_eq!(r.intersection_size, want.len() as u64);
    assert_eq!(r.sender_set_size, s_size);
    assert_eq!(s.receiver_set_size, r_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sets_match_plaintext_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(2022);
    for round in 0..6 {
        let universe = rng.gen_range(1..5_000u64);
        let nr = rng.gen_range(0..3_000usize);
        let ns = rng.gen_range(0..3_000usize);
        let pick = |rng: &mut ChaCha20Rng, n: usize| -> Vec<Vec<u8>> {
            (0..n)
                .map(|_| {
                    let len = rng.gen_range(0..40);
                    let mut k = rng.gen_range(0..universe).to_le_bytes().to_vec();
                    k.resize(len.max(8), 0xa5);
                    k
                })
                .collect()
        };
        let r = pick(&mut rng, nr);
        let s = pick(&mut rng, ns);
        check(&r, &s, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases() {
    let none: Vec<Vec<u8>> = Vec::new();
    check(&none, &none, 1).await;
    check(&keys(0..100), &none, 2).await;
    check(&none, &keys(0..100), 3).await;
    check(&keys(0..500), &keys(500..1000), 4).await; // disjoint
    check(&keys(0..700), &keys(0..700), 5).await; // identical
    check(&keys(0..1), &keys(0..1), 6).await; // one item each
    check(&[Vec::new()], &[Vec::new(), b"x".to_vec()], 7).await; // the empty key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_neither_leak_nor_double_count() {
    let mut r = keys(0..300);
    r.extend(keys(0..300));
    r.extend(keys(100..200));
    let mut s = keys(150..400);
    s.extend(keys(150..400));
    check(&r, &s, 8).await;
    let (r_out, s_out) = run_both(&r, &s, &RR22, &RR22, 9).await;
    assert_eq!(s_out.expect("sender").receiver_set_size, 300);
    assert_eq!(r_out.expect("receiver").sender_set_size, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_versus_one_hundred_thousand_both_ways() {
    let big = keys(0..100_000);
    check(&keys(77_777..77_778), &big, 10).await;
    check(&big, &keys(99_999..100_000), 11).await;
    check(&keys(200_000..200_001), &big, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_only_is_refused_and_the_peer_told() {
    let (a, b) = MemLink::pair();
    let size_only = PsiConfig {
        protocol: Protocol::Rr22,
        mode: Mode::SizeOnly,
        ..PsiConfig::default()
    };
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let items = keys(0..3);
    let (r, s) = bounded(async {
        tokio::join!(
            run_receiver(&a, &items, &size_only, &mut r_rng, &NoProgress),
            run_sender(&b, &items, &size_only, &mut s_rng, &NoProgress),
        )
    })
    .await;
    assert!(matches!(r, Err(PsiError::InvalidConfig(_))), "{r:?}");
    assert!(matches!(s, Err(PsiError::InvalidConfig(_))), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_running_ecdh_is_a_protocol_mismatch() {
    let (a, b) = MemLink::pair();
    let ecdh = PsiConfig {
        protocol: Protocol::Ecdh,
        ..PsiConfig::default()
    };
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let items = keys(0..3);
    let (r, s) = bounded(async {
        tokio::join!(
            run_receiver(&a, &items, &RR22, &mut r_rng, &NoProgress),
            run_sender(&b, &items, &ecdh, &mut s_rng, &NoProgress),
        )
    })
    .await;
    assert_eq!(
        r.expect_err("receiver"),
        PsiError::ProtocolMismatch {
            ours: Protocol::Rr22,
            theirs: Protocol::Ecdh
        }
    );
    assert!(
        matches!(
            s,
            Err(PsiError::ProtocolMismatch { .. })
                | Err(PsiError::PeerAborted {
                    reason: AbortReason::ProtocolMismatch
                })
        ),
        "{s:?}"
    );
}

/// A gate that counts how often it is asked and answers `allow`.
struct CountingGate {
    asked: AtomicUsize,
    allow: bool,
}

#[async_trait::async_trait]
impl DeliveryGate for CountingGate {
    async fn record(&self) -> bool {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.allow
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_recorded_once_before_the_release_or_nothing_is_learned() {
    for allow in [true, false] {
        let (a, b) = MemLink::pair();
        let gate = CountingGate {
            asked: AtomicUsize::new(0),
            allow,
        };
        let mut r_rng = ChaCha20Rng::seed_from_u64(3);
        let mut s_rng = ChaCha20Rng::seed_from_u64(4);
        let (r_items, s_items) = (keys(0..50), keys(25..75));
        let (r, s) = bounded(async {
            tokio::join!(
                run_receiver(&a, &r_items, &RR22, &mut r_rng, &NoProgress),
                run_sender_reporting_delivery(&b, &s_items, &RR22, &mut s_rng, &NoProgress, &gate),
            )
        })
        .await;
        assert_eq!(gate.asked.load(Ordering::SeqCst), 1);
        if allow {
            assert_eq!(r.expect("receiver").intersection_size, 25);
            assert_eq!(s.expect("sender").receiver_set_size, 50);
        } else {
            assert_eq!(s.expect_err("sender"), PsiError::DeliveryNotRecorded);
            assert_eq!(
                r.expect_err("receiver"),
                PsiError::PeerAborted {
                    reason: AbortReason::Internal
                }
            );
        }
    }
}

// ---- Hostile peers: they run the real VOLE, then send what the test chooses. ----

/// A hello frame as documented: kind, magic, version, protocol (1: rr22), role, mode, size,
/// batch.
fn hello(role: u8, set_size: u64) -> Bytes {
    let mut b = vec![0x01];
    b.extend_from_slice(b"TPSI");
    b.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b.push(1);
    b.push(role);
    b.push(0);
    b.extend_from_slice(&set_size.to_le_bytes());
    b.extend_from_slice(&4096u32.to_le_bytes());
    Bytes::from(b)
}

const SENDER: u8 = 0;
const RECEIVER: u8 = 1;
const KIND_VALUES: u8 = 0x03;
const KIND_RELEASE: u8 = 0x05;
const KIND_OKVS: u8 = 0x06;

fn batch(kind: u8, count: u32, payload: &[u8]) -> Bytes {
    let mut b = vec![kind];
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

fn okvs_len(n: usize) -> usize {
    RbOkvs::new(n, Block::ZERO).expect("okvs").size()
}

fn is_protocol<T: std::fmt::Debug>(r: &Result<T, PsiError>) -> bool {
    matches!(r, Err(PsiError::Protocol(_)))
}

/// Reads until the real party ends: an abort, its `Done`, or the link closing.
async fn wait_for_the_end(link: &MemLink) {
    while let Ok(f) = link.recv().await {
        if matches!(f.first(), Some(0x7F) | Some(0x04)) {
            break;
        }
    }
}

/// A real sender against a fake receiver that announces `n_r` items, runs the VOLE and then
/// sends `frames` in place of its OKVS message, then closes the link (`close`) or waits for
/// the sender to end.
async fn sender_against(
    n_r: usize,
    frames: Vec<Bytes>,
    close: bool,
) -> Result<SenderOutput, PsiError> {
    let (a, b) = MemLink::pair();
    let mut s_rng = ChaCha20Rng::seed_from_u64(5);
    let fake = async move {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        a.send(hello(RECEIVER, n_r as u64)).await.expect("hello");
        a.recv().await.expect("their hello");
        silent_vole::receive(&a, &mut rng, okvs_len(n_r))
            .await
            .expect("vole");
        for f in frames {
            if a.send(f).await.is_err() {
                break;
            }
        }
        if close {
            drop(a);
        } else {
            wait_for_the_end(&a).await;
        }
    };
    let items = keys(0..40);
    bounded(async {
        let (s, ()) = tokio::join!(run_sender(&b, &items, &RR22, &mut s_rng, &NoProgress), fake);
        s
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_okvs_messages_are_protocol_errors() {
    let n_r = 30;
    let m = okvs_len(n_r);
    let blocks = |k: usize| vec![0x5a; 16 * k];
    // Wrong kind, zero count, count past the total, length not matching the count, truncated
    // header, an empty frame.
    for frames in [
        vec![batch(KIND_VALUES, 1, &blocks(1))],
        vec![batch(KIND_OKVS, 0, &[])],
        vec![batch(KIND_OKVS, (m + 2) as u32, &blocks(m + 2))],
        vec![batch(KIND_OKVS, 2, &blocks(1))],
        vec![batch(KIND_OKVS, 1, &[0; 15])],
        vec![Bytes::from_static(&[KIND_OKVS, 1, 0])],
        vec![Bytes::new()],
    ] {
        let s = sender_against(n_r, frames, false).await;
        assert!(is_protocol(&s), "{s:?}");
    }
    // Too few blocks, then the link closes.
    let s = sender_against(n_r, vec![batch(KIND_OKVS, 1, &blocks(1))], true).await;
    assert!(matches!(s, Err(PsiError::Link(_))), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receiver_announcements_are_refused() {
    let (a, b) = MemLink::pair();
    let mut s_rng = ChaCha20Rng::seed_from_u64(7);
    let items = keys(0..4);
    let (s, _) = bounded(async {
        tokio::join!(
            run_sender(&b, &items, &RR22, &mut s_rng, &NoProgress),
            async {
                a.send(hello(RECEIVER, u64::MAX)).await.expect("hello");
                a.recv().await
            }
        )
    })
    .await;
    assert!(matches!(s, Err(PsiError::TooLarge { .. })), "{s:?}");
}

/// A real receiver (`n_r` items) against a fake sender that announces `n_s` items, runs the
/// VOLE, takes the OKVS message, and then sends `frames`.
async fn receiver_against(n_s: usize, frames: Vec<Bytes>) -> Result<ReceiverOutput, PsiError> {
    let (a, b) = MemLink::pair();
    let n_r = 20;
    let mut r_rng = ChaCha20Rng::seed_from_u64(8);
    let fake = async move {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        b.send(hello(SENDER, n_s as u64)).await.expect("hello");
        b.recv().await.expect("their hello");
        let m = okvs_len(n_r);
        silent_vole::send(&b, &mut rng, m).await.expect("vole");
        tessera_ot::wire::recv_blocks(&b, KIND_OKVS, m + 1)
            .await
            .expect("okvs");
        let aborts = frames.last().and_then(|f| f.first()) == Some(&0x7F);
        for f in frames {
            if b.send(f).await.is_err() {
                break;
            }
        }
        // After its own abort the fake expects nothing back.
        if !aborts {
            wait_for_the_end(&b).await;
        }
    };
    let items = keys(0..n_r as u64);
    bounded(async {
        let (r, ()) = tokio::join!(
            run_receiver(&a, &items, &RR22, &mut r_rng, &NoProgress),
            fake
        );
        r
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_and_release_are_protocol_errors() {
    let n_s = 10;
    let values = |k: usize| vec![0x33; 16 * k];
    for frames in [
        // More values than announced; a wrong kind; a length not matching the count.
        vec![batch(KIND_VALUES, 11, &values(11))],
        vec![batch(KIND_OKVS, 10, &values(10))],
        vec![batch(KIND_VALUES, 10, &values(9))],
        // All values, then a release of the wrong length, or a second batch, or `Done`.
        vec![
            batch(KIND_VALUES, 10, &values(10)),
            Bytes::from_static(&[KIND_RELEASE, 1, 2, 3]),
        ],
        vec![
            batch(KIND_VALUES, 10, &values(10)),
            batch(KIND_VALUES, 1, &values(1)),
        ],
        vec![
            batch(KIND_VALUES, 10, &values(10)),
            Bytes::from_static(&[0x04]),
        ],
    ] {
        let r = receiver_against(n_s, frames).await;
        assert!(is_protocol(&r), "{r:?}");
    }
    // An abort in place of the values carries its reason through.
    let r = receiver_against(n_s, vec![Bytes::from_static(&[0x7F, 5])]).await;
    assert_eq!(
        r.expect_err("receiver"),
        PsiError::PeerAborted {
            reason: AbortReason::TooLarge
        }
    );
    // A release of garbage after garbage values: a result that matches nothing, no panic.
    let mut release = vec![KIND_RELEASE];
    release.extend_from_slice(&[7; 16]);
    let r = receiver_against(
        n_s,
        vec![batch(KIND_VALUES, 10, &values(10)), Bytes::from(release)],
    )
    .await
    .expect("receiver");
    assert_eq!(r.intersection_size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_going_away_mid_vole_is_a_link_error() {
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(10);
    let items = keys(0..100);
    let (r, ()) = bounded(async {
        tokio::join!(
            run_receiver(&a, &items, &RR22, &mut r_rng, &NoProgress),
            async move {
                b.send(hello(SENDER, 100)).await.expect("hello");
                b.recv().await.expect("their hello");
                drop(b);
            }
        )
    })
    .await;
    assert!(
        matches!(r, Err(PsiError::Link(LinkError::PeerGone(_)))),
        "{r:?}"
    );
}

/// Both roles of PSI with payload over one `MemLink`.
async fn run_both_payload(
    r_items: &[Vec<u8>],
    s_items: &[Vec<u8>],
    payloads: &[Vec<u8>],
    seed: u64,
) -> (
    Result<ReceiverOutput, PsiError>,
    Result<SenderOutput, PsiError>,
) {
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(seed);
    let mut s_rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    bounded(async {
        tokio::join!(
            tessera_psi::run_receiver_with_payload(&a, r_items, &RR22, &mut r_rng, &NoProgress),
            tessera_psi::run_sender_with_payload(
                &b,
                s_items,
                payloads,
                &RR22,
                &mut s_rng,
                &NoProgress,
                &tessera_psi::NoGate
            ),
        )
    })
    .await
}

/// PSI with payload against the plaintext reference: random sets with duplicates on both
/// sides (the sender's first occurrence's payload is delivered), empty payloads, empty sides
/// and one side much larger than the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_the_common_keys_match_the_plaintext_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let mut cases: Vec<(usize, usize, u64)> = vec![(0, 0, 10), (0, 50, 10), (50, 0, 10)];
    cases.extend([(10, 20_000, 20_000), (3_000, 40, 3_000)]);
    for _ in 0..4 {
        let u = rng.gen_range(1..3_000u64);
        cases.push((rng.gen_range(1..2_000), rng.gen_range(1..2_000), u));
    }
    for (round, (nr, ns, universe)) in cases.into_iter().enumerate() {
        let r: Vec<Vec<u8>> = (0..nr)
            .map(|_| rng.gen_range(0..universe).to_le_bytes().to_vec())
            .collect();
        let s: Vec<Vec<u8>> = (0..ns)
            .map(|_| rng.gen_range(0..universe).to_le_bytes().to_vec())
            .collect();
        let payloads: Vec<Vec<u8>> = (0..ns)
            .map(|i| {
                let len = rng.gen_range(0..120);
                (0..len).map(|j| (i * 7 + j) as u8).collect()
            })
            .collect();
        let (want, r_size, s_size) = reference(&r, &s);
        let (got, sent) = run_both_payload(&r, &s, &payloads, round as u64).await;
        let got = got.expect("receiver");
        assert_eq!(sent.expect("sender").receiver_set_size, r_size);
        assert_eq!(got.sender_set_size, s_size);
        assert_eq!(got.intersection.as_deref(), Some(want.as_slice()));
        let first = |k: &[u8]| s.iter().position(|x| x.as_slice() == k).expect("common");
        let want_payloads: Vec<Vec<u8>> = want
            .iter()
            .map(|&i| payloads[first(&r[i])].clone())
            .collect();
        assert_eq!(got.payloads, Some(want_payloads), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_configuration_and_bounds_are_checked() {
    let items = keys(0..5);
    // Not rr22 in intersection mode; a payload count other than the item count; one payload
    // over the bound.
    let (a, _b) = MemLink::pair();
    let ecdh = PsiConfig {
        protocol: Protocol::Ecdh,
        ..RR22
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let r = tessera_psi::run_receiver_with_payload(&a, &items, &ecdh, &mut rng, &NoProgress).await;
    assert!(matches!(r, Err(PsiError::InvalidConfig(_))), "{r:?}");
    let (r, s) = run_both_payload(&items, &items, &vec![vec![1]; 4], 2).await;
    assert!(matches!(s, Err(PsiError::InvalidConfig(_))), "{s:?}");
    assert!(r.is_err());
    let mut big = vec![Vec::new(); 5];
    big[3] = vec![0; tessera_psi::PAYLOAD_BYTES_MAX + 1];
    let (r, s) = run_both_payload(&items, &items, &big, 3).await;
    assert!(matches!(s, Err(PsiError::TooLarge { .. })), "{s:?}");
    assert!(r.is_err());
}

/// A real payload receiver against a fake sender that runs the VOLE, sends `values` and then
/// `frames` (the payload width and payloads as it likes).
async fn payload_receiver_against(frames: Vec<Bytes>) -> Result<ReceiverOutput, PsiError> {
    let (a, b) = MemLink::pair();
    let n_r = 20;
    let n_s = 10;
    let mut r_rng = ChaCha20Rng::seed_from_u64(8);
    let fake = async move {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        b.send(hello(SENDER, n_s as u64)).await.expect("hello");
        b.recv().await.expect("their hello");
        let m = okvs_len(n_r);
        silent_vole::send(&b, &mut rng, m).await.expect("vole");
        tessera_ot::wire::recv_blocks(&b, KIND_OKVS, m + 1)
            .await
            .expect("okvs");
        b.send(batch(KIND_VALUES, n_s as u32, &vec![0x33; 16 * n_s]))
            .await
            .expect("values");
        for f in frames {
            if b.send(f).await.is_err() {
                break;
            }
        }
        wait_for_the_end(&b).await;
    };
    let items = keys(0..n_r as u64);
    bounded(async {
        let (r, ()) = tokio::join!(
            tessera_psi::run_receiver_with_payload(&a, &items, &RR22, &mut r_rng, &NoProgress),
            fake
        );
        r
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payload_frames_are_protocol_errors() {
    const KIND_PAYLOAD_WIDTH: u8 = 0x07;
    const KIND_PAYLOAD: u8 = 0x08;
    let width = |w: u32| batch(KIND_PAYLOAD_WIDTH, 1, &w.to_le_bytes());
    for frames in [
        // No width (a release straight away); a width below the length prefix; past the
        // bound; payloads of another width than announced; too many payloads.
        vec![Bytes::from_static(&[KIND_RELEASE; 17])],
        vec![width(3)],
        vec![width(u32::MAX)],
        vec![width(8), batch(KIND_PAYLOAD, 10, &[0; 70])],
        vec![width(8), batch(KIND_PAYLOAD, 11, &[0; 88])],
    ] {
        let r = payload_receiver_against(frames).await;
        assert!(is_protocol(&r), "{r:?}");
    }
    // Garbage payloads and a garbage release: nothing matches, nothing is opened, no panic.
    let mut release = vec![KIND_RELEASE];
    release.extend_from_slice(&[7; 16]);
    let r = payload_receiver_against(vec![
        width(8),
        batch(KIND_PAYLOAD, 10, &[0xEE; 80]),
        Bytes::from(release),
    ])
    .await
    .expect("receiver");
    assert_eq!(r.intersection_size, 0);
    assert_eq!(r.payloads, Some(Vec::new()));
}
