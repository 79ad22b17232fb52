//! Work-queue delivery: the consumer group of one stream (leader-local soft state).
//!
//! One task per work-queue stream owns every consumer, in-flight delivery and timer of the
//! stream's group, so nothing here takes a lock per message. It receives [`Event`]s from the
//! Consume calls and the stream's end offset from the replica, and:
//!
//! - hands out offsets to consumers while they have credit (`window - in_flight`), oldest
//!   redelivery first, then new offsets, in `Deliveries` messages of at most
//!   [`MAX_DELIVERIES_PER_MESSAGE`], round-robin over consumers;
//! - redelivers (to any consumer) what was nacked (after its delay), what passed its ack
//!   deadline, and what a disconnected consumer held; each delivery carries its attempt number;
//! - after `max_deliveries` failed attempts, appends a `DeadLetter` record to the stream's
//!   dead-letter stream (deduplicated by key there, so a retry after a crash does not write it
//!   twice) and then resolves the offset with a `DeadLettered` command;
//! - batches acks: acks from every consumer are collected for at most `ack_flush` (or 1024
//!   offsets) and written as one `Ack` command. Acks are not answered. An ack received but not
//!   yet durable is lost on a crash, so that message is delivered again after the restart: the
//!   at-least-once window is `ack_flush` plus one fsync. Decisions are deduplicated by key, so
//!   the effect stays exactly-once.
//! - persists the attempt number of each *redelivery* (rare) with an `Attempts` command, so
//!   `max_deliveries` holds across restarts. A first delivery is not persisted: after a restart
//!   it may be delivered again as attempt 1.
//!
//! An ack for an offset that is in flight to *another* consumer, or waiting for redelivery, is
//! accepted (the work was done); an ack for an offset never delivered, or already acked, is
//! ignored (not an error: it is what a late ack after a broker restart looks like).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use txpipe_client::broker::v1::{ConsumeResponse, Deliveries, Delivery, Record, consume_response};
use txpipe_client::pipeline::v1::DeadLetter;

use crate::command::Command;
use crate::replica::Replica;

/// Largest number of deliveries in one `Deliveries` message.
pub const MAX_DELIVERIES_PER_MESSAGE: usize = 256;
/// Acks collected before a flush regardless of time.
pub const ACK_FLUSH_OFFSETS: usize = 1024;
/// Most offsets in one `Ack` or `Attempts` log entry (512 KiB of offsets).
pub const MAX_OFFSETS_PER_ENTRY: usize = 65_536;
/// Largest window granted, messages; a larger request is reduced to it and the `Subscribed`
/// reply says so. It also bounds a consumer's send buffer: deliveries wait in it only while
/// the consumer has fewer than `window` unacked (65,536 records of a few hundred bytes is
/// tens of MiB per consumer; the earlier 2^20 allowed gigabytes, issue 13).
pub const MAX_WINDOW: u32 = 1 << 16;

/// Settings of a consumer group.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Group name.
    pub group: String,
    /// Window of consumers that ask for 0.
    pub default_window: u32,
    /// Redeliver when not acked within this.
    pub ack_deadline: Duration,
    /// Attempts before dead-lettering.
    pub max_deliveries: u32,
    /// Longest time acks wait before being written.
    pub ack_flush: Duration,
    /// Mutual TLS settings for dead letters forwarded to another node's client port (this
    /// broker's own certificate); `None`: plaintext.
    pub tls: Option<txpipe_client::tls::TlsOptions>,
}

/// Outbound half of a Consume call.
pub type ConsumerTx = mpsc::UnboundedSender<Result<ConsumeResponse, tonic::Status>>;

