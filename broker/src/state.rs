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
//!
//! # Idempotent producers (KIP-98)
//!
//! `InitProducer { name }` registers a producer: the first time a name is seen it gets the next
//! id of the stream's counter (ids are never reused; 0 is reserved for non-idempotent appends)
//! and epoch 1; every later registration of the name bumps the epoch, restarts its sequences at
//! 1 and keeps its last acknowledged *position*, which the registration returns so the producer
//! can resume. An empty name registers an anonymous producer (a fresh id every time). An
//! `Append` with `producer_id != 0` is checked in this order:
//!
//! | condition | outcome |
//! |---|---|
//! | id not registered | [`ProducerReject::UnknownProducer`] |
//! | epoch below the registered one | [`ProducerReject::Fenced`] |
//! | epoch above the registered one | [`ProducerReject::UnknownEpoch`] |
//! | sequence = last + 1 (position not below the last one) | stored |
//! | sequence ≤ last, a remembered batch with the same checksum | duplicate, original offsets |
//! | sequence ≤ last, a remembered batch with another checksum | [`ProducerReject::SequenceReused`] |
//! | sequence ≤ last, older than the remembered batches | [`ProducerReject::SequenceTooOld`] |
//! | sequence > last + 1 | [`ProducerReject::SequenceGap`] |
//! | sequence = last + 1, position below the last one | [`ProducerReject::PositionRegressed`] |
//!
//! The last [`RECENT_BATCHES`] batches of each producer are remembered with a 64-bit checksum
//! of their records ([`crate::command::batch_checksum`]). Legacy `Append` entries (kind 1, from
//! logs written before registration existed) carry epoch 0: the first one of an id creates an
//! unnamed epoch-0 entry, and they follow the sequence rules without the checksum comparison, as
//! they did when they were first applied.
//!
//! The table holds at most [`MAX_PRODUCERS`] producers; registering or creating one more evicts
//! the least recently active one (by the log index of its last registration or stored batch)
//! together with its name. A name therefore keeps its id, epoch and position as long as fewer
//! than [`MAX_PRODUCERS`] other producers of the stream have been active since it last was.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{BufMut, Bytes};

use crate::command::{Command, Reader, batch_checksum, key_hash};
use crate::dedupe::KeyDedupe;
use crate::ledger::{LedgerReply, LedgerState};

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
    /// A ledger shard ([`crate::ledger`]): the state keeps a [`LedgerState`] that
    /// [`Command::Ledger`] entries change (other streams ignore those entries).
    pub ledger: bool,
}

/// Idempotent producers remembered per stream; beyond this the least recently active one is
/// forgotten with its name (a later registration of that name starts over at position 0 with a
/// new id, and batches of its old id are rejected as unknown).
pub const MAX_PRODUCERS: usize = 65_536;
/// Longest producer name, bytes.
pub const MAX_PRODUCER_NAME: usize = 256;
/// Recent batches remembered per producer, to answer retries with their original offsets:
/// as many as a producer may keep in flight ([`txpipe_client::produce::MAX_IN_FLIGHT`]), so a
/// resend after a failover is always answered. Only replies depend on it, never the state, so
/// replicas with different values (a rolling upgrade) stay identical.
pub const RECENT_BATCHES: usize = txpipe_client::produce::MAX_IN_FLIGHT;

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
    /// [`batch_checksum`] of the records (0 in memos read from `TXPSNAP2` snapshots).
    checksum: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ProducerEntry {
    /// Registered name; empty for anonymous and legacy producers.
    name: String,
    /// Current epoch (0: a legacy producer created by a kind-1 `Append`).
    epoch: u64,
    last_sequence: u64,
    /// Highest position of a stored batch (0: none).
    last_position: u64,
    last_log_index: u64,
    recent: VecDeque<BatchMemo>,
}

