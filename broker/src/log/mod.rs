//! Segmented append-only log: the broker's storage engine (and, in the "Replicated broker"
//! issue, openraft's log storage).
//!
//! Entries are opaque byte strings with dense `u64` indexes. One writer appends (see
//! [`group_commit`]); readers use positioned reads (`pread`) and a sparse in-memory index, so
//! reads take `&self`.
//!
//! # On-disk format
//!
//! A log is one directory. Each *segment* is a file named by the index of its first entry,
//! zero-padded to 20 decimal digits: `00000000000000000000.log`, `00000000000000131072.log`, ...
//! A segment is a plain concatenation of *frames*, with no file header and no footer:
//!
//! ```text
//! frame = len: u32 LE | crc: u32 LE | payload: len bytes
//! crc   = CRC-32C (Castagnoli) over the 4 bytes of `len` (LE), then the payload
//! ```
//!
//! The entry index is not stored: the n-th frame (from 0) of the segment named `B` is entry
//! `B + n`. Segments are contiguous: each segment's name equals the previous segment's first
//! index plus its frame count. The writer rolls to a new segment before a frame that would start
//! at or beyond `segment_bytes` (so a segment exceeds `segment_bytes` by at most one frame).
//! Empty entries are allowed (an 8-byte frame). The CRC covers the length so that a corrupted
//! length is detected and so that zero-filled space (`len = 0, crc = 0`) is never a valid frame.
//! (This differs from a CRC over the payload alone; see [`frame`].)
//!
//! A file named `<20 digits>.log.reset` is a reset in progress ([`SegmentedLog::reset_to`]);
//! other files in the directory are ignored.
//!
//! In memory each segment keeps a sparse index: `(index, byte position)` of its first frame and
//! then of the first frame starting at least `index_interval_bytes` after the previous indexed
//! frame. It is rebuilt by scanning at open; a read seeks to the nearest indexed frame at or
//! below the wanted index and walks forward over frame headers.
//!
//! # Recovery rules ([`SegmentedLog::open`])
//!
//! Every frame of every segment is read and its CRC checked at open.
//!
//! * **Sealed segments** (every segment but the last) must be a whole number of valid frames.
//!   Any bad frame there — short header or payload at end of file, or CRC mismatch — is
//!   [`LogError::Corrupt`]. (A segment is fdatasynced before the next one is created, so a crash
//!   cannot leave a torn write in it.)
//! * **Continuity**: each segment's name must equal the previous segment's next index, else
//!   [`LogError::Corrupt`] (a missing or overlapping range of entries).
//! * **The last segment**: let `p` be the position of its first bad frame (a header shorter than
//!   8 bytes at end of file, a payload running past end of file, or a CRC mismatch — an all-zero
//!   region counts, as it fails the CRC). The region `[p, end of file)` is the *tail*. It is a
//!   *torn tail* when no valid frame starts at any byte offset in `(p, end of file)` (a frame is
//!   valid when its length is at most `max_entry_bytes`, it ends within the file and its CRC
//!   matches). A torn tail is cut off (`set_len(p)` then fsync) and its size is reported in
//!   [`RecoveryReport::truncated_bytes`]: it is the unfinished last write of a crash, which was
//!   never acknowledged. If a valid frame does start after `p`, the bad frame is corruption
//!   *before* the tail: [`LogError::Corrupt`] naming the segment, `p`, the entry index and the
//!   position of the valid frame. The node then refuses to start; it must be repaired or
//!   re-synced from a peer, never silently skip data. (The scan looks at every byte offset, not
//!   only at `p + 8 + len`, because the bad frame's own length may be the corrupted field.
//!   This errs on the side of refusing: a crash whose page writeback reached a later page of the
//!   last write but not an earlier one is reported as corruption, not repaired.)
//! * A `*.log.reset` file completes the interrupted reset: every `*.log` segment is deleted and
//!   the reset file is renamed to its `.log` name.
//! * An empty directory becomes an empty log at index 0 (one empty segment file).
//!
//! # Durability
//!
//! * [`SegmentedLog::append`] only writes (one `pwrite` per segment touched); entries are
//!   visible to readers at once but durable only after [`SegmentedLog::sync`] (fdatasync of the
//!   active segment) or, through [`group_commit::GroupCommit::append`], once its future
//!   resolves.
//! * Rolling fdatasyncs the full segment *before* creating the next file, then fsyncs the
//!   directory, so sealed segments are always complete on disk.
//! * Creating and deleting segment files ([`SegmentedLog::purge_before`],
//!   [`SegmentedLog::truncate_from`], [`SegmentedLog::reset_to`]) fsyncs the directory before
//!   returning; truncation fsyncs the shortened file.
//! * `open` fdatasyncs the last segment, so entries a crashed process left in the page cache are
//!   durable before the log reports them.
//! * With `LogConfig::fsync = false` no fsync of any kind is made (page-cache benchmarks only).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

