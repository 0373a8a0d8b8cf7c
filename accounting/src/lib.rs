//! Accounting: metering, rating, the double-entry ledger and bills.
//!
//! Money is integer micro-units (1 yuan = 1_000_000 micros) everywhere; rates may be
//! decimals, but every amount is rounded to an integer at a fixed, documented point.

pub mod job;
pub mod ledger;

pub use job::{JobCharge, JobPrice, RatingError, rate_job};
pub use ledger::{AccountRef, LedgerError, TransferSpec, derive_id, sum_is_balanced};
