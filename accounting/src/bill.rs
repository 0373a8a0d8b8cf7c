//! Bills: bill lines, monthly period bills, the hour split of a charge spanning periods, late
//! usage, and provider settlement statements (operations manual §1.4.6, §3.8.3).
//!
//! # Rules (manual)
//!
//! * A bill period (账单周期) is a calendar month; bill lines (账单明细) are the individual
//!   charges. Prepaid resources are billed when opened, postpaid ones every hour on the hour.
//! * Every line satisfies `original − discount = paid` and `balance + credit + vouchers +
//!   coupons = paid` (see [`crate::payment`] for the exact members).
//! * A bill spanning periods is split by hours for the period view (§3.8.3.2): amount ÷ total
//!   hours × hours in the period, each period's hours being its milliseconds ÷ 3 600 000
//!   rounded to a whole number.
//!
//! # Interpretation choices
//!
//! * **Split rounding**: the pieces are `round(amount × cumulative hours / total hours)`
//!   differences (half away from zero), so they always sum to the amount exactly and each is
//!   within one micro of the manual's formula; the total is the sum of the rounded period
//!   hours. A span under half an hour in total goes wholly to its first period. Every
//!   member of a line (discounts, coupon, vouchers, cash, credit, arrears) is split with the
//!   same weights and a piece's original amount is the sum of its members, so the identities
//!   hold for every piece.
//! * **Late usage**: a line lands in the bill of the month its service time falls in if it
//!   arrives before that month's end + the late window and the bill is not closed; otherwise
//!   it becomes a correction line on the first open bill from the month of arrival on.
//!   Closed bills never change.
//! * **Provider share**: the operator's share of a line is `paid × bps / 10 000` rounded
//!   toward zero, the provider receives the rest ([`split_share`], the one split used by job
//!   charges, licence terms and the simulator); refund lines are negative and reduce both.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::civil::{MS_PER_HOUR, Millis, TimeError, add_months, month_start, year_month};
use crate::money::{Micros, MoneyError, mul_div_round};
use crate::payment::Payment;
use crate::rating::BillingMode;

/// Most lines in one period bill.
pub const MAX_LINES_PER_BILL: usize = 100_000;
/// Most periods a split may produce.
pub const MAX_SPLIT_PERIODS: usize = 1_200;

/// Why a bill operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BillError {
    /// A line's amounts break the identities.
    #[error("bill line {0} breaks the amount identities")]
    IdentityViolated(String),
    /// The service period ends before it starts.
    #[error("bill line {0}: service period ends before it starts")]
    InvalidPeriod(String),
    /// A bill holds too many lines.
    #[error("too many lines in one bill (max {MAX_LINES_PER_BILL})")]
    TooManyLines,
    /// A split spans too many periods.
    #[error("split spans too many periods (max {MAX_SPLIT_PERIODS})")]
    TooManyPeriods,
    /// A period is not `YYYY-MM`.
    #[error("period {0:?} is not YYYY-MM")]
    BadPeriod(String),
    /// A stored line kind is not one of [`BillLineKind`]'s names.
    #[error("unknown bill line kind {0:?}")]
    BadKind(String),
    /// A line's provider and operator parts do not sum to what was paid.
    #[error("bill line {0}: provider and operator parts do not sum to the paid amount")]
    SplitMismatch(String),
    /// A line id was posted twice.
    #[error("bill line {0} already posted")]
    DuplicateLine(String),
    /// Calendar arithmetic failed.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// Money arithmetic failed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// What a line is for (stored by [`BillLineKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillLineKind {
    /// A prepaid order.
    Order,
    /// A prepaid renewal.
    Renewal,
    /// A make-up for overdue use.
    MakeUp,
    /// Metered usage.
    Usage,
    /// Postpaid hourly settlement.
    Hourly,
    /// A refund (negative).
    Refund,
}

impl BillLineKind {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            BillLineKind::Order => "order",
            BillLineKind::Renewal => "renewal",
            BillLineKind::MakeUp => "make_up",
            BillLineKind::Usage => "usage",
            BillLineKind::Hourly => "hourly",
            BillLineKind::Refund => "refund",
        }
    }
}

impl FromStr for BillLineKind {
    type Err = BillError;

