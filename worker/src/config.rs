//! Worker configuration: every flag is also a `WORKER_*` environment variable (read by clap in
//! the binary, never by the library).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use txpipe_client::pan::{PanKeyArgs, PanKeyring};

use crate::model::Model;
use crate::scoring::{Scorer, Thresholds};
use crate::vector::{VectorModel, is_vector_model};
use crate::{Error, Result};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Worker settings (`txpipe-worker --help`).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Config {
    /// Broker addresses, comma separated (`host:port` or `http://host:port`).
    #[arg(long, env = "WORKER_BROKERS", default_value = "127.0.0.1:9100")]
    pub brokers: String,
    /// Consumer name shown by the broker; default `<hostname>-<pid>`.
    #[arg(long, env = "WORKER_NAME")]
    pub name: Option<String>,
    /// Consumer group; empty means the stream's default group.
    #[arg(long, env = "WORKER_GROUP", default_value = "")]
    pub group: String,
    /// In-flight window: unacked deliveries the broker may send to this worker.
    #[arg(long, env = "WORKER_WINDOW", default_value_t = 1000)]
    pub window: u32,
    /// AES-256-GCM seal+open rounds per transaction in the crypto stage.
    #[arg(long, env = "WORKER_CRYPTO_ROUNDS", default_value_t = 100)]
    pub crypto_rounds: u32,
    /// Latency of the awaited issuer call, microseconds (0 disables the call).
    #[arg(long, env = "WORKER_ISSUER_LATENCY_US", default_value_t = 100)]
    pub issuer_latency_us: u64,
    /// Model: a JSON file (the card model written by `txpipe-train`, or a vector model written
    /// by scripts/train_ulb.py), or an embedded one: `builtin:card` (the default),
    /// `builtin:ulb-gbt` or `builtin:ulb-lr` (pre-featurised ULB credit-card transactions; see
    /// docs/model-card-ulb.md). A vector model scores only transactions of its feature set.
    #[arg(long, env = "WORKER_MODEL")]
    pub model: Option<PathBuf>,
    /// Review threshold on the score (0-1); default: the model's recommendation.
    #[arg(long, env = "WORKER_REVIEW_THRESHOLD")]
    pub review_threshold: Option<f32>,
    /// Decline threshold on the score (0-1); default: the model's recommendation.
    #[arg(long, env = "WORKER_DECLINE_THRESHOLD")]
    pub decline_threshold: Option<f32>,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "WORKER_ADMIN_LISTEN", default_value = "0.0.0.0:9181")]
    pub admin_listen: SocketAddr,
    /// The PAN keys (required, no default): every key of the keyring opens; the current one
    /// seals the synthetic transactions of `bench-stages`.
    #[command(flatten)]
    pub pan: PanKeyArgs,
    /// Exit after this many decisions are acked (default: run until stopped).
    #[arg(long, env = "WORKER_MAX_TRANSACTIONS")]
    pub max_transactions: Option<u64>,
    /// Log format.
    #[arg(long, env = "WORKER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Time allowed to drain after SIGTERM/SIGINT, milliseconds; whatever is unfinished then
    /// is left unacked (the broker redelivers it).
    #[arg(long, env = "WORKER_DRAIN_GRACE_MS", default_value_t = 25_000)]
    pub drain_grace_ms: u64,
    /// Decisions per produce batch, at most.
    #[arg(long, env = "WORKER_DECISION_BATCH", default_value_t = 256)]
    pub decision_batch: usize,
    /// Longest a decision waits for its batch to fill before it is sent, microseconds.
    #[arg(long, env = "WORKER_DECISION_LINGER_US", default_value_t = 2_000)]
    pub decision_linger_us: u64,
    /// Transactions scored per chunk between other work of the event loop.
    #[arg(long, env = "WORKER_SCORE_CHUNK", default_value_t = 64)]
    pub score_chunk: usize,
    /// Redelivery delay sent with a nack, milliseconds. The worker's nacks are permanent
    /// failures (undecodable record, wrong feature set or length, non-finite features), which
    /// the broker dead-letters at once, so the delay has no effect today; kept for compatibility.
    #[arg(long, env = "WORKER_NACK_DELAY_MS", default_value_t = 0)]
    pub nack_delay_ms: u32,
    /// How long to keep trying to reach a broker before giving up, milliseconds.
    #[arg(long, env = "WORKER_RECONNECT_DEADLINE_MS", default_value_t = 60_000)]
    pub reconnect_deadline_ms: u64,
    /// Fail the decision producer over to another broker when no acknowledgement has come for this long while decisions are unacknowledged (a paused or cut-off leader), milliseconds; 0 disables.
    #[arg(long, env = "WORKER_PRODUCE_ACK_TIMEOUT_MS", default_value_t = 2_000)]
    pub produce_ack_timeout_ms: u64,
    /// Ask the other brokers who leads `decisions` once acknowledgements are this late, and move the decision producer to one that answers as the leader, milliseconds; 0 disables.
    #[arg(
        long,
        env = "WORKER_PRODUCE_LEADER_PROBE_AFTER_MS",
        default_value_t = 500
    )]
    pub produce_leader_probe_after_ms: u64,
    /// Decision produce batches in flight, at most: 1-16 (the broker remembers 16 recent
    /// batches per producer to answer a resend after a failover as a duplicate).
    #[arg(long, env = "WORKER_PRODUCE_IN_FLIGHT", default_value_t = 16)]
    pub produce_in_flight: usize,
    /// Mutual TLS towards the brokers (`--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`).
    #[command(flatten)]
    pub tls: txpipe_client::tls::TlsArgs,
}

