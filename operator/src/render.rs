//! Pure rendering of every child object of a [`TransactionPipeline`] (no I/O).
//!
//! [`render`] turns a pipeline plus a few facts about the cluster ([`RenderContext`]) into the
//! objects the controller server-side applies ([`Children`]): the scoring ConfigMap, the
//! broker's headless and client Services, StatefulSet and PodDisruptionBudget, the worker
//! Deployment, PodDisruptionBudget and (with `spec.workers.autoscaling`) HorizontalPodAutoscaler,
//! an optional Prometheus Operator ServiceMonitor and an optional producer Job.
//!
//! Names, labels and ports follow the conventions in docs/operator.md: for pipeline `<n>`,
//! StatefulSet `<n>-broker`, Services `<n>-broker-headless` and `<n>-broker`, Deployment and
//! HPA `<n>-worker`, ConfigMap `<n>-config`, ServiceMonitor `<n>`, Job `<n>-producer`.
//! [`render_manifests_yaml`] backs `txpipe-operator render -f FILE`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource,
    EnvVar, EnvVarSource, GRPCAction, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretProjection, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::certs;
use crate::crd::{TlsMode, TransactionPipeline, TransactionPipelineSpec};
use crate::{Error, Result};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "txpipe-operator";
/// Pod-template annotation holding the SHA-256 (hex) of the rendered configuration, so a
/// configuration change changes the template (and the StatefulSet's `updateRevision`).
pub const CONFIG_HASH_ANNOTATION: &str = "txpipe.io/config-hash";
/// Label carrying the pipeline name on every child (`kubectl get all -l txpipe.io/pipeline=<n>`).
pub const PIPELINE_LABEL: &str = "txpipe.io/pipeline";
/// Broker client gRPC port (also `grpc.health.v1`, the readiness probe).
pub const BROKER_CLIENT_PORT: i32 = 9100;
/// Broker Raft peer gRPC port.
pub const BROKER_PEER_PORT: i32 = 9200;
/// Broker admin HTTP port (`/metrics`, `/healthz`, `/readyz`, `/status.json`, `/cluster/voters`).
pub const BROKER_ADMIN_PORT: i32 = 9180;
/// Worker admin HTTP port (`/metrics`, `/healthz`, `/readyz`).
pub const WORKER_ADMIN_PORT: i32 = 9181;
/// Mount path of the broker's data volume (`BROKER_DATA_DIR`).
pub const BROKER_DATA_DIR: &str = "/var/lib/txpipe";
/// Name of the broker StatefulSet's volumeClaimTemplate (PVCs are `data-<n>-broker-<i>`).
pub const BROKER_VOLUME_NAME: &str = "data";
/// External metric the HPA reads for `targetPendingPerWorker`.
pub const PENDING_METRIC: &str = "txpipe_broker_pending_records";
/// UID and GID every container runs as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

const APP_NAME: &str = "txpipe";
const TERMINATION_GRACE_SECONDS: i64 = 30;
const HPA_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 300;
const PRODUCER_BACKOFF_LIMIT: i32 = 6;

/// Facts from the cluster the renderer needs.
#[derive(Clone, Debug, Default)]
pub struct RenderContext {
    /// monitoring.coreos.com/v1 ServiceMonitor CRD exists in the cluster.
    pub service_monitor_available: bool,
    /// Size of the broker volumeClaimTemplate in the live StatefulSet, if it exists (the
    /// template is immutable: keep it, the controller grows PVCs directly).
    pub existing_volume_size: Option<String>,
    /// Broker replicas to render into the StatefulSet (the controller changes membership one
    /// step at a time; None = spec.broker.replicas).
    pub broker_replicas: Option<i32>,
    /// Hashes of the certificates each workload mounts ([`crate::certs::cert_hash`]), put on
    /// its pod template as [`crate::certs::CERT_HASH_ANNOTATION`] so a renewal rolls the pods.
    pub cert_hashes: CertHashes,
    /// `render -f` only: also print the Secrets of `managed` TLS, issued from a throw-away CA.
    pub tls_secrets_preview: bool,
}

/// Certificate hashes per workload (`None`: no annotation, e.g. rendering from a file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertHashes {
    /// Broker pods (every broker certificate, since each pod mounts them all).
    pub broker: Option<String>,
    /// Worker pods.
    pub worker: Option<String>,
}

/// Every child object of one pipeline, ready for server-side apply.
#[derive(Clone, Debug)]
pub struct Children {
    /// `<n>-config`: worker scoring settings, consumed with `envFrom`.
    pub config_map: ConfigMap,
    /// `<n>-broker-headless`: stable per-pod DNS names (publishes not-ready addresses).
    pub broker_headless: Service,
    /// `<n>-broker`: ClusterIP Service on the client gRPC port.
    pub broker_client: Service,
    /// `<n>-broker`: the broker StatefulSet (`OnDelete`, `Parallel`).
    pub broker: StatefulSet,
    /// `<n>-broker`: at most one broker pod voluntarily disrupted at a time.
    pub broker_pdb: PodDisruptionBudget,
    /// `<n>-worker`: the worker Deployment (`replicas` = `spec.workers.replicas`).
    pub worker: Deployment,
    /// `<n>-worker`: autoscaling/v2 HPA targeting the pipeline's `/scale`, with
    /// `spec.workers.autoscaling` only.
    pub worker_hpa: Option<HorizontalPodAutoscaler>,
    /// `<n>-worker`: at most one worker pod voluntarily disrupted at a time.
    pub worker_pdb: PodDisruptionBudget,
    /// `<n>`: `monitoring.coreos.com/v1` ServiceMonitor, only when
    /// `spec.monitoring.serviceMonitor` and [`RenderContext::service_monitor_available`].
    pub service_monitor: Option<DynamicObject>,
    /// `<n>-producer`: the producer Job, with `spec.producer` only.
    pub producer: Option<Job>,
    /// `cert-manager.io/v1` Certificates, with `spec.tls.mode: certManager` only.
    pub certificates: Vec<DynamicObject>,
    /// `managed` TLS Secrets from a throw-away CA, with
    /// [`RenderContext::tls_secrets_preview`] only (the controller issues its own).
    pub tls_secrets_preview: Vec<k8s_openapi::api::core::v1::Secret>,
}