    /// Parses [`BillLineKind::name`].
    fn from_str(s: &str) -> Result<Self, BillError> {
        Ok(match s {
            "order" => Self::Order,
            "renewal" => Self::Renewal,
            "make_up" => Self::MakeUp,
            "usage" => Self::Usage,
            "hourly" => Self::Hourly,
            "refund" => Self::Refund,
            _ => return Err(BillError::BadKind(s.to_string())),
        })
    }
}

/// The provider's and the operator's parts of an amount (a line's paid amount, a job charge,
/// a refund), in micro-units. Built only by [`split_share`], so the parts always sum to the
/// amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Split {
    /// Provider's part (the rest after the operator's share).
    pub provider_micros: Micros,
    /// Operator's part.
    pub operator_micros: Micros,
}

impl Split {
    /// Whether the parts sum to `amount`.
    pub fn covers(&self, amount: Micros) -> bool {
        self.provider_micros.checked_add(self.operator_micros) == Some(amount)
    }

    /// The negated split (a refund of a split amount).
    pub fn negated(self) -> Self {
        Self {
            provider_micros: -self.provider_micros,
            operator_micros: -self.operator_micros,
        }
    }
}

/// Splits `amount` between provider and operator: the operator's share is `amount × bps /
/// 10 000` rounded toward zero (bps capped at 10 000), the provider receives the rest, so the
/// parts always sum to `amount` (negative amounts, refunds, split symmetrically). Computed
/// without overflow for every `i64`.
pub fn split_share(amount_micros: Micros, operator_share_bps: u32) -> Split {
    let bps = i64::from(operator_share_bps.min(10_000));
    // amount = q × 10 000 + r (r has amount's sign); q × bps and r × bps fit in an i64.
    let operator = (amount_micros / 10_000) * bps + (amount_micros % 10_000) * bps / 10_000;
    Split {
        provider_micros: amount_micros - operator,
        operator_micros: operator,
    }
}

/// The signed money members of a line (manual §3.8), in micro-units: the one bill-amounts
/// type of the simulator and of the operator's persisted bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Amounts {
    /// 原始金额.
    pub original: Micros,
    /// 平台折扣.
    pub platform_discount: Micros,
    /// 客户折扣.
    pub customer_discount: Micros,
    /// 优惠券.
    pub coupon: Micros,
    /// 抵扣现金券.
    pub deduction_voucher: Micros,
    /// 充值现金券账户.
    pub recharge_voucher: Micros,
    /// 现金.
    pub cash: Micros,
    /// 信用额度.
    pub credit: Micros,
    /// 欠费.
    pub arrears: Micros,
}

impl Amounts {
    /// From a payment.
    pub fn from_payment(p: &Payment) -> Self {
        Self {
            original: p.original_micros,
            platform_discount: p.platform_discount_micros,
            customer_discount: p.customer_discount_micros,
            coupon: p.coupon_micros,
            deduction_voucher: p.deduction_voucher_micros,
            recharge_voucher: p.recharge_voucher_micros,
            cash: p.cash_micros,
            credit: p.credit_micros,
            arrears: p.arrears_micros,
        }
    }

    /// A refund of `cash` and `credit` (negative amounts).
    pub fn refund(cash: Micros, credit: Micros) -> Self {
        Self {
            original: -(cash + credit),
            cash: -cash,
            credit: -credit,
            ..Self::default()
        }
    }

    /// Platform + customer discount.
    ///
    /// Errors: `MoneyError::Overflow` when the sum does not fit in i64 micros.
    pub fn discount(&self) -> Result<Micros, MoneyError> {
        self.platform_discount
            .checked_add(self.customer_discount)
            .ok_or(MoneyError::Overflow)
    }

    /// original − discount.
    ///
    /// Errors: `MoneyError::Overflow` when the difference does not fit in i64 micros.
    pub fn paid(&self) -> Result<Micros, MoneyError> {
        self.original
            .checked_sub(self.discount()?)
            .ok_or(MoneyError::Overflow)
    }

    /// Recharge voucher + cash + arrears.
    ///
    /// Errors: `MoneyError::Overflow` when the sum does not fit in i64 micros.
    pub fn balance(&self) -> Result<Micros, MoneyError> {
        self.recharge_voucher
            .checked_add(self.cash)
            .and_then(|v| v.checked_add(self.arrears))
            .ok_or(MoneyError::Overflow)
    }

