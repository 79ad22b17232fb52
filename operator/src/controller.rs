//! The reconcile loop of `TransactionPipeline`.
//!
//! [`reconcile`] reads as its phases, each a function of this module (the certificates phase
//! lives in `tls_phase.rs`):
//! 1. **observe**: the live broker StatefulSet, its PVCs and pods, every broker's
//!    `/status.json` and whether the ServiceMonitor CRD exists (to apply, or clean up, a
//!    ServiceMonitor); then decide the broker replicas of this step
//!    ([`crate::membership::membership_step`]: Raft membership changes one member at a time);
//! 2. **certificates** (with `spec.tls` only, before anything mounts them): issue or renew the
//!    managed CA's certificates into Secrets, or apply cert-manager Certificates; their hash
//!    goes on the pod templates, so a renewal rolls the pods through phase 6 (see
//!    [`crate::certs`]);
//! 3. **apply children**: render every child ([`crate::render`]) and apply it server-side
//!    (field manager [`render::FIELD_MANAGER`], forced); an invalid spec (e.g. a volume shrink)
//!    applies nothing and reports `Ready=False` with the reason, plus a Warning Event;
//! 4. **grow volumes**: PVCs whose requested size is below `spec.broker.storage.size`;
//! 5. **step membership**: `POST /cluster/voters` when the plan says so;
//! 6. **roll one broker**: delete at most one broker pod whose revision is outdated (the
//!    StatefulSet uses `OnDelete`), only when every broker is ready and caught up, followers
//!    first and leaders last ([`crate::rolling::restart_step`]);
//! 7. **write status**: conditions ([`crate::conditions`], merged by type) through the status
//!    subresource.
//!
//! Deleting a pipeline needs no finalizer: every child carries a controller ownerReference, so
//! the garbage collector deletes them; the volumes follow the StatefulSet's
//! `persistentVolumeClaimRetentionPolicy` (`spec.broker.pvcRetention`, default `Retain`), which
//! the StatefulSet controller applies. There is nothing outside the cluster to clean up.
//!
//! The decisions live in pure modules with their unit tests ([`crate::membership`],
//! [`crate::rolling`], [`crate::conditions`]; re-exported here); the I/O around them is tested
//! against a mocked API server in `tests/reconcile.rs`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker_admin::BrokerAdmin;
pub use crate::conditions::{
    CERTIFICATES_READY, CertsCondition, Observed, WorkersObservation, certificates_condition,
    desired_conditions, invalid_spec_conditions, merge_conditions,
};
use crate::crd::{TransactionPipeline, TransactionPipelineStatus};
use crate::membership::leader_views;
pub use crate::membership::{
    BrokerObservation, MembershipPlan, MembershipStep, PodState, membership_step,
};
use crate::render::{self, Children, FIELD_MANAGER, PIPELINE_LABEL, RenderContext};
pub use crate::rolling::{MAX_APPLY_LAG, RestartStep, restart_step};
use crate::telemetry::Metrics;
use crate::{Error, Result};

/// Name of the Prometheus-operator CRD whose presence enables the ServiceMonitor.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";
/// Label the StatefulSet controller puts on each pod: the revision the pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Stream whose Raft leader is reported as `status.broker.leader`.
pub const LEADER_STREAM: &str = "transactions";

/// Requeue after a successful reconcile when nothing is in progress: 5 min.
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue while something is in progress (pods starting, scaling): 30 s.
pub const REQUEUE_PROGRESSING: Duration = Duration::from_secs(30);
/// Requeue after an action whose effect must be observed soon (voters posted, pod deleted):
/// 5 s.
pub const REQUEUE_SOON: Duration = Duration::from_secs(5);
/// Requeue for an invalid spec (a spec change triggers a reconcile anyway): 5 min.
pub const REQUEUE_INVALID: Duration = Duration::from_secs(300);
/// Requeue after a failed reconcile: 5 s.
pub const ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Requeue after a write conflict (HTTP 409): 1 s.
pub const CONFLICT_BACKOFF: Duration = Duration::from_secs(1);

