//! Correlated randomness for the multiplications: Beaver triples over `Z_2^64`
//! (`c = a · b`), AND triples over packed bits (`c = a ∧ b`, 64 per word) and matrix triples
//! (`C = A · B`), from one of two sources ([`TripleSource`]):
//!
//! * **(a) a dealer** ([`run_dealer`], served to each party through a [`DealerClient`]): a third
//!   party that, per request, draws two 32-byte seeds, sends party 0 its seed (party 0 expands
//!   `a0, b0, c0` from it with ChaCha12) and party 1 its seed (expanding `a1, b1`) and the
//!   correction `c1 = (a0 + a1)(b0 + b1) − c0`. Traffic: 32 bytes to party 0, 32 + 8 bytes per
//!   element to party 1 (the "seed + correction" dealer of e.g. SPU's trusted first party,
//!   and of Damgård et al.'s preprocessing model). The dealer knows every triple: it must not
//!   collude with either party (crate docs, threat model).
//! * **(b) dealer-free** ([`OtTriples`]): each party draws its own `a_P`, `b_P`; the cross
//!   terms `a0·b1` and `a1·b0` come, by default ([`ArithMethod::Rlwe`]), from oblivious linear
//!   evaluation over RLWE ([`crate::rlwe`]: each party's `a_P` encrypted under its own key,
//!   multiplied slot-wise by the peer's `b_Q`, masked, re-randomised and noise-flooded; about
//!   216 bytes sent by each party per triple), or ([`ArithMethod::Gilboa`]) from Gilboa's
//!   multiplication (Gilboa,
//!   "Two Party RSA Key Generation", CRYPTO 1999, §3) over SoftSpoken random OTs of
//!   [`tessera_ot::softspoken`] (Roy, CRYPTO 2022; field width [`OT_FIELD_BITS`]) in both
//!   directions, used as correlated OTs: for bit `i` of the receiver's `b`, the sender, holding
//!   random OT messages `m0, m1`, takes `x0 = m0 mod 2^(64−i)`, `x1 = m1 mod 2^(64−i)` and sends
//!   only the correction `x0 + a − x1`; the receiver gets `x0 + b_i · a (mod 2^(64−i))`, and
//!   `Σ_i 2^i (…)` against the sender's `−Σ_i 2^i x0` is an additive sharing of `a · b` (the
//!   optimisation of Demmler–Schneider–Zohner, "ABY", NDSS 2015, §III-C: bit `i` needs only
//!   `64 − i` bits). The corrections are bit-packed: `Σ_i (64 − i)` = 2,080 bits, 260 bytes
//!   per element. AND triples are the same with one-bit messages (one OT and one correction bit
//!   per AND per direction). Matrix triples are not made from OT: [`crate::Session::matmul`]
//!   then falls back to one Beaver triple per scalar product.
//!
//! Cost of the Gilboa method per Beaver triple: 64 SoftSpoken OTs in each direction
//! (`128 / k` bits of OT-extension corrections each: 512 bytes at `k = 2`; IKNP's matrix was
//! 1,024) plus 260 bytes of Gilboa corrections, each way: 772 bytes each way (IKNP with
//! byte-aligned corrections: 1,368). Processed in
//! chunks of [`GILBOA_CHUNK`] triples (bounded memory: about 70 MiB per chunk, the OT
//! outputs), each one OT extension in each direction and one message of corrections each way.

use rand::Rng;
use rand_chacha::ChaCha12Rng;
use rand_core::{CryptoRngCore, SeedableRng};
use rayon::prelude::*;
use tessera_core::Link;
use tessera_ot::softspoken::{SoftSpokenReceiver, SoftSpokenSender};
use tessera_ot::wire::{recv_items, send_items};
use tessera_ot::{Block, offload};
use zeroize::Zeroize;

use crate::rlwe::RlweOle;
use crate::wire::{
    KIND_AND_CORRECTIONS, KIND_DEALER_CORRECTION, KIND_DEALER_REQUEST, KIND_DEALER_SEED,
    KIND_GILBOA, recv_words, send_abort, send_words,
};
use crate::{ELEMENTS_MAX, MATMUL_PRODUCTS_MAX, MpcError, Party, Shares, check_len};

/// Beaver triples made per chunk by the dealer-free source.
pub const GILBOA_CHUNK: usize = 1 << 14;
/// AND-triple words (64 AND triples each) made per chunk by the dealer-free source.
pub const AND_CHUNK_WORDS: usize = 1 << 14;
/// The SoftSpoken field width `k` of the dealer-free source: `128 / k` bits of OT-extension
/// traffic per OT (see [`tessera_ot::softspoken`]). `k = 2` measured fastest on 2 shared vCPUs
/// (`k = 4` sends half as much but spends more on AES than it saves on the link).
pub const OT_FIELD_BITS: usize = 2;
/// Bytes of Gilboa corrections per Beaver triple (see the module docs).
pub const GILBOA_ITEM_BYTES: usize = 260;

/// One party's shares of `n` Beaver triples: `a`, `b`, `c` with `c = a · b` over `Z_2^64`.
#[derive(Debug)]
pub struct ArithTriples {
    /// Shares of `a`.
    pub a: Shares,
    /// Shares of `b`.
    pub b: Shares,
    /// Shares of `c = a · b`.
    pub c: Shares,
}

