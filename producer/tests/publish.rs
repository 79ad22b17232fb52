//! `run()` against an in-process fake broker on port 0: counts, labels, file input policies,
//! errors, and a broker restart on the same port in the middle of a run.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use txpipe_client::broker::v1::broker_server::{Broker, BrokerServer};
use txpipe_client::broker::v1::*;
use txpipe_client::features::fingerprint;
use txpipe_client::pipeline::v1::{Label, Transaction};
use txpipe_producer::features::DEFAULT_TIME_ORIGIN_US;
use txpipe_producer::generate::GeneratorConfig;
use txpipe_producer::input::InputFormat;
use txpipe_producer::{Config, Error, OnBadRow, Source};

/// What the fake broker has "durably" stored; survives restarts.
#[derive(Default)]
struct State {
    records: HashMap<String, Vec<Record>>,
    /// (stream, producer id) → last stored sequence.
    last_seq: HashMap<(String, u64), u64>,
    /// Every stored (stream, producer id, sequence), to detect a batch stored twice.
    stored_batches: Vec<(String, u64, u64)>,
    /// Crash (end every produce stream, do not answer) right after storing this many batches.
    crash_after_batches: Option<usize>,
    /// (stream, name) → (producer id, epoch, last position), like the broker's registrations.
    registered: HashMap<(String, String), (u64, u64, u64)>,
}

#[derive(Clone)]
struct FakeBroker {
    state: Arc<Mutex<State>>,
    crashed: watch::Sender<bool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for FakeBroker {
    type ProduceStream = BoxStream<ProduceResponse>;
    type ConsumeStream = BoxStream<ConsumeResponse>;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let (out, rx) = mpsc::channel(64);
        let state = self.state.clone();
        let crashed_tx = self.crashed.clone();
        let mut crashed = self.crashed.subscribe();
        tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    biased;
                    () = async { let _ = crashed.wait_for(|c| *c).await; } => {
                        let _ = out.send(Err(Status::unavailable("broker crashed"))).await;
                        return;
                    }
                    r = inbound.next() => match r {
                        Some(Ok(r)) => r,
                        _ => return,
                    },
                };
                let reply = {
                    let mut s = state.lock().unwrap();
                    if req.stream != "transactions" && req.stream != "labels" {
                        Err(Status::not_found(format!("unknown stream {}", req.stream)))
                    } else {
                        let k = (req.stream.clone(), req.producer_id);
                        let last = s.last_seq.get(&k).copied().unwrap_or(0);
                        let current = s
                            .registered
                            .values()
                            .find(|r| r.0 == req.producer_id)
                            .map(|r| r.1);
                        if current != Some(req.epoch) {
                            Err(Status::failed_precondition(format!(
                                "fenced: epoch {} vs {current:?}",
                                req.epoch
                            )))
                        } else if req.sequence <= last {
                            Ok(ProduceResponse {
                                stream: req.stream.clone(),
                                sequence: req.sequence,
                                duplicate: true,
                                ..Default::default()
                            })
                        } else if req.sequence != last + 1 {
                            Err(Status::failed_precondition("sequence gap"))
                        } else {
                            let n = req.records.len() as u32;
                            let list = s.records.entry(req.stream.clone()).or_default();
                            let base = list.len() as u64;
                            list.extend(req.records);
                            s.last_seq.insert(k, req.sequence);
                            if let Some(r) =
                                s.registered.values_mut().find(|r| r.0 == req.producer_id)
                            {
                                r.2 = r.2.max(req.position);
                            }
                            s.stored_batches.push((
                                req.stream.clone(),
                                req.producer_id,
                                req.sequence,
                            ));
                            if s.crash_after_batches == Some(s.stored_batches.len()) {
                                s.crash_after_batches = None;
                                // Stored but never answered: the client must retry it.
                                let _ = crashed_tx.send(true);
                                continue;
                            }
                            Ok(ProduceResponse {
                                stream: req.stream,
                                sequence: req.sequence,
                                base_offset: base,
                                stored: n,
                                deduplicated: 0,
                                duplicate: false,
                            })
                        }
                    }
                };
                let end = reply.is_err();
                if out.send(reply).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn consume(
        &self,
        _: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let req = request.into_inner();
        if req.stream != "transactions" && req.stream != "labels" {
            return Err(Status::not_found(format!("unknown stream {}", req.stream)));
        }
        let mut s = self.state.lock().unwrap();
        let next_id = s.registered.len() as u64 + 1;
        let r = s
            .registered
            .entry((req.stream.clone(), req.name))
            .or_insert((next_id, 0, 0));
        r.1 += 1;
        let (producer_id, epoch, last_position) = *r;
        // Sequences restart at 1 with the new epoch.
        s.last_seq.remove(&(req.stream.clone(), producer_id));
        Ok(Response::new(InitProducerResponse {
            stream: req.stream,
            producer_id,
            epoch,
            last_position,
            next_sequence: 1,
        }))
    }

    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_stream(
        &self,
        _: Request<GetStreamRequest>,
    ) -> Result<Response<GetStreamResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `state` on `listener` until the broker crashes (if a crash is armed) or forever.
fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> tokio::task::JoinHandle<()> {
    let (crashed, mut rx) = watch::channel(false);
    let broker = FakeBroker { state, crashed };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(BrokerServer::new(broker))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = rx.wait_for(|c| *c).await;
            })
            .await
            .unwrap();
    })
}

