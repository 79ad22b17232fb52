//! Client of the brokers' admin HTTP API (port 9180): `GET /status.json` (readiness, node id,
//! per-stream Raft view) and `POST /cluster/voters` (make exactly these peers the voters of
//! every Raft group the called broker leads).
//!
//! The controller talks to the brokers through the [`BrokerAdmin`] trait so that the
//! reconcile tests can substitute a fake; [`HttpBrokerAdmin`] is the real implementation.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{Error, Result};

/// Boxed future returned by [`BrokerAdmin`] methods (boxed so the trait is object safe and
/// usable as `Arc<dyn BrokerAdmin>`).
pub type AdminFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Per-stream outcome of `POST /cluster/voters` as answered by one broker: `"changed"`,
/// `"unchanged"`, `"not leader"` or `"error: ..."`, keyed by stream name.
pub type VotersOutcome = BTreeMap<String, String>;

/// The brokers' admin API, as the controller uses it.
pub trait BrokerAdmin: Send + Sync {
    /// `GET http://<addr>/status.json`; `addr` is `host:port` of the admin listener.
    ///
    /// Errors: [`Error::BrokerAdmin`] when the broker cannot be reached, answers non-2xx, or
    /// the body is not the expected JSON.
    fn status<'a>(&'a self, addr: &'a str) -> AdminFuture<'a, BrokerNodeStatus>;

    /// `POST http://<addr>/cluster/voters` with body `{"voters": [...]}` (peer addresses
    /// `host:9200`). The called broker changes only the groups it leads (answering
    /// `"not leader"` for the others), so the controller sends it to every broker.
    ///
    /// Errors: [`Error::BrokerAdmin`] when the broker cannot be reached or answers non-2xx
    /// (e.g. 400 when a wanted voter has not joined yet, 503 while it recovers): retryable.
    fn set_voters<'a>(
        &'a self,
        addr: &'a str,
        voters: &'a [String],
    ) -> AdminFuture<'a, VotersOutcome>;
}

/// A broker's `/status.json`, as the broker writes it ([`txpipe_client::status`]: one
/// definition for broker, operator and `txpipe`; unknown fields are ignored, missing ones
/// default). A recovering broker answers `{"ready": false, "streams": []}`: no node id and no
/// Raft view; [`BrokerNodeStatus::known_node_id`] is the id once it is known.
pub use txpipe_client::status::BrokerStatus as BrokerNodeStatus;

/// One stream's Raft group as seen by one broker (`raft.<stream>` of `/status.json`).
pub use txpipe_client::status::RaftStatus as StreamRaftStatus;

/// [`BrokerAdmin`] over plain HTTP (reqwest, no TLS: the admin port is cluster-internal).
#[derive(Clone, Debug)]
pub struct HttpBrokerAdmin {
    http: reqwest::Client,
    status_timeout: Duration,
    voters_timeout: Duration,
}

impl HttpBrokerAdmin {
    /// Timeout of one `GET /status.json`: 2 s.
    pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
    /// Timeout of one `POST /cluster/voters`: 10 s (the leader adds a learner and waits for
    /// it to catch up before promoting it; the call is idempotent, so a timeout is retried).
    pub const VOTERS_TIMEOUT: Duration = Duration::from_secs(10);

    /// A client with the default timeouts ([`Self::STATUS_TIMEOUT`], [`Self::VOTERS_TIMEOUT`]).
    pub fn new() -> Self {
        Self::with_timeouts(Self::STATUS_TIMEOUT, Self::VOTERS_TIMEOUT)
    }

    /// A client with explicit per-call timeouts.
    pub fn with_timeouts(status_timeout: Duration, voters_timeout: Duration) -> Self {
        Self {
            // Connect timeout bounds DNS + TCP for pods that do not exist yet.
            http: reqwest::Client::builder()
                .connect_timeout(status_timeout)
                .build()
                .unwrap_or_default(),
            status_timeout,
            voters_timeout,
        }
    }
}

impl Default for HttpBrokerAdmin {
    fn default() -> Self {
        Self::new()
    }
}

fn admin_err(addr: &str, message: impl std::fmt::Display) -> Error {
    Error::BrokerAdmin {
        addr: addr.to_string(),
        message: message.to_string(),
    }
}

