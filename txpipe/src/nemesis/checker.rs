//! The checker: a client workload with its own history, and the final analysis.
//!
//! It trusts none of the pipeline's counters. [`Workload`] produces its own uniquely keyed
//! records (`nemesis/<tag>/<n>`, a `Label` value) to the `labels` stream through an
//! idempotent [`Producer`], records every acknowledged batch (first key, record count, the
//! offset the broker gave it, when the acknowledgement was seen), and meanwhile reads the
//! stream's end offset (GetStream and Fetch, alternately, through a
//! [`LeaderRouter`]), recording when each read began and what it saw. At the end the whole
//! stream is read back and [`analyse`] reports:
//!
//! - **lost**: acknowledged, absent;
//! - **duplicated**: a key stored more than once;
//! - **unexpected**: a key of this run that was never sent;
//! - **misplaced**: an acknowledged key not at the offset its acknowledgement named;
//! - **stale reads**: a read begun after the acknowledgement of offset `o` saw an end offset
//!   `≤ o` (a linearizable read must see every write acknowledged before it began).
//!
//! [`check_pipeline`] does the same for the pipeline itself from the records alone: the
//! producer's transaction ids are deterministic (`tx-<20-digit counter>` from 0 up to its
//! `--count`), so once it has finished every one of them must be stored in `transactions`
//! exactly once (the brokers keep acknowledged records: `--retain-acked`) and have exactly one
//! decision, or a dead letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prost::Message;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use txpipe_client::broker::v1::{FetchRequest, GetStreamRequest, Record};
use txpipe_client::leader::{LeaderConfig, LeaderRouter};
use txpipe_client::pipeline::v1::{Decision, Label, Transaction};
use txpipe_client::produce::{Producer, ProducerConfig};
use txpipe_client::streams;

/// Records per checker batch.
const BATCH: u64 = 5;
/// Pause between checker batches.
const SEND_EVERY: Duration = Duration::from_millis(20);
/// Pause between checker reads.
const READ_EVERY: Duration = Duration::from_millis(50);
/// Deadline of one checker read, failover included.
const READ_DEADLINE: Duration = Duration::from_secs(3);
/// Examples kept per kind of violation.
const EXAMPLES: usize = 10;

/// One acknowledged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Number of the batch's first key.
    pub first: u64,
    /// Records in the batch (keys `first..first + n`).
    pub n: u64,
    /// Offset of the first record, as acknowledged.
    pub base_offset: u64,
    /// When the acknowledgement was seen (since the workload started).
    pub at: Duration,
}

/// One read of the stream's end offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// When the read began.
    pub began: Duration,
    /// The end offset it returned.
    pub end_offset: u64,
}

/// What the workload did.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Keys `0..sent` were handed to a producer.
    pub sent: u64,
    /// Acknowledged batches.
    pub acks: Vec<Ack>,
    /// Successful reads.
    pub reads: Vec<Read>,
    /// Reads that failed (no leader within the deadline).
    pub read_errors: u64,
    /// Producers that stopped with an error (a new one took over).
    pub producer_errors: u64,
    /// Batches whose outcome is unknown (their producer failed first).
    pub indeterminate_batches: u64,
}

/// The checker's findings about its own records.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckerReport {
    /// Records sent.
    pub sent: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Records of this run found in the stream.
    pub stored: u64,
    /// Sent, not acknowledged, but stored (allowed).
    pub stored_unacknowledged: u64,
    /// Acknowledged, absent.
    pub lost: u64,
    /// Extra copies of keys stored more than once.
    pub duplicated: u64,
    /// Keys of this run never sent.
    pub unexpected: u64,
    /// Acknowledged keys not at their acknowledged offset.
    pub misplaced: u64,
    /// Reads done.
    pub reads: u64,
    /// Reads that saw an end offset older than an acknowledgement before they began.
    pub stale_reads: u64,
    /// Largest staleness: records missing from a stale read.
    pub max_stale_records: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Producers that failed and were replaced.
    pub producer_errors: u64,
    /// Batches with no known outcome.
    pub indeterminate_batches: u64,
    /// Examples: key numbers or "began_ms:seen:required".
    pub examples: HashMap<String, Vec<String>>,
}

