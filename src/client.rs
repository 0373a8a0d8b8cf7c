//! Client commands over the operator's gRPC API: datasets, licences, jobs, funds, ledger,
//! bills, provider statements, limits and freezes. Listings print aligned text, or CSV
//! (RFC 4180 quoting) with `--csv`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_client::OperatorClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Connects to the operator.
pub async fn connect(url: &str) -> anyhow::Result<OperatorClient<Channel>> {
    OperatorClient::connect(url.to_string())
        .await
        .with_context(|| format!("connecting to the operator at {url}"))
}

#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Operator URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7100")]
    operator: String,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Dataset records.
    #[command(subcommand)]
    Dataset(DatasetCmd),
    /// Licences and their usage policies.
    #[command(subcommand)]
    Licence(LicenceCmd),
    /// Jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Add funds to a buyer's cash (or voucher) account.
    Deposit {
        #[command(flatten)]
        conn: Conn,
        /// Buyer user id.
        #[arg(long)]
        user: String,
        /// Amount in micro-units (1 yuan = 1000000).
        #[arg(long)]
        amount_micros: i64,
        /// Idempotency key: the same key deposits once.
        #[arg(long)]
        key: String,
        /// cash, recharge_voucher or deduction_voucher.
        #[arg(long, default_value = "cash")]
        into: String,
    },
    /// Set a buyer's credit line.
    Credit {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        /// Credit limit in micro-units (0 removes the line).
        #[arg(long)]
        limit_micros: i64,
    },
    /// Ledger balances and transfers, usage events.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Bills and their lines.
    #[command(subcommand)]
    Bills(BillsCmd),
    /// Provider settlement statements and payouts.
    #[command(subcommand)]
    Statements(StatementsCmd),
    /// Product limits (minimum purchase and freeze amounts).
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// Account status, manual freezes and the platform white list.
    #[command(subcommand)]
    Account(AccountCmd),
}

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

#[derive(Debug, Subcommand)]
pub enum StatementsCmd {
    /// Statements of closed months.
    List {
        #[command(flatten)]
        conn: Conn,
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
        #[arg(long)]
        provider: String,
        /// YYYY-MM.
        #[arg(long)]
        period: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Set a limit configuration; customer > product > platform.
    Set {
        #[command(flatten)]
        conn: Conn,
        /// platform, product or customer.
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "")]
        customer: String,
        #[arg(long, default_value = "")]
        product: String,
        #[arg(long)]
        min_purchase_micros: Option<i64>,
        #[arg(long)]
        min_freeze_micros: Option<i64>,
        /// Store the configuration disabled.
        #[arg(long)]
        disabled: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Whether the account's jobs would be refused now, and why.
    Status {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "psi")]
        product: String,
    },
    /// Freeze manually (outranks the automatic rules).
    Freeze {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        #[arg(long)]
        reason: String,
    },
    /// Thaw an automatic freeze manually.
    Thaw {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
    },
    /// Clear the manual action (back to the automatic rules).
    Clear {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
    },
    /// Add to (or, with --remove, take off) the platform white list.
    Whitelist {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DatasetCmd {
    /// Register a dataset held by a party's workers.
    Create {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        id: String,
        /// Owning party.
        #[arg(long)]
        party: String,
        /// File name inside the owning workers' dataset directory.
        #[arg(long)]
        location: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Rows in the dataset: a job's hold, and so its maximum row charge, is sized on it.
        #[arg(long)]
        rows: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicenceCmd {
    /// Create a licence with a usage policy (T/AI 123.12 JSON).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Provider party (must own the dataset).
        #[arg(long)]
        licensor: String,
        /// Buyer user.
        #[arg(long)]
        licensee: String,
        #[arg(long)]
        dataset: String,
        /// Policy JSON file.
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, default_value_t = 0)]
        price_per_job_micros: i64,
        #[arg(long, default_value_t = 0)]
        price_per_1k_rows_micros: i64,
        #[arg(long, default_value_t = 0)]
        operator_share_bps: u32,
        /// Monthly price of a licence term; when set, jobs run only inside a paid term.
        #[arg(long, default_value_t = 0)]
        monthly_price_micros: i64,
    },
    /// Buy (or renew) months of a licence term, paid from recharge voucher, cash and credit.
    Subscribe {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        licence: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 1)]
        months: u32,
    },
    /// End a licence subscription; refunds cash paid − monthly price × months used (≥ 0).
    Unsubscribe {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        licence: String,
        #[arg(long)]
        user: String,
    },
    /// Show a licence with its remaining counts.
    Get {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Submit a PSI job.
    Submit {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        /// Comma-separated groups the user belongs to.
        #[arg(long, default_value = "")]
        groups: String,
        #[arg(long)]
        licence: String,
        #[arg(long)]
        buyer_party: String,
        #[arg(long)]
        buyer_dataset: String,
        /// Key columns in the buyer's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        buyer_columns: Vec<String>,
        /// Key columns in the provider's dataset, comma-separated.
        #[arg(long, value_delimiter = ',')]
        provider_columns: Vec<String>,
        /// intersection | size
        #[arg(long, default_value = "intersection")]
        mode: String,
        /// preserve | lower | upper
        #[arg(long, default_value = "preserve")]
        key_case: String,
        /// Result file name on the buyer's worker.
        #[arg(long, default_value = "")]
        output: String,
        /// Follow the job until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show a job.
    Get {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
    /// Follow a job until it ends.
    Watch {
        #[command(flatten)]
        conn: Conn,
        id: String,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        conn: Conn,
        /// The user who submitted it.
        #[arg(long)]
        user: String,
        id: String,
    },
}

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
    },
}

