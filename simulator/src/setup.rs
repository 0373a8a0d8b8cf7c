//! From a parsed scenario file to the initial simulation state and its events.

use std::collections::{BTreeMap, BTreeSet};

use tessera_accounting::bill::BillBook;
use tessera_accounting::civil::{MS_PER_HOUR, Millis};
use tessera_accounting::discount::{Contract, DiscountBook, DiscountSource};
use tessera_accounting::freeze::{CustomerLimit, LimitSettings, ManualFreeze, ProductLimit};
use tessera_accounting::ledger::{AccountKind, derive_id};
use tessera_accounting::money::Micros;
use tessera_accounting::payment::{Coupon, DeductionVoucher, Wallet};
use tessera_accounting::rating::{BillingMode, PriceComponent, PricePlan};
use tessera_accounting::subscription::DailyPriceBasis;

use crate::format::*;
use crate::sim::{CustomerState, Outgoing, Product, RechargeVoucher, Sim, plain};
use crate::{MAX_EVENTS, ScenarioError, invalid};

pub(crate) fn build(file: ScenarioFile) -> Result<(Sim, Vec<Ev>, String), ScenarioError> {
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
    // Unset: the manual's rule (the previous month period's actual days, §1.4.5.1.2 note).
    let basis = match s.daily_price_basis.as_deref() {
        None => DailyPriceBasis::default(),
        Some(name) => name
            .parse::<DailyPriceBasis>()
            .map_err(|_| invalid("settings.daily_price_basis", name))?,
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
        outbox: Vec::new(),
        bills: BillBook::new(window * MS_PER_HOUR),
        log: Vec::new(),
        seq: BTreeMap::new(),
    };
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
        if c.id.is_empty() || c.id.contains(':') {
            return Err(invalid(field, "customer ids must be non-empty without ':'"));
        }
        let mut chain = Vec::new();
        if cash > 0 {
            chain.push(plain(
                derive_id(&["opening-cash", &c.id]),
                &AccountKind::External,
                &AccountKind::CustomerCash(c.id.clone()),
                cash,
                "recharge",
            ));
        }
        if voucher > 0 {
            chain.push(plain(
                derive_id(&["opening-voucher", &c.id]),
                &AccountKind::OperatorMarketing,
                &AccountKind::CustomerRechargeVoucher(c.id.clone()),
                voucher,
                "recharge voucher",
            ));
        }
        sim.post(chain, 0)?;
        sim.outbox.push(Outgoing::CreditLine(c.id.clone(), credit));
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
                derive_id(&["deduction-voucher", &v.id]),
                &AccountKind::OperatorMarketing,
                &AccountKind::CustomerDeductionVoucher(v.customer.clone()),
                amount,
                "deduction voucher",
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
            kind: e.kind.parse().map_err(|other: String| {
                invalid(format!("event {index}"), format!("unknown kind {other}"))
            })?,
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
