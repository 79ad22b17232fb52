//! Group commit: one writer task, many waiters, one fdatasync per batch.
//!
//! SKELETON: signatures are the contract; bodies are being written (helper "log").
//!
//! Callers hand entries to [`GroupCommit::append`]; the writer task drains everything queued,
//! appends it with one write per segment under the log's write lock, releases the lock, calls
//! one fdatasync, then resolves every waiter. Completions resolve in index order.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::{Result, SegmentedLog};

/// Shared handle to a log: readers take the read lock, the group-commit writer the write lock
/// (only while copying bytes into the file, never across an fsync).
pub type SharedLog = Arc<std::sync::RwLock<SegmentedLog>>;

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    _private: (),
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

impl GroupCommit {
    /// Starts the writer task on the current tokio runtime. The task runs the blocking write
    /// and fdatasync on tokio's blocking pool. It stops when every `GroupCommit` handle is
    /// dropped. `max_batch_bytes` bounds the bytes written per fsync (default 4 MiB).
    pub fn spawn(log: SharedLog, max_batch_bytes: usize) -> (Self, tokio::task::JoinHandle<()>) {
        let _ = (log, max_batch_bytes);
        todo!("log helper")
    }

    /// Appends `entries` and resolves with their index range once they are durable. An I/O
    /// error fails this call and every later one (the log is poisoned: the node must restart
    /// and recover).
    pub async fn append(&self, entries: Vec<Bytes>) -> Result<Range<u64>> {
        let _ = entries;
        todo!("log helper")
    }

    /// The shared log, for reads.
    pub fn log(&self) -> &SharedLog {
        todo!("log helper")
    }

    /// Writer figures so far.
    pub fn stats(&self) -> GroupCommitStats {
        todo!("log helper")
    }
}
