//! An in-memory double-entry ledger with TigerBeetle semantics.
//!
//! * **Accounts** carry `debits_pending`, `debits_posted`, `credits_pending`,
//!   `credits_posted` and flags: `debits_must_not_exceed_credits` (a balance that may not go
//!   negative: cash, vouchers) or `credits_must_not_exceed_debits`, each with an explicit
//!   extra allowance `limit` (a credit line: debits may exceed credits by at most `limit`).
//!   Pending amounts count against the constraint, as in TigerBeetle.
//! * **Transfers** have a 128-bit id; creating one that exists returns
//!   [`TransferOutcome::Exists`] when every field is equal and
//!   [`TransferError::ExistsWithDifferentFields`] otherwise — so a retry changes nothing.
//! * **Two-phase**: a `pending` transfer reserves the amount; a `post_pending_transfer`
//!   posts it (possibly a smaller amount; `amount = 0` means the full pending amount, the
//!   rest is released); a `void_pending_transfer` releases it. A pending transfer with a
//!   timeout expires (is released) at `created_at + timeout`; expiry is evaluated against the
//!   `now` argument, never a wall clock.
//! * **Linked chains**: a transfer with `linked` is chained to the next one; the chain
//!   succeeds or fails as a whole. The failing transfer reports its own error, the others
//!   [`TransferError::LinkedEventFailed`]; a chain left open at the end of the batch fails
//!   with [`TransferError::LinkedEventChainOpen`] on its last transfer.
//! * **Choice**: within a chain, an event that already [`TransferOutcome::Exists`] counts as
//!   success (a retried chain reports `Exists` for every event and changes nothing).
//!
//! Account kinds per customer (cash, recharge voucher, deduction voucher, credit, holds,
//! arrears), per provider (receivable, paid out) and of the operator (revenue, refunds,
//! marketing, external) are [`AccountKind`]; their names are [`crate::ledger::AccountKind`]
//! (same names for the kinds both know), and ids are [`crate::ledger::derive_id`] of the name.

use std::collections::{BTreeMap, BTreeSet};

use crate::civil::Millis;
use crate::ledger::{AccountKind, TransferSpec, derive_id};

/// Account id.
pub type AccountId = u128;
/// Transfer id.
pub type TransferId = u128;

/// Most transfers in one batch.
pub const MAX_BATCH: usize = 8_190;
/// Most accounts in one ledger.
pub const MAX_ACCOUNTS: usize = 1_000_000;
/// The one currency ledger used by [`AccountKind`] accounts (CNY micros).
pub const LEDGER_CNY: u32 = 1;

/// Account constraint flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountFlags {
    /// `debits_pending + debits_posted <= credits_posted + limit`.
    pub debits_must_not_exceed_credits: bool,
    /// `credits_pending + credits_posted <= debits_posted + limit`.
    pub credits_must_not_exceed_debits: bool,
}

/// An account to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// Non-zero id.
    pub id: AccountId,
    /// Human-readable name.
    pub name: String,
    /// Ledger (currency); transfers only join accounts of one ledger.
    pub ledger: u32,
    /// Free-form account code.
    pub code: u16,
    /// Constraint flags.
    pub flags: AccountFlags,
    /// Extra allowance for the constraint flag.
    pub limit: u64,
}

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// What it was created with (the limit may change, see [`Ledger::set_limit`]).
    pub spec: AccountSpec,
    /// Reserved debits.
    pub debits_pending: u128,
    /// Posted debits.
    pub debits_posted: u128,
    /// Reserved credits.
    pub credits_pending: u128,
    /// Posted credits.
    pub credits_posted: u128,
}

impl Account {
    /// Posted credits minus posted debits (a liability / credit-normal balance).
    pub fn balance(&self) -> i128 {
        self.credits_posted as i128 - self.debits_posted as i128
    }

    /// Credit-normal balance less pending debits (what can still be spent).
    pub fn available(&self) -> i128 {
        self.balance() - self.debits_pending as i128
    }

    fn within_limits(&self) -> bool {
        let limit = u128::from(self.spec.limit);
        let f = self.spec.flags;
        let debits_ok = !f.debits_must_not_exceed_credits
            || self.debits_pending + self.debits_posted <= self.credits_posted + limit;
        let credits_ok = !f.credits_must_not_exceed_debits
            || self.credits_pending + self.credits_posted <= self.debits_posted + limit;
        debits_ok && credits_ok
    }
}

/// A successful account creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountOutcome {
    /// Created now.
    Created,
    /// Already existed with the same fields.
    Exists,
}

/// Why an account could not be created or changed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AccountError {
    /// Account id 0 or `u128::MAX` is reserved.
    #[error("account id must not be zero or u128::MAX")]
    InvalidId,
    /// Ledger 0 is reserved.
    #[error("account ledger must not be zero")]
    LedgerMustNotBeZero,
    /// Both constraint flags set.
    #[error("account flags are mutually exclusive")]
    FlagsAreMutuallyExclusive,
    /// The id exists with other fields.
    #[error("account {0:032x} exists with different fields")]
    ExistsWithDifferentFields(AccountId),
    /// No account with this id.
    #[error("account {0:032x} not found")]
    NotFound(AccountId),
    /// The new limit would make the current balances violate the constraint.
    #[error("account {0:032x}: limit below what is already in use")]
    LimitBelowUsage(AccountId),
    /// Too many accounts.
    #[error("too many accounts (max {MAX_ACCOUNTS})")]
    TooMany,
}

/// Transfer flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferFlags {
    /// Chained to the next transfer of the batch.
    pub linked: bool,
    /// Phase one of a two-phase transfer.
    pub pending: bool,
    /// Posts the pending transfer `pending_id`.
    pub post_pending_transfer: bool,
    /// Voids the pending transfer `pending_id`.
    pub void_pending_transfer: bool,
}

