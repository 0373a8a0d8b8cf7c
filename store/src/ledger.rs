//! Double-entry ledger persistence: accounts and transfers in integer micro-units, with
//! TigerBeetle's discipline. Every transfer has an idempotency id; writing the same id twice
//! with the same fields is a no-op ("exists"), with different fields an error. A transfer that
//! would take an account below its limit is refused and nothing is written.
//!
//! Holds are two-phase: a *pending* transfer reserves its amount on the debit account
//! (`debits_pending`) without moving it; it is later *posted* (for any amount up to the hold,
//! the rest is released) or *voided*, exactly once (a unique index on `pending_id`). Limits are
//! checked against the spendable balance `credits - debits - debits_pending`.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tessera_accounting::ledger::{Hold, LedgerOp, MAX_ACCOUNT_TOTAL_MICROS};
use tessera_accounting::{AccountKind, BalanceLimit, LedgerError, TransferOutcome, TransferSpec};

use crate::{Store, StoreError, audit};

/// An account's balance (`credits - debits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceRecord {
    /// Account name.
    pub account: String,
    /// Balance in micro-units.
    pub balance_micros: i64,
    /// Reserved by open holds on this account (not spendable).
    pub held_micros: i64,
}

/// A stored transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRecord {
    /// The transfer's fields.
    #[serde(flatten)]
    pub spec: TransferSpec,
    /// `posted`, `pending`, `post_pending` or `void_pending`.
    pub kind: String,
    /// The hold a `post_pending` / `void_pending` resolves.
    pub pending_id: Option<String>,
    /// When it was written.
    pub created_at_ms: i64,
}

/// An open hold.
pub type HoldRecord = Hold;

/// Parses an account name once, at the storage boundary.
fn kind(name: &str) -> Result<AccountKind, StoreError> {
    Ok(name.parse::<AccountKind>()?)
}

/// An account's four running totals, as stored.
struct Totals {
    credits: i64,
    debits: i64,
    credits_pending: i64,
    debits_pending: i64,
    min: Option<i64>,
}

/// The totals of `account`, opening it first (zero totals, its kind's default limit) when it
/// does not exist yet.
fn totals(conn: &Connection, account: &str) -> Result<Totals, StoreError> {
    let stored = conn
        .prepare_cached(
            "SELECT credits_micros, debits_micros, credits_pending_micros, debits_pending_micros, \
             min_balance_micros FROM ledger_accounts WHERE name = ?",
        )?
        .query_row(params![account], |r| {
            Ok(Totals {
                credits: r.get(0)?,
                debits: r.get(1)?,
                credits_pending: r.get(2)?,
                debits_pending: r.get(3)?,
                min: r.get(4)?,
            })
        })
        .optional()?;
    if let Some(t) = stored {
        return Ok(t);
    }
    let min = kind(account)?.default_limit().min_balance_micros();
    conn.prepare_cached("INSERT INTO ledger_accounts (name, min_balance_micros) VALUES (?, ?)")?
        .execute(params![account, min])?;
    Ok(Totals {
        credits: 0,
        debits: 0,
        credits_pending: 0,
        debits_pending: 0,
        min,
    })
}

/// `total + delta`, checked: never below zero (a release never takes back more than was
/// reserved) and never above [`MAX_ACCOUNT_TOTAL_MICROS`]. The arithmetic is done here, in
/// Rust, because SQLite turns an overflowing integer sum into a lossy REAL.
fn moved(account: &str, total: i64, delta: i64) -> Result<i64, StoreError> {
    let v = total.checked_add(delta).ok_or(LedgerError::Overflow)?;
    if v > MAX_ACCOUNT_TOTAL_MICROS {
        return Err(LedgerError::AccountTotalAboveMaximum {
            account: account.to_string(),
            max_micros: MAX_ACCOUNT_TOTAL_MICROS,
        }
        .into());
    }
    if v < 0 {
        return Err(StoreError::Corrupt(format!(
            "account {account}: a running total would fall below zero"
        )));
    }
    Ok(v)
}

