//! The pure stream state machine ([`StreamState`]) against a small reference model (issue 12:
//! "proptest of the stream state machine against a simple reference model").
//!
//! [`Model`] is written from the documented semantics (the module docs of
//! `txpipe_broker::state`, `txpipe_broker::command` and `txpipe_broker::dedupe`) with plain
//! vectors, maps and sets: every stored offset's place, the set of resolved offsets, each
//! producer's remembered batches with their records (compared record by record, not by
//! checksum), the live keys of the dedupe window as a queue. Proptest generates sequences of
//! commands over small alphabets (four producer names, a few legacy ids, five keys, offsets
//! near the ack floor), so that retries, reused and stale sequences, fenced epochs,
//! out-of-order and repeated acks and duplicate keys are common; bulk batches and runs of
//! acks move the ack floor across the 64-offset words of the resolved bitmap. Each command
//! is applied to [`StreamState::apply`] (increasing log indexes) and to the model, and after
//! every step the test compares:
//!
//! - the outcome (stored offsets, kept positions, duplicate, the reject kind and its fields,
//!   registrations, resolved counts);
//! - next and start offset, ack floor, pending count, which offsets are resolved, persisted
//!   attempts, acked / dead-lettered / deduplicated totals, and where every offset is stored
//!   ([`StreamState::locate`]: log index and position in the entry);
//! - the producer table, through the public API only: probe commands applied to copies of
//!   both (an impossible epoch reveals the registered one, an impossible sequence the next
//!   one, every recent sequence whether and how it is remembered, position 1 whether the last
//!   position is above it, a re-registration the id, epoch and position of each name and an
//!   anonymous registration the next id handed out). Probes that are refused or answered as
//!   duplicates must leave the state unchanged;
//! - for streams with `dedupe_by_key`: the live keys, keys inserted, the window cursor, the
//!   leader clock and the window in force.
//!
//! A `Snapshot` step encodes the state, decodes it, requires the copy to be equal and then
//! applies every later command to the copy too, requiring the same outcomes and an equal
//! state. Both retention kinds are generated (acks, dead letters and the ack floor only mean
//! something for work queues; attempts are kept for both).
//!
//! Where the docs are silent the model takes the reading below, which `StreamState` shares:
//! offsets below the start offset can still be acked (else a `Trim` past the ack floor would
//! hold the floor forever), and an `Attempts` entry for such an offset is kept (a `Trim`
//! drops the attempts below it, a later `Attempts` is not checked against the start); a
//! persisted attempt count only grows; a `Clock` that shrinks `max_keys` evicts at once
//! ("at most this many keys are remembered"); a key exactly `max_age_ms` old is gone (the
//! boundary of the unit test `keys_are_evicted_by_count_then_by_leader_age` in `dedupe.rs`).
//!
//! Not covered here: eviction of the least recently active producer beyond
//! `MAX_PRODUCERS` (65,536 producers; the unit test in `state.rs` covers it), a legacy
//! (epoch 0) `Append` with sequence 0 for an id not in the table (the docs do not say which
//! rejection it gets), snapshots of format 2 ([`StreamState::decode_v2`]), crash consistency
//! of the on-disk key index (the proptest in `dedupe.rs`), a leader clock of 0 ms, 64-bit
//! checksum and 128-bit key hash collisions, and the exact chunk layout of the offset map
//! (only through `locate`). The key index lives in redb's in-memory backend, shared by the
//! state and its snapshot copy; it is committed after every command.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use txpipe_broker::command::Command;
use txpipe_broker::dedupe::{DedupeIndex, Window};
use txpipe_broker::state::{
    ApplyOutcome, ProducerReject, RECENT_BATCHES, Retention, StreamSpec, StreamState,
};
use txpipe_client::broker::v1::Record;

/// Record keys of generated batches (`""`: a record without key, never deduplicated).
const KEYS: [&str; 5] = ["", "a", "b", "c", "d"];
/// Record values of generated batches.
const VALUES: [&str; 2] = ["x", "y"];
/// Producer names of generated registrations (`""`: an anonymous producer).
const NAMES: [&str; 4] = ["", "p", "q", "r"];

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// A batch an idempotent producer stored, remembered to answer its retries.
#[derive(Debug, Clone)]
struct Memo {
    /// Its sequence.
    sequence: u64,
    /// Its records, compared in full with a retry's.
    records: Vec<Record>,
    /// What the batch was answered with.
    base_offset: u64,
    /// Records stored.
    stored: u32,
    /// Records dropped by key dedupe.
    deduplicated: u32,
}

