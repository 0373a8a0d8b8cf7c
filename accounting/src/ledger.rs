//! The ledger's vocabulary, defined once for the store, the scheduler and the simulator:
//! account names ([`AccountKind`]), the one balance-limit model ([`BalanceLimit`]), transfer
//! specifications with 128-bit idempotency ids ([`TransferSpec`]), the outcome of a write
//! ([`TransferOutcome`]) and the typed ledger errors ([`LedgerError`]).
//!
//! The system of record is the SQL ledger in `tessera-store` (TigerBeetle discipline:
//! idempotent transfers, two-phase holds, limits checked on the spendable balance).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::money::{MAX_ACCOUNT_TOTAL_MICROS, MAX_AMOUNT_MICROS};

/// Why a ledger operation failed. Every variant says what happened, so callers (the gateway's
/// API codes, the simulator's `rejected:` lines) can tell insufficient funds from a bad
/// request without reading a string.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LedgerError {
    /// Amount must be positive.
    #[error("transfer amount must be positive, got {0}")]
    NonPositiveAmount(i64),
    /// Debit and credit accounts are the same.
    #[error("transfer debits and credits the same account {0}")]
    SameAccount(String),
    /// The name is not one of the [`AccountKind`] names (or a customer id contains `:`).
    #[error("unknown account {0}")]
    UnknownAccount(String),
    /// The transfer would take the debit account's spendable balance below its limit
    /// (insufficient funds).
    #[error(
        "insufficient funds: account {account} would fall to {spendable_micros} micros spendable, below its limit of {limit_micros}"
    )]
    InsufficientFunds {
        /// Account debited.
        account: String,
        /// Its spendable balance after the transfer.
        spendable_micros: i64,
        /// Its lower limit.
        limit_micros: i64,
    },
    /// The hold was already posted or voided (by the named transfer).
    #[error("hold {hold} was already resolved by {by}")]
    HoldAlreadyResolved {
        /// The pending transfer.
        hold: String,
        /// The transfer that resolved it.
        by: String,
    },
    /// A post of a hold names an amount outside `1 ..= hold`.
    #[error("hold {hold} of {held_micros} micros cannot be posted for {amount_micros}")]
    PostExceedsHold {
        /// The pending transfer.
        hold: String,
        /// Its amount.
        held_micros: i64,
        /// The amount asked for.
        amount_micros: i64,
    },
    /// A balance or a sum of amounts does not fit in an i64 of micro-units.
    #[error("ledger arithmetic overflows")]
    Overflow,
    /// One amount is above [`MAX_AMOUNT_MICROS`].
    #[error(
        "amount of {amount_micros} micros is above the maximum of {max_micros} micros (10^9 yuan) for one amount"
    )]
    AmountAboveMaximum {
        /// The amount asked for.
        amount_micros: i64,
        /// [`MAX_AMOUNT_MICROS`].
        max_micros: i64,
    },
    /// The transfer would take a customer's fund account above [`MAX_AMOUNT_MICROS`].
    #[error(
        "account {account} would hold {balance_micros} micros, above the maximum balance of {max_micros} micros (10^9 yuan)"
    )]
    BalanceAboveMaximum {
        /// The account credited.
        account: String,
        /// Its balance after the transfer (saturated).
        balance_micros: i64,
        /// [`MAX_AMOUNT_MICROS`].
        max_micros: i64,
    },
    /// The transfer would take one of an account's running totals above
    /// [`MAX_ACCOUNT_TOTAL_MICROS`].
    #[error(
        "account {account} has reached the ledger's maximum running total of {max_micros} micros; it takes no further transfers"
    )]
    AccountTotalAboveMaximum {
        /// The account.
        account: String,
        /// [`MAX_ACCOUNT_TOTAL_MICROS`].
        max_micros: i64,
    },
}

/// Outcome of an idempotent write (a transfer, a hold, a bill line): written now, or already
/// written with the same fields. The same id with *different* fields is an error
/// (`StoreError::IdempotencyMismatch` in the store), never an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOutcome {
    /// Newly written.
    Created,
    /// The same write was already made; nothing changed.
    Exists,
}

