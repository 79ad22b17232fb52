//! Supervised child processes and a local cluster of broker replicas, shared by local mode
//! ([`crate::local`]) and the benchmarks ([`crate::bench`]).
//!
//! [`BrokerCluster`] starts N `txpipe-broker` processes on loopback, each with its own data
//! directory and three free ports (client gRPC `--listen`, Raft `--peer-listen`, admin HTTP
//! `--admin-listen`), and reads their admin `/readyz` and `/status.json` to tell when the
//! cluster serves: every replica is ready and every stream has a leader. The `"raft"` object
//! of `/status.json` (per stream: term, leader id and address, whether this node leads) is
//! parsed by [`parse_raft`]; a broker without it is a single-node broker, whose only node
//! leads every stream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use txpipe_client::broker::v1::{GetStreamRequest, StreamInfo};
use txpipe_client::leader::{LeaderConfig, LeaderRouter};
use txpipe_client::streams;

use crate::procstat::{self, ProcSample};

/// CPU and memory of one role over the run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoleUsage {
    /// Role name ("broker-0", "worker-0", "producer").
    pub name: String,
    /// CPU seconds (user + system), summed over restarts.
    pub cpu_s: f64,
    /// Peak RSS of any incarnation, MiB.
    pub peak_rss_mib: f64,
    /// Times the process was (re)started.
    pub starts: u32,
}

/// A supervised child process: started, sampled (CPU, RSS), killed and restarted with the
/// same arguments; output appended to `<dir>/<role>.log`.
pub(crate) struct Proc {
    pub(crate) role: String,
    exe: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
    usage: RoleUsage,
    last: ProcSample,
    cpu_done: Duration,
}

impl Proc {
    pub(crate) fn new(role: &str, exe: PathBuf, args: Vec<String>, dir: &Path) -> Self {
        Self {
            role: role.to_string(),
            exe,
            args,
            log: dir.join(format!("{role}.log")),
            child: None,
            pid: 0,
            usage: RoleUsage {
                name: role.to_string(),
                ..Default::default()
            },
            last: ProcSample::default(),
            cpu_done: Duration::ZERO,
        }
    }

    /// Starts the process; returns its pid.
    pub(crate) fn start(&mut self) -> Result<u32> {
        let exe = self.exe.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.role, exe.display()))?;
        self.pid = child.id().unwrap_or(0);
        self.child = Some(child);
        self.usage.starts += 1;
        self.last = ProcSample::default();
        Ok(self.pid)
    }

    /// True while a started process has not been seen to exit.
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn sample(&mut self) {
        if self.child.is_some()
            && let Some(s) = procstat::sample(self.pid)
        {
            self.last = s;
            self.usage.peak_rss_mib = self
                .usage
                .peak_rss_mib
                .max(s.peak_rss_bytes as f64 / (1 << 20) as f64);
        }
    }

    /// Exit status if the process has exited.
    pub(crate) fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.retire();
        Some(st)
    }

    fn retire(&mut self) {
        self.cpu_done += self.last.cpu;
        self.last = ProcSample::default();
        self.child = None;
    }

    /// SIGKILL, and reap.
    pub(crate) async fn kill9(&mut self) {
        self.sample();
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
        self.retire();
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.sample();
        let pid = self.pid;
        let c = self.child.as_mut()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = match tokio::time::timeout(grace, c.wait()).await {
            Ok(Ok(st)) => Some(st),
            _ => {
                let _ = c.kill().await;
                None
            }
        };
        self.retire();
        st
    }

    /// CPU (over every incarnation so far), peak RSS and starts.
    pub(crate) fn finish_usage(&self) -> RoleUsage {
        let mut u = self.usage.clone();
        u.cpu_s = (self.cpu_done + self.last.cpu).as_secs_f64();
        u
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

/// A loopback port that was free a moment ago (bind to port 0, read it, release it).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// `GET path` over HTTP/1.0 from `addr` (`host:port`); returns the status code and body.
/// Errors when the connection fails, the answer is not HTTP, or `timeout` passes.
pub(crate) async fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        parse_http_response(&buf)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {timeout:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// Status code and body of a raw HTTP/1.x response (de-chunking a chunked body).
fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("truncated HTTP response ({} bytes)", raw.len());
    };
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    Ok((code, out))
}

