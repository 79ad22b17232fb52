//! Mutual TLS on the client port (issue 14): a broker with `--tls-*` files serves clients whose
//! certificate chains to its CA, and refuses plaintext, no certificate, a certificate of
//! another CA and an expired certificate. Certificates are made per test with rcgen.

mod common;

use std::time::Duration;

use common::pki::{Ca, client, try_client};
use common::{TestBroker, batch, produce, rec, test_config};
use txpipe_client::broker::v1::FetchRequest;
use txpipe_client::tls::TlsOptions;

/// A TLS broker serving the certificate `broker/0` of `ca`.
fn tls_broker(dir: &std::path::Path, ca: &Ca) -> TestBroker {
    let mut c = test_config(&dir.join("data"));
    ca.leaf("broker/0").serve(&mut c);
    TestBroker::start(c)
}

/// Asserts that connecting with `tls` and calling ListStreams fails, and returns the error.
async fn refused(b: &TestBroker, tls: Option<&TlsOptions>) -> String {
    match try_client(b.grpc, tls).await {
        Ok(_) => panic!("the broker accepted a client it should refuse"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_valid_certificate_produces_and_fetches_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let b = tls_broker(dir.path(), &ca);
    let mut c = client(b.grpc, &ca.leaf("producer/p-1").options()).await;
    let acks = produce(&mut c, vec![batch("labels", 0, 0, vec![rec("k1", "v1")])])
        .await
        .unwrap();
    assert_eq!(acks.len(), 1);
    let mut reader = client(b.grpc, &ca.leaf("reader").options()).await;
    let got = reader
        .fetch(FetchRequest {
            stream: "labels".into(),
            start_offset: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.records.len(), 1);
    assert_eq!(&got.records[0].record.as_ref().unwrap().value[..], b"v1");
    b.stop().await;
}

/// A TLS broker of `ca` that already served a valid client (so that a refusal is about the
/// certificate, not a broker still starting), and that client's options.
async fn serving(dir: &std::path::Path, ca: &Ca) -> (TestBroker, TlsOptions) {
    let b = tls_broker(dir, ca);
    let good = ca.leaf("producer").options();
    drop(client(b.grpc, &good).await);
    (b, good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let (b, good) = serving(dir.path(), &ca).await;
    refused(&b, None).await;
    no_client_cert(&b, &good).await;
    let failures = handshake_failures(b.admin, &good.ca).await;
    assert!(failures >= 2.0, "{failures} handshake failures counted");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let other = Ca::new(&dir.path().join("pki"), "other");
    let (b, good) = serving(dir.path(), &ca).await;
    // The client trusts the broker; the broker must not trust the client.
    let foreign = TlsOptions {
        ca: good.ca.clone(),
        ..other.leaf("producer").options()
    };
    refused(&b, Some(&foreign)).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let (b, _good) = serving(dir.path(), &ca).await;
    // Made like the valid one (accepted by `serving`) but for 2001: only the dates differ.
    // The client sees the broker's CertificateExpired alert or, when it loses the race with
    // the close, a broken pipe.
    refused(&b, Some(&ca.leaf_valid("producer", false).options())).await;
    b.stop().await;
}

/// `txpipe_broker_tls_handshake_failures_total{port="client"}` from the admin port (HTTPS
/// trusting `ca`, no client certificate: `/metrics` is open to monitoring).
async fn handshake_failures(admin: std::net::SocketAddr, ca: &std::path::Path) -> f64 {
    let (code, body) = common::pki::https(admin, ca, None, "GET", "/metrics", "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("txpipe_broker_tls_handshake_failures_total{port=\"client\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Connects with TLS trusting the broker's CA but presenting no client certificate; returns
/// the error (panics when the broker serves the call).
async fn no_client_cert(b: &TestBroker, good: &TlsOptions) -> String {
    let ca = std::fs::read(&good.ca).unwrap();
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{}", b.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .unwrap();
    let ch = match ep.connect().await {
        Ok(ch) => ch,
        Err(e) => return format!("connect: {e:?}"),
    };
    let mut c = txpipe_client::broker::v1::broker_client::BrokerClient::new(ch);
    match c
        .list_streams(txpipe_client::broker::v1::ListStreamsRequest::default())
        .await
    {
        Ok(_) => panic!("the broker served a client without a certificate"),
        Err(s) => s.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_ca_bundle_applies_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let next = Ca::new(&dir.path().join("pki"), "next");
    let mut c = test_config(&dir.path().join("data"));
    let server = ca.leaf("broker/0");
    // The broker's trust bundle is a copy that the test rewrites.
    let bundle = dir.path().join("trust.pem");
    std::fs::copy(&ca.cert, &bundle).unwrap();
    c.tls_cert_file = Some(server.cert.clone());
    c.tls_key_file = Some(server.key.clone());
    c.tls_ca_file = Some(bundle.clone());
    let b = TestBroker::start(c);
    let old = ca.leaf("reader").options();
    drop(client(b.grpc, &old).await);
    // Clients of the next CA (they still verify the broker with the first CA).
    let new = TlsOptions {
        ca: ca.cert.clone(),
        ..next.leaf("reader").options()
    };
    refused(&b, Some(&new)).await;

    // Rotate the trust bundle to the next CA only: the first CA is revoked.
    std::fs::write(&bundle, std::fs::read(&next.cert).unwrap()).unwrap();
    drop(client(b.grpc, &new).await);
    refused(&b, Some(&old)).await;
    b.stop().await;
}
