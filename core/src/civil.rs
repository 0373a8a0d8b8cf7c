//! Civil (wall-clock) time and Tessera's one time-zone decision, on the `jiff` calendar.
//!
//! # The decision
//!
//! - **Instants are UTC.** Every stored or transmitted timestamp (`Clock::now_ms`, job times,
//!   ledger and audit times) is milliseconds since 1970-01-01T00:00:00Z.
//! - **Calendars are in one configured zone.** Billing periods (the month a bill line belongs
//!   to, a month's end and its late window), prepaid terms (`add n months`), and licence
//!   validity windows (T/AI 123.12 `startDate` / `endDate`, which carry no offset) are civil
//!   times in the operator's configured [`Zone`]. The default is UTC+08:00, the zone of the
//!   source documents (the operations manual states times such as "10 月 19 日 11 点" in
//!   Beijing time). `tessera serve --time-zone` sets it (`+08:00`, `UTC`, or an IANA name such
//!   as `Europe/Berlin`).
//! - **The pure billing rules compute on local milliseconds**: a civil time of the zone encoded
//!   as if it were UTC ([`LocalMillis`]). Day, hour and month arithmetic on them is exact and
//!   free of daylight-saving effects; [`Zone::local`] and [`Zone::instant`] convert at the
//!   boundary. A test or scenario file that states times "as the manual does" uses local
//!   milliseconds throughout.
//!
//! Month arithmetic follows the manual's subscription periods (§1.4.5.1.2: "开始时间：10 月 19
//! 日 11 点，结束时间为：11 月 19 日 11 点"): adding `n` months keeps the day of month and the
//! time of day; a day that does not exist in the target month is clamped to its last day
//! (Jan 31 + 1 month = Feb 28/29), which is also `jiff`'s rule.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};
use jiff::{Span, Timestamp};

/// Milliseconds since 1970-01-01 00:00:00: UTC for instants, the zone's wall clock for
/// [`LocalMillis`].
pub type Millis = i64;

/// A civil time of the configured zone encoded as milliseconds "as if it were UTC".
pub type LocalMillis = i64;

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

/// Longest civil-time text accepted.
const MAX_TEXT_BYTES: usize = 32;

/// Why a date, time or zone was refused.
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
    /// The zone is neither an offset (`+08:00`), `UTC`, nor a known IANA name.
    #[error("unknown time zone {0:?} (expected +HH:MM, UTC, or an IANA name like Asia/Shanghai)")]
    Zone(String),
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
    i16::try_from(year)
        .ok()
        .and_then(|y| Date::new(y, 1, 1).ok())
        .is_some_and(|d| d.in_leap_year())
}

/// Number of days in `month` (1..=12) of `year`; 0 for an invalid month or year.
pub fn days_in_month(year: i32, month: u8) -> u8 {
    let (Ok(y), Ok(m)) = (i16::try_from(year), i8::try_from(month)) else {
        return 0;
    };
    Date::new(y, m, 1)
        .map(|d| u8::try_from(d.days_in_month()).unwrap_or(0))
        .unwrap_or(0)
}

