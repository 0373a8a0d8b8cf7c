//! Two-party private set intersection (PSI), written against [`tessera_core::Link`].
//!
//! Two roles take part: the **receiver** (the data buyer) learns the intersection of the two key
//! sets ([`Mode::Intersection`]) or only its size ([`Mode::SizeOnly`]); the **sender** (the data
//! provider) learns only the size of the receiver's set. Entry points: [`run_receiver`] and
//! [`run_sender`] (or [`run_sender_reporting_delivery`]); [`PsiConfig::protocol`] picks one of
//! the protocols, which both parties must agree on (their `Hello` says which):
//!
//! * [`Protocol::Rr22`] (the default for [`Mode::Intersection`]): VOLE-based PSI after
//!   Raghuraman–Rindal, "Blazing Fast PSI from Improved OKVS and Subfield VOLE" (CCS 2022):
//!   symmetric-key work only after a few hundred base OTs, about `16 · (1.1·n_r + n_s)` bytes on
//!   the wire plus the VOLE's. Its receiver learns *which* of its keys are common, so it cannot
//!   run in [`Mode::SizeOnly`]. Threat model and message flow: module [`rr22`].
//! * [`Protocol::Ecdh`]: Diffie–Hellman over ristretto255, below. Four scalar multiplications
//!   per pair of items, slower by an order of magnitude, but its messages are the smallest for
//!   unbalanced sets and it supports [`Mode::SizeOnly`] (the default protocol for it).
//! * [`Protocol::EcdhOprf`]: PSI for unbalanced sets through module [`ecdh_oprf`] and its own
//!   entry points: the larger party's set is encoded once under an OPRF key and reused across
//!   runs, so the smaller party pays for its own set only. A small receiver either receives
//!   the larger set's encodings once (and keeps them) or looks its values up in the sender's
//!   prepared index under homomorphic encryption (module [`oprf_query`]: about 3 MB plus under a byte
//!   per sender item). [`Mode::Intersection`] only; its threat model, direction and what each
//!   party learns are in those modules.
//!
//! The first two run the same delivery point (record before release, below) and answer the
//! same [`ReceiverOutput`] and [`SenderOutput`].
//!
//! Sets larger than memory run through module [`bucket`]: both parties split their rows into
//! the same buckets by a keyed hash, spill them to disk and run one PSI per bucket (either
//! protocol, with or without payload); its header says what the per-bucket sizes add to what
//! each party learns.
//!
//! # ECDH: threat model
//!
//! * **Semi-honest (honest-but-curious) parties.** Each party follows the protocol but may try to
//!   learn more from what it sees. Under the decisional Diffie–Hellman assumption in the
//!   ristretto255 group, with the hash-to-group function modelled as a random oracle, neither party
//!   learns more than listed below. With only two parties there is no third party whose
//!   non-collusion must be assumed.
//! * **Not secure against a malicious party.** A party that deviates from the protocol can:
//!   - as receiver, blind chosen or guessed keys (up to the announced size, at most
//!     [`SET_ITEMS_MAX`]) and so test each of them for membership in the sender's set; this is
//!     inherent to PSI, where nothing bounds what a party claims as its input;
//!   - as receiver in [`Mode::SizeOnly`], blind each of its items with a *different* exponent
//!     (`H(x_i)^{a·r_i}`) instead of one key; the sender cannot tell, and the receiver can then
//!     undo the sender's shuffle by trial exponentiation and learn the full intersection, not
//!     just its size. Size-only mode therefore hides which keys matched only from a
//!     semi-honest receiver;
//!   - as sender, make the receiver's output wrong: return the doubly-blinded values in another
//!     order (attributing membership to the wrong keys), drop or replace values (hiding
//!     members), release a wrong key (hiding every member), or add points for keys it does not
//!     hold. It learns nothing more about the
//!     receiver's keys this way: all it ever sees from the receiver are pseudo-random group
//!     elements (under DDH) and it never receives the receiver's output;
//!   - either side can abort at any point, or announce a set size other than its real one.
//!
//!   Malformed frames, bad point encodings, identity points, wrong counts and oversize frames are
//!   rejected with [`PsiError::Protocol`] (or a [`tessera_core::LinkError`]) and never panic.
//!
//! # ECDH: what each party learns
//!
//! * Both: the protocol version, the mode, the other party's *distinct* set size (duplicates are
//!   removed locally first, so they neither leak nor double count) and its batch size.
//! * Receiver: in [`Mode::Intersection`] which of its distinct keys are in the sender's set
//!   (reported as [`ReceiverOutput::intersection`], indices of first occurrences); in
//!   [`Mode::SizeOnly`] only the number of common distinct keys. The sender's values arrive
//!   shuffled, and in size-only mode the receiver's own doubly-blinded values come back shuffled
//!   as well, so the receiver cannot tell *which* of its keys matched.
//! * Sender: only the receiver's distinct set size. It sees the receiver's items only as
//!   pseudo-random group elements and learns neither the intersection nor its size.
//!
//! # ECDH: primitives
//!
//! * Hash to group: `H(x) = RistrettoPoint::from_hash(SHA-512(HASH_DOMAIN || x))`, i.e. the
//!   RFC 9496 one-way map (two Elligator maps of 32-byte halves, added) applied to a 64-byte
//!   SHA-512 output. [`HASH_DOMAIN`] (`b"tessera-psi-v1\0"`) separates these hashes from any other
//!   use of SHA-512 on the same keys; it has a fixed length, so the encoding is unambiguous.
//! * Each party draws a secret non-zero scalar (`a` for the receiver, `b` for the sender) from the
//!   caller's RNG. It lives in a wrapper that zeroizes it on drop and prints as `<redacted>`.
//! * On the wire points are 32-byte compressed Ristretto encodings; decoding rejects non-canonical
//!   encodings and the identity.
//! * The sender also draws a 128-bit **release key** `k` and sends each doubly-blinded value as
//!   `AES-128_k(trunc(v))` (one AES block), revealing `k` only in its last frame. Modelling
//!   AES-128 as a pseudo-random permutation, a receiver without `k` can compare none of the
//!   values it holds with its own: it learns nothing about the intersection, not even a bound on
//!   its size, until the release. The key is zeroized on drop and prints as `<redacted>`.
//! * Doubly-blinded values, used only for equality tests, are truncated to
//!   [`DOUBLE_BLINDED_BYTES`] = 16 bytes (the first 16 bytes of the canonical encoding, which
//!   carry 127 free bits, since the lowest bit of a canonical encoding is always 0). Treating
//!   that prefix as uniform, for distinct sets of sizes `n_r` and `n_s` the probability that any
//!   receiver value falsely matches a sender value is at most `n_r · n_s / 2^127`: below 2^-95
//!   at 2^16 items per side and below 2^-75 at the bound of 5·10^7 items per side. The
//!   32-byte points of step 2 are never truncated.
//!
//! # ECDH: message flow
//!
//! Every frame starts with a one-byte kind; batches continue with a little-endian `u32` item
//! count and exactly that many fixed-width items.
//!
//! 1. Both → both: `Hello` (magic, protocol version, role, mode, distinct set size, batch size).
//!    Each side checks version, complementary roles, equal modes, and that the peer's set size is
//!    at most [`SET_ITEMS_MAX`] and its batch size at most [`BATCH_ITEMS_LIMIT`], before
//!    allocating anything for the peer's data.
//! 2. Receiver → sender: `Points` batches of `H(x)^a` for its distinct keys, in order.
//!    Concurrently, sender → receiver: `Points` batches of `H(y)^b` for its distinct keys, in an
//!    order shuffled with the caller's RNG.
//! 3. Sender → receiver: `Values` batches of `AES-128_k(trunc(H(x)^ab))`: per received batch
//!    and in the received order in intersection mode; in size-only mode all of them are first
//!    collected and shuffled, then sent.
//! 4. Sender, once all its points and values are on the link: has the delivery recorded (see
//!    below), then sends `Release` with `k`, its last frame.
//! 5. Receiver: computes `trunc(H(y)^ba)` for the sender's points; once it has every frame and
//!    `k`, sends `Done`, applies the permutation to the smaller of the two value sets
//!    (decrypting its own values or encrypting the sender's) and matches them (sort + binary
//!    search).
//! 6. Sender waits for `Done`, so that it never hangs up while frames are still in flight.
//!
//! **Delivery point** (what the operator bills on), record before release: when every frame
//! but `Release` is on the link, the sender asks its caller's [`DeliveryGate`] to record the
//! delivery durably ([`run_sender_reporting_delivery`]) and sends `Release` only if that
//! succeeded; otherwise it aborts. The release is all or nothing: before it the receiver can
//! match nothing (not even part of the intersection from early batches, nor a lower bound on
//! its size), after it everything. So a receiver that learns anything always has a recorded
//! delivery, whatever happens next (it withholds `Done`, it is killed, the operator is down),
//! and the run is consumed and charged (`tessera_accounting::settle::delivered_job`). One
//! residue, documented rather than solved (fair exchange without a trusted third party is
//! impossible in general): a `Release` frame lost in the instant after it is handed to the link
//! leaves a charged job without a result (the audit chain shows the failure after delivery).
//!
//! On a local failure a party sends a best-effort `Abort` frame with a reason code (given up
//! after a few polls if the link does not accept it, so a full queue cannot hang us), so that
//! the peer stops with [`PsiError::PeerAborted`] instead of waiting; it carries no data.
//!
//! # ECDH: bounds and performance
//!
//! * Items per batch: `min(PsiConfig::batch_items_max, (link.frame_bytes_max() - 5) / 32)`, and
//!   at most [`BATCH_ITEMS_LIMIT`]. So every frame is at most `link.frame_bytes_max()` bytes and
//!   carries at most `batch_items_max` items; nothing is ever sent as one message per set. A
//!   received batch must be non-empty, exactly the announced length, and may not bring the total
//!   above the announced set size.
//! * Own input: at most [`SET_ITEMS_MAX`] items of at most [`ITEM_BYTES_MAX`] bytes.
//! * The release key costs one AES-128 block per receiver value on the sender and one per value
//!   of the smaller set on the receiver (a few nanoseconds each with AES-NI, against tens of
//!   microseconds for a point multiplication).
//! * Memory besides the inputs: the receiver keeps `16 · (n_r + n_s)` bytes of values, the
//!   sender `16 · n_r` in size-only mode; at most 2^20 items' worth is preallocated on the
//!   strength of the peer's announcement, the rest grows only as data arrives.
//! * Point arithmetic runs on the rayon pool (in chunks, with batched compression) inside
//!   `tokio::task::spawn_blocking`, so it never blocks the async runtime. Sending and receiving
//!   run concurrently (`tokio::try_join!`), so neither side can deadlock on a bounded link queue,
//!   and hashing of the next batch overlaps the sending of the current one.
//! * The engine has no timers of its own: a peer that goes silent is detected by the link's idle
//!   timeout ([`tessera_core::LinkError::Timeout`]), one that goes away by
//!   [`tessera_core::LinkError::PeerGone`].

