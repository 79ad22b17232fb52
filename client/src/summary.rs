//! The producer's run summary (`txpipe-producer --summary-json FILE`): one typed definition
//! for the producer, which writes it, and `txpipe` local mode, which reads it.
//!
//! The producer writes the file twice: once before it sends anything, with
//! [`Summary::planned`] set (the transactions it is about to send, so a reader knows the run's
//! length up front) and every count zero, and again at its end (also after an error) with the
//! totals and [`Summary::finished`] set. Each write replaces the file atomically (a temporary
//! file beside it, then a rename), so a reader polling the file never sees half a summary.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of [`Summary::read`].
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    /// The file could not be read (e.g. the producer has not written it yet).
    #[error("cannot read producer summary {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a summary.
    #[error("producer summary {path} is not valid JSON of a summary: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// A row of an input file that does not match the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("line {line}{}: {reason}", column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
pub struct BadRow {
    /// 1-based line number in the file (CSV: the line where the record starts).
    pub line: u64,
    /// The offending column, when one is to blame.
    pub column: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Totals of a producer run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// `"generator"` or the input file path.
    pub source: String,
    /// Transactions the run is about to send, known before the first is sent: `--count` for
    /// the generator; for a file, its data rows (CSV records after the header, non-blank JSON
    /// lines), at most `--count`. For a file this is an upper bound: bad rows and rows outside
    /// a features file's time window are counted here but not sent.
    pub planned: u64,
    /// The run has ended (the totals below are final); false in the summary written at start.
    pub finished: bool,
    /// Transactions read from the source and queued (valid rows or generated records).
    pub transactions_sent: u64,
    /// Transaction records the broker acknowledged.
    pub transactions_acked: u64,
    /// Transaction records stored (excludes batches the broker recognised as retries).
    pub transactions_stored: u64,
    /// Label records queued.
    pub labels_sent: u64,
    /// Label records acknowledged.
    pub labels_acked: u64,
    /// Records labelled as fraud.
    pub fraud_labelled: u64,
    /// Rows rejected by the schema.
    pub bad_rows: u64,
    /// Rows of a features file outside `--time-from`/`--time-until` (not sent, not bad).
    pub skipped_by_filter: u64,
    /// The first 100 bad rows.
    pub bad_row_samples: Vec<BadRow>,
    /// Wall time from start to the last acknowledgement, seconds.
    pub elapsed_s: f64,
    /// `transactions_acked / elapsed_s`.
    pub rate_per_s: f64,
    /// Name both producers registered under.
    pub producer_name: String,
    /// Idempotent producer id of the `transactions` producer.
    pub transactions_producer_id: u64,
    /// Its epoch (registrations of the name on `transactions` so far).
    pub transactions_epoch: u64,
    /// Position (input items) `transactions` resumed after: items up to it were stored by
    /// earlier runs of the same name and were skipped.
    pub transactions_resumed_from: u64,
    /// Idempotent producer id of the `labels` producer (0 if labels are off).
    pub labels_producer_id: u64,
    /// Its epoch.
    pub labels_epoch: u64,
    /// Position `labels` resumed after.
    pub labels_resumed_from: u64,
    /// Batches the broker answered as duplicates of stored ones (retries after a reconnect).
    pub duplicate_batches: u64,
    /// Reconnections of both producers.
    pub reconnects: u64,
    /// The run stopped early on the shutdown signal.
    pub interrupted: bool,
    /// The error that ended the run, if any.
    pub error: Option<String>,
}

impl Summary {
    /// Writes the summary as pretty JSON to `path`, atomically: to `<path>.tmp` first, then
    /// renamed over `path`. Errors: the I/O error of either step.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a summary written by [`Summary::write`]. Errors: [`SummaryError::Io`] when the
    /// file is missing or unreadable, [`SummaryError::Json`] when it is not a summary.
    pub fn read(path: &Path) -> Result<Self, SummaryError> {
        let text = std::fs::read(path).map_err(|source| SummaryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SummaryError::Json {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_summary_reads_back_equal_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producer-summary.json");
        let s = Summary {
            source: "generator".into(),
            planned: 200_000,
            finished: true,
            transactions_acked: 200_000,
            bad_row_samples: vec![BadRow {
                line: 3,
                column: Some("amount".into()),
                reason: "not a number".into(),
            }],
            ..Summary::default()
        };
        s.write(&path).unwrap();
        assert_eq!(Summary::read(&path).unwrap(), s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(
            s.bad_row_samples[0].to_string(),
            "line 3, column amount: not a number"
        );
    }

    #[test]
    fn reading_a_missing_or_foreign_file_says_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert!(matches!(Summary::read(&path), Err(SummaryError::Io { .. })));
        std::fs::write(&path, "[1, 2]").unwrap();
        let err = Summary::read(&path).unwrap_err();
        assert!(matches!(err, SummaryError::Json { .. }));
        assert!(err.to_string().contains("s.json"), "{err}");
    }

    #[test]
    fn a_summary_without_the_newer_fields_still_parses() {
        let s: Summary = serde_json::from_str(r#"{"transactions_acked": 5}"#).unwrap();
        assert_eq!((s.transactions_acked, s.planned, s.finished), (5, 0, false));
    }
}
