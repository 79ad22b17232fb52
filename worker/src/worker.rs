//! The worker's event loop.
//!
//! One task owns all state and reacts to events in a `select!` loop:
//!
//! 1. deliveries arrive on the Consume stream (up to `--window` unacked) and are queued;
//! 2. the queue is scored in chunks of `--score-chunk` (stages 1-4, CPU); records that cannot
//!    be scored on any attempt (undecodable, wrong features, non-finite values) are nacked as
//!    permanent, and the broker dead-letters them on this first attempt;
//! 3. each scored chunk issues its issuer calls concurrently (stage 5, [`HiResTimer`]): with
//!    `window` transactions in flight and a 100 µs call, Little's law allows
//!    `window / 100 µs` transactions/s from the wait alone, far above the CPU limit;
//! 4. decisions are appended to `decisions` in batches of `--decision-batch` or after
//!    `--decision-linger-us`, through the idempotent [`Producer`];
//! 5. when a batch's receipt resolves (the decisions are durable), its transactions are acked.
//!
//! So a transaction is acked only after its decision is stored.
//!
//! # Failover
//!
//! The Consume call follows the Raft leader of `transactions` through a [`LeaderRouter`]: when
//! the call is refused or ends with `UNAVAILABLE` (the node is not, or no longer, the leader)
//! or a transport error (the leader died), the worker follows the `txpipe-leader` hint or
//! tries the next broker, with backoff (50 ms doubling to 1 s) for at most
//! `--reconnect-deadline-ms`, and subscribes again with the same window. Deliveries received
//! on the old call are **kept**: they are still scored, their decisions still produced, and
//! their acks are sent on the new call (the leader accepts an ack for any offset still pending,
//! whoever delivered it). Acks that become due while no call is open are held and sent as soon
//! as the new call is subscribed. A delivery of an offset the worker already holds (the new
//! leader redelivering it) is ignored: the ack of the first copy resolves both; a redelivery of
//! an offset acked lately (the last `4 × window`, at least 4096) is acked again at once without
//! scoring a second decision. The decision
//! [`Producer`] follows the leader of `decisions` on its own (leaders of different streams may
//! be on different nodes). What can still happen twice is bounded by the at-least-once window:
//! an ack lost with a dying leader makes the offset come back, it is re-scored, and the broker
//! drops the second decision by key.
//!
//! # Drain
//!
//! On shutdown the worker sets its window to 0, finishes everything in flight, and returns;
//! what is not done within `--drain-grace-ms` stays unacked and is redelivered. A drain does not
//! reconnect: acks held because the call broke during the drain are not sent
//! ([`WorkerStats::orphaned`]) and those transactions are redelivered.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Streaming;
use tracing::{debug, info, warn};
use txpipe_client::broker::v1::{
    Ack, ConsumeRequest, ConsumeResponse, Delivery, Nack, Record, SetWindow, Subscribe, Subscribed,
    consume_request, consume_response,
};
use txpipe_client::connect::ConnectError;
use txpipe_client::leader::{LeaderError, LeaderRouter, Target};
use txpipe_client::pipeline::v1::{Outcome, Transaction};
use txpipe_client::produce::Receipt;
use txpipe_client::produce::{ProduceError, Producer, ProducerConfig};
use txpipe_client::{now_us, streams};

use crate::config::Config;
use crate::metrics::{AdminState, Metrics};
use crate::scoring::{Assessment, DeliveryMeta, Scorer, Stage};
use crate::timer::HiResTimer;
use crate::{Error, Result};

