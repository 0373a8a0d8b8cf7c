//! `tessera billing`: run an accounting scenario file through the deterministic simulator
//! (`billing simulate`), and measure the billing hot paths (`billing bench`): durable,
//! idempotent usage-event ingestion into the SQLite store, and rating throughput.
//!
//! The bench uses a fixed, injected clock for event and arrival times; only elapsed time is
//! measured with [`Instant`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use rand::{Rng, SeedableRng};
use tessera_accounting::civil::{MS_PER_HOUR, Millis};
use tessera_accounting::discount::{
    Discount, DiscountBook, DiscountRange, DiscountSource, DiscountStrategy, StackOrder,
};
use tessera_accounting::money::{MICROS_PER_UNIT, Micros, parse_decimal};
use tessera_accounting::rating::{
    BillingMode, Metric, PriceComponent, PricePlan, RatingContext, Tier, Usage, rate,
};
use tessera_simulator::{MAX_SCENARIO_BYTES, ScenarioError, simulate};
use tessera_store::{Store, UsageEventRecord};

use crate::client::output::stdout_error;

/// The injected clock of the bench: every event happens at or after this instant
/// (2024-01-01T00:00:00Z) and arrives at [`BENCH_ARRIVAL_MS`].
const BENCH_EPOCH_MS: Millis = 1_704_067_200_000;
/// Arrival time recorded for every ingested event.
const BENCH_ARRIVAL_MS: Millis = BENCH_EPOCH_MS + 24 * MS_PER_HOUR;
/// Most events one bench run may ingest (bounds memory).
const MAX_BENCH_EVENTS: usize = 10_000_000;
/// Most usage records one bench run may rate (bounds memory).
const MAX_BENCH_RECORDS: usize = 50_000_000;
/// Metrics the bench's events are spread over (as the worker reports them).
const METRICS: [&str; 4] = ["cpu_ms", "wall_ms", "rows_in", "bytes_sent"];
/// Customers the rated usage is spread over.
const BENCH_CUSTOMERS: usize = 100;
/// Customers (out of [`BENCH_CUSTOMERS`]) holding a customer discount.
const DISCOUNTED_CUSTOMERS: usize = 10;
/// Product the bench plan prices.
const BENCH_PRODUCT: &str = "psi";

