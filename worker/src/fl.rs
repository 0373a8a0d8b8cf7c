//! An `fl` task (issue "Federated learning with secure aggregation that survives dropouts"):
//! FedAvg across several providers' workers, every average one SecAgg+ round, the model to
//! the buyer's worker only (`tessera_fl::federation`).
//!
//! * A **provider's task** (role `sender`) reads the features and the label its signed spec
//!   names from its own table (CSV or Parquet, `tessera_fl::data`), dials the aggregator's
//!   worker over the peer link (mutual TLS: the certificate must name the aggregator the
//!   ticket names) and answers the run: the moments round if the job standardises, then
//!   every round it is sampled for. Before its first unmasking shares leave — the first
//!   moment the aggregator can learn a sum that includes its data — it records the job's
//!   delivery with the operator (the release gate); if that cannot be recorded it stops.
//! * The **aggregator's task** (role `receiver`, on the buyer's worker) accepts one link per
//!   provider seat its spec lists (each checked against the seat's party and worker), runs
//!   the aggregator, and writes the model as CSV (never replacing a file). A provider that
//!   never connects or goes away is a dropout (see the federation's rules); the run fails
//!   only when too few remain.
//!
//! # What each party learns
//!
//! The crate `tessera_fl`'s threat model, with the aggregator the buyer's worker: the buyer
//! learns each round's global model (so the final one) and, if the job standardises, every
//! feature's global mean and standard deviation and the total row count; a provider learns
//! the global model of the rounds it is sampled for and the standardisation. Neither sees
//! another provider's rows, update or row count. Semi-honest aggregator; up to `t − 1`
//! colluding providers.
//!
//! # The model file (the buyer's result)
//!
//! `parameter,value` rows (values as Rust prints an `f64`, which reads back exactly):
//! with standardisation `mean:<feature>` and `scale:<feature>` per feature (apply
//! `(x − mean) / scale` before the model); logistic regression `weight:<feature>` per feature
//! and `bias` (`P(label = 1) = σ(Σ weight · x + bias)`); an MLP `w1:<unit>:<feature>`,
//! `b1:<unit>`, `w2:<unit>`, `b2` (`σ(Σ_u w2_u · relu(Σ_f w1_{u,f} · x_f + b1_u) + b2)`); under
//! DP `epsilon` and `delta` (the run's `(ε, δ)` towards whoever sees the models).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tessera_core::{FlSpec, Link, LinkError, LinkStats, TaskRole, TaskSpec};
use tessera_fl::data::{DataSpec, Standardisation, read_dataset};
use tessera_fl::federation::{
    FederationConfig, FederationOutcome, ReleaseGate, config_of, run_aggregator, run_provider,
};
use tessera_fl::transport::{AggregatorTransport, Inbound};
use tessera_fl::{ClientId, TrainError};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::exec::{
    DeliverySink, ExecEnv, TaskError, TaskOutcome, dataset_path, fresh_result_path, open_link,
};
use crate::link::GrpcLink;

/// Progress phase of the training rounds (`done` of `rounds`).
pub const PHASE_ROUND: &str = "round";
/// Progress phase of the dropouts (the aggregator's): sampled providers whose update missed a
/// round's sum (`done`) of those sampled so far (`total`).
pub const PHASE_DROPOUTS: &str = "dropouts";

/// Runs an `fl` task of either role.
pub(crate) async fn run(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let Some(fl) = &spec.fl else {
        return Err(TaskError::Ticket("an fl task without its training".into()));
    };
    let config = config_of(fl, &spec.job_id)
        .map_err(|e| TaskError::Ticket(format!("the task's training: {e}")))?;
    match spec.role {
        TaskRole::Sender => provider(env, spec, fl, &config, progress, delivery).await,
        TaskRole::Receiver => aggregator(env, spec, fl, &config, progress).await,
    }
}

/// The job's delivery point, asked once by the provider before its first unmasking shares.
struct DeliveryGate<'a> {
    sink: &'a dyn DeliverySink,
    rows_in: u64,
}

