//! The `txpipe.broker.v1.Broker` gRPC service over a [`Broker`].

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use txpipe_client::broker::v1::{
    ConsumeRequest, ConsumeResponse, FetchRequest, FetchResponse, FetchedRecord, GetStreamRequest,
    GetStreamResponse, InitProducerRequest, InitProducerResponse, ListStreamsRequest,
    ListStreamsResponse, ProduceRequest, ProduceResponse, Subscribed, consume_request,
    consume_response,
};

use crate::auth::{Acl, Operation};
use crate::broker::Broker;
use crate::command::Command;
use crate::delivery::{Event, MAX_WINDOW};
use crate::error::{Error, Result};
use crate::state::{ApplyOutcome, MAX_PRODUCER_NAME};

/// Produce batches answered out of one call's queue at most (pipelining depth per call).
pub const MAX_PRODUCE_IN_FLIGHT: usize = 64;
/// Fetch: default and largest `max_records`.
pub const FETCH_DEFAULT_RECORDS: usize = 1000;
/// Fetch: largest `max_records`.
pub const FETCH_MAX_RECORDS: usize = 10_000;
/// Fetch: default `max_bytes`.
pub const FETCH_DEFAULT_BYTES: usize = 4 << 20;
/// Fetch: largest `max_bytes`.
pub const FETCH_MAX_BYTES: usize = 16 << 20;

/// gRPC front of the broker.
#[derive(Clone)]
pub struct BrokerService {
    broker: Arc<Broker>,
    acl: Acl,
}

impl BrokerService {
    /// Wraps a broker; calls are checked against [`crate::auth`] when its TLS is on.
    pub fn new(broker: Arc<Broker>) -> Self {
        let acl = Acl::new(broker.config.tls_enabled());
        Self { broker, acl }
    }
}

type ProduceFuture = Pin<Box<dyn Future<Output = Result<ProduceResponse>> + Send>>;

/// Validates a batch and proposes it. The batch is queued on the log before this returns, so
/// batches of one call are logged in arrival order.
fn start_produce(broker: &Broker, req: ProduceRequest) -> Result<ProduceFuture> {
    let stream = broker.stream(&req.stream)?;
    if req.records.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "produce to {:?}: batch {} has no records",
            req.stream, req.sequence
        )));
    }
    if req.producer_id != 0 && req.sequence == 0 {
        return Err(Error::InvalidArgument(format!(
            "produce to {:?}: producer {} sent sequence 0 (sequences start at 1)",
            req.stream, req.producer_id
        )));
    }
    if req.producer_id != 0 && req.epoch == 0 {
        return Err(Error::InvalidArgument(format!(
            "produce to {:?}: producer {} sent epoch 0 (call InitProducer for an id and epoch)",
            req.stream, req.producer_id
        )));
    }
    let bytes: usize = req
        .records
        .iter()
        .map(|r| r.key.len() + r.value.len())
        .sum();
    let cfg = &broker.config;
    if bytes > cfg.max_batch_bytes || req.records.len() > cfg.max_batch_records {
        return Err(Error::BatchTooLarge {
            records: req.records.len(),
            bytes,
            max_records: cfg.max_batch_records,
            max_bytes: cfg.max_batch_bytes,
        });
    }
    // Held until the batch is answered: bounds what all Produce calls keep in memory and queue
    // for the proposer (crate::limits).
    let admitted = broker.limits.admit_produce(&req.stream, bytes)?;
    let replica = Arc::clone(&stream.replica);
    let n = req.records.len() as u64;
    let (name, producer_id, sequence) = (req.stream, req.producer_id, req.sequence);
    let fut = replica.propose(vec![Command::Append {
        producer_id,
        epoch: req.epoch,
        sequence,
        position: req.position,
        records: req.records,
    }]);
    let metrics = broker.metrics.clone();
    Ok(Box::pin(async move {
        let outcome = fut.await;
        drop(admitted);
        let outcome = outcome?.pop();
        match outcome {
            Some(ApplyOutcome::Appended {
                base_offset,
                stored,
                deduplicated,
                duplicate,
                ..
            }) => {
                if duplicate {
                    replica.metrics.batches_duplicate.inc();
                    metrics.dedup_batch(&name, n);
                } else {
                    replica.metrics.batches_ok.inc();
                }
                Ok(ProduceResponse {
                    stream: name,
                    sequence,
                    base_offset,
                    stored,
                    deduplicated,
                    duplicate,
                })
            }
            Some(ApplyOutcome::Rejected(reject)) => Err(Error::Producer {
                stream: name,
                reject,
            }),
            other => Err(Error::Unavailable(format!(
                "unexpected apply outcome {other:?}"
            ))),
        }
    }))
}