    /// Whether both identities hold.
    pub fn identities_hold(&self) -> bool {
        // In i128: no member sum can overflow.
        let w = i128::from;
        let paid = w(self.original) - w(self.platform_discount) - w(self.customer_discount);
        w(self.recharge_voucher)
            + w(self.cash)
            + w(self.arrears)
            + w(self.credit)
            + w(self.deduction_voucher)
            + w(self.coupon)
            == paid
    }

    fn members(&self) -> [Micros; 8] {
        [
            self.platform_discount,
            self.customer_discount,
            self.coupon,
            self.deduction_voucher,
            self.recharge_voucher,
            self.cash,
            self.credit,
            self.arrears,
        ]
    }

    fn from_members(m: [Micros; 8]) -> Self {
        Self {
            original: m.iter().fold(0i64, |acc, v| acc.saturating_add(*v)),
            platform_discount: m[0],
            customer_discount: m[1],
            coupon: m[2],
            deduction_voucher: m[3],
            recharge_voucher: m[4],
            cash: m[5],
            credit: m[6],
            arrears: m[7],
        }
    }

    /// Adds another line's amounts, member by member; [`MoneyError::Overflow`] (and no change)
    /// when a sum does not fit.
    pub fn checked_add(&mut self, o: &Amounts) -> Result<(), MoneyError> {
        let add = |a: Micros, b: Micros| a.checked_add(b).ok_or(MoneyError::Overflow);
        *self = Amounts {
            original: add(self.original, o.original)?,
            platform_discount: add(self.platform_discount, o.platform_discount)?,
            customer_discount: add(self.customer_discount, o.customer_discount)?,
            coupon: add(self.coupon, o.coupon)?,
            deduction_voucher: add(self.deduction_voucher, o.deduction_voucher)?,
            recharge_voucher: add(self.recharge_voucher, o.recharge_voucher)?,
            cash: add(self.cash, o.cash)?,
            credit: add(self.credit, o.credit)?,
            arrears: add(self.arrears, o.arrears)?,
        };
        Ok(())
    }
}

/// One bill line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillLine {
    /// Unique id.
    pub id: String,
    /// Customer.
    pub customer: String,
    /// Product.
    pub product: String,
    /// Provider paid for the product, if any.
    pub provider: Option<String>,
    /// Operator's share in basis points.
    pub operator_share_bps: u32,
    /// What it is.
    pub kind: BillLineKind,
    /// Prepaid or postpaid.
    pub mode: BillingMode,
    /// When the charge happened (decides its period).
    pub at: Millis,
    /// Service period start.
    pub service_start: Millis,
    /// Service period end.
    pub service_end: Millis,
    /// Money.
    pub amounts: Amounts,
    /// Free text.
    pub note: String,
}

impl BillLine {
    /// Checks the identities and the period.
    pub fn validate(&self) -> Result<(), BillError> {
        if !self.amounts.identities_hold() {
            return Err(BillError::IdentityViolated(self.id.clone()));
        }
        if self.service_end < self.service_start {
            return Err(BillError::InvalidPeriod(self.id.clone()));
        }
        Ok(())
    }

    /// The provider's and operator's parts of `paid` ([`split_share`]).
    ///
    /// Errors: the paid amount overflows.
    pub fn split(&self) -> Result<Split, BillError> {
        Ok(split_share(self.amounts.paid()?, self.operator_share_bps))
    }
}

/// A line for the operator's persisted bills (`tessera-store`): the form in which the
/// settlement functions of [`crate::settle`] return what a job, a licence term or a refund
/// put on the customer's bill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBillLine {
    /// Idempotency id (the same id twice is one line).
    pub line_id: String,
    /// Customer billed.
    pub customer: String,
    /// Job charged, if any.
    pub job_id: Option<String>,
    /// What it is (`usage`, `order`, `renewal`, `refund` in the operator).
    pub kind: BillLineKind,
    /// Product (the scene, e.g. `psi`, or `licence:<id>`).
    pub product: String,
    /// Provider paid.
    pub provider: String,
    /// When the charge happened (decides its month), ms since the epoch.
    pub event_time_ms: Millis,
    /// Service period start.
    pub service_start_ms: Millis,
    /// Service period end.
    pub service_end_ms: Millis,
    /// Money (§3.8 members).
    pub amounts: Amounts,
    /// Provider's and operator's parts of what was paid.
    pub split: Split,
    /// Free text.
    pub note: String,
}

