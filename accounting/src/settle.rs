//! Who pays what: pure functions that decide the ledger operations and the bill line of every
//! movement of money the operator makes. `tessera-scheduler` and `tessera-store` only carry
//! the result out and persist it (in one transaction); the simulator runs the same rules.
//!
//! | function | movement | manual |
//! |---|---|---|
//! | [`admission_holds`] | a job's estimated maximum cost held in payment order | §3.6.5, §3.11 |
//! | [`job_settlement`] | a finished job: post the holds for the charge, void the rest, move the charge to the provider's receivable and the operator's revenue, one usage line | §3.8 |
//! | [`delivered_job`] | a job that failed or was cancelled after its delivery point: charged as a success on the provider rows known ([`delivered_rows`]), capped at the hold | §3.8 |
//! | [`release_holds`] | a job that failed or was cancelled before its delivery point: void every open hold | — |
//! | [`term_payment`] | a licence term ordered or renewed, paid from recharge voucher, cash, credit | §1.4.5.1 |
//! | [`term_refund`] | an unsubscription's refund to cash, in the licence's split | §1.4.5.1.3 |
//! | [`payout`] | a provider's statement paid out | §3.8.3 |
//! | [`deposit`] | cash from outside, or a voucher funded by the operator's marketing account | §3.11 |
//!
//! Every transfer id is derived from the business key ([`derive_id`]), so carrying a
//! settlement out twice changes nothing.

use crate::bill::{Amounts, BillError, BillLineKind, NewBillLine, Split, split_share};
use crate::civil::Millis;
use crate::ledger::{AccountKind, Hold, LedgerError, LedgerOp, TransferSpec, derive_id, void_hold};
use crate::money::Micros;
use crate::payment::{Drawn, Fund, draw};
use crate::rating::{BillingMode, JobCharge, JobPrice, RateError, cap_charge, rate_job};
use crate::subscription::TermKind;

