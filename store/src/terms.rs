//! Licence terms sold as prepaid monthly subscriptions (operations manual §1.4.5): order,
//! renewal inside or after the term, unsubscription with refund, and the check admission makes.
//!
//! The rules are `tessera_accounting::subscription` (pure); this module persists the terms,
//! pays them from the buyer's recharge voucher, cash and credit line in that order (prepaid
//! products take no deduction vouchers, §3.11), splits the money between provider and operator
//! with the licence's operator share, and writes a bill line per order, renewal and refund.
//!
//! Interpretation: the operator refuses jobs outside a paid term, which is the automatic freeze
//! at the term's end. A licence frozen exactly at its end owes no make-up (§1.4.5.1.2 (4)), so
//! overdue make-ups do not arise here; a renewal after the end starts at the renewal time.
//! Should one arise, its daily price uses the store's configured basis
//! ([`Store::with_daily_price_basis`], `serve --daily-price-basis`; default the manual's rule).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::AccountKind;
use tessera_accounting::freeze::{ManualFreeze, check_purchase};
use tessera_accounting::settle::{self, TermPurchase, TermRefund};
use tessera_accounting::subscription::{Subscription, SubscriptionStatus, Term, TermKind};

use crate::bills::add_line;
use crate::records::{LicenceRecord, load_licence};
use crate::{RuleRefusal, Store, StoreError, audit, ledger, limits};

/// What a subscription operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionView {
    /// Licence.
    pub licence_id: String,
    /// Customer.
    pub customer: String,
    /// `active` or `closed`.
    pub status: String,
    /// Start of the first term of the current generation.
    pub start_ms: i64,
    /// End of the last term.
    pub end_ms: i64,
    /// Months bought in the current generation.
    pub months_total: u32,
    /// Charged by this operation.
    pub charged_micros: i64,
    /// Refunded by this operation.
    pub refund_micros: i64,
}

struct Loaded {
    sub: Subscription,
    generation: i64,
}

fn refused(e: impl Into<RuleRefusal>) -> StoreError {
    StoreError::Refused(e.into())
}