/// One line describing a job.
pub fn job_line(j: &pb::Job) -> String {
    let mut s = format!(
        "{} {} [{} {}]",
        j.job_id,
        j.state_text(),
        j.scene,
        j.mode_text()
    );
    if let Some(n) = j.result_size {
        s.push_str(&format!(" result_size={n}"));
    }
    if !j.result_location.is_empty() {
        s.push_str(&format!(" result={}", j.result_location));
    }
    if j.charge_micros != 0 {
        s.push_str(&format!(" charge={}", fmt_micros(j.charge_micros)));
    }
    if !j.refusal_reasons.is_empty() {
        s.push_str(&format!(" refused: {}", j.refusal_reasons.join("; ")));
    }
    if !j.error.is_empty() {
        s.push_str(&format!(" error: {}", j.error));
    }
    s
}

/// Formats micro-units as yuan with six decimals, exactly.
pub fn fmt_micros(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// Follows a job, printing each progress change, and returns its final state.
pub async fn watch(client: &mut OperatorClient<Channel>, job_id: &str) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::JobRef {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    let mut last = None;
    let mut printed = String::new();
    while let Some(j) = stream.next().await {
        let j = j?;
        let line = j
            .progress
            .iter()
            .map(|p| {
                if p.total > 0 {
                    format!("{}:{} {}/{}", p.party, p.phase, p.done, p.total)
                } else {
                    format!("{}:{}", p.party, p.phase)
                }
            })
            .collect::<Vec<_>>()
            .join("  ");
        if !line.is_empty() && line != printed {
            eprintln!("  [{}] {line}", j.state_text());
            printed = line;
        }
        last = Some(j);
    }
    last.ok_or_else(|| anyhow::anyhow!("watch ended without a job"))
}

pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Dataset(DatasetCmd::Create {
            conn,
            id,
            party,
            location,
            description,
            rows,
        }) => {
            let d = connect(&conn.operator)
                .await?
                .create_dataset(pb::CreateDatasetRequest {
                    dataset_id: id,
                    owner_party: party,
                    location,
                    description,
                    declared_rows: rows,
                })
                .await?
                .into_inner();
            println!(
                "dataset {} ({} : {})",
                d.dataset_id, d.owner_party, d.location
            );
        }
        ClientCommand::Licence(LicenceCmd::Create {
            conn,
            licensor,
            licensee,
            dataset,
            policy,
            price_per_job_micros,
            price_per_1k_rows_micros,
            operator_share_bps,
            monthly_price_micros,
        }) => {
            let policy_json = std::fs::read_to_string(&policy)
                .with_context(|| format!("reading {}", policy.display()))?;
            let l = connect(&conn.operator)
                .await?
                .create_licence(pb::CreateLicenceRequest {
                    licensor,
                    licensee,
                    dataset_id: dataset,
                    policy_json,
                    price_per_job_micros,
                    price_per_1k_rows_micros,
                    operator_share_bps,
                    monthly_price_micros,
                })
                .await?
                .into_inner();
            println!("{}", l.licence_id);
        }
        ClientCommand::Licence(LicenceCmd::Subscribe {
            conn,
            licence,
            user,
            months,
        }) => {
            let v = connect(&conn.operator)
                .await?
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
                tessera_accounting::civil::format_millis(v.end_ms),
                v.months_total,
                fmt_micros(v.charged_micros)
            );
        }
        ClientCommand::Licence(LicenceCmd::Unsubscribe {
            conn,
            licence,
            user,
        }) => {
            let v = connect(&conn.operator)
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
        }
        ClientCommand::Licence(LicenceCmd::Get { conn, id }) => {
            let l = connect(&conn.operator)
                .await?
                .get_licence(pb::LicenceRef { licence_id: id })
                .await?
                .into_inner();
            println!(
                "licence {} {} -> {} dataset {}",
                l.licence_id, l.licensor, l.licensee, l.dataset_id
            );
            println!("{}", l.policy_json);
        }
        ClientCommand::Job(JobCmd::Submit {
            conn,
            user,
            groups,
            licence,
            buyer_party,
            buyer_dataset,
            buyer_columns,
            provider_columns,
            mode,
            key_case,
            output,
            watch: follow,
        }) => {
            let mut c = connect(&conn.operator).await?;
            let j = c
                .submit_job(pb::SubmitJobRequest {
                    user,
                    licence_id: licence,
                    scene: "psi".into(),
                    buyer_party,
                    buyer_dataset_id: buyer_dataset,
                    buyer_columns,
                    provider_columns,
                    mode: pb::PsiMode::from(mode.parse::<tessera_core::PsiMode>()?).into(),
                    key_case: pb::KeyCase::from(key_case.parse::<tessera_core::KeyCase>()?).into(),
                    output,
                    user_groups: groups,
                })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
            if follow && j.state() != pb::JobState::Refused {
                let j = watch(&mut c, &j.job_id).await?;
                println!("{}", job_line(&j));
            }
        }
        ClientCommand::Job(JobCmd::Get { conn, id }) => {
            let j = connect(&conn.operator)
                .await?
                .get_job(pb::JobRef { job_id: id })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
        }
        ClientCommand::Job(JobCmd::Watch { conn, id }) => {
            let j = watch(&mut connect(&conn.operator).await?, &id).await?;
            println!("{}", job_line(&j));
        }
        ClientCommand::Job(JobCmd::Cancel { conn, user, id }) => {
            let mut req = tonic::Request::new(pb::JobRef { job_id: id });
            req.metadata_mut().insert(
                "x-tessera-user",
                user.parse().context("user is not valid metadata")?,
            );
            let j = connect(&conn.operator)
                .await?
                .cancel_job(req)
                .await?
                .into_inner();
            println!("{}", job_line(&j));
        }
        ClientCommand::Deposit {
            conn,
            user,
            amount_micros,
            key,
            into,
        } => {
            connect(&conn.operator)
                .await?
                .deposit(pb::DepositRequest {
                    account: user.clone(),
                    amount_micros,
                    idempotency_key: key,
                    into: into.clone(),
                })
                .await?;
            println!("deposited {} to {user} ({into})", fmt_micros(amount_micros));
        }
        ClientCommand::Credit {
            conn,
            user,
            limit_micros,
        } => {
            connect(&conn.operator)
                .await?
                .set_credit_limit(pb::CreditLimitRequest {
                    customer: user.clone(),
                    limit_micros,
                })
                .await?;
            println!("credit line of {user}: {}", fmt_micros(limit_micros));
        }
        ClientCommand::Ledger(LedgerCmd::Balances { conn, csv }) => {
            let b = connect(&conn.operator)
                .await?
                .list_balances(pb::ListRequest {})
                .await?
                .into_inner();
            if csv {
                let rows = b.balances.iter().map(|x| {
                    vec![
                        x.account.clone(),
                        x.balance_micros.to_string(),
                        x.held_micros.to_string(),
                    ]
                });
                print_csv(&["account", "balance_micros", "held_micros"], rows);
                return Ok(());
            }
            for x in &b.balances {
                let held = if x.held_micros > 0 {
                    format!("  (held {})", fmt_micros(x.held_micros))
                } else {
                    String::new()
                };
                println!(
                    "{:<40} {:>20}{held}",
                    x.account,
                    fmt_micros(x.balance_micros)
                );
            }
            println!("double entry balanced: {}", b.balanced);
        }
        ClientCommand::Ledger(LedgerCmd::Transfers { conn, csv }) => {
            let t = connect(&conn.operator)
                .await?
                .list_transfers(pb::ListRequest {})
                .await?
                .into_inner();
            if csv {
                let rows = t.transfers.iter().map(|x| {
                    vec![
                        x.transfer_id.clone(),
                        x.kind.clone(),
                        x.debit_account.clone(),
                        x.credit_account.clone(),
                        x.amount_micros.to_string(),
                        x.job_id.clone(),
                        x.pending_id.clone(),
                        x.created_at_ms.to_string(),
                        x.memo.clone(),
                    ]
                });
                print_csv(
                    &[
                        "transfer_id",
                        "kind",
                        "debit_account",
                        "credit_account",
                        "amount_micros",
                        "job_id",
                        "pending_id",
                        "created_at_ms",
                        "memo",
                    ],
                    rows,
                );
                return Ok(());
            }
            for x in &t.transfers {
                println!(
                    "{} {:<12} {} -> {} {} {} {}",
                    x.transfer_id,
                    x.kind,
                    x.debit_account,
                    x.credit_account,
                    fmt_micros(x.amount_micros),
                    x.job_id,
                    x.memo
                );
            }
        }
        ClientCommand::Bills(cmd) => bills(cmd).await?,
        ClientCommand::Statements(cmd) => statements(cmd).await?,
        ClientCommand::Limits(LimitsCmd::Set {
            conn,
            scope,
            customer,
            product,
            min_purchase_micros,
            min_freeze_micros,
            disabled,
        }) => {
            connect(&conn.operator)
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
        ClientCommand::Account(cmd) => account(cmd).await?,
        ClientCommand::Ledger(LedgerCmd::Usage { conn }) => {
            let u = connect(&conn.operator)
                .await?
                .list_usage(pb::ListRequest {})
                .await?
                .into_inner();
            for e in &u.events {
                println!(
                    "{} {} {} {}={}",
                    e.event_id, e.job_id, e.party, e.metric, e.quantity
                );
            }
        }
    }
    Ok(())
}

