//! [`Link`]: the framed, async, two-party message channel the engines are written against.
//!
//! A link carries whole frames (byte strings) in both directions. Frames larger than the
//! link's `frame_bytes_max` are refused on both the sending and the receiving side, so a peer
//! cannot make us allocate without bound. `send` and `recv` take `&self` so that a protocol can
//! send and receive concurrently (e.g. with `tokio::join!`) without deadlocking on bounded
//! queues. Every link counts bytes and frames in each direction; the worker reports these as
//! usage for metering.
//!
//! [`MemLink`] is the in-memory implementation used by engine tests; the worker crate provides
//! the gRPC implementation. Protocol code sees only `dyn Link`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};

use crate::limits::{FRAME_BYTES_MAX, LINK_QUEUE_FRAMES};

/// Why a link operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The peer closed the link or went away (process ended, connection dropped).
    #[error("peer went away: {0}")]
    PeerGone(String),
    /// A frame exceeded the link's size bound.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Size of the offending frame.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// No frame arrived within the idle timeout.
    #[error("no frame from the peer within {timeout_ms} ms")]
    Timeout {
        /// The idle timeout in force.
        timeout_ms: u64,
    },
    /// A transport-level failure.
    #[error("transport error: {0}")]
    Transport(String),
}

impl LinkError {
    /// The one frame-size rule every link applies, on sending and on receiving.
    pub fn check_frame(len: usize, max: usize) -> Result<(), LinkError> {
        if len > max {
            return Err(LinkError::FrameTooLarge { len, max });
        }
        Ok(())
    }
}

/// Counters of one link, as seen from its own side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStats {
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
}

/// Atomic counters shared by link implementations.
#[derive(Debug, Default)]
pub struct LinkCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

impl LinkCounters {
    /// Records one sent frame of `len` bytes.
    pub fn on_send(&self, len: usize) {
        self.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    /// Records one received frame of `len` bytes.
    pub fn on_recv(&self, len: usize) {
        self.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
        self.frames_received.fetch_add(1, Ordering::Relaxed);
    }
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> LinkStats {
        LinkStats {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
        }
    }
}

/// A framed, bidirectional, two-party channel.
#[async_trait]
pub trait Link: Send + Sync {
    /// Sends one frame. Fails with [`LinkError::FrameTooLarge`] without sending if the frame is
    /// over the bound, and with [`LinkError::PeerGone`] if the peer has gone away.
    async fn send(&self, frame: Bytes) -> Result<(), LinkError>;
    /// Receives the next frame. Fails with [`LinkError::PeerGone`] when the peer has closed
    /// its side, and with [`LinkError::FrameTooLarge`] if the peer sent an oversized frame.
    async fn recv(&self) -> Result<Bytes, LinkError>;
    /// The largest frame this link carries.
    fn frame_bytes_max(&self) -> usize;
    /// Counters so far.
    fn stats(&self) -> LinkStats;
}

/// In-memory link: one end of a pair made by [`MemLink::pair`].
#[derive(Debug)]
pub struct MemLink {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<mpsc::Receiver<Bytes>>,
    frame_bytes_max: usize,
    counters: Arc<LinkCounters>,
}

impl MemLink {
    /// Two connected ends with the default frame bound.
    pub fn pair() -> (MemLink, MemLink) {
        Self::pair_with_limit(FRAME_BYTES_MAX)
    }

    /// Two connected ends that refuse frames over `frame_bytes_max`.
    pub fn pair_with_limit(frame_bytes_max: usize) -> (MemLink, MemLink) {
        let (tx_a, rx_b) = mpsc::channel(LINK_QUEUE_FRAMES);
        let (tx_b, rx_a) = mpsc::channel(LINK_QUEUE_FRAMES);
        let a = MemLink {
            tx: tx_a,
            rx: Mutex::new(rx_a),
            frame_bytes_max,
            counters: Arc::default(),
        };
        let b = MemLink {
            tx: tx_b,
            rx: Mutex::new(rx_b),
            frame_bytes_max,
            counters: Arc::default(),
        };
        (a, b)
    }

    /// Sends a frame without the local size check, to test the receiving side's bound.
    pub async fn dangerous_send_unchecked(&self, frame: Bytes) -> Result<(), LinkError> {
        let len = frame.len();
        self.tx
            .send(frame)
            .await
            .map_err(|_| LinkError::PeerGone("in-memory peer dropped".into()))?;
        self.counters.on_send(len);
        Ok(())
    }
}

#[async_trait]
impl Link for MemLink {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
        self.dangerous_send_unchecked(frame).await
    }

    async fn recv(&self) -> Result<Bytes, LinkError> {
        let frame = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| LinkError::PeerGone("in-memory peer closed its side".into()))?;
        LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
        self.counters.on_recv(frame.len());
        Ok(frame)
    }

    fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }
}

/// A shared link is a link: its owner can hand a clone to a protocol that takes a
/// `Box<dyn Link>` and still read the counters afterwards.
#[async_trait]
impl<L: Link + ?Sized> Link for Arc<L> {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        (**self).send(frame).await
    }

    async fn recv(&self) -> Result<Bytes, LinkError> {
        (**self).recv().await
    }

    fn frame_bytes_max(&self) -> usize {
        (**self).frame_bytes_max()
    }

    fn stats(&self) -> LinkStats {
        (**self).stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_and_are_counted() {
        let (a, b) = MemLink::pair();
        a.send(Bytes::from_static(b"one")).await.expect("send");
        a.send(Bytes::from_static(b"three")).await.expect("send");
        assert_eq!(b.recv().await.expect("recv"), Bytes::from_static(b"one"));
        assert_eq!(b.recv().await.expect("recv"), Bytes::from_static(b"three"));
        assert_eq!(a.stats().bytes_sent, 8);
        assert_eq!(b.stats().frames_received, 2);
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_on_both_sides() {
        let (a, b) = MemLink::pair_with_limit(4);
        let err = a.send(Bytes::from_static(b"12345")).await.unwrap_err();
        assert_eq!(err, LinkError::FrameTooLarge { len: 5, max: 4 });
        a.dangerous_send_unchecked(Bytes::from_static(b"123456"))
            .await
            .expect("unchecked send");
        let err = b.recv().await.unwrap_err();
        assert_eq!(err, LinkError::FrameTooLarge { len: 6, max: 4 });
    }

    #[tokio::test]
    async fn dropped_peer_is_reported() {
        let (a, b) = MemLink::pair();
        drop(a);
        assert!(matches!(b.recv().await, Err(LinkError::PeerGone(_))));
        assert!(matches!(
            b.send(Bytes::from_static(b"x")).await,
            Err(LinkError::PeerGone(_))
        ));
    }
}