/// One stream's Raft state as a node reports it in `/status.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamRaft {
    /// Current term.
    pub term: u64,
    /// Leader's node id, when this node knows one.
    pub leader_id: Option<u64>,
    /// Leader's client address `host:port`, when known.
    pub leader_addr: Option<String>,
    /// This node is the stream's leader.
    pub is_leader: bool,
    /// Highest log index known committed.
    pub commit_index: u64,
}

/// The `"raft"` object of a broker's `/status.json`: stream name to its Raft state; `None`
/// when the object is absent (a broker without replication).
pub fn parse_raft(status: &serde_json::Value) -> Option<BTreeMap<String, StreamRaft>> {
    let obj = status.get("raft")?.as_object()?;
    Some(
        obj.iter()
            .map(|(name, v)| {
                let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
                (
                    name.clone(),
                    StreamRaft {
                        term: u("term").unwrap_or(0),
                        leader_id: u("leader_id"),
                        leader_addr: v
                            .get("leader_addr")
                            .and_then(serde_json::Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string),
                        is_leader: v
                            .get("is_leader")
                            .and_then(serde_json::Value::as_bool)
                            .unwrap_or(false),
                        commit_index: u("commit_index").unwrap_or(0),
                    },
                )
            })
            .collect(),
    )
}

/// What one node says about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    /// `/readyz` answered 200.
    pub ready: bool,
    /// Parsed `"raft"` object; `None` without replication (or when unreachable).
    pub raft: Option<BTreeMap<String, StreamRaft>>,
}

impl NodeView {
    /// Ready, and (with replication) it knows a leader of every stream.
    pub fn knows_all_leaders(&self) -> bool {
        self.ready
            && self
                .raft
                .as_ref()
                .is_none_or(|r| !r.is_empty() && r.values().all(|s| s.leader_id.is_some()))
    }

    /// Streams this node leads (every stream for a ready broker without replication).
    pub fn leads(&self) -> Vec<String> {
        match &self.raft {
            Some(r) => r
                .iter()
                .filter(|(_, s)| s.is_leader)
                .map(|(n, _)| n.clone())
                .collect(),
            None if self.ready => vec!["all streams (single node)".to_string()],
            None => Vec::new(),
        }
    }
}

/// One broker replica of a [`BrokerCluster`].
pub(crate) struct BrokerNode {
    /// The process (role `broker-<i>`).
    pub proc: Proc,
    /// Client gRPC address `127.0.0.1:port`.
    pub client_addr: String,
    /// Admin HTTP address `127.0.0.1:port`.
    pub admin_addr: String,
}

/// N local broker replicas on loopback, started as `txpipe-broker --node-id i --peers
/// <all peer addresses> --client-addrs <all client addresses> ...` with data directories
/// `<dir>/broker-<i>` and logs `<dir>/broker-<i>.log`.
pub(crate) struct BrokerCluster {
    pub nodes: Vec<BrokerNode>,
    router: LeaderRouter,
}

