//! The two roles of the protocol as async functions over a [`Link`]; see the crate docs for the
//! message flow. CPU work runs on the rayon pool inside `spawn_blocking`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;
use zeroize::Zeroize;

use crate::crypto::{
    DOUBLE_BLINDED_BYTES, FlatItems, POINT_BYTES, ReleaseKey, SecretKey, hash_and_blind, reblind,
};
use crate::wire::{
    BATCH_HEADER_BYTES, Frame, Hello, PROTOCOL_VERSION, abort_frame, done_frame, new_batch,
    release_frame,
};
use crate::{
    BATCH_ITEMS_LIMIT, DeliveryGate, ITEM_BYTES_MAX, Mode, NoGate, PHASE_BLIND, PHASE_EXCHANGE,
    PHASE_HASH, PHASE_MATCH, Progress, PsiConfig, PsiError, ReceiverOutput, Role, SET_ITEMS_MAX,
    SenderOutput,
};

/// Items deduplicated between two yields to the async runtime.
const DEDUP_CHUNK_ITEMS: usize = 1 << 16;
/// Most items preallocated for the peer's data on the strength of its announcement alone;
/// beyond this, buffers grow only as data actually arrives.
const PREALLOC_ITEMS_MAX: usize = 1 << 20;
/// Polls granted to a best-effort `Abort` send before giving up on it.
const ABORT_SEND_POLLS: usize = 4;

/// A doubly-blinded value as a comparable integer.
type Value = u128;

/// Runs the receiver's side: learns the intersection (or its size) of the distinct `items` with
/// the sender's set.
///
/// `items` may contain duplicates; they are removed first and the output refers to the index of
/// each key's first occurrence. The secret key and shuffles are drawn from `rng`.
pub async fn run_receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let result = receiver(link, items, cfg, rng, progress).await;
    if let Err(e) = &result {
        notify_peer(link, e).await;
    }
    result
}

/// Runs the sender's side: helps the receiver compute the intersection and learns only the
/// receiver's distinct set size.
///
/// `items` may contain duplicates; they are removed first. The secret key and shuffles are
/// drawn from `rng`.
pub async fn run_sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<SenderOutput, PsiError> {
    run_sender_reporting_delivery(link, items, cfg, rng, progress, &NoGate).await
}

/// [`run_sender`] with the protocol's delivery point put to `gate` (see the crate docs,
/// "Delivery point"): once every frame but the sender's last (its `Release` of the key that
/// unlocks all values at once) is on the link, the sender asks `gate.record()` to record the
/// delivery durably, and sends the key only if it did; otherwise the run fails with
/// [`PsiError::DeliveryNotRecorded`] and the receiver, holding only encrypted values, learns
/// nothing about the intersection. The gate is asked exactly once per run that gets that far,
/// never after an error.
///
/// # Errors
/// As [`run_sender`], and [`PsiError::DeliveryNotRecorded`].
pub async fn run_sender_reporting_delivery<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    let result = sender(link, items, cfg, rng, progress, gate).await;
    if let Err(e) = &result {
        notify_peer(link, e).await;
    }
    result
}

