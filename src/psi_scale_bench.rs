//! `tessera bench psi --bucket-rows N | --memory-limit-mb M`: bucketed PSI
//! ([`tessera_psi::bucket`]) at any size, each party **its own process** (so that each one's
//! peak memory is its own), over gRPC with mutual TLS on loopback.
//!
//! The parent makes the link's credentials, starts `tessera bench psi-party` twice (hidden
//! subcommand) and prints both parties' figures. Each party generates its rows as a stream
//! (never the whole set in memory): receiver row `i` is common item `i/2` when `i` is even and
//! `i/2 < overlap`, sender row `j` is common item `j/2` when `j` is odd and `j/2 < overlap`
//! (`overlap` = half the smaller set), every other row an item of its own; items are 32 hex
//! digits of BLAKE3. The receiver checks its merged result row by row against that rule: the
//! matched ordinals must be exactly `0, 2, …, 2·(overlap−1)`, and with `--payload-bytes` each
//! payload the sender's of that item.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tessera_core::Link;
use tessera_psi::bucket::{BucketKey, Stager};
use tessera_psi::{Mode, NoGate, Protocol, PsiConfig};
use tessera_worker::link::{GrpcLink, PeerHub, PeerTls, loopback_tls, serve_peer_tls};
use tessera_worker::usage::{peak_rss_kb, process_cpu_ms};

/// How long a party waits for the other to finish staging and connect.
const CONNECT_WAIT: Duration = Duration::from_secs(3600);
/// How long the link may be silent (the other party loading a bucket from disk).
const IDLE: Duration = Duration::from_secs(600);

/// The hidden `bench psi-party` arguments: one party of a bucketed run.
#[derive(Debug, clap::Args)]
pub struct PartyArgs {
    /// sender | receiver
    #[arg(long, value_parser = ["sender", "receiver"])]
    pub role: String,
    /// The run's scratch directory (credentials, port file, spill files).
    #[arg(long)]
    pub dir: PathBuf,
    /// The sender's rows.
    #[arg(long)]
    pub n_sender: u64,
    /// The receiver's rows.
    #[arg(long)]
    pub n_receiver: u64,
    /// Payload bytes per sender row (0: none).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// rr22 or ecdh.
    #[arg(long, default_value = "rr22")]
    pub protocol: String,
    /// Most rows per bucket.
    #[arg(long)]
    pub bucket_rows: u64,
    /// Data seed (both parties the same).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What the parent asks for.
#[derive(Debug)]
pub struct ScaleArgs {
    pub n_sender: u64,
    pub n_receiver: u64,
    pub payload_bytes: usize,
    pub protocol: Protocol,
    pub bucket_rows: u64,
    pub memory_limit_mb: u64,
    pub seed: u64,
    pub dir: Option<PathBuf>,
    pub json: bool,
}

fn item(seed: u64, tag: u8, i: u64) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&[tag]);
    h.update(&i.to_le_bytes());
    hex::encode(&h.finalize().as_bytes()[..16]).into_bytes()
}

fn receiver_row(seed: u64, overlap: u64, i: u64) -> Vec<u8> {
    if i.is_multiple_of(2) && i / 2 < overlap {
        item(seed, b'c', i / 2)
    } else {
        item(seed, b'r', i)
    }
}

fn sender_row(seed: u64, overlap: u64, j: u64) -> Vec<u8> {
    if j % 2 == 1 && j / 2 < overlap {
        item(seed, b'c', j / 2)
    } else {
        item(seed, b's', j)
    }
}

fn payload_of(key: &[u8], len: usize) -> Vec<u8> {
    key.iter().copied().cycle().take(len).collect()
}

