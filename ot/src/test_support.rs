//! What the OT extensions' unit tests share: seeded RNGs, random choices, and the check of one
//! random-OT extension's outputs against its choices.

use std::collections::HashSet;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::Block;

pub(crate) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(crate) fn random_choices(count: usize, r: &mut ChaCha20Rng) -> Vec<bool> {
    (0..count).map(|_| r.next_u32() & 1 == 1).collect()
}

/// Checks one extension's outputs against the choices: each key is the chosen message and not
/// the other, all `m0` are distinct, and (random OT: the keys are hashed) `m0 ⊕ m1` is not a
/// constant.
pub(crate) fn check(pairs: &[[Block; 2]], keys: &[Block], choices: &[bool]) {
    let count = choices.len();
    assert_eq!(pairs.len(), count);
    assert_eq!(keys.len(), count);
    for (i, ((pair, key), &c)) in pairs.iter().zip(keys).zip(choices).enumerate() {
        assert_eq!(*key, pair[usize::from(c)], "OT {i} of {count}");
        assert_ne!(*key, pair[usize::from(!c)], "OT {i} of {count}");
    }
    let m0: HashSet<u128> = pairs.iter().map(|p| u128::from(p[0])).collect();
    assert_eq!(m0.len(), count, "all m0 distinct");
    let deltas: HashSet<u128> = pairs.iter().map(|p| u128::from(p[0] ^ p[1])).collect();
    assert_eq!(deltas.len(), count, "m0 ⊕ m1 varies");
}
