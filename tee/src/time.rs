//! Times as the crate takes them: unix seconds, or RFC 3339 text (for the CLI's `--at` and
//! the collateral's dates). Nothing here reads the clock.

/// Parses RFC 3339 (`2025-06-19T12:00:00Z`) to unix seconds.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let ts: jiff::Timestamp = s.trim().parse().map_err(|e| format!("{e}"))?;
    u64::try_from(ts.as_second()).map_err(|_| "before 1970".to_string())
}

/// Parses a time given as unix seconds or RFC 3339.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map_err(|_| format!("{t}: too large for unix seconds"));
    }
    parse_rfc3339(t).map_err(|e| format!("{t}: neither unix seconds nor RFC 3339 ({e})"))
}
