//! The secure evaluation of a checked [`Plan`] by both parties ([`evaluate`]): the buyer's
//! selection/group matrix and each party's columns are secret-shared, the aggregates computed
//! on shares, the output policy applied on shares, and the result opened to the buyer only
//! (algorithms, error bounds and what is revealed: the module docs of [`super`]).

use rand_core::CryptoRngCore;

use super::plan::Plan;
use super::{AggFunc, ColumnData, ColumnKind, Cond, QueryError, SelectItem, Side, Table};
use crate::wire::{KIND_PLAN, send_abort};
use crate::{MpcError, Party, Session, Shares};

/// Abort code sent to the peer when a party's own data do not fit the schema.
pub const ABORT_OWN_DATA: u8 = 0x21;

/// One aggregate's value, as the buyer receives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// `count(*)`: exact.
    Count(u64),
    /// `sum`, `mean`, `var`, `min`, `max`: a fixed-point real.
    Real(f64),
    /// `histogram`: the count of each bin, exact.
    Histogram(Vec<u64>),
}

/// One group's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResult {
    /// The group's category code (`0` without `GROUP BY`).
    pub group: u32,
    /// The aggregates in select-list order, or `None` where the group was suppressed (fewer
    /// than `max(k, 1)` selected rows): then nothing but that fact was opened.
    pub values: Option<Vec<Aggregate>>,
}

/// What the buyer receives.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    /// An aggregate query: one entry per group (category code order).
    Groups(Vec<GroupResult>),
    /// A row-level query: per select item, per row, the value where the row is selected.
    Rows(Vec<Vec<Option<f64>>>),
}

impl QueryResult {
    /// The result of `plan`'s query on no rows (no common keys): every group empty, so none
    /// is reported (a row-level query has no rows). `plan` is a plan of the query on any
    /// number of rows (a plan of no rows does not exist); nothing is computed, and the result
    /// reveals nothing both parties do not already know from the alignment.
    pub fn of_no_rows(plan: &crate::query::Plan) -> QueryResult {
        if plan.row_level {
            QueryResult::Rows(vec![Vec::new(); plan.query.items.len()])
        } else {
            QueryResult::Groups(
                (0..plan.groups)
                    .map(|g| GroupResult {
                        group: g as u32,
                        values: None,
                    })
                    .collect(),
            )
        }
    }
}

fn party_of(side: Side, buyer: Party) -> Party {
    match side {
        Side::Buyer => buyer,
        Side::Provider => buyer.other(),
    }
}

/// Evaluates `plan` as this session's party: the buyer is `buyer`, the other party the
/// provider; `own` is this party's table. Returns `Some(result)` at the buyer and `None` at
/// the provider.
///
/// # Errors
/// [`QueryError::Data`] if `own` does not fit the schema (the peer is sent an abort and sees
/// [`MpcError::PeerAborted`]); [`QueryError::PlanMismatch`] if the peer's plan digest
/// differs; [`QueryError::Mpc`] for a failure of the protocol (link, malformed frame, abort).
pub async fn evaluate<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    buyer: Party,
    plan: &Plan,
    own: &Table,
) -> Result<Option<QueryResult>, QueryError> {
    let me = if s.party() == buyer {
        Side::Buyer
    } else {
        Side::Provider
    };
    if let Err(e) = validate(plan, me, own) {
        send_abort(s.link(), ABORT_OWN_DATA).await;
        return Err(e);
    }
    agree(s, plan, buyer).await?;
    let (n, k) = (plan.rows, plan.groups);
    let cells = (me == Side::Buyer).then(|| selection(plan, own));
    let m = s.input_ring(buyer, cells.as_deref(), n * k).await?;
    let cols = input_columns(s, plan, buyer, me, own).await?;
    if plan.row_level {
        let rows = row_outputs(s, plan, buyer, &m, &cols).await?;
        return Ok(rows.map(|values| {
            let sel: Vec<bool> = cells.unwrap_or_default().iter().map(|c| *c == 1).collect();
            QueryResult::Rows(
                values
                    .chunks(n)
                    .map(|col| {
                        col.iter()
                            .zip(&sel)
                            .map(|(v, on)| on.then(|| s.fixed_point().decode(*v)))
                            .collect()
                    })
                    .collect(),
            )
        }));
    }
    let ev = Eval {
        plan,
        n,
        k,
        m,
        cols,
    };
    let (widths, outs) = ev.aggregates(s).await?;
    let flag = ev.keep_flags(s).await?;
    let width: usize = widths.iter().sum();
    let mut wide = Vec::with_capacity(k * width);
    for g in 0..k {
        wide.extend(std::iter::repeat_n(flag.words()[g], width));
    }
    // Suppression inside the computation: a suppressed group's outputs become exact zeros.
    let masked = s.mul_ring(&Shares::from_words(wide), &outs).await?;
    let mut all = flag.words().to_vec();
    all.extend_from_slice(masked.words());
    let Some(opened) = s.reveal_to(buyer, &Shares::from_words(all)).await? else {
        return Ok(None);
    };
    Ok(Some(decode(plan, s.fixed_point(), &widths, &opened)))
}

