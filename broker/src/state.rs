//! The pure state machine of one stream: no I/O, deterministic, applied in log order.
//!
//! [`StreamState::apply`] takes `(log_index, &Command)` and returns an [`ApplyOutcome`]. It
//! assigns dense offsets to appended records (offsets are not log indexes; the state keeps a
//! compact map from offset ranges to the log index of the `Append` entry holding them), keeps the
//! idempotent-producer table, the key-dedupe window of streams that deduplicate by key (its keys
//! live on disk: [`crate::dedupe`]), and the work-queue
//! ack state (an ack floor plus a bitmap of resolved offsets above it, persisted redelivery
//! attempt counts). Everything a Raft follower needs to serve as leader is here; soft delivery
//! state (who holds what, deadlines) lives in [`crate::delivery`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{BufMut, Bytes};

use crate::command::{Command, Reader, key_hash};
use crate::dedupe::KeyDedupe;

/// Retention policy of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Records leave once acked or dead-lettered by the stream's consumer group.
    WorkQueue,
    /// Records leave past a size or age limit.
    Limits,
}

/// Static description of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name (also its directory name).
    pub name: String,
    /// Retention policy.
    pub retention: Retention,
    /// Drop records whose non-empty key was already stored within the dedupe window
    /// ([`crate::dedupe`]; independent of retention).
    pub dedupe_by_key: bool,
    /// Consumer group (work-queue streams).
    pub group: String,
    /// Dead-letter stream (work-queue streams).
    pub dead_letter_stream: Option<String>,
}

/// Idempotent producers remembered per stream; beyond this the least recently active one is
/// forgotten (its late retries would then be stored again).
pub const MAX_PRODUCERS: usize = 65_536;
/// Recent batches remembered per producer, to answer retries with their original offsets.
pub const RECENT_BATCHES: usize = 8;

/// Offsets `[base_offset, base_offset + count)` live in the `Append` entry at `log_index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// First offset.
    pub base_offset: u64,
    /// Log index of the `Append` entry.
    pub log_index: u64,
    /// Records stored from that entry.
    pub count: u32,
    /// When some records of the entry were dropped by key deduplication: the positions (in the
    /// entry's record list) of the stored ones, `count` long.
    pub kept: Option<Box<[u32]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchMemo {
    sequence: u64,
    base_offset: u64,
    stored: u32,
    deduplicated: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ProducerEntry {
    last_sequence: u64,
    last_log_index: u64,
    recent: VecDeque<BatchMemo>,
}

/// Result of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// An `Append` was handled.
    Appended {
        /// First offset stored (meaningful when `stored > 0`; for a duplicate, the original's).
        base_offset: u64,
        /// Records stored.
        stored: u32,
        /// Records dropped by key deduplication.
        deduplicated: u32,
        /// The batch was a retry of a stored batch: nothing was stored now.
        duplicate: bool,
        /// Positions of the stored records in the batch when some were dropped.
        kept: Option<Box<[u32]>>,
    },
    /// An idempotent producer skipped a sequence; nothing was stored.
    OutOfOrder {
        /// Producer id.
        producer_id: u64,
        /// Next sequence accepted.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// Offsets newly resolved by an `Ack` or `DeadLettered` (already resolved or unknown ones
    /// are not counted).
    Resolved {
        /// Offsets newly resolved.
        count: u64,
    },
    /// Other commands.
    Done,
}

/// State of one stream. See the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    work_queue: bool,
    dedupe_by_key: bool,
    next_offset: u64,
    start_offset: u64,
    chunks: VecDeque<Chunk>,
    producers: HashMap<u64, ProducerEntry>,
    dedupe: KeyDedupe,
    floor: u64,
    word_base: u64,
    resolved: VecDeque<u64>,
    attempts: BTreeMap<u64, u32>,
    acked_total: u64,
    dead_lettered_total: u64,
    deduplicated_total: u64,
}

impl StreamState {
    /// Retention policy of the stream.
    pub fn retention(&self) -> Retention {
        if self.work_queue {
            Retention::WorkQueue
        } else {
            Retention::Limits
        }
    }

