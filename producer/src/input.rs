//! Transactions from files: CSV with a header row, or JSON Lines (one object per line), of
//! card transactions as described below; or pre-featurised CSV ([`InputFormat::Features`],
//! schema in [`crate::features`]).
//!
//! # Schema
//!
//! One row (CSV) or object (JSON Lines) per transaction. Column names are the JSON keys; JSON
//! values may be strings, numbers or booleans (`null` = absent). Unknown columns are ignored.
//!
//! | column | required | format |
//! |---|---|---|
//! | `id` | yes | transaction id, 1-128 bytes, unique in the run |
//! | `event_time` | yes | RFC 3339 (`2025-01-01T12:00:00Z`, `2025-01-01T13:00:00.5+01:00`) or integer Unix microseconds |
//! | `customer_id` | yes | text |
//! | `pan` | yes | the clear card number, 1-19 digits (spaces and dashes ignored); the producer encrypts it. It is *not* Luhn-checked here: that is the workers' job |
//! | `expiry` | yes | `MM/YY` or `MM/YYYY` |
//! | `amount` | yes | decimal in major units, at most 2 decimals, ≥ 0: `12.34` |
//! | `currency` | yes | ISO 4217, 3 letters |
//! | `merchant_id` | yes | text |
//! | `mcc` | yes | ISO 18245 code, 0-9999 |
//! | `terminal_id` | no | text (default empty) |
//! | `merchant_country` | yes | ISO 3166-1 alpha-2, 2 letters |
//! | `channel` | yes | `card_present`, `ecommerce` or `moto` |
//! | `entry_mode` | yes | `chip`, `contactless`, `magstripe`, `manual` or `ecommerce` |
//! | `three_ds` | no | boolean (`true/false`, `1/0`, `yes/no`), default false |
//! | `cvv_present` | no | boolean, default false |
//! | `local_hour` | no | 0-23; default: the UTC hour of `event_time` |
//! | `is_fraud` | no | boolean: ground truth, sent to the `labels` stream only |
//! | `scenario` | no | fraud scenario name, `labels` stream only (implies `is_fraud = true` when `is_fraud` is empty) |
//!
//! A row gets a label record only when it has `is_fraud` or `scenario`.
//!
//! # Errors
//!
//! A row that does not match is a [`BadRow`] naming its line number (1-based, the CSV header
//! is line 1), the column and the reason. A transaction id seen earlier in the file is a bad
//! row too (`duplicate transaction id "…" (first on line N)`): ids must be unique in a run
//! (the brokers deduplicate and the PAN is bound to its id), so with the default
//! `--on-bad-row stop` the run stops there, with `skip` the duplicate is left out. To find
//! duplicates the reader keeps every id of the file with its line in memory: about 80 bytes
//! plus the id's length per row (≈ 110 MB for a million rows with 28-byte ids).
//! Pre-featurised files get unique ids by construction (`<prefix>row-<line>`) and are not
//! checked. Missing required CSV header columns, or a file that
//! cannot be read, are [`InputError`]s that stop the run before anything is sent.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::{Channel, EntryMode, Label, Transaction};

use txpipe_client::time::days_from_civil;

use crate::features::{FeatureColumns, FeatureReader};

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// Pre-featurised CSV with a header row (e.g. the ULB credit-card data); never inferred
    /// from a file extension.
    ///
    /// Schema: [`crate::features`].
    Features,
}

