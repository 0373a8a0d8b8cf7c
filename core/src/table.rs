//! Arrow table input: reads the key columns of a dataset file into normalised key byte strings,
//! and writes a single key column back out as CSV.
//!
//! Supported inputs, chosen by file extension (case-insensitive):
//!
//! * `.csv` — comma separated, a header row is required. Every column is read as Utf8 (types
//!   are never inferred, so `"00123"` stays `"00123"`). Quoting follows RFC 4180; an empty
//!   field counts as null.
//! * `.parquet` / `.pq` — read with the `parquet` Arrow reader; key columns may be Utf8,
//!   LargeUtf8, Utf8View or any integer type (rendered as a decimal string).
//!
//! Files are read in record batches of [`READ_BATCH_ROWS`] rows; only the key columns are
//! decoded. Every value is normalised by trimming (Unicode) whitespace and then applying the
//! [`KeyCase`]. Several key columns are joined, in the order given, with the unit separator byte
//! [`KEY_COLUMN_SEPARATOR`] (0x1F); a value that itself contains that byte is rejected when
//! more than one key column is used, so that joined keys stay unambiguous. Null values become
//! the empty string.
//!
//! Bounds: at most [`limits::DATASET_ROWS_MAX`] rows, keys of at most [`limits::KEY_BYTES_MAX`]
//! bytes, a CSV header of at most [`CSV_HEADER_BYTES_MAX`] bytes and a CSV record of at most
//! [`CSV_RECORD_BYTES_MAX`] bytes (so a file without line breaks cannot make us buffer it whole).
//! Bytes that violate the format produce [`TableError::Malformed`] with the line (CSV) or row
//! (Parquet) number where it is known; nothing read from a file panics.
//!
//! Keys are dataset content and may be personal data: [`KeyedInput`]'s `Debug` output shows only
//! counts.

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
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand_core::{OsRng, RngCore};

use crate::limits;

/// Byte joining the components of a multi-column key (ASCII unit separator).
pub const KEY_COLUMN_SEPARATOR: u8 = 0x1F;
/// Rows per record batch when reading a file.
pub const READ_BATCH_ROWS: usize = 1024;
/// Longest CSV header line accepted, in bytes.
pub const CSV_HEADER_BYTES_MAX: usize = 256 * 1024;
/// Longest CSV record (all fields of one row, key or not) accepted, in bytes.
pub const CSV_RECORD_BYTES_MAX: usize = 256 * 1024;
/// Size of the read buffer used for CSV input, in bytes.
const CSV_READ_BUFFER_BYTES: usize = 64 * 1024;
/// The UTF-8 byte order mark some tools put in front of a CSV header.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Case normalisation applied to every key component after trimming.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KeyCase {
    /// Keep the case as it is in the file.
    #[default]
    Preserve,
    /// Unicode lower case.
    Lower,
    /// Unicode upper case.
    Upper,
}

impl KeyCase {
    /// The lowercase name used by serde, `FromStr` and `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyCase::Preserve => "preserve",
            KeyCase::Lower => "lower",
            KeyCase::Upper => "upper",
        }
    }
}

impl fmt::Display for KeyCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`KeyCase`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key case {value:?}; expected one of: preserve, lower, upper")]
pub struct ParseKeyCaseError {
    /// The rejected input.
    pub value: String,
}

impl FromStr for KeyCase {
    type Err = ParseKeyCaseError;

    /// Accepts `preserve`, `lower` or `upper`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [KeyCase::Preserve, KeyCase::Lower, KeyCase::Upper]
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseKeyCaseError {
                value: s.to_owned(),
            })
    }
}

/// Which columns form the key, and how values are normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySpec {
    /// Key column names, in join order. Must not be empty.
    pub columns: Vec<String>,
    /// Case normalisation (default: preserve).
    #[serde(default)]
    pub case: KeyCase,
}

/// The keys read from one file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyedInput {
    /// One normalised key per row, in file order.
    pub keys: Vec<Vec<u8>>,
    /// Number of data rows read (equals `keys.len()`).
    pub rows: u64,
}

impl fmt::Debug for KeyedInput {
    /// Shows counts only: keys are dataset content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedInput")
            .field("rows", &self.rows)
            .field("keys", &format_args!("<{} keys>", self.keys.len()))
            .finish()
    }
}

/// Which bound a file exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableBound {
    /// More than [`limits::DATASET_ROWS_MAX`] data rows.
    Rows,
    /// A normalised key longer than [`limits::KEY_BYTES_MAX`] bytes.
    KeyBytes,
    /// A CSV header longer than [`CSV_HEADER_BYTES_MAX`] bytes.
    HeaderBytes,
    /// A CSV record longer than [`CSV_RECORD_BYTES_MAX`] bytes.
    RecordBytes,
}

