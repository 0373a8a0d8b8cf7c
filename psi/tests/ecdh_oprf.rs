//! ECDH-OPRF PSI (`tessera_psi::ecdh_oprf`) against the plaintext reference: either side the
//! larger (the protocol's direction follows the sizes), duplicates, empty sides, a receiver that
//! keeps the sender's encodings across runs, the encoded set's file, the delivery gate, a
//! hostile sender, and the homomorphic lookup (`tessera_psi::oprf_query`) in its place: one
//! and several tables, several rows, empty sides, the choice between copy and lookup, its
//! index file, and hostile frames on both sides.

// This binary uses only some of the shared helpers.
#[allow(dead_code)]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{bounded, keys, reference};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::{Link, MemLink};
use tessera_psi::ecdh_oprf::{EncodedSet, Lookup, run_receiver, run_sender};
use tessera_psi::oprf_query::QueryIndex;
use tessera_psi::{
    DeliveryGate, NoGate, NoProgress, Protocol, PsiConfig, PsiError, ReceiverOutput, SenderOutput,
};

static CFG: std::sync::LazyLock<PsiConfig> = std::sync::LazyLock::new(|| PsiConfig {
    protocol: Protocol::EcdhOprf,
    batch_items_max: 300,
    ..PsiConfig::default()
});

fn cfg() -> &'static PsiConfig {
    &CFG
}

fn encode(items: &[Vec<u8>], seed: u64) -> EncodedSet {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut b = EncodedSet::builder(&mut rng);
    b.add(items).expect("encode");
    b.finish()
}

struct Ran {
    receiver: Result<ReceiverOutput, PsiError>,
    sender: Result<SenderOutput, PsiError>,
    /// Bytes the receiver received.
    received: u64,
}

async fn run(
    r: &[Vec<u8>],
    s: &[Vec<u8>],
    set: &EncodedSet,
    dir: &std::path::Path,
    gate: &dyn DeliveryGate,
) -> Ran {
    run_with(r, s, set, None, Lookup::Auto, dir, gate).await
}

async fn run_with(
    r: &[Vec<u8>],
    s: &[Vec<u8>],
    set: &EncodedSet,
    index: Option<&QueryIndex>,
    lookup: Lookup,
    dir: &std::path::Path,
    gate: &dyn DeliveryGate,
) -> Ran {
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let s_items = s.to_vec();
    let (receiver, sender) = bounded(async {
        tokio::join!(
            run_receiver(&a, r, dir, cfg(), lookup, &mut r_rng, &NoProgress),
            run_sender(
                &b,
                set,
                index,
                Box::new(move || Ok(s_items)),
                cfg(),
                &mut s_rng,
                &NoProgress,
                gate
            ),
        )
    })
    .await;
    Ran {
        receiver,
        sender,
        received: a.stats().bytes_received,
    }
}

fn check(ran: &Ran, r: &[Vec<u8>], s: &[Vec<u8>]) {
    let (want, r_distinct, s_distinct) = reference(r, s);
    let out = ran.receiver.as_ref().expect("receiver");
    let sent = ran.sender.as_ref().expect("sender");
    assert_eq!(out.intersection.as_deref(), Some(want.as_slice()));
    assert_eq!(out.intersection_size, want.len() as u64);
    assert_eq!(out.sender_set_size, s_distinct);
    assert_eq!(sent.receiver_set_size, r_distinct);
}

