//! Operator metrics (Prometheus), the `/metrics` and `/healthz` HTTP server, and logging.
//!
//! Metric names follow `txpipe_operator_<what>_<unit>`.

use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

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
    /// Creates the metrics and registers them in a new registry.
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
            Ok(_) => self.metrics.reconciliations.with_label_values(&["ok"]).inc(),
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
