//! The semantic check of a `TRAIN` statement ([`check_training`]): logistic regression
//! ([`crate::lr`]) on the aligned rows, features from both parties, the label from one.
//!
//! ```text
//! TRAIN LOGISTIC_REGRESSION(provider.age, buyer.income) LABEL buyer.defaulted
//!       EPOCHS 5 LEARNING_RATE 1 L2 0.001 BATCH 1000
//! ```
//!
//! * Every feature is a declared numeric column (`abs_max > 0`), named once. Its owner clips
//!   its values to `±abs_max` and divides them by `abs_max` before sharing them, so that the
//!   model trains on features in `[−1, 1]`; the weights written out are for the original
//!   units (`w / abs_max`). Tight bounds train faster.
//! * The label is a declared category column of two levels (codes 0 and 1) of either party;
//!   it is not a feature.
//! * Options (defaults in brackets): `EPOCHS` 1 ..= [`TRAIN_EPOCHS_MAX`] [5],
//!   `LEARNING_RATE` in (0, 1000] [1], `L2` in [0, 1000] [0], `BATCH` ≥ 1 rows [1000; at
//!   most the aligned rows].
//! * Output controls: a model is an aggregate (`aggregatesOnly` allows it); under
//!   `minGroupSize k` no model is trained on fewer than `k` aligned rows
//!   ([`TrainPlan::enough_rows`]: both parties know the aligned count, so both stop before
//!   anything is shared).

use super::plan::{numeric, unknown};
use super::{ColumnKind, ColumnRef, OutputPolicy, QueryError, Schema, Scoring, Side, Training};
use crate::lr::LrConfig;
use crate::{ELEMENTS_MAX, MATMUL_PRODUCTS_MAX};

/// The most epochs a job's training may run.
pub const TRAIN_EPOCHS_MAX: u64 = 100;
/// Epochs without `EPOCHS`.
pub const TRAIN_EPOCHS_DEFAULT: u64 = 5;
/// The learning rate without `LEARNING_RATE`.
pub const TRAIN_LEARNING_RATE_DEFAULT: f64 = 1.0;
/// Rows per mini-batch without `BATCH`.
pub const TRAIN_BATCH_DEFAULT: u64 = 1000;

/// A checked training: what both parties compute, all of it public.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPlan {
    /// The statement.
    pub training: Training,
    /// The provider's features in the statement's order, with their declared bounds (the
    /// model's first weights).
    pub provider_features: Vec<(String, f64)>,
    /// The buyer's features in the statement's order, with their bounds (the next weights).
    pub buyer_features: Vec<(String, f64)>,
    /// The label's owner and column.
    pub label: (Side, String),
    /// Aligned rows.
    pub rows: usize,
    /// The hyper-parameters (the batch at most `rows`).
    pub config: LrConfig,
    /// The output controls it was checked against.
    pub policy: OutputPolicy,
}

impl TrainPlan {
    /// The features `side` inputs, in order, with their bounds.
    pub fn features_of(&self, side: Side) -> &[(String, f64)] {
        match side {
            Side::Provider => &self.provider_features,
            Side::Buyer => &self.buyer_features,
        }
    }

    /// The model's weight index of a feature (provider features first).
    pub fn weight_index(&self, c: &ColumnRef) -> Option<usize> {
        let at = |v: &[(String, f64)]| v.iter().position(|(n, _)| *n == c.name);
        match c.side {
            Side::Provider => at(&self.provider_features),
            Side::Buyer => at(&self.buyer_features).map(|i| i + self.provider_features.len()),
        }
    }

    /// Whether the aligned rows are enough under the policy's `minGroupSize` (at least one
    /// row in any case).
    pub fn enough_rows(&self) -> bool {
        self.rows >= 1
            && self
                .policy
                .min_group_size
                .is_none_or(|k| self.rows as u64 >= k)
    }
}