impl NewBillLine {
    /// Checks the §3.8 identities, that the split covers what was paid, and the period.
    pub fn validate(&self) -> Result<(), BillError> {
        if !self.amounts.identities_hold() {
            return Err(BillError::IdentityViolated(self.line_id.clone()));
        }
        if !self.split.covers(self.amounts.paid()?) {
            return Err(BillError::SplitMismatch(self.line_id.clone()));
        }
        if self.service_end_ms < self.service_start_ms {
            return Err(BillError::InvalidPeriod(self.line_id.clone()));
        }
        Ok(())
    }
}

/// One period of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPiece {
    /// Year.
    pub year: i32,
    /// Month.
    pub month: u8,
    /// Rounded hours in the period.
    pub hours: i64,
    /// Amount in the period.
    pub amount: Micros,
}

/// Rounded hours of each calendar month touched by `[start, end)`.
pub fn period_hours(start: Millis, end: Millis) -> Result<Vec<(i32, u8, i64)>, BillError> {
    if end < start {
        return Err(BillError::InvalidPeriod(String::new()));
    }
    let mut out = Vec::new();
    let mut cur = start;
    loop {
        let (y, m) = year_month(cur)?;
        let next = add_months(month_start(cur)?, 1)?;
        let seg_end = next.min(end);
        let ms = seg_end - cur;
        let hours = i64::try_from(mul_div_round(i128::from(ms), 1, i128::from(MS_PER_HOUR))?)
            .map_err(|_| MoneyError::Overflow)?;
        out.push((y, m, hours));
        if out.len() > MAX_SPLIT_PERIODS {
            return Err(BillError::TooManyPeriods);
        }
        if next >= end {
            break;
        }
        cur = next;
    }
    Ok(out)
}

fn split_weights(amount: Micros, hours: &[i64]) -> Result<Vec<Micros>, BillError> {
    let total: i64 = hours.iter().sum();
    if total == 0 {
        let mut v = vec![0; hours.len()];
        if let Some(first) = v.first_mut() {
            *first = amount;
        }
        return Ok(v);
    }
    let mut out = Vec::with_capacity(hours.len());
    let mut cum_h = 0i64;
    let mut prev = 0i128;
    for h in hours {
        cum_h += h;
        let cum = mul_div_round(i128::from(amount), i128::from(cum_h), i128::from(total))?;
        out.push(i64::try_from(cum - prev).map_err(|_| MoneyError::Overflow)?);
        prev = cum;
    }
    Ok(out)
}

/// Splits `amount` over the calendar months of `[start, end)` by hours (§3.8.3.2).
pub fn split_by_hours(
    amount: Micros,
    start: Millis,
    end: Millis,
) -> Result<Vec<SplitPiece>, BillError> {
    let periods = period_hours(start, end)?;
    let hours: Vec<i64> = periods.iter().map(|p| p.2).collect();
    let amounts = split_weights(amount, &hours)?;
    Ok(periods
        .iter()
        .zip(amounts)
        .map(|(&(year, month, hours), amount)| SplitPiece {
            year,
            month,
            hours,
            amount,
        })
        .collect())
}

/// Splits a line's every member over its service period; the pieces' amounts sum to the
/// line's and satisfy the identities.
pub fn split_line(line: &BillLine) -> Result<Vec<(i32, u8, Amounts)>, BillError> {
    let periods = period_hours(line.service_start, line.service_end)?;
    let hours: Vec<i64> = periods.iter().map(|p| p.2).collect();
    let members = line.amounts.members();
    let mut per_member = Vec::with_capacity(members.len());
    for m in members {
        per_member.push(split_weights(m, &hours)?);
    }
    Ok(periods
        .iter()
        .enumerate()
        .map(|(i, &(y, mo, _))| {
            let mut m = [0; 8];
            for (k, slot) in m.iter_mut().enumerate() {
                *slot = per_member[k][i];
            }
            (y, mo, Amounts::from_members(m))
        })
        .collect())
}

/// Where a posted line went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into the bill of its own period.
    InPeriod(i32, u8),
    /// As a correction for `of` on the bill of `on`.
    Correction {
        /// Period the usage belongs to.
        of: (i32, u8),
        /// Bill that carries the correction.
        on: (i32, u8),
    },
}

