//! Settings of the long-running commands (`serve`, `worker`), loaded in one place from
//! three sources. Precedence, highest first:
//!
//! 1. flags (`--listen …`),
//! 2. environment variables (`TESSERA_LISTEN`, one per flag, named in `--help`),
//! 3. a TOML file (`--config FILE` or `TESSERA_CONFIG`; keys in [`OperatorConfig`] and
//!    [`WorkerFile`]),
//! 4. built-in defaults.
//!
//! clap resolves flags over environment; [`ServeArgs::resolve`] and [`WorkerArgs::resolve`]
//! lay the result over the file over the defaults. A key the file does not know is an error.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tessera_core::WorkerAttributes;

use crate::operator::OperatorConfig;

/// Shown at the end of `tessera serve --help` and `tessera worker --help`.
const PRECEDENCE: &str = "Settings come from flags, then environment variables (TESSERA_*, \
named above), then the TOML file given by --config or TESSERA_CONFIG, then built-in defaults; \
the first that sets a value wins. File keys are listed with --config above \
(e.g. data_dir = \"/var/lib/tessera\" for serve, datasets = \"/srv/datasets\" for a \
worker); an unknown key is an error.";

/// `tessera serve` options.
#[derive(Debug, clap::Args)]
#[command(after_help = PRECEDENCE)]
pub struct ServeArgs {
    /// TOML configuration file (keys: listen, data_dir, heartbeat_timeout_ms,
    /// heartbeat_interval_ms, resume_window_secs, late_window_ms (milliseconds, where the flag
    /// takes hours),
    /// bill_close_interval_ms, time_zone, daily_price_basis, tls_names, insecure_plaintext,
    /// tee_policy).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address of gRPC and HTTP (TLS) [default: 127.0.0.1:7100].
    #[arg(long, env = "TESSERA_LISTEN")]
    pub listen: Option<String>,
    /// Data directory [default: .tessera/operator].
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Worker heartbeat timeout; the interval asked of workers is a quarter of it
    /// [default: 10000].
    #[arg(long, env = "TESSERA_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<i64>,
    /// How long a PSI job whose run broke off (a worker restarted, the link between the
    /// parties broke) waits for both workers to be back and resumes from its last finished
    /// bucket, in seconds; 0 fails such a job at once [default: 900].
    #[arg(long, env = "TESSERA_RESUME_WINDOW_SECS", value_parser = clap::value_parser!(u32).range(0..=86_400))]
    pub resume_window_secs: Option<u32>,
    /// How long after a month's end its bills accept late charges, in hours (default: the
    /// stored setting, 72 on a new store).
    #[arg(long, env = "TESSERA_LATE_WINDOW_HOURS")]
    pub late_window_hours: Option<i64>,
    /// Calendar zone of billing months and licence validity windows: +HH:MM, UTC or an IANA
    /// name such as Asia/Shanghai; stored times stay UTC [default: +08:00].
    #[arg(long, env = "TESSERA_TIME_ZONE", allow_hyphen_values = true)]
    pub time_zone: Option<String>,
    /// Days dividing a monthly price in a term's overdue make-up: previous_term_month
    /// (manual §1.4.5.1.2 note), overdue_month_period, calendar_month_of_overdue or fixed_N
    /// [default: previous_term_month].
    #[arg(long, env = "TESSERA_DAILY_PRICE_BASIS")]
    pub daily_price_basis: Option<String>,
    /// A host name or IP address clients and workers use to reach this operator, for its TLS
    /// certificate (repeatable or comma-separated; localhost, 127.0.0.1, ::1 and a specific
    /// listen address are always in it).
    #[arg(long = "tls-name", env = "TESSERA_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// INSECURE, for tests only: serve gRPC and HTTP over plain TCP instead of TLS (tokens
    /// and data cross in clear).
    #[arg(long, env = "TESSERA_INSECURE_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext: bool,
    /// The appraisal policy of workers' TEE evidence (JSON: accepted measurements, TCB
    /// statuses, result lifetime; see `tessera tee verify`); without it every attestation is
    /// refused and no tee job is placed.
    #[arg(long, env = "TESSERA_TEE_POLICY", value_name = "FILE")]
    pub tee_policy: Option<PathBuf>,
}

