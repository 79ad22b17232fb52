//! The exactly-once audit: reads `labels`, `decisions`, the dead-letter stream and the
//! `transactions` statistics back from a running broker and checks that every produced
//! transaction has exactly one decision (or a dead letter), that no decision is unexpected and
//! that nothing was lost. It also scores the decisions against the ground-truth labels
//! (precision, recall, per fraud scenario) and computes end-to-end latency percentiles.
//!
//! Ground truth: the producer writes one `Label` per transaction to the `labels` stream, which
//! no worker reads. The audit treats the set of label ids as "what was produced".
//!
//! With a replicated broker every stream has its own leader, possibly on different nodes, and
//! only the leader answers Fetch and GetStream about it. [`run_audit_cluster`] takes the full
//! broker list and sends each request to its stream's leader through a
//! [`LeaderRouter`] (leader hints, failover with backoff, a deadline per request), so an audit
//! also survives a leader change while it reads.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tonic::transport::Channel;
use txpipe_client::broker::v1::{
    FetchRequest, FetchResponse, GetStreamRequest, GetStreamResponse, StreamInfo,
    broker_client::BrokerClient,
};
use txpipe_client::leader::LeaderRouter;
use txpipe_client::pipeline::v1::{Decision, Label, Outcome};
use txpipe_client::streams;

/// Recall figures for one fraud scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioRecall {
    /// Fraudulent transactions of this scenario.
    pub total: u64,
    /// Of those, decided `review` or `decline`.
    pub flagged: u64,
    /// Of those, decided `decline`.
    pub declined: u64,
}

/// Precision and recall of one way of reading decisions as "fraud".
#[derive(Debug, Clone, Default, Serialize)]
pub struct Confusion {
    /// Fraud, flagged.
    pub true_positives: u64,
    /// Genuine, flagged.
    pub false_positives: u64,
    /// Fraud, not flagged.
    pub false_negatives: u64,
    /// Genuine, not flagged.
    pub true_negatives: u64,
}

impl Confusion {
    fn add(&mut self, fraud: bool, flagged: bool) {
        match (fraud, flagged) {
            (true, true) => self.true_positives += 1,
            (false, true) => self.false_positives += 1,
            (true, false) => self.false_negatives += 1,
            (false, false) => self.true_negatives += 1,
        }
    }

