//! Property tests over random operation sequences, with retries and injected failures:
//! every transfer batch keeps double entry, no balance passes its limit, a retry changes
//! nothing, failed chains leave no trace, and the bill identities hold for every payment,
//! split and simulated bill.

use proptest::prelude::*;

use tessera_accounting::bill::{Amounts, BillLine, BillLineKind, split_by_hours, split_line};
use tessera_accounting::discount::{
    Discount, DiscountBook, DiscountRange, DiscountRequest, DiscountSource, DiscountStrategy,
    StackOrder,
};
use tessera_accounting::ledger_engine::{
    Account, AccountFlags, AccountSpec, Ledger, Transfer, TransferError, TransferFlags,
    TransferOutcome,
};
use tessera_accounting::payment::{
    Coupon, DeductionVoucher, PaymentError, PaymentRequest, Wallet, apply_payment, plan_payment,
};
use tessera_accounting::rating::BillingMode;
use tessera_accounting::scenario::simulate;
use tessera_accounting::subscription::{DailyPriceBasis, Subscription};
use tessera_accounting::sum_is_balanced;

// ---------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------

const ACCOUNTS: u128 = 6;

fn ledger() -> Ledger {
    let mut l = Ledger::new();
    let flags = |d: bool, c: bool| AccountFlags {
        debits_must_not_exceed_credits: d,
        credits_must_not_exceed_debits: c,
    };
    let specs = [
        (flags(false, false), 0),
        (flags(true, false), 0),
        (flags(true, false), 500),
        (flags(false, true), 0),
        (flags(false, true), 300),
        (flags(true, false), 0),
    ];
    for (i, (f, limit)) in specs.into_iter().enumerate() {
        let id = i as u128 + 1;
        l.create_account(AccountSpec {
            id,
            name: format!("acct{id}"),
            ledger: 1,
            code: 1,
            flags: f,
            limit,
        })
        .expect("account");
    }
    l
}

#[derive(Debug, Clone)]
enum Op {
    /// A chain of plain or pending transfers (one event = no chain).
    Chain(Vec<(u128, u128, u64, bool, u64)>),
    /// Post (possibly partially) or void an earlier transfer.
    Resolve(usize, u64, bool),
    /// Resubmit an earlier batch exactly.
    Retry(usize),
    /// Resubmit an earlier batch's first transfer with another amount.
    RetryChanged(usize),
    /// A chain whose last transfer is invalid (unknown account).
    Poisoned(Vec<(u128, u128, u64)>),
    /// Let time pass (pending transfers may expire).
    Tick(i64),
}

fn account() -> impl Strategy<Value = u128> {
    1..=ACCOUNTS
}

fn leg() -> impl Strategy<Value = (u128, u128, u64, bool, u64)> {
    (
        account(),
        account(),
        1u64..400,
        any::<bool>(),
        prop_oneof![Just(0u64), 1u64..50],
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(leg(), 1..4).prop_map(Op::Chain),
        2 => (any::<prop::sample::Index>(), 0u64..300, any::<bool>())
            .prop_map(|(i, a, p)| Op::Resolve(i.index(1 << 16), a, p)),
        2 => any::<prop::sample::Index>().prop_map(|i| Op::Retry(i.index(1 << 16))),
        1 => any::<prop::sample::Index>().prop_map(|i| Op::RetryChanged(i.index(1 << 16))),
        1 => prop::collection::vec((account(), account(), 1u64..400), 1..3).prop_map(Op::Poisoned),
        1 => (1i64..40).prop_map(Op::Tick),
    ]
}

fn snapshot(l: &Ledger) -> Vec<Account> {
    l.accounts().cloned().collect()
}

