//! Regular punctured PRF from GGM trees, the sparse-vector step of silent VOLE: the
//! distributed generation of punctured GGM keys from one OT per tree level of Boyle, Couteau,
//! Gilboa, Ishai, Kohl, Scholl, "Efficient Pseudorandom Correlation Generators: Silent OT
//! Extension and More" (CRYPTO 2019; the sibling-sum technique is Doerner–shelat's, "Scaling
//! ORAM for Secure Computation", CCS 2017), one tree per noise point for regular noise.
//!
//! # Construction
//!
//! `trees` independent GGM trees of `domain` leaves each; `depth = ⌈log2 domain⌉` (a domain
//! that is not a power of two keeps only the nodes whose subtree meets `0..domain`: level `l`
//! has `⌈domain / 2^(depth-l)⌉` nodes, and a level's last node may lack its right child).
//! A node `s` has the children `G_0(s), G_1(s)` with `G_b(s) = s ⊕ AES-128_{K_b}(s)` for two
//! fixed public keys `K_0, K_1` (fixed-key AES in Matyas–Meyer–Oseas form, as in libOTe and
//! CryProt; secure when AES is modelled as a random permutation, Guo–Katz–Wang–Yu, S&P 2020).
//!
//! The PPRF **sender** (the VOLE sender) draws each tree's root from its RNG and expands it. For
//! each tree `j` and level `d` (children level `d+1`) it has the XOR `S^0_{j,d}` of all left
//! children and `S^1_{j,d}` of all right children, and sends `S^b_{j,d} ⊕ k^b_{j,d}` for
//! `b ∈ {0,1}`, masked with the pair of the OT `(j, d)`. The PPRF **receiver** (the VOLE
//! receiver), puncturing leaf `p_j`, chose for OT `(j, d)` the side of the path's *sibling* at
//! level `d+1` (see [`PprfConfig::choice_bits`]); it unmasks that side's sum, from which it
//! recovers the sibling (the sum minus the same-side children it can already compute), and so
//! every node except those on the path to `p_j`. Finally the sender sends one correction per
//! tree, `Σ_k leaf_{j,k} ⊕ corrections[j]`, and the receiver sets its punctured leaf to
//! `correction ⊕ Σ_{k≠p_j} leaf_{j,k} ⊕ corrections[j]`. When the callers' `corrections` are
//! noisy-VOLE shares of `β_j·Δ` (sender `B_j`, receiver `C_j = B_j ⊕ β_j·Δ`), the receiver's
//! punctured leaf is `sender_leaf ⊕ β_j·Δ` and every other leaf equals the sender's.
//!
//! # Threat model
//!
//! Semi-honest. The sender receives nothing here and, by OT security, learns nothing about the
//! points. The receiver learns every leaf except the punctured ones (by design), and at
//! `p_j` only `leaf_{j,p_j} ⊕ β_j·Δ` (it knows `C_j`); the punctured leaf is pseudorandom to it
//! under GGM security, so `Δ` stays hidden. Each OT and each root must be used once. Nothing
//! is checked against a malicious party: a sender can send inconsistent sums (the receiver's
//! leaves then depend on its points: selective failure), and a receiver can use choice bits
//! of no single path.
//!
//! # Bounds
//!
//! `1..=TREES_MAX` trees, `1..=DOMAIN_MAX` leaves each, at most `SIZE_MAX` leaves in all;
//! [`PprfConfig::new`] refuses the rest with [`OtError::InvalidArgument`], so every
//! allocation here is bounded by the caller's configuration, never by the peer. The peer's
//! frames are exactly `2 · trees · depth` and `trees` blocks.
//!
//! # Message flow
//!
//! 1. Sender → receiver: [`wire::KIND_PPRF_LEVELS`], `2 · trees · depth` blocks, tree-major,
//!    then level, then side (`[j][d][b]`).
//! 2. Sender → receiver: [`wire::KIND_PPRF_CORRECTIONS`], `trees` blocks.

use std::sync::LazyLock;

use cryprot_core::aes_hash::AesHash;
use rand_core::CryptoRngCore;
use rayon::prelude::*;
use tessera_core::Link;

