//! Key deduplication of streams with `dedupe_by_key` (`decisions`, `transactions.dlq`): an
//! index on disk with a bounded cache, and a window by age and count that does not depend on
//! log retention.
//!
//! # Pieces
//!
//! - [`DedupeIndex`]: one [redb] file per stream, `<stream dir>/dedupe.redb`, with three tables:
//!   `keys` `(key hash u128, seq u64) → ()`, `order` `seq → (key hash, leader time ms,
//!   offset)` and `meta` (`base`, `next`). `seq` is the insertion number of a key (0, 1, 2, ...),
//!   assigned by the state machine. redb's page cache is bounded (`--dedupe-cache-bytes`); the
//!   rest of the index stays on disk (about 100-130 bytes a key on disk with B-tree overhead).
//! - [`KeyDedupe`]: the deterministic part, kept in [`crate::state::StreamState`] and in its
//!   snapshot: `next` (keys inserted so far), `cursor` (first live seq), the leader clock and
//!   the window, plus the memtable of rows not yet written to the index.
//! - The memtable: rows inserted since the last flush (at most [`FLUSH_ROWS`], about 3 MiB),
//!   with a hash map for lookups. [`KeyDedupe::commit`] (end of every apply batch) writes it
//!   to the index in one non-durable transaction once it is full, keys sorted by hash;
//!   [`KeyDedupe::flush`] writes it at once (before a snapshot captures the state). Lookups
//!   read the memtable, then the index through a read view of the last flush. Writing every
//!   apply batch's few hundred keys in its own transaction rewrote one B-tree leaf per key
//!   and cost about 80% of a follower's CPU in the 2M-transaction pipeline (perf, 2026-12-04);
//!   flushing 32,768 sorted keys at once shares leaves between neighbouring keys.
//! - The clock: the leader's proposer puts a [`crate::command::Command::Clock`] (its wall
//!   clock in ms and its configured window) first in every entry of a dedupe stream. The state
//!   keeps `clock = max(clock, stamped)`, so time never goes back and no replica's own clock is
//!   ever read while applying: every replica evicts the same keys at the same log index. The
//!   window travels in the same command, so replicas configured differently (a rolling
//!   change) still agree: the leader's window applies from its next entry on.
//!
//! # Semantics
//!
//! A key is *live* when its seq is in `[cursor, next)`. A record whose key hash has a live row
//! is dropped and answered with the original offset. After each insert `cursor` moves to at
//! least `next - max_keys` (count); at each `Clock` it moves past every row whose leader time
//! is older than `clock - max_age_ms` (age; keys inserted before the first `Clock`, or
//! migrated from an old snapshot, count from the first `Clock`). Eviction is by insertion
//! order, so it is one counter in the snapshot. Retention (`Trim`) does not touch the index.
//!
//! # Invariants (crash consistency with the Raft state machine)
//!
//! The state machine is rebuilt on restart from `snapshot.bin` plus replay of the committed
//! log after it; the index file is not rolled back, so it may be *ahead* of the state.
//!
//! 1. **Lookups read only the live range.** A lookup reads the memtable (rows `[flushed,
//!    next)`) and the index's rows `[cursor, flushed)`, with the state's own counters, so
//!    rows of the index ahead of the state (seq ≥ `flushed`) and rows evicted but not yet
//!    deleted (seq < `cursor`) are invisible. Applied entries are committed entries, so a row
//!    ahead of the state is exactly the row replay will insert again (same key, seq, time,
//!    offset): replay of an entry is idempotent.
//! 2. **Never behind a snapshot.** Flushes commit with `Durability::None`; the memtable is
//!    flushed when a snapshot captures the state, and [`DedupeIndex::sync`] (a durable commit)
//!    runs after that and before `snapshot.bin` is written. A crash loses at most the
//!    memtable and non-durable commits, which replay re-inserts. `meta.next` (the state's `next` at each commit) and
//!    `meta.base` (rows below it deleted) are checked at open: the index must hold every row
//!    of `[cursor, next)` of the snapshot ([`DedupeIndex::covers`]), else the snapshot is not
//!    usable (see `Shared::open`).
//! 3. **Rows are deleted only below a durable snapshot's cursor** ([`DedupeIndex::gc_below`],
//!    after `snapshot.bin` is written), so no replay ever needs a deleted row.
//! 4. **Snapshot transfer carries the live rows** `[cursor, next)` of the snapshot sent (read in
//!    one redb read transaction, streamed to the transfer file; [`DedupeIndex::write_rows`]);
//!    install builds a new index file from them in bounded batches
//!    ([`DedupeIndex::build_file`]) and renames it over the follower's before the snapshot
//!    file is replaced.
//!
//! # Why redb
//!
//! redb (4.1, April 2026; 5.0 exists but needs Rust 1.90, above the workspace's 1.89) is pure
//! Rust, ACID with copy-on-write B-trees, one file, a bounded page cache, per-commit choice of
//! durability (non-durable commits on the apply path, one durable commit per snapshot) and
//! consistent read transactions (a transfer reads a stable view while applies go on). It is
//! actively maintained (several releases in 2026). fjall (an LSM tree) writes faster but has
//! no per-commit durability choice and its background compaction is harder to bound; an index
//! of our own over the log would have to be rebuilt by reading a window of logs that
//! retention deletes. After an unclean shutdown redb repairs the file on open (a full scan:
//! seconds for millions of keys).
//!
//! Errors of the index are [`crate::Error::Snapshot`] naming `dedupe.redb`: the index is part
//! of the snapshot state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BufMut;
use std::collections::HashMap;

use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::command::Reader;
use crate::error::{Error, Result};

const KEYS: TableDefinition<(u128, u64), ()> = TableDefinition::new("keys");
const ORDER: TableDefinition<u64, (u128, u64, u64)> = TableDefinition::new("order");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BASE: &str = "base";
const NEXT: &str = "next";
/// Rows per write transaction when deleting or building in bulk (bounds memory).
const BULK_ROWS: usize = 50_000;
/// Bytes of one row in a snapshot transfer: seq, hash, time, offset.
pub const ROW_BYTES: usize = 40;

