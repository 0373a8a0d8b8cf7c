//! Golden outputs of the listings: a fixed set of records printed as plain tables (what a
//! pipe or a file gets) and as CSV. These renderings are user-facing API: a change here is a
//! change for every script that reads them. Update with `UPDATE_EXPECT=1 cargo test`.

use expect_test::{Expect, expect};
use tessera_core::civil::Zone;
use tessera_proto::v1 as pb;

use super::output::{Listing, TableStyle};
use super::{bills, ledger};

/// The plain-table rendering of a listing.
fn check_table(listing: &Listing, table: Expect) {
    table.assert_eq(&format!("{}\n", listing.table(TableStyle::Plain)));
}

/// The CSV rendering of a listing.
fn check_csv(listing: &Listing, csv: Expect) {
    let mut out = Vec::new();
    listing.write_csv(&mut out).expect("csv");
    csv.assert_eq(&String::from_utf8(out).expect("utf-8"));
}

fn amounts(original: i64, cash: i64, provider: i64) -> Option<pb::LineAmounts> {
    Some(pb::LineAmounts {
        original_micros: original,
        cash_micros: cash,
        credit_micros: original - cash,
        provider_micros: provider,
        operator_micros: original - provider,
        ..pb::LineAmounts::default()
    })
}

fn balances() -> Vec<pb::Balance> {
    vec![
        pb::Balance {
            account: "customer:alice:cash".into(),
            balance_micros: 89_975_312,
            held_micros: 0,
        },
        pb::Balance {
            account: "customer:alice:holds".into(),
            balance_micros: 10_000_000,
            held_micros: 10_000_000,
        },
        pb::Balance {
            account: "external:deposits".into(),
            balance_micros: -100_000_000,
            held_micros: 0,
        },
    ]
}

fn transfers() -> Vec<pb::Transfer> {
    vec![
        pb::Transfer {
            transfer_id: "t-0001".into(),
            debit_account: "external:deposits".into(),
            credit_account: "customer:alice:cash".into(),
            amount_micros: 100_000_000,
            memo: "deposit top-up-1".into(),
            kind: "posted".into(),
            created_at_ms: 1_700_000_000_000,
            ..pb::Transfer::default()
        },
        pb::Transfer {
            transfer_id: "t-0002".into(),
            debit_account: "customer:alice:cash".into(),
            credit_account: "customer:alice:holds".into(),
            amount_micros: 10_024_688,
            job_id: "job-7".into(),
            memo: "hold, \"max\" cost".into(),
            kind: "pending".into(),
            created_at_ms: 1_700_000_001_000,
            ..pb::Transfer::default()
        },
    ]
}

