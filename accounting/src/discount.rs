//! Platform and customer discounts, the four discount strategies, and contracts
//! (operations manual §3.12, §3.8.5.1.1).
//!
//! # Rules (manual)
//!
//! * A discount has a scope: a product or all products (适用产品), an application range
//!   (应用范围: quantity / amount / months / unlimited) with an **inclusive** range value
//!   (范围值 "包含范围的开始和结束边界值"; an empty end means unlimited), a factor 0.01–1
//!   (折扣系数), a validity window (生效时间 / 失效时间, dates at 00:00:00) and an enabled flag.
//! * Platform discounts apply to every customer; customer discounts to one customer; contract
//!   discounts are customer discounts that live only while their contract is in force
//!   (§3.8.5.1.1 "合同失效后，合同折扣随之失效").
//! * §3.12.3 strategies: customer discount only (客户折扣独享), platform discount only (平台折扣
//!   独享), stacked (共享, 折上折: `100 × 0.5 = 50, 50 × 0.8 = 40`) and none (不享受, list price).
//!
//! # Interpretation choices (documented, manual is silent or ambiguous)
//!
//! * **Several matching discounts of one kind**: the one with the smallest factor (most
//!   favourable to the customer) applies; ties go to the smallest id. Only one platform and
//!   one customer discount ever apply to a charge (§3.12.3 "独享：只享受设置的单一折扣").
//! * **Range values**: quantity = number of resources ordered (台/units); amount = the
//!   charge's original (list) amount in micros; months = months ordered of a prepaid product
//!   (a postpaid charge has 0 months).
//! * **Stacking order**: [`StackOrder::CustomerFirst`] by default (§3.12.3 "共享（客户折扣优先）");
//!   the order only changes how the discount is attributed and the rounding.
//! * **Rounding**: after each factor the running amount is rounded half away from zero to a
//!   whole micro; the discount attributed to a kind is the difference it made.
//! * **Customer policy** (§3.12.3 "开启客户策略"): a per-customer override of the platform-wide
//!   strategy; the four cases map to: exclusive customer + share platform → stacked;
//!   exclusive customer + no platform → customer only; no exclusive customer + share platform
//!   → platform only; neither → no discount.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::civil::Millis;
use crate::money::{Micros, MoneyError, scale};

/// Upper bound on discounts considered by one book.
pub const MAX_DISCOUNTS: usize = 10_000;

/// Why a discount configuration or computation was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DiscountError {
    /// The factor is outside 0.01..=1 (§3.12.1.1 "折扣系数：0.01--1").
    #[error("discount {id}: factor {factor} outside 0.01..=1")]
    FactorOutOfRange {
        /// Discount id.
        id: String,
        /// The offending factor.
        factor: Decimal,
    },
    /// A range's start is above its end, or negative.
    #[error("discount {0}: invalid range")]
    InvalidRange(String),
    /// The validity window ends before it starts.
    #[error("discount {0}: validity window ends before it starts")]
    InvalidWindow(String),
    /// A customer or contract discount names no customer.
    #[error("discount {0}: customer discount without a customer")]
    MissingCustomer(String),
    /// Too many discounts.
    #[error("too many discounts (max {MAX_DISCOUNTS})")]
    TooMany,
    /// The amount is negative.
    #[error("negative amount {0}")]
    NegativeAmount(Micros),
    /// Arithmetic overflow while discounting.
    #[error("discount arithmetic: {0}")]
    Money(#[from] MoneyError),
}

/// Where a discount comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiscountSource {
    /// 平台折扣: every customer.
    Platform,
    /// 客户折扣: one customer.
    Customer,
    /// A customer discount created by a discount contract (来源 "合同").
    Contract,
}

/// 应用范围 with its inclusive 范围值.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountRange {
    /// 无限制.
    Unlimited,
    /// 数量: resources ordered, `from..=to` (no `to` = unlimited).
    Quantity {
        /// Inclusive lower bound.
        from: u64,
        /// Inclusive upper bound.
        to: Option<u64>,
    },
    /// 金额: original amount in micros.
    Amount {
        /// Inclusive lower bound.
        from: Micros,
        /// Inclusive upper bound.
        to: Option<Micros>,
    },
    /// 时间: months ordered of a prepaid product.
    Months {
        /// Inclusive lower bound.
        from: u32,
        /// Inclusive upper bound.
        to: Option<u32>,
    },
}

