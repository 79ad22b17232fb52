//! The operator's admin client against a real TLS broker (issue 14): with `--broker-tls-*`
//! files of the `operator` role it reads `/status.json` and changes voters over HTTPS; with a
//! certificate of another role the broker answers 403, and plain HTTP gets no answer.

use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use txpipe_client::tls::TlsOptions;
use txpipe_operator::Error;
use txpipe_operator::broker_admin::{BrokerAdmin, HttpBrokerAdmin};

/// Writes a CA and leaves `spiffe://txpipe/<role>` (valid for localhost and 127.0.0.1) into
/// `dir`; returns the options of each role in `roles` (same order).
fn pki(dir: &Path, roles: &[&str]) -> Vec<TlsOptions> {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = p.self_signed(&ca_key).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(p, ca_key);
    roles
        .iter()
        .map(|role| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
            p.subject_alt_names.push(SanType::URI(
                format!("spiffe://txpipe/{role}").try_into().unwrap(),
            ));
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &issuer).unwrap();
            let stem = role.replace('/', "-");
            let (c, k) = (
                dir.join(format!("{stem}.pem")),
                dir.join(format!("{stem}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            TlsOptions {
                ca: ca.clone(),
                cert: c,
                key: k,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_changes_voters_of_a_tls_broker_with_its_certificate_only() {
    let dir = tempfile::tempdir().unwrap();
    let tls = pki(dir.path(), &["broker/0", "operator", "producer"]);
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (grpc, peer, admin) = (bind(), bind(), bind());
    let admin_addr = admin.local_addr().unwrap().to_string();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let mut c = txpipe_broker::Config::new(dir.path().join("data"));
    c.node_id = Some(0);
    c.peers = vec![peer_addr.clone()];
    c.client_addrs = vec![grpc.local_addr().unwrap().to_string()];
    c.tls_ca_file = Some(tls[0].ca.clone());
    c.tls_cert_file = Some(tls[0].cert.clone());
    c.tls_key_file = Some(tls[0].key.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(async move {
        let l = |s: std::net::TcpListener| {
            s.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(s).unwrap()
        };
        let listeners = txpipe_broker::Listeners {
            grpc: l(grpc),
            peer: l(peer),
            admin: l(admin),
        };
        txpipe_broker::run(c, listeners, async move {
            let _ = stop_rx.await;
        })
        .await
    });

    let operator = HttpBrokerAdmin::with_tls(Some(tls[1].clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match operator.status(&admin_addr).await {
            Ok(s) if s.ready && !s.raft.is_empty() => break,
            other => assert!(Instant::now() < deadline, "broker not ready: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = operator
        .set_voters(&admin_addr, std::slice::from_ref(&peer_addr))
        .await
        .unwrap();
    assert!(
        !out.is_empty() && out.values().all(|v| v == "unchanged"),
        "{out:?}"
    );

    let producer = HttpBrokerAdmin::with_tls(Some(tls[2].clone())).unwrap();
    match producer
        .set_voters(&admin_addr, &["127.0.0.1:1".into()])
        .await
    {
        Err(Error::BrokerAdmin { message, .. }) => {
            assert!(message.contains("403"), "{message}");
            assert!(
                message.contains("spiffe://txpipe/producer may not"),
                "{message}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Without the files the operator speaks plain HTTP, which the HTTPS port does not answer.
    assert!(HttpBrokerAdmin::new().status(&admin_addr).await.is_err());

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), broker)
        .await
        .expect("broker stops")
        .unwrap()
        .unwrap();
}

#[test]
fn broker_tls_flags_need_all_three_files() {
    use txpipe_operator::broker_admin::BrokerTlsArgs;
    assert_eq!(BrokerTlsArgs::default().options().unwrap(), None);
    let e = BrokerTlsArgs {
        broker_tls_ca_file: Some("ca".into()),
        ..Default::default()
    }
    .options()
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("missing --broker-tls-cert-file, --broker-tls-key-file"),
        "{e}"
    );
    let e = HttpBrokerAdmin::with_tls(Some(TlsOptions {
        ca: "/nonexistent/ca.pem".into(),
        cert: "c".into(),
        key: "k".into(),
    }))
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
}
