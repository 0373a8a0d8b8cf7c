//! Bucketed PSI (`tessera_psi::bucket`) against the plaintext reference: many buckets, rows in
//! memory and spilled to disk, duplicates, empty and unbalanced sides, payloads, both protocols,
//! the delivery gate, and hostile `Buckets` frames.

// This binary uses only `bounded` of the shared helpers.
#[allow(dead_code)]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::bounded;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::{Link, MemLink};
use tessera_psi::bucket::{
    BucketKey, BucketedReceiverOutput, BucketedSenderOutput, Staged, Stager, finish_receiver_alone,
    run_receiver_bucketed, run_sender_bucketed,
};
use tessera_psi::{
    DeliveryGate, Mode, NoGate, NoProgress, Progress, Protocol, PsiConfig, PsiError,
};

fn stage(
    dir: &std::path::Path,
    key: &BucketKey,
    bucket_rows: u64,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Staged {
    let mut s = Stager::new(key.clone(), bucket_rows, dir);
    for (item, extra) in rows {
        s.push(item.clone(), extra.clone()).expect("push");
    }
    s.finish().expect("finish")
}

struct Run {
    receiver: Result<BucketedReceiverOutput, PsiError>,
    sender: Result<BucketedSenderOutput, PsiError>,
    _dir: tempfile::TempDir,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    r_rows: &[(Vec<u8>, Vec<u8>)],
    s_rows: &[(Vec<u8>, Vec<u8>)],
    r_bucket_rows: u64,
    s_bucket_rows: u64,
    protocol: Protocol,
    payload: bool,
    gate: &dyn DeliveryGate,
    progress: &dyn Progress,
) -> Run {
    let share = false;
    run_with(
        r_rows,
        s_rows,
        (r_bucket_rows, s_bucket_rows),
        protocol,
        payload,
        share,
        gate,
        progress,
    )
    .await
}

/// [`run`] with the intersection shared with the sender or not.
#[allow(clippy::too_many_arguments)]
async fn run_with(
    r_rows: &[(Vec<u8>, Vec<u8>)],
    s_rows: &[(Vec<u8>, Vec<u8>)],
    (r_bucket_rows, s_bucket_rows): (u64, u64),
    protocol: Protocol,
    payload: bool,
    share: bool,
    gate: &dyn DeliveryGate,
    progress: &dyn Progress,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BucketKey::derive(b"session");
    let r = stage(&dir.path().join("r"), &key, r_bucket_rows, r_rows);
    let s = stage(&dir.path().join("s"), &key, s_bucket_rows, s_rows);
    let cfg = PsiConfig {
        protocol,
        ..PsiConfig::default()
    };
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let parts = dir.path().join("parts");
    let s_parts = dir.path().join("sender-parts");
    let s_parts = share.then_some(s_parts.as_path());
    let (receiver, sender) = bounded(async {
        tokio::join!(
            run_receiver_bucketed(&a, r, &parts, payload, share, &cfg, &mut r_rng, progress),
            run_sender_bucketed(&b, s, payload, s_parts, &cfg, &mut s_rng, &NoProgress, gate),
        )
    })
    .await;
    Run {
        receiver,
        sender,
        _dir: dir,
    }
}

/// A matched row as the tests compare it: ordinal, the receiver's extra, the payload.
type MatchedRow = (u64, Vec<u8>, Vec<u8>);

/// The plaintext answer: every receiver row (ordinal, extra) whose item the sender holds, in
/// order, with the sender's first payload of the item.
fn reference(
    r_rows: &[(Vec<u8>, Vec<u8>)],
    s_rows: &[(Vec<u8>, Vec<u8>)],
) -> (Vec<MatchedRow>, u64, u64) {
    let mut first: HashMap<&[u8], &[u8]> = HashMap::new();
    for (item, extra) in s_rows {
        first.entry(item.as_slice()).or_insert(extra.as_slice());
    }
    let mut common = HashSet::new();
    let mut matched = Vec::new();
    for (i, (item, extra)) in r_rows.iter().enumerate() {
        if let Some(p) = first.get(item.as_slice()) {
            common.insert(item.as_slice());
            matched.push((i as u64, extra.clone(), p.to_vec()));
        }
    }
    (matched, common.len() as u64, first.len() as u64)
}

/// The receiver's output alone against the plaintext reference.
fn check_receiver(
    out: &BucketedReceiverOutput,
    r_rows: &[(Vec<u8>, Vec<u8>)],
    s_rows: &[(Vec<u8>, Vec<u8>)],
    payload: bool,
) {
    let (want, common, s_distinct) = reference(r_rows, s_rows);
    assert_eq!(out.intersection_size, common);
    assert_eq!(out.sender_set_size, s_distinct);
    assert_eq!(out.matched_rows, want.len() as u64);
    let got: Vec<MatchedRow> = out
        .parts
        .merged()
        .expect("merged")
        .map(|m| {
            let m = m.expect("row");
            (m.ordinal, m.extra, m.payload)
        })
        .collect();
    let want: Vec<_> = want
        .into_iter()
        .map(|(o, e, p)| (o, e, if payload { p } else { Vec::new() }))
        .collect();
    assert_eq!(got, want);
}

/// Both sides' outputs against the plaintext reference (the sender's shared intersection
/// too, when it has one).
fn check(run: Run, r_rows: &[(Vec<u8>, Vec<u8>)], s_rows: &[(Vec<u8>, Vec<u8>)], payload: bool) {
    let out = run.receiver.expect("receiver");
    let sent = run.sender.expect("sender");
    assert_eq!(out.buckets, sent.buckets);
    let r_distinct = r_rows.iter().map(|r| &r.0).collect::<HashSet<_>>().len() as u64;
    assert_eq!(sent.receiver_set_size, r_distinct);
    check_receiver(&out, r_rows, s_rows, payload);
    if let Some(shared) = sent.shared {
        // The sender's side: each of its rows whose item the receiver holds, in its order.
        let (want, common, _) = reference(s_rows, r_rows);
        assert_eq!(shared.intersection_size, common);
        assert_eq!(shared.intersection_size, out.intersection_size);
        assert_eq!(shared.matched_rows, want.len() as u64);
        let got: Vec<(u64, Vec<u8>, Vec<u8>)> = shared
            .parts
            .merged()
            .expect("merged")
            .map(|m| {
                let m = m.expect("row");
                (m.ordinal, m.extra, m.payload)
            })
            .collect();
        let want: Vec<_> = want
            .into_iter()
            .map(|(o, e, _)| (o, e, Vec::new()))
            .collect();
        assert_eq!(got, want);
        shared.parts.remove();
    }
    out.parts.remove();
}

/// Rows `item-{x}` for random `x` below `universe` (so duplicates occur), extra = the row's
/// number and a random-length tail.
fn random_rows(
    rng: &mut ChaCha20Rng,
    n: usize,
    universe: u64,
    tag: &str,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let x = rng.gen_range(0..universe);
            let tail = "z".repeat(rng.gen_range(0..6));
            (
                format!("item-{x}").into_bytes(),
                format!("{tag}{i}{tail}").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sets_in_many_buckets_match_the_plaintext_reference() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for (round, protocol) in [Protocol::Rr22, Protocol::Rr22, Protocol::Ecdh]
        .into_iter()
        .enumerate()
    {
        let n_r = rng.gen_range(500..3_000);
        let n_s = rng.gen_range(500..3_000);
        let universe = rng.gen_range(1_000..5_000);
        let r = random_rows(&mut rng, n_r, universe, "r");
        let s = random_rows(&mut rng, n_s, universe, "s");
        // Receiver spilled into ~8–30 buckets, sender in memory or spilled by round.
        let s_limit = if round == 1 { 10_000 } else { 150 };
        let out = run(&r, &s, 100, s_limit, protocol, false, &NoGate, &NoProgress).await;
        check(out, &r, &s, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_arrive_with_every_matched_row_in_input_order() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let r = random_rows(&mut rng, 2_000, 3_000, "r");
    let s = random_rows(&mut rng, 2_500, 3_000, "payload-");
    let out = run(&r, &s, 200, 300, Protocol::Rr22, true, &NoGate, &NoProgress).await;
    check(out, &r, &s, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_unbalanced_sides() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let big = random_rows(&mut rng, 4_000, 1_000_000, "b");
    let mut small = random_rows(&mut rng, 10, 1_000_000, "s");
    // Some of the small side's items are the big side's.
    small.extend(big.iter().step_by(500).cloned());
    let empty: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (r, s) in [
        (&small, &big),
        (&big, &small),
        (&empty, &big),
        (&big, &empty),
        (&empty, &empty),
    ] {
        let out = run(r, s, 500, 500, Protocol::Rr22, false, &NoGate, &NoProgress).await;
        check(out, r, s, false);
    }
}

struct CountingGate {
    asked: AtomicUsize,
    answer: bool,
}

#[async_trait::async_trait]
impl DeliveryGate for CountingGate {
    async fn record(&self) -> bool {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.answer
    }
}

#[derive(Default)]
struct Recorded(Mutex<Vec<(String, u64, u64)>>);

impl Progress for Recorded {
    fn report(&self, phase: &str, done: u64, total: u64) {
        if let Ok(mut v) = self.0.lock() {
            v.push((phase.to_owned(), done, total));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_is_asked_once_and_a_refusal_reveals_nothing() {
    let r: Vec<_> = (0..1_000u32)
        .map(|i| (format!("k{i}").into_bytes(), Vec::new()))
        .collect();
    let s = r.clone();
    let gate = CountingGate {
        asked: AtomicUsize::new(0),
        answer: true,
    };
    let progress = Recorded::default();
    let out = run(&r, &s, 100, 100, Protocol::Rr22, false, &gate, &progress).await;
    let buckets = out.receiver.as_ref().expect("receiver").buckets;
    assert_eq!(buckets, 10);
    assert_eq!(gate.asked.load(Ordering::SeqCst), 1);
    // "bucket b/10" from 0 to 10, the rows done rising to all 1,000.
    let reports = progress.0.lock().expect("lock").clone();
    let phases: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
    let want: Vec<String> = (0..=10).map(|b| format!("bucket {b}/10")).collect();
    assert_eq!(phases, want);
    assert!(reports.windows(2).all(|w| w[0].1 <= w[1].1));
    assert_eq!(reports.first().map(|r| (r.1, r.2)), Some((0, 1_000)));
    assert_eq!(reports.last().map(|r| (r.1, r.2)), Some((1_000, 1_000)));
    check(out, &r, &s, false);

    let refusing = CountingGate {
        asked: AtomicUsize::new(0),
        answer: false,
    };
    let out = run(
        &r,
        &s,
        100,
        100,
        Protocol::Rr22,
        false,
        &refusing,
        &NoProgress,
    )
    .await;
    assert_eq!(refusing.asked.load(Ordering::SeqCst), 1);
    assert!(matches!(out.sender, Err(PsiError::DeliveryNotRecorded)));
    assert!(out.receiver.is_err(), "the receiver learns nothing");
}

/// A gate that checks, when asked, that the sender has finished every bucket.
struct AfterLastBucket {
    progress: std::sync::Arc<Recorded>,
    asked_after: Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl DeliveryGate for AfterLastBucket {
    async fn record(&self) -> bool {
        let last = self
            .progress
            .0
            .lock()
            .ok()
            .and_then(|v| v.last().map(|r| r.0.clone()));
        if let Ok(mut a) = self.asked_after.lock() {
            *a = last;
        }
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_run_is_delivered_once_after_its_last_bucket() {
    let r: Vec<_> = (0..600u32)
        .map(|i| (format!("k{i}").into_bytes(), Vec::new()))
        .collect();
    let s: Vec<_> = (300..900u32)
        .map(|i| (format!("k{i}").into_bytes(), Vec::new()))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BucketKey::derive(b"session");
    let staged_r = stage(&dir.path().join("r"), &key, 100, &r);
    let staged_s = stage(&dir.path().join("s"), &key, 100, &s);
    let sender_progress = std::sync::Arc::new(Recorded::default());
    let gate = AfterLastBucket {
        progress: sender_progress.clone(),
        asked_after: Mutex::new(None),
    };
    let cfg = PsiConfig::default();
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(1);
    let mut s_rng = ChaCha20Rng::seed_from_u64(2);
    let parts = dir.path().join("parts");
    let (receiver, sender) = bounded(async {
        tokio::join!(
            run_receiver_bucketed(
                &a,
                staged_r,
                &parts,
                false,
                false,
                &cfg,
                &mut r_rng,
                &NoProgress
            ),
            run_sender_bucketed(
                &b,
                staged_s,
                false,
                None,
                &cfg,
                &mut s_rng,
                sender_progress.as_ref(),
                &gate
            ),
        )
    })
    .await;
    assert_eq!(sender.expect("sender").buckets, 6);
    assert_eq!(
        gate.asked_after.lock().expect("lock").as_deref(),
        Some("bucket 6/6"),
        "the delivery is recorded after the last bucket, not before the first"
    );
    let out = receiver.expect("receiver");
    assert_eq!(out.intersection_size, 300);
    let ordinals: Vec<u64> = out
        .parts
        .merged()
        .expect("merged")
        .map(|m| m.expect("row").ordinal)
        .collect();
    assert_eq!(ordinals, (300..600).collect::<Vec<u64>>());
    // The pending files are gone once matched.
    let left: Vec<_> = std::fs::read_dir(&parts)
        .expect("parts")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pending"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_only_mode_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BucketKey::derive(b"x");
    let staged = stage(dir.path(), &key, 10, &[(b"a".to_vec(), Vec::new())]);
    let cfg = PsiConfig {
        protocol: Protocol::Ecdh,
        mode: Mode::SizeOnly,
        ..PsiConfig::default()
    };
    let (a, _b) = MemLink::pair();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let e = run_receiver_bucketed(
        &a,
        staged,
        &dir.path().join("p"),
        false,
        false,
        &cfg,
        &mut rng,
        &NoProgress,
    )
    .await
    .expect_err("size only");
    assert!(matches!(e, PsiError::InvalidConfig(_)), "{e}");
}

/// The receiver facing a peer that answers its `Buckets` frame with `frame`.
async fn receiver_against(frame: Bytes, key_material: &[u8]) -> PsiError {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BucketKey::derive(key_material);
    let staged = stage(dir.path(), &key, 10, &[(b"a".to_vec(), Vec::new())]);
    let (a, b) = MemLink::pair();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let cfg = PsiConfig::default();
    let parts = dir.path().join("p");
    let (r, _) = bounded(async {
        tokio::join!(
            run_receiver_bucketed(
                &a,
                staged,
                &parts,
                false,
                false,
                &cfg,
                &mut rng,
                &NoProgress
            ),
            async {
                let _ = b.recv().await;
                let _ = b.send(frame).await;
            }
        )
    })
    .await;
    r.expect_err("hostile peer")
}

/// A well-formed `Buckets` frame: version, wish, key check of `material`'s key.
fn buckets_frame(version: u16, wanted: u32, material: &[u8]) -> Bytes {
    let key = blake3::derive_key(tessera_psi::bucket::BUCKET_KEY_CONTEXT, material);
    let mut h = blake3::Hasher::new_derive_key("tessera-psi bucket key check v1");
    h.update(&key);
    let mut f = vec![0x09];
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&wanted.to_le_bytes());
    f.extend_from_slice(&h.finalize().as_bytes()[..16]);
    // No earlier attempt to resume, nothing shared with the sender.
    f.extend_from_slice(&[0u8; 25]);
    Bytes::from(f)
}

#[tokio::test]
async fn hostile_buckets_frames_are_typed_errors() {
    let v = tessera_psi::PROTOCOL_VERSION;
    let e = receiver_against(buckets_frame(v, 1, b"other job"), b"job").await;
    assert!(matches!(e, PsiError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("different bucket keys"), "{e}");
    let e = receiver_against(buckets_frame(v, 0, b"job"), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    let e = receiver_against(buckets_frame(v, 1_000_000, b"job"), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    let e = receiver_against(buckets_frame(v + 1, 1, b"job"), b"job").await;
    assert!(matches!(e, PsiError::VersionMismatch { .. }), "{e}");
    let mut short = buckets_frame(v, 1, b"job").to_vec();
    short.pop();
    let e = receiver_against(Bytes::from(short), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    let e = receiver_against(Bytes::new(), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    let e = receiver_against(Bytes::from_static(&[0x7F, 7]), b"job").await;
    assert!(matches!(e, PsiError::PeerAborted { .. }), "{e}");
    let e = receiver_against(Bytes::from_static(&[0x04]), b"job").await;
    assert!(e.to_string().contains("expected buckets"), "{e}");
    // A resume offer claiming more buckets done than it had.
    let mut f = buckets_frame(v, 1, b"job").to_vec();
    f[23..27].copy_from_slice(&3u32.to_le_bytes());
    f[27..31].copy_from_slice(&4u32.to_le_bytes());
    let e = receiver_against(Bytes::from(f), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
    // A sender that expects the intersection shared (the receiver does not share), and a
    // share flag that is not one.
    let mut f = buckets_frame(v, 1, b"job").to_vec();
    f[47] = 1;
    let e = receiver_against(Bytes::from(f.clone()), b"job").await;
    assert!(matches!(e, PsiError::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("learns the intersection"), "{e}");
    f[47] = 2;
    let e = receiver_against(Bytes::from(f), b"job").await;
    assert!(matches!(e, PsiError::Protocol(_)), "{e}");
}

/// A progress sink that fires `stop` when the party reports `at`.
struct StopAt {
    at: String,
    stop: std::sync::Arc<tokio::sync::Notify>,
}

impl Progress for StopAt {
    fn report(&self, phase: &str, _done: u64, _total: u64) {
        if phase == self.at {
            self.stop.notify_one();
        }
    }
}

/// Which party a test stops in the middle of a run.
#[derive(Clone, Copy, Debug)]
enum Killed {
    Sender,
    Receiver,
}

/// Runs one attempt of a bucketed run on rows staged under `dir` (restored from an earlier
/// attempt's staging when there is one), stopping `killed` — its future dropped and its link
/// end closed, as a killed process — when it reports `stop_at`. Returns both results (the
/// stopped party's as `None`).
#[allow(clippy::too_many_arguments)]
async fn attempt(
    dir: &std::path::Path,
    r_rows: &[(Vec<u8>, Vec<u8>)],
    s_rows: &[(Vec<u8>, Vec<u8>)],
    protocol: Protocol,
    (payload, share): (bool, bool),
    gate: &dyn DeliveryGate,
    stop: Option<(Killed, &str)>,
    seed: u64,
) -> (
    Option<Result<BucketedReceiverOutput, PsiError>>,
    Option<Result<BucketedSenderOutput, PsiError>>,
) {
    let key = BucketKey::derive(b"resumable session");
    let restore_or_stage = |sub: &str, rows: &[(Vec<u8>, Vec<u8>)]| {
        let d = dir.join(sub);
        match Staged::restore(key.clone(), &d).expect("restore") {
            Some(s) => s,
            None => stage(&d, &key, 100, rows),
        }
    };
    let r = restore_or_stage("r", r_rows);
    let s = restore_or_stage("s", s_rows);
    let cfg = PsiConfig {
        protocol,
        ..PsiConfig::default()
    };
    let (a, b) = MemLink::pair();
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let (r_stop, s_stop) = match stop {
        Some((Killed::Receiver, at)) => (Some(at), None),
        Some((Killed::Sender, at)) => (None, Some(at)),
        None => (None, None),
    };
    let progress_of = |at: Option<&str>| StopAt {
        at: at.unwrap_or("never").to_owned(),
        stop: notify.clone(),
    };
    let (r_progress, s_progress) = (progress_of(r_stop), progress_of(s_stop));
    let parts = dir.join("parts");
    let s_parts = dir.join("sender-parts");
    let mut r_rng = ChaCha20Rng::seed_from_u64(seed);
    let mut s_rng = ChaCha20Rng::seed_from_u64(seed + 1);
    let notify2 = notify.clone();
    let (r_cfg, s_cfg) = (cfg.clone(), cfg);
    let receiver = async move {
        let a = a;
        let run = run_receiver_bucketed(
            &a,
            r,
            &parts,
            payload,
            share,
            &r_cfg,
            &mut r_rng,
            &r_progress,
        );
        if r_stop.is_some() {
            tokio::select! {
                out = run => Some(out),
                () = notify.notified() => None,
            }
        } else {
            Some(run.await)
        }
    };
    let sender = async move {
        let b = b;
        let s_parts = share.then_some(s_parts.as_path());
        let run = run_sender_bucketed(
            &b,
            s,
            payload,
            s_parts,
            &s_cfg,
            &mut s_rng,
            &s_progress,
            gate,
        );
        if s_stop.is_some() {
            tokio::select! {
                out = run => Some(out),
                () = notify2.notified() => None,
            }
        } else {
            Some(run.await)
        }
    };
    bounded(async { tokio::join!(receiver, sender) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_from_its_last_finished_bucket_and_is_exact() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    for (killed, protocol, payload, stop_at) in [
        (Killed::Sender, Protocol::Rr22, false, "bucket 5/12"),
        (Killed::Receiver, Protocol::Rr22, true, "bucket 7/12"),
        (Killed::Sender, Protocol::Ecdh, false, "bucket 11/12"),
        (Killed::Receiver, Protocol::Ecdh, false, "bucket 1/12"),
        // After its last bucket, waiting for the key: the sender may have recorded the
        // delivery already (the operator's record is idempotent, so a second ask is free).
        (Killed::Receiver, Protocol::Rr22, false, "bucket 12/12"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        // 1,200 rows each at 100 rows per bucket: 12 buckets, both sides spilled.
        let r = random_rows(&mut rng, 1_200, 2_000, "r");
        let s = random_rows(&mut rng, 1_200, 2_000, "payload-");
        let gate = CountingGate {
            asked: AtomicUsize::new(0),
            answer: true,
        };
        let stop = Some((killed, stop_at));
        let (r1, s1) = attempt(
            dir.path(),
            &r,
            &s,
            protocol,
            (payload, false),
            &gate,
            stop,
            1,
        )
        .await;
        // The survivor fails (its peer went away); the stopped one has no result.
        match killed {
            Killed::Sender => {
                assert!(
                    s1.is_none(),
                    "{killed:?}: {:?} / {:?}",
                    s1.as_ref().map(|x| x.as_ref().map(|_| ())),
                    r1.as_ref().map(|x| x.as_ref().map(|_| ()))
                );
                assert!(r1.expect("receiver ran").is_err());
            }
            Killed::Receiver => {
                assert!(r1.is_none(), "{killed:?}");
                let sent = s1.expect("sender ran");
                if stop_at == "bucket 12/12" && sent.is_ok() {
                    // It had answered `Done` to the master key: it finishes without the
                    // sender, which has ended.
                    let key = BucketKey::derive(b"resumable session");
                    let mut staged = Staged::restore(key, &dir.path().join("r"))
                        .expect("restore")
                        .expect("staged");
                    let out = finish_receiver_alone(&mut staged, &dir.path().join("parts"), false)
                        .await
                        .expect("finish")
                        .expect("it holds the master key and every bucket");
                    check_receiver(&out, &r, &s, payload);
                    continue;
                }
                assert!(sent.is_err());
            }
        }
        let asked_before = gate.asked.load(Ordering::SeqCst);
        let last = stop_at == "bucket 12/12";
        assert!(
            asked_before == 0 || last && asked_before == 1,
            "{asked_before}"
        );
        let (r2, s2) = attempt(
            dir.path(),
            &r,
            &s,
            protocol,
            (payload, false),
            &gate,
            None,
            5,
        )
        .await;
        let (r2, s2) = (r2.expect("receiver"), s2.expect("sender"));
        let from = s2.as_ref().expect("sender").resumed_from;
        assert_eq!(r2.as_ref().expect("receiver").resumed_from, from);
        assert!(
            from >= 1,
            "{killed:?} at {stop_at}: resumed from {from}, not from the buckets done"
        );
        assert_eq!(gate.asked.load(Ordering::SeqCst), asked_before + 1);
        if last {
            assert_eq!(from, 12, "every bucket was pending");
        }
        let run = Run {
            receiver: r2,
            sender: s2,
            _dir: dir,
        };
        check(run, &r, &s, payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_lost_its_master_key_starts_over_and_stays_exact() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let dir = tempfile::tempdir().expect("tempdir");
    let r = random_rows(&mut rng, 1_000, 1_500, "r");
    let s = random_rows(&mut rng, 1_000, 1_500, "s");
    let stop = Some((Killed::Sender, "bucket 6/10"));
    let (r1, _) = attempt(
        dir.path(),
        &r,
        &s,
        Protocol::Rr22,
        (false, false),
        &NoGate,
        stop,
        1,
    )
    .await;
    assert!(r1.expect("receiver ran").is_err());
    // The sender's state is gone (another disk, a wiped directory): its new master key has
    // another check, so the receiver's pending buckets cannot be opened and are dropped.
    std::fs::remove_file(dir.path().join("s").join("master.key")).expect("master kept");
    let (r2, s2) = attempt(
        dir.path(),
        &r,
        &s,
        Protocol::Rr22,
        (false, false),
        &NoGate,
        None,
        3,
    )
    .await;
    let (r2, s2) = (r2.expect("receiver"), s2.expect("sender"));
    assert_eq!(s2.as_ref().expect("sender").resumed_from, 0);
    assert_eq!(r2.as_ref().expect("receiver").resumed_from, 0);
    check(
        Run {
            receiver: r2,
            sender: s2,
            _dir: dir,
        },
        &r,
        &s,
        false,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pending_bucket_is_run_again_not_trusted() {
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let dir = tempfile::tempdir().expect("tempdir");
    let r = random_rows(&mut rng, 1_000, 1_500, "r");
    let s = random_rows(&mut rng, 1_000, 1_500, "s");
    let stop = Some((Killed::Sender, "bucket 8/10"));
    let (r1, _) = attempt(
        dir.path(),
        &r,
        &s,
        Protocol::Rr22,
        (false, false),
        &NoGate,
        stop,
        1,
    )
    .await;
    assert!(r1.expect("receiver ran").is_err());
    // One byte of bucket 3's pending file changed while the workers were down.
    let victim = dir.path().join("parts").join("pending-0003.bin");
    let mut bytes = std::fs::read(&victim).expect("bucket 3 pending");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&victim, bytes).expect("write");
    let (r2, s2) = attempt(
        dir.path(),
        &r,
        &s,
        Protocol::Rr22,
        (false, false),
        &NoGate,
        None,
        3,
    )
    .await;
    let (r2, s2) = (r2.expect("receiver"), s2.expect("sender"));
    assert_eq!(
        s2.as_ref().expect("sender").resumed_from,
        3,
        "from the damaged bucket"
    );
    check(
        Run {
            receiver: r2,
            sender: s2,
            _dir: dir,
        },
        &r,
        &s,
        false,
    );
}

/// Rows as the tests stage them: (item, extra).
type Rows = [(Vec<u8>, Vec<u8>)];
/// (receiver rows, sender rows, rows per bucket each side, protocol).
type Case<'a> = (&'a Rows, &'a Rows, (u64, u64), Protocol);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_intersection_gives_each_party_its_own_matched_rows() {
    let mut rng = ChaCha20Rng::seed_from_u64(31);
    let big = random_rows(&mut rng, 3_000, 4_000, "b");
    let mut small = random_rows(&mut rng, 20, 1_000_000, "s");
    small.extend(big.iter().step_by(300).cloned());
    let empty: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let r1 = random_rows(&mut rng, 2_000, 3_000, "r");
    let s1 = random_rows(&mut rng, 2_500, 3_000, "s");
    // (receiver, sender, rows per bucket each side, protocol): one bucket in memory, many
    // buckets spilled, duplicates, empty and unbalanced sides, both protocols.
    let cases: [Case; 7] = [
        (&r1, &s1, (10_000, 10_000), Protocol::Rr22),
        (&r1, &s1, (150, 10_000), Protocol::Rr22),
        (&r1, &s1, (300, 200), Protocol::Ecdh),
        (&small, &big, (500, 500), Protocol::Rr22),
        (&big, &small, (500, 500), Protocol::Ecdh),
        (&empty, &big, (500, 500), Protocol::Rr22),
        (&empty, &empty, (500, 500), Protocol::Rr22),
    ];
    for (r, s, limits, protocol) in cases {
        let out = run_with(r, s, limits, protocol, false, true, &NoGate, &NoProgress).await;
        assert!(out.sender.as_ref().is_ok_and(|o| o.shared.is_some()));
        check(out, r, s, false);
    }
    // A payload goes to the receiver only: a sender asked to share one refuses.
    let out = run_with(
        &r1,
        &s1,
        (500, 500),
        Protocol::Rr22,
        true,
        true,
        &NoGate,
        &NoProgress,
    )
    .await;
    assert!(matches!(out.sender, Err(PsiError::InvalidConfig(_))));
    assert!(out.receiver.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_run_resumes_and_both_parties_get_the_exact_rows() {
    let mut rng = ChaCha20Rng::seed_from_u64(32);
    for (killed, stop_at) in [
        (Killed::Sender, "bucket 4/12"),
        // After the master key: a shared run never finishes alone, it resumes with the
        // sender at the end.
        (Killed::Receiver, "bucket 12/12"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = random_rows(&mut rng, 1_200, 2_000, "r");
        let s = random_rows(&mut rng, 1_200, 2_000, "s");
        let stop = Some((killed, stop_at));
        let both = (false, true);
        let _ = attempt(dir.path(), &r, &s, Protocol::Rr22, both, &NoGate, stop, 1).await;
        let key = BucketKey::derive(b"resumable session");
        let mut staged = Staged::restore(key, &dir.path().join("r"))
            .expect("restore")
            .expect("staged");
        let alone = finish_receiver_alone(&mut staged, &dir.path().join("parts"), true)
            .await
            .expect("finish");
        assert!(alone.is_none(), "a shared run does not finish alone");
        let (r2, s2) = attempt(dir.path(), &r, &s, Protocol::Rr22, both, &NoGate, None, 5).await;
        let (r2, s2) = (r2.expect("receiver"), s2.expect("sender"));
        assert!(s2.as_ref().expect("sender").resumed_from >= 4, "{killed:?}");
        check(
            Run {
                receiver: r2,
                sender: s2,
                _dir: dir,
            },
            &r,
            &s,
            false,
        );
    }
}

#[test]
fn a_staging_is_restored_only_whole_and_for_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = BucketKey::derive(b"k");
    let rows: Vec<_> = (0..500u32)
        .map(|i| (format!("k{i}").into_bytes(), vec![1, 2, 3]))
        .collect();
    let mut first = stage(dir.path(), &key, 50, &rows);
    let mut again = Staged::restore(key.clone(), dir.path())
        .expect("restore")
        .expect("a finished staging");
    assert_eq!(again.rows(), 500);
    let b = first.buckets_wanted();
    for bucket in 0..b {
        assert_eq!(
            again.bucket(bucket, b, true).expect("restored"),
            first.bucket(bucket, b, true).expect("first")
        );
    }
    // Another job's key: not this staging.
    assert!(
        Staged::restore(BucketKey::derive(b"other"), dir.path())
            .expect("read")
            .is_none()
    );
    // A truncated partition: refused, to be staged again.
    let victim = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("partition"))
                && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
        })
        .expect("a non-empty partition");
    let len = std::fs::metadata(&victim).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .and_then(|f| f.set_len(len - 1))
        .expect("truncate");
    let e = Staged::restore(key, dir.path()).expect_err("damaged");
    assert!(matches!(e, PsiError::Storage(_)), "{e}");
    // Nothing staged here: nothing to restore.
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(
        Staged::restore(BucketKey::derive(b"k"), empty.path())
            .expect("read")
            .is_none()
    );
}
