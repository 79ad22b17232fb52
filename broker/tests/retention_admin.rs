//! Retention, health, reflection and the admin port.
mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn retention_deletes_fully_acked_segments_and_disk_usage_falls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.segment_bytes = 16 * 1024;
    cfg.decisions_max_bytes = 16 * 1024;
    let b = TestBroker::start(cfg);
    let mut c = b.client().await;
    let value = "v".repeat(200);
    for s in 1..=20u64 {
        let recs = (0..50)
            .map(|i| rec(&format!("tx-{s}-{i}"), &value))
            .collect();
        produce(&mut c, vec![batch("transactions", 1, s, recs)])
            .await
            .unwrap();
    }
    let before = stream_info(&mut c, "transactions").await;
    assert!(before.segments > 5, "{} segments", before.segments);
    let mut w = TestConsumer::connect(&mut c, "transactions", "w", 0)
        .await
        .unwrap();
    let d = w.take(1000, T).await;
    w.ack(d.iter().map(|d| d.offset).collect()).await;
    wait_until(T, "segments deleted", || {
        let mut c = c.clone();
        async move {
            let i = stream_info(&mut c, "transactions").await;
            i.segments <= 2 && i.start_offset > 0
        }
    })
    .await;
    let after = stream_info(&mut c, "transactions").await;
    assert!(
        after.bytes < before.bytes / 3,
        "bytes {} -> {}",
        before.bytes,
        after.bytes
    );
    // Survives a restart: state and log agree.
    b.stop().await;
    let b = TestBroker::start(test_config(dir.path()));
    let mut c = b.client().await;
    let i = stream_info(&mut c, "transactions").await;
    assert_eq!((i.end_offset, i.pending), (1000, 0));
    b.stop().await;
}

#[tokio::test]
async fn health_reports_serving_and_the_admin_endpoints_respond() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let ch = b.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "txpipe.broker.v1.Broker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut c = b.client().await;
    produce(
        &mut c,
        vec![batch("transactions", 0, 0, vec![rec("a", "b")])],
    )
    .await
    .unwrap();
    let streams = c
        .list_streams(txpipe_client::broker::v1::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams;
    let names: Vec<_> = streams.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["decisions", "labels", "transactions", "transactions.dlq"]
    );

    assert_eq!(http_get(b.admin, "/healthz").await.0, 200);
    assert_eq!(http_get(b.admin, "/readyz").await.0, 200);
    let (code, page) = http_get(b.admin, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("txpipe broker"));
    wait_until(T, "metrics sampled", || async {
        let (code, body) = http_get(b.admin, "/metrics").await;
        code == 200
            && body.contains("txpipe_broker_produced_records_total{stream=\"transactions\"} 1")
            && body.contains("txpipe_broker_fsync_total")
    })
    .await;
    let (code, json) = http_get(b.admin, "/status.json").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["streams"].as_array().unwrap().len(), 4);
    b.stop().await;
}

/// Lists the services through reflection version `$v` (`v1` or `v1alpha`: the same messages in
/// two packages).
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected {msg:?}")
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn server_reflection_v1_and_v1alpha_list_the_broker_and_health_services() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(test_config(dir.path()));
    let v1 = list_services!(v1, b.channel().await);
    let v1alpha = list_services!(v1alpha, b.channel().await);
    for names in [&v1, &v1alpha] {
        for want in ["txpipe.broker.v1.Broker", "grpc.health.v1.Health"] {
            assert!(
                names.contains(&want.to_string()),
                "{want} missing: {names:?}"
            );
        }
    }
    b.stop().await;
}
