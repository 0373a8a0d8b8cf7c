//! Test harness: runs the real `tessera` binary as separate processes (operator, workers) on
//! loopback ports in a temporary directory, and kills them when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_proto::TokenHeader;
use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_client::OperatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of the operator whose calls carry one user's API token.
pub type Client = OperatorClient<InterceptedService<Channel, TokenHeader>>;

/// A client of the operator's `Trade` service (the T/AI 123.12 trade flow) with one token.
pub type TradeClient =
    tessera_proto::v1::trade_client::TradeClient<InterceptedService<Channel, TokenHeader>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    pub first_line: String,
}

impl Proc {
    /// Starts `tessera ARGS` and waits for its first stdout line.
    pub fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut first_line = String::new();
        reader.read_line(&mut first_line).expect("first line");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        assert!(!first_line.is_empty(), "tessera {args:?} printed nothing");
        Proc { child, first_line }
    }

    /// Sends a signal by name (`STOP`, `CONT`) with the system's `kill` command: a stopped
    /// process keeps its sockets but does nothing, so a test can freeze a worker at a chosen
    /// point and then decide what happens next.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A party's worker process and its directories.
pub struct Party {
    pub name: String,
    /// The id the operator knows the worker by (from its banner).
    pub worker_id: String,
    pub datasets: PathBuf,
    pub outputs: PathBuf,
    pub proc: Proc,
}

/// An operator and a provider and a buyer worker, set up as a real deployment is: the first
/// start's admin token (read from `admin.token`) creates the provider's user (`pu`, owner of
/// party `prov`) and the buyer's (`u1`, owner of `buy`), an API token for each, and a
/// registration token per party; each worker starts with the operator's public key
/// (`operator.pub`) and its party's registration token.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The operator's CA certificate (`DATA_DIR/ca.pem`), which every client and worker
    /// checks the operator's TLS certificate against.
    pub ca_file: String,
    /// Its PEM text.
    pub ca_pem: String,
    pub operator: Proc,
    pub provider: Party,
    pub buyer: Party,
    /// The operator's admin API token.
    pub admin_token: String,
    /// The provider user's (`pu`) API token.
    pub provider_token: String,
    /// The buyer user's (`u1`) API token.
    pub buyer_token: String,
    /// Extra arguments of every worker this cluster starts.
    worker_args: Vec<String>,
    /// Extra arguments of the operator (kept across restarts).
    operator_args: Vec<String>,
}

pub const PROVIDER: &str = "prov";
pub const BUYER: &str = "buy";
pub const USER: &str = "u1";
pub const PROVIDER_USER: &str = "pu";

/// A client of the cluster's operator sending `token`.
pub async fn connect_as(c: &Cluster, token: &str) -> Client {
    connect_to(
        &c.url,
        &c.ca_pem,
        TokenHeader::new(token).expect("ascii token"),
    )
    .await
}

/// A `Trade` client of the cluster's operator sending `token` (none: anonymous).
pub async fn trade_as(c: &Cluster, token: Option<&str>) -> TradeClient {
    let header = match token {
        Some(t) => TokenHeader::new(t).expect("ascii token"),
        None => TokenHeader::none(),
    };
    let channel = tessera_proto::operator_endpoint(&c.url, Some(&c.ca_pem), false)
        .expect("url")
        .connect()
        .await
        .expect("connect operator");
    tessera_proto::v1::trade_client::TradeClient::with_interceptor(channel, header)
}

/// Calls trade operation `op` (its `Trade` method) with the JSON `body`; the answer's `data`.
pub async fn tai(
    t: &mut TradeClient,
    op: tessera_auth::Operation,
    body: &serde_json::Value,
) -> Result<serde_json::Value, tonic::Status> {
    let r = tessera_gateway::trade::call_client(t, op, body.to_string()).await?;
    Ok(serde_json::from_str(&r.into_inner().json).expect("a JSON answer"))
}