/// Adds to an account's debits (posted and pending) and checks its limit against the
/// spendable balance.
fn debit(conn: &Connection, account: &str, posted: i64, pending: i64) -> Result<(), StoreError> {
    let t = totals(conn, account)?;
    let debits = moved(account, t.debits, posted)?;
    let debits_pending = moved(account, t.debits_pending, pending)?;
    conn.prepare_cached(
        "UPDATE ledger_accounts SET debits_micros = ?, debits_pending_micros = ? WHERE name = ?",
    )?
    .execute(params![debits, debits_pending, account])?;
    // Every total is in 0..=10^18, so this cannot overflow an i128 (nor, in practice, an i64).
    let spendable = i128::from(t.credits) - i128::from(debits) - i128::from(debits_pending);
    let spendable = i64::try_from(spendable).map_err(|_| LedgerError::Overflow)?;
    if let Some(min) = t.min
        && spendable < min
        && posted.checked_add(pending).ok_or(LedgerError::Overflow)? > 0
    {
        return Err(LedgerError::InsufficientFunds {
            account: account.to_string(),
            spendable_micros: spendable,
            limit_micros: min,
        }
        .into());
    }
    Ok(())
}

/// Adds to an account's credits (posted and pending); a customer's cash or voucher account
/// never holds more than [`AccountKind::max_balance_micros`].
fn credit(conn: &Connection, account: &str, posted: i64, pending: i64) -> Result<(), StoreError> {
    let t = totals(conn, account)?;
    let credits = moved(account, t.credits, posted)?;
    let credits_pending = moved(account, t.credits_pending, pending)?;
    if let Some(max) = kind(account)?.max_balance_micros() {
        let balance = credits.saturating_sub(t.debits);
        if posted > 0 && balance > max {
            return Err(LedgerError::BalanceAboveMaximum {
                account: account.to_string(),
                balance_micros: balance,
                max_micros: max,
            }
            .into());
        }
    }
    conn.prepare_cached(
        "UPDATE ledger_accounts SET credits_micros = ?, credits_pending_micros = ? WHERE name = ?",
    )?
    .execute(params![credits, credits_pending, account])?;
    Ok(())
}

struct Existing {
    debit: String,
    credit: String,
    amount: i64,
    job_id: Option<String>,
    kind: String,
    pending_id: Option<String>,
    memo: String,
}

fn existing(conn: &Connection, id: &str) -> Result<Option<Existing>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT debit_account, credit_account, amount_micros, job_id, kind, pending_id, memo \
             FROM ledger_transfers WHERE transfer_id = ?",
        )?
        .query_row(params![id], |r| {
            Ok(Existing {
                debit: r.get(0)?,
                credit: r.get(1)?,
                amount: r.get(2)?,
                job_id: r.get(3)?,
                kind: r.get(4)?,
                pending_id: r.get(5)?,
                memo: r.get(6)?,
            })
        })
        .optional()?)
}

fn insert_transfer(
    conn: &Connection,
    t: &TransferSpec,
    kind: &str,
    pending_id: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO ledger_transfers (transfer_id, debit_account, credit_account, amount_micros, job_id, memo, \
         created_at_ms, kind, pending_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        t.id,
        t.debit,
        t.credit,
        t.amount_micros,
        t.job_id,
        t.memo,
        now_ms,
        kind,
        pending_id
    ])?;
    audit::append(
        conn,
        now_ms,
        audit::LEDGER_TRANSFER,
        &t.id,
        &serde_json::json!({"kind": kind, "pending_id": pending_id, "transfer": t}),
    )?;
    Ok(())
}

fn mismatch(id: &str) -> StoreError {
    StoreError::IdempotencyMismatch {
        kind: "transfer",
        id: id.to_string(),
    }
}

/// Applies one ledger operation inside the caller's transaction.
pub(crate) fn apply(
    conn: &Connection,
    op: &LedgerOp,
    now_ms: i64,
) -> Result<TransferOutcome, StoreError> {
    match op {
        LedgerOp::Post(t) => post_or_hold(conn, t, false, now_ms),
        LedgerOp::Hold(t) => post_or_hold(conn, t, true, now_ms),
        LedgerOp::PostPending {
            id,
            pending_id,
            amount_micros,
        } => resolve(conn, id, pending_id, Some(*amount_micros), now_ms),
        LedgerOp::VoidPending { id, pending_id } => resolve(conn, id, pending_id, None, now_ms),
    }
}

/// Posts a transfer inside the caller's transaction.
pub(crate) fn post(
    conn: &Connection,
    t: &TransferSpec,
    now_ms: i64,
) -> Result<TransferOutcome, StoreError> {
    post_or_hold(conn, t, false, now_ms)
}