/// Random items from a universe of `universe` (duplicates likely when it is small).
fn random(rng: &mut ChaCha20Rng, n: usize, universe: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| format!("key-{}", rng.gen_range(0..universe)).into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_may_be_the_larger_and_the_result_is_exact() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let empty: Vec<Vec<u8>> = Vec::new();
    let big = random(&mut rng, 5_000, 20_000);
    let mut small = random(&mut rng, 40, 1_000_000);
    small.extend(big.iter().step_by(250).cloned());
    small.push(small[0].clone());
    let mid_a = random(&mut rng, 1_500, 2_000);
    let mid_b = random(&mut rng, 1_500, 2_000);
    for (case, (r, s)) in [
        (&small, &big),   // the sender holds the key
        (&big, &small),   // the receiver holds the key
        (&mid_a, &mid_b), // about even
        (&mid_a, &mid_a), // equal sets: the sender holds the key
        (&empty, &big),
        (&big, &empty),
        (&empty, &empty),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = encode(s, case as u64);
        let ran = run(r, s, &set, dir.path(), &NoGate).await;
        check(&ran, r, s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_keeps_the_senders_encodings_and_a_later_run_receives_none() {
    let s = keys(0..20_000);
    let r1 = keys(19_900..20_050);
    let r2 = keys(5..60);
    let dir = tempfile::tempdir().expect("tempdir");
    let set = encode(&s, 9);
    let first = run(&r1, &s, &set, dir.path(), &NoGate).await;
    check(&first, &r1, &s);
    assert!(first.received > 20_000 * 16, "{}", first.received);
    let second = run(&r2, &s, &set, dir.path(), &NoGate).await;
    check(&second, &r2, &s);
    assert!(
        second.received < 10_000,
        "the encodings come once: {} bytes the second time",
        second.received
    );
    // Another encoded set of the same items (a new key: the data changed, or another
    // licence) is another id: received in full.
    let other = encode(&s, 10);
    assert_ne!(other.id(), set.id());
    let third = run(&r2, &s, &other, dir.path(), &NoGate).await;
    check(&third, &r2, &s);
    assert!(third.received > 20_000 * 16);
    // A damaged copy is received again, not trusted.
    let copy = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(&hex(&set.id())))
        .expect("the receiver's copy");
    let mut bytes = std::fs::read(&copy).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&copy, bytes).expect("write");
    let fourth = run(&r2, &s, &set, dir.path(), &NoGate).await;
    check(&fourth, &r2, &s);
    assert!(fourth.received > 20_000 * 16);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn an_encoded_set_survives_its_file_and_a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut items = keys(0..3_000);
    items.extend(keys(0..100));
    let set = encode(&items, 3);
    assert_eq!(set.len(), 3_000, "distinct");
    let path = dir.path().join("set.bin");
    assert!(EncodedSet::read(&path).expect("read").is_none());
    set.write(&path).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "it holds the key");
    }
    let back = EncodedSet::read(&path).expect("read").expect("there");
    assert_eq!((back.len(), back.id()), (set.len(), set.id()));
    assert_eq!(format!("{back:?}"), "EncodedSet(3000 encodings)");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[100] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(EncodedSet::read(&path), Err(PsiError::Storage(_))));
    bytes.truncate(50);
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(EncodedSet::read(&path), Err(PsiError::Storage(_))));
}

struct Gate {
    asked: AtomicUsize,
    answer: bool,
}

