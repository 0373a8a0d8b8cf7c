//! `tessera bench mpc`: the two-party MPC engine (`tessera-mpc`) over gRPC on loopback, on
//! the workload of the SPU baseline (`../shared/peers/spu_mpc.py`): `x · y` elementwise
//! (`Session::mul`) and `Σ x · y` (`Session::dot`) for N fixed-point elements uniform in
//! [−1, 1), party 0 holding `x` and party 1 `y`; once with dealer triples (the dealer a third
//! task, over gRPC links of its own) and once dealer-free: Beaver triples from RLWE oblivious
//! linear evaluation (`--arith rlwe`, the default; the inner product then computed directly on
//! the shares, no triples) or from Gilboa's multiplication over SoftSpoken OT (`--arith
//! gilboa`; the inner product is then `mul` and a local sum). Each figure is the slower party's
//! wall time of the operation, triple generation included (and the dealer's expansion and
//! transfer); the input sharing and the dealer-free source's one-time setup (base OTs, RLWE
//! key exchange) are not in it (the latter is printed as `ot_setup_s`). Results are revealed
//! afterwards and checked against the clear computation.
//!
//! With the dealer, it also trains a logistic regression (`tessera_mpc::lr`) on `--lr-rows`
//! (default 10^5) synthetic rows of 20 standard normal features, 10 held by each party, labels
//! at party 1, for `--lr-epochs` (default 1) epochs of mini-batches of 1,000 rows (learning rate
//! 0.5, λ = 0.001), the model revealed to party 0: `lr_s` is the slower party's wall time of
//! the whole `train` call (sharing the features and labels, every step with the dealer's
//! triples, the reveal). The model's AUC on 10^4 held-out rows is printed beside that of the
//! clear f64 model trained identically (`lr_auc`, `lr_auc_clear`); they must agree within
//! 0.01.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_core::Link;
use tessera_mpc::triples::run_dealer;
use tessera_mpc::{
    ArithMethod, DealerClient, FixedPoint, OtTriples, Party, Session, Shares, TripleSource,
};
use tessera_worker::link::{GrpcLink, loopback_pair};

/// Arguments of `tessera bench mpc`.
#[derive(Debug, clap::Args)]
pub struct MpcArgs {
    /// Elements per vector (1 ..= 16,777,216).
    #[arg(long, default_value_t = 1_000_000,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=16_777_216), |v| v as usize))]
    n: usize,
    /// Fractional bits of the fixed-point encoding, 1 ..= 24 (SPU's default for FM64 is 18).
    /// Past 24 the products of the benchmark's inputs make SecureML truncation's failure
    /// probability (about |x| / 2^64 per element, x at 2^(2f)) show at 10^6 elements.
    #[arg(long, default_value_t = 18,
          value_parser = clap::value_parser!(u32).range(1..=24))]
    frac_bits: u32,
    /// Which triple sources: both, dealer or ot.
    #[arg(long, default_value = "both", value_parser = ["both", "dealer", "ot"])]
    source: String,
    /// How the dealer-free source makes Beaver triples (for mul, mulsum and --lr-source ot):
    /// rlwe (oblivious linear evaluation over RLWE) or gilboa (Gilboa's multiplication over
    /// SoftSpoken OT).
    #[arg(long, default_value = "rlwe", value_parser = ["rlwe", "gilboa"])]
    arith: String,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// Data seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Rows of the logistic-regression benchmark (20 features; 0 skips it).
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=500_000), |v| v as usize))]
    lr_rows: usize,
    /// Epochs of the logistic-regression benchmark (1 ..= 100).
    #[arg(long, default_value_t = 1,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=100), |v| v as usize))]
    lr_epochs: usize,
    /// Triple sources of the logistic-regression benchmark: dealer (as `job mpc --triples
    /// dealer` trains), ot (as `--triples ot`; slow: try --lr-rows 10000) or both.
    #[arg(long, default_value = "dealer", value_parser = ["both", "dealer", "ot"])]
    lr_source: String,
}

/// What one party measured.
#[derive(Debug, Default, Clone, Copy)]
struct PartyFigures {
    setup_s: f64,
    mul_s: f64,
    mulsum_s: f64,
    mul_bytes: u64,
    mulsum_bytes: u64,
}

/// The figures of one source, both parties combined, and the check.
#[derive(Debug, Default)]
struct SourceFigures {
    setup_s: f64,
    mul_s: f64,
    mulsum_s: f64,
    mul_bytes: u64,
    mulsum_bytes: u64,
    mul_max_err: f64,
    mul_wrong: usize,
    mulsum_err: f64,
    ok: bool,
}

const IDLE: Duration = Duration::from_secs(600);

mod lr_bench;

async fn pair() -> anyhow::Result<(GrpcLink, GrpcLink, tokio::task::JoinHandle<()>)> {
    Ok(loopback_pair(tessera_core::limits::FRAME_BYTES_MAX, IDLE).await?)
}