/// Input of the delivery task.
#[derive(Debug)]
pub enum Event {
    /// A consumer subscribed.
    Join {
        /// Consumer id (from [`DeliveryHandle::next_consumer_id`]).
        id: u64,
        /// Its name.
        name: String,
        /// Its window.
        window: u32,
        /// Where its deliveries go.
        tx: ConsumerTx,
    },
    /// A consumer's call ended.
    Leave {
        /// Consumer id.
        id: u64,
        /// The broker is shutting down: its in-flight messages are released without counting
        /// a failed attempt (they are delivered again after the restart).
        shutdown: bool,
    },
    /// Acked offsets.
    Ack {
        /// Consumer id.
        id: u64,
        /// Offsets.
        offsets: Vec<u64>,
    },
    /// Nacked offsets.
    Nack {
        /// Consumer id.
        id: u64,
        /// Offsets.
        offsets: Vec<u64>,
        /// Redelivery delay, ms.
        delay_ms: u32,
        /// Reason (kept for the dead letter).
        reason: String,
        /// The failure cannot succeed on a retry: dead-letter now instead of redelivering.
        permanent: bool,
    },
    /// New window.
    SetWindow {
        /// Consumer id.
        id: u64,
        /// Window (0 = drain).
        window: u32,
    },
    /// Write pending acks durably, then answer.
    Flush(oneshot::Sender<()>),
    /// Leadership moved away: stop delivering (consumers' calls end with UNAVAILABLE and a
    /// leader hint, and resume on the new leader).
    Stop,
}

/// Status of one consumer, for the status page (defined in [`txpipe_client::status`]).
pub use txpipe_client::status::ConsumerInfo;

/// Live figures of a group.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Connected consumers.
    pub consumers: AtomicU64,
    /// Unacked deliveries.
    pub in_flight: AtomicU64,
    /// Redeliveries scheduled so far.
    pub redelivered_total: AtomicU64,
    /// Per-consumer figures (refreshed every 250 ms).
    pub consumer_list: Mutex<Vec<ConsumerInfo>>,
}

/// Handle to a stream's delivery task.
#[derive(Clone)]
pub struct DeliveryHandle {
    tx: mpsc::UnboundedSender<Event>,
    ids: Arc<AtomicU64>,
    /// Live figures.
    pub stats: Arc<DeliveryStats>,
    /// Settings.
    pub config: DeliveryConfig,
}

impl DeliveryHandle {
    /// Starts the delivery task of `replica` (a work-queue stream) with its dead-letter stream.
    pub fn spawn(replica: Arc<Replica>, dlq: Option<Arc<Replica>>, config: DeliveryConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(DeliveryStats::default());
        let (floor, end, persisted) = replica.with_core(|c| {
            (
                c.state.ack_floor(),
                c.state.next_offset(),
                c.state
                    .attempts()
                    .iter()
                    .map(|(o, a)| (*o, *a))
                    .collect::<HashMap<_, _>>(),
            )
        });
        let engine = Engine {
            end_rx: replica.watch_end(),
            replica,
            dlq,
            cfg: config.clone(),
            stats: Arc::clone(&stats),
            consumers: Vec::new(),
            rr: 0,
            flights: HashMap::new(),
            deadlines: VecDeque::new(),
            ready: BTreeSet::new(),
            delayed: BinaryHeap::new(),
            retry: HashMap::new(),
            persisted,
            next_new: floor,
            end,
            recovery_end: end,
            generation: 0,
            acks: Vec::new(),
            attempts_out: Vec::new(),
            dead: Vec::new(),
            flush_at: None,
            published: Instant::now(),
            early: std::collections::HashSet::new(),
            stopped: false,
        };
        tokio::spawn(engine.run(rx));
        Self {
            tx,
            ids: Arc::new(AtomicU64::new(1)),
            stats,
            config,
        }
    }

    /// A fresh consumer id.
    pub fn next_consumer_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends an event (dropped silently when the task has stopped).
    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    /// Resolves once the delivery task has stopped (leadership lost or shutdown).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Writes acks collected so far and waits until they are durable.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Consumer {
    id: u64,
    name: String,
    window: u32,
    in_flight: u32,
    delivered: u64,
    tx: ConsumerTx,
}

struct Flight {
    consumer: u64,
    attempt: u32,
    generation: u64,
}

#[derive(Clone, Copy)]
enum FailKind {
    Deadline,
    Nack,
    Disconnect,
}

