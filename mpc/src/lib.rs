//! Two-party secure computation by additive secret sharing over the ring `Z_2^64`, with
//! fixed-point encoding of reals, written against [`tessera_core::Link`].
//!
//! A secret `x ∈ Z_2^64` is held as two shares `x = x0 + x1 (mod 2^64)`, party 0 holding `x0`
//! and party 1 holding `x1` ([`Shares`]; each share alone is uniformly random). Reals are
//! encoded as fixed-point ring elements `⌊x · 2^f⌉` in two's complement ([`FixedPoint`], `f`
//! fractional bits, configurable). Additions and multiplications by public constants are local;
//! products of two secrets use Beaver triples (Beaver, "Efficient Multiparty Protocols Using
//! Circuit Randomization", CRYPTO 1991), followed by SecureML's local probabilistic truncation
//! (Mohassel–Zhang, "SecureML", S&P 2017, §4.1, Theorem 1) for fixed-point products.
//!
//! Every operation is **vectorised**: one call works on a whole vector, and each layer of
//! multiplications is one message each way (possibly split into several frames by the link's
//! bound), never one per element. [`Session`] holds one party's view: its link to the peer, its
//! fixed-point format, its source of correlated randomness and its RNG.
//!
//! Modules:
//! * [`fixed`]: the fixed-point encoding.
//! * [`wire`]: MPC frames (kinds `0x50..=0x5F`), on the OT crate's bounded frame format.
//! * [`triples`]: correlated randomness ([`TripleSource`]): (a) a **dealer** that expands both
//!   parties' Beaver triples from seeds ([`triples::run_dealer`], [`triples::DealerClient`]);
//!   (b) **dealer-free** triples between the two parties ([`triples::OtTriples`]): Beaver
//!   triples from RLWE oblivious linear evaluation ([`rlwe`], the default) or from SoftSpoken
//!   OT extension with Gilboa's multiplication; AND triples from SoftSpoken OT.
//! * [`rlwe`]: the RLWE schemes of the dealer-free source: slot-wise products for Beaver
//!   triples, and inner products computed directly on the shares ([`Session::dot`]).
//! * [`session`]: the operations (input sharing, reveal, add, mul, matmul, truncation, sum,
//!   mean, variance, one-hot histogram and group-by sums).
//! * [`compare`]: the sign bit (MSB) by a carry tree over boolean shares with AND triples, and
//!   what is built on it: comparison, ReLU, the piecewise-linear sigmoid, reciprocal and
//!   division by Newton–Raphson.
//! * [`query`]: a small statistics language (`SELECT count(*), mean(provider.x) … WHERE
//!   buyer.… GROUP BY buyer.…`): parser, semantic check, secure evaluation with output
//!   controls ([`query::OutputPolicy`]), the result opened to the buyer only.
//! * [`lr`]: logistic-regression training on vertically partitioned data (SecureML-style
//!   mini-batch gradient descent), the model opened to one named party or kept shared.
//!
//! # Threat model
//!
//! **Semi-honest, two parties**: both follow the protocol and may try to learn more from what
//! they see. Nothing here is secure against a malicious party (no MACs on shares: a cheating
//! party can add errors to any result undetected, SPDZ-style checks are not built).
//!
//! * **What a party sees.** Its own shares (uniform), the masked openings of Beaver
//!   multiplication `x − a`, `y − b` (uniform, since `a`, `b` are uniform and unknown to it),
//!   masked AND openings (uniform bits), and the correlated-randomness messages of the source
//!   (see below). So a party learns nothing of the other's inputs beyond what the revealed
//!   outputs imply, and the lengths of all vectors (shapes are public).
//! * **What each output reveals.** Only what [`Session::reveal`] opens (the value itself, to
//!   both parties) or [`Session::reveal_to`] opens (to one party; the other only sends its
//!   shares). Intermediate values (comparison bits, one-hot encodings, per-group sums) stay
//!   shared unless the caller reveals them. A revealed mean reveals the sum (n is public); a
//!   revealed histogram reveals the count of every category; a revealed group-by sum reveals
//!   the sum per category, which for a category of count 1 is that row's value.
//! * **Output controls** exist in [`query`] only ([`query::OutputPolicy`]), and are enforced
//!   inside the computation: with a minimum group size `k`, each group's secret count is
//!   compared with `max(k, 1)` in MPC and every output of the group multiplied by the secret
//!   bit before the single reveal, so a suppressed group opens as exact zeros and the buyer
//!   learns of it only that one bit; `aggregates_only` makes each party refuse a row-level
//!   plan before sending anything. Both parties compare a digest of the plan (query, schema,
//!   policy, roles, format) first, so a buyer cannot run the provider's data under another
//!   policy (in the semi-honest model; a malicious buyer could still deviate inside the
//!   protocol). A minimum group size does not stop differencing attacks across several
//!   queries (two overlapping `WHERE`s whose difference is one row); no noise is added.
//!   [`lr`] opens the model to the one party named, or not at all; a model kept shared is
//!   then used by [`lr::predict_shared`], whose probabilities the caller opens (a scoring job
//!   opens one per row to the buyer: with the logit linear in the features, enough of them
//!   reveal the weights of the buyer's own features, and per row what the provider's add).
//! * **The dealer** ([`triples::run_dealer`]) is a third party that generates every Beaver and
//!   AND triple and therefore knows both parties' triple shares. It learns nothing of the inputs
//!   by itself (it sees no opening), but **it must not collude with either party**: a party
//!   that gets the other's triple shares from the dealer can unmask every opening `x − a` and
//!   learn the other party's shares, i.e. all inputs. It learns the number and shapes of the
//!   triples (hence the shape of the computation). Party 0 receives only a 32-byte seed per
//!   batch, party 1 a seed and one correction vector. In `mpc` jobs the operator is the dealer
//!   (`tessera_scheduler::dealer`), when the licence's scene allows `dealer`.
//! * **Dealer-free triples** ([`triples::OtTriples`]) need no third party: the two parties run
//!   SoftSpoken OT extension (semi-honest, [`tessera_ot::softspoken`]) for AND triples and,
//!   for Beaver triples and inner products, RLWE oblivious linear evaluation ([`rlwe`]): each
//!   sees the other's RLWE ciphertexts and public keys (IND-CPA under decision-RLWE, `N = 8192`,
//!   `q` of 186 or 216 bits, within the HE Standard's 128-bit bounds) and the decryptions of
//!   the answers to its own ciphertexts, which are its products with the peer's values plus a
//!   mask the peer keeps (statistically hiding, `2^−41`), the answers re-randomised under its
//!   public key and their noise flooded (`2^−41` per ciphertext) so that they reveal nothing
//!   else of the peer's values. With [`ArithMethod::Gilboa`] the Beaver triples come from
//!   Gilboa's multiplication over the same OT extension instead: each party sees only the
//!   other's OT-extension corrections (pseudorandom) and masked Gilboa corrections.
//! * **Truncation** is SecureML's local one: it is correct only up to a failure probability
//!   per element (see [`session::Session::truncate`]) and otherwise off by at most one unit in
//!   the last place; failures are silent (a large error), as in SecureML and SPU's SEMI2K.
//!
//! Every frame from the peer or the dealer is parsed with explicit bounds: a malformed,
//! truncated, oversize or unexpected frame is an [`MpcError`], never a panic. A session whose
//! call failed half-way refuses further calls ([`MpcError::OutOfStep`]).
//!
//! # Bounds
//!
//! At most [`ELEMENTS_MAX`] elements per vector argument and per triple request, and at most
//! [`MATMUL_PRODUCTS_MAX`] scalar products per matrix product; frames are those of the link.

