//! One stream's replica: its Raft group (openraft), its storage ([`crate::raft::store`]) and
//! the proposal pipeline.
//!
//! [`Replica::propose`] is the only way state changes. Proposals go to a per-stream proposer
//! task that coalesces every proposal waiting while up to `max_inflight_entries` Raft entries
//! are in flight into the next entry (so one entry and its fsync are shared by many batches), hands it to openraft's `client_write`, and answers each
//! proposer with its own commands' outcomes once the entry is committed (fsynced on a quorum)
//! and applied. Proposals made in sequence are logged in that order. On a node that is not
//! the leader, proposals fail with [`Error::NotLeader`] carrying the leader's client address.
//!
//! Reads of records go to a bounded in-memory cache of recently applied work-queue records,
//! and otherwise to the log through the state's offset → record locator map.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::impls::OneshotResponder;
use openraft::network::NetSnapshot;
use openraft::{RaftNetworkFactory, ServerState};
use tokio::sync::{mpsc, oneshot, watch};
use txpipe_client::broker::v1::Record;

use crate::command::Command;
use crate::error::{Error, Result};
use crate::log::{LogConfig, LogError, SegmentedLog};
use crate::metrics::StreamMetrics;
use crate::raft::store::{self, Core, LogStore, MAX_COMMANDS_PER_ENTRY, Shared, StateMachine};
use crate::raft::{EntryData, Node, NodeId, Raft, SnapshotData, TypeConfig};
use crate::state::{ApplyOutcome, Retention, StreamSpec};

pub use crate::raft::store::RecordCache;

/// Storage settings of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// fdatasync before answering.
    pub fsync: bool,
    /// Largest log entry, bytes.
    pub max_entry_bytes: u32,
    /// Record cache budget, bytes (work-queue streams; 0 disables).
    pub cache_bytes: usize,
    /// Limits streams: size limit, bytes.
    pub max_bytes: u64,
    /// Limits streams: age limit of a segment (by its file's modification time).
    pub max_age: Duration,
    /// Work-queue streams: keep resolved segments until `max_bytes` / `max_age` too.
    pub retain_acked: bool,
    /// Raft entries in flight at once per stream leader.
    pub max_inflight_entries: usize,
    /// Key dedupe (streams with `dedupe_by_key`): window stamped while leading, index cache.
    pub dedupe: crate::dedupe::DedupeConfig,
    /// How long [`Replica::propose`] waits for its commands to be committed and applied before
    /// it answers [`Error::Unavailable`] (outcome unknown: an idempotent producer's retry is
    /// answered as a duplicate if the batch was stored after all). Bounds the wait of a write
    /// that reached a leader which then lost its quorum (openraft keeps such an entry pending
    /// until a new leader truncates it).
    pub commit_timeout: Duration,
}

struct Pending {
    cmds: Vec<Command>,
    reply: Option<oneshot::Sender<Result<Vec<ApplyOutcome>>>>,
}

/// One stream's recovered storage, before its Raft node starts ([`Replica::open_storage`]).
pub struct Storage {
    /// The stream.
    pub spec: StreamSpec,
    /// Storage to hand to openraft.
    pub shared: Arc<Shared>,
    /// This stream's metrics.
    pub metrics: StreamMetrics,
    /// The settings it was opened with (the replica keeps them).
    pub cfg: ReplicaConfig,
}

/// One stream's replica. See the module docs.
pub struct Replica {
    /// The stream.
    pub spec: StreamSpec,
    /// Storage shared with openraft.
    pub shared: Arc<Shared>,
    /// The stream's Raft group on this node.
    pub raft: Raft,
    /// This node's id.
    pub node_id: NodeId,
    cfg: ReplicaConfig,
    proposer: mpsc::UnboundedSender<Pending>,
    /// This stream's metrics.
    pub metrics: StreamMetrics,
}

