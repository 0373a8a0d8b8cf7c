//! The models trained by [`crate::fedavg`], on `ndarray` (no BLAS): binary logistic regression
//! and a small multilayer perceptron (one hidden ReLU layer, a sigmoid output — binary
//! classification only), each with a flat parameter vector (what secure aggregation sums),
//! a deterministic initialisation from the caller's RNG, local mini-batch SGD on the mean
//! binary cross-entropy, and loss and accuracy.
//!
//! Parameter layout of [`Model::to_flat`]:
//!
//! * logistic regression: `w` (`d`), then `b` — `d + 1` values; initialised to zero (the loss
//!   is convex; the RNG is not used).
//! * MLP with `h` hidden units: `W1` (`h × d`, row-major), `b1` (`h`), `w2` (`h`), `b2` —
//!   `h·d + 2h + 1` values; `W1 ~ N(0, 2/d)` (He et al. 2015), `w2 ~ N(0, 1/h)`, biases zero.
//!
//! Gradients are the exact gradients of the mean loss over a mini-batch (backpropagation
//! written out for these two shapes; a test checks them against finite differences).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Normal};

use crate::data::Dataset;
use crate::error::TrainError;

/// Most hidden units of an MLP.
pub const HIDDEN_MAX: usize = 1024;
/// Most local epochs per round.
pub const EPOCHS_MAX: u32 = 1000;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Binary logistic regression.
    Logistic,
    /// One hidden ReLU layer of `hidden` units (1 ..= [`HIDDEN_MAX`]), sigmoid output.
    Mlp {
        /// Hidden units.
        hidden: usize,
    },
}

/// Local training hyper-parameters (one client, one round).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalTraining {
    /// `E`: passes over the local data (1 ..= [`EPOCHS_MAX`]).
    pub epochs: u32,
    /// `B`: rows per SGD step (at least 1; the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// `η`: the SGD step size (finite, positive).
    pub learning_rate: f64,
}

