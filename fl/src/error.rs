//! [`FlError`]: every way a secure-aggregation round can fail, one variant per failure.
//!
//! Bytes from a peer never panic: every malformed, oversized, duplicate or misaddressed frame is
//! one of these variants, and the state machine that refused it is left unchanged.

use crate::{ClientId, Stage};

/// Why a secure-aggregation step failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FlError {
    /// The configuration is outside the supported bounds or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Fewer clients survived a stage than the reconstruction threshold: the aggregate cannot
    /// be computed (Bell et al. CCS 2020, Alg. 2: every round aborts below `t`).
    #[error(
        "too many dropouts at stage {stage}: {survivors} clients survived, threshold is {threshold}"
    )]
    TooManyDropouts {
        /// The stage whose survivors were counted.
        stage: Stage,
        /// How many clients survived it.
        survivors: usize,
        /// The reconstruction threshold `t`.
        threshold: usize,
    },
    /// Fewer than `t` of a client's shareholders answered the unmasking round, so its self-mask
    /// seed (a survivor) or its mask key (a dropped client) cannot be reconstructed.
    #[error(
        "too many dropouts among the shareholders of client {owner}: {shares} shares arrived, threshold is {threshold}"
    )]
    NotEnoughShares {
        /// The client whose secret is missing.
        owner: ClientId,
        /// Shares that arrived.
        shares: usize,
        /// The reconstruction threshold `t`.
        threshold: usize,
    },
    /// A frame could not be parsed (truncated, trailing bytes, unknown kind or version, a value
    /// out of range, a field that contradicts the protocol).
    #[error("malformed message from {from}: {reason}")]
    MalformedMessage {
        /// Who sent it (`None`: the aggregator).
        from: Peer,
        /// What was wrong.
        reason: String,
    },
    /// A frame of a kind that does not belong to the current stage.
    #[error("unexpected message of kind {kind} from {from} at stage {stage}")]
    UnexpectedMessage {
        /// Who sent it.
        from: Peer,
        /// The frame's kind byte.
        kind: u8,
        /// The receiver's stage.
        stage: Stage,
    },
    /// A client id outside `0..clients`, or a client that is not part of the current stage
    /// (it did not survive an earlier one).
    #[error("unknown client {0}")]
    UnknownClient(ClientId),
    /// A second message from the same client in one stage.
    #[error("duplicate message from client {0} in one stage")]
    DuplicateClient(ClientId),
    /// A frame whose claimed sender differs from the sender the transport authenticated.
    #[error("client {claimed} claims to be sent by another id; the transport says {actual}")]
    IdMismatch {
        /// The id inside the frame.
        claimed: ClientId,
        /// The id the transport authenticated.
        actual: ClientId,
    },
    /// A vector whose length is not the configured `dim`.
    #[error("inconsistent vector length: expected {expected}, got {actual}")]
    InconsistentLength {
        /// The configured dimension.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// An input element not below the modulus, or an input that cannot be quantised.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An encrypted share did not decrypt (wrong key, tampered ciphertext or wrong addressee).
    #[error("share from client {from} to client {to} did not decrypt")]
    ShareDecryption {
        /// The share's author.
        from: ClientId,
        /// Its addressee.
        to: ClientId,
    },
    /// A reconstructed secret does not match the commitment its owner advertised (a corrupted
    /// share, or shares from different dealings).
    #[error("reconstructed secret of client {0} does not match its advertised commitment")]
    ShareMismatch(ClientId),
    /// The transport failed (peer gone, frame too large, closed).
    #[error("transport: {0}")]
    Transport(String),
}

/// Who sent a frame, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The aggregator.
    Aggregator,
    /// A client.
    Client(ClientId),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Aggregator => f.write_str("the aggregator"),
            Peer::Client(id) => write!(f, "client {id}"),
        }
    }
}

impl From<tessera_core::LinkError> for FlError {
    fn from(e: tessera_core::LinkError) -> Self {
        FlError::Transport(e.to_string())
    }
}

/// Why federated training failed. One variant per failure.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TrainError {
    /// A training, model, DP or aggregation setting is out of bounds or inconsistent.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A value that must be finite is not (diverged training, a corrupt parameter vector).
    #[error("non-finite values: {0}")]
    NonFinite(String),
    /// A provider's table could not be read.
    #[error("data: {0}")]
    Data(#[from] crate::data::DataError),
    /// The secure aggregation of a round failed (too many dropouts, a transport failure…).
    #[error("round {round}: secure aggregation failed: {source}")]
    SecAgg {
        /// The round (0-based).
        round: u32,
        /// The engine's error.
        source: FlError,
    },
    /// A frame of the federation protocol ([`crate::federation`]) from the other party is
    /// malformed, out of turn or inconsistent with the job's configuration.
    #[error("federation protocol: {0}")]
    Protocol(String),
    /// The provider's release gate stayed closed (its job's delivery could not be recorded):
    /// it stopped before its first unmasking shares ([`crate::federation::ReleaseGate`]).
    #[error("the delivery could not be recorded; the provider stopped before releasing")]
    Released,
    /// The link to the other party failed ([`crate::federation`]).
    #[error("link: {0}")]
    Link(#[from] tessera_core::LinkError),
    /// A client or aggregator task of the in-process driver panicked or was cancelled.
    #[error("round {round}: task failed: {detail}")]
    Task {
        /// The round (0-based).
        round: u32,
        /// What happened.
        detail: String,
    },
}
