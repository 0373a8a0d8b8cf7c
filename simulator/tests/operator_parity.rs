//! `billing simulate` and the operator give the same charges for the same events: one
//! scenario of metered PSI jobs runs through the simulator and through the operator's
//! job-charging path — the admission holds and the final settlement of
//! `tessera_accounting::settle` (what `tessera-scheduler` computes at admission and when a job
//! finishes), carried out by `tessera-store` on a real SQLite file — and the bill lines,
//! splits and balances are compared.

use tessera_accounting::AccountKind;
use tessera_accounting::ledger::{LedgerOp, TransferSpec, derive_id};
use tessera_accounting::rating::JobPrice;
use tessera_accounting::settle::{self, FinishedJob};
use tessera_simulator::simulate;
use tessera_store::Store;

/// The e2e licence price: 1,000 micros per job + 1,000 per 1,000 rows, operator 20 %.
const PRICE: JobPrice = JobPrice {
    per_job_micros: 1_000,
    per_1k_rows_micros: 1_000,
    operator_share_bps: 2_000,
};
const ROWS: [u64; 5] = [1, 499, 1_500, 123_456, 7];
const CASH: i64 = 130_000;
const VOUCHER: i64 = 1_200;

fn scenario() -> String {
    let mut text = format!(
        "name = \"parity\"\n\
         [[customers]]\nid = \"a\"\ncash = \"{}\"\nrecharge_voucher = \"{}\"\n\
         [[products]]\nid = \"psi\"\nmode = \"postpaid\"\nprovider = \"prov\"\noperator_share_bps = {}\n\
         components = [{{ type = \"per_job\", price = \"{}\" }}, \
         {{ type = \"per_unit\", metric = \"rows\", unit_size = 1000, price = \"{}\" }}]\n",
        CASH as f64 / 1e6,
        VOUCHER as f64 / 1e6,
        PRICE.operator_share_bps,
        PRICE.per_job_micros as f64 / 1e6,
        PRICE.per_1k_rows_micros as f64 / 1e6,
    );
    for (i, rows) in ROWS.iter().enumerate() {
        text.push_str(&format!(
            "[[events]]\nat = \"2026-11-0{} 10:00\"\nkind = \"usage\"\ncustomer = \"a\"\nproduct = \"psi\"\njobs = 1\nrows = {rows}\n",
            i + 1
        ));
    }
    text
}

fn opening(id: &str, debit: AccountKind, credit: AccountKind, amount: i64) -> TransferSpec {
    TransferSpec {
        id: derive_id(&[id]),
        debit: debit.name(),
        credit: credit.name(),
        amount_micros: amount,
        job_id: None,
        memo: id.into(),
    }
}

#[tokio::test]
async fn simulator_and_operator_charge_the_same() {
    // The simulator.
    let report = simulate(&scenario()).await.expect("simulate");
    let sim_lines: Vec<_> = report
        .bills
        .iter()
        .flat_map(|b| b.lines.iter())
        .map(|l| (l.line.amounts, l.line.split().expect("split")))
        .collect();
    assert_eq!(sim_lines.len(), ROWS.len());

    // The operator's path on a real SQLite file.
    let store = Store::open_temporary().await.expect("store");
    store
        .post_transfers(
            &[
                opening(
                    "cash",
                    AccountKind::External,
                    AccountKind::CustomerCash("a".into()),
                    CASH,
                ),
                opening(
                    "voucher",
                    AccountKind::OperatorMarketing,
                    AccountKind::CustomerRechargeVoucher("a".into()),
                    VOUCHER,
                ),
            ],
            0,
        )
        .await
        .expect("opening");
    let mut op_lines = Vec::new();
    for (i, rows) in ROWS.iter().enumerate() {
        let job = format!("job-{i}");
        let at = 1_000 * i as i64 + 1;
        // Admission: the estimated maximum (declared rows) held in payment order.
        let max = settle::estimate_max_cost(&PRICE, Some(*rows)).expect("estimate");
        let funds = store.customer_funds("a").await.expect("funds");
        let holds = settle::admission_holds(&job, "a", "psi", max, &funds).expect("funds cover");
        let ops: Vec<LedgerOp> = holds.into_iter().map(LedgerOp::Hold).collect();
        store.apply_ledger(&ops, at).await.expect("holds");
        // Completion: the scheduler's settlement, carried out by the store.
        let open = store.job_holds(&job).await.expect("holds");
        let s = settle::job_settlement(&FinishedJob {
            job_id: &job,
            part: None,
            customer: "a",
            provider: "prov",
            scene: "psi",
            price: &PRICE,
            rows: *rows,
            holds: &open,
            admitted_at: at,
            now: at + 1,
        })
        .expect("settle");
        store.apply_ledger(&s.ops, at + 1).await.expect("charge");
        let line = store.add_bill_line(&s.line, at + 1).await.expect("line");
        op_lines.push((line.line.amounts, line.line.split));
    }

    assert_eq!(op_lines, sim_lines, "same charges, payments and splits");
    // The e2e figure: one row costs 1,001, split provider 801 / operator 200; the balances
    // agree account by account.
    assert_eq!(op_lines[0].0.original, 1_001);
    assert_eq!(
        (op_lines[0].1.provider_micros, op_lines[0].1.operator_micros),
        (801, 200)
    );
    for account in [
        AccountKind::CustomerCash("a".into()),
        AccountKind::CustomerRechargeVoucher("a".into()),
        AccountKind::ProviderReceivable("prov".into()),
        AccountKind::OperatorRevenue,
    ] {
        let sim = report
            .ledger_balances
            .iter()
            .find(|(n, _)| *n == account.name())
            .map_or(0, |(_, b)| *b);
        let op = store.balance(&account.name()).await.expect("balance");
        assert_eq!(i128::from(op), sim, "{account}");
    }
    assert!(store.ledger_balanced().await.expect("balanced"));
}
