//! Paying a charge: coupons, deduction vouchers, recharge vouchers, cash and credit, drawn in
//! the manual's order (§1.4.4.1.1, §3.11), and the bill identities of §3.8.
//!
//! # Rules (manual)
//!
//! * Order (优惠手段优先级): 优惠券 (coupon, prepaid products only) → 抵扣现金券 (deduction
//!   voucher, metered products only) → 充值现金券账户余额 (recharge-voucher balance, any
//!   charge) → 现金账户余额 (cash) → 信用账户额度 (credit line).
//! * A coupon has a validity window and a threshold rule (满 100 减 70) and is used when a
//!   prepaid product is ordered (在产品订购时使用); coupons and vouchers are never refunded.
//! * Worked example §1.4.4.1.2: 600 − 600 × 0.5 − 70 = 230, paid from the recharge voucher.
//!
//! # Identities
//!
//! For every [`Payment`] (and every bill line built from one):
//!
//! * `original − discount = paid`, where `discount` = platform + customer discount;
//! * `balance + credit + vouchers + coupons = paid`, where `balance` = recharge-voucher
//!   balance + cash (+ arrears, see below), `vouchers` = deduction vouchers.
//!
//! The manual states the identities twice with different members (§3.8.3.1 counts coupons
//! and deduction vouchers both as 优惠 and as payment, which cannot both hold); this crate
//! follows §3.8.3.1 items 1–2 with 优惠 = platform + customer discount. The order view of
//! §3.8.1 (优惠 includes the coupon, so 600 − 370 = 230) is [`Payment::order_paid_micros`].
//!
//! # Interpretation choices
//!
//! * The coupon threshold is compared with the amount **after** discounts (300 ≥ 100 in the
//!   worked example; either reading gives the same figure there). One coupon per charge; the
//!   largest usable reduction wins, ties to the earliest expiry, then the smallest id. A
//!   coupon never reduces a charge below zero.
//! * Coupons apply to orders and renewals of prepaid products, never to make-up charges
//!   (§1.4.4.1.3 shows 优惠券满减 0 for the make-up) — the caller says so with
//!   [`PaymentRequest::coupon_allowed`].
//! * Deduction vouchers are drawn earliest expiry first (open-ended last), then by id; a
//!   voucher may be restricted to products.
//! * A prepaid charge that the customer cannot cover fails with
//!   [`PaymentError::InsufficientFunds`] and changes nothing. A postpaid (metered) charge is
//!   for usage that already happened, so the uncovered rest becomes **arrears** (欠费, the cash
//!   balance goes below zero, §2.9.2.3); arrears count as balance payment in the identity.

use crate::civil::Millis;
use crate::ledger::AccountKind;
use crate::money::Micros;
use crate::rating::BillingMode;

/// A means of payment (优惠手段 and balances), declared in the manual's payment order
/// (§1.4.4.1.1, §3.11): the derived `Ord` *is* the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fund {
    /// 优惠券: prepaid products only.
    Coupon,
    /// 抵扣现金券: metered (postpaid) products only.
    DeductionVoucher,
    /// 充值现金券账户余额: any charge.
    RechargeVoucher,
    /// 现金账户余额: any charge.
    Cash,
    /// 信用账户额度: any charge.
    Credit,
}

impl Fund {
    /// Every fund in payment order.
    pub const ORDER: [Fund; 5] = [
        Fund::Coupon,
        Fund::DeductionVoucher,
        Fund::RechargeVoucher,
        Fund::Cash,
        Fund::Credit,
    ];

    /// Whether this fund may pay a charge of a product in `mode`.
    pub fn applies_to(self, mode: BillingMode) -> bool {
        match self {
            Fund::Coupon => mode == BillingMode::Prepaid,
            Fund::DeductionVoucher => mode == BillingMode::Postpaid,
            Fund::RechargeVoucher | Fund::Cash | Fund::Credit => true,
        }
    }

    /// The customer's ledger account holding this fund (`None` for coupons, which are funded
    /// by the operator's marketing account when used).
    pub fn account(self, customer: &str) -> Option<AccountKind> {
        let c = customer.to_string();
        match self {
            Fund::Coupon => None,
            Fund::DeductionVoucher => Some(AccountKind::CustomerDeductionVoucher(c)),
            Fund::RechargeVoucher => Some(AccountKind::CustomerRechargeVoucher(c)),
            Fund::Cash => Some(AccountKind::CustomerCash(c)),
            Fund::Credit => Some(AccountKind::CustomerCredit(c)),
        }
    }