/// The lower limit of an account's spendable balance (`credits − debits − pending debits`).
///
/// The one limit model of the ledger: the store writes [`BalanceLimit::min_balance_micros`]
/// when it creates an account ([`AccountKind::default_limit`]) and refuses any debit that
/// takes the spendable balance below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceLimit {
    /// The spendable balance never goes below `min_micros` (0 for funds, holds and
    /// receivables; `−line` for a credit line).
    AtLeast(i64),
    /// No lower limit (operator, external, arrears and paid-out accounts).
    Unlimited,
}

impl BalanceLimit {
    /// The limit of a customer's credit line of `line_micros` (manual §3.8.5: 信用额度): the
    /// credit account may go down to `−line_micros`.
    pub fn credit_line(line_micros: i64) -> Result<Self, LedgerError> {
        if line_micros < 0 {
            return Err(LedgerError::NonPositiveAmount(line_micros));
        }
        check_amount(line_micros)?;
        line_micros
            .checked_neg()
            .map(Self::AtLeast)
            .ok_or(LedgerError::Overflow)
    }

    /// The stored form: `Some(min)` or `None` for no limit.
    pub fn min_balance_micros(self) -> Option<i64> {
        match self {
            Self::AtLeast(m) => Some(m),
            Self::Unlimited => None,
        }
    }

    /// From the stored form.
    pub fn from_min_balance(min: Option<i64>) -> Self {
        min.map_or(Self::Unlimited, Self::AtLeast)
    }

    /// What can still be drawn from an account with `spendable_micros` before the limit
    /// (never negative; `i64::MAX` for no limit).
    pub fn headroom(self, spendable_micros: i64) -> i64 {
        match self {
            Self::AtLeast(m) => spendable_micros.saturating_sub(m).max(0),
            Self::Unlimited => i64::MAX,
        }
    }

    /// Whether a spendable balance respects the limit.
    pub fn allows(self, spendable_micros: i64) -> bool {
        match self {
            Self::AtLeast(m) => spendable_micros >= m,
            Self::Unlimited => true,
        }
    }
}

/// The ledger's accounts, named `kind:owner` in storage (`customer:alice:cash`,
/// `provider:p:receivable`, `operator:revenue`, `external`). Customer and provider ids may
/// not contain `:`, the separator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AccountKind {
    /// Customer cash (现金账户).
    CustomerCash(String),
    /// Customer recharge-voucher balance (充值现金券账户).
    CustomerRechargeVoucher(String),
    /// Customer deduction-voucher balance (抵扣现金券).
    CustomerDeductionVoucher(String),
    /// Customer credit line (信用额度): goes negative down to its set limit.
    CustomerCredit(String),
    /// Funds held for running jobs and being charged.
    CustomerHolds(String),
    /// Customer arrears (欠费, debit-normal, unlimited).
    CustomerArrears(String),
    /// Provider receivable: earned, not yet paid out (never negative).
    ProviderReceivable(String),
    /// Provider paid out.
    ProviderPaidOut(String),
    /// Operator revenue.
    OperatorRevenue,
    /// Operator refunds (contra revenue).
    OperatorRefunds,
    /// Operator marketing: funds coupons and vouchers.
    OperatorMarketing,
    /// Money entering or leaving the system (bank, payment gateway).
    External,
}

impl AccountKind {
    /// The stored name.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// The limit an account of this kind gets when it is created: customer funds (cash,
    /// vouchers, credit), holds and provider receivables never go below zero — a credit line
    /// is then lowered explicitly ([`BalanceLimit::credit_line`]); arrears, paid-out, operator
    /// and external accounts are unlimited.
    pub fn default_limit(&self) -> BalanceLimit {
        match self {
            Self::CustomerCash(_)
            | Self::CustomerRechargeVoucher(_)
            | Self::CustomerDeductionVoucher(_)
            | Self::CustomerCredit(_)
            | Self::CustomerHolds(_)
            | Self::ProviderReceivable(_) => BalanceLimit::AtLeast(0),
            Self::CustomerArrears(_)
            | Self::ProviderPaidOut(_)
            | Self::OperatorRevenue
            | Self::OperatorRefunds
            | Self::OperatorMarketing
            | Self::External => BalanceLimit::Unlimited,
        }
    }

