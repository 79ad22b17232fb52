//! Replication of each stream through Raft ([openraft] `=0.10.0-alpha.37`, pinned exactly in
//! the workspace `Cargo.toml` with the `serde`, `tokio-rt` and `type-alias` features).
//!
//! Every stream is its own Raft group (a "multi-Raft" broker: the four standard streams are
//! four groups on the same nodes, each with its own leader, term and log). The group's Raft
//! log *is* the stream's segmented log ([`crate::log`]); the state machine is the stream's
//! [`crate::state::StreamState`]. The pieces:
//!
//! - this module: the openraft type configuration ([`TypeConfig`]) and aliases of its types
//!   ([`LogId`], [`Vote`], [`SnapshotMeta`], ...), node identity and addresses ([`Node`]), log
//!   entry data ([`EntryData`]) and its on-disk encoding ([`encode_entry`] / [`decode_entry`]),
//!   and the quorum-lease view of a leader ([`has_quorum_lease`]);
//! - [`store`]: `RaftLogStorage` over the segmented log and `RaftStateMachine` over the stream
//!   state, snapshots and install-snapshot;
//! - [`install`]: the staged, redo-able snapshot install (crash-safe);
//! - [`network`]: the peer client (`RaftNetworkV2`; one cached gRPC channel per peer, deadlines
//!   on every RPC, snapshots streamed in chunks);
//! - [`peer`]: the peer gRPC service (`txpipe.raft.v1.RaftPeer`) on its own port;
//! - [`cluster`]: node identity on the volume, bootstrap, membership changes.
//!
//! Snapshot data is a file (`tokio::fs::File`), not a buffer: a snapshot sent to a follower
//! carries the stream's retained records as well as its state, which can be gigabytes.
//!
//! ## Why openraft 0.10.0-alpha.37
//!
//! 0.9 (the stable line we used before) has no pre-vote: a follower that was paused or cut off
//! raised its term on every election timeout and deposed the healthy leader when it came back
//! (0.9's leader lease only stopped it from *winning*). We worked around it by holding a
//! restarted replica's elections for 2× the election timeout, which did nothing for a
//! partition. 0.10 brings, all used here:
//!
//! - **Pre-vote** (`Config::enable_pre_vote = Some(true)`, the `PreVote` peer RPC): a node asks
//!   "would you vote for me at term + 1?" before raising its term; peers with a valid leader
//!   lease say no, and an unreachable peer counts as no, so a partitioned node's term stays put.
//! - **Check-quorum / quorum lease**: a leader records when a quorum last acknowledged it
//!   (`RaftMetrics::last_quorum_acked`) and refuses new proposals once that is older than
//!   `election_timeout_max`; with `quorum_loss_probe_interval` it also mutes its heartbeats in
//!   alternating periods, so followers it can still reach let their lease lapse and can elect.
//!   openraft keeps such a leader in state `Leader` until it sees a higher term;
//!   [`has_quorum_lease`] / `Replica::has_quorum_lease` say whether it really leads.
//! - **Pipelined log I/O**: `RaftCore` no longer waits for one append's flush before submitting
//!   the next, so the group-commit writer can put several Raft entries under one fdatasync.
//!
//! The price is an alpha API: the exact version is pinned (`=`), and moving to another alpha is
//! a deliberate change like this one. The upgrade guide in openraft's `docs::upgrade_guide` and
//! the list below are the checklist.
//!
//! ## What changed in the API for our glue (0.9.25 → 0.10.0-alpha.37)
//!
//! - `declare_raft_types!` → a hand-written `RaftTypeConfig` (the macro cannot name the
//!   generic `Responder<T>`): new `Term`, `LeaderId` (`leader_id_adv::LeaderId`, same wire and
//!   JSON form as 0.9's `CommittedLeaderId`), `Vote`, `Payload`, `Batch`, `ErrorSource`,
//!   `Responder<T> = OneshotResponder` (proposals get a oneshot receiver from
//!   `client_write_ff(data, Some(responder))`). `SnapshotData` moved off the type config onto
//!   `RaftStateMachine` and the network (`Raft::new` requires them equal).
//! - `LogId<NodeId>`, `Vote<NodeId>`, `SnapshotMeta<NodeId, Node>`,
//!   `StoredMembership<NodeId, Node>` → `LogId<LeaderId>` etc., used here through the aliases of
//!   this module; `CommittedLeaderId::new(t, n)` → `LeaderId { term, node_id }` ([`log_id`]).
//!   `SnapshotMeta` lost `snapshot_id` (0.9 files still load: the field is ignored on read).
//!   `Membership::new` returns a `Result`.
//! - `openraft::Raft<C>` → `openraft::Raft<C, SM>` (the state machine type is a parameter).
//! - Storage: every method returns `std::io::Error` instead of `StorageError`;
//!   `LogFlushed::log_io_completed` → `IOFlushed::io_completed` (still called only after the
//!   group-commit writer reports the fdatasync); `read_vote` moved to `RaftLogReader`;
//!   `truncate(log_id)` (from, inclusive) → `truncate_after(Option<LogId>)` (after, exclusive);
//!   `apply` takes a stream of `(entry, Option<ApplyResponder>)` and answers each responder
//!   instead of returning a `Vec`; `begin_receiving_snapshot` is gone (the network receives);
//!   `install_snapshot` takes the data unboxed. openraft's start-up calls
//!   `get_current_snapshot` (twice) before the node runs: until `Shared::set_raft_built`, it
//!   returns the metadata with an empty file instead of writing a transfer file.
//! - Network: `RaftNetwork` → `RaftNetworkV2`: `install_snapshot` chunks → one
//!   `full_snapshot(vote, snapshot, cancel, option)` (we still stream it in chunks over the
//!   `InstallSnapshot` RPC, now with our own [`network::SnapshotChunk`], and the receiver calls
//!   `Raft::install_full_snapshot`); new `pre_vote`; `backoff` returns `Option`.
//!   `RPCError<NodeId, Node, RaftError<..>>` → `RPCError<C>` without a remote-error variant for
//!   infallible RPCs (a remote fatal error is now `Unreachable`); `PayloadTooLarge` is gone (an
//!   oversized batch is cut and reported as `AppendEntriesResponse::PartialSuccess`).
//!   `RPCOption::soft_ttl()` is the deadline to enforce; openraft no longer cuts a replication
//!   RPC at the heartbeat interval itself.
//! - Metrics: `raft.metrics()` is a runtime-neutral watch (`borrow_watched`, `wait_until`);
//!   new `last_quorum_acked`, `local_committed` / `cluster_committed`.
//! - Config: new `enable_pre_vote`, `quorum_loss_probe_interval` (set here, see
//!   `crate::broker::raft_config`), `backoff`, `heartbeat_min_interval`, ...;
//!   `ensure_linearizable` takes a `ReadPolicy`; `ClientWriteError::LogEntryDiscarded` is new.