/// One party: shares the inputs, then times `mul` and `mulsum`; returns its figures and its
/// shares of both results.
async fn party(
    party: Party,
    link: GrpcLink,
    dealer: Result<GrpcLink, ArithMethod>,
    fx: FixedPoint,
    values: Arc<Vec<f64>>,
    n: usize,
    seed: u64,
) -> anyhow::Result<(PartyFigures, Vec<f64>, f64, GrpcLink)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut fig = PartyFigures::default();
    let source = match dealer {
        Ok(d) => TripleSource::Dealer(DealerClient::new(party, Box::new(d))),
        Err(method) => {
            let t0 = Instant::now();
            let o = OtTriples::setup_with(party, &link, &mut rng, method).await?;
            fig.setup_s = t0.elapsed().as_secs_f64();
            TripleSource::Ot(Box::new(o))
        }
    };
    let mut s = Session::new(party, &link, fx, source, rng);
    let own = |p: Party| (p == party).then_some(&values[..]);
    let x = s.input(Party::P0, own(Party::P0), n).await?;
    let y = s.input(Party::P1, own(Party::P1), n).await?;
    let barrier = Shares::from_words(vec![0]);

    s.reveal(&barrier).await?;
    let b0 = link.stats().bytes_sent;
    let t0 = Instant::now();
    let z = s.mul(&x, &y).await?;
    fig.mul_s = t0.elapsed().as_secs_f64();
    fig.mul_bytes = link.stats().bytes_sent - b0;

    s.reveal(&barrier).await?;
    let b0 = link.stats().bytes_sent;
    let t0 = Instant::now();
    let dot = s.dot(&x, &y).await?;
    fig.mulsum_s = t0.elapsed().as_secs_f64();
    fig.mulsum_bytes = link.stats().bytes_sent - b0;

    let z = s.reveal_fixed(&z).await?;
    let dot = s.reveal_fixed(&dot).await?;
    drop(s);
    // The link is handed back and dropped only when both parties are done: a gRPC link
    // dropped at once could cancel its last frames before the peer has read them.
    Ok((fig, z, dot.first().copied().unwrap_or(f64::NAN), link))
}