/// Whether `op` is a trade operation (a method of the `Trade` service).
pub fn is_trade(op: tessera_auth::Operation) -> bool {
    tessera_gateway::rest::route_of(op).is_some_and(|(_, p)| p.starts_with("/v1/"))
}

/// A client of the cluster's operator sending no token.
pub async fn connect_anonymous(c: &Cluster) -> Client {
    connect_to(&c.url, &c.ca_pem, TokenHeader::none()).await
}

/// A client of the operator at `url` over TLS checked against `ca_pem`.
async fn connect_to(url: &str, ca_pem: &str, header: TokenHeader) -> Client {
    let channel = tessera_proto::operator_endpoint(url, Some(ca_pem), false)
        .expect("url")
        .connect()
        .await
        .expect("connect operator");
    OperatorClient::with_interceptor(channel, header)
}

impl Cluster {
    pub fn start(heartbeat_timeout_ms: u64) -> Cluster {
        Self::start_with(heartbeat_timeout_ms, &[])
    }

    /// A cluster whose workers get `worker_args` too.
    pub fn start_with(heartbeat_timeout_ms: u64, worker_args: &[&str]) -> Cluster {
        Self::start_full(heartbeat_timeout_ms, worker_args, None, &[], &[])
    }

    /// A cluster whose operator gets `operator_args` too and whose workers get `worker_args`.
    pub fn start_with_operator(
        heartbeat_timeout_ms: u64,
        operator_args: &[&str],
        worker_args: &[&str],
    ) -> Cluster {
        Self::start_full(heartbeat_timeout_ms, worker_args, None, &[], operator_args)
    }

    /// A cluster whose operator appraises TEE evidence under `policy_json` (`--tee-policy`)
    /// and whose provider worker runs a simulated enclave claiming `measurement`
    /// (`--insecure-simulated-tee`).
    pub fn start_tee(policy_json: &str, measurement: &str) -> Cluster {
        Self::start_full(
            10_000,
            &[],
            Some(policy_json),
            &["--insecure-simulated-tee", measurement],
            &[],
        )
    }

