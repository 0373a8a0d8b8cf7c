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

use serde::Serialize;
use sqlx::{Row, SqliteConnection};
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

pub(crate) async fn late_window_ms(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let r = sqlx::query("SELECT value FROM billing_settings WHERE key = 'late_window_ms'")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match r {
        Some(r) => r.try_get(0)?,
        None => 0,
    })
}

/// Puts a line on the right bill inside the caller's transaction; the same line id twice is
/// written once (a different payload under the same id is an error).
pub(crate) async fn add_line(
    conn: &mut SqliteConnection,
    line: &NewBillLine,
    arrival_ms: i64,
    zone: &Zone,
) -> Result<BillLineRecord, StoreError> {
    line.validate()?;
    if let Some(existing) = load_lines(conn, "l.line_id = ?", &line.line_id)
        .await?
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
    let window = late_window_ms(conn).await?;
    let closed: BTreeSet<String> =
        sqlx::query("SELECT period FROM bills WHERE customer = ? AND state = 'closed'")
            .bind(&line.customer)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
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
    sqlx::query(
        "INSERT INTO bills (bill_id, customer, period, created_at_ms) VALUES (?, ?, ?, ?) \
         ON CONFLICT(bill_id) DO NOTHING",
    )
    .bind(&bill)
    .bind(&line.customer)
    .bind(&period)
    .bind(arrival_ms)
    .execute(&mut *conn)
    .await?;
    let a = &line.amounts;
    sqlx::query(
        "INSERT INTO bill_lines (line_id, bill_id, customer, job_id, kind, product, provider, corrects_period, \
         event_time_ms, arrival_time_ms, service_start_ms, service_end_ms, original_micros, platform_discount_micros, \
         customer_discount_micros, coupon_micros, deduction_voucher_micros, recharge_voucher_micros, cash_micros, \
         credit_micros, arrears_micros, provider_micros, operator_micros, note) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&line.line_id)
    .bind(&bill)
    .bind(&line.customer)
    .bind(&line.job_id)
    .bind(line.kind.name())
    .bind(&line.product)
    .bind(&line.provider)
    .bind(&corrects)
    .bind(line.event_time_ms)
    .bind(arrival_ms)
    .bind(line.service_start_ms)
    .bind(line.service_end_ms)
    .bind(a.original)
    .bind(a.platform_discount)
    .bind(a.customer_discount)
    .bind(a.coupon)
    .bind(a.deduction_voucher)
    .bind(a.recharge_voucher)
    .bind(a.cash)
    .bind(a.credit)
    .bind(a.arrears)
    .bind(line.split.provider_micros)
    .bind(line.split.operator_micros)
    .bind(&line.note)
    .execute(&mut *conn)
    .await?;
    audit::append(
        conn,
        arrival_ms,
        "bill_line",
        &line.line_id,
        &serde_json::json!({"bill_id": bill, "corrects_period": corrects, "line": line}),
    )
    .await?;
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

fn line_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<BillLineRecord, StoreError> {
    Ok(BillLineRecord {
        bill_id: r.try_get(0)?,
        line: NewBillLine {
            line_id: r.try_get(1)?,
            customer: r.try_get(2)?,
            job_id: r.try_get(3)?,
            kind: r.try_get::<String, _>(4)?.parse::<BillLineKind>()?,
            product: r.try_get(5)?,
            provider: r.try_get(6)?,
            event_time_ms: r.try_get(7)?,
            service_start_ms: r.try_get(8)?,
            service_end_ms: r.try_get(9)?,
            amounts: amounts_from_row(r, 10)?,
            split: Split {
                provider_micros: r.try_get(19)?,
                operator_micros: r.try_get(20)?,
            },
            note: r.try_get(21)?,
        },
        arrival_time_ms: r.try_get(22)?,
        corrects_period: r.try_get(23)?,
    })
}

/// The nine §3.8 members from columns `first ..= first + 8` (original, platform discount,
/// customer discount, coupon, deduction voucher, recharge voucher, cash, credit, arrears).
fn amounts_from_row(r: &sqlx::sqlite::SqliteRow, first: usize) -> Result<Amounts, StoreError> {
    Ok(Amounts {
        original: r.try_get(first)?,
        platform_discount: r.try_get(first + 1)?,
        customer_discount: r.try_get(first + 2)?,
        coupon: r.try_get(first + 3)?,
        deduction_voucher: r.try_get(first + 4)?,
        recharge_voucher: r.try_get(first + 5)?,
        cash: r.try_get(first + 6)?,
        credit: r.try_get(first + 7)?,
        arrears: r.try_get(first + 8)?,
    })
}

async fn load_lines(
    conn: &mut SqliteConnection,
    filter: &str,
    arg: &str,
) -> Result<Vec<BillLineRecord>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {LINE_COLUMNS} FROM bill_lines l WHERE {filter} ORDER BY l.rowid"
    ))
    .bind(arg)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(line_from_row).collect()
}

