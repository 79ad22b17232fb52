//! The worker loop against small in-process fake brokers (tonic servers on port 0).
//!
//! The fake delivers a fixed list of transaction records with credit flow (at most `window`
//! unacked), records every decision produce, ack, nack and window change in one ordered event
//! log, and can break the consume stream once to exercise reconnection. Several fake nodes can
//! share one state (standing for the replicated state machine) and play leader or follower per
//! stream; each node runs behind a TCP proxy so that a test can kill it like a crash.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
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
    Subscribed {
        node: String,
        window: u32,
    },
    Delivered {
        node: String,
        offset: u64,
    },
    Produced {
        node: String,
        tx_id: String,
        source_offset: u64,
    },
    Acked {
        node: String,
        offset: u64,
    },
    Nacked {
        offset: u64,
        reason: String,
    },
    Window {
        window: u32,
    },
    /// A node answered "not the leader" for a stream.
    Refused {
        node: String,
        stream: String,
    },
}

#[derive(Default)]
struct FakeState {
    events: Vec<Event>,
    /// Offsets waiting for (re)delivery, highest first (popped from the end).
    pending: Vec<u64>,
    /// Offsets delivered by any node and not acked yet (replicated state).
    in_flight: HashSet<u64>,
    break_after_deliveries: Option<usize>,
}

/// Per-node part of a fake: name, leader/follower role per stream, and whether it was killed.
struct NodeInfo {
    name: String,
    /// Streams this node does not lead, with the hint it answers (`host:port`).
    not_leader: Mutex<HashMap<String, Option<String>>>,
    dead: AtomicBool,
}

