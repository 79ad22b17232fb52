//! Leader discovery and automatic failover over a replicated broker.
//!
//! Every stream is its own Raft group, so each stream has its own leader and leaders of
//! different streams may sit on different broker nodes. A node that does not lead a stream
//! answers every call about it (Produce, Consume, Fetch, GetStream) with gRPC status
//! `UNAVAILABLE`, a message starting with `not the leader of stream`, and, when it knows the
//! leader, the metadata key [`LEADER_METADATA_KEY`] (`txpipe-leader`) holding the leader's client
//! address `host:port`. [`LeaderRouter`] turns that protocol into a simple rule for callers:
//! *ask the router for a channel to the leader of stream X; when a call on it fails, tell the
//! router, which sleeps as needed and points you at the next candidate.*
//!
//! # Failover rules
//!
//! - **Which failures are retried.** `UNAVAILABLE`, and the codes a broken transport surfaces as
//!   (`UNKNOWN`, `INTERNAL`, `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`), plus connection
//!   failures (refused, timed out). Every other status (`INVALID_ARGUMENT`, `NOT_FOUND`,
//!   `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, ...) is not about leadership or availability:
//!   it is returned to the caller unchanged ([`LeaderError::Rejected`]) and never retried.
//! - **Where to go next.** The `txpipe-leader` hint when the failure carries one and it names
//!   another node (also when that address is not in the configured list: a StatefulSet may
//!   advertise names the client was not given); otherwise the next address of the configured
//!   list after the one that failed, wrapping around. A hint naming a node that failed with a
//!   transport error less than `distrust` (1 s) ago in the same failover is ignored (it is a
//!   follower's stale view of a dead leader), so a dead leader cannot trap the client between
//!   itself and one follower while another node has won the election.
//!   The list is walked the same way: an address that failed with a transport error (refused,
//!   dead, or silent past the caller's timeout, as a paused node is) less than `distrust` ago
//!   is skipped unless every address did.
//! - **How long to wait.** Bounded exponential backoff, `initial_backoff` (50 ms) doubling to
//!   `max_backoff` (100 ms: a failover costs the election plus at most one backoff, and a client
//!   polls at most 10 addresses a second while it waits). A hint is followed at once, except
//!   right after another hint was followed at once (two nodes pointing at each other during an
//!   election): that retry waits the backoff.
//! - **Deadline.** A failover ([`Failover`]) starts at the first failure and ends at the first
//!   success; it gives up with [`LeaderError::Unavailable`] once the caller's deadline has passed
//!   (a deadline of zero means a single attempt). An attempt started before the deadline gets
//!   at least [`MIN_ATTEMPT`] (100 ms), so a failover overruns its deadline by at most that.
//! - **Caching.** One channel per address, shared by every user of the router (HTTP/2
//!   multiplexes calls over it); a channel is dropped and reconnected after a transport failure.
//!   The last known leader of each stream is remembered, so the next call about that stream goes
//!   straight to it.
//!
//! # Use
//!
//! Unary calls: [`LeaderRouter::call`] does everything. Long-lived streams (Produce, Consume):
//! open one [`Failover`] with [`LeaderRouter::failover`] when the stream breaks, report the
//! failure with [`Failover::failed`], get the next [`Target`] with [`Failover::target`], open the
//! call there, and end the failover with [`Failover::succeeded`] once the new leader answered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::broker::v1::broker_client::BrokerClient;
use crate::connect::{ConnectError, endpoint, endpoint_with, normalize_addr};
use crate::tls::{TLS_RECHECK_INTERVAL, TlsOptions, TlsWatch};

/// gRPC metadata key of the leader hint on `UNAVAILABLE` answers: the leader's client address
/// `host:port`.
pub const LEADER_METADATA_KEY: &str = "txpipe-leader";

/// Start of the message of a broker's "not the leader" answer.
pub const NOT_LEADER_PREFIX: &str = "not the leader";

