//! FedAvg through SecAgg+ against clear computations: one round equals the `n_k`-weighted mean
//! of the clients' deltas (also with a dropout); three providers reach the test accuracy of
//! centralised training on the union of their rows (logistic regression and an MLP, also with
//! a dropout); DP runs report the accountant's ε. Seeded; no timing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use ndarray::{Array1, Array2, Axis};
use parquet::arrow::ArrowWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use tessera_fl::data::{DataSpec, Dataset, Standardisation, read_dataset};
use tessera_fl::dp::{self, DpConfig, RdpAccountant};
use tessera_fl::fedavg::{
    AggregationConfig, Dropouts, FedAvgConfig, LocalProvider, Sampling, TrainingReport,
    train_in_process,
};
use tessera_fl::model::{LocalTraining, Model, ModelKind};
use tessera_fl::moments::secure_moments_in_process;
use tessera_fl::{FlError, Modulus, TrainError};

/// Rows of the synthetic tables; features per row.
const ROWS: usize = 6000;
const FEATURES: usize = 10;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `ROWS × FEATURES` standard normal features; labels from `label(row, rng)`.
fn synthetic(seed: u64, label: impl Fn(&[f64], &mut ChaCha20Rng) -> f64) -> Dataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let x = Array2::from_shape_simple_fn((ROWS, FEATURES), || StandardNormal.sample(&mut rng));
    let y: Array1<f64> = x
        .axis_iter(Axis(0))
        .map(|r| label(r.as_slice().expect("row"), &mut rng))
        .collect();
    Dataset::new(x, y).expect("synthetic data")
}

/// A known logistic model: `P(y = 1) = σ(w·x + 0.3)`, `w_i = (−1)^i (0.4 + 0.15 i)`.
fn logistic_data() -> Dataset {
    synthetic(11, |r, rng| {
        let z: f64 = r
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { 1.0 } else { -1.0 } * (0.4 + 0.15 * i as f64) * v)
            .sum::<f64>()
            + 0.3;
        f64::from(rng.gen_bool(sigmoid(z)))
    })
}

/// A non-linear problem no linear model solves: `y = 1` iff `x0·x1 + 0.5·x2² > 0.5`, with 5%
/// of the labels flipped.
fn nonlinear_data() -> Dataset {
    synthetic(12, |r, rng| {
        let y = r[0] * r[1] + 0.5 * r[2] * r[2] > 0.5;
        f64::from(y != rng.gen_bool(0.05))
    })
}

/// 80% train split into three IID-ish providers of unequal sizes (1400, 1600, 1800 rows), 20%
/// test.
fn split(data: &Dataset, seed: u64) -> (Vec<Dataset>, Dataset) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..data.rows()).collect();
    rand::seq::SliceRandom::shuffle(idx.as_mut_slice(), &mut rng);
    let (train, test) = idx.split_at(4800);
    let (a, rest) = train.split_at(1400);
    let (b, c) = rest.split_at(1600);
    let parts = [a, b, c]
        .iter()
        .map(|p| data.select(p).expect("split"))
        .collect();
    (parts, data.select(test).expect("split"))
}