use std::fmt;
use std::str::FromStr;

use tessera_core::LinkError;

pub mod bucket;
mod common;
mod crypto;
pub mod ecdh;
pub mod ecdh_oprf;
pub mod okvs;
pub mod oprf_query;
mod pending;
pub mod rr22;
mod wire;

pub use crypto::{DOUBLE_BLINDED_BYTES, HASH_DOMAIN, POINT_BYTES};

/// The caller's side of the sender's delivery point (crate docs, "Delivery point").
#[async_trait::async_trait]
pub trait DeliveryGate: Send + Sync {
    /// Records durably that the receiver is about to get the release key, its last frame.
    /// `true`: recorded, the sender sends it; `false`: not recorded, the sender aborts without
    /// sending it.
    async fn record(&self) -> bool;
}

/// A [`DeliveryGate`] that records nothing and always lets the last frame go (standalone use,
/// tests, benches).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGate;

#[async_trait::async_trait]
impl DeliveryGate for NoGate {
    async fn record(&self) -> bool {
        true
    }
}
pub use wire::PROTOCOL_VERSION;

/// The hot kernel of both roles, for benchmarks (`benches/psi_blinding.rs`): hashes every
/// item to ristretto255 and blinds it with a fresh secret key drawn from `rng`, returning
/// `items.len() * POINT_BYTES` bytes of compressed points, in order. Not part of the protocol
/// API.
#[doc(hidden)]
pub fn bench_hash_and_blind<R: rand_core::CryptoRngCore + ?Sized>(
    items: &[Vec<u8>],
    rng: &mut R,
) -> Vec<u8> {
    let key = crypto::SecretKey::random(rng);
    let indices: Vec<usize> = (0..items.len()).collect();
    let flat = crypto::FlatItems::gather(items, &indices);
    let mut out = vec![0u8; items.len() * POINT_BYTES];
    crypto::hash_and_blind(&flat, &key, &mut out);
    out
}

