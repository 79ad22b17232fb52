//! Local mode's certificates ([`txpipe::certs`]) on a real broker: a broker serving its run
//! certificate refuses a client without one, and each process's certificate gets that
//! process's rights (the reader reads, the producer may not).

mod common;

use std::time::{Duration, Instant};

use common::InProcessBroker;

use tonic::Code;
use txpipe::certs::RunCerts;
use txpipe_client::broker::v1::broker_client::BrokerClient;
use txpipe_client::broker::v1::{FetchRequest, ListStreamsRequest};
use txpipe_client::connect::endpoint_with;
use txpipe_client::tls::TlsOptions;

/// ListStreams at `addr` over a new connection made with `tls` (`None`: plaintext); the error
/// of the connection or the call.
async fn list_streams(addr: &str, tls: Option<&TlsOptions>) -> Result<(), String> {
    let ep = endpoint_with(&format!("http://{addr}"), tls).map_err(|e| e.to_string())?;
    let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    BrokerClient::new(ch)
        .list_streams(ListStreamsRequest::default())
        .await
        .map(drop)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_mode_broker_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = RunCerts::issue(&dir.path().join("tls"), &[vec!["127.0.0.1".into()]], 1).unwrap();
    let mut config = txpipe_broker::Config::new(dir.path().join("broker-0"));
    let tls = certs.broker(0);
    config.tls_cert_file = Some(tls.cert);
    config.tls_key_file = Some(tls.key);
    config.tls_ca_file = Some(tls.ca);
    let broker = InProcessBroker::start(config).await;
    let addr = broker.addr.clone();

    // The run's reader is served (waiting until the broker is up, at most 30 s).
    let reader = certs.reader();
    let began = Instant::now();
    while let Err(e) = list_streams(&addr, Some(&reader)).await {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the reader was not served: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Plaintext: no TLS at all.
    assert!(list_streams(&addr, None).await.is_err());
    // TLS that trusts the run's CA but presents no certificate.
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(certs.ca()).unwrap()),
        ))
        .unwrap();
    if let Ok(ch) = ep.connect().await {
        let call = BrokerClient::new(ch)
            .list_streams(ListStreamsRequest::default())
            .await;
        assert!(call.is_err(), "served a client without a certificate");
    }
    // The producer's certificate authenticates but may not read.
    let ch = endpoint_with(&format!("http://{addr}"), Some(&certs.producer()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let denied = BrokerClient::new(ch)
        .fetch(FetchRequest {
            stream: "decisions".into(),
            ..FetchRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("spiffe://txpipe/producer"),
        "{denied:?}"
    );

    broker.stop().await;
}
