//! A job's query as the buyer declares it in its request ([`tessera_core::MpcQuery`]: the
//! text and the columns it reads, each `buyer.NAME` / `provider.NAME`, numeric with a bound or
//! categorical with a number of codes) turned into the public [`Schema`] and a checked
//! [`Plan`]. The scheduler checks a request with it (with one row: the aligned row count is
//! known only after the PSI) and both workers plan the computation with it.

use tessera_core::{MpcColumn, MpcQuery};

use super::{
    ColumnDef, ColumnKind, OutputPolicy, Plan, QueryError, Schema, ScorePlan, Side, Statement,
    TrainPlan,
};
use crate::FixedPoint;

/// The most columns a job's query may declare.
pub const COLUMNS_MAX: usize = 64;
/// The longest query text, in bytes.
pub const QUERY_BYTES_MAX: usize = 8 << 10;
/// The most category codes a categorical column may declare.
pub const LEVELS_MAX: u32 = 4096;

/// The side and name of a declared column (`buyer.NAME` or `provider.NAME`).
///
/// # Errors
/// [`QueryError::Schema`] for another shape.
pub fn side_and_name(column: &str) -> Result<(Side, &str), QueryError> {
    let bad = || {
        QueryError::Schema(format!(
            "column {column:?}: declare it as buyer.NAME or provider.NAME"
        ))
    };
    let (side, name) = column.split_once('.').ok_or_else(bad)?;
    let side = match side {
        "buyer" => Side::Buyer,
        "provider" => Side::Provider,
        _ => return Err(bad()),
    };
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok((side, name))
}

fn kind(c: &MpcColumn) -> Result<ColumnKind, QueryError> {
    match (c.abs_max, c.levels) {
        (0, 0) => Err(QueryError::Schema(format!(
            "column {}: give a bound (abs_max > 0, numeric) or a number of categories \
             (levels > 0, categorical)",
            c.column
        ))),
        (a, 0) => Ok(ColumnKind::Numeric { abs_max: a as f64 }),
        (0, l) if l <= LEVELS_MAX => Ok(ColumnKind::Categorical { levels: l }),
        (0, l) => Err(QueryError::Schema(format!(
            "column {}: {l} categories; at most {LEVELS_MAX}",
            c.column
        ))),
        _ => Err(QueryError::Schema(format!(
            "column {}: either a bound (numeric) or a number of categories (categorical), \
             not both",
            c.column
        ))),
    }
}

/// The public schema of `q` for `rows` aligned rows.
///
/// # Errors
/// [`QueryError::Schema`] for a malformed, repeated or unbounded declaration, or too many.
pub fn schema_of(q: &MpcQuery, rows: usize) -> Result<Schema, QueryError> {
    if q.columns.len() > COLUMNS_MAX {
        return Err(QueryError::Schema(format!(
            "{} columns declared; at most {COLUMNS_MAX}",
            q.columns.len()
        )));
    }
    let mut schema = Schema {
        rows,
        buyer: Vec::new(),
        provider: Vec::new(),
    };
    for c in &q.columns {
        let (side, name) = side_and_name(&c.column)?;
        if schema.column(side, name).is_some() {
            return Err(QueryError::Schema(format!(
                "column {} is declared twice",
                c.column
            )));
        }
        let def = ColumnDef {
            name: name.to_string(),
            kind: kind(c)?,
        };
        match side {
            Side::Buyer => schema.buyer.push(def),
            Side::Provider => schema.provider.push(def),
        }
    }
    Ok(schema)
}

/// A job's checked statement.
#[derive(Debug, Clone, PartialEq)]
pub enum JobPlan {
    /// A statistics query.
    Query(Plan),
    /// A model training.
    Train(TrainPlan),
    /// A scoring with a shared model.
    Score(ScorePlan),
}

impl JobPlan {
    /// Whether the plan opens row-level values (a query's bare columns, a scoring's
    /// probabilities); a model is an aggregate.
    pub fn row_level(&self) -> bool {
        match self {
            JobPlan::Query(p) => p.row_level,
            JobPlan::Train(_) => false,
            JobPlan::Score(_) => true,
        }
    }
}

/// Parses and checks `q`'s statement (a query or a training) for `rows` aligned rows under
/// `policy` and the format `fx`.
///
/// # Errors
/// [`QueryError::Schema`] for the declarations or the text's length, [`QueryError::Parse`]
/// (with the position) for the text, and the refusals of [`super::check`] and
/// [`super::check_training`].
pub fn job_plan_of(
    q: &MpcQuery,
    rows: usize,
    policy: &OutputPolicy,
    fx: FixedPoint,
) -> Result<JobPlan, QueryError> {
    if q.query.len() > QUERY_BYTES_MAX {
        return Err(QueryError::Schema(format!(
            "the query is {} bytes; at most {QUERY_BYTES_MAX}",
            q.query.len()
        )));
    }
    let schema = schema_of(q, rows)?;
    match super::parse_statement(&q.query)? {
        Statement::Query(query) => super::check(&query, &schema, policy, fx).map(JobPlan::Query),
        Statement::Train(t) => super::check_training(&t, &schema, policy).map(JobPlan::Train),
        Statement::Score(t) => super::check_scoring(&t, &schema, policy).map(JobPlan::Score),
    }
}

/// Parses and checks `q`'s query for `rows` aligned rows under `policy` and the format `fx`
/// (where only a query runs: a `TRAIN` statement is refused).
///
/// # Errors
/// As [`job_plan_of`]; [`QueryError::Training`] for a `TRAIN` statement.
pub fn plan_of(
    q: &MpcQuery,
    rows: usize,
    policy: &OutputPolicy,
    fx: FixedPoint,
) -> Result<Plan, QueryError> {
    match job_plan_of(q, rows, policy, fx)? {
        JobPlan::Query(p) => Ok(p),
        JobPlan::Train(_) | JobPlan::Score(_) => Err(QueryError::Training(
            "TRAIN and SCORE statements run in an mpc job; this computes a query (SELECT …)".into(),
        )),
    }
}