/// One discount rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    /// Unique id.
    pub id: String,
    /// Platform, customer or contract.
    pub source: DiscountSource,
    /// The customer (required for customer and contract discounts, ignored for platform).
    pub customer: Option<String>,
    /// The product, or `None` for all products.
    pub product: Option<String>,
    /// Application range.
    pub range: DiscountRange,
    /// Price factor, 0.01..=1 (0.5 = "5 折").
    pub factor: Decimal,
    /// First instant the discount applies.
    pub valid_from: Millis,
    /// First instant it no longer applies (`None` = open-ended).
    pub valid_until: Option<Millis>,
    /// 启用 / 禁用.
    pub enabled: bool,
}

/// What a charge looks like to the discount rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscountRequest<'a> {
    /// Customer charged.
    pub customer: &'a str,
    /// Product charged.
    pub product: &'a str,
    /// Resources ordered (台).
    pub quantity: u64,
    /// Original (list) amount.
    pub amount_micros: Micros,
    /// Months ordered (0 for postpaid).
    pub months: u32,
    /// When the charge is rated.
    pub at: Millis,
}

impl Discount {
    /// Checks the factor, range and window.
    pub fn validate(&self) -> Result<(), DiscountError> {
        let min = Decimal::new(1, 2);
        if self.factor < min || self.factor > Decimal::ONE {
            return Err(DiscountError::FactorOutOfRange {
                id: self.id.clone(),
                factor: self.factor,
            });
        }
        let ok = match self.range {
            DiscountRange::Unlimited => true,
            DiscountRange::Quantity { from, to } => to.is_none_or(|t| from <= t),
            DiscountRange::Amount { from, to } => from >= 0 && to.is_none_or(|t| from <= t),
            DiscountRange::Months { from, to } => to.is_none_or(|t| from <= t),
        };
        if !ok {
            return Err(DiscountError::InvalidRange(self.id.clone()));
        }
        if self.valid_until.is_some_and(|u| u < self.valid_from) {
            return Err(DiscountError::InvalidWindow(self.id.clone()));
        }
        if self.source != DiscountSource::Platform && self.customer.is_none() {
            return Err(DiscountError::MissingCustomer(self.id.clone()));
        }
        Ok(())
    }

    /// Whether the discount applies to the request (ignoring its kind's strategy).
    pub fn applies(&self, req: &DiscountRequest<'_>) -> bool {
        if !self.enabled {
            return false;
        }
        if req.at < self.valid_from || self.valid_until.is_some_and(|u| req.at >= u) {
            return false;
        }
        if self.source != DiscountSource::Platform && self.customer.as_deref() != Some(req.customer)
        {
            return false;
        }
        if self.product.as_deref().is_some_and(|p| p != req.product) {
            return false;
        }
        match self.range {
            DiscountRange::Unlimited => true,
            DiscountRange::Quantity { from, to } => {
                req.quantity >= from && to.is_none_or(|t| req.quantity <= t)
            }
            DiscountRange::Amount { from, to } => {
                req.amount_micros >= from && to.is_none_or(|t| req.amount_micros <= t)
            }
            DiscountRange::Months { from, to } => {
                req.months >= from && to.is_none_or(|t| req.months <= t)
            }
        }
    }
}

/// Order of the factors when stacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StackOrder {
    /// Customer factor first, then platform (§3.12.3 "共享（客户折扣优先）").
    #[default]
    CustomerFirst,
    /// Platform factor first (the manual's arithmetic example: 100 × 0.5 = 50, 50 × 0.8 = 40).
    PlatformFirst,
}

/// §3.12.3 折扣策略.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscountStrategy {
    /// 只享受客户折扣.
    CustomerOnly,
    /// 只享受平台折扣.
    PlatformOnly,
    /// 共享 / 折上折.
    Stacked(StackOrder),
    /// 不享受折扣 (list price).
    NoDiscount,
}

impl DiscountStrategy {
    /// The §3.12.3 "开启客户策略" mapping of a customer's two switches to a strategy.
    pub fn from_customer_policy(exclusive_customer: bool, share_platform: bool) -> Self {
        match (exclusive_customer, share_platform) {
            (true, true) => DiscountStrategy::Stacked(StackOrder::CustomerFirst),
            (true, false) => DiscountStrategy::CustomerOnly,
            (false, true) => DiscountStrategy::PlatformOnly,
            (false, false) => DiscountStrategy::NoDiscount,
        }
    }
}

/// A discount contract (§3.8.5.1.1): customer discounts and a credit line, in force from
/// `start` until `end` or termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// Contract id.
    pub id: String,
    /// The customer.
    pub customer: String,
    /// First instant in force.
    pub start: Millis,
    /// First instant no longer in force (合同过期).
    pub end: Millis,
    /// 信用余额 granted by the contract.
    pub credit_micros: Micros,
    /// Its customer discounts (source [`DiscountSource::Contract`]).
    pub discounts: Vec<Discount>,
    /// 合同终止 time, if terminated.
    pub terminated_at: Option<Millis>,
}

