//! Price plans and rating: usage × plan × discounts × clock → charge lines.
//!
//! # Plans
//!
//! A [`PricePlan`] is prepaid (包周期, billed per month in advance, §1.4.5.1) or postpaid
//! (按量, metered and billed every hour, §1.4.5.2), and is a list of [`PriceComponent`]s:
//! one-time, per job, per unit of a metric (rows; CPU time as compute units = CPU-hours),
//! package (a price with an included quota and an overage rate), graduated tiers, volume
//! tiers, a monthly price per resource (月单价 × 台 × 月) and an hourly price (a started hour
//! counts whole). A plan may carry a price cap (封顶, from the pricing table of the trusted
//! data space manual) and a minimum commitment, both per rated charge (typically a period).
//!
//! # Rounding (the only points where decimals become money)
//!
//! * Quantities become billing units exactly (`quantity / unit_size`, a decimal); a
//!   component with `round_up` counts a started unit whole (ceil) — used for hours.
//! * Free allowances are subtracted from the billing units **before** tiers apply; tier
//!   bounds refer to the billable remainder (documented choice).
//! * Each component's decimal amount is rounded **once**, half away from zero, to a whole
//!   micro ([`crate::money::round_micros`]); tiers inside one component are summed in
//!   decimals first.
//! * Cap and minimum commitment act on the integer sum of the component lines and appear as
//!   their own adjustment lines; the cap is applied first, then the minimum (a plan whose cap
//!   is below its minimum is refused).
//! * Discounts (see [`crate::discount`]) then act on that original amount.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use serde::{Deserialize, Serialize};

use crate::bill::{Split, split_share};
use crate::civil::{MS_PER_HOUR, Millis};
use crate::discount::{DiscountBook, DiscountError, DiscountOutcome, DiscountRequest};
use crate::money::{Micros, MoneyError, round_micros};

/// Most components in one plan.
pub const MAX_COMPONENTS: usize = 32;
/// Most tiers in one tiered component.
pub const MAX_TIERS: usize = 32;
/// Base units in one compute unit (1 CPU-hour of CPU milliseconds).
pub const CPU_MILLIS_PER_COMPUTE_UNIT: u64 = MS_PER_HOUR as u64;

/// Why a plan or a usage record could not be rated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RateError {
    /// The plan has no components or too many.
    #[error("plan must have 1..={MAX_COMPONENTS} components, got {0}")]
    ComponentCount(usize),
    /// A price is negative.
    #[error("negative price in component {0}")]
    NegativePrice(usize),
    /// A component's unit size is zero.
    #[error("unit size of component {0} must be positive")]
    ZeroUnitSize(usize),
    /// Tiers are empty, too many, not increasing, or the last one is bounded.
    #[error("invalid tiers in component {0}")]
    InvalidTiers(usize),
    /// The cap is below the minimum commitment, or either is negative.
    #[error("price cap below minimum commitment, or negative")]
    CapBelowMinimum,
    /// Usage exceeded a package quota that has no overage rate.
    #[error("usage {used} exceeds the package quota {included}")]
    QuotaExceeded {
        /// Billing units used.
        used: Decimal,
        /// Billing units included.
        included: u64,
    },
    /// A monthly component was rated without months.
    #[error("a monthly price needs months > 0")]
    NoMonths,
    /// A value does not fit.
    #[error("rating arithmetic overflows")]
    Overflow,
    /// An operator share above 10 000 basis points (100 %).
    #[error("operator share must be at most 10000 bps, got {0}")]
    InvalidShare(u32),
    /// Discounting failed.
    #[error(transparent)]
    Discount(#[from] DiscountError),
}

impl From<MoneyError> for RateError {
    fn from(_: MoneyError) -> Self {
        RateError::Overflow
    }
}

/// Prepaid package (包周期) or postpaid metering (按量).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BillingMode {
    /// Paid per month in advance; coupons apply (§3.11).
    Prepaid,
    /// Metered and settled hourly; deduction vouchers apply (§3.11).
    Postpaid,
}

/// A measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Jobs run.
    Jobs,
    /// Rows of provider data used.
    Rows,
    /// CPU time in milliseconds (1 compute unit = [`CPU_MILLIS_PER_COMPUTE_UNIT`]).
    CpuMillis,
    /// Wall-clock time a resource was held, in milliseconds.
    ResourceMillis,
}

impl Metric {
    /// Stable lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Jobs => "jobs",
            Metric::Rows => "rows",
            Metric::CpuMillis => "cpu_millis",
            Metric::ResourceMillis => "resource_millis",
        }
    }
}

/// Usage to rate: one record, or a period's aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Jobs run.
    pub jobs: u64,
    /// Rows used.
    pub rows: u64,
    /// CPU milliseconds.
    pub cpu_millis: u64,
    /// Resource wall-clock milliseconds.
    pub resource_millis: u64,
    /// Resources (台) ordered; 0 is treated as 1 by monthly and hourly prices.
    pub units: u64,
    /// Months ordered (prepaid).
    pub months: u32,
    /// Whether one-time components are due with this charge.
    pub include_one_time: bool,
}