impl Config {
    /// A config with every flag at its default (brokers at 127.0.0.1:9100), for tests and
    /// embedding. Reads no environment variable.
    pub fn defaults() -> Self {
        Self {
            brokers: "127.0.0.1:9100".into(),
            name: None,
            group: String::new(),
            window: 1000,
            crypto_rounds: 100,
            issuer_latency_us: 100,
            model: None,
            review_threshold: None,
            decline_threshold: None,
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9181)),
            pan: PanKeyArgs::default(),
            max_transactions: None,
            log_format: LogFormat::Text,
            drain_grace_ms: 25_000,
            decision_batch: 256,
            decision_linger_us: 2_000,
            score_chunk: 64,
            nack_delay_ms: 0,
            reconnect_deadline_ms: 60_000,
            produce_ack_timeout_ms: 2_000,
            produce_leader_probe_after_ms: 500,
            produce_in_flight: 16,
            tls: txpipe_client::tls::TlsArgs::default(),
        }
    }

    /// Checks cross-field rules. Errors: [`Error::Config`] naming the offending values.
    pub fn validate(&self) -> Result<()> {
        txpipe_client::connect::parse_addrs(&self.brokers)
            .map_err(|e| Error::Config(format!("--brokers {:?}: {e}", self.brokers)))?;
        self.tls.options().map_err(Error::Config)?;
        if self.window == 0 {
            return Err(Error::Config("--window must be at least 1".into()));
        }
        if self.decision_batch == 0 || self.score_chunk == 0 || self.produce_in_flight == 0 {
            return Err(Error::Config(format!(
                "--decision-batch ({}), --score-chunk ({}) and --produce-in-flight ({}) must be at least 1",
                self.decision_batch, self.score_chunk, self.produce_in_flight
            )));
        }
        if self.produce_in_flight > txpipe_client::produce::MAX_IN_FLIGHT {
            return Err(Error::Config(format!(
                "--produce-in-flight {} is above {}, the most batches a broker remembers per producer",
                self.produce_in_flight,
                txpipe_client::produce::MAX_IN_FLIGHT
            )));
        }
        if self.issuer_latency_us > 10_000_000 {
            return Err(Error::Config(format!(
                "--issuer-latency-us {} is above 10 s",
                self.issuer_latency_us
            )));
        }
        if self.max_transactions == Some(0) {
            return Err(Error::Config(
                "--max-transactions must be at least 1".into(),
            ));
        }
        // A key that is given must load; a missing one fails in [`Config::pan_keyring`].
        if self.pan.pan_key_file.is_some() || self.pan.pan_key_hex.is_some() {
            self.pan.keyring().map_err(Error::Config)?;
        }
        for (name, v) in [
            ("--review-threshold", self.review_threshold),
            ("--decline-threshold", self.decline_threshold),
        ] {
            if let Some(v) = v
                && !(0.0..=1.0).contains(&v)
            {
                return Err(Error::Config(format!("{name} {v} is outside 0-1")));
            }
        }
        if let (Some(r), Some(d)) = (self.review_threshold, self.decline_threshold)
            && r > d
        {
            return Err(Error::Config(format!(
                "--review-threshold {r} is above --decline-threshold {d}"
            )));
        }
        Ok(())
    }

    /// Broker endpoint URIs.
    pub fn broker_addrs(&self) -> Result<Vec<String>> {
        txpipe_client::connect::parse_addrs(&self.brokers)
            .map_err(|e| Error::Config(format!("--brokers {:?}: {e}", self.brokers)))
    }

    /// The PAN keyring of `--pan-key-file` or `--pan-key-hex`.
    ///
    /// Errors: [`Error::Config`] without a key ([`txpipe_client::pan::NO_PAN_KEY`]: there is
    /// no default key) or with one that cannot be read, naming the flag.
    pub fn pan_keyring(&self) -> Result<PanKeyring> {
        self.pan.keyring().map_err(Error::Config)
    }

    /// Loads the model `--model` names (see the flag). Errors: [`Error::Model`] for an
    /// unknown `builtin:` name, an unreadable file, or an invalid model.
    pub fn load_model(&self) -> Result<LoadedModel> {
        let Some(p) = &self.model else {
            return Ok(LoadedModel::Card(Box::new(Model::embedded())));
        };
        if let Some(name) = p.to_str().and_then(|s| s.strip_prefix("builtin:")) {
            return match name {
                "card" => Ok(LoadedModel::Card(Box::new(Model::embedded()))),
                _ => VectorModel::builtin(name)
                    .map(LoadedModel::Vector)
                    .ok_or_else(|| {
                        Error::Model(format!(
                            "unknown built-in model {name:?} (card, ulb-gbt, ulb-lr)"
                        ))
                    }),
            };
        }
        let json = std::fs::read_to_string(p)
            .map_err(|e| Error::Model(format!("reading {}: {e}", p.display())))?;
        let ctx = |e: Error| Error::Model(format!("{}: {e}", p.display()));
        if is_vector_model(&json) {
            VectorModel::from_json(&json)
                .map(LoadedModel::Vector)
                .map_err(ctx)
        } else {
            Model::from_json(&json)
                .map(|m| LoadedModel::Card(Box::new(m)))
                .map_err(ctx)
        }
    }

    /// Thresholds: flags override the model's recommendation. Errors: [`Error::Config`].
    pub fn thresholds(&self, model: &LoadedModel) -> Result<Thresholds> {
        let (review, decline) = model.recommended_thresholds();
        Thresholds::new(
            self.review_threshold.unwrap_or(review),
            self.decline_threshold.unwrap_or(decline),
        )
    }

    /// The scorer of this configuration: `--model`, thresholds, `--crypto-rounds`. A vector
    /// model is paired with the embedded card model for the card stages it never runs.
    /// Errors: as [`Self::load_model`] and [`Self::thresholds`].
    pub fn scorer(&self, pan_key: PanKeyring) -> Result<Scorer> {
        let model = self.load_model()?;
        let thresholds = self.thresholds(&model)?;
        Ok(match model {
            LoadedModel::Card(m) => Scorer::new(pan_key, self.crypto_rounds, *m, thresholds),
            LoadedModel::Vector(v) => {
                Scorer::new(pan_key, self.crypto_rounds, Model::embedded(), thresholds)
                    .with_vector_model(v)
            }
        })
    }

    /// The consumer name: `--name`, or `<hostname>-<pid>`.
    pub fn worker_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// Issuer call latency.
    pub fn issuer_latency(&self) -> Duration {
        Duration::from_micros(self.issuer_latency_us)
    }
}

