//! The gRPC contracts of Tessera, generated from `tessera.proto` at build time, and the one
//! place where the wire's enums meet their domain twins in `tessera_core` ([`convert`]).
//! Domain crates never see these types.

/// Package `tessera.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}

pub mod channel;
pub mod convert;
pub mod json;
pub mod link;
pub mod token;

pub use channel::{ChannelError, ConnectError, connect, operator_endpoint};
pub use convert::{EnumError, decode};
pub use token::{TOKEN_METADATA, TokenHeader};