/// Why an idempotent producer's `Append` was refused (nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerReject {
    /// The id was never registered on this stream (or was evicted).
    UnknownProducer {
        /// Producer id.
        producer_id: u64,
    },
    /// A newer registration of the producer's name exists: this producer is fenced.
    Fenced {
        /// Producer id.
        producer_id: u64,
        /// Registered epoch.
        current: u64,
        /// Epoch of the batch.
        got: u64,
    },
    /// The batch names an epoch that was never handed out.
    UnknownEpoch {
        /// Producer id.
        producer_id: u64,
        /// Registered epoch.
        current: u64,
        /// Epoch of the batch.
        got: u64,
    },
    /// The sequence of a remembered batch with different records.
    SequenceReused {
        /// Producer id.
        producer_id: u64,
        /// The sequence.
        sequence: u64,
    },
    /// A sequence at or below the last one but older than every remembered batch.
    SequenceTooOld {
        /// Producer id.
        producer_id: u64,
        /// The sequence.
        sequence: u64,
        /// Oldest remembered sequence (last + 1 when none is remembered).
        oldest: u64,
        /// Last stored sequence.
        last: u64,
    },
    /// A skipped sequence.
    SequenceGap {
        /// Producer id.
        producer_id: u64,
        /// Next sequence accepted.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The batch's position is below the producer's last acknowledged position.
    PositionRegressed {
        /// Producer id.
        producer_id: u64,
        /// Last acknowledged position.
        last: u64,
        /// Position of the batch.
        got: u64,
    },
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
    /// An idempotent producer's batch was refused; nothing was stored.
    Rejected(ProducerReject),
    /// An `InitProducer` registered a producer.
    Registered {
        /// Producer id.
        producer_id: u64,
        /// Its new epoch.
        epoch: u64,
        /// Its last acknowledged position (0: none).
        last_position: u64,
    },
    /// Offsets newly resolved by an `Ack` or `DeadLettered` (already resolved or unknown ones
    /// are not counted).
    Resolved {
        /// Offsets newly resolved.
        count: u64,
    },
    /// A [`Command::Ledger`] applied to a ledger shard: the state machine's reply.
    Ledger(LedgerReply),
    /// Other commands (and a [`Command::Ledger`] on a stream that is not a ledger shard).
    Done,
}