/// Why a settlement could not be decided.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SettleError {
    /// The customer's funds (above their limits) do not cover the amount due.
    #[error(
        "insufficient funds: {available_micros} micros available ({funds}) is below the {needed_micros} micros due"
    )]
    InsufficientFunds {
        /// Amount due, in micro-units.
        needed_micros: Micros,
        /// What the funds can give together.
        available_micros: Micros,
        /// The funds as `account amount` pairs, for the refusal reason.
        funds: String,
    },
    /// A hold debits an account that is not one of the customer's funds.
    #[error("hold {0} does not debit a customer fund")]
    ForeignHold(String),
    /// The price could not be rated.
    #[error(transparent)]
    Rate(#[from] RateError),
    /// An amount overflowed or an account name is malformed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The bill line breaks its rules.
    #[error(transparent)]
    Bill(#[from] BillError),
}

/// What a customer's funds can give, in payment order: `(account, headroom above its limit)`.
pub type Funds = [(AccountKind, Micros)];

fn available(funds: &Funds, fund: Fund) -> Micros {
    funds
        .iter()
        .filter(|(a, _)| Fund::of_account(a) == Some(fund))
        .fold(0i64, |acc, (_, m)| acc.saturating_add((*m).max(0)))
}

/// Draws `amount` from the customer's funds for a product in `mode` (the one payment order,
/// [`draw`]); refuses when the funds do not cover it.
fn draw_funds(
    customer: &str,
    funds: &Funds,
    mode: BillingMode,
    amount: Micros,
) -> Result<Vec<(AccountKind, Micros)>, SettleError> {
    let Drawn { takes, rest } = draw(mode, |f| available(funds, f), amount);
    if rest > 0 {
        let usable: Vec<&(AccountKind, Micros)> = funds
            .iter()
            .filter(|(a, _)| Fund::of_account(a).is_some_and(|f| f.applies_to(mode)))
            .collect();
        return Err(SettleError::InsufficientFunds {
            needed_micros: amount,
            available_micros: usable
                .iter()
                .fold(0i64, |acc, (_, m)| acc.saturating_add((*m).max(0))),
            funds: usable
                .iter()
                .map(|(a, m)| format!("{a} {m}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    takes
        .into_iter()
        .map(|(f, m)| {
            f.account(customer)
                .map(|a| (a, m))
                .ok_or(SettleError::ForeignHold(format!("{f:?}")))
        })
        .collect()
}

fn add_to(amounts: &mut Amounts, fund: Fund, m: Micros) -> Result<(), LedgerError> {
    let member = match fund {
        Fund::Coupon => &mut amounts.coupon,
        Fund::DeductionVoucher => &mut amounts.deduction_voucher,
        Fund::RechargeVoucher => &mut amounts.recharge_voucher,
        Fund::Cash => &mut amounts.cash,
        Fund::Credit => &mut amounts.credit,
    };
    *member = member.checked_add(m).ok_or(LedgerError::Overflow)?;
    Ok(())
}

/// The holds of a job's estimated maximum cost `max_micros` (a metered product: deduction
/// voucher, recharge voucher, cash, credit), each a pending transfer from a fund into
/// `customer:C:holds`. Refused with [`SettleError::InsufficientFunds`] when the funds do not
/// cover it.
pub fn admission_holds(
    job_id: &str,
    customer: &str,
    scene: &str,
    max_micros: Micros,
    funds: &Funds,
) -> Result<Vec<TransferSpec>, SettleError> {
    admission_holds_of(job_id, None, customer, scene, max_micros, funds)
}

/// The ids a job's settlement derives for `part` of a job settled in parts (a job under
/// several licences: one part per licence, named by it; `None`: a job under one licence, whose
/// ids stay as they always were).
fn ids<'a>(kind: &'a str, job_id: &'a str, part: Option<&'a str>) -> Vec<&'a str> {
    let mut v = vec![kind, job_id];
    v.extend(part);
    v
}

/// [`admission_holds`] for one `part` of a job settled in parts (see [`FinishedJob::part`]):
/// the same draws, with ids of their own (every hold keeps the job's id, so that whatever a
/// settlement leaves is released with the job).
pub fn admission_holds_of(
    job_id: &str,
    part: Option<&str>,
    customer: &str,
    scene: &str,
    max_micros: Micros,
    funds: &Funds,
) -> Result<Vec<TransferSpec>, SettleError> {
    let holds = AccountKind::CustomerHolds(customer.to_string()).name();
    Ok(
        draw_funds(customer, funds, BillingMode::Postpaid, max_micros)?
            .into_iter()
            .map(|(account, amount)| {
                let account = account.name();
                let mut id = ids("hold", job_id, part);
                id.push(&account);
                TransferSpec {
                    id: derive_id(&id),
                    debit: account,
                    credit: holds.clone(),
                    amount_micros: amount,
                    job_id: Some(job_id.to_string()),
                    memo: format!("hold for {scene} job, estimated maximum {max_micros} micros"),
                }
            })
            .collect(),
    )
}

/// The most a job under `price` can cost when the provider declared `declared_rows` rows
/// (none declared: the per-job price alone).
pub fn estimate_max_cost(
    price: &JobPrice,
    declared_rows: Option<u64>,
) -> Result<Micros, RateError> {
    Ok(rate_job(price, declared_rows.unwrap_or(0))?.total_micros)
}

/// A finished job to charge.
#[derive(Debug, Clone, Copy)]
pub struct FinishedJob<'a> {
    /// Job id.
    pub job_id: &'a str,
    /// For a job settled in parts (one per licence), the part: the licence. `None` for a job
    /// under one licence. Only the derived ids depend on it.
    pub part: Option<&'a str>,
    /// The buyer.
    pub customer: &'a str,
    /// The provider party paid.
    pub provider: &'a str,
    /// Scene (the product on the bill).
    pub scene: &'a str,
    /// The licence's job price.
    pub price: &'a JobPrice,
    /// Provider rows used.
    pub rows: u64,
    /// The job's open holds, in the order they were placed.
    pub holds: &'a [Hold],
    /// Admission time (decides the bill month).
    pub admitted_at: Millis,
    /// Now.
    pub now: Millis,
}

/// What a finished job costs and how it is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettlement {
    /// Ledger operations, in order: post each hold for its part, void the holds not drawn,
    /// move the charge from the holds account to the provider and the operator.
    pub ops: Vec<LedgerOp>,
    /// The bill line.
    pub line: NewBillLine,
    /// The charge (capped at the holds).
    pub charge: JobCharge,
    /// What the cap left uncharged.
    pub capped_off_micros: Micros,
}

/// Rates a finished job, caps the charge at its holds, draws the holds in their order
/// (each fully before the next), and builds the ledger operations and the bill line.
pub fn job_settlement(job: &FinishedJob<'_>) -> Result<JobSettlement, SettleError> {
    let rated = rate_job(job.price, job.rows)?;
    let held = crate::ledger::checked_sum(job.holds.iter().map(|h| h.amount_micros.max(0)))?;
    let charge = cap_charge(job.price, rated, held);
    let capped_off = rated
        .total_micros
        .max(0)
        .checked_sub(charge.total_micros)
        .ok_or(LedgerError::Overflow)?;
    let mut ops = Vec::new();
    let mut amounts = Amounts {
        original: charge.total_micros,
        ..Amounts::default()
    };
    let mut left = charge.total_micros;
    for h in job.holds {
        let take = left.min(h.amount_micros.max(0));
        if take == 0 {
            ops.push(void_hold(h));
            continue;
        }
        left -= take;
        let fund = h
            .debit
            .parse::<AccountKind>()
            .ok()
            .as_ref()
            .and_then(Fund::of_account)
            .ok_or_else(|| SettleError::ForeignHold(h.transfer_id.clone()))?;
        add_to(&mut amounts, fund, take)?;
        ops.push(LedgerOp::PostPending {
            id: derive_id(&["post", &h.transfer_id]),
            pending_id: h.transfer_id.clone(),
            amount_micros: take,
        });
    }
    let holds_account = AccountKind::CustomerHolds(job.customer.to_string()).name();
    for (leg, credit, amount) in [
        (
            "provider",
            AccountKind::ProviderReceivable(job.provider.to_string()),
            charge.split.provider_micros,
        ),
        (
            "operator",
            AccountKind::OperatorRevenue,
            charge.split.operator_micros,
        ),
    ] {
        if amount > 0 {
            ops.push(LedgerOp::Post(TransferSpec {
                id: derive_id(&[ids("charge", job.job_id, job.part), vec![leg]].concat()),
                debit: holds_account.clone(),
                credit: credit.name(),
                amount_micros: amount,
                job_id: Some(job.job_id.to_string()),
                memo: format!("{} job, {} provider rows, {leg} share", job.scene, job.rows),
            }));
        }
    }
    let mut note = format!(
        "{} job: {} per job + {} per 1,000 rows x {} provider rows",
        job.scene, job.price.per_job_micros, job.price.per_1k_rows_micros, job.rows
    );
    if capped_off > 0 {
        note.push_str(&format!(
            "; capped at the hold taken at admission ({capped_off} micros not charged)"
        ));
    }
    let line = NewBillLine {
        line_id: derive_id(&ids("bill", job.job_id, job.part)),
        customer: job.customer.to_string(),
        job_id: Some(job.job_id.to_string()),
        kind: BillLineKind::Usage,
        product: job.scene.to_string(),
        provider: job.provider.to_string(),
        event_time_ms: job.admitted_at,
        service_start_ms: job.admitted_at,
        service_end_ms: job.now.max(job.admitted_at),
        amounts,
        split: charge.split,
        note,
    };
    line.validate()?;
    Ok(JobSettlement {
        ops,
        line,
        charge,
        capped_off_micros: capped_off,
    })
}

/// The provider rows a job that ended after its delivery point is rated on: the sender's
/// final report when it arrived (`final_report_rows`), else the rows the sender reported with
/// the delivery milestone. The buyer's own usage plays no part in the price (a job is rated
/// per job + per 1,000 provider rows), so a buyer that vanishes after delivery cannot lower
/// its charge.
pub fn delivered_rows(final_report_rows: Option<u64>, at_delivery_rows: u64) -> u64 {
    final_report_rows.unwrap_or(at_delivery_rows)
}

/// The settlement of a job that failed or was cancelled (`ended`: `"failed"` or
/// `"cancelled"`) after its engine's delivery point.
///
/// **Rule.** Once the receiver is able to compute the output, the job is delivered: whatever
/// happens next (the buyer's worker or the operator dies, the buyer cancels), the count is
/// consumed and the job is charged exactly as a success would be on the provider rows known
/// (`job.rows`, from [`delivered_rows`]): per-job price + per-1,000-rows price × rows, always
/// capped at the hold taken at admission. The bill line's note says the job ended after
/// delivery.
///
/// Delivery points per engine: ECDH-PSI — the sender has handed its last frame (all blinded
/// points and, in intersection mode, all doubly-blinded values) to the link, after which the
/// receiver can compute the intersection alone; the sender does not wait for the receiver's
/// `Done`, which a modified receiver could withhold. Each future engine must name its own
/// point.
pub fn delivered_job(job: &FinishedJob<'_>, ended: &str) -> Result<JobSettlement, SettleError> {
    let mut s = job_settlement(job)?;
    s.line.note.push_str(&format!(
        "; {ended} after delivery: charged on the {} provider rows known",
        job.rows
    ));
    Ok(s)
}

/// Whether `hold` is one of the holds [`admission_holds_of`] placed for `part` of `job_id`.
pub fn is_hold_of(hold: &Hold, job_id: &str, part: Option<&str>) -> bool {
    let mut id = ids("hold", job_id, part);
    id.push(&hold.debit);
    derive_id(&id) == hold.transfer_id
}

/// Voids every open hold of a job (a failure, a cancellation, or what a settlement left).
pub fn release_holds(holds: &[Hold]) -> Vec<LedgerOp> {
    holds.iter().map(void_hold).collect()
}

/// A licence term bought (ordered or renewed).
#[derive(Debug, Clone, Copy)]
pub struct TermPurchase<'a> {
    /// Licence.
    pub licence_id: &'a str,
    /// The buyer.
    pub customer: &'a str,
    /// The licensor (provider).
    pub provider: &'a str,
    /// Subscription generation (a new one after each unsubscription).
    pub generation: i64,
    /// Index of the term in its generation.
    pub seq: usize,
    /// Order or renewal.
    pub kind: TermKind,
    /// Term start.
    pub start: Millis,
    /// Term end.
    pub end: Millis,
    /// Months bought.
    pub months: u32,
    /// Price of the term.
    pub price_micros: Micros,
    /// The licence's monthly price (for the note).
    pub monthly_price_micros: Micros,
    /// The licence's operator share.
    pub operator_share_bps: u32,
    /// Now.
    pub now: Millis,
}

/// How a term is paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermSettlement {
    /// Transfers: funds → holds account, holds account → provider / operator.
    pub transfers: Vec<TransferSpec>,
    /// The bill line.
    pub line: NewBillLine,
    /// Cash and credit paid (refundable on unsubscription).
    pub refundable_micros: Micros,
    /// What each account paid, in payment order.
    pub paid_from: Vec<(AccountKind, Micros)>,
}

