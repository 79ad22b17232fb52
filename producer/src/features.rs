//! Pre-featurised transactions from CSV (`--input-format features`): one row per transaction,
//! already reduced to numeric features, such as the ULB "Credit Card Fraud Detection" data set
//! (`creditcard.csv`: `Time`, `V1`..`V28` — PCA components of undisclosed card fields —,
//! `Amount`, `Class`), which this format reads as published.
//!
//! # Schema
//!
//! CSV with a header row (quoted or bare fields; a UTF-8 byte-order mark is ignored; every row
//! has as many fields as the header). Column names are configurable ([`FeatureColumns`]);
//! the defaults fit the ULB file:
//!
//! | column (default name) | flag | required | format |
//! |---|---|---|---|
//! | `Time` | `--time-column` | yes | seconds after `--time-origin` (default `2013-09-01T00:00:00Z`), integer or decimal, ≥ 0 |
//! | `Amount` | `--amount-column` | yes | amount in major units of `--features-currency` (default `EUR`), decimal, ≥ 0; rounded to the nearest cent |
//! | `Class` | `--label-column` | no by default; yes when the flag is given | `0`/`1` or `false`/`true`: ground truth, sent to the `labels` stream only |
//! | the feature columns | `--feature-columns` | yes | finite numbers, read as `f32`; default: every column except the time and label columns, in header order (ULB: `V1`..`V28`, `Amount` = 29 features) |
//!
//! Values may be surrounded by spaces. Columns that are neither time, amount, label nor a
//! feature are ignored (only possible with an explicit `--feature-columns`).
//!
//! # What a row becomes
//!
//! | `Transaction` field | value |
//! |---|---|
//! | `id` | `<id_prefix>row-<line>`: `line` is the 1-based line of the record *in the file read* (the header is line 1), so a row keeps its id across runs but an excerpt of a file numbers its rows differently from the full file |
//! | `event_time_us` | `time_origin_us + round(Time × 10⁶)` |
//! | `amount_minor` | `round(Amount × 100)` |
//! | `currency` | `--features-currency` |
//! | `features` | the feature columns in the configured order, as `f32` |
//! | `feature_set` | [`txpipe_client::features::fingerprint`] of the feature column names |
//! | every card field | empty or zero: no PAN (`pan_encrypted` and `key_id` empty), no customer, merchant, MCC, country, channel, entry mode, 3-D Secure, CVV, `local_hour` 0 |
//!
//! With a label column, every row also yields `Label { transaction_id: id, is_fraud,
//! scenario: "" }`.
//!
//! # Time window
//!
//! With `--time-from` / `--time-until` (seconds on the same scale as the time column) a row is
//! sent only when `time_from <= Time < time_until`. A row outside the window is counted as
//! skipped by the filter ([`FeatureReader::skipped_by_filter`], `skipped_by_filter` in the
//! summary), not as a bad row; only its field count and time are checked.
//!
//! # Errors
//!
//! Header problems stop the run before anything is sent: a missing time, amount, explicitly
//! named label or listed feature column is [`InputError::MissingColumns`]; a column name that
//! appears twice is [`InputError::Header`]. A row with another number of fields than the
//! header, a value that is not a finite number (the message names the column and the value),
//! a negative time or amount, or a label other than `0`/`1`/`true`/`false` is a [`BadRow`]
//! with the record's line number, handled by `--on-bad-row` like the card formats' bad rows.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use txpipe_client::pipeline::v1::{Label, Transaction};

use crate::input::{BadRow, InputError, InputRecord};

/// Default [`FeatureColumns::time`]: the ULB file's `Time`.
pub const DEFAULT_TIME_COLUMN: &str = "Time";
/// Default [`FeatureColumns::amount`]: the ULB file's `Amount`.
pub const DEFAULT_AMOUNT_COLUMN: &str = "Amount";
/// The label column used when [`FeatureColumns::label`] is `None` and the header has it: the
/// ULB file's `Class`.
pub const DEFAULT_LABEL_COLUMN: &str = "Class";
/// Default time origin, RFC 3339: September 2013, the month the ULB data were collected.
pub const DEFAULT_TIME_ORIGIN: &str = "2013-09-01T00:00:00Z";
/// [`DEFAULT_TIME_ORIGIN`] in Unix microseconds.
pub const DEFAULT_TIME_ORIGIN_US: i64 = 1_377_993_600_000_000;
/// Default [`FeatureColumns::currency`]: the ULB amounts are in euros.
pub const DEFAULT_CURRENCY: &str = "EUR";