impl InputFormat {
    /// The format implied by a file extension: `.csv`; `.jsonl`, `.ndjson` or `.json`. Never
    /// [`InputFormat::Features`] (a `.csv` file is the card format unless told otherwise).
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" | "json" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// The columns every row must have.
pub const REQUIRED_COLUMNS: &[&str] = &[
    "id",
    "event_time",
    "customer_id",
    "pan",
    "expiry",
    "amount",
    "currency",
    "merchant_id",
    "mcc",
    "merchant_country",
    "channel",
    "entry_mode",
];

/// A row that does not match the schema (defined with the run summary it is reported in).
pub use txpipe_client::summary::BadRow;

/// Data rows of `path` in `format`, without parsing them: CSV records after the header
/// ([`InputFormat::Csv`], [`InputFormat::Features`]) or non-blank lines
/// ([`InputFormat::Jsonl`]). The producer reports it up front as the run's planned length
/// (see [`txpipe_client::summary::Summary::planned`]). Errors: [`InputError::Io`] when the
/// file cannot be read, [`InputError::Csv`] when the CSV reader fails.
pub fn count_rows(path: &Path, format: InputFormat) -> Result<u64, InputError> {
    let io = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io)?);
    let mut n = 0u64;
    match format {
        InputFormat::Jsonl => {
            for line in file.lines() {
                n += u64::from(!line.map_err(io)?.trim().is_empty());
            }
        }
        InputFormat::Csv | InputFormat::Features => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(file);
            let mut record = csv::ByteRecord::new();
            while reader
                .read_byte_record(&mut record)
                .map_err(|e| InputError::Csv {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Errors that stop reading a file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CSV header lacks required columns.
    #[error("{path}: line 1: header lacks required column(s) {missing:?}")]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// The missing column names.
        missing: Vec<String>,
    },
    /// The CSV header is unusable for another reason than missing columns (e.g. a column
    /// name that appears twice).
    #[error("{path}: line 1: {message}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CSV reader failed in a way that is not about one row (e.g. invalid UTF-8 at a line).
    #[error("{path}: {message}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
}

/// One parsed row: the transaction (PAN sealed) and its label if the row had one.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRecord {
    /// The transaction.
    pub tx: Transaction,
    /// Ground truth, if the row had `is_fraud` or `scenario`.
    pub label: Option<Label>,
}

/// A row-by-row reader of a transactions file. Yields `Ok(Ok(record))`, `Ok(Err(bad_row))`, or
/// `Err(fatal)` (after which it yields nothing).
pub struct FileSource {
    key: Arc<PanKey>,
    /// Every transaction id read so far with its line (CSV and JSON Lines).
    seen: HashMap<String, u64>,
    inner: Inner,
    path: PathBuf,
    done: bool,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

enum Inner {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        headers: Vec<String>,
        record: csv::StringRecord,
    },
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        line: u64,
    },
    Features(Box<FeatureReader>),
}

impl FileSource {
    /// Opens `path` in `format` and, for CSV, checks the header; [`InputFormat::Features`]
    /// uses [`FeatureColumns::default`]. Errors: [`InputError::Io`],
    /// [`InputError::MissingColumns`], [`InputError::Header`], [`InputError::Csv`].
    pub fn open(path: &Path, format: InputFormat, key: Arc<PanKey>) -> Result<Self, InputError> {
        Self::open_with(path, format, key, &FeatureColumns::default())
    }

    /// [`FileSource::open`] with the column settings of [`InputFormat::Features`] (ignored
    /// by the other formats).
    pub fn open_with(
        path: &Path,
        format: InputFormat,
        key: Arc<PanKey>,
        features: &FeatureColumns,
    ) -> Result<Self, InputError> {
        let io = |source| InputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let inner = match format {
            InputFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .flexible(true)
                    .trim(csv::Trim::All)
                    .from_reader(BufReader::new(file));
                let headers = csv_header(&mut reader, path)?;
                let missing: Vec<String> = REQUIRED_COLUMNS
                    .iter()
                    .filter(|c| !headers.iter().any(|h| h == *c))
                    .map(|c| c.to_string())
                    .collect();
                if !missing.is_empty() {
                    return Err(InputError::MissingColumns {
                        path: path.to_path_buf(),
                        missing,
                    });
                }
                Inner::Csv {
                    reader,
                    headers,
                    record: csv::StringRecord::new(),
                }
            }
            InputFormat::Jsonl => Inner::Jsonl {
                lines: BufReader::new(file).lines(),
                line: 0,
            },
            InputFormat::Features => Inner::Features(Box::new(FeatureReader::from_reader(
                BufReader::with_capacity(1 << 16, file),
                path,
                features,
            )?)),
        };
        Ok(Self {
            key,
            seen: HashMap::new(),
            inner,
            path: path.to_path_buf(),
            done: false,
        })
    }

    /// Rows skipped so far because they fell outside the time window of
    /// [`InputFormat::Features`] (always 0 for the other formats).
    pub fn skipped_by_filter(&self) -> u64 {
        match &self.inner {
            Inner::Features(r) => r.skipped_by_filter(),
            _ => 0,
        }
    }
}

