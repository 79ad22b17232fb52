//! The reconcile loop of `TransactionPipeline`.
//!
//! One reconcile:
//! 1. observes the live broker StatefulSet, its PVCs and pods, every broker's `/status.json`
//!    and whether the ServiceMonitor CRD exists (to apply, or clean up, a ServiceMonitor);
//! 2. decides the broker replicas for this step ([`membership_step`]): Raft membership changes
//!    one member at a time. Grow: once every broker is ready and the voters are exactly the
//!    current pods, render one more replica; once the new pod is ready (it joined as a learner),
//!    `POST /cluster/voters` with every pod. Shrink: first `POST /cluster/voters` without the
//!    highest ordinal, and only once no group counts it as a voter, render one replica less;
//! 3. renders every child ([`crate::render`]) and applies it server-side (field manager
//!    [`render::FIELD_MANAGER`], forced); an invalid spec (e.g. a volume shrink) applies
//!    nothing and reports `Ready=False` with the reason, plus a Warning Event;
//! 4. grows PVCs whose requested size is below `spec.broker.storage.size`;
//! 5. rolls broker pods whose revision is outdated (the StatefulSet uses `OnDelete`), one at a
//!    time, only when every broker is ready and caught up, followers first and leaders last
//!    ([`restart_step`]);
//! 6. writes the status (conditions merged by type, see [`merge_conditions`]) through the status
//!    subresource.
//!
//! Deleting a pipeline needs no finalizer: every child carries a controller ownerReference, so
//! the garbage collector deletes them; the volumes follow the StatefulSet's
//! `persistentVolumeClaimRetentionPolicy` (`spec.broker.pvcRetention`, default `Retain`), which
//! the StatefulSet controller applies. There is nothing outside the cluster to clean up.
//!
//! The decisions ([`membership_step`], [`restart_step`], [`desired_conditions`],
//! [`merge_conditions`]) are pure functions, tested in this module; the I/O around them is
//! tested against a mocked API server in `tests/reconcile.rs`.

use std::collections::{BTreeMap, BTreeSet};
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker_admin::{BrokerAdmin, BrokerNodeStatus, StreamRaftStatus};
use crate::crd::{TransactionPipeline, TransactionPipelineStatus};
use crate::render::{self, FIELD_MANAGER, PIPELINE_LABEL, RenderContext};
use crate::telemetry::Metrics;
use crate::{Error, Result};

/// Name of the Prometheus-operator CRD whose presence enables the ServiceMonitor.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";
/// Label the StatefulSet controller puts on each pod: the revision the pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// A broker counts as caught up when, for every stream, its applied index is at most this
/// many entries behind the leader's commit index.
pub const MAX_APPLY_LAG: u64 = 100;
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
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------------------------

/// A broker pod as the controller sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    /// Pod condition `Ready=True` and not terminating.
    pub ready: bool,
    /// `controller-revision-hash` label.
    pub revision: Option<String>,
    /// `metadata.uid` (delete precondition).
    pub uid: Option<String>,
}

/// What the controller observed about broker ordinal `ordinal`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerObservation {
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// The pod, if it exists.
    pub pod: Option<PodState>,
    /// Its `/status.json`, if it answered.
    pub status: Option<BrokerNodeStatus>,
}

impl BrokerObservation {
    /// Ready pod whose broker answered with its node id and Raft view.
    pub fn is_up(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| p.ready) && self.node_id().is_some()
    }

    /// Node id reported by the broker.
    pub fn node_id(&self) -> Option<u64> {
        self.status.as_ref().and_then(|s| s.known_node_id())
    }
}

/// The next broker membership step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// No StatefulSet yet: create it with every replica (the brokers bootstrap together).
    Create,
    /// Replicas and voters match the spec.
    Steady,
    /// Render `to` replicas (one more or one less than `from`).
    Scale {
        /// Current replicas.
        from: i32,
        /// Replicas rendered by this step.
        to: i32,
    },
    /// Make the brokers of these ordinals exactly the voters of every Raft group.
    SetVoters {
        /// Ordinals of the wanted voters.
        ordinals: Vec<i32>,
    },
    /// Nothing to do until brokers become ready or elect leaders.
    Wait {
        /// Why.
        reason: String,
    },
}

/// Replicas to render plus the membership step that led to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipPlan {
    /// Broker replicas to render.
    pub replicas: i32,
    /// The step.
    pub step: MembershipStep,
}

/// Per stream, the view of the broker that leads it (highest term wins if several claim it).
fn leader_views(brokers: &[BrokerObservation]) -> BTreeMap<&str, Option<(i32, &StreamRaftStatus)>> {
    let mut out: BTreeMap<&str, Option<(i32, &StreamRaftStatus)>> = BTreeMap::new();
    for b in brokers {
        let Some(s) = b.status.as_ref() else { continue };
        for (name, r) in &s.raft {
            let slot = out.entry(name.as_str()).or_default();
            if r.is_leader && slot.is_none_or(|(_, cur)| r.term > cur.term) {
                *slot = Some((b.ordinal, r));
            }
        }
    }
    out
}