/// One party's XOR shares of `64 · words` AND triples packed in words: `c = a ∧ b` bitwise.
/// `Debug` shows only lengths.
pub struct BitTriples {
    /// Shares of `a`.
    pub a: Vec<u64>,
    /// Shares of `b`.
    pub b: Vec<u64>,
    /// Shares of `c = a ∧ b`.
    pub c: Vec<u64>,
}

impl std::fmt::Debug for BitTriples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BitTriples(words {})", self.a.len())
    }
}

impl Drop for BitTriples {
    fn drop(&mut self) {
        self.a.zeroize();
        self.b.zeroize();
        self.c.zeroize();
    }
}

/// One party's shares of a matrix triple: `A` (`m × k`), `B` (`k × n`), `C = A · B`
/// (`m × n`), all row-major over `Z_2^64`.
#[derive(Debug)]
pub struct MatrixTriple {
    /// Shares of `A`, row-major `m × k`.
    pub a: Shares,
    /// Shares of `B`, row-major `k × n`.
    pub b: Shares,
    /// Shares of `C = A · B`, row-major `m × n`.
    pub c: Shares,
}

/// Where a session's triples come from.
#[derive(Debug)]
pub enum TripleSource {
    /// From a dealer, over the party's own link to it.
    Dealer(DealerClient),
    /// From OT extension between the two parties, over the peer link.
    Ot(Box<OtTriples>),
}

impl TripleSource {
    /// `n` Beaver triples (the peer asks for the same `n` at the same point).
    ///
    /// # Errors
    /// [`MpcError::Bounds`] past [`ELEMENTS_MAX`]; any failure of the source (link,
    /// malformed frame, abort).
    pub async fn arith<R: CryptoRngCore + Send>(
        &mut self,
        peer: &dyn Link,
        rng: &mut R,
        n: usize,
    ) -> Result<ArithTriples, MpcError> {
        check_len(n)?;
        match self {
            TripleSource::Dealer(d) => d.arith(n).await,
            TripleSource::Ot(o) => o.arith(peer, rng, n).await,
        }
    }

    /// `64 · words` AND triples, packed.
    ///
    /// # Errors
    /// As [`TripleSource::arith`].
    pub async fn bits<R: CryptoRngCore + Send>(
        &mut self,
        peer: &dyn Link,
        rng: &mut R,
        words: usize,
    ) -> Result<BitTriples, MpcError> {
        check_len(words)?;
        match self {
            TripleSource::Dealer(d) => d.bits(words).await,
            TripleSource::Ot(o) => o.bits(peer, rng, words).await,
        }
    }

    /// The RLWE keys of a dealer-free source that has them ([`ArithMethod::Rlwe`]): inner
    /// products are then computed directly on the shares ([`crate::Session::dot_ring`]).
    pub fn rlwe(&self) -> Option<&RlweOle> {
        match self {
            TripleSource::Ot(o) => o.rlwe.as_ref(),
            TripleSource::Dealer(_) => None,
        }
    }

    /// A matrix triple of shape `(m, k, n)`, or `None` if the source makes none (OT): the
    /// caller then uses `m · k · n` Beaver triples.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] past the bounds; as [`TripleSource::arith`].
    pub async fn matrix(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Option<MatrixTriple>, MpcError> {
        match self {
            TripleSource::Dealer(d) => d.matrix(m, k, n).await.map(Some),
            TripleSource::Ot(_) => Ok(None),
        }
    }
}

// ------------------------------------------------------------------------------------ dealer

/// What a request asks the dealer for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Arith(usize),
    Bits(usize),
    Matrix(usize, usize, usize),
}

const REQUEST_BYTES: usize = 13;