    /// The fund a customer account holds (`None` for other accounts).
    pub fn of_account(account: &AccountKind) -> Option<Fund> {
        match account {
            AccountKind::CustomerDeductionVoucher(_) => Some(Fund::DeductionVoucher),
            AccountKind::CustomerRechargeVoucher(_) => Some(Fund::RechargeVoucher),
            AccountKind::CustomerCash(_) => Some(Fund::Cash),
            AccountKind::CustomerCredit(_) => Some(Fund::Credit),
            _ => None,
        }
    }
}

/// What [`draw`] took from each fund, and what no fund could cover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drawn {
    /// Non-zero takes in payment order.
    pub takes: Vec<(Fund, Micros)>,
    /// The part of the amount left uncovered (0 when the funds suffice).
    pub rest: Micros,
}

impl Drawn {
    /// What was taken from `fund`.
    pub fn take(&self, fund: Fund) -> Micros {
        // At most five funds, each at most MAX_AMOUNT_MICROS: saturation never triggers.
        self.takes
            .iter()
            .filter(|(f, _)| *f == fund)
            .fold(0i64, |acc, (_, t)| acc.saturating_add(*t))
    }
}

/// THE payment order: draws `amount_micros` from the funds that apply to `mode`, in
/// [`Fund::ORDER`], each drawn fully before the next; `available(fund)` is what a fund can
/// give (negative counts as 0). Used by job holds, licence-term payments and the simulator's
/// [`plan_payment`].
pub fn draw(mode: BillingMode, available: impl Fn(Fund) -> Micros, amount_micros: Micros) -> Drawn {
    let mut rest = amount_micros.max(0);
    let mut takes = Vec::new();
    for fund in Fund::ORDER {
        if rest == 0 {
            break;
        }
        if !fund.applies_to(mode) {
            continue;
        }
        let take = available(fund).max(0).min(rest);
        if take > 0 {
            takes.push((fund, take));
            rest -= take;
        }
    }
    Drawn { takes, rest }
}

/// Most coupons or deduction vouchers one wallet may hold.
pub const MAX_INSTRUMENTS: usize = 1_000;

/// Why a payment could not be planned or applied.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PaymentError {
    /// An amount is negative, or the discounts exceed the original amount.
    #[error("invalid charge amounts: {0}")]
    InvalidAmounts(String),
    /// A prepaid charge exceeds what the customer can pay.
    #[error(
        "insufficient funds: need {}, {} available",
        crate::money::format_amount(*needed),
        crate::money::format_amount(*available)
    )]
    InsufficientFunds {
        /// Amount still to pay after coupons and vouchers.
        needed: Micros,
        /// Recharge voucher + cash + unused credit.
        available: Micros,
    },
    /// The wallet changed since the payment was planned (coupon gone, voucher drained).
    #[error("stale payment plan: {0}")]
    Stale(String),
    /// A wallet holds too many coupons or vouchers.
    #[error("too many coupons or vouchers (max {MAX_INSTRUMENTS})")]
    TooManyInstruments,
    /// Amounts overflow.
    #[error("payment arithmetic overflows")]
    Overflow,
    /// The payment does not satisfy the bill identities.
    #[error("bill identity violated: {0}")]
    IdentityViolated(String),
}

/// 优惠券: a threshold reduction for prepaid orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    /// Coupon id.
    pub id: String,
    /// Minimum amount (after discounts) for the coupon to apply (满).
    pub threshold_micros: Micros,
    /// Reduction (减).
    pub off_micros: Micros,
    /// First instant usable.
    pub valid_from: Millis,
    /// First instant no longer usable (`None` = open-ended).
    pub valid_until: Option<Millis>,
    /// Already used.
    pub used: bool,
}

impl Coupon {
    fn usable(&self, at: Millis) -> bool {
        !self.used && at >= self.valid_from && self.valid_until.is_none_or(|u| at < u)
    }
}

