//! What the protocol test binaries share: a bounded wait, both roles over a `MemLink`, the
//! plaintext reference and generated keys.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::MemLink;
use tessera_psi::{
    NoProgress, PsiConfig, PsiError, ReceiverOutput, SenderOutput, run_receiver, run_sender,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `f`, failing the test if it takes longer than two minutes (a protocol hang).
pub async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out (protocol hang?)")
}

/// Both roles over one `MemLink`, concurrently, with RNGs seeded from `seed`.
pub async fn run_both(
    r_items: &[Vec<u8>],
    s_items: &[Vec<u8>],
    r_cfg: &PsiConfig,
    s_cfg: &PsiConfig,
    seed: u64,
) -> (
    Result<ReceiverOutput, PsiError>,
    Result<SenderOutput, PsiError>,
) {
    let (a, b) = MemLink::pair();
    let mut r_rng = ChaCha20Rng::seed_from_u64(seed);
    let mut s_rng = ChaCha20Rng::seed_from_u64(seed ^ 0xdead_beef);
    bounded(async {
        tokio::join!(
            run_receiver(&a, r_items, r_cfg, &mut r_rng, &NoProgress),
            run_sender(&b, s_items, s_cfg, &mut s_rng, &NoProgress),
        )
    })
    .await
}

/// Plaintext reference: first-occurrence indices of distinct receiver items also in the
/// sender's set, and both distinct sizes.
pub fn reference(r_items: &[Vec<u8>], s_items: &[Vec<u8>]) -> (Vec<usize>, u64, u64) {
    let s: HashSet<&[u8]> = s_items.iter().map(Vec::as_slice).collect();
    let mut seen = HashSet::new();
    let mut hits = Vec::new();
    for (i, x) in r_items.iter().enumerate() {
        if seen.insert(x.as_slice()) && s.contains(x.as_slice()) {
            hits.push(i);
        }
    }
    (hits, seen.len() as u64, s.len() as u64)
}

/// `key-{i}` for each `i` in `range`.
pub fn keys(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range.map(|i| format!("key-{i}").into_bytes()).collect()
}