/// Both parties compare the plan digest (one message each way).
async fn agree<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    plan: &Plan,
    buyer: Party,
) -> Result<(), QueryError> {
    let digest = plan.digest(buyer, s.fixed_point());
    let words: Vec<u64> = digest
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    let theirs = s.open_words(KIND_PLAN, &words).await?;
    if theirs != words {
        return Err(QueryError::PlanMismatch);
    }
    Ok(())
}

/// Checks this party's own columns against the schema, before anything is sent.
pub(super) fn validate(plan: &Plan, me: Side, own: &Table) -> Result<(), QueryError> {
    let mut needed: Vec<&str> = plan
        .inputs
        .iter()
        .filter(|(side, _, _)| *side == me)
        .map(|(_, name, _)| name.as_str())
        .collect();
    if me == Side::Buyer {
        if let Some(f) = &plan.query.filter {
            filter_columns(f, &mut needed);
        }
        if let Some(g) = &plan.query.group_by {
            needed.push(&g.name);
        }
    }
    for name in needed {
        let data = own
            .columns
            .get(name)
            .ok_or_else(|| QueryError::Data(format!("no column {me}.{name}")))?;
        if data.len() != plan.rows {
            return Err(QueryError::Data(format!(
                "{me}.{name} has {} rows, the schema {}",
                data.len(),
                plan.rows
            )));
        }
        let kind = plan.schema.column(me, name).map(|d| d.kind);
        match (kind, data) {
            (Some(ColumnKind::Numeric { abs_max }), ColumnData::Numeric(v)) => {
                if let Some((i, x)) = v
                    .iter()
                    .enumerate()
                    .find(|(_, x)| !(x.is_finite() && x.abs() <= abs_max))
                {
                    return Err(QueryError::Data(format!(
                        "{me}.{name} row {i}: {x} is past the declared bound {abs_max}"
                    )));
                }
            }
            (Some(ColumnKind::Categorical { levels }), ColumnData::Categorical(v)) => {
                if let Some((i, c)) = v.iter().enumerate().find(|(_, c)| **c >= levels) {
                    return Err(QueryError::Data(format!(
                        "{me}.{name} row {i}: category {c}, only {levels} levels"
                    )));
                }
            }
            _ => {
                return Err(QueryError::Data(format!(
                    "{me}.{name} is not of the schema's kind"
                )));
            }
        }
    }
    Ok(())
}

fn filter_columns<'a>(c: &'a Cond, out: &mut Vec<&'a str>) {
    match c {
        Cond::Cmp { column, .. } => out.push(&column.name),
        Cond::And(a, b) | Cond::Or(a, b) => {
            filter_columns(a, out);
            filter_columns(b, out);
        }
        Cond::Not(a) => filter_columns(a, out),
    }
}

fn holds(c: &Cond, own: &Table, i: usize) -> bool {
    match c {
        Cond::Cmp { column, op, value } => own
            .columns
            .get(&column.name)
            .is_some_and(|d| op.holds(d.get(i), *value)),
        Cond::And(a, b) => holds(a, own, i) && holds(b, own, i),
        Cond::Or(a, b) => holds(a, own, i) || holds(b, own, i),
        Cond::Not(a) => !holds(a, own, i),
    }
}

/// The buyer's `n × k` matrix `M[i][g] = [row i selected and in group g]`, in the clear.
fn selection(plan: &Plan, own: &Table) -> Vec<u64> {
    let (n, k) = (plan.rows, plan.groups);
    let mut cells = vec![0u64; n * k];
    let group = plan
        .query
        .group_by
        .as_ref()
        .and_then(|g| own.columns.get(&g.name));
    for i in 0..n {
        let selected = plan.query.filter.as_ref().is_none_or(|c| holds(c, own, i));
        let g = match group {
            Some(ColumnData::Categorical(v)) => v.get(i).map_or(0, |c| *c as usize),
            _ => 0,
        };
        if selected && g < k {
            cells[i * k + g] = 1;
        }
    }
    cells
}

