//! Logistic-regression training under MPC against a clear f64 model trained identically
//! (same rows, batches, epochs, learning rate, regularisation and zero start): test AUC within
//! 0.01; the model reaches only the party named; shared models score; bad configurations and
//! data are typed errors.

mod common;

use common::{Src, both_raw};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_mpc::lr::{
    LrConfig, LrError, LrLayout, LrOwnData, Model, ModelOutput, predict_shared, train,
};
use tessera_mpc::{FixedPoint, MpcError, Party};

/// Synthetic vertically partitioned data: `n` rows, `d0 + d1` standard normal features,
/// labels from a logistic model with random weights.
struct Synthetic {
    /// Row-major `n × (d0 + d1)`.
    x: Vec<f64>,
    y: Vec<f64>,
    d0: usize,
    d1: usize,
}

impl Synthetic {
    fn new(seed: u64, n: usize, d0: usize, d1: usize) -> Self {
        let mut r = ChaCha20Rng::seed_from_u64(seed);
        let d = d0 + d1;
        let w: Vec<f64> = (0..d).map(|_| r.gen_range(-1.5..1.5)).collect();
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let row: Vec<f64> = (0..d)
                .map(|_| {
                    // Box–Muller.
                    let (u, v): (f64, f64) = (r.gen_range(1e-12..1.0), r.gen_range(0.0..1.0));
                    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
                })
                .collect();
            let z: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + 0.3;
            y.push(if r.gen_range(0.0..1.0) < sigma(z) {
                1.0
            } else {
                0.0
            });
            x.extend(row);
        }
        Synthetic { x, y, d0, d1 }
    }

    fn d(&self) -> usize {
        self.d0 + self.d1
    }

    /// Party `p`'s feature columns of rows `lo..hi`, row-major.
    fn own(&self, p: Party, lo: usize, hi: usize) -> Vec<f64> {
        let (from, to) = match p {
            Party::P0 => (0, self.d0),
            Party::P1 => (self.d0, self.d()),
        };
        (lo..hi)
            .flat_map(|i| self.x[i * self.d() + from..i * self.d() + to].to_vec())
            .collect()
    }
}

fn sigma(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The clear algorithm of `tessera_mpc::lr`: mini-batches in order, exact sigmoid.
fn clear_train(data: &Synthetic, rows: usize, cfg: &LrConfig) -> (Vec<f64>, f64) {
    let d = data.d();
    let mut w = vec![0.0; d + 1];
    for _ in 0..cfg.epochs {
        let mut start = 0;
        while start < rows {
            let end = (start + cfg.batch_rows).min(rows);
            let scale = cfg.learning_rate / (end - start) as f64;
            let mut grad = vec![0.0; d + 1];
            for i in start..end {
                let x = &data.x[i * d..(i + 1) * d];
                let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + w[d];
                let e = (sigma(z) - data.y[i]) * scale;
                for j in 0..d {
                    grad[j] += x[j] * e;
                }
                grad[d] += e;
            }
            for j in 0..=d {
                let reg = if j < d {
                    cfg.learning_rate * cfg.l2 * w[j]
                } else {
                    0.0
                };
                w[j] -= grad[j] + reg;
            }
            start = end;
        }
    }
    let b = w.pop().unwrap_or(0.0);
    (w, b)
}

/// The area under the ROC curve (Mann–Whitney, ties counted as one half).
fn auc(scores: &[f64], labels: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|y| **y == 1.0).count() as f64;
    let neg = labels.len() as f64 - pos;
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, y)| **y == 1.0)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

fn scores(data: &Synthetic, lo: usize, hi: usize, w: &[f64], b: f64) -> Vec<f64> {
    let d = data.d();
    (lo..hi)
        .map(|i| {
            data.x[i * d..(i + 1) * d]
                .iter()
                .zip(w)
                .map(|(a, c)| a * c)
                .sum::<f64>()
                + b
        })
        .collect()
}

