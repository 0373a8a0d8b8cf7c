//! Scenario files and the deterministic simulator.
//!
//! A scenario is a TOML document: settings, customers with their opening balances, products
//! and their price plans, discounts, contracts, coupons, vouchers, product limits and a list
//! of timed events. [`simulate`] replays the events in order against the pure modules of this
//! crate — rating, discounts, payment order, subscriptions, freeze decisions, bills — and
//! mirrors every movement of money in the in-memory [`Ledger`]; after each event it checks
//! that the ledger and the wallets agree and that double entry holds. The clock is the
//! events' `at` field; nothing reads a wall clock, so the same text always gives the same
//! report.
//!
//! # Format
//!
//! Amounts are yuan, written as strings or integers (`"230"`, `"0.5"`, `300`); factors and
//! unit prices are decimal strings; times are `"YYYY-MM-DD[ HH:MM[:SS]]"` (naive local time).
//!
//! ```toml
//! name = "§1.4.4.1.2 order with discount and coupon"
//!
//! [settings]
//! discount_strategy = "customer_only"   # customer_only | platform_only | stacked |
//!                                       # stacked_platform_first | none
//! daily_price_basis = "overdue_month_period"  # | calendar_month_of_overdue |
//!                                       # previous_term_month | fixed_30 (any fixed_N)
//! late_window_hours = 0                 # late usage window after a month's end
//! makeup_discount = false               # §2.9.3.8 switch
//!
//! [[customers]]
//! id = "alice"
//! cash = "3000"
//! recharge_voucher = "3000"
//! credit = "3000"
//!
//! [[products]]
//! id = "drp"
//! mode = "prepaid"                      # prepaid | postpaid
//! monthly_price = "300"                 # prepaid: 月单价 per resource
//! provider = "prov"                     # optional
//! operator_share_bps = 1000             # optional, default 0
//! # optional extra components, cap and minimum:
//! # components = [{ type = "per_unit", metric = "rows", unit_size = 1000, price = "0.01" }]
//! # cap = "100"
//! # minimum = "1"
//!
//! [[discounts]]
//! id = "vip"
//! source = "customer"                   # platform | customer
//! customer = "alice"
//! factor = "0.5"
//! # product = "drp", range = "months", from = 1, to = 12,
//! # valid_from = "2021-01-01", valid_until = "2022-01-01", enabled = true
//!
//! [[coupons]]
//! id = "c1"
//! customer = "alice"
//! threshold = "100"
//! off = "70"
//!
//! [[events]]
//! at = "2021-10-19 11:00"
//! kind = "subscribe"
//! id = "s1"
//! customer = "alice"
//! product = "drp"
//! months = 2
//! ```
//!
//! Component types: `one_time {price}`, `per_job {price}`, `per_unit {metric, unit_size,
//! price, free_units, round_up}`, `package {metric, unit_size, included_units, price,
//! overage_price}`, `graduated` / `volume {metric, unit_size, tiers = [{up_to, price,
//! flat}], free_units, round_up}`, `compute_power {metric, unit_size, coefficient, price}`
//! (算力时 = usage hours × coefficient), `monthly {price}`, `hourly {price}`; metrics `jobs`,
//! `rows`, `cpu_millis`, `resource_millis`. Per-unit and tier prices are yuan per billing
//! unit.
//!
//! Other tables: `[[contracts]] {id, customer, start, end, credit, discounts = [...]}`,
//! `[[deduction_vouchers]] {id, customer, amount, valid_from, valid_until, products}`,
//! `[[recharge_vouchers]] {id, customer, amount, valid_from, valid_until}` (redeemed by an
//! event), `[limits] {platform = {min_purchase, min_freeze, enabled}, whitelist = [..],
//! products = [{product, ..}], customers = [{customer, product, ..}]}`.
//!
//! Event kinds (`kind`):
//!
//! | kind | fields | effect |
//! |---|---|---|
//! | `subscribe` | id, customer, product, months, units | prepaid order (§1.4.5.1.1) |
//! | `renew` | id, months | renewal with make-up (§1.4.5.1.2) |
//! | `unsubscribe` | id | make-up and refund (§1.4.5.1.3) |
//! | `freeze_resource` | id | the prepaid resource is frozen at `at` |
//! | `open_metered` | id, customer, product | a postpaid hourly resource starts |
//! | `settle` | — | every open hourly resource is billed up to the last whole hour |
//! | `close_metered` | id | final settlement, a started hour counts whole (§1.4.5.2) |
//! | `usage` | customer, product, jobs, rows, cpu_millis, resource_millis, arrived_at | metered usage |
//! | `check_job` | customer, product | logs the freeze decision for starting a job |
//! | `recharge` | customer, amount | cash recharge |
//! | `redeem_recharge_voucher` | id | a recharge voucher is redeemed |
//! | `manual_freeze` / `manual_thaw` / `clear_manual` | customer, reason | operator actions |
//! | `whitelist_add` / `whitelist_remove` | customer | platform white list |
//! | `terminate_contract` | id | withdraws unused credit |
//! | `payout` | provider, amount | pays a provider out |
//! | `close_bills` | — | closes bills past their late window |
//!
//! A business refusal (insufficient funds, below the minimum purchase amount, frozen
//! account) is logged as `rejected: …` and changes nothing; a malformed scenario is a
//! [`ScenarioError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::bill::{
    Amounts, BillBook, BillError, BillLine, BillLineKind, PeriodBill, Placement, ProviderStatement,
    provider_statements,
};
use crate::civil::{MS_PER_HOUR, Millis, ceil_hour, floor_hour, format_millis, parse_millis};
use crate::discount::{
    Contract, Discount, DiscountBook, DiscountOutcome, DiscountRange, DiscountRequest,
    DiscountSource, DiscountStrategy, StackOrder, apply_factors,
};
use crate::freeze::{
    CustomerLimit, FreezeInput, LimitConfig, LimitSettings, ManualFreeze, ProductLimit,
    check_purchase, freeze_state,
};
use crate::ledger::AccountKind;
use crate::ledger_engine::{
    EngineAccount, Ledger, Transfer, TransferOutcome, codes, link_all, plain, transfer_id,
};
use crate::money::{MICROS_PER_UNIT, Micros, format_amount, parse_amount, parse_decimal};
use crate::payment::{
    Coupon, DeductionVoucher, Payment, PaymentRequest, Wallet, apply_payment, apply_refund,
    plan_payment, recharge_cash, split_refund,
};
use crate::rating::{BillingMode, Metric, PriceComponent, PricePlan, Tier, Usage, rate_plan};
use crate::subscription::{DailyPriceBasis, Subscription};

/// Largest scenario text accepted.
pub const MAX_SCENARIO_BYTES: usize = 1 << 20;
/// Most events in one scenario.
pub const MAX_EVENTS: usize = 10_000;
/// Most customers, products, discounts, coupons or vouchers in one scenario (each).
pub const MAX_ENTITIES: usize = 1_000;
/// Most hours one settlement may cover.
pub const MAX_SETTLE_HOURS: i64 = 24 * 366;