impl LocalTraining {
    /// Checks the bounds above.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(1..=EPOCHS_MAX).contains(&self.epochs)
            || self.batch_size == 0
            || !(self.learning_rate.is_finite() && self.learning_rate > 0.0)
        {
            return Err(TrainError::Config(format!(
                "local training: epochs {} (1..={EPOCHS_MAX}), batch size {} (≥ 1), learning rate {} (> 0)",
                self.epochs, self.batch_size, self.learning_rate
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Params {
    Logistic {
        w: Array1<f64>,
        b: f64,
    },
    Mlp {
        w1: Array2<f64>,
        b1: Array1<f64>,
        w2: Array1<f64>,
        b2: f64,
    },
}

/// A model: its kind, input width and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    kind: ModelKind,
    features: usize,
    params: Params,
}

/// Numerically stable logistic function.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Binary cross-entropy of a logit `z` against a label `y`, stably:
/// `max(z, 0) − z·y + ln(1 + e^{−|z|})`.
fn bce(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

impl Model {
    /// A freshly initialised model for `features` inputs (see the module docs).
    /// Errors: [`TrainError::Config`] for 0 or more than [`crate::data::FEATURES_MAX`] features
    /// or a hidden width outside 1 ..= [`HIDDEN_MAX`].
    pub fn new<R: Rng + ?Sized>(
        kind: ModelKind,
        features: usize,
        rng: &mut R,
    ) -> Result<Model, TrainError> {
        if features == 0 || features > crate::data::FEATURES_MAX {
            return Err(TrainError::Config(format!("{features} features")));
        }
        let params = match kind {
            ModelKind::Logistic => Params::Logistic {
                w: Array1::zeros(features),
                b: 0.0,
            },
            ModelKind::Mlp { hidden } => {
                if !(1..=HIDDEN_MAX).contains(&hidden) {
                    return Err(TrainError::Config(format!(
                        "{hidden} hidden units; expected 1..={HIDDEN_MAX}"
                    )));
                }
                let he = Normal::new(0.0, (2.0 / features as f64).sqrt())
                    .map_err(|e| TrainError::Config(e.to_string()))?;
                let out = Normal::new(0.0, (1.0 / hidden as f64).sqrt())
                    .map_err(|e| TrainError::Config(e.to_string()))?;
                Params::Mlp {
                    w1: Array2::from_shape_simple_fn((hidden, features), || he.sample(rng)),
                    b1: Array1::zeros(hidden),
                    w2: Array1::from_shape_simple_fn(hidden, || out.sample(rng)),
                    b2: 0.0,
                }
            }
        };
        Ok(Model {
            kind,
            features,
            params,
        })
    }

    /// The model's kind.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// Input width.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Length of [`Model::to_flat`].
    pub fn param_count(&self) -> usize {
        match self.kind {
            ModelKind::Logistic => self.features + 1,
            ModelKind::Mlp { hidden } => hidden * self.features + 2 * hidden + 1,
        }
    }

    /// The parameters as one vector (layout in the module docs).
    pub fn to_flat(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(self.param_count());
        match &self.params {
            Params::Logistic { w, b } => {
                v.extend(w.iter());
                v.push(*b);
            }
            Params::Mlp { w1, b1, w2, b2 } => {
                v.extend(w1.iter());
                v.extend(b1.iter());
                v.extend(w2.iter());
                v.push(*b2);
            }
        }
        v
    }

    /// Replaces the parameters with `flat` (layout in the module docs). Errors:
    /// [`TrainError::Config`] for a wrong length, [`TrainError::NonFinite`] for a NaN or an
    /// infinity; the model is unchanged on error.
    pub fn set_flat(&mut self, flat: &[f64]) -> Result<(), TrainError> {
        if flat.len() != self.param_count() {
            return Err(TrainError::Config(format!(
                "{} parameters for a model of {}",
                flat.len(),
                self.param_count()
            )));
        }
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite("parameters".into()));
        }
        let d = self.features;
        match &mut self.params {
            Params::Logistic { w, b } => {
                let (ws, rest) = flat.split_at(d);
                w.assign(&ArrayView1::from(ws));
                *b = rest.first().copied().unwrap_or(0.0);
            }
            Params::Mlp { w1, b1, w2, b2 } => {
                let h = b1.len();
                let (w1s, rest) = flat.split_at(h * d);
                let (b1s, rest) = rest.split_at(h);
                let (w2s, rest) = rest.split_at(h);
                for (dst, src) in w1.iter_mut().zip(w1s) {
                    *dst = *src;
                }
                b1.assign(&ArrayView1::from(b1s));
                w2.assign(&ArrayView1::from(w2s));
                *b2 = rest.first().copied().unwrap_or(0.0);
            }
        }
        Ok(())
    }

    fn check_width(&self, data: &Dataset) -> Result<(), TrainError> {
        if data.features() != self.features {
            return Err(TrainError::Config(format!(
                "dataset has {} features, the model {}",
                data.features(),
                self.features
            )));
        }
        Ok(())
    }

    /// Output logits for each row of `x` (and, for the MLP, the hidden pre-activations).
    fn forward(&self, x: ArrayView2<'_, f64>) -> (Array1<f64>, Option<Array2<f64>>) {
        match &self.params {
            Params::Logistic { w, b } => (x.dot(w) + *b, None),
            Params::Mlp { w1, b1, w2, b2 } => {
                let z1 = x.dot(&w1.t()) + b1;
                let a1 = z1.mapv(|v| v.max(0.0));
                (a1.dot(w2) + *b2, Some(z1))
            }
        }
    }

    /// Probability of label 1 for each row.
    pub fn predict_proba(&self, data: &Dataset) -> Result<Array1<f64>, TrainError> {
        self.check_width(data)?;
        Ok(self.forward(data.x()).0.mapv(sigmoid))
    }

    /// Mean binary cross-entropy over `data`.
    pub fn loss(&self, data: &Dataset) -> Result<f64, TrainError> {
        self.check_width(data)?;
        let (z, _) = self.forward(data.x());
        let total: f64 = z.iter().zip(data.y()).map(|(&z, &y)| bce(z, y)).sum();
        Ok(total / data.rows() as f64)
    }

    /// Fraction of rows whose predicted class (probability ≥ 0.5) equals the label.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64, TrainError> {
        self.check_width(data)?;
        let (z, _) = self.forward(data.x());
        let right = z
            .iter()
            .zip(data.y())
            .filter(|&(&z, &y)| (z >= 0.0) == (y == 1.0))
            .count();
        Ok(right as f64 / data.rows() as f64)
    }

    /// The gradient of the mean loss over the rows of `x`, as a [`Params`] of the same shape.
    fn gradient(&self, x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>) -> Params {
        let m = x.nrows().max(1) as f64;
        let (z, z1) = self.forward(x);
        // d loss / d logit = σ(z) − y, averaged over the batch.
        let err = (z.mapv(sigmoid) - y) / m;
        match (&self.params, z1) {
            (Params::Mlp { w2, .. }, Some(z1)) => {
                let a1 = z1.mapv(|v| v.max(0.0));
                let g_w2 = a1.t().dot(&err);
                let g_b2 = err.sum();
                // dZ1 = (err ⊗ w2) ⊙ 1[z1 > 0]
                let mut dz1 = err
                    .view()
                    .insert_axis(Axis(1))
                    .dot(&w2.view().insert_axis(Axis(0)));
                dz1.zip_mut_with(&z1, |g, &z| {
                    if z <= 0.0 {
                        *g = 0.0;
                    }
                });
                Params::Mlp {
                    w1: dz1.t().dot(&x),
                    b1: dz1.sum_axis(Axis(0)),
                    w2: g_w2,
                    b2: g_b2,
                }
            }
            _ => Params::Logistic {
                w: x.t().dot(&err),
                b: err.sum(),
            },
        }
    }

    fn step(&mut self, g: &Params, lr: f64) {
        match (&mut self.params, g) {
            (Params::Logistic { w, b }, Params::Logistic { w: gw, b: gb }) => {
                w.scaled_add(-lr, gw);
                *b -= lr * gb;
            }
            (
                Params::Mlp { w1, b1, w2, b2 },
                Params::Mlp {
                    w1: g1,
                    b1: gb1,
                    w2: g2,
                    b2: gb2,
                },
            ) => {
                w1.scaled_add(-lr, g1);
                b1.scaled_add(-lr, gb1);
                w2.scaled_add(-lr, g2);
                *b2 -= lr * gb2;
            }
            _ => {}
        }
    }

    /// `E` epochs of mini-batch SGD on `data`: each epoch visits the rows in an order drawn
    /// from `rng`, in batches of `B`. Errors: [`TrainError::Config`] (bad hyper-parameters or
    /// width), [`TrainError::NonFinite`] if training diverged (the model is then restored).
    pub fn train<R: Rng + ?Sized>(
        &mut self,
        data: &Dataset,
        cfg: &LocalTraining,
        rng: &mut R,
    ) -> Result<(), TrainError> {
        cfg.validate()?;
        self.check_width(data)?;
        let before = self.params.clone();
        let mut order: Vec<usize> = (0..data.rows()).collect();
        for _ in 0..cfg.epochs {
            order.shuffle(rng);
            for batch in order.chunks(cfg.batch_size) {
                let x = data.x().select(Axis(0), batch);
                let y = data.y().select(Axis(0), batch);
                let g = self.gradient(x.view(), y.view());
                self.step(&g, cfg.learning_rate);
            }
        }
        if self.to_flat().iter().any(|v| !v.is_finite()) {
            self.params = before;
            return Err(TrainError::NonFinite(
                "local training diverged (lower the learning rate)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn toy(rng: &mut ChaCha20Rng) -> Dataset {
        let x = Array2::from_shape_simple_fn((12, 3), || rng.gen_range(-2.0..2.0));
        let y = x.map_axis(Axis(1), |r| if r[0] - r[1] > 0.3 { 1.0 } else { 0.0 });
        Dataset::new(x, y).expect("toy")
    }

    /// The analytic gradient equals central finite differences of the loss, for both models.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let data = toy(&mut rng);
        for kind in [ModelKind::Logistic, ModelKind::Mlp { hidden: 4 }] {
            let mut m = Model::new(kind, 3, &mut rng).expect("model");
            let mut p = m.to_flat();
            p.iter_mut().for_each(|v| *v += rng.gen_range(-0.3..0.3));
            m.set_flat(&p).expect("set");
            let g = Model {
                params: m.gradient(data.x(), data.y()),
                ..m.clone()
            }
            .to_flat();
            let h = 1e-6;
            for i in 0..p.len() {
                let mut q = p.clone();
                q[i] += h;
                m.set_flat(&q).expect("set");
                let up = m.loss(&data).expect("loss");
                q[i] -= 2.0 * h;
                m.set_flat(&q).expect("set");
                let down = m.loss(&data).expect("loss");
                let fd = (up - down) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-6,
                    "{kind:?} param {i}: {fd} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn flat_round_trip_and_bad_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let mut m = Model::new(ModelKind::Mlp { hidden: 5 }, 3, &mut rng).expect("model");
        assert_eq!(m.param_count(), 5 * 3 + 2 * 5 + 1);
        let p: Vec<f64> = (0..m.param_count()).map(|i| i as f64).collect();
        m.set_flat(&p).expect("set");
        assert_eq!(m.to_flat(), p);
        assert!(matches!(m.set_flat(&p[1..]), Err(TrainError::Config(_))));
        let mut nan = p.clone();
        nan[3] = f64::NAN;
        assert!(matches!(m.set_flat(&nan), Err(TrainError::NonFinite(_))));
        assert_eq!(m.to_flat(), p);
        assert!(Model::new(ModelKind::Mlp { hidden: 0 }, 3, &mut rng).is_err());
        assert!(Model::new(ModelKind::Logistic, 0, &mut rng).is_err());
        let bad = LocalTraining {
            epochs: 1,
            batch_size: 0,
            learning_rate: 0.1,
        };
        let data = toy(&mut rng);
        assert!(matches!(
            m.train(&data, &bad, &mut rng),
            Err(TrainError::Config(_))
        ));
    }

    #[test]
    fn training_lowers_the_loss_and_divergence_is_reported() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let data = toy(&mut rng);
        let mut m = Model::new(ModelKind::Logistic, 3, &mut rng).expect("model");
        let before = m.loss(&data).expect("loss");
        let cfg = LocalTraining {
            epochs: 20,
            batch_size: 4,
            learning_rate: 0.5,
        };
        m.train(&data, &cfg, &mut rng).expect("train");
        assert!(m.loss(&data).expect("loss") < before);
        let mut mlp = Model::new(ModelKind::Mlp { hidden: 4 }, 3, &mut rng).expect("model");
        let snapshot = mlp.to_flat();
        let wild = LocalTraining {
            epochs: 50,
            batch_size: 1,
            learning_rate: 1e300,
        };
        assert!(matches!(
            mlp.train(&data, &wild, &mut rng),
            Err(TrainError::NonFinite(_))
        ));
        assert_eq!(mlp.to_flat(), snapshot);
    }
}
