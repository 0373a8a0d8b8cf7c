//! Billing RPCs over the scheduler's billing service: deposits, balances, transfers, usage,
//! bills, statements, payouts, credit lines, limits, freezes and licence terms. Wire strings
//! (deposit target, limit scope, freeze action) are parsed here, once.

use tessera_accounting::freeze::{LimitConfig, ManualFreeze};
use tessera_auth::Viewer;
use tessera_proto::v1 as pb;
use tessera_scheduler::billing::{Deposit, DepositInto, parse_deposit_into};
use tessera_scheduler::{BillingService, LimitScope};
use tonic::Status;

use crate::convert::{
    account_status_to_pb, bill_to_pb, line_to_pb, optional_filter, statement_to_pb,
    subscription_to_pb, transfer_to_pb, usage_to_pb,
};
use crate::error::{invalid, status};

/// The product an account query names when it names none (the only one built).
const DEFAULT_PRODUCT: &str = tessera_core::job::scene::PSI;

pub(crate) async fn deposit(s: &BillingService, r: pb::DepositRequest) -> Result<pb::Ack, Status> {
    // Documented in the contract: an empty target is cash.
    let into = match r.into.as_str() {
        "" => DepositInto::Cash,
        other => parse_deposit_into(other).map_err(|e| status(&e))?,
    };
    s.deposit(Deposit {
        customer: r.account,
        amount_micros: r.amount_micros,
        idempotency_key: r.idempotency_key,
        into,
    })
    .await
    .map(|outcome| pb::Ack {
        already_recorded: outcome == tessera_accounting::TransferOutcome::Exists,
        // Set by the RPC from the audit service (the depositor's receipt).
        audit_head: None,
    })
    .map_err(|e| status(&e))
}

pub(crate) async fn usage(s: &BillingService, viewer: &Viewer) -> Result<pb::UsageList, Status> {
    let events = s.usage(viewer).await.map_err(|e| status(&e))?;
    Ok(pb::UsageList {
        events: events
            .into_iter()
            .map(usage_to_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) async fn balances(
    s: &BillingService,
    viewer: &Viewer,
) -> Result<pb::BalanceList, Status> {
    let b = s.balances(viewer).await.map_err(|e| status(&e))?;
    Ok(pb::BalanceList {
        balances: b
            .balances
            .into_iter()
            .map(|b| pb::Balance {
                account: b.account,
                balance_micros: b.balance_micros,
                held_micros: b.held_micros,
            })
            .collect(),
        balanced: b.balanced,
    })
}

pub(crate) async fn transfers(
    s: &BillingService,
    viewer: &Viewer,
) -> Result<pb::TransferList, Status> {
    let t = s.transfers(viewer).await.map_err(|e| status(&e))?;
    Ok(pb::TransferList {
        transfers: t.into_iter().map(transfer_to_pb).collect(),
    })
}

pub(crate) async fn set_credit_limit(
    s: &BillingService,
    r: pb::CreditLimitRequest,
) -> Result<(), Status> {
    s.set_credit_limit(&r.customer, r.limit_micros)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn bills(
    s: &BillingService,
    r: pb::BillQuery,
    viewer: &Viewer,
) -> Result<pb::BillList, Status> {
    let bills = s
        .bills(
            viewer,
            optional_filter(&r.customer),
            optional_filter(&r.period),
        )
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::BillList {
        bills: bills.into_iter().map(bill_to_pb).collect(),
    })
}

pub(crate) async fn bill_lines(
    s: &BillingService,
    r: pb::BillRef,
) -> Result<pb::BillLineList, Status> {
    let lines = s.bill_lines(&r.bill_id).await.map_err(|e| status(&e))?;
    Ok(pb::BillLineList {
        lines: lines.into_iter().map(line_to_pb).collect(),
    })
}

pub(crate) async fn close_due_bills(s: &BillingService) -> Result<pb::BillList, Status> {
    let bills = s.close_due_bills().await.map_err(|e| status(&e))?;
    Ok(pb::BillList {
        bills: bills.into_iter().map(bill_to_pb).collect(),
    })
}

pub(crate) async fn statements(
    s: &BillingService,
    r: pb::StatementQuery,
    viewer: &Viewer,
) -> Result<pb::StatementList, Status> {
    let st = s
        .statements(viewer, optional_filter(&r.provider))
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::StatementList {
        statements: st.into_iter().map(statement_to_pb).collect(),
    })
}

pub(crate) async fn payout(
    s: &BillingService,
    r: pb::PayoutRequest,
) -> Result<pb::Statement, Status> {
    let st = s
        .payout(&r.provider, &r.period)
        .await
        .map_err(|e| status(&e))?;
    Ok(statement_to_pb(st))
}

pub(crate) async fn set_limit(s: &BillingService, r: pb::LimitRequest) -> Result<(), Status> {
    let scope = match r.scope.as_str() {
        "platform" => LimitScope::Platform,
        "product" => LimitScope::Product(r.product),
        "customer" => {
            LimitScope::Customer(r.customer, optional_filter(&r.product).map(String::from))
        }
        other => {
            return Err(invalid(format!(
                "scope {other:?} must be platform, product or customer"
            )));
        }
    };
    let config = LimitConfig {
        min_purchase_micros: r.min_purchase_micros,
        min_freeze_micros: r.min_freeze_micros,
        enabled: r.enabled,
    };
    s.set_limit(&scope, &config).await.map_err(|e| status(&e))
}

pub(crate) async fn set_whitelist(
    s: &BillingService,
    r: pb::WhitelistRequest,
) -> Result<(), Status> {
    s.set_whitelisted(&r.customer, r.listed)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn set_freeze(s: &BillingService, r: pb::FreezeRequest) -> Result<(), Status> {
    let manual = match r.action.as_str() {
        "freeze" => ManualFreeze::Frozen(r.reason),
        "thaw" => ManualFreeze::Thawed,
        "clear" => ManualFreeze::None,
        other => {
            return Err(invalid(format!(
                "action {other:?} must be freeze, thaw or clear"
            )));
        }
    };
    s.set_freeze(&r.customer, &manual)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn account_status(
    s: &BillingService,
    r: pb::AccountQuery,
) -> Result<pb::AccountStatus, Status> {
    let product = optional_filter(&r.product).unwrap_or(DEFAULT_PRODUCT);
    let st = s
        .account_status(&r.customer, product)
        .await
        .map_err(|e| status(&e))?;
    Ok(account_status_to_pb(st))
}

pub(crate) async fn subscribe(
    s: &BillingService,
    r: pb::SubscriptionRequest,
) -> Result<pb::SubscriptionView, Status> {
    let v = s
        .subscribe(&r.licence_id, &r.customer, r.months)
        .await
        .map_err(|e| status(&e))?;
    Ok(subscription_to_pb(v))
}

pub(crate) async fn unsubscribe(
    s: &BillingService,
    r: pb::SubscriptionRequest,
) -> Result<pb::SubscriptionView, Status> {
    let v = s
        .unsubscribe(&r.licence_id, &r.customer)
        .await
        .map_err(|e| status(&e))?;
    Ok(subscription_to_pb(v))
}
