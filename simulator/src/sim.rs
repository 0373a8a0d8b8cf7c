//! The simulation: state, one handler per event kind, and the ledger transfers each movement
//! of money makes (queued for the driver in `lib.rs`, which carries them out on the store).

use std::collections::{BTreeMap, BTreeSet};

use tessera_accounting::bill::{Amounts, BillBook, BillLine, BillLineKind, Placement};
use tessera_accounting::civil::{MS_PER_HOUR, Millis, ceil_hour, floor_hour, format_millis};
use tessera_accounting::discount::{
    Discount, DiscountBook, DiscountOutcome, DiscountRange, DiscountRequest, DiscountSource,
    StackOrder, apply_factors,
};
use tessera_accounting::freeze::{
    FreezeInput, LimitSettings, ManualFreeze, check_purchase, freeze_state,
};
use tessera_accounting::ledger::{AccountKind, TransferSpec, derive_id};
use tessera_accounting::money::{Micros, format_amount};
use tessera_accounting::payment::{
    Payment, PaymentRequest, Wallet, apply_payment, apply_refund, plan_payment, recharge_cash,
    split_refund,
};
use tessera_accounting::rating::{BillingMode, PricePlan, Usage, rate_plan};
use tessera_accounting::subscription::{DailyPriceBasis, MakeUp, Subscription};

use crate::format::{Ev, EventKind, time};
use crate::report::amounts_text;
use crate::{MAX_SETTLE_HOURS, ScenarioError, invalid};

/// Ledger work a handler leaves for the driver.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// Transfers posted as one batch at the given time.
    Transfers(Vec<TransferSpec>, Millis),
    /// A customer's credit line set to the given amount.
    CreditLine(String, Micros),
    /// A payout the ledger may refuse (receivable too small): logged either way.
    Payout(TransferSpec, Millis),
}