/// A transfer to create.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Non-zero id.
    pub id: TransferId,
    /// Debited account (0 on post/void = the pending transfer's).
    pub debit_account_id: AccountId,
    /// Credited account (0 on post/void = the pending transfer's).
    pub credit_account_id: AccountId,
    /// Amount (on post: 0 = the full pending amount; on void: 0 or the pending amount).
    pub amount: u64,
    /// The pending transfer a post/void refers to.
    pub pending_id: TransferId,
    /// Milliseconds until a pending transfer expires (0 = never); pending only.
    pub timeout_ms: u64,
    /// Ledger (0 on post/void = the pending transfer's).
    pub ledger: u32,
    /// Transfer code (0 on post/void = the pending transfer's).
    pub code: u16,
    /// Flags.
    pub flags: TransferFlags,
    /// Free user data (e.g. a job id hash).
    pub user_data: u128,
}

/// A successful transfer creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Created now.
    Created,
    /// Already existed with the same fields; nothing changed.
    Exists,
}

/// Why a transfer was not created (one variant per failure).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TransferError {
    /// Another transfer of its linked chain failed.
    #[error("linked event failed")]
    LinkedEventFailed,
    /// The batch ended inside a linked chain.
    #[error("linked event chain open")]
    LinkedEventChainOpen,
    /// The batch is larger than [`MAX_BATCH`].
    #[error("batch too large")]
    BatchTooLarge,
    /// Id 0 or `u128::MAX`.
    #[error("transfer id must not be zero or u128::MAX")]
    InvalidId,
    /// More than one of pending / post / void.
    #[error("transfer flags are mutually exclusive")]
    FlagsAreMutuallyExclusive,
    /// Debit account id is 0.
    #[error("debit account id must not be zero")]
    DebitAccountIdMustNotBeZero,
    /// Credit account id is 0.
    #[error("credit account id must not be zero")]
    CreditAccountIdMustNotBeZero,
    /// Debit and credit are the same account.
    #[error("accounts must be different")]
    AccountsMustBeDifferent,
    /// A plain or pending transfer carries a pending id.
    #[error("pending id must be zero")]
    PendingIdMustBeZero,
    /// A post/void lacks its pending id.
    #[error("pending id must not be zero")]
    PendingIdMustNotBeZero,
    /// A post/void refers to itself.
    #[error("pending id must be different from the id")]
    PendingIdMustBeDifferent,
    /// A timeout on a non-pending transfer.
    #[error("timeout is reserved for pending transfers")]
    TimeoutReservedForPendingTransfer,
    /// Amount 0 on a plain or pending transfer.
    #[error("amount must not be zero")]
    AmountMustNotBeZero,
    /// Ledger 0 on a plain or pending transfer.
    #[error("ledger must not be zero")]
    LedgerMustNotBeZero,
    /// Code 0 on a plain or pending transfer.
    #[error("code must not be zero")]
    CodeMustNotBeZero,
    /// No debit account with that id.
    #[error("debit account not found")]
    DebitAccountNotFound,
    /// No credit account with that id.
    #[error("credit account not found")]
    CreditAccountNotFound,
    /// The accounts belong to different ledgers.
    #[error("accounts must have the same ledger")]
    AccountsMustHaveTheSameLedger,
    /// The transfer's ledger differs from the accounts'.
    #[error("transfer must have the same ledger as its accounts")]
    TransferMustHaveTheSameLedgerAsAccounts,
    /// No pending transfer with that id.
    #[error("pending transfer not found")]
    PendingTransferNotFound,
    /// The referenced transfer is not a pending one.
    #[error("referenced transfer is not pending")]
    PendingTransferNotPending,
    /// A post/void names another debit account than its pending transfer.
    #[error("pending transfer has a different debit account")]
    PendingTransferHasDifferentDebitAccountId,
    /// A post/void names another credit account than its pending transfer.
    #[error("pending transfer has a different credit account")]
    PendingTransferHasDifferentCreditAccountId,
    /// A post/void names another ledger than its pending transfer.
    #[error("pending transfer has a different ledger")]
    PendingTransferHasDifferentLedger,
    /// A post/void names another code than its pending transfer.
    #[error("pending transfer has a different code")]
    PendingTransferHasDifferentCode,
    /// A post exceeds the pending amount.
    #[error("post exceeds the pending amount")]
    ExceedsPendingTransferAmount,
    /// A void names an amount other than the pending amount.
    #[error("void must name the pending amount or zero")]
    PendingTransferHasDifferentAmount,
    /// The pending transfer was posted already.
    #[error("pending transfer already posted")]
    PendingTransferAlreadyPosted,
    /// The pending transfer was voided already.
    #[error("pending transfer already voided")]
    PendingTransferAlreadyVoided,
    /// The pending transfer timed out.
    #[error("pending transfer expired")]
    PendingTransferExpired,
    /// The id exists with other fields.
    #[error("transfer exists with different fields")]
    ExistsWithDifferentFields,
    /// The debit would exceed the debit account's credits (+ limit).
    #[error("debit account would exceed its credits")]
    ExceedsCredits,
    /// The credit would exceed the credit account's debits (+ limit).
    #[error("credit account would exceed its debits")]
    ExceedsDebits,
    /// A balance would overflow.
    #[error("balance overflow")]
    Overflow,
}

/// State of a pending transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingStatus {
    /// Reserved.
    Pending,
    /// Posted by a later transfer.
    Posted,
    /// Voided by a later transfer.
    Voided,
    /// Timed out.
    Expired,
}

/// A stored transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTransfer {
    /// Exactly as submitted (used for the `Exists` comparison).
    pub submitted: Transfer,
    /// Resolved debit account.
    pub debit_account_id: AccountId,
    /// Resolved credit account.
    pub credit_account_id: AccountId,
    /// Resolved amount moved or reserved.
    pub amount: u64,
    /// The `now` of the batch that created it.
    pub created_at: Millis,
}

enum Undo {
    Account(AccountId, u128, u128, u128, u128),
    Inserted(TransferId),
    Status(TransferId, Option<PendingStatus>),
    ExpiryAdded(Millis, TransferId),
    ExpiryRemoved(Millis, TransferId),
}