impl Iterator for FileSource {
    type Item = Result<Result<InputRecord, BadRow>, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let key = self.key.clone();
        let item = match &mut self.inner {
            Inner::Csv {
                reader,
                headers,
                record,
            } => match reader.read_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = record.position().map(|p| p.line()).unwrap_or(0);
                    if record.len() != headers.len() {
                        Some(Ok(Err(BadRow {
                            line,
                            column: None,
                            reason: format!(
                                "expected {} fields (as in the header), found {}",
                                headers.len(),
                                record.len()
                            ),
                        })))
                    } else {
                        let get = |name: &str| {
                            headers
                                .iter()
                                .position(|h| h == name)
                                .and_then(|i| record.get(i))
                                .filter(|v| !v.is_empty())
                                .map(str::to_string)
                        };
                        Some(Ok(unique(
                            &mut self.seen,
                            parse_row(&get, line, &key),
                            line,
                        )))
                    }
                }
                Err(e) => {
                    let line = e.position().map(|p| p.line());
                    match (e.kind(), line) {
                        (csv::ErrorKind::Utf8 { .. }, Some(line)) => Some(Ok(Err(BadRow {
                            line,
                            column: None,
                            reason: "invalid UTF-8".into(),
                        }))),
                        _ => Some(Err(InputError::Csv {
                            path: self.path.clone(),
                            message: e.to_string(),
                        })),
                    }
                }
            },
            Inner::Jsonl { lines, line } => loop {
                *line += 1;
                match lines.next() {
                    None => break None,
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        break Some(Ok(Err(BadRow {
                            line: *line,
                            column: None,
                            reason: "invalid UTF-8".into(),
                        })));
                    }
                    Some(Err(source)) => {
                        break Some(Err(InputError::Io {
                            path: self.path.clone(),
                            source,
                        }));
                    }
                    Some(Ok(text)) if text.trim().is_empty() => continue,
                    Some(Ok(text)) => {
                        let row = parse_json_line(&text, *line, &key);
                        break Some(Ok(unique(&mut self.seen, row, *line)));
                    }
                }
            },
            Inner::Features(reader) => reader.next(),
        };
        if matches!(item, None | Some(Err(_))) {
            self.done = true;
        }
        item
    }
}

/// `row` unless its transaction id is in `seen`: then a [`BadRow`] at `line` naming the line
/// of the first occurrence. Records the id.
fn unique(
    seen: &mut HashMap<String, u64>,
    row: Result<InputRecord, BadRow>,
    line: u64,
) -> Result<InputRecord, BadRow> {
    let r = row?;
    match seen.entry(r.tx.id.clone()) {
        std::collections::hash_map::Entry::Occupied(first) => Err(BadRow {
            line,
            column: Some("id".into()),
            reason: format!(
                "duplicate transaction id {:?} (first on line {})",
                r.tx.id,
                first.get()
            ),
        }),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(line);
            Ok(r)
        }
    }
}

fn parse_json_line(text: &str, line: u64, key: &PanKey) -> Result<InputRecord, BadRow> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadRow {
        line,
        column: None,
        reason: format!("invalid JSON: {e}"),
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(BadRow {
            line,
            column: None,
            reason: "expected a JSON object".into(),
        });
    };
    for (k, v) in &map {
        if matches!(
            v,
            serde_json::Value::Array(_) | serde_json::Value::Object(_)
        ) {
            return Err(BadRow {
                line,
                column: Some(k.clone()),
                reason: "expected a string, number or boolean".into(),
            });
        }
    }
    let get = |name: &str| match map.get(name) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(other) => Some(other.to_string()),
    };
    parse_row(&get, line, key)
}