/// 抵扣现金券: a balance usable on metered products.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeductionVoucher {
    /// Voucher id.
    pub id: String,
    /// Remaining balance.
    pub balance_micros: Micros,
    /// First instant usable.
    pub valid_from: Millis,
    /// First instant no longer usable (`None` = open-ended).
    pub valid_until: Option<Millis>,
    /// Products it may pay for (empty = every metered product).
    pub products: Vec<String>,
}

impl DeductionVoucher {
    fn usable(&self, at: Millis, product: &str) -> bool {
        self.balance_micros > 0
            && at >= self.valid_from
            && self.valid_until.is_none_or(|u| at < u)
            && (self.products.is_empty() || self.products.iter().any(|p| p == product))
    }
}

/// What a customer can pay with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wallet {
    /// Coupons held.
    pub coupons: Vec<Coupon>,
    /// Deduction vouchers held.
    pub deduction_vouchers: Vec<DeductionVoucher>,
    /// 现金券账户 balance (recharge vouchers already redeemed).
    pub recharge_voucher_micros: Micros,
    /// 现金账户 balance (never below zero; see `arrears_micros`).
    pub cash_micros: Micros,
    /// 信用额度 granted.
    pub credit_limit_micros: Micros,
    /// Credit drawn.
    pub credit_used_micros: Micros,
    /// Arrears (欠费) from metered charges nobody could cover.
    pub arrears_micros: Micros,
}

impl Wallet {
    /// Unused credit.
    pub fn credit_available_micros(&self) -> Micros {
        (self.credit_limit_micros - self.credit_used_micros).max(0)
    }

    /// Cash balance as the customer sees it (negative when in arrears).
    pub fn net_cash_micros(&self) -> Micros {
        self.cash_micros - self.arrears_micros
    }

    /// Remaining balance over all deduction vouchers.
    pub fn deduction_voucher_total_micros(&self) -> Micros {
        self.deduction_vouchers
            .iter()
            .fold(0i64, |acc, v| acc.saturating_add(v.balance_micros))
    }

    /// Coupons not used yet.
    pub fn unused_coupons(&self) -> usize {
        self.coupons.iter().filter(|c| !c.used).count()
    }
}

/// A charge to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentRequest<'a> {
    /// Product charged (for voucher scope).
    pub product: &'a str,
    /// Prepaid or postpaid product.
    pub mode: BillingMode,
    /// Whether a coupon may be used (orders and renewals, not make-ups).
    pub coupon_allowed: bool,
    /// Original amount.
    pub original_micros: Micros,
    /// Platform discount.
    pub platform_discount_micros: Micros,
    /// Customer discount.
    pub customer_discount_micros: Micros,
    /// When the charge is paid.
    pub at: Millis,
}

/// How a charge is paid. All amounts are non-negative.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payment {
    /// Original amount.
    pub original_micros: Micros,
    /// Platform discount.
    pub platform_discount_micros: Micros,
    /// Customer discount.
    pub customer_discount_micros: Micros,
    /// Coupon reduction.
    pub coupon_micros: Micros,
    /// The coupon used.
    pub coupon_id: Option<String>,
    /// Drawn from deduction vouchers.
    pub deduction_voucher_micros: Micros,
    /// Per voucher: `(id, micros)`.
    pub deduction_draws: Vec<(String, Micros)>,
    /// Drawn from the recharge-voucher balance.
    pub recharge_voucher_micros: Micros,
    /// Drawn from cash.
    pub cash_micros: Micros,
    /// Drawn from credit.
    pub credit_micros: Micros,
    /// Left unpaid as arrears (postpaid only).
    pub arrears_micros: Micros,
}

impl Payment {
    /// 优惠金额 of §3.8.3.1: platform + customer discount.
    pub fn discount_micros(&self) -> Micros {
        self.platform_discount_micros + self.customer_discount_micros
    }

    /// 支付金额: original − discount.
    pub fn paid_micros(&self) -> Micros {
        self.original_micros - self.discount_micros()
    }

    /// 余额支付金额: recharge-voucher balance + cash (+ arrears).
    pub fn balance_micros(&self) -> Micros {
        self.recharge_voucher_micros + self.cash_micros + self.arrears_micros
    }

    /// The §3.8.1 order view: paid after the coupon (600 − 300 − 70 = 230).
    pub fn order_paid_micros(&self) -> Micros {
        self.paid_micros() - self.coupon_micros
    }

