//! `tessera`: the operator node (`serve`), the party worker (`worker`), the end-to-end demo
//! (`demo`), benchmarks (`bench`), and client commands over the operator's gRPC API.

mod admission_bench;
mod bench;
mod billing;
mod client;
mod config;
mod datadir;
mod demo;
mod exit;
mod mpc_bench;
mod operator;
mod progress;
mod psi_scale_bench;
mod secagg_bench;
mod tee_cmd;

use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tessera_core::SystemClock;

/// mimalloc instead of the C library's allocator: see the note beside the dependency.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Privacy-computing execution service",
    after_help = exit::EXIT_HELP
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
    /// Issue a new API token for the admin user of a STOPPED operator's data directory,
    /// offline, into DATA_DIR/admin.token, revoking the earlier ones (the recovery when that
    /// file was lost).
    AdminToken {
        /// The operator's data directory.
        #[arg(long, required = true)]
        data_dir: std::path::PathBuf,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=400))]
        days: u32,
    },
    /// TEE attestation: verify and appraise evidence offline.
    #[command(subcommand)]
    Tee(tee_cmd::TeeCommand),
    /// Client commands against a running operator.
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// The log filter without `RUST_LOG`: INFO for the node's commands, WARN for the
/// benchmarks (their output is their figures; a line per job would also cost the operator
/// they measure).
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Bench(_) => "warn",
        _ => "info,h2=warn,tower=warn,hyper=warn",
    }
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour codes only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

/// The command tree as users see it: the derived one, with the help of every required
/// argument ending in `[required]` (so `--help` marks them all, by construction).
fn cli_command() -> clap::Command {
    mark_required(Cli::command())
}

fn mark_required(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        if a.is_required_set() {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            a.help(format!("{help} [required]").trim_start().to_string())
        } else {
            a
        }
    })
    .mut_subcommands(mark_required)
}

/// Parses the process arguments (exits with status 2 and clap's message on a usage error).
fn parse_cli() -> Cli {
    let matches = cli_command().get_matches();
    // An option that would be silently ignored is a usage error.
    if let Some(m) = matches
        .subcommand_matches("bench")
        .and_then(|m| m.subcommand_matches("admission"))
        && m.value_source("worker_nice") == Some(clap::parser::ValueSource::CommandLine)
        && m.get_one::<admission_bench::Workers>("workers")
            == Some(&admission_bench::Workers::InProcess)
    {
        // The error of `bench admission` itself, so its usage line is that command's.
        let mut cli = cli_command();
        cli.build();
        let mut admission = cli
            .find_subcommand_mut("bench")
            .and_then(|b| b.find_subcommand_mut("admission"))
            .cloned()
            .unwrap_or_else(cli_command);
        admission
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--worker-nice sets the worker processes' priority; with --workers in-process \
                 there are none (drop --worker-nice, or use --workers processes)",
            )
            .exit();
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = parse_cli();
    init_tracing(default_log_filter(&cli.command));
    // Errors are printed once, cleanly, with a distinct exit status per kind of end (a closed
    // pipe is a normal end): see `exit`.
    exit::report(run(cli).await)
}

/// Listens from now on for SIGINT (Ctrl-C) and, on Unix, SIGTERM (what service managers
/// send); the future completes on the first. Installed before the banner is printed, so a
/// signal sent as soon as the banner appears stops the process cleanly rather than killing
/// it with the default action.
fn shutdown_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let signal = signal_received();
    Box::pin(async move {
        signal.await;
    })
}

/// As [`shutdown_signal`], completing with the signal that came (for the exit status a
/// command interrupted part-way gives: `exit::Interrupted`).
fn signal_received()
-> std::pin::Pin<Box<dyn std::future::Future<Output = exit::Interrupted> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => exit::Interrupted::Interrupt,
                    _ = term.recv() => exit::Interrupted::Terminate,
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
        exit::Interrupted::Interrupt
    })
}

