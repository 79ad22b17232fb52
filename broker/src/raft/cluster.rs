//! Node identity, bootstrap and membership of the broker's Raft groups.
//!
//! Identity lives on the volume: `<data-dir>/node.json` holds `{node_id, ordinal,
//! cluster_id}`. It is written once, when the node first decides who it is:
//!
//! - single node (`--peers` empty): id 0, a new cluster id, every group initialised with
//!   itself as the only voter;
//! - ordinal 0 with an empty volume bootstraps the cluster (ids = ordinals, every peer a voter)
//!   only after **every** peer has answered `Status` with an empty volume (no cluster id) and
//!   reported that it has itself seen ordinal 0 with an empty volume;
//! - another ordinal with an empty volume takes id = ordinal only if it saw ordinal 0
//!   uninitialised earlier in this process's life and then saw it bootstrapped with that id
//!   in the membership (the all-at-once and the one-by-one start both end here);
//! - an empty volume that finds the cluster already bootstrapped (it never saw ordinal 0
//!   uninitialised) is a replacement or a new replica: it takes a fresh random id and asks
//!   the peers to `Join` it. A voter with the same peer address (the identity whose volume
//!   was lost) is replaced by the new id; otherwise the node stays a learner until the voter
//!   set is changed ([`Cluster::set_voters`], admin `POST /cluster/voters`).
//!
//! So a replica that lost its volume never rejoins under its old id (it would have lost its
//! vote and log, which Raft's safety depends on). Peer RPCs carry the cluster id and the target
//! id, and the peer service refuses mismatches.

use openraft::async_runtime::watch::WatchReceiver as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{InitializeError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::Status;

use super::network::{self, Channels};
use super::peer::PeerHandler;
use super::peer::proto::{GroupStatus, JoinReply, JoinRequest, StatusReply};
use super::store::StateMachine;
use super::{Node, NodeId, Raft};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::snapshot;

/// File holding the node's identity in the data directory.
pub const IDENTITY_FILE: &str = "node.json";

/// The node's identity as stored on the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Raft node id.
    pub node_id: NodeId,
    /// StatefulSet ordinal this volume belongs to.
    pub ordinal: u64,
    /// Cluster id (`""` until learned from the bootstrapping node).
    pub cluster_id: String,
    /// The voters this node (ordinal 0, or a single node) initialises every group with, kept
    /// until every group is initialised: the identity is saved before the groups are, so a
    /// crash in between resumes the bootstrap instead of leaving uninitialised groups that
    /// nobody initialises (issue 12). Absent in files of earlier versions and after the
    /// bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BTreeMap<NodeId, Node>>,
}

/// What the node does once its groups are open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The volume already had an identity (or the node learned it): just run.
    Resume,
    /// Initialise every group with these voters.
    Bootstrap(BTreeMap<NodeId, Node>),
    /// Ask the peers to add this (fresh) node.
    Join,
}

/// The node's cluster view: identity, peers, groups. Implements the peer service's handler.
pub struct Cluster {
    /// Identity, set once resolved.
    pub identity: OnceLock<Identity>,
    /// Cluster id shared with the network factories (`""` while unknown).
    pub cluster_id: Arc<RwLock<String>>,
    /// Shared peer channels.
    pub channels: Arc<Channels>,
    /// This node's addresses.
    pub me: Node,
    /// Every replica's addresses by ordinal (from `--peers` / `--client-addrs`).
    pub peers: Vec<Node>,
    groups: RwLock<BTreeMap<String, Arc<Replica>>>,
    /// Set once this undecided node has seen ordinal 0 with an empty volume.
    saw_zero_fresh: std::sync::atomic::AtomicBool,
    rpc_timeout: Duration,
    data_dir: std::path::PathBuf,
}

fn rlock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn random_id() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random source");
    // Keep ids positive in signed metric gauges and clear of small ordinals.
    (u64::from_le_bytes(b) >> 2) | (1 << 40)
}

fn random_cluster_id() -> String {
    format!("{:016x}", random_id())
}

