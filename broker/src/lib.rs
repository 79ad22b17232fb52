//! txpipe broker: a durable segmented log per stream, idempotent produce, and work-queue
//! delivery with acks, redelivery and dead letters, served over gRPC.
//!
//! Map of the modules, bottom up:
//!
//! - [`log`]: the segmented append-only log and its group-commit writer (storage engine).
//! - [`command`]: the commands a stream's log entries hold, and their binary encoding.
//! - [`state`]: the pure, deterministic state machine of a stream (offsets, idempotent
//!   producers, key dedupe, ack floor) — unit-tested table style.
//! - [`dedupe`]: the on-disk key-dedupe index and its window (age and count).
//! - [`ledger`]: the ledger's pure state machine (accounts, transfers, holds) with its
//!   snapshot and command encodings (issue 15); its shards are streams (Raft groups)
//!   `ledger-<i>` whose state holds a ledger, served by [`ledger_service`]
//!   (`txpipe.ledger.v1`).
//! - [`snapshot`]: atomic snapshot files of a stream's state.
//! - [`replica`]: one stream = log + state + the single-node replicator seam
//!   ([`replica::Replica::propose`]), recovery, reads, snapshots and retention. Issue
//!   "Replicated broker" swaps the seam for openraft.
//! - [`delivery`]: the consumer group of a work-queue stream (windows, deadlines, redelivery,
//!   dead letters, batched acks).
//! - [`broker`]: the set of streams and background work; [`service`]: the gRPC API;
//!   [`admin`]: the admin HTTP port; [`metrics`]; [`config`]; [`error`].
//! - [`tls`]: opt-in mutual TLS on the client and peer ports, with certificate reload, and
//!   the caller's [`tls::Principal`] from its certificate; [`auth`]: what each principal's
//!   role may do, enforced when TLS is on.
//!
//! [`run`] wires it all: recovery, gRPC (with `grpc.health.v1` and reflection), admin HTTP,
//! periodic snapshots and retention, and a clean shutdown.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod command;
pub mod config;
pub mod datadir;
pub mod dedupe;
pub mod delivery;
pub mod error;
pub mod failpoints;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod health;
/// The ledger's deterministic state machine (accounts, transfers, holds, linked events;
/// TigerBeetle's semantics), pure and ready for a Raft group's apply (issue 15).
pub mod ledger;
pub mod ledger_service;
/// Broker-wide admission limits: in-flight produce bytes, concurrent reads, connections.
pub mod limits;
pub mod log;
pub mod metrics;
pub mod raft;
pub mod repair;
pub mod replica;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod tls;

use openraft::async_runtime::watch::WatchReceiver as _;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use txpipe_client::broker::v1::broker_server::BrokerServer;

pub use config::{Config, LogFormat};
pub use error::{Error, Result};

/// Largest gRPC message accepted: twice the batch limit plus 1 MiB of framing, so that a
/// batch over `max_batch_bytes` reaches the broker's own check (RESOURCE_EXHAUSTED with a
/// message) rather than tonic's generic one.
pub fn grpc_max_message_bytes(config: &Config) -> usize {
    config
        .max_batch_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20)
}

/// The three sockets of a broker, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Client gRPC (`txpipe.broker.v1.Broker`, health, reflection).
    pub grpc: TcpListener,
    /// Peer gRPC (`txpipe.raft.v1.RaftPeer`).
    pub peer: TcpListener,
    /// Admin HTTP.
    pub admin: TcpListener,
}