async fn receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    check_input(items)?;
    let batch = effective_batch(cfg, link)?;
    let key = Arc::new(SecretKey::random(rng));
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(link, Role::Receiver, cfg.mode, own_size, batch).await?;
    let peer_size = peer_set_size(&peer)?;
    let peer_batch = peer.batch_items_max as usize;
    let values_batch_max = batch.max(peer_batch);

    let points_sent = AtomicUsize::new(0);
    let send = send_blinded_items(
        link,
        items,
        &distinct,
        batch,
        &key,
        progress,
        Some(&points_sent),
    );
    let receive = async {
        let mut theirs: Vec<Value> = Vec::with_capacity(peer_size.min(PREALLOC_ITEMS_MAX));
        let mut ours: Vec<Value> = Vec::with_capacity(own_size);
        while theirs.len() < peer_size || ours.len() < own_size {
            match recv_frame(link).await? {
                Frame::Points { count, payload } => {
                    check_count(count, peer_batch, peer_size - theirs.len(), "sender points")?;
                    let key = Arc::clone(&key);
                    let values = compute(move || {
                        let mut out = vec![0u8; count * DOUBLE_BLINDED_BYTES];
                        reblind(&payload, &key, &mut out, DOUBLE_BLINDED_BYTES)
                            .map(|()| out)
                            .map_err(|e| {
                                PsiError::Protocol(format!(
                                    "sender point {} of a batch is not a valid group element",
                                    e.index
                                ))
                            })
                    })
                    .await??;
                    theirs.extend(values.chunks_exact(DOUBLE_BLINDED_BYTES).map(to_value));
                    progress.report(PHASE_BLIND, theirs.len() as u64, peer_size as u64);
                }
                Frame::Values { count, payload } => {
                    check_count(
                        count,
                        values_batch_max,
                        own_size - ours.len(),
                        "doubly-blinded values",
                    )?;
                    if ours.len() + count > points_sent.load(Ordering::Acquire) {
                        return Err(PsiError::Protocol(
                            "doubly-blinded values for points not yet sent".into(),
                        ));
                    }
                    ours.extend(payload.chunks_exact(DOUBLE_BLINDED_BYTES).map(to_value));
                    progress.report(PHASE_EXCHANGE, ours.len() as u64, own_size as u64);
                }
                other => return Err(unexpected(other, "points or values")),
            }
        }
        Ok::<_, PsiError>((ours, theirs))
    };
    let ((), (mut ours, mut theirs)) = tokio::try_join!(send, receive)?;
    // Until the sender releases its key, `ours` are encryptions under a key we do not have.
    let release = match recv_frame(link).await? {
        Frame::Release(key) => ReleaseKey::from_bytes(key),
        other => return Err(unexpected(other, "release")),
    };
    link.send(done_frame()).await?;

    progress.report(PHASE_MATCH, 0, own_size as u64);
    let mode = cfg.mode;
    let (intersection_size, intersection) = compute(move || {
        // One permutation applied to one side makes the sides comparable: the smaller one.
        if ours.len() <= theirs.len() {
            release.apply(&mut ours, false);
        } else {
            release.apply(&mut theirs, true);
        }
        drop(release);
        theirs.par_sort_unstable();
        let member = |v: &Value| theirs.binary_search(v).is_ok();
        match mode {
            Mode::Intersection => {
                let hits: Vec<usize> = ours
                    .par_iter()
                    .zip(distinct.par_iter())
                    .filter(|(v, _)| member(v))
                    .map(|(_, &i)| i)
                    .collect();
                (hits.len() as u64, Some(hits))
            }
            Mode::SizeOnly => (ours.par_iter().filter(|v| member(v)).count() as u64, None),
        }
    })
    .await?;
    progress.report(PHASE_MATCH, own_size as u64, own_size as u64);
    Ok(ReceiverOutput {
        intersection_size,
        sender_set_size: peer_size as u64,
        intersection,
    })
}

async fn sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    check_input(items)?;
    let batch = effective_batch(cfg, link)?;
    let key = Arc::new(SecretKey::random(rng));
    let release = Arc::new(ReleaseKey::random(rng));
    let mut points_shuffle = derived_rng(rng);
    let mut values_shuffle = derived_rng(rng);
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(link, Role::Sender, cfg.mode, own_size, batch).await?;
    let peer_size = peer_set_size(&peer)?;
    let peer_batch = peer.batch_items_max as usize;
    let mode = cfg.mode;

    // Sending in a random order of the distinct items is the same as shuffling the blinded set.
    let order = compute(move || {
        let mut order = distinct;
        order.shuffle(&mut points_shuffle);
        order
    })
    .await?;
    let send = send_blinded_items(link, items, &order, batch, &key, progress, None);
    let answer = async {
        let mut received = 0usize;
        let mut collected: Vec<[u8; DOUBLE_BLINDED_BYTES]> = match mode {
            Mode::Intersection => Vec::new(),
            Mode::SizeOnly => Vec::with_capacity(peer_size.min(PREALLOC_ITEMS_MAX)),
        };
        while received < peer_size {
            let (count, payload) = match recv_frame(link).await? {
                Frame::Points { count, payload } => (count, payload),
                other => return Err(unexpected(other, "points")),
            };
            check_count(count, peer_batch, peer_size - received, "receiver points")?;
            let key = Arc::clone(&key);
            let release = Arc::clone(&release);
            let frame = compute(move || {
                let mut frame = new_batch(false, count, DOUBLE_BLINDED_BYTES);
                let out = frame.get_mut(BATCH_HEADER_BYTES..).unwrap_or_default();
                reblind(&payload, &key, out, DOUBLE_BLINDED_BYTES).map_err(|e| {
                    PsiError::Protocol(format!(
                        "receiver point {} of a batch is not a valid group element",
                        e.index
                    ))
                })?;
                release.encrypt_in_place(out);
                Ok::<_, PsiError>(frame.freeze())
            })
            .await??;
            received += count;
            progress.report(PHASE_BLIND, received as u64, peer_size as u64);
            match mode {
                Mode::Intersection => {
                    link.send(frame).await?;
                    progress.report(PHASE_EXCHANGE, received as u64, peer_size as u64);
                }
                Mode::SizeOnly => collected.extend(
                    frame
                        .get(BATCH_HEADER_BYTES..)
                        .unwrap_or_default()
                        .chunks_exact(DOUBLE_BLINDED_BYTES)
                        .map(to_array),
                ),
            }
        }
        if mode == Mode::SizeOnly {
            let values = compute(move || {
                collected.shuffle(&mut values_shuffle);
                collected
            })
            .await?;
            let mut sent = 0usize;
            for chunk in values.chunks(batch) {
                let mut frame = new_batch(false, chunk.len(), DOUBLE_BLINDED_BYTES);
                let out = frame.get_mut(BATCH_HEADER_BYTES..).unwrap_or_default();
                for (dst, v) in out.chunks_exact_mut(DOUBLE_BLINDED_BYTES).zip(chunk) {
                    dst.copy_from_slice(v);
                }
                link.send(frame.freeze()).await?;
                sent += chunk.len();
                progress.report(PHASE_EXCHANGE, sent as u64, peer_size as u64);
            }
        }
        Ok(())
    };
    tokio::try_join!(send, answer)?;
    // Record, then release: every other frame is on the link; the key unlocks them all at once.
    if !gate.record().await {
        return Err(PsiError::DeliveryNotRecorded);
    }
    link.send(release_frame(release.bytes())).await?;
    drop(release);
    match recv_frame(link).await? {
        Frame::Done => Ok(SenderOutput {
            receiver_set_size: peer_size as u64,
        }),
        other => Err(unexpected(other, "done")),
    }
}

