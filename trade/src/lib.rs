//! The T/AI 123.12 trade flow (appendix A.1–A.3): data registration and publication,
//! controlled datasets, demands, matching, confirmation, settlement, the signed licence of
//! table A.37 and sealed delivery.
//!
//! This crate is pure: request shapes with the standard's field names and their validation
//! ([`fields`]), the licence and its ed25519 signature and watermark ([`licence`]), the
//! delivery key sealed to the buyer with HPKE and the encrypted data package ([`seal`]),
//! keyword and category matching ([`matching`]). The store records the flow and the scheduler's
//! trade service runs it; the money moves through `accounting::settle`.
//!
//! Choices where the standard is silent or ambiguous are written where they are made, and
//! collected in ARCHITECTURE.md.

pub mod error;
pub mod fields;
pub mod licence;
pub mod matching;
pub mod proof;
pub mod seal;

pub use error::TradeError;

/// The fixed `owner` of controlled data (table A.8: "a unique fixed value, meaning the data
/// comes from the trusted data space").
pub const CONTROLLED_OWNER: &str = "tessera-trusted-data-space";

/// The fixed registration number of every controlled dataset (tables A.3 and A.8: controlled
/// data is not registered, so its registration number is one fixed value).
pub const CONTROLLED_REGISTRATION_ID: &str = "TDS-CONTROLLED";

/// The standard's `publish_status` values.
pub const PUBLISHED: &str = "YES";
/// See [`PUBLISHED`].
pub const NOT_PUBLISHED: &str = "NO";

/// The standard's settlement status values (table A.33: "settled" and "not settled").
pub const SETTLED: &str = "SETTLED";
/// See [`SETTLED`].
pub const UNSETTLED: &str = "UNSETTLED";