/// Why a scenario could not be simulated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ScenarioError {
    /// The text is larger than [`MAX_SCENARIO_BYTES`].
    #[error("scenario larger than {MAX_SCENARIO_BYTES} bytes")]
    TooLarge,
    /// The text is not valid scenario TOML.
    #[error("scenario does not parse: {0}")]
    Parse(String),
    /// More than [`MAX_EVENTS`] events or [`MAX_ENTITIES`] entities.
    #[error("scenario exceeds a size bound: {0}")]
    TooMany(String),
    /// A field has an invalid value.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// Where.
        field: String,
        /// Why.
        reason: String,
    },
    /// An id is defined twice.
    #[error("duplicate id {0}")]
    Duplicate(String),
    /// A reference to an unknown customer, product, subscription, contract or voucher.
    #[error("unknown {kind} {id}")]
    Unknown {
        /// What was referenced.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// Events are not in time order.
    #[error("event {0} is earlier than the event before it")]
    EventsOutOfOrder(usize),
    /// The ledger refused a movement the simulator expected to succeed (a bug).
    #[error("ledger refused a transfer: {0}")]
    Ledger(String),
    /// Wallets and ledger disagree, or an identity failed (a bug).
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    /// A bill operation failed.
    #[error(transparent)]
    Bill(#[from] BillError),
}

fn invalid(field: impl Into<String>, reason: impl ToString) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Num {
    Int(i64),
    Text(String),
}

impl Num {
    fn micros(&self, field: &str) -> Result<Micros, ScenarioError> {
        match self {
            Num::Int(i) => i
                .checked_mul(MICROS_PER_UNIT)
                .ok_or_else(|| invalid(field, "amount overflows")),
            Num::Text(s) => parse_amount(s).map_err(|e| invalid(field, e)),
        }
    }

    fn decimal(&self, field: &str) -> Result<Decimal, ScenarioError> {
        match self {
            Num::Int(i) => Ok(Decimal::from(*i)),
            Num::Text(s) => parse_decimal(s).map_err(|e| invalid(field, e)),
        }
    }
}

fn opt_micros(n: &Option<Num>, field: &str) -> Result<Micros, ScenarioError> {
    n.as_ref().map_or(Ok(0), |n| n.micros(field))
}

fn time(s: &str, field: &str) -> Result<Millis, ScenarioError> {
    parse_millis(s).map_err(|e| invalid(field, e))
}

fn opt_time(s: &Option<String>, field: &str) -> Result<Option<Millis>, ScenarioError> {
    s.as_deref().map(|s| time(s, field)).transpose()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    settings: SettingsDto,
    #[serde(default)]
    customers: Vec<CustomerDto>,
    #[serde(default)]
    products: Vec<ProductDto>,
    #[serde(default)]
    discounts: Vec<DiscountDto>,
    #[serde(default)]
    contracts: Vec<ContractDto>,
    #[serde(default)]
    coupons: Vec<CouponDto>,
    #[serde(default)]
    deduction_vouchers: Vec<DeductionVoucherDto>,
    #[serde(default)]
    recharge_vouchers: Vec<RechargeVoucherDto>,
    #[serde(default)]
    limits: Option<LimitsDto>,
    #[serde(default)]
    events: Vec<EventDto>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDto {
    discount_strategy: Option<String>,
    daily_price_basis: Option<String>,
    late_window_hours: Option<i64>,
    makeup_discount: Option<bool>,
    customer_strategies: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerDto {
    id: String,
    cash: Option<Num>,
    recharge_voucher: Option<Num>,
    credit: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierDto {
    up_to: Option<u64>,
    price: Num,
    flat: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentDto {
    #[serde(rename = "type")]
    kind: String,
    price: Option<Num>,
    metric: Option<String>,
    unit_size: Option<u64>,
    free_units: Option<u64>,
    round_up: Option<bool>,
    included_units: Option<u64>,
    overage_price: Option<Num>,
    tiers: Option<Vec<TierDto>>,
    coefficient: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductDto {
    id: String,
    mode: String,
    monthly_price: Option<Num>,
    hourly_price: Option<Num>,
    provider: Option<String>,
    operator_share_bps: Option<u32>,
    #[serde(default)]
    components: Vec<ComponentDto>,
    cap: Option<Num>,
    minimum: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscountDto {
    id: String,
    source: Option<String>,
    customer: Option<String>,
    product: Option<String>,
    factor: Num,
    range: Option<String>,
    from: Option<Num>,
    to: Option<Num>,
    valid_from: Option<String>,
    valid_until: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractDto {
    id: String,
    customer: String,
    start: String,
    end: String,
    credit: Option<Num>,
    #[serde(default)]
    discounts: Vec<DiscountDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CouponDto {
    id: String,
    customer: String,
    threshold: Num,
    off: Num,
    valid_from: Option<String>,
    valid_until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeductionVoucherDto {
    id: String,
    customer: String,
    amount: Num,
    valid_from: Option<String>,
    valid_until: Option<String>,
    #[serde(default)]
    products: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RechargeVoucherDto {
    id: String,
    customer: String,
    amount: Num,
    valid_from: Option<String>,
    valid_until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitDto {
    min_purchase: Option<Num>,
    min_freeze: Option<Num>,
    enabled: Option<bool>,
    product: Option<String>,
    customer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsDto {
    platform: Option<LimitDto>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    products: Vec<LimitDto>,
    #[serde(default)]
    customers: Vec<LimitDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventDto {
    at: String,
    kind: String,
    id: Option<String>,
    customer: Option<String>,
    product: Option<String>,
    provider: Option<String>,
    months: Option<u32>,
    units: Option<u64>,
    amount: Option<Num>,
    jobs: Option<u64>,
    rows: Option<u64>,
    cpu_millis: Option<u64>,
    resource_millis: Option<u64>,
    arrived_at: Option<String>,
    reason: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------------------

fn metric(s: &Option<String>, field: &str) -> Result<Metric, ScenarioError> {
    match s.as_deref() {
        Some("jobs") => Ok(Metric::Jobs),
        Some("rows") => Ok(Metric::Rows),
        Some("cpu_millis") => Ok(Metric::CpuMillis),
        Some("resource_millis") => Ok(Metric::ResourceMillis),
        other => Err(invalid(field, format!("unknown metric {other:?}"))),
    }
}

/// Yuan per unit → micros per unit.
fn unit_price(n: &Num, field: &str) -> Result<Decimal, ScenarioError> {
    n.decimal(field)?
        .checked_mul(Decimal::from(MICROS_PER_UNIT))
        .ok_or_else(|| invalid(field, "price overflows"))
}

fn component(c: &ComponentDto, field: &str) -> Result<PriceComponent, ScenarioError> {
    let price_micros = || {
        c.price
            .as_ref()
            .ok_or_else(|| invalid(field, "price missing"))?
            .micros(field)
    };
    let tiers = || -> Result<Vec<Tier>, ScenarioError> {
        let tiers = c
            .tiers
            .as_ref()
            .ok_or_else(|| invalid(field, "tiers missing"))?;
        tiers
            .iter()
            .map(|t| {
                Ok(Tier {
                    up_to: t.up_to,
                    unit_price: unit_price(&t.price, field)?,
                    flat_micros: opt_micros(&t.flat, field)?,
                })
            })
            .collect()
    };
    Ok(match c.kind.as_str() {
        "one_time" => PriceComponent::OneTime {
            price_micros: price_micros()?,
        },
        "per_job" => PriceComponent::PerJob {
            price_micros: price_micros()?,
        },
        "monthly" => PriceComponent::Monthly {
            price_micros: price_micros()?,
        },
        "hourly" => PriceComponent::Hourly {
            price_micros: price_micros()?,
        },
        "per_unit" => PriceComponent::PerUnit {
            metric: metric(&c.metric, field)?,
            unit_size: c.unit_size.unwrap_or(1),
            price: unit_price(
                c.price
                    .as_ref()
                    .ok_or_else(|| invalid(field, "price missing"))?,
                field,
            )?,
            free_units: c.free_units.unwrap_or(0),
            round_up: c.round_up.unwrap_or(false),
        },
        "compute_power" => PriceComponent::ComputePower {
            metric: metric(&c.metric, field)?,
            unit_size: c.unit_size.unwrap_or(1),
            coefficient: c
                .coefficient
                .as_ref()
                .ok_or_else(|| invalid(field, "coefficient missing"))?
                .decimal(field)?,
            price: unit_price(
                c.price
                    .as_ref()
                    .ok_or_else(|| invalid(field, "price missing"))?,
                field,
            )?,
        },
        "package" => PriceComponent::Package {
            metric: metric(&c.metric, field)?,
            unit_size: c.unit_size.unwrap_or(1),
            included_units: c.included_units.unwrap_or(0),
            price_micros: price_micros()?,
            overage_price: c
                .overage_price
                .as_ref()
                .map(|p| unit_price(p, field))
                .transpose()?,
        },
        "graduated" => PriceComponent::Graduated {
            metric: metric(&c.metric, field)?,
            unit_size: c.unit_size.unwrap_or(1),
            tiers: tiers()?,
            free_units: c.free_units.unwrap_or(0),
            round_up: c.round_up.unwrap_or(false),
        },
        "volume" => PriceComponent::Volume {
            metric: metric(&c.metric, field)?,
            unit_size: c.unit_size.unwrap_or(1),
            tiers: tiers()?,
            free_units: c.free_units.unwrap_or(0),
            round_up: c.round_up.unwrap_or(false),
        },
        other => return Err(invalid(field, format!("unknown component type {other}"))),
    })
}

fn strategy(s: &str, field: &str) -> Result<DiscountStrategy, ScenarioError> {
    Ok(match s {
        "customer_only" => DiscountStrategy::CustomerOnly,
        "platform_only" => DiscountStrategy::PlatformOnly,
        "stacked" => DiscountStrategy::Stacked(StackOrder::CustomerFirst),
        "stacked_platform_first" => DiscountStrategy::Stacked(StackOrder::PlatformFirst),
        "none" => DiscountStrategy::NoDiscount,
        other => return Err(invalid(field, format!("unknown strategy {other}"))),
    })
}

fn discount(
    d: &DiscountDto,
    default_source: DiscountSource,
    contract_customer: Option<&str>,
    field: &str,
) -> Result<Discount, ScenarioError> {
    let source = match d.source.as_deref() {
        None => default_source,
        Some("platform") => DiscountSource::Platform,
        Some("customer") => DiscountSource::Customer,
        Some("contract") => DiscountSource::Contract,
        Some(o) => return Err(invalid(field, format!("unknown source {o}"))),
    };
    let count = |n: &Option<Num>| -> Result<Option<u64>, ScenarioError> {
        match n {
            None => Ok(None),
            Some(Num::Int(i)) => u64::try_from(*i)
                .map(Some)
                .map_err(|_| invalid(field, "negative range")),
            Some(Num::Text(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| invalid(field, "bad range value")),
        }
    };
    let months = |n: &Option<Num>| -> Result<Option<u32>, ScenarioError> {
        count(n)?
            .map(|v| u32::try_from(v).map_err(|_| invalid(field, "range too large")))
            .transpose()
    };
    let range = match d.range.as_deref().unwrap_or("unlimited") {
        "unlimited" => DiscountRange::Unlimited,
        "quantity" => DiscountRange::Quantity {
            from: count(&d.from)?.unwrap_or(0),
            to: count(&d.to)?,
        },
        "amount" => DiscountRange::Amount {
            from: d.from.as_ref().map_or(Ok(0), |n| n.micros(field))?,
            to: d.to.as_ref().map(|n| n.micros(field)).transpose()?,
        },
        "months" => DiscountRange::Months {
            from: months(&d.from)?.unwrap_or(0),
            to: months(&d.to)?,
        },
        o => return Err(invalid(field, format!("unknown range {o}"))),
    };
    let (source, customer) = match contract_customer {
        Some(c) => (DiscountSource::Contract, Some(c.to_string())),
        None => (source, d.customer.clone()),
    };
    let out = Discount {
        id: d.id.clone(),
        source,
        customer,
        product: d.product.clone(),
        range,
        factor: d.factor.decimal(field)?,
        valid_from: opt_time(&d.valid_from, field)?.unwrap_or(0),
        valid_until: opt_time(&d.valid_until, field)?,
        enabled: d.enabled.unwrap_or(true),
    };
    out.validate().map_err(|e| invalid(field, e))?;
    Ok(out)
}

fn limit(l: &LimitDto, field: &str) -> Result<LimitConfig, ScenarioError> {
    Ok(LimitConfig {
        min_purchase_micros: l
            .min_purchase
            .as_ref()
            .map(|n| n.micros(field))
            .transpose()?,
        min_freeze_micros: l.min_freeze.as_ref().map(|n| n.micros(field)).transpose()?,
        enabled: l.enabled.unwrap_or(true),
    })
}

// ---------------------------------------------------------------------------------------
// Simulation state
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Product {
    mode: BillingMode,
    plan: PricePlan,
    monthly_price: Option<Micros>,
    provider: Option<String>,
    bps: u32,
}

#[derive(Debug, Clone)]
struct CustomerState {
    wallet: Wallet,
    manual: ManualFreeze,
    auto_frozen: BTreeSet<String>,
    first_usage: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct SubState {
    sub: Subscription,
    credit_paid: Micros,
    last_discount: DiscountOutcome,
}

#[derive(Debug, Clone)]
struct Metered {
    customer: String,
    product: String,
    settled_until: Millis,
    closed: bool,
}

#[derive(Debug, Clone)]
struct RechargeVoucher {
    customer: String,
    amount: Micros,
    valid_from: Millis,
    valid_until: Option<Millis>,
    redeemed: bool,
}

/// A customer's balances at the end of a simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerBalance {
    /// Customer.
    pub customer: String,
    /// Cash.
    pub cash_micros: Micros,
    /// Recharge-voucher balance.
    pub recharge_voucher_micros: Micros,
    /// Deduction vouchers left.
    pub deduction_voucher_micros: Micros,
    /// Credit limit.
    pub credit_limit_micros: Micros,
    /// Credit available.
    pub credit_available_micros: Micros,
    /// Arrears.
    pub arrears_micros: Micros,
    /// Coupons not used.
    pub unused_coupons: usize,
}

/// What a simulation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulationReport {
    /// Scenario name.
    pub name: String,
    /// One or more lines per event.
    pub log: Vec<String>,
    /// Final balances per customer.
    pub customers: Vec<CustomerBalance>,
    /// Period bills.
    pub bills: Vec<PeriodBill>,
    /// Provider settlement statements.
    pub provider_statements: Vec<ProviderStatement>,
    /// The §3.8.3.2 period view: every line split by hours, per (customer, year, month).
    pub period_view: Vec<((String, i32, u8), Amounts)>,
    /// Non-zero ledger balances (credit-normal), by account name.
    pub ledger_balances: Vec<(String, i128)>,
    /// Transfers in the ledger.
    pub transfer_count: usize,
}

struct Sim {
    book: DiscountBook,
    limits: LimitSettings,
    basis: DailyPriceBasis,
    makeup_discount: bool,
    customers: BTreeMap<String, CustomerState>,
    products: BTreeMap<String, Product>,
    subs: BTreeMap<String, SubState>,
    metered: BTreeMap<String, Metered>,
    recharge_vouchers: BTreeMap<String, RechargeVoucher>,
    ledger: Ledger,
    bills: BillBook,
    log: Vec<String>,
    seq: BTreeMap<&'static str, u64>,
}

fn amounts_text(a: &Amounts) -> String {
    format!(
        "original {} - platform {} - customer {} = paid {} | coupon {} + deduction voucher {} + recharge voucher {} + cash {} + credit {} + arrears {}",
        format_amount(a.original),
        format_amount(a.platform_discount),
        format_amount(a.customer_discount),
        format_amount(a.paid()),
        format_amount(a.coupon),
        format_amount(a.deduction_voucher),
        format_amount(a.recharge_voucher),
        format_amount(a.cash),
        format_amount(a.credit),
        format_amount(a.arrears),
    )
}

fn u64_amount(m: Micros) -> Result<u64, ScenarioError> {
    u64::try_from(m).map_err(|_| ScenarioError::Inconsistent(format!("negative transfer {m}")))
}

impl Sim {
    fn customer(&mut self, id: &str) -> Result<&mut CustomerState, ScenarioError> {
        self.customers
            .get_mut(id)
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "customer",
                id: id.to_string(),
            })
    }

    fn product(&self, id: &str) -> Result<Product, ScenarioError> {
        self.products
            .get(id)
            .cloned()
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "product",
                id: id.to_string(),
            })
    }

    fn post(&mut self, chain: Vec<Transfer>, now: Millis) -> Result<(), ScenarioError> {
        if chain.is_empty() {
            return Ok(());
        }
        let chain = link_all(chain);
        let results = self.ledger.create_transfers(&chain, now);
        for r in results {
            match r {
                Ok(TransferOutcome::Created) => {}
                other => return Err(ScenarioError::Ledger(format!("{other:?}"))),
            }
        }
        // Self-check: a retry of the same chain must change nothing.
        let retry = self.ledger.create_transfers(&chain, now);
        if retry.iter().any(|r| *r != Ok(TransferOutcome::Exists)) {
            return Err(ScenarioError::Inconsistent(format!(
                "retrying a chain was not idempotent: {retry:?}"
            )));
        }
        Ok(())
    }

    fn ensure_customer_accounts(&mut self, c: &str) -> Result<(), ScenarioError> {
        for k in [
            AccountKind::CustomerCash(c.into()),
            AccountKind::CustomerRechargeVoucher(c.into()),
            AccountKind::CustomerDeductionVoucher(c.into()),
            AccountKind::CustomerCredit(c.into()),
            AccountKind::CustomerHolds(c.into()),
            AccountKind::CustomerArrears(c.into()),
        ] {
            self.ledger
                .ensure_account(&k)
                .map_err(|e| ScenarioError::Ledger(e.to_string()))?;
        }
        Ok(())
    }

    fn next_id(&mut self, tag: &'static str) -> String {
        let n = self.seq.entry(tag).or_insert(0);
        *n += 1;
        format!("{tag}{n}")
    }

    /// Ledger chain for a payment (or negative refund amounts) of a bill line.
    fn payment_chain(&self, line: &BillLine) -> Result<Vec<Transfer>, ScenarioError> {
        let c = &line.customer;
        let a = &line.amounts;
        let rev = AccountKind::OperatorRevenue;
        let mut out = Vec::new();
        let id = |part: &str| transfer_id(&["bill-line", &line.id, part]);
        let mut push = |part: &str,
                        from: AccountKind,
                        to: AccountKind,
                        amount: Micros,
                        code: u16|
         -> Result<(), ScenarioError> {
            if amount > 0 {
                out.push(plain(id(part), &from, &to, u64_amount(amount)?, code));
            } else if amount < 0 {
                out.push(plain(id(part), &to, &from, u64_amount(-amount)?, code));
            }
            Ok(())
        };
        if line.kind == BillLineKind::Refund {
            push(
                "cash",
                AccountKind::OperatorRefunds,
                AccountKind::CustomerCash(c.clone()),
                -a.cash,
                codes::REFUND,
            )?;
            push(
                "credit",
                AccountKind::OperatorRefunds,
                AccountKind::CustomerCredit(c.clone()),
                -a.credit,
                codes::REFUND,
            )?;
        } else {
            push(
                "coupon",
                AccountKind::OperatorMarketing,
                rev.clone(),
                a.coupon,
                codes::COUPON,
            )?;
            push(
                "deduction",
                AccountKind::CustomerDeductionVoucher(c.clone()),
                rev.clone(),
                a.deduction_voucher,
                codes::CHARGE,
            )?;
            push(
                "recharge",
                AccountKind::CustomerRechargeVoucher(c.clone()),
                rev.clone(),
                a.recharge_voucher,
                codes::CHARGE,
            )?;
            push(
                "cash",
                AccountKind::CustomerCash(c.clone()),
                rev.clone(),
                a.cash,
                codes::CHARGE,
            )?;
            push(
                "credit",
                AccountKind::CustomerCredit(c.clone()),
                rev.clone(),
                a.credit,
                codes::CHARGE,
            )?;
            push(
                "arrears",
                AccountKind::CustomerArrears(c.clone()),
                rev.clone(),
                a.arrears,
                codes::CHARGE,
            )?;
        }
        if let Some(p) = &line.provider {
            let prov = line.split().provider_micros;
            let from = if line.kind == BillLineKind::Refund {
                AccountKind::OperatorRefunds
            } else {
                rev.clone()
            };
            push(
                "provider",
                from,
                AccountKind::ProviderReceivable(p.clone()),
                prov,
                codes::PROVIDER_SHARE,
            )?;
        }
        Ok(out)
    }

    fn post_line(
        &mut self,
        line: BillLine,
        arrived_at: Millis,
        now: Millis,
    ) -> Result<Placement, ScenarioError> {
        line.validate()?;
        let chain = self.payment_chain(&line)?;
        self.post(chain, now)?;
        let text = format!(
            "  line {} {} {} [{} → {}]: {}",
            line.id,
            line.kind.name(),
            line.product,
            format_millis(line.service_start),
            format_millis(line.service_end),
            amounts_text(&line.amounts)
        );
        self.log.push(text);
        let placement = self.bills.post(line, arrived_at)?;
        if let Placement::Correction { of, on } = placement {
            self.log.push(format!(
                "  late: correction for {}-{:02} on the {}-{:02} bill",
                of.0, of.1, on.0, on.1
            ));
        }
        Ok(placement)
    }

    #[allow(clippy::too_many_arguments)]
    fn make_line(
        &mut self,
        customer: &str,
        product: &str,
        kind: BillLineKind,
        at: Millis,
        span: (Millis, Millis),
        amounts: Amounts,
        note: String,
    ) -> Result<BillLine, ScenarioError> {
        let p = self.product(product)?;
        Ok(BillLine {
            id: self.next_id("L"),
            customer: customer.to_string(),
            product: product.to_string(),
            provider: p.provider.clone(),
            operator_share_bps: p.bps,
            kind,
            mode: p.mode,
            at,
            service_start: span.0,
            service_end: span.1,
            amounts,
            note,
        })
    }

    fn discount_for(
        &self,
        customer: &str,
        product: &str,
        quantity: u64,
        months: u32,
        original: Micros,
        at: Millis,
    ) -> Result<DiscountOutcome, ScenarioError> {
        self.book
            .apply(&DiscountRequest {
                customer,
                product,
                quantity,
                amount_micros: original,
                months,
                at,
            })
            .map_err(|e| invalid("discounts", e))
    }

    fn check_consistency(&self) -> Result<(), ScenarioError> {
        self.ledger
            .check_invariants()
            .map_err(|e| ScenarioError::Inconsistent(e.to_string()))?;
        for (c, s) in &self.customers {
            let w = &s.wallet;
            let pairs = [
                (
                    "cash",
                    i128::from(w.cash_micros),
                    self.ledger
                        .balance_of(&AccountKind::CustomerCash(c.clone())),
                ),
                (
                    "recharge voucher",
                    i128::from(w.recharge_voucher_micros),
                    self.ledger
                        .balance_of(&AccountKind::CustomerRechargeVoucher(c.clone())),
                ),
                (
                    "deduction voucher",
                    i128::from(w.deduction_voucher_total_micros()),
                    self.ledger
                        .balance_of(&AccountKind::CustomerDeductionVoucher(c.clone())),
                ),
                (
                    "credit",
                    -i128::from(w.credit_used_micros),
                    self.ledger
                        .balance_of(&AccountKind::CustomerCredit(c.clone())),
                ),
                (
                    "arrears",
                    -i128::from(w.arrears_micros),
                    self.ledger
                        .balance_of(&AccountKind::CustomerArrears(c.clone())),
                ),
            ];
            for (name, wallet, ledger) in pairs {
                if wallet != ledger {
                    return Err(ScenarioError::Inconsistent(format!(
                        "customer {c} {name}: wallet {wallet} != ledger {ledger}"
                    )));
                }
            }
        }
        for b in self.bills.bills() {
            for l in &b.lines {
                if !l.line.amounts.identities_hold() {
                    return Err(ScenarioError::Inconsistent(format!("line {}", l.line.id)));
                }
            }
        }
        Ok(())
    }

    fn cash_of(&self, c: &str) -> Micros {
        self.customers
            .get(c)
            .map_or(0, |s| s.wallet.net_cash_micros())
    }

    /// Freeze decision for starting work on a metered product; updates the auto state.
    fn freeze_check(
        &mut self,
        customer: &str,
        product: &str,
    ) -> Result<Result<(), String>, ScenarioError> {
        let mode = self.product(product)?.mode;
        let cash = self.cash_of(customer);
        let limits = self.limits.clone();
        let st = self.customer(customer)?;
        let d = freeze_state(
            &limits,
            &FreezeInput {
                customer,
                product,
                mode,
                cash_micros: cash,
                was_auto_frozen: st.auto_frozen.contains(product),
                manual: &st.manual,
            },
        );
        if d.auto_frozen {
            st.auto_frozen.insert(product.to_string());
        } else {
            st.auto_frozen.remove(product);
        }
        if let Some(n) = &d.notice {
            self.log.push(format!("  notice: {n}"));
        }
        Ok(d.admit_job())
    }

    fn purchase_check(&mut self, customer: &str, product: &str) -> Result<(), String> {
        let cash = self.cash_of(customer);
        check_purchase(&self.limits, customer, product, cash).map_err(|e| e.to_string())?;
        if let Some(st) = self.customers.get(customer)
            && let ManualFreeze::Frozen(why) = &st.manual
        {
            return Err(format!("account {customer} frozen manually: {why}"));
        }
        Ok(())
    }

    /// Plans a payment on a copy of the wallet.
    fn plan(
        wallet: &mut Wallet,
        product: &str,
        mode: BillingMode,
        coupon_allowed: bool,
        d: &DiscountOutcome,
        at: Millis,
    ) -> Result<Payment, String> {
        let p = plan_payment(
            wallet,
            &PaymentRequest {
                product,
                mode,
                coupon_allowed,
                original_micros: d.original_micros,
                platform_discount_micros: d.platform_micros(),
                customer_discount_micros: d.customer_micros(),
                at,
            },
        )
        .map_err(|e| e.to_string())?;
        apply_payment(wallet, &p).map_err(|e| e.to_string())?;
        Ok(p)
    }

    fn reject(&mut self, why: impl std::fmt::Display) {
        self.log.push(format!("  rejected: {why}"));
    }

    fn subscribe(&mut self, e: &Ev) -> Result<(), ScenarioError> {
        let id = e.id()?;
        if self.subs.contains_key(id) {
            return Err(ScenarioError::Duplicate(id.to_string()));
        }
        let customer = e.customer()?;
        let product_id = e.product()?;
        let product = self.product(product_id)?;
        let months = e.months()?;
        let units = e.units.unwrap_or(1);
        let Some(monthly) = product.monthly_price else {
            return Err(invalid(
                format!("event {}", e.index),
                "subscribe needs a prepaid product with monthly_price",
            ));
        };
        if product.mode != BillingMode::Prepaid {
            return Err(invalid(
                format!("event {}", e.index),
                "subscribe needs a prepaid product",
            ));
        }
        let sub = Subscription::new(id, customer, product_id, monthly, units, e.at, months)
            .map_err(|err| invalid(format!("event {}", e.index), err))?;
        self.log.push(format!(
            "  term {} → {} ({} month(s) × {} unit(s) at {}/month)",
            format_millis(sub.start()),
            format_millis(sub.end()),
            months,
            units,
            format_amount(monthly)
        ));
        if let Err(why) = self.purchase_check(customer, product_id) {
            self.reject(why);
            return Ok(());
        }
        let rated = rate_plan(
            &product.plan,
            &Usage {
                units,
                months,
                include_one_time: true,
                ..Usage::default()
            },
        )
        .map_err(|err| invalid(format!("product {product_id}"), err))?;
        let d = self.discount_for(
            customer,
            product_id,
            units,
            months,
            rated.original_micros,
            e.at,
        )?;
        let mut wallet = self.customer(customer)?.wallet.clone();
        let pay = match Self::plan(
            &mut wallet,
            product_id,
            BillingMode::Prepaid,
            true,
            &d,
            e.at,
        ) {
            Ok(p) => p,
            Err(why) => {
                self.reject(why);
                return Ok(());
            }
        };
        self.customer(customer)?.wallet = wallet;
        let line = self.make_line(
            customer,
            product_id,
            BillLineKind::Order,
            e.at,
            (sub.start(), sub.end()),
            Amounts::from_payment(&pay),
            format!("order {id}"),
        )?;
        self.log.push(format!(
            "  order view (§3.8.1): {} - discount {} - coupon {} = {}",
            format_amount(pay.original_micros),
            format_amount(pay.discount_micros()),
            format_amount(pay.coupon_micros),
            format_amount(pay.order_paid_micros())
        ));
        self.post_line(line, e.at, e.at)?;
        let mut sub = sub;
        sub.record_paid(pay.refundable_micros());
        self.subs.insert(
            id.to_string(),
            SubState {
                sub,
                credit_paid: pay.credit_micros,
                last_discount: d,
            },
        );
        Ok(())
    }

    fn makeup_discount(
        &self,
        st: &SubState,
        amount: Micros,
    ) -> Result<DiscountOutcome, ScenarioError> {
        if !self.makeup_discount {
            return Ok(DiscountOutcome::none(amount));
        }
        let find = |a: &Option<crate::discount::AppliedDiscount>| {
            a.as_ref().map(|a| Discount {
                id: a.id.clone(),
                source: DiscountSource::Platform,
                customer: None,
                product: None,
                range: DiscountRange::Unlimited,
                factor: a.factor,
                valid_from: 0,
                valid_until: None,
                enabled: true,
            })
        };
        let p = find(&st.last_discount.platform);
        let c = find(&st.last_discount.customer);
        apply_factors(amount, p.as_ref(), c.as_ref(), StackOrder::CustomerFirst)
            .map_err(|e| invalid("makeup_discount", e))
    }

    fn renew(&mut self, e: &Ev) -> Result<(), ScenarioError> {
        let id = e.id()?.to_string();
        let months = e.months()?;
        let st = self
            .subs
            .get(&id)
            .cloned()
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "subscription",
                id: id.clone(),
            })?;
        let customer = st.sub.customer.clone();
        let product_id = st.sub.product.clone();
        if let Err(why) = self.purchase_check(&customer, &product_id) {
            self.reject(why);
            return Ok(());
        }
        let q = match st.sub.quote_renewal(months, e.at, self.basis) {
            Ok(q) => q,
            Err(why) => {
                self.reject(why);
                return Ok(());
            }
        };
        let mut wallet = self.customer(&customer)?.wallet.clone();
        let mut lines = Vec::new();
        let mut credit_paid = 0;
        let mut refundable = 0;
        if let Some(m) = q.makeup {
            self.log.push(format!(
                "  make-up {} → {}: {} day(s) × {}/{} = {}",
                format_millis(m.start),
                format_millis(m.end),
                m.days,
                format_amount(
                    st.sub
                        .monthly_total_micros()
                        .map_err(|err| invalid("price", err))?
                ),
                m.basis_days,
                format_amount(m.amount_micros)
            ));
            let d = self.makeup_discount(&st, m.amount_micros)?;
            match Self::plan(
                &mut wallet,
                &product_id,
                BillingMode::Prepaid,
                false,
                &d,
                e.at,
            ) {
                Ok(p) => lines.push((BillLineKind::MakeUp, (m.start, m.end), p)),
                Err(why) => {
                    self.reject(why);
                    return Ok(());
                }
            }
        }
        let d = self.discount_for(
            &customer,
            &product_id,
            st.sub.units,
            months,
            q.renewal_original_micros,
            e.at,
        )?;
        match Self::plan(
            &mut wallet,
            &product_id,
            BillingMode::Prepaid,
            true,
            &d,
            e.at,
        ) {
            Ok(p) => {
                credit_paid += p.credit_micros;
                refundable += p.refundable_micros();
                lines.push((BillLineKind::Renewal, (q.new_start, q.new_end), p));
            }
            Err(why) => {
                self.reject(why);
                return Ok(());
            }
        }
        self.log.push(format!(
            "  new term {} → {} ({} month(s))",
            format_millis(q.new_start),
            format_millis(q.new_end),
            months
        ));
        self.customer(&customer)?.wallet = wallet;
        for (kind, span, p) in lines {
            let line = self.make_line(
                &customer,
                &product_id,
                kind,
                e.at,
                span,
                Amounts::from_payment(&p),
                format!("{} {id}", kind.name()),
            )?;
            self.post_line(line, e.at, e.at)?;
        }
        let s = self
            .subs
            .get_mut(&id)
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "subscription",
                id: id.clone(),
            })?;
        s.sub
            .apply_renewal(&q)
            .map_err(|err| ScenarioError::Inconsistent(err.to_string()))?;
        s.sub.record_paid(refundable);
        s.credit_paid += credit_paid;
        s.last_discount = d;
        Ok(())
    }

    fn unsubscribe(&mut self, e: &Ev) -> Result<(), ScenarioError> {
        let id = e.id()?.to_string();
        let st = self
            .subs
            .get(&id)
            .cloned()
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "subscription",
                id: id.clone(),
            })?;
        let customer = st.sub.customer.clone();
        let product_id = st.sub.product.clone();
        let q = match st.sub.quote_unsubscribe(e.at, self.basis) {
            Ok(q) => q,
            Err(why) => {
                self.reject(why);
                return Ok(());
            }
        };
        let mut wallet = self.customer(&customer)?.wallet.clone();
        let mut makeup_line = None;
        if let Some(m) = q.makeup {
            self.log.push(format!(
                "  make-up {} → {}: {} day(s) × {}/{} = {}",
                format_millis(m.start),
                format_millis(m.end),
                m.days,
                format_amount(
                    st.sub
                        .monthly_total_micros()
                        .map_err(|err| invalid("price", err))?
                ),
                m.basis_days,
                format_amount(m.amount_micros)
            ));
            let d = self.makeup_discount(&st, m.amount_micros)?;
            match Self::plan(
                &mut wallet,
                &product_id,
                BillingMode::Prepaid,
                false,
                &d,
                e.at,
            ) {
                Ok(p) => makeup_line = Some(((m.start, m.end), p)),
                Err(why) => {
                    self.reject(why);
                    return Ok(());
                }
            }
        }
        let monthly = st
            .sub
            .monthly_total_micros()
            .map_err(|err| invalid("price", err))?;
        self.log.push(format!(
            "  refund = paid {} - {} × {} month(s) used = {} (of {} month(s) bought)",
            format_amount(q.refundable_paid_micros),
            format_amount(monthly),
            q.months_used,
            format_amount(q.refund_micros),
            q.months_total
        ));
        let split = split_refund(q.refund_micros, st.credit_paid);
        apply_refund(&mut wallet, split);
        self.customer(&customer)?.wallet = wallet;
        if let Some((span, p)) = makeup_line {
            let line = self.make_line(
                &customer,
                &product_id,
                BillLineKind::MakeUp,
                e.at,
                span,
                Amounts::from_payment(&p),
                format!("make_up {id}"),
            )?;
            self.post_line(line, e.at, e.at)?;
        }
        if q.refund_micros > 0 {
            let line = self.make_line(
                &customer,
                &product_id,
                BillLineKind::Refund,
                e.at,
                (e.at, e.at),
                Amounts::refund(split.cash_micros, split.credit_micros),
                format!("refund {id}"),
            )?;
            self.post_line(line, e.at, e.at)?;
        }
        if let Some(s) = self.subs.get_mut(&id) {
            s.sub.close(e.at);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn charge_metered(
        &mut self,
        customer: &str,
        product_id: &str,
        kind: BillLineKind,
        usage: Usage,
        span: (Millis, Millis),
        at: Millis,
        arrived_at: Millis,
    ) -> Result<(), ScenarioError> {
        let product = self.product(product_id)?;
        let rated = rate_plan(&product.plan, &usage)
            .map_err(|err| invalid(format!("product {product_id}"), err))?;
        for l in &rated.lines {
            self.log.push(format!(
                "  rated {} {} → {}",
                l.kind.name(),
                l.quantity.normalize(),
                format_amount(l.amount_micros)
            ));
        }
        let d = self.discount_for(
            customer,
            product_id,
            usage.units.max(1),
            0,
            rated.original_micros,
            at,
        )?;
        let mut wallet = self.customer(customer)?.wallet.clone();
        let pay = Self::plan(
            &mut wallet,
            product_id,
            BillingMode::Postpaid,
            false,
            &d,
            at,
        )
        .map_err(|why| ScenarioError::Inconsistent(format!("postpaid payment failed: {why}")))?;
        self.customer(customer)?.wallet = wallet;
        let line = self.make_line(
            customer,
            product_id,
            kind,
            at,
            span,
            Amounts::from_payment(&pay),
            String::new(),
        )?;
        self.post_line(line, arrived_at, at)?;
        Ok(())
    }

    fn settle_resource(
        &mut self,
        id: &str,
        until: Millis,
        at: Millis,
    ) -> Result<(), ScenarioError> {
        let Some(m) = self.metered.get(id).cloned() else {
            return Err(ScenarioError::Unknown {
                kind: "metered resource",
                id: id.to_string(),
            });
        };
        if m.closed || until <= m.settled_until {
            return Ok(());
        }
        if (until - m.settled_until) / MS_PER_HOUR > MAX_SETTLE_HOURS {
            return Err(invalid("settle", "settlement spans too many hours"));
        }
        let usage = Usage {
            resource_millis: u64::try_from(until - m.settled_until).unwrap_or(0),
            units: 1,
            ..Usage::default()
        };
        self.log.push(format!(
            "  {id}: settle {} → {}",
            format_millis(m.settled_until),
            format_millis(until)
        ));
        self.charge_metered(
            &m.customer,
            &m.product,
            BillLineKind::Hourly,
            usage,
            (m.settled_until, until),
            at,
            at,
        )?;
        if let Some(m) = self.metered.get_mut(id) {
            m.settled_until = until;
        }
        Ok(())
    }

    fn event(&mut self, e: &Ev) -> Result<(), ScenarioError> {
        match e.kind.as_str() {
            "subscribe" => self.subscribe(e)?,
            "renew" => self.renew(e)?,
            "unsubscribe" => self.unsubscribe(e)?,
            "freeze_resource" => {
                let id = e.id()?;
                let s = self
                    .subs
                    .get_mut(id)
                    .ok_or_else(|| ScenarioError::Unknown {
                        kind: "subscription",
                        id: id.to_string(),
                    })?;
                s.sub.freeze(e.at);
                let end = s.sub.end();
                self.log.push(format!(
                    "  resource frozen at {} (term end {})",
                    format_millis(e.at),
                    format_millis(end)
                ));
            }
            "open_metered" => {
                let id = e.id()?.to_string();
                if self.metered.contains_key(&id) {
                    return Err(ScenarioError::Duplicate(id));
                }
                let customer = e.customer()?.to_string();
                let product = e.product()?.to_string();
                let p = self.product(&product)?;
                if p.mode != BillingMode::Postpaid {
                    return Err(invalid(
                        format!("event {}", e.index),
                        "open_metered needs a postpaid product",
                    ));
                }
                if let Err(why) = self.purchase_check(&customer, &product) {
                    self.reject(why);
                    return Ok(());
                }
                if let Err(why) = self.freeze_check(&customer, &product)? {
                    self.reject(why);
                    return Ok(());
                }
                self.log
                    .push(format!("  {id}: metering starts {}", format_millis(e.at)));
                self.metered.insert(
                    id,
                    Metered {
                        customer,
                        product,
                        settled_until: e.at,
                        closed: false,
                    },
                );
            }
            "settle" => {
                let ids: Vec<String> = self.metered.keys().cloned().collect();
                for id in ids {
                    self.settle_resource(&id, floor_hour(e.at), e.at)?;
                }
            }
            "close_metered" => {
                let id = e.id()?.to_string();
                let end = ceil_hour(e.at);
                self.settle_resource(&id, end, e.at)?;
                if let Some(m) = self.metered.get_mut(&id) {
                    m.closed = true;
                }
                self.log
                    .push(format!("  {id}: billing ends {}", format_millis(end)));
            }
            "usage" => {
                let customer = e.customer()?.to_string();
                let product = e.product()?.to_string();
                if self.product(&product)?.mode != BillingMode::Postpaid {
                    return Err(invalid(
                        format!("event {}", e.index),
                        "usage needs a postpaid product",
                    ));
                }
                if let Err(why) = self.freeze_check(&customer, &product)? {
                    self.reject(why);
                    return Ok(());
                }
                let first = self
                    .customer(&customer)?
                    .first_usage
                    .insert(product.clone());
                let usage = Usage {
                    jobs: e.jobs.unwrap_or(0),
                    rows: e.rows.unwrap_or(0),
                    cpu_millis: e.cpu_millis.unwrap_or(0),
                    resource_millis: e.resource_millis.unwrap_or(0),
                    units: e.units.unwrap_or(0),
                    months: 0,
                    include_one_time: first,
                };
                let arrived = match &e.arrived_at {
                    Some(a) => time(a, "arrived_at")?,
                    None => e.at,
                };
                if arrived < e.at {
                    return Err(invalid("arrived_at", "usage arrives before it happens"));
                }
                self.charge_metered(
                    &customer,
                    &product,
                    BillLineKind::Usage,
                    usage,
                    (e.at, e.at),
                    e.at,
                    arrived,
                )?;
            }
            "check_job" => {
                let customer = e.customer()?.to_string();
                let product = e.product()?.to_string();
                match self.freeze_check(&customer, &product)? {
                    Ok(()) => self.log.push("  job may start".to_string()),
                    Err(why) => self.log.push(format!("  job refused: {why}")),
                }
            }
            "recharge" => {
                let customer = e.customer()?.to_string();
                let amount = e.amount()?;
                if amount <= 0 {
                    return Err(invalid("amount", "recharge must be positive"));
                }
                let before = self.customer(&customer)?.wallet.arrears_micros;
                recharge_cash(&mut self.customer(&customer)?.wallet, amount);
                let settled = before - self.customer(&customer)?.wallet.arrears_micros;
                let tag = self.next_id("R");
                let mut chain = vec![plain(
                    transfer_id(&["recharge", &tag]),
                    &AccountKind::External,
                    &AccountKind::CustomerCash(customer.clone()),
                    u64_amount(amount)?,
                    codes::RECHARGE,
                )];
                if settled > 0 {
                    chain.push(plain(
                        transfer_id(&["arrears", &tag]),
                        &AccountKind::CustomerCash(customer.clone()),
                        &AccountKind::CustomerArrears(customer.clone()),
                        u64_amount(settled)?,
                        codes::ARREARS,
                    ));
                }
                self.post(chain, e.at)?;
                self.log.push(format!(
                    "  cash +{} (arrears settled {})",
                    format_amount(amount),
                    format_amount(settled)
                ));
            }
            "redeem_recharge_voucher" => {
                let id = e.id()?.to_string();
                let v = self.recharge_vouchers.get(&id).cloned().ok_or_else(|| {
                    ScenarioError::Unknown {
                        kind: "recharge voucher",
                        id: id.clone(),
                    }
                })?;
                if v.redeemed || e.at < v.valid_from || v.valid_until.is_some_and(|u| e.at >= u) {
                    self.reject(format!(
                        "recharge voucher {id} is used or outside its validity"
                    ));
                    return Ok(());
                }
                self.customer(&v.customer)?.wallet.recharge_voucher_micros += v.amount;
                self.post(
                    vec![plain(
                        transfer_id(&["recharge-voucher", &id]),
                        &AccountKind::OperatorMarketing,
                        &AccountKind::CustomerRechargeVoucher(v.customer.clone()),
                        u64_amount(v.amount)?,
                        codes::RECHARGE_VOUCHER,
                    )],
                    e.at,
                )?;
                if let Some(v) = self.recharge_vouchers.get_mut(&id) {
                    v.redeemed = true;
                }
                self.log
                    .push(format!("  recharge voucher +{}", format_amount(v.amount)));
            }
            "manual_freeze" | "manual_thaw" | "clear_manual" => {
                let customer = e.customer()?.to_string();
                let m = match e.kind.as_str() {
                    "manual_freeze" => {
                        ManualFreeze::Frozen(e.reason.clone().unwrap_or_else(|| "operator".into()))
                    }
                    "manual_thaw" => ManualFreeze::Thawed,
                    _ => ManualFreeze::None,
                };
                self.customer(&customer)?.manual = m;
            }
            "whitelist_add" => {
                let customer = e.customer()?.to_string();
                self.customer(&customer)?;
                self.limits.platform_whitelist.insert(customer);
            }
            "whitelist_remove" => {
                let customer = e.customer()?.to_string();
                self.limits.platform_whitelist.remove(&customer);
            }
            "terminate_contract" => {
                let id = e.id()?.to_string();
                let k = self
                    .book
                    .contracts
                    .iter_mut()
                    .find(|k| k.id == id)
                    .ok_or_else(|| ScenarioError::Unknown {
                        kind: "contract",
                        id: id.clone(),
                    })?;
                k.terminated_at = Some(e.at);
                let customer = k.customer.clone();
                let granted = k.credit_micros;
                let used = self.customer(&customer)?.wallet.credit_used_micros;
                let withdrawn = granted
                    .min((self.customer(&customer)?.wallet.credit_limit_micros - used).max(0));
                let st = self.customer(&customer)?;
                st.wallet.credit_limit_micros -= withdrawn;
                let limit = st.wallet.credit_limit_micros;
                self.ledger
                    .set_limit(
                        AccountKind::CustomerCredit(customer.clone()).id(),
                        u64_amount(limit)?,
                    )
                    .map_err(|err| ScenarioError::Ledger(err.to_string()))?;
                self.log.push(format!(
                    "  contract {id} terminated: unused credit {} withdrawn, credit limit now {}",
                    format_amount(withdrawn),
                    format_amount(limit)
                ));
            }
            "payout" => {
                let provider = e
                    .provider
                    .clone()
                    .ok_or_else(|| invalid("provider", "missing"))?;
                let amount = e.amount()?;
                let tag = self.next_id("P");
                let results = self.ledger.create_transfers(
                    &[plain(
                        transfer_id(&["payout", &tag]),
                        &AccountKind::ProviderReceivable(provider.clone()),
                        &AccountKind::ProviderPaidOut(provider.clone()),
                        u64_amount(amount)?,
                        codes::PAYOUT,
                    )],
                    e.at,
                );
                match results.first() {
                    Some(Ok(_)) => self
                        .log
                        .push(format!("  paid out {}", format_amount(amount))),
                    Some(Err(why)) => self.reject(format!("payout: {why}")),
                    None => {}
                }
            }
            "close_bills" => {
                for (c, y, m) in self.bills.close_due(e.at)? {
                    self.log.push(format!("  bill {c} {y}-{m:02} closed"));
                }
            }
            other => {
                return Err(invalid(
                    format!("event {}", e.index),
                    format!("unknown kind {other}"),
                ));
            }
        }
        Ok(())
    }
}

/// A parsed event.
struct Ev {
    index: usize,
    at: Millis,
    kind: String,
    id: Option<String>,
    customer: Option<String>,
    product: Option<String>,
    provider: Option<String>,
    months: Option<u32>,
    units: Option<u64>,
    amount: Option<Micros>,
    jobs: Option<u64>,
    rows: Option<u64>,
    cpu_millis: Option<u64>,
    resource_millis: Option<u64>,
    arrived_at: Option<String>,
    reason: Option<String>,
}

impl Ev {
    fn field<'a>(&self, v: &'a Option<String>, name: &str) -> Result<&'a str, ScenarioError> {
        v.as_deref()
            .ok_or_else(|| invalid(format!("event {} {name}", self.index), "missing"))
    }
    fn id(&self) -> Result<&str, ScenarioError> {
        self.field(&self.id, "id")
    }
    fn customer(&self) -> Result<&str, ScenarioError> {
        self.field(&self.customer, "customer")
    }
    fn product(&self) -> Result<&str, ScenarioError> {
        self.field(&self.product, "product")
    }
    fn months(&self) -> Result<u32, ScenarioError> {
        self.months
            .ok_or_else(|| invalid(format!("event {} months", self.index), "missing"))
    }
    fn amount(&self) -> Result<Micros, ScenarioError> {
        self.amount
            .ok_or_else(|| invalid(format!("event {} amount", self.index), "missing"))
    }
}

fn bound(n: usize, what: &str) -> Result<(), ScenarioError> {
    if n > MAX_ENTITIES {
        return Err(ScenarioError::TooMany(format!("{n} {what}")));
    }
    Ok(())
}

fn build(file: ScenarioFile) -> Result<(Sim, Vec<Ev>, String), ScenarioError> {
    bound(file.customers.len(), "customers")?;
    bound(file.products.len(), "products")?;
    bound(
        file.discounts.len() + file.contracts.len(),
        "discounts and contracts",
    )?;
    bound(
        file.coupons.len() + file.deduction_vouchers.len() + file.recharge_vouchers.len(),
        "coupons and vouchers",
    )?;
    if file.events.len() > MAX_EVENTS {
        return Err(ScenarioError::TooMany(format!(
            "{} events",
            file.events.len()
        )));
    }
    let s = &file.settings;
    let mut book = DiscountBook::default();
    if let Some(st) = &s.discount_strategy {
        book.strategy = strategy(st, "settings.discount_strategy")?;
    }
    for (c, st) in s.customer_strategies.iter().flatten() {
        book.customer_strategies
            .insert(c.clone(), strategy(st, "settings.customer_strategies")?);
    }
    let basis = match s.daily_price_basis.as_deref() {
        None | Some("overdue_month_period") => DailyPriceBasis::OverdueMonthPeriod,
        Some("calendar_month_of_overdue") => DailyPriceBasis::CalendarMonthOfOverdue,
        Some("previous_term_month") => DailyPriceBasis::PreviousTermMonth,
        Some(other) => match other
            .strip_prefix("fixed_")
            .and_then(|d| d.parse::<u8>().ok())
        {
            Some(d) if (1..=31).contains(&d) => DailyPriceBasis::Fixed(d),
            _ => return Err(invalid("settings.daily_price_basis", other)),
        },
    };
    let window = s.late_window_hours.unwrap_or(0);
    if !(0..=24 * 366).contains(&window) {
        return Err(invalid("settings.late_window_hours", "must be 0..=8784"));
    }
    let mut sim = Sim {
        book,
        limits: LimitSettings::default(),
        basis,
        makeup_discount: s.makeup_discount.unwrap_or(false),
        customers: BTreeMap::new(),
        products: BTreeMap::new(),
        subs: BTreeMap::new(),
        metered: BTreeMap::new(),
        recharge_vouchers: BTreeMap::new(),
        ledger: Ledger::new(),
        bills: BillBook::new(window * MS_PER_HOUR),
        log: Vec::new(),
        seq: BTreeMap::new(),
    };
    for k in [
        AccountKind::OperatorRevenue,
        AccountKind::OperatorRefunds,
        AccountKind::OperatorMarketing,
        AccountKind::External,
    ] {
        sim.ledger
            .ensure_account(&k)
            .map_err(|e| ScenarioError::Ledger(e.to_string()))?;
    }
    for d in &file.discounts {
        sim.book.discounts.push(discount(
            d,
            DiscountSource::Platform,
            None,
            &format!("discount {}", d.id),
        )?);
    }
    for k in &file.contracts {
        let field = format!("contract {}", k.id);
        let mut discounts = Vec::new();
        for d in &k.discounts {
            discounts.push(discount(
                d,
                DiscountSource::Contract,
                Some(&k.customer),
                &field,
            )?);
        }
        sim.book.contracts.push(Contract {
            id: k.id.clone(),
            customer: k.customer.clone(),
            start: time(&k.start, &field)?,
            end: time(&k.end, &field)?,
            credit_micros: opt_micros(&k.credit, &field)?,
            discounts,
            terminated_at: None,
        });
    }
    for c in &file.customers {
        if sim.customers.contains_key(&c.id) {
            return Err(ScenarioError::Duplicate(c.id.clone()));
        }
        let field = format!("customer {}", c.id);
        let cash = opt_micros(&c.cash, &field)?;
        let voucher = opt_micros(&c.recharge_voucher, &field)?;
        let mut credit = opt_micros(&c.credit, &field)?;
        if cash < 0 || voucher < 0 || credit < 0 {
            return Err(invalid(field, "opening balances must not be negative"));
        }
        credit += sim
            .book
            .contracts
            .iter()
            .filter(|k| k.customer == c.id)
            .map(|k| k.credit_micros)
            .sum::<Micros>();
        sim.ensure_customer_accounts(&c.id)?;
        let mut chain = Vec::new();
        if cash > 0 {
            chain.push(plain(
                transfer_id(&["opening-cash", &c.id]),
                &AccountKind::External,
                &AccountKind::CustomerCash(c.id.clone()),
                u64_amount(cash)?,
                codes::RECHARGE,
            ));
        }
        if voucher > 0 {
            chain.push(plain(
                transfer_id(&["opening-voucher", &c.id]),
                &AccountKind::OperatorMarketing,
                &AccountKind::CustomerRechargeVoucher(c.id.clone()),
                u64_amount(voucher)?,
                codes::RECHARGE_VOUCHER,
            ));
        }
        sim.post(chain, 0)?;
        sim.ledger
            .set_limit(
                AccountKind::CustomerCredit(c.id.clone()).id(),
                u64_amount(credit)?,
            )
            .map_err(|e| ScenarioError::Ledger(e.to_string()))?;
        sim.customers.insert(
            c.id.clone(),
            CustomerState {
                wallet: Wallet {
                    recharge_voucher_micros: voucher,
                    cash_micros: cash,
                    credit_limit_micros: credit,
                    ..Wallet::default()
                },
                manual: ManualFreeze::None,
                auto_frozen: BTreeSet::new(),
                first_usage: BTreeSet::new(),
            },
        );
    }
    for k in &sim.book.contracts {
        if !sim.customers.contains_key(&k.customer) {
            return Err(ScenarioError::Unknown {
                kind: "customer",
                id: k.customer.clone(),
            });
        }
    }
    for p in &file.products {
        if sim.products.contains_key(&p.id) {
            return Err(ScenarioError::Duplicate(p.id.clone()));
        }
        let field = format!("product {}", p.id);
        let mode = match p.mode.as_str() {
            "prepaid" => BillingMode::Prepaid,
            "postpaid" => BillingMode::Postpaid,
            o => return Err(invalid(field, format!("unknown mode {o}"))),
        };
        let mut components = Vec::new();
        let monthly_price = p
            .monthly_price
            .as_ref()
            .map(|n| n.micros(&field))
            .transpose()?;
        if let Some(m) = monthly_price {
            components.push(PriceComponent::Monthly { price_micros: m });
        }
        if let Some(h) = &p.hourly_price {
            components.push(PriceComponent::Hourly {
                price_micros: h.micros(&field)?,
            });
        }
        for c in &p.components {
            components.push(component(c, &field)?);
        }
        let plan = PricePlan {
            mode,
            components,
            cap_micros: p.cap.as_ref().map(|n| n.micros(&field)).transpose()?,
            minimum_micros: p.minimum.as_ref().map(|n| n.micros(&field)).transpose()?,
        };
        plan.validate().map_err(|e| invalid(&field, e))?;
        let bps = p.operator_share_bps.unwrap_or(0);
        if bps > 10_000 {
            return Err(invalid(field, "operator_share_bps must be at most 10000"));
        }
        if let Some(prov) = &p.provider {
            for k in [
                AccountKind::ProviderReceivable(prov.clone()),
                AccountKind::ProviderPaidOut(prov.clone()),
            ] {
                sim.ledger
                    .ensure_account(&k)
                    .map_err(|e| ScenarioError::Ledger(e.to_string()))?;
            }
        }
        sim.products.insert(
            p.id.clone(),
            Product {
                mode,
                plan,
                monthly_price,
                provider: p.provider.clone(),
                bps,
            },
        );
    }
    for c in &file.coupons {
        let field = format!("coupon {}", c.id);
        let coupon = Coupon {
            id: c.id.clone(),
            threshold_micros: c.threshold.micros(&field)?,
            off_micros: c.off.micros(&field)?,
            valid_from: opt_time(&c.valid_from, &field)?.unwrap_or(0),
            valid_until: opt_time(&c.valid_until, &field)?,
            used: false,
        };
        sim.customer(&c.customer)?.wallet.coupons.push(coupon);
    }
    for v in &file.deduction_vouchers {
        let field = format!("deduction voucher {}", v.id);
        let amount = v.amount.micros(&field)?;
        if amount <= 0 {
            return Err(invalid(field, "amount must be positive"));
        }
        let dv = DeductionVoucher {
            id: v.id.clone(),
            balance_micros: amount,
            valid_from: opt_time(&v.valid_from, &field)?.unwrap_or(0),
            valid_until: opt_time(&v.valid_until, &field)?,
            products: v.products.clone(),
        };
        sim.customer(&v.customer)?
            .wallet
            .deduction_vouchers
            .push(dv);
        sim.post(
            vec![plain(
                transfer_id(&["deduction-voucher", &v.id]),
                &AccountKind::OperatorMarketing,
                &AccountKind::CustomerDeductionVoucher(v.customer.clone()),
                u64_amount(amount)?,
                codes::DEDUCTION_VOUCHER,
            )],
            0,
        )?;
    }
    for v in &file.recharge_vouchers {
        let field = format!("recharge voucher {}", v.id);
        sim.customer(&v.customer)?;
        let amount = v.amount.micros(&field)?;
        if amount <= 0 {
            return Err(invalid(field, "amount must be positive"));
        }
        if sim
            .recharge_vouchers
            .insert(
                v.id.clone(),
                RechargeVoucher {
                    customer: v.customer.clone(),
                    amount,
                    valid_from: opt_time(&v.valid_from, &field)?.unwrap_or(0),
                    valid_until: opt_time(&v.valid_until, &field)?,
                    redeemed: false,
                },
            )
            .is_some()
        {
            return Err(ScenarioError::Duplicate(v.id.clone()));
        }
    }
    if let Some(l) = &file.limits {
        sim.limits.platform = l
            .platform
            .as_ref()
            .map(|p| limit(p, "limits.platform"))
            .transpose()?;
        sim.limits.platform_whitelist = l.whitelist.iter().cloned().collect();
        for p in &l.products {
            sim.limits.products.push(ProductLimit {
                product: p
                    .product
                    .clone()
                    .ok_or_else(|| invalid("limits.products", "product missing"))?,
                config: limit(p, "limits.products")?,
            });
        }
        for c in &l.customers {
            sim.limits.customers.push(CustomerLimit {
                customer: c
                    .customer
                    .clone()
                    .ok_or_else(|| invalid("limits.customers", "customer missing"))?,
                product: c.product.clone(),
                config: limit(c, "limits.customers")?,
            });
        }
    }
    let mut events = Vec::with_capacity(file.events.len());
    let mut last = Millis::MIN;
    for (index, e) in file.events.into_iter().enumerate() {
        let at = time(&e.at, &format!("event {index} at"))?;
        if at < last {
            return Err(ScenarioError::EventsOutOfOrder(index));
        }
        last = at;
        let amount = e.amount.as_ref().map(|n| n.micros("amount")).transpose()?;
        events.push(Ev {
            index,
            at,
            kind: e.kind,
            id: e.id,
            customer: e.customer,
            product: e.product,
            provider: e.provider,
            months: e.months,
            units: e.units,
            amount,
            jobs: e.jobs,
            rows: e.rows,
            cpu_millis: e.cpu_millis,
            resource_millis: e.resource_millis,
            arrived_at: e.arrived_at,
            reason: e.reason,
        });
    }
    let title = if file.description.is_empty() {
        file.name
    } else {
        format!("{}\n{}", file.name, file.description.trim_end())
    };
    Ok((sim, events, title))
}

/// Runs a scenario (see the module docs for the format). Deterministic: the same text always
/// gives the same report.
pub fn simulate(scenario_text: &str) -> Result<SimulationReport, ScenarioError> {
    if scenario_text.len() > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge);
    }
    let file: ScenarioFile =
        toml::from_str(scenario_text).map_err(|e| ScenarioError::Parse(e.message().to_string()))?;
    let (mut sim, events, name) = build(file)?;
    sim.check_consistency()?;
    for e in &events {
        let mut head = format!("[{}] {}", format_millis(e.at), e.kind);
        for v in [&e.id, &e.customer, &e.product, &e.provider]
            .into_iter()
            .flatten()
        {
            head.push(' ');
            head.push_str(v);
        }
        if let Some(m) = e.months {
            let _ = write!(head, " months={m}");
        }
        if let Some(a) = e.amount {
            let _ = write!(head, " amount={}", format_amount(a));
        }
        sim.log.push(head);
        sim.event(e)?;
        sim.check_consistency()?;
    }
    let customers = sim
        .customers
        .iter()
        .map(|(c, s)| CustomerBalance {
            customer: c.clone(),
            cash_micros: s.wallet.net_cash_micros(),
            recharge_voucher_micros: s.wallet.recharge_voucher_micros,
            deduction_voucher_micros: s.wallet.deduction_voucher_total_micros(),
            credit_limit_micros: s.wallet.credit_limit_micros,
            credit_available_micros: s.wallet.credit_available_micros(),
            arrears_micros: s.wallet.arrears_micros,
            unused_coupons: s.wallet.unused_coupons(),
        })
        .collect();
    let ledger_balances = sim
        .ledger
        .accounts()
        .filter(|a| a.balance() != 0)
        .map(|a| (a.spec.name.clone(), a.balance()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    Ok(SimulationReport {
        name,
        log: sim.log,
        customers,
        bills: sim.bills.bills().cloned().collect(),
        provider_statements: provider_statements(&sim.bills),
        period_view: sim.bills.period_statistics()?.into_iter().collect(),
        ledger_balances,
        transfer_count: sim.ledger.transfer_count(),
    })
}

fn amount_i128(v: i128) -> String {
    i64::try_from(v).map_or_else(|_| v.to_string(), format_amount)
}

impl SimulationReport {
    /// The report as plain text (what `*.expected.txt` files hold).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario: {}", self.name);
        let _ = writeln!(out, "\nevents:");
        for l in &self.log {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "\nbalances:");
        for c in &self.customers {
            let _ = writeln!(
                out,
                "  {}: cash {}, recharge voucher {}, deduction vouchers {}, credit {} of {} available, arrears {}, unused coupons {}",
                c.customer,
                format_amount(c.cash_micros),
                format_amount(c.recharge_voucher_micros),
                format_amount(c.deduction_voucher_micros),
                format_amount(c.credit_available_micros),
                format_amount(c.credit_limit_micros),
                format_amount(c.arrears_micros),
                c.unused_coupons
            );
        }
        let _ = writeln!(out, "\nbills:");
        for b in &self.bills {
            let _ = writeln!(
                out,
                "  {} {}-{:02} ({}), {} line(s)",
                b.customer,
                b.year,
                b.month,
                if b.closed { "closed" } else { "open" },
                b.lines.len()
            );
            for l in &b.lines {
                let corr = l
                    .corrects
                    .map(|(y, m)| format!(" correction for {y}-{m:02}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {} {} {}{}: {}",
                    l.line.id,
                    l.line.kind.name(),
                    l.line.product,
                    corr,
                    amounts_text(&l.line.amounts)
                );
            }
            let _ = writeln!(out, "    total: {}", amounts_text(&b.totals()));
        }
        let _ = writeln!(out, "\nperiod view (lines split by hours, §3.8.3.2):");
        for ((c, y, m), a) in &self.period_view {
            let _ = writeln!(out, "  {c} {y}-{m:02}: {}", amounts_text(a));
        }
        if !self.provider_statements.is_empty() {
            let _ = writeln!(out, "\nprovider statements:");
            for s in &self.provider_statements {
                let _ = writeln!(
                    out,
                    "  {} {}-{:02}: {} line(s), gross {}, operator {}, provider {}",
                    s.provider,
                    s.year,
                    s.month,
                    s.lines,
                    format_amount(s.gross_micros),
                    format_amount(s.operator_micros),
                    format_amount(s.provider_micros)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nledger ({} transfers, balanced):",
            self.transfer_count
        );
        for (name, b) in &self.ledger_balances {
            let _ = writeln!(out, "  {name}: {}", amount_i128(*b));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<(), ScenarioError>) {
        match (simulate(text), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(x)) => assert_eq!(e, x),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    const MAKEUP: &str = r#"
name = "make-up discount switch"
[settings]
discount_strategy = "customer_only"
makeup_discount = SWITCH
[[customers]]
id = "t"
cash = "1000"
[[products]]
id = "drp"
mode = "prepaid"
monthly_price = "300"
[[discounts]]
id = "half"
source = "customer"
customer = "t"
factor = "0.5"
[[events]]
at = "2021-10-19 11:00"
kind = "subscribe"
id = "s"
customer = "t"
product = "drp"
months = 1
[[events]]
at = "2021-11-19 15:00"
kind = "unsubscribe"
id = "s"
"#;

    fn makeup_paid(switch: bool) -> i64 {
        let r = simulate(&MAKEUP.replace("SWITCH", &switch.to_string())).expect("simulate");
        r.bills
            .iter()
            .flat_map(|b| b.lines.iter())
            .filter(|l| l.line.kind == BillLineKind::MakeUp)
            .map(|l| l.line.amounts.paid())
            .sum()
    }

    #[test]
    fn makeup_discount_switch_of_2_9_3_8() {
        // Off (default): make-ups are at the original price; on: the previous term's discount.
        assert_eq!(makeup_paid(false), 10_000_000);
        assert_eq!(makeup_paid(true), 5_000_000);
    }

    #[test]
    fn malformed_scenarios_are_typed_errors() {
        check(
            "name = 1",
            Err(ScenarioError::Parse(
                "invalid type: integer `1`, expected a string".into(),
            )),
        );
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = 1\n[[events]]\nat = \"2021-01-01\"\nkind = \"settle\"",
            Err(ScenarioError::EventsOutOfOrder(1)),
        );
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = 1",
            Err(ScenarioError::Unknown {
                kind: "customer",
                id: "a".into(),
            }),
        );
        check(
            "name = \"x\"\n[[customers]]\nid = \"a\"\n[[customers]]\nid = \"a\"",
            Err(ScenarioError::Duplicate("a".into())),
        );
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"dance\"",
            Err(invalid("event 0", "unknown kind dance")),
        );
        assert_eq!(
            simulate(&" ".repeat(MAX_SCENARIO_BYTES + 1)),
            Err(ScenarioError::TooLarge)
        );
        check("name = \"x\"\nbogus = 1", Err(ScenarioError::Parse("unknown field `bogus`, expected one of `name`, `description`, `settings`, `customers`, `products`, `discounts`, `contracts`, `coupons`, `deduction_vouchers`, `recharge_vouchers`, `limits`, `events`".into())));
    }
}
