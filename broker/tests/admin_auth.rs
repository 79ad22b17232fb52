//! The admin split (issue 14): a TLS broker serves its admin port over HTTPS with the same
//! certificate; read-only endpoints answer without a client certificate (monitoring), and
//! `POST /cluster/voters` needs the operator's certificate: 401 without one (membership
//! unchanged), 403 naming the principal for any other role, 200 for the operator.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::pki::{Ca, Leaf, https};
use common::{TestBroker, cluster_configs, wait_until};

/// A one-node TLS broker serving `broker/0` of `ca`, ready, and its peer address.
async fn tls_node(dir: &Path, ca: &Ca) -> (TestBroker, String) {
    let (mut c, l) = cluster_configs(dir, 1).remove(0);
    ca.leaf("broker/0").serve(&mut c);
    let peer = c.peers[0].clone();
    let b = TestBroker::start_on(c, l);
    let (admin, ca_file) = (b.admin, ca.cert.clone());
    wait_until(Duration::from_secs(30), "the broker is ready", || {
        let ca_file = ca_file.clone();
        async move {
            https(admin, &ca_file, None, "GET", "/readyz", "")
                .await
                .is_ok_and(|(code, _)| code == 200)
        }
    })
    .await;
    (b, peer)
}

/// `POST /cluster/voters` with `voters`, presenting `client`'s certificate when given.
async fn post_voters(
    admin: SocketAddr,
    ca: &Path,
    client: Option<&Leaf>,
    voters: &[&str],
) -> (u16, String) {
    let body = serde_json::json!({ "voters": voters }).to_string();
    https(admin, ca, client, "POST", "/cluster/voters", &body)
        .await
        .unwrap()
}

/// The voters of every Raft group as `/status.json` reports them.
async fn voters(admin: SocketAddr, ca: &Path) -> serde_json::Value {
    let (code, body) = https(admin, ca, None, "GET", "/status.json", "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    let groups = s["raft"].as_object().expect("raft groups in /status.json");
    assert!(!groups.is_empty());
    groups
        .iter()
        .map(|(k, v)| (k.clone(), v["voters"].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_admin_endpoints_answer_over_https_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let (b, _) = tls_node(dir.path(), &ca).await;
    for path in ["/metrics", "/healthz", "/readyz", "/status.json", "/"] {
        let (code, body) = https(b.admin, &ca.cert, None, "GET", path, "")
            .await
            .unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
    }
    // With a certificate of any role they answer too.
    let (code, _) = https(
        b.admin,
        &ca.cert,
        Some(&ca.leaf("audit")),
        "GET",
        "/metrics",
        "",
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    // Plain HTTP gets no answer from the HTTPS port.
    assert_ne!(
        common::try_http_get(b.admin, "/metrics").await.map(|r| r.0),
        Some(200)
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voter_changes_need_the_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let (b, peer) = tls_node(dir.path(), &ca).await;
    let before = voters(b.admin, &ca.cert).await;

    // The attack of issue 14: replace the voters with an address of the attacker's choosing.
    let (code, body) = post_voters(b.admin, &ca.cert, None, &["127.0.0.1:1"]).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no principal"), "{body}");
    assert_eq!(
        voters(b.admin, &ca.cert).await,
        before,
        "membership changed"
    );

    for role in ["producer/p-1", "worker", "audit", "broker/1"] {
        let (code, body) =
            post_voters(b.admin, &ca.cert, Some(&ca.leaf(role)), &["127.0.0.1:1"]).await;
        assert_eq!(code, 403, "{role}: {body}");
        assert_eq!(
            body.trim(),
            format!("spiffe://txpipe/{role} may not call POST /cluster/voters"),
        );
    }
    // A certificate without a principal is as good as none.
    let anonymous = ca.leaf_without_principal("nobody");
    let (code, _) = post_voters(b.admin, &ca.cert, Some(&anonymous), &["127.0.0.1:1"]).await;
    assert_eq!(code, 401);
    assert_eq!(
        voters(b.admin, &ca.cert).await,
        before,
        "membership changed"
    );

    // The operator may: the node itself as the only voter changes nothing.
    let (code, body) = post_voters(b.admin, &ca.cert, Some(&ca.leaf("operator")), &[&peer]).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        answer
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.values().all(|v| v == "unchanged")),
        "{body}"
    );
    assert_eq!(voters(b.admin, &ca.cert).await, before);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused_by_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let other = Ca::new(&dir.path().join("pki"), "other");
    let (b, _) = tls_node(dir.path(), &ca).await;
    let before = voters(b.admin, &ca.cert).await;
    // Trusts the broker, presents an operator certificate the broker's CA did not sign.
    let forged = Leaf {
        ca: ca.cert.clone(),
        ..other.leaf("operator")
    };
    let body = serde_json::json!({ "voters": ["127.0.0.1:1"] }).to_string();
    let r = https(
        b.admin,
        &ca.cert,
        Some(&forged),
        "POST",
        "/cluster/voters",
        &body,
    )
    .await;
    assert!(
        r.as_ref().map_or(true, |(code, _)| *code == 0),
        "answered {r:?}"
    );
    assert_eq!(voters(b.admin, &ca.cert).await, before);
    b.stop().await;
}

/// Crash points can be armed at run time only by the operator (builds with `failpoints`).
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_of_a_tls_broker_need_the_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("pki"), "cluster");
    let (b, _) = tls_node(dir.path(), &ca).await;
    let point = txpipe_broker::failpoints::POINTS[0];
    let path = format!("/failpoints/{point}");
    let put = |client: Option<Leaf>, body: &'static str| {
        let (admin, ca_file, path) = (b.admin, ca.cert.clone(), path.clone());
        async move {
            https(admin, &ca_file, client.as_ref(), "PUT", &path, body)
                .await
                .unwrap()
        }
    };
    assert_eq!(put(None, "off").await.0, 401);
    let (code, body) = put(Some(ca.leaf("worker")), "off").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("may not call PUT /failpoints/{name}"),
        "{body}"
    );
    assert_eq!(put(Some(ca.leaf("operator")), "off").await.0, 200);
    b.stop().await;
}
