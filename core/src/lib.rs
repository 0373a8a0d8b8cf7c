//! Shared vocabulary of Tessera: limits, the injected clock, the two-party [`link::Link`]
//! channel that every engine is written against, signed job tickets and signed audit-chain
//! heads, and Arrow table input.
//!
//! Nothing here knows about gRPC, databases or the wall clock of a particular component:
//! those are passed in by the caller.

pub mod checkpoint;
pub mod civil;
pub mod clock;
pub mod fs;
pub mod job;
pub mod limits;
pub mod link;
pub mod table;
pub mod ticket;

pub use clock::{Clock, ManualClock, SystemClock};
pub use link::{Link, LinkError, LinkStats, MemLink};
pub mod task;
pub use job::{
    CountState, JobState, JoinKind, MpcTriples, PsiMode, PsiProtocol, TaskErrorKind, TaskRole,
    TaskState,
};
pub use table::{EmptyKeys, KeyCase, UnicodeForm};
pub use task::{
    FlDp, FlModel, FlSeat, FlSpec, JOIN_MATCHED_COLUMN, JoinSpec, LicenceGrant, ModelRecipient,
    MpcColumn, MpcQuery, MpcSpec, PreviewSpec, TaskSpec, TeeSpec, WorkerAttributes,
};
