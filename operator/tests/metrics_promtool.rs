//! The operator's `/metrics` body, served by [`telemetry::serve`] after some reconciles, passes
//! `promtool check metrics` (Prometheus' own parser and linter) with no problem reported.
//!
//! promtool comes with Prometheus (Debian/Ubuntu: `apt-get install prometheus`; CI installs
//! it). It is looked up as `$PROMTOOL`, else on `PATH`. Without it the test prints why and
//! passes, except under CI (`CI=true`), where a missing promtool fails the test so that the
//! check cannot be skipped silently.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use txpipe_operator::Error;
use txpipe_operator::telemetry::{self, Metrics};

/// Upper bound of the HTTP waits.
const WAIT: Duration = Duration::from_secs(60);

/// `$PROMTOOL`, else the first executable `promtool` on `PATH`.
fn promtool() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &PathBuf| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(p) = std::env::var_os("PROMTOOL").map(PathBuf::from) {
        return executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("promtool"))
        .find(executable)
}

/// Runs `promtool check metrics` on `body`: (exit success, stdout + stderr).
fn check_metrics(promtool: &PathBuf, body: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.trim().to_string())
}

/// Serves the metrics on a loopback port, records reconciles of every result and several
/// error kinds, and returns the `/metrics` body.
async fn scrape_after_reconciles() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let (_ready_tx, ready_rx) = watch::channel(true);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        ready_rx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    for _ in 0..3 {
        metrics.start_reconcile().finish(&Ok::<(), Error>(()));
    }
    let errors = [
        Error::MissingField("uid"),
        Error::InvalidSpec {
            reason: "VolumeShrinkRefused".into(),
            message: "spec.brokers.storage: volumes cannot shrink".into(),
        },
        Error::BrokerAdmin {
            addr: "127.0.0.1:9180".into(),
            message: "connection refused".into(),
        },
    ];
    for e in errors {
        metrics.start_reconcile().finish(&Err::<(), _>(e));
    }
    metrics.leader.set(1);

    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let resp = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops")
        .expect("server task")
        .expect("server result");
    body
}

#[tokio::test]
async fn operator_metrics_pass_promtool_check_metrics() {
    let body = scrape_after_reconciles().await;
    // The body holds what promtool is asked to judge.
    for needle in [
        "txpipe_operator_reconciliations_total{result=\"ok\"} 3",
        "txpipe_operator_reconciliations_total{result=\"error\"} 3",
        "txpipe_operator_reconcile_errors_total{error=\"invalid_spec\"} 1",
        "txpipe_operator_reconcile_duration_seconds_count 6",
        "txpipe_operator_leader 1",
    ] {
        assert!(body.contains(needle), "{needle} missing:\n{body}");
    }
    #[cfg(target_os = "linux")]
    assert!(
        body.contains("# TYPE process_cpu_seconds_total counter"),
        "{body}"
    );

    let Some(promtool) = promtool() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool not found ($PROMTOOL or PATH) under CI: install prometheus"
        );
        println!("SKIPPED: promtool not found ($PROMTOOL or PATH); apt-get install prometheus");
        return;
    };
    // The invocation does catch problems: a counter without the `_total` suffix is reported.
    let (ok, out) = check_metrics(
        &promtool,
        "# HELP bad A counter.\n# TYPE bad counter\nbad 1\n",
    );
    assert!(
        !ok && out.contains("_total"),
        "promtool missed a lint problem: {out}"
    );

    let (ok, out) = check_metrics(&promtool, &body);
    println!(
        "promtool check metrics ({}): exit ok = {ok}, output: {out:?}",
        promtool.display()
    );
    assert!(
        ok && out.is_empty(),
        "promtool check metrics:\n{out}\n\nbody:\n{body}"
    );
}
