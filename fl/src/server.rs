//! [`Server`]: the aggregator's side of a SecAgg+ round as a state machine over byte frames
//! (Bell et al. CCS 2020, Alg. 2, the server's rounds 0–3). No I/O and no clock: the caller
//! feeds it each client frame with the sender the transport authenticated
//! ([`Server::receive`]), closes each stage when every expected client has answered or the
//! transport's deadline has passed ([`Server::close_round`]), and sends what that returns.
//!
//! Cost of the last stage (the dominant one): `|U_3| + Σ_{v ∈ U_2 \ U_3} |N(v) ∩ U_3|` AES-CTR
//! streams of `dim` words, run on the rayon pool over ranges of the vector, plus one Shamir
//! reconstruction per client in `U_2` (Lagrange coefficients computed once per distinct set of
//! shareholders, with one batched inversion).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use curve25519_dalek::Scalar;
use rayon::prelude::*;
use zeroize::Zeroize;

use crate::graph::Graph;
use crate::keys::{self, KeyPair, Seed, pairwise_seed, seed_commitment};
use crate::prg::{Mask, Sign, Word, apply_masks};
use crate::wire::{self, AdvertisedKeys, ShareKind, UnmaskShare};
use crate::{ClientId, FlError, Modulus, Peer, SecAggConfig, Stage, shamir};

/// What the aggregator does after closing a stage.
#[derive(Debug)]
pub enum ServerStep {
    /// Send each frame to its client, then collect the next stage's answers.
    Send(Vec<(ClientId, Bytes)>),
    /// The round is over: the aggregate.
    Done(Aggregate),
}

/// The result of a round.
#[derive(Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// `Σ_{u ∈ U_3} x_u` modulo the session's modulus, `dim` elements.
    pub sum: Vec<u64>,
    /// `U_3`: the clients whose inputs are in the sum, sorted.
    pub survivors: Vec<ClientId>,
    /// The ring of `sum`.
    pub modulus: Modulus,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("dim", &self.sum.len())
            .field("survivors", &self.survivors)
            .field("modulus", &self.modulus)
            .finish()
    }
}

enum Acc {
    W32(Vec<u32>),
    W64(Vec<u64>),
}

