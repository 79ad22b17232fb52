//! Reconcile tests against a fake Kubernetes API server (tower-test mock service) and a fake
//! broker admin API. Every reconcile runs under a timeout, so a request the fake never answers
//! fails the test instead of hanging it; requests to resources the fake does not serve fail it
//! too.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::{FakeAdmin, FakeApi, Recorded, broker_status};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use txpipe_operator::controller::{self, Context};
use txpipe_operator::crd::TransactionPipeline;
use txpipe_operator::render;
use txpipe_operator::telemetry::Metrics;
use txpipe_operator::{Error, Result};

const NS: &str = "txp";
const NAME: &str = "demo";
const UID: &str = "pipeline-uid-1";
const PIPELINE: &str = "/apis/txpipe.io/v1alpha1/namespaces/txp/transactionpipelines/demo";
const STS: &str = "/apis/apps/v1/namespaces/txp/statefulsets/demo-broker";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/txp/deployments/demo-worker";
const SM_CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/txp/events";
const TIMEOUT: Duration = Duration::from_secs(20);
/// The tests' fixed wall clock, Unix seconds (2027-01-15).
const T0: i64 = 1_800_000_000;

/// A pipeline with `spec` (and a `panKeySecret` unless `spec` sets one, as the operator
/// requires).
fn pipeline(generation: i64, mut spec: Value) -> TransactionPipeline {
    if let Some(m) = spec.as_object_mut() {
        m.entry("panKeySecret")
            .or_insert_with(|| json!({"name": "pan"}));
    }
    serde_json::from_value(json!({
        "apiVersion": "txpipe.io/v1alpha1",
        "kind": "TransactionPipeline",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": generation},
        "spec": spec,
    }))
    .expect("pipeline")
}

struct Harness {
    api: FakeApi,
    admin: FakeAdmin,
    server: common::Server,
    ctx: Arc<Context>,
}

impl Harness {
    fn new() -> Self {
        Self::with_clock(Arc::new(AtomicI64::new(T0)))
    }

    /// A harness whose controller reads the time (Unix seconds) from `clock`.
    fn with_clock(clock: Arc<AtomicI64>) -> Self {
        let api = FakeApi::default();
        let admin = FakeAdmin::default();
        let server = api.serve();
        let ctx = Arc::new(
            Context::new(
                server.client.clone(),
                Arc::new(admin.clone()),
                Metrics::new(),
                Some("test".into()),
            )
            .with_clock(move || clock.load(Ordering::SeqCst)),
        );
        Self {
            api,
            admin,
            server,
            ctx,
        }
    }

    /// Stores `p` (so status patches apply to it) and reconciles it, with a timeout.
    async fn reconcile(&self, p: &TransactionPipeline) -> Result<Action> {
        self.api
            .put(PIPELINE, serde_json::to_value(p).expect("pipeline json"));
        tokio::time::timeout(
            TIMEOUT,
            controller::reconcile(Arc::new(p.clone()), Arc::clone(&self.ctx)),
        )
        .await
        .expect("reconcile timed out: a request was not answered")
    }

    /// The pipeline as stored, with the status the reconcile wrote.
    fn stored(&self) -> TransactionPipeline {
        serde_json::from_value(self.api.get(PIPELINE).expect("pipeline stored")).expect("pipeline")
    }

    async fn finish(self) {
        self.api.assert_no_unexpected();
        drop(self.ctx);
        self.server.finish().await;
    }
}

fn applies(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter().filter(|r| r.is_apply()).collect()
}

fn applied<'a>(reqs: &'a [Recorded], path: &str) -> &'a Value {
    reqs.iter()
        .rfind(|r| r.is_apply() && r.path == path)
        .and_then(|r| r.body.as_ref())
        .unwrap_or_else(|| panic!("no apply of {path}"))
}

fn condition(p: &TransactionPipeline, type_: &str) -> (String, String) {
    let c = p
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone())
}

