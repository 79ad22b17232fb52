//! The `TransactionPipeline` custom resource (`txpipe.io/v1alpha1`, short name `txp`).
//!
//! One pipeline is one replicated broker (a StatefulSet with a volume per replica), an
//! autoscaled pool of workers (a Deployment, at most 0.5 CPU each by default) and, optionally,
//! a producer Job. The schema is derived with schemars; cross-field rules are CEL rules
//! (`x-kubernetes-validations`) checked by the API server and, with the same rules, by
//! [`TransactionPipeline::validate_cel`] in tests and in the operator. Rules that need the live
//! state (a volume may grow but not shrink) are checked by the operator and reported as a
//! `Ready=False` condition with a reason.
//!
//! Print the CRD with `txpipe-operator crd`; `crds/` holds its output.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default container image (all txpipe binaries in one image): `ghcr.io/txpipe-io/txpipe:<crate
/// version>`.
pub fn default_image() -> String {
    format!("ghcr.io/txpipe-io/txpipe:{}", env!("CARGO_PKG_VERSION"))
}

/// Desired state of a pipeline.
// The printer columns repeat `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "txpipe.io",
    version = "v1alpha1",
    kind = "TransactionPipeline",
    plural = "transactionpipelines",
    shortname = "txp",
    namespaced,
    doc = "A txpipe pipeline: a replicated broker (StatefulSet), autoscaled scoring workers (Deployment) and an optional producer Job.",
    status = "TransactionPipelineStatus",
    cel,
    validation = Rule::new("self.metadata.name.size() <= 45").message("metadata.name must be at most 45 characters: the broker StatefulSet <name>-broker must stay within Kubernetes' 52 characters for StatefulSet names (its pods carry the label controller-revision-hash=<statefulset>-<hash>, at most 63)"),
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.workers.replicas",
        label_selector_path = ".status.workers.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Brokers",
        type_ = "string",
        json_path = ".status.broker.summary"
    ),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers.summary"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        priority = 1,
        json_path = ".status.broker.leader"
    ),
    printcolumn(
        name = "Certs-Expire",
        type_ = "string",
        priority = 1,
        json_path = ".status.tls.notAfter"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPipelineSpec {
    /// Container image holding every txpipe binary. Default: `ghcr.io/txpipe-io/txpipe:<operator
    /// version>`.
    #[serde(default = "default_image")]
    pub image: String,
    /// Image pull policy for every container. Default `IfNotPresent`.
    #[serde(default = "default_pull_policy")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: String,
    /// The replicated broker.
    #[serde(default)]
    pub broker: BrokerSpec,
    /// The scoring workers.
    #[serde(default)]
    pub workers: WorkersSpec,
    /// Optional producer Job that publishes generated transactions (for demos and load tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<ProducerSpec>,
    /// Prometheus integration.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Secret holding the PAN data-encryption key (64 hex characters, key id `k1`) shared by
    /// the producer and the workers. Required: without it the operator renders nothing and
    /// reports `PanKeySecretMissing` (there is no default key). Never put a real key in the
    /// pipeline spec itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan_key_secret: Option<SecretKeyRef>,
    /// Mutual TLS between every component (docs/security.md): certificates from a CA the
    /// operator manages, or from a cert-manager issuer. Default: off (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

impl TransactionPipelineSpec {
    /// The TLS mode (`Off` without a `tls` section).
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.as_ref().map_or(TlsMode::Off, TlsSpec::mode)
    }
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

/// A key of a Secret in the pipeline's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[x_kube(validation = Rule::new("self.size() > 0").message("secret name must not be empty"))]
    pub name: String,
    /// Key within the Secret. Default `pan-key`.
    #[serde(default = "default_pan_key")]
    pub key: String,
}

fn default_pan_key() -> String {
    "pan-key".into()
}

/// The broker StatefulSet: `replicas` Raft replicas, one PersistentVolumeClaim each.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas % 2 == 1").message("broker.replicas must be odd (1, 3, 5 or 7): an even count adds a replica without adding fault tolerance"),
    validation = Rule::new("self.electionTimeoutMs >= 3 * self.heartbeatMs").message("broker.electionTimeoutMs must be at least 3 x heartbeatMs")
)]
pub struct BrokerSpec {
    /// Raft replicas: 1, 3, 5 or 7 (odd; a majority must be up to accept writes). Default 3.
    /// Changed one member at a time by the operator (grow: the new pod joins and catches up
    /// before the next; shrink: the member leaves the Raft groups before its pod is removed).
    #[serde(default = "default_broker_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 7").message("broker.replicas must be between 1 and 7"))]
    pub replicas: i32,
    /// One PersistentVolumeClaim per replica.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Container resources. Default: requests cpu 500m, memory 512Mi; limits memory 1Gi (no CPU
    /// limit: the broker's fsync latency suffers from CFS throttling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// fsync before acknowledging (`BROKER_FSYNC`). Default true; false only for throwaway
    /// pipelines (a quorum then holds acked data in page cache only).
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// Retention of the decisions stream, bytes per replica (`BROKER_DECISIONS_MAX_BYTES`).
    /// Default 8 GiB (8589934592). Work-queue streams drop records once acked.
    #[serde(default = "default_decisions_max_bytes")]
    #[x_kube(validation = Rule::new("self >= 1048576").message("broker.decisionsMaxBytes must be at least 1 MiB"))]
    pub decisions_max_bytes: i64,
    /// Raft election timeout lower bound, ms (`BROKER_ELECTION_TIMEOUT_MS`). Default 300; at
    /// least 3 x `heartbeatMs`. Raise both on disks whose fsync p99 exceeds 20 ms.
    #[serde(default = "default_election_ms")]
    pub election_timeout_ms: i32,
    /// Raft heartbeat interval, ms (`BROKER_HEARTBEAT_MS`). Default 100.
    #[serde(default = "default_heartbeat_ms")]
    #[x_kube(validation = Rule::new("self >= 10").message("broker.heartbeatMs must be at least 10"))]
    pub heartbeat_ms: i32,
    /// Delivery attempts before a record goes to the dead-letter stream
    /// (`BROKER_MAX_DELIVERIES`). Default 5.
    #[serde(default = "default_max_deliveries")]
    #[x_kube(validation = Rule::new("self >= 1").message("broker.maxDeliveries must be at least 1"))]
    pub max_deliveries: i32,
    /// Ack deadline, ms: an unacked delivery is redelivered after this (`BROKER_ACK_DEADLINE_MS`).
    /// Default 30000.
    #[serde(default = "default_ack_deadline_ms")]
    #[x_kube(validation = Rule::new("self >= 100").message("broker.ackDeadlineMs must be at least 100"))]
    pub ack_deadline_ms: i32,
    /// What happens to the volumes when the pipeline is deleted or the broker scaled down
    /// (the StatefulSet's `persistentVolumeClaimRetentionPolicy`). Default: `Retain` for both,
    /// so acknowledged data survives an accidental delete; delete the PVCs by hand
    /// (`kubectl delete pvc -l txpipe.io/pipeline=<name>`).
    #[serde(default)]
    pub pvc_retention: PvcRetention,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        Self {
            replicas: default_broker_replicas(),
            storage: StorageSpec::default(),
            resources: None,
            fsync: true,
            decisions_max_bytes: default_decisions_max_bytes(),
            election_timeout_ms: default_election_ms(),
            heartbeat_ms: default_heartbeat_ms(),
            max_deliveries: default_max_deliveries(),
            ack_deadline_ms: default_ack_deadline_ms(),
            pvc_retention: PvcRetention::default(),
        }
    }
}

