//! The semantic check of a parsed query against the public schema, the output policy and the
//! fixed-point format ([`check`]): which columns each party inputs, how many groups, the public
//! shifts of the mean and the variance, and every refusal as a typed [`QueryError`] before
//! anything is sent.

use sha2::{Digest, Sha256};

use super::{
    AggFunc, ColumnKind, ColumnRef, Cond, OutputPolicy, Query, QueryError, Schema, SelectItem, Side,
};
use crate::{ELEMENTS_MAX, FixedPoint, Party};

/// The most bin edges one histogram may have.
pub const HISTOGRAM_EDGES_MAX: usize = 256;
/// The most groups (levels of the `GROUP BY` column).
pub const GROUPS_MAX: u32 = 1 << 16;
/// Ring bits a squared, scaled deviation of the variance may reach (so SecureML truncation
/// fails with probability at most `2^(40 − 64)` per row).
pub const VAR_PRODUCT_BITS: u32 = 40;

/// A checked query: what both parties compute, all of it public.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The query.
    pub query: Query,
    /// Rows.
    pub rows: usize,
    /// Groups (`1` without `GROUP BY`).
    pub groups: usize,
    /// The numeric columns each side inputs (sorted, without repeats), with their bounds.
    pub inputs: Vec<(Side, String, f64)>,
    /// Whether the plan is row-level (a bare column, no aggregate).
    pub row_level: bool,
    /// The schema it was checked against.
    pub schema: Schema,
    /// The output policy it was checked against.
    pub policy: OutputPolicy,
}

impl Plan {
    /// The index of `side.name` in [`Plan::inputs`].
    pub fn input_index(&self, c: &ColumnRef) -> Option<usize> {
        self.inputs
            .iter()
            .position(|(s, n, _)| *s == c.side && *n == c.name)
    }

    /// The declared bound of an input column.
    pub fn abs_max(&self, c: &ColumnRef) -> f64 {
        self.input_index(c)
            .and_then(|i| self.inputs.get(i))
            .map_or(0.0, |x| x.2)
    }

    /// The variance's deviation shift `t` for a column (module docs of [`super`]).
    pub fn var_shift(&self, c: &ColumnRef, fx: FixedPoint) -> u32 {
        let bits = (2.0 * self.abs_max(c)).log2().ceil().max(0.0) as u32;
        (bits + fx.frac_bits()).saturating_sub(VAR_PRODUCT_BITS / 2)
    }

    /// The SHA-256 digest both parties compare before computing: the canonical query text,
    /// the schema, the policy, the buyer's role and the format.
    pub fn digest(&self, buyer: Party, fx: FixedPoint) -> [u8; 32] {
        let text = format!(
            "tessera-mpc query v1\n{}\n{:?}\n{:?}\n{:?}\nf={}",
            self.query,
            self.schema,
            self.policy,
            buyer,
            fx.frac_bits()
        );
        Sha256::digest(text.as_bytes()).into()
    }
}

fn name(c: &ColumnRef) -> String {
    c.to_string()
}

pub(super) fn unknown(c: &ColumnRef) -> QueryError {
    QueryError::UnknownColumn {
        column: name(c),
        offset: c.offset,
    }
}

/// The declared bound of a numeric column, or the refusal.
pub(super) fn numeric(schema: &Schema, c: &ColumnRef) -> Result<f64, QueryError> {
    match schema.column(c.side, &c.name).map(|d| d.kind) {
        None => Err(unknown(c)),
        Some(ColumnKind::Categorical { .. }) => Err(QueryError::NotNumeric {
            column: name(c),
            offset: c.offset,
        }),
        Some(ColumnKind::Numeric { abs_max }) => Ok(abs_max),
    }
}

fn check_filter(schema: &Schema, cond: &Cond) -> Result<(), QueryError> {
    match cond {
        Cond::Cmp { column, .. } => {
            if schema.column(column.side, &column.name).is_none() {
                return Err(unknown(column));
            }
            if column.side != Side::Buyer {
                return Err(QueryError::FilterOnProviderColumn {
                    column: name(column),
                    offset: column.offset,
                });
            }
            Ok(())
        }
        Cond::And(a, b) | Cond::Or(a, b) => {
            check_filter(schema, a)?;
            check_filter(schema, b)
        }
        Cond::Not(a) => check_filter(schema, a),
    }
}

fn check_group(schema: &Schema, g: &ColumnRef) -> Result<usize, QueryError> {
    let def = schema.column(g.side, &g.name).ok_or_else(|| unknown(g))?;
    if g.side != Side::Buyer {
        return Err(QueryError::GroupByProviderColumn {
            column: name(g),
            offset: g.offset,
        });
    }
    match def.kind {
        ColumnKind::Categorical { levels } if (1..=GROUPS_MAX).contains(&levels) => {
            Ok(levels as usize)
        }
        ColumnKind::Categorical { levels } => Err(QueryError::Range(format!(
            "{} has {levels} levels, 1 ..= {GROUPS_MAX} allowed",
            name(g)
        ))),
        ColumnKind::Numeric { .. } => Err(QueryError::GroupByNotCategorical {
            column: name(g),
            offset: g.offset,
        }),
    }
}

