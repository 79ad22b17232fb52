//! txpipe operator: reconciles `TransactionPipeline` custom resources (`txpipe.io/v1alpha1`)
//! into a replicated broker StatefulSet, autoscaled worker Deployment and their Services,
//! PodDisruptionBudgets, HorizontalPodAutoscaler, ConfigMap, optional ServiceMonitor and
//! producer Job.
//!
//! Map of the modules:
//! - [`crd`]: the custom resource, its defaults and CEL validation rules.
//! - [`render`]: pure functions from a pipeline to every child object (no I/O).
//! - [`run`]: the `run` command: startup checks (CRD apply/check), the HTTP server, leader
//!   election and the controller until shutdown.
//! - [`controller`]: the reconcile loop in phases (observe, apply children, grow volumes, step
//!   membership, roll one broker, write status) and its error policy.
//! - [`membership`], [`rolling`], [`conditions`]: the controller's pure decisions (Raft
//!   membership steps, which broker pod to restart, status conditions).
//! - [`certs`]: certificates of `spec.tls` (managed CA issuance and renewal decisions,
//!   cert-manager Certificates).
//! - [`broker_admin`]: the brokers' admin HTTP API (`/status.json`, `POST /cluster/voters`).
//! - [`lease`]: leader election through a `coordination.k8s.io` Lease.
//! - [`telemetry`]: Prometheus metrics, `/metrics` and `/healthz`, logging.
//! - [`error`]: the error type.

pub mod broker_admin;
pub mod certs;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod error;
pub mod lease;
pub mod membership;
pub mod render;
pub mod rolling;
pub mod run;
pub mod telemetry;
mod tls_phase;

pub use error::{Error, Result};
