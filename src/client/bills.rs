//! Billing commands: bills and their lines, provider statements and payouts, product limits,
//! account status and freezes, licence terms (subscriptions).

use clap::Subcommand;
use tessera_proto::v1 as pb;

use super::conn::Conn;
use super::output::{Listing, Out, fmt_micros};

/// `tessera bills …`.
#[derive(Debug, Subcommand)]
pub enum BillsCmd {
    /// List bills with their totals.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only this customer's.
        #[arg(long, default_value = "")]
        customer: String,
        /// Only this month (YYYY-MM).
        #[arg(long, default_value = "")]
        period: String,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// The lines of one bill (id `YYYY-MM:customer`).
    Lines {
        #[command(flatten)]
        conn: Conn,
        /// The bill id, `YYYY-MM:customer`.
        bill_id: String,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Close the bills whose month and late window have passed (the operator also does this
    /// every minute).
    Close {
        #[command(flatten)]
        conn: Conn,
    },
}

/// `tessera statements …`.
#[derive(Debug, Subcommand)]
pub enum StatementsCmd {
    /// Statements of closed months.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only this provider's statements (empty: every provider).
        #[arg(long, default_value = "")]
        provider: String,
        /// Print CSV.
        #[arg(long)]
        csv: bool,
    },
    /// Pay a provider its share of a closed month (once).
    Payout {
        #[command(flatten)]
        conn: Conn,
        /// The provider paid.
        #[arg(long)]
        provider: String,
        /// YYYY-MM.
        #[arg(long)]
        period: String,
    },
}

/// `tessera limits …`.
#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Set a limit configuration; customer > product > platform.
    Set {
        #[command(flatten)]
        conn: Conn,
        /// platform, product or customer.
        #[arg(long)]
        scope: String,
        /// The customer (scope customer).
        #[arg(long, default_value = "")]
        customer: String,
        /// The product (scope product or customer), e.g. psi.
        #[arg(long, default_value = "")]
        product: String,
        /// Minimum purchase amount, micro-units.
        #[arg(long)]
        min_purchase_micros: Option<i64>,
        /// Minimum freeze amount, micro-units: below it the account is frozen.
        #[arg(long)]
        min_freeze_micros: Option<i64>,
        /// Store the configuration disabled.
        #[arg(long)]
        disabled: bool,
    },
}

/// `tessera account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Whether the account's jobs would be refused now, and why.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// The customer [default: the caller]; only the operator asks about someone else.
        #[arg(long, default_value = "")]
        user: String,
        /// The product whose limits apply.
        #[arg(long, default_value = "psi")]
        product: String,
    },
    /// Freeze manually (outranks the automatic rules).
    Freeze {
        #[command(flatten)]
        conn: Conn,
        /// The customer.
        #[arg(long)]
        user: String,
        /// Why (shown to the customer and in the audit chain).
        #[arg(long)]
        reason: String,
    },
    /// Thaw an automatic freeze manually.
    Thaw {
        #[command(flatten)]
        conn: Conn,
        /// The customer.
        #[arg(long)]
        user: String,
    },
    /// Clear the manual action (back to the automatic rules).
    Clear {
        #[command(flatten)]
        conn: Conn,
        /// The customer.
        #[arg(long)]
        user: String,
    },
    /// Add to (or, with --remove, take off) the platform white list.
    Whitelist {
        #[command(flatten)]
        conn: Conn,
        /// The customer.
        #[arg(long)]
        user: String,
        /// Take the customer off the white list instead.
        #[arg(long)]
        remove: bool,
    },
}

/// Buys (or renews) `months` of a licence term.
pub async fn subscribe(
    conn: Conn,
    licence: String,
    user: String,
    months: u32,
) -> anyhow::Result<()> {
    let mut c = conn.connect().await?;
    let zone = super::lists::zone(&mut c).await?;
    let v = c
        .subscribe(pb::SubscriptionRequest {
            licence_id: licence,
            customer: user,
            months,
        })
        .await?
        .into_inner();
    println!(
        "{} {}: {} until {} ({} month(s) in all), charged {}",
        v.licence_id,
        v.customer,
        v.status,
        zone.format_rfc3339(v.end_ms),
        v.months_total,
        fmt_micros(v.charged_micros)
    );
    Ok(())
}

/// Ends a licence subscription, printing the refund.
pub async fn unsubscribe(conn: Conn, licence: String, user: String) -> anyhow::Result<()> {
    let v = conn
        .connect()
        .await?
        .unsubscribe(pb::SubscriptionRequest {
            licence_id: licence,
            customer: user,
            months: 0,
        })
        .await?
        .into_inner();
    println!(
        "{} {}: {}, refunded {}",
        v.licence_id,
        v.customer,
        v.status,
        fmt_micros(v.refund_micros)
    );
    Ok(())
}

/// The amount columns of bills and bill lines, in the order of `pb::LineAmounts`.
const AMOUNT_COLUMNS: [&str; 11] = [
    "original_micros",
    "platform_discount_micros",
    "customer_discount_micros",
    "coupon_micros",
    "deduction_voucher_micros",
    "recharge_voucher_micros",
    "cash_micros",
    "credit_micros",
    "arrears_micros",
    "provider_micros",
    "operator_micros",
];