#[derive(Clone)]
struct FakeBroker {
    records: Arc<Vec<Record>>,
    state: Arc<Mutex<FakeState>>,
    /// While true, decision batches are received but not acknowledged.
    hold_decisions: Arc<watch::Sender<bool>>,
    node: Arc<NodeInfo>,
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
            hold_decisions: Arc::new(watch::channel(false).0),
            node: Arc::new(NodeInfo {
                name: "a".into(),
                not_leader: Mutex::default(),
                dead: AtomicBool::new(false),
            }),
        }
    }

    /// Another node sharing this one's records and (replicated) state.
    fn peer(&self, name: &str) -> Self {
        Self {
            node: Arc::new(NodeInfo {
                name: name.into(),
                not_leader: Mutex::default(),
                dead: AtomicBool::new(false),
            }),
            ..self.clone()
        }
    }

    fn name(&self) -> String {
        self.node.name.clone()
    }

    /// Makes this node lead `stream` (`None`) or follow with the given leader hint.
    fn set_follower(&self, stream: &str, hint: Option<Option<String>>) {
        let mut m = self.node.not_leader.lock().unwrap();
        match hint {
            None => m.remove(stream),
            Some(h) => m.insert(stream.to_string(), h),
        };
    }

    /// UNAVAILABLE "not the leader" (with the hint) when this node does not lead `stream`.
    fn refuse(&self, stream: &str) -> Option<Status> {
        let hint = self.node.not_leader.lock().unwrap().get(stream).cloned()?;
        self.log(Event::Refused {
            node: self.name(),
            stream: stream.into(),
        });
        let mut s = Status::unavailable(format!(
            "not the leader of stream {stream:?}; node {}",
            self.name()
        ));
        if let Some(h) = hint {
            s.metadata_mut().insert("txpipe-leader", h.parse().unwrap());
        }
        Some(s)
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
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument("empty stream"));
        };
        assert_eq!(first.stream, "decisions");
        if let Some(s) = self.refuse(&first.stream) {
            return Err(s);
        }
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            let mut hold = me.hold_decisions.subscribe();
            loop {
                let req = match next.take() {
                    Some(r) => r,
                    None => match inbound.message().await {
                        Ok(Some(r)) => r,
                        _ => return,
                    },
                };
                for r in &req.records {
                    let d = Decision::decode(r.value.as_ref()).expect("decision decodes");
                    assert_eq!(r.key.as_ref(), d.transaction_id.as_bytes());
                    me.log(Event::Produced {
                        node: me.name(),
                        tx_id: d.transaction_id,
                        source_offset: d.source_offset,
                    });
                }
                if hold.wait_for(|held| !held).await.is_err() {
                    return;
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
        if let Some(s) = self.refuse(&sub.stream) {
            return Err(s);
        }
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        me.log(Event::Subscribed {
            node: me.name(),
            window: sub.window,
        });
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
            // Deliveries of this call not acked yet (its credit).
            let mut unacked: HashSet<u64> = HashSet::new();
            let mut delivered_here = 0usize;
            // Puts this call's unacked deliveries back for redelivery (a consumer that left a
            // live broker); a killed node leaves them in flight, as the replicated state does
            // until their ack deadline.
            let give_back = |me: &FakeBroker, unacked: &mut HashSet<u64>| {
                if me.node.dead.load(Ordering::SeqCst) {
                    return;
                }
                let mut st = me.state.lock().unwrap();
                for o in unacked.drain() {
                    if st.in_flight.remove(&o) {
                        st.pending.push(o);
                    }
                }
                st.pending.sort_by(|a, b| b.cmp(a));
            };
            loop {
                // Deliver while there is credit.
                let batch: Vec<Delivery> = {
                    let mut st = me.state.lock().unwrap();
                    let mut out = Vec::new();
                    while unacked.len() + out.len() < window && out.len() < 100 {
                        let Some(off) = st.pending.pop() else { break };
                        st.in_flight.insert(off);
                        out.push(Delivery {
                            offset: off,
                            attempt: 1,
                            record: Some(me.records[off as usize].clone()),
                        });
                        st.events.push(Event::Delivered {
                            node: me.name(),
                            offset: off,
                        });
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
                        give_back(&me, &mut unacked);
                        break;
                    }
                }
                let brk = me.state.lock().unwrap().break_after_deliveries;
                if let Some(n) = brk
                    && delivered_here >= n
                {
                    // Break the stream once: unacked deliveries go back to pending.
                    me.state.lock().unwrap().break_after_deliveries = None;
                    give_back(&me, &mut unacked);
                    let _ = tx
                        .send(Err(Status::unavailable("fake broker restarting")))
                        .await;
                    return;
                }
                let Ok(Some(req)) = inbound.message().await else {
                    // Client gone.
                    give_back(&me, &mut unacked);
                    return;
                };
                match req.kind {
                    Some(consume_request::Kind::Ack(a)) => {
                        let mut st = me.state.lock().unwrap();
                        for o in a.offsets {
                            unacked.remove(&o);
                            // Like the broker: any offset still pending is accepted, whoever
                            // delivered it; others are ignored.
                            let was_pending = st.in_flight.remove(&o) || {
                                let before = st.pending.len();
                                st.pending.retain(|p| *p != o);
                                st.pending.len() != before
                            };
                            if was_pending {
                                st.events.push(Event::Acked {
                                    node: me.name(),
                                    offset: o,
                                });
                            }
                        }
                    }
                    Some(consume_request::Kind::Nack(n)) => {
                        let mut st = me.state.lock().unwrap();
                        for o in n.offsets {
                            assert!(unacked.remove(&o), "nack of offset {o} not in flight");
                            st.in_flight.remove(&o);
                            st.events.push(Event::Nacked {
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

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let req = request.into_inner();
        if let Some(s) = self.refuse(&req.stream) {
            return Err(s);
        }
        Ok(Response::new(InitProducerResponse {
            stream: req.stream,
            producer_id: 1,
            epoch: 1,
            last_position: 0,
            next_sequence: 1,
        }))
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

/// A fake node behind a TCP proxy on port 0 that can be killed like a crashed process.
struct Killable {
    fake: FakeBroker,
    addr: String,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Killable {
    async fn start(fake: FakeBroker) -> Self {
        let backend = start_fake(fake.clone()).await;
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = front.accept().await {
                let Ok(mut server) = TcpStream::connect(&backend).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                c2.lock().unwrap().push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }));
            }
        });
        Self {
            fake,
            addr,
            accept,
            conns,
        }
    }

    /// Stops listening and closes every open connection; returns once they are closed.
    async fn kill(&self) {
        self.fake.node.dead.store(true, Ordering::SeqCst);
        self.accept.abort();
        let conns: Vec<JoinHandle<()>> = std::mem::take(&mut *self.conns.lock().unwrap());
        for h in &conns {
            h.abort();
        }
        for h in conns {
            let _ = h.await;
        }
        while !self.accept.is_finished() {
            tokio::task::yield_now().await;
        }
    }
}

fn records(valid: usize, malformed_at: &[usize]) -> Vec<Record> {
    let key = PanKey::insecure_test_key();
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
    // The key the test's transactions are sealed with.
    c.pan.pan_key_hex = Some(PanKey::insecure_test_key_hex());
    c.pan.pan_key_id = Some("dev-1".into());
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
            Event::Acked { offset, .. } => {
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
    let cfg = config(&addr, 64);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    // Stopped by the test once the admin endpoints are checked (with --max-transactions the
    // worker could finish, and close its admin port, before the checks).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(txpipe_worker::run(cfg, admin, async move {
        let _ = stop_rx.await;
    }));

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
            == 500
    })
    .await;
    let (_, metrics) = http_get(admin_addr, "/metrics").await;
    assert!(
        metrics.contains("txpipe_worker_decisions_total{outcome=\"approve\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("txpipe_worker_stage_duration_seconds_bucket{stage=\"crypto\""));
    assert!(metrics.contains("txpipe_worker_e2e_latency_seconds_count"));

    stop_tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker drains and exits")
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
            ..
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
            Event::Delivered { offset, .. } => Some(*offset),
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
    // Deliveries of the broken call were finished, not dropped; their redeliveries on the new
    // call were recognised (still held, or just acked) and not scored again.
    let decisions = events
        .iter()
        .filter(|e| matches!(e, Event::Produced { .. }))
        .count();
    assert_eq!(decisions, 1_000, "one decision per transaction");
    assert!(stats.duplicate_deliveries > 0);
}

#[tokio::test(flavor = "current_thread")]
async fn after_a_failover_in_flight_transactions_are_finished_and_acked_on_the_new_leader() {
    const N: u64 = 300;
    const WINDOW: u32 = 100;
    // Two nodes sharing the replicated state. a leads `transactions`, b leads `decisions`;
    // each answers "not the leader" with a hint for the other stream.
    let a = FakeBroker::new(records(N as usize, &[]));
    let b = a.peer("b");
    let a = Killable::start(a).await;
    let b = Killable::start(b).await;
    a.fake.set_follower("decisions", Some(Some(b.addr.clone())));
    b.fake
        .set_follower("transactions", Some(Some(a.addr.clone())));
    // Decisions are not acknowledged yet: whatever a delivers stays in flight in the worker.
    a.fake.hold_decisions.send_replace(true);

    let mut cfg = config(&format!("{},{}", a.addr, b.addr), WINDOW);
    cfg.max_transactions = Some(N);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = tokio::spawn(txpipe_worker::run(cfg, admin, std::future::pending()));

    let delivered_by = |node: &str| -> HashSet<u64> {
        a.fake
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { node: n, offset } if n == node => Some(*offset),
                _ => None,
            })
            .collect()
    };
    wait_for("a to fill the window", || {
        delivered_by("a").len() == WINDOW as usize
    })
    .await;
    wait_for("a first decision on b", || {
        a.fake
            .events()
            .iter()
            .any(|e| matches!(e, Event::Produced { node, .. } if node == "b"))
    })
    .await;
    assert!(
        !a.fake
            .events()
            .iter()
            .any(|e| matches!(e, Event::Acked { .. })),
        "nothing can be acked while decisions are held"
    );

    // a dies with its window in flight; b wins the election for `transactions`.
    b.fake.set_follower("transactions", None);
    a.kill().await;
    wait_for("the worker to subscribe on b", || {
        a.fake
            .events()
            .iter()
            .any(|e| matches!(e, Event::Subscribed { node, .. } if node == "b"))
    })
    .await;
    a.fake.hold_decisions.send_replace(false);

    let stats = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("worker finishes")
        .unwrap()
        .unwrap();
    assert_eq!(stats.acked, N);
    assert!(stats.reconnects >= 1);
    assert_eq!(stats.orphaned, 0);

    let events = a.fake.events();
    let (acked, _) = check_decided_then_acked(&events);
    assert_eq!(acked.len(), N as usize);
    // a's deliveries were finished, not dropped: their acks arrived at b, on the new call.
    let from_a = delivered_by("a");
    assert_eq!(from_a.len(), WINDOW as usize);
    for o in &from_a {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Acked { node, offset } if node == "b" && offset == o)),
            "offset {o} delivered by a was not acked at b"
        );
    }
    // One decision per transaction, all on b, the leader of `decisions` throughout.
    let mut per_tx: HashMap<String, usize> = HashMap::new();
    for e in &events {
        if let Event::Produced { node, tx_id, .. } = e {
            assert_eq!(node, "b");
            *per_tx.entry(tx_id.clone()).or_default() += 1;
        }
    }
    assert_eq!(per_tx.len(), N as usize);
    assert!(
        per_tx.values().all(|&n| n == 1),
        "a decision was produced twice"
    );
    // The decision producer was told by a where the leader of `decisions` is.
    assert!(events.contains(&Event::Refused {
        node: "a".into(),
        stream: "decisions".into()
    }));
    // Nothing was delivered twice: b delivered only what a had not.
    let from_b = delivered_by("b");
    assert!(from_a.is_disjoint(&from_b));
    assert_eq!(from_a.len() + from_b.len(), N as usize);
}

