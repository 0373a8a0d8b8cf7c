//! [`FrameLink`]: a [`Link`] over one gRPC stream of [`Frame`]s in each direction, whoever
//! opened it — a worker's peer link (`Peer.Exchange`, wrapped by the worker's `GrpcLink`) and
//! each worker's link to the operator's dealer (`Operator.Dealer`), on both ends.
//!
//! Frames over the link's bound are refused on sending and on receiving (tonic's decoder
//! refuses them first when the channel was built with the same bound); a send that waits
//! longer than the idle timeout for room in the bounded queue, or a receive that waits longer
//! for a frame, fails with [`LinkError::Timeout`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tessera_core::link::LinkCounters;
use tessera_core::{Link, LinkError, LinkStats};
use tokio::sync::{Mutex, mpsc};
use tonic::Status;

use crate::v1::Frame;

/// The inbound half of a stream: frames or the status that ended it.
pub type Inbound = futures::stream::BoxStream<'static, Result<Frame, Status>>;

/// Metadata of an `Operator.Dealer` call naming the calling worker.
pub const DEALER_WORKER_METADATA: &str = "x-tessera-worker";
/// Metadata of an `Operator.Dealer` call naming the worker's task.
pub const DEALER_TASK_METADATA: &str = "x-tessera-task";

/// Extra room over a link's frame bound for protobuf framing, for tonic's message limits.
pub const FRAME_OVERHEAD_BYTES: usize = 64;

/// A link over a gRPC stream: frames go out through a bounded queue the stream drains,
/// and come in from the stream. `Debug` shows the bound and the counters.
pub struct FrameLink {
    tx: mpsc::Sender<Frame>,
    rx: Mutex<Inbound>,
    frame_bytes_max: usize,
    idle_timeout: Duration,
    counters: Arc<LinkCounters>,
}

impl std::fmt::Debug for FrameLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameLink")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// The link error a stream's ending status stands for.
pub fn status_to_link(s: &Status) -> LinkError {
    match s.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            LinkError::Transport(format!("peer frame refused: {}", s.message()))
        }
        // `Unknown` is what a broken HTTP/2 connection surfaces as (reset, broken pipe).
        tonic::Code::Cancelled
        | tonic::Code::Unavailable
        | tonic::Code::Aborted
        | tonic::Code::Unknown => LinkError::PeerGone(s.message().to_string()),
        _ => LinkError::Transport(format!("{}: {}", s.code(), s.message())),
    }
}

impl FrameLink {
    /// A link sending into `tx` (whose receiver feeds the outgoing stream) and receiving from
    /// `rx`, carrying frames of at most `frame_bytes_max` bytes, each direction silent for at
    /// most `idle_timeout`.
    pub fn new(
        tx: mpsc::Sender<Frame>,
        rx: Inbound,
        frame_bytes_max: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            tx,
            rx: Mutex::new(rx),
            frame_bytes_max,
            idle_timeout,
            counters: Arc::default(),
        }
    }

    fn timeout(&self) -> LinkError {
        LinkError::Timeout {
            timeout_ms: u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[async_trait]
impl Link for FrameLink {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
        let len = frame.len();
        // A peer that stops reading fills the bounded queue: give up after the idle timeout,
        // as a receive does, rather than wait for it forever.
        tokio::time::timeout(self.idle_timeout, self.tx.send(Frame { payload: frame }))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|_| LinkError::PeerGone("peer stream closed".into()))?;
        self.counters.on_send(len);
        Ok(())
    }

    async fn recv(&self) -> Result<Bytes, LinkError> {
        let mut rx = self.rx.lock().await;
        let next = tokio::time::timeout(self.idle_timeout, rx.next())
            .await
            .map_err(|_| self.timeout())?;
        let frame = match next {
            None => return Err(LinkError::PeerGone("peer closed the stream".into())),
            Some(Err(s)) => return Err(status_to_link(&s)),
            Some(Ok(f)) => f.payload,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(max: usize, idle: Duration) -> (FrameLink, FrameLink) {
        let (tx_a, rx_a) = mpsc::channel::<Frame>(4);
        let (tx_b, rx_b) = mpsc::channel::<Frame>(4);
        let inbound = |rx: mpsc::Receiver<Frame>| -> Inbound {
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(Ok)
                .boxed()
        };
        (
            FrameLink::new(tx_a, inbound(rx_b), max, idle),
            FrameLink::new(tx_b, inbound(rx_a), max, idle),
        )
    }

    #[tokio::test]
    async fn frames_cross_are_counted_and_bounded_on_both_sides() {
        let (a, b) = pair(8, Duration::from_secs(5));
        a.send(Bytes::from_static(b"hello")).await.expect("send");
        assert_eq!(b.recv().await.expect("recv"), Bytes::from_static(b"hello"));
        assert_eq!(a.stats().bytes_sent, 5);
        assert_eq!(b.stats().bytes_received, 5);
        assert!(matches!(
            a.send(Bytes::from(vec![0u8; 9])).await,
            Err(LinkError::FrameTooLarge { len: 9, max: 8 })
        ));
        // A peer whose own bound is larger still cannot make this side take a big frame.
        let (c, d) = pair(64, Duration::from_secs(5));
        let small = FrameLink {
            frame_bytes_max: 8,
            ..d
        };
        c.send(Bytes::from(vec![0u8; 9])).await.expect("send");
        assert!(matches!(
            small.recv().await,
            Err(LinkError::FrameTooLarge { len: 9, max: 8 })
        ));
    }

    #[tokio::test]
    async fn silence_and_a_closed_stream_are_typed() {
        let (a, b) = pair(8, Duration::from_millis(50));
        assert!(matches!(
            b.recv().await,
            Err(LinkError::Timeout { timeout_ms: 50 })
        ));
        drop(a);
        assert!(matches!(b.recv().await, Err(LinkError::PeerGone(_))));
        assert_eq!(
            status_to_link(&Status::unavailable("reset")),
            LinkError::PeerGone("reset".into())
        );
    }
}