/// One CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180).
pub fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn print_csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    println!("{}", header.join(","));
    for r in rows {
        let fields: Vec<String> = r.iter().map(|f| csv_field(f)).collect();
        println!("{}", fields.join(","));
    }
}

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

async fn bills(cmd: BillsCmd) -> anyhow::Result<()> {
    match cmd {
        BillsCmd::List {
            conn,
            customer,
            period,
            csv,
        } => {
            let b = connect(&conn.operator)
                .await?
                .list_bills(pb::BillQuery { customer, period })
                .await?
                .into_inner();
            if csv {
                let mut header = vec!["bill_id", "customer", "period", "state", "lines"];
                header.extend(AMOUNT_COLUMNS);
                let rows = b.bills.iter().map(|x| {
                    let mut r = vec![
                        x.bill_id.clone(),
                        x.customer.clone(),
                        x.period.clone(),
                        x.state.clone(),
                        x.lines.to_string(),
                    ];
                    r.extend(amount_fields(x.totals.as_ref()));
                    r
                });
                print_csv(&header, rows);
                return Ok(());
            }
            for x in &b.bills {
                println!(
                    "{:<32} {:<7} {:>5} lines  paid {:>16}",
                    x.bill_id,
                    x.state,
                    x.lines,
                    fmt_micros(paid(x.totals.as_ref()))
                );
            }
        }
        BillsCmd::Lines { conn, bill_id, csv } => {
            let l = connect(&conn.operator)
                .await?
                .list_bill_lines(pb::BillRef { bill_id })
                .await?
                .into_inner();
            if csv {
                let mut header = vec![
                    "line_id",
                    "bill_id",
                    "customer",
                    "job_id",
                    "kind",
                    "product",
                    "provider",
                    "event_time_ms",
                    "arrival_time_ms",
                    "service_start_ms",
                    "service_end_ms",
                    "corrects_period",
                ];
                header.extend(AMOUNT_COLUMNS);
                header.push("note");
                let rows = l.lines.iter().map(|x| {
                    let mut r = vec![
                        x.line_id.clone(),
                        x.bill_id.clone(),
                        x.customer.clone(),
                        x.job_id.clone(),
                        x.kind.clone(),
                        x.product.clone(),
                        x.provider.clone(),
                        x.event_time_ms.to_string(),
                        x.arrival_time_ms.to_string(),
                        x.service_start_ms.to_string(),
                        x.service_end_ms.to_string(),
                        x.corrects_period.clone(),
                    ];
                    r.extend(amount_fields(x.amounts.as_ref()));
                    r.push(x.note.clone());
                    r
                });
                print_csv(&header, rows);
                return Ok(());
            }
            for x in &l.lines {
                let corr = if x.corrects_period.is_empty() {
                    String::new()
                } else {
                    format!(" (corrects {})", x.corrects_period)
                };
                println!(
                    "{} {} {} {:>16}{corr}  {}",
                    x.line_id,
                    x.kind,
                    x.job_id,
                    fmt_micros(paid(x.amounts.as_ref())),
                    x.note
                );
            }
        }
        BillsCmd::Close { conn } => {
            let b = connect(&conn.operator)
                .await?
                .close_due_bills(pb::ListRequest {})
                .await?
                .into_inner();
            println!("closed {} bill(s)", b.bills.len());
            for x in &b.bills {
                println!("{}", x.bill_id);
            }
        }
    }
    Ok(())
}