/// File name of a stream's index inside its directory.
pub const FILE_NAME: &str = "dedupe.redb";
/// Default age window, ms (7 days).
pub const DEFAULT_MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default count window, keys.
pub const DEFAULT_MAX_KEYS: u64 = 50_000_000;
/// Default redb page cache, bytes.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Rows kept in the memtable before they are written to the index in one transaction
/// ([`KeyDedupe::commit`]): 32,768 rows, about 3 MiB.
pub const FLUSH_ROWS: usize = 32_768;

/// How long keys are remembered: by age of the leader-stamped insertion time and by count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Keys older than this are forgotten, ms.
    pub max_age_ms: u64,
    /// At most this many keys are remembered (the oldest go first).
    pub max_keys: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            max_age_ms: DEFAULT_MAX_AGE_MS,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Broker-side settings of the index of a dedupe stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeConfig {
    /// Window this node stamps into its entries while it leads.
    pub window: Window,
    /// redb page cache, bytes.
    pub cache_bytes: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            window: Window::default(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The on-disk key index of one stream. See the module docs.
pub struct DedupeIndex {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for DedupeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupeIndex({})", self.path.display())
    }
}

fn open_tables(txn: &WriteTransaction) -> std::result::Result<(), redb::Error> {
    txn.open_table(KEYS)?;
    txn.open_table(ORDER)?;
    txn.open_table(META)?;
    Ok(())
}

impl DedupeIndex {
    /// Opens (or creates) the index file at `path` with a page cache of `cache_bytes`.
    ///
    /// Errors: [`Error::Snapshot`] naming the file (unreadable, not a redb file, I/O).
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Arc<Self>> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| err(path, e))?;
        let ix = Self {
            db,
            path: path.to_path_buf(),
        };
        ix.write(open_tables, Durability::Immediate)?;
        Ok(Arc::new(ix))
    }

    /// An index in memory (tests and states not attached to a directory).
    pub fn in_memory() -> Arc<Self> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory redb");
        let ix = Self {
            db,
            path: PathBuf::from("<memory>"),
        };
        ix.write(open_tables, Durability::None)
            .expect("in-memory tables");
        Arc::new(ix)
    }

    /// The file (or `<memory>`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<R>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> std::result::Result<R, redb::Error>,
        durability: Durability,
    ) -> Result<R> {
        let run = || -> std::result::Result<R, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
            let r = f(&txn)?;
            txn.commit()?;
            Ok(r)
        };
        run().map_err(|e| err(&self.path, e))
    }

    /// `(base, next)`: rows below `base` were deleted; `next` is the state's key count at the
    /// last commit that survived.
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn bounds(&self) -> Result<(u64, u64)> {
        let r = || -> std::result::Result<(u64, u64), redb::Error> {
            let txn = self.db.begin_read()?;
            let meta = txn.open_table(META)?;
            let get = |k| -> std::result::Result<u64, redb::Error> {
                Ok(meta.get(k)?.map_or(0, |v| v.value()))
            };
            Ok((get(BASE)?, get(NEXT)?))
        };
        r().map_err(|e| err(&self.path, e))
    }

    /// Whether the index holds every row of `[cursor, next)` (see the module docs).
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn covers(&self, cursor: u64, next: u64) -> Result<bool> {
        let (base, have) = self.bounds()?;
        Ok(cursor >= next || (base <= cursor && have >= next))
    }

    /// Deletes every row (durably): the index of an empty state.
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn reset(&self) -> Result<()> {
        self.write(
            |txn| {
                txn.delete_table(KEYS)?;
                txn.delete_table(ORDER)?;
                txn.delete_table(META)?;
                open_tables(txn)
            },
            Durability::Immediate,
        )
    }

    /// Makes every commit so far durable (one fsync'd commit).
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn sync(&self) -> Result<()> {
        self.write(|_| Ok(()), Durability::Immediate)
    }

    /// Deletes rows below `target` (a durable snapshot's cursor), in transactions of at most
    /// 50,000 rows. Returns the rows deleted.
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn gc_below(&self, target: u64) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let n = self.write(
                |txn| {
                    let mut meta = txn.open_table(META)?;
                    let base = meta.get(BASE)?.map_or(0, |v| v.value());
                    if base >= target {
                        return Ok(0);
                    }
                    let end = target.min(base + BULK_ROWS as u64);
                    let mut order = txn.open_table(ORDER)?;
                    let mut keys = txn.open_table(KEYS)?;
                    let mut n = 0;
                    for row in order.extract_from_if(base..end, |_, _| true)? {
                        let (seq, v) = row?;
                        keys.remove((v.value().0, seq.value()))?;
                        n += 1;
                    }
                    meta.insert(BASE, end)?;
                    Ok(n)
                },
                Durability::None,
            )?;
            if n == 0 && self.bounds()?.0 >= target {
                return Ok(deleted);
            }
            deleted += n;
        }
    }

    /// Writes the rows `[cursor, next)` for a snapshot transfer: `[rows u64 LE]`, then per row
    /// `[seq u64][hash u128][time ms u64][offset u64]` (LE), then `[crc32c u32 LE]` of the
    /// rows. Returns the rows written.
    ///
    /// Errors: [`Error::Snapshot`] when the index does not hold the range (it moved past the
    /// snapshot: retry with the newer snapshot) or on I/O; write errors as [`Error::Io`].
    pub fn write_rows(&self, cursor: u64, next: u64, w: &mut impl Write) -> Result<u64> {
        let txn = self.db.begin_read().map_err(|e| err(&self.path, e))?;
        let view = || -> std::result::Result<_, redb::Error> {
            let meta = txn.open_table(META)?;
            let base = meta.get(BASE)?.map_or(0, |v| v.value());
            let have = meta.get(NEXT)?.map_or(0, |v| v.value());
            Ok((base, have, txn.open_table(ORDER)?))
        };
        let (base, have, order) = view().map_err(|e| err(&self.path, e))?;
        let n = next.saturating_sub(cursor);
        if n > 0 && (base > cursor || have < next) {
            return Err(Error::Snapshot {
                path: self.path.clone(),
                reason: format!(
                    "index holds seq {base}..{have}, the snapshot needs {cursor}..{next}"
                ),
            });
        }
        w.write_all(&n.to_le_bytes())?;
        let mut crc = 0u32;
        let mut buf = Vec::with_capacity(ROW_BYTES * 1024);
        let mut expect = cursor;
        let rows = order.range(cursor..next).map_err(|e| err(&self.path, e))?;
        for row in rows {
            let (seq, v) = row.map_err(|e| err(&self.path, e))?;
            let (seq, (hash, time, offset)) = (seq.value(), v.value());
            if seq != expect {
                return Err(Error::Snapshot {
                    path: self.path.clone(),
                    reason: format!("row {expect} missing (next row is {seq})"),
                });
            }
            expect += 1;
            buf.put_u64_le(seq);
            buf.put_u128_le(hash);
            buf.put_u64_le(time);
            buf.put_u64_le(offset);
            if buf.len() >= ROW_BYTES * 1024 {
                crc = crc32c::crc32c_append(crc, &buf);
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        if expect != next.max(cursor) {
            return Err(Error::Snapshot {
                path: self.path.clone(),
                reason: format!("rows end at {expect}, the snapshot needs {next}"),
            });
        }
        crc = crc32c::crc32c_append(crc, &buf);
        w.write_all(&buf)?;
        w.write_all(&crc.to_le_bytes())?;
        Ok(n)
    }

    /// Builds a new index file at `path` (replacing any file there) from rows written by
    /// [`Self::write_rows`] for a state with `cursor` and `next`, in transactions of at most
    /// 50,000 rows, and makes it durable. The caller renames it into place.
    ///
    /// Errors: [`Error::Snapshot`] naming `path` for malformed rows (count, order, CRC) or
    /// I/O.
    pub fn build_file(
        path: &Path,
        cache_bytes: usize,
        r: &mut impl Read,
        cursor: u64,
        next: u64,
    ) -> Result<()> {
        let bad = |reason: String| Error::Snapshot {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        let ix = Self::open(path, cache_bytes)?;
        let mut head = [0u8; 8];
        r.read_exact(&mut head)
            .map_err(|e| bad(format!("row count: {e}")))?;
        let n = u64::from_le_bytes(head);
        if n != next.saturating_sub(cursor) {
            return Err(bad(format!(
                "{n} rows for a state with keys {cursor}..{next}"
            )));
        }
        let mut crc = 0u32;
        let mut left = n;
        let mut expect = cursor;
        let mut buf = vec![0u8; ROW_BYTES * 4096];
        while left > 0 {
            let mut rows = Vec::with_capacity(BULK_ROWS);
            while left > 0 && rows.len() < BULK_ROWS {
                let k = (left as usize).min(4096);
                let b = &mut buf[..k * ROW_BYTES];
                r.read_exact(b)
                    .map_err(|e| bad(format!("row {expect}: {e}")))?;
                crc = crc32c::crc32c_append(crc, b);
                let mut rd = Reader {
                    buf: bytes::Bytes::copy_from_slice(b),
                };
                for _ in 0..k {
                    let seq = rd.u64().map_err(&bad)?;
                    if seq != expect {
                        return Err(bad(format!("row {expect} holds seq {seq}")));
                    }
                    expect += 1;
                    rows.push((seq, rd.u128().map_err(&bad)?, rd.u64().map_err(&bad)?, {
                        rd.u64().map_err(&bad)?
                    }));
                }
                left -= k as u64;
            }
            ix.write(
                |txn| {
                    let mut keys = txn.open_table(KEYS)?;
                    let mut order = txn.open_table(ORDER)?;
                    for &(seq, hash, time, offset) in &rows {
                        keys.insert((hash, seq), ())?;
                        order.insert(seq, (hash, time, offset))?;
                    }
                    Ok(())
                },
                Durability::None,
            )?;
        }
        let mut c = [0u8; 4];
        r.read_exact(&mut c)
            .map_err(|e| bad(format!("rows CRC: {e}")))?;
        if u32::from_le_bytes(c) != crc {
            return Err(bad("rows CRC mismatch".into()));
        }
        ix.write(
            |txn| {
                let mut meta = txn.open_table(META)?;
                meta.insert(BASE, cursor)?;
                meta.insert(NEXT, next)?;
                Ok(())
            },
            Durability::Immediate,
        )
    }

    /// Size of the index file, bytes (0 in memory).
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

fn err(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Snapshot {
        path: path.to_path_buf(),
        reason: e.into().to_string(),
    }
}

/// The deterministic window counters (snapshotted with the state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    next: u64,
    cursor: u64,
    clock_ms: u64,
    first_clock_ms: u64,
    window: Window,
}

/// Read views of an index's `keys` and `order` tables (see [`KeyDedupe`]).
type IndexView = (
    ReadOnlyTable<(u128, u64), ()>,
    ReadOnlyTable<u64, (u128, u64, u64)>,
);

/// Key dedupe of one stream's state: the window counters, the memtable and the index. See
/// the module docs.
pub struct KeyDedupe {
    c: Counters,
    /// Rows inserted since the last flush, in seq order: `(hash, leader time ms, offset)`;
    /// row `i` has seq `flushed + i`.
    mem_rows: Vec<(u128, u64, u64)>,
    /// Key hash → seq, for the rows of `mem_rows` (the latest seq of a hash).
    mem_keys: HashMap<u128, u64>,
    /// First seq of `mem_rows`: the index holds every row below it.
    flushed: u64,
    /// Flush once `mem_rows` holds this many rows ([`FLUSH_ROWS`]).
    flush_rows: usize,
    // Declared before `index`: fields drop in order, and dropping the last handle of a redb
    // database waits for its transactions to end.
    /// Read views of the index (`keys`, `order`) as of the last flush.
    view: Option<IndexView>,
    index: Option<Arc<DedupeIndex>>,
    failed: Option<String>,
    /// Migrated from an old snapshot, inserted at [`Self::attach`].
    legacy: Vec<(u128, u64)>,
    /// Lookups so far (records with a key), since this process started.
    pub lookups: u64,
    /// Lookups that found a live key.
    pub hits: u64,
    /// Keys evicted by this process (the counters move on apply and replay alike).
    pub evictions: u64,
}

impl Default for KeyDedupe {
    fn default() -> Self {
        Self {
            c: Counters {
                next: 0,
                cursor: 0,
                clock_ms: 0,
                first_clock_ms: 0,
                window: Window::default(),
            },
            mem_rows: Vec::new(),
            mem_keys: HashMap::new(),
            flushed: 0,
            flush_rows: FLUSH_ROWS,
            view: None,
            index: None,
            failed: None,
            legacy: Vec::new(),
            lookups: 0,
            hits: 0,
            evictions: 0,
        }
    }
}

impl Clone for KeyDedupe {
    /// Clones the counters and the memtable and shares the index.
    fn clone(&self) -> Self {
        Self {
            c: self.c,
            mem_rows: self.mem_rows.clone(),
            mem_keys: self.mem_keys.clone(),
            flushed: self.flushed,
            flush_rows: self.flush_rows,
            view: None,
            index: self.index.clone(),
            failed: self.failed.clone(),
            legacy: self.legacy.clone(),
            lookups: self.lookups,
            hits: self.hits,
            evictions: self.evictions,
        }
    }
}

impl PartialEq for KeyDedupe {
    /// Equal when the window counters are (the rows live in the index).
    fn eq(&self, other: &Self) -> bool {
        self.c == other.c && self.legacy == other.legacy
    }
}

impl std::fmt::Debug for KeyDedupe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDedupe")
            .field("counters", &self.c)
            .field("index", &self.index)
            .finish()
    }
}

