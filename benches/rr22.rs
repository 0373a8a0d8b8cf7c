//! The rr22 PSI's other kernels: the silent VOLE (the whole stack, both parties over an
//! in-memory link: base OT, IKNP, noisy VOLE, PPRF expansion, expand-convolute compression) for
//! the OKVS length of 2^16 and 2^20 receiver items, and the item hashing (BLAKE3, rayon) of
//! 2^16 and 2^20 items. The OKVS itself is `benches/okvs.rs`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cryprot_core::Block;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::MemLink;
use tessera_ot::silent_vole;
use tessera_psi::okvs::RbOkvs;

fn vole(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("silent_vole");
    group.sample_size(10);
    for log_n in [16u32, 20] {
        let Ok(okvs) = RbOkvs::new(1 << log_n, Block::ZERO) else {
            continue;
        };
        let m = okvs.size();
        group.throughput(Throughput::Elements(m as u64));
        group.bench_with_input(BenchmarkId::new("both_parties", m), &m, |b, &m| {
            b.iter(|| {
                rt.block_on(async {
                    let (ls, lr) = MemLink::pair();
                    let mut s_rng = ChaCha20Rng::seed_from_u64(1);
                    let mut r_rng = ChaCha20Rng::seed_from_u64(2);
                    let (s, r) = tokio::join!(
                        silent_vole::send(&ls, &mut s_rng, m),
                        silent_vole::receive(&lr, &mut r_rng, m)
                    );
                    (s.is_ok(), r.is_ok())
                })
            })
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("rr22_item_digests");
    group.sample_size(10);
    for log_n in [16u32, 20] {
        let n = 1usize << log_n;
        let items: Vec<Vec<u8>> = (0..n).map(|i| format!("{i:032x}").into_bytes()).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("blake3", n), &n, |b, _| {
            b.iter(|| tessera_psi::rr22::bench_item_digests(std::hint::black_box(&items)))
        });
    }
    group.finish();
}

criterion_group!(benches, vole, hashing);
criterion_main!(benches);