use crate::noisy_vole::{random_block, wipe};
use crate::wire::{self, KIND_PPRF_CORRECTIONS, KIND_PPRF_LEVELS};
use crate::{Block, OtError};

/// Most trees of one PPRF.
pub const TREES_MAX: usize = 1 << 12;
/// Most leaves of one tree (depth at most 28).
pub const DOMAIN_MAX: usize = 1 << 28;
/// Most leaves over all trees: the output is `SIZE_MAX` blocks (8 GiB) at the bound, enough
/// for [`crate::silent_vole::VOLE_MAX`] correlations.
pub const SIZE_MAX: usize = 1 << 29;

/// The two fixed public AES keys of the GGM expansion (`G_0`, `G_1`), 16 ASCII bytes each.
static GGM: LazyLock<[AesHash; 2]> = LazyLock::new(|| {
    [*b"tessera-ggm-left", *b"tessera-ggm-righ"]
        .map(|key| AesHash::new(&Block::from(u128::from_le_bytes(key)).into()))
});

/// Nodes expanded together (AES instruction-level parallelism, stack buffers).
const CHUNK_NODES: usize = 64;

/// The shape of a PPRF: `trees` GGM trees of `domain` leaves each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PprfConfig {
    trees: usize,
    domain: usize,
    depth: usize,
}

impl PprfConfig {
    /// A PPRF of `trees` trees with `domain` leaves each (`domain` need not be a power of two).
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `trees` is not in `1..=TREES_MAX`, `domain` not in
    /// `1..=DOMAIN_MAX`, or `trees · domain > SIZE_MAX`.
    pub fn new(trees: usize, domain: usize) -> Result<Self, OtError> {
        if trees == 0 || trees > TREES_MAX {
            return Err(OtError::InvalidArgument(format!(
                "PPRF of {trees} trees; 1..={TREES_MAX} allowed"
            )));
        }
        if domain == 0 || domain > DOMAIN_MAX {
            return Err(OtError::InvalidArgument(format!(
                "PPRF domain of {domain} leaves; 1..={DOMAIN_MAX} allowed"
            )));
        }
        if trees.saturating_mul(domain) > SIZE_MAX {
            return Err(OtError::InvalidArgument(format!(
                "PPRF of {trees} × {domain} leaves; at most {SIZE_MAX} allowed"
            )));
        }
        let depth = (usize::BITS - (domain - 1).leading_zeros()) as usize;
        Ok(Self {
            trees,
            domain,
            depth,
        })
    }

    /// Number of trees (punctured points).
    pub fn trees(&self) -> usize {
        self.trees
    }

    /// Leaves per tree.
    pub fn domain(&self) -> usize {
        self.domain
    }

    /// Levels below the root, `⌈log2 domain⌉` (0 for a one-leaf domain).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// OTs the PPRF consumes: one per tree and level, `trees · depth`.
    pub fn ot_count(&self) -> usize {
        self.trees * self.depth
    }

    /// Leaves over all trees, `trees · domain`: the length of both parties' output.
    pub fn size(&self) -> usize {
        self.trees * self.domain
    }

    /// The OT choice bits the receiver must use to puncture tree `j` at `points[j]`, in the
    /// order [`send`] and [`receive`] consume the OTs (tree-major, then level from the root):
    /// for level `d`, the side of the path's sibling at level `d+1`, i.e. the complement of bit
    /// `depth-1-d` of the point.
    ///
    /// # Errors
    /// [`OtError::InvalidArgument`] if `points.len() != trees` or a point is `≥ domain`.
    pub fn choice_bits(&self, points: &[usize]) -> Result<Vec<bool>, OtError> {
        self.check_points(points)?;
        Ok(self.choice_bits_unchecked(points))
    }

    pub(crate) fn choice_bits_unchecked(&self, points: &[usize]) -> Vec<bool> {
        points
            .iter()
            .flat_map(|&p| (0..self.depth).map(move |d| (p >> (self.depth - 1 - d)) & 1 == 0))
            .collect()
    }

    fn check_points(&self, points: &[usize]) -> Result<(), OtError> {
        if points.len() != self.trees {
            return Err(OtError::InvalidArgument(format!(
                "{} punctured points for {} trees",
                points.len(),
                self.trees
            )));
        }
        if let Some(j) = points.iter().position(|&p| p >= self.domain) {
            return Err(OtError::InvalidArgument(format!(
                "the punctured point of tree {j} is outside its domain of {} leaves",
                self.domain
            )));
        }
        Ok(())
    }