    fn start_full(
        heartbeat_timeout_ms: u64,
        worker_args: &[&str],
        tee_policy: Option<&str>,
        provider_args: &[&str],
        operator_args: &[&str],
    ) -> Cluster {
        let worker_args: Vec<String> = worker_args.iter().map(|a| a.to_string()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("operator");
        let timeout = heartbeat_timeout_ms.to_string();
        let policy_path = dir.path().join("tee-policy.json");
        let mut serve = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--heartbeat-timeout-ms",
            &timeout,
        ];
        if let Some(p) = tee_policy {
            std::fs::write(&policy_path, p).expect("write the TEE policy");
            serve.extend(["--tee-policy", policy_path.to_str().expect("utf8")]);
        }
        serve.extend(operator_args);
        let operator = Proc::start(&serve);
        let url = operator
            .first_line
            .trim()
            .strip_prefix("operator listening on ")
            .expect("operator banner")
            .to_string();
        let admin_token = std::fs::read_to_string(data.join("admin.token"))
            .expect("the first start writes admin.token")
            .trim()
            .to_owned();
        let ca_file = data.join("ca.pem").to_str().expect("utf8").to_owned();
        let ca_pem = std::fs::read_to_string(&ca_file).expect("the operator writes ca.pem");
        let (provider_token, buyer_token) = accounts(&url, &ca_pem, &admin_token, dir.path());
        let provider_all: Vec<String> = worker_args
            .iter()
            .cloned()
            .chain(provider_args.iter().map(|a| a.to_string()))
            .collect();
        let provider = Self::party_as(dir.path(), &url, PROVIDER, None, &provider_all);
        let buyer = Self::party_as(dir.path(), &url, BUYER, None, &worker_args);
        Cluster {
            dir,
            url,
            ca_file,
            ca_pem,
            operator,
            provider,
            buyer,
            admin_token,
            provider_token,
            buyer_token,
            worker_args,
            operator_args: operator_args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Kills the operator and starts it again on the same address and data directory, with the
    /// same extra arguments.
    pub fn restart_operator(&mut self) {
        self.operator.kill();
        let data = self.dir.path().join("operator");
        let listen = self.url.trim_start_matches("https://").to_string();
        let mut args = vec![
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().expect("utf8"),
        ];
        args.extend(self.operator_args.iter().map(String::as_str));
        self.operator = Proc::start(&args);
    }

    /// Kills the buyer's worker (SIGKILL) and starts another at once on the same
    /// directories: under the same worker id when `same_id` (a restart), else under a new one.
    pub fn replace_buyer(&mut self, same_id: bool) {
        self.buyer.proc.kill();
        let id = same_id.then(|| self.buyer.worker_id.clone());
        self.buyer = Self::party_as(
            self.dir.path(),
            &self.url,
            BUYER,
            id.as_deref(),
            &self.worker_args,
        );
    }

    /// Kills the provider's worker (SIGKILL) and starts it again at once on the same
    /// directories under the same worker id (a restart).
    pub fn restart_provider(&mut self) {
        self.provider.proc.kill();
        let id = self.provider.worker_id.clone();
        self.provider = Self::party_as(
            self.dir.path(),
            &self.url,
            PROVIDER,
            Some(&id),
            &self.worker_args,
        );
    }

    /// A worker process for party `name`, under `worker_id` when given, started with the
    /// operator's public key and the party's registration token.
    fn party_as(
        root: &Path,
        url: &str,
        name: &str,
        worker_id: Option<&str>,
        extra: &[String],
    ) -> Party {
        let datasets = root.join(name).join("datasets");
        let outputs = root.join(name).join("outputs");
        std::fs::create_dir_all(&datasets).expect("mkdir");
        let id_args = worker_id.map(|id| ["--worker-id", id]);
        let key = root.join("operator").join("operator.pub");
        let ca = root.join("operator").join("ca.pem");
        let registration = registration_token_file(root, name);
        let proc = Proc::start(
            &[
                "worker",
                "--operator",
                url,
                "--party",
                name,
                "--region",
                "r1",
                "--centre",
                "c1",
                "--hardware",
                "x86_64",
                "--software",
                "linux",
                "--datasets",
                datasets.to_str().expect("utf8"),
                "--outputs",
                outputs.to_str().expect("utf8"),
                "--operator-key-file",
                key.to_str().expect("utf8"),
                "--ca-file",
                ca.to_str().expect("utf8"),
                "--registration-token-file",
                registration.to_str().expect("utf8"),
            ]
            .into_iter()
            .chain(id_args.iter().flatten().copied())
            .chain(extra.iter().map(String::as_str))
            .collect::<Vec<_>>(),
        );
        let worker_id = proc
            .first_line
            .strip_prefix("worker ")
            .and_then(|rest| rest.split_whitespace().next())
            .expect("worker banner")
            .to_string();
        Party {
            name: name.into(),
            worker_id,
            datasets,
            outputs,
            proc,
        }
    }

    /// An HTTPS client trusting exactly the operator's CA; HTTP error statuses are answers,
    /// not errors.
    pub fn https(&self) -> ureq::Agent {
        let ca = ureq::tls::Certificate::from_pem(self.ca_pem.as_bytes())
            .expect("CA PEM")
            .to_owned();
        ureq::Agent::config_builder()
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                        ca,
                    ])))
                    .build(),
            )
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// The buyer user's (`u1`) client: jobs, its deposits, its bills.
    pub async fn client(&self) -> Client {
        connect_as(self, &self.buyer_token).await
    }

    /// The operator's (admin) client: every row, money and audit operations.
    pub async fn admin(&self) -> Client {
        connect_as(self, &self.admin_token).await
    }

    /// The provider user's (`pu`) client.
    pub async fn provider_client(&self) -> Client {
        connect_as(self, &self.provider_token).await
    }

    /// The client of whoever owns `party` (`prov` or `buy`).
    async fn owner_client(&self, party: &str) -> Client {
        if party == PROVIDER {
            self.provider_client().await
        } else {
            self.client().await
        }
    }

    /// Runs the CLI against this cluster's operator, with [`Cluster::cli_token`]'s token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(BIN)
            .args(args)
            .args(["--operator", &self.url, "--ca-file", &self.ca_file])
            .env("TESSERA_TOKEN", self.cli_token(args))
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tessera")
    }

    /// The token a CLI command runs with: job commands as the buyer (`u1`), everything else
    /// as the operator.
    pub fn cli_token(&self, args: &[&str]) -> &str {
        match args.first().copied() {
            Some("job") => &self.buyer_token,
            _ => &self.admin_token,
        }
    }

    /// Writes a CSV dataset file for a party and registers it.
    pub async fn dataset(&self, party: &Party, id: &str, header: &str, rows: &[String]) {
        let file = format!("{id}.csv");
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(party.datasets.join(&file)).expect("create"),
        );
        writeln!(f, "{header}").expect("write");
        for r in rows {
            writeln!(f, "{r}").expect("write");
        }
        f.flush().expect("flush");
        drop(f);
        self.owner_client(&party.name)
            .await
            .create_dataset(pb::CreateDatasetRequest {
                dataset_id: id.into(),
                owner_party: party.name.clone(),
                location: file,
                description: String::new(),
                declared_rows: Some(rows.len() as u64),
            })
            .await
            .expect("create dataset");
    }

    /// A licence on the provider dataset `dataset` for USER; `counts` None = unlimited.
    pub async fn licence(&self, dataset: &str, counts: Option<u64>) -> String {
        let counts = counts
            .map(|c| format!(r#","counts":{c}"#))
            .unwrap_or_default();
        let policy = format!(
            r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                "useScenes":[{{"useSence":"psi"{counts},"visitArea":["r1"],"cpCenter":["c1"]}}]}}"#
        );
        self.licence_with_policy(dataset, policy).await
    }

    /// A licence of the provider's `dataset` to USER under a policy of the one use scene
    /// `scene` (its JSON object), priced as [`Cluster::licence`]'s.
    pub async fn licence_with_scene(&self, dataset: &str, scene: &str) -> String {
        let policy = format!(
            r#"{{"policyName":"t","relUsers":[{{"userId":"{USER}","userName":"U","isGroup":0}}],
                "useScenes":[{scene}]}}"#
        );
        self.licence_with_policy(dataset, policy).await
    }

    /// A licence of the provider's `dataset` to USER under `policy` (JSON), priced as
    /// [`Cluster::licence`]'s.
    pub async fn licence_with_policy(&self, dataset: &str, policy: String) -> String {
        self.provider_client()
            .await
            .create_licence(pb::CreateLicenceRequest {
                licensor: PROVIDER.into(),
                licensee: USER.into(),
                dataset_id: dataset.into(),
                policy_json: policy,
                price_per_job_micros: 1_000,
                price_per_1k_rows_micros: 10,
                operator_share_bps: 2_000,
                monthly_price_micros: 0,
            })
            .await
            .expect("create licence")
            .into_inner()
            .licence_id
    }

    pub async fn fund(&self, amount_micros: i64, key: &str) {
        self.client()
            .await
            .deposit(pb::DepositRequest {
                account: USER.into(),
                amount_micros,
                idempotency_key: key.into(),
                into: String::new(),
            })
            .await
            .expect("deposit");
    }

    pub fn job(
        licence: &str,
        buyer_dataset: &str,
        mode: &str,
        output: &str,
    ) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            user: USER.into(),
            licence_id: licence.into(),
            scene: "psi".into(),
            buyer_party: BUYER.into(),
            buyer_dataset_id: buyer_dataset.into(),
            buyer_columns: vec!["k".into()],
            provider_columns: vec!["k".into()],
            // Text for the tests' readability; anything else is a number no build knows.
            mode: match mode {
                "intersection" => pb::PsiMode::Intersection.into(),
                "size" => pb::PsiMode::Size.into(),
                "both" => pb::PsiMode::Both.into(),
                _ => 99,
            },
            key_case: pb::KeyCase::Preserve.into(),
            unicode_form: pb::UnicodeForm::None.into(),
            empty_keys: pb::EmptyKeys::Skip.into(),
            carry_columns: Vec::new(),
            output: output.into(),
            user_groups: String::new(),
            request_id: String::new(),
            // The mode's default: rr22 for intersections, ecdh for sizes.
            protocol: pb::PsiProtocol::Unspecified.into(),
            preview_first_row: 0,
            preview_last_row: 0,
            mpc_query: String::new(),
            mpc_columns: Vec::new(),
            join: pb::JoinKind::Unspecified.into(),
            payload_columns: Vec::new(),
            mpc_triples: pb::MpcTriples::Unspecified.into(),
            fl: None,
        }
    }

    /// A further provider, as a real deployment adds one: user `user` (role provider) owning
    /// party `party`, an API token for it, its party's registration token, and a worker of
    /// its own started with this cluster's worker arguments. Returns the worker and the token.
    pub async fn add_provider(&self, party: &str, user: &str) -> (Party, String) {
        let mut admin = self.admin().await;
        let token = account_with_party(
            &mut admin,
            &self.url,
            &self.ca_pem,
            self.dir.path(),
            (user, "provider", party),
        )
        .await;
        let worker = Self::party_as(self.dir.path(), &self.url, party, None, &self.worker_args);
        (worker, token)
    }

    /// Waits (bounded) until the job ends and returns it as its buyer (USER) sees it.
    pub async fn wait(&self, job_id: &str) -> pb::Job {
        self.wait_as(job_id, Some(USER)).await
    }

    /// Waits (bounded) until the job ends and returns it as `caller` sees it: the buyer
    /// (`Some(USER)` or `Some(BUYER)`, its party), the provider (`Some(PROVIDER)`), or the
    /// operator (`None`), who is on neither side.
    pub async fn wait_as(&self, job_id: &str, caller: Option<&str>) -> pb::Job {
        let mut c = match caller {
            Some(USER | BUYER) => self.client().await,
            Some(PROVIDER) => self.provider_client().await,
            Some(other) => panic!("no token for {other}"),
            None => self.admin().await,
        };
        for _ in 0..1200 {
            let j = c
                .get_job(pb::JobRef {
                    job_id: job_id.into(),
                })
                .await
                .expect("get job")
                .into_inner();
            if matches!(
                j.state_text(),
                "succeeded" | "failed" | "refused" | "cancelled"
            ) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job_id} did not end within 120 s");
    }

    /// Asserts that the operator's audit chain, checkpoints, ledger and re-derived records
    /// verify (`VerifyAudit` as the operator).
    pub async fn assert_audit_verifies(&self) {
        let v = self
            .admin()
            .await
            .verify_audit(pb::ListRequest {})
            .await
            .expect("audit")
            .into_inner();
        assert!(v.ok, "{v:?}");
    }

    pub async fn remaining(&self, licence: &str) -> Option<u64> {
        let l = self
            .admin()
            .await
            .get_licence(pb::LicenceRef {
                licence_id: licence.into(),
            })
            .await
            .expect("licence")
            .into_inner();
        let v: serde_json::Value = serde_json::from_str(&l.policy_json).expect("policy json");
        v["useScenes"][0]["remainingCounts"].as_u64()
    }
}

