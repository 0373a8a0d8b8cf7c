//! Ledger posting: batches of 100 balanced transfers posted atomically by the store
//! (`Store::post_transfers`) into a SQLite file in a temporary directory.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_accounting::{TransferSpec, derive_id};
use tessera_store::Store;

const BATCH: usize = 100;

fn batch(n: u64) -> Vec<TransferSpec> {
    (0..BATCH)
        .map(|i| TransferSpec {
            id: derive_id(&["bench", &n.to_string(), &i.to_string()]),
            debit: "external:bench".into(),
            credit: format!("customer:u{}:cash", i % 10),
            amount_micros: 1_000,
            job_id: None,
            memo: "bench deposit".into(),
        })
        .collect()
}

fn posting(c: &mut Criterion) {
    // Set-up failures end the bench run loudly: a bench that silently skips measures nothing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = rt
        .block_on(Store::open(&dir.path().join("bench.db")))
        .expect("store");
    let next = AtomicU64::new(0);
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("post_transfers_100", |b| {
        b.iter(|| {
            let transfers = batch(next.fetch_add(1, Ordering::Relaxed));
            rt.block_on(store.post_transfers(&transfers, 1_700_000_000_000))
        })
    });
    group.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, posting);
criterion_main!(benches);
