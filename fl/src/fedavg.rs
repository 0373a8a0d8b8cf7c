//! Federated averaging (FedAvg: McMahan, Moore, Ramage, Hampson, Agüera y Arcas,
//! "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
//! Algorithm 1) whose every average goes through the SecAgg+ engine of this crate, optionally
//! with client-level differential privacy ([`crate::dp`], DP-FedAvg).
//!
//! # One round
//!
//! 1. **Plan** ([`FedAvgServer::plan_round`]): the server samples clients with its own RNG —
//!    [`Sampling::Fraction`] (`max(⌈f·K⌉, 1)` of the `K` clients uniformly without
//!    replacement, as in McMahan et al.) or [`Sampling::Poisson`] (each independently with
//!    probability `q`, as DP-FedAvg's accountant assumes) — and fixes the round's
//!    [`SecAggConfig`]: a session id derived from the job's and the round number, `n` = the
//!    sampled count, `k` and `t` from [`AggregationConfig`]. A round with fewer sampled
//!    clients than `t` is skipped (the model stays as it is).
//! 2. **Local update** ([`local_update`], on each sampled client): `E` epochs of mini-batch SGD
//!    from the global model, then the delta `Δ_k = w_k − w`.
//!    * Without DP, the delta is pre-weighted by `n_k / N_max` (`N_max` =
//!      [`AggregationConfig::weight_rows_max`], a public bound on a client's row count) and
//!      the raw count `n_k` is appended as one more, unquantised, coordinate. The aggregator
//!      thus only learns `Σ n_k` over the round's survivors — inside the secure sum, like
//!      everything else — and no client's own count.
//!    * With DP, the delta is clipped to L2 norm `C`, gets its share of the distributed
//!      Gaussian noise, and is not weighted (uniform weights keep the sensitivity at `C`).
//!
//!    The vector is then clipped per coordinate to `[−c, c]` and quantised with stochastic
//!    rounding ([`Quantiser`]) into the ring.
//! 3. **Secure aggregation**: the clients and the aggregator run one SecAgg+ round
//!    ([`crate::transport::run_client`] / [`crate::transport::run_server`] in
//!    [`train_in_process`]); the aggregate is the sum over the survivors `U_3`.
//! 4. **Update** ([`FedAvgServer::finish_round`]): the sum is dequantised and averaged —
//!    `Σ (n_k/N_max) Δ_k · N_max / Σ n_k` without DP (FedAvg's `n_k`-weighted mean), or
//!    `Σ Δ_k / |U_3|` with DP — and added to the global model.
//!
//! **Dropouts**: a sampled client that goes silent during a round (at any stage SecAgg+
//! tolerates) is simply missing from that round's sum and from its count (`Σ n_k` or `|U_3|`),
//! so the average is over the survivors. If fewer than `t` survive, the round's aggregation
//! fails and training stops with [`TrainError::SecAgg`].
//!
//! **Privacy accounting**: with DP, after each round that is not skipped the server composes
//! one step of the sampled Gaussian mechanism at `q` = the Poisson probability, or `q = 1` for
//! [`Sampling::Fraction`] (fixed-size sampling is not claimed to amplify privacy here), and
//! reports `ε` at the configured `δ`. Skipped rounds release nothing and are not composed;
//! whether a Poisson round was skipped is visible and is not covered by the accountant, so
//! choose `q·K` well above `t`.

use std::collections::BTreeSet;

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::dp::{self, DpConfig, RdpAccountant};
use crate::error::TrainError;
use crate::model::{LocalTraining, Model, ModelKind};
use crate::quant::{Quantiser, Rounding};
use crate::server::Aggregate;
use crate::transport::{InProcessClient, in_process, run_client, run_server};
use crate::{Client, ClientId, FlError, Modulus, SecAggConfig};
use tessera_core::Link;

/// Most rounds in one run.
pub const ROUNDS_MAX: u32 = 100_000;