/// The kind name of a term on bills and in the store.
pub fn term_kind(kind: TermKind) -> BillLineKind {
    match kind {
        TermKind::Order => BillLineKind::Order,
        TermKind::Renewal => BillLineKind::Renewal,
    }
}

/// Pays a term from the buyer's funds in payment order for a prepaid product (recharge
/// voucher, cash, credit; the operator has no coupons), and splits it between the licensor
/// and the operator.
pub fn term_payment(t: &TermPurchase<'_>, funds: &Funds) -> Result<TermSettlement, SettleError> {
    let key = |part: &str| {
        derive_id(&[
            "term",
            t.licence_id,
            t.customer,
            &t.generation.to_string(),
            &t.seq.to_string(),
            part,
        ])
    };
    let paid = prepaid(
        t.customer,
        t.provider,
        t.price_micros,
        t.operator_share_bps,
        funds,
        &key,
        &format!("licence {} term {}", t.licence_id, t.seq),
    )?;
    let kind = term_kind(t.kind);
    let line = NewBillLine {
        line_id: key("bill"),
        customer: t.customer.to_string(),
        job_id: None,
        kind,
        product: format!("licence:{}", t.licence_id),
        provider: t.provider.to_string(),
        event_time_ms: t.now,
        service_start_ms: t.start,
        service_end_ms: t.end,
        amounts: paid.amounts,
        split: paid.split,
        note: format!(
            "{} of {} month(s) at {} per month",
            kind.name(),
            t.months,
            t.monthly_price_micros
        ),
    };
    line.validate()?;
    Ok(TermSettlement {
        transfers: paid.transfers,
        line,
        refundable_micros: paid.refundable_micros,
        paid_from: paid.paid_from,
    })
}

