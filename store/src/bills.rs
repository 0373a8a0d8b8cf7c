//! Bills persisted: one bill per customer and calendar month (UTC), append-only lines, the
//! late-usage rule, closing, and provider statements with payouts.
//!
//! A line lands in the bill of the month its charge happened in if it arrives before that
//! month's end + the late window (a setting, default 72 hours) and that bill is still open;
//! otherwise it is a correction line on the first open bill from the month of arrival on
//! (`accounting::bill::place_line`). Bills close once their month's end + the late window has
//! passed. Triggers in the schema make closed bills and all lines immutable, so "closed bills
//! never change" holds even against a bug here.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::bill::{Amounts, BillLineKind, NewBillLine, Split};
use tessera_accounting::bill::{Placement, month_end, parse_period, period_name, place_line};
use tessera_accounting::settle;
use tessera_core::civil::Zone;

use crate::{Store, StoreError, audit, ledger};

/// Longest allowed late window (one year).
pub const LATE_WINDOW_MS_MAX: i64 = 366 * 24 * 3_600_000;

/// A stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillLineRecord {
    /// Bill it is on.
    pub bill_id: String,
    /// The line as charged.
    #[serde(flatten)]
    pub line: NewBillLine,
    /// When it reached the operator.
    pub arrival_time_ms: i64,
    /// For a correction line: the month it belongs to.
    pub corrects_period: Option<String>,
}

/// A bill with its totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillRecord {
    /// `YYYY-MM:customer`.
    pub bill_id: String,
    /// Customer.
    pub customer: String,
    /// `YYYY-MM`.
    pub period: String,
    /// `open` or `closed`.
    pub state: String,
    /// Lines on it.
    pub lines: u64,
    /// Sum of the lines' money members.
    pub totals: Amounts,
    /// Sum of the lines' provider and operator parts.
    pub split: Split,
    /// When it closed.
    pub closed_at_ms: Option<i64>,
}

/// A provider's statement for one closed month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementRecord {
    /// Provider party.
    pub provider: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Lines that paid this provider.
    pub lines: u64,
    /// What buyers paid on them.
    pub paid_micros: i64,
    /// Operator's part.
    pub operator_micros: i64,
    /// Provider's part (what the payout moves).
    pub provider_micros: i64,
    /// When it was paid out (`None`: not yet).
    pub paid_out_at_ms: Option<i64>,
    /// The payout transfer (`None` when nothing was due or not yet paid out).
    pub payout_transfer_id: Option<String>,
}

/// The bill id of a customer's month.
pub fn bill_id(customer: &str, period: &str) -> String {
    format!("{period}:{customer}")
}

pub(crate) fn late_window_ms(conn: &Connection) -> Result<i64, StoreError> {
    let r = conn
        .prepare_cached("SELECT value FROM billing_settings WHERE key = 'late_window_ms'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?;
    Ok(r.unwrap_or(0))
}

/// Puts a line on the right bill inside the caller's transaction; the same line id twice is
/// written once (a different payload under the same id is an error).
pub(crate) fn add_line(
    conn: &Connection,
    line: &NewBillLine,
    arrival_ms: i64,
    zone: &Zone,
) -> Result<BillLineRecord, StoreError> {
    line.validate()?;
    if let Some(existing) = load_lines(conn, "l.line_id = ?", &line.line_id)?
        .into_iter()
        .next()
    {
        return if existing.line == *line {
            Ok(existing)
        } else {
            Err(StoreError::IdempotencyMismatch {
                kind: "bill line",
                id: line.line_id.clone(),
            })
        };
    }
    let window = late_window_ms(conn)?;
    let closed: BTreeSet<String> = {
        let mut stmt = conn
            .prepare_cached("SELECT period FROM bills WHERE customer = ? AND state = 'closed'")?;
        let mut rows = stmt.query(params![line.customer])?;
        let mut closed = BTreeSet::new();
        while let Some(r) = rows.next()? {
            closed.insert(r.get::<_, String>(0)?);
        }
        closed
    };
    // Months are reckoned on the zone's wall clock; the late window is a duration.
    let placement = place_line(
        zone.local(line.event_time_ms)?,
        zone.local(arrival_ms)?,
        window,
        |p| closed.contains(&period_name(p)),
    )?;
    let (period, corrects) = match placement {
        Placement::InPeriod(y, m) => (period_name((y, m)), None),
        Placement::Correction { of, on } => (period_name(on), Some(period_name(of))),
    };
    let bill = bill_id(&line.customer, &period);
    conn.prepare_cached(
        "INSERT INTO bills (bill_id, customer, period, created_at_ms) VALUES (?, ?, ?, ?) \
         ON CONFLICT(bill_id) DO NOTHING",
    )?
    .execute(params![bill, line.customer, period, arrival_ms])?;
    let a = &line.amounts;
    conn.prepare_cached(
        "INSERT INTO bill_lines (line_id, bill_id, customer, job_id, kind, product, provider, corrects_period, \
         event_time_ms, arrival_time_ms, service_start_ms, service_end_ms, original_micros, platform_discount_micros, \
         customer_discount_micros, coupon_micros, deduction_voucher_micros, recharge_voucher_micros, cash_micros, \
         credit_micros, arrears_micros, provider_micros, operator_micros, note) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        line.line_id,
        bill,
        line.customer,
        line.job_id,
        line.kind.name(),
        line.product,
        line.provider,
        corrects,
        line.event_time_ms,
        arrival_ms,
        line.service_start_ms,
        line.service_end_ms,
        a.original,
        a.platform_discount,
        a.customer_discount,
        a.coupon,
        a.deduction_voucher,
        a.recharge_voucher,
        a.cash,
        a.credit,
        a.arrears,
        line.split.provider_micros,
        line.split.operator_micros,
        line.note
    ])?;
    audit::append(
        conn,
        arrival_ms,
        "bill_line",
        &line.line_id,
        &serde_json::json!({"bill_id": bill, "corrects_period": corrects, "line": line}),
    )?;
    Ok(BillLineRecord {
        bill_id: bill,
        line: line.clone(),
        arrival_time_ms: arrival_ms,
        corrects_period: corrects,
    })
}