/// How the clients of a round are drawn (from the server's RNG).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// `max(⌈f·K⌉, 1)` of the `K` clients, uniformly without replacement; `f ∈ (0, 1]`.
    Fraction(f64),
    /// Each client independently with probability `q ∈ (0, 1]`.
    Poisson(f64),
}

/// The secure-aggregation and quantisation settings of every round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregationConfig {
    /// `k`: the share-group size, if a sparse (Harary) graph is wanted; used when it is odd,
    /// at least 3 and below a round's sampled count, else the round uses the complete graph.
    pub neighbours: Option<u32>,
    /// `t`: the reconstruction threshold (at least 2); rounds with fewer sampled clients are
    /// skipped, and at least `t` clients must survive every stage.
    pub threshold: u32,
    /// `c`: each coordinate sent is clipped to `[−c, c]` before quantisation.
    pub clip_range: f64,
    /// `r`: quantisation levels.
    pub levels: u64,
    /// The ring.
    pub modulus: Modulus,
    /// `N_max`: a public bound on a client's row count, used to pre-weight updates without DP
    /// (a client with more rows is refused).
    pub weight_rows_max: u64,
}

impl Default for AggregationConfig {
    /// Complete graph, `t = 2`, `c = 4`, `r = 2^32` levels in `Z_{2^64}`, `N_max = 10^6`.
    fn default() -> Self {
        AggregationConfig {
            neighbours: None,
            threshold: 2,
            clip_range: 4.0,
            levels: 1 << 32,
            modulus: Modulus::Pow64,
            weight_rows_max: 1_000_000,
        }
    }
}

/// A FedAvg run.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgConfig {
    /// The model trained.
    pub model: ModelKind,
    /// `R`: rounds (1 ..= [`ROUNDS_MAX`]).
    pub rounds: u32,
    /// `E`, `B`, `η` of each client's local training.
    pub local: LocalTraining,
    /// Client sampling.
    pub sampling: Sampling,
    /// Secure aggregation and quantisation.
    pub aggregation: AggregationConfig,
    /// Client-level DP, if wanted.
    pub dp: Option<DpConfig>,
    /// The job's public session id; each round's SecAgg session id is derived from it.
    pub session_id: [u8; 32],
}

impl FedAvgConfig {
    /// Checks every bound, including that the quantiser's range leaves room for the DP noise
    /// (`c ≥ C + 6·z·C/√t`) and that the ring holds a sum of `clients` inputs.
    pub fn validate(&self, clients: u32) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if !(1..=ROUNDS_MAX).contains(&self.rounds) {
            return bad(format!("rounds {} outside 1..={ROUNDS_MAX}", self.rounds));
        }
        self.local.validate()?;
        match self.sampling {
            Sampling::Fraction(f) | Sampling::Poisson(f) if !(f > 0.0 && f <= 1.0) => {
                return bad(format!("sampling {f} outside (0, 1]"));
            }
            _ => {}
        }
        let a = &self.aggregation;
        if a.threshold < 2 || a.neighbours.is_some_and(|k| k < a.threshold) {
            return bad(format!(
                "threshold {} must be at least 2 and at most the share-group size",
                a.threshold
            ));
        }
        if clients < a.threshold || clients > crate::CLIENTS_MAX {
            return bad(format!(
                "{clients} clients: need between the threshold {} and {}",
                a.threshold,
                crate::CLIENTS_MAX
            ));
        }
        self.quantiser()
            .check_headroom(clients, a.modulus)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        if self.dp.is_none()
            && (a.weight_rows_max == 0
                || u128::from(a.weight_rows_max) * u128::from(clients)
                    > u128::from(a.modulus.max_value()))
        {
            return bad(format!(
                "weight_rows_max {} × {clients} clients must be positive and fit the ring",
                a.weight_rows_max
            ));
        }
        if let Some(dp) = &self.dp {
            dp.validate()?;
            let need = dp.clip_norm + 6.0 * dp.client_sigma(a.threshold);
            if a.clip_range < need {
                return bad(format!(
                    "clip range {} is below C + 6σ = {need:.4}: noised coordinates would be clipped",
                    a.clip_range
                ));
            }
        }
        Ok(())
    }

    fn quantiser(&self) -> Quantiser {
        Quantiser {
            clip: self.aggregation.clip_range,
            levels: self.aggregation.levels,
            rounding: Rounding::Stochastic,
        }
    }
}