impl Replica {
    /// Opens the stream in `dir` (created if missing): [`Self::open_storage`], then
    /// [`Self::start`].
    ///
    /// Errors: as those two.
    pub async fn open<N>(
        spec: StreamSpec,
        dir: &Path,
        cfg: ReplicaConfig,
        metrics: StreamMetrics,
        node_id: NodeId,
        raft_config: Arc<openraft::Config>,
        network: N,
    ) -> Result<Arc<Self>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        let storage = Self::open_storage(spec, dir, cfg, metrics)?;
        Self::start(storage, node_id, raft_config, network).await
    }

    /// Recovers the stream's storage in `dir` (created if missing), without Raft: finishes or
    /// undoes an interrupted snapshot install, opens the log (torn tail truncated), the
    /// snapshot and the dedupe index, and checks that they agree.
    ///
    /// Errors: [`Error::Snapshot`] for an unreadable snapshot or storage that does not agree,
    /// [`Error::Log`] for log corruption or I/O, [`Error::Decode`] for an undecodable last
    /// entry ([`Error::is_corruption`] tells these from plain I/O errors).
    pub fn open_storage(
        spec: StreamSpec,
        dir: &Path,
        cfg: ReplicaConfig,
        metrics: StreamMetrics,
    ) -> Result<Storage> {
        std::fs::create_dir_all(dir)?;
        // A snapshot install a crash interrupted: finished if it was decided, else undone.
        crate::raft::install::recover(dir)?;
        let mut log_cfg = LogConfig::new(dir.join(crate::raft::install::LOG_DIR));
        log_cfg.segment_bytes = cfg.segment_bytes;
        log_cfg.fsync = cfg.fsync;
        log_cfg.max_entry_bytes = cfg.max_entry_bytes;
        let (log, report) = SegmentedLog::open(log_cfg)?;
        let shared = Shared::open(
            spec.clone(),
            dir,
            log,
            cfg.cache_bytes,
            metrics.clone(),
            cfg.dedupe,
        )?;
        let (next, floor, snap) = shared.with_core(|c| {
            (
                c.state.next_offset(),
                c.state.ack_floor(),
                c.snapshot.as_ref().and_then(|s| s.meta.last_log_id),
            )
        });
        tracing::info!(
            stream = %spec.name,
            segments = report.segments,
            truncated_bytes = report.truncated_bytes,
            snapshot = ?snap,
            next_offset = next,
            ack_floor = floor,
            "stream storage recovered"
        );
        Ok(Storage {
            spec,
            shared,
            metrics,
            cfg,
        })
    }

    /// Starts the Raft node of recovered `storage` as `node_id` (openraft applies the
    /// committed entries after the snapshot) and the proposer task.
    ///
    /// Errors: [`Error::Unavailable`] when openraft refuses to start (its message says why).
    pub async fn start<N>(
        storage: Storage,
        node_id: NodeId,
        raft_config: Arc<openraft::Config>,
        network: N,
    ) -> Result<Arc<Self>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        let Storage {
            spec,
            shared,
            metrics,
            cfg,
        } = storage;
        let raft = openraft::Raft::new(
            node_id,
            raft_config,
            network,
            LogStore {
                shared: Arc::clone(&shared),
            },
            StateMachine {
                shared: Arc::clone(&shared),
            },
        )
        .await
        .map_err(|e| Error::Unavailable(format!("stream {}: Raft start failed: {e}", spec.name)))?;
        shared.set_raft_built();
        // No start-up hold on elections any more (0.9 needed one): with pre-vote, a replica
        // that restarts and times out before the leader's retries reach it first asks whether
        // it would win; the peers, whose leader lease is valid, say no, so its term stays.
        let (tx, rx) = mpsc::unbounded_channel();
        let replica = Arc::new(Self {
            spec,
            shared,
            raft: raft.clone(),
            node_id,
            cfg: cfg.clone(),
            proposer: tx,
            metrics,
        });
        tokio::spawn(proposer(
            raft,
            replica.spec.name.clone(),
            rx,
            cfg.max_inflight_entries.max(1),
            replica.spec.dedupe_by_key.then_some(cfg.dedupe.window),
        ));
        Ok(replica)
    }

    /// Proposes commands: they are queued now (in call order) and the returned future
    /// resolves with one outcome per command once they are committed and applied.
    ///
    /// Errors: [`Error::NotLeader`] on a follower or when leadership was lost before commit,
    /// [`Error::Unavailable`] when the Raft node stopped or nothing was committed within
    /// [`ReplicaConfig::commit_timeout`], [`Error::Log`] for a local storage
    /// failure.
    pub fn propose(
        &self,
        cmds: Vec<Command>,
    ) -> impl std::future::Future<Output = Result<Vec<ApplyOutcome>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let _ = self.proposer.send(Pending {
            cmds,
            reply: Some(reply),
        });
        let timeout = self.cfg.commit_timeout;
        let stream = self.spec.name.clone();
        async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(r) => r.map_err(|_| Error::Unavailable("stream proposer stopped".into()))?,
                Err(_) => Err(Error::Unavailable(format!(
                    "stream {stream}: not committed within {} ms (the leader may have lost its quorum); the outcome is unknown, retry (an idempotent producer's retry is deduplicated)",
                    timeout.as_millis()
                ))),
            }
        }
    }

    /// Proposes commands without waiting for the outcome (acks, attempts, trims).
    pub fn propose_nowait(&self, cmds: Vec<Command>) {
        let _ = self.proposer.send(Pending { cmds, reply: None });
    }

    /// Runs `f` on the core under its lock (keep it short).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        self.shared.with_core(f)
    }

    /// Watch of the stream's end offset (next offset to be assigned), updated after apply.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.shared.end.subscribe()
    }

    /// Whether this node is the group's leader now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// For a leader, how long ago a quorum last acknowledged it (see
    /// [`crate::raft::quorum_ack_age`]); `None` on a follower.
    pub fn quorum_ack_age(&self) -> Option<Duration> {
        crate::raft::quorum_ack_age(&self.raft.metrics().borrow_watched())
    }

    /// Whether this node leads the group **and** its quorum lease is valid (a quorum
    /// acknowledged it within `election_timeout_max`; see [`crate::raft::has_quorum_lease`]). A
    /// leader cut off from its followers stays `Leader` in openraft 0.10 but loses this within
    /// `election_timeout_max` plus a heartbeat interval, and openraft refuses its new proposals
    /// from then on: this is the hook for answering UNAVAILABLE early.
    pub fn has_quorum_lease(&self) -> bool {
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        self.is_leader()
            && crate::raft::has_quorum_lease(&self.raft.metrics().borrow_watched(), lease)
    }

    /// The current leader's id and addresses, when known.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    /// [`Error::NotLeader`] for this stream with the current leader hint.
    pub fn not_leader(&self) -> Error {
        Error::NotLeader {
            stream: self.spec.name.clone(),
            leader: self.leader().map(|(_, n)| n.addr),
        }
    }

    /// Ok when this node leads the group, else [`Error::NotLeader`].
    pub fn require_leader(&self) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    /// Read barrier for `Fetch` and `GetStream` (openraft's lease read): Ok once this node is
    /// the leader, its quorum lease is valid (a quorum acknowledged it within
    /// `election_timeout_max`) and its state machine has applied everything committed before
    /// the read, so a read sees every acknowledged write and never comes from a leader that a
    /// partition has already replaced. A lease that lapsed (right after an election, or on a
    /// leader cut off from its followers) is first renewed, waiting at most
    /// `election_timeout_max` as proposals do.
    ///
    /// Errors: [`Error::NotLeader`] (with the leader's address when known) on a follower;
    /// [`Error::Unavailable`] on a leader without a quorum, or when the state machine did not
    /// catch up within [`ReplicaConfig::commit_timeout`].
    pub async fn read_barrier(&self) -> Result<()> {
        self.require_leader()?;
        await_quorum_lease(&self.raft).await;
        let stream = &self.spec.name;
        let read = self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::LeaseRead);
        match tokio::time::timeout(self.cfg.commit_timeout, read).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(Error::NotLeader {
                    stream: stream.clone(),
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "stream {stream}: this leader cannot confirm its leadership with a quorum ({e}); retry, another node may lead"
            ))),
            Err(_) => Err(Error::Unavailable(format!(
                "stream {stream}: the leader did not apply the committed entries within {} ms",
                self.cfg.commit_timeout.as_millis()
            ))),
        }
    }

    /// Builds a snapshot now (through openraft, which then purges the log behind it as its
    /// config allows). Returns whether the snapshot file changed.
    ///
    /// Errors: [`Error::Unavailable`] when the Raft node stopped.
    pub async fn snapshot(&self) -> Result<bool> {
        let (applied, snap) = self.with_core(|c| {
            (
                c.applied,
                c.snapshot.as_ref().and_then(|s| s.meta.last_log_id),
            )
        });
        if applied == snap {
            return Ok(false);
        }
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Unavailable(format!("snapshot trigger: {e}")))?;
        let mut m = self.raft.metrics();
        let want = applied.map(|l| l.index);
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            m.wait_until(|m| m.snapshot.map(|s| s.index) >= want),
        )
        .await;
        self.metrics.snapshots.inc();
        Ok(true)
    }

    /// Writes the snapshot file directly (at shutdown, when the Raft node is stopping).
    ///
    /// Errors: [`Error::Snapshot`] on I/O failure.
    pub async fn snapshot_file(&self) -> Result<()> {
        store::build_snapshot_file(&self.shared).await.map(|_| ())
    }

    /// Reads records at `offsets` (cache first, then the log). `None` for offsets not stored
    /// (below the start, not yet appended, or removed by retention meanwhile).
    pub fn read_records(&self, offsets: &[u64]) -> Vec<Option<Record>> {
        let mut out: Vec<Option<Record>> = Vec::with_capacity(offsets.len());
        let mut misses: Vec<(usize, u64, u32)> = Vec::new();
        {
            let core = self.shared.core.lock().unwrap_or_else(|e| e.into_inner());
            for (i, &o) in offsets.iter().enumerate() {
                match core.cache.get(o) {
                    Some(r) => out.push(Some(r.clone())),
                    None => {
                        out.push(None);
                        if let Some((idx, pos)) = core.state.locate(o) {
                            misses.push((i, idx, pos));
                        }
                    }
                }
            }
        }
        if misses.is_empty() {
            return out;
        }
        let locs: Vec<(u64, u32)> = misses.iter().map(|&(_, l, p)| (l, p)).collect();
        for ((i, _, _), r) in misses.iter().zip(self.shared.read_located(&locs)) {
            out[*i] = r;
        }
        out
    }

    /// Reads up to `max_records` records from `start` (clamped to the start offset), stopping
    /// at `max_bytes` of keys and values (at least one record is returned when available).
    /// Returns `(records, next_offset, end_offset, start_offset)`.
    pub fn fetch(
        &self,
        start: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> (Vec<(u64, Record)>, u64, u64, u64) {
        let (first, end) = self.with_core(|c| (c.state.start_offset(), c.state.next_offset()));
        let from = start.max(first);
        let to = end.min(from.saturating_add(max_records as u64));
        let offsets: Vec<u64> = (from..to).collect();
        let mut out = Vec::with_capacity(offsets.len());
        let mut bytes = 0usize;
        let mut next = from;
        for (o, r) in offsets.iter().zip(self.read_records(&offsets)) {
            let Some(r) = r else { break };
            let size = r.key.len() + r.value.len();
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push((*o, r));
            next = o + 1;
        }
        (out, next, end, first)
    }

    /// One retention pass: deletes whole segments that (work queue) hold only resolved
    /// records, or (limits) are past the size or age limit. Returns the number of segments
    /// deleted.
    ///
    /// Crash-safe by order (each step is durable before the next starts; crash points in
    /// brackets, see [`crate::failpoints`]):
    /// 1. a `Trim` command moves the stream's start offset past the records to drop; it is
    ///    committed (on followers: already applied from the leader) [`retention::after_trim`];
    /// 2. a snapshot at or after the Trim is written (atomically, fsynced): its
    ///    [`SnapMeta::records_from`](crate::snapshot::SnapMeta::records_from) is now past
    ///    the dropped records [`retention::after_snapshot`];
    /// 3. only then are segments deleted, oldest first, and only those wholly below the
    ///    *durable* snapshot's `records_from` and next index and below openraft's purge point
    ///    [`retention::mid_delete`, `retention::after_delete`].
    ///
    /// So after a crash at any instruction, the snapshot on disk references no deleted
    /// record and the log holds every entry after it (an earlier version deleted first and
    /// snapshotted later; a crash in between made recovery discard the stream).
    ///
    /// Errors: [`Error::Log`] on I/O failure, [`Error::Unavailable`] when the Trim cannot be
    /// proposed or the snapshot cannot be written.
    pub async fn retention(&self) -> Result<usize> {
        let segments = self.shared.gc.read_log().segments();
        if segments.len() <= 1 {
            return Ok(0);
        }
        let Some((purge_to, new_start)) = self.retention_target(&segments) else {
            return Ok(0);
        };
        let cur_start = self.with_core(|c| c.state.start_offset());
        if new_start > cur_start {
            self.propose(vec![Command::Trim {
                start_offset: new_start,
            }])
            .await?;
            crate::crash_point!("retention::after_trim");
        }
        // Step 2: a durable snapshot that includes the Trim (a no-op when one exists).
        self.snapshot().await?;
        crate::crash_point!("retention::after_snapshot");
        let durable_bound = self.with_core(|c| {
            c.snapshot
                .as_ref()
                .map_or(0, |s| s.records_from.min(s.next_index()))
        });
        let purged_next = self.shared.purged().map_or(0, |p| p.index + 1);
        let bound = purge_to.min(durable_bound).min(purged_next);
        let before = segments.len();
        let after = {
            let mut log = self.shared.gc.write_log();
            log.purge_before(bound).map_err(Error::from)?;
            log.segments().len()
        };
        crate::crash_point!("retention::after_delete");
        let deleted = before.saturating_sub(after);
        if deleted > 0 {
            tracing::info!(stream = %self.spec.name, deleted_segments = deleted, start_offset = new_start, "retention deleted segments");
        }
        Ok(deleted)
    }

    /// What retention may drop now: `(purge_to, new_start)`, the log index below which whole
    /// segments may go and the stream's start offset once they are gone; `None` when nothing
    /// may go. Segments may go only below the snapshot, below openraft's purge point (entries
    /// above it may still be sent to a lagging follower) and, for work queues, below the
    /// first entry with an unresolved record.
    fn retention_target(&self, segments: &[crate::log::SegmentInfo]) -> Option<(u64, u64)> {
        let candidates = &segments[..segments.len() - 1];
        let purged_next = self.shared.purged().map_or(0, |p| p.index + 1);
        let (snap_next, floor, unresolved_index) = self.with_core(|c| {
            let floor = c.state.ack_floor();
            let idx = c
                .state
                .chunks()
                .iter()
                .find(|ch| ch.base_offset + u64::from(ch.count) > floor)
                .map_or(u64::MAX, |ch| store::split_locator(ch.log_index).0);
            (c.snapshot_next().min(purged_next), floor, idx)
        });
        let mut purge_to = None;
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let now = SystemTime::now();
        let limits_hit = |s: &crate::log::SegmentInfo, total: u64| {
            let path = self
                .shared
                .dir
                .join("log")
                .join(format!("{:020}.log", s.base_index));
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.cfg.max_age);
            total > self.cfg.max_bytes || old
        };
        for s in candidates {
            if s.next_index > snap_next {
                break;
            }
            let deletable = match self.spec.retention {
                Retention::WorkQueue => {
                    s.next_index <= unresolved_index
                        && (!self.cfg.retain_acked || limits_hit(s, total))
                }
                Retention::Limits => limits_hit(s, total),
            };
            if !deletable {
                break;
            }
            total -= s.bytes;
            purge_to = Some(s.next_index);
        }
        let purge_to = purge_to?;
        let new_start = self.with_core(|c| {
            c.state
                .chunks()
                .iter()
                .find(|ch| store::split_locator(ch.log_index).0 >= purge_to)
                .map_or(c.state.next_offset(), |ch| ch.base_offset)
        });
        let new_start = if self.spec.retention == Retention::WorkQueue {
            new_start.min(floor)
        } else {
            new_start
        };
        Some((purge_to, new_start))
    }

    /// Segment count and total bytes of the log.
    pub fn log_size(&self) -> (usize, u64) {
        let log = self.shared.gc.read_log();
        (log.segments().len(), log.size_bytes())
    }

    /// `(fdatasync calls, entries made durable)` by this stream's writer so far.
    pub fn sync_stats(&self) -> (u64, u64) {
        let s = self.shared.gc.stats();
        (s.syncs, s.entries)
    }

    /// The writer's poison error, if the log failed.
    pub fn poisoned(&self) -> Option<LogError> {
        self.shared.gc.poisoned()
    }
}