impl Usage {
    /// The quantity of a metric.
    pub fn get(&self, m: Metric) -> u64 {
        match m {
            Metric::Jobs => self.jobs,
            Metric::Rows => self.rows,
            Metric::CpuMillis => self.cpu_millis,
            Metric::ResourceMillis => self.resource_millis,
        }
    }

    fn units_or_one(&self) -> u64 {
        self.units.max(1)
    }
}

/// One tier: billing units up to `up_to` (inclusive, cumulative; `None` = unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Upper bound in billing units; only the last tier may be unbounded.
    pub up_to: Option<u64>,
    /// Micros per billing unit.
    pub unit_price: Decimal,
    /// Flat micros charged when the tier is reached.
    pub flat_micros: Micros,
}

/// A part of a price plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceComponent {
    /// Charged once (when `Usage::include_one_time`).
    OneTime {
        /// Price.
        price_micros: Micros,
    },
    /// Charged per job.
    PerJob {
        /// Price per job.
        price_micros: Micros,
    },
    /// A price per billing unit of a metric.
    PerUnit {
        /// Metric.
        metric: Metric,
        /// Base units per billing unit (1000 rows, 3_600_000 CPU-ms).
        unit_size: u64,
        /// Micros per billing unit.
        price: Decimal,
        /// Free billing units.
        free_units: u64,
        /// A started billing unit counts whole.
        round_up: bool,
    },
    /// A package: `price_micros` buys `included_units`; beyond, `overage_price` per unit (or
    /// an error when there is none).
    Package {
        /// Metric.
        metric: Metric,
        /// Base units per billing unit.
        unit_size: u64,
        /// Billing units included.
        included_units: u64,
        /// Package price.
        price_micros: Micros,
        /// Micros per billing unit beyond the quota.
        overage_price: Option<Decimal>,
    },
    /// Graduated tiers: each unit is priced by the tier it falls in.
    Graduated {
        /// Metric.
        metric: Metric,
        /// Base units per billing unit.
        unit_size: u64,
        /// Tiers.
        tiers: Vec<Tier>,
        /// Free billing units.
        free_units: u64,
        /// A started billing unit counts whole.
        round_up: bool,
    },
    /// Volume tiers: every unit is priced by the tier the total reaches.
    Volume {
        /// Metric.
        metric: Metric,
        /// Base units per billing unit.
        unit_size: u64,
        /// Tiers.
        tiers: Vec<Tier>,
        /// Free billing units.
        free_units: u64,
        /// A started billing unit counts whole.
        round_up: bool,
    },
    /// 算力计费 (§3.6.6.2.2, §3.8.3.2 注 2–3): 算力时 = resource usage in hours × conversion
    /// coefficient (转换系数, e.g. (cards / 8) × 2.5 → 0.3125 per card-hour, §2.9.4.1.1);
    /// charge = 算力时 × unit price, rounded once.
    ComputePower {
        /// Metric (usually card- or node-milliseconds of [`Metric::ResourceMillis`]).
        metric: Metric,
        /// Base units per hour of usage.
        unit_size: u64,
        /// 算力 per unit-hour.
        coefficient: Decimal,
        /// Micros per 算力时.
        price: Decimal,
    },
    /// 月单价: `price × units × months` (§1.4.5.1.1: 1 万/台/月 → 1 台 2 月 = 2 万).
    Monthly {
        /// Price per resource per month.
        price_micros: Micros,
    },
    /// Postpaid hourly price: `price × units × started hours` of `resource_millis`.
    Hourly {
        /// Price per resource per hour.
        price_micros: Micros,
    },
}

/// A price plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricePlan {
    /// Prepaid or postpaid.
    pub mode: BillingMode,
    /// Components, rated in order.
    pub components: Vec<PriceComponent>,
    /// 封顶: the most one rated charge may cost.
    pub cap_micros: Option<Micros>,
    /// The least one rated charge costs.
    pub minimum_micros: Option<Micros>,
}

/// What produced a charge line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// One-time price.
    OneTime,
    /// Per-job price.
    PerJob,
    /// Per-unit price.
    PerUnit,
    /// Package price.
    Package,
    /// Units beyond a package.
    PackageOverage,
    /// Graduated tiers.
    Graduated,
    /// Volume tiers.
    Volume,
    /// Compute-power hours.
    ComputePower,
    /// Monthly price.
    Monthly,
    /// Hourly price.
    Hourly,
    /// Reduction down to the cap (negative).
    Cap,
    /// Top-up to the minimum commitment.
    Minimum,
}

impl LineKind {
    /// Stable lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LineKind::OneTime => "one_time",
            LineKind::PerJob => "per_job",
            LineKind::PerUnit => "per_unit",
            LineKind::Package => "package",
            LineKind::PackageOverage => "package_overage",
            LineKind::Graduated => "graduated",
            LineKind::Volume => "volume",
            LineKind::ComputePower => "compute_power",
            LineKind::Monthly => "monthly",
            LineKind::Hourly => "hourly",
            LineKind::Cap => "cap",
            LineKind::Minimum => "minimum",
        }
    }
}

