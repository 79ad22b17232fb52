//! Leader election through a `coordination.k8s.io/v1` Lease (crate `kube-lease-manager`).
//!
//! Several operator replicas may run; only the holder of the Lease runs the controller. Timing,
//! for a lease duration `D` seconds (`--lease-duration-secs`, default 15, at least 3):
//! - **grace** `G = max(1, D / 3)` s (5 s by default): the holder renews when `G` s of validity
//!   are left, i.e. every `D - G` s (10 s by default). A standby replica takes the Lease over
//!   once it has not been renewed for `D` s (15 s by default), so a crashed leader is replaced
//!   after at most `D` s plus up to 1 s of jitter.
//! - **safety margin** `S = G / 2` (2.5 s by default): the leader independently re-reads the
//!   Lease shortly before the margin is reached; when it cannot confirm a renewal that keeps
//!   at least `S` of validity (API server unreachable, request hanging, holder changed), it
//!   considers the Lease lost and signals the work to stop. `S` also covers clock skew between
//!   nodes of up to `S`, since the other replicas judge expiry by the holder's `renewTime`.
//! - a graceful stop (SIGTERM) keeps renewing while the work drains (at most
//!   [`LeaseConfig::stop_timeout`]) and then releases the Lease (clears its holder). A standby
//!   only re-reads the Lease when the validity it last saw runs out, so it still takes over
//!   at most `D` s after the leader's last renewal, but finds the Lease free instead of
//!   force-releasing an expired one.
//!
//! RBAC: `get`, `create` (first start) and `patch` (server-side apply to acquire, strategic
//! merge to renew, merge patch with a `resourceVersion` precondition to release) on `leases`
//! in the lease namespace.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::{Pin, pin};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::Fuse;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::telemetry::Metrics;

/// Shortest accepted lease duration, seconds (grace must be at least 1 s and below it).
pub const MIN_LEASE_DURATION_SECS: u64 = 3;

/// Timeout of one watchdog read of the Lease.
const WATCHDOG_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Minimum time between two watchdog reads.
const WATCHDOG_MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Upper bound for releasing the Lease at the end (the API server may be unreachable).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Lease lives and how long it is valid.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease object name (e.g. `txpipe-operator`).
    pub name: String,
    /// Namespace of the Lease object (normally the operator's own namespace).
    pub namespace: String,
    /// Holder identity written to `spec.holderIdentity`; unique per process (see
    /// [`default_identity`]).
    pub identity: String,
    /// Lease validity after each renewal, seconds (`D` in the module docs). At least
    /// [`MIN_LEASE_DURATION_SECS`].
    pub duration_secs: u64,
    /// How long the work may take to stop after its stop signal before it is dropped.
    pub stop_timeout: Duration,
}

impl LeaseConfig {
    /// A config with `identity` from [`default_identity`] and a 10 s stop timeout.
    ///
    /// # Errors
    /// [`LeaseError::InvalidDuration`] when `duration_secs` is below
    /// [`MIN_LEASE_DURATION_SECS`].
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        duration_secs: u64,
    ) -> Result<Self, LeaseError> {
        if duration_secs < MIN_LEASE_DURATION_SECS {
            return Err(LeaseError::InvalidDuration(duration_secs));
        }
        Ok(Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: default_identity(),
            duration_secs,
            stop_timeout: Duration::from_secs(10),
        })
    }

    /// Grace period `G = max(1, D / 3)`, seconds: the holder renews when this much validity is
    /// left.
    pub fn grace_secs(&self) -> u64 {
        (self.duration_secs / 3).max(1)
    }

    /// Renew period `D - G`, seconds.
    pub fn renew_period_secs(&self) -> u64 {
        self.duration_secs - self.grace_secs()
    }

    /// Safety margin `S = G / 2`: the leader stops working when less than this much validity of
    /// the Lease is confirmed.
    pub fn safety_margin(&self) -> Duration {
        Duration::from_secs(self.grace_secs()) / 2
    }
}

