//! `txpipe-worker`: runs a fraud-scoring worker, or `bench-stages` to print per-stage CPU cost.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use txpipe_worker::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "txpipe-worker",
    version,
    about = "txpipe fraud-scoring worker",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints the measured CPU cost of each scoring stage (release build recommended).
    BenchStages {
        /// Transactions per stage pass.
        #[arg(long, env = "WORKER_BENCH_COUNT", default_value_t = 50_000)]
        count: usize,
        /// Also time the vector models' inference (`builtin:ulb-lr`, `builtin:ulb-gbt`, or
        /// just `--model` when it is a vector model) over the rows of this pre-featurised CSV
        /// (e.g. producer/testdata/ulb-creditcard-excerpt.csv), cycled to `--count`.
        #[arg(long)]
        vector_csv: Option<std::path::PathBuf>,
        #[command(flatten)]
        config: Config,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace dump.
            eprintln!("txpipe-worker: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::BenchStages {
            count,
            vector_csv,
            config,
        }) => {
            use txpipe_worker::bench;
            use txpipe_worker::vector::VectorModel;
            init_tracing(config.log_format);
            config.validate()?;
            let key = config.pan_keyring()?;
            let bench_key = config.pan_keyring()?.into_current();
            let scorer = config.scorer(key)?;
            let card_model_us = if scorer.vector_model().is_none() {
                let report =
                    bench::bench_stages(&scorer, &bench_key, count, config.issuer_latency())?;
                print!("{}", report.render());
                report
                    .stages
                    .iter()
                    .find(|s| s.stage == "model")
                    .map(|s| s.cpu_us)
            } else if vector_csv.is_none() {
                bail!("--model is a vector model: give --vector-csv with rows of its feature set");
            } else {
                None
            };
            if let Some(path) = vector_csv {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let models: Vec<VectorModel> = match scorer.vector_model() {
                    Some(v) => vec![v.clone()],
                    None => ["ulb-lr", "ulb-gbt"]
                        .iter()
                        .filter_map(|n| VectorModel::builtin(n))
                        .collect(),
                };
                println!(
                    "vector models over {} ({count} predictions each):",
                    path.display()
                );
                for m in &models {
                    let rows = bench::read_feature_csv(&text, m.features())
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let c = bench::bench_vector_model(m, &rows, count);
                    let vs_card = card_model_us
                        .map(|us| format!(", {:.2}x the card model stage", c.cpu_ns / 1e3 / us))
                        .unwrap_or_default();
                    println!(
                        "  {:<14} {:<27} {:>9.0} ns/tx  {:>12.0} tx/s per CPU{vs_card}",
                        c.model_version,
                        c.kind,
                        c.cpu_ns,
                        1e9 / c.cpu_ns.max(1e-9)
                    );
                }
            }
            Ok(())
        }
        None => {
            let config = cli.config;
            init_tracing(config.log_format);
            config.validate()?;
            // One runtime thread: the worker runs under a 0.5-CPU quota, where more threads
            // only add context switches; scoring is done in chunks between I/O events.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.admin_listen)
                    .await
                    .with_context(|| {
                        format!("binding the admin address {}", config.admin_listen)
                    })?;
                let stats = txpipe_worker::run(config, listener, shutdown_signal()).await?;
                tracing::info!(?stats, "exiting");
                anyhow::Ok(())
            })
        }
    }
}
