//! Prepaid monthly subscriptions (包周期, licence terms): subscribe, renew inside and outside
//! the term (frozen or not), unsubscribe with make-up and refund — operations manual §1.4.5.1
//! and §1.4.4.1.3–1.4.4.1.4.
//!
//! # Rules (manual)
//!
//! * Prepaid products are bought by the month at the monthly price (月单价 × 月数, §1.4.5.1.1).
//!   A term starting 10-19 11:00 for one month ends 11-19 11:00.
//! * **Renewal inside the term** continues from the old end, no other charge (§1.4.5.1.2 (1)).
//! * **Overdue use** (renewal or unsubscription after the end, resource not frozen at the
//!   end) is made up by the day: `daily price × days`, a started day counts whole, daily price
//!   = monthly price / days, at the original price without discounts (§1.4.5.1.2 (2)–(3)).
//!   The overdue time runs from the old end to the freeze time if the resource was frozen,
//!   else to the renewal / unsubscription time. A resource frozen exactly at its end owes
//!   nothing (§1.4.5.1.2 (4)).
//! * The new term of an overdue renewal starts at the later of the make-up end and the
//!   renewal time — this single rule reproduces all five scenarios of §1.4.5.1.2.1–5 (new
//!   start = old end; make-up end 11-20 11:00; renewal time 11-19 15:00 when frozen at the end;
//!   renewal 11-20 12:00 after make-up end; make-up end 11-20 11:00 before renewal 10:00).
//! * **Unsubscription**: months used are started month periods counted from the term's start
//!   ("月份里只要用了 1 天也算用了", non-natural months); refund = money paid − monthly price
//!   × months used, never below 0 (§1.4.5.1.3 (1), §1.4.4.1.4: 100 − 300 < 0 → 0).
//!
//! # Interpretation choices
//!
//! * **Which month's days** ("天数为上月周期实际天数", the note under §1.4.5.1.2): the
//!   default [`DailyPriceBasis::PreviousTermMonth`] is the note's rule, the actual days of the
//!   one-month period that ends at the old end (term 2026-01-15 → 2026-02-15: 31 days, so one
//!   overdue day at 310 a month is 10.00). The worked figures (`300/30 = 10` for make-ups that
//!   start on 11-19, after a 31-day term) instead match
//!   [`DailyPriceBasis::OverdueMonthPeriod`], the one-month period that starts at the old end;
//!   it and the calendar month of the overdue start
//!   ([`DailyPriceBasis::CalendarMonthOfOverdue`]) remain named options, and the tests of the
//!   worked scenarios name the reading they use.
//! * The make-up is rounded once: `monthly × days / basis days`, half away from zero, to a
//!   whole micro.
//! * "Money paid" for the refund is the cash and credit paid for the terms (coupons, discounts
//!   and vouchers are never refunded, "实付金额（实际现金）"); make-up payments are not part of
//!   it. Months used and money paid are summed over all terms.
//! * Discounts on make-ups are off unless `makeup_discount` (§2.9.3.8 switch) is set, which
//!   the caller applies; this module always quotes the original price.
//! * The manual's "订购金额：300*1=30 元" and "300*1=600 元" are typos for 300.

use crate::civil::{MS_PER_DAY, Millis, TimeError, add_months, days_in_month, year_month};
use crate::money::{Micros, MoneyError, mul_div_round_i64};

/// Most months in one term.
pub const MAX_MONTHS: u32 = 120;
/// Most terms (order + renewals) in one subscription.
pub const MAX_TERMS: usize = 240;

/// Why a subscription operation was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SubscriptionError {
    /// Months must be 1..=[`MAX_MONTHS`].
    #[error("months must be 1..={MAX_MONTHS}, got {0}")]
    InvalidMonths(u32),
    /// Monthly price must not be negative; units must be positive.
    #[error("invalid price or units")]
    InvalidPrice,
    /// The subscription was unsubscribed.
    #[error("subscription {0} is closed")]
    Closed(String),
    /// The operation is earlier than the subscription's start.
    #[error("operation at {at} precedes the subscription start {start}")]
    BeforeStart {
        /// Operation time.
        at: Millis,
        /// Start.
        start: Millis,
    },
    /// Too many terms.
    #[error("too many terms (max {MAX_TERMS})")]
    TooManyTerms,
    /// A fixed day basis of 0.
    #[error("daily price basis must be 1..=31 days")]
    InvalidBasis,
    /// Calendar arithmetic failed.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// Money arithmetic failed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// Which month's days divide the monthly price of an overdue make-up (manual §1.4.5.1.2).
