//! Fake broker nodes for the failover tests.
//!
//! A [`FakeBroker`] implements the generated `Broker` trait minimally: per stream it is the
//! leader (acks Produce batches with a per-producer dedupe table, answers Fetch/GetStream), a
//! follower (`UNAVAILABLE` "not the leader ..." with an optional `txpipe-leader` hint), or it
//! rejects calls with a fixed status code. Every node runs behind a TCP proxy on port 0, so a
//! test can kill a node the way a crash does: the listener and every open connection close at
//! once (connections reset, new connections refused).

#![allow(dead_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status, Streaming};
use txpipe_client::broker::v1::broker_server::{Broker, BrokerServer};
use txpipe_client::broker::v1::*;

/// What a node does for calls about one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Serves the stream.
    Leader,
    /// Answers UNAVAILABLE "not the leader", with the hint (`host:port`) when given.
    NotLeader(Option<String>),
    /// Answers every call with this code.
    Reject(Code),
}

/// One Produce batch a node received while leading its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Stream.
    pub stream: String,
    /// Producer id.
    pub producer_id: u64,
    /// Producer epoch.
    pub epoch: u64,
    /// Sequence.
    pub sequence: u64,
    /// Records in the batch.
    pub records: usize,
}

/// A node's state, inspected and changed by the tests.
#[derive(Debug)]
pub struct NodeState {
    /// Role per stream; streams not listed use `default_role`.
    pub roles: HashMap<String, Role>,
    /// Role of streams not in `roles`.
    pub default_role: Role,
    /// Produce calls opened, per stream of their first batch.
    pub produce_calls: HashMap<String, usize>,
    /// Fetch and GetStream calls, per stream.
    pub read_calls: HashMap<String, usize>,
    /// Every batch received as leader, in arrival order (duplicates included).
    pub batches: Vec<Batch>,
    /// Acks only this many batches in total, then withholds acks (batches stay in flight).
    pub ack_limit: Option<usize>,
    /// After acking this many batches in total, step down: the open call and later ones end
    /// with NOT_LEADER and the given hint.
    pub step_down_after: Option<(usize, Option<String>)>,
    /// Batches acked.
    pub acked: usize,
    /// Names registered with InitProducer as leader, in order (the id is 100 + index).
    pub registrations: Vec<String>,
    /// Dedupe table: last stored sequence per (stream, producer id). Tests pre-fill it to
    /// play "the old leader committed these batches but its acks were lost".
    pub last_sequence: HashMap<(String, u64), u64>,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            roles: HashMap::new(),
            default_role: Role::Leader,
            produce_calls: HashMap::new(),
            read_calls: HashMap::new(),
            batches: Vec::new(),
            ack_limit: None,
            step_down_after: None,
            acked: 0,
            registrations: Vec::new(),
            last_sequence: HashMap::new(),
        }
    }
}

impl NodeState {
    fn role(&self, stream: &str) -> Role {
        self.roles
            .get(stream)
            .cloned()
            .unwrap_or_else(|| self.default_role.clone())
    }
}

/// The status a node answers for `role` (None for a leader).
pub fn status_for(name: &str, stream: &str, role: &Role) -> Option<Status> {
    match role {
        Role::Leader => None,
        Role::NotLeader(hint) => {
            let mut s =
                Status::unavailable(format!("not the leader of stream {stream:?}; node {name}"));
            if let Some(h) = hint {
                s.metadata_mut()
                    .insert("txpipe-leader", h.parse().expect("ascii hint"));
            }
            Some(s)
        }
        Role::Reject(code) => Some(Status::new(*code, format!("{name} rejects {stream:?}"))),
    }
}

/// A fake broker node.
#[derive(Clone)]
pub struct FakeBroker {
    /// Name, reported in GetStream answers (`StreamInfo.group`).
    pub name: String,
    /// Shared state.
    pub state: Arc<Mutex<NodeState>>,
}

