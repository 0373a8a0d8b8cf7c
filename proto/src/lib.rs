//! The gRPC contracts of Tessera, generated from `tessera.proto` at build time.
//! Nothing but generated code lives here; domain crates never see these types.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Package `tessera.v1`.
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}