/// `tessera billing ...`.
#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Simulate scenario files (see `simulator/scenarios/README.md`) and print their
    /// reports; with several files each report is headed `== FILE`. Every file is run; the
    /// exit status is 1 if any failed.
    Simulate {
        /// Scenario TOML files (each at most 1 MiB; at most 1000 files), e.g.
        /// simulator/scenarios/*.toml.
        #[arg(required = true, num_args = 1..=SCENARIO_FILES_MAX)]
        files: Vec<PathBuf>,
    },
    /// Measure usage-event ingestion into the SQLite store and rating throughput.
    Bench {
        /// Distinct usage events ingested (batched, then re-ingested as retries).
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Events per transaction in the batched and retry phases.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Events ingested one per transaction (default: events / 20, at least 1).
        #[arg(long)]
        single_events: Option<usize>,
        /// Usage records rated.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Directory the bench databases are created in (a fresh subdirectory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Data seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a billing subcommand.
pub async fn run(cmd: BillingCommand) -> anyhow::Result<()> {
    match cmd {
        BillingCommand::Simulate { files } => simulate_files(&files).await,
        BillingCommand::Bench {
            events,
            batch,
            single_events,
            records,
            dir,
            seed,
            json,
        } => {
            let opts = BenchOptions {
                events,
                batch,
                single_events: single_events.unwrap_or((events / 20).max(1)),
                records,
                dir: dir.unwrap_or_else(std::env::temp_dir),
                seed,
            };
            let r = bench(&opts).await?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", r.json(&opts)).map_err(stdout_error)?;
            } else {
                write!(out, "{}", r.text(&opts)).map_err(stdout_error)?;
            }
            out.flush().map_err(stdout_error)?;
            if !r.ok {
                anyhow::bail!("billing bench: a check failed (see the output)");
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// simulate
// ---------------------------------------------------------------------------------------

/// Reads at most [`MAX_SCENARIO_BYTES`] of `path` as UTF-8, refusing larger files.
fn read_scenario(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).context("cannot open the file")?;
    let meta = file.metadata().context("cannot read the file's metadata")?;
    if meta.is_dir() {
        anyhow::bail!("is a directory, not a scenario file");
    }
    if meta.len() > MAX_SCENARIO_BYTES as u64 {
        anyhow::bail!(
            "file is {} bytes, larger than the {MAX_SCENARIO_BYTES}-byte (1 MiB) limit",
            meta.len()
        );
    }
    // Read through a bounded reader as well: the file may grow, or be a pipe or device.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_SCENARIO_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the file")?;
    if bytes.len() > MAX_SCENARIO_BYTES {
        anyhow::bail!("file is larger than the {MAX_SCENARIO_BYTES}-byte (1 MiB) limit");
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "file is not valid UTF-8 (first invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `", line L, column C"` of the first TOML syntax error in `text`, if there is one (the
/// simulator's parse error carries no position).
fn syntax_error_position(text: &str) -> String {
    let Err(e) = text.parse::<toml::Table>() else {
        return String::new();
    };
    let Some(start) = e.span().map(|s| s.start) else {
        return String::new();
    };
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(", line {line}, column {column}")
}

/// Most scenario files one `billing simulate` runs.
const SCENARIO_FILES_MAX: usize = 1000;

/// Simulates each file in turn: one file prints its bare report; several print each under a
/// `== FILE` header, a failure as `error: …` on stderr, and go on to the next.
///
/// Errors: how many files failed (each named on stderr), or the first error for one file.
async fn simulate_files(files: &[PathBuf]) -> anyhow::Result<()> {
    if let [one] = files {
        return simulate_file(one).await;
    }
    let mut failed = 0usize;
    for (i, f) in files.iter().enumerate() {
        {
            let mut out = std::io::stdout().lock();
            if i > 0 {
                writeln!(out).map_err(stdout_error)?;
            }
            writeln!(out, "== {}", f.display()).map_err(stdout_error)?;
            out.flush().map_err(stdout_error)?;
        }
        if let Err(e) = simulate_file(f).await {
            if crate::client::output::is_broken_pipe(&e) {
                return Err(e);
            }
            eprintln!("error: {e:#}");
            failed += 1;
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} scenario files failed",
        files.len()
    );
    Ok(())
}

async fn simulate_file(path: &Path) -> anyhow::Result<()> {
    let text = read_scenario(path).with_context(|| format!("scenario file {}", path.display()))?;
    let report = simulate(&text).await.map_err(|e| {
        let at = match &e {
            ScenarioError::Parse(_) => syntax_error_position(&text),
            _ => String::new(),
        };
        anyhow::Error::new(e).context(format!("scenario file {}{at}", path.display()))
    })?;
    let mut out = std::io::stdout().lock();
    out.write_all(report.render_text().as_bytes())
        .map_err(stdout_error)?;
    out.flush().map_err(stdout_error)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct BenchOptions {
    events: usize,
    batch: usize,
    single_events: usize,
    records: usize,
    dir: PathBuf,
    seed: u64,
}

#[derive(Debug)]
struct BenchResult {
    batched_s: f64,
    retry_s: f64,
    single_s: f64,
    rating_s: f64,
    stored_after_batched: usize,
    stored_after_retry: usize,
    stored_single: usize,
    rated_original_micros: i128,
    rated_net_micros: i128,
    reference_net_micros: Micros,
    ok: bool,
}

fn per_second(n: usize, secs: f64) -> f64 {
    n as f64 / secs.max(1e-9)
}

impl BenchResult {
    fn json(&self, o: &BenchOptions) -> serde_json::Value {
        serde_json::json!({
            "ingest_events_per_s_batched": per_second(o.events, self.batched_s),
            "ingest_retry_events_per_s": per_second(o.events, self.retry_s),
            "ingest_events_per_s_single": per_second(o.single_events, self.single_s),
            "rated_per_s": per_second(o.records, self.rating_s),
            "events": o.events,
            "batch": o.batch,
            "single_events": o.single_events,
            "records": o.records,
            "stored_after_retry": self.stored_after_retry,
            "store": "sqlite wal synchronous=full",
            "ok": self.ok,
        })
    }

    fn text(&self, o: &BenchOptions) -> String {
        format!(
            "usage-event ingestion (SQLite, WAL, synchronous=FULL, idempotent by event id)\n\
             \x20 batched: {} events in batches of {}: {:.3} s, {:.0} events/s (stored {})\n\
             \x20 retries: the same {} again: {:.3} s, {:.0} events/s (stored still {})\n\
             \x20 single:  {} events, one transaction each: {:.3} s, {:.0} events/s (stored {})\n\
             rating (graduated tiers, per-job and per-row prices, platform + customer discounts)\n\
             \x20 {} usage records: {:.3} s, {:.0} charges/s (original {}, net {} micros)\n\
             \x20 reference charge: net {} micros\n\
             ok: {}\n",
            o.events,
            o.batch,
            self.batched_s,
            per_second(o.events, self.batched_s),
            self.stored_after_batched,
            o.events,
            self.retry_s,
            per_second(o.events, self.retry_s),
            self.stored_after_retry,
            o.single_events,
            self.single_s,
            per_second(o.single_events, self.single_s),
            self.stored_single,
            o.records,
            self.rating_s,
            per_second(o.records, self.rating_s),
            self.rated_original_micros,
            self.rated_net_micros,
            self.reference_net_micros,
            self.ok,
        )
    }
}

/// A fresh directory removed (with its contents) when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(parent: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let mut rng = rand_chacha::ChaCha20Rng::from_entropy();
        for _ in 0..16 {
            let path = parent.join(format!(
                "tessera-billing-bench-{}-{:016x}",
                std::process::id(),
                rng.r#gen::<u64>()
            ));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        anyhow::bail!(
            "could not create a fresh directory under {}",
            parent.display()
        )
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct usage events whose ids are derived, as the worker's are, from
/// (job, party, metric, attempt); `namespace` keeps different sets apart.
fn usage_events(namespace: &str, n: usize, seed: u64) -> Vec<UsageEventRecord> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let job_id = format!("{namespace}-job-{:08}", i / 8);
            let party = if (i / 4) % 2 == 0 { "alice" } else { "bob" };
            let metric = METRICS[i % METRICS.len()];
            let attempt = 1_i64;
            let event_id =
                tessera_accounting::derive_id(&[&job_id, party, metric, &attempt.to_string()]);
            UsageEventRecord {
                event_id,
                job_id,
                party: party.into(),
                metric: metric.into(),
                protocol: "rr22".into(),
                attempt,
                quantity: rng.gen_range(0..10_000_000_i64),
                event_time_ms: BENCH_EPOCH_MS + i64::try_from(i / 8).unwrap_or(0) * 1_000,
            }
        })
        .collect()
}

async fn ingest(store: &Store, events: &[UsageEventRecord], batch: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    for chunk in events.chunks(batch) {
        store.record_usage(chunk, BENCH_ARRIVAL_MS).await?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Ingestion: batched, retried, and one transaction per event (on a second database).
async fn bench_ingest(o: &BenchOptions, dir: &Path, r: &mut BenchResult) -> anyhow::Result<bool> {
    let events = usage_events("bench", o.events, o.seed);
    let store = Store::open(&dir.join("batched.db")).await?;
    r.batched_s = ingest(&store, &events, o.batch).await?;
    let stored = store.usage_events().await?;
    r.stored_after_batched = stored.len();
    let mut ok = stored == events;
    r.retry_s = ingest(&store, &events, o.batch).await?;
    let stored = store.usage_events().await?;
    r.stored_after_retry = stored.len();
    ok &= stored.len() == o.events && stored == events;
    store.close().await;

    let single = usage_events("single", o.single_events, o.seed ^ 0x5eed);
    let store = Store::open(&dir.join("single.db")).await?;
    r.single_s = ingest(&store, &single, 1).await?;
    let stored = store.usage_events().await?;
    r.stored_single = stored.len();
    ok &= stored == single;
    store.close().await;
    Ok(ok)
}

fn yuan(y: i64) -> Micros {
    y * MICROS_PER_UNIT
}

/// A postpaid plan: 0.50 per job; CPU-hours in graduated tiers (2.00 up to 10, 1.50 up to
/// 100, 1.00 beyond); rows at 0.01 per 1000 after 10 free thousands; capped at 100 000.
fn bench_plan() -> anyhow::Result<PricePlan> {
    let tier = |up_to: Option<u64>, micros: &str| -> anyhow::Result<Tier> {
        Ok(Tier {
            up_to,
            unit_price: parse_decimal(micros)?,
            flat_micros: 0,
        })
    };
    let plan = PricePlan {
        mode: BillingMode::Postpaid,
        components: vec![
            PriceComponent::PerJob {
                price_micros: yuan(1) / 2,
            },
            PriceComponent::Graduated {
                metric: Metric::CpuMillis,
                unit_size: MS_PER_HOUR as u64,
                tiers: vec![
                    tier(Some(10), "2000000")?,
                    tier(Some(100), "1500000")?,
                    tier(None, "1000000")?,
                ],
                free_units: 0,
                round_up: false,
            },
            PriceComponent::PerUnit {
                metric: Metric::Rows,
                unit_size: 1_000,
                price: parse_decimal("10000")?,
                free_units: 10,
                round_up: false,
            },
        ],
        cap_micros: Some(yuan(100_000)),
        minimum_micros: None,
    };
    plan.validate()?;
    Ok(plan)
}

fn customer_name(i: usize) -> String {
    format!("customer-{i:03}")
}

/// A 0.9 platform discount on the product and 0.8 customer discounts for some customers,
/// stacked (customer first).
fn bench_discounts() -> anyhow::Result<DiscountBook> {
    let discount = |id: String, source, customer: Option<String>, factor: &str| {
        Ok::<_, anyhow::Error>(Discount {
            id,
            source,
            customer,
            product: Some(BENCH_PRODUCT.into()),
            range: DiscountRange::Unlimited,
            factor: parse_decimal(factor)?,
            valid_from: 0,
            valid_until: None,
            enabled: true,
        })
    };
    let mut discounts = vec![discount(
        "platform-10-off".into(),
        DiscountSource::Platform,
        None,
        "0.9",
    )?];
    for i in 0..DISCOUNTED_CUSTOMERS {
        discounts.push(discount(
            format!("vip-{i}"),
            DiscountSource::Customer,
            Some(customer_name(i)),
            "0.8",
        )?);
    }
    let book = DiscountBook {
        discounts,
        strategy: DiscountStrategy::Stacked(StackOrder::CustomerFirst),
        ..DiscountBook::default()
    };
    book.validate()?;
    Ok(book)
}

/// The reference charge: 1 job, 12 CPU-hours, 50 000 rows for a discounted customer.
/// 0.50 + (10 × 2.00 + 2 × 1.50) + (50 − 10) × 0.01 = 23.90; × 0.8 = 19.12; × 0.9 = 17.208.
const REFERENCE_NET_MICROS: Micros = 17_208_000;

fn bench_rating(o: &BenchOptions, r: &mut BenchResult) -> anyhow::Result<bool> {
    let plan = bench_plan()?;
    let book = bench_discounts()?;
    let customers: Vec<String> = (0..BENCH_CUSTOMERS).map(customer_name).collect();
    let discounted = customer_name(0);
    let reference = rate(
        &plan,
        &Usage {
            jobs: 1,
            cpu_millis: 12 * MS_PER_HOUR as u64,
            rows: 50_000,
            ..Usage::default()
        },
        &book,
        &RatingContext {
            customer: &discounted,
            product: BENCH_PRODUCT,
            at: BENCH_ARRIVAL_MS,
        },
    )?;
    r.reference_net_micros = reference.net_micros();
    let mut ok = r.reference_net_micros == REFERENCE_NET_MICROS;

    // Usage of one job each: up to 200 CPU-hours (all three tiers), up to 10 M rows.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(o.seed ^ 0x7a7e);
    let usage: Vec<(usize, Usage)> = (0..o.records)
        .map(|_| {
            (
                rng.gen_range(0..customers.len()),
                Usage {
                    jobs: 1,
                    cpu_millis: rng.gen_range(0..200 * MS_PER_HOUR as u64),
                    rows: rng.gen_range(0..10_000_000),
                    resource_millis: rng.gen_range(0..4 * MS_PER_HOUR as u64),
                    ..Usage::default()
                },
            )
        })
        .collect();
    let (mut original, mut net) = (0_i128, 0_i128);
    let t0 = Instant::now();
    for (c, u) in &usage {
        let customer = customers.get(*c).map_or("", String::as_str);
        let ctx = RatingContext {
            customer,
            product: BENCH_PRODUCT,
            at: BENCH_ARRIVAL_MS,
        };
        let charge = rate(&plan, std::hint::black_box(u), &book, &ctx)?;
        original += i128::from(charge.original_micros());
        net += i128::from(charge.net_micros());
    }
    r.rating_s = t0.elapsed().as_secs_f64();
    r.rated_original_micros = original;
    r.rated_net_micros = net;
    ok &= net > 0 && net < original;
    Ok(ok)
}

async fn bench(o: &BenchOptions) -> anyhow::Result<BenchResult> {
    anyhow::ensure!(
        (1..=MAX_BENCH_EVENTS).contains(&o.events),
        "--events must be 1..={MAX_BENCH_EVENTS}"
    );
    anyhow::ensure!(
        (1..=MAX_BENCH_EVENTS).contains(&o.single_events),
        "--single-events must be 1..={MAX_BENCH_EVENTS}"
    );
    anyhow::ensure!(o.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        (1..=MAX_BENCH_RECORDS).contains(&o.records),
        "--records must be 1..={MAX_BENCH_RECORDS}"
    );
    let scratch = ScratchDir::create(&o.dir)?;
    let mut r = BenchResult {
        batched_s: 0.0,
        retry_s: 0.0,
        single_s: 0.0,
        rating_s: 0.0,
        stored_after_batched: 0,
        stored_after_retry: 0,
        stored_single: 0,
        rated_original_micros: 0,
        rated_net_micros: 0,
        reference_net_micros: 0,
        ok: false,
    };
    let ingest_ok = bench_ingest(o, &scratch.0, &mut r).await?;
    drop(scratch);
    let rating_ok = bench_rating(o, &mut r)?;
    r.ok = ingest_ok && rating_ok;
    Ok(r)
}