/// What the server decided for one round; sent (in a real deployment) to each sampled client
/// with the global parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlan {
    /// 0-based round number.
    pub round: u32,
    /// The sampled clients (indices into the population), sorted; the `j`-th of them is
    /// SecAgg client `j`.
    pub sampled: Vec<usize>,
    /// The round's secure-aggregation parameters; `None` if the round is skipped (fewer
    /// sampled clients than `t`).
    pub secagg: Option<SecAggConfig>,
}

/// The outcome of one round, as the server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// 0-based round number.
    pub round: u32,
    /// Clients sampled.
    pub sampled: usize,
    /// Clients whose update is in the sum (`|U_3|`); 0 if skipped.
    pub survivors: usize,
    /// Whether the round was skipped.
    pub skipped: bool,
    /// L2 norm of the averaged update applied.
    pub update_norm: f64,
}

/// The server of a FedAvg run: the global model, the round counter, the accountant.
#[derive(Debug, Clone)]
pub struct FedAvgServer {
    config: FedAvgConfig,
    clients: u32,
    model: Model,
    round: u32,
    accountant: Option<RdpAccountant>,
    reports: Vec<RoundReport>,
}

impl FedAvgServer {
    /// A server for `clients` clients with `features` inputs; the model is initialised from
    /// `rng`. Errors: [`TrainError::Config`].
    pub fn new<R: Rng + ?Sized>(
        config: FedAvgConfig,
        clients: u32,
        features: usize,
        rng: &mut R,
    ) -> Result<FedAvgServer, TrainError> {
        config.validate(clients)?;
        let model = Model::new(config.model, features, rng)?;
        let accountant = config.dp.map(|_| RdpAccountant::default());
        Ok(FedAvgServer {
            config,
            clients,
            model,
            round: 0,
            accountant,
            reports: Vec::new(),
        })
    }

    /// The global model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The run's configuration.
    pub fn config(&self) -> &FedAvgConfig {
        &self.config
    }

    /// Reports of the rounds finished so far.
    pub fn reports(&self) -> &[RoundReport] {
        &self.reports
    }

    /// `(ε, best Rényi order)` spent so far at the configured `δ`; `None` without DP.
    pub fn epsilon(&self) -> Option<(f64, u32)> {
        let dp = self.config.dp?;
        self.accountant.as_ref()?.epsilon(dp.delta).ok()
    }

    /// Whether every round has run.
    pub fn done(&self) -> bool {
        self.round >= self.config.rounds
    }

    /// Samples the next round's clients from `rng` and fixes its SecAgg parameters; `None`
    /// once every round has run.
    pub fn plan_round<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<RoundPlan> {
        if self.done() {
            return None;
        }
        let k = self.clients as usize;
        let mut sampled: Vec<usize> = match self.config.sampling {
            Sampling::Fraction(f) => {
                let m = ((f * k as f64).ceil() as usize).clamp(1, k);
                index::sample(rng, k, m).into_vec()
            }
            Sampling::Poisson(q) => (0..k).filter(|_| rng.gen_bool(q)).collect(),
        };
        sampled.sort_unstable();
        let secagg = round_secagg(
            &self.config,
            self.model.param_count(),
            self.round,
            sampled.len() as u32,
        );
        Some(RoundPlan {
            round: self.round,
            sampled,
            secagg,
        })
    }

