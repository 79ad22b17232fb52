//! The worker loop against a small in-process fake broker (tonic server on port 0).
//!
//! The fake delivers a fixed list of transaction records with credit flow (at most `window`
//! unacked), records every decision produce, ack, nack and window change in one ordered event
//! log, and can break the consume stream once to exercise reconnection.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use txpipe_client::broker::v1::broker_server::{Broker, BrokerServer};
use txpipe_client::broker::v1::*;
use txpipe_client::pan::PanKey;
use txpipe_client::pipeline::v1::Decision;
use txpipe_worker::config::Config;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Subscribed { window: u32 },
    Delivered { offset: u64 },
    Produced { tx_id: String, source_offset: u64 },
    Acked { offset: u64 },
    Nacked { offset: u64, reason: String },
    Window { window: u32 },
}

#[derive(Default)]
struct FakeState {
    events: Vec<Event>,
    /// Offsets not yet acked (redelivered after a broken stream).
    pending: Vec<u64>,
    break_after_deliveries: Option<usize>,
}

#[derive(Clone)]
struct FakeBroker {
    records: Arc<Vec<Record>>,
    state: Arc<Mutex<FakeState>>,
}

impl FakeBroker {
    fn new(records: Vec<Record>) -> Self {
        let pending = (0..records.len() as u64).rev().collect();
        Self {
            records: Arc::new(records),
            state: Arc::new(Mutex::new(FakeState {
                pending,
                ..Default::default()
            })),
        }
    }

    fn events(&self) -> Vec<Event> {
        self.state.lock().unwrap().events.clone()
    }

