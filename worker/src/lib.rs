//! txpipe worker: consumes `transactions` from the broker, scores each one through five
//! stages, appends the decision to `decisions` (keyed by transaction id), and acks the
//! transaction once the decision is durable.
//!
//! Map of the crate:
//! - [`worker::run`]: the event loop (consume stream, scoring, decision produce, acks,
//!   reconnects, graceful drain) and [`worker::WorkerStats`].
//! - [`scoring`]: stages 1-4 ([`scoring::Scorer`]) and the decision record; [`crypto`],
//!   [`tables`], [`rules`] and [`model`] are the pieces the stages use; [`vector`] is the
//!   model stage for pre-featurised transactions (the ULB credit-card models).
//! - [`timer`]: the high-resolution async timer of stage 5 (the awaited issuer call).
//! - [`train`]: training and evaluation of the logistic-regression model (the
//!   `txpipe-train` binary feeds it from the seeded generator).
//! - [`bench`]: per-stage CPU-cost benchmark (`txpipe-worker bench-stages`).
//! - [`config`]: flags and `WORKER_*` environment variables; [`metrics`]: Prometheus metrics
//!   and the admin HTTP server.

pub mod bench;
pub mod config;
pub mod cputime;
pub mod crypto;
pub mod metrics;
pub mod model;
pub mod rules;
pub mod scoring;
pub mod tables;
pub mod timer;
pub mod train;
pub mod vector;
pub mod worker;

pub use config::Config;
pub use worker::{WorkerStats, run};

/// Errors of the worker library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The model file is unreadable or inconsistent with this worker's features.
    #[error("model: {0}")]
    Model(String),
    /// No broker could be reached within the reconnect deadline.
    #[error("broker unreachable: {0}")]
    Connect(txpipe_client::connect::ConnectError),
    /// The broker refused the consume stream for a reason a retry cannot fix.
    #[error("consume stream rejected: {code:?}: {message}")]
    Consume {
        /// gRPC status code.
        code: tonic::Code,
        /// The broker's message.
        message: String,
    },
    /// Decisions could not be made durable.
    #[error("decision produce failed: {0}")]
    Produce(txpipe_client::produce::ProduceError),
    /// I/O error (admin listener, timer thread).
    #[error("I/O: {0}")]
    Io(std::io::Error),
    /// Training could not run (e.g. no fraud in the data).
    #[error("training: {0}")]
    Train(String),
}

// Manual `From` impls: the inner error is part of the message, not also a `source()`, so
// `{:#}` chains do not print it twice.
impl From<txpipe_client::connect::ConnectError> for Error {
    fn from(e: txpipe_client::connect::ConnectError) -> Self {
        Error::Connect(e)
    }
}

impl From<txpipe_client::produce::ProduceError> for Error {
    fn from(e: txpipe_client::produce::ProduceError) -> Self {
        Error::Produce(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

/// Result with the worker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
