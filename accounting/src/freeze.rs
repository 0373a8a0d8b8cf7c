//! Product limits (产品限额): minimum purchase amount and minimum freeze amount, and the
//! freeze decision the scheduler asks before starting a job (operations manual §3.6.5).
//!
//! # Rules (manual)
//!
//! * Limits are configured per platform, per product and per customer; when several are
//!   enabled only the highest-priority one is executed: customer > product > platform.
//!   Disabling a higher one lets the lower one apply again (§3.6.5 item 5).
//! * The amount compared is the customer's **cash** balance (注：金额指用户现金余额).
//! * Cash < minimum freeze amount → the account and its metered (按量) resources are frozen
//!   (item 1); the minimum freeze amount concerns metered products only (§3.6.5.1–3).
//! * Cash < minimum purchase amount → purchases and prepaid renewals fail; a white-listed
//!   customer is not limited (item 2).
//! * Manual freeze outranks automatic: an automatic freeze can be thawed manually; a manual
//!   freeze is never thawed automatically (item 3).
//! * Thawing: recharge to a balance **above** the minimum freeze amount, lower the amount
//!   below the balance, disable it, white-list the customer on the platform limit, or an
//!   operator's manual thaw (item 4).
//! * Whenever the minimum freeze amount freezes an account the tenant is notified (item 6);
//!   a white-listed customer gets a notice but no restriction (§3.6.5.1).
//!
//! # Interpretation choices
//!
//! * The platform white list exempts from the **platform** configuration only (§3.6.5.1
//!   "不受产品限额中的平台设置控制"); product and customer configurations still apply.
//! * A customer configuration may name a product or not; for one (customer, product) the
//!   order is customer+product > customer (all products) > product > platform.
//! * The highest-priority **enabled** configuration decides both amounts as a whole; an
//!   amount it leaves empty is "no limit" (item 5 "只执行优先级高的配置").
//! * Freeze uses `cash < min` and thaw needs `cash > min`; at exactly `cash == min` the
//!   account keeps its previous automatic state (the caller passes `was_auto_frozen`).
//! * A manual thaw ([`ManualFreeze::Thawed`]) overrides the automatic freeze until the
//!   operator clears it.

use std::collections::BTreeSet;

use crate::money::Micros;
use crate::rating::BillingMode;

/// One limit configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// 最小购买金额.
    pub min_purchase_micros: Option<Micros>,
    /// 最小冻结金额 (metered products only).
    pub min_freeze_micros: Option<Micros>,
    /// 启用 (configurations are created disabled, §3.6.5.2).
    pub enabled: bool,
}

/// A product configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductLimit {
    /// Product.
    pub product: String,
    /// Limits.
    pub config: LimitConfig,
}

/// A customer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerLimit {
    /// Customer.
    pub customer: String,
    /// Product, or `None` for every product.
    pub product: Option<String>,
    /// Limits.
    pub config: LimitConfig,
}

/// All limit configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitSettings {
    /// Platform configuration.
    pub platform: Option<LimitConfig>,
    /// Customers exempt from the platform configuration.
    pub platform_whitelist: BTreeSet<String>,
    /// Product configurations.
    pub products: Vec<ProductLimit>,
    /// Customer configurations.
    pub customers: Vec<CustomerLimit>,
}

/// Which level decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// A customer configuration for this product.
    CustomerProduct,
    /// A customer configuration for every product.
    Customer,
    /// A product configuration.
    Product,
    /// The platform configuration.
    Platform,
}

impl LimitSource {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            LimitSource::CustomerProduct => "customer+product",
            LimitSource::Customer => "customer",
            LimitSource::Product => "product",
            LimitSource::Platform => "platform",
        }
    }
}