async fn statements(cmd: StatementsCmd) -> anyhow::Result<()> {
    let line = |s: &pb::Statement| {
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
    };
    match cmd {
        StatementsCmd::List {
            conn,
            provider,
            csv,
        } => {
            let l = connect(&conn.operator)
                .await?
                .list_statements(pb::StatementQuery { provider })
                .await?
                .into_inner();
            if csv {
                let rows = l.statements.iter().map(|s| {
                    vec![
                        s.provider.clone(),
                        s.period.clone(),
                        s.lines.to_string(),
                        s.paid_micros.to_string(),
                        s.provider_micros.to_string(),
                        s.operator_micros.to_string(),
                        s.paid_out_at_ms.map(|t| t.to_string()).unwrap_or_default(),
                        s.payout_transfer_id.clone(),
                    ]
                });
                print_csv(
                    &[
                        "provider",
                        "period",
                        "lines",
                        "paid_micros",
                        "provider_micros",
                        "operator_micros",
                        "paid_out_at_ms",
                        "payout_transfer_id",
                    ],
                    rows,
                );
                return Ok(());
            }
            for s in &l.statements {
                println!("{}", line(s));
            }
        }
        StatementsCmd::Payout {
            conn,
            provider,
            period,
        } => {
            let s = connect(&conn.operator)
                .await?
                .payout(pb::PayoutRequest { provider, period })
                .await?
                .into_inner();
            println!("{}", line(&s));
        }
    }
    Ok(())
}

async fn account(cmd: AccountCmd) -> anyhow::Result<()> {
    let freeze = |conn: Conn, customer: String, action: &'static str, reason: String| async move {
        connect(&conn.operator)
            .await?
            .set_freeze(pb::FreezeRequest {
                customer: customer.clone(),
                action: action.to_string(),
                reason,
            })
            .await?;
        println!("{customer}: {action}");
        anyhow::Ok(())
    };
    match cmd {
        AccountCmd::Status {
            conn,
            user,
            product,
        } => {
            let s = connect(&conn.operator)
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
        AccountCmd::Freeze { conn, user, reason } => freeze(conn, user, "freeze", reason).await?,
        AccountCmd::Thaw { conn, user } => freeze(conn, user, "thaw", String::new()).await?,
        AccountCmd::Clear { conn, user } => freeze(conn, user, "clear", String::new()).await?,
        AccountCmd::Whitelist { conn, user, remove } => {
            connect(&conn.operator)
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
