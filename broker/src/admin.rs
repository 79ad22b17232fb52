//! Admin HTTP (axum): `/metrics` (Prometheus text), `/healthz` (500 once a stream's log
//! failed and the process must restart), `/readyz` (recovered and serving gRPC, every stream
//! healthy; 503 with the reasons otherwise, see [`crate::health`]), `/status.json` and `/` (a live status page that polls
//! `/status.json` every second: per stream consumers, throughput, queue depth, in-flight,
//! redeliveries, dead letters, segments and bytes, Raft leaders and terms), and
//! `POST /cluster/voters` (body `{"voters": ["<peer host:port>", ...]}`): makes exactly those
//! nodes voters of every stream group this node leads (each must have joined first, as a
//! learner); answers per stream `changed`, `unchanged`, `not leader` or an error. Call it on
//! every node until no stream answers `not leader` (the operator does).
//!
//! ## Who may call what
//!
//! With TLS configured (`--tls-cert-file/--tls-key-file/--tls-ca-file`) the port serves
//! HTTPS with the same files as the gRPC ports (reloaded when they change, see
//! [`crate::tls`]). A client certificate is requested but optional, and verified against the
//! CA when given:
//! - the read-only endpoints (`/metrics`, `/healthz`, `/readyz`, `/status.json`, `/`) answer
//!   without a client certificate (Prometheus and kubelet probes);
//! - the mutating ones (`POST /cluster/voters`, and `PUT /failpoints/{name}` in builds with
//!   the `failpoints` feature) need a client certificate whose principal has the `operator`
//!   role ([`crate::auth`], operation [`Operation::Admin`]): `401 Unauthorized` without a
//!   certificate (or one without a principal), `403 Forbidden` naming the principal and the
//!   request otherwise. The check runs before the body is read.
//!
//! **Without TLS the admin port is unauthenticated**: anyone who can reach it can change the
//! voters of every Raft group. Keep it reachable only from the operator and monitoring (a
//! NetworkPolicy), or turn TLS on.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use crate::auth::{Acl, Operation};
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::tls::{Principal, ServerTls};

/// State of the admin server: the broker appears once recovery is done.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// The broker, set after recovery.
    pub broker: Arc<OnceLock<Arc<Broker>>>,
    /// True while an empty replica waits for its peers to decide the cluster's bootstrap.
    pub waiting_for_peers: Arc<std::sync::atomic::AtomicBool>,
    /// Access check of the mutating requests: enforced when the port serves TLS.
    pub acl: Acl,
}

/// The admin router. Mutating routes go through the [`Acl`] of `state` (see the module
/// docs); they read the caller from the [`AdminPeer`] connect info that [`serve`] attaches.
pub fn router(state: AdminState) -> Router {
    let voters = post(set_voters).route_layer(axum::middleware::from_fn_with_state(
        (state.acl, Operation::Admin("POST /cluster/voters")),
        require,
    ));
    let r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status.json", get(status_json))
        .route("/cluster/voters", voters)
        .route("/", get(|| async { Html(PAGE) }));
    #[cfg(feature = "failpoints")]
    let r = r.route(
        "/failpoints/{name}",
        axum::routing::put(set_failpoint).route_layer(axum::middleware::from_fn_with_state(
            (state.acl, Operation::Admin("PUT /failpoints/{name}")),
            require,
        )),
    );
    r.with_state(state)
}

/// Who is on the other end of an admin connection: its address and, over TLS with a client
/// certificate that names one, its [`Principal`].
#[derive(Debug, Clone)]
pub struct AdminPeer {
    /// Remote address.
    pub addr: SocketAddr,
    /// The principal of the verified client certificate; `None` over plaintext or without a
    /// certificate.
    pub principal: Option<Principal>,
}

impl Connected<axum::serve::IncomingStream<'_, TcpListener>> for AdminPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            principal: None,
        }
    }
}

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for AdminPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let principal = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(Principal::from_certs);
        Self {
            addr: *stream.remote_addr(),
            principal,
        }
    }
}

/// Middleware of a mutating route: lets the request through when `acl` allows `op` for the
/// caller's principal; else `401` (no principal) or `403` (naming the principal and the
/// request), as plain text.
async fn require(State((acl, op)): State<(Acl, Operation)>, req: Request, next: Next) -> Response {
    let principal = req
        .extensions()
        .get::<ConnectInfo<AdminPeer>>()
        .and_then(|c| c.0.principal.clone());
    match acl.authorize(principal.as_ref(), op, "") {
        Ok(()) => next.run(req).await,
        Err(s) => {
            let code = match s.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            (code, format!("{}\n", s.message())).into_response()
        }
    }
}

