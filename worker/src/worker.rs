//! The worker's event loop.
//!
//! One task owns all state and reacts to events in a `select!` loop:
//!
//! 1. deliveries arrive on the Consume stream (up to `--window` unacked) and are queued;
//! 2. the queue is scored in chunks of `--score-chunk` (stages 1-4, CPU); undecodable records
//!    are nacked at once (after `max_deliveries` the broker dead-letters them);
//! 3. each scored chunk issues its issuer calls concurrently (stage 5, [`HiResTimer`]): with
//!    `window` transactions in flight and a 100 µs call, Little's law allows
//!    `window / 100 µs` transactions/s from the wait alone, far above the CPU limit;
//! 4. decisions are appended to `decisions` in batches of `--decision-batch` or after
//!    `--decision-linger-us`, through the idempotent [`Producer`];
//! 5. when a batch's receipt resolves (the decisions are durable), its transactions are acked.
//!
//! So a transaction is acked only after its decision is stored. If the consume stream breaks,
//! the worker reconnects with backoff; deliveries of the old stream are redelivered by the
//! broker and re-scored, and the broker drops the second decision by key. On shutdown the
//! worker sets its window to 0, finishes everything in flight, and returns; what is not done
//! within `--drain-grace-ms` stays unacked and is redelivered.

use std::collections::VecDeque;
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
    Ack, ConsumeRequest, ConsumeResponse, Delivery, Nack, Record, SetWindow, Subscribe,
    broker_client::BrokerClient, consume_request, consume_response,
};
use txpipe_client::connect::connect_any;
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
    /// Decisions written whose ack was not sent because their consume stream had broken
    /// (the broker redelivers them; the duplicate decision is dropped by key).
    pub orphaned: u64,
    /// Consume-stream reconnections.
    pub reconnects: u64,
    /// Deliveries left unfinished when the drain grace period ran out.
    pub unfinished: u64,
}

/// One delivery waiting to be scored.
struct Queued {
    session: u64,
    delivery: Delivery,
}

/// One scored transaction waiting for its issuer call.
struct ScoredTx {
    session: u64,
    tx_id: String,
    meta: DeliveryMeta,
    assessment: Assessment,
    started: Instant,
}

/// A decision inside a produce batch.
struct Written {
    session: u64,
    offset: u64,
    outcome: Outcome,
}

type CallFuture = Pin<Box<dyn Future<Output = (Vec<ScoredTx>, Duration)> + Send>>;
type ReceiptFuture = Pin<Box<dyn Future<Output = (Vec<Written>, Result<(), ProduceError>)> + Send>>;
type Session = (
    mpsc::Sender<ConsumeRequest>,
    Streaming<ConsumeResponse>,
    usize,
);
type SessionFuture = Pin<Box<dyn Future<Output = Result<Session>> + Send>>;

fn retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | Unknown
            | Internal
            | Aborted
            | Cancelled
            | DeadlineExceeded
            | ResourceExhausted
    )
}