fn check_ledger(l: &Ledger) {
    l.check_invariants().expect("invariants");
    let balances: Vec<i64> = l
        .accounts()
        .map(|a| i64::try_from(a.balance()).expect("fits"))
        .collect();
    assert!(sum_is_balanced(balances), "balances sum to zero");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn ledger_random_sequences(ops in prop::collection::vec(op(), 1..60)) {
        let mut l = ledger();
        let mut now = 0i64;
        let mut next_id = 1u128;
        let mut batches: Vec<(Vec<Transfer>, bool)> = Vec::new();
        let mut pendings: Vec<(u128, u64)> = Vec::new();
        for op in ops {
            let before = snapshot(&l);
            let count_before = l.transfer_count();
            match op {
                Op::Chain(legs) => {
                    let n = legs.len();
                    let batch: Vec<Transfer> = legs.iter().enumerate().map(|(k, &(d, c, amount, pending, timeout))| {
                        let id = next_id;
                        next_id += 1;
                        Transfer {
                            id,
                            debit_account_id: d,
                            credit_account_id: c,
                            amount,
                            ledger: 1,
                            code: 1,
                            timeout_ms: if pending { timeout } else { 0 },
                            flags: TransferFlags { linked: k + 1 < n, pending, ..TransferFlags::default() },
                            ..Transfer::default()
                        }
                    }).collect();
                    let results = l.create_transfers(&batch, now);
                    let ok = results.iter().all(|r| r.is_ok());
                    let failed = results.iter().all(|r| r.is_err());
                    prop_assert!(ok || failed, "a chain succeeds or fails as a whole: {results:?}");
                    if failed {
                        prop_assert_eq!(snapshot(&l), before.clone());
                        prop_assert_eq!(l.transfer_count(), count_before);
                    } else {
                        for t in &batch {
                            if t.flags.pending {
                                pendings.push((t.id, t.amount));
                            }
                        }
                    }
                    batches.push((batch, ok));
                }
                Op::Resolve(i, amount, post) => {
                    if pendings.is_empty() { continue; }
                    let (pid, pamount) = pendings[i % pendings.len()];
                    let t = Transfer {
                        id: next_id,
                        pending_id: pid,
                        amount: if post { amount } else { 0 },
                        flags: TransferFlags {
                            post_pending_transfer: post,
                            void_pending_transfer: !post,
                            ..TransferFlags::default()
                        },
                        ..Transfer::default()
                    };
                    next_id += 1;
                    let r = l.create_transfers(std::slice::from_ref(&t), now);
                    if post && amount > pamount {
                        prop_assert_eq!(&r[0], &Err(TransferError::ExceedsPendingTransferAmount));
                    }
                    if r[0].is_err() {
                        prop_assert_eq!(snapshot(&l), before.clone());
                    }
                    batches.push((vec![t], r[0].is_ok()));
                }
                Op::Retry(i) => {
                    if batches.is_empty() { continue; }
                    let (batch, ok) = batches[i % batches.len()].clone();
                    let results = l.create_transfers(&batch, now);
                    if ok {
                        prop_assert!(results.iter().all(|r| *r == Ok(TransferOutcome::Exists)), "{results:?}");
                        prop_assert_eq!(snapshot(&l), before.clone());
                        prop_assert_eq!(l.transfer_count(), count_before);
                    }
                }
                Op::RetryChanged(i) => {
                    if batches.is_empty() { continue; }
                    let (batch, ok) = batches[i % batches.len()].clone();
                    if !ok { continue; }
                    let mut t = batch[0].clone();
                    t.flags.linked = false;
                    t.amount += 1;
                    let r = l.create_transfers(&[t], now);
                    prop_assert_eq!(&r[0], &Err(TransferError::ExistsWithDifferentFields));
                    prop_assert_eq!(snapshot(&l), before.clone());
                }
                Op::Poisoned(legs) => {
                    let mut batch: Vec<Transfer> = legs.iter().map(|&(d, c, amount)| {
                        let id = next_id;
                        next_id += 1;
                        Transfer {
                            id,
                            debit_account_id: d,
                            credit_account_id: c,
                            amount,
                            ledger: 1,
                            code: 1,
                            flags: TransferFlags { linked: true, ..TransferFlags::default() },
                            ..Transfer::default()
                        }
                    }).collect();
                    batch.push(Transfer {
                        id: next_id,
                        debit_account_id: 1,
                        credit_account_id: 99,
                        amount: 1,
                        ledger: 1,
                        code: 1,
                        ..Transfer::default()
                    });
                    next_id += 1;
                    let results = l.create_transfers(&batch, now);
                    prop_assert!(results.iter().all(|r| r.is_err()));
                    let own: Vec<_> = results.iter().filter(|r| **r != Err(TransferError::LinkedEventFailed)).collect();
                    prop_assert_eq!(own.len(), 1, "exactly one event reports its own error: {:?}", results);
                    prop_assert_eq!(snapshot(&l), before.clone());
                    prop_assert_eq!(l.transfer_count(), count_before);
                    batches.push((batch, false));
                }
                Op::Tick(ms) => {
                    now += ms;
                    l.expire_pending(now);
                }
            }
            check_ledger(&l);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Payments, discounts, splits, subscriptions
// ---------------------------------------------------------------------------------------

const Y: i64 = 1_000_000;

fn wallet() -> impl Strategy<Value = Wallet> {
    (
        prop::collection::vec((0i64..300, 1i64..100, any::<bool>()), 0..3),
        prop::collection::vec(
            (
                1i64..200,
                prop_oneof![Just(None), (1i64..100).prop_map(Some)],
                any::<bool>(),
            ),
            0..3,
        ),
        0i64..500,
        0i64..500,
        0i64..500,
    )
        .prop_map(|(coupons, vouchers, rv, cash, credit)| Wallet {
            coupons: coupons
                .into_iter()
                .enumerate()
                .map(|(i, (t, off, used))| Coupon {
                    id: format!("c{i}"),
                    threshold_micros: t * Y,
                    off_micros: off * Y,
                    valid_from: 0,
                    valid_until: None,
                    used,
                })
                .collect(),
            deduction_vouchers: vouchers
                .into_iter()
                .enumerate()
                .map(|(i, (b, until, scoped))| DeductionVoucher {
                    id: format!("v{i}"),
                    balance_micros: b * Y,
                    valid_from: 0,
                    valid_until: until,
                    products: if scoped { vec!["other".into()] } else { vec![] },
                })
                .collect(),
            recharge_voucher_micros: rv * Y,
            cash_micros: cash * Y,
            credit_limit_micros: credit * Y,
            credit_used_micros: 0,
            arrears_micros: 0,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn payments_follow_the_order_and_identities(
        w in wallet(),
        original in 0i64..2_000_000_000,
        pd in 0u32..=100,
        cd in 0u32..=100,
        prepaid in any::<bool>(),
        coupon_allowed in any::<bool>(),
        at in 0i64..150,
    ) {
        let platform = original * i64::from(pd) / 200;
        let customer = (original - platform) * i64::from(cd) / 200;
        let mode = if prepaid { BillingMode::Prepaid } else { BillingMode::Postpaid };
        let req = PaymentRequest {
            product: "p",
            mode,
            coupon_allowed,
            original_micros: original,
            platform_discount_micros: platform,
            customer_discount_micros: customer,
            at,
        };
        match plan_payment(&w, &req) {
            Ok(p) => {
                p.check_identities().expect("identities");
                prop_assert!(p.coupon_micros == 0 || (prepaid && coupon_allowed));
                prop_assert!(p.deduction_voucher_micros == 0 || !prepaid);
                prop_assert!(p.arrears_micros == 0 || !prepaid);
                // Each later source is used only when the earlier ones are exhausted.
                if p.cash_micros > 0 || p.credit_micros > 0 || p.arrears_micros > 0 {
                    prop_assert_eq!(p.recharge_voucher_micros, w.recharge_voucher_micros);
                }
                if p.credit_micros > 0 || p.arrears_micros > 0 {
                    prop_assert_eq!(p.cash_micros, w.cash_micros);
                }
                if p.arrears_micros > 0 {
                    prop_assert_eq!(p.credit_micros, w.credit_available_micros());
                }
                let mut w2 = w.clone();
                apply_payment(&mut w2, &p).expect("apply");
                prop_assert_eq!(w.recharge_voucher_micros - w2.recharge_voucher_micros, p.recharge_voucher_micros);
                prop_assert_eq!(w.cash_micros - w2.cash_micros, p.cash_micros);
                prop_assert_eq!(w2.credit_used_micros, p.credit_micros);
                prop_assert_eq!(
                    w.deduction_voucher_total_micros() - w2.deduction_voucher_total_micros(),
                    p.deduction_voucher_micros
                );
                prop_assert!(w2.cash_micros >= 0 && w2.recharge_voucher_micros >= 0);
                prop_assert!(w2.credit_used_micros <= w2.credit_limit_micros);
            }
            Err(PaymentError::InsufficientFunds { .. }) => prop_assert!(prepaid),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn discounts_never_raise_and_attribute_exactly(
        original in 0i64..10_000_000_000,
        pf in 1u32..=100,
        cf in 1u32..=100,
        strategy in 0u8..5,
    ) {
        let d = |id: &str, source, f: u32| Discount {
            id: id.into(),
            source,
            customer: Some("a".into()),
            product: None,
            range: DiscountRange::Unlimited,
            factor: rust_decimal::Decimal::new(i64::from(f), 2),
            valid_from: 0,
            valid_until: None,
            enabled: true,
        };
        let book = DiscountBook {
            discounts: vec![d("p", DiscountSource::Platform, pf), d("c", DiscountSource::Customer, cf)],
            strategy: match strategy {
                0 => DiscountStrategy::CustomerOnly,
                1 => DiscountStrategy::PlatformOnly,
                2 => DiscountStrategy::Stacked(StackOrder::CustomerFirst),
                3 => DiscountStrategy::Stacked(StackOrder::PlatformFirst),
                _ => DiscountStrategy::NoDiscount,
            },
            ..DiscountBook::default()
        };
        let out = book.apply(&DiscountRequest { customer: "a", product: "x", quantity: 1, amount_micros: original, months: 1, at: 0 }).expect("apply");
        prop_assert!(out.net_micros <= original && out.net_micros >= 0);
        prop_assert!(out.platform_micros() >= 0 && out.customer_micros() >= 0);
        prop_assert_eq!(original - out.platform_micros() - out.customer_micros(), out.net_micros);
    }

    #[test]
    fn hour_splits_sum_exactly(
        amount in -1_000_000_000_000i64..1_000_000_000_000,
        start in 1_600_000_000_000i64..1_700_000_000_000,
        len in 0i64..(400 * 86_400_000),
    ) {
        let pieces = split_by_hours(amount, start, start + len).expect("split");
        prop_assert_eq!(pieces.iter().map(|p| p.amount).sum::<i64>(), amount);
        let line = BillLine {
            id: "l".into(),
            customer: "c".into(),
            product: "p".into(),
            provider: None,
            operator_share_bps: 0,
            kind: BillLineKind::Order,
            mode: BillingMode::Prepaid,
            at: start,
            service_start: start,
            service_end: start + len,
            amounts: Amounts {
                original: amount.abs() + 3,
                customer_discount: 3,
                coupon: amount.abs() / 3,
                cash: amount.abs() - amount.abs() / 3,
                ..Amounts::default()
            },
            note: String::new(),
        };
        let parts = split_line(&line).expect("split line");
        let mut total = Amounts::default();
        for (_, _, a) in &parts {
            prop_assert!(a.identities_hold());
            total.add(a);
        }
        prop_assert_eq!(total, line.amounts);
    }

    #[test]
    fn subscriptions_refund_within_bounds(
        months in 1u32..24,
        renew_months in 1u32..6,
        renew_after_h in 0i64..(24 * 800),
        unsub_after_h in 0i64..(24 * 400),
        frozen_after_h in prop_oneof![Just(None), (0i64..(24 * 800)).prop_map(Some)],
        price in 1i64..100_000,
    ) {
        let start = 1_633_000_000_000i64;
        let h = 3_600_000i64;
        let mut s = Subscription::new("s", "c", "p", price * Y, 1, start, months).expect("sub");
        s.record_paid(price * Y * i64::from(months));
        if let Some(f) = frozen_after_h {
            s.freeze(start + f * h);
        }
        let at = start + renew_after_h * h;
        let q = s.quote_renewal(renew_months, at, DailyPriceBasis::default()).expect("renew");
        prop_assert!(q.new_start >= s.end() && q.new_start >= at);
        if let Some(m) = q.makeup {
            prop_assert!(m.days >= 1 && m.amount_micros >= 0);
            prop_assert!(m.end >= at.min(frozen_after_h.map_or(at, |f| start + f * h)));
        }
        s.apply_renewal(&q).expect("apply");
        s.record_paid(price * Y * i64::from(renew_months));
        let u = s.quote_unsubscribe(at + unsub_after_h * h, DailyPriceBasis::default()).expect("unsub");
        prop_assert!(u.refund_micros >= 0);
        prop_assert!(u.refund_micros <= u.refundable_paid_micros);
        prop_assert!(u.months_used <= u.months_total);
        prop_assert_eq!(
            u.refund_micros,
            (u.refundable_paid_micros - price * Y * i64::from(u.months_used)).max(0)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Whole simulations
// ---------------------------------------------------------------------------------------

fn event_text(i: usize, day: u32, hour: u32, kind: u8, amount: u32) -> String {
    let at = format!("2021-10-{:02} {:02}:00", day, hour);
    match kind {
        0 => format!(
            "[[events]]\nat = \"{at}\"\nkind = \"subscribe\"\nid = \"s{i}\"\ncustomer = \"a\"\nproduct = \"pre\"\nmonths = {}\n",
            amount % 3 + 1
        ),
        1 => format!(
            "[[events]]\nat = \"{at}\"\nkind = \"usage\"\ncustomer = \"a\"\nproduct = \"post\"\nrows = {}\njobs = 1\n",
            amount * 1000
        ),
        2 => format!(
            "[[events]]\nat = \"{at}\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = {}\n",
            amount % 500 + 1
        ),
        3 => format!(
            "[[events]]\nat = \"{at}\"\nkind = \"check_job\"\ncustomer = \"a\"\nproduct = \"post\"\n"
        ),
        _ => format!("[[events]]\nat = \"{at}\"\nkind = \"close_bills\"\n"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn simulations_are_deterministic_and_balanced(
        events in prop::collection::vec((0u8..5, 0u32..2000), 1..25),
        cash in 0u32..2000,
        voucher in 0u32..500,
        credit in 0u32..500,
    ) {
        let mut text = format!(
            "name = \"random\"\n[settings]\ndiscount_strategy = \"stacked\"\nlate_window_hours = 24\n\
             [[customers]]\nid = \"a\"\ncash = {cash}\nrecharge_voucher = {voucher}\ncredit = {credit}\n\
             [[products]]\nid = \"pre\"\nmode = \"prepaid\"\nmonthly_price = \"300\"\nprovider = \"prov\"\noperator_share_bps = 1500\n\
             [[products]]\nid = \"post\"\nmode = \"postpaid\"\nprovider = \"prov\"\noperator_share_bps = 2000\n\
             components = [{{ type = \"per_job\", price = \"1\" }}, {{ type = \"per_unit\", metric = \"rows\", unit_size = 1000, price = \"0.05\" }}]\n\
             [[discounts]]\nid = \"p\"\nsource = \"platform\"\nfactor = \"0.9\"\n\
             [[discounts]]\nid = \"c\"\nsource = \"customer\"\ncustomer = \"a\"\nfactor = \"0.8\"\n\
             [[coupons]]\nid = \"k\"\ncustomer = \"a\"\nthreshold = \"100\"\noff = \"20\"\n\
             [[deduction_vouchers]]\nid = \"dv\"\ncustomer = \"a\"\namount = \"15\"\n\
             [limits]\nplatform = {{ min_purchase = \"10\", min_freeze = \"5\" }}\n"
        );
        for (i, (kind, amount)) in events.iter().enumerate() {
            let day = 1 + (i as u32) / 2;
            let hour = (i as u32 % 2) * 12;
            text.push_str(&event_text(i, day, hour, *kind, *amount));
        }
        let a = simulate(&text).expect("simulate");
        let b = simulate(&text).expect("simulate again");
        prop_assert_eq!(&a, &b);
        for bill in &a.bills {
            for l in &bill.lines {
                prop_assert!(l.line.amounts.identities_hold());
            }
        }
        let total: i128 = a.ledger_balances.iter().map(|(_, v)| *v).sum();
        prop_assert_eq!(total, 0);
        prop_assert!(a.customers[0].cash_micros + a.customers[0].arrears_micros >= 0);
    }
}