/// Bytes of [`KeyDedupe::encode`].
pub const ENCODED_LEN: usize = 48;

impl KeyDedupe {
    /// Keys remembered now (`next - cursor`).
    pub fn live_keys(&self) -> u64 {
        self.c.next - self.c.cursor
    }
    /// Keys forgotten by the window so far.
    pub fn evicted(&self) -> u64 {
        self.c.cursor
    }
    /// Keys inserted so far.
    pub fn inserted(&self) -> u64 {
        self.c.next
    }
    /// First live insertion number.
    pub fn cursor(&self) -> u64 {
        self.c.cursor
    }
    /// The window in force (the last one a leader stamped, else the defaults).
    pub fn window(&self) -> Window {
        self.c.window
    }
    /// Leader clock of the last applied entry, ms since the Unix epoch (0: none yet).
    pub fn clock_ms(&self) -> u64 {
        self.c.clock_ms
    }
    /// The index, when one is attached or was created.
    pub fn index(&self) -> Option<&Arc<DedupeIndex>> {
        self.index.as_ref()
    }
    /// The first index error met while applying (the state is then unusable).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Attaches the stream's index to a state decoded from a snapshot (or new). Keys migrated
    /// from an old snapshot (format 2) replace the index's rows, durably.
    ///
    /// Errors: [`Error::Snapshot`] on I/O.
    pub fn attach(&mut self, index: Arc<DedupeIndex>) -> Result<()> {
        self.view = None;
        self.mem_rows.clear();
        self.mem_keys.clear();
        if !self.legacy.is_empty() {
            let mut legacy = std::mem::take(&mut self.legacy);
            legacy.sort_unstable_by_key(|&(h, o)| (o, h));
            index.reset()?;
            for (chunk_no, chunk) in legacy.chunks(BULK_ROWS).enumerate() {
                let first = (chunk_no * BULK_ROWS) as u64;
                index.write(
                    |txn| {
                        let mut keys = txn.open_table(KEYS)?;
                        let mut order = txn.open_table(ORDER)?;
                        for (i, &(hash, offset)) in chunk.iter().enumerate() {
                            let seq = first + i as u64;
                            keys.insert((hash, seq), ())?;
                            order.insert(seq, (hash, 0, offset))?;
                        }
                        Ok(())
                    },
                    Durability::None,
                )?;
            }
            let n = legacy.len() as u64;
            index.write(
                |txn| {
                    txn.open_table(META)?.insert(NEXT, n)?;
                    Ok(())
                },
                Durability::Immediate,
            )?;
            self.c.next = n;
            self.c.cursor = 0;
        }
        self.flushed = self.c.next;
        self.index = Some(index);
        Ok(())
    }