impl CheckerReport {
    /// The violations, as sentences.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("checker: {n} {what}"));
            }
        };
        add(self.lost, "acknowledged records lost");
        add(self.duplicated, "records stored twice");
        add(self.unexpected, "records stored that were never sent");
        add(self.misplaced, "records not at their acknowledged offset");
        add(self.stale_reads, "stale reads");
        v
    }

    fn example(&mut self, kind: &str, what: String) {
        let e = self.examples.entry(kind.to_string()).or_default();
        if e.len() < EXAMPLES {
            e.push(what);
        }
    }
}

/// Key of record `n` of run `tag`.
pub fn key(tag: &str, n: u64) -> String {
    format!("nemesis/{tag}/{n}")
}

/// The record number of `key` when it belongs to run `tag`.
pub fn parse_key(tag: &str, key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("nemesis/")?
        .strip_prefix(tag)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

/// The analysis of a history against the stored records `(offset, key number)` of this run.
pub fn analyse(h: &History, stored: &[(u64, u64)]) -> CheckerReport {
    let mut r = CheckerReport {
        sent: h.sent,
        reads: h.reads.len() as u64,
        read_errors: h.read_errors,
        producer_errors: h.producer_errors,
        indeterminate_batches: h.indeterminate_batches,
        ..CheckerReport::default()
    };
    let mut where_stored: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(offset, n) in stored {
        where_stored.entry(n).or_default().push(offset);
    }
    r.stored = stored.len() as u64;
    let mut acked: HashMap<u64, u64> = HashMap::new();
    for a in &h.acks {
        for k in 0..a.n {
            acked.insert(a.first + k, a.base_offset + k);
        }
    }
    r.acked = acked.len() as u64;
    let mut keys: Vec<_> = where_stored.iter().collect();
    keys.sort_unstable();
    for (&n, offsets) in keys {
        if offsets.len() > 1 {
            r.duplicated += offsets.len() as u64 - 1;
            r.example("duplicated", format!("{n} at {offsets:?}"));
        }
        if n >= h.sent {
            r.unexpected += 1;
            r.example("unexpected", n.to_string());
        } else if let Some(&want) = acked.get(&n) {
            if !offsets.contains(&want) {
                r.misplaced += 1;
                r.example(
                    "misplaced",
                    format!("{n} acked at {want}, stored at {offsets:?}"),
                );
            }
        } else {
            r.stored_unacknowledged += 1;
        }
    }
    let mut lost: Vec<u64> = acked
        .keys()
        .filter(|n| !where_stored.contains_key(n))
        .copied()
        .collect();
    lost.sort_unstable();
    r.lost = lost.len() as u64;
    for n in lost.iter().take(EXAMPLES) {
        r.example("lost", n.to_string());
    }
    // Stale reads: the end offset every read had to see is the highest end of a batch
    // acknowledged before it began.
    let mut acks: Vec<(Duration, u64)> =
        h.acks.iter().map(|a| (a.at, a.base_offset + a.n)).collect();
    acks.sort_unstable();
    let mut reads = h.reads.clone();
    reads.sort_by_key(|r| r.began);
    let (mut i, mut required) = (0, 0u64);
    for read in &reads {
        while i < acks.len() && acks[i].0 < read.began {
            required = required.max(acks[i].1);
            i += 1;
        }
        if read.end_offset < required {
            r.stale_reads += 1;
            r.max_stale_records = r.max_stale_records.max(required - read.end_offset);
            r.example(
                "stale_reads",
                format!(
                    "began at {} ms: saw end offset {}, acknowledged up to {}",
                    read.began.as_millis(),
                    read.end_offset,
                    required
                ),
            );
        }
    }
    r
}

/// The checker's workload, running until [`Workload::finish`].
pub struct Workload {
    stop: watch::Sender<bool>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
    history: Arc<Mutex<History>>,
}

impl Workload {
    /// Starts producing to and reading `labels` on `addrs` as run `tag`.
    pub fn start(addrs: Vec<String>, tag: String) -> Result<Self> {
        let history = Arc::new(Mutex::new(History::default()));
        let (stop, stopped) = watch::channel(false);
        let started = Instant::now();
        let router = reader_router(&addrs)?;
        let writer = tokio::spawn(write_loop(
            addrs,
            tag,
            started,
            history.clone(),
            stopped.clone(),
        ));
        let reader = tokio::spawn(read_loop(router, started, history.clone(), stopped));
        Ok(Self {
            stop,
            writer,
            reader,
            history,
        })
    }

    /// Stops sending and reading, waits for the outstanding acknowledgements, and returns the
    /// history.
    pub async fn finish(self) -> History {
        let _ = self.stop.send(true);
        let _ = self.writer.await;
        let _ = self.reader.await;
        self.history.lock().expect("history lock").clone()
    }
}

fn reader_router(addrs: &[String]) -> Result<LeaderRouter> {
    LeaderRouter::with_config(
        addrs.to_vec(),
        LeaderConfig {
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            ..LeaderConfig::default()
        },
    )
    .context("broker address list")
}

async fn write_loop(
    addrs: Vec<String>,
    tag: String,
    started: Instant,
    history: Arc<Mutex<History>>,
    stopped: watch::Receiver<bool>,
) {
    let mut next = 0u64;
    let mut receipts: Vec<JoinHandle<()>> = Vec::new();
    'connect: while !*stopped.borrow() {
        let mut config = ProducerConfig::new(addrs.clone(), streams::LABELS);
        config.reconnect_deadline = Duration::from_secs(30);
        let producer = match Producer::connect(config).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "checker producer cannot connect");
                history.lock().expect("history lock").producer_errors += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !*stopped.borrow() {
            let records: Vec<Record> = (next..next + BATCH)
                .map(|n| {
                    let k = key(&tag, n);
                    Record {
                        value: Label {
                            transaction_id: k.clone(),
                            is_fraud: false,
                            scenario: String::new(),
                        }
                        .encode_to_vec()
                        .into(),
                        key: k.into_bytes().into(),
                        timestamp_us: txpipe_client::now_us(),
                    }
                })
                .collect();
            let first = next;
            next += BATCH;
            history.lock().expect("history lock").sent = next;
            let receipt = match producer.send(records).await {
                Ok(r) => r,
                Err(_) => {
                    // The producer stopped: this batch was never handed over, the earlier ones
                    // resolve with its error. A new producer takes over.
                    let mut h = history.lock().expect("history lock");
                    h.producer_errors += 1;
                    h.indeterminate_batches += 1;
                    continue 'connect;
                }
            };
            let history = history.clone();
            receipts.push(tokio::spawn(async move {
                let outcome = receipt.await;
                let at = started.elapsed();
                let mut h = history.lock().expect("history lock");
                match outcome {
                    Ok(Ok(resp)) => h.acks.push(Ack {
                        first,
                        n: BATCH,
                        base_offset: resp.base_offset,
                        at,
                    }),
                    _ => h.indeterminate_batches += 1,
                }
            }));
            tokio::time::sleep(SEND_EVERY).await;
        }
        if tokio::time::timeout(Duration::from_secs(40), producer.close())
            .await
            .is_err()
        {
            tracing::warn!("checker producer did not close within 40 s");
        }
    }
    for r in receipts {
        let _ = r.await;
    }
}

