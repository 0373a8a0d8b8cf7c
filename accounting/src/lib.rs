//! Accounting: metering, rating, the double-entry ledger and bills.
//!
//! Money is integer micro-units (1 yuan = 1_000_000 micros) everywhere; rates may be
//! decimals, but every amount is rounded to an integer at a fixed, documented point.
//!
//! The pure, deterministic core follows the operations manual
//! (`shared/seeds/002_17f9d871f641e862.txt`):
//!
//! | module | manual |
//! |---|---|
//! | [`civil`] | wall-clock time as an argument, month arithmetic |
//! | [`money`] | micro-units and the rounding rule |
//! | [`rating`] | price plans (a job's price is one too), §1.4.5, §3.6.6 |
//! | [`discount`] | platform / customer / contract discounts, §3.12, §3.8.5.1.1 |
//! | [`payment`] | coupons, vouchers, cash, credit and THE payment order ([`payment::draw`]), §1.4.4, §3.11, §3.8 |
//! | [`subscription`] | prepaid monthly terms: renew, unsubscribe, make-up, refund, §1.4.5 |
//! | [`freeze`] | minimum purchase / freeze amounts, §3.6.5 |
//! | [`bill`] | bill amounts, the provider/operator split, bill lines, period bills, hour split, late usage, provider statements, §3.8.3 |
//! | [`settle`] | who pays what: holds, job charges, licence terms, refunds, payouts as ledger operations and bill lines |
//! | [`ledger`] | account kinds, the balance-limit model, transfers, outcomes, ledger errors |

pub mod bill;
pub mod civil;
pub mod discount;
pub mod freeze;
pub mod ledger;
pub mod money;
pub mod payment;
pub mod rating;
pub mod settle;
pub mod subscription;

pub use bill::{Amounts, NewBillLine, Split, split_share};
pub use discount::{DiscountBook, DiscountStrategy};
pub use freeze::{FreezeDecision, FreezeInput, LimitSettings, freeze_state};
pub use ledger::{
    AccountKind, BalanceLimit, LedgerError, TransferOutcome, TransferSpec, derive_id,
    sum_is_balanced,
};
pub use payment::{Fund, Payment, Wallet, draw, plan_payment};
pub use rating::{
    JobCharge, JobPrice, PricePlan, RateError, RatedCharge, Usage, cap_charge, rate, rate_job,
};
pub use subscription::Subscription;
