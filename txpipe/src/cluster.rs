//! A local cluster of broker replicas, shared by local mode ([`crate::local`]) and the
//! benchmarks ([`crate::bench`]).
//!
//! [`BrokerCluster`] starts N `txpipe-broker` processes on loopback (each a supervised
//! [`Proc`] with its own data directory and three free ports: client gRPC `--listen`, Raft
//! `--peer-listen`, admin HTTP `--admin-listen`), and reads their admin `/readyz` and
//! `/status.json` (with `reqwest`, into the typed [`BrokerStatus`] the broker writes) to tell
//! when the cluster serves: every replica is ready and every stream has a leader. The leader
//! of a stream is the running replica that says it leads, with the highest term.
//!
//! A cluster is plaintext until [`BrokerCluster::use_tls`] gives it a run's certificates
//! ([`crate::certs`]): every replica then serves mutual TLS on its client and peer ports, and
//! the cluster's own calls (GetStream, and the admin probes when [`ADMIN_HTTPS`] says the
//! admin port speaks HTTPS) go out with the run's reader certificate, trusting the run's CA.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use txpipe_client::broker::v1::{GetStreamRequest, StreamInfo};
use txpipe_client::leader::{LeaderConfig, LeaderRouter};
use txpipe_client::status::BrokerStatus;
use txpipe_client::streams;
use txpipe_client::tls::TlsOptions;

use crate::certs::{RunCerts, tls_flags};
use crate::supervisor::{Proc, free_port};

/// Timeout of one admin HTTP request (`/readyz`, `/status.json`).
const ADMIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a broker with TLS on serves its admin port (`/readyz`, `/status.json`) over HTTPS:
/// it does (broker/src/admin.rs; read-only endpoints open to any client that trusts the CA),
/// so the probes of a TLS cluster use `https://` with the run's CA and reader certificate.
/// `false` would probe plain HTTP (brokers of versions before the admin split).
pub(crate) const ADMIN_HTTPS: bool = true;

/// What one node says about itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeView {
    /// `/readyz` answered 200.
    pub ready: bool,
    /// Its `/status.json`; `None` when unreachable or not ready.
    pub status: Option<BrokerStatus>,
}

impl NodeView {
    /// Ready, and it knows a leader of every stream.
    pub fn knows_all_leaders(&self) -> bool {
        self.ready
            && self
                .status
                .as_ref()
                .is_some_and(BrokerStatus::knows_all_leaders)
    }

    /// Streams this node leads.
    pub fn leads(&self) -> Vec<String> {
        self.status
            .as_ref()
            .map(BrokerStatus::leads)
            .unwrap_or_default()
    }
}
/// One broker replica of a [`BrokerCluster`].
pub(crate) struct BrokerNode {
    /// The process (role `broker-<i>`).
    pub proc: Proc,
    /// Client gRPC address `host:port` (`127.0.0.1` on loopback).
    pub client_addr: String,
    /// Raft peer address `host:port`.
    pub peer_addr: String,
    /// Admin HTTP address `host:port`.
    pub admin_addr: String,
}

/// Where one replica listens (and in which network namespace it runs, if any).
struct NodeAddrs {
    client: String,
    peer: String,
    admin: String,
    netns: Option<String>,
}

/// N local broker replicas on loopback, started as `txpipe-broker --node-id i --peers
/// <all peer addresses> --client-addrs <all client addresses> ...` with data directories
/// `<dir>/broker-<i>` and logs `<dir>/broker-<i>.log`.
pub(crate) struct BrokerCluster {
    pub nodes: Vec<BrokerNode>,
    router: LeaderRouter,
    /// The admin probes' client and URL scheme (`http` or `https`).
    http: (reqwest::Client, &'static str),
    /// The reader's TLS files when the cluster runs mutual TLS.
    tls: Option<TlsOptions>,
}

impl BrokerCluster {
    /// Lays out `n` replicas (ports picked now, nothing started). `extra` is appended to
    /// every broker's arguments.
    pub fn new(exe: &Path, n: usize, dir: &Path, extra: &[String]) -> Result<Self> {
        let mut layout = Vec::with_capacity(n);
        for _ in 0..n {
            let (c, p, a) = (free_port()?, free_port()?, free_port()?);
            layout.push(NodeAddrs {
                client: format!("127.0.0.1:{c}"),
                peer: format!("127.0.0.1:{p}"),
                admin: format!("127.0.0.1:{a}"),
                netns: None,
            });
        }
        Self::with_layout(exe, &layout, dir, extra)
    }