fn events(reqs: &[Recorded]) -> Vec<(String, String)> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.path == EVENTS)
        .map(|r| {
            let b = r.body.as_ref().expect("event body");
            (
                b["type"].as_str().unwrap_or("").to_string(),
                b["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn deletes(reqs: &[Recorded]) -> Vec<&Recorded> {
    reqs.iter().filter(|r| r.method == "DELETE").collect()
}

fn pod(ordinal: i32, ready: bool, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("demo-broker-{ordinal}"), "namespace": NS,
            "uid": format!("pod-uid-{ordinal}"),
            "labels": {
                "app.kubernetes.io/name": "txpipe", "app.kubernetes.io/instance": NAME,
                "app.kubernetes.io/component": "broker", "txpipe.io/pipeline": NAME,
                "controller-revision-hash": revision,
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn pod_path(ordinal: i32) -> String {
    format!("/api/v1/namespaces/txp/pods/demo-broker-{ordinal}")
}

/// A live broker StatefulSet of `replicas` (all ready), volumes of `size`, on `update_revision`.
fn live_sts(replicas: i32, size: &str, update_revision: &str) -> Value {
    let selector = json!({
        "app.kubernetes.io/name": "txpipe", "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/component": "broker",
    });
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo-broker", "namespace": NS, "uid": "sts-uid", "generation": 2},
        "spec": {
            "replicas": replicas,
            "serviceName": "demo-broker-headless",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": {"containers": []}},
            "volumeClaimTemplates": [{
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
                "status": {"phase": "Pending"},
            }],
        },
        "status": {
            "observedGeneration": 2, "replicas": replicas, "readyReplicas": replicas,
            "currentRevision": "rev-old", "updateRevision": update_revision,
        },
    })
}

/// Admin and peer addresses of the first `n` brokers of the test pipeline.
fn addrs(p: &TransactionPipeline, n: i32) -> (Vec<String>, Vec<String>) {
    (
        render::broker_admin_addrs(p, n),
        render::broker_peer_addrs(p, n),
    )
}

#[tokio::test]
async fn creation_applies_every_child_object_and_reports_progress() {
    let h = Harness::new();
    h.api.put(SM_CRD, json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "servicemonitors.monitoring.coreos.com"}}));
    let p = pipeline(
        1,
        json!({
            "workers": {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 8}},
            "producer": {"count": 1000},
            "monitoring": {"serviceMonitor": true},
        }),
    );

    let action = h.reconcile(&p).await.expect("reconcile");
    assert_eq!(action, Action::requeue(controller::REQUEUE_PROGRESSING));

    let reqs = h.api.requests();
    let want = [
        "/api/v1/namespaces/txp/configmaps/demo-config",
        "/api/v1/namespaces/txp/services/demo-broker-headless",
        "/api/v1/namespaces/txp/services/demo-broker",
        STS,
        "/apis/policy/v1/namespaces/txp/poddisruptionbudgets/demo-broker",
        DEPLOYMENT,
        "/apis/policy/v1/namespaces/txp/poddisruptionbudgets/demo-worker",
        "/apis/autoscaling/v2/namespaces/txp/horizontalpodautoscalers/demo-worker",
        "/apis/monitoring.coreos.com/v1/namespaces/txp/servicemonitors/demo",
        "/apis/batch/v1/namespaces/txp/jobs/demo-producer",
    ];
    let got: Vec<&str> = applies(&reqs).iter().map(|r| r.path.as_str()).collect();
    assert_eq!(got, want);
    for r in applies(&reqs) {
        assert_eq!(r.method, "PATCH");
        assert_eq!(
            r.query.get("fieldManager").map(String::as_str),
            Some("txpipe-operator"),
            "{}",
            r.path
        );
        assert_eq!(
            r.query.get("force").map(String::as_str),
            Some("true"),
            "{}",
            r.path
        );
        let body = r.body.as_ref().expect("body");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], UID, "{}", r.path);
        assert_eq!(owner["kind"], "TransactionPipeline", "{}", r.path);
        assert_eq!(owner["controller"], true, "{}", r.path);
        assert_eq!(
            body["metadata"]["labels"]["txpipe.io/pipeline"], NAME,
            "{}",
            r.path
        );
    }
    // A new StatefulSet starts with every replica (the brokers bootstrap together).
    assert_eq!(applied(&reqs, STS)["spec"]["replicas"], 3);
    assert_eq!(applied(&reqs, DEPLOYMENT)["spec"]["replicas"], 2);

    // Status through the status subresource, merge patch.
    let status_patch = reqs
        .iter()
        .find(|r| r.path == format!("{PIPELINE}/status"))
        .expect("status patch");
    assert_eq!(status_patch.method, "PATCH");
    assert!(
        status_patch
            .content_type
            .starts_with("application/merge-patch+json")
    );
    let stored = h.stored();
    let status = stored.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        condition(&stored, "Ready"),
        ("False".into(), "BrokersNotReady".into())
    );
    assert_eq!(
        condition(&stored, "Progressing"),
        ("True".into(), "Creating".into())
    );
    assert_eq!(
        condition(&stored, "Degraded"),
        ("False".into(), "AsExpected".into())
    );
    assert_eq!(status.broker.summary, "0/3");
    assert_eq!(status.workers.selector, render::worker_selector(&p));
    assert!(deletes(&reqs).is_empty());
    assert!(h.admin.voters_calls().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_spec_change_reapplies_children_with_the_new_values() {
    let h = Harness::new();
    let mut p = pipeline(1, json!({"workers": {"replicas": 2}}));
    h.reconcile(&p).await.expect("first reconcile");
    h.api.clear_requests();

    p.metadata.generation = Some(2);
    p.spec.workers.replicas = 5;
    p.spec.image = "registry.example/txpipe:2.0.0".into();
    h.reconcile(&p).await.expect("second reconcile");

    let reqs = h.api.requests();
    let dep = applied(&reqs, DEPLOYMENT);
    assert_eq!(dep["spec"]["replicas"], 5);
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/txpipe:2.0.0"
    );
    let sts = applied(&reqs, STS);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/txpipe:2.0.0"
    );
    // The StatefulSet exists (no broker ready yet): its replicas stay.
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        h.stored().status.expect("status").observed_generation,
        Some(2)
    );
    h.finish().await;
}

