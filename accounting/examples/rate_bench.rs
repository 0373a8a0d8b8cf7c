//! Rating throughput: rates 1e6 synthetic usage records against a realistic plan (per job,
//! per 1000 rows, graduated CPU-hours with a free allowance, a cap) and prints charges rated
//! per second, once without and once with discounts.
//!
//! Run with `cargo run --release -p tessera-accounting --example rate_bench`.

use std::hint::black_box;
use std::time::Instant;

use rust_decimal::Decimal;
use tessera_accounting::discount::{
    Discount, DiscountBook, DiscountRange, DiscountSource, DiscountStrategy, StackOrder,
};
use tessera_accounting::rating::{
    BillingMode, Metric, PriceComponent, PricePlan, RatingContext, Tier, Usage, rate,
    rate_plan_unchecked,
};

const RECORDS: usize = 1_000_000;

fn plan() -> PricePlan {
    PricePlan {
        mode: BillingMode::Postpaid,
        components: vec![
            PriceComponent::PerJob {
                price_micros: 1_000_000,
            },
            PriceComponent::PerUnit {
                metric: Metric::Rows,
                unit_size: 1000,
                price: Decimal::new(50_000, 0),
                free_units: 0,
                round_up: false,
            },
            PriceComponent::Graduated {
                metric: Metric::CpuMillis,
                unit_size: 3_600_000,
                tiers: vec![
                    Tier {
                        up_to: Some(10),
                        unit_price: Decimal::new(3_000_000, 0),
                        flat_micros: 0,
                    },
                    Tier {
                        up_to: None,
                        unit_price: Decimal::new(2_500_000, 0),
                        flat_micros: 0,
                    },
                ],
                free_units: 1,
                round_up: false,
            },
        ],
        cap_micros: Some(500_000_000),
        minimum_micros: None,
    }
}

fn records() -> Vec<Usage> {
    // xorshift64*: deterministic synthetic usage.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..RECORDS)
        .map(|_| Usage {
            jobs: 1 + next() % 3,
            rows: next() % 5_000_000,
            cpu_millis: next() % 72_000_000,
            ..Usage::default()
        })
        .collect()
}

fn main() {
    let plan = plan();
    if let Err(e) = plan.validate() {
        eprintln!("invalid plan: {e}");
        return;
    }
    let usage = records();

    let start = Instant::now();
    let mut total: i128 = 0;
    for u in &usage {
        match rate_plan_unchecked(&plan, black_box(u)) {
            Ok(r) => total += i128::from(r.original_micros),
            Err(e) => {
                eprintln!("rating failed: {e}");
                return;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rate_plan: {RECORDS} records in {secs:.3} s = {:.0} charges/s (total {} micros)",
        RECORDS as f64 / secs,
        total
    );

    let book = DiscountBook {
        discounts: vec![
            Discount {
                id: "platform".into(),
                source: DiscountSource::Platform,
                customer: None,
                product: None,
                range: DiscountRange::Unlimited,
                factor: Decimal::new(9, 1),
                valid_from: 0,
                valid_until: None,
                enabled: true,
            },
            Discount {
                id: "vip".into(),
                source: DiscountSource::Customer,
                customer: Some("acme".into()),
                product: None,
                range: DiscountRange::Amount {
                    from: 1_000_000,
                    to: None,
                },
                factor: Decimal::new(8, 1),
                valid_from: 0,
                valid_until: None,
                enabled: true,
            },
        ],
        strategy: DiscountStrategy::Stacked(StackOrder::CustomerFirst),
        ..DiscountBook::default()
    };
    let ctx = RatingContext {
        customer: "acme",
        product: "psi",
        at: 1_633_000_000_000,
    };
    let start = Instant::now();
    let mut net: i128 = 0;
    for u in &usage {
        match rate(&plan, black_box(u), &book, &ctx) {
            Ok(r) => net += i128::from(r.net_micros()),
            Err(e) => {
                eprintln!("rating failed: {e}");
                return;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rate (validated plan + 2 discounts): {RECORDS} records in {secs:.3} s = {:.0} charges/s (net {} micros)",
        RECORDS as f64 / secs,
        net
    );
}