fn small(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
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

    fn to_jiff(self) -> Result<DateTime, TimeError> {
        let bad = || TimeError::Invalid(self.to_string());
        let year = i16::try_from(self.year).map_err(|_| bad())?;
        let to_i8 = |v: u8| i8::try_from(v).map_err(|_| bad());
        DateTime::new(
            year,
            to_i8(self.month)?,
            to_i8(self.day)?,
            to_i8(self.hour)?,
            to_i8(self.minute)?,
            to_i8(self.second)?,
            0,
        )
        .map_err(|_| bad())
    }

    fn from_jiff(dt: DateTime) -> Result<Self, TimeError> {
        Self::new(
            i32::from(dt.year()),
            small(i64::from(dt.month())),
            small(i64::from(dt.day())),
            small(i64::from(dt.hour())),
            small(i64::from(dt.minute())),
            small(i64::from(dt.second())),
        )
    }

    /// Milliseconds since the epoch of this civil time read as UTC.
    ///
    /// Errors: `TimeError::Invalid` when a field is out of range (the fields are public, so a
    /// value not built by [`CivilDateTime::new`] may be).
    pub fn to_millis(&self) -> Result<Millis, TimeError> {
        let dt = self.to_jiff()?;
        TimeZone::UTC
            .to_timestamp(dt)
            .map(|ts| ts.as_millisecond())
            .map_err(|_| TimeError::Invalid(self.to_string()))
    }

    /// The civil time of a timestamp read as UTC (sub-second part dropped).
    pub fn from_millis(ms: Millis) -> Result<Self, TimeError> {
        let ts = Timestamp::from_millisecond(ms).map_err(|_| TimeError::OutOfRange(ms))?;
        let dt = TimeZone::UTC.to_datetime(ts);
        if !(MIN_YEAR..=MAX_YEAR).contains(&i32::from(dt.year())) {
            return Err(TimeError::OutOfRange(ms));
        }
        Self::from_jiff(dt)
    }

    /// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DDTHH:MM` or either with `:SS`
    /// (ISO 8601 / RFC 3339 civil forms; fields zero-padded).
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let err = || TimeError::Parse(text.to_string());
        let t = text.trim();
        if t.len() > MAX_TEXT_BYTES {
            return Err(err());
        }
        // jiff's ISO 8601 parser accepts more forms (fractions, offsets); refuse those so the
        // accepted language stays exactly the documented one.
        let shape_ok = t.bytes().enumerate().all(|(i, b)| match i {
            10 => b == b' ' || b == b'T',
            4 | 7 => b == b'-',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        }) && matches!(t.len(), 10 | 16 | 19);
        if !shape_ok {
            return Err(err());
        }
        let dt: DateTime = t.replacen(' ', "T", 1).parse().map_err(|_| {
            // Well-shaped but impossible (Feb 30, hour 24): say which.
            TimeError::Invalid(t.to_string())
        })?;
        Self::from_jiff(dt)
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

/// Parses a civil time straight to (local) milliseconds.
pub fn parse_millis(text: &str) -> Result<Millis, TimeError> {
    CivilDateTime::parse(text)?.to_millis()
}

/// Formats (local) milliseconds as `YYYY-MM-DD HH:MM:SS` (or `@ms` when out of range).
pub fn format_millis(ms: Millis) -> String {
    match CivilDateTime::from_millis(ms) {
        Ok(c) => c.to_string(),
        Err(_) => format!("@{ms}"),
    }
}

/// `ts` plus `months` calendar months, keeping day and time of day, clamping the day to the
/// end of the target month; the sub-second part is kept.
pub fn add_months(ts: LocalMillis, months: i64) -> Result<LocalMillis, TimeError> {
    let start = CivilDateTime::from_millis(ts)?.to_jiff()?;
    let span = Span::new()
        .try_months(months)
        .map_err(|_| TimeError::OutOfRange(ts))?;
    let out = start
        .checked_add(span)
        .map_err(|_| TimeError::OutOfRange(ts))?;
    let out = CivilDateTime::from_jiff(out).map_err(|_| TimeError::OutOfRange(ts))?;
    out.to_millis()?
        .checked_add(ts.rem_euclid(MS_PER_SECOND))
        .ok_or(TimeError::OutOfRange(ts))
}

/// The first instant (00:00:00 on day 1) of the calendar month containing `ts`.
pub fn month_start(ts: LocalMillis) -> Result<LocalMillis, TimeError> {
    let c = CivilDateTime::from_millis(ts)?;
    CivilDateTime::new(c.year, c.month, 1, 0, 0, 0)?.to_millis()
}

/// `(year, month)` of the calendar month containing `ts`.
pub fn year_month(ts: LocalMillis) -> Result<(i32, u8), TimeError> {
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
pub fn ceil_hour(ts: LocalMillis) -> LocalMillis {
    floor_hour(ts).saturating_add(if ts.rem_euclid(MS_PER_HOUR) == 0 {
        0
    } else {
        MS_PER_HOUR
    })
}

/// The last whole hour at or before `ts`.
pub fn floor_hour(ts: LocalMillis) -> LocalMillis {
    ts.div_euclid(MS_PER_HOUR).saturating_mul(MS_PER_HOUR)
}

/// The operator's calendar zone: where billing months, prepaid terms and licence validity
/// windows are reckoned. Default UTC+08:00 (see the module docs).
#[derive(Clone, PartialEq)]
pub struct Zone {
    tz: TimeZone,
    name: String,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self::fixed_hours(8)
    }
}

impl Zone {
    /// The name the default zone is written as.
    pub const DEFAULT_NAME: &'static str = "+08:00";

    /// Coordinated Universal Time.
    pub fn utc() -> Self {
        Self {
            tz: TimeZone::UTC,
            name: "UTC".into(),
        }
    }

    /// A fixed offset of whole hours east of UTC (-25 < hours < 26).
    pub fn fixed_hours(hours: i8) -> Self {
        let name = format!(
            "{}{:02}:00",
            if hours < 0 { '-' } else { '+' },
            hours.unsigned_abs()
        );
        Self {
            tz: TimeZone::fixed(Offset::constant(hours.clamp(-25, 25))),
            name,
        }
    }

    /// Parses `UTC` / `Z`, an offset `+HH:MM` / `-HH:MM` / `+HH` (at most ±14:00), or an IANA name
    /// (`Asia/Shanghai`; the tz database is bundled, so names work on any machine).
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let t = text.trim();
        let err = || TimeError::Zone(text.to_string());
        if t.is_empty() || t.len() > 64 {
            return Err(err());
        }
        if t.eq_ignore_ascii_case("utc") || t.eq_ignore_ascii_case("z") {
            return Ok(Self::utc());
        }
        if let Some(rest) = t.strip_prefix(['+', '-']) {
            let negative = t.starts_with('-');
            let (h, m) = rest.split_once(':').unwrap_or((rest, "00"));
            let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || !digits(m) {
                return Err(err());
            }
            let h: i32 = h.parse().map_err(|_| err())?;
            let m: i32 = m.parse().map_err(|_| err())?;
            // Real offsets lie within ±14:00 (UTC-12 .. UTC+14 in the tz database).
            if h > 14 || m > 59 || (h == 14 && m > 0) {
                return Err(err());
            }
            let secs = (h * 3600 + m * 60) * if negative { -1 } else { 1 };
            let offset = Offset::from_seconds(secs).map_err(|_| err())?;
            return Ok(Self {
                tz: TimeZone::fixed(offset),
                name: format!("{}{:02}:{:02}", if negative { '-' } else { '+' }, h, m),
            });
        }
        let tz = TimeZone::get(t).map_err(|_| err())?;
        Ok(Self {
            tz,
            name: t.to_string(),
        })
    }

    /// The zone as configured (`+08:00`, `UTC`, `Asia/Shanghai`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local wall-clock time of the UTC instant `instant_ms`, as [`LocalMillis`].
    pub fn local(&self, instant_ms: Millis) -> Result<LocalMillis, TimeError> {
        let ts = Timestamp::from_millisecond(instant_ms)
            .map_err(|_| TimeError::OutOfRange(instant_ms))?;
        let offset_ms = i64::from(self.tz.to_offset(ts).seconds()) * MS_PER_SECOND;
        instant_ms
            .checked_add(offset_ms)
            .ok_or(TimeError::OutOfRange(instant_ms))
    }

    /// The UTC instant of the local wall-clock time `local_ms`. A wall-clock time that a
    /// daylight-saving change skips or repeats is resolved as RFC 9557 "compatible" does
    /// (later offset for a gap, earlier for a fold).
    pub fn instant(&self, local_ms: LocalMillis) -> Result<Millis, TimeError> {
        let c = CivilDateTime::from_millis(local_ms)?;
        let dt = c.to_jiff()?;
        let ts = self
            .tz
            .to_timestamp(dt)
            .map_err(|_| TimeError::OutOfRange(local_ms))?;
        ts.as_millisecond()
            .checked_add(local_ms.rem_euclid(MS_PER_SECOND))
            .ok_or(TimeError::OutOfRange(local_ms))
    }

    /// Parses a civil time of this zone (`YYYY-MM-DD[ HH:MM[:SS]]`) to a UTC instant.
    pub fn parse_instant(&self, text: &str) -> Result<Millis, TimeError> {
        self.instant(parse_millis(text)?)
    }

    /// Formats a UTC instant as RFC 3339 in this zone, with its offset at that instant
    /// (`2026-11-30T20:36:31+08:00`); an instant outside the calendar's range is written
    /// `@<ms>`.
    pub fn format_rfc3339(&self, instant_ms: Millis) -> String {
        match Timestamp::from_millisecond(instant_ms) {
            Ok(ts) => ts
                .to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            Err(_) => format!("@{instant_ms}"),
        }
    }

    /// Formats a UTC instant as this zone's `YYYY-MM-DD HH:MM:SS`.
    pub fn format_instant(&self, instant_ms: Millis) -> String {
        match self.local(instant_ms) {
            Ok(local) => format_millis(local),
            Err(_) => format!("@{instant_ms}"),
        }
    }
}

