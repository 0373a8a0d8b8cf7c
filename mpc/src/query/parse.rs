//! The statistics language's grammar ([`parse`]), on `winnow` combinators over a
//! position-tracking input: every error names the byte offset, line and column where the
//! parse stopped and what was expected there ([`ParseError`]).
//!
//! ```text
//! query     := SELECT item (',' item)* [WHERE cond] [GROUP BY column] [';'] end
//! item      := COUNT '(' '*' ')'
//!            | (SUM | MEAN | AVG | VAR | MIN | MAX) '(' column ')'
//!            | HISTOGRAM '(' column ',' '[' number (',' number)* ']' ')'
//!            | column                                  -- a row-level output
//! cond      := conj (OR conj)*
//! conj      := neg (AND neg)*
//! neg       := NOT neg | '(' cond ')' | column op number
//! op        := '<' | '<=' | '>' | '>=' | '=' | '!=' | '<>'
//! column    := (BUYER | PROVIDER) '.' name            -- name: [A-Za-z_][A-Za-z0-9_]*
//! number    := ['+' | '-'] digits ['.' digits] [('e' | 'E') ['+' | '-'] digits]
//!
//! statement := query | train | score                   -- parse_statement
//! train     := TRAIN LOGISTIC_REGRESSION '(' column (',' column)* ')' LABEL column
//!              option* [';'] end
//! option    := EPOCHS digits | LEARNING_RATE number | L2 number | BATCH digits
//!                                                      -- each option at most once
//! score     := SCORE LOGISTIC_REGRESSION '(' column (',' column)* ')' MODEL job [';'] end
//! job       := [A-Za-z0-9_-]{1,128}                    -- the training job's id
//! ```
//!
//! Keywords, function names and party qualifiers are case-insensitive; column names are
//! case-sensitive. Whitespace (including newlines) separates tokens freely.

use winnow::ascii::{Caseless, digit0, digit1, multispace0};
use winnow::combinator::{alt, cut_err, eof, not, opt, peek};
use winnow::error::{ContextError, ErrMode, StrContext, StrContextValue};
use winnow::prelude::*;
use winnow::stream::{LocatingSlice, Location, Stream};
use winnow::token::{one_of, take_while};

use super::{
    AggFunc, CmpOp, ColumnRef, Cond, Query, Scoring, SelectItem, Side, Statement, Training,
};

/// Why a query text does not parse: where (byte offset, 1-based line and column) and what
/// was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    /// Byte offset into the query text.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What the grammar expected at that point (e.g. "`(`", "a column (buyer.NAME or
    /// provider.NAME)").
    pub expected: String,
    /// What was there instead: the next few characters, or "end of input".
    pub found: String,
}

type In<'a> = LocatingSlice<&'a str>;
type PResult<T> = ModalResult<T>;

/// Parses a query text into its syntax tree (no check of columns or policy: see
/// [`super::plan`]).
///
/// # Errors
/// [`ParseError`] at the first position the grammar cannot continue from.
pub fn parse(text: &str) -> Result<Query, ParseError> {
    query
        .parse(LocatingSlice::new(text))
        .map_err(|e| to_error(text, e.offset(), e.inner()))
}

/// Parses a statement: a query (`SELECT …`, as [`parse`]), a model training (`TRAIN …`) or a
/// scoring with a shared model (`SCORE …`; see the grammar above).
///
/// # Errors
/// [`ParseError`] at the first position the grammar cannot continue from.
pub fn parse_statement(text: &str) -> Result<Statement, ParseError> {
    statement
        .parse(LocatingSlice::new(text))
        .map_err(|e| to_error(text, e.offset(), e.inner()))
}

fn statement(i: &mut In<'_>) -> PResult<Statement> {
    ws.parse_next(i)?;
    if opt(kw("TRAIN")).parse_next(i)?.is_some() {
        return cut_err(train).map(Statement::Train).parse_next(i);
    }
    if opt(kw("SCORE")).parse_next(i)?.is_some() {
        return cut_err(score).map(Statement::Score).parse_next(i);
    }
    // Past `SELECT`, an error is the query's own: `TRAIN` or `SCORE` are expected only in
    // place of it.
    if opt(peek(kw("SELECT"))).parse_next(i)?.is_some() {
        return query.map(Statement::Query).parse_next(i);
    }
    query
        .context(lit("TRAIN"))
        .context(lit("SCORE"))
        .map(Statement::Query)
        .parse_next(i)
}