    /// TP / (TP + FP); 0 when nothing was flagged.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// TP / (TP + FN); 0 when there was no fraud.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Harmonic mean of precision and recall, 2PR / (P + R); 0 when both are 0.
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

/// Area under the precision-recall curve of `scored` (score, is_fraud) pairs, as *average
/// precision*: `AP = Σ_n (R_n − R_{n−1}) · P_n` over the distinct score thresholds in
/// decreasing order, tied scores forming one threshold — the definition of scikit-learn's
/// `average_precision_score` (Zhu 2004, "Recall, precision and average precision"), which is
/// what the published baselines of the ULB data report as AUPRC. A constant score gives the
/// fraud rate. `None` when there is no fraud. Sorts `scored` in place.
pub fn average_precision(scored: &mut [(f32, bool)]) -> Option<f64> {
    let positives = scored.iter().filter(|(_, f)| *f).count();
    if positives == 0 {
        return None;
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < scored.len() {
        let s = scored[i].0;
        while i < scored.len() && scored[i].0 == s {
            tp += usize::from(scored[i].1);
            seen += 1;
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        ap += (recall - last_recall) * (tp as f64 / seen as f64);
        last_recall = recall;
    }
    Some(ap)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// Everything the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Transactions produced (labels read).
    pub produced: u64,
    /// Records in the `transactions` stream (its end offset); equals `produced` when the
    /// idempotent producer stored nothing twice.
    pub transactions_stored: u64,
    /// Decisions read.
    pub decisions: u64,
    /// Transactions with exactly one decision.
    pub decided_once: u64,
    /// Transactions in the dead-letter stream (and without a decision).
    pub dead_lettered: u64,
    /// Transactions with neither a decision nor a dead letter.
    pub lost: u64,
    /// Transactions with more than one decision (extra decisions counted).
    pub duplicated: u64,
    /// Decisions or dead letters for transaction ids that were never produced.
    pub unexpected: u64,
    /// Transactions still pending in the broker (neither acked nor dead-lettered).
    pub pending: u64,
    /// Decisions per outcome name.
    pub outcomes: BTreeMap<String, u64>,
    /// "Fraud" = decided review or decline.
    pub flagged: Confusion,
    /// "Fraud" = decided decline.
    pub declined: Confusion,
    /// Average precision (area under the precision-recall curve) of the decisions' scores
    /// against the labels, over the labelled transactions' first decisions; `None` without
    /// fraud. See [`average_precision`].
    pub auprc: Option<f64>,
    /// Decisions per `model_version`.
    pub model_versions: BTreeMap<String, u64>,
    /// Recall per fraud scenario.
    pub scenarios: BTreeMap<String, ScenarioRecall>,
    /// Produce-to-decision latency (Decision.decided_at_us - Decision.produced_at_us).
    pub latency: Latency,
    /// Worker-side scoring time per transaction (Decision.scoring_us).
    pub scoring: Latency,
    /// Up to 10 example ids of lost transactions.
    pub lost_examples: Vec<String>,
    /// Up to 10 example ids of duplicated transactions.
    pub duplicated_examples: Vec<String>,
    /// Up to 10 example ids of unexpected decisions.
    pub unexpected_examples: Vec<String>,
    /// First decision time to last decision time, seconds.
    pub decision_span_s: f64,
}

impl AuditReport {
    /// True when nothing was lost, duplicated or unexpected, every produced transaction was
    /// stored exactly once, and nothing is left pending.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.pending == 0
            && self.transactions_stored == self.produced
            && self.produced > 0
    }

    /// Why the audit failed, one line per reason (empty when it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.produced == 0 {
            f.push("no transactions were produced (the labels stream is empty)".into());
        }
        if self.lost > 0 {
            f.push(format!(
                "{} transactions lost, e.g. {:?}",
                self.lost, self.lost_examples
            ));
        }
        if self.duplicated > 0 {
            f.push(format!(
                "{} duplicate decisions, e.g. {:?}",
                self.duplicated, self.duplicated_examples
            ));
        }
        if self.unexpected > 0 {
            f.push(format!(
                "{} unexpected decisions, e.g. {:?}",
                self.unexpected, self.unexpected_examples
            ));
        }
        if self.pending > 0 {
            f.push(format!(
                "{} transactions still pending in the broker",
                self.pending
            ));
        }
        if self.transactions_stored != self.produced {
            f.push(format!(
                "transactions stream holds {} records but {} were produced (a batch stored twice or lost)",
                self.transactions_stored, self.produced
            ));
        }
        f
    }
}

/// Where the audit reads from: Fetch and GetStream about one stream.
pub trait StreamReader {
    /// One Fetch call.
    fn fetch(&mut self, req: FetchRequest) -> impl Future<Output = Result<FetchResponse>> + Send;
    /// One GetStream call.
    fn get_stream(
        &mut self,
        req: GetStreamRequest,
    ) -> impl Future<Output = Result<GetStreamResponse>> + Send;
}

/// One broker, as it is (no leader following): a single-node broker, or a node known to lead
/// every stream read.
impl StreamReader for BrokerClient<Channel> {
    async fn fetch(&mut self, req: FetchRequest) -> Result<FetchResponse> {
        Ok(BrokerClient::fetch(self, req).await?.into_inner())
    }

    async fn get_stream(&mut self, req: GetStreamRequest) -> Result<GetStreamResponse> {
        Ok(BrokerClient::get_stream(self, req).await?.into_inner())
    }
}

/// Sends each request to the leader of its stream (see [`txpipe_client::leader`]); a request
/// that finds no leader within `deadline` fails.
#[derive(Debug, Clone)]
pub struct LeaderReader {
    /// The router over the broker list.
    pub router: LeaderRouter,
    /// Overall deadline of each request, failover included.
    pub deadline: Duration,
}

impl StreamReader for LeaderReader {
    async fn fetch(&mut self, req: FetchRequest) -> Result<FetchResponse> {
        let stream = req.stream.clone();
        Ok(self
            .router
            .call(&stream, self.deadline, |mut c| {
                let req = req.clone();
                async move { c.fetch(req).await }
            })
            .await?)
    }

    async fn get_stream(&mut self, req: GetStreamRequest) -> Result<GetStreamResponse> {
        let stream = req.stream.clone();
        Ok(self
            .router
            .call(&stream, self.deadline, |mut c| {
                let req = req.clone();
                async move { c.get_stream(req).await }
            })
            .await?)
    }
}