/// Maximum gRPC message size of clients built by [`Target::client`], bytes (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Least time given to one attempt (connection or call) even when the deadline is closer, so
/// that the last attempt before a deadline can succeed; a failover may overrun its deadline by
/// at most this much.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Retry and timeout settings of a [`LeaderRouter`].
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// First backoff between retries. Default 50 ms.
    pub initial_backoff: Duration,
    /// Backoff ceiling; each retry doubles the backoff up to this. Default 100 ms.
    pub max_backoff: Duration,
    /// How long a node that failed with a transport error is distrusted as a leader hint (other
    /// followers keep naming a dead leader until a new one is elected, about 1 s with the
    /// broker's default timeouts) and skipped when the list is walked. Default 1 s.
    pub distrust: Duration,
    /// Connection timeout per address, cut at the deadline but never below [`MIN_ATTEMPT`].
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Timeout of one attempt of a unary call made with [`LeaderRouter::call`], cut at the
    /// deadline but never below [`MIN_ATTEMPT`]. Default 10 s.
    pub call_timeout: Duration,
    /// Mutual TLS towards the brokers; `None` (the default): plaintext.
    pub tls: Option<TlsOptions>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(100),
            distrust: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Errors of the router.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaderError {
    /// The broker answered with a status that is not about leadership or availability
    /// (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ...). The status
    /// is the broker's, unchanged; it was not retried.
    #[error("{0}")]
    Rejected(Status),
    /// No leader of the stream answered before the deadline.
    #[error(
        "no leader of stream {stream:?} reachable within {waited_ms} ms (tried {tried:?}): {last_error}"
    )]
    Unavailable {
        /// The stream.
        stream: String,
        /// Time spent in this failover, milliseconds.
        waited_ms: u64,
        /// Addresses tried, in first-tried order.
        tried: Vec<String>,
        /// The last failure.
        last_error: String,
    },
}

impl LeaderError {
    /// The error as a gRPC status: the broker's own status for [`LeaderError::Rejected`],
    /// `UNAVAILABLE` with this error's message otherwise.
    pub fn into_status(self) -> Status {
        match self {
            LeaderError::Rejected(s) => s,
            e @ LeaderError::Unavailable { .. } => Status::unavailable(e.to_string()),
        }
    }
}

impl From<LeaderError> for ConnectError {
    /// [`LeaderError::Unavailable`] becomes [`ConnectError::Unreachable`]; a rejection becomes
    /// `Unreachable` with the status as the last error.
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::Unavailable {
                tried,
                waited_ms,
                last_error,
                ..
            } => ConnectError::Unreachable {
                addrs: tried,
                waited_ms,
                last_error,
            },
            LeaderError::Rejected(s) => ConnectError::Unreachable {
                addrs: Vec::new(),
                waited_ms: 0,
                last_error: s.to_string(),
            },
        }
    }
}

/// True for the status codes that mean "this node cannot serve the call now" (not the leader,
/// shutting down, connection broken), which a retry on the same or another node can fix:
/// UNAVAILABLE, UNKNOWN, INTERNAL, CANCELLED, DEADLINE_EXCEEDED, ABORTED. tonic reports a broken
/// HTTP/2 connection as one of these.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// The leader hint of a status: the `txpipe-leader` metadata as an endpoint URI
/// (`http://host:port`), or `None` when absent or unparsable.
pub fn leader_hint(status: &Status) -> Option<String> {
    let raw = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let addr = normalize_addr(raw);
    endpoint(&addr).ok()?;
    Some(addr)
}

/// True when `status` is a broker's "not the leader" answer (with or without a hint), as
/// opposed to a transport failure.
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (status.metadata().get(LEADER_METADATA_KEY).is_some()
            || status.message().starts_with(NOT_LEADER_PREFIX))
}

/// A node to call: its address and a (cached) channel to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Endpoint URI, `http://host:port`.
    pub addr: String,
    /// Channel to `addr`.
    pub channel: Channel,
}