/// Totals of one [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Transactions through the CPU stages (includes re-scored redeliveries).
    pub scored: u64,
    /// Transactions acked after their decision was durable.
    pub acked: u64,
    /// Undecodable transactions nacked.
    pub nacked: u64,
    /// Acked decisions by outcome.
    pub approved: u64,
    /// Acked decisions by outcome.
    pub reviewed: u64,
    /// Acked decisions by outcome.
    pub declined: u64,
    /// Decisions made durable whose ack could not be sent before the worker stopped (no
    /// consume call was open; the broker redelivers them and drops the second decision by
    /// key).
    pub orphaned: u64,
    /// Consume calls that broke and were re-opened (failovers included).
    pub reconnects: u64,
    /// Redeliveries not scored again: of an offset the worker still held (the ack of the
    /// first copy resolves both), or of one it had just acked (its ack crossed the redelivery
    /// or was lost with a failed leader; it is acked again at once, no second decision).
    pub duplicate_deliveries: u64,
    /// Deliveries left unfinished when the drain grace period ran out.
    pub unfinished: u64,
}

/// The last `cap` offsets acked, with set lookup.
struct RecentAcks {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl RecentAcks {
    fn new(cap: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(cap),
            set: HashSet::with_capacity(cap),
            cap,
        }
    }

    fn contains(&self, offset: u64) -> bool {
        self.set.contains(&offset)
    }

    fn insert(&mut self, offset: u64) {
        if !self.set.insert(offset) {
            return;
        }
        self.order.push_back(offset);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
    }
}

/// One scored transaction waiting for its issuer call.
struct ScoredTx {
    tx_id: String,
    meta: DeliveryMeta,
    assessment: Assessment,
    started: Instant,
}

/// A decision inside a produce batch.
struct Written {
    offset: u64,
    outcome: Outcome,
}

type CallFuture = Pin<Box<dyn Future<Output = (Vec<ScoredTx>, Duration)> + Send>>;
type ReceiptFuture = Pin<Box<dyn Future<Output = (Vec<Written>, Result<(), ProduceError>)> + Send>>;
/// An open, subscribed Consume call.
struct Session {
    /// Requests (acks, nacks, window changes) of the call.
    tx: mpsc::Sender<ConsumeRequest>,
    /// Deliveries of the call.
    stream: Streaming<ConsumeResponse>,
    /// The node serving it (the leader of `transactions`).
    target: Target,
    /// The broker's answer to the subscription.
    subscribed: Subscribed,
}
type SessionFuture = Pin<Box<dyn Future<Output = Result<Session>> + Send>>;

/// The worker error for a failover of the Consume call that ended with `e`.
fn consume_error(e: LeaderError) -> Error {
    match e {
        LeaderError::Rejected(status) => Error::Consume {
            code: status.code(),
            message: status.message().to_string(),
        },
        e @ LeaderError::Unavailable { .. } => Error::Connect(ConnectError::from(e)),
    }
}

/// Opens a subscribed Consume call on the leader of `transactions`. `broke` is the failure of
/// the previous call, if any: it starts the failover (leader hint or next broker, backoff).
/// Each attempt sends the subscription and waits for `Subscribed`; a refusal moves on to the
/// next candidate until `deadline` has passed.
///
/// Errors: [`Error::Consume`] for a status that is not about leadership or availability
/// (NOT_FOUND for an unknown stream or group, ...); [`Error::Connect`] when no leader answered
/// within `deadline`.
async fn open_session(
    router: LeaderRouter,
    subscribe: Subscribe,
    deadline: Duration,
    broke: Option<(Target, tonic::Status)>,
) -> Result<Session> {
    let mut failover = router.failover(streams::TRANSACTIONS, deadline);
    if let Some((target, status)) = broke {
        failover
            .failed(&target, status)
            .await
            .map_err(consume_error)?;
    }
    loop {
        let target = failover.target().await.map_err(consume_error)?;
        let (tx, rx) = mpsc::channel(4096);
        let sub = ConsumeRequest {
            kind: Some(consume_request::Kind::Subscribe(subscribe.clone())),
        };
        tx.send(sub).await.expect("receiver alive");
        let attempt = async {
            let mut stream = target
                .client()
                .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            match stream.message().await? {
                Some(ConsumeResponse {
                    kind: Some(consume_response::Kind::Subscribed(s)),
                }) => Ok((stream, s)),
                Some(_) => Err(tonic::Status::internal(
                    "broker sent a delivery before confirming the subscription",
                )),
                None => Err(tonic::Status::unavailable(
                    "consume call ended before the subscription was confirmed",
                )),
            }
        };
        let limit = failover.time_left().max(Duration::from_secs(1));
        let status = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok((stream, subscribed))) => {
                failover.succeeded(&target);
                return Ok(Session {
                    tx,
                    stream,
                    target,
                    subscribed,
                });
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "{} did not confirm the subscription within {} ms",
                target.addr,
                limit.as_millis()
            )),
        };
        failover
            .failed(&target, status)
            .await
            .map_err(consume_error)?;
    }
}

