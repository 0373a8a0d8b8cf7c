//! The logistic-regression part of `tessera bench mpc`: `tessera_mpc::lr::train` on
//! synthetic vertically partitioned data over gRPC links on loopback, with dealer triples or
//! dealer-free ones (OT extension between the two parties, as `mpc` jobs run), timed, and the
//! model's held-out AUC against the clear model trained identically.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::Link;
use tessera_mpc::lr::{LrConfig, LrLayout, LrOwnData, Model, ModelOutput, train};
use tessera_mpc::triples::run_dealer;
use tessera_mpc::{ArithMethod, DealerClient, FixedPoint, OtTriples, Party, Session, TripleSource};
use tessera_worker::link::GrpcLink;

/// Features (half at each party).
pub const FEATURES: usize = 20;
/// Rows per mini-batch.
pub const BATCH_ROWS: usize = 1000;
/// Held-out rows for the AUC.
const TEST_ROWS: usize = 10_000;
const LEARNING_RATE: f64 = 0.5;
const L2: f64 = 0.001;

/// What the LR benchmark measured.
#[derive(Debug)]
pub struct LrFigures {
    /// The slower party's wall time of the OT setup, if any, and `train`.
    pub train_s: f64,
    /// Bytes both parties sent to each other (OT setup and `train`; not the dealer's).
    pub bytes: u64,
    /// Held-out AUC of the MPC model.
    pub auc: f64,
    /// Held-out AUC of the clear model.
    pub auc_clear: f64,
    /// Whether they agree within 0.01.
    pub ok: bool,
}

/// Synthetic rows: standard normal features, labels from a logistic model.
struct Data {
    x: Vec<f64>,
    y: Vec<f64>,
}

fn sigma(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn synthetic(seed: u64, rows: usize) -> Data {
    let mut r = ChaCha20Rng::seed_from_u64(seed);
    let w: Vec<f64> = (0..FEATURES).map(|_| r.gen_range(-1.0..1.0)).collect();
    let mut x = Vec::with_capacity(rows * FEATURES);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f64> = (0..FEATURES)
            .map(|_| {
                let (u, v): (f64, f64) = (r.gen_range(1e-12..1.0), r.gen_range(0.0..1.0));
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()).clamp(-8.0, 8.0)
            })
            .collect();
        let z: f64 = row.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + 0.2;
        y.push(if r.gen_range(0.0..1.0) < sigma(z) {
            1.0
        } else {
            0.0
        });
        x.extend(row);
    }
    Data { x, y }
}

fn own(d: &Data, p: Party, rows: usize) -> Vec<f64> {
    let half = FEATURES / 2;
    let from = if p == Party::P0 { 0 } else { half };
    (0..rows)
        .flat_map(|i| d.x[i * FEATURES + from..i * FEATURES + from + half].to_vec())
        .collect()
}

/// The same algorithm in f64 with the exact sigmoid (see `tessera_mpc::lr`).
fn clear_train(d: &Data, rows: usize, cfg: &LrConfig) -> Vec<f64> {
    let mut w = vec![0.0; FEATURES + 1];
    for _ in 0..cfg.epochs {
        let mut start = 0;
        while start < rows {
            let end = (start + cfg.batch_rows).min(rows);
            let scale = cfg.learning_rate / (end - start) as f64;
            let mut grad = [0.0; FEATURES + 1];
            for i in start..end {
                let x = &d.x[i * FEATURES..(i + 1) * FEATURES];
                let z = x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + w[FEATURES];
                let e = (sigma(z) - d.y[i]) * scale;
                for (g, v) in grad.iter_mut().zip(x) {
                    *g += v * e;
                }
                grad[FEATURES] += e;
            }
            for (j, g) in grad.iter().enumerate() {
                let reg = if j < FEATURES {
                    cfg.learning_rate * cfg.l2 * w[j]
                } else {
                    0.0
                };
                w[j] -= g + reg;
            }
            start = end;
        }
    }
    w
}

