//! txpipe's wire contract and broker clients.
//!
//! - [`broker::v1`]: the `txpipe.broker.v1` gRPC service (Produce, Consume, Fetch, streams),
//!   generated from `proto/txpipe/broker/v1/broker.proto`.
//! - [`pipeline::v1`]: record payloads (`Transaction`, `Decision`, `Label`, `DeadLetter`),
//!   generated from `proto/txpipe/pipeline/v1/pipeline.proto`.
//! - [`ledger`]: the `txpipe.ledger.v1` API (generated from
//!   `proto/txpipe/ledger/v1/ledger.proto`), the account → shard rule and a client that splits
//!   batches per shard and follows each shard's leader.
//! - [`produce`]: an idempotent, pipelined producer that follows its stream's leader and retries
//!   through failovers and broker restarts without storing a batch twice.
//! - [`leader`]: leader discovery and failover over a replicated broker (`txpipe-leader` hints,
//!   bounded exponential backoff, deadlines, one cached channel per address).
//! - [`connect`]: address parsing, endpoint defaults, and connection retry over a list.
//! - [`tls`]: mutual TLS towards brokers ([`tls::TlsOptions`], and the shared `--tls-*` flags
//!   with the `clap` feature).
//! - [`pan`]: field encryption of card numbers (AES-256-GCM), shared by producer and worker.
//! - [`time`]: calendar conversions of `*_us` timestamps (Hinnant's algorithms).
//! - [`streams`]: the names of the standard streams.
//! - [`status`]: the broker's admin `/status.json` (written by the broker, read by the operator
//!   and `txpipe`).
//! - [`summary`]: the producer's run summary (written by the producer, read by `txpipe`).

pub mod connect;
pub mod features;
pub mod leader;
pub mod ledger;
pub mod pan;
pub mod produce;
pub mod status;
pub mod streams;
pub mod summary;
pub mod time;
pub mod tls;

/// Generated protobuf and gRPC code for `txpipe.broker.v1`.
pub mod broker {
    /// Version 1 of the broker API.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("txpipe.broker.v1");
    }
}

/// Generated protobuf code for `txpipe.pipeline.v1` (record payloads).
pub mod pipeline {
    /// Version 1 of the pipeline payloads.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("txpipe.pipeline.v1");
    }
}

/// Encoded `FileDescriptorSet` of every txpipe proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("txpipe_descriptor");

/// Current time in microseconds since the Unix epoch (the unit of every `*_us` field).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