impl Contract {
    /// Whether the contract is in force at `at`.
    pub fn in_force(&self, at: Millis) -> bool {
        at >= self.start && at < self.end && self.terminated_at.is_none_or(|t| at < t)
    }

    /// The credit limit this contract grants at `at`, given how much credit is in use.
    ///
    /// Termination withdraws the *unused* credit; credit already consumed is not touched
    /// (§3.8.5.1.1 "对应租户的信用余额将被撤回（已消费的信用余额不进行额外处理）"), so the limit
    /// becomes the amount in use. Choice: plain expiry (合同过期) affects only the discounts,
    /// as the manual says, and leaves the credit line in place.
    pub fn credit_limit(&self, at: Millis, credit_used_micros: Micros) -> Micros {
        match self.terminated_at {
            Some(t) if at >= t => credit_used_micros.clamp(0, self.credit_micros),
            _ if at >= self.start => self.credit_micros,
            _ => 0,
        }
    }
}

/// All discount configuration of the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscountBook {
    /// Platform and customer discounts.
    pub discounts: Vec<Discount>,
    /// Contracts (their discounts count as customer discounts while in force).
    pub contracts: Vec<Contract>,
    /// The platform-wide strategy ("未开启客户策略").
    pub strategy: DiscountStrategy,
    /// Per-customer strategies ("开启客户策略"), overriding `strategy`.
    pub customer_strategies: BTreeMap<String, DiscountStrategy>,
}

impl Default for DiscountBook {
    fn default() -> Self {
        Self {
            discounts: Vec::new(),
            contracts: Vec::new(),
            strategy: DiscountStrategy::Stacked(StackOrder::CustomerFirst),
            customer_strategies: BTreeMap::new(),
        }
    }
}

/// A discount that was applied and the amount it took off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDiscount {
    /// Discount id.
    pub id: String,
    /// Its factor.
    pub factor: Decimal,
    /// Micros taken off by it.
    pub amount_micros: Micros,
}

/// The discounted charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscountOutcome {
    /// Original (list) amount.
    pub original_micros: Micros,
    /// The platform discount, if one applied.
    pub platform: Option<AppliedDiscount>,
    /// The customer (or contract) discount, if one applied.
    pub customer: Option<AppliedDiscount>,
    /// Amount due after discounts.
    pub net_micros: Micros,
}

impl DiscountOutcome {
    /// An undiscounted charge.
    pub fn none(original_micros: Micros) -> Self {
        Self {
            original_micros,
            platform: None,
            customer: None,
            net_micros: original_micros,
        }
    }

    /// Micros taken off by the platform discount.
    pub fn platform_micros(&self) -> Micros {
        self.platform.as_ref().map_or(0, |d| d.amount_micros)
    }

    /// Micros taken off by the customer discount.
    pub fn customer_micros(&self) -> Micros {
        self.customer.as_ref().map_or(0, |d| d.amount_micros)
    }
}

fn best<'a>(it: impl Iterator<Item = &'a Discount>) -> Option<&'a Discount> {
    it.min_by(|a, b| a.factor.cmp(&b.factor).then_with(|| a.id.cmp(&b.id)))
}

impl DiscountBook {
    /// Validates every discount and the size bound.
    pub fn validate(&self) -> Result<(), DiscountError> {
        let n = self.discounts.len()
            + self
                .contracts
                .iter()
                .map(|c| c.discounts.len())
                .sum::<usize>();
        if n > MAX_DISCOUNTS {
            return Err(DiscountError::TooMany);
        }
        for d in self
            .discounts
            .iter()
            .chain(self.contracts.iter().flat_map(|c| c.discounts.iter()))
        {
            d.validate()?;
        }
        Ok(())
    }

    /// The strategy that governs `customer`.
    pub fn strategy_for(&self, customer: &str) -> DiscountStrategy {
        self.customer_strategies
            .get(customer)
            .copied()
            .unwrap_or(self.strategy)
    }

    /// The best matching platform discount.
    pub fn platform_candidate(&self, req: &DiscountRequest<'_>) -> Option<&Discount> {
        best(
            self.discounts
                .iter()
                .filter(|d| d.source == DiscountSource::Platform && d.applies(req)),
        )
    }