/// Runs one party (the hidden subcommand) and prints its figures as one JSON line.
pub async fn party(args: PartyArgs) -> anyhow::Result<()> {
    let receiver = args.role == "receiver";
    let protocol: Protocol = args.protocol.parse()?;
    let overlap = args.n_sender.min(args.n_receiver) / 2;
    let key = BucketKey::derive(&args.seed.to_le_bytes());
    let t0 = Instant::now();
    let cpu0 = process_cpu_ms();
    let spill = args.dir.join(format!("{}-spill", args.role));
    let mut stager = Stager::new(key, args.bucket_rows, &spill);
    let n = if receiver {
        args.n_receiver
    } else {
        args.n_sender
    };
    for i in 0..n {
        let (row, extra) = if receiver {
            (receiver_row(args.seed, overlap, i), Vec::new())
        } else {
            let row = sender_row(args.seed, overlap, i);
            let extra = payload_of(&row, args.payload_bytes);
            (row, extra)
        };
        stager.push(row, extra)?;
    }
    let staged = stager.finish()?;
    let spilled = staged.spilled();
    let stage_s = t0.elapsed().as_secs_f64();

    let tls = |role: &str| -> anyhow::Result<PeerTls> {
        let read = |name: &str| {
            std::fs::read_to_string(args.dir.join(format!("{role}.{name}.pem")))
                .with_context(|| format!("reading {role}.{name}.pem"))
        };
        Ok(PeerTls {
            ca_pem: read("ca")?,
            cert_pem: read("cert")?,
            key_pem: zeroize::Zeroizing::new(read("key")?),
        })
    };
    let frame = tessera_core::limits::FRAME_BYTES_MAX;
    let receiver_id = tessera_pki::PeerIdentity::new("receiver", "w-listen")?;
    let sender_id = tessera_pki::PeerIdentity::new("sender", "w-dial")?;
    let port_file = args.dir.join("port");
    let (link, server): (GrpcLink, Option<tokio::task::JoinHandle<()>>) = if receiver {
        let credentials = std::sync::Arc::new(tessera_worker::link::PeerCredentials::new(tls(
            "receiver",
        )?)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let hub = PeerHub::new(frame, IDLE);
        let server = tokio::spawn({
            let hub = hub.clone();
            async move {
                let _ = serve_peer_tls(hub, listener, credentials).await;
            }
        });
        let tmp = args.dir.join("port.tmp");
        std::fs::write(&tmp, port.to_string())?;
        std::fs::rename(&tmp, &port_file)?;
        let link = hub
            .accept_from("bench", CONNECT_WAIT, Some(&sender_id))
            .await?;
        (link, Some(server))
    } else {
        let waited = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p;
            }
            anyhow::ensure!(
                waited.elapsed() < CONNECT_WAIT,
                "the receiver never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let link = GrpcLink::dial_tls(
            &format!("127.0.0.1:{}", port.trim()),
            "bench",
            frame,
            IDLE,
            Duration::from_secs(30),
            &tls("sender")?,
            &receiver_id,
        )
        .await?;
        (link, None)
    };
    let cfg = PsiConfig {
        protocol,
        mode: Mode::Intersection,
        ..PsiConfig::default()
    };
    let t1 = Instant::now();
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_entropy();
    let payload = args.payload_bytes > 0;
    let mut figures = serde_json::json!({
        "role": args.role, "rows": n, "spilled": spilled, "stage_s": stage_s,
    });
    if receiver {
        let parts = args.dir.join("receiver-parts");
        let out = tessera_psi::bucket::run_receiver_bucketed(
            &link,
            staged,
            &parts,
            payload,
            false,
            &cfg,
            &mut rng,
            &tessera_psi::NoProgress,
        )
        .await?;
        let psi_s = t1.elapsed().as_secs_f64();
        // Exactly the even ordinals below 2·overlap, each with its own payload.
        let mut expected = 0u64;
        let mut ok = true;
        for m in out.parts.merged()? {
            let m = m?;
            if m.ordinal != 2 * expected || expected >= overlap {
                ok = false;
                break;
            }
            if payload
                && m.payload != payload_of(&item(args.seed, b'c', expected), args.payload_bytes)
            {
                ok = false;
                break;
            }
            expected += 1;
        }
        ok &= expected == overlap && out.intersection_size == overlap;
        out.parts.remove();
        figures["psi_s"] = psi_s.into();
        figures["buckets"] = out.buckets.into();
        figures["intersection"] = out.intersection_size.into();
        figures["ok"] = ok.into();
    } else {
        let out = tessera_psi::bucket::run_sender_bucketed(
            &link,
            staged,
            payload,
            None,
            &cfg,
            &mut rng,
            &tessera_psi::NoProgress,
            &NoGate,
        )
        .await?;
        figures["psi_s"] = t1.elapsed().as_secs_f64().into();
        figures["buckets"] = out.buckets.into();
        figures["ok"] = true.into();
    }
    figures["wall_s"] = t0.elapsed().as_secs_f64().into();
    figures["cpu_s"] = ((process_cpu_ms().saturating_sub(cpu0)) as f64 / 1000.0).into();
    figures["bytes_sent"] = link.stats().bytes_sent.into();
    figures["peak_rss_mb"] = (peak_rss_kb() as f64 / 1024.0).into();
    if let Some(s) = server {
        s.abort();
    }
    let _ = std::fs::remove_dir_all(&spill);
    println!("{figures}");
    std::io::stdout().flush()?;
    Ok(())
}

/// Creates `dir` for this user only (0700 on Unix): it holds private keys and spilled rows.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

