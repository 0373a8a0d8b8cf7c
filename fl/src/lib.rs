//! Secure aggregation for federated learning: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint,
//! Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020,
//! §3–§4, Algorithm 2, semi-honest variant), itself the sparse-graph version of SecAgg
//! (Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
//! CCS 2017, §4, Figure 4 without the signatures of the malicious variant).
//!
//! `n` clients each hold a vector `x_u` of `dim` elements of `Z_{2^32}` or `Z_{2^64}`
//! ([`Modulus`]; real-valued vectors are mapped there by [`quant`]). An aggregator learns
//! `Σ_{u ∈ U_3} x_u` (mod `2^b`) over the clients `U_3` whose masked input reached it, and
//! nothing else, as long as at least `t` clients survive each stage.
//!
//! # Construction (one round, four stages)
//!
//! The communication graph ([`graph`]) gives each client `k − 1` neighbours `N(u)` (`k` =
//! [`SecAggConfig::neighbours`], Flower's `num_shares`; `k = n` is the complete graph of SecAgg).
//! Shares of a client's secrets go to its *shareholders* `N(u) ∪ {u}`; client `u` holds the
//! evaluation at `x = u + 1`.
//!
//! 0. **Advertise keys** (`U_1`): client `u` draws two X25519 pairs, `(c_pk, c_sk)` for share
//!    encryption and `(s_pk, s_sk)` for masks, and a 128-bit self-mask seed `b_u`; it sends
//!    `c_pk`, `s_pk` and `SHA-256(label ‖ session ‖ u ‖ b_u)`. The aggregator forwards to each
//!    client its neighbours' keys.
//! 1. **Share keys** (`U_2`): client `u` Shamir-shares ([`shamir`], threshold `t`, over the field
//!    of ristretto255 scalars) `b_u` and `s_sk_u` among its shareholders; each neighbour's
//!    share is encrypted with AES-128-GCM under HKDF-SHA256(X25519(c_sk_u, c_pk_v)) and sent via
//!    the aggregator, which forwards each client the shares addressed to it (its own share
//!    the client keeps).
//! 2. **Masked input** (`U_3`): client `u` sends
//!    `y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u) ∩ U_2} ±PRG(s_{u,v})` with `+` if `u < v` and `−`
//!    if `u > v`, `s_{u,v}` = HKDF-SHA256(X25519(s_sk_u, s_pk_v)) ([`keys`]), the PRG AES-128 in
//!    counter mode ([`prg`]). The aggregator adds the `y_u` as they arrive.
//! 3. **Unmasking** (`U_4`): the aggregator sends `U_3`; each client `u ∈ U_3` sends, for each
//!    client `v` whose shares it holds (itself and its neighbours in `U_2`), the share of `b_v` if `v ∈ U_3`, else
//!    the share of `s_sk_v` — **never both for the same client** (it answers once, and the
//!    partition is by membership of `U_3`). The aggregator reconstructs each `b_v` (`v ∈ U_3`)
//!    and each dropped `s_sk_v` (`v ∈ U_2 \ U_3`) from `t` shares, checks them against the
//!    advertised commitment and public key, and outputs
//!    `Σ y_u − Σ_{u ∈ U_3} PRG(b_u) ∓ Σ_{v dropped} Σ_{u ∈ N(v) ∩ U_3} PRG(s_{u,v})`.
//!
//! Dropouts are tolerated at every stage: a client that goes silent before sharing is left out
//! of its neighbours' masks; after sharing, its pairwise masks are removed with its
//! reconstructed `s_sk`; during unmasking, any `t` of each client's shareholders suffice.
//! Below `t` survivors at any stage, or fewer than `t` shares for one secret, the round fails
//! with [`FlError::TooManyDropouts`] / [`FlError::NotEnoughShares`].
//!
//! # Threat model and what each party learns
//!
//! * **Semi-honest aggregator**, and up to `t − 1` clients per shareholder group colluding
//!   with each other (or, in the complete graph, up to `t − 1` clients colluding with the
//!   aggregator, Bonawitz et al. Theorem 6.3; for the sparse graph, Bell et al. Theorem 3.6
//!   gives the bound on corrupt and dropped fractions for which `k` and `t` are chosen with
//!   high probability — this crate takes `k` and `t` as given and does not choose them).
//! * **The aggregator learns**: `n`, `dim`, `k`, `t`, the survivor sets `U_1 … U_4`, every
//!   client's public keys and seed commitment, ciphertexts it cannot open, the masked `y_u`
//!   (uniform given the others, because of `PRG(b_u)`), the reconstructed `b_u` of survivors and
//!   `s_sk_v` of dropped clients, and so the sum over `U_3`. It never holds an unmasked `x_u`:
//!   a test inspects every frame it received.
//! * **Each client learns**: its neighbours' public keys and commitments, shares of their
//!   secrets (fewer than `t` of any one reveal nothing), and `U_3`. Not the aggregate.
//! * **Not covered**: a malicious aggregator (it could tell clients different `U_3` and learn
//!   both secrets of one client; Bell et al.'s consistency check with signatures is not built),
//!   malicious clients (a client can add any vector; there is no input validation), and
//!   differential privacy of the sum (the sum is exact; [`dp`] adds noise before it).
//! * **Parameters**: 128-bit security (X25519, AES-128, SHA-256); the masks are AES-128-CTR
//!   streams of distinct keys, so `y_u` is pseudo-random under AES as a PRF.
//!
//! # Federated training on top: FedAvg, DP, data
//!
//! [`fedavg`] runs FedAvg (McMahan et al. AISTATS 2017) over [`model`]s (logistic regression,
//! a one-hidden-layer MLP, on `ndarray`) trained on each provider's table ([`data`], CSV or
//! Parquet), with every round's average computed by one SecAgg+ round of the engine above;
//! [`dp`] adds optional client-level differential privacy (DP-FedAvg, McMahan et al. ICLR
//! 2018) and a Rényi-DP accountant; [`moments`] computes the global mean and standard
//! deviation of the features through one secure-aggregation round, for the job to give every
//! provider as its standardisation.
//!
//! ## Threat model of training
//!
//! * **Semi-honest aggregator, up to `t − 1` colluding clients** (as above, per round: each
//!   round is an independent SecAgg+ session with its own keys and a session id derived from
//!   the job's and the round number, so nothing carries over between rounds).
//! * **The aggregator learns, per round**: who was sampled (it samples), the survivors
//!   `U_3`, and the sum over `U_3` of the quantised updates — without DP, the sum of the
//!   pre-weighted deltas `Σ (n_k/N_max)·Δ_k` and the total row count `Σ n_k` of the survivors
//!   (one extra coordinate of the secure sum; a single client's `n_k` is not revealed, but a
//!   round with two survivors and a colluding one reveals the other's, as any sum does); with
//!   DP, `Σ (clip(Δ_k) + noise_k)`. From these it computes the new global model, which it
//!   sends to the next round's clients. It never sees an individual update, a row or a count.
//!   If the job standardises through [`moments`], it also learns, once, the total row count and
//!   each feature's global sum and sum of squares (so the global mean and variance).
//! * **Each client learns** the global model of every round it takes part in (so, across
//!   rounds, the effect of the others' updates on it), plus what SecAgg+ shows a client.
//! * **What DP adds**: without DP the sum, and so the model, is exact and can reveal a lot
//!   about one client's data (an aggregate of two or three providers is close to each one's
//!   update). With DP, each update is clipped to L2 norm `C` and the clients add Gaussian
//!   noise so that every aggregate carries standard deviation at least `z·C`
//!   (each of at least `t` survivors adds `z·C/√t`; see [`dp`]): the sequence of global
//!   models is then `(ε, δ)`-DP with respect to adding or removing one client's whole
//!   dataset (client-level DP; updates are then averaged with uniform weights, not `n_k`),
//!   `ε` from the accountant — towards the aggregator and whoever receives the models. This
//!   assumes the clients add their noise honestly. A coalition of `c` clients knows its own
//!   noise (or omits it): what protects the others is the noise of the survivors outside it,
//!   so the guarantee holds in full while at least `t` survivors are outside the coalition,
//!   and with `z` shrunk by `√((m − c)/t)` for `m` survivors otherwise.
//! * **Not covered**: a malicious aggregator (as above; it could also send different models to
//!   different clients), malicious clients (model poisoning: a client can send any update
//!   within the quantiser's range), floating-point attacks on the Gaussian sampler, and the
//!   DP effect of a Poisson round skipped for having fewer than `t` sampled clients.
//!
//! # Shape of the code
//!
//! [`client::Client`] and [`server::Server`] are state machines over byte frames (no I/O, no
//! clock, RNG passed in); [`transport`] has the aggregator's N-party transport trait, an
//! in-process implementation on bounded channels, and async drivers that run either side over
//! a transport (clients use `tessera_core::Link`). Training: [`fedavg::FedAvgServer`] (plan a
//! round, finish it with its aggregate) and [`fedavg::local_update`] (a client's input) are
//! transport-free too; [`fedavg::train_in_process`] and [`moments::secure_moments_in_process`]
//! run every party in one process over [`transport::in_process`].