/// Why the ledger's invariants do not hold (never expected; checked by tests).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvariantError {
    /// Total posted debits differ from total posted credits.
    #[error("posted debits {0} != posted credits {1}")]
    PostedUnbalanced(u128, u128),
    /// Total pending debits differ from total pending credits.
    #[error("pending debits {0} != pending credits {1}")]
    PendingUnbalanced(u128, u128),
    /// An account violates its constraint.
    #[error("account {0} violates its constraint")]
    LimitViolated(String),
}

/// The in-memory ledger.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    accounts: BTreeMap<AccountId, Account>,
    transfers: BTreeMap<TransferId, StoredTransfer>,
    status: BTreeMap<TransferId, PendingStatus>,
    expiries: BTreeSet<(Millis, TransferId)>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates an account (idempotent).
    pub fn create_account(&mut self, spec: AccountSpec) -> Result<AccountOutcome, AccountError> {
        if spec.id == 0 || spec.id == u128::MAX {
            return Err(AccountError::InvalidId);
        }
        if spec.ledger == 0 {
            return Err(AccountError::LedgerMustNotBeZero);
        }
        if spec.flags.debits_must_not_exceed_credits && spec.flags.credits_must_not_exceed_debits {
            return Err(AccountError::FlagsAreMutuallyExclusive);
        }
        if let Some(a) = self.accounts.get(&spec.id) {
            return if a.spec == spec {
                Ok(AccountOutcome::Exists)
            } else {
                Err(AccountError::ExistsWithDifferentFields(spec.id))
            };
        }
        if self.accounts.len() >= MAX_ACCOUNTS {
            return Err(AccountError::TooMany);
        }
        self.accounts.insert(
            spec.id,
            Account {
                spec,
                debits_pending: 0,
                debits_posted: 0,
                credits_pending: 0,
                credits_posted: 0,
            },
        );
        Ok(AccountOutcome::Created)
    }

    /// Changes an account's extra allowance (a credit line), refusing a limit the current
    /// balances would violate.
    pub fn set_limit(&mut self, id: AccountId, limit: u64) -> Result<(), AccountError> {
        let a = self
            .accounts
            .get_mut(&id)
            .ok_or(AccountError::NotFound(id))?;
        let old = a.spec.limit;
        a.spec.limit = limit;
        if !a.within_limits() {
            a.spec.limit = old;
            return Err(AccountError::LimitBelowUsage(id));
        }
        Ok(())
    }

    /// An account by id.
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// All accounts, by id.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// A transfer by id.
    pub fn transfer(&self, id: TransferId) -> Option<&StoredTransfer> {
        self.transfers.get(&id)
    }

    /// Number of stored transfers.
    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    /// The status of a pending transfer.
    pub fn pending_status(&self, id: TransferId) -> Option<PendingStatus> {
        self.status.get(&id).copied()
    }

    /// Releases every pending transfer whose timeout has passed at `now`.
    pub fn expire_pending(&mut self, now: Millis) {
        while let Some(&(deadline, id)) = self.expiries.first() {
            if deadline > now {
                break;
            }
            self.expiries.remove(&(deadline, id));
            let Some(t) = self.transfers.get(&id) else {
                continue;
            };
            let (d, c, amt) = (
                t.debit_account_id,
                t.credit_account_id,
                u128::from(t.amount),
            );
            if let Some(a) = self.accounts.get_mut(&d) {
                a.debits_pending = a.debits_pending.saturating_sub(amt);
            }
            if let Some(a) = self.accounts.get_mut(&c) {
                a.credits_pending = a.credits_pending.saturating_sub(amt);
            }
            self.status.insert(id, PendingStatus::Expired);
        }
    }

    /// Creates a batch of transfers at `now`; one result per transfer, in order.
    pub fn create_transfers(
        &mut self,
        batch: &[Transfer],
        now: Millis,
    ) -> Vec<Result<TransferOutcome, TransferError>> {
        if batch.len() > MAX_BATCH {
            return vec![Err(TransferError::BatchTooLarge); batch.len()];
        }
        self.expire_pending(now);
        let mut results = Vec::with_capacity(batch.len());
        let mut i = 0;
        while i < batch.len() {
            let mut j = i;
            while j < batch.len() && batch[j].flags.linked {
                j += 1;
            }
            let open = j == batch.len();
            let end = if open { batch.len() - 1 } else { j };
            let chain = &batch[i..=end];
            let mut undo = Vec::new();
            let mut failure: Option<(usize, TransferError)> = None;
            let mut chain_results = Vec::with_capacity(chain.len());
            for (k, t) in chain.iter().enumerate() {
                if open && k + 1 == chain.len() && t.flags.linked {
                    failure = Some((k, TransferError::LinkedEventChainOpen));
                    break;
                }
                match self.apply(t, now, &mut undo) {
                    Ok(o) => chain_results.push(o),
                    Err(e) => {
                        failure = Some((k, e));
                        break;
                    }
                }
            }
            match failure {
                None => results.extend(chain_results.into_iter().map(Ok)),
                Some((k, e)) => {
                    self.rollback(undo);
                    for idx in 0..chain.len() {
                        results.push(Err(if idx == k {
                            e
                        } else {
                            TransferError::LinkedEventFailed
                        }));
                    }
                }
            }
            i = end + 1;
        }
        results
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Account(id, dp, dpo, cp, cpo) => {
                    if let Some(a) = self.accounts.get_mut(&id) {
                        a.debits_pending = dp;
                        a.debits_posted = dpo;
                        a.credits_pending = cp;
                        a.credits_posted = cpo;
                    }
                }
                Undo::Inserted(id) => {
                    self.transfers.remove(&id);
                }
                Undo::Status(id, old) => match old {
                    Some(s) => {
                        self.status.insert(id, s);
                    }
                    None => {
                        self.status.remove(&id);
                    }
                },
                Undo::ExpiryAdded(d, id) => {
                    self.expiries.remove(&(d, id));
                }
                Undo::ExpiryRemoved(d, id) => {
                    self.expiries.insert((d, id));
                }
            }
        }
    }

    fn snapshot(&self, id: AccountId, undo: &mut Vec<Undo>) {
        if let Some(a) = self.accounts.get(&id) {
            undo.push(Undo::Account(
                id,
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted,
            ));
        }
    }

    fn apply(
        &mut self,
        t: &Transfer,
        now: Millis,
        undo: &mut Vec<Undo>,
    ) -> Result<TransferOutcome, TransferError> {
        use TransferError as E;
        if t.id == 0 || t.id == u128::MAX {
            return Err(E::InvalidId);
        }
        let f = t.flags;
        let two_phase = u8::from(f.pending)
            + u8::from(f.post_pending_transfer)
            + u8::from(f.void_pending_transfer);
        if two_phase > 1 {
            return Err(E::FlagsAreMutuallyExclusive);
        }
        let resolving = f.post_pending_transfer || f.void_pending_transfer;
        if !resolving {
            if t.debit_account_id == 0 {
                return Err(E::DebitAccountIdMustNotBeZero);
            }
            if t.credit_account_id == 0 {
                return Err(E::CreditAccountIdMustNotBeZero);
            }
            if t.debit_account_id == t.credit_account_id {
                return Err(E::AccountsMustBeDifferent);
            }
            if t.pending_id != 0 {
                return Err(E::PendingIdMustBeZero);
            }
            if !f.pending && t.timeout_ms != 0 {
                return Err(E::TimeoutReservedForPendingTransfer);
            }
            if t.amount == 0 {
                return Err(E::AmountMustNotBeZero);
            }
            if t.ledger == 0 {
                return Err(E::LedgerMustNotBeZero);
            }
            if t.code == 0 {
                return Err(E::CodeMustNotBeZero);
            }
        } else {
            if t.pending_id == 0 {
                return Err(E::PendingIdMustNotBeZero);
            }
            if t.pending_id == t.id {
                return Err(E::PendingIdMustBeDifferent);
            }
            if t.timeout_ms != 0 {
                return Err(E::TimeoutReservedForPendingTransfer);
            }
        }
        if let Some(existing) = self.transfers.get(&t.id) {
            return if existing.submitted == *t {
                Ok(TransferOutcome::Exists)
            } else {
                Err(E::ExistsWithDifferentFields)
            };
        }
        if resolving {
            return self.resolve(t, now, undo);
        }
        let debit = self
            .accounts
            .get(&t.debit_account_id)
            .ok_or(E::DebitAccountNotFound)?;
        let credit = self
            .accounts
            .get(&t.credit_account_id)
            .ok_or(E::CreditAccountNotFound)?;
        if debit.spec.ledger != credit.spec.ledger {
            return Err(E::AccountsMustHaveTheSameLedger);
        }
        if t.ledger != debit.spec.ledger {
            return Err(E::TransferMustHaveTheSameLedgerAsAccounts);
        }
        let amt = u128::from(t.amount);
        let d_lim = u128::from(debit.spec.limit);
        if debit.spec.flags.debits_must_not_exceed_credits
            && debit.debits_pending + debit.debits_posted + amt > debit.credits_posted + d_lim
        {
            return Err(E::ExceedsCredits);
        }
        let c_lim = u128::from(credit.spec.limit);
        if credit.spec.flags.credits_must_not_exceed_debits
            && credit.credits_pending + credit.credits_posted + amt > credit.debits_posted + c_lim
        {
            return Err(E::ExceedsDebits);
        }
        if debit
            .debits_posted
            .checked_add(debit.debits_pending + amt)
            .is_none()
            || credit
                .credits_posted
                .checked_add(credit.credits_pending + amt)
                .is_none()
        {
            return Err(E::Overflow);
        }
        self.snapshot(t.debit_account_id, undo);
        self.snapshot(t.credit_account_id, undo);
        if let Some(a) = self.accounts.get_mut(&t.debit_account_id) {
            if f.pending {
                a.debits_pending += amt;
            } else {
                a.debits_posted += amt;
            }
        }
        if let Some(a) = self.accounts.get_mut(&t.credit_account_id) {
            if f.pending {
                a.credits_pending += amt;
            } else {
                a.credits_posted += amt;
            }
        }
        if f.pending {
            undo.push(Undo::Status(t.id, None));
            self.status.insert(t.id, PendingStatus::Pending);
            if t.timeout_ms > 0 {
                let deadline = now.saturating_add(i64::try_from(t.timeout_ms).unwrap_or(i64::MAX));
                self.expiries.insert((deadline, t.id));
                undo.push(Undo::ExpiryAdded(deadline, t.id));
            }
        }
        self.transfers.insert(
            t.id,
            StoredTransfer {
                submitted: t.clone(),
                debit_account_id: t.debit_account_id,
                credit_account_id: t.credit_account_id,
                amount: t.amount,
                created_at: now,
            },
        );
        undo.push(Undo::Inserted(t.id));
        Ok(TransferOutcome::Created)
    }

    fn resolve(
        &mut self,
        t: &Transfer,
        now: Millis,
        undo: &mut Vec<Undo>,
    ) -> Result<TransferOutcome, TransferError> {
        use TransferError as E;
        let p = self
            .transfers
            .get(&t.pending_id)
            .ok_or(E::PendingTransferNotFound)?;
        if !p.submitted.flags.pending {
            return Err(E::PendingTransferNotPending);
        }
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return Err(E::PendingTransferHasDifferentDebitAccountId);
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return Err(E::PendingTransferHasDifferentCreditAccountId);
        }
        if t.ledger != 0 && t.ledger != p.submitted.ledger {
            return Err(E::PendingTransferHasDifferentLedger);
        }
        if t.code != 0 && t.code != p.submitted.code {
            return Err(E::PendingTransferHasDifferentCode);
        }
        let amount = if t.flags.post_pending_transfer {
            if t.amount > p.amount {
                return Err(E::ExceedsPendingTransferAmount);
            }
            if t.amount == 0 { p.amount } else { t.amount }
        } else {
            if t.amount != 0 && t.amount != p.amount {
                return Err(E::PendingTransferHasDifferentAmount);
            }
            p.amount
        };
        match self.status.get(&t.pending_id) {
            Some(PendingStatus::Pending) => {}
            Some(PendingStatus::Posted) => return Err(E::PendingTransferAlreadyPosted),
            Some(PendingStatus::Voided) => return Err(E::PendingTransferAlreadyVoided),
            Some(PendingStatus::Expired) | None => return Err(E::PendingTransferExpired),
        }
        let (d, c, reserved) = (
            p.debit_account_id,
            p.credit_account_id,
            u128::from(p.amount),
        );
        let deadline = (p.submitted.timeout_ms > 0).then(|| {
            p.created_at
                .saturating_add(i64::try_from(p.submitted.timeout_ms).unwrap_or(i64::MAX))
        });
        self.snapshot(d, undo);
        self.snapshot(c, undo);
        let post = u128::from(amount) * u128::from(t.flags.post_pending_transfer);
        if let Some(a) = self.accounts.get_mut(&d) {
            a.debits_pending -= reserved;
            a.debits_posted += post;
        }
        if let Some(a) = self.accounts.get_mut(&c) {
            a.credits_pending -= reserved;
            a.credits_posted += post;
        }
        undo.push(Undo::Status(t.pending_id, Some(PendingStatus::Pending)));
        self.status.insert(
            t.pending_id,
            if t.flags.post_pending_transfer {
                PendingStatus::Posted
            } else {
                PendingStatus::Voided
            },
        );
        if let Some(dl) = deadline
            && self.expiries.remove(&(dl, t.pending_id))
        {
            undo.push(Undo::ExpiryRemoved(dl, t.pending_id));
        }
        self.transfers.insert(
            t.id,
            StoredTransfer {
                submitted: t.clone(),
                debit_account_id: d,
                credit_account_id: c,
                amount,
                created_at: now,
            },
        );
        undo.push(Undo::Inserted(t.id));
        Ok(TransferOutcome::Created)
    }

    /// Checks double entry (posted and pending debits equal credits) and every constraint.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let (mut dp, mut dpo, mut cp, mut cpo) = (0u128, 0u128, 0u128, 0u128);
        for a in self.accounts.values() {
            dp += a.debits_pending;
            dpo += a.debits_posted;
            cp += a.credits_pending;
            cpo += a.credits_posted;
            if !a.within_limits() {
                return Err(InvariantError::LimitViolated(a.spec.name.clone()));
            }
        }
        if dpo != cpo {
            return Err(InvariantError::PostedUnbalanced(dpo, cpo));
        }
        if dp != cp {
            return Err(InvariantError::PendingUnbalanced(dp, cp));
        }
        Ok(())
    }

    /// Creates (idempotently) the account of a kind with its default flags and limit 0.
    pub fn ensure_account(&mut self, kind: &AccountKind) -> Result<AccountId, AccountError> {
        let spec = kind.spec();
        let id = spec.id;
        if self.accounts.contains_key(&id) {
            return Ok(id);
        }
        self.create_account(spec)?;
        Ok(id)
    }

    /// Credit-normal balance of a kind's account (0 if it does not exist).
    pub fn balance_of(&self, kind: &AccountKind) -> i128 {
        self.accounts.get(&kind.id()).map_or(0, Account::balance)
    }

    /// Posts one of the lead's [`TransferSpec`]s: the names must be existing accounts'
    /// names and the id a 32-digit hex id (see [`derive_id`]).
    pub fn apply_spec(
        &mut self,
        spec: &TransferSpec,
        code: u16,
        now: Millis,
    ) -> Result<TransferOutcome, TransferError> {
        let id = u128::from_str_radix(&spec.id, 16).map_err(|_| TransferError::InvalidId)?;
        let amount =
            u64::try_from(spec.amount_micros).map_err(|_| TransferError::AmountMustNotBeZero)?;
        let t = Transfer {
            id,
            debit_account_id: name_id(&spec.debit),
            credit_account_id: name_id(&spec.credit),
            amount,
            ledger: LEDGER_CNY,
            code,
            ..Transfer::default()
        };
        if !self.accounts.contains_key(&t.debit_account_id) {
            return Err(TransferError::DebitAccountNotFound);
        }
        if !self.accounts.contains_key(&t.credit_account_id) {
            return Err(TransferError::CreditAccountNotFound);
        }
        self.create_transfers(std::slice::from_ref(&t), now)
            .pop()
            .unwrap_or(Err(TransferError::BatchTooLarge))
    }
}