/// One entry of the model's producer table.
#[derive(Debug, Clone, Default)]
struct Producer {
    /// Registered name (empty: anonymous or legacy).
    name: String,
    /// Current epoch (0: created by a legacy append).
    epoch: u64,
    /// Last stored sequence of the current epoch (0: none).
    last_sequence: u64,
    /// Highest position of a stored batch (0: none).
    last_position: u64,
    /// The last [`RECENT_BATCHES`] stored batches of the current epoch, oldest first.
    recent: Vec<Memo>,
}

/// A key remembered by the dedupe window.
#[derive(Debug, Clone)]
struct LiveKey {
    /// The record key.
    key: Bytes,
    /// Leader clock when it was inserted (0: before the first `Clock`).
    time_ms: u64,
    /// Offset of the record that inserted it.
    offset: u64,
}

/// The key-dedupe window of a `dedupe_by_key` stream: the live keys in insertion order.
#[derive(Debug, Clone)]
struct KeyWindow {
    /// Live keys, oldest first (eviction is by insertion order).
    live: VecDeque<LiveKey>,
    /// Keys inserted so far.
    inserted: u64,
    /// Highest leader clock seen, ms (0: none yet).
    clock_ms: u64,
    /// The first leader clock seen (keys inserted before it count their age from it).
    first_clock_ms: u64,
    /// The window of the last `Clock` (the defaults before one).
    window: Window,
}

impl KeyWindow {
    /// An empty window with the default limits.
    fn new() -> Self {
        Self {
            live: VecDeque::new(),
            inserted: 0,
            clock_ms: 0,
            first_clock_ms: 0,
            window: Window::default(),
        }
    }

    /// The offset of the record that inserted `key`, when it is live.
    fn lookup(&self, key: &[u8]) -> Option<u64> {
        self.live.iter().find(|k| k.key == key).map(|k| k.offset)
    }

    /// Remembers `key`, stored at `offset`, then forgets the oldest keys beyond the count limit.
    fn insert(&mut self, key: Bytes, offset: u64) {
        self.live.push_back(LiveKey {
            key,
            time_ms: self.clock_ms,
            offset,
        });
        self.inserted += 1;
        self.evict_by_count();
    }

    /// Forgets the oldest keys beyond `max_keys`.
    fn evict_by_count(&mut self) {
        while self.live.len() as u64 > self.window.max_keys {
            self.live.pop_front();
        }
    }