/// Creates the provider's and the buyer's users, parties, API tokens and registration tokens
/// (written to `ROOT/<party>.registration`) with the admin token; returns the provider's and
/// the buyer's API tokens.
fn accounts(url: &str, ca_pem: &str, admin_token: &str, root: &Path) -> (String, String) {
    // On a thread of its own: the caller may already run inside a runtime.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(create_accounts(url, ca_pem, admin_token, root))
            })
            .join()
            .expect("accounts set up")
    })
}

async fn create_accounts(
    url: &str,
    ca_pem: &str,
    admin_token: &str,
    root: &Path,
) -> (String, String) {
    let as_user = |t: &str| TokenHeader::new(t).expect("ascii token");
    {
        let mut admin = connect_to(url, ca_pem, as_user(admin_token)).await;
        let mut tokens = Vec::new();
        for account in [
            (PROVIDER_USER, "provider", PROVIDER),
            (USER, "buyer", BUYER),
        ] {
            tokens.push(account_with_party(&mut admin, url, ca_pem, root, account).await);
        }
        let buyer = tokens.pop().expect("buyer");
        let provider = tokens.pop().expect("provider");
        (provider, buyer)
    }
}

/// Creates `(user, roles, party)` with the admin client — the user, its party, an API token —
/// and writes the party's registration token to `ROOT/<party>.registration`; returns the API
/// token.
async fn account_with_party(
    admin: &mut Client,
    url: &str,
    ca_pem: &str,
    root: &Path,
    (user, roles, party): (&str, &str, &str),
) -> String {
    admin
        .create_user(pb::CreateUserRequest {
            user_id: user.into(),
            roles: roles.into(),
        })
        .await
        .expect("create user");
    admin
        .create_party(pb::CreatePartyRequest {
            party_id: party.into(),
            owner_user_id: user.into(),
        })
        .await
        .expect("create party");
    let t = admin
        .create_token(pb::CreateTokenRequest {
            user_id: user.into(),
            label: "e2e".into(),
            ttl_ms: 0,
        })
        .await
        .expect("create token")
        .into_inner()
        .secret_token;
    let reg = connect_to(url, ca_pem, TokenHeader::new(&t).expect("ascii token"))
        .await
        .issue_registration_token(pb::RegistrationTokenRequest {
            party_id: party.into(),
            ttl_ms: 0,
        })
        .await
        .expect("registration token")
        .into_inner()
        .secret_token;
    std::fs::write(registration_token_file(root, party), reg).expect("write token");
    t
}

