//! Logistic-regression training on vertically partitioned data under MPC ([`train`]), after
//! SecureML (Mohassel–Zhang, "SecureML: A System for Scalable Privacy-Preserving Machine
//! Learning", S&P 2017, §4: secret-shared mini-batch gradient descent with matrix triples,
//! local truncation, and a piecewise-linear activation).
//!
//! # Shapes
//!
//! Both parties hold the same `rows` aligned rows (row `i` of one is row `i` of the other, e.g.
//! after PSI). Party 0 holds `features_p0` feature columns, party 1 `features_p1`; the label
//! (`0.0` or `1.0` per row) is held by [`LrLayout::label_owner`]. Each party passes its own
//! features row-major (`rows × own features`). The model is `w` of length
//! `d = features_p0 + features_p1` (party 0's features first) and a bias `b`:
//! `P(y = 1 | x) = σ(x · w + b)`.
//!
//! # Training
//!
//! Both parties secret-share their columns once: `X = [X_0 | X_1 | 1]` (`rows × (d + 1)`, the
//! last column the public constant 1 for the bias) and `y`. From `w = 0`, for each of
//! [`LrConfig::epochs`] epochs, for each mini-batch of [`LrConfig::batch_rows`] consecutive rows
//! (the last one may be shorter; no shuffling, so a clear computation can repeat it exactly):
//!
//! ```text
//! z = X_B · w                       one matrix product (one matrix triple with the dealer)
//! p = σ̃(z)                          Session::sigmoid: 33-piece linear interpolation on [−8, 8]
//! e = (p − y_B) · (lr / |B|)        local (scaled before the product: small ring magnitudes)
//! w ← w − X_Bᵀ · e − lr · λ · w     one matrix product; no regularisation of the bias
//! ```
//!
//! 11 rounds per batch (1 + 9 + 1). The differences from the clear f64 algorithm are the
//! sigmoid's approximation (at most [`crate::compare::SIGMOID_ERROR_BOUND`] plus fixed-point
//! terms) and one ulp of truncation per product; SecureML's truncation failure (probability
//! `2^(ℓ − 64)` per element of ring magnitude `2^ℓ`) can hit `z` (then `σ̃` saturates: the
//! step moves by at most `lr · |x|`), the update terms being small by construction.
//!
//! # What is revealed
//!
//! During training nothing is opened (only the masked Beaver openings, see the crate's threat
//! model). The model then goes where [`ModelOutput`] says: [`ModelOutput::RevealTo`] opens it to
//! that party only (the other sends its shares and learns nothing: [`Model::Withheld`]);
//! [`ModelOutput::Shared`] keeps it as shares for later scoring ([`predict_shared`]). A
//! revealed model reveals what a model reveals (it is a function of all rows: membership
//! and attribute inference are outside this crate's threat model).
//!
//! Both parties exchange a SHA-256 digest of the layout, the configuration, the output and the
//! format first and refuse to train if they differ ([`LrError::PlanMismatch`]).

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::wire::{KIND_PLAN, send_abort};
use crate::{ELEMENTS_MAX, MATMUL_PRODUCTS_MAX, MpcError, Party, Session, Shares};

/// Abort code sent to the peer when a party's own training data do not fit the layout.
pub const ABORT_OWN_DATA: u8 = 0x22;
/// The most epochs a configuration may ask for.
pub const EPOCHS_MAX: usize = 10_000;

/// The public shape of the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LrLayout {
    /// Aligned rows.
    pub rows: usize,
    /// Feature columns held by party 0.
    pub features_p0: usize,
    /// Feature columns held by party 1.
    pub features_p1: usize,
    /// The party that holds the labels.
    pub label_owner: Party,
}

impl LrLayout {
    /// `d`, the number of weights (without the bias).
    pub fn features(&self) -> usize {
        self.features_p0 + self.features_p1
    }

    fn own_features(&self, p: Party) -> usize {
        match p {
            Party::P0 => self.features_p0,
            Party::P1 => self.features_p1,
        }
    }
}

/// Training hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Rows per mini-batch (`rows` for full-batch gradient descent).
    pub batch_rows: usize,
    /// The learning rate `lr`.
    pub learning_rate: f64,
    /// The L2 regularisation `λ` (the gradient gets `λ · w`, the bias none).
    pub l2: f64,
}

/// Where the trained model goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutput {
    /// Opened to this party only.
    RevealTo(Party),
    /// Kept as shares (for [`predict_shared`]).
    Shared,
}

/// A party's own training data.
#[derive(Debug, Clone, Copy)]
pub struct LrOwnData<'a> {
    /// This party's features, row-major `rows × own features`.
    pub features: &'a [f64],
    /// The labels (`0.0` / `1.0`), at the label owner only.
    pub labels: Option<&'a [f64]>,
}