/// Checks `t` against the public `schema` (its `rows` are the aligned rows) and `policy`.
///
/// # Errors
/// [`QueryError::UnknownColumn`], [`QueryError::NotNumeric`] for a category feature,
/// [`QueryError::Training`] (a repeated feature, a label that is not a two-level category
/// column or is also a feature, an option out of range), [`QueryError::Range`] for a training
/// past the element bounds.
pub fn check_training(
    t: &Training,
    schema: &Schema,
    policy: &OutputPolicy,
) -> Result<TrainPlan, QueryError> {
    let (provider_features, buyer_features) =
        features_by_side(&t.features, schema, QueryError::Training)?;
    let label = &t.label;
    match schema.column(label.side, &label.name).map(|d| d.kind) {
        None => return Err(unknown(label)),
        Some(ColumnKind::Categorical { levels: 2 }) => {}
        Some(_) => {
            return Err(QueryError::Training(format!(
                "label {label} at byte {}: declare it as a category column of two levels \
                 (levels 2: codes 0 and 1)",
                label.offset
            )));
        }
    }
    let epochs = t.epochs.unwrap_or(TRAIN_EPOCHS_DEFAULT);
    if !(1..=TRAIN_EPOCHS_MAX).contains(&epochs) {
        return Err(QueryError::Training(format!(
            "EPOCHS {epochs}: 1 to {TRAIN_EPOCHS_MAX}"
        )));
    }
    let learning_rate = t.learning_rate.unwrap_or(TRAIN_LEARNING_RATE_DEFAULT);
    if !(learning_rate > 0.0 && learning_rate <= 1e3) {
        return Err(QueryError::Training(format!(
            "LEARNING_RATE {learning_rate}: above 0, at most 1000"
        )));
    }
    let l2 = t.l2.unwrap_or(0.0);
    if !(0.0..=1e3).contains(&l2) {
        return Err(QueryError::Training(format!("L2 {l2}: 0 to 1000")));
    }
    let batch = t.batch_rows.unwrap_or(TRAIN_BATCH_DEFAULT);
    if batch == 0 {
        return Err(QueryError::Training("BATCH 0: at least one row".into()));
    }
    let d1 = t.features.len() + 1;
    let batch_rows = usize::try_from(batch)
        .unwrap_or(usize::MAX)
        .min(schema.rows.max(1));
    if batch_rows.saturating_mul(d1) > MATMUL_PRODUCTS_MAX {
        return Err(QueryError::Range(format!(
            "BATCH {batch} × {d1} weights is past {MATMUL_PRODUCTS_MAX} products; name a smaller \
             batch"
        )));
    }
    if schema.rows.saturating_mul(d1) > ELEMENTS_MAX {
        return Err(QueryError::Range(format!(
            "{} rows × {d1} weights is past {ELEMENTS_MAX} elements",
            schema.rows
        )));
    }
    Ok(TrainPlan {
        training: t.clone(),
        provider_features,
        buyer_features,
        label: (label.side, label.name.clone()),
        rows: schema.rows,
        config: LrConfig {
            epochs: usize::try_from(epochs).unwrap_or(usize::MAX),
            batch_rows,
            learning_rate,
            l2,
        },
        policy: *policy,
    })
}

/// Each side's features with their declared bounds, in the statement's order.
type SideFeatures = (Vec<(String, f64)>, Vec<(String, f64)>);

/// Splits `features` by side, each a declared numeric column named once (`named_twice` makes
/// the statement's error for a repeated one).
fn features_by_side(
    features: &[ColumnRef],
    schema: &Schema,
    named_twice: fn(String) -> QueryError,
) -> Result<SideFeatures, QueryError> {
    let (mut provider_features, mut buyer_features) = (Vec::new(), Vec::new());
    for (j, c) in features.iter().enumerate() {
        let abs_max = numeric(schema, c)?;
        if features[..j]
            .iter()
            .any(|p| p.side == c.side && p.name == c.name)
        {
            return Err(named_twice(format!(
                "feature {c} at byte {} is named twice",
                c.offset
            )));
        }
        match c.side {
            Side::Provider => provider_features.push((c.name.clone(), abs_max)),
            Side::Buyer => buyer_features.push((c.name.clone(), abs_max)),
        }
    }
    Ok((provider_features, buyer_features))
}

