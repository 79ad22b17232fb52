//! `txpipe-operator`: the Kubernetes operator for `TransactionPipeline` resources.
//!
//! Subcommands:
//! - `run` (the default): reconcile pipelines; serves `/metrics`, `/healthz`, `/readyz`.
//! - `crd`: print the CustomResourceDefinition YAML (the content of `crds/`).
//! - `render -f FILE`: print every object the operator would apply for a pipeline manifest.
//!
//! Every `run` flag has an `OPERATOR_*` environment variable.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand};
use kube::{Client, CustomResourceExt};
use tracing::{error, info};
use txpipe_operator::broker_admin::HttpBrokerAdmin;
use txpipe_operator::crd::TransactionPipeline;
use txpipe_operator::lease::{self, LeaseConfig, StopSignal};
use txpipe_operator::render;
use txpipe_operator::run::RunConfig;
use txpipe_operator::telemetry::{self, LogFormat};

/// Namespace file of the pod's service account token mount.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

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

#[derive(Args, Debug)]
struct RenderArgs {
    /// TransactionPipeline manifest (YAML or JSON); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Render as if the ServiceMonitor CRD (monitoring.coreos.com) were installed.
    #[arg(long)]
    service_monitor_available: bool,
    /// With `spec.tls.mode: managed`, also print the CA and certificate Secrets, issued from a
    /// throw-away CA (to show and validate their shape; the operator issues its own).
    #[arg(long)]
    tls_secrets: bool,
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
        tls_secrets_preview: args.tls_secrets,
        ..Default::default()
    };
    let yaml = render::render_manifests_yaml(&input, &ctx)?;
    print!("{yaml}");
    Ok(())
}

/// `run`: reads the pod's environment into a [`RunConfig`], installs the signal handler and
/// calls [`txpipe_operator::run::run`].
async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    let namespace = args.namespace.clone().filter(|n| !n.is_empty());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = namespace.as_deref().unwrap_or("<all namespaces>"),
        leader_election = args.leader_election,
        "starting txpipe-operator"
    );
    let lease = if args.leader_election {
        let lease_namespace = args
            .lease_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(own_namespace);
        Some(LeaseConfig::new(
            &args.lease_name,
            lease_namespace,
            args.lease_duration_secs,
        )?)
    } else {
        None
    };
    let config = RunConfig {
        namespace,
        metrics_listen: args.metrics_listen,
        lease,
        apply_crd: args.apply_crd,
        // Events name this pod as the reporting instance.
        instance: std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|n| !n.is_empty()),
        admin: Arc::new(HttpBrokerAdmin::with_tls(args.broker_tls.options()?)?),
    };
    let client = Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster service account or KUBECONFIG)")?;
    let terminate = spawn_signal_handler()?;
    txpipe_operator::run::run(config, client, terminate).await
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
