//! [`Session`]: one party's side of a two-party computation over additive shares in
//! `Z_2^64`: input sharing, reveal, linear operations, Beaver multiplication, matrix product,
//! truncation and division by public integers, sum, mean, variance, and histogram / group-by
//! sums through secret one-hot encodings. Comparison-based operations are in
//! [`crate::compare`].
//!
//! Round structure: every multiplication layer (a call of [`Session::mul`], [`Session::matmul`],
//! …) is one opening message each way, plus what the triple source needs (nothing on the peer
//! link for the dealer; for the dealer-free source, one message of RLWE queries and one of
//! answers each way per chunk of 65,536 Beaver triples, or with Gilboa's method one OT
//! extension and one correction message each way per chunk). An inner product
//! ([`Session::dot`]) with the RLWE source is one message of queries and one of answers each
//! way, and no opening. Linear operations, truncation, sum and mean are local.

use rand::Rng;
use rand_core::CryptoRngCore;
use tessera_core::Link;

use crate::triples::{ArithTriples, BitTriples, MatrixTriple, TripleSource, matmul_plain};
use crate::wire::{KIND_INPUT, KIND_OPEN, KIND_REVEAL, exchange_words, recv_words, send_words};
use crate::{
    ELEMENTS_MAX, FixedPoint, MATMUL_PRODUCTS_MAX, MpcError, Party, Shares, check_len, same_len,
};

/// One party's side of a computation: its role, its link to the peer, the fixed-point format,
/// its triple source and its RNG (drawn for input masks and, with the dealer-free source, for
/// its triple shares). `Debug` shows no secret.
pub struct Session<'l, R> {
    party: Party,
    link: &'l dyn Link,
    fx: FixedPoint,
    source: TripleSource,
    pub(crate) rng: R,
    /// A call failed half-way: the two sides are out of step.
    broken: bool,
    /// Asked before this party sends its shares of an output opened to the peer.
    gate: Option<ReleaseGate<'l>>,
    /// Correlations drawn from the source: Beaver triples, AND triples (bits) and the
    /// elements of matrix triples (`m·k + k·n + m·n`).
    triples_used: u64,
}

/// Asked before a party sends its shares of an output that [`Session::reveal_to`] opens to the
/// peer (the moment the peer can compute the output on its own: a job's delivery point);
/// `false` stops the session with [`MpcError::NotReleased`] and nothing of the output sent.
pub type ReleaseGate<'g> = Box<
    dyn FnMut() -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'g>> + Send + Sync + 'g,
>;

impl<R> std::fmt::Debug for Session<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("party", &self.party)
            .field("fx", &self.fx)
            .field("source", &self.source)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// A secret one-hot encoding of `rows` category indices among `categories`: row-major
/// `rows × categories` shares of ring integers 0 / 1 (not fixed-point scaled).
#[derive(Debug)]
pub struct OneHot {
    /// The shares, row-major.
    pub shares: Shares,
    /// Number of rows.
    pub rows: usize,
    /// Number of categories.
    pub categories: usize,
}

impl<'l, R: CryptoRngCore + Send> Session<'l, R> {
    /// A session of `party` over `link` to the peer (who makes its own with the other party,
    /// the same format and the same kind of source).
    pub fn new(
        party: Party,
        link: &'l dyn Link,
        fx: FixedPoint,
        source: TripleSource,
        rng: R,
    ) -> Self {
        Session {
            party,
            link,
            fx,
            source,
            rng,
            broken: false,
            gate: None,
            triples_used: 0,
        }
    }

    /// How many correlations this session drew from its source so far: Beaver triples, AND
    /// triples (one per bit) and matrix-triple elements (metered as a job's usage).
    pub fn triples_used(&self) -> u64 {
        self.triples_used
    }

    /// Sets the gate asked before each output opened to the peer leaves (see
    /// [`ReleaseGate`]).
    pub fn set_release_gate(&mut self, gate: ReleaseGate<'l>) {
        self.gate = Some(gate);
    }

    /// This session's party.
    pub fn party(&self) -> Party {
        self.party
    }

    /// The fixed-point format.
    pub fn fixed_point(&self) -> FixedPoint {
        self.fx
    }

