//! The closed vocabularies of a job: its state, the state of its licence count, the roles and
//! states of its tasks, the PSI mode and protocol it runs and how a task failed.
//!
//! Each is an enum with one text form, used by serde, [`FromStr`] and [`fmt::Display`]: that
//! text is what the store persists and what travels inside a task spec. Text that names no
//! variant is an error ([`ParseNameError`]), never a default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of an enum's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of: {expected}")]
pub struct ParseNameError {
    /// The vocabulary, e.g. `job state`.
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted names, comma-separated.
    pub expected: &'static str,
}

/// Declares a closed vocabulary: the enum, `as_str`, `Display`, `FromStr` (exact names) and
/// serde through the same names.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal, $expected:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text form (as stored and sent).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseNameError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseNameError {
                        kind: $kind,
                        value: s.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }
    };
}

vocabulary! {
    /// Where a job stands. `Admitted` and `Running` may still change; the others are final.
    JobState, "job state", "admitted, running, succeeded, failed, refused, cancelled" {
        /// Admitted: one count reserved, tasks recorded, not yet delivered.
        Admitted => "admitted",
        /// Tasks delivered to the workers.
        Running => "running",
        /// Both tasks succeeded; count committed, charge posted.
        Succeeded => "succeeded",
        /// A task failed or the job could not be delivered.
        Failed => "failed",
        /// Admission refused it (with reasons); nothing reserved.
        Refused => "refused",
        /// The buyer cancelled it.
        Cancelled => "cancelled",
    }
}

impl JobState {
    /// Whether the job can no longer change.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Admitted | JobState::Running)
    }
}

vocabulary! {
    /// The state of the licence count a job holds (ARCHITECTURE.md: a count is consumed
    /// exactly once).
    CountState, "count state", "none, reserved, committed, released" {
        /// Nothing reserved (refused jobs).
        None => "none",
        /// Reserved at admission.
        Reserved => "reserved",
        /// Consumed (success, the buyer's own fault, cancellation).
        Committed => "committed",
        /// Given back (failures that are not the buyer's).
        Released => "released",
    }
}

vocabulary! {
    /// A task's role in a two-party engine.
    TaskRole, "task role", "sender, receiver" {
        /// The provider's side of PSI: sends its blinded keys, learns nothing.
        Sender => "sender",
        /// The buyer's side of PSI: learns the intersection (or its size) and writes it.
        Receiver => "receiver",
    }
}

vocabulary! {
    /// Where a task stands in the operator's record.
    TaskState, "task state", "dispatched, succeeded, failed" {
        /// Sent to its worker.
        Dispatched => "dispatched",
        /// The worker reported success.
        Succeeded => "succeeded",
        /// The worker reported failure.
        Failed => "failed",
    }
}

vocabulary! {
    /// What a PSI job reveals, and to whom.
    PsiMode, "PSI mode", "intersection, size, both" {
        /// The buyer learns which of its keys are common (and how many).
        Intersection => "intersection",
        /// The buyer learns only how many keys are common.
        Size => "size",
        /// The buyer and the provider each learn which of their own keys are common: the
        /// provider's worker writes its own result file, the key columns of its matched rows
        /// (the buyer's choice: it reveals the intersection to the provider).
        Both => "both",
    }
}

impl PsiMode {
    /// Whether the buyer learns which of its keys are common (`intersection`, `both`).
    pub fn reveals_keys(self) -> bool {
        matches!(self, PsiMode::Intersection | PsiMode::Both)
    }
}

vocabulary! {
    /// Which PSI protocol a job runs (crate `tessera-psi`, [`PsiProtocol::default_for`] when
    /// the request names none).
    PsiProtocol, "PSI protocol", "rr22, ecdh, ecdh-oprf" {
        /// VOLE-based PSI (Raghuraman–Rindal, CCS 2022): the fast one; intersection and both
        /// modes.
        Rr22 => "rr22",
        /// Diffie–Hellman PSI over ristretto255: fewer bytes than `rr22` only for small sets
        /// (`rr22` costs about 600 KB of VOLE traffic whatever the size), and the only one that
        /// runs in size mode.
        Ecdh => "ecdh",
        /// Diffie–Hellman OPRF PSI for unbalanced sets (`tessera_psi::ecdh_oprf`): the larger
        /// set is encoded once under its holder's key and reused by later jobs of the same
        /// licence; the smaller side pays for its own set only. Intersection mode only.
        EcdhOprf => "ecdh-oprf",
    }
}

impl PsiProtocol {
    /// The protocol a job runs when its request names none: `rr22`, except in size mode, which
    /// only `ecdh` supports.
    pub fn default_for(mode: PsiMode) -> PsiProtocol {
        match mode {
            PsiMode::Intersection | PsiMode::Both => PsiProtocol::Rr22,
            PsiMode::Size => PsiProtocol::Ecdh,
        }
    }