impl Target {
    /// A broker client on this target's channel, with 64 MiB message limits both ways.
    pub fn client(&self) -> BrokerClient<Channel> {
        BrokerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Finds and follows the leader of each stream over a list of broker addresses. Cheap to
/// clone (shared state); see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct LeaderRouter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addrs: Vec<String>,
    config: LeaderConfig,
    /// Changes of the TLS files, after which the cached channels are dropped.
    tls_watch: Option<TlsWatch>,
    state: Mutex<RouterState>,
}

#[derive(Debug, Default)]
struct RouterState {
    channels: HashMap<String, Channel>,
    leaders: HashMap<String, String>,
    /// Index in `addrs` of the last configured address that served a call.
    last_good: usize,
}

impl LeaderRouter {
    /// A router over `addrs` (`host:port` or `http://host:port`) with default settings.
    ///
    /// Errors: [`ConnectError::NoAddress`] for an empty list, [`ConnectError::InvalidAddress`]
    /// for an address that is not a valid URI. Connects to nothing yet.
    pub fn new(addrs: Vec<String>) -> Result<Self, ConnectError> {
        Self::with_config(addrs, LeaderConfig::default())
    }

    /// A router over `addrs` with explicit settings. Errors as [`LeaderRouter::new`].
    pub fn with_config(addrs: Vec<String>, config: LeaderConfig) -> Result<Self, ConnectError> {
        let mut list: Vec<String> = Vec::with_capacity(addrs.len());
        for a in addrs {
            let a = normalize_addr(&a);
            if a.is_empty() {
                continue;
            }
            endpoint(&a)?;
            if !list.contains(&a) {
                list.push(a);
            }
        }
        if list.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        let tls_watch = config
            .tls
            .as_ref()
            .map(|t| TlsWatch::new(t, TLS_RECHECK_INTERVAL));
        Ok(Self {
            inner: Arc::new(Inner {
                addrs: list,
                tls_watch,
                config,
                state: Mutex::new(RouterState::default()),
            }),
        })
    }

    /// The configured addresses, normalised to `http://host:port`.
    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// The settings.
    pub fn config(&self) -> &LeaderConfig {
        &self.inner.config
    }

    /// The last known leader address of `stream`, if any.
    pub fn leader_of(&self, stream: &str) -> Option<String> {
        self.state().leaders.get(stream).cloned()
    }

    /// Starts a failover for `stream` that gives up `deadline` after now.
    pub fn failover(&self, stream: &str, deadline: Duration) -> Failover {
        let start = {
            let st = self.state();
            match st.leaders.get(stream) {
                Some(l) => self.index_of(l).unwrap_or(st.last_good),
                None => st.last_good,
            }
        };
        Failover {
            router: self.clone(),
            stream: stream.to_string(),
            began: Instant::now(),
            deadline,
            backoff: self.inner.config.initial_backoff,
            delay: Duration::ZERO,
            hinted: false,
            next: None,
            rr: start,
            suspects: HashMap::new(),
            tried: Vec::new(),
            last_error: String::new(),
        }
    }

    /// A channel to the current best guess for `stream`'s leader (the last known leader, else
    /// the last address that worked, else the first), trying further addresses while they
    /// refuse connections, until `deadline` has passed. Makes no call: a follower is only
    /// discovered when a call on the channel fails.
    ///
    /// Errors: [`LeaderError::Unavailable`] when no address accepted a connection in time.
    pub async fn connect(&self, stream: &str, deadline: Duration) -> Result<Target, LeaderError> {
        self.failover(stream, deadline).target().await
    }

    /// Runs a unary call about `stream` on its leader: `f` gets a client on the current guess
    /// and is retried on the next candidate (hint, else next address, with backoff) while it
    /// fails with a retryable status, until `deadline` (overall, from now) has passed. Each
    /// attempt is limited to `call_timeout`, or to the time left when shorter (but at least
    /// [`MIN_ATTEMPT`]).
    ///
    /// Errors: [`LeaderError::Rejected`] with the broker's status, unchanged, for a
    /// non-retryable status; [`LeaderError::Unavailable`] when the deadline passed.
    pub async fn call<T, F, Fut>(
        &self,
        stream: &str,
        deadline: Duration,
        mut f: F,
    ) -> Result<T, LeaderError>
    where
        F: FnMut(BrokerClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut fo = self.failover(stream, deadline);
        loop {
            let target = fo.target().await?;
            let limit = self
                .inner
                .config
                .call_timeout
                .min(fo.time_left().max(MIN_ATTEMPT));
            let status = match tokio::time::timeout(limit, f(target.client())).await {
                Ok(Ok(resp)) => {
                    fo.succeeded(&target);
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "no answer from {} within {} ms",
                    target.addr,
                    limit.as_millis()
                )),
            };
            fo.failed(&target, status).await?;
        }
    }