/// The account id of a name: [`derive_id`] of the name, read as a 128-bit number.
pub fn name_id(name: &str) -> AccountId {
    u128::from_str_radix(&derive_id(&["account", name]), 16).unwrap_or(1)
}

/// A transfer id from parts: [`derive_id`] of the parts, read as a 128-bit number.
pub fn transfer_id(parts: &[&str]) -> TransferId {
    let id = u128::from_str_radix(&derive_id(parts), 16).unwrap_or(1);
    if id == 0 || id == u128::MAX { 1 } else { id }
}

/// Transfer codes used by this crate.
pub mod codes {
    /// Cash recharge from outside.
    pub const RECHARGE: u16 = 1;
    /// Recharge voucher redeemed (operator-funded).
    pub const RECHARGE_VOUCHER: u16 = 2;
    /// Deduction voucher granted (operator-funded).
    pub const DEDUCTION_VOUCHER: u16 = 3;
    /// A charge paid by a coupon.
    pub const COUPON: u16 = 4;
    /// A charge paid from a customer account.
    pub const CHARGE: u16 = 5;
    /// The provider's share of a charge.
    pub const PROVIDER_SHARE: u16 = 6;
    /// A refund.
    pub const REFUND: u16 = 7;
    /// A provider payout.
    pub const PAYOUT: u16 = 8;
    /// A job hold (pending).
    pub const HOLD: u16 = 9;
    /// Arrears settled.
    pub const ARREARS: u16 = 10;
}

