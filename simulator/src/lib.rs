//! The billing simulator (`tessera billing simulate`): scenario files replayed on the
//! production ledger.
//!
//! A scenario is a TOML document: settings, customers with their opening balances, products
//! and their price plans, discounts, contracts, coupons, vouchers, product limits and a list
//! of timed events. [`simulate`] replays the events in order against the pure modules of
//! `tessera-accounting` — rating, discounts, payment order, subscriptions, freeze decisions,
//! bills — and carries every movement of money out on the operator's own SQL ledger
//! (`tessera-store` on a throw-away SQLite database, [`tessera_store::Store::open_temporary`]),
//! with the event time as the clock; after each event it checks that the stored balances and
//! the wallets agree, that double entry holds, and that retrying the event's transfers changes
//! nothing. Nothing reads a wall clock, so the same text always gives the same report.
//!
//! Modules: [`format`] (the TOML format and the typed events), `setup` (from a parsed file to
//! the initial state), `sim` (the simulation), [`report`] (what a run produced, as text).
//!
//! # Format
//!
//! Amounts are yuan, written as strings or integers (`"230"`, `"0.5"`, `300`); factors and
//! unit prices are decimal strings; times are `"YYYY-MM-DD[ HH:MM[:SS]]"` (naive local time).
//!
//! ```toml
//! name = "§1.4.4.1.2 order with discount and coupon"
//!
//! [settings]
//! discount_strategy = "customer_only"   # customer_only | platform_only | stacked |
//!                                       # stacked_platform_first | none
//! daily_price_basis = "previous_term_month"   # default: the manual's note (§1.4.5.1.2) |
//!                                       # overdue_month_period | calendar_month_of_overdue |
//!                                       # fixed_30 (any fixed_N)
//! late_window_hours = 0                 # late usage window after a month's end
//! makeup_discount = false               # §2.9.3.8 switch
//!
//! [[customers]]
//! id = "alice"
//! cash = "3000"
//! recharge_voucher = "3000"
//! credit = "3000"
//!
//! [[products]]
//! id = "drp"
//! mode = "prepaid"                      # prepaid | postpaid
//! monthly_price = "300"                 # prepaid: 月单价 per resource
//! provider = "prov"                     # optional
//! operator_share_bps = 1000             # optional, default 0
//! # optional extra components, cap and minimum:
//! # components = [{ type = "per_unit", metric = "rows", unit_size = 1000, price = "0.01" }]
//! # cap = "100"
//! # minimum = "1"
//!
//! [[discounts]]
//! id = "vip"
//! source = "customer"                   # platform | customer
//! customer = "alice"
//! factor = "0.5"
//! # product = "drp", range = "months", from = 1, to = 12,
//! # valid_from = "2021-01-01", valid_until = "2022-01-01", enabled = true
//!
//! [[coupons]]
//! id = "c1"
//! customer = "alice"
//! threshold = "100"
//! off = "70"
//!
//! [[events]]
//! at = "2021-10-19 11:00"
//! kind = "subscribe"
//! id = "s1"
//! customer = "alice"
//! product = "drp"
//! months = 2
//! ```
//!
//! Component types: `one_time {price}`, `per_job {price}`, `per_unit {metric, unit_size,
//! price, free_units, round_up}`, `package {metric, unit_size, included_units, price,
//! overage_price}`, `graduated` / `volume {metric, unit_size, tiers = [{up_to, price,
//! flat}], free_units, round_up}`, `compute_power {metric, unit_size, coefficient, price}`
//! (算力时 = usage hours × coefficient), `monthly {price}`, `hourly {price}`; metrics `jobs`,
//! `rows`, `cpu_millis`, `resource_millis`. Per-unit and tier prices are yuan per billing
//! unit.
//!
//! Other tables: `[[contracts]] {id, customer, start, end, credit, discounts = [...]}`,
//! `[[deduction_vouchers]] {id, customer, amount, valid_from, valid_until, products}`,
//! `[[recharge_vouchers]] {id, customer, amount, valid_from, valid_until}` (redeemed by an
//! event), `[limits] {platform = {min_purchase, min_freeze, enabled}, whitelist = [..],
//! products = [{product, ..}], customers = [{customer, product, ..}]}`.
//!
//! Event kinds (`kind`):
//!
//! | kind | fields | effect |
//! |---|---|---|
//! | `subscribe` | id, customer, product, months, units | prepaid order (§1.4.5.1.1) |
//! | `renew` | id, months | renewal with make-up (§1.4.5.1.2) |
//! | `unsubscribe` | id | make-up and refund (§1.4.5.1.3) |
//! | `freeze_resource` | id | the prepaid resource is frozen at `at` |
//! | `open_metered` | id, customer, product | a postpaid hourly resource starts |
//! | `settle` | — | every open hourly resource is billed up to the last whole hour |
//! | `close_metered` | id | final settlement, a started hour counts whole (§1.4.5.2) |
//! | `usage` | customer, product, jobs, rows, cpu_millis, resource_millis, arrived_at | metered usage |
//! | `check_job` | customer, product | logs the freeze decision for starting a job |
//! | `recharge` | customer, amount | cash recharge |
//! | `redeem_recharge_voucher` | id | a recharge voucher is redeemed |
//! | `manual_freeze` / `manual_thaw` / `clear_manual` | customer, reason | operator actions |
//! | `whitelist_add` / `whitelist_remove` | customer | platform white list |
//! | `terminate_contract` | id | withdraws unused credit |
//! | `payout` | provider, amount | pays a provider out |
//! | `close_bills` | — | closes bills past their late window |
//!
//! A business refusal (insufficient funds, below the minimum purchase amount, frozen
//! account) is logged as `rejected: …` and changes nothing; a malformed scenario is a
//! [`ScenarioError`].