impl Children {
    /// Every object as JSON, in apply order (TLS Secrets or Certificates, config map, services,
    /// statefulset, pdbs, deployment, hpa, service monitor, job).
    ///
    /// Errors: [`Error::Serde`] if an object cannot be serialized (not expected).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for s in &self.tls_secrets_preview {
            out.push(serde_json::to_value(s)?);
        }
        for c in &self.certificates {
            out.push(serde_json::to_value(c)?);
        }
        out.extend([
            serde_json::to_value(&self.config_map)?,
            serde_json::to_value(&self.broker_headless)?,
            serde_json::to_value(&self.broker_client)?,
            serde_json::to_value(&self.broker)?,
            serde_json::to_value(&self.broker_pdb)?,
            serde_json::to_value(&self.worker_pdb)?,
            serde_json::to_value(&self.worker)?,
        ]);
        if let Some(hpa) = &self.worker_hpa {
            out.push(serde_json::to_value(hpa)?);
        }
        if let Some(sm) = &self.service_monitor {
            out.push(serde_json::to_value(sm)?);
        }
        if let Some(job) = &self.producer {
            out.push(serde_json::to_value(job)?);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Namespace of the pipeline, `default` when the object has none (rendering from a file).
pub fn namespace(p: &TransactionPipeline) -> String {
    p.namespace().unwrap_or_else(|| "default".to_string())
}

/// Longest pipeline name, characters: `<n>-broker` must fit the 52 characters Kubernetes allows
/// a StatefulSet name (its pods get the label `controller-revision-hash=<name>-<10-char hash>`,
/// at most 63), and `<n>-broker-headless` (62) and `<n>-producer` (54) the 63 of a Service or
/// Job name. The CRD's CEL rule on `metadata.name` says the same.
pub const MAX_PIPELINE_NAME: usize = 45;

/// `<n>-broker`: the broker StatefulSet.
pub fn broker_statefulset_name(p: &TransactionPipeline) -> String {
    format!("{}-broker", p.name_any())
}

/// `<n>-broker-headless`: the broker's headless Service (pod DNS names).
pub fn broker_headless_service_name(p: &TransactionPipeline) -> String {
    format!("{}-broker-headless", p.name_any())
}

/// `<n>-broker`: the broker's client (ClusterIP) Service.
pub fn broker_client_service_name(p: &TransactionPipeline) -> String {
    format!("{}-broker", p.name_any())
}

/// `<n>-broker`: the broker PodDisruptionBudget.
pub fn broker_pdb_name(p: &TransactionPipeline) -> String {
    format!("{}-broker", p.name_any())
}

/// `<n>-broker-<i>`: the broker pod with ordinal `i`.
pub fn broker_pod_name(p: &TransactionPipeline, ordinal: i32) -> String {
    format!("{}-broker-{ordinal}", p.name_any())
}

/// `data-<n>-broker-<i>`: the PersistentVolumeClaim of the broker pod with ordinal `i`.
pub fn broker_pvc_name(p: &TransactionPipeline, ordinal: i32) -> String {
    format!("{BROKER_VOLUME_NAME}-{}", broker_pod_name(p, ordinal))
}

/// `<n>-worker`: the worker Deployment.
pub fn worker_deployment_name(p: &TransactionPipeline) -> String {
    format!("{}-worker", p.name_any())
}

/// `<n>-worker`: the worker HorizontalPodAutoscaler.
pub fn worker_hpa_name(p: &TransactionPipeline) -> String {
    format!("{}-worker", p.name_any())
}

/// `<n>-worker`: the worker PodDisruptionBudget.
pub fn worker_pdb_name(p: &TransactionPipeline) -> String {
    format!("{}-worker", p.name_any())
}

/// `<n>-config`: the ConfigMap with the worker's scoring settings.
pub fn config_map_name(p: &TransactionPipeline) -> String {
    format!("{}-config", p.name_any())
}

/// `<n>`: the ServiceMonitor.
pub fn service_monitor_name(p: &TransactionPipeline) -> String {
    p.name_any()
}

/// `<n>-producer`: the producer Job.
pub fn producer_job_name(p: &TransactionPipeline) -> String {
    format!("{}-producer", p.name_any())
}

/// `<namespace>/<n>/seed-<seed>`: the name the producer Job registers under on the broker
/// (`PRODUCER_NAME`). It depends only on what decides the generated records (the pipeline and
/// the seed), so a Job pod that is deleted or fails and is started again, or a Job recreated
/// for the same pipeline, resumes after the last acknowledged transaction instead of storing
/// the run twice; a larger `count` continues where the previous Job stopped; a new seed is a
/// new sequence and starts from the first transaction.
pub fn producer_name(p: &TransactionPipeline, seed: i64) -> String {
    format!("{}/{}/seed-{seed}", namespace(p), p.name_any())
}

/// The `monitoring.coreos.com/v1` `ServiceMonitor` resource (for `Api::namespaced_with`).
pub fn service_monitor_api_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        plural: "servicemonitors".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and addresses
// ---------------------------------------------------------------------------------------------

/// Every label of a child object: `app.kubernetes.io/{name,instance,component,managed-by,
/// part-of}` and `txpipe.io/pipeline`. `component` is `broker`, `worker`, `producer`,
/// `config` or `monitoring`.
pub fn labels(p: &TransactionPipeline, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(p, component);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        FIELD_MANAGER.to_string(),
    );
    l.insert("app.kubernetes.io/part-of".into(), APP_NAME.to_string());
    l.insert(PIPELINE_LABEL.into(), p.name_any());
    l
}

/// The labels selectors use: `app.kubernetes.io/{name,instance,component}` only.
pub fn selector_labels(p: &TransactionPipeline, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), p.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// The worker pods' label selector serialized as `k=v,k=v` (for `status.workers.selector`,
/// which backs the `/scale` subresource the HPA reads).
pub fn worker_selector(p: &TransactionPipeline) -> String {
    selector_labels(p, "worker")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn broker_hosts(p: &TransactionPipeline, replicas: i32) -> Vec<String> {
    let ns = namespace(p);
    let headless = broker_headless_service_name(p);
    (0..replicas.max(0))
        .map(|i| format!("{}.{headless}.{ns}.svc", broker_pod_name(p, i)))
        .collect()
}

/// Raft peer addresses by ordinal: `<n>-broker-<i>.<n>-broker-headless.<ns>.svc:9200`
/// (`BROKER_PEERS`, and the body of `POST /cluster/voters`).
pub fn broker_peer_addrs(p: &TransactionPipeline, replicas: i32) -> Vec<String> {
    broker_hosts(p, replicas)
        .into_iter()
        .map(|h| format!("{h}:{BROKER_PEER_PORT}"))
        .collect()
}

/// Client gRPC addresses by ordinal (same hosts as [`broker_peer_addrs`], port 9100).
pub fn broker_client_addrs(p: &TransactionPipeline, replicas: i32) -> Vec<String> {
    broker_hosts(p, replicas)
        .into_iter()
        .map(|h| format!("{h}:{BROKER_CLIENT_PORT}"))
        .collect()
}

/// Admin HTTP addresses by ordinal (same hosts as [`broker_peer_addrs`], port 9180).
pub fn broker_admin_addrs(p: &TransactionPipeline, replicas: i32) -> Vec<String> {
    broker_hosts(p, replicas)
        .into_iter()
        .map(|h| format!("{h}:{BROKER_ADMIN_PORT}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

/// Parses a Kubernetes quantity (`500m`, `1.5Gi`, `10G`, `1e3`, `128974848`) into its value in
/// base units (cores, bytes). `None` when the string is not a quantity.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let (sign, rest) = match s.as_bytes().first()? {
        b'-' => (-1.0, &s[1..]),
        b'+' => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(e.parse::<i32>().ok()?)
        }
        _ => return None,
    };
    Some(sign * value * multiplier)
}

fn quantity(field: &str, q: &str) -> Result<f64> {
    parse_quantity(q).ok_or_else(|| Error::InvalidSpec {
        reason: "InvalidQuantity".into(),
        message: format!("{field}: {q:?} is not a Kubernetes quantity (e.g. 500m, 10Gi)"),
    })
}

/// Checks every quantity of `r` parses and requests do not exceed limits.
fn check_resources(field: &str, r: &ResourceRequirements) -> Result<()> {
    let mut parsed: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (res, q) in map.iter().flatten() {
            let v = quantity(&format!("{field}.{kind}.{res}"), &q.0)?;
            if v < 0.0 {
                return Err(Error::InvalidSpec {
                    reason: "InvalidQuantity".into(),
                    message: format!("{field}.{kind}.{res}: {:?} must not be negative", q.0),
                });
            }
            parsed.insert((kind, res.as_str()), v);
        }
    }
    for ((kind, res), req) in &parsed {
        if *kind != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", res))
            && req > limit
        {
            return Err(Error::InvalidSpec {
                reason: "InvalidResources".into(),
                message: format!("{field}: requests.{res} exceeds limits.{res}"),
            });
        }
    }
    Ok(())
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

/// Default broker resources: requests cpu 500m, memory 512Mi; limits memory 1Gi (no CPU limit).
pub fn default_broker_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "500m"), ("memory", "512Mi")])),
        limits: Some(quantities(&[("memory", "1Gi")])),
        ..Default::default()
    }
}

/// Default worker resources: requests = limits = cpu 500m, memory 256Mi (Guaranteed QoS).
pub fn default_worker_resources() -> ResourceRequirements {
    let q = quantities(&[("cpu", "500m"), ("memory", "256Mi")]);
    ResourceRequirements {
        requests: Some(q.clone()),
        limits: Some(q),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

fn owner_refs(p: &TransactionPipeline) -> Option<Vec<OwnerReference>> {
    p.controller_owner_ref(&()).map(|o| {
        vec![OwnerReference {
            block_owner_deletion: Some(true),
            ..o
        }]
    })
}

/// Metadata of a child: name, namespace, the pipeline's labels for `component`, and the
/// controller ownerReference (when the pipeline has a uid).
pub fn child_meta(p: &TransactionPipeline, name: String, component: &str) -> ObjectMeta {
    meta(p, name, component)
}

fn meta(p: &TransactionPipeline, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(p)),
        labels: Some(labels(p, component)),
        owner_references: owner_refs(p),
        ..Default::default()
    }
}

fn selector(p: &TransactionPipeline, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(p, component)),
        ..Default::default()
    }
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// Message of the `PanKeySecretMissing` condition.
pub const PAN_KEY_SECRET_MISSING: &str = "spec.panKeySecret is required: the producer and workers refuse to start without a PAN key (there is no default key). Create one, e.g. `kubectl create secret generic txpipe-pan-key --from-literal=pan-key=\"$(openssl rand -hex 32)\"`, and set spec.panKeySecret.name: txpipe-pan-key";