/// Closes every open bill whose month ended more than the late window before `now`.
pub(crate) async fn close_due(
    conn: &mut SqliteConnection,
    now_ms: i64,
    zone: &Zone,
) -> Result<Vec<String>, StoreError> {
    let window = late_window_ms(conn).await?;
    let local_now = zone.local(now_ms)?;
    let open =
        sqlx::query("SELECT bill_id, period FROM bills WHERE state = 'open' ORDER BY bill_id")
            .fetch_all(&mut *conn)
            .await?;
    let mut closed = Vec::new();
    for r in &open {
        let id: String = r.try_get(0)?;
        let period: String = r.try_get(1)?;
        let (y, m) = parse_period(&period)?;
        if month_end(y, m)?.saturating_add(window) <= local_now {
            sqlx::query("UPDATE bills SET state = 'closed', closed_at_ms = ? WHERE bill_id = ?")
                .bind(now_ms)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            let totals = bill_totals(conn, &id).await?;
            audit::append(
                conn,
                now_ms,
                "bill_close",
                &id,
                &serde_json::json!({"lines": totals.0, "totals": totals.1, "split": totals.2}),
            )
            .await?;
            closed.push(id);
        }
    }
    Ok(closed)
}

/// SQLite's `SUM` of integers raises "integer overflow" rather than wrap or turn to REAL:
/// the sums below are checked; this names that failure as the ledger's typed overflow.
fn checked_sum_error(e: sqlx::Error) -> StoreError {
    if e.to_string().contains("integer overflow") {
        StoreError::Ledger(tessera_accounting::LedgerError::Overflow)
    } else {
        e.into()
    }
}

async fn bill_totals(
    conn: &mut SqliteConnection,
    bill: &str,
) -> Result<(u64, Amounts, Split), StoreError> {
    let r = sqlx::query(
        "SELECT COUNT(*), COALESCE(SUM(original_micros), 0), COALESCE(SUM(platform_discount_micros), 0), \
         COALESCE(SUM(customer_discount_micros), 0), COALESCE(SUM(coupon_micros), 0), \
         COALESCE(SUM(deduction_voucher_micros), 0), COALESCE(SUM(recharge_voucher_micros), 0), \
         COALESCE(SUM(cash_micros), 0), COALESCE(SUM(credit_micros), 0), COALESCE(SUM(arrears_micros), 0), \
         COALESCE(SUM(provider_micros), 0), COALESCE(SUM(operator_micros), 0) \
         FROM bill_lines WHERE bill_id = ?",
    )
    .bind(bill)
    .fetch_one(&mut *conn)
    .await
    .map_err(checked_sum_error)?;
    let lines = count(r.try_get(0)?)?;
    Ok((
        lines,
        amounts_from_row(&r, 1)?,
        Split {
            provider_micros: r.try_get(10)?,
            operator_micros: r.try_get(11)?,
        },
    ))
}

