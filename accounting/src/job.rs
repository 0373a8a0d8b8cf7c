//! Minimal per-job rating: a fixed price per job plus a price per 1,000 rows, split between
//! the provider and the operator by the operator's share in basis points.

use serde::{Deserialize, Serialize};

/// Why rating failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RatingError {
    /// A price or share is outside its allowed range.
    #[error("invalid price: {0}")]
    InvalidPrice(String),
    /// The charge does not fit in an i64 of micro-units.
    #[error("charge overflows")]
    Overflow,
}

/// The price of running jobs under one licence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPrice {
    /// Charged once per successful job.
    pub per_job_micros: i64,
    /// Charged per 1,000 rows of the provider's data used (pro rata, rounded half up).
    pub per_1k_rows_micros: i64,
    /// Operator's share of the charge in basis points (0..=10_000); the rest goes to the
    /// provider.
    pub operator_share_bps: u32,
}

/// A rated job: what the buyer pays and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCharge {
    /// Total paid by the buyer.
    pub total_micros: i64,
    /// Provider's part.
    pub provider_micros: i64,
    /// Operator's part (`total - provider`, so the split always sums exactly).
    pub operator_micros: i64,
}

impl JobPrice {
    /// Checks the ranges: prices non-negative, share at most 100%.
    pub fn validate(&self) -> Result<(), RatingError> {
        if self.per_job_micros < 0 || self.per_1k_rows_micros < 0 {
            return Err(RatingError::InvalidPrice(
                "prices must not be negative".into(),
            ));
        }
        if self.operator_share_bps > 10_000 {
            return Err(RatingError::InvalidPrice(
                "operator share must be at most 10000 bps".into(),
            ));
        }
        Ok(())
    }
}

/// Rates one job that used `rows` rows. The row part is `rows × per_1k / 1000` rounded half up
/// to a whole micro; the operator's share is `total × bps / 10000` rounded down, and the
/// provider receives the remainder.
pub fn rate_job(price: &JobPrice, rows: u64) -> Result<JobCharge, RatingError> {
    price.validate()?;
    let rows = i128::from(rows);
    let row_part = (rows * i128::from(price.per_1k_rows_micros) + 500) / 1000;
    let total = i128::from(price.per_job_micros) + row_part;
    let operator = total * i128::from(price.operator_share_bps) / 10_000;
    let total_micros = i64::try_from(total).map_err(|_| RatingError::Overflow)?;
    let operator_micros = i64::try_from(operator).map_err(|_| RatingError::Overflow)?;
    Ok(JobCharge {
        total_micros,
        provider_micros: total_micros - operator_micros,
        operator_micros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(price: (i64, i64, u32), rows: u64, expected: (i64, i64, i64)) {
        let price = JobPrice {
            per_job_micros: price.0,
            per_1k_rows_micros: price.1,
            operator_share_bps: price.2,
        };
        let c = rate_job(&price, rows).expect("rate");
        assert_eq!(
            (c.total_micros, c.provider_micros, c.operator_micros),
            expected
        );
        assert_eq!(c.provider_micros + c.operator_micros, c.total_micros);
    }

    #[test]
    fn rates_by_job_and_rows() {
        check(
            (1_000_000, 10_000, 1_000),
            100_000,
            (2_000_000, 1_800_000, 200_000),
        );
        check((0, 1, 0), 499, (0, 0, 0));
        check((0, 1, 0), 500, (1, 1, 0));
        check((0, 3, 3_333), 1_000, (3, 3, 0));
        check((7, 0, 10_000), 0, (7, 0, 7));
    }

    #[test]
    fn bad_prices_are_refused() {
        let p = JobPrice {
            per_job_micros: -1,
            per_1k_rows_micros: 0,
            operator_share_bps: 0,
        };
        assert!(rate_job(&p, 1).is_err());
        let p = JobPrice {
            per_job_micros: 0,
            per_1k_rows_micros: 0,
            operator_share_bps: 10_001,
        };
        assert!(rate_job(&p, 1).is_err());
        let p = JobPrice {
            per_job_micros: i64::MAX,
            per_1k_rows_micros: i64::MAX,
            operator_share_bps: 0,
        };
        assert_eq!(rate_job(&p, u64::MAX), Err(RatingError::Overflow));
    }
}
