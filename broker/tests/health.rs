//! Health tells the truth and one broker owns a volume: a full disk makes the stream
//! NOT_SERVING, `/readyz` 503 and `/healthz` 500, a restart with space recovers every
//! acknowledged record; a second broker on the same data directory is refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `mount -t tmpfs -o size=<size> tmpfs <dir>`; `false` when this machine does not allow it
/// (not root). Under `CI=true` that is a failure: CI runs as root and must run this test.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to mount a tmpfs (run as root)"
        );
        eprintln!("skipping: cannot mount a tmpfs here (needs root)");
    }
    ok
}

struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

async fn grpc_health(b: &TestBroker, service: &str) -> i32 {
    let mut h = HealthClient::new(b.channel().await);
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .map(|r| r.into_inner().status)
    .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_flips_health_and_a_restart_with_space_recovers_every_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("vol");
    std::fs::create_dir_all(&mnt).unwrap();
    if !mount_tmpfs(&mnt, "3m") {
        return;
    }
    let _unmount = Unmount(&mnt);
    let data = mnt.join("data");
    let mut config = test_config(&data);
    config.segment_bytes = 256 << 10;
    let (grpc, peer, admin) = bind3();
    let addrs = (
        grpc.try_clone().unwrap(),
        peer.try_clone().unwrap(),
        admin.try_clone().unwrap(),
    );
    let b = TestBroker::start_on(config.clone(), (grpc, peer, admin));
    let mut c = b.client().await;
    let stream_service = txpipe_broker::stream_health_service("transactions");
    assert_eq!(
        grpc_health(&b, &stream_service).await,
        ServingStatus::Serving as i32
    );

    // Produce 8 KiB records until the disk is full: each acknowledged key is remembered.
    let value = "x".repeat(8 << 10);
    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..2_000 {
        let key = format!("k{i}");
        match produce(
            &mut c,
            vec![batch("transactions", 0, 0, vec![rec(&key, &value)])],
        )
        .await
        {
            Ok(_) => acked.push(key),
            Err(s) => {
                failure = Some(s);
                break;
            }
        }
    }
    let failure = failure.expect("a 3 MiB disk fills up before 16 MiB are written");
    assert!(
        !acked.is_empty(),
        "some produces succeed first: {failure:?}"
    );

    wait_until(Duration::from_secs(10), "/healthz fails", || async {
        http_get(b.admin, "/healthz").await.0 == 500
    })
    .await;
    let (code, body) = http_get(b.admin, "/healthz").await;
    assert_eq!(code, 500);
    assert!(
        body.contains("restart needed") && body.contains("transactions"),
        "{body}"
    );
    let (code, body) = http_get(b.admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("transactions: log failed"), "{body}");
    assert_eq!(
        grpc_health(&b, &stream_service).await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(grpc_health(&b, "").await, ServingStatus::NotServing as i32);

    // Space is back; the kubelet restarts the pod (here: crash and start on the same data).
    b.crash();
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let b = TestBroker::start_on(config, addrs);
    let mut c = b.client().await;
    wait_until(
        Duration::from_secs(20),
        "/readyz 200 after restart",
        || async { http_get(b.admin, "/readyz").await.0 == 200 },
    )
    .await;
    assert_eq!(http_get(b.admin, "/healthz").await.0, 200);
    let stored: Vec<String> = fetch_all(&mut c, "transactions")
        .await
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.record.unwrap().key).to_string())
        .collect();
    for k in &acked {
        assert!(stored.contains(k), "acknowledged record {k} lost");
    }
    // And the stream takes writes again.
    produce(
        &mut c,
        vec![batch("transactions", 0, 0, vec![rec("after", "ok")])],
    )
    .await
    .expect("writes succeed once space is back");
    b.stop().await;
}

#[tokio::test]
async fn a_second_broker_process_on_the_same_data_directory_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let _ = b.client().await;
    let out = Command::new(env!("CARGO_BIN_EXE_txpipe-broker"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the second broker must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another broker")
            && stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    // The first one still serves.
    let mut c = b.client().await;
    produce(
        &mut c,
        vec![batch("transactions", 0, 0, vec![rec("k", "v")])],
    )
    .await
    .unwrap();
    b.stop().await;
}