/// A line on a bill, with its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedLine {
    /// The line.
    pub line: BillLine,
    /// `Some(period)` when it corrects an earlier period.
    pub corrects: Option<(i32, u8)>,
}

/// One customer's bill for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodBill {
    /// Customer.
    pub customer: String,
    /// Year.
    pub year: i32,
    /// Month.
    pub month: u8,
    /// Lines, in posting order.
    pub lines: Vec<PlacedLine>,
    /// Closed bills never change.
    pub closed: bool,
}

impl PeriodBill {
    /// Sum of the lines (checked).
    pub fn totals(&self) -> Result<Amounts, BillError> {
        let mut t = Amounts::default();
        for l in &self.lines {
            t.checked_add(&l.line.amounts)?;
        }
        Ok(t)
    }
}

/// All bills, keyed by (customer, year, month).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BillBook {
    /// How long after a month's end its bill still accepts late usage.
    pub late_window_ms: i64,
    bills: BTreeMap<(String, i32, u8), PeriodBill>,
    ids: std::collections::BTreeSet<String>,
}

/// The month after `(y, m)`.
pub fn next_month((y, m): (i32, u8)) -> (i32, u8) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

/// The first instant after month `(y, m)` (UTC).
pub fn month_end(y: i32, m: u8) -> Result<Millis, BillError> {
    let start = crate::civil::CivilDateTime::new(y, m, 1, 0, 0, 0)?.to_millis()?;
    Ok(add_months(start, 1)?)
}

/// `YYYY-MM`.
pub fn period_name((y, m): (i32, u8)) -> String {
    format!("{y:04}-{m:02}")
}

/// Parses `YYYY-MM`.
pub fn parse_period(text: &str) -> Result<(i32, u8), BillError> {
    let bad = || BillError::BadPeriod(text.chars().take(32).collect());
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let y: i32 = y.parse().map_err(|_| bad())?;
    let m: u8 = m.parse().map_err(|_| bad())?;
    crate::civil::CivilDateTime::new(y, m, 1, 0, 0, 0).map_err(|_| bad())?;
    Ok((y, m))
}

/// Where a line whose charge happened at `at` and which arrived at `arrived_at` goes: into
/// its own month's bill if it arrives before that month's end + the late window and that
/// bill is not closed; otherwise as a correction on the first bill that is not closed from
/// the month of arrival on (never earlier than the month after its own).
pub fn place_line(
    at: Millis,
    arrived_at: Millis,
    late_window_ms: i64,
    is_closed: impl Fn((i32, u8)) -> bool,
) -> Result<Placement, BillError> {
    let own = year_month(at)?;
    let deadline = month_end(own.0, own.1)?.saturating_add(late_window_ms.max(0));
    if arrived_at < deadline && !is_closed(own) {
        return Ok(Placement::InPeriod(own.0, own.1));
    }
    let mut on = year_month(arrived_at.max(at))?;
    if on <= own {
        on = next_month(own);
    }
    let mut guard = 0;
    while is_closed(on) {
        on = next_month(on);
        guard += 1;
        if guard > MAX_SPLIT_PERIODS {
            return Err(BillError::TooManyPeriods);
        }
    }
    Ok(Placement::Correction { of: own, on })
}

impl BillBook {
    /// A book with a late window.
    pub fn new(late_window_ms: i64) -> Self {
        Self {
            late_window_ms: late_window_ms.max(0),
            ..Self::default()
        }
    }

    fn bill_mut(&mut self, customer: &str, (y, m): (i32, u8)) -> &mut PeriodBill {
        self.bills
            .entry((customer.to_string(), y, m))
            .or_insert_with(|| PeriodBill {
                customer: customer.to_string(),
                year: y,
                month: m,
                lines: Vec::new(),
                closed: false,
            })
    }

    fn is_closed(&self, customer: &str, (y, m): (i32, u8)) -> bool {
        self.bills
            .get(&(customer.to_string(), y, m))
            .is_some_and(|b| b.closed)
    }