/// Largest distinct set either party may have (and may announce): the dataset row bound.
pub const SET_ITEMS_MAX: usize = tessera_core::limits::DATASET_ROWS_MAX;
/// Longest item accepted, in bytes: the dataset key bound.
pub const ITEM_BYTES_MAX: usize = tessera_core::limits::KEY_BYTES_MAX;
/// Largest batch size a party may configure or announce, in items.
pub const BATCH_ITEMS_LIMIT: usize = 1 << 20;
/// Default batch size, in items.
pub const DEFAULT_BATCH_ITEMS: usize = 4096;

/// Progress phase: own distinct items hashed to the group and blinded with the own key
/// (`total` = own distinct set size).
pub const PHASE_HASH: &str = "hash";
/// Progress phase: the peer's blinded points blinded again with the own key (`total` = the
/// peer's distinct set size for the receiver, the receiver's for the sender).
pub const PHASE_BLIND: &str = "blind";
/// Progress phase: doubly-blinded values of the receiver's items received (receiver) or sent
/// (sender); `total` = the receiver's distinct set size.
pub const PHASE_EXCHANGE: &str = "exchange";
/// Progress phase (`rr22`): the VOLE correlations (`total` = the OKVS length in blocks),
/// reported at the start and at the end.
pub const PHASE_VOLE: &str = "vole";
/// Progress phase (`rr22`): the receiver's OKVS encoding sent (receiver) or received and
/// decoded for the own items (sender); `total` = the OKVS length in blocks (receiver) or the own
/// distinct set size (sender).
pub const PHASE_OKVS: &str = "okvs";
/// Progress phase (receiver only): comparison of the two value sets (`total` = own distinct set
/// size); reported at the start and at the end.
pub const PHASE_MATCH: &str = "match";

