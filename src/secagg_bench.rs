//! `tessera bench secagg`: one SecAgg+ round (`tessera-fl`) with N clients and vectors of
//! length L, a fraction of clients dropping out after sharing their keys, measured the way the
//! Flower SecAgg+ baseline (`../shared/peers/flower/secagg_bench.py`) measures itself, and
//! checked against the plain sum of the survivors' vectors.
//!
//! What runs: the client and server state machines of `tessera-fl` in this process, every
//! message passed as its encoded frame (as Flower round-trips each message through protobuf),
//! clients one after another, as in Flower's in-process grid. Data: client `i`'s vector is
//! `k_i / 2^18 − 8` (f32) with `k_i` uniform in `[0, 2^22)`, quantised with clip 8 and 2^22
//! levels (stochastic rounding, exact on these values), summed modulo 2^32 — Flower's
//! benchmark data and defaults. Dropouts: `round(d·N)` clients chosen from the seed finish
//! advertise-keys and share-keys, then never send a masked input (Flower's default stage,
//! `collect_masked_vectors`).
//!
//! Times (seconds, wall clock on this process):
//! * `server_s`: inside the server's state machine only — parsing and checking every client
//!   frame, forwarding shares, adding the masked inputs, Shamir reconstruction, key agreement
//!   for dropped clients' pairwise masks and the PRG expansion that removes the masks — like
//!   Flower's `server_s` (each stage's wall time minus the time inside client calls and
//!   protobuf round trips, minus the FedAvg strategy). Dequantisation of the mean is outside.
//! * `client_s`: the mean over surviving clients of the time inside that client's state
//!   machine over all stages, quantisation included, input generation excluded (Flower: time
//!   in `secaggplus_mod` minus `fit()`).
//! * `total_s`: wall time of the whole round, server and clients, input generation excluded.
//!
//! Both sides use the rayon pool (all cores) for the PRG expansion; Flower's numpy code runs on
//! one thread.
//!
//! One run beside Flower 1.42 (`run_all.sh` with `EXT_CMD`, N = 100, L = 10^6, REPEAT=1, on the
//! shared 2-core machine with about two thirds of it busy with other work during both):
//! server seconds, Flower → ours: k = 11: 3.29 → 0.157 (d = 0), 4.31 → 0.238 (d = 0.1);
//! k = 51: 31.6 → 0.190, 45.3 → 0.906; k = 100: 94.7 → 0.189, 132.6 → 1.40. Flower's
//! server time is mostly `combine_shares` (its Shamir reconstruction).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use tessera_fl::quant::{Quantiser, Rounding};
use tessera_fl::{Client, ClientId, Modulus, SecAggConfig, Server, ServerStep};

/// `tessera bench secagg` options.
#[derive(Debug, Args)]
pub struct SecaggArgs {
    /// Clients, N (2 ..= 10,000).
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// Elements per vector, L (1 ..= 16,777,216).
    #[arg(long, default_value_t = 100_000)]
    dim: u32,
    /// Fraction of clients that drop out after sharing their keys (0 ..= 1).
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// k: each client's share group including itself (Flower's num_shares as a count): the
    /// number of clients, or odd and smaller [default: the number of clients]
    #[arg(long)]
    neighbours: Option<u32>,
    /// t: shares needed to reconstruct a secret (2 ..= k) [default: max(round(k/2), 2)]
    #[arg(long)]
    threshold: Option<u32>,
    /// The ring: 32 (arithmetic mod 2^32, Flower's default) or 64.
    #[arg(long, default_value = "32", value_parser = ["32", "64"])]
    modulus: String,
    /// Seed of the data, the dropouts and the session.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

const LEVELS: u64 = 1 << 22;
const CLIP: f64 = 8.0;

/// Client `i`'s integers `k_i` (the vector before the `/ 2^18 − 8` map).
fn client_ints(seed: u64, i: u32, dim: u32) -> Vec<u64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (u64::from(i) << 32) ^ 0x5eca66);
    (0..dim)
        .map(|_| u64::from(rng.next_u32()) & (LEVELS - 1))
        .collect()
}

#[derive(Default)]
struct Clock {
    server: Duration,
    stages: Vec<f64>,
    bytes_up: u64,
    bytes_down: u64,
}

impl Clock {
    fn server<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        self.server += t0.elapsed();
        r
    }
}

fn send_all(
    clock: &mut Clock,
    server: &mut Server,
    frames: Vec<(ClientId, bytes::Bytes)>,
) -> anyhow::Result<()> {
    for (from, f) in frames {
        clock.bytes_up += f.len() as u64;
        clock.server(|| server.receive(from, &f))?;
    }
    Ok(())
}

fn close(clock: &mut Clock, server: &mut Server) -> anyhow::Result<ServerStep> {
    let before = clock.server;
    let step = clock.server(|| server.close_round())?;
    if let ServerStep::Send(v) = &step {
        clock.bytes_down += v.iter().map(|(_, f)| f.len() as u64).sum::<u64>();
    }
    clock.stages.push((clock.server - before).as_secs_f64());
    Ok(step)
}

fn sends(step: ServerStep) -> anyhow::Result<Vec<(ClientId, bytes::Bytes)>> {
    match step {
        ServerStep::Send(v) => Ok(v),
        ServerStep::Done(_) => anyhow::bail!("the round ended early"),
    }
}