impl Request {
    fn encode(self) -> [u8; REQUEST_BYTES] {
        let (tag, d) = match self {
            Request::Arith(n) => (0u8, [n, 0, 0]),
            Request::Bits(w) => (1, [w, 0, 0]),
            Request::Matrix(m, k, n) => (2, [m, k, n]),
        };
        let mut out = [0u8; REQUEST_BYTES];
        out[0] = tag;
        for (i, v) in d.iter().enumerate() {
            // Dimensions are checked against ELEMENTS_MAX (< 2^32) before encoding.
            out[1 + 4 * i..5 + 4 * i].copy_from_slice(&(*v as u32).to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, MpcError> {
        let word = |i: usize| -> Result<usize, MpcError> {
            let b = bytes
                .get(1 + 4 * i..5 + 4 * i)
                .ok_or_else(|| MpcError::Malformed("short dealer request".into()))?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let r = match bytes.first() {
            Some(0) => Request::Arith(word(0)?),
            Some(1) => Request::Bits(word(0)?),
            Some(2) => Request::Matrix(word(0)?, word(1)?, word(2)?),
            _ => return Err(MpcError::Malformed("unknown dealer request".into())),
        };
        r.check()?;
        Ok(r)
    }

    /// The lengths of (`a`, `b`, `c`).
    fn lens(self) -> [usize; 3] {
        match self {
            Request::Arith(n) | Request::Bits(n) => [n; 3],
            Request::Matrix(m, k, n) => [m * k, k * n, m * n],
        }
    }

    fn check(self) -> Result<(), MpcError> {
        let Request::Matrix(m, k, n) = self else {
            if let Request::Arith(n) | Request::Bits(n) = self {
                check_len(n)?;
            }
            return Ok(());
        };
        let products = m
            .checked_mul(k)
            .and_then(|x| x.checked_mul(n))
            .filter(|&p| p <= MATMUL_PRODUCTS_MAX);
        if products.is_none()
            || m * k > ELEMENTS_MAX
            || k * n > ELEMENTS_MAX
            || m * n > ELEMENTS_MAX
        {
            return Err(MpcError::Bounds(format!(
                "matrix triple {m}×{k}·{k}×{n} past the bounds"
            )));
        }
        Ok(())
    }
}

/// Expands a seed into vectors of the given lengths (ChaCha12, in order).
fn expand(seed: &[u8; 32], lens: &[usize]) -> Vec<Vec<u64>> {
    let mut prg = ChaCha12Rng::from_seed(*seed);
    lens.iter()
        .map(|&len| {
            let mut v = vec![0u64; len];
            prg.fill(&mut v[..]);
            v
        })
        .collect()
}

/// The correction `c1` of party 1 for a request, from both expansions.
fn correction(req: Request, p0: &[Vec<u64>], p1: &[Vec<u64>]) -> Vec<u64> {
    let (Some([a0, b0, c0]), Some([a1, b1])) = (p0.get(..3), p1.get(..2)) else {
        return Vec::new();
    };
    match req {
        Request::Arith(_) => a0
            .par_iter()
            .zip(b0.par_iter())
            .zip(c0.par_iter())
            .zip(a1.par_iter().zip(b1.par_iter()))
            .map(|(((a0, b0), c0), (a1, b1))| {
                a0.wrapping_add(*a1)
                    .wrapping_mul(b0.wrapping_add(*b1))
                    .wrapping_sub(*c0)
            })
            .collect(),
        Request::Bits(_) => a0
            .iter()
            .zip(b0)
            .zip(c0)
            .zip(a1.iter().zip(b1))
            .map(|(((a0, b0), c0), (a1, b1))| ((a0 ^ a1) & (b0 ^ b1)) ^ c0)
            .collect(),
        Request::Matrix(m, k, n) => {
            let a: Vec<u64> = a0.iter().zip(a1).map(|(x, y)| x.wrapping_add(*y)).collect();
            let b: Vec<u64> = b0.iter().zip(b1).map(|(x, y)| x.wrapping_add(*y)).collect();
            let mut c = matmul_plain(&a, &b, m, k, n);
            for (c, c0) in c.iter_mut().zip(c0) {
                *c = c.wrapping_sub(*c0);
            }
            c
        }
    }
}

/// The clear matrix product over `Z_2^64` of `a` (`m × k`) and `b` (`k × n`), row-major.
pub(crate) fn matmul_plain(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut c = vec![0u64; m * n];
    c.par_chunks_mut(n.max(1))
        .take(m)
        .enumerate()
        .for_each(|(i, row)| {
            for l in 0..k {
                let x = a.get(i * k + l).copied().unwrap_or(0);
                for (j, out) in row.iter_mut().enumerate() {
                    let y = b.get(l * n + j).copied().unwrap_or(0);
                    *out = out.wrapping_add(x.wrapping_mul(y));
                }
            }
        });
    c
}

/// Serves triples to the two parties over their links to the dealer until both links fail
/// (closed by the parties, or otherwise). Each request must come from both parties, identical; the dealer then sends party 0
/// a seed and party 1 a seed and the correction vector. Returns the number of batches dealt.
///
/// # Errors
/// [`MpcError::Malformed`] if a request is malformed or the two requests differ (both parties
/// are sent an abort frame, code 1); [`MpcError::Bounds`] for a request past the bounds; a link
/// error if one party goes away while the other asks (the other is not sent an abort: its
/// link closes).
pub async fn run_dealer<R: CryptoRngCore + Send>(
    to_p0: &dyn Link,
    to_p1: &dyn Link,
    rng: &mut R,
) -> Result<u64, MpcError> {
    let mut batches = 0u64;
    loop {
        let (r0, r1) = tokio::join!(
            recv_items(to_p0, KIND_DEALER_REQUEST, REQUEST_BYTES, 1),
            recv_items(to_p1, KIND_DEALER_REQUEST, REQUEST_BYTES, 1)
        );
        // Both links closed (however the transport words it): the parties are done.
        let gone = |r: &Result<Vec<u8>, tessera_ot::OtError>| {
            matches!(r, Err(tessera_ot::OtError::Link(_)))
        };
        if gone(&r0) && gone(&r1) {
            return Ok(batches);
        }
        // One party's link failed: the other is told by its link closing (an abort frame
        // would blame a malformed request, and its worker the peer).
        let (r0, r1) = match (r0, r1) {
            (Err(tessera_ot::OtError::Link(l)), _) | (_, Err(tessera_ot::OtError::Link(l))) => {
                return Err(MpcError::Link(l));
            }
            other => other,
        };
        let parsed = match (r0, r1) {
            (Ok(x), Ok(y)) => Request::decode(&x).and_then(|a| {
                let b = Request::decode(&y)?;
                if a == b {
                    Ok(a)
                } else {
                    Err(MpcError::Malformed(format!(
                        "the parties asked for different triples: {a:?} and {b:?}"
                    )))
                }
            }),
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        };
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                send_abort(to_p0, 1).await;
                send_abort(to_p1, 1).await;
                return Err(e);
            }
        };
        let mut seeds = [[0u8; 32]; 2];
        rng.fill_bytes(&mut seeds[0]);
        rng.fill_bytes(&mut seeds[1]);
        let lens = req.lens();
        let corr = offload(move || {
            let p0 = expand(&seeds[0], &lens);
            let p1 = expand(&seeds[1], &lens[..2]);
            (correction(req, &p0, &p1), seeds)
        })
        .await;
        let (c1, mut seeds) = corr;
        let (s0, s1) = tokio::join!(send_items(to_p0, KIND_DEALER_SEED, 32, &seeds[0]), async {
            send_items(to_p1, KIND_DEALER_SEED, 32, &seeds[1]).await?;
            send_words(to_p1, KIND_DEALER_CORRECTION, &c1)
                .await
                .map_err(|e| match e {
                    MpcError::Link(l) => tessera_ot::OtError::Link(l),
                    other => tessera_ot::OtError::Protocol(other.to_string()),
                })
        });
        seeds.zeroize();
        s0?;
        s1?;
        batches += 1;
    }
}

/// A party's end of its link to the dealer. `Debug` shows only the party.
pub struct DealerClient {
    party: Party,
    link: Box<dyn Link>,
}

impl std::fmt::Debug for DealerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DealerClient")
            .field("party", &self.party)
            .finish_non_exhaustive()
    }
}