    /// An empty stream.
    pub fn new(spec: &StreamSpec) -> Self {
        Self {
            work_queue: spec.retention == Retention::WorkQueue,
            dedupe_by_key: spec.dedupe_by_key,
            next_offset: 0,
            start_offset: 0,
            chunks: VecDeque::new(),
            producers: HashMap::new(),
            dedupe: KeyDedupe::default(),
            floor: 0,
            word_base: 0,
            resolved: VecDeque::new(),
            attempts: BTreeMap::new(),
            acked_total: 0,
            dead_lettered_total: 0,
            deduplicated_total: 0,
        }
    }

    /// Applies `cmd`, the entry at `log_index`. Deterministic: the same entries in the same
    /// order give the same state on every node.
    pub fn apply(&mut self, log_index: u64, cmd: &Command) -> ApplyOutcome {
        match cmd {
            Command::Append {
                producer_id,
                sequence,
                records,
            } => self.append(log_index, *producer_id, *sequence, records),
            Command::Ack { offsets } => {
                let mut count = 0;
                for &o in offsets {
                    if self.resolve(o) {
                        count += 1;
                        self.acked_total += 1;
                    }
                }
                ApplyOutcome::Resolved { count }
            }
            Command::DeadLettered { offsets, .. } => {
                let mut count = 0;
                for &o in offsets {
                    if self.resolve(o) {
                        count += 1;
                        self.dead_lettered_total += 1;
                    }
                }
                ApplyOutcome::Resolved { count }
            }
            Command::Attempts { entries } => {
                for &(o, a) in entries {
                    if o < self.next_offset && !self.is_resolved(o) {
                        let e = self.attempts.entry(o).or_insert(0);
                        *e = (*e).max(a);
                    }
                }
                ApplyOutcome::Done
            }
            Command::Trim { start_offset } => {
                self.trim(*start_offset);
                ApplyOutcome::Done
            }
            Command::Clock {
                unix_ms,
                dedupe_max_age_ms,
                dedupe_max_keys,
            } => {
                if self.dedupe_by_key {
                    let window = crate::dedupe::Window {
                        max_age_ms: *dedupe_max_age_ms,
                        max_keys: *dedupe_max_keys,
                    };
                    self.dedupe.clock(*unix_ms, window);
                }
                ApplyOutcome::Done
            }
        }
    }

    fn append(
        &mut self,
        log_index: u64,
        producer_id: u64,
        sequence: u64,
        records: &[txpipe_client::broker::v1::Record],
    ) -> ApplyOutcome {
        if producer_id != 0 {
            let last = self
                .producers
                .get(&producer_id)
                .map_or(0, |p| p.last_sequence);
            if sequence <= last {
                let memo = self.producers[&producer_id]
                    .recent
                    .iter()
                    .find(|m| m.sequence == sequence)
                    .cloned();
                return ApplyOutcome::Appended {
                    base_offset: memo.as_ref().map_or(0, |m| m.base_offset),
                    stored: memo.as_ref().map_or(0, |m| m.stored),
                    deduplicated: memo.as_ref().map_or(0, |m| m.deduplicated),
                    duplicate: true,
                    kept: None,
                };
            }
            if sequence != last + 1 {
                return ApplyOutcome::OutOfOrder {
                    producer_id,
                    expected: last + 1,
                    got: sequence,
                };
            }
        }
        let mut base_offset = self.next_offset;
        let mut kept: Option<Vec<u32>> = None;
        let mut stored = 0u32;
        if self.dedupe_by_key {
            let hashes: Vec<Option<u128>> = records
                .iter()
                .map(|r| (!r.key.is_empty()).then(|| key_hash(&r.key)))
                .collect();
            let dups = self.dedupe.check_and_insert(base_offset, &hashes);
            let mut first_dup = None;
            for (i, dup) in dups.into_iter().enumerate() {
                if let Some(original) = dup {
                    first_dup.get_or_insert(original);
                    kept.get_or_insert_with(|| (0..i as u32).collect());
                    continue;
                }
                if let Some(k) = kept.as_mut() {
                    k.push(i as u32);
                }
                stored += 1;
            }
            // A batch of duplicates only is answered with the original offset.
            if stored == 0
                && let Some(o) = first_dup
            {
                base_offset = o;
            }
        } else {
            stored = records.len() as u32;
        }
        let deduplicated = records.len() as u32 - stored;
        self.deduplicated_total += u64::from(deduplicated);
        let kept: Option<Box<[u32]>> = kept.map(Vec::into_boxed_slice);
        if stored > 0 {
            self.chunks.push_back(Chunk {
                base_offset,
                log_index,
                count: stored,
                kept: kept.clone(),
            });
            self.next_offset += u64::from(stored);
        }
        if producer_id != 0 {
            if !self.producers.contains_key(&producer_id)
                && self.producers.len() >= MAX_PRODUCERS
                && let Some(oldest) = self
                    .producers
                    .iter()
                    .min_by_key(|(id, p)| (p.last_log_index, **id))
                    .map(|(id, _)| *id)
            {
                self.producers.remove(&oldest);
            }
            let p = self.producers.entry(producer_id).or_default();
            p.last_sequence = sequence;
            p.last_log_index = log_index;
            if p.recent.len() == RECENT_BATCHES {
                p.recent.pop_front();
            }
            p.recent.push_back(BatchMemo {
                sequence,
                base_offset,
                stored,
                deduplicated,
            });
        }
        ApplyOutcome::Appended {
            base_offset,
            stored,
            deduplicated,
            duplicate: false,
            kept,
        }
    }