/// A stored count, refused when negative (corrupt) instead of read as 0.
fn count(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

async fn statement_for(
    conn: &mut SqliteConnection,
    provider: &str,
    period: &str,
) -> Result<StatementRecord, StoreError> {
    let r = sqlx::query(
        "SELECT COUNT(*), COALESCE(SUM(l.original_micros - l.platform_discount_micros - l.customer_discount_micros), 0), \
         COALESCE(SUM(l.operator_micros), 0), COALESCE(SUM(l.provider_micros), 0) \
         FROM bill_lines l JOIN bills b ON b.bill_id = l.bill_id \
         WHERE l.provider = ? AND b.period = ? AND b.state = 'closed'",
    )
    .bind(provider)
    .bind(period)
    .fetch_one(&mut *conn)
    .await
    .map_err(checked_sum_error)?;
    let paid = sqlx::query(
        "SELECT payout_transfer_id, created_at_ms FROM provider_statements WHERE provider = ? AND period = ?",
    )
    .bind(provider)
    .bind(period)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(StatementRecord {
        provider: provider.to_string(),
        period: period.to_string(),
        lines: count(r.try_get(0)?)?,
        paid_micros: r.try_get(1)?,
        operator_micros: r.try_get(2)?,
        provider_micros: r.try_get(3)?,
        payout_transfer_id: match &paid {
            Some(p) => p.try_get(0)?,
            None => None,
        },
        paid_out_at_ms: match &paid {
            Some(p) => Some(p.try_get(1)?),
            None => None,
        },
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
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO billing_settings (key, value) VALUES ('late_window_ms', ?) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .bind(ms)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now_ms,
            "billing_setting",
            "late_window_ms",
            &serde_json::json!({ "value": ms }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The late window in force.
    pub async fn late_window(&self) -> Result<i64, StoreError> {
        let mut conn = self.read.acquire().await?;
        late_window_ms(&mut conn).await
    }

    /// Puts a line on a bill in its own transaction (refunds, adjustments, late charges).
    pub async fn add_bill_line(
        &self,
        line: &NewBillLine,
        now_ms: i64,
    ) -> Result<BillLineRecord, StoreError> {
        let mut tx = self.write.begin().await?;
        let r = add_line(&mut tx, line, now_ms, &self.zone).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Closes the bills that are due at `now_ms`; returns their ids.
    pub async fn close_due_bills(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write.begin().await?;
        let closed = close_due(&mut tx, now_ms, &self.zone).await?;
        tx.commit().await?;
        Ok(closed)
    }

    /// Bills, optionally of one customer and/or one period, newest period first.
    pub async fn bills(
        &self,
        customer: Option<&str>,
        period: Option<&str>,
    ) -> Result<Vec<BillRecord>, StoreError> {
        let mut conn = self.read.acquire().await?;
        let rows = sqlx::query(
            "SELECT bill_id, customer, period, state, closed_at_ms FROM bills \
             WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR period = ?2) \
             ORDER BY period DESC, customer",
        )
        .bind(customer)
        .bind(period)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let bill_id: String = r.try_get(0)?;
            let (lines, totals, split) = bill_totals(&mut conn, &bill_id).await?;
            out.push(BillRecord {
                bill_id,
                customer: r.try_get(1)?,
                period: r.try_get(2)?,
                state: r.try_get(3)?,
                lines,
                totals,
                split,
                closed_at_ms: r.try_get(4)?,
            });
        }
        Ok(out)
    }

    /// The lines of one bill, in the order they were written.
    pub async fn bill_lines(&self, bill_id: &str) -> Result<Vec<BillLineRecord>, StoreError> {
        let mut conn = self.read.acquire().await?;
        let exists = sqlx::query("SELECT 1 FROM bills WHERE bill_id = ?")
            .bind(bill_id)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "bill",
                id: bill_id.to_string(),
            });
        }
        load_lines(&mut conn, "l.bill_id = ?", bill_id).await
    }

    /// Provider statements of every month that has closed bills (optionally of one
    /// provider), newest first.
    pub async fn statements(
        &self,
        provider: Option<&str>,
    ) -> Result<Vec<StatementRecord>, StoreError> {
        let mut conn = self.read.acquire().await?;
        let keys = sqlx::query(
            "SELECT DISTINCT l.provider, b.period FROM bill_lines l JOIN bills b ON b.bill_id = l.bill_id \
             WHERE b.state = 'closed' AND l.provider != '' AND (?1 IS NULL OR l.provider = ?1) \
             ORDER BY b.period DESC, l.provider",
        )
        .bind(provider)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            let p: String = k.try_get(0)?;
            let period: String = k.try_get(1)?;
            out.push(statement_for(&mut conn, &p, &period).await?);
        }
        Ok(out)
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
        let mut tx = self.write.begin().await?;
        close_due(&mut tx, now_ms, &self.zone).await?;
        let st = statement_for(&mut tx, provider, period).await?;
        if st.paid_out_at_ms.is_some() {
            return Ok(st);
        }
        let window = late_window_ms(&mut tx).await?;
        let due = self.zone.instant(month_end(y, m)?)?.saturating_add(window);
        if now_ms < due {
            return Err(StoreError::PeriodOpen {
                period: period.to_string(),
                until_ms: due,
                until: self.zone.format_rfc3339(due),
            });
        }
        // Nothing was billed for this provider in that month: there is nothing to pay out,
        // and a stored statement would only record a payout that never was.
        if st.lines == 0 {
            return Err(StoreError::Invalid {
                field: "period",
                reason: format!("provider {provider} has no bill lines in {period}"),
            });
        }
        let transfer = settle::payout(provider, period, st.provider_micros);
        if let Some(t) = &transfer {
            ledger::post(&mut tx, t, now_ms).await?;
        }
        let transfer_id = transfer.map(|t| t.id);
        sqlx::query(
            "INSERT INTO provider_statements (provider, period, lines, paid_micros, operator_micros, provider_micros, \
             payout_transfer_id, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(provider)
        .bind(period)
        .bind(i64::try_from(st.lines).map_err(|_| StoreError::Corrupt("line count".into()))?)
        .bind(st.paid_micros)
        .bind(st.operator_micros)
        .bind(st.provider_micros)
        .bind(&transfer_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let st = StatementRecord {
            payout_transfer_id: transfer_id,
            paid_out_at_ms: Some(now_ms),
            ..st
        };
        audit::append(
            &mut tx,
            now_ms,
            "payout",
            &format!("{provider}/{period}"),
            &serde_json::json!(st),
        )
        .await?;
        tx.commit().await?;
        Ok(st)
    }
}
