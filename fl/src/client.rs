//! [`Client`]: one client's side of a SecAgg+ round as a state machine over byte frames
//! (Bell et al. CCS 2020, Alg. 2, the client's rounds 0–3). No I/O and no clock: the caller
//! passes each frame from the aggregator in and sends the frame that comes back.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use curve25519_dalek::Scalar;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::graph::Graph;
use crate::keys::{KeyPair, Seed, ShareCipher, pairwise_seed, seed_commitment};
use crate::prg::{Mask, Sign, Word, apply_masks};
use crate::wire::{self, AdvertisedKeys, ShareKind, UnmaskShare};
use crate::{ClientId, FlError, Modulus, Peer, SecAggConfig, Stage, shamir};

/// The shares a client holds of one client's secrets (its own, or a neighbour's).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct HeldShare {
    seed: Scalar,
    key: [Scalar; 2],
}

/// One client's state in one round. `Debug` shows the id and stage only.
pub struct Client {
    config: SecAggConfig,
    id: ClientId,
    graph: Graph,
    stage: Stage,
    enc: KeyPair,
    mask: KeyPair,
    seed: Seed,
    peers: BTreeMap<ClientId, AdvertisedKeys>,
    ciphers: BTreeMap<ClientId, ShareCipher>,
    held: BTreeMap<ClientId, HeldShare>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Round 0: draws the client's key pairs and self-mask seed; returns the client and its
    /// `AdvertiseKeys` frame. Errors: [`FlError::Config`], [`FlError::UnknownClient`].
    pub fn new<R: RngCore + CryptoRng>(
        config: &SecAggConfig,
        id: ClientId,
        rng: &mut R,
    ) -> Result<(Client, Bytes), FlError> {
        config.validate()?;
        if id.0 >= config.clients {
            return Err(FlError::UnknownClient(id));
        }
        let enc = KeyPair::random(rng);
        let mask = KeyPair::random(rng);
        let seed = Seed::random(rng);
        let frame = wire::encode_advertise(&AdvertisedKeys {
            id,
            c_pk: enc.public(),
            s_pk: mask.public(),
            seed_commitment: seed_commitment(&config.session_id, id, &seed),
        });
        let client = Client {
            config: config.clone(),
            id,
            graph: Graph::new(config),
            stage: Stage::ShareKeys,
            enc,
            mask,
            seed,
            peers: BTreeMap::new(),
            ciphers: BTreeMap::new(),
            held: BTreeMap::new(),
        };
        Ok((client, frame))
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The stage whose aggregator frame this client expects next.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    fn expect(&self, stage: Stage, frame: &[u8]) -> Result<(), FlError> {
        if self.stage != stage {
            return Err(FlError::UnexpectedMessage {
                from: Peer::Aggregator,
                kind: wire::kind_of(frame).unwrap_or(0),
                stage: self.stage,
            });
        }
        Ok(())
    }

    fn threshold(&self) -> usize {
        self.config.threshold as usize
    }

    /// Round 1: takes the aggregator's `NeighbourKeys` frame (the neighbours that advertised
    /// keys) and returns the `ShareKeys` frame: for each such neighbour `v`, the AES-GCM
    /// encryption of `(u, v, share of b_u, share of s_sk_u)`. Errors: malformed frame, an id
    /// that is not a neighbour, a duplicate, a low-order key, fewer than `t − 1` neighbours
    /// ([`FlError::TooManyDropouts`]).
    pub fn share_keys<R: RngCore + CryptoRng>(
        &mut self,
        frame: &[u8],
        rng: &mut R,
    ) -> Result<Bytes, FlError> {
        self.expect(Stage::ShareKeys, frame)?;
        let max = self.config.neighbours as usize - 1;
        let keys = wire::decode_neighbour_keys(frame, self.config.clients, max)?;
        let mut peers = BTreeMap::new();
        let mut ciphers = BTreeMap::new();
        for k in keys {
            if !self.graph.adjacent(self.id, k.id) {
                return Err(FlError::MalformedMessage {
                    from: Peer::Aggregator,
                    reason: format!("client {} is not a neighbour of {}", k.id, self.id),
                });
            }
            let c = ShareCipher::new(&self.config.session_id, &self.enc, self.id, &k.c_pk, k.id)?;
            ciphers.insert(k.id, c);
            if peers.insert(k.id, k.clone()).is_some() {
                return Err(FlError::DuplicateClient(k.id));
            }
        }
        if peers.len() + 1 < self.threshold() {
            return Err(FlError::TooManyDropouts {
                stage: Stage::AdvertiseKeys,
                survivors: peers.len() + 1,
                threshold: self.threshold(),
            });
        }
        let holders: Vec<ClientId> = std::iter::once(self.id)
            .chain(peers.keys().copied())
            .collect();
        let xs: Vec<Scalar> = holders.iter().map(|&h| shamir::x_of(h)).collect();
        let t = self.threshold();
        let seed_shares = shamir::split(self.seed.expose(), &xs, t, rng);
        let mut sk = self.mask.secret_bytes();
        let key_shares = shamir::split(&sk, &xs, t, rng);
        sk.zeroize();
        let mut cts = Vec::with_capacity(peers.len());
        for ((h, s), k) in holders.iter().zip(&seed_shares).zip(&key_shares) {
            let held = HeldShare {
                seed: s.first().copied().unwrap_or_default(),
                key: [
                    k.first().copied().unwrap_or_default(),
                    k.get(1).copied().unwrap_or_default(),
                ],
            };
            if *h == self.id {
                self.held.insert(self.id, held);
                continue;
            }
            let mut plain = Vec::with_capacity(wire::SHARE_PLAIN_BYTES);
            plain.extend_from_slice(&self.id.0.to_be_bytes());
            plain.extend_from_slice(&h.0.to_be_bytes());
            plain.extend_from_slice(held.seed.as_bytes());
            held.key
                .iter()
                .for_each(|x| plain.extend_from_slice(x.as_bytes()));
            let c = ciphers.get(h).ok_or(FlError::UnknownClient(*h))?;
            cts.push((*h, c.seal(self.id, *h, &plain)?));
            plain.zeroize();
        }
        let items: Vec<(ClientId, &[u8])> = cts.iter().map(|(h, c)| (*h, c.as_slice())).collect();
        self.peers = peers;
        self.ciphers = ciphers;
        self.stage = Stage::MaskedInput;
        Ok(wire::encode_share_list(
            wire::KIND_SHARE_KEYS,
            Some(self.id),
            &items,
        ))
    }

    fn open_shares(&self, frame: &[u8]) -> Result<BTreeMap<ClientId, HeldShare>, FlError> {
        let max = self.config.neighbours as usize - 1;
        let (_, items) = wire::decode_share_list(
            frame,
            wire::KIND_SHARES,
            Peer::Aggregator,
            self.config.clients,
            max,
        )?;
        let mut out = BTreeMap::new();
        for (from, ct) in items {
            let c = self
                .ciphers
                .get(&from)
                .ok_or(FlError::UnknownClient(from))?;
            let mut plain = c.open(from, self.id, &ct)?;
            let parsed = parse_share(&plain, from, self.id);
            plain.zeroize();
            if out.insert(from, parsed?).is_some() {
                return Err(FlError::DuplicateClient(from));
            }
        }
        Ok(out)
    }

    /// Round 2: takes the aggregator's `Shares` frame (the shares addressed to this client,
    /// from the neighbours in `U_2`) and the client's input (`dim` elements, each at most the
    /// modulus' largest value; see [`crate::quant`] for real-valued vectors), and returns the
    /// `MaskedInput` frame `y_u = x_u + PRG(b_u) + Σ ±PRG(s_{u,v})` over the neighbours whose
    /// shares arrived. Errors: [`FlError::ShareDecryption`], malformed frame,
    /// [`FlError::InconsistentLength`], [`FlError::InvalidInput`].
    pub fn masked_input(&mut self, frame: &[u8], input: &[u64]) -> Result<Bytes, FlError> {
        self.expect(Stage::MaskedInput, frame)?;
        if input.len() != self.config.dim as usize {
            return Err(FlError::InconsistentLength {
                expected: self.config.dim as usize,
                actual: input.len(),
            });
        }
        let max = self.config.modulus.max_value();
        if let Some(i) = input.iter().position(|&x| x > max) {
            return Err(FlError::InvalidInput(format!(
                "element {i} is not below the modulus"
            )));
        }
        let opened = self.open_shares(frame)?;
        let mut masks = vec![Mask::new(&self.seed, Sign::Add)];
        for v in opened.keys() {
            let peer = self.peers.get(v).ok_or(FlError::UnknownClient(*v))?;
            let s = pairwise_seed(&self.config.session_id, &self.mask, self.id, &peer.s_pk, *v)?;
            masks.push(Mask::new(
                &s,
                if self.id < *v { Sign::Add } else { Sign::Sub },
            ));
        }
        self.held.extend(opened);
        self.stage = Stage::Unmask;
        Ok(match self.config.modulus {
            Modulus::Pow32 => masked_frame::<u32>(self.id, input, &masks),
            Modulus::Pow64 => masked_frame::<u64>(self.id, input, &masks),
        })
    }

    /// Round 3: takes the aggregator's `UnmaskRequest` (the survivors `U_3`) and returns the
    /// `UnmaskShares` frame: for each client whose shares this client holds, the share of its
    /// self-mask seed if it is in `U_3`, else the share of its mask key — one of the two, never
    /// both. Errors: malformed frame (a duplicate id, or this client not among the survivors),
    /// [`FlError::TooManyDropouts`] if `|U_3| < t`.
    pub fn unmask(&mut self, frame: &[u8]) -> Result<Bytes, FlError> {
        self.expect(Stage::Unmask, frame)?;
        let survivors = wire::decode_unmask_request(frame, self.config.clients)?;
        let set: BTreeSet<ClientId> = survivors.iter().copied().collect();
        let bad = |reason: &str| FlError::MalformedMessage {
            from: Peer::Aggregator,
            reason: reason.into(),
        };
        if set.len() != survivors.len() {
            return Err(bad("duplicate id in the survivor list"));
        }
        if !set.contains(&self.id) {
            return Err(bad("this client is not among the survivors"));
        }
        if set.len() < self.threshold() {
            return Err(FlError::TooManyDropouts {
                stage: Stage::MaskedInput,
                survivors: set.len(),
                threshold: self.threshold(),
            });
        }
        let shares: Vec<UnmaskShare> = self
            .held
            .iter()
            .map(|(owner, h)| {
                if set.contains(owner) {
                    UnmaskShare {
                        owner: *owner,
                        kind: ShareKind::SelfMaskSeed,
                        value: vec![h.seed],
                    }
                } else {
                    UnmaskShare {
                        owner: *owner,
                        kind: ShareKind::MaskKey,
                        value: h.key.to_vec(),
                    }
                }
            })
            .collect();
        self.stage = Stage::Done;
        self.held.clear();
        Ok(wire::encode_unmask_shares(self.id, &shares))
    }
}

fn parse_share(plain: &[u8], from: ClientId, to: ClientId) -> Result<HeldShare, FlError> {
    let mut r = wire::Reader::open_raw(plain, Peer::Client(from));
    let (f, t) = (r.u32()?, r.u32()?);
    if f != from.0 || t != to.0 {
        return Err(r.bad(format!("share names {f} → {t}, expected {from} → {to}")));
    }
    let share = HeldShare {
        seed: r.scalar()?,
        key: [r.scalar()?, r.scalar()?],
    };
    r.finish()?;
    Ok(share)
}

fn masked_frame<W: Word>(id: ClientId, input: &[u64], masks: &[Mask]) -> Bytes {
    let mut y: Vec<W> = input.iter().map(|&x| W::from_u64(x)).collect();
    apply_masks(&mut y, masks);
    let mut f =
        wire::encode_masked_input_header(id, W::BYTES as u8, y.len() as u32, y.len() * W::BYTES);
    y.iter().for_each(|w| w.put_le(&mut f));
    f.into()
}
