//! Broker configuration: clap flags (each also a `BROKER_*` environment variable, read by clap in
//! the binary only) and [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Most ledger shards (each is a Raft group on every node).
pub const MAX_LEDGER_SHARDS: u32 = 64;

/// Log output format of the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (local runs).
    Text,
    /// One JSON object per line (clusters).
    Json,
}

/// Broker settings. Defaults are the production values; tests shrink the timers.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "txpipe-broker",
    version,
    about = "txpipe broker: durable log, idempotent produce, work-queue delivery over gRPC"
)]
pub struct Config {
    /// gRPC listen address (Broker, grpc.health.v1, reflection).
    #[arg(long, env = "BROKER_LISTEN", default_value = "0.0.0.0:9100")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz, /, /status.json, POST
    /// /cluster/voters). HTTPS when TLS is on (voter changes need an operator certificate);
    /// without TLS it is unauthenticated.
    #[arg(long, env = "BROKER_ADMIN_LISTEN", default_value = "0.0.0.0:9180")]
    pub admin_listen: SocketAddr,
    /// Data directory; each stream keeps its log and snapshot in `<data-dir>/streams/<name>/`.
    #[arg(long, env = "BROKER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Roll to a new log segment at this size, bytes.
    #[arg(long, env = "BROKER_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// fdatasync before acknowledging (false only for page-cache benchmarks: acknowledged data
    /// can then be lost on a machine crash).
    #[arg(long, env = "BROKER_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub fsync: bool,
    /// In-flight window of a consumer that subscribes with window 0, messages.
    #[arg(long, env = "BROKER_DEFAULT_WINDOW", default_value_t = 1000)]
    pub default_window: u32,
    /// Deliveries not acked within this time are redelivered, milliseconds.
    #[arg(long, env = "BROKER_ACK_DEADLINE_MS", default_value_t = 30_000)]
    pub ack_deadline_ms: u32,
    /// Deliveries of one message before it goes to the dead-letter stream.
    #[arg(long, env = "BROKER_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// Largest produce batch (sum of key and value bytes), bytes. Larger: RESOURCE_EXHAUSTED.
    #[arg(long, env = "BROKER_MAX_BATCH_BYTES", default_value_t = 4 << 20)]
    pub max_batch_bytes: usize,
    /// Most records in one produce batch. More: RESOURCE_EXHAUSTED.
    #[arg(long, env = "BROKER_MAX_BATCH_RECORDS", default_value_t = 10_000)]
    pub max_batch_records: usize,
    /// Size limit of each limits stream (decisions, labels, dead letters), bytes.
    #[arg(long, env = "BROKER_DECISIONS_MAX_BYTES", default_value_t = 8 << 30)]
    pub decisions_max_bytes: u64,
    /// Age limit of limits streams' segments (humantime, e.g. `7d`, `12h`).
    #[arg(long, env = "BROKER_LIMITS_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub limits_max_age: Duration,
    /// Key dedupe of `decisions` and `transactions.dlq`: a key is remembered for this long after
    /// it was first stored, by the leader's clock, whatever retention removed (humantime,
    /// e.g. `7d`). The leader's value applies to every replica.
    #[arg(long, env = "BROKER_DEDUPE_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub dedupe_max_age: Duration,
    /// Key dedupe: at most this many keys are remembered per stream (the oldest go first),
    /// keys. On disk about 130 bytes a key.
    #[arg(long, env = "BROKER_DEDUPE_MAX_KEYS", default_value_t = crate::dedupe::DEFAULT_MAX_KEYS)]
    pub dedupe_max_keys: u64,
    /// Key dedupe: page cache of each stream's on-disk key index, bytes (the index's memory
    /// bound, whatever the window).
    #[arg(long, env = "BROKER_DEDUPE_CACHE_BYTES", default_value_t = crate::dedupe::DEFAULT_CACHE_BYTES)]
    pub dedupe_cache_bytes: usize,
    /// Keep acked work-queue records until the limits-stream size/age limits instead of
    /// deleting their segments once resolved (so an audit can read `transactions` back).
    #[arg(long, env = "BROKER_RETAIN_ACKED", default_value_t = false, action = clap::ArgAction::Set)]
    pub retain_acked: bool,
    /// When this replica's storage is found damaged at start-up (corruption before the log's
    /// tail, an unreadable snapshot) and the cluster has other replicas: move its data to
    /// `<data-dir>/quarantine/` and re-join under a new node id to re-sync from the leader.
    /// Off, or with a single replica: refuse to start and say why.
    #[arg(long, env = "BROKER_SELF_REPAIR", default_value_t = true, action = clap::ArgAction::Set)]
    pub self_repair: bool,
    /// Interval between state snapshots (and retention passes), milliseconds.
    #[arg(long, env = "BROKER_SNAPSHOT_INTERVAL_MS", default_value_t = 30_000)]
    pub snapshot_interval_ms: u64,
    /// Acks are collected for at most this long before one durable Ack entry is written,
    /// milliseconds.
    #[arg(long, env = "BROKER_ACK_FLUSH_MS", default_value_t = 2)]
    pub ack_flush_ms: u64,
    /// Memory for recently appended work-queue records served without a disk read, bytes.
    #[arg(long, env = "BROKER_CACHE_BYTES", default_value_t = 64 << 20)]
    pub cache_bytes: usize,
    /// Consumer group name of work-queue streams.
    #[arg(long, env = "BROKER_GROUP", default_value = "workers")]
    pub group: String,
    /// Log output format.
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Peer gRPC listen address (Raft traffic: txpipe.raft.v1.RaftPeer).
    #[arg(long, env = "BROKER_PEER_LISTEN", default_value = "0.0.0.0:9200")]
    pub peer_listen: SocketAddr,
    /// This replica's ordinal (its index in `--peers`). Default: the number after the last
    /// `-` of `$HOSTNAME` (StatefulSet pod `<name>-broker-2` → 2), else 0.
    #[arg(long, env = "BROKER_NODE_ID")]
    pub node_id: Option<u64>,
    /// Peer addresses `host:port` of every replica in ordinal order, comma-separated (e.g.
    /// `p-broker-0.p-broker-headless.ns.svc:9200,...`). Empty: a single-node cluster.
    #[arg(long, env = "BROKER_PEERS", value_delimiter = ',', num_args = 0..)]
    pub peers: Vec<String>,
    /// Client addresses `host:port` matching `--peers` (what leader hints name). Default: each
    /// peer's host with the `--listen` port.
    #[arg(long, env = "BROKER_CLIENT_ADDRS", value_delimiter = ',', num_args = 0..)]
    pub client_addrs: Vec<String>,
    /// Raft election timeout, lower bound, milliseconds (the upper bound is 1.5 x this).
    /// openraft lets a follower that knows a leader start an election (a pre-vote first) only
    /// after its leader lease (the upper bound) plus a random election timeout, so a dead leader
    /// is replaced after 0.75-0.9 s with the defaults (plus 0.9 s when the first candidate has
    /// the shorter log; measured p50/p99 to the first acknowledged produce in
    /// docs/benchmarks.md). A leader that no quorum acknowledged within the upper bound refuses
    /// new writes.
    #[arg(long, env = "BROKER_ELECTION_TIMEOUT_MS", default_value_t = 300)]
    pub election_timeout_ms: u64,
    /// Raft heartbeat interval, milliseconds.
    #[arg(long, env = "BROKER_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Deadline of every peer RPC (append-entries, vote, one snapshot chunk), milliseconds.
    #[arg(long, env = "BROKER_RAFT_RPC_TIMEOUT_MS", default_value_t = 2000)]
    pub raft_rpc_timeout_ms: u64,
    /// Raft log entries kept behind a snapshot for followers that are briefly behind (they
    /// catch up from the log instead of by install-snapshot); segments are deleted only
    /// behind this point.
    #[arg(long, env = "BROKER_RAFT_KEEP_ENTRIES", default_value_t = 20_000)]
    pub raft_keep_entries: u64,
    /// Raft entries a stream leader has in flight at once; proposals arriving meanwhile are
    /// coalesced into the next entry.
    #[arg(long, env = "BROKER_MAX_INFLIGHT_ENTRIES", default_value_t = 2)]
    pub max_inflight_entries: usize,
    /// Record bytes (keys and values) of produce batches accepted and not yet answered, over
    /// every connection, at most; a batch beyond it is refused with RESOURCE_EXHAUSTED (nothing
    /// stored; retry later). At least --max-batch-bytes.
    #[arg(long, env = "BROKER_MAX_INFLIGHT_PRODUCE_BYTES", default_value_t = 256 << 20)]
    pub max_inflight_produce_bytes: usize,
    /// Fetch calls reading the log at once; more wait up to 1 s for a turn, then
    /// RESOURCE_EXHAUSTED (reads share the blocking threads with the log's fsyncs).
    #[arg(long, env = "BROKER_MAX_CONCURRENT_READS", default_value_t = 16)]
    pub max_concurrent_reads: usize,
    /// Client connections on the gRPC port at once; more are closed at once (the client sees a
    /// transport error, as from a broker that is down, and tries another broker).
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Ledger shards (Raft groups `ledger-0` ... `ledger-{N-1}`, served by
    /// `txpipe.ledger.v1`); 0: no ledger. Fixed when the data directory is created
    /// (`<data-dir>/ledger.json`): a later start with another value is refused.
    #[arg(long, env = "BROKER_LEDGER_SHARDS", default_value_t = 0)]
    pub ledger_shards: u32,
    /// How account ids map to ledger shards: `range:<ids per shard>` (ids 1..=size on
    /// shard 0, ...; other ids hashed) or `hash`. Fixed like `--ledger-shards`.
    #[arg(long, env = "BROKER_LEDGER_PARTITIONING", default_value = "range:1000")]
    pub ledger_partitioning: String,
    /// This broker's certificate chain (PEM, leaf first) for the client and peer gRPC ports.
    /// With --tls-key-file and --tls-ca-file: both ports speak TLS only and require a client
    /// certificate signed by the CA (mutual TLS), and peers are dialled with this certificate;
    /// the admin port serves HTTPS with it (client certificate optional). None of the three:
    /// plaintext. The files are re-read when they change.
    #[arg(long, env = "BROKER_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// This broker's private key (PEM: PKCS#8, PKCS#1 or SEC1), see --tls-cert-file.
    #[arg(long, env = "BROKER_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client and peer certificates must chain to, see --tls-cert-file.
    #[arg(long, env = "BROKER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

impl Config {
    /// A config with every default and the given data directory (for tests and embedding).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: "0.0.0.0:9100".parse().expect("static address"),
            admin_listen: "0.0.0.0:9180".parse().expect("static address"),
            data_dir: data_dir.into(),
            segment_bytes: 64 << 20,
            fsync: true,
            default_window: 1000,
            ack_deadline_ms: 30_000,
            max_deliveries: 5,
            max_batch_bytes: 4 << 20,
            max_batch_records: 10_000,
            decisions_max_bytes: 8 << 30,
            limits_max_age: Duration::from_secs(7 * 24 * 3600),
            retain_acked: false,
            self_repair: true,
            dedupe_max_age: Duration::from_millis(crate::dedupe::DEFAULT_MAX_AGE_MS),
            dedupe_max_keys: crate::dedupe::DEFAULT_MAX_KEYS,
            dedupe_cache_bytes: crate::dedupe::DEFAULT_CACHE_BYTES,
            snapshot_interval_ms: 30_000,
            ack_flush_ms: 2,
            cache_bytes: 64 << 20,
            group: "workers".to_string(),
            log_format: LogFormat::Text,
            peer_listen: "0.0.0.0:9200".parse().expect("static address"),
            node_id: None,
            peers: Vec::new(),
            client_addrs: Vec::new(),
            election_timeout_ms: 300,
            heartbeat_ms: 100,
            raft_rpc_timeout_ms: 2000,
            max_inflight_entries: 2,
            raft_keep_entries: 20_000,
            max_inflight_produce_bytes: 256 << 20,
            max_concurrent_reads: 16,
            max_connections: 1024,
            ledger_shards: 0,
            ledger_partitioning: "range:1000".to_string(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
        }
    }

    /// The ledger partitioning (validated by [`Self::validate`]).
    ///
    /// Errors: [`Error::Config`] naming the value.
    pub fn partitioning(&self) -> Result<txpipe_client::ledger::Partitioning> {
        self.ledger_partitioning.parse().map_err(Error::Config)
    }

    /// This node's ordinal: `--node-id`, else the trailing number of `$HOSTNAME`, else 0.
    pub fn ordinal(&self) -> u64 {
        self.node_id.unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .and_then(|h| h.rsplit('-').next().and_then(|n| n.parse().ok()))
                .unwrap_or(0)
        })
    }

    /// Client address of the replica with ordinal `i`: `--client-addrs[i]`, else the host of
    /// `--peers[i]` with the `--listen` port, else the listen address itself (single node).
    pub fn client_addr(&self, i: usize) -> String {
        if let Some(a) = self.client_addrs.get(i) {
            return a.clone();
        }
        match self.peers.get(i) {
            Some(p) => {
                let host = p.rsplit_once(':').map_or(p.as_str(), |(h, _)| h);
                format!("{host}:{}", self.listen.port())
            }
            None => self.listen.to_string(),
        }
    }

    /// The TLS files: all three of `--tls-cert-file`, `--tls-key-file`, `--tls-ca-file` give
    /// `Some`, none gives `None` (plaintext).
    ///
    /// Errors: [`Error::Config`] naming the missing flags when only some are given.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>> {
        match (&self.tls_cert_file, &self.tls_key_file, &self.tls_ca_file) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert-file"),
                    (key.is_none(), "--tls-key-file"),
                    (ca.is_none(), "--tls-ca-file"),
                ]
                .into_iter()
                .filter_map(|(m, f)| m.then_some(f))
                .collect();
                Err(Error::Config(format!(
                    "TLS needs --tls-cert-file, --tls-key-file and --tls-ca-file together; missing {}",
                    missing.join(", ")
                )))
            }
        }
    }

    /// True when TLS is configured (all three `--tls-*` files given): the ports then speak
    /// mutual TLS only and calls are checked against [`crate::auth`].
    pub fn tls_enabled(&self) -> bool {
        matches!(self.tls_files(), Ok(Some(_)))
    }

    /// Checks ranges and cross-field rules.
    ///
    /// Errors: [`Error::Config`] naming the flag and the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.data_dir.as_os_str().is_empty() {
            return bad("--data-dir must not be empty".into());
        }
        self.tls_files()?;
        if self.segment_bytes < 4096 {
            return bad(format!(
                "--segment-bytes {} is below the minimum of 4096",
                self.segment_bytes
            ));
        }
        if self.default_window == 0 {
            return bad("--default-window 0: must be at least 1".into());
        }
        if self.ack_deadline_ms < 10 {
            return bad(format!(
                "--ack-deadline-ms {} is below the minimum of 10",
                self.ack_deadline_ms
            ));
        }
        if self.max_deliveries == 0 {
            return bad("--max-deliveries 0: must be at least 1".into());
        }
        if self.max_batch_bytes < 1024 || self.max_batch_bytes > (256 << 20) {
            return bad(format!(
                "--max-batch-bytes {} must be between 1024 and {}",
                self.max_batch_bytes,
                256 << 20
            ));
        }
        if self.max_batch_records == 0 {
            return bad("--max-batch-records 0: must be at least 1".into());
        }
        if self.decisions_max_bytes < self.segment_bytes {
            return bad(format!(
                "--decisions-max-bytes {} is smaller than --segment-bytes {}",
                self.decisions_max_bytes, self.segment_bytes
            ));
        }
        if self.limits_max_age.is_zero() {
            return bad("--limits-max-age must be greater than zero".into());
        }
        if self.dedupe_max_age < Duration::from_secs(1) {
            return bad(format!(
                "--dedupe-max-age {} is below the minimum of 1s",
                humantime::format_duration(self.dedupe_max_age)
            ));
        }
        if self.dedupe_max_keys == 0 {
            return bad("--dedupe-max-keys 0: must be at least 1".into());
        }
        if self.dedupe_cache_bytes < (1 << 20) {
            return bad(format!(
                "--dedupe-cache-bytes {} is below the minimum of {}",
                self.dedupe_cache_bytes,
                1 << 20
            ));
        }
        if self.snapshot_interval_ms < 10 {
            return bad(format!(
                "--snapshot-interval-ms {} is below the minimum of 10",
                self.snapshot_interval_ms
            ));
        }
        if self.ack_flush_ms > 1000 {
            return bad(format!(
                "--ack-flush-ms {} is above the maximum of 1000",
                self.ack_flush_ms
            ));
        }
        if self.group.is_empty() {
            return bad("--group must not be empty".into());
        }
        if !self.peers.is_empty() && self.ordinal() as usize >= self.peers.len() {
            return bad(format!(
                "node id {} is not an index of --peers ({} entries)",
                self.ordinal(),
                self.peers.len()
            ));
        }
        if !self.client_addrs.is_empty() && self.client_addrs.len() != self.peers.len() {
            return bad(format!(
                "--client-addrs has {} entries but --peers has {}",
                self.client_addrs.len(),
                self.peers.len()
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            return bad(format!(
                "--election-timeout-ms {} must be at least 3 x --heartbeat-ms {} (and heartbeat > 0)",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.raft_rpc_timeout_ms < 10 {
            return bad(format!(
                "--raft-rpc-timeout-ms {} is below the minimum of 10",
                self.raft_rpc_timeout_ms
            ));
        }
        if self.max_inflight_entries == 0 {
            return bad("--max-inflight-entries 0: must be at least 1".into());
        }
        if self.max_inflight_produce_bytes < self.max_batch_bytes {
            return bad(format!(
                "--max-inflight-produce-bytes {} is below --max-batch-bytes {}",
                self.max_inflight_produce_bytes, self.max_batch_bytes
            ));
        }
        if self.max_concurrent_reads == 0 || self.max_connections == 0 {
            return bad(format!(
                "--max-concurrent-reads ({}) and --max-connections ({}) must be at least 1",
                self.max_concurrent_reads, self.max_connections
            ));
        }
        if self.ledger_shards > MAX_LEDGER_SHARDS {
            return bad(format!(
                "--ledger-shards {} is above the maximum of {MAX_LEDGER_SHARDS}",
                self.ledger_shards
            ));
        }
        self.partitioning()?;
        Ok(())
    }

    /// Key-dedupe settings of the streams that deduplicate by key.
    pub fn dedupe(&self) -> crate::dedupe::DedupeConfig {
        crate::dedupe::DedupeConfig {
            window: crate::dedupe::Window {
                max_age_ms: self.dedupe_max_age.as_millis().min(u128::from(u64::MAX)) as u64,
                max_keys: self.dedupe_max_keys,
            },
            cache_bytes: self.dedupe_cache_bytes,
        }
    }

    /// Ack deadline as a duration.
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_millis(u64::from(self.ack_deadline_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let c = Config::parse_from(["txpipe-broker", "--data-dir", "/tmp/x"]);
        c.validate().unwrap();
        assert_eq!(c.default_window, 1000);
        let mut b = c.clone();
        b.max_deliveries = 0;
        assert!(
            b.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-deliveries 0")
        );
        assert_eq!(c.dedupe().window.max_age_ms, 7 * 24 * 3600 * 1000);
        let mut b = c.clone();
        b.dedupe_max_keys = 0;
        assert!(
            b.validate()
                .unwrap_err()
                .to_string()
                .contains("--dedupe-max-keys 0")
        );
        let mut b = c.clone();
        b.segment_bytes = 10;
        assert!(
            b.validate()
                .unwrap_err()
                .to_string()
                .contains("--segment-bytes 10")
        );
        assert!(
            Config::try_parse_from([
                "txpipe-broker",
                "--data-dir",
                "/x",
                "--limits-max-age",
                "soon"
            ])
            .is_err()
        );
    }
}
