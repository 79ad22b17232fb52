//! The delivery queue of one consumer group as a pure state machine (issue 13).
//!
//! [`Queue`] holds the group's soft state — consumers and their windows, in-flight deliveries,
//! ack deadlines, nack delays, attempt numbers, pending acks and dead-letter decisions — and does
//! no I/O: no clock, no channels, no replica reads, no `async`. The caller passes the current
//! time (milliseconds on any monotonic clock, the same one for every call) and one [`Input`] to
//! [`Queue::step`], and gets back [`Action`]s as data, to perform in order. [`Queue::next_wake`]
//! says when the caller must step with [`Input::Tick`] again if nothing else happens.
//!
//! The async task in [`crate::delivery`] is the only runtime: it turns Consume calls, the
//! stream's end offset and timer wake-ups into inputs, and performs the actions (reads records
//! and sends them to consumers, proposes `Ack`/`Attempts` commands, appends dead letters) and
//! reports their outcome back as inputs ([`Input::Missing`], [`Input::DeadLetterResult`],
//! [`Input::Undelivered`] and [`Input::Leave`] for a consumer whose call is gone).
//!
//! Rules (unchanged from the earlier engine, plus the two issue-13 fixes):
//!
//! - a consumer gets offsets while it has credit (`window - in_flight`): oldest redelivery
//!   first, then new offsets, at most [`MAX_DELIVERIES_PER_MESSAGE`] per [`Action::Deliver`],
//!   round-robin over consumers;
//! - a failed delivery (nacked, past its ack deadline, held by a consumer that disconnected) is
//!   redelivered as attempt `n + 1` (a nack after its delay), unless `n` reached
//!   `max_deliveries`: then it is dead-lettered. A permanent nack dead-letters on that attempt.
//!   A consumer that leaves because the broker shuts down releases its offsets without a failed
//!   attempt;
//! - acks are batched for at most `ack_flush_ms` or [`ACK_FLUSH_OFFSETS`] offsets; the
//!   attempt number of every redelivery is persisted in the same [`Action::Propose`];
//! - an ack for an offset in flight to another consumer or waiting for redelivery is accepted;
//!   one for an offset this queue has not delivered yet (delivered by a previous leader) is
//!   accepted once and the offset is then never delivered; any other ack is ignored;
//! - **a record that cannot be read** ([`Input::Missing`]) is dead-lettered with that reason
//!   instead of being skipped (which left it unresolved and pinned the ack floor);
//! - **a dead-letter append that fails** ([`Input::DeadLetterResult`] with `ok: false`) is
//!   retried after [`DEAD_LETTER_RETRY_MIN_MS`], doubling up to [`DEAD_LETTER_RETRY_MAX_MS`],
//!   instead of staying unresolved (and pinning the ack floor) until the leader changes.
//!
//! The ack floor itself is computed by the stream's state machine from the proposed `Ack` and
//! `DeadLettered` commands; this queue only guarantees that each offset below the stream's end
//! is, eventually, either acked or dead-lettered (the tests check it).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

#[cfg(test)]
mod tests;

/// Largest number of deliveries in one [`Action::Deliver`] (one `Deliveries` message).
pub const MAX_DELIVERIES_PER_MESSAGE: usize = 256;
/// Acks collected before a flush regardless of time.
pub const ACK_FLUSH_OFFSETS: usize = 1024;
/// Largest window granted, messages; [`Input::SetWindow`] reduces a larger one to it (the
/// Consume call clamps the subscription's window the same way). It also bounds a consumer's
/// send buffer: deliveries wait in it only while the consumer has fewer than `window` unacked
/// (65,536 records of a few hundred bytes is tens of MiB per consumer; the earlier 2^20
/// allowed gigabytes, issue 13).
pub const MAX_WINDOW: u32 = 1 << 16;
/// First delay, ms, before a failed dead-letter append is tried again.
pub const DEAD_LETTER_RETRY_MIN_MS: u64 = 50;
/// Longest delay, ms, between tries of a failing dead-letter append (the delay doubles from
/// [`DEAD_LETTER_RETRY_MIN_MS`] up to this, and starts over after a success).
pub const DEAD_LETTER_RETRY_MAX_MS: u64 = 5_000;