/// Largest accepted time, seconds after the origin (about 31 700 years): keeps the event time
/// in range of `i64` microseconds.
const MAX_TIME_S: f64 = 1e12;
/// Largest accepted amount, major units: cents stay exact in an `f64` (< 2^53).
const MAX_AMOUNT: f64 = 9e13;

/// How to read a pre-featurised CSV file: the column names, the time base and window, and the
/// currency and id prefix stamped on every transaction. [`Default`] fits the ULB file.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureColumns {
    /// Column holding the event time as seconds after [`Self::time_origin_us`]. Default `Time`.
    pub time: String,
    /// Column holding the amount in major units of [`Self::currency`]. Default `Amount`.
    pub amount: String,
    /// Label column (`0`/`1`/`true`/`false`). `None`: [`DEFAULT_LABEL_COLUMN`] when the header
    /// has it, else no labels. `Some(name)`: the header must have it.
    pub label: Option<String>,
    /// Feature columns, in the order of `Transaction.features`. `None`: every header column
    /// except the time and label columns, in header order.
    pub features: Option<Vec<String>>,
    /// Unix microseconds of time 0 of the time column. Default [`DEFAULT_TIME_ORIGIN_US`].
    pub time_origin_us: i64,
    /// Send only rows with time ≥ this, seconds on the time column's scale. `None`: no bound.
    pub time_from_s: Option<f64>,
    /// Send only rows with time < this, seconds on the time column's scale. `None`: no bound.
    pub time_until_s: Option<f64>,
    /// ISO 4217 code stamped on every transaction, 3 upper-case letters. Default `EUR`.
    pub currency: String,
    /// Prefix of transaction ids (`<id_prefix>row-<line>`), at most 100 bytes. Default empty.
    pub id_prefix: String,
}

impl Default for FeatureColumns {
    fn default() -> Self {
        Self {
            time: DEFAULT_TIME_COLUMN.into(),
            amount: DEFAULT_AMOUNT_COLUMN.into(),
            label: None,
            features: None,
            time_origin_us: DEFAULT_TIME_ORIGIN_US,
            time_from_s: None,
            time_until_s: None,
            currency: DEFAULT_CURRENCY.into(),
            id_prefix: String::new(),
        }
    }
}

impl FeatureColumns {
    /// The label column name in effect: [`Self::label`] or [`DEFAULT_LABEL_COLUMN`].
    pub fn label_name(&self) -> &str {
        self.label.as_deref().unwrap_or(DEFAULT_LABEL_COLUMN)
    }

    /// Checks the settings that do not depend on a file. Errors (a message naming the
    /// setting): an empty or shared time/amount/label column name; an explicit feature list
    /// that is empty, has an empty or repeated name, or contains the label column (ground truth
    /// must never reach the workers); a non-finite window bound or `time_from >= time_until`;
    /// a currency that is not 3 upper-case letters; an id prefix over 100 bytes.
    pub fn validate(&self) -> Result<(), String> {
        let label = self.label_name();
        for (what, name) in [
            ("time column", &self.time[..]),
            ("amount column", &self.amount[..]),
            ("label column", label),
        ] {
            if name.trim().is_empty() {
                return Err(format!("the {what} name is empty"));
            }
        }
        if self.time == self.amount {
            return Err(format!("time and amount columns are both {:?}", self.time));
        }
        if label == self.time || label == self.amount {
            return Err(format!(
                "the label column {label:?} is also the time or amount column"
            ));
        }
        if let Some(features) = &self.features {
            if features.is_empty() {
                return Err("the feature column list is empty".into());
            }
            let mut seen = HashSet::new();
            for f in features {
                if f.trim().is_empty() {
                    return Err("the feature column list has an empty name".into());
                }
                if !seen.insert(f.as_str()) {
                    return Err(format!("feature column {f:?} is listed twice"));
                }
                if f == label {
                    return Err(format!(
                        "feature column {f:?} is the label column: ground truth must not reach the workers"
                    ));
                }
            }
        }
        for (what, v) in [
            ("time-from", self.time_from_s),
            ("time-until", self.time_until_s),
        ] {
            if let Some(v) = v
                && !v.is_finite()
            {
                return Err(format!("{what} {v} is not a finite number of seconds"));
            }
        }
        if let (Some(from), Some(until)) = (self.time_from_s, self.time_until_s)
            && from >= until
        {
            return Err(format!(
                "time-from {from} must be less than time-until {until}"
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "currency {:?} is not a 3-letter upper-case ISO 4217 code",
                self.currency
            ));
        }
        if self.id_prefix.len() > 100 {
            return Err(format!(
                "id prefix is {} bytes, at most 100",
                self.id_prefix.len()
            ));
        }
        Ok(())
    }
}

