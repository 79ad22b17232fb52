//! Replication of each stream through Raft ([openraft] 0.9).
//!
//! Every stream is its own Raft group (a "multi-Raft" broker: the four standard streams are
//! four groups on the same nodes, each with its own leader, term and log). The group's Raft
//! log *is* the stream's segmented log ([`crate::log`]); the state machine is the stream's
//! [`crate::state::StreamState`]. The pieces:
//!
//! - this module: the openraft type configuration ([`TypeConfig`]), node identity and
//!   addresses ([`Node`]), log entry data ([`EntryData`]) and its on-disk encoding
//!   ([`encode_entry`] / [`decode_entry`]);
//! - [`store`]: `RaftLogStorage` over the segmented log and `RaftStateMachine` over the stream
//!   state, snapshots and install-snapshot;
//! - [`network`]: the peer client (one cached gRPC channel per peer, deadlines on every RPC);
//! - [`peer`]: the peer gRPC service (`txpipe.raft.v1.RaftPeer`) on its own port;
//! - [`cluster`]: node identity on the volume, bootstrap, membership changes.
//!
//! Snapshot data is a file (`tokio::fs::File`), not a buffer: a snapshot sent to a follower
//! carries the stream's retained records as well as its state, which can be gigabytes.
//!
//! Why openraft 0.9 (0.9.25) and not a 0.10 alpha: 0.9 is the stable line with a frozen API
//! and a documented storage contract; 0.10 pipelines log I/O but its API still changes
//! between alphas. 0.9's `RaftCore` waits for each append's flush before the next one, so one
//! Raft entry costs one fsync on the leader in series; [`crate::replica`] therefore coalesces
//! all proposals that arrive while an entry is in flight into the next entry (group commit at
//! the proposal level), which keeps entries per second low and records per entry high.

pub mod cluster;
pub mod network;
pub mod peer;
pub mod store;

use bytes::{Buf, Bytes};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
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

openraft::declare_raft_types!(
    /// openraft type configuration of a stream's Raft group.
    pub TypeConfig:
        D = EntryData,
        R = EntryResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft handle of one stream group.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry of a stream group.
pub type RaftEntry = Entry<TypeConfig>;

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
pub fn decode_log_id(buf: &[u8]) -> Result<LogId<NodeId>, String> {
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
    Ok(LogId::new(CommittedLeaderId::new(term, node), index))
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
            serde_json::from_slice::<Membership<NodeId, Node>>(&body)
                .map_err(|e| format!("membership: {e}"))?,
        ),
        k => return Err(format!("unknown entry kind {k}")),
    };
    Ok(Entry { log_id, payload })
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
        let id = LogId::new(CommittedLeaderId::new(7, 2), 42);
        roundtrip(Entry {
            log_id: id,
            payload: EntryPayload::Blank,
        });
        roundtrip(Entry {
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
        let m = Membership::new(vec![BTreeSet::from([0, 1])], nodes);
        roundtrip(Entry {
            log_id: id,
            payload: EntryPayload::Membership(m),
        });
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(decode_entry(Bytes::from_static(b"\x01abc")).is_err());
        let id = LogId::new(CommittedLeaderId::new(1, 0), 1);
        let mut b = encode_entry(&Entry {
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
