//! The peer client: openraft's [`RaftNetworkV2`] over the `txpipe.raft.v1.RaftPeer` gRPC service
//! (see [`super::peer`]).
//!
//! - [`Channels`]: one lazily-connected gRPC channel (one HTTP/2 connection) per peer address,
//!   shared by every Raft group of the node and by the cluster code's [`status`] / [`join`].
//! - [`NetworkFactory`]: the per-group [`RaftNetworkFactory`]; its clients ([`PeerNetwork`])
//!   wrap each openraft request in a [`RaftRequest`] envelope (group, from, to, cluster id).
//!
//! Every RPC has a deadline, enforced locally (a Tokio timeout) and sent to the peer as
//! `grpc-timeout`, so the peer drops the work too:
//!
//! - AppendEntries carrying entries: the configured `rpc_timeout`. openraft 0.10 no longer cuts
//!   a replication RPC at the heartbeat interval (0.9 did); its `RPCOption` TTL for the
//!   replication stream is only advisory, and a follower that stores and fsyncs a batch while
//!   catching up under load needs more than 100 ms.
//! - Heartbeats (AppendEntries without entries), Vote, PreVote: openraft's
//!   `RPCOption::soft_ttl()` (3/4 of the heartbeat interval or the election timeout), at most
//!   `rpc_timeout`.
//! - Snapshot chunks: `rpc_timeout`; the last chunk, whose answer waits for the install on the
//!   follower, the larger of `rpc_timeout` and the soft TTL of openraft's install-snapshot
//!   timeout.
//!
//! Snapshots: openraft 0.10 hands the network a whole snapshot ([`RaftNetworkV2::full_snapshot`]);
//! [`PeerNetwork`] streams its file in chunks of openraft's `snapshot_max_chunk_size` (at most
//! [`MAX_SNAPSHOT_CHUNK_BYTES`]) through `InstallSnapshot` calls, each a [`SnapshotChunk`]; the
//! peer service reassembles them in a file and installs it with `Raft::install_full_snapshot`.
//!
//! Errors map to what openraft expects: a peer that cannot be reached, refuses the envelope,
//! answers garbage or answers with a fatal error of its Raft node (stopped, storage failure) is
//! [`Unreachable`] (openraft backs off before the next attempt); an expired deadline is
//! [`RPCError::Timeout`]; other transient transport failures are [`RPCError::Network`]
//! (openraft may retry at once). Failures are logged at debug level, and at warn level at most
//! once per peer every [`WARN_INTERVAL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, TimeoutExpired};