    /// The best matching customer or in-force contract discount.
    pub fn customer_candidate(&self, req: &DiscountRequest<'_>) -> Option<&Discount> {
        let direct = self
            .discounts
            .iter()
            .filter(|d| d.source != DiscountSource::Platform && d.applies(req));
        let contract = self
            .contracts
            .iter()
            .filter(|c| c.customer == req.customer && c.in_force(req.at))
            .flat_map(|c| c.discounts.iter())
            .filter(|d| d.applies(req));
        best(direct.chain(contract))
    }

    /// Applies the strategy of the request's customer to its original amount.
    pub fn apply(&self, req: &DiscountRequest<'_>) -> Result<DiscountOutcome, DiscountError> {
        if req.amount_micros < 0 {
            return Err(DiscountError::NegativeAmount(req.amount_micros));
        }
        let strategy = self.strategy_for(req.customer);
        let (platform, customer) = match strategy {
            DiscountStrategy::NoDiscount => (None, None),
            DiscountStrategy::PlatformOnly => (self.platform_candidate(req), None),
            DiscountStrategy::CustomerOnly => (None, self.customer_candidate(req)),
            DiscountStrategy::Stacked(_) => {
                (self.platform_candidate(req), self.customer_candidate(req))
            }
        };
        let order = match strategy {
            DiscountStrategy::Stacked(o) => o,
            _ => StackOrder::CustomerFirst,
        };
        apply_factors(req.amount_micros, platform, customer, order)
    }
}