    /// Sets how many rows the memtable holds before [`Self::commit`] writes them (tests use
    /// small values; at least 1).
    pub fn set_flush_rows(&mut self, rows: usize) {
        self.flush_rows = rows.max(1);
    }

    /// Rows inserted and not yet written to the index (lost on a crash and inserted again by
    /// replay, like a non-durable commit).
    pub fn unflushed(&self) -> usize {
        self.mem_rows.len()
    }

    /// Read views of the index's `keys` and `order` tables, opened at the first use after a
    /// flush (they see every flushed row).
    fn view(&mut self) -> std::result::Result<&IndexView, redb::Error> {
        if self.view.is_none() {
            let ix = self.index.get_or_insert_with(DedupeIndex::in_memory);
            let txn = ix.db.begin_read()?;
            self.view = Some((txn.open_table(KEYS)?, txn.open_table(ORDER)?));
        }
        Ok(self.view.as_ref().expect("just opened"))
    }

    fn fail(&mut self, e: redb::Error) {
        if self.failed.is_none() {
            let path = self
                .index
                .as_ref()
                .map_or_else(|| "<none>".into(), |i| i.path.display().to_string());
            self.failed = Some(format!("dedupe index {path}: {e}"));
        }
        self.view = None;
    }

    /// Applies a leader clock stamp and window: advances the clock (never back), then evicts
    /// by count and by age.
    pub fn clock(&mut self, unix_ms: u64, window: Window) {
        if self.failed.is_some() {
            return;
        }
        self.c.window = window;
        self.c.clock_ms = self.c.clock_ms.max(unix_ms);
        if self.c.first_clock_ms == 0 {
            self.c.first_clock_ms = self.c.clock_ms;
        }
        self.evict_by_count();
        if self.c.cursor == self.c.next || self.c.clock_ms == 0 {
            return;
        }
        let Some(limit) = self.c.clock_ms.checked_sub(self.c.window.max_age_ms) else {
            return;
        };
        let (cursor, first, flushed) = (self.c.cursor, self.c.first_clock_ms, self.flushed);
        let expired = |time: u64| time.max(first) <= limit;
        // Rows are in insertion order and their times never go back: walk from the cursor
        // through the index's rows, then the memtable's, to the first row still in the window.
        let r = (|| -> std::result::Result<u64, redb::Error> {
            let mut c = cursor;
            if c < flushed {
                let (_, order) = self.view()?;
                for row in order.range(c..flushed)? {
                    let (seq, v) = row?;
                    if !expired(v.value().1) {
                        return Ok(c);
                    }
                    c = seq.value() + 1;
                }
            }
            let skip = (c - flushed) as usize;
            for &(_, time, _) in self.mem_rows.iter().skip(skip) {
                if !expired(time) {
                    break;
                }
                c += 1;
            }
            Ok(c)
        })();
        match r {
            Ok(c) => {
                self.evictions += c - self.c.cursor;
                self.c.cursor = c;
            }
            Err(e) => self.fail(e),
        }
    }

