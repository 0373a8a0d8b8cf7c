//! `tessera`: the operator node (`serve`), the party worker (`worker`), the end-to-end demo
//! (`demo`), benchmarks (`bench`), and client commands over the operator's gRPC API.

mod bench;
mod billing;
mod client;
mod config;
mod demo;
mod operator;
mod progress;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use tessera_core::SystemClock;

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
    Serve(config::ServeArgs),
    /// Run a party worker.
    Worker(config::WorkerArgs),
    /// Run the end-to-end demo: operator and two workers on loopback, three PSI jobs.
    Demo(demo::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Billing: simulate scenarios, ingestion benchmark.
    #[command(subcommand)]
    Billing(billing::BillingCommand),
    /// Verify the audit chain of a data directory (offline) or export its signed checkpoints.
    #[command(subcommand)]
    Audit(client::audit::AuditCommand),
    /// Client commands against a running operator.
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,sqlx=warn")
    });
    // Colour codes only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        // The reader of a listing went away (`| head`): a normal end, not a failure.
        Err(e) if client::output::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            let config = a.resolve()?;
            let handle = operator::start(&config).await?;
            println!("operator listening on {}", handle.url());
            println!("ticket key {}", handle.scheduler.operator_key_hex());
            tokio::select! {
                r = handle.join() => r?,
                _ = tokio::signal::ctrl_c() => eprintln!("shutting down"),
            }
        }
        Command::Worker(a) => {
            let config = a.resolve()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    /// What `tessera ARGS` prints for a help request (the help text is user-facing API).
    fn help(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Err(e) => e.render().to_string(),
            Ok(cli) => panic!("{args:?} parsed as {cli:?}, not a help request"),
        }
    }

    #[test]
    fn top_level_help() {
        expect![[r#"
            Privacy-computing execution service

            Usage: tessera <COMMAND>

            Commands:
              serve       Run the operator node
              worker      Run a party worker
              demo        Run the end-to-end demo: operator and two workers on loopback, three PSI jobs
              bench       Benchmarks that print figures
              billing     Billing: simulate scenarios, ingestion benchmark
              audit       Verify the audit chain of a data directory (offline) or export its signed checkpoints
              dataset     Dataset records
              licence     Licences and their usage policies
              job         Jobs
              deposit     Add funds to a buyer's cash (or voucher) account
              credit      Set a buyer's credit line
              ledger      Ledger balances and transfers, usage events
              bills       Bills and their lines
              statements  Provider settlement statements and payouts
              limits      Product limits (minimum purchase and freeze amounts)
              account     Account status, manual freezes and the platform white list
              help        Print this message or the help of the given subcommand(s)

            Options:
              -h, --help     Print help
              -V, --version  Print version
        "#]].assert_eq(&help(&["tessera", "--help"]));
    }

    #[test]
    fn job_submit_help() {
        expect![[r#"
            Submit a PSI job

            Usage: tessera job submit [OPTIONS] --user <USER> --licence <LICENCE> --buyer-party <BUYER_PARTY> --buyer-dataset <BUYER_DATASET>

            Options:
                  --operator <OPERATOR>                  Operator URL [default: http://127.0.0.1:7100]
                  --user <USER>                          
                  --groups <GROUPS>                      Comma-separated groups the user belongs to [default: ""]
                  --licence <LICENCE>                    
                  --buyer-party <BUYER_PARTY>            
                  --buyer-dataset <BUYER_DATASET>        
                  --buyer-columns <BUYER_COLUMNS>        Key columns in the buyer's dataset, comma-separated
                  --provider-columns <PROVIDER_COLUMNS>  Key columns in the provider's dataset, comma-separated
                  --mode <MODE>                          intersection | size [default: intersection]
                  --key-case <KEY_CASE>                  preserve | lower | upper [default: preserve]
                  --output <OUTPUT>                      Result file name on the buyer's worker [default: ""]
                  --watch                                Follow the job until it ends
              -h, --help                                 Print help
        "#]].assert_eq(&help(&["tessera", "job", "submit", "--help"]));
    }
}