#[tokio::test(flavor = "current_thread")]
async fn a_pan_sealed_with_a_key_the_worker_does_not_hold_is_nacked_with_the_key_id() {
    let mut recs = records(50, &[]);
    let stranger = PanKey::from_hex("k9", &"99".repeat(32)).unwrap();
    let foreign = txpipe_worker::bench::synthetic_transactions(1, &stranger).remove(0);
    recs.insert(
        10,
        Record {
            key: "foreign".into(),
            value: foreign.into(),
            timestamp_us: txpipe_client::now_us(),
        },
    );
    let fake = FakeBroker::new(recs);
    let addr = start_fake(fake.clone()).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(txpipe_worker::run(config(&addr, 64), admin, async move {
        let _ = stop_rx.await;
    }));
    wait_for("50 acks and a nack", || {
        let ev = fake.events();
        ev.iter()
            .filter(|e| matches!(e, Event::Acked { .. }))
            .count()
            == 50
            && ev.iter().any(|e| matches!(e, Event::Nacked { .. }))
    })
    .await;
    stop_tx.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker drains and exits")
        .unwrap()
        .unwrap();
    assert_eq!((stats.acked, stats.nacked), (50, 1));
    let events = fake.events();
    let reason = events
        .iter()
        .find_map(|e| match e {
            Event::Nacked { offset: 10, reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("the foreign transaction is nacked");
    assert!(
        reason.contains("key id \"k9\"") && reason.contains("dev-1"),
        "{reason}"
    );
}