    /// Closes `plan`'s round with its aggregate (`None` for a skipped round): dequantises,
    /// averages, updates the global model, composes the accountant. Errors:
    /// [`TrainError::Config`] for an aggregate that does not fit the plan,
    /// [`TrainError::NonFinite`].
    pub fn finish_round(
        &mut self,
        plan: &RoundPlan,
        aggregate: Option<&Aggregate>,
    ) -> Result<RoundReport, TrainError> {
        if plan.round != self.round {
            return Err(TrainError::Config(format!(
                "aggregate of round {} while at round {}",
                plan.round, self.round
            )));
        }
        let report = match (plan.secagg.as_ref(), aggregate) {
            (None, _) => RoundReport {
                round: self.round,
                sampled: plan.sampled.len(),
                survivors: 0,
                skipped: true,
                update_norm: 0.0,
            },
            (Some(cfg), Some(agg)) => self.apply(plan, cfg, agg)?,
            (Some(_), None) => {
                return Err(TrainError::Config(format!(
                    "round {} was not skipped but has no aggregate",
                    self.round
                )));
            }
        };
        self.round += 1;
        self.reports.push(report.clone());
        Ok(report)
    }

    fn apply(
        &mut self,
        plan: &RoundPlan,
        cfg: &SecAggConfig,
        agg: &Aggregate,
    ) -> Result<RoundReport, TrainError> {
        let p = self.model.param_count();
        let m = agg.survivors.len();
        if agg.sum.len() != cfg.dim as usize || m == 0 || m > plan.sampled.len() {
            return Err(TrainError::Config(format!(
                "aggregate of {} elements from {m} survivors for a round of dim {}",
                agg.sum.len(),
                cfg.dim
            )));
        }
        let q = self.config.quantiser();
        let (coords, count) = agg.sum.split_at(p);
        // Σ x_u = m · mean: the quantiser's dequantised mean, times the survivors.
        let sums: Vec<f64> = q
            .dequantise_mean(coords, m)
            .into_iter()
            .map(|v| v * m as f64)
            .collect();
        let denominator = match (self.config.dp, count.first()) {
            (None, Some(&n)) if n > 0 => n as f64 / self.config.aggregation.weight_rows_max as f64,
            (None, _) => {
                return Err(TrainError::Config(
                    "the round's survivors hold no rows".into(),
                ));
            }
            (Some(_), _) => m as f64,
        };
        let mean: Vec<f64> = sums.iter().map(|s| s / denominator).collect();
        let mut global = self.model.to_flat();
        global.iter_mut().zip(&mean).for_each(|(w, d)| *w += d);
        self.model.set_flat(&global)?;
        if let (Some(dp), Some(acc)) = (self.config.dp, self.accountant.as_mut()) {
            let q = match self.config.sampling {
                Sampling::Poisson(q) => q,
                Sampling::Fraction(_) => 1.0,
            };
            acc.compose(q, dp.noise_multiplier, 1)?;
        }
        Ok(RoundReport {
            round: plan.round,
            sampled: plan.sampled.len(),
            survivors: m,
            skipped: false,
            update_norm: mean.iter().map(|d| d * d).sum::<f64>().sqrt(),
        })
    }
}

/// The SecAgg parameters of round `round` with `n` clients of a model of `params`
/// parameters under `config` (`None`: fewer than `t` clients, the round is skipped): the
/// session id from [`round_session`], `dim = params` (+ 1 for the row count without DP), the
/// share-group size `k` when it is odd, at least 3 and below `n`, else the complete graph.
/// Both the aggregator and each provider derive it, so a provider can check what it is told.
pub fn round_secagg(
    config: &FedAvgConfig,
    params: usize,
    round: u32,
    n: u32,
) -> Option<SecAggConfig> {
    let a = &config.aggregation;
    (n >= a.threshold).then(|| SecAggConfig {
        session_id: round_session(&config.session_id, round),
        clients: n,
        dim: params as u32 + u32::from(config.dp.is_none()),
        neighbours: match a.neighbours {
            Some(k) if k >= 3 && k % 2 == 1 && k < n => k,
            _ => n,
        },
        threshold: a.threshold,
        modulus: a.modulus,
    })
}