/// A prepaid amount drawn from the buyer's funds and split between licensor and operator.
struct Prepaid {
    transfers: Vec<TransferSpec>,
    amounts: Amounts,
    split: Split,
    refundable_micros: Micros,
    paid_from: Vec<(AccountKind, Micros)>,
}

/// Pays `price` from the buyer's funds in the payment order of a prepaid product (recharge
/// voucher, cash, credit; the operator has no coupons) into its holds account, then from there
/// to the licensor's receivable and the operator's revenue by the share. Transfer ids are
/// `key(account or leg)`.
fn prepaid(
    customer: &str,
    provider: &str,
    price: Micros,
    operator_share_bps: u32,
    funds: &Funds,
    key: &dyn Fn(&str) -> String,
    memo: &str,
) -> Result<Prepaid, SettleError> {
    let paid_from = draw_funds(customer, funds, BillingMode::Prepaid, price)?;
    let holds = AccountKind::CustomerHolds(customer.to_string()).name();
    let mut amounts = Amounts {
        original: price,
        ..Amounts::default()
    };
    let mut refundable: Micros = 0;
    let mut transfers = Vec::new();
    for (account, amount) in &paid_from {
        let fund =
            Fund::of_account(account).ok_or_else(|| SettleError::ForeignHold(account.name()))?;
        add_to(&mut amounts, fund, *amount)?;
        if matches!(fund, Fund::Cash | Fund::Credit) {
            refundable = refundable
                .checked_add(*amount)
                .ok_or(LedgerError::Overflow)?;
        }
        let name = account.name();
        transfers.push(TransferSpec {
            id: key(&name),
            debit: name,
            credit: holds.clone(),
            amount_micros: *amount,
            job_id: None,
            memo: memo.to_string(),
        });
    }
    let split = split_share(price, operator_share_bps);
    for (leg, credit, amount) in [
        (
            "provider",
            AccountKind::ProviderReceivable(provider.to_string()),
            split.provider_micros,
        ),
        (
            "operator",
            AccountKind::OperatorRevenue,
            split.operator_micros,
        ),
    ] {
        if amount > 0 {
            transfers.push(TransferSpec {
                id: key(leg),
                debit: holds.clone(),
                credit: credit.name(),
                amount_micros: amount,
                job_id: None,
                memo: format!("{memo}, {leg} share"),
            });
        }
    }
    Ok(Prepaid {
        transfers,
        amounts,
        split,
        refundable_micros: refundable,
        paid_from,
    })
}