    /// Posts a line that arrived at `arrived_at`.
    pub fn post(&mut self, line: BillLine, arrived_at: Millis) -> Result<Placement, BillError> {
        line.validate()?;
        if self.ids.contains(&line.id) {
            return Err(BillError::DuplicateLine(line.id));
        }
        let placement = place_line(line.at, arrived_at, self.late_window_ms, |p| {
            self.is_closed(&line.customer, p)
        })?;
        let (target, corrects) = match placement {
            Placement::InPeriod(y, m) => ((y, m), None),
            Placement::Correction { of, on } => (on, Some(of)),
        };
        let customer = line.customer.clone();
        let bill = self.bill_mut(&customer, target);
        if bill.lines.len() >= MAX_LINES_PER_BILL {
            return Err(BillError::TooManyLines);
        }
        self.ids.insert(line.id.clone());
        let bill = self.bill_mut(&customer, target);
        bill.lines.push(PlacedLine { line, corrects });
        Ok(placement)
    }

    /// Closes every bill whose month ended more than the late window before `now`; returns
    /// the bills closed now.
    pub fn close_due(&mut self, now: Millis) -> Result<Vec<(String, i32, u8)>, BillError> {
        let mut closed = Vec::new();
        for ((c, y, m), b) in self.bills.iter_mut() {
            if !b.closed && month_end(*y, *m)?.saturating_add(self.late_window_ms) <= now {
                b.closed = true;
                closed.push((c.clone(), *y, *m));
            }
        }
        Ok(closed)
    }

    /// Bills in (customer, year, month) order.
    pub fn bills(&self) -> impl Iterator<Item = &PeriodBill> {
        self.bills.values()
    }

    /// The period view of §3.8.3.2: every line split by hours over its service period,
    /// summed per (customer, year, month).
    pub fn period_statistics(&self) -> Result<BTreeMap<(String, i32, u8), Amounts>, BillError> {
        let mut out: BTreeMap<(String, i32, u8), Amounts> = BTreeMap::new();
        for b in self.bills.values() {
            for l in &b.lines {
                for (y, m, a) in split_line(&l.line)? {
                    out.entry((b.customer.clone(), y, m))
                        .or_default()
                        .checked_add(&a)?;
                }
            }
        }
        Ok(out)
    }
}

/// A provider's settlement for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderStatement {
    /// Provider.
    pub provider: String,
    /// Year.
    pub year: i32,
    /// Month.
    pub month: u8,
    /// Lines counted.
    pub lines: usize,
    /// Sum of `paid` of the lines.
    pub gross_micros: Micros,
    /// Operator's part.
    pub operator_micros: Micros,
    /// Provider's part.
    pub provider_micros: Micros,
}