fn post_or_hold(
    conn: &Connection,
    t: &TransferSpec,
    pending: bool,
    now_ms: i64,
) -> Result<TransferOutcome, StoreError> {
    t.validate()?;
    let kind = if pending { "pending" } else { "posted" };
    if let Some(e) = existing(conn, &t.id)? {
        // Every field of the transfer: any difference is a different transfer.
        let same = e.debit == t.debit
            && e.credit == t.credit
            && e.amount == t.amount_micros
            && e.job_id == t.job_id
            && e.memo == t.memo
            && e.kind == kind;
        return if same {
            Ok(TransferOutcome::Exists)
        } else {
            Err(mismatch(&t.id))
        };
    }
    let (posted, held) = if pending {
        (0, t.amount_micros)
    } else {
        (t.amount_micros, 0)
    };
    debit(conn, &t.debit, posted, held)?;
    credit(conn, &t.credit, posted, held)?;
    insert_transfer(conn, t, kind, None, now_ms)?;
    Ok(TransferOutcome::Created)
}

/// Posts (`amount = Some`) or voids (`None`) a hold, once.
fn resolve(
    conn: &Connection,
    id: &str,
    pending_id: &str,
    amount: Option<i64>,
    now_ms: i64,
) -> Result<TransferOutcome, StoreError> {
    let kind = if amount.is_some() {
        "post_pending"
    } else {
        "void_pending"
    };
    let hold = existing(conn, pending_id)?
        .filter(|h| h.kind == "pending")
        .ok_or_else(|| StoreError::NotFound {
            kind: "hold",
            id: pending_id.to_string(),
        })?;
    let moved = amount.unwrap_or(hold.amount);
    if let Some(e) = existing(conn, id)? {
        let same =
            e.kind == kind && e.pending_id.as_deref() == Some(pending_id) && e.amount == moved;
        return if same {
            Ok(TransferOutcome::Exists)
        } else {
            Err(mismatch(id))
        };
    }
    let resolved = conn
        .prepare_cached("SELECT transfer_id FROM ledger_transfers WHERE pending_id = ?")?
        .query_row(params![pending_id], |r| r.get::<_, String>(0))
        .optional()?;
    if let Some(by) = resolved {
        return Err(LedgerError::HoldAlreadyResolved {
            hold: pending_id.to_string(),
            by,
        }
        .into());
    }
    if moved <= 0 || moved > hold.amount {
        return Err(LedgerError::PostExceedsHold {
            hold: pending_id.to_string(),
            held_micros: hold.amount,
            amount_micros: moved,
        }
        .into());
    }
    let posted = if amount.is_some() { moved } else { 0 };
    // Release the whole reservation, then move what is posted.
    debit(conn, &hold.debit, posted, -hold.amount)?;
    credit(conn, &hold.credit, posted, -hold.amount)?;
    let memo = match amount {
        Some(a) => format!("post {a} of hold {pending_id}"),
        None => format!("void hold {pending_id}"),
    };
    let spec = TransferSpec {
        id: id.to_string(),
        debit: hold.debit,
        credit: hold.credit,
        amount_micros: moved,
        job_id: hold.job_id,
        memo,
    };
    insert_transfer(conn, &spec, kind, Some(pending_id), now_ms)?;
    Ok(TransferOutcome::Created)
}

/// The query behind [`open_holds`]: a job's pending transfers not yet posted or voided (`?`
/// the job id).
pub(crate) const OPEN_HOLDS: &str = "SELECT t.transfer_id, t.debit_account, t.credit_account, t.amount_micros \
     FROM ledger_transfers t WHERE t.job_id = ? AND t.kind = 'pending' \
     AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.transfer_id) ORDER BY t.rowid";

/// Holds of `job_id` that are neither posted nor voided, in the order written.
pub(crate) fn open_holds(conn: &Connection, job_id: &str) -> Result<Vec<HoldRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(OPEN_HOLDS)?;
    let mut rows = stmt.query(params![job_id])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(HoldRecord {
            transfer_id: r.get(0)?,
            debit: r.get(1)?,
            credit: r.get(2)?,
            amount_micros: r.get(3)?,
        });
    }
    Ok(out)
}

