//! The peer gRPC service `txpipe.raft.v1.RaftPeer`: Raft traffic between broker nodes, on its
//! own port (`--peer-listen`), separate from client traffic.
//!
//! One service carries every Raft group of the node: each [`RaftRequest`] names its group (the
//! stream) and the node it is addressed to, and carries openraft's own request, postcard-encoded
//! (see `proto/txpipe/raft/v1/raft.proto`). [`PeerService`] checks the envelope, finds the group
//! through a [`PeerHandler`] (implemented by the cluster code) and hands the request to that
//! group's `openraft::Raft`; openraft's answer (or its error) goes back encoded the same way.
//! Snapshot chunks ([`SnapshotChunk`]) are written to `snapshot.recv` in the group's directory
//! ([`PeerHandler::snapshot_dir`]) and the file is installed with `Raft::install_full_snapshot`
//! when the last chunk arrives. The client side is [`super::network`].

use openraft::async_runtime::watch::WatchReceiver as _;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::error::RaftError;
use openraft::raft::SnapshotResponse;
use openraft::storage::RaftStateMachine;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tonic::{Request, Response, Status};

use super::network::SnapshotChunk;
use crate::auth::{Acl, Operation};
use crate::raft::{LogId, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

/// An openraft node of a group whose state machine is `SM`.
pub type GroupRaft<SM> = openraft::Raft<TypeConfig, SM>;

/// Generated protobuf and gRPC code of `txpipe.raft.v1` (from `proto/txpipe/raft/v1/raft.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("txpipe.raft.v1");
}

pub use proto::raft_peer_client::RaftPeerClient;
pub use proto::raft_peer_server::RaftPeerServer;
pub use proto::{
    GroupStatus, JoinReply, JoinRequest, RaftReply, RaftRequest, StatusReply, StatusRequest,
};

/// Encoded `FileDescriptorSet` of `txpipe.raft.v1`, for gRPC server reflection on the peer port.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("txpipe_raft_descriptor");

/// Largest peer message, in bytes, accepted and sent by both the peer server and the peer
/// client: 64 MiB, room for a snapshot chunk (openraft's `snapshot_max_chunk_size`, 3 MiB by
/// default) or an append batch of up to `max_payload_entries` entries of coalesced produce
/// batches.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What the peer service needs from the node: its identity and its Raft groups. Implemented by
/// the cluster code; every method is called once per request, so they must be cheap.
pub trait PeerHandler: Send + Sync + 'static {
    /// The state machine of the node's groups (the broker's [`crate::raft::store::StateMachine`];
    /// tests use their own).
    type Sm: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>;

    /// This node's Raft node id. Requests addressed to another id are refused with
    /// FAILED_PRECONDITION.
    fn node_id(&self) -> NodeId;

    /// This node's cluster id, `""` while it is not known (not bootstrapped or joined yet).
    fn cluster_id(&self) -> String;

    /// The Raft group of stream `name`, if this node hosts it.
    fn group(&self, name: &str) -> Option<GroupRaft<Self::Sm>>;

    /// The directory in which a snapshot sent to group `name` is reassembled (as
    /// `snapshot.recv`), if this node hosts it.
    fn snapshot_dir(&self, name: &str) -> Option<PathBuf>;

    /// This node's identity and its view of every group (answers `Status`).
    fn status(&self) -> impl Future<Output = StatusReply> + Send;

    /// Handles a `Join` from another node (add it to every group).
    ///
    /// Errors: the gRPC status to answer with (UNAVAILABLE with a leader hint when this node is
    /// not the leader, for example).
    fn join(&self, req: JoinRequest) -> impl Future<Output = Result<JoinReply, Status>> + Send;
}

/// The `txpipe.raft.v1.RaftPeer` service over a [`PeerHandler`]. Build the tonic server with
/// [`server`].
pub struct PeerService<H> {
    handler: Arc<H>,
    /// Who may call (only brokers and the operator, when TLS is on).
    acl: Acl,
    /// Snapshot transfers in progress, by group.
    receiving: tokio::sync::Mutex<HashMap<String, Receiving>>,
}

/// A snapshot transfer being received.
struct Receiving {
    vote: Vote,
    last_log_id: Option<LogId>,
    /// Bytes received so far (the offset the next chunk must have).
    offset: u64,
    file: tokio::fs::File,
}

/// The name of the file a snapshot is reassembled in, inside [`PeerHandler::snapshot_dir`].
pub const RECEIVE_FILE: &str = "snapshot.recv";

