//! One stream's replica: its log, its state machine, and the single-node "replicator" seam.
//!
//! [`Replica::propose`] is the only way state changes: encode the commands, queue them on the
//! stream's group-commit writer (synchronously, so proposals made in sequence are logged in
//! that order), and an applier task applies each entry to the [`StreamState`] strictly in log
//! order once it is durable, then answers the proposer. Several group-commit appends are in
//! flight at once (pipelining); application never runs ahead of durability. In issue
//! "Replicated broker" `propose` becomes openraft's `client_write` and the applier becomes the
//! Raft state machine's `apply`; nothing above this module changes.
//!
//! Start-up ([`Replica::open`]): load `snapshot.bin` if present, open the log (its own crash
//! recovery), replay every entry after the snapshot through the same `apply`, then serve.
//! Reads of records go to a bounded in-memory cache of recently appended work-queue records,
//! and otherwise to the log through the state's offset → log index map.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use txpipe_client::broker::v1::Record;

use crate::command::Command;
use crate::error::{Error, Result};
use crate::log::group_commit::{AppendTicket, GroupCommit};
use crate::log::{LogConfig, LogError, SegmentedLog};
use crate::metrics::StreamMetrics;
use crate::snapshot;
use crate::state::{ApplyOutcome, Retention, StreamSpec, StreamState};

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
}

/// Recently appended records with contiguous offsets, bounded by bytes.
#[derive(Debug, Default)]
pub struct RecordCache {
    base: u64,
    records: VecDeque<Record>,
    bytes: usize,
    max_bytes: usize,
}

