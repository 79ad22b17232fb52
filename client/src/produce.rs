//! Idempotent, pipelined producer.
//!
//! A [`Producer`] appends batches of records to one stream. It first registers with the
//! stream's leader (`InitProducer`, Kafka's `InitProducerId` of KIP-98) and gets a producer id
//! and an epoch from the stream's replicated state; each batch then carries `(producer id,
//! epoch, sequence)`, sequences counting 1, 2, ... within the epoch; up to `max_in_flight`
//! batches are on the wire at once. The broker answers an exact retry of a batch it already
//! stored with `duplicate = true` instead of storing it again.
//!
//! # Identity, fencing and resume
//!
//! With [`ProducerIdentity::Named`] the registration is under a stable name: the first one
//! assigns the id, every later one (a restarted process) bumps the epoch, which **fences** the
//! previous holder of the name — its next batch fails with `FAILED_PRECONDITION` and the
//! producer stops with [`ProduceError::Fenced`]. Each batch may carry a producer-defined
//! `position` ([`Producer::send_at`], monotonic, for example the index of the batch's last
//! input record + 1); the registration returns the highest acknowledged one
//! ([`Registration::last_position`]), so a restarted producer continues right after the last
//! batch the broker stored and stores nothing twice. [`ProducerIdentity::Anonymous`] (the
//! default) registers a fresh id for this session only; [`ProducerIdentity::NonIdempotent`]
//! sends producer id 0 (tools and benchmarks: a retried batch may be stored twice).
//!
//! # Failover
//!
//! The producer talks to the Raft leader of its stream through a
//! [`LeaderRouter`](crate::leader::LeaderRouter). When the Produce call ends with `UNAVAILABLE`
//! (a follower's "not the leader" answer, a leader that lost leadership before committing a
//! batch, a node shutting down) or a transport error (the leader died), the producer follows
//! the `txpipe-leader` hint, or else the next broker address, with backoff (50 ms doubling to
//! 1 s), and resends every unacknowledged batch on the new leader **with the same producer id,
//! epoch, sequence numbers and records, in order**. The dedupe table is part of the replicated state, so a batch
//! the old leader committed but could not acknowledge is answered `duplicate = true` and stored
//! once. Each [`Receipt`] resolves exactly once: with the first acknowledgement of its batch,
//! or with the error that stopped the producer.
//!
//! A leader that keeps the call open but answers nothing (paused, or cut off from its
//! followers so that it can commit nothing) is left in two ways:
//!
//! - **Leader probe** (`leader_probe_after`, default 500 ms): once acknowledgements are that
//!   late, the producer asks the other brokers `GetStream`, every 200 ms while they stay late
//!   ([`LeaderRouter::probe_leader`]). A broker answers it only while it leads the stream with
//!   a quorum lease, so an answer means a new leader was elected: the call ends with a "not the
//!   leader" status hinting at it and the producer moves there at once, about when the
//!   election ends (p50 about 0.7 s after a SIGSTOP of the leader with the broker's default
//!   timers, `txpipe bench failover --fault leader-pause`). A leader that is only slow is not
//!   left: the followers still name it.
//! - **Ack timeout** (`ack_timeout`, default 2 s): once no acknowledgement has come for that
//!   long while batches are unacknowledged, the call ends with `DEADLINE_EXCEEDED` and the
//!   producer fails over to the next broker, whatever the others say (the fallback when no
//!   other broker can be asked, e.g. a single address behind a load balancer).
//!
//! A failover lasts from the failure to the first acknowledgement on the new leader and is
//! bounded by `reconnect_deadline` (default 60 s); past it the producer stops with
//! [`ProduceError::Unreachable`]. A status that is not about leadership or availability
//! (`INVALID_ARGUMENT`, `NOT_FOUND`, `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`) stops it at
//! once with [`ProduceError::Rejected`] (or [`ProduceError::Fenced`]), without retry.
//!
//! [`Producer::send`] returns a [`Receipt`] that resolves once the batch is durable on the
//! broker; callers that only need throughput can drop receipts and call [`Producer::close`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::broker::v1::{InitProducerRequest, ProduceRequest, ProduceResponse, Record};
use crate::leader::{Failover, LeaderError, LeaderRouter, Target};

