//! Publishing: reads a source (the generator or a file), batches records, paces them with a
//! token bucket and sends them through two idempotent producers — `transactions` (key = tx id,
//! value = `Transaction`) and `labels` (key = tx id, value = `Label`) — then waits until both
//! have every batch acknowledged.
//!
//! # Identity and resume
//!
//! Both producers register under the run's producer name ([`Config::producer_name`], default
//! [`Config::default_producer_name`]) on their stream. Every input item (a generated
//! transaction, or a data row of the file, bad ones included) has a position: its index + 1.
//! Each batch carries the position of its last record; the broker returns the highest
//! acknowledged one when the name registers again, and the run skips every item at or below
//! it — per stream, since `transactions` and `labels` are acknowledged independently. A
//! producer killed at any point and started again with the same settings therefore stores each
//! transaction and each label exactly once. Registering bumps the name's epoch, which fences a
//! still-running older instance: its next batch is refused and it exits with an error.
//!
//! Records are built on a blocking thread and handed to the async sender through a channel of 4
//! batches, so generation overlaps with the network. `Record.timestamp_us` is stamped right
//! before a batch is queued to the producer (after any rate-limit wait), so it measures
//! produce → decision latency, not time spent throttled.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use txpipe_client::broker::v1::Record;
use txpipe_client::pan::PanKey;
use txpipe_client::produce::{ProduceError, Producer, ProducerConfig, ProducerStats};
use txpipe_client::streams;

use crate::features::FeatureColumns;
use crate::generate::{ConfigError, Generator, GeneratorConfig};
use crate::input::{BadRow, FileSource, InputError, InputFormat};
use crate::ratelimit::TokenBucket;

/// Default number of generated transactions.
pub const DEFAULT_COUNT: u64 = 2_000_000;

/// Where records come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The seeded generator.
    Generate(GeneratorConfig),
    /// A CSV or JSON Lines file (see [`crate::input`] for the schema), or a pre-featurised
    /// CSV file (see [`crate::features`]; its settings are [`Config::features`]).
    File {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: InputFormat,
    },
}

/// What to do with a row that does not match the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRow {
    /// Report it, count it and go on.
    Skip,
    /// Report it and stop the run with an error (after flushing the rows before it).
    Stop,
}

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, log lines otherwise.
    Auto,
    /// Always a progress bar.
    Always,
    /// Log lines every 5 s.
    Never,
}

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker endpoint URIs (`http://host:port`), see `txpipe_client::connect::parse_addrs`.
    pub brokers: Vec<String>,
    /// Where records come from.
    pub source: Source,
    /// Records to send at most; `None` = [`DEFAULT_COUNT`] for the generator, the whole file
    /// for a file.
    pub count: Option<u64>,
    /// Transactions per second; 0 = unlimited.
    pub rate_per_s: f64,
    /// Records per produce batch, 1-10 000.
    pub batch_size: usize,
    /// Unacknowledged batches per stream, at most (≥ 1).
    pub max_in_flight: usize,
    /// Bad-row policy for files.
    pub on_bad_row: OnBadRow,
    /// Columns, time base and window of [`InputFormat::Features`] files; ignored otherwise.
    pub features: FeatureColumns,
    /// Send `Label` records to the `labels` stream.
    pub labels: bool,
    /// The key that seals PANs.
    pub pan_key: Arc<PanKey>,
    /// Progress display.
    pub progress: ProgressMode,
    /// Write the [`Summary`] as JSON to this file at the end (also after an error).
    pub summary_json: Option<PathBuf>,
    /// How long the producers keep trying to reach a broker after a failure.
    pub reconnect_deadline: Duration,
    /// See [`txpipe_client::produce::ProducerConfig::ack_timeout`].
    pub ack_timeout: Duration,
    /// See [`txpipe_client::produce::ProducerConfig::leader_probe_after`].
    pub leader_probe_after: Duration,
    /// Stream names (defaults: `transactions`, `labels`).
    pub transactions_stream: String,
    /// See `transactions_stream`.
    pub labels_stream: String,
    /// Name both producers register under (at most 256 bytes); `None` =
    /// [`Config::default_producer_name`].
    pub producer_name: Option<String>,
    /// Mutual TLS towards the brokers; `None`: plaintext.
    pub tls: Option<txpipe_client::tls::TlsOptions>,
}