///
/// The default is the manual's rule, the note under §1.4.5.1.2: "天数为上月周期实际天数", the
/// number of days is the actual number of days of the previous month's period, i.e. of the
/// one-month period that ends at the old end ([`DailyPriceBasis::PreviousTermMonth`]): a term
/// 2026-01-15 10:00 → 2026-02-15 10:00 at 310 a month renewed 2026-02-16 09:00 owes
/// 1 day × 310 / 31 = 10.00. The other readings are kept as named options; the manual's own
/// worked example (§1.4.5.1.2.2, "月单价/30") matches [`DailyPriceBasis::OverdueMonthPeriod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DailyPriceBasis {
    /// Days of the one-month period ending at the old end (the note's "上月周期"; default).
    #[default]
    PreviousTermMonth,
    /// Days of the one-month period starting at the old end (the worked example's 30).
    OverdueMonthPeriod,
    /// Days of the calendar month in which the overdue time starts.
    CalendarMonthOfOverdue,
    /// A fixed number of days (1..=31).
    Fixed(u8),
}

impl DailyPriceBasis {
    /// The option's name: `previous_term_month`, `overdue_month_period`,
    /// `calendar_month_of_overdue` or `fixed_N`.
    pub fn name(self) -> String {
        match self {
            Self::PreviousTermMonth => "previous_term_month".into(),
            Self::OverdueMonthPeriod => "overdue_month_period".into(),
            Self::CalendarMonthOfOverdue => "calendar_month_of_overdue".into(),
            Self::Fixed(d) => format!("fixed_{d}"),
        }
    }
}

impl std::fmt::Display for DailyPriceBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for DailyPriceBasis {
    type Err = SubscriptionError;

    /// Parses [`DailyPriceBasis::name`]; anything else (or `fixed_0`, `fixed_32`) is
    /// [`SubscriptionError::InvalidBasis`].
    fn from_str(s: &str) -> Result<Self, SubscriptionError> {
        Ok(match s {
            "previous_term_month" => Self::PreviousTermMonth,
            "overdue_month_period" => Self::OverdueMonthPeriod,
            "calendar_month_of_overdue" => Self::CalendarMonthOfOverdue,
            other => match other
                .strip_prefix("fixed_")
                .and_then(|d| d.parse::<u8>().ok())
            {
                Some(d) if (1..=31).contains(&d) => Self::Fixed(d),
                _ => return Err(SubscriptionError::InvalidBasis),
            },
        })
    }
}

/// Why a term exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermKind {
    /// The first order.
    Order,
    /// A renewal.
    Renewal,
}

/// One paid term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// Order or renewal.
    pub kind: TermKind,
    /// Start.
    pub start: Millis,
    /// End (start + months).
    pub end: Millis,
    /// Months bought.
    pub months: u32,
    /// Original price of the term (monthly × units × months).
    pub original_micros: Micros,
    /// Refundable money paid for it (cash + credit).
    pub refundable_paid_micros: Micros,
}

/// Subscription state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// Running (possibly overdue or frozen).
    Active,
    /// Unsubscribed at the given time.
    Closed(Millis),
}

/// A prepaid monthly subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Id.
    pub id: String,
    /// Customer.
    pub customer: String,
    /// Product.
    pub product: String,
    /// Monthly price per resource (original, no discounts).
    pub monthly_price_micros: Micros,
    /// Resources (台).
    pub units: u64,
    /// Terms, in order.
    pub terms: Vec<Term>,
    /// When the resource was frozen, if it is (automatically at the end, or manually later).
    pub frozen_at: Option<Millis>,
    /// Active or closed.
    pub status: SubscriptionStatus,
}

/// A make-up charge for overdue use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MakeUp {
    /// Old end.
    pub start: Millis,
    /// Old end + whole days.
    pub end: Millis,
    /// Days charged (a started day counts whole).
    pub days: u32,
    /// Days the monthly price is divided by.
    pub basis_days: u8,
    /// Amount (original price).
    pub amount_micros: Micros,
}

/// What a renewal costs and where the new term lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalQuote {
    /// Make-up for overdue use, if any.
    pub makeup: Option<MakeUp>,
    /// New term start.
    pub new_start: Millis,
    /// New term end.
    pub new_end: Millis,
    /// Months renewed.
    pub months: u32,
    /// Original price of the new term.
    pub renewal_original_micros: Micros,
}