pub mod cluster;
pub mod install;
pub mod network;
pub mod peer;
pub mod store;

use bytes::{Buf, Bytes};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::command::Command;
use crate::state::ApplyOutcome;

/// Raft node id. The first incarnation of the replica with ordinal `i` has id `i`; a replica
/// that starts on an empty volume after the cluster was bootstrapped gets a fresh random id
/// (see [`cluster`]), so a node that lost its log never rejoins under its old identity.
pub type NodeId = u64;

/// Addresses of a node, stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Client gRPC address `host:port` (what leader hints point clients to).
    pub addr: String,
    /// Peer gRPC address `host:port` (Raft traffic).
    pub peer_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{addr: {}, peer: {}}}", self.addr, self.peer_addr)
    }
}

/// The data of one normal Raft entry: the commands of one or more proposals, coalesced, in
/// order. Serialised (peer RPCs) as one byte string in the layout of [`encode_commands`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntryData {
    /// The commands.
    pub cmds: Vec<Command>,
}

impl fmt::Display for EntryData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} commands", self.cmds.len())
    }
}

impl Serialize for EntryData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        encode_commands(&mut buf, &self.cmds);
        s.serialize_bytes(&buf)
    }
}

impl<'de> Deserialize<'de> for EntryData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EntryData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("encoded txpipe commands")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<EntryData, E> {
                decode_commands(Bytes::copy_from_slice(v))
                    .map(|cmds| EntryData { cmds })
                    .map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<EntryData, E> {
                decode_commands(Bytes::from(v))
                    .map(|cmds| EntryData { cmds })
                    .map_err(E::custom)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What applying one entry produced: one outcome per command (empty for blank and membership
/// entries). Never sent over the network; the serde impls exist for openraft's bounds and
/// carry nothing.
#[derive(Debug, Clone, Default)]
pub struct EntryResponse {
    /// Outcomes, in command order.
    pub outcomes: Vec<ApplyOutcome>,
}

impl Serialize for EntryResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for EntryResponse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| EntryResponse::default())
    }
}

