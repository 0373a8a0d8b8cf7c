//! Product limits and account freezes (operations manual §3.6.5) persisted: limit
//! configurations per platform, product and customer, the platform white list, manual
//! freezes and thaws, and the last automatic freeze decision. The decision itself is
//! `tessera_accounting::freeze::freeze_state`, a pure function; the scheduler takes it inside
//! the admission transaction with the balances of that transaction.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::AccountKind;
use tessera_accounting::freeze::{
    CustomerLimit, FreezeDecision, FreezeInput, LimitConfig, LimitSettings, ManualFreeze,
    ProductLimit, freeze_state,
};
use tessera_accounting::rating::BillingMode;

use crate::{Store, StoreError, audit, ledger};

/// Where a limit configuration applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LimitScope {
    /// The whole platform.
    Platform,
    /// One product.
    Product(String),
    /// One customer, for one product or all (`None`).
    Customer(String, Option<String>),
}

/// A customer's freeze state as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FreezeContext {
    /// All limit configurations.
    pub settings: LimitSettings,
    /// The operator's manual action in force.
    pub manual: ManualFreeze,
    /// The last automatic decision.
    pub auto_frozen: bool,
}

impl FreezeContext {
    /// The freeze decision for a metered job of `product` with cash balance `cash_micros`.
    pub fn decide(&self, customer: &str, product: &str, cash_micros: i64) -> FreezeDecision {
        freeze_state(
            &self.settings,
            &FreezeInput {
                customer,
                product,
                mode: BillingMode::Postpaid,
                cash_micros,
                was_auto_frozen: self.auto_frozen,
                manual: &self.manual,
            },
        )
    }
}

/// A customer's account status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountStatus {
    /// Customer.
    pub customer: String,
    /// Product asked about.
    pub product: String,
    /// Cash balance.
    pub cash_micros: i64,
    /// Whether jobs of the product are refused.
    pub frozen: bool,
    /// Why.
    pub reason: String,
    /// `none`, `frozen` or `thawed`.
    pub manual: String,
}

pub(crate) fn load_context(conn: &Connection, customer: &str) -> Result<FreezeContext, StoreError> {
    let mut settings = LimitSettings::default();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT scope, customer, product, min_purchase_micros, min_freeze_micros, enabled FROM limit_configs \
             WHERE scope != 'customer' OR customer = ? ORDER BY scope, customer, product",
        )?;
        let mut rows = stmt.query(params![customer])?;
        while let Some(r) = rows.next()? {
            let scope: String = r.get(0)?;
            let c: String = r.get(1)?;
            let product: String = r.get(2)?;
            let config = LimitConfig {
                min_purchase_micros: r.get(3)?,
                min_freeze_micros: r.get(4)?,
                enabled: r.get::<_, i64>(5)? != 0,
            };
            match scope.as_str() {
                "platform" => settings.platform = Some(config),
                "product" => settings.products.push(ProductLimit { product, config }),
                _ => settings.customers.push(CustomerLimit {
                    customer: c,
                    product: (!product.is_empty()).then_some(product),
                    config,
                }),
            }
        }
    }
    let listed = conn
        .prepare_cached("SELECT 1 FROM platform_whitelist WHERE customer = ?")?
        .query_row(params![customer], |_| Ok(()))
        .optional()?;
    if listed.is_some() {
        settings.platform_whitelist.insert(customer.to_string());
    }
    let f = conn
        .prepare_cached(
            "SELECT manual, manual_reason, auto_frozen FROM account_freezes WHERE customer = ?",
        )?
        .query_row(params![customer], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    let (manual, auto_frozen) = match f {
        Some((kind, reason, auto_frozen)) => {
            let manual = match kind.as_str() {
                "frozen" => ManualFreeze::Frozen(reason),
                "thawed" => ManualFreeze::Thawed,
                _ => ManualFreeze::None,
            };
            (manual, auto_frozen != 0)
        }
        None => (ManualFreeze::None, false),
    };
    Ok(FreezeContext {
        settings,
        manual,
        auto_frozen,
    })
}

/// Records a change of the automatic freeze state, with its notice, in the audit chain.
pub(crate) fn set_auto_frozen(
    conn: &Connection,
    customer: &str,
    frozen: bool,
    notice: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO account_freezes (customer, auto_frozen, updated_at_ms) VALUES (?, ?, ?) \
         ON CONFLICT(customer) DO UPDATE SET auto_frozen = excluded.auto_frozen, updated_at_ms = excluded.updated_at_ms",
    )?
    .execute(params![customer, i64::from(frozen), now_ms])?;
    audit::append(
        conn,
        now_ms,
        if frozen { "auto_freeze" } else { "auto_thaw" },
        customer,
        &serde_json::json!({ "notice": notice }),
    )?;
    Ok(())
}

