//! Group commit: one writer task, many waiters, one fdatasync per batch.
//!
//! Callers hand entries to [`GroupCommit::append`] (or [`GroupCommit::submit`]); the writer
//! task drains everything queued (up to `max_batch_bytes` of payload, and always at least one
//! request), appends it with one write per segment under the log's write lock, takes a
//! [`SyncHandle`](super::SyncHandle) on the active segment, releases the lock, calls one
//! fdatasync, then resolves every waiter. Completions resolve in index order, and requests are
//! appended in the order [`GroupCommit::submit`] was called. The blocking write and fsync run
//! on tokio's blocking pool (`spawn_blocking`), one batch at a time; requests arriving during
//! a batch's fsync form the next batch, so the batch size grows with load.
//!
//! Timing: with a histogram given to [`GroupCommit::spawn_observed`], the writer observes the
//! duration of every fdatasync it makes (seconds, successful or not), and nothing when the
//! log's `fsync` setting is off. The fdatasync of a full segment when the log rolls to a new
//! one happens inside [`SegmentedLog::append`] (under the write lock) and is not in it.
//!
//! Failure: an error from the write or the fsync *poisons* the writer: that batch's waiters
//! and every later append get the error (a copy of it), because after a failed fsync the page
//! cache may no longer hold what the caller wrote (the "fsyncgate" lesson: Postgres 2018,
//! Rebello et al., "Can Applications Recover from fsync Failures?", ATC 2020). The node must
//! restart and run recovery.
//!
//! The writer task ends when every [`GroupCommit`] handle is dropped (after finishing the
//! requests already queued).

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{LogError, Result, SegmentedLog};

/// Default bound on payload bytes per batch (per fdatasync) for [`GroupCommit::spawn`]: 4 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 << 20;

/// Shared handle to a log: readers take the read lock, the group-commit writer the write lock
/// (only while copying bytes into the file, never across an fsync).
pub type SharedLog = Arc<std::sync::RwLock<SegmentedLog>>;

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats())
            .field("poisoned", &self.shared.poison.get().is_some())
            .finish()
    }
}

/// Figures of the writer, for metrics.
#[derive(Debug, Clone, Default)]
pub struct GroupCommitStats {
    /// fdatasync calls made.
    pub syncs: u64,
    /// Entries made durable.
    pub entries: u64,
    /// Bytes of payload made durable.
    pub bytes: u64,
}

struct Shared {
    log: SharedLog,
    dir: std::path::PathBuf,
    max_entry_bytes: u32,
    stats: Mutex<GroupCommitStats>,
    /// The first write or fsync error; set once, never cleared.
    poison: OnceLock<LogError>,
    /// One past the last entry this writer made durable.
    durable_next: AtomicU64,
    /// Observes each fdatasync's duration, seconds.
    fsync_seconds: Option<prometheus::Histogram>,
}

struct Request {
    entries: Vec<Bytes>,
    done: oneshot::Sender<Result<Range<u64>>>,
}

impl Request {
    fn payload_bytes(&self) -> usize {
        self.entries.iter().map(Bytes::len).sum()
    }
}

/// Future of one [`GroupCommit::submit`]: resolves with the entries' index range once they
/// are durable, or with the writer's error. Dropping it does not cancel the append (the
/// entries are already queued); it only stops waiting.
#[derive(Debug)]
#[must_use = "the append is queued, but its durability is only known by awaiting it"]
pub struct AppendTicket {
    state: TicketState,
}

#[derive(Debug)]
enum TicketState {
    Ready(Option<Result<Range<u64>>>),
    Waiting {
        rx: oneshot::Receiver<Result<Range<u64>>>,
        dir: std::path::PathBuf,
    },
}

impl Future for AppendTicket {
    type Output = Result<Range<u64>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            TicketState::Ready(r) => {
                Poll::Ready(r.take().expect("AppendTicket polled after completion"))
            }
            TicketState::Waiting { rx, dir } => match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                Poll::Ready(Err(_)) => Poll::Ready(Err(writer_gone(dir))),
            },
        }
    }
}

