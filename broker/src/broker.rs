//! The broker: its streams, their delivery tasks, background snapshots/retention and live
//! status. Transport-free: [`crate::service`] puts gRPC in front of it, [`crate::admin`] HTTP.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use txpipe_client::broker::v1::{RetentionPolicy, StreamInfo};
use txpipe_client::streams;

use crate::config::Config;
use crate::delivery::{DeliveryConfig, DeliveryHandle};
use crate::error::{Error, Result};
use crate::health::{HealthReport, HealthTracker, StreamProbe};
use crate::metrics::Metrics;
use crate::raft::NodeId;
use crate::raft::cluster::Cluster;
use crate::raft::network::NetworkFactory;
use crate::replica::{Replica, ReplicaConfig, Storage};
use crate::state::{Retention, StreamSpec};

/// One stream: its replica and, for work queues, its consumer group.
#[derive(Clone)]
pub struct Stream {
    /// Storage, state and Raft group.
    pub replica: Arc<Replica>,
    /// Consumer group of a work-queue stream: `Some` on every node, holding a running
    /// delivery task only while this node leads the stream's group.
    pub delivery: Option<Arc<DeliverySlot>>,
}

/// The consumer group of a work-queue stream on this node.
pub struct DeliverySlot {
    /// Settings of the group.
    pub config: DeliveryConfig,
    handle: Mutex<Option<DeliveryHandle>>,
}

impl DeliverySlot {
    /// The running delivery task (only on the stream's leader).
    pub fn handle(&self) -> Option<DeliveryHandle> {
        self.handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Stream {
    /// The delivery task when this node leads the work-queue stream.
    ///
    /// Errors: [`Error::InvalidArgument`] for a limits stream, [`Error::NotLeader`] on a
    /// follower.
    pub fn delivery(&self) -> Result<DeliveryHandle> {
        let Some(slot) = &self.delivery else {
            return Err(Error::InvalidArgument(format!(
                "stream {:?} is not a work queue; read it with Fetch",
                self.replica.spec.name
            )));
        };
        match slot.handle() {
            Some(h) if self.replica.is_leader() => Ok(h),
            _ => Err(self.replica.not_leader()),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `/status.json` and its parts: defined once in [`txpipe_client::status`] and read by the
/// operator and `txpipe` through the same types.
pub use txpipe_client::status::{BrokerStatus, RaftStatus, StreamStatus};

/// The broker. See the module docs.
pub struct Broker {
    /// Streams by name.
    pub streams: BTreeMap<String, Stream>,
    /// Settings.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Set once recovery is done and gRPC serves (see [`Self::is_ready`]).
    pub ready: AtomicBool,
    /// Becomes true at shutdown; long-lived calls end.
    pub shutdown: watch::Receiver<bool>,
    /// Identity, peers and membership.
    pub cluster: Arc<Cluster>,
    /// Admission limits (in-flight produce bytes, concurrent reads, connections).
    pub limits: crate::limits::Limits,
    status: Mutex<BrokerStatus>,
    health: Mutex<HealthReport>,
    started: Instant,
}

/// The standard streams of a pipeline (see docs/architecture.md, "Streams").
pub fn standard_streams(group: &str) -> Vec<StreamSpec> {
    let limits = |name: &str, dedupe: bool| StreamSpec {
        name: name.into(),
        retention: Retention::Limits,
        dedupe_by_key: dedupe,
        group: String::new(),
        dead_letter_stream: None,
        ledger: false,
    };
    vec![
        StreamSpec {
            name: streams::TRANSACTIONS.into(),
            retention: Retention::WorkQueue,
            dedupe_by_key: false,
            group: group.into(),
            dead_letter_stream: Some(streams::TRANSACTIONS_DLQ.into()),
            ledger: false,
        },
        limits(streams::DECISIONS, true),
        limits(streams::LABELS, false),
        // Deduplicated by key so that a dead letter re-written after a crash is stored once.
        limits(streams::TRANSACTIONS_DLQ, true),
    ]
}

/// Every stream of a broker with `config`: the [`standard_streams`] and, when
/// `--ledger-shards N` is set, the ledger shards `ledger-0` ... `ledger-{N-1}`
/// ([`crate::ledger_service`]).
pub fn all_streams(config: &Config) -> Vec<StreamSpec> {
    let mut specs = standard_streams(&config.group);
    specs.extend((0..config.ledger_shards).map(|i| StreamSpec {
        name: txpipe_client::ledger::shard_name(i),
        retention: Retention::Limits,
        dedupe_by_key: false,
        group: String::new(),
        dead_letter_stream: None,
        ledger: true,
    }));
    specs
}

/// File in the data directory that fixes the ledger layout at the first start.
pub const LEDGER_LAYOUT_FILE: &str = "ledger.json";

/// The ledger layout of a data directory (`<data-dir>/ledger.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerLayout {
    /// Shard count (0: no ledger).
    pub shards: u32,
    /// `range:<size>` or `hash`.
    pub partitioning: String,
}

/// Checks the configured ledger layout against the one recorded in the data directory, or
/// records it when there is none (first start, or a directory of a version before ledgers).
///
/// Errors: [`Error::Config`] when they differ (naming both: accounts would move to other
/// shards), or the file is unreadable; [`Error::Io`] when it cannot be written.
pub fn check_ledger_layout(config: &Config) -> Result<LedgerLayout> {
    let want = LedgerLayout {
        shards: config.ledger_shards,
        partitioning: config.partitioning()?.to_string(),
    };
    let path = config.data_dir.join(LEDGER_LAYOUT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let have: LedgerLayout = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!("{}: unreadable ledger layout: {e}", path.display()))
            })?;
            // With no shards the partitioning means nothing: only the count must match.
            if have.shards != want.shards
                || (want.shards > 0 && have.partitioning != want.partitioning)
            {
                return Err(Error::Config(format!(
                    "the data directory was created with --ledger-shards {} --ledger-partitioning {} ({}), this broker was started with --ledger-shards {} --ledger-partitioning {}; the ledger layout is fixed for the life of a cluster (accounts would change shards): start with the recorded values",
                    have.shards,
                    have.partitioning,
                    path.display(),
                    want.shards,
                    want.partitioning
                )));
            }
            Ok(have)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_vec_pretty(&want).expect("layout serialises");
            std::fs::create_dir_all(&config.data_dir)?;
            crate::snapshot::write_file_atomic(&config.data_dir, LEDGER_LAYOUT_FILE, &json)?;
            Ok(want)
        }
        Err(e) => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))),
    }
}

