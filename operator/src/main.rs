//! `txpipe-operator`: the Kubernetes operator for `TransactionPipeline` resources.
//!
//! Subcommands:
//! - `run` (the default): reconcile pipelines; serves `/metrics`, `/healthz`, `/readyz`.
//! - `crd`: print the CustomResourceDefinition YAML (the content of `crds/`).
//! - `render -f FILE`: print every object the operator would apply for a pipeline manifest.
//!
//! Every `run` flag has an `OPERATOR_*` environment variable.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, Parser, Subcommand};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};
use txpipe_operator::broker_admin::HttpBrokerAdmin;
use txpipe_operator::controller;
use txpipe_operator::crd::TransactionPipeline;
use txpipe_operator::lease::{self, LeadOutcome, LeaseConfig, StopSignal};
use txpipe_operator::render;
use txpipe_operator::telemetry::{self, LogFormat, Metrics};

/// Field manager of the operator's server-side applies.
const FIELD_MANAGER: &str = "txpipe-operator";
/// Shown (and the process exits 1) when the CRD is missing.
const CRD_MISSING: &str = "the TransactionPipeline CRD is not installed: run `txpipe-operator crd | kubectl apply --server-side -f -` or start with --apply-crd";
/// Namespace file of the pod's service account token mount.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// Bound of the startup API requests (CRD check), so a hanging API server fails the start.
const STARTUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `--apply-crd` waits for the applied CRD to become `Established`.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before standing by again when the Lease cannot be read after a lost term.
const LEASE_RETRY: Duration = Duration::from_secs(5);
/// How long the HTTP server may take to finish in-flight requests at shutdown.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "txpipe-operator",
    version,
    about = "Kubernetes operator for txpipe TransactionPipeline resources",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `run` flags, accepted without the `run` subcommand too.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (the default when no subcommand is given).
    Run(RunArgs),
    /// Print the TransactionPipeline CustomResourceDefinition as YAML.
    Crd,
    /// Print, as a multi-document YAML stream, every object the operator would apply for the
    /// TransactionPipeline manifest in FILE.
    Render(RenderArgs),
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Watch only this namespace (namespace-scoped mode: a Role suffices, see
    /// manifests/rbac/namespaced-role.yaml). Default: all namespaces.
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Listen address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, env = "OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Run the controller only while holding the leader Lease (for several replicas).
    #[arg(
        long,
        env = "OPERATOR_LEADER_ELECTION",
        default_value_t = true,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "OPERATOR_LEASE_NAME", default_value = "txpipe-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease. Default: the pod's namespace (POD_NAMESPACE,
    /// else the service account's namespace file, else `default`).
    #[arg(long, env = "OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Lease validity after each renewal, seconds (renewed every 2/3 of it; a standby takes
    /// over this long after the leader stops renewing).
    #[arg(
        long,
        env = "OPERATOR_LEASE_DURATION_SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(lease::MIN_LEASE_DURATION_SECS..=3600)
    )]
    lease_duration_secs: u64,
    /// Server-side apply the operator's own CRD at start (for upgrades: Helm never upgrades
    /// crds/). Needs the txpipe-operator-crd-manage ClusterRole.
    #[arg(
        long,
        env = "OPERATOR_APPLY_CRD",
        default_value_t = false,
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    apply_crd: bool,
    /// Log format: text for terminals, json for the cluster.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Identity towards TLS brokers' admin ports.
    #[command(flatten)]
    broker_tls: txpipe_operator::broker_admin::BrokerTlsArgs,
}

/// The brokers' admin client of this process, set once by `run` from `--broker-tls-*` (a
/// static rather than one more parameter through the leader-election wiring).
static BROKER_ADMIN: std::sync::OnceLock<HttpBrokerAdmin> = std::sync::OnceLock::new();

#[derive(Args, Debug)]
struct RenderArgs {
    /// TransactionPipeline manifest (YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Render as if the ServiceMonitor CRD (monitoring.coreos.com) were installed.
    #[arg(long)]
    service_monitor_available: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Run(args) => match run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Crd => report(print_crd()),
        Command::Render(args) => report(print_render(&args)),
    }
}