    /// A leader `Clock`: time never goes back; the stamped window applies from now on; keys
    /// at least `max_age_ms` old are forgotten (the boundary of the `dedupe.rs` unit test
    /// `keys_are_evicted_by_count_then_by_leader_age`: 7 days old with a 7-day window is gone).
    fn tick(&mut self, unix_ms: u64, window: Window) {
        self.window = window;
        self.clock_ms = self.clock_ms.max(unix_ms);
        if self.first_clock_ms == 0 {
            self.first_clock_ms = self.clock_ms;
        }
        self.evict_by_count();
        while let Some(k) = self.live.front() {
            let born = k.time_ms.max(self.first_clock_ms);
            if self.clock_ms > 0 && born + window.max_age_ms <= self.clock_ms {
                self.live.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The reference model of one stream.
#[derive(Debug, Clone)]
struct Model {
    /// Work-queue retention (acks mean something).
    work_queue: bool,
    /// Offset of the next stored record.
    next_offset: u64,
    /// First offset not trimmed.
    start_offset: u64,
    /// `(log index of the Append, position in its record list)` of every offset ever stored.
    placed: Vec<(u64, u32)>,
    /// Producer table by id.
    producers: BTreeMap<u64, Producer>,
    /// Registered names.
    names: HashMap<String, u64>,
    /// The id counter: registrations hand out the next id not in the table from here on.
    next_id: u64,
    /// Acked or dead-lettered offsets (work queues).
    resolved: BTreeSet<u64>,
    /// Persisted delivery attempts.
    attempts: BTreeMap<u64, u32>,
    /// Offsets acked so far.
    acked_total: u64,
    /// Offsets dead-lettered so far.
    dead_lettered_total: u64,
    /// Records dropped by key dedupe so far.
    deduplicated_total: u64,
    /// The key window of a `dedupe_by_key` stream.
    keys: Option<KeyWindow>,
}

impl Model {
    /// An empty stream.
    fn new(spec: &StreamSpec) -> Self {
        Self {
            work_queue: spec.retention == Retention::WorkQueue,
            next_offset: 0,
            start_offset: 0,
            placed: Vec::new(),
            producers: BTreeMap::new(),
            names: HashMap::new(),
            next_id: 1,
            resolved: BTreeSet::new(),
            attempts: BTreeMap::new(),
            acked_total: 0,
            dead_lettered_total: 0,
            deduplicated_total: 0,
            keys: spec.dedupe_by_key.then(KeyWindow::new),
        }
    }

    /// Whether `offset` is acked or dead-lettered (never on a limits stream).
    fn is_resolved(&self, offset: u64) -> bool {
        self.work_queue && self.resolved.contains(&offset)
    }

    /// Lowest offset neither acked nor dead-lettered (0 on a limits stream).
    fn ack_floor(&self) -> u64 {
        if !self.work_queue {
            return 0;
        }
        (0..).find(|o| !self.resolved.contains(o)).unwrap_or(0)
    }

    /// Work-queue offsets stored and not resolved.
    fn pending(&self) -> u64 {
        if self.work_queue {
            self.next_offset - self.resolved.len() as u64
        } else {
            0
        }
    }

    /// Where `offset` is stored, when it is stored and not trimmed.
    fn locate(&self, offset: u64) -> Option<(u64, u32)> {
        (offset >= self.start_offset && offset < self.next_offset)
            .then(|| self.placed[offset as usize])
    }

    /// An id not in the table (probes and appends of unknown producers).
    fn unknown_id(&self) -> u64 {
        self.producers.keys().next_back().map_or(1, |id| id + 1)
    }

    /// Applies one command.
    fn apply(&mut self, log_index: u64, cmd: &Command) -> ApplyOutcome {
        match cmd {
            Command::Append {
                producer_id,
                epoch,
                sequence,
                position,
                records,
            } => {
                if *producer_id != 0
                    && let Err(answer) =
                        self.check(*producer_id, *epoch, *sequence, *position, records)
                {
                    return answer;
                }
                self.store(log_index, *producer_id, *sequence, *position, records)
            }
            Command::InitProducer { name } => self.register(name),
            Command::Ack { offsets } => {
                let count = self.resolve(offsets);
                self.acked_total += count;
                ApplyOutcome::Resolved { count }
            }
            Command::DeadLettered { offsets, .. } => {
                let count = self.resolve(offsets);
                self.dead_lettered_total += count;
                ApplyOutcome::Resolved { count }
            }
            Command::Attempts { entries } => {
                for &(offset, attempts) in entries {
                    if offset < self.next_offset && !self.is_resolved(offset) {
                        let a = self.attempts.entry(offset).or_default();
                        *a = (*a).max(attempts);
                    }
                }
                ApplyOutcome::Done
            }
            Command::Trim { start_offset } => {
                let start = (*start_offset).min(self.next_offset);
                if start > self.start_offset {
                    self.start_offset = start;
                    self.attempts.retain(|o, _| *o >= start);
                }
                ApplyOutcome::Done
            }
            // The model streams are not ledger shards: a ledger entry changes nothing.
            Command::Ledger { .. } => ApplyOutcome::Done,
            Command::Clock {
                unix_ms,
                dedupe_max_age_ms,
                dedupe_max_keys,
            } => {
                if let Some(k) = self.keys.as_mut() {
                    k.tick(
                        *unix_ms,
                        Window {
                            max_age_ms: *dedupe_max_age_ms,
                            max_keys: *dedupe_max_keys,
                        },
                    );
                }
                ApplyOutcome::Done
            }
        }
    }

    /// `InitProducer`: a known name keeps its id, anything else gets a new one; the epoch
    /// goes up by one, sequences restart and the position is kept.
    fn register(&mut self, name: &str) -> ApplyOutcome {
        let known = if name.is_empty() {
            None
        } else {
            self.names.get(name).copied()
        };
        let id = known.unwrap_or_else(|| {
            let mut id = self.next_id;
            while self.producers.contains_key(&id) {
                id += 1;
            }
            self.next_id = id + 1;
            self.producers.insert(
                id,
                Producer {
                    name: name.to_string(),
                    ..Producer::default()
                },
            );
            if !name.is_empty() {
                self.names.insert(name.to_string(), id);
            }
            id
        });
        let p = self.producers.get_mut(&id).expect("just found or inserted");
        p.epoch += 1;
        p.last_sequence = 0;
        p.recent.clear();
        ApplyOutcome::Registered {
            producer_id: id,
            epoch: p.epoch,
            last_position: p.last_position,
        }
    }

    /// The producer table's verdict on an idempotent batch: `Err` with the answer when it is
    /// not stored (the table of the `state` module docs, in its order).
    fn check(
        &self,
        id: u64,
        epoch: u64,
        sequence: u64,
        position: u64,
        records: &[Record],
    ) -> Result<(), ApplyOutcome> {
        use ProducerReject::*;
        let no = |r| Err(ApplyOutcome::Rejected(r));
        let Some(p) = self.producers.get(&id) else {
            // A legacy append creates its producer with its first sequence.
            return match (epoch, sequence) {
                (0, 1) => Ok(()),
                (0, got) => no(SequenceGap {
                    producer_id: id,
                    expected: 1,
                    got,
                }),
                _ => no(UnknownProducer { producer_id: id }),
            };
        };
        if epoch < p.epoch {
            return no(Fenced {
                producer_id: id,
                current: p.epoch,
                got: epoch,
            });
        }
        if epoch > p.epoch {
            return no(UnknownEpoch {
                producer_id: id,
                current: p.epoch,
                got: epoch,
            });
        }
        let last = p.last_sequence;
        if sequence <= last {
            return match p.recent.iter().find(|m| m.sequence == sequence) {
                // Legacy producers compare sequences only.
                Some(m) if epoch == 0 || m.records == records => Err(ApplyOutcome::Appended {
                    base_offset: m.base_offset,
                    stored: m.stored,
                    deduplicated: m.deduplicated,
                    duplicate: true,
                    kept: None,
                }),
                Some(_) => no(SequenceReused {
                    producer_id: id,
                    sequence,
                }),
                None => no(SequenceTooOld {
                    producer_id: id,
                    sequence,
                    oldest: p.recent.first().map_or(last + 1, |m| m.sequence),
                    last,
                }),
            };
        }
        if sequence > last + 1 {
            return no(SequenceGap {
                producer_id: id,
                expected: last + 1,
                got: sequence,
            });
        }
        if position != 0 && position < p.last_position {
            return no(PositionRegressed {
                producer_id: id,
                last: p.last_position,
                got: position,
            });
        }
        Ok(())
    }

    /// Stores an accepted batch: dense offsets, key dedupe, the producer's memo.
    fn store(
        &mut self,
        log_index: u64,
        id: u64,
        sequence: u64,
        position: u64,
        records: &[Record],
    ) -> ApplyOutcome {
        let first = self.next_offset;
        let mut kept_positions = Vec::new();
        let mut first_original = None;
        for (i, r) in records.iter().enumerate() {
            let offset = first + kept_positions.len() as u64;
            if let Some(k) = self.keys.as_mut().filter(|_| !r.key.is_empty()) {
                if let Some(original) = k.lookup(&r.key) {
                    first_original.get_or_insert(original);
                    continue;
                }
                k.insert(r.key.clone(), offset);
            }
            kept_positions.push(i as u32);
            self.placed.push((log_index, i as u32));
        }
        let stored = kept_positions.len() as u32;
        let deduplicated = records.len() as u32 - stored;
        self.next_offset += u64::from(stored);
        self.deduplicated_total += u64::from(deduplicated);
        // A batch of duplicates only is answered with the first duplicate's original offset.
        let base_offset = match first_original {
            Some(o) if stored == 0 => o,
            _ => first,
        };
        let kept = (deduplicated > 0).then(|| kept_positions.into_boxed_slice());
        if id != 0 {
            let p = self.producers.entry(id).or_default();
            p.last_sequence = sequence;
            p.last_position = p.last_position.max(position);
            p.recent.push(Memo {
                sequence,
                records: records.to_vec(),
                base_offset,
                stored,
                deduplicated,
            });
            if p.recent.len() > RECENT_BATCHES {
                p.recent.remove(0);
            }
        }
        ApplyOutcome::Appended {
            base_offset,
            stored,
            deduplicated,
            duplicate: false,
            kept,
        }
    }

    /// Resolves the stored, unresolved ones of `offsets` (work queues); returns how many.
    fn resolve(&mut self, offsets: &[u64]) -> u64 {
        let mut count = 0;
        for &o in offsets {
            if self.work_queue && o < self.next_offset && self.resolved.insert(o) {
                self.attempts.remove(&o);
                count += 1;
            }
        }
        count
    }
}

// ---------------------------------------------------------------------------------------------
// Generated steps
// ---------------------------------------------------------------------------------------------

/// A generated record: indexes into [`KEYS`] and [`VALUES`].
type Rec = (usize, usize);

/// The epoch of a generated idempotent batch, relative to the producer's.
#[derive(Debug, Clone, Copy)]
enum EpochPick {
    /// The registered epoch.
    Current,
    /// One below (fenced).
    Older,
    /// One above (never handed out).
    Newer,
    /// Epoch 0 (a legacy batch).
    Zero,
}

/// The sequence of a generated batch, relative to the producer's last one.
#[derive(Debug, Clone, Copy)]
enum SeqPick {
    /// Last + 1.
    Next,
    /// Last − k (a retry or a reused sequence; 0 when k ≥ last).
    Back(u64),
    /// Last + 2 + k (a gap).
    Ahead(u64),
    /// Sequence 0.
    Zero,
}

/// The position of a generated batch, relative to the producer's last one.
#[derive(Debug, Clone, Copy)]
enum PosPick {
    /// The last position.
    Keep,
    /// Last + 1 + k.
    Up(u64),
    /// Last − 1 − k (saturating).
    Down(u64),
    /// 0 (no position).
    Unset,
}

/// A generated offset of an `Ack`, `DeadLettered` or `Attempts`.
#[derive(Debug, Clone, Copy)]
enum OffsetPick {
    /// The ack floor + `k % 4`.
    NearFloor(u64),
    /// `k % (next offset + 3)`: any stored offset or just past the last one.
    Anywhere(u64),
    /// `u64::MAX`.
    Max,
}

impl OffsetPick {
    /// The offset this pick names in the model's current state.
    fn offset(self, m: &Model) -> u64 {
        match self {
            OffsetPick::NearFloor(k) => m.ack_floor() + k % 4,
            OffsetPick::Anywhere(k) => k % (m.next_offset + 3),
            OffsetPick::Max => u64::MAX,
        }
    }
}

/// The [`Op::Produce`] `who` that names an id not in the table (1 in 10).
const UNKNOWN_WHO: usize = 9;

/// One generated step, turned into a [`Command`] against the model's state by [`command`].
#[derive(Debug, Clone)]
enum Op {
    /// `InitProducer` of `NAMES[i]`.
    Init(usize),
    /// An idempotent batch of a producer in the table (or of an unknown id). With `retry`,
    /// the records of the remembered batch with the chosen sequence when there is one (an
    /// exact retry), else `batch`.
    Produce {
        /// Index into the table's ids (modulo its length); [`UNKNOWN_WHO`]: an unknown id.
        who: usize,
        /// Epoch.
        epoch: EpochPick,
        /// Sequence.
        seq: SeqPick,
        /// Position.
        position: PosPick,
        /// Resend a remembered batch.
        retry: bool,
        /// Records otherwise.
        batch: Vec<Rec>,
    },
    /// A legacy batch (epoch 0, position 0) of producer id `id`.
    Legacy {
        /// Producer id (small: collides with registered ids).
        id: u64,
        /// Sequence (at least 1 for an id not in the table).
        seq: SeqPick,
        /// Resend a remembered batch.
        retry: bool,
        /// Records otherwise.
        batch: Vec<Rec>,
    },
    /// A non-idempotent batch.
    Plain(Vec<Rec>),
    /// A non-idempotent batch of this many records without key (offsets past a word of the
    /// resolved bitmap).
    Bulk(usize),
    /// `Ack`.
    Ack(Vec<OffsetPick>),
    /// `Ack` of the `len` offsets from the ack floor + `skip`, highest first when `reverse`.
    AckRun {
        /// Offsets above the floor left out.
        skip: u64,
        /// Offsets acked.
        len: u64,
        /// Highest first.
        reverse: bool,
    },
    /// `DeadLettered`.
    DeadLetter(Vec<OffsetPick>),
    /// `Attempts`.
    Attempts(Vec<(OffsetPick, u32)>),
    /// `Trim` to `k % (next offset + 3)`.
    Trim(u64),
    /// `Clock`: the leader clock moves by `step_ms` (it may go back), with this window.
    Clock {
        /// Clock change, ms.
        step_ms: i64,
        /// Window age, ms.
        max_age_ms: u64,
        /// Window count.
        max_keys: u64,
    },
    /// Encode and decode the state; from here on the copy must behave the same.
    Snapshot,
}

/// Records of a generated batch.
fn records(batch: &[Rec]) -> Vec<Record> {
    batch
        .iter()
        .map(|&(k, v)| Record {
            key: Bytes::from_static(KEYS[k].as_bytes()),
            value: Bytes::from_static(VALUES[v].as_bytes()),
            timestamp_us: 7,
        })
        .collect()
}

/// An `Append` command.
fn append(id: u64, epoch: u64, sequence: u64, position: u64, records: Vec<Record>) -> Command {
    Command::Append {
        producer_id: id,
        epoch,
        sequence,
        position,
        records,
    }
}

/// The records of `p`'s remembered batch `sequence` (for `retry`), else `batch`.
fn batch_for(p: Option<&Producer>, sequence: u64, retry: bool, batch: &[Rec]) -> Vec<Record> {
    p.filter(|_| retry)
        .and_then(|p| p.recent.iter().find(|m| m.sequence == sequence))
        .map_or_else(|| records(batch), |m| m.records.clone())
}

/// The sequence `pick` names after `last`.
fn sequence(pick: SeqPick, last: u64) -> u64 {
    match pick {
        SeqPick::Next => last + 1,
        SeqPick::Back(k) => last.saturating_sub(k),
        SeqPick::Ahead(k) => last + 2 + k,
        SeqPick::Zero => 0,
    }
}

/// Turns a generated step into a command for the model's current state (`now`: the
/// generator's leader clock). Not called for [`Op::Snapshot`].
fn command(op: &Op, m: &Model, now: &mut u64) -> Command {
    match op {
        Op::Init(i) => Command::InitProducer {
            name: NAMES[*i].to_string(),
        },
        Op::Produce {
            who,
            epoch,
            seq,
            position,
            retry,
            batch,
        } => {
            let ids: Vec<u64> = m.producers.keys().copied().collect();
            let id = match ids.len() {
                n if n > 0 && *who < UNKNOWN_WHO => ids[who % n],
                _ => m.unknown_id(),
            };
            let p = m.producers.get(&id);
            let (current, last, last_position) =
                p.map_or((1, 0, 0), |p| (p.epoch, p.last_sequence, p.last_position));
            let epoch = match epoch {
                EpochPick::Current => current,
                EpochPick::Older => current.saturating_sub(1),
                EpochPick::Newer => current + 1,
                EpochPick::Zero => 0,
            };
            let mut sequence = sequence(*seq, last);
            if p.is_none() && epoch == 0 {
                // A legacy batch with sequence 0 for an id not in the table: not covered.
                sequence = sequence.max(1);
            }
            let position = match position {
                PosPick::Keep => last_position,
                PosPick::Up(k) => last_position + 1 + k,
                PosPick::Down(k) => last_position.saturating_sub(1 + k),
                PosPick::Unset => 0,
            };
            append(
                id,
                epoch,
                sequence,
                position,
                batch_for(p, sequence, *retry, batch),
            )
        }
        Op::Legacy {
            id,
            seq,
            retry,
            batch,
        } => {
            let p = m.producers.get(id);
            let mut sequence = sequence(*seq, p.map_or(0, |p| p.last_sequence));
            if p.is_none() {
                sequence = sequence.max(1);
            }
            append(*id, 0, sequence, 0, batch_for(p, sequence, *retry, batch))
        }
        Op::Plain(batch) => append(0, 0, 0, 0, records(batch)),
        Op::Bulk(n) => append(0, 0, 0, 0, records(&vec![(0, 0); *n])),
        Op::Ack(picks) => Command::Ack {
            offsets: picks.iter().map(|p| p.offset(m)).collect(),
        },
        Op::AckRun { skip, len, reverse } => {
            let first = m.ack_floor() + skip;
            let mut offsets: Vec<u64> = (first..first + len).collect();
            if *reverse {
                offsets.reverse();
            }
            Command::Ack { offsets }
        }
        Op::DeadLetter(picks) => Command::DeadLettered {
            offsets: picks.iter().map(|p| p.offset(m)).collect(),
            reason: "model".into(),
        },
        Op::Attempts(entries) => Command::Attempts {
            entries: entries.iter().map(|(p, a)| (p.offset(m), *a)).collect(),
        },
        Op::Trim(k) => Command::Trim {
            start_offset: k % (m.next_offset + 3),
        },
        Op::Clock {
            step_ms,
            max_age_ms,
            max_keys,
        } => {
            *now = now.saturating_add_signed(*step_ms).max(1);
            Command::Clock {
                unix_ms: *now,
                dedupe_max_age_ms: *max_age_ms,
                dedupe_max_keys: *max_keys,
            }
        }
        Op::Snapshot => unreachable!("snapshots are taken by the runner"),
    }
}

/// A generated batch: 0 to 3 records over [`KEYS`] × [`VALUES`].
fn batch() -> impl Strategy<Value = Vec<Rec>> {
    proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..4)
}

/// A sequence pick, mostly the next one, often a recent retry.
fn seq_pick() -> impl Strategy<Value = SeqPick> {
    prop_oneof![
        10 => Just(SeqPick::Next),
        4 => (0..2u64).prop_map(SeqPick::Back),
        2 => (0..RECENT_BATCHES as u64 + 3).prop_map(SeqPick::Back),
        1 => (0..3u64).prop_map(SeqPick::Ahead),
        1 => Just(SeqPick::Zero),
    ]
}

/// An offset pick.
fn offset_pick() -> impl Strategy<Value = OffsetPick> {
    prop_oneof![
        10 => (0..4u64).prop_map(OffsetPick::NearFloor),
        10 => (0..1_000u64).prop_map(OffsetPick::Anywhere),
        1 => Just(OffsetPick::Max),
    ]
}

/// One generated step.
fn op() -> impl Strategy<Value = Op> {
    let epoch = prop_oneof![
        12 => Just(EpochPick::Current),
        1 => Just(EpochPick::Older),
        1 => Just(EpochPick::Newer),
        1 => Just(EpochPick::Zero),
    ];
    let position = prop_oneof![
        3 => Just(PosPick::Keep),
        4 => (0..3u64).prop_map(PosPick::Up),
        2 => (0..3u64).prop_map(PosPick::Down),
        2 => Just(PosPick::Unset),
    ];
    // Mostly the first producer of the table, so that its sequences outrun the remembered
    // batches.
    let who = prop_oneof![
        5 => Just(0),
        4 => 0..UNKNOWN_WHO,
        1 => Just(UNKNOWN_WHO),
    ];
    let produce = (who, epoch, seq_pick(), position, any::<bool>(), batch()).prop_map(
        |(who, epoch, seq, position, retry, batch)| Op::Produce {
            who,
            epoch,
            seq,
            position,
            retry,
            batch,
        },
    );
    let legacy =
        (1..7u64, seq_pick(), any::<bool>(), batch()).prop_map(|(id, seq, retry, batch)| {
            Op::Legacy {
                id,
                seq,
                retry,
                batch,
            }
        });
    let clock = (
        -30..100i64,
        prop_oneof![Just(0u64), Just(20), Just(100), Just(1_000), Just(1 << 40)],
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(6),
            Just(1 << 40)
        ],
    )
        .prop_map(|(step_ms, max_age_ms, max_keys)| Op::Clock {
            step_ms,
            max_age_ms,
            max_keys,
        });
    let offsets = || proptest::collection::vec(offset_pick(), 0..4);
    prop_oneof![
        12 => produce,
        2 => (0..NAMES.len()).prop_map(Op::Init),
        2 => legacy,
        3 => batch().prop_map(Op::Plain),
        1 => (1..80usize).prop_map(Op::Bulk),
        4 => offsets().prop_map(Op::Ack),
        1 => (0..3u64, 1..80u64, any::<bool>())
            .prop_map(|(skip, len, reverse)| Op::AckRun { skip, len, reverse }),
        1 => offsets().prop_map(Op::DeadLetter),
        2 => proptest::collection::vec((offset_pick(), 0..5u32), 0..3).prop_map(Op::Attempts),
        1 => (0..1_000u64).prop_map(Op::Trim),
        2 => clock,
        1 => Just(Op::Snapshot),
    ]
}

// ---------------------------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------------------------

/// Applies `cmd` to `s` and commits the key index (the broker commits after each batch of
/// entries; here after every entry, so copies sharing the index never wait for a writer).
fn apply(s: &mut StreamState, log_index: u64, cmd: &Command) -> ApplyOutcome {
    let out = s.apply(log_index, cmd);
    s.dedupe_mut().commit().expect("in-memory key index");
    out
}

/// Compares everything the public API shows of `s` (but the producer table: [`probe`]) with
/// the model.
fn compare(s: &StreamState, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(s.next_offset(), m.next_offset, "next offset");
    prop_assert_eq!(s.start_offset(), m.start_offset, "start offset");
    prop_assert_eq!(s.ack_floor(), m.ack_floor(), "ack floor");
    prop_assert_eq!(s.pending(), m.pending(), "pending");
    prop_assert_eq!(s.acked_total(), m.acked_total, "acked total");
    prop_assert_eq!(
        s.dead_lettered_total(),
        m.dead_lettered_total,
        "dead-lettered"
    );
    prop_assert_eq!(s.deduplicated_total(), m.deduplicated_total, "deduplicated");
    prop_assert_eq!(s.attempts(), &m.attempts, "attempts");
    for o in 0..m.next_offset + 3 {
        prop_assert_eq!(s.is_resolved(o), m.is_resolved(o), "resolved {}", o);
        prop_assert_eq!(s.locate(o), m.locate(o), "locate {}", o);
    }
    if let Some(k) = &m.keys {
        let d = s.dedupe();
        prop_assert_eq!(d.live_keys(), k.live.len() as u64, "live keys");
        prop_assert_eq!(d.inserted(), k.inserted, "keys inserted");
        prop_assert_eq!(d.cursor(), k.inserted - k.live.len() as u64, "key cursor");
        prop_assert_eq!(d.clock_ms(), k.clock_ms, "leader clock");
        prop_assert_eq!(d.window(), k.window, "window");
    }
    Ok(())
}

/// Applies probe `cmd` to copies `sc` and `mc` and compares the outcomes.
fn probe_one(
    sc: &mut StreamState,
    mc: &mut Model,
    log_index: u64,
    cmd: Command,
) -> Result<(), TestCaseError> {
    let got = sc.apply(log_index, &cmd);
    let want = mc.apply(log_index, &cmd);
    prop_assert_eq!(got, want, "probe {:?}", cmd);
    Ok(())
}

/// Compares the producer tables through probe commands applied to copies of both (see the
/// module docs). `log_index` is past every applied entry.
fn probe(s: &StreamState, m: &Model, log_index: u64) -> Result<(), TestCaseError> {
    // Refused or answered as duplicates: nothing changes.
    let (mut sc, mut mc) = (s.clone(), m.clone());
    let mut refused = vec![append(m.unknown_id(), 1, 1, 0, Vec::new())];
    for (&id, p) in &m.producers {
        refused.push(append(id, u64::MAX, 1, 0, Vec::new()));
        refused.push(append(id, p.epoch, u64::MAX, 0, Vec::new()));
        let last = p.last_sequence;
        for seq in last.saturating_sub(RECENT_BATCHES as u64 + 1)..=last {
            refused.push(append(id, p.epoch, seq, 0, Vec::new()));
        }
    }
    for cmd in refused {
        probe_one(&mut sc, &mut mc, log_index, cmd)?;
    }
    prop_assert_eq!(&sc, s, "a refused or duplicate probe changed the state");
    drop(sc);
    // Probes that store or register, each on a fresh copy.
    let mut stored = vec![Command::InitProducer {
        name: String::new(),
    }];
    for (&id, p) in &m.producers {
        stored.push(append(id, p.epoch, p.last_sequence + 1, 1, Vec::new()));
        if !p.name.is_empty() {
            stored.push(Command::InitProducer {
                name: p.name.clone(),
            });
        }
    }
    for cmd in stored {
        probe_one(&mut s.clone(), &mut m.clone(), log_index, cmd)?;
    }
    Ok(())
}

/// Runs `ops` against a new stream and the model, comparing after every step.
fn run(retention: Retention, dedupe_by_key: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let spec = StreamSpec {
        name: "model".into(),
        retention,
        dedupe_by_key,
        group: "workers".into(),
        dead_letter_stream: None,
        ledger: false,
    };
    let mut state = StreamState::new(&spec);
    let index = dedupe_by_key.then(DedupeIndex::in_memory);
    if let Some(ix) = &index {
        state
            .dedupe_mut()
            .attach(Arc::clone(ix))
            .expect("attach an in-memory index");
    }
    let mut model = Model::new(&spec);
    let mut copy: Option<StreamState> = None;
    let mut now = 1_000;
    let mut log_index = 0;
    for (step, op) in ops.iter().enumerate() {
        if let Op::Snapshot = op {
            // A snapshot writes the dedupe memtable to the index before it captures the state
            // (raft::store::build_snapshot_file).
            state.dedupe_mut().flush().map_err(TestCaseError::fail)?;
            let mut decoded =
                StreamState::decode(Bytes::from(state.encode())).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&decoded, &state, "step {}: decode(encode(state))", step);
            if let Some(ix) = &index {
                decoded
                    .dedupe_mut()
                    .attach(Arc::clone(ix))
                    .expect("attach an in-memory index");
            }
            copy = Some(decoded);
            continue;
        }
        let cmd = command(op, &model, &mut now);
        // Log indexes increase, with gaps (other entries of the log).
        log_index += 1 + step as u64 % 3;
        let got = apply(&mut state, log_index, &cmd);
        let want = model.apply(log_index, &cmd);
        prop_assert_eq!(&got, &want, "step {}: {:?}", step, cmd);
        if let Some(c) = copy.as_mut() {
            let again = apply(c, log_index, &cmd);
            prop_assert_eq!(&again, &got, "step {}: snapshot copy, {:?}", step, cmd);
            prop_assert_eq!(&*c, &state, "step {}: snapshot copy", step);
        }
        compare(&state, &model).map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
        probe(&state, &model, log_index + 1)
            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
    }
    Ok(())
}

/// Either retention kind.
fn retention() -> impl Strategy<Value = Retention> {
    prop_oneof![Just(Retention::WorkQueue), Just(Retention::Limits)]
}

/// `cases` cases; failures are saved beside this file (`state_model.proptest-regressions`).
/// The seed is fixed (tests are deterministic: CI tries the same sequences as a local run);
/// `PROPTEST_RNG_SEED=<n>` explores others.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = match base.rng_seed {
        proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(20_261_203),
        fixed => fixed,
    };
    ProptestConfig {
        cases,
        rng_seed,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..base
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Streams without key dedupe: offsets, the producer table, acks, attempts, trims and
    /// snapshots agree with the model.
    #[test]
    fn the_state_machine_agrees_with_the_model(
        retention in retention(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        run(retention, false, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(96))]

    /// Streams with key dedupe: the same, plus the key window by count and leader age.
    #[test]
    fn the_state_machine_with_key_dedupe_agrees_with_the_model(
        retention in retention(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        run(retention, true, &ops)?;
    }
}
