//! Client commands over the operator's gRPC API: datasets, licences, jobs, funds, ledger.

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
    /// Add funds to a buyer's cash account.
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
    },
    /// Ledger balances and transfers, usage events.
    #[command(subcommand)]
    Ledger(LedgerCmd),
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
    },
    /// Ledger transfers.
    Transfers {
        #[command(flatten)]
        conn: Conn,
    },
    /// Usage events.
    Usage {
        #[command(flatten)]
        conn: Conn,
    },
}

/// One line describing a job.
pub fn job_line(j: &pb::Job) -> String {
    let mut s = format!("{} {} [{} {}]", j.job_id, j.state, j.scene, j.mode);
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
            eprintln!("  [{}] {line}", j.state);
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
        }) => {
            let d = connect(&conn.operator)
                .await?
                .create_dataset(pb::CreateDatasetRequest {
                    dataset_id: id,
                    owner_party: party,
                    location,
                    description,
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
                })
                .await?
                .into_inner();
            println!("{}", l.licence_id);
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
                    mode,
                    key_case,
                    output,
                    user_groups: groups,
                })
                .await?
                .into_inner();
            println!("{}", job_line(&j));
            if follow && j.state != "refused" {
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
        } => {
            connect(&conn.operator)
                .await?
                .deposit(pb::DepositRequest {
                    account: user.clone(),
                    amount_micros,
                    idempotency_key: key,
                })
                .await?;
            println!("deposited {} to {user}", fmt_micros(amount_micros));
        }
        ClientCommand::Ledger(LedgerCmd::Balances { conn }) => {
            let b = connect(&conn.operator)
                .await?
                .list_balances(pb::ListRequest {})
                .await?
                .into_inner();
            for x in &b.balances {
                println!("{:<40} {:>20}", x.account, fmt_micros(x.balance_micros));
            }
            println!("double entry balanced: {}", b.balanced);
        }
        ClientCommand::Ledger(LedgerCmd::Transfers { conn }) => {
            let t = connect(&conn.operator)
                .await?
                .list_transfers(pb::ListRequest {})
                .await?
                .into_inner();
            for x in &t.transfers {
                println!(
                    "{} {} -> {} {} {} {}",
                    x.transfer_id,
                    x.debit_account,
                    x.credit_account,
                    fmt_micros(x.amount_micros),
                    x.job_id,
                    x.memo
                );
            }
        }
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