/// Refuses own inputs over the bounds.
fn check_input(items: &[Vec<u8>]) -> Result<(), PsiError> {
    if items.len() > SET_ITEMS_MAX {
        return Err(PsiError::TooLarge {
            what: "own set size",
            len: items.len() as u64,
            max: SET_ITEMS_MAX as u64,
        });
    }
    if let Some(item) = items.iter().find(|i| i.len() > ITEM_BYTES_MAX) {
        return Err(PsiError::TooLarge {
            what: "item bytes",
            len: item.len() as u64,
            max: ITEM_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Items per frame: the configured batch, capped so that a points frame fits the link.
fn effective_batch(cfg: &PsiConfig, link: &dyn Link) -> Result<usize, PsiError> {
    if cfg.batch_items_max == 0 || cfg.batch_items_max > BATCH_ITEMS_LIMIT {
        return Err(PsiError::InvalidConfig(format!(
            "batch_items_max must be in 1..={BATCH_ITEMS_LIMIT}, is {}",
            cfg.batch_items_max
        )));
    }
    let by_frame = link.frame_bytes_max().saturating_sub(BATCH_HEADER_BYTES) / POINT_BYTES;
    if by_frame == 0 {
        return Err(PsiError::InvalidConfig(format!(
            "link frame limit of {} bytes cannot carry one point",
            link.frame_bytes_max()
        )));
    }
    Ok(cfg.batch_items_max.min(by_frame))
}

/// Indices of the first occurrence of each distinct item, ascending. Yields to the runtime
/// between chunks so that a large input does not stall other tasks.
async fn distinct_indices(items: &[Vec<u8>]) -> Vec<usize> {
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(items.len());
    let mut distinct = Vec::with_capacity(items.len());
    for (c, chunk) in items.chunks(DEDUP_CHUNK_ITEMS).enumerate() {
        for (j, item) in chunk.iter().enumerate() {
            if seen.insert(item.as_slice()) {
                distinct.push(c * DEDUP_CHUNK_ITEMS + j);
            }
        }
        tokio::task::yield_now().await;
    }
    distinct.shrink_to_fit();
    distinct
}

/// An RNG for shuffling, seeded from the caller's RNG (the seed is wiped after use).
fn derived_rng<R: CryptoRngCore + ?Sized>(rng: &mut R) -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let derived = ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    derived
}

/// Sends our hello and checks the peer's.
async fn exchange_hello(
    link: &dyn Link,
    role: Role,
    mode: Mode,
    set_size: usize,
    batch: usize,
) -> Result<Hello, PsiError> {
    let ours = Hello {
        version: PROTOCOL_VERSION,
        role,
        mode,
        set_size: set_size as u64,
        batch_items_max: u32::try_from(batch).unwrap_or(u32::MAX),
    };
    let (_, frame) = tokio::try_join!(
        async { link.send(ours.encode()).await.map_err(PsiError::from) },
        recv_frame(link)
    )?;
    let peer = match frame {
        Frame::Hello(h) => h,
        other => return Err(unexpected(other, "hello")),
    };
    if peer.version != PROTOCOL_VERSION {
        return Err(PsiError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: peer.version,
        });
    }
    if peer.role == role {
        return Err(PsiError::RoleMismatch { ours: role });
    }
    if peer.mode != mode {
        return Err(PsiError::ModeMismatch {
            ours: mode,
            theirs: peer.mode,
        });
    }
    if peer.batch_items_max == 0 || peer.batch_items_max as usize > BATCH_ITEMS_LIMIT {
        return Err(PsiError::Protocol(format!(
            "hello: batch size {} outside 1..={BATCH_ITEMS_LIMIT}",
            peer.batch_items_max
        )));
    }
    Ok(peer)
}

/// The peer's announced set size, if within bounds.
fn peer_set_size(peer: &Hello) -> Result<usize, PsiError> {
    usize::try_from(peer.set_size)
        .ok()
        .filter(|&n| n <= SET_ITEMS_MAX)
        .ok_or(PsiError::TooLarge {
            what: "peer set size",
            len: peer.set_size,
            max: SET_ITEMS_MAX as u64,
        })
}

/// Checks a batch count against the batch bound and the items still expected.
fn check_count(
    count: usize,
    batch_max: usize,
    remaining: usize,
    what: &str,
) -> Result<(), PsiError> {
    if count > batch_max {
        return Err(PsiError::Protocol(format!(
            "batch of {count} {what} exceeds the batch size of {batch_max}"
        )));
    }
    if count > remaining {
        return Err(PsiError::Protocol(format!(
            "more {what} than announced ({count} in a batch, {remaining} still expected)"
        )));
    }
    Ok(())
}

/// Receives and parses the next frame; an `Abort` from the peer becomes an error.
async fn recv_frame(link: &dyn Link) -> Result<Frame, PsiError> {
    match Frame::parse(link.recv().await?)? {
        Frame::Abort(reason) => Err(PsiError::PeerAborted { reason }),
        frame => Ok(frame),
    }
}

fn unexpected(frame: Frame, expected: &str) -> PsiError {
    PsiError::Protocol(format!("expected {expected}, got a {} frame", frame.name()))
}

/// Runs CPU-bound work off the async runtime.
async fn compute<T, F>(f: F) -> Result<T, PsiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PsiError::Internal(format!("computation task failed: {e}")))
}

