//! Test harness: runs the real `tessera` binary as separate processes (operator, workers) on
//! loopback ports in a temporary directory, and kills them when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tessera_proto::v1 as pb;
use tessera_proto::v1::operator_client::OperatorClient;
use tonic::transport::Channel;

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

/// An operator and a provider and a buyer worker.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub operator: Proc,
    pub provider: Party,
    pub buyer: Party,
}

pub const PROVIDER: &str = "prov";
pub const BUYER: &str = "buy";
pub const USER: &str = "u1";

impl Cluster {
    pub fn start(heartbeat_timeout_ms: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("operator");
        let timeout = heartbeat_timeout_ms.to_string();
        let operator = Proc::start(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--heartbeat-timeout-ms",
            &timeout,
        ]);
        let url = operator
            .first_line
            .trim()
            .strip_prefix("operator listening on ")
            .expect("operator banner")
            .to_string();
        let provider = Self::party(dir.path(), &url, PROVIDER);
        let buyer = Self::party(dir.path(), &url, BUYER);
        Cluster {
            dir,
            url,
            operator,
            provider,
            buyer,
        }
    }

    /// Kills the operator and starts it again on the same address and data directory.
    pub fn restart_operator(&mut self) {
        self.operator.kill();
        let data = self.dir.path().join("operator");
        let listen = self.url.trim_start_matches("http://").to_string();
        self.operator = Proc::start(&[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().expect("utf8"),
        ]);
    }

    /// Kills the buyer's worker (SIGKILL) and starts another at once on the same
    /// directories: under the same worker id when `same_id` (a restart), else under a new one.
    pub fn replace_buyer(&mut self, same_id: bool) {
        self.buyer.proc.kill();
        let id = same_id.then(|| self.buyer.worker_id.clone());
        self.buyer = Self::party_as(self.dir.path(), &self.url, BUYER, id.as_deref());
    }

    fn party(root: &Path, url: &str, name: &str) -> Party {
        Self::party_as(root, url, name, None)
    }

    /// A worker process for party `name`, under `worker_id` when given.
    fn party_as(root: &Path, url: &str, name: &str, worker_id: Option<&str>) -> Party {
        let datasets = root.join(name).join("datasets");
        let outputs = root.join(name).join("outputs");
        std::fs::create_dir_all(&datasets).expect("mkdir");
        let id_args = worker_id.map(|id| ["--worker-id", id]);
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
            ]
            .into_iter()
            .chain(id_args.iter().flatten().copied())
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

    pub async fn client(&self) -> OperatorClient<Channel> {
        OperatorClient::connect(self.url.clone())
            .await
            .expect("connect operator")
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
        self.client()
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
        self.client()
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
                _ => 99,
            },
            key_case: pb::KeyCase::Preserve.into(),
            unicode_form: pb::UnicodeForm::None.into(),
            empty_keys: pb::EmptyKeys::Skip.into(),
            carry_columns: Vec::new(),
            output: output.into(),
            user_groups: String::new(),
            request_id: String::new(),
        }
    }

    /// Waits (bounded) until the job ends and returns it as its buyer (USER) sees it.
    pub async fn wait(&self, job_id: &str) -> pb::Job {
        self.wait_as(job_id, Some(USER)).await
    }

    /// Waits (bounded) until the job ends and returns it as `caller` (a user or party; `None`:
    /// anonymous) sees it.
    pub async fn wait_as(&self, job_id: &str, caller: Option<&str>) -> pb::Job {
        let mut c = self.client().await;
        for _ in 0..1200 {
            let j = c
                .get_job(as_caller(
                    pb::JobRef {
                        job_id: job_id.into(),
                    },
                    caller,
                ))
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

    pub async fn remaining(&self, licence: &str) -> Option<u64> {
        let l = self
            .client()
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

/// A request naming its caller in the `x-tessera-user` metadata (`None`: anonymous).
pub fn as_caller<T>(msg: T, caller: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(c) = caller {
        req.metadata_mut()
            .insert("x-tessera-user", c.parse().expect("ascii caller"));
    }
    req
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