/// Reads every record of `stream` from offset `start`, calling `f(offset, key, value)`.
/// Returns the stream's end offset. Errors if the stream's start offset is above `start`
/// (retention removed records the caller needed).
pub async fn fetch_all(
    client: &mut impl StreamReader,
    stream: &str,
    mut f: impl FnMut(u64, &[u8], &[u8]),
) -> Result<u64> {
    let mut next = 0u64;
    loop {
        let resp = client
            .fetch(FetchRequest {
                stream: stream.to_string(),
                start_offset: next,
                max_records: 10_000,
                max_bytes: 8 << 20,
            })
            .await
            .with_context(|| format!("fetching {stream} at offset {next}"))?;
        if resp.start_offset > next {
            anyhow::bail!(
                "stream {stream} starts at offset {} (retention removed records from {next}); cannot audit it",
                resp.start_offset
            );
        }
        for r in &resp.records {
            if let Some(rec) = &r.record {
                f(r.offset, &rec.key, &rec.value);
            }
        }
        if resp.records.is_empty() || resp.next_offset >= resp.end_offset {
            return Ok(resp.end_offset);
        }
        next = resp.next_offset;
    }
}

/// Statistics of one stream.
pub async fn stream_info(client: &mut impl StreamReader, stream: &str) -> Result<StreamInfo> {
    client
        .get_stream(GetStreamRequest {
            stream: stream.to_string(),
        })
        .await
        .with_context(|| format!("reading statistics of stream {stream}"))?
        .stream
        .with_context(|| format!("broker returned no statistics for {stream}"))
}

fn latency_of(h: &Histogram<u64>, scale: f64) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        p50_ms: h.value_at_quantile(0.5) as f64 / scale,
        p99_ms: h.value_at_quantile(0.99) as f64 / scale,
        p999_ms: h.value_at_quantile(0.999) as f64 / scale,
        max_ms: h.max() as f64 / scale,
    }
}

/// Default deadline of each audit request in [`run_audit_cluster`], failover included.
pub const AUDIT_REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the audit against the broker behind `channel`, without leader following: right for a
/// single-node broker; with replicas use [`run_audit_cluster`].
pub async fn run_audit(channel: Channel) -> Result<AuditReport> {
    let client = BrokerClient::new(channel).max_decoding_message_size(64 << 20);
    audit_with(client).await
}

/// Runs the audit against a replicated broker: `addrs` is the full broker list (`host:port` or
/// `http://host:port`), and each Fetch/GetStream goes to its stream's leader, failing over
/// within `deadline` per request ([`AUDIT_REQUEST_DEADLINE`] is a good default).
///
/// Errors: an invalid or empty address list; a request that found no leader within
/// `deadline`; a broker rejection (e.g. NOT_FOUND for a missing stream); unreadable records.
/// With `tls`, the brokers are dialled over mutual TLS.
pub async fn run_audit_cluster(
    addrs: &[String],
    deadline: Duration,
    tls: Option<txpipe_client::tls::TlsOptions>,
) -> Result<AuditReport> {
    let router = LeaderRouter::with_config(
        addrs.to_vec(),
        txpipe_client::leader::LeaderConfig {
            tls,
            ..Default::default()
        },
    )
    .context("broker address list")?;
    audit_with(LeaderReader { router, deadline }).await
}

/// Runs the audit, reading through `client`: the labels (what was produced), the decisions
/// and the dead letters, then the `transactions` statistics.
///
/// Errors: a read fails (see [`fetch_all`]), or a record of `labels` or `decisions` is not a
/// valid message.
pub async fn audit_with(mut client: impl StreamReader) -> Result<AuditReport> {
    let mut labels = read_labels(&mut client).await?;
    let mut tally = DecisionTally::new(labels.len())?;
    let mut bad_decisions = 0u64;
    fetch_all(
        &mut client,
        streams::DECISIONS,
        |_, _, value| match Decision::decode(value) {
            Ok(d) => tally.add(d, &mut labels),
            Err(_) => bad_decisions += 1,
        },
    )
    .await?;
    if bad_decisions > 0 {
        anyhow::bail!(
            "{bad_decisions} records of the decisions stream are not valid Decision messages"
        );
    }
    let dead = read_dead_letters(&mut client).await?;
    let tx = stream_info(&mut client, streams::TRANSACTIONS).await?;
    let mut report = tally.into_report(labels.len() as u64);
    reconcile(&mut report, &labels, &dead);
    report.transactions_stored = tx.end_offset;
    report.pending = tx.pending;
    Ok(report)
}