/// The aggregator's state in one round. `Debug` shows the stage and the survivor counts.
pub struct Server {
    config: SecAggConfig,
    graph: Graph,
    stage: Stage,
    /// `U_1` with their advertised keys.
    keys: BTreeMap<ClientId, AdvertisedKeys>,
    u2: BTreeSet<ClientId>,
    u3: BTreeSet<ClientId>,
    /// Clients that answered the current stage.
    answered: BTreeSet<ClientId>,
    /// Encrypted shares by addressee: `(author, ciphertext)`.
    outbox: BTreeMap<ClientId, Vec<(ClientId, Vec<u8>)>>,
    acc: Acc,
    /// Unmasking shares by owner: `(holder, value)`.
    shares: BTreeMap<ClientId, Vec<(ClientId, Vec<Scalar>)>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("stage", &self.stage)
            .field("u1", &self.keys.len())
            .field("u2", &self.u2.len())
            .field("u3", &self.u3.len())
            .field("answered", &self.answered.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server waiting for `AdvertiseKeys`. Errors: [`FlError::Config`].
    pub fn new(config: &SecAggConfig) -> Result<Server, FlError> {
        config.validate()?;
        Ok(Server {
            config: config.clone(),
            graph: Graph::new(config),
            stage: Stage::AdvertiseKeys,
            keys: BTreeMap::new(),
            u2: BTreeSet::new(),
            u3: BTreeSet::new(),
            answered: BTreeSet::new(),
            outbox: BTreeMap::new(),
            acc: Acc::W32(Vec::new()),
            shares: BTreeMap::new(),
        })
    }

    /// The stage being collected.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The clients expected to answer the current stage (the previous stage's survivors that
    /// have not answered yet).
    pub fn pending(&self) -> Vec<ClientId> {
        let all: Vec<ClientId> = match self.stage {
            Stage::AdvertiseKeys => (0..self.config.clients).map(ClientId).collect(),
            Stage::ShareKeys => self.keys.keys().copied().collect(),
            Stage::MaskedInput => self.u2.iter().copied().collect(),
            Stage::Unmask => self.u3.iter().copied().collect(),
            Stage::Done => Vec::new(),
        };
        all.into_iter()
            .filter(|c| !self.answered.contains(c))
            .collect()
    }

    fn eligible(&self, c: ClientId) -> bool {
        match self.stage {
            Stage::AdvertiseKeys => c.0 < self.config.clients,
            Stage::ShareKeys => self.keys.contains_key(&c),
            Stage::MaskedInput => self.u2.contains(&c),
            Stage::Unmask => self.u3.contains(&c),
            Stage::Done => false,
        }
    }

    /// Takes one client frame of the current stage from `from` (the sender the transport
    /// authenticated). On any error the frame is ignored and the state is unchanged; the
    /// caller may treat that client as dropped. Errors: [`FlError::UnexpectedMessage`] (a
    /// frame of another stage), [`FlError::UnknownClient`] (an id outside the session or not a
    /// survivor of the previous stage), [`FlError::DuplicateClient`], [`FlError::IdMismatch`],
    /// [`FlError::MalformedMessage`], [`FlError::InconsistentLength`].
    pub fn receive(&mut self, from: ClientId, frame: &[u8]) -> Result<(), FlError> {
        let want = match self.stage {
            Stage::AdvertiseKeys => wire::KIND_ADVERTISE_KEYS,
            Stage::ShareKeys => wire::KIND_SHARE_KEYS,
            Stage::MaskedInput => wire::KIND_MASKED_INPUT,
            Stage::Unmask => wire::KIND_UNMASK_SHARES,
            Stage::Done => 0,
        };
        let kind = wire::kind_of(frame).unwrap_or(0);
        if kind != want || want == 0 {
            return Err(FlError::UnexpectedMessage {
                from: Peer::Client(from),
                kind,
                stage: self.stage,
            });
        }
        if !self.eligible(from) {
            return Err(FlError::UnknownClient(from));
        }
        if self.answered.contains(&from) {
            return Err(FlError::DuplicateClient(from));
        }
        let claimed = match self.stage {
            Stage::AdvertiseKeys => self.on_advertise(from, frame)?,
            Stage::ShareKeys => self.on_share_keys(from, frame)?,
            Stage::MaskedInput => self.on_masked_input(from, frame)?,
            _ => self.on_unmask(from, frame)?,
        };
        debug_assert_eq!(claimed, from);
        self.answered.insert(from);
        Ok(())
    }

    fn check_id(claimed: ClientId, actual: ClientId) -> Result<(), FlError> {
        if claimed != actual {
            return Err(FlError::IdMismatch { claimed, actual });
        }
        Ok(())
    }

    fn on_advertise(&mut self, from: ClientId, frame: &[u8]) -> Result<ClientId, FlError> {
        let k = wire::decode_advertise(frame, Peer::Client(from), self.config.clients)?;
        Self::check_id(k.id, from)?;
        if !(keys::is_contributory(&k.c_pk) && keys::is_contributory(&k.s_pk)) {
            // Refused here, so that no neighbour's key agreement fails on it later.
            return Err(FlError::MalformedMessage {
                from: Peer::Client(from),
                reason: "low-order X25519 public key".into(),
            });
        }
        self.keys.insert(from, k);
        Ok(from)
    }

    fn on_share_keys(&mut self, from: ClientId, frame: &[u8]) -> Result<ClientId, FlError> {
        let max = self.config.neighbours as usize - 1;
        let (own, items) = wire::decode_share_list(
            frame,
            wire::KIND_SHARE_KEYS,
            Peer::Client(from),
            self.config.clients,
            max,
        )?;
        Self::check_id(own.unwrap_or(ClientId(u32::MAX)), from)?;
        let expected: BTreeSet<ClientId> = self
            .graph
            .neighbours(from)
            .into_iter()
            .filter(|v| self.keys.contains_key(v))
            .collect();
        let got: BTreeSet<ClientId> = items.iter().map(|(to, _)| *to).collect();
        if got.len() != items.len() || got != expected {
            return Err(FlError::MalformedMessage {
                from: Peer::Client(from),
                reason: format!(
                    "shares addressed to {} distinct clients out of {}, expected exactly its {} neighbours that advertised keys",
                    got.len(),
                    items.len(),
                    expected.len()
                ),
            });
        }
        for (to, ct) in items {
            self.outbox.entry(to).or_default().push((from, ct));
        }
        Ok(from)
    }

    fn on_masked_input(&mut self, from: ClientId, frame: &[u8]) -> Result<ClientId, FlError> {
        let wb = self.config.modulus.word_bytes();
        let (id, body) = wire::decode_masked_input(
            frame,
            Peer::Client(from),
            self.config.clients,
            wb,
            self.config.dim,
        )?;
        Self::check_id(id, from)?;
        match &mut self.acc {
            Acc::W32(a) => add_words(a, body),
            Acc::W64(a) => add_words(a, body),
        }
        Ok(from)
    }

    fn on_unmask(&mut self, from: ClientId, frame: &[u8]) -> Result<ClientId, FlError> {
        let max = self.config.neighbours as usize;
        let (id, items) =
            wire::decode_unmask_shares(frame, Peer::Client(from), self.config.clients, max)?;
        Self::check_id(id, from)?;
        let mut seen = BTreeSet::new();
        for s in &items {
            self.check_unmask_share(from, s)?;
            if !seen.insert(s.owner) {
                return Err(FlError::MalformedMessage {
                    from: Peer::Client(from),
                    reason: format!("two shares for client {}", s.owner),
                });
            }
        }
        for s in items {
            self.shares
                .entry(s.owner)
                .or_default()
                .push((from, s.value));
        }
        Ok(from)
    }

    /// A share is acceptable from `holder` if `holder` holds a share of `owner` (itself, or a
    /// neighbour that shared) and its kind matches `owner`'s fate: seed for a survivor, mask
    /// key for a client that dropped after sharing.
    fn check_unmask_share(&self, holder: ClientId, s: &UnmaskShare) -> Result<(), FlError> {
        let bad = |reason: String| FlError::MalformedMessage {
            from: Peer::Client(holder),
            reason,
        };
        if !(s.owner == holder
            || (self.u2.contains(&s.owner) && self.graph.adjacent(holder, s.owner)))
        {
            return Err(bad(format!("holds no share of client {}", s.owner)));
        }
        let want = if self.u3.contains(&s.owner) {
            ShareKind::SelfMaskSeed
        } else {
            ShareKind::MaskKey
        };
        if s.kind != want {
            return Err(bad(format!(
                "a {:?} share for client {}, expected {want:?}",
                s.kind, s.owner
            )));
        }
        Ok(())
    }

    fn survivors_at_least(&self, stage: Stage, n: usize) -> Result<(), FlError> {
        let t = self.config.threshold as usize;
        if n < t {
            return Err(FlError::TooManyDropouts {
                stage,
                survivors: n,
                threshold: t,
            });
        }
        Ok(())
    }

    /// Closes the current stage: the clients that answered are its survivors. Returns the
    /// frames for the next stage, or after unmasking the [`Aggregate`]. Errors:
    /// [`FlError::TooManyDropouts`] (fewer than `t` survivors), [`FlError::NotEnoughShares`],
    /// [`FlError::ShareMismatch`], [`FlError::UnexpectedMessage`] once done.
    pub fn close_round(&mut self) -> Result<ServerStep, FlError> {
        let stage = self.stage;
        let answered = std::mem::take(&mut self.answered);
        if let Err(e) = self.survivors_at_least(stage, answered.len()) {
            self.answered = answered;
            return Err(e);
        }
        match stage {
            Stage::AdvertiseKeys => {
                self.stage = Stage::ShareKeys;
                let out = self
                    .keys
                    .keys()
                    .map(|&u| {
                        let ks: Vec<&AdvertisedKeys> = self
                            .graph
                            .neighbours(u)
                            .iter()
                            .filter_map(|v| self.keys.get(v))
                            .collect();
                        (u, wire::encode_neighbour_keys(&ks))
                    })
                    .collect();
                Ok(ServerStep::Send(out))
            }
            Stage::ShareKeys => {
                self.u2 = answered;
                self.stage = Stage::MaskedInput;
                let outbox = std::mem::take(&mut self.outbox);
                let out = self
                    .u2
                    .iter()
                    .map(|&v| {
                        let items: Vec<(ClientId, &[u8])> = outbox
                            .get(&v)
                            .map(|l| {
                                l.iter()
                                    .filter(|(a, _)| self.u2.contains(a))
                                    .map(|(a, c)| (*a, c.as_slice()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (v, wire::encode_share_list(wire::KIND_SHARES, None, &items))
                    })
                    .collect();
                let dim = self.config.dim as usize;
                self.acc = match self.config.modulus {
                    Modulus::Pow32 => Acc::W32(vec![0; dim]),
                    Modulus::Pow64 => Acc::W64(vec![0; dim]),
                };
                Ok(ServerStep::Send(out))
            }
            Stage::MaskedInput => {
                self.u3 = answered;
                self.stage = Stage::Unmask;
                let list: Vec<ClientId> = self.u3.iter().copied().collect();
                let frame = wire::encode_unmask_request(&list);
                Ok(ServerStep::Send(
                    list.iter().map(|&u| (u, frame.clone())).collect(),
                ))
            }
            Stage::Unmask => {
                let masks = self.reconstruct_masks()?;
                let sum = match &mut self.acc {
                    Acc::W32(a) => unmask_to_u64(a, &masks),
                    Acc::W64(a) => unmask_to_u64(a, &masks),
                };
                self.stage = Stage::Done;
                self.shares.clear();
                Ok(ServerStep::Done(Aggregate {
                    sum,
                    survivors: self.u3.iter().copied().collect(),
                    modulus: self.config.modulus,
                }))
            }
            Stage::Done => Err(FlError::UnexpectedMessage {
                from: Peer::Aggregator,
                kind: 0,
                stage,
            }),
        }
    }

    /// Reconstructs every survivor's seed and every dropped client's mask key, checks them,
    /// and returns the masks to remove.
    fn reconstruct_masks(&self) -> Result<Vec<Mask>, FlError> {
        let t = self.config.threshold as usize;
        // The owners, each with the holders of its first t shares (by holder id).
        let mut plan: Vec<(ClientId, Vec<usize>, Vec<Scalar>)> = Vec::new();
        for &owner in &self.u2 {
            let list = self
                .shares
                .get(&owner)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if list.len() < t {
                return Err(FlError::NotEnoughShares {
                    owner,
                    shares: list.len(),
                    threshold: t,
                });
            }
            let mut idx: Vec<usize> = (0..list.len()).collect();
            idx.sort_by_key(|&i| list.get(i).map(|(h, _)| *h));
            idx.truncate(t);
            let xs = idx
                .iter()
                .filter_map(|&i| list.get(i))
                .map(|(h, _)| shamir::x_of(*h))
                .collect();
            plan.push((owner, idx, xs));
        }
        // Lagrange coefficients once per distinct set of holders.
        let mut sets: HashMap<Vec<[u8; 32]>, usize> = HashMap::new();
        let mut distinct: Vec<&[Scalar]> = Vec::new();
        let set_of: Vec<usize> = plan
            .iter()
            .map(|(_, _, xs)| {
                let key: Vec<[u8; 32]> = xs.iter().map(|x| x.to_bytes()).collect();
                *sets.entry(key).or_insert_with(|| {
                    distinct.push(xs);
                    distinct.len() - 1
                })
            })
            .collect();
        let coeffs: Vec<Option<Vec<Scalar>>> = distinct
            .par_iter()
            .map(|xs| shamir::lagrange_at_zero(xs))
            .collect();
        let masks: Vec<Result<Vec<Mask>, FlError>> = plan
            .par_iter()
            .zip(set_of.par_iter())
            .map(|((owner, idx, _), &set)| {
                let list = self
                    .shares
                    .get(owner)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let shares: Vec<&[Scalar]> = idx
                    .iter()
                    .filter_map(|&i| list.get(i))
                    .map(|(_, v)| v.as_slice())
                    .collect();
                let l = coeffs
                    .get(set)
                    .and_then(Option::as_ref)
                    .ok_or(FlError::ShareMismatch(*owner))?;
                self.masks_of(*owner, l, &shares)
            })
            .collect();
        let mut out = Vec::new();
        for m in masks {
            out.extend(m?);
        }
        Ok(out)
    }

    /// The masks to remove for one owner: `−PRG(b_u)` for a survivor; for a dropped `v`, the
    /// negation of each surviving neighbour's pairwise mask with `v`.
    fn masks_of(
        &self,
        owner: ClientId,
        l: &[Scalar],
        shares: &[&[Scalar]],
    ) -> Result<Vec<Mask>, FlError> {
        let keys = self.keys.get(&owner).ok_or(FlError::UnknownClient(owner))?;
        let session = &self.config.session_id;
        if self.u3.contains(&owner) {
            let mut b = shamir::combine(l, shares, 1).ok_or(FlError::ShareMismatch(owner))?;
            let mut arr = [0u8; 16];
            arr.copy_from_slice(b.get(..16).ok_or(FlError::ShareMismatch(owner))?);
            b.zeroize();
            let seed = Seed::from_bytes(arr);
            arr.zeroize();
            if seed_commitment(session, owner, &seed) != keys.seed_commitment {
                return Err(FlError::ShareMismatch(owner));
            }
            return Ok(vec![Mask::new(&seed, Sign::Sub)]);
        }
        let mut sk = shamir::combine(l, shares, 2).ok_or(FlError::ShareMismatch(owner))?;
        let mut arr = [0u8; 32];
        arr.copy_from_slice(sk.get(..32).ok_or(FlError::ShareMismatch(owner))?);
        sk.zeroize();
        let kp = KeyPair::from_secret_bytes(arr);
        arr.zeroize();
        if kp.public() != keys.s_pk {
            return Err(FlError::ShareMismatch(owner));
        }
        let mut out = Vec::new();
        for u in self
            .graph
            .neighbours(owner)
            .into_iter()
            .filter(|u| self.u3.contains(u))
        {
            let pk = self.keys.get(&u).ok_or(FlError::UnknownClient(u))?;
            let s = pairwise_seed(session, &kp, owner, &pk.s_pk, u)?;
            // u added +PRG(s) if u < v, −PRG(s) if u > v; remove it.
            let added = if u < owner { Sign::Add } else { Sign::Sub };
            out.push(Mask::new(&s, added.opposite()));
        }
        Ok(out)
    }
}

fn add_words<W: Word>(acc: &mut [W], body: &[u8]) {
    acc.iter_mut()
        .zip(body.chunks_exact(W::BYTES))
        .for_each(|(a, b)| *a = a.add(W::from_le(b)));
}

fn unmask_to_u64<W: Word>(acc: &mut Vec<W>, masks: &[Mask]) -> Vec<u64> {
    apply_masks(acc, masks);
    let out = acc.iter().map(|w| w.to_u64()).collect();
    acc.clear();
    out
}