    fn evict_by_count(&mut self) {
        let floor = self.c.next.saturating_sub(self.c.window.max_keys);
        self.evictions += floor.saturating_sub(self.c.cursor);
        self.c.cursor = self.c.cursor.max(floor);
    }

    /// Looks up and inserts the keys of one batch whose first stored record gets
    /// `base_offset`: `keys[i]` is the 128-bit hash of record `i`'s key (`None`: no key,
    /// always stored). Returns, per record, `Some(original offset)` when it is dropped as a
    /// duplicate. Keys inserted here are live for the later records of the same batch.
    pub fn check_and_insert(
        &mut self,
        base_offset: u64,
        keys: &[Option<u128>],
    ) -> Vec<Option<u64>> {
        if self.failed.is_some() {
            return vec![None; keys.len()];
        }
        let mut c = self.c;
        let (mut lookups, mut hits) = (0u64, 0u64);
        let mut out = Vec::with_capacity(keys.len());
        let mut stored = 0u64;
        for k in keys {
            let Some(h) = *k else {
                out.push(None);
                stored += 1;
                continue;
            };
            lookups += 1;
            let known = match self.lookup(h, c.cursor) {
                Ok(known) => known,
                Err(e) => {
                    self.fail(e);
                    return vec![None; keys.len()];
                }
            };
            if let Some(orig) = known {
                hits += 1;
                out.push(Some(orig));
                continue;
            }
            let offset = base_offset + stored;
            self.mem_rows.push((h, c.clock_ms, offset));
            self.mem_keys.insert(h, c.next);
            c.next += 1;
            c.cursor = c.cursor.max(c.next.saturating_sub(c.window.max_keys));
            stored += 1;
            out.push(None);
        }
        self.lookups += lookups;
        self.hits += hits;
        self.evictions += c.cursor - self.c.cursor;
        self.c = c;
        out
    }

    /// The original offset of key hash `h` when it has a live row (seq at or above `cursor`):
    /// in the memtable, else in the index's flushed rows `[cursor, flushed)`. Rows of the
    /// index at or above `flushed` (ahead of the state after a crash) are not read: replay
    /// puts the same rows in the memtable.
    fn lookup(&mut self, h: u128, cursor: u64) -> std::result::Result<Option<u64>, redb::Error> {
        if let Some(&seq) = self.mem_keys.get(&h)
            && seq >= cursor
        {
            return Ok(Some(self.mem_rows[(seq - self.flushed) as usize].2));
        }
        let flushed = self.flushed;
        if cursor >= flushed {
            return Ok(None);
        }
        let (keys, order) = self.view()?;
        let Some(seq) = keys
            .range((h, cursor)..(h, flushed))?
            .next()
            .transpose()?
            .map(|(key, _)| key.value().1)
        else {
            return Ok(None);
        };
        Ok(Some(order.get(seq)?.map_or(0, |v| v.value().2)))
    }

    /// Ends an apply batch: writes the memtable to the index ([`Self::flush`]) once it holds
    /// [`FLUSH_ROWS`] rows, else keeps it (see the module docs, "Memtable").
    ///
    /// Errors: the first index failure met while applying, or of the flush, as text.
    pub fn commit(&mut self) -> std::result::Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if self.mem_rows.len() < self.flush_rows {
            return Ok(());
        }
        self.flush()
    }

    /// Writes the memtable's rows to the index in one (non-durable) transaction, keys sorted
    /// by hash so that neighbouring rows share B-tree pages, and records the state's key
    /// count (`meta.next`). Called when the memtable is full and before a snapshot captures
    /// the state (so the index holds every row the snapshot counts).
    ///
    /// Errors: the first index failure met while applying, or of this write, as text.
    pub fn flush(&mut self) -> std::result::Result<(), String> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if self.mem_rows.is_empty() {
            return Ok(());
        }
        let (first, next) = (self.flushed, self.c.next);
        debug_assert_eq!(first + self.mem_rows.len() as u64, next);
        let ix = Arc::clone(self.index.get_or_insert_with(DedupeIndex::in_memory));
        let rows = &self.mem_rows;
        let r = (|| -> std::result::Result<(), redb::Error> {
            let mut txn = ix.db.begin_write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
            {
                let mut by_key: Vec<(u128, u64)> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, &(h, _, _))| (h, first + i as u64))
                    .collect();
                by_key.sort_unstable();
                let mut kt = txn.open_table(KEYS)?;
                for key in by_key {
                    kt.insert(key, ())?;
                }
                let mut ot = txn.open_table(ORDER)?;
                for (i, &row) in rows.iter().enumerate() {
                    ot.insert(first + i as u64, row)?;
                }
                txn.open_table(META)?.insert(NEXT, next)?;
            }
            txn.commit()?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.mem_rows.clear();
                self.mem_keys.clear();
                self.flushed = next;
                self.view = None;
                Ok(())
            }
            Err(e) => {
                self.fail(e);
                Err(self.failed.clone().unwrap_or_default())
            }
        }
    }

    /// Appends the counters to a state snapshot body ([`ENCODED_LEN`] bytes).
    pub fn encode(&self, b: &mut Vec<u8>) {
        for v in [
            self.c.next,
            self.c.cursor,
            self.c.clock_ms,
            self.c.first_clock_ms,
            self.c.window.max_age_ms,
            self.c.window.max_keys,
        ] {
            b.put_u64_le(v);
        }
    }

    /// Reads what [`Self::encode`] wrote; the index is attached later.
    ///
    /// Errors: a description of the truncated or inconsistent field.
    pub(crate) fn decode(r: &mut Reader) -> std::result::Result<Self, String> {
        let mut d = Self::default();
        d.c.next = r.u64()?;
        d.c.cursor = r.u64()?;
        d.c.clock_ms = r.u64()?;
        d.c.first_clock_ms = r.u64()?;
        d.c.window.max_age_ms = r.u64()?;
        d.c.window.max_keys = r.u64()?;
        if d.c.cursor > d.c.next {
            return Err(format!(
                "dedupe cursor {} above its key count {}",
                d.c.cursor, d.c.next
            ));
        }
        d.flushed = d.c.next;
        Ok(d)
    }

    /// A state of snapshot format 2 held its keys in memory: `(hash, offset)` pairs, migrated
    /// into the index at [`Self::attach`] (in offset order, as if inserted before the first
    /// clock stamp).
    pub(crate) fn from_legacy(keys: Vec<(u128, u64)>) -> Self {
        Self {
            legacy: keys,
            ..Self::default()
        }
    }
}

