//! Client of the brokers' admin HTTP API (port 9180): `GET /status.json` (readiness, node id,
//! per-stream Raft view) and `POST /cluster/voters` (make exactly these peers the voters of
//! every Raft group the called broker leads).
//!
//! The controller talks to the brokers through the [`BrokerAdmin`] trait so that the
//! reconcile tests can substitute a fake; [`HttpBrokerAdmin`] is the real implementation.
//!
//! Brokers with TLS serve their admin port over HTTPS and accept `POST /cluster/voters` only
//! from a client certificate of the `operator` role (`spiffe://txpipe/operator`, see the
//! broker's `admin` module and `docs/security.md`). [`HttpBrokerAdmin::with_tls`] gives the
//! operator that certificate ([`BrokerTlsArgs`]: `--broker-tls-ca-file`,
//! `--broker-tls-cert-file`, `--broker-tls-key-file`); without it the operator speaks plain
//! HTTP, which only brokers without TLS answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use txpipe_client::tls::{TLS_RECHECK_INTERVAL, TlsOptions, TlsWatch};

use crate::{Error, Result};

/// Boxed future returned by [`BrokerAdmin`] methods (boxed so the trait is object safe and
/// usable as `Arc<dyn BrokerAdmin>`).
pub type AdminFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Per-stream outcome of `POST /cluster/voters` as answered by one broker: `"changed"`,
/// `"unchanged"`, `"not leader"` or `"error: ..."`, keyed by stream name.
pub type VotersOutcome = BTreeMap<String, String>;

/// The brokers' admin API, as the controller uses it.
pub trait BrokerAdmin: Send + Sync {
    /// `GET http(s)://<addr>/status.json`; `addr` is `host:port` of the admin listener.
    ///
    /// Errors: [`Error::BrokerAdmin`] when the broker cannot be reached, answers non-2xx, or
    /// the body is not the expected JSON.
    fn status<'a>(&'a self, addr: &'a str) -> AdminFuture<'a, BrokerNodeStatus>;

    /// `POST http(s)://<addr>/cluster/voters` with body `{"voters": [...]}` (peer addresses
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

/// The files the operator presents to TLS brokers' admin ports (flags of `txpipe-operator
/// run`, each also an environment variable). All three or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BrokerTlsArgs {
    /// CA bundle (PEM) the brokers' certificates chain to. With --broker-tls-cert-file and
    /// --broker-tls-key-file: call the brokers' admin ports over HTTPS with this identity
    /// (needed when the brokers run with TLS). None of the three: plain HTTP.
    #[arg(long, env = "OPERATOR_BROKER_TLS_CA_FILE")]
    pub broker_tls_ca_file: Option<PathBuf>,
    /// The operator's certificate (PEM), URI SAN `spiffe://txpipe/operator`.
    #[arg(long, env = "OPERATOR_BROKER_TLS_CERT_FILE")]
    pub broker_tls_cert_file: Option<PathBuf>,
    /// The operator's private key (PEM).
    #[arg(long, env = "OPERATOR_BROKER_TLS_KEY_FILE")]
    pub broker_tls_key_file: Option<PathBuf>,
}

impl BrokerTlsArgs {
    /// The options, `None` for plain HTTP.
    ///
    /// Errors: [`Error::Config`] naming the missing flags when only some are given.
    pub fn options(&self) -> Result<Option<TlsOptions>> {
        TlsOptions::from_parts(
            self.broker_tls_ca_file.clone(),
            self.broker_tls_cert_file.clone(),
            self.broker_tls_key_file.clone(),
        )
        .map_err(|e| Error::Config(e.replace("--tls-", "--broker-tls-")))
    }
}

/// [`BrokerAdmin`] over HTTP, or HTTPS with the operator's certificate (reqwest with rustls).
#[derive(Clone, Debug)]
pub struct HttpBrokerAdmin {
    http: Arc<RwLock<reqwest::Client>>,
    /// The files and their watch: the client is rebuilt when they change (rotation).
    tls: Option<(TlsOptions, Arc<TlsWatch>)>,
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
            http: Arc::new(RwLock::new(
                build_client(status_timeout, None).unwrap_or_default(),
            )),
            tls: None,
            status_timeout,
            voters_timeout,
        }
    }

    /// A client with the default timeouts that calls `https://` with `tls` (the CA the
    /// brokers' certificates chain to, and the operator's certificate and key), or plain
    /// `http://` with `None`. The files are read again when they change (checked at most
    /// every [`TLS_RECHECK_INTERVAL`]), so a rotated certificate is used without a restart.
    ///
    /// Errors: [`Error::Config`] naming a file that cannot be read or parsed.
    pub fn with_tls(tls: Option<TlsOptions>) -> Result<Self> {
        let mut admin = Self::new();
        if let Some(t) = tls {
            *admin.http.write().expect("client lock") =
                build_client(admin.status_timeout, Some(&t))?;
            let watch = Arc::new(TlsWatch::new(&t, TLS_RECHECK_INTERVAL));
            admin.tls = Some((t, watch));
        }
        Ok(admin)
    }

    /// `http` or `https`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client, rebuilt first when the TLS files changed (a failed rebuild keeps the
    /// previous client and logs a warning).
    fn client(&self) -> reqwest::Client {
        if let Some((t, watch)) = &self.tls
            && watch.changed()
        {
            match build_client(self.status_timeout, Some(t)) {
                Ok(c) => {
                    tracing::info!(cert = %t.cert.display(), "broker TLS files changed: reloaded");
                    *self.http.write().expect("client lock") = c;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "broker TLS files changed but cannot be loaded; keeping the previous ones")
                }
            }
        }
        self.http.read().expect("client lock").clone()
    }
}

/// A reqwest client; with `tls`, it trusts only the CA file and presents the certificate.
/// The connect timeout bounds DNS + TCP for pods that do not exist yet.
fn build_client(connect_timeout: Duration, tls: Option<&TlsOptions>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(connect_timeout);
    if let Some(t) = tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| Error::Config(format!("reading {}: {e}", p.display())))
        };
        let ca = reqwest::Certificate::from_pem_bundle(&read(&t.ca)?)
            .map_err(|e| Error::Config(format!("--broker-tls-ca-file {}: {e}", t.ca.display())))?;
        let mut pem = read(&t.cert)?;
        pem.push(b'\n');
        pem.extend(read(&t.key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            Error::Config(format!(
                "--broker-tls-cert-file {} with --broker-tls-key-file {}: {e}",
                t.cert.display(),
                t.key.display()
            ))
        })?;
        b = b
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .identity(id);
        for c in ca {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
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
                .client()
                .get(format!("{}://{addr}/status.json", self.scheme()))
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
                .client()
                .post(format!("{}://{addr}/cluster/voters", self.scheme()))
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
