//! Segmented append-only log: the broker's storage engine (and, in the "Replicated broker"
//! issue, openraft's log storage).
//!
//! SKELETON: the signatures below are the contract other modules build against. The bodies are
//! being written (helper "log"); do not change signatures without telling the state/server
//! owner.
//!
//! Entries are opaque byte strings with dense `u64` indexes. Files live in one directory:
//! `<first index, 20 digits>.log` per segment. Frame format (little endian):
//! `[len: u32][crc32c(payload): u32][payload: len bytes]`; the entry's index is implied by its
//! position (segment base + ordinal). See `docs/architecture.md` for the full format.

use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;

/// Log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// Roll to a new segment once the active one reaches this size, bytes. Default 64 MiB.
    pub segment_bytes: u64,
    /// One sparse-index entry per this many bytes of frames. Default 4096.
    pub index_interval_bytes: u64,
    /// Largest accepted entry payload, bytes. Default 16 MiB.
    pub max_entry_bytes: u32,
    /// Call fdatasync in [`SegmentedLog::sync`] (false only for benchmarks of the page cache).
    pub fsync: bool,
}

impl LogConfig {
    /// Defaults for a log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            index_interval_bytes: 4096,
            max_entry_bytes: 16 << 20,
            fsync: true,
        }
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call failed.
    #[error("log I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A frame before the tail of the log failed its CRC or length check. The node must not
    /// serve this log; it has to be repaired or re-synced from a peer.
    #[error(
        "corruption in {segment} at byte {position} (entry {index}): {reason}; data after it cannot be trusted, refusing to start"
    )]
    Corrupt {
        /// Segment file.
        segment: PathBuf,
        /// Byte offset of the bad frame in the segment.
        position: u64,
        /// Index the bad frame would have had.
        index: u64,
        /// What check failed.
        reason: String,
    },
    /// An entry is larger than `max_entry_bytes`.
    #[error("entry of {size} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge {
        /// Payload size, bytes.
        size: usize,
        /// The limit, bytes.
        limit: u32,
    },
    /// A read asked for an index outside `[first_index, next_index)`.
    #[error("index {index} out of range {first}..{next}")]
    OutOfRange {
        /// Requested index.
        index: u64,
        /// First stored index.
        first: u64,
        /// Next index to be written.
        next: u64,
    },
}

/// Result alias for this module.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// What [`SegmentedLog::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// Entries in the log after recovery.
    pub entries: u64,
    /// Bytes cut from the tail of the last segment (a torn or CRC-failing final write).
    pub truncated_bytes: u64,
}

/// Size and range of one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First index in the segment (also its file name).
    pub base_index: u64,
    /// One past the last index in the segment.
    pub next_index: u64,
    /// File size, bytes.
    pub bytes: u64,
}

/// A segmented append-only log. Not thread-safe by itself: one owner writes (see
/// [`group_commit`]).
pub struct SegmentedLog {
    _private: (),
}

impl SegmentedLog {
    /// Opens (or creates) the log in `config.dir`, recovering from a crash: a torn or
    /// CRC-failing frame at the very tail of the last segment is truncated away (reported in
    /// [`RecoveryReport::truncated_bytes`]); any bad frame before that is
    /// [`LogError::Corrupt`]. An empty log starts at index 0 (see [`Self::reset_to`]).
    pub fn open(config: LogConfig) -> Result<(Self, RecoveryReport)> {
        let _ = config;
        todo!("log helper")
    }

    /// Appends entries at the end, without syncing. Returns their index range.
    pub fn append(&mut self, entries: &[&[u8]]) -> Result<Range<u64>> {
        let _ = entries;
        todo!("log helper")
    }

    /// Makes every appended entry durable (fdatasync of the active segment, when
    /// `config.fsync`).
    pub fn sync(&mut self) -> Result<()> {
        todo!("log helper")
    }

    /// Reads one entry.
    pub fn read(&self, index: u64) -> Result<Bytes> {
        let _ = index;
        todo!("log helper")
    }

    /// Reads entries from `start`, at most `max_entries` and stopping once `max_bytes` of
    /// payload are collected (at least one entry is returned when `start` is in range).
    pub fn read_range(&self, start: u64, max_entries: usize, max_bytes: usize) -> Result<Vec<(u64, Bytes)>> {
        let _ = (start, max_entries, max_bytes);
        todo!("log helper")
    }

    /// First stored index (equal to [`Self::next_index`] when empty).
    pub fn first_index(&self) -> u64 {
        todo!("log helper")
    }

    /// Index the next appended entry will get.
    pub fn next_index(&self) -> u64 {
        todo!("log helper")
    }

    /// Removes every entry at `index` and after (Raft log conflict resolution). Synced.
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        let _ = index;
        todo!("log helper")
    }

    /// Deletes whole segments whose entries are all below `index` (the active segment is
    /// never deleted). Fsyncs the directory. Returns the new first index.
    pub fn purge_before(&mut self, index: u64) -> Result<u64> {
        let _ = index;
        todo!("log helper")
    }

    /// On an empty log only: makes the next index `index` (after a snapshot install).
    pub fn reset_to(&mut self, index: u64) -> Result<()> {
        let _ = index;
        todo!("log helper")
    }

    /// Segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        todo!("log helper")
    }

    /// Total size of all segment files, bytes.
    pub fn size_bytes(&self) -> u64 {
        todo!("log helper")
    }
}

pub mod group_commit;
