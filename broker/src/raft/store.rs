//! openraft storage of one stream: [`LogStore`] (`RaftLogStorage` over the segmented log) and
//! [`StateMachine`] (`RaftStateMachine` over [`StreamState`]), sharing one [`Shared`].
//!
//! Log: entry `i` of the Raft log is frame `i` of the stream's [`SegmentedLog`], encoded by
//! [`super::encode_entry`]. `append` queues the frames on the group-commit writer and calls
//! openraft's flush callback only when the writer reports them fdatasynced (never before:
//! the callback is what lets the leader count this node in a quorum). openraft 0.10 pipelines
//! log I/O: it calls `append` again before the previous append's callback, so entries that
//! continue the ones in flight are queued right behind them (several appends may share one
//! fdatasync), while cutting a conflicting suffix (`truncate_after`, or an `append` that does
//! not continue the log), restarting the log or installing a snapshot first waits until every
//! submitted append is durable. The vote is a small file written atomically with fsync before
//! `save_vote` returns.
//!
//! Purge: openraft's purge is logical (`raft/purged.json` records the last purged log id;
//! openraft never reads at or below it again). Segment files are deleted by the broker's
//! retention pass ([`crate::replica::Replica::retention`]), only below both that purge point
//! and the records the state still references, because those records are the stream's data.
//!
//! State machine: `apply` runs [`StreamState::apply`] for every command of every committed
//! entry, in log order, with the record locator `index × 65536 + slot` (slot = the command's
//! position in the entry), updates the record cache, metrics and the end-offset watch, and
//! returns one [`EntryResponse`] per entry to the proposer.
//!
//! Snapshots: `snapshot.bin` holds the state and [`SnapMeta`] (written by the snapshot
//! builder). The transfer form sent to a follower (see [`write_transfer`]) is that file plus
//! every log entry from [`SnapMeta::records_from`] to the snapshot's last index; installing it
//! replaces the follower's log with those entries, so the follower can serve every record the
//! state references.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::{BufReader, BufWriter, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use tokio::sync::watch;
use txpipe_client::broker::v1::Record;

use super::{
    EntryResponse, LogId, RaftEntry, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig, Vote, decode_entry, encode_entry,
};
use crate::command::Command;
use crate::dedupe::{self, DedupeConfig, DedupeIndex};
use crate::log::SegmentedLog;
use crate::log::group_commit::GroupCommit;
use crate::metrics::StreamMetrics;
use crate::snapshot::{self, SnapMeta};
use crate::state::{ApplyOutcome, Retention, StreamSpec, StreamState};

/// Commands per entry are limited so that `slot` fits the locator's low 16 bits.
pub const MAX_COMMANDS_PER_ENTRY: usize = 1 << 16;
const VOTE_FILE: &str = "vote.json";
const PURGED_FILE: &str = "purged.json";
const COMMITTED_FILE: &str = "committed.json";
const XFER_MAGIC: &[u8; 8] = b"TXPXFER2";
/// Transfer format of brokers before the dedupe index (no key rows); still installed.
const XFER_MAGIC_V1: &[u8; 8] = b"TXPXFER1";

/// Record locator of command `slot` of entry `index` (see the module docs).
pub fn locator(index: u64, slot: usize) -> u64 {
    (index << 16) | slot as u64
}

/// Splits a locator into `(entry index, slot)`.
pub fn split_locator(loc: u64) -> (u64, usize) {
    (loc >> 16, (loc & 0xffff) as usize)
}

/// Recently appended records with contiguous offsets, bounded by bytes.
#[derive(Debug, Default)]
pub struct RecordCache {
    base: u64,
    records: VecDeque<Record>,
    bytes: usize,
    /// Budget, bytes (0 disables the cache).
    pub max_bytes: usize,
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
    /// The cached record at `offset`.
    pub fn get(&self, offset: u64) -> Option<&Record> {
        offset
            .checked_sub(self.base)
            .and_then(|i| self.records.get(i as usize))
    }
    /// Cached bytes (estimate: key + value + 64 per record).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }
}

/// Mutable state-machine side of a replica, behind one mutex.
pub struct Core {
    /// The state machine.
    pub state: StreamState,
    /// Last applied log id.
    pub applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Metadata of the snapshot file on disk.
    pub snapshot: Option<SnapMeta>,
    /// Recent records.
    pub cache: RecordCache,
}

impl Core {
    /// First log index not applied.
    pub fn applied_next(&self) -> u64 {
        self.applied.map_or(0, |l| l.index + 1)
    }
    /// First log index not in the snapshot file.
    pub fn snapshot_next(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, SnapMeta::next_index)
    }
}

#[derive(Debug, Default)]
struct LogMeta {
    last: Option<LogId>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    committed_written: Option<Instant>,
}

