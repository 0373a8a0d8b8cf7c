//! Money on behalf of the API: deposits, balances and transfers, usage, bills and their
//! lines, provider statements and payouts, credit lines, limits and freezes (operations
//! manual §3.6.5, §3.8, §3.11) and licence terms sold by the month (§1.4.5).
//!
//! The service validates a request, names the accounts (`tessera_accounting::AccountKind`)
//! and asks the store, which owns every rule on the ledger; it holds the injected clock.

use std::sync::Arc;

use tessera_accounting::freeze::{LimitConfig, ManualFreeze};
use tessera_accounting::settle;
use tessera_accounting::{AccountKind, TransferOutcome};
use tessera_core::Clock;
use tessera_store::{
    AccountStatus, BalanceRecord, BillLineRecord, BillRecord, LimitScope, StatementRecord, Store,
    SubscriptionView, TransferRecord, UsageEventRecord,
};

use crate::SchedulerError;
use crate::lists::rows_of;
use crate::validate::{amount, customer, positive, required};
use tessera_auth::Viewer;

pub use tessera_accounting::settle::DepositInto;

/// Parses `cash`, `recharge_voucher` or `deduction_voucher`.
///
/// # Errors
/// `Invalid` for any other text.
pub fn parse_deposit_into(text: &str) -> Result<DepositInto, SchedulerError> {
    DepositInto::parse(text).ok_or_else(|| {
        SchedulerError::Invalid(format!(
            "into {text:?} must be cash, recharge_voucher or deduction_voucher"
        ))
    })
}

/// A deposit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// The customer (user id) credited.
    pub customer: String,
    /// Amount, micros (positive).
    pub amount_micros: i64,
    /// The caller's idempotency key: the same key with the same fields changes nothing.
    pub idempotency_key: String,
    /// Which funds it credits.
    pub into: DepositInto,
}

/// The whole ledger's balances and whether they re-derive from the transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balances {
    /// Every account.
    pub balances: Vec<BalanceRecord>,
    /// Whether each account's totals equal the sum of its transfers.
    pub balanced: bool,
}