/// Rows a scoring computes per step: the sigmoid compares each of them with its 33
/// breakpoints, so `66 · SCORE_CHUNK_ROWS` elements stay within [`ELEMENTS_MAX`].
pub const SCORE_CHUNK_ROWS: usize = 1 << 16;

/// A checked scoring: what both parties compute, all of it public.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePlan {
    /// The statement.
    pub scoring: Scoring,
    /// The provider's features in the statement's order, with their declared bounds.
    pub provider_features: Vec<(String, f64)>,
    /// The buyer's features, with their bounds.
    pub buyer_features: Vec<(String, f64)>,
    /// Aligned rows.
    pub rows: usize,
}

impl ScorePlan {
    /// The features `side` inputs, in order, with their bounds.
    pub fn features_of(&self, side: Side) -> &[(String, f64)] {
        match side {
            Side::Provider => &self.provider_features,
            Side::Buyer => &self.buyer_features,
        }
    }

    /// Whether a model trained by `t` scores these features: each side's features, their
    /// order and their declared bounds are the training's (the model's weights are for
    /// features scaled by those bounds, provider features first).
    pub fn fits(&self, t: &TrainPlan) -> bool {
        self.provider_features == t.provider_features && self.buyer_features == t.buyer_features
    }
}

/// Checks `s` against the public `schema` (its `rows` are the aligned rows) and `policy`. A
/// scoring opens one probability per aligned row to the buyer: a row-level output, refused
/// under `aggregatesOnly` and under a `minGroupSize` above 1, as a row-level query is.
///
/// # Errors
/// [`QueryError::UnknownColumn`], [`QueryError::NotNumeric`] for a category feature,
/// [`QueryError::Scoring`] for a repeated feature or a declared column that is not a
/// feature, [`QueryError::PolicyRefused`], [`QueryError::Range`] past [`ELEMENTS_MAX`] rows.
pub fn check_scoring(
    s: &Scoring,
    schema: &Schema,
    policy: &OutputPolicy,
) -> Result<ScorePlan, QueryError> {
    let (provider_features, buyer_features) =
        features_by_side(&s.features, schema, QueryError::Scoring)?;
    // Every declared column is read by its owner: one that is not a feature (a training's
    // label, say) would only fail a party that lacks it, after the run is counted.
    for (side, columns) in [
        (Side::Provider, &schema.provider),
        (Side::Buyer, &schema.buyer),
    ] {
        for c in columns {
            if !s
                .features
                .iter()
                .any(|f| f.side == side && f.name == c.name)
            {
                return Err(QueryError::Scoring(format!(
                    "{side}.{} is declared but is not a feature; a scoring reads its features \
                     only: declare exactly those",
                    c.name
                )));
            }
        }
    }
    if policy.aggregates_only {
        return Err(QueryError::PolicyRefused(
            "only aggregates may leave, and a scoring opens one probability per row".into(),
        ));
    }
    if let Some(k) = policy.min_group_size.filter(|&k| k > 1) {
        return Err(QueryError::PolicyRefused(format!(
            "groups of fewer than {k} rows are suppressed, and a row's score is a group of one"
        )));
    }
    // Scored in chunks of `SCORE_CHUNK_ROWS`; the rows themselves are bounded.
    if schema.rows > ELEMENTS_MAX {
        return Err(QueryError::Range(format!(
            "{} aligned rows to score: at most {ELEMENTS_MAX} in one job",
            schema.rows
        )));
    }
    Ok(ScorePlan {
        scoring: s.clone(),
        provider_features,
        buyer_features,
        rows: schema.rows,
    })
}