/// `<HOSTNAME>-<16 random hex digits>`: the pod name (Kubernetes sets `HOSTNAME` to it) plus a
/// per-process suffix, so a restarted container never mistakes its predecessor's hold for its
/// own.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "txpipe-operator".to_string());
    // RandomState is seeded from the OS's randomness: enough for a unique suffix.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{host}-{:016x}", hasher.finish())
}

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The configured lease duration is too short.
    #[error(
        "lease duration must be at least {MIN_LEASE_DURATION_SECS} s (got {0} s): the renew grace is a third of it and must be at least 1 s"
    )]
    InvalidDuration(u64),
    /// The Lease object could not be read or created (RBAC, API server unreachable).
    #[error("leader election Lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// What failed.
        #[source]
        source: LeaseManagerError,
    },
}

/// Becomes `true` when the work handed to [`lead`] must stop: the Lease was lost or the process
/// is shutting down.
#[derive(Clone, Debug)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

impl StopSignal {
    /// A signal and the sender that fires it (`send(true)`); dropping the sender also fires it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    /// Whether the stop was signalled.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once the stop is signalled (or its sender is gone). Use it as the controller's
    /// shutdown future.
    pub async fn wait(mut self) {
        // Err means the sender was dropped: treat that as a stop as well.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// How a call of [`lead`] ended. The Lease has been released (or was already lost) and
/// `txpipe_operator_leader` is 0 in every case.
#[derive(Debug, PartialEq, Eq)]
pub enum LeadOutcome<T> {
    /// `shutdown` completed before this replica became leader; the work never ran.
    NotLeader,
    /// The work finished: on its own, or after its stop signal because `shutdown` completed.
    Finished(T),
    /// `shutdown` completed, and the work did not finish within [`LeaseConfig::stop_timeout`]
    /// after its stop signal; it was dropped.
    StopTimedOut,
    /// The Lease was lost while leading; the work was told to stop. `None` when it did not
    /// finish within [`LeaseConfig::stop_timeout`] and was dropped. Call [`lead`] again to stand
    /// by for the next term.
    LeaseLost(Option<T>),
}

/// Waits to become the Lease holder, then runs `work` until it finishes, the Lease is lost, or
/// `shutdown` completes; releases the Lease at the end.
///
/// While leading, `metrics.leader` is 1 and the Lease is renewed in the background (see the
/// module docs for the timing). `work` receives a [`StopSignal`] that fires when the Lease is
/// lost or `shutdown` completes; it should then return promptly (it is dropped after
/// [`LeaseConfig::stop_timeout`]). While the work drains after a shutdown, the Lease keeps
/// being renewed, so no other replica starts before this one has stopped. Transient API errors
/// while waiting or renewing are logged and retried with a backoff (500 ms doubling to 10 s).
///
/// # Errors
/// [`LeaseError::Lease`] when the Lease object cannot be read or created at the start (missing
/// RBAC, unreachable API server).
pub async fn lead<W, Fut>(
    client: Client,
    config: &LeaseConfig,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
    work: W,
) -> Result<LeadOutcome<Fut::Output>, LeaseError>
where
    W: FnOnce(StopSignal) -> Fut,
    Fut: Future,
{
    let manager = LeaseManagerBuilder::new(client.clone(), &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs())
        .build()
        .await
        .map_err(|source| LeaseError::Lease {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
            source,
        })?;
    let mut shutdown = pin!(shutdown.fuse());

    info!(
        lease = %format!("{}/{}", config.namespace, config.name),
        identity = %config.identity,
        duration_secs = config.duration_secs,
        renew_period_secs = config.renew_period_secs(),
        "waiting for leadership"
    );
    let lease_api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let outcome = if wait_for_leadership(&manager, shutdown.as_mut()).await {
        metrics.leader.set(1);
        info!(identity = %config.identity, "became leader");
        let outcome = run_term(
            &manager,
            &lease_api,
            config,
            metrics,
            shutdown.as_mut(),
            work,
        )
        .await;
        metrics.leader.set(0);
        outcome
    } else {
        LeadOutcome::NotLeader
    };
    // Release a Lease still held (a standby then finds it free). After a loss there is
    // nothing to release. (A shutdown while standing by may have interrupted an acquisition,
    // hence the release attempt for `NotLeader` too.)
    if !matches!(outcome, LeadOutcome::LeaseLost(_)) {
        release_if_held(&lease_api, config).await;
    }
    Ok(outcome)
}

/// Stands by until the Lease is ours (`true`) or `shutdown` completes (`false`).
async fn wait_for_leadership<S: Future<Output = ()>>(
    manager: &LeaseManager,
    mut shutdown: Pin<&mut Fuse<S>>,
) -> bool {
    let mut retry = Duration::ZERO;
    loop {
        tokio::select! {
            () = &mut shutdown => return false,
            changed = renew_after(manager, retry) => match changed {
                Ok(true) => return true,
                Ok(false) => retry = Duration::ZERO,
                Err(e) => {
                    retry = next_backoff(retry);
                    warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "leader election: Lease request failed");
                }
            },
        }
    }
}

/// One leadership term: runs the work while renewing and watching the Lease.
async fn run_term<S, W, Fut>(
    manager: &LeaseManager,
    lease_api: &Api<Lease>,
    config: &LeaseConfig,
    metrics: &Metrics,
    mut shutdown: Pin<&mut Fuse<S>>,
    work: W,
) -> LeadOutcome<Fut::Output>
where
    S: Future<Output = ()>,
    W: FnOnce(StopSignal) -> Fut,
    Fut: Future,
{
    enum End<T> {
        WorkDone(T),
        Shutdown,
        Lost(String),
    }
    let (stop_tx, stop) = StopSignal::new();
    let mut work = pin!(work(stop));
    let mut watchdog = pin!(watchdog(lease_api, config));
    let mut renewal = pin!(renew_after(manager, Duration::ZERO));
    let mut retry = Duration::ZERO;
    let end = loop {
        tokio::select! {
            out = &mut work => break End::WorkDone(out),
            () = &mut shutdown => break End::Shutdown,
            reason = &mut watchdog => break End::Lost(reason),
            changed = &mut renewal => match changed {
                Ok(false) => break End::Lost("another replica holds the Lease".into()),
                Ok(true) => {
                    retry = Duration::ZERO;
                    renewal.set(renew_after(manager, retry));
                }
                Err(e) => {
                    retry = next_backoff(retry);
                    warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "leader election: renewing the Lease failed");
                    renewal.set(renew_after(manager, retry));
                }
            },
        }
    };