/// The trained model as one party holds it.
#[derive(Debug)]
pub enum Model {
    /// The model in the clear (at the party it was revealed to).
    Revealed {
        /// The weights, party 0's features first.
        weights: Vec<f64>,
        /// The bias.
        bias: f64,
    },
    /// This party's shares of `[w | b]` (length `d + 1`).
    Shared(Shares),
    /// Revealed to the other party: nothing here.
    Withheld,
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum LrError {
    /// A layout or configuration outside what is allowed (no rows, no features, a batch of 0,
    /// a non-finite or negative rate, too many elements).
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// This party's own data do not fit the layout (length, non-finite or out-of-range
    /// values, labels other than 0 and 1, labels at the wrong party).
    #[error("own data: {0}")]
    Data(String),
    /// The peer trains with another layout, configuration, output or format.
    #[error("the peer runs another training plan")]
    PlanMismatch,
    /// The MPC protocol failed.
    #[error(transparent)]
    Mpc(#[from] MpcError),
}

fn check_config(layout: &LrLayout, cfg: &LrConfig) -> Result<(), LrError> {
    let d1 = layout.features() + 1;
    let bad = |s: String| Err(LrError::Config(s));
    if layout.rows == 0 || layout.features() == 0 {
        return bad(format!(
            "{} rows and {} features",
            layout.rows,
            layout.features()
        ));
    }
    if layout.rows.saturating_mul(d1) > ELEMENTS_MAX {
        return bad(format!(
            "{} × {d1} is past {ELEMENTS_MAX} elements",
            layout.rows
        ));
    }
    if cfg.batch_rows == 0 || cfg.batch_rows.saturating_mul(d1) > MATMUL_PRODUCTS_MAX {
        return bad(format!("a batch of {} rows", cfg.batch_rows));
    }
    if cfg.epochs > EPOCHS_MAX {
        return bad(format!("{} epochs, at most {EPOCHS_MAX}", cfg.epochs));
    }
    let ok = |v: f64| (0.0..=1e3).contains(&v);
    if !ok(cfg.learning_rate) || !ok(cfg.l2) {
        return bad(format!(
            "learning rate {} and λ {} must be in [0, 1000]",
            cfg.learning_rate, cfg.l2
        ));
    }
    Ok(())
}

fn check_data(
    layout: &LrLayout,
    me: Party,
    own: &LrOwnData<'_>,
    max_abs: f64,
) -> Result<(), LrError> {
    let want = layout.rows * layout.own_features(me);
    if own.features.len() != want {
        return Err(LrError::Data(format!(
            "{} feature values, the layout needs {want}",
            own.features.len()
        )));
    }
    if let Some(x) = own
        .features
        .iter()
        .find(|x| !(x.is_finite() && x.abs() <= max_abs))
    {
        return Err(LrError::Data(format!(
            "feature value {x} outside ±{max_abs}"
        )));
    }
    match (layout.label_owner == me, own.labels) {
        (true, Some(y)) => {
            if y.len() != layout.rows {
                return Err(LrError::Data(format!(
                    "{} labels for {} rows",
                    y.len(),
                    layout.rows
                )));
            }
            if y.iter().any(|v| *v != 0.0 && *v != 1.0) {
                return Err(LrError::Data("labels must be 0 or 1".into()));
            }
        }
        (true, None) => return Err(LrError::Data("the label owner has no labels".into())),
        (false, Some(_)) => return Err(LrError::Data("labels at the wrong party".into())),
        (false, None) => {}
    }
    Ok(())
}

/// The largest feature magnitude accepted: `2^10` (so `x · w` stays far from the ring's top
/// for weights below `2^10` at `f ≤ 20`).
pub const FEATURE_ABS_MAX: f64 = 1024.0;

/// Trains the model (see the module docs) as this session's party; both parties call it with
/// the same layout, configuration and output.
///
/// # Errors
/// [`LrError::Config`] (nothing sent); [`LrError::Data`] (the peer is sent an abort);
/// [`LrError::PlanMismatch`]; [`LrError::Mpc`].
pub async fn train<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    layout: &LrLayout,
    cfg: &LrConfig,
    output: ModelOutput,
    own: &LrOwnData<'_>,
) -> Result<Model, LrError> {
    check_config(layout, cfg)?;
    let me = s.party();
    if let Err(e) = check_data(layout, me, own, FEATURE_ABS_MAX) {
        send_abort(s.link(), ABORT_OWN_DATA).await;
        return Err(e);
    }
    agree(s, layout, cfg, output).await?;
    let x = share_features(s, layout, own).await?;
    let y = s
        .input(
            layout.label_owner,
            own.labels.filter(|_| layout.label_owner == me),
            layout.rows,
        )
        .await?;
    let d1 = layout.features() + 1;
    let mut w = Shares::from_words(vec![0; d1]);
    for _ in 0..cfg.epochs {
        let mut start = 0;
        while start < layout.rows {
            let end = (start + cfg.batch_rows).min(layout.rows);
            w = step(s, &x, &y, &w, (start, end), d1, cfg).await?;
            start = end;
        }
    }
    match output {
        ModelOutput::Shared => Ok(Model::Shared(w)),
        ModelOutput::RevealTo(to) => match s.reveal_to(to, &w).await? {
            None => Ok(Model::Withheld),
            Some(words) => {
                let mut weights = s.fixed_point().decode_all(&words);
                let bias = weights.pop().unwrap_or(0.0);
                Ok(Model::Revealed { weights, bias })
            }
        },
    }
}

/// Both parties compare a digest of the training plan (one message each way).
async fn agree<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    layout: &LrLayout,
    cfg: &LrConfig,
    output: ModelOutput,
) -> Result<(), LrError> {
    let text = format!(
        "tessera-mpc lr v1\n{layout:?}\n{cfg:?}\n{output:?}\nf={}",
        s.fixed_point().frac_bits()
    );
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    let words: Vec<u64> = digest
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    if s.open_words(KIND_PLAN, &words).await? != words {
        return Err(LrError::PlanMismatch);
    }
    Ok(())
}