    /// Asks every configured address other than `current`, concurrently, whether it leads
    /// `stream` now, with a `GetStream` call limited to `timeout` (connection included).
    /// A broker answers `GetStream` only while it leads the stream with a valid quorum lease,
    /// so an answer is proof that `current` no longer does (at most one node holds the lease
    /// at a time). Returns the first address that answered, or `None` when none did before
    /// `timeout` (every other node is a follower, unreachable, or refused the call).
    ///
    /// The producer calls this while acknowledgements are late (see [`crate::produce`]): a
    /// paused leader, or one cut off from its followers, keeps its connections open, and this
    /// tells "slow" from "deposed" without waiting for the acknowledgement timeout.
    pub async fn probe_leader(
        &self,
        stream: &str,
        current: &str,
        timeout: Duration,
    ) -> Option<String> {
        use futures::StreamExt;
        let mut calls: futures::stream::FuturesUnordered<_> = self
            .inner
            .addrs
            .iter()
            .filter(|a| *a != current)
            .map(|addr| {
                let (router, addr) = (self.clone(), addr.clone());
                let req = crate::broker::v1::GetStreamRequest {
                    stream: stream.to_string(),
                };
                async move {
                    let answered = tokio::time::timeout(timeout, async {
                        let ch = router.channel(&addr, timeout).await.ok()?;
                        BrokerClient::new(ch).get_stream(req).await.ok()
                    })
                    .await
                    .ok()
                    .flatten()
                    .is_some();
                    answered.then_some(addr)
                }
            })
            .collect();
        while let Some(r) = calls.next().await {
            if r.is_some() {
                return r;
            }
        }
        None
    }

    /// Records that `target` answered a call about `stream` successfully: it is the stream's
    /// leader until a failure says otherwise.
    pub fn confirm(&self, stream: &str, target: &Target) {
        let idx = self.index_of(&target.addr);
        let mut st = self.state();
        st.leaders.insert(stream.to_string(), target.addr.clone());
        if let Some(i) = idx {
            st.last_good = i;
        }
    }

    /// A channel to `addr`: the cached one, else a new connection (cached on success) within
    /// `timeout`.
    async fn channel(&self, addr: &str, timeout: Duration) -> Result<Channel, String> {
        if let Some(w) = &self.inner.tls_watch
            && w.changed()
        {
            tracing::info!("TLS files changed: new connections to the brokers use them");
            self.state().channels.clear();
        }
        if let Some(ch) = self.state().channels.get(addr) {
            return Ok(ch.clone());
        }
        let ep = endpoint_with(addr, self.inner.config.tls.as_ref()).map_err(|e| e.to_string())?;
        let ch = match tokio::time::timeout(timeout, ep.connect()).await {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => {
                return Err(match std::error::Error::source(&e) {
                    Some(src) => format!("connecting to {addr}: {e}: {src}"),
                    None => format!("connecting to {addr}: {e}"),
                });
            }
            Err(_) => {
                return Err(format!(
                    "connecting to {addr}: timed out after {} ms",
                    timeout.as_millis()
                ));
            }
        };
        self.state()
            .channels
            .entry(addr.to_string())
            .or_insert(ch.clone());
        Ok(ch)
    }

    fn evict(&self, addr: &str) {
        self.state().channels.remove(addr);
    }

    fn forget_leader(&self, stream: &str, addr: &str) {
        let mut st = self.state();
        if st.leaders.get(stream).is_some_and(|l| l == addr) {
            st.leaders.remove(stream);
        }
    }

    fn set_leader(&self, stream: &str, addr: &str) {
        self.state()
            .leaders
            .insert(stream.to_string(), addr.to_string());
    }

