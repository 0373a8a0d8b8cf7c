//! A provider's training table: reads the feature columns and a binary label column of a CSV or
//! Parquet file (Arrow readers) into a [`Dataset`] of `f64` features and `0`/`1` labels.
//!
//! * **Formats**, by extension as in [`tessera_core::table`]: `.csv` (comma separated, header
//!   row required, every cell read as text and parsed here, so a bad cell is reported with its
//!   column and data row) and `.parquet` / `.pq` (integer, float, decimal and boolean columns
//!   are cast to `f64`; text columns are parsed like CSV cells). `tessera_core::table`'s
//!   reader is made for key columns (text or integers, normalised, up to `DATASET_ROWS_MAX`
//!   rows) and refuses float columns, so this module reads the numbers itself, with the same
//!   CSV bounds ([`CSV_HEADER_BYTES_MAX`], [`CSV_RECORD_BYTES_MAX`]) and batch size. Within a
//!   batch of rows, columns are checked in spec order, so the error reported is the first bad
//!   cell of the first bad column.
//! * **Bounds**: at most [`DataSpec::rows_max`] data rows (a Parquet file is refused from its
//!   footer before any row is read; a CSV file as soon as a batch crosses the bound), at most
//!   [`FEATURES_MAX`] feature columns. Nothing read from a file panics.
//! * **Values**: a feature is any finite number (`"1.5"`, `"-2e3"`; surrounding whitespace is
//!   trimmed); an empty cell or a null is [`DataError::MissingValue`]. A label is `0` or `1`
//!   (also `0.0`/`1.0`, `true`/`false`); anything else is [`DataError::Label`]. The error
//!   quotes at most [`QUOTED_CHARS_MAX`] characters of the offending cell.
//!
//! # Standardisation
//!
//! In a federated job no party sees the global mean and variance of a feature, and
//! standardising each provider's table by its own statistics would put the providers' features
//! on different scales (a non-IID split makes that visible in the model). So features are used
//! **as they are** ([`Standardisation::None`]) or with a mean and scale **given by the job**
//! ([`Standardisation::Given`]): public reference values, or the global moments computed
//! beforehand through one secure-aggregation round of `(n_k, Σx, Σx²)` ([`crate::moments`]).
//! Per-provider standardisation is deliberately not offered.
//!
//! A [`Dataset`]'s `Debug` shows its shape only: the rows are the provider's data.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_csv::reader::{Format, ReaderBuilder};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tessera_core::table::{CSV_HEADER_BYTES_MAX, CSV_RECORD_BYTES_MAX, READ_BATCH_ROWS};

/// Most feature columns in one table.
pub const FEATURES_MAX: usize = 4096;
/// Most characters of a bad cell quoted in an error.
pub const QUOTED_CHARS_MAX: usize = 32;
/// The UTF-8 byte order mark some tools put in front of a CSV header.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Read buffer for CSV input, in bytes.
const CSV_READ_BUFFER_BYTES: usize = 64 * 1024;

/// How features are scaled after reading (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Standardisation {
    /// Features as in the file.
    #[default]
    None,
    /// `x' = (x − mean) / scale`, per feature, with values given by the job (the same for every
    /// provider). Each scale must be finite and positive.
    Given {
        /// One mean per feature column.
        mean: Vec<f64>,
        /// One scale (standard deviation) per feature column.
        scale: Vec<f64>,
    },
}

/// Which columns to read and the bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// Feature column names, in model order (1 ..= [`FEATURES_MAX`], distinct).
    pub features: Vec<String>,
    /// The binary label column (not among the features).
    pub label: String,
    /// Most data rows accepted; a larger table is refused.
    pub rows_max: usize,
    /// Scaling applied to the features.
    pub standardisation: Standardisation,
}