/// The SecAgg session id of round `round` of the job `job`:
/// `SHA-256("tessera-fl fedavg round" ‖ job ‖ round as u32 big-endian)`.
pub fn round_session(job: &[u8; 32], round: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tessera-fl fedavg round");
    h.update(job);
    h.update(round.to_be_bytes());
    h.finalize().into()
}

/// One client's contribution to a round (runs on the client): trains a copy of `global` on
/// `data`, and returns the vector it inputs to secure aggregation (see the module docs).
/// Errors: [`TrainError::Config`] (a width mismatch, more rows than `N_max`, a plan without
/// aggregation), [`TrainError::NonFinite`] (diverged training).
pub fn local_update<R: RngCore + CryptoRng>(
    config: &FedAvgConfig,
    plan: &RoundPlan,
    global: &Model,
    data: &Dataset,
    rng: &mut R,
) -> Result<Vec<u64>, TrainError> {
    let secagg = plan
        .secagg
        .as_ref()
        .ok_or_else(|| TrainError::Config("a skipped round takes no update".into()))?;
    let mut local = global.clone();
    local.train(data, &config.local, rng)?;
    let mut delta: Vec<f64> = local
        .to_flat()
        .iter()
        .zip(global.to_flat())
        .map(|(l, g)| l - g)
        .collect();
    let rows = data.rows() as u64;
    match &config.dp {
        Some(dp) => {
            dp::clip_l2(&mut delta, dp.clip_norm);
            dp::add_gaussian(&mut delta, dp.client_sigma(secagg.threshold), rng)?;
        }
        None => {
            let cap = config.aggregation.weight_rows_max;
            if rows > cap {
                return Err(TrainError::Config(format!(
                    "{rows} rows exceed the weighting bound N_max = {cap}"
                )));
            }
            let w = rows as f64 / cap as f64;
            delta.iter_mut().for_each(|d| *d *= w);
        }
    }
    if delta.iter().any(|d| !d.is_finite()) {
        return Err(TrainError::NonFinite("update".into()));
    }
    let as_f32: Vec<f32> = delta.iter().map(|&d| d as f32).collect();
    let mut input = config
        .quantiser()
        .quantise(&as_f32, rng)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    if config.dp.is_none() {
        input.push(rows);
    }
    Ok(input)
}