async fn run_source(
    dealer: bool,
    method: ArithMethod,
    fx: FixedPoint,
    x: Arc<Vec<f64>>,
    y: Arc<Vec<f64>>,
    seed: u64,
) -> anyhow::Result<SourceFigures> {
    let n = x.len();
    let (l0, l1, server) = pair().await?;
    let mut servers = vec![server];
    let (mut d_links, mut dealer_task) = ((Err(method), Err(method)), None);
    if dealer {
        let (p0, d0, s0) = pair().await?;
        let (p1, d1, s1) = pair().await?;
        servers.extend([s0, s1]);
        d_links = (Ok(p0), Ok(p1));
        dealer_task = Some(tokio::spawn(async move {
            let mut rng = ChaCha20Rng::from_entropy();
            let r = run_dealer(&d0, &d1, &mut rng).await;
            (r, d0.stats().bytes_sent + d1.stats().bytes_sent)
        }));
    }
    let a = tokio::spawn(party(Party::P0, l0, d_links.0, fx, x.clone(), n, seed ^ 1));
    let b = tokio::spawn(party(Party::P1, l1, d_links.1, fx, y.clone(), n, seed ^ 2));
    let (ra, rb) = (a.await?, b.await?);
    let (ra, rb) = (ra.context("party 0")?, rb.context("party 1")?);
    let mut dealer_bytes = 0;
    if let Some(t) = dealer_task {
        let (r, bytes) = t.await?;
        r.context("dealer")?;
        dealer_bytes = bytes;
    }
    drop((ra.3, rb.3));
    for s in servers {
        s.abort();
    }
    let (fa, fb) = (ra.0, rb.0);
    // Tolerances: inputs rounded to half an ulp each, one truncation (one ulp).
    let ulp = fx.ulp();
    let mut f = SourceFigures {
        setup_s: fa.setup_s.max(fb.setup_s),
        mul_s: fa.mul_s.max(fb.mul_s),
        mulsum_s: fa.mulsum_s.max(fb.mulsum_s),
        // The dealer's traffic (seeds and corrections) is counted with `mul` and `mulsum`
        // in proportion: both ask for n triples.
        mul_bytes: fa.mul_bytes + fb.mul_bytes + dealer_bytes / 2,
        mulsum_bytes: fa.mulsum_bytes + fb.mulsum_bytes + dealer_bytes / 2,
        ..Default::default()
    };
    let mut dot = 0.0;
    for ((xi, yi), zi) in x.iter().zip(y.iter()).zip(&ra.1) {
        let e = (zi - xi * yi).abs();
        f.mul_max_err = f.mul_max_err.max(e);
        if e > (xi.abs() + yi.abs() + 2.0) * ulp {
            f.mul_wrong += 1;
        }
        dot += xi * yi;
    }
    f.mulsum_err = (ra.2 - dot).abs();
    f.ok = f.mul_wrong == 0 && f.mulsum_err <= (n as f64 + 2.0) * ulp && ra.1 == rb.1;
    Ok(f)
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: MpcArgs) -> anyhow::Result<()> {
    let fx = FixedPoint::new(a.frac_bits)?;
    let mut rng = ChaCha20Rng::seed_from_u64(a.seed);
    let x: Arc<Vec<f64>> = Arc::new((0..a.n).map(|_| rng.gen_range(-1.0..1.0)).collect());
    let y: Arc<Vec<f64>> = Arc::new((0..a.n).map(|_| rng.gen_range(-1.0..1.0)).collect());
    let method = match a.arith.as_str() {
        "gilboa" => ArithMethod::Gilboa,
        _ => ArithMethod::Rlwe,
    };
    let dealer = if a.source != "ot" {
        Some(run_source(true, method, fx, x.clone(), y.clone(), a.seed).await?)
    } else {
        None
    };
    let ot = if a.source != "dealer" {
        Some(run_source(false, method, fx, x, y, a.seed).await?)
    } else {
        None
    };
    let lr = if a.lr_source != "ot" && a.lr_rows > 0 {
        Some(lr_bench::run(fx, a.lr_rows, a.lr_epochs, a.seed, Ok(())).await?)
    } else {
        None
    };
    let lr_ot = if a.lr_source != "dealer" && a.lr_rows > 0 {
        Some(lr_bench::run(fx, a.lr_rows, a.lr_epochs, a.seed, Err(method)).await?)
    } else {
        None
    };
    let ok = dealer.as_ref().is_none_or(|d| d.ok)
        && ot.as_ref().is_none_or(|d| d.ok)
        && lr.as_ref().is_none_or(|l| l.ok)
        && lr_ot.as_ref().is_none_or(|l| l.ok);
    let mut out = serde_json::json!({
        "engine": "tessera-mpc additive sharing over Z_2^64",
        "transport": "grpc-loopback",
        "n": a.n,
        "frac_bits": a.frac_bits,
        "ot_arith": a.arith,
        "ok": ok,
        "peak_rss_mb": tessera_worker::usage::peak_rss_kb() as f64 / 1024.0,
    });
    for (name, f) in [("dealer", &dealer), ("ot", &ot)] {
        let Some(f) = f else { continue };
        let obj = serde_json::json!({
            format!("{name}_mul_s"): f.mul_s,
            format!("{name}_mulsum_s"): f.mulsum_s,
            format!("{name}_mul_bytes"): f.mul_bytes,
            format!("{name}_mulsum_bytes"): f.mulsum_bytes,
            format!("{name}_mul_max_abs_err"): f.mul_max_err,
            format!("{name}_mul_wrong"): f.mul_wrong,
            format!("{name}_mulsum_abs_err"): f.mulsum_err,
        });
        if let (Some(o), Some(add)) = (out.as_object_mut(), obj.as_object()) {
            o.extend(add.clone());
            if name == "ot" {
                o.insert("ot_setup_s".into(), f.setup_s.into());
            }
        }
    }
    for (prefix, l) in [("lr", &lr), ("lr_ot", &lr_ot)] {
        let (Some(l), Some(o)) = (l, out.as_object_mut()) else {
            continue;
        };
        o.extend([
            ("lr_rows".to_string(), a.lr_rows.into()),
            ("lr_features".to_string(), lr_bench::FEATURES.into()),
            ("lr_epochs".to_string(), a.lr_epochs.into()),
            ("lr_batch_rows".to_string(), lr_bench::BATCH_ROWS.into()),
            (format!("{prefix}_s"), l.train_s.into()),
            (format!("{prefix}_bytes"), l.bytes.into()),
            (format!("{prefix}_auc"), l.auc.into()),
            (format!("{prefix}_auc_clear"), l.auc_clear.into()),
        ]);
    }
    if a.json {
        println!("{out}");
    } else {
        for (name, f) in [("dealer", &dealer), ("ot", &ot)] {
            let Some(f) = f else { continue };
            println!(
                "mpc {name} n={} f={} mul={:.3}s mulsum={:.3}s setup={:.3}s sent(mul)={:.1}MiB \
                 max_err(mul)={:.2e} wrong={} err(mulsum)={:.2e} ok={}",
                a.n,
                a.frac_bits,
                f.mul_s,
                f.mulsum_s,
                f.setup_s,
                f.mul_bytes as f64 / 1048576.0,
                f.mul_max_err,
                f.mul_wrong,
                f.mulsum_err,
                f.ok
            );
        }
    }
    for (name, l) in [("dealer", &lr), ("ot", &lr_ot)] {
        let (Some(l), false) = (l, a.json) else {
            continue;
        };
        println!(
            "mpc lr {name} rows={} features={} epochs={} batch={} f={} train={:.3}s \
             sent={:.1}MiB auc={:.4} auc_clear={:.4} ok={}",
            a.lr_rows,
            lr_bench::FEATURES,
            a.lr_epochs,
            lr_bench::BATCH_ROWS,
            a.frac_bits,
            l.train_s,
            l.bytes as f64 / 1048576.0,
            l.auc,
            l.auc_clear,
            l.ok
        );
    }
    anyhow::ensure!(ok, "an MPC result does not match the clear computation");
    Ok(())
}