impl BrokerCluster {
    /// Lays out `n` replicas (ports picked now, nothing started). `extra` is appended to
    /// every broker's arguments.
    pub fn new(exe: &Path, n: usize, dir: &Path, extra: &[String]) -> Result<Self> {
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let clients: Vec<String> = ports
            .iter()
            .map(|(c, _, _)| format!("127.0.0.1:{c}"))
            .collect();
        let peers: Vec<String> = ports
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p, a))| {
                let mut args = vec![
                    format!("--listen=127.0.0.1:{c}"),
                    format!("--peer-listen=127.0.0.1:{p}"),
                    format!("--admin-listen=127.0.0.1:{a}"),
                    format!("--data-dir={}", dir.join(format!("broker-{i}")).display()),
                    format!("--node-id={i}"),
                    format!("--peers={}", peers.join(",")),
                    format!("--client-addrs={}", clients.join(",")),
                ];
                args.extend(extra.iter().cloned());
                BrokerNode {
                    proc: Proc::new(&format!("broker-{i}"), exe.to_path_buf(), args, dir),
                    client_addr: clients[i].clone(),
                    admin_addr: format!("127.0.0.1:{a}"),
                }
            })
            .collect();
        let router = LeaderRouter::with_config(
            clients.clone(),
            LeaderConfig {
                call_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_millis(500),
                ..LeaderConfig::default()
            },
        )?;
        Ok(Self { nodes, router })
    }

    /// Client addresses, comma-separated (what producer, workers and audit take).
    pub fn client_list(&self) -> String {
        self.client_addrs().join(",")
    }

    /// Client addresses `127.0.0.1:port`, in ordinal order.
    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// Starts every replica at once.
    pub fn start_all(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.proc.start()?;
        }
        Ok(())
    }

    /// Samples CPU and RSS of every running replica.
    pub fn sample(&mut self) {
        for n in &mut self.nodes {
            n.proc.sample();
        }
    }

    /// `/readyz` and `/status.json` of node `i`; a default (not ready) view when unreachable.
    pub async fn view(&self, i: usize) -> NodeView {
        let addr = &self.nodes[i].admin_addr;
        let t = Duration::from_millis(500);
        let ready = matches!(http_get(addr, "/readyz", t).await, Ok((200, _)));
        if !ready {
            return NodeView::default();
        }
        let raft = match http_get(addr, "/status.json", t).await {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| parse_raft(&v)),
            _ => None,
        };
        NodeView { ready, raft }
    }

    /// Views of every running node (`None` for a node that is down).
    pub async fn views(&self) -> Vec<Option<NodeView>> {
        let futs = self.nodes.iter().enumerate().map(|(i, n)| async move {
            if n.proc.running() {
                Some(self.view(i).await)
            } else {
                None
            }
        });
        futures::future::join_all(futs).await
    }

    /// The node that leads `stream` and its term: the running node that says it is the
    /// leader, with the highest term; without replication (one node, no `"raft"` object),
    /// node 0 once ready. `None` while no node claims it (an election is under way).
    pub async fn leader_of(&self, stream: &str) -> Option<(usize, u64)> {
        leader_in(&self.views().await, stream)
    }

    /// Waits until node `i` is ready and knows a leader of every stream, or `deadline`
    /// passes. Errors when the process exits meanwhile.
    pub async fn wait_node(&mut self, i: usize, deadline: Duration) -> Result<()> {
        let began = Instant::now();
        loop {
            self.check_alive(i)?;
            if self.view(i).await.knows_all_leaders() {
                return Ok(());
            }
            if began.elapsed() > deadline {
                bail!(
                    "{} not ready after {deadline:?}; last log lines:\n{}",
                    self.nodes[i].proc.role,
                    self.nodes[i].proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_alive(&mut self, i: usize) -> Result<()> {
        let p = &mut self.nodes[i].proc;
        if let Some(st) = p.try_exited() {
            bail!(
                "{} exited during start-up ({st}); last log lines:\n{}",
                p.role,
                p.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until every replica's `/readyz` is 200, every stream has a leader that every
    /// replica knows (skipped without replication), and the leader of `transactions` answers
    /// GetStream; or `deadline` passes. Errors when a replica exits meanwhile.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let began = Instant::now();
        for i in 0..self.nodes.len() {
            let left = deadline.saturating_sub(began.elapsed());
            self.wait_node(i, left).await?;
        }
        loop {
            for i in 0..self.nodes.len() {
                self.check_alive(i)?;
            }
            let views = self.views().await;
            let replicated = views.iter().flatten().any(|v| v.raft.is_some());
            let leaders_ok = !replicated || every_stream_led(&views);
            if leaders_ok
                && views
                    .iter()
                    .all(|v| v.as_ref().is_some_and(NodeView::knows_all_leaders))
                && self
                    .stream_info(streams::TRANSACTIONS, Duration::from_secs(2))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if began.elapsed() > deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("-- {}:\n{}", n.proc.role, n.proc.log_tail(15)))
                    .collect();
                bail!(
                    "brokers have no leader for every stream after {deadline:?}; last log lines:\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GetStream of `stream` on its leader (following leader hints), within `deadline`.
    pub async fn stream_info(&self, stream: &str, deadline: Duration) -> Result<StreamInfo> {
        let s = stream.to_string();
        self.router
            .call(stream, deadline, move |mut c| {
                let s = s.clone();
                async move { c.get_stream(GetStreamRequest { stream: s }).await }
            })
            .await
            .with_context(|| format!("reading statistics of stream {stream}"))?
            .stream
            .with_context(|| format!("broker returned no statistics for {stream}"))
    }

    /// Stops every replica (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop_all(&mut self, grace: Duration) {
        let futs = self.nodes.iter_mut().map(|n| n.proc.stop(grace));
        futures::future::join_all(futs).await;
    }
}

/// Whether every stream of the pipeline (transactions, decisions, labels, the dead-letter
/// stream) has a leader among `views`.
pub(crate) fn every_stream_led(views: &[Option<NodeView>]) -> bool {
    [
        streams::TRANSACTIONS,
        streams::DECISIONS,
        streams::LABELS,
        streams::TRANSACTIONS_DLQ,
    ]
    .iter()
    .all(|s| leader_in(views, s).is_some())
}

/// The leader of `stream` among `views` (see [`BrokerCluster::leader_of`]).
pub(crate) fn leader_in(views: &[Option<NodeView>], stream: &str) -> Option<(usize, u64)> {
    let mut best: Option<(usize, u64)> = None;
    for (i, v) in views.iter().enumerate() {
        let Some(v) = v else { continue };
        match &v.raft {
            Some(r) => {
                if let Some(s) = r.get(stream)
                    && s.is_leader
                    && best.is_none_or(|(_, t)| s.term > t)
                {
                    best = Some((i, s.term));
                }
            }
            None if v.ready && views.len() == 1 => best = Some((i, 0)),
            None => {}
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_http_response(plain).unwrap(), (200, "ok".into()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).unwrap(), (503, "abcde".into()));
        assert!(parse_http_response(b"garbage").is_err());
    }

    fn view(raft: serde_json::Value) -> Option<NodeView> {
        Some(NodeView {
            ready: true,
            raft: parse_raft(&serde_json::json!({ "raft": raft })),
        })
    }

    #[test]
    fn the_leader_is_the_node_that_claims_it_with_the_highest_term() {
        let f = |term: u64, leader: Option<u64>, is_leader: bool| {
            serde_json::json!({"transactions": {"term": term, "leader_id": leader,
                "leader_addr": "127.0.0.1:1", "is_leader": is_leader, "commit_index": 5,
                "applied_index": 5, "voters": [0, 1, 2], "learners": []}})
        };
        // Node 0 is a deposed leader of term 3 that has not heard of term 4 yet.
        let views = vec![
            view(f(3, Some(0), true)),
            view(f(4, Some(2), false)),
            view(f(4, Some(2), true)),
        ];
        assert_eq!(leader_in(&views, "transactions"), Some((2, 4)));
        assert_eq!(leader_in(&views, "decisions"), None);
        assert!(views[1].as_ref().unwrap().knows_all_leaders());
        assert_eq!(views[2].as_ref().unwrap().leads(), vec!["transactions"]);
        // During an election nobody leads and a follower knows no leader.
        let electing = vec![view(f(5, None, false)), None, view(f(5, None, false))];
        assert_eq!(leader_in(&electing, "transactions"), None);
        assert!(!electing[0].as_ref().unwrap().knows_all_leaders());
        // A single broker without replication leads everything once ready.
        let single = vec![Some(NodeView {
            ready: true,
            raft: None,
        })];
        assert_eq!(leader_in(&single, "transactions"), Some((0, 0)));
        assert!(single[0].as_ref().unwrap().knows_all_leaders());
    }
}