/// Exit code of a command that does not log through `tracing`.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crd() -> anyhow::Result<()> {
    let yaml = serde_yaml::to_string(&TransactionPipeline::crd()).context("serializing the CRD")?;
    print!("{yaml}");
    Ok(())
}

fn print_render(args: &RenderArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let ctx = render::RenderContext {
        service_monitor_available: args.service_monitor_available,
        ..Default::default()
    };
    let yaml = render::render_manifests_yaml(&input, &ctx)?;
    print!("{yaml}");
    Ok(())
}

/// `run`: startup checks, HTTP server, leader election, controller, graceful shutdown.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    let _ = BROKER_ADMIN.set(HttpBrokerAdmin::with_tls(args.broker_tls.options()?)?);
    let namespace = args.namespace.clone().filter(|n| !n.is_empty());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = namespace.as_deref().unwrap_or("<all namespaces>"),
        leader_election = args.leader_election,
        "starting txpipe-operator"
    );

    let client = Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    if args.apply_crd {
        apply_crd(&client).await?;
    }
    ensure_crd_installed(&client, namespace.as_deref()).await?;

    let terminate = spawn_signal_handler()?;
    let metrics = Metrics::new();
    let (ready_tx, ready_rx) = watch::channel(false);
    let (server_stop_tx, server_stop) = StopSignal::new();
    let listener = TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener {}", args.metrics_listen))?;
    info!(addr = %args.metrics_listen, "serving /metrics, /healthz and /readyz");
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
    let result = if args.leader_election {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(own_namespace);
        let config = LeaseConfig::new(&args.lease_name, lease_namespace, args.lease_duration_secs)?;
        run_with_leader_election(&client, namespace, &metrics, &config, &terminate).await
    } else {
        run_controller(
            client.clone(),
            namespace,
            metrics.clone(),
            terminate.clone().wait(),
        )
        .await
        .and_then(|()| expect_terminated(&terminate))
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

/// Stands by for the Lease and runs the controller while leading; after a lost Lease, stands
/// by again. Returns when the process is asked to stop or the controller fails.
async fn run_with_leader_election(
    client: &Client,
    namespace: Option<String>,
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
            |stop| {
                run_controller(
                    client.clone(),
                    namespace.clone(),
                    metrics.clone(),
                    stop.wait(),
                )
            },
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

// ============================================================================================
// WIRING POINT: the only call into `txpipe_operator::controller`. Everything the controller
// needs is passed here: the client, the watched namespace (None = all namespaces), the
// metrics, and a future that completes when it must stop (SIGTERM/SIGINT or a lost Lease).
// ============================================================================================
/// Runs the reconcile controller until `shutdown` completes.
async fn run_controller(
    client: Client,
    namespace: Option<String>,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // Events name this pod as the reporting instance.
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|n| !n.is_empty());
    let ctx = Arc::new(controller::Context::new(
        client,
        Arc::new(BROKER_ADMIN.get().cloned().unwrap_or_default()),
        metrics,
        instance,
    ));
    controller::run(ctx, namespace, shutdown).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
fn spawn_signal_handler() -> anyhow::Result<StopSignal> {
    let (tx, stop) = StopSignal::new();
    #[cfg(unix)]
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        #[cfg(unix)]
        let term = sigterm.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = term => info!("SIGTERM received: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received: shutting down"),
        }
        let _ = tx.send(true);
    });
    Ok(stop)
}

/// The pod's namespace: `POD_NAMESPACE`, else the service account namespace file, else
/// `default`.
fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE)
                .ok()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "default".to_string())
}

/// Fails with [`CRD_MISSING`] when listing TransactionPipelines answers 404.
async fn ensure_crd_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
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

/// Server-side applies the operator's CRD (field manager `txpipe-operator`, forced) and waits
/// until the API server reports it `Established`.
async fn apply_crd(client: &Client) -> anyhow::Result<()> {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