fn pan_key_env(spec: &TransactionPipelineSpec) -> Option<EnvVar> {
    spec.pan_key_secret.as_ref().map(|s| EnvVar {
        name: "TXPIPE_PAN_KEY".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: s.name.clone(),
                key: s.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security_context(with_volume: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: with_volume.then_some(RUN_AS_USER),
        fs_group_change_policy: with_volume.then(|| "OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pod defaults shared by every workload: no API token, no service-link env variables,
/// restricted security context.
fn pod_spec(containers: Vec<Container>, with_volume: bool) -> PodSpec {
    PodSpec {
        containers,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security_context(with_volume)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        ..Default::default()
    }
}

fn prometheus_annotations(port: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), port.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ])
}

fn config_hash(parts: &impl serde::Serialize) -> Result<String> {
    let bytes = serde_json::to_vec(parts)?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn http_probe(path: &str, port: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(port.into()),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// Worker settings in the ConfigMap (env variable name → value).
fn config_data(spec: &TransactionPipelineSpec) -> BTreeMap<String, String> {
    let w = &spec.workers;
    let mut data = BTreeMap::from([
        ("WORKER_WINDOW".to_string(), w.window.to_string()),
        (
            "WORKER_ISSUER_LATENCY_US".to_string(),
            w.scoring.issuer_latency_us.to_string(),
        ),
    ]);
    if let Some(m) = &w.scoring.model {
        data.insert("WORKER_MODEL".into(), m.clone());
    }
    if let Some(t) = w.scoring.review_threshold {
        data.insert("WORKER_REVIEW_THRESHOLD".into(), t.to_string());
    }
    if let Some(t) = w.scoring.decline_threshold {
        data.insert("WORKER_DECLINE_THRESHOLD".into(), t.to_string());
    }
    data
}

fn render_config_map(p: &TransactionPipeline) -> ConfigMap {
    ConfigMap {
        metadata: meta(p, config_map_name(p), "config"),
        data: Some(config_data(&p.spec)),
        ..Default::default()
    }
}

fn render_broker_services(p: &TransactionPipeline) -> (Service, Service) {
    let headless = Service {
        metadata: meta(p, broker_headless_service_name(p), "broker"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(p, "broker")),
            ports: Some(vec![
                service_port("grpc", BROKER_CLIENT_PORT),
                service_port("peer", BROKER_PEER_PORT),
                service_port("admin", BROKER_ADMIN_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let client = Service {
        metadata: meta(p, broker_client_service_name(p), "broker"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(p, "broker")),
            ports: Some(vec![service_port("grpc", BROKER_CLIENT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    (headless, client)
}

fn broker_env(p: &TransactionPipeline, replicas: i32) -> Vec<EnvVar> {
    let b = &p.spec.broker;
    vec![
        env("BROKER_DATA_DIR", BROKER_DATA_DIR),
        env("BROKER_PEERS", broker_peer_addrs(p, replicas).join(",")),
        env(
            "BROKER_CLIENT_ADDRS",
            broker_client_addrs(p, replicas).join(","),
        ),
        env("BROKER_FSYNC", b.fsync),
        env("BROKER_DECISIONS_MAX_BYTES", b.decisions_max_bytes),
        env("BROKER_ELECTION_TIMEOUT_MS", b.election_timeout_ms),
        env("BROKER_HEARTBEAT_MS", b.heartbeat_ms),
        env("BROKER_MAX_DELIVERIES", b.max_deliveries),
        env("BROKER_ACK_DEADLINE_MS", b.ack_deadline_ms),
        env("BROKER_LOG_FORMAT", "json"),
    ]
}

// ---------------------------------------------------------------------------------------------
// TLS (spec.tls): volumes, environment, probe scheme
// ---------------------------------------------------------------------------------------------

/// Name of the TLS volume in every pod.
const TLS_VOLUME: &str = "tls";
/// Mode of the mounted key files: owner and group (the pods' fsGroup) read.
const TLS_FILE_MODE: i32 = 0o440;
/// Variable holding the pod name, only for `$(TXPIPE_POD_NAME)` in the broker's file paths.
pub const POD_NAME_ENV: &str = "TXPIPE_POD_NAME";

fn tls_on(p: &TransactionPipeline) -> bool {
    p.spec.tls_mode() != TlsMode::Off
}

/// Variable `name` set to the pod's name (downward API).
fn pod_name_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The broker's TLS files: every broker certificate Secret projected under
/// `/etc/txpipe/tls/<pod>/`, and `BROKER_TLS_*` pointing at this pod's directory (through
/// `$(TXPIPE_POD_NAME)`). Every possible ordinal is listed (optional Secrets), so the template
/// does not change with the replicas.
fn broker_tls(p: &TransactionPipeline) -> (Vec<EnvVar>, Volume) {
    let dir = format!("{}/$({POD_NAME_ENV})", certs::TLS_MOUNT);
    let env = vec![
        pod_name_env(POD_NAME_ENV),
        env("BROKER_TLS_CERT_FILE", format!("{dir}/tls.crt")),
        env("BROKER_TLS_KEY_FILE", format!("{dir}/tls.key")),
        env("BROKER_TLS_CA_FILE", format!("{dir}/ca.crt")),
    ];
    let sources = (0..certs::MAX_BROKERS)
        .map(|i| {
            let pod = broker_pod_name(p, i);
            VolumeProjection {
                secret: Some(SecretProjection {
                    name: certs::secret_name(p, certs::Role::Broker(i)),
                    optional: Some(true),
                    items: Some(
                        ["tls.crt", "tls.key", "ca.crt"]
                            .iter()
                            .map(|k| KeyToPath {
                                key: (*k).into(),
                                path: format!("{pod}/{k}"),
                                mode: None,
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }
        })
        .collect();
    let volume = Volume {
        name: TLS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(TLS_FILE_MODE),
        }),
        ..Default::default()
    };
    (env, volume)
}

/// A client's TLS files: Secret `<n>-<role>-tls` at `/etc/txpipe/tls`, `TXPIPE_TLS_*`.
fn client_tls(p: &TransactionPipeline, role: certs::Role) -> (Vec<EnvVar>, Volume) {
    let dir = certs::TLS_MOUNT;
    let env = vec![
        env("TXPIPE_TLS_CA_FILE", format!("{dir}/ca.crt")),
        env("TXPIPE_TLS_CERT_FILE", format!("{dir}/tls.crt")),
        env("TXPIPE_TLS_KEY_FILE", format!("{dir}/tls.key")),
    ];
    let volume = Volume {
        name: TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(certs::secret_name(p, role)),
            default_mode: Some(TLS_FILE_MODE),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    (env, volume)
}

fn tls_mount() -> VolumeMount {
    VolumeMount {
        name: TLS_VOLUME.into(),
        mount_path: certs::TLS_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Adds the TLS volume and mount to a pod with one container, and the fsGroup that lets the
/// non-root user read the keys.
fn mount_tls(pod: &mut PodSpec, volume: Volume) {
    pod.volumes.get_or_insert_with(Vec::new).push(volume);
    if let Some(c) = pod.containers.first_mut() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(tls_mount());
    }
    if let Some(sc) = pod.security_context.as_mut() {
        sc.fs_group = Some(RUN_AS_USER);
    }
}

/// HTTP probe of the admin port: HTTPS when TLS is on (the broker's admin port then speaks
/// TLS; the kubelet does not verify the certificate).
fn admin_probe(path: &str, https: bool) -> HTTPGetAction {
    HTTPGetAction {
        scheme: https.then(|| "HTTPS".to_string()),
        ..http_probe(path, "admin")
    }
}

/// The volume size to render and refuse shrinking.
fn broker_volume_size(p: &TransactionPipeline, ctx: &RenderContext) -> Result<String> {
    let wanted = &p.spec.broker.storage.size;
    let wanted_v = quantity("spec.broker.storage.size", wanted)?;
    if wanted_v <= 0.0 {
        return Err(Error::InvalidSpec {
            reason: "InvalidQuantity".into(),
            message: format!("spec.broker.storage.size: {wanted:?} must be positive"),
        });
    }
    match &ctx.existing_volume_size {
        None => Ok(wanted.clone()),
        Some(existing) => {
            let existing_v = quantity("existing broker volumeClaimTemplate size", existing)?;
            if wanted_v < existing_v {
                return Err(Error::InvalidSpec {
                    reason: "VolumeShrinkRefused".into(),
                    message: format!(
                        "spec.broker.storage.size {wanted} is smaller than the existing volumes \
                         ({existing}); volumes can grow but never shrink"
                    ),
                });
            }
            // The template is immutable: keep the live size; the controller grows the PVCs.
            Ok(existing.clone())
        }
    }
}

/// Readiness, liveness and start-up probes of the broker. Without TLS readiness is the gRPC
/// health check of the client port; with TLS it is the admin port's `/readyz` over HTTPS (the
/// kubelet's gRPC probe cannot speak TLS), and every admin probe uses HTTPS.
fn broker_probes(https: bool) -> (Probe, Probe, Probe) {
    let probe = |period: i32, failures: i32| Probe {
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let readiness = if https {
        Probe {
            http_get: Some(admin_probe("/readyz", true)),
            ..probe(5, 3)
        }
    } else {
        Probe {
            grpc: Some(GRPCAction {
                port: BROKER_CLIENT_PORT,
                service: None,
            }),
            ..probe(5, 3)
        }
    };
    let liveness = Probe {
        http_get: Some(admin_probe("/healthz", https)),
        timeout_seconds: Some(5),
        ..probe(10, 6)
    };
    // Opening a large log can take a while: give it up to 5 minutes before liveness counts.
    let startup = Probe {
        http_get: Some(admin_probe("/healthz", https)),
        ..probe(5, 60)
    };
    (readiness, liveness, startup)
}

/// The broker StatefulSet's volumeClaimTemplate `data` of `size`.
fn broker_claim(p: &TransactionPipeline, size: String) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(BROKER_VOLUME_NAME.into()),
            labels: Some(labels(p, "broker")),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.spec.broker.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn render_broker(p: &TransactionPipeline, ctx: &RenderContext) -> Result<StatefulSet> {
    let b = &p.spec.broker;
    let replicas = ctx.broker_replicas.unwrap_or(b.replicas);
    if replicas < 0 {
        return Err(Error::InvalidSpec {
            reason: "InvalidReplicas".into(),
            message: format!("broker replicas {replicas} must not be negative"),
        });
    }
    let resources = b.resources.clone().unwrap_or_else(default_broker_resources);
    check_resources("spec.broker.resources", &resources)?;
    let size = broker_volume_size(p, ctx)?;
    let tls = tls_on(p).then(|| broker_tls(p));
    let mut env = broker_env(p, replicas);
    if let Some((tls_env, _)) = &tls {
        env.extend(tls_env.iter().cloned());
    }
    let hash = config_hash(&env)?;
    let mut annotations = prometheus_annotations(BROKER_ADMIN_PORT);
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), hash);
    if let Some(h) = &ctx.cert_hashes.broker {
        annotations.insert(certs::CERT_HASH_ANNOTATION.into(), h.clone());
    }
    let (readiness, liveness, startup) = broker_probes(tls.is_some());

    let container = Container {
        name: "broker".into(),
        image: Some(p.spec.image.clone()),
        image_pull_policy: Some(p.spec.image_pull_policy.clone()),
        command: Some(vec!["txpipe-broker".into()]),
        env: Some(env),
        ports: Some(vec![
            port("grpc", BROKER_CLIENT_PORT),
            port("peer", BROKER_PEER_PORT),
            port("admin", BROKER_ADMIN_PORT),
        ]),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        startup_probe: Some(startup),
        resources: Some(resources),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: BROKER_VOLUME_NAME.into(),
            mount_path: BROKER_DATA_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    };

    let mut pod = pod_spec(vec![container], true);
    if let Some((_, volume)) = tls {
        mount_tls(&mut pod, volume);
    }
    pod.affinity = Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(p, "broker")),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    });

    let claim = broker_claim(p, size);

    Ok(StatefulSet {
        metadata: meta(p, broker_statefulset_name(p), "broker"),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(broker_headless_service_name(p)),
            selector: selector(p, "broker"),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(b.pvc_retention.when_deleted.clone()),
                    when_scaled: Some(b.pvc_retention.when_scaled.clone()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(p, "broker")),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn pdb(p: &TransactionPipeline, name: String, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(p, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(p, component)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn render_worker(p: &TransactionPipeline, ctx: &RenderContext) -> Result<Deployment> {
    let w = &p.spec.workers;
    let resources = w.resources.clone().unwrap_or_else(default_worker_resources);
    check_resources("spec.workers.resources", &resources)?;
    let mut env = vec![
        env(
            "WORKER_BROKERS",
            broker_client_addrs(p, p.spec.broker.replicas).join(","),
        ),
        pod_name_env("WORKER_NAME"),
        env(
            "WORKER_ADMIN_LISTEN",
            format!("0.0.0.0:{WORKER_ADMIN_PORT}"),
        ),
        env("WORKER_LOG_FORMAT", "json"),
    ];
    env.extend(pan_key_env(&p.spec));
    let tls = tls_on(p).then(|| client_tls(p, certs::Role::Worker));
    if let Some((tls_env, _)) = &tls {
        env.extend(tls_env.iter().cloned());
    }
    // The ConfigMap reaches the pods through envFrom, which does not change the template:
    // hash its data too so a scoring change rolls the workers.
    let hash = config_hash(&(&env, config_data(&p.spec)))?;
    let mut annotations = prometheus_annotations(WORKER_ADMIN_PORT);
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), hash);
    if let Some(h) = &ctx.cert_hashes.worker {
        annotations.insert(certs::CERT_HASH_ANNOTATION.into(), h.clone());
    }

    let container = Container {
        name: "worker".into(),
        image: Some(p.spec.image.clone()),
        image_pull_policy: Some(p.spec.image_pull_policy.clone()),
        command: Some(vec!["txpipe-worker".into()]),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(p),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(vec![port("admin", WORKER_ADMIN_PORT)]),
        readiness_probe: Some(Probe {
            http_get: Some(http_probe("/readyz", "admin")),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_probe("/healthz", "admin")),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(6),
            ..Default::default()
        }),
        resources: Some(resources),
        security_context: Some(container_security_context()),
        ..Default::default()
    };

    Ok(Deployment {
        metadata: meta(p, worker_deployment_name(p), "worker"),
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
            selector: selector(p, "worker"),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(p, "worker")),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some({
                    let mut pod = pod_spec(vec![container], false);
                    if let Some((_, volume)) = tls {
                        mount_tls(&mut pod, volume);
                    }
                    pod
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn render_hpa(p: &TransactionPipeline) -> Option<HorizontalPodAutoscaler> {
    let a = p.spec.workers.autoscaling.as_ref()?;
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(a.target_cpu_utilization_percentage),
                ..Default::default()
            },
        }),
        ..Default::default()
    }];
    if let Some(pending) = a.target_pending_per_worker {
        metrics.push(MetricSpec {
            type_: "External".into(),
            external: Some(ExternalMetricSource {
                metric: MetricIdentifier {
                    name: PENDING_METRIC.into(),
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([
                            ("stream".to_string(), "transactions".to_string()),
                            ("pipeline".to_string(), p.name_any()),
                        ])),
                        ..Default::default()
                    }),
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(pending.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    Some(HorizontalPodAutoscaler {
        metadata: meta(p, worker_hpa_name(p), "worker"),
        spec: Some(HorizontalPodAutoscalerSpec {
            // The HPA scales the pipeline (its /scale subresource writes
            // spec.workers.replicas); the operator carries the count to the Deployment.
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(TransactionPipeline::api_version(&()).to_string()),
                kind: TransactionPipeline::kind(&()).to_string(),
                name: p.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(HPA_SCALE_DOWN_STABILIZATION_SECONDS),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

fn render_service_monitor(p: &TransactionPipeline, ctx: &RenderContext) -> Option<DynamicObject> {
    if !(p.spec.monitoring.service_monitor && ctx.service_monitor_available) {
        return None;
    }
    let mut sel = selector_labels(p, "broker");
    // Any Service of this pipeline exposing a port named `admin` (the broker's headless
    // Service today); the client Service has no such port and yields no target.
    sel.remove("app.kubernetes.io/component");
    let mut obj = DynamicObject::new(&service_monitor_name(p), &service_monitor_api_resource())
        .within(&namespace(p))
        .data(serde_json::json!({
            "spec": {
                "selector": { "matchLabels": sel },
                "namespaceSelector": { "matchNames": [namespace(p)] },
                "endpoints": [{
                    "port": "admin",
                    "path": "/metrics",
                    "interval": "30s",
                    // `pipeline` and `component` target labels, which the HPA's External
                    // metric selects on (`pipeline="<n>"`) and the dashboards group by.
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_txpipe_io_pipeline"],
                            "targetLabel": "pipeline",
                        },
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                            "targetLabel": "component",
                        },
                    ],
                }],
            }
        }));
    obj.metadata.labels = Some(labels(p, "monitoring"));
    obj.metadata.owner_references = owner_refs(p);
    Some(obj)
}

fn render_producer(p: &TransactionPipeline) -> Option<Job> {
    let spec = p.spec.producer.as_ref()?;
    let mut env = vec![
        env(
            "PRODUCER_BROKERS",
            broker_client_addrs(p, p.spec.broker.replicas).join(","),
        ),
        env("PRODUCER_COUNT", spec.count),
        env("PRODUCER_RATE", spec.rate),
        env("PRODUCER_SEED", spec.seed),
        env("PRODUCER_NAME", producer_name(p, spec.seed)),
        env("PRODUCER_PROGRESS", "never"),
        env("PRODUCER_LOG_FORMAT", "json"),
    ];
    env.extend(pan_key_env(&p.spec));
    // No certificate hash on the Job's template (immutable): a renewed Secret reaches a
    // running producer pod through the kubelet's Secret volume update.
    let tls = tls_on(p).then(|| client_tls(p, certs::Role::Producer));
    if let Some((tls_env, _)) = &tls {
        env.extend(tls_env.iter().cloned());
    }
    let container = Container {
        name: "producer".into(),
        image: Some(p.spec.image.clone()),
        image_pull_policy: Some(p.spec.image_pull_policy.clone()),
        command: Some(vec!["txpipe-producer".into()]),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "250m"), ("memory", "128Mi")])),
            limits: Some(quantities(&[("memory", "256Mi")])),
            ..Default::default()
        }),
        security_context: Some(container_security_context()),
        ..Default::default()
    };
    let mut pod = pod_spec(vec![container], false);
    if let Some((_, volume)) = tls {
        mount_tls(&mut pod, volume);
    }
    pod.restart_policy = Some("OnFailure".into());
    Some(Job {
        metadata: meta(p, producer_job_name(p), "producer"),
        spec: Some(JobSpec {
            backoff_limit: Some(PRODUCER_BACKOFF_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(p, "producer")),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Renders every child object of `p`.
///
/// Errors: [`Error::MissingField`] without `metadata.name`; [`Error::InvalidSpec`] with reason
/// `InvalidQuantity` (a resources or storage quantity does not parse), `InvalidResources`
/// (requests above limits), `VolumeShrinkRefused` (`spec.broker.storage.size` below
/// [`RenderContext::existing_volume_size`]), `InvalidReplicas` or `PanKeySecretMissing`
/// (no `spec.panKeySecret`: the producer and workers have no default PAN key and would not
/// start, so nothing is rendered and the pipeline's conditions say why). Owner references are set when
/// the pipeline has a `metadata.uid` and omitted otherwise (rendering from a file).
pub fn render(p: &TransactionPipeline, ctx: &RenderContext) -> Result<Children> {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(Error::MissingField("metadata.name"));
    }
    // The CRD's CEL rule says the same; checked here too for objects stored before the rule
    // or on API servers without CEL validation.
    if name.len() > MAX_PIPELINE_NAME {
        return Err(Error::InvalidSpec {
            reason: "NameTooLong".into(),
            message: format!(
                "metadata.name {name:?} has {} characters; at most {MAX_PIPELINE_NAME}: the broker StatefulSet {name}-broker must stay within Kubernetes' 52 characters for StatefulSet names",
                name.len()
            ),
        });
    }
    if p.spec.pan_key_secret.is_none() {
        return Err(Error::InvalidSpec {
            reason: "PanKeySecretMissing".into(),
            message: PAN_KEY_SECRET_MISSING.into(),
        });
    }
    let (broker_headless, broker_client) = render_broker_services(p);
    Ok(Children {
        config_map: render_config_map(p),
        broker_headless,
        broker_client,
        broker: render_broker(p, ctx)?,
        broker_pdb: pdb(p, broker_pdb_name(p), "broker"),
        worker: render_worker(p, ctx)?,
        worker_hpa: render_hpa(p),
        worker_pdb: pdb(p, worker_pdb_name(p), "worker"),
        service_monitor: render_service_monitor(p, ctx),
        producer: render_producer(p),
        certificates: match p.spec.tls_mode() {
            TlsMode::CertManager => certs::certificates(p),
            _ => Vec::new(),
        },
        tls_secrets_preview: if ctx.tls_secrets_preview && p.spec.tls_mode() == TlsMode::Managed {
            certs::preview_secrets(p, k8s_openapi::jiff::Timestamp::now().as_second())?
        } else {
            Vec::new()
        },
    })
}

fn manifest_error(index: usize, message: impl std::fmt::Display) -> Error {
    Error::InvalidSpec {
        reason: "InvalidManifest".into(),
        message: format!("document {index}: {message}"),
    }
}

/// Reads a multi-document YAML of TransactionPipeline manifests and returns the rendered
/// children of each as multi-document YAML (what `txpipe-operator render -f` prints). Empty
/// documents are skipped.
///
/// Every pipeline is checked like the API server would (types, then the CRD's CEL rules)
/// before it is rendered. Errors: [`Error::InvalidSpec`] naming the document index (0-based)
/// with reason `InvalidManifest` (not YAML, not a `txpipe.io/v1alpha1` TransactionPipeline, a
/// wrong type or a failed CEL rule), or the errors of [`render`].
pub fn render_manifests_yaml(input: &str, ctx: &RenderContext) -> Result<String> {
    let mut out = String::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| manifest_error(index, e))?;
        if value.is_null() {
            continue;
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        let want_api = TransactionPipeline::api_version(&());
        let want_kind = TransactionPipeline::kind(&());
        if api_version != Some(want_api.as_ref()) || kind != Some(want_kind.as_ref()) {
            return Err(manifest_error(
                index,
                format!(
                    "expected apiVersion {want_api} kind {want_kind}, got {} {}",
                    api_version.unwrap_or("<none>"),
                    kind.unwrap_or("<none>")
                ),
            ));
        }
        let p: TransactionPipeline =
            serde_yaml::from_value(value).map_err(|e| manifest_error(index, e))?;
        p.validate_cel()
            .map_err(|e| manifest_error(index, format!("{}: {e}", p.name_any())))?;
        let children = render(&p, ctx).map_err(|e| match e {
            Error::InvalidSpec { reason, message } => Error::InvalidSpec {
                reason,
                message: format!("document {index}: {message}"),
            },
            other => other,
        })?;
        for v in children.to_values()? {
            let text = serde_yaml::to_string(&v).map_err(|e| manifest_error(index, e))?;
            out.push_str("---\n");
            out.push_str(&text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AutoscalingSpec, ProducerSpec, SecretKeyRef};
    use serde_json::Value;

    fn pipeline(name: &str) -> TransactionPipeline {
        let mut p = TransactionPipeline::new(
            name,
            serde_json::from_value(serde_json::json!({"panKeySecret": {"name": "pan"}}))
                .expect("defaults"),
        );
        p.metadata.namespace = Some("payments".into());
        p.metadata.uid = Some("1234-uid".into());
        p
    }

    #[test]
    fn a_pipeline_without_a_pan_key_secret_is_refused_naming_the_field() {
        let mut p = pipeline("demo");
        p.spec.pan_key_secret = None;
        match render(&p, &RenderContext::default()) {
            Err(Error::InvalidSpec { reason, message }) => {
                assert_eq!(reason, "PanKeySecretMissing");
                assert!(
                    message.contains("spec.panKeySecret is required"),
                    "{message}"
                );
            }
            other => panic!("expected PanKeySecretMissing, got {other:?}"),
        }
    }

    #[test]
    fn a_name_longer_than_45_characters_is_refused_and_45_fit_every_child() {
        let long = "p".repeat(MAX_PIPELINE_NAME + 1);
        match render(&pipeline(&long), &RenderContext::default()) {
            Err(Error::InvalidSpec { reason, message }) => {
                assert_eq!(reason, "NameTooLong");
                assert!(message.contains("at most 45"), "{message}");
            }
            other => panic!("expected NameTooLong, got {other:?}"),
        }
        let name = "p".repeat(MAX_PIPELINE_NAME);
        let c = render(&pipeline(&name), &RenderContext::default()).expect("45 characters fit");
        let sts = c.broker.metadata.name.as_deref().unwrap();
        assert!(sts.len() <= 52, "StatefulSet name {sts}");
        for n in [
            c.broker_headless.metadata.name.as_deref().unwrap(),
            c.broker_client.metadata.name.as_deref().unwrap(),
            c.worker.metadata.name.as_deref().unwrap(),
            &broker_pod_name(&pipeline(&name), 6),
        ] {
            assert!(n.len() <= 63, "{n} ({} characters)", n.len());
        }
    }

    fn worker_container(c: &Children) -> &Container {
        &c.worker
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
            .containers[0]
    }

    fn broker_container(c: &Children) -> &Container {
        &c.broker
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
            .containers[0]
    }

    fn env_value(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn config_hash_of(t: &PodTemplateSpec) -> String {
        t.metadata
            .as_ref()
            .expect("meta")
            .annotations
            .as_ref()
            .expect("annotations")[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    #[test]
    fn defaults_give_half_cpu_workers() {
        let c = render(&pipeline("fraud"), &RenderContext::default()).expect("render");
        let r = worker_container(&c).resources.as_ref().expect("resources");
        let limits = r.limits.as_ref().expect("limits");
        assert_eq!(limits["cpu"], Quantity("500m".into()));
        assert_eq!(parse_quantity(&limits["cpu"].0), Some(0.5));
        assert_eq!(limits["memory"], Quantity("256Mi".into()));
        assert_eq!(r.requests, r.limits);
        let br = broker_container(&c).resources.as_ref().expect("resources");
        assert_eq!(br.requests.as_ref().expect("req")["memory"].0, "512Mi");
        assert!(!br.limits.as_ref().expect("lim").contains_key("cpu"));
        assert_eq!(
            c.worker.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "deployment replicas = spec.workers.replicas"
        );
        let sts = c.broker.spec.as_ref().expect("sts spec");
        assert_eq!(sts.replicas, Some(3));
        assert_eq!(
            sts.update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref()),
            Some("OnDelete")
        );
        assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
        assert!(c.worker_hpa.is_none());
        assert!(c.service_monitor.is_none());
        assert!(c.producer.is_none());
    }

    #[test]
    fn peers_for_three_replicas() {
        let p = pipeline("fraud");
        assert_eq!(
            broker_peer_addrs(&p, 3),
            vec![
                "fraud-broker-0.fraud-broker-headless.payments.svc:9200",
                "fraud-broker-1.fraud-broker-headless.payments.svc:9200",
                "fraud-broker-2.fraud-broker-headless.payments.svc:9200",
            ]
        );
        assert_eq!(
            broker_client_addrs(&p, 1),
            vec!["fraud-broker-0.fraud-broker-headless.payments.svc:9100"]
        );
        assert_eq!(
            broker_admin_addrs(&p, 1),
            vec!["fraud-broker-0.fraud-broker-headless.payments.svc:9180"]
        );
        let c = render(&p, &RenderContext::default()).expect("render");
        let b = broker_container(&c);
        assert_eq!(
            env_value(b, "BROKER_PEERS").expect("peers"),
            broker_peer_addrs(&p, 3).join(",")
        );
        assert_eq!(
            env_value(b, "BROKER_CLIENT_ADDRS").expect("client addrs"),
            broker_client_addrs(&p, 3).join(",")
        );
        assert_eq!(
            env_value(b, "BROKER_DATA_DIR").as_deref(),
            Some(BROKER_DATA_DIR)
        );
        assert_eq!(env_value(b, "BROKER_LOG_FORMAT").as_deref(), Some("json"));
        assert_eq!(
            env_value(worker_container(&c), "WORKER_BROKERS").expect("brokers"),
            broker_client_addrs(&p, 3).join(",")
        );

        // The controller's membership step wins over spec.broker.replicas.
        let ctx = RenderContext {
            broker_replicas: Some(4),
            ..Default::default()
        };
        let c = render(&p, &ctx).expect("render");
        assert_eq!(c.broker.spec.as_ref().and_then(|s| s.replicas), Some(4));
        assert_eq!(
            env_value(broker_container(&c), "BROKER_PEERS")
                .expect("peers")
                .split(',')
                .count(),
            4
        );
    }

    #[test]
    fn hpa_only_with_autoscaling_and_targets_the_pipeline() {
        let mut p = pipeline("fraud");
        assert!(
            render(&p, &RenderContext::default())
                .expect("render")
                .worker_hpa
                .is_none()
        );
        p.spec.workers.autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 20,
            target_cpu_utilization_percentage: 70,
            target_pending_per_worker: None,
        });
        let c = render(&p, &RenderContext::default()).expect("render");
        let hpa = c.worker_hpa.expect("hpa");
        assert_eq!(hpa.metadata.name.as_deref(), Some("fraud-worker"));
        let spec = hpa.spec.expect("spec");
        assert_eq!(
            spec.scale_target_ref,
            CrossVersionObjectReference {
                api_version: Some("txpipe.io/v1alpha1".into()),
                kind: "TransactionPipeline".into(),
                name: "fraud".into(),
            }
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 20));
        let metrics = spec.metrics.expect("metrics");
        assert_eq!(
            metrics.len(),
            1,
            "no external metric without targetPendingPerWorker"
        );
        let cpu = metrics[0].resource.as_ref().expect("cpu metric");
        assert_eq!(cpu.name, "cpu");
        assert_eq!(cpu.target.type_, "Utilization");
        assert_eq!(cpu.target.average_utilization, Some(70));
        assert_eq!(
            spec.behavior
                .and_then(|b| b.scale_down)
                .and_then(|s| s.stabilization_window_seconds),
            Some(300)
        );
        // Deployment replicas still come from the spec (the HPA writes them via /scale).
        assert_eq!(c.worker.spec.and_then(|s| s.replicas), Some(2));
    }

    #[test]
    fn external_metric_only_when_configured() {
        let mut p = pipeline("fraud");
        p.spec.workers.autoscaling = Some(AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 10,
            target_cpu_utilization_percentage: 70,
            target_pending_per_worker: Some(5000),
        });
        let hpa = render(&p, &RenderContext::default())
            .expect("render")
            .worker_hpa
            .expect("hpa");
        let metrics = hpa.spec.expect("spec").metrics.expect("metrics");
        assert_eq!(metrics.len(), 2);
        let ext = metrics[1].external.as_ref().expect("external");
        assert_eq!(metrics[1].type_, "External");
        assert_eq!(ext.metric.name, PENDING_METRIC);
        let sel = ext
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.clone());
        assert_eq!(
            sel,
            Some(BTreeMap::from([
                ("pipeline".to_string(), "fraud".to_string()),
                ("stream".to_string(), "transactions".to_string()),
            ]))
        );
        assert_eq!(ext.target.type_, "AverageValue");
        assert_eq!(ext.target.average_value, Some(Quantity("5000".into())));
    }

    #[test]
    fn service_monitor_only_when_both_flags() {
        let mut p = pipeline("fraud");
        let yes = RenderContext {
            service_monitor_available: true,
            ..Default::default()
        };
        let no = RenderContext::default();
        assert!(render(&p, &yes).expect("render").service_monitor.is_none());
        p.spec.monitoring.service_monitor = true;
        assert!(render(&p, &no).expect("render").service_monitor.is_none());
        let sm = render(&p, &yes)
            .expect("render")
            .service_monitor
            .expect("service monitor");
        let v = serde_json::to_value(&sm).expect("json");
        assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(v["kind"], "ServiceMonitor");
        assert_eq!(v["metadata"]["name"], "fraud");
        assert_eq!(v["metadata"]["namespace"], "payments");
        assert_eq!(v["spec"]["endpoints"][0]["port"], "admin");
        assert_eq!(
            v["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "fraud"
        );
    }

    #[test]
    fn volume_shrink_refused_and_growth_keeps_template() {
        let mut p = pipeline("fraud");
        p.spec.broker.storage.size = "5Gi".into();
        let ctx = RenderContext {
            existing_volume_size: Some("10Gi".into()),
            ..Default::default()
        };
        match render(&p, &ctx) {
            Err(Error::InvalidSpec { reason, message }) => {
                assert_eq!(reason, "VolumeShrinkRefused");
                assert!(
                    message.contains("5Gi") && message.contains("10Gi"),
                    "{message}"
                );
            }
            other => panic!("expected VolumeShrinkRefused, got {other:?}"),
        }
        // Same size written differently is not a shrink; growth keeps the live template size.
        for size in ["10240Mi", "20Gi"] {
            p.spec.broker.storage.size = size.into();
            let c = render(&p, &ctx).expect("render");
            let vct = &c
                .broker
                .spec
                .expect("spec")
                .volume_claim_templates
                .expect("vct")[0];
            let req = vct
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .expect("requests");
            assert_eq!(req["storage"], Quantity("10Gi".into()));
        }
        p.spec.broker.storage.size = "lots".into();
        match render(&p, &RenderContext::default()) {
            Err(Error::InvalidSpec { reason, .. }) => assert_eq!(reason, "InvalidQuantity"),
            other => panic!("expected InvalidQuantity, got {other:?}"),
        }
    }

    #[test]
    fn invalid_resources_are_refused() {
        let mut p = pipeline("fraud");
        p.spec.workers.resources = Some(ResourceRequirements {
            limits: Some(quantities(&[("cpu", "half")])),
            ..Default::default()
        });
        match render(&p, &RenderContext::default()) {
            Err(Error::InvalidSpec { reason, message }) => {
                assert_eq!(reason, "InvalidQuantity");
                assert!(
                    message.contains("spec.workers.resources.limits.cpu"),
                    "{message}"
                );
            }
            other => panic!("expected InvalidQuantity, got {other:?}"),
        }
        p.spec.workers.resources = Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "2")])),
            limits: Some(quantities(&[("cpu", "1")])),
            ..Default::default()
        });
        match render(&p, &RenderContext::default()) {
            Err(Error::InvalidSpec { reason, .. }) => assert_eq!(reason, "InvalidResources"),
            other => panic!("expected InvalidResources, got {other:?}"),
        }
    }

    #[test]
    fn config_hash_changes_when_env_changes() {
        let mut p = pipeline("fraud");
        let ctx = RenderContext::default();
        let c0 = render(&p, &ctx).expect("render");
        let b0 = config_hash_of(&c0.broker.spec.as_ref().expect("spec").template);
        let w0 = config_hash_of(&c0.worker.spec.as_ref().expect("spec").template);
        assert_eq!(b0.len(), 64);
        // Deterministic.
        let again = render(&p, &ctx).expect("render");
        assert_eq!(
            b0,
            config_hash_of(&again.broker.spec.expect("spec").template)
        );

        p.spec.broker.heartbeat_ms = 50;
        let c1 = render(&p, &ctx).expect("render");
        assert_ne!(b0, config_hash_of(&c1.broker.spec.expect("spec").template));

        // A ConfigMap-only change (scoring) rolls the workers too.
        p.spec.workers.scoring.review_threshold = Some(0.7);
        p.spec.workers.scoring.model = Some("builtin:ulb-gbt".into());
        let c2 = render(&p, &ctx).expect("render");
        let data = c2.config_map.data.as_ref().expect("data");
        assert_eq!(data["WORKER_REVIEW_THRESHOLD"], "0.7");
        assert_eq!(data["WORKER_MODEL"], "builtin:ulb-gbt");
        assert_ne!(w0, config_hash_of(&c2.worker.spec.expect("spec").template));
    }

    #[test]
    fn every_object_has_owner_ref_and_labels() {
        let mut p = pipeline("fraud");
        p.spec.workers.autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 20,
            target_cpu_utilization_percentage: 70,
            target_pending_per_worker: Some(10),
        });
        p.spec.monitoring.service_monitor = true;
        p.spec.producer = Some(ProducerSpec {
            count: 1000,
            rate: 0,
            seed: 42,
        });
        p.spec.pan_key_secret = Some(SecretKeyRef {
            name: "pan".into(),
            key: "pan-key".into(),
        });
        let ctx = RenderContext {
            service_monitor_available: true,
            ..Default::default()
        };
        let values = render(&p, &ctx)
            .expect("render")
            .to_values()
            .expect("values");
        let kinds: Vec<&str> = values
            .iter()
            .map(|v| v["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            vec![
                "ConfigMap",
                "Service",
                "Service",
                "StatefulSet",
                "PodDisruptionBudget",
                "PodDisruptionBudget",
                "Deployment",
                "HorizontalPodAutoscaler",
                "ServiceMonitor",
                "Job",
            ]
        );
        for v in &values {
            let what = format!("{} {}", v["kind"], v["metadata"]["name"]);
            assert_eq!(v["metadata"]["namespace"], "payments", "{what}");
            let owners = v["metadata"]["ownerReferences"].as_array().expect(&what);
            assert_eq!(owners.len(), 1, "{what}");
            assert_eq!(owners[0]["uid"], "1234-uid", "{what}");
            assert_eq!(owners[0]["kind"], "TransactionPipeline", "{what}");
            assert_eq!(owners[0]["controller"], true, "{what}");
            assert_eq!(owners[0]["blockOwnerDeletion"], true, "{what}");
            let l = &v["metadata"]["labels"];
            for k in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
                "app.kubernetes.io/managed-by",
                "app.kubernetes.io/part-of",
                PIPELINE_LABEL,
            ] {
                assert!(l.get(k).is_some(), "{what} lacks label {k}");
            }
            assert_eq!(l[PIPELINE_LABEL], "fraud", "{what}");
            // Pod templates are labelled and run restricted.
            if let Some(t) = v["spec"].get("template") {
                let comp = &t["metadata"]["labels"]["app.kubernetes.io/component"];
                assert!(comp.is_string(), "{what} template labels");
                let ps = &t["spec"]["securityContext"];
                assert_eq!(ps["runAsNonRoot"], true, "{what}");
                for c in t["spec"]["containers"].as_array().expect("containers") {
                    let sc = &c["securityContext"];
                    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                    assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{what}");
                    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
                }
            }
        }
        // PAN key comes from the Secret in the worker and the producer.
        let pan_refs = values
            .iter()
            .filter(|v| {
                v.to_string()
                    .contains("\"secretKeyRef\":{\"key\":\"pan-key\"")
            })
            .count();
        assert_eq!(pan_refs, 2);
    }

    #[test]
    fn the_producer_job_registers_under_a_name_that_survives_restarts_and_spec_changes() {
        let env_of = |p: &TransactionPipeline| -> Vec<(String, String)> {
            let job = render(p, &RenderContext::default())
                .expect("render")
                .producer
                .expect("producer job");
            let pod = job.spec.unwrap().template.spec.unwrap();
            pod.containers[0]
                .env
                .clone()
                .unwrap()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default()))
                .collect()
        };
        let name_of = |p: &TransactionPipeline| {
            env_of(p)
                .into_iter()
                .find(|(k, _)| k == "PRODUCER_NAME")
                .map(|(_, v)| v)
                .expect("PRODUCER_NAME set")
        };
        let mut p = pipeline("fraud");
        p.metadata.namespace = Some("payments".into());
        p.spec.producer = Some(ProducerSpec {
            count: 1000,
            rate: 0,
            seed: 42,
        });
        assert_eq!(name_of(&p), "payments/fraud/seed-42");
        // Rendering again (a restarted pod, a recreated Job) or other spec changes: same name.
        let mut q = p.clone();
        q.metadata.generation = Some(7);
        q.spec.producer.as_mut().unwrap().count = 5000;
        q.spec.producer.as_mut().unwrap().rate = 100;
        assert_eq!(name_of(&q), name_of(&p));
        // Another seed is another sequence of transactions.
        q.spec.producer.as_mut().unwrap().seed = 7;
        assert_eq!(name_of(&q), "payments/fraud/seed-7");
    }

    #[test]
    fn no_uid_means_no_owner_refs_and_default_namespace() {
        let mut p = pipeline("fraud");
        p.metadata.uid = None;
        p.metadata.namespace = None;
        let values = render(&p, &RenderContext::default())
            .expect("render")
            .to_values()
            .expect("values");
        for v in values {
            assert!(v["metadata"].get("ownerReferences").is_none());
            assert_eq!(v["metadata"]["namespace"], "default");
        }
        p.metadata.name = None;
        assert!(matches!(
            render(&p, &RenderContext::default()),
            Err(Error::MissingField("metadata.name"))
        ));
    }

    #[test]
    fn selectors_and_names() {
        let p = pipeline("fraud");
        assert_eq!(
            worker_selector(&p),
            "app.kubernetes.io/component=worker,app.kubernetes.io/instance=fraud,\
             app.kubernetes.io/name=txpipe"
        );
        assert_eq!(broker_statefulset_name(&p), "fraud-broker");
        assert_eq!(broker_headless_service_name(&p), "fraud-broker-headless");
        assert_eq!(broker_pvc_name(&p, 2), "data-fraud-broker-2");
        assert_eq!(config_map_name(&p), "fraud-config");
        assert_eq!(producer_job_name(&p), "fraud-producer");
        let c = render(&p, &RenderContext::default()).expect("render");
        let sel = c
            .worker
            .spec
            .as_ref()
            .expect("spec")
            .selector
            .match_labels
            .clone();
        assert_eq!(sel, Some(selector_labels(&p, "worker")));
        let headless = c.broker_headless.spec.as_ref().expect("spec");
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn quantities_parse() {
        for (q, v) in [
            ("500m", 0.5),
            ("1", 1.0),
            ("1.5Gi", 1.5 * 1024.0 * 1024.0 * 1024.0),
            ("10G", 1e10),
            ("1e3", 1000.0),
            ("2E", 2e18),
            (".5", 0.5),
            ("128974848", 128_974_848.0),
        ] {
            assert_eq!(parse_quantity(q), Some(v), "{q}");
        }
        for bad in ["", "abc", "1.2.3", "Gi", "10Gb", "1e", "."] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn manifests_yaml_renders_each_document_and_names_bad_ones() {
        let good = "apiVersion: txpipe.io/v1alpha1\nkind: TransactionPipeline\nmetadata:\n  name: a\nspec:\n  panKeySecret:\n    name: pan\n  producer:\n    count: 5\n";
        let out = render_manifests_yaml(
            &format!("{good}---\n---\n{}", good.replace("name: a", "name: b")),
            &RenderContext::default(),
        )
        .expect("render");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| Value::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2 * 8);
        assert!(docs.iter().any(|d| d["metadata"]["name"] == "b-producer"));

        let bad = format!("{good}---\n{}", good.replace("count: 5", "count: 0"));
        match render_manifests_yaml(&bad, &RenderContext::default()) {
            Err(Error::InvalidSpec { message, .. }) => {
                assert!(message.contains("document 1"), "{message}");
                assert!(message.contains("producer.count"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let wrong_kind = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
        match render_manifests_yaml(wrong_kind, &RenderContext::default()) {
            Err(Error::InvalidSpec { message, .. }) => {
                assert!(message.contains("document 0"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn with_tls(mode: &str) -> TransactionPipeline {
        let mut p = pipeline("demo");
        p.spec.producer = Some(ProducerSpec {
            count: 10,
            rate: 0,
            seed: 1,
        });
        p.spec.tls = Some(crate::crd::TlsSpec {
            mode: mode.into(),
            issuer_ref: Some(crate::crd::IssuerRef {
                name: "ca".into(),
                kind: "Issuer".into(),
                group: "cert-manager.io".into(),
            }),
            ..Default::default()
        });
        p
    }

    fn container_env(pod: &PodSpec) -> BTreeMap<String, Option<String>> {
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn tls_off_renders_no_tls_files_and_the_grpc_readiness_probe() {
        let c = render(&pipeline("demo"), &RenderContext::default()).expect("render");
        let pod = c.broker.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.is_none());
        assert!(!container_env(&pod).contains_key("BROKER_TLS_CERT_FILE"));
        let probe = pod.containers[0].readiness_probe.clone().unwrap();
        assert!(probe.grpc.is_some());
        assert_eq!(
            pod.containers[0]
                .liveness_probe
                .clone()
                .unwrap()
                .http_get
                .unwrap()
                .scheme,
            None
        );
        assert!(c.certificates.is_empty());
    }

    #[test]
    fn tls_mounts_each_workload_its_certificate_and_probes_the_admin_port_over_https() {
        let c = render(&with_tls("managed"), &RenderContext::default()).expect("render");
        let broker = c.broker.spec.unwrap().template.spec.unwrap();
        let env = container_env(&broker);
        assert_eq!(
            env["BROKER_TLS_CERT_FILE"].as_deref(),
            Some("/etc/txpipe/tls/$(TXPIPE_POD_NAME)/tls.crt")
        );
        assert!(env.contains_key(POD_NAME_ENV));
        let projected = broker.volumes.as_ref().unwrap()[0]
            .projected
            .clone()
            .unwrap();
        let sources = projected.sources.unwrap();
        assert_eq!(sources.len(), certs::MAX_BROKERS as usize);
        let s3 = sources[3].secret.clone().unwrap();
        assert_eq!(s3.name, "demo-broker-3-tls");
        assert_eq!(s3.optional, Some(true));
        assert_eq!(s3.items.unwrap()[0].path, "demo-broker-3/tls.crt");
        assert_eq!(
            broker.security_context.as_ref().unwrap().fs_group,
            Some(RUN_AS_USER)
        );
        let c0 = &broker.containers[0];
        let ready = c0.readiness_probe.clone().unwrap();
        assert!(
            ready.grpc.is_none(),
            "the kubelet's gRPC probe cannot do TLS"
        );
        let ready = ready.http_get.unwrap();
        assert_eq!(
            (ready.path.as_deref(), ready.scheme.as_deref()),
            (Some("/readyz"), Some("HTTPS"))
        );
        for probe in [c0.liveness_probe.clone(), c0.startup_probe.clone()] {
            assert_eq!(
                probe.unwrap().http_get.unwrap().scheme.as_deref(),
                Some("HTTPS")
            );
        }
        assert_eq!(
            c0.volume_mounts
                .as_ref()
                .unwrap()
                .last()
                .unwrap()
                .mount_path,
            certs::TLS_MOUNT
        );

        let worker = c.worker.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            container_env(&worker)["TXPIPE_TLS_CERT_FILE"].as_deref(),
            Some("/etc/txpipe/tls/tls.crt")
        );
        let secret = worker.volumes.as_ref().unwrap()[0].secret.clone().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("demo-worker-tls"));
        assert_eq!(secret.default_mode, Some(0o440));
        assert_eq!(
            worker.security_context.as_ref().unwrap().fs_group,
            Some(RUN_AS_USER)
        );
        let producer = c.producer.unwrap().spec.unwrap().template.spec.unwrap();
        assert_eq!(
            producer.volumes.as_ref().unwrap()[0]
                .secret
                .clone()
                .unwrap()
                .secret_name
                .as_deref(),
            Some("demo-producer-tls")
        );
        assert!(
            c.certificates.is_empty(),
            "managed mode makes Secrets, not Certificates"
        );
        assert!(
            c.tls_secrets_preview.is_empty(),
            "only with the preview flag"
        );
    }

    #[test]
    fn the_tls_files_do_not_depend_on_the_broker_replicas() {
        let p = with_tls("managed");
        let tls_parts = |replicas| {
            let ctx = RenderContext {
                broker_replicas: Some(replicas),
                ..Default::default()
            };
            let pod = render(&p, &ctx)
                .unwrap()
                .broker
                .spec
                .unwrap()
                .template
                .spec
                .unwrap();
            let env: Vec<EnvVar> = pod.containers[0]
                .env
                .clone()
                .unwrap()
                .into_iter()
                .filter(|e| e.name.contains("TLS") || e.name == POD_NAME_ENV)
                .collect();
            (pod.volumes, env)
        };
        assert_eq!(tls_parts(1), tls_parts(5));
    }

    #[test]
    fn certificate_hashes_become_pod_template_annotations() {
        let ctx = RenderContext {
            cert_hashes: CertHashes {
                broker: Some("b1".into()),
                worker: Some("w1".into()),
            },
            ..Default::default()
        };
        let c = render(&with_tls("managed"), &ctx).expect("render");
        let ann = |t: &PodTemplateSpec| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[certs::CERT_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(ann(&c.broker.spec.unwrap().template), "b1");
        assert_eq!(ann(&c.worker.spec.unwrap().template), "w1");
    }

    #[test]
    fn cert_manager_mode_renders_a_certificate_per_identity_and_the_preview_only_for_managed() {
        let ctx = RenderContext {
            tls_secrets_preview: true,
            ..Default::default()
        };
        let c = render(&with_tls("certManager"), &ctx).expect("render");
        assert_eq!(
            c.certificates.len(),
            certs::identities(&with_tls("certManager")).len()
        );
        assert!(c.tls_secrets_preview.is_empty());
        let m = render(&with_tls("managed"), &ctx).expect("render");
        assert_eq!(
            m.tls_secrets_preview.len(),
            1 + certs::identities(&with_tls("managed")).len()
        );
        let values = m.to_values().expect("values");
        assert_eq!(
            values[0]["kind"], "Secret",
            "Secrets come first in apply order"
        );
    }
}
