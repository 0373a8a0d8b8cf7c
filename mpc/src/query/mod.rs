//! A small statistics language evaluated by the two parties under MPC: aggregates over the
//! columns of both parties, filtered and grouped by the **buyer's** own columns, with output
//! controls enforced inside the computation.
//!
//! # The language
//!
//! ```text
//! SELECT count(*), mean(provider.income), var(provider.income),
//!        min(provider.income), max(buyer.age),
//!        histogram(provider.income, [0, 1000, 5000, 20000])
//! WHERE buyer.age >= 30 AND NOT (buyer.region = 2 OR buyer.score < -1.5)
//! GROUP BY buyer.segment
//! ```
//!
//! Grammar in [`parse`]. Columns are qualified by the party that holds them: `buyer.NAME`
//! (the party that asks, and receives the result) and `provider.NAME` (the data provider). The
//! aggregates: `count(*)`, `sum`, `mean` (alias `avg`), `var` (alias `variance`, the population
//! variance), `min`, `max` of a numeric column of either party, and `histogram(col, [e0, …,
//! em])` (the counts of `m` bins `[e_j, e_{j+1})`; values outside `[e0, em)` fall in no bin).
//! `WHERE` is a boolean expression (`AND`, `OR`, `NOT`, parentheses) of comparisons of a
//! buyer column with a public constant; `GROUP BY` names a categorical buyer column. A bare
//! column in the select list (`SELECT provider.income WHERE …`) is a **row-level** output:
//! the column's value for each selected row, which an [`OutputPolicy`] may refuse.
//!
//! Both parties hold the same public [`Schema`] (row count, column names, kinds and declared
//! bounds) and parse the same text; [`plan::check`] turns it into a [`plan::Plan`] or a
//! typed [`QueryError`] naming the offending column and its position (a `WHERE` or `GROUP BY`
//! on a provider column, an unknown column, an aggregate of a categorical column, …).
//!
//! # Secure evaluation ([`eval::evaluate`])
//!
//! The plan is public; the data are not. The buyer evaluates `WHERE` and `GROUP BY` on its own
//! rows in the clear and secret-shares the `n × k` 0/1 matrix `M[i][g] = [row i selected and in
//! group g]` (`k = 1` without `GROUP BY`): the provider learns neither the selection nor the
//! groups. Each party secret-shares the numeric columns of its own that the aggregates read.
//! Then, with `c_g = Σ_i M[i][g]` (local):
//!
//! * `count(*)`: `c_g`, exact.
//! * `sum(x)`: `Σ_i M[i][g] x_i`, one ring matrix product `Mᵀ X` (exact given the encoded
//!   inputs).
//! * `mean(x)`: each count is normalised first: one comparison of `c_g` with `2, 4, …, 2^J`
//!   (`2^J > n`) gives the exponent `j_g` with `2^j ≤ c_g < 2^(j+1)` as a secret one-hot
//!   selector, `c_g / 2^j ∈ [1, 2)` is selected among the public truncations `c_g / 2^i` (one
//!   multiplication layer) and `r_g ≈ 2^j / c_g ∈ (1/2, 1]` is its
//!   [`crate::Session::reciprocal`]; then `mean = (sum / 2^j) · r_g`, `sum / 2^j` selected the
//!   same way. (`1 / c_g` itself would hold only a few ulps once a group passes a few thousand
//!   rows: its relative error would grow with the count.)
//! * `var(x)`: two-pass: the row's group mean `μ_{g(i)} = (M μ)_i` (ring product), deviations
//!   `d_i = x_i − μ_{g(i)}` scaled down by a public `2^t` (so `d² · 2^2f` stays below `2^40` as
//!   a ring integer: `t = max(0, ⌈log2(2·abs_max)⌉ + f − 20)`), squared, summed per group
//!   (`Mᵀ d²`), divided by `c_g` as the mean is (`(q / 2^j) · r_g`), scaled back by `2^2t`.
//! * `min(x)`, `max(x)`: per group, the rows outside the group are replaced by the public
//!   sentinel `±2·abs_max` (`BIG + M[i][g] (x_i − BIG)`, one multiplication layer), then a
//!   tournament tree of secure comparisons ([`crate::Session::less_than`]) and one
//!   multiplication per layer, all lanes (every group of every min/max) in the same layers:
//!   `⌈log2 n⌉` layers of 9 rounds.
//! * `histogram(x, e)`: `[x_i ≥ e_j]` for every edge ([`crate::Session::at_least`]), bin
//!   indicators as differences of neighbours, counts per group by one ring product `Mᵀ B`;
//!   exact.
//!
//! # Output controls ([`OutputPolicy`])
//!
//! * `min_group_size: Some(k)`: each group's flag `keep_g = [c_g ≥ max(k, 1)]` is computed in
//!   MPC (one secure comparison on the secret count), every output of the group is multiplied
//!   by the secret flag, and only then is anything opened: a suppressed group's values are
//!   opened as exact zeros, so nothing of them reaches the buyer. Without a minimum
//!   (`None`, or `Some(0)`/`Some(1)`) the flag is `[c_g ≥ 1]`: an empty group is reported as
//!   not reported (its mean, variance, min and max are undefined).
//! * `aggregates_only`: a plan with a row-level output is refused by [`plan::check`] on each
//!   party, before any message is sent (the provider's side refuses to take part), and so is a
//!   row-level output under a minimum group size above 1 (a row is a group of one).
//!
//! Both parties first exchange a SHA-256 digest of (query, schema, policy, buyer, format) and
//! refuse to go on if they differ ([`QueryError::PlanMismatch`]): a buyer cannot run the
//! provider into a query or a policy the provider did not agree to.
//!
//! # What is revealed, and to whom
//!
//! Only the buyer receives anything ([`crate::Session::reveal_to`]); the provider learns the
//! public plan and shapes (`n`, `k`, the number of columns) and nothing else. The buyer
//! receives, per group: the flag `keep_g` (one bit: whether the group has at least `max(k, 1)`
//! selected rows) and, where it is set, the requested aggregates; where it is not, nothing but
//! the bit. The aggregates reveal what they are: a `min`/`max` is one row's value, a `sum` of
//! a group of `k` rows the total of those rows, a histogram the count of each bin. A
//! row-level output reveals the value of each selected row.
//!
//! # Error bounds (fixed point, `f` fractional bits, `ulp = 2^−f`)
//!
//! Against the clear f64 computation on the same rows; `abs_max` is the column's declared
//! bound, `c` the group's count, `t` the shift above:
//!
//! | aggregate | bound |
//! | --- | --- |
//! | `count`, `histogram` | exact |
//! | `sum` | `c · ulp / 2` (the inputs' rounding) |
//! | `mean` | `ulp / 2` (rounding) `+ |mean| · (2^−12 + 17 · ulp) + 2 · ulp` |
//! | `var` | `(2 · 2abs_max · 2^t + 2^2t) · ulp · 2 + var · (2^−11 + 17 · ulp) + 2 · 2^2t · ulp` |
//! | `min`, `max` | `ulp / 2` (the input's rounding; comparisons are exact) |
//!
//! The `2^−12` and `17 · ulp` relative terms are [`crate::Session::reciprocal`]'s stated bound
//! on `[1, 2)` (`2^−12 / x + 8 · ulp`) and the truncations around it (in practice the error is
//! a few ulps), the same at any group size; the variance's first term is the rounding of the
//! scaled deviations. On top, SecureML's local truncation fails (a large error)
//! with probability at most `2^(ℓ − 64)` per truncated element of ring magnitude `< 2^ℓ`:
//! `|sum| · 2^f` for the normalisation of a sum, `|mean| · 2^(2f + 1)` for a mean,
//! `2^(40 + f)` … `2^40` for a squared deviation (by the choice of `t`); so keep both
//! `|sum| · 2^f` and `|mean| · 2^(2f + 1)` well below `2^44` (e.g. `f = 16`: sums below
//! `2^28`, means below 2,048, for `2^−20` per group). [`plan::check`] refuses columns whose sums
//! could leave the ring (`n · abs_max · 2^f ≥ 2^61`).