/// Which side of the protocol a party plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The data provider: learns only the receiver's set size.
    Sender,
    /// The data buyer: learns the intersection or its size.
    Receiver,
}

impl Role {
    /// The lowercase name used by serde, `FromStr` and `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Role`], [`Mode`] or [`Protocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct ParseNameError {
    /// What was being parsed (`"role"`, `"mode"` or `"protocol"`).
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted names.
    pub expected: &'static str,
}

impl FromStr for Role {
    type Err = ParseNameError;

    /// Accepts `sender` or `receiver`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Role::Sender, Role::Receiver]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseNameError {
                what: "role",
                value: s.to_owned(),
                expected: "sender, receiver",
            })
    }
}

/// What the receiver learns.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Mode {
    /// The receiver learns which of its keys are common (and how many).
    #[default]
    #[serde(rename = "intersection")]
    Intersection,
    /// The receiver learns only how many keys are common.
    #[serde(rename = "size")]
    SizeOnly,
}

impl Mode {
    /// The name used by serde, `FromStr` and `Display`: `intersection` or `size`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Intersection => "intersection",
            Mode::SizeOnly => "size",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseNameError;

    /// Accepts `intersection` or `size` (also `size_only`/`sizeonly`), ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "intersection" => Ok(Mode::Intersection),
            "size" | "size_only" | "sizeonly" => Ok(Mode::SizeOnly),
            _ => Err(ParseNameError {
                what: "mode",
                value: s.to_owned(),
                expected: "intersection, size",
            }),
        }
    }
}

/// Which PSI protocol runs. Both parties must run the same one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// VOLE-based PSI (Raghuraman–Rindal, CCS 2022); module [`rr22`]. Intersection mode only.
    #[default]
    Rr22,
    /// Diffie–Hellman PSI over ristretto255 (the crate docs); module [`ecdh`].
    Ecdh,
    /// Diffie–Hellman OPRF PSI for unbalanced sets, the larger set encoded once under its
    /// holder's key; module [`ecdh_oprf`], with its own entry points. Intersection mode only.
    #[serde(rename = "ecdh-oprf")]
    EcdhOprf,
}

impl Protocol {
    /// Every protocol, in order of preference.
    pub const ALL: [Protocol; 3] = [Protocol::Rr22, Protocol::Ecdh, Protocol::EcdhOprf];

