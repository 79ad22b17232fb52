//! `txpipe-producer`: generates (or reads) card transactions and publishes them to a txpipe
//! broker. Every flag is also an environment variable (`PRODUCER_*`; the PAN keys are
//! `TXPIPE_PAN_KEY_FILE` or `TXPIPE_PAN_KEY`, required: no default key). Exit status 0 on success, 1 on any error (bad flags, unreachable or
//! rejecting broker, fenced by a newer instance of the same producer name, bad input row with
//! `--on-bad-row stop`), 130 when interrupted. A restart with the same settings (or the same
//! `--producer-name`) resumes after the last record the broker acknowledged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use txpipe_client::pan::PanKeyArgs;
use txpipe_producer::features::{
    DEFAULT_AMOUNT_COLUMN, DEFAULT_CURRENCY, DEFAULT_LABEL_COLUMN, DEFAULT_TIME_COLUMN,
    DEFAULT_TIME_ORIGIN, FeatureColumns,
};
use txpipe_producer::generate::GeneratorConfig;
use txpipe_producer::input::InputFormat;
use txpipe_producer::{Config, OnBadRow, ProgressMode, Source};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Generates realistic, labelled card transactions (or reads them from CSV / JSON Lines, or
/// pre-featurised transactions such as the ULB credit-card data from CSV) and publishes them to a txpipe broker: transactions to `transactions`, ground truth to `labels`.
#[derive(Debug, Parser)]
#[command(name = "txpipe-producer", version)]
struct Args {
    /// Broker addresses, comma-separated host:port.
    #[arg(long, env = "PRODUCER_BROKERS", default_value = "127.0.0.1:9100")]
    brokers: String,
    /// Mutual TLS towards the brokers (`--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`).
    #[command(flatten)]
    tls: txpipe_client::tls::TlsArgs,
    /// Transactions to send. Default: 2000000 generated, or every row of --input.
    #[arg(long, env = "PRODUCER_COUNT")]
    count: Option<u64>,
    /// Generator seed; the same seed always yields the same transactions.
    #[arg(long, env = "PRODUCER_SEED", default_value_t = 42)]
    seed: u64,
    /// Generated customers.
    #[arg(long, env = "PRODUCER_CUSTOMERS", default_value_t = 10_000)]
    customers: u32,
    /// Generated merchants (at least 50).
    #[arg(long, env = "PRODUCER_MERCHANTS", default_value_t = 5_000)]
    merchants: u32,
    /// Share of generated transactions that are fraud, 0.0-0.5.
    #[arg(long, env = "PRODUCER_FRAUD_RATE", default_value_t = 0.01)]
    fraud_rate: f64,
    /// Simulated start time, Unix microseconds (default 2025-01-01T00:00:00Z).
    #[arg(
        long,
        env = "PRODUCER_START_TIME_US",
        default_value_t = 1_735_689_600_000_000
    )]
    start_time_us: i64,
    /// Prefix of transaction ids, to keep runs apart: generated `<prefix>tx-<20 digits>`, features rows `<prefix>row-<line>`.
    #[arg(long, env = "PRODUCER_ID_PREFIX", default_value = "")]
    id_prefix: String,
    /// Transactions per second; 0 = unlimited.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 0.0)]
    rate: f64,
    /// Records per produce batch (1-10000).
    #[arg(long, env = "PRODUCER_BATCH_SIZE", default_value_t = 500)]
    batch_size: usize,
    /// Unacknowledged batches per stream, at most: 1-16 (the broker remembers 16 recent
    /// batches per producer to answer a resend after a failover as a duplicate).
    #[arg(long, env = "PRODUCER_MAX_IN_FLIGHT", default_value_t = 16)]
    max_in_flight: usize,
    /// Read transactions from this CSV or JSON Lines file instead of generating them.
    #[arg(long, env = "PRODUCER_INPUT")]
    input: Option<PathBuf>,
    /// Format of --input; default from the extension (.csv, .jsonl/.ndjson/.json). `features` (pre-featurised CSV, e.g. the ULB credit-card data) is never inferred.
    #[arg(long, env = "PRODUCER_INPUT_FORMAT", value_enum)]
    input_format: Option<InputFormat>,
    /// Features input: column of the event time, seconds after --time-origin.
    #[arg(long, env = "PRODUCER_TIME_COLUMN", default_value = DEFAULT_TIME_COLUMN)]
    time_column: String,
    /// Features input: column of the amount in major units of --features-currency (rounded to the cent).
    #[arg(long, env = "PRODUCER_AMOUNT_COLUMN", default_value = DEFAULT_AMOUNT_COLUMN)]
    amount_column: String,
    /// Features input: column of the 0/1 (or false/true) fraud label, sent to `labels` only. The default may be absent (no labels); a name given explicitly must exist.
    #[arg(long, env = "PRODUCER_LABEL_COLUMN", default_value = DEFAULT_LABEL_COLUMN)]
    label_column: String,
    /// Features input: feature columns in model order, comma-separated. Default: every column except the time and label columns, in header order.
    #[arg(long, env = "PRODUCER_FEATURE_COLUMNS", value_delimiter = ',')]
    feature_columns: Option<Vec<String>>,
    /// Features input: RFC 3339 time of time 0 of the time column (the default is the month the ULB data were collected).
    #[arg(long, env = "PRODUCER_TIME_ORIGIN", default_value = DEFAULT_TIME_ORIGIN, value_parser = parse_origin)]
    time_origin: i64,
    /// Features input: send only rows with time >= this, seconds (others count as skipped_by_filter).
    #[arg(long, env = "PRODUCER_TIME_FROM")]
    time_from: Option<f64>,
    /// Features input: send only rows with time < this, seconds (others count as skipped_by_filter).
    #[arg(long, env = "PRODUCER_TIME_UNTIL")]
    time_until: Option<f64>,
    /// Features input: ISO 4217 currency of the amounts.
    #[arg(long, env = "PRODUCER_FEATURES_CURRENCY", default_value = DEFAULT_CURRENCY)]
    features_currency: String,
    /// What to do with an input row that does not match the schema.
    #[arg(long, env = "PRODUCER_ON_BAD_ROW", value_enum, default_value_t = OnBadRow::Stop)]
    on_bad_row: OnBadRow,
    /// Write ground-truth Label records to the `labels` stream.
    #[arg(long, env = "PRODUCER_LABELS", default_value_t = true, action = clap::ArgAction::Set)]
    labels: bool,
    /// The PAN keys (required; the current key seals, its id is carried in
    /// Transaction.key_id and in the sealed PAN).
    #[command(flatten)]
    pan: PanKeyArgs,
    /// Progress display: a bar on a terminal (auto), always, or log lines only (never).
    #[arg(long, env = "PRODUCER_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Write a JSON summary to this file: the planned count before sending, then the totals
    /// (counts, elapsed, rate, producer ids, bad rows) at the end.
    #[arg(long, env = "PRODUCER_SUMMARY_JSON")]
    summary_json: Option<PathBuf>,
    /// How long to keep retrying an unreachable broker before failing, milliseconds.
    #[arg(long, env = "PRODUCER_RECONNECT_DEADLINE_MS", default_value_t = 60_000)]
    reconnect_deadline_ms: u64,
    /// Fail over to another broker when no acknowledgement has come for this long while batches are unacknowledged (a paused or cut-off leader keeps the call open and answers nothing), milliseconds; 0 disables.
    #[arg(long, env = "PRODUCER_ACK_TIMEOUT_MS", default_value_t = 2_000)]
    ack_timeout_ms: u64,
    /// Ask the other brokers who leads the stream once acknowledgements are this late, and move to one that answers as the leader (leaves a paused or cut-off leader about when a new one is elected), milliseconds; 0 disables.
    #[arg(long, env = "PRODUCER_LEADER_PROBE_AFTER_MS", default_value_t = 500)]
    leader_probe_after_ms: u64,
    /// Name the producer registers under on each stream (1-256 bytes). A restart with the same name resumes after the last acknowledged record and fences the previous instance. Default: derived from the settings that decide the records (generator: seed and the other generator flags; file: its absolute path, format and column settings; not --count).
    #[arg(long, env = "PRODUCER_NAME")]
    producer_name: Option<String>,
    /// Log format.
    #[arg(long, env = "PRODUCER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The ids of the features-input flags (warned about when given for another format).
