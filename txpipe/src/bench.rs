//! Benchmarks that print figures.
//!
//! **Broker** (`txpipe bench broker`): produce + consume + ack of fixed-size messages through
//! txpipe with `--replicas` broker replicas and, in the same command, through NATS JetStream
//! (Debian `nats-server`) with the same number of servers: file storage, work-queue stream
//! with that many replicas (a three-server cluster with routes on loopback for R3), durable
//! pull consumer with explicit acks, same message count, message size and in-flight window.
//! Prints both rates and their ratio. Both runs publish from one task with a bounded number
//! of unacknowledged publishes and consume from one task that acks every message; the clock
//! runs from the first publish until the last message is acked by the consumer.
//!
//! **Failover** (`txpipe bench failover`, [`failover`]): kills, pauses and partitions of a
//! leader or a follower under a continuous producer; time to a new leader and to the first
//! acknowledged produce, and the leader changes each fault caused.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use tokio::process::{Child, Command};
use txpipe_client::broker::v1::{
    Ack, ConsumeRequest, Record, Subscribe, broker_client::BrokerClient, consume_request,
    consume_response,
};
use txpipe_client::produce::{Producer, ProducerConfig};
use txpipe_client::streams;

use crate::cluster::BrokerCluster;

mod failover;
use crate::supervisor::free_port;
pub use failover::{
    FailoverBenchArgs, FailoverFault, FailoverReport, FailoverSample, failover_bench,
};

/// Settings of `txpipe bench broker`.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerBenchArgs {
    /// Replicas of each system: 1 (one broker, one nats-server) or 3 (three txpipe replicas,
    /// a three-server NATS cluster with an R3 stream).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Messages per run.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Consumer in-flight window (txpipe window, NATS max_ack_pending).
    #[arg(long, default_value_t = 1000)]
    pub window: u32,
    /// Messages per produce batch (txpipe) — NATS publishes one message per request, pipelined.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Unacknowledged publishes allowed at once, in messages, for both systems.
    #[arg(long, default_value_t = 2000)]
    pub publish_window: usize,
    /// Path of nats-server (skip the NATS run when it cannot be found).
    #[arg(long, env = "NATS_SERVER", default_value = "nats-server")]
    pub nats_server: String,
    /// Also run txpipe with fsync disabled (like-for-like with a server that does not fsync).
    #[arg(long)]
    pub no_fsync_run: bool,
    /// Extra arguments passed to every txpipe broker replica.
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// "txpipe R3 (fsync before ack)", "nats-jetstream ... R3 ...", ...
    pub system: String,
    /// Messages acked by the consumer.
    pub messages: u64,
    /// Seconds from first publish to last ack.
    pub elapsed_s: f64,
    /// messages / elapsed_s.
    pub msgs_per_s: f64,
    /// CPU seconds of the server processes over the run, summed over replicas.
    pub server_cpu_s: f64,
    /// Peak RSS of the server processes, summed over replicas, MiB.
    pub server_peak_rss_mib: f64,
}

/// CPU seconds and peak RSS (MiB) of server process `pid` so far; zeros if it is gone.
fn server_usage(pid: u32) -> (f64, f64) {
    crate::procstat::sample(pid)
        .map(|s| {
            (
                s.cpu.as_secs_f64(),
                s.peak_rss_bytes as f64 / (1 << 20) as f64,
            )
        })
        .unwrap_or((0.0, 0.0))
}