/// Engine ids and constraint flags of the ledger's [`AccountKind`]s.
pub trait EngineAccount {
    /// Account id.
    fn id(&self) -> AccountId;
    /// Default constraint flags.
    fn flags(&self) -> AccountFlags;
    /// The account spec with default flags and limit 0.
    fn spec(&self) -> AccountSpec;
}

impl EngineAccount for AccountKind {
    fn id(&self) -> AccountId {
        name_id(&self.name())
    }

    fn flags(&self) -> AccountFlags {
        match self {
            AccountKind::CustomerCash(_)
            | AccountKind::CustomerRechargeVoucher(_)
            | AccountKind::CustomerDeductionVoucher(_)
            | AccountKind::CustomerCredit(_)
            | AccountKind::CustomerHolds(_)
            | AccountKind::ProviderReceivable(_) => AccountFlags {
                debits_must_not_exceed_credits: true,
                credits_must_not_exceed_debits: false,
            },
            _ => AccountFlags::default(),
        }
    }

    fn spec(&self) -> AccountSpec {
        AccountSpec {
            id: self.id(),
            name: self.name(),
            ledger: LEDGER_CNY,
            code: 1,
            flags: self.flags(),
            limit: 0,
        }
    }
}

/// A plain transfer between two kinds.
pub fn plain(
    id: TransferId,
    debit: &AccountKind,
    credit: &AccountKind,
    amount: u64,
    code: u16,
) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit.id(),
        credit_account_id: credit.id(),
        amount,
        ledger: LEDGER_CNY,
        code,
        ..Transfer::default()
    }
}

