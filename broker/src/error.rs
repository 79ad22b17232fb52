//! The broker's error type and its mapping to gRPC status codes.

use crate::log::LogError;
use crate::state::ProducerReject;

/// Every error the broker library returns.
///
/// [`From<Error> for tonic::Status`](#impl-From<Error>-for-Status) is the one place where errors
/// become gRPC codes: malformed input is `INVALID_ARGUMENT`, an unknown stream `NOT_FOUND`, an
/// oversized batch `RESOURCE_EXHAUSTED`, an idempotent producer's refused batch
/// `FAILED_PRECONDITION` (unknown id or epoch, fenced, sequence reused with other records),
/// `OUT_OF_RANGE` (sequence gap or a retry older than the remembered batches) or
/// `INVALID_ARGUMENT` (position going backwards), and storage failures `UNAVAILABLE` (the client retries against another node or after a
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
    /// A valid request the system does not support in its current state (gRPC
    /// FAILED_PRECONDITION), e.g. a cross-shard ledger transfer.
    #[error("{0}")]
    FailedPrecondition(String),
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
    /// The stream's state machine refused an idempotent producer's batch.
    #[error("{}", describe_reject(stream, reject))]
    Producer {
        /// Stream name.
        stream: String,
        /// Why.
        reject: ProducerReject,
    },
    /// An admission limit of the broker is reached ([`crate::limits`]); retry later.
    #[error("{0}")]
    Overloaded(String),
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

/// The message of [`Error::Producer`].
fn describe_reject(stream: &str, r: &ProducerReject) -> String {
    match *r {
        ProducerReject::UnknownProducer { producer_id } => {
            format!("unknown producer id {producer_id} on stream {stream:?}: call InitProducer")
        }
        ProducerReject::Fenced {
            producer_id,
            current,
            got,
        } => format!(
            "producer {producer_id} on stream {stream:?} is fenced: its epoch {got} is older than the current epoch {current} (a newer producer registered the same name)"
        ),
        ProducerReject::UnknownEpoch {
            producer_id,
            current,
            got,
        } => format!(
            "producer {producer_id} on stream {stream:?} sent epoch {got}, but the current epoch is {current}: call InitProducer"
        ),
        ProducerReject::SequenceReused {
            producer_id,
            sequence,
        } => format!(
            "producer {producer_id} on stream {stream:?}: sequence {sequence} reused with different records"
        ),
        ProducerReject::SequenceTooOld {
            producer_id,
            sequence,
            oldest,
            last,
        } => format!(
            "producer {producer_id} on stream {stream:?}: sequence {sequence} is older than the remembered batches (sequences {oldest} to {last})"
        ),
        ProducerReject::SequenceGap {
            producer_id,
            expected,
            got,
        } => format!(
            "out of order sequence for producer {producer_id} on stream {stream:?}: expected {expected}, got {got}"
        ),
        ProducerReject::PositionRegressed {
            producer_id,
            last,
            got,
        } => format!(
            "producer {producer_id} on stream {stream:?}: position {got} is below the last acknowledged position {last}"
        ),
    }
}

/// gRPC metadata key of the leader hint on UNAVAILABLE answers.
pub const LEADER_HINT_KEY: &str = "txpipe-leader";

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is a start-up error that says the data on the volume is damaged (log
    /// corruption before the tail, an undecodable entry, an unreadable or inconsistent
    /// snapshot) rather than a passing I/O failure: what [`crate::repair`] acts on.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Log(LogError::Corrupt { .. }) | Error::Decode { .. } | Error::Snapshot { .. }
        )
    }

    /// Short label for metrics (`result` label of produce batches, for example).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::StreamNotFound(_) | Error::GroupNotFound { .. } => "not_found",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::BatchTooLarge { .. } => "resource_exhausted",
            Error::Overloaded(_) => "overloaded",
            Error::Producer { reject, .. } => match reject {
                ProducerReject::Fenced { .. } => "fenced",
                ProducerReject::UnknownProducer { .. } | ProducerReject::UnknownEpoch { .. } => {
                    "unknown_producer"
                }
                ProducerReject::SequenceReused { .. } => "sequence_reused",
                ProducerReject::SequenceTooOld { .. } | ProducerReject::SequenceGap { .. } => {
                    "out_of_order"
                }
                ProducerReject::PositionRegressed { .. } => "invalid_argument",
            },
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
            Error::BatchTooLarge { .. } | Error::Overloaded(_) => {
                tonic::Status::resource_exhausted(msg)
            }
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::Producer { reject, .. } => match reject {
                ProducerReject::SequenceTooOld { .. } | ProducerReject::SequenceGap { .. } => {
                    tonic::Status::out_of_range(msg)
                }
                ProducerReject::PositionRegressed { .. } => tonic::Status::invalid_argument(msg),
                ProducerReject::UnknownProducer { .. }
                | ProducerReject::Fenced { .. }
                | ProducerReject::UnknownEpoch { .. }
                | ProducerReject::SequenceReused { .. } => tonic::Status::failed_precondition(msg),
            },
            Error::Log(_)
            | Error::Snapshot { .. }
            | Error::Decode { .. }
            | Error::Io(_)
            | Error::Unavailable(_)
            | Error::NotLeader { .. } => tonic::Status::unavailable(msg),
        }
    }
}