/// Completes when standard input reaches its end (or cannot be read): what it holds is
/// read and dropped.
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 512];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            let config = a.resolve()?;
            let handle = operator::start(&config).await?;
            let stop = shutdown_signal();
            println!("operator listening on {}", handle.url());
            println!("ticket key {}", handle.scheduler.operator_key_hex());
            handle.serve_until(stop).await?;
        }
        Command::Worker(mut a) => {
            if let Some(cmd) = a.command.take() {
                return client::lists::worker(cmd).await;
            }
            let stdin_eof = a.stop_on_stdin_eof;
            let config = a.resolve()?;
            // With --stop-on-stdin-eof the end of standard input stops the start-up too (its
            // retries while the operator is not reachable yet).
            let handle = if stdin_eof {
                tokio::select! {
                    h = tessera_worker::start(config, Arc::new(SystemClock)) => h?,
                    () = stdin_closed() => {
                        eprintln!("standard input closed before the worker started; stopping");
                        return Ok(());
                    }
                }
            } else {
                tessera_worker::start(config, Arc::new(SystemClock)).await?
            };
            let signal = shutdown_signal();
            let stop: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = if stdin_eof
            {
                Box::pin(async move {
                    tokio::select! {
                        () = signal => {}
                        () = stdin_closed() => {}
                    }
                })
            } else {
                signal
            };
            println!(
                "worker {} serving peers on {}",
                handle.worker_id, handle.peer_addr
            );
            tokio::select! {
                r = handle.join() => r?,
                () = stop => eprintln!("shutting down"),
            }
        }
        Command::Demo(a) => demo::run(a).await?,
        Command::Bench(b) => bench::run(b).await?,
        Command::Billing(b) => billing::run(b).await?,
        Command::Audit(a) => client::audit::run(a).await?,
        Command::AdminToken { data_dir, days } => {
            let path = operator::issue_admin_token(&data_dir, days).await?;
            println!("wrote a new admin token to {} (mode 0600)", path.display());
        }
        Command::Tee(t) => tee_cmd::run(t)?,
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
        match cli_command().try_get_matches_from(args) {
            Err(e) => e.render().to_string(),
            Ok(m) => panic!("{args:?} parsed as {m:?}, not a help request"),
        }
    }

    /// Every argument of every command, as `tessera sub … --arg`, with its help text.
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = a
                .get_help()
                .or(a.get_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            out.push((format!("{path} {id}"), help, a.is_required_set()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_help_and_required_ones_are_marked() {
        let cmd = cli_command();
        cmd.clone().debug_assert();
        let mut args = Vec::new();
        walk(&cmd, "tessera", &mut args);
        assert!(
            args.len() > 100,
            "the walk found only {} arguments",
            args.len()
        );
        let missing: Vec<&str> = args
            .iter()
            .filter(|(_, help, _)| help.trim().is_empty() || help.trim() == "[required]")
            .map(|(path, _, _)| path.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "arguments without help:\n{}",
            missing.join("\n")
        );
        let unmarked: Vec<&str> = args
            .iter()
            .filter(|(_, help, required)| *required && !help.ends_with("[required]"))
            .map(|(path, _, _)| path.as_str())
            .collect();
        assert!(unmarked.is_empty(), "required but not marked: {unmarked:?}");
        assert!(
            args.iter()
                .any(|(p, h, r)| p == "tessera job submit licence"
                    && *r
                    && h.ends_with("[required]")),
            "job submit --licence is required and marked"
        );
        // A job is submitted as the token's user: no argument names a user or claims groups.
        assert!(
            !args
                .iter()
                .any(|(p, _, _)| p == "tessera job submit user" || p == "tessera job submit groups"),
            "job submit takes no --user or --groups"
        );
    }

    #[test]
    fn top_level_help_documents_the_exit_statuses() {
        let h = help(&["tessera", "--help"]);
        for needle in [
            "3 the job was refused",
            "4 it failed",
            "5 it was cancelled",
            "6 connection lost",
        ] {
            assert!(h.contains(needle), "{needle}: {h}");
        }
    }

    #[test]
    fn top_level_help() {
        expect![[r#"
            Privacy-computing execution service

            Usage: tessera <COMMAND>

            Commands:
              serve        Run the operator node
              worker       Run a party worker
              demo         Run the end-to-end demo: operator and two workers on loopback, three PSI jobs
              bench        Benchmarks that print figures
              billing      Billing: simulate scenarios, ingestion benchmark
              audit        Verify the audit chain of a data directory (offline) or export its signed checkpoints
              admin-token  Issue a new API token for the admin user of a STOPPED operator's data directory, offline, into DATA_DIR/admin.token, revoking the earlier ones (the recovery when that file was lost)
              tee          TEE attestation: verify and appraise evidence offline
              dataset      Dataset records
              licence      Licences and their usage policies
              job          Jobs
              deposit      Add funds to a buyer's cash (or voucher) account
              credit       Set a buyer's credit line
              ledger       Ledger balances and transfers, usage events
              bills        Bills and their lines
              statements   Provider settlement statements and payouts
              limits       Product limits (minimum purchase and freeze amounts)
              account      Account status, manual freezes and the platform white list
              user         Users and their roles
              group        Group membership (recorded by the operator)
              token        API tokens
              party        Parties and their workers' registration tokens
              trade        The T/AI 123.12 trade flow: register, publish, demand, confirm, settle, deliver
              help         Print this message or the help of the given subcommand(s)

            Options:
              -h, --help     Print help
              -V, --version  Print version

            Exit status: 0 success; 1 error (the operator's API code and message are printed as `error: CODE: message`); 2 usage error; 6 connection lost (the operator could not be reached, or stopped answering before a followed job ended); for `job submit` and `job watch`, 3 the job was refused, 4 it failed, 5 it was cancelled; for `tee verify`, 3 the evidence was refused; for `bench`, 130 or 143 stopped by SIGINT or SIGTERM.
        "#]].assert_eq(&help(&["tessera", "--help"]));
    }

    #[test]
    fn tee_verify_help() {
        expect![[r#"
            Verify TEE evidence at a given time and appraise it against a policy file; prints accepted or refused with every reason (exit status 0 accepted, 3 refused)

            Usage: tessera tee verify [OPTIONS] --evidence <FILE> --at <AT> --policy <FILE>

            Options:
                  --evidence <FILE>          The evidence: an SGX or TDX DCAP quote (with --collateral), an SEV-SNP report, raw or hex (with --vcek), or an insecure-simulated-tee JSON claim set (neither) [required]
                  --collateral <FILE>        DCAP collateral (JSON: PCK CRL, root CA CRL, TCB info, QE identity and their chains)
                  --vcek <FILE>              SEV-SNP: the chip's VCEK certificate (DER)
                  --chain <FILE>             SEV-SNP: AMD's ASK and ARK certificates (PEM, ASK first); its ARK must be a built-in AMD root [default: the built-in chains]
                  --at <AT>                  The appraisal time: unix seconds or RFC 3339 (2025-06-19T12:00:00Z); collateral and certificates must be valid then [required]
                  --policy <FILE>            The appraisal policy (JSON; see the tessera-tee crate docs) [required]
                  --nonce <NONCE>            The nonce (64 hex digits) the report data should bind, with --worker-key; checked against the report data only (an offline check cannot know whether it was used)
                  --worker-key <WORKER_KEY>  The worker's X25519 public key (64 hex digits) the report data should bind
                  --json                     Print one JSON object instead of text
              -h, --help                     Print help
        "#]].assert_eq(&help(&["tessera", "tee", "verify", "--help"]));
    }

    #[test]
    fn bench_secagg_help() {
        expect![[r#"
            Secure aggregation (SecAgg+) of N clients' vectors with dropouts, in this process, checked against the plain sum of the survivors' vectors

            Usage: tessera bench secagg [OPTIONS]

            Options:
                  --clients <CLIENTS>        Clients, N (2 ..= 10,000) [default: 100]
                  --dim <DIM>                Elements per vector, L (1 ..= 16,777,216) [default: 100000]
                  --dropout <DROPOUT>        Fraction of clients that drop out after sharing their keys (0 ..= 1) [default: 0.1]
                  --neighbours <NEIGHBOURS>  k: each client's share group including itself (Flower's num_shares as a count): the number of clients, or odd and smaller [default: the number of clients]
                  --threshold <THRESHOLD>    t: shares needed to reconstruct a secret (2 ..= k) [default: max(round(k/2), 2)]
                  --modulus <MODULUS>        The ring: 32 (arithmetic mod 2^32, Flower's default) or 64 [default: 32] [possible values: 32, 64]
                  --seed <SEED>              Seed of the data, the dropouts and the session [default: 42]
                  --json                     Print one JSON line instead of text
              -h, --help                     Print help
        "#]]
        .assert_eq(&help(&["tessera", "bench", "secagg", "--help"]));
    }

    #[test]
    fn job_submit_help() {
        expect![[r#"
            Submit a PSI job (scene psi), or a PSI with the provider's payload columns (scene psi_payload: --payload, --join)

            Usage: tessera job submit [OPTIONS] --licence <LICENCE> --buyer-party <BUYER_PARTY> --buyer-dataset <BUYER_DATASET>

            Options:
                  --operator <OPERATOR>
                      Operator URL [default: the profile's, else https://127.0.0.1:7100] [env: TESSERA_OPERATOR=]
                  --profile <PROFILE>
                      A profile of the client configuration file (operator URL, CA file and token) [env: TESSERA_PROFILE=]
                  --token <TOKEN>
                      The caller's API token (shown once by `token create`, or the operator's admin token from DATA_DIR/admin.token). Prefer TESSERA_TOKEN or --token-file: a command line is visible to other local users [env: TESSERA_TOKEN]
                  --token-file <FILE>
                      A file holding the caller's API token (used when neither --token nor TESSERA_TOKEN is given)
                  --ca-file <FILE>
                      The operator's CA certificate, which its TLS certificate must chain to (the operator writes DATA_DIR/ca.pem) [default: the profile's, else .tessera/operator/ca.pem if it exists] [env: TESSERA_CA_FILE=]
                  --insecure-plaintext
                      INSECURE, for tests only: accept an http:// operator URL (plain TCP: the token and every answer cross in clear) [env: TESSERA_INSECURE_PLAINTEXT=]
                  --licence <LICENCE>
                      The licence the job runs under: licensed to the caller (the token's user) or to a group the operator recorded it in; its relUsers must admit the caller or one of those groups [required]
                  --buyer-party <BUYER_PARTY>
                      The buyer's party, owned by the caller (its worker runs the receiver and writes the result) [required]
                  --buyer-dataset <BUYER_DATASET>
                      The buyer's own dataset id (a dataset of the buyer party) [required]
                  --buyer-columns <BUYER_COLUMNS>
                      Key columns in the buyer's dataset, comma-separated
                  --provider-columns <PROVIDER_COLUMNS>
                      Key columns in the provider's dataset, comma-separated
                  --mode <MODE>
                      intersection (the buyer learns which of its keys are common) | size (only how many) | both (the buyer and the provider each learn which of their own keys are common: the provider's worker writes the key columns of its rows whose key is common to `psi-<job id>.csv` in its output directory, shown to the provider in `job get`) [default: intersection] [possible values: intersection, size, both]
                  --protocol <PROTOCOL>
                      PSI protocol: rr22 (VOLE-based, the fast one; intersection and both modes), ecdh (public-key; fewer bytes than rr22 only for small sets, where rr22's ~600 KB fixed cost dominates; the only one for size mode) or ecdh-oprf (a small buyer set against a large provider dataset, e.g. a thousand keys against ten million: the provider's set is encoded once per licence on its worker and reused, the buyer's worker keeps what it received, so later jobs of the licence cost the buyer its own set only; intersection mode; no gain when the buyer's set is the larger: its worker then encodes it at every job, use rr22) [default: rr22, ecdh for size mode] [possible values: rr22, ecdh, ecdh-oprf]
                  --key-case <KEY_CASE>
                      Case rule for keys on both sides: preserve (as in the file), lower, upper (Unicode full mappings; they disagree on e.g. ß), or fold (Unicode full case folding: the one for caseless matching, `straße` = `STRASSE`) [default: preserve]
                  --unicode <UNICODE_FORM>
                      Unicode normalisation of keys on both sides: none (code points as they are), nfc (canonical: precomposed `é` = `e` + U+0301) or nfkc (also compatibility variants: full-width `Ａ` = `A`, `ﬁ` = `fi`). Applied after trimming, before the case rule [default: none]
                  --empty-keys <EMPTY_KEYS>
                      Rows whose key is empty after normalisation (with several key columns: ANY column empty) are no identifier: skip leaves them out and counts them in the job's summary (each party sees its own count); fail makes the job fail [default: skip]
                  --output <OUTPUT>
                      Result file name in the buyer worker's output directory (intersection and both modes; a bare name: no directory, no leading dot or surrounding spaces; empty: no file). A result never replaces a file: a name already recorded by another job of the buyer party is refused [default: ""]
                  --request-id <REQUEST_ID>
                      Idempotency key per user: a retry with the same id gets the same job (no second count or hold); the same id with other parameters is refused
                  --carry-columns <CARRY_COLUMNS>
                      Further columns of the buyer's own dataset written next to the key columns in the result, comma-separated (the provider's columns are written only by a join, `--payload`)
                  --payload <PAYLOAD>
                      A PSI with the provider's payload columns (the licence's psi_payload scene, rr22): the provider's columns written for the buyer's matched rows, comma-separated (each must be in the scene's payloadColumns). With --join, or alone for an inner join
                  --join <JOIN>
                      The shape of a PSI with payload (scene psi_payload): inner (the buyer's rows whose key the provider has, with the payload columns), left (every buyer row, a `matched` column true/false, the payload empty where false) or difference (the buyer's rows the provider does not have, no payload) [default: inner when --payload is given] [possible values: inner, left, difference]
                  --watch
                      Follow the job until it ends; the exit status then tells how it ended (0 succeeded, 3 refused, 4 failed, 5 cancelled, 6 connection lost)
              -h, --help
                      Print help
        "#]].assert_eq(&help(&["tessera", "job", "submit", "--help"]));
    }
}