    match end {
        End::WorkDone(out) => {
            info!("leader work finished; releasing the Lease");
            LeadOutcome::Finished(out)
        }
        End::Shutdown => {
            info!("shutting down: stopping the leader work, then releasing the Lease");
            let _ = stop_tx.send(true);
            // Keep renewing while the work drains so that no other replica starts meanwhile.
            let drained = tokio::time::timeout(config.stop_timeout, async {
                loop {
                    tokio::select! {
                        out = &mut work => break out,
                        changed = &mut renewal => {
                            if let Err(e) = changed {
                                debug!(error = %e, "renewing the Lease while stopping failed");
                                retry = next_backoff(retry);
                            }
                            renewal.set(renew_after(manager, retry));
                        }
                    }
                }
            })
            .await;
            match drained {
                Ok(out) => LeadOutcome::Finished(out),
                Err(_) => {
                    warn!(
                        timeout_ms = config.stop_timeout.as_millis() as u64,
                        "leader work did not stop in time; dropping it"
                    );
                    LeadOutcome::StopTimedOut
                }
            }
        }
        End::Lost(reason) => {
            metrics.leader.set(0);
            warn!(%reason, "lost leadership: stopping the leader work");
            let _ = stop_tx.send(true);
            let out = tokio::time::timeout(config.stop_timeout, &mut work)
                .await
                .ok();
            if out.is_none() {
                warn!(
                    timeout_ms = config.stop_timeout.as_millis() as u64,
                    "leader work did not stop in time; dropping it"
                );
            }
            LeadOutcome::LeaseLost(out)
        }
    }
}