/// One rated line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    /// What produced it.
    pub kind: LineKind,
    /// The metric, where there is one.
    pub metric: Option<Metric>,
    /// Billable quantity in billing units (after free allowance and rounding up).
    pub quantity: Decimal,
    /// Amount in micros (negative only for a cap line).
    pub amount_micros: Micros,
}

/// A plan applied to usage, before discounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rated {
    /// Lines.
    pub lines: Vec<ChargeLine>,
    /// Sum of the lines (the original / list amount).
    pub original_micros: Micros,
}

/// A rated and discounted charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatedCharge {
    /// Lines before discounts.
    pub lines: Vec<ChargeLine>,
    /// Discounts applied to the lines' sum.
    pub discount: DiscountOutcome,
}

impl RatedCharge {
    /// The original amount.
    pub fn original_micros(&self) -> Micros {
        self.discount.original_micros
    }
    /// The amount after discounts.
    pub fn net_micros(&self) -> Micros {
        self.discount.net_micros
    }
}

fn check_tiers(i: usize, tiers: &[Tier]) -> Result<(), RateError> {
    if tiers.is_empty() || tiers.len() > MAX_TIERS {
        return Err(RateError::InvalidTiers(i));
    }
    let mut prev: Option<u64> = None;
    for (k, t) in tiers.iter().enumerate() {
        let last = k + 1 == tiers.len();
        if t.unit_price.is_sign_negative() || t.flat_micros < 0 {
            return Err(RateError::NegativePrice(i));
        }
        match (t.up_to, last) {
            (None, true) => {}
            (None, false) | (Some(_), true) => return Err(RateError::InvalidTiers(i)),
            (Some(u), false) => {
                if prev.is_some_and(|p| u <= p) || u == 0 {
                    return Err(RateError::InvalidTiers(i));
                }
                prev = Some(u);
            }
        }
    }
    Ok(())
}

impl PricePlan {
    /// Checks prices, units, tiers, cap and minimum.
    pub fn validate(&self) -> Result<(), RateError> {
        let n = self.components.len();
        if n == 0 || n > MAX_COMPONENTS {
            return Err(RateError::ComponentCount(n));
        }
        for (i, c) in self.components.iter().enumerate() {
            match c {
                PriceComponent::OneTime { price_micros }
                | PriceComponent::PerJob { price_micros }
                | PriceComponent::Monthly { price_micros }
                | PriceComponent::Hourly { price_micros } => {
                    if *price_micros < 0 {
                        return Err(RateError::NegativePrice(i));
                    }
                }
                PriceComponent::PerUnit {
                    unit_size, price, ..
                } => {
                    if *unit_size == 0 {
                        return Err(RateError::ZeroUnitSize(i));
                    }
                    if price.is_sign_negative() {
                        return Err(RateError::NegativePrice(i));
                    }
                }
                PriceComponent::ComputePower {
                    unit_size,
                    coefficient,
                    price,
                    ..
                } => {
                    if *unit_size == 0 {
                        return Err(RateError::ZeroUnitSize(i));
                    }
                    if price.is_sign_negative() || coefficient.is_sign_negative() {
                        return Err(RateError::NegativePrice(i));
                    }
                }
                PriceComponent::Package {
                    unit_size,
                    price_micros,
                    overage_price,
                    ..
                } => {
                    if *unit_size == 0 {
                        return Err(RateError::ZeroUnitSize(i));
                    }
                    if *price_micros < 0 || overage_price.is_some_and(|p| p.is_sign_negative()) {
                        return Err(RateError::NegativePrice(i));
                    }
                }
                PriceComponent::Graduated {
                    unit_size, tiers, ..
                }
                | PriceComponent::Volume {
                    unit_size, tiers, ..
                } => {
                    if *unit_size == 0 {
                        return Err(RateError::ZeroUnitSize(i));
                    }
                    check_tiers(i, tiers)?;
                }
            }
        }
        if self.cap_micros.is_some_and(|c| c < 0)
            || self.minimum_micros.is_some_and(|m| m < 0)
            || matches!((self.cap_micros, self.minimum_micros), (Some(c), Some(m)) if c < m)
        {
            return Err(RateError::CapBelowMinimum);
        }
        Ok(())
    }
}

/// Billing units of `quantity` base units: exact, or ceil when `round_up`; then less the
/// free allowance.
fn billing_units(quantity: u64, unit_size: u64, round_up: bool, free_units: u64) -> Decimal {
    let q = if round_up {
        Decimal::from(quantity / unit_size + u64::from(!quantity.is_multiple_of(unit_size)))
    } else if unit_size == 1 {
        Decimal::from(quantity)
    } else {
        Decimal::from(quantity) / Decimal::from(unit_size)
    };
    let free = Decimal::from(free_units);
    if q > free { q - free } else { Decimal::ZERO }
}

fn dmul(a: Decimal, b: Decimal) -> Result<Decimal, RateError> {
    a.checked_mul(b).ok_or(RateError::Overflow)
}

fn dadd(a: Decimal, b: Decimal) -> Result<Decimal, RateError> {
    a.checked_add(b).ok_or(RateError::Overflow)
}