/// A dataset bought through the T/AI 123.12 trade flow (`/settlement`, table A.34): a
/// one-time prepaid order of the confirmed price.
#[derive(Debug, Clone, Copy)]
pub struct DataPurchase<'a> {
    /// The confirmation settled (one settlement each).
    pub confirm_id: &'a str,
    /// The buyer (the demander).
    pub customer: &'a str,
    /// The licensor party.
    pub provider: &'a str,
    /// Registration number and dataset id, for the bill line's product.
    pub registration_id: &'a str,
    /// Dataset id.
    pub data_id: &'a str,
    /// The confirmed price (0: free, nothing moves).
    pub price_micros: Micros,
    /// The operator's share of it.
    pub operator_share_bps: u32,
    /// The licence's term, the bill line's service period.
    pub term_start: Millis,
    /// End of the term.
    pub term_end: Millis,
    /// Now.
    pub now: Millis,
}

/// How a data purchase is paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSettlement {
    /// Transfers: funds → holds account, holds account → provider / operator (none if free).
    pub transfers: Vec<TransferSpec>,
    /// The bill line (none if free).
    pub line: Option<NewBillLine>,
    /// What each account paid, in payment order.
    pub paid_from: Vec<(AccountKind, Micros)>,
}

/// Pays a data purchase like a prepaid order (recharge voucher, cash, credit line), split
/// between the licensor and the operator; transfer ids derive from the confirmation, so a
/// retried settlement cannot pay twice.
///
/// # Errors
/// [`SettleError`] when the funds do not cover the price, or the line breaks an identity.
pub fn data_purchase(p: &DataPurchase<'_>, funds: &Funds) -> Result<DataSettlement, SettleError> {
    if p.price_micros == 0 {
        return Ok(DataSettlement {
            transfers: Vec::new(),
            line: None,
            paid_from: Vec::new(),
        });
    }
    let key = |part: &str| derive_id(&["trade", p.confirm_id, part]);
    let paid = prepaid(
        p.customer,
        p.provider,
        p.price_micros,
        p.operator_share_bps,
        funds,
        &key,
        &format!(
            "data {} / {} (confirmation {})",
            p.registration_id, p.data_id, p.confirm_id
        ),
    )?;
    let line = NewBillLine {
        line_id: key("bill"),
        customer: p.customer.to_string(),
        job_id: None,
        kind: BillLineKind::Order,
        product: format!("data:{}/{}", p.registration_id, p.data_id),
        provider: p.provider.to_string(),
        event_time_ms: p.now,
        service_start_ms: p.term_start,
        service_end_ms: p.term_end,
        amounts: paid.amounts,
        split: paid.split,
        note: format!("data purchase, confirmation {}", p.confirm_id),
    };
    line.validate()?;
    Ok(DataSettlement {
        transfers: paid.transfers,
        line: Some(line),
        paid_from: paid.paid_from,
    })
}