mod format;
pub mod report;
mod setup;
mod sim;

use std::fmt::Write as _;

use tessera_accounting::bill::{BillError, provider_statements};
use tessera_accounting::civil::format_millis;
use tessera_accounting::ledger::{AccountKind, BalanceLimit, TransferOutcome};
use tessera_accounting::money::format_amount;
use tessera_store::{Store, StoreError};

pub use format::EventKind;
pub use report::{CustomerBalance, SimulationReport};

/// Largest scenario text accepted.
pub const MAX_SCENARIO_BYTES: usize = 1 << 20;
/// Most events in one scenario.
pub const MAX_EVENTS: usize = 10_000;
/// Most customers, products, discounts, coupons or vouchers in one scenario (each).
pub const MAX_ENTITIES: usize = 1_000;
/// Most hours one settlement may cover.
pub const MAX_SETTLE_HOURS: i64 = 24 * 366;

/// Why a scenario could not be simulated.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ScenarioError {
    /// The text is larger than [`MAX_SCENARIO_BYTES`].
    #[error("scenario larger than {MAX_SCENARIO_BYTES} bytes")]
    TooLarge,
    /// The text is not valid scenario TOML.
    #[error("scenario does not parse: {0}")]
    Parse(String),
    /// More than [`MAX_EVENTS`] events or [`MAX_ENTITIES`] entities.
    #[error("scenario exceeds a size bound: {0}")]
    TooMany(String),
    /// A field has an invalid value.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// Where.
        field: String,
        /// Why.
        reason: String,
    },
    /// An id is defined twice.
    #[error("duplicate id {0}")]
    Duplicate(String),
    /// A reference to an unknown customer, product, subscription, contract or voucher.
    #[error("unknown {kind} {id}")]
    Unknown {
        /// What was referenced.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// An event names a customer, product, subscription, contract, voucher or metered
    /// resource that does not exist.
    #[error("event {event} ({event_kind}), field {field}: unknown {kind} {id}")]
    UnknownReference {
        /// The event's index in the file's `[[events]]` (0-based).
        event: usize,
        /// The event's kind.
        event_kind: String,
        /// The event field holding the reference.
        field: &'static str,
        /// What was referenced.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// Events are not in time order.
    #[error("event {0} is earlier than the event before it")]
    EventsOutOfOrder(usize),
    /// The ledger refused a movement the simulator expected to succeed (a bug), or the
    /// throw-away store could not be opened.
    #[error("ledger refused a transfer: {0}")]
    Ledger(String),
    /// Wallets and ledger disagree, or an identity failed (a bug).
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    /// A bill operation failed.
    #[error(transparent)]
    Bill(#[from] BillError),
    /// A payment or wallet sum failed (an amount out of range).
    #[error(transparent)]
    Payment(#[from] tessera_accounting::payment::PaymentError),
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl ToString) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

fn store_err(e: impl std::fmt::Display) -> ScenarioError {
    ScenarioError::Ledger(e.to_string())
}

/// Carries out the ledger work the last event queued, in order, on the store: every batch is
/// posted at its event time and then retried, which must change nothing.
async fn flush(sim: &mut sim::Sim, store: &Store) -> Result<(), ScenarioError> {
    for out in std::mem::take(&mut sim.outbox) {
        match out {
            sim::Outgoing::Transfers(chain, at) => {
                let first = store.post_transfers(&chain, at).await.map_err(store_err)?;
                if first.iter().any(|o| *o != TransferOutcome::Created) {
                    return Err(ScenarioError::Inconsistent(format!(
                        "transfers written twice: {first:?}"
                    )));
                }
                let retry = store.post_transfers(&chain, at).await.map_err(store_err)?;
                if retry.iter().any(|o| *o != TransferOutcome::Exists) {
                    return Err(ScenarioError::Inconsistent(format!(
                        "retrying a batch was not idempotent: {retry:?}"
                    )));
                }
            }
            sim::Outgoing::CreditLine(customer, line) => {
                let limit = BalanceLimit::credit_line(line).map_err(store_err)?;
                store
                    .set_account_limit(
                        &AccountKind::CustomerCredit(customer).name(),
                        limit.min_balance_micros(),
                    )
                    .await
                    .map_err(store_err)?;
            }
            sim::Outgoing::Payout(t, at) => {
                match store.post_transfers(std::slice::from_ref(&t), at).await {
                    Ok(_) => sim
                        .log
                        .push(format!("  paid out {}", format_amount(t.amount_micros))),
                    Err(StoreError::Ledger(why)) => sim.reject(format!("payout: {why}")),
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
    }
    Ok(())
}

/// The wallets agree with the stored balances, double entry holds on the stored data, and
/// every bill line satisfies the §3.8 identities.
async fn check_consistency(sim: &sim::Sim, store: &Store) -> Result<(), ScenarioError> {
    if !store.ledger_balanced().await.map_err(store_err)? {
        return Err(ScenarioError::Inconsistent("ledger not balanced".into()));
    }
    for (c, st) in &sim.customers {
        let w = &st.wallet;
        let pairs = [
            ("cash", w.cash_micros, AccountKind::CustomerCash(c.clone())),
            (
                "recharge voucher",
                w.recharge_voucher_micros,
                AccountKind::CustomerRechargeVoucher(c.clone()),
            ),
            (
                "deduction voucher",
                w.deduction_voucher_total_micros(),
                AccountKind::CustomerDeductionVoucher(c.clone()),
            ),
            (
                "credit",
                w.credit_used_micros
                    .checked_neg()
                    .ok_or_else(|| ScenarioError::Inconsistent("credit overflow".into()))?,
                AccountKind::CustomerCredit(c.clone()),
            ),
            (
                "arrears",
                w.arrears_micros
                    .checked_neg()
                    .ok_or_else(|| ScenarioError::Inconsistent("arrears overflow".into()))?,
                AccountKind::CustomerArrears(c.clone()),
            ),
        ];
        for (name, wallet, account) in pairs {
            let ledger = store.balance(&account.name()).await.map_err(store_err)?;
            if wallet != ledger {
                return Err(ScenarioError::Inconsistent(format!(
                    "customer {c} {name}: wallet {wallet} != ledger {ledger}"
                )));
            }
        }
    }
    sim.check_bills()
}

/// Runs a scenario (see the crate docs for the format) on a fresh throw-away store.
/// Deterministic: the same text always gives the same report.
pub async fn simulate(scenario_text: &str) -> Result<SimulationReport, ScenarioError> {
    if scenario_text.len() > MAX_SCENARIO_BYTES {
        return Err(ScenarioError::TooLarge);
    }
    let file: format::ScenarioFile =
        toml::from_str(scenario_text).map_err(|e| ScenarioError::Parse(e.message().to_string()))?;
    let (mut sim, events, name) = setup::build(file)?;
    let store = Store::open_temporary().await.map_err(store_err)?;
    let report = run(&mut sim, &events, name, &store).await;
    store.close().await;
    report
}

/// Names the event and its field in an unknown-reference error.
fn in_event(err: ScenarioError, e: &format::Ev) -> ScenarioError {
    match err {
        ScenarioError::Unknown { kind, id } => ScenarioError::UnknownReference {
            event: e.index,
            event_kind: e.kind.to_string(),
            field: match kind {
                "customer" => "customer",
                "product" => "product",
                "provider" => "provider",
                _ => "id",
            },
            kind,
            id,
        },
        other => other,
    }
}

/// Records a usage event that carries an `id` through the store's own idempotent path
/// ([`Store::record_usage_once`]): `true` the first time; `false` (logged, not charged again)
/// when the id exists with every field equal; a `rejected:` line when it exists with any field
/// different — exactly as the operator treats a repeated usage event.
async fn usage_first_time(
    sim: &mut sim::Sim,
    store: &Store,
    e: &format::Ev,
    id: &str,
) -> Result<bool, ScenarioError> {
    let customer = e.customer()?;
    let product = e.product()?;
    let mut events = Vec::with_capacity(5);
    for (metric, q) in [
        ("jobs", e.jobs),
        ("rows", e.rows),
        ("cpu_millis", e.cpu_millis),
        ("resource_millis", e.resource_millis),
        ("units", e.units),
    ] {
        let quantity = i64::try_from(q.unwrap_or(0))
            .map_err(|_| invalid(format!("event {} {metric}", e.index), "out of range"))?;
        events.push(tessera_store::UsageEventRecord {
            event_id: tessera_accounting::derive_id(&["scenario-usage", id, metric]),
            job_id: id.to_string(),
            party: customer.to_string(),
            metric: format!("{product}:{metric}"),
            protocol: String::new(),
            attempt: 1,
            quantity,
            event_time_ms: e.at,
        });
    }
    match store.record_usage_once(&events, e.at).await {
        Ok(tessera_accounting::TransferOutcome::Created) => Ok(true),
        Ok(tessera_accounting::TransferOutcome::Exists) => {
            sim.log.push(format!(
                "  usage {id} was already recorded with the same fields: not charged again"
            ));
            Ok(false)
        }
        Err(tessera_store::StoreError::IdempotencyMismatch { .. }) => {
            sim.reject(format!(
                "usage {id} exists with different fields; not recorded"
            ));
            Ok(false)
        }
        Err(other) => Err(store_err(other)),
    }
}

async fn run(
    sim: &mut sim::Sim,
    events: &[format::Ev],
    name: String,
    store: &Store,
) -> Result<SimulationReport, ScenarioError> {
    flush(sim, store).await?;
    check_consistency(sim, store).await?;
    for e in events {
        let mut head = format!("[{}] {}", format_millis(e.at), e.kind);
        for v in [&e.id, &e.customer, &e.product, &e.provider]
            .into_iter()
            .flatten()
        {
            head.push(' ');
            head.push_str(v);
        }
        if let Some(m) = e.months {
            let _ = write!(head, " months={m}");
        }
        if let Some(a) = e.amount {
            let _ = write!(head, " amount={}", format_amount(a));
        }
        sim.log.push(head);
        if e.kind == format::EventKind::Usage
            && let Some(id) = &e.id
            && !usage_first_time(sim, store, e, id).await?
        {
            flush(sim, store).await?;
            continue;
        }
        sim.event(e).map_err(|err| in_event(err, e))?;
        flush(sim, store).await?;
        check_consistency(sim, store).await?;
    }
    let customers = sim
        .customers
        .iter()
        .map(|(c, s)| CustomerBalance {
            customer: c.clone(),
            cash_micros: s.wallet.net_cash_micros(),
            recharge_voucher_micros: s.wallet.recharge_voucher_micros,
            deduction_voucher_micros: s.wallet.deduction_voucher_total_micros(),
            credit_limit_micros: s.wallet.credit_limit_micros,
            credit_available_micros: s.wallet.credit_available_micros(),
            arrears_micros: s.wallet.arrears_micros,
            unused_coupons: s.wallet.unused_coupons(),
        })
        .collect();
    let ledger_balances = store
        .balances()
        .await
        .map_err(store_err)?
        .into_iter()
        .filter(|b| b.balance_micros != 0)
        .map(|b| (b.account, i128::from(b.balance_micros)))
        .collect();
    let transfer_count = store.transfers().await.map_err(store_err)?.len();
    Ok(SimulationReport {
        name,
        log: std::mem::take(&mut sim.log),
        customers,
        bills: sim.bills.bills().cloned().collect(),
        provider_statements: provider_statements(&sim.bills)?,
        period_view: sim.bills.period_statistics()?.into_iter().collect(),
        ledger_balances,
        transfer_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_accounting::bill::BillLineKind;

    async fn check(text: &str, expected: Result<(), ScenarioError>) {
        match (simulate(text).await, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(x)) => assert_eq!(e, x),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    const MAKEUP: &str = r#"
name = "make-up discount switch"
[settings]
discount_strategy = "customer_only"
daily_price_basis = "overdue_month_period"
makeup_discount = SWITCH
[[customers]]
id = "t"
cash = "1000"
[[products]]
id = "drp"
mode = "prepaid"
monthly_price = "300"
[[discounts]]
id = "half"
source = "customer"
customer = "t"
factor = "0.5"
[[events]]
at = "2021-10-19 11:00"
kind = "subscribe"
id = "s"
customer = "t"
product = "drp"
months = 1
[[events]]
at = "2021-11-19 15:00"
kind = "unsubscribe"
id = "s"
"#;

    async fn makeup_paid(switch: bool) -> i64 {
        let r = simulate(&MAKEUP.replace("SWITCH", &switch.to_string()))
            .await
            .expect("simulate");
        r.bills
            .iter()
            .flat_map(|b| b.lines.iter())
            .filter(|l| l.line.kind == BillLineKind::MakeUp)
            .map(|l| l.line.amounts.paid().expect("paid"))
            .sum()
    }

    #[tokio::test]
    async fn makeup_discount_switch_of_2_9_3_8() {
        // Off (default): make-ups are at the original price; on: the previous term's discount.
        assert_eq!(makeup_paid(false).await, 10_000_000);
        assert_eq!(makeup_paid(true).await, 5_000_000);
    }

    /// A usage event's `id` is its idempotency key, through the store's own path: the same id
    /// with the same fields is charged once; any field different (the quantity, the event
    /// time) is refused.
    #[tokio::test]
    async fn usage_ids_are_deduplicated_as_the_store_does() {
        let usage = |at: &str, jobs: u32| {
            format!(
                "[[events]]\nat = \"{at}\"\nkind = \"usage\"\nid = \"u1\"\ncustomer = \"c\"\nproduct = \"p\"\njobs = {jobs}\n"
            )
        };
        let mut text = String::from(
            "name = \"dedupe\"\n[[customers]]\nid = \"c\"\ncash = \"100\"\n[[products]]\nid = \"p\"\nmode = \"postpaid\"\ncomponents = [ { type = \"per_job\", price = \"1\" } ]\n",
        );
        for _ in 0..4 {
            text.push_str(&usage("2021-10-15 10:00", 1));
        }
        text.push_str(&usage("2021-10-15 10:00", 2));
        text.push_str(&usage("2021-10-16 10:00", 1));
        let r = simulate(&text).await.expect("simulate");
        let lines: Vec<i64> = r
            .bills
            .iter()
            .flat_map(|b| b.lines.iter())
            .map(|l| l.line.amounts.original)
            .collect();
        assert_eq!(lines, vec![1_000_000], "{:#?}", r.log);
        assert_eq!(r.customers[0].cash_micros, 99_000_000);
        let dup = r
            .log
            .iter()
            .filter(|l| l.contains("already recorded"))
            .count();
        let refused = r
            .log
            .iter()
            .filter(|l| l.contains("rejected: usage u1 exists with different fields"))
            .count();
        assert_eq!((dup, refused), (3, 2), "{:#?}", r.log);
    }

    #[tokio::test]
    async fn malformed_scenarios_are_typed_errors() {
        check(
            "name = 1",
            Err(ScenarioError::Parse(
                "invalid type: integer `1`, expected a string".into(),
            )),
        )
        .await;
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = 1\n[[events]]\nat = \"2021-01-01\"\nkind = \"settle\"",
            Err(ScenarioError::EventsOutOfOrder(1)),
        ).await;
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = 1",
            Err(ScenarioError::UnknownReference {
                event: 0,
                event_kind: "recharge".into(),
                field: "customer",
                kind: "customer",
                id: "a".into(),
            }),
        ).await;
        check(
            "name = \"x\"\n[[customers]]\nid = \"a\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"recharge\"\ncustomer = \"a\"\namount = 1\n[[events]]\nat = \"2021-01-03\"\nkind = \"renew\"\nid = \"nosuch\"\nmonths = 1",
            Err(ScenarioError::UnknownReference {
                event: 1,
                event_kind: "renew".into(),
                field: "id",
                kind: "subscription",
                id: "nosuch".into(),
            }),
        ).await;
        check(
            "name = \"x\"\n[[customers]]\nid = \"a\"\n[[customers]]\nid = \"a\"",
            Err(ScenarioError::Duplicate("a".into())),
        )
        .await;
        check(
            "name = \"x\"\n[[events]]\nat = \"2021-01-02\"\nkind = \"dance\"",
            Err(invalid("event 0", "unknown kind dance")),
        )
        .await;
        assert_eq!(
            simulate(&" ".repeat(MAX_SCENARIO_BYTES + 1)).await,
            Err(ScenarioError::TooLarge)
        );
        check("name = \"x\"\nbogus = 1", Err(ScenarioError::Parse("unknown field `bogus`, expected one of `name`, `description`, `settings`, `customers`, `products`, `discounts`, `contracts`, `coupons`, `deduction_vouchers`, `recharge_vouchers`, `limits`, `events`".into()))).await;
    }
}
