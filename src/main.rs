//! `tessera`: the operator node (`serve`), the party worker (`worker`), the end-to-end demo
//! (`demo`), benchmarks (`bench`), and client commands over the operator's gRPC API.

mod bench;
mod billing;
mod client;
mod demo;
mod operator;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tessera_core::{SystemClock, WorkerAttributes};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Privacy-computing execution service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator node.
    Serve(ServeArgs),
    /// Run a party worker.
    Worker(WorkerArgs),
    /// Run the end-to-end demo: operator and two workers on loopback, three PSI jobs.
    Demo(demo::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Billing: simulate scenarios, ingestion benchmark.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// Check the audit chain of a data directory (offline) and name the first broken entry.
    #[command(subcommand)]
    Audit(client::audit::AuditCommand),
    /// Client commands against a running operator.
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (keys: listen, data_dir, heartbeat_timeout_ms,
    /// heartbeat_interval_ms, late_window_ms, bill_close_interval_ms).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Worker heartbeat timeout.
    #[arg(long)]
    heartbeat_timeout_ms: Option<i64>,
    /// How long after a month's end its bills accept late charges, in hours (default: the
    /// stored setting, 72 on a new store).
    #[arg(long)]
    late_window_hours: Option<i64>,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// Operator URL.
    #[arg(long, default_value = "http://127.0.0.1:7100")]
    operator: String,
    /// Stable worker id (assigned when absent).
    #[arg(long)]
    worker_id: Option<String>,
    /// The party this worker acts for.
    #[arg(long)]
    party: String,
    /// Run region.
    #[arg(long, default_value = "")]
    region: String,
    /// Compute centre.
    #[arg(long, default_value = "")]
    centre: String,
    /// Hardware class.
    #[arg(long, default_value = "")]
    hardware: String,
    /// AI frameworks, comma-separated.
    #[arg(long, default_value = "", value_delimiter = ',')]
    frameworks: Vec<String>,
    /// Software environment.
    #[arg(long, default_value = "")]
    software: String,
    /// Directory of this party's datasets.
    #[arg(long)]
    datasets: PathBuf,
    /// Directory results are written to.
    #[arg(long)]
    outputs: PathBuf,
    /// Address the peer-link server binds.
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_listen: String,
    /// Address other workers should dial, if not the bound one.
    #[arg(long)]
    peer_advertise: Option<String>,
    /// The operator's ticket key (hex); strongly recommended outside a lab.
    #[arg(long)]
    operator_key: Option<String>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,sqlx=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve(a) => {
            let mut config = match &a.config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
                None => operator::OperatorConfig::default(),
            };
            if let Some(l) = a.listen {
                config.listen = l;
            }
            if let Some(d) = a.data_dir {
                config.data_dir = d;
            }
            if let Some(t) = a.heartbeat_timeout_ms {
                config.heartbeat_timeout_ms = t;
                config.heartbeat_interval_ms = u64::try_from(t / 4).unwrap_or(1000).max(100);
            }
            if let Some(h) = a.late_window_hours {
                anyhow::ensure!(
                    (0..=366 * 24).contains(&h),
                    "--late-window-hours must be 0 ..= 8784"
                );
                config.late_window_ms = Some(h * 3_600_000);
            }
            let handle = operator::start(&config).await?;
            println!("operator listening on {}", handle.url());
            println!("ticket key {}", handle.scheduler.operator_key_hex());
            tokio::select! {
                r = handle.join() => r?,
                _ = tokio::signal::ctrl_c() => eprintln!("shutting down"),
            }
        }
        Command::Worker(a) => {
            let mut config = tessera_worker::WorkerConfig::new(
                a.operator,
                WorkerAttributes {
                    party: a.party,
                    region: a.region,
                    compute_centre: a.centre,
                    hardware: a.hardware,
                    ai_frameworks: a.frameworks.into_iter().filter(|f| !f.is_empty()).collect(),
                    software_env: a.software,
                },
                a.datasets,
                a.outputs,
            );
            config.worker_id = a.worker_id;
            config.peer_listen = a.peer_listen;
            config.peer_advertise = a.peer_advertise;
            config.operator_key_hex = a.operator_key;
            let handle = tessera_worker::start(config, Arc::new(SystemClock)).await?;
            println!(
                "worker {} serving peers on {}",
                handle.worker_id, handle.peer_addr
            );
            tokio::select! {
                r = handle.join() => r?,
                _ = tokio::signal::ctrl_c() => eprintln!("shutting down"),
            }
        }
        Command::Demo(a) => demo::run(a).await?,
        Command::Bench(b) => bench::run(b).await?,
        Command::Billing(b) => billing::run(b).await?,
        Command::Audit(a) => client::audit::run(a).await?,
        Command::Client(c) => client::run(c).await?,
    }
    Ok(())
}
