//! What both PSI protocols share: input checks, deduplication, the `Hello` exchange, frame
//! reception, off-runtime computation and the best-effort abort.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::CryptoRngCore;
use tessera_core::Link;
use zeroize::Zeroize;

use rayon::prelude::*;

use crate::crypto::{DOUBLE_BLINDED_BYTES, ReleaseKey};
use crate::wire::{Frame, Hello, PROTOCOL_VERSION, abort_frame, done_frame, release_frame};
use crate::{
    BATCH_ITEMS_LIMIT, DeliveryGate, ITEM_BYTES_MAX, Mode, PHASE_MATCH, Progress, Protocol,
    PsiError, ReceiverOutput, Role, SET_ITEMS_MAX, SenderOutput,
};

/// Items deduplicated between two yields to the async runtime.
pub(crate) const DEDUP_CHUNK_ITEMS: usize = 1 << 16;
/// Most items preallocated for the peer's data on the strength of its announcement alone;
/// beyond this, buffers grow only as data actually arrives.
pub(crate) const PREALLOC_ITEMS_MAX: usize = 1 << 20;
/// Polls granted to a best-effort `Abort` send before giving up on it.
pub(crate) const ABORT_SEND_POLLS: usize = 4;

/// Refuses own inputs over the bounds.
pub(crate) fn check_input(items: &[Vec<u8>]) -> Result<(), PsiError> {
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

/// Indices of the first occurrence of each distinct item, ascending. Yields to the runtime
/// between chunks so that a large input does not stall other tasks.
pub(crate) async fn distinct_indices(items: &[Vec<u8>]) -> Vec<usize> {
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
pub(crate) fn derived_rng<R: CryptoRngCore + ?Sized>(rng: &mut R) -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let derived = ChaCha20Rng::from_seed(seed);
    seed.zeroize();
    derived
}

/// Sends our hello and checks the peer's.
pub(crate) async fn exchange_hello(
    link: &dyn Link,
    protocol: Protocol,
    role: Role,
    mode: Mode,
    set_size: usize,
    batch: usize,
) -> Result<Hello, PsiError> {
    let ours = Hello {
        version: PROTOCOL_VERSION,
        protocol,
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
    if peer.protocol != protocol {
        return Err(PsiError::ProtocolMismatch {
            ours: protocol,
            theirs: peer.protocol,
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
pub(crate) fn peer_set_size(peer: &Hello) -> Result<usize, PsiError> {
    usize::try_from(peer.set_size)
        .ok()
        .filter(|&n| n <= SET_ITEMS_MAX)
        .ok_or(PsiError::TooLarge {
            what: "peer set size",
            len: peer.set_size,
            max: SET_ITEMS_MAX as u64,
        })
}

/// Receives and parses the next frame; an `Abort` from the peer becomes an error.
pub(crate) async fn recv_frame(link: &dyn Link) -> Result<Frame, PsiError> {
    match Frame::parse(link.recv().await?)? {
        Frame::Abort(reason) => Err(PsiError::PeerAborted { reason }),
        frame => Ok(frame),
    }
}

pub(crate) fn unexpected(frame: Frame, expected: &str) -> PsiError {
    PsiError::Protocol(format!("expected {expected}, got a {} frame", frame.name()))
}

/// Runs CPU-bound work off the async runtime.
pub(crate) async fn compute<T, F>(f: F) -> Result<T, PsiError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PsiError::Internal(format!("computation task failed: {e}")))
}

/// Tells the peer why we stop, if the link takes the frame without waiting long: the peer may
/// itself have stopped reading, and we must not hang on a full queue.
pub(crate) async fn notify_peer(link: &dyn Link, err: &PsiError) {
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

/// Which side of [`intersect`]'s inputs arrived encrypted under the release key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encrypted {
    /// Our values (ECDH: the sender returns our doubly-blinded values encrypted).
    Ours,
    /// The sender's values (rr22: its OPRF values arrive encrypted).
    Theirs,
}

/// How the sender's release key leaves (its last frame).
pub(crate) enum Release<'a> {
    /// In clear, once `gate` has recorded the delivery: a run on its own.
    Gated(&'a dyn DeliveryGate),
    /// At once, XORed with this mask: one bucket of a bucketed run, whose single delivery
    /// point comes after its last bucket, when the key of every mask is released
    /// ([`crate::bucket`]).
    Masked([u8; DOUBLE_BLINDED_BYTES]),
}

/// Matches the receiver's values against the sender's once the release key is known: the one
/// AES permutation is applied to the smaller side so that both are in the same form, the
/// sender's values are sorted and each of ours is looked up. `distinct[i]` is the input index
/// of our `i`-th value. Returns the intersection size and, in [`Mode::Intersection`], the
/// input indices of the common keys, ascending.
pub(crate) fn intersect(
    mut ours: Vec<u128>,
    mut theirs: Vec<u128>,
    encrypted: Encrypted,
    release: ReleaseKey,
    distinct: &[usize],
    mode: Mode,
) -> (u64, Option<Vec<usize>>) {
    // Decrypt the encrypted side or encrypt the plain one, whichever is smaller.
    if ours.len() <= theirs.len() {
        release.apply(&mut ours, encrypted == Encrypted::Theirs);
    } else {
        release.apply(&mut theirs, encrypted == Encrypted::Ours);
    }
    drop(release);
    theirs.par_sort_unstable();
    let member = |v: &u128| theirs.binary_search(v).is_ok();
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
}

/// The sender's end of both protocols, record before release: every other frame is on the link
/// and the key unlocks them all at once, so the delivery is recorded first (`gate`), then the
/// key sent, then the receiver's `Done` awaited (so we never hang up with frames in flight).
pub(crate) async fn record_release_and_finish(
    link: &dyn Link,
    policy: Release<'_>,
    release: Arc<ReleaseKey>,
    peer_size: usize,
) -> Result<SenderOutput, PsiError> {
    match policy {
        Release::Gated(gate) => {
            if !gate.record().await {
                return Err(PsiError::DeliveryNotRecorded);
            }
            link.send(release_frame(release.bytes())).await?;
        }
        Release::Masked(mask) => {
            let mut masked = *release.bytes();
            for (k, m) in masked.iter_mut().zip(mask) {
                *k ^= m;
            }
            link.send(release_frame(&masked)).await?;
            masked.zeroize();
        }
    }
    drop(release);
    match recv_frame(link).await? {
        Frame::Done => Ok(SenderOutput {
            receiver_set_size: peer_size as u64,
        }),
        other => Err(unexpected(other, "done")),
    }
}

/// The receiver's end of both protocols: takes the sender's `Release`, answers `Done`, and
/// matches the values ([`intersect`]) off the runtime, reporting [`PHASE_MATCH`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn release_and_match(
    link: &dyn Link,
    ours: Vec<u128>,
    theirs: Vec<u128>,
    encrypted: Encrypted,
    distinct: Vec<usize>,
    mode: Mode,
    peer_size: usize,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    // Until the sender releases its key, the encrypted side is under a key we do not have.
    let release = ReleaseKey::from_bytes(recv_release(link).await?);
    let own_size = distinct.len() as u64;
    progress.report(PHASE_MATCH, 0, own_size);
    let (intersection_size, intersection) =
        compute(move || intersect(ours, theirs, encrypted, release, &distinct, mode)).await?;
    progress.report(PHASE_MATCH, own_size, own_size);
    Ok(ReceiverOutput {
        intersection_size,
        sender_set_size: peer_size as u64,
        intersection,
        payloads: None,
    })
}

/// Takes the sender's `Release` frame (the key, or a bucket's masked key) and answers `Done`.
pub(crate) async fn recv_release(link: &dyn Link) -> Result<[u8; DOUBLE_BLINDED_BYTES], PsiError> {
    let key = match recv_frame(link).await? {
        Frame::Release(key) => key,
        other => return Err(unexpected(other, "release")),
    };
    link.send(done_frame()).await?;
    Ok(key)
}

/// A 16-byte value (ECDH's doubly-blinded truncation, rr22's OPRF output) as bytes; a shorter
/// slice is zero-padded (callers pass exact chunks).
pub(crate) fn to_array(bytes: &[u8]) -> [u8; DOUBLE_BLINDED_BYTES] {
    let mut out = [0u8; DOUBLE_BLINDED_BYTES];
    for (d, s) in out.iter_mut().zip(bytes) {
        *d = *s;
    }
    out
}

/// A 16-byte value as the comparable integer both protocols match on (little-endian).
pub(crate) fn to_value(bytes: &[u8]) -> u128 {
    u128::from_le_bytes(to_array(bytes))
}