#[tokio::test]
async fn an_invalid_spec_sets_ready_false_emits_a_warning_and_applies_nothing() {
    let h = Harness::new();
    h.api.put(STS, live_sts(3, "20Gi", "rev-old"));
    let p = pipeline(3, json!({"broker": {"storage": {"size": "10Gi"}}}));

    let action = h
        .reconcile(&p)
        .await
        .expect("an invalid spec is not an error");
    assert_eq!(action, Action::requeue(controller::REQUEUE_INVALID));

    let reqs = h.api.requests();
    assert!(applies(&reqs).is_empty(), "applied: {:?}", applies(&reqs));
    assert!(deletes(&reqs).is_empty());
    let stored = h.stored();
    assert_eq!(
        condition(&stored, "Ready"),
        ("False".into(), "VolumeShrinkRefused".into())
    );
    let ready = stored
        .status
        .as_ref()
        .expect("status")
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
        .expect("Ready");
    assert!(
        ready.message.contains("10Gi") && ready.message.contains("20Gi"),
        "{}",
        ready.message
    );
    assert_eq!(
        stored.status.as_ref().expect("status").observed_generation,
        Some(3)
    );
    assert_eq!(
        events(&reqs),
        vec![("Warning".to_string(), "VolumeShrinkRefused".to_string())]
    );
    h.finish().await;
}

