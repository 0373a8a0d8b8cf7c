//! `tessera bench psi`: a two-party PSI run (`--protocol rr22|ecdh`) over gRPC on loopback with generated data,
//! checked against the plaintext answer, printing wall time, CPU time, bytes (each side's too)
//! and peak memory; `--n-sender` / `--n-receiver` for unbalanced sets, `--payload-bytes` for a
//! PSI with payload (every common key's payload checked).
//! `tessera bench psi-files` runs the same on two CSV files (the peers' harness format).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use rand::{RngCore, SeedableRng};
use tessera_core::Link;
use tessera_psi::{Mode, Protocol, PsiConfig};
use tessera_worker::link::{loopback_pair, loopback_pair_tls};
use tessera_worker::usage::{peak_rss_kb, process_cpu_ms};

use crate::progress::{self, PhaseBar};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// PSI with N items per party and 50% overlap.
    Psi {
        /// Items per party (at most 50,000,000, the dataset row bound, in one bucket; at most
        /// 1,000,000,000 bucketed).
        #[arg(long, default_value_t = 1 << 16,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=1_000_000_000), |v| v as usize))]
        n: usize,
        /// The sender's (provider's) items, for unbalanced sets [default: --n].
        #[arg(long,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=1_000_000_000), |v| v as usize))]
        n_sender: Option<usize>,
        /// The receiver's (buyer's) items [default: --n]. Half of the smaller set is common.
        #[arg(long,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=1_000_000_000), |v| v as usize))]
        n_receiver: Option<usize>,
        /// Bucketed PSI: at most this many rows per bucket (each party spills its rows to
        /// disk by a keyed hash and runs one PSI per bucket; at most 1,024 buckets, so past
        /// 1,024 × N rows a bucket holds more); the two parties run as two processes and each
        /// one's peak memory is reported. Intersection mode only. Wins over --memory-limit-mb.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        bucket_rows: Option<u64>,
        /// Bucketed PSI with the rows per bucket chosen to keep each party's memory under this
        /// many MiB (512 ..= 1048576; 2048 when only --bucket-rows is given).
        #[arg(long, value_parser = clap::value_parser!(u64).range(512..=1_048_576))]
        memory_limit_mb: Option<u64>,
        /// Scratch directory of a bucketed run: new or empty (it is emptied again after, never
        /// cleared before) [default: a temporary one, removed after].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// PSI with payload (rr22, intersection mode): bytes of payload per sender item
        /// (0: none; at most 65,536), checked for every common key.
        #[arg(long, default_value_t = 0,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=65_536), |v| v as usize))]
        payload_bytes: usize,
        /// intersection | size
        #[arg(long, default_value = "intersection", value_parser = clap::builder::PossibleValuesParser::new(["intersection", "size"]), ignore_case = true)]
        mode: String,
        /// rr22 (VOLE-based), ecdh, or ecdh-oprf (unbalanced sets: the sender's set is encoded
        /// once and its query index built, both timed apart, then two runs: the first either
        /// sends the encodings or looks the receiver's values up (--oprf-lookup), the second,
        /// whose figures are the main ones, finds a copy kept by the receiver or looks up
        /// again) [default: rr22, or ecdh for --mode size, which rr22 cannot run]
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["rr22", "ecdh", "ecdh-oprf"]), ignore_case = true)]
        protocol: Option<String>,
        /// ecdh-oprf: how the receiver learns which of its values the sender's set holds:
        /// auto (whichever moves fewer bytes), copy (receive the encoded set and keep it), or
        /// query (the homomorphic lookup in the sender's index).
        #[arg(long, default_value = "auto", value_parser = ["auto", "copy", "query"])]
        oprf_lookup: String,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Data seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The peer link: mtls (mutual TLS with certificates of a CA, as workers use) or
        /// plain (TCP, the insecure test option).
        #[arg(long, default_value = "mtls", value_parser = ["mtls", "plain"])]
        link: String,
    },
    /// Admission throughput of a real operator (TLS, authentication, SQLite) with two workers
    /// on loopback: tiny size-only PSI jobs from concurrent clients, then refusals against an
    /// exhausted licence; checks exactly-once at the end.
    Admission {
        /// Jobs submitted (1 ..= 1,000,000).
        #[arg(long, default_value_t = 2000,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u32).range(1..=1_000_000), |n| n as usize))]
        jobs: usize,
        /// Concurrent clients, each its own connection (1 ..= 1024; at most one per job).
        #[arg(long, default_value_t = 32,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1024), usize::from))]
        concurrency: usize,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// Scratch directory (cleared first) [default: a temporary one, removed after].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Most writes the store's group commit takes into one transaction (1 ..= 256); 1
        /// commits each write on its own, as before group commit.
        #[arg(long, default_value_t = tessera_store::MAX_BATCH,
              value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=256), usize::from))]
        max_batch: usize,
        /// Where the two workers run: each its own `tessera worker` process (as deployed), or
        /// both in this process on the operator's runtime.
        #[arg(long, value_enum, default_value_t = crate::admission_bench::Workers::Processes)]
        workers: crate::admission_bench::Workers,
        /// The worker processes' CPU priority (`nice -n N`, 0 ..= 19; 0 starts them without
        /// `nice`; refused with `--workers in-process`): on a box shared with the operator
        /// their jobs yield the CPU to its admissions, as workers on the parties' own machines
        /// would not take it at all.
        #[arg(long, default_value_t = 10,
              value_parser = clap::value_parser!(u8).range(0..=19))]
        worker_nice: u8,
    },
    /// Two-party MPC over gRPC on loopback: fixed-point elementwise multiplication (`mul`) and
    /// inner product (`mulsum`) of N elements, with dealer triples and dealer-free (RLWE
    /// oblivious linear evaluation, or Gilboa over OT with `--arith gilboa`); checked against
    /// the clear result.
    Mpc(crate::mpc_bench::MpcArgs),
    /// Secure aggregation (SecAgg+) of N clients' vectors with dropouts, in this process,
    /// checked against the plain sum of the survivors' vectors.
    Secagg(crate::secagg_bench::SecaggArgs),
    /// One party of a bucketed `bench psi` run (started by it).
    #[command(hide = true)]
    PsiParty(crate::psi_scale_bench::PartyArgs),
    /// PSI between two CSV files (header `id`); writes the intersection to --out.
    PsiFiles {
        /// rr22 (VOLE-based) or ecdh.
        #[arg(long, default_value = "rr22", value_parser = clap::builder::PossibleValuesParser::new(["rr22", "ecdh"]), ignore_case = true)]
        protocol: String,
        /// The first party's CSV file (header `id`).
        #[arg(long)]
        alice: PathBuf,
        /// The second party's CSV file (header `id`).
        #[arg(long)]
        bob: PathBuf,
        /// Where the intersection is written (CSV).
        #[arg(long)]
        out: PathBuf,
        /// The peer link: mtls or plain.
        #[arg(long, default_value = "mtls", value_parser = ["mtls", "plain"])]
        link: String,
    },
}