impl DealerClient {
    /// `party`'s client over its own `link` to the dealer ([`run_dealer`]).
    pub fn new(party: Party, link: Box<dyn Link>) -> Self {
        DealerClient { party, link }
    }

    /// Asks for one batch and expands it: (`a`, `b`, `c`).
    async fn fetch(&mut self, req: Request) -> Result<[Vec<u64>; 3], MpcError> {
        req.check()?;
        send_items(
            self.link.as_ref(),
            KIND_DEALER_REQUEST,
            REQUEST_BYTES,
            &req.encode(),
        )
        .await?;
        let seed = recv_items(self.link.as_ref(), KIND_DEALER_SEED, 32, 1).await?;
        let mut s = [0u8; 32];
        s.copy_from_slice(&seed);
        let lens = req.lens();
        let c1 = match self.party {
            Party::P0 => None,
            Party::P1 => {
                Some(recv_words(self.link.as_ref(), KIND_DEALER_CORRECTION, lens[2]).await?)
            }
        };
        let mut v = offload(move || {
            let v = expand(&s, &lens[..if c1.is_some() { 2 } else { 3 }]);
            s.zeroize();
            (v, c1)
        })
        .await;
        let c = match v.1.take() {
            Some(c1) => c1,
            None => v.0.pop().unwrap_or_default(),
        };
        let mut it = v.0.into_iter();
        let (a, b) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
        Ok([a, b, c])
    }

    async fn arith(&mut self, n: usize) -> Result<ArithTriples, MpcError> {
        let [a, b, c] = self.fetch(Request::Arith(n)).await?;
        Ok(ArithTriples {
            a: Shares(a),
            b: Shares(b),
            c: Shares(c),
        })
    }

    async fn bits(&mut self, words: usize) -> Result<BitTriples, MpcError> {
        let [a, b, c] = self.fetch(Request::Bits(words)).await?;
        Ok(BitTriples { a, b, c })
    }

    async fn matrix(&mut self, m: usize, k: usize, n: usize) -> Result<MatrixTriple, MpcError> {
        let [a, b, c] = self.fetch(Request::Matrix(m, k, n)).await?;
        Ok(MatrixTriple {
            a: Shares(a),
            b: Shares(b),
            c: Shares(c),
        })
    }
}

// ------------------------------------------------------------------------- dealer-free (OT)

/// How the dealer-free source makes the cross terms `a0·b1 + a1·b0` of Beaver triples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArithMethod {
    /// Oblivious linear evaluation over RLWE ([`crate::rlwe`]): about 216 bytes sent per
    /// triple by each party and a few NTTs per 8,192 triples; assumes decision-RLWE.
    #[default]
    Rlwe,
    /// Gilboa's multiplication over SoftSpoken OT (the module docs): 772 bytes each way per
    /// triple; assumes only what the OT extension does.
    Gilboa,
}

/// Dealer-free triples between the two parties: SoftSpoken OT extension in each direction
/// (AND triples, and Beaver triples by [`ArithMethod::Gilboa`]) and, by default, RLWE
/// oblivious linear evaluation for Beaver triples ([`ArithMethod::Rlwe`]). `Debug` shows no
/// secret.
#[derive(Debug)]
pub struct OtTriples {
    sender: SoftSpokenSender,
    receiver: SoftSpokenReceiver,
    /// The RLWE keys, for [`ArithMethod::Rlwe`].
    rlwe: Option<RlweOle>,
}