pub mod clear;
pub mod eval;
pub mod job;
pub mod parse;
pub mod plan;
pub mod train;

use std::collections::BTreeMap;
use std::fmt;

pub use clear::evaluate_clear;
pub use eval::{Aggregate, GroupResult, QueryResult, evaluate};
pub use parse::{ParseError, parse, parse_statement};
pub use plan::{Plan, check};
pub use train::{SCORE_CHUNK_ROWS, ScorePlan, TrainPlan, check_scoring, check_training};

use crate::MpcError;

/// Which party holds a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The party that asks the query and receives its result.
    Buyer,
    /// The data provider.
    Provider,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Buyer => "buyer",
            Side::Provider => "provider",
        })
    }
}

/// A column reference `side.name`, with the byte offset where it starts in the query text.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnRef {
    /// The party that holds it.
    pub side: Side,
    /// The column's name.
    pub name: String,
    /// Byte offset in the query text (for errors).
    pub offset: usize,
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.side, self.name)
    }
}

/// An aggregate function of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    /// The sum.
    Sum,
    /// The arithmetic mean.
    Mean,
    /// The population variance.
    Var,
    /// The minimum.
    Min,
    /// The maximum.
    Max,
}

impl fmt::Display for AggFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AggFunc::Sum => "sum",
            AggFunc::Mean => "mean",
            AggFunc::Var => "var",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
        })
    }
}