impl ServeArgs {
    /// The operator's settings: flags and environment over the file over the defaults.
    ///
    /// Errors: the file cannot be read or holds an unknown key or a bad value; the late
    /// window is outside 0 ..= 8784 hours.
    pub fn resolve(self) -> anyhow::Result<OperatorConfig> {
        let mut config: OperatorConfig = load_file(self.config.as_deref())?;
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(d) = self.data_dir {
            config.data_dir = d;
        }
        if let Some(t) = self.heartbeat_timeout_ms {
            config.heartbeat_timeout_ms = t;
            config.heartbeat_interval_ms = u64::try_from(t / 4).unwrap_or(1000).max(100);
        }
        if let Some(w) = self.resume_window_secs {
            config.resume_window_secs = w;
        }
        anyhow::ensure!(
            config.resume_window_secs <= 86_400,
            "resume_window_secs must be 0 ..= 86400"
        );
        if let Some(h) = self.late_window_hours {
            anyhow::ensure!(
                (0..=366 * 24).contains(&h),
                "--late-window-hours must be 0 ..= 8784"
            );
            config.late_window_ms = Some(h * 3_600_000);
        }
        if let Some(z) = self.time_zone {
            config.time_zone = z;
        }
        tessera_core::civil::Zone::parse(&config.time_zone)
            .with_context(|| format!("time zone {:?}", config.time_zone))?;
        if let Some(b) = self.daily_price_basis {
            config.daily_price_basis = b;
        }
        config.tls_names.extend(self.tls_names);
        if let Some(p) = self.tee_policy {
            config.tee_policy = Some(p);
        }
        config.insecure_plaintext |= self.insecure_plaintext;
        config
            .daily_price_basis
            .parse::<tessera_accounting::subscription::DailyPriceBasis>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "daily price basis {:?} must be previous_term_month, overdue_month_period, \
                     calendar_month_of_overdue or fixed_1 ..= fixed_31",
                    config.daily_price_basis
                )
            })?;
        Ok(config)
    }
}