impl Config {
    /// A configuration with defaults (generator seed 42, 2 000 000 records, unlimited rate,
    /// batches of 500, 16 in flight, labels on, 60 s reconnect deadline) that seals PANs with
    /// `pan_key` (there is no default key).
    pub fn new(brokers: Vec<String>, pan_key: Arc<PanKey>) -> Self {
        Self {
            brokers,
            source: Source::Generate(GeneratorConfig::default()),
            count: None,
            rate_per_s: 0.0,
            batch_size: 500,
            max_in_flight: 16,
            on_bad_row: OnBadRow::Stop,
            features: FeatureColumns::default(),
            labels: true,
            pan_key,
            progress: ProgressMode::Never,
            summary_json: None,
            reconnect_deadline: Duration::from_secs(60),
            ack_timeout: txpipe_client::produce::DEFAULT_ACK_TIMEOUT,
            leader_probe_after: txpipe_client::produce::DEFAULT_LEADER_PROBE_AFTER,
            transactions_stream: streams::TRANSACTIONS.to_string(),
            labels_stream: streams::LABELS.to_string(),
            producer_name: None,
            tls: None,
        }
    }

    /// The producer name derived from the settings that decide the sequence of records, so
    /// that the same command line resumes where it stopped: for the generator
    /// `gen-s<seed>-<16 hex>` (a hash of seed, customers, merchants, fraud rate, start time,
    /// id prefix, first counter and scenario weights), for a file `file-<file name>-<16 hex>` (a
    /// hash of the absolute path, the format and, for features files, the column settings).
    /// `--count`, the rate and the batch size are not part of it: a larger count continues
    /// where a smaller one stopped.
    pub fn default_producer_name(&self) -> String {
        match &self.source {
            Source::Generate(g) => format!(
                "gen-s{}-{:016x}",
                g.seed,
                fnv1a(&format!(
                    "seed={} customers={} merchants={} fraud_rate={} start={} prefix={:?} first={} weights={:?}",
                    g.seed,
                    g.customers,
                    g.merchants,
                    g.fraud_rate.to_bits(),
                    g.start_time_us,
                    g.id_prefix,
                    g.first_counter,
                    g.scenario_weights.map(f64::to_bits),
                ))
            ),
            Source::File { path, format } => {
                let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                let features = if *format == InputFormat::Features {
                    format!("{:?}", self.features)
                } else {
                    format!("prefix={:?}", self.features.id_prefix)
                };
                let file = path
                    .file_name()
                    .map(|n| n.to_string_lossy().chars().take(64).collect::<String>())
                    .unwrap_or_default();
                format!(
                    "file-{file}-{:016x}",
                    fnv1a(&format!("{} {format:?} {features}", abs.display()))
                )
            }
        }
    }

    /// [`Config::producer_name`] or the default.
    pub fn effective_producer_name(&self) -> String {
        self.producer_name
            .clone()
            .unwrap_or_else(|| self.default_producer_name())
    }