/// Attaches `ix` to `state` at open. A state from a snapshot keeps the index when it
/// [covers](DedupeIndex::covers) the snapshot's live keys (returns false otherwise: the
/// snapshot cannot be used); a new state starts with an empty index.
///
/// Errors: [`Error::Snapshot`] on I/O.
pub fn attach_at_open(
    state: &mut crate::state::StreamState,
    ix: &Arc<DedupeIndex>,
    from_snapshot: bool,
) -> Result<bool> {
    if !from_snapshot {
        ix.reset()?;
    }
    let d = state.dedupe_mut();
    d.attach(Arc::clone(ix))?;
    ix.covers(d.cursor(), d.inserted())
}

/// Publishes the dedupe figures of a stream's state to its metrics (after each apply batch).
pub fn publish_metrics(m: &crate::metrics::StreamMetrics, d: &KeyDedupe) {
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    m.dedupe_keys.set(clamp(d.live_keys()));
    m.dedupe_window_seconds
        .set(clamp(d.window().max_age_ms / 1000));
    m.dedupe_window_keys.set(clamp(d.window().max_keys));
    let bump = |c: &prometheus::IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
    bump(&m.dedupe_evictions, d.evictions);
    bump(&m.dedupe_lookups, d.lookups);
    bump(&m.dedupe_hits, d.hits);
}

/// Key-dedupe figures of a stream for `/status.json` (one definition, in txpipe-client).
pub use txpipe_client::status::DedupeStatus;