/// An unsubscription's refund.
#[derive(Debug, Clone, Copy)]
pub struct TermRefund<'a> {
    /// Licence.
    pub licence_id: &'a str,
    /// The buyer.
    pub customer: &'a str,
    /// The licensor (provider).
    pub provider: &'a str,
    /// Subscription generation.
    pub generation: i64,
    /// Refund (cash and credit paid − monthly price × months used, at least 0).
    pub refund_micros: Micros,
    /// The licence's operator share.
    pub operator_share_bps: u32,
    /// Start of the subscription.
    pub start: Millis,
    /// Now.
    pub now: Millis,
    /// Cash and credit paid over the terms (for the note).
    pub refundable_paid_micros: Micros,
    /// Months used (for the note).
    pub months_used: u32,
    /// The licence's monthly price (for the note).
    pub monthly_price_micros: Micros,
}

/// Returns the refund to the buyer's cash from the licensor's receivable and the operator's
/// refunds account in the licence's split, with a negative refund line.
pub fn term_refund(r: &TermRefund<'_>) -> Result<(Vec<TransferSpec>, NewBillLine), SettleError> {
    let g = r.generation.to_string();
    let split: Split = split_share(r.refund_micros, r.operator_share_bps);
    let cash = AccountKind::CustomerCash(r.customer.to_string()).name();
    let mut transfers = Vec::new();
    for (leg, debit, amount) in [
        (
            "provider",
            AccountKind::ProviderReceivable(r.provider.to_string()),
            split.provider_micros,
        ),
        (
            "operator",
            AccountKind::OperatorRefunds,
            split.operator_micros,
        ),
    ] {
        if amount > 0 {
            transfers.push(TransferSpec {
                id: derive_id(&["refund", r.licence_id, r.customer, &g, leg]),
                debit: debit.name(),
                credit: cash.clone(),
                amount_micros: amount,
                job_id: None,
                memo: format!("refund of licence {}, {leg} share", r.licence_id),
            });
        }
    }
    let refund = r.refund_micros;
    let line = NewBillLine {
        line_id: derive_id(&["refund-bill", r.licence_id, r.customer, &g]),
        customer: r.customer.to_string(),
        job_id: None,
        kind: BillLineKind::Refund,
        product: format!("licence:{}", r.licence_id),
        provider: r.provider.to_string(),
        event_time_ms: r.now,
        service_start_ms: r.start,
        service_end_ms: r.now.max(r.start),
        amounts: Amounts {
            original: -refund,
            cash: -refund,
            ..Amounts::default()
        },
        split: split.negated(),
        note: format!(
            "unsubscribed: paid {} − {} month(s) used × {} = refund {refund}",
            r.refundable_paid_micros, r.months_used, r.monthly_price_micros
        ),
    };
    line.validate()?;
    Ok((transfers, line))
}