    /// Lays out one replica in each network namespace of `net` (`ip netns exec <ns>
    /// txpipe-broker ...`), listening on the namespace's address with the fixed ports
    /// `client_port`, `peer_port` and `admin_port`; nothing started. The caller (in the root
    /// namespace) reaches them over the nemesis bridge, and [`crate::nemesis::net::Net::cut`]
    /// can cut the links between them. Needs root.
    pub fn in_namespaces(
        exe: &Path,
        net: &crate::nemesis::net::Net,
        n: usize,
        (client_port, peer_port, admin_port): (u16, u16, u16),
        dir: &Path,
        extra: &[String],
    ) -> Result<Self> {
        let layout: Vec<NodeAddrs> = (0..n)
            .map(|i| NodeAddrs {
                client: format!("{}:{client_port}", net.addr(i)),
                peer: format!("{}:{peer_port}", net.addr(i)),
                admin: format!("{}:{admin_port}", net.addr(i)),
                netns: Some(net.netns(i)),
            })
            .collect();
        Self::with_layout(exe, &layout, dir, extra)
    }

    fn with_layout(exe: &Path, layout: &[NodeAddrs], dir: &Path, extra: &[String]) -> Result<Self> {
        let clients: Vec<String> = layout.iter().map(|l| l.client.clone()).collect();
        let peers: Vec<String> = layout.iter().map(|l| l.peer.clone()).collect();
        let nodes = layout
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut args = vec![
                    format!("--listen={}", l.client),
                    format!("--peer-listen={}", l.peer),
                    format!("--admin-listen={}", l.admin),
                    format!("--data-dir={}", dir.join(format!("broker-{i}")).display()),
                    format!("--node-id={i}"),
                    format!("--peers={}", peers.join(",")),
                    format!("--client-addrs={}", clients.join(",")),
                ];
                args.extend(extra.iter().cloned());
                // `ip netns exec` execs the broker in place, so the pid is the broker's own and
                // signals (kill, SIGSTOP) reach it.
                let (program, args) = match &l.netns {
                    Some(ns) => {
                        let mut a = vec![
                            "netns".to_string(),
                            "exec".to_string(),
                            ns.clone(),
                            exe.display().to_string(),
                        ];
                        a.extend(args);
                        (std::path::PathBuf::from("ip"), a)
                    }
                    None => (exe.to_path_buf(), args),
                };
                BrokerNode {
                    proc: Proc::new(&format!("broker-{i}"), program, args, dir),
                    client_addr: l.client.clone(),
                    peer_addr: l.peer.clone(),
                    admin_addr: l.admin.clone(),
                }
            })
            .collect();
        Ok(Self {
            nodes,
            router: router(clients, None)?,
            http: admin_client(None, false)?,
            tls: None,
        })
    }

    /// Turns on mutual TLS before the replicas start: replica `i` serves `certs`'s
    /// `broker-<i>` certificate (and dials its peers with it), and the cluster's own calls
    /// present the reader certificate. Errors: the reader's files cannot be read.
    pub fn use_tls(&mut self, certs: &RunCerts) -> Result<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.proc.push_args(tls_flags(&certs.broker(i)));
        }
        let reader = certs.reader();
        self.router = router(self.client_addrs(), Some(&reader))?;
        self.http = admin_client(Some(&reader), ADMIN_HTTPS)?;
        self.tls = Some(reader);
        Ok(())
    }

    /// The TLS files of the cluster's own calls (the reader's), when it runs mutual TLS:
    /// what the audit presents.
    pub fn client_tls(&self) -> Option<&TlsOptions> {
        self.tls.as_ref()
    }

    /// The hosts each replica is dialled by (of its client, peer and admin addresses), for
    /// its certificate's names.
    pub fn broker_hosts(&self) -> Vec<Vec<String>> {
        let host = |a: &str| a.rsplit_once(':').map_or(a, |(h, _)| h).to_string();
        self.nodes
            .iter()
            .map(|n| {
                let mut h: Vec<String> = [&n.client_addr, &n.peer_addr, &n.admin_addr]
                    .iter()
                    .map(|a| host(a))
                    .collect();
                h.dedup();
                h
            })
            .collect()
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

    /// `GET http(s)://<admin address of node i><path>` within [`ADMIN_TIMEOUT`]; the
    /// response when it is a 2xx, `None` when the node is unreachable or answers otherwise.
    async fn admin_get(&self, i: usize, path: &str) -> Option<reqwest::Response> {
        let (client, scheme) = &self.http;
        let url = format!("{scheme}://{}{path}", self.nodes[i].admin_addr);
        let resp = client.get(url).send().await.ok()?;
        resp.status().is_success().then_some(resp)
    }

    /// `/status.json` of node `i`; `None` when unreachable or not a status.
    pub async fn status(&self, i: usize) -> Option<BrokerStatus> {
        self.admin_get(i, "/status.json").await?.json().await.ok()
    }

    /// `/readyz` and `/status.json` of node `i`; a default (not ready) view when unreachable.
    pub async fn view(&self, i: usize) -> NodeView {
        if self.admin_get(i, "/readyz").await.is_none() {
            return NodeView::default();
        }
        NodeView {
            ready: true,
            status: self.status(i).await,
        }
    }

    /// Views of every running node (`None` for a node that is down).
    pub async fn views(&self) -> Vec<Option<NodeView>> {
        self.views_except(None).await
    }

    /// [`Self::views`] without asking node `skip` (`None` in its place): a paused or cut-off
    /// node answers nothing, and waiting for its admin timeout would slow every poll.
    pub async fn views_except(&self, skip: Option<usize>) -> Vec<Option<NodeView>> {
        let futs = self.nodes.iter().enumerate().map(|(i, n)| async move {
            if n.proc.running() && Some(i) != skip {
                Some(self.view(i).await)
            } else {
                None
            }
        });
        futures::future::join_all(futs).await
    }

    /// The node that leads `stream` and its term: the running node that says it is the
    /// leader, with the highest term. `None` while no node claims it (an election is under
    /// way).
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
            if every_stream_led(&views)
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

/// The leader router of the cluster's own GetStream calls (short timeouts: it is polled).
fn router(clients: Vec<String>, tls: Option<&TlsOptions>) -> Result<LeaderRouter> {
    Ok(LeaderRouter::with_config(
        clients,
        LeaderConfig {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            tls: tls.cloned(),
            ..LeaderConfig::default()
        },
    )?)
}

/// The admin probes' HTTP client and scheme: `https` trusting only `tls`'s CA and presenting
/// its certificate when `https` and `tls` are given, else plain `http`.
/// Errors: the files cannot be read or are not PEM.
fn admin_client(tls: Option<&TlsOptions>, https: bool) -> Result<(reqwest::Client, &'static str)> {
    let builder = reqwest::Client::builder().timeout(ADMIN_TIMEOUT);
    let (builder, scheme) = match tls {
        Some(tls) if https => {
            let read =
                |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let ca = reqwest::Certificate::from_pem(&read(&tls.ca)?).context("the CA bundle")?;
            let mut pem = read(&tls.cert)?;
            pem.extend(read(&tls.key)?);
            let id = reqwest::Identity::from_pem(&pem).context("the admin probes' certificate")?;
            let b = builder
                .use_rustls_tls()
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca)
                .identity(id);
            (b, "https")
        }
        _ => (builder, "http"),
    };
    let client = builder.build().context("building the admin HTTP client")?;
    Ok((client, scheme))
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
        if let Some(s) = v
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .and_then(|st| st.raft.get(stream))
            && s.is_leader
            && best.is_none_or(|(_, t)| s.term > t)
        {
            best = Some((i, s.term));
        }
    }
    best
}