/// Where the harness keeps `party`'s registration token.
pub fn registration_token_file(root: &Path, party: &str) -> PathBuf {
    root.join(format!("{party}.registration"))
}

/// Deterministic keys: `n` keys `{tag}-{i}` style, from a seed.
pub fn keys(tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{tag}{i:08}")).collect()
}

/// Whether the transfers of `job` (every job's when `None`) are only holds that were all
/// voided: no money moved.
pub fn holds_only_voided(transfers: &[pb::Transfer], job: Option<&str>) -> bool {
    let of_job: Vec<&pb::Transfer> = transfers
        .iter()
        .filter(|t| !t.job_id.is_empty() && job.is_none_or(|j| t.job_id == j))
        .collect();
    let voided: std::collections::HashSet<&str> = of_job
        .iter()
        .filter(|t| t.kind == "void_pending")
        .map(|t| t.pending_id.as_str())
        .collect();
    of_job.iter().all(|t| match t.kind.as_str() {
        "pending" => voided.contains(t.transfer_id.as_str()),
        "void_pending" => true,
        _ => false,
    })
}

/// The cash balance of USER.
pub async fn cash(c: &Cluster) -> i64 {
    c.client()
        .await
        .list_balances(pb::ListRequest {})
        .await
        .expect("balances")
        .into_inner()
        .balances
        .into_iter()
        .find(|b| b.account == format!("customer:{USER}:cash"))
        .map_or(0, |b| b.balance_micros)
}

/// A result file as a standard CSV reader sees it: header, then records.
pub fn read_csv(path: &std::path::Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).expect("result file");
    let header = r
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    let rows = r
        .records()
        .map(|rec| rec.expect("record").iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The package directory at run time (cargo sets it for every test it runs), so that a test
/// binary built in another checkout of the same target directory reads this checkout's files;
/// the build-time path otherwise.
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}

/// Every file under `dir`, recursively (none if it cannot be read).
pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
