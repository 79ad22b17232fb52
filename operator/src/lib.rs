//! txpipe operator: reconciles `TransactionPipeline` custom resources (`txpipe.io/v1alpha1`)
//! into a replicated broker StatefulSet, autoscaled worker Deployment and their Services,
//! PodDisruptionBudgets, HorizontalPodAutoscaler, ConfigMap, optional ServiceMonitor and
//! producer Job.
//!
//! Map of the modules:
//! - [`crd`]: the custom resource, its defaults and CEL validation rules.
//! - [`render`]: pure functions from a pipeline to every child object (no I/O).
//! - [`controller`]: the reconcile loop (server-side apply, status conditions, broker
//!   membership and one-at-a-time rolling restarts, error policy).
//! - [`broker_admin`]: the brokers' admin HTTP API (`/status.json`, `POST /cluster/voters`).
//! - [`lease`]: leader election through a `coordination.k8s.io` Lease.
//! - [`telemetry`]: Prometheus metrics, `/metrics` and `/healthz`, logging.
//! - [`error`]: the error type.

pub mod broker_admin;
pub mod controller;
pub mod crd;
pub mod error;
pub mod lease;
pub mod render;
pub mod telemetry;

pub use error::{Error, Result};