fn amount_fields(a: Option<&pb::LineAmounts>) -> Vec<String> {
    let a = a.cloned().unwrap_or_default();
    [
        a.original_micros,
        a.platform_discount_micros,
        a.customer_discount_micros,
        a.coupon_micros,
        a.deduction_voucher_micros,
        a.recharge_voucher_micros,
        a.cash_micros,
        a.credit_micros,
        a.arrears_micros,
        a.provider_micros,
        a.operator_micros,
    ]
    .iter()
    .map(i64::to_string)
    .collect()
}

fn paid(a: Option<&pb::LineAmounts>) -> i64 {
    a.map(|a| a.original_micros - a.platform_discount_micros - a.customer_discount_micros)
        .unwrap_or(0)
}

/// Runs one bills command.
pub async fn bills(cmd: BillsCmd) -> anyhow::Result<()> {
    match cmd {
        BillsCmd::List {
            conn,
            customer,
            period,
            csv,
        } => {
            let b = conn
                .connect()
                .await?
                .list_bills(pb::BillQuery { customer, period })
                .await?
                .into_inner();
            Out::stdout().listing(&bills_listing(&b.bills, csv), csv)?;
        }
        BillsCmd::Lines { conn, bill_id, csv } => {
            let mut c = conn.connect().await?;
            let zone = super::lists::zone(&mut c).await?;
            let l = c
                .list_bill_lines(pb::BillRef { bill_id })
                .await?
                .into_inner();
            Out::stdout().listing(&lines_listing(&l.lines, csv, &zone), csv)?;
        }
        BillsCmd::Close { conn } => {
            let b = conn
                .connect()
                .await?
                .close_due_bills(pb::ListRequest {})
                .await?
                .into_inner();
            let mut out = Out::stdout();
            out.line(format_args!("closed {} bill(s)", b.bills.len()))?;
            for x in &b.bills {
                out.line(&x.bill_id)?;
            }
        }
    }
    Ok(())
}

/// Bills: every total for CSV, the amount paid for a table.
pub fn bills_listing(bills: &[pb::Bill], csv: bool) -> Listing {
    if csv {
        let mut header = vec!["bill_id", "customer", "period", "state", "lines"];
        header.extend(AMOUNT_COLUMNS);
        let mut l = Listing::new(header);
        for x in bills {
            let mut r = vec![
                x.bill_id.clone(),
                x.customer.clone(),
                x.period.clone(),
                x.state.clone(),
                x.lines.to_string(),
            ];
            r.extend(amount_fields(x.totals.as_ref()));
            l.push(r);
        }
        return l;
    }
    let mut l = Listing::new(vec!["bill", "state", "lines", "paid"]).align_right(&[2, 3]);
    for x in bills {
        l.push(vec![
            x.bill_id.clone(),
            x.state.clone(),
            x.lines.to_string(),
            fmt_micros(paid(x.totals.as_ref())),
        ]);
    }
    l
}

/// Bill lines: every field for CSV (times as RFC 3339 dates in `zone`), the readable ones
/// for a table.
pub fn lines_listing(
    lines: &[pb::BillLine],
    csv: bool,
    zone: &tessera_core::civil::Zone,
) -> Listing {
    if csv {
        let mut header = vec![
            "line_id",
            "bill_id",
            "customer",
            "job_id",
            "kind",
            "product",
            "provider",
            "event_time",
            "arrival_time",
            "service_start",
            "service_end",
            "corrects_period",
        ];
        header.extend(AMOUNT_COLUMNS);
        header.push("note");
        let mut l = Listing::new(header);
        let service_date = |ms: i64| {
            if ms == 0 {
                String::new()
            } else {
                zone.format_rfc3339(ms)
            }
        };
        for x in lines {
            let mut r = vec![
                x.line_id.clone(),
                x.bill_id.clone(),
                x.customer.clone(),
                x.job_id.clone(),
                x.kind.clone(),
                x.product.clone(),
                x.provider.clone(),
                zone.format_rfc3339(x.event_time_ms),
                zone.format_rfc3339(x.arrival_time_ms),
                // 0: the line has no service period (a job's line).
                service_date(x.service_start_ms),
                service_date(x.service_end_ms),
                x.corrects_period.clone(),
            ];
            r.extend(amount_fields(x.amounts.as_ref()));
            r.push(x.note.clone());
            l.push(r);
        }
        return l;
    }
    let mut l =
        Listing::new(vec!["line", "kind", "job", "paid", "corrects", "note"]).align_right(&[3]);
    for x in lines {
        l.push(vec![
            x.line_id.clone(),
            x.kind.clone(),
            x.job_id.clone(),
            fmt_micros(paid(x.amounts.as_ref())),
            x.corrects_period.clone(),
            x.note.clone(),
        ]);
    }
    l
}