/// Writes provider `k`'s rows to its own file — CSV for even `k`, Parquet for odd — and reads
/// them back through the provider-side loader, as a provider's worker would.
fn through_files(parts: &[Dataset], dir: &Path) -> Vec<Dataset> {
    let names: Vec<String> = (0..FEATURES).map(|i| format!("x{i}")).collect();
    let spec = DataSpec {
        features: names.clone(),
        label: "label".into(),
        rows_max: 10_000,
        standardisation: Standardisation::None,
    };
    parts
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let path = if k % 2 == 0 {
                let path = dir.join(format!("provider{k}.csv"));
                let mut text = format!("id,{},label\n", names.join(","));
                for (r, (row, y)) in d.x().outer_iter().zip(d.y()).enumerate() {
                    let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
                    text.push_str(&format!("r{r},{},{y}\n", cells.join(",")));
                }
                std::fs::write(&path, text).expect("write csv");
                path
            } else {
                let path = dir.join(format!("provider{k}.parquet"));
                let mut columns: Vec<(String, ArrayRef)> = names
                    .iter()
                    .zip(d.x().columns())
                    .map(|(n, c)| {
                        (
                            n.clone(),
                            Arc::new(Float64Array::from(c.to_vec())) as ArrayRef,
                        )
                    })
                    .collect();
                let labels: Vec<i64> = d.y().iter().map(|&y| y as i64).collect();
                columns.push((
                    "label".into(),
                    Arc::new(Int64Array::from(labels)) as ArrayRef,
                ));
                let batch = RecordBatch::try_from_iter(columns).expect("batch");
                let file = std::fs::File::create(&path).expect("create");
                let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
                w.write(&batch).expect("write");
                w.close().expect("close");
                path
            };
            let read = read_dataset(&path, &spec).expect("provider table");
            assert_eq!(&read, d, "provider {k}: the file holds the same rows");
            read
        })
        .collect()
}

fn providers(parts: &[Dataset]) -> Vec<LocalProvider> {
    parts
        .iter()
        .enumerate()
        .map(|(i, d)| LocalProvider {
            data: d.clone(),
            rng: ChaCha20Rng::seed_from_u64(100 + i as u64),
        })
        .collect()
}

fn config(model: ModelKind, rounds: u32, local: LocalTraining) -> FedAvgConfig {
    FedAvgConfig {
        model,
        rounds,
        local,
        sampling: Sampling::Fraction(1.0),
        aggregation: AggregationConfig::default(),
        dp: None,
        session_id: [7; 32],
    }
}

async fn federated(cfg: &FedAvgConfig, parts: &[Dataset], drops: &Dropouts) -> TrainingReport {
    let mut ps = providers(parts);
    let mut server_rng = ChaCha20Rng::seed_from_u64(1);
    train_in_process(cfg, &mut ps, &mut server_rng, drops)
        .await
        .expect("federated training")
}

/// Centralised baseline: the same model, initialisation RNG and SGD settings, trained on the
/// union of the providers' rows for `epochs` epochs.
fn centralised(model: ModelKind, parts: &[Dataset], local: LocalTraining, epochs: u32) -> Model {
    let refs: Vec<&Dataset> = parts.iter().collect();
    let union = Dataset::concat(&refs).expect("union");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut m = Model::new(model, FEATURES, &mut rng).expect("model");
    let cfg = LocalTraining { epochs, ..local };
    m.train(&union, &cfg, &mut rng)
        .expect("centralised training");
    m
}