/// One item of the select list.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `count(*)`.
    Count {
        /// Byte offset in the query text.
        offset: usize,
    },
    /// `func(column)`.
    Agg {
        /// The function.
        func: AggFunc,
        /// Its column.
        column: ColumnRef,
    },
    /// `histogram(column, [edges])`.
    Histogram {
        /// The column.
        column: ColumnRef,
        /// The bin edges as written.
        edges: Vec<f64>,
        /// Byte offset of the edge list.
        edges_offset: usize,
    },
    /// A bare column: a row-level output.
    Column(ColumnRef),
}

impl fmt::Display for SelectItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectItem::Count { .. } => f.write_str("count(*)"),
            SelectItem::Agg { func, column } => write!(f, "{func}({column})"),
            SelectItem::Histogram { column, edges, .. } => {
                write!(f, "histogram({column}, [")?;
                for (j, e) in edges.iter().enumerate() {
                    if j > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e:?}")?;
                }
                f.write_str("])")
            }
            SelectItem::Column(c) => write!(f, "{c}"),
        }
    }
}

/// A comparison operator of `WHERE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
}

impl CmpOp {
    /// Applies the operator.
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
        })
    }
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `column op value`.
    Cmp {
        /// The column.
        column: ColumnRef,
        /// The operator.
        op: CmpOp,
        /// The public constant.
        value: f64,
    },
    /// Both.
    And(Box<Cond>, Box<Cond>),
    /// Either.
    Or(Box<Cond>, Box<Cond>),
    /// Not.
    Not(Box<Cond>),
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cond::Cmp { column, op, value } => write!(f, "{column} {op} {value:?}"),
            Cond::And(a, b) => write!(f, "({a} AND {b})"),
            Cond::Or(a, b) => write!(f, "({a} OR {b})"),
            Cond::Not(a) => write!(f, "NOT {a}"),
        }
    }
}

/// A parsed query (syntax only).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The select list.
    pub items: Vec<SelectItem>,
    /// The `WHERE` condition.
    pub filter: Option<Cond>,
    /// The `GROUP BY` column.
    pub group_by: Option<ColumnRef>,
}

impl fmt::Display for Query {
    /// The canonical text: parsing it gives the same query (up to offsets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SELECT ")?;
        for (j, it) in self.items.iter().enumerate() {
            if j > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{it}")?;
        }
        if let Some(c) = &self.filter {
            write!(f, " WHERE {c}")?;
        }
        if let Some(g) = &self.group_by {
            write!(f, " GROUP BY {g}")?;
        }
        Ok(())
    }
}

/// A model training (`TRAIN LOGISTIC_REGRESSION(…) LABEL …`, syntax only; checked by
/// [`check_training`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    /// The feature columns, in the order the statement names them.
    pub features: Vec<ColumnRef>,
    /// The label column (a category column of two levels, codes 0 and 1).
    pub label: ColumnRef,
    /// `EPOCHS n`.
    pub epochs: Option<u64>,
    /// `LEARNING_RATE x`.
    pub learning_rate: Option<f64>,
    /// `L2 x`.
    pub l2: Option<f64>,
    /// `BATCH n` (rows per mini-batch).
    pub batch_rows: Option<u64>,
}