/// Sum of [`server_usage`] over `pids`.
fn servers_usage(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|&p| server_usage(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Starts `replicas` txpipe brokers in `dir` and waits until every stream has a leader.
async fn start_txpipe(
    exe: &Path,
    dir: &Path,
    replicas: u32,
    extra: &[String],
) -> Result<BrokerCluster> {
    let mut cluster = BrokerCluster::new(exe, replicas as usize, dir, extra)?;
    cluster.start_all()?;
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .with_context(|| format!("starting txpipe brokers (logs in {})", dir.display()))?;
    Ok(cluster)
}

/// txpipe run (`exe` is the txpipe-broker binary): publish to `transactions` (the work-queue
/// stream) and consume it.
async fn run_txpipe(args: &BrokerBenchArgs, exe: &Path, fsync: bool) -> Result<BenchResult> {
    let dir = tempfile::tempdir()?;
    let mut extra = vec![format!("--fsync={fsync}")];
    extra.extend(args.broker_args.iter().cloned());
    let mut cluster = start_txpipe(exe, dir.path(), args.replicas, &extra).await?;
    let (leader, _) = cluster
        .leader_of(streams::TRANSACTIONS)
        .await
        .context("no leader of transactions")?;
    let leader_addr = format!("http://{}", cluster.nodes[leader].client_addr);
    let payload = vec![0xA5u8; args.size];
    let n = args.messages;

    // Consumer first (on the leader), so deliveries start as soon as records are committed.
    let ch = txpipe_client::connect::endpoint(&leader_addr)?
        .connect()
        .await?;
    let mut client = BrokerClient::new(ch).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<ConsumeRequest>(1024);
    tx.send(ConsumeRequest {
        kind: Some(consume_request::Kind::Subscribe(Subscribe {
            stream: streams::TRANSACTIONS.into(),
            group: String::new(),
            consumer_name: "bench".into(),
            window: args.window,
        })),
    })
    .await?;
    let mut inbound = client
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let consumer = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < n {
            let Some(msg) = inbound.next().await else {
                bail!("consume stream ended after {acked} acks")
            };
            if let Some(consume_response::Kind::Deliveries(d)) = msg?.kind {
                let offsets: Vec<u64> = d.deliveries.iter().map(|d| d.offset).collect();
                acked += offsets.len() as u64;
                tx.send(ConsumeRequest {
                    kind: Some(consume_request::Kind::Ack(Ack { offsets })),
                })
                .await?;
            }
        }
        Ok(acked)
    });

    // The leader first: the producer's router starts there.
    let mut addrs = vec![leader_addr.clone()];
    addrs.extend(
        cluster
            .client_addrs()
            .into_iter()
            .map(|a| format!("http://{a}"))
            .filter(|a| *a != leader_addr),
    );
    let mut cfg = ProducerConfig::new(addrs, streams::TRANSACTIONS);
    cfg.max_in_flight = (args.publish_window / args.batch.max(1)).max(1);
    let producer = Producer::connect(cfg).await?;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let k = (n - sent).min(args.batch as u64);
        let records = (0..k)
            .map(|i| Record {
                key: format!("m{}", sent + i).into_bytes().into(),
                value: payload.clone().into(),
                timestamp_us: 0,
            })
            .collect();
        producer.send(records).await?;
        sent += k;
    }
    producer.close().await?;
    let acked = consumer.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.proc.pid()).collect();
    let (cpu, rss) = servers_usage(&pids);
    cluster.stop_all(Duration::from_secs(5)).await;
    Ok(BenchResult {
        system: format!(
            "txpipe R{} ({})",
            args.replicas,
            if fsync {
                "fsync before ack"
            } else {
                "no fsync"
            }
        ),
        messages: acked,
        elapsed_s: elapsed,
        msgs_per_s: acked as f64 / elapsed,
        server_cpu_s: cpu,
        server_peak_rss_mib: rss,
    })
}

/// The configuration of NATS server `i` of `n`: client port `ports[i].0`, JetStream store in
/// `store`, and with `n > 1` a cluster listener on `ports[i].1` with routes to every server.
pub fn nats_config(i: usize, ports: &[(u16, u16)], store: &Path) -> String {
    let mut c = format!(
        "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n",
        ports[i].0,
        store.display()
    );
    if ports.len() > 1 {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            ports[i].1,
            routes.join(", ")
        ));
    }
    c
}

/// `nats-server --version` as "2.9.10", or "?".
async fn nats_version(exe: &str) -> String {
    match Command::new(exe).arg("--version").output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .last()
            .unwrap_or("?")
            .trim_start_matches('v')
            .to_string(),
        Err(_) => "?".into(),
    }
}

