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

/// Plans the holds for a job's estimated maximum cost `max_micros` over the buyer's funds,
/// given in payment order as `(account, available)`: each source is drawn fully before the
/// next. Returns the non-zero pieces, or why the funds do not cover the cost.
pub fn plan_holds(funds: &[(String, i64)], max_micros: i64) -> Result<Vec<(String, i64)>, String> {
    let available: i64 = funds.iter().map(|(_, a)| (*a).max(0)).sum();
    if available < max_micros {
        let parts: Vec<String> = funds.iter().map(|(n, a)| format!("{n} {a}")).collect();
        return Err(format!(
            "insufficient funds: {available} micros available ({}) is below the estimated maximum cost of {max_micros} micros",
            parts.join(", ")
        ));
    }
    let mut left = max_micros.max(0);
    let mut out = Vec::new();
    for (account, a) in funds {
        let take = left.min((*a).max(0));
        if take > 0 {
            out.push((account.clone(), take));
            left -= take;
        }
    }
    Ok(out)
}

/// Splits a charge of `total_micros` over holds in their order (each drawn fully before the
/// next): the amount to post from each. The charge is capped at the sum of the holds; the
/// second value is what was capped off.
pub fn draw_from_holds(holds: &[i64], total_micros: i64) -> (Vec<i64>, i64) {
    let held: i64 = holds.iter().map(|h| (*h).max(0)).sum();
    let charge = total_micros.clamp(0, held);
    let mut left = charge;
    let pieces = holds
        .iter()
        .map(|h| {
            let take = left.min((*h).max(0));
            left -= take;
            take
        })
        .collect();
    (pieces, total_micros.max(0) - charge)
}

/// Splits `amount` into `(provider, operator)`: the operator's share is `amount × bps /
/// 10 000` rounded toward zero (bps capped at 10 000), the provider receives the rest, so the
/// parts always sum to `amount`.
pub fn split_share(amount_micros: i64, operator_share_bps: u32) -> (i64, i64) {
    let op =
        (i128::from(amount_micros) * i128::from(operator_share_bps.min(10_000)) / 10_000) as i64;
    (amount_micros - op, op)
}

/// A charge limited to `cap_micros` (the hold): the total is capped and re-split with the
/// same operator share, rounded down, the provider receiving the rest.
pub fn cap_charge(price: &JobPrice, charge: JobCharge, cap_micros: i64) -> JobCharge {
    if charge.total_micros <= cap_micros {
        return charge;
    }
    let total = cap_micros.max(0);
    let operator =
        (i128::from(total) * i128::from(price.operator_share_bps.min(10_000)) / 10_000) as i64;
    JobCharge {
        total_micros: total,
        provider_micros: total - operator,
        operator_micros: operator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_draw_funds_in_order_and_charges_never_exceed_them() {
        let funds = vec![
            ("dv".to_string(), 30),
            ("rv".to_string(), 0),
            ("cash".to_string(), 50),
            ("credit".to_string(), 100),
        ];
        assert_eq!(
            plan_holds(&funds, 100),
            Ok(vec![
                ("dv".to_string(), 30),
                ("cash".to_string(), 50),
                ("credit".to_string(), 20)
            ])
        );
        assert_eq!(plan_holds(&funds, 0), Ok(vec![]));
        let err = plan_holds(&funds, 181).expect_err("short");
        assert!(err.contains("180 micros available"), "{err}");
        assert_eq!(draw_from_holds(&[30, 50, 20], 60), (vec![30, 30, 0], 0));
        assert_eq!(draw_from_holds(&[30, 50, 20], 130), (vec![30, 50, 20], 30));
        assert_eq!(draw_from_holds(&[], 5), (vec![], 5));
        let price = JobPrice {
            per_job_micros: 0,
            per_1k_rows_micros: 1_000,
            operator_share_bps: 1_000,
        };
        let c = rate_job(&price, 10_000).expect("rate");
        assert_eq!(cap_charge(&price, c, 20_000), c);
        let capped = cap_charge(&price, c, 5_001);
        assert_eq!(
            (
                capped.total_micros,
                capped.provider_micros,
                capped.operator_micros
            ),
            (5_001, 4_501, 500)
        );
    }

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