/// A plain transfer between two accounts.
pub(crate) fn plain(
    id: String,
    debit: &AccountKind,
    credit: &AccountKind,
    amount_micros: Micros,
    memo: &str,
) -> TransferSpec {
    TransferSpec {
        id,
        debit: debit.name(),
        credit: credit.name(),
        amount_micros,
        job_id: None,
        memo: memo.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Simulation state
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct Product {
    pub(crate) mode: BillingMode,
    pub(crate) plan: PricePlan,
    pub(crate) monthly_price: Option<Micros>,
    pub(crate) provider: Option<String>,
    pub(crate) bps: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct CustomerState {
    pub(crate) wallet: Wallet,
    pub(crate) manual: ManualFreeze,
    pub(crate) auto_frozen: BTreeSet<String>,
    pub(crate) first_usage: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct SubState {
    pub(crate) sub: Subscription,
    pub(crate) credit_paid: Micros,
    pub(crate) last_discount: DiscountOutcome,
}

#[derive(Debug, Clone)]
pub(crate) struct Metered {
    pub(crate) customer: String,
    pub(crate) product: String,
    pub(crate) settled_until: Millis,
    pub(crate) closed: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RechargeVoucher {
    pub(crate) customer: String,
    pub(crate) amount: Micros,
    pub(crate) valid_from: Millis,
    pub(crate) valid_until: Option<Millis>,
    pub(crate) redeemed: bool,
}

pub(crate) struct Sim {
    pub(crate) book: DiscountBook,
    pub(crate) limits: LimitSettings,
    pub(crate) basis: DailyPriceBasis,
    pub(crate) makeup_discount: bool,
    pub(crate) customers: BTreeMap<String, CustomerState>,
    pub(crate) products: BTreeMap<String, Product>,
    pub(crate) subs: BTreeMap<String, SubState>,
    pub(crate) metered: BTreeMap<String, Metered>,
    pub(crate) recharge_vouchers: BTreeMap<String, RechargeVoucher>,
    /// Ledger work queued by the handlers, carried out on the store by the driver after each
    /// event (in order, with the event time as the clock).
    pub(crate) outbox: Vec<Outgoing>,
    pub(crate) bills: BillBook,
    pub(crate) log: Vec<String>,
    pub(crate) seq: BTreeMap<&'static str, u64>,
}

impl Sim {
    pub(crate) fn customer(&mut self, id: &str) -> Result<&mut CustomerState, ScenarioError> {
        self.customers
            .get_mut(id)
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "customer",
                id: id.to_string(),
            })
    }

    pub(crate) fn product(&self, id: &str) -> Result<Product, ScenarioError> {
        self.products
            .get(id)
            .cloned()
            .ok_or_else(|| ScenarioError::Unknown {
                kind: "product",
                id: id.to_string(),
            })
    }

    /// Queues a batch of transfers (all or nothing) at `now`.
    pub(crate) fn post(
        &mut self,
        chain: Vec<TransferSpec>,
        now: Millis,
    ) -> Result<(), ScenarioError> {
        if !chain.is_empty() {
            self.outbox.push(Outgoing::Transfers(chain, now));
        }
        Ok(())
    }

    pub(crate) fn next_id(&mut self, tag: &'static str) -> String {
        let n = self.seq.entry(tag).or_insert(0);
        *n += 1;
        format!("{tag}{n}")
    }

    /// Ledger chain for a payment (or negative refund amounts) of a bill line.
    pub(crate) fn payment_chain(
        &self,
        line: &BillLine,
    ) -> Result<Vec<TransferSpec>, ScenarioError> {
        let c = &line.customer;
        let a = &line.amounts;
        let rev = AccountKind::OperatorRevenue;
        let mut out = Vec::new();
        let id = |part: &str| derive_id(&["bill-line", &line.id, part]);
        let mut push = |part: &str,
                        from: AccountKind,
                        to: AccountKind,
                        amount: Micros,
                        code: &str|
         -> Result<(), ScenarioError> {
            if amount > 0 {
                out.push(plain(id(part), &from, &to, amount, code));
            } else if amount < 0 {
                let back = amount.checked_neg().ok_or_else(|| {
                    ScenarioError::Inconsistent(format!("amount {amount} overflows"))
                })?;
                out.push(plain(id(part), &to, &from, back, code));
            }
            Ok(())
        };
        if line.kind == BillLineKind::Refund {
            push(
                "cash",
                AccountKind::OperatorRefunds,
                AccountKind::CustomerCash(c.clone()),
                -a.cash,
                "refund",
            )?;
            push(
                "credit",
                AccountKind::OperatorRefunds,
                AccountKind::CustomerCredit(c.clone()),
                -a.credit,
                "refund",
            )?;
        } else {
            push(
                "coupon",
                AccountKind::OperatorMarketing,
                rev.clone(),
                a.coupon,
                "coupon",
            )?;
            push(
                "deduction",
                AccountKind::CustomerDeductionVoucher(c.clone()),
                rev.clone(),
                a.deduction_voucher,
                "charge",
            )?;
            push(
                "recharge",
                AccountKind::CustomerRechargeVoucher(c.clone()),
                rev.clone(),
                a.recharge_voucher,
                "charge",
            )?;
            push(
                "cash",
                AccountKind::CustomerCash(c.clone()),
                rev.clone(),
                a.cash,
                "charge",
            )?;
            push(
                "credit",
                AccountKind::CustomerCredit(c.clone()),
                rev.clone(),
                a.credit,
                "charge",
            )?;
            push(
                "arrears",
                AccountKind::CustomerArrears(c.clone()),
                rev.clone(),
                a.arrears,
                "charge",
            )?;
        }
        if let Some(p) = &line.provider {
            let prov = line.split()?.provider_micros;
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
                "provider share",
            )?;
        }
        Ok(out)
    }

    pub(crate) fn post_line(
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
    pub(crate) fn make_line(
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

    pub(crate) fn discount_for(
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

    /// Every bill line satisfies the §3.8 identities.
    pub(crate) fn check_bills(&self) -> Result<(), ScenarioError> {
        for b in self.bills.bills() {
            for l in &b.lines {
                if !l.line.amounts.identities_hold() {
                    return Err(ScenarioError::Inconsistent(format!("line {}", l.line.id)));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn cash_of(&self, c: &str) -> Micros {
        self.customers
            .get(c)
            .map_or(0, |s| s.wallet.net_cash_micros())
    }

    /// Freeze decision for starting work on a metered product; updates the auto state.
    pub(crate) fn freeze_check(
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

    pub(crate) fn purchase_check(&mut self, customer: &str, product: &str) -> Result<(), String> {
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
    pub(crate) fn plan(
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

    pub(crate) fn reject(&mut self, why: impl std::fmt::Display) {
        self.log.push(format!("  rejected: {why}"));
    }

    pub(crate) fn subscribe(&mut self, e: &Ev) -> Result<(), ScenarioError> {
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
        sub.record_paid(pay.refundable_micros())
            .map_err(|err| ScenarioError::Inconsistent(err.to_string()))?;
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

    /// Logs an overdue make-up (§1.4.5.1.2: days × monthly price / basis days) and returns
    /// its discount; shared by renewal and unsubscription.
    fn makeup_discount_logged(
        &mut self,
        st: &SubState,
        m: &MakeUp,
    ) -> Result<DiscountOutcome, ScenarioError> {
        let monthly = st
            .sub
            .monthly_total_micros()
            .map_err(|err| invalid("price", err))?;
        self.log.push(format!(
            "  make-up {} → {}: {} day(s) × {}/{} = {}",
            format_millis(m.start),
            format_millis(m.end),
            m.days,
            format_amount(monthly),
            m.basis_days,
            format_amount(m.amount_micros)
        ));
        self.makeup_discount(st, m.amount_micros)
    }

    pub(crate) fn makeup_discount(
        &self,
        st: &SubState,
        amount: Micros,
    ) -> Result<DiscountOutcome, ScenarioError> {
        if !self.makeup_discount {
            return Ok(DiscountOutcome::none(amount));
        }
        let find = |a: &Option<tessera_accounting::discount::AppliedDiscount>| {
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

    pub(crate) fn renew(&mut self, e: &Ev) -> Result<(), ScenarioError> {
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
            let d = self.makeup_discount_logged(&st, &m)?;
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
        s.sub
            .record_paid(refundable)
            .map_err(|err| ScenarioError::Inconsistent(err.to_string()))?;
        s.credit_paid += credit_paid;
        s.last_discount = d;
        Ok(())
    }

    pub(crate) fn unsubscribe(&mut self, e: &Ev) -> Result<(), ScenarioError> {
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
            let d = self.makeup_discount_logged(&st, &m)?;
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
        apply_refund(&mut wallet, split)?;
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
    pub(crate) fn charge_metered(
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

    pub(crate) fn settle_resource(
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

    pub(crate) fn event(&mut self, e: &Ev) -> Result<(), ScenarioError> {
        match e.kind {
            EventKind::Subscribe => self.subscribe(e)?,
            EventKind::Renew => self.renew(e)?,
            EventKind::Unsubscribe => self.unsubscribe(e)?,
            EventKind::FreezeResource => {
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
            EventKind::OpenMetered => {
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
            EventKind::Settle => {
                let ids: Vec<String> = self.metered.keys().cloned().collect();
                for id in ids {
                    self.settle_resource(&id, floor_hour(e.at), e.at)?;
                }
            }
            EventKind::CloseMetered => {
                let id = e.id()?.to_string();
                let end = ceil_hour(e.at);
                self.settle_resource(&id, end, e.at)?;
                if let Some(m) = self.metered.get_mut(&id) {
                    m.closed = true;
                }
                self.log
                    .push(format!("  {id}: billing ends {}", format_millis(end)));
            }
            EventKind::Usage => {
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
            EventKind::CheckJob => {
                let customer = e.customer()?.to_string();
                let product = e.product()?.to_string();
                match self.freeze_check(&customer, &product)? {
                    Ok(()) => self.log.push("  job may start".to_string()),
                    Err(why) => self.log.push(format!("  job refused: {why}")),
                }
            }
            EventKind::Recharge => {
                let customer = e.customer()?.to_string();
                let amount = e.amount()?;
                if amount <= 0 {
                    return Err(invalid("amount", "recharge must be positive"));
                }
                let before = self.customer(&customer)?.wallet.arrears_micros;
                recharge_cash(&mut self.customer(&customer)?.wallet, amount)?;
                let settled = before - self.customer(&customer)?.wallet.arrears_micros;
                let tag = self.next_id("R");
                let mut chain = vec![plain(
                    derive_id(&["recharge", &tag]),
                    &AccountKind::External,
                    &AccountKind::CustomerCash(customer.clone()),
                    amount,
                    "recharge",
                )];
                if settled > 0 {
                    chain.push(plain(
                        derive_id(&["arrears", &tag]),
                        &AccountKind::CustomerCash(customer.clone()),
                        &AccountKind::CustomerArrears(customer.clone()),
                        settled,
                        "arrears",
                    ));
                }
                self.post(chain, e.at)?;
                self.log.push(format!(
                    "  cash +{} (arrears settled {})",
                    format_amount(amount),
                    format_amount(settled)
                ));
            }
            EventKind::RedeemRechargeVoucher => {
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
                        derive_id(&["recharge-voucher", &id]),
                        &AccountKind::OperatorMarketing,
                        &AccountKind::CustomerRechargeVoucher(v.customer.clone()),
                        v.amount,
                        "recharge voucher",
                    )],
                    e.at,
                )?;
                if let Some(v) = self.recharge_vouchers.get_mut(&id) {
                    v.redeemed = true;
                }
                self.log
                    .push(format!("  recharge voucher +{}", format_amount(v.amount)));
            }
            EventKind::ManualFreeze | EventKind::ManualThaw | EventKind::ClearManual => {
                let customer = e.customer()?.to_string();
                let m = match e.kind {
                    EventKind::ManualFreeze => {
                        ManualFreeze::Frozen(e.reason.clone().unwrap_or_else(|| "operator".into()))
                    }
                    EventKind::ManualThaw => ManualFreeze::Thawed,
                    _ => ManualFreeze::None,
                };
                self.customer(&customer)?.manual = m;
            }
            EventKind::WhitelistAdd => {
                let customer = e.customer()?.to_string();
                self.customer(&customer)?;
                self.limits.platform_whitelist.insert(customer);
            }
            EventKind::WhitelistRemove => {
                let customer = e.customer()?.to_string();
                self.limits.platform_whitelist.remove(&customer);
            }
            EventKind::TerminateContract => {
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
                self.outbox
                    .push(Outgoing::CreditLine(customer.clone(), limit));
                self.log.push(format!(
                    "  contract {id} terminated: unused credit {} withdrawn, credit limit now {}",
                    format_amount(withdrawn),
                    format_amount(limit)
                ));
            }
            EventKind::Payout => {
                let provider = e
                    .provider
                    .clone()
                    .ok_or_else(|| invalid("provider", "missing"))?;
                let amount = e.amount()?;
                let tag = self.next_id("P");
                if amount < 0 {
                    return Err(ScenarioError::Inconsistent(format!(
                        "negative transfer {amount}"
                    )));
                }
                // Whether the receivable covers it is the ledger's decision: the driver logs
                // the payout or its refusal.
                self.outbox.push(Outgoing::Payout(
                    plain(
                        derive_id(&["payout", &tag]),
                        &AccountKind::ProviderReceivable(provider.clone()),
                        &AccountKind::ProviderPaidOut(provider.clone()),
                        amount,
                        "payout",
                    ),
                    e.at,
                ));
            }
            EventKind::CloseBills => {
                for (c, y, m) in self.bills.close_due(e.at)? {
                    self.log.push(format!("  bill {c} {y}-{m:02} closed"));
                }
            }
        }
        Ok(())
    }
}