/// Reads a response, mapping non-2xx to an error that carries the status and body.
async fn success_body(addr: &str, resp: reqwest::Response) -> Result<Vec<u8>> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| admin_err(addr, e))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(admin_err(addr, format!("HTTP {status}: {}", text.trim())));
    }
    Ok(body.to_vec())
}

impl BrokerAdmin for HttpBrokerAdmin {
    fn status<'a>(&'a self, addr: &'a str) -> AdminFuture<'a, BrokerNodeStatus> {
        Box::pin(async move {
            let resp = self
                .http
                .get(format!("http://{addr}/status.json"))
                .timeout(self.status_timeout)
                .send()
                .await
                .map_err(|e| admin_err(addr, e))?;
            let body = success_body(addr, resp).await?;
            serde_json::from_slice(&body).map_err(|e| admin_err(addr, format!("status.json: {e}")))
        })
    }

    fn set_voters<'a>(
        &'a self,
        addr: &'a str,
        voters: &'a [String],
    ) -> AdminFuture<'a, VotersOutcome> {
        Box::pin(async move {
            let resp = self
                .http
                .post(format!("http://{addr}/cluster/voters"))
                .timeout(self.voters_timeout)
                .json(&serde_json::json!({ "voters": voters }))
                .send()
                .await
                .map_err(|e| admin_err(addr, e))?;
            let body = success_body(addr, resp).await?;
            serde_json::from_slice(&body)
                .map_err(|e| admin_err(addr, format!("/cluster/voters answer: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a ready node 2 answers: it leads `transactions`; node 2 is a learner of
    /// `decisions`, whose leader it does not know.
    fn ready() -> BrokerNodeStatus {
        let group = |is_leader: bool, voters: &[u64], learners: &[u64]| StreamRaftStatus {
            term: 3,
            leader_id: is_leader.then_some(2),
            is_leader,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            ..StreamRaftStatus::default()
        };
        BrokerNodeStatus {
            node_id: Some(2),
            ready: true,
            raft: BTreeMap::from([
                ("transactions".to_string(), group(true, &[0, 1, 2], &[])),
                ("decisions".to_string(), group(false, &[0, 1], &[2])),
            ]),
            ..BrokerNodeStatus::default()
        }
    }

    /// Serves the two admin routes on 127.0.0.1 (port chosen by the OS).
    async fn serve(voters_status: u16) -> (String, tokio::task::JoinHandle<()>) {
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route("/status.json", get(|| async { axum::Json(ready()) }))
            .route(
                "/cluster/voters",
                post(move |body: axum::Json<serde_json::Value>| async move {
                    let code = axum::http::StatusCode::from_u16(voters_status).unwrap();
                    if code.is_success() {
                        let n = body["voters"].as_array().map_or(0, |v| v.len());
                        (code, format!(r#"{{"transactions":"changed","n":"{n}"}}"#))
                    } else {
                        (code, "decisions is not a member\n".to_string())
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_admin_reads_status_and_posts_voters() {
        let (addr, task) = serve(200).await;
        let admin = HttpBrokerAdmin::new();
        assert_eq!(admin.status(&addr).await.unwrap(), ready());
        let out = admin
            .set_voters(&addr, &["a:9200".into(), "b:9200".into()])
            .await
            .unwrap();
        assert_eq!(out["transactions"], "changed");
        assert_eq!(out["n"], "2");
        task.abort();
    }

    #[tokio::test]
    async fn http_admin_maps_a_non_2xx_answer_to_a_broker_admin_error() {
        let (addr, task) = serve(400).await;
        let err = HttpBrokerAdmin::new()
            .set_voters(&addr, &["a:9200".into()])
            .await
            .unwrap_err();
        match err {
            Error::BrokerAdmin { addr: a, message } => {
                assert_eq!(a, addr);
                assert!(message.contains("400"), "{message}");
                assert!(message.contains("not a member"), "{message}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        task.abort();
    }

    #[tokio::test]
    async fn http_admin_maps_an_unreachable_broker_to_a_broker_admin_error() {
        // Bind then drop a listener: the port is (very likely) closed afterwards.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = HttpBrokerAdmin::new().status(&addr).await.unwrap_err();
        assert!(matches!(err, Error::BrokerAdmin { .. }), "{err:?}");
    }
}