fn default_broker_replicas() -> i32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_decisions_max_bytes() -> i64 {
    8 << 30
}
fn default_election_ms() -> i32 {
    300
}
fn default_heartbeat_ms() -> i32 {
    100
}
fn default_max_deliveries() -> i32 {
    5
}
fn default_ack_deadline_ms() -> i32 {
    30_000
}

/// Broker volume settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each replica's volume, a Kubernetes quantity (e.g. `10Gi`). Default `10Gi`. May
    /// grow (the operator patches the PVCs; the storage class must allow expansion) but never
    /// shrink: a smaller size is refused with `Ready=False`, reason `VolumeShrinkRefused`.
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([1-9][0-9]*([.][0-9]+)?|0[.][0-9]*[1-9][0-9]*)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("broker.storage.size must be a positive quantity such as 10Gi"))]
    pub size: String,
    /// StorageClass of the volumes. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

/// `persistentVolumeClaimRetentionPolicy` of the broker StatefulSet.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetention {
    /// `Retain` (default) or `Delete`: the PVCs when the pipeline is deleted.
    #[serde(default = "default_retain")]
    #[x_kube(validation = Rule::new("self in ['Retain', 'Delete']").message("must be Retain or Delete"))]
    pub when_deleted: String,
    /// `Retain` (default) or `Delete`: the PVCs of replicas removed by a scale-down.
    #[serde(default = "default_retain")]
    #[x_kube(validation = Rule::new("self in ['Retain', 'Delete']").message("must be Retain or Delete"))]
    pub when_scaled: String,
}