/// The rest of a `TRAIN` statement, after its keyword.
fn train(i: &mut In<'_>) -> PResult<Training> {
    kw("LOGISTIC_REGRESSION").parse_next(i)?;
    sym("(").parse_next(i)?;
    let features = list(column).parse_next(i)?;
    sym(")").parse_next(i)?;
    kw("LABEL").parse_next(i)?;
    let label = column.parse_next(i)?;
    let mut t = Training {
        features,
        label,
        epochs: None,
        learning_rate: None,
        l2: None,
        batch_rows: None,
    };
    loop {
        let before = i.checkpoint();
        let option = opt(alt((
            word("EPOCHS").value(0u8),
            word("LEARNING_RATE").value(1u8),
            word("L2").value(2u8),
            word("BATCH").value(3u8),
        )))
        .parse_next(i)?;
        let Some(option) = option else { break };
        let repeated = match option {
            0 => t.epochs.replace(cut_err(integer).parse_next(i)?).is_some(),
            1 => t
                .learning_rate
                .replace(cut_err(number).parse_next(i)?)
                .is_some(),
            2 => t.l2.replace(cut_err(number).parse_next(i)?).is_some(),
            _ => t
                .batch_rows
                .replace(cut_err(integer).parse_next(i)?)
                .is_some(),
        };
        if repeated {
            // The error points at the repeated option.
            i.reset(&before);
            return cut_err(winnow::combinator::fail.context(desc(
                "each option (EPOCHS, LEARNING_RATE, L2, BATCH) at most once",
            )))
            .parse_next(i);
        }
    }
    opt(sym(";")).parse_next(i)?;
    cut_err(eof.context(desc(
        "EPOCHS, LEARNING_RATE, L2, BATCH or the end of the statement",
    )))
    .parse_next(i)?;
    Ok(t)
}

/// The longest job id a `SCORE` statement may name.
const JOB_ID_MAX: usize = 128;

/// The rest of a `SCORE` statement, after its keyword.
fn score(i: &mut In<'_>) -> PResult<Scoring> {
    kw("LOGISTIC_REGRESSION").parse_next(i)?;
    sym("(").parse_next(i)?;
    let features = list(column).parse_next(i)?;
    sym(")").parse_next(i)?;
    kw("MODEL").parse_next(i)?;
    let model_offset = i.current_token_start();
    let before = i.checkpoint();
    let model_job = take_while(1.., |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
    .context(desc("the id of the job that trained the model (job-…)"))
    .parse_next(i)?;
    if model_job.len() > JOB_ID_MAX {
        // The error points at the id.
        i.reset(&before);
        return cut_err(
            winnow::combinator::fail.context(desc("a job id of at most 128 characters (job-…)")),
        )
        .parse_next(i);
    }
    ws.parse_next(i)?;
    opt(sym(";")).parse_next(i)?;
    eof.context(desc("the end of the statement"))
        .parse_next(i)?;
    Ok(Scoring {
        features,
        model_job: model_job.to_string(),
        model_offset,
    })
}

fn integer(i: &mut In<'_>) -> PResult<u64> {
    let v = digit1
        .verify_map(|s: &str| s.parse::<u64>().ok())
        .context(desc("a whole number"))
        .parse_next(i)?;
    ws.parse_next(i)?;
    Ok(v)
}

fn to_error(text: &str, offset: usize, inner: &ContextError) -> ParseError {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let mut expected: Vec<String> = Vec::new();
    for c in inner.context() {
        if let StrContext::Expected(v) = c {
            let s = v.to_string();
            if !expected.contains(&s) {
                expected.push(s);
            }
        }
    }
    let rest = text.get(offset..).unwrap_or_default();
    let found = match rest.split_whitespace().next() {
        None => "end of input".to_string(),
        Some(tok) => format!("`{}`", tok.chars().take(16).collect::<String>()),
    };
    ParseError {
        offset,
        line,
        column,
        expected: if expected.is_empty() {
            "a valid query".to_string()
        } else {
            expected.join(" or ")
        },
        found,
    }
}

fn desc(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::Description(what))
}