/// Why a table could not be read as a training set. One variant per failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The spec is unusable (no features, a duplicate name, the label among the features, a
    /// standardisation of the wrong length or with a non-positive scale, `rows_max` 0).
    #[error("invalid data spec: {0}")]
    Spec(String),
    /// The file does not exist.
    #[error("{path}: file not found")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The extension is not `.csv`, `.parquet` or `.pq`.
    #[error("{path}: unsupported file format (expected .csv, .parquet or .pq)")]
    UnsupportedFormat {
        /// The path.
        path: PathBuf,
    },
    /// A named column is not in the file.
    #[error("column {column:?} not found; available columns: {available:?}")]
    MissingColumn {
        /// The missing column.
        column: String,
        /// The file's columns.
        available: Vec<String>,
    },
    /// A named column occurs more than once in the file.
    #[error("column {column:?} occurs more than once in the file")]
    AmbiguousColumn {
        /// The column.
        column: String,
    },
    /// A Parquet column whose type cannot be read as a number.
    #[error("column {column:?} has type {data_type}; expected a number, boolean or text column")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// An empty cell or a null.
    #[error("column {column:?}, data row {row}: missing value")]
    MissingValue {
        /// The column.
        column: String,
        /// 1-based data row.
        row: u64,
    },
    /// A feature cell that is not a finite number.
    #[error("column {column:?}, data row {row}: {value:?} is not a finite number")]
    NotNumeric {
        /// The column.
        column: String,
        /// 1-based data row.
        row: u64,
        /// The cell, cut to [`QUOTED_CHARS_MAX`] characters.
        value: String,
    },
    /// A label that is not 0 or 1.
    #[error("label column {column:?}, data row {row}: {value:?} is not 0 or 1")]
    Label {
        /// The label column.
        column: String,
        /// 1-based data row.
        row: u64,
        /// The cell, cut to [`QUOTED_CHARS_MAX`] characters.
        value: String,
    },
    /// The table has no data row.
    #[error("{path}: the table has no data rows")]
    Empty {
        /// The path.
        path: PathBuf,
    },
    /// More data rows than [`DataSpec::rows_max`].
    #[error("{path}: more than {rows_max} data rows")]
    TooManyRows {
        /// The path.
        path: PathBuf,
        /// The bound.
        rows_max: usize,
    },
    /// A CSV header or record longer than the bound.
    #[error("{path}: a CSV {what} longer than {bytes_max} bytes")]
    TooLong {
        /// The path.
        path: PathBuf,
        /// `header` or `record`.
        what: &'static str,
        /// The bound.
        bytes_max: usize,
    },
    /// The bytes do not form a valid file of the format.
    #[error("{path}: malformed input: {detail}")]
    Malformed {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Features and labels of different lengths, or a non-finite value, handed to
    /// [`Dataset::new`].
    #[error("invalid dataset: {0}")]
    Shape(String),
    /// An operating-system I/O failure (the message includes the path).
    #[error("I/O error: {0}")]
    Io(String),
}

/// Features (`rows × features`) and binary labels (`0.0` / `1.0`). `Debug` shows the shape only.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    x: Array2<f64>,
    y: Array1<f64>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("rows", &self.rows())
            .field("features", &self.features())
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// A dataset from features and labels. Errors: [`DataError::Shape`] for different row
    /// counts, no rows, no features, a non-finite feature or a label other than 0 or 1.
    pub fn new(x: Array2<f64>, y: Array1<f64>) -> Result<Dataset, DataError> {
        if x.nrows() != y.len() || x.nrows() == 0 || x.ncols() == 0 {
            return Err(DataError::Shape(format!(
                "{} × {} features with {} labels",
                x.nrows(),
                x.ncols(),
                y.len()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(DataError::Shape("a feature is not finite".into()));
        }
        if y.iter().any(|&v| v != 0.0 && v != 1.0) {
            return Err(DataError::Shape("a label is not 0 or 1".into()));
        }
        Ok(Dataset { x, y })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.x.nrows()
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.x.ncols()
    }

    /// The features.
    pub fn x(&self) -> ArrayView2<'_, f64> {
        self.x.view()
    }

    /// The labels.
    pub fn y(&self) -> ArrayView1<'_, f64> {
        self.y.view()
    }

    /// The rows at `indices` (in that order), as a new dataset.
    pub fn select(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.rows()) {
            return Err(DataError::Shape(format!(
                "row {i} of a {}-row dataset",
                self.rows()
            )));
        }
        Dataset::new(
            self.x.select(Axis(0), indices),
            self.y.select(Axis(0), indices),
        )
    }

    /// Rows of several datasets one after the other (the centralised baseline's union).
    pub fn concat(parts: &[&Dataset]) -> Result<Dataset, DataError> {
        let xs: Vec<ArrayView2<'_, f64>> = parts.iter().map(|d| d.x.view()).collect();
        let ys: Vec<ArrayView1<'_, f64>> = parts.iter().map(|d| d.y.view()).collect();
        let x = ndarray::concatenate(Axis(0), &xs).map_err(|e| DataError::Shape(e.to_string()))?;
        let y = ndarray::concatenate(Axis(0), &ys).map_err(|e| DataError::Shape(e.to_string()))?;
        Dataset::new(x, y)
    }

    /// Applies a standardisation in place.
    pub fn standardise(&mut self, s: &Standardisation) -> Result<(), DataError> {
        check_standardisation(s, self.features())?;
        if let Standardisation::Given { mean, scale } = s {
            for (mut col, (m, sc)) in self.x.columns_mut().into_iter().zip(mean.iter().zip(scale)) {
                col.mapv_inplace(|v| (v - m) / sc);
            }
        }
        Ok(())
    }
}

