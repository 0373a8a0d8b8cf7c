//! The scenario file format: TOML documents deserialised into typed structs (unknown fields
//! refused), their conversion into the accounting crate's types, and the events as a typed
//! enum ([`EventKind`]) with their parsed fields.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Deserialize;
use tessera_accounting::civil::{Millis, parse_millis};
use tessera_accounting::discount::{
    Discount, DiscountRange, DiscountSource, DiscountStrategy, StackOrder,
};
use tessera_accounting::freeze::LimitConfig;
use tessera_accounting::money::{MICROS_PER_UNIT, Micros, parse_amount, parse_decimal};
use tessera_accounting::rating::{Metric, PriceComponent, Tier};

use crate::{MAX_ENTITIES, ScenarioError, invalid};

// ---------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Num {
    Int(i64),
    Text(String),
}

impl Num {
    pub(crate) fn micros(&self, field: &str) -> Result<Micros, ScenarioError> {
        match self {
            Num::Int(i) => i
                .checked_mul(MICROS_PER_UNIT)
                .ok_or_else(|| invalid(field, "amount overflows")),
            Num::Text(s) => parse_amount(s).map_err(|e| invalid(field, e)),
        }
    }

    pub(crate) fn decimal(&self, field: &str) -> Result<Decimal, ScenarioError> {
        match self {
            Num::Int(i) => Ok(Decimal::from(*i)),
            Num::Text(s) => parse_decimal(s).map_err(|e| invalid(field, e)),
        }
    }
}

pub(crate) fn opt_micros(n: &Option<Num>, field: &str) -> Result<Micros, ScenarioError> {
    n.as_ref().map_or(Ok(0), |n| n.micros(field))
}

pub(crate) fn time(s: &str, field: &str) -> Result<Millis, ScenarioError> {
    parse_millis(s).map_err(|e| invalid(field, e))
}

