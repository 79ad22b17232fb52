//! Self-repair of a replica whose log is corrupt before its tail (`txpipe_broker::repair`):
//! broker processes on loopback, a byte flipped in the middle of a sealed segment of a stopped
//! replica, then:
//!
//! - with 3 replicas the damaged node moves its data to `quarantine/`, re-joins under a new
//!   node id, catches up, and every acknowledged record is read back from every node's view;
//! - with 1 replica the broker refuses to start and says why (the volume is the only copy).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::procs::*;
use common::{fetch_all, try_http_get};

const STREAM: &str = "decisions";
/// Small segments, so that a few hundred records make sealed segments to corrupt.
const FLAGS: &[&str] = &["--segment-bytes", "4096"];

/// Produces `n` 4-record batches; returns the acknowledged `offset → key`.
async fn produce_n(c: &ProcCluster, n: usize, tag: &str) -> BTreeMap<u64, String> {
    let mut acked = BTreeMap::new();
    let value = "v".repeat(200);
    for b in 0..n {
        let keys: Vec<String> = (0..4).map(|k| format!("{tag}-{b}-{k}")).collect();
        let pairs = produce_keys(c, STREAM, keys, &value, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("batch {b} not acknowledged: {e}"));
        acked.extend(pairs);
    }
    acked
}

/// Flips one byte in the middle of the oldest (sealed) segment of `STREAM` on `data_dir`;
/// returns the file.
fn corrupt_oldest_segment(data_dir: &Path) -> PathBuf {
    let log = data_dir.join("streams").join(STREAM).join("log");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    assert!(
        segs.len() >= 3,
        "too few segments to corrupt a sealed one: {segs:?}"
    );
    let seg = segs[0].clone();
    let mut b = std::fs::read(&seg).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x5a;
    std::fs::write(&seg, b).unwrap();
    seg
}

/// The Raft node id node `i` reports on its status page.
async fn node_id(c: &ProcCluster, i: usize) -> Option<u64> {
    let (_, body) = try_http_get(c.nodes[i].admin, "/status.json").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["node_id"].as_u64()
}

/// Every record of `STREAM` as the leader serves it, `offset → key`.
async fn read_all(c: &ProcCluster) -> BTreeMap<u64, String> {
    let leader = c.wait_serving(STREAM, Duration::from_secs(30)).await;
    let mut client = client_at(leader).await.unwrap();
    fetch_all(&mut client, STREAM)
        .await
        .into_iter()
        .map(|f| {
            let key = String::from_utf8_lossy(&f.record.unwrap().key).to_string();
            (f.offset, key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_corrupt_log_quarantines_it_and_resyncs_under_a_new_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::new(dir.path(), 3, FLAGS);
    c.start_all(None);
    let leader = c.wait_serving(STREAM, Duration::from_secs(60)).await;
    let mut acked = produce_n(&c, 60, "before").await;
    let victim = (0..3).find(|&i| c.nodes[i].grpc != leader).unwrap();
    let old_id = node_id(&c, victim).await.expect("victim's node id");
    c.kill(victim);
    let seg = corrupt_oldest_segment(&c.nodes[victim].data_dir);
    acked.extend(produce_n(&c, 10, "while-down").await);
    c.start(victim, None);

    // It re-joins under a new id and catches up; the others keep serving meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = c.exited(victim) {
            panic!(
                "the damaged replica exited ({st:?}) instead of repairing itself\n{}",
                c.log(victim)
            );
        }
        let id = node_id(&c, victim).await;
        let views = [
            c.stream_view(0, STREAM).await,
            c.stream_view(1, STREAM).await,
            c.stream_view(2, STREAM).await,
        ];
        if id.is_some_and(|id| id != old_id)
            && views[0].is_some()
            && views
                .iter()
                .all(|v| v.map(|v| v.1) == views[0].map(|v| v.1))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no repair within 60 s (node id {id:?}, was {old_id}; views {views:?})\n{}",
            c.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = c.log(victim);
    assert!(
        log.contains("quarantine"),
        "the repair is not logged:\n{log}"
    );
    let quarantined = c.nodes[victim].data_dir.join("quarantine");
    let copies: Vec<_> = std::fs::read_dir(&quarantined).unwrap().collect();
    assert_eq!(copies.len(), 1, "one quarantined copy of {}", seg.display());
    acked.extend(produce_n(&c, 5, "after").await);
    let stored = read_all(&c).await;
    for (off, key) in &acked {
        assert_eq!(stored.get(off), Some(key), "acknowledged record at {off}");
    }
    // The old identity is no longer a voter of the stream's group.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = try_http_get(c.nodes[victim].admin, "/status.json")
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let voters: Vec<u64> = v["raft"][STREAM]["voters"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        if voters.len() == 3 && !voters.contains(&old_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old identity {old_id} still a voter, or not 3 voters: {voters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_with_a_corrupt_log_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::new(dir.path(), 1, FLAGS);
    c.start_all(None);
    c.wait_serving(STREAM, Duration::from_secs(60)).await;
    let acked = produce_n(&c, 60, "single").await;
    assert!(!acked.is_empty());
    c.kill(0);
    corrupt_oldest_segment(&c.nodes[0].data_dir);
    c.start(0, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = c.exited(0) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "a single replica with a corrupt log kept running\n{}",
            c.log(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!st.success(), "exit status {st:?}");
    let log = c.log(0);
    assert!(
        log.contains("only replica") && log.contains("corrupt"),
        "the refusal does not say why:\n{log}"
    );
    assert!(
        !c.nodes[0].data_dir.join("quarantine").exists(),
        "a single replica must not move its only copy"
    );
}
