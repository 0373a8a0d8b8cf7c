//! MPC frames: the OT crate's bounded `[kind][count u32 LE][count × item]` format
//! ([`tessera_ot::wire`]) with the kinds `0x50..=0x5F` of this crate, and the abort frame
//! `0x7F` every Tessera protocol shares.
//!
//! A message of many items is split into as many frames as the link's bound requires; the
//! receiver knows from the protocol how many items to expect and refuses a frame of another
//! kind, a zero count, a count past the expected total or a length that does not match its
//! count ([`MpcError::Malformed`]), and an abort frame ([`MpcError::PeerAborted`]).

use bytes::Bytes;
use tessera_core::Link;
use tessera_ot::wire::{KIND_ABORT, recv_items, send_items};

use crate::{MpcError, check_len};

/// Beaver openings `x − a ‖ y − b` (arithmetic), and plain reveals.
pub const KIND_OPEN: u8 = 0x50;
/// Input sharing: the owner's mask for the other party.
pub const KIND_INPUT: u8 = 0x51;
/// Gilboa corrections of arithmetic triples (dealer-free source).
pub const KIND_GILBOA: u8 = 0x52;
/// Corrections of AND triples (dealer-free source).
pub const KIND_AND_CORRECTIONS: u8 = 0x53;
/// Boolean openings `x ⊕ a ‖ y ⊕ b` of AND gates.
pub const KIND_OPEN_BITS: u8 = 0x54;
/// A reveal to one party: the other party's shares ([`crate::Session::reveal_to`]).
pub const KIND_REVEAL: u8 = 0x55;
/// The digest of a query plan or training configuration both parties must agree on.
pub const KIND_PLAN: u8 = 0x56;
/// Party → dealer: a triple request.
pub const KIND_DEALER_REQUEST: u8 = 0x58;
/// Dealer → party: the 32-byte seed of a batch.
pub const KIND_DEALER_SEED: u8 = 0x59;
/// Dealer → party 1: the correction vector of a batch.
pub const KIND_DEALER_CORRECTION: u8 = 0x5A;
/// An RLWE public key ([`crate::rlwe`]), once per session each way.
pub const KIND_RLWE_KEY: u8 = 0x5B;
/// RLWE queries: ciphertexts of a party's own `a` ([`crate::rlwe`]).
pub const KIND_RLWE_QUERY: u8 = 0x5C;
/// RLWE answers: the peer's queries times this party's `b`, masked ([`crate::rlwe`]).
pub const KIND_RLWE_ANSWER: u8 = 0x5D;

/// Sends `words` as 8-byte little-endian items of `kind` (nothing for an empty slice).
///
/// # Errors
/// A link error.
pub async fn send_words(link: &dyn Link, kind: u8, words: &[u64]) -> Result<(), MpcError> {
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for w in words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    Ok(send_items(link, kind, 8, &bytes).await?)
}

/// Receives exactly `count` words sent by [`send_words`] with `kind`.
///
/// # Errors
/// [`MpcError::Bounds`] if `count > ELEMENTS_MAX` (nothing read); [`MpcError::Malformed`],
/// [`MpcError::PeerAborted`], or a link error.
pub async fn recv_words(link: &dyn Link, kind: u8, count: usize) -> Result<Vec<u64>, MpcError> {
    check_len(count)?;
    let bytes = recv_items(link, kind, 8, count).await?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect())
}

/// Sends `mine` and receives the peer's vector of the same length, concurrently (each party
/// calls it with the same `kind` and length): one message each way.
///
/// # Errors
/// As [`send_words`] and [`recv_words`].
pub async fn exchange_words(link: &dyn Link, kind: u8, mine: &[u64]) -> Result<Vec<u64>, MpcError> {
    let (sent, got) = tokio::join!(
        send_words(link, kind, mine),
        recv_words(link, kind, mine.len())
    );
    // The peer's frame says more than our send's failure (a peer that sent an abort or a
    // malformed frame and left makes the send fail too).
    let got = got?;
    sent?;
    Ok(got)
}

/// Sends `mine` (items of `item_bytes`) and receives the peer's `count` items of the same
/// kind, concurrently: one message each way.
///
/// # Errors
/// As [`send_items`] and [`recv_items`]; the peer's frame's error first (as
/// [`exchange_words`]).
pub async fn exchange_items(
    link: &dyn Link,
    kind: u8,
    item_bytes: usize,
    mine: &[u8],
    count: usize,
) -> Result<Vec<u8>, MpcError> {
    let (sent, got) = tokio::join!(
        send_items(link, kind, item_bytes, mine),
        recv_items(link, kind, item_bytes, count)
    );
    let got = got?;
    sent?;
    Ok(got)
}

/// Sends an abort frame with a reason code, best effort (the peer may be gone already).
pub async fn send_abort(link: &dyn Link, code: u8) {
    let _ = link.send(Bytes::from(vec![KIND_ABORT, code])).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::MemLink;

    #[tokio::test]
    async fn words_round_trip_across_frames() {
        let (a, b) = MemLink::pair_with_limit(5 + 3 * 8);
        let words: Vec<u64> = (0..10).map(|i| i * 0x0101_0101_0101_0101).collect();
        let (ra, rb) = tokio::join!(
            exchange_words(&a, KIND_OPEN, &words),
            exchange_words(&b, KIND_OPEN, &words)
        );
        assert_eq!(ra.expect("a"), words);
        assert_eq!(rb.expect("b"), words);
        assert_eq!(b.stats().frames_received, 4);
    }

    #[tokio::test]
    async fn hostile_frames_are_typed_errors() {
        type Case = (Vec<u8>, fn(&MpcError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![], |e| matches!(e, MpcError::Malformed(_))),
            (vec![KIND_OPEN, 1, 0], |e| {
                matches!(e, MpcError::Malformed(_))
            }),
            (vec![KIND_INPUT, 1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], |e| {
                matches!(e, MpcError::Malformed(_))
            }),
            (vec![KIND_OPEN, 1, 0, 0, 0, 1, 2, 3], |e| {
                matches!(e, MpcError::Malformed(_))
            }),
            (vec![KIND_OPEN, 9, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8], |e| {
                matches!(e, MpcError::Malformed(_))
            }),
            (vec![KIND_ABORT, 7], |e| {
                matches!(e, MpcError::PeerAborted(7))
            }),
        ];
        for (frame, ok) in cases {
            let (a, b) = MemLink::pair();
            a.send(Bytes::from(frame.clone())).await.expect("send");
            let got = recv_words(&b, KIND_OPEN, 2).await;
            assert!(got.as_ref().is_err_and(ok), "{frame:?}: {got:?}");
        }
        let (_a, b) = MemLink::pair();
        assert!(matches!(
            recv_words(&b, KIND_OPEN, crate::ELEMENTS_MAX + 1).await,
            Err(MpcError::Bounds(_))
        ));
    }
}