    fn check_lengths(&self, ots: usize, corrections: usize) -> Result<(), OtError> {
        if ots != self.ot_count() {
            return Err(OtError::InvalidArgument(format!(
                "PPRF needs {} OTs, got {ots}",
                self.ot_count()
            )));
        }
        if corrections != self.trees {
            return Err(OtError::InvalidArgument(format!(
                "PPRF needs {} corrections, got {corrections}",
                self.trees
            )));
        }
        Ok(())
    }

    /// Nodes at level `l` (`0 ..= depth`) of a tree.
    fn width(&self, l: usize) -> usize {
        self.domain.div_ceil(1 << (self.depth - l))
    }
}

/// PPRF sender (the VOLE sender): draws the trees' roots from `rng`; `ots` are
/// [`PprfConfig::ot_count`] OT-sender pairs; `corrections[j]` is added to tree `j`'s correction
/// (pass the noisy-VOLE `B` values). Returns all leaves, tree-major: `out[j·domain + k]`.
///
/// # Errors
/// [`OtError::InvalidArgument`] if `ots` or `corrections` has the wrong length; a link error.
pub async fn send<R: CryptoRngCore + Send>(
    link: &dyn Link,
    cfg: &PprfConfig,
    ots: &[[Block; 2]],
    corrections: &[Block],
    rng: &mut R,
) -> Result<Vec<Block>, OtError> {
    cfg.check_lengths(ots.len(), corrections.len())?;
    let (domain, depth) = (cfg.domain, cfg.depth);
    let mut roots: Vec<Block> = (0..cfg.trees).map(|_| random_block(rng)).collect();
    let (cfg, mut ots, corrections) = (*cfg, ots.to_vec(), corrections.to_vec());
    // The expansion runs on rayon's pool, off the async executor.
    let (leaves, levels, sums) = crate::offload(move || {
        let mut leaves = vec![Block::ZERO; cfg.size()];
        let per_tree: Vec<(Vec<Block>, Block)> = leaves
            .par_chunks_exact_mut(domain)
            .zip(roots.par_iter())
            .zip(corrections.par_iter())
            .enumerate()
            .map(|(j, ((tree, root), correction))| {
                let tree_ots = &ots[j * depth..(j + 1) * depth];
                tree[0] = *root;
                let mut levels = Vec::with_capacity(2 * depth);
                for (d, [k0, k1]) in tree_ots.iter().enumerate() {
                    let [s0, s1] = expand_level(tree, cfg.width(d), cfg.width(d + 1));
                    levels.extend([s0 ^ *k0, s1 ^ *k1]);
                }
                let sum = tree.iter().fold(*correction, |acc, leaf| acc ^ *leaf);
                (levels, sum)
            })
            .collect();
        wipe(&mut roots);
        for pair in &mut ots {
            wipe(pair);
        }
        let levels: Vec<Block> = per_tree
            .iter()
            .flat_map(|(l, _)| l.iter().copied())
            .collect();
        let sums: Vec<Block> = per_tree.iter().map(|(_, s)| *s).collect();
        (leaves, levels, sums)
    })
    .await;
    wire::send_blocks(link, KIND_PPRF_LEVELS, &levels).await?;
    wire::send_blocks(link, KIND_PPRF_CORRECTIONS, &sums).await?;
    Ok(leaves)
}