/// Everything one stream's log store, state machine and replica share.
pub struct Shared {
    /// The stream.
    pub spec: StreamSpec,
    /// The stream's directory (`log/`, `raft/`, `snapshot.bin`).
    pub dir: PathBuf,
    /// Group-commit writer of the segmented log.
    pub gc: GroupCommit,
    /// State machine side.
    pub core: Mutex<Core>,
    /// End offset (next offset to assign), updated after apply.
    pub end: watch::Sender<u64>,
    /// Metrics of the stream.
    pub metrics: StreamMetrics,
    /// Key-dedupe settings (streams with `dedupe_by_key`).
    pub dedupe: DedupeConfig,
    raft_dir: PathBuf,
    meta: Mutex<LogMeta>,
    snapshots_built: AtomicU64,
    /// Set once the Raft node is built: before, `get_current_snapshot` (called twice by
    /// openraft's start-up) returns the snapshot's metadata with an empty file instead of
    /// writing a transfer file.
    raft_built: AtomicBool,
    /// Appends submitted to the group-commit writer and not yet reported durable. openraft
    /// 0.10 pipelines log I/O: it calls `append` again before the previous append's flush
    /// callback, so the log file may not yet hold what was submitted.
    outstanding: AtomicUsize,
    /// Notified when `outstanding` drops to 0.
    drained: tokio::sync::Notify,
    /// Encoded entries submitted to the writer and not yet reported durable, in index order.
    /// openraft reads an entry as soon as `append` returns (to replicate it, and to apply it
    /// once followers made it durable, possibly before this node's own fdatasync), so readers
    /// look here for what the log file does not hold yet.
    pending: Mutex<VecDeque<(u64, Bytes)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Shared {
    /// Opens the stream's storage in `dir`: the snapshot (if any), the log with its crash
    /// recovery, and the Raft metadata files. Nothing is replayed here: openraft applies the
    /// committed entries after the snapshot when the Raft node starts.
    ///
    /// A log that does not hold the records the snapshot references (or a dedupe index without
    /// the snapshot's keys) is an error: no crash leaves it (retention and install are ordered
    /// for that), and discarding it would drop acknowledged entries.
    ///
    /// Errors: [`crate::Error::Snapshot`] for unreadable files, [`crate::Error::Log`] for log
    /// corruption before the tail or I/O.
    pub fn open(
        spec: StreamSpec,
        dir: &Path,
        log: SegmentedLog,
        cache_bytes: usize,
        metrics: StreamMetrics,
        dedupe: DedupeConfig,
    ) -> crate::Result<Arc<Self>> {
        let raft_dir = dir.join("raft");
        std::fs::create_dir_all(&raft_dir)?;
        for name in OLD_TRANSFER_FILES
            .iter()
            .chain(std::iter::once(&super::peer::RECEIVE_FILE))
        {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {
                    tracing::info!(stream = %spec.name, file = name, "removed a leftover snapshot transfer file")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut snap = snapshot::read(dir)?;
        let purged: Option<LogId> = snapshot::read_json(&raft_dir, PURGED_FILE)?;
        // openraft reads the vote when the node starts; checked here too so that an unreadable
        // one is reported with the other storage damage (crate::repair).
        let _: Option<Vote> = snapshot::read_json(&raft_dir, VOTE_FILE)?;
        // The dedupe index must hold the snapshot's live keys (see crate::dedupe).
        let index = match spec.dedupe_by_key {
            true => Some(DedupeIndex::open(
                &dir.join(dedupe::FILE_NAME),
                dedupe.cache_bytes,
            )?),
            false => None,
        };
        let index_ok = match (&index, &mut snap) {
            (Some(ix), Some((_, st))) => dedupe::attach_at_open(st, ix, true)?,
            _ => true,
        };
        if let Some((m, _)) = &snap
            && ((log.first_index() > m.records_from && log.next_index() > log.first_index())
                || !index_ok)
        {
            // Retention deletes segments only below a durable snapshot's records and a snapshot
            // install is staged (super::install), so no crash leaves this: the files were
            // changed or lost outside the broker. Discarding them would drop entries this node
            // acknowledged while keeping its vote; refuse instead (a replicated node then
            // re-syncs under a new identity: crate::repair).
            return Err(crate::Error::Snapshot {
                path: dir.join(snapshot::FILE_NAME),
                reason: format!(
                    "the stream's storage is inconsistent: the log starts at index {} but the snapshot's records start at {}{} (files changed or lost outside the broker)",
                    log.first_index(),
                    m.records_from,
                    if index_ok {
                        ""
                    } else {
                        ", and the dedupe index does not hold the snapshot's keys"
                    }
                ),
            });
        }
        let last = if log.next_index() > log.first_index() {
            let b = log.read(log.next_index() - 1)?;
            Some(
                super::decode_log_id(&b).map_err(|reason| crate::Error::Decode {
                    index: log.next_index() - 1,
                    reason,
                })?,
            )
        } else {
            None
        };
        let (state, applied, membership, snapmeta) = match snap {
            Some((m, st)) => (
                st,
                m.meta.last_log_id,
                m.meta.last_membership.clone(),
                Some(m),
            ),
            None => {
                let mut st = StreamState::new(&spec);
                if let Some(ix) = &index {
                    dedupe::attach_at_open(&mut st, ix, false)?;
                }
                (st, None, StoredMembership::default(), None)
            }
        };
        let next = state.next_offset();
        let shared_log = Arc::new(std::sync::RwLock::new(log));
        let (gc, _writer) =
            GroupCommit::spawn_observed(shared_log, 4 << 20, metrics.fsync_seconds.clone());
        let (end, _) = watch::channel(next);
        let purged = match (purged, snapmeta.as_ref().and_then(|m| m.meta.last_log_id)) {
            (Some(p), _) => Some(p),
            (None, s) => s.filter(|_| last.is_none()),
        };
        Ok(Arc::new(Self {
            spec: spec.clone(),
            dir: dir.to_path_buf(),
            gc,
            core: Mutex::new(Core {
                state,
                applied,
                membership,
                snapshot: snapmeta,
                cache: RecordCache {
                    max_bytes: if spec.retention == Retention::WorkQueue {
                        cache_bytes
                    } else {
                        0
                    },
                    ..Default::default()
                },
            }),
            end,
            metrics,
            dedupe,
            raft_dir,
            meta: Mutex::new(LogMeta {
                last,
                committed: None,
                purged,
                committed_written: None,
            }),
            snapshots_built: AtomicU64::new(0),
            raft_built: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
            pending: Mutex::new(VecDeque::new()),
        }))
    }

    /// Runs `f` on the core under its lock (keep it short).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        f(&mut lock(&self.core))
    }

    /// Waits until every append submitted to the writer is durable (or failed), so the log
    /// file holds all of them and can be truncated or reset safely.
    async fn drain_appends(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Records that the Raft node over this storage is built (see `raft_built`).
    pub fn set_raft_built(&self) {
        self.raft_built.store(true, Ordering::Release);
    }

    /// openraft's purge point (entries at or below it are only kept for their records).
    pub fn purged(&self) -> Option<LogId> {
        lock(&self.meta).purged
    }

    /// The commit index openraft last reported to this node's storage.
    pub fn committed(&self) -> Option<LogId> {
        lock(&self.meta).committed
    }

    /// Snapshots built since start.
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots_built.load(Ordering::Relaxed)
    }

    /// The pending (submitted, not yet durable) encoded entries with index in `start..end`.
    /// Taken **before** reading the log file: an entry leaves this list only after the writer
    /// put it in the file, so every index is in one or the other.
    fn pending_in(&self, start: u64, end: u64) -> Vec<(u64, Bytes)> {
        lock(&self.pending)
            .iter()
            .filter(|(i, _)| *i >= start && *i < end)
            .cloned()
            .collect()
    }

    /// The encoded entries `start..end` (clamped to what the log holds), from the log file and
    /// then the pending entries, contiguous.
    ///
    /// Errors: log read errors, as text.
    fn read_encoded(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>, String> {
        let pending = self.pending_in(start, end);
        let log = self.gc.read_log();
        let mut out = Vec::new();
        let mut i = start.max(log.first_index());
        let file_end = end.min(log.next_index());
        while i < file_end {
            let batch = log
                .read_range(i, (file_end - i).min(4096) as usize, 16 << 20)
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            for (index, b) in batch {
                out.push((index, b));
                i = index + 1;
            }
        }
        drop(log);
        for (index, b) in pending {
            if index == i && index < end {
                out.push((index, b));
                i += 1;
            }
        }
        Ok(out)
    }

    fn read_entries(&self, start: u64, end: u64) -> std::io::Result<Vec<RaftEntry>> {
        self.read_encoded(start, end)
            .map_err(io_err)?
            .into_iter()
            .map(|(index, b)| decode_entry(b).map_err(|e| io_err(format!("entry {index}: {e}"))))
            .collect()
    }

    /// Reads the records at `locs` (record locators with positions) from the log.
    pub fn read_located(&self, locs: &[(u64, u32)]) -> Vec<Option<Record>> {
        let mut last: Option<(u64, Vec<Command>)> = None;
        let mut out = Vec::with_capacity(locs.len());
        for &(loc, pos) in locs {
            let (index, slot) = split_locator(loc);
            if last.as_ref().map(|(l, _)| *l) != Some(index) {
                let cmds = match self
                    .read_encoded(index, index + 1)
                    .and_then(|v| {
                        v.into_iter()
                            .next()
                            .map(|(_, b)| b)
                            .ok_or_else(|| format!("entry {index} is not in the log"))
                    })
                    .and_then(decode_entry)
                {
                    Ok(e) => match e.payload {
                        EntryPayload::Normal(d) => d.cmds,
                        _ => Vec::new(),
                    },
                    Err(e) => {
                        tracing::warn!(stream = %self.spec.name, index, error = %e, "record read failed");
                        Vec::new()
                    }
                };
                last = Some((index, cmds));
            }
            let rec = last.as_ref().and_then(|(_, cmds)| match cmds.get(slot) {
                Some(Command::Append { records, .. }) => records.get(pos as usize).cloned(),
                _ => None,
            });
            out.push(rec);
        }
        out
    }
}

/// `RaftLogStorage` of a stream. See the module docs.
#[derive(Clone)]
pub struct LogStore {
    /// Shared storage.
    pub shared: Arc<Shared>,
}

fn range_to(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::io::Result<Vec<RaftEntry>> {
        let (start, end) = range_to(&range);
        self.shared.read_entries(start, end)
    }

    async fn read_vote(&mut self) -> std::io::Result<Option<Vote>> {
        snapshot::read_json(&self.shared.raft_dir, VOTE_FILE).map_err(io_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> std::io::Result<LogState<TypeConfig>> {
        let m = lock(&self.shared.meta);
        let last = match (m.last, m.purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState {
            last_purged_log_id: m.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::io::Result<()> {
        let dir = self.shared.raft_dir.clone();
        let v = *vote;
        tokio::task::spawn_blocking(move || snapshot::write_json(&dir, VOTE_FILE, &v))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::io::Result<()> {
        // An optimisation only (a restart re-applies up to it without waiting for a leader),
        // so it is written at most every 200 ms and without fsync.
        let due = {
            let mut m = lock(&self.shared.meta);
            m.committed = committed;
            let due = m
                .committed_written
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
            if due {
                m.committed_written = Some(Instant::now());
            }
            due
        };
        if due && let Some(c) = committed {
            let path = self.shared.raft_dir.join(COMMITTED_FILE);
            let tmp = self.shared.raft_dir.join("committed.json.tmp");
            let b = serde_json::to_vec(&c).expect("log id serialises");
            let r = std::fs::write(&tmp, b).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = r {
                tracing::warn!(stream = %self.shared.spec.name, error = %e, "cannot record the commit index");
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> std::io::Result<Option<LogId>> {
        // Written without fsync (an optimisation, see `save_committed`): after a power loss it
        // may be empty or short. Then it is ignored; the commit index is learned again from
        // the leader, which is always safe.
        let c: Option<LogId> = match snapshot::read_json(&self.shared.raft_dir, COMMITTED_FILE) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(stream = %self.shared.spec.name, error = %e,
                    "ignoring an unreadable commit-index file (written without fsync; the commit index is learned again from the leader)");
                None
            }
        };
        // Never claim more than the log holds.
        let last = lock(&self.shared.meta).last;
        Ok(match (c, last) {
            (Some(c), Some(l)) if c.index <= l.index => Some(c),
            _ => None,
        })
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> std::io::Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut frames = Vec::new();
        let mut first = None;
        let mut last = None;
        for e in entries {
            first.get_or_insert(e.log_id.index);
            last = Some(e.log_id);
            frames.push(encode_entry(&e));
        }
        let (Some(first), Some(last)) = (first, last) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        // Pipelined case: the entries continue the ones still in flight; the writer appends
        // them in submission order, right after.
        let expected = lock(&self.shared.meta).last.map(|l| l.index + 1);
        let in_flight = self.shared.outstanding.load(Ordering::Acquire) > 0;
        if !(in_flight && expected == Some(first)) {
            // Anything else (a conflicting suffix to cut, a log to restart) is done on the log
            // file, which must first hold every submitted entry.
            self.shared.drain_appends().await;
            let mut log = self.shared.gc.write_log();
            if log.next_index() != first {
                if log.first_index() == log.next_index() || first < log.first_index() {
                    // Empty log (fresh, or reset by a snapshot install): start at `first`.
                    log.reset_to(first).map_err(io_err)?;
                } else if first > log.next_index() {
                    // Entries below `first` are purged logically (after a snapshot install
                    // or purge) but the log ends before them: restart the log at `first`.
                    log.reset_to(first).map_err(io_err)?;
                } else {
                    log.truncate_from(first).map_err(io_err)?;
                }
            }
        }
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        lock(&self.shared.pending).extend((first..).zip(frames.iter().cloned()));
        let ticket = self.shared.gc.submit(frames);
        lock(&self.shared.meta).last = Some(last);
        let shared = Arc::clone(&self.shared);
        let started = Instant::now();
        tokio::spawn(async move {
            let r = ticket.await;
            shared
                .metrics
                .append_seconds
                .observe(started.elapsed().as_secs_f64());
            {
                // In the file now (or never: the writer is poisoned and the replica stops).
                let mut pending = lock(&shared.pending);
                match &r {
                    Ok(range) => {
                        while pending.front().is_some_and(|(i, _)| *i < range.end) {
                            pending.pop_front();
                        }
                    }
                    Err(_) => pending.clear(),
                }
            }
            if shared.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.drained.notify_waiters();
            }
            match r {
                Ok(range) if range.start == first => callback.io_completed(Ok(())),
                Ok(range) => callback.io_completed(Err(std::io::Error::other(format!(
                    "log placed entries at {range:?}, expected to start at {first}"
                )))),
                Err(e) => {
                    tracing::error!(stream = %shared.spec.name, error = %e, "log append failed; this replica stops");
                    callback.io_completed(Err(std::io::Error::other(e.to_string())))
                }
            }
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> std::io::Result<()> {
        self.shared.drain_appends().await;
        let idx = last_log_id.map_or(0, |l| l.index + 1);
        let new_last = {
            let mut log = self.shared.gc.write_log();
            let from = idx.max(log.first_index());
            log.truncate_from(from).map_err(io_err)?;
            if log.next_index() > log.first_index() {
                let b = log.read(log.next_index() - 1).map_err(io_err)?;
                Some(super::decode_log_id(&b).map_err(io_err)?)
            } else {
                None
            }
        };
        lock(&self.shared.meta).last = new_last;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        let dir = self.shared.raft_dir.clone();
        tokio::task::spawn_blocking(move || snapshot::write_json(&dir, PURGED_FILE, &log_id))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        let mut m = lock(&self.shared.meta);
        m.purged = Some(log_id);
        Ok(())
    }
}

/// `RaftStateMachine` of a stream. See the module docs.
#[derive(Clone)]
pub struct StateMachine {
    /// Shared storage.
    pub shared: Arc<Shared>,
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

/// First log index whose records `state` still references: the oldest chunk with an
/// unresolved offset (work queue) or the oldest stored chunk (limits); `next` when none.
pub fn records_from(state: &StreamState, next: u64) -> u64 {
    let start = match state.chunks().front() {
        None => return next,
        Some(_) if state_is_wq(state) => state.ack_floor(),
        Some(_) => state.start_offset(),
    };
    state
        .chunks()
        .iter()
        .find(|ch| ch.base_offset + u64::from(ch.count) > start)
        .map_or(next, |ch| split_locator(ch.log_index).0)
}

fn state_is_wq(state: &StreamState) -> bool {
    state.retention() == Retention::WorkQueue
}

impl StateMachine {
    /// Applies one committed entry under the core lock; returns its response.
    fn apply_one(&self, e: &RaftEntry) -> EntryResponse {
        let sh = &self.shared;
        let mut core = lock(&sh.core);
        let core = &mut *core;
        let mut outcomes = Vec::new();
        match &e.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                core.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            EntryPayload::Normal(d) => {
                outcomes.reserve(d.cmds.len());
                for (slot, cmd) in d.cmds.iter().enumerate() {
                    let out = core.state.apply(locator(e.log_id.index, slot), cmd);
                    fill_cache(&mut core.cache, &core.state, cmd, &out);
                    record_metrics(&sh.metrics, cmd, &out);
                    outcomes.push(out);
                }
            }
        }
        core.applied = Some(e.log_id);
        EntryResponse { outcomes }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, StoredMembership)> {
        let c = lock(&self.shared.core);
        Ok((c.applied, c.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> std::io::Result<()>
    where
        Strm: Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Answers are sent after the batch's dedupe index commit (see crate::dedupe), as
        // before the migration to openraft 0.10's apply stream.
        let mut answers = Vec::new();
        while let Some(item) = entries.next().await {
            let (e, responder) = item?;
            let resp = self.apply_one(&e);
            answers.push((responder, resp));
        }
        if answers.is_empty() {
            return Ok(());
        }
        let sh = &self.shared;
        let end = {
            let mut core = lock(&sh.core);
            // One (non-durable) index commit per apply batch; see crate::dedupe.
            if let Err(e) = core.state.dedupe_mut().commit() {
                tracing::error!(stream = %sh.spec.name, error = %e, "dedupe index failed; this replica stops");
                return Err(io_err(e));
            }
            dedupe::publish_metrics(&sh.metrics, core.state.dedupe());
            core.state.next_offset()
        };
        sh.end.send_if_modified(|v| {
            let changed = *v != end;
            *v = end;
            changed
        });
        for (responder, resp) in answers {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> std::io::Result<()> {
        let f = snapshot.into_std().await;
        // The install replaces the log file: no append may still be on its way into it.
        self.shared.drain_appends().await;
        let sh = Arc::clone(&self.shared);
        let meta = meta.clone();
        let name = sh.spec.name.clone();
        let r = tokio::task::spawn_blocking(move || install_transfer(&sh, &meta, f))
            .await
            .map_err(io_err)?;
        match r {
            Ok(()) => {
                tracing::info!(stream = %name, "snapshot installed from the leader");
                Ok(())
            }
            Err(e) => {
                tracing::error!(stream = %name, error = %e, "snapshot install failed");
                Err(io_err(e))
            }
        }
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<Snapshot>> {
        let sh = Arc::clone(&self.shared);
        if !sh.raft_built.load(Ordering::Acquire) {
            // Start-up: openraft only reads the metadata (the state was loaded from the
            // snapshot file by `Shared::open`, so it installs nothing).
            let meta = lock(&sh.core).snapshot.clone();
            return match meta {
                None => Ok(None),
                Some(m) => {
                    let empty = tempfile::tempfile_in(&sh.dir)?;
                    Ok(Some(Snapshot {
                        meta: m.meta,
                        snapshot: tokio::fs::File::from_std(empty),
                    }))
                }
            };
        }
        let r = tokio::task::spawn_blocking(move || write_transfer(&sh))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        match r {
            None => Ok(None),
            Some((meta, file)) => Ok(Some(Snapshot {
                meta: meta.meta,
                snapshot: tokio::fs::File::from_std(file),
            })),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> std::io::Result<Snapshot> {
        let sh = Arc::clone(&self.shared);
        let meta = build_snapshot_file(&sh).await.map_err(io_err)?;
        sh.snapshots_built.fetch_add(1, Ordering::Relaxed);
        // openraft keeps only the meta of a built snapshot; the data is read again through
        // `get_current_snapshot` when a follower needs it.
        let empty = tempfile::tempfile_in(&sh.dir)?;
        Ok(Snapshot {
            meta: meta.meta,
            snapshot: tokio::fs::File::from_std(empty),
        })
    }
}

/// Files of transfers written by earlier broker versions under fixed names; removed at open.
const OLD_TRANSFER_FILES: &[&str] = &["snapshot.send", "snapshot.empty"];

/// Writes `snapshot.bin` from the current applied state (when it changed since the last one).
/// Returns the snapshot's metadata.
///
/// Errors: [`crate::Error::Snapshot`] on I/O failure.
pub async fn build_snapshot_file(sh: &Arc<Shared>) -> crate::Result<SnapMeta> {
    let (meta, body, index) = {
        let mut c = lock(&sh.core);
        if let Some(s) = &c.snapshot
            && s.meta.last_log_id == c.applied
        {
            return Ok(s.clone());
        }
        // The index must hold every key the captured state counts: write the memtable
        // (crate::dedupe, "Memtable") before the state is encoded.
        if let Err(reason) = c.state.dedupe_mut().flush() {
            return Err(crate::Error::Snapshot {
                path: sh.dir.join(dedupe::FILE_NAME),
                reason,
            });
        }
        let next = c.applied_next();
        let last = c.applied;
        let meta = SnapMeta {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: c.membership.clone(),
            },
            records_from: records_from(&c.state, next),
        };
        let d = c.state.dedupe();
        let index = d.index().filter(|_| sh.spec.dedupe_by_key).cloned();
        (meta, c.state.encode(), index.map(|ix| (ix, d.cursor())))
    };
    let dir = sh.dir.clone();
    let bytes = snapshot::encode(&meta, &body);
    drop(body);
    let size = bytes.len();
    tokio::task::spawn_blocking(move || -> crate::Result<()> {
        // The index is made durable before the snapshot that covers it is written, and rows
        // below the snapshot's cursor are deleted only after (crate::dedupe invariants 2, 3).
        if let Some((ix, _)) = &index {
            ix.sync()?;
        }
        crate::crash_point!("snapshot::before_write");
        snapshot::write_atomic(&dir, &bytes)?;
        crate::crash_point!("snapshot::after_write");
        if let Some((ix, cursor)) = &index {
            ix.gc_below(*cursor)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| crate::Error::Unavailable(format!("snapshot task failed: {e}")))??;
    sh.metrics.snapshot_bytes.set(size as i64);
    lock(&sh.core).snapshot = Some(meta.clone());
    tracing::debug!(stream = %sh.spec.name, last = ?meta.meta.last_log_id, bytes = size, "snapshot written");
    Ok(meta)
}

/// Writes the transfer form of the current snapshot file to an unnamed temporary file in the
/// stream directory and returns it opened at offset 0 (the file is gone once closed). The log is
/// read in batches of at most 4096 entries (16 MiB), each under the log's read lock, so appends
/// go on while a large transfer is written. The format: `"TXPXFER1"`, `snapshot file length u64 LE`, the snapshot file, the
/// first entry index `u64 LE`, then `[len u32 LE][crc32c u32 LE][encoded entry]` for every log
/// entry from [`SnapMeta::records_from`] (or the log's first index, if retention removed
/// entries since) to the snapshot's last index. `None` without a snapshot.
///
/// Errors: I/O and log read errors, as text.
pub fn write_transfer(sh: &Shared) -> Result<Option<(SnapMeta, std::fs::File)>, String> {
    let path = sh.dir.join(snapshot::FILE_NAME);
    let file = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let (meta, st) = snapshot::decode(&file)?;
    // One unnamed file per transfer (two followers may need a snapshot at once), deleted
    // when openraft drops it after sending.
    let out_path = sh.dir.join("<transfer>");
    let out = tempfile::tempfile_in(&sh.dir).map_err(|e| format!("{}: {e}", out_path.display()))?;
    let mut w = BufWriter::new(out);
    let werr = |e: std::io::Error| format!("{}: {e}", out_path.display());
    w.write_all(XFER_MAGIC).map_err(werr)?;
    w.write_all(&(file.len() as u64).to_le_bytes())
        .map_err(werr)?;
    w.write_all(&file).map_err(werr)?;
    if sh.spec.dedupe_by_key {
        // The live keys of the snapshot (crate::dedupe invariant 4).
        let ix = sh.with_core(|c| c.state.dedupe().index().cloned());
        let ix = ix.ok_or("stream has no dedupe index")?;
        let (cursor, next) = (st.dedupe().cursor(), st.dedupe().inserted());
        ix.write_rows(cursor, next, &mut w)
            .map_err(|e| e.to_string())?;
    }
    drop(st);
    let end = meta.next_index();
    let first = sh.gc.read_log().first_index();
    // Records below the log's first index were deleted by retention after later entries
    // (acks, trims) made them unneeded; the follower applies those entries after the
    // snapshot, so it never reads them.
    let mut i = meta.records_from.max(first).min(end);
    w.write_all(&i.to_le_bytes()).map_err(werr)?;
    while i < end {
        let batch = sh.read_encoded(i, end.min(i + 4096))?;
        if batch.is_empty() {
            return Err(format!("log ends at {i}, before the snapshot's end {end}"));
        }
        for (index, b) in batch {
            w.write_all(&(b.len() as u32).to_le_bytes()).map_err(werr)?;
            w.write_all(&crc32c::crc32c(&b).to_le_bytes())
                .map_err(werr)?;
            w.write_all(&b).map_err(werr)?;
            i = index + 1;
        }
    }
    let mut f = w.into_inner().map_err(|e| e.to_string())?;
    f.flush().map_err(werr)?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0)).map_err(werr)?;
    Ok(Some((meta, f)))
}

/// Reads exactly `n` bytes, growing the buffer only as bytes arrive: `n` is a length field of
/// the received file, so a corrupt one must not allocate up to 16 EiB (or 4 GiB per entry) up
/// front (found by the `transfer` fuzz target, docs/fuzzing.md).
fn read_n(r: &mut impl Read, n: u64) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::new();
    r.take(n).read_to_end(&mut b)?;
    if (b.len() as u64) < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} of {n} bytes before the end of the file", b.len()),
        ));
    }
    Ok(b)
}

/// Installs a received transfer file (see [`write_transfer`]), staged and redo-able
/// ([`super::install`]): checks it while writing its log, snapshot file and dedupe index into
/// `<dir>/install/`, decides the install with the redo marker, moves the staged files over the
/// live ones, then swaps the in-memory state. A transfer that fails its checks (or any I/O
/// error before the marker) leaves the stream exactly as it was.
///
/// Errors: a description of the malformed part or the I/O failure.
pub fn install_transfer(sh: &Shared, meta: &SnapshotMeta, f: std::fs::File) -> Result<(), String> {
    let live_cfg = sh.gc.read_log().config().clone();
    let staged = match super::install::begin(&sh.dir) {
        Ok(stage) => stage_transfer(sh, meta, f, &stage, &live_cfg),
        Err(e) => Err(e.to_string()),
    };
    let (smeta, mut state) = match staged {
        Ok(v) => v,
        Err(e) => {
            super::install::abort(&sh.dir);
            return Err(e);
        }
    };
    if let Err(e) = super::install::commit(&sh.dir, smeta.meta.last_log_id) {
        super::install::abort(&sh.dir);
        return Err(e.to_string());
    }
    // Decided: from here an error leaves the marker, and the next start finishes the install.
    {
        let mut log = sh.gc.write_log();
        super::install::redo(&sh.dir).map_err(|e| e.to_string())?;
        *log = SegmentedLog::open(live_cfg)
            .map_err(|e| format!("reopening the installed log: {e}"))?
            .0;
    }
    if sh.spec.dedupe_by_key {
        let path = sh.dir.join(dedupe::FILE_NAME);
        let ix = DedupeIndex::open(&path, sh.dedupe.cache_bytes).map_err(|e| e.to_string())?;
        state.dedupe_mut().attach(ix).map_err(|e| e.to_string())?;
    }
    {
        let mut m = lock(&sh.meta);
        m.purged = smeta.meta.last_log_id;
        m.last = smeta.meta.last_log_id;
    }
    let next = state.next_offset();
    {
        let mut c = lock(&sh.core);
        c.state = state;
        c.applied = smeta.meta.last_log_id;
        c.membership = smeta.meta.last_membership.clone();
        c.snapshot = Some(smeta);
        c.cache.clear();
    }
    sh.end.send_replace(next);
    Ok(())
}

/// Step 1 of [`install_transfer`]: checks the transfer file while writing its parts into the
/// staging directory `stage` (log synced, snapshot file and dedupe index written durably);
/// returns the snapshot's metadata and state (without its dedupe index attached).
fn stage_transfer(
    sh: &Shared,
    meta: &SnapshotMeta,
    mut f: std::fs::File,
    stage: &Path,
    live_cfg: &crate::log::LogConfig,
) -> Result<(SnapMeta, StreamState), String> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(f);
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(|e| format!("header: {e}"))?;
    if &head[..8] != XFER_MAGIC && &head[..8] != XFER_MAGIC_V1 {
        return Err("not a TXPXFER2 (or TXPXFER1) snapshot transfer".into());
    }
    let with_keys = &head[..8] == XFER_MAGIC;
    let flen = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let file = read_n(&mut r, flen).map_err(|e| format!("snapshot file: {e}"))?;
    let (smeta, state) = snapshot::decode(&file)?;
    if smeta.meta.last_log_id != meta.last_log_id {
        return Err(format!(
            "transfer holds a snapshot at {:?}, openraft announced {:?}",
            smeta.meta.last_log_id, meta.last_log_id
        ));
    }
    if sh.spec.dedupe_by_key {
        let (cursor, next) = (state.dedupe().cursor(), state.dedupe().inserted());
        let no_rows = [0u8; 12];
        let rows: &mut dyn Read = if with_keys { &mut r } else { &mut &no_rows[..] };
        DedupeIndex::build_file(
            &stage.join(dedupe::FILE_NAME),
            sh.dedupe.cache_bytes,
            &mut { rows },
            cursor,
            next,
        )
        .map_err(|e| e.to_string())?;
    }
    let end = smeta.next_index();
    let mut from = [0u8; 8];
    r.read_exact(&mut from)
        .map_err(|e| format!("first entry index: {e}"))?;
    let from = u64::from_le_bytes(from);
    let mut cfg = live_cfg.clone();
    cfg.dir = stage.join(super::install::LOG_DIR);
    let (mut log, _) = SegmentedLog::open(cfg).map_err(|e| e.to_string())?;
    log.reset_to(from).map_err(|e| e.to_string())?;
    let mut entries: Vec<Bytes> = Vec::new();
    let mut expect = from;
    loop {
        let mut h = [0u8; 8];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.to_string()),
        }
        let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        let b = read_n(&mut r, u64::from(len)).map_err(|e| format!("entry {expect}: {e}"))?;
        if crc32c::crc32c(&b) != crc {
            return Err(format!("entry {expect}: CRC mismatch"));
        }
        let id = super::decode_log_id(&b).map_err(|e| format!("entry {expect}: {e}"))?;
        if id.index != expect {
            return Err(format!("entry {expect}: holds index {}", id.index));
        }
        entries.push(Bytes::from(b));
        expect += 1;
        if entries.len() >= 1024 {
            let refs: Vec<&[u8]> = entries.iter().map(|b| b.as_ref()).collect();
            log.append(&refs).map_err(|e| e.to_string())?;
            entries.clear();
        }
    }
    if !entries.is_empty() {
        let refs: Vec<&[u8]> = entries.iter().map(|b| b.as_ref()).collect();
        log.append(&refs).map_err(|e| e.to_string())?;
    }
    if expect != end {
        return Err(format!("transfer ends at entry {expect}, expected {end}"));
    }
    if log.next_index() == log.first_index() {
        log.reset_to(end).map_err(|e| e.to_string())?;
    }
    log.sync().map_err(|e| e.to_string())?;
    drop(log);
    snapshot::write_atomic(stage, &file).map_err(|e| e.to_string())?;
    Ok((smeta, state))
}