/// What an unsubscription costs or returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeQuote {
    /// Make-up for overdue use, if any.
    pub makeup: Option<MakeUp>,
    /// Months used (started month periods) over all terms.
    pub months_used: u32,
    /// Months bought over all terms.
    pub months_total: u32,
    /// Refundable money paid over all terms.
    pub refundable_paid_micros: Micros,
    /// Refund: paid − monthly × units × months used, at least 0.
    pub refund_micros: Micros,
}

fn check_months(months: u32) -> Result<(), SubscriptionError> {
    if months == 0 || months > MAX_MONTHS {
        return Err(SubscriptionError::InvalidMonths(months));
    }
    Ok(())
}

impl Subscription {
    /// Opens a subscription with its first term at `start`.
    pub fn new(
        id: &str,
        customer: &str,
        product: &str,
        monthly_price_micros: Micros,
        units: u64,
        start: Millis,
        months: u32,
    ) -> Result<Self, SubscriptionError> {
        check_months(months)?;
        if monthly_price_micros < 0 || units == 0 {
            return Err(SubscriptionError::InvalidPrice);
        }
        let mut s = Self {
            id: id.to_string(),
            customer: customer.to_string(),
            product: product.to_string(),
            monthly_price_micros,
            units,
            terms: Vec::new(),
            frozen_at: None,
            status: SubscriptionStatus::Active,
        };
        let original = s.price_for(months)?;
        s.terms.push(Term {
            kind: TermKind::Order,
            start,
            end: add_months(start, i64::from(months))?,
            months,
            original_micros: original,
            refundable_paid_micros: 0,
        });
        Ok(s)
    }

    /// Monthly price × units.
    pub fn monthly_total_micros(&self) -> Result<Micros, SubscriptionError> {
        let units = i64::try_from(self.units).map_err(|_| MoneyError::Overflow)?;
        Ok(self
            .monthly_price_micros
            .checked_mul(units)
            .ok_or(MoneyError::Overflow)?)
    }

    /// Original price of `months` months.
    pub fn price_for(&self, months: u32) -> Result<Micros, SubscriptionError> {
        Ok(self
            .monthly_total_micros()?
            .checked_mul(i64::from(months))
            .ok_or(MoneyError::Overflow)?)
    }

    /// First start.
    pub fn start(&self) -> Millis {
        self.terms.first().map_or(0, |t| t.start)
    }

    /// Current end.
    pub fn end(&self) -> Millis {
        self.terms.last().map_or(0, |t| t.end)
    }

    /// Records the refundable money paid for the latest term.
    ///
    /// # Errors
    /// [`MoneyError::Overflow`] if the term's total would overflow.
    pub fn record_paid(&mut self, refundable_micros: Micros) -> Result<(), SubscriptionError> {
        if let Some(t) = self.terms.last_mut() {
            t.refundable_paid_micros = t
                .refundable_paid_micros
                .checked_add(refundable_micros)
                .ok_or(MoneyError::Overflow)?;
        }
        Ok(())
    }

    /// Marks the resource frozen at `at` (automatic freeze at the end, or a later manual one).
    pub fn freeze(&mut self, at: Millis) {
        if self.frozen_at.is_none() {
            self.frozen_at = Some(at);
        }
    }

    fn check_open(&self, at: Millis) -> Result<(), SubscriptionError> {
        if let SubscriptionStatus::Closed(_) = self.status {
            return Err(SubscriptionError::Closed(self.id.clone()));
        }
        if at < self.start() {
            return Err(SubscriptionError::BeforeStart {
                at,
                start: self.start(),
            });
        }
        Ok(())
    }