/// PPRF receiver (the VOLE receiver): `points[j]` is the punctured leaf of tree `j`; `ots` are
/// the OT-receiver outputs for the choice bits [`PprfConfig::choice_bits`]`(points)`;
/// `corrections[j]` the noisy-VOLE `C` values. Returns the leaves, tree-major, equal to the
/// sender's except `out[j·domain + points[j]] = correction_j ⊕ Σ_{k≠points[j]} out[j·domain + k]
/// ⊕ corrections[j]`, which is `sender_leaf ⊕ β_j·Δ` when the corrections are noisy-VOLE shares
/// of `β_j·Δ`.
///
/// # Errors
/// [`OtError::InvalidArgument`] if a point is out of range or `ots`/`corrections` has the wrong
/// length (before anything is received); [`OtError::Protocol`] or [`OtError::PeerAborted`] on a
/// bad or abort frame; a link error.
pub async fn receive(
    link: &dyn Link,
    cfg: &PprfConfig,
    points: &[usize],
    ots: &[Block],
    corrections: &[Block],
) -> Result<Vec<Block>, OtError> {
    cfg.check_points(points)?;
    cfg.check_lengths(ots.len(), corrections.len())?;
    let depth = cfg.depth;
    let levels = wire::recv_blocks(link, KIND_PPRF_LEVELS, 2 * cfg.ot_count()).await?;
    let sums = wire::recv_blocks(link, KIND_PPRF_CORRECTIONS, cfg.trees).await?;
    let (cfg, points, ots, corrections) =
        (*cfg, points.to_vec(), ots.to_vec(), corrections.to_vec());
    // The expansion runs on rayon's pool, off the async executor.
    let leaves = crate::offload(move || {
        let mut leaves = vec![Block::ZERO; cfg.size()];
        leaves
            .par_chunks_exact_mut(cfg.domain)
            .enumerate()
            .for_each(|(j, tree)| {
                let p = points[j];
                puncture_tree(
                    &cfg,
                    p,
                    &levels[2 * j * depth..2 * (j + 1) * depth],
                    &ots[j * depth..(j + 1) * depth],
                    tree,
                );
                // tree[p] is zero here, so the fold is the sum of the other leaves.
                tree[p] = tree
                    .iter()
                    .fold(sums[j] ^ corrections[j], |acc, l| acc ^ *l);
            });
        leaves
    })
    .await;
    Ok(leaves)
}

/// Expands level `d` of one tree (its first `parents` entries of `buf`) into level `d+1` (the
/// first `children` entries), in place, and returns the XOR of the left and of the right
/// children. Parents are consumed from the last one down, so a child never overwrites a parent
/// that is still to be read.
fn expand_level(buf: &mut [Block], parents: usize, children: usize) -> [Block; 2] {
    let [g0, g1] = &*GGM;
    let mut sums = [Block::ZERO; 2];
    let mut end = parents;
    while end > 0 {
        let start = end.saturating_sub(CHUNK_NODES);
        let n = end - start;
        let mut left = [Block::ZERO; CHUNK_NODES];
        left[..n].copy_from_slice(&buf[start..end]);
        let mut right = left;
        g0.cr_hash_slice_mut(&mut left[..n]);
        g1.cr_hash_slice_mut(&mut right[..n]);
        for (k, (l, r)) in left[..n].iter().zip(&right[..n]).enumerate() {
            // children ≥ 2·parents - 1, so the left child always exists.
            let c = 2 * (start + k);
            buf[c] = *l;
            sums[0] ^= *l;
            if c + 1 < children {
                buf[c + 1] = *r;
                sums[1] ^= *r;
            }
        }
        wipe(&mut left);
        wipe(&mut right);
        end = start;
    }
    sums
}

