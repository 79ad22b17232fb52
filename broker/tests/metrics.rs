//! The admin port's `/metrics` body: the fdatasync-only histogram
//! (`txpipe_broker_fsync_duration_seconds`) is observed by the group-commit writer when fsync
//! is on and stays empty when it is off, and the `process_*` metrics are served.
mod common;

use common::*;

/// Value of the sample `series` (name with its labels, exactly as rendered) in a body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `(stream, value)` of every sample line of `name` with a single `stream` label.
fn per_stream(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{stream=\"")?;
            let (stream, value) = rest.split_once("\"} ")?;
            Some((stream.to_string(), value.parse().ok()?))
        })
        .collect()
}

const FSYNC_COUNT: &str = "txpipe_broker_fsync_duration_seconds_count";
const APPEND_COUNT: &str = "txpipe_broker_append_duration_seconds_count";

/// Produces one record to `transactions` and returns the `/metrics` body read after the
/// broker acknowledged it (so the stream's log append, and its fdatasync if any, are done).
async fn produce_one_and_scrape(b: &TestBroker) -> String {
    let mut c = b.client().await;
    produce(
        &mut c,
        vec![batch("transactions", 7, 1, vec![rec("k", "v")])],
    )
    .await
    .unwrap();
    let (code, body) = http_get(b.admin, "/metrics").await;
    assert_eq!(code, 200);
    body
}

#[tokio::test]
async fn fsync_histogram_counts_the_fdatasyncs_of_acknowledged_appends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    assert!(cfg.fsync, "test_config syncs");
    let b = TestBroker::start(cfg);
    let body = produce_one_and_scrape(&b).await;
    assert!(
        body.contains("# TYPE txpipe_broker_fsync_duration_seconds histogram"),
        "{body}"
    );
    let series = "{stream=\"transactions\"}";
    let fsyncs = sample(&body, &format!("{FSYNC_COUNT}{series}")).expect("fsync count");
    let appends = sample(&body, &format!("{APPEND_COUNT}{series}")).expect("append count");
    assert!(fsyncs >= 1.0, "no fdatasync observed:\n{body}");
    // One fdatasync per group-commit batch: never more syncs than appended batches.
    assert!(fsyncs <= appends, "fsyncs {fsyncs} > appends {appends}");
    let sum = sample(
        &body,
        &format!("txpipe_broker_fsync_duration_seconds_sum{series}"),
    )
    .expect("fsync sum");
    assert!(sum > 0.0, "{sum}");
    b.stop().await;
}

#[tokio::test]
async fn fsync_histogram_stays_empty_without_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.fsync = false;
    let b = TestBroker::start(cfg);
    let body = produce_one_and_scrape(&b).await;
    let appends = per_stream(&body, APPEND_COUNT);
    assert!(
        appends
            .iter()
            .any(|(s, n)| s == "transactions" && *n >= 1.0),
        "the append path ran: {appends:?}"
    );
    let fsyncs = per_stream(&body, FSYNC_COUNT);
    assert_eq!(fsyncs.len(), 4, "a series per stream: {fsyncs:?}");
    assert!(fsyncs.iter().all(|(_, n)| *n == 0.0), "{fsyncs:?}");
    b.stop().await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn process_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let (code, body) = http_get(b.admin, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        assert!(sample(&body, name).is_some(), "{name} missing:\n{body}");
    }
    assert!(sample(&body, "process_resident_memory_bytes").unwrap() > 0.0);
    // The broker holds its segment files and listeners open.
    assert!(sample(&body, "process_open_fds").unwrap() >= 3.0);
    b.stop().await;
}