/// Whether the voters of every group (as its leader sees them) are exactly the nodes of
/// `ordinals`. `None` when that cannot be told: a node id is unknown or reported twice, or a
/// group has no leader.
fn voters_converged(ordinals: &[i32], brokers: &[BrokerObservation]) -> Option<bool> {
    let mut ids = BTreeSet::new();
    for o in ordinals {
        ids.insert(brokers.iter().find(|b| b.ordinal == *o)?.node_id()?);
    }
    if ids.len() != ordinals.len() {
        // Two brokers claim the same id (one has not reported its own yet): unknown.
        return None;
    }
    let views = leader_views(brokers);
    if views.is_empty() {
        return None;
    }
    let mut all = true;
    for view in views.values() {
        let (_, r) = (*view)?;
        all &= r.voters == ids;
    }
    Some(all)
}

/// Decides the broker replicas of this reconcile and the membership action (see the module
/// docs). `current` is the live StatefulSet's `spec.replicas` (`None` without a StatefulSet);
/// `brokers` holds one observation per ordinal below `current`.
pub fn membership_step(
    desired: i32,
    current: Option<i32>,
    brokers: &[BrokerObservation],
) -> MembershipPlan {
    let cur = match current {
        Some(c) if c > 0 => c,
        _ => {
            return MembershipPlan {
                replicas: desired,
                step: MembershipStep::Create,
            };
        }
    };
    let wait = |reason: String| MembershipPlan {
        replicas: cur,
        step: MembershipStep::Wait { reason },
    };
    let not_up = |ordinals: &[i32]| -> Option<i32> {
        ordinals
            .iter()
            .copied()
            .find(|o| !brokers.iter().any(|b| b.ordinal == *o && b.is_up()))
    };
    if cur > desired {
        // Shrink: the highest ordinal leaves the groups before its pod goes.
        let keep: Vec<i32> = (0..cur - 1).collect();
        return match voters_converged(&keep, brokers) {
            Some(true) => MembershipPlan {
                replicas: cur - 1,
                step: MembershipStep::Scale {
                    from: cur,
                    to: cur - 1,
                },
            },
            _ => match not_up(&keep) {
                Some(o) => wait(format!(
                    "waiting for broker {o} to be ready before removing broker {}",
                    cur - 1
                )),
                None if leader_views(brokers).values().any(Option::is_none) => {
                    wait("waiting for every Raft group to elect a leader and every broker to report a distinct node id".into())
                }
                None => MembershipPlan {
                    replicas: cur,
                    step: MembershipStep::SetVoters { ordinals: keep },
                },
            },
        };
    }
    let all: Vec<i32> = (0..cur).collect();
    if let Some(o) = not_up(&all) {
        return wait(format!("waiting for broker {o} to be ready"));
    }
    match voters_converged(&all, brokers) {
        None => wait("waiting for every Raft group to elect a leader and every broker to report a distinct node id".into()),
        Some(false) => MembershipPlan {
            replicas: cur,
            step: MembershipStep::SetVoters { ordinals: all },
        },
        Some(true) if cur < desired => MembershipPlan {
            replicas: cur + 1,
            step: MembershipStep::Scale {
                from: cur,
                to: cur + 1,
            },
        },
        Some(true) => MembershipPlan {
            replicas: cur,
            step: MembershipStep::Steady,
        },
    }
}

/// The next step of a rolling restart of the broker pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartStep {
    /// Every pod runs the StatefulSet's update revision.
    UpToDate,
    /// Delete this pod (it is outdated; every broker is ready and caught up).
    Restart {
        /// Ordinal of the pod to delete.
        ordinal: i32,
    },
    /// Some pods are outdated but it is not safe to restart one now.
    Wait {
        /// Why.
        reason: String,
    },
}

/// Chooses at most one outdated broker pod to delete (the StatefulSet uses `OnDelete`).
///
/// Nothing is deleted unless every broker `0..replicas` is ready and, for every stream, applied
/// up to `max_lag` entries of its leader's commit index. Among the outdated pods, those leading
/// no Raft group go first (highest ordinal first), leaders last.
pub fn restart_step(
    update_revision: Option<&str>,
    replicas: i32,
    brokers: &[BrokerObservation],
    max_lag: u64,
) -> RestartStep {
    let Some(update) = update_revision else {
        return RestartStep::UpToDate;
    };
    let brokers: Vec<BrokerObservation> = brokers
        .iter()
        .filter(|b| b.ordinal < replicas)
        .cloned()
        .collect();
    let outdated: Vec<&BrokerObservation> = brokers
        .iter()
        .filter(|b| {
            b.pod
                .as_ref()
                .and_then(|p| p.revision.as_deref())
                .is_some_and(|r| r != update)
        })
        .collect();
    if outdated.is_empty() {
        return RestartStep::UpToDate;
    }
    for o in 0..replicas {
        if !brokers.iter().any(|b| b.ordinal == o && b.is_up()) {
            return RestartStep::Wait {
                reason: format!("waiting for broker {o} to be ready before restarting another"),
            };
        }
    }
    let views = leader_views(&brokers);
    let mut leads: BTreeMap<i32, usize> = BTreeMap::new();
    for (stream, view) in &views {
        let Some((leader, lr)) = view else {
            return RestartStep::Wait {
                reason: format!("waiting for stream {stream} to elect a leader"),
            };
        };
        *leads.entry(*leader).or_default() += 1;
        for b in &brokers {
            let applied = b
                .status
                .as_ref()
                .and_then(|s| s.raft.get(*stream))
                .map_or(0, |r| r.applied_index);
            if applied.saturating_add(max_lag) < lr.commit_index {
                return RestartStep::Wait {
                    reason: format!(
                        "waiting for broker {} to catch up on stream {stream} (applied {applied}, leader committed {})",
                        b.ordinal, lr.commit_index
                    ),
                };
            }
        }
    }
    let pick = outdated
        .iter()
        .min_by_key(|b| {
            (
                leads.get(&b.ordinal).copied().unwrap_or(0),
                std::cmp::Reverse(b.ordinal),
            )
        })
        .map(|b| b.ordinal);
    match pick {
        Some(ordinal) => RestartStep::Restart { ordinal },
        None => RestartStep::UpToDate,
    }
}