    /// Money that may be refunded: cash and credit (coupons and vouchers are not refundable).
    pub fn refundable_micros(&self) -> Micros {
        self.cash_micros + self.credit_micros
    }

    /// Checks both identities and non-negativity.
    pub fn check_identities(&self) -> Result<(), PaymentError> {
        let parts = [
            self.original_micros,
            self.platform_discount_micros,
            self.customer_discount_micros,
            self.coupon_micros,
            self.deduction_voucher_micros,
            self.recharge_voucher_micros,
            self.cash_micros,
            self.credit_micros,
            self.arrears_micros,
        ];
        if parts.iter().any(|p| *p < 0) {
            return Err(PaymentError::IdentityViolated("negative part".into()));
        }
        let draws = self
            .deduction_draws
            .iter()
            .try_fold(0i64, |acc, d| acc.checked_add(d.1))
            .ok_or(PaymentError::Overflow)?;
        if draws != self.deduction_voucher_micros {
            return Err(PaymentError::IdentityViolated(
                "voucher draws do not add up".into(),
            ));
        }
        // In i128: no sum of members can overflow.
        let w = i128::from;
        let paid = w(self.original_micros)
            - w(self.platform_discount_micros)
            - w(self.customer_discount_micros);
        let settled = w(self.recharge_voucher_micros)
            + w(self.cash_micros)
            + w(self.arrears_micros)
            + w(self.credit_micros)
            + w(self.deduction_voucher_micros)
            + w(self.coupon_micros);
        if settled != paid {
            return Err(PaymentError::IdentityViolated(format!(
                "balance + credit + vouchers + coupons = {settled} != paid {paid}"
            )));
        }
        Ok(())
    }
}

fn check_sizes(w: &Wallet) -> Result<(), PaymentError> {
    if w.coupons.len() > MAX_INSTRUMENTS || w.deduction_vouchers.len() > MAX_INSTRUMENTS {
        return Err(PaymentError::TooManyInstruments);
    }
    Ok(())
}

/// Plans how `req` is paid from `wallet`, without changing it.
pub fn plan_payment(wallet: &Wallet, req: &PaymentRequest<'_>) -> Result<Payment, PaymentError> {
    check_sizes(wallet)?;
    if req.original_micros < 0
        || req.platform_discount_micros < 0
        || req.customer_discount_micros < 0
    {
        return Err(PaymentError::InvalidAmounts("negative amount".into()));
    }
    let discount = req
        .platform_discount_micros
        .checked_add(req.customer_discount_micros)
        .ok_or(PaymentError::Overflow)?;
    if discount > req.original_micros {
        return Err(PaymentError::InvalidAmounts(
            "discounts exceed the original amount".into(),
        ));
    }
    let due = req.original_micros - discount;
    let mut p = Payment {
        original_micros: req.original_micros,
        platform_discount_micros: req.platform_discount_micros,
        customer_discount_micros: req.customer_discount_micros,
        ..Payment::default()
    };
    // The best coupon (threshold on the discounted amount) and the usable deduction
    // vouchers, earliest expiry first; then the one payment order decides the takes.
    let coupon = if req.coupon_allowed {
        wallet
            .coupons
            .iter()
            .filter(|c| c.usable(req.at) && c.threshold_micros <= due && c.off_micros > 0)
            .min_by(|a, b| {
                b.off_micros
                    .cmp(&a.off_micros)
                    .then_with(|| {
                        a.valid_until
                            .unwrap_or(Millis::MAX)
                            .cmp(&b.valid_until.unwrap_or(Millis::MAX))
                    })
                    .then_with(|| a.id.cmp(&b.id))
            })
    } else {
        None
    };
    let mut vouchers: Vec<&DeductionVoucher> = wallet
        .deduction_vouchers
        .iter()
        .filter(|v| v.usable(req.at, req.product))
        .collect();
    vouchers.sort_by(|a, b| {
        a.valid_until
            .unwrap_or(Millis::MAX)
            .cmp(&b.valid_until.unwrap_or(Millis::MAX))
            .then_with(|| a.id.cmp(&b.id))
    });
    let voucher_total = vouchers
        .iter()
        .try_fold(0i64, |acc, v| acc.checked_add(v.balance_micros))
        .ok_or(PaymentError::Overflow)?;
    let drawn = draw(
        req.mode,
        |f| match f {
            Fund::Coupon => coupon.map_or(0, |c| c.off_micros),
            Fund::DeductionVoucher => voucher_total,
            Fund::RechargeVoucher => wallet.recharge_voucher_micros,
            Fund::Cash => wallet.cash_micros,
            Fund::Credit => wallet.credit_available_micros(),
        },
        due,
    );
    p.coupon_micros = drawn.take(Fund::Coupon);
    if p.coupon_micros > 0 {
        p.coupon_id = coupon.map(|c| c.id.clone());
    }
    let mut left = drawn.take(Fund::DeductionVoucher);
    for v in vouchers {
        if left == 0 {
            break;
        }
        let take = v.balance_micros.min(left);
        p.deduction_draws.push((v.id.clone(), take));
        p.deduction_voucher_micros += take;
        left -= take;
    }
    p.recharge_voucher_micros = drawn.take(Fund::RechargeVoucher);
    p.cash_micros = drawn.take(Fund::Cash);
    p.credit_micros = drawn.take(Fund::Credit);
    if drawn.rest > 0 {
        if req.mode == BillingMode::Prepaid {
            return Err(PaymentError::InsufficientFunds {
                needed: due - p.coupon_micros - p.deduction_voucher_micros,
                available: wallet.recharge_voucher_micros.max(0)
                    + wallet.cash_micros.max(0)
                    + wallet.credit_available_micros(),
            });
        }
        p.arrears_micros = drawn.rest;
    }
    p.check_identities()?;
    Ok(p)
}

