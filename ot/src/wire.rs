//! Frames of the OT and VOLE sub-protocols.
//!
//! Every frame is `[kind: u8][count: u32 LE][count × item_bytes]`. A message of many items is
//! split into as many frames as the link's `frame_bytes_max` requires, each non-empty; the
//! receiver knows from the protocol how many items to expect in total and of what width, and
//! refuses a frame of another kind, a count of zero, a count past the expected total, or a
//! length that does not match its count. Kinds `0x40..=0x4F` belong to this crate; `0x7F`
//! ([`KIND_ABORT`]) is the abort frame every Tessera protocol shares.

use bytes::{BufMut, Bytes, BytesMut};
use tessera_core::Link;

use crate::{Block, OtError};

/// The abort frame's kind, shared with the PSI protocols: the peer gave up.
pub const KIND_ABORT: u8 = 0x7F;
/// Base OT: the sender's point.
pub const KIND_BASE_SENDER: u8 = 0x40;
/// Base OT: the receiver's points.
pub const KIND_BASE_RECEIVER: u8 = 0x41;
/// IKNP: the receiver's matrix columns.
pub const KIND_IKNP_MATRIX: u8 = 0x42;
/// Noisy VOLE: the OT sender's masked multiples.
pub const KIND_NOISY_VOLE: u8 = 0x43;
/// PPRF: the sender's masked level sums.
pub const KIND_PPRF_LEVELS: u8 = 0x44;
/// PPRF: the sender's per-tree corrections.
pub const KIND_PPRF_CORRECTIONS: u8 = 0x45;
/// SoftSpoken OT extension: the receiver's corrections `c_j` ([`crate::softspoken`]).
pub const KIND_SOFTSPOKEN: u8 = 0x46;

/// Bytes of a frame header (kind + count).
pub const HEADER_BYTES: usize = 1 + 4;

/// Items of `item_bytes` each that fit in one frame of `link`.
fn items_per_frame(link: &dyn Link, item_bytes: usize) -> Result<usize, OtError> {
    let per = link.frame_bytes_max().saturating_sub(HEADER_BYTES) / item_bytes.max(1);
    if per == 0 {
        return Err(OtError::InvalidArgument(format!(
            "the link's frame bound ({} bytes) holds no item of {item_bytes} bytes",
            link.frame_bytes_max()
        )));
    }
    Ok(per.min(u32::MAX as usize))
}

/// Sends `data` (a whole number of items of `item_bytes` each) as frames of `kind`. Sends
/// nothing when `data` is empty.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `data` is not a whole number of items; a link error.
pub async fn send_items(
    link: &dyn Link,
    kind: u8,
    item_bytes: usize,
    data: &[u8],
) -> Result<(), OtError> {
    if item_bytes == 0 || !data.len().is_multiple_of(item_bytes) {
        return Err(OtError::InvalidArgument(format!(
            "{} bytes are not a whole number of {item_bytes}-byte items",
            data.len()
        )));
    }
    let per = items_per_frame(link, item_bytes)?;
    for chunk in data.chunks(per * item_bytes) {
        let mut frame = BytesMut::with_capacity(HEADER_BYTES + chunk.len());
        frame.put_u8(kind);
        frame.put_u32_le((chunk.len() / item_bytes) as u32);
        frame.put_slice(chunk);
        link.send(frame.freeze()).await?;
    }
    Ok(())
}

/// Receives exactly `count` items of `item_bytes` each, sent by [`send_items`] with `kind`.
///
/// # Errors
/// [`OtError::PeerAborted`] on an abort frame; [`OtError::Protocol`] on a frame of another kind,
/// a short header, a zero count, a count past `count`, or a length that does not match; a link
/// error.
pub async fn recv_items(
    link: &dyn Link,
    kind: u8,
    item_bytes: usize,
    count: usize,
) -> Result<Vec<u8>, OtError> {
    let total = count.checked_mul(item_bytes).ok_or_else(|| {
        OtError::InvalidArgument(format!("{count} items of {item_bytes} bytes overflow"))
    })?;
    let mut out = vec![0u8; total];
    recv_into(link, kind, item_bytes, &mut out).await?;
    Ok(out)
}

/// As [`recv_items`], into `out` (whose length is the item count times `item_bytes`): one copy
/// from each frame, no intermediate buffer.
async fn recv_into(
    link: &dyn Link,
    kind: u8,
    item_bytes: usize,
    out: &mut [u8],
) -> Result<(), OtError> {
    let total = out.len();
    let mut filled = 0;
    while filled < total {
        let frame = link.recv().await?;
        let body = check_header(&frame, kind)?;
        let n = u32::from_le_bytes([body.0[0], body.0[1], body.0[2], body.0[3]]) as usize;
        let payload = body.1;
        let remaining = (total - filled) / item_bytes;
        if n == 0 || n > remaining {
            return Err(OtError::Protocol(format!(
                "frame of kind {kind:#04x} announces {n} items, {remaining} expected at most"
            )));
        }
        if payload.len() != n * item_bytes {
            return Err(OtError::Protocol(format!(
                "frame of kind {kind:#04x} announces {n} items of {item_bytes} bytes but carries {} bytes",
                payload.len()
            )));
        }
        if let Some(dst) = out.get_mut(filled..filled + payload.len()) {
            dst.copy_from_slice(payload);
        }
        filled += payload.len();
    }
    Ok(())
}