impl Default for PvcRetention {
    fn default() -> Self {
        Self {
            when_deleted: default_retain(),
            when_scaled: default_retain(),
        }
    }
}

fn default_retain() -> String {
    "Retain".into()
}

/// The worker Deployment.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Worker replicas; the target of the pipeline's `/scale` subresource (`kubectl scale txp`,
    /// HPA, KEDA). With `autoscaling` the HPA owns this value. Default 2.
    #[serde(default = "default_worker_replicas")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("workers.replicas must be between 0 and 1000"))]
    pub replicas: i32,
    /// Horizontal autoscaling. Default: none (fixed `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Container resources. Default: requests and limits cpu 500m, memory 256Mi (the 0.5-CPU
    /// worker the throughput figures were measured with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// In-flight window per worker: deliveries not yet acked (`WORKER_WINDOW`). Default 1000.
    #[serde(default = "default_window")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("workers.window must be between 1 and 100000"))]
    pub window: i32,
    /// Scoring settings, rendered into the pipeline's ConfigMap.
    #[serde(default)]
    pub scoring: ScoringSpec,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        Self {
            replicas: default_worker_replicas(),
            autoscaling: None,
            resources: None,
            window: default_window(),
            scoring: ScoringSpec::default(),
        }
    }
}

fn default_worker_replicas() -> i32 {
    2
}
fn default_window() -> i32 {
    1000
}

