//! The `txpipe` command: local mode, audit and benchmarks.
//!
//! - [`local`]: runs broker, workers (CPU-limited with [`cgroup`]) and producer as processes on
//!   one machine and prints a [`local::RunReport`].
//! - [`audit`]: reads the streams back and checks exactly-once decisions.
//! - [`bench`]: broker benchmark against NATS JetStream in the same command.
//! - [`procstat`]: CPU and peak memory of child processes from `/proc`.

pub mod audit;
pub mod bench;
pub mod cgroup;
pub mod local;
pub mod procstat;