fn graduated(q: Decimal, tiers: &[Tier]) -> Result<Decimal, RateError> {
    let mut total = Decimal::ZERO;
    let mut lower = Decimal::ZERO;
    for t in tiers {
        if q <= lower {
            break;
        }
        let upper = t.up_to.map(Decimal::from);
        let top = upper.map_or(q, |u| q.min(u));
        total = dadd(total, dmul(top - lower, t.unit_price)?)?;
        total = dadd(total, Decimal::from(t.flat_micros))?;
        match upper {
            Some(u) => lower = u,
            None => break,
        }
    }
    Ok(total)
}

fn volume(q: Decimal, tiers: &[Tier]) -> Result<Decimal, RateError> {
    if q <= Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let tier = tiers
        .iter()
        .find(|t| t.up_to.is_none_or(|u| q <= Decimal::from(u)))
        .ok_or(RateError::Overflow)?;
    dadd(dmul(q, tier.unit_price)?, Decimal::from(tier.flat_micros))
}

fn mul_i64(a: Micros, b: u64) -> Result<Micros, RateError> {
    let b = i64::try_from(b).map_err(|_| RateError::Overflow)?;
    a.checked_mul(b).ok_or(RateError::Overflow)
}

/// Rates usage against a plan (no discounts). Pure and deterministic.
pub fn rate_plan(plan: &PricePlan, usage: &Usage) -> Result<Rated, RateError> {
    plan.validate()?;
    rate_plan_unchecked(plan, usage)
}

/// [`rate_plan`] without re-validating the plan (for hot loops over a validated plan).
pub fn rate_plan_unchecked(plan: &PricePlan, usage: &Usage) -> Result<Rated, RateError> {
    let mut lines = Vec::with_capacity(plan.components.len() + 1);
    for c in &plan.components {
        match c {
            PriceComponent::OneTime { price_micros } => {
                if usage.include_one_time {
                    lines.push(ChargeLine {
                        kind: LineKind::OneTime,
                        metric: None,
                        quantity: Decimal::ONE,
                        amount_micros: *price_micros,
                    });
                }
            }
            PriceComponent::PerJob { price_micros } => {
                if usage.jobs > 0 {
                    lines.push(ChargeLine {
                        kind: LineKind::PerJob,
                        metric: Some(Metric::Jobs),
                        quantity: Decimal::from(usage.jobs),
                        amount_micros: mul_i64(*price_micros, usage.jobs)?,
                    });
                }
            }
            PriceComponent::PerUnit {
                metric,
                unit_size,
                price,
                free_units,
                round_up,
            } => {
                let q = billing_units(usage.get(*metric), *unit_size, *round_up, *free_units);
                if q > Decimal::ZERO {
                    lines.push(ChargeLine {
                        kind: LineKind::PerUnit,
                        metric: Some(*metric),
                        quantity: q,
                        amount_micros: round_micros(dmul(q, *price)?)?,
                    });
                }
            }
            PriceComponent::Package {
                metric,
                unit_size,
                included_units,
                price_micros,
                overage_price,
            } => {
                lines.push(ChargeLine {
                    kind: LineKind::Package,
                    metric: Some(*metric),
                    quantity: Decimal::from(*included_units),
                    amount_micros: *price_micros,
                });
                let used = billing_units(usage.get(*metric), *unit_size, false, 0);
                let over = billing_units(usage.get(*metric), *unit_size, false, *included_units);
                if over > Decimal::ZERO {
                    let Some(rate) = overage_price else {
                        return Err(RateError::QuotaExceeded {
                            used,
                            included: *included_units,
                        });
                    };
                    lines.push(ChargeLine {
                        kind: LineKind::PackageOverage,
                        metric: Some(*metric),
                        quantity: over,
                        amount_micros: round_micros(dmul(over, *rate)?)?,
                    });
                }
            }
            PriceComponent::Graduated {
                metric,
                unit_size,
                tiers,
                free_units,
                round_up,
            }
            | PriceComponent::Volume {
                metric,
                unit_size,
                tiers,
                free_units,
                round_up,
            } => {
                let q = billing_units(usage.get(*metric), *unit_size, *round_up, *free_units);
                if q > Decimal::ZERO {
                    let (kind, amount) = if matches!(c, PriceComponent::Graduated { .. }) {
                        (LineKind::Graduated, graduated(q, tiers)?)
                    } else {
                        (LineKind::Volume, volume(q, tiers)?)
                    };
                    lines.push(ChargeLine {
                        kind,
                        metric: Some(*metric),
                        quantity: q,
                        amount_micros: round_micros(amount)?,
                    });
                }
            }
            PriceComponent::ComputePower {
                metric,
                unit_size,
                coefficient,
                price,
            } => {
                let hours = billing_units(usage.get(*metric), *unit_size, false, 0);
                let q = dmul(hours, *coefficient)?;
                if q > Decimal::ZERO {
                    lines.push(ChargeLine {
                        kind: LineKind::ComputePower,
                        metric: Some(*metric),
                        quantity: q,
                        amount_micros: round_micros(dmul(q, *price)?)?,
                    });
                }
            }
            PriceComponent::Monthly { price_micros } => {
                if usage.months == 0 {
                    return Err(RateError::NoMonths);
                }
                let per = mul_i64(*price_micros, usage.units_or_one())?;
                lines.push(ChargeLine {
                    kind: LineKind::Monthly,
                    metric: None,
                    quantity: Decimal::from(usage.months),
                    amount_micros: mul_i64(per, u64::from(usage.months))?,
                });
            }
            PriceComponent::Hourly { price_micros } => {
                let hours = usage.resource_millis / MS_PER_HOUR as u64
                    + u64::from(!usage.resource_millis.is_multiple_of(MS_PER_HOUR as u64));
                if hours > 0 {
                    let per = mul_i64(*price_micros, usage.units_or_one())?;
                    lines.push(ChargeLine {
                        kind: LineKind::Hourly,
                        metric: Some(Metric::ResourceMillis),
                        quantity: Decimal::from(hours),
                        amount_micros: mul_i64(per, hours)?,
                    });
                }
            }
        }
    }
    let mut total: Micros = 0;
    for l in &lines {
        total = total
            .checked_add(l.amount_micros)
            .ok_or(RateError::Overflow)?;
    }
    if let Some(cap) = plan.cap_micros
        && total > cap
    {
        lines.push(ChargeLine {
            kind: LineKind::Cap,
            metric: None,
            quantity: Decimal::ONE,
            amount_micros: cap - total,
        });
        total = cap;
    }
    if let Some(min) = plan.minimum_micros
        && total < min
    {
        lines.push(ChargeLine {
            kind: LineKind::Minimum,
            metric: None,
            quantity: Decimal::ONE,
            amount_micros: min - total,
        });
        total = min;
    }
    Ok(Rated {
        lines,
        original_micros: total,
    })
}

