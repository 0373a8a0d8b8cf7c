//! Rating: one price plan (per job + graduated per-1,000-rows tiers) over one usage record,
//! as `accounting::rating` does for every charge.

use criterion::{Criterion, criterion_group, criterion_main};
use rust_decimal::Decimal;
use tessera_accounting::rating::{
    BillingMode, Metric, PriceComponent, PricePlan, Tier, Usage, rate_plan,
};

fn plan() -> PricePlan {
    let tier = |up_to, price: i64| Tier {
        up_to,
        unit_price: Decimal::from(price),
        flat_micros: 0,
    };
    PricePlan {
        mode: BillingMode::Postpaid,
        components: vec![
            PriceComponent::PerJob {
                price_micros: 5_000_000,
            },
            PriceComponent::Graduated {
                metric: Metric::Rows,
                unit_size: 1_000,
                tiers: vec![
                    tier(Some(100), 20_000),
                    tier(Some(1_000), 15_000),
                    tier(None, 10_000),
                ],
                free_units: 10,
                round_up: true,
            },
        ],
        cap_micros: Some(50_000_000),
        minimum_micros: None,
    }
}

fn rating(c: &mut Criterion) {
    let plan = plan();
    let usage = Usage {
        jobs: 1,
        rows: 1_234_567,
        ..Usage::default()
    };
    c.bench_function("rating/graduated_rows", |b| {
        b.iter(|| rate_plan(std::hint::black_box(&plan), std::hint::black_box(&usage)))
    });
}

criterion_group!(benches, rating);
criterion_main!(benches);