/// Secret-shares the plan's input columns, one input call per owner; returns them in
/// [`Plan::inputs`] order.
async fn input_columns<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    plan: &Plan,
    buyer: Party,
    me: Side,
    own: &Table,
) -> Result<Vec<Shares>, QueryError> {
    let n = plan.rows;
    let mut out: Vec<Option<Shares>> = vec![None; plan.inputs.len()];
    for side in [Side::Buyer, Side::Provider] {
        let idx: Vec<usize> = (0..plan.inputs.len())
            .filter(|&j| plan.inputs[j].0 == side)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let values: Option<Vec<f64>> = (side == me).then(|| {
            idx.iter()
                .flat_map(|&j| match own.columns.get(&plan.inputs[j].1) {
                    Some(ColumnData::Numeric(v)) => v.clone(),
                    _ => vec![0.0; n],
                })
                .collect()
        });
        let sh = s
            .input(party_of(side, buyer), values.as_deref(), n * idx.len())
            .await?;
        for (c, &j) in sh.words().chunks(n).zip(&idx) {
            out[j] = Some(Shares::from_words(c.to_vec()));
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// Row-level outputs: `M[i] · x_i` per item, opened to the buyer.
async fn row_outputs<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    plan: &Plan,
    buyer: Party,
    m: &Shares,
    cols: &[Shares],
) -> Result<Option<Vec<u64>>, QueryError> {
    let (mut sel, mut vals) = (Vec::new(), Vec::new());
    for item in &plan.query.items {
        if let SelectItem::Column(c) = item {
            let j = plan.input_index(c).unwrap_or_default();
            sel.extend_from_slice(m.words());
            vals.extend_from_slice(cols.get(j).map(|x| x.words()).unwrap_or_default());
        }
    }
    let prod = s
        .mul_ring(&Shares::from_words(sel), &Shares::from_words(vals))
        .await?;
    Ok(s.reveal_to(buyer, &prod).await?)
}

/// The groups' counts normalised for division ([`Eval::normalise_counts`]).
struct Normalised {
    /// One-hot selectors, ring 0/1, selector-major: selector `j` of group `g` at `j·k + g`.
    sel: Shares,
    /// `2^j / c_g` in fixed point, one per group.
    r: Shares,
    /// `J`: selectors `0 ..= J` per group.
    steps: usize,
}

/// `Σ_j sel_j · (v / 2^j)` per value of `v` — `m` columns of `k` group values each,
/// column-major, `k` from the selectors — each `v / 2^j` a local truncation (at most one ulp
/// off); one multiplication layer.
async fn select_scaled<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    sel: &Shares,
    steps: usize,
    v: &Shares,
) -> Result<Shares, QueryError> {
    let len = v.len();
    let k = sel.len() / (steps + 1);
    let (mut a, mut b) = (
        Vec::with_capacity((steps + 1) * len),
        Vec::with_capacity((steps + 1) * len),
    );
    for j in 0..=steps {
        let vj = if j == 0 {
            v.clone()
        } else {
            s.div_public(v, 1u64 << j)?
        };
        for (i, w) in vj.words().iter().enumerate() {
            a.push(sel.words()[j * k + i % k.max(1)]);
            b.push(*w);
        }
    }
    let prod = s
        .mul_ring(&Shares::from_words(a), &Shares::from_words(b))
        .await?;
    let mut out = vec![0u64; len];
    for chunk in prod.words().chunks(len.max(1)) {
        for (o, p) in out.iter_mut().zip(chunk) {
            *o = o.wrapping_add(*p);
        }
    }
    Ok(Shares::from_words(out))
}

fn transpose(w: &[u64], rows: usize, cols: usize) -> Vec<u64> {
    let mut t = vec![0u64; w.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = w[i * cols + j];
        }
    }
    t
}

/// The shared state of one aggregate evaluation.
struct Eval<'p> {
    plan: &'p Plan,
    n: usize,
    k: usize,
    /// The selection/group matrix, `n × k` ring 0/1.
    m: Shares,
    /// The input columns in [`Plan::inputs`] order.
    cols: Vec<Shares>,
}