/// `tessera worker` options.
#[derive(Debug, clap::Args)]
#[command(after_help = PRECEDENCE, args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    /// A client command about workers instead of running one (`tessera worker list`).
    #[command(subcommand)]
    pub command: Option<crate::client::lists::WorkerCmd>,
    /// TOML configuration file (keys: operator, worker_id, party, region, centre, hardware,
    /// frameworks, software, datasets, outputs, peer_listen, peer_advertise, operator_key,
    /// operator_key_file, registration_token_file, ca_file, work_dir, memory_limit_mb,
    /// bucket_rows).
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Operator URL [default: https://127.0.0.1:7100].
    #[arg(long, env = "TESSERA_OPERATOR")]
    pub operator: Option<String>,
    /// Stable worker id (assigned when absent).
    #[arg(long, env = "TESSERA_WORKER_ID")]
    pub worker_id: Option<String>,
    /// The party this worker acts for (required).
    #[arg(long, env = "TESSERA_PARTY")]
    pub party: Option<String>,
    /// Run region.
    #[arg(long, env = "TESSERA_REGION")]
    pub region: Option<String>,
    /// Compute centre.
    #[arg(long, env = "TESSERA_CENTRE")]
    pub centre: Option<String>,
    /// Hardware class.
    #[arg(long, env = "TESSERA_HARDWARE")]
    pub hardware: Option<String>,
    /// AI frameworks, comma-separated.
    #[arg(long, env = "TESSERA_FRAMEWORKS", value_delimiter = ',')]
    pub frameworks: Option<Vec<String>>,
    /// Software environment.
    #[arg(long, env = "TESSERA_SOFTWARE")]
    pub software: Option<String>,
    /// Directory of this party's datasets (required).
    #[arg(long, env = "TESSERA_DATASETS")]
    pub datasets: Option<PathBuf>,
    /// Directory results are written to (required).
    #[arg(long, env = "TESSERA_OUTPUTS")]
    pub outputs: Option<PathBuf>,
    /// Address the peer-link server binds [default: 127.0.0.1:0].
    #[arg(long, env = "TESSERA_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Address other workers should dial, if not the bound one.
    #[arg(long, env = "TESSERA_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// The operator's public key (64 hex digits), which signs tickets; required (or
    /// --operator-key-file).
    #[arg(
        long,
        env = "TESSERA_OPERATOR_KEY",
        conflicts_with = "operator_key_file"
    )]
    pub operator_key: Option<String>,
    /// File holding the operator's public key (the operator writes DATA_DIR/operator.pub).
    #[arg(long, env = "TESSERA_OPERATOR_KEY_FILE")]
    pub operator_key_file: Option<PathBuf>,
    /// File holding the party's registration token (`tessera party registration-token`);
    /// required unless TESSERA_REGISTRATION_TOKEN holds the token itself.
    #[arg(long, env = "TESSERA_REGISTRATION_TOKEN_FILE")]
    pub registration_token_file: Option<PathBuf>,
    /// INSECURE, for tests only: peer links over plain TCP, without the certificate the
    /// operator issues (by default they use mutual TLS and each side checks that the other's
    /// certificate names the party and worker its ticket names).
    #[arg(long, env = "TESSERA_INSECURE_PLAINTEXT_PEER", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext_peer: bool,
    /// The operator's CA certificate (the operator writes DATA_DIR/ca.pem): the operator's TLS
    /// certificate must chain to it before the registration token is sent; required unless
    /// --insecure-plaintext-operator.
    #[arg(long, env = "TESSERA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// INSECURE, for tests only: reach the operator at an http:// URL over plain TCP (the
    /// registration token and worker credential cross in clear).
    #[arg(long, env = "TESSERA_INSECURE_PLAINTEXT_OPERATOR", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext_operator: bool,
    /// How often the peer-link certificate (valid 7 days) is renewed while the worker runs,
    /// in seconds [default: 86400].
    #[arg(long, env = "TESSERA_CERT_RENEW_SECS", value_parser = clap::value_parser!(u64).range(1..=518_400))]
    pub cert_renew_secs: Option<u64>,
    /// INSECURE, for development only: run tee tasks in a simulated enclave that claims this
    /// measurement (no security at all: the worker process sees the buyer's rows). Accepted
    /// only by an operator policy with an insecure_simulated_tee section, and only for
    /// licences whose envHard names tee:insecure-simulated-tee.
    #[arg(
        long,
        env = "TESSERA_INSECURE_SIMULATED_TEE",
        value_name = "MEASUREMENT"
    )]
    pub insecure_simulated_tee: Option<String>,
    /// Directory for a task's scratch files (a large PSI's bucket files, removed when the
    /// task ends) [default: OUTPUTS/.tessera-work].
    #[arg(long, env = "TESSERA_WORK_DIR", value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Memory a PSI task may take, in MiB (512 ..= 1048576) [default: 2048]: a larger input
    /// is split into buckets by a keyed hash, spilled to --work-dir and intersected one bucket
    /// at a time.
    #[arg(long, env = "TESSERA_MEMORY_LIMIT_MB", value_parser = clap::value_parser!(u64).range(512..=1_048_576))]
    pub memory_limit_mb: Option<u64>,
    /// Rows per PSI bucket, overriding what --memory-limit-mb gives (mostly for tests; at
    /// most 1,024 buckets, so past 1,024 × N rows a bucket holds more).
    #[arg(long, env = "TESSERA_BUCKET_ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub bucket_rows: Option<u64>,
    /// Stop when standard input reaches its end: for a supervisor that starts the worker with
    /// a pipe on its standard input, so that the worker ends with the supervisor even when
    /// the supervisor is killed outright (`tessera bench admission` starts its workers so).
    #[arg(long)]
    pub stop_on_stdin_eof: bool,
}

