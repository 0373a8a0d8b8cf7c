//! Printing for the client commands: money in yuan, listings as text tables or CSV.
//!
//! * CSV goes through the `csv` crate (RFC 4180: a field is quoted when it holds a comma, a
//!   quote or a line break; quotes are doubled; lines end in `\n`).
//! * Tables go through `comfy-table`. On a terminal they have box-drawing borders; anywhere
//!   else (a pipe, a file) they are plain aligned columns with no colour, border or escape
//!   codes and no trailing spaces.
//! * Listings write through [`Out`], which reports a closed pipe (`tessera ledger transfers |
//!   head`) as an error that `main` ends on quietly (see [`is_broken_pipe`]).

use std::io::{self, IsTerminal, Write};

use comfy_table::{CellAlignment, Table, presets};

/// Formats micro-units as yuan with six decimals, exactly (`1_500_000` → `1.500000`).
pub fn fmt_micros(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// How a text table is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStyle {
    /// Aligned columns only: no borders, no escape codes (pipes, files, tests).
    Plain,
    /// Box-drawing borders (a terminal).
    Boxed,
}

impl TableStyle {
    /// [`TableStyle::Boxed`] when stdout is a terminal, else [`TableStyle::Plain`].
    pub fn for_stdout() -> Self {
        if io::stdout().is_terminal() {
            Self::Boxed
        } else {
            Self::Plain
        }
    }
}

/// One listing: a header and rows of cells, printed as a table or as CSV.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Column names.
    pub header: Vec<&'static str>,
    /// Indices of the columns aligned right in a table (amounts, counts).
    pub right: Vec<usize>,
    /// The rows, each as long as the header.
    pub rows: Vec<Vec<String>>,
}

impl Listing {
    /// A listing with these columns and no rows yet.
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            ..Self::default()
        }
    }

    /// Aligns these columns right in a table.
    pub fn align_right(mut self, columns: &[usize]) -> Self {
        self.right = columns.to_vec();
        self
    }

    /// Adds one row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The listing as a text table (no trailing newline, no trailing spaces).
    pub fn table(&self, style: TableStyle) -> String {
        let mut t = Table::new();
        t.load_preset(match style {
            TableStyle::Plain => presets::NOTHING,
            TableStyle::Boxed => presets::UTF8_FULL_CONDENSED,
        });
        t.set_header(self.header.clone());
        for r in &self.rows {
            t.add_row(r.clone());
        }
        if style == TableStyle::Plain {
            // Columns two spaces apart, the first at the margin.
            for c in t.column_iter_mut() {
                c.set_padding((0, 2));
            }
        }
        for &i in &self.right {
            if let Some(c) = t.column_mut(i) {
                c.set_cell_alignment(CellAlignment::Right);
            }
        }
        t.trim_fmt()
    }

    /// Writes the listing as CSV (header first).
    ///
    /// Errors: the writer fails (a closed pipe is `io::ErrorKind::BrokenPipe`).
    pub fn write_csv(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(out);
        w.write_record(&self.header).map_err(csv_io)?;
        for r in &self.rows {
            w.write_record(r).map_err(csv_io)?;
        }
        w.flush()
    }
}

/// The I/O error inside a CSV writer's error (the writer only fails on I/O).
fn csv_io(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// Marks a write to stdout that failed because the reader went away (`| head`): only such an
/// error ends a command quietly ([`is_broken_pipe`]); a closed network connection is an error
/// like any other.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// `e`, marked as the reader's going away when it is a closed pipe on stdout.
fn on_stdout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Where command output goes: stdout, buffered, with errors returned (never a
/// panic on a closed pipe).
#[derive(Debug)]
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
}

impl Out {
    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            inner: io::BufWriter::new(io::stdout()),
        }
    }

    /// Prints a listing: CSV when `csv`, else a table styled for stdout. An empty listing
    /// still prints its header (and, as a table, says it is empty), so "nothing" is visible.
    ///
    /// Errors: stdout fails (a closed pipe is `io::ErrorKind::BrokenPipe`).
    pub fn listing(&mut self, listing: &Listing, csv: bool) -> io::Result<()> {
        let mut write = || {
            if csv {
                listing.write_csv(&mut self.inner)?;
            } else {
                writeln!(self.inner, "{}", listing.table(TableStyle::for_stdout()))?;
                if listing.rows.is_empty() {
                    writeln!(self.inner, "(none)")?;
                }
            }
            self.inner.flush()
        };
        write().map_err(on_stdout)
    }

    /// Prints one line.
    ///
    /// Errors: stdout fails.
    pub fn line(&mut self, text: impl std::fmt::Display) -> io::Result<()> {
        writeln!(self.inner, "{text}")
            .and_then(|()| self.inner.flush())
            .map_err(on_stdout)
    }
}

/// Whether an error (anywhere in its chain) is a write to stdout after its reader went away
/// (`| head`), which is a normal end for a listing, not a failure. A broken pipe anywhere else
/// (the operator's connection) is not.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|io| {
            io.kind() == io::ErrorKind::BrokenPipe
                && io.get_ref().is_some_and(|inner| inner.is::<StdoutClosed>())
        })
    })
}

/// A closed-pipe error as [`Out`] reports it, for other writers to stdout.
pub fn stdout_error(e: io::Error) -> io::Error {
    on_stdout(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Listing {
        let mut l = Listing::new(vec!["account", "balance", "memo"]).align_right(&[1]);
        l.push(vec![
            "customer:alice:cash".into(),
            fmt_micros(95_000_000),
            "top-up".into(),
        ]);
        l.push(vec![
            "provider:p:receivable".into(),
            fmt_micros(-4_500_000),
            "with, comma and \"quotes\"\nand a line break".into(),
        ]);
        l
    }

    #[test]
    fn micros_print_exactly() {
        assert_eq!(fmt_micros(0), "0.000000");
        assert_eq!(fmt_micros(1_500_000), "1.500000");
        assert_eq!(fmt_micros(-1), "-0.000001");
        assert_eq!(fmt_micros(i64::MIN), "-9223372036854.775808");
    }

    #[test]
    fn csv_quotes_only_what_rfc_4180_needs() {
        let mut out = Vec::new();
        sample().write_csv(&mut out).expect("csv");
        expect_test::expect![[r#"
            account,balance,memo
            customer:alice:cash,95.000000,top-up
            provider:p:receivable,-4.500000,"with, comma and ""quotes""
            and a line break"
        "#]]
        .assert_eq(&String::from_utf8(out).expect("utf-8"));
    }

    #[test]
    fn plain_tables_have_no_escape_codes_or_borders() {
        let text = sample().table(TableStyle::Plain);
        assert!(!text.contains('\u{1b}'));
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        // A broken pipe that is not stdout's (a network connection) is an error.
        let net = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_broken_pipe(&net));
        let e = anyhow::Error::from(on_stdout(io::Error::from(io::ErrorKind::BrokenPipe)))
            .context("printing transfers");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
