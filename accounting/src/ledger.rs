//! Ledger vocabulary shared by the store and the scheduler: account names, transfer
//! specifications with 128-bit idempotency ids, and the balance check.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// Amount must be positive.
    #[error("transfer amount must be positive, got {0}")]
    NonPositiveAmount(i64),
    /// Debit and credit accounts are the same.
    #[error("transfer debits and credits the same account {0}")]
    SameAccount(String),
    /// The same transfer id was used with different fields.
    #[error("transfer {0} exists with different fields")]
    ExistsWithDifferentFields(String),
}

/// Well-known ledger accounts, named `kind:owner`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountRef {
    /// A buyer's cash balance.
    CustomerCash(String),
    /// A provider's receivable (earned, not yet paid out).
    ProviderReceivable(String),
    /// The operator's revenue.
    OperatorRevenue,
    /// Money entering or leaving the system (bank, payment gateway).
    External,
}

impl AccountRef {
    /// The account's stored name.
    pub fn name(&self) -> String {
        match self {
            AccountRef::CustomerCash(u) => format!("customer:{u}:cash"),
            AccountRef::ProviderReceivable(p) => format!("provider:{p}:receivable"),
            AccountRef::OperatorRevenue => "operator:revenue".into(),
            AccountRef::External => "external".into(),
        }
    }
}

/// One transfer to post: `amount_micros` moves from `debit` to `credit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSpec {
    /// 128-bit idempotency id, hex (see [`derive_id`]).
    pub id: String,
    /// Account debited (its balance goes down).
    pub debit: String,
    /// Account credited (its balance goes up).
    pub credit: String,
    /// Positive amount in micro-units.
    pub amount_micros: i64,
    /// Job the transfer belongs to, if any.
    pub job_id: Option<String>,
    /// Human-readable reason.
    pub memo: String,
}

impl TransferSpec {
    /// Checks the shape of a transfer before it is written.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if self.amount_micros <= 0 {
            return Err(LedgerError::NonPositiveAmount(self.amount_micros));
        }
        if self.debit == self.credit {
            return Err(LedgerError::SameAccount(self.debit.clone()));
        }
        Ok(())
    }
}

/// A deterministic 128-bit id (hex) from its parts, for idempotent events and transfers.
pub fn derive_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    hex::encode(digest.get(..16).unwrap_or_default())
}

/// Whether a set of account balances sums to zero, as double entry requires.
pub fn sum_is_balanced(balances: impl IntoIterator<Item = i64>) -> bool {
    balances.into_iter().map(i128::from).sum::<i128>() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_unambiguous() {
        assert_eq!(derive_id(&["a", "b"]), derive_id(&["a", "b"]));
        assert_ne!(derive_id(&["ab", ""]), derive_id(&["a", "b"]));
        assert_eq!(derive_id(&["x"]).len(), 32);
    }

    #[test]
    fn transfer_shape_is_checked() {
        let mut t = TransferSpec {
            id: derive_id(&["t"]),
            debit: "a".into(),
            credit: "b".into(),
            amount_micros: 1,
            job_id: None,
            memo: String::new(),
        };
        assert!(t.validate().is_ok());
        t.amount_micros = 0;
        assert_eq!(t.validate(), Err(LedgerError::NonPositiveAmount(0)));
        t.amount_micros = 5;
        t.credit = "a".into();
        assert!(matches!(t.validate(), Err(LedgerError::SameAccount(_))));
        assert!(sum_is_balanced([5, -5, 0]));
        assert!(!sum_is_balanced([5, -4]));
    }
}
