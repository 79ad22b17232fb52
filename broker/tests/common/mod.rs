//! Test harness: an in-process broker on port 0 in its own runtime (so a test can "crash" it by
//! dropping the runtime without a clean shutdown), plus small client helpers.
#![allow(dead_code)]

pub mod pki;
pub mod procs;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use txpipe_broker::Config;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::broker::v1::*;

/// Three loopback listeners on port 0.
pub async fn listeners() -> txpipe_broker::Listeners {
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    txpipe_broker::Listeners {
        grpc: bind().await.unwrap(),
        peer: bind().await.unwrap(),
        admin: bind().await.unwrap(),
    }
}

pub struct TestBroker {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

/// A config for tests: small timers, fsync on.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.snapshot_interval_ms = 200;
    c.ack_flush_ms = 1;
    c.raft_keep_entries = 0;
    c
}

/// Pre-bound std listeners `(grpc, peer, admin)` on loopback port 0.
pub fn bind3() -> (
    std::net::TcpListener,
    std::net::TcpListener,
    std::net::TcpListener,
) {
    let b = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (b(), b(), b())
}

/// Configs and listeners of an `n`-node cluster in `dir/node-<i>` (short Raft timers).
pub fn cluster_configs(
    dir: &Path,
    n: usize,
) -> Vec<(
    Config,
    (
        std::net::TcpListener,
        std::net::TcpListener,
        std::net::TcpListener,
    ),
)> {
    let ls: Vec<_> = (0..n).map(|_| bind3()).collect();
    let peers: Vec<String> = ls
        .iter()
        .map(|l| l.1.local_addr().unwrap().to_string())
        .collect();
    let clients: Vec<String> = ls
        .iter()
        .map(|l| l.0.local_addr().unwrap().to_string())
        .collect();
    ls.into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = test_config(&dir.join(format!("node-{i}")));
            c.node_id = Some(i as u64);
            c.peers = peers.clone();
            c.client_addrs = clients.clone();
            c.heartbeat_ms = 50;
            c.election_timeout_ms = 300;
            c.raft_rpc_timeout_ms = 500;
            (c, l)
        })
        .collect()
}

impl TestBroker {
    pub fn start(config: Config) -> Self {
        Self::start_on(config, bind3())
    }