/// Splits a frame into (count bytes, payload) after checking its kind.
fn check_header(frame: &Bytes, kind: u8) -> Result<(&[u8; 4], &[u8]), OtError> {
    let Some((&k, rest)) = frame.split_first() else {
        return Err(OtError::Protocol("empty frame".into()));
    };
    if k == KIND_ABORT {
        return Err(OtError::PeerAborted(rest.first().copied().unwrap_or(0)));
    }
    if k != kind {
        return Err(OtError::Protocol(format!(
            "expected a frame of kind {kind:#04x}, got {k:#04x}"
        )));
    }
    let Some((count, payload)) = rest.split_first_chunk::<4>() else {
        return Err(OtError::Protocol(format!(
            "frame of kind {kind:#04x} shorter than its header"
        )));
    };
    Ok((count, payload))
}

/// Sends blocks as 16-byte items ([`send_items`]).
///
/// # Errors
/// As [`send_items`].
pub async fn send_blocks(link: &dyn Link, kind: u8, blocks: &[Block]) -> Result<(), OtError> {
    send_items(link, kind, Block::BYTES, bytemuck::cast_slice(blocks)).await
}

/// Receives exactly `count` blocks ([`recv_items`]).
///
/// # Errors
/// As [`recv_items`].
pub async fn recv_blocks(link: &dyn Link, kind: u8, count: usize) -> Result<Vec<Block>, OtError> {
    count
        .checked_mul(Block::BYTES)
        .ok_or_else(|| OtError::InvalidArgument(format!("{count} blocks overflow")))?;
    let mut out = vec![Block::ZERO; count];
    recv_into(link, kind, Block::BYTES, bytemuck::cast_slice_mut(&mut out)).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::MemLink;

    fn block(i: u128) -> Block {
        Block::from(i)
    }

    #[tokio::test]
    async fn blocks_round_trip_across_many_frames() {
        let (a, b) = MemLink::pair_with_limit(HEADER_BYTES + 3 * 16);
        let sent: Vec<Block> = (0..10).map(block).collect();
        let s2 = sent.clone();
        let h = tokio::spawn(async move { send_blocks(&a, KIND_IKNP_MATRIX, &s2).await });
        let got = recv_blocks(&b, KIND_IKNP_MATRIX, 10).await.expect("recv");
        h.await.expect("join").expect("send");
        assert_eq!(got, sent);
        assert_eq!(b.stats().frames_received, 4);
    }

    async fn recv_after(frame: Vec<u8>, count: usize) -> Result<Vec<Block>, OtError> {
        let (a, b) = MemLink::pair();
        a.send(Bytes::from(frame)).await.expect("send");
        recv_blocks(&b, KIND_PPRF_LEVELS, count).await
    }

    #[tokio::test]
    async fn hostile_frames_are_typed_errors() {
        let header = |kind: u8, n: u32| {
            let mut f = vec![kind];
            f.extend_from_slice(&n.to_le_bytes());
            f
        };
        // Wrong kind.
        let mut f = header(KIND_NOISY_VOLE, 1);
        f.extend_from_slice(&[0; 16]);
        assert!(matches!(recv_after(f, 1).await, Err(OtError::Protocol(_))));
        // Abort.
        assert!(matches!(
            recv_after(vec![KIND_ABORT, 3], 1).await,
            Err(OtError::PeerAborted(3))
        ));
        // Empty and truncated headers.
        assert!(matches!(
            recv_after(vec![], 1).await,
            Err(OtError::Protocol(_))
        ));
        assert!(matches!(
            recv_after(vec![KIND_PPRF_LEVELS, 1, 0], 1).await,
            Err(OtError::Protocol(_))
        ));
        // Zero count, count past the total, length not matching the count.
        assert!(matches!(
            recv_after(header(KIND_PPRF_LEVELS, 0), 1).await,
            Err(OtError::Protocol(_))
        ));
        let mut f = header(KIND_PPRF_LEVELS, 2);
        f.extend_from_slice(&[0; 32]);
        assert!(matches!(recv_after(f, 1).await, Err(OtError::Protocol(_))));
        let mut f = header(KIND_PPRF_LEVELS, 1);
        f.extend_from_slice(&[0; 15]);
        assert!(matches!(recv_after(f, 1).await, Err(OtError::Protocol(_))));
        let mut f = header(KIND_PPRF_LEVELS, u32::MAX);
        f.extend_from_slice(&[0; 16]);
        assert!(matches!(recv_after(f, 1).await, Err(OtError::Protocol(_))));
    }

    #[tokio::test]
    async fn nothing_is_sent_for_no_items_and_partial_items_are_refused() {
        let (a, b) = MemLink::pair();
        send_blocks(&a, KIND_PPRF_LEVELS, &[]).await.expect("empty");
        assert_eq!(b.stats().frames_received, 0);
        assert!(matches!(
            send_items(&a, KIND_PPRF_LEVELS, 16, &[0; 17]).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!(
            recv_blocks(&b, KIND_PPRF_LEVELS, 0).await.expect("none"),
            vec![]
        );
    }
}