/// Mann–Whitney AUC of `w` (bias last) on the held-out rows.
fn auc(d: &Data, from: usize, w: &[f64]) -> f64 {
    let rows = d.y.len() - from;
    let mut scored: Vec<(f64, f64)> = (from..d.y.len())
        .map(|i| {
            let x = &d.x[i * FEATURES..(i + 1) * FEATURES];
            let z = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[FEATURES];
            (z, d.y[i])
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0.0, 0);
    while i < rows {
        let mut j = i;
        while j + 1 < rows && scored[j + 1].0 == scored[i].0 {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for s in &scored[i..=j] {
            if s.1 == 1.0 {
                rank_sum += r;
                pos += 1.0;
            }
        }
        i = j + 1;
    }
    let neg = rows as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

async fn party(
    p: Party,
    link: GrpcLink,
    dealer: Result<GrpcLink, ArithMethod>,
    fx: FixedPoint,
    data: Arc<Data>,
    (layout, cfg): (LrLayout, LrConfig),
    seed: u64,
) -> anyhow::Result<(f64, u64, Model, GrpcLink)> {
    let features = own(&data, p, layout.rows);
    let labels = (p == Party::P1).then(|| &data.y[..layout.rows]);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    let source = match dealer {
        Ok(dealer) => TripleSource::Dealer(DealerClient::new(p, Box::new(dealer))),
        Err(method) => TripleSource::Ot(Box::new(
            OtTriples::setup_with(p, &link, &mut rng, method).await?,
        )),
    };
    let mut s = Session::new(p, &link, fx, source, rng);
    let own = LrOwnData {
        features: &features,
        labels,
    };
    let model = train(
        &mut s,
        &layout,
        &cfg,
        ModelOutput::RevealTo(Party::P0),
        &own,
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes = link.stats().bytes_sent;
    drop(s);
    Ok((secs, bytes, model, link))
}

/// Trains on `rows` rows for `epochs` epochs with dealer triples (`Ok(())`) or dealer-free
/// ones made by the method given (their setup counted in the time and bytes) and checks the
/// held-out AUC.
pub async fn run(
    fx: FixedPoint,
    rows: usize,
    epochs: usize,
    seed: u64,
    dealer: Result<(), ArithMethod>,
) -> anyhow::Result<LrFigures> {
    let data = Arc::new(synthetic(seed ^ 0x1f, rows + TEST_ROWS));
    let layout = LrLayout {
        rows,
        features_p0: FEATURES / 2,
        features_p1: FEATURES / 2,
        label_owner: Party::P1,
    };
    let cfg = LrConfig {
        epochs,
        batch_rows: BATCH_ROWS,
        learning_rate: LEARNING_RATE,
        l2: L2,
    };
    let (l0, l1, s) = super::pair().await?;
    let mut servers = vec![s];
    let mut dealer_task = None;
    let (d0, d1) = match dealer {
        Err(method) => (Err(method), Err(method)),
        Ok(()) => {
            let (p0, e0, s0) = super::pair().await?;
            let (p1, e1, s1) = super::pair().await?;
            servers.extend([s0, s1]);
            dealer_task = Some(tokio::spawn(async move {
                let mut rng = ChaCha20Rng::from_entropy();
                run_dealer(&e0, &e1, &mut rng).await
            }));
            (Ok(p0), Ok(p1))
        }
    };
    let a = tokio::spawn(party(
        Party::P0,
        l0,
        d0,
        fx,
        data.clone(),
        (layout, cfg),
        seed ^ 3,
    ));
    let b = tokio::spawn(party(
        Party::P1,
        l1,
        d1,
        fx,
        data.clone(),
        (layout, cfg),
        seed ^ 4,
    ));
    let (ra, rb) = (a.await?, b.await?);
    let (ra, rb) = (ra.context("LR party 0")?, rb.context("LR party 1")?);
    if let Some(d) = dealer_task {
        d.await?.context("LR dealer")?;
    }
    drop((ra.3, rb.3));
    for srv in servers {
        srv.abort();
    }
    let Model::Revealed { mut weights, bias } = ra.2 else {
        anyhow::bail!("party 0 did not receive the model");
    };
    anyhow::ensure!(
        matches!(rb.2, Model::Withheld),
        "party 1 must not receive the model"
    );
    weights.push(bias);
    let clear = clear_train(&data, rows, &cfg);
    let (auc, auc_clear) = (auc(&data, rows, &weights), auc(&data, rows, &clear));
    Ok(LrFigures {
        train_s: ra.0.max(rb.0),
        bytes: ra.1 + rb.1,
        auc,
        auc_clear,
        ok: (auc - auc_clear).abs() <= 0.01,
    })
}