/// Two key sets of `n` each sharing `overlap` keys (32 hex characters each), shuffled.
pub fn generate_sets(n: usize, overlap: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    generate_sized_sets(n, n, overlap, seed)
}

/// Key sets of `n_a` and `n_b` keys sharing `overlap` (at most the smaller size), shuffled.
pub fn generate_sized_sets(
    n_a: usize,
    n_b: usize,
    overlap: usize,
    seed: u64,
) -> (Vec<String>, Vec<String>) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut key = || {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let common: Vec<String> = (0..overlap.min(n_a).min(n_b)).map(|_| key()).collect();
    let mut a = common.clone();
    let mut b = common;
    a.extend((a.len()..n_a).map(|_| key()));
    b.extend((b.len()..n_b).map(|_| key()));
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    a.shuffle(&mut rng);
    b.shuffle(&mut rng);
    (a, b)
}

struct Run {
    wall_s: f64,
    cpu_s: f64,
    receiver_bytes_received: u64,
    bytes_sent: u64,
    sender_bytes_sent: u64,
    receiver_bytes_sent: u64,
    result: Vec<usize>,
    payloads: Option<Vec<Vec<u8>>>,
    size: u64,
}

/// The bench's payload of a sender key: its bytes repeated to `len`.
fn payload_of(key: &[u8], len: usize) -> Vec<u8> {
    key.iter().copied().cycle().take(len).collect()
}

/// `ecdh-oprf`'s state of a bench run: the sender's encoded set and its query index, the
/// directory where the receiver keeps what it received, and the receiver's choice.
#[derive(Clone)]
struct OprfState {
    set: Arc<tessera_psi::ecdh_oprf::EncodedSet>,
    index: Arc<tessera_psi::oprf_query::QueryIndex>,
    dir: std::path::PathBuf,
    lookup: tessera_psi::ecdh_oprf::Lookup,
}

