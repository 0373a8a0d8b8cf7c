//! Civil time for the billing rules: re-exported from [`tessera_core::civil`], the one
//! civil-time module (on `jiff`), which also documents the time-zone decision. The rules in
//! this crate compute on local milliseconds ([`LocalMillis`]); the operator converts UTC
//! instants to and from its configured zone at the boundary.

pub use tessera_core::civil::*;
