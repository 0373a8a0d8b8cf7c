//! A small, chrono-free civil calendar: timestamps are `i64` milliseconds since
//! 1970-01-01 00:00:00 of a *naive* wall clock.
//!
//! The accounting core never reads a clock; every function takes the time as an argument.
//! There is no time zone: the operations manual states every time in the platform's local
//! time (e.g. "10 月 19 日 11 点"), so callers pass local wall-clock time encoded as if it were
//! UTC. Day, hour and month arithmetic is then exact and free of daylight-saving effects.
//!
//! Month arithmetic follows the manual's subscription periods (§1.4.5.1.2: "开始时间：10 月 19
//! 日 11 点，结束时间为：11 月 19 日 11 点"): adding `n` months keeps the day of month and the
//! time of day; a day that does not exist in the target month is clamped to its last day
//! (Jan 31 + 1 month = Feb 28/29).

use std::fmt;

/// Milliseconds since 1970-01-01 00:00:00 (naive local wall clock).
pub type Millis = i64;

/// Milliseconds in one second.
pub const MS_PER_SECOND: i64 = 1_000;
/// Milliseconds in one minute.
pub const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
/// Milliseconds in one hour.
pub const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
/// Milliseconds in one day.
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// Smallest supported year.
pub const MIN_YEAR: i32 = 1970;
/// Largest supported year.
pub const MAX_YEAR: i32 = 9999;

/// Why a date or time was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// The text is not `YYYY-MM-DD[( |T)HH:MM[:SS]]`.
    #[error("cannot parse time {0:?} (expected YYYY-MM-DD[ HH:MM[:SS]])")]
    Parse(String),
    /// A field is out of range (month 13, day 31 in April, year outside 1970..=9999).
    #[error("invalid civil time: {0}")]
    Invalid(String),
    /// A timestamp lies outside the supported years.
    #[error("timestamp {0} is outside the supported range")]
    OutOfRange(i64),
}

/// A calendar date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilDateTime {
    /// Year, 1970..=9999.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month, 1..=31.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
}

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1..=12) of `year`; 0 for an invalid month.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl CivilDateTime {
    /// Builds a checked civil time.
    pub fn new(
        year: i32,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Result<Self, TimeError> {
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
            return Err(TimeError::Invalid(format!("year {year}")));
        }
        if !(1..=12).contains(&month) {
            return Err(TimeError::Invalid(format!("month {month}")));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(TimeError::Invalid(format!(
                "day {day} of {year}-{month:02}"
            )));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimeError::Invalid(format!(
                "time {hour:02}:{minute:02}:{second:02}"
            )));
        }
        Ok(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// Milliseconds since the epoch.
    pub fn to_millis(&self) -> Millis {
        days_from_civil(self.year, self.month, self.day) * MS_PER_DAY
            + i64::from(self.hour) * MS_PER_HOUR
            + i64::from(self.minute) * MS_PER_MINUTE
            + i64::from(self.second) * MS_PER_SECOND
    }

    /// The civil time of a timestamp (sub-second part dropped).
    pub fn from_millis(ms: Millis) -> Result<Self, TimeError> {
        let days = ms.div_euclid(MS_PER_DAY);
        let rem = ms.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let year = i32::try_from(y).map_err(|_| TimeError::OutOfRange(ms))?;
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
            return Err(TimeError::OutOfRange(ms));
        }
        Ok(Self {
            year,
            month: m,
            day: d,
            hour: (rem / MS_PER_HOUR) as u8,
            minute: ((rem % MS_PER_HOUR) / MS_PER_MINUTE) as u8,
            second: ((rem % MS_PER_MINUTE) / MS_PER_SECOND) as u8,
        })
    }

    /// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DDTHH:MM` or either with `:SS`.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let err = || TimeError::Parse(text.to_string());
        let t = text.trim();
        if t.len() > 32 {
            return Err(err());
        }
        let (date, time) = match t.find([' ', 'T']) {
            Some(i) => (&t[..i], Some(t[i + 1..].trim())),
            None => (t, None),
        };
        let mut dp = date.split('-');
        let year: i32 = dp.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
        let month: u8 = dp.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
        let day: u8 = dp.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
        if dp.next().is_some() {
            return Err(err());
        }
        let (mut hour, mut minute, mut second) = (0u8, 0u8, 0u8);
        if let Some(time) = time {
            let mut tp = time.split(':');
            hour = tp.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
            minute = tp.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
            if let Some(s) = tp.next() {
                second = s.parse().map_err(|_| err())?;
            }
            if tp.next().is_some() {
                return Err(err());
            }
        }
        Self::new(year, month, day, hour, minute, second)
    }
}

impl fmt::Display for CivilDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Parses a civil time straight to milliseconds.
pub fn parse_millis(text: &str) -> Result<Millis, TimeError> {
    CivilDateTime::parse(text).map(|c| c.to_millis())
}

/// Formats milliseconds as `YYYY-MM-DD HH:MM:SS` (or the raw number when out of range).
pub fn format_millis(ms: Millis) -> String {
    match CivilDateTime::from_millis(ms) {
        Ok(c) => c.to_string(),
        Err(_) => format!("@{ms}"),
    }
}

