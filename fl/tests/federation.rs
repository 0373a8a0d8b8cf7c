//! The FedAvg protocol between an aggregator and providers that only share links
//! (`tessera_fl::federation`): three providers reach the test accuracy of centralised training
//! on the union of their (standardised) rows; the global moments equal the clear ones; a
//! provider that goes away mid-run leaves the others training; too few providers fail the run
//! with a typed error; a provider refuses an aggregator that lowers the threshold, skips a
//! round or sends a model of the wrong width. Seeded; no timing.

use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use tessera_core::{Link, LinkError, LinkStats};
use tessera_fl::data::{Dataset, Standardisation};
use tessera_fl::fedavg::{AggregationConfig, FedAvgConfig, Sampling};
use tessera_fl::federation::{
    FederationConfig, FederationOutcome, Open, ProviderOutcome, ReleaseGate, RoundSummary,
    config_of, run_aggregator, run_provider,
};
use tessera_fl::model::{LocalTraining, Model, ModelKind};
use tessera_fl::transport::{AggregatorTransport, InProcessClient, in_process};
use tessera_fl::{ClientId, TrainError};

const FEATURES: usize = 6;
const FRAME_MAX: usize = 1 << 20;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `rows × FEATURES` features on different scales (`x_i = 10^(i/2)·z + 3i` for standard
/// normal `z`), labels from a logistic model of the standardised values.
fn data(rows: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let z = Array2::from_shape_simple_fn((rows, FEATURES), || StandardNormal.sample(&mut rng));
    let y: Array1<f64> = z
        .axis_iter(Axis(0))
        .map(|r| {
            let s: f64 = r
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 2 == 0 { 1.2 } else { -0.8 } * v)
                .sum::<f64>()
                + 0.4;
            f64::from(rng.gen_bool(sigmoid(s)))
        })
        .collect();
    let mut x = z;
    for (i, mut col) in x.columns_mut().into_iter().enumerate() {
        let scale = 10f64.powf(i as f64 / 2.0);
        col.mapv_inplace(|v| v * scale + 3.0 * i as f64);
    }
    Dataset::new(x, y).expect("data")
}

fn config(providers: u32, rounds: u32, threshold: u32) -> FederationConfig {
    FederationConfig {
        fedavg: FedAvgConfig {
            model: ModelKind::Logistic,
            rounds,
            local: LocalTraining {
                epochs: 1,
                batch_size: 32,
                learning_rate: 0.1,
            },
            sampling: Sampling::Fraction(1.0),
            aggregation: AggregationConfig {
                threshold,
                ..AggregationConfig::default()
            },
            dp: None,
            session_id: [9; 32],
        },
        providers,
        features: FEATURES,
        standardise: true,
    }
}

type ProviderTask = tokio::task::JoinHandle<Result<ProviderOutcome, TrainError>>;

/// A provider's link that goes away (the provider vanishes) when it is asked to send its
/// `silent_from`-th frame (1-based), if any.
struct DroppingLink {
    inner: std::sync::Mutex<Option<Arc<InProcessClient>>>,
    sent: std::sync::atomic::AtomicU32,
    silent_from: Option<u32>,
}

impl DroppingLink {
    fn new(l: InProcessClient, silent_from: Option<u32>) -> Self {
        DroppingLink {
            inner: std::sync::Mutex::new(Some(Arc::new(l))),
            sent: Default::default(),
            silent_from,
        }
    }
    fn get(&self) -> Result<Arc<InProcessClient>, LinkError> {
        self.inner
            .lock()
            .expect("test")
            .clone()
            .ok_or_else(|| LinkError::PeerGone("this provider left".into()))
    }
}