    /// The largest balance (`credits − debits`) an account of this kind may hold:
    /// [`MAX_AMOUNT_MICROS`] for a customer's cash and vouchers (what deposits fill), none
    /// for the others (their running totals are bounded by [`MAX_ACCOUNT_TOTAL_MICROS`]).
    pub fn max_balance_micros(&self) -> Option<i64> {
        match self {
            Self::CustomerCash(_)
            | Self::CustomerRechargeVoucher(_)
            | Self::CustomerDeductionVoucher(_) => Some(MAX_AMOUNT_MICROS),
            _ => None,
        }
    }

    /// The customer's funding accounts in the manual's payment order (§3.11: deduction
    /// voucher, recharge voucher, cash, credit).
    pub fn customer_funds(customer: &str) -> [AccountKind; 4] {
        let c = customer.to_string();
        [
            Self::CustomerDeductionVoucher(c.clone()),
            Self::CustomerRechargeVoucher(c.clone()),
            Self::CustomerCash(c.clone()),
            Self::CustomerCredit(c),
        ]
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CustomerCash(c) => write!(f, "customer:{c}:cash"),
            Self::CustomerRechargeVoucher(c) => write!(f, "customer:{c}:recharge_voucher"),
            Self::CustomerDeductionVoucher(c) => write!(f, "customer:{c}:deduction_voucher"),
            Self::CustomerCredit(c) => write!(f, "customer:{c}:credit"),
            Self::CustomerHolds(c) => write!(f, "customer:{c}:holds"),
            Self::CustomerArrears(c) => write!(f, "customer:{c}:arrears"),
            Self::ProviderReceivable(p) => write!(f, "provider:{p}:receivable"),
            Self::ProviderPaidOut(p) => write!(f, "provider:{p}:paid_out"),
            Self::OperatorRevenue => f.write_str("operator:revenue"),
            Self::OperatorRefunds => f.write_str("operator:refunds"),
            Self::OperatorMarketing => f.write_str("operator:marketing"),
            Self::External => f.write_str("external"),
        }
    }
}

impl FromStr for AccountKind {
    type Err = LedgerError;

    /// Parses a stored name (the inverse of [`AccountKind::name`]).
    fn from_str(s: &str) -> Result<Self, LedgerError> {
        let unknown = || LedgerError::UnknownAccount(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        let owned = |o: &str| -> Result<String, LedgerError> {
            if o.is_empty() {
                Err(unknown())
            } else {
                Ok(o.to_string())
            }
        };
        Ok(match parts.as_slice() {
            ["customer", c, "cash"] => Self::CustomerCash(owned(c)?),
            ["customer", c, "recharge_voucher"] => Self::CustomerRechargeVoucher(owned(c)?),
            ["customer", c, "deduction_voucher"] => Self::CustomerDeductionVoucher(owned(c)?),
            ["customer", c, "credit"] => Self::CustomerCredit(owned(c)?),
            ["customer", c, "holds"] => Self::CustomerHolds(owned(c)?),
            ["customer", c, "arrears"] => Self::CustomerArrears(owned(c)?),
            ["provider", p, "receivable"] => Self::ProviderReceivable(owned(p)?),
            ["provider", p, "paid_out"] => Self::ProviderPaidOut(owned(p)?),
            ["operator", "revenue"] => Self::OperatorRevenue,
            ["operator", "refunds"] => Self::OperatorRefunds,
            ["operator", "marketing"] => Self::OperatorMarketing,
            ["external"] => Self::External,
            _ => return Err(unknown()),
        })
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
    /// Checks the shape of a transfer before it is written: a positive amount of at most
    /// [`MAX_AMOUNT_MICROS`] between two different accounts.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if self.amount_micros <= 0 {
            return Err(LedgerError::NonPositiveAmount(self.amount_micros));
        }
        check_amount(self.amount_micros)?;
        if self.debit == self.credit {
            return Err(LedgerError::SameAccount(self.debit.clone()));
        }
        Ok(())
    }
}

