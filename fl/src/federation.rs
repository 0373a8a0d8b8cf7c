//! FedAvg between processes: the aggregator drives the run over an [`AggregatorTransport`]
//! (one link per provider), each provider answers over its own [`Link`] — the protocol an
//! `fl` job runs between workers. Every average is one SecAgg+ round of [`crate::transport`]'s
//! drivers, exactly as [`crate::fedavg::train_in_process`] runs them in one process.
//!
//! # Protocol (version [`VERSION`])
//!
//! Frames are `[kind][body]`, integers little-endian, floats IEEE-754 binary64. Kinds are
//! disjoint from SecAgg's ([`crate::wire`]) so a frame out of turn is always named.
//!
//! 1. Each provider sends **Hello** `[0x40][version u8][features u32]`; a provider whose
//!    version or width differs from the job's is left out (treated as gone).
//! 2. With [`FederationConfig::standardise`], a **Moments** frame
//!    `[0x41][id u32][clients u32][neighbours u32][threshold u32]` opens one SecAgg+ round of
//!    the providers' `(n_k, Σx, Σx²)` ([`crate::moments`]); then **Standardise**
//!    `[0x42][features u32][mean f64 × d][scale f64 × d]` gives every provider the global mean
//!    and standard deviation.
//! 3. Each round `r`: **Round** `[0x43][r u32][id u32][clients u32][neighbours u32]
//!    [threshold u32][params u32][global f64 × params]` to every sampled provider (SecAgg id
//!    `id` of `clients`), then the SecAgg+ round; a provider not sampled hears nothing.
//! 4. **Done** `[0x44][rounds u32]` ends the run.
//!
//! A provider checks every frame against the job's configuration, which both sides hold
//! (signed in their task specs): the round number rises by one from 0 and stays below `R`;
//! the SecAgg parameters equal what [`round_secagg`] / [`moments::moments_config`] derive for
//! the number of clients it is told (so an aggregator cannot lower `t` or change the graph),
//! `clients` is at most the number of providers; the global parameters have the model's
//! width and are finite. Anything else is [`TrainError::Protocol`], and the provider stops.
//!
//! # Dropouts
//!
//! A provider whose link closes, or whose frame the aggregator refuses, is gone for the rest
//! of the run: later rounds sample among the others (a round whose sampled survivors number
//! fewer than `t` is skipped, as a thin Poisson round is). Inside a round SecAgg+ recovers
//! from dropouts at any stage while `t` survive; below that the run fails with
//! [`TrainError::SecAgg`] naming the round. A stage also closes at the transport's
//! [`Inbound::Deadline`]: a provider late there is out of that round, and out of the run
//! once a stale frame of it arrives in a later one.
//!
//! # What each party learns
//!
//! As in the crate's threat model: the aggregator learns the sampled sets, the survivors and
//! each round's sum (so the global models), and with standardisation the total row count and
//! each feature's global mean and variance; a provider learns the global model of each round
//! it is sampled for, the standardisation, and what SecAgg+ shows a client. No provider's
//! rows, update or row count reaches the aggregator in the clear.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore, SeedableRng};
use tessera_core::{Link, LinkError, LinkStats};

use crate::data::{Dataset, Standardisation};
use crate::error::TrainError;
use crate::fedavg::{
    FedAvgConfig, FedAvgServer, RoundPlan, RoundReport, local_update, round_secagg,
};
use crate::model::Model;
use crate::moments;
use crate::transport::{AggregatorTransport, Inbound, run_server};
use crate::{ClientId, SecAggConfig};

/// The protocol's version, in every Hello.
pub const VERSION: u8 = 1;

const KIND_HELLO: u8 = 0x40;
const KIND_MOMENTS: u8 = 0x41;
const KIND_STANDARDISE: u8 = 0x42;
const KIND_ROUND: u8 = 0x43;
const KIND_DONE: u8 = 0x44;

/// What both sides of a run hold (from the job): the FedAvg settings, the number of providers,
/// the feature width, and whether the features are standardised by a moments round first.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationConfig {
    /// Model, rounds, local training, sampling, aggregation, DP and the session id.
    pub fedavg: FedAvgConfig,
    /// `K`: the providers of the job (2 ..= [`crate::CLIENTS_MAX`]).
    pub providers: u32,
    /// Feature columns (the same for every provider).
    pub features: usize,
    /// Whether a moments round computes the global standardisation before training.
    pub standardise: bool,
}

