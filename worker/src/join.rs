//! Joins: a PSI with the provider's payload columns (issue "PSI for real workloads", item 1;
//! the `psi_payload` scene, and the `tee` scene's joins, `crate::tee`). What the buyer's worker
//! writes, whichever engine matched the keys: its own key and carried columns (original
//! values, its file order, its duplicate keys each appearing), then for a left join the
//! `matched` flag ([`tessera_core::JOIN_MATCHED_COLUMN`]), then the payload columns —
//! inner: the matched rows; left: every row, payload empty where unmatched; difference: the
//! unmatched rows, no payload. A key the provider repeats delivers its first row's values.
//!
//! A `psi_payload` task runs `tessera_psi`'s PSI with payload (rr22), bucketed as a plain PSI
//! task is (`crate::exec::run_psi_bucketed`: streamed, spilled past `--bucket-rows`, in bounded
//! memory): the provider's worker reads its keys and the join's payload columns (only those:
//! the signed `JoinSpec`, which the worker checked against the licence's `payloadColumns`,
//! `crate::grant`) and stages each row's values as its payload ([`encode_values`]); the buyer's
//! worker receives the payloads of its common keys bucket by bucket and writes the table from
//! the merged parts ([`write_bucketed_join`]; for a left or difference join, merged by ordinal
//! with its every row, which its staging also wrote in file order). What each party learns: `tessera_psi::rr22`, "PSI
//! with payload" — the buyer, which of its keys are common and the payload columns of those
//! keys (and the longest payload's length); the provider, the buyer's distinct set size.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_core::table::{KeySpec, TableError, try_write_result_csv};
use tessera_core::{JOIN_MATCHED_COLUMN, JoinKind, TaskRole, TaskSpec};

use crate::exec::{DeliverySink, ExecEnv, TaskError, TaskOutcome, dataset_path, fresh_result_path};