/// A provider's data and RNG, for [`train_in_process`]. `Debug` shows the data's shape, never
/// the RNG's state (it seeds the provider's SecAgg keys).
pub struct LocalProvider {
    /// The provider's training rows.
    pub data: Dataset,
    /// Its RNG (local shuffling, noise, rounding, SecAgg keys).
    pub rng: ChaCha20Rng,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// Which `(round, client index)` pairs drop out in [`train_in_process`]: such a client trains
/// and shares its keys, then goes silent before sending its masked input — the dropout
/// SecAgg+ recovers from by reconstructing its mask key.
pub type Dropouts = BTreeSet<(u32, usize)>;

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainingReport {
    /// The final global model.
    pub model: Model,
    /// One report per round.
    pub rounds: Vec<RoundReport>,
    /// `(ε, best order)` at the configured `δ`, with DP.
    pub epsilon: Option<(f64, u32)>,
}

/// Runs a whole FedAvg training with every provider in this process: each round's clients and
/// the aggregator run the real SecAgg+ state machines over [`in_process`] channels, as
/// concurrent tokio tasks. `server_rng` initialises the model and samples the clients.
/// Errors: [`TrainError`].
pub async fn train_in_process(
    config: &FedAvgConfig,
    providers: &mut [LocalProvider],
    server_rng: &mut ChaCha20Rng,
    dropouts: &Dropouts,
) -> Result<TrainingReport, TrainError> {
    let features = providers
        .first()
        .map(|p| p.data.features())
        .ok_or_else(|| TrainError::Config("no providers".into()))?;
    let clients = u32::try_from(providers.len())
        .map_err(|_| TrainError::Config("too many providers".into()))?;
    let mut server = FedAvgServer::new(config.clone(), clients, features, server_rng)?;
    while let Some(plan) = server.plan_round(server_rng) {
        let aggregate = match &plan.secagg {
            Some(secagg) => Some(run_round(&server, &plan, secagg, providers, dropouts).await?),
            None => None,
        };
        server.finish_round(&plan, aggregate.as_ref())?;
    }
    Ok(TrainingReport {
        model: server.model().clone(),
        rounds: server.reports().to_vec(),
        epsilon: server.epsilon(),
    })
}

async fn run_round(
    server: &FedAvgServer,
    plan: &RoundPlan,
    secagg: &SecAggConfig,
    providers: &mut [LocalProvider],
    dropouts: &Dropouts,
) -> Result<Aggregate, TrainError> {
    let mut inputs = Vec::with_capacity(plan.sampled.len());
    for &who in &plan.sampled {
        let provider = providers
            .get_mut(who)
            .ok_or_else(|| TrainError::Config(format!("no provider {who}")))?;
        let input = local_update(
            server.config(),
            plan,
            server.model(),
            &provider.data,
            &mut provider.rng,
        )?;
        inputs.push(SumInput {
            input,
            rng: ChaCha20Rng::from_rng(&mut provider.rng)
                .map_err(|e| TrainError::Config(e.to_string()))?,
            drop_out: dropouts.contains(&(plan.round, who)),
        });
    }
    secure_sum_in_process(secagg, inputs, plan.round).await
}

/// One client's part in [`secure_sum_in_process`] (no `Debug`: it holds the client's RNG).
pub(crate) struct SumInput {
    /// Its vector (`dim` ring elements).
    pub(crate) input: Vec<u64>,
    /// Its RNG for the SecAgg+ keys and shares.
    pub(crate) rng: ChaCha20Rng,
    /// Whether it goes silent after sharing its keys.
    pub(crate) drop_out: bool,
}

/// One SecAgg+ round over [`in_process`] channels: the aggregator and each client (SecAgg id =
/// index in `clients`) as concurrent tokio tasks. `round` labels errors.
pub(crate) async fn secure_sum_in_process(
    secagg: &SecAggConfig,
    clients: Vec<SumInput>,
    round: u32,
) -> Result<Aggregate, TrainError> {
    let task_error = |e: tokio::task::JoinError| TrainError::Task {
        round,
        detail: e.to_string(),
    };
    let (agg_end, links) = in_process(secagg.clients, secagg.frame_bytes_max());
    let cfg = secagg.clone();
    let aggregator = tokio::spawn(async move { run_server(&agg_end, &cfg).await });
    let mut tasks = Vec::new();
    for ((j, c), link) in clients.into_iter().enumerate().zip(links) {
        let id = ClientId(j as u32);
        tasks.push(tokio::spawn(client_task(
            link,
            secagg.clone(),
            id,
            c.input,
            c.rng,
            c.drop_out,
        )));
    }
    let outcome = aggregator.await.map_err(task_error)?;
    for t in tasks {
        // A client's own failure shows in the aggregate (it is missing) or in the
        // aggregator's error; the aggregator's verdict decides the round.
        let _ = t.await.map_err(task_error)?;
    }
    let outcome = outcome.map_err(|source| TrainError::SecAgg { round, source })?;
    Ok(outcome.aggregate)
}

/// One sampled client's side of a round; with `drop_out` it advertises and shares its keys,
/// then goes silent (its link is dropped).
async fn client_task(
    link: InProcessClient,
    cfg: SecAggConfig,
    id: ClientId,
    input: Vec<u64>,
    mut rng: ChaCha20Rng,
    drop_out: bool,
) -> Result<(), FlError> {
    if !drop_out {
        return run_client(&link, &cfg, id, &input, &mut rng).await;
    }
    let (mut c, f) = Client::new(&cfg, id, &mut rng)?;
    link.send(f).await?;
    let f = link.recv().await?;
    link.send(c.share_keys(&f, &mut rng)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sampling: Sampling, neighbours: Option<u32>) -> FedAvgConfig {
        FedAvgConfig {
            model: ModelKind::Logistic,
            rounds: 3,
            local: LocalTraining {
                epochs: 1,
                batch_size: 8,
                learning_rate: 0.1,
            },
            sampling,
            aggregation: AggregationConfig {
                neighbours,
                threshold: 3,
                ..AggregationConfig::default()
            },
            dp: None,
            session_id: [1; 32],
        }
    }

    /// Fixed-fraction sampling draws `⌈f·K⌉` distinct clients; the graph is sparse only when
    /// `k` fits; each round has its own session id; the plan is a function of the seed.
    #[test]
    fn plans_sample_the_fraction_and_fix_the_round() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let cfg = config(Sampling::Fraction(0.25), Some(5));
        let mut server = FedAvgServer::new(cfg.clone(), 40, 6, &mut rng).expect("server");
        let plan = server.plan_round(&mut rng).expect("plan");
        assert_eq!(plan.sampled.len(), 10);
        assert!(plan.sampled.windows(2).all(|w| w[0] < w[1] && w[1] < 40));
        let sa = plan.secagg.clone().expect("aggregated");
        assert_eq!((sa.clients, sa.neighbours, sa.dim), (10, 5, 7 + 1));
        assert_eq!(sa.session_id, round_session(&cfg.session_id, 0));
        assert_ne!(
            round_session(&cfg.session_id, 0),
            round_session(&cfg.session_id, 1)
        );
        let mut again = ChaCha20Rng::seed_from_u64(4);
        let mut twin = FedAvgServer::new(cfg, 40, 6, &mut again).expect("server");
        assert_eq!(twin.plan_round(&mut again), Some(plan));

        let mut small = FedAvgServer::new(config(Sampling::Fraction(0.1), Some(5)), 4, 6, &mut rng)
            .expect("server");
        let skipped = small.plan_round(&mut rng).expect("plan");
        assert_eq!((skipped.sampled.len(), skipped.secagg.is_none()), (1, true));
        let report = small.finish_round(&skipped, None).expect("skip");
        assert!(report.skipped);
    }

