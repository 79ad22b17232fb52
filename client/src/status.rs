//! The broker's admin `/status.json`: one typed definition for the three processes that use it.
//!
//! The broker serializes [`BrokerStatus`] (broker/src/broker.rs samples it every second; its
//! status page polls it), the operator reads it to step membership and roll brokers
//! (operator/src/broker_admin.rs), and `txpipe` local mode and benchmarks read it to find the
//! leader of a stream and to tell when a restarted replica has rejoined
//! (txpipe/src/cluster.rs).
//!
//! Every field has a default, so a reader accepts the short answer of a recovering broker
//! (`{"ready": false, "waiting_for_peers": true, "streams": []}`: no node id, no Raft view)
//! and ignores fields it does not know (a newer broker).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Whole-broker status, the body of `GET /status.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerStatus {
    /// This node's Raft id; absent while the broker recovers (before its streams are open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Raft view of every stream's group on this node, by stream name (empty while
    /// recovering).
    pub raft: BTreeMap<String, RaftStatus>,
    /// Recovery finished and gRPC is serving.
    pub ready: bool,
    /// Still recovering and waiting for its peers to bootstrap the Raft groups (only in the
    /// answer of a recovering broker).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_peers: bool,
    /// Seconds since start.
    pub uptime_s: u64,
    /// fdatasync calls so far.
    pub fsyncs_total: u64,
    /// Streams, by name.
    pub streams: Vec<StreamStatus>,
}

impl BrokerStatus {
    /// The node id, when the broker is ready and has reported its Raft view (a ready broker
    /// reports an empty `raft` map before its first status sample).
    pub fn known_node_id(&self) -> Option<u64> {
        if self.ready && !self.raft.is_empty() {
            self.node_id
        } else {
            None
        }
    }

    /// Ready, and it knows a leader of every stream's group.
    pub fn knows_all_leaders(&self) -> bool {
        self.ready && !self.raft.is_empty() && self.raft.values().all(|r| r.leader_id.is_some())
    }

    /// Streams whose group this node leads.
    pub fn leads(&self) -> Vec<String> {
        self.raft
            .iter()
            .filter(|(_, r)| r.is_leader)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Raft view of one stream's group on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftStatus {
    /// Current term.
    pub term: u64,
    /// Leader's node id, when known.
    pub leader_id: Option<u64>,
    /// Leader's client address `host:port`, when known.
    pub leader_addr: Option<String>,
    /// Whether this node leads the group (in openraft's view: it won an election and has not
    /// heard of a higher term; see `has_quorum` for whether it may serve).
    pub is_leader: bool,
    /// This node's role in the group: `leader`, `leader-without-lease` (it has not heard of a
    /// higher term, but no quorum acknowledged it within the lease, so it serves nothing: a
    /// cut-off or deposed leader), `candidate`, `follower`, `learner` or `shutdown`.
    pub role: String,
    /// Leader only: whether its quorum lease is valid (a quorum acknowledged it within the
    /// broker's `election_timeout_max`). A leader cut off from its followers reports `false`
    /// while still `is_leader`; `false` on a follower.
    pub has_quorum: bool,
    /// Leader only: milliseconds since the send time of the newest heartbeat or append a quorum
    /// acknowledged; `None` on a follower or before the first acknowledgement.
    pub quorum_ack_age_ms: Option<u64>,
    /// Highest committed log index known to this node (at least its applied index).
    pub commit_index: u64,
    /// Highest applied log index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Voter node ids.
    pub voters: BTreeSet<u64>,
    /// Learner node ids.
    pub learners: BTreeSet<u64>,
}

/// Key-dedupe figures of a stream (`StreamStatus::dedupe`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupeStatus {
    /// Keys remembered now.
    pub keys: u64,
    /// Age window in force, seconds.
    pub window_seconds: u64,
    /// Count window in force, keys.
    pub window_keys: u64,
    /// Size of the on-disk index file, bytes.
    pub index_bytes: u64,
}