impl FromStr for Zone {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_carries_the_zone_offset() {
        let ms = 1_764_506_191_000; // 2025-11-30T12:36:31Z
        assert_eq!(
            Zone::default().format_rfc3339(ms),
            "2025-11-30T20:36:31+08:00"
        );
        assert_eq!(Zone::utc().format_rfc3339(ms), "2025-11-30T12:36:31+00:00");
        let ny = Zone::parse("America/New_York").expect("iana");
        assert_eq!(ny.format_rfc3339(ms), "2025-11-30T07:36:31-05:00");
    }

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
        check(" 2024-02-29 ", "2024-02-29 00:00:00");
        assert_eq!(parse_millis("1970-01-02").expect("p"), MS_PER_DAY);
        for bad in [
            "2021-13-01",
            "2021-02-29",
            "2021-10-19 24:00",
            "x",
            "",
            "2021-10",
            "1969-12-31",
            "2021-10-19 11:00:00:00",
            "2021-10-19 11:00:00.5",
            "2021-10-19T11:00:00+08:00",
            "2021-1-19",
            "+2021-01-19",
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
        assert_eq!(add("2021-03-31", 0), "2021-03-31 00:00:00");
        let t = parse_millis("2021-03-31").expect("p") + 250;
        assert_eq!(add_months(t, 1).expect("a") % 1000, 250);
        assert!(add_months(parse_millis("9999-12-01").expect("p"), 1).is_err());
        assert!(add_months(0, -1).is_err());
    }