fn check_amount(name: &'static str, v: Option<i64>) -> Result<(), StoreError> {
    match v {
        Some(v) if v < 0 => Err(StoreError::Invalid {
            field: name,
            reason: format!("must not be negative, got {v}"),
        }),
        _ => Ok(()),
    }
}

impl Store {
    /// Sets (or replaces) a limit configuration.
    pub async fn set_limit(
        &self,
        scope: &LimitScope,
        config: &LimitConfig,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        check_amount("minimum purchase amount", config.min_purchase_micros)?;
        check_amount("minimum freeze amount", config.min_freeze_micros)?;
        let (name, customer, product) = match scope {
            LimitScope::Platform => ("platform", "", ""),
            LimitScope::Product(p) => ("product", "", p.as_str()),
            LimitScope::Customer(c, p) => ("customer", c.as_str(), p.as_deref().unwrap_or("")),
        };
        let customer = customer.to_string();
        let product = product.to_string();
        let config = config.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO limit_configs (scope, customer, product, min_purchase_micros, min_freeze_micros, enabled, updated_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(scope, customer, product) DO UPDATE SET \
                 min_purchase_micros = excluded.min_purchase_micros, min_freeze_micros = excluded.min_freeze_micros, \
                 enabled = excluded.enabled, updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![
                name,
                customer,
                product,
                config.min_purchase_micros,
                config.min_freeze_micros,
                i64::from(config.enabled),
                now_ms
            ])?;
            audit::append(
                conn,
                now_ms,
                "limit_set",
                &format!("{name}/{customer}/{product}"),
                &serde_json::json!({
                    "min_purchase_micros": config.min_purchase_micros,
                    "min_freeze_micros": config.min_freeze_micros,
                    "enabled": config.enabled,
                }),
            )?;
            Ok(())
        })
        .await
    }

    /// Adds a customer to (or removes one from) the platform white list.
    pub async fn set_whitelisted(
        &self,
        customer: &str,
        listed: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let customer = customer.to_string();
        self.write(move |conn| {
            if listed {
                conn.prepare_cached(
                    "INSERT INTO platform_whitelist (customer, added_at_ms) VALUES (?, ?) ON CONFLICT(customer) DO NOTHING",
                )?
                .execute(params![customer, now_ms])?;
            } else {
                conn.prepare_cached("DELETE FROM platform_whitelist WHERE customer = ?")?
                    .execute(params![customer])?;
            }
            audit::append(
                conn,
                now_ms,
                if listed {
                    "whitelist_add"
                } else {
                    "whitelist_remove"
                },
                &customer,
                &serde_json::json!({}),
            )?;
            Ok(())
        })
        .await
    }

    /// Sets the operator's manual action on an account: freeze (with a reason), thaw an
    /// automatic freeze, or clear (back to the automatic rules).
    pub async fn set_manual_freeze(
        &self,
        customer: &str,
        manual: &ManualFreeze,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (kind, reason) = match manual {
            ManualFreeze::None => ("none", ""),
            ManualFreeze::Frozen(r) => ("frozen", r.as_str()),
            ManualFreeze::Thawed => ("thawed", ""),
        };
        let customer = customer.to_string();
        let reason = reason.to_string();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO account_freezes (customer, manual, manual_reason, updated_at_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT(customer) DO UPDATE SET manual = excluded.manual, manual_reason = excluded.manual_reason, \
                 updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![customer, kind, reason, now_ms])?;
            audit::append(
                conn,
                now_ms,
                "manual_freeze",
                &customer,
                &serde_json::json!({ "action": kind, "reason": reason }),
            )?;
            Ok(())
        })
        .await
    }

    /// Whether `customer`'s jobs of `product` would be refused now, and why.
    pub async fn account_status(
        &self,
        customer: &str,
        product: &str,
    ) -> Result<AccountStatus, StoreError> {
        let (ctx, cash) = self.read(|conn| {
            let ctx = load_context(conn, customer)?;
            let cash_account = AccountKind::CustomerCash(customer.to_string()).name();
            let (cash, _) = ledger::spendable(conn, &cash_account)?;
            Ok((ctx, cash))
        })?;
        let d = ctx.decide(customer, product, cash);
        Ok(AccountStatus {
            customer: customer.to_string(),
            product: product.to_string(),
            cash_micros: cash,
            frozen: d.frozen,
            reason: d.reason,
            manual: match ctx.manual {
                ManualFreeze::None => "none",
                ManualFreeze::Frozen(_) => "frozen",
                ManualFreeze::Thawed => "thawed",
            }
            .into(),
        })
    }
}