impl Cluster {
    /// The cluster view of a node configured by `config`.
    pub fn new(config: &Config) -> Arc<Self> {
        let ordinal = config.ordinal() as usize;
        let peers: Vec<Node> = config
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| Node {
                addr: config.client_addr(i),
                peer_addr: p.clone(),
            })
            .collect();
        let me = peers.get(ordinal).cloned().unwrap_or_else(|| Node {
            addr: config.client_addr(0),
            peer_addr: config.peer_listen.to_string(),
        });
        Arc::new(Self {
            identity: OnceLock::new(),
            cluster_id: Arc::new(RwLock::new(String::new())),
            channels: Arc::new(
                Channels::new(Duration::from_millis(config.raft_rpc_timeout_ms.min(1000)))
                    .with_tls(
                        config
                            .tls_files()
                            .ok()
                            .flatten()
                            .map(|f| f.client_options()),
                    ),
            ),
            me,
            peers,
            groups: RwLock::new(BTreeMap::new()),
            saw_zero_fresh: std::sync::atomic::AtomicBool::new(false),
            rpc_timeout: Duration::from_millis(config.raft_rpc_timeout_ms),
            data_dir: config.data_dir.clone(),
        })
    }

    /// Registers the opened stream replicas (their Raft groups serve peer RPCs from now on).
    pub fn set_groups(&self, groups: BTreeMap<String, Arc<Replica>>) {
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = groups;
    }

    fn set_identity(&self, id: Identity) -> Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        snapshot::write_json(&self.data_dir, IDENTITY_FILE, &id)?;
        *self.cluster_id.write().unwrap_or_else(|e| e.into_inner()) = id.cluster_id.clone();
        let _ = self.identity.set(id);
        Ok(())
    }

    /// Records the cluster id once learned (a node that took its ordinal id before the
    /// bootstrap finished).
    fn learn_cluster_id(&self, cid: &str) {
        if cid.is_empty() {
            return;
        }
        let mut cur = self.cluster_id.write().unwrap_or_else(|e| e.into_inner());
        if cur.is_empty() {
            *cur = cid.to_string();
            if let Some(id) = self.identity.get() {
                let mut id = id.clone();
                id.cluster_id = cid.to_string();
                if let Err(e) = snapshot::write_json(&self.data_dir, IDENTITY_FILE, &id) {
                    tracing::warn!(error = %e, "cannot record the cluster id");
                }
            }
        }
    }

    /// Decides this node's identity (see the module docs), polling peers until it can.
    /// Returns what to do once the groups are open.
    ///
    /// Errors: [`Error::Snapshot`] for an unreadable identity file, [`Error::Unavailable`]
    /// when `stop` fires first.
    pub async fn resolve(
        self: &Arc<Self>,
        ordinal: u64,
        mut stop: watch::Receiver<bool>,
        waiting: &std::sync::atomic::AtomicBool,
    ) -> Result<Startup> {
        if let Some(id) = snapshot::read_json::<Identity>(&self.data_dir, IDENTITY_FILE)? {
            if id.ordinal != ordinal {
                return Err(Error::Config(format!(
                    "the volume at {} belongs to ordinal {} but this is ordinal {ordinal}",
                    self.data_dir.display(),
                    id.ordinal
                )));
            }
            tracing::info!(node_id = id.node_id, cluster_id = %id.cluster_id, "identity from the volume");
            let pending = id.bootstrap.clone();
            self.set_identity(id)?;
            if let Some(members) = pending {
                tracing::warn!(
                    voters = members.len(),
                    "the bootstrap of an earlier start did not finish: initialising the groups again"
                );
                return Ok(Startup::Bootstrap(members));
            }
            return Ok(Startup::Resume);
        }
        if self.peers.len() <= 1 {
            let mut members = BTreeMap::new();
            members.insert(ordinal, self.me.clone());
            self.set_identity(Identity {
                node_id: ordinal,
                ordinal,
                cluster_id: random_cluster_id(),
                bootstrap: Some(members.clone()),
            })?;
            tracing::info!(
                node_id = ordinal,
                "empty volume, single node: bootstrapping"
            );
            return Ok(Startup::Bootstrap(members));
        }
        let mut saw_zero_fresh = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut waited = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::broker::stopped(&mut stop) => return Err(Error::Unavailable("stopped while resolving the node identity".into())),
            }
            waited += 1;
            waiting.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut answers: BTreeMap<usize, StatusReply> = BTreeMap::new();
            for (i, p) in self.peers.iter().enumerate() {
                if i as u64 == ordinal {
                    continue;
                }
                if let Ok(r) =
                    network::status(&self.channels, &p.peer_addr, Duration::from_millis(500)).await
                {
                    answers.insert(i, r);
                }
            }
            let existing = answers.values().find(|r| !r.cluster_id.is_empty()).cloned();
            if ordinal == 0 {
                if let Some(r) = existing {
                    return self.join_as_new(ordinal, &r.cluster_id);
                }
                // Bootstrap once every peer answered with an empty volume and has seen this
                // node with one (so each of them can take its ordinal as its id).
                if answers.len() == self.peers.len() - 1
                    && answers.values().all(|r| r.saw_ordinal_zero_fresh)
                {
                    let members: BTreeMap<NodeId, Node> = self
                        .peers
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i as NodeId, n.clone()))
                        .collect();
                    self.set_identity(Identity {
                        node_id: 0,
                        ordinal: 0,
                        cluster_id: random_cluster_id(),
                        bootstrap: Some(members.clone()),
                    })?;
                    tracing::info!(
                        voters = members.len(),
                        "every peer has an empty volume: bootstrapping the cluster"
                    );
                    return Ok(Startup::Bootstrap(members));
                }
            } else {
                match answers.get(&0) {
                    Some(z) if z.cluster_id.is_empty() => {
                        saw_zero_fresh = true;
                        self.saw_zero_fresh
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Ordinal 0 has its cluster id but is still initialising its groups:
                    // wait for the membership before deciding.
                    Some(z) if saw_zero_fresh && z.groups.iter().any(|g| g.voters.is_empty()) => {}
                    Some(z) if saw_zero_fresh => {
                        let listed = z.groups.iter().all(|g| g.voters.contains(&ordinal));
                        if listed {
                            self.set_identity(Identity {
                                node_id: ordinal,
                                ordinal,
                                cluster_id: z.cluster_id.clone(),
                                bootstrap: None,
                            })?;
                            tracing::info!(
                                node_id = ordinal,
                                "joined the cluster bootstrapped by ordinal 0"
                            );
                            return Ok(Startup::Resume);
                        }
                        return self.join_as_new(ordinal, &z.cluster_id);
                    }
                    Some(z) => return self.join_as_new(ordinal, &z.cluster_id),
                    None => {
                        if let Some(r) = existing {
                            return self.join_as_new(ordinal, &r.cluster_id);
                        }
                    }
                }
            }
            if waited.is_multiple_of(40) {
                tracing::info!(
                    answered = answers.len(),
                    peers = self.peers.len(),
                    "waiting for peers to decide the node identity"
                );
            }
        }
    }

    fn join_as_new(&self, ordinal: u64, cluster_id: &str) -> Result<Startup> {
        let id = random_id();
        tracing::warn!(
            node_id = id,
            ordinal,
            "empty volume in an existing cluster: joining under a new node id"
        );
        self.set_identity(Identity {
            node_id: id,
            ordinal,
            cluster_id: cluster_id.to_string(),
            bootstrap: None,
        })?;
        Ok(Startup::Join)
    }

    /// Initialises every group with `members` as voters (groups already initialised, by an
    /// earlier start, are left as they are), then records in the identity file that the
    /// bootstrap is done.
    ///
    /// Errors: [`Error::Unavailable`] when a group refuses for another reason (the node then
    /// stops; the next start tries again), [`Error::Snapshot`] when the identity file cannot be
    /// written.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, Node>) -> Result<()> {
        let groups: Vec<(String, Raft)> = rlock(&self.groups)
            .iter()
            .map(|(n, r)| (n.clone(), r.raft.clone()))
            .collect();
        for (name, raft) in groups {
            match raft.initialize(members.clone()).await {
                Ok(()) => {
                    tracing::info!(stream = %name, voters = members.len(), "group initialised")
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(stream = %name, reason = %e, "group already initialised")
                }
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "stream {name}: initialising the group failed: {e}"
                    )));
                }
            }
        }
        if let Some(mut id) = self.identity.get().cloned() {
            id.bootstrap = None;
            snapshot::write_json(&self.data_dir, IDENTITY_FILE, &id)?;
        }
        Ok(())
    }

    /// Asks the peers to add this node to every group until every group lists it. Runs
    /// until done or `stop`.
    pub async fn join_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(me) = self.identity.get().cloned() else {
            return;
        };
        let req = JoinRequest {
            node_id: me.node_id,
            addr: self.me.addr.clone(),
            peer_addr: self.me.peer_addr.clone(),
            ordinal: me.ordinal,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::broker::stopped(&mut stop) => return,
            }
            let all_listed = {
                let g = rlock(&self.groups);
                !g.is_empty()
                    && g.values().all(|r| {
                        let m = r.raft.metrics();
                        let m = m.borrow_watched();
                        m.membership_config
                            .membership()
                            .get_node(&me.node_id)
                            .is_some()
                    })
            };
            if all_listed {
                tracing::info!(node_id = me.node_id, "member of every group");
                return;
            }
            for p in &self.peers {
                if p.peer_addr == self.me.peer_addr {
                    continue;
                }
                match network::join(
                    &self.channels,
                    &p.peer_addr,
                    req.clone(),
                    self.rpc_timeout * 5,
                )
                .await
                {
                    Ok(r) => {
                        tracing::debug!(peer = %p.peer_addr, accepted = r.accepted, message = %r.message, "join answered")
                    }
                    Err(e) => tracing::debug!(peer = %p.peer_addr, error = %e, "join failed"),
                }
            }
        }
    }

    /// Changes every group this node leads so that exactly the nodes at `peer_addrs` are
    /// voters (others present in the membership are removed): one change at a time per
    /// group, each new voter first added as a learner and caught up (openraft's blocking
    /// `add_learner`). Returns, per group, what happened (`"changed"`, `"unchanged"`, `"not
    /// leader"` or an error).
    ///
    /// Errors: [`Error::InvalidArgument`] when an address is not a member (learner or voter)
    /// of a group this node leads.
    pub async fn set_voters(&self, peer_addrs: &[String]) -> Result<BTreeMap<String, String>> {
        let groups: Vec<(String, Arc<Replica>)> = rlock(&self.groups)
            .iter()
            .map(|(n, r)| (n.clone(), Arc::clone(r)))
            .collect();
        let mut out = BTreeMap::new();
        for (name, r) in groups {
            if !r.is_leader() {
                out.insert(name, "not leader".into());
                continue;
            }
            let m = r.raft.metrics().borrow_watched().membership_config.clone();
            let mut ids = BTreeSet::new();
            for a in peer_addrs {
                let id = m
                    .membership()
                    .nodes()
                    .find(|(_, n)| &n.peer_addr == a)
                    .map(|(id, _)| *id)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "{a} is not a member of stream {name}'s group (start it and let it join first)"
                        ))
                    })?;
                ids.insert(id);
            }
            let current: BTreeSet<NodeId> = m.membership().voter_ids().collect();
            if current == ids {
                out.insert(name, "unchanged".into());
                continue;
            }
            let res = r.raft.change_membership(ids.clone(), false).await;
            out.insert(
                name.clone(),
                match res {
                    Ok(_) => {
                        tracing::info!(stream = %name, voters = ?ids, "voters changed");
                        "changed".into()
                    }
                    Err(e) => format!("error: {e}"),
                },
            );
        }
        Ok(out)
    }
}