async fn poll_opt<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    s: &mut Option<Streaming<ConsumeResponse>>,
) -> Result<Option<ConsumeResponse>, tonic::Status> {
    match s {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Runs a worker until `shutdown` resolves (then drains) or `--max-transactions` decisions
/// are acked. Serves the admin endpoints on `admin_listener` meanwhile.
///
/// Errors: [`Error::Config`]/[`Error::Model`] before anything starts; [`Error::Connect`] when
/// no broker is reachable within `--reconnect-deadline-ms`; [`Error::Consume`] when the broker
/// refuses the subscription (e.g. NOT_FOUND); [`Error::Produce`] when decisions cannot be
/// stored.
pub async fn run<F>(
    config: Config,
    admin_listener: tokio::net::TcpListener,
    shutdown: F,
) -> Result<WorkerStats>
where
    F: Future<Output = ()> + Send + 'static,
{
    config.validate()?;
    let addrs = config.broker_addrs()?;
    let pan_key = config.pan_keyring()?;
    info!(pan_key_ids = %pan_key.ids(), "PAN keyring loaded");
    let name = config.worker_name();
    let scorer = Arc::new(config.scorer(pan_key)?);
    let thresholds = *scorer.thresholds();
    info!(
        worker = %name,
        model_version = %scorer.model_version(),
        feature_set = scorer.vector_model().map(|v| v.feature_set()).unwrap_or("-"),
        review = thresholds.review,
        decline = thresholds.decline,
        crypto_rounds = config.crypto_rounds,
        issuer_latency_us = config.issuer_latency_us,
        window = config.window,
        "worker starting"
    );
    let timer = HiResTimer::start()?;
    let metrics = Metrics::new();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let router = crate::metrics::router(AdminState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, router)
            .with_graceful_shutdown(async move {
                let _ = admin_stopped.await;
            })
            .await
    });

    // The decision producer follows the leader of `decisions` with its own router (and so its
    // own connections, as before); the consume loop follows the leader of `transactions`.
    let tls = config.tls.options().map_err(Error::Config)?;
    let router = LeaderRouter::with_config(
        addrs.clone(),
        txpipe_client::leader::LeaderConfig {
            tls: tls.clone(),
            ..Default::default()
        },
    )?;
    let producer = Producer::connect(ProducerConfig {
        max_in_flight: config.produce_in_flight,
        reconnect_deadline: Duration::from_millis(config.reconnect_deadline_ms),
        ack_timeout: Duration::from_millis(config.produce_ack_timeout_ms),
        leader_probe_after: Duration::from_millis(config.produce_leader_probe_after_ms),
        tls,
        ..ProducerConfig::new(addrs, streams::DECISIONS)
    })
    .await?;

    let mut ev = EventLoop {
        config: &config,
        name,
        scorer,
        timer,
        metrics,
        ready,
        producer,
        stats: WorkerStats::default(),
        session: 0,
        req_tx: None,
        in_flight: 0,
        queue: VecDeque::new(),
        held: HashSet::new(),
        held_acks: Vec::new(),
        recent_acks: RecentAcks::new((4 * config.window as usize).max(4096)),
        calls: FuturesUnordered::new(),
        buffer: Vec::new(),
        buffer_meta: Vec::new(),
        buffer_deadline: None,
        receipts: FuturesUnordered::new(),
        draining: false,
    };
    let result = ev.run(router, shutdown).await;
    let EventLoop {
        producer,
        mut stats,
        ready,
        held_acks,
        ..
    } = ev;
    stats.orphaned += held_acks.len() as u64;
    ready.store(false, Ordering::Relaxed);
    // Decisions already sent are either durable (receipts resolved) or abandoned; closing
    // waits for the rest, bounded so a dead broker cannot hold the exit.
    match tokio::time::timeout(Duration::from_secs(5), producer.close()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "decision producer closed with an error"),
        Err(_) => warn!("decision producer did not close within 5 s"),
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
    result?;
    info!(
        acked = stats.acked,
        nacked = stats.nacked,
        scored = stats.scored,
        reconnects = stats.reconnects,
        unfinished = stats.unfinished,
        "worker stopped"
    );
    Ok(stats)
}