async fn read_loop(
    router: LeaderRouter,
    started: Instant,
    history: Arc<Mutex<History>>,
    stopped: watch::Receiver<bool>,
) {
    let mut fetch = false;
    let mut last_end = 0u64;
    while !*stopped.borrow() {
        fetch = !fetch;
        let began = started.elapsed();
        let end = if fetch {
            let req = FetchRequest {
                stream: streams::LABELS.into(),
                start_offset: last_end.saturating_sub(1),
                max_records: 1,
                max_bytes: 64 << 10,
            };
            router
                .call(streams::LABELS, READ_DEADLINE, |mut c| {
                    let req = req.clone();
                    async move { c.fetch(req).await }
                })
                .await
                .map(|r| r.end_offset)
        } else {
            router
                .call(streams::LABELS, READ_DEADLINE, |mut c| async move {
                    c.get_stream(GetStreamRequest {
                        stream: streams::LABELS.into(),
                    })
                    .await
                })
                .await
                .map(|r| r.stream.map_or(0, |s| s.end_offset))
        };
        {
            let mut h = history.lock().expect("history lock");
            match end {
                Ok(end_offset) => {
                    last_end = last_end.max(end_offset);
                    h.reads.push(Read { began, end_offset });
                }
                Err(_) => h.read_errors += 1,
            }
        }
        tokio::time::sleep(READ_EVERY).await;
    }
}

