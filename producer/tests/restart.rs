//! Process level: the real `txpipe-producer` binary against an in-process broker (port 0, temp
//! directory), killed with SIGKILL mid-run and started again with the same command line; and a
//! second instance of the same name fencing the first (issue 12).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::transport::Channel;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::broker::v1::{FetchRequest, GetStreamRequest};
use txpipe_client::pipeline::v1::{Label, Transaction};

const WAIT: Duration = Duration::from_secs(60);

/// A single-node broker in this process, on loopback port 0.
async fn start_broker(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let listeners = txpipe_broker::Listeners {
        grpc: bind().await.unwrap(),
        peer: bind().await.unwrap(),
        admin: bind().await.unwrap(),
    };
    let addr = listeners.grpc.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = txpipe_broker::Config::new(dir);
    tokio::spawn(async move {
        txpipe_broker::run(config, listeners, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (addr, stop)
}

async fn client(addr: &str) -> BrokerClient<Channel> {
    let deadline = Instant::now() + WAIT;
    loop {
        match BrokerClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c.max_decoding_message_size(64 << 20),
            Err(e) if Instant::now() > deadline => panic!("broker unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// End offset of `stream`, once its leader answers.
async fn end_offset(c: &mut BrokerClient<Channel>, stream: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c
            .get_stream(GetStreamRequest {
                stream: stream.into(),
            })
            .await;
        match r {
            Ok(r) => return r.into_inner().stream.unwrap().end_offset,
            Err(e) if Instant::now() > deadline => panic!("GetStream {stream}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Polls until `stream` holds more than `n` records.
async fn wait_past(c: &mut BrokerClient<Channel>, stream: &str, n: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let end = end_offset(c, stream).await;
        if end > n {
            return end;
        }
        assert!(Instant::now() < deadline, "{stream} stuck at {end} <= {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every record key of `stream`, decoded to the transaction id, with how often it was stored.
async fn stored_ids(c: &mut BrokerClient<Channel>, stream: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    let mut next = 0;
    loop {
        let r = c
            .fetch(FetchRequest {
                stream: stream.into(),
                start_offset: next,
                max_records: 5_000,
                max_bytes: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for f in &r.records {
            let rec = f.record.as_ref().unwrap();
            let id = if stream == "labels" {
                Label::decode(rec.value.clone()).unwrap().transaction_id
            } else {
                Transaction::decode(rec.value.clone()).unwrap().id
            };
            assert_eq!(rec.key.as_ref(), id.as_bytes());
            *out.entry(id).or_default() += 1;
        }
        if r.next_offset >= r.end_offset || r.records.is_empty() {
            return out;
        }
        next = r.next_offset;
    }
}

fn producer(addr: &str, count: u64, rate: u64, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_txpipe-producer"))
        .args([
            &format!("--brokers={addr}"),
            &format!("--count={count}"),
            &format!("--rate={rate}"),
            "--batch-size=100",
            "--max-in-flight=4",
            "--customers=500",
            "--merchants=200",
            "--progress=never",
            "--reconnect-deadline-ms=20000",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .env_remove("TXPIPE_PAN_KEY_FILE")
        .env(
            "TXPIPE_PAN_KEY",
            txpipe_client::pan::PanKey::insecure_test_key_hex(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("txpipe-producer runs")
}

/// Waits for `child` to exit within `WAIT` (polling, so the test's runtime keeps serving).
async fn exit_of(mut child: Child) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st, out, err);
        }
        assert!(Instant::now() < deadline, "producer did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_killed_three_times_and_restarted_stores_every_transaction_and_label_once() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start_broker(dir.path()).await;
    let mut c = client(&addr).await;
    const N: u64 = 30_000;
    let mut seen = 0;
    for kill in 1..=3 {
        let mut child = producer(&addr, N, 8_000, &[]);
        // Kill once this run has stored something more.
        seen = wait_past(&mut c, "transactions", seen + 1_500).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(seen < N, "kill {kill} came after the end ({seen})");
    }
    let (st, out, err) = exit_of(producer(&addr, N, 0, &[])).await;
    assert!(st.success(), "final run failed: {st}\n{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["transactions_epoch"], 4, "{summary}");
    assert!(summary["transactions_resumed_from"].as_u64().unwrap() >= seen);

    for stream in ["transactions", "labels"] {
        let ids = stored_ids(&mut c, stream).await;
        let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{stream}: stored more than once: {twice:?}"
        );
        assert_eq!(ids.len() as u64, N, "{stream}: stored != produced");
        for i in 0..N {
            assert!(
                ids.contains_key(&format!("tx-{i:020}")),
                "{stream}: tx {i} missing"
            );
        }
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_of_the_same_producer_fences_the_first_which_exits_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop) = start_broker(dir.path()).await;
    let mut c = client(&addr).await;
    let first = producer(&addr, 1_000_000, 2_000, &["--producer-name=job-x"]);
    let seen = wait_past(&mut c, "transactions", 200).await;
    let second = producer(&addr, 1_000_000, 2_000, &["--producer-name=job-x"]);
    let (st, _, err) = exit_of(first).await;
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("fenced"), "{err}");
    assert!(seen > 0);
    let mut second = second;
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = stop.send(());
}