/// openraft type configuration of a stream's Raft group. Leader ids are openraft's default
/// `leader_id_adv::LeaderId` (`term` + `node_id`), whose JSON and postcard forms equal 0.9's
/// `CommittedLeaderId`, so vote and log id files written by 0.9 still load. Proposals are
/// answered through a oneshot channel per entry (`OneshotResponder`; `declare_raft_types!`
/// cannot name a generic associated type, so this is written out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = EntryData;
    type R = EntryResponse;
    type NodeId = NodeId;
    type Node = Node;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = EntryPayload<EntryData, NodeId, Node>;
    type Entry = openraft::Entry<Self::LeaderId, Self::Payload>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder<T>
        = openraft::impls::OneshotResponder<Self, T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// A Raft handle of one stream group.
pub type Raft = openraft::Raft<TypeConfig, store::StateMachine>;
/// A log entry of a stream group.
pub type RaftEntry = openraft::alias::EntryOf<TypeConfig>;
/// Leader id of a term (`term`, `node_id`).
pub type LeaderId = openraft::alias::LeaderIdOf<TypeConfig>;
/// Log id of an entry (leader id + index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote (leader id + whether a quorum granted it).
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A membership (voter sets and node addresses).
pub type Membership = openraft::Membership<NodeId, Node>;
/// A membership with the log id of the entry that holds it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata (last included log id and membership).
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Snapshot data of a stream group: a file (see the module docs).
pub type SnapshotData = tokio::fs::File;
/// A snapshot of a stream group as openraft hands it around.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Raft metrics of a group (openraft's watch value).
pub type Metrics = openraft::RaftMetrics<TypeConfig>;

/// For a leader, how long ago a quorum last acknowledged it: the age of the send time of the
/// newest heartbeat or append that a quorum answered (`RaftMetrics::last_quorum_acked`, an
/// absolute time, so this is current even when the metrics were published a while ago).
/// `None` on a non-leader, or before the first quorum acknowledgement of its term.
pub fn quorum_ack_age(m: &Metrics) -> Option<std::time::Duration> {
    use openraft::Instant as _;
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    m.last_quorum_acked.map(|t| t.into_inner().elapsed())
}

/// Whether the node of `m` leads its group **and** holds a valid quorum lease: a quorum
/// acknowledged it less than `lease` ago (openraft uses `election_timeout_max`), or it is the
/// only voter. openraft 0.10 keeps a leader cut off from its followers in state `Leader` (until
/// it hears of a higher term) but refuses its new proposals once this is false.
pub fn has_quorum_lease(m: &Metrics, lease: std::time::Duration) -> bool {
    if m.state != openraft::ServerState::Leader {
        return false;
    }
    if m.membership_config.membership().voter_ids().count() <= 1 {
        return true;
    }
    quorum_ack_age(m).is_some_and(|age| age < lease)
}

/// The log id of entry `index` written by the leader of `term` (node `node_id`).
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}

/// Version byte of an encoded Raft entry (version 1 was the single-node command entry).
pub const ENTRY_VERSION: u8 = 2;
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Appends `[count u32 LE]` then `[len u32 LE][command]` per command to `out`.
pub fn encode_commands(out: &mut Vec<u8>, cmds: &[Command]) {
    out.extend_from_slice(&(cmds.len() as u32).to_le_bytes());
    for c in cmds {
        let b = c.encode();
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&b);
    }
}

/// Decodes the layout of [`encode_commands`] (the whole buffer).
///
/// Errors: a description of the first malformed or truncated field.
pub fn decode_commands(mut buf: Bytes) -> Result<Vec<Command>, String> {
    if buf.remaining() < 4 {
        return Err("command count truncated".into());
    }
    let n = buf.get_u32_le() as usize;
    let mut cmds = Vec::with_capacity(n.min(1 << 16));
    for i in 0..n {
        if buf.remaining() < 4 {
            return Err(format!("command {i}: length truncated"));
        }
        let len = buf.get_u32_le() as usize;
        if buf.remaining() < len {
            return Err(format!(
                "command {i}: {len} bytes announced, {} left",
                buf.remaining()
            ));
        }
        cmds.push(Command::decode(buf.split_to(len)).map_err(|e| format!("command {i}: {e}"))?);
    }
    if buf.has_remaining() {
        return Err(format!("{} trailing bytes", buf.remaining()));
    }
    Ok(cmds)
}