/// Who and what a charge is for, and when it is rated (the clock is an argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatingContext<'a> {
    /// Customer.
    pub customer: &'a str,
    /// Product.
    pub product: &'a str,
    /// Rating time (discount validity is checked against it: §3.8.3.2 "实时询价").
    pub at: Millis,
}

/// Rates usage against a plan and applies the discount book: the crate's main pricing
/// function.
pub fn rate(
    plan: &PricePlan,
    usage: &Usage,
    discounts: &DiscountBook,
    ctx: &RatingContext<'_>,
) -> Result<RatedCharge, RateError> {
    let rated = rate_plan(plan, usage)?;
    let req = DiscountRequest {
        customer: ctx.customer,
        product: ctx.product,
        quantity: usage.units_or_one(),
        amount_micros: rated.original_micros,
        months: if plan.mode == BillingMode::Prepaid {
            usage.months
        } else {
            0
        },
        at: ctx.at,
    };
    let discount = discounts.apply(&req)?;
    Ok(RatedCharge {
        lines: rated.lines,
        discount,
    })
}

/// Compute units (CPU-hours) in `cpu_millis`, as a decimal.
pub fn compute_units(cpu_millis: u64) -> Decimal {
    Decimal::from(cpu_millis) / Decimal::from(CPU_MILLIS_PER_COMPUTE_UNIT)
}

/// A decimal quantity as `f64`, for display only.
pub fn quantity_f64(q: Decimal) -> f64 {
    q.to_f64().unwrap_or(0.0)
}

// Job prices
// ---------------------------------------------------------------------------------------

/// Billing units of rows in a job price (`per_1k_rows_micros` is per 1,000 rows).
pub const ROWS_PER_UNIT: u64 = 1_000;

/// The price of running jobs under one licence: a per-job price plus a price per 1,000 rows
/// of the provider's data, split with the operator by `operator_share_bps`. It is rated as the
/// [`PricePlan`] of [`JobPrice::plan`] like any other product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPrice {
    /// Charged once per successful job, in micro-units.
    pub per_job_micros: i64,
    /// Charged per 1,000 rows of the provider's data used (pro rata, rounded once, half away
    /// from zero, to a whole micro).
    pub per_1k_rows_micros: i64,
    /// Operator's share of the charge in basis points (0..=10_000); the rest goes to the
    /// provider.
    pub operator_share_bps: u32,
}

/// A rated job: what the buyer pays and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCharge {
    /// Total paid by the buyer, in micro-units.
    pub total_micros: i64,
    /// Provider's and operator's parts ([`split_share`], summing exactly to the total).
    pub split: Split,
}

impl JobPrice {
    /// The postpaid plan of this price: a per-job component and a per-unit component on
    /// rows with unit size [`ROWS_PER_UNIT`].
    pub fn plan(&self) -> PricePlan {
        PricePlan {
            mode: BillingMode::Postpaid,
            components: vec![
                PriceComponent::PerJob {
                    price_micros: self.per_job_micros,
                },
                PriceComponent::PerUnit {
                    metric: Metric::Rows,
                    unit_size: ROWS_PER_UNIT,
                    price: Decimal::from(self.per_1k_rows_micros),
                    free_units: 0,
                    round_up: false,
                },
            ],
            cap_micros: None,
            minimum_micros: None,
        }
    }