pub mod compare;
pub mod fixed;
pub mod lr;
pub mod query;
pub mod rlwe;
pub mod session;
pub mod triples;
pub mod wire;

pub use fixed::FixedPoint;
pub use session::{ReleaseGate, Session};
pub use tessera_core::LinkError;
pub use triples::{ArithMethod, DealerClient, OtTriples, TripleSource};

use tessera_ot::OtError;

/// The most elements one vector argument, opening or triple request may have (2^24).
pub const ELEMENTS_MAX: usize = 1 << 24;
/// The most scalar products (`m · k · n`) one matrix product may need (2^28).
pub const MATMUL_PRODUCTS_MAX: usize = 1 << 28;

/// Why an MPC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MpcError {
    /// The link to the peer (or the dealer) failed: gone, oversize frame, timeout, transport.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The peer (or the dealer) sent a frame this protocol does not allow: wrong kind, wrong
    /// length, a count past what was expected. The text names what was expected, no secret.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The session's release gate ([`Session::set_release_gate`]) did not let an output to
    /// the peer leave (its delivery could not be recorded); nothing of it was sent.
    #[error("the output was not released to the peer: its delivery could not be recorded")]
    NotReleased,
    /// The peer (or the dealer) sent an abort frame with this reason code.
    #[error("the peer aborted (reason code {0})")]
    PeerAborted(u8),
    /// Two vector arguments that must have the same length (or a vector and its stated shape)
    /// do not.
    #[error("length mismatch: {left} and {right}")]
    LengthMismatch {
        /// The first length.
        left: usize,
        /// The second length.
        right: usize,
    },
    /// An argument is out of bounds: too many elements, a value outside the fixed-point range,
    /// a category index past the number of categories, a shape too large.
    #[error("out of bounds: {0}")]
    Bounds(String),
    /// An earlier call of this session failed half-way: the two parties (or the triple
    /// source) are out of step. Start a new session.
    #[error("an earlier call failed; the session is out of step")]
    OutOfStep,
}

