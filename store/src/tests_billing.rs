//! Holds, bills, statements and freezes on a real SQLite file.

use super::*;
use tessera_accounting::freeze::{LimitConfig, ManualFreeze};
use tessera_accounting::{TransferSpec, derive_id};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tessera.db"))
        .await
        .expect("open");
    (dir, store)
}

/// A civil time of the store's (default) zone, UTC+08:00, as a UTC instant.
fn at(text: &str) -> i64 {
    tessera_core::civil::Zone::default()
        .parse_instant(text)
        .expect("time")
}

fn transfer(id: &str, debit: &str, credit: &str, amount: i64) -> TransferSpec {
    TransferSpec {
        id: derive_id(&[id]),
        debit: debit.into(),
        credit: credit.into(),
        amount_micros: amount,
        job_id: Some("job-1".into()),
        memo: id.into(),
    }
}

async fn deposit(store: &Store, account: &str, amount: i64) {
    store
        .post_transfers(
            &[TransferSpec {
                job_id: None,
                ..transfer(
                    &format!("dep-{account}-{amount}"),
                    "external",
                    account,
                    amount,
                )
            }],
            1,
        )
        .await
        .expect("deposit");
}

#[tokio::test]
async fn holds_reserve_post_partially_and_void_exactly_once() {
    let (_dir, store) = open().await;
    deposit(&store, "customer:u:cash", 100).await;
    let hold = transfer("hold", "customer:u:cash", "customer:u:holds", 80);
    store
        .apply_ledger(&[LedgerOp::Hold(hold.clone())], 2)
        .await
        .expect("hold");
    assert_eq!(store.spendable("customer:u:cash").await.expect("s"), 20);
    assert_eq!(store.balance("customer:u:cash").await.expect("b"), 100);
    // A second hold beyond what is spendable is refused and writes nothing.
    let too_much = transfer("hold2", "customer:u:cash", "customer:u:holds", 21);
    assert!(matches!(
        store.apply_ledger(&[LedgerOp::Hold(too_much)], 3).await,
        Err(StoreError::Ledger(LedgerError::InsufficientFunds { .. }))
    ));
    // Nor can a plain transfer spend the held funds.
    let spend = transfer("spend", "customer:u:cash", "operator:revenue", 30);
    assert!(store.post_transfers(&[spend], 3).await.is_err());
    assert!(store.ledger_balanced().await.expect("balanced"));
    assert_eq!(store.job_holds("job-1").await.expect("holds").len(), 1);

    // Posting more than the hold is refused; posting part releases the rest.
    let post = |amount| LedgerOp::PostPending {
        id: derive_id(&["post"]),
        pending_id: hold.id.clone(),
        amount_micros: amount,
    };
    assert!(store.apply_ledger(&[post(81)], 4).await.is_err());
    assert_eq!(
        store.apply_ledger(&[post(60)], 5).await.expect("post"),
        vec![TransferOutcome::Created]
    );
    assert_eq!(
        store.apply_ledger(&[post(60)], 6).await.expect("retry"),
        vec![TransferOutcome::Exists]
    );
    assert!(matches!(
        store.apply_ledger(&[post(59)], 6).await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    let void = LedgerOp::VoidPending {
        id: derive_id(&["void"]),
        pending_id: hold.id.clone(),
    };
    assert!(
        store.apply_ledger(&[void], 7).await.is_err(),
        "a hold resolves once"
    );
    assert_eq!(store.balance("customer:u:cash").await.expect("b"), 40);
    assert_eq!(store.spendable("customer:u:cash").await.expect("s"), 40);
    assert_eq!(store.balance("customer:u:holds").await.expect("b"), 60);
    assert!(store.job_holds("job-1").await.expect("holds").is_empty());
    assert!(store.ledger_balanced().await.expect("balanced"));

    // A voided hold gives everything back.
    let hold3 = transfer("hold3", "customer:u:cash", "customer:u:holds", 40);
    store
        .apply_ledger(&[LedgerOp::Hold(hold3.clone())], 8)
        .await
        .expect("hold");
    assert_eq!(store.spendable("customer:u:cash").await.expect("s"), 0);
    store
        .apply_ledger(
            &[LedgerOp::VoidPending {
                id: derive_id(&["void3"]),
                pending_id: hold3.id,
            }],
            9,
        )
        .await
        .expect("void");
    assert_eq!(store.spendable("customer:u:cash").await.expect("s"), 40);
    let balances = store.balances().await.expect("balances");
    assert!(balances.iter().all(|b| b.held_micros == 0));
    assert!(store.ledger_balanced().await.expect("balanced"));
    // Unknown holds are not found.
    assert!(matches!(
        store
            .apply_ledger(
                &[LedgerOp::VoidPending {
                    id: derive_id(&["v"]),
                    pending_id: "nope".into(),
                }],
                10,
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

fn line(id: &str, customer: &str, event: i64, paid: i64) -> NewBillLine {
    NewBillLine {
        line_id: id.into(),
        customer: customer.into(),
        job_id: None,
        kind: BillLineKind::Usage,
        product: "psi".into(),
        provider: "prov".into(),
        event_time_ms: event,
        service_start_ms: event,
        service_end_ms: event,
        amounts: Amounts {
            original: paid,
            cash: paid,
            ..Amounts::default()
        },
        split: Split {
            provider_micros: paid - paid / 10,
            operator_micros: paid / 10,
        },
        note: String::new(),
    }
}

#[tokio::test]
async fn the_bill_month_is_reckoned_in_the_configured_zone() {
    use tessera_core::civil::Zone;
    // 2026-11-30 17:00 UTC is 2026-12-01 01:00 in UTC+08:00.
    let instant = Zone::utc().parse_instant("2026-11-30 17:00").expect("t");
    let (_dir, store) = open().await;
    let beijing = store
        .add_bill_line(&line("z1", "u", instant, 100), instant)
        .await
        .expect("line");
    assert_eq!(beijing.bill_id, "2026-12:u");
    let dir = tempfile::tempdir().expect("tempdir");
    let utc = Store::open(&dir.path().join("tessera.db"))
        .await
        .expect("open")
        .with_zone(Zone::utc());
    let line_utc = utc
        .add_bill_line(&line("z1", "u", instant, 100), instant)
        .await
        .expect("line");
    assert_eq!(line_utc.bill_id, "2026-11:u");
}

#[tokio::test]
async fn late_lines_land_in_their_month_or_as_corrections_and_closed_bills_never_change() {
    let (dir, store) = open().await;
    store
        .set_late_window_ms(24 * 3_600_000, 0)
        .await
        .expect("window");
    let nov = at("2026-11-30 23:00:00");
    // Arrives one hour into December, inside the window: November's bill.
    let a = store
        .add_bill_line(&line("a", "u", nov, 100), at("2026-12-01 01:00:00"))
        .await
        .expect("line");
    assert_eq!(a.bill_id, "2026-11:u");
    assert_eq!(a.corrects_period, None);
    // The same line again is one line; a different payload under its id is refused.
    store
        .add_bill_line(&line("a", "u", nov, 100), at("2026-12-01 02:00:00"))
        .await
        .expect("retry");
    assert!(matches!(
        store
            .add_bill_line(&line("a", "u", nov, 101), at("2026-12-01 02:00:00"))
            .await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    // Nothing is due before the window passes.
    assert!(
        store
            .close_due_bills(at("2026-12-01 23:59:59"))
            .await
            .expect("close")
            .is_empty()
    );
    assert_eq!(
        store
            .close_due_bills(at("2026-12-02 00:00:00"))
            .await
            .expect("close"),
        vec!["2026-11:u".to_string()]
    );
    // Arriving after the window: a correction line on December's bill.
    let b = store
        .add_bill_line(&line("b", "u", nov, 50), at("2026-12-03 00:00:00"))
        .await
        .expect("line");
    assert_eq!(b.bill_id, "2026-12:u");
    assert_eq!(b.corrects_period.as_deref(), Some("2026-11"));
    // A line that breaks the identities is refused.
    let mut bad = line("c", "u", nov, 50);
    bad.amounts.cash = 49;
    assert!(
        store
            .add_bill_line(&bad, at("2026-12-03 00:00:00"))
            .await
            .is_err()
    );

    let bills = store.bills(Some("u"), None).await.expect("bills");
    assert_eq!(bills.len(), 2);
    assert_eq!(bills[0].period, "2026-12");
    assert_eq!(bills[0].state, "open");
    assert_eq!(bills[1].state, "closed");
    assert_eq!(bills[1].totals.original, 100);
    assert_eq!(store.bill_lines("2026-11:u").await.expect("lines").len(), 1);
    assert!(matches!(
        store.bill_lines("2026-10:u").await,
        Err(StoreError::NotFound { .. })
    ));

    // The schema itself refuses to change a closed bill or any line.
    store.close().await;
    let raw = crate::tests::raw_connection(&dir.path().join("tessera.db"));
    for sql in [
        "UPDATE bill_lines SET cash_micros = 0 WHERE line_id = 'a'",
        "DELETE FROM bill_lines WHERE line_id = 'a'",
        "UPDATE bills SET state = 'open' WHERE bill_id = '2026-11:u'",
        "DELETE FROM bills WHERE bill_id = '2026-11:u'",
        "INSERT INTO bill_lines (line_id, bill_id, customer, kind, product, event_time_ms, arrival_time_ms, \
         service_start_ms, service_end_ms, original_micros) VALUES ('z', '2026-11:u', 'u', 'usage', 'psi', 0, 0, 0, 0, 0)",
    ] {
        assert!(raw.execute(sql, []).is_err(), "{sql}");
    }
    raw.close().expect("close raw");
}

#[tokio::test]
async fn payouts_pay_a_closed_month_once() {
    let (_dir, store) = open().await;
    store.set_late_window_ms(0, 0).await.expect("window");
    deposit(&store, "provider:prov:receivable", 1_000).await;
    let nov = at("2026-11-10 12:00:00");
    for (id, c) in [("a", "u"), ("b", "v")] {
        store
            .add_bill_line(&line(id, c, nov, 100), nov)
            .await
            .expect("line");
    }
    assert!(matches!(
        store
            .payout("prov", "2026-11", at("2026-11-30 00:00:00"))
            .await,
        Err(StoreError::PeriodOpen { .. })
    ));
    assert!(store.payout("prov", "2026-13", nov).await.is_err());
    let dec = at("2026-12-01 00:00:00");
    // A month with no bills at all, and a provider with no lines, are refused and not stored.
    for (provider, period) in [("prov", "1999-01"), ("nobody", "2026-11")] {
        assert!(matches!(
            store.payout(provider, period, dec).await,
            Err(StoreError::Invalid {
                field: "period",
                ..
            })
        ));
    }
    assert!(
        store
            .statements(Some("nobody"))
            .await
            .expect("st")
            .is_empty()
    );
    let st = store.payout("prov", "2026-11", dec).await.expect("payout");
    assert_eq!((st.lines, st.paid_micros), (2, 200));
    assert_eq!((st.provider_micros, st.operator_micros), (180, 20));
    assert!(st.payout_transfer_id.is_some());
    let again = store
        .payout("prov", "2026-11", dec + 5)
        .await
        .expect("again");
    assert_eq!(again, st);
    assert_eq!(
        store.balance("provider:prov:paid_out").await.expect("b"),
        180
    );
    assert_eq!(
        store.balance("provider:prov:receivable").await.expect("b"),
        820
    );
    let listed = store.statements(Some("prov")).await.expect("statements");
    assert_eq!(listed, vec![st]);
    assert!(store.ledger_balanced().await.expect("balanced"));
    assert!(store.verify_audit().await.expect("audit").ok());
}

#[tokio::test]
async fn freeze_configuration_and_manual_actions_decide_admission() {
    let (_dir, store) = open().await;
    deposit(&store, "customer:u:cash", 10).await;
    let status = store.account_status("u", "psi").await.expect("status");
    assert!(!status.frozen);
    store
        .set_limit(
            &LimitScope::Platform,
            &LimitConfig {
                min_purchase_micros: None,
                min_freeze_micros: Some(50),
                enabled: true,
            },
            2,
        )
        .await
        .expect("limit");
    let status = store.account_status("u", "psi").await.expect("status");
    assert!(status.frozen, "{status:?}");
    assert!(status.reason.contains("minimum freeze amount"));
    // A customer configuration outranks the platform one.
    store
        .set_limit(
            &LimitScope::Customer("u".into(), None),
            &LimitConfig {
                min_purchase_micros: None,
                min_freeze_micros: Some(5),
                enabled: true,
            },
            3,
        )
        .await
        .expect("limit");
    assert!(!store.account_status("u", "psi").await.expect("s").frozen);
    // A manual freeze outranks everything until it is cleared.
    store
        .set_manual_freeze("u", &ManualFreeze::Frozen("fraud check".into()), 4)
        .await
        .expect("freeze");
    let s = store.account_status("u", "psi").await.expect("s");
    assert!(s.frozen && s.reason.contains("fraud check"), "{s:?}");
    store
        .set_manual_freeze("u", &ManualFreeze::None, 5)
        .await
        .expect("clear");
    assert!(!store.account_status("u", "psi").await.expect("s").frozen);
    assert!(
        store
            .set_limit(
                &LimitScope::Platform,
                &LimitConfig {
                    min_purchase_micros: Some(-1),
                    min_freeze_micros: None,
                    enabled: true,
                },
                6,
            )
            .await
            .is_err()
    );
    assert!(store.verify_audit().await.expect("audit").ok());
}

async fn monthly_licence(store: &Store, monthly: i64) {
    store
        .create_dataset(
            &DatasetRecord {
                dataset_id: "ds".into(),
                owner_party: "prov".into(),
                location: "p.csv".into(),
                description: String::new(),
                declared_rows: Some(10),
            },
            1,
        )
        .await
        .expect("dataset");
    let policy = tessera_policy::UsagePolicy::from_json(
        r#"{"policyName":"p","relUsers":[{"userId":"u","userName":"U","isGroup":0}],
            "useScenes":[{"useSence":"psi"}]}"#,
    )
    .expect("policy");
    store
        .create_licence(
            &LicenceRecord {
                licence_id: "lic".into(),
                licensor: "prov".into(),
                licensee: "u".into(),
                dataset_id: "ds".into(),
                policy,
                price: tessera_accounting::JobPrice {
                    per_job_micros: 0,
                    per_1k_rows_micros: 0,
                    operator_share_bps: 1_000,
                },
                monthly_price_micros: monthly,
            },
            2,
        )
        .await
        .expect("licence");
}

async fn term_covers(store: &Store, id: &str, now: i64) -> Result<(), String> {
    let (out, decided) = std::sync::mpsc::channel();
    store
        .admit(
            &NewJob {
                job_id: id.into(),
                licence_id: "lic".into(),
                scene: "psi".into(),
                user: "u".into(),
                mode: tessera_core::PsiMode::Size,
                protocol: tessera_core::PsiProtocol::Ecdh,
                request: serde_json::json!({}),
                request_id: None,
                buyer_party: "buy".into(),
                provider_party: "prov".into(),
                output: String::new(),
                co_licences: vec![],
                now_ms: now,
            },
            move |c| {
                out.send(c.term.clone()).expect("send");
                Ok::<_, StoreError>(Decision {
                    allowed: false,
                    reasons: vec![Refusal::NoWorker {
                        reason: "probe".into(),
                    }],
                    detail: serde_json::json!({}),
                    tasks: vec![],
                    holds: vec![],
                    auto_frozen: None,
                    mpc_triples: None,
                })
            },
        )
        .await
        .expect("admit");
    decided.recv().expect("decided")
}

#[tokio::test]
async fn licence_terms_are_bought_renewed_and_refunded_by_the_manuals_rules() {
    let (_dir, store) = open().await;
    let y = 1_000_000;
    monthly_licence(&store, 300 * y).await;
    let t0 = at("2026-10-19 11:00:00");
    assert!(term_covers(&store, "j0", t0).await.is_err(), "no term yet");
    // Not enough money: refused, nothing written.
    deposit(&store, "customer:u:cash", 500 * y).await;
    assert!(matches!(
        store.subscribe("lic", "u", 3, t0).await,
        Err(StoreError::Refused(RuleRefusal::Funds(_)))
    ));
    assert!(store.subscribe("lic", "someone", 1, t0).await.is_err());
    // The recharge voucher pays first, then cash.
    deposit(&store, "customer:u:recharge_voucher", 100 * y).await;
    deposit(&store, "customer:u:cash", 400 * y).await;
    let v = store.subscribe("lic", "u", 3, t0).await.expect("order");
    assert_eq!(v.charged_micros, 900 * y);
    assert_eq!(v.end_ms, at("2027-01-19 11:00:00"));
    assert_eq!(
        store
            .balance("customer:u:recharge_voucher")
            .await
            .expect("b"),
        0
    );
    assert_eq!(store.balance("customer:u:cash").await.expect("b"), 100 * y);
    assert_eq!(
        store.balance("provider:prov:receivable").await.expect("b"),
        810 * y
    );
    assert_eq!(store.balance("operator:revenue").await.expect("b"), 90 * y);
    assert!(term_covers(&store, "j1", t0 + 1).await.is_ok());
    assert!(
        term_covers(&store, "j2", at("2027-01-19 11:00:00"))
            .await
            .is_err()
    );

    // Unsubscribing after 40 days: two started months used, refund 800 (cash paid) − 600 = 200.
    let v = store
        .unsubscribe("lic", "u", at("2026-11-28 11:00:00"))
        .await
        .expect("unsubscribe");
    assert_eq!(v.refund_micros, 200 * y);
    assert_eq!(store.balance("customer:u:cash").await.expect("b"), 300 * y);
    assert!(
        term_covers(&store, "j3", at("2026-11-29 00:00:00"))
            .await
            .is_err()
    );
    assert!(matches!(
        store
            .unsubscribe("lic", "u", at("2026-11-29 00:00:00"))
            .await,
        Err(StoreError::Refused(RuleRefusal::SubscriptionClosed(_)))
    ));

    // Ordered again: a new generation; renewed after its end it restarts at the renewal time.
    let t1 = at("2026-12-01 00:00:00");
    let v = store
        .subscribe("lic", "u", 1, t1)
        .await
        .expect("order again");
    assert_eq!(v.months_total, 1);
    let late = at("2027-01-05 08:00:00");
    assert!(term_covers(&store, "j4", late).await.is_err(), "expired");
    deposit(&store, "customer:u:cash", 300 * y).await;
    let v = store.subscribe("lic", "u", 1, late).await.expect("renew");
    assert_eq!(v.end_ms, at("2027-02-05 08:00:00"));
    assert_eq!(
        v.charged_micros,
        300 * y,
        "no make-up: use stopped at the end"
    );
    assert!(term_covers(&store, "j5", late + 1).await.is_ok());
    // Unsubscribing within the first month of the renewal: 2 months used of 600 paid → 0.
    let v = store
        .unsubscribe("lic", "u", late + 3_600_000)
        .await
        .expect("unsubscribe");
    assert_eq!(v.refund_micros, 0);

    // Bills: order, refund, order, renewal, refund lines, with the identities held by the
    // schema; the refund line is negative.
    let lines: Vec<_> = {
        let mut all = Vec::new();
        for b in store.bills(Some("u"), None).await.expect("bills") {
            all.extend(store.bill_lines(&b.bill_id).await.expect("lines"));
        }
        all
    };
    let kinds: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.line.kind.name()).collect();
    assert_eq!(kinds, ["order", "refund", "renewal"].into_iter().collect());
    assert!(lines.iter().any(|l| l.line.amounts.cash == -200 * y));
    assert!(store.ledger_balanced().await.expect("balanced"));
    assert!(store.verify_audit().await.expect("audit").ok());
}