impl OtTriples {
    /// Sets up both OT extensions (128 base OTs each way) over the peer link; the peer calls it
    /// too, with the other [`Party`].
    ///
    /// # Errors
    /// Any failure of the base OTs.
    pub async fn setup<R: CryptoRngCore + Send>(
        party: Party,
        peer: &dyn Link,
        rng: &mut R,
    ) -> Result<Self, MpcError> {
        Self::setup_with(party, peer, rng, ArithMethod::default()).await
    }

    /// As [`OtTriples::setup`], with Beaver triples made by `method` (both parties must pass
    /// the same). [`ArithMethod::Rlwe`] also exchanges RLWE public keys (one message each
    /// way, [`crate::rlwe::RlweOle::setup`]).
    ///
    /// # Errors
    /// Any failure of the base OTs or of the key exchange.
    pub async fn setup_with<R: CryptoRngCore + Send>(
        party: Party,
        peer: &dyn Link,
        rng: &mut R,
        method: ArithMethod,
    ) -> Result<Self, MpcError> {
        let k = OT_FIELD_BITS;
        let (sender, receiver) = match party {
            Party::P0 => {
                let s = SoftSpokenSender::setup(peer, rng, k).await?;
                (s, SoftSpokenReceiver::setup(peer, rng, k).await?)
            }
            Party::P1 => {
                let r = SoftSpokenReceiver::setup(peer, rng, k).await?;
                (SoftSpokenSender::setup(peer, rng, k).await?, r)
            }
        };
        let rlwe = match method {
            ArithMethod::Rlwe => Some(RlweOle::setup(peer, rng).await?),
            ArithMethod::Gilboa => None,
        };
        Ok(OtTriples {
            sender,
            receiver,
            rlwe,
        })
    }

    /// The method this source makes Beaver triples with.
    pub fn arith_method(&self) -> ArithMethod {
        if self.rlwe.is_some() {
            ArithMethod::Rlwe
        } else {
            ArithMethod::Gilboa
        }
    }

    /// The two random-OT extensions of one chunk: `64 · words.len()` OTs where this party is
    /// the sender (`[m0, m1]` pairs, into `pairs`) and as many where it chooses (keys, into
    /// `keys`), its choice `64·w + i` being bit `i` of `words[w]`. The buffers are the caller's,
    /// resized and handed back, so a call of many chunks allocates them once.
    async fn both_ways(
        &mut self,
        peer: &dyn Link,
        words: &[u64],
        mut pairs: Vec<[Block; 2]>,
        mut keys: Vec<Block>,
    ) -> Result<(Vec<[Block; 2]>, Vec<Block>), MpcError> {
        let count = 64 * words.len();
        pairs.resize(count, [Block::ZERO; 2]);
        keys.resize(count, Block::ZERO);
        let mut packed: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let (pairs, keys) = tokio::join!(
            self.sender.send_into(peer, pairs),
            self.receiver.receive_packed_into(peer, &packed, keys)
        );
        packed.zeroize();
        Ok((pairs?, keys?))
    }