#[async_trait]
impl ReleaseGate for DeliveryGate<'_> {
    async fn release(&self) -> bool {
        self.sink.delivered(self.rows_in).await
    }
}

fn train_error(e: TrainError, role: TaskRole) -> TaskError {
    match e {
        TrainError::Data(d) => TaskError::Input(d.to_string()),
        TrainError::Link(l) => TaskError::Link(l.to_string()),
        TrainError::Protocol(m) => TaskError::Peer(m),
        TrainError::Released => TaskError::Internal(e.to_string()),
        // A provider's own data (its rows past the job's bound, sums too large to encode).
        TrainError::Config(_) if role == TaskRole::Sender => TaskError::Input(e.to_string()),
        // A diverged local update: the job's settings, not the provider's data; it drops out.
        TrainError::NonFinite(_) if role == TaskRole::Sender => TaskError::Internal(e.to_string()),
        // The aggregator: too many providers gone, or a run that cannot go on.
        e => TaskError::Peer(e.to_string()),
    }
}

async fn provider(
    env: &ExecEnv,
    spec: &TaskSpec,
    fl: &FlSpec,
    config: &FederationConfig,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    if fl.index.is_none_or(|i| i >= fl.providers) {
        return Err(TaskError::Ticket(
            "an fl provider task without its index among the providers".into(),
        ));
    }
    let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
    let data_spec = DataSpec {
        features: fl.features.clone(),
        label: fl.label.clone(),
        rows_max: usize::try_from(fl.rows_max).unwrap_or(usize::MAX),
        standardisation: Standardisation::None,
    };
    progress.report("read", 0, 0);
    let data = tokio::task::spawn_blocking(move || read_dataset(&path, &data_spec))
        .await
        .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
        .map_err(|e| TaskError::Input(e.to_string()))?;
    let rows_in = data.rows() as u64;
    progress.report("read", rows_in, rows_in);
    let link = open_link(env, spec).await?;
    let gate = DeliveryGate {
        sink: delivery,
        rows_in,
    };
    let rounds = u64::from(fl.rounds);
    let reporter = progress.clone();
    let mut on_round = move |r: u32| reporter.report(PHASE_ROUND, u64::from(r) + 1, rounds);
    progress.report(PHASE_ROUND, 0, rounds);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_entropy();
    let outcome = run_provider(&link, config, data, &gate, &mut rng, &mut on_round)
        .await
        .map_err(|e| train_error(e, TaskRole::Sender))?;
    progress.report(PHASE_ROUND, rounds, rounds);
    tracing::info!(
        job = %spec.job_id,
        rounds_joined = outcome.rounds_joined,
        rounds = outcome.rounds_run,
        "fl provider finished"
    );
    Ok(TaskOutcome {
        rows_in,
        link: link.stats(),
        ..TaskOutcome::default()
    })
}

