//! `yyyy-mm-dd HH:MM:SS` date-times (the T/AI 123.12 format), read as UTC, to and from
//! milliseconds since the Unix epoch, without a date library.

use crate::PolicyError;

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `yyyy-mm-dd HH:MM:SS` (a date alone means midnight) as UTC.
pub fn parse_datetime(s: &str) -> Result<i64, PolicyError> {
    let bad = || PolicyError::BadDate { value: s.into() };
    let t = s.trim();
    let (date, time) = match t.split_once([' ', 'T']) {
        Some((d, t)) => (d, t),
        None => (t, "00:00:00"),
    };
    let num = |p: Option<&str>, len: usize| -> Result<i64, PolicyError> {
        let p = p.ok_or_else(bad)?;
        if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        p.parse::<i64>().map_err(|_| bad())
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (num(dp.next(), 4)?, num(dp.next(), 2)?, num(dp.next(), 2)?);
    let mut tp = time.split(':');
    let (h, mi, se) = (num(tp.next(), 2)?, num(tp.next(), 2)?, num(tp.next(), 2)?);
    if dp.next().is_some() || tp.next().is_some() {
        return Err(bad());
    }
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59
    {
        return Err(bad());
    }
    Ok(((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + se * 1000)
}

/// Formats ms since epoch as `yyyy-mm-dd HH:MM:SS` (UTC).
pub fn format_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
