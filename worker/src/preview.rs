//! The `preview` scene: the provider's worker reads the rows and columns its signed task
//! names (`TaskSpec::preview`, decided at admission inside the licence's `viewRowsRange` /
//! `viewPageRange`, T/AI 123.12 table A.50) and sends them to the buyer's worker, which
//! checks them against its own copy of the same bounds and writes them as an RFC 4180 CSV
//! file in its output directory (never replacing a file).
//!
//! Wire (over the job's peer link, version 1): one header frame, the JSON object
//! `{"v": 1, "columns": [..], "rows": n}`, then row frames, each a JSON array of rows (each
//! row an array of strings, one per column), until `n` rows have come; then the receiver
//! answers `{"v": 1, "received": n}`, and the sender ends only on that answer (so that it
//! never closes the link before its last frame is through). Every frame is within the
//! link's bound; a row that alone would not fit fails the task as bad input.
//!
//! Delivery point: the sender reports the delivery (with the rows it read) before it sends
//! the header: the header already tells the buyer how many rows there are, and every frame
//! after it is content. A preview is counted and charged like any other run.
//!
//! What each side learns: the buyer, the rows and columns shown (and the column names); the
//! provider, that a preview of those bounds ran (it learns nothing of the buyer's data: the
//! buyer sends nothing).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tessera_core::table::{PreviewTable, TableError, WrittenFile, read_preview, write_result_csv};
use tessera_core::{Link, PreviewSpec};

use crate::exec::{DeliverySink, TaskError};

/// Wire version.
const VERSION: u32 = 1;

/// The most bytes of rows one preview carries (the JSON of its row frames): a preview is a
/// look at the data, and the buyer's worker holds it in memory before it writes it.
pub const PREVIEW_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Received {
    v: u32,
    received: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    v: u32,
    columns: Vec<String>,
    rows: u64,
}

fn peer(e: impl std::fmt::Display) -> TaskError {
    TaskError::Peer(e.to_string())
}

/// Reads the preview's rows of the dataset at `path` (blocking work off the runtime).
pub(crate) async fn read(
    path: std::path::PathBuf,
    spec: &PreviewSpec,
) -> Result<PreviewTable, TaskError> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || {
        read_preview(&path, &spec.columns, spec.first_row, spec.last_row)
    })
    .await
    .map_err(|e| TaskError::Internal(format!("reader task: {e}")))?
    .map_err(|e| TaskError::Input(e.to_string()))
}

/// The provider's side: records the delivery, then sends `table`. Returns the rows sent.
pub(crate) async fn send(
    link: &dyn Link,
    table: &PreviewTable,
    delivery: &dyn DeliverySink,
) -> Result<u64, TaskError> {
    let rows = table.rows.len() as u64;
    let bytes: usize = table
        .rows
        .iter()
        .flat_map(|r| r.iter().map(|v| v.len() + 3))
        .sum();
    if bytes > PREVIEW_BYTES_MAX {
        return Err(TaskError::Input(format!(
            "the preview's rows take about {bytes} bytes, more than a preview carries \
             ({PREVIEW_BYTES_MAX}); ask for fewer rows or columns"
        )));
    }
    if !delivery.delivered(rows).await {
        return Err(TaskError::Internal(
            "the operator did not record the delivery; nothing was sent".into(),
        ));
    }
    let header = serde_json::to_vec(&Header {
        v: VERSION,
        columns: table.columns.clone(),
        rows,
    })
    .map_err(|e| TaskError::Internal(format!("encoding the preview header: {e}")))?;
    link.send(Bytes::from(header)).await.map_err(peer)?;
    let max = link.frame_bytes_max();
    let mut frame: Vec<u8> = Vec::with_capacity(max.min(1 << 20));
    let mut in_frame = 0usize;
    for (i, row) in table.rows.iter().enumerate() {
        let encoded = serde_json::to_vec(row)
            .map_err(|e| TaskError::Internal(format!("encoding row: {e}")))?;
        // `[` + rows joined by `,` + `]`.
        if encoded.len() + 2 > max {
            return Err(TaskError::Input(format!(
                "row {} of the preview is {} bytes, more than a peer frame carries ({max})",
                i + 1,
                encoded.len()
            )));
        }
        if in_frame > 0 && frame.len() + encoded.len() + 2 > max {
            frame.push(b']');
            link.send(Bytes::from(std::mem::take(&mut frame)))
                .await
                .map_err(peer)?;
            in_frame = 0;
        }
        frame.push(if in_frame == 0 { b'[' } else { b',' });
        frame.extend_from_slice(&encoded);
        in_frame += 1;
    }
    if in_frame > 0 {
        frame.push(b']');
        link.send(Bytes::from(frame)).await.map_err(peer)?;
    }
    let answer = link.recv().await.map_err(peer)?;
    match serde_json::from_slice::<Received>(&answer) {
        Ok(r) if r.v == VERSION && r.received == rows => Ok(rows),
        Ok(r) => Err(peer(format!(
            "the buyer's worker says it received {} of {rows} rows",
            r.received
        ))),
        Err(e) => Err(peer(format!("malformed preview answer: {e}"))),
    }
}

