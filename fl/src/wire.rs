//! Frame encoding and parsing for the seven SecAgg+ messages, protocol version 1.
//!
//! Every frame is `[version][kind][body]`, integers big-endian, vector words little-endian.
//! Parsing is strict: a wrong version or kind, a count above the configured bound, a length
//! that does not match the count, trailing bytes, a non-canonical field element — each is a
//! typed [`FlError::MalformedMessage`]. Nothing is allocated before the frame's length has been
//! checked against what its counts claim.

use bytes::Bytes;
use curve25519_dalek::Scalar;

use crate::{ClientId, FlError, Peer};

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;

/// Kind byte: client → aggregator, the client's two public keys and its seed commitment.
pub const KIND_ADVERTISE_KEYS: u8 = 1;
/// Kind byte: aggregator → client, the advertised keys of its neighbours.
pub const KIND_NEIGHBOUR_KEYS: u8 = 2;
/// Kind byte: client → aggregator, encrypted shares addressed to its neighbours.
pub const KIND_SHARE_KEYS: u8 = 3;
/// Kind byte: aggregator → client, the encrypted shares addressed to it.
pub const KIND_SHARES: u8 = 4;
/// Kind byte: client → aggregator, the masked input vector.
pub const KIND_MASKED_INPUT: u8 = 5;
/// Kind byte: aggregator → client, the survivors of the masked-input stage.
pub const KIND_UNMASK_REQUEST: u8 = 6;
/// Kind byte: client → aggregator, shares of survivors' seeds and dropped clients' mask keys.
pub const KIND_UNMASK_SHARES: u8 = 7;

/// Bytes of a share plaintext: from, to, one chunk of `b_u`, two chunks of `s_sk_u`.
pub const SHARE_PLAIN_BYTES: usize = 4 + 4 + 32 + 64;
/// Bytes of an encrypted share (AES-128-GCM tag included).
pub const SHARE_CT_BYTES: usize = SHARE_PLAIN_BYTES + 16;
/// Bytes of one advertised key record: id, `c_pk`, `s_pk`, seed commitment.
pub const KEYS_BYTES: usize = 4 + 32 + 32 + 32;

/// A client's advertised keys (Bell et al. Alg. 2, "advertise keys").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedKeys {
    /// The client.
    pub id: ClientId,
    /// Its X25519 public key for share encryption, `c_pk`.
    pub c_pk: [u8; 32],
    /// Its X25519 public key for pairwise masks, `s_pk`.
    pub s_pk: [u8; 32],
    /// SHA-256 commitment to its self-mask seed `b_u` (see `keys::seed_commitment`).
    pub seed_commitment: [u8; 32],
}

/// Which secret a share in the unmasking round belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// A share of a survivor's self-mask seed `b_u` (one chunk).
    SelfMaskSeed,
    /// A share of a dropped client's mask secret key `s_sk_u` (two chunks).
    MaskKey,
}

impl ShareKind {
    pub(crate) fn chunks(self) -> usize {
        match self {
            ShareKind::SelfMaskSeed => 1,
            ShareKind::MaskKey => 2,
        }
    }
}

/// One share sent in the unmasking round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskShare {
    /// Whose secret it is a share of.
    pub owner: ClientId,
    /// Which secret.
    pub kind: ShareKind,
    /// The share's field elements (one per 16-byte chunk).
    pub value: Vec<Scalar>,
}

/// Strict reader over one frame.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    from: Peer,
}