    /// Starts on pre-bound listeners `(grpc, peer, admin)`.
    pub fn start_on(
        config: Config,
        (grpc, peer, admin): (
            std::net::TcpListener,
            std::net::TcpListener,
            std::net::TcpListener,
        ),
    ) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        peer.set_nonblocking(true).unwrap();
        grpc.set_nonblocking(true).unwrap();
        admin.set_nonblocking(true).unwrap();
        let (ga, aa) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stop_rx) = oneshot::channel::<bool>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async move {
                let grpc = tokio::net::TcpListener::from_std(grpc).unwrap();
                let admin = tokio::net::TcpListener::from_std(admin).unwrap();
                let peer = tokio::net::TcpListener::from_std(peer).unwrap();
                let (graceful_tx, graceful_rx) = oneshot::channel::<()>();
                let listeners = txpipe_broker::Listeners { grpc, peer, admin };
                let run = txpipe_broker::run(config, listeners, async move {
                    let _ = graceful_rx.await;
                });
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r.map_err(|e| e.to_string()),
                    crash = stop_rx => {
                        if crash.unwrap_or(true) {
                            Ok(()) // drop everything: no final snapshot, no ack flush
                        } else {
                            let _ = graceful_tx.send(());
                            run.await.map_err(|e| e.to_string())
                        }
                    }
                }
            });
            // Wait for the tasks to be dropped (sockets closed, no more log reads) and for
            // in-progress blocking writes to finish, so that a test can touch the node's files
            // or rebind its ports as soon as `crash` returns.
            rt.shutdown_timeout(Duration::from_secs(10));
            r
        });
        Self {
            grpc: ga,
            admin: aa,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Clean shutdown (final snapshot). Async so that the test's own runtime keeps serving its
    /// client connections (HTTP/2 graceful shutdown needs the client to answer a PING).
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(false);
        let t = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap()
            .unwrap();
    }

    /// Abrupt stop: the runtime is dropped mid-flight (no final snapshot, no flush of pending
    /// acks); returns once the node's tasks are gone.
    pub fn crash(mut self) {
        let _ = self.stop.take().unwrap().send(true);
        let _ = self.thread.take().unwrap().join().unwrap();
    }

    pub async fn client(&self) -> BrokerClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match BrokerClient::connect(format!("http://{}", self.grpc)).await {
                Ok(c) => {
                    return c
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20);
                }
                Err(e) if Instant::now() > deadline => panic!("broker unreachable: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Channel::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("broker unreachable: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn rec(key: &str, value: &str) -> Record {
    Record {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        timestamp_us: 1,
    }
}

thread_local! {
    /// Registrations made by [`produce`] in this test: (stream, test producer id) → (id, epoch).
    static REGISTERED: std::cell::RefCell<std::collections::HashMap<(String, u64), (u64, u64)>> =
        Default::default();
}

/// Registers `name` on `stream` (InitProducer).
pub async fn init_producer(
    client: &mut BrokerClient<Channel>,
    stream: &str,
    name: &str,
) -> Result<InitProducerResponse, tonic::Status> {
    client
        .init_producer(InitProducerRequest {
            stream: stream.into(),
            name: name.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// One Produce call: sends `batches` and collects the answers (or the error status).
///
/// A batch with a non-zero producer id and epoch 0 names a *test* producer: the first use of
/// `(stream, id)` in this test (thread) registers it as `test-<id>` and every batch of it is
/// sent with the registered id and epoch. Batches with an epoch are sent as they are.
pub async fn produce(
    client: &mut BrokerClient<Channel>,
    mut batches: Vec<ProduceRequest>,
) -> Result<Vec<ProduceResponse>, tonic::Status> {
    for b in batches.iter_mut() {
        if b.producer_id == 0 || b.epoch != 0 {
            continue;
        }
        let key = (b.stream.clone(), b.producer_id);
        let known = REGISTERED.with(|r| r.borrow().get(&key).copied());
        let (id, epoch) = match known {
            Some(r) => r,
            None => {
                let r =
                    init_producer(client, &b.stream, &format!("test-{}", b.producer_id)).await?;
                REGISTERED.with(|m| m.borrow_mut().insert(key, (r.producer_id, r.epoch)));
                (r.producer_id, r.epoch)
            }
        };
        b.producer_id = id;
        b.epoch = epoch;
    }
    let n = batches.len();
    let mut inbound = client
        .produce(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match inbound.next().await {
            Some(Ok(r)) => out.push(r),
            Some(Err(s)) => return Err(s),
            None => return Err(tonic::Status::unknown("stream ended early")),
        }
    }
    Ok(out)
}

pub fn batch(
    stream: &str,
    producer_id: u64,
    sequence: u64,
    records: Vec<Record>,
) -> ProduceRequest {
    ProduceRequest {
        stream: stream.into(),
        producer_id,
        sequence,
        records,
        ..Default::default()
    }
}

/// A consumer: the request sender and the response stream.
pub struct TestConsumer {
    pub tx: mpsc::Sender<ConsumeRequest>,
    pub rx: Streaming<ConsumeResponse>,
    pub subscribed: Subscribed,
}

pub fn subscribe_req(stream: &str, name: &str, window: u32) -> ConsumeRequest {
    ConsumeRequest {
        kind: Some(consume_request::Kind::Subscribe(Subscribe {
            stream: stream.into(),
            group: String::new(),
            consumer_name: name.into(),
            window,
        })),
    }
}

impl TestConsumer {
    pub async fn connect(
        client: &mut BrokerClient<Channel>,
        stream: &str,
        name: &str,
        window: u32,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(subscribe_req(stream, name, window)).await.unwrap();
        let mut rx = client.consume(ReceiverStream::new(rx)).await?.into_inner();
        match rx.next().await {
            Some(Ok(ConsumeResponse {
                kind: Some(consume_response::Kind::Subscribed(s)),
            })) => Ok(Self {
                tx,
                rx,
                subscribed: s,
            }),
            Some(Err(s)) => Err(s),
            other => panic!("expected subscribed, got {other:?}"),
        }
    }

    /// Next batch of deliveries within `timeout`, or None.
    pub async fn next(&mut self, timeout: Duration) -> Option<Vec<Delivery>> {
        match tokio::time::timeout(timeout, self.rx.next()).await {
            Ok(Some(Ok(ConsumeResponse {
                kind: Some(consume_response::Kind::Deliveries(d)),
            }))) => Some(d.deliveries),
            Ok(Some(Err(s))) => panic!("consume failed: {s}"),
            _ => None,
        }
    }

    /// Collects deliveries until `n` are received (panics after `timeout`).
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(d) => out.extend(d),
                None => panic!("got {} deliveries of {n} within {timeout:?}", out.len()),
            }
        }
        out
    }

    pub async fn ack(&self, offsets: Vec<u64>) {
        self.tx
            .send(ConsumeRequest {
                kind: Some(consume_request::Kind::Ack(Ack { offsets })),
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, offsets: Vec<u64>, delay_ms: u32, reason: &str) {
        self.send_nack(offsets, delay_ms, reason, false).await;
    }

    /// A nack of a failure that cannot succeed on a retry (dead-lettered at once).
    pub async fn nack_permanent(&self, offsets: Vec<u64>, reason: &str) {
        self.send_nack(offsets, 0, reason, true).await;
    }

    async fn send_nack(&self, offsets: Vec<u64>, delay_ms: u32, reason: &str, permanent: bool) {
        self.tx
            .send(ConsumeRequest {
                kind: Some(consume_request::Kind::Nack(Nack {
                    offsets,
                    delay_ms,
                    reason: reason.into(),
                    permanent,
                })),
            })
            .await
            .unwrap();
    }
}

pub async fn stream_info(client: &mut BrokerClient<Channel>, stream: &str) -> StreamInfo {
    client
        .get_stream(GetStreamRequest {
            stream: stream.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stream
        .unwrap()
}

/// Polls `f` until it returns true (panics after `timeout`).
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn fetch_all(client: &mut BrokerClient<Channel>, stream: &str) -> Vec<FetchedRecord> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let r = client
            .fetch(FetchRequest {
                stream: stream.into(),
                start_offset: next,
                max_records: 0,
                max_bytes: 0,
            })
            .await
            .unwrap()
            .into_inner();
        if r.records.is_empty() {
            return out;
        }
        next = r.next_offset;
        out.extend(r.records);
    }
}

/// [`http_get`] that returns `None` instead of panicking when the server is unreachable or
/// does not answer within 2 s.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(2), raw_get(addr, path))
        .await
        .ok()?
        .ok()
}

/// One HTTP/1.1 PUT of `body` with `Connection: close`: the status code (0 when the status
/// line does not parse).
pub async fn http_put(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<u16> {
    raw_request(addr, "PUT", path, body)
        .await
        .map(|(code, _)| code)
}

/// Raw HTTP/1.1 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw_get(addr, path).await.unwrap()
}

/// One HTTP/1.1 GET with `Connection: close`: (status code, body); code 0 when the status
/// line does not parse.
async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    raw_request(addr, "GET", path, "").await
}

/// One HTTP/1.1 request with `Connection: close` and `body` (sent with its length when not
/// empty): (status code, body); code 0 when the status line does not parse.
async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    exchange(s, method, path, body).await
}

/// One HTTP/1.1 request with `Connection: close` over `s` (plain TCP or TLS): (status code,
/// body); code 0 when the status line does not parse.
pub async fn exchange<S>(
    mut s: S,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let length = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{length}\r\n{body}"
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    // A TLS server may close without close_notify after the response: keep what was read.
    if let Err(e) = s.read_to_end(&mut buf).await
        && buf.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
