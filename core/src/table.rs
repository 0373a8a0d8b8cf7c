//! Arrow table input and result output: reads the key columns of a dataset file into
//! normalised key byte strings (keeping, when asked, the original values of some columns of the
//! rows that take part), and writes a result table as an RFC 4180 CSV file that never replaces
//! an existing file.
//!
//! Supported inputs, chosen by file extension (case-insensitive):
//!
//! * `.csv` — comma separated, a header row is required. Every column is read as Utf8 (types
//!   are never inferred, so `"00123"` stays `"00123"`). Quoting follows RFC 4180; an empty
//!   field counts as null.
//! * `.parquet` / `.pq` — read with the `parquet` Arrow reader; key columns may be Utf8,
//!   LargeUtf8, Utf8View or any integer type (rendered as a decimal string), or a dictionary
//!   of one of those (a pandas categorical is `Dictionary(Int32, Utf8)`): its strings are read.
//!
//! Files are read in record batches of [`READ_BATCH_ROWS`] rows; only the needed columns are
//! decoded. Every key component is normalised ([`normalise`]): trimmed of (Unicode) whitespace,
//! brought to the [`UnicodeForm`] (NFC, NFKC or as is), then to the [`KeyCase`] (full case
//! folding, lower, upper or as is), then brought to the form and trimmed again (case mapping can
//! leave text unnormalised). Several key columns are joined, in the order given, with the unit
//! separator byte [`KEY_COLUMN_SEPARATOR`] (0x1F) — internally only, never in a result; a value
//! that itself contains that byte is rejected when more than one key column is used, so that
//! joined keys stay unambiguous.
//!
//! Empty keys: a row whose key has an empty component after normalisation (a null, an empty or
//! an all-whitespace cell in ANY key column) is not an identifier. With [`EmptyKeys::Skip`] (the
//! default) it takes no part and is counted in [`KeyedInput::empty_keys`]; with
//! [`EmptyKeys::Fail`] reading fails with [`TableError::EmptyKey`] at the first such row.
//!
//! Bounds: at most [`limits::DATASET_ROWS_MAX`] rows, keys of at most [`limits::KEY_BYTES_MAX`]
//! bytes, kept original values of at most [`KEPT_ROW_BYTES_MAX`] bytes per row, a CSV header of
//! at most [`CSV_HEADER_BYTES_MAX`] bytes and a CSV record of at most [`CSV_RECORD_BYTES_MAX`]
//! bytes (so a file without line breaks cannot make us buffer it whole). Bytes that violate the
//! format produce [`TableError::Malformed`] with the line (CSV) or row (Parquet) number where it
//! is known; nothing read from a file panics.
//!
//! Keys are dataset content and may be personal data: [`KeyedInput`]'s `Debug` output shows only
//! counts.

use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow_csv::reader::{Format, ReaderBuilder};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use icu_casemap::CaseMapper;
use icu_normalizer::ComposingNormalizerBorrowed;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::limits;

/// Byte joining the components of a multi-column key (ASCII unit separator).
pub const KEY_COLUMN_SEPARATOR: u8 = 0x1F;
/// Rows per record batch when reading a file.
pub const READ_BATCH_ROWS: usize = 1024;
/// Longest CSV header line accepted, in bytes.
pub const CSV_HEADER_BYTES_MAX: usize = 256 * 1024;
/// Longest CSV record (all fields of one row, key or not) accepted, in bytes.
pub const CSV_RECORD_BYTES_MAX: usize = 256 * 1024;
/// Largest total of the original values kept for one row ([`read_keys_keeping`]), in bytes.
pub const KEPT_ROW_BYTES_MAX: usize = 64 * 1024;
/// Size of the read buffer used for CSV input, in bytes.
const CSV_READ_BUFFER_BYTES: usize = 64 * 1024;
/// The UTF-8 byte order mark some tools put in front of a CSV header.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Declares a closed vocabulary with one lowercase text form per variant: `as_str`,
/// `Display`, `FromStr` (ASCII case ignored) and serde in that form.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $err:ident, $what:literal { $($(#[$vm:meta])* $v:ident => $t:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $t)] $v),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The lowercase name used by serde, `FromStr` and `Display`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $t),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        #[doc = concat!("A string that names no [`", stringify!($name), "`].")]
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("unknown {} {value:?}; expected one of: {}", $what, [$($t),+].join(", "))]
        pub struct $err {
            /// The rejected input.
            pub value: String,
        }

        impl FromStr for $name {
            type Err = $err;

            /// Accepts the lowercase names, ignoring ASCII case.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|c| c.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| $err { value: s.to_owned() })
            }
        }
    };
}

text_enum!(
    /// Case normalisation applied to every key component (after the [`UnicodeForm`]).
    ///
    /// `lower` and `upper` are Unicode's full lower/upper case mappings (`str::to_lowercase`,
    /// `str::to_uppercase`); they are not inverse of each other: `straße` lowers to itself but
    /// uppers to `STRASSE`. `fold` is Unicode full case folding (CaseFolding.txt, C+F), made
    /// for caseless matching: `straße`, `STRASSE` and `Strasse` all fold to `strasse`.
    KeyCase, ParseKeyCaseError, "key case" {
        /// Keep the case as it is in the file.
        #[default]
        Preserve => "preserve",
        /// Unicode full lower case.
        Lower => "lower",
        /// Unicode full upper case.
        Upper => "upper",
        /// Unicode full case folding (for caseless matching; the recommended caseless option).
        Fold => "fold",
    }
);

text_enum!(
    /// Unicode normalisation form applied to every key component (UAX #15).
    ///
    /// `nfc` makes canonically equivalent text equal (`é` precomposed U+00E9 and `e` + U+0301);
    /// `nfkc` also folds compatibility variants (full-width `Ａ` and `A`, the ligature `ﬁ` and
    /// `fi`, superscript `²` and `2`). `none` compares code points as they are.
    UnicodeForm, ParseUnicodeFormError, "unicode form" {
        /// No normalisation: code points as in the file.
        #[default]
        None => "none",
        /// Canonical composition (NFC).
        Nfc => "nfc",
        /// Compatibility composition (NFKC).
        Nfkc => "nfkc",
    }
);

text_enum!(
    /// What a row whose key is empty (after normalisation) does to a job.
    EmptyKeys, ParseEmptyKeysError, "empty-key rule" {
        /// The row takes no part; the rows left out are counted.
        #[default]
        Skip => "skip",
        /// Reading fails at the first such row.
        Fail => "fail",
    }
);

/// Which columns form the key, and how values are normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySpec {
    /// Key column names, in join order. Must not be empty.
    pub columns: Vec<String>,
    /// Case normalisation (default: preserve).
    #[serde(default)]
    pub case: KeyCase,
    /// Unicode normalisation form (default: none).
    #[serde(default)]
    pub unicode: UnicodeForm,
    /// What a row with an empty key does (default: skip).
    #[serde(default)]
    pub empty: EmptyKeys,
}

/// The keys read from one file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyedInput {
    /// One normalised key per row that takes part, in file order.
    pub keys: Vec<Vec<u8>>,
    /// Number of data rows read (`keys.len() + empty_keys`).
    pub rows: u64,
    /// Rows left out because their key is empty (see [`EmptyKeys`]).
    pub empty_keys: u64,
    /// When columns were asked to be kept ([`read_keys_keeping`]): for each key (same index),
    /// the original values of those columns, as in the file (not normalised; a null is `""`).
    /// Empty otherwise.
    pub kept: Vec<Vec<String>>,
}

impl fmt::Debug for KeyedInput {
    /// Shows counts only: keys are dataset content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedInput")
            .field("rows", &self.rows)
            .field("empty_keys", &self.empty_keys)
            .field("keys", &format_args!("<{} keys>", self.keys.len()))
            .field("kept", &format_args!("<{} rows>", self.kept.len()))
            .finish()
    }
}

/// Which bound a file exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableBound {
    /// More than [`limits::DATASET_ROWS_MAX`] data rows (read into memory).
    Rows,
    /// More than [`STREAMED_ROWS_MAX`] data rows (streamed).
    StreamedRows,
    /// A normalised key longer than [`limits::KEY_BYTES_MAX`] bytes.
    KeyBytes,
    /// A CSV header longer than [`CSV_HEADER_BYTES_MAX`] bytes.
    HeaderBytes,
    /// A CSV record longer than [`CSV_RECORD_BYTES_MAX`] bytes.
    RecordBytes,
    /// Kept original values of one row longer than [`KEPT_ROW_BYTES_MAX`] bytes.
    KeptBytes,
}

impl fmt::Display for TableBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, max) = match self {
            TableBound::Rows => ("rows", limits::DATASET_ROWS_MAX),
            TableBound::StreamedRows => ("rows", STREAMED_ROWS_MAX as usize),
            TableBound::KeyBytes => ("key bytes", limits::KEY_BYTES_MAX),
            TableBound::HeaderBytes => ("CSV header bytes", CSV_HEADER_BYTES_MAX),
            TableBound::RecordBytes => ("CSV record bytes", CSV_RECORD_BYTES_MAX),
            TableBound::KeptBytes => ("kept value bytes per row", KEPT_ROW_BYTES_MAX),
        };
        write!(f, "{what} (limit {max})")
    }
}