/// Deposits, balances, bills, statements, limits, freezes and licence terms.
#[derive(Debug, Clone)]
pub struct BillingService {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl BillingService {
    pub(crate) fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Credits a customer's cash or vouchers, once per idempotency key of that customer
    /// (keys are scoped per customer). `Created` when credited now, `Exists` when the same
    /// key was already recorded with the same amount and target (nothing changed).
    ///
    /// # Errors
    /// `Invalid` for a malformed customer, key or a non-positive amount; the store's
    /// `IdempotencyMismatch` naming the key and customer when the key was used with a
    /// different amount or target; its ledger errors (an amount or balance above
    /// [`tessera_accounting::money::MAX_AMOUNT_MICROS`]).
    pub async fn deposit(&self, d: Deposit) -> Result<TransferOutcome, SchedulerError> {
        customer("account", &d.customer)?;
        required("idempotency_key", &d.idempotency_key)?;
        positive("amount_micros", d.amount_micros)?;
        tessera_accounting::ledger::check_amount(d.amount_micros)
            .map_err(|e| SchedulerError::Invalid(format!("amount_micros: {e}")))?;
        let t = settle::deposit(&d.customer, d.into, d.amount_micros, &d.idempotency_key);
        match self.store.post_transfers(&[t], self.now()).await {
            Ok(out) => Ok(out.first().copied().unwrap_or(TransferOutcome::Created)),
            Err(tessera_store::StoreError::IdempotencyMismatch { .. }) => {
                Err(tessera_store::StoreError::IdempotencyMismatch {
                    kind: "deposit",
                    id: format!(
                        "with idempotency key {:?} of customer {} (a different amount or target)",
                        d.idempotency_key, d.customer
                    ),
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The usage events `viewer` may see (measured by its parties' workers; every one for
    /// the operator), in arrival order.
    ///
    /// # Errors
    /// The store's; `Forbidden` for a caller that is no user.
    pub async fn usage(&self, viewer: &Viewer) -> Result<Vec<UsageEventRecord>, SchedulerError> {
        Ok(self.store.usage_events_of(rows_of(viewer)?).await?)
    }

    /// The balances of the accounts `viewer` may see ([`sees_account`]), and whether the whole
    /// ledger re-derives from its transfers.
    ///
    /// # Errors
    /// The store's.
    pub async fn balances(&self, viewer: &Viewer) -> Result<Balances, SchedulerError> {
        let mut balances = self.store.balances().await?;
        balances.retain(|b| sees_account(viewer, &b.account));
        Ok(Balances {
            balances,
            balanced: self.store.ledger_balanced().await?,
        })
    }

    /// The transfers touching an account `viewer` may see ([`sees_account`]).
    ///
    /// # Errors
    /// The store's.
    pub async fn transfers(&self, viewer: &Viewer) -> Result<Vec<TransferRecord>, SchedulerError> {
        let mut transfers = self.store.transfers().await?;
        transfers.retain(|t| {
            sees_account(viewer, &t.spec.debit) || sees_account(viewer, &t.spec.credit)
        });
        Ok(transfers)
    }

    /// Sets a customer's credit line: the credit account may go down to `-limit_micros`.
    ///
    /// # Errors
    /// `Invalid` for a malformed customer or a negative limit.
    pub async fn set_credit_limit(
        &self,
        customer_id: &str,
        limit_micros: i64,
    ) -> Result<(), SchedulerError> {
        customer("customer", customer_id)?;
        amount("limit_micros", limit_micros)?;
        let account = AccountKind::CustomerCredit(customer_id.to_string()).name();
        self.store
            .set_account_limit(&account, Some(-limit_micros))
            .await?;
        Ok(())
    }

    /// Bills, optionally of one customer and/or one period (`YYYY-MM`), of the customers
    /// `viewer` may see (its own user; every customer for the operator).
    ///
    /// # Errors
    /// `Invalid` for a period that is not a `YYYY-MM` month (e.g. `2026-13`); the store's.
    pub async fn bills(
        &self,
        viewer: &Viewer,
        customer: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<BillRecord>, SchedulerError> {
        if let Some(p) = period.filter(|p| !p.is_empty()) {
            tessera_accounting::bill::parse_period(p)
                .map_err(|e| SchedulerError::Invalid(format!("period {p:?}: {e}")))?;
        }
        let customer = match (viewer, customer.filter(|c| !c.is_empty())) {
            (Viewer::All, c) => c,
            (_, Some(c)) if !viewer.sees_user(c) => return Ok(Vec::new()),
            (_, _) => Some(rows_of(viewer)?),
        };
        Ok(self.store.bills(customer, period).await?)
    }

    /// The lines of one bill.
    ///
    /// # Errors
    /// `Invalid` for an empty id; the store's `NotFound` for an unknown bill.
    pub async fn bill_lines(&self, bill_id: &str) -> Result<Vec<BillLineRecord>, SchedulerError> {
        required("bill_id", bill_id)?;
        Ok(self.store.bill_lines(bill_id).await?)
    }

    /// Closes every bill whose period (plus the late window) has ended; returns them.
    ///
    /// # Errors
    /// The store's.
    pub async fn close_due_bills(&self) -> Result<Vec<BillRecord>, SchedulerError> {
        let closed = self.store.close_due_bills(self.now()).await?;
        let bills = self.store.bills(None, None).await?;
        Ok(bills
            .into_iter()
            .filter(|b| closed.contains(&b.bill_id))
            .collect())
    }

    /// Provider statements of closed months, optionally of one provider, of the parties
    /// `viewer` owns (every one for the operator).
    ///
    /// # Errors
    /// The store's.
    pub async fn statements(
        &self,
        viewer: &Viewer,
        provider: Option<&str>,
    ) -> Result<Vec<StatementRecord>, SchedulerError> {
        let mut statements = self.store.statements(provider).await?;
        statements.retain(|s| viewer.sees_party(&s.provider));
        Ok(statements)
    }

    /// Pays a provider its part of a closed month, once.
    ///
    /// # Errors
    /// `Invalid` for a malformed provider or period; the store's refusals.
    pub async fn payout(
        &self,
        provider: &str,
        period: &str,
    ) -> Result<StatementRecord, SchedulerError> {
        customer("provider", provider)?;
        required("period", period)?;
        tessera_accounting::bill::parse_period(period)
            .map_err(|e| SchedulerError::Invalid(e.to_string()))?;
        Ok(self.store.payout(provider, period, self.now()).await?)
    }

    /// Sets a limit configuration (minimum purchase and freeze amounts) at a scope.
    ///
    /// # Errors
    /// `Invalid` for a malformed customer or product; the store's amount checks.
    pub async fn set_limit(
        &self,
        scope: &LimitScope,
        config: &LimitConfig,
    ) -> Result<(), SchedulerError> {
        match scope {
            LimitScope::Platform => {}
            LimitScope::Product(p) => required("product", p)?,
            LimitScope::Customer(c, p) => {
                customer("customer", c)?;
                if let Some(p) = p {
                    required("product", p)?;
                }
            }
        }
        self.store.set_limit(scope, config, self.now()).await?;
        Ok(())
    }

    /// Adds a customer to, or removes one from, the platform white list.
    ///
    /// # Errors
    /// `Invalid` for a malformed customer.
    pub async fn set_whitelisted(
        &self,
        customer_id: &str,
        listed: bool,
    ) -> Result<(), SchedulerError> {
        customer("customer", customer_id)?;
        self.store
            .set_whitelisted(customer_id, listed, self.now())
            .await?;
        Ok(())
    }

    /// Sets the operator's manual freeze action on an account.
    ///
    /// # Errors
    /// `Invalid` for a malformed customer or a freeze without a reason.
    pub async fn set_freeze(
        &self,
        customer_id: &str,
        manual: &ManualFreeze,
    ) -> Result<(), SchedulerError> {
        customer("customer", customer_id)?;
        if let ManualFreeze::Frozen(reason) = manual {
            required("reason", reason)?;
        }
        self.store
            .set_manual_freeze(customer_id, manual, self.now())
            .await?;
        Ok(())
    }

    /// Whether a customer's jobs of a product would be refused now, and why.
    ///
    /// # Errors
    /// `Invalid` for a malformed customer or product.
    pub async fn account_status(
        &self,
        customer_id: &str,
        product: &str,
    ) -> Result<AccountStatus, SchedulerError> {
        customer("customer", customer_id)?;
        required("product", product)?;
        Ok(self.store.account_status(customer_id, product).await?)
    }

    /// Orders or renews `months` months of a licence term.
    ///
    /// # Errors
    /// `Invalid` for malformed ids; the store's refusals (frozen, minimum purchase, funds).
    pub async fn subscribe(
        &self,
        licence_id: &str,
        customer_id: &str,
        months: u32,
    ) -> Result<SubscriptionView, SchedulerError> {
        required("licence_id", licence_id)?;
        customer("customer", customer_id)?;
        Ok(self
            .store
            .subscribe(licence_id, customer_id, months, self.now())
            .await?)
    }

    /// Ends a subscription with the manual's refund.
    ///
    /// # Errors
    /// `Invalid` for malformed ids; the store's refusals.
    pub async fn unsubscribe(
        &self,
        licence_id: &str,
        customer_id: &str,
    ) -> Result<SubscriptionView, SchedulerError> {
        required("licence_id", licence_id)?;
        customer("customer", customer_id)?;
        Ok(self
            .store
            .unsubscribe(licence_id, customer_id, self.now())
            .await?)
    }
}

/// Whether `viewer` may see ledger account `name`: a customer's accounts by that user, a
/// provider's by the owner of that party, the operator's and the external account by the
/// operator only. An unparsable name is seen by the operator only.
pub fn sees_account(viewer: &Viewer, name: &str) -> bool {
    match name.parse::<AccountKind>() {
        Ok(
            AccountKind::CustomerCash(u)
            | AccountKind::CustomerRechargeVoucher(u)
            | AccountKind::CustomerDeductionVoucher(u)
            | AccountKind::CustomerCredit(u)
            | AccountKind::CustomerHolds(u)
            | AccountKind::CustomerArrears(u),
        ) => viewer.sees_user(&u),
        Ok(AccountKind::ProviderReceivable(p) | AccountKind::ProviderPaidOut(p)) => {
            viewer.sees_party(&p)
        }
        Ok(
            AccountKind::OperatorRevenue
            | AccountKind::OperatorRefunds
            | AccountKind::OperatorMarketing
            | AccountKind::External,
        )
        | Err(_) => viewer.is_all(),
    }
}