/// What the labels stream says about one produced transaction, and how many decisions the
/// audit has seen for it.
struct Truth {
    fraud: bool,
    scenario: String,
    decisions: u32,
}

/// The ground truth: every label, by transaction id. Errors: a record is not a `Label`.
async fn read_labels(client: &mut impl StreamReader) -> Result<HashMap<String, Truth>> {
    let mut labels = HashMap::new();
    let mut bad = 0u64;
    fetch_all(client, streams::LABELS, |_, _, value| {
        match Label::decode(value) {
            Ok(l) => {
                let truth = Truth {
                    fraud: l.is_fraud,
                    scenario: l.scenario,
                    decisions: 0,
                };
                labels.insert(l.transaction_id, truth);
            }
            Err(_) => bad += 1,
        }
    })
    .await?;
    if bad > 0 {
        anyhow::bail!("{bad} records of the labels stream are not valid Label messages");
    }
    Ok(labels)
}

/// Dead letters per transaction id (the record key).
async fn read_dead_letters(client: &mut impl StreamReader) -> Result<HashMap<String, u32>> {
    let mut dead: HashMap<String, u32> = HashMap::new();
    fetch_all(client, streams::TRANSACTIONS_DLQ, |_, key, _| {
        *dead
            .entry(String::from_utf8_lossy(key).into_owned())
            .or_default() += 1;
    })
    .await?;
    Ok(dead)
}

/// At most this many example ids per kind of failure.
const EXAMPLES: usize = 10;

/// Pushes `id` to `examples` unless it holds [`EXAMPLES`] already.
fn example(examples: &mut Vec<String>, id: &str) {
    if examples.len() < EXAMPLES {
        examples.push(id.to_string());
    }
}

/// The decisions stream, tallied record by record as it is read.
struct DecisionTally {
    decisions: u64,
    outcomes: BTreeMap<String, u64>,
    model_versions: BTreeMap<String, u64>,
    /// Decided-at time of the first and last decision, µs.
    decided: (i64, i64),
    latency: Histogram<u64>,
    scoring: Histogram<u64>,
    unexpected: u64,
    unexpected_examples: Vec<String>,
    flagged: Confusion,
    declined: Confusion,
    scenarios: BTreeMap<String, ScenarioRecall>,
    /// (score, is fraud) of each labelled transaction's first decision.
    scored: Vec<(f32, bool)>,
}

impl DecisionTally {
    /// An empty tally for about `expected` transactions.
    fn new(expected: usize) -> Result<Self> {
        Ok(Self {
            decisions: 0,
            outcomes: BTreeMap::new(),
            model_versions: BTreeMap::new(),
            decided: (i64::MAX, i64::MIN),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            scoring: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            unexpected: 0,
            unexpected_examples: Vec::new(),
            flagged: Confusion::default(),
            declined: Confusion::default(),
            scenarios: BTreeMap::new(),
            scored: Vec::with_capacity(expected),
        })
    }

    /// Counts decision `d`; a transaction's first decision is scored against its label.
    fn add(&mut self, d: Decision, labels: &mut HashMap<String, Truth>) {
        self.decisions += 1;
        let outcome = Outcome::try_from(d.outcome).unwrap_or(Outcome::Unspecified);
        let name = outcome.as_str_name().trim_start_matches("OUTCOME_");
        *self.outcomes.entry(name.to_lowercase()).or_default() += 1;
        if let Some(n) = self.model_versions.get_mut(&d.model_version) {
            *n += 1;
        } else {
            self.model_versions.insert(d.model_version.clone(), 1);
        }
        self.decided = (
            self.decided.0.min(d.decided_at_us),
            self.decided.1.max(d.decided_at_us),
        );
        let _ = self
            .latency
            .record((d.decided_at_us - d.produced_at_us).max(1) as u64);
        let _ = self.scoring.record(u64::from(d.scoring_us).max(1));
        let Some(truth) = labels.get_mut(&d.transaction_id) else {
            self.unexpected += 1;
            example(&mut self.unexpected_examples, &d.transaction_id);
            return;
        };
        truth.decisions += 1;
        if truth.decisions > 1 {
            return;
        }
        let is_flagged = matches!(outcome, Outcome::Review | Outcome::Decline);
        let is_declined = outcome == Outcome::Decline;
        self.flagged.add(truth.fraud, is_flagged);
        self.declined.add(truth.fraud, is_declined);
        self.scored.push((d.score, truth.fraud));
        if truth.fraud {
            let s = self.scenarios.entry(truth.scenario.clone()).or_default();
            s.total += 1;
            s.flagged += u64::from(is_flagged);
            s.declined += u64::from(is_declined);
        }
    }