/// Per-group intermediate values, indexed by input column.
#[derive(Default)]
struct PerGroup {
    counts: Vec<u64>,
    sums: Vec<Option<Vec<u64>>>,
    means: Vec<Option<Vec<u64>>>,
    vars: Vec<Option<Vec<u64>>>,
    extremes: Vec<Vec<u64>>,
    histograms: Vec<Vec<u64>>,
}

impl Eval<'_> {
    /// The secret counts `c_g` (ring integers), local.
    fn counts(&self) -> Vec<u64> {
        let mut c = vec![0u64; self.k];
        for row in self.m.words().chunks(self.k) {
            for (o, v) in c.iter_mut().zip(row) {
                *o = o.wrapping_add(*v);
            }
        }
        c
    }

    /// `keep_g = [c_g ≥ max(min_group_size, 1)]`, ring 0/1: one secure comparison.
    async fn keep_flags<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
    ) -> Result<Shares, QueryError> {
        let fx = s.fixed_point();
        let c = Shares::from_words(self.counts());
        let c_fx = s.mul_public_ring(&c, 1u64 << fx.frac_bits());
        let threshold = self.plan.policy.min_group_size.unwrap_or(0).max(1) as f64;
        Ok(s.at_least(&c_fx, &[threshold]).await?)
    }

    /// Computes every aggregate; returns the width of each select item and the `k × W`
    /// outputs (row-major by group) before suppression.
    async fn aggregates<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
    ) -> Result<(Vec<usize>, Shares), QueryError> {
        let mut pg = PerGroup {
            counts: self.counts(),
            ..Default::default()
        };
        let inputs = self.plan.inputs.len();
        pg.sums = vec![None; inputs];
        pg.means = vec![None; inputs];
        pg.vars = vec![None; inputs];
        let needs = |f: &dyn Fn(AggFunc) -> bool| -> Vec<usize> {
            let mut v: Vec<usize> = self
                .plan
                .query
                .items
                .iter()
                .filter_map(|it| match it {
                    SelectItem::Agg { func, column } if f(*func) => self.plan.input_index(column),
                    _ => None,
                })
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let summed = needs(&|f| matches!(f, AggFunc::Sum | AggFunc::Mean | AggFunc::Var));
        let averaged = needs(&|f| matches!(f, AggFunc::Mean | AggFunc::Var));
        let varied = needs(&|f| f == AggFunc::Var);
        self.sums(s, &summed, &mut pg).await?;
        if !averaged.is_empty() {
            let norm = self.normalise_counts(s, &pg.counts).await?;
            self.means(s, &averaged, &norm, &mut pg).await?;
            if !varied.is_empty() {
                self.variances(s, &varied, &norm, &mut pg).await?;
            }
        }
        pg.extremes = self.extremes(s).await?;
        pg.histograms = self.histograms(s).await?;
        Ok(self.assemble(&pg))
    }

    /// `Mᵀ X` for the summed columns: `k × C`, exact.
    async fn sums<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
        summed: &[usize],
        pg: &mut PerGroup,
    ) -> Result<(), QueryError> {
        if summed.is_empty() {
            return Ok(());
        }
        let (n, k, c) = (self.n, self.k, summed.len());
        let x = self.row_major(summed);
        let mt = Shares::from_words(transpose(self.m.words(), n, k));
        let sums = s.matmul_ring(&mt, &x, (k, n, c)).await?;
        for (pos, &j) in summed.iter().enumerate() {
            pg.sums[j] = Some((0..k).map(|g| sums.words()[g * c + pos]).collect());
        }
        Ok(())
    }

    /// The columns `idx` as an `n × |idx|` row-major matrix of shares.
    fn row_major(&self, idx: &[usize]) -> Shares {
        let c = idx.len();
        let mut x = vec![0u64; self.n * c];
        for (pos, &j) in idx.iter().enumerate() {
            for (i, v) in self.cols[j].words().iter().enumerate() {
                x[i * c + pos] = *v;
            }
        }
        Shares::from_words(x)
    }

    /// The counts normalised for division (module docs of [`super`]): for each group the
    /// exponent `j` with `2^j ≤ c_g < 2^(j+1)` (`j = 0` for an empty group) as a one-hot
    /// selector, from one comparison of every count with `2^1 … 2^J` (`2^J > rows`), and the
    /// reciprocal of `c_g / 2^j ∈ [1, 2)`, which fixed point holds to a few ulps of a value in
    /// `(1/2, 1]` — the reciprocal of `c_g` itself would be a few ulps of `1/c_g`, a large
    /// relative error once groups pass a few thousand rows.
    async fn normalise_counts<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
        counts: &[u64],
    ) -> Result<Normalised, QueryError> {
        let k = counts.len();
        let frac = s.fixed_point().frac_bits();
        let c = s.mul_public_ring(&Shares::from_words(counts.to_vec()), 1u64 << frac);
        let steps = (usize::BITS - self.n.leading_zeros()) as usize;
        let thresholds: Vec<f64> = (1..=steps).map(|j| 2f64.powi(j as i32)).collect();
        let at_least = s.at_least(&c, &thresholds).await?;
        let b = at_least.words();
        let one = u64::from(s.party() == Party::P0);
        let mut sel = vec![0u64; (steps + 1) * k];
        for j in 0..=steps {
            for g in 0..k {
                let this = if j == 0 { one } else { b[(j - 1) * k + g] };
                let next = if j < steps { b[j * k + g] } else { 0 };
                sel[j * k + g] = this.wrapping_sub(next);
            }
        }
        let sel = Shares::from_words(sel);
        let unit = select_scaled(s, &sel, steps, &c).await?;
        let r = s.reciprocal(&unit).await?;
        Ok(Normalised { sel, r, steps })
    }

    /// `mean_g = (sum_g / 2^j) · r_g` for the averaged columns.
    async fn means<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
        averaged: &[usize],
        norm: &Normalised,
        pg: &mut PerGroup,
    ) -> Result<(), QueryError> {
        let (mut sums, mut rs) = (Vec::new(), Vec::new());
        for &j in averaged {
            sums.extend(pg.sums[j].clone().unwrap_or_default());
            rs.extend_from_slice(norm.r.words());
        }
        let scaled = select_scaled(s, &norm.sel, norm.steps, &Shares::from_words(sums)).await?;
        let means = s.mul(&scaled, &Shares::from_words(rs)).await?;
        for (chunk, &j) in means.words().chunks(self.k).zip(averaged) {
            pg.means[j] = Some(chunk.to_vec());
        }
        Ok(())
    }

    /// The two-pass variance of the varied columns (module docs of [`super`]).
    async fn variances<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
        varied: &[usize],
        norm: &Normalised,
        pg: &mut PerGroup,
    ) -> Result<(), QueryError> {
        let (n, k, v) = (self.n, self.k, varied.len());
        let fx = s.fixed_point();
        // μ as k × V, then each row's group mean: M (n × k) · μ (k × V).
        let mut mu = vec![0u64; k * v];
        for (pos, &j) in varied.iter().enumerate() {
            for (g, m) in pg.means[j].clone().unwrap_or_default().iter().enumerate() {
                mu[g * v + pos] = *m;
            }
        }
        let mu_rows = s
            .matmul_ring(&self.m, &Shares::from_words(mu), (n, k, v))
            .await?;
        let x = self.row_major(varied);
        let d = s.sub(&x, &mu_rows)?;
        // Scale each column's deviations down by its 2^t, column by column.
        let mut scaled = vec![0u64; n * v];
        for (pos, &j) in varied.iter().enumerate() {
            let col: Vec<u64> = (0..n).map(|i| d.words()[i * v + pos]).collect();
            let t = self.plan.var_shift(&self.column_ref(j), fx);
            let cs = s.div_public(&Shares::from_words(col), 1u64 << t)?;
            for (i, w) in cs.words().iter().enumerate() {
                scaled[i * v + pos] = *w;
            }
        }
        let scaled = Shares::from_words(scaled);
        let sq = s.mul(&scaled, &scaled).await?;
        let mt = Shares::from_words(transpose(self.m.words(), n, k));
        let q = s.matmul_ring(&mt, &sq, (k, n, v)).await?;
        // Column-major (k per column) for the selection, then times each group's reciprocal.
        let mut cols = vec![0u64; k * v];
        for g in 0..k {
            for pos in 0..v {
                cols[pos * k + g] = q.words()[g * v + pos];
            }
        }
        let scaled = select_scaled(s, &norm.sel, norm.steps, &Shares::from_words(cols)).await?;
        let rs: Vec<u64> = (0..v)
            .flat_map(|_| norm.r.words().iter().copied())
            .collect();
        let var_s = s.mul(&scaled, &Shares::from_words(rs)).await?;
        for (pos, &j) in varied.iter().enumerate() {
            let t = self.plan.var_shift(&self.column_ref(j), fx);
            let col = Shares::from_words(var_s.words()[pos * k..(pos + 1) * k].to_vec());
            let var = s.mul_public_ring(&col, 1u64 << (2 * t));
            pg.vars[j] = Some(var.words().to_vec());
        }
        Ok(())
    }

    fn column_ref(&self, j: usize) -> super::ColumnRef {
        let (side, name, _) = &self.plan.inputs[j];
        super::ColumnRef {
            side: *side,
            name: name.clone(),
            offset: 0,
        }
    }

    /// Every `min`/`max` item's value per group (item order, then group): a tournament tree
    /// over all lanes at once.
    async fn extremes<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
    ) -> Result<Vec<Vec<u64>>, QueryError> {
        let (n, k) = (self.n, self.k);
        let (mut mask, mut diff, mut sentinels, mut is_min) = (vec![], vec![], vec![], vec![]);
        for item in &self.plan.query.items {
            let SelectItem::Agg { func, column } = item else {
                continue;
            };
            let min = match func {
                AggFunc::Min => true,
                AggFunc::Max => false,
                _ => continue,
            };
            let j = self.plan.input_index(column).unwrap_or_default();
            let big = 2.0 * self.plan.abs_max(column);
            let sentinel = if min { big } else { -big };
            let neg = s.add_public(&self.cols[j], -sentinel)?;
            for g in 0..k {
                mask.extend((0..n).map(|i| self.m.words()[i * k + g]));
                diff.extend_from_slice(neg.words());
                sentinels.push(sentinel);
                is_min.push(min);
            }
        }
        if is_min.is_empty() {
            return Ok(Vec::new());
        }
        let prod = s
            .mul_ring(&Shares::from_words(mask), &Shares::from_words(diff))
            .await?;
        let mut lanes: Vec<Vec<u64>> = Vec::with_capacity(is_min.len());
        for (chunk, sentinel) in prod.words().chunks(n).zip(&sentinels) {
            let lane = s.add_public(&Shares::from_words(chunk.to_vec()), *sentinel)?;
            lanes.push(lane.words().to_vec());
        }
        let mut len = n;
        while len > 1 {
            lanes = tournament_layer(s, lanes, &is_min, len).await?;
            len = len / 2 + len % 2;
        }
        let mut out = Vec::new();
        for lane_group in lanes.chunks(k) {
            out.push(lane_group.iter().map(|l| l[0]).collect());
        }
        Ok(out)
    }

    /// Every histogram item's bin counts per group (`k × m`, item order).
    async fn histograms<R: CryptoRngCore + Send>(
        &self,
        s: &mut Session<'_, R>,
    ) -> Result<Vec<Vec<u64>>, QueryError> {
        let (n, k) = (self.n, self.k);
        let mut out = Vec::new();
        for item in &self.plan.query.items {
            let SelectItem::Histogram { column, edges, .. } = item else {
                continue;
            };
            let j = self.plan.input_index(column).unwrap_or_default();
            let ge = s.at_least(&self.cols[j], edges).await?;
            let bins = edges.len() - 1;
            let mut b = vec![0u64; n * bins];
            for jb in 0..bins {
                for i in 0..n {
                    b[i * bins + jb] =
                        ge.words()[jb * n + i].wrapping_sub(ge.words()[(jb + 1) * n + i]);
                }
            }
            let mt = Shares::from_words(transpose(self.m.words(), n, k));
            let h = s
                .matmul_ring(&mt, &Shares::from_words(b), (k, n, bins))
                .await?;
            out.push(h.words().to_vec());
        }
        Ok(out)
    }

    /// Lays the outputs out per group in select-list order.
    fn assemble(&self, pg: &PerGroup) -> (Vec<usize>, Shares) {
        let k = self.k;
        let mut widths = Vec::new();
        for item in &self.plan.query.items {
            widths.push(match item {
                SelectItem::Histogram { edges, .. } => edges.len() - 1,
                _ => 1,
            });
        }
        let width: usize = widths.iter().sum();
        let mut out = vec![0u64; k * width];
        let (mut ext, mut hist) = (0usize, 0usize);
        let mut at = 0usize;
        for (item, w) in self.plan.query.items.iter().zip(&widths) {
            for g in 0..k {
                let cell = g * width + at;
                match item {
                    SelectItem::Count { .. } => out[cell] = pg.counts[g],
                    SelectItem::Agg { func, column } => {
                        let j = self.plan.input_index(column).unwrap_or_default();
                        let src = match func {
                            AggFunc::Sum => pg.sums[j].as_deref(),
                            AggFunc::Mean => pg.means[j].as_deref(),
                            AggFunc::Var => pg.vars[j].as_deref(),
                            AggFunc::Min | AggFunc::Max => pg.extremes.get(ext).map(|v| &v[..]),
                        };
                        out[cell] = src.and_then(|v| v.get(g)).copied().unwrap_or(0);
                    }
                    SelectItem::Histogram { .. } => {
                        if let Some(h) = pg.histograms.get(hist) {
                            out[cell..cell + w].copy_from_slice(&h[g * w..(g + 1) * w]);
                        }
                    }
                    SelectItem::Column(_) => {}
                }
            }
            match item {
                SelectItem::Agg {
                    func: AggFunc::Min | AggFunc::Max,
                    ..
                } => ext += 1,
                SelectItem::Histogram { .. } => hist += 1,
                _ => {}
            }
            at += w;
        }
        (widths, Shares::from_words(out))
    }
}

