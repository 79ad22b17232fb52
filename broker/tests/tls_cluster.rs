//! Broker-to-broker mutual TLS (issue 14): three TLS brokers find each other, elect leaders
//! and replicate over the peer port with their own certificates, and a client that follows
//! leader hints over TLS gets its writes acknowledged by a quorum.

mod common;

use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{TestBroker, cluster_configs, rec};
use txpipe_client::produce::{Producer, ProducerConfig};

/// End offset of `stream` as the node at `admin` reports it in `/status.json` (HTTPS trusting
/// `ca`); 0 while it does not answer.
async fn end_offset(admin: std::net::SocketAddr, ca: &std::path::Path, stream: &str) -> u64 {
    let Some((_, body)) = common::pki::try_https_get(admin, ca, "/status.json").await else {
        return 0;
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == stream))
        .and_then(|x| x["end_offset"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_broker_tls_cluster_elects_and_replicates_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let mut cfgs = cluster_configs(dir.path(), 3);
    for (i, (c, _)) in cfgs.iter_mut().enumerate() {
        ca.leaf(&format!("broker/{i}")).serve(c);
    }
    let addrs = cfgs[0].0.client_addrs.clone();
    let nodes: Vec<TestBroker> = cfgs
        .into_iter()
        .map(|(c, l)| TestBroker::start_on(c, l))
        .collect();

    let producer = Producer::connect(ProducerConfig {
        tls: Some(ca.leaf("producer").options()),
        reconnect_deadline: Duration::from_secs(30),
        ..ProducerConfig::new(addrs, "transactions")
    })
    .await
    .unwrap();
    for i in 0..10 {
        let receipt = producer
            .send(vec![rec(&format!("t{i}"), "tx")])
            .await
            .unwrap();
        receipt.await.unwrap().unwrap();
    }
    producer.close().await.unwrap();

    // Every replica holds the ten records: the followers got them over the TLS peer port.
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
        while end_offset(n.admin, &ca.cert, "transactions").await < 10 {
            assert!(
                Instant::now() < deadline,
                "node {} did not replicate",
                n.admin
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for n in nodes {
        n.stop().await;
    }
}