impl RecordCache {
    fn push(&mut self, offset: u64, r: &Record) {
        if self.max_bytes == 0 {
            return;
        }
        if offset != self.base + self.records.len() as u64 {
            self.records.clear();
            self.bytes = 0;
            self.base = offset;
        }
        self.bytes += r.key.len() + r.value.len() + 64;
        self.records.push_back(r.clone());
        while self.bytes > self.max_bytes {
            match self.records.pop_front() {
                Some(old) => {
                    self.bytes -= old.key.len() + old.value.len() + 64;
                    self.base += 1;
                }
                None => break,
            }
        }
    }
    fn get(&self, offset: u64) -> Option<&Record> {
        offset
            .checked_sub(self.base)
            .and_then(|i| self.records.get(i as usize))
    }
    /// Cached bytes (estimate: key + value + 64 per record).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Mutable core of a replica, behind one mutex.
pub struct Core {
    /// The state machine.
    pub state: StreamState,
    /// First log index not yet applied.
    pub applied_next: u64,
    /// `applied_next` of the newest snapshot file.
    pub snapshot_next: u64,
    /// Recent records.
    pub cache: RecordCache,
}

struct Proposal {
    ticket: AppendTicket,
    cmds: Vec<Command>,
    reply: Option<oneshot::Sender<Result<Vec<ApplyOutcome>>>>,
}

/// One stream's replica. See the module docs.
pub struct Replica {
    /// The stream.
    pub spec: StreamSpec,
    dir: PathBuf,
    cfg: ReplicaConfig,
    gc: GroupCommit,
    /// Serialises `submit` + queueing to the applier so both see the same order.
    submit: Mutex<mpsc::UnboundedSender<Proposal>>,
    core: Mutex<Core>,
    end: watch::Sender<u64>,
    /// This stream's metrics.
    pub metrics: StreamMetrics,
    snapshot_lock: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replica {
    /// Opens the stream in `dir` (created if missing): snapshot, log recovery, replay. Spawns
    /// the group-commit writer and the applier on the current tokio runtime.
    ///
    /// Errors: [`Error::Snapshot`] for an unreadable snapshot, [`Error::Log`] for log corruption
    /// or I/O, [`Error::Decode`] for an undecodable entry, and a log that does not reach the
    /// snapshot's index.
    pub fn open(
        spec: StreamSpec,
        dir: &Path,
        cfg: ReplicaConfig,
        metrics: StreamMetrics,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let snap = snapshot::read(dir)?;
        let mut log_cfg = LogConfig::new(dir.join("log"));
        log_cfg.segment_bytes = cfg.segment_bytes;
        log_cfg.fsync = cfg.fsync;
        log_cfg.max_entry_bytes = cfg.max_entry_bytes;
        let (mut log, report) = SegmentedLog::open(log_cfg)?;
        let (mut applied_next, mut state, snapshot_next) = match snap {
            Some((next, state)) => (next, state, next),
            None => (log.first_index(), StreamState::new(&spec), 0),
        };
        if log.next_index() < applied_next {
            if log.first_index() == log.next_index() {
                log.reset_to(applied_next)?;
            } else {
                return Err(Error::Snapshot {
                    path: dir.join(snapshot::FILE_NAME),
                    reason: format!(
                        "log ends at index {} before the snapshot's index {applied_next}",
                        log.next_index()
                    ),
                });
            }
        }
        if log.first_index() > applied_next {
            return Err(Error::Snapshot {
                path: dir.join(snapshot::FILE_NAME),
                reason: format!(
                    "log starts at index {} after the snapshot's index {applied_next}: entries are missing",
                    log.first_index()
                ),
            });
        }
        let mut cache = RecordCache {
            max_bytes: if spec.retention == Retention::WorkQueue {
                cfg.cache_bytes
            } else {
                0
            },
            ..Default::default()
        };
        let replay_from = applied_next;
        while applied_next < log.next_index() {
            for (index, bytes) in log.read_range(applied_next, 4096, 32 << 20)? {
                let cmd =
                    Command::decode(bytes).map_err(|reason| Error::Decode { index, reason })?;
                let out = state.apply(index, &cmd);
                fill_cache(&mut cache, &state, &cmd, &out);
                applied_next = index + 1;
            }
        }
        tracing::info!(
            stream = %spec.name,
            segments = report.segments,
            truncated_bytes = report.truncated_bytes,
            snapshot_index = snapshot_next,
            replayed = applied_next - replay_from,
            next_offset = state.next_offset(),
            ack_floor = state.ack_floor(),
            "stream recovered"
        );
        let shared = Arc::new(RwLock::new(log));
        let (gc, _writer) = GroupCommit::spawn(shared, 4 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        let (end, _) = watch::channel(state.next_offset());
        let replica = Arc::new(Self {
            spec,
            dir: dir.to_path_buf(),
            cfg,
            gc,
            submit: Mutex::new(tx),
            core: Mutex::new(Core {
                state,
                applied_next,
                snapshot_next,
                cache,
            }),
            end,
            metrics,
            snapshot_lock: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(applier(Arc::downgrade(&replica), rx));
        Ok(replica)
    }

    /// Proposes commands: they are queued on the log now (in call order) and the returned
    /// future resolves with one outcome per command once they are durable and applied.
    ///
    /// Errors: [`Error::Log`] when the log is poisoned or an entry is too large,
    /// [`Error::Unavailable`] when the replica is shutting down.
    pub fn propose(
        &self,
        cmds: Vec<Command>,
    ) -> impl std::future::Future<Output = Result<Vec<ApplyOutcome>>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.enqueue(cmds, Some(reply));
        async move {
            rx.await
                .map_err(|_| Error::Unavailable("stream applier stopped".into()))?
        }
    }

    /// Proposes commands without waiting for the outcome (acks, attempts, trims).
    pub fn propose_nowait(&self, cmds: Vec<Command>) {
        self.enqueue(cmds, None);
    }

    fn enqueue(
        &self,
        cmds: Vec<Command>,
        reply: Option<oneshot::Sender<Result<Vec<ApplyOutcome>>>>,
    ) {
        let entries: Vec<Bytes> = cmds.iter().map(Command::encode).collect();
        let tx = lock(&self.submit);
        let ticket = self.gc.submit(entries);
        if let Err(mpsc::error::SendError(Proposal { reply: Some(r), .. })) = tx.send(Proposal {
            ticket,
            cmds,
            reply,
        }) {
            let _ = r.send(Err(Error::Unavailable("stream applier stopped".into())));
        }
    }

    /// Runs `f` on the core under its lock (keep it short).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        f(&mut lock(&self.core))
    }

    /// Watch of the stream's end offset (next offset to be assigned), updated after apply.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Reads records at `offsets` (cache first, then the log). `None` for offsets not stored
    /// (below the start, not yet appended, or removed by retention meanwhile).
    pub fn read_records(&self, offsets: &[u64]) -> Vec<Option<Record>> {
        let mut out: Vec<Option<Record>> = Vec::with_capacity(offsets.len());
        let mut misses: Vec<(usize, u64, u32)> = Vec::new();
        {
            let core = lock(&self.core);
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
        let log = self.gc.log().read().unwrap_or_else(|e| e.into_inner());
        let mut last: Option<(u64, Vec<Record>)> = None;
        for (i, idx, pos) in misses {
            if last.as_ref().map(|(l, _)| *l) != Some(idx) {
                let records = match log.read(idx).map_err(Error::from).and_then(|b| {
                    Command::decode(b).map_err(|reason| Error::Decode { index: idx, reason })
                }) {
                    Ok(Command::Append { records, .. }) => records,
                    Ok(_) => Vec::new(),
                    Err(e) => {
                        tracing::warn!(stream = %self.spec.name, index = idx, error = %e, "record read failed");
                        Vec::new()
                    }
                };
                last = Some((idx, records));
            }
            out[i] = last
                .as_ref()
                .and_then(|(_, r)| r.get(pos as usize).cloned());
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

    /// Writes a snapshot if anything was applied since the last one. Returns whether it wrote.
    ///
    /// Errors: [`Error::Snapshot`] on I/O failure.
    pub async fn snapshot(&self) -> Result<bool> {
        let _g = self.snapshot_lock.lock().await;
        let (next, body) = {
            let core = lock(&self.core);
            if core.applied_next == core.snapshot_next {
                return Ok(false);
            }
            (core.applied_next, core.state.encode())
        };
        let dir = self.dir.clone();
        let bytes = snapshot::encode(next, &body);
        drop(body);
        tokio::task::spawn_blocking(move || snapshot::write_atomic(&dir, &bytes))
            .await
            .map_err(|e| Error::Unavailable(format!("snapshot task failed: {e}")))??;
        lock(&self.core).snapshot_next = next;
        tracing::debug!(stream = %self.spec.name, applied_next = next, "snapshot written");
        Ok(true)
    }

    /// One retention pass: deletes whole segments that are covered by the snapshot and (work
    /// queue) hold only resolved records, or (limits) are past the size or age limit. First a
    /// `Trim` command moves the stream's start offset past them (durably), then the segment
    /// files are deleted. Returns the number of segments deleted.
    ///
    /// Errors: [`Error::Log`] on I/O failure.
    pub async fn retention(&self) -> Result<usize> {
        let segments = self
            .gc
            .log()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .segments();
        if segments.len() <= 1 {
            return Ok(0);
        }
        let candidates = &segments[..segments.len() - 1];
        let (snap_next, floor, unresolved_index) = self.with_core(|c| {
            let floor = c.state.ack_floor();
            let idx = c
                .state
                .chunks()
                .iter()
                .find(|ch| ch.base_offset + u64::from(ch.count) > floor)
                .map_or(u64::MAX, |ch| ch.log_index);
            (c.snapshot_next, floor, idx)
        });
        let mut purge_to = None;
        let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
        let now = SystemTime::now();
        let limits_hit = |s: &crate::log::SegmentInfo, total: u64| {
            let path = self
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
        let Some(purge_to) = purge_to else {
            return Ok(0);
        };
        let (new_start, cur_start) = self.with_core(|c| {
            let s = c
                .state
                .chunks()
                .iter()
                .find(|ch| ch.log_index >= purge_to)
                .map_or(c.state.next_offset(), |ch| ch.base_offset);
            (s, c.state.start_offset())
        });
        let new_start = if self.spec.retention == Retention::WorkQueue {
            new_start.min(floor)
        } else {
            new_start
        };
        if new_start > cur_start {
            self.propose(vec![Command::Trim {
                start_offset: new_start,
            }])
            .await?;
        }
        // The Trim entry is durable; the snapshot may still predate it, which is fine: replay
        // after the snapshot re-applies the Trim before anything reads.
        let before = segments.len();
        let after = {
            let mut log = self.gc.log().write().unwrap_or_else(|e| e.into_inner());
            log.purge_before(purge_to).map_err(Error::from)?;
            log.segments().len()
        };
        let deleted = before.saturating_sub(after);
        if deleted > 0 {
            tracing::info!(stream = %self.spec.name, deleted_segments = deleted, start_offset = new_start, "retention deleted segments");
        }
        Ok(deleted)
    }

    /// Segment count and total bytes of the log.
    pub fn log_size(&self) -> (usize, u64) {
        let log = self.gc.log().read().unwrap_or_else(|e| e.into_inner());
        (log.segments().len(), log.size_bytes())
    }

    /// `(fdatasync calls, entries made durable)` by this stream's writer so far.
    pub fn sync_stats(&self) -> (u64, u64) {
        let s = self.gc.stats();
        (s.syncs, s.entries)
    }

    /// The writer's poison error, if the log failed.
    pub fn poisoned(&self) -> Option<LogError> {
        self.gc.poisoned()
    }
}

fn fill_cache(cache: &mut RecordCache, state: &StreamState, cmd: &Command, out: &ApplyOutcome) {
    if cache.max_bytes == 0 {
        return;
    }
    if let (
        Command::Append { records, .. },
        ApplyOutcome::Appended {
            base_offset,
            stored,
            duplicate: false,
            kept,
            ..
        },
    ) = (cmd, out)
    {
        if *stored == 0 {
            return;
        }
        let skip_below = state.ack_floor();
        let mut push = |i: u64, r: &Record| {
            let o = base_offset + i;
            if o >= skip_below {
                cache.push(o, r);
            }
        };
        match kept {
            None => records
                .iter()
                .enumerate()
                .for_each(|(i, r)| push(i as u64, r)),
            Some(k) => k
                .iter()
                .enumerate()
                .for_each(|(i, &p)| push(i as u64, &records[p as usize])),
        }
    }
}

async fn applier(replica: std::sync::Weak<Replica>, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    while let Some(p) = rx.recv().await {
        let started = Instant::now();
        let result = p.ticket.await;
        let Some(r) = replica.upgrade() else { return };
        r.metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        let range = match result {
            Ok(range) => range,
            Err(e) => {
                tracing::error!(stream = %r.spec.name, error = %e, "log append failed; the stream stops accepting writes until restart");
                if let Some(reply) = p.reply {
                    let _ = reply.send(Err(Error::Log(e)));
                }
                continue;
            }
        };
        let (outs, end) = {
            let mut core = lock(&r.core);
            let core = &mut *core;
            if range.start != core.applied_next {
                tracing::error!(stream = %r.spec.name, expected = core.applied_next, got = range.start, "log index gap between proposals");
            }
            let mut outs = Vec::with_capacity(p.cmds.len());
            for (i, cmd) in p.cmds.iter().enumerate() {
                let index = range.start + i as u64;
                let out = core.state.apply(index, cmd);
                fill_cache(&mut core.cache, &core.state, cmd, &out);
                record_metrics(&r.metrics, cmd, &out);
                outs.push(out);
                core.applied_next = index + 1;
            }
            (outs, core.state.next_offset())
        };
        r.end.send_if_modified(|e| {
            let changed = *e != end;
            *e = end;
            changed
        });
        if let Some(reply) = p.reply {
            let _ = reply.send(Ok(outs));
        }
    }
}

fn record_metrics(m: &StreamMetrics, cmd: &Command, out: &ApplyOutcome) {
    match (cmd, out) {
        (
            Command::Append { .. },
            ApplyOutcome::Appended {
                stored,
                deduplicated,
                duplicate: false,
                ..
            },
        ) => {
            m.produced.inc_by(u64::from(*stored));
            m.dedup_key.inc_by(u64::from(*deduplicated));
        }
        (Command::Ack { .. }, ApplyOutcome::Resolved { count }) => m.acked.inc_by(*count),
        (Command::DeadLettered { .. }, ApplyOutcome::Resolved { count }) => {
            m.dead_lettered.inc_by(*count)
        }
        _ => {}
    }
}