const LINE_COLUMNS: &str = "l.bill_id, l.line_id, l.customer, l.job_id, l.kind, l.product, l.provider, \
     l.event_time_ms, l.service_start_ms, l.service_end_ms, l.original_micros, l.platform_discount_micros, \
     l.customer_discount_micros, l.coupon_micros, l.deduction_voucher_micros, l.recharge_voucher_micros, \
     l.cash_micros, l.credit_micros, l.arrears_micros, l.provider_micros, l.operator_micros, l.note, \
     l.arrival_time_ms, l.corrects_period";

fn line_from_row(r: &rusqlite::Row<'_>) -> Result<BillLineRecord, StoreError> {
    Ok(BillLineRecord {
        bill_id: r.get(0)?,
        line: NewBillLine {
            line_id: r.get(1)?,
            customer: r.get(2)?,
            job_id: r.get(3)?,
            kind: r.get::<_, String>(4)?.parse::<BillLineKind>()?,
            product: r.get(5)?,
            provider: r.get(6)?,
            event_time_ms: r.get(7)?,
            service_start_ms: r.get(8)?,
            service_end_ms: r.get(9)?,
            amounts: amounts_from_row(r, 10)?,
            split: Split {
                provider_micros: r.get(19)?,
                operator_micros: r.get(20)?,
            },
            note: r.get(21)?,
        },
        arrival_time_ms: r.get(22)?,
        corrects_period: r.get(23)?,
    })
}

/// The nine §3.8 members from columns `first ..= first + 8` (original, platform discount,
/// customer discount, coupon, deduction voucher, recharge voucher, cash, credit, arrears).
fn amounts_from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Amounts> {
    Ok(Amounts {
        original: r.get(first)?,
        platform_discount: r.get(first + 1)?,
        customer_discount: r.get(first + 2)?,
        coupon: r.get(first + 3)?,
        deduction_voucher: r.get(first + 4)?,
        recharge_voucher: r.get(first + 5)?,
        cash: r.get(first + 6)?,
        credit: r.get(first + 7)?,
        arrears: r.get(first + 8)?,
    })
}

fn load_lines(
    conn: &Connection,
    filter: &str,
    arg: &str,
) -> Result<Vec<BillLineRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LINE_COLUMNS} FROM bill_lines l WHERE {filter} ORDER BY l.rowid"
    ))?;
    let mut rows = stmt.query(params![arg])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(line_from_row(r)?);
    }
    Ok(out)
}

/// Closes every open bill whose month ended more than the late window before `now`.
pub(crate) fn close_due(
    conn: &Connection,
    now_ms: i64,
    zone: &Zone,
) -> Result<Vec<String>, StoreError> {
    let window = late_window_ms(conn)?;
    let local_now = zone.local(now_ms)?;
    let open: Vec<(String, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT bill_id, period FROM bills WHERE state = 'open' ORDER BY bill_id",
        )?;
        let mut rows = stmt.query([])?;
        let mut open = Vec::new();
        while let Some(r) = rows.next()? {
            open.push((r.get(0)?, r.get(1)?));
        }
        open
    };
    let mut closed = Vec::new();
    for (id, period) in open {
        let (y, m) = parse_period(&period)?;
        if month_end(y, m)?.saturating_add(window) <= local_now {
            conn.prepare_cached(
                "UPDATE bills SET state = 'closed', closed_at_ms = ? WHERE bill_id = ?",
            )?
            .execute(params![now_ms, id])?;
            let totals = bill_totals(conn, &id)?;
            audit::append(
                conn,
                now_ms,
                "bill_close",
                &id,
                &serde_json::json!({"lines": totals.0, "totals": totals.1, "split": totals.2}),
            )?;
            closed.push(id);
        }
    }
    Ok(closed)
}

