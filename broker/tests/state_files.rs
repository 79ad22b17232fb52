//! The small state files of a stream (`raft/committed.json`, `raft/vote.json`) found empty at
//! start-up, as a power loss can leave a file written without fsync or a damaged disk any file:
//!
//! - an empty `committed.json` (an optimisation, written without fsync) is ignored with a
//!   warning and every acknowledged record is still served;
//! - an empty `vote.json` on a single replica stops the broker with an error naming the file
//!   (it is never guessed: a wrong vote could elect two leaders in one term).

mod common;

use std::time::{Duration, Instant};

use common::procs::*;
use txpipe_client::broker::v1::FetchRequest;

const STREAM: &str = "decisions";

async fn produce_some(c: &ProcCluster) -> Vec<(u64, String)> {
    let mut acked = Vec::new();
    for b in 0..20 {
        let pairs = produce_keys(
            c,
            STREAM,
            vec![format!("k-{b}")],
            "v",
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("batch {b}: {e}"));
        acked.extend(pairs);
    }
    acked
}

fn raft_file(c: &ProcCluster, name: &str) -> std::path::PathBuf {
    c.nodes[0]
        .data_dir
        .join("streams")
        .join(STREAM)
        .join("raft")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_commit_index_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::new(dir.path(), 1, &[]);
    c.start_all(None);
    c.wait_serving(STREAM, Duration::from_secs(60)).await;
    let acked = produce_some(&c).await;
    // committed.json is written at most every 200 ms: wait until it exists.
    let path = raft_file(&c, "committed.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill(0);
    std::fs::write(&path, b"").unwrap();
    c.start(0, None);
    let leader = c.wait_serving(STREAM, Duration::from_secs(60)).await;
    let mut client = client_at(leader).await.unwrap();
    let r = client
        .fetch(FetchRequest {
            stream: STREAM.into(),
            start_offset: 0,
            max_records: 0,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for (off, key) in &acked {
        let got = r.records.iter().find(|f| f.offset == *off);
        assert_eq!(
            got.map(|f| String::from_utf8_lossy(&f.record.as_ref().unwrap().key).to_string()),
            Some(key.clone()),
            "record at {off}"
        );
    }
    assert!(
        c.log(0)
            .contains("ignoring an unreadable commit-index file"),
        "no warning:\n{}",
        c.log(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_vote_file_stops_a_single_replica_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::new(dir.path(), 1, &[]);
    c.start_all(None);
    c.wait_serving(STREAM, Duration::from_secs(60)).await;
    produce_some(&c).await;
    c.kill(0);
    let path = raft_file(&c, "vote.json");
    assert!(path.exists(), "{} missing", path.display());
    std::fs::write(&path, b"").unwrap();
    c.start(0, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = c.exited(0) {
            break st;
        }
        assert!(Instant::now() < deadline, "kept running\n{}", c.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!st.success());
    let log = c.log(0);
    assert!(
        log.contains("vote.json") && log.contains("only replica"),
        "the error does not name the file and the way out:\n{log}"
    );
}