impl LimitSettings {
    /// The configuration in force for a customer and product, and where it comes from.
    pub fn effective(&self, customer: &str, product: &str) -> Option<(LimitSource, &LimitConfig)> {
        let cp = self.customers.iter().find(|c| {
            c.config.enabled && c.customer == customer && c.product.as_deref() == Some(product)
        });
        if let Some(c) = cp {
            return Some((LimitSource::CustomerProduct, &c.config));
        }
        let c = self
            .customers
            .iter()
            .find(|c| c.config.enabled && c.customer == customer && c.product.is_none());
        if let Some(c) = c {
            return Some((LimitSource::Customer, &c.config));
        }
        let p = self
            .products
            .iter()
            .find(|p| p.config.enabled && p.product == product);
        if let Some(p) = p {
            return Some((LimitSource::Product, &p.config));
        }
        match &self.platform {
            Some(cfg) if cfg.enabled && !self.platform_whitelist.contains(customer) => {
                Some((LimitSource::Platform, cfg))
            }
            _ => None,
        }
    }

    fn whitelisted_but_limited(&self, customer: &str, cash: Micros) -> bool {
        self.platform_whitelist.contains(customer)
            && self.platform.as_ref().is_some_and(|p| {
                p.enabled
                    && (p.min_freeze_micros.is_some_and(|m| cash < m)
                        || p.min_purchase_micros.is_some_and(|m| cash < m))
            })
    }
}

/// An operator's manual action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ManualFreeze {
    /// None.
    #[default]
    None,
    /// 手动冻结, with the operator's reason.
    Frozen(String),
    /// 手动解冻 of an automatic freeze.
    Thawed,
}

/// Inputs of [`freeze_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreezeInput<'a> {
    /// Customer.
    pub customer: &'a str,
    /// Product the resource or job belongs to.
    pub product: &'a str,
    /// Prepaid or metered product.
    pub mode: BillingMode,
    /// Cash balance (negative in arrears).
    pub cash_micros: Micros,
    /// Whether the account was automatically frozen before this decision.
    pub was_auto_frozen: bool,
    /// Manual action in force.
    pub manual: &'a ManualFreeze,
}

/// Why an account is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeCause {
    /// Manual freeze.
    Manual,
    /// Cash below the minimum freeze amount.
    Automatic(LimitSource),
}

/// The freeze decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeDecision {
    /// Whether the account's resources of this product are frozen.
    pub frozen: bool,
    /// Why.
    pub cause: Option<FreezeCause>,
    /// Human-readable reason ("" when not frozen).
    pub reason: String,
    /// Whether the automatic state is frozen (pass back as `was_auto_frozen`).
    pub auto_frozen: bool,
    /// A message to send the tenant now, if any.
    pub notice: Option<String>,
}

impl FreezeDecision {
    /// "A frozen account cannot start jobs": `Err(reason)` when frozen.
    pub fn admit_job(&self) -> Result<(), String> {
        if self.frozen {
            Err(self.reason.clone())
        } else {
            Ok(())
        }
    }
}

/// Decides whether `input`'s account is frozen for its product (pure).
pub fn freeze_state(settings: &LimitSettings, input: &FreezeInput<'_>) -> FreezeDecision {
    let cash = input.cash_micros;
    let eff = settings.effective(input.customer, input.product);
    let min_freeze = eff.and_then(|(src, c)| c.min_freeze_micros.map(|m| (src, m)));
    let auto = match min_freeze {
        Some((src, m)) if input.mode == BillingMode::Postpaid => {
            if cash < m || (cash == m && input.was_auto_frozen) {
                Some((src, m))
            } else {
                None
            }
        }
        _ => None,
    };
    let auto_frozen = auto.is_some();
    let mut notice = None;
    if let Some((src, m)) = auto
        && !input.was_auto_frozen
    {
        notice = Some(format!(
            "account {} frozen: cash {} below the minimum freeze amount {} ({} limit)",
            input.customer,
            crate::money::format_amount(cash),
            crate::money::format_amount(m),
            src.name()
        ));
    }
    if notice.is_none()
        && input.mode == BillingMode::Postpaid
        && settings.whitelisted_but_limited(input.customer, cash)
        && eff.is_none_or(|(src, _)| src == LimitSource::Platform)
    {
        notice = Some(format!(
            "account {} is below the platform limits but white-listed; resources stay usable",
            input.customer
        ));
    }
    match (input.manual, auto) {
        (ManualFreeze::Frozen(why), _) => FreezeDecision {
            frozen: true,
            cause: Some(FreezeCause::Manual),
            reason: format!("account {} frozen manually: {why}", input.customer),
            auto_frozen,
            notice,
        },
        (ManualFreeze::Thawed, _) | (ManualFreeze::None, None) => FreezeDecision {
            frozen: false,
            cause: None,
            reason: String::new(),
            auto_frozen,
            notice,
        },
        (ManualFreeze::None, Some((src, m))) => FreezeDecision {
            frozen: true,
            cause: Some(FreezeCause::Automatic(src)),
            reason: format!(
                "account {} frozen: cash {} below the minimum freeze amount {} ({} limit)",
                input.customer,
                crate::money::format_amount(cash),
                crate::money::format_amount(m),
                src.name()
            ),
            auto_frozen,
            notice,
        },
    }
}