pub(crate) fn opt_time(s: &Option<String>, field: &str) -> Result<Option<Millis>, ScenarioError> {
    s.as_deref().map(|s| time(s, field)).transpose()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScenarioFile {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) settings: SettingsDto,
    #[serde(default)]
    pub(crate) customers: Vec<CustomerDto>,
    #[serde(default)]
    pub(crate) products: Vec<ProductDto>,
    #[serde(default)]
    pub(crate) discounts: Vec<DiscountDto>,
    #[serde(default)]
    pub(crate) contracts: Vec<ContractDto>,
    #[serde(default)]
    pub(crate) coupons: Vec<CouponDto>,
    #[serde(default)]
    pub(crate) deduction_vouchers: Vec<DeductionVoucherDto>,
    #[serde(default)]
    pub(crate) recharge_vouchers: Vec<RechargeVoucherDto>,
    #[serde(default)]
    pub(crate) limits: Option<LimitsDto>,
    #[serde(default)]
    pub(crate) events: Vec<EventDto>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsDto {
    pub(crate) discount_strategy: Option<String>,
    pub(crate) daily_price_basis: Option<String>,
    pub(crate) late_window_hours: Option<i64>,
    pub(crate) makeup_discount: Option<bool>,
    pub(crate) customer_strategies: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerDto {
    pub(crate) id: String,
    pub(crate) cash: Option<Num>,
    pub(crate) recharge_voucher: Option<Num>,
    pub(crate) credit: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TierDto {
    pub(crate) up_to: Option<u64>,
    pub(crate) price: Num,
    pub(crate) flat: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentDto {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) price: Option<Num>,
    pub(crate) metric: Option<String>,
    pub(crate) unit_size: Option<u64>,
    pub(crate) free_units: Option<u64>,
    pub(crate) round_up: Option<bool>,
    pub(crate) included_units: Option<u64>,
    pub(crate) overage_price: Option<Num>,
    pub(crate) tiers: Option<Vec<TierDto>>,
    pub(crate) coefficient: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductDto {
    pub(crate) id: String,
    pub(crate) mode: String,
    pub(crate) monthly_price: Option<Num>,
    pub(crate) hourly_price: Option<Num>,
    pub(crate) provider: Option<String>,
    pub(crate) operator_share_bps: Option<u32>,
    #[serde(default)]
    pub(crate) components: Vec<ComponentDto>,
    pub(crate) cap: Option<Num>,
    pub(crate) minimum: Option<Num>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscountDto {
    pub(crate) id: String,
    pub(crate) source: Option<String>,
    pub(crate) customer: Option<String>,
    pub(crate) product: Option<String>,
    pub(crate) factor: Num,
    pub(crate) range: Option<String>,
    pub(crate) from: Option<Num>,
    pub(crate) to: Option<Num>,
    pub(crate) valid_from: Option<String>,
    pub(crate) valid_until: Option<String>,
    pub(crate) enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContractDto {
    pub(crate) id: String,
    pub(crate) customer: String,
    pub(crate) start: String,
    pub(crate) end: String,
    pub(crate) credit: Option<Num>,
    #[serde(default)]
    pub(crate) discounts: Vec<DiscountDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CouponDto {
    pub(crate) id: String,
    pub(crate) customer: String,
    pub(crate) threshold: Num,
    pub(crate) off: Num,
    pub(crate) valid_from: Option<String>,
    pub(crate) valid_until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeductionVoucherDto {
    pub(crate) id: String,
    pub(crate) customer: String,
    pub(crate) amount: Num,
    pub(crate) valid_from: Option<String>,
    pub(crate) valid_until: Option<String>,
    #[serde(default)]
    pub(crate) products: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RechargeVoucherDto {
    pub(crate) id: String,
    pub(crate) customer: String,
    pub(crate) amount: Num,
    pub(crate) valid_from: Option<String>,
    pub(crate) valid_until: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitDto {
    pub(crate) min_purchase: Option<Num>,
    pub(crate) min_freeze: Option<Num>,
    pub(crate) enabled: Option<bool>,
    pub(crate) product: Option<String>,
    pub(crate) customer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsDto {
    pub(crate) platform: Option<LimitDto>,
    #[serde(default)]
    pub(crate) whitelist: Vec<String>,
    #[serde(default)]
    pub(crate) products: Vec<LimitDto>,
    #[serde(default)]
    pub(crate) customers: Vec<LimitDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventDto {
    pub(crate) at: String,
    pub(crate) kind: String,
    pub(crate) id: Option<String>,
    pub(crate) customer: Option<String>,
    pub(crate) product: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) months: Option<u32>,
    pub(crate) units: Option<u64>,
    pub(crate) amount: Option<Num>,
    pub(crate) jobs: Option<u64>,
    pub(crate) rows: Option<u64>,
    pub(crate) cpu_millis: Option<u64>,
    pub(crate) resource_millis: Option<u64>,
    pub(crate) arrived_at: Option<String>,
    pub(crate) reason: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------------------

pub(crate) fn metric(s: &Option<String>, field: &str) -> Result<Metric, ScenarioError> {
    match s.as_deref() {
        Some("jobs") => Ok(Metric::Jobs),
        Some("rows") => Ok(Metric::Rows),
        Some("cpu_millis") => Ok(Metric::CpuMillis),
        Some("resource_millis") => Ok(Metric::ResourceMillis),
        other => Err(invalid(field, format!("unknown metric {other:?}"))),
    }
}

/// Yuan per unit → micros per unit.
pub(crate) fn unit_price(n: &Num, field: &str) -> Result<Decimal, ScenarioError> {
    n.decimal(field)?
        .checked_mul(Decimal::from(MICROS_PER_UNIT))
        .ok_or_else(|| invalid(field, "price overflows"))
}

pub(crate) fn component(c: &ComponentDto, field: &str) -> Result<PriceComponent, ScenarioError> {
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

pub(crate) fn strategy(s: &str, field: &str) -> Result<DiscountStrategy, ScenarioError> {
    Ok(match s {
        "customer_only" => DiscountStrategy::CustomerOnly,
        "platform_only" => DiscountStrategy::PlatformOnly,
        "stacked" => DiscountStrategy::Stacked(StackOrder::CustomerFirst),
        "stacked_platform_first" => DiscountStrategy::Stacked(StackOrder::PlatformFirst),
        "none" => DiscountStrategy::NoDiscount,
        other => return Err(invalid(field, format!("unknown strategy {other}"))),
    })
}

pub(crate) fn discount(
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

pub(crate) fn limit(l: &LimitDto, field: &str) -> Result<LimitConfig, ScenarioError> {
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

/// A parsed event.
pub(crate) struct Ev {
    pub(crate) index: usize,
    pub(crate) at: Millis,
    pub(crate) kind: EventKind,
    pub(crate) id: Option<String>,
    pub(crate) customer: Option<String>,
    pub(crate) product: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) months: Option<u32>,
    pub(crate) units: Option<u64>,
    pub(crate) amount: Option<Micros>,
    pub(crate) jobs: Option<u64>,
    pub(crate) rows: Option<u64>,
    pub(crate) cpu_millis: Option<u64>,
    pub(crate) resource_millis: Option<u64>,
    pub(crate) arrived_at: Option<String>,
    pub(crate) reason: Option<String>,
}

impl Ev {
    pub(crate) fn field<'a>(
        &self,
        v: &'a Option<String>,
        name: &str,
    ) -> Result<&'a str, ScenarioError> {
        v.as_deref()
            .ok_or_else(|| invalid(format!("event {} {name}", self.index), "missing"))
    }
    pub(crate) fn id(&self) -> Result<&str, ScenarioError> {
        self.field(&self.id, "id")
    }
    pub(crate) fn customer(&self) -> Result<&str, ScenarioError> {
        self.field(&self.customer, "customer")
    }
    pub(crate) fn product(&self) -> Result<&str, ScenarioError> {
        self.field(&self.product, "product")
    }
    pub(crate) fn months(&self) -> Result<u32, ScenarioError> {
        self.months
            .ok_or_else(|| invalid(format!("event {} months", self.index), "missing"))
    }
    pub(crate) fn amount(&self) -> Result<Micros, ScenarioError> {
        self.amount
            .ok_or_else(|| invalid(format!("event {} amount", self.index), "missing"))
    }
}

pub(crate) fn bound(n: usize, what: &str) -> Result<(), ScenarioError> {
    if n > MAX_ENTITIES {
        return Err(ScenarioError::TooMany(format!("{n} {what}")));
    }
    Ok(())
}

/// What an event does (the `kind` field), parsed once when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `subscribe`: prepaid order (§1.4.5.1.1): id, customer, product, months, units.
    Subscribe,
    /// `renew`: renewal with make-up (§1.4.5.1.2): id, months.
    Renew,
    /// `unsubscribe`: make-up and refund (§1.4.5.1.3): id.
    Unsubscribe,
    /// `freeze_resource`: the prepaid resource `id` is frozen at `at`.
    FreezeResource,
    /// `open_metered`: a postpaid hourly resource starts: id, customer, product.
    OpenMetered,
    /// `settle`: every open hourly resource is billed up to the last whole hour.
    Settle,
    /// `close_metered`: final settlement of `id`, a started hour counts whole (§1.4.5.2).
    CloseMetered,
    /// `usage`: metered usage: customer, product, jobs, rows, cpu_millis, resource_millis, arrived_at.
    Usage,
    /// `check_job`: logs the freeze decision for starting a job: customer, product.
    CheckJob,
    /// `recharge`: cash recharge: customer, amount.
    Recharge,
    /// `redeem_recharge_voucher`: the recharge voucher `id` is redeemed.
    RedeemRechargeVoucher,
    /// `manual_freeze`: operator freezes `customer` (reason).
    ManualFreeze,
    /// `manual_thaw`: operator thaws `customer`.
    ManualThaw,
    /// `clear_manual`: operator clears the manual state of `customer`.
    ClearManual,
    /// `whitelist_add`: `customer` joins the platform white list.
    WhitelistAdd,
    /// `whitelist_remove`: `customer` leaves the platform white list.
    WhitelistRemove,
    /// `terminate_contract`: contract `id` ends; unused credit is withdrawn.
    TerminateContract,
    /// `payout`: pays `provider` out `amount`.
    Payout,
    /// `close_bills`: closes bills past their late window.
    CloseBills,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 19] = [
        EventKind::Subscribe,
        EventKind::Renew,
        EventKind::Unsubscribe,
        EventKind::FreezeResource,
        EventKind::OpenMetered,
        EventKind::Settle,
        EventKind::CloseMetered,
        EventKind::Usage,
        EventKind::CheckJob,
        EventKind::Recharge,
        EventKind::RedeemRechargeVoucher,
        EventKind::ManualFreeze,
        EventKind::ManualThaw,
        EventKind::ClearManual,
        EventKind::WhitelistAdd,
        EventKind::WhitelistRemove,
        EventKind::TerminateContract,
        EventKind::Payout,
        EventKind::CloseBills,
    ];

    /// The name used in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Subscribe => "subscribe",
            EventKind::Renew => "renew",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::FreezeResource => "freeze_resource",
            EventKind::OpenMetered => "open_metered",
            EventKind::Settle => "settle",
            EventKind::CloseMetered => "close_metered",
            EventKind::Usage => "usage",
            EventKind::CheckJob => "check_job",
            EventKind::Recharge => "recharge",
            EventKind::RedeemRechargeVoucher => "redeem_recharge_voucher",
            EventKind::ManualFreeze => "manual_freeze",
            EventKind::ManualThaw => "manual_thaw",
            EventKind::ClearManual => "clear_manual",
            EventKind::WhitelistAdd => "whitelist_add",
            EventKind::WhitelistRemove => "whitelist_remove",
            EventKind::TerminateContract => "terminate_contract",
            EventKind::Payout => "payout",
            EventKind::CloseBills => "close_bills",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EventKind {
    /// The unknown name.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| s.to_string())
    }
}