/// A producer's registration on one stream: what `InitProducer` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Registration {
    /// Producer id on the stream (0: non-idempotent).
    pub producer_id: u64,
    /// Epoch sent with every batch (≥ 1 for a registered producer).
    pub epoch: u64,
    /// Highest position of the name's acknowledged batches when it registered (0: none).
    pub last_position: u64,
}

/// How a producer identifies itself to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerIdentity {
    /// Register under a stable name (at most 256 bytes): a later registration of the same
    /// name fences this producer, and a restarted producer learns where this one stopped.
    Named(String),
    /// Register anonymously: a fresh producer id for this session only (the default).
    Anonymous,
    /// Use a registration obtained elsewhere as is (no `InitProducer` call).
    Registered(Registration),
    /// Producer id 0: no deduplication of retried batches (a retry may be stored twice).
    NonIdempotent,
}

/// Most batches an idempotent producer keeps unacknowledged at once.
///
/// The broker remembers this many recent batches of every producer (its `RECENT_BATCHES` is
/// defined from this constant), so every batch a producer resends after a failover is still
/// remembered and answered as a duplicate with its original offsets. With more in flight, a
/// failover could resend a batch the new leader stored but no longer remembers, which it must
/// reject as `OUT_OF_RANGE` ("older than the remembered batches"). Kafka has the same rule:
/// `max.in.flight.requests.per.connection` at most 5 with idempotence (KIP-98).
pub const MAX_IN_FLIGHT: usize = 16;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Broker endpoint URIs (see [`crate::connect::parse_addrs`]).
    pub addrs: Vec<String>,
    /// Target stream.
    pub stream: String,
    /// How the producer registers. Default [`ProducerIdentity::Anonymous`].
    pub identity: ProducerIdentity,
    /// Batches sent but not yet acknowledged, at most. Default 16. An idempotent producer
    /// (every identity but [`ProducerIdentity::NonIdempotent`]) uses at most
    /// [`MAX_IN_FLIGHT`]; a larger value is lowered to it, and 0 counts as 1.
    pub max_in_flight: usize,
    /// How long a failover may last (from a broken Produce call to the first acknowledgement on
    /// the new leader) before the producer gives up with [`ProduceError::Unreachable`].
    /// Default 60 s.
    pub reconnect_deadline: Duration,
    /// How long the producer waits for the next acknowledgement while batches are
    /// unacknowledged before it treats the Produce call as broken and fails over (resending
    /// the unacknowledged batches, which the leader deduplicates). This is what gets a producer
    /// off a leader that is paused (SIGSTOP, a VM freeze: its connection stays open and answers
    /// nothing) or cut off from its followers (it can commit nothing). Default
    /// [`DEFAULT_ACK_TIMEOUT`]; zero disables it.
    pub ack_timeout: Duration,
    /// How long acknowledgements may be late (batches unacknowledged, none acknowledged) before
    /// the producer asks the other brokers whether one of them now leads the stream
    /// ([`LeaderRouter::probe_leader`]), and again every [`LEADER_PROBE_INTERVAL`] while they
    /// stay late. When another broker answers as the leader, the call is ended at once and the
    /// producer moves there: a paused or cut-off leader is left about when the new one is
    /// elected instead of after `ack_timeout`, and a leader that is only slow is not left (no
    /// other node answers as leader while it holds its lease). Default
    /// [`DEFAULT_LEADER_PROBE_AFTER`]; zero disables probing.
    pub leader_probe_after: Duration,
    /// Mutual TLS towards the brokers; `None` (the default): plaintext.
    pub tls: Option<crate::tls::TlsOptions>,
}

/// Default [`ProducerConfig::leader_probe_after`]: 500 ms, about one election timeout of the
/// broker's default timers (300-450 ms) plus a heartbeat: a new leader can exist by then.
pub const DEFAULT_LEADER_PROBE_AFTER: Duration = Duration::from_millis(500);

/// Interval between two leader probes while acknowledgements stay late, and the time limit of
/// one probe (connection and call): 200 ms.
pub const LEADER_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Default [`ProducerConfig::ack_timeout`]: 2 s, several times the time a healthy leader
/// takes (a quorum fsync, tens of milliseconds) and about two elections (300-450 ms each with
/// the broker's default timers), so a false timeout is rare and costs one resend.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