impl OprfState {
    /// Whether the receiver keeps a copy of the set (it took the copy, not the lookup).
    fn copy_kept(&self) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "enc"))
        })
    }
}

async fn run_pair(
    sender_items: Vec<Vec<u8>>,
    receiver_items: Vec<Vec<u8>>,
    payloads: Option<Vec<Vec<u8>>>,
    protocol: Protocol,
    mode: Mode,
    mtls: bool,
    oprf: Option<OprfState>,
) -> anyhow::Result<Run> {
    let (frame, idle) = (
        tessera_core::limits::FRAME_BYTES_MAX,
        Duration::from_secs(120),
    );
    let (a, b, server) = if mtls {
        loopback_pair_tls(frame, idle).await?
    } else {
        loopback_pair(frame, idle).await?
    };
    let cfg = PsiConfig {
        protocol,
        mode,
        ..PsiConfig::default()
    };
    let multi = progress::multi();
    let sender_bar = Arc::new(PhaseBar::new(&multi, "sender"));
    let receiver_bar = PhaseBar::new(&multi, "receiver");
    let cpu0 = process_cpu_ms();
    let t0 = Instant::now();
    let cfg_s = cfg.clone();
    let bar = sender_bar.clone();
    let with_payload = payloads.is_some();
    let oprf_sender = oprf.clone();
    let sender = tokio::spawn(async move {
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        let r = match payloads {
            _ if oprf_sender.is_some() => {
                let state = oprf_sender.unwrap_or_else(|| unreachable!());
                let items = Box::new(move || Ok(sender_items));
                tessera_psi::ecdh_oprf::run_sender(
                    &a,
                    &state.set,
                    Some(&state.index),
                    items,
                    &cfg_s,
                    &mut rng,
                    bar.as_ref(),
                    &tessera_psi::NoGate,
                )
                .await
            }
            Some(p) => {
                tessera_psi::run_sender_with_payload(
                    &a,
                    &sender_items,
                    &p,
                    &cfg_s,
                    &mut rng,
                    bar.as_ref(),
                    &tessera_psi::NoGate,
                )
                .await
            }
            None => {
                tessera_psi::run_sender(&a, &sender_items, &cfg_s, &mut rng, bar.as_ref()).await
            }
        };
        (r, a.stats())
    });
    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
    let out = if let Some(state) = &oprf {
        tessera_psi::ecdh_oprf::run_receiver(
            &b,
            &receiver_items,
            &state.dir,
            &cfg,
            state.lookup,
            &mut rng,
            &receiver_bar,
        )
        .await?
    } else if with_payload {
        tessera_psi::run_receiver_with_payload(&b, &receiver_items, &cfg, &mut rng, &receiver_bar)
            .await?
    } else {
        tessera_psi::run_receiver(&b, &receiver_items, &cfg, &mut rng, &receiver_bar).await?
    };
    let (sres, sstats) = sender.await?;
    sres?;
    sender_bar.finish();
    receiver_bar.finish();
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = (process_cpu_ms().saturating_sub(cpu0)) as f64 / 1000.0;
    server.abort();
    Ok(Run {
        wall_s,
        cpu_s,
        receiver_bytes_received: b.stats().bytes_received,
        bytes_sent: sstats.bytes_sent + b.stats().bytes_sent,
        sender_bytes_sent: sstats.bytes_sent,
        receiver_bytes_sent: b.stats().bytes_sent,
        result: out.intersection.unwrap_or_default(),
        payloads: out.payloads,
        size: out.intersection_size,
    })
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Psi {
            n,
            n_sender,
            n_receiver,
            payload_bytes,
            mode,
            protocol,
            oprf_lookup,
            json,
            seed,
            link,
            bucket_rows,
            memory_limit_mb,
            dir,
        } => {
            let mtls = link == "mtls";
            let lookup = match oprf_lookup.as_str() {
                "copy" => tessera_psi::ecdh_oprf::Lookup::Copy,
                "query" => tessera_psi::ecdh_oprf::Lookup::Query,
                _ => tessera_psi::ecdh_oprf::Lookup::Auto,
            };
            let mode: Mode = mode.parse()?;
            let protocol = match protocol {
                Some(p) => p.parse()?,
                None => Protocol::default_for(mode),
            };
            anyhow::ensure!(
                oprf_lookup == "auto" || protocol == Protocol::EcdhOprf,
                "--oprf-lookup is for --protocol ecdh-oprf"
            );
            if bucket_rows.is_some() || memory_limit_mb.is_some() {
                anyhow::ensure!(
                    protocol != Protocol::EcdhOprf,
                    "ecdh-oprf is not bucketed: drop --bucket-rows and --memory-limit-mb (its smaller side holds its keys in memory, the larger side 16 bytes a row)"
                );
                anyhow::ensure!(
                    mode == Mode::Intersection,
                    "bucketed PSI runs in intersection mode only (per-bucket sizes would reveal more than the size)"
                );
                anyhow::ensure!(
                    payload_bytes == 0 || protocol == Protocol::Rr22,
                    "--payload-bytes runs PSI with payload: rr22"
                );
                anyhow::ensure!(mtls, "bucketed runs use mutual TLS");
                let limit_mb = memory_limit_mb.unwrap_or(2048);
                let bucket_rows = bucket_rows.unwrap_or_else(|| {
                    tessera_psi::bucket::bucket_rows_for_memory(
                        limit_mb << 20,
                        payload_bytes as u64,
                    )
                });
                return crate::psi_scale_bench::run(crate::psi_scale_bench::ScaleArgs {
                    n_sender: n_sender.unwrap_or(n) as u64,
                    n_receiver: n_receiver.unwrap_or(n) as u64,
                    payload_bytes,
                    protocol,
                    bucket_rows,
                    memory_limit_mb: limit_mb,
                    seed,
                    dir,
                    json,
                })
                .await;
            }
            anyhow::ensure!(
                dir.is_none(),
                "--dir is for bucketed runs (--bucket-rows or --memory-limit-mb)"
            );
            anyhow::ensure!(
                n.max(n_sender.unwrap_or(0)).max(n_receiver.unwrap_or(0))
                    <= tessera_core::limits::DATASET_ROWS_MAX,
                "{}",
                if protocol == Protocol::EcdhOprf {
                    format!(
                        "ecdh-oprf takes at most {} items a party (it is not bucketed)",
                        tessera_core::limits::DATASET_ROWS_MAX
                    )
                } else {
                    format!(
                        "more than {} items per party need a bucketed run (--bucket-rows or --memory-limit-mb)",
                        tessera_core::limits::DATASET_ROWS_MAX
                    )
                }
            );
            anyhow::ensure!(
                protocol.supports(mode),
                "{protocol} cannot run in {mode} mode (its receiver learns which keys are common); use --protocol ecdh"
            );
            anyhow::ensure!(
                payload_bytes == 0 || (protocol == Protocol::Rr22 && mode == Mode::Intersection),
                "--payload-bytes runs PSI with payload: rr22 in intersection mode"
            );
            let (ns, nr) = (n_sender.unwrap_or(n), n_receiver.unwrap_or(n));
            let (a, b) = generate_sized_sets(ns, nr, ns.min(nr) / 2, seed);
            let truth: HashSet<&String> = a
                .iter()
                .collect::<HashSet<_>>()
                .intersection(&b.iter().collect())
                .copied()
                .collect();
            let sender: Vec<Vec<u8>> = a.iter().map(|s| s.as_bytes().to_vec()).collect();
            let receiver: Vec<Vec<u8>> = b.iter().map(|s| s.as_bytes().to_vec()).collect();
            let payloads = (payload_bytes > 0).then(|| {
                sender
                    .iter()
                    .map(|k| payload_of(k, payload_bytes))
                    .collect::<Vec<_>>()
            });
            // ecdh-oprf: the sender's set encoded once and its query index built (each timed
            // apart), then two runs: the first copies the encodings or looks the receiver's
            // values up, the second finds the copy kept or looks up again.
            let mut oprf = None;
            let mut oprf_figures = serde_json::Value::Null;
            if protocol == Protocol::EcdhOprf {
                let t = Instant::now();
                let items = sender.clone();
                let set = tokio::task::spawn_blocking(move || {
                    let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
                    let mut b = tessera_psi::ecdh_oprf::EncodedSet::builder(&mut rng);
                    b.add(&items).map(|()| b.finish())
                })
                .await??;
                let prepare_s = t.elapsed().as_secs_f64();
                let dir = std::env::temp_dir()
                    .join(format!("tessera-bench-ecdh-oprf-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let set = Arc::new(set);
                let t = Instant::now();
                let index = tokio::task::spawn_blocking({
                    let (set, path) = (set.clone(), dir.join("sender.query"));
                    move || set.build_query_index(&path, &|_, _| Ok(()))
                })
                .await??;
                let index_s = t.elapsed().as_secs_f64();
                let receiver_dir = dir.join("receiver");
                let state = OprfState {
                    set,
                    index: Arc::new(index),
                    dir: receiver_dir,
                    lookup,
                };
                let cold = run_pair(
                    sender.clone(),
                    receiver.clone(),
                    None,
                    protocol,
                    mode,
                    mtls,
                    Some(state.clone()),
                )
                .await?;
                // With the larger set the receiver's, it holds the key: neither way is taken.
                // (Generated keys are random 128-bit values: distinct.)
                let how = if !tessera_psi::ecdh_oprf::sender_holds_key(sender.len(), receiver.len())
                {
                    "none"
                } else if state.copy_kept() {
                    "copy"
                } else {
                    "query"
                };
                oprf_figures = serde_json::json!({
                    "prepare_s": prepare_s, "index_s": index_s,
                    "index_rows": state.index.rows(), "first_lookup": how,
                    "first_wall_s": cold.wall_s, "first_cpu_s": cold.cpu_s,
                    "first_receiver_bytes_received": cold.receiver_bytes_received,
                    "first_receiver_bytes_sent": cold.receiver_bytes_sent,
                });
                if !json {
                    println!(
                        "ecdh-oprf prepare={prepare_s:.3}s index={index_s:.3}s ({} rows) first run ({how}): wall={:.3}s receiver received={:.2}MiB sent={:.2}MiB",
                        state.index.rows(),
                        cold.wall_s,
                        cold.receiver_bytes_received as f64 / (1024.0 * 1024.0),
                        cold.receiver_bytes_sent as f64 / (1024.0 * 1024.0),
                    );
                }
                oprf = Some((state, dir));
            }
            let state = oprf.as_ref().map(|(s, _)| s.clone());
            let r = run_pair(sender, receiver, payloads, protocol, mode, mtls, state).await?;
            // Every common key's payload is its own.
            let payloads_ok = match &r.payloads {
                None => payload_bytes == 0,
                Some(p) => {
                    p.len() == r.result.len()
                        && r.result.iter().zip(p).all(|(&i, got)| {
                            b.get(i)
                                .is_some_and(|k| *got == payload_of(k.as_bytes(), payload_bytes))
                        })
                }
            };
            let ok = payloads_ok
                && r.size == truth.len() as u64
                && match mode {
                    Mode::Intersection => {
                        r.result.len() == truth.len()
                            && r.result
                                .iter()
                                .all(|&i| b.get(i).is_some_and(|k| truth.contains(k)))
                    }
                    Mode::SizeOnly => true,
                };
            let peak_rss_mb = peak_rss_kb() as f64 / 1024.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "engine": match protocol {
                            Protocol::Rr22 => "rr22-vole-psi",
                            Protocol::Ecdh => "ecdh-psi-ristretto255",
                            Protocol::EcdhOprf => "ecdh-oprf-psi-ristretto255",
                        },
                        "ecdh_oprf": oprf_figures,
                        "receiver_bytes_received": r.receiver_bytes_received,
                        "protocol": protocol.as_str(),
                        "transport": if mtls { "grpc-mtls-loopback" } else { "grpc-loopback" },
                        "mode": mode.as_str(),
                        "n": if ns == nr { serde_json::json!(ns) } else { serde_json::Value::Null },
                        "n_sender": ns, "n_receiver": nr, "payload_bytes": payload_bytes,
                        "intersection": r.size, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
                        "bytes_sent": r.bytes_sent, "sender_bytes_sent": r.sender_bytes_sent,
                        "receiver_bytes_sent": r.receiver_bytes_sent,
                        "peak_rss_mb": peak_rss_mb, "ok": ok,
                    })
                );
            } else {
                println!(
                    "{protocol}-psi n_sender={ns} n_receiver={nr} payload_bytes={payload_bytes} mode={} link={link} intersection={} wall={:.3}s cpu={:.3}s sent={:.1}MiB (sender {:.1}, receiver {:.1}) receiver_received={:.1}MiB peak_rss={peak_rss_mb:.0}MB ok={ok}",
                    mode.as_str(),
                    r.size,
                    r.wall_s,
                    r.cpu_s,
                    r.bytes_sent as f64 / (1024.0 * 1024.0),
                    r.sender_bytes_sent as f64 / (1024.0 * 1024.0),
                    r.receiver_bytes_sent as f64 / (1024.0 * 1024.0),
                    r.receiver_bytes_received as f64 / (1024.0 * 1024.0),
                );
            }
            if let Some((_, dir)) = oprf {
                let _ = std::fs::remove_dir_all(dir);
            }
            if !ok {
                anyhow::bail!("PSI result does not match the plaintext intersection");
            }
        }
        BenchCommand::PsiParty(args) => crate::psi_scale_bench::party(args).await?,
        BenchCommand::Mpc(args) => crate::mpc_bench::run(args).await?,
        BenchCommand::Secagg(args) => crate::secagg_bench::run(args)?,
        BenchCommand::Admission {
            jobs,
            concurrency,
            json,
            dir,
            max_batch,
            workers,
            worker_nice,
        } => {
            let scratch = dir.is_none();
            if scratch {
                crate::admission_bench::remove_stale_scratch(&std::env::temp_dir());
            }
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "{}{}",
                    crate::admission_bench::SCRATCH_PREFIX,
                    std::process::id()
                ))
            });
            // A signal stops the run: its worker processes are killed with it (dropped) and a
            // scratch directory is removed, rather than left behind.
            let stop = crate::signal_received();
            let f = tokio::select! {
                f = crate::admission_bench::run(
                    &dir,
                    jobs,
                    concurrency,
                    max_batch,
                    workers,
                    worker_nice,
                ) => f,
                signal = stop => Err(anyhow::Error::new(signal)
                    .context("the benchmark and its worker processes were stopped")),
            };
            if scratch {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let f = f?;
            if json {
                println!("{}", serde_json::to_string(&f)?);
            } else {
                println!(
                    "admission jobs={} concurrency={} workers={} worker_nice={} admissions/s={:.0} \
                     completed/s={:.0} p50={:.1}ms p99={:.1}ms refusals/s={:.0} max_batch={} \
                     writes/commit={:.1} largest_batch={} succeeded={} count_exact={} ledger_balanced={} \
                     audit_verified={}",
                    f.jobs,
                    f.concurrency,
                    match f.workers {
                        crate::admission_bench::Workers::Processes => "processes",
                        crate::admission_bench::Workers::InProcess => "in-process",
                    },
                    f.worker_nice,
                    f.admissions_per_s,
                    f.completed_per_s,
                    f.p50_ms,
                    f.p99_ms,
                    f.refusals_per_s,
                    f.max_batch,
                    f.writes_per_commit,
                    f.largest_batch,
                    f.succeeded,
                    f.count_exact,
                    f.ledger_balanced,
                    f.audit_verified
                );
                for failure in &f.failures {
                    println!("  {} job(s) {}", failure.jobs, failure.error);
                }
            }
            if f.succeeded < f.jobs {
                anyhow::bail!(
                    "{} of {} jobs did not succeed (the figures above say why)",
                    f.jobs - f.succeeded,
                    f.jobs
                );
            }
            if !(f.count_exact && f.ledger_balanced && f.audit_verified) {
                anyhow::bail!("an exactly-once check failed (see the figures above)");
            }
        }
        BenchCommand::PsiFiles {
            protocol,
            alice,
            bob,
            out,
            link,
        } => {
            let spec = tessera_core::table::KeySpec {
                columns: vec!["id".into()],
                ..Default::default()
            };
            let t0 = Instant::now();
            let a = tessera_core::table::read_keys(&alice, &spec)
                .with_context(|| format!("--alice {}", alice.display()))?;
            let b = tessera_core::table::read_keys(&bob, &spec)
                .with_context(|| format!("--bob {}", bob.display()))?;
            let read_s = t0.elapsed().as_secs_f64();
            let protocol: Protocol = protocol.parse()?;
            let r = run_pair(
                a.keys,
                b.keys.clone(),
                None,
                protocol,
                Mode::Intersection,
                link == "mtls",
                None,
            )
            .await?;
            let rows: Vec<[String; 1]> = r
                .result
                .iter()
                .filter_map(|&i| b.keys.get(i))
                .map(|k| [String::from_utf8_lossy(k).into_owned()])
                .collect();
            tessera_core::table::write_result_csv(&out, &["id"], &rows)?;
            println!(
                "METRICS {}",
                serde_json::json!({"psi_s": r.wall_s, "read_s": read_s, "bytes_sent": r.bytes_sent})
            );
        }
    }
    Ok(())
}