/// Settings of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// A delivery not acked within this many ms is redelivered.
    pub ack_deadline_ms: u64,
    /// Attempts before dead-lettering (at least 1).
    pub max_deliveries: u32,
    /// Longest time, ms, acks and attempt numbers wait before [`Action::Propose`].
    pub ack_flush_ms: u64,
}

/// Why a delivery failed and is redelivered (for the redelivery metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailKind {
    /// Not acked within the ack deadline.
    Deadline,
    /// Nacked by the consumer.
    Nack,
    /// The consumer that held it disconnected.
    Disconnect,
}

/// A decision to dead-letter one offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterOrder {
    /// Offset in the source stream.
    pub offset: u64,
    /// Deliveries attempted (0 when the record was never delivered).
    pub attempts: u32,
    /// Why, for the `DeadLetter` record and the `DeadLettered` command.
    pub reason: String,
}

/// An event for [`Queue::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A consumer subscribed with this window (already clamped by the caller).
    Join {
        /// Consumer id, unique for the queue's lifetime.
        consumer: u64,
        /// Most unacked deliveries it may hold.
        window: u32,
    },
    /// A consumer's call ended (or a send to it failed).
    Leave {
        /// Consumer id.
        consumer: u64,
        /// `true`: what it held failed an attempt (redelivered as the next attempt, or
        /// dead-lettered). `false` (broker shutdown): released, the next delivery repeats the
        /// attempt number.
        count_attempt: bool,
    },
    /// Acked offsets (from any consumer).
    Ack {
        /// Offsets.
        offsets: Vec<u64>,
    },
    /// Nacked offsets; only those in flight to `consumer` count.
    Nack {
        /// Consumer id.
        consumer: u64,
        /// Offsets.
        offsets: Vec<u64>,
        /// Redelivery delay, ms.
        delay_ms: u64,
        /// Reason, kept for the dead letter (empty: "nacked by consumer").
        reason: String,
        /// The failure cannot succeed on a retry: dead-letter on this attempt.
        permanent: bool,
    },
    /// A consumer's new window (0 = drain); clamped to [`MAX_WINDOW`].
    SetWindow {
        /// Consumer id.
        consumer: u64,
        /// Window, messages.
        window: u32,
    },
    /// The stream's end offset (the next offset to be appended) moved to this.
    End(u64),
    /// These offsets of an [`Action::Deliver`] could not be read: each still in flight is
    /// dead-lettered with the reason "record missing".
    Missing {
        /// Offsets.
        offsets: Vec<u64>,
    },
    /// These offsets of an [`Action::Deliver`] were not sent (the consumer's call is gone):
    /// each still in flight to `consumer` is released without counting an attempt, and goes
    /// to the next consumer with the same attempt number. Report them before the consumer's
    /// [`Input::Leave`].
    Undelivered {
        /// Consumer id.
        consumer: u64,
        /// Offsets.
        offsets: Vec<u64>,
    },
    /// Outcome of an [`Action::DeadLetter`]: `ok` when the letters were appended and the
    /// offsets resolved; otherwise the same orders are tried again after a backoff.
    DeadLetterResult {
        /// The orders of that action.
        orders: Vec<DeadLetterOrder>,
        /// Whether it succeeded.
        ok: bool,
    },
    /// Time passed: expire ack deadlines, release nack delays and dead-letter retries, hand out
    /// deliveries, and flush acks when due. The caller steps with this after every batch of
    /// other inputs and at [`Queue::next_wake`].
    Tick,
    /// Flush now: propose pending acks and attempts and start pending dead letters, due or not.
    Flush,
}

