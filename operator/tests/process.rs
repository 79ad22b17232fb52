//! Process-level tests: the telemetry HTTP server, leader election against a fake Lease API,
//! and the `txpipe-operator` binary (`crd`, `--help`, and the missing-CRD startup failure
//! against a fake API server).
//!
//! Every network wait is bounded by [`WAIT`]; nothing sleeps for a fixed time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use txpipe_operator::lease::{self, LeadOutcome, LeaseConfig, StopSignal};
use txpipe_operator::telemetry::{self, Metrics};

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// Serves `router` on an ephemeral local port.
async fn spawn_server(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("fake server");
    });
    addr
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

// ------------------------------------------------------------------------------------------
// Telemetry server
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_serves_metrics_health_and_readiness_and_stops() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Metrics::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        ready_rx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let http = http();
    let url = |path: &str| format!("http://{addr}{path}");

    let health = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let ready = http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready before the flag is set");
    ready_tx.send(true).unwrap();
    let ready = http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready once the flag is set");

    metrics
        .start_reconcile()
        .finish(&Ok::<(), txpipe_operator::Error>(()));
    metrics
        .start_reconcile()
        .finish(&Err::<(), _>(txpipe_operator::Error::MissingField("uid")));
    metrics.leader.set(1);
    let resp = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("txpipe_operator_reconciliations_total{result=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("txpipe_operator_reconciliations_total{result=\"error\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("txpipe_operator_reconcile_errors_total{error=\"missing_field\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("txpipe_operator_reconcile_duration_seconds_count 2"),
        "{body}"
    );
    assert!(body.contains("txpipe_operator_leader 1"), "{body}");

    let missing = http.get(url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops after the shutdown future completes")
        .expect("server task")
        .expect("server result");
}

// ------------------------------------------------------------------------------------------
// Leader election against a fake coordination.k8s.io Lease API
// ------------------------------------------------------------------------------------------

/// In-memory Lease store answering GET, POST (create) and PATCH (apply or strategic merge of
/// `spec`; `null` removes a field) like the API server does for these simple cases.
#[derive(Clone, Default)]
struct FakeLeases {
    lease: Arc<Mutex<Option<Value>>>,
}

impl FakeLeases {
    fn spec(&self) -> Value {
        self.lease
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|l| l.get("spec").cloned())
            .unwrap_or(Value::Null)
    }

    fn holder(&self) -> Option<String> {
        self.spec()
            .get("holderIdentity")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Sets the Lease as held by `holder`, renewed now, valid for `duration_secs`.
    fn set_holder(&self, name: &str, holder: &str, duration_secs: u64) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        *self.lease.lock().unwrap() = Some(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "100"},
            "spec": {
                "holderIdentity": holder,
                "acquireTime": now,
                "renewTime": now,
                "leaseDurationSeconds": duration_secs,
                "leaseTransitions": 1,
            }
        }));
    }
}