#[test]
fn the_auc_helper_matches_hand_computed_values() {
    assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
    assert_eq!(auc(&[1.0, 2.0], &[0.0, 1.0]), 1.0);
    assert_eq!(auc(&[0.5, 0.5], &[0.0, 1.0]), 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trained_model_matches_the_clear_model_in_test_auc() {
    let (n, train_rows) = (2000usize, 1500usize);
    let data = std::sync::Arc::new(Synthetic::new(21, n, 5, 5));
    let cfg = LrConfig {
        epochs: 10,
        batch_rows: 100,
        learning_rate: 0.5,
        l2: 0.01,
    };
    let layout = LrLayout {
        rows: train_rows,
        features_p0: 5,
        features_p1: 5,
        label_owner: Party::P1,
    };
    let dd = data.clone();
    let (m0, m1) = both_raw(
        Src::Dealer,
        22,
        FixedPoint::new(18).expect("fx"),
        move |s| {
            let dd = dd.clone();
            Box::pin(async move {
                let p = s.party();
                let features = dd.own(p, 0, train_rows);
                let labels = (p == Party::P1).then(|| &dd.y[..train_rows]);
                let own = LrOwnData {
                    features: &features,
                    labels,
                };
                train(s, &layout, &cfg, ModelOutput::RevealTo(Party::P0), &own).await
            })
        },
    )
    .await;
    assert!(matches!(m1.expect("party 1"), Model::Withheld));
    let Model::Revealed { weights, bias } = m0.expect("party 0") else {
        panic!("party 0 gets the model");
    };
    let (cw, cb) = clear_train(&data, train_rows, &cfg);
    let labels = &data.y[train_rows..];
    let auc_mpc = auc(&scores(&data, train_rows, n, &weights, bias), labels);
    let auc_clear = auc(&scores(&data, train_rows, n, &cw, cb), labels);
    eprintln!("test AUC: MPC {auc_mpc:.5}, clear {auc_clear:.5}");
    assert!(
        (auc_mpc - auc_clear).abs() <= 0.01,
        "AUC {auc_mpc} (MPC) against {auc_clear} (clear)"
    );
    assert!(auc_clear > 0.75, "the task is learnable: {auc_clear}");
    // The weights themselves are close (the sigmoid's approximation and truncation only).
    for (a, b) in weights.iter().chain([&bias]).zip(cw.iter().chain([&cb])) {
        assert!(
            (a - b).abs() < 0.05,
            "weights {weights:?} {bias} against {cw:?} {cb}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_model_scores_without_revealing_and_both_sources_agree() {
    let data = std::sync::Arc::new(Synthetic::new(31, 160, 2, 3));
    let cfg = LrConfig {
        epochs: 2,
        batch_rows: 40,
        learning_rate: 1.0,
        l2: 0.0,
    };
    let layout = LrLayout {
        rows: 120,
        features_p0: 2,
        features_p1: 3,
        label_owner: Party::P0,
    };
    let score_layout = LrLayout { rows: 40, ..layout };
    let (cw, cb) = clear_train(&data, 120, &cfg);
    let want: Vec<f64> = scores(&data, 120, 160, &cw, cb)
        .iter()
        .map(|z| sigma(*z))
        .collect();
    for src in [Src::Dealer, Src::Ot] {
        let dd = data.clone();
        let (r0, r1) = both_raw(src, 32, FixedPoint::new(18).expect("fx"), move |s| {
            let dd = dd.clone();
            Box::pin(async move {
                let p = s.party();
                let features = dd.own(p, 0, 120);
                let labels = (p == Party::P0).then(|| &dd.y[..120]);
                let own = LrOwnData {
                    features: &features,
                    labels,
                };
                let Model::Shared(w) = train(s, &layout, &cfg, ModelOutput::Shared, &own).await?
                else {
                    return Err(LrError::Data("not shared".into()));
                };
                let probs = predict_shared(s, &score_layout, &w, &dd.own(p, 120, 160)).await?;
                let probs = s.reveal_fixed(&probs).await?;
                let model = s.reveal_fixed(&w).await?;
                Ok((model, probs))
            })
        })
        .await;
        let (m0, p0) = r0.expect("party 0");
        let (m1, p1) = r1.expect("party 1");
        assert_eq!((&m0, &p0), (&m1, &p1));
        for (a, b) in m0.iter().zip(cw.iter().chain([&cb])) {
            assert!((a - b).abs() < 0.05, "{src:?}: {m0:?} against {cw:?} {cb}");
        }
        for (a, b) in p0.iter().zip(&want) {
            // The sigmoid's bound plus the model's difference (|Δz| ≤ 0.05 · Σ|x|, σ' ≤ 1/4).
            assert!((a - b).abs() < 0.1, "{src:?}: probability {a} against {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_and_data_are_typed_errors() {
    let layout = LrLayout {
        rows: 10,
        features_p0: 1,
        features_p1: 1,
        label_owner: Party::P1,
    };
    let good = LrConfig {
        epochs: 1,
        batch_rows: 5,
        learning_rate: 0.1,
        l2: 0.0,
    };
    type Case = (LrLayout, LrConfig, fn(&LrError) -> bool);
    let cases: Vec<Case> = vec![
        (LrLayout { rows: 0, ..layout }, good, |e| {
            matches!(e, LrError::Config(_))
        }),
        (
            layout,
            LrConfig {
                batch_rows: 0,
                ..good
            },
            |e| matches!(e, LrError::Config(_)),
        ),
        (
            layout,
            LrConfig {
                learning_rate: f64::NAN,
                ..good
            },
            |e| matches!(e, LrError::Config(_)),
        ),
        (layout, LrConfig { l2: -1.0, ..good }, |e| {
            matches!(e, LrError::Config(_))
        }),
    ];
    for (lay, cfg, ok) in cases {
        let (r0, r1) = both_raw(Src::Dealer, 40, FixedPoint::default(), move |s| {
            Box::pin(async move {
                let f = vec![0.0; 10];
                let y = [0.0; 10];
                let own = LrOwnData {
                    features: &f,
                    labels: (s.party() == Party::P1).then_some(&y[..]),
                };
                train(s, &lay, &cfg, ModelOutput::Shared, &own)
                    .await
                    .map(|_| ())
            })
        })
        .await;
        assert!(r0.as_ref().is_err_and(ok), "{r0:?}");
        assert!(r1.as_ref().is_err_and(ok), "{r1:?}");
    }
    // Labels other than 0/1 at the owner: it refuses and aborts; the peer sees the abort.
    let (r0, r1) = both_raw(Src::Dealer, 41, FixedPoint::default(), move |s| {
        Box::pin(async move {
            let f = vec![0.5; 10];
            let y = [0.5; 10];
            let own = LrOwnData {
                features: &f,
                labels: (s.party() == Party::P1).then_some(&y[..]),
            };
            train(s, &layout, &good, ModelOutput::Shared, &own)
                .await
                .map(|_| ())
        })
    })
    .await;
    assert!(matches!(r1, Err(LrError::Data(_))), "{r1:?}");
    assert!(
        matches!(r0, Err(LrError::Mpc(MpcError::PeerAborted(0x22)))),
        "{r0:?}"
    );
    // Different configurations: both refuse.
    let (r0, r1) = both_raw(Src::Dealer, 42, FixedPoint::default(), move |s| {
        Box::pin(async move {
            let f = vec![0.5; 10];
            let y = [1.0; 10];
            let own = LrOwnData {
                features: &f,
                labels: (s.party() == Party::P1).then_some(&y[..]),
            };
            let cfg = if s.party() == Party::P0 {
                good
            } else {
                LrConfig { epochs: 3, ..good }
            };
            train(s, &layout, &cfg, ModelOutput::RevealTo(Party::P1), &own)
                .await
                .map(|_| ())
        })
    })
    .await;
    assert!(matches!(r0, Err(LrError::PlanMismatch)), "{r0:?}");
    assert!(matches!(r1, Err(LrError::PlanMismatch)), "{r1:?}");
}