impl ProducerConfig {
    /// A config with defaults for `stream` on `addrs`, registering anonymously.
    pub fn new(addrs: Vec<String>, stream: impl Into<String>) -> Self {
        Self {
            addrs,
            stream: stream.into(),
            identity: ProducerIdentity::Anonymous,
            max_in_flight: 16,
            reconnect_deadline: Duration::from_secs(60),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            leader_probe_after: DEFAULT_LEADER_PROBE_AFTER,
            tls: None,
        }
    }

    /// A config with defaults for `stream` on `addrs`, registering under `name`.
    pub fn named(addrs: Vec<String>, stream: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            identity: ProducerIdentity::Named(name.into()),
            ..Self::new(addrs, stream)
        }
    }
}

/// Registers producer `name` (empty: anonymous) on `stream` with the stream's leader, following
/// leader hints and retrying unavailable nodes until `deadline` (from now).
///
/// Errors: [`ProduceError::Rejected`] when the broker refuses (unknown stream, name too long);
/// [`ProduceError::Unreachable`] when no leader answered in time.
pub async fn init_producer(
    router: &LeaderRouter,
    stream: &str,
    name: &str,
    deadline: Duration,
) -> Result<Registration, ProduceError> {
    let resp = router
        .call(stream, deadline, |mut client| {
            let req = InitProducerRequest {
                stream: stream.to_string(),
                name: name.to_string(),
            };
            async move { client.init_producer(req).await }
        })
        .await
        .map_err(|e| failover_error(stream, 0, e))?;
    Ok(Registration {
        producer_id: resp.producer_id,
        epoch: resp.epoch,
        last_position: resp.last_position,
    })
}

/// Errors of a [`Producer`]. After one, the producer is closed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// No broker could be reached within the reconnect deadline.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The broker rejected a batch for a reason a retry cannot fix (INVALID_ARGUMENT,
    /// NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ...).
    #[error("broker rejected batch {sequence} on stream {stream}: {code:?}: {message}")]
    Rejected {
        /// Stream name.
        stream: String,
        /// Sequence of the first unacknowledged batch.
        sequence: u64,
        /// gRPC status code.
        code: Code,
        /// The broker's message.
        message: String,
    },
    /// A newer producer registered the same name: this one is fenced and must stop (the
    /// broker's `FAILED_PRECONDITION` "fenced" answer).
    #[error("producer fenced on stream {stream}: {message}")]
    Fenced {
        /// Stream name.
        stream: String,
        /// The broker's message (current and rejected epoch).
        message: String,
    },
    /// The broker answered out of order (a protocol violation).
    #[error("broker answered sequence {got}, expected {expected}")]
    OutOfOrder {
        /// Sequence expected next.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The producer was closed.
    #[error("producer closed")]
    Closed,
}

/// Totals of a producer's lifetime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Batches acknowledged (stored or duplicate).
    pub batches_acked: u64,
    /// Records acknowledged.
    pub records_acked: u64,
    /// Records stored (excludes key-deduplicated records and duplicate batches).
    pub records_stored: u64,
    /// Records dropped by the broker's key deduplication.
    pub records_deduplicated: u64,
    /// Batches the broker recognised as retries of stored batches.
    pub duplicate_batches: u64,
    /// Reconnections after a broken stream.
    pub reconnects: u64,
}

/// Resolves when the batch is durable on the broker (or the producer failed).
pub type Receipt = oneshot::Receiver<Result<ProduceResponse, ProduceError>>;

/// A queued batch, its position and where to report its outcome.
type Submission = (
    Vec<Record>,
    u64,
    oneshot::Sender<Result<ProduceResponse, ProduceError>>,
);

struct Pending {
    sequence: u64,
    position: u64,
    records: Arc<Vec<Record>>,
    done: Option<oneshot::Sender<Result<ProduceResponse, ProduceError>>>,
}

/// An idempotent producer for one stream. See the module docs.
pub struct Producer {
    tx: mpsc::Sender<Submission>,
    task: JoinHandle<Result<ProducerStats, ProduceError>>,
    stats: watch::Receiver<ProducerStats>,
    registration: Registration,
}