    /// The make-up owed if the subscription is renewed or ended at `at`.
    pub fn makeup_at(
        &self,
        at: Millis,
        basis: DailyPriceBasis,
    ) -> Result<Option<MakeUp>, SubscriptionError> {
        let end = self.end();
        let overdue_end = match self.frozen_at {
            Some(f) => f.min(at),
            None => at,
        };
        let span = overdue_end - end;
        if span <= 0 {
            return Ok(None);
        }
        let days = span / MS_PER_DAY + i64::from(span % MS_PER_DAY != 0);
        let basis_days = match basis {
            DailyPriceBasis::OverdueMonthPeriod => ((add_months(end, 1)? - end) / MS_PER_DAY) as u8,
            DailyPriceBasis::PreviousTermMonth => ((end - add_months(end, -1)?) / MS_PER_DAY) as u8,
            DailyPriceBasis::CalendarMonthOfOverdue => {
                let (y, m) = year_month(end)?;
                days_in_month(y, m)
            }
            DailyPriceBasis::Fixed(d) => {
                if d == 0 || d > 31 {
                    return Err(SubscriptionError::InvalidBasis);
                }
                d
            }
        };
        let amount = mul_div_round_i64(self.monthly_total_micros()?, days, i64::from(basis_days))?;
        Ok(Some(MakeUp {
            start: end,
            end: end + days * MS_PER_DAY,
            days: u32::try_from(days).map_err(|_| MoneyError::Overflow)?,
            basis_days,
            amount_micros: amount,
        }))
    }

    /// Quotes a renewal of `months` at `at` (pure).
    pub fn quote_renewal(
        &self,
        months: u32,
        at: Millis,
        basis: DailyPriceBasis,
    ) -> Result<RenewalQuote, SubscriptionError> {
        self.check_open(at)?;
        check_months(months)?;
        if self.terms.len() >= MAX_TERMS {
            return Err(SubscriptionError::TooManyTerms);
        }
        let makeup = self.makeup_at(at, basis)?;
        let new_start = match makeup {
            Some(m) => m.end.max(at),
            // Inside the term: continue from the end. Frozen exactly at the end: from `at`.
            None => self.end().max(at),
        };
        Ok(RenewalQuote {
            makeup,
            new_start,
            new_end: add_months(new_start, i64::from(months))?,
            months,
            renewal_original_micros: self.price_for(months)?,
        })
    }

    /// Applies a quoted renewal: appends the term and thaws the resource.
    pub fn apply_renewal(&mut self, q: &RenewalQuote) -> Result<(), SubscriptionError> {
        if let SubscriptionStatus::Closed(_) = self.status {
            return Err(SubscriptionError::Closed(self.id.clone()));
        }
        if self.terms.len() >= MAX_TERMS {
            return Err(SubscriptionError::TooManyTerms);
        }
        self.terms.push(Term {
            kind: TermKind::Renewal,
            start: q.new_start,
            end: q.new_end,
            months: q.months,
            original_micros: q.renewal_original_micros,
            refundable_paid_micros: 0,
        });
        self.frozen_at = None;
        Ok(())
    }

    /// Months of all terms started by `at`.
    pub fn months_used(&self, at: Millis) -> Result<u32, SubscriptionError> {
        let mut used = 0;
        for t in &self.terms {
            let mut k = 0;
            while k < t.months && add_months(t.start, i64::from(k))? < at {
                k += 1;
            }
            used = u32::checked_add(used, k).ok_or(MoneyError::Overflow)?;
        }
        Ok(used)
    }

    /// Quotes an unsubscription at `at` (pure).
    pub fn quote_unsubscribe(
        &self,
        at: Millis,
        basis: DailyPriceBasis,
    ) -> Result<UnsubscribeQuote, SubscriptionError> {
        self.check_open(at)?;
        let makeup = self.makeup_at(at, basis)?;
        let months_used = self.months_used(at)?;
        let months_total = self
            .terms
            .iter()
            .try_fold(0u32, |acc, t| acc.checked_add(t.months))
            .ok_or(MoneyError::Overflow)?;
        let paid = crate::ledger::checked_sum(self.terms.iter().map(|t| t.refundable_paid_micros))
            .map_err(|_| MoneyError::Overflow)?;
        let used_value = self.price_for(months_used)?;
        Ok(UnsubscribeQuote {
            makeup,
            months_used,
            months_total,
            refundable_paid_micros: paid,
            refund_micros: paid
                .checked_sub(used_value)
                .ok_or(MoneyError::Overflow)?
                .max(0),
        })
    }

