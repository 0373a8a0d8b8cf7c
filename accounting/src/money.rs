//! Money helpers: integer micro-units and the single rounding rule of the crate.
//!
//! Every amount of money is an `i64` count of micro-units (1 yuan = 1_000_000 micros).
//! Decimals ([`rust_decimal::Decimal`]) appear only as rates and factors; whenever a decimal
//! product becomes money it is rounded **half away from zero** to a whole micro by
//! [`round_micros`] or [`mul_div_round`]. Each module documents the exact point where it
//! rounds.

use rust_decimal::{Decimal, RoundingStrategy};

/// An amount of money in micro-units.
pub type Micros = i64;

/// Micro-units in one currency unit (yuan).
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Largest single amount of money anywhere in Tessera: 10^9 yuan (10^15 micros). A transfer,
/// deposit, hold, price or credit line above it is refused
/// (`LedgerError::AmountAboveMaximum`), and a customer's fund account (cash, recharge or
/// deduction voucher) never holds more (`LedgerError::BalanceAboveMaximum`).
///
/// Why 10^15: far above any real payment, and ~9,200 accounts at the maximum still sum below
/// `i64::MAX` (9.22 × 10^18); sums across accounts are taken in `i128` in any case.
pub const MAX_AMOUNT_MICROS: i64 = 1_000_000_000 * MICROS_PER_UNIT;

/// Largest running total of one ledger account (its credits, its debits, its pending credits
/// or debits): 10^18 micros (10^12 yuan). A transfer that would take any total above it is
/// refused (`LedgerError::AccountTotalAboveMaximum`). With every total in `0..=10^18`, an
/// account's balance (`credits − debits − pending debits`) stays within ±2 × 10^18 and always
/// fits an `i64`, so no account, however busy, can make the ledger unreadable.
pub const MAX_ACCOUNT_TOTAL_MICROS: i64 = 1_000 * MAX_AMOUNT_MICROS;

/// Largest absolute amount accepted from text ([`MAX_AMOUNT_MICROS`]).
pub const MAX_ABS_MICROS: i64 = MAX_AMOUNT_MICROS;

/// Why an amount could not be parsed or computed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MoneyError {
    /// The text is not a decimal number with at most six fractional digits.
    #[error("invalid amount {0:?}")]
    Parse(String),
    /// The value does not fit the supported range.
    #[error("amount overflows")]
    Overflow,
    /// A divisor was zero.
    #[error("division by zero")]
    DivisionByZero,
}

/// Rounds a decimal number of micros to a whole micro, half away from zero.
pub fn round_micros(value: Decimal) -> Result<Micros, MoneyError> {
    let r = value.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(r).map_err(|_| MoneyError::Overflow)
}

/// `a × b / d` computed exactly in `i128` and rounded half away from zero.
pub fn mul_div_round(a: i128, b: i128, d: i128) -> Result<i128, MoneyError> {
    if d == 0 {
        return Err(MoneyError::DivisionByZero);
    }
    let n = a.checked_mul(b).ok_or(MoneyError::Overflow)?;
    let (n, d) = if d < 0 { (-n, -d) } else { (n, d) };
    let q = n / d;
    let r = n % d;
    let twice = r.abs().checked_mul(2).ok_or(MoneyError::Overflow)?;
    if twice >= d {
        Ok(if n < 0 { q - 1 } else { q + 1 })
    } else {
        Ok(q)
    }
}

/// `a × b / d` as [`mul_div_round`], narrowed to `i64`.
pub fn mul_div_round_i64(a: i64, b: i64, d: i64) -> Result<Micros, MoneyError> {
    let v = mul_div_round(i128::from(a), i128::from(b), i128::from(d))?;
    i64::try_from(v).map_err(|_| MoneyError::Overflow)
}

