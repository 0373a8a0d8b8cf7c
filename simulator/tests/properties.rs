//! Property tests over random operation sequences, with retries and injected failures, on the
//! production ledger (`tessera-store` on a real SQLite file): every transfer batch keeps
//! double entry, no balance passes its limit, a retry changes nothing, failed batches leave
//! no trace, and the §3.8 identities hold for every job charge, payment, split and simulated
//! bill.

use proptest::prelude::*;

use tessera_accounting::bill::{Amounts, BillLine, BillLineKind, split_by_hours, split_line};
use tessera_accounting::discount::{
    Discount, DiscountBook, DiscountRange, DiscountRequest, DiscountSource, DiscountStrategy,
    StackOrder,
};
use tessera_accounting::ledger::{
    AccountKind, BalanceLimit, LedgerOp, TransferOutcome, TransferSpec, derive_id,
};
use tessera_accounting::payment::{
    Coupon, DeductionVoucher, PaymentError, PaymentRequest, Wallet, apply_payment, plan_payment,
};
use tessera_accounting::rating::BillingMode;
use tessera_accounting::rating::JobPrice;
use tessera_accounting::settle::{self, FinishedJob};
use tessera_accounting::subscription::{DailyPriceBasis, Subscription};
use tessera_accounting::sum_is_balanced;
use tessera_simulator::simulate;
use tessera_store::{Store, StoreError};

// ---------------------------------------------------------------------------------------
// The production ledger (tessera-store on SQLite)
// ---------------------------------------------------------------------------------------

/// Accounts the random operations move money between: limited (never below 0), a credit line
/// (down to −500), and unlimited ones.
const ACCOUNTS: [&str; 6] = [
    "external",
    "customer:a:cash",
    "customer:a:credit",
    "customer:a:holds",
    "provider:p:receivable",
    "operator:revenue",
];
const CREDIT_LINE: i64 = 500;

#[derive(Debug, Clone)]
enum Op {
    /// A batch of plain transfers or holds `(debit, credit, amount, hold)`.
    Batch(Vec<(usize, usize, i64, bool)>),
    /// Post (`Some(amount)`, possibly partially) or void an earlier hold.
    Resolve(usize, Option<i64>),
    /// Resubmit an earlier batch exactly.
    Retry(usize),
    /// Resubmit an earlier batch's first transfer with another amount.
    RetryChanged(usize),
    /// A batch whose last transfer is invalid (an unknown account): nothing may be written.
    Poisoned(Vec<(usize, usize, i64)>),
    /// A job admitted and charged by the operator's settlement functions (holds in payment
    /// order, final charge, bill line).
    Job(i64, u64),
}