/// Settlement statements per provider and bill month (the month of the bill carrying each
/// line).
pub fn provider_statements(book: &BillBook) -> Result<Vec<ProviderStatement>, BillError> {
    let add = |a: Micros, b: Micros| a.checked_add(b).ok_or(MoneyError::Overflow);
    let mut out: BTreeMap<(String, i32, u8), ProviderStatement> = BTreeMap::new();
    for b in book.bills() {
        for l in &b.lines {
            let Some(p) = &l.line.provider else { continue };
            let Split {
                provider_micros: prov,
                operator_micros: op,
            } = l.line.split()?;
            let s = out
                .entry((p.clone(), b.year, b.month))
                .or_insert_with(|| ProviderStatement {
                    provider: p.clone(),
                    year: b.year,
                    month: b.month,
                    lines: 0,
                    gross_micros: 0,
                    operator_micros: 0,
                    provider_micros: 0,
                });
            s.lines += 1;
            s.gross_micros = add(s.gross_micros, l.line.amounts.paid()?)?;
            s.operator_micros = add(s.operator_micros, op)?;
            s.provider_micros = add(s.provider_micros, prov)?;
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::civil::{MS_PER_DAY, parse_millis};

    const Y: i64 = 1_000_000;

    fn t(s: &str) -> Millis {
        parse_millis(s).expect("t")
    }

    fn line(id: &str, at: &str, amount: i64) -> BillLine {
        BillLine {
            id: id.into(),
            customer: "alice".into(),
            product: "ma".into(),
            provider: Some("prov".into()),
            operator_share_bps: 1_000,
            kind: BillLineKind::Usage,
            mode: BillingMode::Postpaid,
            at: t(at),
            service_start: t(at),
            service_end: t(at),
            amounts: Amounts {
                original: amount,
                cash: amount,
                ..Amounts::default()
            },
            note: String::new(),
        }
    }

    /// `check(amount, start, end, [(month, hours, amount)])`.
    fn check(amount: i64, start: &str, end: &str, expected: &[(u8, i64, i64)]) {
        let pieces = split_by_hours(amount, t(start), t(end)).expect("split");
        let got: Vec<(u8, i64, i64)> = pieces
            .iter()
            .map(|p| (p.month, p.hours, p.amount))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(pieces.iter().map(|p| p.amount).sum::<i64>(), amount);
    }

    #[test]
    fn split_by_hours_of_3_8_3_2() {
        // 5-24 → 8-24 (2021): 192 + 720 + 744 + 552 = 2208 hours.
        check(
            900 * Y,
            "2021-05-24",
            "2021-08-24",
            &[
                (5, 192, 78_260_870),
                (6, 720, 293_478_260),
                (7, 744, 303_260_870),
                (8, 552, 225_000_000),
            ],
        );
        check(
            300 * Y,
            "2021-10-19 11:00",
            "2021-11-19 11:00",
            &[(10, 301, 121_370_968), (11, 443, 178_629_032)],
        );
        check(
            7,
            "2021-10-31 23:50",
            "2021-11-01 00:05",
            &[(10, 0, 7), (11, 0, 0)],
        );
        check(5 * Y, "2021-10-01", "2021-10-02", &[(10, 24, 5 * Y)]);
    }

    #[test]
    fn split_lines_keep_identities() {
        let mut l = line("x", "2021-05-24", 0);
        l.service_end = t("2021-08-24");
        l.amounts = Amounts {
            original: 600 * Y,
            customer_discount: 300 * Y,
            coupon: 70 * Y,
            recharge_voucher: 130 * Y,
            cash: 100 * Y,
            ..Amounts::default()
        };
        l.validate().expect("valid");
        let pieces = split_line(&l).expect("split");
        let mut sum = Amounts::default();
        for (_, _, a) in &pieces {
            assert!(a.identities_hold());
            sum.checked_add(a).expect("sum");
        }
        assert_eq!(sum, l.amounts);
    }

    #[test]
    fn late_usage_and_closed_bills() {
        let mut book = BillBook::new(2 * MS_PER_DAY);
        assert_eq!(
            book.post(line("a", "2021-10-31 23:00", 5 * Y), t("2021-10-31 23:30")),
            Ok(Placement::InPeriod(2021, 10))
        );
        // Inside the window: still October.
        assert_eq!(
            book.post(line("b", "2021-10-31 23:00", 5 * Y), t("2021-11-02 23:59")),
            Ok(Placement::InPeriod(2021, 10))
        );
        // After the window: correction on November's bill.
        assert_eq!(
            book.post(line("c", "2021-10-30 10:00", 5 * Y), t("2021-11-03 00:00")),
            Ok(Placement::Correction {
                of: (2021, 10),
                on: (2021, 11)
            })
        );
        let closed = book.close_due(t("2021-11-03 00:00")).expect("close");
        assert_eq!(closed, vec![("alice".to_string(), 2021, 10)]);
        let before = book.bills().next().cloned();
        // A closed bill never changes, even inside its window by arrival time.
        assert_eq!(
            book.post(line("d", "2021-10-30 10:00", Y), t("2021-11-01 00:00")),
            Ok(Placement::Correction {
                of: (2021, 10),
                on: (2021, 11)
            })
        );
        assert_eq!(book.bills().next().cloned(), before);
        assert_eq!(
            book.post(line("d", "2021-10-30 10:00", Y), t("2021-11-01 00:00")),
            Err(BillError::DuplicateLine("d".into()))
        );
        let mut bad = line("e", "2021-10-30 10:00", Y);
        bad.amounts.cash = 0;
        assert_eq!(
            book.post(bad, 0),
            Err(BillError::IdentityViolated("e".into()))
        );
        let st = provider_statements(&book).expect("statements");
        assert_eq!(st.len(), 2);
        assert_eq!(
            (
                st[0].gross_micros,
                st[0].operator_micros,
                st[0].provider_micros
            ),
            (10 * Y, Y, 9 * Y)
        );
        assert_eq!((st[1].month, st[1].gross_micros), (11, 6 * Y));
        let stats = book.period_statistics().expect("stats");
        assert_eq!(stats.len(), 1, "usage lines have no span");
    }
}