/// Why reading or writing a table failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The key specification names no column.
    #[error("no key columns given")]
    NoKeyColumns,
    /// The file does not exist.
    #[error("{path}: file not found")]
    NotFound {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The path exists but is not a regular file.
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The file extension is not one of `.csv`, `.parquet`, `.pq`.
    #[error(
        "{path}: unsupported file format (expected .csv, .parquet or .pq; a sealed .tseal file opens only inside a tee job's enclave)"
    )]
    UnsupportedFormat {
        /// The path that was given.
        path: PathBuf,
    },
    /// A key column is not in the file.
    #[error("column {column:?} not found; available columns: {available:?}")]
    UnknownColumn {
        /// The missing column.
        column: String,
        /// The columns the file has.
        available: Vec<String>,
    },
    /// A key column name occurs more than once in the file's header.
    #[error("{path}: column {column:?} occurs more than once in the header")]
    AmbiguousColumn {
        /// The file.
        path: PathBuf,
        /// The duplicated column.
        column: String,
    },
    /// A key column has a type that cannot be turned into a key.
    #[error("{path}: column {column:?} has type {data_type}; expected a string or integer column")]
    UnsupportedColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// The file's bytes do not form a valid file of its format.
    #[error("{path}: malformed input: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line (CSV) or row (Parquet) number where known.
        detail: String,
    },
    /// The file exceeds one of the bounds.
    #[error("{path}: too large: more than {bound}{}", at_row.map(|r| format!(" at data row {r}")).unwrap_or_default())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound exceeded.
        bound: TableBound,
        /// The 1-based data row where it was exceeded, where known.
        at_row: Option<u64>,
    },
    /// A row's key is empty after normalisation and the spec says [`EmptyKeys::Fail`].
    #[error("{path}: {at}: empty key (the job asks to fail on empty keys)")]
    EmptyKey {
        /// The file.
        path: PathBuf,
        /// Where: `line N` (CSV) or `row N` (Parquet).
        at: String,
    },
    /// The result file already exists; a result never replaces a file.
    #[error("{path}: already exists (a result never replaces a file)")]
    OutputExists {
        /// The result path.
        path: PathBuf,
    },
    /// A result row has not as many fields as the header.
    #[error("result row {index} has {got} fields, the header {want}")]
    RowWidth {
        /// 0-based row index.
        index: usize,
        /// Fields in the row.
        got: usize,
        /// Fields in the header.
        want: usize,
    },
    /// The header handed to [`write_result_csv`] is empty.
    #[error("CSV header must not be empty")]
    EmptyHeader,
    /// An operating-system I/O failure (message includes the path).
    #[error("I/O error: {0}")]
    Io(String),
}

/// Input formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Csv,
    Parquet,
}

impl FileFormat {
    fn of(path: &Path) -> Result<Self, TableError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Ok(FileFormat::Csv),
            Some("parquet") | Some("pq") => Ok(FileFormat::Parquet),
            _ => Err(TableError::UnsupportedFormat {
                path: path.to_owned(),
            }),
        }
    }
}

fn io_error(path: &Path, e: io::Error) -> TableError {
    if e.kind() == io::ErrorKind::NotFound {
        TableError::NotFound {
            path: path.to_owned(),
        }
    } else {
        TableError::Io(format!("{}: {e}", path.display()))
    }
}

fn malformed(path: &Path, detail: impl Into<String>) -> TableError {
    TableError::Malformed {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// Maps an Arrow/Parquet error: I/O failures stay I/O failures, anything else means bad bytes.
fn arrow_error(path: &Path, e: ArrowError) -> TableError {
    match e {
        ArrowError::IoError(msg, _) => TableError::Io(format!("{}: {msg}", path.display())),
        ArrowError::CsvError(msg) => malformed(path, msg),
        ArrowError::ParquetError(msg) => malformed(path, msg),
        other => malformed(path, other.to_string()),
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> TableError {
    match e {
        parquet::errors::ParquetError::ArrowError(msg) => malformed(path, msg),
        other => malformed(path, other.to_string()),
    }
}

/// Reads the key columns of `path` (CSV or Parquet, by extension) into one normalised key per
/// row that takes part, in file order (see the module docs for normalisation and empty keys).
///
/// Errors: [`TableError`] for a missing or unreadable file, an unknown or unsupported column,
/// malformed bytes, an exceeded bound, or an empty key under [`EmptyKeys::Fail`].
pub fn read_keys(path: &Path, spec: &KeySpec) -> Result<KeyedInput, TableError> {
    read_keys_keeping(path, spec, &[])
}

/// Like [`read_keys`], and also keeps, for each row that takes part, the original values of the
/// columns `keep` (in that order; a name may repeat and may be a key column) in
/// [`KeyedInput::kept`]. Kept values are bounded by [`KEPT_ROW_BYTES_MAX`] per row.
pub fn read_keys_keeping(
    path: &Path,
    spec: &KeySpec,
    keep: &[String],
) -> Result<KeyedInput, TableError> {
    let mut keys = Vec::new();
    let mut kept = Vec::new();
    let mut sink = |key: Vec<u8>, values: Vec<String>| {
        keys.push(key);
        if !keep.is_empty() {
            kept.push(values);
        }
        Ok(())
    };
    let reading = Reading {
        keep,
        rows_max: limits::DATASET_ROWS_MAX as u64,
        rows_bound: TableBound::Rows,
        sink: &mut sink,
    };
    let counts = read_file(path, spec, reading)?;
    Ok(KeyedInput {
        keys,
        rows: counts.rows,
        empty_keys: counts.empty_keys,
        kept,
    })
}

/// Most data rows [`stream_keys`] reads from one file.
pub const STREAMED_ROWS_MAX: u64 = 10_000_000_000;

/// What [`stream_keys`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamedCounts {
    /// Data rows read.
    pub rows: u64,
    /// Rows left out because their key is empty (see [`EmptyKeys`]).
    pub empty_keys: u64,
}

/// Like [`read_keys_keeping`], but hands each row that takes part to `each` (its normalised
/// key, then the original values of the `keep` columns, empty when none are kept) in file
/// order instead of holding them: memory stays bounded by a record batch whatever the file's
/// size. At most [`STREAMED_ROWS_MAX`] rows; the other bounds and the errors are
/// [`read_keys_keeping`]'s, plus any error `each` returns, which stops the reading.
pub fn stream_keys(
    path: &Path,
    spec: &KeySpec,
    keep: &[String],
    mut each: impl FnMut(Vec<u8>, Vec<String>) -> Result<(), TableError>,
) -> Result<StreamedCounts, TableError> {
    let reading = Reading {
        keep,
        rows_max: STREAMED_ROWS_MAX,
        rows_bound: TableBound::StreamedRows,
        sink: &mut each,
    };
    read_file(path, spec, reading)
}

/// How one reading of a file goes: the columns kept, the row bound, where rows go.
struct Reading<'a> {
    keep: &'a [String],
    rows_max: u64,
    rows_bound: TableBound,
    sink: &'a mut dyn FnMut(Vec<u8>, Vec<String>) -> Result<(), TableError>,
}

fn read_file<'a>(
    path: &'a Path,
    spec: &'a KeySpec,
    reading: Reading<'a>,
) -> Result<StreamedCounts, TableError> {
    if spec.columns.is_empty() {
        return Err(TableError::NoKeyColumns);
    }
    let format = FileFormat::of(path)?;
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(TableError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    match format {
        FileFormat::Csv => read_csv(path, file, spec, reading),
        FileFormat::Parquet => read_parquet(path, file, spec, reading),
    }
}

/// [`read_keys_keeping`] on a CSV file held in memory (`bytes`: a dataset opened inside an
/// enclave, never written to disk in clear); `label` names it in errors. The same bounds and
/// errors as reading the file.
pub fn read_keys_keeping_csv_bytes(
    label: &Path,
    bytes: &[u8],
    spec: &KeySpec,
    keep: &[String],
) -> Result<KeyedInput, TableError> {
    if spec.columns.is_empty() {
        return Err(TableError::NoKeyColumns);
    }
    let mut keys = Vec::new();
    let mut kept = Vec::new();
    let mut sink = |key: Vec<u8>, values: Vec<String>| {
        keys.push(key);
        if !keep.is_empty() {
            kept.push(values);
        }
        Ok(())
    };
    let reading = Reading {
        keep,
        rows_max: limits::DATASET_ROWS_MAX as u64,
        rows_bound: TableBound::Rows,
        sink: &mut sink,
    };
    let counts = read_csv(label, std::io::Cursor::new(bytes), spec, reading)?;
    Ok(KeyedInput {
        keys,
        rows: counts.rows,
        empty_keys: counts.empty_keys,
        kept,
    })
}

/// The most columns a preview shows ([`read_preview`] with no column named reads them all, up
/// to this many).
pub const PREVIEW_COLUMNS_MAX: usize = 256;

/// The rows of a dataset a `preview` run shows: original values as text (a null is `""`;
/// Parquet values of any type in Arrow's display form).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PreviewTable {
    /// Column names, in the order asked for (or the file's).
    pub columns: Vec<String>,
    /// One entry per row, one value per column.
    pub rows: Vec<Vec<String>>,
}

impl fmt::Debug for PreviewTable {
    /// Shows shapes only: rows are dataset content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviewTable")
            .field("columns", &self.columns)
            .field("rows", &format_args!("<{} rows>", self.rows.len()))
            .finish()
    }
}