async fn aggregator(
    env: &ExecEnv,
    spec: &TaskSpec,
    fl: &FlSpec,
    config: &FederationConfig,
    progress: Arc<dyn tessera_psi::Progress>,
) -> Result<TaskOutcome, TaskError> {
    if fl.seats.len() != fl.providers as usize {
        return Err(TaskError::Ticket(format!(
            "an fl aggregator task with {} seats for {} providers",
            fl.seats.len(),
            fl.providers
        )));
    }
    let out_path = fresh_result_path(&env.output_dir, &spec.output)?;
    // One link per seat, each from the worker the seat names; a seat nobody takes within
    // the connect timeout is a provider gone before the run.
    let mut accepts = JoinSet::new();
    for (i, seat) in fl.seats.iter().enumerate() {
        let expected = match &env.tls {
            Some(_) => Some(
                tessera_pki::PeerIdentity::new(&seat.party, &seat.worker_id).map_err(|e| {
                    TaskError::Ticket(format!("seat {i} names no valid worker: {e}"))
                })?,
            ),
            None => None,
        };
        let hub = env.hub.clone();
        let session = seat.session_id.clone();
        let timeout = env.connect_timeout;
        accepts.spawn(async move {
            (
                i,
                hub.accept_from(&session, timeout, expected.as_ref()).await,
            )
        });
    }
    let mut links: Vec<Option<GrpcLink>> = (0..fl.seats.len()).map(|_| None).collect();
    while let Some(joined) = accepts.join_next().await {
        let (i, link) = joined.map_err(|e| TaskError::Internal(format!("accept task: {e}")))?;
        match link {
            Ok(l) => links[i] = Some(l),
            Err(e) => {
                tracing::warn!(job = %spec.job_id, seat = i, error = %e, "an fl provider did not connect")
            }
        }
    }
    let transport = PeerAggregator::new(links, env.idle_timeout);
    let rounds = u64::from(fl.rounds);
    let reporter = progress.clone();
    let (mut dropped_so_far, mut sampled_so_far) = (0u64, 0u64);
    let mut on_round = move |r: &tessera_fl::federation::RoundSummary| {
        dropped_so_far += r.dropped as u64;
        sampled_so_far += r.report.sampled as u64;
        reporter.report(PHASE_ROUND, u64::from(r.report.round) + 1, rounds);
        // Providers whose update missed a round's sum, of those sampled so far.
        reporter.report(PHASE_DROPOUTS, dropped_so_far, sampled_so_far);
    };
    progress.report(PHASE_ROUND, 0, rounds);
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_entropy();
    let result = run_aggregator(&transport, config, &mut rng, &mut on_round).await;
    let stats = transport.stats();
    transport.close().await;
    let outcome = result.map_err(|e| train_error(e, TaskRole::Receiver))?;
    let dropped: usize = outcome.rounds.iter().map(|r| r.dropped).sum();
    tracing::info!(
        job = %spec.job_id,
        rounds = outcome.rounds.len(),
        dropped,
        gone = ?outcome.gone,
        "fl aggregation finished"
    );
    let (header, rows) = model_table(fl, &outcome)?;
    let written = crate::mpc::write_table(out_path, header, rows).await?;
    Ok(TaskOutcome {
        rows_in: 0,
        result_size: Some(written.rows),
        result_location: spec.output.clone(),
        result_file: Some(written),
        link: stats,
        dropouts: dropped as u64,
        round_dropouts: outcome
            .rounds
            .iter()
            .map(|r| u32::try_from(r.dropped).unwrap_or(u32::MAX))
            .collect(),
        ..TaskOutcome::default()
    })
}

/// The model file's rows (see the module docs).
pub(crate) fn model_table(
    fl: &FlSpec,
    outcome: &FederationOutcome,
) -> Result<(Vec<String>, Vec<Vec<String>>), TaskError> {
    let mut rows = Vec::new();
    let row = |name: String, v: f64| vec![name, v.to_string()];
    if let Some(Standardisation::Given { mean, scale }) = &outcome.standardisation {
        for (f, m) in fl.features.iter().zip(mean) {
            rows.push(row(format!("mean:{f}"), *m));
        }
        for (f, s) in fl.features.iter().zip(scale) {
            rows.push(row(format!("scale:{f}"), *s));
        }
    }
    let flat = outcome.model.to_flat();
    let d = fl.features.len();
    match fl.model {
        tessera_core::FlModel::Logistic => {
            if flat.len() != d + 1 {
                return Err(TaskError::Internal("the model's width".into()));
            }
            for (f, w) in fl.features.iter().zip(&flat) {
                rows.push(row(format!("weight:{f}"), *w));
            }
            rows.push(row("bias".into(), flat[d]));
        }
        tessera_core::FlModel::Mlp { hidden } => {
            let h = hidden as usize;
            if flat.len() != h * d + 2 * h + 1 {
                return Err(TaskError::Internal("the model's width".into()));
            }
            let (w1, rest) = flat.split_at(h * d);
            let (b1, rest) = rest.split_at(h);
            let (w2, b2) = rest.split_at(h);
            for u in 0..h {
                for (j, f) in fl.features.iter().enumerate() {
                    rows.push(row(format!("w1:{u}:{f}"), w1[u * d + j]));
                }
            }
            for (u, b) in b1.iter().enumerate() {
                rows.push(row(format!("b1:{u}"), *b));
            }
            for (u, w) in w2.iter().enumerate() {
                rows.push(row(format!("w2:{u}"), *w));
            }
            rows.push(row("b2".into(), b2[0]));
        }
    }
    if let (Some((eps, _)), Some(dp)) = (outcome.epsilon, fl.dp) {
        rows.push(row("epsilon".into(), eps));
        rows.push(row("delta".into(), dp.delta));
    }
    Ok((vec!["parameter".into(), "value".into()], rows))
}