const FEATURE_ARGS: &[&str] = &[
    "time_column",
    "amount_column",
    "label_column",
    "feature_columns",
    "time_origin",
    "time_from",
    "time_until",
    "features_currency",
];

fn parse_origin(v: &str) -> Result<i64, String> {
    txpipe_producer::input::parse_time(v)
}

/// Whether the flag `id` was given (command line or environment), not defaulted.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

fn config(args: Args, matches: &ArgMatches) -> anyhow::Result<Config> {
    let brokers = txpipe_client::connect::parse_addrs(&args.brokers).context("--brokers")?;
    let pan_key = args
        .pan
        .keyring()
        .map_err(anyhow::Error::msg)?
        .into_current();
    let source = match args.input {
        Some(path) => {
            let format = match args.input_format.or_else(|| InputFormat::from_path(&path)) {
                Some(f) => f,
                None => bail!(
                    "cannot tell the format of {} from its extension: give --input-format csv|jsonl|features",
                    path.display()
                ),
            };
            if format != InputFormat::Features {
                for id in FEATURE_ARGS.iter().filter(|id| given(matches, id)) {
                    tracing::warn!(
                        flag = %id.replace('_', "-"),
                        "ignored: only --input-format features uses it"
                    );
                }
            }
            Source::File { path, format }
        }
        None => Source::Generate(GeneratorConfig {
            seed: args.seed,
            customers: args.customers,
            merchants: args.merchants,
            fraud_rate: args.fraud_rate,
            start_time_us: args.start_time_us,
            id_prefix: args.id_prefix.clone(),
            ..GeneratorConfig::default()
        }),
    };
    let features = FeatureColumns {
        time: args.time_column.trim().to_string(),
        amount: args.amount_column.trim().to_string(),
        label: given(matches, "label_column").then(|| args.label_column.trim().to_string()),
        features: args
            .feature_columns
            .map(|v| v.iter().map(|f| f.trim().to_string()).collect()),
        time_origin_us: args.time_origin,
        time_from_s: args.time_from,
        time_until_s: args.time_until,
        currency: args.features_currency.trim().to_ascii_uppercase(),
        id_prefix: args.id_prefix.clone(),
    };
    let mut config = Config::new(brokers, Arc::new(pan_key));
    config.source = source;
    config.features = features;
    config.count = args.count;
    config.rate_per_s = args.rate;
    config.batch_size = args.batch_size;
    config.max_in_flight = args.max_in_flight;
    config.on_bad_row = args.on_bad_row;
    config.labels = args.labels;
    config.progress = args.progress;
    config.summary_json = args.summary_json;
    config.reconnect_deadline = Duration::from_millis(args.reconnect_deadline_ms);
    config.ack_timeout = Duration::from_millis(args.ack_timeout_ms);
    config.leader_probe_after = Duration::from_millis(args.leader_probe_after_ms);
    config.producer_name = args.producer_name;
    config.tls = args.tls.options().map_err(anyhow::Error::msg)?;
    config.validate()?;
    Ok(config)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_tracing(args.log_format);
    let config = match config(args, &matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match txpipe_producer::run(config, shutdown_signal()).await {
        Ok(summary) if summary.interrupted => std::process::ExitCode::from(130),
        Ok(summary) => {
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