/// The payout of a provider's statement for `period`: its part moves from the receivable to
/// paid out (`None` when nothing is due).
pub fn payout(provider: &str, period: &str, provider_micros: Micros) -> Option<TransferSpec> {
    (provider_micros > 0).then(|| TransferSpec {
        id: derive_id(&["payout", provider, period]),
        debit: AccountKind::ProviderReceivable(provider.to_string()).name(),
        credit: AccountKind::ProviderPaidOut(provider.to_string()).name(),
        amount_micros: provider_micros,
        job_id: None,
        memo: format!("payout of {period} to {provider}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funds(dv: i64, rv: i64, cash: i64, credit: i64) -> Vec<(AccountKind, Micros)> {
        AccountKind::customer_funds("u")
            .into_iter()
            .zip([dv, rv, cash, credit])
            .collect()
    }

    #[test]
    fn holds_follow_the_payment_order() {
        let h = admission_holds("j", "u", "psi", 100, &funds(30, 0, 50, 100)).expect("holds");
        let got: Vec<(&str, i64)> = h
            .iter()
            .map(|t| (t.debit.as_str(), t.amount_micros))
            .collect();
        assert_eq!(
            got,
            vec![
                ("customer:u:deduction_voucher", 30),
                ("customer:u:cash", 50),
                ("customer:u:credit", 20)
            ]
        );
        assert_eq!(
            admission_holds("j", "u", "psi", 0, &funds(30, 0, 50, 100)),
            Ok(vec![])
        );
        let err = admission_holds("j", "u", "psi", 181, &funds(30, 0, 50, 100))
            .expect_err("short")
            .to_string();
        assert!(
            err.contains("insufficient funds") && err.contains("181 micros"),
            "{err}"
        );
    }

    fn hold(id: &str, account: &str, amount: i64) -> Hold {
        Hold {
            transfer_id: id.into(),
            debit: account.into(),
            credit: "customer:u:holds".into(),
            amount_micros: amount,
        }
    }

    #[test]
    fn a_job_is_charged_from_its_holds_and_split() {
        let price = JobPrice {
            per_job_micros: 1_000,
            per_1k_rows_micros: 1_000,
            operator_share_bps: 2_000,
        };
        let holds = [
            hold("h1", "customer:u:recharge_voucher", 500),
            hold("h2", "customer:u:cash", 1_000),
            hold("h3", "customer:u:credit", 100),
        ];
        let s = job_settlement(&FinishedJob {
            job_id: "j",
            part: None,
            customer: "u",
            provider: "p",
            scene: "psi",
            price: &price,
            rows: 1,
            holds: &holds,
            admitted_at: 10,
            now: 20,
        })
        .expect("settle");
        assert_eq!(s.charge.total_micros, 1_001);
        assert_eq!(
            (s.line.amounts.recharge_voucher, s.line.amounts.cash),
            (500, 501)
        );
        assert_eq!(
            (s.line.split.provider_micros, s.line.split.operator_micros),
            (801, 200)
        );
        assert!(s.ops.contains(&void_hold(&holds[2])));
        assert_eq!(s.capped_off_micros, 0);
        // Capped at the holds.
        let s = job_settlement(&FinishedJob {
            rows: 10_000,
            holds: &holds[..1],
            ..FinishedJob {
                job_id: "j",
                part: None,
                customer: "u",
                provider: "p",
                scene: "psi",
                price: &price,
                rows: 0,
                holds: &holds,
                admitted_at: 10,
                now: 20,
            }
        })
        .expect("settle");
        assert_eq!((s.charge.total_micros, s.capped_off_micros), (500, 10_500));
    }

    #[test]
    fn a_job_ended_after_delivery_is_charged_on_the_rows_known_capped_at_the_hold() {
        let price = JobPrice {
            per_job_micros: 1_000,
            per_1k_rows_micros: 10,
            operator_share_bps: 2_000,
        };
        let holds = [hold("h1", "customer:u:cash", 1_500)];
        let job = |rows| FinishedJob {
            job_id: "j",
            part: None,
            customer: "u",
            provider: "p",
            scene: "psi",
            price: &price,
            rows,
            holds: &holds,
            admitted_at: 10,
            now: 20,
        };
        // The sender's final report wins; else the rows reported at delivery.
        assert_eq!(delivered_rows(Some(3_000), 2_000), 3_000);
        assert_eq!(delivered_rows(None, 2_000), 2_000);
        let s = delivered_job(&job(delivered_rows(None, 2_000)), "failed").expect("settle");
        assert_eq!(s.charge.total_micros, 1_020);
        assert_eq!(s.line.amounts.cash, 1_020);
        assert!(
            s.line.note.contains("failed after delivery"),
            "{}",
            s.line.note
        );
        assert_eq!(s, {
            let mut ok = job_settlement(&job(2_000)).expect("success");
            ok.line.note = s.line.note.clone();
            ok
        });
        // Capped at the hold.
        let s = delivered_job(&job(1_000_000), "cancelled").expect("settle");
        assert_eq!((s.charge.total_micros, s.capped_off_micros), (1_500, 9_500));
    }

    #[test]
    fn a_data_purchase_is_a_prepaid_order_split_by_share_and_free_data_moves_nothing() {
        let p = DataPurchase {
            confirm_id: "c1",
            customer: "u",
            provider: "p",
            registration_id: "reg-1",
            data_id: "d",
            price_micros: 300,
            operator_share_bps: 1_000,
            term_start: 0,
            term_end: 10,
            now: 0,
        };
        let s = data_purchase(&p, &funds(1_000, 100, 150, 100)).expect("pay");
        assert_eq!(
            s.paid_from,
            vec![
                (AccountKind::CustomerRechargeVoucher("u".into()), 100),
                (AccountKind::CustomerCash("u".into()), 150),
                (AccountKind::CustomerCredit("u".into()), 50)
            ]
        );
        let line = s.line.expect("a line");
        assert_eq!(
            (line.split.provider_micros, line.split.operator_micros),
            (270, 30)
        );
        assert_eq!(line.product, "data:reg-1/d");
        // Into holds: 300; out of holds: 270 + 30.
        let holds = AccountKind::CustomerHolds("u".into()).name();
        let into: i64 = s
            .transfers
            .iter()
            .filter(|t| t.credit == holds)
            .map(|t| t.amount_micros)
            .sum();
        let out: i64 = s
            .transfers
            .iter()
            .filter(|t| t.debit == holds)
            .map(|t| t.amount_micros)
            .sum();
        assert_eq!((into, out), (300, 300));
        // The same confirmation derives the same transfer ids (a retry cannot pay twice).
        assert_eq!(
            data_purchase(&p, &funds(1_000, 100, 150, 100))
                .unwrap()
                .transfers,
            s.transfers
        );
        assert!(data_purchase(&p, &funds(1_000, 0, 0, 0)).is_err());
        let free = data_purchase(
            &DataPurchase {
                price_micros: 0,
                ..p
            },
            &funds(0, 0, 0, 0),
        )
        .unwrap();
        assert!(free.transfers.is_empty() && free.line.is_none());
    }

    #[test]
    fn terms_are_paid_prepaid_and_refunds_split_back() {
        let t = TermPurchase {
            licence_id: "l",
            customer: "u",
            provider: "p",
            generation: 0,
            seq: 0,
            kind: TermKind::Order,
            start: 0,
            end: 10,
            months: 1,
            price_micros: 300,
            monthly_price_micros: 300,
            operator_share_bps: 1_000,
            now: 0,
        };
        // Deduction vouchers do not pay prepaid terms.
        let s = term_payment(&t, &funds(1_000, 100, 150, 100)).expect("pay");
        assert_eq!(
            s.paid_from,
            vec![
                (AccountKind::CustomerRechargeVoucher("u".into()), 100),
                (AccountKind::CustomerCash("u".into()), 150),
                (AccountKind::CustomerCredit("u".into()), 50)
            ]
        );
        assert_eq!(s.refundable_micros, 200);
        assert_eq!(s.line.split.operator_micros, 30);
        assert!(term_payment(&t, &funds(1_000, 0, 0, 0)).is_err());
        let (transfers, line) = term_refund(&TermRefund {
            licence_id: "l",
            customer: "u",
            provider: "p",
            generation: 0,
            refund_micros: 101,
            operator_share_bps: 1_000,
            start: 0,
            now: 5,
            refundable_paid_micros: 200,
            months_used: 0,
            monthly_price_micros: 300,
        })
        .expect("refund");
        assert_eq!(transfers.iter().map(|t| t.amount_micros).sum::<i64>(), 101);
        assert_eq!(line.split.provider_micros, -91);
        assert!(payout("p", "2026-01", 0).is_none());
    }
}

/// Which of a customer's funds a deposit credits (operations manual §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositInto {
    /// Cash, from outside the platform.
    Cash,
    /// A recharge voucher, funded by the operator's marketing account.
    RechargeVoucher,
    /// A deduction voucher (metered use only), funded by the operator's marketing account.
    DeductionVoucher,
}

impl DepositInto {
    /// `cash`, `recharge_voucher` or `deduction_voucher`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cash" => Some(Self::Cash),
            "recharge_voucher" => Some(Self::RechargeVoucher),
            "deduction_voucher" => Some(Self::DeductionVoucher),
            _ => None,
        }
    }
}