fn load(
    conn: &Connection,
    l: &LicenceRecord,
    customer: &str,
) -> Result<Option<Loaded>, StoreError> {
    let Some((status, closed_at, generation)) = conn
        .prepare_cached(
            "SELECT status, closed_at_ms, generation FROM licence_subscriptions WHERE licence_id = ? AND customer = ?",
        )?
        .query_row(params![l.licence_id, customer], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut terms = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT kind, start_ms, end_ms, months, original_micros, refundable_paid_micros FROM licence_terms \
         WHERE licence_id = ? AND customer = ? AND generation = ? ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![l.licence_id, customer, generation])?;
    while let Some(t) = rows.next()? {
        let kind: String = t.get(0)?;
        terms.push(Term {
            kind: if kind == "order" {
                TermKind::Order
            } else {
                TermKind::Renewal
            },
            start: t.get(1)?,
            end: t.get(2)?,
            months: u32::try_from(t.get::<_, i64>(3)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            original_micros: t.get(4)?,
            refundable_paid_micros: t.get(5)?,
        });
    }
    let sub = Subscription {
        id: format!("{}/{customer}", l.licence_id),
        customer: customer.to_string(),
        product: format!("licence:{}", l.licence_id),
        monthly_price_micros: l.monthly_price_micros,
        units: 1,
        terms,
        frozen_at: None,
        status: match (status.as_str(), closed_at) {
            ("closed", Some(at)) => SubscriptionStatus::Closed(at),
            _ => SubscriptionStatus::Active,
        },
    };
    Ok(Some(Loaded { sub, generation }))
}

/// Whether `customer` holds a paid term of `licence` covering `now_ms`; `Err(reason)` if not.
pub(crate) fn term_check(
    conn: &Connection,
    l: &LicenceRecord,
    customer: &str,
    now_ms: i64,
) -> Result<Result<(), String>, StoreError> {
    if l.monthly_price_micros == 0 {
        return Ok(Ok(()));
    }
    let covered = conn
        .prepare_cached(
            "SELECT 1 FROM licence_terms t JOIN licence_subscriptions s \
             ON s.licence_id = t.licence_id AND s.customer = t.customer AND s.generation = t.generation \
             WHERE t.licence_id = ? AND t.customer = ? AND s.status = 'active' AND t.start_ms <= ? AND ? < t.end_ms",
        )?
        .query_row(params![l.licence_id, customer, now_ms, now_ms], |_| Ok(()))
        .optional()?;
    Ok(match covered {
        Some(()) => Ok(()),
        None => Err(format!(
            "licence {} is sold by the month: {customer} holds no paid term covering now \
             (tessera licence subscribe)",
            l.licence_id
        )),
    })
}

impl Store {
    /// Orders (or renews) `months` months of a licence term for `customer`, paid at once from
    /// the recharge voucher, cash and credit line. Refused, with nothing written, when the
    /// licence has no monthly price, the customer is not its licensee, the account is frozen
    /// manually, its cash is below the minimum purchase amount, or the funds do not cover it.
    pub async fn subscribe(
        &self,
        licence_id: &str,
        customer: &str,
        months: u32,
        now_ms: i64,
    ) -> Result<SubscriptionView, StoreError> {
        let licence_id = licence_id.to_string();
        let customer = customer.to_string();
        let zone = self.zone.clone();
        let daily_price_basis = self.daily_price_basis;
        self.write(move |conn| {
            let licence_id = licence_id.as_str();
            let customer = customer.as_str();
            let l = load_licence(conn, licence_id)?;
            if l.monthly_price_micros == 0 {
                return Err(refused(RuleRefusal::NotMonthly(licence_id.to_string())));
            }
            if l.licensee != customer {
                return Err(refused(RuleRefusal::NotLicensee {
                    licence: licence_id.to_string(),
                    licensee: l.licensee.clone(),
                    customer: customer.to_string(),
                }));
            }
            let product = format!("licence:{licence_id}");
            let freeze = limits::load_context(conn, customer)?;
            if let ManualFreeze::Frozen(why) = &freeze.manual {
                return Err(refused(RuleRefusal::AccountFrozen {
                    customer: customer.to_string(),
                    reason: why.clone(),
                }));
            }
            let cash_account = AccountKind::CustomerCash(customer.to_string()).name();
            let (cash, _) = ledger::spendable(conn, &cash_account)?;
            check_purchase(&freeze.settings, customer, &product, cash).map_err(refused)?;

            let existing = load(conn, &l, customer)?;
            let (mut sub, generation, kind) = match existing {
                Some(Loaded { sub, generation })
                    if matches!(sub.status, SubscriptionStatus::Active) =>
                {
                    (sub, generation, TermKind::Renewal)
                }
                Some(Loaded { generation, .. }) => {
                    let sub = Subscription::new(
                        &format!("{licence_id}/{customer}"),
                        customer,
                        &product,
                        l.monthly_price_micros,
                        1,
                        now_ms,
                        months,
                    )
                    .map_err(refused)?;
                    (sub, generation + 1, TermKind::Order)
                }
                None => {
                    let sub = Subscription::new(
                        &format!("{licence_id}/{customer}"),
                        customer,
                        &product,
                        l.monthly_price_micros,
                        1,
                        now_ms,
                        months,
                    )
                    .map_err(refused)?;
                    (sub, 0, TermKind::Order)
                }
            };
            if kind == TermKind::Renewal {
                if now_ms >= sub.end() {
                    sub.freeze(sub.end()); // jobs were refused from the end on
                }
                let q = sub
                    .quote_renewal(months, now_ms, daily_price_basis)
                    .map_err(refused)?;
                sub.apply_renewal(&q).map_err(refused)?;
            }
            let seq = sub.terms.len() - 1;
            let term = sub.terms.last().cloned().ok_or_else(|| {
                StoreError::Corrupt(format!("subscription {licence_id}/{customer} has no term"))
            })?;
            let price = term.original_micros;

            // Pay in the payment order of a prepaid product (recharge voucher, cash, credit).
            let funds = ledger::customer_funds(conn, customer)?;
            let paid = settle::term_payment(
                &TermPurchase {
                    licence_id,
                    customer,
                    provider: &l.licensor,
                    generation,
                    seq,
                    kind,
                    start: term.start,
                    end: term.end,
                    months: term.months,
                    price_micros: price,
                    monthly_price_micros: l.monthly_price_micros,
                    operator_share_bps: l.price.operator_share_bps,
                    now: now_ms,
                },
                &funds,
            )
            .map_err(refused)?;
            for t in &paid.transfers {
                ledger::post(conn, t, now_ms)?;
            }
            let refundable = paid.refundable_micros;
            conn.prepare_cached(
                "INSERT INTO licence_subscriptions (licence_id, customer, status, generation, created_at_ms) \
                 VALUES (?, ?, 'active', ?, ?) ON CONFLICT(licence_id, customer) DO UPDATE SET \
                 status = 'active', closed_at_ms = NULL, generation = excluded.generation",
            )?
            .execute(params![licence_id, customer, generation, now_ms])?;
            let kind_name = paid.line.kind.name();
            let seq_i64 =
                i64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("term index {seq}")))?;
            conn.prepare_cached(
                "INSERT INTO licence_terms (licence_id, customer, generation, seq, kind, start_ms, end_ms, months, \
                 original_micros, refundable_paid_micros, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                licence_id,
                customer,
                generation,
                seq_i64,
                kind_name,
                term.start,
                term.end,
                i64::from(term.months),
                price,
                refundable,
                now_ms
            ])?;
            add_line(conn, &paid.line, now_ms, &zone)?;
            let view = SubscriptionView {
                licence_id: licence_id.to_string(),
                customer: customer.to_string(),
                status: "active".into(),
                start_ms: sub.start(),
                end_ms: sub.end(),
                months_total: sub.terms.iter().map(|t| t.months).sum(),
                charged_micros: price,
                refund_micros: 0,
            };
            audit::append(
                conn,
                now_ms,
                "licence_subscribe",
                &format!("{licence_id}/{customer}"),
                &serde_json::json!({"kind": kind_name, "view": view,
                    "paid_from": paid.paid_from.iter().map(|(a, m)| (a.name(), m)).collect::<Vec<_>>()}),
            )?;
            Ok(view)
        })
        .await
    }

    /// Ends `customer`'s subscription to a licence: refund = cash and credit paid − monthly
    /// price × months used (a started month counts whole), never below zero, returned to cash
    /// from the provider's receivable and the operator's refunds account in the licence's
    /// split.
    pub async fn unsubscribe(
        &self,
        licence_id: &str,
        customer: &str,
        now_ms: i64,
    ) -> Result<SubscriptionView, StoreError> {
        let licence_id = licence_id.to_string();
        let customer = customer.to_string();
        let zone = self.zone.clone();
        let daily_price_basis = self.daily_price_basis;
        self.write(move |conn| {
            let licence_id = licence_id.as_str();
            let customer = customer.as_str();
            let l = load_licence(conn, licence_id)?;
            let Some(Loaded {
                mut sub,
                generation,
            }) = load(conn, &l, customer)?
            else {
                return Err(StoreError::NotFound {
                    kind: "subscription",
                    id: format!("{licence_id}/{customer}"),
                });
            };
            if !matches!(sub.status, SubscriptionStatus::Active) {
                return Err(refused(RuleRefusal::SubscriptionClosed(format!(
                    "{licence_id}/{customer}"
                ))));
            }
            if now_ms >= sub.end() {
                sub.freeze(sub.end());
            }
            let q = sub
                .quote_unsubscribe(now_ms, daily_price_basis)
                .map_err(refused)?;
            let refund = q.refund_micros;
            let (transfers, line) = settle::term_refund(&TermRefund {
                licence_id,
                customer,
                provider: &l.licensor,
                generation,
                refund_micros: refund,
                operator_share_bps: l.price.operator_share_bps,
                start: sub.start(),
                now: now_ms,
                refundable_paid_micros: q.refundable_paid_micros,
                months_used: q.months_used,
                monthly_price_micros: l.monthly_price_micros,
            })
            .map_err(refused)?;
            for t in &transfers {
                ledger::post(conn, t, now_ms)?;
            }
            add_line(conn, &line, now_ms, &zone)?;
            conn.prepare_cached(
                "UPDATE licence_subscriptions SET status = 'closed', closed_at_ms = ? WHERE licence_id = ? AND customer = ?",
            )?
            .execute(params![now_ms, licence_id, customer])?;
            let view = SubscriptionView {
                licence_id: licence_id.to_string(),
                customer: customer.to_string(),
                status: "closed".into(),
                start_ms: sub.start(),
                end_ms: sub.end(),
                months_total: q.months_total,
                charged_micros: 0,
                refund_micros: refund,
            };
            audit::append(
                conn,
                now_ms,
                "licence_unsubscribe",
                &format!("{licence_id}/{customer}"),
                &serde_json::json!({"view": view, "months_used": q.months_used,
                    "refundable_paid_micros": q.refundable_paid_micros}),
            )?;
            Ok(view)
        })
        .await
    }
}