    /// Checks the ranges: prices non-negative ([`RateError::NegativePrice`]), share at most
    /// 100 % ([`RateError::InvalidShare`]).
    pub fn validate(&self) -> Result<(), RateError> {
        if self.operator_share_bps > 10_000 {
            return Err(RateError::InvalidShare(self.operator_share_bps));
        }
        self.plan().validate()
    }
}

/// Rates one job that used `rows` rows of the provider's data through [`rate_plan`] on
/// [`JobPrice::plan`]: the row part is `rows × per_1k / 1000` rounded half away from zero to
/// a whole micro; the operator's share is [`split_share`] (rounded toward zero, the provider
/// receiving the rest).
pub fn rate_job(price: &JobPrice, rows: u64) -> Result<JobCharge, RateError> {
    price.validate()?;
    let rated = rate_plan_unchecked(
        &price.plan(),
        &Usage {
            jobs: 1,
            rows,
            ..Usage::default()
        },
    )?;
    Ok(JobCharge {
        total_micros: rated.original_micros,
        split: split_share(rated.original_micros, price.operator_share_bps),
    })
}

/// A charge limited to `cap_micros` (the hold taken at admission): the total is capped and
/// re-split with the same operator share.
pub fn cap_charge(price: &JobPrice, charge: JobCharge, cap_micros: i64) -> JobCharge {
    if charge.total_micros <= cap_micros {
        return charge;
    }
    let total = cap_micros.max(0);
    JobCharge {
        total_micros: total,
        split: split_share(total, price.operator_share_bps),
    }
}

