//! The message transport the engine is written against, for one aggregator and `n` clients,
//! and async drivers that run a [`Server`] or a [`Client`] over it.
//!
//! * A client talks to the aggregator over a two-party [`tessera_core::Link`] (framed, bounded,
//!   counted), exactly as the two-party engines do.
//! * The aggregator talks to all clients over an [`AggregatorTransport`]: frames to a client
//!   id, and [`Inbound`] events: a frame with the sender the transport authenticated (a real
//!   transport takes it from the client's certificate), a client gone, or the deadline of the
//!   current stage (the transport owns the clock; the engine reads none).
//! * [`in_process`] builds both ends on bounded tokio channels, for tests and benchmarks.
//!
//! Frames above the transport's `frame_bytes_max` are refused on sending and on receiving
//! ([`tessera_core::LinkError::FrameTooLarge`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use rand_core::{CryptoRng, RngCore};
use tessera_core::link::LinkCounters;
use tessera_core::{Link, LinkError, LinkStats};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::server::{Aggregate, Server, ServerStep};
use crate::{Client, ClientId, FlError, SecAggConfig};

/// Frames queued per direction per client in [`in_process`].
pub const QUEUE_FRAMES: usize = 4;

/// What the aggregator's transport delivers.
#[derive(Debug)]
pub enum Inbound {
    /// A frame from a client, with the sender the transport authenticated.
    Frame {
        /// The authenticated sender.
        from: ClientId,
        /// The frame.
        frame: Bytes,
    },
    /// The client went away (its link closed); it will send nothing more.
    Gone(ClientId),
    /// The current stage's deadline passed (or no client can send any more): close the stage.
    Deadline,
}

/// The aggregator's side of an N-client transport.
#[async_trait]
pub trait AggregatorTransport: Send + Sync {
    /// Sends one frame to a client. [`LinkError::PeerGone`] if the client is gone,
    /// [`LinkError::FrameTooLarge`] over the bound.
    async fn send(&self, to: ClientId, frame: Bytes) -> Result<(), LinkError>;
    /// The next event.
    async fn recv(&self) -> Result<Inbound, LinkError>;
    /// The largest frame carried.
    fn frame_bytes_max(&self) -> usize;
    /// Counters over all clients.
    fn stats(&self) -> LinkStats;
}

/// The aggregator's end of [`in_process`].
pub struct InProcessAggregator {
    to_clients: Vec<mpsc::Sender<Bytes>>,
    inbound: Mutex<SelectAll<BoxStream<'static, Inbound>>>,
    frame_bytes_max: usize,
    counters: Arc<LinkCounters>,
}

impl std::fmt::Debug for InProcessAggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessAggregator")
            .field("clients", &self.to_clients.len())
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

/// A client's end of [`in_process`]: a [`Link`] to the aggregator. Dropping it is the client
/// going away.
#[derive(Debug)]
pub struct InProcessClient {
    tx: mpsc::Sender<Bytes>,
    rx: Mutex<mpsc::Receiver<Bytes>>,
    frame_bytes_max: usize,
    counters: LinkCounters,
}

/// An aggregator end and `clients` client ends (index = client id), on bounded channels of
/// [`QUEUE_FRAMES`] frames, refusing frames over `frame_bytes_max`.
pub fn in_process(
    clients: u32,
    frame_bytes_max: usize,
) -> (InProcessAggregator, Vec<InProcessClient>) {
    let mut to_clients = Vec::new();
    let mut ends = Vec::new();
    let mut inbound = SelectAll::new();
    for id in 0..clients {
        let (down_tx, down_rx) = mpsc::channel(QUEUE_FRAMES);
        let (up_tx, up_rx) = mpsc::channel(QUEUE_FRAMES);
        to_clients.push(down_tx);
        let from = ClientId(id);
        let s = ReceiverStream::new(up_rx)
            .map(move |frame| Inbound::Frame { from, frame })
            .chain(stream::once(async move { Inbound::Gone(from) }));
        inbound.push(s.boxed());
        ends.push(InProcessClient {
            tx: up_tx,
            rx: Mutex::new(down_rx),
            frame_bytes_max,
            counters: LinkCounters::default(),
        });
    }
    let agg = InProcessAggregator {
        to_clients,
        inbound: Mutex::new(inbound),
        frame_bytes_max,
        counters: Arc::default(),
    };
    (agg, ends)
}