use super::peer::{
    JoinReply, JoinRequest, MAX_MESSAGE_BYTES, RaftPeerClient, RaftRequest, StatusReply,
    StatusRequest,
};
use super::{Node, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

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
    tls: Option<txpipe_client::tls::TlsOptions>,
    /// Changes of the TLS files: the cached channels are then dropped and
    /// [`Channels::generation`] moves on, so that new connections present the new certificate.
    tls_watch: Option<txpipe_client::tls::TlsWatch>,
    generation: std::sync::atomic::AtomicU64,
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
            tls: None,
            tls_watch: None,
            generation: std::sync::atomic::AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// The same cache dialling peers over mutual TLS with `tls` (this broker's certificate
    /// and CA) when given. The files are read when a peer's channel is created, and looked at
    /// every [`txpipe_client::tls::TLS_RECHECK_INTERVAL`]: when they changed, the cached
    /// channels are dropped (see [`Channels::generation`]).
    pub fn with_tls(self, tls: Option<txpipe_client::tls::TlsOptions>) -> Self {
        self.with_tls_recheck(tls, txpipe_client::tls::TLS_RECHECK_INTERVAL)
    }

    /// [`Channels::with_tls`] looking at the files every `interval` (tests).
    pub fn with_tls_recheck(
        mut self,
        tls: Option<txpipe_client::tls::TlsOptions>,
        interval: Duration,
    ) -> Self {
        self.tls_watch = tls
            .as_ref()
            .map(|t| txpipe_client::tls::TlsWatch::new(t, interval));
        self.tls = tls;
        self
    }

    /// A number that changes when the cached channels were dropped because the TLS files
    /// changed: a holder of a client made from an older generation should get a new one.
    pub fn generation(&self) -> u64 {
        use std::sync::atomic::Ordering;
        if let Some(w) = &self.tls_watch
            && w.changed()
        {
            self.peers.lock().expect("channels lock").clear();
            self.generation.fetch_add(1, Ordering::Relaxed);
            tracing::info!("TLS files changed: new peer connections use them");
        }
        self.generation.load(Ordering::Relaxed)
    }

    /// The channel to `peer_addr` (`host:port`, or a full `http://host:port` URI), created on
    /// first use. Does not connect; must be called within a Tokio runtime.
    ///
    /// Errors: INVALID_ARGUMENT when `peer_addr` is not a valid address.
    pub fn channel(&self, peer_addr: &str) -> Result<Channel, Status> {
        self.generation();
        let mut peers = self.peers.lock().expect("channels lock");
        if let Some(p) = peers.get(peer_addr) {
            return Ok(p.channel.clone());
        }
        let uri = match (&self.tls, peer_addr.split_once("://")) {
            (Some(_), Some(("http", rest))) => format!("https://{rest}"),
            (_, Some(_)) => peer_addr.to_string(),
            (Some(_), None) => format!("https://{peer_addr}"),
            (None, None) => format!("http://{peer_addr}"),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| {
            Status::invalid_argument(format!("invalid peer address '{peer_addr}': {e}"))
        })?;
        if let Some(tls) = &self.tls {
            let config = tls
                .client_config()
                .map_err(|e| Status::unavailable(format!("peer {peer_addr}: {e}")))?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Status::unavailable(format!("peer {peer_addr}: TLS: {e}")))?;
        }
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
    /// Upper bound of every RPC's deadline (see the module docs).
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
    /// The client and the [`Channels::generation`] it was made in.
    client: Option<(u64, RaftPeerClient<Channel>)>,
}

/// The peer RPCs that carry openraft messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
}

impl Rpc {
    /// openraft's name of the RPC (for its `Timeout` error; pre-vote counts as a vote).
    fn openraft_type(self) -> RPCTypes {
        match self {
            Rpc::AppendEntries => RPCTypes::AppendEntries,
            Rpc::Vote | Rpc::PreVote => RPCTypes::Vote,
            Rpc::InstallSnapshot => RPCTypes::InstallSnapshot,
        }
    }
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The error type openraft expects from a network call.
type NetError = RPCError<TypeConfig>;

/// One piece of a snapshot transfer, postcard-encoded in an `InstallSnapshot` call. The chunks
/// of one transfer are sent in order, from offset 0; the last one has `done` and makes the
/// receiver install the reassembled file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The leader's vote (a receiver that has seen a higher one answers with it).
    pub vote: Vote,
    /// The snapshot's metadata (the same in every chunk of a transfer).
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot file.
    pub offset: u64,
    /// The bytes (a postcard byte string, not a sequence of integers).
    #[serde(with = "byte_string")]
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// Serde of [`Bytes`] as a byte string.
mod byte_string {
    use bytes::Bytes;