#[async_trait::async_trait]
impl DeliveryGate for Gate {
    async fn record(&self) -> bool {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.answer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_is_asked_once_in_each_direction_and_a_refusal_reveals_nothing() {
    let big = keys(0..4_000);
    let small = keys(3_990..4_010);
    for (r, s) in [(&small, &big), (&big, &small)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = encode(s, 1);
        let yes = Gate {
            asked: AtomicUsize::new(0),
            answer: true,
        };
        let ran = run(r, s, &set, dir.path(), &yes).await;
        check(&ran, r, s);
        assert_eq!(yes.asked.load(Ordering::SeqCst), 1);
        let no = Gate {
            asked: AtomicUsize::new(0),
            answer: false,
        };
        let ran = run(r, s, &set, dir.path(), &no).await;
        assert_eq!(no.asked.load(Ordering::SeqCst), 1);
        assert!(matches!(ran.sender, Err(PsiError::DeliveryNotRecorded)));
        assert!(ran.receiver.is_err(), "the receiver learns nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_items_are_not_its_set_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = encode(&keys(0..10), 1);
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let big = keys(0..100);
    let (r, s) = bounded(async {
        tokio::join!(
            run_receiver(
                &a,
                &big,
                dir.path(),
                cfg(),
                Lookup::Auto,
                &mut r_rng,
                &NoProgress
            ),
            run_sender(
                &b,
                &set,
                None,
                Box::new(|| Ok(keys(0..11))),
                cfg(),
                &mut s_rng,
                &NoProgress,
                &NoGate
            ),
        )
    })
    .await;
    assert!(matches!(s, Err(PsiError::InvalidConfig(_))), "{s:?}");
    assert!(r.is_err());
}

/// The receiver (small) against a hostile sender that plays the holder's part with `frames`
/// after the `Hello` exchange: its `Set`, then whatever it sends.
async fn receiver_against(set_count: u64, frames: Vec<Bytes>) -> PsiError {
    receiver_against_with(set_count, Lookup::Auto, frames).await
}

async fn receiver_against_with(set_count: u64, lookup: Lookup, frames: Vec<Bytes>) -> PsiError {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = MemLink::pair();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let items = keys(0..3);
    let honest_set = encode(&keys(0..set_count), 4);
    let (r, ()) = bounded(async {
        tokio::join!(
            run_receiver(&a, &items, dir.path(), cfg(), lookup, &mut rng, &NoProgress),
            async {
                // An honest Hello from a sender with `set_count` items: taken from a real
                // sender's first frame.
                let (c, d) = MemLink::pair();
                let mut srng = ChaCha20Rng::seed_from_u64(3);
                let sender = run_sender(
                    &d,
                    &honest_set,
                    None,
                    Box::new(|| Ok(Vec::new())),
                    cfg(),
                    &mut srng,
                    &NoProgress,
                    &NoGate,
                );
                let grab = async {
                    let hello = c.recv().await.expect("hello");
                    drop(c);
                    hello
                };
                let (_, hello) = tokio::join!(sender, grab);
                let _ = b.recv().await; // the receiver's Hello
                b.send(hello).await.expect("send");
                for f in frames {
                    if b.send(f).await.is_err() {
                        break;
                    }
                }
                // Keep the link open until the receiver has given up (its Abort).
                let quiet = std::time::Duration::from_secs(2);
                while let Ok(Ok(f)) = tokio::time::timeout(quiet, b.recv()).await {
                    if f.first() == Some(&0x7F) {
                        break;
                    }
                }
            }
        )
    })
    .await;
    r.expect_err("a hostile sender")
}

fn set_frame(count: u64) -> Bytes {
    set_frame_rows(count, 0)
}

fn set_frame_rows(count: u64, rows: u32) -> Bytes {
    let mut f = vec![0x0C];
    f.extend_from_slice(&[7u8; 16]);
    f.extend_from_slice(&count.to_le_bytes());
    f.extend_from_slice(&rows.to_le_bytes());
    Bytes::from(f)
}

fn values_frame(values: &[[u8; 16]]) -> Bytes {
    let mut f = vec![0x03];
    f.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        f.extend_from_slice(v);
    }
    Bytes::from(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sender_frames_are_typed_errors() {
    // A set of another size than its Hello announced.
    let e = receiver_against(10, vec![set_frame(11)]).await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    // A malformed set frame, and another frame instead of it.
    let e = receiver_against(10, vec![Bytes::from_static(&[0x0C, 1, 2])]).await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    let e = receiver_against(10, vec![Bytes::from_static(&[0x04])]).await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    // Encodings out of order, repeated, or more than announced.
    let e = receiver_against(10, vec![set_frame(10), values_frame(&[[2; 16], [1; 16]])]).await;
    assert!(e.to_string().contains("ascending"), "{e}");
    let e = receiver_against(10, vec![set_frame(10), values_frame(&[[1; 16], [1; 16]])]).await;
    assert!(e.to_string().contains("ascending"), "{e}");
    let many: Vec<[u8; 16]> = (0..11u8).map(|i| [i; 16]).collect();
    let e = receiver_against(10, vec![set_frame(10), values_frame(&many)]).await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    // Answers that are not group elements.
    let ten: Vec<[u8; 16]> = (0..10u8).map(|i| [i; 16]).collect();
    let mut bad_points = vec![0x02];
    bad_points.extend_from_slice(&3u32.to_le_bytes());
    bad_points.extend_from_slice(&[0xFF; 96]);
    let e = receiver_against(
        10,
        vec![set_frame(10), values_frame(&ten), Bytes::from(bad_points)],
    )
    .await;
    assert!(e.to_string().contains("group element"), "{e}");
    let e = receiver_against(10, vec![Bytes::from_static(&[0x7F, 1])]).await;
    assert!(matches!(e, PsiError::PeerAborted { .. }), "{e}");
}

/// Builds `set`'s query index in `dir`.
fn index_of(set: &EncodedSet, dir: &std::path::Path) -> QueryIndex {
    set.build_query_index(&dir.join("set.query"), &|_, _| Ok(()))
        .expect("index")
}

/// The receiver's kept copies (`*.enc`) in `dir`, each checked to be 0600.
fn copies(dir: &std::path::Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let kept: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "enc"))
        .collect();
    for p in &kept {
        let mode = std::fs::metadata(p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
    kept.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_is_exact_with_one_and_several_tables_and_rows_and_moves_no_set() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let s = keys(0..300_000);
    let set = encode(&s, 21);
    let ix_dir = tempfile::tempdir().expect("tempdir");
    let index = index_of(&set, ix_dir.path());
    assert!(
        index.rows() >= 3,
        "300,000 items in 2,048 bins: {} rows",
        index.rows()
    );
    // Small against large, with duplicates: the default chooses the lookup (3.4 MB estimated
    // against a 4.8 MB copy).
    let mut small = keys(299_950..300_060);
    small.extend(random(&mut rng, 50, 1_000_000_000));
    small.push(small[3].clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = run_with(
        &small,
        &s,
        &set,
        Some(&index),
        Lookup::Auto,
        dir.path(),
        &NoGate,
    )
    .await;
    check(&ran, &small, &s);
    assert!(
        ran.received < 300_000 * 16 / 2,
        "a lookup, not the set: {} bytes received",
        ran.received
    );
    assert_eq!(copies(dir.path()), 0, "nothing of the set is kept");
    // 4,000 items take three tables: the default now takes the copy, a forced lookup is exact.
    let mut many = keys(298_000..300_000);
    many.extend(keys(1_000_000..1_002_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = run_with(
        &many,
        &s,
        &set,
        Some(&index),
        Lookup::Query,
        dir.path(),
        &NoGate,
    )
    .await;
    check(&ran, &many, &s);
    assert_eq!(copies(dir.path()), 0);
    let ran = run_with(
        &many,
        &s,
        &set,
        Some(&index),
        Lookup::Auto,
        dir.path(),
        &NoGate,
    )
    .await;
    check(&ran, &many, &s);
    assert_eq!(copies(dir.path()), 1, "the copy is cheaper for 4,000 items");
    // Once a copy is kept it is used, whatever the choice.
    let ran = run_with(
        &small,
        &s,
        &set,
        Some(&index),
        Lookup::Query,
        dir.path(),
        &NoGate,
    )
    .await;
    check(&ran, &small, &s);
    assert!(ran.received < 20_000, "{}", ran.received);
    // An empty receiver, and a receiver none of whose items match.
    let empty: Vec<Vec<u8>> = Vec::new();
    let none = keys(5_000_000..5_000_010);
    for r in [&empty, &none] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ran = run_with(
            r,
            &s,
            &set,
            Some(&index),
            Lookup::Query,
            dir.path(),
            &NoGate,
        )
        .await;
        check(&ran, r, &s);
    }
    // A forced lookup against a sender without an index is a configuration error.
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = run_with(&small, &s, &set, None, Lookup::Query, dir.path(), &NoGate).await;
    assert!(
        matches!(ran.receiver, Err(PsiError::InvalidConfig(_))),
        "{:?}",
        ran.receiver.err()
    );
    assert!(ran.sender.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_waits_for_the_gate_and_a_damaged_index_fails_the_run() {
    let s = keys(0..3_000);
    let r = keys(2_990..3_010);
    let set = encode(&s, 31);
    let ix_dir = tempfile::tempdir().expect("tempdir");
    let index = index_of(&set, ix_dir.path());
    let no = Gate {
        asked: AtomicUsize::new(0),
        answer: false,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = run_with(&r, &s, &set, Some(&index), Lookup::Query, dir.path(), &no).await;
    assert_eq!(no.asked.load(Ordering::SeqCst), 1);
    assert!(matches!(ran.sender, Err(PsiError::DeliveryNotRecorded)));
    assert!(ran.receiver.is_err(), "the receiver learns nothing");
    // The index of another set is refused by the sender.
    let other = encode(&s, 32);
    let ran = run_with(
        &r,
        &s,
        &other,
        Some(&index),
        Lookup::Query,
        dir.path(),
        &NoGate,
    )
    .await;
    assert!(
        matches!(ran.sender, Err(PsiError::InvalidConfig(_))),
        "{:?}",
        ran.sender.err()
    );
    // A flipped byte in a row: the sender finds it before its last answer leaves.
    let path = ix_dir.path().join("set.query");
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let ran = run_with(
        &r,
        &s,
        &set,
        Some(&index),
        Lookup::Query,
        dir.path(),
        &NoGate,
    )
    .await;
    assert!(
        matches!(ran.sender, Err(PsiError::Storage(_))),
        "{:?}",
        ran.sender.err()
    );
    assert!(ran.receiver.is_err(), "no result from a damaged index");
    // Opening: another set's index is removed; a truncated one is refused.
    assert!(QueryIndex::open(&path, other.id()).expect("open").is_none());
    assert!(!path.exists());
    let index = index_of(&set, ix_dir.path());
    let back = QueryIndex::open(&path, set.id())
        .expect("open")
        .expect("there");
    assert_eq!(back.rows(), index.rows());
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(
        QueryIndex::open(&path, set.id()),
        Err(PsiError::Storage(_))
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let index = index_of(&set, ix_dir.path());
        let mode = std::fs::metadata(index.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_asked_of_a_sender_offering_none_is_a_typed_error() {
    // The sender offers no index (rows 0) and the receiver is told to look up.
    let e = receiver_against_with(10, Lookup::Query, vec![set_frame_rows(10, 0)]).await;
    assert!(matches!(e, PsiError::InvalidConfig(_)), "{e}");
}