fn write_credentials(dir: &Path) -> anyhow::Result<()> {
    let tls = loopback_tls()?;
    for (role, (t, _)) in [("receiver", &tls.listener), ("sender", &tls.dialer)] {
        std::fs::write(dir.join(format!("{role}.ca.pem")), &t.ca_pem)?;
        std::fs::write(dir.join(format!("{role}.cert.pem")), &t.cert_pem)?;
        std::fs::write(dir.join(format!("{role}.key.pem")), t.key_pem.as_bytes())?;
    }
    Ok(())
}

/// Runs both parties as child processes and prints their figures.
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    // A directory of the user's is never cleared: it must be new or empty, and what the run
    // puts there (credentials, spill files) is removed after.
    let dir = match &args.dir {
        Some(d) => {
            if d.exists() {
                let empty = std::fs::read_dir(d)
                    .with_context(|| format!("--dir {}", d.display()))?
                    .next()
                    .is_none();
                anyhow::ensure!(
                    empty,
                    "--dir {} is not empty; give a new or empty directory (nothing in it is removed)",
                    d.display()
                );
            }
            d.clone()
        }
        None => std::env::temp_dir().join(format!("tessera-bench-psi-{}", std::process::id())),
    };
    let existed = dir.exists();
    private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&args, &dir).await;
    if existed {
        // Empty it again, leaving the user's directory itself.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(args: &ScaleArgs, dir: &Path) -> anyhow::Result<()> {
    write_credentials(dir)?;
    let exe = std::env::current_exe().context("finding this program")?;
    let spawn = |role: &str| {
        tokio::process::Command::new(&exe)
            .args(["bench", "psi-party", "--role", role])
            .arg("--dir")
            .arg(dir)
            .args([
                format!("--n-sender={}", args.n_sender),
                format!("--n-receiver={}", args.n_receiver),
                format!("--payload-bytes={}", args.payload_bytes),
                format!("--protocol={}", args.protocol.as_str()),
                format!("--bucket-rows={}", args.bucket_rows),
                format!("--seed={}", args.seed),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {role}"))
    };
    let t0 = Instant::now();
    let receiver = spawn("receiver")?;
    let sender = spawn("sender")?;
    let (r, s) = tokio::join!(receiver.wait_with_output(), sender.wait_with_output());
    let wall_s = t0.elapsed().as_secs_f64();
    let parse = |out: std::io::Result<std::process::Output>,
                 role: &str|
     -> anyhow::Result<serde_json::Value> {
        let out = out.with_context(|| format!("waiting for the {role}"))?;
        anyhow::ensure!(out.status.success(), "the {role} failed ({})", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("the {role}'s figures: {line:?}"))
    };
    let (r, s) = (parse(r, "receiver")?, parse(s, "sender")?);
    let ok = r["ok"].as_bool() == Some(true);
    let figures = serde_json::json!({
        "engine": "bucketed-psi",
        "protocol": args.protocol.as_str(),
        "transport": "grpc-mtls-loopback, one process per party",
        "mode": "intersection",
        "n_sender": args.n_sender, "n_receiver": args.n_receiver,
        "payload_bytes": args.payload_bytes,
        "bucket_rows": args.bucket_rows, "memory_limit_mb": args.memory_limit_mb,
        "buckets": r["buckets"], "intersection": r["intersection"],
        "wall_s": wall_s,
        "receiver": r, "sender": s,
        "ok": ok,
    });
    if args.json {
        println!("{figures}");
    } else {
        let side = |v: &serde_json::Value| {
            format!(
                "stage={:.1}s psi={:.1}s cpu={:.1}s sent={:.1}MiB peak_rss={:.0}MB",
                v["stage_s"].as_f64().unwrap_or(0.0),
                v["psi_s"].as_f64().unwrap_or(0.0),
                v["cpu_s"].as_f64().unwrap_or(0.0),
                v["bytes_sent"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
                v["peak_rss_mb"].as_f64().unwrap_or(0.0),
            )
        };
        println!(
            "bucketed {}-psi n_sender={} n_receiver={} payload_bytes={} bucket_rows={} buckets={} intersection={} wall={wall_s:.1}s\n  receiver: {}\n  sender:   {}\nok={ok}",
            args.protocol.as_str(),
            args.n_sender,
            args.n_receiver,
            args.payload_bytes,
            args.bucket_rows,
            r["buckets"],
            r["intersection"],
            side(&r),
            side(&s),
        );
    }
    anyhow::ensure!(
        ok,
        "the bucketed PSI result does not match the expected intersection"
    );
    Ok(())
}
