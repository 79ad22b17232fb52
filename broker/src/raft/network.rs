//! The peer client: openraft's [`RaftNetwork`] over the `txpipe.raft.v1.RaftPeer` gRPC service
//! (see [`super::peer`]).
//!
//! - [`Channels`]: one lazily-connected gRPC channel (one HTTP/2 connection) per peer address,
//!   shared by every Raft group of the node and by the cluster code's [`status`] / [`join`].
//! - [`NetworkFactory`]: the per-group [`RaftNetworkFactory`]; its clients ([`PeerNetwork`])
//!   wrap each openraft request in a [`RaftRequest`] envelope (group, from, to, cluster id).
//!
//! Every RPC has a deadline: the shorter of openraft's `RPCOption::hard_ttl()` (the heartbeat
//! interval for AppendEntries, the election timeout for Vote, the install-snapshot timeout for
//! snapshot chunks) and the configured `rpc_timeout`. It is enforced locally (a Tokio timeout)
//! and sent to the peer as `grpc-timeout`, so the peer drops the work too.
//!
//! Errors map to what openraft expects: a peer that cannot be reached, refuses the envelope or
//! answers garbage is [`Unreachable`] (openraft backs off before the next attempt); an expired
//! deadline is [`RPCError::Timeout`]; other transient transport failures are
//! [`RPCError::Network`] (openraft may retry at once); an error raised by the remote Raft node
//! is [`RPCError::RemoteError`]. Failures are logged at debug level, and at warn level at most
//! once per peer every [`WARN_INTERVAL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, TimeoutExpired};

use super::peer::{
    JoinReply, JoinRequest, MAX_MESSAGE_BYTES, RaftPeerClient, RaftRequest, StatusReply,
    StatusRequest,
};
use super::{Node, NodeId, TypeConfig};

/// Shortest interval between two warn-level logs about failures towards the same peer.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Default TCP connect timeout of [`Channels::default`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 keepalive ping interval of peer connections: a connection whose peer vanished
/// without closing it (a deleted pod) is detected within this plus [`KEEPALIVE_TIMEOUT`], and
/// the next call reconnects, resolving the peer's DNS name again.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A peer's cached channel and when a failure towards it was last logged at warn level.
struct PeerEntry {
    channel: Channel,
    last_warn: Option<Instant>,
}

/// Cache of one lazily-connected gRPC [`Channel`] per peer address, shared by all groups (an
/// HTTP/2 connection multiplexes their calls). A channel connects on its first call and
/// reconnects by itself after the connection breaks.
pub struct Channels {
    connect_timeout: Duration,
    peers: Mutex<HashMap<String, PeerEntry>>,
}

impl Default for Channels {
    /// A cache whose channels use [`DEFAULT_CONNECT_TIMEOUT`].
    fn default() -> Self {
        Self::new(DEFAULT_CONNECT_TIMEOUT)
    }
}

impl Channels {
    /// An empty cache; `connect_timeout` bounds each TCP connection attempt.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `peer_addr` (`host:port`, or a full `http://host:port` URI), created on
    /// first use. Does not connect; must be called within a Tokio runtime.
    ///
    /// Errors: INVALID_ARGUMENT when `peer_addr` is not a valid address.
    pub fn channel(&self, peer_addr: &str) -> Result<Channel, Status> {
        let mut peers = self.peers.lock().expect("channels lock");
        if let Some(p) = peers.get(peer_addr) {
            return Ok(p.channel.clone());
        }
        let uri = if peer_addr.contains("://") {
            peer_addr.to_string()
        } else {
            format!("http://{peer_addr}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| {
            Status::invalid_argument(format!("invalid peer address '{peer_addr}': {e}"))
        })?;
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true)
            .connect_lazy();
        peers.insert(
            peer_addr.to_string(),
            PeerEntry {
                channel: channel.clone(),
                last_warn: None,
            },
        );
        Ok(channel)
    }

    /// A `RaftPeer` client over the channel to `peer_addr`, with message limits of
    /// [`MAX_MESSAGE_BYTES`].
    ///
    /// Errors: as [`Self::channel`].
    pub fn client(&self, peer_addr: &str) -> Result<RaftPeerClient<Channel>, Status> {
        Ok(RaftPeerClient::new(self.channel(peer_addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Drops the cached channel to `peer_addr` (for a node removed from the cluster); its
    /// connection closes once no client uses it.
    pub fn forget(&self, peer_addr: &str) {
        self.peers.lock().expect("channels lock").remove(peer_addr);
    }

    /// Whether a failure towards `peer_addr` should be logged at warn level now (at most once
    /// per [`WARN_INTERVAL`] per peer); records the warning when it should.
    fn warn_due(&self, peer_addr: &str) -> bool {
        let mut peers = self.peers.lock().expect("channels lock");
        let Some(p) = peers.get_mut(peer_addr) else {
            return true;
        };
        let now = Instant::now();
        match p.last_warn {
            Some(t) if now.duration_since(t) < WARN_INTERVAL => false,
            _ => {
                p.last_warn = Some(now);
                true
            }
        }
    }

    /// Logs a failed call: debug always, warn when [`Self::warn_due`].
    fn log_failure(&self, peer_addr: &str, group: &str, rpc: &str, error: &dyn std::fmt::Display) {
        tracing::debug!(peer = peer_addr, group, rpc, %error, "peer RPC failed");
        if self.warn_due(peer_addr) {
            tracing::warn!(peer = peer_addr, group, rpc, %error, "peer RPC failed (further failures towards this peer are logged at debug level for {}s)", WARN_INTERVAL.as_secs());
        }
    }
}

/// Calls `Status` on the node at `peer_addr` with a deadline of `timeout`.
///
/// Errors: the peer's status, DEADLINE_EXCEEDED when `timeout` expires, UNAVAILABLE when it
/// cannot be reached, INVALID_ARGUMENT for an invalid address.
pub async fn status(
    channels: &Channels,
    peer_addr: &str,
    timeout: Duration,
) -> Result<StatusReply, Status> {
    let mut client = channels.client(peer_addr)?;
    let mut request = Request::new(StatusRequest {});
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.status(request)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "Status of {peer_addr}: no answer within {timeout:?}"
        ))),
    }
}