    /// Marks a work-queue offset resolved. Returns false when already resolved or never stored.
    fn resolve(&mut self, offset: u64) -> bool {
        if !self.work_queue || offset < self.floor || offset >= self.next_offset {
            return false;
        }
        let rel = offset - self.word_base;
        let word = (rel / 64) as usize;
        let bit = 1u64 << (rel % 64);
        while self.resolved.len() <= word {
            self.resolved.push_back(0);
        }
        if self.resolved[word] & bit != 0 {
            return false;
        }
        self.resolved[word] |= bit;
        self.attempts.remove(&offset);
        // Advance the floor over the run of resolved offsets.
        while let Some(&w) = self.resolved.front() {
            let pos = self.floor - self.word_base;
            let ones = (w >> pos).trailing_ones() as u64;
            let ones = ones.min(64 - pos);
            self.floor += ones;
            if self.floor - self.word_base == 64 {
                self.resolved.pop_front();
                self.word_base += 64;
            } else {
                break;
            }
        }
        true
    }

    fn trim(&mut self, start_offset: u64) {
        let start = start_offset.min(self.next_offset);
        if start <= self.start_offset {
            return;
        }
        self.start_offset = start;
        while let Some(c) = self.chunks.front() {
            if c.base_offset + u64::from(c.count) <= start {
                self.chunks.pop_front();
            } else {
                break;
            }
        }
        self.attempts = self.attempts.split_off(&start);
    }

    /// Whether a work-queue offset is acked or dead-lettered (false for limits streams).
    pub fn is_resolved(&self, offset: u64) -> bool {
        if !self.work_queue {
            return false;
        }
        if offset < self.floor {
            return true;
        }
        let rel = offset - self.word_base;
        let word = (rel / 64) as usize;
        self.resolved
            .get(word)
            .is_some_and(|w| w & (1 << (rel % 64)) != 0)
    }

    /// Where offset `offset` is stored: `(log index of its Append entry, position of the record in
    /// that entry)`, or `None` when it is below the start or not yet stored.
    pub fn locate(&self, offset: u64) -> Option<(u64, u32)> {
        if offset < self.start_offset || offset >= self.next_offset {
            return None;
        }
        let i = self.chunks.partition_point(|c| c.base_offset <= offset);
        let c = self.chunks.get(i.checked_sub(1)?)?;
        let rel = offset - c.base_offset;
        if rel >= u64::from(c.count) {
            return None;
        }
        let pos = match &c.kept {
            Some(k) => k[rel as usize],
            None => rel as u32,
        };
        Some((c.log_index, pos))
    }

    /// The offset → log index map, oldest first.
    pub fn chunks(&self) -> &VecDeque<Chunk> {
        &self.chunks
    }