impl Producer {
    /// Connects (waiting up to `reconnect_deadline` for a broker to accept a connection),
    /// registers as `config.identity` says (with the stream's leader) and starts the producer
    /// task.
    ///
    /// Errors: [`ProduceError::Unreachable`] for an invalid address list or when no broker
    /// accepts a connection (or no leader registers the producer) within
    /// `reconnect_deadline`; [`ProduceError::Rejected`] when the registration is refused.
    pub async fn connect(config: ProducerConfig) -> Result<Self, ProduceError> {
        let router = LeaderRouter::with_config(
            config.addrs.clone(),
            crate::leader::LeaderConfig {
                tls: config.tls.clone(),
                ..Default::default()
            },
        )
        .map_err(|e| ProduceError::Unreachable(e.to_string()))?;
        Self::connect_with(router, config).await
    }

    /// Like [`Producer::connect`], but over an existing router (sharing its channels and
    /// leader knowledge); `config.addrs` is ignored.
    ///
    /// Errors: as [`Producer::connect`].
    pub async fn connect_with(
        router: LeaderRouter,
        config: ProducerConfig,
    ) -> Result<Self, ProduceError> {
        let target = router
            .connect(&config.stream, config.reconnect_deadline)
            .await
            .map_err(|e| ProduceError::Unreachable(e.to_string()))?;
        let name = match &config.identity {
            ProducerIdentity::Named(n) => Some(n.as_str()),
            ProducerIdentity::Anonymous => Some(""),
            ProducerIdentity::Registered(_) | ProducerIdentity::NonIdempotent => None,
        };
        let registration = match (name, &config.identity) {
            (Some(name), _) => {
                init_producer(&router, &config.stream, name, config.reconnect_deadline).await?
            }
            (None, ProducerIdentity::Registered(r)) => *r,
            (None, _) => Registration::default(),
        };
        let (tx, rx) = mpsc::channel(1);
        let (stats_tx, stats) = watch::channel(ProducerStats::default());
        let task = tokio::spawn(run(config, registration, router, target, rx, stats_tx));
        Ok(Self {
            tx,
            task,
            stats,
            registration,
        })
    }

    /// This producer's id (0: non-idempotent).
    pub fn producer_id(&self) -> u64 {
        self.registration.producer_id
    }

    /// The registration: id, epoch, and the position the name's last acknowledged batch
    /// carried when this producer registered (where to resume).
    pub fn registration(&self) -> Registration {
        self.registration
    }

    /// Queues a batch without a position (the broker keeps the last one). Waits while
    /// `max_in_flight` batches are unacknowledged (back-pressure). Returns a receipt that
    /// resolves when the batch is durable.
    pub async fn send(&self, records: Vec<Record>) -> Result<Receipt, ProduceError> {
        self.send_at(records, 0).await
    }

    /// Queues a batch that brings the producer to `position` (producer-defined, monotonic;
    /// 0 = none): once it is acknowledged, a later registration of the same name returns it
    /// as [`Registration::last_position`]. Otherwise as [`Producer::send`].
    pub async fn send_at(
        &self,
        records: Vec<Record>,
        position: u64,
    ) -> Result<Receipt, ProduceError> {
        let (done, receipt) = oneshot::channel();
        self.tx
            .send((records, position, done))
            .await
            .map_err(|_| ProduceError::Closed)?;
        Ok(receipt)
    }

    /// Live totals.
    pub fn stats(&self) -> ProducerStats {
        self.stats.borrow().clone()
    }

    /// A watch of the live totals (for progress bars).
    pub fn watch_stats(&self) -> watch::Receiver<ProducerStats> {
        self.stats.clone()
    }

    /// Waits until every queued batch is acknowledged, then stops. Returns the totals, or the
    /// error that stopped the producer.
    pub async fn close(self) -> Result<ProducerStats, ProduceError> {
        drop(self.tx);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ProduceError::Unreachable(format!(
                "producer task failed: {e}"
            ))),
        }
    }
}

