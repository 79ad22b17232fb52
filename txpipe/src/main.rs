//! `txpipe`: one binary for local mode (`txpipe run`), the audit (`txpipe audit`), the ledger
//! (`txpipe ledger`) and, as
//! subcommands, the broker, worker and producer services.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "txpipe",
    version,
    about = "Fault-tolerant card transaction pipeline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Run the whole pipeline on this machine (broker, workers, producer) and print the report.
    Run(Box<txpipe::local::LocalArgs>),
    /// Brokers in network namespaces under seeded partitions, pauses and kills, checked by an
    /// independent client (docs/nemesis.md). Exit codes: 0 passed, 1 violations, 2 error,
    /// 3 cannot run here (not root, no network namespaces).
    Nemesis(Box<txpipe::nemesis::NemesisArgs>),
    /// Audit a running broker: every produced transaction has exactly one decision.
    Audit {
        /// Broker addresses, comma-separated host:port: every replica (each read goes to its
        /// stream's leader).
        #[arg(long, env = "TXPIPE_BROKERS", default_value = "127.0.0.1:9100")]
        brokers: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Mutual TLS towards the brokers.
        #[command(flatten)]
        tls: txpipe_client::tls::TlsArgs,
    },
    /// The ledger: accounts and transfers on the brokers' ledger shards (docs/ledger.md).
    Ledger(txpipe::ledger::LedgerArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Produce + consume + ack through the broker, next to NATS JetStream.
    Broker(txpipe::bench::BrokerBenchArgs),
    /// Time from a leader kill to the first acknowledged produce on the new leader.
    Failover(txpipe::bench::FailoverBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("txpipe: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txpipe: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run(args) => {
            let exe = std::env::current_exe().context("locating the txpipe binary")?;
            // On SIGTERM/SIGINT the run is dropped, which kills every child process.
            let report = tokio::select! {
                r = txpipe::local::run_local(*args, exe) => r?,
                sig = shutdown_signal() => anyhow::bail!("{sig} received; stopped every process of the run"),
            };
            print!("{}", txpipe::report::render(&report));
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Nemesis(args) => {
            use txpipe::nemesis::{Outcome, render, run_nemesis};
            let exe = std::env::current_exe().context("locating the txpipe binary")?;
            // On SIGTERM/SIGINT the run is dropped: its processes are killed and its
            // namespaces, bridge and FORWARD rule removed.
            let outcome = tokio::select! {
                r = run_nemesis(*args, exe) => r?,
                sig = shutdown_signal() => anyhow::bail!("{sig} received; stopped the nemesis and removed its namespaces"),
            };
            match outcome {
                Outcome::Skipped(why) => {
                    eprintln!("txpipe nemesis: skipped: {why}");
                    Ok(ExitCode::from(3))
                }
                Outcome::Cleaned(removed) => {
                    eprintln!("txpipe nemesis: removed {} leftover(s)", removed.len());
                    for r in removed {
                        eprintln!("  {r}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::Checked(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    eprint!("{}", render(&report));
                    Ok(if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
        Cmd::Bench(BenchCmd::Broker(args)) => {
            let exe = std::env::current_exe().context("locating the txpipe binary")?;
            txpipe::bench::broker_bench(args, exe).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(BenchCmd::Failover(args)) => {
            let exe = std::env::current_exe().context("locating the txpipe binary")?;
            txpipe::bench::failover_bench(args, exe).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ledger(args) => {
            let plaintext = args.tls.options().is_ok_and(|t| t.is_none());
            let passed = txpipe::ledger::run(args)
                .await
                .map_err(|e| tls_hint(e, plaintext))?;
            Ok(if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Audit { brokers, json, tls } => {
            let addrs = txpipe_client::connect::parse_addrs(&brokers)?;
            let tls = tls.options().map_err(anyhow::Error::msg)?;
            let plaintext = tls.is_none();
            let report =
                txpipe::audit::run_audit_cluster(&addrs, std::time::Duration::from_secs(30), tls)
                    .await
                    .map_err(|e| tls_hint(e, plaintext))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", txpipe::audit::render(&report));
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `e` with a hint when a `plaintext` command failed the way a plaintext client fails
/// against a TLS broker (its HTTP/2 preface is not a TLS handshake): local mode's brokers
/// speak mutual TLS unless `--insecure`.
fn tls_hint(e: anyhow::Error, plaintext: bool) -> anyhow::Error {
    if plaintext && format!("{e:#}").contains("h2 protocol error") {
        anyhow::anyhow!(
            "{e:#}\nhint: the brokers may require mutual TLS (a local run does unless --insecure): pass --tls-ca-file, --tls-cert-file and --tls-key-file (for a local run: <run dir>/tls/ca.pem, reader.pem and reader-key.pem)"
        )
    } else {
        e
    }
}

/// Resolves with the name of the first SIGTERM or SIGINT received.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_command_refused_by_a_tls_broker_gets_a_hint() {
        let refused = || anyhow::anyhow!("answered Internal: h2 protocol error: http2 error");
        assert!(
            tls_hint(refused(), true)
                .to_string()
                .contains("--tls-ca-file")
        );
        assert!(!tls_hint(refused(), false).to_string().contains("hint"));
        let other = anyhow::anyhow!("stream not found");
        assert!(!tls_hint(other, true).to_string().contains("hint"));
    }
}