pub mod frame;
pub mod group_commit;

use frame::{HEADER_BYTES, encode_frame, frame_crc, read_header};

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

impl LogError {
    fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            path: path.into(),
            source,
        }
    }

    /// A copy of this error (`io::Error` is not `Clone`: the copy keeps its kind and message),
    /// used to fail every waiter of a poisoned writer.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            LogError::Io { path, source } => LogError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            LogError::Corrupt {
                segment,
                position,
                index,
                reason,
            } => LogError::Corrupt {
                segment: segment.clone(),
                position: *position,
                index: *index,
                reason: reason.clone(),
            },
            LogError::EntryTooLarge { size, limit } => LogError::EntryTooLarge {
                size: *size,
                limit: *limit,
            },
            LogError::OutOfRange { index, first, next } => LogError::OutOfRange {
                index: *index,
                first: *first,
                next: *next,
            },
        }
    }
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

/// A cloned handle on the active segment, to fdatasync it without holding the log's lock
/// (see [`SegmentedLog::sync_handle`]).
#[derive(Debug, Clone)]
pub struct SyncHandle {
    file: Option<Arc<File>>,
    path: PathBuf,
}

impl SyncHandle {
    /// fdatasyncs the segment the handle was taken on (nothing when the log's `fsync` is
    /// off). Errors: [`LogError::Io`].
    pub fn sync(&self) -> Result<()> {
        match &self.file {
            Some(f) => f.sync_data().map_err(|e| LogError::io(&self.path, e)),
            None => Ok(()),
        }
    }
}

/// Bytes read per `pread` while scanning a segment at open.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Smallest `pread` of the read path.
const READ_CHUNK_BYTES: usize = 16 << 10;
const SEGMENT_SUFFIX: &str = ".log";
const RESET_SUFFIX: &str = ".log.reset";

struct Segment {
    base: u64,
    next: u64,
    /// Bytes of valid frames; appends write here.
    size: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Sparse index `(entry index, byte position)`, ascending; always starts with `(base, 0)`.
    index: Vec<(u64, u64)>,
}

impl Segment {
    /// Nearest indexed frame at or below `idx`.
    fn locate(&self, idx: u64) -> (u64, u64) {
        let i = self.index.partition_point(|&(i, _)| i <= idx);
        self.index[i.saturating_sub(1)]
    }

    fn info(&self) -> SegmentInfo {
        SegmentInfo {
            base_index: self.base,
            next_index: self.next,
            bytes: self.size,
        }
    }

    fn reader(&self, start: u64, chunk: usize) -> FrameReader<'_> {
        FrameReader::new(&self.file, start, self.size, chunk)
    }

    fn corrupt(&self, position: u64, index: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            segment: self.path.clone(),
            position,
            index,
            reason: reason.into(),
        }
    }

    /// Byte position of entry `idx` (`base <= idx <= next`), walking frame headers from the
    /// sparse index.
    fn position_of(&self, idx: u64) -> Result<u64> {
        if idx == self.next {
            return Ok(self.size);
        }
        let (mut at, pos) = self.locate(idx);
        let mut r = self.reader(pos, READ_CHUNK_BYTES);
        loop {
            match r
                .next_frame(false)
                .map_err(|e| LogError::io(&self.path, e))?
            {
                Step::Frame { pos, .. } if at == idx => return Ok(pos),
                Step::Frame { .. } => at += 1,
                Step::End => return Err(self.corrupt(r.pos, at, "segment ended early")),
                Step::Bad { pos, reason } => return Err(self.corrupt(pos, at, reason)),
            }
        }
    }
}