/// The model `--model` names.
#[derive(Debug, Clone)]
pub enum LoadedModel {
    /// The card model (generated / card-format transactions).
    Card(Box<Model>),
    /// A vector model (pre-featurised transactions).
    Vector(VectorModel),
}

impl LoadedModel {
    /// The model's recommended (review, decline) thresholds.
    pub fn recommended_thresholds(&self) -> (f32, f32) {
        match self {
            LoadedModel::Card(m) => (m.file().review_threshold, m.file().decline_threshold),
            LoadedModel::Vector(v) => v.thresholds(),
        }
    }

    /// The model version.
    pub fn version(&self) -> &str {
        match self {
            LoadedModel::Card(m) => m.version(),
            LoadedModel::Vector(v) => v.version(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_flag_defaults() {
        use clap::{Args, FromArgMatches};
        let cmd = Config::augment_args(clap::Command::new("t").no_binary_name(true));
        let m = cmd.try_get_matches_from(Vec::<String>::new()).unwrap();
        let parsed = Config::from_arg_matches(&m).unwrap();
        // Only meaningful without WORKER_* variables in the test environment.
        if std::env::vars()
            .all(|(k, _)| !k.starts_with("WORKER_") && !k.starts_with("TXPIPE_PAN_KEY"))
        {
            assert_eq!(parsed, Config::defaults());
        }
    }

    #[test]
    fn defaults_validate() {
        let c = Config::defaults();
        c.validate().unwrap();
        assert_eq!(c.window, 1000);
        assert_eq!(c.crypto_rounds, 100);
        assert_eq!(c.issuer_latency_us, 100);
        assert_eq!(c.admin_listen.port(), 9181);
    }

    #[test]
    fn bad_values_are_rejected_with_their_names() {
        let mut c = Config::defaults();
        c.window = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--window"));
        let mut c = Config::defaults();
        c.review_threshold = Some(0.9);
        c.decline_threshold = Some(0.5);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--review-threshold")
        );
        let mut c = Config::defaults();
        c.pan.pan_key_hex = Some("abc".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--pan-key-hex")
        );
        let e = Config::defaults().pan_keyring().unwrap_err().to_string();
        assert!(
            e.contains("--pan-key-file") && e.contains("--pan-key-hex"),
            "{e}"
        );
        let mut c = Config::defaults();
        c.brokers = " , ".into();
        assert!(c.validate().unwrap_err().to_string().contains("--brokers"));
    }
}