#![forbid(unsafe_code)]

pub mod client;
pub mod data;
pub mod dp;
mod error;
pub mod fedavg;
pub mod federation;
pub mod graph;
pub mod keys;
pub mod model;
pub mod moments;
pub mod prg;
pub mod quant;
pub mod server;
mod shamir;
pub mod transport;
pub mod wire;

pub use client::Client;
pub use error::{FlError, Peer, TrainError};
pub use server::{Aggregate, Server, ServerStep};

/// Most clients in one session.
pub const CLIENTS_MAX: u32 = 10_000;
/// Most elements in one vector (2^24).
pub const DIM_MAX: u32 = 1 << 24;

/// A client's index in the session, `0 .. clients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u32);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The ring of the aggregation: arithmetic modulo `2^32` or `2^64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modulus {
    /// `Z_{2^32}`: 4 bytes per element on the wire.
    Pow32,
    /// `Z_{2^64}`: 8 bytes per element on the wire.
    Pow64,
}

impl Modulus {
    /// Bytes per element.
    pub fn word_bytes(self) -> u8 {
        match self {
            Modulus::Pow32 => 4,
            Modulus::Pow64 => 8,
        }
    }
    /// The largest element, `2^b − 1`.
    pub fn max_value(self) -> u64 {
        match self {
            Modulus::Pow32 => u64::from(u32::MAX),
            Modulus::Pow64 => u64::MAX,
        }
    }
}

