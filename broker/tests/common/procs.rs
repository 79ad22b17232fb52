//! Brokers as real processes (the `txpipe-broker` binary of this test build), so a test can
//! end one at a crash point (`FAILPOINTS`, feature `failpoints`) or with SIGKILL, and restart
//! it on the same data directory with the same command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::broker::v1::*;

/// A free loopback port (bound on port 0, then released for the child to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One broker process slot: its ports and data directory survive restarts.
pub struct ProcNode {
    pub ordinal: usize,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
}

/// A cluster of `n` broker processes with small segments and fast timers.
pub struct ProcCluster {
    pub nodes: Vec<ProcNode>,
    /// Extra flags given to every node.
    pub flags: Vec<String>,
}

impl ProcCluster {
    /// Slots for `n` nodes under `dir` (nothing started yet).
    pub fn new(dir: &Path, n: usize, flags: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let nodes = (0..n)
            .map(|i| {
                let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
                ProcNode {
                    ordinal: i,
                    data_dir: dir.join(format!("node-{i}")),
                    grpc: addr(free_port()),
                    admin: addr(free_port()),
                    peer: addr(free_port()),
                    child: None,
                    log: dir.join(format!("node-{i}.log")),
                }
            })
            .collect();
        Self {
            nodes,
            flags: flags.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts node `i`, with `failpoints` as its `FAILPOINTS` (e.g. `"retention::after_trim=return"`).
    pub fn start(&mut self, i: usize, failpoints: Option<&str>) {
        let peers: Vec<String> = self.nodes.iter().map(|n| n.peer.to_string()).collect();
        let clients: Vec<String> = self.nodes.iter().map(|n| n.grpc.to_string()).collect();
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "node {i} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_txpipe-broker"));
        cmd.arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--listen", &n.grpc.to_string()])
            .args(["--admin-listen", &n.admin.to_string()])
            .args(["--peer-listen", &n.peer.to_string()])
            .args(["--node-id", &i.to_string()])
            .args(["--heartbeat-ms", "50", "--election-timeout-ms", "300"])
            .args(["--raft-rpc-timeout-ms", "1000"])
            .args(&self.flags)
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if peers.len() > 1 {
            cmd.args(["--peers", &peers.join(",")])
                .args(["--client-addrs", &clients.join(",")]);
        }
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        n.child = Some(cmd.spawn().expect("spawn txpipe-broker"));
    }

    /// Starts every node.
    pub fn start_all(&mut self, failpoints: Option<&str>) {
        for i in 0..self.nodes.len() {
            self.start(i, failpoints);
        }
    }

    /// The exit status of node `i` if it has exited (and forgets the child).
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let n = &mut self.nodes[i];
        let st = n.child.as_mut()?.try_wait().unwrap()?;
        n.child = None;
        Some(st)
    }

    /// Whether node `i` runs.
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process log of node `i` (stdout + stderr of every run).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Waits until every running node answers `/readyz` 200 and some node leads every
    /// stream; returns the leader's client address for `stream`. Panics with every node's
    /// log after `timeout`.
    pub async fn wait_serving(&self, stream: &str, timeout: Duration) -> SocketAddr {
        match self.try_wait_serving(stream, timeout).await {
            Some(l) => l,
            None => panic!(
                "cluster not serving {stream} within {timeout:?}; logs:\n{}",
                (0..self.nodes.len())
                    .map(|i| format!("--- node {i}\n{}\n", tail(&self.log(i), 40)))
                    .collect::<String>()
            ),
        }
    }

    /// [`Self::wait_serving`] that returns `None` after `timeout`.
    pub async fn try_wait_serving(&self, stream: &str, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut all_ready = true;
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if super::try_http_get(n.admin, "/readyz").await.map(|r| r.0) != Some(200) {
                    all_ready = false;
                }
            }
            if all_ready && let Some(l) = self.leader(stream).await {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client address of the node that says it leads `stream`, if any.
    pub async fn leader(&self, stream: &str) -> Option<SocketAddr> {
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some((200, body)) = super::try_http_get(n.admin, "/status.json").await else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            if v["raft"][stream]["is_leader"] == true {
                return Some(n.grpc);
            }
        }
        None
    }

    /// `(start_offset, end_offset, last applied index)` of `stream` as node `i` reports it.
    pub async fn stream_view(&self, i: usize, stream: &str) -> Option<(u64, u64, u64)> {
        let (_, body) = super::try_http_get(self.nodes[i].admin, "/status.json").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let s = v["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == stream)?
            .clone();
        Some((
            s["start_offset"].as_u64()?,
            s["end_offset"].as_u64()?,
            v["raft"][stream]["applied_index"].as_u64()?,
        ))
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A client of the broker at `addr` (connect errors are returned, not retried).
pub async fn client_at(addr: SocketAddr) -> Result<BrokerClient<Channel>, tonic::Status> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(BrokerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Produces one batch to whichever node leads `stream`: `Ok(first offset)` once acknowledged,
/// `Err` when no node acknowledged it within `timeout` (the batch may or may not be stored).
pub async fn produce_anywhere(
    cluster: &ProcCluster,
    stream: &str,
    records: Vec<Record>,
    timeout: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        for n in cluster.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut c) = client_at(n.grpc).await else {
                continue;
            };
            let req = ProduceRequest {
                stream: stream.into(),
                records: records.clone(),
                ..Default::default()
            };
            // The produce stream's answer is not covered by the channel's request timeout: a
            // leader that lost its followers mid-request must not hang the test.
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, super::produce(&mut c, vec![req])).await {
                Ok(Ok(r)) => return Ok(r[0].base_offset),
                Ok(Err(s)) => last_err = s.message().to_string(),
                Err(_) => last_err = format!("no answer from {} within {timeout:?}", n.grpc),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last_err)
}

/// Produces one batch of records keyed `keys`, each with value `value`, to whichever node leads
/// `stream`: the acknowledged `(offset, key)` pairs, or the error when no node acknowledged the
/// batch within `timeout` (it may or may not be stored).
pub async fn produce_keys(
    cluster: &ProcCluster,
    stream: &str,
    keys: Vec<String>,
    value: &str,
    timeout: Duration,
) -> Result<Vec<(u64, String)>, String> {
    let records = keys.iter().map(|k| super::rec(k, value)).collect();
    let base = produce_anywhere(cluster, stream, records, timeout).await?;
    Ok(keys
        .into_iter()
        .enumerate()
        .map(|(j, k)| (base + j as u64, k))
        .collect())
}
