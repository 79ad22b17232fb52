//! The Raft peer transport end to end: real openraft nodes talking through `RaftPeer` gRPC
//! servers on 127.0.0.1 (port 0), over an in-memory log store and state machine defined here.
//!
//! Covered: election and replication across 3 nodes, failover after the leader stops, the
//! envelope checks (wrong node id, wrong cluster id, unknown group, undecodable payload), the
//! client's error mapping (unreachable, timeout, remote error), `Status` / `Join` helpers, and
//! install-snapshot over the network to a fresh learner after the leader purged its log (in
//! several chunks).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::async_runtime::watch::WatchReceiver as _;
use openraft::error::{ClientWriteError, RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Config, EntryPayload, LogState, RaftLogReader, RaftNetworkFactory, RaftNetworkV2,
    RaftSnapshotBuilder, ServerState, SnapshotPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use txpipe_broker::command::Command;
use txpipe_broker::raft::network::{self, Channels, NetworkFactory};
use txpipe_broker::raft::peer::{
    self, GroupStatus, JoinReply, JoinRequest, PeerHandler, RaftRequest, StatusReply,
};
use txpipe_broker::raft::{
    EntryData, EntryResponse, LogId, Node, NodeId, RaftEntry, Snapshot, SnapshotMeta,
    StoredMembership, TypeConfig, Vote, has_quorum_lease,
};

/// A Raft node of the test group (over the in-memory state machine below).
type Raft = openraft::Raft<TypeConfig, MemSm>;

const GROUP: &str = "transactions";
const CLUSTER: &str = "cluster-a";
/// Upper bound of every wait on a condition.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// In-memory log storage.

#[derive(Default)]
struct LogInner {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, RaftEntry>,
}

#[derive(Clone, Default)]
struct MemLog(Arc<Mutex<LogInner>>);

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::io::Result<Vec<RaftEntry>> {
        let inner = self.0.lock().unwrap();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> std::io::Result<Option<Vote>> {
        Ok(self.0.lock().unwrap().vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> std::io::Result<LogState<TypeConfig>> {
        let inner = self.0.lock().unwrap();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::io::Result<()> {
        self.0.lock().unwrap().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> std::io::Result<()> {
        self.0.lock().unwrap().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::io::Result<Option<LogId>> {
        Ok(self.0.lock().unwrap().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> std::io::Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + Send,
        I::IntoIter: Send,
    {
        {
            let mut inner = self.0.lock().unwrap();
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        // In memory: "durable" as soon as stored.
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> std::io::Result<()> {
        let from = last.map_or(0, |l| l.index + 1);
        self.0.lock().unwrap().entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        let mut inner = self.0.lock().unwrap();
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory state machine: records the `start_offset` of every applied `Trim`.

#[derive(Clone, Default, Serialize, Deserialize)]
struct SmData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    trims: Vec<u64>,
}

#[derive(Default)]
struct SmInner {
    data: SmData,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

#[derive(Clone, Default)]
struct MemSm(Arc<Mutex<SmInner>>);

/// An anonymous temporary file holding `bytes`, positioned at its start (snapshot data is a
/// `tokio::fs::File` in the broker's type configuration).
fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().expect("temp file");
    f.write_all(bytes).expect("write temp file");
    f.seek(std::io::SeekFrom::Start(0))
        .expect("rewind temp file");
    File::from_std(f)
}

impl MemSm {
    fn trims(&self) -> Vec<u64> {
        self.0.lock().unwrap().data.trims.clone()
    }

    fn snapshots_installed(&self) -> u64 {
        self.0.lock().unwrap().snapshots_installed
    }

    fn snapshot_len(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .snapshot
            .as_ref()
            .map_or(0, |(_, b)| b.len())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> std::io::Result<Snapshot> {
        let mut inner = self.0.lock().unwrap();
        let bytes = serde_json::to_vec(&inner.data).expect("state serialises");
        inner.snapshots_built += 1;
        let last = inner.data.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.data.membership.clone(),
        };
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: file_with(&bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotData = File;
    type SnapshotBuilder = MemSm;

    async fn applied_state(&mut self) -> std::io::Result<(Option<LogId>, StoredMembership)> {
        let inner = self.0.lock().unwrap();
        Ok((inner.data.last_applied, inner.data.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> std::io::Result<()>
    where
        S: Stream<Item = std::io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (e, responder) = item?;
            let mut inner = self.0.lock().unwrap();
            inner.data.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(d) => {
                    for c in d.cmds {
                        if let Command::Trim { start_offset } = c {
                            inner.data.trims.push(start_offset);
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    inner.data.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            drop(inner);
            if let Some(r) = responder {
                r.send(EntryResponse::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> MemSm {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: File,
    ) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        snapshot
            .seek(SeekFrom::Start(0))
            .await
            .expect("seek snapshot");
        snapshot
            .read_to_end(&mut bytes)
            .await
            .expect("read snapshot");
        let mut data: SmData = serde_json::from_slice(&bytes).expect("snapshot decodes");
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        let mut inner = self.0.lock().unwrap();
        inner.data = data;
        inner.snapshot = Some((meta.clone(), bytes));
        inner.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> std::io::Result<Option<Snapshot>> {
        let inner = self.0.lock().unwrap();
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: file_with(bytes),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// A test node: one Raft group behind its own RaftPeer server.

struct TestHandler {
    id: NodeId,
    /// Shared with the node's network factory: [`TestNode::isolate`] changes both, so the
    /// node's peers refuse its requests and it refuses theirs (the cluster id check).
    cluster_id: Arc<RwLock<String>>,
    groups: RwLock<HashMap<String, Raft>>,
    snapshot_dir: tempfile::TempDir,
}

impl PeerHandler for TestHandler {
    type Sm = MemSm;

    fn node_id(&self) -> NodeId {
        self.id
    }

    fn cluster_id(&self) -> String {
        self.cluster_id.read().unwrap().clone()
    }

    fn group(&self, name: &str) -> Option<Raft> {
        self.groups.read().unwrap().get(name).cloned()
    }

    fn snapshot_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        (name == GROUP).then(|| self.snapshot_dir.path().to_path_buf())
    }

    async fn status(&self) -> StatusReply {
        let groups = self.groups.read().unwrap().clone();
        let mut out = Vec::new();
        for (name, raft) in groups {
            let m = raft.metrics().borrow_watched().clone();
            let mem = m.membership_config.membership();
            out.push(GroupStatus {
                name,
                initialized: m.membership_config.log_id().is_some(),
                leader_id: m.current_leader.unwrap_or(0),
                has_leader: m.current_leader.is_some(),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                voters: mem.voter_ids().collect(),
                learners: mem.learner_ids().collect(),
            });
        }
        StatusReply {
            node_id: self.id,
            cluster_id: self.cluster_id(),
            groups: out,
            saw_ordinal_zero_fresh: false,
        }
    }

    async fn join(&self, req: JoinRequest) -> Result<JoinReply, tonic::Status> {
        if req.node_id == self.id {
            return Err(tonic::Status::invalid_argument("a node cannot join itself"));
        }
        Ok(JoinReply {
            accepted: true,
            message: format!("node {} at {} noted", req.node_id, req.peer_addr),
        })
    }
}

struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    raft: Raft,
    sm: MemSm,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestNode {
    fn node(&self) -> Node {
        Node {
            addr: format!("client-{}:1", self.id),
            peer_addr: self.addr.to_string(),
        }
    }

    /// Cuts the node off from its peers in both directions: its requests carry another cluster
    /// id (its peers refuse them) and it refuses theirs. The process keeps running, as a paused
    /// or partitioned replica does.
    fn isolate(&self) {
        *self.handler.cluster_id.write().unwrap() = format!("isolated-{}", self.id);
    }

    /// Undoes [`Self::isolate`].
    fn heal(&self) {
        *self.handler.cluster_id.write().unwrap() = CLUSTER.to_string();
    }

    /// `(term, leader, state)` of the node now.
    fn view(&self) -> (u64, Option<NodeId>, ServerState) {
        let m = self.raft.metrics().borrow_watched().clone();
        (m.current_term, m.current_leader, m.state)
    }

    /// Stops the Raft node, then its server (graceful: open peer connections are closed).
    async fn stop(&mut self) {
        self.raft.shutdown().await.expect("raft shuts down");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server)
                .await
                .expect("peer server stops in time")
                .expect("server task")
                .expect("server ends cleanly");
        }
    }
}

/// Election timeout bounds of the test nodes, ms.
const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;

fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "raft-network-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        // As the broker configures it (`txpipe_broker::broker::raft_config`).
        enable_pre_vote: Some(true),
        quorum_loss_probe_interval: Some(txpipe_broker::broker::quorum_loss_probe_ms(
            ELECTION_MAX_MS,
        )),
        // Snapshots only on request; small chunks so that a snapshot takes several RPCs.
        snapshot_policy: SnapshotPolicy::Never,
        snapshot_max_chunk_size: 64,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        install_snapshot_timeout: 1000,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

async fn start_node(id: NodeId, cluster_id: &str) -> TestNode {
    start_node_at(id, cluster_id, "127.0.0.1:0").await
}

/// Starts node `id` with its peer server listening on `bind` (`host:port`).
async fn start_node_at(id: NodeId, cluster_id: &str, bind: &str) -> TestNode {
    let listener = TcpListener::bind(bind).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let channels = Arc::new(Channels::new(Duration::from_millis(500)));
    let cluster = Arc::new(RwLock::new(cluster_id.to_string()));
    let factory = NetworkFactory::new(
        GROUP,
        id,
        Arc::clone(&cluster),
        channels,
        Duration::from_secs(2),
    );
    let sm = MemSm::default();
    let raft = Raft::new(id, raft_config(), factory, MemLog::default(), sm.clone())
        .await
        .expect("raft starts");
    let handler = Arc::new(TestHandler {
        id,
        cluster_id: cluster,
        groups: RwLock::new(HashMap::from([(GROUP.to_string(), raft.clone())])),
        snapshot_dir: tempfile::tempdir().expect("temp dir"),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(peer::server(Arc::clone(&handler)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stop_rx.await;
            }),
    );
    TestNode {
        id,
        addr,
        raft,
        sm,
        handler,
        stop: Some(stop_tx),
        server: Some(server),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node in `nodes` sees the same leader, one of them, which is in state
/// Leader and holds a quorum lease; returns its id.
async fn wait_for_leader(nodes: &[&TestNode], not: Option<NodeId>) -> NodeId {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: Vec<Option<NodeId>> = nodes
            .iter()
            .map(|n| n.raft.metrics().borrow_watched().current_leader)
            .collect();
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| *x == Some(*l))
            && Some(*l) != not
            && let Some(leader) = nodes.iter().find(|n| n.id == *l)
            && leader.raft.metrics().borrow_watched().state == ServerState::Leader
            // A new leader accepts writes once a quorum acknowledged it (its lease).
            && has_quorum_lease(
                &leader.raft.metrics().borrow_watched(),
                Duration::from_millis(ELECTION_MAX_MS),
            )
        {
            return *l;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {:?} (excluding {not:?}): {leaders:?}",
            nodes.iter().map(|n| n.id).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn write_trim(raft: &Raft, start_offset: u64) {
    raft.client_write(EntryData {
        cmds: vec![Command::Trim { start_offset }],
    })
    .await
    .unwrap_or_else(|e| panic!("write of trim {start_offset} fails: {e}"));
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicates_fails_over_and_installs_snapshot_over_grpc() {
    // Election and replication to all three.
    let (mut nodes, leader) = three_initialised_nodes().await;
    let l = leader as usize;
    for i in 1..=5 {
        write_trim(&nodes[l].raft, i).await;
    }
    for n in &nodes {
        wait_until(&format!("5 entries applied on node {}", n.id), || {
            n.sm.trims() == vec![1, 2, 3, 4, 5]
        })
        .await;
    }

    // Status over the network reflects the group.
    let channels = Channels::default();
    let st = network::status(
        &channels,
        &nodes[l].addr.to_string(),
        Duration::from_secs(2),
    )
    .await
    .expect("status");
    assert_eq!(st.node_id, leader);
    assert_eq!(st.cluster_id, CLUSTER);
    assert_eq!(st.groups.len(), 1);
    assert_eq!(st.groups[0].name, GROUP);
    assert!(st.groups[0].initialized && st.groups[0].has_leader);
    assert_eq!(st.groups[0].leader_id, leader);
    assert_eq!(st.groups[0].voters, vec![0, 1, 2]);
    assert!(st.groups[0].learners.is_empty());

    // Failover: the leader stops (Raft and peer server); the two others elect a new leader
    // and commit writes between them.
    nodes[l].stop().await;
    let survivors: Vec<&TestNode> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = wait_for_leader(&survivors, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let nl = new_leader as usize;
    write_trim(&nodes[nl].raft, 6).await;
    for n in nodes.iter().filter(|n| n.id != leader) {
        wait_until(&format!("6 entries applied on node {}", n.id), || {
            n.sm.trims() == vec![1, 2, 3, 4, 5, 6]
        })
        .await;
    }

    // Snapshot and purge on the new leader; a fresh node added as a learner can then only
    // catch up by install-snapshot over the network.
    let applied = nodes[nl]
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .expect("applied");
    nodes[nl]
        .raft
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    nodes[nl]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.map(|s| s.index) >= Some(applied.index),
            "snapshot on the new leader",
        )
        .await
        .expect("snapshot built");
    nodes[nl]
        .raft
        .trigger()
        .purge_log(applied.index)
        .await
        .expect("trigger purge");
    nodes[nl]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.map(|p| p.index) >= Some(applied.index),
            "log purged on the new leader",
        )
        .await
        .expect("log purged");

    let fresh = start_node(3, CLUSTER).await;
    nodes[nl]
        .raft
        .add_learner(fresh.id, fresh.node(), true)
        .await
        .expect("add learner");
    wait_until("the learner installed a snapshot and caught up", || {
        fresh.sm.snapshots_installed() >= 1 && fresh.sm.trims() == vec![1, 2, 3, 4, 5, 6]
    })
    .await;
    // The learner keeps replicating after the snapshot.
    write_trim(&nodes[nl].raft, 7).await;
    wait_until("the learner applies a write after the snapshot", || {
        fresh.sm.trims() == vec![1, 2, 3, 4, 5, 6, 7]
    })
    .await;
    // Chunks of 64 bytes: the transfer took several InstallSnapshot RPCs.
    assert!(
        fresh.sm.snapshot_len() > 3 * 64,
        "{}",
        fresh.sm.snapshot_len()
    );
    let m = fresh.raft.metrics().borrow_watched().clone();
    assert_eq!(m.current_leader, Some(new_leader));
    assert_eq!(m.state, ServerState::Learner);

    let mut fresh = fresh;
    fresh.stop().await;
    for n in nodes.iter_mut().filter(|n| n.id != leader) {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_checks_and_client_error_mapping() {
    let node = start_node(5, CLUSTER).await;
    let addr = node.addr.to_string();
    let channels = Arc::new(Channels::default());
    let mut client = channels.client(&addr).expect("client");
    let vote = VoteRequest::<TypeConfig>::new(Vote::new(1, 4), None);
    let payload = Bytes::from(postcard::to_allocvec(&vote).unwrap());
    let request = |to: NodeId, cluster_id: &str, group: &str, payload: Bytes| RaftRequest {
        group: group.into(),
        from: 4,
        to,
        cluster_id: cluster_id.into(),
        payload,
    };

    // Raw envelope checks.
    let err = client
        .vote(request(6, CLUSTER, GROUP, payload.clone()))
        .await
        .expect_err("wrong node id");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("addressed to node 6 but this is node 5"),
        "{}",
        err.message()
    );
    let err = client
        .vote(request(5, "cluster-b", GROUP, payload.clone()))
        .await
        .expect_err("wrong cluster id");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("cluster-b"), "{}", err.message());
    let err = client
        .vote(request(5, CLUSTER, "nope", payload.clone()))
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .append_entries(request(
            5,
            CLUSTER,
            GROUP,
            Bytes::from_static(b"\xff\xff\xff"),
        ))
        .await
        .expect_err("garbage payload");
    assert_eq!(err.code(), Code::InvalidArgument);

    // An empty cluster id on either side is accepted (not bootstrapped yet): the vote is
    // answered by Raft (granted: node 5 is uninitialized and has voted for nobody).
    let reply = client
        .vote(request(5, "", GROUP, payload.clone()))
        .await
        .expect("vote with empty cluster id")
        .into_inner();
    let resp: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> =
        postcard::from_bytes(&reply.payload).expect("reply decodes");
    assert!(resp.expect("vote answered").vote_granted);

    // The openraft client maps the same refusals to Unreachable (openraft backs off).
    let cluster = Arc::new(RwLock::new(CLUSTER.to_string()));
    let mut factory = NetworkFactory::new(
        GROUP,
        4,
        Arc::clone(&cluster),
        Arc::clone(&channels),
        Duration::from_secs(2),
    );
    let opt = || RPCOption::new(Duration::from_secs(2));
    let target = Node {
        addr: "client:1".into(),
        peer_addr: addr.clone(),
    };
    let mut wrong_id = factory.new_client(6, &target).await;
    let err = wrong_id
        .vote(VoteRequest::new(Vote::new(2, 4), None), opt())
        .await
        .expect_err("wrong target id");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    *cluster.write().unwrap() = "cluster-b".into();
    let mut right_id = factory.new_client(5, &target).await;
    let err = right_id
        .vote(VoteRequest::new(Vote::new(2, 4), None), opt())
        .await
        .expect_err("wrong cluster id");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    *cluster.write().unwrap() = CLUSTER.into();
    let ok = right_id
        .vote(VoteRequest::new(Vote::new(2, 4), None), opt())
        .await
        .expect("vote through the openraft client");
    assert!(ok.vote_granted);

    // Nothing listening: Unreachable.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut down = factory
        .new_client(
            7,
            &Node {
                addr: "client:1".into(),
                peer_addr: closed_addr.clone(),
            },
        )
        .await;
    let err = down
        .vote(VoteRequest::new(Vote::new(2, 4), None), opt())
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

    // A peer that accepts TCP but never answers: the RPC ends at openraft's TTL (shorter
    // than rpc_timeout) with Timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut mute = factory
        .new_client(
            8,
            &Node {
                addr: "client:1".into(),
                peer_addr: silent_addr,
            },
        )
        .await;
    let started = Instant::now();
    let err = mute
        .vote(
            VoteRequest::new(Vote::new(2, 4), None),
            RPCOption::new(Duration::from_millis(200)),
        )
        .await
        .expect_err("silent peer");
    assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    hold.abort();

    // Status and Join helpers.
    let st = network::status(&channels, &addr, Duration::from_secs(2))
        .await
        .expect("status");
    assert_eq!((st.node_id, st.cluster_id.as_str()), (5, CLUSTER));
    assert!(!st.groups[0].initialized);
    let join = network::join(
        &channels,
        &addr,
        JoinRequest {
            node_id: 9,
            addr: "c:1".into(),
            peer_addr: "p:2".into(),
            ordinal: 1,
        },
        Duration::from_secs(2),
    )
    .await
    .expect("join");
    assert!(join.accepted, "{}", join.message);
    let err = network::join(
        &channels,
        &addr,
        JoinRequest {
            node_id: 5,
            ..Default::default()
        },
        Duration::from_secs(2),
    )
    .await
    .expect_err("handler refusal passes through");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = network::status(&channels, &closed_addr, Duration::from_secs(2))
        .await
        .expect_err("status of a closed port");
    assert_eq!(err.code(), Code::Unavailable);

    // A stopped Raft node answers with its own fatal error, which comes back as Unreachable
    // (openraft 0.10's network errors carry no remote fatal error) naming it.
    node.raft.shutdown().await.expect("shutdown");
    let err = right_id
        .vote(VoteRequest::new(Vote::new(3, 4), None), opt())
        .await
        .expect_err("stopped raft");
    match err {
        RPCError::Unreachable(u) => {
            assert!(
                u.to_string().contains("node 5 answered: raft stopped"),
                "{u}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(node.handler.node_id(), 5);
    let mut node = node;
    if let Some(stop) = node.stop.take() {
        let _ = stop.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_channel_reconnects_after_the_peer_restarts() {
    let mut node = start_node(5, CLUSTER).await;
    let addr = node.addr.to_string();
    let channels = Arc::new(Channels::default());
    let mut factory = NetworkFactory::new(
        GROUP,
        4,
        Arc::new(RwLock::new(CLUSTER.to_string())),
        Arc::clone(&channels),
        Duration::from_secs(2),
    );
    let target = Node {
        addr: "client:1".into(),
        peer_addr: addr.clone(),
    };
    let mut net = factory.new_client(5, &target).await;
    let opt = || RPCOption::new(Duration::from_secs(1));
    let granted = net
        .vote(VoteRequest::new(Vote::new(1, 4), None), opt())
        .await
        .expect("vote before the restart");
    assert!(granted.vote_granted);

    // The peer goes away: calls fail (the connection is closed, the port refuses).
    node.stop().await;
    let err = net
        .vote(VoteRequest::new(Vote::new(2, 4), None), opt())
        .await
        .expect_err("peer down");
    assert!(
        matches!(err, RPCError::Unreachable(_) | RPCError::Network(_)),
        "{err:?}"
    );

    // It comes back on the same address (a restarted process): the same client, over the
    // same cached channel, reaches it again without any intervention.
    let restarted = start_node_at(5, CLUSTER, &addr).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match net
            .vote(VoteRequest::new(Vote::new(3, 4), None), opt())
            .await
        {
            Ok(resp) => {
                assert!(resp.vote_granted);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "peer still unreachable after its restart: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut restarted = restarted;
    restarted.stop().await;
}

/// Starts three nodes and initialises the group from node 0; returns the nodes and the id of
/// the leader they agree on.
async fn three_initialised_nodes() -> (Vec<TestNode>, NodeId) {
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(start_node(id, CLUSTER).await);
    }
    let members: BTreeMap<NodeId, Node> = nodes.iter().map(|n| (n.id, n.node())).collect();
    nodes[0]
        .raft
        .initialize(members)
        .await
        .expect("initialize from node 0");
    let leader = wait_for_leader(&nodes.iter().collect::<Vec<_>>(), None).await;
    (nodes, leader)
}

/// [`three_initialised_nodes`], then trim 1 written through the leader and applied
/// everywhere; returns the nodes and the leader's id.
async fn three_nodes_with_a_leader() -> (Vec<TestNode>, NodeId) {
    let (nodes, leader) = three_initialised_nodes().await;
    write_trim(&nodes[leader as usize].raft, 1).await;
    for n in &nodes {
        wait_until(&format!("trim 1 applied on node {}", n.id), || {
            n.sm.trims() == vec![1]
        })
        .await;
    }
    (nodes, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_for_several_election_timeouts_does_not_depose_the_leader() {
    let (mut nodes, leader) = three_nodes_with_a_leader().await;
    let term = nodes[leader as usize].view().0;
    let f = nodes
        .iter()
        .position(|n| n.id != leader)
        .expect("a follower");

    // Cut for 6 maximum election timeouts: without pre-vote the follower would campaign about
    // 6 times, each time raising its term.
    nodes[f].isolate();
    let window = Duration::from_millis(ELECTION_MAX_MS * 6);
    let until = Instant::now() + window;
    while Instant::now() < until {
        let (t, _, state) = nodes[f].view();
        assert_eq!(t, term, "the isolated follower raised its term");
        assert_ne!(state, ServerState::Leader);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Heal: it catches up from the same leader in the same term.
    nodes[f].heal();
    write_trim(&nodes[leader as usize].raft, 2).await;
    wait_until(
        "the healed follower applies the leader's next write",
        || nodes[f].sm.trims() == vec![1, 2],
    )
    .await;
    // And nothing changes for another 2 election timeouts.
    let until = Instant::now() + Duration::from_millis(ELECTION_MAX_MS * 2);
    loop {
        for n in &nodes {
            let (t, l, state) = n.view();
            assert_eq!(t, term, "node {} changed term", n.id);
            assert_eq!(l, Some(leader), "node {} follows another leader", n.id);
            assert_eq!(
                state == ServerState::Leader,
                n.id == leader,
                "node {}",
                n.id
            );
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_both_followers_loses_its_quorum_lease_and_the_others_elect_a_leader()
{
    let (mut nodes, leader) = three_nodes_with_a_leader().await;
    let l = leader as usize;
    let lease = Duration::from_millis(ELECTION_MAX_MS);
    assert!(has_quorum_lease(
        &nodes[l].raft.metrics().borrow_watched(),
        lease
    ));
    let term = nodes[l].view().0;

    nodes[l].isolate();
    let cut = Instant::now();
    // Within 2 election timeouts the old leader knows it has no quorum (it may still be in
    // state Leader: openraft 0.10 steps down only on seeing a higher term) ...
    let deadline = cut + 2 * lease;
    while has_quorum_lease(&nodes[l].raft.metrics().borrow_watched(), lease) {
        assert!(
            Instant::now() < deadline,
            "the isolated leader still claims a quorum lease {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cut.elapsed() >= Duration::from_millis(ELECTION_MIN_MS) / 2);
    // ... and refuses new proposals without naming a leader.
    let refused = tokio::time::timeout(
        WAIT,
        nodes[l].raft.client_write(EntryData {
            cmds: vec![Command::Trim { start_offset: 99 }],
        }),
    )
    .await
    .expect("the write is answered");
    match refused {
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            assert_eq!(f.leader_id, None, "{f:?}")
        }
        other => panic!("expected an empty ForwardToLeader, got {other:?}"),
    }

    // The two others elect a new leader in a higher term and commit without it.
    let survivors: Vec<&TestNode> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = wait_for_leader(&survivors, Some(leader)).await;
    let nl = new_leader as usize;
    assert!(nodes[nl].view().0 > term);
    write_trim(&nodes[nl].raft, 2).await;

    // Healed, the old leader follows the new one and catches up.
    nodes[l].heal();
    wait_until("the old leader follows the new leader", || {
        let (_, ld, state) = nodes[l].view();
        ld == Some(new_leader) && state == ServerState::Follower
    })
    .await;
    wait_until("the old leader applies the new leader's write", || {
        nodes[l].sm.trims() == vec![1, 2]
    })
    .await;
    for n in &mut nodes {
        n.stop().await;
    }
}