/// Calls `Join` on the node at `peer_addr` with a deadline of `timeout`.
///
/// Errors: as [`status`], plus whatever the peer's handler answers (UNAVAILABLE with a
/// `txpipe-leader` hint when it is not the leader, for example).
pub async fn join(
    channels: &Channels,
    peer_addr: &str,
    req: JoinRequest,
    timeout: Duration,
) -> Result<JoinReply, Status> {
    let mut client = channels.client(peer_addr)?;
    let mut request = Request::new(req);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.join(request)).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "Join at {peer_addr}: no answer within {timeout:?}"
        ))),
    }
}

/// openraft network factory of one Raft group: builds a [`PeerNetwork`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    /// The group (stream name) every request is addressed to.
    pub group: String,
    /// This node's id (the `from` of every request).
    pub self_id: NodeId,
    /// This node's cluster id, `""` while unknown; read at each request, so the cluster code
    /// may set it after the group started.
    pub cluster_id: Arc<RwLock<String>>,
    /// The node's shared channel cache.
    pub channels: Arc<Channels>,
    /// Upper bound of every RPC's deadline (openraft's own TTL applies when shorter).
    pub rpc_timeout: Duration,
}

impl NetworkFactory {
    /// A factory for `group` on node `self_id`.
    pub fn new(
        group: impl Into<String>,
        self_id: NodeId,
        cluster_id: Arc<RwLock<String>>,
        channels: Arc<Channels>,
        rpc_timeout: Duration,
    ) -> Self {
        Self {
            group: group.into(),
            self_id,
            cluster_id,
            channels,
            rpc_timeout,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        PeerNetwork {
            factory: self.clone(),
            target,
            node: node.clone(),
            client: None,
        }
    }
}

/// openraft's client towards one target node of one group. Connects lazily, through the
/// shared [`Channels`].
pub struct PeerNetwork {
    factory: NetworkFactory,
    target: NodeId,
    node: Node,
    client: Option<RaftPeerClient<Channel>>,
}

/// The error type openraft expects from a network call whose remote error is `E`.
type NetError<E> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl PeerNetwork {
    /// Encodes an openraft request.
    ///
    /// Errors: [`Unreachable`] (logged) when it does not encode, which would be a bug.
    #[allow(clippy::result_large_err)] // openraft's error type, returned as is.
    fn encode<Req: Serialize, E: std::error::Error>(
        &self,
        rpc: RPCTypes,
        req: &Req,
    ) -> Result<Vec<u8>, NetError<E>> {
        postcard::to_allocvec(req).map_err(|e| self.unreachable(rpc, &e))
    }

    /// Sends one encoded Raft RPC and decodes the answer.
    async fn call<Resp, E>(
        &mut self,
        rpc: RPCTypes,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, NetError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let f = &self.factory;
        let ttl = option.hard_ttl();
        let timeout = if ttl.is_zero() {
            f.rpc_timeout
        } else {
            ttl.min(f.rpc_timeout)
        };
        if self.client.is_none() {
            let client = f
                .channels
                .client(&self.node.peer_addr)
                .map_err(|e| self.unreachable(rpc, &e))?;
            self.client = Some(client);
        }
        let mut client = self.client.clone().expect("client set above");
        let cluster_id = f.cluster_id.read().expect("cluster id lock").clone();
        let mut request = Request::new(RaftRequest {
            group: f.group.clone(),
            from: f.self_id,
            to: self.target,
            cluster_id,
            payload: Bytes::from(payload),
        });
        request.set_timeout(timeout);
        let call = async {
            match rpc {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(self.timeout(rpc, timeout)),
            Ok(Err(status)) => return Err(self.map_status(rpc, status, timeout)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match postcard::from_bytes::<Result<Resp, RaftError<NodeId, E>>>(&reply.payload) {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                self.log(rpc, &e);
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    e,
                )))
            }
            Err(e) => Err(self.unreachable(
                rpc,
                &AnyError::error(format!("undecodable {rpc} reply: {e}")),
            )),
        }
    }