    async fn arith<R: CryptoRngCore + Send>(
        &mut self,
        peer: &dyn Link,
        rng: &mut R,
        n: usize,
    ) -> Result<ArithTriples, MpcError> {
        if let Some(ole) = &self.rlwe {
            let mut a = vec![0u64; n];
            let mut b = vec![0u64; n];
            rng.fill(&mut a[..]);
            rng.fill(&mut b[..]);
            let mut c = ole.cross_shares(peer, rng, &a, &b).await?;
            for ((c, x), y) in c.iter_mut().zip(&a).zip(&b) {
                *c = c.wrapping_add(x.wrapping_mul(*y));
            }
            return Ok(ArithTriples {
                a: Shares(a),
                b: Shares(b),
                c: Shares(c),
            });
        }
        let (mut a, mut b, mut c) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut pairs, mut keys) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < n {
            let m = GILBOA_CHUNK.min(n - done);
            let mut ca = vec![0u64; m];
            let mut cb = vec![0u64; m];
            rng.fill(&mut ca[..]);
            rng.fill(&mut cb[..]);
            (pairs, keys) = self.both_ways(peer, &cb, pairs, keys).await?;
            let a_s = ca.clone();
            let (corr, send_share, back) = offload(move || {
                let (corr, share) = gilboa_sender(&pairs, &a_s);
                (corr, share, pairs)
            })
            .await;
            pairs = back;
            let (sent, peer_corr) = tokio::join!(
                send_items(peer, KIND_GILBOA, GILBOA_ITEM_BYTES, &corr),
                recv_items(peer, KIND_GILBOA, GILBOA_ITEM_BYTES, m)
            );
            sent?;
            let peer_corr = peer_corr?;
            let b_s = cb.clone();
            let (recv_share, back) = offload(move || {
                let share = gilboa_receiver(&keys, &b_s, &peer_corr);
                (share, keys)
            })
            .await;
            keys = back;
            for i in 0..m {
                let (x, y) = (ca[i], cb[i]);
                c.push(
                    x.wrapping_mul(y)
                        .wrapping_add(send_share[i])
                        .wrapping_add(recv_share[i]),
                );
            }
            a.extend_from_slice(&ca);
            b.extend_from_slice(&cb);
            ca.zeroize();
            cb.zeroize();
            done += m;
        }
        for pair in &mut pairs {
            tessera_ot::wipe_blocks(pair);
        }
        tessera_ot::wipe_blocks(&mut keys);
        Ok(ArithTriples {
            a: Shares(a),
            b: Shares(b),
            c: Shares(c),
        })
    }

    async fn bits<R: CryptoRngCore + Send>(
        &mut self,
        peer: &dyn Link,
        rng: &mut R,
        words: usize,
    ) -> Result<BitTriples, MpcError> {
        let mut out = BitTriples {
            a: Vec::with_capacity(words),
            b: Vec::with_capacity(words),
            c: Vec::with_capacity(words),
        };
        let mut done = 0;
        while done < words {
            let w = AND_CHUNK_WORDS.min(words - done);
            let mut ca = vec![0u64; w];
            let mut cb = vec![0u64; w];
            rng.fill(&mut ca[..]);
            rng.fill(&mut cb[..]);
            let (pairs, keys) = self.both_ways(peer, &cb, Vec::new(), Vec::new()).await?;
            // Sender: correction bit x0 ⊕ x1 ⊕ a, own share x0 (x = lowest bit of the message).
            let mut corr = vec![0u64; w];
            let mut share = vec![0u64; w];
            for (j, p) in pairs.iter().enumerate() {
                let x0 = (u128::from(p[0]) & 1) as u64;
                let x1 = (u128::from(p[1]) & 1) as u64;
                let abit = (ca[j / 64] >> (j % 64)) & 1;
                corr[j / 64] |= (x0 ^ x1 ^ abit) << (j % 64);
                share[j / 64] |= x0 << (j % 64);
            }
            let (sent, peer_corr) = tokio::join!(
                send_words(peer, KIND_AND_CORRECTIONS, &corr),
                recv_words(peer, KIND_AND_CORRECTIONS, w)
            );
            sent?;
            let peer_corr = peer_corr?;
            // Receiver: lowest bit of the key ⊕ (choice ∧ correction).
            for (j, k) in keys.iter().enumerate() {
                let y = (u128::from(*k) & 1) as u64;
                share[j / 64] ^= y << (j % 64);
            }
            for (s, (bw, pc)) in share.iter_mut().zip(cb.iter().zip(&peer_corr)) {
                *s ^= bw & pc;
            }
            for i in 0..w {
                out.c.push((ca[i] & cb[i]) ^ share[i]);
            }
            out.a.extend_from_slice(&ca);
            out.b.extend_from_slice(&cb);
            ca.zeroize();
            cb.zeroize();
            share.zeroize();
            done += w;
        }
        Ok(out)
    }
}

/// Appends the low bits of words to a byte buffer, least significant bit first.
struct BitWriter<'a> {
    out: &'a mut [u8],
    at: usize,
    acc: u128,
    bits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut [u8]) -> Self {
        BitWriter {
            out,
            at: 0,
            acc: 0,
            bits: 0,
        }
    }

    /// Appends the low `w` bits of `x` (`1 ≤ w ≤ 64`).
    fn put(&mut self, x: u64, w: u32) {
        let masked = u128::from(x) & ((1u128 << w) - 1);
        self.acc |= masked << self.bits;
        self.bits += w;
        if self.bits >= 64 {
            self.emit(8);
        }
    }

    fn emit(&mut self, n: usize) {
        let bytes = (self.acc as u64).to_le_bytes();
        if let (Some(dst), Some(src)) = (self.out.get_mut(self.at..self.at + n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.at += n;
        self.acc >>= 8 * n;
        self.bits = self.bits.saturating_sub(8 * n as u32);
    }

    /// Writes the bits still held (whole bytes, the last one zero-padded).
    fn finish(mut self) {
        let n = self.bits.div_ceil(8) as usize;
        if n > 0 {
            self.emit(n);
        }
    }
}

/// Reads what [`BitWriter`] wrote (missing bytes read as zero).
struct BitReader<'a> {
    src: &'a [u8],
    at: usize,
    acc: u128,
    bits: u32,
}

impl<'a> BitReader<'a> {
    fn new(src: &'a [u8]) -> Self {
        BitReader {
            src,
            at: 0,
            acc: 0,
            bits: 0,
        }
    }

    /// The next `w` bits (`1 ≤ w ≤ 64`).
    fn take(&mut self, w: u32) -> u64 {
        if self.bits < w {
            let mut word = [0u8; 8];
            let n = self.src.len().saturating_sub(self.at).min(8);
            if let (Some(dst), Some(src)) = (word.get_mut(..n), self.src.get(self.at..self.at + n))
            {
                dst.copy_from_slice(src);
            }
            self.at += n;
            self.acc |= u128::from(u64::from_le_bytes(word)) << self.bits;
            self.bits += 64;
        }
        let x = (self.acc & ((1u128 << w) - 1)) as u64;
        self.acc >>= w;
        self.bits -= w;
        x
    }
}