/// A decimal amount of money times a decimal factor, rounded to a whole micro.
pub fn scale(amount: Micros, factor: Decimal) -> Result<Micros, MoneyError> {
    let v = Decimal::from(amount)
        .checked_mul(factor)
        .ok_or(MoneyError::Overflow)?;
    round_micros(v)
}

/// Parses a currency amount written in yuan (`"300"`, `"0.5"`, `"-12.000001"`) into micros.
pub fn parse_amount(text: &str) -> Result<Micros, MoneyError> {
    let t = text.trim();
    let err = || MoneyError::Parse(text.to_string());
    if t.is_empty() || t.len() > 24 {
        return Err(err());
    }
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    if int_part.is_empty()
        || frac_part.len() > 6
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    let int: i64 = int_part.parse().map_err(|_| err())?;
    let mut frac: i64 = 0;
    for (i, b) in frac_part.bytes().enumerate() {
        frac += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
    }
    let v = int
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|v| v.checked_add(frac))
        .ok_or(MoneyError::Overflow)?;
    if v > MAX_ABS_MICROS {
        return Err(MoneyError::Overflow);
    }
    Ok(if neg { -v } else { v })
}

/// Formats micros as yuan with two decimals, or more when needed (`230.00`, `9.677419`).
pub fn format_amount(m: Micros) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = i128::from(m).abs();
    let int = a / i128::from(MICROS_PER_UNIT);
    let frac = a % i128::from(MICROS_PER_UNIT);
    let mut f = format!("{frac:06}");
    while f.len() > 2 && f.ends_with('0') {
        f.pop();
    }
    format!("{sign}{int}.{f}")
}

/// Parses a decimal factor or rate (`"0.5"`, `"12.345"`).
pub fn parse_decimal(text: &str) -> Result<Decimal, MoneyError> {
    let t = text.trim();
    if t.len() > 40 {
        return Err(MoneyError::Parse(text.to_string()));
    }
    t.parse::<Decimal>()
        .map_err(|_| MoneyError::Parse(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<Micros, MoneyError>) {
        assert_eq!(parse_amount(input), expected, "{input}");
        if let Ok(v) = expected {
            assert_eq!(parse_amount(&format_amount(v)), Ok(v));
        }
    }

    #[test]
    fn parses_amounts() {
        check("300", Ok(300_000_000));
        check("0.5", Ok(500_000));
        check("-12.000001", Ok(-12_000_001));
        check("2744", Ok(2_744_000_000));
        check("1.0000001", Err(MoneyError::Parse("1.0000001".into())));
        check("", Err(MoneyError::Parse(String::new())));
        check("1e3", Err(MoneyError::Parse("1e3".into())));
        check(".5", Err(MoneyError::Parse(".5".into())));
        check("1000000000001", Err(MoneyError::Overflow));
        check("1000000000", Ok(MAX_AMOUNT_MICROS));
        check("1000000000.000001", Err(MoneyError::Overflow));
        check("9223372036854", Err(MoneyError::Overflow));
    }

    #[test]
    fn formats_and_rounds() {
        assert_eq!(format_amount(230_000_000), "230.00");
        assert_eq!(format_amount(-10_500_000), "-10.50");
        assert_eq!(format_amount(9_677_419), "9.677419");
        assert_eq!(format_amount(0), "0.00");
        assert_eq!(mul_div_round(300_000_000, 1, 31), Ok(9_677_419));
        assert_eq!(mul_div_round(5, 1, 2), Ok(3));
        assert_eq!(mul_div_round(-5, 1, 2), Ok(-3));
        assert_eq!(mul_div_round(-5, 1, -2), Ok(3));
        assert_eq!(mul_div_round(1, 1, 0), Err(MoneyError::DivisionByZero));
        assert_eq!(scale(100_000_000, Decimal::new(5, 1)), Ok(50_000_000));
        assert_eq!(scale(1, Decimal::new(5, 1)), Ok(1));
        assert_eq!(round_micros(Decimal::new(-25, 1)), Ok(-3));
    }
}