/// Reads every record of `stream` through `router` (each Fetch goes to the stream's leader,
/// within `deadline`), calling `f(offset, key, value)`. Errors: no leader answers in time,
/// or the stream no longer starts at offset 0.
pub async fn read_all(
    router: &LeaderRouter,
    stream: &str,
    deadline: Duration,
    mut f: impl FnMut(u64, &[u8], &[u8]),
) -> Result<()> {
    let mut next = 0u64;
    loop {
        let req = FetchRequest {
            stream: stream.to_string(),
            start_offset: next,
            max_records: 5_000,
            max_bytes: 4 << 20,
        };
        let resp = router
            .call(stream, deadline, |mut c| {
                let req = req.clone();
                async move { c.fetch(req).await }
            })
            .await
            .with_context(|| format!("reading {stream} at offset {next}"))?;
        anyhow::ensure!(
            resp.start_offset <= next,
            "{stream} starts at offset {} (retention removed records from {next})",
            resp.start_offset
        );
        for r in &resp.records {
            if let Some(rec) = &r.record {
                f(r.offset, &rec.key, &rec.value);
            }
        }
        if resp.records.is_empty() || resp.next_offset >= resp.end_offset {
            return Ok(());
        }
        next = resp.next_offset;
    }
}

/// Reads the checker's records (those of run `tag`) from `labels`: `(offset, key number)`.
pub async fn read_own(router: &LeaderRouter, tag: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    read_all(
        router,
        streams::LABELS,
        Duration::from_secs(30),
        |o, k, _| {
            if let Some(n) = parse_key(tag, k) {
                out.push((o, n));
            }
        },
    )
    .await?;
    Ok(out)
}

/// The pipeline's records, as read back: transaction ids in `transactions`, decision ids,
/// dead-letter keys.
#[derive(Debug, Default, Clone)]
pub struct PipelineRecords {
    /// Ids of the stored transactions, one per record.
    pub transactions: Vec<String>,
    /// Transaction ids of the decisions, one per record.
    pub decisions: Vec<String>,
    /// Keys (transaction ids) of the dead letters.
    pub dead_letters: Vec<String>,
    /// Records that did not decode.
    pub undecodable: u64,
}

/// Reads `transactions`, `decisions` and the dead-letter stream back.
pub async fn read_pipeline(router: &LeaderRouter) -> Result<PipelineRecords> {
    let deadline = Duration::from_secs(30);
    let mut p = PipelineRecords::default();
    let mut bad = 0u64;
    read_all(
        router,
        streams::TRANSACTIONS,
        deadline,
        |_, _, v| match Transaction::decode(v) {
            Ok(t) => p.transactions.push(t.id),
            Err(_) => bad += 1,
        },
    )
    .await?;
    read_all(
        router,
        streams::DECISIONS,
        deadline,
        |_, _, v| match Decision::decode(v) {
            Ok(d) => p.decisions.push(d.transaction_id),
            Err(_) => bad += 1,
        },
    )
    .await?;
    read_all(router, streams::TRANSACTIONS_DLQ, deadline, |_, k, _| {
        p.dead_letters.push(String::from_utf8_lossy(k).into_owned());
    })
    .await?;
    p.undecodable = bad;
    Ok(p)
}

/// The pipeline's findings.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PipelineReport {
    /// The producer exited successfully (so every one of its `count` transactions was
    /// acknowledged).
    pub producer_finished: bool,
    /// Transactions the producer was to send.
    pub expected: u64,
    /// Records in `transactions`.
    pub transactions_stored: u64,
    /// Expected ids absent from `transactions` (counted only once the producer finished).
    pub transactions_lost: u64,
    /// Extra copies of ids stored more than once in `transactions`.
    pub transactions_duplicated: u64,
    /// Ids in `transactions` that are not the producer's.
    pub transactions_unexpected: u64,
    /// Decision records.
    pub decisions: u64,
    /// Stored transactions with exactly one decision.
    pub decided_once: u64,
    /// Stored transactions without a decision, dead-lettered instead.
    pub dead_lettered: u64,
    /// Stored transactions with neither a decision nor a dead letter.
    pub undecided: u64,
    /// Extra decisions of transactions decided more than once.
    pub decisions_duplicated: u64,
    /// Decisions or dead letters of ids never stored.
    pub decisions_unexpected: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Examples per kind.
    pub examples: HashMap<String, Vec<String>>,
}