/// Encodes an entry for the segmented log:
/// `[version u8 = 2][term u64][leader node u64][index u64][kind u8][body]`, little endian,
/// where body is empty (blank), [`encode_commands`] (normal) or the membership as JSON.
/// The frame's CRC (see [`crate::log`]) covers all of it.
pub fn encode_entry(e: &RaftEntry) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&e.log_id.leader_id.term.to_le_bytes());
    out.extend_from_slice(&e.log_id.leader_id.node_id.to_le_bytes());
    out.extend_from_slice(&e.log_id.index.to_le_bytes());
    match &e.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(d) => {
            out.push(KIND_NORMAL);
            encode_commands(&mut out, &d.cmds);
        }
        EntryPayload::Membership(m) => {
            out.push(KIND_MEMBERSHIP);
            out.extend_from_slice(&serde_json::to_vec(m).expect("membership serialises to JSON"));
        }
    }
    Bytes::from(out)
}

/// Reads only the log id of an encoded entry.
///
/// Errors: a description when the header is truncated or of another version.
pub fn decode_log_id(buf: &[u8]) -> Result<LogId, String> {
    if buf.len() < 26 || buf[0] != ENTRY_VERSION {
        return Err(format!(
            "not a version {ENTRY_VERSION} Raft entry (length {}, first byte {:?})",
            buf.len(),
            buf.first()
        ));
    }
    let term = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
    let node = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes"));
    let index = u64::from_le_bytes(buf[17..25].try_into().expect("8 bytes"));
    Ok(log_id(term, node, index))
}

/// Decodes an entry written by [`encode_entry`].
///
/// Errors: a description of the malformed part.
pub fn decode_entry(buf: Bytes) -> Result<RaftEntry, String> {
    let log_id = decode_log_id(&buf)?;
    let body = buf.slice(26..);
    let payload = match buf[25] {
        // A blank entry has no body: bytes after it are corruption, not padding (the `entry`
        // fuzz target found them accepted and dropped).
        KIND_BLANK if !body.is_empty() => {
            return Err(format!("{} trailing bytes in a blank entry", body.len()));
        }
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(EntryData {
            cmds: decode_commands(body)?,
        }),
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice::<Membership>(&body).map_err(|e| format!("membership: {e}"))?,
        ),
        k => return Err(format!("unknown entry kind {k}")),
    };
    Ok(RaftEntry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use txpipe_client::broker::v1::Record;

    fn roundtrip(e: RaftEntry) {
        let b = encode_entry(&e);
        assert_eq!(decode_log_id(&b).unwrap(), e.log_id);
        let d = decode_entry(b).unwrap();
        assert_eq!(d.log_id, e.log_id);
        assert_eq!(format!("{:?}", d.payload), format!("{:?}", e.payload));
    }

    #[test]
    fn entries_roundtrip() {
        let id = log_id(7, 2, 42);
        roundtrip(RaftEntry {
            log_id: id,
            payload: EntryPayload::Blank,
        });
        roundtrip(RaftEntry {
            log_id: id,
            payload: EntryPayload::Normal(EntryData {
                cmds: vec![
                    Command::Append {
                        producer_id: 9,
                        epoch: 1,
                        sequence: 3,
                        position: 0,
                        records: vec![Record {
                            key: b"k".to_vec().into(),
                            value: b"v".to_vec().into(),
                            timestamp_us: 5,
                        }],
                    },
                    Command::Ack {
                        offsets: vec![1, 2, 3],
                    },
                ],
            }),
        });
        let mut nodes = BTreeMap::new();
        nodes.insert(
            0,
            Node {
                addr: "a:1".into(),
                peer_addr: "a:2".into(),
            },
        );
        nodes.insert(
            1,
            Node {
                addr: "b:1".into(),
                peer_addr: "b:2".into(),
            },
        );
        let m = Membership::new(vec![BTreeSet::from([0, 1])], nodes).unwrap();
        roundtrip(RaftEntry {
            log_id: id,
            payload: EntryPayload::Membership(m),
        });
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(decode_entry(Bytes::from_static(b"\x01abc")).is_err());
        let id = log_id(1, 0, 1);
        let mut b = encode_entry(&RaftEntry {
            log_id: id,
            payload: EntryPayload::Normal(EntryData {
                cmds: vec![Command::Trim { start_offset: 4 }],
            }),
        })
        .to_vec();
        b.truncate(b.len() - 1);
        assert!(decode_entry(Bytes::from(b)).is_err());
    }

    #[test]
    fn entry_data_serde_roundtrip() {
        let d = EntryData {
            cmds: vec![Command::Ack { offsets: vec![5] }],
        };
        let bytes = postcard::to_allocvec(&d).unwrap();
        let back: EntryData = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, d);
    }
}
