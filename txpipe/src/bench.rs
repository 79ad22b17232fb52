//! Broker benchmark: produce + consume + ack of fixed-size messages through a txpipe broker and,
//! in the same command, through a NATS JetStream server (Debian `nats-server`, file storage,
//! work-queue stream, durable pull consumer with explicit acks), with the same message count,
//! message size and in-flight window. Prints both rates and their ratio.
//!
//! Both runs publish from one task with a bounded number of unacknowledged publishes and
//! consume from one task that acks every message; the clock runs from the first publish until
//! the last message is acked by the consumer.

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

use crate::local::{broker_answers, free_port};

/// Settings of `txpipe bench broker`.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerBenchArgs {
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
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// "txpipe (fsync)", "nats-jetstream", ...
    pub system: String,
    /// Messages acked by the consumer.
    pub messages: u64,
    /// Seconds from first publish to last ack.
    pub elapsed_s: f64,
    /// messages / elapsed_s.
    pub msgs_per_s: f64,
    /// CPU seconds of the server process over the run.
    pub server_cpu_s: f64,
    /// Peak RSS of the server, MiB.
    pub server_peak_rss_mib: f64,
}

struct Server {
    child: Child,
    pid: u32,
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

async fn start_txpipe(exe: &Path, dir: &Path, fsync: bool) -> Result<(Server, String)> {
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("broker.log"))?;
    let child = Command::new(exe)
        .args([
            format!("--listen=127.0.0.1:{port}"),
            format!("--admin-listen=127.0.0.1:{}", free_port()?),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--fsync={fsync}"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the txpipe broker")?;
    let pid = child.id().unwrap_or(0);
    let addr = format!("http://127.0.0.1:{port}");
    let began = Instant::now();
    loop {
        if broker_answers(&addr).await.is_some() {
            break;
        }
        if began.elapsed() > Duration::from_secs(30) {
            bail!(
                "txpipe broker did not start; see {}",
                dir.join("broker.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((Server { child, pid }, addr))
}

/// txpipe run (`exe` is the txpipe-broker binary): publish to `transactions` (the work-queue stream) and consume it.
async fn run_txpipe(args: &BrokerBenchArgs, exe: &Path, fsync: bool) -> Result<BenchResult> {
    let dir = tempfile::tempdir()?;
    let (mut server, addr) = start_txpipe(exe, dir.path(), fsync).await?;
    let payload = vec![0xA5u8; args.size];
    let n = args.messages;

    // Consumer first, so deliveries start as soon as records are durable.
    let ch = txpipe_client::connect::endpoint(&addr)?.connect().await?;
    let mut client = BrokerClient::new(ch).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<ConsumeRequest>(1024);
    tx.send(ConsumeRequest {
        kind: Some(consume_request::Kind::Subscribe(Subscribe {
            stream: "transactions".into(),
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

    let mut cfg = ProducerConfig::new(vec![addr.clone()], "transactions");
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
    let (cpu, rss) = server_usage(server.pid);
    let _ = server.child.kill().await;
    Ok(BenchResult {
        system: if fsync {
            "txpipe (fsync before ack)".into()
        } else {
            "txpipe (no fsync)".into()
        },
        messages: acked,
        elapsed_s: elapsed,
        msgs_per_s: acked as f64 / elapsed,
        server_cpu_s: cpu,
        server_peak_rss_mib: rss,
    })
}

/// NATS run: JetStream file stream with work-queue retention, durable pull consumer.
async fn run_nats(args: &BrokerBenchArgs) -> Result<BenchResult> {
    use async_nats::jetstream::{self, consumer, stream};
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n",
            dir.path().join("js").display()
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("nats.log"))?;
    let mut child = Command::new(&args.nats_server)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.nats_server))?;
    let pid = child.id().unwrap_or(0);
    let url = format!("nats://127.0.0.1:{port}");
    let began = Instant::now();
    let client = loop {
        match async_nats::connect(&url).await {
            Ok(c) => break c,
            Err(e) if began.elapsed() > Duration::from_secs(20) => {
                bail!("nats-server did not start: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let js = jetstream::new(client);
    let st = js
        .create_stream(stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the NATS stream: {e}"))?;
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
    let (cpu, rss) = server_usage(pid);
    let _ = child.kill().await;
    Ok(BenchResult {
        system: "nats-jetstream 2.9 (file, R1, work queue)".into(),
        messages: acked,
        elapsed_s: elapsed,
        msgs_per_s: acked as f64 / elapsed,
        server_cpu_s: cpu,
        server_peak_rss_mib: rss,
    })
}

/// Runs the broker benchmark and prints a table.
pub async fn broker_bench(args: BrokerBenchArgs, exe: PathBuf) -> Result<Vec<BenchResult>> {
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let exe = crate::local::service_binary(&bin_dir, "broker")?;
    let mut results = vec![run_txpipe(&args, &exe, true).await?];
    if args.no_fsync_run {
        results.push(run_txpipe(&args, &exe, false).await?);
    }
    match run_nats(&args).await {
        Ok(r) => results.push(r),
        Err(e) => eprintln!("txpipe bench: NATS run skipped: {e:#}"),
    }
    println!(
        "broker benchmark: {} messages of {} bytes, window {}, publish window {}",
        args.messages, args.size, args.window, args.publish_window
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
                "ratio {} / NATS: {:.2}x",
                r.system,
                r.msgs_per_s / nats.msgs_per_s
            );
        }
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(results)
}