/// The TLS connections of the admin port, handshaken concurrently by [`crate::tls::incoming`]
/// (an [`axum::serve::Listener`]).
pub struct TlsListener {
    local: SocketAddr,
    conns: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.conns.next().await {
                Some(Ok(io)) => match io.get_ref().0.peer_addr() {
                    Ok(addr) => return (io, addr),
                    Err(e) => tracing::debug!(error = %e, "admin connection gone"),
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                // The accept task ends only with the listener: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` (from [`router`]) on `listener` until `shutdown` resolves: HTTPS with `tls`
/// (settings built with [`crate::tls::ClientCerts::Optional`]; failed handshakes counted in
/// `failures`), else plain HTTP.
///
/// Errors: I/O errors of the server.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<(Arc<ServerTls>, prometheus::IntCounter)>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<AdminPeer>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((tls, failures)) => {
            let local = listener.local_addr()?;
            let conns = crate::tls::incoming(TcpListenerStream::new(listener), tls, failures);
            axum::serve(TlsListener { local, conns }, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// `PUT /failpoints/<name>` with an action as the body (e.g. `return`, `off`): configures crash
/// point `name` at run time, so a test can arm it only once its cluster has formed. Only in
/// builds with the `failpoints` feature (tests); 404 for a name not in
/// [`crate::failpoints::POINTS`], 400 for an action the `fail` crate rejects.
#[cfg(feature = "failpoints")]
async fn set_failpoint(
    axum::extract::Path(name): axum::extract::Path<String>,
    body: String,
) -> Response {
    if !crate::failpoints::POINTS.contains(&name.as_str()) {
        return (StatusCode::NOT_FOUND, format!("no crash point {name:?}\n")).into_response();
    }
    match fail::cfg(name.clone(), body.trim()) {
        Ok(()) => (StatusCode::OK, format!("{name} = {}\n", body.trim())).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Body of `POST /cluster/voters`.
#[derive(Debug, serde::Deserialize)]
pub struct VotersRequest {
    /// Peer addresses `host:port` of the wanted voters.
    pub voters: Vec<String>,
}

async fn set_voters(
    State(s): State<AdminState>,
    axum::Json(req): axum::Json<VotersRequest>,
) -> Response {
    let Some(b) = s.broker.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response();
    };
    if req.voters.is_empty() {
        return (StatusCode::BAD_REQUEST, "voters must not be empty\n").into_response();
    }
    match b.cluster.set_voters(&req.voters).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// 200 once serving. Also 200 ("waiting for peers") while an empty replica waits for the
/// other replicas to start before the cluster can bootstrap: a StatefulSet with
/// `podManagementPolicy: OrderedReady` starts pod `i + 1` only once pod `i` is ready, so
/// readiness must not wait for the bootstrap (clients find no client port yet and try the
/// next broker).
/// 200 while the process can go on; 500 with the reason once a stream's log failed (a
/// poisoned writer needs a restart, see [`crate::health`]), so the liveness probe restarts
/// the pod.
async fn healthz(State(s): State<AdminState>) -> Response {
    match s.broker.get().and_then(|b| b.health().restart) {
        Some(reason) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("restart needed: {reason}\n"),
        )
            .into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    match s.broker.get() {
        Some(b) if !b.health().all_serving() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not serving:\n{}", b.health().reasons()),
        )
            .into_response(),
        Some(b) if b.is_ready() => (StatusCode::OK, "ready\n").into_response(),
        None if s
            .waiting_for_peers
            .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            (StatusCode::OK, "waiting for peers to bootstrap\n").into_response()
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "recovering\n").into_response(),
    }
}

async fn status_json(State(s): State<AdminState>) -> Response {
    match s.broker.get() {
        Some(b) => axum::Json(b.status()).into_response(),
        None => axum::Json(crate::broker::BrokerStatus {
            ready: false,
            waiting_for_peers: s
                .waiting_for_peers
                .load(std::sync::atomic::Ordering::Relaxed),
            ..Default::default()
        })
        .into_response(),
    }
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>txpipe broker</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}h1{font-size:1.3em}.dim{color:#888}
</style></head><body>
<h1>txpipe broker <span id="ready" class="dim"></span></h1>
<table id="streams"><thead><tr><th>stream</th><th>retention</th><th>producers</th><th>consumers</th>
<th>produce/s</th><th>deliver/s</th><th>ack/s</th><th>pending</th><th>in flight</th><th>redelivered</th>
<th>dead letters</th><th>dedup</th><th>offsets</th><th>segments</th><th>MiB</th></tr></thead><tbody></tbody></table>
<h2 style="font-size:1.1em">consumers</h2>
<table id="consumers"><thead><tr><th>stream</th><th>consumer</th><th>window</th><th>in flight</th><th>delivered</th></tr></thead><tbody></tbody></table>
<p class="dim">Refreshes every second from <a href="/status.json">/status.json</a>; <a href="/metrics">/metrics</a>.</p>
<script>
const f=n=>Math.round(n).toLocaleString();
async function tick(){
 try{
  const s=await (await fetch('/status.json')).json();
  document.getElementById('ready').textContent=(s.ready?'ready':'recovering')+' · up '+s.uptime_s+' s · fsyncs '+f(s.fsyncs_total);
  let rows='',crows='';
  for(const t of s.streams){
   rows+=`<tr><td>${t.name}</td><td>${t.retention}</td><td>${t.producers}</td><td>${t.consumers}</td><td>${f(t.produce_per_s)}</td><td>${f(t.deliver_per_s)}</td><td>${f(t.ack_per_s)}</td><td>${f(t.pending)}</td><td>${f(t.in_flight)}</td><td>${f(t.redelivered_total)}</td><td>${f(t.dead_lettered_total)}</td><td>${f(t.deduplicated_total)}</td><td>${f(t.start_offset)}–${f(t.end_offset)}</td><td>${t.segments}</td><td>${(t.bytes/1048576).toFixed(1)}</td></tr>`;
   for(const c of t.consumer_list){crows+=`<tr><td>${t.name}</td><td>${c.name}</td><td>${c.window}</td><td>${c.in_flight}</td><td>${f(c.delivered)}</td></tr>`;}
  }
  document.querySelector('#streams tbody').innerHTML=rows;
  document.querySelector('#consumers tbody').innerHTML=crows;
 }catch(e){document.getElementById('ready').textContent='unreachable';}
}
tick();setInterval(tick,1000);
</script></body></html>
"#;