fn check_edges(edges: &[f64], offset: usize, fx: FixedPoint) -> Result<(), QueryError> {
    let bad = |reason: String| QueryError::BadEdges { offset, reason };
    if edges.len() < 2 || edges.len() > HISTOGRAM_EDGES_MAX {
        return Err(bad(format!(
            "{} edges, 2 ..= {HISTOGRAM_EDGES_MAX} allowed",
            edges.len()
        )));
    }
    if edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("not strictly increasing".into()));
    }
    for e in edges {
        if fx.encode(*e).is_err() || fx.encode(-*e).is_err() {
            return Err(bad(format!("{e} is outside the fixed-point range")));
        }
    }
    Ok(())
}

/// Checks a parsed query against the schema, the output policy and the format, and plans it.
///
/// # Errors
/// The first refusal: [`QueryError::UnknownColumn`], [`QueryError::FilterOnProviderColumn`],
/// [`QueryError::GroupByProviderColumn`], [`QueryError::GroupByNotCategorical`],
/// [`QueryError::NotNumeric`], [`QueryError::BadEdges`],
/// [`QueryError::MixedRowsAndAggregates`], [`QueryError::PolicyRefused`],
/// [`QueryError::Range`].
pub fn check(
    query: &Query,
    schema: &Schema,
    policy: &OutputPolicy,
    fx: FixedPoint,
) -> Result<Plan, QueryError> {
    if let Some(f) = &query.filter {
        check_filter(schema, f)?;
    }
    let groups = match &query.group_by {
        Some(g) => check_group(schema, g)?,
        None => 1,
    };
    let mut inputs: Vec<(Side, String, f64)> = Vec::new();
    let (mut lanes, mut row_at, mut agg_at) = (0usize, None, None);
    for item in &query.items {
        match item {
            SelectItem::Count { offset } => agg_at = agg_at.or(Some(*offset)),
            SelectItem::Agg { func, column } => {
                agg_at = agg_at.or(Some(column.offset));
                let abs_max = numeric(schema, column)?;
                inputs.push((column.side, column.name.clone(), abs_max));
                if *func == AggFunc::Var && (2.0 * abs_max).powi(2) * fx.scale() >= 2f64.powi(60) {
                    return Err(QueryError::Range(format!(
                        "var({column}): (2 · bound)² · 2^f must stay below 2^60"
                    )));
                }
                if matches!(func, AggFunc::Min | AggFunc::Max) {
                    lanes += 1;
                }
            }
            SelectItem::Histogram {
                column,
                edges,
                edges_offset,
            } => {
                agg_at = agg_at.or(Some(column.offset));
                inputs.push((column.side, column.name.clone(), numeric(schema, column)?));
                check_edges(edges, *edges_offset, fx)?;
                bounded(edges.len().saturating_mul(schema.rows), "histogram")?;
                bounded((edges.len() - 1).saturating_mul(groups), "histogram bins")?;
            }
            SelectItem::Column(column) => {
                row_at = row_at.or(Some(column.offset));
                inputs.push((column.side, column.name.clone(), numeric(schema, column)?));
            }
        }
    }
    if let Some(offset) = row_at
        && (agg_at.is_some() || query.group_by.is_some())
    {
        return Err(QueryError::MixedRowsAndAggregates { offset });
    }
    let row_level = row_at.is_some();
    if row_level && policy.aggregates_only {
        return Err(QueryError::PolicyRefused(
            "only aggregates may leave, and the query asks for row-level values".into(),
        ));
    }
    if let Some(k) = policy.min_group_size.filter(|&k| k > 1 && row_level) {
        return Err(QueryError::PolicyRefused(format!(
            "groups of fewer than {k} rows are suppressed, and a row-level output is a group of one"
        )));
    }
    inputs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    inputs.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let rows = schema.rows;
    if rows == 0 {
        return Err(QueryError::Range("a schema of no rows".into()));
    }
    bounded(rows.saturating_mul(groups), "rows × groups")?;
    bounded(rows.saturating_mul(inputs.len()), "rows × input columns")?;
    bounded(
        rows.saturating_mul(groups).saturating_mul(lanes),
        "rows × groups × min/max",
    )?;
    check_ranges(&inputs, rows, fx)?;
    let threshold = policy.min_group_size.unwrap_or(0).max(1);
    if threshold as f64 > fx.max_abs() / 2.0 {
        return Err(QueryError::Range(format!(
            "a minimum group size of {threshold} is past the fixed-point range"
        )));
    }
    Ok(Plan {
        query: query.clone(),
        rows,
        groups,
        inputs,
        row_level,
        schema: schema.clone(),
        policy: *policy,
    })
}

fn bounded(n: usize, what: &str) -> Result<(), QueryError> {
    if n > ELEMENTS_MAX {
        return Err(QueryError::Range(format!(
            "{what}: {n} elements, at most {ELEMENTS_MAX}"
        )));
    }
    Ok(())
}

/// Every input column's sums stay below `2^61` as ring integers, and its bound is a positive
/// finite real.
fn check_ranges(
    inputs: &[(Side, String, f64)],
    rows: usize,
    fx: FixedPoint,
) -> Result<(), QueryError> {
    for (side, name, abs_max) in inputs {
        let total = (rows.max(4) as f64) * abs_max * fx.scale();
        if !(abs_max.is_finite() && *abs_max > 0.0) || total >= 2f64.powi(61) {
            return Err(QueryError::Range(format!(
                "{side}.{name}: bound {abs_max} over {rows} rows is past the fixed-point range \
                 (rows · bound · 2^f must stay below 2^61)"
            )));
        }
    }
    Ok(())
}