/// Runs a broker until `shutdown` resolves.
///
/// Order: validate the config, lock the data directory ([`datadir`]: a second broker on the
/// same directory fails here), serve the admin port (`/healthz` answers at once, `/readyz` is
/// 503) and the peer port, resolve the node identity (see [`raft::cluster`]: may wait for
/// peers), recover every stream and start its Raft group, bootstrap or join when the volume
/// was empty, serve gRPC and report SERVING through `grpc.health.v1` and `/readyz` (serving
/// does not wait for leaders: a follower answers with leader hints). On shutdown: long-lived
/// calls end with UNAVAILABLE, gRPC stops (up to 5 s of grace), pending acks are made durable
/// when this node leads, Raft stops and a final snapshot of each stream is written.
///
/// Errors: [`Error::Config`] for an invalid config or a volume of another ordinal, recovery
/// errors ([`Error::Log`], [`Error::Snapshot`], [`Error::Decode`]), [`Error::Io`] for
/// listener failures.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let Listeners {
        grpc: grpc_listener,
        peer: peer_listener,
        admin: admin_listener,
    } = listeners;
    config.validate()?;
    let server_tls = config.tls_files()?.map(tls::ServerTls::load).transpose()?;
    // Held until `run` returns: one broker per data directory.
    let _dir_lock = datadir::DataDirLock::acquire(&config.data_dir)?;
    let metrics = metrics::Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, data_dir = %config.data_dir.display(), "txpipe broker starting");

    let slot: Arc<OnceLock<Arc<broker::Broker>>> = Arc::new(OnceLock::new());
    let waiting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_app = admin::router(admin::AdminState {
        metrics: metrics.clone(),
        broker: Arc::clone(&slot),
        waiting_for_peers: Arc::clone(&waiting),
        acl: auth::Acl::new(server_tls.is_some()),
    });
    // HTTPS with the same files when TLS is on; a client certificate is optional there.
    let admin_tls = match &server_tls {
        Some(t) => Some((
            tls::ServerTls::load_with(t.files().clone(), tls::ClientCerts::Optional)?,
            metrics.tls_handshake_failures.with_label_values(&["admin"]),
        )),
        None => None,
    };
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        let r = admin::serve(admin_listener, admin_app, admin_tls, async move {
            crate::broker::stopped(&mut admin_stop).await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin server failed");
        }
    });

    // Shutdown may be requested during recovery.
    let stop_signal = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
    };

    // Peer service first: other nodes poll our Status while we all decide identities.
    let cluster = raft::cluster::Cluster::new(&config);
    let peer_addr = peer_listener.local_addr()?;
    let mut peer_stop = stop_rx.clone();
    let peer_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_adaptive_window(Some(true))
        .add_service(raft::peer::server_with_acl(
            Arc::clone(&cluster),
            auth::Acl::new(server_tls.is_some()),
        ));
    let peer_incoming = tonic::transport::server::TcpIncoming::from(peer_listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let peer_shutdown = async move {
        crate::broker::stopped(&mut peer_stop).await;
    };
    let peer_task = match &server_tls {
        Some(t) => tokio::spawn(peer_router.serve_with_incoming_shutdown(
            tls::incoming(
                peer_incoming,
                Arc::clone(t),
                metrics.tls_handshake_failures.with_label_values(&["peer"]),
            ),
            peer_shutdown,
        )),
        None => {
            tokio::spawn(peer_router.serve_with_incoming_shutdown(peer_incoming, peer_shutdown))
        }
    };
    tracing::info!(peer = %peer_addr, peers = config.peers.len(), tls = server_tls.is_some(), "peer service listening");

    let started = std::time::Instant::now();
    let opened = async {
        // Storage first, before the identity is read: damage found here may move the node's
        // data (and identity) to the quarantine so that it joins as a new node (crate::repair).
        let storage = match broker::Broker::open_storage(&config, &metrics) {
            Ok(s) => s,
            Err(e) => {
                repair::decide(
                    e,
                    &config.data_dir,
                    config.peers.len() > 1,
                    config.self_repair,
                )?;
                metrics.self_repairs.inc();
                broker::Broker::open_storage(&config, &metrics)?
            }
        };
        let startup = cluster
            .resolve(config.ordinal(), stop_rx.clone(), &waiting)
            .await;
        waiting.store(false, Ordering::Relaxed);
        let startup = startup?;
        let node_id = cluster
            .identity
            .get()
            .map(|i| i.node_id)
            .ok_or_else(|| Error::Unavailable("node identity not resolved".into()))?;
        let b = broker::Broker::open(
            config.clone(),
            metrics.clone(),
            stop_rx.clone(),
            node_id,
            Arc::clone(&cluster),
            storage,
        )
        .await?;
        Ok::<_, Error>((b, startup))
    }
    .await;
    let (b, startup) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = admin_task.await;
            let _ = peer_task.await;
            return Err(e);
        }
    };
    if matches!(startup, raft::cluster::Startup::Bootstrap(_)) {
        // The identity (with the voters to initialise) is on the volume, the groups not yet.
        crate::crash_point!("bootstrap::after_identity");
    }
    match startup {
        raft::cluster::Startup::Resume => {}
        raft::cluster::Startup::Bootstrap(members) => {
            if let Err(e) = cluster.bootstrap(members).await {
                let _ = stop_tx.send(true);
                b.close().await;
                let _ = admin_task.await;
                let _ = peer_task.await;
                return Err(e);
            }
        }
        raft::cluster::Startup::Join => {
            tokio::spawn(Arc::clone(&cluster).join_loop(stop_rx.clone()));
        }
    }
    tokio::spawn(raft::cluster::watch_groups(
        Arc::clone(&cluster),
        stop_rx.clone(),
    ));
    if config.peers.len() <= 1 {
        // A single node elects itself at once; serve only once it leads every stream, so
        // that a client's first call does not meet "no leader yet".
        for s in b.streams.values() {
            let mut m = s.replica.raft.metrics();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                // openraft 0.10 may publish state Leader a moment before the vote
                // that names it (what `Replica::is_leader` checks) is flushed.
                m.wait_until(|m| {
                    m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id)
                }),
            )
            .await;
        }
    }
    let _ = slot.set(Arc::clone(&b));
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        streams = b.streams.len(),
        "recovery done"
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BrokerServer<service::BrokerService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for name in b.streams.keys() {
        // Until the first verdict of `report_health` (200 ms at most).
        health
            .set_service_status(
                stream_health_service(name),
                tonic_health::ServingStatus::Serving,
            )
            .await;
    }
    // Reflection in both versions: v1, and v1alpha for clients that only speak it (Python's
    // grpcio-reflection, older grpcurl), which got UNIMPLEMENTED before (issue 17).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(txpipe_client::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| Error::Unavailable(format!("reflection service: {e}")))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| Error::Unavailable(format!("reflection service (v1alpha): {e}")))?;
    let max_msg = grpc_max_message_bytes(&config);
    let svc = BrokerServer::new(service::BrokerService::new(Arc::clone(&b)))
        .max_decoding_message_size(max_msg)
        .max_encoding_message_size(max_msg);
    let ledger_svc = txpipe_client::ledger::v1::ledger_server::LedgerServer::new(
        ledger_service::LedgerService::new(Arc::clone(&b))?,
    )
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let mut grpc_stop = stop_rx.clone();
    let grpc_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_adaptive_window(Some(true))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(svc)
        .add_service(ledger_svc);
    // TCP_NODELAY on accepted sockets: without it Nagle + delayed ACK stall pipelined
    // batches by ~40 ms.
    let grpc_incoming = admitted(
        tonic::transport::server::TcpIncoming::from(grpc_listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(30))),
        Arc::clone(&b),
    );
    let grpc_shutdown = async move {
        crate::broker::stopped(&mut grpc_stop).await;
    };
    let grpc_task = match &server_tls {
        Some(t) => tokio::spawn(
            grpc_router.serve_with_incoming_shutdown(
                tls::incoming(
                    grpc_incoming,
                    Arc::clone(t),
                    metrics
                        .tls_handshake_failures
                        .with_label_values(&["client"]),
                ),
                grpc_shutdown,
            ),
        ),
        None => {
            tokio::spawn(grpc_router.serve_with_incoming_shutdown(grpc_incoming, grpc_shutdown))
        }
    };
    b.ready.store(true, Ordering::Relaxed);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, tls = server_tls.is_some(), "txpipe broker serving");
    let health_task = tokio::spawn(report_health(
        Arc::clone(&b),
        health.clone(),
        stop_rx.clone(),
    ));

    // Background: status sampling, expiry of due ledger holds and recovery of cross-shard
    // transfers every second, snapshots + retention on their interval.
    let bg = {
        let b = Arc::clone(&b);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut sample = broker::Sample::default();
            // The recovery task's ledger client, connected on first use; its lock keeps
            // recovery passes from overlapping.
            let recovery = Arc::new(tokio::sync::Mutex::new(None));
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut snap =
                tokio::time::interval(Duration::from_millis(b.config.snapshot_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            snap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            snap.tick().await;
            b.sample(&mut sample);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        b.sample(&mut sample);
                        // Apart: a proposal may wait for a quorum.
                        let b = Arc::clone(&b);
                        let b2 = Arc::clone(&b);
                        tokio::spawn(async move { ledger_service::expire_due_holds(&b).await });
                        let rc = Arc::clone(&recovery);
                        tokio::spawn(async move {
                            ledger_service::recover_cross_transfers(&b2, &rc).await
                        });
                    }
                    _ = snap.tick() => b.snapshot_and_retain().await,
                    _ = crate::broker::stopped(&mut stop) => break,
                }
            }
        })
    };

    let mut stop = stop_rx.clone();
    crate::broker::stopped(&mut stop).await;
    tracing::info!("shutting down");
    b.ready.store(false, Ordering::Relaxed);
    health
        .set_not_serving::<BrokerServer<service::BrokerService>>()
        .await;
    let _ = bg.await;
    let _ = health_task.await;
    match tokio::time::timeout(Duration::from_secs(5), grpc_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!("gRPC connections still open after 5 s; closing"),
    }
    b.close().await;
    let _ = peer_task.await;
    let _ = admin_task.await;
    stop_signal.abort();
    tracing::info!("txpipe broker stopped");
    Ok(())
}