    fn guess(&self, stream: &str) -> String {
        let st = self.state();
        st.leaders
            .get(stream)
            .cloned()
            .unwrap_or_else(|| self.inner.addrs[st.last_good % self.inner.addrs.len()].clone())
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        self.inner.addrs.iter().position(|a| a == addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One failover of one stream: from a failure to the next success, bounded by a deadline.
/// See the module docs for the rules.
#[derive(Debug)]
pub struct Failover {
    router: LeaderRouter,
    stream: String,
    began: Instant,
    deadline: Duration,
    /// Backoff of the next waited retry.
    backoff: Duration,
    /// Wait before the next attempt.
    delay: Duration,
    /// The pending retry follows a hint at once.
    hinted: bool,
    /// Address of the next attempt (`None`: the router's guess).
    next: Option<String>,
    /// Round-robin cursor over the configured addresses.
    rr: usize,
    /// Addresses that failed with a transport error, and when.
    suspects: HashMap<String, Instant>,
    tried: Vec<String>,
    last_error: String,
}

impl Failover {
    /// The stream this failover is about.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_sub(self.began.elapsed())
    }

    /// Addresses tried so far, in first-tried order.
    pub fn tried(&self) -> &[String] {
        &self.tried
    }

    /// A channel to the next candidate. A candidate that refuses the connection counts as a
    /// failed attempt (next address, backoff).
    ///
    /// Errors: [`LeaderError::Unavailable`] once the deadline has passed.
    pub async fn target(&mut self) -> Result<Target, LeaderError> {
        loop {
            let addr = match &self.next {
                Some(a) => a.clone(),
                None => self.router.guess(&self.stream),
            };
            self.next = Some(addr.clone());
            let cfg = self.router.config();
            let timeout = cfg.connect_timeout.min(self.time_left().max(MIN_ATTEMPT));
            match self.router.channel(&addr, timeout).await {
                Ok(channel) => return Ok(Target { addr, channel }),
                Err(e) => {
                    tracing::debug!(stream = %self.stream, addr = %addr, error = %e, "broker unreachable; trying the next one");
                    self.plan(&addr, None, true, e, Instant::now());
                    self.pause().await?;
                }
            }
        }
    }

    /// Records that a call on `target` failed with `status`, decides the next candidate, and
    /// waits the backoff when the rules say so.
    ///
    /// Errors: [`LeaderError::Rejected`] (the status, unchanged) when the status is not
    /// retryable; [`LeaderError::Unavailable`] once the deadline has passed.
    pub async fn failed(&mut self, target: &Target, status: Status) -> Result<(), LeaderError> {
        if !is_retryable(status.code()) {
            return Err(LeaderError::Rejected(status));
        }
        let not_leader = is_not_leader(&status);
        let hint = leader_hint(&status);
        if !not_leader {
            // A transport failure or a node shutting down: reconnect next time.
            self.router.evict(&target.addr);
        }
        let error = format!(
            "{} answered {:?}: {}",
            target.addr,
            status.code(),
            status.message()
        );
        self.plan(&target.addr, hint, !not_leader, error, Instant::now());
        match &self.next {
            Some(next) if self.hinted => {
                tracing::info!(stream = %self.stream, from = %target.addr, leader = %next, "following leader hint")
            }
            next => {
                tracing::debug!(stream = %self.stream, failed = %target.addr, next = ?next, delay_ms = self.delay.as_millis() as u64, code = ?status.code(), error = %status.message(), "call failed; trying the next broker")
            }
        }
        self.pause().await
    }

    /// Ends the failover: `target` served the stream, remember it as the leader.
    pub fn succeeded(self, target: &Target) {
        self.router.confirm(&self.stream, target);
    }

    /// Decides the next address and the wait before trying it, after `addr` failed.
    fn plan(
        &mut self,
        addr: &str,
        hint: Option<String>,
        transport: bool,
        error: String,
        now: Instant,
    ) {
        if !self.tried.iter().any(|a| a == addr) {
            self.tried.push(addr.to_string());
        }
        self.last_error = error;
        self.router.forget_leader(&self.stream, addr);
        if transport {
            self.suspects.insert(addr.to_string(), now);
        }
        let distrust = self.router.config().distrust;
        let hint = hint.filter(|h| {
            h != addr
                && self
                    .suspects
                    .get(h)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= distrust)
        });
        match hint {
            Some(h) => {
                self.router.set_leader(&self.stream, &h);
                self.next = Some(h);
                if self.hinted {
                    self.delay = self.take_backoff();
                    self.hinted = false;
                } else {
                    self.delay = Duration::ZERO;
                    self.hinted = true;
                }
            }
            None => {
                // The next address of the list, skipping those that failed with a transport
                // error within `distrust` (a dead or paused node: a paused one still accepts
                // connections and would hold the next call until its own timeout), unless
                // every address did.
                let addrs = self.router.addrs();
                let n = addrs.len();
                let start = match self.router.index_of(addr) {
                    Some(i) => i + 1,
                    None => self.rr,
                };
                let trusted = |a: &String| {
                    self.suspects
                        .get(a)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= distrust)
                };
                let i = (start..start + n)
                    .find(|&j| trusted(&addrs[j % n]))
                    .unwrap_or(start);
                self.next = Some(addrs[i % n].clone());
                self.rr = i + 1;
                self.delay = self.take_backoff();
                self.hinted = false;
            }
        }
    }