/// Hashes and blinds `items[i]` for `i` in `order`, sending them in frames of `batch` points.
/// The next batch is computed while the current one is being sent.
async fn send_blinded_items(
    link: &dyn Link,
    items: &[Vec<u8>],
    order: &[usize],
    batch: usize,
    key: &Arc<SecretKey>,
    progress: &dyn Progress,
    sent_counter: Option<&AtomicUsize>,
) -> Result<(), PsiError> {
    let total = order.len() as u64;
    let start = |indices: &[usize]| {
        let flat = FlatItems::gather(items, indices);
        let key = Arc::clone(key);
        tokio::task::spawn_blocking(move || {
            let mut frame = new_batch(true, flat.len(), POINT_BYTES);
            if let Some(out) = frame.get_mut(BATCH_HEADER_BYTES..) {
                hash_and_blind(&flat, &key, out);
            }
            (flat.len(), frame.freeze())
        })
    };
    let mut chunks = order.chunks(batch);
    let mut pending = chunks.next().map(start);
    let mut done = 0u64;
    while let Some(task) = pending.take() {
        let (count, frame): (usize, Bytes) = task
            .await
            .map_err(|e| PsiError::Internal(format!("hashing task failed: {e}")))?;
        pending = chunks.next().map(start);
        done += count as u64;
        progress.report(PHASE_HASH, done, total);
        if let Some(counter) = sent_counter {
            counter.fetch_add(count, Ordering::Release);
        }
        link.send(frame).await?;
    }
    Ok(())
}

/// Tells the peer why we stop, if the link takes the frame without waiting long: the peer may
/// itself have stopped reading, and we must not hang on a full queue.
async fn notify_peer(link: &dyn Link, err: &PsiError) {
    let Some(reason) = err.abort_reason() else {
        return;
    };
    let mut send = std::pin::pin!(link.send(abort_frame(reason)));
    for _ in 0..ABORT_SEND_POLLS {
        let polled = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        if polled.is_ready() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn to_array(bytes: &[u8]) -> [u8; DOUBLE_BLINDED_BYTES] {
    let mut out = [0u8; DOUBLE_BLINDED_BYTES];
    for (d, s) in out.iter_mut().zip(bytes) {
        *d = *s;
    }
    out
}

fn to_value(bytes: &[u8]) -> Value {
    Value::from_le_bytes(to_array(bytes))
}
