//! Key dedupe of `decisions` outlives retention and restarts (issue 12, item 4).
mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// Produces one record with `key` to `decisions`: `(base_offset, stored, deduplicated)`.
async fn decide(
    c: &mut txpipe_client::broker::v1::broker_client::BrokerClient<tonic::transport::Channel>,
    key: &str,
) -> (u64, u32, u32) {
    let r = produce(c, vec![batch("decisions", 0, 0, vec![rec(key, "approve")])])
        .await
        .unwrap()
        .pop()
        .unwrap();
    (r.base_offset, r.stored, r.deduplicated)
}

#[tokio::test]
async fn a_decision_key_is_still_deduplicated_after_retention_trimmed_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.segment_bytes = 16 * 1024;
    cfg.decisions_max_bytes = 16 * 1024;
    let b = TestBroker::start(cfg);
    let mut c = b.client().await;
    assert_eq!(decide(&mut c, "tx-1").await, (0, 1, 0));
    let value = "f".repeat(400);
    let mut n = 0u64;
    wait_until(T, "tx-1 trimmed from decisions", || {
        let mut c = c.clone();
        n += 1;
        let value = value.clone();
        async move {
            let recs = (0..20)
                .map(|i| rec(&format!("filler-{n}-{i}"), &value))
                .collect();
            produce(&mut c, vec![batch("decisions", 0, 0, recs)])
                .await
                .unwrap();
            stream_info(&mut c, "decisions").await.start_offset > 0
        }
    })
    .await;
    let (base, stored, dedup) = decide(&mut c, "tx-1").await;
    assert_eq!((stored, dedup), (0, 1), "tx-1 stored again after retention");
    assert_eq!(base, 0, "answered with the original offset");
    let (_, body) = http_get(b.admin, "/metrics").await;
    assert!(
        body.contains("txpipe_broker_dedupe_window_seconds{stream=\"decisions\"} 604800"),
        "{body}"
    );
    let (_, json) = http_get(b.admin, "/status.json").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let decisions = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "decisions")
        .unwrap()
        .clone();
    assert_eq!(decisions["dedupe"]["window_seconds"], 604800);
    b.stop().await;
}

#[tokio::test]
async fn duplicates_are_still_detected_after_the_broker_crashes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    for i in 0..50 {
        assert_eq!(decide(&mut c, &format!("tx-{i}")).await.1, 1);
    }
    // Some keys land in a snapshot, the rest only in the log after it.
    wait_until(T, "snapshot written", || async {
        dir.path().join("streams/decisions/snapshot.bin").exists()
    })
    .await;
    for i in 50..60 {
        assert_eq!(decide(&mut c, &format!("tx-{i}")).await.1, 1);
    }
    b.crash();
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    for i in [0, 17, 49, 50, 59] {
        let (base, stored, dedup) = decide(&mut c, &format!("tx-{i}")).await;
        assert_eq!((base, stored, dedup), (i, 0, 1), "tx-{i} after the restart");
    }
    assert_eq!(decide(&mut c, "tx-60").await, (60, 1, 0));
    assert!(dir.path().join("streams/decisions/dedupe.redb").exists());
    b.stop().await;
}