/// The aggregator's transport over one peer link per provider (`None`: it never connected,
/// reported gone first). A reader task per link forwards its frames, then `Gone` when the
/// link ends; a stage with no frame for `stage_timeout` closes with `Deadline`.
pub(crate) struct PeerAggregator {
    links: Vec<Option<Arc<GrpcLink>>>,
    inbound: Mutex<mpsc::Receiver<Inbound>>,
    readers: Mutex<JoinSet<()>>,
    stage_timeout: Duration,
    frame_bytes_max: usize,
}

impl PeerAggregator {
    pub(crate) fn new(links: Vec<Option<GrpcLink>>, stage_timeout: Duration) -> Self {
        let links: Vec<Option<Arc<GrpcLink>>> =
            links.into_iter().map(|l| l.map(Arc::new)).collect();
        let (tx, rx) = mpsc::channel(4 * links.len().max(1));
        let mut readers = JoinSet::new();
        let mut frame_bytes_max = tessera_core::limits::FRAME_BYTES_MAX;
        for (i, link) in links.iter().enumerate() {
            let from = ClientId(i as u32);
            let tx = tx.clone();
            match link {
                None => {
                    // Never connected: gone before the run.
                    readers.spawn(async move {
                        let _ = tx.send(Inbound::Gone(from)).await;
                    });
                }
                Some(l) => {
                    frame_bytes_max = frame_bytes_max.min(l.frame_bytes_max());
                    let l = l.clone();
                    readers.spawn(async move {
                        loop {
                            match l.recv().await {
                                Ok(frame) => {
                                    if tx.send(Inbound::Frame { from, frame }).await.is_err() {
                                        return;
                                    }
                                }
                                Err(_) => {
                                    let _ = tx.send(Inbound::Gone(from)).await;
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        }
        PeerAggregator {
            links,
            inbound: Mutex::new(rx),
            readers: Mutex::new(readers),
            stage_timeout,
            frame_bytes_max,
        }
    }

    /// Stops the readers (the links close when the last reference goes).
    pub(crate) async fn close(&self) {
        self.readers.lock().await.shutdown().await;
    }
}

#[async_trait]
impl AggregatorTransport for PeerAggregator {
    async fn send(&self, to: ClientId, frame: Bytes) -> Result<(), LinkError> {
        match self.links.get(to.0 as usize) {
            Some(Some(l)) => l.send(frame).await,
            _ => Err(LinkError::PeerGone(format!(
                "provider {to} is not connected"
            ))),
        }
    }

    async fn recv(&self) -> Result<Inbound, LinkError> {
        let mut rx = self.inbound.lock().await;
        match tokio::time::timeout(self.stage_timeout, rx.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(LinkError::PeerGone(
                "every provider's link has ended".into(),
            )),
            Err(_) => Ok(Inbound::Deadline),
        }
    }

    fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    fn stats(&self) -> LinkStats {
        let mut s = LinkStats::default();
        for l in self.links.iter().flatten() {
            let t = l.stats();
            s.bytes_sent += t.bytes_sent;
            s.bytes_received += t.bytes_received;
            s.frames_sent += t.frames_sent;
            s.frames_received += t.frames_received;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tessera_core::{EmptyKeys, FlModel, FlSeat, KeyCase, PsiMode, PsiProtocol, UnicodeForm};

    const FEATURES: [&str; 3] = ["a", "b", "c"];

    /// Rows `(a, b, c, y)` with `P(y = 1) = σ(1.5a − 2b + 0.5c + 0.2)`.
    fn rows(n: usize, rng: &mut ChaCha20Rng) -> Vec<[f64; 4]> {
        (0..n)
            .map(|_| {
                let x: [f64; 3] = [
                    rng.gen_range(-2.0..2.0),
                    rng.gen_range(-2.0..2.0),
                    rng.gen_range(-2.0..2.0),
                ];
                let z = 1.5 * x[0] - 2.0 * x[1] + 0.5 * x[2] + 0.2;
                let y = f64::from(rng.gen_bool(1.0 / (1.0 + (-z).exp())));
                [x[0], x[1], x[2], y]
            })
            .collect()
    }

    fn csv(rows: &[[f64; 4]]) -> String {
        let mut s = String::from("id,a,b,c,y\n");
        for (i, r) in rows.iter().enumerate() {
            s.push_str(&format!("r{i},{},{},{},{}\n", r[0], r[1], r[2], r[3]));
        }
        s
    }

    struct Counting(AtomicU32);

    #[async_trait]
    impl DeliverySink for Counting {
        async fn delivered(&self, _rows_in: u64) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    fn env(dir: &std::path::Path, hub: crate::link::PeerHub) -> ExecEnv {
        for d in ["datasets", "outputs", "work"] {
            std::fs::create_dir_all(dir.join(d)).expect("dir");
        }
        ExecEnv {
            dataset_dir: dir.join("datasets"),
            output_dir: dir.join("outputs"),
            work_dir: dir.join("work"),
            bucket_rows: 1 << 20,
            hub,
            frame_bytes_max: tessera_core::limits::FRAME_BYTES_MAX,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            tls: None,
            tee: None,
            dealer: None,
        }
    }

    fn spec(role: TaskRole, fl: FlSpec, peer_addr: &str, session: &str) -> TaskSpec {
        TaskSpec {
            job_id: "job-fl-test".into(),
            task_id: format!("task-{session}"),
            scene: "fl".into(),
            role,
            mode: PsiMode::Intersection,
            protocol: PsiProtocol::Rr22,
            dataset_location: "train.csv".into(),
            key_columns: vec![],
            key_case: KeyCase::Preserve,
            unicode_form: UnicodeForm::None,
            empty_keys: EmptyKeys::Skip,
            carry_columns: vec![],
            dial_peer: role == TaskRole::Sender,
            peer_addr: peer_addr.into(),
            session_id: session.into(),
            peer_party: String::new(),
            peer_worker_id: String::new(),
            output: if role == TaskRole::Receiver {
                "model.csv".into()
            } else {
                String::new()
            },
            preview: None,
            licence: None,
            mpc: None,
            tee: None,
            fl: Some(fl),
            join: None,
        }
    }

    /// The model file as `name → value`.
    fn read_model(path: &std::path::Path) -> std::collections::HashMap<String, f64> {
        let text = std::fs::read_to_string(path).expect("model file");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("parameter,value"));
        lines
            .map(|l| {
                let (k, v) = l.split_once(',').expect("two cells");
                (k.to_string(), v.parse().expect("a number"))
            })
            .collect()
    }

    /// Three provider workers and the buyer's aggregator over real gRPC peer links on
    /// loopback (plain TCP here; the e2e tests run them over mutual TLS): the model file's
    /// logistic regression classifies held-out rows as well as one trained on the union;
    /// each provider records the delivery once. A fourth seat nobody takes is a dropout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_provider_workers_train_a_model_only_the_aggregator_writes() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let parts: Vec<Vec<[f64; 4]>> = [900, 1200, 700]
            .iter()
            .map(|&n| rows(n, &mut rng))
            .collect();
        let test = rows(2000, &mut rng);
        let hub = crate::link::PeerHub::new(
            tessera_core::limits::FRAME_BYTES_MAX,
            Duration::from_secs(30),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(crate::link::serve_peer(hub.clone(), listener));
        let root = tempfile::tempdir().expect("tempdir");
        let base = FlSpec {
            model: FlModel::Logistic,
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            label: "y".into(),
            rounds: 10,
            epochs: 1,
            batch_size: 16,
            learning_rate: 0.1,
            sample_fraction: 1.0,
            threshold: 2,
            neighbours: None,
            standardise: true,
            dp: None,
            rows_max: 100_000,
            providers: 4,
            seats: vec![],
            index: None,
        };
        let seats: Vec<FlSeat> = (0..4)
            .map(|i| FlSeat {
                session_id: format!("fl-session-{i}"),
                party: format!("provider{i}"),
                worker_id: format!("w{i}"),
            })
            .collect();
        let agg_env = env(&root.path().join("buyer"), hub.clone());
        let agg_spec = spec(
            TaskRole::Receiver,
            FlSpec {
                seats: seats.clone(),
                ..base.clone()
            },
            "",
            "unused",
        );
        let sink = Arc::new(Counting(AtomicU32::new(0)));
        let mut providers = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let dir = root.path().join(format!("p{i}"));
            let e = env(
                &dir,
                crate::link::PeerHub::new(1 << 20, Duration::from_secs(30)),
            );
            std::fs::write(e.dataset_dir.join("train.csv"), csv(part)).expect("write");
            let s = spec(
                TaskRole::Sender,
                FlSpec {
                    index: Some(i as u32),
                    ..base.clone()
                },
                &addr,
                &seats[i].session_id,
            );
            let sink = sink.clone();
            providers.push(tokio::spawn(async move {
                run(&e, &s, Arc::new(tessera_psi::NoProgress), sink.as_ref()).await
            }));
        }
        let agg_sink = Counting(AtomicU32::new(0));
        let out = run(
            &agg_env,
            &agg_spec,
            Arc::new(tessera_psi::NoProgress),
            &agg_sink,
        )
        .await
        .expect("aggregator");
        for p in providers {
            let o = p.await.expect("join").expect("provider");
            assert!(o.rows_in >= 700 && o.link.bytes_sent > 0);
            assert!(o.result_file.is_none(), "providers write nothing");
        }
        server.abort();
        assert_eq!(
            sink.0.load(Ordering::SeqCst),
            3,
            "each provider recorded the delivery once"
        );
        assert_eq!(agg_sink.0.load(Ordering::SeqCst), 0);
        assert_eq!(
            out.result_size,
            Some(3 * 2 + 4),
            "3 means, 3 scales, 3 weights and a bias"
        );
        assert!(out.link.bytes_received > 0);
        let m = read_model(&agg_env.output_dir.join("model.csv"));
        // Apply the file as documented to the held-out rows.
        let predict = |r: &[f64; 4]| {
            let z: f64 = FEATURES
                .iter()
                .enumerate()
                .map(|(j, f)| {
                    m[&format!("weight:{f}")] * (r[j] - m[&format!("mean:{f}")])
                        / m[&format!("scale:{f}")]
                })
                .sum::<f64>()
                + m["bias"];
            f64::from(z > 0.0)
        };
        let acc = |p: &dyn Fn(&[f64; 4]) -> f64| {
            test.iter().filter(|r| p(r) == r[3]).count() as f64 / test.len() as f64
        };
        let fed = acc(&predict);
        // The generating model's own accuracy bounds what any model reaches.
        let truth =
            acc(&|r: &[f64; 4]| f64::from(1.5 * r[0] - 2.0 * r[1] + 0.5 * r[2] + 0.2 > 0.0));
        assert!(
            fed >= truth - 0.015,
            "federated {fed:.4} vs the generating model's {truth:.4}"
        );
        // The file never replaces one: a second run with the same output refuses up front.
        let again = run(
            &agg_env,
            &agg_spec,
            Arc::new(tessera_psi::NoProgress),
            &agg_sink,
        )
        .await;
        assert!(matches!(again, Err(TaskError::Input(_))), "{again:?}");
    }
}