#[tokio::test]
async fn broker_scale_from_one_to_three_goes_one_member_at_a_time() {
    let h = Harness::new();
    let p = pipeline(2, json!({"broker": {"replicas": 3}}));
    let (admin, peers) = addrs(&p, 3);
    h.api.put(STS, live_sts(1, "10Gi", "rev-1"));
    h.api.put(&pod_path(0), pod(0, true, "rev-1"));
    h.admin
        .set_status(&admin[0], broker_status(0, &[0], true, 1000));

    // Step 1: one replica more, no membership change yet.
    h.reconcile(&p).await.expect("reconcile 1");
    let reqs = h.api.requests();
    assert_eq!(applied(&reqs, STS)["spec"]["replicas"], 2);
    assert!(h.admin.voters_calls().is_empty());
    assert!(events(&reqs).contains(&("Normal".into(), "Scaling".into())));
    assert_eq!(
        condition(&h.stored(), "Progressing"),
        ("True".into(), "ScalingBrokers".into())
    );

    // The new pod exists but is not ready: wait.
    h.api.clear_requests();
    h.api.put(&pod_path(1), pod(1, false, "rev-1"));
    let action = h.reconcile(&p).await.expect("reconcile 2");
    assert_eq!(action, Action::requeue(controller::REQUEUE_PROGRESSING));
    assert_eq!(applied(&h.api.requests(), STS)["spec"]["replicas"], 2);
    assert!(h.admin.voters_calls().is_empty());

    // Step 2: the new pod is ready (a learner): make both voters, on every broker.
    h.api.clear_requests();
    h.api.put(&pod_path(1), pod(1, true, "rev-1"));
    h.admin
        .set_status(&admin[1], broker_status(1, &[0], false, 1000));
    let action = h.reconcile(&p).await.expect("reconcile 3");
    assert_eq!(action, Action::requeue(controller::REQUEUE_SOON));
    let reqs = h.api.requests();
    assert_eq!(applied(&reqs, STS)["spec"]["replicas"], 2);
    let calls = h.admin.voters_calls();
    let voters = vec![peers[0].clone(), peers[1].clone()];
    assert_eq!(
        calls,
        vec![
            (admin[0].clone(), voters.clone()),
            (admin[1].clone(), voters)
        ]
    );
    assert!(events(&reqs).contains(&("Normal".into(), "MembershipChanged".into())));

    // Step 3: voters converged: the third replica.
    h.api.clear_requests();
    h.admin
        .set_status(&admin[0], broker_status(0, &[0, 1], true, 1000));
    h.admin
        .set_status(&admin[1], broker_status(1, &[0, 1], false, 1000));
    h.reconcile(&p).await.expect("reconcile 4");
    assert_eq!(applied(&h.api.requests(), STS)["spec"]["replicas"], 3);
    assert_eq!(h.admin.voters_calls().len(), 2, "no further voters call");
    assert!(deletes(&h.api.requests()).is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_failing_api_call_returns_an_error_and_the_error_policy_requeues() {
    let h = Harness::new();
    h.api.fail("GET", STS, 500);
    let p = Arc::new(pipeline(1, json!({})));
    let err = h
        .reconcile(&p)
        .await
        .expect_err("a 500 fails the reconcile");
    assert!(
        matches!(&err, Error::Kube(kube::Error::Api(s)) if s.code == 500),
        "{err:?}"
    );
    assert_eq!(
        controller::error_policy(Arc::clone(&p), &err, Arc::clone(&h.ctx)),
        Action::requeue(controller::ERROR_BACKOFF)
    );
    assert_eq!(h.ctx.metrics.errors.with_label_values(&["kube"]).get(), 1);
    assert_eq!(
        h.ctx
            .metrics
            .reconciliations
            .with_label_values(&["error"])
            .get(),
        1
    );
    assert!(applies(&h.api.requests()).is_empty());

    // A conflict is retried sooner.
    let conflict = Error::Kube(kube::Error::Api(
        kube::core::Status::failure("conflict", "Conflict")
            .with_code(409)
            .boxed(),
    ));
    assert_eq!(
        controller::error_policy(p, &conflict, Arc::clone(&h.ctx)),
        Action::requeue(controller::CONFLICT_BACKOFF)
    );
    h.finish().await;
}

/// Three ready brokers on voters {0,1,2}; broker 0 leads; pods 0 and 2 are on the old revision.
fn rolling_setup(h: &Harness, p: &TransactionPipeline, pod1_ready: bool, pod1_applied: u64) {
    let (admin, _) = addrs(p, 3);
    h.api.put(STS, live_sts(3, "10Gi", "rev-new"));
    h.api.put(&pod_path(0), pod(0, true, "rev-old"));
    h.api.put(&pod_path(1), pod(1, pod1_ready, "rev-new"));
    h.api.put(&pod_path(2), pod(2, true, "rev-old"));
    h.admin
        .set_status(&admin[0], broker_status(0, &[0, 1, 2], true, 1000));
    h.admin
        .set_status(&admin[1], broker_status(1, &[0, 1, 2], false, pod1_applied));
    h.admin
        .set_status(&admin[2], broker_status(2, &[0, 1, 2], false, 1000));
}

#[tokio::test]
async fn a_rolling_restart_deletes_exactly_one_outdated_follower_when_all_are_ready_and_caught_up()
{
    let h = Harness::new();
    let p = pipeline(2, json!({"broker": {"replicas": 3}}));
    rolling_setup(&h, &p, true, 1000);

    let action = h.reconcile(&p).await.expect("reconcile");
    assert_eq!(action, Action::requeue(controller::REQUEUE_SOON));
    let reqs = h.api.requests();
    let del = deletes(&reqs);
    assert_eq!(del.len(), 1, "{del:?}");
    assert_eq!(
        del[0].path,
        pod_path(2),
        "the outdated follower, not the leader"
    );
    assert_eq!(
        del[0].body.as_ref().expect("delete options")["preconditions"]["uid"],
        "pod-uid-2"
    );
    assert!(events(&reqs).contains(&("Normal".into(), "RollingRestart".into())));
    assert_eq!(
        condition(&h.stored(), "Progressing"),
        ("True".into(), "RollingRestart".into())
    );
    assert!(h.admin.voters_calls().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_rolling_restart_deletes_nothing_while_a_broker_is_not_ready() {
    let h = Harness::new();
    let p = pipeline(2, json!({"broker": {"replicas": 3}}));
    rolling_setup(&h, &p, false, 1000);

    h.reconcile(&p).await.expect("reconcile");
    let reqs = h.api.requests();
    assert!(deletes(&reqs).is_empty(), "{:?}", deletes(&reqs));
    assert_eq!(
        condition(&h.stored(), "Progressing"),
        ("True".into(), "WaitingForBrokers".into())
    );
    h.finish().await;
}

#[tokio::test]
async fn a_rolling_restart_deletes_nothing_while_a_broker_lags_behind_the_leader() {
    let h = Harness::new();
    let p = pipeline(2, json!({"broker": {"replicas": 3}}));
    rolling_setup(&h, &p, true, 10);

    h.reconcile(&p).await.expect("reconcile");
    assert!(deletes(&h.api.requests()).is_empty());
    assert_eq!(
        condition(&h.stored(), "Progressing"),
        ("True".into(), "RollingRestart".into())
    );
    h.finish().await;
}

#[tokio::test]
async fn a_larger_volume_size_grows_the_pvcs_and_keeps_the_immutable_claim_template() {
    let h = Harness::new();
    let p = pipeline(
        3,
        json!({"broker": {"replicas": 1, "storage": {"size": "20Gi"}}}),
    );
    let (admin, _) = addrs(&p, 1);
    h.api.put(STS, live_sts(1, "10Gi", "rev-1"));
    h.api.put(&pod_path(0), pod(0, true, "rev-1"));
    h.admin
        .set_status(&admin[0], broker_status(0, &[0], true, 1000));
    let pvc = "/api/v1/namespaces/txp/persistentvolumeclaims/data-demo-broker-0";
    h.api.put(
        pvc,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-demo-broker-0", "namespace": NS},
            "spec": {"resources": {"requests": {"storage": "10Gi"}}},
        }),
    );

    h.reconcile(&p).await.expect("reconcile");
    let reqs = h.api.requests();
    let patch = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == pvc)
        .expect("PVC patched");
    assert!(
        patch
            .content_type
            .starts_with("application/merge-patch+json")
    );
    assert_eq!(
        h.api.get(pvc).expect("pvc")["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
    let sts = applied(&reqs, STS);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    assert!(sts["spec"]["volumeClaimTemplates"][0]["status"].is_null());
    assert!(events(&reqs).contains(&("Normal".into(), "VolumeExpansion".into())));
    h.finish().await;
}

// ------------------------------------------------------------------------------------------
// spec.tls
// ------------------------------------------------------------------------------------------

const HOUR: i64 = 3600;
const SECRETS: &str = "/api/v1/namespaces/txp/secrets";
const CERTIFICATES: &str = "/apis/cert-manager.io/v1/namespaces/txp/certificates";
const CERT_MANAGER_CRD: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/certificates.cert-manager.io";
/// Secrets of every identity: brokers 0..7, worker, producer, audit, operator.
const IDENTITIES: usize = 11;

fn secret_applies(reqs: &[Recorded]) -> Vec<String> {
    applies(reqs)
        .iter()
        .filter_map(|r| r.path.strip_prefix(&format!("{SECRETS}/")))
        .map(str::to_string)
        .collect()
}

fn cert_hash(sts_or_deployment: &Value) -> String {
    sts_or_deployment["spec"]["template"]["metadata"]["annotations"]["txpipe.io/cert-hash"]
        .as_str()
        .expect("cert-hash annotation")
        .to_string()
}

fn env_names(obj: &Value) -> Vec<String> {
    obj["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Three ready brokers on voters {0,1,2} (broker 0 leads), all on `revision`.
fn steady_brokers(h: &Harness, p: &TransactionPipeline, revision: &str) {
    let (admin, _) = addrs(p, 3);
    h.api.put(STS, live_sts(3, "10Gi", revision));
    for o in 0..3 {
        h.api.put(&pod_path(o), pod(o, true, revision));
        h.admin.set_status(
            &admin[o as usize],
            broker_status(o as u64, &[0, 1, 2], o == 0, 1000),
        );
    }
}

fn managed_tls(validity_hours: i64) -> Value {
    json!({
        "broker": {"replicas": 3},
        "producer": {"count": 10},
        "tls": {"mode": "managed", "certValidityHours": validity_hours, "renewBeforePercentage": 25},
    })
}

#[tokio::test]
async fn managed_tls_first_reconcile_issues_the_ca_and_every_certificate_and_mounts_them() {
    let h = Harness::new();
    let p = pipeline(1, managed_tls(100));

    let action = h.reconcile(&p).await.expect("reconcile");
    let reqs = h.api.requests();
    let secrets = secret_applies(&reqs);
    assert_eq!(secrets.len(), 1 + IDENTITIES, "{secrets:?}");
    assert_eq!(secrets[0], "demo-ca");
    assert!(secrets.contains(&"demo-broker-6-tls".to_string()));
    assert!(secrets.contains(&"demo-operator-tls".to_string()));
    let worker_secret = h
        .api
        .get(&format!("{SECRETS}/demo-worker-tls"))
        .expect("stored");
    assert_eq!(worker_secret["type"], "kubernetes.io/tls");
    assert_eq!(worker_secret["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(
        worker_secret["metadata"]["annotations"]["txpipe.io/not-after"], "2027-01-19T12:00:00Z",
        "T0 + 100 h"
    );

    // The Secrets exist before the workloads that mount them are applied.
    let first_workload = reqs.iter().position(|r| r.is_apply() && r.path == STS);
    let last_secret = reqs
        .iter()
        .rposition(|r| r.is_apply() && r.path.starts_with(SECRETS));
    assert!(last_secret < first_workload);

    let sts = applied(&reqs, STS);
    let env = env_names(sts);
    for name in [
        "TXPIPE_POD_NAME",
        "BROKER_TLS_CERT_FILE",
        "BROKER_TLS_KEY_FILE",
        "BROKER_TLS_CA_FILE",
    ] {
        assert!(env.contains(&name.to_string()), "{name} in {env:?}");
    }
    let pod_spec = &sts["spec"]["template"]["spec"];
    let sources = pod_spec["volumes"][0]["projected"]["sources"]
        .as_array()
        .expect("projected TLS volume");
    assert_eq!(sources.len(), 7);
    assert_eq!(sources[1]["secret"]["name"], "demo-broker-1-tls");
    assert_eq!(
        pod_spec["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTPS"
    );
    assert!(!cert_hash(sts).is_empty());
    let dep = applied(&reqs, DEPLOYMENT);
    assert!(env_names(dep).contains(&"TXPIPE_TLS_CERT_FILE".to_string()));
    assert_eq!(
        dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "demo-worker-tls"
    );
    let job = applied(&reqs, "/apis/batch/v1/namespaces/txp/jobs/demo-producer");
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "demo-producer-tls"
    );

    let stored = h.stored();
    let tls = stored
        .status
        .as_ref()
        .and_then(|s| s.tls.clone())
        .expect("status.tls");
    assert_eq!(tls.mode, "managed");
    assert_eq!(tls.not_after.as_deref(), Some("2027-01-19T12:00:00Z"));
    assert_eq!(
        condition(&stored, "CertificatesReady"),
        ("True".into(), "Issued".into())
    );
    assert!(events(&reqs).contains(&("Normal".into(), "CAIssued".into())));
    assert!(events(&reqs).contains(&("Normal".into(), "CertificatesIssued".into())));
    assert_eq!(action, Action::requeue(controller::REQUEUE_PROGRESSING));
    h.finish().await;
}

#[tokio::test]
async fn valid_certificates_are_not_issued_again() {
    let clock = Arc::new(AtomicI64::new(T0));
    let h = Harness::with_clock(Arc::clone(&clock));
    let p = pipeline(1, managed_tls(100));
    h.reconcile(&p).await.expect("first reconcile");
    let hash = cert_hash(applied(&h.api.requests(), STS));
    let ca_before = h.api.get(&format!("{SECRETS}/demo-ca")).expect("ca");

    // 70 h later: 30 of 101 hours left, above the 25 % renewal threshold.
    clock.store(T0 + 70 * HOUR, Ordering::SeqCst);
    h.api.clear_requests();
    h.reconcile(&p).await.expect("second reconcile");
    let reqs = h.api.requests();
    assert!(
        secret_applies(&reqs).is_empty(),
        "{:?}",
        secret_applies(&reqs)
    );
    assert_eq!(cert_hash(applied(&reqs, STS)), hash, "no roll");
    assert_eq!(h.api.get(&format!("{SECRETS}/demo-ca")), Some(ca_before));
    assert_eq!(
        condition(&h.stored(), "CertificatesReady"),
        ("True".into(), "Valid".into())
    );
    // Renewal at T0 + 100 h - 25 % of 101 h = T0 + 74.75 h: ten seconds before, still kept,
    // and the reconcile comes back right then (not after the usual requeue).
    clock.store(T0 + 269_100 - 10, Ordering::SeqCst);
    h.api.clear_requests();
    let action = h.reconcile(&p).await.expect("third reconcile");
    assert!(secret_applies(&h.api.requests()).is_empty());
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    h.finish().await;
}

#[tokio::test]
async fn renewal_before_expiry_writes_new_secrets_and_rolls_one_broker_at_a_time() {
    let clock = Arc::new(AtomicI64::new(T0));
    let h = Harness::with_clock(Arc::clone(&clock));
    let p = pipeline(2, managed_tls(100));
    steady_brokers(&h, &p, "rev-1");
    h.reconcile(&p).await.expect("issuing reconcile");
    let old_hash = cert_hash(applied(&h.api.requests(), STS));
    let old_cert = h
        .api
        .get(&format!("{SECRETS}/demo-broker-0-tls"))
        .expect("cert")["data"]["tls.crt"]
        .clone();
    assert!(deletes(&h.api.requests()).is_empty(), "nothing to roll yet");

    // Inside the renewal window: every certificate is issued again, the CA is kept.
    clock.store(T0 + 80 * HOUR, Ordering::SeqCst);
    h.api.clear_requests();
    h.reconcile(&p).await.expect("renewing reconcile");
    let reqs = h.api.requests();
    assert_eq!(secret_applies(&reqs).len(), IDENTITIES);
    assert!(!secret_applies(&reqs).contains(&"demo-ca".to_string()));
    let new_cert = h
        .api
        .get(&format!("{SECRETS}/demo-broker-0-tls"))
        .expect("cert")["data"]["tls.crt"]
        .clone();
    assert_ne!(new_cert, old_cert);
    let new_hash = cert_hash(applied(&reqs, STS));
    assert_ne!(new_hash, old_hash, "the broker template changes");
    assert_ne!(
        cert_hash(applied(&reqs, DEPLOYMENT)),
        "",
        "the worker template carries the hash too"
    );
    assert!(events(&reqs).contains(&("Normal".into(), "CertificatesRenewed".into())));
    assert_eq!(
        condition(&h.stored(), "CertificatesReady"),
        ("True".into(), "Renewed".into())
    );

    // The StatefulSet controller records the new template as revision rev-2: the operator
    // deletes exactly one broker pod, a follower.
    h.api.put(STS, live_sts(3, "10Gi", "rev-2"));
    h.api.clear_requests();
    let action = h.reconcile(&p).await.expect("rolling reconcile");
    assert_eq!(action, Action::requeue(controller::REQUEUE_SOON));
    let reqs = h.api.requests();
    assert!(secret_applies(&reqs).is_empty(), "renewed once");
    let del = deletes(&reqs);
    assert_eq!(del.len(), 1, "{del:?}");
    assert_eq!(del[0].path, pod_path(2));

    // The new pod is not ready yet: nothing else is deleted.
    h.api.put(&pod_path(2), pod(2, false, "rev-2"));
    h.api.clear_requests();
    h.reconcile(&p).await.expect("waiting reconcile");
    assert!(deletes(&h.api.requests()).is_empty());

    // Ready again: the next follower.
    h.api.put(&pod_path(2), pod(2, true, "rev-2"));
    h.api.clear_requests();
    h.reconcile(&p).await.expect("next rolling reconcile");
    let reqs = h.api.requests();
    let del = deletes(&reqs);
    assert_eq!(del.len(), 1, "{del:?}");
    assert_eq!(del[0].path, pod_path(1));
    h.finish().await;
}

fn cert_manager_tls() -> Value {
    json!({
        "tls": {"mode": "certManager", "issuerRef": {"name": "txpipe-ca", "kind": "ClusterIssuer"}},
    })
}

#[tokio::test]
async fn cert_manager_mode_applies_certificates_and_reports_them_ready_once_issued() {
    let h = Harness::new();
    h.api.put(
        CERT_MANAGER_CRD,
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "certificates.cert-manager.io"}}),
    );
    let p = pipeline(1, cert_manager_tls());

    h.reconcile(&p).await.expect("reconcile");
    let reqs = h.api.requests();
    let certificates: Vec<&Recorded> = applies(&reqs)
        .into_iter()
        .filter(|r| r.path.starts_with(CERTIFICATES))
        .collect();
    assert_eq!(certificates.len(), IDENTITIES);
    let b1 = certificates[1].body.as_ref().expect("body");
    assert_eq!(b1["spec"]["secretName"], "demo-broker-1-tls");
    assert_eq!(b1["spec"]["issuerRef"]["name"], "txpipe-ca");
    assert_eq!(b1["spec"]["uris"][0], "spiffe://txpipe/broker/1");
    assert!(
        secret_applies(&reqs).is_empty(),
        "cert-manager writes the Secrets"
    );
    assert_eq!(
        condition(&h.stored(), "CertificatesReady"),
        ("False".into(), "WaitingForCertManager".into())
    );
    let sts = applied(&reqs, STS);
    assert_eq!(
        sts["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["secret"]["name"],
        "demo-broker-0-tls"
    );

    // cert-manager issued everything.
    for name in reqs
        .iter()
        .filter(|r| r.is_apply() && r.path.starts_with(CERTIFICATES))
        .map(|r| r.path.clone())
    {
        let mut c = h.api.get(&name).expect("certificate");
        c["status"] = json!({
            "notAfter": "2027-04-15T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        h.api.put(&name, c);
    }
    h.api.clear_requests();
    h.reconcile(&p).await.expect("second reconcile");
    let stored = h.stored();
    assert_eq!(
        condition(&stored, "CertificatesReady"),
        ("True".into(), "Issued".into())
    );
    assert_eq!(
        stored
            .status
            .and_then(|s| s.tls)
            .and_then(|t| t.not_after)
            .as_deref(),
        Some("2027-04-15T00:00:00Z")
    );
    h.finish().await;
}

#[tokio::test]
async fn cert_manager_mode_without_cert_manager_is_degraded() {
    let h = Harness::new();
    let p = pipeline(1, cert_manager_tls());
    h.reconcile(&p).await.expect("reconcile");
    let stored = h.stored();
    assert_eq!(
        condition(&stored, "CertificatesReady"),
        ("False".into(), "CertManagerNotInstalled".into())
    );
    assert_eq!(
        condition(&stored, "Degraded"),
        ("True".into(), "CertManagerNotInstalled".into())
    );
    h.finish().await;
}