/// The most a job can cost: its price at `max_rows` rows (the provider's declared rows).
pub fn estimate_max_cost(price: &JobPrice, max_rows: u64) -> Result<i64, RateError> {
    Ok(rate_job(price, max_rows)?.total_micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discount::{Discount, DiscountRange, DiscountSource, DiscountStrategy};

    const Y: i64 = 1_000_000;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    fn plan(mode: BillingMode, components: Vec<PriceComponent>) -> PricePlan {
        PricePlan {
            mode,
            components,
            cap_micros: None,
            minimum_micros: None,
        }
    }

    /// `check(plan, usage, expected line amounts, expected total)`.
    fn check(plan: &PricePlan, usage: Usage, lines: &[Micros], total: Micros) {
        let r = rate_plan(plan, &usage).expect("rate");
        let got: Vec<Micros> = r.lines.iter().map(|l| l.amount_micros).collect();
        assert_eq!(got, lines);
        assert_eq!(r.original_micros, total);
    }

    fn tiers() -> Vec<Tier> {
        vec![
            Tier {
                up_to: Some(10),
                unit_price: d("1000000"),
                flat_micros: 0,
            },
            Tier {
                up_to: Some(20),
                unit_price: d("800000"),
                flat_micros: 0,
            },
            Tier {
                up_to: None,
                unit_price: d("500000"),
                flat_micros: 0,
            },
        ]
    }

    #[test]
    fn monthly_prices_follow_the_manual() {
        // §1.4.5.1.1: 1 万/台/月: 1 台 1 月 = 1 万, 1 台 2 月 = 2 万.
        let p = plan(
            BillingMode::Prepaid,
            vec![PriceComponent::Monthly {
                price_micros: 10_000 * Y,
            }],
        );
        let u = |months| Usage {
            units: 1,
            months,
            ..Usage::default()
        };
        check(&p, u(1), &[10_000 * Y], 10_000 * Y);
        check(&p, u(2), &[20_000 * Y], 20_000 * Y);
        check(
            &p,
            Usage {
                units: 3,
                months: 2,
                ..Usage::default()
            },
            &[60_000 * Y],
            60_000 * Y,
        );
        assert_eq!(rate_plan(&p, &Usage::default()), Err(RateError::NoMonths));
    }

    #[test]
    fn hourly_counts_a_started_hour_whole() {
        let p = plan(
            BillingMode::Postpaid,
            vec![PriceComponent::Hourly {
                price_micros: 2 * Y,
            }],
        );
        let u = |ms| Usage {
            resource_millis: ms,
            ..Usage::default()
        };
        check(&p, u(1), &[2 * Y], 2 * Y);
        check(&p, u(MS_PER_HOUR as u64), &[2 * Y], 2 * Y);
        check(&p, u(MS_PER_HOUR as u64 + 1), &[4 * Y], 4 * Y);
        check(&p, u(0), &[], 0);
    }

    #[test]
    fn per_job_rows_and_compute_units() {
        let p = plan(
            BillingMode::Postpaid,
            vec![
                PriceComponent::OneTime {
                    price_micros: 100 * Y,
                },
                PriceComponent::PerJob { price_micros: Y },
                PriceComponent::PerUnit {
                    metric: Metric::Rows,
                    unit_size: 1000,
                    price: d("10000"),
                    free_units: 0,
                    round_up: false,
                },
                PriceComponent::PerUnit {
                    metric: Metric::CpuMillis,
                    unit_size: CPU_MILLIS_PER_COMPUTE_UNIT,
                    price: d("3000000"),
                    free_units: 1,
                    round_up: false,
                },
            ],
        );
        let u = Usage {
            jobs: 2,
            rows: 100_500,
            cpu_millis: 3 * CPU_MILLIS_PER_COMPUTE_UNIT / 2 * 2, // 3 compute units
            include_one_time: true,
            ..Usage::default()
        };
        // 100 + 2×1 + 100.5×0.01 + (3−1)×3.
        check(&p, u, &[100 * Y, 2 * Y, 1_005_000, 6 * Y], 109_005_000);
        let u = Usage {
            rows: 1,
            ..Usage::default()
        };
        // 0.001 × 10000 = 10 micros; no CPU → no line, no one-time.
        check(&p, u, &[10], 10);
    }

    #[test]
    fn graduated_volume_package_and_free_allowance() {
        let g = |free| {
            plan(
                BillingMode::Postpaid,
                vec![PriceComponent::Graduated {
                    metric: Metric::Jobs,
                    unit_size: 1,
                    tiers: tiers(),
                    free_units: free,
                    round_up: false,
                }],
            )
        };
        let jobs = |n| Usage {
            jobs: n,
            ..Usage::default()
        };
        check(&g(0), jobs(5), &[5 * Y], 5 * Y);
        check(&g(0), jobs(15), &[14 * Y], 14 * Y); // 10×1 + 5×0.8
        check(&g(0), jobs(30), &[23 * Y], 23 * Y); // 10 + 8 + 10×0.5
        check(&g(5), jobs(15), &[10 * Y], 10 * Y); // 10 billable → first tier
        check(&g(20), jobs(15), &[], 0);
        let v = plan(
            BillingMode::Postpaid,
            vec![PriceComponent::Volume {
                metric: Metric::Jobs,
                unit_size: 1,
                tiers: tiers(),
                free_units: 0,
                round_up: false,
            }],
        );
        check(&v, jobs(10), &[10 * Y], 10 * Y);
        check(&v, jobs(15), &[12 * Y], 12 * Y); // 15 × 0.8
        check(&v, jobs(30), &[15 * Y], 15 * Y); // 30 × 0.5
        let pk = |over: Option<Decimal>| {
            plan(
                BillingMode::Prepaid,
                vec![PriceComponent::Package {
                    metric: Metric::Rows,
                    unit_size: 1000,
                    included_units: 100,
                    price_micros: 50 * Y,
                    overage_price: over,
                }],
            )
        };
        let rows = |n| Usage {
            rows: n,
            ..Usage::default()
        };
        check(&pk(Some(d("1000000"))), rows(100_000), &[50 * Y], 50 * Y);
        check(
            &pk(Some(d("1000000"))),
            rows(102_500),
            &[50 * Y, 2_500_000],
            52_500_000,
        );
        assert!(matches!(
            rate_plan(&pk(None), &rows(100_001)),
            Err(RateError::QuotaExceeded { .. })
        ));
    }

    #[test]
    fn compute_power_conversion() {
        // (cards / 8) × 2.5 = 算力; 16 cards for 1.5 h = 24 card-hours × 0.3125 = 7.5 算力时,
        // at 4 per 算力时 = 30.
        let p = plan(
            BillingMode::Postpaid,
            vec![PriceComponent::ComputePower {
                metric: Metric::ResourceMillis,
                unit_size: MS_PER_HOUR as u64,
                coefficient: d("2.5") / d("8"),
                price: d("4000000"),
            }],
        );
        let u = Usage {
            resource_millis: 16 * 3 * MS_PER_HOUR as u64 / 2,
            ..Usage::default()
        };
        check(&p, u, &[30 * Y], 30 * Y);
        let r = rate_plan(&p, &u).expect("rate");
        assert_eq!(r.lines[0].quantity, d("7.5"));
    }

    #[test]
    fn cap_and_minimum_commitment() {
        let mut p = plan(
            BillingMode::Postpaid,
            vec![PriceComponent::PerJob { price_micros: Y }],
        );
        p.cap_micros = Some(10 * Y);
        p.minimum_micros = Some(3 * Y);
        let jobs = |n| Usage {
            jobs: n,
            ..Usage::default()
        };
        check(&p, jobs(50), &[50 * Y, -40 * Y], 10 * Y);
        check(&p, jobs(1), &[Y, 2 * Y], 3 * Y);
        check(&p, jobs(0), &[3 * Y], 3 * Y);
        check(&p, jobs(5), &[5 * Y], 5 * Y);
        p.minimum_micros = Some(11 * Y);
        assert_eq!(rate_plan(&p, &jobs(1)), Err(RateError::CapBelowMinimum));
    }

    #[test]
    fn invalid_plans_are_refused() {
        let bad_tiers = vec![
            Tier {
                up_to: Some(10),
                unit_price: Decimal::ONE,
                flat_micros: 0,
            },
            Tier {
                up_to: Some(5),
                unit_price: Decimal::ONE,
                flat_micros: 0,
            },
            Tier {
                up_to: None,
                unit_price: Decimal::ONE,
                flat_micros: 0,
            },
        ];
        let cases: Vec<(Vec<PriceComponent>, RateError)> = vec![
            (vec![], RateError::ComponentCount(0)),
            (
                vec![PriceComponent::PerJob { price_micros: -1 }],
                RateError::NegativePrice(0),
            ),
            (
                vec![PriceComponent::PerUnit {
                    metric: Metric::Rows,
                    unit_size: 0,
                    price: Decimal::ONE,
                    free_units: 0,
                    round_up: false,
                }],
                RateError::ZeroUnitSize(0),
            ),
            (
                vec![PriceComponent::Volume {
                    metric: Metric::Rows,
                    unit_size: 1,
                    tiers: bad_tiers,
                    free_units: 0,
                    round_up: false,
                }],
                RateError::InvalidTiers(0),
            ),
        ];
        for (components, err) in cases {
            assert_eq!(
                rate_plan(&plan(BillingMode::Postpaid, components), &Usage::default()),
                Err(err)
            );
        }
    }

    #[test]
    fn rate_applies_discounts_at_the_given_time() {
        let p = plan(
            BillingMode::Prepaid,
            vec![PriceComponent::Monthly {
                price_micros: 300 * Y,
            }],
        );
        let book = DiscountBook {
            discounts: vec![Discount {
                id: "vip".into(),
                source: DiscountSource::Customer,
                customer: Some("alice".into()),
                product: None,
                range: DiscountRange::Months { from: 2, to: None },
                factor: d("0.5"),
                valid_from: 0,
                valid_until: Some(1_000),
                enabled: true,
            }],
            strategy: DiscountStrategy::CustomerOnly,
            ..DiscountBook::default()
        };
        let ctx = |at| RatingContext {
            customer: "alice",
            product: "drp",
            at,
        };
        let u = |months| Usage {
            units: 1,
            months,
            ..Usage::default()
        };
        let r = rate(&p, &u(2), &book, &ctx(10)).expect("rate");
        assert_eq!((r.original_micros(), r.net_micros()), (600 * Y, 300 * Y));
        let r = rate(&p, &u(1), &book, &ctx(10)).expect("rate");
        assert_eq!(r.net_micros(), 300 * Y, "months range not reached");
        let r = rate(&p, &u(2), &book, &ctx(1_000)).expect("rate");
        assert_eq!(r.net_micros(), 600 * Y, "expired");
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;

    fn check(price: (i64, i64, u32), rows: u64, expected: (i64, i64, i64)) {
        let price = JobPrice {
            per_job_micros: price.0,
            per_1k_rows_micros: price.1,
            operator_share_bps: price.2,
        };
        let c = rate_job(&price, rows).expect("rate");
        assert_eq!(
            (
                c.total_micros,
                c.split.provider_micros,
                c.split.operator_micros
            ),
            expected
        );
    }

    #[test]
    fn rates_by_job_and_rows_through_the_plan() {
        check(
            (1_000_000, 10_000, 1_000),
            100_000,
            (2_000_000, 1_800_000, 200_000),
        );
        check((0, 1, 0), 499, (0, 0, 0));
        check((0, 1, 0), 500, (1, 1, 0));
        check((0, 3, 3_333), 1_000, (3, 3, 0));
        check((7, 0, 10_000), 0, (7, 0, 7));
        // The e2e price: 1,000 per job + 1,000 per 1,000 rows at 20 %, one row.
        check((1_000, 1_000, 2_000), 1, (1_001, 801, 200));
        // Half up on the row part, as the integer formula (rows × p + 500) / 1000 did.
        for rows in [0u64, 1, 499, 500, 501, 1_499, 1_500, 123_456_789] {
            for p in [0i64, 1, 3, 7, 999, 10_000] {
                let expected = (i128::from(rows) * i128::from(p) + 500) / 1000;
                let c = rate_job(
                    &JobPrice {
                        per_job_micros: 0,
                        per_1k_rows_micros: p,
                        operator_share_bps: 0,
                    },
                    rows,
                )
                .expect("rate");
                assert_eq!(i128::from(c.total_micros), expected, "{rows} rows at {p}");
            }
        }
    }

    #[test]
    fn capped_charges_are_re_split() {
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
                capped.split.provider_micros,
                capped.split.operator_micros
            ),
            (5_001, 4_501, 500)
        );
    }

    #[test]
    fn bad_prices_are_refused() {
        let p = JobPrice {
            per_job_micros: -1,
            per_1k_rows_micros: 0,
            operator_share_bps: 0,
        };
        assert!(matches!(rate_job(&p, 1), Err(RateError::NegativePrice(_))));
        let p = JobPrice {
            per_job_micros: 0,
            per_1k_rows_micros: 0,
            operator_share_bps: 10_001,
        };
        assert_eq!(rate_job(&p, 1), Err(RateError::InvalidShare(10_001)));
        let p = JobPrice {
            per_job_micros: i64::MAX,
            per_1k_rows_micros: i64::MAX,
            operator_share_bps: 0,
        };
        assert_eq!(rate_job(&p, u64::MAX), Err(RateError::Overflow));
    }
}