/// Applies a planned payment to the wallet; fails (changing nothing) if the wallet no longer
/// supports it.
pub fn apply_payment(wallet: &mut Wallet, p: &Payment) -> Result<(), PaymentError> {
    p.check_identities()?;
    if let Some(id) = &p.coupon_id
        && !wallet.coupons.iter().any(|c| &c.id == id && !c.used)
    {
        return Err(PaymentError::Stale(format!("coupon {id}")));
    }
    for (id, take) in &p.deduction_draws {
        if !wallet
            .deduction_vouchers
            .iter()
            .any(|v| &v.id == id && v.balance_micros >= *take)
        {
            return Err(PaymentError::Stale(format!("deduction voucher {id}")));
        }
    }
    if wallet.recharge_voucher_micros < p.recharge_voucher_micros
        || wallet.cash_micros < p.cash_micros
        || wallet.credit_available_micros() < p.credit_micros
    {
        return Err(PaymentError::Stale("balances changed".into()));
    }
    // Every new balance is computed (checked) before anything changes.
    let sub = |a: Micros, b: Micros| a.checked_sub(b).ok_or(PaymentError::Overflow);
    let add = |a: Micros, b: Micros| a.checked_add(b).ok_or(PaymentError::Overflow);
    let recharge_voucher = sub(wallet.recharge_voucher_micros, p.recharge_voucher_micros)?;
    let cash = sub(wallet.cash_micros, p.cash_micros)?;
    let credit_used = add(wallet.credit_used_micros, p.credit_micros)?;
    let arrears = add(wallet.arrears_micros, p.arrears_micros)?;
    if let Some(id) = &p.coupon_id {
        for c in wallet.coupons.iter_mut().filter(|c| &c.id == id) {
            c.used = true;
        }
    }
    for (id, take) in &p.deduction_draws {
        for v in wallet.deduction_vouchers.iter_mut().filter(|v| &v.id == id) {
            // Checked above: the voucher holds at least `take`.
            v.balance_micros -= take;
        }
    }
    wallet.recharge_voucher_micros = recharge_voucher;
    wallet.cash_micros = cash;
    wallet.credit_used_micros = credit_used;
    wallet.arrears_micros = arrears;
    Ok(())
}

/// Where a refund goes: first it repays credit drawn by the refunded charge, the rest goes to
/// cash (choice: the manual says only "实付金额（实际现金）").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefundSplit {
    /// Returned to the credit line.
    pub credit_micros: Micros,
    /// Returned to cash.
    pub cash_micros: Micros,
}