fn lit(what: &'static str) -> StrContext {
    StrContext::Expected(StrContextValue::StringLiteral(what))
}

fn ws(i: &mut In<'_>) -> PResult<()> {
    multispace0.void().parse_next(i)
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A keyword (case-insensitive, not followed by an identifier character), then whitespace.
fn kw<'a>(word: &'static str) -> impl Parser<In<'a>, (), ErrMode<ContextError>> {
    move |i: &mut In<'a>| {
        (Caseless(word), not(one_of(ident_char)), ws)
            .void()
            .context(lit(word))
            .parse_next(i)
    }
}

/// A keyword as [`kw`] does, without naming itself in errors (for alternatives whose caller
/// says what is expected).
fn word<'a>(word: &'static str) -> impl Parser<In<'a>, (), ErrMode<ContextError>> {
    move |i: &mut In<'a>| {
        (Caseless(word), not(one_of(ident_char)), ws)
            .void()
            .parse_next(i)
    }
}

/// A punctuation token, then whitespace.
fn sym<'a>(s: &'static str) -> impl Parser<In<'a>, (), ErrMode<ContextError>> {
    move |i: &mut In<'a>| (s, ws).void().context(lit(s)).parse_next(i)
}

fn query(i: &mut In<'_>) -> PResult<Query> {
    ws.parse_next(i)?;
    kw("SELECT").parse_next(i)?;
    let items = cut_err(list(item)).parse_next(i)?;
    let mut next = "`,`, `WHERE`, `GROUP BY` or the end of the query";
    let filter = match opt(kw("WHERE")).parse_next(i)? {
        Some(()) => {
            next = "`AND`, `OR`, `GROUP BY` or the end of the query";
            Some(cut_err(cond).parse_next(i)?)
        }
        None => None,
    };
    let group_by = match opt(kw("GROUP")).parse_next(i)? {
        Some(()) => {
            next = "the end of the query";
            cut_err(kw("BY")).parse_next(i)?;
            Some(cut_err(column).parse_next(i)?)
        }
        None => None,
    };
    opt(sym(";")).parse_next(i)?;
    cut_err(eof.context(desc(next))).parse_next(i)?;
    Ok(Query {
        items,
        filter,
        group_by,
    })
}

/// One or more `p` separated by commas; after a comma, `p` is required (so the error is at
/// the element, not at the comma).
fn list<'a, T>(
    mut p: impl Parser<In<'a>, T, ErrMode<ContextError>>,
) -> impl Parser<In<'a>, Vec<T>, ErrMode<ContextError>> {
    move |i: &mut In<'a>| {
        let mut out = vec![p.parse_next(i)?];
        while opt(sym(",")).parse_next(i)?.is_some() {
            out.push(cut_err(p.by_ref()).parse_next(i)?);
        }
        Ok(out)
    }
}

fn item(i: &mut In<'_>) -> PResult<SelectItem> {
    let start = i.current_token_start();
    alt((
        (kw("COUNT"), cut_err((sym("("), sym("*"), sym(")"))))
            .map(move |_| SelectItem::Count { offset: start }),
        (agg_func, cut_err((sym("("), column, sym(")"))))
            .map(|(func, (_, column, _))| SelectItem::Agg { func, column }),
        histogram,
        column.map(SelectItem::Column),
        winnow::combinator::fail.context(desc(
            "an aggregate (count(*), sum, mean, var, min, max, histogram) or a column",
        )),
    ))
    .parse_next(i)
}

fn agg_func(i: &mut In<'_>) -> PResult<AggFunc> {
    alt((
        word("SUM").value(AggFunc::Sum),
        word("MEAN").value(AggFunc::Mean),
        word("AVG").value(AggFunc::Mean),
        word("VARIANCE").value(AggFunc::Var),
        word("VAR").value(AggFunc::Var),
        word("MIN").value(AggFunc::Min),
        word("MAX").value(AggFunc::Max),
    ))
    .parse_next(i)
}