/// An effect for the caller to perform, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these deliveries, `(offset, attempt)`, to `consumer` in one message (it has the
    /// credit for them). Report unreadable ones with [`Input::Missing`]; when the consumer can
    /// no longer be sent to, report this and its later deliveries with [`Input::Undelivered`],
    /// then the consumer with [`Input::Leave`] (`count_attempt: true`).
    Deliver {
        /// Consumer id.
        consumer: u64,
        /// `(offset, attempt)`, attempt starting at 1.
        deliveries: Vec<(u64, u32)>,
    },
    /// Propose `Ack { offsets: acks }` and `Attempts { entries: attempts }` (each non-empty one,
    /// in chunks the log accepts).
    Propose {
        /// Offsets acked.
        acks: Vec<u64>,
        /// `(offset, attempt)` of redeliveries.
        attempts: Vec<(u64, u32)>,
    },
    /// Append a `DeadLetter` per order to the dead-letter stream, then propose `DeadLettered`
    /// for the offsets; report the outcome with [`Input::DeadLetterResult`].
    DeadLetter {
        /// What to dead-letter.
        orders: Vec<DeadLetterOrder>,
    },
    /// A failed delivery was scheduled for redelivery (count it).
    Redelivery(FailKind),
}

/// Figures of one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Consumer id.
    pub id: u64,
    /// Window, messages.
    pub window: u32,
    /// Unacked deliveries it holds.
    pub in_flight: u32,
    /// Deliveries sent to it so far.
    pub delivered: u64,
}

#[derive(Debug)]
struct Flight {
    consumer: u64,
    attempt: u32,
    generation: u64,
}

/// The delivery state of one consumer group (see the module docs).
#[derive(Debug)]
pub struct Queue {
    cfg: QueueConfig,
    consumers: Vec<ConsumerState>,
    rr: usize,
    flights: HashMap<u64, Flight>,
    /// `(due ms, offset, generation)`, in due order (one deadline for every delivery).
    deadlines: VecDeque<(u64, u64, u64)>,
    ready: BTreeSet<u64>,
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    /// Attempts made so far of offsets waiting in `ready` or `delayed`.
    retry: HashMap<u64, u32>,
    /// Attempts persisted before this queue started, for offsets not yet delivered by it.
    persisted: HashMap<u64, u32>,
    /// Resolved offsets in `[floor, recovery_end)` when the queue started: bit `o - floor`.
    skip: Vec<u64>,
    floor: u64,
    next_new: u64,
    end: u64,
    recovery_end: u64,
    generation: u64,
    acks: Vec<u64>,
    attempts_out: Vec<(u64, u32)>,
    dead: Vec<DeadLetterOrder>,
    flush_at: Option<u64>,
    /// Offsets acked before this queue delivered them (a previous leader did): never
    /// delivered, only recorded as acked.
    early: HashSet<u64>,
    /// Dead-letter orders whose append failed, due again at `dl_retry_at`.
    dl_retry: Vec<DeadLetterOrder>,
    dl_retry_at: Option<u64>,
    dl_backoff_ms: u64,
    /// Actions of the step under way.
    out: Vec<Action>,
}

impl Queue {
    /// A queue for a stream whose records `[floor, end)` are not all resolved: `floor` is the
    /// stream's ack floor, `end` its next offset, `resolved(o)` tells (only for `floor <= o <
    /// end`) whether `o` is acked, dead-lettered or no longer stored, and `attempts` are the
    /// persisted attempt numbers of redelivered offsets.
    pub fn new(
        cfg: QueueConfig,
        floor: u64,
        end: u64,
        resolved: impl Fn(u64) -> bool,
        attempts: impl IntoIterator<Item = (u64, u32)>,
    ) -> Self {
        let end = end.max(floor);
        let mut skip = vec![0u64; (end - floor).div_ceil(64) as usize];
        for o in floor..end {
            if resolved(o) {
                let rel = o - floor;
                skip[(rel / 64) as usize] |= 1 << (rel % 64);
            }
        }
        Self {
            cfg,
            consumers: Vec::new(),
            rr: 0,
            flights: HashMap::new(),
            deadlines: VecDeque::new(),
            ready: BTreeSet::new(),
            delayed: BinaryHeap::new(),
            retry: HashMap::new(),
            persisted: attempts.into_iter().collect(),
            skip,
            floor,
            next_new: floor,
            end,
            recovery_end: end,
            generation: 0,
            acks: Vec::new(),
            attempts_out: Vec::new(),
            dead: Vec::new(),
            flush_at: None,
            early: HashSet::new(),
            dl_retry: Vec::new(),
            dl_retry_at: None,
            dl_backoff_ms: DEAD_LETTER_RETRY_MIN_MS,
            out: Vec::new(),
        }
    }