/// One operation on the ledger, as the store applies it (all of a batch or none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOp {
    /// A plain transfer.
    Post(TransferSpec),
    /// A hold: reserves `amount_micros` on the debit account (a pending transfer).
    Hold(TransferSpec),
    /// Posts the hold `pending_id` for `amount_micros` (at most the hold; the rest is
    /// released).
    PostPending {
        /// This operation's idempotency id.
        id: String,
        /// The hold.
        pending_id: String,
        /// Amount to move (1 ..= the hold's amount).
        amount_micros: i64,
    },
    /// Releases the hold `pending_id`.
    VoidPending {
        /// This operation's idempotency id.
        id: String,
        /// The hold.
        pending_id: String,
    },
}

/// An open hold (a pending transfer neither posted nor voided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The pending transfer's id.
    pub transfer_id: String,
    /// Account the funds are reserved on.
    pub debit: String,
    /// Account they will go to.
    pub credit: String,
    /// Reserved amount in micro-units.
    pub amount_micros: i64,
}

/// The void that releases `hold` (idempotency id derived from the hold's id).
pub fn void_hold(hold: &Hold) -> LedgerOp {
    LedgerOp::VoidPending {
        id: derive_id(&["void", &hold.transfer_id]),
        pending_id: hold.transfer_id.clone(),
    }
}

/// Refuses an amount above [`MAX_AMOUNT_MICROS`] (in absolute value).
pub fn check_amount(amount_micros: i64) -> Result<(), LedgerError> {
    if amount_micros.unsigned_abs() > MAX_AMOUNT_MICROS.unsigned_abs() {
        return Err(LedgerError::AmountAboveMaximum {
            amount_micros,
            max_micros: MAX_AMOUNT_MICROS,
        });
    }
    Ok(())
}

/// Sum of amounts with overflow checked.
pub fn checked_sum(amounts: impl IntoIterator<Item = i64>) -> Result<i64, LedgerError> {
    amounts
        .into_iter()
        .try_fold(0i64, |acc, a| acc.checked_add(a))
        .ok_or(LedgerError::Overflow)
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
    fn names_parse_back_and_limits_follow_the_kind() {
        for k in [
            AccountKind::CustomerCash("a".into()),
            AccountKind::CustomerRechargeVoucher("a".into()),
            AccountKind::CustomerDeductionVoucher("a".into()),
            AccountKind::CustomerCredit("a".into()),
            AccountKind::CustomerHolds("a".into()),
            AccountKind::CustomerArrears("a".into()),
            AccountKind::ProviderReceivable("p".into()),
            AccountKind::ProviderPaidOut("p".into()),
            AccountKind::OperatorRevenue,
            AccountKind::OperatorRefunds,
            AccountKind::OperatorMarketing,
            AccountKind::External,
        ] {
            assert_eq!(k.name().parse::<AccountKind>(), Ok(k.clone()));
        }
        assert!("customer:a:b:cash".parse::<AccountKind>().is_err());
        assert!("customer::cash".parse::<AccountKind>().is_err());
        assert!("bank".parse::<AccountKind>().is_err());
        assert_eq!(
            AccountKind::CustomerCash("a".into()).default_limit(),
            BalanceLimit::AtLeast(0)
        );
        assert_eq!(
            AccountKind::CustomerArrears("a".into()).default_limit(),
            BalanceLimit::Unlimited
        );
        let line = BalanceLimit::credit_line(300).expect("line");
        assert_eq!(line.min_balance_micros(), Some(-300));
        assert_eq!(line.headroom(-100), 200);
        assert!(line.allows(-300) && !line.allows(-301));
        assert_eq!(BalanceLimit::Unlimited.headroom(-5), i64::MAX);
        assert!(BalanceLimit::credit_line(-1).is_err());
    }

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
        t.credit = "b".into();
        t.amount_micros = MAX_AMOUNT_MICROS;
        assert!(t.validate().is_ok());
        t.amount_micros = MAX_AMOUNT_MICROS + 1;
        assert!(matches!(
            t.validate(),
            Err(LedgerError::AmountAboveMaximum {
                max_micros: MAX_AMOUNT_MICROS,
                ..
            })
        ));
        t.amount_micros = i64::MAX;
        assert!(t.validate().is_err());
        assert!(sum_is_balanced([5, -5, 0]));
        assert!(!sum_is_balanced([5, -4]));
    }
}