async fn start(state: Arc<Mutex<State>>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, serve(listener, state))
}

fn config(port: u16, count: u64) -> Config {
    let mut c = Config::new(
        vec![format!("http://127.0.0.1:{port}")],
        std::sync::Arc::new(txpipe_client::pan::PanKey::insecure_test_key()),
    );
    c.source = Source::Generate(GeneratorConfig {
        customers: 500,
        merchants: 200,
        ..GeneratorConfig::default()
    });
    c.count = Some(count);
    c.batch_size = 250;
    c.max_in_flight = 4;
    c.reconnect_deadline = Duration::from_secs(20);
    c
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn stored(state: &Arc<Mutex<State>>, stream: &str) -> Vec<Record> {
    state
        .lock()
        .unwrap()
        .records
        .get(stream)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn generated_transactions_and_their_labels_reach_their_own_streams() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(port, 5_000);
    cfg.summary_json = Some(dir.path().join("summary.json"));
    let summary = txpipe_producer::run(cfg, std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 5_000);
    assert_eq!(summary.transactions_stored, 5_000);
    assert_eq!(summary.labels_acked, 5_000);
    assert_eq!(summary.duplicate_batches, 0);
    assert_ne!(summary.transactions_producer_id, summary.labels_producer_id);

    let txs = stored(&state, "transactions");
    let labels = stored(&state, "labels");
    assert_eq!(txs.len(), 5_000);
    assert_eq!(labels.len(), 5_000);
    let mut fraud = 0;
    for (i, (t, l)) in txs.iter().zip(&labels).enumerate() {
        let tx = Transaction::decode(t.value.clone()).unwrap();
        let label = Label::decode(l.value.clone()).unwrap();
        assert_eq!(tx.id, format!("tx-{i:020}"));
        assert_eq!(t.key.as_ref(), tx.id.as_bytes());
        assert_eq!(label.transaction_id, tx.id);
        assert!(t.timestamp_us > 0);
        fraud += u64::from(label.is_fraud);
    }
    assert_eq!(summary.fraud_labelled, fraud);
    let mut written =
        txpipe_client::summary::Summary::read(&dir.path().join("summary.json")).unwrap();
    // serde_json's default float parsing may land one ulp away from the printed value
    // (37575.630538244 read back as 37575.630538244004): compare the rate within 1e-9.
    assert!((written.rate_per_s - summary.rate_per_s).abs() <= 1e-9 * summary.rate_per_s.abs());
    written.rate_per_s = summary.rate_per_s;
    assert_eq!(written, summary);
    assert_eq!((written.planned, written.finished), (5_000, true));
    assert_eq!(written.error, None);
}

#[tokio::test]
async fn a_broker_restart_on_the_same_port_mid_run_stores_no_batch_twice() {
    let state = Arc::new(Mutex::new(State {
        crash_after_batches: Some(25),
        ..State::default()
    }));
    let (port, server) = start(state.clone()).await;
    let run = tokio::spawn(txpipe_producer::run(
        config(port, 20_000),
        std::future::pending(),
    ));

    // The first server stops after the crash; bring a new one up on the same port and data.
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("fake broker shuts down after its crash")
        .unwrap();
    assert!(stored(&state, "transactions").len() + stored(&state, "labels").len() < 40_000);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _server = serve(listener, state.clone());

    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run finishes")
        .unwrap()
        .unwrap();
    assert_eq!(summary.transactions_acked, 20_000);
    assert_eq!(summary.labels_acked, 20_000);
    assert!(summary.reconnects >= 1, "{summary:?}");
    assert!(
        summary.duplicate_batches >= 1,
        "the unanswered batch was retried: {summary:?}"
    );

    let s = state.lock().unwrap();
    let unique: HashSet<_> = s.stored_batches.iter().collect();
    assert_eq!(
        unique.len(),
        s.stored_batches.len(),
        "a batch was stored twice"
    );
    for stream in ["transactions", "labels"] {
        let keys: Vec<_> = s.records[stream].iter().map(|r| r.key.clone()).collect();
        let unique: HashSet<_> = keys.iter().collect();
        assert_eq!(keys.len(), 20_000, "{stream}");
        assert_eq!(unique.len(), 20_000, "{stream} has duplicate records");
    }
}

#[tokio::test]
async fn a_file_with_bad_rows_is_skipped_row_by_row_or_stopped_at_the_first() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;

    let mut cfg = config(port, 0);
    cfg.count = None;
    cfg.source = Source::File {
        path: testdata("bad.csv"),
        format: InputFormat::Csv,
    };
    cfg.on_bad_row = OnBadRow::Skip;
    let summary = txpipe_producer::run(cfg.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 4);
    assert_eq!(summary.bad_rows, 4);
    assert_eq!(
        summary.planned, 8,
        "planned counts every data row, bad ones too"
    );
    let lines: Vec<u64> = summary.bad_row_samples.iter().map(|b| b.line).collect();
    assert_eq!(lines, [3, 5, 6, 9]);
    assert_eq!(summary.labels_acked, 0, "the file has no label columns");

    // Another name: the same name would resume after the end and send nothing.
    cfg.producer_name = Some("second-run".into());
    cfg.on_bad_row = OnBadRow::Stop;
    let dir = tempfile::tempdir().unwrap();
    cfg.summary_json = Some(dir.path().join("s.json"));
    let before = stored(&state, "transactions").len();
    match txpipe_producer::run(cfg, std::future::pending()).await {
        Err(Error::BadRow(b)) => {
            assert_eq!((b.line, b.column.as_deref()), (3, Some("amount")));
        }
        other => panic!("expected a bad-row stop, got {other:?}"),
    }
    assert_eq!(
        stored(&state, "transactions").len() - before,
        1,
        "the row before it was sent"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("line 3, column amount")
    );
}