impl fmt::Display for TableBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, max) = match self {
            TableBound::Rows => ("rows", limits::DATASET_ROWS_MAX),
            TableBound::KeyBytes => ("key bytes", limits::KEY_BYTES_MAX),
            TableBound::HeaderBytes => ("CSV header bytes", CSV_HEADER_BYTES_MAX),
            TableBound::RecordBytes => ("CSV record bytes", CSV_RECORD_BYTES_MAX),
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
    #[error("{path}: unsupported file format (expected .csv, .parquet or .pq)")]
    UnsupportedFormat {
        /// The path that was given.
        path: PathBuf,
    },
    /// A key column is not in the file.
    #[error("key column {column:?} not found; available columns: {available:?}")]
    UnknownColumn {
        /// The missing column.
        column: String,
        /// The columns the file has.
        available: Vec<String>,
    },
    /// A key column name occurs more than once in the file's header.
    #[error("{path}: key column {column:?} occurs more than once in the header")]
    AmbiguousColumn {
        /// The file.
        path: PathBuf,
        /// The duplicated column.
        column: String,
    },
    /// A key column has a type that cannot be turned into a key.
    #[error(
        "{path}: key column {column:?} has type {data_type}; expected a string or integer column"
    )]
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
    /// A key handed to [`write_key_column_csv`] is not valid UTF-8.
    #[error("key at index {index} is not valid UTF-8")]
    KeyNotUtf8 {
        /// Index into the key slice.
        index: usize,
    },
    /// The header handed to [`write_key_column_csv`] is empty.
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
/// row, in file order.
pub fn read_keys(path: &Path, spec: &KeySpec) -> Result<KeyedInput, TableError> {
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
        FileFormat::Csv => read_csv(path, file, spec),
        FileFormat::Parquet => read_parquet(path, file, spec),
    }
}

/// Finds the position of each key column among `names`.
fn locate_columns(path: &Path, names: &[String], spec: &KeySpec) -> Result<Vec<usize>, TableError> {
    spec.columns
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

/// Sorted, distinct column indices to decode, and for each key column its position among them.
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

/// Accumulates normalised keys batch by batch.
struct KeyBuilder<'a> {
    path: &'a Path,
    spec: &'a KeySpec,
    label: RowLabel,
    keys: Vec<Vec<u8>>,
    scratch_key: Vec<u8>,
    scratch_text: String,
}

impl fmt::Debug for KeyBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder")
            .field("path", &self.path)
            .field("rows", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Whether a column of this type can be turned into keys (see [`KeyColumn`]).
fn is_supported_key_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
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
            | DataType::UInt64
    )
}

/// One key column of a record batch, viewed as optional strings.
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

/// Appends `raw`, trimmed and case-normalised, to `key`.
fn push_component(key: &mut Vec<u8>, raw: &str, case: KeyCase) {
    let t = raw.trim();
    match case {
        KeyCase::Preserve => key.extend_from_slice(t.as_bytes()),
        KeyCase::Lower if t.is_ascii() => key.extend(t.bytes().map(|b| b.to_ascii_lowercase())),
        KeyCase::Upper if t.is_ascii() => key.extend(t.bytes().map(|b| b.to_ascii_uppercase())),
        KeyCase::Lower => key.extend_from_slice(t.to_lowercase().as_bytes()),
        KeyCase::Upper => key.extend_from_slice(t.to_uppercase().as_bytes()),
    }
}

impl<'a> KeyBuilder<'a> {
    fn new(path: &'a Path, spec: &'a KeySpec, label: RowLabel) -> Self {
        KeyBuilder {
            path,
            spec,
            label,
            keys: Vec::new(),
            scratch_key: Vec::new(),
            scratch_text: String::new(),
        }
    }

    fn row_error(&self, data_row: u64, detail: &str) -> TableError {
        let at = match self.label {
            RowLabel::CsvLine => format!("line {}", data_row.saturating_add(1)),
            RowLabel::ParquetRow => format!("row {data_row}"),
        };
        malformed(self.path, format!("{at}: {detail}"))
    }