    /// The report's figures about decisions, for `produced` transactions.
    fn into_report(mut self, produced: u64) -> AuditReport {
        let (first, last) = self.decided;
        AuditReport {
            produced,
            decisions: self.decisions,
            unexpected: self.unexpected,
            unexpected_examples: self.unexpected_examples,
            outcomes: self.outcomes,
            flagged: self.flagged,
            declined: self.declined,
            auprc: average_precision(&mut self.scored),
            model_versions: self.model_versions,
            scenarios: self.scenarios,
            latency: latency_of(&self.latency, 1000.0),
            scoring: latency_of(&self.scoring, 1000.0),
            decision_span_s: if last > first {
                (last - first) as f64 / 1e6
            } else {
                0.0
            },
            ..AuditReport::default()
        }
    }
}

/// Sorts every produced transaction into decided once, dead-lettered, lost or duplicated,
/// and counts dead letters of transactions never produced as unexpected.
fn reconcile(
    report: &mut AuditReport,
    labels: &HashMap<String, Truth>,
    dead: &HashMap<String, u32>,
) {
    for (id, truth) in labels {
        match truth.decisions {
            0 if dead.contains_key(id) => report.dead_lettered += 1,
            0 => {
                report.lost += 1;
                example(&mut report.lost_examples, id);
            }
            1 => report.decided_once += 1,
            n => {
                report.duplicated += u64::from(n - 1);
                example(&mut report.duplicated_examples, id);
            }
        }
    }
    for id in dead.keys().filter(|id| !labels.contains_key(*id)) {
        report.unexpected += 1;
        example(&mut report.unexpected_examples, id);
    }
}

