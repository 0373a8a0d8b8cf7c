//! RB-OKVS (`psi/src/okvs.rs`): encode (single-threaded) and decode (rayon) of 2^16 and 2^20
//! random keys, the OKVS step of the VOLE-based PSI.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cryprot_core::Block;
use rand::{Rng, SeedableRng};
use tessera_psi::okvs::RbOkvs;

fn random_blocks(rng: &mut rand_chacha::ChaCha20Rng, count: usize) -> Vec<Block> {
    (0..count)
        .map(|_| Block::from(rng.r#gen::<u128>()))
        .collect()
}

fn okvs(c: &mut Criterion) {
    let mut group = c.benchmark_group("okvs");
    group.sample_size(10);
    for log_n in [16u32, 20] {
        let n = 1usize << log_n;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(log_n));
        let Ok(okvs) = RbOkvs::new(n, Block::from(rng.r#gen::<u128>())) else {
            continue;
        };
        let keys = random_blocks(&mut rng, n);
        let values = random_blocks(&mut rng, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &n, |b, _| {
            b.iter(|| okvs.encode(std::hint::black_box(&keys), &values))
        });
        let Ok(p) = okvs.encode(&keys, &values) else {
            continue;
        };
        group.bench_with_input(BenchmarkId::new("decode", n), &n, |b, _| {
            b.iter(|| okvs.decode(&p, std::hint::black_box(&keys)))
        });
    }
    group.finish();
}

criterion_group!(benches, okvs);
criterion_main!(benches);