    #[test]
    fn round_trips_every_day_for_decades() {
        let mut ms = 0;
        while ms < parse_millis("2100-01-01").expect("p") {
            let c = CivilDateTime::from_millis(ms).expect("c");
            assert_eq!(c.to_millis(), Ok(ms - ms.rem_euclid(MS_PER_SECOND)));
            ms += MS_PER_DAY + 3_723_000;
        }
    }

    #[test]
    fn calendar_facts() {
        assert!(is_leap_year(2024) && !is_leap_year(1900) && is_leap_year(2000));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2023, 2), 28);
        assert_eq!(days_in_month(2023, 13), 0);
        assert_eq!(
            year_month(parse_millis("2023-12-31 23:59:59").expect("p")),
            Ok((2023, 12))
        );
        assert_eq!(
            format_millis(month_start(parse_millis("2023-12-31 23:59").expect("p")).expect("m")),
            "2023-12-01 00:00:00"
        );
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

    #[test]
    fn zones_convert_at_the_boundary() {
        let z = Zone::default();
        assert_eq!(z.name(), "+08:00");
        // 2026-11-30 16:30 UTC is 2026-12-01 00:30 in Beijing: December's bill.
        let instant = Zone::utc().parse_instant("2026-11-30 16:30").expect("p");
        let local = z.local(instant).expect("l");
        assert_eq!(format_millis(local), "2026-12-01 00:30:00");
        assert_eq!(year_month(local), Ok((2026, 12)));
        assert_eq!(z.instant(local), Ok(instant));
        assert_eq!(z.format_instant(instant), "2026-12-01 00:30:00");
        assert_eq!(z.parse_instant("2026-12-01 00:30"), Ok(instant));
        for (text, name) in [
            ("UTC", "UTC"),
            ("z", "UTC"),
            ("+05:30", "+05:30"),
            ("-03", "-03:00"),
            ("Asia/Shanghai", "Asia/Shanghai"),
        ] {
            assert_eq!(Zone::parse(text).expect(text).name(), name);
        }
        let sh = Zone::parse("Asia/Shanghai").expect("sh");
        assert_eq!(sh.local(instant), Ok(local));
        for bad in [
            "",
            "+8",
            "+08:60",
            "+26:00",
            "+25:00",
            "+14:30",
            "Mars/Olympus",
            "08:00",
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daylight_saving_zones_resolve_gaps_and_folds() {
        let berlin = Zone::parse("Europe/Berlin").expect("z");
        // 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 → 03:00).
        let gap = berlin.parse_instant("2026-03-29 02:30").expect("gap");
        assert_eq!(Zone::utc().format_instant(gap), "2026-03-29 01:30:00");
        // Round trip away from the change.
        let t = berlin.parse_instant("2026-07-01 12:00").expect("p");
        assert_eq!(berlin.format_instant(t), "2026-07-01 12:00:00");
        assert_eq!(Zone::utc().format_instant(t), "2026-07-01 10:00:00");
    }
}