    /// Applies `input` at time `now_ms` and returns what to do, in order.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        match input {
            Input::Join { consumer, window } => self.consumers.push(ConsumerState {
                id: consumer,
                window,
                in_flight: 0,
                delivered: 0,
            }),
            Input::Leave {
                consumer,
                count_attempt,
            } => self.leave(now_ms, consumer, count_attempt),
            Input::Ack { offsets } => self.ack(now_ms, offsets),
            Input::Nack {
                consumer,
                offsets,
                delay_ms,
                reason,
                permanent,
            } => self.nack(now_ms, consumer, offsets, delay_ms, reason, permanent),
            Input::SetWindow { consumer, window } => {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer) {
                    c.window = window.min(MAX_WINDOW);
                }
            }
            Input::End(end) => self.end = self.end.max(end),
            Input::Missing { offsets } => {
                for o in offsets {
                    if let Some(f) = self.flights.remove(&o) {
                        if let Some(c) = self.consumer_mut(f.consumer) {
                            c.in_flight = c.in_flight.saturating_sub(1);
                            c.delivered = c.delivered.saturating_sub(1);
                        }
                        self.dead_letter(
                            now_ms,
                            o,
                            f.attempt,
                            format!("record missing: it cannot be read (attempt {})", f.attempt),
                        );
                    }
                }
            }
            Input::Undelivered { consumer, offsets } => {
                for o in offsets {
                    if self.flights.get(&o).is_none_or(|f| f.consumer != consumer) {
                        continue;
                    }
                    let Some(f) = self.flights.remove(&o) else {
                        continue;
                    };
                    if let Some(c) = self.consumer_mut(consumer) {
                        c.in_flight = c.in_flight.saturating_sub(1);
                        c.delivered = c.delivered.saturating_sub(1);
                    }
                    self.release(o, f.attempt);
                }
            }
            Input::DeadLetterResult { orders, ok } => {
                if ok {
                    self.dl_backoff_ms = DEAD_LETTER_RETRY_MIN_MS;
                } else if !orders.is_empty() {
                    self.dl_retry.extend(orders);
                    if self.dl_retry_at.is_none() {
                        self.dl_retry_at = Some(now_ms + self.dl_backoff_ms);
                        self.dl_backoff_ms = (self.dl_backoff_ms * 2).min(DEAD_LETTER_RETRY_MAX_MS);
                    }
                }
            }
            Input::Tick => {
                self.expire(now_ms);
                self.release_delayed(now_ms);
                self.dispatch(now_ms);
                if self.acks.len() >= ACK_FLUSH_OFFSETS
                    || self.flush_at.is_some_and(|t| t <= now_ms)
                {
                    self.flush();
                }
            }
            Input::Flush => self.flush(),
        }
        std::mem::take(&mut self.out)
    }

    /// When to step with [`Input::Tick`] next (ms, same clock as `now_ms`), if no other input
    /// arrives: the earliest ack deadline, nack delay, ack flush or dead-letter retry.
    pub fn next_wake(&self) -> Option<u64> {
        [
            self.deadlines.front().map(|d| d.0),
            self.delayed.peek().map(|r| r.0.0),
            self.flush_at,
            self.dl_retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The connected consumers, in join order.
    pub fn consumers(&self) -> &[ConsumerState] {
        &self.consumers
    }

    /// Unacked deliveries (all consumers).
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    fn consumer_mut(&mut self, id: u64) -> Option<&mut ConsumerState> {
        self.consumers.iter_mut().find(|c| c.id == id)
    }

    fn credit(&mut self, consumer: u64) {
        if let Some(c) = self.consumer_mut(consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    fn ack(&mut self, now_ms: u64, offsets: Vec<u64>) {
        for o in offsets {
            if let Some(f) = self.flights.remove(&o) {
                self.credit(f.consumer);
                self.acks.push(o);
            } else if self.retry.remove(&o).is_some() {
                self.ready.remove(&o);
                self.acks.push(o);
            } else if o >= self.next_new && o < self.end && self.early.insert(o) {
                // Delivered by a previous leader and processed: accept the ack.
                self.acks.push(o);
            }
        }
        if !self.acks.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(now_ms + self.cfg.ack_flush_ms);
        }
    }

    fn nack(
        &mut self,
        now_ms: u64,
        consumer: u64,
        offsets: Vec<u64>,
        delay_ms: u64,
        reason: String,
        permanent: bool,
    ) {
        let reason = if reason.is_empty() {
            "nacked by consumer".to_string()
        } else {
            reason
        };
        for o in offsets {
            if self.flights.get(&o).is_none_or(|f| f.consumer != consumer) {
                continue;
            }
            let Some(f) = self.flights.remove(&o) else {
                continue;
            };
            self.credit(consumer);
            if permanent {
                let reason = format!("{reason} (permanent failure, attempt {})", f.attempt);
                self.dead_letter(now_ms, o, f.attempt, reason);
                continue;
            }
            self.fail(now_ms, o, f.attempt, &reason, delay_ms, FailKind::Nack);
        }
    }

    fn leave(&mut self, now_ms: u64, id: u64, count_attempt: bool) {
        let Some(pos) = self.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        self.consumers.remove(pos);
        let mut held: Vec<(u64, u32)> = self
            .flights
            .iter()
            .filter(|(_, f)| f.consumer == id)
            .map(|(o, f)| (*o, f.attempt))
            .collect();
        held.sort_unstable();
        for (o, attempt) in held {
            self.flights.remove(&o);
            if !count_attempt {
                self.release(o, attempt);
                continue;
            }
            let reason = "consumer disconnected";
            self.fail(now_ms, o, attempt, reason, 0, FailKind::Disconnect);
        }
    }

    /// Released, not failed: the next delivery repeats this attempt number.
    fn release(&mut self, offset: u64, attempt: u32) {
        self.retry.insert(offset, attempt - 1);
        self.ready.insert(offset);
    }

    fn dead_letter(&mut self, now_ms: u64, offset: u64, attempts: u32, reason: String) {
        self.dead.push(DeadLetterOrder {
            offset,
            attempts,
            reason,
        });
        self.flush_at.get_or_insert(now_ms);
    }

    fn fail(
        &mut self,
        now_ms: u64,
        offset: u64,
        attempt: u32,
        reason: &str,
        delay_ms: u64,
        kind: FailKind,
    ) {
        if attempt >= self.cfg.max_deliveries {
            let max = self.cfg.max_deliveries;
            let reason = format!("{reason} (attempt {attempt} of {max})");
            self.dead_letter(now_ms, offset, attempt, reason);
            return;
        }
        self.out.push(Action::Redelivery(kind));
        self.retry.insert(offset, attempt);
        if delay_ms == 0 {
            self.ready.insert(offset);
        } else {
            self.delayed.push(Reverse((now_ms + delay_ms, offset)));
        }
    }

    fn expire(&mut self, now_ms: u64) {
        // Entries whose delivery was acked (or failed otherwise) are stale; drop them from the
        // front too, so the queue stays about as long as the in-flight set.
        while let Some(&(t, o, g)) = self.deadlines.front() {
            let live = self.flights.get(&o).is_some_and(|f| f.generation == g);
            if live && t > now_ms {
                break;
            }
            self.deadlines.pop_front();
            if !live {
                continue;
            }
            if let Some(f) = self.flights.remove(&o) {
                self.credit(f.consumer);
                let reason = "ack deadline exceeded";
                self.fail(now_ms, o, f.attempt, reason, 0, FailKind::Deadline);
            }
        }
    }

    fn release_delayed(&mut self, now_ms: u64) {
        while let Some(Reverse((t, o))) = self.delayed.peek().copied() {
            if t > now_ms {
                break;
            }
            self.delayed.pop();
            if self.retry.contains_key(&o) && !self.flights.contains_key(&o) {
                self.ready.insert(o);
            }
        }
        if self.dl_retry_at.is_some_and(|t| t <= now_ms) {
            self.dl_retry_at = None;
            self.dead.append(&mut self.dl_retry);
            self.flush_at.get_or_insert(now_ms);
        }
    }

    /// Whether `o` was resolved when the queue started.
    fn skipped(&self, o: u64) -> bool {
        if o < self.floor || o >= self.recovery_end {
            return false;
        }
        let rel = o - self.floor;
        self.skip[(rel / 64) as usize] & (1 << (rel % 64)) != 0
    }

    /// Takes up to `n` offsets to deliver, with their attempt numbers.
    fn take(&mut self, now_ms: u64, n: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(n.min(MAX_DELIVERIES_PER_MESSAGE));
        while out.len() < n {
            let Some(o) = self.ready.pop_first() else {
                break;
            };
            let attempt = self.retry.remove(&o).unwrap_or(0) + 1;
            self.attempts_out.push((o, attempt));
            out.push((o, attempt));
        }
        while out.len() < n && self.next_new < self.end {
            let o = self.next_new;
            self.next_new += 1;
            if self.early.remove(&o) || self.skipped(o) {
                continue;
            }
            let attempt = self.persisted.remove(&o).map_or(1, |a| a + 1);
            if attempt > self.cfg.max_deliveries {
                let reason = format!(
                    "max deliveries ({}) reached before a restart",
                    self.cfg.max_deliveries
                );
                self.dead_letter(now_ms, o, attempt - 1, reason);
                continue;
            }
            if attempt > 1 {
                self.attempts_out.push((o, attempt));
            }
            out.push((o, attempt));
        }
        out
    }

    fn dispatch(&mut self, now_ms: u64) {
        let n = self.consumers.len();
        if n == 0 {
            return;
        }
        loop {
            let mut progress = false;
            for k in 0..n {
                let ci = (self.rr + k) % n;
                let c = self.consumers[ci];
                let credit = c.window.saturating_sub(c.in_flight) as usize;
                if credit == 0 {
                    continue;
                }
                let batch = self.take(now_ms, credit.min(MAX_DELIVERIES_PER_MESSAGE));
                if batch.is_empty() {
                    break;
                }
                progress = true;
                for &(o, attempt) in &batch {
                    self.generation += 1;
                    let flight = Flight {
                        consumer: c.id,
                        attempt,
                        generation: self.generation,
                    };
                    self.flights.insert(o, flight);
                    let due = now_ms + self.cfg.ack_deadline_ms;
                    self.deadlines.push_back((due, o, self.generation));
                }
                let c = &mut self.consumers[ci];
                c.in_flight += batch.len() as u32;
                c.delivered += batch.len() as u64;
                self.out.push(Action::Deliver {
                    consumer: c.id,
                    deliveries: batch,
                });
            }
            self.rr = (self.rr + 1) % n;
            if !progress {
                break;
            }
        }
        if !self.attempts_out.is_empty() {
            self.flush_at.get_or_insert(now_ms + self.cfg.ack_flush_ms);
        }
    }

    fn flush(&mut self) {
        self.flush_at = None;
        let acks = std::mem::take(&mut self.acks);
        let attempts = std::mem::take(&mut self.attempts_out);
        if !acks.is_empty() || !attempts.is_empty() {
            self.out.push(Action::Propose { acks, attempts });
        }
        let orders = std::mem::take(&mut self.dead);
        if !orders.is_empty() {
            self.out.push(Action::DeadLetter { orders });
        }
    }
}