/// The replica settings of `spec` from the broker configuration.
fn replica_config(config: &Config, spec: &StreamSpec) -> ReplicaConfig {
    ReplicaConfig {
        segment_bytes: config.segment_bytes,
        fsync: config.fsync,
        max_entry_bytes: (2 * config.max_batch_bytes + 16 * config.max_batch_records + (9 << 20))
            .min(u32::MAX as usize) as u32,
        cache_bytes: if spec.retention == Retention::WorkQueue {
            config.cache_bytes
        } else {
            0
        },
        max_bytes: config.decisions_max_bytes,
        max_age: config.limits_max_age,
        retain_acked: config.retain_acked,
        max_inflight_entries: config.max_inflight_entries,
        dedupe: config.dedupe(),
        // One append round trip to the followers at its deadline, plus twice the leader lease
        // (2 x 1.5 x the election timeout).
        commit_timeout: Duration::from_millis(
            config.raft_rpc_timeout_ms + 3 * config.election_timeout_ms,
        ),
    }
}

impl Broker {
    /// Checks (or records) the ledger layout ([`check_ledger_layout`]), then recovers the
    /// storage of every stream ([`all_streams`]) under `config.data_dir`
    /// ([`Replica::open_storage`]), without starting Raft.
    ///
    /// Errors: [`Error::Config`] for another ledger layout; the first stream's recovery error ([`Error::Log`], [`Error::Snapshot`], ...),
    /// with I/O errors naming the stream.
    pub fn open_storage(config: &Config, metrics: &Metrics) -> Result<BTreeMap<String, Storage>> {
        check_ledger_layout(config)?;
        let mut out = BTreeMap::new();
        for spec in &all_streams(config) {
            let dir = config.data_dir.join("streams").join(&spec.name);
            let storage = Replica::open_storage(
                spec.clone(),
                &dir,
                replica_config(config, spec),
                metrics.stream(&spec.name),
            )
            .map_err(|e| match e {
                Error::Io(io) => Error::Io(std::io::Error::new(
                    io.kind(),
                    format!("stream {}: {io}", spec.name),
                )),
                other => other,
            })?;
            out.insert(spec.name.clone(), storage);
        }
        Ok(out)
    }

