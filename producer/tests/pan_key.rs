//! Card data fails closed (issue 14): the producer refuses to start without a PAN key, or with
//! a keyring it cannot use, and says which flags to give. Runs the built binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `txpipe-producer` with `args` and no PAN key in the environment (plus `env`), against
/// a broker address nothing listens on: (exit code, stderr). Fails after 30 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txpipe-producer"));
    cmd.args(["--brokers=127.0.0.1:1", "--count=10", "--progress=never"])
        .args(args)
        .env_remove("TXPIPE_PAN_KEY")
        .env_remove("TXPIPE_PAN_KEY_FILE")
        .env_remove("TXPIPE_PAN_KEY_ID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("txpipe-producer runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("txpipe-producer did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_producer_refuses_to_start_without_a_pan_key() {
    let (code, err) = run(&[], &[]);
    assert_eq!(code, Some(2), "usage error: {err}");
    assert!(err.contains("no PAN key configured"), "{err}");
    assert!(
        err.contains("--pan-key-file") && err.contains("TXPIPE_PAN_KEY_FILE"),
        "{err}"
    );
    assert!(err.contains("--pan-key-hex"), "{err}");
    assert!(!err.contains("development key"), "{err}");
}

#[test]
fn the_producer_refuses_a_keyring_it_cannot_use_naming_the_flag_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, format!("k1 {}\nk2 short\n", "ab".repeat(32))).unwrap();
    let (code, err) = run(&["--pan-key-file", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "usage error: {err}");
    assert!(
        err.contains("--pan-key-file") && err.contains("line 2"),
        "{err}"
    );

    let good = dir.path().join("good");
    std::fs::write(&good, format!("k1 {}\n", "ab".repeat(32))).unwrap();
    let (code, err) = run(
        &[],
        &[
            ("TXPIPE_PAN_KEY_FILE", good.to_str().unwrap()),
            ("TXPIPE_PAN_KEY_ID", "k7"),
        ],
    );
    assert_eq!(code, Some(2), "usage error: {err}");
    assert!(
        err.contains("--pan-key-id") && err.contains("\"k7\" is not in the keyring"),
        "{err}"
    );
}