/// Identity fields of an `Append`.
#[derive(Debug, Clone, Copy)]
struct BatchId {
    producer_id: u64,
    epoch: u64,
    sequence: u64,
    position: u64,
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
    /// Registered names → producer id (every id here is in `producers`).
    producer_names: HashMap<String, u64>,
    /// Next producer id to hand out (≥ 1).
    next_producer_id: u64,
    dedupe: KeyDedupe,
    floor: u64,
    word_base: u64,
    resolved: VecDeque<u64>,
    attempts: BTreeMap<u64, u32>,
    acked_total: u64,
    dead_lettered_total: u64,
    deduplicated_total: u64,
    /// The ledger of a ledger shard (boxed: most streams have none).
    ledger: Option<Box<LedgerState>>,
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
            producer_names: HashMap::new(),
            next_producer_id: 1,
            dedupe: KeyDedupe::default(),
            floor: 0,
            word_base: 0,
            resolved: VecDeque::new(),
            attempts: BTreeMap::new(),
            acked_total: 0,
            dead_lettered_total: 0,
            deduplicated_total: 0,
            ledger: spec.ledger.then(Box::default),
        }
    }

    /// The ledger of a ledger shard (`None` for other streams).
    pub fn ledger(&self) -> Option<&LedgerState> {
        self.ledger.as_deref()
    }

    /// Applies `cmd`, the entry at `log_index`. Deterministic: the same entries in the same
    /// order give the same state on every node.
    pub fn apply(&mut self, log_index: u64, cmd: &Command) -> ApplyOutcome {
        match cmd {
            Command::Append {
                producer_id,
                epoch,
                sequence,
                position,
                records,
            } => self.append(
                log_index,
                BatchId {
                    producer_id: *producer_id,
                    epoch: *epoch,
                    sequence: *sequence,
                    position: *position,
                },
                records,
            ),
            Command::InitProducer { name } => self.register(log_index, name),
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
            Command::Ledger { time_ns, command } => match &mut self.ledger {
                Some(l) => ApplyOutcome::Ledger(l.apply(command, *time_ns)),
                None => ApplyOutcome::Done,
            },
        }
    }

    /// Handles `InitProducer`: see the module docs.
    fn register(&mut self, log_index: u64, name: &str) -> ApplyOutcome {
        let existing = (!name.is_empty())
            .then(|| self.producer_names.get(name).copied())
            .flatten();
        let producer_id = match existing {
            Some(id) => id,
            None => {
                let id = self.new_producer(name.to_string(), 0);
                if !name.is_empty() {
                    self.producer_names.insert(name.to_string(), id);
                }
                id
            }
        };
        let p = self
            .producers
            .get_mut(&producer_id)
            .expect("registered names have entries");
        p.epoch += 1;
        p.last_sequence = 0;
        p.recent.clear();
        p.last_log_index = log_index;
        ApplyOutcome::Registered {
            producer_id,
            epoch: p.epoch,
            last_position: p.last_position,
        }
    }

    /// Inserts an empty producer entry: `id` when non-zero (legacy appends), else the next id
    /// of the counter. Evicts the least recently active producer when the table is full.
    fn new_producer(&mut self, name: String, id: u64) -> u64 {
        if self.producers.len() >= MAX_PRODUCERS
            && let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(id, p)| (p.last_log_index, **id))
                .map(|(id, _)| *id)
            && let Some(gone) = self.producers.remove(&oldest)
            && !gone.name.is_empty()
        {
            self.producer_names.remove(&gone.name);
        }
        let id = if id != 0 {
            id
        } else {
            while self.next_producer_id == 0 || self.producers.contains_key(&self.next_producer_id)
            {
                self.next_producer_id = self.next_producer_id.wrapping_add(1);
            }
            let id = self.next_producer_id;
            self.next_producer_id = id.wrapping_add(1);
            id
        };
        self.producers.insert(
            id,
            ProducerEntry {
                name,
                ..ProducerEntry::default()
            },
        );
        id
    }

    /// Checks an idempotent batch against the producer table (see the module docs).
    fn check_producer(&self, b: &BatchId, checksum: u64) -> Result<(), ApplyOutcome> {
        let reject = |r| Err(ApplyOutcome::Rejected(r));
        let producer_id = b.producer_id;
        let Some(p) = self.producers.get(&producer_id) else {
            return if b.epoch == 0 {
                // Legacy append: the first one creates the producer (as it did then).
                if b.sequence == 1 {
                    Ok(())
                } else {
                    reject(ProducerReject::SequenceGap {
                        producer_id,
                        expected: 1,
                        got: b.sequence,
                    })
                }
            } else {
                reject(ProducerReject::UnknownProducer { producer_id })
            };
        };
        if b.epoch < p.epoch {
            return reject(ProducerReject::Fenced {
                producer_id,
                current: p.epoch,
                got: b.epoch,
            });
        }
        if b.epoch > p.epoch {
            return reject(ProducerReject::UnknownEpoch {
                producer_id,
                current: p.epoch,
                got: b.epoch,
            });
        }
        let last = p.last_sequence;
        if b.sequence <= last {
            return match p.recent.iter().find(|m| m.sequence == b.sequence) {
                Some(m) if b.epoch == 0 || m.checksum == checksum => Err(ApplyOutcome::Appended {
                    base_offset: m.base_offset,
                    stored: m.stored,
                    deduplicated: m.deduplicated,
                    duplicate: true,
                    kept: None,
                }),
                Some(_) => reject(ProducerReject::SequenceReused {
                    producer_id,
                    sequence: b.sequence,
                }),
                None => reject(ProducerReject::SequenceTooOld {
                    producer_id,
                    sequence: b.sequence,
                    oldest: p.recent.front().map_or(last + 1, |m| m.sequence),
                    last,
                }),
            };
        }
        if b.sequence != last + 1 {
            return reject(ProducerReject::SequenceGap {
                producer_id,
                expected: last + 1,
                got: b.sequence,
            });
        }
        if b.position != 0 && b.position < p.last_position {
            return reject(ProducerReject::PositionRegressed {
                producer_id,
                last: p.last_position,
                got: b.position,
            });
        }
        Ok(())
    }

    fn append(
        &mut self,
        log_index: u64,
        b: BatchId,
        records: &[txpipe_client::broker::v1::Record],
    ) -> ApplyOutcome {
        let checksum = if b.producer_id != 0 {
            let c = batch_checksum(records);
            if let Err(outcome) = self.check_producer(&b, c) {
                return outcome;
            }
            c
        } else {
            0
        };
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
        if b.producer_id != 0 {
            if !self.producers.contains_key(&b.producer_id) {
                self.new_producer(String::new(), b.producer_id);
            }
            let p = self
                .producers
                .get_mut(&b.producer_id)
                .expect("checked or just created");
            p.last_sequence = b.sequence;
            p.last_position = p.last_position.max(b.position);
            p.last_log_index = log_index;
            while p.recent.len() >= RECENT_BATCHES {
                p.recent.pop_front();
            }
            p.recent.push_back(BatchMemo {
                sequence: b.sequence,
                base_offset,
                stored,
                deduplicated,
                checksum,
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
        b.put_u8(
            u8::from(self.work_queue)
                | (u8::from(self.dedupe_by_key) << 1)
                | (u8::from(self.ledger.is_some()) << 2),
        );
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
        b.put_u64_le(self.next_producer_id);
        b.put_u64_le(producers.len() as u64);
        for (id, p) in producers {
            for v in [
                *id,
                p.epoch,
                p.last_sequence,
                p.last_position,
                p.last_log_index,
            ] {
                b.put_u64_le(v);
            }
            b.put_u32_le(p.name.len() as u32);
            b.put_slice(p.name.as_bytes());
            b.put_u32_le(p.recent.len() as u32);
            for m in &p.recent {
                b.put_u64_le(m.sequence);
                b.put_u64_le(m.base_offset);
                b.put_u32_le(m.stored);
                b.put_u32_le(m.deduplicated);
                b.put_u64_le(m.checksum);
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
        if let Some(l) = &self.ledger {
            let e = l.encode();
            b.put_u64_le(e.len() as u64);
            b.put_slice(&e);
        }
        b
    }

    /// Inverse of [`Self::encode`] (the body of a `TXPSNAP3` snapshot).
    ///
    /// Errors: a description of the first malformed field.
    pub fn decode(buf: Bytes) -> Result<Self, String> {
        Self::decode_format(buf, crate::snapshot::FORMAT)
    }

    /// Decodes the state of a `TXPSNAP2` snapshot (before producer registration: producers
    /// without epoch, position, name or checksums, which become legacy epoch-0 producers;
    /// key-dedupe keys held in the state, migrated into the index when it is attached).
    ///
    /// Errors: a description of the first malformed field.
    pub fn decode_v2(buf: Bytes) -> Result<Self, String> {
        Self::decode_format(buf, 2)
    }

    /// Decodes a body of snapshot format `format`: 2 (see [`Self::decode_v2`]) or 3 (producer
    /// registrations; key-dedupe window counters only, the keys are in the index).
    ///
    /// Errors: a description of the first malformed field.
    pub fn decode_format(buf: Bytes, format: u8) -> Result<Self, String> {
        let v3 = format >= 3;
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
            producer_names: HashMap::new(),
            next_producer_id: 1,
            dedupe: KeyDedupe::default(),
            resolved: VecDeque::new(),
            attempts: BTreeMap::new(),
            ledger: None,
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
        if v3 {
            s.next_producer_id = r.u64()?;
        }
        let n = r.u64()? as usize;
        for _ in 0..n {
            let id = r.u64()?;
            let mut p = ProducerEntry::default();
            if v3 {
                p.epoch = r.u64()?;
                p.last_sequence = r.u64()?;
                p.last_position = r.u64()?;
                p.last_log_index = r.u64()?;
                p.name = String::from_utf8(r.bytes()?.to_vec())
                    .map_err(|_| format!("producer {id}: name is not UTF-8"))?;
            } else {
                p.last_sequence = r.u64()?;
                p.last_log_index = r.u64()?;
            }
            let m = r.u32()?;
            for _ in 0..m {
                p.recent.push_back(BatchMemo {
                    sequence: r.u64()?,
                    base_offset: r.u64()?,
                    stored: r.u32()?,
                    deduplicated: r.u32()?,
                    checksum: if v3 { r.u64()? } else { 0 },
                });
            }
            if !p.name.is_empty() && s.producer_names.insert(p.name.clone(), id).is_some() {
                return Err(format!("producer name {:?} registered twice", p.name));
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
        if flags & 4 != 0 {
            // Ledger shards (issue 15): the ledger's own snapshot encoding, length first.
            // Bodies written before ledgers existed never set this flag.
            let n = r.u64()?;
            if n > r.buf.len() as u64 {
                return Err(format!("ledger of {n} bytes in {} bytes", r.buf.len()));
            }
            let body = r.buf.split_to(n as usize);
            let l = LedgerState::decode(&body).map_err(|e| e.to_string())?;
            s.ledger = Some(Box::new(l));
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
            ledger: false,
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
    /// An append of registered producer `p` at epoch 1 (or non-idempotent for `p` 0).
    fn append(p: u64, s: u64, keys: &[&str]) -> Command {
        appendx(p, u64::from(p != 0), s, 0, keys)
    }
    fn appendx(p: u64, epoch: u64, s: u64, position: u64, keys: &[&str]) -> Command {
        Command::Append {
            producer_id: p,
            epoch,
            sequence: s,
            position,
            records: recs(keys),
        }
    }
    fn init(name: &str) -> Command {
        Command::InitProducer { name: name.into() }
    }
    fn registered(producer_id: u64, epoch: u64, last_position: u64) -> ApplyOutcome {
        ApplyOutcome::Registered {
            producer_id,
            epoch,
            last_position,
        }
    }
    fn rejected(r: ProducerReject) -> ApplyOutcome {
        ApplyOutcome::Rejected(r)
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

    /// Applies `cases` in order as log indexes 0, 1, ... and checks each outcome.
    fn run_table(s: &mut StreamState, cases: Vec<(Command, ApplyOutcome)>) {
        for (i, (cmd, want)) in cases.into_iter().enumerate() {
            assert_eq!(s.apply(i as u64, &cmd), want, "case {i}: {cmd:?}");
        }
    }

    #[test]
    fn registration_assigns_ids_once_per_name_and_a_new_epoch_each_time() {
        use ProducerReject::*;
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        run_table(
            &mut s,
            vec![
                (init("a"), registered(1, 1, 0)),
                (init("b"), registered(2, 1, 0)),
                (appendx(1, 1, 1, 10, &["x"]), appended(0, 1, 0, false)),
                (init("a"), registered(1, 2, 10)),
                // Anonymous registrations get a fresh id every time.
                (init(""), registered(3, 1, 0)),
                (init(""), registered(4, 1, 0)),
                (init("a"), registered(1, 3, 10)),
                (
                    appendx(1, 2, 1, 11, &["y"]),
                    rejected(Fenced {
                        producer_id: 1,
                        current: 3,
                        got: 2,
                    }),
                ),
                (appendx(1, 3, 1, 11, &["y"]), appended(1, 1, 0, false)),
            ],
        );
        assert_eq!(s.producers.len(), 4);
        assert_eq!(s.producer_names.len(), 2);
    }

    #[test]
    fn idempotent_appends_follow_the_fencing_and_sequence_rules() {
        use ProducerReject::*;
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        run_table(
            &mut s,
            vec![
                (init("p"), registered(1, 1, 0)),
                // Unknown id.
                (
                    appendx(7, 1, 1, 0, &["a"]),
                    rejected(UnknownProducer { producer_id: 7 }),
                ),
                // sequence = last + 1: stored.
                (appendx(1, 1, 1, 2, &["a", "b"]), appended(0, 2, 0, false)),
                // Exact retry: duplicate with the original offsets.
                (appendx(1, 1, 1, 2, &["a", "b"]), appended(0, 2, 0, true)),
                // Same sequence, other records: refused, not a silent duplicate.
                (
                    appendx(1, 1, 1, 2, &["a", "c"]),
                    rejected(SequenceReused {
                        producer_id: 1,
                        sequence: 1,
                    }),
                ),
                // A skipped sequence.
                (
                    appendx(1, 1, 3, 5, &["d"]),
                    rejected(SequenceGap {
                        producer_id: 1,
                        expected: 2,
                        got: 3,
                    }),
                ),
                // An epoch never handed out.
                (
                    appendx(1, 2, 2, 5, &["d"]),
                    rejected(UnknownEpoch {
                        producer_id: 1,
                        current: 1,
                        got: 2,
                    }),
                ),
                // Position going backwards.
                (
                    appendx(1, 1, 2, 1, &["d"]),
                    rejected(PositionRegressed {
                        producer_id: 1,
                        last: 2,
                        got: 1,
                    }),
                ),
                // Position 0 = none: allowed, keeps the last one.
                (appendx(1, 1, 2, 0, &["d"]), appended(2, 1, 0, false)),
                // Non-idempotent appends are never deduplicated.
                (appendx(0, 0, 0, 0, &["f"]), appended(3, 1, 0, false)),
                (appendx(0, 0, 0, 0, &["f"]), appended(4, 1, 0, false)),
                // A re-registration: new epoch, position kept, sequences restart at 1.
                (init("p"), registered(1, 2, 2)),
                (
                    appendx(1, 1, 3, 9, &["g"]),
                    rejected(Fenced {
                        producer_id: 1,
                        current: 2,
                        got: 1,
                    }),
                ),
                (
                    appendx(1, 2, 2, 9, &["g"]),
                    rejected(SequenceGap {
                        producer_id: 1,
                        expected: 1,
                        got: 2,
                    }),
                ),
                (appendx(1, 2, 1, 9, &["g"]), appended(5, 1, 0, false)),
            ],
        );
        assert_eq!(s.next_offset(), 6);
        assert_eq!(s.locate(5), Some((14, 0)));
        assert_eq!(s.locate(1), Some((2, 1)));
        assert_eq!(s.locate(6), None);
    }

    #[test]
    fn retries_older_than_the_remembered_batches_are_out_of_range() {
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        s.apply(0, &init("p"));
        let n = RECENT_BATCHES as u64 + 2;
        for q in 1..=n {
            let k = format!("k{q}");
            assert_eq!(
                s.apply(q, &appendx(1, 1, q, q, &[&k])),
                appended(q - 1, 1, 0, false)
            );
        }
        // The newest RECENT_BATCHES are answered as duplicates, older ones are out of range.
        let oldest = n - RECENT_BATCHES as u64 + 1;
        let k = format!("k{oldest}");
        assert_eq!(
            s.apply(100, &appendx(1, 1, oldest, oldest, &[&k])),
            appended(oldest - 1, 1, 0, true)
        );
        assert_eq!(
            s.apply(101, &appendx(1, 1, 2, 2, &["k2"])),
            rejected(ProducerReject::SequenceTooOld {
                producer_id: 1,
                sequence: 2,
                oldest,
                last: n,
            })
        );
    }

    #[test]
    fn legacy_appends_without_epoch_keep_their_old_rules() {
        // Kind-1 entries of logs written before registration: epoch 0, ids chosen by clients.
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        run_table(
            &mut s,
            vec![
                (appendx(42, 0, 1, 0, &["a"]), appended(0, 1, 0, false)),
                (appendx(42, 0, 1, 0, &["a"]), appended(0, 1, 0, true)),
                (appendx(42, 0, 2, 0, &["b"]), appended(1, 1, 0, false)),
                (
                    appendx(43, 0, 2, 0, &["c"]),
                    rejected(ProducerReject::SequenceGap {
                        producer_id: 43,
                        expected: 1,
                        got: 2,
                    }),
                ),
                // Registrations after them never hand out a legacy id.
                (init("new"), registered(1, 1, 0)),
            ],
        );
        let mut t = StreamState::new(&spec(Retention::Limits, false));
        t.next_producer_id = 42;
        t.apply(0, &appendx(42, 0, 1, 0, &["a"]));
        assert_eq!(t.apply(1, &init("x")), registered(43, 1, 0));
    }

    #[test]
    fn key_dedupe_drops_known_keys_and_maps_offsets_to_kept_positions() {
        let mut s = StreamState::new(&spec(Retention::Limits, true));
        s.apply(9, &init("p"));
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
        s.apply(10, &init("p"));
        s.apply(11, &init(""));
        s.apply(0, &appendx(1, 1, 1, 3, &["a", "b", "c"]));
        s.apply(1, &appendx(1, 1, 2, 5, &["a", "d"]));
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
        assert_eq!(d.producer_names.get("p"), Some(&1));
        assert_eq!(d.next_producer_id, 3);
        let mut e = s.encode();
        e.push(1);
        assert!(StreamState::decode(Bytes::from(e)).is_err());
    }

    #[test]
    fn a_ledger_shard_applies_ledger_commands_and_snapshots_its_ledger() {
        use crate::ledger::{Account, CreateAccountResult, LedgerCommand, LedgerReply};
        let mut spec = spec(Retention::Limits, false);
        let create = Command::Ledger {
            time_ns: 1_000,
            command: LedgerCommand::CreateAccounts(vec![Account {
                id: 7,
                ledger: 1,
                code: 1,
                ..Account::default()
            }]),
        };
        // Not a ledger shard: the entry changes nothing.
        let mut plain = StreamState::new(&spec);
        assert_eq!(plain.apply(0, &create), ApplyOutcome::Done);
        assert!(plain.ledger().is_none());
        spec.ledger = true;
        let mut s = StreamState::new(&spec);
        assert_eq!(
            s.apply(0, &create),
            ApplyOutcome::Ledger(LedgerReply::Accounts(vec![(0, CreateAccountResult::Ok)]))
        );
        assert_eq!(
            s.apply(1, &create),
            ApplyOutcome::Ledger(LedgerReply::Accounts(vec![(
                0,
                CreateAccountResult::Exists
            )]))
        );
        let d = StreamState::decode(Bytes::from(s.encode())).unwrap();
        assert_eq!(d, s);
        assert_eq!(
            d.ledger().map(|l| l.state_hash()),
            s.ledger().map(|l| l.state_hash())
        );
        // A body without the ledger flag (written before ledgers) still decodes.
        let old = StreamState::decode(Bytes::from(plain.encode())).unwrap();
        assert!(old.ledger().is_none());
        // A truncated or damaged ledger is an error, not a panic.
        let mut e = s.encode();
        e.truncate(e.len() - 3);
        assert!(StreamState::decode(Bytes::from(e)).is_err());
        // Ledger entries round-trip; garbage in one is a decode error.
        let b = create.encode();
        assert_eq!(b.len(), create.encoded_len());
        assert_eq!(Command::decode(b.clone()), Ok(create));
        let mut g = b.to_vec();
        g[14] = 99;
        assert!(Command::decode(Bytes::from(g)).is_err());
    }

    #[test]
    fn producer_table_is_bounded_by_evicting_the_least_recent_producer() {
        let mut s = StreamState::new(&spec(Retention::Limits, false));
        s.apply(0, &init("p1"));
        s.apply(1, &appendx(1, 1, 1, 7, &["k"]));
        for i in 2..=(MAX_PRODUCERS as u64) {
            s.apply(i, &init(&format!("p{i}")));
        }
        assert_eq!(s.producers.len(), MAX_PRODUCERS);
        // "p1" was last active at index 1, before every other producer: it goes first.
        s.apply(1_000_000, &init("one-more"));
        assert_eq!(s.producers.len(), MAX_PRODUCERS);
        assert_eq!(s.producer_names.len(), MAX_PRODUCERS);
        assert!(!s.producers.contains_key(&1));
        assert!(!s.producer_names.contains_key("p1"));
        // A forgotten name starts over under a new id; its old id is unknown.
        assert_eq!(
            s.apply(1_000_001, &init("p1")),
            registered(MAX_PRODUCERS as u64 + 2, 1, 0)
        );
        assert_eq!(
            s.apply(1_000_002, &appendx(1, 1, 2, 8, &["k"])),
            rejected(ProducerReject::UnknownProducer { producer_id: 1 })
        );
    }

    #[test]
    fn a_v2_snapshot_state_decodes_with_legacy_producers() {
        // The TXPSNAP2 state layout: flags, 7 counters, chunks, producers (id, last sequence,
        // last log index, memos of 24 bytes), keys, resolved words, attempts.
        let mut b: Vec<u8> = vec![0];
        for v in [1u64, 0, 0, 0, 0, 0, 0] {
            b.put_u64_le(v);
        }
        // One chunk: offset 0 in entry 0, 1 record.
        b.put_u64_le(1);
        b.put_u64_le(0);
        b.put_u64_le(0);
        b.put_u32_le(1);
        b.put_u8(0);
        // One producer: id 77, last sequence 1, last log index 0, one memo.
        b.put_u64_le(1);
        b.put_u64_le(77);
        b.put_u64_le(1);
        b.put_u64_le(0);
        b.put_u32_le(1);
        b.put_u64_le(1);
        b.put_u64_le(0);
        b.put_u32_le(1);
        b.put_u32_le(0);
        // No keys, resolved words or attempts.
        b.put_u64_le(0);
        b.put_u64_le(0);
        b.put_u64_le(0);
        let mut s = StreamState::decode_v2(Bytes::from(b)).unwrap();
        assert_eq!(s.next_offset(), 1);
        // The legacy producer's retry is still a duplicate; its next batch is stored.
        assert_eq!(
            s.apply(1, &appendx(77, 0, 1, 0, &["other"])),
            appended(0, 1, 0, true)
        );
        assert_eq!(
            s.apply(2, &appendx(77, 0, 2, 0, &["b"])),
            appended(1, 1, 0, false)
        );
        // A registration hands out id 1, not 77.
        assert_eq!(s.apply(3, &init("n")), registered(1, 1, 0));
    }
}