    /// The lowercase name used by serde, `FromStr` and `Display`: `rr22`, `ecdh` or
    /// `ecdh-oprf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rr22 => "rr22",
            Protocol::Ecdh => "ecdh",
            Protocol::EcdhOprf => "ecdh-oprf",
        }
    }

    /// The protocol used when the caller names none: `rr22`, except for [`Mode::SizeOnly`],
    /// which only `ecdh` supports.
    pub fn default_for(mode: Mode) -> Protocol {
        match mode {
            Mode::Intersection => Protocol::Rr22,
            Mode::SizeOnly => Protocol::Ecdh,
        }
    }

    /// Whether this protocol can run in `mode` (`rr22` cannot hide from its receiver which
    /// keys are common, so it runs in [`Mode::Intersection`] only).
    pub fn supports(self, mode: Mode) -> bool {
        self == Protocol::Ecdh || mode == Mode::Intersection
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Protocol::Ecdh => 0,
            Protocol::Rr22 => 1,
            Protocol::EcdhOprf => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.code() == code)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ParseNameError;

    /// Accepts `rr22` or `ecdh`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseNameError {
                what: "protocol",
                value: s.to_owned(),
                expected: "rr22, ecdh, ecdh-oprf",
            })
    }
}

/// Protocol settings. Both parties must use the same protocol and mode; batch sizes may differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PsiConfig {
    /// Which protocol runs (default [`Protocol::Rr22`]; [`Protocol::default_for`] picks by mode).
    pub protocol: Protocol,
    /// What the receiver learns.
    pub mode: Mode,
    /// Most items this party puts in one frame (1..=[`BATCH_ITEMS_LIMIT`]); further capped so
    /// that a frame fits the link's `frame_bytes_max`.
    pub batch_items_max: usize,
}

impl Default for PsiConfig {
    fn default() -> Self {
        PsiConfig {
            protocol: Protocol::Rr22,
            mode: Mode::Intersection,
            batch_items_max: DEFAULT_BATCH_ITEMS,
        }
    }
}

/// Receives progress reports (at most one per batch and phase).
pub trait Progress: Send + Sync {
    /// `done` of `total` units of `phase` (one of the `PHASE_*` constants) are complete.
    fn report(&self, phase: &str, done: u64, total: u64);
}

/// A [`Progress`] that ignores every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&self, _phase: &str, _done: u64, _total: u64) {}
}

/// What the receiver learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverOutput {
    /// Number of distinct keys in both sets.
    pub intersection_size: u64,
    /// The sender's distinct set size.
    pub sender_set_size: u64,
    /// In [`Mode::Intersection`]: for each distinct common key, the index of its first occurrence
    /// in the receiver's input, ascending. `None` in [`Mode::SizeOnly`].
    pub intersection: Option<Vec<usize>>,
    /// With a payload ([`run_receiver_with_payload`]): for each entry of `intersection`, the
    /// sender's payload of that key (its first occurrence's). `None` otherwise.
    pub payloads: Option<Vec<Vec<u8>>>,
}

/// The most bytes of one item's payload (PSI with payload).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// The most bytes of all the sender's sealed payloads together (its distinct set size times the
/// padded width), which the receiver holds in memory.
pub const PAYLOAD_TOTAL_BYTES_MAX: u64 = 4 << 30;

/// What the sender learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderOutput {
    /// The receiver's distinct set size.
    pub receiver_set_size: u64,
}

/// Why a party stopped, as carried in an `Abort` frame. Contains no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The peer found our frames malformed or unexpected.
    Protocol,
    /// The peer runs a different protocol version.
    VersionMismatch,
    /// The peer plays the same role as we do.
    RoleMismatch,
    /// The peer is configured with a different mode.
    ModeMismatch,
    /// The peer runs a different protocol.
    ProtocolMismatch,
    /// A size bound was exceeded on the peer's side.
    TooLarge,
    /// The peer's configuration is invalid.
    InvalidConfig,
    /// The peer failed internally.
    Internal,
    /// A reason code this version does not know.
    Unknown(u8),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Protocol => f.write_str("protocol violation"),
            AbortReason::VersionMismatch => f.write_str("protocol version mismatch"),
            AbortReason::RoleMismatch => f.write_str("role mismatch"),
            AbortReason::ModeMismatch => f.write_str("mode mismatch"),
            AbortReason::ProtocolMismatch => f.write_str("protocol mismatch"),
            AbortReason::TooLarge => f.write_str("size bound exceeded"),
            AbortReason::InvalidConfig => f.write_str("invalid configuration"),
            AbortReason::Internal => f.write_str("internal error"),
            AbortReason::Unknown(c) => write!(f, "unknown reason code {c}"),
        }
    }
}