#[async_trait::async_trait]
impl Link for DroppingLink {
    async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if self.silent_from.is_some_and(|s| n >= s) {
            self.inner.lock().expect("test").take();
            return Err(LinkError::PeerGone("this provider left".into()));
        }
        self.get()?.send(frame).await
    }
    async fn recv(&self) -> Result<Bytes, LinkError> {
        self.get()?.recv().await
    }
    fn frame_bytes_max(&self) -> usize {
        FRAME_MAX
    }
    fn stats(&self) -> LinkStats {
        LinkStats::default()
    }
}

/// Spawns provider `k` over its link; `stop_after` drops its link after that round.
fn provider(
    link: DroppingLink,
    cfg: &FederationConfig,
    part: Dataset,
    k: u64,
    stop_after: Option<u32>,
) -> ProviderTask {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let mut rng = ChaCha20Rng::seed_from_u64(100 + k);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut on_round = move |r: u32| {
            let _ = tx.send(r);
        };
        let run = run_provider(&link, &cfg, part, &Open, &mut rng, &mut on_round);
        match stop_after {
            None => run.await,
            Some(last) => {
                tokio::select! {
                    r = run => r,
                    _ = async { while rx.recv().await != Some(last) {} } => {
                        Err(TrainError::Config(format!("provider {k} left after round {last}")))
                    }
                }
            }
        }
    })
}

async fn aggregate(
    agg: &dyn AggregatorTransport,
    cfg: &FederationConfig,
) -> (Result<FederationOutcome, TrainError>, Vec<RoundSummary>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut on_round = move |r: &RoundSummary| s.lock().expect("test").push(r.clone());
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let out = run_aggregator(agg, cfg, &mut rng, &mut on_round).await;
    let seen = seen.lock().expect("test").clone();
    (out, seen)
}

fn split(all: &Dataset) -> (Vec<Dataset>, Dataset) {
    let n = all.rows();
    let test: Vec<usize> = (0..n / 5).collect();
    let a: Vec<usize> = (n / 5..n / 2).collect();
    let b: Vec<usize> = (n / 2..3 * n / 4).collect();
    let c: Vec<usize> = (3 * n / 4..n).collect();
    let parts = [a, b, c]
        .iter()
        .map(|i| all.select(i).expect("split"))
        .collect();
    (parts, all.select(&test).expect("split"))
}