/// The next answer of an open Produce call; pending while the call is not open yet.
async fn next_response(
    inbound: &mut Option<tonic::Streaming<ProduceResponse>>,
) -> Option<Result<ProduceResponse, tonic::Status>> {
    match inbound {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The status that ends a Produce call on `current` when `leader` answered a leader probe: a
/// "not the leader" answer with `leader` as the hint, so the failover goes there at once.
fn moved_leader(stream: &str, current: &str, leader: &str, late: Duration) -> tonic::Status {
    let mut status = tonic::Status::unavailable(format!(
        "{} of stream {stream:?}: {current} sent no acknowledgement for {} ms and {leader} answers as the leader",
        crate::leader::NOT_LEADER_PREFIX,
        late.as_millis()
    ));
    let hint = leader
        .strip_prefix("http://")
        .or_else(|| leader.strip_prefix("https://"))
        .unwrap_or(leader);
    if let Ok(v) = hint.parse() {
        status
            .metadata_mut()
            .insert(crate::leader::LEADER_METADATA_KEY, v);
    }
    status
}

/// The producer error for a failover that ended with `e`.
fn failover_error(stream: &str, sequence: u64, e: LeaderError) -> ProduceError {
    match e {
        LeaderError::Rejected(status)
            if status.code() == Code::FailedPrecondition && status.message().contains("fenced") =>
        {
            ProduceError::Fenced {
                stream: stream.to_string(),
                message: status.message().to_string(),
            }
        }
        LeaderError::Rejected(status) => ProduceError::Rejected {
            stream: stream.to_string(),
            sequence,
            code: status.code(),
            message: status.message().to_string(),
        },
        e @ LeaderError::Unavailable { .. } => ProduceError::Unreachable(e.to_string()),
    }
}

async fn run(
    config: ProducerConfig,
    reg: Registration,
    router: LeaderRouter,
    mut target: Target,
    mut rx: mpsc::Receiver<Submission>,
    stats_tx: watch::Sender<ProducerStats>,
) -> Result<ProducerStats, ProduceError> {
    let mut stats = ProducerStats::default();
    let max_in_flight = match config.identity {
        ProducerIdentity::NonIdempotent => config.max_in_flight.max(1),
        _ => config.max_in_flight.clamp(1, MAX_IN_FLIGHT),
    };
    let mut unacked: VecDeque<Pending> = VecDeque::new();
    let mut next_seq: u64 = 1;
    let mut input_open = true;
    // The failover in progress: from the first failure to the first ack on a new leader.
    let mut failover: Option<Failover> = None;
    let fail = |unacked: &mut VecDeque<Pending>, err: ProduceError| {
        for p in unacked.iter_mut() {
            if let Some(d) = p.done.take() {
                let _ = d.send(Err(err.clone()));
            }
        }
        err
    };
    loop {
        if !input_open && unacked.is_empty() {
            break;
        }
        // One Produce call per leader; resend everything unacknowledged first, in sequence
        // order, with the sequences it had (the leader answers stored ones as duplicates).
        let (out_tx, out_rx) = mpsc::channel::<ProduceRequest>(max_in_flight + 1);
        let mk = |p: &Pending| ProduceRequest {
            stream: config.stream.clone(),
            producer_id: reg.producer_id,
            epoch: reg.epoch,
            sequence: p.sequence,
            position: p.position,
            records: p.records.as_ref().clone(),
        };
        for p in &unacked {
            let _ = out_tx.try_send(mk(p));
        }
        let mut client = target.client();
        // The call opens while batches flow: a broker may wait for the first batch (which
        // names the stream) before it answers the call. The block ends the call (drops it)
        // before the failover.
        let status: tonic::Status = {
            let call = client.produce(tokio_stream::wrappers::ReceiverStream::new(out_rx));
            tokio::pin!(call);
            let mut inbound: Option<tonic::Streaming<ProduceResponse>> = None;
            let mut confirmed = false;
            // The last sign of progress on this call: its start, an acknowledgement, or a
            // batch sent while nothing was unacknowledged. With batches unacknowledged and no
            // progress for `ack_timeout`, the call is given up.
            let mut progress = tokio::time::Instant::now();
            let ack_timeout = config.ack_timeout;
            let probe_after = config.leader_probe_after;
            // The leader probe in flight, and when the last one ended.
            let mut probe: Option<
                std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>,
            > = None;
            let mut probed = progress;
            loop {
                if !input_open && unacked.is_empty() {
                    return Ok(stats);
                }
                let room = input_open && unacked.len() < max_in_flight;
                tokio::select! {
                    opened = &mut call, if inbound.is_none() => match opened {
                        Err(status) => break status,
                        Ok(resp) => {
                            if unacked.is_empty() {
                                // Nothing at stake: the node answers, the failover is over.
                                // (Whether it leads the stream shows with the first batch.)
                                failover = None;
                            }
                            inbound = Some(resp.into_inner());
                        }
                    },
                    _ = tokio::time::sleep_until(progress + ack_timeout),
                        if !ack_timeout.is_zero() && !unacked.is_empty() =>
                    {
                        break tonic::Status::deadline_exceeded(format!(
                            "no acknowledgement from {} within {} ms with {} batch(es) unacknowledged",
                            target.addr,
                            ack_timeout.as_millis(),
                            unacked.len()
                        ));
                    }
                    _ = tokio::time::sleep_until((progress + probe_after).max(probed + LEADER_PROBE_INTERVAL)),
                        if !probe_after.is_zero() && !unacked.is_empty() && probe.is_none() =>
                    {
                        let (router, stream, current) = (router.clone(), config.stream.clone(), target.addr.clone());
                        probe = Some(Box::pin(async move {
                            router.probe_leader(&stream, &current, LEADER_PROBE_INTERVAL).await
                        }));
                    }
                    found = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                        probe = None;
                        probed = tokio::time::Instant::now();
                        if let Some(leader) = found {
                            break moved_leader(&config.stream, &target.addr, &leader, probed - progress);
                        }
                    }
                    msg = rx.recv(), if room => match msg {
                        None => input_open = false,
                        Some((records, position, done)) => {
                            if unacked.is_empty() {
                                progress = tokio::time::Instant::now();
                            }
                            let p = Pending { sequence: next_seq, position, records: Arc::new(records), done: Some(done) };
                            next_seq += 1;
                            let req = mk(&p);
                            unacked.push_back(p);
                            if out_tx.send(req).await.is_err() {
                                // The call ended; the batch is resent on the next call.
                                break tonic::Status::unavailable("produce request stream closed");
                            }
                        }
                    },
                    item = next_response(&mut inbound) => match item {
                        None => break tonic::Status::unavailable("produce stream ended"),
                        Some(Err(status)) => break status,
                        Some(Ok(resp)) => {
                            if !confirmed {
                                confirmed = true;
                                match failover.take() {
                                    Some(f) => f.succeeded(&target),
                                    None => router.confirm(&config.stream, &target),
                                }
                            }
                            let Some(front) = unacked.pop_front() else {
                                return Err(fail(&mut unacked, ProduceError::OutOfOrder { expected: next_seq, got: resp.sequence }));
                            };
                            if front.sequence != resp.sequence {
                                let expected = front.sequence;
                                unacked.push_front(front);
                                return Err(fail(&mut unacked, ProduceError::OutOfOrder { expected, got: resp.sequence }));
                            }
                            progress = tokio::time::Instant::now();
                            stats.batches_acked += 1;
                            stats.records_acked += front.records.len() as u64;
                            if resp.duplicate {
                                stats.duplicate_batches += 1;
                            } else {
                                stats.records_stored += u64::from(resp.stored);
                                stats.records_deduplicated += u64::from(resp.deduplicated);
                            }
                            stats_tx.send_replace(stats.clone());
                            if let Some(d) = front.done { let _ = d.send(Ok(resp)); }
                        }
                    },
                }
            }
        };
        let sequence = unacked.front().map(|p| p.sequence).unwrap_or(next_seq);
        let f = failover
            .get_or_insert_with(|| router.failover(&config.stream, config.reconnect_deadline));
        if let Err(e) = f.failed(&target, status.clone()).await {
            return Err(fail(
                &mut unacked,
                failover_error(&config.stream, sequence, e),
            ));
        }
        tracing::warn!(stream = %config.stream, broker = %target.addr, code = ?status.code(), error = %status.message(), unacked = unacked.len(), "produce call broken; failing over");
        stats.reconnects += 1;
        stats_tx.send_replace(stats.clone());
        target = match f.target().await {
            Ok(t) => t,
            Err(e) => {
                return Err(fail(
                    &mut unacked,
                    failover_error(&config.stream, sequence, e),
                ));
            }
        };
    }
    Ok(stats)
}
