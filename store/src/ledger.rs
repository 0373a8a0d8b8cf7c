//! Double-entry ledger persistence: accounts and transfers in integer micro-units. Every
//! transfer has an idempotency id; posting the same id twice with the same fields is a no-op
//! ("exists"), with different fields an error. A transfer that would take an account below its
//! limit is refused and nothing is written.

use serde::Serialize;
use sqlx::{Row, SqliteConnection};
use tessera_accounting::TransferSpec;

use crate::{Store, StoreError, audit};

/// TigerBeetle-style outcome of posting a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TransferOutcome {
    /// Newly written.
    Created,
    /// The same transfer was already written.
    Exists,
}

/// An account's balance (`credits - debits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceRecord {
    /// Account name.
    pub account: String,
    /// Balance in micro-units.
    pub balance_micros: i64,
}

/// A stored transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRecord {
    /// The transfer's fields.
    #[serde(flatten)]
    pub spec: TransferSpec,
    /// When it was written.
    pub created_at_ms: i64,
}

/// Posts a transfer inside the caller's transaction.
pub(crate) async fn post(
    conn: &mut SqliteConnection,
    t: &TransferSpec,
    now_ms: i64,
) -> Result<TransferOutcome, StoreError> {
    t.validate()
        .map_err(|e| StoreError::Ledger(e.to_string()))?;
    let existing = sqlx::query(
        "SELECT debit_account, credit_account, amount_micros, job_id FROM ledger_transfers WHERE transfer_id = ?",
    )
    .bind(&t.id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(r) = existing {
        let same = r.try_get::<String, _>(0)? == t.debit
            && r.try_get::<String, _>(1)? == t.credit
            && r.try_get::<i64, _>(2)? == t.amount_micros
            && r.try_get::<Option<String>, _>(3)? == t.job_id;
        return if same {
            Ok(TransferOutcome::Exists)
        } else {
            Err(StoreError::IdempotencyMismatch {
                kind: "transfer",
                id: t.id.clone(),
            })
        };
    }
    for name in [&t.debit, &t.credit] {
        sqlx::query("INSERT INTO ledger_accounts (name) VALUES (?) ON CONFLICT(name) DO NOTHING")
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    let debit = sqlx::query(
        "UPDATE ledger_accounts SET debits_micros = debits_micros + ? WHERE name = ? \
         RETURNING credits_micros - debits_micros, min_balance_micros",
    )
    .bind(t.amount_micros)
    .bind(&t.debit)
    .fetch_one(&mut *conn)
    .await?;
    let balance: i64 = debit.try_get(0)?;
    let min: Option<i64> = debit.try_get(1)?;
    if let Some(min) = min {
        if balance < min {
            return Err(StoreError::Ledger(format!(
                "account {} would fall to {balance} micros, below its limit of {min}",
                t.debit
            )));
        }
    }
    sqlx::query("UPDATE ledger_accounts SET credits_micros = credits_micros + ? WHERE name = ?")
        .bind(t.amount_micros)
        .bind(&t.credit)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO ledger_transfers (transfer_id, debit_account, credit_account, amount_micros, job_id, memo, created_at_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&t.id)
    .bind(&t.debit)
    .bind(&t.credit)
    .bind(t.amount_micros)
    .bind(&t.job_id)
    .bind(&t.memo)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    audit::append(
        conn,
        now_ms,
        "ledger_transfer",
        &t.id,
        &serde_json::json!(t),
    )
    .await?;
    Ok(TransferOutcome::Created)
}

impl Store {
    /// Posts transfers atomically: all are written or none.
    pub async fn post_transfers(
        &self,
        transfers: &[TransferSpec],
        now_ms: i64,
    ) -> Result<Vec<TransferOutcome>, StoreError> {
        let mut tx = self.write.begin().await?;
        let mut out = Vec::with_capacity(transfers.len());
        for t in transfers {
            out.push(post(&mut tx, t, now_ms).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Sets an account's lower balance limit (`None`: no limit), creating the account.
    pub async fn set_account_limit(
        &self,
        account: &str,
        min_balance_micros: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ledger_accounts (name, min_balance_micros) VALUES (?, ?) \
             ON CONFLICT(name) DO UPDATE SET min_balance_micros = excluded.min_balance_micros",
        )
        .bind(account)
        .bind(min_balance_micros)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Balance of one account (0 if it has never moved).
    pub async fn balance(&self, account: &str) -> Result<i64, StoreError> {
        let r = sqlx::query(
            "SELECT credits_micros - debits_micros FROM ledger_accounts WHERE name = ?",
        )
        .bind(account)
        .fetch_optional(&self.read)
        .await?;
        Ok(match r {
            Some(r) => r.try_get(0)?,
            None => 0,
        })
    }

    /// All balances, by account name.
    pub async fn balances(&self) -> Result<Vec<BalanceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, credits_micros - debits_micros FROM ledger_accounts ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BalanceRecord {
                    account: r.try_get(0)?,
                    balance_micros: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// All transfers in the order written.
    pub async fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT transfer_id, debit_account, credit_account, amount_micros, job_id, memo, created_at_ms \
             FROM ledger_transfers ORDER BY rowid",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TransferRecord {
                    spec: TransferSpec {
                        id: r.try_get(0)?,
                        debit: r.try_get(1)?,
                        credit: r.try_get(2)?,
                        amount_micros: r.try_get(3)?,
                        job_id: r.try_get(4)?,
                        memo: r.try_get(5)?,
                    },
                    created_at_ms: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Checks double entry on the stored data: the sum of debits equals the sum of credits
    /// across accounts, and each account's totals equal the sums of its transfers.
    pub async fn ledger_balanced(&self) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "SELECT (SELECT COALESCE(SUM(debits_micros), 0) FROM ledger_accounts), \
                    (SELECT COALESCE(SUM(credits_micros), 0) FROM ledger_accounts), \
                    (SELECT COUNT(*) FROM ledger_accounts a WHERE \
                        a.debits_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers WHERE debit_account = a.name) \
                     OR a.credits_micros != (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger_transfers WHERE credit_account = a.name))",
        )
        .fetch_one(&self.read)
        .await?;
        let debits: i64 = r.try_get(0)?;
        let credits: i64 = r.try_get(1)?;
        let mismatched: i64 = r.try_get(2)?;
        Ok(debits == credits && mismatched == 0)
    }
}