/// Spendable balance of an account (`credits - debits - debits_pending`) and its limit (the
/// kind's default for an account that does not exist yet).
pub(crate) fn spendable(
    conn: &Connection,
    account: &str,
) -> Result<(i64, BalanceLimit), StoreError> {
    let r = conn
        .prepare_cached(
            "SELECT credits_micros - debits_micros - debits_pending_micros, min_balance_micros \
             FROM ledger_accounts WHERE name = ?",
        )?
        .query_row(params![account], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .optional()?;
    Ok(match r {
        Some((spendable, min)) => (spendable, BalanceLimit::from_min_balance(min)),
        None => (0, kind(account)?.default_limit()),
    })
}

/// A customer's funds in payment order ([`AccountKind::customer_funds`]) with what each can
/// still give above its limit.
pub(crate) fn customer_funds(
    conn: &Connection,
    customer: &str,
) -> Result<Vec<(AccountKind, i64)>, StoreError> {
    let accounts = AccountKind::customer_funds(customer);
    let names: Vec<String> = accounts.iter().map(AccountKind::name).collect();
    // One read for all of them: a JSON array of the names.
    let names_json =
        serde_json::to_string(&names).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut stored = std::collections::HashMap::with_capacity(names.len());
    {
        let mut stmt = conn.prepare_cached(
            "SELECT name, credits_micros - debits_micros - debits_pending_micros, min_balance_micros \
             FROM ledger_accounts WHERE name IN (SELECT value FROM json_each(?))",
        )?;
        let mut rows = stmt.query(params![names_json])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            let spendable: i64 = r.get(1)?;
            let min: Option<i64> = r.get(2)?;
            stored.insert(name, (spendable, BalanceLimit::from_min_balance(min)));
        }
    }
    let mut out = Vec::with_capacity(accounts.len());
    for (account, name) in accounts.into_iter().zip(&names) {
        let (spendable, limit) = match stored.remove(name) {
            Some(s) => s,
            None => (0, kind(name)?.default_limit()),
        };
        out.push((account, limit.headroom(spendable)));
    }
    Ok(out)
}

impl Store {
    /// Posts transfers atomically: all are written or none.
    pub async fn post_transfers(
        &self,
        transfers: &[TransferSpec],
        now_ms: i64,
    ) -> Result<Vec<TransferOutcome>, StoreError> {
        let transfers = transfers.to_vec();
        self.write(move |conn| {
            let mut out = Vec::with_capacity(transfers.len());
            for t in &transfers {
                out.push(post(conn, t, now_ms)?);
            }
            Ok(out)
        })
        .await
    }

    /// Applies ledger operations atomically: all are written or none.
    pub async fn apply_ledger(
        &self,
        ops: &[LedgerOp],
        now_ms: i64,
    ) -> Result<Vec<TransferOutcome>, StoreError> {
        let ops = ops.to_vec();
        self.write(move |conn| {
            let mut out = Vec::with_capacity(ops.len());
            for op in &ops {
                out.push(apply(conn, op, now_ms)?);
            }
            Ok(out)
        })
        .await
    }

    /// A customer's funds in payment order with what each can still give above its limit
    /// (the input of [`tessera_accounting::settle::admission_holds`] and
    /// [`tessera_accounting::settle::term_payment`]).
    pub async fn customer_funds(
        &self,
        customer: &str,
    ) -> Result<Vec<(AccountKind, i64)>, StoreError> {
        self.read(|conn| customer_funds(conn, customer))
    }

    /// Open holds of a job.
    pub async fn job_holds(&self, job_id: &str) -> Result<Vec<HoldRecord>, StoreError> {
        self.read(|conn| open_holds(conn, job_id))
    }

    /// Spendable balance of an account (`credits - debits - pending debits`).
    pub async fn spendable(&self, account: &str) -> Result<i64, StoreError> {
        self.read(|conn| Ok(spendable(conn, account)?.0))
    }