/// gRPC health service name of one stream: `txpipe.broker.v1.Broker/<stream>`.
pub fn stream_health_service(stream: &str) -> String {
    format!(
        "{}/{stream}",
        <BrokerServer<service::BrokerService> as tonic::server::NamedService>::NAME
    )
}

/// Every 200 ms: evaluates [`health`] and publishes it through `grpc.health.v1` (per stream
/// as [`stream_health_service`]; `""` and the Broker service are SERVING only when every
/// stream is) and, through [`broker::Broker::health`], `/readyz` and `/healthz`. Logs each
/// change of verdict once.
async fn report_health(
    b: Arc<broker::Broker>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut tracker = health::HealthTracker::new(b.leaderless_grace(), b.config.peers.len() <= 1);
    let mut last: Option<health::HealthReport> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::broker::stopped(&mut stop) => return,
        }
        let report = b.check_health(&mut tracker, std::time::Instant::now());
        if last.as_ref() == Some(&report) {
            continue;
        }
        let status = |ok: bool| {
            if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        for s in &report.streams {
            reporter
                .set_service_status(
                    stream_health_service(&s.name),
                    status(s.not_serving.is_none()),
                )
                .await;
        }
        let all = status(report.all_serving());
        reporter.set_service_status("", all).await;
        reporter
            .set_service_status(
                <BrokerServer<service::BrokerService> as tonic::server::NamedService>::NAME,
                all,
            )
            .await;
        if report.all_serving() {
            tracing::info!("health: every stream serving");
        } else {
            tracing::warn!(reasons = %report.reasons().trim_end(), restart = ?report.restart, "health: not serving");
        }
        last = Some(report);
    }
}

/// The accepted client connections that get a slot of `--max-connections`
/// ([`limits::Limits::admit_connection`]); the others are closed at once and counted.
fn admitted<S, T, E>(
    incoming: S,
    b: Arc<broker::Broker>,
) -> impl futures::Stream<Item = std::result::Result<limits::Admitted<T>, E>>
where
    S: futures::Stream<Item = std::result::Result<T, E>>,
{
    use futures::StreamExt;
    incoming.filter_map(move |conn| {
        let out = match conn {
            Err(e) => Some(Err(e)),
            Ok(io) => match b.limits.admit_connection() {
                Some(slot) => Some(Ok(limits::Admitted::new(io, slot))),
                None => {
                    b.metrics.connections_rejected.inc();
                    tracing::warn!(
                        max = b.config.max_connections,
                        "client connection closed: --max-connections reached"
                    );
                    None
                }
            },
        };
        std::future::ready(out)
    })
}
