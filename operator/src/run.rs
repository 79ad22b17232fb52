//! The `run` command as a library function: startup checks, the HTTP server (`/metrics`,
//! `/healthz`, `/readyz`), leader election and the controller, until the caller's shutdown
//! signal. The binary only parses flags, reads the pod's environment and calls [`run`].
//!
//! Startup fails fast (an error naming the fix) when the `TransactionPipeline` CRD is not
//! installed, when `--apply-crd` cannot apply it, or, on the first term, when the Lease cannot
//! be read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker_admin::BrokerAdmin;
#[cfg(doc)]
use crate::broker_admin::HttpBrokerAdmin;
use crate::controller;
use crate::crd::TransactionPipeline;
use crate::lease::{self, LeadOutcome, LeaseConfig, StopSignal};
use crate::render::FIELD_MANAGER;
use crate::telemetry::{self, Metrics};

/// Shown (and `run` fails) when the CRD is missing.
pub const CRD_MISSING: &str = "the TransactionPipeline CRD is not installed: run `txpipe-operator crd | kubectl apply --server-side -f -` or start with --apply-crd";
/// Bound of the startup API requests (CRD check), so a hanging API server fails the start.
const STARTUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `--apply-crd` waits for the applied CRD to become `Established`.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while waiting for the CRD to become `Established`.
const CRD_ESTABLISHED_POLL: Duration = Duration::from_secs(1);
/// Pause before standing by again when the Lease cannot be read after a lost term.
const LEASE_RETRY: Duration = Duration::from_secs(5);
/// How long the HTTP server may take to finish in-flight requests at shutdown.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of [`run`] (the binary fills them from flags and the pod's environment).
#[derive(Clone)]
pub struct RunConfig {
    /// Watch only this namespace (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Listen address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: SocketAddr,
    /// Leader election through this Lease; `None` runs the controller right away.
    pub lease: Option<LeaseConfig>,
    /// Server-side apply the operator's own CRD before the check.
    pub apply_crd: bool,
    /// Reporting instance of the Events (the operator's pod name).
    pub instance: Option<String>,
    /// Client of the brokers' admin API (e.g. [`HttpBrokerAdmin`], with the operator's TLS
    /// identity when the brokers require one).
    pub admin: Arc<dyn BrokerAdmin>,
}

