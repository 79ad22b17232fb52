//! Operator metrics (Prometheus), the `/metrics`, `/healthz` and `/readyz` HTTP server, and
//! logging.
//!
//! Metric names follow `txpipe_operator_<what>_<unit>`. On Linux the registry also holds a
//! [`prometheus::process_collector::ProcessCollector`] of the operator process
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ...,
//! read from `/proc/self` at every scrape).
//!
//! HTTP endpoints served by [`serve`] (default listen address `0.0.0.0:8080`):
//! - `GET /metrics`: every metric of [`Metrics::registry`], Prometheus text format 0.0.4.
//! - `GET /healthz`: liveness, always `200 ok` while the process serves HTTP.
//! - `GET /readyz`: `200 ok` while the readiness flag is `true`, else `503 not ready`.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Reconcile metrics shared by the controller and the HTTP server.
#[derive(Clone)]
pub struct Metrics {
    /// Registry rendered by `/metrics`.
    pub registry: Registry,
    /// `txpipe_operator_reconciliations_total{result="ok|error"}`.
    pub reconciliations: IntCounterVec,
    /// `txpipe_operator_reconcile_errors_total{error="<Error::metric_label>"}`.
    pub errors: IntCounterVec,
    /// `txpipe_operator_reconcile_duration_seconds`: wall time of one reconcile, seconds.
    pub duration: Histogram,
    /// `txpipe_operator_leader`: 1 while this replica holds the leader Lease, else 0.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates the metrics and registers them in a new registry (with the `process_*`
    /// collector of this process on Linux).
    ///
    /// Panics only if the static metric definitions are invalid (a programming error).
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "txpipe_operator_reconciliations_total",
                "Reconciles run, by result (ok, error).",
            ),
            &["result"],
        )
        .expect("metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "txpipe_operator_reconcile_errors_total",
                "Failed reconciles, by error kind.",
            ),
            &["error"],
        )
        .expect("metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "txpipe_operator_reconcile_duration_seconds",
                "Wall time of one reconcile, seconds.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("metric definition");
        let leader = IntGauge::new(
            "txpipe_operator_leader",
            "1 while this operator replica holds the leader Lease.",
        )
        .expect("metric definition");
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            leader,
        }
    }

    /// Starts timing one reconcile; call [`ReconcileTimer::finish`] with its outcome.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Measures one reconcile (see [`Metrics::start_reconcile`]).
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration and the result (`Err` also counts the error's kind).
    pub fn finish<T>(self, result: &crate::Result<T>) {
        self.metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self
                .metrics
                .reconciliations
                .with_label_values(&["ok"])
                .inc(),
            Err(e) => {
                self.metrics
                    .reconciliations
                    .with_label_values(&["error"])
                    .inc();
                self.metrics
                    .errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
            }
        }
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    ready: watch::Receiver<bool>,
}

/// The HTTP routes (`/metrics`, `/healthz`, `/readyz`) without a listener, for embedding or
/// tests. `ready` is the readiness flag read by `/readyz` on every request.
pub fn router(metrics: Metrics, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { metrics, ready })
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops accepting
/// connections and waits for in-flight requests to finish.
///
/// `ready` drives `/readyz`: `true` answers `200 ok`, `false` (or a dropped sender that last
/// sent `false`) answers `503 not ready`.
///
/// # Errors
/// Returns the I/O error that stopped the server (accept failures are retried by axum, so in
/// practice this only fails on a broken listener).
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, ready))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.metrics.registry.gather(), &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz_handler() -> &'static str {
    "ok\n"
}

async fn readyz_handler(State(state): State<ServerState>) -> Response {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Log line format of [`init_logging`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default; for terminals).
    #[default]
    Text,
    /// One JSON object per line (for log collectors; use this in the cluster).
    Json,
}

/// Installs the global `tracing` subscriber: logs go to stderr (stdout stays clean for the
/// `crd` and `render` commands), filtered by `RUST_LOG` (default `info`).
///
/// Does nothing if a global subscriber is already installed (e.g. called twice in tests).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
