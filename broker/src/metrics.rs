//! Prometheus metrics, one [`prometheus::Registry`] per broker instance (so tests can run several
//! brokers in one process). Names follow `txpipe_broker_<what>_<unit>`.
//!
//! On Linux each registry also holds a [`prometheus::process_collector::ProcessCollector`] of
//! the current process (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...; read from `/proc/self` at every scrape). Several brokers in one
//! process (tests) therefore report the same process figures.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// All broker metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    produced: IntCounterVec,
    batches: IntCounterVec,
    deduplicated: IntCounterVec,
    delivered: IntCounterVec,
    redelivered: IntCounterVec,
    acked: IntCounterVec,
    dead_lettered: IntCounterVec,
    dead_letter_failures: IntCounterVec,
    pending: IntGaugeVec,
    in_flight: IntGaugeVec,
    consumers: IntGaugeVec,
    producers: IntGaugeVec,
    log_bytes: IntGaugeVec,
    log_segments: IntGaugeVec,
    /// fdatasync calls of every stream's group-commit writer.
    pub fsync_total: IntCounter,
    /// Start-ups that found the storage damaged and quarantined it to re-sync under a new node
    /// id ([`crate::repair`]).
    pub self_repairs: IntCounter,
    /// Client connections closed at once because `--max-connections` were open.
    pub connections_rejected: IntCounter,
    /// TLS handshakes that failed or timed out (client and peer ports), by port.
    pub tls_handshake_failures: IntCounterVec,
    append_seconds: HistogramVec,
    fsync_seconds: HistogramVec,
    entries_per_fsync: GaugeVec,
    raft_term: IntGaugeVec,
    raft_leader: IntGaugeVec,
    raft_is_leader: IntGaugeVec,
    raft_commit_index: IntGaugeVec,
    raft_applied_index: IntGaugeVec,
    raft_last_log_index: IntGaugeVec,
    raft_leader_changes: IntCounterVec,
    quorum_lease_lost: IntCounterVec,
    snapshots: IntCounterVec,
    snapshot_bytes: IntGaugeVec,
    lag: IntGaugeVec,
    dedupe_keys: IntGaugeVec,
    dedupe_window_seconds: IntGaugeVec,
    dedupe_window_keys: IntGaugeVec,
    dedupe_index_bytes: IntGaugeVec,
    dedupe_evictions: IntCounterVec,
    dedupe_lookups: IntCounterVec,
    dedupe_hits: IntCounterVec,
}

/// Handles of one stream's metrics (label lookups done once).
#[derive(Clone)]
pub struct StreamMetrics {
    /// Records stored.
    pub produced: IntCounter,
    /// Produce batches answered successfully.
    pub batches_ok: IntCounter,
    /// Produce batches answered as duplicates.
    pub batches_duplicate: IntCounter,
    /// Records dropped by key dedupe.
    pub dedup_key: IntCounter,
    /// Records delivered (every attempt).
    pub delivered: IntCounter,
    /// Redeliveries after an ack deadline.
    pub redelivered_deadline: IntCounter,
    /// Redeliveries after a nack.
    pub redelivered_nack: IntCounter,
    /// Redeliveries after a consumer disconnect.
    pub redelivered_disconnect: IntCounter,
    /// Acks made durable.
    pub acked: IntCounter,
    /// Records dead-lettered.
    pub dead_lettered: IntCounter,
    /// Dead-letter moves that failed (the append to the dead-letter stream or the resolving
    /// command) and are retried with backoff (50 ms doubling to 5 s) while this node leads.
    pub dead_letter_failures: IntCounter,
    /// Unresolved work-queue records.
    pub pending: IntGauge,
    /// Delivered, not yet acked.
    pub in_flight: IntGauge,
    /// Connected consumers.
    pub consumers: IntGauge,
    /// Open Produce calls that wrote to this stream.
    pub producers: IntGauge,
    /// Bytes of segment files.
    pub log_bytes: IntGauge,
    /// Segment files.
    pub log_segments: IntGauge,
    /// Append + fsync time per group-commit batch, seconds.
    pub append_seconds: Histogram,
    /// Time of each fdatasync of the group-commit writer alone, seconds (observed only when a
    /// sync is really made: never with `fsync = false`).
    pub fsync_seconds: Histogram,
    /// Log entries made durable per fsync over the last sampling interval (1 s).
    pub entries_per_fsync: Gauge,
    /// Raft term of the stream's group as seen by this node.
    pub raft_term: IntGauge,
    /// Node id of the group's current leader (-1: none known).
    pub raft_leader: IntGauge,
    /// 1 when this node leads the group.
    pub raft_is_leader: IntGauge,
    /// Highest log index known committed.
    pub raft_commit_index: IntGauge,
    /// Highest log index applied to the state machine.
    pub raft_applied_index: IntGauge,
    /// Last log index on this node.
    pub raft_last_log_index: IntGauge,
    /// Leader changes seen by this node.
    pub raft_leader_changes: IntCounter,
    /// Times this node, leading the stream, stopped deliveries because no quorum acknowledged
    /// it within the lease (cut off from its followers).
    pub quorum_lease_lost: IntCounter,
    /// Snapshots built by this node.
    pub snapshots: IntCounter,
    /// Size of the newest snapshot file, bytes.
    pub snapshot_bytes: IntGauge,
    /// Keys remembered by key dedupe (streams that deduplicate by key).
    pub dedupe_keys: IntGauge,
    /// Age window of key dedupe in force, seconds.
    pub dedupe_window_seconds: IntGauge,
    /// Count window of key dedupe in force, keys.
    pub dedupe_window_keys: IntGauge,
    /// Size of the key-dedupe index file, bytes.
    pub dedupe_index_bytes: IntGauge,
    /// Keys forgotten by the dedupe window (age or count), applied by this node.
    pub dedupe_evictions: IntCounter,
    /// Keyed records looked up in the dedupe index.
    pub dedupe_lookups: IntCounter,
    /// Lookups that found the key (records dropped as duplicates).
    pub dedupe_hits: IntCounter,
    lag: IntGaugeVec,
    batches: IntCounterVec,
    name: String,
}