/// Live figures of one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStatus {
    /// Stream name.
    pub name: String,
    /// `work_queue` or `limits`.
    pub retention: String,
    /// First stored offset.
    pub start_offset: u64,
    /// Next offset.
    pub end_offset: u64,
    /// Unresolved records (work queue).
    pub pending: u64,
    /// Delivered, unacked.
    pub in_flight: u64,
    /// Connected consumers.
    pub consumers: u64,
    /// Open Produce calls that wrote here.
    pub producers: i64,
    /// Records stored per second (last sampling interval).
    pub produce_per_s: f64,
    /// Deliveries per second.
    pub deliver_per_s: f64,
    /// Durable acks per second.
    pub ack_per_s: f64,
    /// Redeliveries so far.
    pub redelivered_total: u64,
    /// Dead letters so far.
    pub dead_lettered_total: u64,
    /// Acks so far.
    pub acked_total: u64,
    /// Records dropped by key dedupe so far.
    pub deduplicated_total: u64,
    /// Key dedupe window and keys (streams that deduplicate by key; `None` otherwise).
    pub dedupe: Option<DedupeStatus>,
    /// Segment files.
    pub segments: usize,
    /// Segment bytes.
    pub bytes: u64,
    /// Consumers of the group.
    pub consumer_list: Vec<ConsumerInfo>,
}

/// One consumer of a work-queue stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsumerInfo {
    /// Consumer id.
    pub id: u64,
    /// Name given at subscribe.
    pub name: String,
    /// Window (deliveries it accepts unacked).
    pub window: u32,
    /// Unacked deliveries.
    pub in_flight: u32,
    /// Deliveries so far.
    pub delivered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a ready three-node broker answers (the shape the broker's status page reads).
    const READY: &str = r#"{
        "node_id": 2, "ready": true, "uptime_s": 12, "fsyncs_total": 5,
        "streams": [{"name": "transactions", "retention": "work_queue", "pending": 3,
            "consumer_list": [{"id": 1, "name": "worker-0", "window": 64, "in_flight": 2,
                "delivered": 9}]}],
        "raft": {
            "transactions": {"term": 3, "leader_id": 2, "leader_addr": "b-2:9100", "is_leader": true,
                "commit_index": 40, "applied_index": 39, "last_log_index": 41,
                "voters": [0, 1, 2], "learners": []},
            "decisions": {"term": 3, "leader_id": null, "leader_addr": null, "is_leader": false,
                "commit_index": 7, "applied_index": 7, "last_log_index": 7,
                "voters": [0, 1], "learners": [2]}
        }
    }"#;

    #[test]
    fn a_ready_status_parses_with_its_raft_view_and_streams() {
        let s: BrokerStatus = serde_json::from_str(READY).unwrap();
        assert_eq!(s.known_node_id(), Some(2));
        assert_eq!(s.leads(), vec!["transactions"]);
        assert!(!s.knows_all_leaders(), "decisions has no known leader");
        let t = &s.raft["transactions"];
        assert_eq!((t.term, t.commit_index, t.applied_index), (3, 40, 39));
        assert_eq!(t.leader_addr.as_deref(), Some("b-2:9100"));
        assert_eq!(t.voters, BTreeSet::from([0, 1, 2]));
        assert_eq!(s.raft["decisions"].learners, BTreeSet::from([2]));
        assert_eq!(s.streams[0].pending, 3);
        assert_eq!(s.streams[0].consumer_list[0].name, "worker-0");
    }

    #[test]
    fn a_recovering_status_parses_without_node_id_and_round_trips() {
        let text = r#"{"ready": false, "waiting_for_peers": true, "streams": []}"#;
        let s: BrokerStatus = serde_json::from_str(text).unwrap();
        assert!(!s.ready && s.waiting_for_peers);
        assert_eq!((s.node_id, s.known_node_id()), (None, None));
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(back.get("node_id").is_none());
        assert_eq!(back["waiting_for_peers"], true);
    }

    #[test]
    fn what_the_broker_writes_is_what_the_readers_parse() {
        let mut s = BrokerStatus {
            node_id: Some(0),
            ready: true,
            ..BrokerStatus::default()
        };
        s.raft.insert(
            "transactions".into(),
            RaftStatus {
                term: 1,
                leader_id: Some(0),
                is_leader: true,
                voters: BTreeSet::from([0]),
                ..RaftStatus::default()
            },
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("waiting_for_peers"), "{json}");
        let back: BrokerStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.known_node_id(), Some(0));
        assert!(back.knows_all_leaders());
    }

    #[test]
    fn a_ready_status_before_its_first_sample_has_no_known_node_id() {
        let s: BrokerStatus =
            serde_json::from_str(r#"{"ready": true, "node_id": 0, "raft": {}}"#).unwrap();
        assert_eq!(s.known_node_id(), None);
        assert!(!s.knows_all_leaders());
    }
}