/// A deposit of `amount_micros` into `customer`'s fund `into`: one transfer whose id is
/// derived from the customer and the idempotency `key` (keys are scoped per customer: two
/// customers may use the same key), so a replay is `Exists`. Cash comes from `external`;
/// vouchers are funded by `operator:marketing`.
pub fn deposit(
    customer: &str,
    into: DepositInto,
    amount_micros: Micros,
    key: &str,
) -> TransferSpec {
    let c = customer.to_string();
    let (debit, credit) = match into {
        DepositInto::Cash => (AccountKind::External, AccountKind::CustomerCash(c)),
        DepositInto::RechargeVoucher => (
            AccountKind::OperatorMarketing,
            AccountKind::CustomerRechargeVoucher(c),
        ),
        DepositInto::DeductionVoucher => (
            AccountKind::OperatorMarketing,
            AccountKind::CustomerDeductionVoucher(c),
        ),
    };
    TransferSpec {
        id: derive_id(&["deposit", customer, key]),
        debit: debit.name(),
        credit: credit.name(),
        amount_micros,
        job_id: None,
        memo: format!("deposit {key}"),
    }
}

#[cfg(test)]
mod deposit_tests {
    use super::*;

    /// Issue 8 item 10: idempotency keys are scoped per customer.
    #[test]
    fn deposit_keys_are_per_customer() {
        let a = deposit("alice", DepositInto::Cash, 5, "k1");
        assert_eq!(a, deposit("alice", DepositInto::Cash, 5, "k1"));
        assert_ne!(a.id, deposit("bob", DepositInto::Cash, 5, "k1").id);
        assert_ne!(a.id, deposit("alice", DepositInto::Cash, 5, "k2").id);
        assert_eq!(
            (a.debit.as_str(), a.credit.as_str()),
            ("external", "customer:alice:cash")
        );
    }
}