impl FederationConfig {
    /// Checks the FedAvg bounds for `providers` clients and the width.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.fedavg.validate(self.providers)?;
        if self.features == 0 || self.features > crate::data::FEATURES_MAX {
            return Err(TrainError::Config(format!(
                "{} features outside 1..={}",
                self.features,
                crate::data::FEATURES_MAX
            )));
        }
        Ok(())
    }
}

/// The public SecAgg session id of the `fl` job `job_id`:
/// `SHA-256("tessera-fl job session" ‖ job_id)` (job ids are unique, so is this).
pub fn job_session(job_id: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tessera-fl job session");
    h.update(job_id.as_bytes());
    h.finalize().into()
}

/// The run's configuration from an `fl` task's signed spec: the model, FedAvg's settings, the
/// aggregation of every round (`t`, `k`, the quantiser's clip range — 4, or `C + 6σ` under DP
/// when that is larger —, `2^32` levels in `Z_{2^64}`, `N_max` = `rows_max`) and the job's
/// session id ([`job_session`]). Both the aggregator's worker and each provider's derive it
/// from the same spec. Errors: [`TrainError::Config`] for any bound broken.
pub fn config_of(
    spec: &tessera_core::FlSpec,
    job_id: &str,
) -> Result<FederationConfig, TrainError> {
    let model = match spec.model {
        tessera_core::FlModel::Logistic => crate::model::ModelKind::Logistic,
        tessera_core::FlModel::Mlp { hidden } => crate::model::ModelKind::Mlp {
            hidden: hidden as usize,
        },
    };
    let dp = spec.dp.map(|d| crate::dp::DpConfig {
        clip_norm: d.clip_norm,
        noise_multiplier: d.noise_multiplier,
        delta: d.delta,
    });
    if let Some(d) = &dp {
        d.validate()?;
    }
    let defaults = crate::fedavg::AggregationConfig::default();
    let clip_range = match &dp {
        Some(d) => defaults
            .clip_range
            .max((d.clip_norm + 6.0 * d.client_sigma(spec.threshold.max(1))) * 1.01),
        None => defaults.clip_range,
    };
    let config = FederationConfig {
        fedavg: FedAvgConfig {
            model,
            rounds: spec.rounds,
            local: crate::model::LocalTraining {
                epochs: spec.epochs,
                batch_size: spec.batch_size as usize,
                learning_rate: spec.learning_rate,
            },
            sampling: crate::fedavg::Sampling::Fraction(spec.sample_fraction),
            aggregation: crate::fedavg::AggregationConfig {
                neighbours: spec.neighbours,
                threshold: spec.threshold,
                clip_range,
                weight_rows_max: spec.rows_max,
                ..defaults
            },
            dp,
            session_id: job_session(job_id),
        },
        providers: spec.providers,
        features: spec.features.len(),
        standardise: spec.standardise,
    };
    config.validate()?;
    Ok(config)
}

/// Asked by a provider once, before the first frame that lets the aggregator learn a sum
/// including its data (its first unmasking shares): the job's delivery point. `false` stops
/// the provider there ([`TrainError::Protocol`] is not used: the caller knows why).
#[async_trait]
pub trait ReleaseGate: Send + Sync {
    /// Records the release; whether it may go on.
    async fn release(&self) -> bool;
}

/// A gate that always opens (for runs outside a job).
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

#[async_trait]
impl ReleaseGate for Open {
    async fn release(&self) -> bool {
        true
    }
}

/// One round as the aggregator saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    /// FedAvg's report (sampled, survivors, skipped, update norm).
    pub report: RoundReport,
    /// Sampled providers whose update is not in the sum (gone, late or refused).
    pub dropped: usize,
}

/// The aggregator's result.
#[derive(Debug, Clone)]
pub struct FederationOutcome {
    /// The final global model.
    pub model: Model,
    /// The standardisation the providers applied (`None` without a moments round).
    pub standardisation: Option<Standardisation>,
    /// One summary per round.
    pub rounds: Vec<RoundSummary>,
    /// `(ε, best order)` at the configured `δ`, with DP.
    pub epsilon: Option<(f64, u32)>,
    /// Providers (by index) gone before the end, in the order they went.
    pub gone: Vec<usize>,
}