/// Gilboa, sender's side, for the elements `a`: the corrections ([`GILBOA_ITEM_BYTES`] per
/// element: the correction of bit `i` in its low `64 − i` bits, packed) and this party's share
/// `−Σ_i 2^i x0_i` per element.
fn gilboa_sender(pairs: &[[tessera_ot::Block; 2]], a: &[u64]) -> (Vec<u8>, Vec<u64>) {
    let mut corr = vec![0u8; a.len() * GILBOA_ITEM_BYTES];
    let mut share = vec![0u64; a.len()];
    corr.par_chunks_mut(GILBOA_ITEM_BYTES)
        .zip(share.par_iter_mut())
        .zip(pairs.par_chunks(64))
        .zip(a.par_iter())
        .for_each(|(((out, s), ps), &a)| {
            let mut acc = 0u64;
            let mut w = BitWriter::new(out);
            for (i, p) in (0u32..).zip(ps) {
                let x0 = u128::from(p[0]) as u64;
                let x1 = u128::from(p[1]) as u64;
                w.put(x0.wrapping_add(a).wrapping_sub(x1), 64 - i);
                acc = acc.wrapping_sub(x0 << i);
            }
            w.finish();
            *s = acc;
        });
    (corr, share)
}

/// Gilboa, receiver's side: this party's share `Σ_i 2^i (k_i + b_i · c_i)` per element, from
/// its OT keys, its choice words `b` and the peer's corrections.
fn gilboa_receiver(keys: &[tessera_ot::Block], b: &[u64], corr: &[u8]) -> Vec<u64> {
    let mut share = vec![0u64; b.len()];
    share
        .par_iter_mut()
        .zip(keys.par_chunks(64))
        .zip(b.par_iter())
        .zip(corr.par_chunks(GILBOA_ITEM_BYTES))
        .for_each(|(((s, ks), &b), cs)| {
            let mut acc = 0u64;
            let mut r = BitReader::new(cs);
            for (i, k) in (0u32..).zip(ks) {
                let c = r.take(64 - i);
                let bit = (b >> i) & 1;
                let y = (u128::from(*k) as u64).wrapping_add(c & 0u64.wrapping_sub(bit));
                acc = acc.wrapping_add(y << i);
            }
            *s = acc;
        });
    share
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use tessera_core::MemLink;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn check_arith(t0: &ArithTriples, t1: &ArithTriples, n: usize) {
        assert_eq!((t0.a.len(), t1.c.len()), (n, n));
        for i in 0..n {
            let a = t0.a.0[i].wrapping_add(t1.a.0[i]);
            let b = t0.b.0[i].wrapping_add(t1.b.0[i]);
            let c = t0.c.0[i].wrapping_add(t1.c.0[i]);
            assert_eq!(c, a.wrapping_mul(b), "triple {i}");
        }
    }

    fn check_bits(t0: &BitTriples, t1: &BitTriples, words: usize) {
        assert_eq!(t0.a.len(), words);
        for i in 0..words {
            let a = t0.a[i] ^ t1.a[i];
            let b = t0.b[i] ^ t1.b[i];
            assert_eq!(t0.c[i] ^ t1.c[i], a & b, "word {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gilboa_triples_are_correct() {
        let (l0, l1) = MemLink::pair();
        let (mut r0, mut r1) = (rng(1), rng(2));
        let (o0, o1) = tokio::join!(
            OtTriples::setup(Party::P0, &l0, &mut r0),
            OtTriples::setup(Party::P1, &l1, &mut r1)
        );
        let (mut o0, mut o1) = (o0.expect("setup 0"), o1.expect("setup 1"));
        for n in [0, 1, 5, GILBOA_CHUNK + 3] {
            let (t0, t1) = tokio::join!(o0.arith(&l0, &mut r0, n), o1.arith(&l1, &mut r1, n));
            check_arith(&t0.expect("t0"), &t1.expect("t1"), n);
        }
        for w in [0, 1, 7, AND_CHUNK_WORDS + 1] {
            let (t0, t1) = tokio::join!(o0.bits(&l0, &mut r0, w), o1.bits(&l1, &mut r1, w));
            check_bits(&t0.expect("t0"), &t1.expect("t1"), w);
        }
    }

    #[test]
    fn corrections_pack_to_their_exact_widths() {
        let mut r = rng(5);
        let words: Vec<u64> = (0..64).map(|_| r.r#gen()).collect();
        let mut out = vec![0u8; GILBOA_ITEM_BYTES];
        let mut w = BitWriter::new(&mut out);
        for (i, x) in (0u32..).zip(&words) {
            w.put(*x, 64 - i);
        }
        w.finish();
        assert_eq!(
            (0..64u32).map(|i| 64 - i).sum::<u32>(),
            8 * GILBOA_ITEM_BYTES as u32
        );
        let mut rd = BitReader::new(&out);
        for (i, x) in (0u32..).zip(&words) {
            let mask = if i == 0 {
                u64::MAX
            } else {
                (1u64 << (64 - i)) - 1
            };
            assert_eq!(rd.take(64 - i), x & mask, "bit {i}");
        }
        // A short buffer reads as zeros, never panics.
        let mut rd = BitReader::new(&out[..3]);
        assert_eq!(
            rd.take(64),
            u64::from(out[0]) | u64::from(out[1]) << 8 | u64::from(out[2]) << 16
        );
        assert_eq!(rd.take(64), 0);
    }

    async fn dealt(n: usize) -> (ArithTriples, ArithTriples, BitTriples, BitTriples) {
        let (d0, p0) = MemLink::pair();
        let (d1, p1) = MemLink::pair();
        let dealer = tokio::spawn(async move {
            let mut r = rng(9);
            run_dealer(&d0, &d1, &mut r).await
        });
        let mut c0 = DealerClient::new(Party::P0, Box::new(p0));
        let mut c1 = DealerClient::new(Party::P1, Box::new(p1));
        let (t0, t1) = tokio::join!(c0.arith(n), c1.arith(n));
        let (b0, b1) = tokio::join!(c0.bits(n), c1.bits(n));
        let (m0, m1) = tokio::join!(c0.matrix(3, 4, 5), c1.matrix(3, 4, 5));
        let (m0, m1) = (m0.expect("m0"), m1.expect("m1"));
        let add = |x: &Shares, y: &Shares| -> Vec<u64> {
            x.0.iter()
                .zip(&y.0)
                .map(|(a, b)| a.wrapping_add(*b))
                .collect()
        };
        assert_eq!(
            add(&m0.c, &m1.c),
            matmul_plain(&add(&m0.a, &m1.a), &add(&m0.b, &m1.b), 3, 4, 5)
        );
        drop((c0, c1));
        assert_eq!(dealer.await.expect("join").expect("dealer"), 3);
        (
            t0.expect("t0"),
            t1.expect("t1"),
            b0.expect("b0"),
            b1.expect("b1"),
        )
    }

    #[tokio::test]
    async fn dealer_triples_are_correct() {
        for n in [0, 1, 1000] {
            let (t0, t1, b0, b1) = dealt(n).await;
            check_arith(&t0, &t1, n);
            check_bits(&b0, &b1, n);
        }
    }

    #[tokio::test]
    async fn dealer_refuses_different_requests_and_bad_frames() {
        let (d0, p0) = MemLink::pair();
        let (d1, p1) = MemLink::pair();
        let dealer = tokio::spawn(async move { run_dealer(&d0, &d1, &mut rng(3)).await });
        let mut c0 = DealerClient::new(Party::P0, Box::new(p0));
        let mut c1 = DealerClient::new(Party::P1, Box::new(p1));
        let (t0, t1) = tokio::join!(c0.arith(4), c1.arith(5));
        assert!(matches!(t0, Err(MpcError::PeerAborted(1))), "{t0:?}");
        assert!(matches!(t1, Err(MpcError::PeerAborted(1))), "{t1:?}");
        assert!(matches!(
            dealer.await.expect("join"),
            Err(MpcError::Malformed(_))
        ));

        // Garbage and oversized requests.
        for frame in [
            vec![
                KIND_DEALER_REQUEST,
                1,
                0,
                0,
                0,
                9,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            vec![
                KIND_DEALER_REQUEST,
                1,
                0,
                0,
                0,
                0,
                255,
                255,
                255,
                255,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            vec![
                KIND_DEALER_REQUEST,
                1,
                0,
                0,
                0,
                2,
                0,
                16,
                0,
                0,
                0,
                16,
                0,
                0,
                0,
                16,
                0,
                0,
            ],
            vec![0x13, 1],
            vec![],
        ] {
            let (d0, p0) = MemLink::pair();
            let (d1, p1) = MemLink::pair();
            let req = Request::Arith(1).encode();
            let mut good = vec![KIND_DEALER_REQUEST, 1, 0, 0, 0];
            good.extend_from_slice(&req);
            p0.send(bytes::Bytes::from(frame.clone()))
                .await
                .expect("send");
            p1.send(bytes::Bytes::from(good)).await.expect("send");
            let got = run_dealer(&d0, &d1, &mut rng(4)).await;
            assert!(
                matches!(got, Err(MpcError::Malformed(_) | MpcError::Bounds(_))),
                "{frame:?}: {got:?}"
            );
        }
    }

    #[tokio::test]
    async fn dealer_client_refuses_a_short_correction() {
        let (d1, p1) = MemLink::pair();
        let mut c1 = DealerClient::new(Party::P1, Box::new(p1));
        let serve = async {
            let _ = d1.recv().await;
            send_items(&d1, KIND_DEALER_SEED, 32, &[7u8; 32])
                .await
                .expect("seed");
            // 3 words where 4 are due, then a frame of the wrong kind.
            send_words(&d1, KIND_DEALER_CORRECTION, &[1, 2, 3])
                .await
                .expect("c");
            send_words(&d1, KIND_DEALER_SEED, &[1]).await.expect("c");
        };
        let (got, ()) = tokio::join!(c1.arith(4), serve);
        assert!(matches!(got, Err(MpcError::Malformed(_))), "{got:?}");
    }
}