    pub fn serialize<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Largest snapshot chunk sent, bytes (openraft's `snapshot_max_chunk_size` applies when
/// smaller): well below [`MAX_MESSAGE_BYTES`].
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 16 << 20;

impl PeerNetwork {
    /// Encodes an openraft request.
    ///
    /// Errors: [`Unreachable`] (logged) when it does not encode, which would be a bug.
    fn encode<Req: Serialize>(&self, rpc: Rpc, req: &Req) -> Result<Vec<u8>, NetError> {
        postcard::to_allocvec(req).map_err(|e| self.unreachable(rpc, &e))
    }

    /// The deadline of a call whose openraft TTL is `option` (see the module docs).
    fn deadline(&self, option: &RPCOption) -> Duration {
        let ttl = option.soft_ttl();
        if ttl.is_zero() {
            self.factory.rpc_timeout
        } else {
            ttl.min(self.factory.rpc_timeout)
        }
    }

    /// Sends one encoded Raft RPC with deadline `timeout` and decodes the answer.
    async fn call<Resp>(
        &mut self,
        rpc: Rpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, NetError>
    where
        Resp: DeserializeOwned,
    {
        let f = &self.factory;
        let generation = f.channels.generation();
        if self.client.as_ref().is_none_or(|c| c.0 != generation) {
            let client = f
                .channels
                .client(&self.node.peer_addr)
                .map_err(|e| self.unreachable(rpc, &e))?;
            self.client = Some((generation, client));
        }
        let mut client = self.client.clone().expect("client set above").1;
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
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(self.timeout(rpc, timeout)),
            Ok(Err(status)) => return Err(self.map_status(rpc, status, timeout)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match postcard::from_bytes::<Result<Resp, RaftError<TypeConfig>>>(&reply.payload) {
            Ok(Ok(resp)) => Ok(resp),
            // The remote Raft node failed (stopped, storage error): nothing to retry at once.
            Ok(Err(e)) => Err(self.unreachable(
                rpc,
                &AnyError::error(format!("node {} answered: {e}", self.target)),
            )),
            Err(e) => Err(self.unreachable(
                rpc,
                &AnyError::error(format!("undecodable {rpc} reply: {e}")),
            )),
        }
    }

    /// An [`Unreachable`] error for `e` (logged): openraft backs off before retrying.
    fn unreachable(&self, rpc: Rpc, e: &(impl std::error::Error + 'static)) -> NetError {
        self.log(rpc, e);
        RPCError::Unreachable(Unreachable::new(e))
    }

    /// A [`Timeout`] error (logged).
    fn timeout(&self, rpc: Rpc, timeout: Duration) -> NetError {
        let t = Timeout {
            action: rpc.openraft_type(),
            id: self.factory.self_id,
            target: self.target,
            timeout,
        };
        self.log(rpc, &t);
        RPCError::Timeout(t)
    }

    /// Maps a failed call's status to openraft's error kinds (see the module docs).
    fn map_status(&self, rpc: Rpc, status: Status, timeout: Duration) -> NetError {
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
            // node or cluster, a snapshot chunk out of order), NOT_FOUND (group not started
            // there yet), INVALID_ARGUMENT, UNIMPLEMENTED, RESOURCE_EXHAUSTED, INTERNAL...:
            // retrying at once will not help.
            _ => self.unreachable(rpc, &status),
        }
    }

    fn log(&self, rpc: Rpc, e: &dyn std::fmt::Display) {
        let f = &self.factory;
        f.channels.log_failure(
            &self.node.peer_addr,
            &f.group,
            &format!("{rpc} to node {}", self.target),
            e,
        );
    }

    /// Streams `snapshot` to the target in [`SnapshotChunk`]s (see the module docs).
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(MAX_SNAPSHOT_CHUNK_BYTES)
            .clamp(1, MAX_SNAPSHOT_CHUNK_BYTES);
        let last_timeout = option.soft_ttl().max(self.factory.rpc_timeout);
        let Snapshot {
            meta,
            snapshot: mut file,
        } = snapshot;
        let len = file
            .metadata()
            .await
            .map_err(|e| self.snapshot_read_error(&e))?
            .len();
        let mut offset = 0u64;
        loop {
            let want = (len - offset).min(chunk_bytes as u64) as usize;
            let mut data = vec![0u8; want];
            file.read_exact(&mut data)
                .await
                .map_err(|e| self.snapshot_read_error(&e))?;
            let done = offset + want as u64 >= len;
            let chunk = SnapshotChunk {
                vote,
                meta: meta.clone(),
                offset,
                data: Bytes::from(data),
                done,
            };
            let payload = self
                .encode(Rpc::InstallSnapshot, &chunk)
                .map_err(to_streaming)?;
            let timeout = if done {
                last_timeout
            } else {
                self.factory.rpc_timeout
            };
            let reply: Option<SnapshotResponse<TypeConfig>> = self
                .call(Rpc::InstallSnapshot, payload, timeout)
                .await
                .map_err(to_streaming)?;
            match reply {
                // The receiver has seen a higher vote, or installed the snapshot.
                Some(resp) => return Ok(resp),
                None if done => {
                    return Err(to_streaming(self.unreachable(
                        Rpc::InstallSnapshot,
                        &AnyError::error("the last snapshot chunk was not answered with a vote"),
                    )));
                }
                None => offset += want as u64,
            }
        }
    }

    /// An [`Unreachable`] streaming error for a local snapshot file read failure (logged).
    fn snapshot_read_error(&self, e: &std::io::Error) -> StreamingError<TypeConfig> {
        to_streaming(self.unreachable(
            Rpc::InstallSnapshot,
            &AnyError::error(format!("reading the snapshot file: {e}")),
        ))
    }
}

/// A snapshot transfer's error from a call's error.
fn to_streaming(e: NetError) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => match r.source {},
    }
}

/// Largest encoded AppendEntries request sent: [`MAX_MESSAGE_BYTES`] minus 64 KiB for the
/// envelope and gRPC framing.
pub const MAX_APPEND_BYTES: usize = MAX_MESSAGE_BYTES - (64 << 10);

/// When an AppendEntries request of `entries` entries encodes to `bytes` bytes, over `limit`,
/// the number of entries to send in this call (at least 1, fewer than `entries`); `None` when
/// the request fits or holds a single entry (which cannot be split; the peer's message limit
/// then refuses it and the error is reported as unreachable).
fn split_hint(entries: usize, bytes: usize, limit: usize) -> Option<usize> {
    if bytes <= limit || entries <= 1 {
        return None;
    }
    let fit = (entries as u128 * limit as u128 / bytes as u128) as usize;
    Some(fit.clamp(1, entries - 1))
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

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotData;

    /// Sends one AppendEntries. A request over [`MAX_APPEND_BYTES`] is cut to the entries that
    /// fit (openraft 0.10 has no "payload too large" error any more): the peer gets that prefix
    /// and a success is reported to openraft as `PartialSuccess` up to its last entry, so the
    /// rest follows in the next request.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, NetError> {
        let mut payload = self.encode(Rpc::AppendEntries, &rpc)?;
        let mut cut = false;
        while let Some(keep) = split_hint(rpc.entries.len(), payload.len(), MAX_APPEND_BYTES) {
            tracing::debug!(
                group = %self.factory.group,
                target = self.target,
                entries = rpc.entries.len(),
                bytes = payload.len(),
                keep,
                "append batch over the message limit: sending a prefix"
            );
            rpc.entries.truncate(keep);
            payload = self.encode(Rpc::AppendEntries, &rpc)?;
            cut = true;
        }
        let timeout = if rpc.entries.is_empty() {
            self.deadline(&option)
        } else {
            self.factory.rpc_timeout
        };
        let last = rpc.entries.last().map(|e| e.log_id);
        let resp = self.call(Rpc::AppendEntries, payload, timeout).await?;
        Ok(match resp {
            AppendEntriesResponse::Success if cut => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, NetError> {
        let payload = self.encode(Rpc::Vote, &rpc)?;
        let timeout = self.deadline(&option);
        self.call(Rpc::Vote, payload, timeout).await
    }

    /// Pre-vote over its own `PreVote` call. A peer that cannot be reached answers nothing,
    /// which openraft does not count as a grant, so an isolated node never raises its term.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, NetError> {
        let payload = self.encode(Rpc::PreVote, &rpc)?;
        let timeout = self.deadline(&option);
        self.call(Rpc::PreVote, payload, timeout).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.send_snapshot(vote, snapshot, &option) => r,
        }
    }

    /// Retry interval towards an unreachable peer: 100 ms (openraft's default starts at
    /// 200 ms and doubles), so a restarted replica hears from the leader well before its own
    /// election timer (at least 300 ms) fires.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_channels_move_to_a_new_generation_when_the_tls_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, n).unwrap();
            p
        };
        let tls = txpipe_client::tls::TlsOptions {
            ca: p("ca.pem"),
            cert: p("broker.pem"),
            key: p("broker-key.pem"),
        };
        let channels = Channels::new(Duration::from_secs(1))
            .with_tls_recheck(Some(tls.clone()), Duration::ZERO);
        let g = channels.generation();
        assert_eq!(channels.generation(), g, "nothing changed");
        std::fs::write(&tls.cert, "the rotated certificate").unwrap();
        assert_eq!(channels.generation(), g + 1);
        assert_eq!(channels.generation(), g + 1);
        // Without TLS there is nothing to watch.
        assert_eq!(Channels::default().generation(), 0);
    }

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