/// HorizontalPodAutoscaler (autoscaling/v2) settings for the workers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("workers.autoscaling.minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    /// Lower bound. Default 1.
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("workers.autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Upper bound. Default 10.
    #[serde(default = "default_max_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("workers.autoscaling.maxReplicas must be between 1 and 1000"))]
    pub max_replicas: i32,
    /// Target average CPU utilisation of the workers, percent of their CPU request. Default 70.
    #[serde(default = "default_cpu_target")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("workers.autoscaling.targetCPUUtilizationPercentage must be between 1 and 100"))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: i32,
    /// Optional second metric: pending (stored, not yet delivered) transactions per worker. The
    /// HPA reads the External metric `txpipe_broker_pending_records` (selector
    /// `stream=transactions, pipeline=<name>`), which needs a metrics adapter such as
    /// prometheus-adapter or KEDA (see docs/operator.md). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("workers.autoscaling.targetPendingPerWorker must be at least 1"))]
    pub target_pending_per_worker: Option<i64>,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_cpu_target() -> i32 {
    70
}

/// Decision thresholds of the worker's model stage.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.reviewThreshold) || !has(self.declineThreshold) || self.reviewThreshold <= self.declineThreshold").message("workers.scoring.reviewThreshold must not exceed declineThreshold"))]
pub struct ScoringSpec {
    /// Model of the workers' model stage (`WORKER_MODEL`): `builtin:card` (generated card
    /// transactions), `builtin:ulb-gbt` or `builtin:ulb-lr` (pre-featurised transactions of the
    /// ULB credit-card data, see docs/model-card-ulb.md), or the path of a model file mounted
    /// into the worker pods. Default: `builtin:card`. A vector model scores only transactions
    /// of its feature set; others are nacked and dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['builtin:card', 'builtin:ulb-gbt', 'builtin:ulb-lr'] || self.startsWith('/')").message("workers.scoring.model must be builtin:card, builtin:ulb-gbt, builtin:ulb-lr or an absolute path"))]
    pub model: Option<String>,
    /// Model score at or above which a transaction is sent to review
    /// (`WORKER_REVIEW_THRESHOLD`), 0..1. Default: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("reviewThreshold must be between 0 and 1"))]
    pub review_threshold: Option<f64>,
    /// Model score at or above which a transaction is declined (`WORKER_DECLINE_THRESHOLD`),
    /// 0..1. Default: the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("declineThreshold must be between 0 and 1"))]
    pub decline_threshold: Option<f64>,
    /// Simulated issuer round-trip per transaction, µs (`WORKER_ISSUER_LATENCY_US`). Default 100.
    #[serde(default = "default_issuer_latency_us")]
    #[x_kube(validation = Rule::new("self >= 0").message("issuerLatencyUs must not be negative"))]
    pub issuer_latency_us: i64,
}

fn default_issuer_latency_us() -> i64 {
    100
}

impl Default for ScoringSpec {
    fn default() -> Self {
        Self {
            model: None,
            review_threshold: None,
            decline_threshold: None,
            issuer_latency_us: default_issuer_latency_us(),
        }
    }
}

/// Producer Job: publishes `count` generated transactions, then completes.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProducerSpec {
    /// Transactions to publish.
    #[x_kube(validation = Rule::new("self >= 1").message("producer.count must be at least 1"))]
    pub count: i64,
    /// Publish rate, transactions/s; 0 = as fast as the broker acknowledges. Default 0.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("producer.rate must not be negative"))]
    pub rate: i64,
    /// Generator seed (same seed, same transactions). Default 42.
    #[serde(default = "default_seed")]
    pub seed: i64,
}

fn default_seed() -> i64 {
    42
}

/// Prometheus integration.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a `monitoring.coreos.com/v1` ServiceMonitor for brokers and workers when that
    /// CRD exists in the cluster (skipped with a `Degraded` reason when it does not).
    /// Default false. Pods carry `prometheus.io/scrape` annotations either way.
    #[serde(default)]
    pub service_monitor: bool,
}

/// Where the certificates come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (today's default).
    Off,
    /// The operator's own CA issues and renews every certificate (Secrets `<n>-ca`,
    /// `<n>-<identity>-tls`).
    Managed,
    /// cert-manager issues them from `issuerRef` (`cert-manager.io/v1` Certificates).
    CertManager,
}