/// One line describing a provider statement.
fn statement_line(s: &pb::Statement) -> String {
    format!(
        "{} {} {} lines paid {} provider {} operator {} {}",
        s.period,
        s.provider,
        s.lines,
        fmt_micros(s.paid_micros),
        fmt_micros(s.provider_micros),
        fmt_micros(s.operator_micros),
        if s.paid_out_at_ms.is_some() {
            "paid out"
        } else {
            "not paid out"
        }
    )
}

/// Runs one statements command.
pub async fn statements(cmd: StatementsCmd) -> anyhow::Result<()> {
    match cmd {
        StatementsCmd::List {
            conn,
            provider,
            csv,
        } => {
            let mut c = conn.connect().await?;
            let zone = super::lists::zone(&mut c).await?;
            let l = c
                .list_statements(pb::StatementQuery { provider })
                .await?
                .into_inner();
            Out::stdout().listing(&statements_listing(&l.statements, csv, &zone), csv)?;
        }
        StatementsCmd::Payout {
            conn,
            provider,
            period,
        } => {
            let s = conn
                .connect()
                .await?
                .payout(pb::PayoutRequest { provider, period })
                .await?
                .into_inner();
            println!("{}", statement_line(&s));
        }
    }
    Ok(())
}

/// Provider statements: raw figures for CSV (the payout time as an RFC 3339 date in `zone`),
/// yuan for a table.
pub fn statements_listing(
    statements: &[pb::Statement],
    csv: bool,
    zone: &tessera_core::civil::Zone,
) -> Listing {
    if csv {
        let mut l = Listing::new(vec![
            "provider",
            "period",
            "lines",
            "paid_micros",
            "provider_micros",
            "operator_micros",
            "paid_out_at",
            "payout_transfer_id",
        ]);
        for s in statements {
            l.push(vec![
                s.provider.clone(),
                s.period.clone(),
                s.lines.to_string(),
                s.paid_micros.to_string(),
                s.provider_micros.to_string(),
                s.operator_micros.to_string(),
                s.paid_out_at_ms
                    .map(|t| zone.format_rfc3339(t))
                    .unwrap_or_default(),
                s.payout_transfer_id.clone(),
            ]);
        }
        return l;
    }
    let mut l = Listing::new(vec![
        "period", "provider", "lines", "paid", "provider", "operator", "payout",
    ])
    .align_right(&[2, 3, 4, 5]);
    for s in statements {
        l.push(vec![
            s.period.clone(),
            s.provider.clone(),
            s.lines.to_string(),
            fmt_micros(s.paid_micros),
            fmt_micros(s.provider_micros),
            fmt_micros(s.operator_micros),
            if s.paid_out_at_ms.is_some() {
                "paid out".into()
            } else {
                "not paid out".into()
            },
        ]);
    }
    l
}

/// Runs one limits command.
pub async fn limits(cmd: LimitsCmd) -> anyhow::Result<()> {
    match cmd {
        LimitsCmd::Set {
            conn,
            scope,
            customer,
            product,
            min_purchase_micros,
            min_freeze_micros,
            disabled,
        } => {
            conn.connect()
                .await?
                .set_limit(pb::LimitRequest {
                    scope: scope.clone(),
                    customer,
                    product,
                    min_purchase_micros,
                    min_freeze_micros,
                    enabled: !disabled,
                })
                .await?;
            println!("{scope} limit set");
        }
    }
    Ok(())
}

/// Sets a manual freeze action (`freeze`, `thaw`, `clear`) on a customer.
async fn set_freeze(
    conn: Conn,
    customer: String,
    action: &'static str,
    reason: String,
) -> anyhow::Result<()> {
    conn.connect()
        .await?
        .set_freeze(pb::FreezeRequest {
            customer: customer.clone(),
            action: action.to_string(),
            reason,
        })
        .await?;
    println!("{customer}: {action}");
    Ok(())
}

/// Runs one account command.
pub async fn account(cmd: AccountCmd) -> anyhow::Result<()> {
    match cmd {
        AccountCmd::Status {
            conn,
            user,
            product,
        } => {
            let s = conn
                .connect()
                .await?
                .get_account_status(pb::AccountQuery {
                    customer: user,
                    product,
                })
                .await?
                .into_inner();
            println!(
                "{} ({}): cash {}, {}{}, manual action: {}",
                s.customer,
                s.product,
                fmt_micros(s.cash_micros),
                if s.frozen { "FROZEN" } else { "active" },
                if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", s.reason)
                },
                s.manual
            );
        }
        AccountCmd::Freeze { conn, user, reason } => {
            set_freeze(conn, user, "freeze", reason).await?
        }
        AccountCmd::Thaw { conn, user } => set_freeze(conn, user, "thaw", String::new()).await?,
        AccountCmd::Clear { conn, user } => set_freeze(conn, user, "clear", String::new()).await?,
        AccountCmd::Whitelist { conn, user, remove } => {
            conn.connect()
                .await?
                .set_whitelist(pb::WhitelistRequest {
                    customer: user.clone(),
                    listed: !remove,
                })
                .await?;
            println!(
                "{user} {} the platform white list",
                if remove { "removed from" } else { "added to" }
            );
        }
    }
    Ok(())
}