pub fn run(a: SecaggArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.dropout),
        "--dropout must be in 0..=1"
    );
    let k = a.neighbours.unwrap_or(a.clients);
    let t = a
        .threshold
        .unwrap_or(((f64::from(k) / 2.0).round() as u32).max(2));
    let modulus = if a.modulus == "64" {
        Modulus::Pow64
    } else {
        Modulus::Pow32
    };
    let cfg = SecAggConfig {
        session_id: Sha256::digest(format!("tessera bench secagg {}", a.seed)).into(),
        clients: a.clients,
        dim: a.dim,
        neighbours: k,
        threshold: t,
        modulus,
    };
    cfg.validate()?;
    let quant = Quantiser {
        clip: CLIP,
        levels: LEVELS,
        rounding: Rounding::Stochastic,
    };
    quant.check_headroom(a.clients, modulus)?;
    let n_drop = (a.dropout * f64::from(a.clients)).round() as usize;
    let mut rng = ChaCha20Rng::seed_from_u64(a.seed);
    let dropped: std::collections::BTreeSet<ClientId> =
        rand::seq::index::sample(&mut rng, a.clients as usize, n_drop)
            .into_iter()
            .map(|i| ClientId(i as u32))
            .collect();

    let mut clock = Clock::default();
    let mut client_time = vec![Duration::ZERO; a.clients as usize];
    let mut expected = vec![0u64; a.dim as usize];
    let mut gen_time = Duration::ZERO;
    let t_all = Instant::now();
    let mut server = clock.server(|| Server::new(&cfg))?;

    let mut clients = Vec::with_capacity(a.clients as usize);
    let mut frames = Vec::new();
    for i in 0..a.clients {
        let t0 = Instant::now();
        let (c, f) = Client::new(&cfg, ClientId(i), &mut rng)?;
        client_time[i as usize] += t0.elapsed();
        clients.push(c);
        frames.push((ClientId(i), f));
    }
    send_all(&mut clock, &mut server, frames)?;
    let mut frames = Vec::new();
    for (to, f) in sends(close(&mut clock, &mut server)?)? {
        let t0 = Instant::now();
        let c = clients.get_mut(to.0 as usize).context("no such client")?;
        frames.push((to, c.share_keys(&f, &mut rng)?));
        client_time[to.0 as usize] += t0.elapsed();
    }
    send_all(&mut clock, &mut server, frames)?;
    for (to, f) in sends(close(&mut clock, &mut server)?)? {
        if dropped.contains(&to) {
            continue;
        }
        let g0 = Instant::now();
        let ints = client_ints(a.seed, to.0, a.dim);
        let values: Vec<f32> = ints
            .iter()
            .map(|&k| k as f32 / (1u32 << 18) as f32 - 8.0)
            .collect();
        for (e, x) in expected.iter_mut().zip(&ints) {
            *e += x;
        }
        gen_time += g0.elapsed();
        let t0 = Instant::now();
        let q = quant.quantise(&values, &mut rng)?;
        let c = clients.get_mut(to.0 as usize).context("no such client")?;
        let y = c.masked_input(&f, &q)?;
        client_time[to.0 as usize] += t0.elapsed();
        send_all(&mut clock, &mut server, vec![(to, y)])?;
    }
    let mut frames = Vec::new();
    for (to, f) in sends(close(&mut clock, &mut server)?)? {
        let t0 = Instant::now();
        let c = clients.get_mut(to.0 as usize).context("no such client")?;
        frames.push((to, c.unmask(&f)?));
        client_time[to.0 as usize] += t0.elapsed();
    }
    send_all(&mut clock, &mut server, frames)?;
    let agg = match close(&mut clock, &mut server)? {
        ServerStep::Done(agg) => agg,
        ServerStep::Send(_) => anyhow::bail!("the round did not end"),
    };
    let total_s = (t_all.elapsed() - gen_time).as_secs_f64();

    let survivors = agg.survivors.len();
    let mask = modulus.max_value();
    let int_ok = agg.sum.len() == expected.len()
        && agg.sum.iter().zip(&expected).all(|(s, e)| *s == (e & mask));
    let mean = quant.dequantise_mean(&agg.sum, survivors);
    let max_err = mean
        .iter()
        .zip(&expected)
        .map(|(m, e)| (m - (*e as f64 / (1u64 << 18) as f64 / survivors as f64 - 8.0)).abs())
        .fold(0.0, f64::max);
    let ok = int_ok && survivors == a.clients as usize - n_drop && max_err < 1e-6;
    let surv: Vec<f64> = agg
        .survivors
        .iter()
        .filter_map(|c| client_time.get(c.0 as usize))
        .map(Duration::as_secs_f64)
        .collect();
    let client_s = surv.iter().sum::<f64>() / surv.len().max(1) as f64;
    let server_s = clock.server.as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "impl": "tessera-secagg+", "N": a.clients, "L": a.dim, "d": a.dropout,
                "k": k, "t": t, "modulus_bits": modulus.word_bytes() * 8,
                "dropped": n_drop, "drop_stage": "masked_input", "survivors": survivors,
                "server_s": server_s, "client_s": client_s, "total_s": total_s, "ok": ok,
                "ok_detail": {"int_sum_exact": int_ok, "mean_max_err": max_err},
                "server_close_stage_s": clock.stages,
                "bytes_up": clock.bytes_up, "bytes_down": clock.bytes_down,
                "threads": rayon::current_num_threads(),
            })
        );
    } else {
        println!(
            "secagg+ N={} L={} d={} k={k} t={t} survivors={survivors} server={server_s:.3}s client(mean)={client_s:.3}s total={total_s:.3}s up={:.1}MiB down={:.1}MiB ok={ok}",
            a.clients,
            a.dim,
            a.dropout,
            clock.bytes_up as f64 / 1048576.0,
            clock.bytes_down as f64 / 1048576.0
        );
    }
    anyhow::ensure!(
        ok,
        "the aggregate does not equal the plain sum of the survivors' vectors"
    );
    Ok(())
}
