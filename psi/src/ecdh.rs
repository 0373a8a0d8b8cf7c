//! ECDH-PSI over ristretto255 (see the crate docs, "ECDH"): the two roles as async functions
//! over a [`Link`]. CPU work runs on the rayon pool inside `spawn_blocking`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand_core::CryptoRngCore;
use tessera_core::Link;

use crate::common::{
    Encrypted, PREALLOC_ITEMS_MAX, Release, check_input, compute, derived_rng, distinct_indices,
    exchange_hello, peer_set_size, record_release_and_finish, recv_frame, release_and_match,
    to_array, to_value, unexpected,
};
use crate::crypto::{
    DOUBLE_BLINDED_BYTES, FlatItems, POINT_BYTES, ReleaseKey, SecretKey, hash_and_blind, reblind,
};
use crate::pending::{Pending, PendingState, Received};
use crate::wire::{BATCH_HEADER_BYTES, Frame, new_batch};
use crate::{
    BATCH_ITEMS_LIMIT, Mode, PHASE_BLIND, PHASE_EXCHANGE, PHASE_HASH, Progress, Protocol,
    PsiConfig, PsiError, Role, SenderOutput,
};

/// A doubly-blinded value as a comparable integer.
type Value = u128;

pub(crate) async fn receiver<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    defer: bool,
) -> Result<Received, PsiError> {
    check_input(items)?;
    let batch = effective_batch(cfg, link)?;
    let key = Arc::new(SecretKey::random(rng));
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(
        link,
        Protocol::Ecdh,
        Role::Receiver,
        cfg.mode,
        own_size,
        batch,
    )
    .await?;
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
    let ((), (ours, theirs)) = tokio::try_join!(send, receive)?;
    if defer {
        return Pending::at_release(
            link,
            peer_size,
            PendingState::Plain {
                ours,
                theirs,
                encrypted: Encrypted::Ours,
                distinct,
                mode: cfg.mode,
            },
        )
        .await;
    }
    release_and_match(
        link,
        ours,
        theirs,
        Encrypted::Ours,
        distinct,
        cfg.mode,
        peer_size,
        progress,
    )
    .await
    .map(Received::Done)
}

pub(crate) async fn sender<R: CryptoRngCore + Send>(
    link: &dyn Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    release_policy: Release<'_>,
) -> Result<SenderOutput, PsiError> {
    check_input(items)?;
    let batch = effective_batch(cfg, link)?;
    let key = Arc::new(SecretKey::random(rng));
    let release = Arc::new(ReleaseKey::random(rng));
    let mut points_shuffle = derived_rng(rng);
    let mut values_shuffle = derived_rng(rng);
    let distinct = distinct_indices(items).await;
    let own_size = distinct.len();
    let peer = exchange_hello(
        link,
        Protocol::Ecdh,
        Role::Sender,
        cfg.mode,
        own_size,
        batch,
    )
    .await?;
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
    record_release_and_finish(link, release_policy, release, peer_size).await
}

/// Items per frame: the configured batch, capped so that a points frame fits the link.
pub(crate) fn effective_batch(cfg: &PsiConfig, link: &dyn Link) -> Result<usize, PsiError> {
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

/// Checks a batch count against the batch bound and the items still expected.
pub(crate) fn check_count(
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