fn writer_gone(dir: &std::path::Path) -> LogError {
    LogError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(
            "the group-commit writer stopped before the append was durable",
        ),
    }
}

impl GroupCommit {
    /// Starts the writer task on the current tokio runtime. The task runs the blocking write
    /// and fdatasync on tokio's blocking pool. It stops when every `GroupCommit` handle is
    /// dropped. `max_batch_bytes` bounds the bytes written per fsync (default 4 MiB,
    /// [`DEFAULT_MAX_BATCH_BYTES`]).
    ///
    /// (The bound is on payload bytes and is soft: the writer stops draining once it is
    /// reached, and a single request larger than it is written alone.)
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(log: SharedLog, max_batch_bytes: usize) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start(log, max_batch_bytes, None)
    }

    /// [`GroupCommit::spawn`], and the writer observes the duration of every fdatasync it makes
    /// in `fsync_seconds` (seconds; the broker's `txpipe_broker_fsync_duration_seconds`). No
    /// observation when the log was opened with `fsync = false` (no sync is made).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn_observed(
        log: SharedLog,
        max_batch_bytes: usize,
        fsync_seconds: prometheus::Histogram,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start(log, max_batch_bytes, Some(fsync_seconds))
    }

    fn start(
        log: SharedLog,
        max_batch_bytes: usize,
        fsync_seconds: Option<prometheus::Histogram>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (dir, max_entry_bytes, next) = {
            let g = log.read().unwrap_or_else(|e| e.into_inner());
            (
                g.config().dir.clone(),
                g.config().max_entry_bytes,
                g.next_index(),
            )
        };
        let shared = Arc::new(Shared {
            log,
            dir,
            max_entry_bytes,
            stats: Mutex::new(GroupCommitStats::default()),
            poison: OnceLock::new(),
            durable_next: AtomicU64::new(next),
            fsync_seconds,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_writer(rx, Arc::clone(&shared), max_batch_bytes.max(1)));
        (Self { tx, shared }, task)
    }

    /// Appends `entries` and resolves with their index range once they are durable. An I/O
    /// error fails this call and every later one (the log is poisoned: the node must restart
    /// and recover).
    ///
    /// The entries are queued on the first poll; once queued, dropping the future does not
    /// cancel the append.
    ///
    /// Errors: [`LogError::EntryTooLarge`] (nothing queued, writer not poisoned),
    /// [`LogError::Io`] and any other error of the write or fsync (poisoning).
    pub async fn append(&self, entries: Vec<Bytes>) -> Result<Range<u64>> {
        self.submit(entries).await
    }

    /// Queues `entries` now (synchronously, so calls made in sequence are appended in that
    /// order) and returns a future of their index range, resolved once they are durable.
    /// [`Self::append`] is `submit(..).await`; `submit` lets one task pipeline several batches.
    /// Errors as for [`Self::append`].
    pub fn submit(&self, entries: Vec<Bytes>) -> AppendTicket {
        let ready = |r| AppendTicket {
            state: TicketState::Ready(Some(r)),
        };
        let limit = self.shared.max_entry_bytes;
        if let Some(e) = entries.iter().find(|e| e.len() > limit as usize) {
            return ready(Err(LogError::EntryTooLarge {
                size: e.len(),
                limit,
            }));
        }
        if let Some(e) = self.shared.poison.get() {
            return ready(Err(e.duplicate()));
        }
        let (done, rx) = oneshot::channel();
        if self.tx.send(Request { entries, done }).is_err() {
            return ready(Err(writer_gone(&self.shared.dir)));
        }
        AppendTicket {
            state: TicketState::Waiting {
                rx,
                dir: self.shared.dir.clone(),
            },
        }
    }

    /// Read lock on the shared log. A poisoned lock is taken anyway: the log's own state is
    /// only changed through methods that leave it consistent or return an error.
    pub fn read_log(&self) -> std::sync::RwLockReadGuard<'_, SegmentedLog> {
        self.shared.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write lock on the shared log (Raft truncate/purge/snapshot install); poison-tolerant
    /// like [`GroupCommit::read_log`].
    pub fn write_log(&self) -> std::sync::RwLockWriteGuard<'_, SegmentedLog> {
        self.shared.log.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writer figures so far.
    pub fn stats(&self) -> GroupCommitStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One past the last entry made durable by this writer (at spawn: the log's next index,
    /// as [`SegmentedLog::open`] syncs what it recovers). Not adjusted by a later
    /// `truncate_from` / `reset_to` on the shared log.
    pub fn durable_next_index(&self) -> u64 {
        self.shared.durable_next.load(Ordering::Acquire)
    }

    /// The error that poisoned the writer, if any (a copy).
    pub fn poisoned(&self) -> Option<LogError> {
        self.shared.poison.get().map(LogError::duplicate)
    }
}

async fn run_writer(
    mut rx: mpsc::UnboundedReceiver<Request>,
    shared: Arc<Shared>,
    max_batch_bytes: usize,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.payload_bytes();
        let mut batch = vec![first];
        while bytes < max_batch_bytes {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.payload_bytes();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        if let Some(e) = shared.poison.get() {
            for r in batch {
                let _ = r.done.send(Err(e.duplicate()));
            }
            continue;
        }
        let sh = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || {
            let result = write_batch(&sh, &batch);
            (batch, result)
        })
        .await
        {
            Ok((batch, Ok(ranges))) => {
                for (r, range) in batch.into_iter().zip(ranges) {
                    let _ = r.done.send(Ok(range));
                }
            }
            Ok((batch, Err(e))) => {
                tracing::error!(dir = %shared.dir.display(), error = %e, "log write failed; group commit poisoned");
                let _ = shared.poison.set(e);
                let e = shared.poison.get().expect("poison just set");
                for r in batch {
                    let _ = r.done.send(Err(e.duplicate()));
                }
            }
            Err(join) => {
                // The batch (and its senders) went down with the blocking task: its waiters
                // see `writer_gone`.
                tracing::error!(dir = %shared.dir.display(), error = %join, "log writer panicked; group commit poisoned");
                let _ = shared.poison.set(LogError::Io {
                    path: shared.dir.clone(),
                    source: std::io::Error::other(format!("log writer panicked: {join}")),
                });
            }
        }
    }
    tracing::debug!(dir = %shared.dir.display(), "group-commit writer stopped");
}