fn status(code: u16, reason: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("fake API server: {reason}"), "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn fake_lease_api(
    State(fake): State<FakeLeases>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if !path.starts_with("/apis/coordination.k8s.io/v1/namespaces/default/leases") {
        return status(404, "NotFound");
    }
    let mut guard = fake.lease.lock().unwrap();
    let bump = |lease: &mut Value| {
        let rv: u64 = lease["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        lease["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    };
    let ok = |v: &Value| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            v.to_string(),
        )
            .into_response()
    };
    match method {
        Method::GET => match guard.as_ref() {
            Some(lease) => ok(lease),
            None => status(404, "NotFound"),
        },
        Method::POST => {
            if guard.is_some() {
                return status(409, "AlreadyExists");
            }
            let mut lease: Value = serde_json::from_slice(&body).unwrap();
            lease["metadata"]["namespace"] = json!("default");
            lease["metadata"]["resourceVersion"] = json!("1");
            *guard = Some(lease.clone());
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                lease.to_string(),
            )
                .into_response()
        }
        Method::PATCH => {
            let Some(lease) = guard.as_mut() else {
                return status(404, "NotFound");
            };
            let patch: Value = serde_json::from_slice(&body).unwrap();
            if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
                && lease["metadata"]["resourceVersion"].as_str() != Some(expected)
            {
                return status(409, "Conflict");
            }
            if !lease["spec"].is_object() {
                lease["spec"] = json!({});
            }
            if let Some(fields) = patch.get("spec").and_then(Value::as_object) {
                let spec = lease["spec"].as_object_mut().unwrap();
                for (k, v) in fields {
                    if v.is_null() {
                        spec.remove(k);
                    } else {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
            bump(lease);
            ok(lease)
        }
        _ => status(405, "MethodNotAllowed"),
    }
}

async fn fake_lease_client(fake: &FakeLeases) -> kube::Client {
    let addr = spawn_server(
        Router::new()
            .fallback(fake_lease_api)
            .with_state(fake.clone()),
    )
    .await;
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn lease_config(name: &str) -> LeaseConfig {
    let mut config = LeaseConfig::new(name, "default", lease::MIN_LEASE_DURATION_SECS).unwrap();
    config.stop_timeout = Duration::from_secs(10);
    config
}

#[test]
fn lease_timing_follows_the_duration() {
    let config = LeaseConfig::new("l", "ns", 15).unwrap();
    assert_eq!(config.grace_secs(), 5);
    assert_eq!(config.renew_period_secs(), 10);
    assert_eq!(config.safety_margin(), Duration::from_millis(2500));
    let config = LeaseConfig::new("l", "ns", 3).unwrap();
    assert_eq!(config.grace_secs(), 1);
    assert_eq!(config.renew_period_secs(), 2);
    assert!(matches!(
        LeaseConfig::new("l", "ns", 2),
        Err(lease::LeaseError::InvalidDuration(2))
    ));
    assert_ne!(lease::default_identity(), lease::default_identity());
}

#[tokio::test]
async fn stop_signal_fires_on_send_and_on_sender_drop() {
    let (tx, stop) = StopSignal::new();
    assert!(!stop.is_stopped());
    tx.send(true).unwrap();
    assert!(stop.is_stopped());
    tokio::time::timeout(WAIT, stop.wait()).await.unwrap();

    let (tx, stop) = StopSignal::new();
    drop(tx);
    assert!(stop.is_stopped());
    tokio::time::timeout(WAIT, stop.wait()).await.unwrap();
}

#[tokio::test]
async fn lead_runs_the_work_as_leader_and_releases_on_shutdown() {
    let fake = FakeLeases::default();
    let client = fake_lease_client(&fake).await;
    let config = lease_config("lead-shutdown");
    let metrics = Metrics::new();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();

    let observer = async {
        tokio::time::timeout(WAIT, started_rx)
            .await
            .expect("became leader in time")
            .unwrap();
        assert_eq!(metrics.leader.get(), 1, "leader gauge while leading");
        assert_eq!(fake.holder().as_deref(), Some(config.identity.as_str()));
        shutdown_tx.send(()).unwrap();
    };
    let leading = lease::lead(
        client,
        &config,
        &metrics,
        async move {
            let _ = shutdown_rx.await;
        },
        |stop: StopSignal| async move {
            started_tx.send(()).unwrap();
            stop.wait().await;
            "stopped cleanly"
        },
    );
    let (outcome, ()) = tokio::time::timeout(WAIT, async { tokio::join!(leading, observer) })
        .await
        .expect("lead returns after shutdown");
    assert_eq!(outcome.unwrap(), LeadOutcome::Finished("stopped cleanly"));
    assert_eq!(metrics.leader.get(), 0, "leader gauge after the term");
    assert_eq!(fake.holder(), None, "the Lease was released");
}

#[tokio::test]
async fn lead_stops_the_work_when_another_replica_takes_the_lease() {
    let fake = FakeLeases::default();
    let client = fake_lease_client(&fake).await;
    let config = lease_config("lead-lost");
    let metrics = Metrics::new();
    let (started_tx, started_rx) = oneshot::channel::<()>();

    let thief = async {
        tokio::time::timeout(WAIT, started_rx)
            .await
            .expect("became leader in time")
            .unwrap();
        fake.set_holder("lead-lost", "another-replica", 3600);
    };
    let leading = lease::lead(
        client,
        &config,
        &metrics,
        std::future::pending::<()>(),
        |stop: StopSignal| async move {
            started_tx.send(()).unwrap();
            stop.wait().await;
            7
        },
    );
    let (outcome, ()) = tokio::time::timeout(WAIT, async { tokio::join!(leading, thief) })
        .await
        .expect("the loss is detected in time");
    assert_eq!(outcome.unwrap(), LeadOutcome::LeaseLost(Some(7)));
    assert_eq!(metrics.leader.get(), 0);
    assert_eq!(
        fake.holder().as_deref(),
        Some("another-replica"),
        "a lost Lease is not released"
    );
}

#[tokio::test]
async fn lead_returns_not_leader_when_stopped_while_standing_by() {
    let fake = FakeLeases::default();
    fake.set_holder("lead-standby", "another-replica", 3600);
    let client = fake_lease_client(&fake).await;
    let config = lease_config("lead-standby");
    let metrics = Metrics::new();
    let outcome = tokio::time::timeout(
        WAIT,
        lease::lead(
            client,
            &config,
            &metrics,
            std::future::ready(()),
            |_stop: StopSignal| async { unreachable!("the work must not run without the Lease") },
        ),
    )
    .await
    .expect("lead returns");
    assert_eq!(outcome.unwrap(), LeadOutcome::<()>::NotLeader);
    assert_eq!(metrics.leader.get(), 0);
    assert_eq!(fake.holder().as_deref(), Some("another-replica"));
}

// ------------------------------------------------------------------------------------------
// The binary
// ------------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_txpipe-operator");

/// Runs the binary with `args` and extra `env`, without any in-cluster configuration, and
/// returns its output; fails the test if it runs longer than [`WAIT`].
async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("OPERATOR_") && !env.iter().any(|(e, _)| *e == k) {
            cmd.env_remove(k);
        }
    }
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the binary exits in time")
        .expect("running the binary")
}