/// Column positions resolved against a header.
#[derive(Debug, Clone)]
struct Layout {
    /// Header names (trimmed), for error messages.
    names: Vec<String>,
    time: usize,
    amount: usize,
    label: Option<usize>,
    features: Vec<usize>,
}

impl Layout {
    /// Resolves `cols` against `header`. Errors: `Err(Ok(missing))` for missing columns,
    /// `Err(Err(message))` for any other header problem.
    fn resolve(
        header: &[String],
        cols: &FeatureColumns,
    ) -> Result<Self, Result<Vec<String>, String>> {
        let mut seen = HashSet::new();
        for h in header {
            if !seen.insert(h.as_str()) {
                return Err(Err(format!(
                    "column {h:?} appears more than once in the header"
                )));
            }
        }
        let find = |name: &str| header.iter().position(|h| h == name);
        let mut missing = Vec::new();
        let mut need = |name: &str| {
            let i = find(name);
            if i.is_none() && !missing.iter().any(|m| m == name) {
                missing.push(name.to_string());
            }
            i
        };
        let time = need(&cols.time);
        let amount = need(&cols.amount);
        let label = match &cols.label {
            Some(name) => need(name),
            None => None,
        };
        let features: Vec<Option<usize>> = match &cols.features {
            Some(list) => list.iter().map(|f| need(f)).collect(),
            None => Vec::new(),
        };
        let (Some(time), Some(amount)) = (time, amount) else {
            return Err(Ok(missing));
        };
        if !missing.is_empty() {
            return Err(Ok(missing));
        }
        let label = match &cols.label {
            Some(_) => label,
            None => find(DEFAULT_LABEL_COLUMN),
        };
        let features: Vec<usize> = match &cols.features {
            Some(_) => features.into_iter().flatten().collect(),
            None => (0..header.len())
                .filter(|&i| i != time && Some(i) != label)
                .collect(),
        };
        if let Some(l) = label
            && features.contains(&l)
        {
            return Err(Err(format!(
                "feature column {:?} is the label column",
                header[l]
            )));
        }
        Ok(Self {
            names: header.to_vec(),
            time,
            amount,
            label,
            features,
        })
    }
}

/// Reader of a pre-featurised CSV file, used by [`crate::input::FileSource`] for
/// [`crate::input::InputFormat::Features`]. Yields `Ok(Ok(record))`, `Ok(Err(bad_row))`, or
/// `Err(fatal)` (after which it yields nothing); rows outside the time window are skipped and
/// counted. One `csv::StringRecord` is reused for every row.
pub struct FeatureReader<R: std::io::Read = BufReader<File>> {
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    layout: Layout,
    cols: FeatureColumns,
    feature_names: Vec<String>,
    feature_set: String,
    path: PathBuf,
    skipped_by_filter: u64,
    done: bool,
}

impl<R: std::io::Read> std::fmt::Debug for FeatureReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureReader")
            .field("path", &self.path)
            .field("feature_set", &self.feature_set)
            .finish_non_exhaustive()
    }
}

impl FeatureReader<BufReader<File>> {
    /// Opens `path` and checks its header against `cols`. Errors: [`InputError::Io`],
    /// [`InputError::MissingColumns`], [`InputError::Header`], [`InputError::Csv`].
    pub fn open(path: &Path, cols: &FeatureColumns) -> Result<Self, InputError> {
        let file = File::open(path).map_err(|source| InputError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_reader(BufReader::with_capacity(1 << 16, file), path, cols)
    }
}

impl<R: std::io::Read> FeatureReader<R> {
    /// Reads the header from `input` (named `path` in errors) and checks it against `cols`.
    /// Errors as [`FeatureReader::open`].
    pub fn from_reader(input: R, path: &Path, cols: &FeatureColumns) -> Result<Self, InputError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(input);
        let header = crate::input::csv_header(&mut reader, path)?;
        let layout = Layout::resolve(&header, cols).map_err(|e| match e {
            Ok(missing) => InputError::MissingColumns {
                path: path.to_path_buf(),
                missing,
            },
            Err(message) => InputError::Header {
                path: path.to_path_buf(),
                message,
            },
        })?;
        let feature_names: Vec<String> =
            layout.features.iter().map(|&i| header[i].clone()).collect();
        let feature_set = txpipe_client::features::fingerprint(&feature_names);
        Ok(Self {
            reader,
            record: csv::StringRecord::new(),
            layout,
            cols: cols.clone(),
            feature_names,
            feature_set,
            path: path.to_path_buf(),
            skipped_by_filter: 0,
            done: false,
        })
    }