impl StreamMetrics {
    /// Sets the replication lag (entries behind the leader's last log index) of `follower`.
    pub fn set_lag(&self, follower: u64, entries: i64) {
        self.lag
            .with_label_values(&[self.name.as_str(), &follower.to_string()])
            .set(entries);
    }
    /// Counts a produce batch that ended with error `label` (see [`crate::Error::metric_label`]).
    pub fn batch_failed(&self, label: &str) {
        self.batches
            .with_label_values(&[self.name.as_str(), label])
            .inc();
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let gv = |name: &str, help: &str| {
            let m = IntGaugeVec::new(Opts::new(name, help), &["stream"]).expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let hv = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["stream"])
                .expect("metric");
            registry.register(Box::new(m.clone())).expect("register");
            m
        };
        let fsync_total = IntCounter::new(
            "txpipe_broker_fsync_total",
            "fdatasync calls of the group-commit writers",
        )
        .expect("metric");
        registry
            .register(Box::new(fsync_total.clone()))
            .expect("register");
        let self_repairs = IntCounter::new(
            "txpipe_broker_self_repairs_total",
            "start-ups that found this replica's storage damaged, quarantined it and re-joined under a new node id",
        )
        .expect("metric");
        registry
            .register(Box::new(self_repairs.clone()))
            .expect("register");
        let connections_rejected = IntCounter::new(
            "txpipe_broker_connections_rejected_total",
            "client connections closed at once because --max-connections were open",
        )
        .expect("metric");
        registry
            .register(Box::new(connections_rejected.clone()))
            .expect("register");
        let tls_handshake_failures = IntCounterVec::new(
            prometheus::Opts::new(
                "txpipe_broker_tls_handshake_failures_total",
                "TLS handshakes refused or timed out (no or an untrusted client certificate, plaintext, expired), by port",
            ),
            &["port"],
        )
        .expect("metric");
        registry
            .register(Box::new(tls_handshake_failures.clone()))
            .expect("register");
        register_process_collector(&registry);
        Self {
            dedupe_keys: gv(
                "txpipe_broker_dedupe_keys",
                "Keys remembered by key dedupe (within the window)",
            ),
            dedupe_window_seconds: gv(
                "txpipe_broker_dedupe_window_seconds",
                "Age window of key dedupe in force (the leader's), seconds",
            ),
            dedupe_window_keys: gv(
                "txpipe_broker_dedupe_window_keys",
                "Count window of key dedupe in force (the leader's), keys",
            ),
            dedupe_index_bytes: gv(
                "txpipe_broker_dedupe_index_bytes",
                "Size of the on-disk key-dedupe index file",
            ),
            dedupe_evictions: cv(
                "txpipe_broker_dedupe_evictions_total",
                "Keys forgotten by the dedupe window (age or count)",
                &["stream"],
            ),
            dedupe_lookups: cv(
                "txpipe_broker_dedupe_lookups_total",
                "Keyed records looked up in the dedupe index",
                &["stream"],
            ),
            dedupe_hits: cv(
                "txpipe_broker_dedupe_hits_total",
                "Dedupe lookups that found the key (record dropped)",
                &["stream"],
            ),
            produced: cv(
                "txpipe_broker_produced_records_total",
                "Records stored",
                &["stream"],
            ),
            batches: cv(
                "txpipe_broker_produce_batches_total",
                "Produce batches by result",
                &["stream", "result"],
            ),
            deduplicated: cv(
                "txpipe_broker_deduplicated_records_total",
                "Records not stored again: kind=key (key dedupe) or batch (producer retry)",
                &["stream", "kind"],
            ),
            delivered: cv(
                "txpipe_broker_delivered_records_total",
                "Deliveries, every attempt",
                &["stream"],
            ),
            redelivered: cv(
                "txpipe_broker_redelivered_records_total",
                "Records scheduled for redelivery, by reason",
                &["stream", "reason"],
            ),
            acked: cv(
                "txpipe_broker_acked_records_total",
                "Acks made durable",
                &["stream"],
            ),
            dead_lettered: cv(
                "txpipe_broker_dead_lettered_records_total",
                "Records moved to the dead-letter stream",
                &["stream"],
            ),
            dead_letter_failures: cv(
                "txpipe_broker_dead_letter_failures_total",
                "Dead-letter moves that failed and are retried with backoff",
                &["stream"],
            ),
            pending: gv(
                "txpipe_broker_pending_records",
                "Work-queue records neither acked nor dead-lettered",
            ),
            in_flight: gv(
                "txpipe_broker_in_flight_records",
                "Delivered records not yet acked",
            ),
            consumers: gv("txpipe_broker_consumers", "Connected consumers"),
            producers: gv(
                "txpipe_broker_producers",
                "Open Produce calls that wrote to the stream",
            ),
            log_bytes: gv(
                "txpipe_broker_log_bytes",
                "Bytes of the stream's segment files",
            ),
            log_segments: gv("txpipe_broker_log_segments", "Segment files of the stream"),
            fsync_total,
            self_repairs,
            connections_rejected,
            tls_handshake_failures,
            append_seconds: hv(
                "txpipe_broker_append_duration_seconds",
                "Group-commit append + fdatasync per batch",
                disk_buckets(),
            ),
            fsync_seconds: hv(
                "txpipe_broker_fsync_duration_seconds",
                "fdatasync of the group-commit writer alone, per batch",
                disk_buckets(),
            ),
            entries_per_fsync: {
                let m = GaugeVec::new(
                    Opts::new(
                        "txpipe_broker_entries_per_fsync",
                        "Log entries made durable per fdatasync over the last second",
                    ),
                    &["stream"],
                )
                .expect("metric");
                registry.register(Box::new(m.clone())).expect("register");
                m
            },
            raft_term: gv("txpipe_broker_raft_term", "Raft term of the stream's group"),
            raft_leader: gv(
                "txpipe_broker_raft_leader_id",
                "Node id of the stream group's leader (-1 when none is known)",
            ),
            raft_is_leader: gv(
                "txpipe_broker_raft_is_leader",
                "1 when this node leads the stream's group",
            ),
            raft_commit_index: gv(
                "txpipe_broker_raft_commit_index",
                "Highest Raft log index known committed",
            ),
            raft_applied_index: gv(
                "txpipe_broker_raft_applied_index",
                "Highest Raft log index applied to the state machine",
            ),
            raft_last_log_index: gv(
                "txpipe_broker_raft_last_log_index",
                "Last Raft log index on this node",
            ),
            raft_leader_changes: cv(
                "txpipe_broker_raft_leader_changes_total",
                "Leader changes of the stream's group seen by this node",
                &["stream"],
            ),
            quorum_lease_lost: cv(
                "txpipe_broker_quorum_lease_lost_total",
                "Times this node, leading the stream, stopped deliveries because no quorum acknowledged it within the lease",
                &["stream"],
            ),
            snapshots: cv(
                "txpipe_broker_snapshots_total",
                "Snapshots built",
                &["stream"],
            ),
            snapshot_bytes: gv(
                "txpipe_broker_snapshot_bytes",
                "Size of the newest snapshot file",
            ),
            lag: {
                let m = IntGaugeVec::new(
                    Opts::new(
                        "txpipe_broker_raft_replication_lag_entries",
                        "Entries a follower is behind the leader's last log index (on the leader)",
                    ),
                    &["stream", "follower"],
                )
                .expect("metric");
                registry.register(Box::new(m.clone())).expect("register");
                m
            },
            registry,
        }
    }

    /// Handles for `stream`.
    pub fn stream(&self, stream: &str) -> StreamMetrics {
        let l = &[stream];
        StreamMetrics {
            produced: self.produced.with_label_values(l),
            batches_ok: self.batches.with_label_values(&[stream, "ok"]),
            batches_duplicate: self.batches.with_label_values(&[stream, "duplicate"]),
            dedup_key: self.deduplicated.with_label_values(&[stream, "key"]),
            delivered: self.delivered.with_label_values(l),
            redelivered_deadline: self
                .redelivered
                .with_label_values(&[stream, "ack_deadline"]),
            redelivered_nack: self.redelivered.with_label_values(&[stream, "nack"]),
            redelivered_disconnect: self.redelivered.with_label_values(&[stream, "disconnect"]),
            acked: self.acked.with_label_values(l),
            dead_lettered: self.dead_lettered.with_label_values(l),
            dead_letter_failures: self.dead_letter_failures.with_label_values(l),
            pending: self.pending.with_label_values(l),
            in_flight: self.in_flight.with_label_values(l),
            consumers: self.consumers.with_label_values(l),
            producers: self.producers.with_label_values(l),
            log_bytes: self.log_bytes.with_label_values(l),
            log_segments: self.log_segments.with_label_values(l),
            append_seconds: self.append_seconds.with_label_values(l),
            fsync_seconds: self.fsync_seconds.with_label_values(l),
            entries_per_fsync: self.entries_per_fsync.with_label_values(l),
            raft_term: self.raft_term.with_label_values(l),
            raft_leader: self.raft_leader.with_label_values(l),
            raft_is_leader: self.raft_is_leader.with_label_values(l),
            raft_commit_index: self.raft_commit_index.with_label_values(l),
            raft_applied_index: self.raft_applied_index.with_label_values(l),
            raft_last_log_index: self.raft_last_log_index.with_label_values(l),
            raft_leader_changes: self.raft_leader_changes.with_label_values(l),
            quorum_lease_lost: self.quorum_lease_lost.with_label_values(l),
            snapshots: self.snapshots.with_label_values(l),
            snapshot_bytes: self.snapshot_bytes.with_label_values(l),
            dedupe_keys: self.dedupe_keys.with_label_values(l),
            dedupe_window_seconds: self.dedupe_window_seconds.with_label_values(l),
            dedupe_window_keys: self.dedupe_window_keys.with_label_values(l),
            dedupe_index_bytes: self.dedupe_index_bytes.with_label_values(l),
            dedupe_evictions: self.dedupe_evictions.with_label_values(l),
            dedupe_lookups: self.dedupe_lookups.with_label_values(l),
            dedupe_hits: self.dedupe_hits.with_label_values(l),
            lag: self.lag.clone(),
            batches: self.batches.clone(),
            name: stream.to_string(),
        }
    }

    /// Counts a duplicate (retried) batch's records.
    pub fn dedup_batch(&self, stream: &str, records: u64) {
        self.deduplicated
            .with_label_values(&[stream, "batch"])
            .inc_by(records);
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            return format!("# encode error: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Buckets of the disk histograms (append, fdatasync), seconds: 50 µs × 2^k for k = 0..15,
/// i.e. 50 µs to 1.64 s (a flush on NVMe is tens of µs, on network block storage ms to 100s
/// of ms).
fn disk_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("buckets")
}

/// Registers the `process_*` collector of this process in `registry` (Linux only: the
/// `prometheus` crate reads `/proc`; elsewhere nothing is registered).
fn register_process_collector(registry: &Registry) {
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("register");
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value of the sample line `name` (exact series, labels included) in a rendered body.
    fn sample(body: &str, series: &str) -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn fsync_histogram_is_rendered_per_stream_with_its_observations() {
        let m = Metrics::new();
        let s = m.stream("transactions");
        let body = m.render();
        assert!(
            body.contains("# TYPE txpipe_broker_fsync_duration_seconds histogram"),
            "{body}"
        );
        let count = "txpipe_broker_fsync_duration_seconds_count{stream=\"transactions\"}";
        assert_eq!(sample(&body, count), Some(0.0), "{body}");
        s.fsync_seconds.observe(0.002);
        s.fsync_seconds.observe(0.004);
        let body = m.render();
        assert_eq!(sample(&body, count), Some(2.0), "{body}");
        // 2 ms and 4 ms: both above the 1.6 ms bucket, both within 6.4 ms.
        let bucket = |le: &str| {
            sample(
                &body,
                &format!(
                    "txpipe_broker_fsync_duration_seconds_bucket{{stream=\"transactions\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.0016"), Some(0.0), "{body}");
        assert_eq!(bucket("0.0064"), Some(2.0), "{body}");
        assert_eq!(bucket("+Inf"), Some(2.0), "{body}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_rendered() {
        let body = Metrics::new().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
        ] {
            assert!(
                body.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{body}"
            );
        }
        let rss = sample(&body, "process_resident_memory_bytes").expect("rss sample");
        assert!(rss > 0.0, "{rss}");
        let fds = sample(&body, "process_open_fds").expect("fd sample");
        assert!(fds >= 1.0, "{fds}");
    }
}
