//! Names of the standard streams every broker creates at start.

/// Work-queue stream of `Transaction` records, consumed by workers.
pub const TRANSACTIONS: &str = "transactions";
/// Limits stream of `Decision` records, deduplicated by key (the transaction id).
pub const DECISIONS: &str = "decisions";
/// Limits stream of `Label` records (ground truth), read only by the audit.
pub const LABELS: &str = "labels";
/// Dead-letter stream of `transactions`: `DeadLetter` records.
pub const TRANSACTIONS_DLQ: &str = "transactions.dlq";
/// Default consumer group of work-queue streams.
pub const DEFAULT_GROUP: &str = "workers";