/// Why a PSI run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsiError {
    /// The link failed (peer gone, oversize frame, timeout, transport error).
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The peer sent a malformed or unexpected frame.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, peer {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The parties run different protocols.
    #[error("protocol mismatch: ours {ours}, peer {theirs}")]
    ProtocolMismatch {
        /// Our protocol.
        ours: Protocol,
        /// The peer's protocol.
        theirs: Protocol,
    },
    /// Both parties play the same role.
    #[error("role mismatch: both parties are {ours}")]
    RoleMismatch {
        /// Our role (and the peer's).
        ours: Role,
    },
    /// The parties are configured with different modes.
    #[error("mode mismatch: ours {ours}, peer {theirs}")]
    ModeMismatch {
        /// Our mode.
        ours: Mode,
        /// The peer's mode.
        theirs: Mode,
    },
    /// A size bound was exceeded, by our own input or by the peer's announcement.
    #[error("{what} is {len}, above the limit of {max}")]
    TooLarge {
        /// What was too large: `"own set size"`, `"item bytes"` or `"peer set size"`.
        what: &'static str,
        /// The offending size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Our own configuration cannot work (zero batch size, or a link frame too small for one item).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The caller's [`DeliveryGate`] could not record the delivery, so the sender stopped
    /// before its last frame (the release key).
    #[error("the delivery could not be recorded; the release key was not sent")]
    DeliveryNotRecorded,
    /// The peer stopped and told us why.
    #[error("the peer aborted: {reason}")]
    PeerAborted {
        /// The reason it gave.
        reason: AbortReason,
    },
    /// A computation task failed (panicked or was cancelled by the runtime).
    #[error("internal error: {0}")]
    Internal(String),
    /// A bucketed run's own spill or part file could not be written or read (module
    /// [`bucket`]); the message names the file.
    #[error("local storage: {0}")]
    Storage(String),
}

impl PsiError {
    /// The reason to send to the peer when we stop with this error, if the peer should be told.
    pub(crate) fn abort_reason(&self) -> Option<AbortReason> {
        match self {
            // The peer broke the frame bound: tell it; other link failures mean it cannot hear us.
            PsiError::Link(LinkError::FrameTooLarge { .. }) => Some(AbortReason::Protocol),
            PsiError::Link(_) | PsiError::PeerAborted { .. } => None,
            PsiError::Protocol(_) => Some(AbortReason::Protocol),
            PsiError::VersionMismatch { .. } => Some(AbortReason::VersionMismatch),
            PsiError::RoleMismatch { .. } => Some(AbortReason::RoleMismatch),
            PsiError::ModeMismatch { .. } => Some(AbortReason::ModeMismatch),
            PsiError::ProtocolMismatch { .. } => Some(AbortReason::ProtocolMismatch),
            PsiError::TooLarge { .. } => Some(AbortReason::TooLarge),
            PsiError::InvalidConfig(_) => Some(AbortReason::InvalidConfig),
            PsiError::Internal(_) | PsiError::DeliveryNotRecorded | PsiError::Storage(_) => {
                Some(AbortReason::Internal)
            }
        }
    }
}

/// Runs the receiver's side of `cfg.protocol`: learns the intersection (or its size) of the
/// distinct `items` with the sender's set.
///
/// `items` may contain duplicates; they are removed first and the output refers to the index of
/// each key's first occurrence. Secrets and shuffles are drawn from `rng`. On a local failure the
/// peer is told with a best-effort `Abort` frame.
///
/// # Errors
/// [`PsiError`]: bad own input or configuration (including `rr22` in [`Mode::SizeOnly`]), a
/// link failure, a peer that violates the protocol, runs another protocol, version, or mode, or
/// aborts.
pub async fn run_receiver<R: rand_core::CryptoRngCore + Send>(
    link: &dyn tessera_core::Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let result = match cfg.protocol {
        Protocol::Ecdh => ecdh::receiver(link, items, cfg, rng, progress, false).await,
        Protocol::Rr22 => rr22::receiver(link, items, cfg, rng, progress, false, false).await,
        Protocol::EcdhOprf => Err(not_here()),
    }
    .and_then(pending::Received::done);
    if let Err(e) = &result {
        common::notify_peer(link, e).await;
    }
    result
}

/// Runs the sender's side of `cfg.protocol`: helps the receiver compute the intersection and
/// learns only the receiver's distinct set size. As [`run_sender_reporting_delivery`] with
/// [`NoGate`].
///
/// # Errors
/// As [`run_receiver`].
pub async fn run_sender<R: rand_core::CryptoRngCore + Send>(
    link: &dyn tessera_core::Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<SenderOutput, PsiError> {
    run_sender_reporting_delivery(link, items, cfg, rng, progress, &NoGate).await
}

/// [`run_sender`] with the protocol's delivery point put to `gate` (crate docs, "Delivery
/// point"): once every frame but the sender's last (its `Release` of the key that unlocks all
/// values at once) is on the link, the sender asks `gate.record()` to record the delivery
/// durably, and sends the key only if it did; otherwise the run fails with
/// [`PsiError::DeliveryNotRecorded`] and the receiver, holding only encrypted values, learns
/// nothing about the intersection. The gate is asked exactly once per run that gets that far,
/// never after an error.
///
/// # Errors
/// As [`run_receiver`], and [`PsiError::DeliveryNotRecorded`].
pub async fn run_sender_reporting_delivery<R: rand_core::CryptoRngCore + Send>(
    link: &dyn tessera_core::Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    let result = match cfg.protocol {
        Protocol::Ecdh => {
            ecdh::sender(
                link,
                items,
                cfg,
                rng,
                progress,
                common::Release::Gated(gate),
            )
            .await
        }
        Protocol::Rr22 => {
            let release = common::Release::Gated(gate);
            rr22::sender(link, items, None, cfg, rng, progress, release).await
        }
        Protocol::EcdhOprf => Err(not_here()),
    };
    if let Err(e) = &result {
        common::notify_peer(link, e).await;
    }
    result
}

/// PSI with payload, the receiver's side ([`Protocol::Rr22`] in [`Mode::Intersection`] only):
/// as [`run_receiver`], and for each common key also the sender's payload of it
/// ([`ReceiverOutput::payloads`]). See module [`rr22`], "PSI with payload", for what each
/// party learns.
///
/// # Errors
/// As [`run_receiver`]; [`PsiError::InvalidConfig`] for another protocol or mode; a sealed
/// payload wider than [`PAYLOAD_BYTES_MAX`], more than [`PAYLOAD_TOTAL_BYTES_MAX`] in all, or
/// whose length is past its width is a protocol error.
pub async fn run_receiver_with_payload<R: rand_core::CryptoRngCore + Send>(
    link: &dyn tessera_core::Link,
    items: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
) -> Result<ReceiverOutput, PsiError> {
    let result = match payload_config(cfg) {
        Ok(()) => rr22::receiver(link, items, cfg, rng, progress, true, false)
            .await
            .and_then(pending::Received::done),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        common::notify_peer(link, e).await;
    }
    result
}

/// PSI with payload, the sender's side: as [`run_sender_reporting_delivery`], with
/// `payloads[i]` (at most [`PAYLOAD_BYTES_MAX`] bytes) delivered to the receiver if `items[i]`
/// is a common key (for a repeated key, its first occurrence's payload).
///
/// # Errors
/// As [`run_sender_reporting_delivery`]; [`PsiError::InvalidConfig`] for another protocol or
/// mode, or a payload count other than the item count; [`PsiError::TooLarge`] for a payload
/// over the bound.
pub async fn run_sender_with_payload<R: rand_core::CryptoRngCore + Send>(
    link: &dyn tessera_core::Link,
    items: &[Vec<u8>],
    payloads: &[Vec<u8>],
    cfg: &PsiConfig,
    rng: &mut R,
    progress: &dyn Progress,
    gate: &dyn DeliveryGate,
) -> Result<SenderOutput, PsiError> {
    let result = match payload_config(cfg) {
        Ok(()) => {
            let release = common::Release::Gated(gate);
            rr22::sender(link, items, Some(payloads), cfg, rng, progress, release).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        common::notify_peer(link, e).await;
    }
    result
}

/// `ecdh-oprf` through the entry points of the other protocols.
fn not_here() -> PsiError {
    PsiError::InvalidConfig(
        "ecdh-oprf runs through tessera_psi::ecdh_oprf (it needs the sender's encoded set)".into(),
    )
}

fn payload_config(cfg: &PsiConfig) -> Result<(), PsiError> {
    if cfg.protocol == Protocol::Rr22 && cfg.mode == Mode::Intersection {
        Ok(())
    } else {
        Err(PsiError::InvalidConfig(format!(
            "PSI with payload runs rr22 in intersection mode, not {} in {} mode",
            cfg.protocol, cfg.mode
        )))
    }
}