    /// Starts the Raft groups of the recovered `storage` ([`Self::open_storage`]) as node
    /// `node_id` and a leadership watcher per work-queue stream that runs its delivery task
    /// while this node leads it. Must run inside a tokio runtime.
    ///
    /// Errors: [`Error::Unavailable`] when a Raft node does not start; [`Error::Config`] when
    /// a standard stream's storage is missing. Groups already started are shut down first.
    pub async fn open(
        config: Config,
        metrics: Metrics,
        shutdown: watch::Receiver<bool>,
        node_id: NodeId,
        cluster: Arc<Cluster>,
        mut storage: BTreeMap<String, Storage>,
    ) -> Result<Arc<Self>> {
        let specs = all_streams(&config);
        let raft_config = Arc::new(raft_config(&config)?);
        let mut replicas: BTreeMap<String, Arc<Replica>> = BTreeMap::new();
        for spec in &specs {
            let network = NetworkFactory::new(
                spec.name.clone(),
                node_id,
                Arc::clone(&cluster.cluster_id),
                Arc::clone(&cluster.channels),
                Duration::from_millis(config.raft_rpc_timeout_ms),
            );
            let started = match storage.remove(&spec.name) {
                Some(st) => Replica::start(st, node_id, Arc::clone(&raft_config), network).await,
                None => Err(Error::Config(format!(
                    "stream {}: storage was not opened",
                    spec.name
                ))),
            };
            match started {
                Ok(r) => {
                    replicas.insert(spec.name.clone(), r);
                }
                Err(e) => {
                    for r in replicas.values() {
                        let _ = r.raft.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        let mut streams_map = BTreeMap::new();
        for spec in &specs {
            let replica = Arc::clone(&replicas[&spec.name]);
            let delivery = (spec.retention == Retention::WorkQueue).then(|| {
                let slot = Arc::new(DeliverySlot {
                    config: DeliveryConfig {
                        group: spec.group.clone(),
                        default_window: config.default_window,
                        ack_deadline: config.ack_deadline(),
                        max_deliveries: config.max_deliveries,
                        ack_flush: Duration::from_millis(config.ack_flush_ms),
                        tls: config
                            .tls_files()
                            .ok()
                            .flatten()
                            .map(|f| f.client_options()),
                    },
                    handle: Mutex::new(None),
                });
                let dlq = spec
                    .dead_letter_stream
                    .as_ref()
                    .and_then(|d| replicas.get(d))
                    .cloned();
                tokio::spawn(lead_delivery(
                    Arc::clone(&replica),
                    dlq,
                    Arc::clone(&slot),
                    shutdown.clone(),
                ));
                slot
            });
            streams_map.insert(spec.name.clone(), Stream { replica, delivery });
        }
        cluster.set_groups(replicas);
        Ok(Arc::new(Self {
            streams: streams_map,
            limits: crate::limits::Limits::new(
                config.max_inflight_produce_bytes,
                config.max_concurrent_reads,
                config.max_connections,
            ),
            config,
            metrics,
            ready: AtomicBool::new(false),
            shutdown,
            cluster,
            status: Mutex::new(BrokerStatus::default()),
            health: Mutex::new(HealthReport::default()),
            started: Instant::now(),
        }))
    }

    /// Recovered, serving, and no stream's log has failed (a failed log needs a restart).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self
                .streams
                .values()
                .all(|s| s.replica.poisoned().is_none())
    }

    /// How long a stream may be without a leader before it is reported unavailable: twice
    /// the maximum election timeout (1.5 × `election_timeout_ms`), see [`crate::health`].
    pub fn leaderless_grace(&self) -> Duration {
        Duration::from_millis(3 * self.config.election_timeout_ms)
    }

    /// Probes every stream (poisoned writer, leader known) and records the verdict of
    /// `tracker` at `now` as [`Self::health`].
    pub fn check_health(&self, tracker: &mut HealthTracker, now: Instant) -> HealthReport {
        let probes: Vec<StreamProbe> = self
            .streams
            .iter()
            .map(|(name, s)| StreamProbe {
                name: name.clone(),
                poisoned: s.replica.poisoned().map(|e| e.to_string()),
                has_leader: s.replica.leader().is_some(),
            })
            .collect();
        let report = tracker.evaluate(now, &probes);
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = report.clone();
        report
    }

    /// The last health verdict (see [`Self::check_health`]).
    pub fn health(&self) -> HealthReport {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stream named `name`.
    ///
    /// Errors: [`Error::InvalidArgument`] for an empty name, [`Error::StreamNotFound`].
    pub fn stream(&self, name: &str) -> Result<&Stream> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("stream name is empty".into()));
        }
        self.streams
            .get(name)
            .ok_or_else(|| Error::StreamNotFound(name.to_string()))
    }

    /// The wire description of a stream.
    pub fn stream_info(&self, s: &Stream) -> StreamInfo {
        let r = &s.replica;
        let (segments, bytes) = r.log_size();
        let mut info = r.with_core(|c| StreamInfo {
            name: r.spec.name.clone(),
            retention: match r.spec.retention {
                Retention::WorkQueue => RetentionPolicy::WorkQueue as i32,
                Retention::Limits => RetentionPolicy::Limits as i32,
            },
            start_offset: c.state.start_offset(),
            end_offset: c.state.next_offset(),
            bytes,
            segments: segments as u32,
            dedupe_by_key: r.spec.dedupe_by_key,
            group: r.spec.group.clone(),
            ack_floor: c.state.ack_floor(),
            acked_total: c.state.acked_total(),
            pending: c.state.pending(),
            in_flight: 0,
            redelivered_total: 0,
            dead_lettered_total: c.state.dead_lettered_total(),
            consumers: 0,
            dead_letter_stream: r.spec.dead_letter_stream.clone().unwrap_or_default(),
        });
        if let Some(d) = s.delivery.as_ref().and_then(|d| d.handle()) {
            info.in_flight = d.stats.in_flight.load(Ordering::Relaxed);
            info.redelivered_total = d.stats.redelivered_total.load(Ordering::Relaxed);
            info.consumers = d.stats.consumers.load(Ordering::Relaxed) as u32;
        }
        info
    }

    /// The latest sampled status (refreshed every second by [`Self::sample`]).
    pub fn status(&self) -> BrokerStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.ready = self.is_ready();
        s.uptime_s = self.started.elapsed().as_secs();
        s.raft = self
            .streams
            .iter()
            .map(|(n, st)| (n.clone(), raft_status(&st.replica)))
            .collect();
        s
    }