#[tokio::test]
async fn a_rejected_stream_fails_the_run_with_the_stream_named() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state).await;
    let mut cfg = config(port, 1_000);
    cfg.transactions_stream = "no-such-stream".into();
    match txpipe_producer::run(cfg, std::future::pending()).await {
        Err(e @ Error::Produce { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no-such-stream") && msg.contains("NotFound"),
                "{msg}"
            );
        }
        other => panic!("expected a produce error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_broker_fails_after_the_reconnect_deadline() {
    // A port that was just free: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(port, 10);
    cfg.reconnect_deadline = Duration::from_millis(300);
    match txpipe_producer::run(cfg, std::future::pending()).await {
        Err(e @ Error::Produce { .. }) => assert!(e.to_string().contains("unreachable"), "{e}"),
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_shutdown_signal_stops_the_run_and_flushes_what_was_queued() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let mut cfg = config(port, 1_000_000);
    cfg.rate_per_s = 2_000.0;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(txpipe_producer::run(cfg, async move {
        let _ = stop_rx.await;
    }));
    // Wait until something is stored, then stop.
    tokio::time::timeout(Duration::from_secs(20), async {
        while stored(&state, "transactions").is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.interrupted);
    assert!(summary.transactions_acked < 1_000_000);
    assert_eq!(summary.transactions_acked, summary.transactions_sent);
    assert_eq!(
        stored(&state, "transactions").len() as u64,
        summary.transactions_acked
    );
}

fn decoded(state: &Arc<Mutex<State>>) -> (Vec<Transaction>, Vec<Label>) {
    let txs = stored(state, "transactions")
        .iter()
        .map(|r| {
            let t = Transaction::decode(r.value.clone()).unwrap();
            assert_eq!(r.key.as_ref(), t.id.as_bytes());
            t
        })
        .collect();
    let labels = stored(state, "labels")
        .iter()
        .map(|r| Label::decode(r.value.clone()).unwrap())
        .collect();
    (txs, labels)
}

fn ulb_excerpt_config(port: u16) -> Config {
    let mut cfg = config(port, 0);
    cfg.count = None;
    cfg.batch_size = 64;
    cfg.source = Source::File {
        path: testdata("ulb-creditcard-excerpt.csv"),
        format: InputFormat::Features,
    };
    cfg
}

#[tokio::test]
async fn the_ulb_excerpt_reaches_transactions_and_labels_with_its_features() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let mut cfg = ulb_excerpt_config(port);
    cfg.features.id_prefix = "ulb-".into();
    let summary = txpipe_producer::run(cfg, std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 300);
    assert_eq!(summary.labels_acked, 300);
    assert_eq!(summary.fraud_labelled, 50);
    assert_eq!((summary.bad_rows, summary.skipped_by_filter), (0, 0));

    let (txs, labels) = decoded(&state);
    assert_eq!((txs.len(), labels.len()), (300, 300));
    let names: Vec<String> = (1..=28)
        .map(|i| format!("V{i}"))
        .chain(["Amount".into()])
        .collect();
    let set = fingerprint(&names);
    for (i, (t, l)) in txs.iter().zip(&labels).enumerate() {
        assert_eq!(t.id, format!("ulb-row-{}", i + 2));
        assert_eq!(l.transaction_id, t.id);
        assert_eq!(t.features.len(), 29);
        assert_eq!(t.feature_set, set);
        assert!(t.pan_encrypted.is_empty());
    }
    assert_eq!(txs[0].event_time_us, DEFAULT_TIME_ORIGIN_US);
    assert_eq!(txs[0].amount_minor, 14_962);
    assert_eq!(txs[0].features[0], -1.359_807_133_673_8_f64 as f32);
    assert_eq!(labels.iter().filter(|l| l.is_fraud).count(), 50);
}

#[tokio::test]
async fn the_time_window_and_count_limit_what_a_features_file_sends() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let mut cfg = ulb_excerpt_config(port);
    cfg.features.time_from_s = Some(100.0);
    cfg.features.time_until_s = Some(10_000.0);
    let summary = txpipe_producer::run(cfg.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 115);
    assert_eq!(summary.skipped_by_filter, 185, "{summary:?}");
    assert_eq!(
        summary.planned, 300,
        "an upper bound: the window is applied while reading"
    );
    assert_eq!(summary.bad_rows, 0);
    assert_eq!(summary.fraud_labelled, 25);
    let (txs, _) = decoded(&state);
    assert!(txs.iter().all(|t| {
        let s = t.event_time_us - DEFAULT_TIME_ORIGIN_US;
        (100_000_000..10_000_000_000).contains(&s)
    }));

    // --count stops after 10 sent rows: the 160 rows before the window were skipped, nothing
    // after the 10th sent row was read.
    cfg.count = Some(10);
    cfg.producer_name = Some("second-run".into());
    let summary = txpipe_producer::run(cfg, std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 10);
    assert_eq!(summary.labels_acked, 10);
    assert_eq!(summary.skipped_by_filter, 160);
    assert_eq!(summary.planned, 10);
}

#[tokio::test]
async fn bad_rows_of_a_features_file_are_skipped_and_counted_or_stop_the_run() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let text = std::fs::read_to_string(testdata("ulb-creditcard-excerpt.csv")).unwrap();
    let mut lines: Vec<String> = text.lines().take(11).map(str::to_string).collect();
    // Line 3: V3 (the 4th field) = abc; line 6: Amount negative; line 8: Class "2".
    let set_field = |line: &mut String, i: usize, v: &str| {
        let mut f: Vec<&str> = line.split(',').collect();
        let i = if i == usize::MAX { f.len() - 1 } else { i };
        f[i] = v;
        *line = f.join(",");
    };
    set_field(&mut lines[2], 3, "abc");
    set_field(&mut lines[5], 29, "-2.50");
    set_field(&mut lines[7], usize::MAX, "\"2\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-features.csv");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let mut cfg = ulb_excerpt_config(port);
    cfg.source = Source::File {
        path,
        format: InputFormat::Features,
    };
    cfg.on_bad_row = OnBadRow::Skip;
    let summary = txpipe_producer::run(cfg.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(summary.transactions_acked, 7);
    assert_eq!(summary.labels_acked, 7);
    assert_eq!(summary.bad_rows, 3);
    let at: Vec<(u64, Option<&str>)> = summary
        .bad_row_samples
        .iter()
        .map(|b| (b.line, b.column.as_deref()))
        .collect();
    assert_eq!(
        at,
        [(3, Some("V3")), (6, Some("Amount")), (8, Some("Class"))]
    );
    let (txs, _) = decoded(&state);
    let ids: Vec<&str> = txs.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "row-2", "row-4", "row-5", "row-7", "row-9", "row-10", "row-11"
        ]
    );

    cfg.on_bad_row = OnBadRow::Stop;
    cfg.producer_name = Some("second-run".into());
    match txpipe_producer::run(cfg, std::future::pending()).await {
        Err(Error::BadRow(b)) => assert_eq!((b.line, b.column.as_deref()), (3, Some("V3"))),
        other => panic!("expected a bad-row stop, got {other:?}"),
    }
}

