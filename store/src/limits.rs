//! Product limits and account freezes (operations manual §3.6.5) persisted: limit
//! configurations per platform, product and customer, the platform white list, manual
//! freezes and thaws, and the last automatic freeze decision. The decision itself is
//! `tessera_accounting::freeze::freeze_state`, a pure function; the scheduler takes it inside
//! the admission transaction with the balances of that transaction.

use serde::Serialize;
use sqlx::{Row, SqliteConnection};
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

pub(crate) async fn load_context(
    conn: &mut SqliteConnection,
    customer: &str,
) -> Result<FreezeContext, StoreError> {
    let mut settings = LimitSettings::default();
    let rows = sqlx::query(
        "SELECT scope, customer, product, min_purchase_micros, min_freeze_micros, enabled FROM limit_configs \
         WHERE scope != 'customer' OR customer = ? ORDER BY scope, customer, product",
    )
    .bind(customer)
    .fetch_all(&mut *conn)
    .await?;
    for r in &rows {
        let scope: String = r.try_get(0)?;
        let c: String = r.try_get(1)?;
        let product: String = r.try_get(2)?;
        let config = LimitConfig {
            min_purchase_micros: r.try_get(3)?,
            min_freeze_micros: r.try_get(4)?,
            enabled: r.try_get::<i64, _>(5)? != 0,
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
    let listed = sqlx::query("SELECT 1 FROM platform_whitelist WHERE customer = ?")
        .bind(customer)
        .fetch_optional(&mut *conn)
        .await?;
    if listed.is_some() {
        settings.platform_whitelist.insert(customer.to_string());
    }
    let f = sqlx::query(
        "SELECT manual, manual_reason, auto_frozen FROM account_freezes WHERE customer = ?",
    )
    .bind(customer)
    .fetch_optional(&mut *conn)
    .await?;
    let (manual, auto_frozen) = match f {
        Some(r) => {
            let kind: String = r.try_get(0)?;
            let reason: String = r.try_get(1)?;
            let manual = match kind.as_str() {
                "frozen" => ManualFreeze::Frozen(reason),
                "thawed" => ManualFreeze::Thawed,
                _ => ManualFreeze::None,
            };
            (manual, r.try_get::<i64, _>(2)? != 0)
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
pub(crate) async fn set_auto_frozen(
    conn: &mut SqliteConnection,
    customer: &str,
    frozen: bool,
    notice: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO account_freezes (customer, auto_frozen, updated_at_ms) VALUES (?, ?, ?) \
         ON CONFLICT(customer) DO UPDATE SET auto_frozen = excluded.auto_frozen, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(customer)
    .bind(i64::from(frozen))
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    audit::append(
        conn,
        now_ms,
        if frozen { "auto_freeze" } else { "auto_thaw" },
        customer,
        &serde_json::json!({ "notice": notice }),
    )
    .await?;
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
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO limit_configs (scope, customer, product, min_purchase_micros, min_freeze_micros, enabled, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(scope, customer, product) DO UPDATE SET \
             min_purchase_micros = excluded.min_purchase_micros, min_freeze_micros = excluded.min_freeze_micros, \
             enabled = excluded.enabled, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(name)
        .bind(customer)
        .bind(product)
        .bind(config.min_purchase_micros)
        .bind(config.min_freeze_micros)
        .bind(i64::from(config.enabled))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now_ms,
            "limit_set",
            &format!("{name}/{customer}/{product}"),
            &serde_json::json!({
                "min_purchase_micros": config.min_purchase_micros,
                "min_freeze_micros": config.min_freeze_micros,
                "enabled": config.enabled,
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds a customer to (or removes one from) the platform white list.
    pub async fn set_whitelisted(
        &self,
        customer: &str,
        listed: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        if listed {
            sqlx::query(
                "INSERT INTO platform_whitelist (customer, added_at_ms) VALUES (?, ?) ON CONFLICT(customer) DO NOTHING",
            )
            .bind(customer)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM platform_whitelist WHERE customer = ?")
                .bind(customer)
                .execute(&mut *tx)
                .await?;
        }
        audit::append(
            &mut tx,
            now_ms,
            if listed {
                "whitelist_add"
            } else {
                "whitelist_remove"
            },
            customer,
            &serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
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
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO account_freezes (customer, manual, manual_reason, updated_at_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT(customer) DO UPDATE SET manual = excluded.manual, manual_reason = excluded.manual_reason, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(customer)
        .bind(kind)
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now_ms,
            "manual_freeze",
            customer,
            &serde_json::json!({ "action": kind, "reason": reason }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `customer`'s jobs of `product` would be refused now, and why.
    pub async fn account_status(
        &self,
        customer: &str,
        product: &str,
    ) -> Result<AccountStatus, StoreError> {
        let mut conn = self.read.acquire().await?;
        let ctx = load_context(&mut conn, customer).await?;
        let cash_account = AccountKind::CustomerCash(customer.to_string()).name();
        let (cash, _) = ledger::spendable(&mut conn, &cash_account).await?;
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