/// Parses one row given a column getter (absent or empty → `None`). Public for tests and for
/// other front ends that produce rows.
pub fn parse_row(
    get: &dyn Fn(&str) -> Option<String>,
    line: u64,
    key: &PanKey,
) -> Result<InputRecord, BadRow> {
    let bad = |column: &str, reason: String| BadRow {
        line,
        column: Some(column.to_string()),
        reason,
    };
    let req =
        |column: &str| get(column).ok_or_else(|| bad(column, "required value is missing".into()));

    let id = req("id")?;
    if id.len() > 128 {
        return Err(bad("id", format!("{} bytes, at most 128", id.len())));
    }
    let event_time_us = parse_time(&req("event_time")?).map_err(|r| bad("event_time", r))?;
    let customer_id = req("customer_id")?;
    let pan: String = req("pan")?
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .collect();
    if pan.is_empty() || pan.len() > 19 || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("pan", "expected 1-19 digits".into()));
    }
    let (expiry_month, expiry_year) =
        parse_expiry(&req("expiry")?).map_err(|r| bad("expiry", r))?;
    let amount_minor = parse_amount(&req("amount")?).map_err(|r| bad("amount", r))?;
    let currency = req("currency")?.to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "currency",
            format!("{currency:?} is not a 3-letter ISO 4217 code"),
        ));
    }
    let merchant_id = req("merchant_id")?;
    let mcc_text = req("mcc")?;
    let mcc = mcc_text
        .parse::<u32>()
        .ok()
        .filter(|m| *m <= 9999)
        .ok_or_else(|| bad("mcc", format!("{mcc_text:?} is not a code 0-9999")))?;
    let terminal_id = get("terminal_id").unwrap_or_default();
    let merchant_country = req("merchant_country")?.to_ascii_uppercase();
    if merchant_country.len() != 2 || !merchant_country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "merchant_country",
            format!("{merchant_country:?} is not a 2-letter ISO 3166-1 code"),
        ));
    }
    let channel_text = req("channel")?;
    let channel = parse_channel(&channel_text).ok_or_else(|| {
        bad(
            "channel",
            format!("{channel_text:?} is not card_present, ecommerce or moto"),
        )
    })?;
    let entry_text = req("entry_mode")?;
    let entry = parse_entry_mode(&entry_text).ok_or_else(|| {
        bad(
            "entry_mode",
            format!("{entry_text:?} is not chip, contactless, magstripe, manual or ecommerce"),
        )
    })?;
    let opt_bool = |column: &str| -> Result<Option<bool>, BadRow> {
        get(column)
            .map(|v| parse_bool(&v).ok_or_else(|| bad(column, format!("{v:?} is not a boolean"))))
            .transpose()
    };
    let three_ds = opt_bool("three_ds")?.unwrap_or(false);
    let cvv_present = opt_bool("cvv_present")?.unwrap_or(false);
    let local_hour = match get("local_hour") {
        None => (event_time_us.div_euclid(3_600_000_000)).rem_euclid(24) as u32,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|h| *h < 24)
            .ok_or_else(|| bad("local_hour", format!("{v:?} is not an hour 0-23")))?,
    };
    let is_fraud = opt_bool("is_fraud")?;
    let scenario = get("scenario");
    let label = match (is_fraud, scenario) {
        (None, None) => None,
        (f, s) => Some(Label {
            transaction_id: id.clone(),
            is_fraud: f.unwrap_or(true),
            scenario: s.unwrap_or_default(),
        }),
    };
    let tx = Transaction {
        pan_encrypted: key.seal(&id, pan.as_bytes()),
        key_id: key.id().to_string(),
        id,
        event_time_us,
        customer_id,
        expiry_month,
        expiry_year,
        amount_minor,
        currency,
        merchant_id,
        mcc,
        terminal_id,
        merchant_country,
        channel: channel as i32,
        entry_mode: entry as i32,
        three_ds,
        cvv_present,
        local_hour,
        features: Vec::new(),
        feature_set: String::new(),
    };
    Ok(InputRecord { tx, label })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" => Some(true),
        "false" | "f" | "0" | "no" | "n" => Some(false),
        _ => None,
    }
}

fn parse_channel(v: &str) -> Option<Channel> {
    let v = v.to_ascii_lowercase();
    match v.strip_prefix("channel_").unwrap_or(&v) {
        "card_present" | "cp" | "pos" => Some(Channel::CardPresent),
        "ecommerce" | "e-commerce" | "ecom" => Some(Channel::Ecommerce),
        "moto" => Some(Channel::Moto),
        _ => None,
    }
}

fn parse_entry_mode(v: &str) -> Option<EntryMode> {
    let v = v.to_ascii_lowercase();
    match v.strip_prefix("entry_mode_").unwrap_or(&v) {
        "chip" => Some(EntryMode::Chip),
        "contactless" => Some(EntryMode::Contactless),
        "magstripe" => Some(EntryMode::Magstripe),
        "manual" => Some(EntryMode::Manual),
        "ecommerce" | "e-commerce" => Some(EntryMode::Ecommerce),
        _ => None,
    }
}

/// `MM/YY` or `MM/YYYY` → (month, four-digit year).
fn parse_expiry(v: &str) -> Result<(u32, u32), String> {
    let err = || format!("{v:?} is not MM/YY or MM/YYYY");
    let (m, y) = v.split_once('/').ok_or_else(err)?;
    if m.len() != 2 || !(y.len() == 2 || y.len() == 4) {
        return Err(err());
    }
    let month: u32 = m.parse().map_err(|_| err())?;
    let year: u32 = y.parse().map_err(|_| err())?;
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 1-12"));
    }
    Ok((month, if y.len() == 2 { 2000 + year } else { year }))
}

