//! Holds, bills, statements and freezes on a real SQLite file.

use super::*;
use tessera_accounting::civil::parse_millis;
use tessera_accounting::freeze::{LimitConfig, ManualFreeze};
use tessera_accounting::{TransferSpec, derive_id};

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("tessera.db"))
        .await
        .expect("open");
    (dir, store)
}

fn at(text: &str) -> i64 {
    parse_millis(text).expect("time")
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
        Err(StoreError::Ledger(_))
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
        kind: "usage".into(),
        product: "psi".into(),
        provider: "prov".into(),
        event_time_ms: event,
        service_start_ms: event,
        service_end_ms: event,
        amounts: LineAmounts {
            original_micros: paid,
            cash_micros: paid,
            provider_micros: paid - paid / 10,
            operator_micros: paid / 10,
            ..LineAmounts::default()
        },
        note: String::new(),
    }
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
    bad.amounts.cash_micros = 49;
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
    assert_eq!(bills[1].totals.original_micros, 100);
    assert_eq!(store.bill_lines("2026-11:u").await.expect("lines").len(), 1);
    assert!(matches!(
        store.bill_lines("2026-10:u").await,
        Err(StoreError::NotFound { .. })
    ));

    // The schema itself refuses to change a closed bill or any line.
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        dir.path().join("tessera.db").display()
    ))
    .await
    .expect("raw");
    for sql in [
        "UPDATE bill_lines SET cash_micros = 0 WHERE line_id = 'a'",
        "DELETE FROM bill_lines WHERE line_id = 'a'",
        "UPDATE bills SET state = 'open' WHERE bill_id = '2026-11:u'",
        "DELETE FROM bills WHERE bill_id = '2026-11:u'",
        "INSERT INTO bill_lines (line_id, bill_id, customer, kind, product, event_time_ms, arrival_time_ms, \
         service_start_ms, service_end_ms, original_micros) VALUES ('z', '2026-11:u', 'u', 'usage', 'psi', 0, 0, 0, 0, 0)",
    ] {
        assert!(sqlx::query(sql).execute(&pool).await.is_err(), "{sql}");
    }
    pool.close().await;
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
        Err(StoreError::Ledger(_))
    ));
    assert!(store.payout("prov", "2026-13", nov).await.is_err());
    let dec = at("2026-12-01 00:00:00");
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