/// Human-readable report of an audit.
pub fn render(report: &AuditReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "audit: {}",
        if report.passed() { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(
        s,
        "  produced {}  stored {}  decisions {}  decided once {}  dead-lettered {}",
        report.produced,
        report.transactions_stored,
        report.decisions,
        report.decided_once,
        report.dead_lettered
    );
    let _ = writeln!(
        s,
        "  lost {}  duplicated {}  unexpected {}  pending {}",
        report.lost, report.duplicated, report.unexpected, report.pending
    );
    for f in report.failures() {
        let _ = writeln!(s, "  FAIL: {f}");
    }
    let _ = writeln!(
        s,
        "latency produce->decision: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        report.latency.p50_ms, report.latency.p99_ms, report.latency.p999_ms, report.latency.max_ms
    );
    let _ = writeln!(
        s,
        "scoring time per transaction: p50 {:.3} ms  p99 {:.3} ms",
        report.scoring.p50_ms, report.scoring.p99_ms
    );
    let outcomes: Vec<String> = report
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(s, "decisions: {}", outcomes.join("  "));
    let _ = writeln!(
        s,
        "fraud (review or decline = flagged): precision {:.3}  recall {:.3}  F1 {:.3}   (decline only: precision {:.3}  recall {:.3}  F1 {:.3})",
        report.flagged.precision(),
        report.flagged.recall(),
        report.flagged.f1(),
        report.declined.precision(),
        report.declined.recall(),
        report.declined.f1()
    );
    if let Some(ap) = report.auprc {
        let fraud = report.flagged.true_positives + report.flagged.false_negatives;
        let total = fraud + report.flagged.false_positives + report.flagged.true_negatives;
        let _ = writeln!(
            s,
            "AUPRC (average precision of the scores) {ap:.4} over {total} labelled transactions, {fraud} fraud (a constant score would get {:.4})",
            ratio(fraud, total)
        );
    }
    if !report.model_versions.is_empty() {
        let v: Vec<String> = report
            .model_versions
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(s, "decisions by model: {}", v.join("  "));
    }
    if !report.scenarios.is_empty() {
        let _ = writeln!(s, "recall per fraud scenario (flagged / total):");
        for (name, r) in &report.scenarios {
            let _ = writeln!(
                s,
                "  {:<22} {:>7} / {:<7} {:>6.1}%   declined {:>6.1}%",
                if name.is_empty() {
                    "(no scenario given)"
                } else {
                    name
                },
                r.flagged,
                r.total,
                100.0 * ratio(r.flagged, r.total),
                100.0 * ratio(r.declined, r.total)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_matches_scikit_learn() {
        // Expected values from sklearn.metrics.average_precision_score 1.9.1.
        let pairs = |s: &[f32], y: &[u8]| -> Vec<(f32, bool)> {
            s.iter().zip(y).map(|(s, y)| (*s, *y == 1)).collect()
        };
        let cases: [(&[f32], &[u8], f64); 3] = [
            (
                &[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                &[1, 0, 1, 0, 0, 1],
                0.7222222222222222,
            ),
            // Ties are one threshold.
            (
                &[0.5, 0.5, 0.3, 0.3, 0.1, 0.9],
                &[1, 0, 1, 0, 1, 0],
                0.41111111111111115,
            ),
            // A constant score gets the positive rate.
            (&[0.2, 0.2, 0.2, 0.2], &[1, 0, 0, 0], 0.25),
        ];
        for (s, y, want) in cases {
            let got = average_precision(&mut pairs(s, y)).unwrap();
            assert!((got - want).abs() < 1e-12, "{s:?} {y:?}: {got} vs {want}");
        }
        assert_eq!(average_precision(&mut pairs(&[0.1, 0.2], &[0, 0])), None);
        let c = Confusion {
            true_positives: 6,
            false_positives: 2,
            false_negatives: 4,
            true_negatives: 100,
        };
        // P = 0.75, R = 0.6, F1 = 2 * 0.45 / 1.35
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12, "{}", c.f1());
        assert_eq!(Confusion::default().f1(), 0.0);
    }
    use txpipe_client::broker::v1::{FetchedRecord, Record};

    /// A record's key and value.
    type Kv = (Vec<u8>, Vec<u8>);

    /// Streams held in memory, paged two records per Fetch.
    struct Memory(HashMap<String, Vec<Kv>>);

    impl StreamReader for Memory {
        async fn fetch(&mut self, req: FetchRequest) -> Result<FetchResponse> {
            let recs = self.0.get(&req.stream).cloned().unwrap_or_default();
            let end = recs.len() as u64;
            let records: Vec<FetchedRecord> = recs
                .into_iter()
                .enumerate()
                .skip(req.start_offset as usize)
                .take(2)
                .map(|(i, (key, value))| FetchedRecord {
                    offset: i as u64,
                    record: Some(Record {
                        key: key.into(),
                        value: value.into(),
                        timestamp_us: 0,
                    }),
                })
                .collect();
            Ok(FetchResponse {
                next_offset: req.start_offset + records.len() as u64,
                records,
                end_offset: end,
                start_offset: 0,
            })
        }

        async fn get_stream(&mut self, req: GetStreamRequest) -> Result<GetStreamResponse> {
            let end = self.0.get(&req.stream).map_or(0, |r| r.len()) as u64;
            Ok(GetStreamResponse {
                stream: Some(StreamInfo {
                    name: req.stream,
                    end_offset: end,
                    ..Default::default()
                }),
            })
        }
    }

    fn label(id: &str) -> Kv {
        let l = Label {
            transaction_id: id.into(),
            is_fraud: false,
            scenario: String::new(),
        };
        (id.as_bytes().to_vec(), l.encode_to_vec())
    }

    fn decision(id: &str) -> Kv {
        let d = Decision {
            transaction_id: id.into(),
            outcome: Outcome::Approve as i32,
            produced_at_us: 1,
            decided_at_us: 2,
            ..Default::default()
        };
        (id.as_bytes().to_vec(), d.encode_to_vec())
    }

    #[tokio::test]
    async fn the_audit_reads_every_page_through_any_reader_and_flags_losses_and_duplicates() {
        let ids = ["t1", "t2", "t3", "t4", "t5"];
        let mut m = HashMap::new();
        m.insert(
            streams::LABELS.to_string(),
            ids.iter().map(|i| label(i)).collect(),
        );
        m.insert(
            streams::DECISIONS.to_string(),
            ["t1", "t2", "t2", "t3", "t4", "zz"]
                .iter()
                .map(|i| decision(i))
                .collect(),
        );
        m.insert(
            streams::TRANSACTIONS.to_string(),
            ids.iter().map(|i| label(i)).collect(),
        );
        let r = audit_with(Memory(m)).await.unwrap();
        assert_eq!(r.produced, 5);
        assert_eq!(r.transactions_stored, 5);
        assert_eq!(r.decisions, 6);
        assert_eq!(r.decided_once, 3);
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.lost, 1);
        assert_eq!(r.lost_examples, vec!["t5".to_string()]);
        assert_eq!(r.unexpected, 1);
        assert!(!r.passed());
    }
}