    fn take_backoff(&mut self) -> Duration {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(self.router.config().max_backoff);
        d
    }

    /// Waits the planned delay (cut at the deadline). Errors once the deadline has passed.
    async fn pause(&mut self) -> Result<(), LeaderError> {
        let left = self.time_left();
        if left.is_zero() {
            return Err(LeaderError::Unavailable {
                stream: self.stream.clone(),
                waited_ms: self.began.elapsed().as_millis() as u64,
                tried: self.tried.clone(),
                last_error: self.last_error.clone(),
            });
        }
        let d = self.delay.min(left);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(n: usize) -> LeaderRouter {
        LeaderRouter::new((1..=n).map(|i| format!("10.0.0.{i}:9100")).collect()).unwrap()
    }

    fn a(i: usize) -> String {
        format!("http://10.0.0.{i}:9100")
    }

    fn not_leader(hint: Option<&str>) -> Status {
        let mut s = Status::unavailable("not the leader of stream \"transactions\"");
        if let Some(h) = hint {
            s.metadata_mut()
                .insert(LEADER_METADATA_KEY, h.parse().unwrap());
        }
        s
    }

    #[test]
    fn addresses_are_normalised_and_deduplicated() {
        let r = LeaderRouter::new(vec![
            "a:1".into(),
            "http://a:1/".into(),
            " https://b:2 ".into(),
        ])
        .unwrap();
        assert_eq!(r.addrs(), &["http://a:1".to_string(), "https://b:2".into()]);
        assert!(matches!(
            LeaderRouter::new(vec![]),
            Err(ConnectError::NoAddress)
        ));
    }

    #[test]
    fn hints_are_read_from_metadata_and_classified() {
        let s = not_leader(Some("broker-2.svc:9100"));
        assert_eq!(leader_hint(&s).as_deref(), Some("http://broker-2.svc:9100"));
        assert!(is_not_leader(&s));
        let s = not_leader(None);
        assert_eq!(leader_hint(&s), None);
        assert!(is_not_leader(&s));
        assert!(!is_not_leader(&Status::unavailable("tcp connect error")));
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
        ] {
            assert!(!is_retryable(c), "{c:?}");
        }
        assert!(is_retryable(Code::Unavailable) && is_retryable(Code::Unknown));
    }

    #[test]
    fn without_hints_the_list_is_cycled_with_exponential_backoff() {
        let r = router(3);
        let mut f = r.failover("s", Duration::from_secs(60));
        let now = Instant::now();
        let mut seen = Vec::new();
        let mut at = a(1);
        for _ in 0..8 {
            f.plan(&at, None, true, "x".into(), now);
            at = f.next.clone().unwrap();
            seen.push((at.clone(), f.delay.as_millis()));
        }
        let expect: Vec<(String, u128)> = vec![
            (a(2), 50),
            (a(3), 100),
            (a(1), 100),
            (a(2), 100),
            (a(3), 100),
            (a(1), 100),
            (a(2), 100),
            (a(3), 100),
        ];
        assert_eq!(seen, expect);
    }