fn leg() -> impl Strategy<Value = (usize, usize, i64, bool)> {
    (
        0..ACCOUNTS.len(),
        0..ACCOUNTS.len(),
        1i64..400,
        any::<bool>(),
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(leg(), 1..4).prop_map(Op::Batch),
        2 => (any::<prop::sample::Index>(), prop_oneof![Just(None), (1i64..300).prop_map(Some)])
            .prop_map(|(i, a)| Op::Resolve(i.index(1 << 16), a)),
        2 => any::<prop::sample::Index>().prop_map(|i| Op::Retry(i.index(1 << 16))),
        1 => any::<prop::sample::Index>().prop_map(|i| Op::RetryChanged(i.index(1 << 16))),
        1 => prop::collection::vec((0..ACCOUNTS.len(), 0..ACCOUNTS.len(), 1i64..400), 1..3)
            .prop_map(Op::Poisoned),
        2 => (0i64..2_000, 0u64..3_000).prop_map(|(p, r)| Op::Job(p, r)),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

type Snapshot = (Vec<(String, i64, i64)>, usize);

async fn snapshot(store: &Store) -> Snapshot {
    let b = store.balances().await.expect("balances");
    let n = store.transfers().await.expect("transfers").len();
    (
        b.into_iter()
            .map(|b| (b.account, b.balance_micros, b.held_micros))
            .collect(),
        n,
    )
}

/// Double entry on the stored data, balances summing to zero, no spendable balance below its
/// limit, and the §3.8 identities on every stored bill line.
async fn check_store(store: &Store) {
    assert!(
        store.ledger_balanced().await.expect("check"),
        "double entry"
    );
    let balances = store.balances().await.expect("balances");
    assert!(sum_is_balanced(balances.iter().map(|b| b.balance_micros)));
    for b in &balances {
        let kind: AccountKind = b.account.parse().expect("known account");
        let limit = match &kind {
            AccountKind::CustomerCredit(_) => BalanceLimit::AtLeast(-CREDIT_LINE),
            k => k.default_limit(),
        };
        let spendable = store.spendable(&b.account).await.expect("spendable");
        assert!(
            limit.allows(spendable),
            "{} at {spendable} below {limit:?}",
            b.account
        );
    }
    for bill in store.bills(None, None).await.expect("bills") {
        for l in store.bill_lines(&bill.bill_id).await.expect("lines") {
            assert!(l.line.validate().is_ok(), "{l:?}");
        }
    }
}

fn spec(id: String, debit: usize, credit: usize, amount: i64) -> TransferSpec {
    TransferSpec {
        id,
        debit: ACCOUNTS[debit].to_string(),
        credit: ACCOUNTS[credit].to_string(),
        amount_micros: amount,
        job_id: Some("j".into()),
        memo: String::new(),
    }
}

async fn run_job(store: &Store, n: usize, per_job: i64, rows: u64) {
    let job = format!("job{n}");
    let price = JobPrice {
        per_job_micros: per_job,
        per_1k_rows_micros: 100,
        operator_share_bps: 2_500,
    };
    let funds = store.customer_funds("a").await.expect("funds");
    let max = settle::estimate_max_cost(&price, Some(rows)).expect("estimate");
    let Ok(holds) = settle::admission_holds(&job, "a", "psi", max, &funds) else {
        return; // refused: nothing written
    };
    let ops: Vec<LedgerOp> = holds.into_iter().map(LedgerOp::Hold).collect();
    store
        .apply_ledger(&ops, 0)
        .await
        .expect("holds fit the funds");
    let open = store.job_holds(&job).await.expect("holds");
    // The job may use fewer rows than declared.
    let s = settle::job_settlement(&FinishedJob {
        job_id: &job,
        part: None,
        customer: "a",
        provider: "p",
        scene: "psi",
        price: &price,
        rows: rows / 2,
        holds: &open,
        admitted_at: 0,
        now: 1,
    })
    .expect("settle");
    assert!(
        s.line.amounts.identities_hold()
            && s.line.split.covers(s.line.amounts.paid().expect("paid"))
    );
    store.apply_ledger(&s.ops, 1).await.expect("charge");
    store.add_bill_line(&s.line, 1).await.expect("line");
    // Carrying it out again changes nothing.
    let again = store.apply_ledger(&s.ops, 1).await.expect("again");
    assert!(again.iter().all(|o| *o == TransferOutcome::Exists));
    assert!(store.job_holds(&job).await.expect("holds").is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn sql_ledger_random_sequences(ops in prop::collection::vec(op(), 1..30)) {
        runtime().block_on(async {
            let store = Store::open_temporary().await.expect("store");
            store
                .set_account_limit("customer:a:credit", Some(-CREDIT_LINE))
                .await
                .expect("credit line");
            let mut batches: Vec<Vec<LedgerOp>> = Vec::new();
            let mut holds: Vec<String> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                let before = snapshot(&store).await;
                match op {
                    Op::Batch(legs) => {
                        let batch: Vec<LedgerOp> = legs
                            .iter()
                            .enumerate()
                            .map(|(i, (d, c, a, hold))| {
                                let t = spec(derive_id(&["t", &n.to_string(), &i.to_string()]), *d, *c, *a);
                                if *hold { LedgerOp::Hold(t) } else { LedgerOp::Post(t) }
                            })
                            .collect();
                        match store.apply_ledger(&batch, n as i64).await {
                            Ok(out) => {
                                assert!(out.iter().all(|o| *o == TransferOutcome::Created));
                                for op in &batch {
                                    if let LedgerOp::Hold(t) = op {
                                        holds.push(t.id.clone());
                                    }
                                }
                                batches.push(batch);
                            }
                            // Refused as a whole (a limit, the same account twice): no trace.
                            Err(_) => assert_eq!(snapshot(&store).await, before),
                        }
                    }
                    Op::Resolve(i, amount) => {
                        if holds.is_empty() {
                            continue;
                        }
                        let hold = holds[i % holds.len()].clone();
                        let id = derive_id(&["resolve", &n.to_string()]);
                        let op = match amount {
                            Some(a) => LedgerOp::PostPending { id, pending_id: hold, amount_micros: a },
                            None => LedgerOp::VoidPending { id, pending_id: hold },
                        };
                        match store.apply_ledger(std::slice::from_ref(&op), n as i64).await {
                            Ok(_) => batches.push(vec![op]),
                            // Already resolved, or more than the hold: no trace.
                            Err(_) => assert_eq!(snapshot(&store).await, before),
                        }
                    }
                    Op::Retry(i) => {
                        if batches.is_empty() {
                            continue;
                        }
                        let batch = &batches[i % batches.len()];
                        let out = store.apply_ledger(batch, n as i64).await.expect("retry");
                        assert!(out.iter().all(|o| *o == TransferOutcome::Exists));
                        assert_eq!(snapshot(&store).await, before, "a retry changes nothing");
                    }
                    Op::RetryChanged(i) => {
                        let Some(LedgerOp::Post(t) | LedgerOp::Hold(t)) =
                            batches.get(i % batches.len().max(1)).and_then(|b| b.first()).cloned()
                        else {
                            continue;
                        };
                        let changed = LedgerOp::Post(TransferSpec { amount_micros: t.amount_micros + 1, ..t });
                        assert!(matches!(
                            store.apply_ledger(&[changed], n as i64).await,
                            Err(StoreError::IdempotencyMismatch { .. })
                        ));
                        assert_eq!(snapshot(&store).await, before);
                    }
                    Op::Poisoned(legs) => {
                        let mut batch: Vec<TransferSpec> = legs
                            .iter()
                            .enumerate()
                            .map(|(i, (d, c, a))| spec(derive_id(&["p", &n.to_string(), &i.to_string()]), *d, *c, *a))
                            .collect();
                        batch.push(TransferSpec {
                            credit: "nowhere".into(),
                            ..spec(derive_id(&["p", &n.to_string(), "x"]), 0, 1, 1)
                        });
                        assert!(matches!(
                            store.post_transfers(&batch, n as i64).await,
                            Err(StoreError::Ledger(_))
                        ));
                        assert_eq!(snapshot(&store).await, before, "a failed batch leaves no trace");
                    }
                    Op::Job(per_job, rows) => run_job(&store, n, per_job, rows).await,
                }
                check_store(&store).await;
            }
        });
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
            total.checked_add(a).expect("sum");
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
        s.record_paid(price * Y * i64::from(months)).expect("paid");
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
        s.record_paid(price * Y * i64::from(renew_months)).expect("paid");
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
    #![proptest_config(ProptestConfig::with_cases(16))]

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
        let rt = runtime();
        let a = rt.block_on(simulate(&text)).expect("simulate");
        let b = rt.block_on(simulate(&text)).expect("simulate again");
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