/// Opens a Consume stream: connects to a broker (starting at `start`), subscribes to
/// `transactions`, retrying retryable failures with backoff until `deadline` passes.
async fn open_session(
    addrs: Vec<String>,
    start: usize,
    subscribe: Subscribe,
    first_delay: Duration,
    deadline: Duration,
) -> Result<Session> {
    tokio::time::sleep(first_delay).await;
    let began = Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut start = start;
    loop {
        let left = deadline.saturating_sub(began.elapsed());
        let (channel, idx) = connect_any(&addrs, start, left).await?;
        let (tx, rx) = mpsc::channel(4096);
        let sub = ConsumeRequest {
            kind: Some(consume_request::Kind::Subscribe(subscribe.clone())),
        };
        tx.send(sub).await.expect("receiver alive");
        let mut client = BrokerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        match client
            .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(resp) => return Ok((tx, resp.into_inner(), idx)),
            Err(status) if retryable(status.code()) && began.elapsed() < deadline => {
                warn!(code = ?status.code(), error = %status.message(), "consume stream refused; retrying");
                start = idx + 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(status) => {
                return Err(Error::Consume {
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
        }
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
    let model = config.load_model()?;
    let thresholds = config.thresholds(&model)?;
    let (pan_key, dev_key) = config.pan_key()?;
    if dev_key {
        warn!(
            "no PAN key configured (--pan-key-hex / TXPIPE_PAN_KEY): using the well-known development key"
        );
    }
    let name = config.worker_name();
    info!(
        worker = %name,
        model_version = %model.version(),
        review = thresholds.review,
        decline = thresholds.decline,
        crypto_rounds = config.crypto_rounds,
        issuer_latency_us = config.issuer_latency_us,
        window = config.window,
        "worker starting"
    );
    let scorer = Arc::new(Scorer::new(
        pan_key,
        config.crypto_rounds,
        model,
        thresholds,
    ));
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

    let producer = Producer::connect(ProducerConfig {
        max_in_flight: config.produce_in_flight,
        reconnect_deadline: Duration::from_millis(config.reconnect_deadline_ms),
        ..ProducerConfig::new(addrs.clone(), streams::DECISIONS)
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
        calls: FuturesUnordered::new(),
        buffer: Vec::new(),
        buffer_meta: Vec::new(),
        buffer_deadline: None,
        receipts: FuturesUnordered::new(),
        draining: false,
    };
    let result = ev.run(addrs, shutdown).await;
    let EventLoop {
        producer,
        stats,
        ready,
        ..
    } = ev;
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
    /// Current consume-stream session number (starts at 1).
    session: u64,
    req_tx: Option<mpsc::Sender<ConsumeRequest>>,
    /// Deliveries received and not resolved yet (queued, scoring, in a call, buffered, or
    /// waiting for their produce receipt).
    in_flight: u64,
    queue: VecDeque<Queued>,
    calls: FuturesUnordered<CallFuture>,
    buffer: Vec<Record>,
    buffer_meta: Vec<Written>,
    buffer_deadline: Option<tokio::time::Instant>,
    receipts: FuturesUnordered<ReceiptFuture>,
    draining: bool,
}

impl EventLoop<'_> {
    async fn run<F>(&mut self, addrs: Vec<String>, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut shutdown = Box::pin(shutdown);
        let mut shutdown_seen = false;
        let mut drain_deadline = far_future();
        let mut connecting: Option<SessionFuture> = None;
        let mut inbound: Option<Streaming<ConsumeResponse>> = None;
        let mut addr_idx = 0usize;
        let mut reconnect_delay = Duration::ZERO;
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
                    addrs.clone(),
                    addr_idx,
                    subscribe.clone(),
                    reconnect_delay,
                    reconnect_deadline,
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
                    let (tx, stream, idx) = res?;
                    addr_idx = idx;
                    self.session += 1;
                    self.req_tx = Some(tx);
                    inbound = Some(stream);
                    debug!(session = self.session, broker = %addrs[idx], "consume stream open");
                }
                Some((written, res)) = self.receipts.next(), if !self.receipts.is_empty() => {
                    res?;
                    self.on_durable(written).await;
                    if let Some(max) = self.config.max_transactions
                        && self.stats.acked >= max && !self.draining
                    {
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
                            info!(stream = %s.stream, group = %s.group, window = s.window, ack_deadline_ms = s.ack_deadline_ms, max_deliveries = s.max_deliveries, "subscribed");
                            reconnect_delay = Duration::ZERO;
                            if !self.draining {
                                self.ready.store(true, Ordering::Relaxed);
                            }
                        }
                        Some(consume_response::Kind::Deliveries(d)) => {
                            let n = d.deliveries.len() as u64;
                            self.in_flight += n;
                            self.metrics.in_flight.set(self.in_flight as i64);
                            let session = self.session;
                            self.queue.extend(d.deliveries.into_iter().map(|delivery| Queued { session, delivery }));
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
                        if !retryable(status.code()) && !self.draining {
                            return Err(Error::Consume { code: status.code(), message: status.message().to_string() });
                        }
                        // Queued deliveries of the broken stream will be redelivered: drop them.
                        let before = self.queue.len();
                        let session = self.session;
                        self.queue.retain(|q| q.session != session);
                        self.in_flight -= (before - self.queue.len()) as u64;
                        self.metrics.in_flight.set(self.in_flight as i64);
                        self.stats.reconnects += 1;
                        self.metrics.reconnects.inc();
                        reconnect_delay = (reconnect_delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(2));
                        addr_idx += 1;
                        warn!(code = ?status.code(), error = %status.message(), in_flight = self.in_flight, "consume stream broken; reconnecting");
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
        for q in self.queue.drain(..n) {
            let started = Instant::now();
            let d = q.delivery;
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
            let assessment = self.scorer.assess(&tx);
            for (i, s) in Stage::ALL[..4].iter().enumerate() {
                self.metrics
                    .stage
                    .with_label_values(&[s.name()])
                    .observe(assessment.stage_ns[i] as f64 * 1e-9);
            }
            scored.push(ScoredTx {
                session: q.session,
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
                // Nacks of a broken stream are moot: the broker redelivers anyway.
                self.send(consume_request::Kind::Nack(Nack {
                    offsets: vec![offset],
                    delay_ms: self.config.nack_delay_ms,
                    reason,
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
                session: s.session,
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

    /// A decision batch is durable: ack its transactions (those of the current stream).
    async fn on_durable(&mut self, written: Vec<Written>) {
        let mut offsets = Vec::with_capacity(written.len());
        for w in &written {
            if w.session == self.session && self.req_tx.is_some() {
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
            } else {
                self.stats.orphaned += 1;
            }
        }
        self.in_flight -= written.len() as u64;
        self.metrics.in_flight.set(self.in_flight as i64);
        if !offsets.is_empty() {
            let n = offsets.len() as u64;
            if self.send(consume_request::Kind::Ack(Ack { offsets })).await {
                self.stats.acked += n;
                self.metrics.acked.inc_by(n);
            } else {
                self.stats.orphaned += n;
            }
        }
    }
}