    /// Sets an account's lower balance limit (`None`: no limit; a credit line of `L` is
    /// `Some(-L)`, see [`BalanceLimit::credit_line`]), creating the account.
    pub async fn set_account_limit(
        &self,
        account: &str,
        min_balance_micros: Option<i64>,
    ) -> Result<(), StoreError> {
        kind(account)?;
        let account = account.to_string();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO ledger_accounts (name, min_balance_micros) VALUES (?, ?) \
                 ON CONFLICT(name) DO UPDATE SET min_balance_micros = excluded.min_balance_micros",
            )?
            .execute(params![account, min_balance_micros])?;
            Ok(())
        })
        .await
    }

    /// Balance of one account (0 if it has never moved).
    pub async fn balance(&self, account: &str) -> Result<i64, StoreError> {
        self.read(|conn| {
            let r = conn
                .prepare_cached(
                    "SELECT credits_micros - debits_micros FROM ledger_accounts WHERE name = ?",
                )?
                .query_row(params![account], |r| r.get::<_, i64>(0))
                .optional()?;
            Ok(r.unwrap_or(0))
        })
    }

    /// All balances, by account name.
    pub async fn balances(&self) -> Result<Vec<BalanceRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, credits_micros - debits_micros, debits_pending_micros FROM ledger_accounts ORDER BY name",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(BalanceRecord {
                    account: r.get(0)?,
                    balance_micros: r.get(1)?,
                    held_micros: r.get(2)?,
                });
            }
            Ok(out)
        })
    }

    /// All transfers in the order written.
    pub async fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        self.read(transfers_on)
    }

    /// Transfers per kind (`posted`, `pending`, `post_pending`, `void_pending`), for the
    /// metrics.
    ///
    /// # Errors
    /// `Db`.
    pub async fn count_transfers_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|conn| {
            counts(
                conn,
                "SELECT kind, COUNT(*) FROM ledger_transfers GROUP BY kind ORDER BY kind",
            )
        })
    }

    /// Jobs per state (for the metrics).
    ///
    /// # Errors
    /// `Db`.
    pub async fn count_jobs_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|conn| {
            counts(
                conn,
                "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state",
            )
        })
    }

    /// Checks double entry on the stored data: the sum of debits equals the sum of credits
    /// across accounts (posted and pending), each account's posted totals equal the sums of
    /// its plain and posted-hold transfers, and its pending totals equal its open holds.
    ///
    /// Sums across accounts are taken in `i128` here, not in SQL, so no account's size can
    /// make this check (or `ledger balances`) fail on an overflow.
    pub async fn ledger_balanced(&self) -> Result<bool, StoreError> {
        const POSTED: &str = "kind IN ('posted', 'post_pending')";
        const OPEN: &str = "kind = 'pending' AND NOT EXISTS \
            (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = t.transfer_id)";
        self.read(|conn| {
            let mut sums = [0i128; 4];
            {
                let mut stmt = conn.prepare_cached(
                    "SELECT debits_micros, credits_micros, debits_pending_micros, credits_pending_micros \
                     FROM ledger_accounts",
                )?;
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    for (i, sum) in sums.iter_mut().enumerate() {
                        *sum += i128::from(r.get::<_, i64>(i)?);
                    }
                }
            }
            // Per account, each total against the sum of its own transfers (each bounded by
            // MAX_ACCOUNT_TOTAL_MICROS on write; an overflow here means tampered data).
            let mismatched: i64 = conn
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM ledger_accounts a WHERE \
                        a.debits_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers t WHERE debit_account = a.name AND {POSTED}) \
                     OR a.credits_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers t WHERE credit_account = a.name AND {POSTED}) \
                     OR a.debits_pending_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers t WHERE debit_account = a.name AND {OPEN}) \
                     OR a.credits_pending_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers t WHERE credit_account = a.name AND {OPEN})"
                ))?
                .query_row([], |r| r.get(0))
                .map_err(|e| {
                    // SQLite's SUM raises on overflow (never wraps): only tampered data gets
                    // here.
                    if e.to_string().contains("integer overflow") {
                        StoreError::Corrupt("an account's transfers sum beyond i64".into())
                    } else {
                        e.into()
                    }
                })?;
            let [debits, credits, debits_pending, credits_pending] = sums;
            Ok(debits == credits && debits_pending == credits_pending && mismatched == 0)
        })
    }
}

/// `(name, count)` rows of a `GROUP BY` count, on `conn`.
fn counts(conn: &Connection, sql: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((r.get(0)?, r.get(1)?));
    }
    Ok(out)
}

/// All transfers in the order written, on `conn` (inside a caller's read transaction: one
/// snapshot).
pub(crate) fn transfers_on(conn: &Connection) -> Result<Vec<TransferRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT transfer_id, debit_account, credit_account, amount_micros, job_id, memo, created_at_ms, \
         kind, pending_id FROM ledger_transfers ORDER BY rowid",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(TransferRecord {
            spec: TransferSpec {
                id: r.get(0)?,
                debit: r.get(1)?,
                credit: r.get(2)?,
                amount_micros: r.get(3)?,
                job_id: r.get(4)?,
                memo: r.get(5)?,
            },
            created_at_ms: r.get(6)?,
            kind: r.get(7)?,
            pending_id: r.get(8)?,
        });
    }
    Ok(out)
}