/// Federated (through SecAgg+) vs centralised test accuracy; returns both.
async fn check_close(
    model: ModelKind,
    data: &Dataset,
    via_files: bool,
    rounds: u32,
    local: LocalTraining,
    drops: &Dropouts,
) -> (f64, f64) {
    let (mut parts, test) = split(data, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    if via_files {
        parts = through_files(&parts, dir.path());
    }
    let report = federated(&config(model, rounds, local), &parts, drops).await;
    let fed = report.model.accuracy(&test).expect("accuracy");
    let central = centralised(model, &parts, local, rounds * local.epochs)
        .accuracy(&test)
        .expect("accuracy");
    println!(
        "{model:?}: test accuracy federated {fed:.4} (loss {:.6}), centralised {central:.4}, drops {drops:?}",
        report.model.loss(&test).expect("loss")
    );
    assert!(
        (fed - central).abs() <= 0.01,
        "{model:?}: federated {fed:.4} vs centralised {central:.4}"
    );
    for (r, rep) in report.rounds.iter().enumerate() {
        let dropped = drops
            .iter()
            .filter(|(round, _)| *round as usize == r)
            .count();
        assert_eq!(rep.survivors, 3 - dropped, "round {r}");
    }
    (fed, central)
}

const LR_LOCAL: LocalTraining = LocalTraining {
    epochs: 1,
    batch_size: 32,
    learning_rate: 0.1,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logistic_regression_federated_matches_centralised() {
    let (fed, _) = check_close(
        ModelKind::Logistic,
        &logistic_data(),
        true,
        15,
        LR_LOCAL,
        &Dropouts::new(),
    )
    .await;
    // The known model's labels are noisy; a trained model is far above chance.
    assert!(fed > 0.8, "{fed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logistic_regression_with_a_dropout_still_matches_centralised() {
    let drops: Dropouts = [(4, 1)].into_iter().collect();
    check_close(
        ModelKind::Logistic,
        &logistic_data(),
        false,
        15,
        LR_LOCAL,
        &drops,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_federated_matches_centralised_on_a_nonlinear_problem() {
    let local = LocalTraining {
        epochs: 2,
        batch_size: 32,
        learning_rate: 0.05,
    };
    let data = nonlinear_data();
    let (fed, _) = check_close(
        ModelKind::Mlp { hidden: 32 },
        &data,
        false,
        30,
        local,
        &Dropouts::new(),
    )
    .await;
    // A linear model cannot do this well.
    let (parts, test) = split(&data, 5);
    let linear = centralised(ModelKind::Logistic, &parts, LR_LOCAL, 40)
        .accuracy(&test)
        .expect("accuracy");
    println!("linear baseline on the non-linear problem: {linear:.4}");
    assert!(fed > linear + 0.1, "MLP {fed} vs linear {linear}");
}

/// One round through SecAgg+ equals the FedAvg update computed here in the clear from the
/// same clients' RNGs (up to quantisation, ≤ 1e-6), over the clients that did not drop out:
/// without DP the `n_k`-weighted mean of the local deltas; with DP the plain mean of the
/// clipped deltas plus each client's noise.
async fn check_one_round(model: ModelKind, drops: Dropouts, dp: Option<DpConfig>) {
    let (parts, _) = split(&logistic_data(), 5);
    let cfg = FedAvgConfig {
        dp,
        ..config(model, 1, LR_LOCAL)
    };
    let threshold = cfg.aggregation.threshold;
    let global = Model::new(model, FEATURES, &mut ChaCha20Rng::seed_from_u64(1)).expect("model");
    let (mut sum, mut weight) = (vec![0.0; global.param_count()], 0.0);
    for (k, p) in providers(&parts).iter_mut().enumerate() {
        if drops.contains(&(0, k)) {
            continue;
        }
        let mut local = global.clone();
        local.train(&p.data, &LR_LOCAL, &mut p.rng).expect("train");
        let mut delta: Vec<f64> = local
            .to_flat()
            .iter()
            .zip(global.to_flat())
            .map(|(l, g)| l - g)
            .collect();
        let n = match &dp {
            Some(dp) => {
                dp::clip_l2(&mut delta, dp.clip_norm);
                dp::add_gaussian(&mut delta, dp.client_sigma(threshold), &mut p.rng)
                    .expect("noise");
                1.0
            }
            None => p.data.rows() as f64,
        };
        sum.iter_mut().zip(&delta).for_each(|(s, d)| *s += n * d);
        weight += n;
    }
    let expected: Vec<f64> = global
        .to_flat()
        .iter()
        .zip(&sum)
        .map(|(g, s)| g + s / weight)
        .collect();
    let report = federated(&cfg, &parts, &drops).await;
    let worst = report
        .model
        .to_flat()
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "{model:?} {drops:?} {dp:?}: off by {worst}");
    assert_eq!(report.rounds[0].survivors, 3 - drops.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_equals_the_clear_fedavg_update_of_the_survivors() {
    let dp = DpConfig {
        clip_norm: 0.05,
        noise_multiplier: 1.0,
        delta: 1e-5,
    };
    for model in [ModelKind::Logistic, ModelKind::Mlp { hidden: 4 }] {
        for drops in [Dropouts::new(), [(0, 1)].into_iter().collect()] {
            check_one_round(model, drops.clone(), None).await;
            check_one_round(model, drops, Some(dp)).await;
        }
    }
}

/// With DP the run reports the ε of `R` rounds of the Gaussian mechanism (no sampling
/// amplification claimed for fixed-fraction sampling), and a lightly noised run still learns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_fedavg_reports_the_accountants_epsilon() {
    let (parts, test) = split(&logistic_data(), 5);
    let dp = DpConfig {
        clip_norm: 1.0,
        noise_multiplier: 0.5,
        delta: 1e-5,
    };
    let rounds = 15;
    let cfg = FedAvgConfig {
        dp: Some(dp),
        ..config(ModelKind::Logistic, rounds, LR_LOCAL)
    };
    let report = federated(&cfg, &parts, &Dropouts::new()).await;
    let mut acc = RdpAccountant::default();
    acc.compose(1.0, 0.5, u64::from(rounds)).expect("compose");
    let expected = acc.epsilon(1e-5).expect("epsilon");
    let got = report.epsilon.expect("DP run reports ε");
    assert!(
        (got.0 - expected.0).abs() < 1e-9 && got.1 == expected.1,
        "{got:?} vs {expected:?}"
    );
    let accuracy = report.model.accuracy(&test).expect("accuracy");
    println!(
        "DP-FedAvg LR: z = 0.5, C = 1, {rounds} rounds: ε = {:.2} at δ = 1e-5 (order {}), test accuracy {accuracy:.4}",
        expected.0, expected.1
    );
    assert!(accuracy > 0.7, "{accuracy}");

    // Too narrow a quantiser range for the noise is refused up front.
    let narrow = FedAvgConfig {
        aggregation: AggregationConfig {
            clip_range: 2.0,
            ..AggregationConfig::default()
        },
        ..cfg
    };
    assert!(narrow.validate(3).is_err());
}

/// Poisson sampling: rounds with fewer sampled clients than `t` are skipped (the model does not
/// move), and the accountant composes the sampling probability once per aggregated round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_sampling_skips_thin_rounds_and_accounts_for_q() {
    let (parts, _) = split(&logistic_data(), 5);
    let q = 0.6;
    let dp = DpConfig {
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        delta: 1e-5,
    };
    let cfg = FedAvgConfig {
        sampling: Sampling::Poisson(q),
        dp: Some(dp),
        aggregation: AggregationConfig {
            clip_range: 8.0,
            ..AggregationConfig::default()
        },
        ..config(ModelKind::Logistic, 12, LR_LOCAL)
    };
    let report = federated(&cfg, &parts, &Dropouts::new()).await;
    let skipped = report.rounds.iter().filter(|r| r.skipped).count();
    for r in &report.rounds {
        assert_eq!(r.skipped, r.sampled < 2, "{r:?}");
        assert_eq!(r.survivors, if r.skipped { 0 } else { r.sampled }, "{r:?}");
    }
    assert!(
        skipped > 0 && skipped < 12,
        "seeded run skips some rounds: {skipped}"
    );
    let mut acc = RdpAccountant::default();
    acc.compose(q, 1.0, 12 - skipped as u64).expect("compose");
    let (want, order) = acc.epsilon(1e-5).expect("epsilon");
    let (got, got_order) = report.epsilon.expect("DP run reports ε");
    assert!(
        (got - want).abs() < 1e-9 && got_order == order,
        "{got} vs {want}"
    );
    println!(
        "Poisson q = {q}, z = 1, {} aggregated rounds: ε = {got:.3} at δ = 1e-5",
        12 - skipped
    );
}

/// Below `t` survivors the round's secure aggregation fails and training stops with the
/// engine's error; a configuration the ring or the data cannot hold is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_dropouts_and_bad_configurations_fail_typed() {
    let (parts, _) = split(&logistic_data(), 5);
    let cfg = config(ModelKind::Logistic, 3, LR_LOCAL);
    let drops: Dropouts = [(1, 0), (1, 2)].into_iter().collect();
    let mut ps = providers(&parts);
    let err = train_in_process(&cfg, &mut ps, &mut ChaCha20Rng::seed_from_u64(1), &drops)
        .await
        .expect_err("one survivor of three with t = 2");
    assert!(
        matches!(
            err,
            TrainError::SecAgg {
                round: 1,
                source: FlError::TooManyDropouts { .. }
            }
        ),
        "{err:?}"
    );
    let small_cap = FedAvgConfig {
        aggregation: AggregationConfig {
            weight_rows_max: 1000,
            ..AggregationConfig::default()
        },
        ..cfg.clone()
    };
    let mut ps = providers(&parts);
    let err = train_in_process(
        &small_cap,
        &mut ps,
        &mut ChaCha20Rng::seed_from_u64(1),
        &Dropouts::new(),
    )
    .await
    .expect_err("1400 rows over N_max = 1000");
    assert!(matches!(err, TrainError::Config(_)), "{err:?}");
    for bad in [
        FedAvgConfig {
            rounds: 0,
            ..cfg.clone()
        },
        FedAvgConfig {
            sampling: Sampling::Fraction(0.0),
            ..cfg.clone()
        },
        FedAvgConfig {
            aggregation: AggregationConfig {
                threshold: 4,
                ..AggregationConfig::default()
            },
            ..cfg.clone()
        },
        FedAvgConfig {
            aggregation: AggregationConfig {
                levels: 1 << 31,
                modulus: Modulus::Pow32,
                ..AggregationConfig::default()
            },
            ..cfg.clone()
        },
    ] {
        assert!(
            matches!(bad.validate(3), Err(TrainError::Config(_))),
            "{bad:?}"
        );
    }
}

/// The moments round through SecAgg+ gives the mean and standard deviation of the union of
/// the surviving providers' rows, computed here in the clear (≤ 1e-6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_moments_equal_the_clear_statistics_of_the_surviving_union() {
    let (parts, _) = split(&logistic_data(), 5);
    // Shift and stretch the features so that standardising matters: x' = (1 + i)·x + 3 − i.
    let parts: Vec<Dataset> = parts
        .iter()
        .map(|d| {
            let mut x = d.x().to_owned();
            for (i, mut col) in x.columns_mut().into_iter().enumerate() {
                col.mapv_inplace(|v| (1.0 + i as f64) * v + 3.0 - i as f64);
            }
            Dataset::new(x, d.y().to_owned()).expect("shifted")
        })
        .collect();
    for dropped in [BTreeSet::new(), BTreeSet::from([2usize])] {
        let survivors: Vec<&Dataset> = parts
            .iter()
            .enumerate()
            .filter(|(k, _)| !dropped.contains(k))
            .map(|(_, d)| d)
            .collect();
        let union = Dataset::concat(&survivors).expect("union");
        let n = union.rows() as f64;
        let mean: Vec<f64> = union
            .x()
            .columns()
            .into_iter()
            .map(|c| c.sum() / n)
            .collect();
        let sd: Vec<f64> = union
            .x()
            .columns()
            .into_iter()
            .zip(&mean)
            .map(|(c, m)| (c.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt())
            .collect();
        let mut ps = providers(&parts);
        let got =
            secure_moments_in_process(&[9; 32], &AggregationConfig::default(), &mut ps, &dropped)
                .await
                .expect("moments");
        let Standardisation::Given { mean: m, scale: s } = got else {
            panic!("no standardisation")
        };
        for i in 0..FEATURES {
            assert!(
                (m[i] - mean[i]).abs() < 1e-6,
                "mean {i}: {} vs {}",
                m[i],
                mean[i]
            );
            assert!((s[i] - sd[i]).abs() < 1e-6, "sd {i}: {} vs {}", s[i], sd[i]);
        }
        // Standardised with them, the union has mean 0 and standard deviation 1.
        let mut z = union.clone();
        z.standardise(&Standardisation::Given { mean: m, scale: s })
            .expect("standardise");
        for c in z.x().columns() {
            let mu = c.sum() / n;
            let var = c.iter().map(|v| v * v).sum::<f64>() / n - mu * mu;
            assert!(mu.abs() < 1e-6 && (var - 1.0).abs() < 1e-6, "{mu} {var}");
        }
    }
}
