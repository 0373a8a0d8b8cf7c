//! Ledger commands: deposits, credit lines, balances, transfers and usage events.

use clap::Subcommand;
use tessera_proto::v1 as pb;

use super::conn::Conn;
use super::output::{Listing, Out, fmt_micros};

/// `tessera deposit`: add funds to a buyer's cash (or voucher) account.
#[derive(Debug, clap::Args)]
pub struct DepositArgs {
    #[command(flatten)]
    conn: Conn,
    /// The customer credited [default: the caller]; only the operator deposits for someone
    /// else.
    #[arg(long, default_value = "")]
    user: String,
    /// Amount in micro-units (1 yuan = 1000000); at most 10^15 (10^9 yuan), and a customer's
    /// account holds at most that much.
    #[arg(long)]
    amount_micros: i64,
    /// Idempotency key, scoped to this user: the same key deposits once.
    #[arg(long)]
    key: String,
    /// cash, recharge_voucher or deduction_voucher.
    #[arg(long, default_value = "cash")]
    into: String,
}

/// `tessera credit`: set a buyer's credit line.
#[derive(Debug, clap::Args)]
pub struct CreditArgs {
    #[command(flatten)]
    conn: Conn,
    /// Buyer user id.
    #[arg(long)]
    user: String,
    /// Credit limit in micro-units (0 removes the line).
    #[arg(long)]
    limit_micros: i64,
}

/// `tessera ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Account balances and the double-entry check.
    Balances {
        #[command(flatten)]
        conn: Conn,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Ledger transfers.
    Transfers {
        #[command(flatten)]
        conn: Conn,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Usage events.
    Usage {
        #[command(flatten)]
        conn: Conn,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
}

/// Deposits once per idempotency key (keys are per customer); a replay says it was already
/// recorded and changes nothing.
pub async fn deposit(a: DepositArgs) -> anyhow::Result<()> {
    let ack = a
        .conn
        .connect()
        .await?
        .deposit(pb::DepositRequest {
            account: a.user.clone(),
            amount_micros: a.amount_micros,
            idempotency_key: a.key.clone(),
            into: a.into.clone(),
        })
        .await?
        .into_inner();
    let whom = if a.user.is_empty() {
        "your account".to_owned()
    } else {
        a.user.clone()
    };
    if ack.already_recorded {
        println!(
            "already recorded: the deposit with key {} for {whom} was made before; nothing changed",
            a.key
        );
    } else {
        println!(
            "deposited {} to {whom} ({})",
            fmt_micros(a.amount_micros),
            a.into
        );
    }
    Ok(())
}

/// Sets a credit line.
pub async fn credit(a: CreditArgs) -> anyhow::Result<()> {
    a.conn
        .connect()
        .await?
        .set_credit_limit(pb::CreditLimitRequest {
            customer: a.user.clone(),
            limit_micros: a.limit_micros,
        })
        .await?;
    println!("credit line of {}: {}", a.user, fmt_micros(a.limit_micros));
    Ok(())
}

/// Runs one ledger command.
pub async fn run(cmd: LedgerCmd) -> anyhow::Result<()> {
    let mut out = Out::stdout();
    match cmd {
        LedgerCmd::Balances { conn, csv } => {
            let b = conn
                .connect()
                .await?
                .list_balances(pb::ListRequest {})
                .await?
                .into_inner();
            out.listing(&balances(&b.balances, csv), csv)?;
            if !csv {
                out.line(format_args!("double entry balanced: {}", b.balanced))?;
            }
        }
        LedgerCmd::Transfers { conn, csv } => {
            let mut c = conn.connect().await?;
            let zone = super::lists::zone(&mut c).await?;
            let t = c.list_transfers(pb::ListRequest {}).await?.into_inner();
            out.listing(&transfers(&t.transfers, csv, &zone), csv)?;
        }
        LedgerCmd::Usage { conn, csv } => {
            let u = conn
                .connect()
                .await?
                .list_usage(pb::ListRequest {})
                .await?
                .into_inner();
            out.listing(&usage(&u.events), csv)?;
        }
    }
    Ok(())
}

/// Account balances: raw micro-units for CSV, yuan for a table.
pub fn balances(list: &[pb::Balance], csv: bool) -> Listing {
    if csv {
        let mut l = Listing::new(vec!["account", "balance_micros", "held_micros"]);
        for x in list {
            l.push(vec![
                x.account.clone(),
                x.balance_micros.to_string(),
                x.held_micros.to_string(),
            ]);
        }
        return l;
    }
    let mut l = Listing::new(vec!["account", "balance", "held"]).align_right(&[1, 2]);
    for x in list {
        let held = if x.held_micros > 0 {
            fmt_micros(x.held_micros)
        } else {
            String::new()
        };
        l.push(vec![x.account.clone(), fmt_micros(x.balance_micros), held]);
    }
    l
}

/// Ledger transfers: every field for CSV (times as RFC 3339 dates in `zone`), the readable
/// ones for a table.
pub fn transfers(list: &[pb::Transfer], csv: bool, zone: &tessera_core::civil::Zone) -> Listing {
    if csv {
        let mut l = Listing::new(vec![
            "transfer_id",
            "kind",
            "debit_account",
            "credit_account",
            "amount_micros",
            "job_id",
            "pending_id",
            "created_at",
            "memo",
        ]);
        for x in list {
            l.push(vec![
                x.transfer_id.clone(),
                x.kind.clone(),
                x.debit_account.clone(),
                x.credit_account.clone(),
                x.amount_micros.to_string(),
                x.job_id.clone(),
                x.pending_id.clone(),
                zone.format_rfc3339(x.created_at_ms),
                x.memo.clone(),
            ]);
        }
        return l;
    }
    let mut l = Listing::new(vec![
        "transfer", "kind", "debit", "credit", "amount", "job", "memo",
    ])
    .align_right(&[4]);
    for x in list {
        l.push(vec![
            x.transfer_id.clone(),
            x.kind.clone(),
            x.debit_account.clone(),
            x.credit_account.clone(),
            fmt_micros(x.amount_micros),
            x.job_id.clone(),
            x.memo.clone(),
        ]);
    }
    l
}

/// Usage events.
pub fn usage(list: &[pb::UsageEvent]) -> Listing {
    let mut l = Listing::new(vec![
        "event", "job", "party", "protocol", "metric", "quantity",
    ])
    .align_right(&[5]);
    for e in list {
        l.push(vec![
            e.event_id.clone(),
            e.job_id.clone(),
            e.party.clone(),
            e.protocol.clone(),
            e.metric.clone(),
            e.quantity.to_string(),
        ]);
    }
    l
}