/// `ts` plus `months` calendar months, keeping day and time of day, clamping the day to the
/// end of the target month.
pub fn add_months(ts: Millis, months: i64) -> Result<Millis, TimeError> {
    let c = CivilDateTime::from_millis(ts)?;
    let sub_second = ts.rem_euclid(MS_PER_SECOND);
    let index = i64::from(c.year) * 12 + i64::from(c.month) - 1 + months;
    let year = i32::try_from(index.div_euclid(12)).map_err(|_| TimeError::OutOfRange(ts))?;
    let month = (index.rem_euclid(12) + 1) as u8;
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return Err(TimeError::OutOfRange(ts));
    }
    let day = c.day.min(days_in_month(year, month));
    let out = CivilDateTime::new(year, month, day, c.hour, c.minute, c.second)?;
    Ok(out.to_millis() + sub_second)
}

/// The first instant (00:00:00 on day 1) of the calendar month containing `ts`.
pub fn month_start(ts: Millis) -> Result<Millis, TimeError> {
    let c = CivilDateTime::from_millis(ts)?;
    Ok(CivilDateTime::new(c.year, c.month, 1, 0, 0, 0)?.to_millis())
}

/// `(year, month)` of the calendar month containing `ts`.
pub fn year_month(ts: Millis) -> Result<(i32, u8), TimeError> {
    let c = CivilDateTime::from_millis(ts)?;
    Ok((c.year, c.month))
}

/// Whole units of `unit` needed to cover `span` (a started unit counts whole); 0 when
/// `span <= 0`.
pub fn ceil_units(span: i64, unit: i64) -> i64 {
    if span <= 0 || unit <= 0 {
        0
    } else {
        span / unit + i64::from(span % unit != 0)
    }
}

/// The first whole hour at or after `ts`.
pub fn ceil_hour(ts: Millis) -> Millis {
    ts.div_euclid(MS_PER_HOUR) * MS_PER_HOUR
        + if ts.rem_euclid(MS_PER_HOUR) == 0 {
            0
        } else {
            MS_PER_HOUR
        }
}

/// The last whole hour at or before `ts`.
pub fn floor_hour(ts: Millis) -> Millis {
    ts.div_euclid(MS_PER_HOUR) * MS_PER_HOUR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let ms = parse_millis(input).expect("parse");
        assert_eq!(format_millis(ms), expected, "{input}");
    }

    #[test]
    fn parses_and_formats() {
        check("1970-01-01", "1970-01-01 00:00:00");
        check("2021-10-19 11:00", "2021-10-19 11:00:00");
        check("2021-11-12T12:12:12", "2021-11-12 12:12:12");
        check("2024-02-29 23:59:59", "2024-02-29 23:59:59");
        assert_eq!(parse_millis("1970-01-02").expect("p"), MS_PER_DAY);
        for bad in [
            "2021-13-01",
            "2021-02-29",
            "2021-10-19 24:00",
            "x",
            "2021-10",
            "1969-12-31",
            "2021-10-19 11:00:00:00",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn month_arithmetic_matches_the_manual() {
        let add =
            |s: &str, n: i64| format_millis(add_months(parse_millis(s).expect("p"), n).expect("a"));
        assert_eq!(add("2021-10-19 11:00", 1), "2021-11-19 11:00:00");
        assert_eq!(add("2021-10-19 11:00", 2), "2021-12-19 11:00:00");
        assert_eq!(add("2021-01-31", 1), "2021-02-28 00:00:00");
        assert_eq!(add("2024-01-31", 1), "2024-02-29 00:00:00");
        assert_eq!(add("2021-12-15", 1), "2022-01-15 00:00:00");
        assert_eq!(add("2021-03-31", -1), "2021-02-28 00:00:00");
    }

    #[test]
    fn round_trips_every_day_for_decades() {
        let mut ms = 0;
        while ms < parse_millis("2100-01-01").expect("p") {
            let c = CivilDateTime::from_millis(ms).expect("c");
            assert_eq!(c.to_millis(), ms);
            ms += MS_PER_DAY + 3_723_000;
        }
    }

    #[test]
    fn hour_helpers() {
        let t = parse_millis("2021-11-12 12:12:12").expect("p");
        assert_eq!(format_millis(ceil_hour(t)), "2021-11-12 13:00:00");
        assert_eq!(format_millis(floor_hour(t)), "2021-11-12 12:00:00");
        assert_eq!(ceil_hour(floor_hour(t)), floor_hour(t));
        assert_eq!(ceil_units(1, MS_PER_DAY), 1);
        assert_eq!(ceil_units(MS_PER_DAY, MS_PER_DAY), 1);
        assert_eq!(ceil_units(MS_PER_DAY + 1, MS_PER_DAY), 2);
        assert_eq!(ceil_units(0, MS_PER_DAY), 0);
        assert_eq!(ceil_units(-5, MS_PER_DAY), 0);
    }
}