/// Shared state of the reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The brokers' admin API.
    pub admin: Arc<dyn BrokerAdmin>,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Publishes Kubernetes Events (`events.k8s.io/v1`) about pipelines.
    pub recorder: Recorder,
    /// Wall clock, Unix seconds (certificate issuance and renewal; tests fix it).
    pub clock: Clock,
}

/// A wall clock in Unix seconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| k8s_openapi::jiff::Timestamp::now().as_second())
}

impl Context {
    /// A context whose Events are reported by controller `txpipe-operator`, instance
    /// `instance` (e.g. the operator's pod name; default: the controller name).
    pub fn new(
        client: Client,
        admin: Arc<dyn BrokerAdmin>,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            admin,
            metrics,
            recorder,
            clock: system_clock(),
        }
    }

    /// The same context with another clock (Unix seconds).
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------------------------

/// Reconciles one pipeline (see the module docs). Records the reconcile in [`Context::metrics`].
///
/// Errors: Kubernetes API failures ([`Error::Kube`]) and missing metadata; an invalid spec is
/// not an error (it is reported in the status and requeued after [`REQUEUE_INVALID`]), nor is
/// an unreachable broker (the step waits).
pub async fn reconcile(p: Arc<TransactionPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx.metrics.start_reconcile();
    let result = reconcile_inner(&p, &ctx).await;
    timer.finish(&result);
    result
}

/// Requeue policy after a failed reconcile: [`CONFLICT_BACKOFF`] for a 409 conflict, else
/// [`ERROR_BACKOFF`]. Logs the error.
pub fn error_policy(p: Arc<TransactionPipeline>, err: &Error, _ctx: Arc<Context>) -> Action {
    let conflict = matches!(err, Error::Kube(kube::Error::Api(s)) if s.is_conflict());
    tracing::warn!(
        pipeline = %p.name_any(),
        namespace = p.namespace().unwrap_or_default(),
        error = %err,
        conflict,
        "reconcile failed"
    );
    Action::requeue(if conflict {
        CONFLICT_BACKOFF
    } else {
        ERROR_BACKOFF
    })
}

/// Runs the controller until `shutdown` completes (then finishes in-flight reconciles).
///
/// Watches pipelines in `namespace` (all namespaces when `None`), the children it owns
/// (StatefulSet, Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler, ConfigMap,
/// Job) and broker pods (mapped to their pipeline by the `txpipe.io/pipeline` label).
///
/// Returns `Ok` once stopped; the CRD check happens before, in [`crate::run::run`] (a missing
/// CRD would otherwise only show as watch errors in the log).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let pipelines: Api<TransactionPipeline> = scoped_api(&client, namespace.as_deref());
    let owned =
        || watcher::Config::default().labels("app.kubernetes.io/managed-by=txpipe-operator");
    let pods = watcher::Config::default()
        .labels("app.kubernetes.io/name=txpipe,app.kubernetes.io/component=broker");
    let ns = namespace.as_deref();
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        "starting the TransactionPipeline controller"
    );
    Controller::new(pipelines, watcher::Config::default().any_semantic())
        .owns(scoped_api::<StatefulSet>(&client, ns), owned())
        .owns(scoped_api::<Deployment>(&client, ns), owned())
        .owns(scoped_api::<Service>(&client, ns), owned())
        .owns(scoped_api::<PodDisruptionBudget>(&client, ns), owned())
        .owns(scoped_api::<HorizontalPodAutoscaler>(&client, ns), owned())
        .owns(scoped_api::<ConfigMap>(&client, ns), owned())
        .owns(scoped_api::<Job>(&client, ns), owned())
        .watches(scoped_api::<Pod>(&client, ns), pods, |pod: Pod| {
            let pipeline = pod.labels().get(PIPELINE_LABEL).cloned();
            let namespace = pod.namespace();
            pipeline.map(|name| {
                let r = ObjectRef::<TransactionPipeline>::new(&name);
                match namespace {
                    Some(ns) => r.within(&ns),
                    None => r,
                }
            })
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, action)) => tracing::debug!(pipeline = %obj, ?action, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    Ok(())
}

fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Server-side apply of one child (forced, field manager [`FIELD_MANAGER`]); returns the
/// object as stored (with its status).
pub(crate) async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// Deletes `name` if it exists and is controlled by the pipeline `owner_uid` (a child the
/// current spec no longer wants, e.g. the HPA once autoscaling is removed).
async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let owned = obj
        .owner_references()
        .iter()
        .any(|o| o.uid == owner_uid && o.controller == Some(true));
    if !owned {
        return Ok(false);
    }
    let dp = DeleteParams {
        preconditions: obj.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn publish(
    ctx: &Context,
    p: &TransactionPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &p.object_ref(&())).await {
        tracing::warn!(pipeline = %p.name_any(), reason, error = %e, "could not publish an Event");
    }
}

fn pvc_size(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.clone())
}

fn template_size(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .iter()
        .find(|t| t.metadata.name.as_deref() == Some("data"))
        .and_then(pvc_size)
}

/// The largest of the given sizes (by quantity value; unparsable ones are ignored).
fn largest_size(sizes: impl IntoIterator<Item = String>) -> Option<String> {
    sizes
        .into_iter()
        .filter_map(|s| render::parse_quantity(&s).map(|v| (v, s)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, s)| s)
}

fn pod_state(pod: &Pod) -> PodState {
    let ready = pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    PodState {
        ready,
        revision: pod.labels().get(REVISION_LABEL).cloned(),
        uid: pod.uid(),
    }
}

fn broker_selector(p: &TransactionPipeline) -> String {
    render::selector_labels(p, "broker")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Lists the broker pods and asks each running one for its status (concurrently).
async fn observe_brokers(
    ctx: &Context,
    p: &TransactionPipeline,
    pods_api: &Api<Pod>,
    sts_name: &str,
    replicas: i32,
) -> Result<Vec<BrokerObservation>> {
    if replicas <= 0 {
        return Ok(Vec::new());
    }
    let pods = pods_api
        .list(&ListParams::default().labels(&broker_selector(p)))
        .await?;
    let mut by_ordinal: BTreeMap<i32, PodState> = BTreeMap::new();
    for pod in &pods.items {
        let name = pod.name_any();
        if let Some(o) = name
            .strip_prefix(sts_name)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<i32>().ok())
        {
            by_ordinal.insert(o, pod_state(pod));
        }
    }
    let addrs = render::broker_admin_addrs(p, replicas);
    let queries = (0..replicas).map(|o| {
        let pod = by_ordinal.get(&o).cloned();
        let addr = addrs.get(o as usize).cloned();
        let admin = Arc::clone(&ctx.admin);
        async move {
            let status = match (&pod, addr) {
                (Some(_), Some(addr)) => match admin.status(&addr).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::debug!(broker = o, error = %e, "broker status unavailable");
                        None
                    }
                },
                _ => None,
            };
            BrokerObservation {
                ordinal: o,
                pod,
                status,
            }
        }
    });
    Ok(futures::future::join_all(queries).await)
}