/// Rebuilds one tree punctured at leaf `p` into `buf` (`domain` blocks), from the tree's masked
/// level sums `levels` (`[d][b]`) and its OT outputs `ots` (`[d]`). Path nodes, the punctured
/// leaf included, are left zero.
fn puncture_tree(cfg: &PprfConfig, p: usize, levels: &[Block], ots: &[Block], buf: &mut [Block]) {
    let depth = cfg.depth;
    buf[0] = Block::ZERO;
    for (d, key) in ots.iter().enumerate() {
        let children = cfg.width(d + 1);
        let mut sums = expand_level(buf, cfg.width(d), children);
        // Take back the (meaningless) children of the unknown path node.
        let left = 2 * (p >> (depth - d));
        sums[0] ^= buf[left];
        if left + 1 < children {
            sums[1] ^= buf[left + 1];
        }
        let path = p >> (depth - d - 1);
        let sibling = path ^ 1;
        if sibling < children {
            let side = sibling & 1;
            buf[sibling] = levels[2 * d + side] ^ *key ^ sums[side];
        }
        buf[path] = Block::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};
    use tessera_core::MemLink;

    use crate::noisy_vole::deal_ots;
    use crate::wire::KIND_ABORT;

    /// Runs both sides with corrections `B` (random) and `C = B ⊕ β_j·Δ`, and checks every
    /// leaf: equal off the points, `sender ⊕ β_j·Δ` at them.
    async fn check(
        trees: usize,
        domain: usize,
        points: Option<Vec<usize>>,
        seed: u64,
    ) -> Vec<Block> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let cfg = PprfConfig::new(trees, domain).expect("config");
        let points = points.unwrap_or_else(|| {
            (0..trees)
                .map(|_| (rng.next_u64() % domain as u64) as usize)
                .collect()
        });
        let choices = cfg.choice_bits(&points).expect("points");
        assert_eq!(choices.len(), cfg.ot_count());
        let (pairs, keys) = deal_ots(&mut rng, &choices);
        let delta = random_block(&mut rng);
        let betas: Vec<Block> = (0..trees).map(|_| random_block(&mut rng)).collect();
        let b: Vec<Block> = (0..trees).map(|_| random_block(&mut rng)).collect();
        let c: Vec<Block> = b
            .iter()
            .zip(&betas)
            .map(|(b, beta)| *b ^ beta.gf_mul(&delta))
            .collect();
        let (ls, lr) = MemLink::pair();
        let mut srng = ChaCha20Rng::seed_from_u64(seed ^ 0xFFFF);
        let (s, r) = tokio::join!(
            send(&ls, &cfg, &pairs, &b, &mut srng),
            receive(&lr, &cfg, &points, &keys, &c)
        );
        let (s, r) = (s.expect("sender"), r.expect("receiver"));
        assert_eq!(s.len(), cfg.size());
        assert_eq!(r.len(), cfg.size());
        for j in 0..trees {
            for k in 0..domain {
                let i = j * domain + k;
                if k == points[j] {
                    assert_eq!(
                        r[i],
                        s[i] ^ betas[j].gf_mul(&delta),
                        "{trees}×{domain}: tree {j} point {k}"
                    );
                } else {
                    assert_eq!(r[i], s[i], "{trees}×{domain}: tree {j} leaf {k}");
                }
            }
        }
        // The leaves look random: no zero, no repeat.
        let mut sorted: Vec<u128> = s.iter().map(|x| u128::from(*x)).collect();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), s.len());
        assert!(sorted[0] != 0);
        s
    }

    #[tokio::test]
    async fn receiver_matches_sender_off_the_points() {
        let mut seed = 0;
        for domain in [1, 2, 3, 1000, 1024] {
            for trees in [1, 5] {
                seed += 1;
                check(trees, domain, None, seed).await;
                // The edges: first and last leaf (a non-power-of-two domain's last leaf has no
                // sibling on some levels).
                check(trees, domain, Some(vec![0; trees]), seed + 100).await;
                check(trees, domain, Some(vec![domain - 1; trees]), seed + 200).await;
            }
        }
        check(3, 37, Some(vec![36, 35, 32]), 300).await;
    }

    #[tokio::test]
    async fn sender_leaves_differ_between_runs() {
        let a = check(2, 64, None, 1).await;
        let b = check(2, 64, None, 2).await;
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }

    #[test]
    fn config_bounds_and_shape() {
        for (domain, depth) in [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (1000, 10),
            (1024, 10),
            (1025, 11),
        ] {
            let cfg = PprfConfig::new(5, domain).expect("config");
            assert_eq!(cfg.depth(), depth, "domain {domain}");
            assert_eq!(cfg.ot_count(), 5 * depth);
            assert_eq!(cfg.size(), 5 * domain);
            assert_eq!(cfg.width(depth), domain);
            assert_eq!(cfg.width(0), 1);
        }
        for (trees, domain) in [
            (0, 4),
            (4, 0),
            (TREES_MAX + 1, 4),
            (1, DOMAIN_MAX + 1),
            (TREES_MAX, DOMAIN_MAX),
        ] {
            assert!(
                matches!(
                    PprfConfig::new(trees, domain),
                    Err(OtError::InvalidArgument(_))
                ),
                "{trees} × {domain}"
            );
        }
        assert!(PprfConfig::new(2, DOMAIN_MAX).is_ok());
    }

    #[test]
    fn choice_bits_are_the_sibling_sides_and_points_are_validated() {
        let cfg = PprfConfig::new(2, 6).expect("config"); // depth 3
        // 5 = 0b101: sibling sides 0, 1, 0.
        assert_eq!(
            cfg.choice_bits(&[5, 0]).expect("bits"),
            vec![false, true, false, true, true, true]
        );
        for points in [&[6, 0][..], &[0, usize::MAX][..], &[0][..], &[0, 0, 0][..]] {
            assert!(matches!(
                cfg.choice_bits(points),
                Err(OtError::InvalidArgument(_))
            ));
        }
        let one = PprfConfig::new(3, 1).expect("config");
        assert_eq!(
            one.choice_bits(&[0, 0, 0]).expect("bits"),
            Vec::<bool>::new()
        );
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_before_any_traffic() {
        let cfg = PprfConfig::new(2, 8).expect("config");
        let (ls, lr) = MemLink::pair();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let pairs = vec![[Block::ZERO; 2]; cfg.ot_count()];
        let keys = vec![Block::ZERO; cfg.ot_count()];
        let two = [Block::ZERO; 2];
        assert!(matches!(
            send(&ls, &cfg, &pairs[1..], &two, &mut rng).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            send(&ls, &cfg, &pairs, &two[1..], &mut rng).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &cfg, &[0, 8], &keys, &two).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &cfg, &[0, 7], &keys[1..], &two).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert!(matches!(
            receive(&lr, &cfg, &[0, 7], &keys, &[Block::ZERO; 3]).await,
            Err(OtError::InvalidArgument(_))
        ));
        assert_eq!(ls.stats().frames_sent + lr.stats().frames_sent, 0);
    }

    fn frame(kind: u8, items: u32, payload_bytes: usize) -> Vec<u8> {
        let mut f = vec![kind];
        f.extend_from_slice(&items.to_le_bytes());
        f.resize(f.len() + payload_bytes, 0x5A);
        f
    }

    /// The receiver's result (2 trees of 8 leaves: 12 level blocks, 2 corrections) after the
    /// peer sent `frames` and dropped its end.
    async fn receive_after(frames: Vec<Vec<u8>>) -> Result<Vec<Block>, OtError> {
        let cfg = PprfConfig::new(2, 8).expect("config");
        let (ls, lr) = MemLink::pair();
        for f in frames {
            ls.send(Bytes::from(f)).await.expect("queue");
        }
        drop(ls);
        receive(&lr, &cfg, &[1, 6], &[Block::ZERO; 6], &[Block::ZERO; 2]).await
    }

    #[tokio::test]
    async fn hostile_frames_are_typed_errors() {
        let levels = || frame(KIND_PPRF_LEVELS, 12, 12 * 16);
        let r = receive_after(vec![levels(), frame(KIND_PPRF_CORRECTIONS, 2, 32)]).await;
        assert!(
            r.is_ok(),
            "garbage of the right shape is not detectable: {r:?}"
        );
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (vec![frame(KIND_PPRF_LEVELS, 13, 13 * 16)], "protocol"),
            (vec![frame(KIND_PPRF_CORRECTIONS, 2, 32)], "protocol"),
            (vec![levels(), levels()], "protocol"),
            (
                vec![levels(), frame(KIND_PPRF_CORRECTIONS, 3, 48)],
                "protocol",
            ),
            (
                vec![levels(), frame(KIND_PPRF_CORRECTIONS, 2, 31)],
                "protocol",
            ),
            (vec![vec![KIND_PPRF_LEVELS]], "protocol"),
            (vec![frame(KIND_PPRF_LEVELS, 6, 6 * 16)], "link"),
            (vec![levels()], "link"),
            (vec![vec![KIND_ABORT]], "abort"),
            (vec![levels(), vec![KIND_ABORT]], "abort"),
        ];
        for (frames, want) in cases {
            let r = receive_after(frames).await;
            let ok = match want {
                "protocol" => matches!(r, Err(OtError::Protocol(_))),
                "link" => matches!(r, Err(OtError::Link(_))),
                _ => matches!(r, Err(OtError::PeerAborted(_))),
            };
            assert!(ok, "want {want}, got {r:?}");
        }
    }
}