impl<H: PeerHandler> PeerService<H> {
    /// A service answering for `handler`'s node.
    pub fn new(handler: Arc<H>) -> Self {
        Self {
            handler,
            acl: Acl::default(),
            receiving: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The same service with calls checked by `acl` (every RaftPeer call is allowed to the
    /// `broker` and `operator` roles only, see [`crate::auth`]).
    pub fn with_acl(mut self, acl: Acl) -> Self {
        self.acl = acl;
        self
    }

    /// Checks the envelope and finds the group.
    ///
    /// Errors: FAILED_PRECONDITION (wrong node id or cluster id), NOT_FOUND (unknown group).
    fn route(&self, req: &RaftRequest) -> Result<GroupRaft<H::Sm>, Status> {
        let me = self.handler.node_id();
        if req.to != me {
            return Err(Status::failed_precondition(format!(
                "addressed to node {} but this is node {me} (its volume was replaced?)",
                req.to
            )));
        }
        if !req.cluster_id.is_empty() {
            let local = self.handler.cluster_id();
            if !local.is_empty() && local != req.cluster_id {
                return Err(Status::failed_precondition(format!(
                    "node {} belongs to cluster '{}' but node {me} belongs to cluster '{local}'",
                    req.from, req.cluster_id
                )));
            }
        }
        self.handler.group(&req.group).ok_or_else(|| {
            Status::not_found(format!("node {me} has no Raft group '{}'", req.group))
        })
    }

    /// Checks the envelope, finds the group and decodes the payload as `Req`.
    ///
    /// Errors: those of [`Self::route`], INVALID_ARGUMENT (undecodable payload).
    fn open<Req: DeserializeOwned>(
        &self,
        rpc: &'static str,
        req: &RaftRequest,
    ) -> Result<(GroupRaft<H::Sm>, Req), Status> {
        let raft = self.route(req).inspect_err(|status| {
            tracing::debug!(rpc, group = %req.group, from = req.from, to = req.to, %status, "peer RPC refused");
        })?;
        let msg: Req = decode_request(rpc, req)?;
        Ok((raft, msg))
    }

    /// Encodes openraft's result of an RPC as the reply.
    ///
    /// Errors: INTERNAL (the answer does not encode, which would be a bug).
    fn reply<Resp, E>(
        rpc: &'static str,
        req: &RaftRequest,
        result: Result<Resp, RaftError<TypeConfig, E>>,
    ) -> Result<Response<RaftReply>, Status>
    where
        Resp: Serialize,
        E: Serialize + std::fmt::Debug,
    {
        if let Err(e) = &result {
            tracing::debug!(rpc, group = %req.group, from = req.from, error = ?e, "Raft refused a peer RPC");
        }
        let payload = postcard::to_allocvec(&result)
            .map_err(|e| Status::internal(format!("{rpc} reply does not encode: {e}")))?;
        Ok(Response::new(RaftReply {
            payload: Bytes::from(payload),
        }))
    }

    /// Decodes the payload as `Req`, calls `f` on the group and encodes its result.
    ///
    /// Errors: those of [`Self::open`] and [`Self::reply`].
    async fn serve<Req, Resp, E, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<RaftRequest>,
        f: F,
    ) -> Result<Response<RaftReply>, Status>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: Serialize + std::fmt::Debug,
        F: FnOnce(GroupRaft<H::Sm>, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<TypeConfig, E>>>,
    {
        self.acl.check(&request, Operation::Peer(rpc), "")?;
        let req = request.into_inner();
        let (raft, msg) = self.open::<Req>(rpc, &req)?;
        let result = f(raft, msg).await;
        Self::reply(rpc, &req, result)
    }

    /// Stores one snapshot chunk; installs the snapshot on the last one. Returns the answer
    /// for the sender: `None` (stored) or the node's vote.
    ///
    /// Errors: NOT_FOUND (no directory for the group), FAILED_PRECONDITION (the chunk does not
    /// continue the transfer in progress), INTERNAL (the file cannot be written).
    async fn receive_chunk(
        &self,
        group: &str,
        raft: &GroupRaft<H::Sm>,
        chunk: SnapshotChunk,
    ) -> Result<Result<Option<SnapshotResponse<TypeConfig>>, RaftError<TypeConfig>>, Status> {
        let mine = raft.metrics().borrow_watched().vote;
        if mine.partial_cmp(&chunk.vote) == Some(std::cmp::Ordering::Greater) {
            self.receiving.lock().await.remove(group);
            return Ok(Ok(Some(SnapshotResponse::new(mine))));
        }
        let internal = |e: std::io::Error| {
            Status::internal(format!("group '{group}': writing {RECEIVE_FILE}: {e}"))
        };
        let mut rx = {
            let mut receiving = self.receiving.lock().await;
            let current = receiving.remove(group);
            if chunk.offset == 0 {
                let dir = self.handler.snapshot_dir(group).ok_or_else(|| {
                    Status::not_found(format!("no snapshot directory for group '{group}'"))
                })?;
                let file = tokio::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join(RECEIVE_FILE))
                    .await
                    .map_err(internal)?;
                Receiving {
                    vote: chunk.vote,
                    last_log_id: chunk.meta.last_log_id,
                    offset: 0,
                    file,
                }
            } else {
                match current {
                    Some(r)
                        if r.vote == chunk.vote
                            && r.last_log_id == chunk.meta.last_log_id
                            && r.offset == chunk.offset =>
                    {
                        r
                    }
                    other => {
                        return Err(Status::failed_precondition(format!(
                            "group '{group}': snapshot chunk at offset {} (snapshot {:?}) does not continue the transfer in progress ({:?})",
                            chunk.offset,
                            chunk.meta.last_log_id,
                            other.map(|r| (r.offset, r.last_log_id))
                        )));
                    }
                }
            }
        };
        rx.file.write_all(&chunk.data).await.map_err(internal)?;
        rx.offset += chunk.data.len() as u64;
        if !chunk.done {
            self.receiving.lock().await.insert(group.to_string(), rx);
            return Ok(Ok(None));
        }
        rx.file.flush().await.map_err(internal)?;
        rx.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(internal)?;
        let snapshot = Snapshot {
            meta: chunk.meta,
            snapshot: rx.file,
        };
        let installed = raft.install_full_snapshot(chunk.vote, snapshot).await;
        // Installed or refused, the received file has served (a retry starts a new transfer
        // at offset 0): disk use stays within the retained data.
        if let Some(dir) = self.handler.snapshot_dir(group)
            && let Err(e) = tokio::fs::remove_file(dir.join(RECEIVE_FILE)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(group, error = %e, "could not remove {RECEIVE_FILE}");
        }
        Ok(installed.map(Some).map_err(RaftError::Fatal))
    }
}

/// Decodes the payload of a Raft RPC envelope as openraft's request `Req` (postcard), as
/// the peer service does before handing it to the group (also the entry point of the
/// `peer_request` fuzz target, see docs/fuzzing.md).
///
/// Errors: INVALID_ARGUMENT naming the RPC, the group and postcard's reason.
#[allow(clippy::result_large_err)] // tonic's Status, returned as is.
pub fn decode_request<Req: DeserializeOwned>(
    rpc: &'static str,
    req: &RaftRequest,
) -> Result<Req, Status> {
    postcard::from_bytes(&req.payload).map_err(|e| {
        tracing::debug!(rpc, group = %req.group, from = req.from, error = %e, "undecodable peer RPC");
        Status::invalid_argument(format!(
            "{rpc} payload for group '{}' does not decode: {e}",
            req.group
        ))
    })
}

#[tonic::async_trait]
impl<H: PeerHandler> proto::raft_peer_server::RaftPeer for PeerService<H> {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.serve("AppendEntries", request, |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.serve(
            "Vote",
            request,
            |raft, rpc| async move { raft.vote(rpc).await },
        )
        .await
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.serve("PreVote", request, |raft, rpc| async move {
            raft.pre_vote(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.acl
            .check(&request, Operation::Peer("InstallSnapshot"), "")?;
        let req = request.into_inner();
        let (raft, chunk) = self.open::<SnapshotChunk>("InstallSnapshot", &req)?;
        let result = self.receive_chunk(&req.group, &raft, chunk).await?;
        Self::reply("InstallSnapshot", &req, result)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.acl.check(&request, Operation::Peer("Status"), "")?;
        Ok(Response::new(self.handler.status().await))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        self.acl.check(&request, Operation::Peer("Join"), "")?;
        let req = request.into_inner();
        tracing::debug!(node_id = req.node_id, addr = %req.addr, peer_addr = %req.peer_addr, ordinal = req.ordinal, "join request");
        self.handler.join(req).await.map(Response::new)
    }
}

/// The tonic service of the peer port for `handler`'s node, with message limits of
/// [`MAX_MESSAGE_BYTES`] both ways. Add it to a `tonic::transport::Server` on the peer listener.
pub fn server<H: PeerHandler>(handler: Arc<H>) -> RaftPeerServer<PeerService<H>> {
    server_with_acl(handler, Acl::default())
}

/// [`server`] with calls checked by `acl` (see [`PeerService::with_acl`]).
pub fn server_with_acl<H: PeerHandler>(
    handler: Arc<H>,
    acl: Acl,
) -> RaftPeerServer<PeerService<H>> {
    RaftPeerServer::new(PeerService::new(handler).with_acl(acl))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
