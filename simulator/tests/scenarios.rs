//! Runs every scenario under `simulator/scenarios/*.toml` and compares the rendered report
//! with its `*.expected.txt` exactly; then checks the operations manual's figures on the
//! reports directly, so an expected file cannot silently drift away from the manual.
//!
//! Set `TESSERA_BLESS=1` to (re)write the expected files after reviewing a change.

use std::path::PathBuf;

use tessera_accounting::bill::BillLineKind;
use tessera_accounting::civil::format_millis;
use tessera_simulator::{SimulationReport, simulate};

const Y: i64 = 1_000_000;

fn dir() -> PathBuf {
    PathBuf::from(manifest_dir()).join("scenarios")
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("scenarios dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

async fn run(name: &str) -> SimulationReport {
    let text = std::fs::read_to_string(dir().join(name)).expect("read scenario");
    simulate(&text).await.expect("simulate")
}

#[tokio::test]
async fn every_scenario_matches_its_expected_output() {
    let files = scenario_files();
    assert!(files.len() >= 14, "scenario files missing");
    let bless = std::env::var("TESSERA_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        let report = simulate(&text).await.expect("simulate");
        let rendered = report.render_text();
        assert_eq!(
            simulate(&text).await.expect("again"),
            report,
            "deterministic"
        );
        let expected_path = f.with_extension("expected.txt");
        if bless {
            std::fs::write(&expected_path, &rendered).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != rendered {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{rendered}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `(kind, original, customer discount, coupon, recharge voucher, cash)` of every bill line.
fn lines(r: &SimulationReport) -> Vec<(BillLineKind, i64, i64, i64, i64, i64)> {
    r.bills
        .iter()
        .flat_map(|b| b.lines.iter())
        .map(|l| {
            let a = &l.line.amounts;
            (
                l.line.kind,
                a.original,
                a.customer_discount,
                a.coupon,
                a.recharge_voucher,
                a.cash,
            )
        })
        .collect()
}

fn balances(r: &SimulationReport) -> (i64, i64, i64, usize) {
    let c = &r.customers[0];
    (
        c.cash_micros,
        c.recharge_voucher_micros,
        c.credit_available_micros,
        c.unused_coupons,
    )
}

fn spans(r: &SimulationReport, kind: BillLineKind) -> Vec<(String, String)> {
    r.bills
        .iter()
        .flat_map(|b| b.lines.iter())
        .filter(|l| l.line.kind == kind)
        .map(|l| {
            (
                format_millis(l.line.service_start),
                format_millis(l.line.service_end),
            )
        })
        .collect()
}

#[tokio::test]
async fn manual_1_4_4_figures() {
    use BillLineKind::*;
    let r = run("1_4_4_1_2_order_discount_coupon.toml").await;
    assert_eq!(
        lines(&r),
        vec![(Order, 600 * Y, 300 * Y, 70 * Y, 230 * Y, 0)]
    );
    assert_eq!(balances(&r), (3000 * Y, 2770 * Y, 3000 * Y, 0));

    let r = run("1_4_4_1_3_makeup_discount_coupon.toml").await;
    assert_eq!(
        lines(&r),
        vec![
            (Order, 600 * Y, 300 * Y, 70 * Y, 230 * Y, 0),
            (MakeUp, 10 * Y, 0, 0, 10 * Y, 0)
        ]
    );
    assert_eq!(balances(&r), (3000 * Y, 2734 * Y, 3000 * Y, 0));

    let r = run("1_4_4_1_4_unsubscribe_refund_zero.toml").await;
    assert_eq!(
        lines(&r),
        vec![(Order, 600 * Y, 300 * Y, 70 * Y, 130 * Y, 100 * Y)]
    );
    assert_eq!(balances(&r), (2900 * Y, 0, 3000 * Y, 0));
    assert!(
        r.log
            .iter()
            .any(|l| l.contains("refund = paid 100.00 - 300.00 × 1 month(s) used = 0.00"))
    );
}

/// Issue 8 item 8: the default reading is the note under §1.4.5.1.2 (the actual days of the
/// previous month period): 1 day × 310/31 = 10.00, not 310/28 = 11.07.
#[tokio::test]
async fn renewal_after_the_term_uses_the_previous_period_by_default() {
    use BillLineKind::*;
    let r = run("1_4_5_1_2_6_renew_after_term_previous_period.toml").await;
    assert_eq!(
        lines(&r),
        vec![
            (Order, 310 * Y, 0, 0, 0, 310 * Y),
            (MakeUp, 10 * Y, 0, 0, 0, 10 * Y),
            (Renewal, 310 * Y, 0, 0, 0, 310 * Y)
        ]
    );
    assert_eq!(
        spans(&r, MakeUp),
        vec![(
            "2026-02-15 10:00:00".to_string(),
            "2026-02-16 10:00:00".to_string()
        )]
    );
    assert!(
        r.log
            .iter()
            .any(|l| l.contains("1 day(s) × 310.00/31 = 10.00")),
        "{:?}",
        r.log
    );
}

#[tokio::test]
async fn manual_1_4_5_figures() {
    use BillLineKind::*;
    let r = run("1_4_5_1_1_order_monthly_price.toml").await;
    assert_eq!(
        lines(&r),
        vec![
            (Order, 10_000 * Y, 0, 0, 0, 10_000 * Y),
            (Order, 20_000 * Y, 0, 0, 0, 20_000 * Y)
        ]
    );

    let renewals: [(&str, Option<i64>, (&str, &str)); 5] = [
        (
            "1_4_5_1_2_1_renew_inside_term.toml",
            None,
            ("2021-11-19 11:00:00", "2021-12-19 11:00:00"),
        ),
        (
            "1_4_5_1_2_2_renew_outside_not_frozen.toml",
            Some(10),
            ("2021-11-20 11:00:00", "2021-12-20 11:00:00"),
        ),
        (
            "1_4_5_1_2_3_renew_outside_frozen_at_end.toml",
            None,
            ("2021-11-19 15:00:00", "2021-12-19 15:00:00"),
        ),
        (
            "1_4_5_1_2_4_renew_frozen_within_makeup.toml",
            Some(10),
            ("2021-11-20 12:00:00", "2021-12-20 12:00:00"),
        ),
        (
            "1_4_5_1_2_5_renew_frozen_outside_makeup.toml",
            Some(10),
            ("2021-11-20 11:00:00", "2021-12-20 11:00:00"),
        ),
    ];
    for (file, makeup, (start, end)) in renewals {
        let r = run(file).await;
        let mut want = vec![(Order, 300 * Y, 0, 0, 0, 300 * Y)];
        if let Some(m) = makeup {
            want.push((MakeUp, m * Y, 0, 0, 0, m * Y));
            assert_eq!(
                spans(&r, MakeUp),
                vec![(
                    "2021-11-19 11:00:00".to_string(),
                    "2021-11-20 11:00:00".to_string()
                )],
                "{file}"
            );
        }
        want.push((Renewal, 300 * Y, 0, 0, 0, 300 * Y));
        assert_eq!(lines(&r), want, "{file}");
        assert_eq!(
            spans(&r, Renewal),
            vec![(start.to_string(), end.to_string())],
            "{file}"
        );
    }

    let r = run("1_4_5_1_3_unsubscribe_six_months.toml").await;
    assert_eq!(
        lines(&r),
        vec![
            (Order, 60_000 * Y, 0, 0, 0, 60_000 * Y),
            (Refund, -40_000 * Y, 0, 0, 0, -40_000 * Y)
        ]
    );
    let r = run("1_4_5_1_3_1_unsubscribe_inside_term.toml").await;
    assert_eq!(
        lines(&r),
        vec![
            (Order, 600 * Y, 0, 0, 0, 600 * Y),
            (Refund, -300 * Y, 0, 0, 0, -300 * Y)
        ]
    );
    assert_eq!(balances(&r).0, 2700 * Y);
    for file in [
        "1_4_5_1_3_2_unsubscribe_outside_term.toml",
        "1_4_5_1_3_3_unsubscribe_outside_frozen.toml",
    ] {
        let r = run(file).await;
        assert_eq!(
            lines(&r),
            vec![
                (Order, 300 * Y, 0, 0, 0, 300 * Y),
                (MakeUp, 10 * Y, 0, 0, 0, 10 * Y)
            ],
            "{file}"
        );
        assert_eq!(
            spans(&r, MakeUp),
            vec![(
                "2021-11-19 11:00:00".to_string(),
                "2021-11-20 11:00:00".to_string()
            )]
        );
    }

    let r = run("1_4_5_2_postpaid_hourly.toml").await;
    let hourly = spans(&r, Hourly);
    assert_eq!(
        hourly.last(),
        Some(&(
            "2021-11-12 12:00:00".to_string(),
            "2021-11-12 13:00:00".to_string()
        ))
    );
    assert_eq!(lines(&r).iter().map(|l| l.1).sum::<i64>(), 6 * Y);
}

/// The package directory at run time (cargo sets it for every test it runs), so that a test
/// binary built in another checkout of the same target directory reads this checkout's files;
/// the build-time path otherwise.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