/// Appends every request of the batch under the write lock, syncs after releasing it, and
/// returns each request's range (in batch order).
fn write_batch(shared: &Shared, batch: &[Request]) -> Result<Vec<Range<u64>>> {
    let refs: Vec<&[u8]> = batch
        .iter()
        .flat_map(|r| r.entries.iter().map(|b| b.as_ref()))
        .collect();
    let (range, handle) = {
        let mut log = shared.log.write().map_err(|_| LogError::Io {
            path: shared.dir.clone(),
            source: std::io::Error::other("log lock poisoned by a panicking thread"),
        })?;
        let range = log.append(&refs)?;
        (range, log.sync_handle())
    };
    if !refs.is_empty() {
        let started = Instant::now();
        let synced = handle.sync();
        if let Some(h) = &shared.fsync_seconds
            && handle.file.is_some()
        {
            h.observe(started.elapsed().as_secs_f64());
        }
        synced?;
        let mut stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.syncs += 1;
        stats.entries += refs.len() as u64;
        stats.bytes += refs.iter().map(|e| e.len() as u64).sum::<u64>();
        shared.durable_next.fetch_max(range.end, Ordering::AcqRel);
    }
    let mut at = range.start;
    Ok(batch
        .iter()
        .map(|r| {
            let start = at;
            at += r.entries.len() as u64;
            start..at
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogConfig;

    fn shared_log(dir: &std::path::Path) -> SharedLog {
        let (log, _) = SegmentedLog::open(LogConfig::new(dir)).expect("open");
        Arc::new(std::sync::RwLock::new(log))
    }

    /// Many appends queued before the writer first runs are committed with far fewer fsyncs
    /// than appends. Deterministic: on a current-thread runtime the writer cannot run while
    /// this test submits without yielding.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_appends_share_fsyncs_and_get_contiguous_ranges_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (gc, task) = GroupCommit::spawn(shared_log(dir.path()), 4 << 20);
        let tickets: Vec<_> = (0..200u32)
            .map(|i| gc.submit(vec![Bytes::from(format!("entry-{i}"))]))
            .collect();
        for (expected, t) in (0u64..).zip(tickets) {
            assert_eq!(t.await.unwrap(), expected..expected + 1);
        }
        let stats = gc.stats();
        assert_eq!(stats.entries, 200);
        assert!(stats.syncs < 200, "syncs {}", stats.syncs);
        assert_eq!(stats.syncs, 1, "all 200 were queued before the writer ran");
        assert_eq!(gc.durable_next_index(), 200);
        {
            let log = gc.read_log();
            assert_eq!(log.read(137).unwrap(), Bytes::from("entry-137"));
        }
        drop(gc);
        task.await
            .expect("writer ends when the handles are dropped");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_are_cut_at_max_batch_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (gc, _task) = GroupCommit::spawn(shared_log(dir.path()), 1000);
        let tickets: Vec<_> = (0..10)
            .map(|_| gc.submit(vec![Bytes::from(vec![7u8; 500])]))
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        assert_eq!(gc.stats().syncs, 5);
        assert_eq!(gc.stats().bytes, 5000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appenders_get_disjoint_contiguous_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (gc, task) = GroupCommit::spawn(shared_log(dir.path()), 4 << 20);
        let mut joins = Vec::new();
        for i in 0..200u64 {
            let gc = gc.clone();
            joins.push(tokio::spawn(async move {
                let n = 1 + (i % 3) as usize;
                let entries = (0..n).map(|k| Bytes::from(format!("{i}/{k}"))).collect();
                (i, n, gc.append(entries).await.unwrap())
            }));
        }
        let mut ranges = Vec::new();
        for j in joins {
            ranges.push(j.await.unwrap());
        }
        ranges.sort_by_key(|(_, _, r)| r.start);
        let mut next = 0;
        for (i, n, r) in &ranges {
            assert_eq!(r.start, next, "ranges are contiguous and disjoint");
            assert_eq!(r.end - r.start, *n as u64);
            let log = gc.read_log();
            for k in 0..*n as u64 {
                assert_eq!(
                    log.read(r.start + k).unwrap(),
                    Bytes::from(format!("{i}/{k}"))
                );
            }
            next = r.end;
        }
        let stats = gc.stats();
        assert_eq!(stats.entries, next);
        assert!(stats.syncs <= 200);
        drop(gc);
        task.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_io_error_poisons_this_and_every_later_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = shared_log(dir.path());
        let (gc, _task) = GroupCommit::spawn(Arc::clone(&log), 4 << 20);
        assert_eq!(
            gc.append(vec![Bytes::from_static(b"ok")]).await.unwrap(),
            0..1
        );
        log.write().unwrap().fail_writes = true;
        let err = gc
            .append(vec![Bytes::from_static(b"lost")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected write failure"), "{err}");
        assert!(gc.poisoned().is_some());
        // Even with the disk healthy again, the writer stays poisoned.
        log.write().unwrap().fail_writes = false;
        let err = gc
            .append(vec![Bytes::from_static(b"later")])
            .await
            .unwrap_err();
        assert!(matches!(err, LogError::Io { .. }), "{err}");
        assert_eq!(gc.stats().entries, 1);
        assert_eq!(log.read().unwrap().next_index(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn oversized_entries_are_rejected_without_poisoning() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.max_entry_bytes = 10;
        let (log, _) = SegmentedLog::open(config).unwrap();
        let (gc, _task) = GroupCommit::spawn(Arc::new(std::sync::RwLock::new(log)), 1 << 20);
        let err = gc
            .append(vec![Bytes::from(vec![0u8; 11])])
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            LogError::EntryTooLarge {
                size: 11,
                limit: 10
            }
        ));
        assert_eq!(
            gc.append(vec![Bytes::from(vec![0u8; 10])]).await.unwrap(),
            0..1
        );
    }

    /// Manual measurement, not a check: `cargo test -p txpipe-broker --release --lib
    /// group_commit_throughput_report -- --ignored --nocapture`. Prints entries/s and entries
    /// per fsync for 64 producers each keeping one 100 × 200-byte batch in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "prints figures; run by hand"]
    async fn group_commit_throughput_report() {
        let dir = tempfile::tempdir().unwrap();
        let (gc, _task) = GroupCommit::spawn(shared_log(dir.path()), 4 << 20);
        let started = std::time::Instant::now();
        let mut joins = Vec::new();
        for _ in 0..64 {
            let gc = gc.clone();
            joins.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let batch = (0..100).map(|_| Bytes::from(vec![1u8; 200])).collect();
                    gc.append(batch).await.unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let s = gc.stats();
        println!(
            "entries {} in {secs:.3} s = {:.0} entries/s; fsyncs {} ({:.3} ms each on average, {:.0} entries per fsync)",
            s.entries,
            s.entries as f64 / secs,
            s.syncs,
            secs * 1e3 / s.syncs as f64,
            s.entries as f64 / s.syncs as f64
        );
        let started = std::time::Instant::now();
        let log = gc.read_log();
        let mut at = log.first_index();
        while at < log.next_index() {
            at += log.read_range(at, 1000, 1 << 20).unwrap().len() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "read_range of 1000 entries: {:.0} entries/s",
            s.entries as f64 / secs
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_that_crosses_a_segment_roll_is_readable_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.segment_bytes = 1000;
        let (log, _) = SegmentedLog::open(config.clone()).unwrap();
        let (gc, task) = GroupCommit::spawn(Arc::new(std::sync::RwLock::new(log)), 1 << 20);
        let tickets: Vec<_> = (0..50u32)
            .map(|i| gc.submit(vec![Bytes::from(format!("{i:0>100}"))]))
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        assert_eq!(gc.stats().syncs, 1);
        drop(gc);
        task.await.unwrap();
        let (log, report) = SegmentedLog::open(config).unwrap();
        assert!(report.segments >= 5, "{report:?}");
        for i in 0..50u32 {
            assert_eq!(
                log.read(u64::from(i)).unwrap(),
                Bytes::from(format!("{i:0>100}"))
            );
        }
    }

    fn fsync_histogram() -> prometheus::Histogram {
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
            "test_fsync_seconds",
            "test",
        ))
        .unwrap()
    }

    /// Every fdatasync of the writer is observed once.
    #[tokio::test(flavor = "current_thread")]
    async fn every_fsync_is_observed_in_the_histogram() {
        let dir = tempfile::tempdir().unwrap();
        let h = fsync_histogram();
        let (gc, task) = GroupCommit::spawn_observed(shared_log(dir.path()), 1000, h.clone());
        let tickets: Vec<_> = (0..10)
            .map(|_| gc.submit(vec![Bytes::from(vec![7u8; 500])]))
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        gc.append(vec![Bytes::from_static(b"one more")])
            .await
            .unwrap();
        assert_eq!(gc.stats().syncs, 6);
        assert_eq!(h.get_sample_count(), 6);
        assert!(h.get_sample_sum() > 0.0, "{}", h.get_sample_sum());
        drop(gc);
        task.await.unwrap();
    }

    /// With `fsync = false` no sync is made, so nothing is observed (the batch still counts in
    /// the writer's stats).
    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_observed_when_fsync_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.fsync = false;
        let (log, _) = SegmentedLog::open(config).unwrap();
        let h = fsync_histogram();
        let (gc, _task) =
            GroupCommit::spawn_observed(Arc::new(std::sync::RwLock::new(log)), 1 << 20, h.clone());
        for i in 0..3u32 {
            gc.append(vec![Bytes::from(format!("e{i}"))]).await.unwrap();
        }
        assert_eq!(gc.stats().syncs, 3);
        assert_eq!(h.get_sample_count(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn empty_appends_resolve_to_an_empty_range_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (gc, _task) = GroupCommit::spawn(shared_log(dir.path()), 1 << 20);
        assert_eq!(gc.append(vec![]).await.unwrap(), 0..0);
        assert_eq!(gc.stats().syncs, 0);
    }
}