/// One step of a [`FrameReader`].
enum Step {
    /// Clean end of the readable range.
    End,
    /// A frame at `pos` with a `len`-byte payload.
    Frame { pos: u64, len: u32 },
    /// A bad frame at `pos` (the reader does not move past it).
    Bad { pos: u64, reason: String },
}

/// Walks frames of one file with positioned reads of at least `chunk` bytes.
struct FrameReader<'a> {
    file: &'a File,
    end: u64,
    chunk: usize,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    /// File offset of the next frame.
    pos: u64,
}

impl<'a> FrameReader<'a> {
    fn new(file: &'a File, start: u64, end: u64, chunk: usize) -> Self {
        Self {
            file,
            end,
            chunk: chunk.max(HEADER_BYTES),
            buf: Vec::new(),
            buf_off: start,
            pos: start,
        }
    }

    /// Makes `[pos, pos + n)` resident, clipped to `end`; returns how many bytes are.
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        let want_end = (self.pos + n as u64).min(self.end);
        let have_end = self.buf_off + self.buf.len() as u64;
        if want_end <= have_end {
            return Ok((want_end - self.pos) as usize);
        }
        if self.pos >= have_end {
            self.buf.clear();
        } else {
            self.buf.drain(..(self.pos - self.buf_off) as usize);
        }
        self.buf_off = self.pos;
        let have_end = self.buf_off + self.buf.len() as u64;
        let read_end = (self.pos + n.max(self.chunk) as u64).min(self.end);
        let old = self.buf.len();
        self.buf.resize(old + (read_end - have_end) as usize, 0);
        self.file.read_exact_at(&mut self.buf[old..], have_end)?;
        Ok((want_end - self.pos) as usize)
    }

    /// Next frame; with `check` its payload is loaded and its CRC verified, without only its
    /// header is read (and its length checked against the end).
    fn next_frame(&mut self, check: bool) -> io::Result<Step> {
        let pos = self.pos;
        if pos >= self.end {
            return Ok(Step::End);
        }
        let have = self.fill(HEADER_BYTES)?;
        if have < HEADER_BYTES {
            return Ok(Step::Bad {
                pos,
                reason: format!(
                    "torn frame header: {have} of {HEADER_BYTES} bytes before end of file"
                ),
            });
        }
        let at = (pos - self.buf_off) as usize;
        let (len, stored) = read_header(&self.buf[at..]);
        let frame_len = HEADER_BYTES as u64 + u64::from(len);
        if pos + frame_len > self.end {
            return Ok(Step::Bad {
                pos,
                reason: format!(
                    "torn frame: length field says {len} payload bytes but only {} remain before end of file",
                    self.end - pos - HEADER_BYTES as u64
                ),
            });
        }
        if check {
            self.fill(frame_len as usize)?;
            let at = (pos - self.buf_off) as usize;
            let payload = &self.buf[at + HEADER_BYTES..at + frame_len as usize];
            let computed = frame_crc(payload);
            if computed != stored {
                return Ok(Step::Bad {
                    pos,
                    reason: format!(
                        "CRC mismatch: stored {stored:#010x}, computed {computed:#010x} over a {len}-byte payload"
                    ),
                });
            }
        }
        self.pos = pos + frame_len;
        Ok(Step::Frame { pos, len })
    }

    /// Payload of the frame just returned by `next_frame(true)`.
    fn payload(&self, pos: u64, len: u32) -> &[u8] {
        let at = (pos - self.buf_off) as usize + HEADER_BYTES;
        &self.buf[at..at + len as usize]
    }
}