/// Why a purchase or prepaid renewal is refused by the limits.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// Cash below the minimum purchase amount.
    #[error(
        "cash {} below the minimum purchase amount {} ({source_name} limit)",
        crate::money::format_amount(*cash),
        crate::money::format_amount(*minimum)
    )]
    BelowMinimumPurchase {
        /// Cash balance.
        cash: Micros,
        /// Minimum purchase amount.
        minimum: Micros,
        /// Level that decided.
        source_name: &'static str,
    },
    /// The account is frozen.
    #[error("{0}")]
    Frozen(String),
}

/// Checks a purchase or prepaid renewal against the minimum purchase amount (pure).
pub fn check_purchase(
    settings: &LimitSettings,
    customer: &str,
    product: &str,
    cash_micros: Micros,
) -> Result<(), LimitError> {
    if let Some((src, cfg)) = settings.effective(customer, product)
        && let Some(min) = cfg.min_purchase_micros
        && cash_micros < min
    {
        return Err(LimitError::BelowMinimumPurchase {
            cash: cash_micros,
            minimum: min,
            source_name: src.name(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(purchase: Option<i64>, freeze: Option<i64>, enabled: bool) -> LimitConfig {
        LimitConfig {
            min_purchase_micros: purchase,
            min_freeze_micros: freeze,
            enabled,
        }
    }

    fn settings() -> LimitSettings {
        LimitSettings {
            platform: Some(cfg(Some(100), Some(10), true)),
            platform_whitelist: BTreeSet::new(),
            products: vec![ProductLimit {
                product: "ma".into(),
                config: cfg(Some(50), Some(20), true),
            }],
            customers: vec![CustomerLimit {
                customer: "vip".into(),
                product: None,
                config: cfg(None, Some(0), true),
            }],
        }
    }

    /// `check(settings, (customer, product, mode, cash, was_auto, manual), (frozen, cause))`.
    fn check(
        s: &LimitSettings,
        input: (&str, &str, BillingMode, i64, bool, ManualFreeze),
        expected: (bool, Option<FreezeCause>),
    ) {
        let d = freeze_state(
            s,
            &FreezeInput {
                customer: input.0,
                product: input.1,
                mode: input.2,
                cash_micros: input.3,
                was_auto_frozen: input.4,
                manual: &input.5,
            },
        );
        assert_eq!((d.frozen, d.cause), expected, "{input:?}");
        assert_eq!(d.admit_job().is_err(), d.frozen);
    }

    use BillingMode::{Postpaid, Prepaid};
    use FreezeCause::{Automatic, Manual};
    use LimitSource::{Customer, Platform, Product};

    #[test]
    fn priority_customer_product_platform() {
        let s = settings();
        check(
            &s,
            ("bob", "obs", Postpaid, 9, false, ManualFreeze::None),
            (true, Some(Automatic(Platform))),
        );
        check(
            &s,
            ("bob", "obs", Postpaid, 10, false, ManualFreeze::None),
            (false, None),
        );
        check(
            &s,
            ("bob", "ma", Postpaid, 15, false, ManualFreeze::None),
            (true, Some(Automatic(Product))),
        );
        check(
            &s,
            ("vip", "ma", Postpaid, -5, false, ManualFreeze::None),
            (true, Some(Automatic(Customer))),
        );
        check(
            &s,
            ("vip", "ma", Postpaid, 0, false, ManualFreeze::None),
            (false, None),
        );
        // Only metered products freeze.
        check(
            &s,
            ("bob", "obs", Prepaid, 0, false, ManualFreeze::None),
            (false, None),
        );
        // Disabling the higher level executes the lower one.
        let mut s2 = settings();
        s2.products[0].config.enabled = false;
        check(
            &s2,
            ("bob", "ma", Postpaid, 15, false, ManualFreeze::None),
            (false, None),
        );
        check(
            &s2,
            ("bob", "ma", Postpaid, 9, false, ManualFreeze::None),
            (true, Some(Automatic(Platform))),
        );
    }

    #[test]
    fn manual_outranks_automatic_and_thaw_rules() {
        let s = settings();
        // Manual freeze: not thawed by a large balance.
        check(
            &s,
            (
                "bob",
                "obs",
                Postpaid,
                1_000,
                false,
                ManualFreeze::Frozen("audit".into()),
            ),
            (true, Some(Manual)),
        );
        // Manual thaw of an automatic freeze.
        check(
            &s,
            ("bob", "obs", Postpaid, 0, true, ManualFreeze::Thawed),
            (false, None),
        );
        // Thaw needs cash > minimum: at equality the previous state holds.
        check(
            &s,
            ("bob", "obs", Postpaid, 10, true, ManualFreeze::None),
            (true, Some(Automatic(Platform))),
        );
        check(
            &s,
            ("bob", "obs", Postpaid, 11, true, ManualFreeze::None),
            (false, None),
        );
        // White list exempts from the platform level.
        let mut w = settings();
        w.platform_whitelist.insert("bob".into());
        check(
            &w,
            ("bob", "obs", Postpaid, 0, true, ManualFreeze::None),
            (false, None),
        );
        check(
            &w,
            ("bob", "ma", Postpaid, 0, true, ManualFreeze::None),
            (true, Some(Automatic(Product))),
        );
        let d = freeze_state(
            &w,
            &FreezeInput {
                customer: "bob",
                product: "obs",
                mode: Postpaid,
                cash_micros: 0,
                was_auto_frozen: false,
                manual: &ManualFreeze::None,
            },
        );
        assert!(d.notice.is_some_and(|n| n.contains("white-listed")));
    }

    #[test]
    fn notices_and_purchase_limits() {
        let s = settings();
        let input = |was| FreezeInput {
            customer: "bob",
            product: "obs",
            mode: Postpaid,
            cash_micros: 5,
            was_auto_frozen: was,
            manual: &ManualFreeze::None,
        };
        let first = freeze_state(&s, &input(false));
        assert!(first.notice.is_some());
        assert!(first.reason.contains("minimum freeze amount"));
        assert!(freeze_state(&s, &input(true)).notice.is_none());
        assert_eq!(
            check_purchase(&s, "bob", "obs", 99),
            Err(LimitError::BelowMinimumPurchase {
                cash: 99,
                minimum: 100,
                source_name: "platform"
            })
        );
        assert_eq!(check_purchase(&s, "bob", "ma", 50), Ok(()));
        assert_eq!(
            check_purchase(&s, "vip", "obs", 0),
            Ok(()),
            "customer level has no minimum"
        );
        let mut w = settings();
        w.platform_whitelist.insert("bob".into());
        assert_eq!(check_purchase(&w, "bob", "obs", 0), Ok(()));
    }
}