/// One layer of the min/max tournament over every lane (each of length `len`): pairs
/// `(a, b) = (lane[2j], lane[2j+1])`, `lt = [a < b]`, `min = b + lt · (a − b)`,
/// `max = a + lt · (b − a)`; an odd last element goes on as it is. One comparison and one
/// multiplication layer for all lanes.
async fn tournament_layer<R: CryptoRngCore + Send>(
    s: &mut Session<'_, R>,
    lanes: Vec<Vec<u64>>,
    is_min: &[bool],
    len: usize,
) -> Result<Vec<Vec<u64>>, MpcError> {
    let pairs = len / 2;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for lane in &lanes {
        for j in 0..pairs {
            a.push(lane[2 * j]);
            b.push(lane[2 * j + 1]);
        }
    }
    let (a, b) = (Shares::from_words(a), Shares::from_words(b));
    let lt = s.less_than(&a, &b).await?;
    let (mut base, mut e) = (Vec::with_capacity(a.len()), Vec::with_capacity(a.len()));
    for (l, &min) in is_min.iter().enumerate() {
        for j in l * pairs..(l + 1) * pairs {
            let (x, y) = (a.words()[j], b.words()[j]);
            if min {
                base.push(y);
                e.push(x.wrapping_sub(y));
            } else {
                base.push(x);
                e.push(y.wrapping_sub(x));
            }
        }
    }
    let t = s.mul_ring(&lt, &Shares::from_words(e)).await?;
    let chosen = s.add(&Shares::from_words(base), &t)?;
    let mut next = Vec::with_capacity(lanes.len());
    for (l, lane) in lanes.iter().enumerate() {
        let mut v = chosen.words()[l * pairs..(l + 1) * pairs].to_vec();
        if len % 2 == 1 {
            v.push(lane[len - 1]);
        }
        next.push(v);
    }
    Ok(next)
}

/// The buyer's decoding of the opened flags and outputs.
fn decode(plan: &Plan, fx: crate::FixedPoint, widths: &[usize], opened: &[u64]) -> QueryResult {
    let k = plan.groups;
    let width: usize = widths.iter().sum();
    let (flags, values) = opened.split_at(k.min(opened.len()));
    let mut groups = Vec::with_capacity(k);
    for (g, flag) in flags.iter().enumerate() {
        let row = values.get(g * width..(g + 1) * width).unwrap_or_default();
        let values = (*flag == 1).then(|| {
            let mut at = 0usize;
            let mut out = Vec::new();
            for (item, w) in plan.query.items.iter().zip(widths) {
                let cells = row.get(at..at + w).unwrap_or_default();
                out.push(match item {
                    SelectItem::Count { .. } => {
                        Aggregate::Count(cells.first().copied().unwrap_or(0))
                    }
                    SelectItem::Histogram { .. } => Aggregate::Histogram(cells.to_vec()),
                    _ => Aggregate::Real(fx.decode(cells.first().copied().unwrap_or(0))),
                });
                at += w;
            }
            out
        });
        groups.push(GroupResult {
            group: g as u32,
            values,
        });
    }
    QueryResult::Groups(groups)
}