impl PeerHandler for Cluster {
    type Sm = StateMachine;

    fn node_id(&self) -> NodeId {
        self.identity.get().map_or(u64::MAX, |i| i.node_id)
    }

    fn cluster_id(&self) -> String {
        rlock(&self.cluster_id).clone()
    }

    fn group(&self, name: &str) -> Option<Raft> {
        rlock(&self.groups).get(name).map(|r| r.raft.clone())
    }

    fn snapshot_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        rlock(&self.groups).get(name).map(|r| r.shared.dir.clone())
    }

    async fn status(&self) -> StatusReply {
        let groups = rlock(&self.groups)
            .iter()
            .map(|(name, r)| {
                let m = r.raft.metrics();
                let m = m.borrow_watched();
                let mem = m.membership_config.membership();
                GroupStatus {
                    name: name.clone(),
                    initialized: m.membership_config.log_id().is_some(),
                    leader_id: m.current_leader.unwrap_or(0),
                    has_leader: m.current_leader.is_some(),
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    voters: mem.voter_ids().collect(),
                    learners: mem.learner_ids().collect(),
                }
            })
            .collect();
        StatusReply {
            node_id: self.node_id(),
            cluster_id: self.cluster_id(),
            groups,
            saw_ordinal_zero_fresh: self
                .saw_zero_fresh
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    async fn join(&self, req: JoinRequest) -> std::result::Result<JoinReply, Status> {
        let groups: Vec<(String, Arc<Replica>)> = rlock(&self.groups)
            .iter()
            .map(|(n, r)| (n.clone(), Arc::clone(r)))
            .collect();
        let node = Node {
            addr: req.addr.clone(),
            peer_addr: req.peer_addr.clone(),
        };
        let mut done = Vec::new();
        for (name, r) in groups {
            if !r.is_leader() {
                continue;
            }
            let m = r.raft.metrics().borrow_watched().membership_config.clone();
            let mem = m.membership();
            if mem.get_node(&req.node_id).is_none()
                && let Err(e) = r.raft.add_learner(req.node_id, node.clone(), true).await
            {
                return Err(Status::unavailable(format!(
                    "stream {name}: add learner: {e}"
                )));
            }
            // Replace a voter that had the same peer address (its volume was lost).
            let stale: Vec<NodeId> = mem
                .nodes()
                .filter(|(id, n)| **id != req.node_id && n.peer_addr == req.peer_addr)
                .map(|(id, _)| *id)
                .collect();
            let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
            if stale.iter().any(|s| voters.contains(s)) {
                let mut new: BTreeSet<NodeId> = voters.clone();
                for s in &stale {
                    new.remove(s);
                }
                new.insert(req.node_id);
                r.raft
                    .change_membership(new, false)
                    .await
                    .map_err(|e| Status::unavailable(format!("stream {name}: replace: {e}")))?;
                tracing::warn!(stream = %name, old = ?stale, new = req.node_id, "replaced a replica that lost its volume");
            }
            done.push(name);
        }
        Ok(JoinReply {
            accepted: !done.is_empty(),
            message: format!("groups led here: {done:?}"),
        })
    }
}

/// Keeps the cluster id in sync and publishes Raft metrics of every group; runs until `stop`.
pub async fn watch_groups(cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut leaders: BTreeMap<String, Option<NodeId>> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::broker::stopped(&mut stop) => return,
        }
        if cluster.cluster_id().is_empty() {
            for p in &cluster.peers {
                if p.peer_addr == cluster.me.peer_addr {
                    continue;
                }
                if let Ok(r) =
                    network::status(&cluster.channels, &p.peer_addr, Duration::from_millis(500))
                        .await
                {
                    cluster.learn_cluster_id(&r.cluster_id);
                }
            }
        }
        let groups: Vec<(String, Arc<Replica>)> = rlock(&cluster.groups)
            .iter()
            .map(|(n, r)| (n.clone(), Arc::clone(r)))
            .collect();
        for (name, r) in groups {
            let m = r.raft.metrics().borrow_watched().clone();
            let sm = &r.metrics;
            sm.raft_term.set(m.current_term as i64);
            sm.raft_leader
                .set(m.current_leader.map_or(-1, |l| l as i64));
            sm.raft_is_leader
                .set(i64::from(m.state == ServerState::Leader));
            sm.raft_commit_index.set(
                r.shared
                    .committed()
                    .or(m.last_applied)
                    .map_or(0, |l| l.index as i64),
            );
            sm.raft_applied_index
                .set(m.last_applied.map_or(0, |l| l.index as i64));
            sm.raft_last_log_index
                .set(m.last_log_index.map_or(0, |i| i as i64));
            if let Some(rep) = &m.replication {
                let last = m.last_log_index.unwrap_or(0);
                for (id, matched) in rep {
                    if *id != m.id {
                        let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
                        sm.set_lag(*id, lag as i64);
                    }
                }
            }
            let prev = leaders.insert(name.clone(), m.current_leader);
            if prev.is_some() && prev != Some(m.current_leader) {
                sm.raft_leader_changes.inc();
                tracing::info!(stream = %name, leader = ?m.current_leader, term = m.current_term, "leader changed");
            }
        }
    }
}

/// Reads the identity stored in `data_dir`, if any (for tools and tests).
///
/// Errors: [`Error::Snapshot`] for an unreadable file.
pub fn read_identity(data_dir: &Path) -> Result<Option<Identity>> {
    snapshot::read_json(data_dir, IDENTITY_FILE)
}