    /// Samples rates and gauges; `prev` holds the previous totals and time.
    pub fn sample(&self, prev: &mut Sample) {
        let now = Instant::now();
        let dt = now.duration_since(prev.at).as_secs_f64().max(1e-3);
        let mut out = Vec::new();
        let mut syncs = 0;
        let mut raft = BTreeMap::new();
        for (name, s) in &self.streams {
            raft.insert(name.clone(), raft_status(&s.replica));
            let info = self.stream_info(s);
            let m = &s.replica.metrics;
            let (st_syncs, st_entries) = s.replica.sync_stats();
            syncs += st_syncs;
            let (old_syncs, old_entries) = prev
                .syncs_by_stream
                .insert(name.clone(), (st_syncs, st_entries))
                .unwrap_or((0, 0));
            if st_syncs > old_syncs {
                m.entries_per_fsync
                    .set((st_entries - old_entries) as f64 / (st_syncs - old_syncs) as f64);
            }
            m.pending.set(info.pending as i64);
            m.log_bytes.set(info.bytes as i64);
            m.log_segments.set(i64::from(info.segments));
            let totals = [m.produced.get(), m.delivered.get(), m.acked.get()];
            let old = prev.totals.insert(name.clone(), totals).unwrap_or(totals);
            let rate = |i: usize| (totals[i] - old[i]) as f64 / dt;
            out.push(StreamStatus {
                name: name.clone(),
                retention: if s.delivery.is_some() {
                    "work_queue"
                } else {
                    "limits"
                }
                .into(),
                start_offset: info.start_offset,
                end_offset: info.end_offset,
                pending: info.pending,
                in_flight: info.in_flight,
                consumers: u64::from(info.consumers),
                producers: m.producers.get(),
                produce_per_s: rate(0),
                deliver_per_s: rate(1),
                ack_per_s: rate(2),
                redelivered_total: info.redelivered_total,
                dead_lettered_total: info.dead_lettered_total,
                acked_total: info.acked_total,
                deduplicated_total: s.replica.with_core(|c| c.state.deduplicated_total()),
                dedupe: crate::dedupe::status(&s.replica),
                segments: info.segments as usize,
                bytes: info.bytes,
                consumer_list: s
                    .delivery
                    .as_ref()
                    .and_then(|d| d.handle())
                    .map(|d| {
                        d.stats
                            .consumer_list
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                    })
                    .unwrap_or_default(),
            });
        }
        if syncs > prev.syncs {
            self.metrics.fsync_total.inc_by(syncs - prev.syncs);
            prev.syncs = syncs;
        }
        prev.at = now;
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.fsyncs_total = syncs;
        st.streams = out;
        st.raft = raft;
        st.node_id = self.streams.values().next().map(|s| s.replica.node_id);
    }