/// A proposal is added to an entry being built only while the entry is below this size,
/// bytes. With [`crate::broker::MAX_PAYLOAD_ENTRIES`] this bounds one append-entries RPC to
/// about 2 MiB. openraft 0.9 gave an append-entries RPC the heartbeat interval (100 ms) as its
/// deadline, which a follower catching up under load missed with larger batches; 0.10's peer
/// client gives it `--raft-rpc-timeout-ms`, and the limit is kept until a chaos run shows a
/// larger one safe (docs/architecture.md).
pub const MAX_ENTRY_COALESCE_BYTES: usize = 256 << 10;

/// Coalesces pending proposals into Raft entries; see the module docs.
async fn proposer(
    raft: Raft,
    stream: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    max_inflight: usize,
    clock: Option<crate::dedupe::Window>,
) {
    type Replies = Vec<(usize, Option<oneshot::Sender<Result<Vec<ApplyOutcome>>>>)>;
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            p = rx.recv(), if open && inflight.len() < max_inflight => {
                let Some(p) = p else { open = false; continue };
                let mut cmds: Vec<Command> = Vec::new();
                let mut replies: Replies = Vec::new();
                let mut bytes = 0usize;
                if let Some(w) = clock {
                    // The leader's clock and dedupe window lead the entry (crate::dedupe); its
                    // outcome goes to no one.
                    cmds.push(Command::Clock {
                        unix_ms: crate::broker::unix_ms(),
                        dedupe_max_age_ms: w.max_age_ms,
                        dedupe_max_keys: w.max_keys,
                    });
                    replies.push((1, None));
                }
                let push = |p: Pending, cmds: &mut Vec<Command>, replies: &mut Replies, bytes: &mut usize| {
                    *bytes += p.cmds.iter().map(Command::encoded_len).sum::<usize>();
                    replies.push((p.cmds.len(), p.reply));
                    cmds.extend(p.cmds);
                };
                push(p, &mut cmds, &mut replies, &mut bytes);
                while cmds.len() < MAX_COMMANDS_PER_ENTRY / 2 && bytes < MAX_ENTRY_COALESCE_BYTES {
                    match rx.try_recv() {
                        Ok(p) => push(p, &mut cmds, &mut replies, &mut bytes),
                        Err(_) => break,
                    }
                }
                await_quorum_lease(&raft).await;
                let (responder, resp) = OneshotResponder::new_pair();
                match raft.client_write_ff(EntryData { cmds }, Some(responder)).await {
                    Ok(()) => inflight.push(async move { (resp.await, replies) }),
                    Err(fatal) => {
                        for (_, r) in replies {
                            if let Some(r) = r {
                                let _ = r.send(Err(Error::Unavailable(format!("stream {stream}: Raft stopped: {fatal}"))));
                            }
                        }
                    }
                }
            }
            Some((res, replies)) = inflight.next(), if !inflight.is_empty() => {
                match res {
                    Ok(Ok(resp)) => {
                        let mut outs = resp.data.outcomes.into_iter();
                        for (n, r) in replies {
                            let mine: Vec<ApplyOutcome> = outs.by_ref().take(n).collect();
                            if let Some(r) = r {
                                let _ = r.send(Ok(mine));
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        let err = || match &e {
                            ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f) => Error::NotLeader {
                                stream: stream.clone(),
                                leader: f.leader_node.as_ref().map(|n| n.addr.clone()),
                            },
                            other => Error::Unavailable(format!("stream {stream}: {other}")),
                        };
                        for (_, r) in replies {
                            if let Some(r) = r {
                                let _ = r.send(Err(err()));
                            }
                        }
                    }
                    Err(_) => {
                        for (_, r) in replies {
                            if let Some(r) = r {
                                let _ = r.send(Err(Error::NotLeader { stream: stream.clone(), leader: None }));
                            }
                        }
                    }
                }
            }
            else => break,
        }
    }
}

/// openraft 0.10 refuses proposals on a leader whose quorum lease is not valid: right after
/// its election (the lease starts at the first heartbeat a quorum acknowledges, a round trip
/// later), and whenever no quorum acknowledged it within `election_timeout_max` (cut off, or
/// its followers answer slowly on an overloaded machine). A proposal that reaches such a leader
/// first waits for the lease, at most `election_timeout_max`, instead of failing at once with
/// "no leader known"; a leader still without a quorum after that refuses it.
async fn await_quorum_lease(raft: &Raft) {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let waiting = |raft: &Raft| {
        let m = raft.metrics().borrow_watched().clone();
        m.state == ServerState::Leader && !crate::raft::has_quorum_lease(&m, lease)
    };
    if !waiting(raft) {
        return;
    }
    // A heartbeat now, rather than at the next tick, renews the lease sooner.
    let _ = raft.trigger().heartbeat().await;
    let until = tokio::time::Instant::now() + lease;
    while waiting(raft) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Maps an openraft error of an admin call to [`Error::Unavailable`].
pub fn raft_err<E: std::fmt::Display>(stream: &str, e: RaftError<TypeConfig, E>) -> Error {
    Error::Unavailable(format!("stream {stream}: {e}"))
}
