//! Per-principal access control on a TLS broker (issue 14): each role may do only its part
//! (broker/src/auth.rs), and a refusal says PERMISSION_DENIED with the principal and the
//! operation. The attacks of the issue, as regressions: a producer writing `decisions`, a
//! non-worker consuming (and acking) `transactions`, a non-broker calling the peer `Join`.

mod common;

use std::net::SocketAddr;

use common::pki::{Ca, client};
use common::{TestBroker, TestConsumer, batch, bind3, produce, rec, test_config};
use tonic::Code;
use txpipe_broker::raft::peer::{JoinRequest, RaftPeerClient, StatusRequest};
use txpipe_client::broker::v1::{FetchRequest, GetStreamRequest};

struct Secured {
    broker: TestBroker,
    peer: SocketAddr,
    ca: Ca,
    _dir: tempfile::TempDir,
}

/// A single TLS broker (certificate `broker/0`) with its peer address.
async fn secured() -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let mut c = test_config(&dir.path().join("data"));
    ca.leaf("broker/0").serve(&mut c);
    let ls = bind3();
    let peer = ls.1.local_addr().unwrap();
    let broker = TestBroker::start_on(c, ls);
    // Serving once an operator can list the streams.
    drop(client(broker.grpc, &ca.leaf("operator").options()).await);
    Secured {
        broker,
        peer,
        ca,
        _dir: dir,
    }
}

fn assert_denied(s: &tonic::Status, principal: &str, op: &str) {
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message()
            .contains(&format!("spiffe://txpipe/{principal}"))
            && s.message().contains(op),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_may_write_transactions_but_not_decisions() {
    let s = secured().await;
    let mut c = client(s.broker.grpc, &s.ca.leaf("producer/p-1").options()).await;
    produce(
        &mut c,
        vec![batch("transactions", 0, 0, vec![rec("t1", "tx")])],
    )
    .await
    .unwrap();
    let e = produce(
        &mut c,
        vec![batch("decisions", 0, 0, vec![rec("t1", "forged")])],
    )
    .await
    .unwrap_err();
    assert_denied(&e, "producer/p-1", "Produce on stream \"decisions\"");
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_worker_may_consume_transactions() {
    let s = secured().await;
    for who in ["producer", "reader", "broker/1"] {
        let mut c = client(s.broker.grpc, &s.ca.leaf(who).options()).await;
        let e = TestConsumer::connect(&mut c, "transactions", who, 10)
            .await
            .err()
            .unwrap_or_else(|| panic!("{who} subscribed to transactions"));
        assert_denied(&e, who, "Consume on stream \"transactions\"");
    }
    let mut w = client(s.broker.grpc, &s.ca.leaf("worker/w-1").options()).await;
    TestConsumer::connect(&mut w, "transactions", "w-1", 10)
        .await
        .unwrap();
    produce(&mut w, vec![batch("decisions", 0, 0, vec![rec("t1", "d")])])
        .await
        .unwrap();
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_may_fetch_and_get_streams_but_not_produce() {
    let s = secured().await;
    let mut c = client(s.broker.grpc, &s.ca.leaf("audit").options()).await;
    c.fetch(FetchRequest {
        stream: "decisions".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.get_stream(GetStreamRequest {
        stream: "transactions".into(),
    })
    .await
    .unwrap();
    let e = produce(&mut c, vec![batch("labels", 0, 0, vec![rec("k", "v")])])
        .await
        .unwrap_err();
    assert_denied(&e, "audit", "Produce on stream \"labels\"");
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_that_is_not_a_broker_cannot_call_the_peer_service() {
    let s = secured().await;
    let peer_client = |who: &str| {
        let opts = s.ca.leaf(who).options();
        let addr = format!("http://{}", s.peer);
        async move {
            let ep = txpipe_client::connect::endpoint_with(&addr, Some(&opts)).unwrap();
            RaftPeerClient::new(ep.connect().await.unwrap())
        }
    };
    let forged = JoinRequest {
        node_id: 999,
        addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
        ordinal: 0,
    };
    let mut w = peer_client("worker").await;
    let e = w.join(forged.clone()).await.unwrap_err();
    assert_denied(&e, "worker", "RaftPeer/Join");
    let e = w.status(StatusRequest::default()).await.unwrap_err();
    assert_denied(&e, "worker", "RaftPeer/Status");
    // A broker of the cluster may ask for the status.
    let mut b = peer_client("broker/1").await;
    b.status(StatusRequest::default()).await.unwrap();
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_ca_without_a_principal_is_unauthenticated() {
    let s = secured().await;
    let opts = s.ca.leaf_without_principal("nobody").options();
    let ep =
        txpipe_client::connect::endpoint_with(&format!("http://{}", s.broker.grpc), Some(&opts))
            .unwrap();
    let mut c =
        txpipe_client::broker::v1::broker_client::BrokerClient::new(ep.connect().await.unwrap());
    let e = c
        .get_stream(GetStreamRequest {
            stream: "transactions".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = produce(
        &mut c,
        vec![batch("transactions", 0, 0, vec![rec("k", "v")])],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    s.broker.stop().await;
}
