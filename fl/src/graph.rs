//! The communication graph: who shares with whom (Bell et al. CCS 2020, §3 and §4.2, a
//! Harary graph on a random permutation of the clients).
//!
//! Clients are placed on a ring in the order of a permutation drawn from the public session
//! id (ChaCha20 seeded by SHA-256 of a label and the session id, so every party computes the
//! same graph without a message). With `k` the configured `neighbours` (Flower's `num_shares`:
//! the size of a client's share group, itself included), client `u`'s neighbours are the
//! `(k − 1)/2` clients on each side of it on the ring; with `k = clients` the graph is complete
//! (the original SecAgg of Bonawitz et al. CCS 2017). Every client has exactly `k − 1`
//! neighbours and the relation is symmetric.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};

use crate::{ClientId, SecAggConfig};

/// The neighbour relation of one session.
#[derive(Debug, Clone)]
pub struct Graph {
    order: Vec<u32>,
    pos: Vec<u32>,
    half: u32,
    complete: bool,
}

impl Graph {
    /// The graph of a validated configuration.
    pub fn new(config: &SecAggConfig) -> Graph {
        let n = config.clients;
        let digest: [u8; 32] = Sha256::new()
            .chain_update(b"tessera-fl/secagg+/v1/graph")
            .chain_update(config.session_id)
            .finalize()
            .into();
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(digest);
        let mut order: Vec<u32> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut pos = vec![0u32; n as usize];
        for (p, &id) in order.iter().enumerate() {
            if let Some(slot) = pos.get_mut(id as usize) {
                *slot = p as u32;
            }
        }
        Graph {
            order,
            pos,
            half: config.neighbours.saturating_sub(1) / 2,
            complete: config.neighbours >= n,
        }
    }

    /// Client `u`'s neighbours (not `u` itself), sorted by id; empty for an unknown id.
    pub fn neighbours(&self, u: ClientId) -> Vec<ClientId> {
        let n = self.order.len() as u32;
        let Some(&p) = self.pos.get(u.0 as usize) else {
            return Vec::new();
        };
        let mut out: Vec<ClientId> = if self.complete {
            (0..n).filter(|&v| v != u.0).map(ClientId).collect()
        } else {
            (1..=self.half)
                .flat_map(|d| [(p + d) % n, (p + n - d) % n])
                .filter_map(|q| self.order.get(q as usize).copied())
                .map(ClientId)
                .collect()
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `u` and `v` are neighbours (distinct and adjacent).
    pub fn adjacent(&self, u: ClientId, v: ClientId) -> bool {
        if u == v {
            return false;
        }
        if self.complete {
            return (u.0 as usize) < self.pos.len() && (v.0 as usize) < self.pos.len();
        }
        let (Some(&pu), Some(&pv)) = (self.pos.get(u.0 as usize), self.pos.get(v.0 as usize))
        else {
            return false;
        };
        let n = self.order.len() as u32;
        let d = pu.abs_diff(pv);
        d.min(n - d) <= self.half
    }
}