    /// The feature column names, in the order of `Transaction.features`.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The fingerprint stamped in `Transaction.feature_set`.
    pub fn feature_set(&self) -> &str {
        &self.feature_set
    }

    /// Whether rows yield labels (the header has a label column).
    pub fn has_labels(&self) -> bool {
        self.layout.label.is_some()
    }

    /// Rows read so far that fell outside the `time_from`/`time_until` window.
    pub fn skipped_by_filter(&self) -> u64 {
        self.skipped_by_filter
    }

    /// Parses the current record; `None` when it is outside the time window.
    fn parse_current(&self, line: u64) -> Option<Result<InputRecord, BadRow>> {
        let rec = &self.record;
        let layout = &self.layout;
        let cols = &self.cols;
        if rec.len() != layout.names.len() {
            return Some(Err(BadRow {
                line,
                column: None,
                reason: format!(
                    "has {} fields, the header has {}",
                    rec.len(),
                    layout.names.len()
                ),
            }));
        }
        let bad = |i: usize, reason: String| BadRow {
            line,
            column: Some(layout.names[i].clone()),
            reason,
        };
        let field = |i: usize| rec.get(i).unwrap_or("").trim();

        let time_s = match parse_non_negative(field(layout.time), MAX_TIME_S) {
            Ok(t) => t,
            Err(reason) => return Some(Err(bad(layout.time, reason))),
        };
        if cols.time_from_s.is_some_and(|from| time_s < from)
            || cols.time_until_s.is_some_and(|until| time_s >= until)
        {
            return None;
        }
        let event_time_us = match cols
            .time_origin_us
            .checked_add((time_s * 1e6).round() as i64)
        {
            Some(t) => t,
            None => {
                return Some(Err(bad(
                    layout.time,
                    format!("{time_s} s after the time origin is out of range"),
                )));
            }
        };
        Some(
            self.parse_fields(line, event_time_us)
                .map_err(|(i, reason)| bad(i, reason)),
        )
    }

    /// Parses everything but the time; the error is (column index, reason).
    fn parse_fields(&self, line: u64, event_time_us: i64) -> Result<InputRecord, (usize, String)> {
        let layout = &self.layout;
        let cols = &self.cols;
        let field = |i: usize| self.record.get(i).unwrap_or("").trim();
        let amount =
            parse_non_negative(field(layout.amount), MAX_AMOUNT).map_err(|r| (layout.amount, r))?;
        let amount_minor = (amount * 100.0).round() as i64;

        let mut features = Vec::with_capacity(layout.features.len());
        for &i in &layout.features {
            features.push(parse_f32(field(i)).map_err(|r| (i, r))?);
        }

        let mut id = String::with_capacity(cols.id_prefix.len() + 24);
        id.push_str(&cols.id_prefix);
        let _ = write!(id, "row-{line}");

        let label = match layout.label {
            None => None,
            Some(i) => {
                let v = field(i);
                let is_fraud = parse_label(v)
                    .ok_or_else(|| (i, format!("{v:?} is not a label: 0, 1, false or true")))?;
                Some(Label {
                    transaction_id: id.clone(),
                    is_fraud,
                    scenario: String::new(),
                })
            }
        };
        let tx = Transaction {
            id,
            event_time_us,
            amount_minor,
            currency: cols.currency.clone(),
            features,
            feature_set: self.feature_set.clone(),
            ..Transaction::default()
        };
        Ok(InputRecord { tx, label })
    }
}

impl<R: std::io::Read> Iterator for FeatureReader<R> {
    type Item = Result<Result<InputRecord, BadRow>, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.reader.read_record(&mut self.record) {
                Ok(false) => self.done = true,
                Ok(true) => {
                    let line = self.record.position().map_or(0, |p| p.line());
                    match self.parse_current(line) {
                        Some(row) => return Some(Ok(row)),
                        None => self.skipped_by_filter += 1,
                    }
                }
                Err(e) => {
                    if let (csv::ErrorKind::Utf8 { .. }, Some(pos)) = (e.kind(), e.position()) {
                        return Some(Ok(Err(BadRow {
                            line: pos.line(),
                            column: None,
                            reason: "invalid UTF-8".into(),
                        })));
                    }
                    self.done = true;
                    return Some(Err(InputError::Csv {
                        path: self.path.clone(),
                        message: e.to_string(),
                    }));
                }
            }
        }
        None
    }
}

