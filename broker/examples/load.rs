//! Load generator for a running broker: produces `--messages` records of `--size` bytes to
//! `transactions` through the idempotent producer while `--consumers` consumers ack every
//! delivery, then prints the produce and end-to-end (acked) rates.
//!
//! `cargo run --release -p txpipe-broker --example load -- --addr 127.0.0.1:9100`

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use tokio_stream::StreamExt;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::broker::v1::*;
use txpipe_client::produce::{Producer, ProducerConfig};

#[derive(Parser)]
struct Args {
    /// Broker gRPC address.
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: String,
    /// Records to produce.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Value size, bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Records per produce batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Window per consumer.
    #[arg(long, default_value_t = 1000)]
    window: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let url = format!("http://{}", a.addr);
    let start_end = {
        let mut c = BrokerClient::connect(url.clone())
            .await
            .context("connect")?;
        c.get_stream(GetStreamRequest {
            stream: "transactions".into(),
        })
        .await?
        .into_inner()
        .stream
        .unwrap_or_default()
        .end_offset
    };
    let target = start_end + a.messages as u64;
    let began = Instant::now();
    let mut consumers = Vec::new();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for i in 0..a.consumers {
        let url = url.clone();
        let window = a.window;
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            let mut c = BrokerClient::connect(url)
                .await?
                .max_decoding_message_size(64 << 20);
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tx.send(ConsumeRequest {
                kind: Some(consume_request::Kind::Subscribe(Subscribe {
                    stream: "transactions".into(),
                    group: String::new(),
                    consumer_name: format!("load-{i}"),
                    window,
                })),
            })
            .await?;
            let mut inbound = c
                .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(msg) = inbound.next().await {
                if let Some(consume_response::Kind::Deliveries(d)) = msg?.kind {
                    let offsets: Vec<u64> = d.deliveries.iter().map(|d| d.offset).collect();
                    acked.fetch_add(offsets.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    tx.send(ConsumeRequest {
                        kind: Some(consume_request::Kind::Ack(Ack { offsets })),
                    })
                    .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut cfg = ProducerConfig::new(vec![url.clone()], "transactions");
    cfg.max_in_flight = 16;
    let producer = Producer::connect(cfg).await?;
    let value = Bytes::from(vec![b'x'; a.size]);
    let mut sent = 0usize;
    while sent < a.messages {
        let n = a.batch.min(a.messages - sent);
        let recs = (sent..sent + n)
            .map(|i| Record {
                key: Bytes::from(format!("tx-{i:020}")),
                value: value.clone(),
                timestamp_us: 0,
            })
            .collect();
        drop(producer.send(recs).await?);
        sent += n;
    }
    let stats = producer.close().await?;
    let produce_s = began.elapsed().as_secs_f64();
    println!(
        "produced {} records in {produce_s:.2} s: {:.0} records/s",
        stats.records_stored,
        stats.records_stored as f64 / produce_s
    );
    let mut c = BrokerClient::connect(url.clone()).await?;
    loop {
        let i = c
            .get_stream(GetStreamRequest {
                stream: "transactions".into(),
            })
            .await?
            .into_inner()
            .stream
            .unwrap_or_default();
        if i.ack_floor >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total_s = began.elapsed().as_secs_f64();
    println!(
        "deliveries: {}",
        acked.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "produced+delivered+acked (durable) {} records in {total_s:.2} s: {:.0} records/s",
        a.messages,
        a.messages as f64 / total_s
    );
    for c in consumers {
        c.abort();
    }
    Ok(())
}