impl From<OtError> for MpcError {
    fn from(e: OtError) -> Self {
        match e {
            OtError::Link(l) => MpcError::Link(l),
            OtError::Protocol(s) => MpcError::Malformed(s),
            OtError::PeerAborted(c) => MpcError::PeerAborted(c),
            OtError::InvalidArgument(s) => MpcError::Bounds(s),
        }
    }
}

/// Which of the two parties a session plays. Party 0 adds the public terms (e.g. `d · e` of
/// Beaver's multiplication) and is the OT-extension sender in the first of the two OT extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// Party 0.
    P0,
    /// Party 1.
    P1,
}

impl Party {
    /// The other party.
    pub fn other(self) -> Party {
        match self {
            Party::P0 => Party::P1,
            Party::P1 => Party::P0,
        }
    }
}

/// One party's additive shares of a vector over `Z_2^64` (wrapping `u64`). Its `Debug` shows
/// only the length: a share is secret (with the other share it gives the value).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Shares(pub(crate) Vec<u64>);

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shares(len {})", self.0.len())
    }
}

impl Drop for Shares {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Shares {
    /// Wraps raw share words (for callers that hold shares made elsewhere, and tests).
    pub fn from_words(words: Vec<u64>) -> Self {
        Shares(words)
    }
    /// The raw share words (secret: never log them).
    pub fn words(&self) -> &[u64] {
        &self.0
    }
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Checks that a vector length is within [`ELEMENTS_MAX`].
pub(crate) fn check_len(n: usize) -> Result<(), MpcError> {
    if n > ELEMENTS_MAX {
        return Err(MpcError::Bounds(format!(
            "{n} elements, at most {ELEMENTS_MAX} per call"
        )));
    }
    Ok(())
}

/// Checks that two lengths agree.
pub(crate) fn same_len(left: usize, right: usize) -> Result<(), MpcError> {
    if left != right {
        return Err(MpcError::LengthMismatch { left, right });
    }
    Ok(())
}