/// The stages of one aggregation round (Bell et al. Alg. 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Round 0: clients advertise their public keys (`U_1`).
    AdvertiseKeys,
    /// Round 1: clients send encrypted shares (`U_2`).
    ShareKeys,
    /// Round 2: clients send masked inputs (`U_3`).
    MaskedInput,
    /// Round 3: clients send shares for unmasking (`U_4`).
    Unmask,
    /// The round is over.
    Done,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::AdvertiseKeys => "advertise_keys",
            Stage::ShareKeys => "share_keys",
            Stage::MaskedInput => "masked_input",
            Stage::Unmask => "unmask",
            Stage::Done => "done",
        })
    }
}

/// The public parameters of one aggregation round, known to every party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecAggConfig {
    /// Public, unique per round: seeds the graph and domain-separates every derived key.
    pub session_id: [u8; 32],
    /// `n`, clients `0 .. n` (2 ..= [`CLIENTS_MAX`]).
    pub clients: u32,
    /// Elements per vector (1 ..= [`DIM_MAX`]).
    pub dim: u32,
    /// `k`: the size of each client's share group, itself included (Flower's `num_shares`):
    /// `k − 1` neighbours. Either `n`, or odd with `3 ≤ k < n`.
    pub neighbours: u32,
    /// `t`: shares needed to reconstruct a secret, `2 ≤ t ≤ k`; also the fewest clients that
    /// must survive every stage.
    pub threshold: u32,
    /// The ring.
    pub modulus: Modulus,
}

impl SecAggConfig {
    /// Checks the bounds above; [`FlError::Config`] names the first one broken.
    pub fn validate(&self) -> Result<(), FlError> {
        let c = |m: String| Err(FlError::Config(m));
        if !(2..=CLIENTS_MAX).contains(&self.clients) {
            return c(format!(
                "clients {} outside 2..={CLIENTS_MAX}",
                self.clients
            ));
        }
        if !(1..=DIM_MAX).contains(&self.dim) {
            return c(format!("dim {} outside 1..={DIM_MAX}", self.dim));
        }
        let k = self.neighbours;
        if k != self.clients && !(k >= 3 && k < self.clients && k % 2 == 1) {
            return c(format!(
                "neighbours {k}: must be the number of clients ({}) or odd in 3..{}",
                self.clients, self.clients
            ));
        }
        if !(2..=k).contains(&self.threshold) {
            return c(format!("threshold {} outside 2..={k}", self.threshold));
        }
        Ok(())
    }

    /// The largest frame any party sends in this session, in bytes (the masked input).
    pub fn frame_bytes_max(&self) -> usize {
        let masked =
            wire::MASKED_HEADER_BYTES + self.dim as usize * usize::from(self.modulus.word_bytes());
        let k = self.neighbours as usize;
        let shares = 2 + 8 + k * (4 + wire::SHARE_CT_BYTES);
        let unmask = 2 + 8 + k * (5 + 64);
        let keys = 2 + 4 + k * wire::KEYS_BYTES;
        let request = 2 + 4 + 4 * self.clients as usize;
        masked.max(shares).max(unmask).max(keys).max(request)
    }
}
