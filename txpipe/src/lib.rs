//! The `txpipe` command: local mode, audit and benchmarks.
//!
//! - [`local`]: runs broker replicas, workers (CPU-limited with [`cgroup`]) and producer as
//!   processes on one machine, optionally with seeded kill -9 chaos, and prints a
//!   [`report::RunReport`]. Its parts: [`supervisor`] (the processes), [`chaos`] (the chaos
//!   schedule, a pure state machine), [`progress`] (the display) and [`report`].
//! - [`certs`]: the throw-away CA and certificates of a local run (mutual TLS by default).
//! - [`cluster`]: a local cluster of broker replicas (ports, readiness, leader lookup from the
//!   admin `/status.json`).
//! - [`audit`]: reads the streams back and checks exactly-once decisions.
//! - [`bench`]: broker benchmark against NATS JetStream (1 or 3 replicas each) and the
//!   leader-failover benchmark.
//! - [`nemesis`]: brokers in network namespaces, seeded partitions, pauses and kills, and
//!   an independent checker (`txpipe nemesis`).
//! - [`ledger`]: `txpipe ledger`, the ledger's CLI (accounts, transfers, balances, dump).
//! - [`secrets`]: the PAN keyring of a run (`<run dir>/pan-keys`, mode 0600).
//! - [`procstat`]: CPU and peak memory of child processes from `/proc`.

pub mod audit;
pub mod bench;
pub mod certs;
pub mod cgroup;
pub mod chaos;
pub mod cluster;
pub mod ledger;
pub mod local;
pub mod nemesis;
pub mod procstat;
pub mod progress;
pub mod report;
pub mod secrets;
pub mod supervisor;
