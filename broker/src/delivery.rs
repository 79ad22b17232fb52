//! Work-queue delivery: the consumer group of one stream (leader-local soft state).
//!
//! The group's bookkeeping is the pure state machine [`queue::Queue`]: windows, in-flight
//! deliveries, ack deadlines, nack delays, attempt numbers, ack batching and dead-letter
//! decisions, with the rules listed there. It takes the time and events as arguments and
//! returns [`queue::Action`]s, so every transition has a unit test without a clock or a broker.
//!
//! This module is its runtime: one task per work-queue stream owns the queue, every consumer's
//! send half and the timer, so nothing here takes a lock per message. It turns [`Event`]s from
//! the Consume calls, the stream's end offset from the replica and timer wake-ups into
//! [`queue::Input`]s, and performs the actions:
//!
//! - [`queue::Action::Deliver`]: reads the records and sends them in one `Deliveries` message
//!   (a record that cannot be read goes back as [`queue::Input::Missing`] and is dead-lettered;
//!   when the consumer's call is gone, what was not sent goes back as
//!   [`queue::Input::Undelivered`] and the consumer leaves with [`queue::Input::Leave`]);
//! - [`queue::Action::Propose`]: one `Ack` and one `Attempts` command (acks are not answered;
//!   an ack received but not yet durable is lost on a crash, so that message is delivered again
//!   after the restart: the at-least-once window is `ack_flush` plus one fsync; decisions are
//!   deduplicated by key, so the effect stays exactly-once). A first delivery's attempt is not
//!   persisted: after a restart it may be delivered again as attempt 1;
//! - [`queue::Action::DeadLetter`]: appends a `DeadLetter` record per offset to the stream's
//!   dead-letter stream (deduplicated by key there, so a retry does not write it twice), then
//!   resolves the offsets with a `DeadLettered` command, and reports the outcome back so a
//!   failure is retried with backoff ([`queue::DEAD_LETTER_RETRY_MAX_MS`]).
//!
//! An ack for an offset that is in flight to *another* consumer, or waiting for redelivery, is
//! accepted (the work was done); an ack for an offset never delivered, or already acked, is
//! ignored (not an error: it is what a late ack after a broker restart looks like).

pub mod queue;

use std::collections::{HashMap, VecDeque};
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
pub use queue::{ACK_FLUSH_OFFSETS, MAX_DELIVERIES_PER_MESSAGE, MAX_WINDOW};
use queue::{Action, DeadLetterOrder, FailKind, Input, Queue, QueueConfig};

/// Most offsets in one `Ack` or `Attempts` log entry (512 KiB of offsets).
pub const MAX_OFFSETS_PER_ENTRY: usize = 65_536;

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
        let queue_config = QueueConfig {
            ack_deadline_ms: config.ack_deadline.as_millis() as u64,
            max_deliveries: config.max_deliveries,
            ack_flush_ms: config.ack_flush.as_millis() as u64,
        };
        // Offsets at or above the end when the queue starts are checked by nobody: this leader
        // appended them. Below it, resolved ones (and ones no longer stored) are skipped.
        let queue = replica.with_core(|c| {
            let s = &c.state;
            Queue::new(
                queue_config,
                s.ack_floor(),
                s.next_offset(),
                |o| s.is_resolved(o) || o < s.start_offset(),
                s.attempts().iter().map(|(o, a)| (*o, *a)),
            )
        });
        let (dl_tx, dl_rx) = mpsc::unbounded_channel();
        let engine = Engine {
            end_rx: replica.watch_end(),
            replica,
            dlq,
            stats: Arc::clone(&stats),
            queue,
            epoch: Instant::now(),
            consumers: HashMap::new(),
            dl_tx,
            tls: config.tls.clone(),
            published: Instant::now(),
            stopped: false,
        };
        tokio::spawn(engine.run(rx, dl_rx));
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

/// A dead-letter outcome: the orders and whether they were appended and resolved.
type DeadLetterOutcome = (Vec<DeadLetterOrder>, bool);

/// The runtime of a [`Queue`]: performs its actions (see the module docs).
struct Engine {
    replica: Arc<Replica>,
    dlq: Option<Arc<Replica>>,
    stats: Arc<DeliveryStats>,
    end_rx: watch::Receiver<u64>,
    queue: Queue,
    /// The queue's clock: its `now_ms` is the time since this.
    epoch: Instant,
    /// Name and send half of each connected consumer.
    consumers: HashMap<u64, (String, ConsumerTx)>,
    /// Where spawned dead-letter appends report their outcome.
    dl_tx: mpsc::UnboundedSender<DeadLetterOutcome>,
    /// Mutual TLS for dead letters forwarded to the leader of the dead-letter stream.
    tls: Option<txpipe_client::tls::TlsOptions>,
    published: Instant,
    stopped: bool,
}