/// Splits a refund of `amount` for charges that drew `credit_paid` from credit.
pub fn split_refund(amount: Micros, credit_paid: Micros) -> RefundSplit {
    let amount = amount.max(0);
    let credit = amount.min(credit_paid.max(0));
    RefundSplit {
        credit_micros: credit,
        cash_micros: amount - credit,
    }
}

/// Applies a refund: credit repaid first, then cash; arrears are settled from the cash part
/// first.
///
/// Errors: `PaymentError::Overflow` when a sum does not fit in i64 micros (the wallet is then
/// unchanged).
pub fn apply_refund(wallet: &mut Wallet, split: RefundSplit) -> Result<(), PaymentError> {
    let credit = split.credit_micros.min(wallet.credit_used_micros);
    let rest_of_credit = split
        .credit_micros
        .checked_sub(credit)
        .ok_or(PaymentError::Overflow)?;
    let cash = split
        .cash_micros
        .checked_add(rest_of_credit)
        .ok_or(PaymentError::Overflow)?;
    let settle = cash.min(wallet.arrears_micros);
    let new_cash = wallet
        .cash_micros
        .checked_add(cash.checked_sub(settle).ok_or(PaymentError::Overflow)?)
        .ok_or(PaymentError::Overflow)?;
    wallet.credit_used_micros -= credit;
    wallet.arrears_micros -= settle;
    wallet.cash_micros = new_cash;
    Ok(())
}