/// A provider's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderOutcome {
    /// Rounds this provider was sampled for and sent its masked update in.
    pub rounds_joined: u32,
    /// Rounds the run had (from Done).
    pub rounds_run: u32,
}

fn protocol(m: impl Into<String>) -> TrainError {
    TrainError::Protocol(m.into())
}

/// Parses frames: a cursor with typed reads that fail as [`TrainError::Protocol`].
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TrainError> {
        if self.b.len() < n {
            return Err(protocol(format!("{} frame is truncated", self.what)));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, TrainError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TrainError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn f64s(&mut self, n: usize) -> Result<Vec<f64>, TrainError> {
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| protocol(format!("{} frame is too long", self.what)))?;
        let b = self.take(bytes)?;
        let v: Vec<f64> = b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(protocol(format!(
                "{} frame holds a non-finite number",
                self.what
            )));
        }
        Ok(v)
    }
    fn end(&self) -> Result<(), TrainError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(protocol(format!("{} frame has trailing bytes", self.what)))
        }
    }
}

/// The SecAgg parameters a Moments or Round frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    id: u32,
    clients: u32,
    neighbours: u32,
    threshold: u32,
}

impl Seat {
    fn put(&self, out: &mut BytesMut) {
        out.put_u32_le(self.id);
        out.put_u32_le(self.clients);
        out.put_u32_le(self.neighbours);
        out.put_u32_le(self.threshold);
    }
    fn read(r: &mut Reader<'_>) -> Result<Seat, TrainError> {
        Ok(Seat {
            id: r.u32()?,
            clients: r.u32()?,
            neighbours: r.u32()?,
            threshold: r.u32()?,
        })
    }
    /// The provider's check: what it is told equals what it derives for that many clients.
    fn check(&self, expected: &SecAggConfig, providers: u32) -> Result<(), TrainError> {
        if self.clients > providers {
            return Err(protocol(format!(
                "a round of {} clients among {providers} providers",
                self.clients
            )));
        }
        if self.id >= self.clients
            || self.neighbours != expected.neighbours
            || self.threshold != expected.threshold
        {
            return Err(protocol(format!(
                "seat {} of {} with k = {}, t = {} does not match the job's k = {}, t = {}",
                self.id,
                self.clients,
                self.neighbours,
                self.threshold,
                expected.neighbours,
                expected.threshold
            )));
        }
        Ok(())
    }
}

fn seat_of(cfg: &SecAggConfig, id: u32) -> Seat {
    Seat {
        id,
        clients: cfg.clients,
        neighbours: cfg.neighbours,
        threshold: cfg.threshold,
    }
}

fn hello(features: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(6);
    b.put_u8(KIND_HELLO);
    b.put_u8(VERSION);
    b.put_u32_le(features as u32);
    b.freeze()
}

/// The aggregator's view of one SecAgg+ round: SecAgg ids `0..n` are the providers in
/// `seats` (sorted), frames of other providers are stray (refused, the sender dropped), and a
/// provider's going away is remembered for the whole run.
struct RoundView<'a> {
    inner: &'a dyn AggregatorTransport,
    seats: Vec<usize>,
    by_provider: BTreeMap<usize, u32>,
    gone: &'a Mutex<Vec<usize>>,
}

impl RoundView<'_> {
    fn mark_gone(&self, p: usize) {
        if let Ok(mut g) = self.gone.lock()
            && !g.contains(&p)
        {
            g.push(p);
        }
    }
}

#[async_trait]
impl AggregatorTransport for RoundView<'_> {
    async fn send(&self, to: ClientId, frame: Bytes) -> Result<(), LinkError> {
        let p = *self
            .seats
            .get(to.0 as usize)
            .ok_or_else(|| LinkError::PeerGone(format!("no client {to} in this round")))?;
        let r = self.inner.send(ClientId(p as u32), frame).await;
        if matches!(r, Err(LinkError::PeerGone(_))) {
            self.mark_gone(p);
        }
        r
    }

    async fn recv(&self) -> Result<Inbound, LinkError> {
        loop {
            match self.inner.recv().await? {
                Inbound::Frame { from, frame } => {
                    let p = from.0 as usize;
                    match self.by_provider.get(&p) {
                        Some(&id) => {
                            return Ok(Inbound::Frame {
                                from: ClientId(id),
                                frame,
                            });
                        }
                        // A frame from a provider outside the round breaks the protocol:
                        // it is out for the rest of the run.
                        None => self.mark_gone(p),
                    }
                }
                Inbound::Gone(from) => {
                    let p = from.0 as usize;
                    self.mark_gone(p);
                    if let Some(&id) = self.by_provider.get(&p) {
                        return Ok(Inbound::Gone(ClientId(id)));
                    }
                }
                Inbound::Deadline => return Ok(Inbound::Deadline),
            }
        }
    }

    fn frame_bytes_max(&self) -> usize {
        self.inner.frame_bytes_max()
    }

    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