    /// Snapshot of every stream that changed, then a retention pass on each.
    pub async fn snapshot_and_retain(&self) {
        for s in self.streams.values() {
            if let Err(e) = s.replica.snapshot().await {
                tracing::error!(stream = %s.replica.spec.name, error = %e, "snapshot failed");
                continue;
            }
            // Retention writes the snapshot that covers its Trim itself, before it deletes.
            if let Err(e) = s.replica.retention().await {
                tracing::error!(stream = %s.replica.spec.name, error = %e, "retention failed")
            }
        }
    }

    /// Clean shutdown: writes pending acks (when leader), stops the Raft groups, then writes
    /// a final snapshot file of every stream.
    pub async fn close(&self) {
        for s in self.streams.values() {
            if let Some(d) = s.delivery.as_ref().and_then(|d| d.handle()) {
                let _ = tokio::time::timeout(Duration::from_secs(2), d.flush()).await;
            }
        }
        for s in self.streams.values() {
            if let Err(e) = s.replica.raft.shutdown().await {
                tracing::warn!(stream = %s.replica.spec.name, error = %e, "Raft shutdown");
            }
            if let Err(e) = s.replica.snapshot_file().await {
                tracing::error!(stream = %s.replica.spec.name, error = %e, "final snapshot failed");
            }
        }
    }
}

/// Previous totals for rate computation in [`Broker::sample`].
#[derive(Debug)]
pub struct Sample {
    at: Instant,
    totals: BTreeMap<String, [u64; 3]>,
    syncs: u64,
    syncs_by_stream: BTreeMap<String, (u64, u64)>,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            totals: BTreeMap::new(),
            syncs: 0,
            syncs_by_stream: BTreeMap::new(),
        }
    }
}

/// Resolves once the shutdown flag is true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Raft entries per append-entries RPC (see [`crate::replica::MAX_ENTRY_COALESCE_BYTES`]).
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;

/// openraft settings from the broker config: heartbeat and election timeouts from the flags,
/// snapshots only when the broker asks (its snapshot interval), openraft's log purge keeping
/// `--raft-keep-entries` entries behind the snapshot for followers that are briefly behind, and
/// install-snapshot timeouts sized for large transfers.
///
/// Pre-vote is on: a node whose election timer fires first asks its peers whether they would
/// vote for it, and raises its term only if a quorum would; a peer that still has a valid leader
/// lease (it heard from the leader within `election_timeout_max`) says no. So a follower that
/// was paused or partitioned cannot depose a healthy leader when it comes back.
///
/// Check-quorum: openraft 0.10 keeps a leader's *quorum lease* (the send time of the last
/// heartbeat or append a quorum acknowledged, `RaftMetrics::last_quorum_acked`); once it is older
/// than `election_timeout_max` the leader refuses new proposals (an empty `ForwardToLeader`, which
/// the proposer turns into [`Error::NotLeader`] without a hint) but stays `Leader` until it hears
/// of a higher term. `quorum_loss_probe_interval` ([`quorum_loss_probe_ms`]) then silences its
/// heartbeats in alternating periods so that followers it can still reach let their lease expire
/// and may elect a leader with a quorum. [`crate::replica::Replica::has_quorum_lease`] tells
/// whether a leader's lease is valid now.
///
/// Errors: [`Error::Config`] when openraft rejects the values.
pub fn raft_config(config: &Config) -> Result<openraft::Config> {
    let election_timeout_max = config.election_timeout_ms * 3 / 2;
    let c = openraft::Config {
        cluster_name: "txpipe".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_ms,
        election_timeout_max,
        install_snapshot_timeout: config.raft_rpc_timeout_ms.max(2000) * 5,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: config.raft_keep_entries,
        purge_batch_size: (config.raft_keep_entries / 16).clamp(1, 1024),
        enable_pre_vote: Some(true),
        quorum_loss_probe_interval: Some(quorum_loss_probe_ms(election_timeout_max)),
        ..Default::default()
    };
    c.validate()
        .map_err(|e| Error::Config(format!("Raft settings: {e}")))
}

/// openraft's `quorum_loss_probe_interval` for a given `election_timeout_max`, ms: the smallest it
/// accepts (the leader lease plus one election timeout, both `election_timeout_max`).
pub fn quorum_loss_probe_ms(election_timeout_max: u64) -> u64 {
    election_timeout_max * 2
}