/// Reads rows `first_row..=last_row` (1-based, the header excluded) of `columns` (empty: every
/// column, at most [`PREVIEW_COLUMNS_MAX`]) of `path` (CSV or Parquet, by extension), for a
/// `preview` run: a file with fewer rows gives fewer. Reading stops after `last_row`.
///
/// Errors: [`TableError`] for a missing or unreadable file, an unknown, duplicated or
/// ambiguous column, malformed bytes, an exceeded bound (record size; more than
/// [`PREVIEW_COLUMNS_MAX`] columns), or `first_row == 0` / `last_row < first_row`
/// (`Malformed`).
pub fn read_preview(
    path: &Path,
    columns: &[String],
    first_row: u64,
    last_row: u64,
) -> Result<PreviewTable, TableError> {
    if first_row == 0 || last_row < first_row {
        return Err(malformed(
            path,
            format!("preview rows {first_row}-{last_row}: rows are numbered from 1, first <= last"),
        ));
    }
    let format = FileFormat::of(path)?;
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(TableError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let pick = |names: &[String]| -> Result<(Vec<String>, Vec<usize>), TableError> {
        let wanted: Vec<String> = if columns.is_empty() {
            names.to_vec()
        } else {
            columns.to_vec()
        };
        if wanted.len() > PREVIEW_COLUMNS_MAX {
            return Err(malformed(
                path,
                format!(
                    "{} columns: a preview shows at most {PREVIEW_COLUMNS_MAX}; name the columns",
                    wanted.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = wanted.iter().find(|c| !seen.insert(*c)) {
            return Err(malformed(path, format!("column {dup:?} is named twice")));
        }
        let indices = locate_columns(path, names, &wanted)?;
        Ok((wanted, indices))
    };
    let skip = first_row - 1;
    let take = usize::try_from(last_row - first_row + 1).unwrap_or(usize::MAX);
    let mut out = PreviewTable::default();
    match format {
        FileFormat::Csv => {
            let (names, header_bytes) = read_csv_header(path, &mut file)?;
            let (wanted, indices) = pick(&names)?;
            let (projection, positions) = projection_of(&indices);
            out.columns = wanted;
            let mut seen_rows: u64 = 0;
            for_each_csv_batch(path, file, &names, header_bytes, projection, |batch| {
                let arrays: Vec<&StringArray> = positions
                    .iter()
                    .map(|&p| {
                        batch
                            .column(p)
                            .as_string_opt::<i32>()
                            .ok_or_else(|| malformed(path, "a CSV column did not decode as text"))
                    })
                    .collect::<Result<_, _>>()?;
                for row in 0..batch.num_rows() {
                    seen_rows += 1;
                    if seen_rows <= skip {
                        continue;
                    }
                    out.rows.push(
                        arrays
                            .iter()
                            .map(|a| {
                                if a.is_null(row) {
                                    String::new()
                                } else {
                                    a.value(row).to_string()
                                }
                            })
                            .collect(),
                    );
                    if out.rows.len() >= take {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
        }
        FileFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| parquet_error(path, e))?;
            let names: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let (wanted, indices) = pick(&names)?;
            let (projection, positions) = projection_of(&indices);
            let mask = ProjectionMask::roots(builder.parquet_schema(), projection);
            let reader = builder
                .with_projection(mask)
                .with_batch_size(READ_BATCH_ROWS)
                .with_offset(usize::try_from(skip).unwrap_or(usize::MAX))
                .with_limit(take)
                .build()
                .map_err(|e| parquet_error(path, e))?;
            out.columns = wanted;
            let options = arrow_cast::display::FormatOptions::default();
            for batch in reader {
                let batch = batch.map_err(|e| arrow_error(path, e))?;
                let formatters = positions
                    .iter()
                    .map(|&p| {
                        arrow_cast::display::ArrayFormatter::try_new(
                            batch.column(p).as_ref(),
                            &options,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| arrow_error(path, e))?;
                for row in 0..batch.num_rows() {
                    let mut values = Vec::with_capacity(formatters.len());
                    let mut bytes = 0usize;
                    for f in &formatters {
                        let v = f.value(row).to_string();
                        bytes += v.len();
                        values.push(v);
                    }
                    if bytes > CSV_RECORD_BYTES_MAX {
                        return Err(TableError::TooLarge {
                            path: path.to_owned(),
                            bound: TableBound::RecordBytes,
                            at_row: Some(skip + out.rows.len() as u64 + 1),
                        });
                    }
                    out.rows.push(values);
                    if out.rows.len() >= take {
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Finds the position of each of `columns` among `names`.
fn locate_columns(
    path: &Path,
    names: &[String],
    columns: &[String],
) -> Result<Vec<usize>, TableError> {
    columns
        .iter()
        .map(|column| {
            let mut hits = names
                .iter()
                .enumerate()
                .filter(|(_, n)| *n == column)
                .map(|(i, _)| i);
            match (hits.next(), hits.next()) {
                (Some(i), None) => Ok(i),
                (Some(_), Some(_)) => Err(TableError::AmbiguousColumn {
                    path: path.to_owned(),
                    column: column.clone(),
                }),
                (None, _) => Err(TableError::UnknownColumn {
                    column: column.clone(),
                    available: names.to_vec(),
                }),
            }
        })
        .collect()
}

/// Sorted, distinct column indices to decode, and for each wanted column its position among
/// them.
fn projection_of(indices: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut projection = indices.to_vec();
    projection.sort_unstable();
    projection.dedup();
    let positions = indices
        .iter()
        .map(|i| projection.binary_search(i).unwrap_or_default())
        .collect();
    (projection, positions)
}

/// How row numbers are reported in errors.
#[derive(Debug, Clone, Copy)]
enum RowLabel {
    /// CSV: physical line = data row + 1 (the header is line 1).
    CsvLine,
    /// Parquet: 1-based row.
    ParquetRow,
}

/// Accumulates normalised keys (and kept values) batch by batch.
struct KeyBuilder<'a> {
    path: &'a Path,
    spec: &'a KeySpec,
    label: RowLabel,
    /// Batch positions of the key columns, then of the kept columns.
    key_positions: Vec<usize>,
    kept_positions: Vec<usize>,
    kept_names: &'a [String],
    /// Most data rows accepted, and the bound named when there are more.
    rows_max: u64,
    rows_bound: TableBound,
    counts: StreamedCounts,
    /// Where each row that takes part goes: its normalised key and kept values.
    sink: &'a mut dyn FnMut(Vec<u8>, Vec<String>) -> Result<(), TableError>,
    scratch_key: Vec<u8>,
    scratch_text: String,
}

impl fmt::Debug for KeyBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("path", &self.path)
            .field("rows", &self.counts.rows)
            .finish_non_exhaustive()
    }
}

/// Whether a column of this type can be read as strings (see [`KeyColumn`]); a dictionary is
/// read as its values.
fn is_supported_key_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(key, value) => {
            key.is_integer()
                && !matches!(**value, DataType::Dictionary(..))
                && is_supported_key_type(value)
        }
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => true,
        _ => false,
    }
}

/// A dictionary-encoded column (e.g. a pandas categorical) unpacked to its value type, so that
/// it reads like any other string or integer column; other arrays are shared as they are.
fn undictionary(path: &Path, column: &str, array: &ArrayRef) -> Result<ArrayRef, TableError> {
    match array.data_type() {
        DataType::Dictionary(_, value) => arrow_cast::cast(array, value)
            .map_err(|e| malformed(path, format!("column {column:?}: {e}"))),
        _ => Ok(Arc::clone(array)),
    }
}

/// One column of a record batch, viewed as optional strings.
enum KeyColumn<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
    Integer(Vec<Option<i128>>),
}

impl<'a> KeyColumn<'a> {
    fn new(path: &Path, column: &str, array: &'a ArrayRef) -> Result<Self, TableError> {
        fn ints<T>(array: &ArrayRef) -> Option<Vec<Option<i128>>>
        where
            T: arrow_array::ArrowPrimitiveType,
            T::Native: Into<i128>,
        {
            array
                .as_primitive_opt::<T>()
                .map(|a| a.iter().map(|v| v.map(Into::into)).collect())
        }
        let col = match array.data_type() {
            DataType::Utf8 => array.as_string_opt::<i32>().map(KeyColumn::Utf8),
            DataType::LargeUtf8 => array.as_string_opt::<i64>().map(KeyColumn::LargeUtf8),
            DataType::Utf8View => array.as_string_view_opt().map(KeyColumn::Utf8View),
            DataType::Int8 => ints::<Int8Type>(array).map(KeyColumn::Integer),
            DataType::Int16 => ints::<Int16Type>(array).map(KeyColumn::Integer),
            DataType::Int32 => ints::<Int32Type>(array).map(KeyColumn::Integer),
            DataType::Int64 => ints::<Int64Type>(array).map(KeyColumn::Integer),
            DataType::UInt8 => ints::<UInt8Type>(array).map(KeyColumn::Integer),
            DataType::UInt16 => ints::<UInt16Type>(array).map(KeyColumn::Integer),
            DataType::UInt32 => ints::<UInt32Type>(array).map(KeyColumn::Integer),
            DataType::UInt64 => ints::<UInt64Type>(array).map(KeyColumn::Integer),
            _ => None,
        };
        col.ok_or_else(|| TableError::UnsupportedColumnType {
            path: path.to_owned(),
            column: column.to_owned(),
            data_type: array.data_type().to_string(),
        })
    }

    /// The value at `row` (which must be in range), or `None` for null.
    fn value<'s>(&'s self, row: usize, scratch: &'s mut String) -> Option<&'s str> {
        match self {
            KeyColumn::Utf8(a) => (!a.is_null(row)).then(|| a.value(row)),
            KeyColumn::LargeUtf8(a) => (!a.is_null(row)).then(|| a.value(row)),
            KeyColumn::Utf8View(a) => (!a.is_null(row)).then(|| a.value(row)),
            KeyColumn::Integer(v) => v.get(row).copied().flatten().map(|n| {
                use std::fmt::Write as _;
                scratch.clear();
                // Writing into a String cannot fail.
                let _ = write!(scratch, "{n}");
                scratch.as_str()
            }),
        }
    }
}

/// Brings `text` to the Unicode form `form`.
fn to_form(text: &str, form: UnicodeForm) -> Cow<'_, str> {
    match form {
        UnicodeForm::None => Cow::Borrowed(text),
        UnicodeForm::Nfc => ComposingNormalizerBorrowed::new_nfc().normalize(text),
        UnicodeForm::Nfkc => ComposingNormalizerBorrowed::new_nfkc().normalize(text),
    }
}

/// Applies the case rule to `text`.
fn to_case(text: &str, case: KeyCase) -> Cow<'_, str> {
    match case {
        KeyCase::Preserve => Cow::Borrowed(text),
        KeyCase::Lower if text.is_ascii() => Cow::Owned(text.to_ascii_lowercase()),
        KeyCase::Upper if text.is_ascii() => Cow::Owned(text.to_ascii_uppercase()),
        KeyCase::Lower => Cow::Owned(text.to_lowercase()),
        KeyCase::Upper => Cow::Owned(text.to_uppercase()),
        KeyCase::Fold => CaseMapper::new().fold_string(text),
    }
}

/// Normalises one key component: trim, Unicode form, case, and — when both a form and a case
/// rule apply — the form again (case mapping can produce unnormalised text, e.g. upper-casing
/// `i` + U+0307), then trim again (NFKC can turn a non-breaking space into a space).
///
/// Shape: any text in, normalised text out; an empty result means an empty key component.
pub fn normalise(raw: &str, case: KeyCase, form: UnicodeForm) -> Cow<'_, str> {
    let t = raw.trim();
    if form == UnicodeForm::None && case == KeyCase::Preserve {
        return Cow::Borrowed(t);
    }
    let formed = to_form(t, form);
    let cased = to_case(&formed, case);
    let again = if case == KeyCase::Preserve || form == UnicodeForm::None {
        cased
    } else {
        Cow::Owned(to_form(&cased, form).into_owned())
    };
    match again {
        Cow::Borrowed(b) => Cow::Owned(b.trim().to_owned()),
        Cow::Owned(o) if o.trim().len() == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(o.trim().to_owned()),
    }
}

impl<'a> KeyBuilder<'a> {
    fn new(
        path: &'a Path,
        spec: &'a KeySpec,
        label: RowLabel,
        positions: &[usize],
        reading: Reading<'a>,
    ) -> Self {
        let (key_positions, kept_positions) = positions.split_at(spec.columns.len());
        KeyBuilder {
            path,
            spec,
            label,
            key_positions: key_positions.to_vec(),
            kept_positions: kept_positions.to_vec(),
            kept_names: reading.keep,
            rows_max: reading.rows_max,
            rows_bound: reading.rows_bound,
            counts: StreamedCounts::default(),
            sink: reading.sink,
            scratch_key: Vec::new(),
            scratch_text: String::new(),
        }
    }

    fn at(&self, data_row: u64) -> String {
        match self.label {
            RowLabel::CsvLine => format!("line {}", data_row.saturating_add(1)),
            RowLabel::ParquetRow => format!("row {data_row}"),
        }
    }

    fn row_error(&self, data_row: u64, detail: &str) -> TableError {
        malformed(self.path, format!("{}: {detail}", self.at(data_row)))
    }

    /// The batch's arrays at `positions` (dictionaries unpacked), checked for length.
    fn arrays(
        &self,
        batch: &RecordBatch,
        positions: &[usize],
        names: &[String],
    ) -> Result<Vec<ArrayRef>, TableError> {
        positions
            .iter()
            .zip(names)
            .map(|(&p, name)| {
                let array = batch.columns().get(p).ok_or_else(|| {
                    malformed(self.path, format!("column {name:?} missing from a batch"))
                })?;
                if array.len() != batch.num_rows() {
                    return Err(malformed(self.path, "inconsistent column lengths"));
                }
                undictionary(self.path, name, array)
            })
            .collect()
    }

    /// Adds the rows of `batch`.
    fn push_batch(&mut self, batch: &RecordBatch) -> Result<(), TableError> {
        let n = batch.num_rows();
        if self.counts.rows.saturating_add(n as u64) > self.rows_max {
            return Err(TableError::TooLarge {
                path: self.path.to_owned(),
                bound: self.rows_bound,
                at_row: Some(self.rows_max.saturating_add(1)),
            });
        }
        let key_arrays = self.arrays(batch, &self.key_positions, &self.spec.columns)?;
        let kept_arrays = self.arrays(batch, &self.kept_positions, self.kept_names)?;
        let columns = key_arrays
            .iter()
            .zip(&self.spec.columns)
            .map(|(a, name)| KeyColumn::new(self.path, name, a))
            .collect::<Result<Vec<_>, _>>()?;
        let kept = kept_arrays
            .iter()
            .zip(self.kept_names)
            .map(|(a, name)| KeyColumn::new(self.path, name, a))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..n {
            self.counts.rows += 1;
            let data_row = self.counts.rows;
            let Some(key) = self.row_key(&columns, row, data_row)? else {
                if self.spec.empty == EmptyKeys::Fail {
                    return Err(TableError::EmptyKey {
                        path: self.path.to_owned(),
                        at: self.at(data_row),
                    });
                }
                self.counts.empty_keys += 1;
                continue;
            };
            let values = if kept.is_empty() {
                Vec::new()
            } else {
                self.row_kept(&kept, row, data_row)?
            };
            (self.sink)(key, values)?;
        }
        Ok(())
    }

    /// The normalised key of `row`, or `None` when a component is empty.
    fn row_key(
        &mut self,
        columns: &[KeyColumn<'_>],
        row: usize,
        data_row: u64,
    ) -> Result<Option<Vec<u8>>, TableError> {
        let multi = columns.len() > 1;
        let mut key = std::mem::take(&mut self.scratch_key);
        key.clear();
        let mut empty = false;
        for (k, col) in columns.iter().enumerate() {
            if k > 0 {
                key.push(KEY_COLUMN_SEPARATOR);
            }
            let raw = col.value(row, &mut self.scratch_text).unwrap_or("");
            if multi && raw.as_bytes().contains(&KEY_COLUMN_SEPARATOR) {
                self.scratch_key = key;
                return Err(
                    self.row_error(data_row, "key value contains the unit separator byte 0x1F")
                );
            }
            let part = normalise(raw, self.spec.case, self.spec.unicode);
            empty |= part.is_empty();
            key.extend_from_slice(part.as_bytes());
            if key.len() > limits::KEY_BYTES_MAX {
                return Err(TableError::TooLarge {
                    path: self.path.to_owned(),
                    bound: TableBound::KeyBytes,
                    at_row: Some(data_row),
                });
            }
        }
        let out = (!empty).then(|| key.as_slice().to_vec());
        self.scratch_key = key;
        Ok(out)
    }

    /// The original values of the kept columns of `row`.
    fn row_kept(
        &mut self,
        kept: &[KeyColumn<'_>],
        row: usize,
        data_row: u64,
    ) -> Result<Vec<String>, TableError> {
        let mut bytes = 0usize;
        let mut values = Vec::with_capacity(kept.len());
        for col in kept {
            let v = col.value(row, &mut self.scratch_text).unwrap_or("");
            bytes = bytes.saturating_add(v.len());
            if bytes > KEPT_ROW_BYTES_MAX {
                return Err(TableError::TooLarge {
                    path: self.path.to_owned(),
                    bound: TableBound::KeptBytes,
                    at_row: Some(data_row),
                });
            }
            values.push(v.to_owned());
        }
        Ok(values)
    }

    fn finish(self) -> StreamedCounts {
        self.counts
    }
}

/// Reads the header line (at most [`CSV_HEADER_BYTES_MAX`] bytes) and splits it into names.
/// Returns the column names and the header's length in bytes.
fn read_csv_header<F: Read>(path: &Path, file: &mut F) -> Result<(Vec<String>, usize), TableError> {
    let mut line = Vec::new();
    let limit = CSV_HEADER_BYTES_MAX as u64 + 1;
    BufReader::new(Read::by_ref(file).take(limit))
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error(path, e))?;
    if line.len() > CSV_HEADER_BYTES_MAX {
        return Err(TableError::TooLarge {
            path: path.to_owned(),
            bound: TableBound::HeaderBytes,
            at_row: None,
        });
    }
    let header_bytes = line.len();
    let line = line.strip_prefix(UTF8_BOM).unwrap_or(&line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(malformed(path, "line 1: a header row is required"));
    }
    let (schema, _) = Format::default()
        .with_header(true)
        .infer_schema(io::Cursor::new(line), Some(0))
        .map_err(|e| malformed(path, format!("line 1 (header): {e}")))?;
    let names = schema.fields().iter().map(|f| f.name().clone()).collect();
    Ok((names, header_bytes))
}

/// The key columns followed by the kept columns.
fn wanted(spec: &KeySpec, keep: &[String]) -> Vec<String> {
    spec.columns.iter().chain(keep).cloned().collect()
}

/// Decodes the CSV file `file`, whose header [`read_csv_header`] read (`names`, taking
/// `header_bytes`), batch by batch with every column as text and only the columns
/// `projection` decoded, and hands each batch to `each` until it answers `false` or the file
/// ends. A record longer than [`CSV_RECORD_BYTES_MAX`] (the header its own length more) is
/// refused as it is read, naming its data row: a single record never takes unbounded memory.
fn for_each_csv_batch<F: Read + Seek>(
    path: &Path,
    mut file: F,
    names: &[String],
    header_bytes: usize,
    projection: Vec<usize>,
    mut each: impl FnMut(&RecordBatch) -> Result<bool, TableError>,
) -> Result<(), TableError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error(path, e))?;
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let mut decoder = ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(READ_BATCH_ROWS)
        .with_projection(projection)
        .build_decoder();
    let mut reader = BufReader::with_capacity(CSV_READ_BUFFER_BYTES, file);
    // Data rows handed on so far (for the row an over-long record is reported at).
    let mut rows: u64 = 0;
    // Bytes consumed since the decoder last completed a record (undercounted by at most one
    // read buffer): bounds the memory a single record can take. The header, which the decoder
    // skips without counting it as a record, gets its own allowance.
    let mut partial_record_bytes: usize = 0;
    let mut record_allowance = CSV_RECORD_BYTES_MAX + header_bytes;
    loop {
        loop {
            let buf = reader.fill_buf().map_err(|e| io_error(path, e))?;
            let capacity_before = decoder.capacity();
            let consumed = decoder.decode(buf).map_err(|e| arrow_error(path, e))?;
            reader.consume(consumed);
            if decoder.capacity() != capacity_before {
                partial_record_bytes = 0;
                record_allowance = CSV_RECORD_BYTES_MAX;
            } else {
                partial_record_bytes = partial_record_bytes.saturating_add(consumed);
                if partial_record_bytes > record_allowance {
                    // The records the decoder holds in its unflushed batch come first.
                    let pending = READ_BATCH_ROWS.saturating_sub(decoder.capacity()) as u64;
                    return Err(TableError::TooLarge {
                        path: path.to_owned(),
                        bound: TableBound::RecordBytes,
                        at_row: Some(rows + pending + 1),
                    });
                }
            }
            if consumed == 0 || decoder.capacity() == 0 {
                break;
            }
        }
        match decoder.flush().map_err(|e| arrow_error(path, e))? {
            Some(batch) => {
                rows += batch.num_rows() as u64;
                if !each(&batch)? {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
    }
}

fn read_csv<'a, F: Read + Seek>(
    path: &'a Path,
    mut file: F,
    spec: &'a KeySpec,
    reading: Reading<'a>,
) -> Result<StreamedCounts, TableError> {
    let (names, header_bytes) = read_csv_header(path, &mut file)?;
    let indices = locate_columns(path, &names, &wanted(spec, reading.keep))?;
    let (projection, positions) = projection_of(&indices);
    let mut builder = KeyBuilder::new(path, spec, RowLabel::CsvLine, &positions, reading);
    for_each_csv_batch(path, file, &names, header_bytes, projection, |batch| {
        builder.push_batch(batch)?;
        Ok(true)
    })?;
    Ok(builder.finish())
}

fn read_parquet<'a>(
    path: &'a Path,
    file: File,
    spec: &'a KeySpec,
    reading: Reading<'a>,
) -> Result<StreamedCounts, TableError> {
    let keep = reading.keep;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    let total_rows = builder.metadata().file_metadata().num_rows();
    if u64::try_from(total_rows).map_or(true, |r| r > reading.rows_max) {
        return Err(TableError::TooLarge {
            path: path.to_owned(),
            bound: reading.rows_bound,
            at_row: None,
        });
    }
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let columns = wanted(spec, keep);
    let indices = locate_columns(path, &names, &columns)?;
    for (&i, column) in indices.iter().zip(&columns) {
        let data_type = builder.schema().field(i).data_type();
        if !is_supported_key_type(data_type) {
            return Err(TableError::UnsupportedColumnType {
                path: path.to_owned(),
                column: column.clone(),
                data_type: data_type.to_string(),
            });
        }
    }
    let (projection, positions) = projection_of(&indices);
    let mask = ProjectionMask::roots(builder.parquet_schema(), projection);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(path, e))?;
    let mut keys = KeyBuilder::new(path, spec, RowLabel::ParquetRow, &positions, reading);
    for batch in reader {
        let batch = batch.map_err(|e| arrow_error(path, e))?;
        keys.push_batch(&batch)?;
    }
    Ok(keys.finish())
}

/// What [`write_result_csv`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenFile {
    /// File size in bytes.
    pub bytes: u64,
    /// Data rows (the header not counted).
    pub rows: u64,
    /// SHA-256 of the file's bytes.
    pub sha256: [u8; 32],
}

/// A writer that counts and hashes what passes through it.
struct Digesting<W> {
    inner: W,
    bytes: u64,
    hash: Sha256,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.hash.update(done);
        self.bytes = self.bytes.saturating_add(done.len() as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a result table as CSV (RFC 4180: CRLF line ends, fields quoted when needed, every
/// column its own): `header`, then one line per row. Every row must have the header's width.
///
/// The file never replaces anything: it is written to a temporary file in the same directory,
/// synced, then published under `path` with a hard link, which fails if `path` exists
/// ([`TableError::OutputExists`]); the temporary name is removed in every case, and on error
/// `path` is untouched. Returns the size, row count and SHA-256 of what was written.
pub fn write_result_csv<H, R, F>(
    path: &Path,
    header: &[H],
    rows: R,
) -> Result<WrittenFile, TableError>
where
    H: AsRef<str>,
    R: IntoIterator,
    R::Item: AsRef<[F]>,
    F: AsRef<str>,
{
    try_write_result_csv(path, header, rows.into_iter().map(Ok))
}

/// [`write_result_csv`] of rows that may fail to come (read back from disk, say): the first
/// `Err` stops the writing, nothing is published under `path`, and the error is returned.
pub fn try_write_result_csv<H, R, T, F>(
    path: &Path,
    header: &[H],
    rows: R,
) -> Result<WrittenFile, TableError>
where
    H: AsRef<str>,
    R: IntoIterator<Item = Result<T, TableError>>,
    T: AsRef<[F]>,
    F: AsRef<str>,
{
    if header.is_empty() {
        return Err(TableError::EmptyHeader);
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| TableError::Io(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    // A directory in the way is said as such, not as "already exists".
    if let Some(cause) = output_path_problem(path) {
        return Err(TableError::Io(format!(
            "writing {}: {cause}",
            path.display()
        )));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(TableError::OutputExists {
            path: path.to_owned(),
        });
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{:016x}.tmp", OsRng.next_u64()));
    let tmp_path = dir.join(tmp_name);

    let result = write_csv_to(&tmp_path, path, header, rows).and_then(|written| {
        std::fs::hard_link(&tmp_path, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                TableError::OutputExists {
                    path: path.to_owned(),
                }
            } else {
                write_error(path, e)
            }
        })?;
        Ok(written)
    });
    let _ = std::fs::remove_file(&tmp_path);
    if result.is_ok() {
        // Best effort: persist the new directory entry.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    result
}

/// Why `path` cannot be written as a new file, as far as the file system tells before trying:
/// its directory does not exist or is not a directory, or `path` itself is a directory. `None`
/// when nothing there stands in the way. Said in terms of `path` and its directory, never of a
/// temporary file.
pub fn output_path_problem(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Some(format!("the directory {} does not exist", dir.display()))
        }
        Err(e) => Some(format!("the directory {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_) if path.is_dir() => Some(format!("{} is a directory", path.display())),
        Ok(_) => None,
    }
}

/// An error writing the result file `path`: the cause [`output_path_problem`] finds, else the
/// I/O error itself.
fn write_error(path: &Path, e: io::Error) -> TableError {
    let cause = output_path_problem(path).unwrap_or_else(|| match e.kind() {
        io::ErrorKind::PermissionDenied => match path.parent() {
            Some(dir) => format!("permission denied in {}", dir.display()),
            None => e.to_string(),
        },
        _ => e.to_string(),
    });
    TableError::Io(format!("writing {}: {cause}", path.display()))
}

fn write_csv_to<H, R, T, F>(
    tmp_path: &Path,
    path: &Path,
    header: &[H],
    rows: R,
) -> Result<WrittenFile, TableError>
where
    H: AsRef<str>,
    R: IntoIterator<Item = Result<T, TableError>>,
    T: AsRef<[F]>,
    F: AsRef<str>,
{
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp_path)
        .map_err(|e| write_error(path, e))?;
    let sink = Digesting {
        inner: BufWriter::new(file),
        bytes: 0,
        hash: Sha256::new(),
    };
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(sink);
    let csv_err = |e: csv::Error| TableError::Io(format!("{}: {e}", path.display()));
    w.write_record(header.iter().map(AsRef::as_ref))
        .map_err(csv_err)?;
    let mut count: u64 = 0;
    for (index, row) in rows.into_iter().enumerate() {
        let row = row?;
        let row = row.as_ref();
        if row.len() != header.len() {
            return Err(TableError::RowWidth {
                index,
                got: row.len(),
                want: header.len(),
            });
        }
        w.write_record(row.iter().map(AsRef::as_ref))
            .map_err(csv_err)?;
        count += 1;
    }
    let sink = w
        .into_inner()
        .map_err(|e| TableError::Io(format!("{}: {}", path.display(), e.error())))?;
    let file = sink
        .inner
        .into_inner()
        .map_err(|e| write_error(path, e.into_error()))?;
    file.sync_all().map_err(|e| write_error(path, e))?;
    Ok(WrittenFile {
        bytes: sink.bytes,
        rows: count,
        sha256: sink.hash.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, UInt64Array};
    use parquet::arrow::ArrowWriter;

    fn spec(cols: &[&str], case: KeyCase) -> KeySpec {
        KeySpec {
            columns: cols.iter().map(|c| c.to_string()).collect(),
            case,
            ..KeySpec::default()
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    fn keys_of(input: &KeyedInput) -> Vec<String> {
        input
            .keys
            .iter()
            .map(|k| String::from_utf8(k.clone()).expect("utf8"))
            .collect()
    }

    #[test]
    fn csv_single_column_keeps_leading_zeros_and_trims() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.csv",
            b"id,name\n00123,x\n  42 ,y\n\"a,b\",z\n,empty\n",
        );
        let got = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect("read");
        assert_eq!(got.rows, 4);
        // The empty cell is not an identifier: left out and counted.
        assert_eq!(keys_of(&got), ["00123", "42", "a,b"]);
        assert_eq!(got.empty_keys, 1);
    }

    #[test]
    fn csv_multi_column_and_case() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.CSV",
            "email,phone,x\r\n Alice@Example.COM ,\u{3000}0123\u{3000},1\r\nÉCOLE@x.fr,,2\r\n"
                .as_bytes(),
        );
        let got = read_keys(&p, &spec(&["phone", "email"], KeyCase::Lower)).expect("read");
        // The second row's phone is empty: with several key columns, any empty column makes
        // the key empty.
        assert_eq!(keys_of(&got), ["0123\u{1f}alice@example.com"]);
        assert_eq!((got.rows, got.empty_keys), (2, 1));
        let got = read_keys(&p, &spec(&["email"], KeyCase::Upper)).expect("read");
        assert_eq!(keys_of(&got), ["ALICE@EXAMPLE.COM", "ÉCOLE@X.FR"]);
        let got = read_keys(&p, &spec(&["email"], KeyCase::Preserve)).expect("read");
        assert_eq!(keys_of(&got), ["Alice@Example.COM", "ÉCOLE@x.fr"]);
    }

    #[test]
    fn csv_with_bom_and_no_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"\xEF\xBB\xBFid\n1\n2");
        let got = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect("read");
        assert_eq!(keys_of(&got), ["1", "2"]);
    }

    #[test]
    fn csv_many_rows_span_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys: Vec<Vec<u8>> = (0..5000).map(|i| format!("k{i:05}").into_bytes()).collect();
        let p = dir.path().join("out.csv");
        let rows: Vec<[String; 1]> = keys
            .iter()
            .map(|k| [String::from_utf8(k.clone()).expect("utf8")])
            .collect();
        write_result_csv(&p, &["key"], &rows).expect("write");
        let got = read_keys(&p, &spec(&["key"], KeyCase::Preserve)).expect("read");
        assert_eq!(got.rows, 5000);
        assert_eq!(got.keys, keys);
    }

    #[test]
    fn result_csv_is_rfc4180_with_every_column_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = vec![
            strings(&["plain", " Padded "]),
            strings(&["with,comma", "with \"quote\""]),
            strings(&["line\nbreak", ""]),
            strings(&["a\u{1f}b", "C002"]),
        ];
        let p = dir.path().join("r.csv");
        let w = write_result_csv(&p, &["the key", "b"], &rows).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(
            String::from_utf8(bytes.clone()).expect("utf8"),
            "the key,b\r\nplain, Padded \r\n\"with,comma\",\"with \"\"quote\"\"\"\r\n\
             \"line\nbreak\",\r\na\u{1f}b,C002\r\n"
        );
        assert_eq!(w.rows, 4);
        assert_eq!(w.bytes, bytes.len() as u64);
        assert_eq!(w.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
        // A standard reader gets the same fields back.
        let mut r = csv::Reader::from_path(&p).expect("csv");
        let back: Vec<Vec<String>> = r
            .records()
            .map(|rec| rec.expect("record").iter().map(String::from).collect())
            .collect();
        assert_eq!(back, rows);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_result_never_replaces_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.csv");
        std::fs::write(&p, b"paid result\n").expect("write");
        let err = write_result_csv(&p, &["k"], [["x"]]).expect_err("must refuse");
        assert_eq!(err, TableError::OutputExists { path: p.clone() });
        assert_eq!(std::fs::read(&p).expect("read"), b"paid result\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn write_rejects_ragged_rows_and_empty_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.csv");
        assert_eq!(
            write_result_csv(&p, &["a", "b"], [vec!["1", "2"], vec!["3"]]),
            Err(TableError::RowWidth {
                index: 1,
                got: 1,
                want: 2
            })
        );
        let none: [[&str; 0]; 0] = [];
        assert_eq!(
            write_result_csv::<&str, _, &str>(&p, &[], none),
            Err(TableError::EmptyHeader)
        );
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn empty_keys_are_skipped_and_counted_or_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.csv",
            "a,b\n1,x\n,y\n \u{3000} ,z\n2,\n3,w\n".as_bytes(),
        );
        let got = read_keys(&p, &spec(&["a"], KeyCase::Preserve)).expect("read");
        assert_eq!(keys_of(&got), ["1", "2", "3"]);
        assert_eq!((got.rows, got.empty_keys), (5, 2));
        let got = read_keys(&p, &spec(&["a", "b"], KeyCase::Preserve)).expect("read");
        assert_eq!(keys_of(&got), ["1\u{1f}x", "3\u{1f}w"]);
        assert_eq!((got.rows, got.empty_keys), (5, 3));
        let mut fail = spec(&["a"], KeyCase::Preserve);
        fail.empty = EmptyKeys::Fail;
        assert_eq!(
            read_keys(&p, &fail),
            Err(TableError::EmptyKey {
                path: p.clone(),
                at: "line 3".into()
            })
        );
        assert_eq!("FAIL".parse::<EmptyKeys>(), Ok(EmptyKeys::Fail));
        assert!("drop".parse::<EmptyKeys>().is_err());
    }

    #[test]
    fn kept_columns_hold_the_original_values_of_the_rows_that_take_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.csv",
            b"id,name,extra\n C002 ,Ann,1\n,Bob,2\nc003,\"Li, Wei\",\n",
        );
        let keep = strings(&["id", "extra", "name"]);
        let got = read_keys_keeping(&p, &spec(&["id"], KeyCase::Lower), &keep).expect("read");
        assert_eq!(keys_of(&got), ["c002", "c003"]);
        assert_eq!(
            got.kept,
            vec![
                strings(&[" C002 ", "1", "Ann"]),
                strings(&["c003", "", "Li, Wei"])
            ]
        );
        assert!(matches!(
            read_keys_keeping(&p, &spec(&["id"], KeyCase::Lower), &strings(&["nope"])),
            Err(TableError::UnknownColumn { .. })
        ));
        let big = format!("id,v\n1,{}\n", "v".repeat(KEPT_ROW_BYTES_MAX + 1));
        let p = write(dir.path(), "b.csv", big.as_bytes());
        assert!(matches!(
            read_keys_keeping(&p, &spec(&["id"], KeyCase::Lower), &strings(&["v"])),
            Err(TableError::TooLarge {
                bound: TableBound::KeptBytes,
                at_row: Some(1),
                ..
            })
        ));
    }

    /// `(raw, case, form, expected)` per row.
    fn check_normalise(cases: &[(&str, KeyCase, UnicodeForm, &str)]) {
        for (raw, case, form, want) in cases {
            assert_eq!(normalise(raw, *case, *form), *want, "{raw:?} {case} {form}");
        }
    }

    #[test]
    fn unicode_forms_and_case_folding() {
        use KeyCase::*;
        use UnicodeForm as U;
        check_normalise(&[
            // NFD and NFC spellings of "école" meet only under a normal form.
            ("e\u{301}cole", Preserve, U::None, "e\u{301}cole"),
            ("e\u{301}cole", Preserve, U::Nfc, "\u{e9}cole"),
            ("\u{e9}cole", Preserve, U::Nfc, "\u{e9}cole"),
            // NFKC also folds compatibility variants.
            (
                "\u{ff21}\u{ff22}\u{fb01}",
                Preserve,
                U::Nfc,
                "\u{ff21}\u{ff22}\u{fb01}",
            ),
            ("\u{ff21}\u{ff22}\u{fb01}", Preserve, U::Nfkc, "ABfi"),
            // lower and upper disagree on ß; full case folding does not.
            ("straße", Lower, U::None, "straße"),
            ("STRASSE", Lower, U::None, "strasse"),
            ("straße", Upper, U::None, "STRASSE"),
            ("straße", Fold, U::None, "strasse"),
            ("STRASSE", Fold, U::None, "strasse"),
            ("Strasse", Fold, U::Nfc, "strasse"),
            // İ (U+0130) folds to i + U+0307, as does its decomposed spelling.
            ("\u{130}", Fold, U::Nfc, "i\u{307}"),
            ("I\u{307}", Fold, U::Nfc, "i\u{307}"),
            ("i\u{307}", Fold, U::Nfc, "i\u{307}"),
            // Upper-casing i + U+0307 is re-composed to U+0130 under NFC.
            ("i\u{307}", Upper, U::Nfc, "\u{130}"),
            ("\u{130}", Upper, U::Nfc, "\u{130}"),
            // Trimming happens around normalisation too.
            ("\u{3000} Ab \u{a0}", Fold, U::Nfkc, "ab"),
        ]);
        // Through a file: the two spellings match only with nfc.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.csv",
            "k\n\u{e9}cole\ne\u{301}cole\nSTRASSE\nstraße\n".as_bytes(),
        );
        let mut s = spec(&["k"], Fold);
        s.unicode = U::Nfc;
        let got = read_keys(&p, &s).expect("read");
        assert_eq!(
            keys_of(&got),
            ["\u{e9}cole", "\u{e9}cole", "strasse", "strasse"]
        );
        assert_eq!("NFKC".parse::<UnicodeForm>(), Ok(U::Nfkc));
        assert_eq!("fold".parse::<KeyCase>(), Ok(Fold));
    }

    #[test]
    fn unknown_column_lists_available() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"id,name\n1,x\n");
        let err = read_keys(&p, &spec(&["nope"], KeyCase::Preserve)).expect_err("must fail");
        assert_eq!(
            err,
            TableError::UnknownColumn {
                column: "nope".into(),
                available: vec!["id".into(), "name".into()],
            }
        );
    }

    #[test]
    fn duplicate_header_column_is_ambiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"id,id\n1,2\n");
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        assert!(matches!(err, TableError::AmbiguousColumn { .. }), "{err}");
    }

    #[test]
    fn empty_column_list_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"id\n1\n");
        assert_eq!(
            read_keys(&p, &spec(&[], KeyCase::Preserve)),
            Err(TableError::NoKeyColumns)
        );
    }

    #[test]
    fn malformed_row_reports_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"id,name\n1,x\n2,y\n3\n4,z\n");
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        match err {
            TableError::Malformed { detail, .. } => assert!(detail.contains("line 4"), "{detail}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_reports_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"id,name\n1,x\n2,\xff\xfe\n");
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        match err {
            TableError::Malformed { detail, .. } => assert!(detail.contains("line 3"), "{detail}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn separator_inside_multi_column_value_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "a.csv", b"a,b\n1,2\nx\x1fy,3\n");
        let err = read_keys(&p, &spec(&["a", "b"], KeyCase::Preserve)).expect_err("must fail");
        match err {
            TableError::Malformed { detail, .. } => assert!(detail.contains("line 3"), "{detail}"),
            other => panic!("unexpected {other:?}"),
        }
        // A single key column may contain it.
        assert!(read_keys(&p, &spec(&["a"], KeyCase::Preserve)).is_ok());
    }

    #[test]
    fn oversize_key_and_record_are_too_large() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = "k".repeat(limits::KEY_BYTES_MAX + 1);
        let p = write(
            dir.path(),
            "a.csv",
            format!("id\nshort\n{long}\n").as_bytes(),
        );
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        assert!(
            matches!(
                err,
                TableError::TooLarge {
                    bound: TableBound::KeyBytes,
                    at_row: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        // A huge record without a line break is refused without buffering it whole.
        let mut bytes = b"id,other\n1,".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 4 * CSV_RECORD_BYTES_MAX));
        let p = write(dir.path(), "b.csv", &bytes);
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        assert!(
            matches!(
                err,
                TableError::TooLarge {
                    bound: TableBound::RecordBytes,
                    ..
                }
            ),
            "{err:?}"
        );
        // Past the first batches, the row named is the over-long record's own.
        let mut bytes = b"id,other\n".to_vec();
        for i in 0..(2 * READ_BATCH_ROWS + 951) {
            bytes.extend(format!("{i},x\n").as_bytes());
        }
        bytes.extend(b"big,");
        bytes.extend(std::iter::repeat_n(b'x', 2 * CSV_RECORD_BYTES_MAX));
        bytes.extend(b"\nlast,y\n");
        let p = write(dir.path(), "c.csv", &bytes);
        let err = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect_err("must fail");
        let want = (2 * READ_BATCH_ROWS + 952) as u64;
        assert!(
            matches!(
                err,
                TableError::TooLarge {
                    bound: TableBound::RecordBytes,
                    at_row: Some(r),
                    ..
                } if r == want
            ),
            "{err:?}"
        );
    }

    #[test]
    fn long_header_and_long_records_within_bounds_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wide = "w".repeat(CSV_HEADER_BYTES_MAX - 100);
        let big = "b".repeat(CSV_RECORD_BYTES_MAX - 100);
        let body = format!("id,{wide}\n1,{big}\n2,{big}\n");
        let p = write(dir.path(), "a.csv", body.as_bytes());
        let got = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect("read");
        assert_eq!(keys_of(&got), ["1", "2"]);
        let long_header = format!("id,{}\n1,2\n", "h".repeat(CSV_HEADER_BYTES_MAX));
        let p = write(dir.path(), "b.csv", long_header.as_bytes());
        assert!(matches!(
            read_keys(&p, &spec(&["id"], KeyCase::Preserve)),
            Err(TableError::TooLarge {
                bound: TableBound::HeaderBytes,
                ..
            })
        ));
    }

    #[test]
    fn write_errors_name_the_result_path_and_the_real_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rows = [["a"]];
        let missing = dir.path().join("gone/out.csv");
        let e = write_result_csv(&missing, &["k"], rows).expect_err("missing dir");
        let text = e.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains("/.out.csv."), "{text}");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("write");
        let e = write_result_csv(&file.join("out.csv"), &["k"], rows).expect_err("file as dir");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert!(!e.to_string().contains("/.out.csv."), "{e}");
        let sub = dir.path().join("sub.csv");
        std::fs::create_dir(&sub).expect("mkdir");
        let e = write_result_csv(&sub, &["k"], rows).expect_err("dir in the way");
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(!e.to_string().contains("/.sub.csv."), "{e}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn missing_file_and_bad_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("missing.csv");
        assert_eq!(
            read_keys(&p, &spec(&["id"], KeyCase::Preserve)),
            Err(TableError::NotFound { path: p.clone() })
        );
        let p = write(dir.path(), "a.txt", b"id\n1\n");
        assert!(matches!(
            read_keys(&p, &spec(&["id"], KeyCase::Preserve)),
            Err(TableError::UnsupportedFormat { .. })
        ));
        let sub = dir.path().join("d.csv");
        std::fs::create_dir(&sub).expect("mkdir");
        assert!(matches!(
            read_keys(&sub, &spec(&["id"], KeyCase::Preserve)),
            Err(TableError::NotAFile { .. })
        ));
    }

    #[test]
    fn header_only_gives_zero_rows_and_empty_file_is_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for body in [&b"id,name\n"[..], b"id,name"] {
            let p = write(dir.path(), "h.csv", body);
            let got = read_keys(&p, &spec(&["name"], KeyCase::Preserve)).expect("read");
            assert_eq!(got.rows, 0);
            assert!(got.keys.is_empty());
        }
        let p = write(dir.path(), "e.csv", b"");
        assert!(matches!(
            read_keys(&p, &spec(&["id"], KeyCase::Preserve)),
            Err(TableError::Malformed { .. })
        ));
    }

    #[test]
    fn random_garbage_is_an_error_not_a_panic() {
        use rand::{RngCore as _, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for i in 0..64 {
            let mut bytes = vec![0u8; 1 + (i * 977) % 20_000];
            rng.fill_bytes(&mut bytes);
            for ext in ["csv", "parquet"] {
                let p = write(dir.path(), &format!("g.{ext}"), &bytes);
                assert!(read_keys(&p, &spec(&["id"], KeyCase::Preserve)).is_err());
            }
            // Garbage behind a valid-looking header and a parquet magic suffix.
            let mut csv = b"id\n".to_vec();
            csv.extend_from_slice(&bytes);
            let p = write(dir.path(), "g2.csv", &csv);
            let _ = read_keys(&p, &spec(&["id"], KeyCase::Preserve));
            bytes.extend_from_slice(b"PAR1");
            let p = write(dir.path(), "g2.parquet", &bytes);
            assert!(read_keys(&p, &spec(&["id"], KeyCase::Preserve)).is_err());
        }
    }

    fn write_parquet(path: &Path, batch: &RecordBatch) {
        let file = File::create(path).expect("create");
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(batch).expect("write batch");
        w.close().expect("close");
    }

    #[test]
    fn a_preview_reads_only_its_rows_and_columns_from_csv_and_parquet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut csv = String::from("id,name,score\n");
        for i in 1..=3000 {
            csv.push_str(&format!("{i},\"n, {i}\",{}\n", i * 2));
        }
        let p = write(dir.path(), "d.csv", csv.as_bytes());
        let t = read_preview(&p, &strings(&["score", "id"]), 1025, 1027).expect("csv");
        assert_eq!(t.columns, strings(&["score", "id"]));
        assert_eq!(
            t.rows,
            vec![
                strings(&["2050", "1025"]),
                strings(&["2052", "1026"]),
                strings(&["2054", "1027"])
            ]
        );
        // Every column; past the end gives what there is.
        let t = read_preview(&p, &[], 2999, 3500).expect("csv");
        assert_eq!(t.columns, strings(&["id", "name", "score"]));
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1], strings(&["3000", "n, 3000", "6000"]));
        assert!(
            read_preview(&p, &[], 4000, 4001)
                .expect("csv")
                .rows
                .is_empty()
        );
        assert!(matches!(
            read_preview(&p, &strings(&["nope"]), 1, 2),
            Err(TableError::UnknownColumn { .. })
        ));
        assert!(read_preview(&p, &strings(&["id", "id"]), 1, 2).is_err());
        assert!(read_preview(&p, &[], 0, 2).is_err());
        assert!(read_preview(&p, &[], 3, 2).is_err());

        let n = 5000usize;
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from((1..=n as i64).collect::<Vec<_>>())) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from(
                    (1..=n)
                        .map(|i| (i % 2 == 0).then(|| format!("x{i}")))
                        .collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "ratio",
                Arc::new(arrow_array::Float64Array::from(
                    (1..=n).map(|i| i as f64 / 4.0).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
        ])
        .expect("batch");
        let pq = dir.path().join("d.parquet");
        write_parquet(&pq, &batch);
        let t = read_preview(&pq, &strings(&["ratio", "name"]), 4001, 4002).expect("parquet");
        assert_eq!(
            t.rows,
            vec![strings(&["1000.25", ""]), strings(&["1000.5", "x4002"])]
        );
        let t = read_preview(&pq, &[], 1, 10).expect("parquet");
        assert_eq!(t.columns, strings(&["id", "name", "ratio"]));
        assert_eq!(t.rows.len(), 10);
        assert_eq!(t.rows[0], strings(&["1", "", "0.25"]));
        assert!(!format!("{t:?}").contains("0.25"), "Debug shows no content");
    }

    #[test]
    fn parquet_round_trip_with_strings_and_integers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 3000usize;
        let ids: Vec<Option<String>> = (0..n)
            .map(|i| (i % 7 != 3).then(|| format!(" 00{i} ")))
            .collect();
        let big: Vec<u64> = (0..n).map(|i| u64::MAX - i as u64).collect();
        let signed: Vec<i64> = (0..n).map(|i| -(i as i64)).collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(StringArray::from(ids.clone())) as ArrayRef),
            ("big", Arc::new(UInt64Array::from(big.clone())) as ArrayRef),
            (
                "neg",
                Arc::new(Int64Array::from(signed.clone())) as ArrayRef,
            ),
            (
                "large",
                Arc::new(LargeStringArray::from(vec!["Ab"; n])) as ArrayRef,
            ),
        ])
        .expect("batch");
        for name in ["t.parquet", "t.pq"] {
            let p = dir.path().join(name);
            write_parquet(&p, &batch);
            let got = read_keys(&p, &spec(&["id"], KeyCase::Preserve)).expect("read");
            assert_eq!(got.rows, n as u64);
            let want: Vec<&str> = ids.iter().flatten().map(|s| s.trim()).collect();
            assert_eq!(keys_of(&got), want);
            assert_eq!(got.empty_keys, (n - want.len()) as u64);
            let got = read_keys(&p, &spec(&["big", "neg", "large"], KeyCase::Lower)).expect("read");
            assert_eq!(got.rows, n as u64);
            for (i, k) in got.keys.iter().enumerate() {
                assert_eq!(
                    k,
                    format!("{}\u{1f}{}\u{1f}ab", big[i], signed[i]).as_bytes()
                );
            }
            let err = read_keys(&p, &spec(&["missing"], KeyCase::Preserve)).expect_err("must fail");
            assert_eq!(
                err,
                TableError::UnknownColumn {
                    column: "missing".into(),
                    available: vec!["id".into(), "big".into(), "neg".into(), "large".into()],
                }
            );
        }
    }

    #[test]
    fn parquet_unsupported_type_and_empty_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let batch = RecordBatch::try_from_iter(vec![(
            "f",
            Arc::new(arrow_array::Float64Array::from(vec![1.5])) as ArrayRef,
        )])
        .expect("batch");
        let p = dir.path().join("f.parquet");
        write_parquet(&p, &batch);
        assert!(matches!(
            read_keys(&p, &spec(&["f"], KeyCase::Preserve)),
            Err(TableError::UnsupportedColumnType { .. })
        ));
        // The type is checked from the schema, so an empty file is refused too.
        let p = dir.path().join("e.parquet");
        write_parquet(&p, &batch.slice(0, 0));
        assert!(matches!(
            read_keys(&p, &spec(&["f"], KeyCase::Preserve)),
            Err(TableError::UnsupportedColumnType { .. })
        ));
        let strings = RecordBatch::try_from_iter(vec![(
            "s",
            Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef,
        )])
        .expect("batch");
        let p = dir.path().join("s.parquet");
        write_parquet(&p, &strings);
        let got = read_keys(&p, &spec(&["s"], KeyCase::Preserve)).expect("read");
        assert_eq!(got.rows, 0);
    }

    #[test]
    fn parquet_dictionary_encoded_strings_are_read() {
        use arrow_array::types::Int32Type;
        use arrow_array::{DictionaryArray, Int32Array};
        let dir = tempfile::tempdir().expect("tempdir");
        // What pandas writes for a categorical: Dictionary(Int32, Utf8), with a null.
        let values = StringArray::from(vec!["C002", "c003", " x "]);
        let keys = Int32Array::from(vec![Some(0), Some(2), None, Some(1), Some(0)]);
        let dict = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).expect("dict");
        let batch = RecordBatch::try_from_iter(vec![
            ("cat", Arc::new(dict) as ArrayRef),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef,
            ),
        ])
        .expect("batch");
        let p = dir.path().join("cat.parquet");
        write_parquet(&p, &batch);
        // The file really carries a dictionary column, as the reader sees it.
        let file = File::open(&p).expect("open");
        let b = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        assert!(matches!(
            b.schema().field(0).data_type(),
            DataType::Dictionary(..)
        ));
        let got = read_keys_keeping(&p, &spec(&["cat"], KeyCase::Lower), &strings(&["cat", "n"]))
            .expect("read");
        assert_eq!(keys_of(&got), ["c002", "x", "c003", "c002"]);
        assert_eq!(got.empty_keys, 1);
        assert_eq!(
            got.kept,
            vec![
                strings(&["C002", "1"]),
                strings(&[" x ", "2"]),
                strings(&["c003", "4"]),
                strings(&["C002", "5"])
            ]
        );
    }

    #[test]
    fn key_case_parses_and_serialises() {
        assert_eq!("LOWER".parse::<KeyCase>(), Ok(KeyCase::Lower));
        assert_eq!("preserve".parse::<KeyCase>(), Ok(KeyCase::Preserve));
        assert!("title".parse::<KeyCase>().is_err());
        assert_eq!(KeyCase::default(), KeyCase::Preserve);
        assert_eq!(
            serde_json::to_string(&KeyCase::Upper).expect("json"),
            "\"upper\""
        );
        let s: KeySpec = serde_json::from_str(r#"{"columns":["a"]}"#).expect("json");
        assert_eq!(s.case, KeyCase::Preserve);
        let dbg = format!(
            "{:?}",
            KeyedInput {
                keys: vec![b"secret".to_vec()],
                rows: 1,
                empty_keys: 0,
                kept: vec![strings(&["secret"])],
            }
        );
        assert!(!dbg.contains("secret"));
    }
}