/// TLS settings: mutual TLS on every broker port, a certificate per identity (broker `<i>`,
/// worker, producer, audit, operator) whose URI SAN `spiffe://txpipe/<role>[/<instance>]` is its
/// principal.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'certManager' || has(self.issuerRef)").message("tls.issuerRef is required when tls.mode is certManager"),
    validation = Rule::new("self.caValidityHours >= 2 * self.certValidityHours").message("tls.caValidityHours must be at least twice certValidityHours")
)]
pub struct TlsSpec {
    /// `off` (plaintext), `managed` (the operator's CA) or `certManager` (cert-manager
    /// Certificates from `issuerRef`). Default `off`.
    #[serde(default = "default_tls_mode")]
    #[x_kube(validation = Rule::new("self in ['off', 'managed', 'certManager']").message("tls.mode must be off, managed or certManager"))]
    pub mode: String,
    /// Validity of each issued certificate, hours. Default 2160 (90 days).
    #[serde(default = "default_cert_validity_hours")]
    #[x_kube(validation = Rule::new("self >= 2 && self <= 87600").message("tls.certValidityHours must be between 2 and 87600"))]
    pub cert_validity_hours: i64,
    /// Validity of the managed CA, hours (`managed` only). Default 43800 (5 years). The CA is
    /// not rotated by the operator (docs/security.md).
    #[serde(default = "default_ca_validity_hours")]
    #[x_kube(validation = Rule::new("self >= 4 && self <= 876000").message("tls.caValidityHours must be between 4 and 876000"))]
    pub ca_validity_hours: i64,
    /// Renew a certificate once less than this percentage of its validity remains (both
    /// modes; cert-manager's `renewBeforePercentage`). Default 33.
    #[serde(default = "default_renew_before_percentage")]
    #[x_kube(validation = Rule::new("self >= 5 && self <= 90").message("tls.renewBeforePercentage must be between 5 and 90"))]
    pub renew_before_percentage: i32,
    /// cert-manager issuer (`certManager` only). It must put `ca.crt` into the Secrets it
    /// writes (a CA or Vault issuer does; ACME does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

impl TlsSpec {
    /// The mode; an unknown string (refused by the CEL rule) counts as `Off`.
    pub fn mode(&self) -> TlsMode {
        match self.mode.as_str() {
            "managed" => TlsMode::Managed,
            "certManager" => TlsMode::CertManager,
            _ => TlsMode::Off,
        }
    }
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: default_tls_mode(),
            cert_validity_hours: default_cert_validity_hours(),
            ca_validity_hours: default_ca_validity_hours(),
            renew_before_percentage: default_renew_before_percentage(),
            issuer_ref: None,
        }
    }
}

fn default_tls_mode() -> String {
    "off".into()
}
fn default_cert_validity_hours() -> i64 {
    2160
}
fn default_ca_validity_hours() -> i64 {
    43_800
}
fn default_renew_before_percentage() -> i32 {
    33
}

/// A cert-manager `Issuer` or `ClusterIssuer`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Issuer name.
    #[x_kube(validation = Rule::new("self.size() > 0").message("tls.issuerRef.name must not be empty"))]
    pub name: String,
    /// `Issuer` (default, in the pipeline's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[x_kube(validation = Rule::new("self in ['Issuer', 'ClusterIssuer']").message("tls.issuerRef.kind must be Issuer or ClusterIssuer"))]
    pub kind: String,
    /// API group of the issuer. Default `cert-manager.io`.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Observed state, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactionPipelineStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`; merged by `type` (one entry per type).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Broker replicas.
    #[serde(default)]
    pub broker: BrokerStatus,
    /// Worker replicas (`replicas` and `selector` back the `/scale` subresource).
    #[serde(default)]
    pub workers: WorkersStatus,
    /// Certificates, when `spec.tls` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// TLS part of the status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// `managed` or `certManager`.
    #[serde(default)]
    pub mode: String,
    /// Earliest expiry of the pipeline's certificates (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator renews next (RFC 3339; `managed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
    /// Expiry of the managed CA (RFC 3339; `managed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
}

/// Broker part of the status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// Replicas the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Raft voters (peer addresses) as last reported by the brokers.
    #[serde(default)]
    pub voters: Vec<String>,
    /// Pod leading the `transactions` stream's Raft group, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// `ready/desired`, for `kubectl get txp`.
    #[serde(default)]
    pub summary: String,
}

/// Worker part of the status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkersStatus {
    /// Replicas of the worker Deployment (the `/scale` subresource's status.replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Ready worker pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods, serialized (`/scale` status.selector, used by HPA).
    #[serde(default)]
    pub selector: String,
    /// `ready/desired`, for `kubectl get txp`.
    #[serde(default)]
    pub summary: String,
}