    /// Whether the protocol can run in `mode`: `rr22`'s receiver learns which of its keys are
    /// common, so it cannot serve size mode; `ecdh-oprf` runs in intersection mode only (its
    /// receiver learns the common keys, and it is not bucketed, so it cannot share them).
    pub fn supports(self, mode: PsiMode) -> bool {
        match self {
            PsiProtocol::Rr22 => mode != PsiMode::Size,
            PsiProtocol::Ecdh => true,
            PsiProtocol::EcdhOprf => mode == PsiMode::Intersection,
        }
    }
}

vocabulary! {
    /// Where an `mpc` job's correlated randomness (Beaver triples) comes from; the names a
    /// licence's `mpc` scene lists in `protocols`.
    MpcTriples, "mpc triples", "ot, dealer" {
        /// Dealer-free: made between the two workers by OT extension (no third party).
        Ot => "ot",
        /// Dealt by the operator from seeds over each worker's own link to it: much faster,
        /// but the operator knows every triple and must not collude with either party.
        Dealer => "dealer",
    }
}

vocabulary! {
    /// The shape of a join's result (a PSI with the provider's payload columns): which of the
    /// buyer's rows it writes. The buyer learns which of its keys are common in every shape;
    /// the provider's columns cross for matched rows only.
    JoinKind, "join kind", "inner, left, difference" {
        /// The buyer's rows whose key the provider has, with the provider's payload columns.
        Inner => "inner",
        /// Every buyer row, with a `matched` flag and, for matched rows, the payload columns.
        Left => "left",
        /// The buyer's rows whose key the provider does not have (no provider column).
        Difference => "difference",
    }
}

vocabulary! {
    /// Why a task failed, as its worker classifies it; decides whose fault a failure is (and
    /// so whether the licence count is consumed).
    TaskErrorKind, "task error kind", "input, peer, link, ticket, internal, cancelled" {
        /// This party's input is bad (missing file, unknown column, malformed row).
        Input => "input",
        /// The peer failed or misbehaved.
        Peer => "peer",
        /// The link to the peer broke or could not be opened (its process or the network went
        /// away): the job may resume once both parties' workers are back.
        Link => "link",
        /// The ticket was refused.
        Ticket => "ticket",
        /// Anything else on the worker.
        Internal => "internal",
        /// The task was cancelled.
        Cancelled => "cancelled",
    }
}

/// Scenes (engines) a job can name, and those this build runs.
pub mod scene {
    /// The PSI scene name (T/AI 123.12 `useSence`).
    pub const PSI: &str = "psi";
    /// The preview scene: at most the rows and columns the licence's `viewRowsRange` /
    /// `viewPageRange` allow, from the provider's dataset to the buyer.
    pub const PREVIEW: &str = "preview";
    /// The secret-sharing MPC scene: statistics on both parties' columns of PSI-aligned rows,
    /// opened to the buyer only (crate `tessera-mpc`).
    pub const MPC: &str = "mpc";
    /// The trusted-execution scene: the same statistics as `mpc`, computed in the clear
    /// inside an attested enclave on the provider's worker, which alone receives the
    /// provider's dataset key (crate `tessera-tee`).
    pub const TEE: &str = "tee";
    /// PSI with the provider's payload columns: the buyer's rows joined with the columns the
    /// licence's `payloadColumns` lists, for its common keys (crate `tessera-psi`, rr22).
    pub const PSI_PAYLOAD: &str = "psi_payload";
    /// Federated learning with secure aggregation across several providers' workers, the
    /// model to the buyer's (crate `tessera-fl`).
    pub const FL: &str = "fl";
    /// Scenes this build can run.
    pub const SUPPORTED: &[&str] = &[PSI, PSI_PAYLOAD, PREVIEW, MPC, TEE, FL];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_unknown_text_is_an_error() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).ok(),
                Some(format!("\"{}\"", s.as_str()))
            );
        }
        for m in PsiMode::ALL {
            assert_eq!(m.as_str().parse::<PsiMode>(), Ok(*m));
        }
        for p in PsiProtocol::ALL {
            assert_eq!(p.as_str().parse::<PsiProtocol>(), Ok(*p));
            assert!(p.supports(PsiMode::Intersection));
        }
        assert_eq!(PsiProtocol::default_for(PsiMode::Size), PsiProtocol::Ecdh);
        assert_eq!(
            PsiProtocol::default_for(PsiMode::Intersection),
            PsiProtocol::Rr22
        );
        assert!(!PsiProtocol::Rr22.supports(PsiMode::Size));
        for r in TaskRole::ALL {
            assert_eq!(r.as_str().parse::<TaskRole>(), Ok(*r));
        }
        for j in JoinKind::ALL {
            assert_eq!(j.as_str().parse::<JoinKind>(), Ok(*j));
        }
        assert!("outer".parse::<JoinKind>().is_err());
        assert!("".parse::<JobState>().is_err());
        assert!("Admitted".parse::<JobState>().is_err());
        assert!("size_only".parse::<PsiMode>().is_err());
        let e = "x".parse::<TaskRole>().err();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("unknown task role \"x\"; expected one of: sender, receiver".into())
        );
        assert!(JobState::Refused.is_terminal() && !JobState::Running.is_terminal());
    }
}