impl PipelineReport {
    /// The violations, as sentences.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.producer_finished {
            v.push("pipeline: the producer did not finish".into());
        }
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                v.push(format!("pipeline: {n} {what}"));
            }
        };
        add(self.transactions_lost, "acknowledged transactions lost");
        add(self.transactions_duplicated, "transactions stored twice");
        add(self.transactions_unexpected, "unexpected transactions");
        add(self.undecided, "transactions without a decision");
        add(self.decisions_duplicated, "duplicate decisions");
        add(self.decisions_unexpected, "unexpected decisions");
        add(self.undecodable, "undecodable records");
        v
    }

    fn example(&mut self, kind: &str, what: &str) {
        let e = self.examples.entry(kind.to_string()).or_default();
        if e.len() < EXAMPLES {
            e.push(what.to_string());
        }
    }
}

/// Id of the producer's transaction `n` (the generator's `tx-<20-digit counter>`).
pub fn transaction_id(n: u64) -> String {
    format!("tx-{n:020}")
}

/// Checks the pipeline's records against the producer's `count` deterministic ids.
pub fn check_pipeline(p: &PipelineRecords, count: u64, producer_finished: bool) -> PipelineReport {
    let mut r = PipelineReport {
        producer_finished,
        expected: count,
        transactions_stored: p.transactions.len() as u64,
        decisions: p.decisions.len() as u64,
        undecodable: p.undecodable,
        ..PipelineReport::default()
    };
    let mut stored: HashMap<&str, u32> = HashMap::new();
    for id in &p.transactions {
        *stored.entry(id.as_str()).or_default() += 1;
    }
    let expected = |id: &str| {
        id.strip_prefix("tx-")
            .filter(|d| d.len() == 20)
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|n| n < count)
    };
    let mut ids: Vec<_> = stored.iter().collect();
    ids.sort_unstable();
    for &(id, &n) in &ids {
        if n > 1 {
            r.transactions_duplicated += u64::from(n - 1);
            r.example("transactions_duplicated", id);
        }
        if !expected(id) {
            r.transactions_unexpected += 1;
            r.example("transactions_unexpected", id);
        }
    }
    if producer_finished {
        for n in 0..count {
            let id = transaction_id(n);
            if !stored.contains_key(id.as_str()) {
                r.transactions_lost += 1;
                r.example("transactions_lost", &id);
            }
        }
    }
    let mut decided: HashMap<&str, u32> = HashMap::new();
    for id in &p.decisions {
        *decided.entry(id.as_str()).or_default() += 1;
    }
    let dead: std::collections::HashSet<&str> = p.dead_letters.iter().map(String::as_str).collect();
    for (id, _) in &ids {
        match decided.get(**id).copied().unwrap_or(0) {
            0 if dead.contains(**id) => r.dead_lettered += 1,
            0 => {
                r.undecided += 1;
                r.example("undecided", id);
            }
            1 => r.decided_once += 1,
            n => {
                r.decisions_duplicated += u64::from(n - 1);
                r.example("decisions_duplicated", id);
            }
        }
    }
    let mut others: Vec<&str> = decided
        .keys()
        .chain(dead.iter())
        .filter(|id| !stored.contains_key(**id))
        .copied()
        .collect();
    others.sort_unstable();
    others.dedup();
    r.decisions_unexpected = others.len() as u64;
    for id in others.iter().take(EXAMPLES) {
        r.example("decisions_unexpected", id);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn keys_of_other_runs_are_not_ours() {
        assert_eq!(parse_key("a1", key("a1", 42).as_bytes()), Some(42));
        assert_eq!(parse_key("a1", key("a12", 42).as_bytes()), None);
        assert_eq!(parse_key("a1", b"tx-00000000000000000001"), None);
    }

    #[test]
    fn lost_duplicated_unexpected_and_misplaced_records_are_found() {
        let h = History {
            sent: 10,
            acks: vec![
                Ack {
                    first: 0,
                    n: 5,
                    base_offset: 100,
                    at: ms(10),
                },
                Ack {
                    first: 5,
                    n: 5,
                    base_offset: 105,
                    at: ms(20),
                },
            ],
            ..History::default()
        };
        // 0..5 at their offsets, 5 twice, 6 misplaced, 7 and 8 lost, 9 at its offset, 12
        // never sent.
        let stored = vec![
            (100, 0),
            (101, 1),
            (102, 2),
            (103, 3),
            (104, 4),
            (105, 5),
            (106, 5),
            (120, 6),
            (109, 9),
            (110, 12),
        ];
        let r = analyse(&h, &stored);
        assert_eq!((r.sent, r.acked, r.stored), (10, 10, 10));
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.misplaced, 1);
        assert_eq!(r.lost, 2);
        assert_eq!(r.unexpected, 1);
        assert_eq!(r.violations().len(), 4);
        assert_eq!(r.examples["lost"], vec!["7", "8"]);
    }

    #[test]
    fn a_read_that_began_after_an_acknowledgement_must_see_it() {
        let h = History {
            sent: 10,
            acks: vec![
                Ack {
                    first: 0,
                    n: 5,
                    base_offset: 0,
                    at: ms(10),
                },
                Ack {
                    first: 5,
                    n: 5,
                    base_offset: 5,
                    at: ms(20),
                },
            ],
            reads: vec![
                // Concurrent with the second ack: either answer is right.
                Read {
                    began: ms(15),
                    end_offset: 5,
                },
                Read {
                    began: ms(19),
                    end_offset: 10,
                },
                // After both: must see 10.
                Read {
                    began: ms(21),
                    end_offset: 10,
                },
                Read {
                    began: ms(25),
                    end_offset: 7,
                },
                Read {
                    began: ms(5),
                    end_offset: 0,
                },
            ],
            ..History::default()
        };
        let stored: Vec<(u64, u64)> = (0..10).map(|n| (n, n)).collect();
        let r = analyse(&h, &stored);
        assert_eq!(r.stale_reads, 1);
        assert_eq!(r.max_stale_records, 3);
        assert_eq!(r.lost + r.duplicated + r.unexpected + r.misplaced, 0);
        assert_eq!(r.violations(), vec!["checker: 1 stale reads".to_string()]);
    }

    #[test]
    fn unacknowledged_records_may_or_may_not_be_stored() {
        let h = History {
            sent: 10,
            ..History::default()
        };
        let r = analyse(&h, &[(0, 3)]);
        assert_eq!(r.stored_unacknowledged, 1);
        assert!(r.violations().is_empty());
    }

    #[test]
    fn every_transaction_of_a_finished_producer_needs_exactly_one_decision() {
        let ids = |v: &[u64]| v.iter().map(|&n| transaction_id(n)).collect::<Vec<_>>();
        let p = PipelineRecords {
            // 3 missing, 1 stored twice, one foreign id.
            transactions: [ids(&[0, 1, 1, 2, 4]), vec!["other".into()]].concat(),
            // 0 twice, 1 once, 2 dead-lettered, 4 undecided, 7 never stored.
            decisions: ids(&[0, 0, 1, 7]),
            dead_letters: ids(&[2]),
            undecodable: 0,
        };
        let r = check_pipeline(&p, 5, true);
        assert_eq!(r.transactions_lost, 1);
        assert_eq!(r.transactions_duplicated, 1);
        assert_eq!(r.transactions_unexpected, 1);
        assert_eq!(r.decided_once, 1);
        assert_eq!(r.decisions_duplicated, 1);
        assert_eq!(r.dead_lettered, 1);
        // 4 and "other".
        assert_eq!(r.undecided, 2);
        assert_eq!(r.decisions_unexpected, 1);
        let unfinished = check_pipeline(&p, 5, false);
        assert_eq!(unfinished.transactions_lost, 0);
        assert!(unfinished.violations()[0].contains("did not finish"));
        let clean = PipelineRecords {
            transactions: ids(&[0, 1]),
            decisions: ids(&[1, 0]),
            ..PipelineRecords::default()
        };
        assert!(check_pipeline(&clean, 2, true).violations().is_empty());
    }
}