/// Marks every transfer but the last as linked, making the batch one chain.
pub fn link_all(mut chain: Vec<Transfer>) -> Vec<Transfer> {
    let n = chain.len();
    for (i, t) in chain.iter_mut().enumerate() {
        t.flags.linked = i + 1 < n;
    }
    chain
}

/// Job holds for the scheduler: reserve funds before a job, capture what it cost, release the
/// rest. Ids derive from `hold_key`, so retrying any step changes nothing.
pub mod holds {
    use super::{AccountKind, Transfer, TransferFlags, codes, link_all, plain, transfer_id};

    /// The pending transfer id of a hold.
    pub fn hold_id(customer: &str, hold_key: &str) -> u128 {
        transfer_id(&["hold", customer, hold_key])
    }

    /// A pending transfer reserving `amount` of the customer's cash in their holds account;
    /// it expires after `timeout_ms` (0 = never).
    pub fn hold(customer: &str, hold_key: &str, amount: u64, timeout_ms: u64) -> Transfer {
        let mut t = plain(
            hold_id(customer, hold_key),
            &AccountKind::CustomerCash(customer.into()),
            &AccountKind::CustomerHolds(customer.into()),
            amount,
            codes::HOLD,
        );
        t.flags.pending = true;
        t.timeout_ms = timeout_ms;
        t
    }

    /// Posts `amount` (at most the hold; the rest is released) and moves it to revenue, as
    /// one linked chain. `amount` must be positive; use [`release`] for a job that cost
    /// nothing.
    pub fn capture(customer: &str, hold_key: &str, amount: u64) -> Vec<Transfer> {
        let post = Transfer {
            id: transfer_id(&["hold-post", customer, hold_key]),
            pending_id: hold_id(customer, hold_key),
            amount,
            flags: TransferFlags {
                post_pending_transfer: true,
                ..TransferFlags::default()
            },
            ..Transfer::default()
        };
        let charge = plain(
            transfer_id(&["hold-charge", customer, hold_key]),
            &AccountKind::CustomerHolds(customer.into()),
            &AccountKind::OperatorRevenue,
            amount,
            codes::CHARGE,
        );
        link_all(vec![post, charge])
    }