impl Engine {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut dl_rx: mpsc::UnboundedReceiver<DeadLetterOutcome>,
    ) {
        loop {
            let wake = self
                .queue
                .next_wake()
                .map(|ms| self.epoch + Duration::from_millis(ms));
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
                    let end = *self.end_rx.borrow_and_update();
                    self.step(Input::End(end), false).await;
                }
                Some((orders, ok)) = dl_rx.recv() => {
                    self.step(Input::DeadLetterResult { orders, ok }, false).await;
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {}
            }
            if self.stopped {
                break;
            }
            self.step(Input::Tick, false).await;
            self.publish(Instant::now());
        }
        self.step(Input::Flush, true).await;
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Steps the queue with `input` and performs the actions, and those of the inputs that
    /// performing them reports back. `wait`: wait until proposals and dead letters are done.
    async fn step(&mut self, input: Input, wait: bool) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let actions = self.queue.step(self.now_ms(), input);
            // Consumers found gone while sending: they leave after every delivery not sent to
            // them is reported, so only what they really held counts a failed attempt.
            let mut gone = Vec::new();
            for a in actions {
                self.perform(a, wait, &mut inputs, &mut gone).await;
            }
            inputs.extend(gone.into_iter().map(|consumer| Input::Leave {
                consumer,
                count_attempt: true,
            }));
        }
    }

    async fn perform(
        &mut self,
        action: Action,
        wait: bool,
        inputs: &mut VecDeque<Input>,
        gone: &mut Vec<u64>,
    ) {
        match action {
            Action::Deliver {
                consumer,
                deliveries,
            } => {
                let offsets: Vec<u64> = deliveries.iter().map(|(o, _)| *o).collect();
                if !self.consumers.contains_key(&consumer) {
                    inputs.push_back(Input::Undelivered { consumer, offsets });
                    return;
                }
                let records = self.replica.read_records(&offsets);
                let mut missing = Vec::new();
                let mut out = Vec::with_capacity(deliveries.len());
                for ((offset, attempt), r) in deliveries.into_iter().zip(records) {
                    match r {
                        Some(record) => out.push(Delivery {
                            offset,
                            attempt,
                            record: Some(record),
                        }),
                        None => missing.push(offset),
                    }
                }
                if !missing.is_empty() {
                    tracing::error!(stream = %self.replica.spec.name, offsets = ?missing, "records to deliver are missing; dead-lettering them");
                    inputs.push_back(Input::Missing { offsets: missing });
                }
                let sent: Vec<u64> = out.iter().map(|d| d.offset).collect();
                let msg = ConsumeResponse {
                    kind: Some(consume_response::Kind::Deliveries(Deliveries {
                        deliveries: out,
                    })),
                };
                let ok = self
                    .consumers
                    .get(&consumer)
                    .is_some_and(|(_, tx)| tx.send(Ok(msg)).is_ok());
                if ok {
                    self.replica.metrics.delivered.inc_by(sent.len() as u64);
                } else {
                    inputs.push_back(Input::Undelivered {
                        consumer,
                        offsets: sent,
                    });
                    gone.push(consumer);
                    if let Some((name, _)) = self.consumers.remove(&consumer) {
                        tracing::info!(stream = %self.replica.spec.name, consumer = %name, id = consumer, "consumer gone; deliveries not sent go to others");
                    }
                }
            }
            Action::Propose { acks, attempts } => {
                let mut cmds = Vec::new();
                // Entries stay well below the log's entry limit (8 bytes per acked offset).
                for chunk in acks.chunks(MAX_OFFSETS_PER_ENTRY) {
                    cmds.push(Command::Ack {
                        offsets: chunk.to_vec(),
                    });
                }
                for chunk in attempts.chunks(MAX_OFFSETS_PER_ENTRY) {
                    cmds.push(Command::Attempts {
                        entries: chunk.to_vec(),
                    });
                }
                if wait {
                    if let Err(e) = self.replica.propose(cmds).await {
                        tracing::error!(stream = %self.replica.spec.name, error = %e, "ack flush failed");
                    }
                } else {
                    self.replica.propose_nowait(cmds);
                }
            }
            Action::DeadLetter { orders } => {
                let source = Arc::clone(&self.replica);
                let dlq = self.dlq.clone();
                let done = self.dl_tx.clone();
                let tls = self.tls.clone();
                let task = tokio::spawn(async move {
                    let ok = dead_letter(source, dlq, &orders, tls.as_ref()).await;
                    let _ = done.send((orders, ok));
                });
                if wait {
                    let _ = task.await;
                }
            }
            Action::Redelivery(kind) => {
                let m = &self.replica.metrics;
                match kind {
                    FailKind::Deadline => m.redelivered_deadline.inc(),
                    FailKind::Nack => m.redelivered_nack.inc(),
                    FailKind::Disconnect => m.redelivered_disconnect.inc(),
                }
                self.stats.redelivered_total.fetch_add(1, Ordering::Relaxed);
            }
        }
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
                self.consumers.insert(id, (name, tx));
                let input = Input::Join {
                    consumer: id,
                    window,
                };
                self.step(input, false).await;
            }
            Event::Leave { id, shutdown } => self.leave(id, !shutdown).await,
            Event::Ack { id: _, offsets } => self.step(Input::Ack { offsets }, false).await,
            Event::Nack {
                id,
                offsets,
                delay_ms,
                reason,
                permanent,
            } => {
                let input = Input::Nack {
                    consumer: id,
                    offsets,
                    delay_ms: u64::from(delay_ms),
                    reason,
                    permanent,
                };
                self.step(input, false).await;
            }
            Event::SetWindow { id, window } => {
                let input = Input::SetWindow {
                    consumer: id,
                    window,
                };
                self.step(input, false).await;
            }
            Event::Flush(done) => {
                self.step(Input::Flush, true).await;
                let _ = done.send(());
            }
            Event::Stop => self.stopped = true,
        }
    }

    async fn leave(&mut self, id: u64, count_attempt: bool) {
        let held = self
            .queue
            .consumers()
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.in_flight);
        if let (Some((name, _)), Some(held)) = (self.consumers.remove(&id), held) {
            tracing::info!(stream = %self.replica.spec.name, consumer = %name, id, redelivering = held, "consumer left");
        }
        let input = Input::Leave {
            consumer: id,
            count_attempt,
        };
        self.step(input, false).await;
    }

    fn publish(&mut self, now: Instant) {
        let consumers = self.queue.consumers();
        let in_flight = self.queue.in_flight();
        self.stats
            .consumers
            .store(consumers.len() as u64, Ordering::Relaxed);
        self.stats
            .in_flight
            .store(in_flight as u64, Ordering::Relaxed);
        let m = &self.replica.metrics;
        m.in_flight.set(in_flight as i64);
        m.consumers.set(consumers.len() as i64);
        if now.duration_since(self.published) >= Duration::from_millis(250) {
            self.published = now;
            let list = consumers
                .iter()
                .map(|c| ConsumerInfo {
                    id: c.id,
                    name: self
                        .consumers
                        .get(&c.id)
                        .map(|(n, _)| n.clone())
                        .unwrap_or_default(),
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

/// Moves the `orders`' offsets of `source` to its dead-letter stream, then resolves them.
/// Returns whether both steps succeeded (the queue retries the orders otherwise; the
/// dead-letter stream deduplicates the letters by key).
async fn dead_letter(
    source: Arc<Replica>,
    dlq: Option<Arc<Replica>>,
    orders: &[DeadLetterOrder],
    tls: Option<&txpipe_client::tls::TlsOptions>,
) -> bool {
    let offsets: Vec<u64> = orders.iter().map(|d| d.offset).collect();
    let records = source.read_records(&offsets);
    if let Some(dlq) = dlq {
        let now = txpipe_client::now_us();
        let letters: Vec<Record> = orders
            .iter()
            .zip(&records)
            .map(|(order, r)| {
                let r = r.clone().unwrap_or_default();
                let key = if r.key.is_empty() {
                    bytes::Bytes::from(format!("{}/{}", source.spec.name, order.offset))
                } else {
                    r.key.clone()
                };
                let letter = DeadLetter {
                    stream: source.spec.name.clone(),
                    offset: order.offset,
                    attempts: order.attempts,
                    reason: order.reason.clone(),
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
        // Test-only error injection (feature `failpoints`): the append fails as if the
        // dead-letter stream's leader were unreachable.
        #[cfg(feature = "failpoints")]
        let injected = fail::eval("delivery::dead_letter_append", |_| ()).is_some();
        #[cfg(not(feature = "failpoints"))]
        let injected = false;
        let appended = if injected {
            Err(crate::Error::Unavailable(
                "failpoint delivery::dead_letter_append".into(),
            ))
        } else {
            append_anywhere(&dlq, letters, tls).await
        };
        if let Err(e) = appended {
            source.metrics.dead_letter_failures.inc();
            tracing::error!(stream = %source.spec.name, dead_letter_stream = %dlq.spec.name, error = %e, "dead-letter append failed; retrying with backoff");
            return false;
        }
    }
    let mut by_reason: HashMap<&str, Vec<u64>> = HashMap::new();
    for o in orders {
        by_reason
            .entry(o.reason.as_str())
            .or_default()
            .push(o.offset);
    }
    let cmds: Vec<Command> = by_reason
        .into_iter()
        .map(|(reason, offsets)| Command::DeadLettered {
            offsets,
            reason: reason.to_string(),
        })
        .collect();
    if let Err(e) = source.propose(cmds).await {
        source.metrics.dead_letter_failures.inc();
        tracing::error!(stream = %source.spec.name, error = %e, "dead-lettered command failed; retrying with backoff");
        return false;
    }
    tracing::warn!(stream = %source.spec.name, count = orders.len(), "messages dead-lettered");
    true
}
