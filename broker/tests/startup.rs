//! Start-up failures: bad configuration and corrupted data are refused with a clear error.
mod common;

use common::*;

#[tokio::test]
async fn an_invalid_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.max_deliveries = 0;
    let err = txpipe_broker::run(cfg, listeners().await, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--max-deliveries 0"), "{err}");
    assert!(!dir.path().join("streams").exists(), "nothing was created");
}

#[test]
fn the_binary_names_a_bad_flag_value_and_exits_non_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe-broker"))
        .args([
            "--data-dir",
            "/nonexistent/x",
            "--ack-deadline-ms",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ack-deadline-ms 1"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe-broker"))
        .args(["--data-dir", "/x", "--fsync", "maybe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fsync"));
}

#[tokio::test]
async fn corruption_before_the_tail_of_a_stream_log_stops_the_broker_with_the_streams_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.segment_bytes = 4096;
    let b = TestBroker::start(cfg.clone());
    let mut c = b.client().await;
    for s in 1..=10u64 {
        let recs = (0..10)
            .map(|i| rec(&format!("k{s}-{i}"), &"v".repeat(100)))
            .collect();
        produce(&mut c, vec![batch("labels", 1, s, recs)])
            .await
            .unwrap();
    }
    b.stop().await;
    let seg = dir
        .path()
        .join("streams/labels/log/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    // The snapshot covers the log, so also remove it to force a replay through the bad frame.
    std::fs::remove_file(dir.path().join("streams/labels/snapshot.bin")).unwrap();
    let err = txpipe_broker::run(cfg, listeners().await, std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("corruption") && msg.contains("streams/labels/log"),
        "{msg}"
    );
}