/// NATS run: JetStream file stream with work-queue retention and `replicas` replicas on as
/// many servers, durable pull consumer.
async fn run_nats(args: &BrokerBenchArgs) -> Result<BenchResult> {
    use async_nats::jetstream::{self, consumer, stream};
    let version = nats_version(&args.nats_server).await;
    let dir = tempfile::tempdir()?;
    let n_servers = args.replicas as usize;
    let mut ports = Vec::new();
    for _ in 0..n_servers {
        ports.push((free_port()?, free_port()?));
    }
    let mut children: Vec<Child> = Vec::new();
    for i in 0..n_servers {
        let conf = dir.path().join(format!("nats-{i}.conf"));
        std::fs::write(
            &conf,
            nats_config(i, &ports, &dir.path().join(format!("js-{i}"))),
        )?;
        let log = std::fs::File::create(dir.path().join(format!("nats-{i}.log")))?;
        children.push(
            Command::new(&args.nats_server)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", args.nats_server))?,
        );
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap_or(0)).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
        .collect();
    let began = Instant::now();
    let client = loop {
        match async_nats::connect(urls.clone()).await {
            Ok(c) => break c,
            Err(e) if began.elapsed() > Duration::from_secs(20) => {
                bail!("nats-server did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let js = jetstream::new(client);
    // A cluster answers "JetStream system temporarily unavailable" until its meta leader is
    // elected: retry until the stream exists.
    let st = loop {
        match js
            .create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench.>".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: n_servers,
                ..Default::default()
            })
            .await
        {
            Ok(s) => break s,
            Err(e) if began.elapsed() > Duration::from_secs(60) => {
                bail!("creating the NATS stream: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let cons = st
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: i64::from(args.window),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the NATS consumer: {e}"))?;
    let n = args.messages;
    let window = args.window as usize;
    let consumer_task = tokio::spawn(async move {
        let mut msgs = cons
            .stream()
            .max_messages_per_batch(window)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("NATS consume: {e}"))?;
        let mut acked = 0u64;
        while acked < n {
            let Some(m) = msgs.next().await else {
                bail!("NATS message stream ended after {acked}")
            };
            let m = m.map_err(|e| anyhow::anyhow!("NATS message: {e}"))?;
            m.ack()
                .await
                .map_err(|e| anyhow::anyhow!("NATS ack: {e}"))?;
            acked += 1;
        }
        Ok::<u64, anyhow::Error>(acked)
    });
    let payload = bytes::Bytes::from(vec![0xA5u8; args.size]);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let fut = js
            .publish(format!("bench.{}", i % 16), payload.clone())
            .await
            .map_err(|e| anyhow::anyhow!("NATS publish: {e}"))?;
        pending.push_back(fut);
        if pending.len() >= args.publish_window
            && let Some(f) = pending.pop_front()
        {
            f.await
                .map_err(|e| anyhow::anyhow!("NATS publish ack: {e}"))?;
        }
    }
    for f in pending {
        f.await
            .map_err(|e| anyhow::anyhow!("NATS publish ack: {e}"))?;
    }
    let acked = consumer_task.await??;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, rss) = servers_usage(&pids);
    for c in children.iter_mut() {
        let _ = c.kill().await;
    }
    Ok(BenchResult {
        system: format!("nats-jetstream {version} (file, R{n_servers}, work queue)"),
        messages: acked,
        elapsed_s: elapsed,
        msgs_per_s: acked as f64 / elapsed,
        server_cpu_s: cpu,
        server_peak_rss_mib: rss,
    })
}

/// Runs the broker benchmark and prints a table.
pub async fn broker_bench(args: BrokerBenchArgs, exe: PathBuf) -> Result<Vec<BenchResult>> {
    if !matches!(args.replicas, 1 | 3) {
        bail!("--replicas must be 1 or 3, got {}", args.replicas);
    }
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let exe = crate::supervisor::service_binary(&bin_dir, "broker")?;
    let mut results = vec![run_txpipe(&args, &exe, true).await?];
    if args.no_fsync_run {
        results.push(run_txpipe(&args, &exe, false).await?);
    }
    match run_nats(&args).await {
        Ok(r) => results.push(r),
        Err(e) => eprintln!("txpipe bench: NATS run skipped: {e:#}"),
    }
    println!(
        "broker benchmark: {} replica(s), {} messages of {} bytes, window {}, publish window {}",
        args.replicas, args.messages, args.size, args.window, args.publish_window
    );
    println!(
        "{:<44} {:>12} {:>10} {:>12} {:>10}",
        "system", "msgs/s", "seconds", "server cpu s", "RSS MiB"
    );
    for r in &results {
        println!(
            "{:<44} {:>12.0} {:>10.2} {:>12.2} {:>10.1}",
            r.system, r.msgs_per_s, r.elapsed_s, r.server_cpu_s, r.server_peak_rss_mib
        );
    }
    if let Some(nats) = results.iter().find(|r| r.system.starts_with("nats")) {
        for r in results.iter().filter(|r| r.system.starts_with("txpipe")) {
            println!(
                "ratio {} / NATS R{}: {:.2}x",
                r.system,
                args.replicas,
                r.msgs_per_s / nats.msgs_per_s
            );
        }
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(results)
}

/// Nearest-rank percentile of `sorted` (ascending), `q` in 0..=1; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.99), 20.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn nats_cluster_configs_route_to_the_other_servers() {
        let ports = [(4001, 6001), (4002, 6002), (4003, 6003)];
        let c = nats_config(1, &ports, Path::new("/tmp/js-1"));
        assert!(c.contains("server_name: n1"));
        assert!(c.contains("listen: 127.0.0.1:4002"));
        assert!(c.contains("store_dir: \"/tmp/js-1\""));
        assert!(c.contains("listen: 127.0.0.1:6002"));
        assert!(c.contains("nats-route://127.0.0.1:6001, nats-route://127.0.0.1:6003"));
        let single = nats_config(0, &ports[..1], Path::new("/tmp/js"));
        assert!(!single.contains("cluster"));
    }
}