impl fmt::Display for Training {
    /// The canonical text (every option written out when given).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TRAIN LOGISTIC_REGRESSION(")?;
        for (j, c) in self.features.iter().enumerate() {
            if j > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        write!(f, ") LABEL {}", self.label)?;
        if let Some(n) = self.epochs {
            write!(f, " EPOCHS {n}")?;
        }
        if let Some(x) = self.learning_rate {
            write!(f, " LEARNING_RATE {x}")?;
        }
        if let Some(x) = self.l2 {
            write!(f, " L2 {x}")?;
        }
        if let Some(n) = self.batch_rows {
            write!(f, " BATCH {n}")?;
        }
        Ok(())
    }
}

/// A scoring with a model an earlier job trained and kept shared (`SCORE
/// LOGISTIC_REGRESSION(…) MODEL job-…`, syntax only; checked by [`check_scoring`]): the
/// model's probability for every aligned row, opened to the buyer.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The feature columns, as the training named them (each side's in the same order).
    pub features: Vec<ColumnRef>,
    /// The job that trained the model (`modelTo: "shared"`).
    pub model_job: String,
    /// Byte offset of the job id.
    pub model_offset: usize,
}

impl fmt::Display for Scoring {
    /// The canonical text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SCORE LOGISTIC_REGRESSION(")?;
        for (j, c) in self.features.iter().enumerate() {
            if j > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        write!(f, ") MODEL {}", self.model_job)
    }
}

/// A statement of the language ([`parse_statement`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `SELECT …`: a statistics query.
    Query(Query),
    /// `TRAIN …`: a model training.
    Train(Training),
    /// `SCORE …`: a scoring with a shared model.
    Score(Scoring),
}

impl fmt::Display for Statement {
    /// The statement's canonical text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Query(q) => q.fmt(f),
            Statement::Train(t) => t.fmt(f),
            Statement::Score(t) => t.fmt(f),
        }
    }
}

/// The kind of a column, part of the public schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColumnKind {
    /// Reals with `|x| ≤ abs_max` (declared and public; the owner's data are checked against
    /// it before anything is sent).
    Numeric {
        /// The declared bound on magnitudes.
        abs_max: f64,
    },
    /// Category codes `0 .. levels` (for `GROUP BY`; comparable in `WHERE` as numbers).
    Categorical {
        /// The number of categories.
        levels: u32,
    },
}

/// A column of the public schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// The name.
    pub name: String,
    /// The kind.
    pub kind: ColumnKind,
}

impl ColumnDef {
    /// A numeric column with `|x| ≤ abs_max`.
    pub fn numeric(name: &str, abs_max: f64) -> Self {
        ColumnDef {
            name: name.to_string(),
            kind: ColumnKind::Numeric { abs_max },
        }
    }
    /// A categorical column of `levels` categories.
    pub fn categorical(name: &str, levels: u32) -> Self {
        ColumnDef {
            name: name.to_string(),
            kind: ColumnKind::Categorical { levels },
        }
    }
}

/// The public schema both parties agree on: the number of (aligned) rows and each party's
/// columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Rows, the same for both parties (row `i` of one is row `i` of the other).
    pub rows: usize,
    /// The buyer's columns.
    pub buyer: Vec<ColumnDef>,
    /// The provider's columns.
    pub provider: Vec<ColumnDef>,
}

impl Schema {
    /// The definition of `side.name`, if any.
    pub fn column(&self, side: Side, name: &str) -> Option<&ColumnDef> {
        let cols = match side {
            Side::Buyer => &self.buyer,
            Side::Provider => &self.provider,
        };
        cols.iter().find(|c| c.name == name)
    }
}

/// One column of a party's own data.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// Reals.
    Numeric(Vec<f64>),
    /// Category codes.
    Categorical(Vec<u32>),
}

impl ColumnData {
    fn len(&self) -> usize {
        match self {
            ColumnData::Numeric(v) => v.len(),
            ColumnData::Categorical(v) => v.len(),
        }
    }