/// Worker Deployment state used for the conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkersObservation {
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// A rollout is under way (new generation not observed, or pods not all updated).
    pub rolling: bool,
}

/// Everything [`desired_conditions`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.generation` of the pipeline.
    pub generation: Option<i64>,
    /// `spec.broker.replicas`.
    pub desired_brokers: i32,
    /// Ready broker replicas (StatefulSet `status.readyReplicas`).
    pub ready_brokers: i32,
    /// This reconcile's membership step.
    pub membership: MembershipStep,
    /// This reconcile's restart step (`None` when not evaluated, during membership changes).
    pub restart: Option<RestartStep>,
    /// `spec.workers.replicas`.
    pub desired_workers: i32,
    /// Worker Deployment state.
    pub workers: WorkersObservation,
    /// `(reason, message)` of every degradation (first one is reported).
    pub degraded: Vec<(String, String)>,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The `Ready`, `Progressing` and `Degraded` conditions for what was observed (with
/// `lastTransitionTime` = now; [`merge_conditions`] keeps older times of unchanged statuses).
///
/// - `Ready`: every desired broker and worker is ready (`Available`), else `BrokersNotReady` /
///   `WorkersNotReady`.
/// - `Progressing`: `Creating`, `ScalingBrokers`, `ChangingMembership`, `WaitingForBrokers`,
///   `RollingRestart`, `RollingOutWorkers`, `WaitingForWorkers`; else False `Stable`.
/// - `Degraded`: the first of `degraded`, else False `AsExpected`.
pub fn desired_conditions(o: &Observed) -> Vec<Condition> {
    let g = o.generation;
    let brokers_ok = o.ready_brokers >= o.desired_brokers;
    let workers_ok = o.workers.ready >= o.desired_workers;
    let ready = match (brokers_ok, workers_ok) {
        (true, true) => condition(
            "Ready",
            true,
            "Available",
            format!(
                "{}/{} brokers and {}/{} workers ready",
                o.ready_brokers, o.desired_brokers, o.workers.ready, o.desired_workers
            ),
            g,
        ),
        (false, _) => condition(
            "Ready",
            false,
            "BrokersNotReady",
            format!("{}/{} brokers ready", o.ready_brokers, o.desired_brokers),
            g,
        ),
        (true, false) => condition(
            "Ready",
            false,
            "WorkersNotReady",
            format!("{}/{} workers ready", o.workers.ready, o.desired_workers),
            g,
        ),
    };
    let progressing: Option<(&str, String)> = match &o.membership {
        MembershipStep::Create => Some(("Creating", "creating the broker StatefulSet".into())),
        MembershipStep::Scale { from, to } => Some((
            "ScalingBrokers",
            format!(
                "brokers {from} -> {to} (target {}), one member at a time",
                o.desired_brokers
            ),
        )),
        MembershipStep::SetVoters { ordinals } => Some((
            "ChangingMembership",
            format!("making brokers {ordinals:?} the Raft voters"),
        )),
        MembershipStep::Wait { reason } => Some(("WaitingForBrokers", reason.clone())),
        MembershipStep::Steady => None,
    }
    .or_else(|| match &o.restart {
        Some(RestartStep::Restart { ordinal }) => Some((
            "RollingRestart",
            format!("restarting broker {ordinal} on the new revision"),
        )),
        Some(RestartStep::Wait { reason }) => Some(("RollingRestart", reason.clone())),
        _ => None,
    })
    .or_else(|| {
        (!brokers_ok).then(|| {
            (
                "WaitingForBrokers",
                format!("{}/{} brokers ready", o.ready_brokers, o.desired_brokers),
            )
        })
    })
    .or_else(|| {
        o.workers.rolling.then(|| {
            (
                "RollingOutWorkers",
                "worker Deployment rolling out".to_string(),
            )
        })
    })
    .or_else(|| {
        (!workers_ok).then(|| {
            (
                "WaitingForWorkers",
                format!("{}/{} workers ready", o.workers.ready, o.desired_workers),
            )
        })
    });
    let progressing = match progressing {
        Some((reason, message)) => condition("Progressing", true, reason, message, g),
        None => condition(
            "Progressing",
            false,
            "Stable",
            "the pipeline matches its spec".into(),
            g,
        ),
    };
    let degraded = match o.degraded.first() {
        Some((reason, message)) => condition("Degraded", true, reason, message.clone(), g),
        None => condition("Degraded", false, "AsExpected", String::new(), g),
    };
    vec![ready, progressing, degraded]
}

/// Conditions for a spec the operator refuses (`reason` from [`Error::InvalidSpec`]): `Ready`
/// and `Degraded` carry the reason, `Progressing` is False (nothing is applied).
pub fn invalid_spec_conditions(
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> Vec<Condition> {
    vec![
        condition("Ready", false, reason, message.into(), generation),
        condition(
            "Progressing",
            false,
            "InvalidSpec",
            "nothing applied until the spec is fixed".into(),
            generation,
        ),
        condition("Degraded", true, reason, message.into(), generation),
    ]
}

/// Merges `new` into `old` by `type`: one entry per type, `new`'s values win, but an entry
/// whose `status` did not change keeps its old `lastTransitionTime`. Types only in `old` are
/// kept (after the new ones).
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = new
        .into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
                && prev.status == c.status
            {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            c
        })
        .collect();
    for o in old {
        if !out.iter().any(|c| c.type_ == o.type_) {
            out.push(o.clone());
        }
    }
    out
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
/// Errors: the `TransactionPipeline` CRD is not installed (listing answers 404), or the first
/// list fails otherwise.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let client = ctx.client.clone();
    let pipelines: Api<TransactionPipeline> = scoped_api(&client, namespace.as_deref());
    match pipelines.list(&ListParams::default().limit(1)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => anyhow::bail!(
            "listing TransactionPipelines answered 404: is the CRD installed? run `txpipe-operator crd | kubectl apply -f -`"
        ),
        Err(e) => {
            return Err(anyhow::Error::new(e).context("listing TransactionPipelines"));
        }
    }
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
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
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
    } else if status.broker.leader.is_none()
        && let Some(b) = s.get_mut("broker").and_then(|b| b.as_object_mut())
    {
        // A merge patch must name a field to clear it.
        b.insert("leader".into(), serde_json::Value::Null);
    }
    let patch = serde_json::json!({ "status": s });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(name, &pp, &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn reconcile_inner(p: &TransactionPipeline, ctx: &Context) -> Result<Action> {
    let ns = p
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = p
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let uid = p.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let client = &ctx.client;
    let pipelines: Api<TransactionPipeline> = Api::namespaced(client.clone(), &ns);
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let old_conditions = p
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();

    // 1. Observe.
    let sts_name = render::broker_statefulset_name(p);
    let live_sts = sts_api.get_opt(&sts_name).await?;
    let current = live_sts
        .as_ref()
        .map(|s| s.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1));
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // In namespace-scoped mode the operator may not read CRDs (a cluster-scoped kind): a 403
    // means "cannot tell", treated as not installed (the condition says so if it was asked for).
    let service_monitor_available = match crd_api.get_opt(SERVICE_MONITOR_CRD).await {
        Ok(found) => found.is_some(),
        Err(kube::Error::Api(e)) if e.code == 403 => false,
        Err(e) => return Err(e.into()),
    };
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
    let brokers = observe_brokers(ctx, p, &pods_api, &sts_name, current.unwrap_or(0)).await?;

    // 2. Decide the membership step.
    let desired_brokers = p.spec.broker.replicas;
    let plan = membership_step(desired_brokers, current, &brokers);

    // 3. Render and apply.
    let render_ctx = RenderContext {
        service_monitor_available,
        existing_volume_size,
        broker_replicas: Some(plan.replicas),
    };
    let mut children = match render::render(p, &render_ctx) {
        Ok(c) => c,
        Err(Error::InvalidSpec { reason, message }) => {
            tracing::warn!(pipeline = %name, namespace = %ns, %reason, %message, "invalid spec: nothing applied");
            let status = TransactionPipelineStatus {
                observed_generation: p.metadata.generation,
                conditions: merge_conditions(
                    &old_conditions,
                    invalid_spec_conditions(p.metadata.generation, &reason, &message),
                ),
                ..Default::default()
            };
            patch_status(&pipelines, &name, &status, true).await?;
            let event_reason = if reason == "VolumeShrinkRefused" {
                "VolumeShrinkRefused"
            } else {
                "InvalidSpec"
            };
            publish(
                ctx,
                p,
                EventType::Warning,
                event_reason,
                "Validate",
                format!("{reason}: {message}"),
            )
            .await;
            return Ok(Action::requeue(REQUEUE_INVALID));
        }
        Err(e) => return Err(e),
    };
    if let (Some(live), Some(spec)) = (
        live_sts.as_ref().and_then(|s| s.spec.as_ref()),
        children.broker.spec.as_mut(),
    ) {
        // volumeClaimTemplates are immutable: apply the live ones (volumes grow through their
        // PVCs, below).
        spec.volume_claim_templates = live.volume_claim_templates.clone().map(|ts| {
            ts.into_iter()
                .map(|mut t| {
                    t.status = None;
                    t
                })
                .collect()
        });
    }

    let mut degraded: Vec<(String, String)> = Vec::new();
    if p.spec.monitoring.service_monitor && !service_monitor_available {
        degraded.push((
            "ServiceMonitorUnavailable".into(),
            format!("spec.monitoring.serviceMonitor is set but the CRD {SERVICE_MONITOR_CRD} is not installed (or, in namespace-scoped mode, cannot be read)"),
        ));
    }

    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &children.config_map,
    )
    .await?;
    let svc_api: Api<Service> = Api::namespaced(client.clone(), &ns);
    apply(&svc_api, &children.broker_headless).await?;
    apply(&svc_api, &children.broker_client).await?;
    let sts = apply(&sts_api, &children.broker).await?;
    if let MembershipStep::Scale { from, to } = &plan.step {
        publish(
            ctx,
            p,
            EventType::Normal,
            "Scaling",
            "Scale",
            format!("scaling brokers {from} -> {to} (target {desired_brokers}), one Raft member at a time"),
        )
        .await;
    }

    let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    apply(&pdb_api, &children.broker_pdb).await?;
    let deployment = apply(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        &children.worker,
    )
    .await?;
    apply(&pdb_api, &children.worker_pdb).await?;
    let hpa_api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    match &children.worker_hpa {
        Some(hpa) => {
            apply(&hpa_api, hpa).await?;
        }
        None => {
            delete_if_owned(&hpa_api, &render::worker_hpa_name(p), &uid).await?;
        }
    }
    if service_monitor_available {
        let sm_api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &render::service_monitor_api_resource());
        match &children.service_monitor {
            Some(sm) => {
                apply(&sm_api, sm).await?;
            }
            None => {
                delete_if_owned(&sm_api, &render::service_monitor_name(p), &uid).await?;
            }
        }
    }
    let job_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job_name = render::producer_job_name(p);
    match &children.producer {
        Some(job) => match apply(&job_api, job).await {
            Ok(_) => {}
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 422 => degraded.push((
                "ProducerJobImmutable".into(),
                format!(
                    "the producer Job's template cannot change ({}); delete Job {} to run the new spec",
                    s.message,
                    job.name_any()
                ),
            )),
            Err(e) => return Err(e),
        },
        None => {
            delete_if_owned(&job_api, &job_name, &uid).await?;
        }
    }

    // 4. Grow volumes.
    if let Some(wanted) = render::parse_quantity(&p.spec.broker.storage.size) {
        let mut grown = Vec::new();
        for pvc in &pvcs {
            let smaller = pvc_size(pvc)
                .and_then(|s| render::parse_quantity(&s))
                .is_some_and(|have| have < wanted);
            if smaller {
                let patch = serde_json::json!({
                    "spec": {"resources": {"requests": {"storage": p.spec.broker.storage.size}}}
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
            publish(
                ctx,
                p,
                EventType::Normal,
                "VolumeExpansion",
                "Expand",
                format!(
                    "requested {} for {}",
                    p.spec.broker.storage.size,
                    grown.join(", ")
                ),
            )
            .await;
        }
    }

    // 5. Membership action, then the rolling restart (only once membership is steady).
    let mut soon = false;
    if let MembershipStep::SetVoters { ordinals } = &plan.step {
        soon = true;
        let (changed, errors) = post_voters(ctx, p, ordinals, plan.replicas).await;
        if changed {
            publish(
                ctx,
                p,
                EventType::Normal,
                "MembershipChanged",
                "SetVoters",
                format!("Raft voters set to brokers {ordinals:?}"),
            )
            .await;
        }
        if !errors.is_empty() {
            // Expected while a new broker has not joined yet; retried shortly.
            tracing::info!(pipeline = %name, errors = %errors.join("; "), "setting the voters did not complete everywhere; retrying");
        }
    }
    let restart = if plan.step == MembershipStep::Steady {
        let sts_status = sts.status.as_ref();
        let observed = sts_status.and_then(|s| s.observed_generation) >= sts.metadata.generation;
        let update_revision = sts_status
            .filter(|_| observed)
            .and_then(|s| s.update_revision.as_deref());
        let step = restart_step(update_revision, plan.replicas, &brokers, MAX_APPLY_LAG);
        if let RestartStep::Restart { ordinal } = &step {
            let pod_name = render::broker_pod_name(p, *ordinal);
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
            pods_api.delete(&pod_name, &dp).await?;
            soon = true;
            publish(
                ctx,
                p,
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
        Some(step)
    } else {
        None
    };

    // 6. Status.
    let sts_status = sts.status.clone().unwrap_or_default();
    let (voters, leader) = broker_voters_and_leader(p, plan.replicas, &brokers);
    let dep_status = deployment.status.clone().unwrap_or_default();
    let desired_workers = p.spec.workers.replicas;
    let workers = WorkersObservation {
        replicas: dep_status.replicas.unwrap_or(0),
        ready: dep_status.ready_replicas.unwrap_or(0),
        rolling: dep_status.observed_generation < deployment.metadata.generation
            || dep_status.updated_replicas.unwrap_or(0) < desired_workers
            || dep_status.replicas.unwrap_or(0) > desired_workers,
    };
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
    let conditions = merge_conditions(&old_conditions, desired_conditions(&observed));
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
    };
    patch_status(&pipelines, &name, &status, false).await?;

    Ok(Action::requeue(if soon {
        REQUEUE_SOON
    } else if progressing {
        REQUEUE_PROGRESSING
    } else {
        REQUEUE_READY
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_admin::StreamRaftStatus;

    /// A broker that is up: ready pod on `rev`, node id `id`, viewing `voters` in two streams,
    /// leading those listed in `leads` (term 2), with the given applied/commit indexes.
    fn up(ordinal: i32, id: u64, voters: &[u64], leads: &[&str], rev: &str) -> BrokerObservation {
        let raft = ["transactions", "decisions"]
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    StreamRaftStatus {
                        is_leader: leads.contains(s),
                        term: 2,
                        voters: voters.iter().copied().collect(),
                        commit_index: 1000,
                        applied_index: 1000,
                        ..Default::default()
                    },
                )
            })
            .collect();
        BrokerObservation {
            ordinal,
            pod: Some(PodState {
                ready: true,
                revision: Some(rev.into()),
                uid: Some(format!("uid-{ordinal}")),
            }),
            status: Some(BrokerNodeStatus {
                ready: true,
                node_id: Some(id),
                raft,
                ..Default::default()
            }),
        }
    }

    fn not_ready(mut b: BrokerObservation) -> BrokerObservation {
        if let Some(p) = b.pod.as_mut() {
            p.ready = false;
        }
        b
    }

    fn lagging(mut b: BrokerObservation, applied: u64) -> BrokerObservation {
        if let Some(s) = b.status.as_mut() {
            for r in s.raft.values_mut() {
                r.applied_index = applied;
            }
        }
        b
    }

    const BOTH: &[&str] = &["transactions", "decisions"];

    /// (case, desired, current, observations, expected plan)
    type MembershipCase = (
        &'static str,
        i32,
        Option<i32>,
        Vec<BrokerObservation>,
        MembershipPlan,
    );
    /// (case, observed, expected (status, reason) of Ready, Progressing, Degraded)
    type ConditionCase = (&'static str, Observed, [(&'static str, &'static str); 3]);
    /// (case, old, new, merged)
    type MergeCase = (&'static str, Vec<Condition>, Vec<Condition>, Vec<Condition>);

    #[test]
    fn membership_steps() {
        use MembershipStep::*;
        let cases: Vec<MembershipCase> = vec![
            (
                "no StatefulSet: create all replicas at once",
                3,
                None,
                vec![],
                MembershipPlan {
                    replicas: 3,
                    step: Create,
                },
            ),
            (
                "steady single node",
                1,
                Some(1),
                vec![up(0, 0, &[0], BOTH, "r")],
                MembershipPlan {
                    replicas: 1,
                    step: Steady,
                },
            ),
            (
                "grow 1 -> 3: one replica more first",
                3,
                Some(1),
                vec![up(0, 0, &[0], BOTH, "r")],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 1, to: 2 },
                },
            ),
            (
                "grow: the new pod is not ready yet",
                3,
                Some(2),
                vec![
                    up(0, 0, &[0], BOTH, "r"),
                    not_ready(up(1, 7, &[0], &[], "r")),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Wait {
                        reason: "waiting for broker 1 to be ready".into(),
                    },
                },
            ),
            (
                "grow: the new pod is ready (a learner): make it a voter",
                3,
                Some(2),
                vec![up(0, 0, &[0], BOTH, "r"), up(1, 7, &[0], &[], "r")],
                MembershipPlan {
                    replicas: 2,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "grow: voters converged, next replica",
                3,
                Some(2),
                vec![up(0, 0, &[0, 7], BOTH, "r"), up(1, 7, &[0, 7], &[], "r")],
                MembershipPlan {
                    replicas: 3,
                    step: Scale { from: 2, to: 3 },
                },
            ),
            (
                "the voters are seen by each stream's leader (here broker 1 leads decisions)",
                2,
                Some(2),
                vec![
                    up(0, 0, &[0, 7], &["transactions"], "r"),
                    up(1, 7, &[0], &["decisions"], "r"),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "no leader for a stream: wait",
                3,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], &["transactions"], "r"),
                    up(1, 1, &[0, 1, 2], &[], "r"),
                    up(2, 2, &[0, 1, 2], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for every Raft group to elect a leader and every broker to report a distinct node id".into(),
                    },
                },
            ),
            (
                "a replaced volume left a stale voter id: reset the voters",
                3,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 9], BOTH, "r"),
                    up(1, 1, &[0, 1, 9], &[], "r"),
                    up(2, 12, &[0, 1, 9], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: SetVoters {
                        ordinals: vec![0, 1, 2],
                    },
                },
            ),
            (
                "two brokers report the same node id: wait, never scale on it",
                3,
                Some(2),
                vec![up(0, 0, &[0], BOTH, "r"), up(1, 0, &[0], &[], "r")],
                MembershipPlan {
                    replicas: 2,
                    step: Wait {
                        reason: "waiting for every Raft group to elect a leader and every broker to report a distinct node id".into(),
                    },
                },
            ),
            (
                "shrink 3 -> 1: first remove the highest ordinal from the voters",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], &[], "r"),
                    up(1, 1, &[0, 1, 2], &[], "r"),
                    up(2, 2, &[0, 1, 2], BOTH, "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: SetVoters {
                        ordinals: vec![0, 1],
                    },
                },
            ),
            (
                "shrink: once it left the voters, remove its pod",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1], BOTH, "r"),
                    up(1, 1, &[0, 1], &[], "r"),
                    up(2, 2, &[0, 1], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 3, to: 2 },
                },
            ),
            (
                "shrink: the leaving pod may be down already",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1], BOTH, "r"),
                    up(1, 1, &[0, 1], &[], "r"),
                    BrokerObservation {
                        ordinal: 2,
                        pod: None,
                        status: None,
                    },
                ],
                MembershipPlan {
                    replicas: 2,
                    step: Scale { from: 3, to: 2 },
                },
            ),
            (
                "shrink: a remaining broker is not ready",
                1,
                Some(3),
                vec![
                    up(0, 0, &[0, 1, 2], BOTH, "r"),
                    not_ready(up(1, 1, &[0, 1, 2], &[], "r")),
                    up(2, 2, &[0, 1, 2], &[], "r"),
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for broker 1 to be ready before removing broker 2".into(),
                    },
                },
            ),
            (
                "brokers still bootstrapping (not answering): wait",
                3,
                Some(3),
                vec![
                    BrokerObservation {
                        ordinal: 0,
                        pod: Some(PodState::default()),
                        status: Some(BrokerNodeStatus::default()),
                    },
                    BrokerObservation {
                        ordinal: 1,
                        pod: None,
                        status: None,
                    },
                    BrokerObservation {
                        ordinal: 2,
                        pod: None,
                        status: None,
                    },
                ],
                MembershipPlan {
                    replicas: 3,
                    step: Wait {
                        reason: "waiting for broker 0 to be ready".into(),
                    },
                },
            ),
        ];
        for (name, desired, current, brokers, want) in cases {
            assert_eq!(membership_step(desired, current, &brokers), want, "{name}");
        }
    }

    #[test]
    fn restart_steps() {
        let v = &[0, 1, 2];
        let cases: Vec<(&str, Option<&str>, Vec<BrokerObservation>, RestartStep)> = vec![
            (
                "all pods on the update revision",
                Some("new"),
                vec![up(0, 0, v, BOTH, "new"), up(1, 1, v, &[], "new"), up(2, 2, v, &[], "new")],
                RestartStep::UpToDate,
            ),
            (
                "no update revision known yet",
                None,
                vec![up(0, 0, v, BOTH, "old")],
                RestartStep::UpToDate,
            ),
            (
                "followers first, highest ordinal first",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(1, 1, v, &[], "old"), up(2, 2, v, &[], "old")],
                RestartStep::Restart { ordinal: 2 },
            ),
            (
                "the leader last",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(1, 1, v, &[], "new"), up(2, 2, v, &[], "new")],
                RestartStep::Restart { ordinal: 0 },
            ),
            (
                "equal leadership: the highest ordinal first",
                Some("new"),
                vec![
                    up(0, 0, v, &["transactions"], "old"),
                    up(1, 1, v, &["decisions"], "old"),
                    up(2, 2, v, &[], "new"),
                ],
                RestartStep::Restart { ordinal: 1 },
            ),
            (
                "one broker not ready: none",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    not_ready(up(1, 1, v, &[], "new")),
                    up(2, 2, v, &[], "old"),
                ],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to be ready before restarting another".into(),
                },
            ),
            (
                "one broker missing (just deleted): none",
                Some("new"),
                vec![up(0, 0, v, BOTH, "old"), up(2, 2, v, &[], "old")],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to be ready before restarting another".into(),
                },
            ),
            (
                "one broker lagging behind the leader's commit index: none",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    lagging(up(1, 1, v, &[], "new"), 800),
                    up(2, 2, v, &[], "old"),
                ],
                RestartStep::Wait {
                    reason: "waiting for broker 1 to catch up on stream decisions (applied 800, leader committed 1000)".into(),
                },
            ),
            (
                "a lag within the bound is caught up",
                Some("new"),
                vec![
                    up(0, 0, v, BOTH, "old"),
                    lagging(up(1, 1, v, &[], "new"), 950),
                    up(2, 2, v, &[], "new"),
                ],
                RestartStep::Restart { ordinal: 0 },
            ),
        ];
        for (name, rev, brokers, want) in cases {
            assert_eq!(
                restart_step(rev, 3, &brokers, MAX_APPLY_LAG),
                want,
                "{name}"
            );
        }
    }

    fn observed() -> Observed {
        Observed {
            generation: Some(4),
            desired_brokers: 3,
            ready_brokers: 3,
            membership: MembershipStep::Steady,
            restart: Some(RestartStep::UpToDate),
            desired_workers: 2,
            workers: WorkersObservation {
                replicas: 2,
                ready: 2,
                rolling: false,
            },
            degraded: vec![],
        }
    }

    fn summary(cs: &[Condition]) -> Vec<(String, String, String)> {
        cs.iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn conditions_for_observed_states() {
        let t = |s: &str| s.to_string();
        let cases: Vec<ConditionCase> = vec![
            (
                "all ready",
                observed(),
                [
                    ("True", "Available"),
                    ("False", "Stable"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "creating",
                Observed {
                    ready_brokers: 0,
                    membership: MembershipStep::Create,
                    restart: None,
                    workers: WorkersObservation::default(),
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "Creating"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "scaling brokers",
                Observed {
                    desired_brokers: 5,
                    membership: MembershipStep::Scale { from: 3, to: 4 },
                    restart: None,
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "ScalingBrokers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "changing membership",
                Observed {
                    membership: MembershipStep::SetVoters {
                        ordinals: vec![0, 1, 2],
                    },
                    restart: None,
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("True", "ChangingMembership"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "rolling restart",
                Observed {
                    ready_brokers: 2,
                    restart: Some(RestartStep::Restart { ordinal: 1 }),
                    ..observed()
                },
                [
                    ("False", "BrokersNotReady"),
                    ("True", "RollingRestart"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "workers rolling out",
                Observed {
                    workers: WorkersObservation {
                        replicas: 3,
                        ready: 2,
                        rolling: true,
                    },
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("True", "RollingOutWorkers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "workers not ready",
                Observed {
                    workers: WorkersObservation {
                        replicas: 2,
                        ready: 1,
                        rolling: false,
                    },
                    ..observed()
                },
                [
                    ("False", "WorkersNotReady"),
                    ("True", "WaitingForWorkers"),
                    ("False", "AsExpected"),
                ],
            ),
            (
                "degraded without ServiceMonitor CRD",
                Observed {
                    degraded: vec![(t("ServiceMonitorUnavailable"), t("no CRD"))],
                    ..observed()
                },
                [
                    ("True", "Available"),
                    ("False", "Stable"),
                    ("True", "ServiceMonitorUnavailable"),
                ],
            ),
        ];
        for (name, o, want) in cases {
            let got = summary(&desired_conditions(&o));
            let want: Vec<_> = ["Ready", "Progressing", "Degraded"]
                .iter()
                .zip(want)
                .map(|(ty, (s, r))| (t(ty), t(s), t(r)))
                .collect();
            assert_eq!(got, want, "{name}");
            assert!(
                desired_conditions(&o)
                    .iter()
                    .all(|c| c.observed_generation == Some(4))
            );
        }
    }

    #[test]
    fn invalid_spec_conditions_carry_the_reason() {
        let cs = invalid_spec_conditions(Some(2), "VolumeShrinkRefused", "10Gi < 20Gi");
        assert_eq!(
            summary(&cs),
            vec![
                ("Ready".into(), "False".into(), "VolumeShrinkRefused".into()),
                ("Progressing".into(), "False".into(), "InvalidSpec".into()),
                (
                    "Degraded".into(),
                    "True".into(),
                    "VolumeShrinkRefused".into()
                ),
            ]
        );
        assert_eq!(cs[0].message, "10Gi < 20Gi");
    }

    fn cond(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn merging_conditions() {
        let cases: Vec<MergeCase> = vec![
            (
                "first status: new times",
                vec![],
                vec![cond("Ready", "False", "BrokersNotReady", 100)],
                vec![cond("Ready", "False", "BrokersNotReady", 100)],
            ),
            (
                "same status, new reason: time kept, reason updated",
                vec![cond("Ready", "False", "BrokersNotReady", 10)],
                vec![cond("Ready", "False", "WorkersNotReady", 100)],
                vec![cond("Ready", "False", "WorkersNotReady", 10)],
            ),
            (
                "status changed: new time",
                vec![cond("Ready", "False", "BrokersNotReady", 10)],
                vec![cond("Ready", "True", "Available", 100)],
                vec![cond("Ready", "True", "Available", 100)],
            ),
            (
                "one entry per type; unknown old types kept after the new ones",
                vec![
                    cond("Custom", "True", "X", 5),
                    cond("Ready", "True", "Available", 10),
                ],
                vec![
                    cond("Ready", "True", "Available", 100),
                    cond("Degraded", "False", "AsExpected", 100),
                ],
                vec![
                    cond("Ready", "True", "Available", 10),
                    cond("Degraded", "False", "AsExpected", 100),
                    cond("Custom", "True", "X", 5),
                ],
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(merge_conditions(&old, new), want, "{name}");
        }
    }

    #[test]
    fn largest_size_compares_quantities() {
        assert_eq!(
            largest_size(["10Gi".into(), "20Gi".into(), "bad".into()]),
            Some("20Gi".into())
        );
        assert_eq!(largest_size(Vec::<String>::new()), None);
    }
}