#[async_trait]
impl AggregatorTransport for InProcessAggregator {
    async fn send(&self, to: ClientId, frame: Bytes) -> Result<(), LinkError> {
        LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
        let tx = self
            .to_clients
            .get(to.0 as usize)
            .ok_or_else(|| LinkError::PeerGone(format!("no client {to}")))?;
        let len = frame.len();
        tx.send(frame)
            .await
            .map_err(|_| LinkError::PeerGone(format!("client {to}")))?;
        self.counters.on_send(len);
        Ok(())
    }

    async fn recv(&self) -> Result<Inbound, LinkError> {
        let next = self.inbound.lock().await.next().await;
        match next {
            Some(Inbound::Frame { from, frame }) => {
                LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
                self.counters.on_recv(frame.len());
                Ok(Inbound::Frame { from, frame })
            }
            Some(other) => Ok(other),
            None => Ok(Inbound::Deadline),
        }
    }

    fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }
}

#[async_trait]
impl Link for InProcessClient {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        LinkError::check_frame(frame.len(), self.frame_bytes_max)?;
        let len = frame.len();
        self.tx
            .send(frame)
            .await
            .map_err(|_| LinkError::PeerGone("aggregator".into()))?;
        self.counters.on_send(len);
        Ok(())
    }

    async fn recv(&self) -> Result<Bytes, LinkError> {
        let f = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| LinkError::PeerGone("aggregator".into()))?;
        LinkError::check_frame(f.len(), self.frame_bytes_max)?;
        self.counters.on_recv(f.len());
        Ok(f)
    }

    fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    fn stats(&self) -> LinkStats {
        self.counters.snapshot()
    }
}

/// The result of [`run_server`].
#[derive(Debug)]
pub struct ServerOutcome {
    /// The aggregate.
    pub aggregate: Aggregate,
    /// Clients whose frame the server refused (treated as dropped from then on), with why.
    pub refused: Vec<(ClientId, FlError)>,
}

/// Runs the aggregator over `transport` until the aggregate is out. A stage closes when every
/// expected client has answered or gone, or at [`Inbound::Deadline`]. A client whose frame is
/// refused is treated as dropped (and listed in [`ServerOutcome::refused`]); the round fails
/// only as [`Server::close_round`] does, or on a transport error other than a client gone.
pub async fn run_server(
    transport: &dyn AggregatorTransport,
    config: &SecAggConfig,
) -> Result<ServerOutcome, FlError> {
    let mut server = Server::new(config)?;
    let mut gone = BTreeSet::new();
    let mut refused = Vec::new();
    loop {
        while server.pending().iter().any(|c| !gone.contains(c)) {
            match transport.recv().await? {
                Inbound::Frame { from, frame } => {
                    if gone.contains(&from) {
                        continue;
                    }
                    if let Err(e) = server.receive(from, &frame) {
                        refused.push((from, e));
                        gone.insert(from);
                    }
                }
                Inbound::Gone(id) => {
                    gone.insert(id);
                }
                Inbound::Deadline => break,
            }
        }
        match server.close_round()? {
            ServerStep::Send(frames) => {
                for (to, frame) in frames {
                    if gone.contains(&to) {
                        continue;
                    }
                    match transport.send(to, frame).await {
                        Ok(()) => {}
                        Err(LinkError::PeerGone(_)) => {
                            gone.insert(to);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            ServerStep::Done(aggregate) => return Ok(ServerOutcome { aggregate, refused }),
        }
    }
}

/// Runs one client over its link to the aggregator: advertise keys, share keys, masked input,
/// unmasking. `input` as for [`Client::masked_input`]. The masking work runs inline on the
/// calling task (rayon inside); on a shared runtime, call it from `spawn_blocking`'s context
/// or a dedicated runtime.
pub async fn run_client<R: RngCore + CryptoRng + Send>(
    link: &dyn Link,
    config: &SecAggConfig,
    id: ClientId,
    input: &[u64],
    rng: &mut R,
) -> Result<(), FlError> {
    let (mut c, f) = Client::new(config, id, rng)?;
    link.send(f).await?;
    let f = link.recv().await?;
    link.send(c.share_keys(&f, rng)?).await?;
    let f = link.recv().await?;
    link.send(c.masked_input(&f, input)?).await?;
    let f = link.recv().await?;
    link.send(c.unmask(&f)?).await?;
    Ok(())
}