/// Adds cash (a recharge); arrears are settled first.
///
/// Errors: `PaymentError::Overflow` when the cash balance would not fit in i64 micros.
pub fn recharge_cash(wallet: &mut Wallet, amount: Micros) -> Result<(), PaymentError> {
    apply_refund(
        wallet,
        RefundSplit {
            credit_micros: 0,
            cash_micros: amount,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const Y: i64 = 1_000_000;

    fn coupon(id: &str, threshold: i64, off: i64) -> Coupon {
        Coupon {
            id: id.into(),
            threshold_micros: threshold * Y,
            off_micros: off * Y,
            valid_from: 0,
            valid_until: None,
            used: false,
        }
    }

    fn wallet(cash: i64, voucher: i64, credit: i64) -> Wallet {
        Wallet {
            coupons: vec![coupon("c100-70", 100, 70)],
            deduction_vouchers: vec![],
            recharge_voucher_micros: voucher * Y,
            cash_micros: cash * Y,
            credit_limit_micros: credit * Y,
            credit_used_micros: 0,
            arrears_micros: 0,
        }
    }

    fn req(mode: BillingMode, original: i64, customer_discount: i64) -> PaymentRequest<'static> {
        PaymentRequest {
            product: "drp",
            mode,
            coupon_allowed: true,
            original_micros: original * Y,
            platform_discount_micros: 0,
            customer_discount_micros: customer_discount * Y,
            at: 10,
        }
    }

    /// `check(wallet, request, (coupon, deduction, recharge voucher, cash, credit, arrears))`.
    fn check(w: &Wallet, r: PaymentRequest<'_>, expected: (i64, i64, i64, i64, i64, i64)) {
        let p = plan_payment(w, &r).expect("plan");
        assert_eq!(
            (
                p.coupon_micros,
                p.deduction_voucher_micros,
                p.recharge_voucher_micros,
                p.cash_micros,
                p.credit_micros,
                p.arrears_micros
            ),
            (
                expected.0 * Y,
                expected.1 * Y,
                expected.2 * Y,
                expected.3 * Y,
                expected.4 * Y,
                expected.5 * Y
            )
        );
        p.check_identities().expect("identities");
        let mut w2 = w.clone();
        apply_payment(&mut w2, &p).expect("apply");
    }

    #[test]
    fn worked_example_600_minus_300_minus_70() {
        // §1.4.4.1.2: cash 3000, coupon 满100-70, voucher 3000, credit 3000, 5 折, 2 × 300.
        let mut w = wallet(3000, 3000, 3000);
        let r = req(BillingMode::Prepaid, 600, 300);
        let p = plan_payment(&w, &r).expect("plan");
        assert_eq!(p.order_paid_micros(), 230 * Y);
        assert_eq!(p.paid_micros(), 300 * Y);
        check(&w, r, (70, 0, 230, 0, 0, 0));
        apply_payment(&mut w, &p).expect("apply");
        assert_eq!(w.recharge_voucher_micros, 2770 * Y);
        assert_eq!(w.cash_micros, 3000 * Y);
        assert_eq!(w.credit_available_micros(), 3000 * Y);
        assert_eq!(w.unused_coupons(), 0);
        // A retry of the same plan is stale: the coupon is gone.
        assert!(matches!(
            apply_payment(&mut w, &p),
            Err(PaymentError::Stale(_))
        ));
    }

    #[test]
    fn voucher_short_then_cash() {
        // §1.4.4.1.4: voucher insufficient → 130 voucher + 100 cash.
        check(
            &wallet(3000, 130, 3000),
            req(BillingMode::Prepaid, 600, 300),
            (70, 0, 130, 100, 0, 0),
        );
    }

    #[test]
    fn order_of_deduction() {
        // Make-up (§1.4.4.1.3): no coupon, voucher pays 10.
        let mut r = req(BillingMode::Prepaid, 10, 0);
        r.coupon_allowed = false;
        check(&wallet(3000, 2744, 3000), r, (0, 0, 10, 0, 0, 0));
        // Threshold not met.
        check(
            &wallet(3000, 0, 0),
            req(BillingMode::Prepaid, 99, 0),
            (0, 0, 0, 99, 0, 0),
        );
        // Coupon larger than the charge only zeroes it.
        let mut w = wallet(0, 0, 0);
        w.coupons = vec![coupon("c", 0, 70)];
        check(&w, req(BillingMode::Prepaid, 50, 0), (50, 0, 0, 0, 0, 0));
        // Everything: voucher, cash, credit.
        check(
            &wallet(100, 100, 1000),
            req(BillingMode::Prepaid, 700, 0),
            (70, 0, 100, 100, 430, 0),
        );
        // Postpaid: no coupon; deduction vouchers first, expiring first; then arrears.
        let mut w = wallet(5, 5, 5);
        w.deduction_vouchers = vec![
            DeductionVoucher {
                id: "late".into(),
                balance_micros: 10 * Y,
                valid_from: 0,
                valid_until: None,
                products: vec![],
            },
            DeductionVoucher {
                id: "soon".into(),
                balance_micros: 3 * Y,
                valid_from: 0,
                valid_until: Some(100),
                products: vec!["drp".into()],
            },
            DeductionVoucher {
                id: "other".into(),
                balance_micros: 3 * Y,
                valid_from: 0,
                valid_until: Some(50),
                products: vec!["obs".into()],
            },
        ];
        let p = plan_payment(&w, &req(BillingMode::Postpaid, 200, 0)).expect("plan");
        assert_eq!(
            p.deduction_draws,
            vec![("soon".to_string(), 3 * Y), ("late".to_string(), 10 * Y)]
        );
        check(
            &w,
            req(BillingMode::Postpaid, 200, 0),
            (0, 13, 5, 5, 5, 172),
        );
    }

    #[test]
    fn prepaid_shortfall_fails_and_changes_nothing() {
        let w = wallet(10, 10, 10);
        let err = plan_payment(&w, &req(BillingMode::Prepaid, 600, 300)).expect_err("short");
        assert_eq!(
            err,
            PaymentError::InsufficientFunds {
                needed: 230 * Y,
                available: 30 * Y
            }
        );
        assert!(matches!(
            plan_payment(&w, &req(BillingMode::Prepaid, 10, 20)),
            Err(PaymentError::InvalidAmounts(_))
        ));
    }

    #[test]
    fn refunds_repay_credit_then_cash_and_settle_arrears() {
        let mut w = wallet(0, 0, 100);
        w.credit_used_micros = 40 * Y;
        w.arrears_micros = 5 * Y;
        let s = split_refund(100 * Y, 40 * Y);
        assert_eq!(
            s,
            RefundSplit {
                credit_micros: 40 * Y,
                cash_micros: 60 * Y
            }
        );
        apply_refund(&mut w, s).expect("refund");
        assert_eq!(
            (w.credit_used_micros, w.arrears_micros, w.cash_micros),
            (0, 0, 55 * Y)
        );
        assert_eq!(split_refund(-5, 10), RefundSplit::default());
        recharge_cash(&mut w, Y).expect("recharge");
        assert_eq!(w.cash_micros, 56 * Y);
    }
}