    /// A provider's `Debug` shows the data's shape only: neither rows nor the RNG state.
    #[test]
    fn providers_do_not_print_rows_or_rng_state() {
        let data = Dataset::new(
            ndarray::array![[0.123_456, 7.0]],
            ndarray::Array1::from(vec![1.0]),
        )
        .expect("data");
        let p = LocalProvider {
            data,
            rng: ChaCha20Rng::seed_from_u64(6),
        };
        let shown = format!("{p:?}");
        assert!(
            shown.contains("rows: 1") && shown.contains("features: 2"),
            "{shown}"
        );
        assert!(
            !shown.contains("0.123") && !shown.contains("ChaCha"),
            "{shown}"
        );
    }

    /// An aggregate that does not fit the plan changes nothing and is a typed error.
    #[test]
    fn aggregates_that_do_not_fit_the_plan_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut server = FedAvgServer::new(config(Sampling::Fraction(1.0), None), 3, 2, &mut rng)
            .expect("server");
        let plan = server.plan_round(&mut rng).expect("plan");
        let before = server.model().clone();
        let agg = |sum: Vec<u64>, survivors: u32| Aggregate {
            sum,
            survivors: (0..survivors).map(ClientId).collect(),
            modulus: Modulus::Pow64,
        };
        for bad in [
            agg(vec![0; 3], 3),
            agg(vec![0; 4], 0),
            agg(vec![0; 4], 4),
            agg(vec![0; 4], 3),
        ] {
            assert!(
                matches!(
                    server.finish_round(&plan, Some(&bad)),
                    Err(TrainError::Config(_))
                ),
                "{bad:?}"
            );
            assert_eq!(server.model(), &before);
        }
        assert!(server.finish_round(&plan, None).is_err());
        let mut other = plan.clone();
        other.round = 1;
        assert!(
            server
                .finish_round(&other, Some(&agg(vec![0; 4], 3)))
                .is_err()
        );
        assert!(server.reports().is_empty());
    }
}