/// The dedupe figures of `replica` (`None` for streams without key dedupe); also sets the
/// index-size gauge.
pub fn status(replica: &crate::replica::Replica) -> Option<DedupeStatus> {
    if !replica.spec.dedupe_by_key {
        return None;
    }
    let (keys, window, index) = replica.with_core(|c| {
        let d = c.state.dedupe();
        (d.live_keys(), d.window(), d.index().cloned())
    });
    let index_bytes = index.map_or(0, |i| i.file_bytes());
    replica
        .metrics
        .dedupe_index_bytes
        .set(index_bytes.min(i64::MAX as u64) as i64);
    Some(DedupeStatus {
        keys,
        window_seconds: window.max_age_ms / 1000,
        window_keys: window.max_keys,
        index_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, key_hash};
    use crate::state::{ApplyOutcome, Retention, StreamSpec, StreamState};
    use bytes::Bytes;
    use proptest::prelude::*;
    use txpipe_client::broker::v1::Record;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn spec() -> StreamSpec {
        StreamSpec {
            name: "decisions".into(),
            retention: Retention::Limits,
            dedupe_by_key: true,
            group: String::new(),
            dead_letter_stream: None,
            ledger: false,
        }
    }
    fn append(keys: &[&str]) -> Command {
        Command::Append {
            producer_id: 0,
            epoch: 0,
            sequence: 0,
            position: 0,
            records: keys
                .iter()
                .map(|k| Record {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::from_static(b"v"),
                    timestamp_us: 0,
                })
                .collect(),
        }
    }
    fn clock(ms: u64, max_age_ms: u64, max_keys: u64) -> Command {
        Command::Clock {
            unix_ms: ms,
            dedupe_max_age_ms: max_age_ms,
            dedupe_max_keys: max_keys,
        }
    }
    /// `(stored, deduplicated, base_offset)` of an append outcome.
    fn counts(o: &ApplyOutcome) -> (u32, u32, u64) {
        match o {
            ApplyOutcome::Appended {
                stored,
                deduplicated,
                base_offset,
                ..
            } => (*stored, *deduplicated, *base_offset),
            other => panic!("not an append outcome: {other:?}"),
        }
    }
    fn reopen(dir: &Path, snap: Option<&[u8]>) -> (StreamState, Arc<DedupeIndex>) {
        let ix = DedupeIndex::open(&dir.join(FILE_NAME), 1 << 20).unwrap();
        let mut st = match snap {
            Some(b) => StreamState::decode(Bytes::copy_from_slice(b)).unwrap(),
            None => StreamState::new(&spec()),
        };
        assert!(attach_at_open(&mut st, &ix, snap.is_some()).unwrap());
        // Every commit flushes, as before the memtable; tests of the memtable set their own.
        st.dedupe_mut().set_flush_rows(1);
        (st, ix)
    }

    #[test]
    fn the_memtable_answers_lookups_and_is_written_once_full() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, ix) = reopen(dir.path(), None);
        s.dedupe_mut().set_flush_rows(4);
        s.apply(1, &clock(DAY_MS, 7 * DAY_MS, 100));
        assert_eq!(counts(&s.apply(2, &append(&["a", "b", "c"]))), (3, 0, 0));
        s.dedupe_mut().commit().unwrap();
        // Below the threshold: in the memtable only, and found there.
        assert_eq!(s.dedupe().unflushed(), 3);
        assert_eq!(ix.bounds().unwrap(), (0, 0));
        assert_eq!(counts(&s.apply(3, &append(&["b", "d"]))), (1, 1, 3));
        s.dedupe_mut().commit().unwrap();
        // Full: written in one transaction, then found in the index.
        assert_eq!(s.dedupe().unflushed(), 0);
        assert_eq!(ix.bounds().unwrap(), (0, 4));
        assert_eq!(counts(&s.apply(4, &append(&["a", "d", "e"]))), (1, 2, 4));
        assert_eq!(s.dedupe().unflushed(), 1);
        // A flush before a snapshot writes the rest.
        s.dedupe_mut().flush().unwrap();
        assert_eq!(ix.bounds().unwrap(), (0, 5));
        let mut buf = Vec::new();
        assert_eq!(ix.write_rows(0, 5, &mut buf).unwrap(), 5);
    }

    #[test]
    fn a_known_key_is_dropped_and_answered_with_its_original_offset() {
        let mut s = StreamState::new(&spec());
        assert_eq!(counts(&s.apply(1, &append(&["a", "b"]))), (2, 0, 0));
        assert_eq!(counts(&s.apply(2, &append(&["b"]))), (0, 1, 1));
        assert_eq!(counts(&s.apply(3, &append(&["c", "a", "c"]))), (1, 2, 2));
        s.dedupe_mut().commit().unwrap();
        assert_eq!(s.dedupe().live_keys(), 3);
        assert_eq!((s.dedupe().lookups, s.dedupe().hits), (6, 3));
    }

    #[test]
    fn replaying_entries_over_an_index_that_is_ahead_gives_the_same_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _ix) = reopen(dir.path(), None);
        s.apply(1, &append(&["a"]));
        s.dedupe_mut().commit().unwrap();
        let snap = s.encode();
        // Applied after the snapshot, committed to the index, then "crash".
        let after = [append(&["b", "a"]), append(&["c", "b"])];
        let first: Vec<_> = after
            .iter()
            .enumerate()
            .map(|(i, c)| counts(&s.apply(2 + i as u64, c)))
            .collect();
        s.dedupe_mut().commit().unwrap();
        drop(s);
        drop(_ix);
        let (mut r, _ix) = reopen(dir.path(), Some(&snap));
        let again: Vec<_> = after
            .iter()
            .enumerate()
            .map(|(i, c)| counts(&r.apply(2 + i as u64, c)))
            .collect();
        assert_eq!(again, first);
        assert_eq!(first, vec![(1, 1, 1), (1, 1, 2)]);
        r.dedupe_mut().commit().unwrap();
        assert_eq!(r.dedupe().live_keys(), 3);
    }

    #[test]
    fn keys_are_evicted_by_count_then_by_leader_age() {
        let mut s = StreamState::new(&spec());
        s.apply(1, &clock(DAY_MS, 7 * DAY_MS, 3));
        s.apply(2, &append(&["a", "b", "c", "d"]));
        // "a" is the oldest of 4 keys with room for 3.
        assert_eq!(s.dedupe().live_keys(), 3);
        assert_eq!(counts(&s.apply(3, &append(&["a"]))), (1, 0, 4));
        assert_eq!(counts(&s.apply(4, &append(&["d"]))), (0, 1, 3));
        // Keys "c", "d", "a" were stored at day 1; at day 8 they are 7 days old: gone.
        s.apply(5, &clock(8 * DAY_MS - 1, 7 * DAY_MS, 3));
        assert_eq!(s.dedupe().live_keys(), 3);
        s.apply(6, &clock(8 * DAY_MS, 7 * DAY_MS, 3));
        assert_eq!(s.dedupe().live_keys(), 0);
        // A clock that goes back (a new leader with a slower clock) changes nothing.
        s.apply(7, &clock(DAY_MS, 7 * DAY_MS, 3));
        assert_eq!(s.dedupe().clock_ms(), 8 * DAY_MS);
        assert_eq!(counts(&s.apply(8, &append(&["d"]))), (1, 0, 5));
        assert_eq!(s.dedupe().evictions, 5);
        s.dedupe_mut().commit().unwrap();
    }

    #[test]
    fn the_index_survives_a_reopen_and_collects_rows_below_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, ix) = reopen(dir.path(), None);
        s.apply(1, &clock(DAY_MS, DAY_MS, 2));
        s.apply(2, &append(&["a", "b", "c"]));
        s.dedupe_mut().commit().unwrap();
        ix.sync().unwrap();
        let snap = s.encode();
        assert_eq!(ix.gc_below(s.dedupe().cursor()).unwrap(), 1);
        assert_eq!(ix.bounds().unwrap(), (1, 3));
        drop((s, ix));
        let (mut r, ix) = reopen(dir.path(), Some(&snap));
        assert_eq!(counts(&r.apply(3, &append(&["b", "a"]))), (1, 1, 3));
        r.dedupe_mut().commit().unwrap();
        // An index that lost rows a snapshot needs is reported, not used.
        assert!(!ix.covers(0, 4).unwrap());
        assert!(ix.covers(2, 4).unwrap());
    }

    #[test]
    fn transferred_rows_rebuild_an_equivalent_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, ix) = reopen(dir.path(), None);
        s.apply(1, &clock(DAY_MS, DAY_MS, 3));
        s.apply(2, &append(&["a", "b", "c", "d"]));
        s.dedupe_mut().commit().unwrap();
        let d = s.dedupe();
        let mut buf = Vec::new();
        assert_eq!(
            ix.write_rows(d.cursor(), d.inserted(), &mut buf).unwrap(),
            3
        );
        assert_eq!(buf.len(), 8 + 3 * ROW_BYTES + 4);
        let path = dir.path().join("copy.redb");
        DedupeIndex::build_file(&path, 1 << 20, &mut &buf[..], d.cursor(), d.inserted()).unwrap();
        let mut f = StreamState::decode(Bytes::from(s.encode())).unwrap();
        f.dedupe_mut()
            .attach(DedupeIndex::open(&path, 1 << 20).unwrap())
            .unwrap();
        assert_eq!(counts(&f.apply(3, &append(&["d", "a", "e"]))), (2, 1, 4));
        let mut bad = buf.clone();
        bad[20] ^= 1;
        let e = DedupeIndex::build_file(&path, 1 << 20, &mut &bad[..], 1, 4).unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
    }

    #[test]
    fn keys_of_a_format_2_snapshot_are_migrated_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let ix = DedupeIndex::open(&dir.path().join(FILE_NAME), 1 << 20).unwrap();
        let mut s = StreamState::new(&spec());
        *s.dedupe_mut() = KeyDedupe::from_legacy(vec![(key_hash(b"x"), 7), (key_hash(b"y"), 3)]);
        assert!(attach_at_open(&mut s, &ix, true).unwrap());
        assert_eq!(s.dedupe().live_keys(), 2);
        assert_eq!(counts(&s.apply(9, &append(&["x"]))), (0, 1, 7));
        // Migrated keys count their age from the first clock stamp.
        s.apply(10, &clock(50 * DAY_MS, DAY_MS, 10));
        assert_eq!(s.dedupe().live_keys(), 2);
        s.apply(11, &clock(51 * DAY_MS, DAY_MS, 10));
        assert_eq!(s.dedupe().live_keys(), 0);
        s.dedupe_mut().commit().unwrap();
    }

    /// The reference model: every insertion `(key, time)` in order, and the live ones.
    #[derive(Default)]
    struct Model {
        inserted: Vec<(u8, u64)>,
        cursor: usize,
        clock: u64,
        first: u64,
    }
    impl Model {
        fn live(&self, k: u8) -> bool {
            self.inserted[self.cursor..].iter().any(|&(x, _)| x == k)
        }
        fn clock(&mut self, ms: u64, age: u64, max: u64) {
            self.clock = self.clock.max(ms);
            if self.first == 0 {
                self.first = self.clock;
            }
            self.cursor = self
                .cursor
                .max(self.inserted.len().saturating_sub(max as usize));
            while self.cursor < self.inserted.len()
                && self.inserted[self.cursor].1.max(self.first) + age <= self.clock
            {
                self.cursor += 1;
            }
        }
        fn append(&mut self, keys: &[u8], max: u64) -> (u32, u32) {
            let (mut stored, mut dup) = (0, 0);
            for &k in keys {
                if self.live(k) {
                    dup += 1;
                } else {
                    self.inserted.push((k, self.clock));
                    self.cursor = self
                        .cursor
                        .max(self.inserted.len().saturating_sub(max as usize));
                    stored += 1;
                }
            }
            (stored, dup)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>),
        Advance(u64),
        Snapshot,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0u8..24, 1..6).prop_map(Op::Append),
            2 => (0u64..40).prop_map(Op::Advance),
            1 => Just(Op::Snapshot),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn the_index_and_state_agree_with_a_reference_model_across_crashes(
            ops in proptest::collection::vec(op(), 1..60),
            max_keys in 1u64..12,
            flush_rows in 1usize..8,
        ) {
            const AGE: u64 = 100;
            let dir = tempfile::tempdir().unwrap();
            let (mut st, mut ix) = reopen(dir.path(), None);
            st.dedupe_mut().set_flush_rows(flush_rows);
            let mut model = Model::default();
            let mut now = 1_000u64;
            let mut log: Vec<Command> = Vec::new();
            let mut snap: Option<(Vec<u8>, usize)> = None;
            for op in ops {
                match op {
                    Op::Append(keys) => {
                        let names: Vec<String> = keys.iter().map(|k| format!("tx-{k}")).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        for cmd in [clock(now, AGE, max_keys), append(&refs)] {
                            let out = st.apply(log.len() as u64, &cmd);
                            if matches!(cmd, Command::Clock { .. }) {
                                model.clock(now, AGE, max_keys);
                            } else {
                                let (s, d) = model.append(&keys, max_keys);
                                let (gs, gd, _) = counts(&out);
                                prop_assert_eq!((gs, gd), (s, d));
                            }
                            log.push(cmd);
                        }
                        st.dedupe_mut().commit().unwrap();
                        prop_assert_eq!(st.dedupe().live_keys(), (model.inserted.len() - model.cursor) as u64);
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Snapshot => {
                        st.dedupe_mut().flush().unwrap();
                        ix.sync().unwrap();
                        snap = Some((st.encode(), log.len()));
                        ix.gc_below(st.dedupe().cursor()).unwrap();
                    }
                    Op::Crash => {
                        drop(st);
                        drop(ix);
                        let (mut s2, ix2) = reopen(dir.path(), snap.as_ref().map(|(b, _)| &b[..]));
                        s2.dedupe_mut().set_flush_rows(flush_rows);
                        for (i, cmd) in log.iter().enumerate().skip(snap.as_ref().map_or(0, |s| s.1)) {
                            s2.apply(i as u64, cmd);
                        }
                        s2.dedupe_mut().commit().unwrap();
                        st = s2;
                        ix = ix2;
                        prop_assert_eq!(st.dedupe().live_keys(), (model.inserted.len() - model.cursor) as u64);
                    }
                }
            }
        }
    }

    /// Resident set size of this process, bytes (Linux).
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "2M keys take minutes in a debug build; run with --release (docs/architecture.md)"]
    fn memory_stays_bounded_by_the_cache_while_two_million_keys_are_inserted() {
        const CACHE: usize = 16 << 20;
        let dir = tempfile::tempdir().unwrap();
        let ix = DedupeIndex::open(&dir.path().join(FILE_NAME), CACHE).unwrap();
        let mut d = KeyDedupe::default();
        d.attach(Arc::clone(&ix)).unwrap();
        let before = rss_bytes();
        let mut peak = before;
        for batch in 0..2_000u64 {
            let keys: Vec<Option<u128>> = (0..1_000u64)
                .map(|i| Some(key_hash(format!("tx-{}", batch * 1_000 + i).as_bytes())))
                .collect();
            let out = d.check_and_insert(batch * 1_000, &keys);
            assert!(out.iter().all(Option::is_none));
            d.commit().unwrap();
            if batch % 100 == 0 {
                peak = peak.max(rss_bytes());
            }
        }
        peak = peak.max(rss_bytes());
        assert_eq!(d.live_keys(), 2_000_000);
        // The old in-memory table took 40-75 bytes a key (80-150 MiB here).
        let growth = peak.saturating_sub(before);
        assert!(
            growth < 4 * CACHE as u64 + (32 << 20),
            "RSS grew by {} MiB with a {} MiB cache",
            growth >> 20,
            CACHE >> 20
        );
    }
}