    #[test]
    fn a_node_that_failed_with_a_transport_error_is_skipped_in_the_list_while_distrusted() {
        let r = router(3);
        let mut f = r.failover("s", Duration::from_secs(60));
        let now = Instant::now();
        // a(1) timed out (a paused leader); a(2) and a(3) are followers without a hint yet.
        f.plan(&a(1), None, true, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), a(2));
        f.plan(&a(2), None, false, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), a(3));
        f.plan(&a(3), None, false, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), a(2), "a(1) is skipped");
        // Once the distrust has passed it is tried again.
        f.plan(&a(3), None, false, "x".into(), now + Duration::from_secs(2));
        assert_eq!(f.next.clone().unwrap(), a(1));
    }

    #[test]
    fn a_hint_is_followed_at_once_but_not_twice_in_a_row() {
        let r = router(3);
        let mut f = r.failover("s", Duration::from_secs(60));
        let now = Instant::now();
        f.plan(&a(1), Some(a(2)), false, "x".into(), now);
        assert_eq!((f.next.clone().unwrap(), f.delay), (a(2), Duration::ZERO));
        assert_eq!(r.leader_of("s"), Some(a(2)));
        // a(2) points back at a(1): the second hint in a row waits the backoff.
        f.plan(&a(2), Some(a(1)), false, "x".into(), now);
        assert_eq!(
            (f.next.clone().unwrap(), f.delay),
            (a(1), Duration::from_millis(50))
        );
        f.plan(&a(1), Some(a(2)), false, "x".into(), now);
        assert_eq!(f.delay, Duration::ZERO);
        // A hint naming the node that just failed is useless: next address.
        f.plan(&a(2), Some(a(2)), false, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), a(3));
    }

    #[test]
    fn a_hint_outside_the_list_is_accepted_and_a_dead_leader_hint_is_distrusted() {
        let r = router(3);
        let mut f = r.failover("s", Duration::from_secs(60));
        let now = Instant::now();
        let outside = "http://10.9.9.9:9100".to_string();
        f.plan(&a(1), Some(outside.clone()), false, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), outside);
        // The outside node dies; the list is resumed.
        f.plan(&outside, None, true, "refused".into(), now);
        assert!(r.addrs().contains(f.next.as_ref().unwrap()));
        // a(2) still names the dead node (stale view): ignored for max_backoff.
        f.plan(&a(2), Some(outside.clone()), false, "x".into(), now);
        assert_eq!(f.next.clone().unwrap(), a(3));
        // Later on it is trusted again (the node may have restarted).
        f.plan(
            &a(3),
            Some(outside.clone()),
            false,
            "x".into(),
            now + Duration::from_secs(2),
        );
        assert_eq!(f.next.clone().unwrap(), outside);
    }

    #[tokio::test]
    async fn non_retryable_statuses_are_returned_unchanged() {
        let r = router(2);
        let mut f = r.failover("s", Duration::from_secs(60));
        let t = Target {
            addr: a(1),
            channel: endpoint(&a(1)).unwrap().connect_lazy(),
        };
        let e = f
            .failed(&t, Status::not_found("no stream \"s\""))
            .await
            .unwrap_err();
        match e {
            LeaderError::Rejected(s) => {
                assert_eq!(s.code(), Code::NotFound);
                assert_eq!(s.message(), "no stream \"s\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_deadline_ends_a_failover() {
        let r = router(2);
        let mut f = r.failover("s", Duration::ZERO);
        let t = Target {
            addr: a(1),
            channel: endpoint(&a(1)).unwrap().connect_lazy(),
        };
        let e = f.failed(&t, not_leader(None)).await.unwrap_err();
        assert!(
            matches!(&e, LeaderError::Unavailable { tried, .. } if tried == &vec![a(1)]),
            "{e:?}"
        );
    }
}