    /// Adds the rows of `batch`; `positions[k]` is the batch column of key column `k`.
    fn push_batch(&mut self, batch: &RecordBatch, positions: &[usize]) -> Result<(), TableError> {
        let n = batch.num_rows();
        if self.keys.len().saturating_add(n) > limits::DATASET_ROWS_MAX {
            return Err(TableError::TooLarge {
                path: self.path.to_owned(),
                bound: TableBound::Rows,
                at_row: Some(limits::DATASET_ROWS_MAX as u64 + 1),
            });
        }
        let columns = positions
            .iter()
            .zip(&self.spec.columns)
            .map(|(&p, name)| {
                let array = batch.columns().get(p).ok_or_else(|| {
                    malformed(self.path, format!("column {name:?} missing from a batch"))
                })?;
                if array.len() != n {
                    return Err(malformed(self.path, "inconsistent column lengths"));
                }
                KeyColumn::new(self.path, name, array)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let multi = columns.len() > 1;
        self.keys.reserve(n);
        for row in 0..n {
            let data_row = self.keys.len() as u64 + 1;
            let mut key = std::mem::take(&mut self.scratch_key);
            key.clear();
            for (k, col) in columns.iter().enumerate() {
                if k > 0 {
                    key.push(KEY_COLUMN_SEPARATOR);
                }
                if let Some(raw) = col.value(row, &mut self.scratch_text) {
                    if multi && raw.as_bytes().contains(&KEY_COLUMN_SEPARATOR) {
                        self.scratch_key = key;
                        return Err(self.row_error(
                            data_row,
                            "key value contains the unit separator byte 0x1F",
                        ));
                    }
                    push_component(&mut key, raw, self.spec.case);
                }
                if key.len() > limits::KEY_BYTES_MAX {
                    return Err(TableError::TooLarge {
                        path: self.path.to_owned(),
                        bound: TableBound::KeyBytes,
                        at_row: Some(data_row),
                    });
                }
            }
            self.keys.push(key.as_slice().to_vec());
            self.scratch_key = key;
        }
        Ok(())
    }

    fn finish(self) -> KeyedInput {
        KeyedInput {
            rows: self.keys.len() as u64,
            keys: self.keys,
        }
    }
}

/// Reads the header line (at most [`CSV_HEADER_BYTES_MAX`] bytes) and splits it into names.
/// Returns the column names and the header's length in bytes.
fn read_csv_header(path: &Path, file: &mut File) -> Result<(Vec<String>, usize), TableError> {
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

fn read_csv(path: &Path, mut file: File, spec: &KeySpec) -> Result<KeyedInput, TableError> {
    let (names, header_bytes) = read_csv_header(path, &mut file)?;
    let indices = locate_columns(path, &names, spec)?;
    let (projection, positions) = projection_of(&indices);
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
    let mut builder = KeyBuilder::new(path, spec, RowLabel::CsvLine);
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
                    return Err(TableError::TooLarge {
                        path: path.to_owned(),
                        bound: TableBound::RecordBytes,
                        at_row: Some(builder.keys.len() as u64 + 1),
                    });
                }
            }
            if consumed == 0 || decoder.capacity() == 0 {
                break;
            }
        }
        match decoder.flush().map_err(|e| arrow_error(path, e))? {
            Some(batch) => builder.push_batch(&batch, &positions)?,
            None => break,
        }
    }
    Ok(builder.finish())
}

fn read_parquet(path: &Path, file: File, spec: &KeySpec) -> Result<KeyedInput, TableError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    let total_rows = builder.metadata().file_metadata().num_rows();
    if usize::try_from(total_rows).map_or(true, |r| r > limits::DATASET_ROWS_MAX) {
        return Err(TableError::TooLarge {
            path: path.to_owned(),
            bound: TableBound::Rows,
            at_row: None,
        });
    }
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let indices = locate_columns(path, &names, spec)?;
    for (&i, column) in indices.iter().zip(&spec.columns) {
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
    let mut keys = KeyBuilder::new(path, spec, RowLabel::ParquetRow);
    for batch in reader {
        let batch = batch.map_err(|e| arrow_error(path, e))?;
        keys.push_batch(&batch, &positions)?;
    }
    Ok(keys.finish())
}