fn check_standardisation(s: &Standardisation, features: usize) -> Result<(), DataError> {
    if let Standardisation::Given { mean, scale } = s {
        if mean.len() != features || scale.len() != features {
            return Err(DataError::Spec(format!(
                "standardisation has {} means and {} scales for {features} features",
                mean.len(),
                scale.len()
            )));
        }
        if mean.iter().any(|m| !m.is_finite()) || scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(DataError::Spec(
                "standardisation: means must be finite, scales finite and positive".into(),
            ));
        }
    }
    Ok(())
}

impl DataSpec {
    fn validate(&self) -> Result<(), DataError> {
        let bad = |m: String| Err(DataError::Spec(m));
        if self.features.is_empty() || self.features.len() > FEATURES_MAX {
            return bad(format!(
                "{} feature columns; expected 1 ..= {FEATURES_MAX}",
                self.features.len()
            ));
        }
        if self.rows_max == 0 {
            return bad("rows_max is 0".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.features {
            if !seen.insert(f) {
                return bad(format!("feature column {f:?} named twice"));
            }
        }
        if seen.contains(&self.label) {
            return bad(format!("label column {:?} is also a feature", self.label));
        }
        check_standardisation(&self.standardisation, self.features.len())
    }

    /// The columns read: the features, then the label.
    fn columns(&self) -> Vec<String> {
        self.features
            .iter()
            .chain(std::iter::once(&self.label))
            .cloned()
            .collect()
    }
}

/// Reads `path` (CSV or Parquet, by extension) as `spec` says, and standardises it.
///
/// Errors: [`DataError`] for a bad spec, a missing or unreadable file, a missing, ambiguous or
/// unsupported column, a missing or non-numeric cell, a label other than 0/1, an empty table,
/// too many rows or malformed bytes.
pub fn read_dataset(path: &Path, spec: &DataSpec) -> Result<Dataset, DataError> {
    spec.validate()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let csv = match ext.as_deref() {
        Some("csv") => true,
        Some("parquet") | Some("pq") => false,
        _ => {
            return Err(DataError::UnsupportedFormat {
                path: path.to_owned(),
            });
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(DataError::Io(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut sink = Sink::new(path, spec);
    if csv {
        read_csv(path, file, spec, &mut sink)?;
    } else {
        read_parquet(path, file, spec, &mut sink)?;
    }
    let mut data = sink.finish()?;
    data.standardise(&spec.standardisation)?;
    Ok(data)
}

fn io_error(path: &Path, e: io::Error) -> DataError {
    if e.kind() == io::ErrorKind::NotFound {
        DataError::NotFound {
            path: path.to_owned(),
        }
    } else {
        DataError::Io(format!("{}: {e}", path.display()))
    }
}

fn malformed(path: &Path, detail: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

fn arrow_error(path: &Path, e: ArrowError) -> DataError {
    match e {
        ArrowError::IoError(msg, _) => DataError::Io(format!("{}: {msg}", path.display())),
        other => malformed(path, other.to_string()),
    }
}

fn quote(cell: &str) -> String {
    cell.chars().take(QUOTED_CHARS_MAX).collect()
}

/// Finds each wanted column among `names`; errors on a missing or repeated one.
fn locate(names: &[String], wanted: &[String]) -> Result<Vec<usize>, DataError> {
    wanted
        .iter()
        .map(|w| {
            let mut hits = names.iter().enumerate().filter(|(_, n)| *n == w);
            match (hits.next(), hits.next()) {
                (Some((i, _)), None) => Ok(i),
                (Some(_), Some(_)) => Err(DataError::AmbiguousColumn { column: w.clone() }),
                (None, _) => Err(DataError::MissingColumn {
                    column: w.clone(),
                    available: names.to_vec(),
                }),
            }
        })
        .collect()
}

/// Collects rows, row-major, checking the bound as batches arrive.
struct Sink<'a> {
    path: &'a Path,
    spec: &'a DataSpec,
    x: Vec<f64>,
    y: Vec<f64>,
}

impl<'a> Sink<'a> {
    fn new(path: &'a Path, spec: &'a DataSpec) -> Self {
        Sink {
            path,
            spec,
            x: Vec::new(),
            y: Vec::new(),
        }
    }

    fn rows(&self) -> usize {
        self.y.len()
    }

    /// Takes one batch whose columns are the spec's columns in order (features, then label).
    fn push(&mut self, columns: &[ArrayRef]) -> Result<(), DataError> {
        let n = columns.first().map_or(0, |c| c.len());
        if self.rows().saturating_add(n) > self.spec.rows_max {
            return Err(DataError::TooManyRows {
                path: self.path.to_owned(),
                rows_max: self.spec.rows_max,
            });
        }
        let names = self.spec.columns();
        let first_row = self.rows() as u64 + 1;
        let mut values: Vec<Vec<f64>> = Vec::with_capacity(columns.len());
        for (i, (col, name)) in columns.iter().zip(&names).enumerate() {
            let label = i + 1 == columns.len();
            values.push(column_values(col, name, label, first_row)?);
        }
        let (feats, label) = values.split_at(values.len().saturating_sub(1));
        for r in 0..n {
            for f in feats {
                self.x.push(f.get(r).copied().unwrap_or(f64::NAN));
            }
        }
        if let Some(l) = label.first() {
            self.y.extend_from_slice(l);
        }
        Ok(())
    }

    fn finish(self) -> Result<Dataset, DataError> {
        if self.y.is_empty() {
            return Err(DataError::Empty {
                path: self.path.to_owned(),
            });
        }
        let x = Array2::from_shape_vec((self.y.len(), self.spec.features.len()), self.x)
            .map_err(|e| DataError::Shape(e.to_string()))?;
        Dataset::new(x, Array1::from(self.y))
    }
}

/// One column of a batch as numbers: text parsed, numbers and booleans cast.
fn column_values(
    col: &ArrayRef,
    name: &str,
    label: bool,
    first_row: u64,
) -> Result<Vec<f64>, DataError> {
    let missing = |r: usize| DataError::MissingValue {
        column: name.to_owned(),
        row: first_row + r as u64,
    };
    let text: Option<Vec<Option<&str>>> = match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().iter().collect()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().iter().collect()),
        DataType::Utf8View => Some(col.as_string_view().iter().collect()),
        _ => None,
    };
    if let Some(cells) = text {
        return cells
            .iter()
            .enumerate()
            .map(|(r, cell)| {
                let cell = cell.map(str::trim).filter(|c| !c.is_empty());
                let cell = cell.ok_or_else(|| missing(r))?;
                parse_cell(cell, name, label, first_row + r as u64)
            })
            .collect();
    }
    let numeric = col.data_type().is_numeric() || *col.data_type() == DataType::Boolean;
    if !numeric {
        return Err(DataError::UnsupportedType {
            column: name.to_owned(),
            data_type: col.data_type().to_string(),
        });
    }
    let cast =
        arrow_cast::cast(col, &DataType::Float64).map_err(|e| DataError::UnsupportedType {
            column: name.to_owned(),
            data_type: format!("{} ({e})", col.data_type()),
        })?;
    let floats = cast.as_primitive::<Float64Type>();
    (0..floats.len())
        .map(|r| {
            if floats.is_null(r) {
                return Err(missing(r));
            }
            let v = floats.value(r);
            check_value(v, &v.to_string(), name, label, first_row + r as u64)
        })
        .collect()
}

fn parse_cell(cell: &str, name: &str, label: bool, row: u64) -> Result<f64, DataError> {
    let v = match (label, cell.to_ascii_lowercase().as_str()) {
        (true, "true") => 1.0,
        (true, "false") => 0.0,
        _ => cell.parse::<f64>().unwrap_or(f64::NAN),
    };
    check_value(v, cell, name, label, row)
}

fn check_value(v: f64, cell: &str, name: &str, label: bool, row: u64) -> Result<f64, DataError> {
    if label {
        if v == 0.0 || v == 1.0 {
            return Ok(v);
        }
        return Err(DataError::Label {
            column: name.to_owned(),
            row,
            value: quote(cell),
        });
    }
    if !v.is_finite() {
        return Err(DataError::NotNumeric {
            column: name.to_owned(),
            row,
            value: quote(cell),
        });
    }
    Ok(v)
}

/// Reads the CSV header line (bounded) and returns the column names and its length in bytes.
fn csv_header(path: &Path, file: &mut File) -> Result<(Vec<String>, usize), DataError> {
    let mut line = Vec::new();
    BufReader::new(Read::by_ref(file).take(CSV_HEADER_BYTES_MAX as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error(path, e))?;
    if line.len() > CSV_HEADER_BYTES_MAX {
        return Err(DataError::TooLong {
            path: path.to_owned(),
            what: "header",
            bytes_max: CSV_HEADER_BYTES_MAX,
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

/// The CSV decoder loop of `tessera_core::table` (record bytes bounded while decoding), with
/// every cell as text and the wanted columns projected.
fn read_csv(
    path: &Path,
    mut file: File,
    spec: &DataSpec,
    sink: &mut Sink<'_>,
) -> Result<(), DataError> {
    let (names, header_bytes) = csv_header(path, &mut file)?;
    let indices = locate(&names, &spec.columns())?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error(path, e))?;
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    // Projection must be sorted and distinct for the decoder; remember where each wanted
    // column lands.
    let mut projection = indices.clone();
    projection.sort_unstable();
    let positions: Vec<usize> = indices
        .iter()
        .map(|i| projection.binary_search(i).unwrap_or(0))
        .collect();
    let mut decoder = ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(READ_BATCH_ROWS)
        .with_projection(projection)
        .build_decoder();
    let mut reader = BufReader::with_capacity(CSV_READ_BUFFER_BYTES, file);
    let mut partial_record_bytes: usize = 0;
    let mut allowance = CSV_RECORD_BYTES_MAX + header_bytes;
    loop {
        loop {
            let buf = reader.fill_buf().map_err(|e| io_error(path, e))?;
            let before = decoder.capacity();
            let consumed = decoder.decode(buf).map_err(|e| arrow_error(path, e))?;
            reader.consume(consumed);
            if decoder.capacity() != before {
                partial_record_bytes = 0;
                allowance = CSV_RECORD_BYTES_MAX;
            } else {
                partial_record_bytes = partial_record_bytes.saturating_add(consumed);
                if partial_record_bytes > allowance {
                    return Err(DataError::TooLong {
                        path: path.to_owned(),
                        what: "record",
                        bytes_max: CSV_RECORD_BYTES_MAX,
                    });
                }
            }
            if consumed == 0 || decoder.capacity() == 0 {
                break;
            }
        }
        match decoder.flush().map_err(|e| arrow_error(path, e))? {
            Some(batch) => sink.push(&pick(&batch, &positions))?,
            None => return Ok(()),
        }
    }
}

fn pick(batch: &RecordBatch, positions: &[usize]) -> Vec<ArrayRef> {
    positions
        .iter()
        .filter_map(|&p| batch.columns().get(p).cloned())
        .collect()
}

fn read_parquet(
    path: &Path,
    file: File,
    spec: &DataSpec,
    sink: &mut Sink<'_>,
) -> Result<(), DataError> {
    let parquet_error = |e: parquet::errors::ParquetError| malformed(path, e.to_string());
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let rows = builder.metadata().file_metadata().num_rows();
    if usize::try_from(rows).map_or(true, |r| r > spec.rows_max) {
        return Err(DataError::TooManyRows {
            path: path.to_owned(),
            rows_max: spec.rows_max,
        });
    }
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let indices = locate(&names, &spec.columns())?;
    let mut projection = indices.clone();
    projection.sort_unstable();
    let positions: Vec<usize> = indices
        .iter()
        .map(|i| projection.binary_search(i).unwrap_or(0))
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), projection);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(parquet_error)?;
    for batch in reader {
        let batch = batch.map_err(|e| arrow_error(path, e))?;
        sink.push(&pick(&batch, &positions))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BooleanArray, Float32Array, Float64Array, Int64Array, StringArray};
    use parquet::arrow::ArrowWriter;

    fn spec(features: &[&str], label: &str) -> DataSpec {
        DataSpec {
            features: features.iter().map(|s| s.to_string()).collect(),
            label: label.into(),
            rows_max: 100,
            standardisation: Standardisation::None,
        }
    }

    fn csv(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        p
    }

    /// Reads `body` as CSV with features `a, b` and label `y`; expects `Ok(x, y)` or an error.
    fn check(body: &str, spec: &DataSpec, expected: Result<(Vec<f64>, Vec<f64>), DataError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = csv(&dir, "t.csv", body);
        let got = read_dataset(&path, spec).map(|d| {
            (
                d.x().iter().copied().collect::<Vec<_>>(),
                d.y().iter().copied().collect::<Vec<_>>(),
            )
        });
        let expected = expected.map_err(|e| match e {
            DataError::Empty { .. } => DataError::Empty { path: path.clone() },
            DataError::TooManyRows { rows_max, .. } => DataError::TooManyRows {
                path: path.clone(),
                rows_max,
            },
            other => other,
        });
        assert_eq!(got, expected, "{body:?}");
    }

    #[test]
    fn csv_tables_read_or_fail_with_typed_errors() {
        let s = spec(&["a", "b"], "y");
        let ok = |x: &[f64], y: &[f64]| Ok((x.to_vec(), y.to_vec()));
        check(
            "id,b,y,a\nk1, 2.5 ,1,-1\nk2,3e2,0,0.5\nk3,4,true,7\n",
            &s,
            ok(&[-1.0, 2.5, 0.5, 300.0, 7.0, 4.0], &[1.0, 0.0, 1.0]),
        );
        check("\u{feff}a,b,y\n1,2,1.0\n", &s, ok(&[1.0, 2.0], &[1.0]));
        check(
            "a,c,y\n1,2,1\n",
            &s,
            Err(DataError::MissingColumn {
                column: "b".into(),
                available: vec!["a".into(), "c".into(), "y".into()],
            }),
        );
        check(
            "a,b,b,y\n1,2,3,1\n",
            &s,
            Err(DataError::AmbiguousColumn { column: "b".into() }),
        );
        check(
            "a,b,y\n1,2,1\n1,x2,0\n",
            &s,
            Err(DataError::NotNumeric {
                column: "b".into(),
                row: 2,
                value: "x2".into(),
            }),
        );
        check(
            "a,b,y\n1,inf,1\n",
            &s,
            Err(DataError::NotNumeric {
                column: "b".into(),
                row: 1,
                value: "inf".into(),
            }),
        );
        check(
            "a,b,y\n1,,1\n",
            &s,
            Err(DataError::MissingValue {
                column: "b".into(),
                row: 1,
            }),
        );
        check(
            "a,b,y\n1,2,1\n1,2,2\n",
            &s,
            Err(DataError::Label {
                column: "y".into(),
                row: 2,
                value: "2".into(),
            }),
        );
        check(
            "a,b,y\n",
            &s,
            Err(DataError::Empty {
                path: PathBuf::new(),
            }),
        );
        let rows: String = (0..101).map(|i| format!("{i},1,0\n")).collect();
        check(
            &format!("a,b,y\n{rows}"),
            &s,
            Err(DataError::TooManyRows {
                path: PathBuf::new(),
                rows_max: 100,
            }),
        );
    }

    #[test]
    fn bad_specs_and_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = csv(&dir, "t.csv", "a,b,y\n1,2,1\n");
        let refused = |s: DataSpec| matches!(read_dataset(&path, &s), Err(DataError::Spec(_)));
        assert!(refused(spec(&[], "y")));
        assert!(refused(spec(&["a", "a"], "y")));
        assert!(refused(spec(&["a", "y"], "y")));
        assert!(refused(DataSpec {
            rows_max: 0,
            ..spec(&["a"], "y")
        }));
        assert!(refused(DataSpec {
            standardisation: Standardisation::Given {
                mean: vec![0.0],
                scale: vec![0.0],
            },
            ..spec(&["a"], "y")
        }));
        let s = spec(&["a", "b"], "y");
        assert!(matches!(
            read_dataset(&dir.path().join("none.csv"), &s),
            Err(DataError::NotFound { .. })
        ));
        assert!(matches!(
            read_dataset(&dir.path().join("t.json"), &s),
            Err(DataError::UnsupportedFormat { .. })
        ));
        // A record without a line break is refused without buffering it whole (the bound is
        // checked per read buffer, so the test uses four times it).
        let long = csv(
            &dir,
            "long.csv",
            &format!("a,b,y\n1,{}", "9".repeat(4 * CSV_RECORD_BYTES_MAX)),
        );
        assert!(matches!(
            read_dataset(&long, &s),
            Err(DataError::TooLong { what: "record", .. })
        ));
        let quote = csv(&dir, "q.csv", "a,b,y\n\"1,2,1\n");
        assert!(matches!(
            read_dataset(&quote, &s),
            Err(DataError::Malformed { .. })
        ));
    }

    #[test]
    fn standardisation_given_by_the_job_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = csv(&dir, "t.csv", "a,b,y\n1,10,1\n3,30,0\n");
        let s = DataSpec {
            standardisation: Standardisation::Given {
                mean: vec![2.0, 20.0],
                scale: vec![1.0, 10.0],
            },
            ..spec(&["a", "b"], "y")
        };
        let d = read_dataset(&path, &s).expect("read");
        assert_eq!(
            d.x().iter().copied().collect::<Vec<_>>(),
            vec![-1.0, -1.0, 1.0, 1.0]
        );
    }

    fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).expect("batch");
        let file = File::create(path).expect("create");
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    #[test]
    fn parquet_numbers_booleans_and_text_are_read_and_bad_columns_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.parquet");
        write_parquet(
            &path,
            vec![
                (
                    "f",
                    Arc::new(Float32Array::from(vec![0.5, -1.0])) as ArrayRef,
                ),
                ("i", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef),
                (
                    "t",
                    Arc::new(StringArray::from(vec!["1.25", "2"])) as ArrayRef,
                ),
                (
                    "y",
                    Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef,
                ),
            ],
        );
        let d = read_dataset(&path, &spec(&["t", "i", "f"], "y")).expect("read");
        assert_eq!(
            d.x().iter().copied().collect::<Vec<_>>(),
            vec![1.25, 3.0, 0.5, 2.0, 4.0, -1.0]
        );
        assert_eq!(d.y().to_vec(), vec![1.0, 0.0]);

        let bad = dir.path().join("bad.pq");
        write_parquet(
            &bad,
            vec![
                (
                    "f",
                    Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef,
                ),
                ("y", Arc::new(Int64Array::from(vec![1, 3])) as ArrayRef),
                (
                    "d",
                    Arc::new(arrow_array::Date32Array::from(vec![1, 2])) as ArrayRef,
                ),
            ],
        );
        assert_eq!(
            read_dataset(&bad, &spec(&["f"], "y")),
            Err(DataError::MissingValue {
                column: "f".into(),
                row: 2
            })
        );
        assert!(matches!(
            read_dataset(&bad, &spec(&["d"], "y")),
            Err(DataError::UnsupportedType { .. })
        ));
        assert_eq!(
            read_dataset(&bad, &spec(&["x"], "y")),
            Err(DataError::MissingColumn {
                column: "x".into(),
                available: vec!["f".into(), "y".into(), "d".into()],
            })
        );
        let small = DataSpec {
            rows_max: 1,
            ..spec(&["f"], "y")
        };
        assert!(matches!(
            read_dataset(&bad, &small),
            Err(DataError::TooManyRows { rows_max: 1, .. })
        ));
        let garbage = dir.path().join("g.parquet");
        std::fs::write(&garbage, b"not a parquet file at all").expect("write");
        assert!(matches!(
            read_dataset(&garbage, &spec(&["f"], "y")),
            Err(DataError::Malformed { .. })
        ));
    }
}