/// The buyer's side: receives the rows, checks them against `spec` (no more rows than it
/// allows, exactly its columns when it names them, every row as wide as the header) and
/// writes them to `out` (never replacing a file).
pub(crate) async fn receive(
    link: &dyn Link,
    spec: &PreviewSpec,
    out: std::path::PathBuf,
) -> Result<(u64, WrittenFile), TaskError> {
    let first = link.recv().await.map_err(peer)?;
    let header: Header = serde_json::from_slice(&first)
        .map_err(|e| peer(format!("malformed preview header: {e}")))?;
    if header.v != VERSION {
        return Err(peer(format!(
            "preview wire version {} (this worker speaks {VERSION})",
            header.v
        )));
    }
    if header.rows > spec.rows_max() {
        return Err(peer(format!(
            "the provider announced {} rows; the signed task allows at most {}",
            header.rows,
            spec.rows_max()
        )));
    }
    if header.columns.is_empty()
        || header.columns.len() > tessera_core::table::PREVIEW_COLUMNS_MAX
        || (!spec.columns.is_empty() && header.columns != spec.columns)
    {
        return Err(peer(format!(
            "the provider sent columns {:?}; the signed task names {:?}",
            header.columns, spec.columns
        )));
    }
    let width = header.columns.len();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut received_bytes = 0usize;
    while (rows.len() as u64) < header.rows {
        let frame = link.recv().await.map_err(peer)?;
        received_bytes = received_bytes.saturating_add(frame.len());
        if received_bytes > PREVIEW_BYTES_MAX {
            return Err(peer(format!(
                "the provider sent more than the {PREVIEW_BYTES_MAX} bytes a preview carries"
            )));
        }
        let batch: Vec<Vec<String>> = serde_json::from_slice(&frame)
            .map_err(|e| peer(format!("malformed preview rows: {e}")))?;
        if batch.is_empty() {
            return Err(peer("an empty frame of preview rows"));
        }
        if rows.len() as u64 + batch.len() as u64 > header.rows {
            return Err(peer(format!(
                "the provider sent more than the {} rows it announced",
                header.rows
            )));
        }
        if let Some(bad) = batch.iter().find(|r| r.len() != width) {
            return Err(peer(format!(
                "a preview row has {} values for {width} columns",
                bad.len()
            )));
        }
        rows.extend(batch);
    }
    let n = rows.len() as u64;
    let answer = serde_json::to_vec(&Received {
        v: VERSION,
        received: n,
    })
    .map_err(|e| TaskError::Internal(format!("encoding the preview answer: {e}")))?;
    link.send(Bytes::from(answer)).await.map_err(peer)?;
    let columns = header.columns;
    let written =
        tokio::task::spawn_blocking(move || write_result_csv(&out, &columns, rows.iter()))
            .await
            .map_err(|e| TaskError::Internal(format!("writer task: {e}")))?
            .map_err(|e| match e {
                TableError::OutputExists { .. } => TaskError::Input(e.to_string()),
                e => TaskError::Internal(format!("writing the preview: {e}")),
            })?;
    Ok((n, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tessera_core::MemLink;

    struct Sink(AtomicBool, bool);

    #[async_trait::async_trait]
    impl DeliverySink for Sink {
        async fn delivered(&self, _rows_in: u64) -> bool {
            self.0.store(true, Ordering::SeqCst);
            self.1
        }
    }

    fn spec(first: u64, last: u64, columns: &[&str]) -> PreviewSpec {
        PreviewSpec {
            first_row: first,
            last_row: last,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn table(n: usize, width: usize) -> PreviewTable {
        PreviewTable {
            columns: (0..width).map(|c| format!("c{c}")).collect(),
            rows: (0..n)
                .map(|r| (0..width).map(|c| format!("v,{r}\"{c}")).collect())
                .collect(),
        }
    }

    #[tokio::test]
    async fn rows_cross_in_bounded_frames_and_are_written_as_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = table(500, 3);
        let (a, b) = MemLink::pair_with_limit(4096);
        let sink = Sink(AtomicBool::new(false), true);
        let out = dir.path().join("p.csv");
        let s = spec(1, 500, &[]);
        let (sent, got) = tokio::join!(send(&a, &t, &sink), receive(&b, &s, out.clone()));
        assert_eq!(sent.expect("send"), 500);
        let (n, written) = got.expect("receive");
        assert_eq!((n, written.rows), (500, 500));
        assert!(sink.0.load(Ordering::SeqCst));
        // The header, then rows in frames of at most 4,096 bytes.
        let stats = a.stats();
        assert!(stats.frames_sent > 1 + stats.bytes_sent / 4096, "{stats:?}");
        let mut r = csv::Reader::from_path(&out).expect("csv");
        let back: Vec<Vec<String>> = r
            .records()
            .map(|rec| rec.expect("record").iter().map(str::to_string).collect())
            .collect();
        assert_eq!(back, t.rows);
    }

    #[tokio::test]
    async fn a_provider_cannot_send_more_bytes_than_a_preview_carries() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Frames of up to 1 MiB each: enough of them pass the byte bound long before the
        // announced 10,000 rows are in.
        let (a, b) = MemLink::pair_with_limit(2 * 1024 * 1024);
        let row = serde_json::to_vec(&vec![vec!["x".repeat(1024 * 1024 - 16)]]).expect("row");
        let out = dir.path().join("big.csv");
        let s = spec(1, 10_000, &[]);
        let sender = async {
            a.send(Bytes::from(r#"{"v":1,"columns":["a"],"rows":10000}"#))
                .await
                .expect("header");
            for _ in 0..(PREVIEW_BYTES_MAX / row.len() + 2) {
                if a.send(Bytes::from(row.clone())).await.is_err() {
                    break;
                }
            }
            drop(a);
        };
        let (_, got) = tokio::join!(sender, receive(&b, &s, out.clone()));
        let e = got.expect_err("refused");
        assert!(e.to_string().contains("bytes a preview carries"), "{e}");
        assert!(!out.exists());
    }

    #[tokio::test]
    async fn nothing_is_sent_when_the_delivery_is_not_recorded() {
        let (a, b) = MemLink::pair();
        let sink = Sink(AtomicBool::new(false), false);
        assert!(send(&a, &table(3, 1), &sink).await.is_err());
        drop(a);
        assert!(b.recv().await.is_err(), "no frame left the sender");
    }

    #[tokio::test]
    async fn a_hostile_provider_cannot_exceed_the_signed_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(Vec<Bytes>, PreviewSpec)> = vec![
            // More rows announced than allowed.
            (
                vec![Bytes::from(r#"{"v":1,"columns":["a"],"rows":11}"#)],
                spec(1, 10, &[]),
            ),
            // Other columns than the signed ones.
            (
                vec![Bytes::from(r#"{"v":1,"columns":["secret"],"rows":1}"#)],
                spec(1, 10, &["a"]),
            ),
            // More rows sent than announced.
            (
                vec![
                    Bytes::from(r#"{"v":1,"columns":["a"],"rows":1}"#),
                    Bytes::from(r#"[["x"],["y"]]"#),
                ],
                spec(1, 10, &[]),
            ),
            // A row of the wrong width; garbage; a wrong version; an empty batch.
            (
                vec![
                    Bytes::from(r#"{"v":1,"columns":["a"],"rows":1}"#),
                    Bytes::from(r#"[["x","y"]]"#),
                ],
                spec(1, 10, &[]),
            ),
            (vec![Bytes::from_static(b"\xff\x00")], spec(1, 10, &[])),
            (
                vec![Bytes::from(r#"{"v":2,"columns":["a"],"rows":1}"#)],
                spec(1, 10, &[]),
            ),
            (
                vec![
                    Bytes::from(r#"{"v":1,"columns":["a"],"rows":1}"#),
                    Bytes::from("[]"),
                ],
                spec(1, 10, &[]),
            ),
            // The provider goes away half-way.
            (
                vec![Bytes::from(r#"{"v":1,"columns":["a"],"rows":5}"#)],
                spec(1, 10, &[]),
            ),
        ];
        for (i, (frames, s)) in cases.into_iter().enumerate() {
            let (a, b) = MemLink::pair();
            for f in frames {
                a.send(f).await.expect("send");
            }
            drop(a);
            let out = dir.path().join(format!("h{i}.csv"));
            let e = receive(&b, &s, out.clone()).await.expect_err("refused");
            assert!(matches!(e, TaskError::Peer(_)), "case {i}: {e:?}");
            assert!(!out.exists(), "case {i}: nothing written");
        }
    }
}