    /// Voids the hold.
    pub fn release(customer: &str, hold_key: &str) -> Transfer {
        Transfer {
            id: transfer_id(&["hold-void", customer, hold_key]),
            pending_id: hold_id(customer, hold_key),
            flags: TransferFlags {
                void_pending_transfer: true,
                ..TransferFlags::default()
            },
            ..Transfer::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: u128, flags: AccountFlags, limit: u64) -> AccountSpec {
        AccountSpec {
            id,
            name: format!("a{id}"),
            ledger: 1,
            code: 1,
            flags,
            limit,
        }
    }

    const DMNEC: AccountFlags = AccountFlags {
        debits_must_not_exceed_credits: true,
        credits_must_not_exceed_debits: false,
    };
    const CMNED: AccountFlags = AccountFlags {
        debits_must_not_exceed_credits: false,
        credits_must_not_exceed_debits: true,
    };

    fn setup() -> Ledger {
        let mut l = Ledger::new();
        for s in [
            acct(1, AccountFlags::default(), 0),
            acct(2, DMNEC, 0),
            acct(3, DMNEC, 50),
            acct(4, CMNED, 0),
        ] {
            assert_eq!(l.create_account(s), Ok(AccountOutcome::Created));
        }
        l
    }

    fn tr(id: u128, d: u128, c: u128, amount: u64) -> Transfer {
        Transfer {
            id,
            debit_account_id: d,
            credit_account_id: c,
            amount,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        }
    }

    type R = Result<TransferOutcome, TransferError>;
    const C: R = Ok(TransferOutcome::Created);
    const X: R = Ok(TransferOutcome::Exists);

    /// `check(ledger, batch, expected results, expected (account, balance) pairs)`.
    fn check(l: &mut Ledger, batch: &[Transfer], expected: &[R], balances: &[(u128, i128)]) {
        assert_eq!(l.create_transfers(batch, 0), expected);
        for (id, b) in balances {
            assert_eq!(l.account(*id).expect("acct").balance(), *b, "account {id}");
        }
        l.check_invariants().expect("invariants");
    }

    #[test]
    fn accounts_are_idempotent_and_checked() {
        let mut l = setup();
        assert_eq!(
            l.create_account(acct(1, AccountFlags::default(), 0)),
            Ok(AccountOutcome::Exists)
        );
        assert_eq!(
            l.create_account(acct(1, DMNEC, 0)),
            Err(AccountError::ExistsWithDifferentFields(1))
        );
        assert_eq!(
            l.create_account(acct(0, DMNEC, 0)),
            Err(AccountError::InvalidId)
        );
        let both = AccountFlags {
            debits_must_not_exceed_credits: true,
            credits_must_not_exceed_debits: true,
        };
        assert_eq!(
            l.create_account(acct(9, both, 0)),
            Err(AccountError::FlagsAreMutuallyExclusive)
        );
        let mut s = acct(9, DMNEC, 0);
        s.ledger = 0;
        assert_eq!(l.create_account(s), Err(AccountError::LedgerMustNotBeZero));
    }

    #[test]
    fn transfers_exists_and_balance_constraints() {
        let mut l = setup();
        check(&mut l, &[tr(10, 1, 2, 100)], &[C], &[(1, -100), (2, 100)]);
        check(&mut l, &[tr(10, 1, 2, 100)], &[X], &[(1, -100), (2, 100)]);
        check(
            &mut l,
            &[tr(10, 1, 2, 99)],
            &[Err(TransferError::ExistsWithDifferentFields)],
            &[(2, 100)],
        );
        check(
            &mut l,
            &[tr(11, 2, 1, 101)],
            &[Err(TransferError::ExceedsCredits)],
            &[(2, 100)],
        );
        check(&mut l, &[tr(11, 2, 1, 100)], &[C], &[(2, 0)]);
        // Explicit limit: account 3 may go 50 below zero.
        check(&mut l, &[tr(12, 3, 1, 50)], &[C], &[(3, -50)]);
        check(
            &mut l,
            &[tr(13, 3, 1, 1)],
            &[Err(TransferError::ExceedsCredits)],
            &[(3, -50)],
        );
        // credits_must_not_exceed_debits.
        check(
            &mut l,
            &[tr(14, 1, 4, 1)],
            &[Err(TransferError::ExceedsDebits)],
            &[(4, 0)],
        );
        check(
            &mut l,
            &[tr(15, 4, 1, 5), tr(16, 1, 4, 5)],
            &[C, C],
            &[(4, 0)],
        );
    }

    #[test]
    fn shape_errors() {
        let mut l = setup();
        let cases: Vec<(Transfer, TransferError)> = vec![
            (tr(0, 1, 2, 1), TransferError::InvalidId),
            (tr(20, 0, 2, 1), TransferError::DebitAccountIdMustNotBeZero),
            (tr(20, 1, 0, 1), TransferError::CreditAccountIdMustNotBeZero),
            (tr(20, 1, 1, 1), TransferError::AccountsMustBeDifferent),
            (tr(20, 1, 2, 0), TransferError::AmountMustNotBeZero),
            (tr(20, 1, 99, 1), TransferError::CreditAccountNotFound),
            (tr(20, 99, 2, 1), TransferError::DebitAccountNotFound),
            (
                Transfer {
                    ledger: 2,
                    ..tr(20, 1, 2, 1)
                },
                TransferError::TransferMustHaveTheSameLedgerAsAccounts,
            ),
            (
                Transfer {
                    code: 0,
                    ..tr(20, 1, 2, 1)
                },
                TransferError::CodeMustNotBeZero,
            ),
            (
                Transfer {
                    timeout_ms: 5,
                    ..tr(20, 1, 2, 1)
                },
                TransferError::TimeoutReservedForPendingTransfer,
            ),
            (
                Transfer {
                    pending_id: 5,
                    ..tr(20, 1, 2, 1)
                },
                TransferError::PendingIdMustBeZero,
            ),
        ];
        for (t, e) in cases {
            assert_eq!(l.create_transfers(&[t], 0), vec![Err(e)]);
        }
        let mut t = tr(20, 1, 2, 1);
        t.flags.pending = true;
        t.flags.post_pending_transfer = true;
        assert_eq!(
            l.create_transfers(&[t], 0),
            vec![Err(TransferError::FlagsAreMutuallyExclusive)]
        );
        assert_eq!(l.transfer_count(), 0);
    }

    fn pending(id: u128, d: u128, c: u128, amount: u64, timeout: u64) -> Transfer {
        let mut t = tr(id, d, c, amount);
        t.flags.pending = true;
        t.timeout_ms = timeout;
        t
    }

    fn resolve(id: u128, pending_id: u128, amount: u64, post: bool) -> Transfer {
        Transfer {
            id,
            pending_id,
            amount,
            flags: TransferFlags {
                post_pending_transfer: post,
                void_pending_transfer: !post,
                ..TransferFlags::default()
            },
            ..Transfer::default()
        }
    }

    #[test]
    fn two_phase_post_smaller_void_and_expiry() {
        let mut l = setup();
        check(&mut l, &[tr(1, 1, 2, 100)], &[C], &[(2, 100)]);
        check(&mut l, &[pending(2, 2, 1, 80, 0)], &[C], &[(2, 100)]);
        assert_eq!(l.account(2).expect("a").available(), 20);
        // The hold counts against the constraint.
        check(
            &mut l,
            &[tr(3, 2, 1, 21)],
            &[Err(TransferError::ExceedsCredits)],
            &[],
        );
        check(
            &mut l,
            &[resolve(4, 2, 81, true)],
            &[Err(TransferError::ExceedsPendingTransferAmount)],
            &[],
        );
        check(&mut l, &[resolve(4, 2, 30, true)], &[C], &[(2, 70)]);
        assert_eq!(l.account(2).expect("a").debits_pending, 0, "rest released");
        check(&mut l, &[resolve(4, 2, 30, true)], &[X], &[(2, 70)]);
        check(
            &mut l,
            &[resolve(5, 2, 0, true)],
            &[Err(TransferError::PendingTransferAlreadyPosted)],
            &[],
        );
        check(
            &mut l,
            &[pending(6, 2, 1, 10, 0), resolve(7, 6, 0, false)],
            &[C, C],
            &[(2, 70)],
        );
        check(
            &mut l,
            &[resolve(8, 6, 0, true)],
            &[Err(TransferError::PendingTransferAlreadyVoided)],
            &[],
        );
        check(
            &mut l,
            &[resolve(8, 1, 0, true)],
            &[Err(TransferError::PendingTransferNotPending)],
            &[],
        );
        check(
            &mut l,
            &[resolve(8, 77, 0, true)],
            &[Err(TransferError::PendingTransferNotFound)],
            &[],
        );
        check(
            &mut l,
            &[resolve(8, 8, 0, true)],
            &[Err(TransferError::PendingIdMustBeDifferent)],
            &[],
        );
        // Expiry at created_at + timeout (here now = 0 + 1000).
        check(&mut l, &[pending(9, 2, 1, 70, 1_000)], &[C], &[]);
        assert_eq!(l.account(2).expect("a").available(), 0);
        l.expire_pending(999);
        assert_eq!(l.pending_status(9), Some(PendingStatus::Pending));
        assert_eq!(
            l.create_transfers(&[resolve(10, 9, 0, true)], 1_000),
            vec![Err(TransferError::PendingTransferExpired)]
        );
        assert_eq!(l.pending_status(9), Some(PendingStatus::Expired));
        assert_eq!(l.account(2).expect("a").available(), 70);
        l.check_invariants().expect("inv");
    }

    #[test]
    fn linked_chains_are_atomic() {
        let mut l = setup();
        let mut a = tr(1, 1, 2, 100);
        a.flags.linked = true;
        let b = tr(2, 2, 1, 150);
        check(
            &mut l,
            &[a.clone(), b],
            &[
                Err(TransferError::LinkedEventFailed),
                Err(TransferError::ExceedsCredits),
            ],
            &[(1, 0), (2, 0)],
        );
        assert_eq!(l.transfer_count(), 0);
        // Open chain at the end of the batch.
        check(
            &mut l,
            &[tr(3, 1, 2, 5), a.clone()],
            &[C, Err(TransferError::LinkedEventChainOpen)],
            &[(2, 5)],
        );
        // Chain that succeeds; retry is all Exists; a chain with a pending transfer inside
        // a failing chain leaves no pending state behind.
        let b = tr(2, 2, 1, 50);
        check(&mut l, &[a.clone(), b.clone()], &[C, C], &[(2, 55)]);
        check(&mut l, &[a, b], &[X, X], &[(2, 55)]);
        let mut p = pending(4, 2, 1, 10, 100);
        p.flags.linked = true;
        check(
            &mut l,
            &[p, tr(5, 2, 1, 1_000)],
            &[
                Err(TransferError::LinkedEventFailed),
                Err(TransferError::ExceedsCredits),
            ],
            &[(2, 55)],
        );
        assert_eq!(l.pending_status(4), None);
        assert_eq!(l.account(2).expect("a").debits_pending, 0);
    }

    #[test]
    fn limits_and_named_accounts() {
        let mut l = Ledger::new();
        let cash = AccountKind::CustomerCash("alice".into());
        let credit = AccountKind::CustomerCredit("alice".into());
        let ext = AccountKind::External;
        for k in [&cash, &credit, &ext] {
            l.ensure_account(k).expect("acct");
        }
        assert_eq!(cash.name(), "customer:alice:cash");
        l.set_limit(credit.id(), 300).expect("limit");
        let r = l.create_transfers(&[plain(1, &credit, &ext, 200, codes::CHARGE)], 0);
        assert_eq!(r, vec![C]);
        assert_eq!(
            l.set_limit(credit.id(), 100),
            Err(AccountError::LimitBelowUsage(credit.id()))
        );
        l.set_limit(credit.id(), 200)
            .expect("withdraw unused credit");
        assert_eq!(l.balance_of(&credit), -200);
        let spec = TransferSpec {
            id: derive_id(&["recharge", "1"]),
            debit: ext.name(),
            credit: cash.name(),
            amount_micros: 42,
            job_id: None,
            memo: String::new(),
        };
        assert_eq!(l.apply_spec(&spec, codes::RECHARGE, 0), C);
        assert_eq!(l.apply_spec(&spec, codes::RECHARGE, 0), X);
        assert_eq!(l.balance_of(&cash), 42);
        l.check_invariants().expect("inv");
    }

    #[test]
    fn job_holds_capture_less_and_retry() {
        let mut l = Ledger::new();
        let cash = AccountKind::CustomerCash("bob".into());
        for k in [
            cash.clone(),
            AccountKind::CustomerHolds("bob".into()),
            AccountKind::OperatorRevenue,
            AccountKind::External,
        ] {
            l.ensure_account(&k).expect("acct");
        }
        assert_eq!(
            l.create_transfers(
                &[plain(
                    1,
                    &AccountKind::External,
                    &cash,
                    100,
                    codes::RECHARGE
                )],
                0
            ),
            vec![C]
        );
        assert_eq!(
            l.create_transfers(&[holds::hold("bob", "job-1", 80, 60_000)], 0),
            vec![C]
        );
        assert_eq!(l.account(cash.id()).expect("a").available(), 20);
        // A second job cannot reserve more than is left.
        assert_eq!(
            l.create_transfers(&[holds::hold("bob", "job-2", 21, 0)], 0),
            vec![Err(TransferError::ExceedsCredits)]
        );
        let capture = holds::capture("bob", "job-1", 30);
        assert_eq!(l.create_transfers(&capture, 10), vec![C, C]);
        assert_eq!(
            l.create_transfers(&capture, 20),
            vec![X, X],
            "retry changes nothing"
        );
        assert_eq!(l.balance_of(&cash), 70);
        assert_eq!(l.balance_of(&AccountKind::OperatorRevenue), 30);
        assert_eq!(l.balance_of(&AccountKind::CustomerHolds("bob".into())), 0);
        assert_eq!(
            l.create_transfers(&[holds::hold("bob", "job-3", 70, 0)], 30),
            vec![C]
        );
        assert_eq!(
            l.create_transfers(&[holds::release("bob", "job-3")], 40),
            vec![C]
        );
        assert_eq!(l.account(cash.id()).expect("a").available(), 70);
        l.check_invariants().expect("inv");
    }
}