/// Runs the delivery task of a work-queue stream while this node leads its group **with a
/// quorum**: on gaining leadership it waits until the state machine has applied everything
/// committed by earlier terms (`ensure_linearizable`), then starts [`DeliveryHandle`]; on
/// losing leadership, or the quorum lease ([`Replica::has_quorum_lease`]: no quorum acknowledged
/// this leader within `election_timeout_max`), it stops it, which ends every open Consume call
/// with UNAVAILABLE. openraft 0.10 keeps a cut-off leader in the `Leader` state until it hears
/// of a higher term, so without the lease check a partitioned leader would go on handing out
/// deliveries whose acks can never commit while the new leader redelivers them (issue 13).
/// The lease is re-checked every heartbeat interval (it lapses by time passing, not by a
/// metrics change), so deliveries stop within `election_timeout_max` plus a heartbeat of the
/// last quorum acknowledgement; they start again once a quorum acknowledges this node.
async fn lead_delivery(
    replica: Arc<Replica>,
    dlq: Option<Arc<Replica>>,
    slot: Arc<DeliverySlot>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = replica.raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_millis(
        replica.raft.config().heartbeat_interval,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let leading = replica.is_leader();
        let running = slot.handle().is_some();
        let lease = leading && replica.has_quorum_lease();
        if leading && !running && lease {
            match tokio::time::timeout(
                Duration::from_secs(10),
                replica
                    .raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex),
            )
            .await
            {
                Ok(Ok(_)) if replica.is_leader() => {
                    let h = DeliveryHandle::spawn(
                        Arc::clone(&replica),
                        dlq.clone(),
                        slot.config.clone(),
                    );
                    tracing::info!(stream = %replica.spec.name, "leader: delivery started");
                    *slot.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(stream = %replica.spec.name, error = %e, "not leader after all")
                }
                Err(_) => {
                    tracing::warn!(stream = %replica.spec.name, "leader could not confirm its state within 10 s")
                }
            }
            continue;
        }
        if running && !lease {
            let h = slot.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = h {
                h.send(crate::delivery::Event::Stop);
                if leading {
                    replica.metrics.quorum_lease_lost.inc();
                    tracing::warn!(stream = %replica.spec.name, "no quorum acknowledged this leader within the lease: delivery stopped");
                } else {
                    tracing::info!(stream = %replica.spec.name, "leadership lost: delivery stopped");
                }
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    let last = slot.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(h) = last {
        h.flush().await;
        h.send(crate::delivery::Event::Stop);
    }
}

/// The status role of a node in `state`; a leader without its quorum lease (`has_quorum`
/// false) is `leader-without-lease`.
pub fn role_name(state: openraft::ServerState, has_quorum: bool) -> &'static str {
    match state {
        openraft::ServerState::Leader if has_quorum => "leader",
        openraft::ServerState::Leader => "leader-without-lease",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

/// The Raft view of `r`'s group right now.
pub fn raft_status(r: &Replica) -> RaftStatus {
    let m = r.raft.metrics().borrow_watched().clone();
    let has_quorum = r.has_quorum_lease();
    let mem = m.membership_config.membership();
    let applied = m.last_applied.map_or(0, |l| l.index);
    RaftStatus {
        term: m.current_term,
        leader_id: m.current_leader,
        leader_addr: m
            .current_leader
            .and_then(|l| mem.get_node(&l))
            .map(|n| n.addr.clone()),
        is_leader: m.state == openraft::ServerState::Leader,
        role: role_name(m.state, has_quorum).to_string(),
        has_quorum,
        quorum_ack_age_ms: r.quorum_ack_age().map(|d| d.as_millis() as u64),
        commit_index: r
            .shared
            .committed()
            .map_or(applied, |c| c.index.max(applied)),
        applied_index: applied,
        last_log_index: m.last_log_index.unwrap_or(0),
        voters: mem.voter_ids().collect(),
        learners: mem.learner_ids().collect(),
    }
}

#[cfg(test)]
mod tests {
    use openraft::ServerState;

    use super::role_name;

    #[test]
    fn a_leader_without_its_quorum_lease_says_so_in_its_role() {
        assert_eq!(role_name(ServerState::Leader, true), "leader");
        assert_eq!(
            role_name(ServerState::Leader, false),
            "leader-without-lease"
        );
        assert_eq!(role_name(ServerState::Follower, false), "follower");
        assert_eq!(role_name(ServerState::Candidate, false), "candidate");
        assert_eq!(role_name(ServerState::Learner, false), "learner");
    }
}