    /// Checks cross-field rules (and [`FeatureColumns::validate`] for a features file).
    /// Errors: [`Error::Config`] naming the value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.brokers.is_empty() {
            return bad("no broker address given (--brokers)".into());
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return bad(format!("batch size {} is not 1-10000", self.batch_size));
        }
        if !(1..=txpipe_client::produce::MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return bad(format!(
                "max in-flight batches {} is not 1-{} (the most batches a broker remembers per producer)",
                self.max_in_flight,
                txpipe_client::produce::MAX_IN_FLIGHT
            ));
        }
        if let Some(n) = &self.producer_name
            && (n.is_empty() || n.len() > 256)
        {
            return bad(format!(
                "producer name {n:?} must be 1-256 bytes (--producer-name)"
            ));
        }
        if !self.rate_per_s.is_finite() || self.rate_per_s < 0.0 {
            return bad(format!(
                "rate {} tx/s must be >= 0 (0 = unlimited)",
                self.rate_per_s
            ));
        }
        if let Source::Generate(g) = &self.source {
            g.validate()?;
        }
        if let Source::File { path, .. } = &self.source
            && !path.is_file()
        {
            return bad(format!("input file {} does not exist", path.display()));
        }
        if let Source::File {
            format: InputFormat::Features,
            ..
        } = &self.source
        {
            self.features.validate().map_err(Error::Config)?;
        }
        Ok(())
    }
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Invalid generator settings.
    #[error(transparent)]
    Generator(#[from] ConfigError),
    /// The input file could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A bad row with `--on-bad-row stop`.
    #[error("bad input row, stopping (--on-bad-row stop): {0}")]
    BadRow(BadRow),
    /// A producer failed: broker unreachable past the deadline, or a batch rejected.
    #[error("producing to stream {stream} failed: {source}")]
    Produce {
        /// Stream name.
        stream: String,
        /// The producer's error.
        source: ProduceError,
    },
    /// The summary file could not be written.
    #[error("cannot write summary {path}: {source}")]
    Summary {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result of this crate's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Totals of a run, written by `--summary-json` (defined in [`txpipe_client::summary`], which
/// `txpipe` local mode reads it with).
pub use txpipe_client::summary::Summary;

/// One batch handed from the reader thread to the sender.
struct Batch {
    tx: Vec<Record>,
    labels: Vec<Record>,
    /// Position of the last record in `tx` (input item index + 1).
    tx_position: u64,
    /// Position of the last record in `labels`.
    labels_position: u64,
    fraud: u64,
    bad_rows: Vec<BadRow>,
    /// Rows skipped by the time window since the previous batch.
    filtered: u64,
    /// Set on the last batch when the reader stopped on an error.
    error: Option<Error>,
}

fn record(key: &str, value: Vec<u8>) -> Record {
    Record {
        key: key.as_bytes().to_vec().into(),
        value: value.into(),
        timestamp_us: 0,
    }
}

/// 64-bit FNV-1a of `s` (Fowler, Noll, Vo): stable across versions and platforms.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where each stream resumes: items at or below these positions are not sent again.
#[derive(Debug, Clone, Copy, Default)]
struct Resume {
    tx: u64,
    labels: u64,
}

/// Reads the source on the calling (blocking) thread and sends batches until `limit` records,
/// the end of the source, an error, or the receiver goes away. Records at or below their
/// stream's `resume` position are skipped (counted towards `limit`, never sent).
fn read_source(config: &Config, limit: u64, resume: Resume, out: mpsc::Sender<Batch>) {
    let new_batch = || Batch {
        tx: Vec::with_capacity(config.batch_size),
        labels: Vec::with_capacity(if config.labels { config.batch_size } else { 0 }),
        tx_position: 0,
        labels_position: 0,
        fraud: 0,
        bad_rows: Vec::new(),
        filtered: 0,
        error: None,
    };
    let mut batch = new_batch();
    let mut sent = 0u64;
    // Input items read so far (the position of the item just read).
    let mut position = 0u64;
    let flush = |batch: Batch| out.blocking_send(batch).is_ok();
    let full = |b: &Batch| b.tx.len() >= config.batch_size || b.labels.len() >= config.batch_size;
    match &config.source {
        Source::Generate(g) => {
            let generator = Generator::with_shared_key(g.clone(), config.pan_key.clone());
            for r in generator.take(limit as usize) {
                position += 1;
                if config.labels && position > resume.labels {
                    batch.labels.push(record(&r.tx.id, r.label.encode_to_vec()));
                    batch.labels_position = position;
                }
                if position > resume.tx {
                    if r.label.is_fraud {
                        batch.fraud += 1;
                    }
                    batch.tx.push(record(&r.tx.id, r.tx.encode_to_vec()));
                    batch.tx_position = position;
                }
                if full(&batch) && !flush(std::mem::replace(&mut batch, new_batch())) {
                    return;
                }
            }
        }
        Source::File { path, format } => {
            let opened =
                FileSource::open_with(path, *format, config.pan_key.clone(), &config.features);
            let mut source = match opened {
                Ok(s) => s,
                Err(e) => {
                    batch.error = Some(e.into());
                    flush(batch);
                    return;
                }
            };
            // Rows the time window skipped, as counted by the source so far.
            let mut filtered = 0;
            while sent < limit {
                let Some(item) = source.next() else { break };
                batch.filtered += source.skipped_by_filter() - filtered;
                filtered = source.skipped_by_filter();
                position += 1;
                let (send_tx, send_label) = (position > resume.tx, position > resume.labels);
                match item {
                    Err(fatal) => {
                        batch.error = Some(fatal.into());
                        flush(batch);
                        return;
                    }
                    Ok(Err(_)) if !send_tx => {} // Reported by the run that sent past it.
                    Ok(Err(bad)) => {
                        tracing::warn!(line = bad.line, column = bad.column.as_deref().unwrap_or(""), reason = %bad.reason, "bad input row");
                        if config.on_bad_row == OnBadRow::Stop {
                            batch.error = Some(Error::BadRow(bad));
                            flush(batch);
                            return;
                        }
                        batch.bad_rows.push(bad);
                    }
                    Ok(Ok(rec)) => {
                        if let Some(label) = rec.label {
                            if label.is_fraud && send_tx {
                                batch.fraud += 1;
                            }
                            if config.labels && send_label {
                                batch.labels.push(record(&rec.tx.id, label.encode_to_vec()));
                                batch.labels_position = position;
                            }
                        }
                        if send_tx {
                            batch.tx.push(record(&rec.tx.id, rec.tx.encode_to_vec()));
                            batch.tx_position = position;
                        }
                        sent += 1;
                        if full(&batch) && !flush(std::mem::replace(&mut batch, new_batch())) {
                            return;
                        }
                    }
                }
            }
            batch.filtered += source.skipped_by_filter() - filtered;
        }
    }
    if !batch.tx.is_empty()
        || !batch.labels.is_empty()
        || !batch.bad_rows.is_empty()
        || batch.filtered > 0
    {
        flush(batch);
    }
}

/// Runs the producer until the source is exhausted (or `count` records), an error, or
/// `shutdown` resolves; then waits for every queued batch to be acknowledged and returns the
/// totals. Writes `summary_json` when set, also when returning an error.
///
/// Errors: [`Error::Config`]/[`Error::Generator`] before anything starts; [`Error::Input`] when
/// the file cannot be read; [`Error::BadRow`] with `OnBadRow::Stop`; [`Error::Produce`] when a
/// broker stays unreachable past `reconnect_deadline` or rejects a batch.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<Summary> {
    config.validate()?;
    let started = Instant::now();
    let mut summary = Summary {
        source: match &config.source {
            Source::Generate(_) => "generator".into(),
            Source::File { path, .. } => path.display().to_string(),
        },
        planned: planned(&config),
        ..Summary::default()
    };
    write_summary(&config, &summary)?;
    let result = run_inner(&config, shutdown, started, &mut summary).await;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.rate_per_s = if summary.elapsed_s > 0.0 {
        summary.transactions_acked as f64 / summary.elapsed_s
    } else {
        0.0
    };
    if let Err(e) = &result {
        summary.error = Some(e.to_string());
    }
    summary.finished = true;
    write_summary(&config, &summary)?;
    result.map(|()| summary)
}

/// Transactions the run is about to send ([`Summary::planned`]): `count` (default
/// [`DEFAULT_COUNT`]) for the generator; a file's data rows, at most `count`. 0 when the file
/// cannot be read: the reader then ends the run with that error, recorded in the summary.
fn planned(config: &Config) -> u64 {
    match &config.source {
        Source::Generate(_) => config.count.unwrap_or(DEFAULT_COUNT),
        Source::File { path, format } => match crate::input::count_rows(path, *format) {
            Ok(rows) => config.count.map_or(rows, |n| n.min(rows)),
            Err(_) => 0,
        },
    }
}

/// Writes `summary` to `--summary-json`, when set (atomically: see [`Summary::write`]).
fn write_summary(config: &Config, summary: &Summary) -> Result<()> {
    match &config.summary_json {
        Some(path) => summary.write(path).map_err(|source| Error::Summary {
            path: path.clone(),
            source,
        }),
        None => Ok(()),
    }
}

fn producer_config(config: &Config, stream: &str) -> ProducerConfig {
    ProducerConfig {
        max_in_flight: config.max_in_flight,
        reconnect_deadline: config.reconnect_deadline,
        ack_timeout: config.ack_timeout,
        leader_probe_after: config.leader_probe_after,
        tls: config.tls.clone(),
        ..ProducerConfig::named(
            config.brokers.clone(),
            stream,
            config.effective_producer_name(),
        )
    }
}

async fn run_inner(
    config: &Config,
    shutdown: impl Future<Output = ()> + Send,
    started: Instant,
    summary: &mut Summary,
) -> Result<()> {
    let produce_err = |stream: &str| {
        let stream = stream.to_string();
        move |source| Error::Produce { stream, source }
    };
    summary.producer_name = config.effective_producer_name();
    let tx_producer = Producer::connect(producer_config(config, &config.transactions_stream))
        .await
        .map_err(produce_err(&config.transactions_stream))?;
    let reg = tx_producer.registration();
    summary.transactions_producer_id = reg.producer_id;
    summary.transactions_epoch = reg.epoch;
    summary.transactions_resumed_from = reg.last_position;
    let label_producer = if config.labels {
        let p = Producer::connect(producer_config(config, &config.labels_stream))
            .await
            .map_err(produce_err(&config.labels_stream))?;
        let reg = p.registration();
        summary.labels_producer_id = reg.producer_id;
        summary.labels_epoch = reg.epoch;
        summary.labels_resumed_from = reg.last_position;
        Some(p)
    } else {
        None
    };
    let resume = Resume {
        tx: summary.transactions_resumed_from,
        labels: summary.labels_resumed_from,
    };
    let limit = match (&config.source, config.count) {
        (_, Some(n)) => n,
        (Source::Generate(_), None) => DEFAULT_COUNT,
        (Source::File { .. }, None) => u64::MAX,
    };
    tracing::info!(
        source = %summary.source,
        limit,
        rate_per_s = config.rate_per_s,
        batch_size = config.batch_size,
        producer_name = %summary.producer_name,
        transactions_producer_id = summary.transactions_producer_id,
        transactions_epoch = summary.transactions_epoch,
        transactions_resumed_from = resume.tx,
        labels_producer_id = summary.labels_producer_id,
        labels_resumed_from = resume.labels,
        "producing"
    );

    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(4);
    let reader_config = config.clone();
    let reader =
        tokio::task::spawn_blocking(move || read_source(&reader_config, limit, resume, batch_tx));
    let progress = Progress::start(
        config.progress,
        (limit != u64::MAX).then_some(limit.saturating_sub(resume.tx)),
        tx_producer.watch_stats(),
    );

    let mut bucket = (config.rate_per_s > 0.0).then(|| {
        TokenBucket::new(
            config.rate_per_s,
            (config.batch_size as f64).max(config.rate_per_s / 10.0),
            0.0,
        )
    });
    let mut failure: Option<Error> = None;
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            biased;
            () = &mut shutdown => {
                tracing::info!("shutdown requested; flushing what was queued");
                summary.interrupted = true;
                break;
            }
            b = batch_rx.recv() => match b { Some(b) => b, None => break },
        };
        summary.bad_rows += batch.bad_rows.len() as u64;
        summary.skipped_by_filter += batch.filtered;
        for bad in batch.bad_rows {
            if summary.bad_row_samples.len() < 100 {
                summary.bad_row_samples.push(bad);
            }
        }
        if !batch.tx.is_empty() || !batch.labels.is_empty() {
            if let Some(bucket) = bucket.as_mut() {
                let wait = bucket.reserve(batch.tx.len() as f64, started.elapsed().as_secs_f64());
                if wait > 0.0 {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => {
                            summary.interrupted = true;
                            break;
                        }
                        () = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
                    }
                }
            }
            let now = txpipe_client::now_us();
            let (mut txs, mut labels) = (batch.tx, batch.labels);
            for r in txs.iter_mut().chain(labels.iter_mut()) {
                r.timestamp_us = now;
            }
            let (n_tx, n_labels) = (txs.len() as u64, labels.len() as u64);
            if !txs.is_empty() && tx_producer.send_at(txs, batch.tx_position).await.is_err() {
                break; // The producer failed; close() below reports why.
            }
            summary.transactions_sent += n_tx;
            summary.fraud_labelled += batch.fraud;
            if let Some(lp) = &label_producer
                && !labels.is_empty()
            {
                if lp.send_at(labels, batch.labels_position).await.is_err() {
                    break;
                }
                summary.labels_sent += n_labels;
            }
        }
        if let Some(e) = batch.error {
            failure = Some(e);
            break;
        }
    }
    drop(batch_rx);
    let _ = reader.await;

    let tx_result = tx_producer.close().await;
    let label_result = match label_producer {
        Some(p) => Some(p.close().await),
        None => None,
    };
    progress.finish().await;
    let mut add = |s: &ProducerStats, tx: bool| {
        if tx {
            summary.transactions_acked = s.records_acked;
            summary.transactions_stored = s.records_stored;
        } else {
            summary.labels_acked = s.records_acked;
        }
        summary.duplicate_batches += s.duplicate_batches;
        summary.reconnects += s.reconnects;
    };
    if let Ok(s) = &tx_result {
        add(s, true);
    }
    if let Some(Ok(s)) = &label_result {
        add(s, false);
    }
    tx_result.map_err(produce_err(&config.transactions_stream))?;
    if let Some(r) = label_result {
        r.map_err(produce_err(&config.labels_stream))?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    tracing::info!(
        transactions = summary.transactions_acked,
        labels = summary.labels_acked,
        fraud = summary.fraud_labelled,
        bad_rows = summary.bad_rows,
        duplicate_batches = summary.duplicate_batches,
        reconnects = summary.reconnects,
        elapsed_s = started.elapsed().as_secs_f64(),
        "done"
    );
    Ok(())
}

/// Progress display: an indicatif bar, or a log line every 5 s.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Progress {
    fn start(
        mode: ProgressMode,
        total: Option<u64>,
        mut stats: tokio::sync::watch::Receiver<ProducerStats>,
    ) -> Self {
        let bar = match mode {
            ProgressMode::Always => true,
            ProgressMode::Never => false,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            if bar {
                let pb = match total {
                    Some(n) => indicatif::ProgressBar::new(n),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                let style = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40.cyan/blue}] {human_pos}/{human_len} acked  {per_sec}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                pb.set_style(style);
                loop {
                    pb.set_position(stats.borrow_and_update().records_acked);
                    tokio::select! {
                        _ = stopped.changed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
                pb.set_position(stats.borrow().records_acked);
                pb.finish();
            } else {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        _ = tick.tick() => {
                            let acked = stats.borrow().records_acked;
                            let secs = started.elapsed().as_secs_f64();
                            tracing::info!(acked, total = total.unwrap_or(0), rate_per_s = (acked as f64 / secs).round(), "progress");
                        }
                    }
                }
            }
        });
        Self { task, stop }
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