/// SQLite's `SUM` of integers raises "integer overflow" rather than wrap or turn to REAL:
/// the sums below are checked; this names that failure as the ledger's typed overflow.
fn checked_sum_error(e: rusqlite::Error) -> StoreError {
    if e.to_string().contains("integer overflow") {
        StoreError::Ledger(tessera_accounting::LedgerError::Overflow)
    } else {
        e.into()
    }
}

fn bill_totals(conn: &Connection, bill: &str) -> Result<(u64, Amounts, Split), StoreError> {
    let (lines, amounts, split) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(original_micros), 0), COALESCE(SUM(platform_discount_micros), 0), \
             COALESCE(SUM(customer_discount_micros), 0), COALESCE(SUM(coupon_micros), 0), \
             COALESCE(SUM(deduction_voucher_micros), 0), COALESCE(SUM(recharge_voucher_micros), 0), \
             COALESCE(SUM(cash_micros), 0), COALESCE(SUM(credit_micros), 0), COALESCE(SUM(arrears_micros), 0), \
             COALESCE(SUM(provider_micros), 0), COALESCE(SUM(operator_micros), 0) \
             FROM bill_lines WHERE bill_id = ?",
        )?
        .query_row(params![bill], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                amounts_from_row(r, 1)?,
                Split {
                    provider_micros: r.get(10)?,
                    operator_micros: r.get(11)?,
                },
            ))
        })
        .map_err(checked_sum_error)?;
    Ok((count(lines)?, amounts, split))
}

/// A stored count, refused when negative (corrupt) instead of read as 0.
fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