/// A decimal amount in major units (`12.34`, `12.3`, `12`) → minor units, without floats.
fn parse_amount(v: &str) -> Result<i64, String> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{v:?} is not a non-negative decimal like 12.34"));
    }
    if frac.len() > 2 {
        return Err(format!("{v:?} has more than 2 decimal places"));
    }
    if int.len() > 12 {
        return Err(format!("{v:?} is too large"));
    }
    let major: i64 = int.parse().map_err(|_| format!("{v:?} is too large"))?;
    let minor: i64 = format!("{frac:0<2}").parse().unwrap_or(0);
    Ok(major * 100 + minor)
}

/// RFC 3339 date-time (`Z` or `±HH:MM` offset, optional fraction) or integer Unix microseconds
/// → Unix microseconds.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if !v.is_empty()
        && v.trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return v
            .parse::<i64>()
            .map_err(|_| format!("{v:?} is out of range"));
    }
    let err = || format!("{v:?} is neither RFC 3339 (2025-01-01T12:00:00Z) nor Unix microseconds");
    let b = v.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(err());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = v.get(r).ok_or_else(err)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        s.parse::<i64>().map_err(|_| err())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("{v:?} has a field out of range"));
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &v[start..i];
        if frac.is_empty() {
            return Err(err());
        }
        let six: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        micros = six.parse().map_err(|_| err())?;
    }
    let offset_s = match &v[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let s = h * 3600 + m * 60;
            if &rest[..1] == "-" { -s } else { s }
        }
        _ => return Err(err()),
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second.min(59) - offset_s;
    Ok(secs * 1_000_000 + micros)
}

/// The trimmed header row of a CSV reader. Errors: [`InputError::Csv`] naming `path`.
pub(crate) fn csv_header<R: std::io::Read>(
    reader: &mut csv::Reader<R>,
    path: &Path,
) -> Result<Vec<String>, InputError> {
    Ok(reader
        .headers()
        .map_err(|e| InputError::Csv {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .iter()
        .map(|h| h.trim().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_as_the_reader_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "id,note\n1,plain\n2,\"two\nlines\"\n3,x\n").unwrap();
        assert_eq!(count_rows(&csv, InputFormat::Csv).unwrap(), 3);
        assert_eq!(count_rows(&csv, InputFormat::Features).unwrap(), 3);
        let jsonl = dir.path().join("t.jsonl");
        std::fs::write(&jsonl, "{\"id\":1}\n\n  \n{\"id\":2}\n").unwrap();
        assert_eq!(count_rows(&jsonl, InputFormat::Jsonl).unwrap(), 2);
        let missing = dir.path().join("missing.csv");
        assert!(matches!(
            count_rows(&missing, InputFormat::Csv),
            Err(InputError::Io { .. })
        ));
    }

    #[test]
    fn times_parse_from_rfc3339_with_offsets_and_from_microseconds() {
        assert_eq!(
            parse_time("2025-01-01T00:00:00Z"),
            Ok(1_735_689_600_000_000)
        );
        assert_eq!(
            parse_time("2025-01-01T01:00:00.25+01:00"),
            Ok(1_735_689_600_250_000)
        );
        assert_eq!(
            parse_time("2024-12-31T19:00:00-05:00"),
            Ok(1_735_689_600_000_000)
        );
        assert_eq!(parse_time("1735689600000000"), Ok(1_735_689_600_000_000));
        assert!(parse_time("2025-13-01T00:00:00Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2025-01-01T00:00:00").is_err());
    }

    #[test]
    fn amounts_parse_exactly_in_minor_units() {
        assert_eq!(parse_amount("12.34"), Ok(1234));
        assert_eq!(parse_amount("12.3"), Ok(1230));
        assert_eq!(parse_amount("12"), Ok(1200));
        assert_eq!(parse_amount("0.07"), Ok(7));
        assert!(parse_amount("1.234").is_err());
        assert!(parse_amount("-1").is_err());
        assert!(parse_amount("1e3").is_err());
        assert!(parse_amount(".5").is_err());
    }

    #[test]
    fn expiry_accepts_two_and_four_digit_years() {
        assert_eq!(parse_expiry("04/27"), Ok((4, 2027)));
        assert_eq!(parse_expiry("12/2030"), Ok((12, 2030)));
        assert!(parse_expiry("13/27").is_err());
        assert!(parse_expiry("4/27").is_err());
    }
}