#[tokio::test]
async fn an_interrupted_run_started_again_resumes_per_stream_and_stores_everything_once() {
    let state = Arc::new(Mutex::new(State::default()));
    let (port, _server) = start(state.clone()).await;
    let mut cfg = config(port, 6_000);
    cfg.rate_per_s = 20_000.0;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(txpipe_producer::run(cfg.clone(), async move {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(20), async {
        while stored(&state, "transactions").len() < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let first = run.await.unwrap().unwrap();
    assert!(
        first.interrupted && first.transactions_acked < 6_000,
        "{first:?}"
    );
    // Make the streams uneven, as a kill between the two producers' acks does: the labels
    // stream lost its last batch's acknowledgement position.
    {
        let mut s = state.lock().unwrap();
        let keep = s.records["labels"].len() - 250;
        s.records.get_mut("labels").unwrap().truncate(keep);
        for r in s.registered.iter_mut().filter(|(k, _)| k.0 == "labels") {
            r.1.2 = keep as u64;
        }
    }
    cfg.rate_per_s = 0.0;
    let second = txpipe_producer::run(cfg, std::future::pending())
        .await
        .unwrap();
    assert_eq!(second.producer_name, first.producer_name);
    assert_eq!(second.transactions_epoch, 2);
    assert_eq!(second.transactions_resumed_from, first.transactions_acked);
    assert_eq!(
        second.transactions_resumed_from + second.transactions_acked,
        6_000
    );
    let (txs, labels) = decoded(&state);
    let ids: Vec<String> = (0..6_000).map(|i| format!("tx-{i:020}")).collect();
    assert_eq!(txs.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(
        labels
            .iter()
            .map(|l| l.transaction_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
}

#[test]
fn the_default_producer_name_depends_on_the_records_not_on_count_or_rate() {
    let a = config(1, 100);
    let mut b = config(2, 5_000);
    b.rate_per_s = 10.0;
    assert_eq!(a.default_producer_name(), b.default_producer_name());
    assert!(a.default_producer_name().starts_with("gen-s42-"));
    let mut c = config(1, 100);
    c.source = Source::Generate(GeneratorConfig {
        seed: 7,
        customers: 500,
        merchants: 200,
        ..GeneratorConfig::default()
    });
    assert_ne!(a.default_producer_name(), c.default_producer_name());
    let mut d = config(1, 100);
    d.source = Source::File {
        path: testdata("bad.csv"),
        format: InputFormat::Csv,
    };
    assert!(d.default_producer_name().starts_with("file-bad.csv-"));
    d.producer_name = Some("mine".into());
    assert_eq!(d.effective_producer_name(), "mine");
}