struct EventLoop<'a> {
    config: &'a Config,
    name: String,
    scorer: Arc<Scorer>,
    timer: HiResTimer,
    metrics: Metrics,
    ready: Arc<std::sync::atomic::AtomicBool>,
    producer: Producer,
    stats: WorkerStats,
    /// Consume calls opened so far (the current one's number).
    session: u64,
    req_tx: Option<mpsc::Sender<ConsumeRequest>>,
    /// Deliveries received and not resolved yet (queued, scoring, in a call, buffered, or
    /// waiting for their produce receipt).
    in_flight: u64,
    queue: VecDeque<Delivery>,
    /// Offsets received and not yet acked or nacked (in flight or in `held_acks`): a
    /// redelivery of one of them is ignored.
    held: HashSet<u64>,
    /// Acks due while no consume call was open; sent once the next call is subscribed.
    held_acks: Vec<u64>,
    /// Offsets acked lately, for redeliveries that cross their ack.
    recent_acks: RecentAcks,
    calls: FuturesUnordered<CallFuture>,
    buffer: Vec<Record>,
    buffer_meta: Vec<Written>,
    buffer_deadline: Option<tokio::time::Instant>,
    receipts: FuturesUnordered<ReceiptFuture>,
    draining: bool,
}

impl EventLoop<'_> {
    async fn run<F>(&mut self, router: LeaderRouter, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut shutdown = Box::pin(shutdown);
        let mut shutdown_seen = false;
        let mut drain_deadline = far_future();
        let mut connecting: Option<SessionFuture> = None;
        let mut inbound: Option<Streaming<ConsumeResponse>> = None;
        // The node serving the open call, and the failure the next opening starts from.
        let mut current: Option<Target> = None;
        let mut broke: Option<(Target, tonic::Status)> = None;
        let subscribe = Subscribe {
            stream: streams::TRANSACTIONS.to_string(),
            group: self.config.group.clone(),
            consumer_name: self.name.clone(),
            window: self.config.window,
        };
        let reconnect_deadline = Duration::from_millis(self.config.reconnect_deadline_ms);
        loop {
            if self.draining && self.in_flight == 0 {
                break;
            }
            if inbound.is_none() && connecting.is_none() && !self.draining {
                connecting = Some(Box::pin(open_session(
                    router.clone(),
                    subscribe.clone(),
                    reconnect_deadline,
                    broke.take(),
                )));
            }
            tokio::select! {
                biased;
                _ = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    info!(in_flight = self.in_flight, "shutdown requested; draining");
                    drain_deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.drain_grace_ms);
                    self.start_drain(&mut connecting).await;
                }
                _ = tokio::time::sleep_until(drain_deadline), if self.draining => {
                    warn!(unfinished = self.in_flight, "drain grace period over; leaving the rest unacked");
                    self.stats.unfinished = self.in_flight;
                    break;
                }
                res = poll_opt(&mut connecting) => {
                    connecting = None;
                    let s = res?;
                    self.session += 1;
                    self.req_tx = Some(s.tx);
                    inbound = Some(s.stream);
                    let sub = &s.subscribed;
                    info!(broker = %s.target.addr, session = self.session, stream = %sub.stream, group = %sub.group, window = sub.window, ack_deadline_ms = sub.ack_deadline_ms, max_deliveries = sub.max_deliveries, in_flight = self.in_flight, held_acks = self.held_acks.len(), "subscribed");
                    current = Some(s.target);
                    if !self.draining {
                        self.ready.store(true, Ordering::Relaxed);
                    }
                    // Acks that came due while no call was open: the leader accepts them for
                    // any offset still pending, whichever call delivered it.
                    let held = std::mem::take(&mut self.held_acks);
                    self.ack(held).await;
                    if self.max_reached() {
                        info!(acked = self.stats.acked, "--max-transactions reached; draining");
                        drain_deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.drain_grace_ms);
                        self.start_drain(&mut connecting).await;
                    }
                }
                Some((written, res)) = self.receipts.next(), if !self.receipts.is_empty() => {
                    res?;
                    self.on_durable(written).await;
                    if self.max_reached() {
                        info!(acked = self.stats.acked, "--max-transactions reached; draining");
                        drain_deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.drain_grace_ms);
                        self.start_drain(&mut connecting).await;
                    }
                }
                Some((scored, waited)) = self.calls.next(), if !self.calls.is_empty() => {
                    self.on_called(scored, waited).await?;
                }
                msg = next_message(&mut inbound) => match msg {
                    Ok(Some(resp)) => match resp.kind {
                        Some(consume_response::Kind::Subscribed(s)) => {
                            debug!(stream = %s.stream, window = s.window, "subscription confirmed again");
                        }
                        Some(consume_response::Kind::Deliveries(d)) => {
                            let mut reacks = Vec::new();
                            for delivery in d.deliveries {
                                if self.recent_acks.contains(delivery.offset) {
                                    // Decided and acked already; the ack crossed this
                                    // redelivery or was lost. Ack again, do not re-score.
                                    self.stats.duplicate_deliveries += 1;
                                    reacks.push(delivery.offset);
                                } else if self.held.insert(delivery.offset) {
                                    self.in_flight += 1;
                                    self.queue.push_back(delivery);
                                } else {
                                    // Still held (delivered by the previous leader): the ack
                                    // of that copy resolves this one too.
                                    self.stats.duplicate_deliveries += 1;
                                }
                            }
                            self.metrics.in_flight.set(self.in_flight as i64);
                            if !reacks.is_empty() {
                                self.send(consume_request::Kind::Ack(Ack { offsets: reacks })).await;
                            }
                        }
                        None => {}
                    },
                    other => {
                        let status = match other {
                            Err(s) => s,
                            _ => tonic::Status::unavailable("consume stream ended"),
                        };
                        inbound = None;
                        self.req_tx = None;
                        self.ready.store(false, Ordering::Relaxed);
                        // Deliveries of the broken call are kept and finished; their acks go
                        // on the next call. The failure starts the failover (open_session).
                        broke = current.take().map(|t| (t, status.clone()));
                        if !self.draining {
                            self.stats.reconnects += 1;
                            self.metrics.reconnects.inc();
                        }
                        warn!(code = ?status.code(), error = %status.message(), in_flight = self.in_flight, draining = self.draining, "consume call broken; failing over");
                    }
                },
                _ = tokio::time::sleep_until(self.buffer_deadline.unwrap_or_else(far_future)), if !self.buffer.is_empty() => {
                    self.flush().await?;
                }
                _ = std::future::ready(()), if !self.queue.is_empty() => {
                    self.score_chunk().await;
                }
            }
        }
        // Half-close the consume stream and wait (bounded) for the broker to end its side, so
        // the last acks are processed rather than lost with the connection (they would only
        // cause redeliveries, but a clean drain should not).
        self.req_tx = None;
        if let Some(mut stream) = inbound {
            let closed = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(Some(_)) = stream.message().await {}
            })
            .await;
            if closed.is_err() {
                debug!("broker did not close the consume stream within 2 s");
            }
        }
        Ok(())
    }

    /// True when `--max-transactions` acks were sent and no drain has started yet.
    fn max_reached(&self) -> bool {
        !self.draining
            && self
                .config
                .max_transactions
                .is_some_and(|max| self.stats.acked >= max)
    }

    async fn start_drain(&mut self, connecting: &mut Option<SessionFuture>) {
        if self.draining {
            return;
        }
        self.draining = true;
        self.ready.store(false, Ordering::Relaxed);
        *connecting = None;
        self.send(consume_request::Kind::SetWindow(SetWindow { window: 0 }))
            .await;
    }

    /// Sends on the current consume stream. Returns false when there is none (or it just
    /// closed; the inbound side reports that).
    async fn send(&mut self, kind: consume_request::Kind) -> bool {
        let Some(tx) = &self.req_tx else {
            return false;
        };
        if tx.send(ConsumeRequest { kind: Some(kind) }).await.is_err() {
            self.req_tx = None;
            return false;
        }
        true
    }

    /// Scores up to `score_chunk` queued deliveries and issues their issuer calls.
    async fn score_chunk(&mut self) {
        let n = self.config.score_chunk.min(self.queue.len());
        let mut scored = Vec::with_capacity(n);
        let mut nacks: Vec<(u64, String)> = Vec::new();
        for d in self.queue.drain(..n) {
            let started = Instant::now();
            let Some(record) = d.record else {
                nacks.push((d.offset, "delivery without a record".into()));
                continue;
            };
            let tx = match Transaction::decode(record.value.as_ref()) {
                Ok(tx) if !tx.id.is_empty() => tx,
                Ok(_) => {
                    nacks.push((d.offset, "transaction without an id".into()));
                    continue;
                }
                Err(e) => {
                    nacks.push((d.offset, format!("undecodable Transaction: {e}")));
                    continue;
                }
            };
            if let Err(reason) = self.scorer.check(&tx) {
                nacks.push((d.offset, reason));
                continue;
            }
            let assessment = self.scorer.assess(&tx);
            let first = if assessment.vector { 3 } else { 0 };
            for (i, s) in Stage::ALL[..4].iter().enumerate().skip(first) {
                self.metrics
                    .stage
                    .with_label_values(&[s.name()])
                    .observe(assessment.stage_ns[i] as f64 * 1e-9);
            }
            scored.push(ScoredTx {
                tx_id: tx.id,
                meta: DeliveryMeta {
                    offset: d.offset,
                    attempt: d.attempt,
                    produced_at_us: record.timestamp_us,
                },
                assessment,
                started,
            });
        }
        self.stats.scored += scored.len() as u64;
        self.metrics.scored.inc_by(scored.len() as u64);
        if !nacks.is_empty() {
            self.stats.nacked += nacks.len() as u64;
            self.metrics.nacked.inc_by(nacks.len() as u64);
            self.in_flight -= nacks.len() as u64;
            self.metrics.in_flight.set(self.in_flight as i64);
            for (offset, reason) in nacks {
                warn!(offset, reason = %reason, "nacking transaction");
                self.held.remove(&offset);
                // Without an open call the nack is dropped: the broker redelivers after the
                // ack deadline anyway (and counts the attempt towards dead-lettering).
                // Every failure here is deterministic (the same bytes fail the same way on
                // any worker): dead-lettered on this first attempt, not redelivered.
                self.send(consume_request::Kind::Nack(Nack {
                    offsets: vec![offset],
                    delay_ms: self.config.nack_delay_ms,
                    reason,
                    permanent: true,
                }))
                .await;
            }
        }
        if scored.is_empty() {
            return;
        }
        // Stage 5: the chunk's issuer calls, issued together and awaited concurrently.
        let latency = self.config.issuer_latency();
        let issued = Instant::now();
        let sleeps: Vec<_> = if latency.is_zero() {
            Vec::new()
        } else {
            scored.iter().map(|_| self.timer.sleep(latency)).collect()
        };
        self.calls.push(Box::pin(async move {
            futures::future::join_all(sleeps).await;
            (scored, issued.elapsed())
        }));
        tokio::task::yield_now().await;
    }

    /// Issuer calls done: build decisions and buffer them for the next produce batch.
    async fn on_called(&mut self, scored: Vec<ScoredTx>, waited: Duration) -> Result<()> {
        let ext = self
            .metrics
            .stage
            .with_label_values(&[Stage::External.name()]);
        for s in scored {
            ext.observe(waited.as_secs_f64());
            let decided_at_us = now_us();
            let scoring_us = s.started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            let decision = self.scorer.decision(
                &s.tx_id,
                &s.assessment,
                s.meta,
                &self.name,
                decided_at_us,
                scoring_us,
            );
            if s.meta.produced_at_us > 0 {
                self.metrics
                    .e2e
                    .observe((decided_at_us - s.meta.produced_at_us).max(0) as f64 * 1e-6);
            }
            let outcome = Outcome::try_from(decision.outcome).unwrap_or(Outcome::Unspecified);
            self.buffer.push(Record {
                key: s.tx_id.into_bytes().into(),
                value: decision.encode_to_vec().into(),
                timestamp_us: decided_at_us,
            });
            self.buffer_meta.push(Written {
                offset: s.meta.offset,
                outcome,
            });
            if self.buffer.len() >= self.config.decision_batch {
                self.flush().await?;
            }
        }
        if !self.buffer.is_empty() && self.buffer_deadline.is_none() {
            self.buffer_deadline = Some(
                tokio::time::Instant::now() + Duration::from_micros(self.config.decision_linger_us),
            );
        }
        Ok(())
    }

    /// Sends the buffered decisions as one produce batch.
    async fn flush(&mut self) -> Result<()> {
        self.buffer_deadline = None;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.buffer);
        let written = std::mem::take(&mut self.buffer_meta);
        let receipt: Receipt = self.producer.send(records).await?;
        self.receipts.push(Box::pin(async move {
            let res = match receipt.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProduceError::Closed),
            };
            (written, res)
        }));
        Ok(())
    }

    /// A decision batch is durable: ack its transactions, on the current call or, when none is
    /// open, as soon as the next one is subscribed.
    async fn on_durable(&mut self, written: Vec<Written>) {
        let mut offsets = Vec::with_capacity(written.len());
        for w in &written {
            offsets.push(w.offset);
            let label = match w.outcome {
                Outcome::Decline => {
                    self.stats.declined += 1;
                    "decline"
                }
                Outcome::Review => {
                    self.stats.reviewed += 1;
                    "review"
                }
                _ => {
                    self.stats.approved += 1;
                    "approve"
                }
            };
            self.metrics.decisions.with_label_values(&[label]).inc();
        }
        self.in_flight -= written.len() as u64;
        self.metrics.in_flight.set(self.in_flight as i64);
        self.ack(offsets).await;
    }

    /// Sends acks for `offsets` on the open call, or holds them for the next one.
    async fn ack(&mut self, offsets: Vec<u64>) {
        if offsets.is_empty() {
            return;
        }
        let n = offsets.len() as u64;
        if self.req_tx.is_some()
            && self
                .send(consume_request::Kind::Ack(Ack {
                    offsets: offsets.clone(),
                }))
                .await
        {
            for &o in &offsets {
                self.held.remove(&o);
                self.recent_acks.insert(o);
            }
            self.stats.acked += n;
            self.metrics.acked.inc_by(n);
        } else {
            self.held_acks.extend(offsets);
        }
    }
}
