//! Prometheus metrics and the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
//!
//! On Linux the registry also holds a [`prometheus::process_collector::ProcessCollector`] of
//! the current process: `process_cpu_seconds_total` (user + system CPU, whole seconds),
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_threads`, `process_start_time_seconds`, read from `/proc/self`
//! at every scrape (several workers in one process report the same figures).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::scoring::Stage;

/// Stage-duration buckets, seconds: 1 µs to 50 ms.
const STAGE_BUCKETS: &[f64] = &[
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 5e-2,
];
/// End-to-end latency buckets, seconds: 100 µs to 30 s.
const E2E_BUCKETS: &[f64] = &[
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// The worker's metrics, in their own registry (so several workers can run in one process).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// `txpipe_worker_decisions_total{outcome}`: decisions acked, by outcome.
    pub decisions: IntCounterVec,
    /// `txpipe_worker_stage_duration_seconds{stage}`: wall time per stage per transaction; for
    /// `external`, from issuing the call to handling its completion (includes waiting for the
    /// event loop, and for CPU under a quota).
    pub stage: HistogramVec,
    /// `txpipe_worker_in_flight`: deliveries received and not yet acked or nacked.
    pub in_flight: IntGauge,
    /// `txpipe_worker_scored_total`: transactions through the CPU stages.
    pub scored: IntCounter,
    /// `txpipe_worker_acked_total`: transactions acked after their decision was durable.
    pub acked: IntCounter,
    /// `txpipe_worker_nacked_total`: undecodable transactions nacked.
    pub nacked: IntCounter,
    /// `txpipe_worker_reconnects_total`: consume-stream reconnections.
    pub reconnects: IntCounter,
    /// `txpipe_worker_e2e_latency_seconds`: produce (record timestamp) to decision.
    pub e2e: Histogram,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "txpipe_worker_decisions_total",
                "Decisions acked, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let stage = HistogramVec::new(
            HistogramOpts::new(
                "txpipe_worker_stage_duration_seconds",
                "Wall time of each scoring stage per transaction.",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "txpipe_worker_in_flight",
            "Deliveries received and not yet acked or nacked.",
        )
        .expect("valid metric");
        let scored = IntCounter::new(
            "txpipe_worker_scored_total",
            "Transactions through the CPU scoring stages.",
        )
        .expect("valid metric");
        let acked = IntCounter::new(
            "txpipe_worker_acked_total",
            "Transactions acked after their decision was durable.",
        )
        .expect("valid metric");
        let nacked = IntCounter::new(
            "txpipe_worker_nacked_total",
            "Undecodable transactions nacked.",
        )
        .expect("valid metric");
        let reconnects = IntCounter::new(
            "txpipe_worker_reconnects_total",
            "Consume-stream reconnections.",
        )
        .expect("valid metric");
        let e2e = Histogram::with_opts(
            HistogramOpts::new(
                "txpipe_worker_e2e_latency_seconds",
                "Transaction record timestamp to decision, seconds.",
            )
            .buckets(E2E_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        for c in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage.clone()),
            Box::new(in_flight.clone()),
            Box::new(scored.clone()),
            Box::new(acked.clone()),
            Box::new(nacked.clone()),
            Box::new(reconnects.clone()),
            Box::new(e2e.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        // Pre-create label values so every series exists from the start.
        for o in ["approve", "review", "decline"] {
            decisions.with_label_values(&[o]);
        }
        for s in Stage::ALL {
            stage.with_label_values(&[s.name()]);
        }
        Self {
            registry,
            decisions,
            stage,
            in_flight,
            scored,
            acked,
            nacked,
            reconnects,
            e2e,
        }
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// State shared with the admin server.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Metrics to serve.
    pub metrics: Metrics,
    /// True while subscribed to the broker.
    pub ready: Arc<AtomicBool>,
}

/// The admin router: `/metrics` (Prometheus text), `/healthz` (200 while the process runs),
/// `/readyz` (200 while subscribed, else 503).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

async fn metrics_handler(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not subscribed\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Value of the sample `series` (name with its labels, exactly as rendered) in a body.
    fn sample(body: &str, series: &str) -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// The admin server's `/metrics` body carries the worker's own metrics and, on Linux, the
    /// process metrics (the "CPU vs limit" dashboard panel reads `process_cpu_seconds_total`).
    #[tokio::test]
    async fn metrics_endpoint_serves_worker_and_process_metrics() {
        let metrics = Metrics::new();
        metrics.scored.inc_by(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(AdminState {
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
        });
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        server.abort();
        let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            sample(body, "txpipe_worker_scored_total"),
            Some(3.0),
            "{body}"
        );
        #[cfg(target_os = "linux")]
        {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_threads",
            ] {
                assert!(
                    body.contains(&format!("# TYPE {name} ")),
                    "{name} missing:\n{body}"
                );
            }
            assert!(
                sample(body, "process_cpu_seconds_total").is_some(),
                "{body}"
            );
            assert!(sample(body, "process_resident_memory_bytes").unwrap() > 0.0);
        }
    }
}