    /// An [`Unreachable`] error for `e` (logged): openraft backs off before retrying.
    fn unreachable<E>(&self, rpc: RPCTypes, e: &(impl std::error::Error + 'static)) -> NetError<E>
    where
        E: std::error::Error,
    {
        self.log(rpc, e);
        RPCError::Unreachable(Unreachable::new(e))
    }

    /// A [`Timeout`] error (logged).
    fn timeout<E>(&self, rpc: RPCTypes, timeout: Duration) -> NetError<E>
    where
        E: std::error::Error,
    {
        let t = Timeout {
            action: rpc,
            id: self.factory.self_id,
            target: self.target,
            timeout,
        };
        self.log(rpc, &t);
        RPCError::Timeout(t)
    }

    /// Maps a failed call's status to openraft's error kinds (see the module docs).
    fn map_status<E>(&self, rpc: RPCTypes, status: Status, timeout: Duration) -> NetError<E>
    where
        E: std::error::Error,
    {
        match status.code() {
            // The peer's deadline, or the local `grpc-timeout` layer's (CANCELLED with a
            // `TimeoutExpired` source), which races with the local Tokio timeout.
            Code::DeadlineExceeded => self.timeout(rpc, timeout),
            Code::Cancelled if deadline_expired(&status) => self.timeout(rpc, timeout),
            // Transient transport trouble (a connection reset mid-call, a stream refused):
            // openraft may retry at once; a peer that is really down then fails to connect,
            // which is UNAVAILABLE and backs off.
            Code::Cancelled | Code::Unknown | Code::Aborted => {
                self.log(rpc, &status);
                RPCError::Network(NetworkError::new(&status))
            }
            // UNAVAILABLE (connection refused, peer shutting down), FAILED_PRECONDITION (wrong
            // node or cluster), NOT_FOUND (group not started there yet), INVALID_ARGUMENT,
            // UNIMPLEMENTED, RESOURCE_EXHAUSTED, INTERNAL...: retrying at once will not help.
            _ => self.unreachable(rpc, &status),
        }
    }

    fn log(&self, rpc: RPCTypes, e: &dyn std::fmt::Display) {
        let f = &self.factory;
        f.channels.log_failure(
            &self.node.peer_addr,
            &f.group,
            &format!("{rpc} to node {}", self.target),
            e,
        );
    }
}

/// Largest encoded AppendEntries request sent: [`MAX_MESSAGE_BYTES`] minus 64 KiB for the
/// envelope and gRPC framing.
pub const MAX_APPEND_BYTES: usize = MAX_MESSAGE_BYTES - (64 << 10);

/// When an AppendEntries request of `entries` entries encodes to `bytes` bytes, over `limit`,
/// the number of entries openraft should send at most (its `PayloadTooLarge` hint, at least 1);
/// `None` when the request fits or holds a single entry (which cannot be split; the peer's
/// message limit then refuses it and the error is reported as unreachable).
fn split_hint(entries: usize, bytes: usize, limit: usize) -> Option<u64> {
    if bytes <= limit || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * limit as u128 / bytes as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

/// Whether `status` comes from tonic's client-side deadline (a [`TimeoutExpired`] in its
/// source chain).
fn deadline_expired(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    /// Retry interval towards an unreachable peer: 100 ms (openraft's default is 500 ms),
    /// so a restarted replica hears from the leader well before its own election timer
    /// (at least 500 ms) could make it campaign and disrupt the leader.
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, NetError<openraft::error::Infallible>> {
        let payload = self.encode(RPCTypes::AppendEntries, &rpc)?;
        if let Some(hint) = split_hint(rpc.entries.len(), payload.len(), MAX_APPEND_BYTES) {
            tracing::debug!(
                group = %self.factory.group,
                target = self.target,
                entries = rpc.entries.len(),
                bytes = payload.len(),
                hint,
                "append batch over the message limit: asking openraft to split it"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call(RPCTypes::AppendEntries, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, NetError<InstallSnapshotError>> {
        let payload = self.encode(RPCTypes::InstallSnapshot, &rpc)?;
        self.call(RPCTypes::InstallSnapshot, payload, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, NetError<openraft::error::Infallible>> {
        let payload = self.encode(RPCTypes::Vote, &rpc)?;
        self.call(RPCTypes::Vote, payload, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_hint_shrinks_oversized_batches() {
        assert_eq!(split_hint(10, 100, 100), None, "fits exactly");
        assert_eq!(split_hint(1, 1000, 100), None, "one entry cannot be split");
        assert_eq!(split_hint(10, 1000, 100), Some(1));
        assert_eq!(split_hint(10, 200, 100), Some(5));
        assert_eq!(split_hint(100, 150, 100), Some(66));
        assert_eq!(
            split_hint(2, 101, 100),
            Some(1),
            "always fewer entries than sent"
        );
    }

    #[test]
    fn deadline_expired_finds_timeout_sources() {
        let status = Status::from_error(Box::new(TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        assert!(deadline_expired(&status));
        assert!(!deadline_expired(&Status::cancelled("client went away")));
    }
}