    /// Closes the subscription.
    pub fn close(&mut self, at: Millis) {
        self.status = SubscriptionStatus::Closed(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::civil::{format_millis, parse_millis};

    const Y: i64 = 1_000_000;

    fn t(s: &str) -> Millis {
        parse_millis(s).expect("time")
    }

    fn sub(months: u32) -> Subscription {
        Subscription::new(
            "s",
            "alice",
            "drp",
            300 * Y,
            1,
            t("2021-10-19 11:00"),
            months,
        )
        .expect("sub")
    }

    /// `check_renewal(frozen_at, renew_at, (make-up days, make-up yuan, new start, new end))`.
    fn check_renewal(frozen: Option<&str>, at: &str, expected: (u32, i64, &str, &str)) {
        let mut s = sub(1);
        if let Some(f) = frozen {
            s.freeze(t(f));
        }
        // The worked figures divide by the days of the period starting at the old end.
        let q = s
            .quote_renewal(1, t(at), DailyPriceBasis::OverdueMonthPeriod)
            .expect("quote");
        let (days, amount) = q.makeup.map_or((0, 0), |m| (m.days, m.amount_micros));
        assert_eq!(
            (
                days,
                amount,
                format_millis(q.new_start).as_str(),
                format_millis(q.new_end).as_str()
            ),
            (expected.0, expected.1 * Y, expected.2, expected.3)
        );
        assert_eq!(q.renewal_original_micros, 300 * Y);
        s.apply_renewal(&q).expect("apply");
        assert_eq!(s.end(), q.new_end);
        assert_eq!(s.frozen_at, None);
    }

    #[test]
    fn renewal_scenarios_of_1_4_5_1_2() {
        // 场景一: inside the term.
        check_renewal(
            None,
            "2021-11-01 09:00",
            (0, 0, "2021-11-19 11:00:00", "2021-12-19 11:00:00"),
        );
        // 场景二: outside, not frozen, renewed 15:00 the same day.
        check_renewal(
            None,
            "2021-11-19 15:00",
            (1, 10, "2021-11-20 11:00:00", "2021-12-20 11:00:00"),
        );
        // 场景三: frozen automatically at the end, renewed 15:00.
        check_renewal(
            Some("2021-11-19 11:00"),
            "2021-11-19 15:00",
            (0, 0, "2021-11-19 15:00:00", "2021-12-19 15:00:00"),
        );
        // 场景四: frozen manually 11-20 09:00, renewed 12:00.
        check_renewal(
            Some("2021-11-20 09:00"),
            "2021-11-20 12:00",
            (1, 10, "2021-11-20 12:00:00", "2021-12-20 12:00:00"),
        );
        // 场景五: frozen manually 11-20 09:00, renewed 10:00.
        check_renewal(
            Some("2021-11-20 09:00"),
            "2021-11-20 10:00",
            (1, 10, "2021-11-20 11:00:00", "2021-12-20 11:00:00"),
        );
        // Two started days.
        check_renewal(
            None,
            "2021-11-20 11:00:01",
            (2, 20, "2021-11-21 11:00:00", "2021-12-21 11:00:00"),
        );
    }

    /// Issue 8 item 8: term 2026-01-15 10:00 → 2026-02-15 10:00 at 310 a month, renewed
    /// 2026-02-16 09:00 (one started overdue day).
    #[test]
    fn renewal_after_the_term_divides_by_the_previous_period_by_default() {
        let s = Subscription::new("s", "alice", "drp", 310 * Y, 1, t("2026-01-15 10:00"), 1)
            .expect("sub");
        let at = t("2026-02-16 09:00");
        let makeup = |b| {
            s.quote_renewal(1, at, b)
                .expect("quote")
                .makeup
                .map(|m| (m.days, m.basis_days, m.amount_micros))
        };
        assert_eq!(
            DailyPriceBasis::default(),
            DailyPriceBasis::PreviousTermMonth
        );
        assert_eq!(makeup(DailyPriceBasis::default()), Some((1, 31, 10 * Y)));
        assert_eq!(
            makeup(DailyPriceBasis::OverdueMonthPeriod),
            Some((1, 28, 11_071_429))
        );
        assert_eq!(
            makeup(DailyPriceBasis::CalendarMonthOfOverdue),
            Some((1, 28, 11_071_429))
        );
        for b in [
            DailyPriceBasis::PreviousTermMonth,
            DailyPriceBasis::OverdueMonthPeriod,
            DailyPriceBasis::CalendarMonthOfOverdue,
            DailyPriceBasis::Fixed(30),
        ] {
            assert_eq!(b.name().parse::<DailyPriceBasis>(), Ok(b));
        }
        for bad in ["fixed_0", "fixed_32", "calendar", ""] {
            assert_eq!(
                bad.parse::<DailyPriceBasis>(),
                Err(SubscriptionError::InvalidBasis)
            );
        }
    }

    #[test]
    fn daily_price_bases() {
        let s = sub(1);
        let at = t("2021-11-19 15:00");
        let amount = |b| {
            s.makeup_at(at, b)
                .expect("m")
                .map(|m| (m.basis_days, m.amount_micros))
        };
        assert_eq!(
            amount(DailyPriceBasis::OverdueMonthPeriod),
            Some((30, 10 * Y))
        );
        assert_eq!(
            amount(DailyPriceBasis::CalendarMonthOfOverdue),
            Some((30, 10 * Y))
        );
        assert_eq!(
            amount(DailyPriceBasis::PreviousTermMonth),
            Some((31, 9_677_419))
        );
        assert_eq!(amount(DailyPriceBasis::Fixed(30)), Some((30, 10 * Y)));
        assert_eq!(
            s.makeup_at(at, DailyPriceBasis::Fixed(0)),
            Err(SubscriptionError::InvalidBasis)
        );
    }

    /// `check_unsub(months, paid, frozen, at, (make-up yuan, months used, refund yuan))`.
    fn check_unsub(
        months: u32,
        paid: i64,
        frozen: Option<&str>,
        at: &str,
        expected: (i64, u32, i64),
    ) {
        let mut s = sub(months);
        s.record_paid(paid * Y).expect("paid");
        if let Some(f) = frozen {
            s.freeze(t(f));
        }
        let q = s
            .quote_unsubscribe(t(at), DailyPriceBasis::OverdueMonthPeriod)
            .expect("q");
        assert_eq!(
            (
                q.makeup.map_or(0, |m| m.amount_micros),
                q.months_used,
                q.refund_micros
            ),
            (expected.0 * Y, expected.1, expected.2 * Y)
        );
    }

    #[test]
    fn unsubscribe_scenarios_of_1_4_5_1_3() {
        // 场景一: 2 months, unsubscribed 10-25: 600 − 300 = 300.
        check_unsub(2, 600, None, "2021-10-25 11:00", (0, 1, 300));
        // 场景二: 1 month, unsubscribed 15:00 after the end: make-up 10, nothing refunded.
        check_unsub(1, 300, None, "2021-11-19 15:00", (10, 1, 0));
        // 场景三: frozen 11-20 09:00, unsubscribed 12:00: make-up 10.
        check_unsub(
            1,
            300,
            Some("2021-11-20 09:00"),
            "2021-11-20 12:00",
            (10, 1, 0),
        );
        // §1.4.4.1.4: cash 100 paid (voucher 130 not refundable): 100 − 300 < 0 → 0.
        check_unsub(2, 100, None, "2021-10-25 11:00", (0, 1, 0));
        // A month boundary just crossed counts the next month as used.
        check_unsub(2, 600, None, "2021-11-19 11:00:01", (0, 2, 0));
        check_unsub(2, 600, None, "2021-11-19 11:00", (0, 1, 300));
    }

    #[test]
    fn six_month_example() {
        // 2021-10-20 six months at 1 万; unsubscribed 2021-12-08: Oct and Nov periods used,
        // the four from 12-20 refundable.
        let mut s =
            Subscription::new("s", "a", "drp", 10_000 * Y, 1, t("2021-10-20 10:00"), 6).expect("s");
        s.record_paid(60_000 * Y).expect("paid");
        let q = s
            .quote_unsubscribe(t("2021-12-08 10:00"), DailyPriceBasis::default())
            .expect("q");
        assert_eq!(
            (q.months_used, q.months_total, q.refund_micros),
            (2, 6, 40_000 * Y)
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Subscription::new("s", "a", "p", Y, 1, 0, 0).map(|_| ()),
            Err(SubscriptionError::InvalidMonths(0))
        );
        assert_eq!(
            Subscription::new("s", "a", "p", -1, 1, 0, 1).map(|_| ()),
            Err(SubscriptionError::InvalidPrice)
        );
        let mut s = sub(1);
        assert!(matches!(
            s.quote_renewal(1, t("2021-10-01"), DailyPriceBasis::default()),
            Err(SubscriptionError::BeforeStart { .. })
        ));
        s.close(t("2021-10-20"));
        assert_eq!(
            s.quote_unsubscribe(t("2021-10-21"), DailyPriceBasis::default()),
            Err(SubscriptionError::Closed("s".into()))
        );
    }
}