impl<'a> Reader<'a> {
    /// A reader positioned after the header, which must be `[VERSION][kind]`.
    pub(crate) fn open(frame: &'a [u8], kind: u8, from: Peer) -> Result<Reader<'a>, FlError> {
        let mut r = Reader { b: frame, from };
        let v = r.u8()?;
        if v != VERSION {
            return Err(r.bad(format!("protocol version {v}, expected {VERSION}")));
        }
        let k = r.u8()?;
        if k != kind {
            return Err(r.bad(format!("kind {k}, expected {kind}")));
        }
        Ok(r)
    }
    /// A reader over bytes without a frame header (a decrypted share).
    pub(crate) fn open_raw(b: &'a [u8], from: Peer) -> Reader<'a> {
        Reader { b, from }
    }
    pub(crate) fn bad(&self, reason: String) -> FlError {
        FlError::MalformedMessage {
            from: self.from,
            reason,
        }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FlError> {
        if self.b.len() < n {
            return Err(self.bad(format!("truncated: need {n} bytes, {} left", self.b.len())));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FlError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FlError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    pub(crate) fn arr32(&mut self) -> Result<[u8; 32], FlError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    pub(crate) fn id(&mut self, clients: u32) -> Result<ClientId, FlError> {
        let v = self.u32()?;
        if v >= clients {
            return Err(self.bad(format!("client id {v} out of range (clients: {clients})")));
        }
        Ok(ClientId(v))
    }
    pub(crate) fn scalar(&mut self) -> Result<Scalar, FlError> {
        let a = self.arr32()?;
        Option::from(Scalar::from_canonical_bytes(a))
            .ok_or_else(|| self.bad("non-canonical field element".into()))
    }
    /// A count of items of `item_bytes` each, at most `max`, that must fill the rest exactly.
    pub(crate) fn count(&mut self, max: usize, item_bytes: usize) -> Result<usize, FlError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.bad(format!("{n} items, at most {max} allowed")));
        }
        if item_bytes != 0 && self.b.len() != n.saturating_mul(item_bytes) {
            return Err(self.bad(format!(
                "{n} items of {item_bytes} bytes need {} bytes, {} present",
                n.saturating_mul(item_bytes),
                self.b.len()
            )));
        }
        Ok(n)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    pub(crate) fn finish(&self) -> Result<(), FlError> {
        if !self.b.is_empty() {
            return Err(self.bad(format!("{} trailing bytes", self.b.len())));
        }
        Ok(())
    }
}

fn header(kind: u8, capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity + 2);
    v.push(VERSION);
    v.push(kind);
    v
}

fn put_keys(out: &mut Vec<u8>, k: &AdvertisedKeys) {
    out.extend_from_slice(&k.id.0.to_be_bytes());
    out.extend_from_slice(&k.c_pk);
    out.extend_from_slice(&k.s_pk);
    out.extend_from_slice(&k.seed_commitment);
}

fn read_keys(r: &mut Reader<'_>, clients: u32) -> Result<AdvertisedKeys, FlError> {
    Ok(AdvertisedKeys {
        id: r.id(clients)?,
        c_pk: r.arr32()?,
        s_pk: r.arr32()?,
        seed_commitment: r.arr32()?,
    })
}

/// `AdvertiseKeys` frame.
pub fn encode_advertise(k: &AdvertisedKeys) -> Bytes {
    let mut v = header(KIND_ADVERTISE_KEYS, KEYS_BYTES);
    put_keys(&mut v, k);
    v.into()
}

pub(crate) fn decode_advertise(
    f: &[u8],
    from: Peer,
    clients: u32,
) -> Result<AdvertisedKeys, FlError> {
    let mut r = Reader::open(f, KIND_ADVERTISE_KEYS, from)?;
    let k = read_keys(&mut r, clients)?;
    r.finish()?;
    Ok(k)
}

/// `NeighbourKeys` frame.
pub fn encode_neighbour_keys(keys: &[&AdvertisedKeys]) -> Bytes {
    let mut v = header(KIND_NEIGHBOUR_KEYS, 4 + keys.len() * KEYS_BYTES);
    v.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    keys.iter().for_each(|k| put_keys(&mut v, k));
    v.into()
}

pub(crate) fn decode_neighbour_keys(
    f: &[u8],
    clients: u32,
    max: usize,
) -> Result<Vec<AdvertisedKeys>, FlError> {
    let mut r = Reader::open(f, KIND_NEIGHBOUR_KEYS, Peer::Aggregator)?;
    let n = r.count(max, KEYS_BYTES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_keys(&mut r, clients)?);
    }
    r.finish()?;
    Ok(out)
}

/// A frame carrying `(client id, encrypted share)` pairs after a header (an optional own id):
/// `ShareKeys` (client → aggregator, ids are addressees) and `Shares` (aggregator → client, ids
/// are authors).
pub fn encode_share_list(kind: u8, own: Option<ClientId>, items: &[(ClientId, &[u8])]) -> Bytes {
    let mut v = header(kind, 8 + items.len() * (4 + SHARE_CT_BYTES));
    if let Some(id) = own {
        v.extend_from_slice(&id.0.to_be_bytes());
    }
    v.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for (id, ct) in items {
        v.extend_from_slice(&id.0.to_be_bytes());
        v.extend_from_slice(ct);
    }
    v.into()
}

/// A parsed share list: the own id (if the kind carries one) and `(client id, ciphertext)`.
pub(crate) type ShareList = (Option<ClientId>, Vec<(ClientId, Vec<u8>)>);

/// Parses a share list; returns the own id (if the kind carries one) and the pairs.
pub(crate) fn decode_share_list(
    f: &[u8],
    kind: u8,
    from: Peer,
    clients: u32,
    max: usize,
) -> Result<ShareList, FlError> {
    let mut r = Reader::open(f, kind, from)?;
    let own = if kind == KIND_SHARE_KEYS {
        Some(r.id(clients)?)
    } else {
        None
    };
    let n = r.count(max, 4 + SHARE_CT_BYTES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.id(clients)?;
        out.push((id, r.take(SHARE_CT_BYTES)?.to_vec()));
    }
    r.finish()?;
    Ok((own, out))
}

/// `MaskedInput` frame header length: version, kind, id, word bytes, dim.
pub const MASKED_HEADER_BYTES: usize = 2 + 4 + 1 + 4;

/// `MaskedInput` frame from a vector of words already encoded little-endian.
pub fn encode_masked_input_header(
    id: ClientId,
    word_bytes: u8,
    dim: u32,
    capacity: usize,
) -> Vec<u8> {
    let mut v = header(KIND_MASKED_INPUT, MASKED_HEADER_BYTES + capacity);
    v.extend_from_slice(&id.0.to_be_bytes());
    v.push(word_bytes);
    v.extend_from_slice(&dim.to_be_bytes());
    v
}

/// Parses a `MaskedInput` frame's header; returns the claimed id and the words' bytes, whose
/// length has been checked to be `dim · word_bytes` for the configured `dim` and modulus.
pub(crate) fn decode_masked_input(
    f: &[u8],
    from: Peer,
    clients: u32,
    word_bytes: u8,
    dim: u32,
) -> Result<(ClientId, &[u8]), FlError> {
    let mut r = Reader::open(f, KIND_MASKED_INPUT, from)?;
    let id = r.id(clients)?;
    let wb = r.u8()?;
    if wb != word_bytes {
        return Err(r.bad(format!(
            "words of {wb} bytes, the session uses {word_bytes}"
        )));
    }
    let d = r.u32()?;
    if d != dim {
        return Err(FlError::InconsistentLength {
            expected: dim as usize,
            actual: d as usize,
        });
    }
    let body = r.rest();
    let want = (dim as usize).saturating_mul(usize::from(word_bytes));
    if body.len() != want {
        return Err(FlError::InconsistentLength {
            expected: dim as usize,
            actual: body.len() / usize::from(word_bytes.max(1)),
        });
    }
    Ok((id, body))
}

/// `UnmaskRequest` frame: the survivors of the masked-input stage, `U_3`.
pub fn encode_unmask_request(survivors: &[ClientId]) -> Bytes {
    let mut v = header(KIND_UNMASK_REQUEST, 4 + 4 * survivors.len());
    v.extend_from_slice(&(survivors.len() as u32).to_be_bytes());
    survivors
        .iter()
        .for_each(|s| v.extend_from_slice(&s.0.to_be_bytes()));
    v.into()
}

pub(crate) fn decode_unmask_request(f: &[u8], clients: u32) -> Result<Vec<ClientId>, FlError> {
    let mut r = Reader::open(f, KIND_UNMASK_REQUEST, Peer::Aggregator)?;
    let n = r.count(clients as usize, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.id(clients)?);
    }
    r.finish()?;
    Ok(out)
}