/// Runs the operator until `terminate` fires (SIGTERM/SIGINT in the binary): applies and/or
/// checks the CRD, serves the HTTP endpoints (Ready once the checks passed, also on a
/// standby), then runs the controller, under leader election when [`RunConfig::lease`] is set.
///
/// Errors: the CRD is missing ([`CRD_MISSING`]) or cannot be applied, the listener cannot be
/// bound, the first Lease request fails, or the controller stops without being asked to.
pub async fn run(config: RunConfig, client: Client, terminate: StopSignal) -> anyhow::Result<()> {
    if config.apply_crd {
        apply_crd(&client).await?;
    }
    ensure_crd_installed(&client, config.namespace.as_deref()).await?;

    let metrics = Metrics::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (server_stop_tx, server_stop) = StopSignal::new();
    let listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener {}", config.metrics_listen))?;
    info!(addr = %config.metrics_listen, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(telemetry::serve(
        listener,
        metrics.clone(),
        ready_rx,
        server_stop.wait(),
    ));

    // Ready once the startup checks passed: this replica now either runs the controller or
    // stands by for the Lease. A standby must be Ready too, or a rolling update of the
    // Deployment (maxUnavailable 0) would wait forever for a pod that cannot lead while the
    // old one holds the Lease.
    let _ = ready_tx.send(true);
    let runner = ControllerRunner {
        client: client.clone(),
        namespace: config.namespace.clone(),
        metrics: metrics.clone(),
        instance: config.instance.clone(),
        admin: Arc::clone(&config.admin),
    };
    let result = match &config.lease {
        Some(lease_config) => {
            run_with_leader_election(&client, &runner, &metrics, lease_config, &terminate).await
        }
        None => runner
            .run(terminate.clone())
            .await
            .and_then(|()| expect_terminated(&terminate)),
    };

    let _ = ready_tx.send(false);
    let _ = server_stop_tx.send(true);
    match tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "the HTTP server failed"),
        Ok(Err(e)) => warn!(error = %e, "the HTTP server task panicked"),
        Err(_) => warn!("the HTTP server did not stop in time"),
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

/// What the controller needs, to start it once per leadership term.
#[derive(Clone)]
struct ControllerRunner {
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    instance: Option<String>,
    admin: Arc<dyn BrokerAdmin>,
}

impl ControllerRunner {
    /// Runs the reconcile controller until `stop` fires.
    async fn run(self, stop: StopSignal) -> anyhow::Result<()> {
        let ctx = Arc::new(controller::Context::new(
            self.client,
            self.admin,
            self.metrics,
            self.instance,
        ));
        controller::run(ctx, self.namespace, stop.wait()).await
    }
}

/// Stands by for the Lease and runs the controller while leading; after a lost Lease, stands
/// by again. Returns when the process is asked to stop or the controller fails.
async fn run_with_leader_election(
    client: &Client,
    runner: &ControllerRunner,
    metrics: &Metrics,
    config: &LeaseConfig,
    terminate: &StopSignal,
) -> anyhow::Result<()> {
    let mut first_term = true;
    loop {
        let outcome = lease::lead(
            client.clone(),
            config,
            metrics,
            terminate.clone().wait(),
            |stop| runner.clone().run(stop),
        )
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // At startup a Lease error (missing RBAC, no API server) fails fast; after a lost
            // term it is most likely the outage that cost the Lease: retry.
            Err(e) if first_term => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in_s = LEASE_RETRY.as_secs(), "leader election failed");
                tokio::select! {
                    () = terminate.clone().wait() => return Ok(()),
                    () = tokio::time::sleep(LEASE_RETRY) => continue,
                }
            }
        };
        first_term = false;
        match outcome {
            LeadOutcome::NotLeader => return Ok(()),
            LeadOutcome::Finished(result) => {
                return result.and_then(|()| expect_terminated(terminate));
            }
            LeadOutcome::StopTimedOut => {
                warn!("the controller did not stop in time");
                return Ok(());
            }
            LeadOutcome::LeaseLost(result) => {
                if let Some(Err(e)) = result {
                    warn!(error = %format!("{e:#}"), "the controller failed while stopping");
                }
                if terminate.is_stopped() {
                    return Ok(());
                }
                warn!("lost the leader Lease: standing by for the next term");
            }
        }
    }
}

/// The controller returned `Ok`: fine when shutting down, an error otherwise.
fn expect_terminated(terminate: &StopSignal) -> anyhow::Result<()> {
    if terminate.is_stopped() {
        Ok(())
    } else {
        bail!("the controller stopped unexpectedly")
    }
}

/// Fails with [`CRD_MISSING`] when listing TransactionPipelines (in `namespace`, or in all
/// namespaces) answers 404; bounded by a 30 s timeout.
pub async fn ensure_crd_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api: Api<TransactionPipeline> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let listed = tokio::time::timeout(
        STARTUP_REQUEST_TIMEOUT,
        api.list_metadata(&ListParams::default().limit(1)),
    )
    .await
    .context("listing TransactionPipelines to check the CRD: the API server did not answer")?;
    match listed {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(CRD_MISSING),
        Err(e) => Err(e).context("listing TransactionPipelines to check that the CRD is installed"),
    }
}

/// Server-side applies the operator's CRD (field manager [`FIELD_MANAGER`], forced) and waits
/// up to 60 s until the API server reports it `Established`.
pub async fn apply_crd(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = TransactionPipeline::crd();
    let name = crd
        .metadata
        .name
        .clone()
        .context("the generated CRD has no name")?;
    tokio::time::timeout(
        STARTUP_REQUEST_TIMEOUT,
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        ),
    )
    .await
    .with_context(|| format!("applying CRD {name}: the API server did not answer"))?
    .with_context(|| {
        format!(
            "applying CRD {name} (--apply-crd needs the txpipe-operator-crd-manage ClusterRole)"
        )
    })?;
    info!(crd = %name, "applied the CRD; waiting until it is established");
    let deadline = tokio::time::Instant::now() + CRD_ESTABLISHED_TIMEOUT;
    loop {
        let current = tokio::time::timeout(STARTUP_REQUEST_TIMEOUT, api.get(&name))
            .await
            .with_context(|| format!("reading CRD {name}: the API server did not answer"))?
            .with_context(|| format!("reading CRD {name}"))?;
        let established = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            info!(crd = %name, "the CRD is established");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "CRD {name} was applied but is not Established after {} s",
                CRD_ESTABLISHED_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(CRD_ESTABLISHED_POLL).await;
    }
}