/// Runs the aggregator of a FedAvg job over `transport` (client id = provider index
/// `0..providers`): hellos, the optional moments round, `R` rounds, Done. `rng` initialises
/// the model and samples each round's providers; `on_round` is called after each round (for
/// progress). Errors: [`TrainError::Config`] (the configuration; fewer than `t` providers
/// said hello), [`TrainError::SecAgg`] (a round that lost too many), [`TrainError::Link`]
/// (the transport itself failed).
pub async fn run_aggregator<R: Rng + CryptoRng + Send>(
    transport: &dyn AggregatorTransport,
    config: &FederationConfig,
    rng: &mut R,
    on_round: &mut (dyn FnMut(&RoundSummary) + Send),
) -> Result<FederationOutcome, TrainError> {
    config.validate()?;
    let gone = Mutex::new(Vec::new());
    let is_gone = |p: usize| gone.lock().map(|g| g.contains(&p)).unwrap_or(true);
    let mark = |p: usize| {
        if let Ok(mut g) = gone.lock()
            && !g.contains(&p)
        {
            g.push(p);
        }
    };
    let all: Vec<usize> = (0..config.providers as usize).collect();
    // 1. Hellos.
    let mut greeted = BTreeSet::new();
    while greeted.len() + gone.lock().map(|g| g.len()).unwrap_or(0) < all.len() {
        match transport.recv().await? {
            Inbound::Frame { from, frame } => {
                let p = from.0 as usize;
                if p >= all.len() || greeted.contains(&p) || is_gone(p) {
                    if p < all.len() {
                        mark(p);
                    }
                    continue;
                }
                let mut r = Reader {
                    b: &frame,
                    what: "Hello",
                };
                let ok = r.u8().ok() == Some(KIND_HELLO)
                    && r.u8().ok() == Some(VERSION)
                    && r.u32().ok() == Some(config.features as u32)
                    && r.end().is_ok();
                if ok {
                    greeted.insert(p);
                } else {
                    // A provider of another version or width is left out of the run.
                    mark(p);
                }
            }
            Inbound::Gone(from) => mark(from.0 as usize),
            Inbound::Deadline => break,
        }
    }
    for p in &all {
        if !greeted.contains(p) {
            mark(*p);
        }
    }
    let live = |gone: &Mutex<Vec<usize>>| -> Vec<usize> {
        let g = gone.lock().map(|g| g.clone()).unwrap_or_default();
        all.iter().copied().filter(|p| !g.contains(p)).collect()
    };
    let threshold = config.fedavg.aggregation.threshold;
    if (live(&gone).len() as u32) < threshold {
        return Err(TrainError::Config(format!(
            "{} of {} providers joined; the threshold is {threshold}",
            live(&gone).len(),
            config.providers
        )));
    }
    // 2. Moments.
    let mut standardisation = None;
    if config.standardise {
        let seats = live(&gone);
        let cfg = moments::moments_config(
            &config.fedavg.session_id,
            seats.len() as u32,
            config.features,
            &config.fedavg.aggregation,
        )?;
        let aggregate = secure_round(transport, &gone, &seats, &cfg, 0, |id| {
            let mut b = BytesMut::with_capacity(17);
            b.put_u8(KIND_MOMENTS);
            seat_of(&cfg, id).put(&mut b);
            b.freeze()
        })
        .await?;
        let s = moments::standardisation_from_sum(&aggregate.sum, config.features)?;
        if let Standardisation::Given { mean, scale } = &s {
            let mut b = BytesMut::with_capacity(5 + 16 * config.features);
            b.put_u8(KIND_STANDARDISE);
            b.put_u32_le(config.features as u32);
            mean.iter().for_each(|v| b.put_f64_le(*v));
            scale.iter().for_each(|v| b.put_f64_le(*v));
            let frame = b.freeze();
            for p in live(&gone) {
                send_or_mark(transport, &gone, p, frame.clone()).await?;
            }
        }
        standardisation = Some(s);
    }
    // 3. Rounds.
    let mut server = FedAvgServer::new(
        config.fedavg.clone(),
        config.providers,
        config.features,
        rng,
    )?;
    let params = server.model().param_count();
    let mut rounds = Vec::new();
    while let Some(mut plan) = server.plan_round(rng) {
        let sampled_count = plan.sampled.len();
        let now_live = live(&gone);
        plan.sampled.retain(|p| now_live.contains(p));
        plan.secagg = round_secagg(
            &config.fedavg,
            params,
            plan.round,
            plan.sampled.len() as u32,
        );
        let aggregate = match &plan.secagg {
            Some(cfg) => {
                let global = server.model().to_flat();
                let round = plan.round;
                Some(
                    secure_round(transport, &gone, &plan.sampled, cfg, round, |id| {
                        round_frame(round, &seat_of(cfg, id), &global)
                    })
                    .await?,
                )
            }
            None => None,
        };
        let report = server.finish_round(&plan, aggregate.as_ref())?;
        let summary = RoundSummary {
            dropped: sampled_count.saturating_sub(report.survivors),
            report,
        };
        on_round(&summary);
        rounds.push(summary);
    }
    // 4. Done.
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(KIND_DONE);
    b.put_u32_le(config.fedavg.rounds);
    let done = b.freeze();
    for p in live(&gone) {
        send_or_mark(transport, &gone, p, done.clone()).await?;
    }
    Ok(FederationOutcome {
        model: server.model().clone(),
        standardisation,
        epsilon: server.epsilon(),
        rounds,
        gone: gone.lock().map(|g| g.clone()).unwrap_or_default(),
    })
}

