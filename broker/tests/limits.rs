//! Admission limits (issue 13, crate::limits) through a running broker: connections beyond
//! `--max-connections` are closed and counted, produce batches beyond the in-flight byte budget
//! are refused with RESOURCE_EXHAUSTED, and an invalid combination of limits is refused at
//! start-up.

mod common;

use std::time::Duration;

use common::*;
use tonic::transport::Channel;
use txpipe_client::broker::v1::GetStreamRequest;
use txpipe_client::broker::v1::broker_client::BrokerClient;

async fn get_stream(ch: Channel) -> Result<(), tonic::Status> {
    BrokerClient::new(ch)
        .get_stream(GetStreamRequest {
            stream: "decisions".into(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_connections = 2;
    let b = TestBroker::start(config);
    let first = b.channel().await;
    get_stream(first.clone()).await.unwrap();
    let second = b.channel().await;
    get_stream(second.clone()).await.unwrap();
    // A third connection is accepted by the kernel and closed by the broker at once.
    let third = Channel::from_shared(format!("http://{}", b.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    // The client sees the connection refused or reset (a transport error), as when a broker is
    // down, and tries another broker.
    let err = get_stream(third).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    let (_, metrics) = http_get(b.admin, "/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("txpipe_broker_connections_rejected_total ") && !l.ends_with(" 0")
        ),
        "rejections counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("connections_rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The admitted connections still serve; closing one frees its slot.
    get_stream(first).await.unwrap();
    drop(second);
    wait_until(
        Duration::from_secs(10),
        "a freed connection slot",
        || async {
            let ch = Channel::from_shared(format!("http://{}", b.grpc))
                .unwrap()
                .connect_lazy();
            get_stream(ch).await.is_ok()
        },
    )
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_produce_budget_below_the_batch_limit_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_inflight_produce_bytes = config.max_batch_bytes - 1;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("--max-inflight-produce-bytes"), "{err}");
}
