//! Idempotent, pipelined producer.
//!
//! A [`Producer`] appends batches of records to one stream. Each batch gets the next sequence
//! number of this producer's `producer_id`; up to `max_in_flight` batches are on the wire at
//! once. When the connection breaks (broker restart, failover), the producer reconnects and
//! resends every batch not yet acknowledged, in order; the broker answers batches it already
//! stored with `duplicate = true` instead of storing them again (Kafka's idempotent producer
//! uses the same producer-id + sequence scheme, KIP-98).
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

use crate::broker::v1::{ProduceRequest, ProduceResponse, Record, broker_client::BrokerClient};
use crate::connect::{ConnectError, connect_any};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Broker endpoint URIs (see [`crate::connect::parse_addrs`]).
    pub addrs: Vec<String>,
    /// Target stream.
    pub stream: String,
    /// Idempotent producer id; must be unique per producer session (sequences restart at 1).
    /// 0 disables broker-side deduplication of retried batches.
    pub producer_id: u64,
    /// Batches sent but not yet acknowledged, at most. Default 16.
    pub max_in_flight: usize,
    /// How long to keep trying to reach a broker after a failure before giving up. Default 60 s.
    pub reconnect_deadline: Duration,
}

impl ProducerConfig {
    /// A config with defaults for `stream` on `addrs`, with a fresh random producer id.
    pub fn new(addrs: Vec<String>, stream: impl Into<String>) -> Self {
        Self {
            addrs,
            stream: stream.into(),
            producer_id: random_producer_id(),
            max_in_flight: 16,
            reconnect_deadline: Duration::from_secs(60),
        }
    }
}

/// A producer id that is unique with overwhelming probability: time, pid and a process-local
/// counter mixed with SplitMix64 (Steele et al., "Fast splittable pseudorandom number
/// generators", OOPSLA 2014). Never 0.
pub fn random_producer_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = t
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.max(1)
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

/// A queued batch and where to report its outcome.
type Submission = (
    Vec<Record>,
    oneshot::Sender<Result<ProduceResponse, ProduceError>>,
);

struct Pending {
    sequence: u64,
    records: Arc<Vec<Record>>,
    done: Option<oneshot::Sender<Result<ProduceResponse, ProduceError>>>,
}

/// An idempotent producer for one stream. See the module docs.
pub struct Producer {
    tx: mpsc::Sender<Submission>,
    task: JoinHandle<Result<ProducerStats, ProduceError>>,
    stats: watch::Receiver<ProducerStats>,
    producer_id: u64,
}

impl Producer {
    /// Connects (waiting up to `reconnect_deadline` for a broker) and starts the producer task.
    pub async fn connect(config: ProducerConfig) -> Result<Self, ProduceError> {
        let (channel, idx) = connect_any(&config.addrs, 0, config.reconnect_deadline)
            .await
            .map_err(|e: ConnectError| ProduceError::Unreachable(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1);
        let (stats_tx, stats) = watch::channel(ProducerStats::default());
        let producer_id = config.producer_id;
        let task = tokio::spawn(run(config, channel, idx, rx, stats_tx));
        Ok(Self {
            tx,
            task,
            stats,
            producer_id,
        })
    }

    /// This producer's id.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Queues a batch. Waits while `max_in_flight` batches are unacknowledged (back-pressure).
    /// Returns a receipt that resolves when the batch is durable.
    pub async fn send(&self, records: Vec<Record>) -> Result<Receipt, ProduceError> {
        let (done, receipt) = oneshot::channel();
        self.tx
            .send((records, done))
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

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
    )
}

async fn run(
    config: ProducerConfig,
    mut channel: tonic::transport::Channel,
    mut addr_idx: usize,
    mut rx: mpsc::Receiver<Submission>,
    stats_tx: watch::Sender<ProducerStats>,
) -> Result<ProducerStats, ProduceError> {
    let mut stats = ProducerStats::default();
    let mut unacked: VecDeque<Pending> = VecDeque::new();
    let mut next_seq: u64 = 1;
    let mut input_open = true;
    let fail = |unacked: &mut VecDeque<Pending>, err: ProduceError| {
        for p in unacked.iter_mut() {
            if let Some(d) = p.done.take() {
                let _ = d.send(Err(err.clone()));
            }
        }
        err
    };
    'session: loop {
        // One Produce stream per connection; resend everything unacknowledged first.
        let (out_tx, out_rx) = mpsc::channel::<ProduceRequest>(config.max_in_flight + 1);
        let mk = |p: &Pending| ProduceRequest {
            stream: config.stream.clone(),
            producer_id: config.producer_id,
            sequence: p.sequence,
            records: p.records.as_ref().clone(),
        };
        for p in &unacked {
            let _ = out_tx.try_send(mk(p));
        }
        let mut client = BrokerClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let broken: Option<tonic::Status> = match client
            .produce(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
        {
            Err(status) => Some(status),
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                loop {
                    if !input_open && unacked.is_empty() {
                        break 'session;
                    }
                    let room = input_open && unacked.len() < config.max_in_flight;
                    tokio::select! {
                        msg = rx.recv(), if room => match msg {
                            None => input_open = false,
                            Some((records, done)) => {
                                let p = Pending { sequence: next_seq, records: Arc::new(records), done: Some(done) };
                                next_seq += 1;
                                let req = mk(&p);
                                unacked.push_back(p);
                                if out_tx.send(req).await.is_err() {
                                    break None;
                                }
                            }
                        },
                        item = inbound.next() => match item {
                            None => break Some(tonic::Status::unavailable("produce stream ended")),
                            Some(Err(status)) => break Some(status),
                            Some(Ok(resp)) => {
                                let Some(front) = unacked.pop_front() else {
                                    return Err(fail(&mut unacked, ProduceError::OutOfOrder { expected: next_seq, got: resp.sequence }));
                                };
                                if front.sequence != resp.sequence {
                                    let expected = front.sequence;
                                    unacked.push_front(front);
                                    return Err(fail(&mut unacked, ProduceError::OutOfOrder { expected, got: resp.sequence }));
                                }
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
            }
        };
        if let Some(status) = broken {
            if !retryable(status.code()) {
                let sequence = unacked.front().map(|p| p.sequence).unwrap_or(next_seq);
                return Err(fail(
                    &mut unacked,
                    ProduceError::Rejected {
                        stream: config.stream.clone(),
                        sequence,
                        code: status.code(),
                        message: status.message().to_string(),
                    },
                ));
            }
            tracing::warn!(stream = %config.stream, code = ?status.code(), error = %status.message(), unacked = unacked.len(), "produce stream broken; reconnecting");
            stats.reconnects += 1;
            stats_tx.send_replace(stats.clone());
            match connect_any(&config.addrs, addr_idx + 1, config.reconnect_deadline).await {
                Ok((ch, idx)) => {
                    channel = ch;
                    addr_idx = idx;
                }
                Err(e) => return Err(fail(&mut unacked, ProduceError::Unreachable(e.to_string()))),
            }
        }
    }
    Ok(stats)
}