/// Sleeps `delay`, then waits for the next change of this manager's lock state (renewing the
/// lock meanwhile when held).
async fn renew_after(manager: &LeaseManager, delay: Duration) -> Result<bool, LeaseManagerError> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    manager.changed().await
}

/// 0 → 500 ms → 1 s → 2 s … capped at 10 s.
fn next_backoff(previous: Duration) -> Duration {
    if previous.is_zero() {
        Duration::from_millis(500)
    } else {
        (previous * 2).min(Duration::from_secs(10))
    }
}

/// Releases the Lease if this process still holds it: reads it, then clears the holder with a
/// merge patch carrying the read `resourceVersion` as a precondition, so a Lease another replica
/// took over in between is never cleared (the API server answers 409 instead). Bounded by
/// [`RELEASE_TIMEOUT`]; failures are logged (the Lease then expires on its own).
///
/// `LeaseManager::release` is not used: it trusts the manager's cached holder, which is stale
/// when the loss was detected by [`watchdog`], and would clear the new holder's Lease.
async fn release_if_held(api: &Api<Lease>, config: &LeaseConfig) {
    let attempt = async {
        let lease = api.get(&config.name).await?;
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(config.identity.as_str()) {
            return Ok::<bool, kube::Error>(false);
        }
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": lease.metadata.resource_version },
            "spec": {
                "holderIdentity": null,
                "acquireTime": null,
                "renewTime": null,
                "leaseDurationSeconds": null,
            },
        });
        api.patch(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(true)
    };
    match tokio::time::timeout(RELEASE_TIMEOUT, attempt).await {
        Ok(Ok(true)) => info!("released the Lease"),
        Ok(Ok(false)) => debug!("the Lease is not held by this process; nothing to release"),
        Ok(Err(e)) => warn!(error = %e, "releasing the Lease failed; it expires on its own"),
        Err(_) => warn!("releasing the Lease timed out; it expires on its own"),
    }
}

/// Independent check that the Lease is still ours and valid; completes (with the reason) when
/// less than [`LeaseConfig::safety_margin`] of validity can be confirmed.
///
/// The holder's `renewTime` was stamped with this process's own clock, so comparing it with
/// `SystemTime::now()` is skew-free.
async fn watchdog(api: &Api<Lease>, config: &LeaseConfig) -> String {
    let duration = Duration::from_secs(config.duration_secs);
    let margin = config.safety_margin();
    // Became leader just now: the acquisition stamped renewTime a moment ago.
    let mut expiry = Instant::now() + duration;
    let mut last_error = String::from("no renewal confirmed");
    loop {
        let now = Instant::now();
        let next = expiry
            .checked_sub(margin + WATCHDOG_REQUEST_TIMEOUT)
            .unwrap_or(now)
            .max(now + WATCHDOG_MIN_INTERVAL);
        tokio::time::sleep_until(next).await;
        match tokio::time::timeout(WATCHDOG_REQUEST_TIMEOUT, api.get(&config.name)).await {
            Ok(Ok(lease)) => {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
                    return format!(
                        "the Lease is held by {:?}",
                        spec.holder_identity.unwrap_or_default()
                    );
                }
                if let Some(renewed) = spec.renew_time {
                    let valid_until = SystemTime::from(renewed.0) + duration;
                    let left = valid_until
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    expiry = Instant::now() + left;
                    last_error = "the last renewal is too old".into();
                }
            }
            Ok(Err(e)) => last_error = format!("reading the Lease failed: {e}"),
            Err(_) => last_error = "reading the Lease timed out".into(),
        }
        if expiry <= Instant::now() + margin {
            return format!("could not confirm a Lease renewal in time ({last_error})");
        }
    }
}
