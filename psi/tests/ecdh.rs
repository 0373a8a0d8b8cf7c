//! End-to-end tests of the ECDH-PSI engine (`Protocol::Ecdh`) over `MemLink`: both roles run concurrently and the
//! result is compared with a plaintext `HashSet` reference; hostile or failing peers must yield
//! errors, never panics or hangs.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use curve25519_dalek::ristretto::RistrettoPoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::{Link, LinkError, MemLink};
mod common;

use common::{bounded, keys, reference, run_both};
use tessera_psi::{
    AbortReason, DeliveryGate, Mode, NoProgress, PROTOCOL_VERSION, Progress, Protocol, PsiConfig,
    PsiError, ReceiverOutput, SenderOutput, run_receiver, run_sender,
    run_sender_reporting_delivery,
};

fn cfg(mode: Mode) -> PsiConfig {
    PsiConfig {
        protocol: Protocol::Ecdh,
        mode,
        ..PsiConfig::default()
    }
}

async fn check(r_items: &[Vec<u8>], s_items: &[Vec<u8>], seed: u64) {
    let (want, r_size, s_size) = reference(r_items, s_items);
    for mode in [Mode::Intersection, Mode::SizeOnly] {
        let (r, s) = run_both(r_items, s_items, &cfg(mode), &cfg(mode), seed).await;
        let r = r.expect("receiver");
        let s = s.expect("sender");
        assert_eq!(r.intersection_size, want.len() as u64, "{mode}");
        assert_eq!(r.sender_set_size, s_size, "{mode}");
        assert_eq!(s.receiver_set_size, r_size, "{mode}");
        match mode {
            Mode::Intersection => assert_eq!(r.intersection.as_deref(), Some(&want[..])),
            Mode::SizeOnly => assert_eq!(r.intersection, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sets_match_plaintext_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    for round in 0..4u64 {
        let universe = rng.gen_range(10..3000u64);
        let nr = rng.gen_range(0..2500usize);
        let ns = rng.gen_range(0..2500usize);
        let r: Vec<Vec<u8>> = (0..nr)
            .map(|_| rng.gen_range(0..universe).to_string().into_bytes())
            .collect();
        let s: Vec<Vec<u8>> = (0..ns)
            .map(|_| rng.gen_range(0..universe).to_string().into_bytes())
            .collect();
        check(&r, &s, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases() {
    let empty: Vec<Vec<u8>> = Vec::new();
    check(&empty, &empty, 1).await;
    check(&keys(0..50), &empty, 2).await;
    check(&empty, &keys(0..50), 3).await;
    check(&keys(0..300), &keys(300..600), 4).await; // disjoint
    check(&keys(0..300), &keys(0..300), 5).await; // identical
    // Empty strings and binary keys are ordinary items.
    check(
        &[vec![], vec![0, 1, 2], vec![0xff]],
        &[vec![], vec![0xff]],
        6,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_neither_leak_nor_double_count() {
    let mut r = keys(0..100);
    r.extend(keys(50..100)); // duplicates after the first occurrences
    r.insert(0, b"key-99".to_vec()); // a duplicate whose first occurrence comes first
    let mut s = keys(80..200);
    s.extend(keys(80..200));
    s.extend(keys(90..95));
    check(&r, &s, 7).await;
    let (r_out, s_out) = run_both(
        &r,
        &s,
        &cfg(Mode::Intersection),
        &cfg(Mode::Intersection),
        8,
    )
    .await;
    let r_out = r_out.expect("receiver");
    assert_eq!(r_out.intersection_size, 20);
    assert_eq!(r_out.sender_set_size, 120);
    assert_eq!(s_out.expect("sender").receiver_set_size, 100);
    let hits = r_out.intersection.expect("intersection");
    assert_eq!(hits[0], 0); // "key-99" at index 0
    assert!(hits.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_versus_one_hundred_thousand() {
    let big = keys(0..100_000);
    check(&[b"key-77777".to_vec()], &big, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_and_small_frames_respect_bounds() {
    let r = keys(0..1000);
    let s = keys(500..1700);
    let (want, _, _) = reference(&r, &s);
    // Batches of 7 items by configuration, and of 10 points by the link's frame limit.
    let (a, b) = MemLink::pair_with_limit(5 + 32 * 10);
    let r_cfg = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::Intersection,
        batch_items_max: 7,
    };
    let s_cfg = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::Intersection,
        batch_items_max: 4096,
    };
    let mut r_rng = ChaCha20Rng::seed_from_u64(11);
    let mut s_rng = ChaCha20Rng::seed_from_u64(12);
    let (r_out, s_out) = bounded(async {
        tokio::join!(
            run_receiver(&a, &r, &r_cfg, &mut r_rng, &NoProgress),
            run_sender(&b, &s, &s_cfg, &mut s_rng, &NoProgress),
        )
    })
    .await;
    assert_eq!(r_out.expect("receiver").intersection, Some(want));
    s_out.expect("sender");
    // Receiver: hello + ceil(1000 / 7) point batches + done.
    assert_eq!(a.stats().frames_sent, 1 + 143 + 1);
    // Sender: hello + ceil(1200 / 10) point batches + one value batch per receiver batch +
    // the release.
    assert_eq!(b.stats().frames_sent, 1 + 120 + 143 + 1);
    // Size-only mode re-batches the shuffled values with the sender's batch size.
    let (a, b) = MemLink::pair_with_limit(5 + 32 * 10);
    let size_only = cfg(Mode::SizeOnly);
    let (r_out, s_out) = bounded(async {
        tokio::join!(
            run_receiver(&a, &r, &size_only, &mut r_rng, &NoProgress),
            run_sender(&b, &s, &size_only, &mut s_rng, &NoProgress),
        )
    })
    .await;
    assert_eq!(r_out.expect("receiver").intersection_size, 500);
    s_out.expect("sender");
    assert_eq!(b.stats().frames_sent, 1 + 120 + 100 + 1);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64, u64)>>);

impl Progress for Recorder {
    fn report(&self, phase: &str, done: u64, total: u64) {
        self.0
            .lock()
            .expect("lock")
            .push((phase.to_owned(), done, total));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_per_batch() {
    let r = keys(0..1000);
    let s = keys(0..600);
    let (a, b) = MemLink::pair();
    let c = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::Intersection,
        batch_items_max: 100,
    };
    let (rp, sp) = (Recorder::default(), Recorder::default());
    let mut r_rng = ChaCha20Rng::seed_from_u64(13);
    let mut s_rng = ChaCha20Rng::seed_from_u64(14);
    let (r_out, s_out) = bounded(async {
        tokio::join!(
            run_receiver(&a, &r, &c, &mut r_rng, &rp),
            run_sender(&b, &s, &c, &mut s_rng, &sp),
        )
    })
    .await;
    r_out.expect("receiver");
    s_out.expect("sender");
    let last = |rec: &Recorder, phase: &str| {
        let v = rec.0.lock().expect("lock");
        let n = v.iter().filter(|(p, _, _)| p == phase).count();
        let last = v
            .iter()
            .rev()
            .find(|(p, _, _)| p == phase)
            .map(|(_, d, t)| (*d, *t));
        (n, last)
    };
    assert_eq!(last(&rp, "hash"), (10, Some((1000, 1000))));
    assert_eq!(last(&rp, "blind"), (6, Some((600, 600))));
    assert_eq!(last(&rp, "exchange"), (10, Some((1000, 1000))));
    assert_eq!(last(&rp, "match"), (2, Some((1000, 1000))));
    assert_eq!(last(&sp, "hash"), (6, Some((600, 600))));
    assert_eq!(last(&sp, "blind"), (10, Some((1000, 1000))));
    assert_eq!(last(&sp, "exchange"), (10, Some((1000, 1000))));
}

#[tokio::test]
async fn mode_mismatch_fails_on_both_sides() {
    let (r, s) = run_both(
        &keys(0..10),
        &keys(0..10),
        &cfg(Mode::Intersection),
        &cfg(Mode::SizeOnly),
        15,
    )
    .await;
    assert_eq!(
        r,
        Err(PsiError::ModeMismatch {
            ours: Mode::Intersection,
            theirs: Mode::SizeOnly
        })
    );
    assert_eq!(
        s,
        Err(PsiError::ModeMismatch {
            ours: Mode::SizeOnly,
            theirs: Mode::Intersection
        })
    );
}

#[tokio::test]
async fn two_receivers_fail_with_role_mismatch() {
    let (a, b) = MemLink::pair();
    let items = keys(0..10);
    let c = cfg(Mode::Intersection);
    let mut r1 = ChaCha20Rng::seed_from_u64(16);
    let mut r2 = ChaCha20Rng::seed_from_u64(17);
    let (x, y) = bounded(async {
        tokio::join!(
            run_receiver(&a, &items, &c, &mut r1, &NoProgress),
            run_receiver(&b, &items, &c, &mut r2, &NoProgress),
        )
    })
    .await;
    assert!(matches!(x, Err(PsiError::RoleMismatch { .. })), "{x:?}");
    assert!(matches!(y, Err(PsiError::RoleMismatch { .. })), "{y:?}");
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let (a, _b) = MemLink::pair();
    let mut rng = ChaCha20Rng::seed_from_u64(18);
    let c = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::Intersection,
        batch_items_max: 0,
    };
    let r = run_receiver(&a, &keys(0..3), &c, &mut rng, &NoProgress).await;
    assert!(matches!(r, Err(PsiError::InvalidConfig(_))), "{r:?}");
    let (a, _b) = MemLink::pair_with_limit(36);
    let r = run_sender(&a, &keys(0..3), &cfg(Mode::SizeOnly), &mut rng, &NoProgress).await;
    assert!(matches!(r, Err(PsiError::InvalidConfig(_))), "{r:?}");
    let (a, _b) = MemLink::pair();
    let r = run_sender(
        &a,
        &[vec![0u8; tessera_psi::ITEM_BYTES_MAX + 1]],
        &cfg(Mode::SizeOnly),
        &mut rng,
        &NoProgress,
    )
    .await;
    assert!(
        matches!(
            r,
            Err(PsiError::TooLarge {
                what: "item bytes",
                ..
            })
        ),
        "{r:?}"
    );
}

// ---- Hostile peers, speaking the documented wire format by hand. ----

/// A hello frame as documented in the crate: kind, magic, version, protocol (0: ecdh), role,
/// mode, size, batch.
fn hello(version: u16, role: u8, mode: u8, set_size: u64, batch: u32) -> Bytes {
    let mut b = vec![0x01];
    b.extend_from_slice(b"TPSI");
    b.extend_from_slice(&version.to_le_bytes());
    b.push(0);
    b.push(role);
    b.push(mode);
    b.extend_from_slice(&set_size.to_le_bytes());
    b.extend_from_slice(&batch.to_le_bytes());
    Bytes::from(b)
}

const SENDER: u8 = 0;
const RECEIVER: u8 = 1;
const INTERSECTION: u8 = 0;

fn points_batch(points: &[[u8; 32]]) -> Bytes {
    let mut b = vec![0x02];
    b.extend_from_slice(&(points.len() as u32).to_le_bytes());
    for p in points {
        b.extend_from_slice(p);
    }
    Bytes::from(b)
}

fn random_points(n: usize, seed: u64) -> Vec<[u8; 32]> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| RistrettoPoint::random(&mut rng).compress().to_bytes())
        .collect()
}

/// Runs a real receiver against a scripted fake sender (spawned, and stopped once the receiver
/// returns); returns the receiver's result.
async fn receiver_against<F, Fut>(items: &[Vec<u8>], fake: F) -> Result<ReceiverOutput, PsiError>
where
    F: FnOnce(MemLink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (a, b) = MemLink::pair();
    let fake = tokio::spawn(fake(b));
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let c = cfg(Mode::Intersection);
    let r = bounded(run_receiver(&a, items, &c, &mut rng, &NoProgress)).await;
    fake.abort();
    r
}

/// Runs a real sender against a scripted fake receiver (spawned, and stopped once the sender
/// returns); returns the sender's result.
async fn sender_against<F, Fut>(items: &[Vec<u8>], fake: F) -> Result<SenderOutput, PsiError>
where
    F: FnOnce(MemLink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (a, b) = MemLink::pair();
    let fake = tokio::spawn(fake(b));
    let mut rng = ChaCha20Rng::seed_from_u64(98);
    let c = cfg(Mode::Intersection);
    let s = bounded(run_sender(&a, items, &c, &mut rng, &NoProgress)).await;
    fake.abort();
    s
}

/// Sends `frames` after a hello, then keeps the link open (draining) until the peer is done.
async fn script(link: MemLink, frames: Vec<Bytes>, unchecked: bool) {
    for f in frames {
        let sent = if unchecked {
            link.dangerous_send_unchecked(f).await
        } else {
            link.send(f).await
        };
        if sent.is_err() {
            return;
        }
    }
    while link.recv().await.is_ok() {}
}

fn is_protocol<T: std::fmt::Debug>(r: &Result<T, PsiError>) -> bool {
    matches!(r, Err(PsiError::Protocol(_)))
}

#[tokio::test]
async fn garbage_frames_are_protocol_errors() {
    let items = keys(0..20);
    let good_hello = hello(PROTOCOL_VERSION, SENDER, INTERSECTION, 3, 4096);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut noise = vec![0u8; 777];
    rng.fill(&mut noise[..]);
    let cases: Vec<Vec<Bytes>> = vec![
        // Garbage instead of a hello.
        vec![Bytes::from(noise.clone())],
        vec![Bytes::new()],
        vec![hello(PROTOCOL_VERSION, SENDER, 7, 3, 4096)],
        vec![Bytes::from(good_hello[..good_hello.len() - 1].to_vec())],
        // A points batch instead of a hello.
        vec![points_batch(&random_points(3, 1))],
        // Truncated batch.
        vec![good_hello.clone(), {
            let b = points_batch(&random_points(3, 2));
            b.slice(..b.len() - 5)
        }],
        // Batch whose header claims more than it carries.
        vec![good_hello.clone(), {
            let mut b = points_batch(&random_points(3, 3)).to_vec();
            b[1] = 4;
            Bytes::from(b)
        }],
        // More points than announced.
        vec![good_hello.clone(), points_batch(&random_points(4, 4))],
        // Invalid point encodings and the identity.
        vec![
            good_hello.clone(),
            points_batch(&[[0xff; 32], [1; 32], [2; 32]]),
        ],
        vec![good_hello.clone(), points_batch(&[[0; 32]])],
        // Values for points the receiver has not sent (it sends 20; these are 21).
        vec![good_hello.clone(), {
            let mut b = vec![0x03];
            b.extend_from_slice(&21u32.to_le_bytes());
            b.extend(std::iter::repeat_n(7u8, 21 * 16));
            Bytes::from(b)
        }],
        // A release of the wrong length, and a release before the values.
        vec![good_hello.clone(), Bytes::from_static(&[0x05, 1, 2])],
        vec![good_hello.clone(), Bytes::from(vec![0x05; 17])],
        // Unknown kind, and a second hello.
        vec![good_hello.clone(), Bytes::from_static(&[0x42, 0, 0])],
        vec![good_hello.clone(), good_hello.clone()],
        // Random garbage after a good hello.
        vec![good_hello.clone(), Bytes::from(noise)],
    ];
    for (i, frames) in cases.into_iter().enumerate() {
        let r = receiver_against(&items, |l| script(l, frames, false)).await;
        assert!(is_protocol(&r), "case {i}: {r:?}");
    }
}

#[tokio::test]
async fn hello_checks_version_and_announced_size() {
    let items = keys(0..5);
    let r = receiver_against(&items, |l| {
        script(
            l,
            vec![hello(PROTOCOL_VERSION + 1, SENDER, INTERSECTION, 3, 16)],
            false,
        )
    })
    .await;
    assert_eq!(
        r,
        Err(PsiError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 1
        })
    );
    let r = receiver_against(&items, |l| {
        script(
            l,
            vec![hello(PROTOCOL_VERSION, SENDER, INTERSECTION, u64::MAX, 16)],
            false,
        )
    })
    .await;
    assert!(
        matches!(
            r,
            Err(PsiError::TooLarge {
                what: "peer set size",
                ..
            })
        ),
        "{r:?}"
    );
    let r = receiver_against(&items, |l| {
        script(
            l,
            vec![hello(PROTOCOL_VERSION, SENDER, INTERSECTION, 3, 0)],
            false,
        )
    })
    .await;
    assert!(is_protocol(&r), "{r:?}");
    // A batch larger than the peer's own announced batch size.
    let r = sender_against(&items, |l| {
        script(
            l,
            vec![
                hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 10, 2),
                points_batch(&random_points(3, 6)),
            ],
            false,
        )
    })
    .await;
    assert!(is_protocol(&r), "{r:?}");
}

#[tokio::test]
async fn garbage_to_the_sender_is_a_protocol_error() {
    let items = keys(0..20);
    let good_hello = hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 2, 4096);
    for frames in [
        vec![
            good_hello.clone(),
            Bytes::from_static(&[0x02, 1, 0, 0, 0, 9]),
        ],
        vec![good_hello.clone(), points_batch(&[[0xee; 32], [0xee; 32]])],
        vec![good_hello.clone(), Bytes::from_static(&[0x03, 1, 0, 0, 0])],
        // "Done" before all points arrived.
        vec![good_hello.clone(), Bytes::from_static(&[0x04])],
        // After all points, anything but "done".
        vec![
            good_hello.clone(),
            points_batch(&random_points(2, 7)),
            good_hello.clone(),
        ],
    ] {
        let r = sender_against(&items, |l| script(l, frames, false)).await;
        assert!(is_protocol(&r), "{r:?}");
    }
}

#[tokio::test]
async fn oversize_frame_is_a_link_error() {
    let items = keys(0..20);
    let huge = Bytes::from(vec![0x02; tessera_core::limits::FRAME_BYTES_MAX + 1]);
    let r = receiver_against(&items, |l| {
        script(
            l,
            vec![
                hello(PROTOCOL_VERSION, SENDER, INTERSECTION, 3, 4096),
                huge.clone(),
            ],
            true,
        )
    })
    .await;
    assert!(
        matches!(r, Err(PsiError::Link(LinkError::FrameTooLarge { .. }))),
        "{r:?}"
    );
    let r = sender_against(&items, |l| script(l, vec![huge], true)).await;
    assert!(
        matches!(r, Err(PsiError::Link(LinkError::FrameTooLarge { .. }))),
        "{r:?}"
    );
}

#[tokio::test]
async fn peer_dropping_the_link_is_peer_gone() {
    let items = keys(0..5000);
    // Before the hello.
    let r = receiver_against(&items, |l| async move { drop(l) }).await;
    assert!(
        matches!(r, Err(PsiError::Link(LinkError::PeerGone(_)))),
        "{r:?}"
    );
    // Mid-protocol: after a hello and one batch of a larger announced set.
    let r = receiver_against(&items, |l| async move {
        let _ = l
            .send(hello(PROTOCOL_VERSION, SENDER, INTERSECTION, 10, 4096))
            .await;
        let _ = l.send(points_batch(&random_points(5, 8))).await;
        let _ = l.recv().await;
        drop(l);
    })
    .await;
    assert!(
        matches!(r, Err(PsiError::Link(LinkError::PeerGone(_)))),
        "{r:?}"
    );
    let s = sender_against(&items, |l| async move {
        let _ = l
            .send(hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 10, 4096))
            .await;
        let _ = l.send(points_batch(&random_points(5, 9))).await;
        let _ = l.recv().await;
        drop(l);
    })
    .await;
    assert!(
        matches!(s, Err(PsiError::Link(LinkError::PeerGone(_)))),
        "{s:?}"
    );
    // A real sender whose receiver goes away right after the hellos.
    let s = sender_against(&items, |l| async move {
        let _ = l
            .send(hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 10, 4096))
            .await;
        let _ = l.recv().await;
        drop(l);
    })
    .await;
    assert!(
        matches!(s, Err(PsiError::Link(LinkError::PeerGone(_)))),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_failing_peer_is_told_why() {
    // The receiver rejects the sender's garbage and sends an abort frame, so the real sender
    // stops promptly with `PeerAborted` instead of waiting.
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(20);
    let mut s_rng = ChaCha20Rng::seed_from_u64(21);
    let r_items = keys(0..10);
    let s_items = keys(0..10);
    let c = cfg(Mode::Intersection);
    let big = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::Intersection,
        batch_items_max: tessera_psi::BATCH_ITEMS_LIMIT + 1,
    };
    let (r, s) = bounded(async {
        tokio::join!(
            run_receiver(&a, &r_items, &big, &mut r_rng, &NoProgress),
            async {
                // Give the receiver time to fail and send its abort before we start.
                tokio::time::sleep(Duration::from_millis(50)).await;
                run_sender(&b, &s_items, &c, &mut s_rng, &NoProgress).await
            }
        )
    })
    .await;
    assert!(matches!(r, Err(PsiError::InvalidConfig(_))), "{r:?}");
    assert_eq!(
        s,
        Err(PsiError::PeerAborted {
            reason: AbortReason::InvalidConfig
        })
    );
}

#[tokio::test]
async fn config_and_names_parse() {
    assert_eq!("size".parse::<Mode>(), Ok(Mode::SizeOnly));
    assert_eq!("Intersection".parse::<Mode>(), Ok(Mode::Intersection));
    assert!("both".parse::<Mode>().is_err());
    assert_eq!(
        "receiver".parse::<tessera_psi::Role>(),
        Ok(tessera_psi::Role::Receiver)
    );
    let c: PsiConfig = serde_json::from_str(r#"{"mode":"size"}"#).expect("json");
    assert_eq!(c.mode, Mode::SizeOnly);
    assert_eq!(c.protocol, Protocol::Rr22);
    assert_eq!("ECDH".parse::<Protocol>(), Ok(Protocol::Ecdh));
    assert_eq!("rr22".parse::<Protocol>(), Ok(Protocol::Rr22));
    assert!("kkrt".parse::<Protocol>().is_err());
    assert_eq!(Protocol::default_for(Mode::SizeOnly), Protocol::Ecdh);
    assert_eq!(Protocol::default_for(Mode::Intersection), Protocol::Rr22);
    assert_eq!(c.batch_items_max, 4096);
    assert_eq!(
        serde_json::to_string(&Mode::Intersection).expect("json"),
        "\"intersection\""
    );
}

/// The doubly-blinded values a real sender returns for `points`, as seen by a fake receiver.
async fn values_returned_by_sender(mode: Mode, points: &[[u8; 32]]) -> Vec<[u8; 16]> {
    let (a, b) = MemLink::pair();
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let c = cfg(mode);
    let items = keys(0..3);
    let mode_code = match mode {
        Mode::Intersection => 0,
        Mode::SizeOnly => 1,
    };
    let fake = async {
        let n = points.len() as u64;
        b.send(hello(PROTOCOL_VERSION, RECEIVER, mode_code, n, 4096))
            .await
            .expect("send hello");
        b.send(points_batch(points)).await.expect("send points");
        let mut values = Vec::new();
        while values.len() < points.len() {
            let frame = b.recv().await.expect("frame");
            if frame.first() == Some(&0x03) {
                values.extend(
                    frame[5..]
                        .chunks_exact(16)
                        .map(|v| <[u8; 16]>::try_from(v).expect("16 bytes")),
                );
            }
        }
        b.send(Bytes::from_static(&[0x04]))
            .await
            .expect("send done");
        values
    };
    let (s, values) =
        bounded(async { tokio::join!(run_sender(&a, &items, &c, &mut rng, &NoProgress), fake) })
            .await;
    assert_eq!(s.expect("sender").receiver_set_size, points.len() as u64);
    values
}

#[tokio::test]
async fn size_only_mode_shuffles_the_returned_values() {
    // Same seed, so the same sender key: the values are equal as multisets, but only
    // intersection mode keeps the receiver's order.
    let points = random_points(200, 30);
    let in_order = values_returned_by_sender(Mode::Intersection, &points).await;
    let shuffled = values_returned_by_sender(Mode::SizeOnly, &points).await;
    assert_ne!(in_order, shuffled);
    let (mut x, mut y) = (in_order.clone(), shuffled.clone());
    x.sort_unstable();
    y.sort_unstable();
    assert_eq!(x, y);
}

#[test]
fn protocol_futures_are_send() {
    // The worker runs both roles on a multi-threaded runtime, which needs `Send` futures.
    fn assert_send<T: Send>(_: &T) {}
    let (a, _b) = MemLink::pair();
    let items = keys(0..3);
    let c = PsiConfig::default();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let r = run_receiver(&a, &items, &c, &mut rng, &NoProgress);
    assert_send(&r);
    drop(r);
    let s = run_sender(&a, &items, &c, &mut rng, &NoProgress);
    assert_send(&s);
}

/// A gate that counts how often it is asked and answers `allow`.
struct CountingGate {
    asked: std::sync::atomic::AtomicUsize,
    allow: bool,
}

impl CountingGate {
    fn new(allow: bool) -> Self {
        Self {
            asked: std::sync::atomic::AtomicUsize::new(0),
            allow,
        }
    }
    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl DeliveryGate for CountingGate {
    async fn record(&self) -> bool {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.allow
    }
}

/// Runs a real sender (intersection mode, three keys) against `fake`, counting how often it
/// asks its delivery gate.
async fn sender_delivery_against<F, Fut>(fake: F) -> (Result<SenderOutput, PsiError>, usize)
where
    F: FnOnce(MemLink) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (a, b) = MemLink::pair();
    let fake = tokio::spawn(fake(b));
    let mut rng = ChaCha20Rng::seed_from_u64(97);
    let c = cfg(Mode::Intersection);
    let gate = CountingGate::new(true);
    let items = keys(0..3);
    let s = bounded(run_sender_reporting_delivery(
        &a,
        &items,
        &c,
        &mut rng,
        &NoProgress,
        &gate,
    ))
    .await;
    fake.abort();
    (s, gate.asked())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_withholding_done_has_still_been_delivered_to() {
    let points = random_points(5, 31);
    // Takes every frame the sender owes it (3 points, 5 values), then hangs up without `Done`.
    let (s, delivered) = sender_delivery_against(move |b| async move {
        if b.send(hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 5, 4096))
            .await
            .is_err()
            || b.send(points_batch(&points)).await.is_err()
        {
            return;
        }
        let (mut their_points, mut values) = (0usize, 0usize);
        while their_points < 3 || values < 5 {
            let Ok(frame) = b.recv().await else { return };
            let n = frame
                .get(1..5)
                .map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize);
            match frame.first() {
                Some(0x02) => their_points += n,
                Some(0x03) => values += n,
                _ => {}
            }
        }
        drop(b);
    })
    .await;
    assert!(s.is_err(), "no Done, so the sender itself fails: {s:?}");
    assert_eq!(
        delivered, 1,
        "the delivery was recorded before the last frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_recorded_once_before_the_last_frame_or_the_frame_is_withheld() {
    for mode in [Mode::Intersection, Mode::SizeOnly] {
        // An honest receiver and a recording gate: asked exactly once, the run succeeds.
        let (a, b) = MemLink::pair();
        let mut r_rng = ChaCha20Rng::seed_from_u64(5);
        let mut s_rng = ChaCha20Rng::seed_from_u64(6);
        let c = cfg(mode);
        let gate = CountingGate::new(true);
        let (r_items, s_items) = (keys(0..10), keys(5..20));
        let (r, s) = bounded(async {
            tokio::join!(
                run_receiver(&a, &r_items, &c, &mut r_rng, &NoProgress),
                run_sender_reporting_delivery(&b, &s_items, &c, &mut s_rng, &NoProgress, &gate),
            )
        })
        .await;
        assert_eq!(r.expect("receiver").intersection_size, 5, "{mode}");
        s.expect("sender");
        assert_eq!(gate.asked(), 1, "{mode}");

        // A gate that cannot record: the sender stops before its last frame, so the receiver
        // never gets its output.
        let (a, b) = MemLink::pair();
        let gate = CountingGate::new(false);
        let (r, s) = bounded(async {
            tokio::join!(
                run_receiver(&a, &r_items, &c, &mut r_rng, &NoProgress),
                run_sender_reporting_delivery(&b, &s_items, &c, &mut s_rng, &NoProgress, &gate),
            )
        })
        .await;
        assert!(
            matches!(s, Err(PsiError::DeliveryNotRecorded)),
            "{mode}: {s:?}"
        );
        assert!(r.is_err(), "{mode}: the receiver got no output: {r:?}");
        assert_eq!(gate.asked(), 1, "{mode}");
    }

    // A receiver that hangs up after some of its points, before the sender's last frame: the
    // gate is never asked.
    let points = random_points(5, 32);
    let (s, asked) = sender_delivery_against(move |b| async move {
        let _ = b
            .send(hello(PROTOCOL_VERSION, RECEIVER, INTERSECTION, 5, 4096))
            .await;
        let _ = b.send(points_batch(&points[..2])).await;
        drop(b);
    })
    .await;
    assert!(s.is_err());
    assert_eq!(asked, 0, "the sender never got to its last frame");
}

/// `trunc16(P·k)` for a compressed point `P`, as a receiver computes its comparison values.
fn reblind16(point: &[u8], k: &curve25519_dalek::Scalar) -> [u8; 16] {
    let p = curve25519_dalek::ristretto::CompressedRistretto::from_slice(point)
        .expect("32 bytes")
        .decompress()
        .expect("valid point");
    let enc = (p * k).compress().to_bytes();
    <[u8; 16]>::try_from(&enc[..16]).expect("16 bytes")
}

/// A receiver that follows the protocol by hand, with its own exponent, and so computes every
/// comparison value itself: before the sender's `Release`, the values it holds match none of
/// its own, whatever batches came (an early quitter learns nothing, not even a count); after
/// it, exactly the common keys match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_match_nothing_before_the_release_key() {
    use aes::cipher::{BlockDecrypt, KeyInit};
    use sha2::Sha512;
    for mode in [Mode::Intersection, Mode::SizeOnly] {
        let r_items = keys(0..40);
        let s_items = keys(20..100);
        let (a, b) = MemLink::pair();
        let gate = CountingGate::new(true);
        let mut s_rng = ChaCha20Rng::seed_from_u64(41);
        let c = PsiConfig {
            protocol: Protocol::Ecdh,
            mode,
            batch_items_max: 8,
        };
        let fake = async {
            let mut rng = ChaCha20Rng::seed_from_u64(42);
            let k = curve25519_dalek::Scalar::random(&mut rng);
            let mode_code = u8::from(mode == Mode::SizeOnly);
            b.send(hello(PROTOCOL_VERSION, RECEIVER, mode_code, 40, 8))
                .await
                .expect("hello");
            let points: Vec<[u8; 32]> = r_items
                .iter()
                .map(|x| {
                    let mut m = tessera_psi::HASH_DOMAIN.to_vec();
                    m.extend_from_slice(x);
                    (RistrettoPoint::hash_from_bytes::<Sha512>(&m) * k)
                        .compress()
                        .to_bytes()
                })
                .collect();
            for chunk in points.chunks(8) {
                b.send(points_batch(chunk)).await.expect("points");
            }
            let (mut theirs, mut values) = (HashSet::new(), Vec::new());
            let key = loop {
                let frame = b.recv().await.expect("frame");
                match frame.first() {
                    Some(0x02) => {
                        theirs.extend(frame[5..].chunks_exact(32).map(|p| reblind16(p, &k)))
                    }
                    Some(0x03) => {
                        values.extend(
                            frame[5..]
                                .chunks_exact(16)
                                .map(|v| <[u8; 16]>::try_from(v).expect("16")),
                        );
                        let early = values.iter().filter(|v| theirs.contains(*v)).count();
                        assert_eq!(early, 0, "{mode}: a value matched before the release");
                    }
                    Some(0x05) => break <[u8; 16]>::try_from(&frame[1..]).expect("16-byte key"),
                    Some(0x01) => {} // the sender's hello
                    other => panic!("unexpected frame kind {other:?}"),
                }
            };
            let before = values.iter().filter(|v| theirs.contains(*v)).count();
            assert_eq!(before, 0, "{mode}: all values, no key: nothing matches");
            assert_eq!(gate.asked(), 1, "{mode}: recorded before the key was sent");
            assert_eq!(
                (theirs.len(), values.len()),
                (80, 40),
                "{mode}: every frame came first"
            );
            b.send(Bytes::from_static(&[0x04])).await.expect("done");
            let cipher = aes::Aes128::new(&key.into());
            let mut matched = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let mut block = *v;
                cipher.decrypt_block((&mut block).into());
                if theirs.contains(&block) {
                    matched.push(i);
                }
            }
            matched
        };
        let (s, matched) = bounded(async {
            tokio::join!(
                run_sender_reporting_delivery(&a, &s_items, &c, &mut s_rng, &NoProgress, &gate),
                fake
            )
        })
        .await;
        assert_eq!(s.expect("sender").receiver_set_size, 40);
        assert_eq!(matched.len(), 20, "{mode}");
        if mode == Mode::Intersection {
            assert_eq!(
                matched,
                (20..40).collect::<Vec<_>>(),
                "in the receiver's order"
            );
        }
    }
}