    /// Row `i` as a number (a category code as itself).
    fn get(&self, i: usize) -> f64 {
        match self {
            ColumnData::Numeric(v) => v.get(i).copied().unwrap_or(f64::NAN),
            ColumnData::Categorical(v) => v.get(i).map_or(f64::NAN, |c| f64::from(*c)),
        }
    }
}

/// A party's own columns, by name (never sent: only shares of what a plan reads leave it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// The columns.
    pub columns: BTreeMap<String, ColumnData>,
}

impl Table {
    /// Adds a column (builder style).
    pub fn with(mut self, name: &str, data: ColumnData) -> Self {
        self.columns.insert(name.to_string(), data);
        self
    }
}

/// What a data owner allows out of a computation on its data; enforced inside it (see the
/// module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputPolicy {
    /// Groups with fewer selected rows than this are suppressed before anything is opened.
    pub min_group_size: Option<u64>,
    /// Refuse row-level outputs: only aggregates may leave.
    pub aggregates_only: bool,
}

/// Why a query was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The text does not parse.
    #[error("parse error: {0}")]
    Parse(#[from] ParseError),
    /// A column that is not in the schema.
    #[error(
        "column {column} at byte {offset} is not declared (declare every column the statement \
         reads with its kind: numeric with a bound, or categorical with its levels)"
    )]
    UnknownColumn {
        /// `side.name`.
        column: String,
        /// Byte offset in the query text.
        offset: usize,
    },
    /// `WHERE` on a provider column: the selection must be the buyer's own.
    #[error("WHERE may only use the buyer's columns: {column} at byte {offset}")]
    FilterOnProviderColumn {
        /// `side.name`.
        column: String,
        /// Byte offset.
        offset: usize,
    },
    /// `GROUP BY` on a provider column.
    #[error("GROUP BY may only use a buyer column: {column} at byte {offset}")]
    GroupByProviderColumn {
        /// `side.name`.
        column: String,
        /// Byte offset.
        offset: usize,
    },
    /// `GROUP BY` on a numeric column.
    #[error("GROUP BY needs a categorical column: {column} at byte {offset}")]
    GroupByNotCategorical {
        /// `side.name`.
        column: String,
        /// Byte offset.
        offset: usize,
    },
    /// An aggregate, histogram or row output of a categorical column.
    #[error("{column} at byte {offset} is categorical, not numeric")]
    NotNumeric {
        /// `side.name`.
        column: String,
        /// Byte offset.
        offset: usize,
    },
    /// Histogram edges not strictly increasing, fewer than two, or too many.
    #[error("histogram edges at byte {offset}: {reason}")]
    BadEdges {
        /// Byte offset of the edge list.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A row-level output mixed with aggregates or with `GROUP BY`.
    #[error("row-level outputs cannot be mixed with aggregates or GROUP BY (byte {offset})")]
    MixedRowsAndAggregates {
        /// Byte offset of the row-level column.
        offset: usize,
    },
    /// The output policy refuses the plan (nothing was sent).
    #[error("refused by the output policy: {0}")]
    PolicyRefused(String),
    /// A `TRAIN` statement the schema or the bounds refuse: a repeated feature, a label that
    /// is not a two-level category column, an option out of range.
    #[error("training: {0}")]
    Training(String),
    /// A `SCORE` statement the schema refuses: a repeated feature, a declared column that is
    /// not a feature.
    #[error("scoring: {0}")]
    Scoring(String),
    /// A job's column declarations are malformed (see [`job::schema_of`]).
    #[error("column declarations: {0}")]
    Schema(String),
    /// The schema or the plan is past the bounds (fixed-point range, element counts).
    #[error("out of range: {0}")]
    Range(String),
    /// The party's own table does not match the schema (missing column, wrong length, a value
    /// past the declared bound, a category code past the levels).
    #[error("own data: {0}")]
    Data(String),
    /// The peer's plan digest differs: the two parties are not running the same query,
    /// schema, policy and format.
    #[error("the peer runs another plan (query, schema, policy or format differ)")]
    PlanMismatch,
    /// The MPC protocol failed (link, malformed frame, abort, bounds).
    #[error(transparent)]
    Mpc(#[from] MpcError),
}