    /// The link to the peer.
    pub fn link(&self) -> &'l dyn Link {
        self.link
    }

    // ------------------------------------------------------------- guarded communication

    fn check_step(&self) -> Result<(), MpcError> {
        if self.broken {
            return Err(MpcError::OutOfStep);
        }
        Ok(())
    }

    fn settle<T>(&mut self, r: Result<T, MpcError>) -> Result<T, MpcError> {
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Sends `mine` and receives the peer's vector of the same length (one message each way).
    pub(crate) async fn open_words(
        &mut self,
        kind: u8,
        mine: &[u64],
    ) -> Result<Vec<u64>, MpcError> {
        self.check_step()?;
        let r = exchange_words(self.link, kind, mine).await;
        self.settle(r)
    }

    pub(crate) async fn arith_triples(&mut self, n: usize) -> Result<ArithTriples, MpcError> {
        self.check_step()?;
        self.triples_used = self.triples_used.saturating_add(n as u64);
        let r = self.source.arith(self.link, &mut self.rng, n).await;
        self.settle(r)
    }

    pub(crate) async fn bit_triples(&mut self, words: usize) -> Result<BitTriples, MpcError> {
        self.check_step()?;
        self.triples_used = self.triples_used.saturating_add(64 * words as u64);
        let r = self.source.bits(self.link, &mut self.rng, words).await;
        self.settle(r)
    }

    async fn matrix_triple(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Option<MatrixTriple>, MpcError> {
        self.check_step()?;
        let r = self.source.matrix(m, k, n).await;
        if let Ok(Some(_)) = &r {
            let elements = m * k + k * n + m * n;
            self.triples_used = self.triples_used.saturating_add(elements as u64);
        }
        self.settle(r)
    }

    // ------------------------------------------------------------------ input and output

    /// Secret-shares `n` ring elements owned by `owner`: the owner passes `Some(values)`, the
    /// other party `None`. The owner draws a uniform mask `r`, keeps `x − r` and sends `r`
    /// (one message, owner → other).
    ///
    /// # Errors
    /// [`MpcError::Bounds`] if `n > ELEMENTS_MAX` or the owner passes `None`;
    /// [`MpcError::LengthMismatch`] if `values.len() != n`; link and frame errors.
    pub async fn input_ring(
        &mut self,
        owner: Party,
        values: Option<&[u64]>,
        n: usize,
    ) -> Result<Shares, MpcError> {
        check_len(n)?;
        self.check_step()?;
        if owner != self.party {
            let r = recv_words(self.link, KIND_INPUT, n).await;
            return self.settle(r).map(Shares);
        }
        let values =
            values.ok_or_else(|| MpcError::Bounds("the owner must pass its values".into()))?;
        same_len(values.len(), n)?;
        let mut mask = vec![0u64; n];
        self.rng.fill(&mut mask[..]);
        let mine = values
            .iter()
            .zip(&mask)
            .map(|(x, r)| x.wrapping_sub(*r))
            .collect();
        let r = send_words(self.link, KIND_INPUT, &mask).await;
        zeroize::Zeroize::zeroize(&mut mask);
        self.settle(r)?;
        Ok(Shares(mine))
    }

    /// Secret-shares `n` reals owned by `owner`, fixed-point encoded ([`FixedPoint::encode`]).
    ///
    /// # Errors
    /// As [`Session::input_ring`]; [`MpcError::Bounds`] for a value out of the fixed-point range.
    pub async fn input(
        &mut self,
        owner: Party,
        values: Option<&[f64]>,
        n: usize,
    ) -> Result<Shares, MpcError> {
        let encoded = match values {
            Some(v) if owner == self.party => Some(self.fx.encode_all(v)?),
            _ => None,
        };
        self.input_ring(owner, encoded.as_deref(), n).await
    }

    /// Opens `x` to both parties (one message each way): the ring values.
    ///
    /// # Errors
    /// Link and frame errors.
    pub async fn reveal(&mut self, x: &Shares) -> Result<Vec<u64>, MpcError> {
        let theirs = self.open_words(KIND_OPEN, &x.0).await?;
        Ok(x.0
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect())
    }

    /// Opens `x` to party `to` only: the other party sends its shares (one message, other →
    /// `to`) and learns nothing; `to` gets `Some(values)`, the other `None`. For outputs that
    /// belong to one party (a buyer's statistics, a model revealed to the party a policy names).
    ///
    /// # Errors
    /// Link and frame errors (at `to`: a frame of another kind or length is
    /// [`MpcError::Malformed`]).
    pub async fn reveal_to(&mut self, to: Party, x: &Shares) -> Result<Option<Vec<u64>>, MpcError> {
        self.check_step()?;
        if to != self.party {
            if let Some(gate) = self.gate.as_mut()
                && !gate().await
            {
                self.broken = true;
                return Err(MpcError::NotReleased);
            }
            let r = send_words(self.link, KIND_REVEAL, &x.0).await;
            self.settle(r)?;
            return Ok(None);
        }
        let r = recv_words(self.link, KIND_REVEAL, x.len()).await;
        let theirs = self.settle(r)?;
        Ok(Some(
            x.0.iter()
                .zip(&theirs)
                .map(|(a, b)| a.wrapping_add(*b))
                .collect(),
        ))
    }

    /// Opens `x` and decodes it as fixed-point reals.
    ///
    /// # Errors
    /// As [`Session::reveal`].
    pub async fn reveal_fixed(&mut self, x: &Shares) -> Result<Vec<f64>, MpcError> {
        Ok(self.fx.decode_all(&self.reveal(x).await?))
    }

    // ------------------------------------------------------------------- local operations

    /// `x + y`, local.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`].
    pub fn add(&self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        same_len(x.len(), y.len())?;
        Ok(Shares(
            x.0.iter()
                .zip(&y.0)
                .map(|(a, b)| a.wrapping_add(*b))
                .collect(),
        ))
    }

    /// `x − y`, local.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`].
    pub fn sub(&self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        same_len(x.len(), y.len())?;
        Ok(Shares(
            x.0.iter()
                .zip(&y.0)
                .map(|(a, b)| a.wrapping_sub(*b))
                .collect(),
        ))
    }

    /// `x + c` for a public ring constant `c` (party 0 adds it), local.
    pub fn add_public_ring(&self, x: &Shares, c: u64) -> Shares {
        match self.party {
            Party::P0 => Shares(x.0.iter().map(|a| a.wrapping_add(c)).collect()),
            Party::P1 => x.clone(),
        }
    }

    /// `x + c` for a public real `c` (fixed-point encoded), local.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] if `c` is out of the fixed-point range.
    pub fn add_public(&self, x: &Shares, c: f64) -> Result<Shares, MpcError> {
        Ok(self.add_public_ring(x, self.fx.encode(c)?))
    }

    /// `x · c` for a public ring constant `c` (no truncation), local.
    pub fn mul_public_ring(&self, x: &Shares, c: u64) -> Shares {
        Shares(x.0.iter().map(|a| a.wrapping_mul(c)).collect())
    }

    /// `x · c` for a public real `c`: product with `c`'s encoding, then [`Session::truncate`];
    /// local. Error: one ulp from the truncation plus `|x| · ulp / 2` from encoding `c`.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] if `c` is out of the fixed-point range.
    pub fn mul_public(&self, x: &Shares, c: f64) -> Result<Shares, MpcError> {
        Ok(self.truncate(&self.mul_public_ring(x, self.fx.encode(c)?)))
    }

    /// Divides by a public integer `d ≥ 1`, locally, after SecureML (Mohassel–Zhang, S&P 2017,
    /// §4.1, Theorem 1, there for `d = 2^f`): party 0 takes `⌊x0 / d⌋`, party 1
    /// `−⌊(−x1 mod 2^64) / d⌋` (unsigned). The result is `⌊x / d⌋` or `⌈x / d⌉` (off by less
    /// than one unit) except with probability at most `|x| / 2^64` per element over the
    /// sharing's randomness (the signed value `x`), when it is wrong by about `2^64 / d`:
    /// for `|x| < 2^ℓ`, at most `2^(ℓ − 64)`.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] if `d == 0`.
    pub fn div_public(&self, x: &Shares, d: u64) -> Result<Shares, MpcError> {
        if d == 0 {
            return Err(MpcError::Bounds("division by zero".into()));
        }
        Ok(Shares(match self.party {
            Party::P0 => x.0.iter().map(|a| a / d).collect(),
            Party::P1 => {
                x.0.iter()
                    .map(|a| 0u64.wrapping_sub(0u64.wrapping_sub(*a) / d))
                    .collect()
            }
        }))
    }

    /// Fixed-point truncation by `2^f` ([`Session::div_public`] with `d = 2^f`, local): after a
    /// product of two encodings. Error at most one ulp (`2^−f`), except with probability at
    /// most `2^(ℓ − 64)` per element for products below `2^ℓ` (as ring integers, i.e.
    /// `|x · y| < 2^(ℓ − 2f)` as reals): e.g. with `f = 18` and `|x · y| < 2^10`, `ℓ = 46`
    /// and the failure probability is below `2^−18` per element.
    pub fn truncate(&self, x: &Shares) -> Shares {
        let d = 1u64 << self.fx.frac_bits();
        match self.party {
            Party::P0 => Shares(x.0.iter().map(|a| a / d).collect()),
            Party::P1 => Shares(
                x.0.iter()
                    .map(|a| 0u64.wrapping_sub(0u64.wrapping_sub(*a) / d))
                    .collect(),
            ),
        }
    }

    /// The sum of all elements (length 1), local.
    pub fn sum(&self, x: &Shares) -> Shares {
        Shares(vec![x.0.iter().fold(0u64, |s, a| s.wrapping_add(*a))])
    }

    /// The mean of all elements (length 1): [`Session::sum`] then [`Session::div_public`] by
    /// the length; local. Error below one ulp plus the inputs' (with the failure probability
    /// of `div_public` on the sum).
    ///
    /// # Errors
    /// [`MpcError::Bounds`] for an empty vector.
    pub fn mean(&self, x: &Shares) -> Result<Shares, MpcError> {
        if x.is_empty() {
            return Err(MpcError::Bounds("the mean of no elements".into()));
        }
        self.div_public(&self.sum(x), x.len() as u64)
    }

    /// Repeats each element of a length-1 vector `n` times (local).
    pub fn broadcast(&self, x: &Shares, n: usize) -> Shares {
        Shares(vec![x.0.first().copied().unwrap_or(0); n])
    }

    // --------------------------------------------------------------------- multiplication

    /// Elementwise product over the ring, without truncation: Beaver's multiplication with `n`
    /// triples `(a, b, c)`: both open `d = x − a`, `e = y − b` (one message of `2n` words
    /// each way) and take `z = c + d·b + e·a (+ d·e for party 0)`. Exact.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`]; [`MpcError::Bounds`] past [`ELEMENTS_MAX`]; link, frame
    /// and triple-source errors.
    pub async fn mul_ring(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        same_len(x.len(), y.len())?;
        check_len(x.len())?;
        let n = x.len();
        let t = self.arith_triples(n).await?;
        let mut de = Vec::with_capacity(2 * n);
        de.extend(x.0.iter().zip(&t.a.0).map(|(x, a)| x.wrapping_sub(*a)));
        de.extend(y.0.iter().zip(&t.b.0).map(|(y, b)| y.wrapping_sub(*b)));
        let theirs = self.open_words(KIND_OPEN, &de).await?;
        for (m, o) in de.iter_mut().zip(&theirs) {
            *m = m.wrapping_add(*o);
        }
        let (d, e) = de.split_at(n);
        let p0 = self.party == Party::P0;
        Ok(Shares(
            (0..n)
                .map(|i| {
                    let (d, e) = (d[i], e[i]);
                    let z = t.c.0[i]
                        .wrapping_add(d.wrapping_mul(t.b.0[i]))
                        .wrapping_add(e.wrapping_mul(t.a.0[i]));
                    if p0 {
                        z.wrapping_add(d.wrapping_mul(e))
                    } else {
                        z
                    }
                })
                .collect(),
        ))
    }

    /// Elementwise fixed-point product: [`Session::mul_ring`] then [`Session::truncate`]. Error
    /// at most one ulp beyond the inputs' (with `truncate`'s failure probability).
    ///
    /// # Errors
    /// As [`Session::mul_ring`].
    pub async fn mul(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        let z = self.mul_ring(x, y).await?;
        Ok(self.truncate(&z))
    }

    /// Inner product `Σ x_i · y_i` over the ring, without truncation (length 1). With the
    /// dealer-free source's RLWE keys ([`crate::ArithMethod::Rlwe`]), computed directly on the
    /// shares: each party adds its own `⟨x_P, y_P⟩` to its share of the cross terms
    /// ([`crate::rlwe::RlweOle::dot_shares`]: one message of `⌈n / 8192⌉` queries and one of
    /// `⌈n / 2^20⌉` answers each way, no triples). Otherwise [`Session::mul_ring`] then
    /// [`Session::sum`] (`n` Beaver triples). Exact.
    ///
    /// # Errors
    /// As [`Session::mul_ring`].
    pub async fn dot_ring(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        same_len(x.len(), y.len())?;
        check_len(x.len())?;
        if let Some(ole) = self.source.rlwe() {
            self.check_step()?;
            let cross = ole.dot_shares(self.link, &mut self.rng, &x.0, &y.0).await;
            let cross = self.settle(cross)?;
            let own =
                x.0.iter()
                    .zip(&y.0)
                    .fold(0u64, |s, (a, b)| s.wrapping_add(a.wrapping_mul(*b)));
            return Ok(Shares(vec![own.wrapping_add(cross)]));
        }
        let p = self.mul_ring(x, y).await?;
        Ok(self.sum(&p))
    }

    /// Fixed-point inner product: [`Session::dot_ring`] then [`Session::truncate`]. Error at
    /// most `n` half-ulps of the inputs' products plus one ulp (with `truncate`'s failure
    /// probability, on a sum whose magnitude is that of the result).
    ///
    /// # Errors
    /// As [`Session::dot_ring`].
    pub async fn dot(&mut self, x: &Shares, y: &Shares) -> Result<Shares, MpcError> {
        let z = self.dot_ring(x, y).await?;
        Ok(self.truncate(&z))
    }

    /// Fixed-point matrix product of `x` (`m × k`, row-major) and `y` (`k × n`): one opening
    /// layer. With a dealer, one matrix triple `(A, B, C = AB)` (Mohassel–Zhang, SecureML §4.2):
    /// open `D = X − A`, `E = Y − B` (`mk + kn` words each way) and take
    /// `Z = C + D·B + A·E (+ D·E for party 0)`. With the dealer-free source, which makes no
    /// matrix triples, `m·k·n` Beaver triples (one per scalar product, `2mkn` words each way).
    /// Then one truncation per output: error at most one ulp beyond the exact product of the
    /// inputs (with `truncate`'s failure probability).
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`] if a length is not its shape's; [`MpcError::Bounds`] if
    /// `m·k·n > MATMUL_PRODUCTS_MAX` (or, without matrix triples, `> ELEMENTS_MAX`); as
    /// [`Session::mul_ring`].
    pub async fn matmul(
        &mut self,
        x: &Shares,
        y: &Shares,
        shape: (usize, usize, usize),
    ) -> Result<Shares, MpcError> {
        let z = self.matmul_ring(x, y, shape).await?;
        Ok(self.truncate(&z))
    }

    /// Matrix product over the ring, without truncation (as [`Session::matmul`] otherwise):
    /// exact. For products of ring integers with fixed-point values (a 0/1 selection or
    /// one-hot matrix times a column), whose result is fixed-point without rescaling.
    ///
    /// # Errors
    /// As [`Session::matmul`].
    pub async fn matmul_ring(
        &mut self,
        x: &Shares,
        y: &Shares,
        (m, k, n): (usize, usize, usize),
    ) -> Result<Shares, MpcError> {
        let products = m
            .checked_mul(k)
            .and_then(|v| v.checked_mul(n))
            .filter(|&p| p <= MATMUL_PRODUCTS_MAX)
            .ok_or_else(|| MpcError::Bounds(format!("{m}×{k}·{k}×{n} is past the bounds")))?;
        same_len(x.len(), m * k)?;
        same_len(y.len(), k * n)?;
        check_len(m * n)?;
        let z = match self.matrix_triple(m, k, n).await? {
            Some(t) => self.matmul_with(x, y, t, (m, k, n)).await?,
            None => {
                if products > ELEMENTS_MAX {
                    return Err(MpcError::Bounds(format!(
                        "{products} scalar products without matrix triples, at most {ELEMENTS_MAX}"
                    )));
                }
                let mut xe = Vec::with_capacity(products);
                let mut ye = Vec::with_capacity(products);
                for i in 0..m {
                    for j in 0..n {
                        for l in 0..k {
                            xe.push(x.0[i * k + l]);
                            ye.push(y.0[l * n + j]);
                        }
                    }
                }
                let p = self.mul_ring(&Shares(xe), &Shares(ye)).await?;
                Shares(
                    p.0.chunks(k.max(1))
                        .map(|c| c.iter().fold(0u64, |s, v| s.wrapping_add(*v)))
                        .take(m * n)
                        .chain(std::iter::repeat(0))
                        .take(m * n)
                        .collect(),
                )
            }
        };
        Ok(z)
    }

    async fn matmul_with(
        &mut self,
        x: &Shares,
        y: &Shares,
        t: MatrixTriple,
        (m, k, n): (usize, usize, usize),
    ) -> Result<Shares, MpcError> {
        let mut de: Vec<u64> =
            x.0.iter()
                .zip(&t.a.0)
                .map(|(x, a)| x.wrapping_sub(*a))
                .collect();
        de.extend(y.0.iter().zip(&t.b.0).map(|(y, b)| y.wrapping_sub(*b)));
        let theirs = self.open_words(KIND_OPEN, &de).await?;
        for (mine, o) in de.iter_mut().zip(&theirs) {
            *mine = mine.wrapping_add(*o);
        }
        let (d, e) = de.split_at(m * k);
        let db = matmul_plain(d, &t.b.0, m, k, n);
        let ae = matmul_plain(&t.a.0, e, m, k, n);
        let de_ = if self.party == Party::P0 {
            matmul_plain(d, e, m, k, n)
        } else {
            vec![0; m * n]
        };
        Ok(Shares(
            (0..m * n)
                .map(|i| {
                    t.c.0[i]
                        .wrapping_add(db[i])
                        .wrapping_add(ae[i])
                        .wrapping_add(de_[i])
                })
                .collect(),
        ))
    }

    // ------------------------------------------------------------------------ statistics

    /// The population variance `mean((x − mean(x))²)` (length 1): one inner product
    /// ([`Session::dot`]) of the deviations with themselves, divided by `n`.
    /// Error: with `x` exact, `|error| ≤ (2·max|x − mean| + 2)·ulp + ulp` roughly (the mean's
    /// ulp propagated through the square, one truncation, one division), with the failure
    /// probabilities of `truncate` and `div_public`.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] for an empty vector; as [`Session::mul`].
    pub async fn variance(&mut self, x: &Shares) -> Result<Shares, MpcError> {
        let m = self.mean(x)?;
        let d = self.sub(x, &self.broadcast(&m, x.len()))?;
        // Σ d² as one inner product (no triples with the RLWE source), then / n.
        let sq = self.dot(&d, &d).await?;
        self.div_public(&sq, x.len() as u64)
    }

    /// Secret-shares a one-hot encoding of `rows` category indices owned by `owner` (who passes
    /// `Some(categories)`, each `< k`): one message owner → other of `rows · k` words. This is
    /// how a party's own grouping column enters a group-by without being revealed.
    ///
    /// # Errors
    /// [`MpcError::Bounds`] for an index `≥ k`, `k == 0`, or `rows · k > ELEMENTS_MAX`; as
    /// [`Session::input_ring`].
    pub async fn one_hot_input(
        &mut self,
        owner: Party,
        categories: Option<&[u32]>,
        rows: usize,
        k: usize,
    ) -> Result<OneHot, MpcError> {
        let cells = rows
            .checked_mul(k)
            .filter(|&c| c <= ELEMENTS_MAX && k > 0)
            .ok_or_else(|| MpcError::Bounds(format!("{rows} rows × {k} categories")))?;
        let encoded = match categories {
            Some(cats) if owner == self.party => {
                same_len(cats.len(), rows)?;
                let mut v = vec![0u64; cells];
                for (r, &c) in cats.iter().enumerate() {
                    let c = c as usize;
                    if c >= k {
                        return Err(MpcError::Bounds(format!(
                            "category {c} of row {r}, only {k} categories"
                        )));
                    }
                    v[r * k + c] = 1;
                }
                Some(v)
            }
            _ => None,
        };
        let shares = self.input_ring(owner, encoded.as_deref(), cells).await?;
        Ok(OneHot {
            shares,
            rows,
            categories: k,
        })
    }

    /// The count of each category (length `k`, ring integers, not fixed-point): column sums
    /// of the one-hot encoding, local and exact.
    pub fn histogram(&self, h: &OneHot) -> Shares {
        let mut out = vec![0u64; h.categories];
        for row in h.shares.0.chunks(h.categories.max(1)) {
            for (o, v) in out.iter_mut().zip(row) {
                *o = o.wrapping_add(*v);
            }
        }
        Shares(out)
    }

    /// The sum of `values` (fixed-point, one per row) per category (length `k`, fixed-point):
    /// one multiplication layer of `rows · k` products of a one-hot bit with a value (exact:
    /// integer × fixed-point needs no truncation), then column sums. Exact given the values.
    ///
    /// # Errors
    /// [`MpcError::LengthMismatch`] if `values.len() != rows`; as [`Session::mul_ring`].
    pub async fn group_sum(&mut self, h: &OneHot, values: &Shares) -> Result<Shares, MpcError> {
        same_len(values.len(), h.rows)?;
        let mut wide = Vec::with_capacity(h.shares.len());
        for v in &values.0 {
            wide.extend(std::iter::repeat_n(*v, h.categories));
        }
        let prod = self.mul_ring(&h.shares, &Shares(wide)).await?;
        Ok(self.histogram(&OneHot {
            shares: prod,
            rows: h.rows,
            categories: h.categories,
        }))
    }
}