/// Encodes one row's payload column values: each as `u32` (big-endian) length and UTF-8 bytes.
pub(crate) fn encode_values(values: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.iter().map(|v| 4 + v.len()).sum());
    for v in values {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Parses [`encode_values`]'s bytes into exactly `columns` values.
///
/// # Errors
/// A peer error for truncated bytes, trailing bytes, or a value that is not UTF-8.
pub(crate) fn decode_values(bytes: &[u8], columns: usize) -> Result<Vec<String>, TaskError> {
    let bad = |m: &str| TaskError::Peer(format!("a payload from the provider: {m}"));
    let mut rest = bytes;
    let mut out = Vec::with_capacity(columns);
    for _ in 0..columns {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated"))?;
        let n = u32::from_be_bytes(*len) as usize;
        if tail.len() < n {
            return Err(bad("truncated"));
        }
        let (v, tail) = tail.split_at(n);
        out.push(String::from_utf8(v.to_vec()).map_err(|_| bad("a value is not UTF-8"))?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

/// Runs a `psi_payload` task to completion (see the module docs).
pub(crate) async fn run_psi_payload(
    env: &ExecEnv,
    spec: &TaskSpec,
    progress: Arc<dyn tessera_psi::Progress>,
    delivery: &dyn DeliverySink,
) -> Result<TaskOutcome, TaskError> {
    let Some(join) = &spec.join else {
        return Err(TaskError::Ticket(
            "a psi_payload task without its join".into(),
        ));
    };
    if join.kind == JoinKind::Difference && !join.payload_columns.is_empty() {
        return Err(TaskError::Ticket(
            "a difference join with payload columns".into(),
        ));
    }
    if spec.protocol != tessera_core::PsiProtocol::Rr22 {
        return Err(TaskError::Ticket(format!(
            "a psi_payload task runs rr22, not {}",
            spec.protocol
        )));
    }
    let key_spec = KeySpec {
        columns: spec.key_columns.clone(),
        case: spec.key_case,
        unicode: spec.unicode_form,
        empty: spec.empty_keys,
    };
    let (keep, out_path): (Vec<String>, Option<PathBuf>) = match spec.role {
        TaskRole::Sender => (join.payload_columns.clone(), None),
        TaskRole::Receiver => (
            spec.key_columns
                .iter()
                .chain(&spec.carry_columns)
                .cloned()
                .collect(),
            Some(fresh_result_path(&env.output_dir, &spec.output)?),
        ),
    };
    let path = dataset_path(&env.dataset_dir, &spec.dataset_location)?;
    // Bucketed as a plain PSI is (`crate::exec::run_psi_bucketed`): the provider's rows carry
    // their payload, the buyer's its kept values (and, for a left or difference join, every
    // row goes to a file of its own too).
    crate::exec::run_psi_bucketed(
        env, spec, path, key_spec, out_path, keep, progress, delivery,
    )
    .await
}

/// The buyer's result of a bucketed join: its matched rows (parts, in file order) with their
/// payloads, and for a left or difference join its every row from `all_rows` (written while
/// staging) merged with them by ordinal.
///
/// # Errors
/// A peer error for a payload that does not decode to the join's columns; an internal error
/// for a file that cannot be read or written; an input error when the output name is taken.
pub(crate) async fn write_bucketed_join(
    spec: &TaskSpec,
    join: &tessera_core::JoinSpec,
    mut outcome: TaskOutcome,
    out: tessera_psi::bucket::BucketedReceiverOutput,
    out_path: PathBuf,
    own: Vec<String>,
    all_rows: PathBuf,
) -> Result<TaskOutcome, TaskError> {
    let with_payload = join.kind != JoinKind::Difference;
    let width = if with_payload {
        join.payload_columns.len()
    } else {
        0
    };
    let mut header = own.clone();
    if join.kind == JoinKind::Left {
        header.push(JOIN_MATCHED_COLUMN.to_string());
    }
    if with_payload {
        header.extend(join.payload_columns.iter().cloned());
    }
    let kind = join.kind;
    let parts = out.parts;
    let written = tokio::task::spawn_blocking(move || {
        let failure: std::cell::RefCell<Option<TaskError>> = std::cell::RefCell::new(None);
        let fail = |e: TaskError| {
            let text = e.to_string();
            *failure.borrow_mut() = Some(e);
            TableError::Io(text)
        };
        let merged = parts
            .merged()
            .map_err(|e| TableError::Io(format!("reading the matched rows: {e}")))?;
        let mut merged = merged.peekable();
        let decode_own = |bytes: &[u8]| {
            decode_values(bytes, own.len())
                .map_err(|_| TaskError::Internal("a row's kept values are damaged".into()))
        };
        let written = match kind {
            JoinKind::Inner => {
                let rows = merged.map(|m| {
                    let m =
                        m.map_err(|e| TableError::Io(format!("reading the matched rows: {e}")))?;
                    let mut row = decode_own(&m.extra).map_err(&fail)?;
                    row.extend(decode_values(&m.payload, width).map_err(&fail)?);
                    Ok(row)
                });
                try_write_result_csv(&out_path, &header, rows)
            }
            JoinKind::Left | JoinKind::Difference => {
                let f = std::fs::File::open(&all_rows)
                    .map_err(|e| TableError::Io(format!("reading the rows: {e}")))?;
                let mut r = std::io::BufReader::new(f);
                let mut ordinal = 0u64;
                let rows = std::iter::from_fn(|| {
                    use std::io::Read;
                    loop {
                        let mut len = [0u8; 4];
                        match r.read_exact(&mut len) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                return None;
                            }
                            Err(e) => {
                                return Some(Err(TableError::Io(format!("reading the rows: {e}"))));
                            }
                        }
                        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
                        if let Err(e) = r.read_exact(&mut bytes) {
                            return Some(Err(TableError::Io(format!("reading the rows: {e}"))));
                        }
                        let i = ordinal;
                        ordinal += 1;
                        let hit = match merged.next_if(|m| m.as_ref().is_ok_and(|m| m.ordinal == i))
                        {
                            Some(Ok(m)) => Some(m),
                            Some(Err(e)) => {
                                return Some(Err(TableError::Io(format!(
                                    "reading the matched rows: {e}"
                                ))));
                            }
                            None => None,
                        };
                        let values = match decode_own(&bytes) {
                            Ok(v) => v,
                            Err(e) => return Some(Err(fail(e))),
                        };
                        match (kind, hit) {
                            (JoinKind::Left, hit) => {
                                let mut row = values;
                                row.push(hit.is_some().to_string());
                                match hit {
                                    Some(m) => match decode_values(&m.payload, width) {
                                        Ok(p) => row.extend(p),
                                        Err(e) => return Some(Err(fail(e))),
                                    },
                                    None => row.extend(std::iter::repeat_n(String::new(), width)),
                                }
                                return Some(Ok(row));
                            }
                            (_, None) => return Some(Ok(values)),
                            // A matched row of a difference: not written.
                            (_, Some(_)) => {}
                        }
                    }
                });
                try_write_result_csv(&out_path, &header, rows)
            }
        };
        match (written, failure.into_inner()) {
            (Err(_), Some(e)) => Err(WriteError::Task(e)),
            (Err(e), None) => Err(WriteError::Table(e)),
            (Ok(w), _) => Ok(w),
        }
    })
    .await
    .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
    .map_err(|e| match e {
        WriteError::Task(e) => e,
        WriteError::Table(e) => crate::exec::result_write_error(e),
    })?;
    outcome.result_size = Some(out.intersection_size);
    outcome.result_file = Some(written);
    outcome.result_location = spec.output.clone();
    Ok(outcome)
}

impl From<TableError> for WriteError {
    fn from(e: TableError) -> Self {
        WriteError::Table(e)
    }
}

/// Why a join's result could not be written.
enum WriteError {
    /// A row failed for a reason of its own (a provider's payload that does not decode).
    Task(TaskError),
    /// The file.
    Table(TableError),
}

/// A join's result table as the buyer writes it: header, rows, and the number of distinct
/// common keys (the job's result size).
pub(crate) struct JoinTable {
    pub(crate) header: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
    pub(crate) common: u64,
}

/// The buyer's result of a join: its key and carried columns (`own`, original values), then
/// for a left join the `matched` flag, then the payload columns.
///
/// # Errors
/// A peer error when the enclave's answer does not fit the buyer's rows (an index out of
/// range or out of order, payload rows of the wrong count or width).
pub(crate) fn join_table(
    join: &tessera_core::JoinSpec,
    own: &[String],
    input: &tessera_core::table::KeyedInput,
    matched: &[u64],
    payload: Vec<Vec<String>>,
) -> Result<JoinTable, TaskError> {
    let bad = |m: &str| TaskError::Peer(format!("the enclave's join result: {m}"));
    let n = input.keys.len() as u64;
    if matched.windows(2).any(|w| w[0] >= w[1]) || matched.last().is_some_and(|&i| i >= n) {
        return Err(bad("row indices out of order or range"));
    }
    let with_payload = join.kind != JoinKind::Difference;
    if with_payload
        && (payload.len() != matched.len()
            || payload
                .iter()
                .any(|r| r.len() != join.payload_columns.len()))
    {
        return Err(bad("payload rows of the wrong count or width"));
    }
    if !with_payload && !payload.is_empty() {
        return Err(bad("provider values with a difference"));
    }
    let common = matched
        .iter()
        .map(|&i| input.keys[i as usize].as_slice())
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let mut header = own.to_vec();
    if join.kind == JoinKind::Left {
        header.push(JOIN_MATCHED_COLUMN.to_string());
    }
    if with_payload {
        header.extend(join.payload_columns.iter().cloned());
    }
    let mut payload = payload.into_iter();
    let mut next = matched.iter().peekable();
    let mut rows = Vec::new();
    for (i, values) in input.kept.iter().enumerate() {
        let hit = next.next_if(|&&m| m == i as u64).is_some();
        let extra = if hit && with_payload {
            payload.next().unwrap_or_default()
        } else {
            Vec::new()
        };
        match (join.kind, hit) {
            (JoinKind::Inner, true) => rows.push([values.clone(), extra].concat()),
            (JoinKind::Left, _) => {
                let mut row = values.clone();
                row.push(hit.to_string());
                if hit {
                    row.extend(extra);
                } else {
                    row.extend(std::iter::repeat_n(
                        String::new(),
                        join.payload_columns.len(),
                    ));
                }
                rows.push(row);
            }
            (JoinKind::Difference, false) => rows.push(values.clone()),
            _ => {}
        }
    }
    Ok(JoinTable {
        header,
        rows,
        common,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::JoinSpec;

    #[test]
    fn payload_values_round_trip_and_hostile_bytes_are_errors() {
        let values = vec!["".to_string(), "ä,\"x\"".into(), "1.5".into()];
        let b = encode_values(&values);
        assert_eq!(decode_values(&b, 3).expect("decode"), values);
        assert_eq!(decode_values(&[], 0).expect("none"), Vec::<String>::new());
        for n in 0..b.len() {
            assert!(decode_values(&b[..n], 3).is_err(), "prefix {n}");
        }
        assert!(decode_values(&b, 2).is_err(), "trailing");
        assert!(decode_values(&[0, 0, 0, 1, 0xff], 1).is_err(), "not UTF-8");
        assert!(
            decode_values(&[0xff, 0xff, 0xff, 0xff], 1).is_err(),
            "length lie"
        );
    }

    /// A hostile answer (indices out of order or range, payload of the wrong shape, payload
    /// with a difference) is a peer error, never a panic.
    #[test]
    fn a_bad_join_answer_is_a_peer_error() {
        let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        let input = tessera_core::table::KeyedInput {
            keys,
            rows: 3,
            empty_keys: 0,
            kept: vec![vec!["a".into()], vec!["b".into()], vec!["c".into()]],
        };
        let own = vec!["id".to_string()];
        let inner = JoinSpec {
            kind: JoinKind::Inner,
            payload_columns: vec!["v".into()],
        };
        let diff = JoinSpec {
            kind: JoinKind::Difference,
            payload_columns: vec![],
        };
        let one = |v: &str| vec![v.to_string()];
        for (join, matched, payload) in [
            (&inner, vec![1, 0], vec![one("x"), one("y")]),
            (&inner, vec![1, 1], vec![one("x"), one("y")]),
            (&inner, vec![3], vec![one("x")]),
            (&inner, vec![u64::MAX], vec![one("x")]),
            (&inner, vec![0, 1], vec![one("x")]),
            (&inner, vec![0], vec![vec!["x".into(), "y".into()]]),
            (&diff, vec![0], vec![one("x")]),
        ] {
            assert!(
                matches!(
                    join_table(join, &own, &input, &matched, payload),
                    Err(TaskError::Peer(_))
                ),
                "{matched:?}"
            );
        }
    }
}