/// The keys a worker's TOML file may set (all optional; same names as the flags).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerFile {
    /// Operator URL.
    pub operator: Option<String>,
    /// Stable worker id.
    pub worker_id: Option<String>,
    /// The party this worker acts for.
    pub party: Option<String>,
    /// Run region.
    pub region: Option<String>,
    /// Compute centre.
    pub centre: Option<String>,
    /// Hardware class.
    pub hardware: Option<String>,
    /// AI frameworks.
    pub frameworks: Option<Vec<String>>,
    /// Software environment.
    pub software: Option<String>,
    /// Directory of this party's datasets.
    pub datasets: Option<PathBuf>,
    /// Directory results are written to.
    pub outputs: Option<PathBuf>,
    /// Address the peer-link server binds.
    pub peer_listen: Option<String>,
    /// Address other workers should dial.
    pub peer_advertise: Option<String>,
    /// The operator's public key (hex).
    pub operator_key: Option<String>,
    /// File holding the operator's public key.
    pub operator_key_file: Option<PathBuf>,
    /// File holding the party's registration token.
    pub registration_token_file: Option<PathBuf>,
    /// The operator's CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Directory for a task's scratch files.
    pub work_dir: Option<PathBuf>,
    /// Memory a PSI task may take, in MiB.
    pub memory_limit_mb: Option<u64>,
    /// Rows per PSI bucket.
    pub bucket_rows: Option<u64>,
}

impl WorkerArgs {
    /// The worker's settings: flags and environment over the file over the defaults.
    ///
    /// Errors: the file cannot be read or holds an unknown key; `party`, `datasets` or
    /// `outputs` is set nowhere.
    pub fn resolve(self) -> anyhow::Result<tessera_worker::WorkerConfig> {
        let f: WorkerFile = load_file(self.config.as_deref())?;
        let required = |name: &str| {
            anyhow::anyhow!(
                "--{name} is required (flag, TESSERA_{} or `{}` in the --config file)",
                name.to_uppercase(),
                name
            )
        };
        let party = self.party.or(f.party).ok_or_else(|| required("party"))?;
        let datasets = self
            .datasets
            .or(f.datasets)
            .ok_or_else(|| required("datasets"))?;
        let outputs = self
            .outputs
            .or(f.outputs)
            .ok_or_else(|| required("outputs"))?;
        let attributes = WorkerAttributes {
            party,
            region: self.region.or(f.region).unwrap_or_default(),
            compute_centre: self.centre.or(f.centre).unwrap_or_default(),
            hardware: self.hardware.or(f.hardware).unwrap_or_default(),
            ai_frameworks: self
                .frameworks
                .or(f.frameworks)
                .unwrap_or_default()
                .into_iter()
                .filter(|x| !x.is_empty())
                .collect(),
            software_env: self.software.or(f.software).unwrap_or_default(),
        };
        let operator = self
            .operator
            .or(f.operator)
            .unwrap_or_else(|| crate::client::conn::DEFAULT_OPERATOR.into());
        let mut config = tessera_worker::WorkerConfig::new(operator, attributes, datasets, outputs);
        config.insecure_plaintext_operator = self.insecure_plaintext_operator;
        if let Some(secs) = self.cert_renew_secs {
            config.cert_renew_interval = std::time::Duration::from_secs(secs);
        }
        if let Some(path) = self.ca_file.or(f.ca_file) {
            config.operator_ca_pem = Some(crate::client::conn::read_ca_file(&path)?);
        }
        config.worker_id = self.worker_id.or(f.worker_id);
        if let Some(l) = self.peer_listen.or(f.peer_listen) {
            config.peer_listen = l;
        }
        config.peer_advertise = self.peer_advertise.or(f.peer_advertise);
        config.insecure_plaintext_peer = self.insecure_plaintext_peer;
        config.work_dir = self.work_dir.or(f.work_dir);
        let memory_mb = self.memory_limit_mb.or(f.memory_limit_mb).unwrap_or(2048);
        anyhow::ensure!(
            (512..=1_048_576).contains(&memory_mb),
            "memory_limit_mb must be between 512 and 1048576"
        );
        config.bucket_rows = match self.bucket_rows.or(f.bucket_rows) {
            Some(0) => anyhow::bail!("bucket_rows must be at least 1"),
            Some(rows) => rows,
            None => tessera_psi::bucket::bucket_rows_for_memory(memory_mb << 20, 64),
        };
        if let Some(m) = self.insecure_simulated_tee {
            anyhow::ensure!(
                !m.trim().is_empty() && m.len() <= 256,
                "--insecure-simulated-tee needs a measurement name of 1 to 256 characters"
            );
            config.tee = Some(tessera_worker::TeeConfig { measurement: m });
        }
        config.operator_key_hex = match (
            self.operator_key.or(f.operator_key),
            self.operator_key_file.or(f.operator_key_file),
        ) {
            (Some(k), _) => k,
            (None, Some(path)) => crate::client::conn::read_small_file(&path, "operator key")?,
            (None, None) => String::new(),
        };
        let token = match self.registration_token_file.or(f.registration_token_file) {
            Some(path) => Some((
                zeroize::Zeroizing::new(crate::client::conn::read_token_file(&path)?),
                path.display().to_string(),
            )),
            None => std::env::var(REGISTRATION_TOKEN_ENV).ok().map(|t| {
                (
                    zeroize::Zeroizing::new(t),
                    REGISTRATION_TOKEN_ENV.to_owned(),
                )
            }),
        };
        if let Some((t, source)) = token {
            crate::client::conn::check_token_form(
                tessera_auth::TokenKind::Registration,
                t.trim(),
                &source,
            )?;
            config.registration = tessera_proto::TokenHeader::new(&t)
                .map_err(|e| anyhow::anyhow!("registration token: {e}"))?;
        }
        Ok(config)
    }
}