    fn log(&self, e: Event) {
        self.state.lock().unwrap().events.push(e);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for FakeBroker {
    type ProduceStream = BoxStream<ProduceResponse>;
    type ConsumeStream = BoxStream<ConsumeResponse>;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                assert_eq!(req.stream, "decisions");
                for r in &req.records {
                    let d = Decision::decode(r.value.as_ref()).expect("decision decodes");
                    assert_eq!(r.key.as_ref(), d.transaction_id.as_bytes());
                    me.log(Event::Produced {
                        tx_id: d.transaction_id,
                        source_offset: d.source_offset,
                    });
                }
                let resp = ProduceResponse {
                    stream: req.stream,
                    sequence: req.sequence,
                    base_offset: 0,
                    stored: req.records.len() as u32,
                    deduplicated: 0,
                    duplicate: false,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn consume(
        &self,
        request: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let Some(consume_request::Kind::Subscribe(sub)) = first.kind else {
            return Err(Status::invalid_argument("first request must be subscribe"));
        };
        assert_eq!(sub.stream, "transactions");
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        me.log(Event::Subscribed { window: sub.window });
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(ConsumeResponse {
                    kind: Some(consume_response::Kind::Subscribed(Subscribed {
                        stream: sub.stream.clone(),
                        group: "workers".into(),
                        window: sub.window,
                        ack_deadline_ms: 30_000,
                        max_deliveries: 5,
                    })),
                }))
                .await;
            let mut window = sub.window as usize;
            let mut unacked: HashSet<u64> = HashSet::new();
            let mut delivered_here = 0usize;
            loop {
                // Deliver while there is credit.
                let batch: Vec<Delivery> = {
                    let mut st = me.state.lock().unwrap();
                    let mut out = Vec::new();
                    while unacked.len() + out.len() < window && out.len() < 100 {
                        let Some(off) = st.pending.pop() else { break };
                        out.push(Delivery {
                            offset: off,
                            attempt: 1,
                            record: Some(me.records[off as usize].clone()),
                        });
                        st.events.push(Event::Delivered { offset: off });
                    }
                    out
                };
                if !batch.is_empty() {
                    delivered_here += batch.len();
                    unacked.extend(batch.iter().map(|d| d.offset));
                    if tx
                        .send(Ok(ConsumeResponse {
                            kind: Some(consume_response::Kind::Deliveries(Deliveries {
                                deliveries: batch,
                            })),
                        }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let brk = me.state.lock().unwrap().break_after_deliveries;
                if let Some(n) = brk
                    && delivered_here >= n
                {
                    // Break the stream once: unacked deliveries go back to pending.
                    {
                        let mut st = me.state.lock().unwrap();
                        st.break_after_deliveries = None;
                        st.pending.extend(unacked.drain());
                        st.pending.sort_by(|a, b| b.cmp(a));
                    }
                    let _ = tx
                        .send(Err(Status::unavailable("fake broker restarting")))
                        .await;
                    return;
                }
                let Ok(Some(req)) = inbound.message().await else {
                    // Client gone: unacked deliveries are redelivered.
                    let mut st = me.state.lock().unwrap();
                    st.pending.extend(unacked.drain());
                    st.pending.sort_by(|a, b| b.cmp(a));
                    return;
                };
                match req.kind {
                    Some(consume_request::Kind::Ack(a)) => {
                        for o in a.offsets {
                            assert!(unacked.remove(&o), "ack of offset {o} not in flight");
                            me.log(Event::Acked { offset: o });
                        }
                    }
                    Some(consume_request::Kind::Nack(n)) => {
                        for o in n.offsets {
                            assert!(unacked.remove(&o), "nack of offset {o} not in flight");
                            me.log(Event::Nacked {
                                offset: o,
                                reason: n.reason.clone(),
                            });
                        }
                    }
                    Some(consume_request::Kind::SetWindow(w)) => {
                        window = w.window as usize;
                        me.log(Event::Window { window: w.window });
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_stream(
        &self,
        _: Request<GetStreamRequest>,
    ) -> Result<Response<GetStreamResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn start_fake(broker: FakeBroker) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BrokerServer::new(broker))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("{addr}")
}

fn records(valid: usize, malformed_at: &[usize]) -> Vec<Record> {
    let key = PanKey::dev();
    let txs = txpipe_worker::bench::synthetic_transactions(valid, &key);
    let mut out: Vec<Record> = txs
        .into_iter()
        .map(|v| Record {
            key: bytes::Bytes::new(),
            value: v.into(),
            timestamp_us: txpipe_client::now_us(),
        })
        .collect();
    for &i in malformed_at {
        out.insert(
            i,
            Record {
                key: "bad".into(),
                value: vec![0xff, 0xff, 0xff, 0x01].into(),
                timestamp_us: 1,
            },
        );
    }
    out
}

fn config(broker: &str, window: u32) -> Config {
    let mut c = Config::defaults();
    c.brokers = broker.to_string();
    c.name = Some("test-worker".into());
    c.window = window;
    c.crypto_rounds = 2;
    c.drain_grace_ms = 10_000;
    c.reconnect_deadline_ms = 10_000;
    c
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    (status, buf)
}

/// Checks the exactly-once contract on the event log: every acked offset has exactly one
/// decision, produced before its ack; no offset is acked twice.
fn check_decided_then_acked(events: &[Event]) -> (HashSet<u64>, HashMap<u64, usize>) {
    let mut produced_at: HashMap<u64, usize> = HashMap::new();
    let mut acked = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Produced { source_offset, .. } => {
                produced_at.entry(*source_offset).or_insert(i);
            }
            Event::Acked { offset } => {
                let p = produced_at
                    .get(offset)
                    .unwrap_or_else(|| panic!("offset {offset} acked before any decision"));
                assert!(*p < i);
                assert!(acked.insert(*offset), "offset {offset} acked twice");
            }
            _ => {}
        }
    }
    (acked, produced_at)
}

#[tokio::test(flavor = "current_thread")]
async fn each_transaction_gets_one_decision_then_an_ack_and_malformed_ones_are_nacked() {
    let recs = records(500, &[7, 300]);
    let fake = FakeBroker::new(recs);
    let addr = start_fake(fake.clone()).await;
    let mut cfg = config(&addr, 64);
    cfg.max_transactions = Some(500);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let worker = tokio::spawn(txpipe_worker::run(cfg, admin, std::future::pending()));

    wait_for("readiness", || {
        fake.events()
            .iter()
            .any(|e| matches!(e, Event::Subscribed { .. }))
    })
    .await;
    let mut ready = false;
    for _ in 0..200 {
        if http_get(admin_addr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "/readyz never returned 200");
    assert_eq!(http_get(admin_addr, "/healthz").await.0, 200);
    wait_for("500 acks", || {
        fake.events()
            .iter()
            .filter(|e| matches!(e, Event::Acked { .. }))
            .count()
            >= 400
    })
    .await;
    let (_, metrics) = http_get(admin_addr, "/metrics").await;
    assert!(
        metrics.contains("txpipe_worker_decisions_total{outcome=\"approve\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("txpipe_worker_stage_duration_seconds_bucket{stage=\"crypto\""));
    assert!(metrics.contains("txpipe_worker_e2e_latency_seconds_count"));

    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker exits after --max-transactions")
        .unwrap()
        .unwrap();
    assert_eq!(stats.acked, 500);
    assert_eq!(stats.nacked, 2);
    assert_eq!(stats.approved + stats.reviewed + stats.declined, 500);

    let events = fake.events();
    let (acked, produced) = check_decided_then_acked(&events);
    assert_eq!(acked.len(), 500);
    let decisions: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Produced { .. }))
        .collect();
    assert_eq!(decisions.len(), 500, "one decision per transaction");
    for bad in [7u64, 300] {
        assert!(!acked.contains(&bad) && !produced.contains_key(&bad));
        assert!(events.iter().any(|e| matches!(e, Event::Nacked { offset, reason } if *offset == bad && reason.contains("undecodable"))));
    }
    // The tx ids of decisions are the ids of the records at their offsets.
    let recs = records(500, &[7, 300]);
    for e in &events {
        if let Event::Produced {
            tx_id,
            source_offset,
        } = e
        {
            let tx = txpipe_client::pipeline::v1::Transaction::decode(
                recs[*source_offset as usize].value.as_ref(),
            )
            .unwrap();
            assert_eq!(&tx.id, tx_id);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_stops_new_deliveries_and_drains_everything_in_flight() {
    let fake = FakeBroker::new(records(5_000, &[]));
    let addr = start_fake(fake.clone()).await;
    let mut cfg = config(&addr, 300);
    cfg.issuer_latency_us = 2_000; // keep plenty in flight
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(txpipe_worker::run(cfg, admin, async move {
        let _ = stop_rx.await;
    }));
    wait_for("first acks", || {
        fake.events()
            .iter()
            .filter(|e| matches!(e, Event::Acked { .. }))
            .count()
            >= 100
    })
    .await;
    stop_tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker drains and exits")
        .unwrap()
        .unwrap();
    assert_eq!(stats.unfinished, 0);
    let events = fake.events();
    assert!(
        events.contains(&Event::Window { window: 0 }),
        "SetWindow 0 sent"
    );
    let (acked, _) = check_decided_then_acked(&events);
    let delivered: HashSet<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Delivered { offset } => Some(*offset),
            _ => None,
        })
        .collect();
    assert!(
        delivered.len() < 5_000,
        "the drain stopped deliveries before the end"
    );
    // Everything the worker received was finished. Deliveries the fake sent after the worker's
    // last in-flight transaction was acked, but before it applied SetWindow 0, were still on
    // the wire: they are not acked and go back to the broker for redelivery.
    assert!(acked.is_subset(&delivered));
    let pending: HashSet<u64> = fake.state.lock().unwrap().pending.iter().copied().collect();
    for o in delivered.difference(&acked) {
        assert!(
            pending.contains(o),
            "unacked offset {o} was not returned for redelivery"
        );
    }
    assert_eq!(stats.acked as usize, acked.len());
    assert!(acked.len() >= 100);
}

#[tokio::test(flavor = "current_thread")]
async fn a_broken_consume_stream_is_reconnected_and_every_transaction_is_acked_once() {
    let fake = FakeBroker::new(records(1_000, &[]));
    fake.state.lock().unwrap().break_after_deliveries = Some(300);
    let addr = start_fake(fake.clone()).await;
    let mut cfg = config(&addr, 200);
    cfg.max_transactions = Some(1_000);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(60),
        txpipe_worker::run(cfg, admin, std::future::pending()),
    )
    .await
    .expect("worker finishes")
    .unwrap();
    assert!(stats.reconnects >= 1);
    assert_eq!(stats.acked, 1_000);
    let events = fake.events();
    let subscribes = events
        .iter()
        .filter(|e| matches!(e, Event::Subscribed { .. }))
        .count();
    assert!(subscribes >= 2);
    let (acked, _) = check_decided_then_acked(&events);
    assert_eq!(acked.len(), 1_000);
}