/// Every stream's (leader node, term) in `views`.
pub(crate) fn leaders(views: &[Option<NodeView>]) -> BTreeMap<String, (usize, u64)> {
    let names: std::collections::BTreeSet<String> = views
        .iter()
        .flatten()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|s| s.raft.keys().cloned())
        .collect();
    names
        .into_iter()
        .filter_map(|s| leader_in(views, &s).map(|l| (s, l)))
        .collect()
}

/// Among nodes `0..n` other than `leader` (the leader of `transactions`, if any), one that
/// leads the fewest streams of `leaders`, so that a follower fault hits as few leaders as it
/// can; ties are broken in turn by `k`, so successive faults spread over the replicas. Used by
/// `txpipe bench failover` and the nemesis.
pub(crate) fn pick_follower(
    leaders: &BTreeMap<String, (usize, u64)>,
    n: usize,
    leader: Option<usize>,
    k: u64,
) -> usize {
    let led = |i: usize| leaders.values().filter(|(l, _)| *l == i).count();
    let candidates: Vec<usize> = (0..n).filter(|&i| Some(i) != leader).collect();
    let fewest = candidates.iter().map(|&i| led(i)).min().unwrap_or(0);
    let best: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| led(i) == fewest)
        .collect();
    best[(k % best.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use txpipe_client::status::RaftStatus;

    use super::*;

    fn led(pairs: &[(&str, usize)]) -> BTreeMap<String, (usize, u64)> {
        pairs
            .iter()
            .map(|(s, l)| (s.to_string(), (*l, 3)))
            .collect()
    }

    #[test]
    fn the_follower_picked_leads_the_fewest_streams() {
        let l = led(&[
            ("transactions", 0),
            ("decisions", 1),
            ("labels", 1),
            ("transactions-dlq", 2),
        ]);
        for k in 0..4 {
            assert_eq!(pick_follower(&l, 3, Some(0), k), 2);
        }
    }

    #[test]
    fn ties_between_followers_are_taken_in_turn() {
        let l = led(&[("transactions", 0), ("decisions", 0)]);
        assert_eq!(pick_follower(&l, 3, Some(0), 0), 1);
        assert_eq!(pick_follower(&l, 3, Some(0), 1), 2);
        assert_eq!(pick_follower(&l, 3, Some(0), 2), 1);
    }

    /// A ready node whose `transactions` group is in `term`, led by `leader`.
    fn view(term: u64, leader: Option<u64>, is_leader: bool) -> Option<NodeView> {
        let mut status = BrokerStatus {
            ready: true,
            ..BrokerStatus::default()
        };
        status.raft.insert(
            "transactions".into(),
            RaftStatus {
                term,
                leader_id: leader,
                is_leader,
                voters: [0, 1, 2].into(),
                ..RaftStatus::default()
            },
        );
        Some(NodeView {
            ready: true,
            status: Some(status),
        })
    }

    #[test]
    fn the_leader_is_the_node_that_claims_it_with_the_highest_term() {
        // Node 0 is a deposed leader of term 3 that has not heard of term 4 yet.
        let views = vec![
            view(3, Some(0), true),
            view(4, Some(2), false),
            view(4, Some(2), true),
        ];
        assert_eq!(leader_in(&views, "transactions"), Some((2, 4)));
        assert_eq!(leader_in(&views, "decisions"), None);
        assert!(views[1].as_ref().unwrap().knows_all_leaders());
        assert_eq!(views[2].as_ref().unwrap().leads(), vec!["transactions"]);
        // During an election nobody leads and a follower knows no leader.
        let electing = vec![view(5, None, false), None, view(5, None, false)];
        assert_eq!(leader_in(&electing, "transactions"), None);
        assert!(!electing[0].as_ref().unwrap().knows_all_leaders());
        // A ready node whose status could not be read knows nothing.
        let unread = NodeView {
            ready: true,
            status: None,
        };
        assert!(!unread.knows_all_leaders());
        assert_eq!(leader_in(&[Some(unread)], "transactions"), None);
    }

    /// Serves a canned admin port on loopback (over TLS with `tls`, a rustls server config):
    /// `/readyz` answers "ready", anything else a status in which node 0 leads
    /// `transactions`. Returns its address.
    async fn canned_admin(tls: Option<Arc<rustls::ServerConfig>>) -> String {
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
        async fn answer(mut s: impl AsyncRead + AsyncWrite + Unpin) {
            let body = r#"{"node_id": 0, "ready": true, "raft": {"transactions":
                {"term": 2, "leader_id": 0, "is_leader": true}}, "streams": []}"#;
            let mut req = [0u8; 1024];
            let Ok(n) = s.read(&mut req).await else {
                return;
            };
            let head = String::from_utf8_lossy(&req[..n]).to_string();
            let payload = if head.starts_with("GET /readyz") {
                "ready\n"
            } else {
                body
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
                payload.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                match &tls {
                    Some(cfg) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        if let Ok(s) = acceptor.accept(s).await {
                            answer(s).await;
                        }
                    }
                    None => answer(s).await,
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_node_view_is_read_over_http_and_an_unreachable_node_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster =
            BrokerCluster::new(Path::new("/nonexistent"), 2, dir.path(), &[]).unwrap();
        cluster.nodes[0].admin_addr = canned_admin(None).await;
        let v = cluster.view(0).await;
        assert!(v.knows_all_leaders(), "{v:?}");
        assert_eq!(v.leads(), vec!["transactions"]);
        assert_eq!(cluster.status(0).await.unwrap().known_node_id(), Some(0));
        // Node 1's admin port has nothing listening.
        let down = cluster.view(1).await;
        assert!(!down.ready && down.status.is_none());
    }

    #[tokio::test]
    async fn admin_probes_over_https_trust_the_run_ca_only() {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let hosts = [vec!["127.0.0.1".to_string()]];
        let certs = RunCerts::issue(&dir.path().join("tls"), &hosts, 0).unwrap();
        let b = certs.broker(0);
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&b.cert).unwrap()],
            PrivateKeyDer::from_pem_file(&b.key).unwrap(),
        )
        .unwrap();
        let admin = canned_admin(Some(Arc::new(server))).await;
        let mut cluster =
            BrokerCluster::new(Path::new("/nonexistent"), 1, dir.path(), &[]).unwrap();
        cluster.nodes[0].admin_addr = admin;
        // What `use_tls` sets up when the admin port speaks HTTPS.
        cluster.http = admin_client(Some(&certs.reader()), true).unwrap();
        assert_eq!(cluster.http.1, "https");
        assert!(cluster.view(0).await.knows_all_leaders());
        // Plain HTTP gets no answer from a TLS port.
        cluster.http = admin_client(Some(&certs.reader()), false).unwrap();
        assert!(!cluster.view(0).await.ready);
        // Trusting another run's CA: the broker's certificate is refused.
        let other = RunCerts::issue(&dir.path().join("other"), &hosts, 0).unwrap();
        cluster.http = admin_client(Some(&other.reader()), true).unwrap();
        assert!(!cluster.view(0).await.ready);
    }
}