/// The environment variable that may hold the registration token itself (a file is
/// preferred: `--registration-token-file`).
pub const REGISTRATION_TOKEN_ENV: &str = "TESSERA_REGISTRATION_TOKEN";

/// Reads a TOML settings file, or the defaults when there is none.
fn load_file<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[derive(Debug, Parser)]
    struct Worker {
        #[command(flatten)]
        args: WorkerArgs,
    }

    const CHILD: &str = "TESSERA_PRECEDENCE_TEST_CHILD";

    /// Environment variables cannot be set safely inside a running test process, so the test
    /// runs itself again as a child process with the environment it needs.
    fn in_child_with_env(test: &str, env: &[(&str, &str)]) -> bool {
        if std::env::var_os(CHILD).is_some() {
            return false;
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", test, "--test-threads=1"])
            .env(CHILD, "1")
            .envs(env.iter().copied())
            .output()
            .expect("run the test binary again");
        assert!(
            out.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran no test"
        );
        true
    }

    #[test]
    fn serve_time_zone_is_checked_and_defaults_to_utc_plus_8() {
        let resolve = |args: &[&str]| Serve::try_parse_from(args).expect("parse").args.resolve();
        assert_eq!(resolve(&["serve"]).expect("default").time_zone, "+08:00");
        let c = resolve(&["serve", "--time-zone", "Asia/Shanghai"]).expect("iana");
        assert_eq!(c.time_zone, "Asia/Shanghai");
        let err = resolve(&["serve", "--time-zone", "Mars/Olympus"]).unwrap_err();
        assert!(format!("{err:#}").contains("unknown time zone"), "{err:#}");
    }

    /// Issue 8 item 8: the make-up basis defaults to the manual's rule and is configured like
    /// the time zone (flag > env > file > default); an unknown name is refused.
    #[test]
    fn serve_daily_price_basis_is_configurable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "daily_price_basis = \"overdue_month_period\"\n").expect("write");
        let file = file.display().to_string();
        let resolve = |args: &[&str]| Serve::try_parse_from(args).expect("parse").args.resolve();
        if std::env::var_os(CHILD).is_none() {
            let basis = |args: &[&str]| resolve(args).expect("resolve").daily_price_basis;
            assert_eq!(basis(&["serve"]), "previous_term_month");
            assert_eq!(basis(&["serve", "--config", &file]), "overdue_month_period");
            let err = resolve(&["serve", "--daily-price-basis", "thirty"]).unwrap_err();
            assert!(
                format!("{err:#}").contains("previous_term_month"),
                "{err:#}"
            );
        }
        if in_child_with_env(
            "config::tests::serve_daily_price_basis_is_configurable",
            &[
                ("TESSERA_CONFIG", &file),
                ("TESSERA_DAILY_PRICE_BASIS", "calendar_month_of_overdue"),
            ],
        ) {
            return;
        }
        // In the child: the environment over the file, the flag over the environment.
        let basis = |args: &[&str]| resolve(args).expect("resolve").daily_price_basis;
        assert_eq!(basis(&["serve"]), "calendar_month_of_overdue");
        assert_eq!(
            basis(&["serve", "--daily-price-basis", "fixed_30"]),
            "fixed_30"
        );
    }

    #[test]
    fn serve_precedence_is_flags_env_file_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "listen = \"file:1\"\ndata_dir = \"/from/file\"\nheartbeat_timeout_ms = 1234\n",
        )
        .expect("write");
        let file = file.display().to_string();
        if in_child_with_env(
            "config::tests::serve_precedence_is_flags_env_file_defaults",
            &[
                ("TESSERA_CONFIG", &file),
                ("TESSERA_LISTEN", "env:1"),
                ("TESSERA_DATA_DIR", "/from/env"),
            ],
        ) {
            return;
        }
        // In the child: the file comes from TESSERA_CONFIG (written by the parent).
        let c = Serve::try_parse_from(["serve", "--listen", "flag:1"])
            .expect("parse")
            .args
            .resolve()
            .expect("resolve");
        assert_eq!(c.listen, "flag:1", "flag over env and file");
        assert_eq!(c.data_dir, PathBuf::from("/from/env"), "env over file");
        assert_eq!(c.heartbeat_timeout_ms, 1234, "file over default");
        assert_eq!(c.bill_close_interval_ms, 60_000, "default");
    }

    #[test]
    fn worker_settings_come_from_the_file_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "party = \"p\"\ndatasets = \"/d\"\noutputs = \"/o\"\nframeworks = [\"a\", \"b\"]\n\
             region = \"file-region\"\n",
        )
        .expect("write");
        let file = file.display().to_string();
        let c = Worker::try_parse_from(["worker", "--config", &file, "--region", "flag-region"])
            .expect("parse")
            .args
            .resolve()
            .expect("resolve");
        assert_eq!(c.attributes.party, "p");
        assert_eq!(c.attributes.region, "flag-region");
        assert_eq!(c.attributes.ai_frameworks, ["a", "b"]);
        assert_eq!(c.operator_url, "https://127.0.0.1:7100");
        assert_eq!(c.peer_listen, "127.0.0.1:0");
    }

    #[test]
    fn unknown_file_keys_and_missing_required_settings_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "lisen = \"typo\"\n").expect("write");
        let file = file.display().to_string();
        let e = Serve::try_parse_from(["serve", "--config", &file])
            .expect("parse")
            .args
            .resolve()
            .expect_err("unknown key");
        assert!(format!("{e:#}").contains("lisen"), "{e:#}");
        if std::env::var_os("TESSERA_PARTY").is_none() {
            let e = Worker::try_parse_from(["worker", "--datasets", "/d", "--outputs", "/o"])
                .expect("parse")
                .args
                .resolve()
                .expect_err("no party");
            assert!(e.to_string().contains("--party is required"), "{e}");
        }
    }
}