#[tonic::async_trait]
impl txpipe_client::broker::v1::broker_server::Broker for BrokerService {
    type ProduceStream = ReceiverStream<Result<ProduceResponse, Status>>;
    type ConsumeStream = UnboundedReceiverStream<Result<ConsumeResponse, Status>>;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let acl = self.acl;
        let principal = acl.principal(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(MAX_PRODUCE_IN_FLIGHT + 1);
        let broker = Arc::clone(&self.broker);
        tokio::spawn(async move {
            let mut pending: FuturesOrdered<ProduceFuture> = FuturesOrdered::new();
            let mut shutdown = broker.shutdown.clone();
            let mut input_open = true;
            let mut streams_seen: HashSet<String> = HashSet::new();
            let mut failure: Option<Status> = None;
            loop {
                if (!input_open || failure.is_some()) && pending.is_empty() {
                    break;
                }
                tokio::select! {
                    msg = inbound.message(), if input_open && failure.is_none() && pending.len() < MAX_PRODUCE_IN_FLIGHT => match msg {
                        Ok(Some(req)) => {
                            let name = req.stream.clone();
                            if let Err(denied) = acl.authorize(principal.as_ref(), Operation::Produce, &name) {
                                failure = Some(denied);
                                continue;
                            }
                            match start_produce(&broker, req) {
                                Ok(fut) => {
                                    if !streams_seen.contains(&name) {
                                        if let Ok(s) = broker.stream(&name) {
                                            s.replica.metrics.producers.inc();
                                        }
                                        streams_seen.insert(name);
                                    }
                                    pending.push_back(fut)
                                }
                                Err(e) => {
                                    if let Ok(s) = broker.stream(&name) {
                                        s.replica.metrics.batch_failed(e.metric_label());
                                    }
                                    tracing::debug!(stream = %name, error = %e, "produce rejected");
                                    failure = Some(e.into());
                                }
                            }
                        }
                        Ok(None) => input_open = false,
                        Err(_) => break,
                    },
                    Some(res) = pending.next() => match res {
                        Ok(resp) => {
                            if tx.send(Ok(resp)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "produce failed");
                            failure = Some(e.into());
                            pending = FuturesOrdered::new();
                        }
                    },
                    _ = crate::broker::stopped(&mut shutdown) => {
                        failure = Some(Status::unavailable("broker shutting down"));
                        pending = FuturesOrdered::new();
                    }
                }
            }
            if let Some(status) = failure {
                let _ = tx.send(Err(status)).await;
            }
            for name in streams_seen {
                if let Ok(s) = broker.stream(&name) {
                    s.replica.metrics.producers.dec();
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn consume(
        &self,
        request: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let principal = self.acl.principal(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(ConsumeRequest {
            kind: Some(consume_request::Kind::Subscribe(sub)),
        }) = first
        else {
            return Err(Error::InvalidArgument(
                "the first Consume request must be `subscribe`".into(),
            )
            .into());
        };
        self.acl
            .authorize(principal.as_ref(), Operation::Consume, &sub.stream)?;
        let stream = self.broker.stream(&sub.stream)?;
        // A subscription starts only on a leader that holds its quorum lease and has applied
        // what was committed (as reads do): never on a leader a partition already replaced.
        if stream.delivery.is_some() {
            stream.replica.read_barrier().await?;
        }
        let delivery = stream.delivery()?;
        let replica = Arc::clone(&stream.replica);
        if !sub.group.is_empty() && sub.group != delivery.config.group {
            return Err(Error::GroupNotFound {
                stream: sub.stream,
                group: sub.group,
                expected: delivery.config.group.clone(),
            }
            .into());
        }
        let window = if sub.window == 0 {
            delivery.config.default_window
        } else {
            sub.window.min(MAX_WINDOW)
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let subscribed = Subscribed {
            stream: sub.stream.clone(),
            group: delivery.config.group.clone(),
            window,
            ack_deadline_ms: delivery.config.ack_deadline.as_millis() as u32,
            max_deliveries: delivery.config.max_deliveries,
        };
        let _ = tx.send(Ok(ConsumeResponse {
            kind: Some(consume_response::Kind::Subscribed(subscribed)),
        }));
        let id = delivery.next_consumer_id();
        let name = if sub.consumer_name.is_empty() {
            format!("consumer-{id}")
        } else {
            sub.consumer_name
        };
        delivery.send(Event::Join {
            id,
            name,
            window,
            tx: tx.clone(),
        });
        let mut shutdown = self.broker.shutdown.clone();
        tokio::spawn(async move {
            let mut by_shutdown = false;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(ConsumeRequest { kind: Some(kind) })) => match kind {
                            consume_request::Kind::Ack(a) => delivery.send(Event::Ack { id, offsets: a.offsets }),
                            consume_request::Kind::Nack(n) => delivery.send(Event::Nack { id, offsets: n.offsets, delay_ms: n.delay_ms, reason: n.reason, permanent: n.permanent }),
                            consume_request::Kind::SetWindow(w) => delivery.send(Event::SetWindow { id, window: w.window }),
                            consume_request::Kind::Subscribe(_) => {
                                let _ = tx.send(Err(Status::invalid_argument("subscribe may only be the first Consume request")));
                                break;
                            }
                        },
                        Ok(Some(ConsumeRequest { kind: None })) => {
                            let _ = tx.send(Err(Status::invalid_argument("empty Consume request (no subscribe, set_window, ack or nack)")));
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = crate::broker::stopped(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable("broker shutting down")));
                        by_shutdown = true;
                        break;
                    }
                    _ = delivery.closed() => {
                        // Leadership moved: the consumer resumes on the new leader, keeping
                        // the deliveries it holds (their acks are accepted there). A leader
                        // that lost its quorum names no leader: the client tries the others.
                        let err = if replica.is_leader() {
                            Error::Unavailable(format!(
                                "stream {}: this leader lost contact with a quorum of its group; retry on another broker",
                                replica.spec.name
                            ))
                        } else {
                            replica.not_leader()
                        };
                        let _ = tx.send(Err(err.into()));
                        break;
                    }
                }
            }
            delivery.send(Event::Leave {
                id,
                shutdown: by_shutdown,
            });
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.acl
            .check(&request, Operation::Fetch, &request.get_ref().stream)?;
        let req = request.into_inner();
        let stream = self.broker.stream(&req.stream)?;
        stream.replica.read_barrier().await?;
        let max_records = match req.max_records as usize {
            0 => FETCH_DEFAULT_RECORDS,
            n => n.min(FETCH_MAX_RECORDS),
        };
        let max_bytes = match req.max_bytes as usize {
            0 => FETCH_DEFAULT_BYTES,
            n => n.min(FETCH_MAX_BYTES),
        };
        let replica = Arc::clone(&stream.replica);
        let slot = self.broker.limits.admit_read(&req.stream).await?;
        let (records, next_offset, end_offset, start_offset) =
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                replica.fetch(req.start_offset, max_records, max_bytes)
            })
            .await
            .map_err(|e| Status::internal(format!("fetch task failed: {e}")))?;
        Ok(Response::new(FetchResponse {
            records: records
                .into_iter()
                .map(|(offset, record)| FetchedRecord {
                    offset,
                    record: Some(record),
                })
                .collect(),
            next_offset,
            end_offset,
            start_offset,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        self.acl
            .check(&request, Operation::Produce, &request.get_ref().stream)?;
        let req = request.into_inner();
        let stream = self.broker.stream(&req.stream)?;
        if req.name.len() > MAX_PRODUCER_NAME {
            return Err(Error::InvalidArgument(format!(
                "producer name of {} bytes on stream {:?} is longer than {MAX_PRODUCER_NAME}",
                req.name.len(),
                req.stream
            ))
            .into());
        }
        let outcome = stream
            .replica
            .propose(vec![Command::InitProducer {
                name: req.name.clone(),
            }])
            .await?
            .pop();
        match outcome {
            Some(ApplyOutcome::Registered {
                producer_id,
                epoch,
                last_position,
            }) => {
                tracing::info!(stream = %req.stream, name = %req.name, producer_id, epoch, last_position, "producer registered");
                Ok(Response::new(InitProducerResponse {
                    stream: req.stream,
                    producer_id,
                    epoch,
                    last_position,
                    next_sequence: 1,
                }))
            }
            other => Err(Error::Unavailable(format!("unexpected apply outcome {other:?}")).into()),
        }
    }

    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        self.acl.check(&request, Operation::ListStreams, "")?;
        let streams = self
            .broker
            .streams
            .values()
            .map(|s| self.broker.stream_info(s))
            .collect();
        Ok(Response::new(ListStreamsResponse { streams }))
    }

    async fn get_stream(
        &self,
        request: Request<GetStreamRequest>,
    ) -> Result<Response<GetStreamResponse>, Status> {
        self.acl
            .check(&request, Operation::GetStream, &request.get_ref().stream)?;
        let s = self.broker.stream(&request.get_ref().stream)?;
        s.replica.read_barrier().await?;
        Ok(Response::new(GetStreamResponse {
            stream: Some(self.broker.stream_info(s)),
        }))
    }
}