/// A finite number ≥ 0 and ≤ `max`; the error is the reason for a [`BadRow`].
fn parse_non_negative(v: &str, max: f64) -> Result<f64, String> {
    let x = parse_finite(v)?;
    if x < 0.0 {
        return Err(format!("{v:?} is negative"));
    }
    if x > max {
        return Err(format!("{v:?} is too large (at most {max:e})"));
    }
    Ok(x)
}

fn parse_finite(v: &str) -> Result<f64, String> {
    if v.is_empty() {
        return Err("value is missing".into());
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("{v:?} is not a finite number")),
        Err(_) => Err(format!("{v:?} is not a number")),
    }
}

fn parse_f32(v: &str) -> Result<f32, String> {
    if v.is_empty() {
        return Err("value is missing".into());
    }
    match v.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("{v:?} is not a finite number (f32)")),
        Err(_) => Err(format!("{v:?} is not a number")),
    }
}

fn parse_label(v: &str) -> Option<bool> {
    match v {
        "1" => Some(true),
        "0" => Some(false),
        _ if v.eq_ignore_ascii_case("true") => Some(true),
        _ if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ULB_HEADER: &str = "\"Time\",\"V1\",\"V2\",\"V3\",\"Amount\",\"Class\"\n";

    fn read(
        text: &str,
        cols: &FeatureColumns,
    ) -> Result<Vec<Result<InputRecord, BadRow>>, InputError> {
        FeatureReader::from_reader(text.as_bytes(), Path::new("mem.csv"), cols)?
            .collect::<Result<Vec<_>, _>>()
    }

    #[test]
    fn the_default_time_origin_is_september_2013() {
        assert_eq!(
            crate::input::parse_time(DEFAULT_TIME_ORIGIN),
            Ok(DEFAULT_TIME_ORIGIN_US)
        );
        assert_eq!(FeatureColumns::default().validate(), Ok(()));
    }

    #[test]
    fn default_features_are_every_column_but_time_and_label() {
        let text = format!("{ULB_HEADER}1.5,0.25,-1,2,10.005,\"1\"\n");
        let reader =
            FeatureReader::from_reader(text.as_bytes(), Path::new("m"), &FeatureColumns::default())
                .unwrap();
        assert_eq!(reader.feature_names(), ["V1", "V2", "V3", "Amount"]);
        assert_eq!(
            reader.feature_set(),
            txpipe_client::features::fingerprint(["V1", "V2", "V3", "Amount"])
        );
        assert!(reader.has_labels());
        let rows = read(&text, &FeatureColumns::default()).unwrap();
        let r = rows[0].as_ref().unwrap();
        assert_eq!(r.tx.id, "row-2");
        assert_eq!(r.tx.event_time_us, DEFAULT_TIME_ORIGIN_US + 1_500_000);
        assert_eq!(r.tx.amount_minor, 1001, "10.005 rounds to the nearest cent");
        assert_eq!(r.tx.features, [0.25, -1.0, 2.0, 10.005]);
        assert_eq!(r.tx.currency, "EUR");
        assert!(r.tx.pan_encrypted.is_empty() && r.tx.key_id.is_empty());
        assert_eq!(r.label.as_ref().map(|l| l.is_fraud), Some(true));
    }

    #[test]
    fn an_explicit_feature_list_sets_order_and_may_include_time() {
        let cols = FeatureColumns {
            features: Some(vec!["V3".into(), "Time".into(), "V1".into()]),
            id_prefix: "ulb-".into(),
            ..FeatureColumns::default()
        };
        let rows = read(&format!("{ULB_HEADER}7,1,2,3,4,false\n"), &cols).unwrap();
        let r = rows[0].as_ref().unwrap();
        assert_eq!(r.tx.features, [3.0, 7.0, 1.0]);
        assert_eq!(
            r.tx.feature_set,
            txpipe_client::features::fingerprint(["V3", "Time", "V1"])
        );
        assert_eq!(r.tx.id, "ulb-row-2");
        assert_eq!(r.label.as_ref().map(|l| l.is_fraud), Some(false));
    }

    #[test]
    fn without_the_default_label_column_no_labels_are_made() {
        let text = "Time,V1,Amount\n0,1,2\n";
        let rows = read(text, &FeatureColumns::default()).unwrap();
        let r = rows[0].as_ref().unwrap();
        assert!(r.label.is_none());
        assert_eq!(r.tx.features, [1.0, 2.0]);
    }

    #[test]
    fn an_explicit_label_column_must_exist() {
        let cols = FeatureColumns {
            label: Some("Class".into()),
            ..FeatureColumns::default()
        };
        match read("Time,V1,Amount\n0,1,2\n", &cols) {
            Err(InputError::MissingColumns { missing, .. }) => assert_eq!(missing, ["Class"]),
            other => panic!("unexpected {other:?}"),
        }
        let cols = FeatureColumns {
            label: Some("fraud".into()),
            ..FeatureColumns::default()
        };
        let rows = read("Time,V1,Amount,Class,fraud\n0,1,2,3,TRUE\n", &cols).unwrap();
        let r = rows[0].as_ref().unwrap();
        assert_eq!(
            r.tx.features,
            [1.0, 2.0, 3.0],
            "Class is a plain column now"
        );
        assert_eq!(r.label.as_ref().map(|l| l.is_fraud), Some(true));
    }

    #[test]
    fn header_problems_are_refused() {
        match read("Time,V1,V1,Amount\n", &FeatureColumns::default()) {
            Err(e @ InputError::Header { .. }) => {
                assert!(
                    e.to_string().contains("\"V1\" appears more than once"),
                    "{e}"
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        let cols = FeatureColumns {
            features: Some(vec!["V1".into(), "V9".into(), "V8".into()]),
            ..FeatureColumns::default()
        };
        match read("Time,V1,Class\n", &cols) {
            Err(InputError::MissingColumns { missing, .. }) => {
                assert_eq!(missing, ["Amount", "V9", "V8"])
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn settings_are_validated() {
        let ok = FeatureColumns::default();
        let with = |f: &dyn Fn(&mut FeatureColumns)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(with(&|c| c.features = Some(vec!["V1".into(), "Class".into()])).contains("label"));
        assert!(with(&|c| c.features = Some(vec!["V1".into(), "V1".into()])).contains("twice"));
        assert!(with(&|c| c.features = Some(vec![])).contains("empty"));
        assert!(with(&|c| c.amount = "Time".into()).contains("both"));
        assert!(with(&|c| c.label = Some("Amount".into())).contains("label column"));
        assert!(
            with(&|c| {
                c.time_from_s = Some(10.0);
                c.time_until_s = Some(10.0);
            })
            .contains("less than")
        );
        assert!(with(&|c| c.time_until_s = Some(f64::NAN)).contains("finite"));
        assert!(with(&|c| c.currency = "eur".into()).contains("currency"));
        assert!(with(&|c| c.id_prefix = "x".repeat(101)).contains("prefix"));
    }

    #[test]
    fn labels_and_numbers_parse_strictly() {
        assert_eq!(parse_label("1"), Some(true));
        assert_eq!(parse_label("False"), Some(false));
        assert_eq!(parse_label("2"), None);
        assert_eq!(parse_label(""), None);
        assert_eq!(parse_f32("-1.3598071336738"), Ok(-1.359_807_1_f32));
        assert!(parse_f32("1e39").unwrap_err().contains("finite"));
        assert!(parse_finite("NaN").unwrap_err().contains("finite"));
        assert!(parse_finite("abc").unwrap_err().contains("not a number"));
        assert!(
            parse_non_negative("-0.01", 1.0)
                .unwrap_err()
                .contains("negative")
        );
        assert!(
            parse_non_negative("2", 1.0)
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn rows_outside_the_window_are_counted_without_further_checks() {
        let cols = FeatureColumns {
            time_from_s: Some(10.0),
            time_until_s: Some(20.0),
            ..FeatureColumns::default()
        };
        let text = format!(
            "{ULB_HEADER}9.999,1,1,1,1,0\n10,1,1,1,1,0\n15,abc,1,1,1,0\n20,1,1,1,1,0\n25,abc,1,1,1,0\n-1,1,1,1,1,0\n"
        );
        let mut reader =
            FeatureReader::from_reader(text.as_bytes(), Path::new("m"), &cols).unwrap();
        let rows: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
        let ids: Vec<_> = rows
            .iter()
            .map(|r| match r {
                Ok(r) => r.tx.id.clone(),
                Err(b) => format!("bad {}", b.line),
            })
            .collect();
        assert_eq!(ids, ["row-3", "bad 4", "bad 7"]);
        assert_eq!(reader.skipped_by_filter(), 3);
    }
}