impl FakeBroker {
    /// A node leading every stream.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: Arc::new(Mutex::new(NodeState::default())),
        }
    }

    /// Locks the state.
    pub fn st(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap()
    }

    /// Sets the role for one stream.
    pub fn set_role(&self, stream: &str, role: Role) {
        self.st().roles.insert(stream.to_string(), role);
    }

    /// Sets the role of every stream without an explicit one.
    pub fn set_default_role(&self, role: Role) {
        self.st().default_role = role;
    }

    /// Sequences received for `producer_id`, in arrival order.
    pub fn sequences(&self, producer_id: u64) -> Vec<u64> {
        self.st()
            .batches
            .iter()
            .filter(|b| b.producer_id == producer_id)
            .map(|b| b.sequence)
            .collect()
    }

    /// Produce calls opened for `stream`.
    pub fn produce_calls(&self, stream: &str) -> usize {
        self.st().produce_calls.get(stream).copied().unwrap_or(0)
    }

    /// Fetch + GetStream calls for `stream`.
    pub fn read_calls(&self, stream: &str) -> usize {
        self.st().read_calls.get(stream).copied().unwrap_or(0)
    }

    fn read(&self, stream: &str) -> Result<(), Status> {
        let mut st = self.st();
        *st.read_calls.entry(stream.to_string()).or_default() += 1;
        match status_for(&self.name, stream, &st.role(stream)) {
            Some(s) => Err(s),
            None => Ok(()),
        }
    }

    /// Handles one batch as the current role dictates: `Ok(Some(resp))` to ack,
    /// `Ok(None)` to withhold the ack, `Err` to end the call.
    fn on_batch(&self, req: &ProduceRequest) -> Result<Option<ProduceResponse>, Status> {
        let mut st = self.st();
        if let Some(s) = status_for(&self.name, &req.stream, &st.role(&req.stream)) {
            return Err(s);
        }
        st.batches.push(Batch {
            stream: req.stream.clone(),
            producer_id: req.producer_id,
            epoch: req.epoch,
            sequence: req.sequence,
            records: req.records.len(),
        });
        if st.ack_limit.is_some_and(|n| st.acked >= n) {
            return Ok(None);
        }
        let key = (req.stream.clone(), req.producer_id);
        let last = st.last_sequence.get(&key).copied().unwrap_or(0);
        let duplicate = req.producer_id != 0 && req.sequence <= last;
        if !duplicate {
            st.last_sequence.insert(key, req.sequence);
        }
        st.acked += 1;
        if let Some((n, hint)) = st.step_down_after.clone()
            && st.acked >= n
        {
            st.roles.insert(req.stream.clone(), Role::NotLeader(hint));
        }
        Ok(Some(ProduceResponse {
            stream: req.stream.clone(),
            sequence: req.sequence,
            base_offset: 0,
            stored: if duplicate {
                0
            } else {
                req.records.len() as u32
            },
            deduplicated: 0,
            duplicate,
        }))
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
        // Like the broker: the stream is named by the first batch; a node that does not lead
        // it answers with a status and no message (trailers only).
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument("empty produce stream"));
        };
        {
            let mut st = self.st();
            *st.produce_calls.entry(first.stream.clone()).or_default() += 1;
            if let Some(s) = status_for(&self.name, &first.stream, &st.role(&first.stream)) {
                return Err(s);
            }
        }
        let (tx, rx) = mpsc::channel(256);
        let me = self.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let req = match next.take() {
                    Some(r) => r,
                    None => match inbound.message().await {
                        Ok(Some(r)) => r,
                        _ => return,
                    },
                };
                match me.on_batch(&req) {
                    Ok(Some(resp)) => {
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
                // A step-down after this ack ends the call at once, not at the next batch.
                let role = me.st().role(&req.stream);
                if role != Role::Leader {
                    if let Some(s) = status_for(&me.name, &req.stream, &role) {
                        let _ = tx.send(Err(s)).await;
                    }
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn consume(
        &self,
        _: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let req = request.into_inner();
        self.read(&req.stream)?;
        Ok(Response::new(FetchResponse {
            records: vec![FetchedRecord {
                offset: req.start_offset,
                record: Some(Record {
                    key: self.name.clone().into_bytes().into(),
                    value: Default::default(),
                    timestamp_us: 0,
                }),
            }],
            next_offset: req.start_offset + 1,
            end_offset: req.start_offset + 1,
            start_offset: 0,
        }))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let req = request.into_inner();
        let mut st = self.st();
        if let Some(s) = status_for(&self.name, &req.stream, &st.role(&req.stream)) {
            return Err(s);
        }
        st.registrations.push(req.name.clone());
        let epoch = st.registrations.iter().filter(|n| **n == req.name).count() as u64;
        let producer_id = 100 + st.registrations.len() as u64 - 1;
        Ok(Response::new(InitProducerResponse {
            stream: req.stream,
            producer_id,
            epoch,
            last_position: 0,
            next_sequence: 1,
        }))
    }

    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        Ok(Response::new(ListStreamsResponse::default()))
    }

    async fn get_stream(
        &self,
        request: Request<GetStreamRequest>,
    ) -> Result<Response<GetStreamResponse>, Status> {
        let req = request.into_inner();
        self.read(&req.stream)?;
        Ok(Response::new(GetStreamResponse {
            stream: Some(StreamInfo {
                name: req.stream,
                group: self.name.clone(),
                ..Default::default()
            }),
        }))
    }
}

/// A running fake node behind a killable TCP proxy.
pub struct Node {
    /// The fake (state inspection).
    pub fake: FakeBroker,
    /// Client address `127.0.0.1:port` (the proxy).
    pub addr: String,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Node {
    /// Starts `fake` on port 0 behind a proxy on port 0.
    pub async fn start(fake: FakeBroker) -> Node {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BrokerServer::new(fake.clone()))
                .serve_with_incoming(TcpListenerStream::new(backend)),
        );
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = front.accept().await {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = TcpStream::connect(backend_addr).await else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let h = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                c2.lock().unwrap().push(h);
            }
        });
        Node {
            fake,
            addr,
            accept,
            conns,
        }
    }

    /// `http://` URI of the node.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the node as a crash would: stops listening and closes every open connection.
    /// Returns once the sockets are closed.
    pub async fn kill(&self) {
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

/// An address nobody listens on (a port that was free a moment ago).
pub async fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

/// Polls `cond` every 5 ms until it holds; panics after 20 s.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` one-record batches: record value = the batch number.
pub fn batch(i: u64) -> Vec<Record> {
    vec![Record {
        key: format!("k{i}").into_bytes().into(),
        value: i.to_le_bytes().to_vec().into(),
        timestamp_us: 1,
    }]
}