/// The clear global mean and population standard deviation of each feature of `parts`.
fn clear_moments(parts: &[Dataset]) -> (Vec<f64>, Vec<f64>) {
    let refs: Vec<&Dataset> = parts.iter().collect();
    let u = Dataset::concat(&refs).expect("union");
    let mean: Vec<f64> = u
        .x()
        .columns()
        .into_iter()
        .map(|c| c.mean().expect("test"))
        .collect();
    let sd = u
        .x()
        .columns()
        .into_iter()
        .zip(&mean)
        .map(|(c, m)| (c.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c.len() as f64).sqrt())
        .collect();
    (mean, sd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_providers_over_links_reach_centralised_accuracy() {
    let all = data(5000, 3);
    let (parts, mut test) = split(&all);
    let cfg = config(3, 12, 2);
    let (agg, links) = in_process(3, FRAME_MAX);
    let tasks: Vec<ProviderTask> = links
        .into_iter()
        .zip(parts.iter().cloned())
        .enumerate()
        .map(|(k, (l, p))| provider(DroppingLink::new(l, None), &cfg, p, k as u64, None))
        .collect();
    let (out, seen) = aggregate(&agg, &cfg).await;
    if out.is_err() {
        drop(agg);
        for t in tasks {
            eprintln!("provider: {:?}", t.await);
        }
        panic!("{out:?}");
    }
    let out = out.expect("federated run");
    for t in tasks {
        let p = t.await.expect("join").expect("provider");
        assert_eq!(
            p,
            ProviderOutcome {
                rounds_joined: 12,
                rounds_run: 12
            }
        );
    }
    assert_eq!(seen.len(), 12);
    assert!(
        seen.iter()
            .all(|r| r.report.survivors == 3 && r.dropped == 0)
    );
    assert!(out.gone.is_empty());
    // The moments round gave the clear global moments (fixed point, 2^-20).
    let (mean, sd) = clear_moments(&parts);
    let Some(Standardisation::Given {
        mean: got_mean,
        scale: got_sd,
    }) = &out.standardisation
    else {
        panic!("no standardisation: {:?}", out.standardisation)
    };
    for i in 0..FEATURES {
        assert!(
            (got_mean[i] - mean[i]).abs() <= 1e-6 * (1.0 + mean[i].abs()),
            "mean {i}"
        );
        assert!((got_sd[i] - sd[i]).abs() <= 1e-6 * (1.0 + sd[i]), "sd {i}");
    }
    // Centralised baseline on the standardised union, same SGD budget.
    let s = out.standardisation.clone().expect("test");
    let refs: Vec<&Dataset> = parts.iter().collect();
    let mut union = Dataset::concat(&refs).expect("test");
    union.standardise(&s).expect("test");
    test.standardise(&s).expect("test");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut central = Model::new(ModelKind::Logistic, FEATURES, &mut rng).expect("test");
    central
        .train(
            &union,
            &LocalTraining {
                epochs: 12,
                batch_size: 32,
                learning_rate: 0.1,
            },
            &mut rng,
        )
        .expect("test");
    let fed = out.model.accuracy(&test).expect("test");
    let cen = central.accuracy(&test).expect("test");
    println!("test accuracy federated {fed:.4}, centralised {cen:.4}");
    assert!(fed > 0.7, "the model learnt something: {fed}");
    assert!(
        (fed - cen).abs() <= 0.01,
        "federated {fed} vs centralised {cen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_leaves_mid_run_leaves_the_others_training() {
    let all = data(2000, 4);
    let (parts, _) = split(&all);
    let cfg = config(3, 5, 2);
    let (agg, links) = in_process(3, FRAME_MAX);
    let mut tasks = Vec::new();
    for (k, (l, p)) in links.into_iter().zip(parts.iter().cloned()).enumerate() {
        tasks.push(provider(
            DroppingLink::new(l, None),
            &cfg,
            p,
            k as u64,
            (k == 1).then_some(1),
        ));
    }
    let (out, seen) = aggregate(&agg, &cfg).await;
    let out = out.expect("the run survives one provider leaving");
    assert_eq!(out.gone, vec![1]);
    assert_eq!(seen.len(), 5);
    assert!(seen[..2].iter().all(|r| r.report.survivors == 3));
    // After round 1 the provider is gone: later rounds sample the two others.
    assert!(
        seen[2..]
            .iter()
            .all(|r| r.report.survivors == 2 && !r.report.skipped),
        "{seen:?}"
    );
    let results: Vec<_> = futures_join(tasks).await;
    assert!(results[1].is_err());
    assert_eq!(results[0].as_ref().expect("test").rounds_joined, 5);
    assert_eq!(results[2].as_ref().expect("test").rounds_joined, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_providers_fail_the_run_with_a_typed_error() {
    let all = data(1000, 5);
    let (parts, _) = split(&all);
    // t = 3 of 3. Provider 0 sends its hello, the moments round's four frames and round 0's
    // four, then round 1's keys and shares, and vanishes instead of sending its masked input:
    // round 1 cannot be unmasked from two.
    let cfg = config(3, 3, 3);
    let (agg, links) = in_process(3, FRAME_MAX);
    let mut tasks = Vec::new();
    for (k, (l, p)) in links.into_iter().zip(parts.iter().cloned()).enumerate() {
        let link = DroppingLink::new(l, (k == 0).then_some(12));
        tasks.push(provider(link, &cfg, p, k as u64, None));
    }
    let (out, seen) = aggregate(&agg, &cfg).await;
    assert_eq!(seen.len(), 1, "round 0 ran");
    assert!(
        matches!(&out, Err(TrainError::SecAgg { round: 1, .. })),
        "{:?}",
        out.map(|o| o.rounds)
    );
    drop(agg);
    let results = futures_join(tasks).await;
    assert!(
        results.iter().all(Result::is_err),
        "no provider finishes a failed run"
    );

    // Fewer than t providers joining at all is a configuration error.
    let (agg, mut links) = in_process(3, FRAME_MAX);
    links.truncate(1);
    let task = provider(
        DroppingLink::new(links.remove(0), None),
        &cfg,
        parts[0].clone(),
        0,
        None,
    );
    let (out, _) = aggregate(&agg, &cfg).await;
    assert!(
        matches!(&out, Err(TrainError::Config(m)) if m.contains("1 of 3 providers joined")),
        "{:?}",
        out.map(|o| o.rounds)
    );
    drop(agg);
    let _ = task.await;
}

async fn futures_join(tasks: Vec<ProviderTask>) -> Vec<Result<ProviderOutcome, TrainError>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

/// A hand-written aggregator frame: `[kind][u32…][f64…]`.
fn frame(kind: u8, words: &[u32], floats: &[f64]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    words.iter().for_each(|w| b.put_u32_le(*w));
    floats.iter().for_each(|f| b.put_f64_le(*f));
    b.freeze()
}

/// Runs one provider (no standardisation) against a scripted aggregator that sends `frames`
/// after the hello; returns the provider's result.
async fn against(frames: Vec<Bytes>) -> Result<ProviderOutcome, TrainError> {
    let mut cfg = config(3, 4, 2);
    cfg.standardise = false;
    let (agg, mut links) = in_process(1, FRAME_MAX);
    let link = links.remove(0);
    let part = data(100, 6);
    let mut run = tokio::spawn(async move {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        run_provider(&link, &cfg, part, &Open, &mut rng, &mut |_| {}).await
    });
    let hello = agg.recv().await.expect("hello");
    assert!(matches!(
        hello,
        tessera_fl::transport::Inbound::Frame { .. }
    ));
    for f in frames {
        if agg.send(ClientId(0), f).await.is_err() {
            break;
        }
    }
    // Give the provider the frames before the aggregator goes away.
    let r = tokio::time::timeout(std::time::Duration::from_millis(200), &mut run).await;
    drop(agg);
    match r {
        Ok(r) => r.expect("join"),
        Err(_) => run.await.expect("join"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refuses_an_aggregator_that_breaks_the_job() {
    let params = FEATURES + 1;
    let global = vec![0.0; params];
    // Round frame: round, id, clients, neighbours, threshold, params, global.
    let cases: Vec<(&str, Vec<Bytes>)> = vec![
        (
            "threshold lowered to 1",
            vec![frame(0x43, &[0, 0, 3, 3, 1, params as u32], &global)],
        ),
        (
            "more clients than providers",
            vec![frame(0x43, &[0, 0, 4, 4, 2, params as u32], &global)],
        ),
        (
            "a sparse graph the job does not use",
            vec![frame(0x43, &[0, 0, 3, 1, 2, params as u32], &global)],
        ),
        (
            "a model of the wrong width",
            vec![frame(0x43, &[0, 0, 3, 3, 2, 3], &[0.0; 3])],
        ),
        (
            "a round past the last",
            vec![frame(0x43, &[4, 0, 3, 3, 2, params as u32], &global)],
        ),
        (
            "a seat outside the round",
            vec![frame(0x43, &[0, 3, 3, 3, 2, params as u32], &global)],
        ),
        (
            "a non-finite parameter",
            vec![frame(
                0x43,
                &[0, 0, 3, 3, 2, params as u32],
                &[f64::INFINITY; FEATURES + 1],
            )],
        ),
        (
            "a moments frame the job did not ask for",
            vec![frame(0x41, &[0, 3, 3, 2], &[])],
        ),
        ("done too early", vec![frame(0x44, &[2], &[])]),
        ("an unknown kind", vec![frame(0x99, &[], &[])]),
        ("a truncated round", vec![frame(0x43, &[0, 0], &[])]),
    ];
    for (what, frames) in cases {
        let r = against(frames).await;
        assert!(matches!(r, Err(TrainError::Protocol(_))), "{what}: {r:?}");
    }
    // An aggregator that goes away is a link error, not a hang.
    let r = against(vec![]).await;
    assert!(matches!(r, Err(TrainError::Link(_))), "{r:?}");
}

/// Counts its calls and answers `open`.
struct CountingGate {
    calls: std::sync::atomic::AtomicU32,
    open: bool,
}

#[async_trait::async_trait]
impl ReleaseGate for CountingGate {
    async fn release(&self) -> bool {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.open
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_gate_is_asked_once_and_a_closed_one_stops_the_provider_before_unmasking() {
    let all = data(1500, 8);
    let (parts, _) = split(&all);
    let cfg = config(3, 3, 2);
    let (agg, links) = in_process(3, FRAME_MAX);
    let mut tasks = Vec::new();
    let mut gates = Vec::new();
    for (k, (l, p)) in links.into_iter().zip(parts.iter().cloned()).enumerate() {
        let gate = Arc::new(CountingGate {
            calls: Default::default(),
            open: k != 2,
        });
        gates.push(gate.clone());
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha20Rng::seed_from_u64(k as u64);
            run_provider(&l, &cfg, p, gate.as_ref(), &mut rng, &mut |_| {}).await
        }));
    }
    let (out, seen) = aggregate(&agg, &cfg).await;
    let out = out.expect("two providers carry the run");
    assert_eq!(out.gone, vec![2]);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.report.survivors == 2), "{seen:?}");
    let results = futures_join(tasks).await;
    assert!(
        matches!(results[2], Err(TrainError::Released)),
        "{:?}",
        results[2]
    );
    for (k, g) in gates.iter().enumerate() {
        assert_eq!(
            g.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "provider {k}'s gate"
        );
    }
}

#[test]
fn a_task_spec_gives_the_same_configuration_to_every_party() {
    let spec = tessera_core::FlSpec {
        model: tessera_core::FlModel::Mlp { hidden: 8 },
        features: vec!["a".into(), "b".into()],
        label: "y".into(),
        rounds: 5,
        epochs: 2,
        batch_size: 16,
        learning_rate: 0.05,
        sample_fraction: 1.0,
        threshold: 2,
        neighbours: None,
        standardise: true,
        dp: Some(tessera_core::FlDp {
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            delta: 1e-5,
        }),
        rows_max: 10_000,
        providers: 3,
        seats: vec![],
        index: Some(1),
    };
    let a = config_of(&spec, "job-1").expect("valid");
    assert_eq!(a, config_of(&spec, "job-1").expect("valid"));
    assert_ne!(
        a.fedavg.session_id,
        config_of(&spec, "job-2").expect("valid").fedavg.session_id
    );
    assert_eq!(a.features, 2);
    assert_eq!(a.fedavg.model, ModelKind::Mlp { hidden: 8 });
    // Under DP the quantiser's range leaves room for the noise (else validate refuses).
    assert!(a.fedavg.aggregation.clip_range >= 1.0 + 6.0 / 2f64.sqrt());
    for broken in [
        tessera_core::FlSpec {
            rounds: 0,
            ..spec.clone()
        },
        tessera_core::FlSpec {
            threshold: 4,
            ..spec.clone()
        },
        tessera_core::FlSpec {
            learning_rate: f64::NAN,
            ..spec.clone()
        },
        tessera_core::FlSpec {
            features: vec![],
            ..spec.clone()
        },
        tessera_core::FlSpec {
            sample_fraction: 0.0,
            ..spec.clone()
        },
    ] {
        assert!(
            matches!(config_of(&broken, "job-1"), Err(TrainError::Config(_))),
            "{broken:?}"
        );
    }
}