/// Offset in `region` of the first valid frame whose payload is at most `max_len` bytes.
fn find_valid_frame(region: &[u8], max_len: u32) -> Option<usize> {
    let last = region.len().checked_sub(HEADER_BYTES)?;
    (0..=last).find(|&o| {
        let (len, stored) = read_header(&region[o..]);
        len <= max_len
            && o + HEADER_BYTES + len as usize <= region.len()
            && frame_crc(&region[o + HEADER_BYTES..o + HEADER_BYTES + len as usize]) == stored
    })
}

fn segment_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// Parses `<20 digits><suffix>`.
fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// A segmented append-only log. Not thread-safe by itself: one owner writes (see
/// [`group_commit`]).
pub struct SegmentedLog {
    config: LogConfig,
    dir: File,
    /// Oldest first; never empty; the last one is active.
    segments: Vec<Segment>,
    /// Test hook: fail every write with an I/O error.
    #[cfg(test)]
    fail_writes: bool,
}

impl std::fmt::Debug for SegmentedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentedLog")
            .field("dir", &self.config.dir)
            .field("first_index", &self.first_index())
            .field("next_index", &self.next_index())
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl SegmentedLog {
    /// Opens (or creates) the log in `config.dir`, recovering from a crash: a torn or
    /// CRC-failing frame at the very tail of the last segment is truncated away (reported in
    /// [`RecoveryReport::truncated_bytes`]); any bad frame before that is
    /// [`LogError::Corrupt`]. An empty log starts at index 0 (see [`Self::reset_to`]).
    /// The exact rules are in the [module documentation](self).
    ///
    /// Errors: [`LogError::Io`] (directory or file access), [`LogError::Corrupt`].
    pub fn open(config: LogConfig) -> Result<(Self, RecoveryReport)> {
        let dir_path = config.dir.clone();
        if !dir_path.exists() {
            std::fs::create_dir_all(&dir_path).map_err(|e| LogError::io(&dir_path, e))?;
            if config.fsync
                && let Some(parent) = dir_path.parent().filter(|p| !p.as_os_str().is_empty())
            {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| LogError::io(parent, e))?;
            }
        }
        let dir = File::open(&dir_path).map_err(|e| LogError::io(&dir_path, e))?;
        let mut log = SegmentedLog {
            config,
            dir,
            segments: Vec::new(),
            #[cfg(test)]
            fail_writes: false,
        };

        let (mut bases, resets) = log.list_dir()?;
        if let Some(&reset) = resets.iter().max() {
            log.finish_reset(reset, &bases, &resets)?;
            bases = vec![reset];
        }
        bases.sort_unstable();

        let mut report = RecoveryReport::default();
        if bases.is_empty() {
            log.create_segment(0)?;
        }
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let last = i + 1 == count;
            let truncated = log.load_segment(base, last)?;
            report.truncated_bytes += truncated;
        }
        if log.config.fsync {
            let active = log.active();
            active
                .file
                .sync_data()
                .map_err(|e| LogError::io(&active.path, e))?;
        }
        report.segments = log.segments.len();
        report.entries = log.next_index() - log.first_index();
        tracing::info!(
            dir = %log.config.dir.display(),
            segments = report.segments,
            first_index = log.first_index(),
            next_index = log.next_index(),
            truncated_bytes = report.truncated_bytes,
            "log opened"
        );
        Ok((log, report))
    }

    /// Segment bases and reset markers found in the directory.
    fn list_dir(&self) -> Result<(Vec<u64>, Vec<u64>)> {
        let dir = &self.config.dir;
        let mut bases = Vec::new();
        let mut resets = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let entry = entry.map_err(|e| LogError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(base) = parse_name(name, SEGMENT_SUFFIX) {
                bases.push(base);
            } else if let Some(base) = parse_name(name, RESET_SUFFIX) {
                resets.push(base);
            } else {
                tracing::debug!(dir = %dir.display(), file = name, "ignoring non-segment file");
            }
        }
        Ok((bases, resets))
    }

    /// Completes an interrupted [`Self::reset_to`]: deletes every segment and other reset
    /// markers, then renames the marker of `reset` to its segment name.
    fn finish_reset(&self, reset: u64, bases: &[u64], resets: &[u64]) -> Result<()> {
        tracing::warn!(
            dir = %self.config.dir.display(),
            index = reset,
            segments = bases.len(),
            "completing an interrupted log reset: deleting old segments"
        );
        let mut sorted = bases.to_vec();
        sorted.sort_unstable();
        for base in sorted.into_iter().rev() {
            self.remove(&self.config.dir.join(segment_name(base)))?;
        }
        for &r in resets.iter().filter(|&&r| r != reset) {
            self.remove(&self.config.dir.join(format!("{r:020}{RESET_SUFFIX}")))?;
        }
        self.sync_dir()?;
        let from = self.config.dir.join(format!("{reset:020}{RESET_SUFFIX}"));
        let to = self.config.dir.join(segment_name(reset));
        std::fs::rename(&from, &to).map_err(|e| LogError::io(&from, e))?;
        self.sync_dir()
    }

    /// Scans one segment file at open and appends it to `self.segments`. Returns bytes cut
    /// from a torn tail (only when `last`).
    fn load_segment(&mut self, base: u64, last: bool) -> Result<u64> {
        let path = self.config.dir.join(segment_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
        if let Some(prev) = self.segments.last()
            && prev.next != base
        {
            let what = if base > prev.next {
                format!("entries {}..{} are missing", prev.next, base)
            } else {
                format!("it overlaps entries {}..{}", base, prev.next)
            };
            return Err(LogError::Corrupt {
                segment: path,
                position: 0,
                index: base,
                reason: format!(
                    "segment starts at index {base} but the previous segment {} ends at index {}: {what}",
                    prev.path.display(),
                    prev.next
                ),
            });
        }
        let interval = self.config.index_interval_bytes;
        let mut index = vec![(base, 0)];
        let mut next = base;
        let mut bad = None;
        {
            let mut r = FrameReader::new(&file, 0, file_len, SCAN_CHUNK_BYTES);
            loop {
                match r.next_frame(true).map_err(|e| LogError::io(&path, e))? {
                    Step::End => break,
                    Step::Frame { pos, .. } => {
                        if pos - index.last().map_or(0, |&(_, p)| p) >= interval && pos > 0 {
                            index.push((next, pos));
                        }
                        next += 1;
                    }
                    Step::Bad { pos, reason } => {
                        bad = Some((pos, reason));
                        break;
                    }
                }
            }
        }
        let mut size = file_len;
        let mut truncated = 0;
        if let Some((pos, reason)) = bad {
            if !last {
                return Err(LogError::Corrupt {
                    segment: path,
                    position: pos,
                    index: next,
                    reason: format!("{reason} in a sealed (not last) segment"),
                });
            }
            let mut region = vec![0u8; (file_len - pos) as usize];
            file.read_exact_at(&mut region, pos)
                .map_err(|e| LogError::io(&path, e))?;
            if let Some(o) = find_valid_frame(&region[1..], self.config.max_entry_bytes) {
                return Err(LogError::Corrupt {
                    segment: path,
                    position: pos,
                    index: next,
                    reason: format!(
                        "{reason}; a valid frame follows at byte {}, so this is not a torn tail",
                        pos + 1 + o as u64
                    ),
                });
            }
            tracing::warn!(
                segment = %path.display(),
                position = pos,
                index = next,
                truncated_bytes = file_len - pos,
                %reason,
                "truncating torn tail of the log"
            );
            file.set_len(pos).map_err(|e| LogError::io(&path, e))?;
            if self.config.fsync {
                file.sync_all().map_err(|e| LogError::io(&path, e))?;
            }
            size = pos;
            truncated = file_len - pos;
        }
        self.segments.push(Segment {
            base,
            next,
            size,
            path,
            file: Arc::new(file),
            index,
        });
        Ok(truncated)
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    fn sync_dir(&self) -> Result<()> {
        if self.config.fsync {
            self.dir
                .sync_all()
                .map_err(|e| LogError::io(&self.config.dir, e))?;
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<()> {
        std::fs::remove_file(path).map_err(|e| LogError::io(path, e))
    }

    /// Creates an empty segment file at `base` (at `path`, default its segment name) and
    /// pushes it as the active segment; fsyncs the directory.
    fn create_segment_at(&mut self, base: u64, path: &Path) -> Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| LogError::io(path, e))?;
        self.sync_dir()?;
        self.segments.push(Segment {
            base,
            next: base,
            size: 0,
            path: self.config.dir.join(segment_name(base)),
            file: Arc::new(file),
            index: vec![(base, 0)],
        });
        Ok(())
    }

    fn create_segment(&mut self, base: u64) -> Result<()> {
        let path = self.config.dir.join(segment_name(base));
        self.create_segment_at(base, &path)
    }

    /// Seals the active segment (fdatasync) and starts a new one at the next index.
    fn roll(&mut self) -> Result<()> {
        let active = self.active();
        if self.config.fsync {
            active
                .file
                .sync_data()
                .map_err(|e| LogError::io(&active.path, e))?;
        }
        let base = active.next;
        tracing::debug!(dir = %self.config.dir.display(), base, "rolling to a new segment");
        crate::crash_point!("log::roll_before_create");
        self.create_segment(base)?;
        crate::crash_point!("log::roll_after_create");
        Ok(())
    }

    /// Writes `buf` at the end of the active segment and publishes its frames.
    fn flush(&mut self, buf: &mut Vec<u8>, next: u64, index: &mut Vec<(u64, u64)>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if self.fail_writes {
            let path = self.active().path.clone();
            return Err(LogError::io(
                path,
                io::Error::other("injected write failure"),
            ));
        }
        let active = self
            .segments
            .last_mut()
            .expect("a log always has a segment");
        active
            .file
            .write_all_at(buf, active.size)
            .map_err(|e| LogError::io(&active.path, e))?;
        active.size += buf.len() as u64;
        active.next = next;
        active.index.append(index);
        buf.clear();
        Ok(())
    }

    /// Appends entries at the end, without syncing. Returns their index range.
    ///
    /// One `pwrite` per segment touched; rolls to a new segment (after fdatasyncing the full
    /// one) before a frame that would start at or beyond `segment_bytes`. Errors:
    /// [`LogError::EntryTooLarge`] (nothing is written), [`LogError::Io`] (a prefix of the
    /// entries that filled earlier segments may have been appended; the caller must treat the
    /// log as failed).
    pub fn append(&mut self, entries: &[&[u8]]) -> Result<Range<u64>> {
        let limit = self.config.max_entry_bytes;
        if let Some(e) = entries.iter().find(|e| e.len() > limit as usize) {
            return Err(LogError::EntryTooLarge {
                size: e.len(),
                limit,
            });
        }
        let start = self.next_index();
        let total: usize = entries.iter().map(|e| frame::encoded_len(e.len())).sum();
        let mut buf = Vec::with_capacity(total.min(self.config.segment_bytes as usize + 64));
        let mut new_index = Vec::new();
        let mut idx = start;
        for e in entries {
            let (base, size, last_indexed) = {
                let a = self.active();
                (a.base, a.size, a.index.last().map_or(0, |&(_, p)| p))
            };
            let pos = size + buf.len() as u64;
            if pos >= self.config.segment_bytes && idx > base {
                self.flush(&mut buf, idx, &mut new_index)?;
                self.roll()?;
            } else if pos > 0 {
                let last_indexed = new_index.last().map_or(last_indexed, |&(_, p)| p);
                if pos - last_indexed >= self.config.index_interval_bytes {
                    new_index.push((idx, pos));
                }
            }
            encode_frame(e, &mut buf);
            idx += 1;
        }
        self.flush(&mut buf, idx, &mut new_index)?;
        Ok(start..idx)
    }

    /// Makes every appended entry durable (fdatasync of the active segment, when
    /// `config.fsync`; earlier segments were synced when they were sealed).
    /// Errors: [`LogError::Io`].
    pub fn sync(&mut self) -> Result<()> {
        self.sync_handle().sync()
    }

    /// A handle that fdatasyncs the current active segment later, without `&mut self`: the
    /// group-commit writer takes it under the write lock after appending, releases the lock,
    /// then syncs. Entries appended before the handle was taken are durable once
    /// [`SyncHandle::sync`] returns (a roll during the append already synced the sealed
    /// segment).
    pub fn sync_handle(&self) -> SyncHandle {
        let active = self.active();
        SyncHandle {
            file: self.config.fsync.then(|| Arc::clone(&active.file)),
            path: active.path.clone(),
        }
    }

    /// The settings the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn out_of_range(&self, index: u64) -> LogError {
        LogError::OutOfRange {
            index,
            first: self.first_index(),
            next: self.next_index(),
        }
    }

    /// Segment holding `index` (`first_index <= index`).
    fn segment_for(&self, index: u64) -> &Segment {
        let i = self.segments.partition_point(|s| s.base <= index);
        &self.segments[i.saturating_sub(1)]
    }

    /// Reads one entry. Errors: [`LogError::OutOfRange`] outside
    /// `[first_index, next_index)`, [`LogError::Corrupt`] if the frame fails its CRC now,
    /// [`LogError::Io`].
    pub fn read(&self, index: u64) -> Result<Bytes> {
        let mut out = self.read_range(index, 1, usize::MAX)?;
        match out.pop() {
            Some((_, b)) => Ok(b),
            None => Err(self.out_of_range(index)),
        }
    }

    /// Reads entries from `start`, at most `max_entries` and stopping once `max_bytes` of
    /// payload are collected (at least one entry is returned when `start` is in range).
    ///
    /// The payload total never exceeds `max_bytes` except by a single first entry. `start ==
    /// next_index` returns an empty vector (nothing new yet). Errors: [`LogError::OutOfRange`]
    /// when `start < first_index` or `start > next_index`, [`LogError::Corrupt`] if a frame
    /// fails its CRC now, [`LogError::Io`].
    pub fn read_range(
        &self,
        start: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>> {
        let (first, next) = (self.first_index(), self.next_index());
        if start < first || start > next {
            return Err(self.out_of_range(start));
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut i = start;
        // One pread should usually cover the walk from the indexed frame plus the answer.
        let chunk = max_bytes
            .min(max_entries.saturating_mul(1024))
            .saturating_add(self.config.index_interval_bytes as usize)
            .clamp(READ_CHUNK_BYTES, 1 << 20);
        while i < next && out.len() < max_entries {
            let seg = self.segment_for(i);
            let (mut at, pos) = seg.locate(i);
            let mut r = seg.reader(pos, chunk);
            while at < seg.next && out.len() < max_entries {
                let step = r
                    .next_frame(at >= i)
                    .map_err(|e| LogError::io(&seg.path, e))?;
                match step {
                    Step::Frame { pos, len } if at >= i => {
                        if !out.is_empty() && bytes.saturating_add(len as usize) > max_bytes {
                            return Ok(out);
                        }
                        out.push((at, Bytes::copy_from_slice(r.payload(pos, len))));
                        bytes += len as usize;
                        i += 1;
                    }
                    Step::Frame { .. } => {}
                    Step::End => return Err(seg.corrupt(r.pos, at, "segment ended early")),
                    Step::Bad { pos, reason } => return Err(seg.corrupt(pos, at, reason)),
                }
                at += 1;
            }
        }
        Ok(out)
    }

    /// First stored index (equal to [`Self::next_index`] when empty).
    pub fn first_index(&self) -> u64 {
        self.segments[0].base
    }

    /// Index the next appended entry will get.
    pub fn next_index(&self) -> u64 {
        self.active().next
    }

    /// Removes every entry at `index` and after (Raft log conflict resolution). Synced.
    ///
    /// Later segments are deleted newest first (then the directory is fsynced), the segment
    /// holding `index` is cut with `set_len` and fsynced; it becomes the active segment.
    /// `index >= next_index` does nothing. Errors: [`LogError::OutOfRange`] when `index <
    /// first_index`, [`LogError::Io`].
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        if index >= self.next_index() {
            return Ok(());
        }
        if index < self.first_index() {
            return Err(self.out_of_range(index));
        }
        let k = self.segments.partition_point(|s| s.base <= index) - 1;
        let deleted = self.segments.len() - (k + 1);
        while self.segments.len() > k + 1 {
            self.remove(&self.active().path)?;
            self.segments.pop();
        }
        if deleted > 0 {
            self.sync_dir()?;
        }
        let fsync = self.config.fsync;
        let seg = &mut self.segments[k];
        let pos = seg.position_of(index)?;
        seg.file
            .set_len(pos)
            .map_err(|e| LogError::io(&seg.path, e))?;
        if fsync {
            seg.file
                .sync_all()
                .map_err(|e| LogError::io(&seg.path, e))?;
        }
        seg.size = pos;
        seg.next = index;
        seg.index.retain(|&(i, _)| i < index);
        if seg.index.is_empty() {
            seg.index.push((seg.base, 0));
        }
        tracing::info!(dir = %self.config.dir.display(), index, deleted_segments = deleted, "log truncated");
        Ok(())
    }

    /// Deletes whole segments whose entries are all below `index` (the active segment is
    /// never deleted). Fsyncs the directory. Returns the new first index.
    ///
    /// Oldest segments go first, so a crash leaves a contiguous log. Errors: [`LogError::Io`].
    pub fn purge_before(&mut self, index: u64) -> Result<u64> {
        let mut deleted = 0;
        while self.segments.len() > 1 && self.segments[0].next <= index {
            if deleted == 1 {
                crate::crash_point!("retention::mid_delete");
            }
            self.remove(&self.segments[0].path)?;
            self.segments.remove(0);
            deleted += 1;
        }
        if deleted > 0 {
            self.sync_dir()?;
            tracing::info!(
                dir = %self.config.dir.display(),
                deleted_segments = deleted,
                first_index = self.first_index(),
                "log segments purged"
            );
        }
        Ok(self.first_index())
    }

    /// On an empty log only: makes the next index `index` (after a snapshot install).
    ///
    /// Generalised: on a non-empty log every entry is discarded first, so after a snapshot
    /// at `index - 1` the caller can call this whatever the log holds. Crash-safe: an empty
    /// marker `<index>.log.reset` is created and the directory fsynced, the old segments are
    /// deleted, then the marker is renamed to `<index>.log`; [`Self::open`] completes a reset
    /// interrupted after the marker became durable. Errors: [`LogError::Io`].
    pub fn reset_to(&mut self, index: u64) -> Result<()> {
        if self.first_index() == index && self.next_index() == index {
            return Ok(());
        }
        if self.next_index() > self.first_index() {
            tracing::warn!(
                dir = %self.config.dir.display(),
                first_index = self.first_index(),
                next_index = self.next_index(),
                index,
                "reset discards every entry of a non-empty log"
            );
        }
        let marker = self.config.dir.join(format!("{index:020}{RESET_SUFFIX}"));
        let old: Vec<Segment> = std::mem::take(&mut self.segments);
        if let Err(e) = self.create_segment_at(index, &marker) {
            self.segments = old;
            return Err(e);
        }
        for seg in old.iter().rev() {
            self.remove(&seg.path)?;
        }
        self.sync_dir()?;
        let path = self.active().path.clone();
        std::fs::rename(&marker, &path).map_err(|e| LogError::io(&marker, e))?;
        self.sync_dir()?;
        tracing::info!(dir = %self.config.dir.display(), index, "log reset");
        Ok(())
    }

    /// Segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.iter().map(Segment::info).collect()
    }

    /// Total size of all segment files, bytes.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

#[cfg(test)]
mod tests;