/// `UnmaskShares` frame.
pub fn encode_unmask_shares(id: ClientId, shares: &[UnmaskShare]) -> Bytes {
    let mut v = header(KIND_UNMASK_SHARES, 8 + shares.len() * (5 + 64));
    v.extend_from_slice(&id.0.to_be_bytes());
    v.extend_from_slice(&(shares.len() as u32).to_be_bytes());
    for s in shares {
        v.extend_from_slice(&s.owner.0.to_be_bytes());
        v.push(match s.kind {
            ShareKind::SelfMaskSeed => 0,
            ShareKind::MaskKey => 1,
        });
        s.value
            .iter()
            .for_each(|x| v.extend_from_slice(x.as_bytes()));
    }
    v.into()
}

pub(crate) fn decode_unmask_shares(
    f: &[u8],
    from: Peer,
    clients: u32,
    max: usize,
) -> Result<(ClientId, Vec<UnmaskShare>), FlError> {
    let mut r = Reader::open(f, KIND_UNMASK_SHARES, from)?;
    let id = r.id(clients)?;
    let n = r.count(max, 0)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let owner = r.id(clients)?;
        let kind = match r.u8()? {
            0 => ShareKind::SelfMaskSeed,
            1 => ShareKind::MaskKey,
            k => return Err(r.bad(format!("share kind {k}"))),
        };
        let value = (0..kind.chunks())
            .map(|_| r.scalar())
            .collect::<Result<_, _>>()?;
        out.push(UnmaskShare { owner, kind, value });
    }
    r.finish()?;
    Ok((id, out))
}

/// The kind byte of a frame, if it has a header.
pub fn kind_of(frame: &[u8]) -> Option<u8> {
    frame.get(1).copied()
}