#[test]
fn balances_golden() {
    check_table(
        &ledger::balances(&balances(), false),
        expect![[r#"
         account                   balance       held
         customer:alice:cash     89.975312
         customer:alice:holds    10.000000  10.000000
         external:deposits     -100.000000
    "#]],
    );
    check_csv(
        &ledger::balances(&balances(), true),
        expect![[r#"
        account,balance_micros,held_micros
        customer:alice:cash,89975312,0
        customer:alice:holds,10000000,10000000
        external:deposits,-100000000,0
    "#]],
    );
}

#[test]
fn transfers_golden() {
    check_table(
        &ledger::transfers(&transfers(), false, &Zone::default()),
        expect![[r#"
         transfer  kind     debit                credit                    amount  job    memo
         t-0001    posted   external:deposits    customer:alice:cash   100.000000         deposit top-up-1
         t-0002    pending  customer:alice:cash  customer:alice:holds   10.024688  job-7  hold, "max" cost
    "#]],
    );
    check_csv(
        &ledger::transfers(&transfers(), true, &Zone::default()),
        expect![[r#"
            transfer_id,kind,debit_account,credit_account,amount_micros,job_id,pending_id,created_at,memo
            t-0001,posted,external:deposits,customer:alice:cash,100000000,,,2023-11-15T06:13:20+08:00,deposit top-up-1
            t-0002,pending,customer:alice:cash,customer:alice:holds,10024688,job-7,,2023-11-15T06:13:21+08:00,"hold, ""max"" cost"
        "#]],
    );
}

#[test]
fn usage_golden() {
    let events = vec![
        pb::UsageEvent {
            event_id: "u-1".into(),
            job_id: "job-7".into(),
            party: "buyer-b".into(),
            metric: "rows_in".into(),
            quantity: 101_000,
            protocol: "rr22".into(),
        },
        pb::UsageEvent {
            event_id: "u-2".into(),
            job_id: "job-7".into(),
            party: "provider-a".into(),
            metric: "cpu_ms".into(),
            quantity: 912,
            protocol: "rr22".into(),
        },
    ];
    check_table(
        &ledger::usage(&events),
        expect![[r#"
            event  job    party       protocol  metric   quantity
            u-1    job-7  buyer-b     rr22      rows_in    101000
            u-2    job-7  provider-a  rr22      cpu_ms        912
        "#]],
    );
}

#[test]
fn bills_lines_and_statements_golden() {
    let bill_list = vec![pb::Bill {
        bill_id: "2026-11:alice".into(),
        customer: "alice".into(),
        period: "2026-11".into(),
        state: "open".into(),
        lines: 2,
        totals: amounts(10_049_376, 10_000_000, 9_044_438),
        closed_at_ms: None,
    }];
    check_table(
        &bills::bills_listing(&bill_list, false),
        expect![[r#"
         bill           state  lines       paid
         2026-11:alice  open       2  10.049376
    "#]],
    );
    check_csv(
        &bills::bills_listing(&bill_list, true),
        expect![[r#"
        bill_id,customer,period,state,lines,original_micros,platform_discount_micros,customer_discount_micros,coupon_micros,deduction_voucher_micros,recharge_voucher_micros,cash_micros,credit_micros,arrears_micros,provider_micros,operator_micros
        2026-11:alice,alice,2026-11,open,2,10049376,0,0,0,0,0,10000000,49376,0,9044438,1004938
    "#]],
    );

    let lines = vec![
        pb::BillLine {
            line_id: "l-1".into(),
            bill_id: "2026-11:alice".into(),
            customer: "alice".into(),
            job_id: "job-7".into(),
            kind: "job".into(),
            product: "psi".into(),
            provider: "provider-a".into(),
            event_time_ms: 1_700_000_000_000,
            arrival_time_ms: 1_700_000_002_000,
            amounts: amounts(5_024_688, 5_000_000, 4_522_219),
            note: "psi intersection, 1,234 rows".into(),
            ..pb::BillLine::default()
        },
        pb::BillLine {
            line_id: "l-2".into(),
            bill_id: "2026-11:alice".into(),
            customer: "alice".into(),
            job_id: "job-3".into(),
            kind: "job".into(),
            product: "psi".into(),
            provider: "provider-a".into(),
            amounts: amounts(5_024_688, 5_000_000, 4_522_219),
            corrects_period: "2026-10".into(),
            note: "late usage".into(),
            ..pb::BillLine::default()
        },
    ];
    check_csv(
        &bills::lines_listing(&lines, true, &Zone::default()),
        expect![[r#"
            line_id,bill_id,customer,job_id,kind,product,provider,event_time,arrival_time,service_start,service_end,corrects_period,original_micros,platform_discount_micros,customer_discount_micros,coupon_micros,deduction_voucher_micros,recharge_voucher_micros,cash_micros,credit_micros,arrears_micros,provider_micros,operator_micros,note
            l-1,2026-11:alice,alice,job-7,job,psi,provider-a,2023-11-15T06:13:20+08:00,2023-11-15T06:13:22+08:00,,,,5024688,0,0,0,0,0,5000000,24688,0,4522219,502469,"psi intersection, 1,234 rows"
            l-2,2026-11:alice,alice,job-3,job,psi,provider-a,1970-01-01T08:00:00+08:00,1970-01-01T08:00:00+08:00,,,2026-10,5024688,0,0,0,0,0,5000000,24688,0,4522219,502469,late usage
        "#]],
    );
    check_table(
        &bills::lines_listing(&lines, false, &Zone::default()),
        expect![[r#"
         line  kind  job        paid  corrects  note
         l-1   job   job-7  5.024688            psi intersection, 1,234 rows
         l-2   job   job-3  5.024688  2026-10   late usage
    "#]],
    );

    let statements = vec![
        pb::Statement {
            provider: "provider-a".into(),
            period: "2026-10".into(),
            lines: 3,
            paid_micros: 15_074_064,
            operator_micros: 1_507_406,
            provider_micros: 13_566_658,
            paid_out_at_ms: Some(1_700_100_000_000),
            payout_transfer_id: "t-0099".into(),
            audit_head: None,
        },
        pb::Statement {
            provider: "provider-a".into(),
            period: "2026-11".into(),
            lines: 1,
            paid_micros: 5_024_688,
            operator_micros: 502_469,
            provider_micros: 4_522_219,
            paid_out_at_ms: None,
            payout_transfer_id: String::new(),
            audit_head: None,
        },
    ];
    check_table(
        &bills::statements_listing(&statements, false, &Zone::default()),
        expect![[r#"
             period   provider    lines       paid   provider  operator  payout
             2026-10  provider-a      3  15.074064  13.566658  1.507406  paid out
             2026-11  provider-a      1   5.024688   4.522219  0.502469  not paid out
        "#]],
    );
    check_csv(
        &bills::statements_listing(&statements, true, &Zone::default()),
        expect![[r#"
            provider,period,lines,paid_micros,provider_micros,operator_micros,paid_out_at,payout_transfer_id
            provider-a,2026-10,3,15074064,13566658,1507406,2023-11-16T10:00:00+08:00,t-0099
            provider-a,2026-11,1,5024688,4522219,502469,,
        "#]],
    );
}