/// Appends `field` to `out` as one CSV field, quoted when needed (RFC 4180). Empty fields are
/// written as `""` so that a row is never a blank line.
fn push_csv_field(out: &mut Vec<u8>, field: &str) {
    let needs_quotes = field.is_empty()
        || field
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
        || field.trim() != field;
    if needs_quotes {
        out.push(b'"');
        for b in field.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

/// Writes a one-column CSV file: `header`, then one key per line (keys must be UTF-8).
///
/// The file is written atomically: to a temporary file in the same directory, synced, then
/// renamed over `path`. On error the temporary file is removed and `path` is untouched.
pub fn write_key_column_csv(path: &Path, header: &str, keys: &[Vec<u8>]) -> Result<(), TableError> {
    if header.is_empty() {
        return Err(TableError::EmptyHeader);
    }
    let keys: Vec<&str> = keys
        .iter()
        .enumerate()
        .map(|(index, k)| std::str::from_utf8(k).map_err(|_| TableError::KeyNotUtf8 { index }))
        .collect::<Result<_, _>>()?;
    let file_name = path
        .file_name()
        .ok_or_else(|| TableError::Io(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{:016x}.tmp", OsRng.next_u64()));
    let tmp_path = dir.join(tmp_name);

    // Errors name the user's `path`, never the hidden temporary file.
    let result = write_csv_to(&tmp_path, header, &keys)
        .and_then(|()| std::fs::rename(&tmp_path, path))
        .map_err(|e| write_error(path, e));
    match result {
        Ok(()) => {
            // Best effort: persist the rename itself.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            Err(e)
        }
    }
}

/// An error writing the result file `path`, in terms of `path` and its directory: a missing
/// or non-directory parent and a directory in the way are said as such.
fn write_error(path: &Path, e: io::Error) -> TableError {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let cause = if !dir.exists() {
        format!("the directory {} does not exist", dir.display())
    } else if !dir.is_dir() {
        format!("{} is not a directory", dir.display())
    } else if path.is_dir() {
        format!("{} is a directory", path.display())
    } else {
        match e.kind() {
            io::ErrorKind::PermissionDenied => {
                format!("permission denied in {}", dir.display())
            }
            _ => e.to_string(),
        }
    };
    TableError::Io(format!("writing {}: {cause}", path.display()))
}

fn write_csv_to(tmp_path: &Path, header: &str, keys: &[&str]) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp_path)?;
    let mut w = BufWriter::new(file);
    let mut line = Vec::with_capacity(256);
    for field in std::iter::once(header).chain(keys.iter().copied()) {
        line.clear();
        push_csv_field(&mut line, field);
        line.push(b'\n');
        w.write_all(&line)?;
    }
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
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
        }
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
        assert_eq!(keys_of(&got), ["00123", "42", "a,b", ""]);
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
        assert_eq!(
            keys_of(&got),
            ["0123\u{1f}alice@example.com", "\u{1f}école@x.fr"]
        );
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
        write_key_column_csv(&p, "key", &keys).expect("write");
        let got = read_keys(&p, &spec(&["key"], KeyCase::Preserve)).expect("read");
        assert_eq!(got.rows, 5000);
        assert_eq!(got.keys, keys);
    }

    #[test]
    fn csv_write_round_trip_with_quoting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys: Vec<Vec<u8>> = vec![
            b"plain".to_vec(),
            b"with,comma".to_vec(),
            b"with \"quote\"".to_vec(),
            b"line\nbreak".to_vec(),
            b"".to_vec(),
            b"a\x1fb".to_vec(),
        ];
        let p = dir.path().join("keys.csv");
        write_key_column_csv(&p, "the key", &keys).expect("write");
        // Overwrite works too, and leaves no temporary files behind.
        write_key_column_csv(&p, "the key", &keys).expect("rewrite");
        let entries = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(entries, 1);
        let got = read_keys(&p, &spec(&["the key"], KeyCase::Preserve)).expect("read");
        assert_eq!(got.keys, keys);
    }

    #[test]
    fn write_rejects_non_utf8_and_empty_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.csv");
        assert_eq!(
            write_key_column_csv(&p, "k", &[b"ok".to_vec(), vec![0xff]]),
            Err(TableError::KeyNotUtf8 { index: 1 })
        );
        assert_eq!(
            write_key_column_csv(&p, "", &[]),
            Err(TableError::EmptyHeader)
        );
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
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
        let keys = [b"a".to_vec()];
        let missing = dir.path().join("gone/out.csv");
        let e = write_key_column_csv(&missing, "k", &keys).expect_err("missing dir");
        let text = e.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(!text.contains("/.out.csv."), "{text}");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("write");
        let e = write_key_column_csv(&file.join("out.csv"), "k", &keys).expect_err("file as dir");
        assert!(e.to_string().contains("is not a directory"), "{e}");
        assert!(!e.to_string().contains("/.out.csv."), "{e}");
        let sub = dir.path().join("sub.csv");
        std::fs::create_dir(&sub).expect("mkdir");
        let e = write_key_column_csv(&sub, "k", &keys).expect_err("dir in the way");
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
            for (i, k) in got.keys.iter().enumerate() {
                let want = ids[i].as_deref().map(str::trim).unwrap_or("");
                assert_eq!(k, want.as_bytes());
            }
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
                rows: 1
            }
        );
        assert!(!dbg.contains("secret"));
    }
}
