//! The clear evaluation of a checked [`Plan`] on both parties' aligned tables
//! ([`evaluate_clear`]): what an attested enclave computes for the `tee` scene, where both
//! parties' rows are decrypted inside the enclave and nowhere else. Same query semantics and
//! the same output policy as the secure [`super::evaluate`]: a group with fewer than
//! `max(minGroupSize, 1)` selected rows is suppressed (nothing of it but that fact leaves),
//! and a row-level plan exists only if the policy allowed it when the plan was checked. The
//! arithmetic is `f64` (no fixed-point error; the sums are exact to `f64` rounding).

use super::eval::{Aggregate, GroupResult, QueryResult};
use super::plan::Plan;
use super::{AggFunc, ColumnData, ColumnRef, Cond, QueryError, SelectItem, Side, Table};

/// Evaluates `plan` on the buyer's and the provider's columns of the same `plan.rows` aligned
/// rows.
///
/// # Errors
/// [`QueryError::Data`] if a table does not fit the schema: a missing column, another row
/// count, a value past its declared bound, a category code past its levels, another kind (the
/// same checks as the secure evaluation's).
pub fn evaluate_clear(
    plan: &Plan,
    buyer: &Table,
    provider: &Table,
) -> Result<QueryResult, QueryError> {
    super::eval::validate(plan, Side::Buyer, buyer)?;
    super::eval::validate(plan, Side::Provider, provider)?;
    let value = |c: &ColumnRef, i: usize| -> f64 {
        let t = match c.side {
            Side::Buyer => buyer,
            Side::Provider => provider,
        };
        t.columns.get(&c.name).map_or(f64::NAN, |d| d.get(i))
    };
    let selected = |i: usize| {
        plan.query
            .filter
            .as_ref()
            .is_none_or(|c| holds(c, &value, i))
    };
    if plan.row_level {
        let sel: Vec<bool> = (0..plan.rows).map(selected).collect();
        let columns = plan
            .query
            .items
            .iter()
            .filter_map(|item| match item {
                SelectItem::Column(c) => Some(
                    (0..plan.rows)
                        .map(|i| sel[i].then(|| value(c, i)))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        return Ok(QueryResult::Rows(columns));
    }
    let mut members = vec![Vec::new(); plan.groups];
    for i in (0..plan.rows).filter(|&i| selected(i)) {
        let g = match &plan.query.group_by {
            Some(g) => match buyer.columns.get(&g.name) {
                Some(ColumnData::Categorical(v)) => v.get(i).map_or(0, |c| *c as usize),
                _ => 0,
            },
            None => 0,
        };
        if let Some(m) = members.get_mut(g) {
            m.push(i);
        }
    }
    let k = plan.policy.min_group_size.unwrap_or(0).max(1);
    let groups = members
        .iter()
        .enumerate()
        .map(|(g, rows)| GroupResult {
            group: g as u32,
            values: (rows.len() as u64 >= k).then(|| {
                plan.query
                    .items
                    .iter()
                    .map(|item| aggregate(item, rows, &value))
                    .collect()
            }),
        })
        .collect();
    Ok(QueryResult::Groups(groups))
}

fn holds(c: &Cond, value: &impl Fn(&ColumnRef, usize) -> f64, i: usize) -> bool {
    match c {
        Cond::Cmp {
            column,
            op,
            value: v,
        } => op.holds(value(column, i), *v),
        Cond::And(a, b) => holds(a, value, i) && holds(b, value, i),
        Cond::Or(a, b) => holds(a, value, i) || holds(b, value, i),
        Cond::Not(a) => !holds(a, value, i),
    }
}

fn aggregate(
    item: &SelectItem,
    rows: &[usize],
    value: &impl Fn(&ColumnRef, usize) -> f64,
) -> Aggregate {
    let n = rows.len() as f64;
    match item {
        SelectItem::Count { .. } => Aggregate::Count(rows.len() as u64),
        SelectItem::Agg { func, column } => {
            let v: Vec<f64> = rows.iter().map(|&i| value(column, i)).collect();
            let sum: f64 = v.iter().sum();
            let mean = sum / n;
            Aggregate::Real(match func {
                AggFunc::Sum => sum,
                AggFunc::Mean => mean,
                AggFunc::Var => v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n,
                AggFunc::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
                AggFunc::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            })
        }
        SelectItem::Histogram { column, edges, .. } => {
            let v: Vec<f64> = rows.iter().map(|&i| value(column, i)).collect();
            Aggregate::Histogram(
                edges
                    .windows(2)
                    .map(|w| v.iter().filter(|x| **x >= w[0] && **x < w[1]).count() as u64)
                    .collect(),
            )
        }
        // A row-level item in an aggregate plan: the plan check refuses the mix.
        SelectItem::Column(_) => Aggregate::Count(0),
    }
}
