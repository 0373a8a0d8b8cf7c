//! What a simulation produced and its plain-text rendering (the `*.expected.txt` files).

use std::fmt::Write as _;

use tessera_accounting::bill::{Amounts, PeriodBill, ProviderStatement};
use tessera_accounting::money::{Micros, format_amount};

/// A customer's balances at the end of a simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerBalance {
    /// Customer.
    pub customer: String,
    /// Cash.
    pub cash_micros: Micros,
    /// Recharge-voucher balance.
    pub recharge_voucher_micros: Micros,
    /// Deduction vouchers left.
    pub deduction_voucher_micros: Micros,
    /// Credit limit.
    pub credit_limit_micros: Micros,
    /// Credit available.
    pub credit_available_micros: Micros,
    /// Arrears.
    pub arrears_micros: Micros,
    /// Coupons not used.
    pub unused_coupons: usize,
}

/// What a simulation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulationReport {
    /// Scenario name.
    pub name: String,
    /// One or more lines per event.
    pub log: Vec<String>,
    /// Final balances per customer.
    pub customers: Vec<CustomerBalance>,
    /// Period bills.
    pub bills: Vec<PeriodBill>,
    /// Provider settlement statements.
    pub provider_statements: Vec<ProviderStatement>,
    /// The §3.8.3.2 period view: every line split by hours, per (customer, year, month).
    pub period_view: Vec<((String, i32, u8), Amounts)>,
    /// Non-zero ledger balances (credit-normal), by account name.
    pub ledger_balances: Vec<(String, i128)>,
    /// Transfers in the ledger.
    pub transfer_count: usize,
}

pub(crate) fn amounts_text(a: &Amounts) -> String {
    format!(
        "original {} - platform {} - customer {} = paid {} | coupon {} + deduction voucher {} + recharge voucher {} + cash {} + credit {} + arrears {}",
        format_amount(a.original),
        format_amount(a.platform_discount),
        format_amount(a.customer_discount),
        a.paid()
            .map_or_else(|_| "(overflow)".to_string(), format_amount),
        format_amount(a.coupon),
        format_amount(a.deduction_voucher),
        format_amount(a.recharge_voucher),
        format_amount(a.cash),
        format_amount(a.credit),
        format_amount(a.arrears),
    )
}

fn amount_i128(v: i128) -> String {
    i64::try_from(v).map_or_else(|_| v.to_string(), format_amount)
}

impl SimulationReport {
    /// The report as plain text (what `*.expected.txt` files hold).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario: {}", self.name);
        let _ = writeln!(out, "\nevents:");
        for l in &self.log {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "\nbalances:");
        for c in &self.customers {
            let _ = writeln!(
                out,
                "  {}: cash {}, recharge voucher {}, deduction vouchers {}, credit {} of {} available, arrears {}, unused coupons {}",
                c.customer,
                format_amount(c.cash_micros),
                format_amount(c.recharge_voucher_micros),
                format_amount(c.deduction_voucher_micros),
                format_amount(c.credit_available_micros),
                format_amount(c.credit_limit_micros),
                format_amount(c.arrears_micros),
                c.unused_coupons
            );
        }
        let _ = writeln!(out, "\nbills:");
        for b in &self.bills {
            let _ = writeln!(
                out,
                "  {} {}-{:02} ({}), {} line(s)",
                b.customer,
                b.year,
                b.month,
                if b.closed { "closed" } else { "open" },
                b.lines.len()
            );
            for l in &b.lines {
                let corr = l
                    .corrects
                    .map(|(y, m)| format!(" correction for {y}-{m:02}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {} {} {}{}: {}",
                    l.line.id,
                    l.line.kind.name(),
                    l.line.product,
                    corr,
                    amounts_text(&l.line.amounts)
                );
            }
            let total = match b.totals() {
                Ok(t) => amounts_text(&t),
                Err(e) => format!("cannot be summed: {e}"),
            };
            let _ = writeln!(out, "    total: {total}");
        }
        let _ = writeln!(out, "\nperiod view (lines split by hours, §3.8.3.2):");
        for ((c, y, m), a) in &self.period_view {
            let _ = writeln!(out, "  {c} {y}-{m:02}: {}", amounts_text(a));
        }
        if !self.provider_statements.is_empty() {
            let _ = writeln!(out, "\nprovider statements:");
            for s in &self.provider_statements {
                let _ = writeln!(
                    out,
                    "  {} {}-{:02}: {} line(s), gross {}, operator {}, provider {}",
                    s.provider,
                    s.year,
                    s.month,
                    s.lines,
                    format_amount(s.gross_micros),
                    format_amount(s.operator_micros),
                    format_amount(s.provider_micros)
                );
            }
        }
        let _ = writeln!(
            out,
            "\nledger ({} transfers, balanced):",
            self.transfer_count
        );
        for (name, b) in &self.ledger_balances {
            let _ = writeln!(out, "  {name}: {}", amount_i128(*b));
        }
        out
    }
}