    /// Offset the next stored record gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    /// Lowest offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }
    /// Every offset below this is acked or dead-lettered (work queues; 0 for limits streams).
    pub fn ack_floor(&self) -> u64 {
        self.floor
    }
    /// Records acked so far.
    pub fn acked_total(&self) -> u64 {
        self.acked_total
    }
    /// Records dead-lettered so far.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered_total
    }
    /// Records dropped by key deduplication so far.
    pub fn deduplicated_total(&self) -> u64 {
        self.deduplicated_total
    }
    /// Work-queue records neither acked nor dead-lettered.
    pub fn pending(&self) -> u64 {
        if self.work_queue {
            self.next_offset - self.floor - self.resolved_above_floor()
        } else {
            0
        }
    }
    fn resolved_above_floor(&self) -> u64 {
        self.resolved
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
            - (self.floor - self.word_base)
    }
    /// Persisted delivery attempts of unresolved offsets that were redelivered.
    pub fn attempts(&self) -> &BTreeMap<u64, u32> {
        &self.attempts
    }
    /// Key deduplication: window counters and index ([`crate::dedupe`]).
    pub fn dedupe(&self) -> &KeyDedupe {
        &self.dedupe
    }
    /// Mutable access to the key deduplication (attach the index, commit).
    pub fn dedupe_mut(&mut self) -> &mut KeyDedupe {
        &mut self.dedupe
    }

    /// Serialises the state (snapshot body; see [`crate::snapshot`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            128 + crate::dedupe::ENCODED_LEN + self.chunks.len() * 24 + self.resolved.len() * 8,
        );
        b.put_u8(u8::from(self.work_queue) | (u8::from(self.dedupe_by_key) << 1));
        for v in [
            self.next_offset,
            self.start_offset,
            self.floor,
            self.word_base,
            self.acked_total,
            self.dead_lettered_total,
            self.deduplicated_total,
        ] {
            b.put_u64_le(v);
        }
        b.put_u64_le(self.chunks.len() as u64);
        for c in &self.chunks {
            b.put_u64_le(c.base_offset);
            b.put_u64_le(c.log_index);
            b.put_u32_le(c.count);
            match &c.kept {
                None => b.put_u8(0),
                Some(k) => {
                    b.put_u8(1);
                    for &p in k.iter() {
                        b.put_u32_le(p);
                    }
                }
            }
        }
        let mut producers: Vec<_> = self.producers.iter().collect();
        producers.sort_unstable_by_key(|(id, _)| **id);
        b.put_u64_le(producers.len() as u64);
        for (id, p) in producers {
            b.put_u64_le(*id);
            b.put_u64_le(p.last_sequence);
            b.put_u64_le(p.last_log_index);
            b.put_u32_le(p.recent.len() as u32);
            for m in &p.recent {
                b.put_u64_le(m.sequence);
                b.put_u64_le(m.base_offset);
                b.put_u32_le(m.stored);
                b.put_u32_le(m.deduplicated);
            }
        }
        self.dedupe.encode(&mut b);
        b.put_u64_le(self.resolved.len() as u64);
        for w in &self.resolved {
            b.put_u64_le(*w);
        }
        b.put_u64_le(self.attempts.len() as u64);
        for (o, a) in &self.attempts {
            b.put_u64_le(*o);
            b.put_u32_le(*a);
        }
        b
    }

    /// Inverse of [`Self::encode`].
    ///
    /// Errors: a description of the first malformed field.
    pub fn decode(buf: Bytes) -> Result<Self, String> {
        Self::decode_format(buf, crate::snapshot::FORMAT)
    }

    /// Decodes a body of snapshot format `format` (2: keys held in the state, migrated into the
    /// index when it is attached; 3: window counters only).
    ///
    /// Errors: a description of the first malformed field.
    pub fn decode_format(buf: Bytes, format: u8) -> Result<Self, String> {
        let mut r = Reader { buf };
        let flags = r.u8()?;
        let mut s = StreamState {
            work_queue: flags & 1 != 0,
            dedupe_by_key: flags & 2 != 0,
            next_offset: r.u64()?,
            start_offset: r.u64()?,
            floor: r.u64()?,
            word_base: r.u64()?,
            acked_total: r.u64()?,
            dead_lettered_total: r.u64()?,
            deduplicated_total: r.u64()?,
            chunks: VecDeque::new(),
            producers: HashMap::new(),
            dedupe: KeyDedupe::default(),
            resolved: VecDeque::new(),
            attempts: BTreeMap::new(),
        };
        let n = r.u64()? as usize;
        for _ in 0..n {
            let base_offset = r.u64()?;
            let log_index = r.u64()?;
            let count = r.u32()?;
            let kept = match r.u8()? {
                0 => None,
                _ => {
                    let mut k = Vec::with_capacity((count as usize).min(1 << 20));
                    for _ in 0..count {
                        k.push(r.u32()?);
                    }
                    Some(k.into_boxed_slice())
                }
            };
            s.chunks.push_back(Chunk {
                base_offset,
                log_index,
                count,
                kept,
            });
        }
        let n = r.u64()? as usize;
        for _ in 0..n {
            let id = r.u64()?;
            let mut p = ProducerEntry {
                last_sequence: r.u64()?,
                last_log_index: r.u64()?,
                recent: VecDeque::new(),
            };
            let m = r.u32()?;
            for _ in 0..m {
                p.recent.push_back(BatchMemo {
                    sequence: r.u64()?,
                    base_offset: r.u64()?,
                    stored: r.u32()?,
                    deduplicated: r.u32()?,
                });
            }
            s.producers.insert(id, p);
        }
        if format == 2 {
            let n = r.u64()? as usize;
            let mut keys = Vec::with_capacity(n.min(r.buf.len() / 24));
            for _ in 0..n {
                keys.push((r.u128()?, r.u64()?));
            }
            s.dedupe = KeyDedupe::from_legacy(keys);
        } else {
            s.dedupe = KeyDedupe::decode(&mut r)?;
        }
        let n = r.u64()? as usize;
        for _ in 0..n {
            s.resolved.push_back(r.u64()?);
        }
        let n = r.u64()? as usize;
        for _ in 0..n {
            let o = r.u64()?;
            s.attempts.insert(o, r.u32()?);
        }
        if !r.buf.is_empty() {
            return Err(format!("{} trailing bytes in state", r.buf.len()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txpipe_client::broker::v1::Record;

    fn spec(retention: Retention, dedupe: bool) -> StreamSpec {
        StreamSpec {
            name: "s".into(),
            retention,
            dedupe_by_key: dedupe,
            group: "workers".into(),
            dead_letter_stream: None,
        }
    }
    fn recs(keys: &[&str]) -> Vec<Record> {
        keys.iter()
            .map(|k| Record {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::from_static(b"v"),
                timestamp_us: 1,
            })
            .collect()
    }
    fn append(p: u64, s: u64, keys: &[&str]) -> Command {
        Command::Append {
            producer_id: p,
            sequence: s,
            records: recs(keys),
        }
    }
    fn appended(base: u64, stored: u32, dedup: u32, dup: bool) -> ApplyOutcome {
        ApplyOutcome::Appended {
            base_offset: base,
            stored,
            deduplicated: dedup,
            duplicate: dup,
            kept: None,
        }
    }

    #[test]
    fn idempotent_producer_table_answers_retries_and_rejects_gaps() {
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        let cases: Vec<(Command, ApplyOutcome)> = vec![
            (append(1, 1, &["a", "b"]), appended(0, 2, 0, false)),
            (append(1, 1, &["a", "b"]), appended(0, 2, 0, true)),
            (append(2, 1, &["c"]), appended(2, 1, 0, false)),
            (append(1, 2, &["d"]), appended(3, 1, 0, false)),
            (
                append(1, 4, &["e"]),
                ApplyOutcome::OutOfOrder {
                    producer_id: 1,
                    expected: 3,
                    got: 4,
                },
            ),
            (append(1, 2, &["d"]), appended(3, 1, 0, true)),
            (append(0, 0, &["f"]), appended(4, 1, 0, false)),
            (append(0, 0, &["f"]), appended(5, 1, 0, false)),
            (
                append(3, 2, &["g"]),
                ApplyOutcome::OutOfOrder {
                    producer_id: 3,
                    expected: 1,
                    got: 2,
                },
            ),
        ];
        for (i, (cmd, want)) in cases.into_iter().enumerate() {
            assert_eq!(s.apply(i as u64, &cmd), want, "case {i}");
        }
        assert_eq!(s.next_offset(), 6);
        assert_eq!(s.locate(3), Some((3, 0)));
        assert_eq!(s.locate(1), Some((0, 1)));
        assert_eq!(s.locate(6), None);
    }

    #[test]
    fn key_dedupe_drops_known_keys_and_maps_offsets_to_kept_positions() {
        let mut s = StreamState::new(&spec(Retention::Limits, true));
        assert_eq!(
            s.apply(0, &append(1, 1, &["a", "b"])),
            appended(0, 2, 0, false)
        );
        let out = s.apply(1, &append(1, 2, &["b", "c", "a", "d", ""]));
        assert_eq!(
            out,
            ApplyOutcome::Appended {
                base_offset: 2,
                stored: 3,
                deduplicated: 2,
                duplicate: false,
                kept: Some(vec![1, 3, 4].into_boxed_slice())
            }
        );
        assert_eq!(s.locate(2), Some((1, 1)));
        assert_eq!(s.locate(3), Some((1, 3)));
        assert_eq!(s.locate(4), Some((1, 4)));
        // Empty keys are never deduplicated.
        assert_eq!(s.apply(2, &append(0, 0, &[""])), appended(5, 1, 0, false));
        assert_eq!(s.deduplicated_total(), 2);
        // Retention does not forget keys: the window is by age and count (crate::dedupe).
        s.apply(3, &Command::Trim { start_offset: 2 });
        assert_eq!(s.locate(1), None);
        assert_eq!(
            s.apply(4, &append(0, 0, &["a", "c", "e"])),
            ApplyOutcome::Appended {
                base_offset: 6,
                stored: 1,
                deduplicated: 2,
                duplicate: false,
                kept: Some(vec![2].into_boxed_slice())
            }
        );
        // A batch of duplicates only is answered with the original offset.
        assert_eq!(
            s.apply(5, &append(0, 0, &["c"])),
            ApplyOutcome::Appended {
                base_offset: 2,
                stored: 0,
                deduplicated: 1,
                duplicate: false,
                kept: Some(Vec::new().into_boxed_slice())
            }
        );
    }

    #[test]
    fn acks_advance_the_floor_over_resolved_runs_only() {
        let mut s = StreamState::new(&spec(Retention::WorkQueue, false));
        let keys: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        s.apply(0, &append(0, 0, &keys));
        assert_eq!(s.pending(), 200);
        assert_eq!(
            s.apply(
                1,
                &Command::Ack {
                    offsets: vec![1, 2, 70, 70, 500]
                }
            ),
            ApplyOutcome::Resolved { count: 3 }
        );
        assert_eq!(s.ack_floor(), 0);
        assert_eq!(s.pending(), 197);
        assert_eq!(
            s.apply(2, &Command::Ack { offsets: vec![0] }),
            ApplyOutcome::Resolved { count: 1 }
        );
        assert_eq!(s.ack_floor(), 3);
        s.apply(
            3,
            &Command::Attempts {
                entries: vec![(3, 2), (1, 4)],
            },
        );
        assert_eq!(s.attempts().get(&3), Some(&2));
        assert_eq!(
            s.attempts().get(&1),
            None,
            "resolved offsets keep no attempts"
        );
        let rest: Vec<u64> = (3..130).filter(|o| *o != 70).collect();
        s.apply(4, &Command::Ack { offsets: rest });
        assert_eq!(s.ack_floor(), 130);
        assert!(s.attempts().is_empty());
        assert_eq!(
            s.apply(
                5,
                &Command::DeadLettered {
                    offsets: vec![130, 131],
                    reason: "x".into()
                }
            ),
            ApplyOutcome::Resolved { count: 2 }
        );
        assert_eq!(s.ack_floor(), 132);
        assert_eq!(s.acked_total(), 130);
        assert_eq!(s.dead_lettered_total(), 2);
        assert_eq!(s.pending(), 68);
        assert!(s.is_resolved(131) && !s.is_resolved(132));
        s.apply(6, &Command::Trim { start_offset: 128 });
        assert_eq!(s.pending(), 68);
    }

    #[test]
    fn state_round_trips_through_its_snapshot_encoding() {
        let mut s = StreamState::new(&spec(Retention::WorkQueue, true));
        s.apply(0, &append(9, 1, &["a", "b", "c"]));
        s.apply(1, &append(9, 2, &["a", "d"]));
        s.apply(
            2,
            &Command::Ack {
                offsets: vec![0, 2],
            },
        );
        s.apply(
            3,
            &Command::Attempts {
                entries: vec![(1, 3)],
            },
        );
        let d = StreamState::decode(Bytes::from(s.encode())).unwrap();
        assert_eq!(d, s);
        let mut e = s.encode();
        e.push(1);
        assert!(StreamState::decode(Bytes::from(e)).is_err());
    }

    #[test]
    fn producer_table_is_bounded_by_evicting_the_least_recent_producer() {
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        for p in 1..=(MAX_PRODUCERS as u64 + 1) {
            s.apply(p, &append(p, 1, &["k"]));
        }
        assert_eq!(s.producers.len(), MAX_PRODUCERS);
        assert!(!s.producers.contains_key(&1));
    }
}
