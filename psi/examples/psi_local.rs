//! Runs both PSI roles in one process over an in-memory link and prints the elapsed time.
//!
//! Usage: `cargo run --release -p tessera-psi --example psi_local -- [N] [intersection|size]
//! [rr22|ecdh]` (default N = 65536, intersection, the mode's default protocol). Each side holds N
//! distinct keys; half of them are common.

use std::time::Instant;

use rand_core::OsRng;
use tessera_core::{Link, MemLink};
use tessera_psi::{Mode, NoProgress, Protocol, PsiConfig, run_receiver, run_sender};

/// CPU seconds used by this process so far (user + system), where `/proc` provides them.
/// On a shared machine `cpu_s / cores` estimates the wall time an idle machine would need.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn key(i: u64) -> Vec<u8> {
    // Phone-number-like keys, as in typical PSI workloads.
    format!("+86-138{i:08}").into_bytes()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1 << 16);
    let mode: Mode = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or_default();
    let protocol: Protocol = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(Protocol::default_for(mode));
    let receiver_items: Vec<Vec<u8>> = (0..n).map(key).collect();
    let sender_items: Vec<Vec<u8>> = (n / 2..n / 2 + n).map(key).collect();
    let cfg = PsiConfig {
        protocol,
        mode,
        ..PsiConfig::default()
    };
    let (a, b) = MemLink::pair();
    let (mut r_rng, mut s_rng) = (OsRng, OsRng);

    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let (r, s) = tokio::join!(
        run_receiver(&a, &receiver_items, &cfg, &mut r_rng, &NoProgress),
        run_sender(&b, &sender_items, &cfg, &mut s_rng, &NoProgress),
    );
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, begin)| end - begin);
    let (r, s) = (r?, s?);

    println!(
        "n={n} mode={mode} protocol={protocol} threads={} intersection={} (expected {}) receiver_set={} sender_set={}",
        rayon::current_num_threads(),
        r.intersection_size,
        n - n / 2,
        s.receiver_set_size,
        r.sender_set_size,
    );
    let (ra, sb) = (a.stats(), b.stats());
    println!(
        "bytes receiver->sender={} sender->receiver={} frames={}+{}",
        ra.bytes_sent, sb.bytes_sent, ra.frames_sent, sb.frames_sent
    );
    match cpu {
        Some(cpu) => println!("elapsed_s={elapsed:.3} cpu_s={cpu:.2}"),
        None => println!("elapsed_s={elapsed:.3}"),
    }
    Ok(())
}