/// Applies up to one platform and one customer discount in `order`, rounding after each.
pub fn apply_factors(
    original_micros: Micros,
    platform: Option<&Discount>,
    customer: Option<&Discount>,
    order: StackOrder,
) -> Result<DiscountOutcome, DiscountError> {
    if original_micros < 0 {
        return Err(DiscountError::NegativeAmount(original_micros));
    }
    let mut out = DiscountOutcome::none(original_micros);
    let steps: [(bool, Option<&Discount>); 2] = match order {
        StackOrder::CustomerFirst => [(false, customer), (true, platform)],
        StackOrder::PlatformFirst => [(true, platform), (false, customer)],
    };
    let mut running = original_micros;
    for (is_platform, d) in steps {
        let Some(d) = d else { continue };
        let after = scale(running, d.factor)?;
        let applied = AppliedDiscount {
            id: d.id.clone(),
            factor: d.factor,
            amount_micros: running - after,
        };
        running = after;
        if is_platform {
            out.platform = Some(applied);
        } else {
            out.customer = Some(applied);
        }
    }
    out.net_micros = running;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(id: &str, source: DiscountSource, factor: &str) -> Discount {
        Discount {
            id: id.into(),
            source,
            customer: (source != DiscountSource::Platform).then(|| "alice".to_string()),
            product: None,
            range: DiscountRange::Unlimited,
            factor: factor.parse().expect("factor"),
            valid_from: 0,
            valid_until: None,
            enabled: true,
        }
    }

    fn req(amount: Micros) -> DiscountRequest<'static> {
        DiscountRequest {
            customer: "alice",
            product: "drp",
            quantity: 1,
            amount_micros: amount,
            months: 2,
            at: 1_000,
        }
    }

    /// `check(strategy, discounts, amount, (platform off, customer off, net))`.
    fn check(
        strategy: DiscountStrategy,
        discounts: Vec<Discount>,
        amount: Micros,
        expected: (Micros, Micros, Micros),
    ) {
        let book = DiscountBook {
            discounts,
            strategy,
            ..DiscountBook::default()
        };
        book.validate().expect("valid");
        let out = book.apply(&req(amount)).expect("apply");
        assert_eq!(
            (out.platform_micros(), out.customer_micros(), out.net_micros),
            expected
        );
        assert_eq!(
            out.original_micros - out.platform_micros() - out.customer_micros(),
            out.net_micros
        );
    }

    #[test]
    fn the_four_strategies() {
        let both = || {
            vec![
                disc("p", DiscountSource::Platform, "0.5"),
                disc("c", DiscountSource::Customer, "0.8"),
            ]
        };
        let y = 1_000_000;
        // §3.12.3: platform 5 折, customer 8 折, ¥100 → 50 → 40.
        check(
            DiscountStrategy::Stacked(StackOrder::PlatformFirst),
            both(),
            100 * y,
            (50 * y, 10 * y, 40 * y),
        );
        check(
            DiscountStrategy::Stacked(StackOrder::CustomerFirst),
            both(),
            100 * y,
            (40 * y, 20 * y, 40 * y),
        );
        check(
            DiscountStrategy::CustomerOnly,
            both(),
            100 * y,
            (0, 20 * y, 80 * y),
        );
        check(
            DiscountStrategy::PlatformOnly,
            both(),
            100 * y,
            (50 * y, 0, 50 * y),
        );
        check(
            DiscountStrategy::NoDiscount,
            both(),
            100 * y,
            (0, 0, 100 * y),
        );
        // §1.4.4.1.2: 专享折扣 5 折 on 600 → 300 off.
        check(
            DiscountStrategy::CustomerOnly,
            vec![disc("c", DiscountSource::Customer, "0.5")],
            600 * y,
            (0, 300 * y, 300 * y),
        );
    }

    #[test]
    fn best_factor_wins_and_rounding_is_half_up() {
        check(
            DiscountStrategy::PlatformOnly,
            vec![
                disc("b", DiscountSource::Platform, "0.9"),
                disc("a", DiscountSource::Platform, "0.7"),
            ],
            10,
            (3, 0, 7),
        );
        // 0.33 × 5 = 1.65 → 2.
        check(
            DiscountStrategy::PlatformOnly,
            vec![disc("p", DiscountSource::Platform, "0.33")],
            5,
            (3, 0, 2),
        );
    }

    #[test]
    fn scope_window_and_ranges() {
        let mut d = disc("c", DiscountSource::Customer, "0.5");
        d.product = Some("obs".into());
        assert!(!d.applies(&req(100)));
        d.product = Some("drp".into());
        assert!(d.applies(&req(100)));
        d.valid_from = 1_001;
        assert!(!d.applies(&req(100)));
        d.valid_from = 0;
        d.valid_until = Some(1_000);
        assert!(!d.applies(&req(100)), "valid_until is exclusive");
        d.valid_until = None;
        d.range = DiscountRange::Months {
            from: 2,
            to: Some(2),
        };
        assert!(d.applies(&req(100)), "range is inclusive");
        d.range = DiscountRange::Months { from: 3, to: None };
        assert!(!d.applies(&req(100)));
        d.range = DiscountRange::Amount {
            from: 0,
            to: Some(99),
        };
        assert!(!d.applies(&req(100)));
        d.range = DiscountRange::Quantity { from: 1, to: None };
        assert!(d.applies(&req(100)));
        d.enabled = false;
        assert!(!d.applies(&req(100)));
        d.enabled = true;
        d.customer = Some("bob".into());
        assert!(!d.applies(&req(100)));
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut d = disc("x", DiscountSource::Platform, "0.009");
        assert!(matches!(
            d.validate(),
            Err(DiscountError::FactorOutOfRange { .. })
        ));
        d.factor = Decimal::new(11, 1);
        assert!(matches!(
            d.validate(),
            Err(DiscountError::FactorOutOfRange { .. })
        ));
        d.factor = Decimal::ONE;
        d.range = DiscountRange::Quantity {
            from: 5,
            to: Some(4),
        };
        assert_eq!(d.validate(), Err(DiscountError::InvalidRange("x".into())));
        d.range = DiscountRange::Unlimited;
        d.valid_from = 10;
        d.valid_until = Some(5);
        assert_eq!(d.validate(), Err(DiscountError::InvalidWindow("x".into())));
        let mut c = disc("y", DiscountSource::Customer, "0.5");
        c.customer = None;
        assert_eq!(
            c.validate(),
            Err(DiscountError::MissingCustomer("y".into()))
        );
    }

    #[test]
    fn contracts_lapse_and_withdraw_unused_credit() {
        let mut c = Contract {
            id: "k".into(),
            customer: "alice".into(),
            start: 0,
            end: 2_000,
            credit_micros: 3_000,
            discounts: vec![disc("kd", DiscountSource::Contract, "0.6")],
            terminated_at: None,
        };
        let mut book = DiscountBook {
            strategy: DiscountStrategy::CustomerOnly,
            ..DiscountBook::default()
        };
        book.contracts.push(c.clone());
        assert_eq!(book.apply(&req(100)).expect("a").net_micros, 60);
        let mut late = req(100);
        late.at = 2_000;
        assert_eq!(book.apply(&late).expect("a").net_micros, 100);
        assert_eq!(c.credit_limit(1_000, 500), 3_000);
        c.terminated_at = Some(1_500);
        assert_eq!(c.credit_limit(1_600, 500), 500);
        assert!(!c.in_force(1_500));
        assert_eq!(
            DiscountStrategy::from_customer_policy(true, true),
            DiscountStrategy::Stacked(StackOrder::CustomerFirst)
        );
        assert_eq!(
            DiscountStrategy::from_customer_policy(false, false),
            DiscountStrategy::NoDiscount
        );
    }
}