/// Shares `X = [X_0 | X_1 | 1]`, row-major `rows × (d + 1)`.
async fn share_features<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    layout: &LrLayout,
    own: &LrOwnData<'_>,
) -> Result<Shares, LrError> {
    let me = s.party();
    let n = layout.rows;
    let (d0, d1) = (layout.features_p0, layout.features_p1);
    let mine = |p: Party| (p == me).then_some(own.features);
    let x0 = s.input(Party::P0, mine(Party::P0), n * d0).await?;
    let x1 = s.input(Party::P1, mine(Party::P1), n * d1).await?;
    let one = s.fixed_point().encode(1.0)?;
    let width = d0 + d1 + 1;
    let mut x = Vec::with_capacity(n * width);
    for i in 0..n {
        x.extend_from_slice(&x0.words()[i * d0..(i + 1) * d0]);
        x.extend_from_slice(&x1.words()[i * d1..(i + 1) * d1]);
        x.push(if me == Party::P0 { one } else { 0 });
    }
    Ok(Shares::from_words(x))
}

/// One mini-batch step on rows `start..end`.
async fn step<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    x: &Shares,
    y: &Shares,
    w: &Shares,
    (start, end): (usize, usize),
    d1: usize,
    cfg: &LrConfig,
) -> Result<Shares, LrError> {
    let b = end - start;
    let xb = Shares::from_words(x.words()[start * d1..end * d1].to_vec());
    let yb = Shares::from_words(y.words()[start..end].to_vec());
    let z = s.matmul(&xb, w, (b, d1, 1)).await?;
    let p = s.sigmoid(&z).await?;
    let e = s.mul_public(&s.sub(&p, &yb)?, cfg.learning_rate / b as f64)?;
    let mut xt = vec![0u64; b * d1];
    for i in 0..b {
        for j in 0..d1 {
            xt[j * b + i] = xb.words()[i * d1 + j];
        }
    }
    let grad = s.matmul(&Shares::from_words(xt), &e, (d1, b, 1)).await?;
    let mut reg = s.mul_public(w, cfg.learning_rate * cfg.l2)?;
    if let Some(last) = reg.0.last_mut() {
        *last = 0;
    }
    Ok(s.sub(&s.sub(w, &grad)?, &reg)?)
}

/// Shared probabilities `σ̃(X · w + b)` for `rows` aligned rows of both parties' features
/// (each passes its own, row-major, as in training) and a shared model `[w | b]`: one matrix
/// product and one sigmoid; nothing is opened (the caller decides what to reveal, and to
/// whom).
///
/// # Errors
/// [`LrError::Data`] for features of the wrong length; [`LrError::Mpc`].
pub async fn predict_shared<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    layout: &LrLayout,
    model: &Shares,
    own_features: &[f64],
) -> Result<Shares, LrError> {
    let d1 = layout.features() + 1;
    if model.len() != d1 {
        return Err(LrError::Data(format!(
            "a model of {} values for {d1}",
            model.len()
        )));
    }
    let want = layout.rows * layout.own_features(s.party());
    if own_features.len() != want {
        return Err(LrError::Data(format!(
            "{} feature values, the layout needs {want}",
            own_features.len()
        )));
    }
    let own = LrOwnData {
        features: own_features,
        labels: None,
    };
    let x = share_features(s, layout, &own).await?;
    let z = s.matmul(&x, model, (layout.rows, d1, 1)).await?;
    Ok(s.sigmoid(&z).await?)
}