fn histogram(i: &mut In<'_>) -> PResult<SelectItem> {
    kw("HISTOGRAM").parse_next(i)?;
    cut_err(sym("(")).parse_next(i)?;
    let column = cut_err(column).parse_next(i)?;
    cut_err(sym(",")).parse_next(i)?;
    let edges_at = i.current_token_start();
    cut_err(sym("[")).parse_next(i)?;
    let edges = cut_err(list(number)).parse_next(i)?;
    cut_err(sym("]")).parse_next(i)?;
    cut_err(sym(")")).parse_next(i)?;
    Ok(SelectItem::Histogram {
        column,
        edges,
        edges_offset: edges_at,
    })
}

fn column(i: &mut In<'_>) -> PResult<ColumnRef> {
    let offset = i.current_token_start();
    let side = alt((
        word("BUYER").value(Side::Buyer),
        word("PROVIDER").value(Side::Provider),
    ))
    .context(desc("a column (buyer.NAME or provider.NAME)"))
    .parse_next(i)?;
    cut_err(sym(".")).parse_next(i)?;
    let name = cut_err(
        (
            one_of(|c: char| c.is_ascii_alphabetic() || c == '_'),
            take_while(0.., ident_char),
        )
            .take()
            .context(desc("a column name")),
    )
    .parse_next(i)?;
    ws.parse_next(i)?;
    Ok(ColumnRef {
        side,
        name: name.to_string(),
        offset,
    })
}

fn cond(i: &mut In<'_>) -> PResult<Cond> {
    let mut acc = conj.parse_next(i)?;
    while opt(kw("OR")).parse_next(i)?.is_some() {
        let rhs = cut_err(conj).parse_next(i)?;
        acc = Cond::Or(Box::new(acc), Box::new(rhs));
    }
    Ok(acc)
}

fn conj(i: &mut In<'_>) -> PResult<Cond> {
    let mut acc = neg.parse_next(i)?;
    while opt(kw("AND")).parse_next(i)?.is_some() {
        let rhs = cut_err(neg).parse_next(i)?;
        acc = Cond::And(Box::new(acc), Box::new(rhs));
    }
    Ok(acc)
}

fn neg(i: &mut In<'_>) -> PResult<Cond> {
    if opt(kw("NOT")).parse_next(i)?.is_some() {
        return Ok(Cond::Not(Box::new(cut_err(neg).parse_next(i)?)));
    }
    if opt(sym("(")).parse_next(i)?.is_some() {
        let c = cut_err(cond).parse_next(i)?;
        cut_err(sym(")")).parse_next(i)?;
        return Ok(c);
    }
    peek(alt((word("BUYER"), word("PROVIDER"))))
        .context(desc("a condition (buyer.NAME op number), `NOT` or `(`"))
        .parse_next(i)?;
    let column = cut_err(column).parse_next(i)?;
    let op = cut_err(cmp_op).parse_next(i)?;
    let value = cut_err(number).parse_next(i)?;
    Ok(Cond::Cmp { column, op, value })
}

fn cmp_op(i: &mut In<'_>) -> PResult<CmpOp> {
    let op = alt((
        "<=".value(CmpOp::Le),
        ">=".value(CmpOp::Ge),
        "!=".value(CmpOp::Ne),
        "<>".value(CmpOp::Ne),
        "<".value(CmpOp::Lt),
        ">".value(CmpOp::Gt),
        "=".value(CmpOp::Eq),
    ))
    .context(desc("a comparison (<, <=, >, >=, =, !=)"))
    .parse_next(i)?;
    ws.parse_next(i)?;
    Ok(op)
}

fn number(i: &mut In<'_>) -> PResult<f64> {
    let v = (
        opt(one_of(['+', '-'])),
        digit1,
        opt(('.', digit0)),
        opt((one_of(['e', 'E']), opt(one_of(['+', '-'])), digit1)),
    )
        .take()
        .verify_map(|s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite()))
        .context(desc("a finite number"))
        .parse_next(i)?;
    ws.parse_next(i)?;
    Ok(v)
}
