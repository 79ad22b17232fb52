//! The broker's error type and its mapping to gRPC status codes.

use crate::log::LogError;

/// Every error the broker library returns.
///
/// [`From<Error> for tonic::Status`](#impl-From<Error>-for-Status) is the one place where errors
/// become gRPC codes: malformed input is `INVALID_ARGUMENT`, an unknown stream `NOT_FOUND`, an
/// oversized batch `RESOURCE_EXHAUSTED`, a producer sequence gap `FAILED_PRECONDITION`, and
/// storage failures `UNAVAILABLE` (the client retries against another node or after a
/// restart).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the flag and the value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named stream does not exist.
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// A consumer group other than the stream's own was asked for.
    #[error("consumer group {group:?} not found on stream {stream:?} (its group is {expected:?})")]
    GroupNotFound {
        /// Stream name.
        stream: String,
        /// Group asked for.
        group: String,
        /// The stream's group.
        expected: String,
    },
    /// A batch exceeds the size limits.
    #[error(
        "batch of {records} records and {bytes} bytes exceeds the limit of {max_records} records and {max_bytes} bytes"
    )]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Key and value bytes in the batch.
        bytes: usize,
        /// Limit on records per batch.
        max_records: usize,
        /// Limit on bytes per batch.
        max_bytes: usize,
    },
    /// An idempotent producer skipped a sequence number.
    #[error(
        "out of order sequence for producer {producer_id} on stream {stream:?}: expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        /// Stream name.
        stream: String,
        /// Producer id.
        producer_id: u64,
        /// Next sequence the broker accepts.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A snapshot file could not be read or written.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// Snapshot file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A log entry could not be decoded.
    #[error("cannot decode log entry {index}: {reason}")]
    Decode {
        /// Log index of the entry.
        index: u64,
        /// What was wrong.
        reason: String,
    },
    /// Other I/O (listeners, directories).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The broker is shutting down or a stream's writer has stopped.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// This node does not lead the stream's Raft group; `leader` is the leader's client
    /// address when known (sent to clients as the `txpipe-leader` metadata).
    #[error("not the leader of stream {stream:?}{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_else(|| "; no leader is known yet (election in progress)".into()))]
    NotLeader {
        /// The stream.
        stream: String,
        /// Client address `host:port` of the leader.
        leader: Option<String>,
    },
}

/// gRPC metadata key of the leader hint on UNAVAILABLE answers.
pub const LEADER_HINT_KEY: &str = "txpipe-leader";

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Short label for metrics (`result` label of produce batches, for example).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::StreamNotFound(_) | Error::GroupNotFound { .. } => "not_found",
            Error::BatchTooLarge { .. } => "resource_exhausted",
            Error::OutOfOrderSequence { .. } => "out_of_order",
            Error::Log(_) | Error::Snapshot { .. } | Error::Decode { .. } | Error::Io(_) => {
                "storage"
            }
            Error::Unavailable(_) => "unavailable",
            Error::NotLeader { .. } => "not_leader",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        if let Error::NotLeader { leader, .. } = &e {
            let mut st = tonic::Status::unavailable(msg);
            if let Some(l) = leader
                && let Ok(v) = l.parse()
            {
                st.metadata_mut().insert(LEADER_HINT_KEY, v);
            }
            return st;
        }
        match e {
            Error::InvalidArgument(_) | Error::Config(_) => tonic::Status::invalid_argument(msg),
            Error::StreamNotFound(_) | Error::GroupNotFound { .. } => tonic::Status::not_found(msg),
            Error::BatchTooLarge { .. } => tonic::Status::resource_exhausted(msg),
            Error::OutOfOrderSequence { .. } => tonic::Status::failed_precondition(msg),
            Error::Log(_)
            | Error::Snapshot { .. }
            | Error::Decode { .. }
            | Error::Io(_)
            | Error::Unavailable(_)
            | Error::NotLeader { .. } => tonic::Status::unavailable(msg),
        }
    }
}
