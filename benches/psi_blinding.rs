//! PSI blinding: hash-to-group and blind a batch of 1,000 keys (the per-item kernel both PSI
//! roles run over their whole dataset; see `psi/src/crypto.rs`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;

fn blinding(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1_000u32)
        .map(|i| format!("customer-{i:08}@example.org").into_bytes())
        .collect();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let mut group = c.benchmark_group("psi");
    group.throughput(Throughput::Elements(keys.len() as u64));
    group.bench_function("hash_and_blind_1000", |b| {
        b.iter(|| tessera_psi::bench_hash_and_blind(std::hint::black_box(&keys), &mut rng))
    });
    group.finish();
}

criterion_group!(benches, blinding);
criterion_main!(benches);