struct Engine {
    replica: Arc<Replica>,
    dlq: Option<Arc<Replica>>,
    cfg: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    end_rx: watch::Receiver<u64>,
    consumers: Vec<Consumer>,
    rr: usize,
    flights: HashMap<u64, Flight>,
    deadlines: VecDeque<(Instant, u64, u64)>,
    ready: BTreeSet<u64>,
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Attempts made so far of offsets waiting in `ready` or `delayed`.
    retry: HashMap<u64, u32>,
    /// Attempts persisted before this leader started, for offsets not yet delivered by it.
    persisted: HashMap<u64, u32>,
    next_new: u64,
    end: u64,
    recovery_end: u64,
    generation: u64,
    acks: Vec<u64>,
    attempts_out: Vec<(u64, u32)>,
    dead: Vec<(u64, u32, String)>,
    flush_at: Option<Instant>,
    published: Instant,
    /// Offsets acked before this engine delivered them (the consumer got them from a
    /// previous leader): never delivered, only recorded as acked.
    early: std::collections::HashSet<u64>,
    stopped: bool,
}

impl Engine {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        loop {
            let wake = [
                self.deadlines.front().map(|d| d.0),
                self.delayed.peek().map(|r| r.0.0),
                self.flush_at,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => break,
                    Some(ev) => {
                        self.handle(ev).await;
                        let mut n = 0;
                        while n < 1024 {
                            match rx.try_recv() {
                                Ok(ev) => self.handle(ev).await,
                                Err(_) => break,
                            }
                            n += 1;
                        }
                    }
                },
                changed = self.end_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.end = *self.end_rx.borrow_and_update();
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {}
            }
            if self.stopped {
                break;
            }
            let now = Instant::now();
            self.expire(now);
            self.release_delayed(now);
            self.dispatch(now);
            if self.acks.len() >= ACK_FLUSH_OFFSETS || self.flush_at.is_some_and(|t| t <= now) {
                self.flush(false).await;
            }
            self.publish(now);
        }
        self.flush(true).await;
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Join {
                id,
                name,
                window,
                tx,
            } => {
                tracing::info!(stream = %self.replica.spec.name, consumer = %name, id, window, "consumer joined");
                self.consumers.push(Consumer {
                    id,
                    name,
                    window,
                    in_flight: 0,
                    delivered: 0,
                    tx,
                });
            }
            Event::Leave { id, shutdown } => self.leave(id, !shutdown),
            Event::Ack { id: _, offsets } => {
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
                    self.flush_at = Some(Instant::now() + self.cfg.ack_flush);
                }
            }
            Event::Nack {
                id,
                offsets,
                delay_ms,
                reason,
                permanent,
            } => {
                let reason = if reason.is_empty() {
                    "nacked by consumer".to_string()
                } else {
                    reason
                };
                for o in offsets {
                    if self.flights.get(&o).is_some_and(|f| f.consumer == id) {
                        let f = self.flights.remove(&o).expect("checked");
                        self.credit(id);
                        if permanent {
                            // Cannot succeed on a retry: dead-lettered on this attempt.
                            self.dead.push((
                                o,
                                f.attempt,
                                format!("{reason} (permanent failure, attempt {})", f.attempt),
                            ));
                            self.flush_at.get_or_insert_with(Instant::now);
                            continue;
                        }
                        self.fail(
                            o,
                            f.attempt,
                            &reason,
                            Duration::from_millis(u64::from(delay_ms)),
                            FailKind::Nack,
                        );
                    }
                }
            }
            Event::SetWindow { id, window } => {
                if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
                    c.window = window.min(MAX_WINDOW);
                }
            }
            Event::Flush(done) => {
                self.flush(true).await;
                let _ = done.send(());
            }
            Event::Stop => self.stopped = true,
        }
    }

    fn credit(&mut self, consumer: u64) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == consumer) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    fn leave(&mut self, id: u64, count_attempt: bool) {
        let Some(pos) = self.consumers.iter().position(|c| c.id == id) else {
            return;
        };
        let c = self.consumers.remove(pos);
        let mut held: Vec<(u64, u32)> = self
            .flights
            .iter()
            .filter(|(_, f)| f.consumer == id)
            .map(|(o, f)| (*o, f.attempt))
            .collect();
        held.sort_unstable();
        tracing::info!(stream = %self.replica.spec.name, consumer = %c.name, id, redelivering = held.len(), "consumer left");
        for (o, attempt) in held {
            self.flights.remove(&o);
            if !count_attempt {
                // Released, not failed: the next delivery repeats this attempt number.
                self.retry.insert(o, attempt - 1);
                self.ready.insert(o);
                continue;
            }
            self.fail(
                o,
                attempt,
                "consumer disconnected",
                Duration::ZERO,
                FailKind::Disconnect,
            );
        }
    }

    fn fail(&mut self, offset: u64, attempt: u32, reason: &str, delay: Duration, kind: FailKind) {
        if attempt >= self.cfg.max_deliveries {
            self.dead.push((
                offset,
                attempt,
                format!(
                    "{reason} (attempt {attempt} of {})",
                    self.cfg.max_deliveries
                ),
            ));
            self.flush_at.get_or_insert_with(Instant::now);
            return;
        }
        let m = &self.replica.metrics;
        match kind {
            FailKind::Deadline => m.redelivered_deadline.inc(),
            FailKind::Nack => m.redelivered_nack.inc(),
            FailKind::Disconnect => m.redelivered_disconnect.inc(),
        }
        self.stats.redelivered_total.fetch_add(1, Ordering::Relaxed);
        self.retry.insert(offset, attempt);
        if delay.is_zero() {
            self.ready.insert(offset);
        } else {
            self.delayed.push(Reverse((Instant::now() + delay, offset)));
        }
    }

    fn expire(&mut self, now: Instant) {
        // Entries whose delivery was acked (or failed otherwise) are stale; drop them from the
        // front too, so the queue stays about as long as the in-flight set.
        while let Some(&(t, o, g)) = self.deadlines.front() {
            let live = self.flights.get(&o).is_some_and(|f| f.generation == g);
            if live && t > now {
                break;
            }
            self.deadlines.pop_front();
            if live {
                let f = self.flights.remove(&o).expect("checked");
                self.credit(f.consumer);
                self.fail(
                    o,
                    f.attempt,
                    "ack deadline exceeded",
                    Duration::ZERO,
                    FailKind::Deadline,
                );
            }
        }
    }

    fn release_delayed(&mut self, now: Instant) {
        while let Some(Reverse((t, o))) = self.delayed.peek().copied() {
            if t > now {
                break;
            }
            self.delayed.pop();
            if self.retry.contains_key(&o) && !self.flights.contains_key(&o) {
                self.ready.insert(o);
            }
        }
    }

    /// Takes up to `n` offsets to deliver, with their attempt numbers.
    fn take(&mut self, n: usize) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(n.min(MAX_DELIVERIES_PER_MESSAGE));
        while out.len() < n {
            let Some(o) = self.ready.pop_first() else {
                break;
            };
            let attempt = self.retry.remove(&o).unwrap_or(0) + 1;
            self.attempts_out.push((o, attempt));
            out.push((o, attempt));
        }
        if out.len() < n && self.next_new < self.end {
            let replica = Arc::clone(&self.replica);
            replica.with_core(|core| {
                while out.len() < n && self.next_new < self.end {
                    let o = self.next_new;
                    self.next_new += 1;
                    if self.early.remove(&o) {
                        continue;
                    }
                    if o < self.recovery_end
                        && (core.state.is_resolved(o) || o < core.state.start_offset())
                    {
                        continue;
                    }
                    let attempt = self.persisted.remove(&o).map_or(1, |a| a + 1);
                    if attempt > self.cfg.max_deliveries {
                        self.dead.push((
                            o,
                            attempt - 1,
                            format!(
                                "max deliveries ({}) reached before a restart",
                                self.cfg.max_deliveries
                            ),
                        ));
                        continue;
                    }
                    if attempt > 1 {
                        self.attempts_out.push((o, attempt));
                    }
                    out.push((o, attempt));
                }
            });
        }
        out
    }

    fn dispatch(&mut self, now: Instant) {
        let n = self.consumers.len();
        if n == 0 {
            return;
        }
        let mut gone: Vec<u64> = Vec::new();
        loop {
            let mut progress = false;
            for k in 0..n {
                let ci = (self.rr + k) % n;
                let credit = self.consumers[ci]
                    .window
                    .saturating_sub(self.consumers[ci].in_flight)
                    as usize;
                if credit == 0 || gone.contains(&self.consumers[ci].id) {
                    continue;
                }
                let batch = self.take(credit.min(MAX_DELIVERIES_PER_MESSAGE));
                if batch.is_empty() {
                    break;
                }
                progress = true;
                let offsets: Vec<u64> = batch.iter().map(|(o, _)| *o).collect();
                let records = self.replica.read_records(&offsets);
                let consumer_id = self.consumers[ci].id;
                let mut deliveries = Vec::with_capacity(batch.len());
                for ((o, attempt), r) in batch.into_iter().zip(records) {
                    let Some(record) = r else {
                        tracing::error!(stream = %self.replica.spec.name, offset = o, "record to deliver is missing; skipping it");
                        continue;
                    };
                    self.generation += 1;
                    self.flights.insert(
                        o,
                        Flight {
                            consumer: consumer_id,
                            attempt,
                            generation: self.generation,
                        },
                    );
                    self.deadlines
                        .push_back((now + self.cfg.ack_deadline, o, self.generation));
                    deliveries.push(Delivery {
                        offset: o,
                        attempt,
                        record: Some(record),
                    });
                }
                let c = &mut self.consumers[ci];
                c.in_flight += deliveries.len() as u32;
                c.delivered += deliveries.len() as u64;
                self.replica
                    .metrics
                    .delivered
                    .inc_by(deliveries.len() as u64);
                let msg = ConsumeResponse {
                    kind: Some(consume_response::Kind::Deliveries(Deliveries {
                        deliveries,
                    })),
                };
                if c.tx.send(Ok(msg)).is_err() {
                    gone.push(c.id);
                }
            }
            self.rr = (self.rr + 1) % n;
            if !progress {
                break;
            }
        }
        for id in gone {
            self.leave(id, true);
        }
        if !self.attempts_out.is_empty() {
            self.flush_at
                .get_or_insert_with(|| now + self.cfg.ack_flush);
        }
    }

    async fn flush(&mut self, wait: bool) {
        self.flush_at = None;
        let mut cmds = Vec::new();
        // Entries stay well below the log's entry limit (8 bytes per acked offset).
        for chunk in std::mem::take(&mut self.acks).chunks(MAX_OFFSETS_PER_ENTRY) {
            cmds.push(Command::Ack {
                offsets: chunk.to_vec(),
            });
        }
        for chunk in std::mem::take(&mut self.attempts_out).chunks(MAX_OFFSETS_PER_ENTRY) {
            cmds.push(Command::Attempts {
                entries: chunk.to_vec(),
            });
        }
        let dead = std::mem::take(&mut self.dead);
        let dl = if dead.is_empty() {
            None
        } else {
            Some(tokio::spawn(dead_letter(
                Arc::clone(&self.replica),
                self.dlq.clone(),
                dead,
                self.cfg.tls.clone(),
            )))
        };
        if !cmds.is_empty() {
            if wait {
                if let Err(e) = self.replica.propose(cmds).await {
                    tracing::error!(stream = %self.replica.spec.name, error = %e, "ack flush failed");
                }
            } else {
                self.replica.propose_nowait(cmds);
            }
        }
        if let (true, Some(h)) = (wait, dl) {
            let _ = h.await;
        }
    }

    fn publish(&mut self, now: Instant) {
        self.stats
            .consumers
            .store(self.consumers.len() as u64, Ordering::Relaxed);
        self.stats
            .in_flight
            .store(self.flights.len() as u64, Ordering::Relaxed);
        let m = &self.replica.metrics;
        m.in_flight.set(self.flights.len() as i64);
        m.consumers.set(self.consumers.len() as i64);
        if now.duration_since(self.published) >= Duration::from_millis(250) {
            self.published = now;
            let list = self
                .consumers
                .iter()
                .map(|c| ConsumerInfo {
                    id: c.id,
                    name: c.name.clone(),
                    window: c.window,
                    in_flight: c.in_flight,
                    delivered: c.delivered,
                })
                .collect();
            *self
                .stats
                .consumer_list
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = list;
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Appends `records` (non-idempotently: the dead-letter stream deduplicates by key) to
/// `stream` here when this node leads it, else through the leader's client port. Retries for
/// up to 30 s while no leader is known.
///
/// Errors: the last error when every attempt failed.
async fn append_anywhere(
    stream: &Replica,
    records: Vec<Record>,
    tls: Option<&txpipe_client::tls::TlsOptions>,
) -> crate::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(50);
    loop {
        let cmd = Command::Append {
            producer_id: 0,
            epoch: 0,
            sequence: 0,
            position: 0,
            records: records.clone(),
        };
        let err = match stream.propose(vec![cmd]).await {
            Ok(_) => return Ok(()),
            Err(crate::Error::NotLeader {
                leader: Some(addr), ..
            }) => match remote_append(&addr, &stream.spec.name, records.clone(), tls).await {
                Ok(()) => return Ok(()),
                Err(e) => crate::Error::Unavailable(format!("append at leader {addr}: {e}")),
            },
            Err(e) => e,
        };
        if Instant::now() + backoff > deadline {
            return Err(err);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn remote_append(
    addr: &str,
    stream: &str,
    records: Vec<Record>,
    tls: Option<&txpipe_client::tls::TlsOptions>,
) -> Result<(), String> {
    use txpipe_client::broker::v1::ProduceRequest;
    use txpipe_client::broker::v1::broker_client::BrokerClient;
    let ep =
        txpipe_client::connect::endpoint_with(&txpipe_client::connect::normalize_addr(addr), tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
    let mut client = BrokerClient::new(ep.connect().await.map_err(|e| e.to_string())?);
    let req = ProduceRequest {
        stream: stream.to_string(),
        producer_id: 0,
        sequence: 0,
        records,
        ..Default::default()
    };
    let mut resp = client
        .produce(tokio_stream::once(req))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match resp.message().await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("Produce ended without an answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Moves `dead` offsets of `source` to its dead-letter stream, then resolves them.
async fn dead_letter(
    source: Arc<Replica>,
    dlq: Option<Arc<Replica>>,
    dead: Vec<(u64, u32, String)>,
    tls: Option<txpipe_client::tls::TlsOptions>,
) {
    let offsets: Vec<u64> = dead.iter().map(|d| d.0).collect();
    let records = source.read_records(&offsets);
    if let Some(dlq) = dlq {
        let now = txpipe_client::now_us();
        let letters: Vec<Record> = dead
            .iter()
            .zip(&records)
            .map(|((offset, attempts, reason), r)| {
                let r = r.clone().unwrap_or_default();
                let key = if r.key.is_empty() {
                    bytes::Bytes::from(format!("{}/{offset}", source.spec.name))
                } else {
                    r.key.clone()
                };
                let letter = DeadLetter {
                    stream: source.spec.name.clone(),
                    offset: *offset,
                    attempts: *attempts,
                    reason: reason.clone(),
                    original_key: r.key.to_vec(),
                    original_value: r.value.to_vec(),
                    original_timestamp_us: r.timestamp_us,
                };
                Record {
                    key,
                    value: letter.encode_to_vec().into(),
                    timestamp_us: now,
                }
            })
            .collect();
        if let Err(e) = append_anywhere(&dlq, letters, tls.as_ref()).await {
            tracing::error!(stream = %source.spec.name, dead_letter_stream = %dlq.spec.name, error = %e, "dead-letter append failed; offsets stay unresolved until restart");
            return;
        }
    }
    let mut by_reason: HashMap<&str, Vec<u64>> = HashMap::new();
    for (o, _, reason) in &dead {
        by_reason.entry(reason.as_str()).or_default().push(*o);
    }
    let cmds: Vec<Command> = by_reason
        .into_iter()
        .map(|(reason, offsets)| Command::DeadLettered {
            offsets,
            reason: reason.to_string(),
        })
        .collect();
    tracing::warn!(stream = %source.spec.name, count = dead.len(), "messages dead-lettered");
    if let Err(e) = source.propose(cmds).await {
        tracing::error!(stream = %source.spec.name, error = %e, "dead-lettered command failed");
    }
}