/// Posts the voters to every broker (each changes the groups it leads). Returns whether some
/// group changed and the failures (unreachable brokers, refused requests, per-group errors).
async fn post_voters(
    ctx: &Context,
    p: &TransactionPipeline,
    ordinals: &[i32],
    replicas: i32,
) -> (bool, Vec<String>) {
    let peers = render::broker_peer_addrs(p, replicas);
    let voters: Vec<String> = ordinals
        .iter()
        .filter_map(|o| peers.get(*o as usize).cloned())
        .collect();
    let addrs = render::broker_admin_addrs(p, replicas);
    let calls = addrs.iter().map(|a| ctx.admin.set_voters(a, &voters));
    let results = futures::future::join_all(calls).await;
    let mut changed = false;
    let mut errors = Vec::new();
    for (addr, r) in addrs.iter().zip(results) {
        match r {
            Ok(outcome) => {
                for (stream, what) in outcome {
                    if what == "changed" {
                        changed = true;
                    } else if what.starts_with("error") {
                        errors.push(format!("{addr} {stream}: {what}"));
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    (changed, errors)
}

/// Voter peer addresses and the leader pod of [`LEADER_STREAM`] (or the first stream).
fn broker_voters_and_leader(
    p: &TransactionPipeline,
    replicas: i32,
    brokers: &[BrokerObservation],
) -> (Vec<String>, Option<String>) {
    let views = leader_views(brokers);
    let view = views
        .get(LEADER_STREAM)
        .copied()
        .flatten()
        .or_else(|| views.values().find_map(|v| *v));
    let Some((leader, r)) = view else {
        return (Vec::new(), None);
    };
    let peers = render::broker_peer_addrs(p, replicas.max(brokers.len() as i32));
    let voters = r
        .voters
        .iter()
        .map(|id| {
            brokers
                .iter()
                .find(|b| b.node_id() == Some(*id))
                .and_then(|b| peers.get(b.ordinal as usize).cloned())
                .unwrap_or_else(|| format!("node-{id}"))
        })
        .collect();
    (voters, Some(render::broker_pod_name(p, leader)))
}

async fn patch_status(
    api: &Api<TransactionPipeline>,
    name: &str,
    status: &TransactionPipelineStatus,
    only_conditions: bool,
) -> Result<()> {
    let mut s = serde_json::to_value(status)?;
    if only_conditions {
        // Keep the last known replica counts; report only the refusal.
        s = serde_json::json!({
            "observedGeneration": status.observed_generation,
            "conditions": status.conditions,
        });
    } else {
        // A merge patch must name a field to clear it.
        if status.broker.leader.is_none()
            && let Some(b) = s.get_mut("broker").and_then(|b| b.as_object_mut())
        {
            b.insert("leader".into(), serde_json::Value::Null);
        }
        if status.tls.is_none()
            && let Some(o) = s.as_object_mut()
        {
            o.insert("tls".into(), serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": s });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(name, &pp, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// One pipeline's identity and the context, for the phases of a reconcile.
pub(crate) struct Scope<'a> {
    pub(crate) p: &'a TransactionPipeline,
    pub(crate) ctx: &'a Context,
    pub(crate) ns: String,
    pub(crate) name: String,
    uid: String,
}

impl<'a> Scope<'a> {
    fn new(p: &'a TransactionPipeline, ctx: &'a Context) -> Result<Self> {
        Ok(Self {
            p,
            ctx,
            ns: p
                .namespace()
                .ok_or(Error::MissingField("metadata.namespace"))?,
            name: p
                .metadata
                .name
                .clone()
                .ok_or(Error::MissingField("metadata.name"))?,
            uid: p.uid().ok_or(Error::MissingField("metadata.uid"))?,
        })
    }

    /// The namespaced API of `K` in the pipeline's namespace.
    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn old_conditions(&self) -> Vec<Condition> {
        self.p
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }

    pub(crate) async fn publish(&self, type_: EventType, reason: &str, action: &str, note: String) {
        publish(self.ctx, self.p, type_, reason, action, note).await;
    }
}

/// What a reconcile read before acting.
struct Observation {
    /// The live broker StatefulSet.
    live_sts: Option<StatefulSet>,
    /// Its `spec.replicas` (`None` without a StatefulSet).
    current: Option<i32>,
    /// The ServiceMonitor CRD is installed (and readable).
    service_monitor_available: bool,
    /// The broker PVCs that exist, ordinals below `current`.
    pvcs: Vec<PersistentVolumeClaim>,
    /// Largest volume size of the live claim template and PVCs.
    existing_volume_size: Option<String>,
    /// One observation per broker ordinal below `current`.
    brokers: Vec<BrokerObservation>,
}

/// The children as stored after the apply, and the degradations found while applying.
struct Applied {
    sts: StatefulSet,
    deployment: Deployment,
    degraded: Vec<(String, String)>,
}

/// observe → certificates → apply children → grow volumes → step membership → roll one broker
/// → write status.
async fn reconcile_inner(p: &TransactionPipeline, ctx: &Context) -> Result<Action> {
    let s = Scope::new(p, ctx)?;
    let obs = observe(&s).await?;
    let plan = membership_step(p.spec.broker.replicas, obs.current, &obs.brokers);
    let certs = crate::tls_phase::ensure_certificates(&s).await?;
    let Some(children) = render_children(&s, &obs, &plan, &certs).await? else {
        return Ok(Action::requeue(REQUEUE_INVALID));
    };
    let applied = apply_children(&s, &children, &plan, obs.service_monitor_available).await?;
    grow_volumes(&s, &obs.pvcs).await?;
    let mut soon = step_membership(&s, &plan).await;
    let restart = roll_one_broker(&s, &plan, &applied.sts, &obs.brokers).await?;
    soon |= matches!(restart, Some(RestartStep::Restart { .. }));
    let renew_in = certs.renew_in;
    let progressing = write_status(&s, &plan, &obs.brokers, applied, restart, certs).await?;
    let requeue = if soon {
        REQUEUE_SOON
    } else if progressing {
        REQUEUE_PROGRESSING
    } else {
        REQUEUE_READY
    };
    // Come back when the next certificate is due for renewal.
    Ok(Action::requeue(renew_in.map_or(requeue, |r| {
        requeue.min(r.max(Duration::from_secs(1)))
    })))
}

/// Phase 1: the live StatefulSet, whether the ServiceMonitor CRD exists, the PVCs and every
/// broker's pod and `/status.json`.
async fn observe(s: &Scope<'_>) -> Result<Observation> {
    let p = s.p;
    let sts_name = render::broker_statefulset_name(p);
    let live_sts = s.api::<StatefulSet>().get_opt(&sts_name).await?;
    let current = live_sts
        .as_ref()
        .map(|s| s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1));
    let crd_api: Api<CustomResourceDefinition> = Api::all(s.ctx.client.clone());
    // In namespace-scoped mode the operator may not read CRDs (a cluster-scoped kind): a 403
    // means "cannot tell", treated as not installed (the condition says so if it was asked for).
    let service_monitor_available = match crd_api.get_opt(SERVICE_MONITOR_CRD).await {
        Ok(found) => found.is_some(),
        Err(kube::Error::Api(e)) if e.code == 403 => false,
        Err(e) => return Err(e.into()),
    };
    let pvc_api = s.api::<PersistentVolumeClaim>();
    let mut pvcs: Vec<PersistentVolumeClaim> = Vec::new();
    for o in 0..current.unwrap_or(0) {
        if let Some(pvc) = pvc_api.get_opt(&render::broker_pvc_name(p, o)).await? {
            pvcs.push(pvc);
        }
    }
    let existing_volume_size = largest_size(
        live_sts
            .as_ref()
            .and_then(template_size)
            .into_iter()
            .chain(pvcs.iter().filter_map(pvc_size)),
    );
    let brokers = observe_brokers(s.ctx, p, &s.api(), &sts_name, current.unwrap_or(0)).await?;
    Ok(Observation {
        live_sts,
        current,
        service_monitor_available,
        pvcs,
        existing_volume_size,
        brokers,
    })
}

/// Renders every child for the plan's broker replicas. An invalid spec is reported (status
/// with the reason, Warning Event) and gives `None`: nothing is applied.
async fn render_children(
    s: &Scope<'_>,
    obs: &Observation,
    plan: &MembershipPlan,
    certs: &crate::tls_phase::CertsOutcome,
) -> Result<Option<Children>> {
    let render_ctx = RenderContext {
        service_monitor_available: obs.service_monitor_available,
        existing_volume_size: obs.existing_volume_size.clone(),
        broker_replicas: Some(plan.replicas),
        cert_hashes: certs.hashes.clone(),
        tls_secrets_preview: false,
    };
    let mut children = match render::render(s.p, &render_ctx) {
        Ok(c) => c,
        Err(Error::InvalidSpec { reason, message }) => {
            report_invalid_spec(s, &reason, &message).await?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if let (Some(live), Some(spec)) = (
        obs.live_sts.as_ref().and_then(|s| s.spec.as_ref()),
        children.broker.spec.as_mut(),
    ) {
        // volumeClaimTemplates are immutable: apply the live ones (volumes grow through their
        // PVCs, in `grow_volumes`).
        spec.volume_claim_templates = live.volume_claim_templates.clone().map(|ts| {
            ts.into_iter()
                .map(|mut t| {
                    t.status = None;
                    t
                })
                .collect()
        });
    }
    Ok(Some(children))
}

/// `Ready=False` with the reason (only the conditions are written) and a Warning Event.
async fn report_invalid_spec(s: &Scope<'_>, reason: &str, message: &str) -> Result<()> {
    tracing::warn!(pipeline = %s.name, namespace = %s.ns, %reason, %message, "invalid spec: nothing applied");
    let generation = s.p.metadata.generation;
    let status = TransactionPipelineStatus {
        observed_generation: generation,
        conditions: merge_conditions(
            &s.old_conditions(),
            invalid_spec_conditions(generation, reason, message),
        ),
        ..Default::default()
    };
    patch_status(&s.api(), &s.name, &status, true).await?;
    let event_reason = if reason == "VolumeShrinkRefused" {
        "VolumeShrinkRefused"
    } else {
        "InvalidSpec"
    };
    s.publish(
        EventType::Warning,
        event_reason,
        "Validate",
        format!("{reason}: {message}"),
    )
    .await;
    Ok(())
}

/// Phase 3: server-side applies every child in dependency order and deletes the optional ones
/// the spec no longer wants (HPA, ServiceMonitor, producer Job).
async fn apply_children(
    s: &Scope<'_>,
    children: &Children,
    plan: &MembershipPlan,
    service_monitor_available: bool,
) -> Result<Applied> {
    let p = s.p;
    let mut degraded: Vec<(String, String)> = Vec::new();
    if p.spec.monitoring.service_monitor && !service_monitor_available {
        degraded.push((
            "ServiceMonitorUnavailable".into(),
            format!("spec.monitoring.serviceMonitor is set but the CRD {SERVICE_MONITOR_CRD} is not installed (or, in namespace-scoped mode, cannot be read)"),
        ));
    }
    apply(&s.api::<ConfigMap>(), &children.config_map).await?;
    let svc_api: Api<Service> = s.api();
    apply(&svc_api, &children.broker_headless).await?;
    apply(&svc_api, &children.broker_client).await?;
    let sts = apply(&s.api::<StatefulSet>(), &children.broker).await?;
    if let MembershipStep::Scale { from, to } = &plan.step {
        s.publish(
            EventType::Normal,
            "Scaling",
            "Scale",
            format!(
                "scaling brokers {from} -> {to} (target {}), one Raft member at a time",
                p.spec.broker.replicas
            ),
        )
        .await;
    }
    let pdb_api: Api<PodDisruptionBudget> = s.api();
    apply(&pdb_api, &children.broker_pdb).await?;
    let deployment = apply(&s.api::<Deployment>(), &children.worker).await?;
    apply(&pdb_api, &children.worker_pdb).await?;
    apply_or_delete(
        &s.api::<HorizontalPodAutoscaler>(),
        children.worker_hpa.as_ref(),
        &render::worker_hpa_name(p),
        &s.uid,
    )
    .await?;
    if service_monitor_available {
        let sm_api: Api<DynamicObject> = Api::namespaced_with(
            s.ctx.client.clone(),
            &s.ns,
            &render::service_monitor_api_resource(),
        );
        apply_or_delete(
            &sm_api,
            children.service_monitor.as_ref(),
            &render::service_monitor_name(p),
            &s.uid,
        )
        .await?;
    }
    if let Some(d) = apply_producer(s, children.producer.as_ref()).await? {
        degraded.push(d);
    }
    Ok(Applied {
        sts,
        deployment,
        degraded,
    })
}

/// Applies `obj` when the spec wants it, else deletes `name` if the pipeline owns it.
async fn apply_or_delete<K>(
    api: &Api<K>,
    obj: Option<&K>,
    name: &str,
    owner_uid: &str,
) -> Result<()>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    match obj {
        Some(obj) => {
            apply(api, obj).await?;
        }
        None => {
            delete_if_owned(api, name, owner_uid).await?;
        }
    }
    Ok(())
}

/// Applies the producer Job; a template the API server refuses to change (422: a Job's
/// template is immutable) is a degradation, not an error.
async fn apply_producer(s: &Scope<'_>, job: Option<&Job>) -> Result<Option<(String, String)>> {
    let job_api: Api<Job> = s.api();
    let Some(job) = job else {
        delete_if_owned(&job_api, &render::producer_job_name(s.p), &s.uid).await?;
        return Ok(None);
    };
    match apply(&job_api, job).await {
        Ok(_) => Ok(None),
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 => Ok(Some((
            "ProducerJobImmutable".into(),
            format!(
                "the producer Job's template cannot change ({}); delete Job {} to run the new spec",
                e.message,
                job.name_any()
            ),
        ))),
        Err(e) => Err(e),
    }
}

/// Phase 4: requests `spec.broker.storage.size` for every PVC that is smaller.
async fn grow_volumes(s: &Scope<'_>, pvcs: &[PersistentVolumeClaim]) -> Result<()> {
    let size = &s.p.spec.broker.storage.size;
    let Some(wanted) = render::parse_quantity(size) else {
        return Ok(());
    };
    let pvc_api: Api<PersistentVolumeClaim> = s.api();
    let mut grown = Vec::new();
    for pvc in pvcs {
        let smaller = pvc_size(pvc)
            .and_then(|s| render::parse_quantity(&s))
            .is_some_and(|have| have < wanted);
        if smaller {
            let patch = serde_json::json!({
                "spec": {"resources": {"requests": {"storage": size}}}
            });
            pvc_api
                .patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            grown.push(pvc.name_any());
        }
    }
    if !grown.is_empty() {
        s.publish(
            EventType::Normal,
            "VolumeExpansion",
            "Expand",
            format!("requested {size} for {}", grown.join(", ")),
        )
        .await;
    }
    Ok(())
}

/// Phase 5: posts the voters when the plan says so. Returns whether the effect must be
/// observed soon (a voter change was attempted).
async fn step_membership(s: &Scope<'_>, plan: &MembershipPlan) -> bool {
    let MembershipStep::SetVoters { ordinals } = &plan.step else {
        return false;
    };
    let (changed, errors) = post_voters(s.ctx, s.p, ordinals, plan.replicas).await;
    if changed {
        s.publish(
            EventType::Normal,
            "MembershipChanged",
            "SetVoters",
            format!("Raft voters set to brokers {ordinals:?}"),
        )
        .await;
    }
    if !errors.is_empty() {
        // Expected while a new broker has not joined yet; retried shortly.
        tracing::info!(pipeline = %s.name, errors = %errors.join("; "), "setting the voters did not complete everywhere; retrying");
    }
    true
}

/// Phase 6: once membership is steady, deletes at most one outdated broker pod
/// ([`restart_step`]). `None` when not evaluated (a membership change is under way).
async fn roll_one_broker(
    s: &Scope<'_>,
    plan: &MembershipPlan,
    sts: &StatefulSet,
    brokers: &[BrokerObservation],
) -> Result<Option<RestartStep>> {
    if plan.step != MembershipStep::Steady {
        return Ok(None);
    }
    let sts_status = sts.status.as_ref();
    let observed = sts_status.and_then(|s| s.observed_generation) >= sts.metadata.generation;
    let update_revision = sts_status
        .filter(|_| observed)
        .and_then(|s| s.update_revision.as_deref());
    let step = restart_step(update_revision, plan.replicas, brokers, MAX_APPLY_LAG);
    if let RestartStep::Restart { ordinal } = &step {
        let pod_name = render::broker_pod_name(s.p, *ordinal);
        let uid = brokers
            .iter()
            .find(|b| b.ordinal == *ordinal)
            .and_then(|b| b.pod.as_ref())
            .and_then(|pod| pod.uid.clone());
        let dp = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        s.api::<Pod>().delete(&pod_name, &dp).await?;
        s.publish(
            EventType::Normal,
            "RollingRestart",
            "DeletePod",
            format!(
                "restarting {pod_name} on StatefulSet revision {}",
                update_revision.unwrap_or("?")
            ),
        )
        .await;
    }
    Ok(Some(step))
}

/// Phase 7: conditions and replica counts through the status subresource. Returns whether
/// `Progressing` is True.
async fn write_status(
    s: &Scope<'_>,
    plan: &MembershipPlan,
    brokers: &[BrokerObservation],
    applied: Applied,
    restart: Option<RestartStep>,
    certs: crate::tls_phase::CertsOutcome,
) -> Result<bool> {
    let p = s.p;
    let Applied {
        sts,
        deployment,
        mut degraded,
    } = applied;
    degraded.extend(certs.degraded);
    let sts_status = sts.status.unwrap_or_default();
    let (voters, leader) = broker_voters_and_leader(p, plan.replicas, brokers);
    let desired_brokers = p.spec.broker.replicas;
    let desired_workers = p.spec.workers.replicas;
    let workers = workers_observation(&deployment, desired_workers);
    let ready_brokers = sts_status.ready_replicas.unwrap_or(0);
    let observed = Observed {
        generation: p.metadata.generation,
        desired_brokers,
        ready_brokers,
        membership: plan.step.clone(),
        restart,
        desired_workers,
        workers: workers.clone(),
        degraded,
    };
    let mut wanted = desired_conditions(&observed);
    let old = s.old_conditions();
    if let Some(c) = certificates_condition(
        certs.condition.as_ref(),
        old.iter().any(|c| c.type_ == CERTIFICATES_READY),
        p.metadata.generation,
    ) {
        wanted.push(c);
    }
    let conditions = merge_conditions(&old, wanted);
    let progressing = conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.status == "True");
    let status = TransactionPipelineStatus {
        observed_generation: p.metadata.generation,
        conditions,
        broker: crate::crd::BrokerStatus {
            replicas: sts_status.replicas,
            ready_replicas: ready_brokers,
            voters,
            leader,
            summary: format!("{ready_brokers}/{desired_brokers}"),
        },
        workers: crate::crd::WorkersStatus {
            replicas: workers.replicas,
            ready_replicas: workers.ready,
            selector: render::worker_selector(p),
            summary: format!("{}/{desired_workers}", workers.ready),
        },
        tls: certs.status,
    };
    patch_status(&s.api(), &s.name, &status, false).await?;
    Ok(progressing)
}

/// The worker Deployment's replicas, ready pods and whether a rollout is under way.
fn workers_observation(deployment: &Deployment, desired: i32) -> WorkersObservation {
    let st = deployment.status.clone().unwrap_or_default();
    WorkersObservation {
        replicas: st.replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        rolling: st.observed_generation < deployment.metadata.generation
            || st.updated_replicas.unwrap_or(0) < desired
            || st.replicas.unwrap_or(0) > desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_size_compares_quantities() {
        assert_eq!(
            largest_size(["10Gi".into(), "20Gi".into(), "bad".into()]),
            Some("20Gi".into())
        );
        assert_eq!(largest_size(Vec::<String>::new()), None);
    }
}