#[tokio::test]
async fn crd_subcommand_prints_the_crd_yaml() {
    let out = run_bin(&["crd"], &[]).await;
    assert!(out.status.success(), "{out:?}");
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("valid YAML");
    assert_eq!(yaml["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(yaml["kind"], "CustomResourceDefinition");
    assert_eq!(yaml["metadata"]["name"], "transactionpipelines.txpipe.io");
    assert_eq!(yaml["spec"]["group"], "txpipe.io");
    // Byte-for-byte the library's CRD (what crds/ holds and CI diffs).
    let expected = serde_yaml::to_string(
        &<txpipe_operator::crd::TransactionPipeline as kube::CustomResourceExt>::crd(),
    )
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[tokio::test]
async fn help_lists_the_subcommands_and_env_vars() {
    let out = run_bin(&["--help"], &[]).await;
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "run",
        "crd",
        "render",
        "--namespace",
        "OPERATOR_NAMESPACE",
        "--leader-election",
        "--apply-crd",
        "--log-format",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// A fake API server that answers 404 (a JSON `Status`) to every request and records the
/// request paths.
async fn spawn_not_found_api() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let router = Router::new().fallback(move |uri: Uri| {
        let recorder = recorder.clone();
        async move {
            recorder.lock().unwrap().push(uri.path().to_string());
            status(404, "NotFound")
        }
    });
    (spawn_server(router).await, seen)
}

fn write_kubeconfig(dir: &tempfile::TempDir, addr: SocketAddr) -> String {
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn run_fails_fast_when_the_crd_is_not_installed() {
    let (addr, seen) = spawn_not_found_api().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(&dir, addr);
    let out = run_bin(
        &["run", "--metrics-listen=127.0.0.1:0"],
        &[("KUBECONFIG", &kubeconfig)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must exit non-zero: {stderr}");
    assert!(
        stderr.contains("the TransactionPipeline CRD is not installed")
            && stderr.contains("--apply-crd"),
        "{stderr}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|p| p == "/apis/txpipe.io/v1alpha1/transactionpipelines"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn run_without_subcommand_checks_the_crd_in_the_namespace_from_the_env() {
    let (addr, seen) = spawn_not_found_api().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(&dir, addr);
    let out = run_bin(
        &[],
        &[
            ("KUBECONFIG", &kubeconfig),
            ("OPERATOR_NAMESPACE", "team-a"),
            ("OPERATOR_METRICS_LISTEN", "127.0.0.1:0"),
            ("OPERATOR_LOG_FORMAT", "json"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must exit non-zero: {stderr}");
    assert!(
        stderr.contains("the TransactionPipeline CRD is not installed"),
        "{stderr}"
    );
    assert!(
        stderr.lines().all(|l| l.trim_start().starts_with('{')),
        "json log lines: {stderr}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|p| p == "/apis/txpipe.io/v1alpha1/namespaces/team-a/transactionpipelines"),
        "{seen:?}"
    );
}