async fn send_or_mark(
    transport: &dyn AggregatorTransport,
    gone: &Mutex<Vec<usize>>,
    p: usize,
    frame: Bytes,
) -> Result<(), TrainError> {
    match transport.send(ClientId(p as u32), frame).await {
        Ok(()) => Ok(()),
        Err(LinkError::PeerGone(_)) => {
            if let Ok(mut g) = gone.lock()
                && !g.contains(&p)
            {
                g.push(p);
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn round_frame(round: u32, seat: &Seat, global: &[f64]) -> Bytes {
    let mut b = BytesMut::with_capacity(25 + 8 * global.len());
    b.put_u8(KIND_ROUND);
    b.put_u32_le(round);
    seat.put(&mut b);
    b.put_u32_le(global.len() as u32);
    global.iter().for_each(|v| b.put_f64_le(*v));
    b.freeze()
}

/// Opens a SecAgg+ round for `seats` (provider indices; SecAgg id = position) with the frame
/// `open(id)` to each, then runs the server over the round's view of the transport.
async fn secure_round(
    transport: &dyn AggregatorTransport,
    gone: &Mutex<Vec<usize>>,
    seats: &[usize],
    cfg: &SecAggConfig,
    round: u32,
    open: impl Fn(u32) -> Bytes,
) -> Result<crate::Aggregate, TrainError> {
    for (id, &p) in seats.iter().enumerate() {
        send_or_mark(transport, gone, p, open(id as u32)).await?;
    }
    let view = RoundView {
        inner: transport,
        seats: seats.to_vec(),
        by_provider: seats
            .iter()
            .enumerate()
            .map(|(id, &p)| (p, id as u32))
            .collect(),
        gone,
    };
    // Providers gone before the round opened are dropouts from its first stage.
    let already: Vec<u32> = seats
        .iter()
        .enumerate()
        .filter(|(_, p)| gone.lock().map(|g| g.contains(p)).unwrap_or(true))
        .map(|(id, _)| id as u32)
        .collect();
    let outcome = if already.is_empty() {
        run_server(&view, cfg).await
    } else {
        let pre = PreGone {
            inner: &view,
            pending: Mutex::new(already),
        };
        run_server(&pre, cfg).await
    }
    .map_err(|source| TrainError::SecAgg { round, source })?;
    for (id, _) in &outcome.refused {
        if let Some(&p) = seats.get(id.0 as usize) {
            view.mark_gone(p);
        }
    }
    Ok(outcome.aggregate)
}

/// A view that first reports the given clients gone (they left before the round opened).
struct PreGone<'a> {
    inner: &'a RoundView<'a>,
    pending: Mutex<Vec<u32>>,
}

#[async_trait]
impl AggregatorTransport for PreGone<'_> {
    async fn send(&self, to: ClientId, frame: Bytes) -> Result<(), LinkError> {
        self.inner.send(to, frame).await
    }
    async fn recv(&self) -> Result<Inbound, LinkError> {
        if let Some(id) = self.pending.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(Inbound::Gone(ClientId(id)));
        }
        self.inner.recv().await
    }
    fn frame_bytes_max(&self) -> usize {
        self.inner.frame_bytes_max()
    }
    fn stats(&self) -> LinkStats {
        self.inner.stats()
    }
}

/// Runs one provider of a FedAvg job over its `link` to the aggregator, on its own `data`
/// (read with the job's columns; standardised here if the aggregator sends the global
/// moments). `rng` draws local shuffles, rounding, DP noise and the SecAgg keys; `on_round`
/// is called with each round number the provider is sampled for, after its masked update is
/// sent. `gate` is asked once, before the provider's first unmasking shares leave (see
/// [`ReleaseGate`]); a closed gate ends the run with [`TrainError::Released`]. The training runs inline: call it where blocking for a round's local epochs is
/// fine (a dedicated runtime or `spawn_blocking`'s). Errors: [`TrainError::Protocol`] for a
/// frame that breaks the protocol or the job's configuration, [`TrainError::Link`],
/// [`TrainError::SecAgg`], [`TrainError::Config`] / [`TrainError::NonFinite`] from the local
/// training, [`TrainError::Data`] for a standardisation of the wrong width.
pub async fn run_provider<R: RngCore + CryptoRng + Send>(
    link: &dyn Link,
    config: &FederationConfig,
    mut data: Dataset,
    gate: &dyn ReleaseGate,
    rng: &mut R,
    on_round: &mut (dyn FnMut(u32) + Send),
) -> Result<ProviderOutcome, TrainError> {
    config.validate()?;
    if data.features() != config.features {
        return Err(TrainError::Config(format!(
            "the provider's table has {} features, the job {}",
            data.features(),
            config.features
        )));
    }
    link.send(hello(config.features)).await?;
    let mut model = Model::new(config.fedavg.model, config.features, &mut *rng)?;
    let params = model.param_count();
    let mut next_round = 0u32;
    let mut joined = 0u32;
    let mut moments_done = !config.standardise;
    let mut released = false;
    let mut standardised = !config.standardise;
    loop {
        let frame = link.recv().await?;
        let mut r = Reader {
            b: &frame,
            what: "aggregator",
        };
        match r.u8()? {
            KIND_MOMENTS if !moments_done => {
                r.what = "Moments";
                let seat = Seat::read(&mut r)?;
                r.end()?;
                let cfg = moments::moments_config(
                    &config.fedavg.session_id,
                    seat.clients,
                    config.features,
                    &config.fedavg.aggregation,
                )?;
                seat.check(&cfg, config.providers)?;
                let input = moments::moments_input(&data, seat.clients)?;
                released =
                    secure_input(link, &cfg, seat.id, &input, 0, gate, released, rng).await?;
                moments_done = true;
            }
            KIND_STANDARDISE if moments_done && !standardised => {
                r.what = "Standardise";
                let d = r.u32()? as usize;
                if d != config.features {
                    return Err(protocol(format!(
                        "a standardisation of {d} features for {}",
                        config.features
                    )));
                }
                let mean = r.f64s(d)?;
                let scale = r.f64s(d)?;
                r.end()?;
                data.standardise(&Standardisation::Given { mean, scale })?;
                standardised = true;
            }
            KIND_ROUND if standardised => {
                r.what = "Round";
                let round = r.u32()?;
                if round < next_round || round >= config.fedavg.rounds {
                    return Err(protocol(format!(
                        "round {round} after round {next_round} of {}",
                        config.fedavg.rounds
                    )));
                }
                let seat = Seat::read(&mut r)?;
                let width = r.u32()? as usize;
                if width != params {
                    return Err(protocol(format!(
                        "a global model of {width} parameters for a model of {params}"
                    )));
                }
                let global = r.f64s(width)?;
                r.end()?;
                let cfg =
                    round_secagg(&config.fedavg, params, round, seat.clients).ok_or_else(|| {
                        protocol(format!(
                            "round {round} with {} clients, below the threshold",
                            seat.clients
                        ))
                    })?;
                seat.check(&cfg, config.providers)?;
                model.set_flat(&global)?;
                let plan = RoundPlan {
                    round,
                    sampled: Vec::new(),
                    secagg: Some(cfg.clone()),
                };
                let input = local_update(&config.fedavg, &plan, &model, &data, &mut *rng)?;
                released =
                    secure_input(link, &cfg, seat.id, &input, round, gate, released, rng).await?;
                joined += 1;
                next_round = round + 1;
                on_round(round);
            }
            KIND_DONE if standardised => {
                r.what = "Done";
                let rounds = r.u32()?;
                r.end()?;
                if rounds != config.fedavg.rounds {
                    return Err(protocol(format!(
                        "done after {rounds} rounds of {}",
                        config.fedavg.rounds
                    )));
                }
                return Ok(ProviderOutcome {
                    rounds_joined: joined,
                    rounds_run: rounds,
                });
            }
            kind => {
                return Err(protocol(format!(
                    "frame kind {kind:#04x} out of turn (round {next_round})"
                )));
            }
        }
    }
}

/// One provider's side of a SecAgg+ round (as [`crate::transport::run_client`]), asking
/// `gate` before its first unmasking shares unless `released`; returns whether released.
#[allow(clippy::too_many_arguments)]
async fn secure_input<R: RngCore + CryptoRng + Send>(
    link: &dyn Link,
    cfg: &SecAggConfig,
    id: u32,
    input: &[u64],
    round: u32,
    gate: &dyn ReleaseGate,
    released: bool,
    rng: &mut R,
) -> Result<bool, TrainError> {
    let mut rng =
        ChaCha20Rng::from_rng(&mut *rng).map_err(|e| TrainError::Config(e.to_string()))?;
    let secagg = |source: crate::FlError| TrainError::SecAgg { round, source };
    let (mut c, f) = crate::Client::new(cfg, ClientId(id), &mut rng).map_err(secagg)?;
    link.send(f).await?;
    let f = link.recv().await?;
    link.send(c.share_keys(&f, &mut rng).map_err(secagg)?)
        .await?;
    let f = link.recv().await?;
    link.send(c.masked_input(&f, input).map_err(secagg)?)
        .await?;
    let f = link.recv().await?;
    let shares = c.unmask(&f).map_err(secagg)?;
    if !released && !gate.release().await {
        return Err(TrainError::Released);
    }
    link.send(shares).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader<'a>(b: &'a [u8]) -> Reader<'a> {
        Reader { b, what: "test" }
    }

    #[test]
    fn frames_parse_strictly() {
        let seat = Seat {
            id: 1,
            clients: 3,
            neighbours: 3,
            threshold: 2,
        };
        let f = round_frame(4, &seat, &[1.0, -2.5]);
        assert_eq!(f[0], KIND_ROUND);
        let mut r = reader(&f[1..]);
        assert_eq!(r.u32().unwrap(), 4);
        assert_eq!(Seat::read(&mut r).unwrap(), seat);
        assert_eq!(r.u32().unwrap(), 2);
        assert_eq!(r.f64s(2).unwrap(), vec![1.0, -2.5]);
        assert!(r.end().is_ok());
        // Truncated, trailing, oversized and non-finite input are protocol errors.
        assert!(matches!(
            Seat::read(&mut reader(&f[1..10])),
            Err(TrainError::Protocol(_))
        ));
        assert!(matches!(
            reader(&f64::NAN.to_le_bytes()).f64s(1),
            Err(TrainError::Protocol(_))
        ));
        assert!(matches!(
            reader(&[0; 8]).f64s(usize::MAX),
            Err(TrainError::Protocol(_))
        ));
        let mut r = reader(&[1, 2]);
        assert!(r.u8().is_ok());
        assert!(matches!(r.end(), Err(TrainError::Protocol(_))));
        assert!(matches!(reader(&[]).u32(), Err(TrainError::Protocol(_))));
        assert_eq!(hello(7)[..], [KIND_HELLO, VERSION, 7, 0, 0, 0]);
    }
}