fn statement_for(
    conn: &Connection,
    provider: &str,
    period: &str,
) -> Result<StatementRecord, StoreError> {
    let (lines, paid_micros, operator_micros, provider_micros) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(l.original_micros - l.platform_discount_micros - l.customer_discount_micros), 0), \
             COALESCE(SUM(l.operator_micros), 0), COALESCE(SUM(l.provider_micros), 0) \
             FROM bill_lines l JOIN bills b ON b.bill_id = l.bill_id \
             WHERE l.provider = ? AND b.period = ? AND b.state = 'closed'",
        )?
        .query_row(params![provider, period], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(checked_sum_error)?;
    let paid = conn
        .prepare_cached(
            "SELECT payout_transfer_id, created_at_ms FROM provider_statements WHERE provider = ? AND period = ?",
        )?
        .query_row(params![provider, period], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    let (payout_transfer_id, paid_out_at_ms) = match paid {
        Some((transfer, at)) => (transfer, Some(at)),
        None => (None, None),
    };
    Ok(StatementRecord {
        provider: provider.to_string(),
        period: period.to_string(),
        lines: count(lines)?,
        paid_micros,
        operator_micros,
        provider_micros,
        payout_transfer_id,
        paid_out_at_ms,
    })
}

impl Store {
    /// Sets how long after a month's end its bills accept late lines (0 ..= one year).
    pub async fn set_late_window_ms(&self, ms: i64, now_ms: i64) -> Result<(), StoreError> {
        if !(0..=LATE_WINDOW_MS_MAX).contains(&ms) {
            return Err(StoreError::Invalid {
                field: "late window",
                reason: format!("must be 0 ..= {LATE_WINDOW_MS_MAX} ms, got {ms}"),
            });
        }
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO billing_settings (key, value) VALUES ('late_window_ms', ?) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![ms])?;
            audit::append(
                conn,
                now_ms,
                "billing_setting",
                "late_window_ms",
                &serde_json::json!({ "value": ms }),
            )?;
            Ok(())
        })
        .await
    }

    /// The late window in force.
    pub async fn late_window(&self) -> Result<i64, StoreError> {
        self.read(late_window_ms)
    }

    /// Puts a line on a bill in its own transaction (refunds, adjustments, late charges).
    pub async fn add_bill_line(
        &self,
        line: &NewBillLine,
        now_ms: i64,
    ) -> Result<BillLineRecord, StoreError> {
        let line = line.clone();
        let zone = self.zone.clone();
        self.write(move |conn| add_line(conn, &line, now_ms, &zone))
            .await
    }

    /// Closes the bills that are due at `now_ms`; returns their ids.
    pub async fn close_due_bills(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let zone = self.zone.clone();
        self.write(move |conn| close_due(conn, now_ms, &zone)).await
    }

    /// Bills, optionally of one customer and/or one period, newest period first.
    pub async fn bills(
        &self,
        customer: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<BillRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT bill_id, customer, period, state, closed_at_ms FROM bills \
                 WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR period = ?2) \
                 ORDER BY period DESC, customer",
            )?;
            let mut rows = stmt.query(params![customer, period])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let bill_id: String = r.get(0)?;
                let (lines, totals, split) = bill_totals(conn, &bill_id)?;
                out.push(BillRecord {
                    bill_id,
                    customer: r.get(1)?,
                    period: r.get(2)?,
                    state: r.get(3)?,
                    lines,
                    totals,
                    split,
                    closed_at_ms: r.get(4)?,
                });
            }
            Ok(out)
        })
    }

    /// The lines of one bill, in the order they were written.
    pub async fn bill_lines(&self, bill_id: &str) -> Result<Vec<BillLineRecord>, StoreError> {
        self.read(|conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM bills WHERE bill_id = ?")?
                .query_row(params![bill_id], |_| Ok(()))
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    kind: "bill",
                    id: bill_id.to_string(),
                });
            }
            load_lines(conn, "l.bill_id = ?", bill_id)
        })
    }

    /// Provider statements of every month that has closed bills (optionally of one
    /// provider), newest first.
    pub async fn statements(
        &self,
        provider: Option<&str>,
    ) -> Result<Vec<StatementRecord>, StoreError> {
        self.read(|conn| {
            let keys: Vec<(String, String)> = {
                let mut stmt = conn.prepare_cached(
                    "SELECT DISTINCT l.provider, b.period FROM bill_lines l JOIN bills b ON b.bill_id = l.bill_id \
                     WHERE b.state = 'closed' AND l.provider != '' AND (?1 IS NULL OR l.provider = ?1) \
                     ORDER BY b.period DESC, l.provider",
                )?;
                let mut rows = stmt.query(params![provider])?;
                let mut keys = Vec::new();
                while let Some(k) = rows.next()? {
                    keys.push((k.get(0)?, k.get(1)?));
                }
                keys
            };
            let mut out = Vec::with_capacity(keys.len());
            for (p, period) in &keys {
                out.push(statement_for(conn, p, period)?);
            }
            Ok(out)
        })
    }

    /// Pays a provider its share of a closed month, once: closes what is due, requires the
    /// month to be closed (its end + the late window has passed), records the statement and
    /// moves the provider's part from its receivable to its paid-out account. A second call
    /// returns the recorded statement and moves nothing.
    pub async fn payout(
        &self,
        provider: &str,
        period: &str,
        now_ms: i64,
    ) -> Result<StatementRecord, StoreError> {
        let (y, m) = parse_period(period)?;
        let provider = provider.to_string();
        let period = period.to_string();
        let zone = self.zone.clone();
        self.write(move |conn| {
            // The bills closed on the way are kept only with a payout made now: a payout
            // already made is answered with nothing written, as every refusal below is (an
            // error rolls back the whole operation).
            conn.execute_batch("SAVEPOINT payout_close_due")?;
            close_due(conn, now_ms, &zone)?;
            let st = statement_for(conn, &provider, &period)?;
            if st.paid_out_at_ms.is_some() {
                conn.execute_batch("ROLLBACK TO payout_close_due; RELEASE payout_close_due")?;
                return Ok(st);
            }
            conn.execute_batch("RELEASE payout_close_due")?;
            let window = late_window_ms(conn)?;
            let due = zone.instant(month_end(y, m)?)?.saturating_add(window);
            if now_ms < due {
                return Err(StoreError::PeriodOpen {
                    period,
                    until_ms: due,
                    until: zone.format_rfc3339(due),
                });
            }
            // Nothing was billed for this provider in that month: there is nothing to pay
            // out, and a stored statement would only record a payout that never was.
            if st.lines == 0 {
                return Err(StoreError::Invalid {
                    field: "period",
                    reason: format!("provider {provider} has no bill lines in {period}"),
                });
            }
            let transfer = settle::payout(&provider, &period, st.provider_micros);
            if let Some(t) = &transfer {
                ledger::post(conn, t, now_ms)?;
            }
            let transfer_id = transfer.map(|t| t.id);
            let lines =
                i64::try_from(st.lines).map_err(|_| StoreError::Corrupt("line count".into()))?;
            conn.prepare_cached(
                "INSERT INTO provider_statements (provider, period, lines, paid_micros, operator_micros, provider_micros, \
                 payout_transfer_id, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                provider,
                period,
                lines,
                st.paid_micros,
                st.operator_micros,
                st.provider_micros,
                transfer_id,
                now_ms
            ])?;
            let st = StatementRecord {
                payout_transfer_id: transfer_id,
                paid_out_at_ms: Some(now_ms),
                ..st
            };
            audit::append(
                conn,
                now_ms,
                "payout",
                &format!("{provider}/{period}"),
                &serde_json::json!(st),
            )?;
            Ok(st)
        })
        .await
    }
}
